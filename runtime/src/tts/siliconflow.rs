//! `type: siliconflow`: SiliconFlow speech synthesis (CosyVoice2 and the other voices of its
//! `/v1/audio/speech`).
//!
//! SiliconFlow's "创建文本转语音请求" (<https://docs.siliconflow.cn/api-reference/audio/create-speech>):
//! `POST https://api.siliconflow.cn/v1/audio/speech` with `Authorization: Bearer <api key>` and a
//! JSON body `{model, input, voice, response_format, sample_rate, stream, speed, gain}`; the answer
//! is the audio itself, streamed when `stream` is true (we always ask for it and decode the audio
//! as it arrives). Errors are an HTTP status with a JSON body `{"code": 20012, "message": …}`
//! (or the plain text `Invalid token` on 401), kept in [`ProviderError::Status`].
//!
//! The Python entry's keys: `access_token`, `model`, `voice` (a bare voice name gets the model as
//! prefix, `model:voice`, as the Python provider does), `private_voice` (a cloned voice URI, used
//! instead of `voice`), `response_format`, `speed`, `gain`, `output_dir`, `fallback`. Ours:
//! `api_url` (the endpoint; the Python provider has it fixed), `sample_rate` (sent when set; the
//! rate of `pcm` answers, 44100 by default as documented) and `timeout`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AudioStream, http_audio, silence};
use crate::audio::decode::AudioFormat;
use crate::remote::pyconf;
use crate::remote::{ProviderError, check_url, request_error, streaming_client, timeout_from};

/// SiliconFlow's speech endpoint.
pub const DEFAULT_URL: &str = "https://api.siliconflow.cn/v1/audio/speech";

/// The documented default rate of `wav`/`pcm`/`mp3` answers.
const DEFAULT_RATE: u32 = 44_100;

/// `TTS.<name>` with `type: siliconflow`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The API key (`Authorization: Bearer`).
    pub access_token: String,
    /// The model, e.g. `FunAudioLLM/CosyVoice2-0.5B`.
    pub model: String,
    /// The voice: `model:name` or a bare name (the model is put before it).
    #[serde(deserialize_with = "pyconf::text")]
    pub voice: String,
    /// A voice of your own (`speech:…` URI from the voice upload API); used instead of `voice`.
    #[serde(deserialize_with = "pyconf::text")]
    pub private_voice: String,
    /// `mp3`, `opus`, `wav` or `pcm`.
    pub response_format: String,
    /// Output sample rate (optional; see the API for the rates of each format).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub sample_rate: Option<i64>,
    /// 0.25 to 4.0.
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub speed: Option<f64>,
    /// Volume gain in dB, -10 to 10.
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub gain: Option<f64>,
    /// The Python server's ElevenLabs fallback (not supported here: accepted and unused).
    pub fallback: Option<Value>,
    /// Where the Python server saved audio files (unused: audio streams to the device).
    pub output_dir: Option<String>,
    /// The speech endpoint.
    pub api_url: String,
    /// Seconds to wait for the answer and for each pause inside it.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            access_token: String::new(),
            model: "FunAudioLLM/CosyVoice2-0.5B".into(),
            voice: "diana".into(),
            private_voice: String::new(),
            response_format: "mp3".into(),
            sample_rate: None,
            speed: None,
            gain: None,
            fallback: None,
            output_dir: None,
            api_url: DEFAULT_URL.into(),
            timeout: 30,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("access_token", &if self.access_token.is_empty() { "" } else { "<set>" })
            .field("model", &self.model)
            .field("voice", &self.voice)
            .field("private_voice", &self.private_voice)
            .field("response_format", &self.response_format)
            .field("sample_rate", &self.sample_rate)
            .field("speed", &self.speed)
            .field("gain", &self.gain)
            .field("api_url", &self.api_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("{} voice {} ({})", self.model, self.voice_id(), self.response_format)
    }

    /// The `voice` sent: `private_voice`, else `voice` with the model as prefix when it has none.
    pub fn voice_id(&self) -> String {
        let private = self.private_voice.trim();
        if !private.is_empty() {
            return private.to_owned();
        }
        let voice = self.voice.trim();
        if voice.is_empty() || voice.contains(':') {
            voice.to_owned()
        } else {
            format!("{}:{voice}", self.model.trim())
        }
    }

    /// The JSON body of one request.
    pub fn request_body(&self, text: &str) -> Value {
        let mut body = json!({
            "model": self.model.trim(),
            "input": text,
            "response_format": self.format_name(),
            "stream": true,
            "speed": self.speed.unwrap_or(1.0),
            "gain": self.gain.unwrap_or(0.0),
        });
        let voice = self.voice_id();
        if !voice.is_empty() {
            body["voice"] = json!(voice);
        }
        if let Some(rate) = self.sample_rate {
            body["sample_rate"] = json!(rate);
        }
        body
    }

    fn format_name(&self) -> String {
        let name = self.response_format.trim().to_ascii_lowercase();
        if name.is_empty() { "mp3".into() } else { name }
    }
}

/// A SiliconFlow speech endpoint.
pub struct SiliconFlowTts {
    client: Client,
    cfg: Config,
    format: AudioFormat,
    timeout: Duration,
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(SiliconFlowTts::new(cfg.clone())?))
}

impl SiliconFlowTts {
    /// Validates the entry (URL, format, rate, timeout); the key is checked at request time.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let rate = match cfg.sample_rate {
            None => DEFAULT_RATE,
            Some(rate) if (1..=192_000).contains(&rate) => rate as u32,
            Some(rate) => return Err(ProviderError::Config(format!("TTS.siliconflow: sample_rate {rate} is invalid"))),
        };
        let format = match cfg.format_name().as_str() {
            "mp3" | "opus" | "wav" | "pcm" => AudioFormat::from_name(&cfg.format_name(), rate),
            _ => None,
        }
        .ok_or_else(|| {
            ProviderError::Config(format!(
                "TTS.siliconflow: response_format `{}` is not one of mp3, opus, wav, pcm",
                cfg.response_format
            ))
        })?;
        let timeout = timeout_from(cfg.timeout, "TTS.siliconflow")?;
        check_url(cfg.api_url.trim(), "TTS.siliconflow")?;
        let client = streaming_client(timeout)?;
        Ok(Self { client, cfg, format, timeout })
    }

    async fn request(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let key = self.cfg.access_token.trim();
        if key.is_empty() {
            return Err(ProviderError::Config("TTS.siliconflow: access_token is not set".into()));
        }
        let url = self.cfg.api_url.trim();
        let response = self
            .client
            .post(url)
            .bearer_auth(key)
            .json(&self.cfg.request_body(text))
            .send()
            .await
            .map_err(|e| request_error(url, "TTS request", self.timeout, &e))?;
        http_audio(url, response, self.format, self.timeout).await
    }
}

#[async_trait]
impl super::Tts for SiliconFlowTts {
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
    use super::*;

    #[test]
    fn every_key_of_the_python_entry_is_known() {
        let cfg: Config = crate::remote::pyconf::python_entry("TTS", "CosyVoiceSiliconflow");
        assert_eq!(cfg.voice_id(), "FunAudioLLM/CosyVoice2-0.5B:alex");
    }
    use crate::audio::decode::wav_bytes;
    use crate::remote::test_server::{Step, full, serve, stream_head};
    use crate::tts::Tts;

    fn config(url: &str) -> Config {
        Config {
            access_token: "sk-sf-secret".into(),
            voice: "FunAudioLLM/CosyVoice2-0.5B:alex".into(),
            response_format: "wav".into(),
            output_dir: Some("tmp/".into()),
            api_url: url.into(),
            timeout: 5,
            ..Config::default()
        }
    }

    #[test]
    fn request_body_is_the_documented_one() {
        let mut cfg = config(DEFAULT_URL);
        assert_eq!(
            cfg.request_body("你好"),
            json!({"model": "FunAudioLLM/CosyVoice2-0.5B", "input": "你好", "voice": "FunAudioLLM/CosyVoice2-0.5B:alex",
                   "response_format": "wav", "stream": true, "speed": 1.0, "gain": 0.0})
        );
        // A bare voice name gets the model as prefix; a private voice wins; rate and gain as set.
        cfg.voice = "bella".into();
        cfg.sample_rate = Some(24_000);
        cfg.gain = Some(-2.5);
        cfg.speed = Some(1.2);
        let body = cfg.request_body("hi");
        assert_eq!(body["voice"], "FunAudioLLM/CosyVoice2-0.5B:bella");
        assert_eq!(
            (body["sample_rate"].clone(), body["gain"].clone(), body["speed"].clone()),
            (json!(24000), json!(-2.5), json!(1.2))
        );
        cfg.private_voice = "speech:my-voice:abc:def".into();
        assert_eq!(cfg.request_body("hi")["voice"], "speech:my-voice:abc:def");
    }

    #[test]
    fn python_entry_parses_and_debug_hides_the_key() {
        let yaml = "model: FunAudioLLM/CosyVoice2-0.5B\nvoice: FunAudioLLM/CosyVoice2-0.5B:alex\noutput_dir: tmp/\n\
                    access_token: sk-abc\nresponse_format: wav\nspeed: \"1.1\"\ngain: 0\nfallback: {enabled: false}";
        let cfg: Config = serde_yaml_ng::from_str(yaml).expect("parses");
        assert_eq!(cfg.speed, Some(1.1));
        assert!(!format!("{cfg:?}").contains("sk-abc"));
        assert!(!cfg.summary().contains("sk-abc"));
        assert!(matches!(
            SiliconFlowTts::new(Config { response_format: "flac".into(), ..cfg.clone() }),
            Err(ProviderError::Config(_))
        ));
        assert!(matches!(SiliconFlowTts::new(Config { api_url: "nope".into(), ..cfg }), Err(ProviderError::Config(_))));
    }

    #[tokio::test]
    async fn streams_audio_and_reports_vendor_errors() {
        let samples: Vec<i16> = (0..4_800).map(|i| (i * 7 % 3_000) as i16).collect();
        let wav = wav_bytes(&samples, 24_000);
        let (head, rest) = wav.split_at(1_000);
        let (base, mut requests) = serve(vec![
            vec![
                stream_head("audio/wav"),
                Step::Send(head.to_vec()),
                Step::Sleep(Duration::from_millis(300)),
                Step::Send(rest.to_vec()),
            ],
            full(400, "application/json", br#"{"code":20012,"message":"Model does not exist.","data":null}"#),
        ])
        .await;
        let tts = SiliconFlowTts::new(config(&format!("{base}/v1/audio/speech"))).expect("valid");
        let started = std::time::Instant::now();
        let mut stream = tts.speak("你好。").await.expect("stream");
        use futures_util::StreamExt;
        let first = stream.next().await.expect("a chunk").expect("audio");
        assert!(started.elapsed() < Duration::from_millis(280), "the first audio came before the body ended");
        assert!(matches!(first, crate::tts::AudioChunk::Pcm { sample_rate: 24_000, .. }));
        let request = requests.recv().await.expect("request");
        assert_eq!(request.method(), "POST");
        assert_eq!(request.target(), "/v1/audio/speech");
        assert_eq!(request.header("authorization").as_deref(), Some("Bearer sk-sf-secret"));
        assert_eq!(request.json()["input"], "你好。");
        while let Some(chunk) = stream.next().await {
            chunk.expect("audio");
        }
        match tts.synthesize("a").await {
            Err(ProviderError::Status { status: 400, body, .. }) => {
                assert!(body.contains("20012") && body.contains("Model does not exist"), "{body}")
            }
            other => panic!("{other:?}"),
        }
        // No key: a configuration error at request time, naming the key.
        let tts = SiliconFlowTts::new(Config { access_token: String::new(), ..config(&base) }).expect("builds");
        match tts.synthesize("a").await {
            Err(ProviderError::Config(message)) => assert!(message.contains("access_token"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
