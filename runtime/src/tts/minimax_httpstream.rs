//! `type: minimax_httpstream`: MiniMax T2A v2 (speech synthesis) streamed over HTTP.
//!
//! One `POST https://api.minimax.chat/v1/t2a_v2?GroupId=<group_id>` per sentence with
//! `Authorization: Bearer <api_key>` and a JSON body (`model`, `text`, `stream: true`,
//! `voice_setting`, `pronunciation_dict`, `audio_setting`, `timber_weights`). The answer is a
//! server-sent event stream of `data: {...}` lines: each `data.audio` (hex) with `data.status` 1
//! is the next piece of audio, decoded and played as it arrives (MP3 frame by frame, or raw PCM);
//! the last event (`data.status` 2, with `extra_info`) repeats the whole audio and is skipped. A
//! `base_resp.status_code` other than 0 is the vendor's error (1004: authentication failed, 1002:
//! rate limited, ...), in the stream or as a plain JSON answer. `timeout` bounds the connection
//! and every pause in the answer. Dropping the stream cancels the request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Client;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{AudioChunk, AudioStream, channel_stream, silence};
use crate::audio::chunks::ChunkDecoder;
use crate::audio::decode::AudioFormat;
use crate::remote::{ProviderError, check_url, request_error, status_error, streaming_client, timeout_from};

/// The T2A v2 endpoint.
pub const DEFAULT_URL: &str = "https://api.minimax.chat/v1/t2a_v2";
/// Longest SSE line read; longer ones (the closing event repeating the whole audio) are skipped.
const MAX_LINE: usize = 1 << 20;
/// Most bytes of a JSON (error) answer read.
const MAX_JSON_ANSWER: usize = 64 * 1024;

/// `TTS.<name>` with `type: minimax_httpstream`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The account's group id (`GroupId` in the URL; a number or a string).
    #[serde(deserialize_with = "string_or_number")]
    pub group_id: String,
    /// The API key (`Authorization: Bearer`).
    pub api_key: String,
    /// `speech-01-turbo`, `speech-02-hd`, ...
    pub model: String,
    /// The voice (`female-shaonv`, ...); replaces `voice_setting.voice_id`.
    pub voice_id: String,
    /// Python server compatibility: a voice that replaces `voice_id` when set.
    pub private_voice: Option<String>,
    /// Merged over `{voice_id, speed: 1, vol: 1, pitch: 0, emotion: happy}`.
    pub voice_setting: Map<String, Value>,
    /// Sent as it is when not empty (`{tone: ["处理/(chu3)(li3)"]}`).
    pub pronunciation_dict: Map<String, Value>,
    /// Merged over `{sample_rate: 32000, bitrate: 128000, format: mp3, channel: 1}`; `format` is
    /// `mp3` or `pcm` (the formats MiniMax streams that are decoded as they arrive).
    pub audio_setting: Map<String, Value>,
    /// Voice mixing: a list of `{voice_id, weight}`, or `voice:weight;voice:weight`; when set,
    /// `voice_setting.voice_id` is sent empty, as MiniMax requires.
    pub timber_weights: Value,
    /// Python server compatibility; not used (no audio is written).
    pub output_dir: Option<String>,
    /// Seconds for the connection and for each pause in the answer.
    pub timeout: u64,
    /// The endpoint; the official one unless testing or using `api.minimaxi.com`.
    pub api_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            group_id: String::new(),
            api_key: String::new(),
            model: "speech-01-turbo".into(),
            voice_id: "female-shaonv".into(),
            private_voice: None,
            voice_setting: Map::new(),
            pronunciation_dict: Map::new(),
            audio_setting: Map::new(),
            timber_weights: Value::Null,
            output_dir: None,
            timeout: 10,
            api_url: DEFAULT_URL.into(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("group_id", &self.group_id)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "<set>" })
            .field("model", &self.model)
            .field("voice_id", &self.voice_id)
            .field("private_voice", &self.private_voice)
            .field("voice_setting", &self.voice_setting)
            .field("pronunciation_dict", &self.pronunciation_dict)
            .field("audio_setting", &self.audio_setting)
            .field("timber_weights", &self.timber_weights)
            .field("output_dir", &self.output_dir)
            .field("timeout", &self.timeout)
            .field("api_url", &self.api_url)
            .finish()
    }
}

/// A string, or a number written without quotes (`group_id: 1234567890`).
fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(serde::de::Error::custom(format!("expected a string or a number, got {other}"))),
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("model {}, voice {}, {}", self.model, self.voice(), self.api_url)
    }

    fn voice(&self) -> &str {
        match self.private_voice.as_deref().map(str::trim) {
            Some(private) if !private.is_empty() => private,
            _ => self.voice_id.trim(),
        }
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(MinimaxTts::new(cfg.clone())?))
}

/// `timber_weights` as the API wants it: a list of `{voice_id, weight}` (empty when unset).
fn timber_weights(value: &Value) -> Result<Vec<Value>, ProviderError> {
    let bad = |why: &str| ProviderError::Config(format!("TTS.minimax_httpstream: timber_weights {why}"));
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => s
            .split(';')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (voice, weight) = item.split_once(':').ok_or_else(|| bad("items must be voice:weight"))?;
                let weight: u32 = weight.trim().parse().map_err(|_| bad("weights must be whole numbers"))?;
                Ok(json!({"voice_id": voice.trim(), "weight": weight}))
            })
            .collect(),
        Value::Array(items) => {
            if items.iter().all(|item| item.get("voice_id").is_some() && item.get("weight").is_some()) {
                Ok(items.clone())
            } else {
                Err(bad("items must have voice_id and weight"))
            }
        }
        _ => Err(bad("must be a list of {voice_id, weight}")),
    }
}

/// MiniMax T2A v2, streamed.
pub struct MinimaxTts {
    client: Client,
    cfg: Config,
    /// The request body without `text`.
    body: Map<String, Value>,
    format: AudioFormat,
    timeout: Duration,
}

impl MinimaxTts {
    /// Validates the entry (empty credentials are only refused when speaking).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let timeout = timeout_from(cfg.timeout, "TTS.minimax_httpstream")?;
        check_url(cfg.api_url.trim(), "TTS.minimax_httpstream")?;
        let mut voice_setting: Map<String, Value> = json!({
            "voice_id": "female-shaonv", "speed": 1, "vol": 1, "pitch": 0, "emotion": "happy"
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        voice_setting.extend(cfg.voice_setting.clone());
        if !cfg.voice().is_empty() {
            voice_setting.insert("voice_id".into(), json!(cfg.voice()));
        }
        let mut audio_setting: Map<String, Value> =
            json!({"sample_rate": 32000, "bitrate": 128000, "format": "mp3", "channel": 1})
                .as_object()
                .cloned()
                .unwrap_or_default();
        audio_setting.extend(cfg.audio_setting.clone());
        let format_name = audio_setting.get("format").and_then(Value::as_str).unwrap_or("mp3").to_ascii_lowercase();
        let sample_rate = audio_setting.get("sample_rate").and_then(Value::as_u64).unwrap_or(0);
        let channels = audio_setting.get("channel").and_then(Value::as_u64).unwrap_or(1);
        let format = match format_name.as_str() {
            "mp3" => AudioFormat::Mp3,
            "pcm" if channels == 1 && sample_rate > 0 => {
                AudioFormat::Pcm { sample_rate: u32::try_from(sample_rate).unwrap_or(32_000) }
            }
            "pcm" => {
                return Err(ProviderError::Config(
                    "TTS.minimax_httpstream: pcm needs audio_setting.channel 1 and a sample_rate".into(),
                ));
            }
            other => {
                return Err(ProviderError::Config(format!(
                    "TTS.minimax_httpstream: audio_setting.format `{other}` does not stream here (use mp3 or pcm)"
                )));
            }
        };
        let weights = timber_weights(&cfg.timber_weights)?;
        let mut body = Map::new();
        body.insert("model".into(), json!(cfg.model.trim()));
        body.insert("stream".into(), json!(true));
        if !weights.is_empty() {
            voice_setting.insert("voice_id".into(), json!(""));
            body.insert("timber_weights".into(), Value::Array(weights));
        }
        body.insert("voice_setting".into(), Value::Object(voice_setting));
        if !cfg.pronunciation_dict.is_empty() {
            body.insert("pronunciation_dict".into(), Value::Object(cfg.pronunciation_dict.clone()));
        }
        body.insert("audio_setting".into(), Value::Object(audio_setting));
        let client = streaming_client(timeout)?;
        Ok(Self { client, cfg, body, format, timeout })
    }

    /// The request body for `text`.
    fn body(&self, text: &str) -> Value {
        let mut body = self.body.clone();
        body.insert("text".into(), json!(text));
        Value::Object(body)
    }

    async fn request(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let api_key = self.cfg.api_key.trim();
        if api_key.is_empty() {
            return Err(ProviderError::Config("TTS.minimax_httpstream: api_key is not set".into()));
        }
        let group_id = self.cfg.group_id.trim();
        if group_id.is_empty() {
            return Err(ProviderError::Config("TTS.minimax_httpstream: group_id is not set".into()));
        }
        let url = self.cfg.api_url.trim();
        let response = self
            .client
            .post(url)
            .query(&[("GroupId", group_id)])
            .bearer_auth(api_key)
            .json(&self.body(text))
            .send()
            .await
            .map_err(|e| request_error(url, "TTS request", self.timeout, &e))?;
        if !response.status().is_success() {
            return Err(status_error(url, response, self.timeout).await);
        }
        if crate::remote::is_json(&response) {
            // Not a stream: MiniMax's answer to a refused request.
            let body = read_limited(response, MAX_JSON_ANSWER).await;
            let message = match serde_json::from_slice::<Value>(&body) {
                Ok(answer) => vendor_error(&answer).unwrap_or_else(|| "answered JSON instead of a stream".into()),
                Err(_) => format!("answered {}", crate::remote::body_start(&body)),
            };
            return Err(ProviderError::Protocol { url: url.to_owned(), message });
        }
        let (tx, rx) = mpsc::channel(32);
        let reader = Reader { url: url.to_owned(), timeout: self.timeout };
        // The first event decides between audio and an error before the call returns.
        let mut response = response;
        let mut state = ReadState::new(self.format);
        let mut first = Vec::new();
        while first.is_empty() && !state.done {
            match reader.next_piece(&mut response, &mut state).await {
                Ok(chunks) => first = chunks,
                Err(e) => return Err(e),
            }
        }
        tokio::spawn(async move {
            for chunk in first {
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            while !state.done {
                let piece = tokio::select! {
                    () = tx.closed() => return,
                    piece = reader.next_piece(&mut response, &mut state) => piece,
                };
                match piece {
                    Ok(chunks) => {
                        for chunk in chunks {
                            if tx.send(Ok(chunk)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(channel_stream(rx))
    }
}

/// At most `limit` bytes of an answer's body.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body
}

/// The vendor's error in an answer: `base_resp.status_code` other than 0, with `status_msg`.
fn vendor_error(answer: &Value) -> Option<String> {
    let base = answer.get("base_resp")?;
    let code = base.get("status_code").and_then(Value::as_i64).unwrap_or(-1);
    if code == 0 {
        return None;
    }
    let message = base.get("status_msg").and_then(Value::as_str).unwrap_or_default();
    Some(format!("MiniMax error {code}: {message}"))
}

/// What one `data:` event says.
#[derive(Debug, PartialEq)]
enum Event {
    /// The next piece of audio.
    Audio(Vec<u8>),
    /// The closing event (status 2: the whole audio again, and `extra_info`).
    End,
    /// Nothing to play (no audio in it).
    Empty,
}

/// Reads one `data:` payload.
fn parse_event(payload: &str) -> Result<Event, String> {
    let answer: Value = serde_json::from_str(payload).map_err(|e| format!("an event that is not JSON: {e}"))?;
    if let Some(error) = vendor_error(&answer) {
        return Err(error);
    }
    let data = answer.get("data").filter(|d| !d.is_null());
    if answer.get("extra_info").is_some() || data.and_then(|d| d.get("status")).and_then(Value::as_i64) == Some(2) {
        return Ok(Event::End);
    }
    match data.and_then(|d| d.get("audio")).and_then(Value::as_str) {
        Some(hex_audio) if !hex_audio.is_empty() => {
            hex::decode(hex_audio.trim()).map(Event::Audio).map_err(|e| format!("audio that is not hex: {e}"))
        }
        _ => Ok(Event::Empty),
    }
}

/// Where the reading of one answer stands.
struct ReadState {
    /// Bytes of the line being read.
    line: Vec<u8>,
    /// The line being read is too long: skipped up to its end.
    skipping: bool,
    decoder: Option<ChunkDecoder>,
    audio: bool,
    done: bool,
}

impl ReadState {
    fn new(format: AudioFormat) -> Self {
        Self { line: Vec::new(), skipping: false, decoder: Some(ChunkDecoder::new(format)), audio: false, done: false }
    }

    /// Feeds a piece of the body: the audio it completes, or the vendor's error.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<AudioChunk>, String> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() && !self.done {
            let (part, newline) = match rest.iter().position(|&b| b == b'\n') {
                Some(at) => (&rest[..at], true),
                None => (rest, false),
            };
            rest = if newline { &rest[part.len() + 1..] } else { &[] };
            if !self.skipping {
                self.line.extend_from_slice(part);
                if self.line.len() > MAX_LINE {
                    // Only the closing event (the whole audio repeated) is this long.
                    self.line.clear();
                    self.skipping = true;
                }
            }
            if newline {
                let line = std::mem::take(&mut self.line);
                if !std::mem::replace(&mut self.skipping, false) {
                    out.extend(self.line_done(&line)?);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Vec<AudioChunk>, String> {
        let line = String::from_utf8_lossy(line);
        let line = line.trim();
        // A bare JSON line is read too: an error answered without the SSE framing.
        let payload = match line.strip_prefix("data:") {
            Some(payload) => payload.trim(),
            None if line.starts_with('{') => line,
            None => return Ok(Vec::new()),
        };
        match parse_event(payload)? {
            Event::Audio(bytes) => {
                self.audio = true;
                match &mut self.decoder {
                    Some(decoder) => decoder.push(&bytes).map_err(|e| e.to_string()),
                    None => Ok(Vec::new()),
                }
            }
            Event::End => self.end(),
            Event::Empty => Ok(Vec::new()),
        }
    }

    /// The audio is complete.
    fn end(&mut self) -> Result<Vec<AudioChunk>, String> {
        self.done = true;
        if !self.audio {
            return Err("answered no audio".into());
        }
        match self.decoder.take() {
            Some(decoder) => decoder.finish().map_err(|e| e.to_string()),
            None => Ok(Vec::new()),
        }
    }
}

/// Reads the answer.
struct Reader {
    url: String,
    timeout: Duration,
}

impl Reader {
    /// The audio of the next piece of the body (possibly none).
    async fn next_piece(
        &self,
        response: &mut reqwest::Response,
        state: &mut ReadState,
    ) -> Result<Vec<AudioChunk>, ProviderError> {
        let protocol = |message: String| ProviderError::Protocol { url: self.url.clone(), message };
        match tokio::time::timeout(self.timeout, response.chunk()).await {
            Err(_) => Err(ProviderError::Timeout { what: "MiniMax TTS audio".into(), seconds: self.timeout.as_secs() }),
            Ok(Err(e)) => Err(protocol(format!("the stream broke off: {}", crate::remote::error_chain(&e)))),
            Ok(Ok(Some(bytes))) => state.feed(&bytes).map_err(protocol),
            Ok(Ok(None)) => {
                // The body ended: a last line without its newline counts, then the end.
                let mut chunks = state.feed(b"\n").map_err(protocol)?;
                if !state.done {
                    chunks.extend(state.end().map_err(protocol)?);
                }
                Ok(chunks)
            }
        }
    }
}

#[async_trait]
impl super::Tts for MinimaxTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(silence());
        }
        self.request(text).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::test_server::{Step, full, serve, stream_head};
    use crate::tts::Tts;

    fn config(api_url: &str) -> Config {
        Config {
            group_id: "1234".into(),
            api_key: "mm-secret".into(),
            api_url: api_url.into(),
            audio_setting: json!({"format": "pcm", "sample_rate": 16000}).as_object().cloned().unwrap_or_default(),
            timeout: 2,
            ..Config::default()
        }
    }

    fn event(audio: &[u8], status: u8) -> Vec<u8> {
        format!(
            "data: {{\"data\":{{\"audio\":\"{}\",\"status\":{status}}},\"trace_id\":\"t\",\"base_resp\":{{\"status_code\":0,\"status_msg\":\"\"}}}}\n\n",
            hex::encode(audio)
        )
        .into_bytes()
    }

    #[test]
    fn events_are_parsed_as_documented() {
        assert_eq!(
            parse_event(r#"{"data":{"audio":"0102","status":1},"base_resp":{"status_code":0,"status_msg":""}}"#),
            Ok(Event::Audio(vec![1, 2]))
        );
        assert_eq!(
            parse_event(
                r#"{"data":{"audio":"0102","status":2},"extra_info":{"audio_length":5},"base_resp":{"status_code":0}}"#
            ),
            Ok(Event::End)
        );
        assert_eq!(parse_event(r#"{"data":null,"base_resp":{"status_code":0}}"#), Ok(Event::Empty));
        assert_eq!(
            parse_event(r#"{"data":null,"base_resp":{"status_code":1004,"status_msg":"login fail"}}"#),
            Err("MiniMax error 1004: login fail".into())
        );
        assert!(parse_event(r#"{"data":{"audio":"zz","status":1}}"#).is_err());
        assert!(parse_event("nope").is_err());
    }

    #[test]
    fn lines_split_anywhere_and_the_long_closing_event_is_skipped() {
        let samples: Vec<u8> = (0..400u32).flat_map(|i| ((i * 37 % 2000) as i16).to_le_bytes()).collect();
        let mut body = event(&samples[..300], 1);
        body.extend(event(&samples[300..], 1));
        body.extend(event(&samples, 2));
        for step in [1, 7, 100, body.len()] {
            let mut state = ReadState::new(AudioFormat::Pcm { sample_rate: 16_000 });
            let mut pcm = Vec::new();
            for piece in body.chunks(step) {
                for chunk in state.feed(piece).expect("feeds") {
                    let AudioChunk::Pcm { samples, sample_rate: 16_000 } = chunk else { panic!("{chunk:?}") };
                    pcm.extend(samples);
                }
            }
            assert!(state.done, "the closing event ends it");
            assert_eq!(pcm.len(), 400, "pieces of {step}: the closing event's audio is not played again");
        }
        // An error without the SSE framing is still the vendor's error.
        let mut state = ReadState::new(AudioFormat::Mp3);
        let error = state.feed(b": comment\n{\"base_resp\":{\"status_code\":1002,\"status_msg\":\"rate limited\"}}\n");
        assert_eq!(error, Err("MiniMax error 1002: rate limited".into()));
        // A closing event longer than any line kept: skipped, and the body's end ends the audio.
        let mut state = ReadState::new(AudioFormat::Pcm { sample_rate: 16_000 });
        assert_eq!(state.feed(&event(&samples, 1)).expect("audio").len(), 1);
        let mut long = b"data: {\"data\":{\"audio\":\"".to_vec();
        long.resize(MAX_LINE + 10, b'0');
        long.extend_from_slice(b"\",\"status\":2}}\n");
        assert!(state.feed(&long).expect("skipped").is_empty());
        assert!(!state.done);
        assert!(state.end().is_ok());
    }

    #[tokio::test]
    async fn streams_pcm_and_sends_the_documented_request() {
        let samples: Vec<u8> = (0..1600u32).flat_map(|i| ((i * 37 % 2000) as i16).to_le_bytes()).collect();
        let mut script = vec![stream_head("text/event-stream")];
        script.push(Step::Send(event(&samples[..1600], 1)));
        script.push(Step::Sleep(Duration::from_millis(300)));
        script.push(Step::Send(event(&samples[1600..], 1)));
        script.push(Step::Send(event(&samples, 2)));
        let (base, mut requests) = serve(vec![script]).await;
        let tts = MinimaxTts::new(config(&format!("{base}/v1/t2a_v2"))).expect("valid");
        let started = std::time::Instant::now();
        let mut stream = tts.speak("你好。").await.expect("audio");
        use futures_util::StreamExt;
        let first = stream.next().await.expect("a chunk").expect("audio");
        assert!(started.elapsed() < Duration::from_millis(250), "the first audio comes before the rest is sent");
        assert_eq!(first.duration_ms(), 50);
        let mut total = first.duration_ms();
        while let Some(chunk) = stream.next().await {
            total += chunk.expect("audio").duration_ms();
        }
        assert_eq!(total, 100);
        let request = requests.recv().await.expect("request");
        assert_eq!(request.target(), "/v1/t2a_v2?GroupId=1234");
        assert_eq!(request.header("authorization").as_deref(), Some("Bearer mm-secret"));
        let body = request.json();
        assert_eq!(body["text"], "你好。");
        assert_eq!(body["stream"], true);
        assert_eq!(body["model"], "speech-01-turbo");
        assert_eq!(body["voice_setting"]["voice_id"], "female-shaonv");
        assert_eq!(body["voice_setting"]["emotion"], "happy");
        assert_eq!(
            body["audio_setting"],
            json!({"sample_rate": 16000, "bitrate": 128000, "format": "pcm", "channel": 1})
        );
        assert!(body.get("timber_weights").is_none());
    }

    #[tokio::test]
    async fn vendor_errors_are_errors_without_the_key() {
        let error = br#"{"base_resp":{"status_code":1004,"status_msg":"login fail: Please carry the API secret key"}}"#;
        let mut in_stream = vec![stream_head("text/event-stream")];
        in_stream.push(Step::Send(
            b"data: {\"data\":null,\"base_resp\":{\"status_code\":1002,\"status_msg\":\"rate limited\"}}\n\n".to_vec(),
        ));
        let (base, _requests) =
            serve(vec![full(200, "application/json", error), in_stream, full(500, "text/plain", b"oops")]).await;
        let tts = MinimaxTts::new(config(&base)).expect("valid");
        for expected in ["MiniMax error 1004: login fail", "MiniMax error 1002: rate limited", "HTTP 500"] {
            let err = tts.speak("hi").await.err().expect("an error").to_string();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("mm-secret"));
        }
        let mut cfg = config(&base);
        cfg.api_key = String::new();
        let tts = MinimaxTts::new(cfg).expect("empty credentials build");
        assert!(matches!(tts.speak("hi").await, Err(ProviderError::Config(m)) if m.contains("api_key is not set")));
        assert!(!format!("{:?}", config(&base)).contains("mm-secret"));
    }

    #[test]
    fn config_is_checked() {
        let mut cfg = Config::default();
        assert!(MinimaxTts::new(cfg.clone()).is_ok(), "the Python defaults build without credentials");
        cfg.audio_setting.insert("format".into(), json!("wav"));
        assert!(matches!(MinimaxTts::new(cfg.clone()), Err(ProviderError::Config(_))));
        cfg.audio_setting.insert("format".into(), json!("pcm"));
        cfg.audio_setting.insert("channel".into(), json!(2));
        assert!(matches!(MinimaxTts::new(cfg), Err(ProviderError::Config(_))));
        let cfg = Config { timber_weights: json!("female-shaonv:30; male-qn-qingse:70"), ..Config::default() };
        let tts = MinimaxTts::new(cfg).expect("valid");
        let body = tts.body("x");
        assert_eq!(
            body["timber_weights"],
            json!([{"voice_id": "female-shaonv", "weight": 30}, {"voice_id": "male-qn-qingse", "weight": 70}])
        );
        assert_eq!(body["voice_setting"]["voice_id"], "");
        let cfg = Config { timber_weights: json!("nonsense"), ..Config::default() };
        assert!(MinimaxTts::new(cfg).is_err());
        let cfg: Config =
            serde_yaml_ng::from_str("group_id: 123\nprivate_voice: v2\nvoice_setting: {speed: 1.2}").expect("yaml");
        assert_eq!(cfg.group_id, "123");
        let body = MinimaxTts::new(cfg).expect("valid").body("x");
        assert_eq!(body["voice_setting"]["voice_id"], "v2");
        assert_eq!(body["voice_setting"]["speed"], 1.2);
    }
}
