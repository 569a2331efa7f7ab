//! `type: aliyun_stream`: Alibaba Cloud Intelligent Speech Interaction real-time speech
//! recognition (the `SpeechTranscriber` of the NLS WebSocket gateway).
//!
//! Per utterance ([`Asr::open`](super::Asr::open)): connect to `wss://<host>/ws/v1` with the token
//! in `X-NLS-Token`, send `StartTranscription` (16 kHz PCM, intermediate results, punctuation,
//! inverse text normalisation, `max_sentence_silence`), wait for `TranscriptionStarted`, then send
//! the PCM in binary frames while the user speaks. At the end of speech `StopTranscription`; the
//! text is every `SentenceEnd` result, once `TranscriptionCompleted` arrives. `TaskFailed` (status
//! code and text) fails the recognition. The token is the configured one, or one from
//! `CreateToken` when an AccessKey pair is set (see [`crate::remote::aliyun_nls`]). `timeout`
//! bounds the connection, the start and the wait for the final text. Dropping the recognition
//! closes the connection.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::{ASR_SAMPLE_RATE, Recognition};
use crate::remote::aliyun_nls::{Event, TokenSource, command, gateway_url, new_id, redacted};
use crate::remote::{ProviderError, WsStream, error_chain, timeout_from, url_without_query, ws_connect};

/// The command namespace of real-time recognition.
const NAMESPACE: &str = "SpeechTranscriber";
/// For messages.
const WHAT: &str = "ASR.aliyun_stream";

/// `ASR.<name>` with `type: aliyun_stream`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The project's Appkey (NLS console).
    #[serde(deserialize_with = "crate::remote::pyconf::text")]
    pub appkey: String,
    /// A temporary access token (24 h); unused when an AccessKey pair is set.
    #[serde(deserialize_with = "crate::remote::pyconf::text")]
    pub token: String,
    /// AccessKey ID: with the secret, tokens are obtained (and renewed) from `CreateToken`.
    #[serde(deserialize_with = "crate::remote::pyconf::text")]
    pub access_key_id: String,
    /// AccessKey secret.
    #[serde(deserialize_with = "crate::remote::pyconf::text")]
    pub access_key_secret: String,
    /// The gateway host (`nls-gateway-cn-shanghai.aliyuncs.com`), or a full `ws(s)://` URL.
    pub host: String,
    /// Silence (ms) that ends a sentence on the service side (200–2000; default 800).
    #[serde(deserialize_with = "crate::remote::pyconf::opt_i64")]
    pub max_sentence_silence: Option<i64>,
    /// Where the Python server kept its audio files (accepted, unused: audio is streamed).
    pub output_dir: String,
    /// The `CreateToken` endpoint (default `https://nls-meta.cn-shanghai.aliyuncs.com/`).
    pub token_url: String,
    /// Seconds for the connection, the start and the final text.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            appkey: String::new(),
            token: String::new(),
            access_key_id: String::new(),
            access_key_secret: String::new(),
            host: "nls-gateway-cn-shanghai.aliyuncs.com".into(),
            max_sentence_silence: None,
            output_dir: "tmp/".into(),
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
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &redacted(&self.access_key_secret))
            .field("host", &self.host)
            .field("max_sentence_silence", &self.max_sentence_silence)
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
        format!("{} ({auth})", self.host.trim())
    }

    /// The `StartTranscription` payload.
    fn start_payload(&self) -> serde_json::Value {
        json!({
            "format": "pcm",
            "sample_rate": ASR_SAMPLE_RATE,
            "enable_intermediate_result": true,
            "enable_punctuation_prediction": true,
            "enable_inverse_text_normalization": true,
            "max_sentence_silence": self.max_sentence_silence.unwrap_or(800).clamp(200, 2000),
            "enable_voice_detection": false,
        })
    }
}

/// Builds the backend of a validated entry. Empty credentials are reported per request.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Asr>, ProviderError> {
    Ok(Arc::new(AliyunStreamAsr::new(cfg.clone())?))
}

/// The real-time recognizer of the NLS gateway.
pub struct AliyunStreamAsr {
    cfg: Config,
    url: String,
    tokens: TokenSource,
    timeout: Duration,
}

impl AliyunStreamAsr {
    /// Validates the entry (URL, timeout).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let timeout = timeout_from(cfg.timeout, WHAT)?;
        let url = gateway_url(&cfg.host, WHAT)?;
        let tokens =
            TokenSource::new(WHAT, &cfg.token, &cfg.access_key_id, &cfg.access_key_secret, &cfg.token_url, timeout)?;
        Ok(Self { cfg, url, tokens, timeout })
    }

    /// Connects and starts a transcription: the recognition once `TranscriptionStarted` arrived.
    async fn start(&self) -> Result<NlsRecognition, ProviderError> {
        let appkey = self.cfg.appkey.trim();
        if appkey.is_empty() {
            return Err(ProviderError::Config(format!("{WHAT}: appkey is not set")));
        }
        let token = self.tokens.token().await?;
        let ws = ws_connect(&self.url, &[("X-NLS-Token", token)], self.timeout, "Aliyun NLS ASR connection").await?;
        let (mut sink, mut stream) = ws.split();
        let task_id = new_id();
        let start = command(NAMESPACE, "StartTranscription", appkey, &task_id, self.cfg.start_payload());
        send(&mut sink, &self.url, Message::text(start)).await?;
        let started = async {
            loop {
                let event = next_event(&mut stream, &self.url).await?;
                if event.name == "TranscriptionStarted" {
                    return Ok::<_, ProviderError>(());
                }
            }
        };
        tokio::time::timeout(self.timeout, started).await.map_err(|_| ProviderError::Timeout {
            what: "Aliyun NLS ASR (TranscriptionStarted)".into(),
            seconds: self.timeout.as_secs(),
        })??;
        let reader = tokio::spawn(read_results(stream, self.url.clone()));
        Ok(NlsRecognition {
            sink,
            reader: Some(reader),
            appkey: appkey.to_owned(),
            task_id,
            url: self.url.clone(),
            timeout: self.timeout,
        })
    }
}

type Sink = SplitSink<WsStream, Message>;

async fn send(sink: &mut Sink, url: &str, message: Message) -> Result<(), ProviderError> {
    sink.send(message).await.map_err(|e| ProviderError::Transport {
        url: url_without_query(url),
        message: format!("sending to the gateway: {}", error_chain(&e)),
    })
}

/// The next event (binary frames are not expected and skipped); a failure event is the error.
async fn next_event(stream: &mut SplitStream<WsStream>, url: &str) -> Result<Event, ProviderError> {
    loop {
        let shown = || url_without_query(url);
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) => {
                return Err(ProviderError::Protocol {
                    url: shown(),
                    message: "the gateway closed the connection before TranscriptionCompleted".into(),
                });
            }
            Some(Err(e)) => return Err(ProviderError::Transport { url: shown(), message: error_chain(&e) }),
            Some(Ok(Message::Text(text))) => {
                let event = Event::parse(text.as_str(), url)?;
                return match event.failure(url) {
                    Some(err) => Err(err),
                    None => Ok(event),
                };
            }
            Some(Ok(_)) => {}
        }
    }
}

/// The recognized text so far: completed sentences and the one being heard.
#[derive(Debug, Default)]
struct Transcript {
    sentences: Vec<String>,
    current: String,
}

impl Transcript {
    /// Takes in one event; `true` at `TranscriptionCompleted`.
    fn apply(&mut self, event: &Event) -> bool {
        let result = event.payload["result"].as_str().unwrap_or_default().trim();
        match event.name.as_str() {
            "TranscriptionResultChanged" => self.current = result.to_owned(),
            "SentenceEnd" => {
                self.current.clear();
                if !result.is_empty() {
                    self.sentences.push(result.to_owned());
                }
            }
            "TranscriptionCompleted" => return true,
            _ => {}
        }
        false
    }

    /// The final text: the sentences (and a last one never closed), joined.
    fn text(mut self) -> String {
        if !self.current.is_empty() {
            self.sentences.push(std::mem::take(&mut self.current));
        }
        let mut text = String::new();
        for sentence in self.sentences {
            let ascii_seam = text.chars().last().is_some_and(|c| c.is_ascii() && !c.is_whitespace())
                && sentence.chars().next().is_some_and(|c| c.is_ascii());
            if ascii_seam {
                text.push(' ');
            }
            text.push_str(&sentence);
        }
        text.trim().to_owned()
    }
}

/// Reads the events of one transcription until `TranscriptionCompleted`: the final text.
async fn read_results(mut stream: SplitStream<WsStream>, url: String) -> Result<String, ProviderError> {
    let mut transcript = Transcript::default();
    loop {
        let event = next_event(&mut stream, &url).await?;
        if transcript.apply(&event) {
            return Ok(transcript.text());
        }
    }
}

/// One utterance being recognized by the gateway.
struct NlsRecognition {
    sink: Sink,
    reader: Option<JoinHandle<Result<String, ProviderError>>>,
    appkey: String,
    task_id: String,
    url: String,
    timeout: Duration,
}

impl NlsRecognition {
    /// The reader's outcome, when it already ended (a failure while listening).
    async fn ended(&mut self) -> Option<Result<String, ProviderError>> {
        if !self.reader.as_ref().is_some_and(JoinHandle::is_finished) {
            return None;
        }
        let reader = self.reader.take()?;
        Some(reader.await.unwrap_or_else(|e| {
            Err(ProviderError::Protocol { url: url_without_query(&self.url), message: format!("reader: {e}") })
        }))
    }
}

impl Drop for NlsRecognition {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

#[async_trait]
impl Recognition for NlsRecognition {
    async fn push(&mut self, pcm: &[i16]) -> Result<(), ProviderError> {
        if let Some(Err(e)) = self.ended().await {
            return Err(e);
        }
        if pcm.is_empty() || self.reader.is_none() {
            return Ok(());
        }
        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        let sent = tokio::time::timeout(self.timeout, send(&mut self.sink, &self.url, Message::binary(bytes))).await;
        sent.map_err(|_| ProviderError::Timeout {
            what: "Aliyun NLS ASR (audio)".into(),
            seconds: self.timeout.as_secs(),
        })?
    }

    async fn finish(mut self: Box<Self>) -> Result<String, ProviderError> {
        if let Some(ended) = self.ended().await {
            return ended;
        }
        let stop = command(NAMESPACE, "StopTranscription", &self.appkey, &self.task_id, serde_json::Value::Null);
        send(&mut self.sink, &self.url, Message::text(stop)).await?;
        let Some(reader) = self.reader.as_mut() else {
            return Ok(String::new());
        };
        let outcome = tokio::time::timeout(self.timeout, reader).await;
        self.reader = None;
        let text = match outcome {
            Err(_) => {
                return Err(ProviderError::Timeout {
                    what: "Aliyun NLS ASR (TranscriptionCompleted)".into(),
                    seconds: self.timeout.as_secs(),
                });
            }
            Ok(Err(e)) => {
                return Err(ProviderError::Protocol {
                    url: url_without_query(&self.url),
                    message: format!("reader: {e}"),
                });
            }
            Ok(Ok(result)) => result?,
        };
        let _ = self.sink.close().await;
        Ok(text)
    }
}

#[async_trait]
impl super::Asr for AliyunStreamAsr {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        let mut recognition = Box::new(self.start().await?);
        // The gateway takes audio at (near) real time, in small frames: 100 ms frames, sent at
        // twice real time.
        let frame = ASR_SAMPLE_RATE as usize / 10;
        for piece in pcm.chunks(frame) {
            recognition.push(piece).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        recognition.finish().await
    }

    async fn open(&self) -> Option<Result<Box<dyn Recognition>, ProviderError>> {
        Some(self.start().await.map(|r| Box::new(r) as Box<dyn Recognition>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        serde_yaml_ng::from_str(yaml).expect("config")
    }

    fn event(text: &str) -> Event {
        Event::parse(text, "u").unwrap()
    }

    #[test]
    fn python_keys_and_the_start_payload() {
        let cfg = config(
            "appkey: 12345\ntoken: ''\naccess_key_id: ''\naccess_key_secret: ''\n\
             host: nls-gateway-cn-shanghai.aliyuncs.com\nmax_sentence_silence: '600'\noutput_dir: tmp/\n",
        );
        assert_eq!(cfg.appkey, "12345");
        let payload = cfg.start_payload();
        assert_eq!(payload["max_sentence_silence"], 600);
        assert_eq!(payload["sample_rate"], 16000);
        assert_eq!(payload["format"], "pcm");
        assert_eq!(payload["enable_intermediate_result"], true);
        assert_eq!(Config::default().start_payload()["max_sentence_silence"], 800);
    }

    #[test]
    fn builds_without_credentials_and_never_shows_them() {
        assert!(build(&Config::default()).is_ok());
        let cfg = config("token: tok-SECRET\naccess_key_secret: key-SECRET\n");
        let shown = format!("{cfg:?} {}", cfg.summary());
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(build(&config("host: ''\n")).is_err());
    }

    #[tokio::test]
    async fn missing_keys_are_named_at_request_time() {
        let asr = AliyunStreamAsr::new(Config::default()).unwrap();
        let err = asr.start().await.err().unwrap().to_string();
        assert!(err.contains("appkey is not set"), "{err}");
        let asr = AliyunStreamAsr::new(config("appkey: k\n")).unwrap();
        let err = asr.start().await.err().unwrap().to_string();
        assert!(err.contains("token is not set"), "{err}");
    }

    #[test]
    fn the_transcript_is_every_finished_sentence() {
        let mut transcript = Transcript::default();
        for frame in [
            r#"{"header":{"name":"SentenceBegin","status":20000000},"payload":{"index":1,"time":0}}"#,
            r#"{"header":{"name":"TranscriptionResultChanged","status":20000000},"payload":{"index":1,"result":"hello"}}"#,
            r#"{"header":{"name":"SentenceEnd","status":20000000},"payload":{"index":1,"result":"Hello there."}}"#,
            r#"{"header":{"name":"SentenceEnd","status":20000000},"payload":{"index":2,"result":"How are you?"}}"#,
            r#"{"header":{"name":"TranscriptionResultChanged","status":20000000},"payload":{"index":3,"result":"你好"}}"#,
        ] {
            assert!(!transcript.apply(&event(frame)));
        }
        assert!(transcript.apply(&event(r#"{"header":{"name":"TranscriptionCompleted","status":20000000}}"#)));
        assert_eq!(transcript.text(), "Hello there. How are you?你好");
    }

    /// Every key of the Python file's AliyunStreamASR / AliyunStreamTTS entries (the TTS's
    /// commented-out ones included) is known: no warning, the entries build with empty keys.
    #[test]
    fn the_python_entries_load_without_unknown_keys() {
        let python = include_str!("../../../tests/assets/python-v0.9.6-config.yaml");
        let selected = "selected_module:\n  ASR: AliyunStreamASR\n  TTS: AliyunStreamTTS\n\
                        TTS:\n  AliyunStreamTTS:\n    format: pcm\n    volume: 50\n    speech_rate: 0\n\
                        \x20   pitch_rate: 0\n    language: \"中文\"\n    sample_rate: 16000\n    private_voice: ''\n";
        let loaded = crate::config::load::load_str(python, Some(selected)).expect("loads");
        let ours: Vec<_> = loaded.warnings.iter().filter(|w| w.contains("AliyunStream")).collect();
        assert!(ours.is_empty(), "{ours:?}");
        let crate::config::AsrSpec::AliyunStream(asr) = &loaded.config.providers.asr else {
            panic!("aliyun_stream ASR")
        };
        assert_eq!(asr.max_sentence_silence, Some(800));
        assert!(asr.appkey.is_empty(), "the placeholder is cleared");
        assert!(build(asr).is_ok());
        let crate::config::TtsSpec::AliyunStream(tts) = &loaded.config.providers.tts else {
            panic!("aliyun_stream TTS")
        };
        assert!(crate::tts::aliyun_stream::build(tts).is_ok());
    }
}
