//! `type: tencent`: Tencent Cloud one-sentence recognition (一句话识别, `SentenceRecognition`,
//! API 3.0 version 2019-06-14 on `asr.tencentcloudapi.com`), as the Python server's provider
//! uses it.
//!
//! A whole-utterance backend: at the end of speech the utterance (16 kHz mono PCM, at most 60 s as
//! the API allows) goes up base64-encoded in one TC3-HMAC-SHA256 signed JSON request
//! (`EngSerViceType` `16k_zh` by default, `SourceType` 1, `VoiceFormat` `pcm`, `DataLen` the
//! byte length before encoding); the answer's `Result` is the text. A `Response.Error` becomes an
//! error with Tencent's code and message.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ASR_SAMPLE_RATE;
use crate::remote::tencent_cloud::{Api, Keys, required, text_or_number};
use crate::remote::{ProviderError, timeout_from};

/// The API's endpoint.
const DEFAULT_URL: &str = "https://asr.tencentcloudapi.com";
/// The API version of `SentenceRecognition`.
const VERSION: &str = "2019-06-14";
/// Longest audio the API takes, seconds.
const MAX_SECONDS: usize = 60;

/// `ASR.<name>` with `type: tencent`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The account's AppId (not needed by API 3.0 signing; kept for the Python file).
    #[serde(deserialize_with = "text_or_number")]
    pub appid: String,
    /// The API key's SecretId.
    pub secret_id: String,
    /// The API key's SecretKey.
    pub secret_key: String,
    /// Where the Python server kept audio files (not used: nothing is written).
    pub output_dir: Option<String>,
    /// The engine (`16k_zh`, `16k_en`, `16k_zh-PY`, `16k_yue`, …).
    pub eng_service_type: String,
    /// `X-TC-Region` (the API does not need one; the Python server sends ap-shanghai). Empty:
    /// none.
    pub region: String,
    /// The endpoint (a proxy or a test peer).
    pub api_url: String,
    /// Seconds to wait for the answer.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            appid: String::new(),
            secret_id: String::new(),
            secret_key: String::new(),
            output_dir: None,
            eng_service_type: "16k_zh".into(),
            region: "ap-shanghai".into(),
            api_url: DEFAULT_URL.into(),
            timeout: 15,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("appid", &self.appid)
            .field("secret_id", &if self.secret_id.is_empty() { "" } else { "***" })
            .field("secret_key", &if self.secret_key.is_empty() { "" } else { "***" })
            .field("output_dir", &self.output_dir)
            .field("eng_service_type", &self.eng_service_type)
            .field("region", &self.region)
            .field("api_url", &self.api_url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        let keys = if self.secret_id.trim().is_empty() || self.secret_key.trim().is_empty() {
            "secret_id/secret_key not set"
        } else {
            "keys set"
        };
        format!("SentenceRecognition at {}, {}, {keys}", self.api_url.trim(), self.eng_service_type.trim())
    }
}

/// Builds the backend of a validated entry (empty keys are an error at request time, not here).
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Asr>, ProviderError> {
    Ok(Arc::new(TencentAsr::new(cfg.clone())?))
}

/// Tencent Cloud one-sentence recognition.
pub struct TencentAsr {
    api: Api,
    cfg: Config,
}

impl TencentAsr {
    /// Validates the entry and builds the backend.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        if cfg.eng_service_type.trim().is_empty() {
            return Err(ProviderError::Config("ASR.tencent: eng_service_type is empty".into()));
        }
        let timeout: Duration = timeout_from(cfg.timeout, "ASR")?;
        let api = Api::new(&cfg.api_url, "asr", VERSION, &cfg.region, timeout, "ASR request")?;
        Ok(Self { api, cfg })
    }

    /// The request body of an utterance.
    fn payload(&self, pcm: &[i16]) -> Vec<u8> {
        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        json!({
            "EngSerViceType": self.cfg.eng_service_type.trim(),
            "SourceType": 1,
            "VoiceFormat": "pcm",
            "Data": base64::engine::general_purpose::STANDARD.encode(&bytes),
            "DataLen": bytes.len(),
        })
        .to_string()
        .into_bytes()
    }
}

#[async_trait]
impl super::Asr for TencentAsr {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        let keys = Keys {
            id: required(&self.cfg.secret_id, "ASR.tencent", "secret_id")?,
            key: required(&self.cfg.secret_key, "ASR.tencent", "secret_key")?,
        };
        if pcm.is_empty() {
            return Ok(String::new());
        }
        let pcm = &pcm[..pcm.len().min(MAX_SECONDS * ASR_SAMPLE_RATE as usize)];
        let response = self.api.call("SentenceRecognition", keys, self.payload(pcm)).await?;
        match response.get("Result") {
            Some(Value::String(text)) => Ok(text.trim().to_owned()),
            Some(Value::Null) | None => Ok(String::new()),
            Some(other) => Err(ProviderError::Protocol {
                url: self.api.url().to_owned(),
                message: format!("Result is not text: {other}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asr::Asr;
    use crate::remote::tencent_cloud::{CONTENT_TYPE, authorization};
    use crate::remote::test_server::{Step, full, serve};

    fn config(url: &str) -> Config {
        Config {
            appid: "1300000000".into(),
            secret_id: "AKIDtest".into(),
            secret_key: "sk-test".into(),
            api_url: url.into(),
            timeout: 5,
            ..Config::default()
        }
    }

    #[test]
    fn every_key_of_the_python_entry_is_known() {
        const PYTHON: &str = include_str!("../../../tests/assets/python-v0.9.6-config.yaml");
        let file: serde_yaml_ng::Value = serde_yaml_ng::from_str(PYTHON).expect("yaml");
        for (extra, want) in [("{}", vec![]), ("{bogus: 1}", vec!["bogus".to_owned()])] {
            let mut entry = file["ASR"]["TencentASR"].clone();
            let map = entry.as_mapping_mut().expect("an entry");
            map.remove("type");
            map.extend(serde_yaml_ng::from_str::<serde_yaml_ng::Mapping>(extra).expect("yaml"));
            let mut unknown = Vec::new();
            let _: Config = serde_ignored::deserialize(entry, |path| unknown.push(path.to_string())).expect("parses");
            assert_eq!(unknown, want);
        }
    }

    #[test]
    fn python_entry_keys_and_debug() {
        let yaml = "appid: 1300000000\nsecret_id: AKIDtest\nsecret_key: sk-test\noutput_dir: tmp/\n";
        let cfg: Config = serde_yaml_ng::from_str(yaml).expect("the Python entry parses");
        assert_eq!(cfg.appid, "1300000000");
        assert_eq!(cfg.eng_service_type, "16k_zh");
        assert_eq!(cfg.region, "ap-shanghai");
        let debug = format!("{cfg:?} {}", cfg.summary());
        assert!(!debug.contains("sk-test") && !debug.contains("AKIDtest"), "{debug}");
        // Empty keys build; the request says what is missing.
        let empty: Config =
            serde_yaml_ng::from_str("appid: \"\"\nsecret_id: \"\"\nsecret_key: \"\"\n").expect("parses");
        assert!(build(&empty).is_ok());
        let mut bad = config("not a url");
        assert!(matches!(TencentAsr::new(bad.clone()), Err(ProviderError::Config(_))));
        bad.api_url = DEFAULT_URL.into();
        bad.timeout = 0;
        assert!(matches!(TencentAsr::new(bad), Err(ProviderError::Config(_))));
    }

    #[tokio::test]
    async fn missing_keys_are_named_at_request_time() {
        let mut cfg = config("http://127.0.0.1:9");
        cfg.secret_key = " ".into();
        let asr = TencentAsr::new(cfg).expect("builds");
        match asr.transcribe(&[1, 2, 3]).await {
            Err(ProviderError::Config(message)) => assert!(message.contains("secret_key is not set"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn sends_a_signed_sentence_recognition_and_reads_the_result() {
        let answer = r#"{"Response":{"Result":" 今天天气怎么样。 ","AudioDuration":1200,"WordSize":0,"WordList":null,"RequestId":"r-1"}}"#.as_bytes();
        let error = br#"{"Response":{"Error":{"Code":"FailedOperation.ErrorRecognize","Message":"recognition failed"},"RequestId":"r-2"}}"#;
        let (base, mut requests) = serve(vec![
            full(200, "application/json", answer),
            full(200, "application/json", error),
            full(200, "application/json", br#"{"Response":{"RequestId":"r-3"}}"#),
            vec![Step::Sleep(Duration::from_secs(10))],
        ])
        .await;
        let mut cfg = config(&base);
        cfg.timeout = 1;
        let asr = TencentAsr::new(cfg).expect("builds");
        let pcm: Vec<i16> = (0..1600).map(|i| (i % 50) as i16 * 100).collect();
        assert_eq!(asr.transcribe(&pcm).await.expect("text"), "今天天气怎么样。");

        let request = requests.recv().await.expect("request");
        assert_eq!(request.method(), "POST");
        assert_eq!(request.target(), "/");
        assert_eq!(request.header("content-type").as_deref(), Some(CONTENT_TYPE));
        assert_eq!(request.header("x-tc-action").as_deref(), Some("SentenceRecognition"));
        assert_eq!(request.header("x-tc-version").as_deref(), Some("2019-06-14"));
        assert_eq!(request.header("x-tc-region").as_deref(), Some("ap-shanghai"));
        let host = base.trim_start_matches("http://").to_owned();
        assert_eq!(request.header("host"), Some(host.clone()));
        let timestamp: i64 = request.header("x-tc-timestamp").expect("timestamp").parse().expect("number");
        assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
        let expected = authorization(
            "AKIDtest",
            "sk-test",
            "asr",
            timestamp,
            &[("content-type", CONTENT_TYPE), ("host", &host), ("x-tc-action", "SentenceRecognition")],
            &request.body,
        );
        assert_eq!(request.header("authorization"), Some(expected));
        let body = request.json();
        assert_eq!(body["EngSerViceType"], "16k_zh");
        assert_eq!(body["SourceType"], 1);
        assert_eq!(body["VoiceFormat"], "pcm");
        assert_eq!(body["DataLen"], 3200);
        let data = base64::engine::general_purpose::STANDARD.decode(body["Data"].as_str().expect("data")).expect("b64");
        assert_eq!(data.len(), 3200);
        assert_eq!(i16::from_le_bytes([data[2], data[3]]), pcm[1]);

        match asr.transcribe(&pcm).await {
            Err(ProviderError::Protocol { message, .. }) => {
                assert!(message.contains("FailedOperation.ErrorRecognize") && message.contains("recognition failed"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(asr.transcribe(&pcm).await.expect("no words"), "");
        assert!(matches!(asr.transcribe(&pcm).await, Err(ProviderError::Timeout { .. })));
    }
}
