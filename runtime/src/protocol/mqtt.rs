//! The MQTT identity of a device (device-protocol.md §3.1, §3.3), as a pure codec: the client id,
//! user name and password OTA hands out and the endpoint checks, and the topics.
//!
//! - `client_id` is `GID_<group>@@@<mac with underscores>@@@<uuid>` (the legacy form has no uuid
//!   part);
//! - `username` is base64 of a JSON object of user data (`{"ip":"…"}`);
//! - `password` is base64(HMAC-SHA256(`client_id + "|" + username`)) under the signature key,
//!   compared in constant time; with no key there is no check, as in the Node gateway;
//! - the device publishes to [`PUBLISH_TOPIC`] and is pushed to on `devices/p2p/<mac_>`, which it
//!   never subscribes to.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The topic every device publishes to.
pub const PUBLISH_TOPIC: &str = "device-server";

/// The group of the client ids we issue.
pub const GROUP: &str = "GID_xiaozhi";

/// Who an MQTT client says it is, read from its client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The device id: its MAC address with colons (`aa:bb:cc:dd:ee:ff`).
    pub device_id: String,
    /// The device's client UUID (empty in the legacy two-part form).
    pub client_id: String,
}

impl ClientIdentity {
    /// The MAC with underscores, as in the client id and the device's topic.
    pub fn mac_underscored(&self) -> String {
        self.device_id.replace(':', "_")
    }

    /// The topic the device is pushed to.
    pub fn device_topic(&self) -> String {
        device_topic(&self.device_id)
    }
}

/// The topic device `device_id` publishes to on our endpoint: `device-server/<mac_>`. The topic
/// names the device, so that instances sharing an external broker know whose message it is (a
/// broker does not tell who published).
pub fn device_publish_topic(device_id: &str) -> String {
    format!("{PUBLISH_TOPIC}/{}", device_id.replace(':', "_"))
}

/// The device id of a [`device_publish_topic`] or [`device_topic`] level (`aa_bb_cc_dd_ee_ff`).
pub fn device_of_topic_level(level: &str) -> Option<String> {
    parse_client_id(&format!("GID_x@@@{level}")).ok().map(|who| who.device_id)
}

/// The topic device `device_id` (a MAC with colons) is pushed to: `devices/p2p/<mac_>`.
pub fn device_topic(device_id: &str) -> String {
    format!("devices/p2p/{}", device_id.replace(':', "_"))
}

/// The client id OTA gives a device.
pub fn client_id(device_id: &str, uuid: &str) -> String {
    format!("{GROUP}@@@{}@@@{}", device_id.replace(':', "_"), uuid)
}

/// The user name OTA gives a device: base64 of `{"ip": <ip>}`.
pub fn username(ip: &str) -> String {
    STANDARD.encode(serde_json::json!({ "ip": ip }).to_string())
}

/// The password of `client_id` and `username` under `key`.
pub fn password(key: &str, client_id: &str, username: &str) -> String {
    STANDARD.encode(signature(key, client_id, username).finalize().into_bytes())
}

fn signature(key: &str, client_id: &str, username: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(client_id.as_bytes());
    mac.update(b"|");
    mac.update(username.as_bytes());
    mac
}

/// Whether `password` is right for `client_id` and `username`; always with an empty `key`.
pub fn password_ok(key: &str, client_id: &str, username: &str, password: &str) -> bool {
    if key.is_empty() {
        return true;
    }
    let Ok(given) = STANDARD.decode(password.trim()) else { return false };
    signature(key, client_id, username).verify_slice(&given).is_ok()
}

/// Why a client id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    /// Not `GID_<group>@@@<mac_>[@@@<uuid>]`.
    #[error("client id {0:?} is not GID_<group>@@@<mac>@@@<uuid>")]
    Shape(String),
    /// The middle part is not a MAC address.
    #[error("client id {0:?} does not carry a MAC address")]
    Mac(String),
}

/// Reads a client id: `GID_<group>@@@<mac_>@@@<uuid>` or the legacy `GID_<group>@@@<mac_>`.
pub fn parse_client_id(raw: &str) -> Result<ClientIdentity, ClientIdError> {
    let shape = || ClientIdError::Shape(raw.chars().take(128).collect());
    let mut parts = raw.split("@@@");
    let (Some(group), Some(mac)) = (parts.next(), parts.next()) else { return Err(shape()) };
    let uuid = parts.next().unwrap_or("");
    if parts.next().is_some() || !group.starts_with("GID_") || uuid.len() > 64 {
        return Err(shape());
    }
    let device_id = mac.replace('_', ":").to_ascii_lowercase();
    let octets: Vec<&str> = device_id.split(':').collect();
    let is_mac = octets.len() == 6 && octets.iter().all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    if !is_mac {
        return Err(ClientIdError::Mac(raw.chars().take(128).collect()));
    }
    Ok(ClientIdentity { device_id, client_id: uuid.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issued_identity_reads_back_and_the_password_checks() {
        let id = client_id("aa:bb:cc:dd:ee:01", "5f0c6a1e-7b2d-4c8e-9a41-3d2b6f9e0c17");
        assert_eq!(id, "GID_xiaozhi@@@aa_bb_cc_dd_ee_01@@@5f0c6a1e-7b2d-4c8e-9a41-3d2b6f9e0c17");
        let who = parse_client_id(&id).unwrap();
        assert_eq!(who.device_id, "aa:bb:cc:dd:ee:01");
        assert_eq!(who.client_id, "5f0c6a1e-7b2d-4c8e-9a41-3d2b6f9e0c17");
        assert_eq!(who.device_topic(), "devices/p2p/aa_bb_cc_dd_ee_01");
        assert_eq!(device_publish_topic(&who.device_id), "device-server/aa_bb_cc_dd_ee_01");
        assert_eq!(device_of_topic_level("aa_bb_cc_dd_ee_01").as_deref(), Some("aa:bb:cc:dd:ee:01"));
        assert_eq!(device_of_topic_level("aa_bb@@@x"), None);
        let user = username("192.168.1.20");
        assert_eq!(STANDARD.decode(&user).unwrap(), br#"{"ip":"192.168.1.20"}"#);
        let pass = password("k3y", &id, &user);
        assert!(password_ok("k3y", &id, &user, &pass));
        assert!(!password_ok("other", &id, &user, &pass), "another key");
        assert!(!password_ok("k3y", &id, &username("10.0.0.1"), &pass), "another user name");
        assert!(!password_ok("k3y", &id, &user, "bm90IGl0"), "a forged password");
        assert!(!password_ok("k3y", &id, &user, "%%%"), "not base64");
        assert!(password_ok("", &id, &user, ""), "no key, no check");
    }

    #[test]
    fn the_password_is_the_gateways_hmac() {
        // base64(HMAC-SHA256("GID_test@@@00_11_22_33_44_55@@@u|dXNlcg==", key "secret")), computed
        // independently with Python: base64.b64encode(hmac.new(b"secret", msg, sha256).digest()).
        let pass = password("secret", "GID_test@@@00_11_22_33_44_55@@@u", "dXNlcg==");
        assert_eq!(pass, "sGgf2IIg2I+Uxam0hl/PXy59upZsKWPLgENQmGqs6Ms=");
    }

    #[test]
    fn client_ids_are_checked() {
        let legacy = parse_client_id("GID_test@@@AA_BB_CC_DD_EE_FF").unwrap();
        assert_eq!((legacy.device_id.as_str(), legacy.client_id.as_str()), ("aa:bb:cc:dd:ee:ff", ""));
        for bad in ["", "client", "GID_x", "xx@@@aa_bb_cc_dd_ee_ff@@@u", "GID_x@@@aa_bb@@@u", "GID_x@@@a@@@b@@@c"] {
            assert!(parse_client_id(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(parse_client_id("GID_x@@@zz_bb_cc_dd_ee_ff@@@u"), Err(ClientIdError::Mac(_))));
    }
}
