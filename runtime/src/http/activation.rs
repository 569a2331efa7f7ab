//! Device activation: which devices are bound, and the 6-digit codes of those waiting.
//!
//! With `activation.enabled`, the OTA answer of a device that is not bound carries an `activation`
//! section with a code; the device shows and speaks it and polls `/xiaozhi/ota/activate` until the
//! owner runs `xiaozhi-server bind <code>`, which moves the device from waiting to bound.
//!
//! Closed against strangers:
//!
//! - A code belongs to one device *and* one `Client-Id` (the UUID in the device's flash): someone
//!   who sends the device's MAC address from another client gets another code, which the owner
//!   never sees, so the owner's binding always goes to the owner's device. The binding keeps that
//!   `Client-Id`, and only requests carrying it are given the device's token or let in.
//! - A device with an eFuse key (`Serial-Number` header, its key in `activation.hmac_keys`) must
//!   also prove it holds the key: its challenge is random, and the `hmac` it posts to
//!   `/xiaozhi/ota/activate` must be HMAC-SHA256(key, challenge) (device-protocol.md §5.3). Until
//!   it has, it gets no token.
//! - Waiting devices expire: a code and its record live `limits.activation_code_ttl` seconds, and
//!   one IP address may cause `limits.new_devices_per_ip_per_minute` new codes (the OTA route
//!   answers 429 beyond, see [`super::limit`]).
//!
//! The state lives in the [`Store`] (so every instance sharing a Redis agrees on it):
//! `binding/<device>` → [`BoundDevice`], `activation/code/<code>` → [`PendingCode`] and
//! `activation/device/<device>/<client>` → the code (device and client segments escaped by
//! [`crate::store::segment`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

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
    /// Every code drawn was already pending.
    #[error("could not find a free activation code")]
    NoFreeCode,
}

/// What a device with an eFuse key must prove before it gets a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyProof {
    /// The device's `Serial-Number`; its key is `activation.hmac_keys.<serial>`.
    pub serial: String,
    /// The random challenge the device must sign.
    pub challenge: String,
    /// Whether the device has posted a valid HMAC of the challenge.
    pub proven: bool,
}

/// A bound device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundDevice {
    /// When it was bound (Unix seconds).
    pub bound_at: u64,
    /// The `Client-Id` it was bound with (absent in bindings made before this was kept).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The key proof, for devices with an eFuse key.
    #[serde(default)]
    pub proof: Option<KeyProof>,
}

impl BoundDevice {
    /// Whether a request from `client_id` may act as this device: it carries the bound
    /// `Client-Id` (when one was kept), and a device with a key has proven it.
    pub fn admits(&self, client_id: &str) -> bool {
        self.client_id.as_deref().is_none_or(|bound| bound == client_id) && self.proof.as_ref().is_none_or(|p| p.proven)
    }
}

/// A device waiting to be bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCode {
    /// The device (its `Device-Id`, the MAC address).
    pub device_id: String,
    /// When the code was created (Unix seconds).
    pub created: u64,
    /// The `Client-Id` that asked for the code.
    #[serde(default)]
    pub client_id: String,
    /// The key proof, for devices with an eFuse key.
    #[serde(default)]
    pub proof: Option<KeyProof>,
}

fn binding_key(device_id: &str) -> String {
    format!("binding/{}", segment(device_id))
}

fn code_key(code: &str) -> String {
    format!("activation/code/{}", segment(code))
}

fn device_code_key(device_id: &str, client_id: &str) -> String {
    format!("activation/device/{}/{}", segment(device_id), segment(client_id))
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

async fn write<T: Serialize>(
    store: &dyn Store,
    key: &str,
    value: &T,
    ttl: Option<Duration>,
) -> Result<(), ActivationError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| ActivationError::Corrupt { key: key.to_owned(), message: e.to_string() })?;
    Ok(store.set(key, &bytes, ttl).await?)
}

/// The devices that are bound.
pub async fn bound_devices(store: &dyn Store) -> Result<Vec<String>, ActivationError> {
    let prefix = binding_key("");
    Ok(store.keys(&prefix).await?.iter().filter_map(|k| k.strip_prefix(&prefix)).map(crate::store::unsegment).collect())
}

/// Unbinds `device_id` (it is asked to activate again at its next OTA check when activation is on).
pub async fn unbind(store: &dyn Store, device_id: &str) -> Result<(), ActivationError> {
    Ok(store.delete(&binding_key(device_id)).await?)
}

/// The binding of `device_id`, if it is bound.
pub async fn binding(store: &dyn Store, device_id: &str) -> Result<Option<BoundDevice>, ActivationError> {
    read(store, &binding_key(device_id)).await
}

/// Whether `device_id` is bound. An unreadable state counts as "not bound" (and is logged), so
/// a broken store keeps devices in activation rather than letting them in.
pub async fn is_bound(store: &dyn Store, device_id: &str) -> bool {
    match binding(store, device_id).await {
        Ok(bound) => bound.is_some(),
        Err(e) => {
            tracing::error!("activation state unreadable: {e}");
            false
        }
    }
}

/// Whether a connection from `client_id` may act as the bound device `device_id` (see
/// [`BoundDevice::admits`]). Unbound devices, and an unreadable state, are refused.
pub async fn admits(store: &dyn Store, device_id: &str, client_id: &str) -> bool {
    match binding(store, device_id).await {
        Ok(Some(bound)) => bound.admits(client_id),
        Ok(None) => false,
        Err(e) => {
            tracing::error!("activation state unreadable: {e}");
            false
        }
    }
}

/// The pending code of `device_id` asked for by `client_id`, with its record, if it has one.
pub async fn pending(
    store: &dyn Store,
    device_id: &str,
    client_id: &str,
) -> Result<Option<(String, PendingCode)>, ActivationError> {
    let Some(code) = store.get(&device_code_key(device_id, client_id)).await? else {
        return Ok(None);
    };
    let code = String::from_utf8_lossy(&code).into_owned();
    let record = read::<PendingCode>(store, &code_key(&code)).await?;
    Ok(record.filter(|p| p.device_id == device_id && p.client_id == client_id).map(|p| (code, p)))
}

/// Draws a new random 6-digit code, unique among pending codes, for `device_id` asked for by
/// `client_id`, and stores it for `ttl`. `proof` is set for devices with an eFuse key.
pub async fn new_code(
    store: &dyn Store,
    device_id: &str,
    client_id: &str,
    proof: Option<KeyProof>,
    ttl: Duration,
) -> Result<String, ActivationError> {
    for _ in 0..CODE_ATTEMPTS {
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        if store.get(&code_key(&code)).await?.is_some() {
            continue;
        }
        let record = PendingCode {
            device_id: device_id.to_owned(),
            created: now_secs(),
            client_id: client_id.to_owned(),
            proof,
        };
        write(store, &code_key(&code), &record, Some(ttl)).await?;
        store.set(&device_code_key(device_id, client_id), code.as_bytes(), Some(ttl)).await?;
        return Ok(code);
    }
    Err(ActivationError::NoFreeCode)
}

/// A fresh random challenge for a device with a key: 32 hex digits.
pub fn random_challenge() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Binds `device_id` for `client_id` without a code: the console's own talk page, which an
/// operator signed in to the console opens.
pub async fn bind_directly(store: &dyn Store, device_id: &str, client_id: &str) -> Result<(), ActivationError> {
    let bound = BoundDevice { bound_at: now_secs(), client_id: Some(client_id.to_owned()), proof: None };
    write(store, &binding_key(device_id), &bound, None).await
}

/// Binds the device waiting with `code` and returns its device id.
pub async fn bind(store: &dyn Store, code: &str) -> Result<String, ActivationError> {
    let code = code.trim();
    let pending = read::<PendingCode>(store, &code_key(code))
        .await?
        .ok_or_else(|| ActivationError::UnknownCode(code.to_string()))?;
    let client_id = Some(pending.client_id.clone()).filter(|c| !c.is_empty());
    let bound = BoundDevice { bound_at: now_secs(), client_id, proof: pending.proof.clone() };
    write(store, &binding_key(&pending.device_id), &bound, None).await?;
    store.delete(&code_key(code)).await?;
    store.delete(&device_code_key(&pending.device_id, &pending.client_id)).await?;
    Ok(pending.device_id)
}

/// What the device posts to `/xiaozhi/ota/activate` (device-protocol.md §5.3); `{}` from devices
/// without an eFuse serial.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActivateRequest {
    /// `hmac-sha256`.
    pub algorithm: String,
    /// The eFuse serial number.
    pub serial_number: String,
    /// The challenge it signed.
    pub challenge: String,
    /// 64 lowercase hex digits: HMAC-SHA256(key, challenge).
    pub hmac: String,
}

/// Whether `request` proves the key `key_hex` (hex) for `proof`.
pub fn verifies(proof: &KeyProof, key_hex: &str, request: &ActivateRequest) -> bool {
    let Some(key) = decode_hex(key_hex.trim()) else {
        tracing::warn!(serial = %proof.serial, "activation.hmac_keys: the key is not hex");
        return false;
    };
    let Some(signature) = decode_hex(request.hmac.trim()) else { return false };
    if request.serial_number != proof.serial || request.challenge != proof.challenge {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else { return false };
    mac.update(proof.challenge.as_bytes());
    mac.verify_slice(&signature).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.is_empty() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Records a valid key proof for `device_id` (its binding, else its pending code from
/// `client_id`). Returns whether the device has proven its key (now or before).
pub async fn prove(
    store: &dyn Store,
    device_id: &str,
    client_id: &str,
    key_hex: &str,
    request: &ActivateRequest,
    ttl: Duration,
) -> Result<bool, ActivationError> {
    if let Some(mut bound) = binding(store, device_id).await? {
        let Some(proof) = bound.proof.as_mut() else { return Ok(true) };
        if proof.proven {
            return Ok(true);
        }
        if !verifies(proof, key_hex, request) {
            return Ok(false);
        }
        proof.proven = true;
        write(store, &binding_key(device_id), &bound, None).await?;
        return Ok(true);
    }
    let Some((code, mut pending)) = pending(store, device_id, client_id).await? else { return Ok(false) };
    let Some(proof) = pending.proof.as_mut() else { return Ok(true) };
    if !proof.proven && verifies(proof, key_hex, request) {
        proof.proven = true;
        write(store, &code_key(&code), &pending, Some(ttl)).await?;
        return Ok(true);
    }
    Ok(proof.proven)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn code_is_stable_until_bound_and_keeps_the_client() {
        let store = MemoryStore::new();
        assert!(!is_bound(&store, "aa:bb").await);
        assert!(pending(&store, "aa:bb", "c1").await.unwrap().is_none());
        let code = new_code(&store, "aa:bb", "c1", None, HOUR).await.unwrap();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(pending(&store, "aa:bb", "c1").await.unwrap().map(|(c, _)| c), Some(code.clone()));
        // Another client sending the same MAC address has no code (and would get its own).
        assert!(pending(&store, "aa:bb", "intruder").await.unwrap().is_none());
        let other = new_code(&store, "cc:dd", "c2", None, HOUR).await.unwrap();
        assert_ne!(other, code);

        assert_eq!(bind(&store, &format!(" {code}\n")).await.unwrap(), "aa:bb");
        assert!(is_bound(&store, "aa:bb").await);
        assert!(admits(&store, "aa:bb", "c1").await);
        assert!(!admits(&store, "aa:bb", "intruder").await, "only the bound client acts as the device");
        assert!(!is_bound(&store, "cc:dd").await);
        assert!(matches!(bind(&store, &code).await, Err(ActivationError::UnknownCode(_))), "a code binds once");
        assert_eq!(pending(&store, "cc:dd", "c2").await.unwrap().map(|(c, _)| c), Some(other), "others keep theirs");
    }

    #[tokio::test]
    async fn codes_expire_with_their_ttl() {
        let store = MemoryStore::new();
        let code = new_code(&store, "aa:bb", "c1", None, Duration::from_millis(50)).await.unwrap();
        assert!(store.get(&code_key(&code)).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(store.get(&code_key(&code)).await.unwrap().is_none());
        assert!(pending(&store, "aa:bb", "c1").await.unwrap().is_none());
        assert!(matches!(bind(&store, &code).await, Err(ActivationError::UnknownCode(_))));
    }

    #[tokio::test]
    async fn a_device_with_a_key_must_prove_it() {
        let store = MemoryStore::new();
        let key = "00112233445566778899aabbccddeeff";
        let challenge = random_challenge();
        assert_eq!(challenge.len(), 32);
        let proof = KeyProof { serial: "SN1".into(), challenge: challenge.clone(), proven: false };
        let code = new_code(&store, "aa:bb", "c1", Some(proof), HOUR).await.unwrap();
        bind(&store, &code).await.unwrap();
        assert!(is_bound(&store, "aa:bb").await);
        assert!(!admits(&store, "aa:bb", "c1").await, "bound, but the key is not proven yet");

        let mut mac = Hmac::<Sha256>::new_from_slice(&decode_hex(key).unwrap()).unwrap();
        mac.update(challenge.as_bytes());
        let hmac: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let forged = ActivateRequest {
            algorithm: "hmac-sha256".into(),
            serial_number: "SN1".into(),
            challenge: challenge.clone(),
            hmac: "00".repeat(32),
        };
        assert!(!prove(&store, "aa:bb", "c1", key, &forged, HOUR).await.unwrap());
        assert!(!admits(&store, "aa:bb", "c1").await);
        let real = ActivateRequest { hmac, ..forged };
        assert!(prove(&store, "aa:bb", "c1", key, &real, HOUR).await.unwrap());
        assert!(admits(&store, "aa:bb", "c1").await);
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
                tokio::spawn(
                    async move { new_code(store.as_ref(), &format!("dev{i}"), "c", None, HOUR).await.unwrap() },
                )
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let code = task.await.unwrap();
            assert_eq!(bind(store.as_ref(), &code).await.unwrap(), format!("dev{i}"));
        }
    }
}
