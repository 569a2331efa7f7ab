//! The plain HTTP routes, served on both ports for every request that is not a WebSocket upgrade.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /`, `GET /xiaozhi/v1/` | 200 `Server is running` |
//! | `GET /health` | 200 `{"status":"ok"}` |
//! | `GET /metrics` | Prometheus metrics, OpenMetrics text (see [`crate::metrics`]) |
//! | `GET /xiaozhi/ota/` | 200 text naming the WebSocket URL devices are given |
//! | `POST /xiaozhi/ota/` | the OTA check answer ([`ota`]) |
//! | `POST /xiaozhi/ota/activate` | 202 until the device is bound, then 200 `success` |
//! | `GET /xiaozhi/ota/download/<file>` | the firmware image `data/bin/<file>` |
//! | `OPTIONS *` | 204 |
//! | anything else | 404 |
//!
//! Every response carries permissive CORS headers. Request bodies are capped at [`MAX_BODY`]
//! bytes (413 beyond).
//!
//! OTA errors follow the Python server where the firmware can see them: a malformed report gets
//! HTTP 200 `{"success":false,"message":"request error."}`. A missing `Device-Id` header is a 400
//! instead, because without it no answer can be addressed to any device.

pub mod activation;
pub mod firmware;
pub mod ota;
pub mod probe;

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
    /// The extension registry (`GET /xiaozhi/extensions`, `POST /xiaozhi/extensions/reload`).
    pub extensions: Option<Arc<crate::extensions::Registry>>,
    /// Where device bindings and activation codes live.
    pub store: Arc<dyn crate::store::Store>,
    /// The server's metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
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

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Broken(e.to_string())),
    }
}

/// The response for a body that could not be read.
fn body_error(e: BodyError) -> Response<Full<Bytes>> {
    match e {
        BodyError::TooLarge => json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"success": false, "message": format!("request body over {MAX_BODY} bytes")}),
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

async fn ota_check<B>(req: Request<B>, ctx: &HttpContext) -> Response<Full<Bytes>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body).await {
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
    let config = ctx.config.borrow().clone();
    let device = request.device_id.clone();
    let code = if config.activation.enabled && !activation::is_bound(ctx.store.as_ref(), &device).await {
        match activation::pending_code(ctx.store.as_ref(), &device).await {
            Ok(code) => Some(code),
            Err(e) => {
                tracing::error!(%device, "OTA check failed: {e}");
                return json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"success": false, "message": "activation state unavailable"}),
                );
            }
        }
    } else {
        None
    };
    let (data_dir, key, ws_port) = (ctx.data_dir.clone(), ctx.auth_key.to_string(), ctx.ws_port);
    let built = tokio::task::spawn_blocking(move || {
        ota::answer(&request, &config, &data_dir, &key, ws_port, SystemTime::now(), code.as_deref())
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

async fn ota_activate<B>(req: Request<B>, ctx: &HttpContext) -> Response<Full<Bytes>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    // The body (`{}` or the eFuse HMAC proof) is read to honour the size cap but not checked: we do
    // not know the devices' eFuse keys; binding is the owner's `bind <code>`.
    if let Err(e) = read_body(&parts.headers, body).await {
        return body_error(e);
    }
    let Some(device_id) = ota::header(&parts.headers, "device-id") else {
        return missing_device_id();
    };
    if !ctx.config.borrow().activation.enabled {
        return text(StatusCode::OK, "success");
    }
    if activation::is_bound(ctx.store.as_ref(), &device_id).await {
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
            extensions: None,
            store: Arc::new(crate::store::memory::MemoryStore::new()),
            metrics: crate::metrics::Metrics::new(),
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
        let f = fixture(|c| {
            c.server.auth.enabled = true;
            c.server.mqtt_gateway = "mqtt.example.com:1883".into();
        });
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
