//! OpenAI-compatible speech recognition (`/v1/audio/transcriptions`: OpenAI, Groq, a local
//! whisper server, …).
//!
//! The utterance is uploaded as a 16 kHz mono WAV file in a multipart form with `model`,
//! `response_format=json` and, when configured, `language`; the answer is `{"text": "…"}`.
//! `base_url` may be the API root (`…/v1`) or the full transcription URL, as in the Python
//! server's configuration.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Client;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;

use super::ASR_SAMPLE_RATE;
use crate::audio::decode::wav_bytes;
use crate::config::OpenAiAsrConfig;
use crate::remote::ProviderError;
use crate::remote::{body_start, check_url, endpoint, http_client, request_error, status_error, timeout_from};

/// The transcription endpoint's path under the API root.
const TRANSCRIPTIONS_PATH: &str = "/audio/transcriptions";

/// An OpenAI-compatible transcription endpoint.
pub struct OpenAiAsr {
    client: Client,
    url: String,
    cfg: OpenAiAsrConfig,
    timeout: Duration,
}

/// The `json` response format.
#[derive(Debug, Deserialize)]
struct Transcription {
    text: String,
}

impl OpenAiAsr {
    /// Validates the entry and builds the backend (one HTTP client, reused for every request).
    pub fn new(cfg: OpenAiAsrConfig) -> Result<Self, ProviderError> {
        if cfg.model_name.trim().is_empty() {
            return Err(ProviderError::Config("ASR model_name is empty".into()));
        }
        let timeout = timeout_from(cfg.timeout, "ASR")?;
        let url = endpoint(&cfg.base_url, TRANSCRIPTIONS_PATH);
        check_url(&url, "ASR")?;
        let client = http_client(timeout, Some(timeout))?;
        Ok(Self { client, url, cfg, timeout })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn form(&self, pcm: &[i16]) -> Result<Form, ProviderError> {
        let file = Part::bytes(wav_bytes(pcm, ASR_SAMPLE_RATE))
            .file_name("audio.wav")
            .mime_str("audio/wav")
            .map_err(|e| ProviderError::Config(format!("cannot build the ASR upload: {e}")))?;
        let mut form =
            Form::new().part("file", file).text("model", self.cfg.model_name.clone()).text("response_format", "json");
        if let Some(language) = self.cfg.language.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            form = form.text("language", language.to_string());
        }
        Ok(form)
    }

    async fn request(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        let mut request = self.client.post(&self.url).multipart(self.form(pcm)?);
        let key = self.cfg.api_key.trim();
        if !key.is_empty() {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| request_error(&self.url, "ASR request", self.timeout, &e))?;
        if !response.status().is_success() {
            return Err(status_error(&self.url, response, self.timeout).await);
        }
        let body = response.bytes().await.map_err(|e| request_error(&self.url, "ASR request", self.timeout, &e))?;
        match serde_json::from_slice::<Transcription>(&body) {
            Ok(answer) => Ok(answer.text.trim().to_string()),
            Err(_) => Err(ProviderError::Protocol {
                url: self.url.clone(),
                message: format!("expected {{\"text\": …}}, got: {}", body_start(&body)),
            }),
        }
    }
}

#[async_trait]
impl super::Asr for OpenAiAsr {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        if pcm.is_empty() {
            return Ok(String::new());
        }
        // The client's own timeout covers the request; this bounds anything it would not.
        match tokio::time::timeout(self.timeout, self.request(pcm)).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::Timeout { what: "ASR request".into(), seconds: self.timeout.as_secs() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::asr::Asr;
    use crate::audio::decode::{AudioFormat, decode_audio};
    use crate::remote::test_server::{Recorded, Step, full, serve};

    fn config(base_url: &str) -> OpenAiAsrConfig {
        OpenAiAsrConfig {
            api_key: "sk-asr".into(),
            base_url: base_url.into(),
            model_name: "whisper-large-v3-turbo".into(),
            language: Some("zh".into()),
            timeout: 5,
            output_dir: None,
        }
    }

    /// The parts of a multipart body: (headers, content).
    fn multipart_parts(request: &Recorded) -> Vec<(String, Vec<u8>)> {
        let content_type = request.header("content-type").expect("content type");
        assert!(content_type.starts_with("multipart/form-data"), "{content_type}");
        let boundary = content_type.split("boundary=").nth(1).expect("boundary").trim_matches('"');
        let delimiter = format!("--{boundary}");
        let body = &request.body;
        let mut parts = Vec::new();
        let mut positions = Vec::new();
        let mut at = 0;
        while let Some(pos) = body[at..].windows(delimiter.len()).position(|w| w == delimiter.as_bytes()) {
            positions.push(at + pos);
            at += pos + delimiter.len();
        }
        for pair in positions.windows(2) {
            let part = &body[pair[0] + delimiter.len() + 2..pair[1] - 2];
            let split = part.windows(4).position(|w| w == b"\r\n\r\n").expect("part headers");
            parts.push((String::from_utf8_lossy(&part[..split]).to_string(), part[split + 4..].to_vec()));
        }
        parts
    }

    fn field<'a>(parts: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a (String, Vec<u8>)> {
        parts.iter().find(|(headers, _)| headers.contains(&format!("name=\"{name}\"")))
    }

    #[tokio::test]
    async fn uploads_a_wav_multipart_to_both_url_forms() {
        let pcm: Vec<i16> = (0..16_000).map(|i| ((i % 100) as i16 - 50) * 200).collect();
        let ok = || full(200, "application/json", r#"{"text":"  你好，小智。 "}"#.as_bytes());
        let (base, mut requests) = serve(vec![ok(), ok(), ok()]).await;
        for (base_url, key) in [
            (format!("{base}/v1"), "sk-asr"),
            (format!("{base}/v1/audio/transcriptions"), "sk-asr"),
            (format!("{base}/v1/"), ""),
        ] {
            let mut cfg = config(&base_url);
            cfg.api_key = key.into();
            let asr = OpenAiAsr::new(cfg).expect("valid");
            assert_eq!(asr.transcribe(&pcm).await.expect("transcribed"), "你好，小智。");

            let request = requests.recv().await.expect("a request");
            assert_eq!(request.method(), "POST");
            assert_eq!(request.target(), "/v1/audio/transcriptions");
            if key.is_empty() {
                assert_eq!(request.header("authorization"), None);
            } else {
                assert_eq!(request.header("authorization").as_deref(), Some("Bearer sk-asr"));
            }
            let parts = multipart_parts(&request);
            let (headers, wav) = field(&parts, "file").expect("file part");
            assert!(headers.contains("filename=\"audio.wav\""), "{headers}");
            let clip = decode_audio(wav, AudioFormat::Wav).expect("a valid WAV");
            assert_eq!(clip.sample_rate, 16_000);
            assert_eq!(clip.samples, pcm);
            assert_eq!(field(&parts, "model").expect("model").1, b"whisper-large-v3-turbo");
            assert_eq!(field(&parts, "response_format").expect("format").1, b"json");
            assert_eq!(field(&parts, "language").expect("language").1, b"zh");
        }
    }

    #[tokio::test]
    async fn errors_are_typed() {
        let (base, _requests) = serve(vec![
            full(500, "text/plain", b"model overloaded"),
            full(200, "text/plain", b"hello there"),
            vec![Step::Sleep(Duration::from_secs(10))],
        ])
        .await;
        let mut cfg = config(&base);
        cfg.timeout = 1;
        let asr = OpenAiAsr::new(cfg).expect("valid");
        let pcm = vec![100i16; 1_600];
        match asr.transcribe(&pcm).await {
            Err(ProviderError::Status { status: 500, body, .. }) => assert_eq!(body, "model overloaded"),
            other => panic!("{other:?}"),
        }
        match asr.transcribe(&pcm).await {
            Err(ProviderError::Protocol { message, .. }) => assert!(message.contains("hello there"), "{message}"),
            other => panic!("{other:?}"),
        }
        let started = std::time::Instant::now();
        assert!(matches!(asr.transcribe(&pcm).await, Err(ProviderError::Timeout { seconds: 1, .. })));
        assert!(started.elapsed() < Duration::from_secs(4));
        // Nothing to send: no request, no words.
        assert_eq!(asr.transcribe(&[]).await.expect("empty"), "");
    }

    #[test]
    fn config_errors() {
        let mut cfg = config("http://127.0.0.1:1/v1");
        cfg.timeout = 0;
        assert!(matches!(OpenAiAsr::new(cfg), Err(ProviderError::Config(_))));
        assert!(matches!(OpenAiAsr::new(config("")), Err(ProviderError::Config(_))));
        let asr = OpenAiAsr::new(config("https://api.openai.com/v1/audio/transcriptions/")).expect("valid");
        assert_eq!(asr.url(), "https://api.openai.com/v1/audio/transcriptions");
    }
}
