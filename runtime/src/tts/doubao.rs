//! `type: doubao`: Volcengine (Doubao) speech synthesis over HTTP (the 在线语音合成 HTTP API,
//! `POST https://openspeech.bytedance.com/api/v1/tts`), and services that take the same request
//! (302.AI's Doubao voices).
//!
//! One JSON request per sentence: `app {appid, token, cluster}`, `user {uid}`,
//! `audio {voice_type, encoding, rate, speed_ratio, volume_ratio, pitch_ratio}`,
//! `request {reqid, text, text_type, operation: "query"}`, with the header
//! `Authorization: {authorization}{access_token}` (`Bearer;` + token, as the Python server sends
//! it). The answer is JSON: `code` (3000 = success), `message`, and the whole sentence's audio as
//! base64 `data`; any other code becomes an error with the vendor's code and message. The HTTP API
//! answers whole sentences (no streaming): the audio is decoded and handed out as one stream.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::Client;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::{AudioChunk, AudioStream, silence};
use crate::audio::chunks::ChunkDecoder;
use crate::audio::decode::AudioFormat;
use crate::remote::{ProviderError, body_start, check_url, http_client, request_error, timeout_from};

/// The vendor's endpoint.
pub const DEFAULT_API_URL: &str = "https://openspeech.bytedance.com/api/v1/tts";
/// The `code` of a successful answer.
const SUCCESS_CODE: i64 = 3000;
/// Sample rate asked for (and assumed for `pcm` answers): the vendor's default.
const SAMPLE_RATE: u32 = 24_000;
/// Largest answer read (base64 of a whole sentence's audio stays far below it).
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// `TTS.<name>` with `type: doubao`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The endpoint (`https://openspeech.bytedance.com/api/v1/tts`).
    pub api_url: String,
    /// Voice (`voice_type`), e.g. `BV001_streaming`.
    pub voice: String,
    /// A cloned voice; used instead of `voice` when set.
    pub private_voice: String,
    /// Prefix of the `Authorization` header; the token follows it (`Bearer;`).
    pub authorization: String,
    /// Application id (a number or a string).
    #[serde(deserialize_with = "text_or_number")]
    pub appid: String,
    /// Access token (secret).
    pub access_token: String,
    /// Cluster (`volcano_tts`).
    pub cluster: String,
    /// Speaking speed ratio (0.2 to 3; empty means 1).
    #[serde(deserialize_with = "optional_float")]
    pub speed_ratio: Option<f32>,
    /// Volume ratio (0.1 to 3; empty means 1).
    #[serde(deserialize_with = "optional_float")]
    pub volume_ratio: Option<f32>,
    /// Pitch ratio (0.1 to 3; empty means 1).
    #[serde(deserialize_with = "optional_float")]
    pub pitch_ratio: Option<f32>,
    /// Audio encoding asked for: `wav` (default), `pcm`, `mp3` or `ogg_opus`.
    pub format: String,
    /// Python server compatibility; not used (the voice decides the language).
    pub language: Option<String>,
    /// Seconds one sentence may take.
    pub timeout: u64,
    /// Python server compatibility; not used (no audio is written).
    pub output_dir: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_url: DEFAULT_API_URL.into(),
            voice: "BV001_streaming".into(),
            private_voice: String::new(),
            authorization: "Bearer;".into(),
            appid: String::new(),
            access_token: String::new(),
            cluster: "volcano_tts".into(),
            speed_ratio: None,
            volume_ratio: None,
            pitch_ratio: None,
            format: "wav".into(),
            language: None,
            timeout: 15,
            output_dir: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &self.api_url)
            .field("voice", &self.voice)
            .field("private_voice", &self.private_voice)
            .field("appid", &self.appid)
            .field("access_token", &secret(&self.access_token))
            .field("cluster", &self.cluster)
            .field("format", &self.format)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How a secret shows in `Debug`: whether it is set, never its value.
pub(crate) fn secret(value: &str) -> &'static str {
    if value.trim().is_empty() { "<not set>" } else { "<redacted>" }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("{} voice {} ({})", self.api_url.trim(), self.voice_type(), self.format.trim())
    }

    fn voice_type(&self) -> &str {
        let private = self.private_voice.trim();
        if private.is_empty() { self.voice.trim() } else { private }
    }
}

/// A YAML scalar that may be written as a number or a string (`appid: 123` or `appid: "123"`),
/// as text; empty when null.
pub(crate) fn text_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
        Null(()),
    }
    Ok(match Scalar::deserialize(deserializer)? {
        Scalar::Text(text) => text.trim().to_owned(),
        Scalar::Int(n) => n.to_string(),
        Scalar::Float(x) => x.to_string(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Null(()) => String::new(),
    })
}

/// A number that may be written as a string (`1.0` or `"1.0"`); empty or null is `None`.
pub(crate) fn optional_float<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f32>, D::Error> {
    let text = text_or_number(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<f32>().map(Some).map_err(|_| serde::de::Error::custom(format!("`{text}` is not a number")))
}

/// The audio format of an `encoding` name; `None` when the vendor has no such encoding.
fn encoding_format(encoding: &str) -> Option<AudioFormat> {
    match encoding.trim().to_ascii_lowercase().as_str() {
        "ogg_opus" => Some(AudioFormat::Opus),
        other => AudioFormat::from_name(other, SAMPLE_RATE),
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(DoubaoTts::new(cfg.clone())?))
}

/// The Doubao HTTP synthesizer.
pub struct DoubaoTts {
    client: Client,
    url: String,
    cfg: Config,
    encoding: String,
    format: AudioFormat,
    timeout: Duration,
}

impl DoubaoTts {
    /// Validates the entry (URL, encoding, timeout); credentials are checked at request time.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let url =
            if cfg.api_url.trim().is_empty() { DEFAULT_API_URL.to_owned() } else { cfg.api_url.trim().to_owned() };
        check_url(&url, "TTS.doubao api_url")?;
        let encoding =
            if cfg.format.trim().is_empty() { "wav".to_owned() } else { cfg.format.trim().to_ascii_lowercase() };
        let format = encoding_format(&encoding).ok_or_else(|| {
            ProviderError::Config(format!("TTS.doubao: format `{encoding}` is not one of wav, pcm, mp3, ogg_opus"))
        })?;
        let encoding = if encoding == "opus" || encoding == "ogg" { "ogg_opus".to_owned() } else { encoding };
        let timeout = timeout_from(cfg.timeout, "TTS.doubao")?;
        let client = http_client(timeout, Some(timeout))?;
        Ok(Self { client, url, cfg, encoding, format, timeout })
    }

    /// The request body for `text`.
    fn body(&self, text: &str) -> Value {
        let cfg = &self.cfg;
        json!({
            "app": {"appid": cfg.appid, "token": cfg.access_token.trim(), "cluster": cfg.cluster.trim()},
            "user": {"uid": "1"},
            "audio": {
                "voice_type": cfg.voice_type(),
                "encoding": self.encoding,
                "rate": SAMPLE_RATE,
                "speed_ratio": ratio(cfg.speed_ratio),
                "volume_ratio": ratio(cfg.volume_ratio),
                "pitch_ratio": ratio(cfg.pitch_ratio),
            },
            "request": {
                "reqid": uuid::Uuid::new_v4().to_string(),
                "text": text,
                "text_type": "plain",
                "operation": "query",
            },
        })
    }

    async fn request(&self, text: &str) -> Result<Vec<AudioChunk>, ProviderError> {
        let token = self.cfg.access_token.trim();
        if token.is_empty() {
            return Err(ProviderError::Config("TTS.doubao: access_token is not set".into()));
        }
        let authorization = format!("{}{token}", self.cfg.authorization);
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .json(&self.body(text))
            .send()
            .await
            .map_err(|e| request_error(&self.url, "TTS.doubao request", self.timeout, &e))?;
        let status = response.status().as_u16();
        let body = crate::remote::read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| request_error(&self.url, "TTS.doubao request", self.timeout, &e))?;
        let answer = parse_answer(&self.url, status, &body)?;
        decode(&self.url, &answer, self.format)
    }
}

/// A ratio setting as JSON (1.0 when unset).
fn ratio(value: Option<f32>) -> Value {
    value.and_then(crate::remote::json_f32).unwrap_or(json!(1.0))
}

/// The vendor's answer: the base64 audio of a success, else the error with the vendor's code and
/// message.
fn parse_answer(url: &str, status: u16, body: &[u8]) -> Result<String, ProviderError> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let code = parsed.as_ref().and_then(|v| v.get("code")).and_then(Value::as_i64);
    let message = parsed.as_ref().and_then(|v| v.get("message")).and_then(Value::as_str).unwrap_or_default().to_owned();
    if !(200..300).contains(&status) {
        let body = match code {
            Some(code) => format!("Doubao TTS error {code}: {message}"),
            None => body_start(body),
        };
        return Err(ProviderError::Status { url: url.to_owned(), status, body });
    }
    let Some(answer) = parsed else {
        return Err(ProviderError::Protocol {
            url: url.to_owned(),
            message: format!("the answer is not JSON: {}", body_start(body)),
        });
    };
    if let Some(code) = code
        && code != SUCCESS_CODE
    {
        return Err(ProviderError::Protocol {
            url: url.to_owned(),
            message: format!("Doubao TTS error {code}: {message}"),
        });
    }
    match answer.get("data").and_then(Value::as_str) {
        Some(data) if !data.is_empty() => Ok(data.to_owned()),
        _ => Err(ProviderError::Protocol {
            url: url.to_owned(),
            message: format!("answered no audio: {}", body_start(body)),
        }),
    }
}

/// The audio of a base64 `data` field.
fn decode(url: &str, data: &str, format: AudioFormat) -> Result<Vec<AudioChunk>, ProviderError> {
    let protocol = |message: String| ProviderError::Protocol { url: url.to_owned(), message };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| protocol(format!("the audio is not base64: {e}")))?;
    let mut decoder = ChunkDecoder::new(format);
    let mut chunks = decoder.push(&bytes).map_err(|e| protocol(e.to_string()))?;
    chunks.extend(decoder.finish().map_err(|e| protocol(e.to_string()))?);
    if chunks.is_empty() {
        return Err(protocol("answered no audio".into()));
    }
    Ok(chunks)
}

#[async_trait]
impl super::Tts for DoubaoTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(silence());
        }
        let chunks = match tokio::time::timeout(self.timeout, self.request(text)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ProviderError::Timeout {
                    what: "TTS.doubao request".into(),
                    seconds: self.timeout.as_secs(),
                });
            }
        };
        Ok(Box::pin(futures_util::stream::iter(chunks.into_iter().map(Ok))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::decode::wav_bytes;
    use crate::remote::test_server::{full, serve};
    use crate::tts::Tts;

    fn config(api_url: &str) -> Config {
        Config {
            api_url: api_url.into(),
            appid: "123456".into(),
            access_token: "tok-secret".into(),
            speed_ratio: Some(1.2),
            ..Config::default()
        }
    }

    #[test]
    fn python_keys_and_lenient_values() {
        let yaml = "api_url: https://openspeech.bytedance.com/api/v1/tts\nvoice: BV001_streaming\n\
                    output_dir: tmp/\nauthorization: \"Bearer;\"\nappid: 123456\naccess_token: abc\n\
                    cluster: volcano_tts\nspeed_ratio: \"1.5\"\nvolume_ratio: 1\npitch_ratio: \"\"\n";
        let cfg: Config = serde_yaml_ng::from_str(yaml).expect("parses");
        assert_eq!(cfg.appid, "123456");
        assert_eq!(cfg.speed_ratio, Some(1.5));
        assert_eq!(cfg.volume_ratio, Some(1.0));
        assert_eq!(cfg.pitch_ratio, None);
        let cfg: Config = serde_yaml_ng::from_str("appid: \"0042\"").expect("parses");
        assert_eq!(cfg.appid, "0042");
        let debug = format!("{:?}", Config { access_token: "abc-secret".into(), ..cfg });
        assert!(!debug.contains("abc-secret"), "{debug}");
        assert!(serde_yaml_ng::from_str::<Config>("speed_ratio: fast").is_err());
    }

    /// Every key of the Python server's entries of the three Volcengine types is known (no
    /// "unknown key" warning), and their values (placeholders cleared) deserialize.
    #[test]
    fn every_python_key_is_known() {
        fn unknown_keys<T: serde::de::DeserializeOwned>(entry: &serde_yaml_ng::Value) -> Vec<String> {
            let mut entry = entry.clone();
            let map = entry.as_mapping_mut().expect("an entry is a map");
            map.remove("type");
            for (_, value) in map.iter_mut() {
                if value.as_str().is_some_and(|v| v.contains("你的") || v.contains("选填")) {
                    *value = serde_yaml_ng::Value::String(String::new());
                }
            }
            let mut unknown = Vec::new();
            let _: T = serde_ignored::deserialize(entry, |path| unknown.push(path.to_string())).expect("deserializes");
            unknown
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/assets/python-v0.9.6-config.yaml");
        let text = std::fs::read_to_string(path).expect("the Python configuration");
        let python: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("yaml");
        for name in ["DoubaoTTS", "TTS302AI"] {
            assert_eq!(unknown_keys::<Config>(&python["TTS"][name]), Vec::<String>::new(), "{name}");
        }
        for name in ["HuoshanDoubleStreamTTS", "HuoshanDoubleStreamTTSV2"] {
            let entry = &python["TTS"][name];
            assert_eq!(
                unknown_keys::<crate::tts::huoshan_double_stream::Config>(entry),
                Vec::<String>::new(),
                "{name}"
            );
        }
        for name in ["DoubaoStreamASR", "DoubaoStreamASRV2"] {
            let entry = &python["ASR"][name];
            assert_eq!(unknown_keys::<crate::asr::doubao_stream::Config>(entry), Vec::<String>::new(), "{name}");
        }
    }

    #[test]
    fn build_accepts_empty_credentials_and_refuses_bad_values() {
        assert!(build(&Config::default()).is_ok());
        assert!(matches!(
            build(&Config { api_url: "ftp://x".into(), ..Config::default() }),
            Err(ProviderError::Config(_))
        ));
        assert!(matches!(build(&Config { format: "flac".into(), ..Config::default() }), Err(ProviderError::Config(_))));
        assert!(matches!(build(&Config { timeout: 0, ..Config::default() }), Err(ProviderError::Config(_))));
    }

    #[tokio::test]
    async fn sends_the_documented_request_and_decodes_the_audio() {
        let samples: Vec<i16> = (0..4_800).map(|i| ((i * 37) % 3_000) as i16 - 1_500).collect();
        let data = base64::engine::general_purpose::STANDARD.encode(wav_bytes(&samples, 24_000));
        let answer = json!({"reqid": "r", "code": 3000, "message": "Success", "sequence": -1, "data": data});
        let (base, mut requests) = serve(vec![full(200, "application/json", answer.to_string().as_bytes())]).await;
        let tts = DoubaoTts::new(config(&format!("{base}/api/v1/tts"))).expect("valid");
        let clip = tts.synthesize(" 你好。 ").await.expect("audio");
        assert_eq!(clip.samples, samples);
        assert_eq!(clip.sample_rate, 24_000);
        let request = requests.recv().await.expect("request");
        assert_eq!(request.method(), "POST");
        assert_eq!(request.target(), "/api/v1/tts");
        assert_eq!(request.header("authorization").as_deref(), Some("Bearer;tok-secret"));
        let body = request.json();
        assert_eq!(body["app"], json!({"appid": "123456", "token": "tok-secret", "cluster": "volcano_tts"}));
        assert_eq!(body["audio"]["voice_type"], "BV001_streaming");
        assert_eq!(body["audio"]["encoding"], "wav");
        assert_eq!(body["audio"]["speed_ratio"], json!(1.2));
        assert_eq!(body["audio"]["volume_ratio"], json!(1.0));
        assert_eq!(body["request"]["text"], "你好。");
        assert_eq!(body["request"]["operation"], "query");
        assert!(uuid::Uuid::parse_str(body["request"]["reqid"].as_str().unwrap_or_default()).is_ok());
    }

    #[tokio::test]
    async fn vendor_codes_become_errors_without_the_token() {
        let (base, _requests) = serve(vec![
            full(200, "application/json", br#"{"reqid":"r","code":3050,"message":"voice_type not exist"}"#),
            full(401, "application/json", br#"{"code":3001,"message":"invalid token"}"#),
            full(200, "application/json", br#"{"code":3000,"message":"Success"}"#),
        ])
        .await;
        let tts = DoubaoTts::new(config(&base)).expect("valid");
        match tts.synthesize("a").await {
            Err(ProviderError::Protocol { message, .. }) => {
                assert_eq!(message, "Doubao TTS error 3050: voice_type not exist");
            }
            other => panic!("{other:?}"),
        }
        match tts.synthesize("a").await {
            Err(e @ ProviderError::Status { status: 401, .. }) => {
                let text = e.to_string();
                assert!(text.contains("3001") && text.contains("invalid token"), "{text}");
                assert!(!text.contains("tok-secret"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(tts.synthesize("a").await, Err(ProviderError::Protocol { .. })));
        // No token: an error naming the key, before any request.
        let tts = DoubaoTts::new(Config { access_token: String::new(), ..config(&base) }).expect("valid");
        match tts.synthesize("a").await {
            Err(ProviderError::Config(message)) => assert!(message.contains("access_token"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
