//! Entry points for the fuzz targets (`runtime/fuzz/`, run with `cargo +nightly fuzz run <name>`)
//! and for the regression test that replays every kept input on stable Rust. Each takes arbitrary
//! bytes, feeds them to one parser of untrusted input and checks what must hold for any input;
//! a panic is the failure.

use crate::protocol::frame::{self, ProtocolVersion};

/// Binary audio frames of every protocol version: decoding never panics, and a decoded frame
/// re-encodes to a frame that decodes to the same payload and timestamp.
pub fn frame(data: &[u8]) {
    for version in [ProtocolVersion::V1, ProtocolVersion::V2, ProtocolVersion::V3] {
        let Ok(decoded) = frame::decode(version, data) else { continue };
        assert!(decoded.payload.len() <= frame::MAX_AUDIO_PAYLOAD);
        let mut encoded = Vec::new();
        frame::encode(version, decoded.payload, decoded.timestamp, &mut encoded);
        let again = frame::decode(version, &encoded).expect("an encoded frame decodes");
        assert_eq!(again.payload, decoded.payload);
        if version == ProtocolVersion::V2 {
            assert_eq!(again.timestamp, decoded.timestamp);
        }
    }
}

/// Device JSON messages (text WebSocket frames): parsing never panics, whatever the bytes.
pub fn device_message(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::protocol::message::parse_inbound(text);
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            let _ = crate::protocol::mcp::parse(&value);
        }
    }
}

/// The OTA request: the first line (up to `\n`) is the `Device-Id` header, the rest the body.
pub fn ota_request(data: &[u8]) {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut headers = hyper::HeaderMap::new();
    if let Ok(value) = hyper::header::HeaderValue::from_bytes(header) {
        headers.insert("device-id", value);
    }
    let _ = crate::http::ota::parse_request(&headers, body);
}

/// `extension.toml` manifests: parsing never panics, and an accepted manifest has a valid id.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(manifest) = crate::extensions::Manifest::parse(text)
    {
        assert!(!manifest.id.is_empty() && !manifest.id.contains('/'));
    }
}

/// Config files: the bytes (split at the first NUL into `config.yaml` and `data/.config.yaml`)
/// load or fail with an error, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (base, override_text) = match text.split_once('\0') {
        Some((base, over)) => (base, Some(over)),
        None => (text, None),
    };
    let _ = crate::config::load_str(base, override_text);
}

/// MQTT + UDP audio datagrams: opening never panics, a datagram opens at most once (a replay is
/// dropped), and what opens re-seals to the same length.
pub fn udp_packet(data: &[u8]) {
    use crate::protocol::udp::{HEADER_LEN, Opener, Sealer, SessionKeys};
    // The stream id the seed inputs use.
    let keys = SessionKeys::new([7; 16], 0x0102_0304);
    let mut opener = Opener::new(keys.clone());
    let any = |_: &[u8]| true;
    if let Ok(opened) = opener.open(data, any) {
        assert_eq!(opened.payload.len() + HEADER_LEN, data.len());
        assert!(opener.open(data, any).is_err(), "a datagram opens once");
        let sealed = Sealer::new(keys).seal(&opened.payload, opened.header.timestamp).expect("it fitted before");
        assert_eq!(sealed.len(), data.len());
    }
}

/// MQTT packets as a device sends them to the built-in endpoint: reading never panics, and a
/// CONNECT's client id and password go through the endpoint's checks.
pub fn mqtt_packet(data: &[u8]) {
    use rumqttc::mqttbytes::v4::Packet;
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(packet) = Packet::read(&mut buf, 64 * 1024) {
        if let Packet::Connect(connect) = packet {
            let _ = crate::protocol::mqtt::parse_client_id(&connect.client_id);
            if let Some(login) = &connect.login {
                let _ = crate::protocol::mqtt::password_ok("key", &connect.client_id, &login.username, &login.password);
            }
        }
    }
}

/// One fuzz target: its name (the directory of its inputs) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// The fuzz targets by name, for the regression test.
pub const TARGETS: [Target; 7] = [
    ("frame", frame),
    ("device_message", device_message),
    ("ota_request", ota_request),
    ("manifest", manifest),
    ("config", config),
    ("udp_packet", udp_packet),
    ("mqtt_packet", mqtt_packet),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the seed corpus and every input a fuzzer ever flagged (`runtime/fuzz/corpus/<target>/`,
    /// `runtime/fuzz/regressions/<target>/`) through the targets.
    #[test]
    fn kept_fuzz_inputs_never_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            for dir in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else { continue };
                for entry in entries.flatten() {
                    let data = std::fs::read(entry.path()).expect("read input");
                    target(&data);
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= TARGETS.len(), "the seed corpus is missing: {replayed} inputs");
    }
}
