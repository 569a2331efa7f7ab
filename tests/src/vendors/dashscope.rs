//! The Aliyun Bailian (DashScope) mock: a protocol peer of the four DashScope APIs the providers
//! `alibl_stream`, `aliyunbl_stream`, `qwen3_asr_flash` and `AliBL` speak, written from Alibaba
//! Cloud Model Studio's documentation:
//!
//! - "CosyVoice WebSocket API" and "CosyVoice server-side events"
//!   (help.aliyun.com/zh/model-studio/cosyvoice-websocket-api, …/cosyvoice-server-events);
//! - "Paraformer real-time speech recognition WebSocket API"
//!   (help.aliyun.com/en/model-studio/websocket-for-paraformer-real-time-service);
//! - "WebSocket connection overview" (the `Authorization: Bearer <API key>` handshake header);
//! - "Audio file recognition (Qwen-ASR) API reference", OpenAI-compatible mode
//!   (`POST /compatible-mode/v1/chat/completions`, `input_audio` data URLs, `asr_options`);
//! - "DashScope API reference for applications" (`POST /api/v1/apps/{app_id}/completion`,
//!   `X-DashScope-SSE: enable`, `incremental_output`, SSE `output.text`, `code`/`message` errors).
//!
//! The WebSocket (`/api-ws/v1/inference`) refuses a handshake without the right bearer key (HTTP
//! 401 with the `InvalidApiKey` body); a task starts with `run-task` (checked: `task_group`,
//! `task`, `function`, `model`, `parameters`, `input`, `streaming: duplex`) and `task-started`.
//! Synthesis takes the text of every `continue-task` and, at `finish-task`, answers real speech
//! (espeak-ng) as binary PCM frames paced by [`Timing`], each after its `result-generated`
//! `sentence-synthesis` event, then `task-finished`. Recognition takes binary PCM while it comes,
//! answers partial `result-generated` sentences, and at `finish-task` the final sentence
//! (`sentence_end: true`) with the configured transcript when the audio was speech. The mock can be
//! told to answer `task-failed` (or the HTTP APIs' error bodies) with a given code and message.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{
    Events, HttpBody, HttpMock, HttpRequest, RequestHead, Timing, WsMock, full_response, is_speech, pcm_bytes,
    pcm_samples, speech, streamed_response,
};
use crate::speech::read_wav;

/// The API key the mock accepts.
pub const API_KEY: &str = "sk-dashscope-mock-key";

/// Which API a fault is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Paraformer recognition tasks.
    Asr,
    /// Qwen3-ASR-Flash requests.
    Qwen,
    /// Application completion requests.
    App,
}

/// A scripted failure: the vendor's code and message.
#[derive(Debug, Clone)]
struct Fault {
    code: String,
    message: String,
}

#[derive(Debug, Default)]
struct State {
    /// What recognitions answer for speech.
    transcript: String,
    /// What the application answers.
    reply: String,
    /// Synthesis pace.
    timing: Timing,
    /// Synthesis fails (at `continue-task`) for text containing the needle.
    tts_fault: Option<(String, Fault)>,
    /// The next task/request of an API fails.
    next_fault: Vec<(Api, Fault)>,
    /// Every command and request body, in order.
    received: Vec<Value>,
}

/// The DashScope mock: its WebSocket and HTTP servers, and what happened when ([`Events`]:
/// `connection` per WebSocket accepted, `task-started`, `tts-text`, `tts-audio` per frame sent, `tts-done`, `asr-audio` per frame
/// received, `asr-finish`, `task-failed`, `qwen-request`, `app-request`).
pub struct DashScopeMock {
    ws: WsMock,
    http: HttpMock,
    /// What happened, and when.
    pub events: Events,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The bearer check of every DashScope API.
fn authorized(head: &RequestHead) -> bool {
    head.header("authorization")
        .and_then(|value| value.split_once(' '))
        .is_some_and(|(scheme, key)| scheme.eq_ignore_ascii_case("bearer") && key == API_KEY)
}

fn invalid_key_body() -> String {
    json!({"code": "InvalidApiKey", "message": "Invalid API-key provided.", "request_id": "mock-request"}).to_string()
}

impl DashScopeMock {
    /// Starts both servers.
    pub async fn start() -> anyhow::Result<Self> {
        let events = Events::default();
        let state = Arc::new(Mutex::new(State {
            transcript: "What is the weather like today?".into(),
            reply: "It is sunny today.".into(),
            ..State::default()
        }));
        let (ws_events, ws_state) = (events.clone(), Arc::clone(&state));
        let ws = WsMock::start(
            |head: &RequestHead| {
                if head.path().trim_end_matches('/') != "/api-ws/v1/inference" {
                    return Err((404, "not found".into()));
                }
                if !authorized(head) {
                    return Err((401, invalid_key_body()));
                }
                Ok(())
            },
            move |_head, ws| session(ws, ws_events.clone(), Arc::clone(&ws_state)),
        )
        .await?;
        let (http_events, http_state) = (events.clone(), Arc::clone(&state));
        let http = HttpMock::start(move |request| http(request, http_events.clone(), Arc::clone(&http_state))).await?;
        Ok(Self { ws, http, events, state })
    }

    /// The WebSocket URL (`ws_url` of the speech entries).
    pub fn ws_url(&self) -> String {
        self.ws.url("/api-ws/v1/inference")
    }

    /// The OpenAI-compatible root (`base_url` of `qwen3_asr_flash`).
    pub fn compatible_base(&self) -> String {
        self.http.url("/compatible-mode/v1")
    }

    /// The DashScope API root (`base_url` of `AliBL`).
    pub fn api_base(&self) -> String {
        self.http.url("/api/v1")
    }

    /// What recognitions answer for speech.
    pub fn set_transcript(&self, text: &str) {
        lock(&self.state).transcript = text.into();
    }

    /// What the application answers.
    pub fn set_reply(&self, text: &str) {
        lock(&self.state).reply = text.into();
    }

    /// The synthesis pace.
    pub fn set_timing(&self, timing: Timing) {
        lock(&self.state).timing = timing;
    }

    /// Synthesis answers `task-failed` with `code`/`message` for text containing `needle`.
    pub fn fail_tts_on(&self, needle: &str, code: &str, message: &str) {
        lock(&self.state).tts_fault = Some((needle.into(), Fault { code: code.into(), message: message.into() }));
    }

    /// The next task or request of `api` fails with `code`/`message`.
    pub fn fail_next(&self, api: Api, code: &str, message: &str) {
        lock(&self.state).next_fault.push((api, Fault { code: code.into(), message: message.into() }));
    }

    /// Every command (WebSocket) and request body (HTTP) received, in order.
    pub fn received(&self) -> Vec<Value> {
        lock(&self.state).received.clone()
    }
}

fn take_fault(state: &Mutex<State>, api: Api) -> Option<Fault> {
    let mut state = lock(state);
    let at = state.next_fault.iter().position(|(a, _)| *a == api)?;
    Some(state.next_fault.remove(at).1)
}

fn event(task_id: &str, name: &str, payload: Value) -> Message {
    Message::text(
        json!({"header": {"task_id": task_id, "event": name, "attributes": {}}, "payload": payload}).to_string(),
    )
}

fn task_failed(task_id: &str, fault: &Fault) -> Message {
    Message::text(
        json!({"header": {"task_id": task_id, "event": "task-failed", "error_code": fault.code,
            "error_message": fault.message, "attributes": {}}, "payload": {}})
        .to_string(),
    )
}

/// A running task of one connection.
enum Task {
    Tts { id: String, text: String, sample_rate: u32 },
    Asr { id: String, audio: Vec<i16>, since_partial: usize },
}

/// Checks a command's header; `Err` is the `InvalidParameter` message.
fn header(command: &Value) -> Result<(String, String), String> {
    let header = command.get("header").ok_or("header is missing")?;
    let action = header["action"].as_str().ok_or("header.action is missing")?;
    let task_id = header["task_id"].as_str().filter(|id| !id.is_empty()).ok_or("header.task_id is missing")?;
    if header["streaming"] != "duplex" {
        return Err("header.streaming must be duplex".into());
    }
    Ok((action.to_owned(), task_id.to_owned()))
}

/// Checks `run-task`; the task it starts.
fn run_task(task_id: &str, payload: &Value) -> Result<Task, String> {
    if payload["task_group"] != "audio" {
        return Err("payload.task_group must be audio".into());
    }
    if payload["model"].as_str().is_none_or(str::is_empty) {
        return Err("Model not found".into());
    }
    if !payload["input"].is_object() {
        return Err("payload.input is missing".into());
    }
    let parameters = &payload["parameters"];
    match (payload["task"].as_str(), payload["function"].as_str()) {
        (Some("tts"), Some("SpeechSynthesizer")) => {
            if parameters["voice"].as_str().is_none_or(str::is_empty) {
                return Err("parameters.voice is missing".into());
            }
            if parameters["format"] != "pcm" {
                return Err("this mock synthesizes pcm only".into());
            }
            let sample_rate = parameters["sample_rate"].as_u64().unwrap_or(22_050) as u32;
            if ![8_000, 16_000, 22_050, 24_000, 44_100, 48_000].contains(&sample_rate) {
                return Err(format!("unsupported sample_rate {sample_rate}"));
            }
            Ok(Task::Tts { id: task_id.to_owned(), text: String::new(), sample_rate })
        }
        (Some("asr"), Some("recognition")) => {
            if parameters["format"] != "pcm" || parameters["sample_rate"] != 16_000 {
                return Err("this mock recognizes pcm at 16000 Hz only".into());
            }
            Ok(Task::Asr { id: task_id.to_owned(), audio: Vec::new(), since_partial: 0 })
        }
        _ => Err("unsupported task/function".into()),
    }
}

/// One WebSocket connection: tasks one after the other.
async fn session(mut ws: WebSocketStream<TcpStream>, events: Events, state: Arc<Mutex<State>>) {
    events.push("connection");
    let mut task: Option<Task> = None;
    while let Some(Ok(message)) = ws.next().await {
        let reply = match message {
            Message::Text(text) => command(&text, &mut task, &events, &state, &mut ws).await,
            Message::Binary(audio) => match &mut task {
                Some(Task::Asr { id, audio: heard, since_partial }) => {
                    events.push("asr-audio");
                    heard.extend(pcm_samples(&audio));
                    *since_partial += audio.len() / 2;
                    // A partial result about every 0.5 s of audio.
                    if *since_partial >= 8_000 {
                        *since_partial = 0;
                        let partial = json!({"output": {"sentence": {"begin_time": 0, "end_time": null,
                            "text": "…", "sentence_end": false, "words": []}}});
                        Ok(vec![event(id, "result-generated", partial)])
                    } else {
                        Ok(Vec::new())
                    }
                }
                _ => Err(invalid("", "audio without a recognition task")),
            },
            Message::Close(_) => return,
            _ => Ok(Vec::new()),
        };
        match reply {
            Ok(messages) => {
                for message in messages {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
            }
            Err((task_id, fault)) => {
                // The documented behaviour: `task-failed`, then the server closes the connection.
                events.push("task-failed");
                let _ = ws.send(task_failed(&task_id, &fault)).await;
                let _ = ws.close(None).await;
                return;
            }
        }
    }
}

type Reply = Result<Vec<Message>, (String, Fault)>;

fn invalid(task_id: &str, message: impl Into<String>) -> (String, Fault) {
    (task_id.to_owned(), Fault { code: "InvalidParameter".into(), message: message.into() })
}

/// One JSON command.
async fn command(
    text: &str,
    task: &mut Option<Task>,
    events: &Events,
    state: &Arc<Mutex<State>>,
    ws: &mut WebSocketStream<TcpStream>,
) -> Reply {
    let command: Value = serde_json::from_str(text).map_err(|_| invalid("", "the command is not JSON"))?;
    lock(state).received.push(command.clone());
    let (action, task_id) = header(&command).map_err(|m| invalid("", m))?;
    let payload = &command["payload"];
    match action.as_str() {
        "run-task" => {
            if task.is_some() {
                return Err(invalid(&task_id, "a task is already running on this connection"));
            }
            let started = run_task(&task_id, payload).map_err(|m| invalid(&task_id, m))?;
            if matches!(started, Task::Asr { .. })
                && let Some(fault) = take_fault(state, Api::Asr)
            {
                return Err((task_id, fault));
            }
            *task = Some(started);
            events.push("task-started");
            Ok(vec![event(&task_id, "task-started", json!({}))])
        }
        "continue-task" => match task {
            Some(Task::Tts { id, text, .. }) if *id == task_id => {
                let piece =
                    payload["input"]["text"].as_str().ok_or_else(|| invalid(&task_id, "input.text is missing"))?;
                events.push("tts-text");
                text.push_str(piece);
                let fault = lock(state).tts_fault.clone();
                if let Some((needle, fault)) = fault
                    && text.contains(&needle)
                {
                    return Err((task_id, fault));
                }
                Ok(Vec::new())
            }
            _ => Err(invalid(&task_id, "continue-task without its run-task")),
        },
        "finish-task" => match task.take() {
            Some(Task::Tts { id, text, sample_rate }) if id == task_id => {
                synthesize(ws, &id, &text, sample_rate, events, state).await?;
                Ok(vec![event(
                    &id,
                    "task-finished",
                    json!({"output": {}, "usage": {"characters": text.chars().count()}}),
                )])
            }
            Some(Task::Asr { id, audio, .. }) if id == task_id => {
                events.push("asr-finish");
                let transcript = lock(state).transcript.clone();
                let text = if is_speech(&audio, 16_000, 300) { transcript } else { String::new() };
                let end_ms = audio.len() as u64 / 16;
                let sentence = json!({"output": {"sentence": {"begin_time": 0, "end_time": end_ms, "text": text,
                    "sentence_end": true, "words": []}}, "usage": {"duration": end_ms.div_ceil(1000)}});
                Ok(vec![event(&id, "result-generated", sentence), event(&id, "task-finished", json!({"output": {}}))])
            }
            _ => Err(invalid(&task_id, "finish-task without its run-task")),
        },
        other => Err(invalid(&task_id, format!("unknown action {other}"))),
    }
}

/// The speech for `text`, frame by frame at the configured pace.
async fn synthesize(
    ws: &mut WebSocketStream<TcpStream>,
    task_id: &str,
    text: &str,
    sample_rate: u32,
    events: &Events,
    state: &Arc<Mutex<State>>,
) -> Result<(), (String, Fault)> {
    let samples = if text.trim().is_empty() {
        Vec::new()
    } else {
        speech(text, sample_rate).map_err(|e| invalid(task_id, format!("mock synthesis failed: {e}")))?
    };
    let timing = lock(state).timing;
    let start = Instant::now();
    let begin =
        json!({"output": {"sentence": {"index": 0, "words": []}, "type": "sentence-begin", "original_text": text}});
    let _ = ws.send(event(task_id, "result-generated", begin)).await;
    for (index, piece) in timing.pieces(&samples, sample_rate).enumerate() {
        timing.wait_for_piece(start, index).await;
        let marker = json!({"output": {"sentence": {"index": 0, "words": []}, "type": "sentence-synthesis"}});
        if ws.send(event(task_id, "result-generated", marker)).await.is_err()
            || ws.send(Message::binary(pcm_bytes(piece))).await.is_err()
        {
            return Ok(());
        }
        events.push("tts-audio");
    }
    events.push("tts-done");
    let end = json!({"output": {"sentence": {"index": 0, "words": []}, "type": "sentence-end", "original_text": text},
        "usage": {"characters": text.chars().count()}});
    let _ = ws.send(event(task_id, "result-generated", end)).await;
    Ok(())
}

/// The HTTP APIs.
async fn http(request: HttpRequest, events: Events, state: Arc<Mutex<State>>) -> hyper::Response<HttpBody> {
    let path = request.head.path().to_owned();
    if request.head.method != "POST" {
        return full_response(405, "text/plain", "method not allowed");
    }
    if path == "/compatible-mode/v1/chat/completions" {
        if !authorized(&request.head) {
            let body = json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                "code": "invalid_api_key"}});
            return full_response(401, "application/json", body.to_string());
        }
        return qwen_asr(&request, &events, &state);
    }
    if let Some(app) = path.strip_prefix("/api/v1/apps/").and_then(|rest| rest.strip_suffix("/completion")) {
        if !authorized(&request.head) {
            return full_response(401, "application/json", invalid_key_body());
        }
        return application(app, &request, &events, &state).await;
    }
    full_response(404, "application/json", json!({"code": "NotFound", "message": "not found"}).to_string())
}

fn openai_error(status: u16, code: &str, message: &str) -> hyper::Response<HttpBody> {
    let body = json!({"error": {"code": code, "message": message, "type": "invalid_request_error"}});
    full_response(status, "application/json", body.to_string())
}

/// Qwen3-ASR-Flash, OpenAI-compatible: the WAV data URL in, the transcript streamed out.
fn qwen_asr(request: &HttpRequest, events: &Events, state: &Arc<Mutex<State>>) -> hyper::Response<HttpBody> {
    events.push("qwen-request");
    let body = request.json();
    lock(state).received.push(body.clone());
    if let Some(fault) = take_fault(state, Api::Qwen) {
        return openai_error(400, &fault.code, &fault.message);
    }
    if body["model"].as_str().is_none_or(str::is_empty) {
        return openai_error(400, "invalid_parameter_error", "model is required");
    }
    let audio = body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_array()?.iter().find(|c| c["type"] == "input_audio").cloned());
    let Some(data) = audio.as_ref().and_then(|a| a["input_audio"]["data"].as_str()) else {
        return openai_error(400, "invalid_parameter_error", "an input_audio content is required");
    };
    let Some(pcm) = data
        .strip_prefix("data:audio/wav;base64,")
        .and_then(base64_decode)
        .and_then(|wav| read_wav(&wav).ok())
        .filter(|(_, rate)| *rate == 16_000)
        .map(|(samples, _)| samples)
    else {
        return openai_error(400, "invalid_parameter_error", "The audio is not a valid 16 kHz WAV data URL");
    };
    let text = if is_speech(&pcm, 16_000, 300) { lock(state).transcript.clone() } else { String::new() };
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": body["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut sse = String::new();
    let mut push = |value: Value| sse.push_str(&format!("data: {value}\n\n"));
    push(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
    let half = text.char_indices().nth(text.chars().count() / 2).map_or(text.len(), |(i, _)| i);
    push(chunk(json!({"content": &text[..half]}), Value::Null));
    push(chunk(json!({"content": &text[half..]}), json!("stop")));
    if body["stream"] == true {
        sse.push_str("data: [DONE]\n\n");
        full_response(200, "text/event-stream", sse)
    } else {
        let whole = json!({"id": "chatcmpl-mock", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
        full_response(200, "application/json", whole.to_string())
    }
}

/// A Bailian application: the reply streamed as `output.text` pieces (SSE).
async fn application(
    app: &str,
    request: &HttpRequest,
    events: &Events,
    state: &Arc<Mutex<State>>,
) -> hyper::Response<HttpBody> {
    events.push("app-request");
    let body = request.json();
    lock(state).received.push(json!({"app_id": app, "sse": request.head.header("x-dashscope-sse"), "body": body}));
    let dashscope_error = |status: u16, code: &str, message: &str| {
        let error = json!({"code": code, "message": message, "request_id": "mock-request"});
        full_response(status, "application/json", error.to_string())
    };
    if request.head.header("x-dashscope-sse") != Some("enable") {
        return dashscope_error(400, "InvalidParameter", "this mock streams only (X-DashScope-SSE: enable)");
    }
    let has_input = body["input"]["messages"].as_array().is_some_and(|m| !m.is_empty())
        || body["input"]["prompt"].as_str().is_some_and(|p| !p.is_empty());
    if !has_input {
        return dashscope_error(400, "InvalidParameter", "input.prompt or input.messages is required");
    }
    if let Some(fault) = take_fault(state, Api::App) {
        let sse = format!(
            "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{}\n\n",
            json!({"code": fault.code, "message": fault.message, "request_id": "mock-request"})
        );
        return full_response(400, "text/event-stream;charset=UTF-8", sse);
    }
    let reply = lock(state).reply.clone();
    let incremental = body["parameters"]["incremental_output"] == true;
    let (tx, response) = streamed_response(200, "text/event-stream;charset=UTF-8");
    tokio::spawn(async move {
        let chars: Vec<char> = reply.chars().collect();
        let mut sent = String::new();
        for (n, piece) in chars.chunks(4).enumerate() {
            let piece: String = piece.iter().collect();
            sent.push_str(&piece);
            let text = if incremental { piece } else { sent.clone() };
            let data = json!({"output": {"session_id": "mock-session", "finish_reason": "null", "text": text},
                "usage": {}, "request_id": "mock-request"});
            let event = format!("id:{}\nevent:result\n:HTTP_STATUS/200\ndata:{data}\n\n", n + 1);
            if tx.send(Ok(event.into())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = json!({"output": {"session_id": "mock-session", "finish_reason": "stop",
            "text": if incremental { String::new() } else { sent }}, "usage": {}, "request_id": "mock-request"});
        let _ = tx
            .send(Ok(format!("id:{}\nevent:result\n:HTTP_STATUS/200\ndata:{last}\n\n", chars.len() / 4 + 2).into()))
            .await;
    });
    response
}

/// Standard base64 (with padding) decoded; `None` when it is not base64.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()
}
