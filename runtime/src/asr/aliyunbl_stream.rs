//! `type: aliyunbl_stream`: Aliyun Bailian (DashScope) Paraformer real-time recognition over the
//! DashScope WebSocket task protocol ("Paraformer real-time speech recognition WebSocket API",
//! Alibaba Cloud Model Studio).
//!
//! One task per utterance, opened when speech starts: the WebSocket with the bearer key,
//! `run-task` (task `asr`, function `recognition`, the model, `pcm` at the sample rate and the
//! Python entry's recognition switches), `task-started`; then the audio as binary frames while
//! the user speaks. `result-generated` events carry `output.sentence` (`text`, `sentence_end`);
//! a reader task keeps the ended sentences and the one in progress. At the end of speech,
//! `finish-task`; the text is ready at `task-finished`. `task-failed` becomes the vendor's code
//! and message. Dropping the recognition closes the connection.

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
use crate::remote::dashscope::{self, DEFAULT_WS_URL, Event, lenient};
use crate::remote::{ProviderError, WsStream, timeout_from};

/// What errors and timeouts call this provider.
const WHAT: &str = "ASR.aliyunbl_stream";

/// `ASR.<name>` with `type: aliyunbl_stream`: the Python server's keys.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The DashScope API key (a bearer token).
    pub api_key: String,
    /// `paraformer-realtime-v2` (or another real-time model of the same protocol).
    pub model: String,
    /// The audio format sent: `pcm` (the only one streamed here).
    pub format: String,
    /// The rate the audio is sent at: 16000 (default) or 8000.
    #[serde(deserialize_with = "lenient::opt_u32")]
    pub sample_rate: Option<u32>,
    /// A hot-word vocabulary id (v2 models).
    #[serde(deserialize_with = "lenient::opt_text")]
    pub vocabulary_id: Option<String>,
    /// Remove filler words.
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub disfluency_removal_enabled: Option<bool>,
    /// Language codes to expect (`["zh", "en"]`), v2 models.
    pub language_hints: Option<Value>,
    /// Sentence ends by meaning instead of by silence.
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub semantic_punctuation_enabled: Option<bool>,
    /// Silence that ends a sentence, ms (default 200).
    #[serde(deserialize_with = "lenient::opt_u32")]
    pub max_sentence_silence: Option<u32>,
    /// Keeps sentences from being cut by long pauses.
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub multi_threshold_mode_enabled: Option<bool>,
    /// Punctuation (default on).
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub punctuation_prediction_enabled: Option<bool>,
    /// Numbers as digits (default on).
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub inverse_text_normalization_enabled: Option<bool>,
    /// Accepted for the Python file; audio is not written to disk here.
    pub output_dir: Option<String>,
    /// The WebSocket endpoint (another region, a workspace domain).
    pub ws_url: String,
    /// Seconds allowed to connect and start, to send a piece of audio, and for the final text
    /// after the end of speech.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            model: "paraformer-realtime-v2".into(),
            format: "pcm".into(),
            sample_rate: None,
            vocabulary_id: None,
            disfluency_removal_enabled: None,
            language_hints: None,
            semantic_punctuation_enabled: None,
            max_sentence_silence: None,
            multi_threshold_mode_enabled: None,
            punctuation_prediction_enabled: None,
            inverse_text_normalization_enabled: None,
            output_dir: None,
            ws_url: DEFAULT_WS_URL.into(),
            timeout: 10,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_key", &dashscope::redacted(&self.api_key))
            .field("model", &self.model)
            .field("sample_rate", &self.sample_rate())
            .field("ws_url", &self.ws_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("Paraformer {} ({} Hz, streamed) at {}", self.model, self.sample_rate(), self.ws_url)
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate.unwrap_or(ASR_SAMPLE_RATE)
    }

    /// The `parameters` of `run-task`.
    fn parameters(&self) -> Value {
        let mut parameters = json!({
            "format": self.format.trim().to_ascii_lowercase(),
            "sample_rate": self.sample_rate(),
            "disfluency_removal_enabled": self.disfluency_removal_enabled.unwrap_or(false),
            "semantic_punctuation_enabled": self.semantic_punctuation_enabled.unwrap_or(false),
            "max_sentence_silence": self.max_sentence_silence.unwrap_or(200),
            "multi_threshold_mode_enabled": self.multi_threshold_mode_enabled.unwrap_or(false),
            "punctuation_prediction_enabled": self.punctuation_prediction_enabled.unwrap_or(true),
            "inverse_text_normalization_enabled": self.inverse_text_normalization_enabled.unwrap_or(true),
        });
        if let Some(id) = &self.vocabulary_id {
            parameters["vocabulary_id"] = json!(id);
        }
        match &self.language_hints {
            Some(Value::String(one)) if !one.trim().is_empty() => parameters["language_hints"] = json!([one.trim()]),
            Some(Value::Array(many)) if !many.is_empty() => parameters["language_hints"] = Value::Array(many.clone()),
            _ => {}
        }
        parameters
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Asr>, ProviderError> {
    Ok(Arc::new(AliyunBlStreamAsr::new(cfg.clone())?))
}

/// Paraformer real-time recognition on DashScope.
pub struct AliyunBlStreamAsr {
    cfg: Config,
    timeout: Duration,
}

impl AliyunBlStreamAsr {
    /// Validates the entry (the key is checked at request time).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        if !cfg.format.trim().eq_ignore_ascii_case("pcm") {
            return Err(ProviderError::Config(format!("{WHAT}: format `{}`: only pcm is streamed", cfg.format)));
        }
        if !matches!(cfg.sample_rate(), 8_000 | 16_000) {
            return Err(ProviderError::Config(format!("{WHAT}: sample_rate must be 16000 or 8000")));
        }
        if let Some(hints) = &cfg.language_hints
            && !matches!(hints, Value::Null | Value::String(_))
            && !hints.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err(ProviderError::Config(format!("{WHAT}: language_hints must be a list of language codes")));
        }
        let timeout = timeout_from(cfg.timeout, WHAT)?;
        dashscope::check_ws_url(cfg.ws_url.trim(), WHAT)?;
        Ok(Self { cfg, timeout })
    }

    async fn open_stream(&self) -> Result<ParaformerStream, ProviderError> {
        let key = dashscope::require_key(&self.cfg.api_key, WHAT)?;
        let task_id = dashscope::new_task_id();
        let run = dashscope::run_task(&task_id, "asr", "recognition", self.cfg.model.trim(), self.cfg.parameters());
        let headers = dashscope::ws_headers(&key, false);
        let task =
            dashscope::start_task(self.cfg.ws_url.trim(), &headers, task_id, run, self.timeout, "Paraformer ASR start")
                .await?;
        let (sink, stream) = task.ws.split();
        let reader = AbortOnDrop(tokio::spawn(read_results(stream, task.url.clone())));
        Ok(ParaformerStream {
            sink,
            reader: Some(reader),
            early: None,
            task_id: task.task_id,
            url: task.url,
            rate: self.cfg.sample_rate(),
            timeout: self.timeout,
        })
    }
}

#[async_trait]
impl super::Asr for AliyunBlStreamAsr {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        let mut stream = Box::new(self.open_stream().await?);
        // 100 ms pieces, as the documentation recommends.
        for piece in pcm.chunks(ASR_SAMPLE_RATE as usize / 10) {
            stream.push(piece).await?;
        }
        stream.finish().await
    }

    async fn open(&self) -> Option<Result<Box<dyn Recognition>, ProviderError>> {
        Some(self.open_stream().await.map(|s| Box::new(s) as Box<dyn Recognition>))
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One utterance being recognised.
struct ParaformerStream {
    sink: SplitSink<WsStream, Message>,
    reader: Option<AbortOnDrop<Result<String, ProviderError>>>,
    /// The reader's outcome when it ended before `finish`.
    early: Option<Result<String, ProviderError>>,
    task_id: String,
    url: String,
    rate: u32,
    timeout: Duration,
}

impl ParaformerStream {
    /// The reader's outcome, if it ended already.
    async fn reader_done(&mut self) -> Option<&Result<String, ProviderError>> {
        if self.early.is_none() && self.reader.as_ref().is_some_and(|r| r.0.is_finished()) {
            let mut reader = self.reader.take()?;
            self.early = Some(joined(&self.url, (&mut reader.0).await));
        }
        self.early.as_ref()
    }

    async fn send(&mut self, message: Message) -> Result<(), ProviderError> {
        match tokio::time::timeout(self.timeout, self.sink.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(dashscope::transport(&self.url, &e)),
            Err(_) => {
                Err(ProviderError::Timeout { what: "Paraformer ASR audio".into(), seconds: self.timeout.as_secs() })
            }
        }
    }
}

fn joined(
    url: &str,
    outcome: Result<Result<String, ProviderError>, tokio::task::JoinError>,
) -> Result<String, ProviderError> {
    outcome.unwrap_or_else(|e| Err(dashscope::protocol(url, format!("the result reader stopped: {e}"))))
}

#[async_trait]
impl Recognition for ParaformerStream {
    async fn push(&mut self, pcm: &[i16]) -> Result<(), ProviderError> {
        if let Some(Err(e)) = self.reader_done().await {
            return Err(clone_error(e));
        }
        if self.early.is_some() || pcm.is_empty() {
            return Ok(());
        }
        let samples = if self.rate == ASR_SAMPLE_RATE {
            std::borrow::Cow::Borrowed(pcm)
        } else {
            std::borrow::Cow::Owned(crate::audio::resample::resample(pcm, ASR_SAMPLE_RATE, self.rate))
        };
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        self.send(Message::binary(bytes)).await
    }

    async fn finish(mut self: Box<Self>) -> Result<String, ProviderError> {
        if self.reader_done().await.is_none() {
            let finish = dashscope::finish_task(&self.task_id);
            self.send(Message::text(finish)).await?;
        }
        let outcome = match (self.early.take(), self.reader.take()) {
            (Some(outcome), _) => outcome,
            (None, Some(mut reader)) => match tokio::time::timeout(self.timeout, &mut reader.0).await {
                Ok(outcome) => joined(&self.url, outcome),
                Err(_) => {
                    return Err(ProviderError::Timeout {
                        what: "Paraformer ASR result".into(),
                        seconds: self.timeout.as_secs(),
                    });
                }
            },
            (None, None) => Err(dashscope::protocol(&self.url, "no result reader")),
        };
        let _ = self.sink.close().await;
        outcome.map(|text| text.trim().to_owned())
    }
}

/// A copy of an error for a second report (the first one was logged by the session).
fn clone_error(e: &ProviderError) -> ProviderError {
    match e {
        ProviderError::Transport { url, message } => {
            ProviderError::Transport { url: url.clone(), message: message.clone() }
        }
        ProviderError::Status { url, status, body } => {
            ProviderError::Status { url: url.clone(), status: *status, body: body.clone() }
        }
        ProviderError::Timeout { what, seconds } => ProviderError::Timeout { what: what.clone(), seconds: *seconds },
        ProviderError::Protocol { url, message } => {
            ProviderError::Protocol { url: url.clone(), message: message.clone() }
        }
        ProviderError::Config(message) => ProviderError::Config(message.clone()),
    }
}

/// The text so far: the sentences that ended, then the one in progress.
#[derive(Debug, Default)]
struct Transcript {
    ended: String,
    current: String,
}

impl Transcript {
    /// Takes one `result-generated` payload.
    fn add(&mut self, payload: &Value) {
        let sentence = &payload["output"]["sentence"];
        if sentence.get("heartbeat").and_then(Value::as_bool) == Some(true) {
            return;
        }
        let Some(text) = sentence.get("text").and_then(Value::as_str) else { return };
        if sentence.get("sentence_end").and_then(Value::as_bool) == Some(true) {
            self.ended.push_str(text);
            self.current.clear();
        } else {
            self.current = text.to_owned();
        }
    }

    fn text(&self) -> String {
        format!("{}{}", self.ended, self.current)
    }
}

/// Reads the events of the task until `task-finished` (the text) or `task-failed`.
async fn read_results(mut stream: SplitStream<WsStream>, url: String) -> Result<String, ProviderError> {
    let mut transcript = Transcript::default();
    while let Some(message) = stream.next().await {
        match message.map_err(|e| dashscope::transport(&url, &e))? {
            Message::Text(text) => match dashscope::parse_event(&text).map_err(|e| dashscope::protocol(&url, e))? {
                Event::ResultGenerated(payload) => transcript.add(&payload),
                Event::TaskFinished => return Ok(transcript.text()),
                Event::TaskFailed { code, message } => return Err(dashscope::task_failed(&url, &code, &message)),
                Event::TaskStarted | Event::Other(_) => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    Err(dashscope::closed(&url, ""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asr::Asr;
    use tokio::net::TcpListener;

    #[test]
    fn run_task_carries_the_python_parameters() {
        let cfg: Config = serde_yaml_ng::from_str(
            "api_key: sk-secret\nmodel: paraformer-realtime-v2\nformat: pcm\nsample_rate: 16000\n\
             disfluency_removal_enabled: false\nsemantic_punctuation_enabled: false\nmax_sentence_silence: 200\n\
             multi_threshold_mode_enabled: false\npunctuation_prediction_enabled: true\n\
             inverse_text_normalization_enabled: true\noutput_dir: tmp/\nlanguage_hints: [zh, en]\nvocabulary_id: vocab-1",
        )
        .expect("valid");
        let run: Value =
            serde_json::from_str(&dashscope::run_task("t", "asr", "recognition", &cfg.model, cfg.parameters()))
                .expect("json");
        assert_eq!(
            run["payload"],
            json!({"task_group": "audio", "task": "asr", "function": "recognition", "model": "paraformer-realtime-v2",
                "parameters": {"format": "pcm", "sample_rate": 16000, "disfluency_removal_enabled": false,
                    "semantic_punctuation_enabled": false, "max_sentence_silence": 200,
                    "multi_threshold_mode_enabled": false, "punctuation_prediction_enabled": true,
                    "inverse_text_normalization_enabled": true, "language_hints": ["zh", "en"],
                    "vocabulary_id": "vocab-1"},
                "input": {}})
        );
        assert!(!format!("{cfg:?}").contains("sk-secret"));
        assert!(AliyunBlStreamAsr::new(Config { format: "opus".into(), ..Config::default() }).is_err());
        assert!(AliyunBlStreamAsr::new(Config { sample_rate: Some(44_100), ..Config::default() }).is_err());
        assert!(AliyunBlStreamAsr::new(Config::default()).is_ok(), "empty credentials build");
    }

    #[test]
    fn every_python_key_is_known() {
        let yaml = "type: aliyunbl_stream\napi_key: k\nmodel: paraformer-realtime-v2\nformat: pcm\nsample_rate: 16000\n\
                    vocabulary_id: v\ndisfluency_removal_enabled: false\nlanguage_hints: [zh]\n\
                    semantic_punctuation_enabled: false\nmax_sentence_silence: 200\nmulti_threshold_mode_enabled: false\n\
                    punctuation_prediction_enabled: true\ninverse_text_normalization_enabled: true\noutput_dir: tmp/\n\
                    ws_url: wss://x/api-ws/v1/inference\ntimeout: 5";
        assert_eq!(dashscope::unknown_keys::<Config>(yaml), Vec::<String>::new());
    }

    #[test]
    fn sentences_add_up() {
        let mut t = Transcript::default();
        let result = |text: &str, end: bool| json!({"output": {"sentence": {"text": text, "sentence_end": end}}});
        t.add(&result("今天", false));
        t.add(&result("今天天气", false));
        t.add(&result("今天天气好。", true));
        t.add(&json!({"output": {"sentence": {"heartbeat": true, "text": ""}}}));
        t.add(&result("我们", false));
        assert_eq!(t.text(), "今天天气好。我们");
    }

    /// A one-connection Paraformer peer: partial results while audio comes, the final one at
    /// `finish-task`; or `task-failed` after the first audio when `fail`.
    #[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
    async fn peer(fail: bool) -> (String, tokio::task::JoinHandle<(Option<String>, usize)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/api-ws/v1/inference", listener.local_addr().expect("addr"));
        let handle = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut auth = None;
            let mut ws = tokio_tungstenite::accept_hdr_async(
                stream,
                |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                 resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    Ok(resp)
                },
            )
            .await
            .expect("handshake");
            let mut bytes = 0;
            let mut task_id = String::new();
            let event = |task_id: &str, name: &str, payload: Value| {
                Message::text(json!({"header": {"task_id": task_id, "event": name}, "payload": payload}).to_string())
            };
            while let Some(Ok(message)) = ws.next().await {
                match message {
                    Message::Text(text) => {
                        let command: Value = serde_json::from_str(&text).expect("json");
                        task_id = command["header"]["task_id"].as_str().unwrap_or_default().to_owned();
                        match command["header"]["action"].as_str() {
                            Some("run-task") => {
                                let _ = ws.send(event(&task_id, "task-started", json!({}))).await;
                            }
                            Some("finish-task") => {
                                let sentence = json!({"output": {"sentence": {"text": "你好世界。", "sentence_end": true, "end_time": 900}}});
                                let _ = ws.send(event(&task_id, "result-generated", sentence)).await;
                                let _ = ws.send(event(&task_id, "task-finished", json!({"output": {}}))).await;
                            }
                            _ => {}
                        }
                    }
                    Message::Binary(audio) => {
                        bytes += audio.len();
                        if fail {
                            let failed = Message::text(
                                json!({"header": {"task_id": task_id, "event": "task-failed",
                                    "error_code": "NO_VALID_AUDIO_ERROR", "error_message": "no valid audio"}, "payload": {}})
                                .to_string(),
                            );
                            let _ = ws.send(failed).await;
                            let _ = ws.close(None).await;
                            break;
                        }
                        let partial = json!({"output": {"sentence": {"text": "你好", "sentence_end": false}}});
                        let _ = ws.send(event(&task_id, "result-generated", partial)).await;
                    }
                    _ => {}
                }
            }
            (auth, bytes)
        });
        (url, handle)
    }

    fn config(url: &str) -> Config {
        Config { api_key: "sk-test".into(), ws_url: url.into(), timeout: 3, ..Config::default() }
    }

    #[tokio::test]
    async fn streams_audio_and_returns_the_final_text() {
        let (url, peer) = peer(false).await;
        let asr = AliyunBlStreamAsr::new(config(&url)).expect("valid");
        let mut recognition = asr.open().await.expect("streaming").expect("opened");
        for _ in 0..5 {
            recognition.push(&[100i16; 960]).await.expect("pushed");
        }
        assert_eq!(recognition.finish().await.expect("text"), "你好世界。");
        let (auth, bytes) = peer.await.expect("peer");
        assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
        assert_eq!(bytes, 5 * 960 * 2);
    }

    #[tokio::test]
    async fn task_failed_is_the_vendors_error() {
        let (url, _peer) = peer(true).await;
        let asr = AliyunBlStreamAsr::new(config(&url)).expect("valid");
        let mut recognition = asr.open().await.expect("streaming").expect("opened");
        recognition.push(&[100i16; 960]).await.expect("the first push is sent");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let err = recognition.push(&[100i16; 960]).await.expect_err("failed");
        assert!(err.to_string().contains("NO_VALID_AUDIO_ERROR"), "{err}");
        let err = recognition.finish().await.expect_err("still failed");
        assert!(err.to_string().contains("no valid audio"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_key_is_named_at_request_time() {
        let asr = AliyunBlStreamAsr::new(Config::default()).expect("builds");
        let err = asr.open().await.expect("streaming").err().expect("error");
        assert!(err.to_string().contains("api_key"), "{err}");
    }
}
