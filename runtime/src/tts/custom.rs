//! The Python server's `custom` TTS: a templated HTTP request that answers audio.
//!
//! Every string in `params` (nested ones too) has `{prompt_text}` replaced by the sentence. With
//! `method: POST` the params are the JSON body; with any other method (`GET`, the Python server's
//! default) they go in the query string (strings as they are, other values as JSON text).
//! `headers` are added to the request. The answer is read as a stream and decoded as it arrives,
//! per `format` (WAV, MP3 and Ogg content is also recognised by its first bytes); an answer whose
//! `Content-Type` is JSON is the server's error message.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Client;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::{AudioStream, http_audio, silence};
use crate::audio::decode::AudioFormat;
use crate::config::CustomTtsConfig;
use crate::remote::ProviderError;
use crate::remote::{check_url, request_error, streaming_client, timeout_from};

/// The placeholder replaced by the sentence.
const PLACEHOLDER: &str = "{prompt_text}";

/// The HTTP method of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
}

/// A templated HTTP speech endpoint.
pub struct CustomTts {
    client: Client,
    url: String,
    method: Method,
    params: serde_json::Map<String, Value>,
    headers: HeaderMap,
    format: AudioFormat,
    timeout: Duration,
}

impl CustomTts {
    /// Validates the entry and builds the backend (one HTTP client, reused for every request).
    pub fn new(cfg: CustomTtsConfig) -> Result<Self, ProviderError> {
        // As in the Python server: POST is POST, anything else is GET.
        let method = match cfg.method.trim().to_ascii_uppercase().as_str() {
            "POST" => Method::Post,
            "GET" | "" => Method::Get,
            other => {
                tracing::warn!(
                    method = other,
                    "custom TTS method is not GET or POST; using GET as the Python server does"
                );
                Method::Get
            }
        };
        let format = AudioFormat::from_name(&cfg.format, cfg.sample_rate).ok_or_else(|| {
            ProviderError::Config(format!("custom TTS format `{}` is not one of wav, mp3, pcm, opus", cfg.format))
        })?;
        if matches!(format, AudioFormat::Pcm { sample_rate: 0 }) {
            return Err(ProviderError::Config("custom TTS sample_rate must be above 0 for pcm".into()));
        }
        let timeout = timeout_from(cfg.timeout, "custom TTS")?;
        let url = cfg.url.trim().to_string();
        check_url(&url, "custom TTS")?;
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| ProviderError::Config(format!("custom TTS header name `{name}` is invalid")))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| ProviderError::Config(format!("custom TTS header `{name}` has an invalid value")))?;
            headers.insert(name, value);
        }
        let client = streaming_client(timeout)?;
        Ok(Self { client, url, method, params: cfg.params.into_iter().collect(), headers, format, timeout })
    }

    /// The params with the sentence put in.
    fn params_for(&self, text: &str) -> serde_json::Map<String, Value> {
        self.params.iter().map(|(key, value)| (key.clone(), substitute(value, text))).collect()
    }

    async fn request(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let params = self.params_for(text);
        let request = match self.method {
            Method::Get => {
                let query: Vec<(String, String)> = params.into_iter().map(|(k, v)| (k, query_value(v))).collect();
                self.client.get(&self.url).query(&query)
            }
            Method::Post => self.client.post(&self.url).json(&params),
        };
        let response = request
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| request_error(&self.url, "TTS request", self.timeout, &e))?;
        http_audio(&self.url, response, self.format, self.timeout).await
    }
}

/// Replaces the placeholder in every string of `value`, however deep.
fn substitute(value: &Value, text: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace(PLACEHOLDER, text)),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, text)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), substitute(v, text))).collect()),
        other => other.clone(),
    }
}

/// A param as a query-string value: strings as they are, `null` empty, anything else as JSON.
fn query_value(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[async_trait]
impl super::Tts for CustomTts {
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
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::audio::AudioClip;
    use crate::audio::decode::wav_bytes;
    use crate::remote::test_server::{full, serve};
    use crate::tts::Tts;

    fn config(url: &str, method: &str) -> CustomTtsConfig {
        let params: BTreeMap<String, Value> = [
            ("text".to_string(), json!("{prompt_text}")),
            ("speaker".to_string(), json!("xiaoyan")),
            ("speed".to_string(), json!(1.1)),
            ("nested".to_string(), json!({"say": ["«{prompt_text}»", 3]})),
        ]
        .into_iter()
        .collect();
        let headers: BTreeMap<String, String> = [("X-Token".to_string(), "abc".to_string())].into_iter().collect();
        CustomTtsConfig {
            method: method.into(),
            url: url.into(),
            params,
            headers,
            format: "wav".into(),
            sample_rate: 16_000,
            timeout: 5,
            output_dir: None,
        }
    }

    /// Decodes `%XX` escapes and `+` of a query string.
    fn query_pairs(target: &str) -> BTreeMap<String, String> {
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
        reqwest::Url::parse(&format!("http://x/?{query}"))
            .expect("url")
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[tokio::test]
    async fn get_puts_the_sentence_in_the_query() {
        let samples: Vec<i16> = (0..800).map(|i| (i * 7) as i16).collect();
        let (base, mut requests) = serve(vec![full(200, "audio/wav", &wav_bytes(&samples, 24_000))]).await;
        let tts = CustomTts::new(config(&format!("{base}/tts"), "get")).expect("valid");
        let clip = tts.synthesize("今天天气 & 好").await.expect("audio");
        assert_eq!(clip, AudioClip { samples, sample_rate: 24_000 });
        let request = requests.recv().await.expect("request");
        assert_eq!(request.method(), "GET");
        assert!(request.target().starts_with("/tts?"));
        assert_eq!(request.header("x-token").as_deref(), Some("abc"));
        let pairs = query_pairs(&request.target());
        assert_eq!(pairs["text"], "今天天气 & 好");
        assert_eq!(pairs["speaker"], "xiaoyan");
        assert_eq!(pairs["speed"], "1.1");
        assert_eq!(pairs["nested"], json!({"say": ["«今天天气 & 好»", 3]}).to_string());
    }

    #[tokio::test]
    async fn post_puts_the_sentence_in_the_json_body() {
        let samples: Vec<i16> = vec![1, -2, 3, -4];
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let (base, mut requests) = serve(vec![
            full(200, "application/octet-stream", &pcm),
            full(200, "application/json; charset=utf-8", br#"{"code":40001,"msg":"speaker not found"}"#),
            full(503, "text/html", b"<h1>busy</h1>"),
        ])
        .await;
        let mut cfg = config(&format!("{base}/api/tts"), "POST");
        cfg.format = "pcm".into();
        cfg.sample_rate = 8_000;
        let tts = CustomTts::new(cfg).expect("valid");
        let clip = tts.synthesize("hello \"world\"").await.expect("audio");
        assert_eq!(clip, AudioClip { samples, sample_rate: 8_000 });
        let request = requests.recv().await.expect("request");
        assert_eq!(request.method(), "POST");
        assert_eq!(request.target(), "/api/tts");
        assert_eq!(request.header("x-token").as_deref(), Some("abc"));
        assert_eq!(
            request.json(),
            json!({"text": "hello \"world\"", "speaker": "xiaoyan", "speed": 1.1, "nested": {"say": ["«hello \"world\"»", 3]}})
        );
        match tts.synthesize("again").await {
            Err(ProviderError::Protocol { message, .. }) => assert!(message.contains("speaker not found"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(tts.synthesize("again").await, Err(ProviderError::Status { status: 503, .. })));
    }

    #[test]
    fn config_errors() {
        assert_eq!(CustomTts::new(config("http://x/tts", "PUT")).expect("valid").method, Method::Get);
        assert_eq!(CustomTts::new(config("http://x/tts", "")).expect("valid").method, Method::Get);
        assert_eq!(CustomTts::new(config("http://x/tts", "post")).expect("valid").method, Method::Post);
        assert!(matches!(CustomTts::new(config("", "GET")), Err(ProviderError::Config(_))));
        let mut cfg = config("http://x/tts", "GET");
        cfg.headers.insert("Bad Header".into(), "x".into());
        assert!(matches!(CustomTts::new(cfg), Err(ProviderError::Config(_))));
        let mut cfg = config("http://x/tts", "GET");
        cfg.format = "aac".into();
        assert!(matches!(CustomTts::new(cfg), Err(ProviderError::Config(_))));
    }
}
