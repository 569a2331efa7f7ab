//! Protocol peers of the vendors' speech and chat APIs, for the end-to-end tests of the vendor
//! providers (`runtime/src/{asr,tts,llm}/<type>.rs`), and of the web APIs the built-in
//! extensions call (Home Assistant, RAGFlow, Tavily, Metaso, China News RSS, newsnow). Each mock is written from the vendor's
//! published API documentation (its header names the pages): the same framing, authentication,
//! error frames and end of stream a real vendor endpoint has, on loopback.
//!
//! What they share is here: a WebSocket server ([`WsMock`]) and an HTTP server ([`HttpMock`]) that
//! hand each connection to the vendor's handler, real speech to answer with ([`speech`], espeak-ng),
//! the pacing of a synthesizer ([`Timing`]) and a log of what happened when ([`Events`]), so that a
//! test can compare the vendor's timeline with what the device heard.

pub mod aliyun_nls;
pub mod coze;
pub mod dashscope;
pub mod dify;
pub mod edge;
pub mod fastgpt;
pub mod fishspeech;
pub mod funasr;
pub mod gemini;
pub mod gpt_sovits;
pub mod home_assistant;
pub mod minimax;
pub mod news;
pub mod ragflow;
pub mod siliconflow;
pub mod tencent;
pub mod volcengine;
pub mod web_search;
pub mod xunfei;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request as WsRequest, Response as WsResponse};

use crate::speech::espeak_wav;

/// What a mock saw of a request: the WebSocket handshake or the HTTP request line and headers.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// The method (`GET` for WebSocket handshakes).
    pub method: String,
    /// The path with its query string.
    pub target: String,
    /// The headers, names in lower case (the last value of a repeated header).
    pub headers: BTreeMap<String, String>,
}

impl RequestHead {
    /// A header's value (`name` in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target.as_str(), |(path, _)| path)
    }

    /// The query parameters, percent-decoded.
    pub fn query(&self) -> BTreeMap<String, String> {
        let query = self.target.split_once('?').map(|(_, q)| q).unwrap_or_default();
        reqwest::Url::parse(&format!("http://mock/?{query}"))
            .map(|url| url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
            .unwrap_or_default()
    }

    fn from_parts(method: &str, target: &str, headers: &hyper::HeaderMap) -> Self {
        let headers = headers
            .iter()
            .map(|(name, value)| (name.as_str().to_ascii_lowercase(), String::from_utf8_lossy(value.as_bytes()).into()))
            .collect();
        Self { method: method.to_owned(), target: target.to_owned(), headers }
    }
}

/// A refused WebSocket handshake: the HTTP status and body the vendor answers.
pub type Refusal = (u16, String);

/// A WebSocket server on `127.0.0.1:0` that hands each accepted connection to the vendor's
/// session handler. Stops (with every open connection) when dropped.
pub struct WsMock {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WsMock {
    /// Starts the server. `check` sees each handshake first and may refuse it (authentication);
    /// `session` then runs the connection.
    #[allow(clippy::result_large_err)] // tungstenite's handshake callback returns its error response
    pub async fn start<C, S, F>(check: C, session: S) -> anyhow::Result<Self>
    where
        C: Fn(&RequestHead) -> Result<(), Refusal> + Send + Sync + 'static,
        S: Fn(RequestHead, WebSocketStream<TcpStream>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind the WebSocket mock")?;
        let addr = listener.local_addr()?;
        let (check, session) = (Arc::new(check), Arc::new(session));
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (check, session) = (Arc::clone(&check), Arc::clone(&session));
                        connections.spawn(async move {
                            let mut head = RequestHead::default();
                            let callback = |request: &WsRequest, response: WsResponse| {
                                head = RequestHead::from_parts(
                                    request.method().as_str(),
                                    &request.uri().to_string(),
                                    request.headers(),
                                );
                                match check(&head) {
                                    Ok(()) => Ok(response),
                                    Err((status, body)) => {
                                        let mut refusal = ErrorResponse::new(Some(body));
                                        *refusal.status_mut() =
                                            StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
                                        Err(refusal)
                                    }
                                }
                            };
                            if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                                session(head, ws).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, task })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for WsMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP request as an [`HttpMock`] handler gets it: the head and the whole body.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// Method, target and headers.
    pub head: RequestHead,
    /// The body.
    pub body: Bytes,
}

impl HttpRequest {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// A mock's response body: whole, or streamed piece by piece.
pub type HttpBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A complete response.
pub fn full_response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<HttpBody> {
    let mut response = Response::new(Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed_unsync());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// A streamed response: each piece sent through the returned sender goes out as it comes (a
/// chunked body); dropping the sender ends the body, sending an `Err` cuts the connection.
pub fn streamed_response(
    status: u16,
    content_type: &str,
) -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Response<HttpBody>) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let frames =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|piece| (piece.map(Frame::data), rx)) },
        );
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    (tx, response)
}

/// An HTTP/1.1 server on `127.0.0.1:0` that answers every request with the vendor's handler.
/// Stops (with every open connection) when dropped.
pub struct HttpMock {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpMock {
    /// Starts the server.
    pub async fn start<H, F>(handler: H) -> anyhow::Result<Self>
    where
        H: Fn(HttpRequest) -> F + Send + Sync + 'static,
        F: Future<Output = Response<HttpBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind the HTTP mock")?;
        let addr = listener.local_addr()?;
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = Arc::clone(&handler);
                        connections.spawn(async move {
                            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                                let handler = Arc::clone(&handler);
                                async move {
                                    let (parts, body) = request.into_parts();
                                    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
                                    let head = RequestHead::from_parts(parts.method.as_str(), &target, &parts.headers);
                                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                    Ok::<_, Infallible>(handler(HttpRequest { head, body }).await)
                                }
                            });
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, task })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for HttpMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Real speech for `text` at `sample_rate` (espeak-ng, resampled), 16-bit mono: what a mock
/// synthesizer answers.
pub fn speech(text: &str, sample_rate: u32) -> anyhow::Result<Vec<i16>> {
    let (samples, rate) = espeak_wav(text)?;
    Ok(xiaozhi_server::audio::resample::resample(&samples, rate, sample_rate))
}

/// The pace of a mock synthesizer: the time to its first audio and its real-time factor
/// (producing 1 s of audio takes `rtf` s), in pieces of `chunk_ms` of audio.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Time from the request to the first piece of audio.
    pub first_byte: Duration,
    /// Seconds taken per second of audio produced (0 = instant).
    pub rtf: f64,
    /// Audio per piece, ms.
    pub chunk_ms: u32,
}

impl Default for Timing {
    /// Instant: every piece at once, 100 ms pieces.
    fn default() -> Self {
        Self { first_byte: Duration::ZERO, rtf: 0.0, chunk_ms: 100 }
    }
}

impl Timing {
    /// A synthesizer that starts after `first_byte` and produces audio at `rtf`.
    pub fn new(first_byte: Duration, rtf: f64) -> Self {
        Self { first_byte, rtf, ..Self::default() }
    }

    /// Waits until piece `index` (from 0) is due, counted from `start` (the request).
    pub async fn wait_for_piece(&self, start: Instant, index: usize) {
        let audio_before = Duration::from_millis(u64::from(self.chunk_ms) * index as u64);
        let due = start + self.first_byte + audio_before.mul_f64(self.rtf.max(0.0));
        tokio::time::sleep_until(due.into()).await;
    }

    /// `samples` cut into pieces of `chunk_ms` at `sample_rate`.
    pub fn pieces<'a>(&self, samples: &'a [i16], sample_rate: u32) -> impl Iterator<Item = &'a [i16]> + 'a {
        let per_piece = (sample_rate as usize * self.chunk_ms.max(1) as usize / 1000).max(1);
        samples.chunks(per_piece)
    }
}

/// 16-bit samples as little-endian bytes.
pub fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Little-endian bytes as 16-bit samples (an odd last byte is dropped).
pub fn pcm_samples(bytes: &[u8]) -> Vec<i16> {
    bytes.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect()
}

/// Whether 16 kHz PCM sounds like speech: at least `min_ms` long and loud enough somewhere (what a
/// recognizer mock checks before it answers its transcript).
pub fn is_speech(samples: &[i16], sample_rate: u32, min_ms: u32) -> bool {
    let long_enough = samples.len() as u64 * 1000 >= u64::from(min_ms) * u64::from(sample_rate.max(1));
    let window = (sample_rate as usize / 50).max(1);
    let loud = samples.chunks(window).any(|w| {
        let energy = w.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / w.len() as f64;
        energy.sqrt() > 300.0
    });
    long_enough && loud
}

/// What happened in a mock, and when: `(name, time)` in order. Shared between the mock's tasks
/// and the test.
#[derive(Debug, Clone, Default)]
pub struct Events(Arc<Mutex<Vec<(String, Instant)>>>);

impl Events {
    /// Notes `name` now.
    pub fn push(&self, name: impl Into<String>) {
        self.lock().push((name.into(), Instant::now()));
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<(String, Instant)> {
        self.lock().clone()
    }

    /// When `name` first happened.
    pub fn first(&self, name: &str) -> Option<Instant> {
        self.lock().iter().find(|(n, _)| n == name).map(|(_, at)| *at)
    }

    /// When `name` last happened.
    pub fn last(&self, name: &str) -> Option<Instant> {
        self.lock().iter().rev().find(|(n, _)| n == name).map(|(_, at)| *at)
    }

    /// How many times `name` happened.
    pub fn count(&self, name: &str) -> usize {
        self.lock().iter().filter(|(n, _)| n == name).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Instant)>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
