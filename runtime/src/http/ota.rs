//! The OTA check (`POST /xiaozhi/ota/`) and the activation poll (`POST /xiaozhi/ota/activate`).
//!
//! The check is how a device learns where to connect: the answer's `websocket` section is written
//! to the device's NVS (device-protocol.md §5.2). It also carries the server time, the firmware
//! upgrade offer and, when activation is on and the device is not bound, its activation code.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use serde_json::{Map, Value, json};

#[cfg(doc)]
use super::activation;
use super::firmware;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::protocol::frame::ProtocolVersion;
use crate::protocol::mqtt;

/// What the OTA check needs from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaRequest {
    /// `Device-Id` (the MAC address).
    pub device_id: String,
    /// `Client-Id`, else the report's `uuid`, else empty.
    pub client_id: String,
    /// The board type: `board.type`, else the `device-model` / `model` header.
    pub model: Option<String>,
    /// The running firmware version: `application.version`, else the `device-version` /
    /// `firmware-version` / `app-version` header.
    pub version: Option<String>,
    /// The `Host` the device used (validated), e.g. `192.168.1.5:8003`.
    pub host: Option<String>,
}

/// Why an OTA request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtaRequestError {
    /// No `Device-Id` header.
    MissingDeviceId,
    /// The body is not a JSON object.
    MalformedBody,
}

/// What the OTA answer says about activation, and whether it may carry the device's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtaActivation {
    /// Activation is off, or the device is bound and this request may act as it: the answer
    /// carries a token when `server.auth` asks for one.
    Admitted,
    /// The device is bound, but this request gets no token: it comes from another `Client-Id`,
    /// or (with a challenge) the device still owes the proof of its eFuse key, which it gives by
    /// polling `/xiaozhi/ota/activate`.
    Withheld {
        /// The challenge to sign, when the key proof is owed.
        challenge: Option<String>,
    },
    /// The device waits to be bound: its code, and the challenge it polls with.
    Code {
        /// The 6-digit code.
        code: String,
        /// The challenge (the device id, or a random one for a device with a key).
        challenge: String,
    },
}

/// A non-empty header value, trimmed.
pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
}

/// A `Host` value safe to put into a URL: a host name, IPv4 or bracketed IPv6 address with an
/// optional port, nothing else.
pub fn valid_host(host: &str) -> Option<&str> {
    let host = host.trim();
    let ok = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'));
    ok.then_some(host)
}

/// The host part of a validated `Host` value (without the port).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').and_then(|end| host.get(..=end)).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Reads the OTA request from its headers and body (the firmware report of device-protocol.md
/// §5.1; every field is optional, and an empty body is an empty report).
pub fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<OtaRequest, OtaRequestError> {
    let device_id = header(headers, "device-id").ok_or(OtaRequestError::MissingDeviceId)?;
    let report = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Err(OtaRequestError::MalformedBody),
        }
    };
    let text = |v: &Value| v.as_str().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let client_id = header(headers, "client-id").or_else(|| report.get("uuid").and_then(text)).unwrap_or_default();
    let model = report
        .get("board")
        .and_then(|b| b.get("type"))
        .and_then(text)
        .or_else(|| header(headers, "device-model"))
        .or_else(|| header(headers, "model"));
    let version = report
        .get("application")
        .and_then(|a| a.get("version"))
        .and_then(text)
        .or_else(|| header(headers, "device-version"))
        .or_else(|| header(headers, "firmware-version"))
        .or_else(|| header(headers, "app-version"));
    let host = header(headers, "host").as_deref().and_then(valid_host).map(str::to_string);
    Ok(OtaRequest { device_id, client_id, model, version, host })
}

/// The host devices should use when the request did not say: `server.ip` unless it is a wildcard,
/// else 127.0.0.1.
pub fn configured_host(config: &Config) -> String {
    let ip = config.server.ip.trim();
    match ip {
        "" | "0.0.0.0" | "::" | "[::]" => "127.0.0.1".to_string(),
        ip if ip.contains(':') && !ip.starts_with('[') => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}

/// The WebSocket URL given to devices: `server.websocket` when set, else
/// `ws://<host of the request>:<ws_port>/xiaozhi/v1/`.
pub fn websocket_url(config: &Config, host: Option<&str>, ws_port: u16) -> String {
    let configured = config.server.websocket.trim();
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = host.map(host_without_port).map(str::to_string).unwrap_or_else(|| configured_host(config));
    format!("ws://{host}:{ws_port}/xiaozhi/v1/")
}

/// The base URL of this HTTP server as the device reached it (`Host`), else the configured address
/// with `server.http_port`.
fn http_base(config: &Config, host: Option<&str>) -> String {
    match host {
        Some(host) => format!("http://{host}"),
        None => format!("http://{}:{}", configured_host(config), config.server.http_port),
    }
}

/// The ports this server really bound, given to devices in the OTA answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// The WebSocket listener.
    pub ws: u16,
    /// The built-in MQTT endpoint, when it runs.
    pub mqtt: Option<u16>,
}

/// The `mqtt` block for a device, when it is to use MQTT: our endpoint when it runs (`mqtt_port`:
/// the built-in endpoint's, or the external broker's in fleet mode; `mqtt.endpoint`, else the
/// host the OTA request reached and that port), else the Python server's `server.mqtt_gateway`. Exactly the keys the firmware stores (device-protocol.md §5.2),
/// plus the `subscribe_topic` older firmware subscribed to.
pub fn mqtt_block(req: &OtaRequest, config: &Config, mqtt_port: Option<u16>) -> Option<Value> {
    let endpoint = match mqtt_port {
        Some(port) => match config.mqtt.endpoint.trim() {
            "" => {
                let host = req
                    .host
                    .as_deref()
                    .map(host_without_port)
                    .map(str::to_string)
                    .unwrap_or_else(|| configured_host(config));
                format!("{host}:{port}")
            }
            endpoint => endpoint.to_owned(),
        },
        None => match config.server.mqtt_gateway.trim() {
            "" => return None,
            gateway => gateway.to_owned(),
        },
    };
    // The gateway's topic for the gateway; ours names the device (see `device_publish_topic`).
    let publish_topic = match mqtt_port {
        Some(_) => mqtt::device_publish_topic(&req.device_id),
        None => mqtt::PUBLISH_TOPIC.to_owned(),
    };
    let client_id = mqtt::client_id(&req.device_id, &req.client_id);
    let username = mqtt::username("unknown");
    let password = mqtt::password(config.server.mqtt_signature_key.trim(), &client_id, &username);
    Some(json!({
        "endpoint": endpoint,
        "client_id": client_id,
        "username": username,
        "password": password,
        "publish_topic": publish_topic,
        "subscribe_topic": mqtt::device_topic(&req.device_id),
        "keepalive": config.mqtt.keepalive,
    }))
}

/// Epoch milliseconds of `now`.
fn epoch_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or_default()
}

/// Builds the OTA answer (device-protocol.md §5.2) for one check at `now`.
///
/// `activation` says what the device is to activation (see [`activation`]) and whether the answer
/// may carry its token. Reads the firmware directory (blocking file I/O): run it off the async
/// workers.
pub fn answer(
    req: &OtaRequest,
    config: &Config,
    data_dir: &Path,
    auth_key: &str,
    ports: Ports,
    now: SystemTime,
    activation: &OtaActivation,
) -> Value {
    let mut out = Map::new();
    out.insert(
        "server_time".into(),
        json!({"timestamp": epoch_ms(now), "timezone_offset": i64::from(config.server.timezone_offset) * 60}),
    );

    if let Some(current) = &req.version {
        let offer =
            req.model.as_deref().and_then(|model| firmware::newest_image(&data_dir.join("bin"), model, current));
        let section = match offer {
            Some((version, file)) => {
                tracing::info!(device = %req.device_id, from = %current, to = %version, "offering firmware upgrade");
                let url = format!("{}/xiaozhi/ota/download/{file}", http_base(config, req.host.as_deref()));
                json!({"version": version, "url": url})
            }
            // Echoing the running version never triggers an upgrade (the firmware needs newer).
            None => json!({"version": current}),
        };
        out.insert("firmware".into(), section);
    }

    // `mqtt` wins over `websocket` on the device, so only one is sent; a device that is not
    // admitted yet (it stays in activation and starts no protocol) gets the WebSocket one.
    let mqtt = mqtt_block(req, config, ports.mqtt).filter(|_| *activation == OtaActivation::Admitted);
    if let Some(mqtt) = mqtt {
        out.insert("mqtt".into(), mqtt);
    } else {
        out.insert("websocket".into(), websocket_section(req, config, auth_key, ports.ws, now, activation));
    }

    match activation {
        OtaActivation::Code { code, challenge } => {
            out.insert(
                "activation".into(),
                json!({
                    "code": code,
                    "message": config.activation.message.replace("{code}", code.as_str()),
                    "challenge": challenge,
                    "timeout_ms": config.limits.activation_code_ttl.saturating_mul(1000),
                }),
            );
        }
        OtaActivation::Withheld { challenge: Some(challenge) } => {
            out.insert("activation".into(), json!({"message": "Activating", "challenge": challenge}));
        }
        OtaActivation::Withheld { challenge: None } | OtaActivation::Admitted => {}
    }
    Value::Object(out)
}

/// The `websocket` block: the URL, the device's token when it needs one and is admitted, the
/// binary protocol version.
fn websocket_section(
    req: &OtaRequest,
    config: &Config,
    auth_key: &str,
    ws_port: u16,
    now: SystemTime,
    activation: &OtaActivation,
) -> Value {
    let mut websocket = Map::new();
    websocket.insert("url".into(), websocket_url(config, req.host.as_deref(), ws_port).into());
    let auth = Authenticator::new(auth_key.to_string(), &config.server.auth);
    if auth.requires_token(&req.device_id) && *activation == OtaActivation::Admitted {
        let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        websocket.insert("token".into(), auth.issue(&req.client_id, &req.device_id, secs).into());
    }
    if let Some(version) = ProtocolVersion::from_number(config.xiaozhi.version) {
        websocket.insert("version".into(), version.number().into());
    }
    Value::Object(websocket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_the_report_with_header_fallbacks() {
        let h = headers(&[("device-id", "aa:bb"), ("client-id", "c1"), ("host", "10.0.0.2:8003")]);
        let body = br#"{"application":{"version":"2.4.2"},"board":{"type":"bread-compact-wifi"}}"#;
        let r = parse_request(&h, body).unwrap();
        assert_eq!(r.model.as_deref(), Some("bread-compact-wifi"));
        assert_eq!(r.version.as_deref(), Some("2.4.2"));
        assert_eq!(r.host.as_deref(), Some("10.0.0.2:8003"));
        assert_eq!(r.client_id, "c1");

        let h = headers(&[("device-id", "aa:bb"), ("device-model", "m"), ("device-version", "1.0")]);
        let r = parse_request(&h, br#"{"uuid":"u-1"}"#).unwrap();
        assert_eq!((r.model.as_deref(), r.version.as_deref(), r.client_id.as_str()), (Some("m"), Some("1.0"), "u-1"));
        assert_eq!(parse_request(&h, b"").unwrap().client_id, "");

        assert_eq!(parse_request(&headers(&[]), b"{}"), Err(OtaRequestError::MissingDeviceId));
        assert_eq!(parse_request(&h, b"[1]"), Err(OtaRequestError::MalformedBody));
        assert_eq!(parse_request(&h, b"{oops"), Err(OtaRequestError::MalformedBody));
        let evil = headers(&[("device-id", "x"), ("host", "evil.com/path?")]);
        assert_eq!(parse_request(&evil, b"").unwrap().host, None);
    }

    #[test]
    fn host_parts() {
        assert_eq!(host_without_port("192.168.1.5:8003"), "192.168.1.5");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:8003"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }

    #[test]
    fn websocket_url_sources() {
        let mut config = Config::default();
        assert_eq!(websocket_url(&config, Some("10.0.0.2:8003"), 8000), "ws://10.0.0.2:8000/xiaozhi/v1/");
        assert_eq!(websocket_url(&config, None, 8100), "ws://127.0.0.1:8100/xiaozhi/v1/");
        config.server.ip = "192.168.3.3".into();
        assert_eq!(websocket_url(&config, None, 8000), "ws://192.168.3.3:8000/xiaozhi/v1/");
        config.server.websocket = "wss://xz.example.com/xiaozhi/v1/".into();
        assert_eq!(websocket_url(&config, Some("10.0.0.2"), 8000), "wss://xz.example.com/xiaozhi/v1/");
    }
}
