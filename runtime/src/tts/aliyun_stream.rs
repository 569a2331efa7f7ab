//! `type: aliyun_stream`: Alibaba Cloud Intelligent Speech Interaction, CosyVoice streaming
//! text-to-speech (the `FlowingSpeechSynthesizer` of the NLS WebSocket gateway).
//!
//! Per sentence: connect to `wss://<host>/ws/v1` with the token in `X-NLS-Token`, send
//! `StartSynthesis` (voice, format, sample rate, volume, rates), wait for `SynthesisStarted`, then
//! send each piece of the sentence's text as a `RunSynthesis` as it is written, and
//! `StopSynthesis` when it is complete. The audio arrives in binary frames while the text is still
//! being sent and is forwarded as it comes; `SynthesisCompleted` ends it, `TaskFailed` (status
//! code and text) fails it. The token is the configured one, or one from `CreateToken` when an
//! AccessKey pair is set (see [`crate::remote::aliyun_nls`]). `timeout` bounds the connection,
//! the start and every wait for audio once the text is complete. Dropping the stream closes the
//! connection.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{AudioChunk, AudioStream, TextStream, channel_stream, silence};
use crate::audio::chunks::ChunkDecoder;
use crate::audio::decode::AudioFormat;
use crate::remote::aliyun_nls::{Event, TokenSource, command, gateway_url, new_id, redacted};
use crate::remote::{ProviderError, WsStream, timeout_from, url_without_query, ws_connect};

/// The command namespace of streaming synthesis.
const NAMESPACE: &str = "FlowingSpeechSynthesizer";
/// For messages.
const WHAT: &str = "TTS.aliyun_stream";

/// `TTS.<name>` with `type: aliyun_stream`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the Python server kept its audio files (accepted, unused: audio is streamed).
    pub output_dir: String,
    /// The project's Appkey (NLS console).
    #[serde(deserialize_with = "crate::remote::pyconf::text")]
    pub appkey: String,
    /// A temporary access token (24 h); unused when an AccessKey pair is set.
    #[serde(deserialize_with = "crate::remote::pyconf::text")]
    pub token: String,
    /// The voice (`longxiaochun`, ...).
    pub voice: String,
    /// A cloned voice; replaces `voice` when set.
    pub private_voice: String,
    /// AccessKey ID: with the secret, tokens are obtained (and renewed) from `CreateToken`.
    #[serde(deserialize_with = "crate::remote::pyconf::text")]
    pub access_key_id: String,
    /// AccessKey secret.
    #[serde(deserialize_with = "crate::remote::pyconf::text")]
    pub access_key_secret: String,
    /// The gateway host (`nls-gateway-cn-beijing.aliyuncs.com`), or a full `ws(s)://` URL.
    pub host: String,
    /// Audio format asked for: `pcm`, `wav` or `mp3`.
    pub format: String,
    /// Sample rate asked for, Hz (default 16000).
    #[serde(deserialize_with = "crate::remote::pyconf::opt_i64")]
    pub sample_rate: Option<i64>,
    /// Volume 0–100 (default 50).
    #[serde(deserialize_with = "crate::remote::pyconf::opt_i64")]
    pub volume: Option<i64>,
    /// Speech rate −500–500 (default 0).
    #[serde(deserialize_with = "crate::remote::pyconf::opt_i64")]
    pub speech_rate: Option<i64>,
    /// Pitch −500–500 (default 0).
    #[serde(deserialize_with = "crate::remote::pyconf::opt_i64")]
    pub pitch_rate: Option<i64>,
    /// Output language named in the Python file's comments (accepted, unused: the protocol has
    /// no such parameter; the voice decides).
    pub language: String,
    /// The `CreateToken` endpoint (default `https://nls-meta.cn-shanghai.aliyuncs.com/`).
    pub token_url: String,
    /// Seconds for the connection, the start and each wait for audio.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            output_dir: "tmp/".into(),
            appkey: String::new(),
            token: String::new(),
            voice: "longxiaochun".into(),
            private_voice: String::new(),
            access_key_id: String::new(),
            access_key_secret: String::new(),
            host: "nls-gateway-cn-beijing.aliyuncs.com".into(),
            format: "pcm".into(),
            sample_rate: None,
            volume: None,
            speech_rate: None,
            pitch_rate: None,
            language: String::new(),
            token_url: String::new(),
            timeout: 10,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("appkey", &self.appkey)
            .field("token", &redacted(&self.token))
            .field("voice", &self.voice())
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &redacted(&self.access_key_secret))
            .field("host", &self.host)
            .field("format", &self.format)
            .field("sample_rate", &self.sample_rate())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        let auth = if !self.access_key_id.trim().is_empty() && !self.access_key_secret.trim().is_empty() {
            "token from AccessKey"
        } else if !self.token.trim().is_empty() {
            "token"
        } else {
            "no token"
        };
        format!("{} voice {} {} {} Hz ({auth})", self.host.trim(), self.voice(), self.format.trim(), self.sample_rate())
    }

    fn voice(&self) -> &str {
        let private = self.private_voice.trim();
        if private.is_empty() { self.voice.trim() } else { private }
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate.filter(|r| *r > 0).and_then(|r| u32::try_from(r).ok()).unwrap_or(16_000)
    }

    /// The `StartSynthesis` payload.
    fn start_payload(&self) -> serde_json::Value {
        json!({
            "voice": self.voice(),
            "format": self.format.trim().to_ascii_lowercase(),
            "sample_rate": self.sample_rate(),
            "volume": self.volume.unwrap_or(50),
            "speech_rate": self.speech_rate.unwrap_or(0),
            "pitch_rate": self.pitch_rate.unwrap_or(0),
            "enable_subtitle": true,
        })
    }
}

/// Builds the backend of a validated entry. Empty credentials are reported per request.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(AliyunStreamTts::new(cfg.clone())?))
}

/// The CosyVoice streaming synthesizer of the NLS gateway.
pub struct AliyunStreamTts {
    cfg: Config,
    url: String,
    format: AudioFormat,
    tokens: TokenSource,
    timeout: Duration,
}

impl AliyunStreamTts {
    /// Validates the entry (URL, format, timeout).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let timeout = timeout_from(cfg.timeout, WHAT)?;
        let url = gateway_url(&cfg.host, WHAT)?;
        let format = match cfg.format.trim().to_ascii_lowercase().as_str() {
            "pcm" | "wav" | "mp3" => AudioFormat::from_name(cfg.format.trim(), cfg.sample_rate()),
            _ => None,
        }
        .ok_or_else(|| ProviderError::Config(format!("{WHAT}: format `{}` is not one of pcm, wav, mp3", cfg.format)))?;
        let tokens =
            TokenSource::new(WHAT, &cfg.token, &cfg.access_key_id, &cfg.access_key_secret, &cfg.token_url, timeout)?;
        Ok(Self { cfg, url, format, tokens, timeout })
    }

    /// Connects and starts a synthesis task: the connection once `SynthesisStarted` arrived.
    async fn start(&self, task_id: &str) -> Result<WsStream, ProviderError> {
        let appkey = self.cfg.appkey.trim();
        if appkey.is_empty() {
            return Err(ProviderError::Config(format!("{WHAT}: appkey is not set")));
        }
        let token = self.tokens.token().await?;
        let mut ws =
            ws_connect(&self.url, &[("X-NLS-Token", token)], self.timeout, "Aliyun NLS TTS connection").await?;
        let start = command(NAMESPACE, "StartSynthesis", appkey, task_id, self.cfg.start_payload());
        send(&mut ws, &self.url, Message::text(start)).await?;
        loop {
            match self.next_event(&mut ws, "SynthesisStarted").await? {
                Incoming::Event(event) if event.name == "SynthesisStarted" => return Ok(ws),
                Incoming::Event(_) | Incoming::Audio(_) => {}
            }
        }
    }

    /// The next event or audio frame, within the timeout; a failure event becomes its error.
    async fn next_event(&self, ws: &mut WsStream, waiting_for: &str) -> Result<Incoming, ProviderError> {
        let next = tokio::time::timeout(self.timeout, ws.next()).await.map_err(|_| ProviderError::Timeout {
            what: format!("Aliyun NLS TTS ({waiting_for})"),
            seconds: self.timeout.as_secs(),
        })?;
        incoming(next, &self.url)
    }
}

/// What a frame of the gateway carries.
enum Incoming {
    Event(Event),
    Audio(Vec<u8>),
}

/// Reads one received frame: audio, or an event (a failure event is returned as the error).
fn incoming(
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    url: &str,
) -> Result<Incoming, ProviderError> {
    let shown = url_without_query(url);
    match next {
        None | Some(Ok(Message::Close(_))) => {
            Err(ProviderError::Protocol { url: shown, message: "the gateway closed the connection".into() })
        }
        Some(Err(e)) => Err(ProviderError::Transport { url: shown, message: crate::remote::error_chain(&e) }),
        Some(Ok(Message::Binary(bytes))) => Ok(Incoming::Audio(bytes.to_vec())),
        Some(Ok(Message::Text(text))) => {
            let event = Event::parse(text.as_str(), url)?;
            match event.failure(url) {
                Some(err) => Err(err),
                None => Ok(Incoming::Event(event)),
            }
        }
        // Pings are answered by tungstenite; nothing else carries meaning.
        Some(Ok(_)) => Ok(Incoming::Event(Event {
            name: String::new(),
            status: crate::remote::aliyun_nls::STATUS_OK,
            status_text: String::new(),
            payload: serde_json::Value::Null,
        })),
    }
}

async fn send(ws: &mut WsStream, url: &str, message: Message) -> Result<(), ProviderError> {
    ws.send(message).await.map_err(|e| ProviderError::Transport {
        url: url_without_query(url),
        message: format!("sending to the gateway: {}", crate::remote::error_chain(&e)),
    })
}

/// One synthesis task's settings.
struct Task {
    appkey: String,
    task_id: String,
    url: String,
    format: AudioFormat,
    timeout: Duration,
}

/// Sends the text as it comes and forwards the audio until `SynthesisCompleted`.
async fn run_task(
    mut ws: WsStream,
    mut text: TextStream,
    tx: mpsc::Sender<Result<AudioChunk, ProviderError>>,
    task: Task,
) {
    let Task { appkey, task_id, url, format, timeout } = task;
    let mut decoder = ChunkDecoder::new(format);
    let mut text_open = true;
    let result: Result<(), ProviderError> = async {
        loop {
            tokio::select! {
                biased;
                // The listener went away (the turn was aborted): close at once.
                _ = tx.closed() => return Ok(()),
                piece = text.recv(), if text_open => match piece {
                    Some(piece) => {
                        if !piece.trim().is_empty() {
                            let run = command(NAMESPACE, "RunSynthesis", &appkey, &task_id, json!({"text": piece}));
                            send(&mut ws, &url, Message::text(run)).await?;
                        }
                    }
                    None => {
                        text_open = false;
                        let stop = command(NAMESPACE, "StopSynthesis", &appkey, &task_id, serde_json::Value::Null);
                        send(&mut ws, &url, Message::text(stop)).await?;
                    }
                },
                next = ws.next() => match incoming(next, &url)? {
                    Incoming::Audio(bytes) => {
                        let chunks = decoder.push(&bytes).map_err(|e| ProviderError::Protocol {
                            url: url_without_query(&url),
                            message: e.to_string(),
                        })?;
                        for chunk in chunks {
                            if tx.send(Ok(chunk)).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Incoming::Event(event) if event.name == "SynthesisCompleted" => {
                        let rest = std::mem::replace(&mut decoder, ChunkDecoder::new(format)).finish();
                        for chunk in rest.unwrap_or_default() {
                            if tx.send(Ok(chunk)).await.is_err() {
                                return Ok(());
                            }
                        }
                        return Ok(());
                    }
                    Incoming::Event(_) => {}
                },
                // Once the text is complete, the audio must keep coming.
                _ = tokio::time::sleep(timeout), if !text_open => {
                    return Err(ProviderError::Timeout {
                        what: "Aliyun NLS TTS (audio)".into(),
                        seconds: timeout.as_secs(),
                    });
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
    let _ = ws.close(None).await;
}

#[async_trait]
impl super::Tts for AliyunStreamTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(silence());
        }
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.send(text.to_owned()).await;
        drop(tx);
        self.speak_text(rx).await
    }

    fn streams_text(&self) -> bool {
        true
    }

    async fn speak_text(&self, text: TextStream) -> Result<AudioStream, ProviderError> {
        let task_id = new_id();
        let ws = self.start(&task_id).await?;
        let (tx, rx) = mpsc::channel(64);
        let task = Task {
            appkey: self.cfg.appkey.trim().to_owned(),
            task_id,
            url: self.url.clone(),
            format: self.format,
            timeout: self.timeout,
        };
        tokio::spawn(run_task(ws, text, tx, task));
        Ok(channel_stream(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        serde_yaml_ng::from_str(yaml).expect("config")
    }

    #[test]
    fn python_keys_and_their_value_types() {
        let cfg = config(
            "output_dir: tmp/\nappkey: 123\ntoken: ''\nvoice: longxiaochun\naccess_key_id: ''\naccess_key_secret: ''\n\
             host: nls-gateway-cn-beijing.aliyuncs.com\nformat: pcm\nsample_rate: '24000'\nvolume: 60\n\
             speech_rate: '-100'\npitch_rate: 0\nlanguage: 中文\nprivate_voice: ''\n",
        );
        assert_eq!(cfg.appkey, "123");
        let payload = cfg.start_payload();
        assert_eq!(payload["sample_rate"], 24000);
        assert_eq!(payload["volume"], 60);
        assert_eq!(payload["speech_rate"], -100);
        assert_eq!(payload["voice"], "longxiaochun");
        assert_eq!(payload["format"], "pcm");
        let cfg = config("private_voice: my_clone\nsample_rate: ''\n");
        assert_eq!(cfg.start_payload()["voice"], "my_clone");
        assert_eq!(cfg.start_payload()["sample_rate"], 16000);
        assert_eq!(cfg.start_payload()["volume"], 50);
    }

    #[test]
    fn builds_without_credentials_and_never_shows_them() {
        assert!(build(&Config::default()).is_ok());
        let cfg = config("token: tok-SECRET\naccess_key_secret: key-SECRET\n");
        let shown = format!("{cfg:?} {}", cfg.summary());
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(build(&config("format: flac\n")).is_err());
        assert!(build(&config("host: 'http://x'\n")).is_err());
    }

    #[tokio::test]
    async fn missing_keys_are_named_at_request_time() {
        let tts = AliyunStreamTts::new(Config::default()).unwrap();
        let err = tts.start("t").await.err().unwrap().to_string();
        assert!(err.contains("appkey is not set"), "{err}");
        let tts = AliyunStreamTts::new(config("appkey: k\n")).unwrap();
        let err = tts.start("t").await.err().unwrap().to_string();
        assert!(err.contains("token is not set"), "{err}");
    }
}
