//! `type: alibl_stream`: Aliyun Bailian (DashScope) CosyVoice synthesis over the DashScope
//! WebSocket task protocol ("CosyVoice WebSocket API", Alibaba Cloud Model Studio), text streamed
//! in as it is written.
//!
//! One task per sentence: the WebSocket opens with the bearer key, `run-task` (task `tts`,
//! function `SpeechSynthesizer`, the model, voice, format, sample rate, volume, rate, pitch),
//! `task-started`, then one `continue-task` per piece of the sentence as the model writes it,
//! `finish-task` when the sentence is complete; the audio arrives as binary frames and is handed on
//! as it comes, until `task-finished`. `task-failed` becomes the vendor's code and message. The
//! server waits for text at most 23 s, so a task starts only with the sentence's first words. A
//! connection whose task finished is kept (50 s, two at most) for the next sentences, as the
//! documentation allows; dropping the audio stream mid-task closes its connection.

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
use crate::remote::dashscope::{self, DEFAULT_WS_URL, Event, Idle, Task, lenient};
use crate::remote::{ProviderError, json_f32, timeout_from};

/// What errors and timeouts call this provider.
const WHAT: &str = "TTS.alibl_stream";

/// Audio chunks waiting for the speaker.
const AUDIO_QUEUE: usize = 64;

/// `TTS.<name>` with `type: alibl_stream`: the Python server's keys.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The DashScope API key (a bearer token).
    pub api_key: String,
    /// `cosyvoice-v2` (or another CosyVoice model).
    pub model: String,
    /// The voice.
    pub voice: String,
    /// A cloned voice; replaces `voice` when set.
    #[serde(deserialize_with = "lenient::opt_boxed")]
    pub private_voice: Option<Box<str>>,
    /// Per-language voices of the Python server (used there only after FunASR's language tag).
    #[serde(deserialize_with = "lenient::opt_boxed")]
    pub voice_zh: Option<Box<str>>,
    /// See `voice_zh`.
    #[serde(deserialize_with = "lenient::opt_boxed")]
    pub voice_yue: Option<Box<str>>,
    /// See `voice_zh`.
    #[serde(deserialize_with = "lenient::opt_boxed")]
    pub voice_en: Option<Box<str>>,
    /// See `voice_zh`.
    #[serde(deserialize_with = "lenient::opt_boxed")]
    pub voice_ja: Option<Box<str>>,
    /// See `voice_zh`.
    #[serde(deserialize_with = "lenient::opt_boxed")]
    pub voice_ko: Option<Box<str>>,
    /// `pcm` (default), `wav`, `mp3` or `opus`.
    pub format: String,
    /// Output sample rate (default 24000).
    #[serde(deserialize_with = "lenient::opt_u32")]
    pub sample_rate: Option<u32>,
    /// 0..100 (default 50).
    #[serde(deserialize_with = "lenient::opt_u32")]
    pub volume: Option<u32>,
    /// Speed, 0.5..2 (default 1).
    #[serde(deserialize_with = "lenient::opt_f32")]
    pub rate: Option<f32>,
    /// Pitch, 0.5..2 (default 1).
    #[serde(deserialize_with = "lenient::opt_f32")]
    pub pitch: Option<f32>,
    /// The output language of the Python file's comment (`中文`, `英语`…); accepted, not sent:
    /// the voice decides the language.
    #[serde(deserialize_with = "lenient::opt_boxed")]
    pub language: Option<Box<str>>,
    /// Accepted for the Python file; audio is not written to disk here.
    pub output_dir: Option<Box<str>>,
    /// The WebSocket endpoint (another region, a workspace domain).
    pub ws_url: String,
    /// Seconds allowed to connect and start, and for each wait for audio once the text is
    /// complete.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            model: "cosyvoice-v2".into(),
            voice: "longxiaochun_v2".into(),
            private_voice: None,
            voice_zh: None,
            voice_yue: None,
            voice_en: None,
            voice_ja: None,
            voice_ko: None,
            format: "pcm".into(),
            sample_rate: None,
            volume: None,
            rate: None,
            pitch: None,
            language: None,
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
            .field("voice", &self.voice())
            .field("format", &self.format)
            .field("sample_rate", &self.sample_rate())
            .field("ws_url", &self.ws_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!(
            "CosyVoice {} voice {} ({} {} Hz) at {}",
            self.model,
            self.voice(),
            self.format,
            self.sample_rate(),
            self.ws_url
        )
    }

    /// The voice used: `private_voice` when set, else `voice`.
    fn voice(&self) -> &str {
        self.private_voice.as_deref().unwrap_or(self.voice.trim())
    }

    fn sample_rate(&self) -> u32 {
        self.sample_rate.unwrap_or(24_000)
    }

    /// The `parameters` of `run-task`.
    fn parameters(&self) -> serde_json::Value {
        json!({
            "text_type": "PlainText",
            "voice": self.voice(),
            "format": self.format.trim().to_ascii_lowercase(),
            "sample_rate": self.sample_rate(),
            "volume": self.volume.unwrap_or(50),
            "rate": self.rate.and_then(json_f32).unwrap_or(json!(1.0)),
            "pitch": self.pitch.and_then(json_f32).unwrap_or(json!(1.0)),
        })
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(AliBlStreamTts::new(cfg.clone())?))
}

/// CosyVoice on DashScope.
pub struct AliBlStreamTts {
    cfg: Config,
    format: AudioFormat,
    timeout: Duration,
    /// Connections whose task finished, for the next sentences.
    idle: Arc<Idle>,
}

impl AliBlStreamTts {
    /// Validates the entry (the key is checked at request time).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let format = AudioFormat::from_name(&cfg.format, cfg.sample_rate()).ok_or_else(|| {
            ProviderError::Config(format!("{WHAT}: format `{}` is not one of pcm, wav, mp3, opus", cfg.format))
        })?;
        if cfg.sample_rate() == 0 {
            return Err(ProviderError::Config(format!("{WHAT}: sample_rate must be above 0")));
        }
        let timeout = timeout_from(cfg.timeout, WHAT)?;
        dashscope::check_ws_url(cfg.ws_url.trim(), WHAT)?;
        Ok(Self { cfg, format, timeout, idle: Arc::default() })
    }

    /// Opens a task for a sentence whose first piece is `first`; the rest comes from `rest`.
    async fn start(&self, first: String, rest: Option<TextStream>) -> Result<AudioStream, ProviderError> {
        let key = dashscope::require_key(&self.cfg.api_key, WHAT)?;
        let task_id = dashscope::new_task_id();
        let run =
            dashscope::run_task(&task_id, "tts", "SpeechSynthesizer", self.cfg.model.trim(), self.cfg.parameters());
        let url = self.cfg.ws_url.trim();
        let what = "CosyVoice TTS start";
        // A connection whose task finished is reused; one the server has closed meanwhile is
        // replaced by a new one.
        let reused = match self.idle.take() {
            Some(ws) => match dashscope::begin_task(ws, url, task_id.clone(), run.clone(), self.timeout, what).await {
                Ok(task) => Some(task),
                Err((_, true)) => None,
                Err((e, false)) => return Err(e),
            },
            None => None,
        };
        let task = match reused {
            Some(task) => task,
            None => {
                let headers = dashscope::ws_headers(&key, true);
                dashscope::start_task(url, &headers, task_id, run, self.timeout, what).await?
            }
        };
        let (tx, rx) = mpsc::channel(AUDIO_QUEUE);
        let worker = Worker {
            task,
            decoder: Some(ChunkDecoder::new(self.format)),
            tx,
            timeout: self.timeout,
            idle: Arc::clone(&self.idle),
        };
        tokio::spawn(worker.run(first, rest));
        Ok(channel_stream(rx))
    }
}

#[async_trait]
impl super::Tts for AliBlStreamTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(silence());
        }
        self.start(text.to_owned(), None).await
    }

    fn streams_text(&self) -> bool {
        true
    }

    async fn speak_text(&self, mut text: TextStream) -> Result<AudioStream, ProviderError> {
        // The task starts with the first words: the server gives up on a task without text.
        loop {
            match text.recv().await {
                None => return Ok(silence()),
                Some(piece) if piece.trim().is_empty() => {}
                Some(piece) => return self.start(piece, Some(text)).await,
            }
        }
    }
}

/// One sentence's task: sends the text as it comes, hands on the audio as it arrives.
struct Worker {
    task: Task,
    decoder: Option<ChunkDecoder>,
    tx: mpsc::Sender<Result<AudioChunk, ProviderError>>,
    timeout: Duration,
    idle: Arc<Idle>,
}

impl Worker {
    async fn run(mut self, first: String, rest: Option<TextStream>) {
        match self.exchange(first, rest).await {
            // The task finished: its connection serves the next sentence.
            Ok(true) => self.idle.put(self.task.ws),
            // Dropping a connection in the middle of a task closes it.
            Ok(false) => {}
            Err(e) => {
                let _ = self.tx.send(Err(e)).await;
            }
        }
    }

    async fn send(&mut self, text: String) -> Result<(), ProviderError> {
        let url = self.task.url.clone();
        self.task.ws.send(Message::text(text)).await.map_err(|e| dashscope::transport(&url, &e))
    }

    /// `Ok(false)`: the listener is gone.
    async fn audio(&mut self, bytes: &[u8]) -> Result<bool, ProviderError> {
        let Some(decoder) = self.decoder.as_mut() else { return Ok(true) };
        let chunks = decoder.push(bytes).map_err(|e| dashscope::protocol(&self.task.url, e.to_string()))?;
        for chunk in chunks {
            if self.tx.send(Ok(chunk)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `Ok(true)`: the task finished; `Ok(false)`: the listener went away before.
    async fn exchange(&mut self, first: String, mut rest: Option<TextStream>) -> Result<bool, ProviderError> {
        let continue_first = dashscope::continue_task(&self.task.task_id, &first);
        self.send(continue_first).await?;
        let mut deadline = None;
        if rest.is_none() {
            self.send(dashscope::finish_task(&self.task.task_id)).await?;
            deadline = Some(tokio::time::Instant::now() + self.timeout);
        }
        loop {
            let url = self.task.url.clone();
            tokio::select! {
                _ = self.tx.closed() => return Ok(false),
                piece = async { rest.as_mut()?.recv().await }, if rest.is_some() => match piece {
                    Some(piece) if piece.trim().is_empty() => {}
                    Some(piece) => {
                        let command = dashscope::continue_task(&self.task.task_id, &piece);
                        self.send(command).await?;
                    }
                    None => {
                        rest = None;
                        self.send(dashscope::finish_task(&self.task.task_id)).await?;
                        deadline = Some(tokio::time::Instant::now() + self.timeout);
                    }
                },
                () = sleep_until(deadline) => {
                    return Err(ProviderError::Timeout { what: "CosyVoice TTS audio".into(), seconds: self.timeout.as_secs() });
                }
                message = self.task.ws.next() => {
                    if deadline.is_some() {
                        deadline = Some(tokio::time::Instant::now() + self.timeout);
                    }
                    match message {
                        None => return Err(dashscope::closed(&url, "")),
                        Some(Err(e)) => return Err(dashscope::transport(&url, &e)),
                        Some(Ok(Message::Binary(bytes))) => {
                            if !self.audio(&bytes).await? {
                                return Ok(false);
                            }
                        }
                        Some(Ok(Message::Text(text))) => match dashscope::parse_event(&text) {
                            Ok(Event::TaskFinished) => return self.finish().await,
                            Ok(Event::TaskFailed { code, message }) => {
                                return Err(dashscope::task_failed(&url, &code, &message));
                            }
                            Ok(_) => {}
                            Err(e) => return Err(dashscope::protocol(&url, e)),
                        },
                        Some(Ok(Message::Close(_))) => return Err(dashscope::closed(&url, "")),
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }

    /// `task-finished`: the decoder's last chunks, then the stream ends.
    async fn finish(&mut self) -> Result<bool, ProviderError> {
        if let Some(decoder) = self.decoder.take() {
            let chunks = decoder.finish().map_err(|e| dashscope::protocol(&self.task.url, e.to_string()))?;
            for chunk in chunks {
                if self.tx.send(Ok(chunk)).await.is_err() {
                    break;
                }
            }
        }
        Ok(true)
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tts::Tts;
    use serde_json::Value;
    use tokio::net::TcpListener;

    fn config(url: &str) -> Config {
        Config { api_key: "sk-test".into(), ws_url: url.into(), timeout: 3, ..Config::default() }
    }

    #[test]
    fn run_task_carries_the_python_parameters() {
        let mut cfg = config(DEFAULT_WS_URL);
        cfg.voice = "longcheng_v2".into();
        cfg.sample_rate = Some(16_000);
        let run: Value =
            serde_json::from_str(&dashscope::run_task("t", "tts", "SpeechSynthesizer", &cfg.model, cfg.parameters()))
                .expect("json");
        assert_eq!(
            run["payload"],
            json!({"task_group": "audio", "task": "tts", "function": "SpeechSynthesizer", "model": "cosyvoice-v2",
                "parameters": {"text_type": "PlainText", "voice": "longcheng_v2", "format": "pcm", "sample_rate": 16000,
                    "volume": 50, "rate": 1.0, "pitch": 1.0}, "input": {}})
        );
        cfg.private_voice = Some("cosyvoice-v2-myvoice".into());
        assert_eq!(cfg.parameters()["voice"], "cosyvoice-v2-myvoice");
    }

    #[test]
    fn every_python_key_is_known() {
        // The Python config.yaml entry and every key its provider reads.
        let yaml = "type: alibl_stream\napi_key: k\nmodel: cosyvoice-v2\nvoice: longcheng_v2\noutput_dir: tmp/\n\
                    private_voice: ''\nvoice_zh: a\nvoice_yue: b\nvoice_en: c\nvoice_ja: d\nvoice_ko: e\nformat: pcm\n\
                    sample_rate: 24000\nvolume: 50\nrate: 1.0\npitch: 1.0\nlanguage: 中文\nws_url: wss://x/api-ws/v1/inference\ntimeout: 5";
        assert_eq!(dashscope::unknown_keys::<Config>(yaml), Vec::<String>::new());
    }

    #[test]
    fn the_python_entry_is_read_and_debug_hides_the_key() {
        let yaml = "api_key: sk-secret\nmodel: cosyvoice-v2\nvoice: longcheng_v2\noutput_dir: tmp/\nsample_rate: '16000'\n\
                    volume: '80'\nrate: 1.2\npitch: '1'\nvoice_zh: a\nvoice_en: b\nprivate_voice: ''";
        let cfg: Config = serde_yaml_ng::from_str(yaml).expect("valid");
        assert_eq!((cfg.sample_rate, cfg.volume, cfg.rate, cfg.pitch), (Some(16_000), Some(80), Some(1.2), Some(1.0)));
        assert_eq!(cfg.voice(), "longcheng_v2");
        assert!(!format!("{cfg:?}").contains("sk-secret"));
        assert!(!cfg.summary().contains("sk-secret"));
        // Empty credentials build; the request names the key.
        let tts = AliBlStreamTts::new(Config::default()).expect("builds");
        let err = futures_util::FutureExt::now_or_never(tts.speak("你好")).expect("immediate").err().expect("error");
        assert!(err.to_string().contains("api_key"), "{err}");
        assert!(AliBlStreamTts::new(Config { format: "flac".into(), ..Config::default() }).is_err());
        assert!(AliBlStreamTts::new(Config { ws_url: "http://x".into(), ..Config::default() }).is_err());
    }

    /// A one-connection peer: answers `run-task` with `task-started`, then per `script`.
    #[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
    async fn peer(
        script: fn(Value, &str) -> Vec<Message>,
    ) -> (String, tokio::task::JoinHandle<(Option<String>, Vec<Value>)>) {
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
            let mut commands = Vec::new();
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else { continue };
                let command: Value = serde_json::from_str(&text).expect("json");
                let action = command["header"]["action"].as_str().unwrap_or_default().to_owned();
                let task_id = command["header"]["task_id"].as_str().unwrap_or_default().to_owned();
                commands.push(command.clone());
                let replies = if action == "run-task" {
                    vec![Message::text(
                        json!({"header": {"task_id": task_id, "event": "task-started"}, "payload": {}}).to_string(),
                    )]
                } else {
                    script(command, &task_id)
                };
                for reply in replies {
                    if ws.send(reply).await.is_err() {
                        return (auth, commands);
                    }
                }
            }
            (auth, commands)
        });
        (url, handle)
    }

    fn event(task_id: &str, event: &str) -> Message {
        Message::text(
            json!({"header": {"task_id": task_id, "event": event, "attributes": {}}, "payload": {}}).to_string(),
        )
    }

    #[tokio::test]
    async fn streams_text_in_and_pcm_out() {
        let (url, peer) = peer(|command, task_id| match command["header"]["action"].as_str() {
            Some("continue-task") => vec![Message::binary(vec![1u8, 0, 2, 0])],
            Some("finish-task") => vec![Message::binary(vec![3u8, 0]), event(task_id, "task-finished")],
            _ => vec![],
        })
        .await;
        let tts = AliBlStreamTts::new(config(&url)).expect("valid");
        assert!(tts.streams_text());
        let (tx, rx) = mpsc::channel(8);
        tx.send("你好，".to_owned()).await.expect("send");
        let mut stream = tts.speak_text(rx).await.expect("started");
        let first = stream.next().await.expect("a chunk").expect("audio");
        assert_eq!(first, AudioChunk::Pcm { samples: vec![1, 2], sample_rate: 24_000 });
        tx.send("世界。".to_owned()).await.expect("send");
        drop(tx);
        let mut rest = Vec::new();
        while let Some(chunk) = stream.next().await {
            let AudioChunk::Pcm { samples, .. } = chunk.expect("audio") else { panic!("pcm") };
            rest.extend(samples);
        }
        assert_eq!(rest, vec![1, 2, 3]);
        // The next sentence runs on the same connection (the peer accepts only one).
        let clip = tts.synthesize("再见。").await.expect("a second task");
        assert_eq!(clip.samples, vec![1, 2, 3]);
        drop(tts);
        let (auth, commands) = peer.await.expect("peer");
        assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
        let actions: Vec<_> =
            commands.iter().map(|c| c["header"]["action"].as_str().unwrap_or_default().to_owned()).collect();
        assert_eq!(
            actions,
            ["run-task", "continue-task", "continue-task", "finish-task", "run-task", "continue-task", "finish-task"]
        );
        assert_ne!(commands[0]["header"]["task_id"], commands[4]["header"]["task_id"], "a new task id per task");
        assert_eq!(commands[1]["payload"]["input"]["text"], "你好，");
        assert_eq!(commands[2]["payload"]["input"]["text"], "世界。");
        let task_id = &commands[0]["header"]["task_id"];
        assert!(
            commands[..4].iter().all(|c| &c["header"]["task_id"] == task_id && c["header"]["streaming"] == "duplex")
        );
    }

    #[tokio::test]
    async fn task_failed_is_the_vendors_error() {
        let (url, _peer) = peer(|_, task_id| {
            vec![Message::text(
                json!({"header": {"task_id": task_id, "event": "task-failed", "error_code": "InvalidParameter",
                    "error_message": "voice not found", "attributes": {}}, "payload": {}})
                .to_string(),
            )]
        })
        .await;
        let tts = AliBlStreamTts::new(config(&url)).expect("valid");
        let mut stream = tts.speak("你好").await.expect("started");
        let err = stream.next().await.expect("an item").expect_err("the vendor's error");
        let text = err.to_string();
        assert!(text.contains("InvalidParameter") && text.contains("voice not found"), "{text}");
        assert!(stream.next().await.is_none());
    }
}
