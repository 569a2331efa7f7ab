//! `type: gpt_sovits_v2`: a GPT-SoVITS `api_v2.py` server (`python api_v2.py -a 127.0.0.1 -p 9880`).
//!
//! The API is the one documented at the top of GPT-SoVITS's `api_v2.py` ("WebAPI文档"): `POST /tts`
//! with a JSON body (`text`, `text_lang`, `ref_audio_path`, `aux_ref_audio_paths`, `prompt_text`,
//! `prompt_lang`, `top_k`, `top_p`, `temperature`, `text_split_method`, `batch_size`,
//! `batch_threshold`, `split_bucket`, `speed_factor`, `seed`, `media_type`, `streaming_mode`,
//! `parallel_infer`, `repetition_penalty`, …). Success is the audio (HTTP 200, `audio/wav` or
//! `audio/raw`); with `streaming_mode` it streams: a WAV header first, then raw PCM chunk by chunk
//! (decoded as it arrives). Failure is HTTP 400 with a JSON body (`{"message": "tts failed",
//! "Exception": …}`), kept in [`ProviderError::Status`].
//!
//! The request carries the keys the Python provider sends, with its defaults, plus `media_type`
//! (`wav`, or `raw` when `format: pcm`/`raw`; the Python provider leaves it to the server's
//! default, `wav`). What this file shares with `gpt_sovits_v3` is [`Endpoint`]: the HTTP client,
//! the send with its timeout and the streamed decoding.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Client, RequestBuilder};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::{AudioStream, http_audio, silence};
use crate::audio::decode::AudioFormat;
use crate::remote::pyconf;
use crate::remote::{ProviderError, check_url, request_error, streaming_client, timeout_from};

/// `TTS.<name>` with `type: gpt_sovits_v2`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The server's `/tts` URL.
    pub url: String,
    /// Where the Python server saved audio files (unused: audio streams to the device).
    pub output_dir: Option<String>,
    /// Language of the text (`auto`, `zh`, `en`, `ja`, …).
    pub text_lang: String,
    /// The reference audio, a path on the GPT-SoVITS server.
    pub ref_audio_path: String,
    /// Transcript of the reference audio.
    #[serde(deserialize_with = "pyconf::text")]
    pub prompt_text: String,
    /// Language of `prompt_text`.
    pub prompt_lang: String,
    /// Sampling: top k (default 5).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub top_k: Option<i64>,
    /// Sampling: top p (default 1).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub top_p: Option<f64>,
    /// Sampling temperature (default 1).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub temperature: Option<f64>,
    /// How the server cuts the text (`cut0` … `cut5`).
    pub text_split_method: String,
    /// Inference batch size (default 1).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub batch_size: Option<i64>,
    /// Batch splitting threshold (default 0.75).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub batch_threshold: Option<f64>,
    /// Whether the server splits the batch into buckets.
    #[serde(deserialize_with = "pyconf::flag")]
    pub split_bucket: bool,
    /// Whether the server returns fragments (older streaming).
    #[serde(deserialize_with = "pyconf::flag")]
    pub return_fragment: bool,
    /// Speed of the speech (default 1.0).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub speed_factor: Option<f64>,
    /// Streaming: false/true, or 0–3 on newer servers (2, 3: faster first audio).
    #[serde(deserialize_with = "streaming_mode")]
    pub streaming_mode: i64,
    /// Random seed (-1: random).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub seed: Option<i64>,
    /// Whether the server infers in parallel.
    #[serde(deserialize_with = "pyconf::flag")]
    pub parallel_infer: bool,
    /// Repetition penalty of the T2S model (default 1.35).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub repetition_penalty: Option<f64>,
    /// More reference audio paths (a list, or `a.wav;b.wav`).
    #[serde(deserialize_with = "pyconf::str_list")]
    pub aux_ref_audio_paths: Vec<String>,
    /// A voice of the Python server's `data/gpt_sovits_data.yaml` (not read here: set the
    /// reference keys of this entry instead).
    #[serde(deserialize_with = "pyconf::text")]
    pub private_voice: String,
    /// The audio asked for: `wav` (default) or `pcm`/`raw` (`media_type: raw`).
    pub format: String,
    /// The rate of `raw` answers (the model's: 32000 for v1/v2 models, 24000 for v3, 48000 for v4).
    pub sample_rate: u32,
    /// Seconds to wait for the answer and for each pause inside it.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9880/tts".into(),
            output_dir: None,
            text_lang: "zh".into(),
            ref_audio_path: String::new(),
            prompt_text: String::new(),
            prompt_lang: "zh".into(),
            top_k: None,
            top_p: None,
            temperature: None,
            text_split_method: "cut0".into(),
            batch_size: None,
            batch_threshold: None,
            split_bucket: true,
            return_fragment: false,
            speed_factor: None,
            streaming_mode: 0,
            seed: None,
            parallel_infer: true,
            repetition_penalty: None,
            aux_ref_audio_paths: Vec::new(),
            private_voice: String::new(),
            format: "wav".into(),
            sample_rate: 32_000,
            timeout: 60,
        }
    }
}

/// `streaming_mode`: a Python-style boolean (false → 0, true → 1) or the newer servers' 0–3.
fn streaming_mode<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(match value {
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| serde::de::Error::custom("expected 0, 1, 2 or 3"))?,
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => s.trim().parse().unwrap_or(0),
        Some(Value::Bool(b)) => i64::from(b),
        Some(Value::String(s)) => i64::from(matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "yes")),
        _ => 0,
    })
    .and_then(|mode| {
        if (0..=3).contains(&mode) { Ok(mode) } else { Err(serde::de::Error::custom("expected 0, 1, 2 or 3")) }
    })
}

impl Config {
    /// One line for `check-config`.
    pub fn summary(&self) -> String {
        format!("{} reference {} ({})", self.url, self.ref_audio_path, self.media_type())
    }

    fn media_type(&self) -> &'static str {
        match self.format.trim().to_ascii_lowercase().as_str() {
            "pcm" | "raw" => "raw",
            _ => "wav",
        }
    }

    /// The JSON body of one request (the Python provider's keys and defaults, and `media_type`).
    pub fn request_body(&self, text: &str) -> Value {
        json!({
            "text": text,
            "text_lang": self.text_lang,
            "ref_audio_path": self.ref_audio_path,
            "aux_ref_audio_paths": self.aux_ref_audio_paths,
            "prompt_text": self.prompt_text,
            "prompt_lang": self.prompt_lang,
            "top_k": self.top_k.unwrap_or(5),
            "top_p": self.top_p.unwrap_or(1.0),
            "temperature": self.temperature.unwrap_or(1.0),
            "text_split_method": self.text_split_method,
            "batch_size": self.batch_size.unwrap_or(1),
            "batch_threshold": self.batch_threshold.unwrap_or(0.75),
            "split_bucket": self.split_bucket,
            "return_fragment": self.return_fragment,
            "speed_factor": self.speed_factor.unwrap_or(1.0),
            "streaming_mode": match self.streaming_mode { 0 => json!(false), 1 => json!(true), mode => json!(mode) },
            "seed": self.seed.unwrap_or(-1),
            "parallel_infer": self.parallel_infer,
            "repetition_penalty": self.repetition_penalty.unwrap_or(1.35),
            "media_type": self.media_type(),
        })
    }
}

/// A GPT-SoVITS server's synthesis endpoint (shared by `gpt_sovits_v2` and `gpt_sovits_v3`): one
/// HTTP client, the answer decoded as it streams.
pub(crate) struct Endpoint {
    client: Client,
    url: String,
    format: AudioFormat,
    timeout: Duration,
}

impl Endpoint {
    /// Checks the URL and timeout of entry `what` (`TTS.gpt_sovits_v2`).
    pub(crate) fn new(url: &str, format: AudioFormat, timeout: u64, what: &str) -> Result<Self, ProviderError> {
        let url = url.trim().to_owned();
        if url.is_empty() {
            return Err(ProviderError::Config(format!("{what}: url is not set")));
        }
        check_url(&url, what)?;
        let timeout = timeout_from(timeout, what)?;
        Ok(Self { client: streaming_client(timeout)?, url, format, timeout })
    }

    /// Speaks `text` with the request `build` makes (from the client and the URL).
    pub(crate) async fn speak(
        &self,
        text: &str,
        build: impl FnOnce(&Client, &str) -> RequestBuilder,
    ) -> Result<AudioStream, ProviderError> {
        if text.trim().is_empty() {
            return Ok(silence());
        }
        let send = async {
            let response = build(&self.client, &self.url)
                .send()
                .await
                .map_err(|e| request_error(&self.url, "TTS request", self.timeout, &e))?;
            http_audio(&self.url, response, self.format, self.timeout).await
        };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::Timeout { what: "TTS request".into(), seconds: self.timeout.as_secs() }),
        }
    }
}

/// A GPT-SoVITS `api_v2.py` server.
pub struct GptSovitsV2 {
    endpoint: Endpoint,
    cfg: Config,
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(GptSovitsV2::new(cfg.clone())?))
}

impl GptSovitsV2 {
    /// Validates the entry (URL, timeout, format).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let format = match cfg.media_type() {
            "raw" if cfg.sample_rate == 0 => {
                return Err(ProviderError::Config("TTS.gpt_sovits_v2: sample_rate must be above 0 for pcm".into()));
            }
            "raw" => AudioFormat::Pcm { sample_rate: cfg.sample_rate },
            _ => AudioFormat::Wav,
        };
        if !matches!(cfg.format.trim().to_ascii_lowercase().as_str(), "" | "wav" | "pcm" | "raw") {
            return Err(ProviderError::Config(format!(
                "TTS.gpt_sovits_v2: format `{}` is not one of wav, pcm",
                cfg.format
            )));
        }
        if !cfg.private_voice.trim().is_empty() {
            tracing::warn!(
                "TTS.gpt_sovits_v2: private_voice `{}` is not looked up here (data/gpt_sovits_data.yaml); the entry's ref_audio_path, prompt_text and prompt_lang are used",
                cfg.private_voice
            );
        }
        let endpoint = Endpoint::new(&cfg.url, format, cfg.timeout, "TTS.gpt_sovits_v2")?;
        Ok(Self { endpoint, cfg })
    }
}

#[async_trait]
impl super::Tts for GptSovitsV2 {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let text = text.trim();
        if !text.is_empty() && self.cfg.ref_audio_path.trim().is_empty() {
            return Err(ProviderError::Config("TTS.gpt_sovits_v2: ref_audio_path is not set".into()));
        }
        let body = self.cfg.request_body(text);
        self.endpoint.speak(text, |client, url| client.post(url).json(&body)).await
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn every_key_of_the_python_entry_is_known() {
        let cfg: Config = crate::remote::pyconf::python_entry("TTS", "GPT_SOVITS_V2");
        assert_eq!(cfg.ref_audio_path, "demo.wav");
    }
    use crate::audio::decode::wav_bytes;
    use crate::remote::test_server::{Step, full, serve, stream_head};
    use crate::tts::{AudioChunk, Tts};

    /// The Python server's `GPT_SOVITS_V2` entry.
    const PYTHON_ENTRY: &str = "url: \"http://127.0.0.1:9880/tts\"\noutput_dir: tmp/\ntext_lang: \"auto\"\n\
        ref_audio_path: \"demo.wav\"\nprompt_text: \"\"\nprompt_lang: \"zh\"\ntop_k: 5\ntop_p: 1\ntemperature: 1\n\
        text_split_method: \"cut0\"\nbatch_size: 1\nbatch_threshold: 0.75\nsplit_bucket: true\nreturn_fragment: false\n\
        speed_factor: 1.0\nstreaming_mode: false\nseed: -1\nparallel_infer: true\nrepetition_penalty: 1.35\n\
        aux_ref_audio_paths: []\n";

    #[test]
    fn the_python_entry_gives_the_documented_request() {
        let cfg: Config = serde_yaml_ng::from_str(PYTHON_ENTRY).expect("parses");
        assert_eq!(
            cfg.request_body("你好"),
            json!({
                "text": "你好", "text_lang": "auto", "ref_audio_path": "demo.wav", "aux_ref_audio_paths": [],
                "prompt_text": "", "prompt_lang": "zh", "top_k": 5, "top_p": 1.0, "temperature": 1.0,
                "text_split_method": "cut0", "batch_size": 1, "batch_threshold": 0.75, "split_bucket": true,
                "return_fragment": false, "speed_factor": 1.0, "streaming_mode": false, "seed": -1,
                "parallel_infer": true, "repetition_penalty": 1.35, "media_type": "wav"
            })
        );
        // Strings where numbers go, a `;` list, the newer integer streaming modes, raw PCM.
        let cfg: Config = serde_yaml_ng::from_str(
            "top_k: \"15\"\nspeed_factor: \"\"\nstreaming_mode: 3\naux_ref_audio_paths: \"a.wav;b.wav\"\nformat: pcm",
        )
        .expect("parses");
        let body = cfg.request_body("x");
        assert_eq!(body["top_k"], 15);
        assert_eq!(body["speed_factor"], 1.0);
        assert_eq!(body["streaming_mode"], 3);
        assert_eq!(body["aux_ref_audio_paths"], json!(["a.wav", "b.wav"]));
        assert_eq!(body["media_type"], "raw");
        let cfg: Config = serde_yaml_ng::from_str("streaming_mode: \"true\"").expect("parses");
        assert_eq!(cfg.request_body("x")["streaming_mode"], true);
        assert!(serde_yaml_ng::from_str::<Config>("streaming_mode: 7").is_err());
    }

    #[tokio::test]
    async fn streams_and_reports_json_errors() {
        let samples: Vec<i16> = (0..6_400).map(|i| (i * 11 % 4_000) as i16 - 2_000).collect();
        let wav = wav_bytes(&samples[..0], 32_000);
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let (base, mut requests) = serve(vec![
            vec![
                stream_head("audio/wav"),
                Step::Send(wav),
                Step::Send(pcm[..3_200].to_vec()),
                Step::Sleep(Duration::from_millis(300)),
                Step::Send(pcm[3_200..].to_vec()),
            ],
            full(400, "application/json", br#"{"message":"tts failed","Exception":"ref_audio_path not found"}"#),
        ])
        .await;
        let mut cfg: Config = serde_yaml_ng::from_str(PYTHON_ENTRY).expect("parses");
        cfg.url = format!("{base}/tts");
        cfg.streaming_mode = 1;
        let tts = GptSovitsV2::new(cfg).expect("valid");
        let started = std::time::Instant::now();
        let mut stream = tts.speak("你好。").await.expect("stream");
        let first = stream.next().await.expect("chunk").expect("audio");
        assert!(started.elapsed() < Duration::from_millis(280), "first audio before the answer ended");
        assert!(matches!(first, AudioChunk::Pcm { sample_rate: 32_000, .. }));
        let request = requests.recv().await.expect("request");
        assert_eq!((request.method().as_str(), request.target().as_str()), ("POST", "/tts"));
        assert_eq!(request.json()["streaming_mode"], true);
        let mut total = match first {
            AudioChunk::Pcm { samples, .. } => samples.len(),
            AudioChunk::Opus { .. } => 0,
        };
        while let Some(chunk) = stream.next().await {
            if let AudioChunk::Pcm { samples, .. } = chunk.expect("audio") {
                total += samples.len();
            }
        }
        assert_eq!(total, samples.len());
        match tts.synthesize("a").await {
            Err(ProviderError::Status { status: 400, body, .. }) => assert!(body.contains("tts failed"), "{body}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn config_problems_are_named() {
        let cfg = Config { ref_audio_path: String::new(), ..Config::default() };
        let tts = GptSovitsV2::new(cfg).expect("an empty reference still builds");
        match tts.synthesize("a").await {
            Err(ProviderError::Config(message)) => assert!(message.contains("ref_audio_path"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            GptSovitsV2::new(Config { url: "nope".into(), ..Config::default() }),
            Err(ProviderError::Config(_))
        ));
        assert!(matches!(
            GptSovitsV2::new(Config { format: "aac".into(), ..Config::default() }),
            Err(ProviderError::Config(_))
        ));
    }
}
