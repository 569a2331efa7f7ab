//! `type: fishspeech`: a Fish Speech API server (`python -m tools.api_server --listen 0.0.0.0:8080`,
//! or its Docker image).
//!
//! Fish Speech's HTTP API (`tools/server/views.py`, `fish_speech/utils/schema.py` of
//! fishaudio/fish-speech): `POST /v1/tts` with a `ServeTTSRequest` body — `text`, `chunk_length`,
//! `format` (`wav`, `pcm`, `mp3`), `references` (`[{audio, text}]`: reference audio and its
//! transcript), `reference_id`, `seed`, `use_memory_cache`, `normalize`, `streaming`,
//! `max_new_tokens`, `top_p`, `repetition_penalty`, `temperature` — as JSON (the server takes JSON,
//! msgpack or a form; reference audio goes as base64, which the server's schema decodes). A server
//! started with `--api-key` wants `Authorization: Bearer <key>`. With `streaming: true` (WAV only)
//! the answer is a WAV header and then PCM segment by segment as they are decoded, read as it
//! arrives; otherwise one whole file. Errors are an HTTP status with a JSON body, kept in
//! [`ProviderError::Status`].
//!
//! The same request goes to Fish Audio's hosted API (`api_url: https://api.fish.audio/v1/tts`,
//! which the Python provider reaches through its SDK): it takes JSON too and reads the backend
//! from the `model` header (`model` key, `s1` by default), which a self-hosted server ignores.
//!
//! The Python entry's keys are all accepted; `reference_audio`/`ref_audio` files and
//! `reference_text`/`ref_text` (text, or a file holding it) are read when the entry is built.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use reqwest::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AudioStream, http_audio, silence};
use crate::audio::decode::AudioFormat;
use crate::remote::pyconf;
use crate::remote::{ProviderError, check_url, request_error, streaming_client, timeout_from};

/// Largest reference audio file read (bytes).
const MAX_REFERENCE_BYTES: u64 = 16 << 20;

/// `TTS.<name>` with `type: fishspeech`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The server's `/v1/tts` URL.
    pub api_url: String,
    /// The server's `--api-key` (empty: no `Authorization` header).
    pub api_key: String,
    /// The backend model, sent as the `model` header that the hosted API (`api_url:
    /// https://api.fish.audio/v1/tts`, as the Python provider's SDK calls it) reads; a self-hosted
    /// server ignores it.
    pub model: String,
    /// A voice stored on the server (its reference id).
    #[serde(deserialize_with = "pyconf::text")]
    pub reference_id: String,
    /// Reference audio files, in order (a list, or `a.wav;b.wav`).
    #[serde(deserialize_with = "pyconf::str_list")]
    pub reference_audio: Vec<String>,
    /// The Python server's other name for `reference_audio` (wins when set).
    #[serde(deserialize_with = "pyconf::str_list")]
    pub ref_audio: Vec<String>,
    /// Transcripts of the reference audio (text, or a file holding it), in the same order.
    #[serde(deserialize_with = "pyconf::str_list")]
    pub reference_text: Vec<String>,
    /// The Python server's other name for `reference_text` (wins when set).
    #[serde(deserialize_with = "pyconf::str_list")]
    pub ref_text: Vec<String>,
    /// `wav` (the only streaming format), `pcm` or `mp3`.
    #[serde(alias = "format")]
    pub response_format: String,
    /// Whether the server normalizes numbers in zh/en text.
    #[serde(deserialize_with = "pyconf::flag")]
    pub normalize: bool,
    /// Most tokens generated (default 1024).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub max_new_tokens: Option<i64>,
    /// Text chunk length (default 200).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub chunk_length: Option<i64>,
    /// Sampling: top p (default 0.7).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub top_p: Option<f64>,
    /// Repetition penalty (default 1.2).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub repetition_penalty: Option<f64>,
    /// Sampling temperature (default 0.7).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub temperature: Option<f64>,
    /// Whether the server streams the audio as it is produced (WAV only).
    #[serde(deserialize_with = "pyconf::flag")]
    pub streaming: bool,
    /// `on` or `off`: the server caches the encoded references.
    #[serde(deserialize_with = "pyconf::text")]
    pub use_memory_cache: String,
    /// Random seed (empty: random).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub seed: Option<i64>,
    /// Channels of the output (Fish Speech speaks mono; unused).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub channels: Option<i64>,
    /// Sample rate of `pcm` answers (the model's rate, 44100 by default).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub rate: Option<i64>,
    /// Where the Python server saved audio files (unused: audio streams to the device).
    pub output_dir: Option<String>,
    /// Seconds to wait for the answer and for each pause inside it.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_url: "http://127.0.0.1:8080/v1/tts".into(),
            api_key: String::new(),
            model: "s1".into(),
            reference_id: String::new(),
            reference_audio: Vec::new(),
            ref_audio: Vec::new(),
            reference_text: Vec::new(),
            ref_text: Vec::new(),
            response_format: "wav".into(),
            normalize: true,
            max_new_tokens: None,
            chunk_length: None,
            top_p: None,
            repetition_penalty: None,
            temperature: None,
            streaming: false,
            use_memory_cache: "on".into(),
            seed: None,
            channels: None,
            rate: None,
            output_dir: None,
            timeout: 60,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &self.api_url)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "<set>" })
            .field("reference_id", &self.reference_id)
            .field("reference_audio", &self.reference_audio)
            .field("response_format", &self.response_format)
            .field("streaming", &self.streaming)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A reference voice: audio and its transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// The audio file's bytes.
    pub audio: Vec<u8>,
    /// What is said in it.
    pub text: String,
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        let voice = if !self.reference_id.trim().is_empty() {
            format!("reference {}", self.reference_id.trim())
        } else {
            format!("{} reference file(s)", self.audio_paths().len())
        };
        format!("{} {voice} ({}{})", self.api_url, self.format_name(), if self.streaming { ", streaming" } else { "" })
    }

    fn audio_paths(&self) -> &[String] {
        if self.ref_audio.is_empty() { &self.reference_audio } else { &self.ref_audio }
    }

    fn texts(&self) -> &[String] {
        if self.ref_text.is_empty() { &self.reference_text } else { &self.ref_text }
    }

    fn format_name(&self) -> String {
        let name = self.response_format.trim().to_ascii_lowercase();
        if name.is_empty() { "wav".into() } else { name }
    }

    /// The references of the entry: each audio file (empty when it cannot be read, as the Python
    /// provider sends it) with its transcript (read from a file when it names one).
    pub fn load_references(&self) -> Vec<Reference> {
        self.audio_paths()
            .iter()
            .zip(self.texts())
            .map(|(path, text)| {
                let audio = match std::fs::metadata(path) {
                    Ok(meta) if meta.len() <= MAX_REFERENCE_BYTES => std::fs::read(path).unwrap_or_default(),
                    Ok(_) => {
                        tracing::warn!("TTS.fishspeech: reference audio {path} is too large; not sent");
                        Vec::new()
                    }
                    Err(e) => {
                        tracing::warn!("TTS.fishspeech: reference audio {path} cannot be read: {e}");
                        Vec::new()
                    }
                };
                let text = match std::fs::metadata(text) {
                    Ok(meta) if meta.is_file() && meta.len() <= MAX_REFERENCE_BYTES => {
                        std::fs::read_to_string(text).unwrap_or_else(|_| text.clone())
                    }
                    _ => text.clone(),
                };
                Reference { audio, text }
            })
            .collect()
    }

    /// The JSON `ServeTTSRequest` of one sentence.
    pub fn request_body(&self, text: &str, references: &[Reference]) -> Value {
        let base64 = base64::engine::general_purpose::STANDARD;
        let reference_id = self.reference_id.trim();
        let cache = match self.use_memory_cache.trim().to_ascii_lowercase().as_str() {
            "off" | "false" => "off",
            _ => "on",
        };
        json!({
            "text": text,
            "chunk_length": self.chunk_length.unwrap_or(200),
            "format": self.format_name(),
            "references": references
                .iter()
                .map(|r| json!({"audio": base64.encode(&r.audio), "text": r.text}))
                .collect::<Vec<_>>(),
            "reference_id": if reference_id.is_empty() { Value::Null } else { json!(reference_id) },
            "seed": self.seed,
            "use_memory_cache": cache,
            "normalize": self.normalize,
            "streaming": self.streaming,
            "max_new_tokens": self.max_new_tokens.unwrap_or(1024),
            "top_p": self.top_p.unwrap_or(0.7),
            "repetition_penalty": self.repetition_penalty.unwrap_or(1.2),
            "temperature": self.temperature.unwrap_or(0.7),
        })
    }
}

/// A Fish Speech server.
pub struct FishSpeechTts {
    client: Client,
    url: String,
    cfg: Config,
    references: Vec<Reference>,
    format: AudioFormat,
    timeout: Duration,
}

/// Builds the backend of a validated entry (reads the reference files).
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(FishSpeechTts::new(cfg.clone())?))
}

impl FishSpeechTts {
    /// Validates the entry and reads its references.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let rate = match cfg.rate {
            None => 44_100,
            Some(rate) if (1..=192_000).contains(&rate) => rate as u32,
            Some(rate) => return Err(ProviderError::Config(format!("TTS.fishspeech: rate {rate} is invalid"))),
        };
        let format = match cfg.format_name().as_str() {
            "wav" | "pcm" | "mp3" => AudioFormat::from_name(&cfg.format_name(), rate),
            _ => None,
        }
        .ok_or_else(|| {
            ProviderError::Config(format!(
                "TTS.fishspeech: response_format `{}` is not one of wav, pcm, mp3",
                cfg.response_format
            ))
        })?;
        if cfg.streaming && format != AudioFormat::Wav {
            return Err(ProviderError::Config("TTS.fishspeech: streaming needs response_format wav".into()));
        }
        let url = cfg.api_url.trim().to_owned();
        check_url(&url, "TTS.fishspeech")?;
        let timeout = timeout_from(cfg.timeout, "TTS.fishspeech")?;
        let references = cfg.load_references();
        Ok(Self { client: streaming_client(timeout)?, url, cfg, references, format, timeout })
    }

    async fn request(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let mut request = self.client.post(&self.url).json(&self.cfg.request_body(text, &self.references));
        let key = self.cfg.api_key.trim();
        if !key.is_empty() {
            request = request.bearer_auth(key);
        }
        // The backend model, as the hosted API (api.fish.audio) takes it; a self-hosted server
        // ignores the header.
        let model = self.cfg.model.trim();
        if !model.is_empty() {
            request = request.header("model", model);
        }
        let response = request.send().await.map_err(|e| request_error(&self.url, "TTS request", self.timeout, &e))?;
        http_audio(&self.url, response, self.format, self.timeout).await
    }
}

#[async_trait]
impl super::Tts for FishSpeechTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(silence());
        }
        match tokio::time::timeout(self.timeout, self.request(text)).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::Timeout { what: "TTS request".into(), seconds: self.timeout.as_secs() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn every_key_of_the_python_entry_is_known() {
        let cfg: Config = crate::remote::pyconf::python_entry("TTS", "FishSpeech");
        assert_eq!((cfg.reference_audio.len(), cfg.reference_text.len()), (1, 1));
    }
    use crate::remote::test_server::{Step, full, serve, stream_head};
    use crate::tts::{AudioChunk, Tts};

    /// The Python server's `FishSpeech` entry (its placeholder key cleared).
    const PYTHON_ENTRY: &str = "output_dir: tmp/\nresponse_format: wav\nreference_id: null\n\
        reference_audio: [\"config/assets/wakeup_words.wav\",]\nreference_text: [\"哈啰啊，我是小智啦\",]\n\
        normalize: true\nmax_new_tokens: 1024\nchunk_length: 200\ntop_p: 0.7\nrepetition_penalty: 1.2\n\
        temperature: 0.7\nstreaming: false\nuse_memory_cache: \"on\"\nseed: null\nchannels: 1\nrate: 44100\n\
        api_key: \"\"\napi_url: \"http://127.0.0.1:8080/v1/tts\"\n";

    /// The streamed header Fish Speech sends (Python's `wave` module with no frames), computed with:
    /// python3 -c 'import io,wave; b=io.BytesIO(); w=wave.open(b,"wb"); w.setnchannels(1); w.setsampwidth(2);
    ///   w.setframerate(44100); w.close(); print(b.getvalue().hex())'
    const STREAM_HEADER: &str =
        "524946462400000057415645666d7420100000000100010044ac000088580100020010006461746100000000";

    #[test]
    fn the_python_entry_gives_a_serve_tts_request() {
        let dir = tempfile::tempdir().expect("dir");
        let audio = dir.path().join("ref.wav");
        std::fs::write(&audio, b"RIFF-reference").expect("write");
        let transcript = dir.path().join("ref.txt");
        std::fs::write(&transcript, "从文件读的").expect("write");
        let mut cfg: Config = serde_yaml_ng::from_str(PYTHON_ENTRY).expect("parses");
        cfg.reference_audio = vec![audio.display().to_string(), "/nonexistent.wav".into()];
        cfg.reference_text = vec![transcript.display().to_string(), "直接的文字".into()];
        let references = cfg.load_references();
        assert_eq!(
            references,
            [
                Reference { audio: b"RIFF-reference".to_vec(), text: "从文件读的".into() },
                Reference { audio: Vec::new(), text: "直接的文字".into() }
            ]
        );
        assert_eq!(
            cfg.request_body("你好", &references),
            json!({
                "text": "你好", "chunk_length": 200, "format": "wav",
                "references": [{"audio": "UklGRi1yZWZlcmVuY2U=", "text": "从文件读的"}, {"audio": "", "text": "直接的文字"}],
                "reference_id": null, "seed": null, "use_memory_cache": "on", "normalize": true, "streaming": false,
                "max_new_tokens": 1024, "top_p": 0.7, "repetition_penalty": 1.2, "temperature": 0.7
            })
        );
        let cfg: Config =
            serde_yaml_ng::from_str("reference_id: abc123\nseed: \"42\"\nformat: pcm\nstreaming: \"false\"")
                .expect("parses");
        let body = cfg.request_body("x", &[]);
        assert_eq!(
            (body["reference_id"].clone(), body["seed"].clone(), body["format"].clone()),
            (json!("abc123"), json!(42), json!("pcm"))
        );
        assert!(matches!(
            FishSpeechTts::new(Config { streaming: true, response_format: "mp3".into(), ..Config::default() }),
            Err(ProviderError::Config(_))
        ));
        let keyed = Config { api_key: "fish-secret".into(), ..Config::default() };
        assert!(!format!("{keyed:?}").contains("fish-secret") && !keyed.summary().contains("fish-secret"));
    }

    #[tokio::test]
    async fn streams_the_wav_segments_and_reports_errors() {
        let header = hex::decode(STREAM_HEADER).expect("hex");
        let segment: Vec<u8> = (0..4_410i16).flat_map(|i| (i * 5).to_le_bytes()).collect();
        let (base, mut requests) = serve(vec![
            vec![
                stream_head("audio/wav"),
                Step::Send(header),
                Step::Send(segment.clone()),
                Step::Sleep(Duration::from_millis(300)),
                Step::Send(segment),
            ],
            full(
                500,
                "application/json",
                br#"{"statusCode":500,"message":"No audio generated, please check the input text."}"#,
            ),
        ])
        .await;
        let cfg = Config {
            api_url: format!("{base}/v1/tts"),
            api_key: "fish-secret".into(),
            streaming: true,
            ..Config::default()
        };
        let tts = FishSpeechTts::new(cfg).expect("valid");
        let started = std::time::Instant::now();
        let mut stream = tts.speak("你好。").await.expect("stream");
        let first = stream.next().await.expect("chunk").expect("audio");
        assert!(started.elapsed() < Duration::from_millis(280), "first audio before the answer ended");
        assert!(matches!(first, AudioChunk::Pcm { sample_rate: 44_100, .. }));
        let request = requests.recv().await.expect("request");
        assert_eq!(request.target(), "/v1/tts");
        assert_eq!(request.header("authorization").as_deref(), Some("Bearer fish-secret"));
        assert_eq!(request.header("content-type").as_deref(), Some("application/json"));
        assert_eq!(request.header("model").as_deref(), Some("s1"));
        assert_eq!(request.json()["streaming"], true);
        let mut samples = 0;
        while let Some(chunk) = stream.next().await {
            if let AudioChunk::Pcm { samples: s, .. } = chunk.expect("audio") {
                samples += s.len();
            }
        }
        if let AudioChunk::Pcm { samples: s, .. } = first {
            samples += s.len();
        }
        assert_eq!(samples, 2 * 4_410);
        match tts.synthesize("a").await {
            Err(ProviderError::Status { status: 500, body, .. }) => {
                assert!(body.contains("No audio generated"), "{body}")
            }
            other => panic!("{other:?}"),
        }
    }
}
