//! `type: qwen3_asr_flash`: Qwen3-ASR-Flash on Aliyun Bailian (DashScope), through its
//! OpenAI-compatible chat completions ("Audio file recognition (Qwen-ASR) API reference",
//! Alibaba Cloud Model Studio).
//!
//! A whole-utterance recognizer: at the end of speech the utterance goes up as a 16 kHz WAV data
//! URL (`input_audio`) in a user message (the entry's `context` as the system message), with
//! `asr_options` (`enable_lid`, `enable_itn`, `language`) and `stream: true`; the answer's
//! `choices[0].delta.content` pieces are the text. An `error` object (HTTP error or in the stream)
//! becomes the vendor's code and message.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use reqwest::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ASR_SAMPLE_RATE;
use crate::audio::decode::wav_bytes;
use crate::remote::dashscope::{self, lenient};
use crate::remote::sse::SseLines;
use crate::remote::{ProviderError, body_start, check_url, endpoint, http_client, request_error, timeout_from};

/// What errors and timeouts call this provider.
const WHAT: &str = "ASR.qwen3_asr_flash";

/// The chat endpoint's path under the API root.
const CHAT_PATH: &str = "/chat/completions";

/// The documented limit of one request's audio (10 MB encoded): 5 minutes at 16 kHz is below.
const MAX_SAMPLES: usize = 5 * 60 * ASR_SAMPLE_RATE as usize;

/// The longest answer read, bytes.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// `ASR.<name>` with `type: qwen3_asr_flash`: the Python server's keys.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The DashScope API key (a bearer token).
    pub api_key: String,
    /// The OpenAI-compatible API root.
    pub base_url: String,
    /// `qwen3-asr-flash`.
    pub model_name: String,
    /// Accepted for the Python file; audio is not written to disk here.
    pub output_dir: Option<String>,
    /// Automatic language detection (default on).
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub enable_lid: Option<bool>,
    /// Inverse text normalisation (default on).
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub enable_itn: Option<bool>,
    /// The language, when known (`zh`, `en`, …); detected otherwise.
    #[serde(deserialize_with = "lenient::opt_text")]
    pub language: Option<String>,
    /// Names and terms that help recognition (sent as the system message).
    #[serde(deserialize_with = "lenient::text")]
    pub context: String,
    /// Seconds allowed for the whole request.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            base_url: "https://dashscope.aliyuncs.com/compatible-mode/v1".into(),
            model_name: "qwen3-asr-flash".into(),
            output_dir: None,
            enable_lid: None,
            enable_itn: None,
            language: None,
            context: String::new(),
            timeout: 15,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_key", &dashscope::redacted(&self.api_key))
            .field("base_url", &self.base_url)
            .field("model_name", &self.model_name)
            .field("language", &self.language)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("{} at {}", self.model_name, self.base_url)
    }

    /// The request body for one utterance.
    fn body(&self, pcm: &[i16]) -> Value {
        let wav = wav_bytes(pcm, ASR_SAMPLE_RATE);
        let data = format!("data:audio/wav;base64,{}", base64::engine::general_purpose::STANDARD.encode(wav));
        let mut messages = Vec::new();
        if !self.context.trim().is_empty() {
            messages.push(json!({"role": "system", "content": [{"type": "text", "text": self.context.trim()}]}));
        }
        messages.push(json!({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data}}]}));
        let mut options = json!({
            "enable_lid": self.enable_lid.unwrap_or(true),
            "enable_itn": self.enable_itn.unwrap_or(true),
        });
        if let Some(language) = &self.language {
            options["language"] = json!(language);
        }
        json!({
            "model": self.model_name.trim(),
            "messages": messages,
            "stream": true,
            "asr_options": options,
        })
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Asr>, ProviderError> {
    Ok(Arc::new(Qwen3AsrFlash::new(cfg.clone())?))
}

/// Qwen3-ASR-Flash.
pub struct Qwen3AsrFlash {
    client: Client,
    url: String,
    cfg: Config,
    timeout: Duration,
}

impl Qwen3AsrFlash {
    /// Validates the entry (the key is checked at request time).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let timeout = timeout_from(cfg.timeout, WHAT)?;
        let url = endpoint(&cfg.base_url, CHAT_PATH);
        check_url(&url, WHAT)?;
        let client = http_client(timeout, Some(timeout))?;
        Ok(Self { client, url, cfg, timeout })
    }

    async fn request(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        let key = dashscope::require_key(&self.cfg.api_key, WHAT)?;
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(key)
            .json(&self.cfg.body(&pcm[..pcm.len().min(MAX_SAMPLES)]))
            .send()
            .await
            .map_err(|e| request_error(&self.url, "ASR request", self.timeout, &e))?;
        let status = response.status();
        let body = crate::remote::read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| request_error(&self.url, "ASR request", self.timeout, &e))?;
        if !status.is_success() {
            return Err(ProviderError::Status {
                url: self.url.clone(),
                status: status.as_u16(),
                body: vendor_error(&body).unwrap_or_else(|| body_start(&body)),
            });
        }
        parse_answer(&body).map_err(|message| ProviderError::Protocol { url: self.url.clone(), message })
    }
}

#[async_trait]
impl super::Asr for Qwen3AsrFlash {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        if pcm.is_empty() {
            return Ok(String::new());
        }
        match tokio::time::timeout(self.timeout, self.request(pcm)).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::Timeout { what: "ASR request".into(), seconds: self.timeout.as_secs() }),
        }
    }
}

/// `code: message` of an OpenAI-style `{"error": {...}}` body (or of its SSE events).
fn vendor_error(body: &[u8]) -> Option<String> {
    let from_value = |value: &Value| {
        let error = value.get("error")?;
        let code = error.get("code").and_then(Value::as_str).or_else(|| error.get("type").and_then(Value::as_str));
        let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
        Some(format!("{}: {message}", code.unwrap_or("error")))
    };
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        return from_value(&value);
    }
    let mut lines = SseLines::default();
    let mut events = Vec::new();
    lines.push(body, &mut events).ok()?;
    lines.finish(&mut events);
    events.iter().find_map(|event| from_value(&serde_json::from_str(&event.data).ok()?))
}

/// The text of a streamed answer (or of a whole JSON answer).
fn parse_answer(body: &[u8]) -> Result<String, String> {
    if let Some(error) = vendor_error(body) {
        return Err(error);
    }
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        // `stream` ignored by a gateway: one whole completion.
        return value["choices"][0]["message"]["content"]
            .as_str()
            .map(|t| t.trim().to_owned())
            .ok_or_else(|| format!("no text in the answer: {}", body_start(body)));
    }
    let mut lines = SseLines::default();
    let mut events = Vec::new();
    lines.push(body, &mut events)?;
    lines.finish(&mut events);
    let mut text = String::new();
    let mut any = false;
    for event in events {
        if event.data.trim() == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&event.data).map_err(|e| format!("a chunk that is not JSON ({e})"))?;
        any = true;
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
    }
    if !any {
        return Err(format!("not a completion stream: {}", body_start(body)));
    }
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asr::Asr;
    use crate::audio::decode::{AudioFormat, decode_audio};
    use crate::remote::test_server::{full, serve};

    fn config(base: &str) -> Config {
        Config { api_key: "sk-test".into(), base_url: base.into(), timeout: 3, ..Config::default() }
    }

    #[test]
    fn every_python_key_is_known() {
        let yaml = "type: qwen3_asr_flash\napi_key: k\nbase_url: https://dashscope.aliyuncs.com/compatible-mode/v1\n\
                    model_name: qwen3-asr-flash\noutput_dir: tmp/\nenable_lid: true\nenable_itn: true\nlanguage: zh\n\
                    context: ''\ntimeout: 5";
        assert_eq!(dashscope::unknown_keys::<Config>(yaml), Vec::<String>::new());
    }

    #[test]
    fn the_request_is_the_documented_json() {
        let mut cfg = config("https://dashscope.aliyuncs.com/compatible-mode/v1");
        cfg.context = "小智".into();
        cfg.language = Some("zh".into());
        let pcm: Vec<i16> = (0..1600).map(|i| (i % 50) as i16).collect();
        let body = cfg.body(&pcm);
        let data = body["messages"][1]["content"][0]["input_audio"]["data"].as_str().expect("data").to_owned();
        let b64 = data.strip_prefix("data:audio/wav;base64,").expect("a WAV data URL");
        let wav = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
        let clip = decode_audio(&wav, AudioFormat::Wav).expect("wav");
        assert_eq!((clip.samples, clip.sample_rate), (pcm, 16_000));
        let mut expected = body.clone();
        expected["messages"][1]["content"][0]["input_audio"]["data"] = json!("…");
        assert_eq!(
            expected,
            json!({"model": "qwen3-asr-flash",
                "messages": [{"role": "system", "content": [{"type": "text", "text": "小智"}]},
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "…"}}]}],
                "stream": true,
                "asr_options": {"enable_lid": true, "enable_itn": true, "language": "zh"}})
        );
        assert!(!format!("{cfg:?}").contains("sk-test"));
    }

    #[tokio::test]
    async fn reads_the_stream_and_the_vendor_errors() {
        let stream = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"index\":0}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"你好，\"},\"index\":0}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"世界。\"},\"finish_reason\":\"stop\",\"index\":0}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"total_tokens\":9}}\n\ndata: [DONE]\n\n";
        let (base, mut requests) = serve(vec![
            full(200, "text/event-stream", stream.as_bytes()),
            full(401, "application/json", br#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","code":"invalid_api_key"}}"#),
            full(200, "text/event-stream", b"data: {\"error\":{\"code\":\"DataInspectionFailed\",\"message\":\"inappropriate content\"}}\n\n"),
        ])
        .await;
        let asr = Qwen3AsrFlash::new(config(&format!("{base}/compatible-mode/v1"))).expect("valid");
        assert_eq!(asr.transcribe(&[100i16; 3200]).await.expect("text"), "你好，世界。");
        let request = requests.recv().await.expect("request");
        assert_eq!(request.target(), "/compatible-mode/v1/chat/completions");
        assert_eq!(request.header("authorization").as_deref(), Some("Bearer sk-test"));
        assert_eq!(request.json()["stream"], true);
        match asr.transcribe(&[100i16; 3200]).await {
            Err(ProviderError::Status { status: 401, body, .. }) => {
                assert_eq!(body, "invalid_api_key: Incorrect API key provided.");
            }
            other => panic!("{other:?}"),
        }
        let err = asr.transcribe(&[100i16; 3200]).await.expect_err("in-stream error");
        assert!(err.to_string().contains("DataInspectionFailed: inappropriate content"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_key_is_named_at_request_time() {
        let asr = Qwen3AsrFlash::new(Config::default()).expect("builds without a key");
        let err = asr.transcribe(&[1i16; 160]).await.expect_err("no key");
        assert!(err.to_string().contains("api_key"), "{err}");
        assert!(Qwen3AsrFlash::new(Config { base_url: "not a url".into(), ..Config::default() }).is_err());
    }
}
