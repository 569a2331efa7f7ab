//! What every remote provider backend shares: the error type of provider calls, the small HTTP
//! helpers (endpoint joining, clients with timeouts, error mapping) and the WebSocket connection
//! of the vendors that speak WebSocket ([`ws_connect`]).

pub(crate) mod aliyun_nls;
pub(crate) mod dashscope;
pub(crate) mod pyconf;
pub(crate) mod sse;
pub(crate) mod tencent_cloud;
pub(crate) mod xunfei;

use std::time::Duration;

use reqwest::{Client, Response};
use serde_json::Value;

/// How many characters of an error body are kept in [`ProviderError::Status`].
const ERROR_BODY_CHARS: usize = 300;

/// Why a provider call failed. Shared by ASR, LLM and TTS backends.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The request could not be sent or the connection broke.
    #[error("request to {url} failed: {message}")]
    Transport {
        /// The endpoint.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The provider answered with a non-success HTTP status.
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// No answer within the configured time.
    #[error("{what} timed out after {seconds} s")]
    Timeout {
        /// Which call timed out.
        what: String,
        /// The limit that was exceeded.
        seconds: u64,
    },
    /// The provider answered something we could not understand.
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// The endpoint.
        url: String,
        /// What was wrong with the answer.
        message: String,
    },
    /// The provider is configured wrongly.
    #[error("provider configuration: {0}")]
    Config(String),
}

/// Joins an API root and an endpoint path, unless `base` already is the full endpoint URL.
/// A trailing `/` on `base` is ignored.
pub(crate) fn endpoint(base: &str, path: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.ends_with(path) { base.to_string() } else { format!("{base}{path}") }
}

/// Checks that `url` is an absolute http(s) URL.
pub(crate) fn check_url(url: &str, what: &str) -> Result<(), ProviderError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        Ok(_) => Err(ProviderError::Config(format!("{what} URL `{url}` is not http or https"))),
        Err(e) => Err(ProviderError::Config(format!("{what} URL `{url}` is invalid: {e}"))),
    }
}

/// Turns a configured `timeout` in seconds into a duration; 0 is a configuration error.
pub(crate) fn timeout_from(seconds: u64, what: &str) -> Result<Duration, ProviderError> {
    if seconds == 0 {
        return Err(ProviderError::Config(format!("{what} timeout must be at least 1 second")));
    }
    Ok(Duration::from_secs(seconds))
}

/// Builds the HTTP client of one provider instance: `connect` bounds the TCP/TLS connection,
/// `total` (when given) the whole request including the body.
pub(crate) fn http_client(connect: Duration, total: Option<Duration>) -> Result<Client, ProviderError> {
    let mut builder = Client::builder()
        .connect_timeout(connect)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("xiaozhi-server/", env!("CARGO_PKG_VERSION")));
    if let Some(total) = total {
        builder = builder.timeout(total);
    }
    builder.build().map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {}", error_chain(&e))))
}

/// The HTTP client of a provider whose answers stream (TTS): `timeout` bounds the connection and
/// every pause while reading (not the whole answer, which lasts as long as the speech takes).
pub(crate) fn streaming_client(timeout: Duration) -> Result<Client, ProviderError> {
    Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("xiaozhi-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {}", error_chain(&e))))
}

/// Reads an answer's body, at most `cap` bytes: a longer body is cut there (and then fails to
/// parse), so a provider cannot make us hold more.
pub(crate) async fn read_capped(mut response: Response, cap: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk[..chunk.len().min(cap.saturating_sub(body.len()) + 1)]);
        if body.len() > cap {
            break;
        }
    }
    Ok(body)
}

/// The message of an error followed by its sources (reqwest's own message is terse).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

/// Maps a reqwest failure: its own timeouts become [`ProviderError::Timeout`], anything else
/// [`ProviderError::Transport`].
pub(crate) fn request_error(url: &str, what: &str, timeout: Duration, err: &reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        ProviderError::Timeout { what: what.to_string(), seconds: timeout.as_secs() }
    } else {
        ProviderError::Transport { url: url.to_string(), message: error_chain(err) }
    }
}

/// A provider's WebSocket connection (`ws://` or `wss://`, TLS by rustls with the webpki roots).
pub(crate) type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Largest message accepted from a provider's WebSocket, bytes (a whole synthesized sentence in
/// one frame stays far below it).
pub(crate) const MAX_WS_MESSAGE_BYTES: usize = 8 << 20;

/// Opens a provider's WebSocket at `url` with `headers`, within `timeout` (TCP, TLS and the
/// handshake together). A refused handshake becomes [`ProviderError::Status`] with the start of
/// the vendor's answer (where vendors put their authentication errors); `what` names the call in
/// timeouts ("Edge TTS connection"). Secrets in `headers` never appear in errors.
pub(crate) async fn ws_connect(
    url: &str,
    headers: &[(&str, String)],
    timeout: Duration,
    what: &str,
) -> Result<WsStream, ProviderError> {
    use tokio_tungstenite::tungstenite;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let mut request = url.into_client_request().map_err(|e| {
        ProviderError::Config(format!("{what}: the URL `{}` is not a WebSocket URL: {e}", url_without_query(url)))
    })?;
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ProviderError::Config(format!("{what}: header name `{name}` is invalid")))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| ProviderError::Config(format!("{what}: the value of header `{name}` is invalid")))?;
        request.headers_mut().insert(name, value);
    }
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_WS_MESSAGE_BYTES));
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(timeout, connect).await {
        Err(_) => Err(ProviderError::Timeout { what: what.to_owned(), seconds: timeout.as_secs().max(1) }),
        Ok(Ok((stream, _))) => Ok(stream),
        Ok(Err(tungstenite::Error::Http(response))) => Err(ProviderError::Status {
            url: url_without_query(url),
            status: response.status().as_u16(),
            body: response.body().as_deref().map(body_start).unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(ProviderError::Transport { url: url_without_query(url), message: error_chain(&e) }),
    }
}

/// `url` without its query string, for messages: signed vendor URLs carry their signature and
/// keys there.
pub(crate) fn url_without_query(url: &str) -> String {
    url.split_once('?').map_or(url, |(head, _)| head).to_owned()
}

/// The first characters of a response body, for error messages.
pub(crate) fn body_start(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim().chars().take(ERROR_BODY_CHARS).collect()
}

/// Builds the [`ProviderError::Status`] of a non-success answer, reading at most a few KiB of
/// its body for at most `wait`.
pub(crate) async fn status_error(url: &str, mut response: Response, wait: Duration) -> ProviderError {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let read = async {
        while body.len() < 4096 {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    // A body that does not come in time is simply left out of the message.
    let _ = tokio::time::timeout(wait, read).await;
    ProviderError::Status { url: url.to_string(), status, body: body_start(&body) }
}

/// An `f32` setting as JSON, written as its shortest decimal (`0.7`, not `0.699999988…`);
/// `None` when it is not finite.
pub(crate) fn json_f32(value: f32) -> Option<Value> {
    if !value.is_finite() {
        return None;
    }
    let decimal: f64 = value.to_string().parse().ok()?;
    serde_json::Number::from_f64(decimal).map(Value::Number)
}

/// Whether the answer's `Content-Type` says JSON.
pub(crate) fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"))
}

#[cfg(test)]
pub(crate) mod test_server {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A request as the server received it.
    #[derive(Debug, Clone)]
    pub(crate) struct Recorded {
        /// The request line and headers.
        pub head: String,
        /// The body, de-chunked.
        pub body: Vec<u8>,
    }

    impl Recorded {
        /// `POST /v1/… HTTP/1.1` → `/v1/…`.
        pub(crate) fn target(&self) -> String {
            self.head.split_whitespace().nth(1).unwrap_or_default().to_string()
        }

        /// The request method.
        pub(crate) fn method(&self) -> String {
            self.head.split_whitespace().next().unwrap_or_default().to_string()
        }

        /// A header value (name case-insensitive).
        pub(crate) fn header(&self, name: &str) -> Option<String> {
            self.head.lines().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
            })
        }

        /// The body as JSON.
        pub(crate) fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("the request body is JSON")
        }
    }

    /// One step of a scripted answer.
    #[derive(Debug, Clone)]
    pub(crate) enum Step {
        /// Write these bytes (and flush).
        Send(Vec<u8>),
        /// Wait.
        Sleep(Duration),
    }

    /// A complete answer with a `Content-Length`, closing the connection after it.
    pub(crate) fn full(status: u16, content_type: &str, body: &[u8]) -> Vec<Step> {
        let mut bytes = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        vec![Step::Send(bytes)]
    }

    /// The head of a close-delimited streamed answer (the body follows in later steps).
    pub(crate) fn stream_head(content_type: &str) -> Step {
        Step::Send(format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n").into_bytes())
    }

    /// Serves one connection per script, in order, recording each request. After its steps the
    /// connection is closed.
    pub(crate) async fn serve(scripts: Vec<Vec<Step>>) -> (String, mpsc::UnboundedReceiver<Recorded>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for script in scripts {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else { return };
                    let _ = tx.send(request);
                    for step in script {
                        match step {
                            Step::Send(bytes) => {
                                if socket.write_all(&bytes).await.is_err() || socket.flush().await.is_err() {
                                    return;
                                }
                            }
                            Step::Sleep(d) => tokio::time::sleep(d).await,
                        }
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), rx)
    }

    async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Recorded> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos;
            }
            let n = socket.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut body = buf[head_end + 4..].to_vec();
        let recorded = Recorded { head, body: Vec::new() };
        let chunked = recorded.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            while !body.ends_with(b"0\r\n\r\n") {
                let n = socket.read(&mut chunk).await.ok()?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body = dechunk(&body);
        } else {
            let length: usize = recorded.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while body.len() < length {
                let n = socket.read(&mut chunk).await.ok()?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        Some(Recorded { body, ..recorded })
    }

    fn dechunk(mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&data[..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = line_end + 2;
            out.extend_from_slice(&data[start..start + size]);
            data = &data[start + size + 2..];
        }
        out
    }
}
