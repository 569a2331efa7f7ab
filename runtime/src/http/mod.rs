//! The plain HTTP routes, served on both ports for every request that is not a WebSocket upgrade.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /`, `GET /xiaozhi/v1/` | 200 `Server is running` |
//! | `GET /health` | 200 `{"status":"ok"}` |
//! | `GET /metrics` | Prometheus metrics, OpenMetrics text (see [`crate::metrics`]); admin |
//! | `GET /xiaozhi/ota/` | 200 text naming the WebSocket URL devices are given |
//! | `POST /xiaozhi/ota/` | the OTA check answer ([`ota`]) |
//! | `POST /xiaozhi/ota/activate` | 202 until the device is bound, then 200 `success` |
//! | `GET /xiaozhi/ota/download/<file>` | the firmware image `data/bin/<file>` |
//! | `GET /xiaozhi/extensions` | what extensions serve; admin |
//! | `POST /xiaozhi/extensions/reload` | reloads the extension folders; admin |
//! | `GET /mcp/vision/explain` | 200 text saying whether a vision model is selected |
//! | `POST /mcp/vision/explain` | a photo explained by the vision model ([`vision`]) |
//! | `<console.path>/api/…` | the console's sign-in and JSON API ([`console`]); HTTP port only, off unless `console.password` is set |
//! | `OPTIONS *` | 204 |
//! | anything else | 404 |
//!
//! Every response carries permissive CORS headers. Request bodies are capped at [`MAX_BODY`]
//! bytes (the vision endpoint's at `limits.vision_body_bytes`; 413 beyond) and must arrive within `limits.http_body_timeout_ms` (408 beyond).
//!
//! **Admin routes** answer only on the HTTP port (on the WebSocket port they do not exist: 404),
//! and only to `Authorization: Bearer <server.admin_token>`, or, when no admin token is set, to
//! callers on this machine (loopback); others get 401 or 403.
//!
//! OTA errors follow the Python server where the firmware can see them: a malformed report gets
//! HTTP 200 `{"success":false,"message":"request error."}`. A missing `Device-Id` header is a 400
//! instead, because without it no answer can be addressed to any device.

pub mod activation;
pub mod console;
pub mod firmware;
pub mod limit;
pub mod ota;
pub mod probe;
pub mod vision;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::config::Config;

/// Largest request body read, in bytes; a firmware report is a few KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// Path prefix of firmware downloads.
const DOWNLOAD_PREFIX: &str = "/xiaozhi/ota/download/";

/// Who sent a request: set by the server on every plain HTTP request (a request without it is
/// treated as coming from outside, on the WebSocket port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether it came in on the HTTP port (`server.http_port`), the only one serving admin routes.
    pub admin_port: bool,
}

/// Everything the routes need. Cheap to clone (a watch receiver, a path, an `Arc`).
#[derive(Debug, Clone)]
pub struct HttpContext {
    /// The live configuration; read once per request, so edits apply to the next request.
    pub config: tokio::sync::watch::Receiver<Arc<Config>>,
    /// The data directory: firmware images in `bin/`.
    pub data_dir: PathBuf,
    /// The device token key (from [`crate::auth::resolve_key`]). The key rather than an
    /// [`crate::auth::Authenticator`] is held so that `server.auth` (enabled, allow-list, expiry)
    /// is taken from the live configuration on each request: build one per use with
    /// [`crate::auth::Authenticator::new`].
    pub auth_key: Arc<str>,
    /// The port the WebSocket listener really bound (given to devices in the OTA answer).
    pub ws_port: u16,
    /// The port the built-in MQTT endpoint really bound, when it runs (for the OTA `mqtt` block).
    pub mqtt_port: Option<u16>,
    /// The extension registry (`GET /xiaozhi/extensions`, `POST /xiaozhi/extensions/reload`).
    pub extensions: Option<Arc<crate::extensions::Registry>>,
    /// Where device bindings and activation codes live.
    pub store: Arc<dyn crate::store::Store>,
    /// The server's metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// New activation codes per caller address (`limits.new_devices_per_ip_per_minute`).
    pub new_devices: Arc<limit::RateLimit>,
    /// New "seen" records (board, firmware, last seen) per caller address, at the same rate.
    pub seen_devices: Arc<limit::RateLimit>,
    /// The vision requests being served (one per device, `limits.vision_requests` in all).
    pub vision: Arc<vision::Gate>,
    /// The console's sessions and sign-in throttle.
    pub console: Arc<console::Console>,
}

/// Answers one plain HTTP request. Never fails: every problem is an HTTP status.
///
/// Generic over the body so tests can pass a [`Full`]; the server passes
/// [`hyper::body::Incoming`].
pub async fn route<B>(req: Request<B>, ctx: &HttpContext) -> Response<Full<Bytes>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut response = dispatch(req, ctx).await;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    response
}

async fn dispatch<B>(req: Request<B>, ctx: &HttpContext) -> Response<Full<Bytes>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if method != Method::OPTIONS && console::is_console_path(&path, ctx) {
        return console::route(req, ctx).await;
    }
    if is_admin_route(&path)
        && let Some(refused) = refuse_admin(&req, ctx)
    {
        return refused;
    }
    match (&method, path.as_str()) {
        (&Method::OPTIONS, _) => empty(StatusCode::NO_CONTENT),
        (&Method::GET, "/" | "/xiaozhi/v1/" | "/xiaozhi/v1") => text(StatusCode::OK, "Server is running"),
        (&Method::GET, "/health") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(ctx.metrics.render())));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
            response
        }
        (&Method::GET, "/xiaozhi/ota/" | "/xiaozhi/ota") => {
            let config = ctx.config.borrow().clone();
            let host = ota::header(req.headers(), "host");
            let url = ota::websocket_url(&config, host.as_deref().and_then(ota::valid_host), ctx.ws_port);
            text(StatusCode::OK, format!("OTA endpoint is running; devices are sent to the WebSocket at {url}"))
        }
        (&Method::POST, "/xiaozhi/ota/" | "/xiaozhi/ota") => ota_check(req, ctx).await,
        (&Method::POST, "/xiaozhi/ota/activate" | "/xiaozhi/ota/activate/") => ota_activate(req, ctx).await,
        (&Method::GET, crate::vision::PATH) => vision::status(ctx),
        (&Method::POST, crate::vision::PATH) => vision::explain(req, ctx).await,
        (&Method::GET, p) if p.starts_with(DOWNLOAD_PREFIX) => {
            download(p.strip_prefix(DOWNLOAD_PREFIX).unwrap_or_default(), ctx).await
        }
        (&Method::GET, "/xiaozhi/extensions" | "/xiaozhi/extensions/") => match &ctx.extensions {
            Some(registry) => json_response(StatusCode::OK, &json!({"extensions": registry.status()})),
            None => {
                json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"message": "the extension host is not running"}))
            }
        },
        (&Method::POST, "/xiaozhi/extensions/reload") => match &ctx.extensions {
            Some(registry) => {
                let serving = registry.reload().await;
                json_response(StatusCode::OK, &json!({"serving": serving, "extensions": registry.status()}))
            }
            None => {
                json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"message": "the extension host is not running"}))
            }
        },
        _ => json_response(StatusCode::NOT_FOUND, &json!({"success": false, "message": "not found"})),
    }
}

/// Whether `path` is an admin route (see the module documentation).
fn is_admin_route(path: &str) -> bool {
    path == "/metrics" || path == "/xiaozhi/extensions" || path.starts_with("/xiaozhi/extensions/")
}

/// The refusal of an admin route for this caller, if it is refused.
fn refuse_admin<B>(req: &Request<B>, ctx: &HttpContext) -> Option<Response<Full<Bytes>>> {
    let caller = req.extensions().get::<Caller>().copied().filter(|caller| caller.admin_port);
    let Some(caller) = caller else {
        // Not on the HTTP port: as if the route did not exist.
        return Some(json_response(StatusCode::NOT_FOUND, &json!({"success": false, "message": "not found"})));
    };
    let token = ctx.config.borrow().server.admin_token.clone();
    if token.is_empty() {
        if caller.peer.ip().to_canonical().is_loopback() {
            return None;
        }
        tracing::warn!(peer = %caller.peer, "admin route refused: not loopback and no server.admin_token is set");
        return Some(json_response(
            StatusCode::FORBIDDEN,
            &json!({"success": false, "message": "admin routes answer only this machine unless server.admin_token is set"}),
        ));
    }
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let given = given.strip_prefix("Bearer ").or_else(|| given.strip_prefix("bearer ")).unwrap_or_default().trim();
    if same_secret(given, &token) {
        return None;
    }
    tracing::warn!(peer = %caller.peer, "admin route refused: wrong or missing admin token");
    let mut response =
        json_response(StatusCode::UNAUTHORIZED, &json!({"success": false, "message": "admin token required"}));
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// Compares two secrets without leaking, through timing, how much of them matches (the digests
/// are compared; their equal prefix says nothing about the secret's).
fn same_secret(given: &str, expected: &str) -> bool {
    use sha2::Digest;
    sha2::Sha256::digest(given.as_bytes()) == sha2::Sha256::digest(expected.as_bytes())
}

/// Why a body could not be read.
enum BodyError {
    TooLarge(usize),
    TimedOut,
    Broken(String),
}

/// Reads a request body of at most [`MAX_BODY`] bytes, within `limits.http_body_timeout_ms`.
async fn read_body<B>(headers: &HeaderMap, body: B, ctx: &HttpContext) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read_body_limited(headers, body, ctx, MAX_BODY).await
}

/// Reads a request body of at most `limit` bytes, within `limits.http_body_timeout_ms`. A
/// declared `Content-Length` over the limit is refused before anything is read; otherwise the
/// bytes are counted as they arrive (chunked bodies included) and reading stops at the limit, so
/// no more than `limit` bytes are ever held.
async fn read_body_limited<B>(headers: &HeaderMap, body: B, ctx: &HttpContext, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let timeout = std::time::Duration::from_millis(ctx.config.borrow().limits.http_body_timeout_ms);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
    }
}

/// The response for a body that could not be read.
fn body_error(e: BodyError) -> Response<Full<Bytes>> {
    match e {
        BodyError::TooLarge(limit) => json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"success": false, "message": format!("request body over {limit} bytes")}),
        ),
        BodyError::TimedOut => json_response(
            StatusCode::REQUEST_TIMEOUT,
            &json!({"success": false, "message": "the request body did not arrive in time"}),
        ),
        BodyError::Broken(e) => {
            tracing::debug!("request body unreadable: {e}");
            json_response(StatusCode::BAD_REQUEST, &json!({"success": false, "message": "request body unreadable"}))
        }
    }
}

fn missing_device_id() -> Response<Full<Bytes>> {
    json_response(StatusCode::BAD_REQUEST, &json!({"success": false, "message": "missing Device-Id header"}))
}

/// Longest `Device-Id` or `Client-Id` accepted, bytes (a MAC address has 17, a UUID 36).
pub const MAX_ID_BYTES: usize = 128;

fn bad_id(name: &str, why: &str) -> Response<Full<Bytes>> {
    json_response(StatusCode::BAD_REQUEST, &json!({"success": false, "message": format!("bad {name}: {why}")}))
}

fn activation_unavailable(device: &str, e: &activation::ActivationError) -> Response<Full<Bytes>> {
    tracing::error!(%device, "activation state unavailable: {e}");
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"success": false, "message": "activation state unavailable"}),
    )
}

async fn ota_check<B>(req: Request<B>, ctx: &HttpContext) -> Response<Full<Bytes>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let caller = req.extensions().get::<Caller>().copied();
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, ctx).await {
        Ok(b) => b,
        Err(e) => return body_error(e),
    };
    let request = match ota::parse_request(&parts.headers, &body) {
        Ok(r) => r,
        Err(ota::OtaRequestError::MissingDeviceId) => return missing_device_id(),
        Err(ota::OtaRequestError::MalformedBody) => {
            tracing::warn!("OTA check with a malformed report body");
            return json_response(StatusCode::OK, &json!({"success": false, "message": "request error."}));
        }
    };
    for (name, id) in [("Device-Id", &request.device_id), ("Client-Id", &request.client_id)] {
        if let Err(why) = crate::auth::check_id(id, MAX_ID_BYTES) {
            return bad_id(name, &why);
        }
    }
    let config = ctx.config.borrow().clone();
    note_seen(ctx, &config, &request, caller).await;
    let device = request.device_id.clone();
    let serial = ota::header(&parts.headers, "serial-number");
    let decision = if config.activation.enabled {
        match activation_of(ctx, &config, &request, caller, serial.as_deref()).await {
            Ok(decision) => decision,
            Err(refused) => return refused,
        }
    } else {
        ota::OtaActivation::Admitted
    };
    let (data_dir, key) = (ctx.data_dir.clone(), ctx.auth_key.to_string());
    let ports = ota::Ports { ws: ctx.ws_port, mqtt: ctx.mqtt_port };
    let built = tokio::task::spawn_blocking(move || {
        ota::answer(&request, &config, &data_dir, &key, ports, SystemTime::now(), &decision)
    })
    .await;
    match built {
        Ok(answer) => {
            tracing::debug!(%device, "OTA check answered");
            json_response(StatusCode::OK, &answer)
        }
        Err(e) => {
            tracing::error!(%device, "OTA check task failed: {e}");
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({"success": false, "message": "internal error"}))
        }
    }
}

/// Keeps the board, firmware and time of an OTA check for the console's device list. A device
/// without a record yet takes one of its address's `limits.new_devices_per_ip_per_minute` (over
/// it, nothing is noted and the check is answered as usual), so unknown callers cannot fill the
/// store; records expire [`crate::store::SEEN_TTL`] after the last check. A store failure is logged.
async fn note_seen(ctx: &HttpContext, config: &Config, request: &ota::OtaRequest, caller: Option<Caller>) {
    let store = ctx.store.as_ref();
    let device = &request.device_id;
    let known = match crate::store::device_seen(store, device).await {
        Ok(seen) => seen.is_some(),
        Err(e) => return tracing::warn!(%device, "cannot read the device's record: {e}"),
    };
    let peer = caller.map(|c| c.peer.ip()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    if !known && !ctx.seen_devices.allow(peer, config.limits.new_devices_per_ip_per_minute, std::time::Instant::now()) {
        return;
    }
    let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    if let Err(e) =
        crate::store::note_device_seen(store, device, request.model.as_deref(), request.version.as_deref(), now).await
    {
        tracing::warn!(%device, "cannot note the device's OTA check: {e}");
    }
}

/// With activation on: what the OTA answer says to this device and client (see
/// [`activation`]), or the refusal (429 over the new-device rate, 500 when the state is
/// unreadable).
async fn activation_of(
    ctx: &HttpContext,
    config: &Config,
    request: &ota::OtaRequest,
    caller: Option<Caller>,
    serial: Option<&str>,
) -> Result<ota::OtaActivation, Response<Full<Bytes>>> {
    let store = ctx.store.as_ref();
    let device = &request.device_id;
    match activation::binding(store, device).await {
        Err(e) => return Err(activation_unavailable(device, &e)),
        Ok(Some(bound)) if bound.admits(&request.client_id) => return Ok(ota::OtaActivation::Admitted),
        Ok(Some(bound)) => {
            if bound.client_id.as_deref().is_some_and(|c| c != request.client_id) {
                tracing::warn!(%device, client = %request.client_id, "OTA check for a bound device from another Client-Id: no token");
                return Ok(ota::OtaActivation::Withheld { challenge: None });
            }
            // The key proof is owed: the device polls /activate with it.
            return Ok(ota::OtaActivation::Withheld { challenge: bound.proof.map(|p| p.challenge) });
        }
        Ok(None) => {}
    }
    match activation::pending(store, device, &request.client_id).await {
        Err(e) => return Err(activation_unavailable(device, &e)),
        Ok(Some((code, pending))) => {
            let challenge = pending.proof.map(|p| p.challenge).unwrap_or_else(|| device.clone());
            return Ok(ota::OtaActivation::Code { code, challenge });
        }
        Ok(None) => {}
    }
    let peer = caller.map(|c| c.peer.ip()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let per_minute = config.limits.new_devices_per_ip_per_minute;
    if !ctx.new_devices.allow(peer, per_minute, std::time::Instant::now()) {
        tracing::warn!(%device, %peer, "OTA check refused: over {per_minute} new devices a minute from this address");
        ctx.metrics.limit_hit("new_devices_per_ip_per_minute");
        let mut refused = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"success": false, "message": "too many new devices from this address; try again in a minute"}),
        );
        refused.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return Err(refused);
    }
    let proof = serial.filter(|s| config.activation.hmac_keys.contains_key(*s)).map(|serial| activation::KeyProof {
        serial: serial.to_owned(),
        challenge: activation::random_challenge(),
        proven: false,
    });
    let challenge = proof.as_ref().map(|p| p.challenge.clone()).unwrap_or_else(|| device.clone());
    let ttl = std::time::Duration::from_secs(config.limits.activation_code_ttl);
    match activation::new_code(store, device, &request.client_id, proof, ttl).await {
        Ok(code) => Ok(ota::OtaActivation::Code { code, challenge }),
        Err(e) => Err(activation_unavailable(device, &e)),
    }
}

async fn ota_activate<B>(req: Request<B>, ctx: &HttpContext) -> Response<Full<Bytes>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, ctx).await {
        Ok(body) => body,
        Err(e) => return body_error(e),
    };
    let Some(device_id) = ota::header(&parts.headers, "device-id") else {
        return missing_device_id();
    };
    let client_id = ota::header(&parts.headers, "client-id").unwrap_or_default();
    let config = ctx.config.borrow().clone();
    if !config.activation.enabled {
        return text(StatusCode::OK, "success");
    }
    let store = ctx.store.as_ref();
    // A device with an eFuse key proves it here: `{"serial_number", "challenge", "hmac"}`.
    let request: activation::ActivateRequest = serde_json::from_slice(&body).unwrap_or_default();
    if let Some(key) = config.activation.hmac_keys.get(&request.serial_number) {
        let ttl = std::time::Duration::from_secs(config.limits.activation_code_ttl);
        match activation::prove(store, &device_id, &client_id, key, &request, ttl).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(device = %device_id, "activation: the key proof does not verify"),
            Err(e) => return activation_unavailable(&device_id, &e),
        }
    }
    if activation::admits(store, &device_id, &client_id).await {
        text(StatusCode::OK, "success")
    } else {
        text(StatusCode::ACCEPTED, "waiting for activation")
    }
}

async fn download(name: &str, ctx: &HttpContext) -> Response<Full<Bytes>> {
    let bin_dir = ctx.data_dir.join("bin");
    let path = match firmware::resolve_image(&bin_dir, name) {
        Ok(p) => p,
        Err(firmware::ImageError::BadName) => {
            return json_response(StatusCode::BAD_REQUEST, &json!({"success": false, "message": "bad file name"}));
        }
        Err(firmware::ImageError::NotFound) => {
            return json_response(StatusCode::NOT_FOUND, &json!({"success": false, "message": "no such firmware"}));
        }
    };
    match tokio::fs::read(&path).await {
        Ok(data) => {
            let len = data.len();
            let mut response = Response::new(Full::new(Bytes::from(data)));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                headers.insert(header::CONTENT_DISPOSITION, v);
            }
            tracing::info!(file = %name, bytes = len, "serving firmware");
            response
        }
        Err(e) => {
            tracing::error!("reading {}: {e}", path.display());
            json_response(StatusCode::NOT_FOUND, &json!({"success": false, "message": "no such firmware"}))
        }
    }
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", Bytes::from(body.into()))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    with_type(status, "application/json", Bytes::from(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;

    const DEVICE: &str = "aa:bb:cc:dd:ee:ff";
    const CLIENT: &str = "3c4f2a8e-1b2c-4d5e-8f90-a1b2c3d4e5f6";

    /// The firmware's report, exactly as device-protocol.md §5.1 shows it.
    const REPORT: &str = r#"{"version":2,"language":"zh-CN","flash_size":16777216,"minimum_free_heap_size":"123456",
 "mac_address":"aa:bb:cc:dd:ee:ff","uuid":"3c4f2a8e-1b2c-4d5e-8f90-a1b2c3d4e5f6","chip_model_name":"esp32s3",
 "chip_info":{"model":9,"cores":2,"revision":0,"features":18},
 "application":{"name":"xiaozhi","version":"2.4.2","compile_time":"2025-09-01T10:00:00Z","idf_version":"v5.5","elf_sha256":"00"},
 "partition_table":[{"label":"nvs","type":1,"subtype":2,"address":36864,"size":16384}],
 "ota":{"label":"ota_0"},
 "display":{"monochrome":false,"width":240,"height":240},
 "board":{"type":"bread-compact-wifi","name":"bread-compact-wifi","ssid":"home","rssi":-50,"channel":1,"ip":"192.168.1.2","mac":"aa:bb:cc:dd:ee:ff"}}"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        ctx: HttpContext,
        _tx: tokio::sync::watch::Sender<Arc<Config>>,
    }

    fn fixture(edit: impl FnOnce(&mut Config)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        edit(&mut config);
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(config));
        let ctx = HttpContext {
            config: rx,
            data_dir: dir.path().to_path_buf(),
            auth_key: Arc::from("k3y"),
            ws_port: 18000,
            mqtt_port: None,
            extensions: None,
            store: Arc::new(crate::store::memory::MemoryStore::new()),
            metrics: crate::metrics::Metrics::new(),
            new_devices: Arc::new(limit::RateLimit::new()),
            seen_devices: Arc::new(limit::RateLimit::new()),
            vision: Arc::new(vision::Gate::default()),
            console: Arc::default(),
        };
        Fixture { _dir: dir, ctx, _tx: tx }
    }

    fn ota_request(body: &str) -> Request<Full<Bytes>> {
        Request::post("/xiaozhi/ota/")
            .header("Host", "192.168.1.10:8003")
            .header("Device-Id", DEVICE)
            .header("Client-Id", CLIENT)
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    async fn call(req: Request<Full<Bytes>>, ctx: &HttpContext) -> (StatusCode, HeaderMap, Bytes) {
        let response = route(req, ctx).await;
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
    }

    async fn ota(ctx: &HttpContext) -> Value {
        let (status, _, body) = call(ota_request(REPORT), ctx).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).unwrap()
    }

    fn get(uri: &str) -> Request<Full<Bytes>> {
        Request::get(uri).body(Full::new(Bytes::new())).unwrap()
    }

    #[tokio::test]
    async fn ota_answers_with_websocket_time_and_echoed_firmware() {
        let f = fixture(|c| c.server.timezone_offset = 8);
        let before = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let v = ota(&f.ctx).await;
        let after = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let ts = v["server_time"]["timestamp"].as_u64().unwrap();
        assert!(before <= ts && ts <= after, "{ts} not in {before}..{after}");
        assert_eq!(v["server_time"]["timezone_offset"], 480);
        assert_eq!(v["websocket"]["url"], "ws://192.168.1.10:18000/xiaozhi/v1/");
        assert_eq!(v["websocket"]["version"], 1);
        assert!(v["websocket"].get("token").is_none());
        assert_eq!(v["firmware"], json!({"version": "2.4.2"}));
        assert!(v.get("mqtt").is_none());
        assert!(v.get("activation").is_none());
    }

    #[tokio::test]
    async fn ota_token_only_when_auth_is_on_and_not_allow_listed() {
        let f = fixture(|c| c.server.auth.enabled = true);
        let v = ota(&f.ctx).await;
        assert!(v.get("mqtt").is_none());
        let token = v["websocket"]["token"].as_str().unwrap();
        let auth = Authenticator::new("k3y".into(), &f.ctx.config.borrow().server.auth);
        let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(auth.check(Some(&format!("Bearer {token}")), CLIENT, DEVICE, now), Ok(()));

        let f = fixture(|c| {
            c.server.auth.enabled = true;
            c.server.auth.allowed_devices = vec![DEVICE.into()];
        });
        assert!(ota(&f.ctx).await["websocket"].get("token").is_none());
    }

    #[tokio::test]
    async fn ota_sends_devices_to_mqtt_with_the_keys_the_firmware_stores() {
        // The Python server's key: an external gateway.
        let f = fixture(|c| {
            c.server.mqtt_gateway = "mqtt.example.com:1883".into();
            c.server.mqtt_signature_key = "s1gn".into();
        });
        let v = ota(&f.ctx).await;
        assert!(v.get("websocket").is_none(), "mqtt wins on the device: only one block is sent");
        let mqtt = &v["mqtt"];
        let client_id = format!("GID_xiaozhi@@@{}@@@{CLIENT}", DEVICE.replace(':', "_"));
        assert_eq!(mqtt["endpoint"], "mqtt.example.com:1883");
        assert_eq!(mqtt["client_id"], client_id.as_str());
        assert_eq!(mqtt["publish_topic"], "device-server");
        assert_eq!(mqtt["subscribe_topic"], format!("devices/p2p/{}", DEVICE.replace(':', "_")));
        assert_eq!(mqtt["keepalive"], 240);
        let (user, pass) = (mqtt["username"].as_str().unwrap(), mqtt["password"].as_str().unwrap());
        assert!(crate::protocol::mqtt::password_ok("s1gn", &client_id, user, pass));
        let mut keys: Vec<&str> = mqtt.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["client_id", "endpoint", "keepalive", "password", "publish_topic", "subscribe_topic", "username"]
        );

        // The built-in endpoint: the host the device reached, the bound port.
        let mut f = fixture(|c| c.mqtt.enabled = true);
        f.ctx.mqtt_port = Some(11883);
        let v = ota(&f.ctx).await;
        assert_eq!(v["mqtt"]["endpoint"], "192.168.1.10:11883");
        assert_eq!(v["mqtt"]["publish_topic"], format!("device-server/{}", DEVICE.replace(':', "_")));
        let mut f = fixture(|c| c.mqtt.endpoint = "xz.example.com:1883".into());
        f.ctx.mqtt_port = Some(11883);
        assert_eq!(ota(&f.ctx).await["mqtt"]["endpoint"], "xz.example.com:1883");
    }

    #[tokio::test]
    async fn ota_errors() {
        let f = fixture(|_| {});
        let (status, _, body) = call(ota_request("{not json"), &f.ctx).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"success":false,"message":"request error."})
        );

        let no_id = Request::post("/xiaozhi/ota").body(Full::new(Bytes::from_static(b"{}"))).unwrap();
        let (status, _, body) = call(no_id, &f.ctx).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["success"], false);

        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_BODY));
        let (status, _, _) = call(ota_request(&big), &f.ctx).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn firmware_upgrade_is_offered_and_served() {
        let f = fixture(|_| {});
        let bin = f.ctx.data_dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, content) in [
            ("bread-compact-wifi_2.4.1.bin", "old"),
            ("bread-compact-wifi_2.4.10.bin", "newest image"),
            ("bread-compact-wifi_2.4.3.bin", "newer"),
            ("other-board_9.9.9.bin", "other"),
        ] {
            std::fs::write(bin.join(name), content).unwrap();
        }
        std::fs::write(f.ctx.data_dir.join("secret.bin"), "secret").unwrap();

        let v = ota(&f.ctx).await;
        assert_eq!(v["firmware"]["version"], "2.4.10");
        let url = v["firmware"]["url"].as_str().unwrap();
        assert_eq!(url, "http://192.168.1.10:8003/xiaozhi/ota/download/bread-compact-wifi_2.4.10.bin");

        let (status, headers, body) = call(get(url.strip_prefix("http://192.168.1.10:8003").unwrap()), &f.ctx).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"newest image");
        assert_eq!(headers[header::CONTENT_LENGTH], "12");

        for (uri, expected) in [
            ("/xiaozhi/ota/download/../secret.bin", StatusCode::BAD_REQUEST),
            ("/xiaozhi/ota/download/%2e%2e%2fsecret.bin", StatusCode::BAD_REQUEST),
            ("/xiaozhi/ota/download/%2e%2e/secret.bin", StatusCode::BAD_REQUEST),
            ("/xiaozhi/ota/download/..%2fsecret.bin", StatusCode::BAD_REQUEST),
            ("/xiaozhi/ota/download/", StatusCode::BAD_REQUEST),
            ("/xiaozhi/ota/download/missing_1.0.bin", StatusCode::NOT_FOUND),
        ] {
            let (status, _, body) = call(get(uri), &f.ctx).await;
            assert_eq!(status, expected, "{uri}");
            assert_ne!(&body[..], b"secret");
        }
    }

    #[tokio::test]
    async fn activation_flow() {
        let f = fixture(|c| {
            c.activation.enabled = true;
            c.activation.message = "console.example.com\n{code}".into();
        });
        let activate = || {
            Request::post("/xiaozhi/ota/activate")
                .header("Device-Id", DEVICE)
                .header("Client-Id", CLIENT)
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()
        };
        let v = ota(&f.ctx).await;
        let code = v["activation"]["code"].as_str().unwrap().to_string();
        assert_eq!(code.len(), 6);
        assert_eq!(v["activation"]["message"], format!("console.example.com\n{code}"));
        assert_eq!(v["activation"]["challenge"], DEVICE);
        assert!(v["websocket"]["url"].is_string());
        // The code is stable across checks.
        assert_eq!(ota(&f.ctx).await["activation"]["code"], code.as_str());

        assert_eq!(call(activate(), &f.ctx).await.0, StatusCode::ACCEPTED);
        assert_eq!(activation::bind(f.ctx.store.as_ref(), &code).await.unwrap(), DEVICE);
        let (status, _, body) = call(activate(), &f.ctx).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"success"[..]));
        assert!(ota(&f.ctx).await.get("activation").is_none());

        // Activation off: always 200.
        let off = fixture(|_| {});
        assert_eq!(call(activate(), &off.ctx).await.0, StatusCode::OK);
        let no_id = Request::post("/xiaozhi/ota/activate").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(call(no_id, &f.ctx).await.0, StatusCode::BAD_REQUEST);
    }

    /// An OTA check of `device` from `client`, coming from `peer`.
    fn ota_from(device: &str, client: &str, peer: &str) -> Request<Full<Bytes>> {
        let mut req = Request::post("/xiaozhi/ota/")
            .header("Host", "192.168.1.10:8003")
            .header("Device-Id", device)
            .header("Client-Id", client)
            .body(Full::new(Bytes::from(REPORT)))
            .unwrap();
        req.extensions_mut().insert(Caller { peer: peer.parse().unwrap(), admin_port: true });
        req
    }

    #[tokio::test]
    async fn a_stranger_with_a_bound_devices_mac_gets_no_token() {
        let f = fixture(|c| {
            c.activation.enabled = true;
            c.server.auth.enabled = true;
        });
        let peer = "10.0.0.5:4000";
        let json = |body: &Bytes| serde_json::from_slice::<Value>(body).unwrap();
        let mine = json(&call(ota_from(DEVICE, CLIENT, peer), &f.ctx).await.2);
        let code = mine["activation"]["code"].as_str().unwrap().to_owned();
        // Someone else sends the same MAC address first or later: they get their own code, never
        // the one on the owner's screen.
        let theirs = json(&call(ota_from(DEVICE, "intruder", peer), &f.ctx).await.2);
        assert_ne!(theirs["activation"]["code"].as_str(), Some(code.as_str()));
        activation::bind(f.ctx.store.as_ref(), &code).await.unwrap();
        let mine = json(&call(ota_from(DEVICE, CLIENT, peer), &f.ctx).await.2);
        assert!(mine["websocket"]["token"].is_string(), "the owner's device gets its token: {mine}");
        let theirs = json(&call(ota_from(DEVICE, "intruder", peer), &f.ctx).await.2);
        assert!(theirs["websocket"].get("token").is_none(), "a stranger gets none: {theirs}");
        assert!(theirs.get("activation").is_none());
        // A separator in an id is refused before anything is signed.
        let (status, _, _) = call(ota_from("x|V", CLIENT, peer), &f.ctx).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn new_devices_are_rate_limited_per_address_and_their_codes_expire() {
        let f = fixture(|c| {
            c.activation.enabled = true;
            c.limits.new_devices_per_ip_per_minute = 3;
            c.limits.activation_code_ttl = 1;
        });
        let statuses: Vec<StatusCode> = futures_util::future::join_all(
            (0..5).map(|i| call(ota_from(&format!("aa:bb:cc:00:00:{i:02}"), CLIENT, "10.0.0.5:1"), &f.ctx)),
        )
        .await
        .into_iter()
        .map(|(status, ..)| status)
        .collect();
        assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 3, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(), 2);
        // The devices that got a code ask again: the same code, no new one counted.
        assert_eq!(call(ota_from("aa:bb:cc:00:00:00", CLIENT, "10.0.0.5:1"), &f.ctx).await.0, StatusCode::OK);
        // Another address has its own count.
        assert_eq!(call(ota_from("aa:bb:cc:00:00:09", CLIENT, "10.0.0.6:1"), &f.ctx).await.0, StatusCode::OK);
        assert!(!f.ctx.store.keys("activation/").await.unwrap().is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert!(f.ctx.store.keys("activation/").await.unwrap().is_empty(), "waiting devices expire with their code");
        assert!(f.ctx.metrics.render().contains("xiaozhi_limits_hit_total{limit=\"new_devices_per_ip_per_minute\"} 2"));
    }

    #[tokio::test]
    async fn device_records_from_ota_checks_are_limited_per_address() {
        let f = fixture(|c| c.limits.new_devices_per_ip_per_minute = 2);
        for i in 0..4 {
            let (status, ..) = call(ota_from(&format!("aa:bb:cc:00:0e:{i:02}"), CLIENT, "10.0.0.7:1"), &f.ctx).await;
            assert_eq!(status, StatusCode::OK, "the check is answered either way");
        }
        let seen = |keys: Vec<String>| keys.into_iter().filter(|k| k.ends_with("/seen")).count();
        assert_eq!(seen(f.ctx.store.keys("device/").await.unwrap()), 2, "two new records per address and minute");
        // A device with a record is refreshed, whatever the count; another address has its own.
        call(ota_from("aa:bb:cc:00:0e:00", CLIENT, "10.0.0.7:1"), &f.ctx).await;
        call(ota_from("aa:bb:cc:00:0e:09", CLIENT, "10.0.0.8:1"), &f.ctx).await;
        assert_eq!(seen(f.ctx.store.keys("device/").await.unwrap()), 3);
        let record = crate::store::device_seen(f.ctx.store.as_ref(), "aa:bb:cc:00:0e:00").await.unwrap().unwrap();
        assert_eq!(record.board.as_deref(), Some("bread-compact-wifi"));
    }

    #[tokio::test]
    async fn admin_routes_need_the_http_port_and_loopback_or_the_token() {
        let admin = |path: &str, peer: &str, admin_port: bool, token: Option<&str>| {
            let mut req = Request::get(path);
            if let Some(token) = token {
                req = req.header("Authorization", format!("Bearer {token}"));
            }
            let mut req = req.body(Full::new(Bytes::new())).unwrap();
            req.extensions_mut().insert(Caller { peer: peer.parse().unwrap(), admin_port });
            req
        };
        let open = fixture(|_| {});
        for path in ["/metrics", "/xiaozhi/extensions"] {
            let status = |req| async { call(req, &open.ctx).await.0 };
            assert_eq!(
                status(admin(path, "127.0.0.1:1", false, None)).await,
                StatusCode::NOT_FOUND,
                "{path} on the WebSocket port"
            );
            assert_eq!(
                status(admin(path, "192.168.1.9:1", true, None)).await,
                StatusCode::FORBIDDEN,
                "{path} from the LAN"
            );
            assert_ne!(
                status(admin(path, "127.0.0.1:1", true, None)).await,
                StatusCode::FORBIDDEN,
                "{path} from loopback"
            );
            assert_ne!(status(admin(path, "[::1]:1", true, None)).await, StatusCode::FORBIDDEN, "{path} from ::1");
        }
        let reload = Request::post("/xiaozhi/extensions/reload").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(call(reload, &open.ctx).await.0, StatusCode::NOT_FOUND, "a request without a caller is refused");

        let locked = fixture(|c| c.server.admin_token = "s3cret".into());
        let status = |req| async { call(req, &locked.ctx).await.0 };
        assert_eq!(status(admin("/metrics", "127.0.0.1:1", true, None)).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(admin("/metrics", "192.168.1.9:1", true, Some("wrong"))).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(admin("/metrics", "192.168.1.9:1", true, Some("s3cret"))).await, StatusCode::OK);
        assert_eq!(status(admin("/metrics", "192.168.1.9:1", false, Some("s3cret"))).await, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn status_health_cors_and_404() {
        let f = fixture(|_| {});
        for uri in ["/", "/xiaozhi/v1/"] {
            let (status, headers, body) = call(get(uri), &f.ctx).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&body[..], b"Server is running");
            assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        }
        let (status, _, body) = call(get("/health"), &f.ctx).await;
        assert_eq!((status, serde_json::from_slice::<Value>(&body).unwrap()), (StatusCode::OK, json!({"status":"ok"})));

        let options = Request::options("/xiaozhi/ota/").body(Full::new(Bytes::new())).unwrap();
        let (status, headers, _) = call(options, &f.ctx).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_HEADERS], "*");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST, OPTIONS");

        let (status, headers, _) = call(get("/nope"), &f.ctx).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let (status, _, _) = call(Request::delete("/health").body(Full::new(Bytes::new())).unwrap(), &f.ctx).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// `route` served by a real hyper connection, with `Incoming` bodies.
    #[tokio::test]
    async fn serves_over_a_real_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let f = fixture(|_| {});
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ctx = f.ctx.clone();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let ctx = ctx.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, &ctx).await) }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
                .unwrap();
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST /xiaozhi/ota/ HTTP/1.1\r\nHost: {addr}\r\nDevice-Id: {DEVICE}\r\nClient-Id: {CLIENT}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{REPORT}",
            REPORT.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        server.await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
        assert!(raw.to_ascii_lowercase().contains("access-control-allow-origin: *"));
        let body = raw.split_once("\r\n\r\n").unwrap().1;
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["websocket"]["url"], "ws://127.0.0.1:18000/xiaozhi/v1/");
    }
}
