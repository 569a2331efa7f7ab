//! Device activation: which devices are bound, and the 6-digit codes of those waiting.
//!
//! With `activation.enabled`, the OTA answer of a device that is not bound carries an `activation`
//! section with a code; the device shows and speaks it and polls `/xiaozhi/ota/activate` until the
//! owner runs `xiaozhi-server bind <code>`, which moves the device from waiting to bound.
//!
//! The state lives in the [`Store`] (so every instance sharing a Redis agrees on it):
//! `binding/<device>` → `{"bound_at": ts}`, `activation/code/<code>` → `{"device_id", "created"}`
//! and `activation/device/<device>` → the code (Unix seconds; device segments escaped by
//! [`crate::store::segment`]).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, segment};

/// Attempts at drawing a code not already pending before giving up.
const CODE_ATTEMPTS: usize = 1000;

/// Why the activation state could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// The store failed.
    #[error("activation state: {0}")]
    Store(#[from] StoreError),
    /// A stored entry is not the expected JSON.
    #[error("activation state under {key} is invalid: {message}")]
    Corrupt {
        /// The store key.
        key: String,
        /// The parse error.
        message: String,
    },
    /// `bind` was given a code that no device is waiting with.
    #[error("no device is waiting with activation code {0:?} (the code is shown on the device after its OTA check)")]
    UnknownCode(String),
    /// Every code drawn was already pending (a million devices waiting).
    #[error("could not find a free activation code")]
    NoFreeCode,
}

/// A bound device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundDevice {
    /// When it was bound (Unix seconds).
    pub bound_at: u64,
}

/// A device waiting to be bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCode {
    /// The device (its `Device-Id`, the MAC address).
    pub device_id: String,
    /// When the code was created (Unix seconds).
    pub created: u64,
}

fn binding_key(device_id: &str) -> String {
    format!("binding/{}", segment(device_id))
}

fn code_key(code: &str) -> String {
    format!("activation/code/{}", segment(code))
}

fn device_code_key(device_id: &str) -> String {
    format!("activation/device/{}", segment(device_id))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

async fn read<T: for<'de> Deserialize<'de>>(store: &dyn Store, key: &str) -> Result<Option<T>, ActivationError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ActivationError::Corrupt { key: key.to_owned(), message: e.to_string() }),
    }
}

async fn write<T: Serialize>(store: &dyn Store, key: &str, value: &T) -> Result<(), ActivationError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| ActivationError::Corrupt { key: key.to_owned(), message: e.to_string() })?;
    Ok(store.set(key, &bytes, None).await?)
}

/// Whether `device_id` is bound. An unreadable state counts as "not bound" (and is logged), so
/// a broken store keeps devices in activation rather than letting them in.
pub async fn is_bound(store: &dyn Store, device_id: &str) -> bool {
    match read::<BoundDevice>(store, &binding_key(device_id)).await {
        Ok(bound) => bound.is_some(),
        Err(e) => {
            tracing::error!("activation state unreadable: {e}");
            false
        }
    }
}

/// The activation code of `device_id`: its pending code if it has one, otherwise a new random
/// 6-digit code, unique among pending codes, which is stored. The code stays the same until the
/// device is bound.
pub async fn pending_code(store: &dyn Store, device_id: &str) -> Result<String, ActivationError> {
    if let Some(code) = store.get(&device_code_key(device_id)).await? {
        let code = String::from_utf8_lossy(&code).into_owned();
        let pending = read::<PendingCode>(store, &code_key(&code)).await?;
        if pending.is_some_and(|p| p.device_id == device_id) {
            return Ok(code);
        }
    }
    for _ in 0..CODE_ATTEMPTS {
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        if store.get(&code_key(&code)).await?.is_some() {
            continue;
        }
        write(store, &code_key(&code), &PendingCode { device_id: device_id.to_owned(), created: now_secs() }).await?;
        store.set(&device_code_key(device_id), code.as_bytes(), None).await?;
        return Ok(code);
    }
    Err(ActivationError::NoFreeCode)
}

/// Binds the device waiting with `code` and returns its device id.
pub async fn bind(store: &dyn Store, code: &str) -> Result<String, ActivationError> {
    let code = code.trim();
    let pending = read::<PendingCode>(store, &code_key(code))
        .await?
        .ok_or_else(|| ActivationError::UnknownCode(code.to_string()))?;
    write(store, &binding_key(&pending.device_id), &BoundDevice { bound_at: now_secs() }).await?;
    store.delete(&code_key(code)).await?;
    store.delete(&device_code_key(&pending.device_id)).await?;
    Ok(pending.device_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn code_is_stable_until_bound() {
        let store = MemoryStore::new();
        assert!(!is_bound(&store, "aa:bb").await);
        let code = pending_code(&store, "aa:bb").await.unwrap();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(pending_code(&store, "aa:bb").await.unwrap(), code);
        let other = pending_code(&store, "cc:dd").await.unwrap();
        assert_ne!(other, code);

        assert_eq!(bind(&store, &format!(" {code}\n")).await.unwrap(), "aa:bb");
        assert!(is_bound(&store, "aa:bb").await);
        assert!(!is_bound(&store, "cc:dd").await);
        assert!(matches!(bind(&store, &code).await, Err(ActivationError::UnknownCode(_))), "a code binds once");
        assert_eq!(pending_code(&store, "cc:dd").await.unwrap(), other, "other devices keep their codes");
    }

    #[tokio::test]
    async fn unknown_code_and_corrupt_state_are_clear_errors() {
        let store = MemoryStore::new();
        let err = bind(&store, "123456").await.unwrap_err();
        assert!(matches!(err, ActivationError::UnknownCode(ref c) if c == "123456"));
        assert!(err.to_string().contains("123456"));
        store.set("activation/code/654321", b"{not json", None).await.unwrap();
        assert!(matches!(bind(&store, "654321").await, Err(ActivationError::Corrupt { .. })));
        store.set(&binding_key("aa"), b"{not json", None).await.unwrap();
        assert!(!is_bound(&store, "aa").await);
    }

    #[tokio::test]
    async fn concurrent_requests_keep_every_code() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = std::sync::Arc::clone(&store);
                tokio::spawn(async move { pending_code(store.as_ref(), &format!("dev{i}")).await.unwrap() })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let code = task.await.unwrap();
            assert_eq!(bind(store.as_ref(), &code).await.unwrap(), format!("dev{i}"));
        }
    }
}
