//! The Volcengine (ByteDance Doubao speech, `openspeech.bytedance.com`) mocks, written from the
//! vendor's published documentation (豆包语音 docs, volcengine.com/docs/6561):
//!
//! - [`DoubaoHttpMock`]: 在线语音合成 HTTP 接口 (`POST /api/v1/tts`, docs 6561/79820 and the
//!   authentication of 6561/79821: `Authorization: Bearer;{token}` plus `app.appid`/`app.token`
//!   in the JSON). Answers `{"code": 3000, "message": "Success", "data": base64 audio}`; a
//!   refused token is HTTP 401 with code 3001; a failed synthesis is a non-3000 code.
//! - [`BidiTtsMock`]: 双向流式 WebSocket API v3 (`/api/v3/tts/bidirection`, docs 6561/1329505).
//!   Handshake headers `X-Api-App-Key`, `X-Api-Access-Key`, `X-Api-Resource-Id`,
//!   `X-Api-Connect-Id` (refused with 401/403 otherwise); binary frames with a 4-byte header,
//!   event number, session id and payload; StartConnection → ConnectionStarted, StartSession →
//!   SessionStarted, TaskRequest text collected into sentences, each sentence answered with
//!   TTSSentenceStart, TTSResponse audio frames paced by [`Timing`], TTSSentenceEnd;
//!   FinishSession → SessionFinished; FinishConnection → ConnectionFinished. Error frames
//!   (message type `0b1111`, error code, JSON message) on demand.
//! - [`SaucMock`]: 大模型流式语音识别 API (`/api/v3/sauc/bigmodel`, docs 6561/1354869). The same
//!   handshake headers; a gzip JSON full client request, then gzip audio-only requests with
//!   increasing sequence numbers and a last packet (flags `0b0011`, negative sequence); each is
//!   answered with a full server response (`result.text`), the last one with the transcript when
//!   the audio was speech. Error frames (code + message) on demand.
//!
//! Every frame a client sends is checked against the documented layout byte by byte; a wrong
//! one is answered with an error frame (45000000) and the connection closes.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Events, HttpMock, HttpRequest, Refusal, RequestHead, Timing, WsMock, full_response, is_speech, speech};

/// The account the mocks accept.
#[derive(Debug, Clone)]
pub struct Account {
    /// `appid` / `X-Api-App-Key`.
    pub appid: String,
    /// `access_token` / `X-Api-Access-Key`.
    pub token: String,
    /// `X-Api-Resource-Id` (the WebSocket APIs).
    pub resource_id: String,
}

impl Account {
    /// An account for `resource_id`.
    pub fn new(appid: &str, token: &str, resource_id: &str) -> Self {
        Self { appid: appid.into(), token: token.into(), resource_id: resource_id.into() }
    }

    /// The handshake check of the WebSocket APIs.
    fn check(&self, head: &RequestHead, path: &str) -> Result<(), Refusal> {
        if head.path() != path {
            return Err((404, format!("{{\"error\":\"no such path {}\"}}", head.path())));
        }
        if head.header("x-api-app-key") != Some(self.appid.as_str())
            || head.header("x-api-access-key") != Some(self.token.as_str())
        {
            return Err((401, "{\"error\":\"load grant: requested grant not found\"}".into()));
        }
        if head.header("x-api-resource-id") != Some(self.resource_id.as_str()) {
            return Err((403, "{\"error\":\"requested resource not granted\"}".into()));
        }
        if head.header("x-api-connect-id").is_none_or(|id| id.trim().is_empty()) {
            return Err((400, "{\"error\":\"missing X-Api-Connect-Id\"}".into()));
        }
        Ok(())
    }
}

/// Standard base64 (the `data` of the HTTP API).
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

fn gunzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).take(16 << 20).read_to_end(&mut out).ok()?;
    Some(out)
}

fn be_u32(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A sentence needle and what answers it.
type Fault = Arc<Mutex<Option<String>>>;

fn needle(fault: &Fault) -> Option<String> {
    fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

// ---------------------------------------------------------------------------------------------
// HTTP synthesis (api/v1/tts)

/// The `doubao` HTTP synthesis endpoint.
pub struct DoubaoHttpMock {
    http: HttpMock,
    /// `request` for each accepted request, `refused` for each refused one.
    pub events: Events,
    fault: Fault,
}

impl DoubaoHttpMock {
    /// Starts the endpoint for `account`.
    pub async fn start(account: Account) -> anyhow::Result<Self> {
        let events = Events::default();
        let fault: Fault = Arc::default();
        let (log, failing) = (events.clone(), Arc::clone(&fault));
        let http = HttpMock::start(move |request: HttpRequest| {
            let (account, log, failing) = (account.clone(), log.clone(), Arc::clone(&failing));
            async move { Self::answer(&account, &log, &failing, &request) }
        })
        .await?;
        Ok(Self { http, events, fault })
    }

    /// `http://…/api/v1/tts`.
    pub fn url(&self) -> String {
        self.http.url("/api/v1/tts")
    }

    /// Sentences containing `text` are answered with a failure code (3031).
    pub fn fail_sentences_with(&self, text: Option<&str>) {
        *self.fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = text.map(str::to_owned);
    }

    fn answer(
        account: &Account,
        events: &Events,
        fault: &Fault,
        request: &HttpRequest,
    ) -> hyper::Response<super::HttpBody> {
        let error = |status: u16, code: u32, message: &str| {
            full_response(status, "application/json", json!({"code": code, "message": message}).to_string())
        };
        if request.head.method != "POST" || request.head.path() != "/api/v1/tts" {
            return error(404, 3001, "no such API");
        }
        let body = request.json();
        let expected = format!("Bearer;{}", account.token);
        if request.head.header("authorization") != Some(expected.as_str())
            || body["app"]["token"] != json!(account.token)
            || body["app"]["appid"] != json!(account.appid)
        {
            events.push("refused");
            return error(401, 3001, "authenticate request: invalid token");
        }
        let text = body["request"]["text"].as_str().unwrap_or_default().to_owned();
        let well_formed = !text.trim().is_empty()
            && body["request"]["operation"] == "query"
            && body["request"]["reqid"].as_str().is_some_and(|id| !id.is_empty())
            && body["app"]["cluster"].as_str().is_some_and(|c| !c.is_empty())
            && body["audio"]["voice_type"].as_str().is_some_and(|v| !v.is_empty())
            && body["user"]["uid"].is_string();
        if !well_formed {
            return error(400, 3001, "invalid request");
        }
        events.push("request");
        let reqid = body["request"]["reqid"].clone();
        if needle(fault).is_some_and(|needle| text.contains(&needle)) {
            return full_response(
                200,
                "application/json",
                json!({"reqid": reqid, "code": 3031, "message": "processing error: synthesis failed"}).to_string(),
            );
        }
        let rate = body["audio"]["rate"].as_u64().map_or(24_000, |r| r as u32);
        let Ok(samples) = speech(&text, rate) else {
            return error(500, 3031, "espeak-ng failed");
        };
        let audio = match body["audio"]["encoding"].as_str().unwrap_or("pcm") {
            "wav" => xiaozhi_server::audio::decode::wav_bytes(&samples, rate),
            "pcm" => super::pcm_bytes(&samples),
            _ => return error(400, 3001, "unsupported encoding in this mock"),
        };
        let duration = samples.len() as u64 * 1000 / u64::from(rate);
        full_response(
            200,
            "application/json",
            json!({
                "reqid": reqid, "code": 3000, "operation": "query", "message": "Success", "sequence": -1,
                "data": base64(&audio), "addition": {"duration": duration.to_string()},
            })
            .to_string(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Bidirectional synthesis (api/v3/tts/bidirection)

/// Events of the bidirectional API.
mod event {
    pub const START_CONNECTION: i32 = 1;
    pub const FINISH_CONNECTION: i32 = 2;
    pub const CONNECTION_STARTED: i32 = 50;
    pub const CONNECTION_FINISHED: i32 = 52;
    pub const START_SESSION: i32 = 100;
    pub const FINISH_SESSION: i32 = 102;
    pub const SESSION_STARTED: i32 = 150;
    pub const SESSION_FINISHED: i32 = 152;
    pub const SESSION_FAILED: i32 = 153;
    pub const TASK_REQUEST: i32 = 200;
    pub const TTS_SENTENCE_START: i32 = 350;
    pub const TTS_SENTENCE_END: i32 = 351;
    pub const TTS_RESPONSE: i32 = 352;
}

/// How the bidirectional mock fails a sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsFailure {
    /// An error frame (message type `0b1111`, code 45000292).
    ErrorFrame,
    /// SessionFailed (153) with `status_code` 55000000.
    SessionFailed,
}

/// A server frame with an event: `kind` 0b1001 (JSON) or 0b1011 (audio), the id block (session
/// or connection id) when given, then the payload.
fn event_frame(kind: u8, event: i32, id: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let serialization = if kind == 0b1001 { 0x10 } else { 0x00 };
    let mut frame = vec![0x11, (kind << 4) | 0b0100, serialization, 0x00];
    frame.extend_from_slice(&event.to_be_bytes());
    if let Some(id) = id {
        frame.extend_from_slice(&(id.len() as u32).to_be_bytes());
        frame.extend_from_slice(id.as_bytes());
    }
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An error frame: message type 0b1111, the code, then a JSON message.
fn error_frame(code: u32, message: &str) -> Vec<u8> {
    let payload = json!({"error": message}).to_string();
    let mut frame = vec![0x11, 0xF0, 0x10, 0x00];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload.as_bytes());
    frame
}

/// A client frame of the bidirectional API, checked against the documented layout.
#[derive(Debug)]
struct ClientEvent {
    event: i32,
    session: Option<String>,
    payload: Vec<u8>,
}

fn parse_client_event(data: &[u8]) -> Result<ClientEvent, String> {
    // 0x11: version 1, 4-byte header; 0x14: full client request with an event; 0x10: JSON, no
    // compression (0x00 also accepted for the connection events); 0x00 reserved.
    if data.len() < 12 || data[0] != 0x11 || data[1] != 0x14 || !matches!(data[2], 0x10 | 0x00) || data[3] != 0 {
        return Err(format!("bad header {:02x?}", &data[..data.len().min(4)]));
    }
    let event = be_u32(data, 4).ok_or("cut short")? as i32;
    let mut at = 8;
    let session = if event >= 100 {
        let len = be_u32(data, at).ok_or("cut short")? as usize;
        let id = data.get(at + 4..at + 4 + len).ok_or("session id cut short")?;
        at += 4 + len;
        Some(String::from_utf8(id.to_vec()).map_err(|_| "session id not UTF-8")?)
    } else {
        None
    };
    let len = be_u32(data, at).ok_or("no payload size")? as usize;
    let payload = data.get(at + 4..at + 4 + len).ok_or("payload cut short")?.to_vec();
    if at + 4 + len != data.len() {
        return Err("trailing bytes".into());
    }
    Ok(ClientEvent { event, session, payload })
}

/// The bidirectional synthesis endpoint.
pub struct BidiTtsMock {
    ws: WsMock,
    /// `connection`, `session_start`, `task_request` (one per text piece), `audio` (each frame),
    /// `sentence_done` (after a sentence's last audio), `session_finished`, `failed`, `closed`
    /// (the client closed the connection, or the mock ended it).
    pub events: Events,
    fault: Arc<Mutex<Option<(String, TtsFailure)>>>,
}

impl BidiTtsMock {
    /// Starts the endpoint for `account`, synthesizing at `timing`.
    pub async fn start(account: Account, timing: Timing) -> anyhow::Result<Self> {
        let events = Events::default();
        let fault: Arc<Mutex<Option<(String, TtsFailure)>>> = Arc::default();
        let (log, failing) = (events.clone(), Arc::clone(&fault));
        let ws = WsMock::start(
            move |head| account.check(head, "/api/v3/tts/bidirection"),
            move |_head, ws| {
                let (log, failing) = (log.clone(), Arc::clone(&failing));
                async move { Self::connection(ws, timing, log, failing).await }
            },
        )
        .await
        .context("start the bidirectional TTS mock")?;
        Ok(Self { ws, events, fault })
    }

    /// `ws://…/api/v3/tts/bidirection`.
    pub fn url(&self) -> String {
        self.ws.url("/api/v3/tts/bidirection")
    }

    /// Sentences containing `text` are answered with `failure`.
    pub fn fail_sentences_with(&self, fault: Option<(&str, TtsFailure)>) {
        *self.fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            fault.map(|(text, failure)| (text.to_owned(), failure));
    }

    async fn connection(
        ws: WebSocketStream<TcpStream>,
        timing: Timing,
        events: Events,
        fault: Arc<Mutex<Option<(String, TtsFailure)>>>,
    ) {
        let (mut sink, mut stream) = ws.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        // Sentences are synthesized in order by one task per connection.
        let (jobs, mut queue) = mpsc::unbounded_channel::<(String, Option<String>)>();
        let synth = {
            let (out, events, fault) = (out.clone(), events.clone(), Arc::clone(&fault));
            tokio::spawn(async move {
                let mut rate = 16_000;
                let mut failed_session: Option<String> = None;
                while let Some((session, job)) = queue.recv().await {
                    if failed_session.as_deref() == Some(session.as_str()) {
                        continue;
                    }
                    match job {
                        None => {
                            let payload = json!({"status_code": 20_000_000, "message": "ok"}).to_string();
                            let _ = out.send(event_frame(
                                0b1001,
                                event::SESSION_FINISHED,
                                Some(&session),
                                payload.as_bytes(),
                            ));
                            events.push("session_finished");
                        }
                        Some(text) if text.starts_with("\u{0}rate:") => {
                            rate = text[6..].parse().unwrap_or(16_000);
                        }
                        Some(text) => {
                            let failing = fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                            if let Some((_, failure)) = failing.filter(|(needle, _)| text.contains(needle.as_str())) {
                                events.push("failed");
                                failed_session = Some(session.clone());
                                let frame = match failure {
                                    TtsFailure::ErrorFrame => {
                                        error_frame(45_000_292, "quota exceeded for types: concurrency")
                                    }
                                    TtsFailure::SessionFailed => event_frame(
                                        0b1001,
                                        event::SESSION_FAILED,
                                        Some(&session),
                                        json!({"status_code": 55_000_000, "message": "synthesis failed"})
                                            .to_string()
                                            .as_bytes(),
                                    ),
                                };
                                let _ = out.send(frame);
                                continue;
                            }
                            let start = Instant::now();
                            let sentence = json!({"text": text}).to_string();
                            let _ = out.send(event_frame(
                                0b1001,
                                event::TTS_SENTENCE_START,
                                Some(&session),
                                sentence.as_bytes(),
                            ));
                            let samples = speech(&text, rate).unwrap_or_default();
                            for (i, piece) in timing.pieces(&samples, rate).enumerate() {
                                timing.wait_for_piece(start, i).await;
                                events.push("audio");
                                let _ = out.send(event_frame(
                                    0b1011,
                                    event::TTS_RESPONSE,
                                    Some(&session),
                                    &super::pcm_bytes(piece),
                                ));
                            }
                            events.push("sentence_done");
                            let _ = out.send(event_frame(
                                0b1001,
                                event::TTS_SENTENCE_END,
                                Some(&session),
                                sentence.as_bytes(),
                            ));
                        }
                    }
                }
            })
        };
        let mut started = false;
        let mut session: Option<String> = None;
        let mut text = String::new();
        while let Some(Ok(message)) = stream.next().await {
            let Message::Binary(data) = message else { continue };
            let frame = match parse_client_event(&data) {
                Ok(frame) => frame,
                Err(why) => {
                    let _ = out.send(error_frame(45_000_000, &format!("invalid frame: {why}")));
                    break;
                }
            };
            let json: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
            match frame.event {
                event::START_CONNECTION => {
                    started = true;
                    events.push("connection");
                    let _ = out.send(event_frame(0b1001, event::CONNECTION_STARTED, Some("conn-1"), b"{}"));
                }
                event::START_SESSION if started && session.is_none() => {
                    let params = &json["req_params"];
                    let valid = json["namespace"] == "BidirectionalTTS"
                        && json["event"] == event::START_SESSION
                        && params["speaker"].as_str().is_some_and(|s| !s.is_empty())
                        && params["audio_params"]["format"] == "pcm";
                    let id = frame.session.unwrap_or_default();
                    if !valid || id.is_empty() {
                        let _ = out.send(error_frame(45_000_001, "invalid StartSession"));
                        break;
                    }
                    let rate = params["audio_params"]["sample_rate"].as_u64().unwrap_or(24_000);
                    let _ = jobs.send((id.clone(), Some(format!("\u{0}rate:{rate}"))));
                    events.push("session_start");
                    let _ = out.send(event_frame(0b1001, event::SESSION_STARTED, Some(&id), b"{}"));
                    session = Some(id);
                    text.clear();
                }
                event::TASK_REQUEST if session.is_some() && frame.session == session => {
                    events.push("task_request");
                    text.push_str(json["req_params"]["text"].as_str().unwrap_or_default());
                    // The service speaks a sentence as soon as its end is written.
                    while let Some(end) = text.find(['.', '!', '?', '。', '！', '？']) {
                        let end = end + text[end..].chars().next().map_or(1, char::len_utf8);
                        let sentence: String = text.drain(..end).collect();
                        if !sentence.trim().is_empty() {
                            let _ = jobs.send((session.clone().unwrap_or_default(), Some(sentence.trim().to_owned())));
                        }
                    }
                }
                event::FINISH_SESSION if session.is_some() && frame.session == session => {
                    let id = session.take().unwrap_or_default();
                    if !text.trim().is_empty() {
                        let _ = jobs.send((id.clone(), Some(text.trim().to_owned())));
                    }
                    text.clear();
                    let _ = jobs.send((id, None));
                }
                event::FINISH_CONNECTION => {
                    let _ = out.send(event_frame(0b1001, event::CONNECTION_FINISHED, Some("conn-1"), b"{}"));
                    break;
                }
                other => {
                    let _ = out.send(error_frame(45_000_000, &format!("unexpected event {other}")));
                    break;
                }
            }
        }
        events.push("closed");
        drop(jobs);
        let _ = synth.await;
        drop(out);
        let _ = writer.await;
    }
}

// ---------------------------------------------------------------------------------------------
// Big-model streaming recognition (api/v3/sauc/bigmodel)

/// A full server response: sequence, flags 0b0001 (0b0011 for the last one), JSON gzip.
fn sauc_response(sequence: i32, last: bool, json: &Value) -> Vec<u8> {
    let body = gzip(json.to_string().as_bytes());
    let flags = if last { 0b0011 } else { 0b0001 };
    let mut frame = vec![0x11, 0x90 | flags, 0x11, 0x00];
    frame.extend_from_slice(&sequence.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// A recognition error frame: code and a plain message.
fn sauc_error(code: u32, message: &str) -> Vec<u8> {
    let mut frame = vec![0x11, 0xF0, 0x10, 0x00];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message.as_bytes());
    frame
}

/// A client frame of the recognition API: message type, flags, sequence, ungzipped payload.
fn parse_sauc_client(data: &[u8]) -> Result<(u8, u8, i32, Vec<u8>), String> {
    if data.len() < 12 || data[0] != 0x11 || data[3] != 0 {
        return Err(format!("bad header {:02x?}", &data[..data.len().min(4)]));
    }
    let (kind, flags) = (data[1] >> 4, data[1] & 0x0F);
    let expected_serialization = if kind == 0b0001 { 0x11 } else { 0x01 };
    if data[2] != expected_serialization || flags & 0b0001 == 0 {
        return Err(format!("bad header {:02x?}", &data[..4]));
    }
    let sequence = be_u32(data, 4).ok_or("cut short")? as i32;
    let len = be_u32(data, 8).ok_or("cut short")? as usize;
    if 12 + len != data.len() {
        return Err("the payload size does not match".into());
    }
    let payload = gunzip(&data[12..]).ok_or("the payload does not gunzip")?;
    Ok((kind, flags, sequence, payload))
}

/// The streaming recognition endpoint.
pub struct SaucMock {
    ws: WsMock,
    /// `request` (the full client request), `audio` (each audio packet), `last` (the last packet),
    /// `failed`.
    pub events: Events,
    transcript: Arc<Mutex<String>>,
    fault: Arc<Mutex<Option<(u32, String)>>>,
}

impl SaucMock {
    /// Starts the endpoint for `account`, recognising speech as `transcript`.
    pub async fn start(account: Account, transcript: &str) -> anyhow::Result<Self> {
        let events = Events::default();
        let transcript = Arc::new(Mutex::new(transcript.to_owned()));
        let fault: Arc<Mutex<Option<(u32, String)>>> = Arc::default();
        let (log, words, failing) = (events.clone(), Arc::clone(&transcript), Arc::clone(&fault));
        let ws = WsMock::start(
            move |head| account.check(head, "/api/v3/sauc/bigmodel"),
            move |_head, ws| {
                let (log, words, failing) = (log.clone(), Arc::clone(&words), Arc::clone(&failing));
                async move { Self::recognition(ws, log, words, failing).await }
            },
        )
        .await
        .context("start the recognition mock")?;
        Ok(Self { ws, events, transcript, fault })
    }

    /// `ws://…/api/v3/sauc/bigmodel`.
    pub fn url(&self) -> String {
        self.ws.url("/api/v3/sauc/bigmodel")
    }

    /// What speech is recognised as.
    pub fn set_transcript(&self, text: &str) {
        *self.transcript.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = text.to_owned();
    }

    /// The next recognitions answer an error frame with `code` and `message` after their first
    /// audio packet (`None`: recognise again).
    pub fn fail(&self, fault: Option<(u32, &str)>) {
        *self.fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            fault.map(|(code, message)| (code, message.to_owned()));
    }

    async fn recognition(
        mut ws: WebSocketStream<TcpStream>,
        events: Events,
        transcript: Arc<Mutex<String>>,
        fault: Arc<Mutex<Option<(u32, String)>>>,
    ) {
        let mut expected = 1;
        let mut samples: Vec<i16> = Vec::new();
        while let Some(Ok(message)) = ws.next().await {
            let Message::Binary(data) = message else { continue };
            let (kind, flags, sequence, payload) = match parse_sauc_client(&data) {
                Ok(frame) => frame,
                Err(why) => {
                    let _ = ws.send(Message::Binary(sauc_error(45_000_000, &why).into())).await;
                    break;
                }
            };
            let last = flags & 0b0010 != 0;
            let in_order = if last { sequence == -expected } else { sequence == expected };
            if !in_order {
                let why = format!("sequence {sequence}, expected {expected}");
                let _ = ws.send(Message::Binary(sauc_error(45_000_001, &why).into())).await;
                break;
            }
            expected += 1;
            if kind == 0b0001 && sequence == 1 {
                let json: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                let audio = &json["audio"];
                let valid = audio["format"] == "pcm"
                    && audio["rate"] == 16_000
                    && audio["bits"] == 16
                    && audio["channel"] == 1
                    && json["request"]["model_name"] == "bigmodel";
                if !valid {
                    let _ = ws.send(Message::Binary(sauc_error(45_000_001, "invalid request parameters").into())).await;
                    break;
                }
                events.push("request");
                let _ =
                    ws.send(Message::Binary(sauc_response(1, false, &json!({"result": {"text": ""}})).into())).await;
                continue;
            }
            if kind != 0b0010 {
                let _ = ws.send(Message::Binary(sauc_error(45_000_000, "expected an audio-only request").into())).await;
                break;
            }
            events.push("audio");
            samples.extend(super::pcm_samples(&payload));
            let failing = fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if let Some((code, message)) = failing {
                events.push("failed");
                let _ = ws.send(Message::Binary(sauc_error(code, &message).into())).await;
                break;
            }
            let words = transcript.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let text = if is_speech(&samples, 16_000, 300) { words } else { String::new() };
            if last {
                events.push("last");
                let duration = samples.len() as u64 * 1000 / 16_000;
                let result = json!({
                    "audio_info": {"duration": duration},
                    "result": {"text": text, "utterances": [{"definite": true, "text": text}]},
                });
                let _ = ws.send(Message::Binary(sauc_response(sequence, true, &result).into())).await;
                break;
            }
            // A partial result: the transcript's first word once speech is heard.
            let partial: String = text.split_whitespace().next().unwrap_or_default().to_owned();
            let _ = ws
                .send(Message::Binary(sauc_response(sequence, false, &json!({"result": {"text": partial}})).into()))
                .await;
        }
        let _ = ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        // python3 -c 'import base64; print(base64.b64encode(b"Doubao!?").decode())'
        assert_eq!(base64(b"Doubao!?"), "RG91YmFvIT8=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
