//! `xiaozhi:extension/kv`: a small key/value store per extension and device, kept in the
//! server's [`Store`](crate::store::Store) under `kv/<extension>/<device>/<key>`
//! ([`crate::store::kv_key`]), so an extension sees only its own keys for the device of the call
//! in progress, and its values survive restarts (embedded store) or are shared by every
//! instance (Redis).

use super::super::bindings::xiaozhi::extension::kv::Host;
use super::super::bindings::xiaozhi::extension::types::ExtensionError as WitError;
use super::super::host::CallState;
use crate::store::{StoreError, kv_key, kv_prefix};

/// Longest key, bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most keys one extension may keep for one device.
pub const MAX_KEYS_PER_NAMESPACE: usize = 1024;

impl CallState {
    /// The store key of `key` for this call, or `denied` when the extension has no `kv` grant.
    fn kv_access(&self, key: &str) -> Result<String, WitError> {
        if !self.grant.kv {
            return Err(WitError::Denied(format!("kv is not granted to extension {}", self.extension_id)));
        }
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(WitError::InvalidArguments(format!("a key must have 1 to {MAX_KEY_BYTES} bytes")));
        }
        Ok(kv_key(&self.extension_id, &self.device_id, key))
    }
}

fn backend(err: StoreError) -> WitError {
    WitError::Failed(format!("key/value store: {err}"))
}

impl Host for CallState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, WitError> {
        let key = self.kv_access(&key)?;
        self.services.store.get(&key).await.map_err(backend)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), WitError> {
        let full = self.kv_access(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(WitError::InvalidArguments(format!("a value may have at most {MAX_VALUE_BYTES} bytes")));
        }
        let store = &self.services.store;
        if store.get(&full).await.map_err(backend)?.is_none() {
            let held = store.keys(&kv_prefix(&self.extension_id, &self.device_id)).await.map_err(backend)?.len();
            if held >= MAX_KEYS_PER_NAMESPACE {
                return Err(WitError::Failed(format!(
                    "the store is full: {MAX_KEYS_PER_NAMESPACE} keys for this extension and device"
                )));
            }
        }
        store.set(&full, &value, None).await.map_err(backend)
    }

    async fn delete(&mut self, key: String) -> Result<(), WitError> {
        let key = self.kv_access(&key)?;
        self.services.store.delete(&key).await.map_err(backend)
    }
}
