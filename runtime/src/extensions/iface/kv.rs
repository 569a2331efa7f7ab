//! `xiaozhi:extension/kv`: a small key/value store per extension and device, kept in the
//! server's [`Store`](crate::store::Store) under `kv/<extension>/<device>/<key>`
//! ([`crate::store::kv_key`]), so an extension sees only its own keys for the device of the call
//! in progress, and its values survive restarts (embedded store) or are shared by every
//! instance (Redis).
//!
//! Bounded twice, because the device id is whatever the client says it is: per device, at most
//! `limits.kv_keys_per_device` keys of at most [`MAX_VALUE_BYTES`] each; per extension over all
//! devices, at most `limits.kv_bytes_per_extension` bytes of values (an atomic counter in the
//! store, `kv-usage/<extension>`). A write over either is refused with an error the extension
//! sees, and counted in `xiaozhi_limits_hit_total`.

use super::super::bindings::xiaozhi::extension::kv::Host;
use super::super::bindings::xiaozhi::extension::types::ExtensionError as WitError;
use super::super::host::CallState;
use crate::store::{StoreError, kv_key, kv_prefix};

/// Longest key, bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The store key counting the value bytes an extension keeps (over all devices).
fn usage_key(extension_id: &str) -> String {
    format!("kv-usage/{}", crate::store::segment(extension_id))
}

/// Bytes a value counts for in the quota.
fn size(value: &[u8]) -> i64 {
    i64::try_from(value.len()).unwrap_or(i64::MAX)
}

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

impl CallState {
    fn limit_hit(&self, limit: &'static str) {
        tracing::warn!(extension = %self.extension_id, device = %self.device_id, "kv write refused at limits.{limit}");
        if let Some(metrics) = &self.services.metrics {
            metrics.limit_hit(limit);
        }
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
        let limits = self.services.kv;
        let old = store.get(&full).await.map_err(backend)?;
        if old.is_none() {
            let held = store.keys(&kv_prefix(&self.extension_id, &self.device_id)).await.map_err(backend)?.len();
            if held >= limits.keys_per_device {
                self.limit_hit("kv_keys_per_device");
                return Err(WitError::Failed(format!(
                    "the store is full: {} keys for this extension and device",
                    limits.keys_per_device
                )));
            }
        }
        let growth = size(&value) - old.as_deref().map_or(0, size);
        let usage = usage_key(&self.extension_id);
        if growth != 0 {
            match store.incr(&usage, growth).await {
                Ok(used) if growth > 0 && used > i64::try_from(limits.bytes_per_extension).unwrap_or(i64::MAX) => {
                    // Give the room back; the write is refused.
                    let _ = store.incr(&usage, -growth).await;
                    self.limit_hit("kv_bytes_per_extension");
                    return Err(WitError::Failed(format!(
                        "the store is full: extension {} keeps {} bytes at most, over all devices",
                        self.extension_id, limits.bytes_per_extension
                    )));
                }
                Ok(_) => {}
                // Redis unreachable: the write is queued like any other; counting resumes later.
                Err(StoreError::Unavailable(why)) => tracing::warn!("kv quota not counted: {why}"),
                Err(e) => return Err(backend(e)),
            }
        }
        store.set(&full, &value, None).await.map_err(backend)
    }

    async fn delete(&mut self, key: String) -> Result<(), WitError> {
        let key = self.kv_access(&key)?;
        let store = &self.services.store;
        if let Some(old) = store.get(&key).await.map_err(backend)?
            && let Err(e) = store.incr(&usage_key(&self.extension_id), -size(&old)).await
        {
            tracing::warn!("kv quota not counted: {e}");
        }
        store.delete(&key).await.map_err(backend)
    }
}
