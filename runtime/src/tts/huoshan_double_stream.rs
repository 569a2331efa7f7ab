//! `type: huoshan_double_stream`: Volcengine bidirectional streaming synthesis (双向流式 WebSocket
//! API v3, `wss://openspeech.bytedance.com/api/v3/tts/bidirection`): text goes in as it is
//! written, audio comes back while the sentence is still being written.
//!
//! Authentication is by handshake headers (`X-Api-App-Key`, `X-Api-Access-Key`,
//! `X-Api-Resource-Id`, `X-Api-Connect-Id`). Every message is a binary frame: a 4-byte header
//! (version 1 and header size 1; message type and flags; serialization and compression;
//! reserved), the event number (flags `0b0100`), for session events the session id (length +
//! bytes), then the payload (length + bytes, JSON or audio). The client sends StartConnection
//! (1), StartSession (100), one TaskRequest (200) per piece of text, FinishSession (102) and
//! FinishConnection (2); the server answers ConnectionStarted (50) / ConnectionFailed (51),
//! SessionStarted (150) / SessionFinished (152) / SessionFailed (153), and per sentence
//! TTSSentenceStart (350), TTSResponse (352, audio-only frames of 16-bit PCM) and TTSSentenceEnd
//! (351). Error frames (message type `0b1111`) carry the vendor's error code and message.
//!
//! One session per sentence; with `enable_ws_reuse` the connection is kept for the next sentence
//! (a few idle connections at most, each for less than a minute). Dropping the audio stream
//! closes the connection.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::doubao::{optional_float, secret, text_or_number};
use super::{AudioChunk, AudioStream, TextStream, channel_stream, silence};
use crate::remote::{MAX_WS_MESSAGE_BYTES, ProviderError, WsStream, timeout_from, url_without_query, ws_connect};

/// The vendor's endpoint.
pub const DEFAULT_WS_URL: &str = "wss://openspeech.bytedance.com/api/v3/tts/bidirection";
/// Sample rate of the PCM asked for (unless `audio_params.sample_rate` says otherwise).
const DEFAULT_SAMPLE_RATE: u32 = 16_000;
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 2;
/// How long an idle connection is kept (the service closes idle connections after a minute).
const IDLE_FOR: Duration = Duration::from_secs(45);

/// Protocol version 1, header size 1 (4 bytes).
pub(crate) const VERSION_AND_HEADER_SIZE: u8 = 0x11;
/// Message type: a full client request.
pub(crate) const FULL_CLIENT_REQUEST: u8 = 0b0001;
/// Message type: a full server response (JSON).
pub(crate) const FULL_SERVER_RESPONSE: u8 = 0b1001;
/// Message type: an audio-only server response.
pub(crate) const AUDIO_ONLY_RESPONSE: u8 = 0b1011;
/// Message type: an error from the server.
pub(crate) const ERROR_INFORMATION: u8 = 0b1111;
/// Flags: the frame carries an event number.
pub(crate) const WITH_EVENT: u8 = 0b0100;
/// Serialization: JSON.
pub(crate) const JSON_SERIALIZATION: u8 = 0b0001;
/// Compression: gzip.
pub(crate) const GZIP: u8 = 0b0001;

/// Events (the vendor's numbering).
pub(crate) mod event {
    pub const START_CONNECTION: i32 = 1;
    pub const FINISH_CONNECTION: i32 = 2;
    pub const CONNECTION_STARTED: i32 = 50;
    pub const CONNECTION_FAILED: i32 = 51;
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

/// `TTS.<name>` with `type: huoshan_double_stream`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The WebSocket endpoint.
    pub ws_url: String,
    /// Application id (`X-Api-App-Key`; a number or a string).
    #[serde(deserialize_with = "text_or_number")]
    pub appid: String,
    /// Access token (`X-Api-Access-Key`, secret).
    pub access_token: String,
    /// Resource id (`X-Api-Resource-Id`): `volc.service_type.10029`, `seed-tts-2.0`.
    pub resource_id: String,
    /// Voice.
    pub speaker: String,
    /// A cloned voice; used instead of `speaker` when set.
    pub private_voice: String,
    /// Keep the connection open between sentences and turns.
    pub enable_ws_reuse: bool,
    /// `req_params.audio_params` (any parameter the vendor takes: `speech_rate`,
    /// `loudness_rate`, `emotion`, …); `format` is always `pcm`.
    pub audio_params: BTreeMap<String, Value>,
    /// `req_params.additions` (`post_process.pitch`, …), sent as the JSON string the vendor
    /// expects.
    pub additions: BTreeMap<String, Value>,
    /// `req_params.mix_speaker` (voice mixing, TTS 1.0 voices).
    pub mix_speaker: Option<Value>,
    /// Older spelling of `audio_params.speech_rate` (-50 to 100).
    #[serde(deserialize_with = "optional_float")]
    pub speech_rate: Option<f32>,
    /// Older spelling of `audio_params.loudness_rate` (-50 to 100).
    #[serde(deserialize_with = "optional_float")]
    pub loudness_rate: Option<f32>,
    /// Older spelling of `additions.post_process.pitch` (-12 to 12).
    #[serde(deserialize_with = "optional_float")]
    pub pitch: Option<f32>,
    /// Python server compatibility; not used (the voice decides the language).
    pub language: Option<String>,
    /// Python server compatibility (older entries); not used by this API.
    pub cluster: Option<String>,
    /// Python server compatibility (older entries); not used by this API (headers carry the
    /// token).
    pub authorization: Option<String>,
    /// Seconds for the connection, each answer while the text is complete, and the first audio.
    pub timeout: u64,
    /// Python server compatibility; not used (no audio is written).
    pub output_dir: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ws_url: DEFAULT_WS_URL.into(),
            appid: String::new(),
            access_token: String::new(),
            resource_id: "volc.service_type.10029".into(),
            speaker: "zh_female_wanwanxiaohe_moon_bigtts".into(),
            private_voice: String::new(),
            enable_ws_reuse: true,
            audio_params: BTreeMap::new(),
            additions: BTreeMap::new(),
            mix_speaker: None,
            speech_rate: None,
            loudness_rate: None,
            pitch: None,
            language: None,
            cluster: None,
            authorization: None,
            timeout: 15,
            output_dir: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("ws_url", &self.ws_url)
            .field("appid", &self.appid)
            .field("access_token", &secret(&self.access_token))
            .field("resource_id", &self.resource_id)
            .field("speaker", &self.speaker)
            .field("enable_ws_reuse", &self.enable_ws_reuse)
            .field("audio_params", &self.audio_params)
            .field("additions", &self.additions)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("{} speaker {} ({})", self.ws_url.trim(), self.voice(), self.resource_id.trim())
    }

    fn voice(&self) -> &str {
        let private = self.private_voice.trim();
        if private.is_empty() { self.speaker.trim() } else { private }
    }

    /// The PCM rate asked for.
    fn sample_rate(&self) -> u32 {
        self.audio_params
            .get("sample_rate")
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())))
            .and_then(|rate| u32::try_from(rate).ok())
            .filter(|rate| *rate > 0)
            .unwrap_or(DEFAULT_SAMPLE_RATE)
    }

    /// `req_params` of StartSession (and, with the text, of each TaskRequest).
    fn req_params(&self, text: Option<&str>) -> Value {
        let mut audio: serde_json::Map<String, Value> =
            self.audio_params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, value) in [("speech_rate", self.speech_rate), ("loudness_rate", self.loudness_rate)] {
            if let Some(value) = value
                && !audio.contains_key(key)
            {
                audio.insert(key.into(), json!(value.round() as i64));
            }
        }
        audio.insert("format".into(), json!("pcm"));
        audio.insert("sample_rate".into(), json!(self.sample_rate()));
        let mut params = json!({"speaker": self.voice(), "audio_params": audio});
        let mut additions: serde_json::Map<String, Value> =
            self.additions.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(pitch) = self.pitch {
            let post = additions.entry("post_process").or_insert_with(|| json!({}));
            if let Some(post) = post.as_object_mut() {
                post.entry("pitch").or_insert(json!(pitch.round() as i64));
            }
        }
        if !additions.is_empty() {
            params["additions"] = Value::String(Value::Object(additions).to_string());
        }
        if let Some(mix) = &self.mix_speaker {
            params["mix_speaker"] = mix.clone();
        }
        if let Some(text) = text {
            params["text"] = json!(text);
        }
        params
    }

    /// The JSON payload of a session event.
    fn payload(&self, event: i32, text: Option<&str>) -> Vec<u8> {
        json!({
            "user": {"uid": "xiaozhi"},
            "event": event,
            "namespace": "BidirectionalTTS",
            "req_params": self.req_params(text),
        })
        .to_string()
        .into_bytes()
    }
}

/// A client frame: full client request with an event number, JSON, no compression; the session
/// id for session events.
pub(crate) fn client_frame(event: i32, session_id: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let mut frame =
        vec![VERSION_AND_HEADER_SIZE, (FULL_CLIENT_REQUEST << 4) | WITH_EVENT, JSON_SERIALIZATION << 4, 0x00];
    frame.extend_from_slice(&event.to_be_bytes());
    if let Some(id) = session_id {
        frame.extend_from_slice(&(id.len() as u32).to_be_bytes());
        frame.extend_from_slice(id.as_bytes());
    }
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerFrame {
    /// Message type (`FULL_SERVER_RESPONSE`, `AUDIO_ONLY_RESPONSE`, `ERROR_INFORMATION`).
    pub kind: u8,
    /// The event number (0 when the frame has none).
    pub event: i32,
    /// The session or connection id, when the frame has one.
    pub id: Option<String>,
    /// The error code of an error frame.
    pub error_code: Option<u32>,
    /// The payload (decompressed).
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The vendor's error as a message: `code: message` from an error frame or a failure
    /// event's JSON (`status_code`, `message`/`error`).
    fn error_text(&self) -> String {
        let json: Option<Value> = serde_json::from_slice(&self.payload).ok();
        let field = |name: &str| json.as_ref().and_then(|v| v.get(name)).cloned();
        let code = self
            .error_code
            .map(i64::from)
            .or_else(|| field("status_code").and_then(|v| v.as_i64()))
            .or_else(|| field("code").and_then(|v| v.as_i64()));
        let message = field("message")
            .or_else(|| field("error"))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| crate::remote::body_start(&self.payload));
        match code {
            Some(code) => format!("Volcengine TTS error {code}: {message}"),
            None => format!("Volcengine TTS error: {message}"),
        }
    }
}

/// Reads big-endian fields and length-prefixed blocks.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn u32(&mut self) -> Result<u32, String> {
        let bytes = self.data.get(self.pos..self.pos + 4).ok_or("the frame is cut short")?;
        self.pos += 4;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn block(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        let bytes = self.data.get(self.pos..self.pos + len).ok_or("a length runs past the end of the frame")?;
        self.pos += len;
        Ok(bytes)
    }
}

/// Gunzips at most [`MAX_WS_MESSAGE_BYTES`].
pub(crate) fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(MAX_WS_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("the payload does not gunzip: {e}"))?;
    if out.len() > MAX_WS_MESSAGE_BYTES {
        return Err("the payload is too large".into());
    }
    Ok(out)
}

/// Parses a server frame.
pub(crate) fn parse_frame(data: &[u8]) -> Result<ServerFrame, String> {
    if data.len() < 4 {
        return Err(format!("a frame of {} bytes", data.len()));
    }
    if data[0] >> 4 != 1 {
        return Err(format!("protocol version {}", data[0] >> 4));
    }
    let header = usize::from(data[0] & 0x0F) * 4;
    if header < 4 || header > data.len() {
        return Err(format!("header size {header}"));
    }
    let (kind, flags, compression) = (data[1] >> 4, data[1] & 0x0F, data[2] & 0x0F);
    let mut cursor = Cursor { data, pos: header };
    let mut frame = ServerFrame { kind, event: 0, id: None, error_code: None, payload: Vec::new() };
    match kind {
        ERROR_INFORMATION => {
            frame.error_code = Some(cursor.u32()?);
            frame.payload = if cursor.remaining() >= 4 { cursor.block()?.to_vec() } else { Vec::new() };
        }
        FULL_SERVER_RESPONSE | AUDIO_ONLY_RESPONSE => {
            if flags & 0b0011 != 0 {
                cursor.u32()?; // a sequence number
            }
            if flags & WITH_EVENT != 0 {
                frame.event = cursor.u32()? as i32;
            }
            let first = cursor.block()?;
            if cursor.remaining() >= 4 {
                frame.id = Some(String::from_utf8_lossy(first).into_owned());
                frame.payload = cursor.block()?.to_vec();
            } else {
                frame.payload = first.to_vec();
            }
        }
        other => return Err(format!("message type {other:#06b}")),
    }
    if compression == GZIP && !frame.payload.is_empty() {
        frame.payload = gunzip(&frame.payload)?;
    }
    Ok(frame)
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(HuoshanDoubleStreamTts::new(cfg.clone())?))
}

/// The bidirectional streaming synthesizer.
pub struct HuoshanDoubleStreamTts {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    url: String,
    timeout: Duration,
    /// Open connections between sessions, with when they went idle.
    idle: Mutex<Vec<(WsStream, Instant)>>,
}

/// Why a session could not start.
enum StartError {
    /// The connection is gone (a reused one may have been closed by the service).
    Gone(ProviderError),
    /// The service refused.
    Refused(ProviderError),
}

impl HuoshanDoubleStreamTts {
    /// Validates the entry (URL, timeout); credentials are checked at request time.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let url = if cfg.ws_url.trim().is_empty() { DEFAULT_WS_URL.to_owned() } else { cfg.ws_url.trim().to_owned() };
        match reqwest::Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "ws" | "wss") => {}
            _ => {
                return Err(ProviderError::Config(format!(
                    "TTS.huoshan_double_stream: ws_url `{url}` is not a ws:// or wss:// URL"
                )));
            }
        }
        let timeout = timeout_from(cfg.timeout, "TTS.huoshan_double_stream")?;
        Ok(Self { inner: Arc::new(Inner { cfg, url, timeout, idle: Mutex::new(Vec::new()) }) })
    }
}

impl Inner {
    fn protocol(&self, message: String) -> ProviderError {
        ProviderError::Protocol { url: url_without_query(&self.url), message }
    }

    fn gone(&self, message: String) -> ProviderError {
        ProviderError::Transport { url: url_without_query(&self.url), message }
    }

    /// A fresh connection, started (StartConnection answered by ConnectionStarted).
    async fn connect(&self) -> Result<WsStream, ProviderError> {
        let cfg = &self.cfg;
        let headers = [
            ("X-Api-App-Key", cfg.appid.clone()),
            ("X-Api-Access-Key", cfg.access_token.trim().to_owned()),
            ("X-Api-Resource-Id", cfg.resource_id.trim().to_owned()),
            ("X-Api-Connect-Id", uuid::Uuid::new_v4().to_string()),
        ];
        let mut ws = ws_connect(&self.url, &headers, self.timeout, "TTS.huoshan_double_stream connection").await?;
        self.send(&mut ws, client_frame(event::START_CONNECTION, None, b"{}")).await?;
        let frame = self.next_frame(&mut ws, Some(self.timeout)).await?;
        match frame.event {
            event::CONNECTION_STARTED if frame.kind != ERROR_INFORMATION => Ok(ws),
            _ if frame.kind == ERROR_INFORMATION || frame.event == event::CONNECTION_FAILED => {
                Err(self.protocol(frame.error_text()))
            }
            other => Err(self.protocol(format!("answered event {other} to StartConnection"))),
        }
    }

    async fn send(&self, ws: &mut WsStream, frame: Vec<u8>) -> Result<(), ProviderError> {
        ws.send(Message::Binary(frame.into())).await.map_err(|e| self.gone(crate::remote::error_chain(&e)))
    }

    /// The next frame, within `wait` when given.
    async fn next_frame(&self, ws: &mut WsStream, wait: Option<Duration>) -> Result<ServerFrame, ProviderError> {
        let read = async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) => return parse_frame(&data).map_err(|e| self.protocol(e)),
                    Some(Ok(Message::Text(text))) => {
                        return Err(
                            self.protocol(format!("a text message: {}", crate::remote::body_start(text.as_bytes())))
                        );
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        return Err(self.gone("the service closed the connection".into()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(self.gone(crate::remote::error_chain(&e))),
                }
            }
        };
        match wait {
            Some(wait) => tokio::time::timeout(wait, read).await.map_err(|_| ProviderError::Timeout {
                what: "TTS.huoshan_double_stream answer".into(),
                seconds: wait.as_secs().max(1),
            })?,
            None => read.await,
        }
    }

    /// Starts a session on `ws` (StartSession answered by SessionStarted).
    async fn start_session(&self, ws: &mut WsStream, session_id: &str) -> Result<(), StartError> {
        let frame = client_frame(event::START_SESSION, Some(session_id), &self.cfg.payload(event::START_SESSION, None));
        self.send(ws, frame).await.map_err(StartError::Gone)?;
        let answer = match self.next_frame(ws, Some(self.timeout)).await {
            Ok(answer) => answer,
            Err(e @ ProviderError::Transport { .. }) => return Err(StartError::Gone(e)),
            Err(e) => return Err(StartError::Refused(e)),
        };
        match answer.event {
            event::SESSION_STARTED if answer.kind != ERROR_INFORMATION => Ok(()),
            _ if answer.kind == ERROR_INFORMATION || answer.event == event::SESSION_FAILED => {
                Err(StartError::Refused(self.protocol(answer.error_text())))
            }
            other => Err(StartError::Refused(self.protocol(format!("answered event {other} to StartSession")))),
        }
    }

    /// An idle connection younger than [`IDLE_FOR`], if any.
    fn take_idle(&self) -> Option<WsStream> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|(_, since)| since.elapsed() < IDLE_FOR);
        idle.pop().map(|(ws, _)| ws)
    }

    /// Keeps a connection whose session finished cleanly for the next one.
    fn put_idle(&self, ws: WsStream) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push((ws, Instant::now()));
        }
    }

    /// A connection with a started session: a reused one when there is one (a fresh one if it
    /// turns out to be gone).
    async fn open_session(&self, session_id: &str) -> Result<WsStream, ProviderError> {
        if self.cfg.enable_ws_reuse
            && let Some(mut ws) = self.take_idle()
        {
            match self.start_session(&mut ws, session_id).await {
                Ok(()) => return Ok(ws),
                Err(StartError::Refused(e)) => return Err(e),
                Err(StartError::Gone(e)) => tracing::debug!("an idle Volcengine TTS connection is gone: {e}"),
            }
        }
        let mut ws = self.connect().await?;
        match self.start_session(&mut ws, session_id).await {
            Ok(()) => Ok(ws),
            Err(StartError::Gone(e) | StartError::Refused(e)) => Err(e),
        }
    }

    /// Runs one session: forwards the text pieces as TaskRequests (FinishSession when the text
    /// is complete) and the audio to `tx` as it arrives.
    async fn run_session(
        self: Arc<Self>,
        mut ws: WsStream,
        session_id: String,
        mut text: TextStream,
        tx: mpsc::Sender<Result<AudioChunk, ProviderError>>,
    ) {
        let rate = self.cfg.sample_rate();
        let mut text_open = true;
        let mut carry: Vec<u8> = Vec::new();
        loop {
            // While text is still being written the service may be silent; once it is complete
            // every answer is due within the timeout.
            let wait = if text_open { None } else { Some(self.timeout) };
            tokio::select! {
                biased;
                _ = tx.closed() => return,
                piece = text.recv(), if text_open => {
                    let frame = match piece {
                        Some(piece) if piece.trim().is_empty() => continue,
                        Some(piece) => client_frame(
                            event::TASK_REQUEST,
                            Some(&session_id),
                            &self.cfg.payload(event::TASK_REQUEST, Some(&piece)),
                        ),
                        None => {
                            text_open = false;
                            client_frame(event::FINISH_SESSION, Some(&session_id), b"{}")
                        }
                    };
                    if let Err(e) = self.send(&mut ws, frame).await {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                frame = self.next_frame(&mut ws, wait) => {
                    let frame = match frame {
                        Ok(frame) => frame,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    if frame.kind == ERROR_INFORMATION
                        || matches!(frame.event, event::SESSION_FAILED | event::CONNECTION_FAILED)
                    {
                        let _ = tx.send(Err(self.protocol(frame.error_text()))).await;
                        return;
                    }
                    match frame.event {
                        event::TTS_RESPONSE if frame.kind == AUDIO_ONLY_RESPONSE => {
                            carry.extend_from_slice(&frame.payload);
                            let whole = carry.len() / 2 * 2;
                            if whole == 0 {
                                continue;
                            }
                            let samples: Vec<i16> =
                                carry[..whole].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
                            carry.drain(..whole);
                            if tx.send(Ok(AudioChunk::Pcm { samples, sample_rate: rate })).await.is_err() {
                                return;
                            }
                        }
                        event::SESSION_FINISHED => {
                            let status = serde_json::from_slice::<Value>(&frame.payload)
                                .ok()
                                .and_then(|v| v.get("status_code").and_then(Value::as_i64));
                            if status.is_some_and(|code| code != 20_000_000) {
                                let _ = tx.send(Err(self.protocol(frame.error_text()))).await;
                                return;
                            }
                            if text_open {
                                // Finished before the text was complete: the rest is not spoken.
                                tracing::debug!("the Volcengine TTS session finished before its text was complete");
                                return;
                            }
                            self.finish(ws).await;
                            return;
                        }
                        event::CONNECTION_FINISHED => {
                            let _ = tx.send(Err(self.gone("the service finished the connection".into()))).await;
                            return;
                        }
                        // Sentence boundaries: nothing to do.
                        event::TTS_SENTENCE_START | event::TTS_SENTENCE_END => {}
                        other => tracing::debug!("Volcengine TTS event {other} ignored"),
                    }
                }
            }
        }
    }

    /// After a clean session: keeps the connection, or finishes it.
    async fn finish(&self, mut ws: WsStream) {
        if self.cfg.enable_ws_reuse {
            self.put_idle(ws);
            return;
        }
        if self.send(&mut ws, client_frame(event::FINISH_CONNECTION, None, b"{}")).await.is_ok() {
            // ConnectionFinished, briefly; the connection closes either way.
            let _ = self.next_frame(&mut ws, Some(Duration::from_secs(1))).await;
        }
        let _ = ws.close(None).await;
    }
}

#[async_trait]
impl super::Tts for HuoshanDoubleStreamTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(silence());
        }
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(text.to_owned());
        drop(tx);
        self.speak_text(rx).await
    }

    fn streams_text(&self) -> bool {
        true
    }

    async fn speak_text(&self, text: TextStream) -> Result<AudioStream, ProviderError> {
        if self.inner.cfg.access_token.trim().is_empty() {
            return Err(ProviderError::Config("TTS.huoshan_double_stream: access_token is not set".into()));
        }
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        let ws = self.inner.open_session(&session_id).await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(Arc::clone(&self.inner).run_session(ws, session_id, text, tx));
        Ok(channel_stream(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_follow_the_documented_layout() {
        // StartConnection: header 0x11 (v1, 4-byte header), 0x14 (full client request, with
        // event), 0x10 (JSON, no compression), 0x00; event 1; payload size 2; `{}`.
        assert_eq!(
            client_frame(event::START_CONNECTION, None, b"{}"),
            [0x11, 0x14, 0x10, 0x00, 0, 0, 0, 1, 0, 0, 0, 2, b'{', b'}']
        );
        // StartSession: event 100, then the session id's length and bytes, then the payload.
        assert_eq!(
            client_frame(event::START_SESSION, Some("ab12"), b"{}"),
            [0x11, 0x14, 0x10, 0x00, 0, 0, 0, 100, 0, 0, 0, 4, b'a', b'b', b'1', b'2', 0, 0, 0, 2, b'{', b'}']
        );
        assert_eq!(&client_frame(event::TASK_REQUEST, Some("s"), b"")[4..8], &[0, 0, 0, 200]);
        assert_eq!(&client_frame(event::FINISH_SESSION, Some("s"), b"{}")[4..8], &[0, 0, 0, 102]);
    }

    #[test]
    fn server_frames_parse() {
        // ConnectionStarted: full server response with event 50, the connection id, a payload.
        let mut started = vec![0x11, 0x94, 0x10, 0x00, 0, 0, 0, 50, 0, 0, 0, 3, b'c', b'i', b'd', 0, 0, 0, 2];
        started.extend_from_slice(b"{}");
        let frame = parse_frame(&started).expect("parses");
        assert_eq!(frame.kind, FULL_SERVER_RESPONSE);
        assert_eq!(frame.event, event::CONNECTION_STARTED);
        assert_eq!(frame.id.as_deref(), Some("cid"));
        assert_eq!(frame.payload, b"{}");
        // TTSResponse: audio-only response with event 352, the session id, raw PCM.
        let audio = [0x11, 0xB4, 0x00, 0x00, 0, 0, 1, 0x60, 0, 0, 0, 1, b's', 0, 0, 0, 4, 1, 0, 2, 0];
        let frame = parse_frame(&audio).expect("parses");
        assert_eq!((frame.kind, frame.event), (AUDIO_ONLY_RESPONSE, event::TTS_RESPONSE));
        assert_eq!(frame.id.as_deref(), Some("s"));
        assert_eq!(frame.payload, [1, 0, 2, 0]);
        // A gzip-compressed JSON payload.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, br#"{"status_code":20000000}"#).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let mut finished = vec![0x11, 0x94, 0x11, 0x00, 0, 0, 0, 152, 0, 0, 0, 1, b's'];
        finished.extend_from_slice(&(gz.len() as u32).to_be_bytes());
        finished.extend_from_slice(&gz);
        assert_eq!(parse_frame(&finished).expect("parses").payload, br#"{"status_code":20000000}"#);
        // Cut short, wrong version, unknown type.
        assert!(parse_frame(&audio[..19]).is_err());
        assert!(parse_frame(&[0x21, 0x94, 0, 0]).is_err());
        assert!(parse_frame(&[0x11, 0x24, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn error_frames_and_failures_carry_the_vendor_code() {
        // Error frame: type 0b1111, the error code, then the message.
        let message = br#"{"error":"quota exceeded"}"#;
        let mut error = vec![0x11, 0xF0, 0x10, 0x00];
        error.extend_from_slice(&45_000_292u32.to_be_bytes());
        error.extend_from_slice(&(message.len() as u32).to_be_bytes());
        error.extend_from_slice(message);
        let frame = parse_frame(&error).expect("parses");
        assert_eq!(frame.error_code, Some(45_000_292));
        assert_eq!(frame.error_text(), "Volcengine TTS error 45000292: quota exceeded");
        // SessionFailed: the JSON payload's status_code and message.
        let payload = br#"{"status_code":55000000,"message":"server error"}"#;
        let mut failed = vec![0x11, 0x94, 0x10, 0x00, 0, 0, 0, 153, 0, 0, 0, 1, b's'];
        failed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        failed.extend_from_slice(payload);
        assert_eq!(parse_frame(&failed).expect("parses").error_text(), "Volcengine TTS error 55000000: server error");
    }

    #[test]
    fn python_keys_build_and_payload() {
        let yaml = "type: huoshan_double_stream\nws_url: wss://openspeech.bytedance.com/api/v3/tts/bidirection\n\
                    appid: 123456\naccess_token: tok-secret\nresource_id: volc.service_type.10029\n\
                    speaker: zh_female_wanwanxiaohe_moon_bigtts\nenable_ws_reuse: True\n\
                    audio_params:\n  speech_rate: 10\n  loudness_rate: 0\n  emotion: happy\n\
                    additions:\n  post_process:\n    pitch: 3\noutput_dir: tmp/\n";
        let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        value.as_mapping_mut().expect("map").remove("type");
        let cfg: Config = serde_yaml_ng::from_value(value).expect("parses");
        assert_eq!(cfg.appid, "123456");
        assert!(cfg.enable_ws_reuse);
        assert!(!format!("{cfg:?}").contains("tok-secret"));
        let payload: Value = serde_json::from_slice(&cfg.payload(event::START_SESSION, None)).expect("json");
        assert_eq!(payload["event"], 100);
        assert_eq!(payload["namespace"], "BidirectionalTTS");
        assert_eq!(payload["req_params"]["speaker"], "zh_female_wanwanxiaohe_moon_bigtts");
        assert_eq!(
            payload["req_params"]["audio_params"],
            json!({"format": "pcm", "sample_rate": 16000, "speech_rate": 10, "loudness_rate": 0, "emotion": "happy"})
        );
        let additions: Value =
            serde_json::from_str(payload["req_params"]["additions"].as_str().expect("a JSON string")).expect("json");
        assert_eq!(additions, json!({"post_process": {"pitch": 3}}));
        let task: Value = serde_json::from_slice(&cfg.payload(event::TASK_REQUEST, Some("你好"))).expect("json");
        assert_eq!(task["req_params"]["text"], "你好");
        // Empty credentials build; a bad URL does not.
        assert!(build(&Config::default()).is_ok());
        assert!(matches!(
            build(&Config { ws_url: "https://x/y".into(), ..Config::default() }),
            Err(ProviderError::Config(_))
        ));
    }

    #[tokio::test]
    async fn a_missing_token_is_named() {
        use crate::tts::Tts;
        let tts = HuoshanDoubleStreamTts::new(Config::default()).expect("builds");
        match tts.speak("hi").await {
            Err(ProviderError::Config(message)) => assert!(message.contains("access_token"), "{message}"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("spoke without a token"),
        }
    }
}
