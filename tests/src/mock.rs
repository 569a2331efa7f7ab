//! An OpenAI-compatible provider server used as a protocol peer by the end-to-end tests.
//!
//! [`MockOpenAi`] listens on `127.0.0.1:0` and serves, under `/v1`:
//!
//! - `POST /audio/transcriptions`: a multipart upload whose `file` must be a 16 kHz mono 16-bit
//!   WAV of at least 200 ms; answers `{"text": <transcript>}` (or plain text for
//!   `response_format=text`), HTTP 400 with an OpenAI error body otherwise.
//! - `POST /chat/completions` with `"stream": true`: an SSE stream of `chat.completion.chunk`s
//!   ending with `data: [DONE]`, either the scripted reply split into small chunks or, when the
//!   tool rule matches, a tool call streamed in fragments the way OpenAI does. Without `stream`,
//!   a vision request (a user message whose content has an `image_url` part) is answered with
//!   one `chat.completion` (the scripted vision reply); the image is recorded
//!   ([`MockOpenAi::vision_requests`]).
//! - `POST /audio/speech`: JSON `{model, input, voice, speed, response_format}`; answers real speech
//!   synthesized by `espeak-ng`: `wav` (22050 Hz 16-bit mono), `pcm` (24 kHz 16-bit little-endian
//!   mono, as OpenAI's) or `opus` (Ogg Opus, 24 kHz, 60 ms packets, as OpenAI's). Streamed in
//!   100 ms pieces when [`MockScript::tts_stream`] is on (a streamed WAV has the unknown sizes of
//!   real streaming servers), else whole.
//! - `POST /custom-tts`: the target of a `custom` TTS entry: JSON `{"text", "format"}` (any
//!   `Authorization`), answered like `/audio/speech`.
//!
//! Timing follows [`MockScript`]: ASR finalisation delay, LLM time to first token and the gap
//! between tokens, TTS time to first byte and real-time factor. Every latency figure of the
//! benchmarks comes from these delays (published figures of cloud providers), not from instant
//! answers.
//!
//! Every request must carry `Authorization: Bearer …` (HTTP 401 otherwise) and is recorded (see
//! [`Recorded`]). What the mock answers comes from a [`MockScript`] that tests may swap while the
//! server runs. The server stops when the [`MockOpenAi`] is dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::speech::{DEVICE_RATE, espeak_args, read_wav, temp_wav_path};

/// The shortest upload the transcription endpoint accepts.
pub const MIN_ASR_AUDIO_MS: u64 = 200;

/// What the mock answers. Build it with [`MockScript::default`] and the builder methods.
#[derive(Debug, Clone)]
pub struct MockScript {
    /// What the transcription endpoint answers for a valid upload. Default `"Hello there."`.
    pub transcript: String,
    /// The assistant's answer when no tool rule applies; `{user}` is replaced by the last user
    /// message (so concurrent devices get distinguishable replies). Default `"Hello! How can I help you today?"`.
    pub reply: String,
    /// The tool rule: `(trigger, tool name, arguments, reply after the tool result)`. When the last
    /// user message contains `trigger` and the request offers a tool named `tool name`, the model
    /// calls it with `arguments`; once a tool result follows that user message, the model answers
    /// `reply after the tool result`, with `{tool}` replaced by that result. When the tool is not
    /// offered, the default reply is streamed.
    pub tool_trigger: Option<(String, String, Value, String)>,
    /// Prompt rules `(needle, reply)`, checked first, in order: when the request's system message
    /// contains `needle`, the model answers `reply`, with `{user}` replaced by the last user
    /// message and `{user_json}` by that message as a JSON string (for answers that are JSON,
    /// like the intent and memory extensions ask for).
    pub rules: Vec<(String, String)>,
    /// Delay before the first SSE event of a chat stream.
    pub first_token_delay: Duration,
    /// Delay between the following SSE events.
    pub chunk_delay: Duration,
    /// Whether the transcription endpoint answers HTTP 500.
    pub asr_fail: bool,
    /// Whether the chat endpoint answers HTTP 500.
    pub llm_fail: bool,
    /// Whether the speech endpoint answers HTTP 500.
    pub tts_fail: bool,
    /// Whether the chat endpoint answers 200 with an SSE stream that is not JSON.
    pub llm_garbage: bool,
    /// Cut the chat stream's connection after this many SSE events (mid-answer).
    pub llm_cut_after: Option<usize>,
    /// How long the transcription endpoint takes to answer (finalisation).
    pub asr_delay: Duration,
    /// How long the speech endpoints take to their first byte.
    pub tts_first_byte: Duration,
    /// The speech endpoints' real-time factor: producing 1 s of audio takes this many seconds.
    pub tts_rtf: f64,
    /// Whether speech streams in 100 ms pieces (else the whole answer at the end).
    pub tts_stream: bool,
    /// Cut the speech stream after this many ms of audio (a stream that dies mid-sentence).
    pub tts_cut_after_ms: Option<u64>,
    /// What a vision request (a non-streamed chat with an `image_url`) is answered; `{question}`
    /// is replaced by its text. Default `"I see a small grey picture."`.
    pub vision_reply: String,
    /// How long a vision request takes to answer.
    pub vision_delay: Duration,
}

impl Default for MockScript {
    fn default() -> Self {
        Self {
            transcript: "Hello there.".into(),
            reply: "Hello! How can I help you today?".into(),
            tool_trigger: None,
            rules: Vec::new(),
            first_token_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            asr_fail: false,
            llm_fail: false,
            tts_fail: false,
            llm_garbage: false,
            llm_cut_after: None,
            asr_delay: Duration::ZERO,
            tts_first_byte: Duration::ZERO,
            tts_rtf: 0.0,
            tts_stream: false,
            tts_cut_after_ms: None,
            vision_reply: "I see a small grey picture.".into(),
            vision_delay: Duration::ZERO,
        }
    }
}

impl MockScript {
    /// Sets what ASR answers.
    pub fn transcript(mut self, text: impl Into<String>) -> Self {
        self.transcript = text.into();
        self
    }

    /// Sets the default assistant answer.
    pub fn reply(mut self, text: impl Into<String>) -> Self {
        self.reply = text.into();
        self
    }

    /// Sets the tool rule (see [`MockScript::tool_trigger`]).
    pub fn tool(
        mut self,
        trigger: impl Into<String>,
        name: impl Into<String>,
        arguments: Value,
        after: impl Into<String>,
    ) -> Self {
        self.tool_trigger = Some((trigger.into(), name.into(), arguments, after.into()));
        self
    }

    /// Adds a prompt rule (see [`MockScript::rules`]).
    pub fn rule(mut self, needle: impl Into<String>, reply: impl Into<String>) -> Self {
        self.rules.push((needle.into(), reply.into()));
        self
    }

    /// Sets the delay before the first SSE event and between the following ones.
    pub fn latency(mut self, first_token_delay: Duration, chunk_delay: Duration) -> Self {
        self.first_token_delay = first_token_delay;
        self.chunk_delay = chunk_delay;
        self
    }

    /// The LLM's pace: first token after `first`, then `tokens_per_second` (one text piece of 3–6
    /// characters counts as a token).
    pub fn tokens(mut self, first: Duration, tokens_per_second: f64) -> Self {
        self.first_token_delay = first;
        self.chunk_delay =
            if tokens_per_second > 0.0 { Duration::from_secs_f64(1.0 / tokens_per_second) } else { Duration::ZERO };
        self
    }

    /// The ASR's finalisation delay.
    pub fn asr_delay(mut self, delay: Duration) -> Self {
        self.asr_delay = delay;
        self
    }

    /// The TTS's time to first byte, real-time factor and whether it streams.
    pub fn tts_timing(mut self, first_byte: Duration, rtf: f64, stream: bool) -> Self {
        self.tts_first_byte = first_byte;
        self.tts_rtf = rtf;
        self.tts_stream = stream;
        self
    }

    /// Cuts every speech stream after `ms` of audio (implies streaming).
    pub fn tts_cut_after_ms(mut self, ms: u64) -> Self {
        self.tts_cut_after_ms = Some(ms);
        self.tts_stream = true;
        self
    }

    /// Makes the transcription endpoint fail (HTTP 500) or not.
    pub fn asr_fail(mut self, fail: bool) -> Self {
        self.asr_fail = fail;
        self
    }

    /// Makes the chat endpoint fail (HTTP 500) or not.
    pub fn llm_fail(mut self, fail: bool) -> Self {
        self.llm_fail = fail;
        self
    }

    /// Makes the chat endpoint answer a stream of garbage (not JSON).
    pub fn llm_garbage(mut self, garbage: bool) -> Self {
        self.llm_garbage = garbage;
        self
    }

    /// Cuts the chat stream's connection after `events` SSE events.
    pub fn llm_cut_after(mut self, events: usize) -> Self {
        self.llm_cut_after = Some(events);
        self
    }

    /// Makes the speech endpoint fail (HTTP 500) or not.
    pub fn tts_fail(mut self, fail: bool) -> Self {
        self.tts_fail = fail;
        self
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The JSON body for chat and speech requests; for transcriptions
    /// `{"model": .., "language": .., "audio_ms": ..}` (`audio_ms` is null when the upload was not
    /// an acceptable WAV). Null when the body could not be read.
    pub body: Value,
    /// When the request arrived (its headers).
    pub at: Instant,
}

/// State shared by the handle and the connection tasks.
struct Shared {
    script: Mutex<MockScript>,
    requests: Mutex<Vec<Recorded>>,
    /// Synthesized speech by voice and text: (22050 Hz samples).
    tts_cache: Mutex<HashMap<String, Arc<Vec<i16>>>>,
    /// Encoded answers by format, voice and text.
    answer_cache: Mutex<HashMap<String, Bytes>>,
    next_id: AtomicU64,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not hide the recordings).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running OpenAI-compatible mock server; it stops when dropped.
pub struct MockOpenAi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for MockOpenAi {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet), so they end with it.
        self.task.abort();
    }
}

impl MockOpenAi {
    /// Starts the mock on `127.0.0.1` with an OS-chosen port.
    pub async fn start(script: MockScript) -> anyhow::Result<MockOpenAi> {
        Self::start_on(0, script).await
    }

    /// Like [`MockOpenAi::start`], on a chosen loopback port (0 = any free port).
    pub async fn start_on(port: u16, script: MockScript) -> anyhow::Result<MockOpenAi> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], port)), script).await
    }

    /// Like [`MockOpenAi::start`], on a chosen address (`0.0.0.0:9000` inside a container).
    pub async fn start_at(addr: SocketAddr, script: MockScript) -> anyhow::Result<MockOpenAi> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the mock server to {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            requests: Mutex::new(Vec::new()),
            tts_cache: Mutex::new(HashMap::new()),
            answer_cache: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(MockOpenAi { addr, shared, task })
    }

    /// Synthesizes `sentences` (at speed 1) into the TTS cache now, so that later speech requests
    /// for them answer at once: an instant mock for latency figures.
    pub async fn warm_tts(&self, sentences: &[&str]) -> anyhow::Result<()> {
        for sentence in sentences {
            let (samples, _) = read_wav(&espeak(sentence, 175).await?)?;
            lock(&self.shared.tts_cache).insert(format!("175|{sentence}"), Arc::new(samples));
        }
        Ok(())
    }

    /// The API root, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The system prompts of the chat requests received after the first `since` requests, in
    /// order (`since = 0`: all of them).
    pub fn system_prompts(&self, since: usize) -> Vec<String> {
        self.requests()
            .into_iter()
            .skip(since)
            .filter(|r| r.path.ends_with("/chat/completions"))
            .filter_map(|r| r.body["messages"][0]["content"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// The vision requests received so far, in order: (question text, `image_url.url`).
    pub fn vision_requests(&self) -> Vec<(String, String)> {
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with("/chat/completions"))
            .filter_map(|r| vision_parts(&r.body))
            .collect()
    }

    /// Replaces the whole script; requests that arrive afterwards use it.
    pub fn set_script(&self, script: MockScript) {
        *lock(&self.shared.script) = script;
    }

    /// Changes only what ASR answers.
    pub fn set_transcript(&self, text: impl Into<String>) {
        lock(&self.shared.script).transcript = text.into();
    }

    /// Changes only the default assistant answer.
    pub fn set_reply(&self, text: impl Into<String>) {
        lock(&self.shared.script).reply = text.into();
    }

    /// The provider part of a server `config.yaml` that points ASR, LLM and TTS at this mock
    /// (ASR through the full transcription URL, as migrating users write it).
    pub fn config_override_yaml(&self) -> String {
        self.config_override_yaml_with_tts("wav")
    }

    /// Like [`MockOpenAi::config_override_yaml`], with the TTS answering in `format` (`wav`,
    /// `pcm`, `opus`), or, for `custom`, a `custom` TTS entry on `/custom-tts` answering WAV.
    pub fn config_override_yaml_with_tts(&self, format: &str) -> String {
        let base = self.base_url();
        let tts = if format == "custom" {
            format!(
                "  MockTTS:\n    type: custom\n    method: POST\n    url: \"{base}/custom-tts\"\n    \
                 params:\n      text: \"{{prompt_text}}\"\n      format: wav\n    headers:\n      \
                 Authorization: Bearer test\n    format: wav\n"
            )
        } else {
            format!(
                "  MockTTS:\n    type: openai\n    api_url: \"{base}/audio/speech\"\n    model: mock-tts\n    \
                 voice: en\n    format: {format}\n    sample_rate: 24000\n    api_key: test\n"
            )
        };
        format!(
            "selected_module:\n  VAD: SileroVAD\n  ASR: MockASR\n  LLM: MockLLM\n  TTS: MockTTS\n  Intent: function_call\n  Memory: nomem\n\
             ASR:\n  MockASR:\n    type: openai\n    base_url: \"{base}/audio/transcriptions\"\n    model_name: mock-asr\n    api_key: test\n\
             LLM:\n  MockLLM:\n    type: openai\n    base_url: \"{base}\"\n    model_name: mock-llm\n    api_key: test\n\
             TTS:\n{tts}"
        )
    }
}

/// Accepts connections until aborted; dropping the JoinSet aborts the connections too.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!("mock connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("mock accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A response body: either complete bytes or a paced SSE stream (whose error cuts the
/// connection, for the stream-cut fault).
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A complete response.
fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let kind = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    respond(status, "application/json", body.to_string())
}

/// Routes one request.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let at = Instant::now();
    let path = req.uri().path().to_owned();
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ") && v.len() > "Bearer ".len());
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let post = req.method() == Method::POST;
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            record(&shared, &path, Value::Null, at);
            return Ok(error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")));
        }
    };
    let script = lock(&shared.script).clone();
    let response = match (post, path.as_str()) {
        (true, "/v1/chat/completions") => {
            let json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            record(&shared, &path, json.clone(), at);
            match (authorized, script.llm_fail) {
                (false, _) => error(StatusCode::UNAUTHORIZED, "missing bearer token"),
                (true, true) => error(StatusCode::INTERNAL_SERVER_ERROR, "mock: scripted LLM failure"),
                (true, false) => match vision_parts(&json) {
                    Some((question, _)) if json.get("stream") != Some(&Value::Bool(true)) => {
                        vision_chat(&script, &json, &question).await
                    }
                    _ => chat(&shared, &script, &json),
                },
            }
        }
        (true, "/v1/audio/transcriptions") => {
            let upload = parse_upload(&content_type, &body);
            let audio_ms = upload.as_ref().ok().and_then(|u| u.audio.as_ref().ok().copied());
            let (model, language) = match &upload {
                Ok(u) => (u.model.clone(), u.language.clone()),
                Err(_) => (None, None),
            };
            record(&shared, &path, json!({"model": model, "language": language, "audio_ms": audio_ms}), at);
            match (authorized, script.asr_fail, upload) {
                (false, _, _) => error(StatusCode::UNAUTHORIZED, "missing bearer token"),
                (true, true, _) => error(StatusCode::INTERNAL_SERVER_ERROR, "mock: scripted ASR failure"),
                (true, false, Err(message)) => error(StatusCode::BAD_REQUEST, &message),
                (true, false, Ok(upload)) => {
                    if !script.asr_delay.is_zero() {
                        tokio::time::sleep(script.asr_delay).await;
                    }
                    transcribe(&script, upload)
                }
            }
        }
        (true, "/v1/audio/speech") => {
            let json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            record(&shared, &path, json.clone(), at);
            match (authorized, script.tts_fail) {
                (false, _) => error(StatusCode::UNAUTHORIZED, "missing bearer token"),
                (true, true) => error(StatusCode::INTERNAL_SERVER_ERROR, "mock: scripted TTS failure"),
                (true, false) => speech(&shared, &script, &json).await,
            }
        }
        (true, "/v1/custom-tts") => {
            let json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
            record(&shared, &path, json.clone(), at);
            let text = json.get("text").cloned().unwrap_or(Value::Null);
            let format = json.get("format").cloned().unwrap_or_else(|| json!("wav"));
            let request = json!({"model": "custom", "input": text, "response_format": format});
            if script.tts_fail {
                error(StatusCode::INTERNAL_SERVER_ERROR, "mock: scripted TTS failure")
            } else {
                speech(&shared, &script, &request).await
            }
        }
        _ => {
            record(&shared, &path, Value::Null, at);
            error(StatusCode::NOT_FOUND, &format!("no route for {path}"))
        }
    };
    Ok(response)
}

fn record(shared: &Shared, path: &str, body: Value, at: Instant) {
    lock(&shared.requests).push(Recorded { path: path.to_owned(), body, at });
}

// ---------------------------------------------------------------------------------------------
// Chat completions

/// The text of a message's `content`: a string, or the `text` parts of a content array.
fn content_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    }
}

/// What the model does for one request.
enum Answer {
    Text(String),
    ToolCall { name: String, arguments: String },
}

/// The vision parts of a chat request: the text and the `image_url.url` of its user message's
/// content parts, when it has an image.
fn vision_parts(request: &Value) -> Option<(String, String)> {
    let parts = request.pointer("/messages/0/content")?.as_array()?;
    let image = parts
        .iter()
        .find(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
        .and_then(|p| p.pointer("/image_url/url"))
        .and_then(Value::as_str)?;
    let text = parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<String>();
    Some((text, image.to_owned()))
}

/// A vision request (an image in the user message, not streamed, as the Python VLLM and ours
/// ask): one `chat.completion` whose content is [`MockScript::vision_reply`] with `{question}`
/// replaced, after [`MockScript::vision_delay`].
async fn vision_chat(script: &MockScript, request: &Value, question: &str) -> Response<Body> {
    if !script.vision_delay.is_zero() {
        tokio::time::sleep(script.vision_delay).await;
    }
    let model = request.get("model").and_then(Value::as_str).unwrap_or("mock-vllm");
    let body = json!({
        "id": "chatcmpl-mock-vision", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant",
            "content": script.vision_reply.replace("{question}", question)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    });
    respond(StatusCode::OK, "application/json", body.to_string())
}

/// Checks the request like OpenAI does, picks the answer and streams it.
fn chat(shared: &Shared, script: &MockScript, request: &Value) -> Response<Body> {
    if request.get("stream") != Some(&Value::Bool(true)) {
        return error(StatusCode::BAD_REQUEST, "this mock only serves streamed completions (\"stream\": true)");
    }
    let Some(messages) = request.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "'messages' must be a non-empty array");
    };
    let role = |m: &Value| m.get("role").and_then(Value::as_str).unwrap_or("").to_owned();
    // Every tool result must answer a call made by an earlier assistant message.
    let mut call_ids = Vec::new();
    for m in messages {
        match role(m).as_str() {
            "assistant" => call_ids.extend(
                m.get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.get("id").and_then(Value::as_str)),
            ),
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                if !call_ids.contains(&id) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("messages with role 'tool' must answer a preceding 'tool_calls' id; got {id:?}"),
                    );
                }
            }
            "system" | "user" | "developer" => {}
            other => return error(StatusCode::BAD_REQUEST, &format!("invalid message role {other:?}")),
        }
    }
    let last_user = messages.iter().rposition(|m| role(m) == "user");
    let user_text = last_user.and_then(|i| messages.get(i)).map(content_text).unwrap_or_default();
    let tool_result_after_user = last_user.is_some_and(|i| messages.iter().skip(i + 1).any(|m| role(m) == "tool"));
    let offered = |name: &str| {
        request.get("tools").and_then(Value::as_array).is_some_and(|tools| {
            tools.iter().any(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
        })
    };
    let system = messages.iter().find(|m| role(m) == "system").map(content_text).unwrap_or_default();
    let ruled = script.rules.iter().find(|(needle, _)| system.contains(needle.as_str())).map(|(_, reply)| {
        reply.replace("{user_json}", &Value::String(user_text.clone()).to_string()).replace("{user}", &user_text)
    });
    let answer = match (ruled, &script.tool_trigger) {
        (Some(reply), _) => Answer::Text(reply),
        (None, Some((trigger, _, _, after))) if user_text.contains(trigger.as_str()) && tool_result_after_user => {
            let result = messages.iter().rev().find(|m| role(m) == "tool").map(content_text).unwrap_or_default();
            Answer::Text(after.replace("{tool}", &result))
        }
        (None, Some((trigger, name, arguments, _))) if user_text.contains(trigger.as_str()) && offered(name) => {
            Answer::ToolCall { name: name.clone(), arguments: arguments.to_string() }
        }
        _ => Answer::Text(script.reply.replace("{user}", &user_text)),
    };
    let model = request.get("model").and_then(Value::as_str).unwrap_or("mock-llm");
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut events = sse_events(&format!("chatcmpl-mock{n}"), model, &format!("call_mock{n}"), &answer);
    if script.llm_garbage {
        events =
            vec!["data: {\"choices\": [{\"delta\": {\"content\": \"Hel".into(), "lo\"}}]} this is not JSON\n\n".into()];
    }
    // The stream-cut fault: the role event and a few content pieces, then the connection drops.
    let cut = script.llm_cut_after.map(|n| n.min(events.len()));
    if let Some(n) = cut {
        events.truncate(n);
    }
    let stream = futures_util::stream::iter(events.into_iter().map(Some).chain(cut.map(|_| None)).enumerate());
    let (first, gap) = (script.first_token_delay, script.chunk_delay);
    let body = stream.then(move |(i, event)| async move {
        let delay = if i == 0 { first } else { gap };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match event {
            Some(event) => Ok(Frame::data(Bytes::from(event))),
            None => Err(std::io::Error::other("mock: the connection is cut mid-stream")),
        }
    });
    let mut response = Response::new(StreamBody::new(body).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// The SSE events (`data: …\n\n`) of one streamed answer, `data: [DONE]` included.
fn sse_events(id: &str, model: &str, call_id: &str, answer: &Answer) -> Vec<String> {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let event = |delta: Value, finish: Option<&str>| {
        let chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        format!("data: {chunk}\n\n")
    };
    let mut events = Vec::new();
    match answer {
        Answer::Text(text) => {
            events.push(event(json!({"role": "assistant", "content": "", "refusal": null}), None));
            events.extend(split_text(text).into_iter().map(|piece| event(json!({"content": piece}), None)));
            events.push(event(json!({}), Some("stop")));
        }
        Answer::ToolCall { name, arguments } => {
            let call =
                json!({"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}});
            events.push(event(json!({"role": "assistant", "content": null, "tool_calls": [call]}), None));
            for piece in split_arguments(arguments) {
                events.push(event(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), None));
            }
            events.push(event(json!({}), Some("tool_calls")));
        }
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || "。，！？；：、…".contains(c)
}

/// Splits answer text into 3–6 character pieces, cutting inside words, and alternately right
/// before and right after punctuation, so that clients must reassemble sentences themselves.
fn split_text(text: &str) -> Vec<String> {
    const SIZES: [usize; 4] = [3, 5, 4, 6];
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut cut_before = true;
    let flush = |current: &mut String, pieces: &mut Vec<String>| {
        if !current.is_empty() {
            pieces.push(std::mem::take(current));
        }
    };
    for c in text.chars() {
        if is_punctuation(c) {
            if cut_before {
                flush(&mut current, &mut pieces);
                current.push(c);
            } else {
                current.push(c);
                flush(&mut current, &mut pieces);
            }
            cut_before = !cut_before;
            continue;
        }
        current.push(c);
        if current.chars().count() >= SIZES[pieces.len() % SIZES.len()] {
            flush(&mut current, &mut pieces);
        }
    }
    flush(&mut current, &mut pieces);
    pieces
}

/// Splits tool-call arguments JSON text into at least three fragments (when it has three
/// characters), each at most five characters.
fn split_arguments(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    let size = (chars.len() / 3).clamp(1, 5);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

// ---------------------------------------------------------------------------------------------
// Transcriptions

/// The fields of a transcription upload; `audio` is the duration in ms or why it was refused.
struct Upload {
    model: Option<String>,
    language: Option<String>,
    response_format: Option<String>,
    audio: Result<u64, String>,
}

/// Parses the multipart form of a transcription request. `Err` when the form itself is broken.
fn parse_upload(content_type: &str, body: &[u8]) -> Result<Upload, String> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"'))
        .filter(|_| content_type.trim_start().starts_with("multipart/form-data"))
        .ok_or_else(|| format!("expected multipart/form-data with a boundary, got {content_type:?}"))?;
    let mut upload = Upload { model: None, language: None, response_format: None, audio: Err("no 'file' part".into()) };
    for (name, data) in multipart_parts(body, boundary)? {
        let text = || String::from_utf8_lossy(data).into_owned();
        match name.as_str() {
            "file" => upload.audio = wav_ms(data),
            "model" => upload.model = Some(text()),
            "language" => upload.language = Some(text()),
            "response_format" => upload.response_format = Some(text()),
            _ => {}
        }
    }
    if upload.model.as_deref().is_none_or(str::is_empty) {
        return Err("'model' is required".into());
    }
    Ok(upload)
}

/// Finds `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// The `(name, data)` of each part of a `multipart/form-data` body.
fn multipart_parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<(String, &'a [u8])>, String> {
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    let broken = || "malformed multipart body".to_owned();
    let mut at = find(body, delimiter.as_bytes(), 0).ok_or_else(broken)? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        match body.get(at..at + 2) {
            Some(b"--") => return Ok(parts),
            Some(b"\r\n") => at += 2,
            _ => return Err(broken()),
        }
        let headers_end = find(body, b"\r\n\r\n", at).ok_or_else(broken)?;
        let headers = String::from_utf8_lossy(body.get(at..headers_end).ok_or_else(broken)?).into_owned();
        let data_start = headers_end + 4;
        let data_end = find(body, next_delimiter.as_bytes(), data_start).ok_or_else(broken)?;
        let name = headers
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .flat_map(|l| l.split(';'))
            .filter_map(|p| p.trim().strip_prefix("name="))
            .map(|n| n.trim_matches('"').to_owned())
            .next()
            .unwrap_or_default();
        parts.push((name, body.get(data_start..data_end).ok_or_else(broken)?));
        at = data_end + next_delimiter.len();
    }
}

/// The duration of an acceptable upload (16 kHz mono 16-bit WAV, at least 200 ms).
fn wav_ms(bytes: &[u8]) -> Result<u64, String> {
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err("the uploaded file is not a RIFF WAV file".into());
    }
    let (samples, rate) = read_wav(bytes).map_err(|e| format!("invalid WAV upload: {e:#}"))?;
    if rate != DEVICE_RATE {
        return Err(format!("expected 16000 Hz audio, got {rate} Hz"));
    }
    let ms = samples.len() as u64 * 1000 / u64::from(DEVICE_RATE);
    if ms < MIN_ASR_AUDIO_MS {
        return Err(format!("audio too short: {ms} ms (minimum {MIN_ASR_AUDIO_MS} ms)"));
    }
    Ok(ms)
}

fn transcribe(script: &MockScript, upload: Upload) -> Response<Body> {
    if let Err(message) = upload.audio {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    match upload.response_format.as_deref() {
        Some("text") => respond(StatusCode::OK, "text/plain; charset=utf-8", script.transcript.clone()),
        _ => respond(StatusCode::OK, "application/json", json!({"text": script.transcript}).to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Speech

/// The rate of `pcm` and `opus` answers (OpenAI's).
const SPEECH_RATE: u32 = 24_000;

async fn speech(shared: &Shared, script: &MockScript, request: &Value) -> Response<Body> {
    let input = request.get("input").and_then(Value::as_str).unwrap_or("");
    if input.trim().is_empty() || input.chars().count() > 4096 {
        return error(StatusCode::BAD_REQUEST, "'input' must be a non-empty string of at most 4096 characters");
    }
    if request.get("model").and_then(Value::as_str).is_none_or(str::is_empty) {
        return error(StatusCode::BAD_REQUEST, "'model' is required");
    }
    // OpenAI's default format is mp3, which this mock cannot produce: ask for another explicitly.
    let format = request.get("response_format").and_then(Value::as_str).unwrap_or("mp3").to_owned();
    if !matches!(format.as_str(), "wav" | "pcm" | "opus") {
        return error(StatusCode::BAD_REQUEST, &format!("this mock produces wav, pcm or opus, not {format:?}"));
    }
    let speed = request.get("speed").map_or(Some(1.0), Value::as_f64).unwrap_or(f64::NAN);
    if !(0.25..=4.0).contains(&speed) {
        return error(StatusCode::BAD_REQUEST, "'speed' must be a number from 0.25 to 4.0");
    }
    let words_per_minute = (175.0 * speed).round().clamp(80.0, 450.0) as u32;
    let voice_key = format!("{words_per_minute}|{input}");
    let cached = lock(&shared.tts_cache).get(&voice_key).cloned();
    let samples = match cached {
        Some(samples) => samples,
        None => match espeak(input, words_per_minute).await.and_then(|wav| read_wav(&wav)) {
            Ok((samples, _)) => {
                let samples = Arc::new(samples);
                lock(&shared.tts_cache).insert(voice_key.clone(), Arc::clone(&samples));
                samples
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("synthesis failed: {e:#}")),
        },
    };
    let answer_key = format!("{format}|{}|{voice_key}", script.tts_stream);
    let cached = lock(&shared.answer_cache).get(&answer_key).cloned();
    let body = match cached {
        Some(body) => body,
        None => {
            let body = match encode_answer(&format, &samples, script.tts_stream) {
                Ok(body) => body,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding failed: {e:#}")),
            };
            lock(&shared.answer_cache).insert(answer_key, body.clone());
            body
        }
    };
    let content_type = match format.as_str() {
        "wav" => "audio/wav",
        "pcm" => "audio/pcm",
        _ => "audio/ogg",
    };
    let audio_ms = samples.len() as u64 * 1000 / 22_050;
    paced_audio(script, content_type, body, audio_ms)
}

/// The answer's bytes: WAV at espeak's 22050 Hz (with unknown sizes when streamed), or PCM /
/// Ogg Opus at 24 kHz.
fn encode_answer(format: &str, samples: &[i16], streamed: bool) -> anyhow::Result<Bytes> {
    if format == "wav" {
        let mut wav = crate::speech::wav_bytes(samples, 22_050)?;
        if streamed {
            wav[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
            wav[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        }
        return Ok(Bytes::from(wav));
    }
    let pcm = xiaozhi_server::audio::resample::resample(samples, 22_050, SPEECH_RATE);
    if format == "pcm" {
        return Ok(Bytes::from(pcm.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()));
    }
    ogg_opus(&pcm)
}

/// Mono PCM at 24 kHz as an Ogg Opus file of 60 ms packets (RFC 7845), as OpenAI answers `opus`.
pub fn ogg_opus(pcm: &[i16]) -> anyhow::Result<Bytes> {
    use ogg::writing::{PacketWriteEndInfo, PacketWriter};
    let mut encoder = xiaozhi_server::audio::opus::OpusEncoder::new(SPEECH_RATE, 60, 32_000, 5)?;
    let frame = encoder.frame_samples();
    let mut writer = PacketWriter::new(Vec::new());
    let serial = 0x5851_4F5A;
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1, 1]);
    head.extend_from_slice(&312u16.to_le_bytes());
    head.extend_from_slice(&SPEECH_RATE.to_le_bytes());
    head.extend_from_slice(&[0, 0, 0]);
    writer.write_packet(head, serial, PacketWriteEndInfo::EndPage, 0)?;
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&4u32.to_le_bytes());
    tags.extend_from_slice(b"mock");
    tags.extend_from_slice(&0u32.to_le_bytes());
    writer.write_packet(tags, serial, PacketWriteEndInfo::EndPage, 0)?;
    let mut out = vec![0u8; xiaozhi_server::audio::opus::MAX_PACKET];
    let chunks: Vec<&[i16]> = pcm.chunks(frame).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut padded = chunk.to_vec();
        padded.resize(frame, 0);
        let n = encoder.encode(&padded, &mut out)?;
        let end = if i + 1 == chunks.len() { PacketWriteEndInfo::EndStream } else { PacketWriteEndInfo::NormalPacket };
        // Granule positions count 48 kHz samples.
        writer.write_packet(out[..n].to_vec(), serial, end, (i as u64 + 1) * 2880)?;
    }
    Ok(Bytes::from(writer.into_inner()))
}

/// An audio answer with the script's timing: the first byte after `tts_first_byte`; streamed,
/// the rest in pieces of 100 ms of audio at the real-time factor (cut after
/// `tts_cut_after_ms`); whole, all of it once the whole clip is "produced".
fn paced_audio(script: &MockScript, content_type: &'static str, body: Bytes, audio_ms: u64) -> Response<Body> {
    let (first, rtf) = (script.tts_first_byte, script.tts_rtf.max(0.0));
    let produce = |ms: u64| Duration::from_secs_f64(ms as f64 / 1000.0 * rtf);
    let mut pieces: Vec<(Duration, Option<Bytes>)> = Vec::new();
    if script.tts_stream {
        let steps = audio_ms.div_ceil(100).max(1) as usize;
        let size = body.len().div_ceil(steps).max(1);
        let cut_at = script.tts_cut_after_ms.map(|ms| (ms.div_ceil(100) as usize).max(1));
        for (i, piece) in body.chunks(size).enumerate() {
            if cut_at.is_some_and(|cut| i >= cut) {
                // A moment later, so that what was sent has left (as in a real broken connection).
                pieces.push((Duration::from_millis(50), None));
                break;
            }
            let delay = if i == 0 { first } else { produce(100) };
            pieces.push((delay, Some(body.slice_ref(piece))));
        }
    } else {
        pieces.push((first + produce(audio_ms), Some(body)));
    }
    let stream = futures_util::stream::iter(pieces).then(|(delay, piece)| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match piece {
            Some(piece) => Ok(Frame::data(piece)),
            None => Err(std::io::Error::other("mock: the speech stream is cut mid-sentence")),
        }
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Runs `espeak-ng` and returns the WAV file it wrote.
async fn espeak(text: &str, words_per_minute: u32) -> anyhow::Result<Bytes> {
    let path = temp_wav_path();
    let output = tokio::process::Command::new("espeak-ng")
        .args(espeak_args(text, words_per_minute, &path))
        .kill_on_drop(true)
        .output()
        .await
        .context("running espeak-ng");
    let wav = tokio::fs::read(&path).await;
    // Best effort: the file may not exist when espeak-ng failed.
    let _ = tokio::fs::remove_file(&path).await;
    let output = output?;
    anyhow::ensure!(output.status.success(), "espeak-ng: {}", String::from_utf8_lossy(&output.stderr));
    Ok(Bytes::from(wav.context("reading espeak-ng output")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_pieces_are_small_cut_inside_words_and_around_punctuation() {
        let text = "Hello, world! The volume is now 30. Anything else?";
        let pieces = split_text(text);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| (1..=6).contains(&p.chars().count())), "{pieces:?}");
        // A piece that starts with punctuation (cut before) and one that ends with it (cut after).
        assert!(pieces.iter().any(|p| p.starts_with(',')), "{pieces:?}");
        assert!(pieces.iter().any(|p| p.ends_with('!')), "{pieces:?}");
        assert!(pieces.contains(&"Hel".to_owned()), "{pieces:?}");
        assert_eq!(split_text("你好，世界。").concat(), "你好，世界。");
    }

    #[test]
    fn arguments_come_in_three_or_more_fragments() {
        for args in [r#"{"volume":30}"#, r#"{"a":1}"#, "{}x", r#"{"text":"a long argument value here"}"#] {
            let pieces = split_arguments(args);
            assert!(pieces.len() >= 3, "{args}: {pieces:?}");
            assert_eq!(pieces.concat(), args);
        }
    }

    #[test]
    fn multipart_parts_and_wav_validation() {
        let wav = crate::speech::wav_bytes(&vec![0; 8000], 16_000).unwrap();
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm1\r\n".to_vec();
        body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n");
        body.extend_from_slice(b"Content-Type: audio/wav\r\n\r\n");
        body.extend_from_slice(&wav);
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        let upload = parse_upload("multipart/form-data; boundary=XyZ", &body).unwrap();
        assert_eq!(upload.model.as_deref(), Some("m1"));
        assert_eq!(upload.audio, Ok(500));
        assert!(parse_upload("application/json", &body).is_err());
        assert!(parse_upload("multipart/form-data; boundary=XyZ", &body[..40]).is_err());

        assert!(wav_ms(&crate::speech::wav_bytes(&vec![0; 1000], 16_000).unwrap()).is_err(), "too short");
        assert!(wav_ms(&crate::speech::wav_bytes(&vec![0; 8000], 8_000).unwrap()).is_err(), "wrong rate");
        assert!(wav_ms(b"not audio at all").is_err());
    }
}
