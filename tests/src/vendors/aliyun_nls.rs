//! Alibaba Cloud Intelligent Speech Interaction (NLS): the WebSocket gateway
//! (`wss://nls-gateway-<region>.aliyuncs.com/ws/v1`) and the `CreateToken` API of
//! `nls-meta.cn-shanghai.aliyuncs.com`, on loopback.
//!
//! Written from Alibaba Cloud's documentation:
//! - "WebSocket协议说明" of CosyVoice streaming synthesis
//!   (help.aliyun.com/zh/isi/user-guide/websocket-protocol-description-for-cosyvoice-tts):
//!   `FlowingSpeechSynthesizer` commands StartSynthesis / RunSynthesis / StopSynthesis with
//!   `header{appkey, message_id, task_id (32 chars), namespace, name}`; events SynthesisStarted,
//!   SentenceBegin, SentenceSynthesis, SentenceEnd, SynthesisCompleted, audio in binary frames.
//! - "WebSocket protocol" of real-time speech recognition
//!   (help.aliyun.com/en/isi/user-guide/websocket): `SpeechTranscriber` StartTranscription /
//!   StopTranscription, 16-bit mono PCM in binary frames at 8 or 16 kHz; events
//!   TranscriptionStarted, SentenceBegin, TranscriptionResultChanged, SentenceEnd (`payload.result`),
//!   TranscriptionCompleted; `TaskFailed` with `header.status` / `header.status_text` on errors.
//! - "Obtain an access token" (CreateToken, version 2019-02-28) and the POP RPC "Request
//!   signatures" method: the signature is recomputed here (RFC 3986 encoding, sorted query,
//!   `GET&%2F&<encoded query>`, HMAC-SHA1 keyed with `secret&`, Base64) and a mismatch is refused
//!   as the API does (`SignatureDoesNotMatch`).
//!
//! Authentication: the gateway refuses the handshake (HTTP 403) unless the token, in the
//! `X-NLS-Token` header or the `token` query parameter, is the configured one or one that
//! `CreateToken` issued.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Events, HttpMock, RequestHead, Timing, WsMock, full_response, is_speech, pcm_bytes, pcm_samples, speech};

/// The token the tests configure directly.
pub const TOKEN: &str = "nls-test-token-0123456789";
/// The Appkey of the mock's project.
pub const APPKEY: &str = "mockAppKey42";
/// The AccessKey pair `CreateToken` accepts.
pub const ACCESS_KEY_ID: &str = "LTAImockKeyId";
/// Its secret.
pub const ACCESS_KEY_SECRET: &str = "mockSecret/With+Symbols=";

/// A `TaskFailed` the mock answers the next task with: `header.status` and `header.status_text`.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The status code (e.g. 40000003).
    pub status: u64,
    /// The status text.
    pub text: String,
}

#[derive(Default)]
struct State {
    tokens: HashSet<String>,
    nonces: HashSet<String>,
    fault: Option<Fault>,
    create_token_calls: usize,
    refused: usize,
    tts_texts: Vec<String>,
    asr_audio_ms: Vec<u64>,
}

struct Shared {
    state: Mutex<State>,
    events: Events,
    timing: Mutex<Timing>,
    transcript: Mutex<String>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The NLS gateway and the token API.
pub struct NlsMock {
    gateway: WsMock,
    meta: HttpMock,
    shared: Arc<Shared>,
}

impl NlsMock {
    /// Starts both servers. `timing` paces the synthesized audio; `transcript` is what the
    /// recognizer hears in any speech.
    pub async fn start(timing: Timing, transcript: &str) -> anyhow::Result<Self> {
        let mut state = State::default();
        state.tokens.insert(TOKEN.to_owned());
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            events: Events::default(),
            timing: Mutex::new(timing),
            transcript: Mutex::new(transcript.to_owned()),
        });
        let check_shared = Arc::clone(&shared);
        let session_shared = Arc::clone(&shared);
        let gateway = WsMock::start(
            move |head: &RequestHead| check_token(&check_shared, head),
            move |_head, ws| session(Arc::clone(&session_shared), ws),
        )
        .await?;
        let meta_shared = Arc::clone(&shared);
        let meta = HttpMock::start(move |request| {
            let shared = Arc::clone(&meta_shared);
            async move {
                let (status, body) = create_token(&shared, &request.head);
                full_response(status, "application/json;charset=utf-8", body.to_string())
            }
        })
        .await?;
        Ok(Self { gateway, meta, shared })
    }

    /// The gateway URL to configure as `host`.
    pub fn gateway_url(&self) -> String {
        self.gateway.url("/ws/v1")
    }

    /// The CreateToken endpoint to configure as `token_url`.
    pub fn token_url(&self) -> String {
        self.meta.url("/")
    }

    /// The timeline: `tts_started`, `tts_text`, `tts_audio`, `tts_sentence_end`,
    /// `tts_completed`, `tts_aborted` (the client left mid-task), `asr_started`, `asr_audio`,
    /// `asr_stop`, `asr_aborted`, `task_failed`.
    pub fn events(&self) -> &Events {
        &self.shared.events
    }

    /// The next task (synthesis or transcription) fails with `fault`.
    pub fn fail_next(&self, fault: Fault) {
        self.shared.lock().fault = Some(fault);
    }

    /// How many tokens `CreateToken` issued.
    pub fn create_token_calls(&self) -> usize {
        self.shared.lock().create_token_calls
    }

    /// How many handshakes or token requests were refused.
    pub fn refused(&self) -> usize {
        self.shared.lock().refused
    }

    /// The text of each synthesis task (its RunSynthesis pieces joined), in order.
    pub fn tts_texts(&self) -> Vec<String> {
        self.shared.lock().tts_texts.clone()
    }

    /// The audio (ms) each transcription received, in order.
    pub fn asr_audio_ms(&self) -> Vec<u64> {
        self.shared.lock().asr_audio_ms.clone()
    }
}

fn check_token(shared: &Shared, head: &RequestHead) -> Result<(), super::Refusal> {
    let token = head.header("x-nls-token").map(str::to_owned).or_else(|| head.query().get("token").cloned());
    let mut state = shared.lock();
    match token {
        Some(token) if state.tokens.contains(&token) => Ok(()),
        Some(token) => {
            state.refused += 1;
            Err((403, format!("Meta:ACCESS_DENIED:The token '{token}' is invalid!")))
        }
        None => {
            state.refused += 1;
            Err((403, "Gateway:ACCESS_DENIED:Missing authorization header!".into()))
        }
    }
}

// ---------------------------------------------------------------- CreateToken (POP RPC)

/// RFC 3986 percent-encoding (unreserved: `A-Z a-z 0-9 - _ . ~`), upper-case hex.
fn rfc3986(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The documented signature of a GET `/` with these parameters (Signature excluded).
fn pop_signature(params: &BTreeMap<String, String>, secret: &str) -> String {
    let canonical = params
        .iter()
        .filter(|(k, _)| k.as_str() != "Signature")
        .map(|(k, v)| format!("{}={}", rfc3986(k), rfc3986(v)))
        .collect::<Vec<_>>()
        .join("&");
    let string_to_sign = format!("GET&{}&{}", rfc3986("/"), rfc3986(&canonical));
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes()).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn pop_error(shared: &Shared, status: u16, code: &str, message: &str) -> (u16, Value) {
    shared.lock().refused += 1;
    (status, json!({"RequestId": "5A1B2C3D-MOCK", "Code": code, "Message": message}))
}

fn create_token(shared: &Shared, head: &RequestHead) -> (u16, Value) {
    let params = head.query();
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    for required in [
        "AccessKeyId",
        "Action",
        "Format",
        "RegionId",
        "SignatureMethod",
        "SignatureNonce",
        "SignatureVersion",
        "Timestamp",
        "Version",
        "Signature",
    ] {
        if get(required).is_empty() {
            return pop_error(
                shared,
                400,
                "MissingParameter",
                &format!(
                    "The input parameter \"{required}\" that is mandatory for processing this request is not supplied."
                ),
            );
        }
    }
    if head.method != "GET" || get("Action") != "CreateToken" || get("Version") != "2019-02-28" {
        return pop_error(
            shared,
            400,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        );
    }
    if get("SignatureMethod") != "HMAC-SHA1" || get("SignatureVersion") != "1.0" {
        return pop_error(shared, 400, "InvalidParameter", "SignatureMethod/SignatureVersion is not supported.");
    }
    if get("AccessKeyId") != ACCESS_KEY_ID {
        return pop_error(shared, 404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.");
    }
    let stamp = get("Timestamp");
    let fresh = chrono_like_parse(stamp).is_some_and(|t| (t - unix_now()).abs() <= 15 * 60);
    if !fresh {
        return pop_error(shared, 400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.");
    }
    if pop_signature(&params, ACCESS_KEY_SECRET) != get("Signature") {
        return pop_error(
            shared,
            400,
            "SignatureDoesNotMatch",
            "Specified signature is not matched with our calculation.",
        );
    }
    let mut state = shared.lock();
    if !state.nonces.insert(get("SignatureNonce").to_owned()) {
        drop(state);
        return pop_error(shared, 400, "SignatureNonceUsed", "Specified signature nonce was used already.");
    }
    state.create_token_calls += 1;
    let token = format!("issued{:026x}", state.create_token_calls as u128 * 0x9e37_79b9_7f4a_7c15);
    state.tokens.insert(token.clone());
    (
        200,
        json!({
            "ErrMsg": "",
            "Token": {"UserId": "1234567890", "Id": token, "ExpireTime": unix_now() + 86_400},
            "NlsRequestId": "mock-nls-request",
            "RequestId": "5A1B2C3D-MOCK",
        }),
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `YYYY-MM-DDTHH:MM:SSZ` as Unix seconds.
fn chrono_like_parse(stamp: &str) -> Option<i64> {
    let b = stamp.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<i64>().ok();
    let (y, m, d, hh, mm, ss) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

// ---------------------------------------------------------------- the gateway

type Ws = WebSocketStream<TcpStream>;

/// An event frame.
fn event(namespace: &str, name: &str, task_id: &str, payload: Value) -> Message {
    Message::text(
        json!({
            "header": {
                "namespace": namespace,
                "name": name,
                "status": 20_000_000,
                "message_id": format!("{:032x}", rand_id()),
                "task_id": task_id,
                "status_text": "Gateway:SUCCESS:Success.",
            },
            "payload": payload,
        })
        .to_string(),
    )
}

fn task_failed(task_id: &str, status: u64, text: &str) -> Message {
    Message::text(
        json!({
            "header": {
                "namespace": "Default",
                "name": "TaskFailed",
                "status": status,
                "message_id": format!("{:032x}", rand_id()),
                "task_id": task_id,
                "status_text": text,
            }
        })
        .to_string(),
    )
}

fn rand_id() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    u128::from(NEXT.fetch_add(1, Ordering::Relaxed)) * 0x0123_4567_89ab_cdef
}

/// Checks a command's header as the gateway does: `None` when it is well-formed.
fn bad_header(header: &Value, namespace: &str) -> Option<(u64, String)> {
    let s = |k: &str| header[k].as_str().unwrap_or_default();
    if s("appkey") != APPKEY {
        return Some((40_020_105, format!("Meta:APPKEY_NOT_EXIST:Appkey '{}' not exist!", s("appkey"))));
    }
    if s("namespace") != namespace {
        return Some((40_000_002, format!("Gateway:NAMESPACE_INVALID:Unknown namespace '{}'", s("namespace"))));
    }
    if s("message_id").len() != 32 || s("task_id").len() != 32 {
        return Some((40_000_002, "Gateway:MESSAGE_INVALID:message_id and task_id must be 32 characters".into()));
    }
    None
}

async fn session(shared: Arc<Shared>, mut ws: Ws) {
    // The first command decides the service.
    let Some(Ok(Message::Text(first))) = ws.next().await else { return };
    let command: Value = serde_json::from_str(first.as_str()).unwrap_or_default();
    match command["header"]["namespace"].as_str() {
        Some("FlowingSpeechSynthesizer") => synthesis(shared, ws, command).await,
        Some("SpeechTranscriber") => transcription(shared, ws, command).await,
        _ => {
            let _ = ws.send(task_failed("", 40_000_002, "Gateway:NAMESPACE_INVALID:unknown namespace")).await;
        }
    }
}

/// Takes the armed fault, if any, and answers it.
async fn answer_fault(shared: &Shared, ws: &mut futures_util::stream::SplitSink<Ws, Message>, task_id: &str) -> bool {
    let fault = shared.lock().fault.take();
    match fault {
        Some(fault) => {
            shared.events.push("task_failed");
            let _ = ws.send(task_failed(task_id, fault.status, &fault.text)).await;
            true
        }
        None => false,
    }
}

/// What the synthesis writer does next.
enum Job {
    Sentence(String),
    Complete,
}

async fn synthesis(shared: Arc<Shared>, ws: Ws, start: Value) {
    const NS: &str = "FlowingSpeechSynthesizer";
    let (mut sink, mut stream) = ws.split();
    let task_id = start["header"]["task_id"].as_str().unwrap_or_default().to_owned();
    if start["header"]["name"] != "StartSynthesis" {
        let _ = sink.send(task_failed(&task_id, 40_000_002, "Gateway:MESSAGE_INVALID:StartSynthesis expected")).await;
        return;
    }
    if let Some((status, text)) = bad_header(&start["header"], NS) {
        let _ = sink.send(task_failed(&task_id, status, &text)).await;
        return;
    }
    let payload = &start["payload"];
    let rate = payload["sample_rate"].as_u64().unwrap_or(16_000) as u32;
    let format = payload["format"].as_str().unwrap_or("pcm");
    if format != "pcm" || ![8_000, 16_000, 22_050, 24_000, 44_100, 48_000].contains(&rate) {
        let _ =
            sink.send(task_failed(&task_id, 40_000_003, "PARAMETER_INVALID:unsupported format or sample_rate")).await;
        return;
    }
    if payload["voice"].as_str().unwrap_or_default().is_empty() {
        let _ = sink.send(task_failed(&task_id, 40_000_003, "PARAMETER_INVALID:voice is empty")).await;
        return;
    }
    if answer_fault(&shared, &mut sink, &task_id).await {
        return;
    }
    shared.events.push("tts_started");
    if sink.send(event(NS, "SynthesisStarted", &task_id, json!({"session_id": task_id, "index": 1}))).await.is_err() {
        return;
    }
    let (jobs, mut next_job) = mpsc::unbounded_channel::<Job>();
    // The writer: synthesizes sentence after sentence, paced, while commands keep coming.
    let writer_shared = Arc::clone(&shared);
    let writer_task = task_id.clone();
    let writer = tokio::spawn(async move {
        let timing = *writer_shared.timing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut index = 0;
        while let Some(job) = next_job.recv().await {
            match job {
                Job::Sentence(text) => {
                    index += 1;
                    let requested = Instant::now();
                    let begin = json!({"index": index, "subtitles": [], "text": text});
                    if sink.send(event(NS, "SentenceBegin", &writer_task, begin)).await.is_err() {
                        return;
                    }
                    let text_copy = text.clone();
                    let pcm = match tokio::task::spawn_blocking(move || speech(&text_copy, rate)).await {
                        Ok(Ok(pcm)) => pcm,
                        _ => {
                            let _ =
                                sink.send(task_failed(&writer_task, 50_000_000, "SERVER_ERROR:synthesis failed")).await;
                            return;
                        }
                    };
                    for (i, piece) in timing.pieces(&pcm, rate).enumerate() {
                        timing.wait_for_piece(requested, i).await;
                        let subtitle = json!({"index": index, "subtitles": [{"text": text, "sentence": false}]});
                        if sink.send(event(NS, "SentenceSynthesis", &writer_task, subtitle)).await.is_err()
                            || sink.send(Message::binary(pcm_bytes(piece))).await.is_err()
                        {
                            return;
                        }
                        writer_shared.events.push("tts_audio");
                    }
                    writer_shared.events.push("tts_sentence_end");
                    let end = json!({"index": index, "subtitles": [{"text": text, "sentence": true}]});
                    if sink.send(event(NS, "SentenceEnd", &writer_task, end)).await.is_err() {
                        return;
                    }
                }
                Job::Complete => {
                    writer_shared.events.push("tts_completed");
                    let _ = sink.send(event(NS, "SynthesisCompleted", &writer_task, json!({}))).await;
                    let _ = sink.close().await;
                    return;
                }
            }
        }
    });
    // The reader: RunSynthesis pieces are cut into sentences at their punctuation, like the
    // service's own sentence splitting; StopSynthesis flushes the rest.
    let mut buffered = String::new();
    let mut whole = String::new();
    let mut stopped = false;
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else { continue };
        let command: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        if bad_header(&command["header"], NS).is_some() || command["header"]["task_id"] != task_id.as_str() {
            break;
        }
        match command["header"]["name"].as_str() {
            Some("RunSynthesis") => {
                let piece = command["payload"]["text"].as_str().unwrap_or_default();
                shared.events.push("tts_text");
                whole.push_str(piece);
                buffered.push_str(piece);
                while let Some(end) = buffered.find(['.', '!', '?', '。', '！', '？']) {
                    let cut = end + buffered[end..].chars().next().map_or(1, char::len_utf8);
                    let sentence: String = buffered.drain(..cut).collect();
                    if !sentence.trim().is_empty() {
                        let _ = jobs.send(Job::Sentence(sentence.trim().to_owned()));
                    }
                }
            }
            Some("StopSynthesis") => {
                if !buffered.trim().is_empty() {
                    let _ = jobs.send(Job::Sentence(buffered.trim().to_owned()));
                }
                let _ = jobs.send(Job::Complete);
                stopped = true;
                break;
            }
            _ => break,
        }
    }
    shared.lock().tts_texts.push(whole);
    drop(jobs);
    if !stopped {
        // The client went away mid-task: the gateway drops the task.
        shared.events.push("tts_aborted");
        writer.abort();
    }
    let _ = writer.await;
}

async fn transcription(shared: Arc<Shared>, ws: Ws, start: Value) {
    const NS: &str = "SpeechTranscriber";
    let (mut sink, mut stream) = ws.split();
    let task_id = start["header"]["task_id"].as_str().unwrap_or_default().to_owned();
    if start["header"]["name"] != "StartTranscription" {
        let _ =
            sink.send(task_failed(&task_id, 40_000_002, "Gateway:MESSAGE_INVALID:StartTranscription expected")).await;
        return;
    }
    if let Some((status, text)) = bad_header(&start["header"], NS) {
        let _ = sink.send(task_failed(&task_id, status, &text)).await;
        return;
    }
    let rate = start["payload"]["sample_rate"].as_u64().unwrap_or(16_000) as u32;
    if start["payload"]["format"] != "pcm" || ![8_000, 16_000].contains(&rate) {
        let _ = sink
            .send(task_failed(&task_id, 41_010_101, "UNSUPPORTED_SAMPLE_RATE:format or sample rate not supported"))
            .await;
        return;
    }
    shared.events.push("asr_started");
    if sink.send(event(NS, "TranscriptionStarted", &task_id, json!({"session_id": task_id}))).await.is_err() {
        return;
    }
    let transcript = shared.transcript.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let mut audio: Vec<i16> = Vec::new();
    let mut fault_checked = false;
    let mut sentence_begun = false;
    let mut last_partial_ms = 0;
    let ms = |samples: usize| (samples as u64 * 1000) / u64::from(rate);
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(bytes) => {
                shared.events.push("asr_audio");
                audio.extend(pcm_samples(&bytes));
                // A fault is answered mid-stream, once audio flows.
                if !fault_checked {
                    fault_checked = true;
                    if answer_fault(&shared, &mut sink, &task_id).await {
                        shared.lock().asr_audio_ms.push(ms(audio.len()));
                        return;
                    }
                }
                if !sentence_begun && is_speech(&audio, rate, 300) {
                    sentence_begun = true;
                    let begin = json!({"index": 1, "time": ms(audio.len())});
                    if sink.send(event(NS, "SentenceBegin", &task_id, begin)).await.is_err() {
                        return;
                    }
                }
                // Intermediate results while the user speaks: a growing prefix of the transcript.
                if sentence_begun && ms(audio.len()) >= last_partial_ms + 500 {
                    last_partial_ms = ms(audio.len());
                    let words: Vec<&str> = transcript.split_whitespace().collect();
                    let shown = words[..words.len().min((last_partial_ms / 500) as usize)].join(" ");
                    let changed = json!({"index": 1, "time": last_partial_ms, "result": shown, "words": []});
                    if sink.send(event(NS, "TranscriptionResultChanged", &task_id, changed)).await.is_err() {
                        return;
                    }
                }
            }
            Message::Text(text) => {
                let command: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                if command["header"]["name"] != "StopTranscription" {
                    let _ = sink
                        .send(task_failed(&task_id, 40_000_002, "Gateway:MESSAGE_INVALID:unexpected command"))
                        .await;
                    return;
                }
                if let Some((status, text)) = bad_header(&command["header"], NS) {
                    let _ = sink.send(task_failed(&task_id, status, &text)).await;
                    return;
                }
                shared.events.push("asr_stop");
                shared.lock().asr_audio_ms.push(ms(audio.len()));
                if is_speech(&audio, rate, 300) {
                    let end = json!({
                        "index": 1, "time": ms(audio.len()), "begin_time": 0,
                        "result": transcript, "confidence": 0.93, "words": [],
                    });
                    if sink.send(event(NS, "SentenceEnd", &task_id, end)).await.is_err() {
                        return;
                    }
                }
                let _ = sink.send(event(NS, "TranscriptionCompleted", &task_id, json!({}))).await;
                let _ = sink.close().await;
                return;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    // The client went away before StopTranscription.
    shared.events.push("asr_aborted");
}

/// Waits (at most `limit`) until `name` happened `count` times.
pub async fn wait_for(events: &Events, name: &str, count: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while events.count(name) < count {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mock's own encoding and time parsing, against the documented examples.
    #[test]
    fn encoding_and_timestamps() {
        assert_eq!(rfc3986("a b*~/"), "a%20b%2A~%2F");
        assert_eq!(chrono_like_parse("2018-05-29T11:19:17Z"), Some(1_527_592_757));
        assert_eq!(chrono_like_parse("2018-05-29 11:19:17"), None);
    }
}
