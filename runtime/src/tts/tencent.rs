//! `type: tencent`: Tencent Cloud speech synthesis (基础语音合成, `TextToVoice`, API 3.0
//! version 2019-08-23 on `tts.tencentcloudapi.com`), as the Python server's provider uses it.
//!
//! `TextToVoice` answers a whole sentence at once (base64 `Audio` in the JSON answer), so the
//! first audio of a sentence arrives with all of it. A sentence longer than the API's limit (150
//! characters) is cut at punctuation into pieces that are requested one after the other, each
//! piece's audio passed on as soon as it is there. `Codec` is the entry's `format` (`wav`, `pcm`
//! or `mp3`), `SampleRate` its `sample_rate`, `VoiceType` its `private_voice` or `voice`. A
//! `Response.Error` becomes an error with Tencent's code and message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{AudioChunk, AudioStream, silence};
use crate::audio::chunks::ChunkDecoder;
use crate::audio::decode::AudioFormat;
use crate::remote::tencent_cloud::{Api, Keys, required, text_or_number};
use crate::remote::{ProviderError, json_f32, timeout_from};

/// The API's endpoint.
const DEFAULT_URL: &str = "https://tts.tencentcloudapi.com";
/// The API version of `TextToVoice`.
const VERSION: &str = "2019-08-23";
/// Most characters of text per request (the API's limit for Chinese text).
const MAX_CHARS: usize = 150;

/// `TTS.<name>` with `type: tencent`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the Python server kept audio files (not used: audio is streamed, not written).
    pub output_dir: Option<String>,
    /// The account's AppId (not needed by API 3.0 signing; kept for the Python file).
    #[serde(deserialize_with = "text_or_number")]
    pub appid: String,
    /// The API key's SecretId.
    pub secret_id: String,
    /// The API key's SecretKey.
    pub secret_key: String,
    /// `X-TC-Region`.
    pub region: String,
    /// `VoiceType` (a number, e.g. 101001). Empty: Tencent's default voice.
    #[serde(deserialize_with = "text_or_number")]
    pub voice: String,
    /// A custom voice's `VoiceType`; used instead of `voice` when set.
    #[serde(deserialize_with = "text_or_number")]
    pub private_voice: String,
    /// `Codec`: `wav` (Python's default), `pcm` or `mp3`.
    pub format: String,
    /// `SampleRate`: 8000, 16000 or 24000 (voice-dependent).
    pub sample_rate: u32,
    /// `Speed`, -2 (0.6×) to 6 (2.5×); 0 is normal (`speed` is read too).
    #[serde(alias = "speed")]
    pub speech_rate: f32,
    /// `Volume`, -10 to 10; 0 is normal.
    pub volume: f32,
    /// The voice's language, as `PrimaryLanguage`: 中文/zh (1), 英语/en (2), 日语/ja (3).
    /// Empty: Tencent's default (Chinese).
    pub language: String,
    /// The endpoint (a proxy or a test peer).
    pub api_url: String,
    /// Seconds to wait for each answer.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            output_dir: None,
            appid: String::new(),
            secret_id: String::new(),
            secret_key: String::new(),
            region: "ap-guangzhou".into(),
            voice: "101001".into(),
            private_voice: String::new(),
            format: "wav".into(),
            sample_rate: 16_000,
            speech_rate: 0.0,
            volume: 0.0,
            language: String::new(),
            api_url: DEFAULT_URL.into(),
            timeout: 15,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("output_dir", &self.output_dir)
            .field("appid", &self.appid)
            .field("secret_id", &if self.secret_id.is_empty() { "" } else { "***" })
            .field("secret_key", &if self.secret_key.is_empty() { "" } else { "***" })
            .field("region", &self.region)
            .field("voice", &self.voice)
            .field("private_voice", &self.private_voice)
            .field("format", &self.format)
            .field("sample_rate", &self.sample_rate)
            .field("speech_rate", &self.speech_rate)
            .field("volume", &self.volume)
            .field("language", &self.language)
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
        format!(
            "TextToVoice at {} ({}), voice {}, {} {} Hz, {keys}",
            self.api_url.trim(),
            self.region.trim(),
            self.voice_type().unwrap_or("default"),
            self.format.trim(),
            self.sample_rate
        )
    }

    /// The `VoiceType` to send: `private_voice`, else `voice`; `None` when both are empty.
    fn voice_type(&self) -> Option<&str> {
        [self.private_voice.trim(), self.voice.trim()].into_iter().find(|v| !v.is_empty())
    }
}

/// Builds the backend of a validated entry (empty keys are an error at request time, not here).
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(TencentTts::new(cfg.clone())?))
}

/// Tencent Cloud `TextToVoice`.
pub struct TencentTts {
    api: Arc<Api>,
    cfg: Arc<Config>,
    voice_type: Option<i64>,
    language: Option<u8>,
    format: AudioFormat,
}

impl TencentTts {
    /// Validates the entry and builds the backend.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let codec = cfg.format.trim().to_ascii_lowercase();
        let format = match codec.as_str() {
            "wav" | "pcm" | "mp3" => AudioFormat::from_name(&codec, cfg.sample_rate),
            _ => None,
        }
        .ok_or_else(|| {
            ProviderError::Config(format!("TTS.tencent: format `{}` is not one of wav, pcm, mp3", cfg.format))
        })?;
        if cfg.sample_rate == 0 {
            return Err(ProviderError::Config("TTS.tencent: sample_rate must be above 0".into()));
        }
        let voice_type = match cfg.voice_type() {
            None => None,
            Some(text) => Some(text.parse::<i64>().map_err(|_| {
                ProviderError::Config(format!("TTS.tencent: voice `{text}` is not a VoiceType number"))
            })?),
        };
        let language = primary_language(&cfg.language);
        let timeout: Duration = timeout_from(cfg.timeout, "TTS")?;
        let api = Api::new(&cfg.api_url, "tts", VERSION, &cfg.region, timeout, "TTS request")?;
        Ok(Self { api: Arc::new(api), cfg: Arc::new(cfg), voice_type, language, format })
    }
}

/// What one request needs, shared by the pieces of a sentence.
#[derive(Clone)]
struct Synth {
    api: Arc<Api>,
    cfg: Arc<Config>,
    voice_type: Option<i64>,
    language: Option<u8>,
    format: AudioFormat,
}

impl Synth {
    fn payload(&self, text: &str) -> Vec<u8> {
        let mut body = Map::new();
        body.insert("Text".into(), json!(text));
        body.insert("SessionId".into(), json!(uuid::Uuid::new_v4().to_string()));
        if let Some(voice) = self.voice_type {
            body.insert("VoiceType".into(), json!(voice));
        }
        body.insert("Codec".into(), json!(self.cfg.format.trim().to_ascii_lowercase()));
        body.insert("SampleRate".into(), json!(self.cfg.sample_rate));
        body.insert("Speed".into(), json_f32(self.cfg.speech_rate).unwrap_or(json!(0)));
        body.insert("Volume".into(), json_f32(self.cfg.volume).unwrap_or(json!(0)));
        if let Some(language) = self.language {
            body.insert("PrimaryLanguage".into(), json!(language));
        }
        Value::Object(body).to_string().into_bytes()
    }

    /// The audio of one piece of text.
    async fn piece(&self, text: &str) -> Result<Vec<AudioChunk>, ProviderError> {
        let keys = Keys {
            id: required(&self.cfg.secret_id, "TTS.tencent", "secret_id")?,
            key: required(&self.cfg.secret_key, "TTS.tencent", "secret_key")?,
        };
        let response = self.api.call("TextToVoice", keys, self.payload(text)).await?;
        let protocol = |message: String| ProviderError::Protocol { url: self.api.url().to_owned(), message };
        let audio = response.get("Audio").and_then(Value::as_str).unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(audio.trim())
            .map_err(|e| protocol(format!("Audio is not base64: {e}")))?;
        if bytes.is_empty() {
            return Err(protocol("answered no audio".into()));
        }
        let mut decoder = ChunkDecoder::new(self.format);
        let mut chunks = decoder.push(&bytes).map_err(|e| protocol(e.to_string()))?;
        chunks.extend(decoder.finish().map_err(|e| protocol(e.to_string()))?);
        if chunks.is_empty() {
            return Err(protocol("answered no audio".into()));
        }
        Ok(chunks)
    }
}

/// `PrimaryLanguage` of a `language` setting (`None`: not sent, the voice's own language).
fn primary_language(language: &str) -> Option<u8> {
    match language.trim().to_lowercase().as_str() {
        "" => None,
        "中文" | "汉语" | "普通话" | "zh" | "zh-cn" | "chinese" | "1" => Some(1),
        "英语" | "英文" | "en" | "en-us" | "english" | "2" => Some(2),
        "日语" | "日文" | "ja" | "japanese" | "3" => Some(3),
        other => {
            tracing::warn!(
                "TTS.tencent: language `{other}` has no PrimaryLanguage (中文, 英语, 日语); the voice's own is used"
            );
            None
        }
    }
}

/// `text` cut into pieces of at most `max` characters, at the last sentence or clause mark (else
/// the last space) inside each piece.
fn pieces(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest: Vec<char> = text.trim().chars().collect();
    while rest.len() > max {
        let window = &rest[..max];
        let cut = window
            .iter()
            .rposition(|c| "。！？!?；;，,、：:…".contains(*c))
            .or_else(|| window.iter().rposition(|c| c.is_whitespace()))
            .map_or(max, |at| at + 1);
        let piece: String = rest[..cut].iter().collect();
        if !piece.trim().is_empty() {
            out.push(piece.trim().to_owned());
        }
        rest.drain(..cut);
    }
    let last: String = rest.iter().collect();
    if !last.trim().is_empty() {
        out.push(last.trim().to_owned());
    }
    out
}

#[async_trait]
impl super::Tts for TencentTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let mut todo: VecDeque<String> = pieces(text, MAX_CHARS).into();
        let Some(first) = todo.pop_front() else {
            return Ok(silence());
        };
        let synth = Synth {
            api: Arc::clone(&self.api),
            cfg: Arc::clone(&self.cfg),
            voice_type: self.voice_type,
            language: self.language,
            format: self.format,
        };
        // The first piece is answered before the stream is handed out (its failure is the
        // sentence's); the others are requested as the stream is read.
        let ready: VecDeque<AudioChunk> = synth.piece(&first).await?.into();
        let stream = futures_util::stream::unfold(
            (synth, todo, ready, false),
            |(synth, mut todo, mut ready, failed)| async move {
                loop {
                    if let Some(chunk) = ready.pop_front() {
                        return Some((Ok(chunk), (synth, todo, ready, failed)));
                    }
                    if failed {
                        return None;
                    }
                    let text = todo.pop_front()?;
                    match synth.piece(&text).await {
                        Ok(chunks) => ready.extend(chunks),
                        Err(e) => return Some((Err(e), (synth, todo, ready, true))),
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::decode::wav_bytes;
    use crate::remote::tencent_cloud::{CONTENT_TYPE, authorization};
    use crate::remote::test_server::{full, serve};
    use crate::tts::Tts;

    fn config(url: &str) -> Config {
        Config {
            secret_id: "AKIDtest".into(),
            secret_key: "sk-test".into(),
            api_url: url.into(),
            timeout: 5,
            ..Config::default()
        }
    }

    fn answer(audio: &[u8]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(audio);
        format!(r#"{{"Response":{{"Audio":"{b64}","SessionId":"s","Subtitles":[],"RequestId":"r"}}}}"#).into_bytes()
    }

    #[test]
    fn python_entry_keys_and_debug() {
        let yaml = "output_dir: tmp/\nappid: 1300000000\nsecret_id: AKIDtest\nsecret_key: sk-test\nregion: ap-guangzhou\nvoice: 101001\n";
        let cfg: Config = serde_yaml_ng::from_str(yaml).expect("the Python entry parses");
        assert_eq!((cfg.voice.as_str(), cfg.appid.as_str()), ("101001", "1300000000"));
        let debug = format!("{cfg:?} {}", cfg.summary());
        assert!(!debug.contains("sk-test") && !debug.contains("AKIDtest"), "{debug}");
        let empty: Config =
            serde_yaml_ng::from_str("appid: \"\"\nsecret_id: \"\"\nsecret_key: \"\"\nvoice: \"\"\n").expect("parses");
        assert!(build(&empty).is_ok(), "empty keys build");
        let private: Config = serde_yaml_ng::from_str("voice: 101001\nprivate_voice: \"200000001\"").expect("parses");
        assert_eq!(TencentTts::new(private).expect("builds").voice_type, Some(200_000_001));
        for (key, value) in [("format", "opus"), ("voice", "xiaoyun"), ("api_url", "ftp://x"), ("sample_rate", "0")] {
            let cfg: Config = serde_yaml_ng::from_str(&format!("{key}: {value}")).expect("parses");
            assert!(matches!(TencentTts::new(cfg), Err(ProviderError::Config(_))), "{key}: {value}");
        }
    }

    /// The unknown keys of `entry` of the Python server's v0.9.6 `config.yaml` (with the optional
    /// keys its comments offer written out).
    fn python_unknown_keys(extra: &str) -> Vec<String> {
        const PYTHON: &str = include_str!("../../../tests/assets/python-v0.9.6-config.yaml");
        let file: serde_yaml_ng::Value = serde_yaml_ng::from_str(PYTHON).expect("yaml");
        let mut entry = file["TTS"]["TencentTTS"].clone();
        let extra: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(extra).expect("yaml");
        let map = entry.as_mapping_mut().expect("an entry");
        map.remove("type");
        map.extend(extra);
        let mut unknown = Vec::new();
        let _: Config = serde_ignored::deserialize(entry, |path| unknown.push(path.to_string())).expect("parses");
        unknown
    }

    #[test]
    fn every_key_of_the_python_entry_is_known() {
        assert!(python_unknown_keys("{}").is_empty());
        let optional = "{language: 中文, format: wav, volume: 0, speech_rate: 0, private_voice: \"\"}";
        assert_eq!(python_unknown_keys(optional), Vec::<String>::new());
        assert_eq!(python_unknown_keys("{bogus: 1}"), ["bogus"], "the check can fail");
        assert_eq!(primary_language("英语"), Some(2));
        assert_eq!(primary_language("韩语"), None);
    }

    #[test]
    fn long_text_is_cut_at_punctuation() {
        assert_eq!(pieces("  你好。 ", 150), ["你好。"]);
        assert!(pieces(" ", 150).is_empty());
        let long = format!("{}，{}。", "一".repeat(100), "二".repeat(100));
        let cut = pieces(&long, 150);
        assert_eq!(cut, [format!("{}，", "一".repeat(100)), format!("{}。", "二".repeat(100))]);
        let words = "word ".repeat(40);
        assert!(pieces(&words, 150).iter().all(|p| p.chars().count() <= 150 && !p.ends_with("wor")));
        assert_eq!(pieces(&"x".repeat(301), 150).len(), 3);
    }

    #[tokio::test]
    async fn sends_a_signed_text_to_voice_and_streams_each_piece() {
        let samples: Vec<i16> = (0..3_200).map(|i| ((i * 37) % 4_000) as i16 - 2_000).collect();
        let wav = wav_bytes(&samples, 16_000);
        let (base, mut requests) =
            serve(vec![full(200, "application/json", &answer(&wav)), full(200, "application/json", &answer(&wav))])
                .await;
        let tts = TencentTts::new(config(&base)).expect("builds");
        let long = format!("{}，{}。", "一".repeat(100), "二".repeat(100));
        let clip = tts.synthesize(&long).await.expect("audio");
        assert_eq!(clip.sample_rate, 16_000);
        assert_eq!(clip.samples.len(), 2 * samples.len());

        let request = requests.recv().await.expect("request");
        assert_eq!(request.header("x-tc-action").as_deref(), Some("TextToVoice"));
        assert_eq!(request.header("x-tc-version").as_deref(), Some("2019-08-23"));
        assert_eq!(request.header("x-tc-region").as_deref(), Some("ap-guangzhou"));
        let host = base.trim_start_matches("http://").to_owned();
        let timestamp: i64 = request.header("x-tc-timestamp").expect("timestamp").parse().expect("number");
        let expected = authorization(
            "AKIDtest",
            "sk-test",
            "tts",
            timestamp,
            &[("content-type", CONTENT_TYPE), ("host", &host), ("x-tc-action", "TextToVoice")],
            &request.body,
        );
        assert_eq!(request.header("authorization"), Some(expected));
        let body = request.json();
        assert_eq!(body["Text"], format!("{}，", "一".repeat(100)));
        assert_eq!(body["VoiceType"], 101001);
        assert_eq!(body["Codec"], "wav");
        assert_eq!(body["SampleRate"], 16000);
        assert!(body["SessionId"].as_str().is_some_and(|s| s.len() == 36));
        assert_eq!(requests.recv().await.expect("second piece").json()["Text"], format!("{}。", "二".repeat(100)));
    }

    #[tokio::test]
    async fn pcm_errors_and_missing_keys() {
        let samples: Vec<i16> = (0..800).map(|i| (i % 100) as i16 * 30).collect();
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let error = br#"{"Response":{"Error":{"Code":"InvalidParameterValue.VoiceType","Message":"VoiceType is invalid"},"RequestId":"r"}}"#;
        let (base, _requests) = serve(vec![
            full(200, "application/json", &answer(&pcm)),
            full(200, "application/json", error),
            full(200, "application/json", &answer(b"")),
            full(502, "text/plain", b"bad gateway"),
        ])
        .await;
        let mut cfg = config(&base);
        cfg.format = "pcm".into();
        cfg.sample_rate = 8_000;
        let tts = TencentTts::new(cfg.clone()).expect("builds");
        let clip = tts.synthesize("hello").await.expect("audio");
        assert_eq!((clip.samples, clip.sample_rate), (samples, 8_000));
        match tts.speak("hello").await {
            Err(ProviderError::Protocol { message, .. }) => {
                assert!(message.contains("InvalidParameterValue.VoiceType") && message.contains("VoiceType is invalid"))
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("an error answer is an error"),
        }
        assert!(matches!(tts.speak("hello").await.err(), Some(ProviderError::Protocol { .. })));
        assert!(matches!(tts.speak("hello").await.err(), Some(ProviderError::Status { status: 502, .. })));
        assert!(tts.synthesize("   ").await.expect("blank").samples.is_empty());
        cfg.secret_id = String::new();
        let tts = TencentTts::new(cfg).expect("builds without keys");
        match tts.speak("hello").await.err() {
            Some(ProviderError::Config(message)) => assert!(message.contains("secret_id is not set"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
