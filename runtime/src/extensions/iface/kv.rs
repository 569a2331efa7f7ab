//! `xiaozhi:extension/kv`: a small key/value store per extension and device.
//!
//! The host passes every key to the [`KvStore`] with the namespace [`kv_namespace`]`(extension,
//! device)`, so an extension sees only its own keys for the device of the call in progress.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::super::bindings::xiaozhi::extension::kv::Host;
use super::super::bindings::xiaozhi::extension::types::ExtensionError as WitError;
use super::super::host::CallState;

/// Longest key, bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most keys in one namespace (one extension and device) of a [`MemoryKv`].
pub const MAX_KEYS_PER_NAMESPACE: usize = 1024;

/// Why a key/value operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The namespace already holds the most keys allowed.
    #[error("the store is full ({0} keys)")]
    Full(usize),
    /// The store itself failed.
    #[error("key/value store failure: {0}")]
    Backend(String),
}

/// Storage behind the `kv` interface. `namespace` comes from [`kv_namespace`]; implementations
/// keep namespaces apart and need not know their structure.
pub trait KvStore: Send + Sync {
    /// The value under `key`, if any.
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Stores `value` under `key`, replacing any previous value.
    fn set(&self, namespace: &str, key: &str, value: Vec<u8>) -> Result<(), KvError>;
    /// Removes `key`; a missing key is not an error.
    fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError>;
}

/// The namespace of an extension's keys for one device: `<extension id>/<device id>`.
///
/// Extension ids never contain `/`, so the namespace of one (extension, device) pair can never
/// equal the namespace of another.
pub fn kv_namespace(extension_id: &str, device_id: &str) -> String {
    format!("{extension_id}/{device_id}")
}

/// An in-process [`KvStore`] (lost on restart), at most [`MAX_KEYS_PER_NAMESPACE`] keys per
/// namespace.
#[derive(Debug, Default)]
pub struct MemoryKv {
    namespaces: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Vec<u8>>>> {
        // A panic while holding the lock cannot leave a map half-updated, so poisoning is ignored.
        self.namespaces.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl KvStore for MemoryKv {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.lock().get(namespace).and_then(|keys| keys.get(key)).cloned())
    }

    fn set(&self, namespace: &str, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        let mut namespaces = self.lock();
        let keys = namespaces.entry(namespace.to_owned()).or_default();
        if !keys.contains_key(key) && keys.len() >= MAX_KEYS_PER_NAMESPACE {
            return Err(KvError::Full(MAX_KEYS_PER_NAMESPACE));
        }
        keys.insert(key.to_owned(), value);
        Ok(())
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError> {
        let mut namespaces = self.lock();
        if let Some(keys) = namespaces.get_mut(namespace) {
            keys.remove(key);
            if keys.is_empty() {
                namespaces.remove(namespace);
            }
        }
        Ok(())
    }
}

impl CallState {
    /// The namespace of this call, or `denied` when the extension has no `kv` grant.
    fn kv_access(&self, key: &str) -> Result<String, WitError> {
        if !self.grant.kv {
            return Err(WitError::Denied(format!("kv is not granted to extension {}", self.extension_id)));
        }
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(WitError::InvalidArguments(format!("a key must have 1 to {MAX_KEY_BYTES} bytes")));
        }
        Ok(kv_namespace(&self.extension_id, &self.device_id))
    }
}

fn backend(err: KvError) -> WitError {
    WitError::Failed(err.to_string())
}

impl Host for CallState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, WitError> {
        let namespace = self.kv_access(&key)?;
        self.services.kv.get(&namespace, &key).map_err(backend)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), WitError> {
        let namespace = self.kv_access(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(WitError::InvalidArguments(format!("a value may have at most {MAX_VALUE_BYTES} bytes")));
        }
        self.services.kv.set(&namespace, &key, value).map_err(backend)
    }

    async fn delete(&mut self, key: String) -> Result<(), WitError> {
        let namespace = self.kv_access(&key)?;
        self.services.kv.delete(&namespace, &key).map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_extensions_never_see_each_others_keys() {
        let kv = MemoryKv::new();
        let a1 = kv_namespace("notes", "aa:aa");
        let a2 = kv_namespace("notes", "bb:bb");
        let b1 = kv_namespace("other", "aa:aa");
        kv.set(&a1, "name", b"Ann".to_vec()).expect("set");
        kv.set(&a2, "name", b"Bob".to_vec()).expect("set");
        assert_eq!(kv.get(&a1, "name").expect("get"), Some(b"Ann".to_vec()));
        assert_eq!(kv.get(&a2, "name").expect("get"), Some(b"Bob".to_vec()));
        assert_eq!(kv.get(&b1, "name").expect("get"), None, "another extension, same device");
        kv.delete(&a1, "name").expect("delete");
        kv.delete(&a1, "name").expect("deleting a missing key is fine");
        assert_eq!(kv.get(&a1, "name").expect("get"), None);
        assert_eq!(kv.get(&a2, "name").expect("get"), Some(b"Bob".to_vec()));
    }

    #[test]
    fn a_namespace_holds_a_bounded_number_of_keys() {
        let kv = MemoryKv::new();
        for i in 0..MAX_KEYS_PER_NAMESPACE {
            kv.set("x/d", &i.to_string(), Vec::new()).expect("room");
        }
        assert_eq!(kv.set("x/d", "one more", Vec::new()), Err(KvError::Full(MAX_KEYS_PER_NAMESPACE)));
        kv.set("x/d", "0", b"replace".to_vec()).expect("replacing needs no room");
        kv.set("x/other", "k", Vec::new()).expect("other namespaces are separate");
    }
}
