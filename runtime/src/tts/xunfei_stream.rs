//! `type: xunfei_stream`: iFlytek (Xunfei, 讯飞开放平台) super-natural synthesis (超拟人合成,
//! `wss://cbm01.cn-huabei-1.xf-yun.com/v1/private/mcd9m97e6`), the interface of the Python
//! provider. Documentation: "超拟人合成 API 文档" (<https://www.xfyun.cn/doc/spark/super%20smart-tts.html>)
//! and the platform's WebSocket authentication (see [`crate::remote::xunfei`]).
//!
//! One signed WebSocket per sentence. Requests are `{header: {app_id, status}, parameter: {oral:
//! {...}, tts: {vcn, speed, volume, pitch, ..., audio: {encoding, sample_rate, ...}}}, payload:
//! {text: {status, seq, text: base64}}}`. The platform takes text as it is written: the sentence
//! opens with status 0, each piece follows with status 1 and status 2 ends it (the Python
//! provider's order), so synthesis starts from the sentence's first words ([`Tts::speak_text`]); a
//! whole sentence goes in one status 2 request. Audio comes back as `payload.audio.audio`
//! (base64, raw 16-bit PCM or MP3 as asked) and is forwarded as it arrives; `header.status` 2 (or
//! `payload.audio.status` 2) is the last answer; `header.code` other than 0 is an error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{AudioChunk, AudioStream, TextStream, Tts, channel_stream, silence};
use crate::audio::chunks::ChunkDecoder;
use crate::audio::decode::AudioFormat;
use crate::remote::xunfei::{Endpoint, Secret, lenient_int, lenient_string, require, vendor_error};
use crate::remote::{ProviderError, WsStream, timeout_from, ws_connect};

/// The super-natural synthesis endpoint of the Python provider.
pub const DEFAULT_URL: &str = "wss://cbm01.cn-huabei-1.xf-yun.com/v1/private/mcd9m97e6";

/// How the entry is named in errors.
const WHAT: &str = "TTS.xunfei_stream";

/// `TTS.<name>` with `type: xunfei_stream`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The synthesis endpoint.
    pub api_url: String,
    /// The application's APPID.
    #[serde(deserialize_with = "lenient_string")]
    pub app_id: String,
    /// The APIKey (signs the URL).
    pub api_key: Secret,
    /// The APISecret (signs the URL).
    pub api_secret: Secret,
    /// The voice (`vcn`).
    #[serde(deserialize_with = "lenient_string")]
    pub voice: String,
    /// A custom voice; used instead of `voice` when set.
    #[serde(deserialize_with = "lenient_string")]
    pub private_voice: String,
    /// 0..100, default 50.
    #[serde(deserialize_with = "lenient_int")]
    pub speed: Option<i64>,
    /// 0..100, default 50.
    #[serde(deserialize_with = "lenient_int")]
    pub volume: Option<i64>,
    /// 0..100, default 50.
    #[serde(deserialize_with = "lenient_int")]
    pub pitch: Option<i64>,
    /// `raw` (16-bit PCM, streamed) or `lame` (MP3, decoded at the end of the sentence).
    #[serde(deserialize_with = "lenient_string")]
    pub format: String,
    /// Sample rate asked for, default 24000.
    #[serde(deserialize_with = "lenient_int")]
    pub sample_rate: Option<i64>,
    /// `parameter.oral.oral_level`: how colloquial (`low`, `mid`, `high`).
    #[serde(deserialize_with = "lenient_string")]
    pub oral_level: String,
    /// `parameter.oral.spark_assist` (1: the large model makes the text colloquial).
    #[serde(deserialize_with = "lenient_int")]
    pub spark_assist: Option<i64>,
    /// `parameter.oral.stop_split` (1: the platform does not split the text into sentences).
    #[serde(deserialize_with = "lenient_int")]
    pub stop_split: Option<i64>,
    /// `parameter.oral.remain` (1: keep the original wording).
    #[serde(deserialize_with = "lenient_int")]
    pub remain: Option<i64>,
    /// Accepted for the Python entry; audio is not written to disk here.
    pub output_dir: Option<String>,
    /// Seconds allowed for the connection and for each answer.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_url: DEFAULT_URL.into(),
            app_id: String::new(),
            api_key: Secret::default(),
            api_secret: Secret::default(),
            voice: "x5_lingxiaoxuan_flow".into(),
            private_voice: String::new(),
            speed: None,
            volume: None,
            pitch: None,
            format: "raw".into(),
            sample_rate: None,
            oral_level: "mid".into(),
            spark_assist: None,
            stop_split: None,
            remain: None,
            output_dir: None,
            timeout: 10,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &self.api_url)
            .field("app_id", &self.app_id)
            .field("api_key", &self.api_key)
            .field("api_secret", &self.api_secret)
            .field("voice", &self.voice)
            .field("private_voice", &self.private_voice)
            .field("speed", &self.speed)
            .field("volume", &self.volume)
            .field("pitch", &self.pitch)
            .field("format", &self.format)
            .field("sample_rate", &self.sample_rate)
            .field("oral_level", &self.oral_level)
            .field("spark_assist", &self.spark_assist)
            .field("stop_split", &self.stop_split)
            .field("remain", &self.remain)
            .field("output_dir", &self.output_dir)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("{} (voice {}, {} at {} Hz)", self.api_url.trim(), self.vcn(), self.format.trim(), self.rate())
    }

    /// The voice asked for: `private_voice` when set, else `voice`.
    fn vcn(&self) -> &str {
        match self.private_voice.trim() {
            "" => self.voice.trim(),
            private => private,
        }
    }

    fn rate(&self) -> i64 {
        self.sample_rate.unwrap_or(24_000)
    }

    /// `parameter` of every request.
    fn parameters(&self) -> Value {
        json!({
            "oral": {
                "oral_level": self.oral_level.trim(),
                "spark_assist": self.spark_assist.unwrap_or(1),
                "stop_split": self.stop_split.unwrap_or(0),
                "remain": self.remain.unwrap_or(0),
            },
            "tts": {
                "vcn": self.vcn(),
                "speed": self.speed.unwrap_or(50),
                "volume": self.volume.unwrap_or(50),
                "pitch": self.pitch.unwrap_or(50),
                "bgs": 0,
                "reg": 0,
                "rdn": 0,
                "rhy": 0,
                "audio": {
                    "encoding": self.format.trim().to_ascii_lowercase(),
                    "sample_rate": self.rate(),
                    "channels": 1,
                    "bit_depth": 16,
                    "frame_size": 0,
                },
            },
        })
    }
}

/// Builds the backend of a validated entry. Empty credentials are an error at request time.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(XunfeiTts::new(cfg.clone())?))
}

/// The audio encoding asked of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// 16-bit little-endian mono PCM.
    Raw,
    /// MP3.
    Lame,
}

/// The iFlytek super-natural synthesis backend.
pub struct XunfeiTts {
    cfg: Config,
    endpoint: Endpoint,
    timeout: Duration,
    encoding: Encoding,
    sample_rate: u32,
}

/// One open synthesis session: what the sentence's task needs.
struct Session {
    ws: WsStream,
    app_id: String,
    parameters: Value,
}

impl XunfeiTts {
    /// Checks the entry's URL, format, sample rate and timeout.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let endpoint = Endpoint::parse(&cfg.api_url, WHAT)?;
        let timeout = timeout_from(cfg.timeout, WHAT)?;
        let encoding = match cfg.format.trim().to_ascii_lowercase().as_str() {
            "raw" | "" => Encoding::Raw,
            "lame" => Encoding::Lame,
            other => {
                return Err(ProviderError::Config(format!(
                    "{WHAT}: format `{other}` is not supported here (raw or lame)"
                )));
            }
        };
        let sample_rate = match cfg.rate() {
            rate @ (8_000 | 16_000 | 24_000) => rate as u32,
            other => {
                return Err(ProviderError::Config(format!("{WHAT}: sample_rate {other} is not 8000, 16000 or 24000")));
            }
        };
        let cfg = Config { format: if encoding == Encoding::Raw { "raw".into() } else { "lame".into() }, ..cfg };
        Ok(Self { cfg, endpoint, timeout, encoding, sample_rate })
    }

    /// Checks the credentials and connects with a signed URL.
    async fn connect(&self) -> Result<Session, ProviderError> {
        let app_id = require(&self.cfg.app_id, "app_id", WHAT)?.to_owned();
        let api_key = require(self.cfg.api_key.expose(), "api_key", WHAT)?;
        let api_secret = require(self.cfg.api_secret.expose(), "api_secret", WHAT)?;
        let url = self.endpoint.signed_now(api_key, api_secret);
        let ws = ws_connect(&url, &[], self.timeout, "iFlytek TTS connection").await?;
        Ok(Session { ws, app_id, parameters: self.cfg.parameters() })
    }

    fn reader(&self) -> AudioReader {
        AudioReader::new(self.encoding, self.sample_rate, self.endpoint.as_str())
    }
}

#[async_trait]
impl Tts for XunfeiTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let text = text.trim();
        if text.is_empty() {
            // Nothing to say: no request, no audio.
            return Ok(silence());
        }
        let session = self.connect().await?;
        let (tx, rx) = mpsc::channel(64);
        let frame = request(&session.app_id, &session.parameters, 2, 0, text);
        let (reader, timeout, url) = (self.reader(), self.timeout, self.endpoint.as_str().to_owned());
        tokio::spawn(async move {
            let Session { mut ws, .. } = session;
            let sent = tokio::time::timeout(timeout, ws.send(Message::text(frame.to_string()))).await;
            if let Err(e) = sent_result(sent, &url, timeout) {
                let _ = tx.send(Err(e)).await;
                return;
            }
            let (_sink, stream) = ws.split();
            pump(stream, reader, tx, timeout, None).await;
        });
        Ok(channel_stream(rx))
    }

    fn streams_text(&self) -> bool {
        true
    }

    async fn speak_text(&self, text: TextStream) -> Result<AudioStream, ProviderError> {
        // Connected while the first words are still being written.
        let session = self.connect().await?;
        let (tx, rx) = mpsc::channel(64);
        let (reader, timeout, url) = (self.reader(), self.timeout, self.endpoint.as_str().to_owned());
        tokio::spawn(async move {
            let Session { ws, app_id, parameters } = session;
            let (sink, stream) = ws.split();
            let writer = TextWriter { sink, app_id, parameters, url, timeout, seq: 0, started: false };
            pump(stream, reader, tx, timeout, Some((text, writer))).await;
        });
        Ok(channel_stream(rx))
    }
}

/// The outcome of a send within the timeout.
fn sent_result(
    sent: Result<Result<(), tokio_tungstenite::tungstenite::Error>, tokio::time::error::Elapsed>,
    url: &str,
    timeout: Duration,
) -> Result<(), ProviderError> {
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ProviderError::Transport {
            url: url.to_owned(),
            message: format!("sending text failed: {}", crate::remote::error_chain(&e)),
        }),
        Err(_) => Err(ProviderError::Timeout { what: "iFlytek TTS request".into(), seconds: timeout.as_secs() }),
    }
}

/// Sends the text of one sentence as it is written.
struct TextWriter {
    sink: futures_util::stream::SplitSink<WsStream, Message>,
    app_id: String,
    parameters: Value,
    url: String,
    timeout: Duration,
    seq: u64,
    /// Whether the status 0 request went out.
    started: bool,
}

impl TextWriter {
    async fn send(&mut self, status: u8, text: &str) -> Result<(), ProviderError> {
        let frame = request(&self.app_id, &self.parameters, status, self.seq, text);
        self.seq += 1;
        let sent = tokio::time::timeout(self.timeout, self.sink.send(Message::text(frame.to_string()))).await;
        sent_result(sent, &self.url, self.timeout)
    }

    /// A piece of the sentence (blank pieces are skipped; the first opens the sentence).
    async fn piece(&mut self, piece: &str) -> Result<(), ProviderError> {
        if piece.trim().is_empty() {
            return Ok(());
        }
        if !self.started {
            self.started = true;
            self.send(0, " ").await?;
        }
        self.send(1, piece).await
    }

    /// The end of the sentence; `false` when it had no text (nothing was asked).
    async fn end(&mut self) -> Result<bool, ProviderError> {
        if !self.started {
            return Ok(false);
        }
        self.send(2, " ").await?;
        Ok(true)
    }
}

/// Reads the answers of one sentence into `tx` until the last one, an error, or the listener
/// leaving (which drops the connection). With `text`, also sends the sentence as it is written.
/// Waits for answers are bounded by `timeout` once the whole text is sent.
async fn pump(
    mut stream: futures_util::stream::SplitStream<WsStream>,
    mut reader: AudioReader,
    tx: mpsc::Sender<Result<AudioChunk, ProviderError>>,
    timeout: Duration,
    text: Option<(TextStream, TextWriter)>,
) {
    let (mut text, mut writer) = match text {
        Some((text, writer)) => (Some(text), Some(writer)),
        None => (None, None),
    };
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        let text_open = text.is_some();
        tokio::select! {
            biased;
            _ = tx.closed() => return,
            piece = async { text.as_mut()?.recv().await }, if text_open => {
                let Some(writer) = writer.as_mut() else { return };
                let sent = match piece {
                    Some(piece) => writer.piece(&piece).await.map(|_| true),
                    None => {
                        text = None;
                        deadline = tokio::time::Instant::now() + timeout;
                        writer.end().await
                    }
                };
                match sent {
                    Ok(true) => {}
                    // The sentence had no words: no audio, and the stream ends.
                    Ok(false) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline), if !text_open => {
                let _ = tx.send(Err(ProviderError::Timeout {
                    what: "iFlytek TTS audio".into(),
                    seconds: timeout.as_secs(),
                })).await;
                return;
            }
            message = stream.next() => {
                deadline = tokio::time::Instant::now() + timeout;
                let step = match message {
                    None => Err(reader.broken("the connection closed before the last audio")),
                    Some(Err(e)) => Err(reader.broken(&format!(
                        "the connection broke: {}",
                        crate::remote::error_chain(&e)
                    ))),
                    Some(Ok(Message::Text(answer))) => reader.answer(answer.as_str()),
                    Some(Ok(Message::Close(_))) => Err(reader.broken("the platform closed the connection before the last audio")),
                    Some(Ok(_)) => Ok((Vec::new(), false)),
                };
                match step {
                    Ok((chunks, last)) => {
                        for chunk in chunks {
                            if tx.send(Ok(chunk)).await.is_err() {
                                return;
                            }
                        }
                        if last {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        }
    }
}

/// One request of the protocol.
fn request(app_id: &str, parameters: &Value, status: u8, seq: u64, text: &str) -> Value {
    json!({
        "header": {"app_id": app_id, "status": status},
        "parameter": parameters,
        "payload": {"text": {
            "encoding": "utf8",
            "compress": "raw",
            "format": "plain",
            "status": status,
            "seq": seq,
            "text": BASE64.encode(text.as_bytes()),
        }},
    })
}

/// Turns the answers of one sentence into audio chunks.
struct AudioReader {
    encoding: Encoding,
    sample_rate: u32,
    url: String,
    /// The odd byte of raw PCM split between answers.
    carry: Option<u8>,
    /// MP3 answers, decoded at the end.
    mp3: Option<ChunkDecoder>,
}

impl AudioReader {
    fn new(encoding: Encoding, sample_rate: u32, url: &str) -> Self {
        let mp3 = (encoding == Encoding::Lame).then(|| ChunkDecoder::new(AudioFormat::Mp3));
        Self { encoding, sample_rate, url: url.to_owned(), carry: None, mp3 }
    }

    fn broken(&self, message: &str) -> ProviderError {
        ProviderError::Protocol { url: self.url.clone(), message: message.to_owned() }
    }

    /// One answer: the audio it completes, and whether it is the last.
    fn answer(&mut self, text: &str) -> Result<(Vec<AudioChunk>, bool), ProviderError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            self.broken(&format!("an answer is not JSON ({e}): {}", text.chars().take(200).collect::<String>()))
        })?;
        let header = value.get("header").cloned().unwrap_or(Value::Null);
        if header.get("code").and_then(Value::as_i64).unwrap_or(0) != 0 {
            return Err(vendor_error(&self.url, &header));
        }
        let audio = value.pointer("/payload/audio");
        let last = header.get("status").and_then(Value::as_i64) == Some(2)
            || audio.and_then(|a| a.get("status")).and_then(Value::as_i64) == Some(2);
        let mut chunks = Vec::new();
        if let Some(encoded) = audio.and_then(|a| a.get("audio")).and_then(Value::as_str)
            && !encoded.is_empty()
        {
            let bytes = BASE64.decode(encoded).map_err(|e| self.broken(&format!("audio is not base64: {e}")))?;
            let rate = audio
                .and_then(|a| a.get("sample_rate"))
                .and_then(Value::as_u64)
                .and_then(|r| u32::try_from(r).ok())
                .filter(|r| *r > 0)
                .unwrap_or(self.sample_rate);
            chunks.extend(self.decode(&bytes, rate)?);
        }
        if last && let Some(decoder) = self.mp3.take() {
            chunks.extend(decoder.finish().map_err(|e| self.broken(&format!("the MP3 audio: {e}")))?);
        }
        Ok((chunks, last))
    }

    fn decode(&mut self, bytes: &[u8], rate: u32) -> Result<Vec<AudioChunk>, ProviderError> {
        match self.encoding {
            Encoding::Raw => {
                let mut data = Vec::with_capacity(bytes.len() + 1);
                data.extend(self.carry.take());
                data.extend_from_slice(bytes);
                if data.len() % 2 == 1 {
                    self.carry = data.pop();
                }
                let samples: Vec<i16> = data.chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]])).collect();
                Ok(if samples.is_empty() { Vec::new() } else { vec![AudioChunk::Pcm { samples, sample_rate: rate }] })
            }
            Encoding::Lame => match self.mp3.as_mut() {
                Some(decoder) => decoder.push(bytes).map_err(|e| self.broken(&format!("the MP3 audio: {e}"))),
                None => Ok(Vec::new()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio_answer(status: i64, seq: i64, pcm: &[i16]) -> String {
        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        json!({
            "header": {"code": 0, "message": "success", "sid": "tts000@dx1", "status": status},
            "payload": {"audio": {
                "encoding": "raw", "sample_rate": 24000, "channels": 1, "bit_depth": 16,
                "status": status, "seq": seq, "frame_size": 0, "audio": BASE64.encode(bytes),
            }},
        })
        .to_string()
    }

    #[test]
    fn requests_carry_the_python_parameters_and_base64_text() {
        let cfg = Config { app_id: "123456".into(), speed: Some(60), ..Config::default() };
        let frame = request("123456", &cfg.parameters(), 1, 3, "你好");
        assert_eq!(
            frame,
            json!({
                "header": {"app_id": "123456", "status": 1},
                "parameter": {
                    "oral": {"oral_level": "mid", "spark_assist": 1, "stop_split": 0, "remain": 0},
                    "tts": {
                        "vcn": "x5_lingxiaoxuan_flow", "speed": 60, "volume": 50, "pitch": 50,
                        "bgs": 0, "reg": 0, "rdn": 0, "rhy": 0,
                        "audio": {"encoding": "raw", "sample_rate": 24000, "channels": 1, "bit_depth": 16, "frame_size": 0},
                    },
                },
                "payload": {"text": {
                    "encoding": "utf8", "compress": "raw", "format": "plain", "status": 1, "seq": 3,
                    "text": "5L2g5aW9",
                }},
            })
        );
        let private = Config { private_voice: "x5_custom".into(), ..Config::default() };
        assert_eq!(private.parameters()["tts"]["vcn"], "x5_custom");
    }

    #[test]
    fn raw_audio_answers_become_pcm_chunks_until_the_last() {
        let mut reader = AudioReader::new(Encoding::Raw, 24_000, "wss://x/v1");
        let (chunks, last) = reader.answer(&audio_answer(1, 1, &[1, 2, 3])).expect("audio");
        assert_eq!(chunks, vec![AudioChunk::Pcm { samples: vec![1, 2, 3], sample_rate: 24_000 }]);
        assert!(!last);
        let (chunks, last) = reader.answer(&audio_answer(2, 2, &[])).expect("end");
        assert!(chunks.is_empty() && last);
        // An odd byte waits for the next answer.
        let mut reader = AudioReader::new(Encoding::Raw, 16_000, "wss://x/v1");
        let odd = json!({"header": {"code": 0, "status": 1}, "payload": {"audio": {"status": 1, "audio": BASE64.encode([1u8, 0, 2])}}});
        let (chunks, _) = reader.answer(&odd.to_string()).expect("audio");
        assert_eq!(chunks, vec![AudioChunk::Pcm { samples: vec![1], sample_rate: 16_000 }]);
        let rest = json!({"header": {"code": 0, "status": 2}, "payload": {"audio": {"status": 2, "audio": BASE64.encode([0u8])}}});
        let (chunks, last) = reader.answer(&rest.to_string()).expect("audio");
        assert_eq!(chunks, vec![AudioChunk::Pcm { samples: vec![2], sample_rate: 16_000 }]);
        assert!(last);
    }

    #[test]
    fn an_error_frame_becomes_an_error() {
        let mut reader = AudioReader::new(Encoding::Raw, 24_000, "wss://cbm01/v1/private/x?authorization=secret");
        let frame = json!({"header": {"code": 11200, "message": "auth no license", "sid": "tts000@dx7", "status": 2}});
        let err = reader.answer(&frame.to_string()).expect_err("error");
        let text = err.to_string();
        assert!(text.contains("11200") && text.contains("auth no license") && text.contains("tts000@dx7"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(reader.answer("{oops").is_err());
    }

    #[test]
    fn keys_of_the_python_entry_are_read() {
        let yaml = "api_url: wss://cbm01.cn-huabei-1.xf-yun.com/v1/private/mcd9m97e6\napp_id: 1234\napi_secret: s\napi_key: k\nvoice: x5_lingxiaoxuan_flow\noutput_dir: tmp/\nprivate_voice: \"\"\nspeed: \"55\"\nvolume: 50\npitch: \"\"\nformat: raw\nsample_rate: \"16000\"\noral_level: high\nspark_assist: \"0\"\nstop_split: 1\nremain: 0\n";
        let cfg: Config = serde_yaml_ng::from_str(yaml).expect("parses");
        assert_eq!(
            (cfg.app_id.as_str(), cfg.speed, cfg.pitch, cfg.sample_rate),
            ("1234", Some(55), None, Some(16_000))
        );
        let tts = XunfeiTts::new(cfg.clone()).expect("builds");
        assert_eq!(tts.sample_rate, 16_000);
        assert_eq!(
            cfg.parameters()["oral"],
            json!({"oral_level": "high", "spark_assist": 0, "stop_split": 1, "remain": 0})
        );
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("\"k\"") && !debug.contains("\"s\""), "{debug}");
        assert!(XunfeiTts::new(Config { format: "speex".into(), ..Config::default() }).is_err());
        assert!(XunfeiTts::new(Config { sample_rate: Some(44_100), ..Config::default() }).is_err());
        assert!(XunfeiTts::new(Config { api_url: "https://x".into(), ..Config::default() }).is_err());
    }

    #[tokio::test]
    async fn missing_credentials_are_an_error_at_request_time() {
        let tts = XunfeiTts::new(Config::default()).expect("builds without credentials");
        let err = tts.speak("你好").await.err().expect("no credentials");
        assert!(err.to_string().contains("app_id is not set"), "{err}");
        let tts = XunfeiTts::new(Config { app_id: "a".into(), api_key: Secret("k".into()), ..Config::default() })
            .expect("builds");
        let err = tts.speak("你好").await.err().expect("no secret");
        assert!(err.to_string().contains("api_secret is not set"), "{err}");
        assert!(tts.speak("  ").await.is_ok(), "blank text asks nothing");
    }
}
