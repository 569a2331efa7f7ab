//! Device tokens, compatible with the Python server's `core/auth.py`.
//!
//! A token is `base64url_nopad(HMAC-SHA256(key, "client_id|device_id|timestamp")) + "." +
//! timestamp`, sent by the device as `Authorization: Bearer <token>`. The OTA endpoint issues one
//! per check; the WebSocket accept path verifies it with [`Authenticator::check`]. Devices in
//! `server.auth.allowed_devices` need none.
//!
//! The signed string is unambiguous because ids may not contain `|` ([`check_id`]): otherwise a
//! token for client `c` and device `x|V` would also sign client `c|x` and device `V`. Tokens the
//! Python server issued for real ids (MAC addresses, UUIDs) keep working.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::AuthConfig;

type HmacSha256 = Hmac<Sha256>;

/// Token lifetime when `server.auth.expire_seconds` is not set: 30 days.
pub const DEFAULT_EXPIRE_SECONDS: u64 = 30 * 24 * 60 * 60;

/// How far in the future a token's timestamp may lie (clock skew between issuers), in seconds.
pub const MAX_FUTURE_SKEW_SECONDS: u64 = 5 * 60;

/// Why a device was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (or an empty one).
    #[error("no authorization token")]
    Missing,
    /// Not `[Bearer ]<signature>.<timestamp>`.
    #[error("malformed authorization token")]
    Malformed,
    /// The timestamp is older than the token lifetime.
    #[error("token expired")]
    Expired,
    /// The timestamp lies more than five minutes in the future.
    #[error("token timestamp is in the future")]
    NotYetValid,
    /// The signature does not match this client id, device id and timestamp.
    #[error("token signature does not match")]
    BadSignature,
    /// The client id or device id cannot be signed unambiguously (it contains `|` or a control
    /// character).
    #[error("the client id or device id contains '|' or a control character")]
    BadId,
}

/// Checks a `Device-Id` or `Client-Id` before it is used anywhere: at most `max_bytes` long, and
/// no `|` (the separator of the signed token string) or control characters.
pub fn check_id(id: &str, max_bytes: usize) -> Result<(), String> {
    if id.len() > max_bytes {
        return Err(format!("is longer than {max_bytes} bytes"));
    }
    match id.chars().find(|c| *c == '|' || c.is_control()) {
        Some(c) => Err(format!("contains {c:?}")),
        None => Ok(()),
    }
}

/// Whether an id can be part of the signed string.
fn signable(id: &str) -> bool {
    !id.chars().any(|c| c == '|' || c.is_control())
}

fn mac(key: &str, client_id: &str, device_id: &str, timestamp: u64) -> HmacSha256 {
    // HMAC accepts keys of any length (longer ones are hashed), so no key can make this fail.
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(format!("{client_id}|{device_id}|{timestamp}").as_bytes());
    mac
}

/// Issues the token the Python server would issue for this device at `timestamp` (Unix seconds).
pub fn issue_token(key: &str, client_id: &str, device_id: &str, timestamp: u64) -> String {
    let signature = mac(key, client_id, device_id, timestamp).finalize().into_bytes();
    format!("{}.{timestamp}", URL_SAFE_NO_PAD.encode(signature))
}

/// The configured key, or — when none is configured (absent or empty) — a random 32-byte key in
/// hex, with `true` to say it was generated: the caller should warn that issued tokens will not
/// survive a restart.
pub fn resolve_key(configured: Option<String>) -> (String, bool) {
    match configured {
        Some(key) if !key.is_empty() => (key, false),
        _ => {
            let bytes: [u8; 32] = rand::random();
            (bytes.iter().map(|b| format!("{b:02x}")).collect(), true)
        }
    }
}

/// Checks device tokens against one key and the `server.auth` settings. Its `Debug` output
/// leaves the key out.
#[derive(Clone)]
pub struct Authenticator {
    key: String,
    enabled: bool,
    allowed: HashSet<String>,
    expire_seconds: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("key", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("allowed", &self.allowed)
            .field("expire_seconds", &self.expire_seconds)
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for `key` with the `server.auth` settings (lifetime `expire_seconds`, or
    /// 30 days when absent).
    pub fn new(key: String, auth: &AuthConfig) -> Self {
        Self {
            key,
            enabled: auth.enabled,
            allowed: auth.allowed_devices.iter().cloned().collect(),
            expire_seconds: auth.expire_seconds.unwrap_or(DEFAULT_EXPIRE_SECONDS),
        }
    }

    /// The signing key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether devices must present a token at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `device_id` needs a token: auth is enabled and the device is not allow-listed.
    pub fn requires_token(&self, device_id: &str) -> bool {
        self.enabled && !self.allowed.contains(device_id)
    }

    /// A fresh token for this device, issued at `now` (Unix seconds).
    pub fn issue(&self, client_id: &str, device_id: &str, now: u64) -> String {
        issue_token(&self.key, client_id, device_id, now)
    }

    /// Checks the `Authorization` header value of a device at `now` (Unix seconds).
    ///
    /// Passes when auth is disabled or the device is allow-listed. Otherwise the value must be
    /// `Bearer <token>` (any case of `bearer`) or the bare token, not expired, not more than five
    /// minutes in the future, and signed for this client id and device id; the signature is
    /// compared in constant time.
    pub fn check(
        &self,
        authorization: Option<&str>,
        client_id: &str,
        device_id: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        if !self.requires_token(device_id) {
            return Ok(());
        }
        if !signable(client_id) || !signable(device_id) {
            return Err(AuthError::BadId);
        }
        let value = authorization.map(str::trim).filter(|v| !v.is_empty()).ok_or(AuthError::Missing)?;
        let token = match value.split_once(char::is_whitespace) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            Some(_) => return Err(AuthError::Malformed),
            None => value,
        };
        let (signature, timestamp) = token.split_once('.').ok_or(AuthError::Malformed)?;
        if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AuthError::Malformed);
        }
        let timestamp: u64 = timestamp.parse().map_err(|_| AuthError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::Malformed)?;
        // An HMAC-SHA256 is 32 bytes; anything else cannot be one of our tokens.
        if signature.len() != 32 {
            return Err(AuthError::Malformed);
        }
        if now.saturating_sub(timestamp) > self.expire_seconds {
            return Err(AuthError::Expired);
        }
        if timestamp.saturating_sub(now) > MAX_FUTURE_SKEW_SECONDS {
            return Err(AuthError::NotYetValid);
        }
        mac(&self.key, client_id, device_id, timestamp).verify_slice(&signature).map_err(|_| AuthError::BadSignature)
    }
}

/// The issue time (Unix seconds) of the token in an `Authorization` value, if it has one.
pub fn token_timestamp(authorization: &str) -> Option<u64> {
    let value = authorization.trim();
    let token = match value.split_once(char::is_whitespace) {
        Some((_, rest)) => rest.trim(),
        None => value,
    };
    token.split_once('.')?.1.parse().ok()
}

/// The store key holding the time before which a device's tokens are revoked.
fn revocation_key(device_id: &str) -> String {
    format!("revoked/{}", crate::store::segment(device_id))
}

/// Revokes every token of `device_id` issued at or before `now` (Unix seconds); tokens issued
/// later (the device's next OTA check) work. The entry expires after `lifetime`, when those
/// tokens would have expired anyway.
///
/// # Errors
/// The store failed.
pub async fn revoke(
    store: &dyn crate::store::Store,
    device_id: &str,
    now: u64,
    lifetime: std::time::Duration,
) -> Result<(), crate::store::StoreError> {
    store.set(&revocation_key(device_id), now.to_string().as_bytes(), Some(lifetime)).await
}

/// Whether the token issued at `timestamp` for `device_id` is revoked. A store that cannot
/// answer counts as "not revoked" (logged): an outage must not lock every device out.
pub async fn is_revoked(store: &dyn crate::store::Store, device_id: &str, timestamp: u64) -> bool {
    match store.get(&revocation_key(device_id)).await {
        Ok(Some(value)) => String::from_utf8_lossy(&value).parse::<u64>().is_ok_and(|before| timestamp <= before),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(device = device_id, "token revocations unreadable, not checked: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revoked_tokens_are_refused_until_a_new_one_is_issued() {
        let store = crate::store::memory::MemoryStore::new();
        let old = issue_token("k", CLIENT, DEVICE, 1_000);
        let ts = token_timestamp(&format!("Bearer {old}")).expect("timestamp");
        assert_eq!(ts, 1_000);
        assert!(!is_revoked(&store, DEVICE, ts).await);
        revoke(&store, DEVICE, 2_000, std::time::Duration::from_secs(60)).await.expect("revoke");
        assert!(is_revoked(&store, DEVICE, ts).await);
        assert!(is_revoked(&store, DEVICE, 2_000).await);
        assert!(!is_revoked(&store, DEVICE, 2_001).await, "a token issued after the revocation works");
        assert!(!is_revoked(&store, "other", ts).await, "other devices are not touched");
        assert_eq!(token_timestamp("garbage"), None);
    }

    const CLIENT: &str = "3c4f2a8e-1b2c-4d5e-8f90-a1b2c3d4e5f6";
    const DEVICE: &str = "aa:bb:cc:dd:ee:ff";
    const NOW: u64 = 1_757_567_894;

    fn enabled(allowed: &[&str], expire: Option<u64>) -> Authenticator {
        let cfg = AuthConfig {
            enabled: true,
            allowed_devices: allowed.iter().map(|s| s.to_string()).collect(),
            expire_seconds: expire,
        };
        Authenticator::new("my-secret-key".into(), &cfg)
    }

    #[test]
    fn matches_the_python_algorithm() {
        // python3: base64.urlsafe_b64encode(hmac.new(b"my-secret-key",
        //   b"3c4f2a8e-1b2c-4d5e-8f90-a1b2c3d4e5f6|aa:bb:cc:dd:ee:ff|1757567894", sha256).digest()).rstrip(b"=")
        assert_eq!(
            issue_token("my-secret-key", CLIENT, DEVICE, NOW),
            "xXWPz4iZnfLvT0Sf59mXkueC3P1cNdHWCz0qNtMmWMM.1757567894"
        );
    }

    #[test]
    fn issued_tokens_verify_in_every_header_form() {
        let auth = enabled(&[], None);
        let token = auth.issue(CLIENT, DEVICE, NOW);
        assert_eq!(auth.check(Some(&format!("Bearer {token}")), CLIENT, DEVICE, NOW), Ok(()));
        assert_eq!(auth.check(Some(&format!("bearer  {token}")), CLIENT, DEVICE, NOW + 60), Ok(()));
        assert_eq!(auth.check(Some(&token), CLIENT, DEVICE, NOW), Ok(()));
        // Thirty days later still valid, one second more is not.
        assert_eq!(auth.check(Some(&token), CLIENT, DEVICE, NOW + DEFAULT_EXPIRE_SECONDS), Ok(()));
        assert_eq!(auth.check(Some(&token), CLIENT, DEVICE, NOW + DEFAULT_EXPIRE_SECONDS + 1), Err(AuthError::Expired));
    }

    #[test]
    fn refuses_wrong_device_tampering_and_bad_times() {
        let auth = enabled(&[], Some(3600));
        let token = auth.issue(CLIENT, DEVICE, NOW);
        let header = format!("Bearer {token}");
        assert_eq!(auth.check(Some(&header), CLIENT, "11:22:33:44:55:66", NOW), Err(AuthError::BadSignature));
        assert_eq!(auth.check(Some(&header), "other-client", DEVICE, NOW), Err(AuthError::BadSignature));

        let (sig, ts) = token.split_once('.').unwrap();
        let mut tampered: Vec<char> = sig.chars().collect();
        tampered[0] = if tampered[0] == 'A' { 'B' } else { 'A' };
        let tampered: String = tampered.into_iter().collect();
        assert_eq!(auth.check(Some(&format!("{tampered}.{ts}")), CLIENT, DEVICE, NOW), Err(AuthError::BadSignature));
        // The same signature with another timestamp does not verify.
        assert_eq!(auth.check(Some(&format!("{sig}.{}", NOW + 1)), CLIENT, DEVICE, NOW), Err(AuthError::BadSignature));

        assert_eq!(auth.check(Some(&header), CLIENT, DEVICE, NOW + 3601), Err(AuthError::Expired));
        let future = auth.issue(CLIENT, DEVICE, NOW + MAX_FUTURE_SKEW_SECONDS + 1);
        assert_eq!(auth.check(Some(&future), CLIENT, DEVICE, NOW), Err(AuthError::NotYetValid));
        let near_future = auth.issue(CLIENT, DEVICE, NOW + MAX_FUTURE_SKEW_SECONDS);
        assert_eq!(auth.check(Some(&near_future), CLIENT, DEVICE, NOW), Ok(()));
    }

    #[test]
    fn refuses_missing_and_malformed() {
        let auth = enabled(&[], None);
        assert_eq!(auth.check(None, CLIENT, DEVICE, NOW), Err(AuthError::Missing));
        assert_eq!(auth.check(Some("  "), CLIENT, DEVICE, NOW), Err(AuthError::Missing));
        for bad in
            ["Bearer", "Bearer abc", "Basic abc.123", "abc.", "abc.12x", "abc.-5", "!!!.123", "a.b.c", "Bearer .1"]
        {
            let got = auth.check(Some(bad), CLIENT, DEVICE, NOW);
            assert!(matches!(got, Err(AuthError::Malformed | AuthError::BadSignature)), "{bad}: {got:?}");
        }
        assert_eq!(auth.check(Some("Basic abc.123"), CLIENT, DEVICE, NOW), Err(AuthError::Malformed));
        assert_eq!(auth.check(Some("abc.99999999999999999999999"), CLIENT, DEVICE, NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn allow_list_and_disabled_skip_the_check() {
        let auth = enabled(&[DEVICE], None);
        assert!(!auth.requires_token(DEVICE));
        assert!(auth.requires_token("11:22:33:44:55:66"));
        assert_eq!(auth.check(None, CLIENT, DEVICE, NOW), Ok(()));
        assert_eq!(auth.check(None, CLIENT, "11:22:33:44:55:66", NOW), Err(AuthError::Missing));
        let off = Authenticator::new("k".into(), &AuthConfig::default());
        assert!(!off.enabled());
        assert_eq!(off.check(Some("garbage"), CLIENT, DEVICE, NOW), Ok(()));
    }

    #[test]
    fn a_separator_in_an_id_cannot_forge_another_identity() {
        let auth = enabled(&[], None);
        // Minted for client `c`, device `x|V`: the signed string is `c|x|V|ts`, the same as for
        // client `c|x`, device `V`. Neither id may carry the separator, so neither verifies.
        let token = issue_token("my-secret-key", "c", "x|V", NOW);
        assert_eq!(auth.check(Some(&token), "c|x", "V", NOW), Err(AuthError::BadId));
        assert_eq!(auth.check(Some(&token), "c", "x|V", NOW), Err(AuthError::BadId));
        assert_eq!(auth.check(Some(&token), "c", "x\nV", NOW), Err(AuthError::BadId));
        assert!(check_id("x|V", 128).is_err());
        assert!(check_id(&"a".repeat(129), 128).is_err());
        assert_eq!(check_id(DEVICE, 128), Ok(()));
        assert_eq!(check_id(CLIENT, 128), Ok(()));
        // Normal ids keep the Python server's tokens working.
        let python = "xXWPz4iZnfLvT0Sf59mXkueC3P1cNdHWCz0qNtMmWMM.1757567894";
        assert_eq!(auth.check(Some(python), CLIENT, DEVICE, NOW), Ok(()));
    }

    #[test]
    fn resolves_keys() {
        assert_eq!(resolve_key(Some("abc".into())), ("abc".into(), false));
        let (a, generated) = resolve_key(None);
        assert!(generated);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        let (b, generated) = resolve_key(Some(String::new()));
        assert!(generated);
        assert_ne!(a, b);
    }
}
