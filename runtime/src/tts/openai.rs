//! OpenAI-compatible speech synthesis (`/v1/audio/speech`: OpenAI, the Volces gateway, local
//! servers such as Kokoro-FastAPI or openedai-speech).
//!
//! One JSON request per sentence (`model`, `input`, `voice`, `speed`, `response_format`); the
//! answer is read as a chunked stream and its audio decoded as it arrives (WAV, raw PCM and Ogg
//! Opus piece by piece, MP3 at the end; the content is sniffed). `api_url` may be the full speech
//! URL, as in the Python server's configuration, or the API root. `timeout` bounds the wait for
//! the answer and any pause inside it, not the whole sentence.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Client;
use serde_json::json;

use super::{AudioStream, http_audio, silence};
use crate::audio::decode::AudioFormat;
use crate::config::OpenAiTtsConfig;
use crate::remote::ProviderError;
use crate::remote::{check_url, endpoint, json_f32, request_error, streaming_client, timeout_from};

/// The speech endpoint's path under the API root.
const SPEECH_PATH: &str = "/audio/speech";

/// An OpenAI-compatible speech endpoint.
pub struct OpenAiTts {
    client: Client,
    url: String,
    cfg: OpenAiTtsConfig,
    format: AudioFormat,
    timeout: Duration,
}

impl OpenAiTts {
    /// Validates the entry and builds the backend (one HTTP client, reused for every request).
    pub fn new(cfg: OpenAiTtsConfig) -> Result<Self, ProviderError> {
        let format = AudioFormat::from_name(&cfg.format, cfg.sample_rate).ok_or_else(|| {
            ProviderError::Config(format!("TTS format `{}` is not one of wav, mp3, pcm, opus", cfg.format))
        })?;
        if matches!(format, AudioFormat::Pcm { sample_rate: 0 }) {
            return Err(ProviderError::Config("TTS sample_rate must be above 0 for pcm".into()));
        }
        let timeout = timeout_from(cfg.timeout, "TTS")?;
        let url = endpoint(&cfg.api_url, SPEECH_PATH);
        check_url(&url, "TTS")?;
        let client = streaming_client(timeout)?;
        Ok(Self { client, url, cfg, format, timeout })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn request(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let body = json!({
            "model": self.cfg.model,
            "input": text,
            "voice": self.cfg.voice,
            "speed": json_f32(self.cfg.speed).unwrap_or(json!(1.0)),
            "response_format": self.cfg.format.trim().to_ascii_lowercase(),
        });
        let mut request = self.client.post(&self.url).json(&body);
        let key = self.cfg.api_key.trim();
        if !key.is_empty() {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| request_error(&self.url, "TTS request", self.timeout, &e))?;
        http_audio(&self.url, response, self.format, self.timeout).await
    }
}

#[async_trait]
impl super::Tts for OpenAiTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let text = text.trim();
        if text.is_empty() {
            // Nothing to say: no request, no audio.
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
    use crate::audio::AudioClip;
    use crate::audio::decode::wav_bytes;
    use crate::remote::test_server::{Step, full, serve};
    use crate::tts::Tts;

    fn config(api_url: &str, format: &str) -> OpenAiTtsConfig {
        OpenAiTtsConfig {
            api_key: "sk-tts".into(),
            api_url: api_url.into(),
            model: "tts-1".into(),
            voice: "onyx".into(),
            speed: 1.1,
            format: format.into(),
            sample_rate: 24_000,
            timeout: 5,
            output_dir: None,
        }
    }

    #[tokio::test]
    async fn decodes_wav_and_pcm_answers() {
        let samples: Vec<i16> = (0..2_400).map(|i| (i * 13 % 2_000) as i16).collect();
        let wav = wav_bytes(&samples, 22_050);
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let (base, mut requests) = serve(vec![
            full(200, "audio/wav", &wav),
            full(200, "application/octet-stream", &pcm),
            // Asked for pcm, got a WAV: the content wins.
            full(200, "audio/wav", &wav),
        ])
        .await;

        let tts = OpenAiTts::new(config(&format!("{base}/v1/audio/speech"), "wav")).expect("valid");
        let clip = tts.synthesize(" 你好。 ").await.expect("audio");
        assert_eq!(clip, AudioClip { samples: samples.clone(), sample_rate: 22_050 });
        let request = requests.recv().await.expect("request");
        assert_eq!(request.target(), "/v1/audio/speech");
        assert_eq!(request.header("authorization").as_deref(), Some("Bearer sk-tts"));
        assert_eq!(
            request.json(),
            json!({"model": "tts-1", "input": "你好。", "voice": "onyx", "speed": 1.1, "response_format": "wav"})
        );

        let tts = OpenAiTts::new(config(&format!("{base}/v1"), "pcm")).expect("valid");
        assert_eq!(tts.url(), format!("{base}/v1/audio/speech"));
        let clip = tts.synthesize("hi").await.expect("audio");
        assert_eq!(clip, AudioClip { samples: samples.clone(), sample_rate: 24_000 });
        assert_eq!(requests.recv().await.expect("request").json()["response_format"], "pcm");
        let clip = tts.synthesize("hi").await.expect("audio");
        assert_eq!(clip.sample_rate, 22_050);
    }

    #[tokio::test]
    async fn errors_are_typed() {
        let (base, _requests) = serve(vec![
            full(500, "text/plain", b"voice not found"),
            full(200, "audio/wav", b""),
            full(200, "application/json", br#"{"error":"bad input"}"#),
            full(200, "audio/mpeg", b"definitely not audio at all"),
            vec![Step::Sleep(Duration::from_secs(10))],
        ])
        .await;
        let mut cfg = config(&base, "mp3");
        cfg.timeout = 1;
        let tts = OpenAiTts::new(cfg).expect("valid");
        match tts.synthesize("a").await {
            Err(ProviderError::Status { status: 500, body, .. }) => assert_eq!(body, "voice not found"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(tts.synthesize("a").await, Err(ProviderError::Protocol { .. })));
        match tts.synthesize("a").await {
            Err(ProviderError::Protocol { message, .. }) => assert!(message.contains("bad input"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(tts.synthesize("a").await, Err(ProviderError::Protocol { .. })));
        let started = std::time::Instant::now();
        assert!(matches!(tts.synthesize("a").await, Err(ProviderError::Timeout { seconds: 1, .. })));
        assert!(started.elapsed() < Duration::from_secs(4));
        // Empty text: no request.
        assert!(tts.synthesize("  ").await.expect("empty").samples.is_empty());
    }

    #[test]
    fn config_errors() {
        assert!(matches!(OpenAiTts::new(config("http://x/v1", "flac")), Err(ProviderError::Config(_))));
        assert!(OpenAiTts::new(config("http://x/v1", "opus")).is_ok(), "Ogg Opus streams");
        let mut cfg = config("http://x/v1", "pcm");
        cfg.sample_rate = 0;
        assert!(matches!(OpenAiTts::new(cfg), Err(ProviderError::Config(_))));
        let mut cfg = config("http://x/v1", "wav");
        cfg.timeout = 0;
        assert!(matches!(OpenAiTts::new(cfg), Err(ProviderError::Config(_))));
    }
}
