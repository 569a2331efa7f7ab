//! `type: doubao_stream`: Volcengine (Doubao) big-model streaming recognition (大模型流式语音识别
//! API, `wss://openspeech.bytedance.com/api/v3/sauc/bigmodel`).
//!
//! Authentication is by handshake headers (`X-Api-App-Key`, `X-Api-Access-Key`,
//! `X-Api-Resource-Id`, `X-Api-Connect-Id`). Every message is a binary frame: a 4-byte header
//! (version 1 and header size 1; message type and flags; serialization and compression;
//! reserved), a sequence number (flags `0b0001`; negative with flags `0b0011` on the last
//! packet), the payload size and the gzip-compressed payload. The client sends one full client
//! request (JSON: user, audio format, request options) and then audio-only requests of 16 kHz
//! 16-bit mono PCM (about 200 ms each) while the user speaks; the last packet carries the last
//! flag. The server answers full server responses (JSON `result.text`, the whole text so far)
//! and, for a failure, an error frame (message type `0b1111`) with the vendor's error code and
//! message. The recognition ends with the server's last response.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::{ASR_SAMPLE_RATE, Recognition};
use crate::remote::{ProviderError, WsStream, body_start, timeout_from, url_without_query, ws_connect};
use crate::tts::doubao::{secret, text_or_number};
use crate::tts::huoshan_double_stream::gunzip;

/// The vendor's endpoint (bidirectional streaming mode).
pub const DEFAULT_WS_URL: &str = "wss://openspeech.bytedance.com/api/v3/sauc/bigmodel";
/// Audio per packet (the vendor recommends 100 to 200 ms).
const PACKET_SAMPLES: usize = ASR_SAMPLE_RATE as usize / 5;

/// Message type: full client request.
pub(crate) const FULL_CLIENT_REQUEST: u8 = 0b0001;
/// Message type: audio-only request.
pub(crate) const AUDIO_ONLY_REQUEST: u8 = 0b0010;
/// Message type: full server response.
pub(crate) const FULL_SERVER_RESPONSE: u8 = 0b1001;
/// Message type: server acknowledgement.
pub(crate) const SERVER_ACK: u8 = 0b1011;
/// Message type: error from the server.
pub(crate) const SERVER_ERROR_RESPONSE: u8 = 0b1111;
/// Flags: a positive sequence number follows the header.
pub(crate) const POS_SEQUENCE: u8 = 0b0001;
/// Flags: the last packet (with a negative sequence number when combined with `POS_SEQUENCE`).
pub(crate) const LAST_PACKET: u8 = 0b0010;
/// Serialization: none / JSON.
pub(crate) const NO_SERIALIZATION: u8 = 0b0000;
/// Serialization: JSON.
pub(crate) const JSON_SERIALIZATION: u8 = 0b0001;
/// Compression: gzip.
pub(crate) const GZIP: u8 = 0b0001;

/// `ASR.<name>` with `type: doubao_stream`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The WebSocket endpoint (not a Python key; the Python server uses this one).
    pub ws_url: String,
    /// Application id (`X-Api-App-Key`; a number or a string).
    #[serde(deserialize_with = "text_or_number")]
    pub appid: String,
    /// Access token (`X-Api-Access-Key`, secret).
    pub access_token: String,
    /// Resource id (`X-Api-Resource-Id`): `volc.bigasr.sauc.duration`, `volc.seedasr.sauc.duration`, …
    pub resource_id: String,
    /// Hot-word table of the account (`request.corpus.boosting_table_name`).
    pub boosting_table_name: String,
    /// Correction table of the account (`request.corpus.correct_table_name`).
    pub correct_table_name: String,
    /// Multilingual recognition: `language` is then sent (`audio.language`).
    pub enable_multilingual: bool,
    /// Language of multilingual recognition (`zh-CN`, `en-US`, …; empty = automatic).
    pub language: Option<String>,
    /// Silence (ms) after which the service ends an utterance (`request.end_window_size`).
    pub end_window_size: u32,
    /// Python server compatibility (the older v2 API); not used by this API.
    pub cluster: Option<String>,
    /// Seconds for the connection, each send and the final answer.
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
            resource_id: "volc.bigasr.sauc.duration".into(),
            boosting_table_name: String::new(),
            correct_table_name: String::new(),
            enable_multilingual: false,
            language: None,
            end_window_size: 200,
            cluster: None,
            timeout: 10,
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
            .field("boosting_table_name", &self.boosting_table_name)
            .field("correct_table_name", &self.correct_table_name)
            .field("enable_multilingual", &self.enable_multilingual)
            .field("language", &self.language)
            .field("end_window_size", &self.end_window_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("{} ({})", self.ws_url.trim(), self.resource_id.trim())
    }

    /// The JSON of the full client request.
    fn request(&self) -> Value {
        let mut audio = json!({"format": "pcm", "codec": "raw", "rate": ASR_SAMPLE_RATE, "bits": 16, "channel": 1});
        if self.enable_multilingual
            && let Some(language) = self.language.as_deref().map(str::trim).filter(|l| !l.is_empty())
        {
            audio["language"] = json!(language);
        }
        let mut request = json!({
            "model_name": "bigmodel",
            "enable_itn": true,
            "enable_punc": true,
            "enable_ddc": false,
            "show_utterances": true,
            "result_type": "full",
            "end_window_size": self.end_window_size,
        });
        let mut corpus = serde_json::Map::new();
        for (key, value) in
            [("boosting_table_name", &self.boosting_table_name), ("correct_table_name", &self.correct_table_name)]
        {
            if !value.trim().is_empty() {
                corpus.insert(key.into(), json!(value.trim()));
            }
        }
        if !corpus.is_empty() {
            request["corpus"] = Value::Object(corpus);
        }
        json!({"user": {"uid": "xiaozhi"}, "audio": audio, "request": request})
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

/// A client frame: `kind` with a sequence number (`sequence` < 0 marks the last packet),
/// `serialization`, gzip-compressed `payload`.
pub(crate) fn client_frame(kind: u8, serialization: u8, sequence: i32, payload: &[u8]) -> Vec<u8> {
    let flags = if sequence < 0 { POS_SEQUENCE | LAST_PACKET } else { POS_SEQUENCE };
    let body = gzip(payload);
    let mut frame = vec![0x11, (kind << 4) | flags, (serialization << 4) | GZIP, 0x00];
    frame.extend_from_slice(&sequence.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ServerFrame {
    /// A full server response (or acknowledgement): its JSON, and whether it is the last one.
    Response { sequence: Option<i32>, last: bool, json: Value },
    /// An error frame: the vendor's code and message.
    Error { code: u32, message: String },
}

fn be_u32(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "the frame is cut short".to_owned())
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
    let (kind, flags, serialization, compression) = (data[1] >> 4, data[1] & 0x0F, data[2] >> 4, data[2] & 0x0F);
    let mut at = header;
    let payload = |at: usize| -> Result<Vec<u8>, String> {
        let len = be_u32(data, at)? as usize;
        let bytes = data.get(at + 4..at + 4 + len).ok_or("the payload size runs past the end of the frame")?;
        if compression == GZIP && !bytes.is_empty() { gunzip(bytes) } else { Ok(bytes.to_vec()) }
    };
    match kind {
        SERVER_ERROR_RESPONSE => {
            let code = be_u32(data, at)?;
            let message = if data.len() >= at + 8 { payload(at + 4)? } else { Vec::new() };
            Ok(ServerFrame::Error { code, message: body_start(&message) })
        }
        FULL_SERVER_RESPONSE | SERVER_ACK => {
            let mut sequence = None;
            if flags & POS_SEQUENCE != 0 {
                sequence = Some(be_u32(data, at)? as i32);
                at += 4;
            }
            let last = flags & LAST_PACKET != 0 || sequence.is_some_and(|s| s < 0);
            let bytes = if data.len() >= at + 4 { payload(at)? } else { Vec::new() };
            let json = if bytes.is_empty() {
                Value::Null
            } else if serialization == JSON_SERIALIZATION || serialization == NO_SERIALIZATION {
                serde_json::from_slice(&bytes).map_err(|e| format!("the payload is not JSON: {e}"))?
            } else {
                return Err(format!("serialization {serialization:#06b}"));
            };
            Ok(ServerFrame::Response { sequence, last, json })
        }
        other => Err(format!("message type {other:#06b}")),
    }
}

/// The text of a response: `result.text` (an object, or a list of results).
pub(crate) fn result_text(json: &Value) -> Option<String> {
    let result = json.get("result")?;
    let text = match result {
        Value::Array(items) => items.iter().filter_map(|item| item.get("text")?.as_str()).collect::<Vec<_>>().join(""),
        other => other.get("text")?.as_str()?.to_owned(),
    };
    Some(text)
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Asr>, ProviderError> {
    Ok(Arc::new(DoubaoStreamAsr::new(cfg.clone())?))
}

/// The streaming recognizer.
pub struct DoubaoStreamAsr {
    cfg: Config,
    url: String,
    timeout: Duration,
}

impl DoubaoStreamAsr {
    /// Validates the entry (URL, timeout); credentials are checked at request time.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let url = if cfg.ws_url.trim().is_empty() { DEFAULT_WS_URL.to_owned() } else { cfg.ws_url.trim().to_owned() };
        match reqwest::Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "ws" | "wss") => {}
            _ => {
                return Err(ProviderError::Config(format!(
                    "ASR.doubao_stream: ws_url `{url}` is not a ws:// or wss:// URL"
                )));
            }
        }
        let timeout = timeout_from(cfg.timeout, "ASR.doubao_stream")?;
        Ok(Self { cfg, url, timeout })
    }

    async fn start(&self) -> Result<DoubaoRecognition, ProviderError> {
        for (key, value) in [("appid", &self.cfg.appid), ("access_token", &self.cfg.access_token)] {
            if value.trim().is_empty() {
                return Err(ProviderError::Config(format!("ASR.doubao_stream: {key} is not set")));
            }
        }
        let headers = [
            ("X-Api-App-Key", self.cfg.appid.trim().to_owned()),
            ("X-Api-Access-Key", self.cfg.access_token.trim().to_owned()),
            ("X-Api-Resource-Id", self.cfg.resource_id.trim().to_owned()),
            ("X-Api-Connect-Id", uuid::Uuid::new_v4().to_string()),
        ];
        let ws: WsStream = ws_connect(&self.url, &headers, self.timeout, "ASR.doubao_stream connection").await?;
        let (sink, stream) = ws.split();
        let url = url_without_query(&self.url);
        let reader = tokio::spawn(read_results(stream, url.clone()));
        let mut recognition = DoubaoRecognition {
            sink,
            reader: Some(reader),
            url,
            timeout: self.timeout,
            sequence: 1,
            pending: Vec::new(),
        };
        let request = self.cfg.request().to_string();
        recognition.send(client_frame(FULL_CLIENT_REQUEST, JSON_SERIALIZATION, 1, request.as_bytes())).await?;
        Ok(recognition)
    }
}

/// Reads the server's responses until the last one: the final text, or the vendor's error.
async fn read_results(mut stream: SplitStream<WsStream>, url: String) -> Result<String, ProviderError> {
    let protocol = |message: String| ProviderError::Protocol { url: url.clone(), message };
    let mut text = String::new();
    loop {
        let message = match stream.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                return Err(ProviderError::Transport { url: url.clone(), message: crate::remote::error_chain(&e) });
            }
            None => {
                return Err(ProviderError::Transport {
                    url: url.clone(),
                    message: "the service closed the connection before the last result".into(),
                });
            }
        };
        let data = match message {
            Message::Binary(data) => data,
            Message::Text(text) => return Err(protocol(format!("a text message: {}", body_start(text.as_bytes())))),
            Message::Close(_) => {
                return Err(ProviderError::Transport {
                    url: url.clone(),
                    message: "the service closed the connection before the last result".into(),
                });
            }
            _ => continue,
        };
        match parse_frame(&data).map_err(protocol)? {
            ServerFrame::Error { code, message } => {
                return Err(protocol(format!("Volcengine ASR error {code}: {message}")));
            }
            ServerFrame::Response { last, json, .. } => {
                if let Some(latest) = result_text(&json) {
                    text = latest;
                }
                if last {
                    return Ok(text.trim().to_owned());
                }
            }
        }
    }
}

/// One utterance being recognised.
pub struct DoubaoRecognition {
    sink: SplitSink<WsStream, Message>,
    reader: Option<JoinHandle<Result<String, ProviderError>>>,
    url: String,
    timeout: Duration,
    /// The sequence number of the last packet sent.
    sequence: i32,
    /// Audio not sent yet (less than a packet).
    pending: Vec<i16>,
}

impl Drop for DoubaoRecognition {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

impl DoubaoRecognition {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), ProviderError> {
        match tokio::time::timeout(self.timeout, self.sink.send(Message::Binary(frame.into()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                Err(ProviderError::Transport { url: self.url.clone(), message: crate::remote::error_chain(&e) })
            }
            Err(_) => Err(ProviderError::Timeout {
                what: "ASR.doubao_stream send".into(),
                seconds: self.timeout.as_secs().max(1),
            }),
        }
    }

    /// The reader's error, if it has already ended (the service refused or failed).
    async fn early_error(&mut self) -> Result<(), ProviderError> {
        if self.reader.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(reader) = self.reader.take()
        {
            return match reader.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(ProviderError::Protocol {
                    url: self.url.clone(),
                    message: "the service ended the recognition before the end of speech".into(),
                }),
                Err(e) => Err(ProviderError::Protocol { url: self.url.clone(), message: e.to_string() }),
            };
        }
        Ok(())
    }

    async fn send_audio(&mut self, samples: &[i16], last: bool) -> Result<(), ProviderError> {
        self.sequence += 1;
        let sequence = if last { -self.sequence } else { self.sequence };
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        self.send(client_frame(AUDIO_ONLY_REQUEST, NO_SERIALIZATION, sequence, &bytes)).await
    }
}

#[async_trait]
impl Recognition for DoubaoRecognition {
    async fn push(&mut self, pcm: &[i16]) -> Result<(), ProviderError> {
        self.early_error().await?;
        self.pending.extend_from_slice(pcm);
        while self.pending.len() >= PACKET_SAMPLES {
            let packet: Vec<i16> = self.pending.drain(..PACKET_SAMPLES).collect();
            self.send_audio(&packet, false).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<String, ProviderError> {
        self.early_error().await?;
        let rest = std::mem::take(&mut self.pending);
        self.send_audio(&rest, true).await?;
        let Some(reader) = self.reader.take() else {
            return Err(ProviderError::Protocol { url: self.url.clone(), message: "no reader".into() });
        };
        let abort = reader.abort_handle();
        match tokio::time::timeout(self.timeout, reader).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(ProviderError::Protocol { url: self.url.clone(), message: e.to_string() }),
            Err(_) => {
                abort.abort();
                Err(ProviderError::Timeout {
                    what: "ASR.doubao_stream final result".into(),
                    seconds: self.timeout.as_secs().max(1),
                })
            }
        }
    }
}

#[async_trait]
impl super::Asr for DoubaoStreamAsr {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        let mut recognition = Box::new(self.start().await?);
        recognition.push(pcm).await?;
        recognition.finish().await
    }

    async fn open(&self) -> Option<Result<Box<dyn Recognition>, ProviderError>> {
        Some(self.start().await.map(|r| Box::new(r) as Box<dyn Recognition>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asr::Asr;

    fn gz(data: &[u8]) -> Vec<u8> {
        gzip(data)
    }

    #[test]
    fn client_frames_follow_the_documented_layout() {
        // Full client request: 0x11 (v1, 4-byte header), 0x11 (full client request, positive
        // sequence), 0x11 (JSON, gzip), 0x00; sequence 1; payload size; gzip(JSON).
        let frame = client_frame(FULL_CLIENT_REQUEST, JSON_SERIALIZATION, 1, b"{}");
        assert_eq!(frame[..8], [0x11, 0x11, 0x11, 0x00, 0, 0, 0, 1]);
        let size = u32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]) as usize;
        assert_eq!(size, frame.len() - 12);
        assert_eq!(gunzip(&frame[12..]).expect("gzip"), b"{}");
        // Audio-only request: 0x21 (audio only, positive sequence), 0x01 (raw, gzip).
        let frame = client_frame(AUDIO_ONLY_REQUEST, NO_SERIALIZATION, 2, &[1, 0, 2, 0]);
        assert_eq!(frame[..8], [0x11, 0x21, 0x01, 0x00, 0, 0, 0, 2]);
        assert_eq!(gunzip(&frame[12..]).expect("gzip"), [1, 0, 2, 0]);
        // The last packet: 0x23 (last, negative sequence), sequence -3.
        let frame = client_frame(AUDIO_ONLY_REQUEST, NO_SERIALIZATION, -3, &[]);
        assert_eq!(frame[..8], [0x11, 0x23, 0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xFD]);
    }

    #[test]
    fn server_frames_parse() {
        let json = br#"{"audio_info":{"duration":1200},"result":{"text":"ni hao","utterances":[{"definite":true,"text":"ni hao"}]}}"#;
        let body = gz(json);
        let mut frame = vec![0x11, 0x91, 0x11, 0x00, 0, 0, 0, 2];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        match parse_frame(&frame).expect("parses") {
            ServerFrame::Response { sequence, last, json } => {
                assert_eq!((sequence, last), (Some(2), false));
                assert_eq!(result_text(&json).as_deref(), Some("ni hao"));
            }
            other => panic!("{other:?}"),
        }
        // The last response: flags 0b0011, negative sequence.
        let mut last = vec![0x11, 0x93, 0x11, 0x00, 0xFF, 0xFF, 0xFF, 0xFD];
        last.extend_from_slice(&(body.len() as u32).to_be_bytes());
        last.extend_from_slice(&body);
        assert!(matches!(parse_frame(&last), Ok(ServerFrame::Response { last: true, sequence: Some(-3), .. })));
        // A result list (older answers).
        assert_eq!(result_text(&json!({"result": [{"text": "a"}, {"text": "b"}]})).as_deref(), Some("ab"));
        // Broken frames.
        assert!(parse_frame(&frame[..14]).is_err());
        assert!(parse_frame(&[0x11, 0x71, 0, 0]).is_err());
    }

    #[test]
    fn error_frames_carry_the_vendor_code() {
        let message = b"[Invalid audio format]";
        let mut frame = vec![0x11, 0xF0, 0x10, 0x00];
        frame.extend_from_slice(&45_000_151u32.to_be_bytes());
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        assert_eq!(
            parse_frame(&frame).expect("parses"),
            ServerFrame::Error { code: 45_000_151, message: "[Invalid audio format]".into() }
        );
    }

    #[test]
    fn python_keys_request_and_build() {
        let yaml = "appid: 123456\naccess_token: tok-secret\nresource_id: volc.seedasr.sauc.duration\n\
                    boosting_table_name: hot\ncorrect_table_name: \"\"\nenable_multilingual: True\n\
                    language: en-US\nend_window_size: 600\noutput_dir: tmp/\ncluster: volcengine_input_common\n";
        let cfg: Config = serde_yaml_ng::from_str(yaml).expect("parses");
        assert_eq!(cfg.appid, "123456");
        assert!(!format!("{cfg:?}").contains("tok-secret"));
        let request = cfg.request();
        assert_eq!(request["audio"]["rate"], 16000);
        assert_eq!(request["audio"]["format"], "pcm");
        assert_eq!(request["audio"]["language"], "en-US");
        assert_eq!(request["request"]["end_window_size"], 600);
        assert_eq!(request["request"]["corpus"], json!({"boosting_table_name": "hot"}));
        assert!(build(&Config::default()).is_ok());
        assert!(matches!(
            build(&Config { ws_url: "http://x".into(), ..Config::default() }),
            Err(ProviderError::Config(_))
        ));
    }

    #[tokio::test]
    async fn missing_credentials_are_named() {
        let asr = DoubaoStreamAsr::new(Config { access_token: "t".into(), ..Config::default() }).expect("builds");
        match asr.transcribe(&[0; 160]).await {
            Err(ProviderError::Config(message)) => assert!(message.contains("appid"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
