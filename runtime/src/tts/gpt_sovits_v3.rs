//! `type: gpt_sovits_v3`: a GPT-SoVITS `api.py` server (the API the v3 models are served with:
//! `python api.py -dr ref.wav -dt "…" -dl zh`).
//!
//! The API documented at the top of GPT-SoVITS's `api.py`: `GET /` with query parameters
//! `refer_wav_path`, `prompt_text`, `prompt_language`, `text`, `text_language`, `cut_punc`, `top_k`,
//! `top_p`, `temperature`, `speed`, `inp_refs` (repeated), `sample_steps`, `if_sr`, as the Python
//! provider sends them (numbers and booleans written the way Python's `requests` writes them:
//! `1.0`, `True`). Success is the audio (HTTP 200, a WAV; a server started with `-sm normal`
//! streams it), read as it arrives. Failure is HTTP 400 with a JSON body `{"code": 400,
//! "message": …}`, kept in [`ProviderError::Status`]. The HTTP side is shared with
//! `gpt_sovits_v2` ([`super::gpt_sovits_v2::Endpoint`]).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::AudioStream;
use super::gpt_sovits_v2::Endpoint;
use crate::audio::decode::AudioFormat;
use crate::remote::ProviderError;
use crate::remote::pyconf::{self, py_float};

/// `TTS.<name>` with `type: gpt_sovits_v3`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The server's URL (its synthesis endpoint is `/`).
    pub url: String,
    /// Where the Python server saved audio files (unused: audio streams to the device).
    pub output_dir: Option<String>,
    /// Language of the text (`auto`, `zh`, `en`, …).
    pub text_language: String,
    /// The reference audio, a path on the GPT-SoVITS server (empty: the server's `-dr` default).
    pub refer_wav_path: String,
    /// Language of `prompt_text`.
    pub prompt_language: String,
    /// Transcript of the reference audio.
    #[serde(deserialize_with = "pyconf::text")]
    pub prompt_text: String,
    /// Sampling: top k (default 15).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub top_k: Option<i64>,
    /// Sampling: top p (default 1.0).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub top_p: Option<f64>,
    /// Sampling temperature (default 1.0).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub temperature: Option<f64>,
    /// Punctuation the server cuts the text at.
    #[serde(deserialize_with = "pyconf::text")]
    pub cut_punc: String,
    /// Speed of the speech (default 1.0).
    #[serde(deserialize_with = "pyconf::opt_f64")]
    pub speed: Option<f64>,
    /// More reference audio paths (a list, or `a.wav;b.wav`).
    #[serde(deserialize_with = "pyconf::str_list")]
    pub inp_refs: Vec<String>,
    /// Sampling steps of the v3 model (default 32).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub sample_steps: Option<i64>,
    /// Super-resolution of the v3 output (48 kHz).
    #[serde(deserialize_with = "pyconf::flag")]
    pub if_sr: bool,
    /// A voice of the Python server's `data/gpt_sovits_data.yaml` (not read here: set the
    /// reference keys of this entry instead).
    #[serde(deserialize_with = "pyconf::text")]
    pub private_voice: String,
    /// The Python server's saved-file extension (unused: the answer's content decides).
    pub format: String,
    /// Seconds to wait for the answer and for each pause inside it.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9880".into(),
            output_dir: None,
            text_language: "auto".into(),
            refer_wav_path: String::new(),
            prompt_language: "zh".into(),
            prompt_text: String::new(),
            top_k: None,
            top_p: None,
            temperature: None,
            cut_punc: String::new(),
            speed: None,
            inp_refs: Vec::new(),
            sample_steps: None,
            if_sr: false,
            private_voice: String::new(),
            format: "wav".into(),
            timeout: 60,
        }
    }
}

impl Config {
    /// One line for `check-config`.
    pub fn summary(&self) -> String {
        format!("{} reference {}", self.url, self.refer_wav_path)
    }

    /// The query parameters of one request, in the Python provider's order.
    pub fn query(&self, text: &str) -> Vec<(&'static str, String)> {
        let python_bool = |b: bool| if b { "True" } else { "False" }.to_owned();
        let mut query = vec![
            ("refer_wav_path", self.refer_wav_path.clone()),
            ("prompt_text", self.prompt_text.clone()),
            ("prompt_language", self.prompt_language.clone()),
            ("text", text.to_owned()),
            ("text_language", self.text_language.clone()),
            ("top_k", self.top_k.unwrap_or(15).to_string()),
            ("top_p", py_float(self.top_p.unwrap_or(1.0))),
            ("temperature", py_float(self.temperature.unwrap_or(1.0))),
            ("cut_punc", self.cut_punc.clone()),
            ("speed", py_float(self.speed.unwrap_or(1.0))),
        ];
        query.extend(self.inp_refs.iter().map(|path| ("inp_refs", path.clone())));
        query.push(("sample_steps", self.sample_steps.unwrap_or(32).to_string()));
        query.push(("if_sr", python_bool(self.if_sr)));
        query
    }
}

/// A GPT-SoVITS `api.py` server.
pub struct GptSovitsV3 {
    endpoint: Endpoint,
    cfg: Config,
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(GptSovitsV3::new(cfg.clone())?))
}

impl GptSovitsV3 {
    /// Validates the entry (URL, timeout).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        if !cfg.private_voice.trim().is_empty() {
            tracing::warn!(
                "TTS.gpt_sovits_v3: private_voice `{}` is not looked up here (data/gpt_sovits_data.yaml); the entry's refer_wav_path, prompt_text and prompt_language are used",
                cfg.private_voice
            );
        }
        let endpoint = Endpoint::new(&cfg.url, AudioFormat::Wav, cfg.timeout, "TTS.gpt_sovits_v3")?;
        Ok(Self { endpoint, cfg })
    }
}

#[async_trait]
impl super::Tts for GptSovitsV3 {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let query = self.cfg.query(text.trim());
        self.endpoint.speak(text, |client, url| client.get(url).query(&query)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_python_entry_is_known() {
        let cfg: Config = crate::remote::pyconf::python_entry("TTS", "GPT_SOVITS_V3");
        assert_eq!(cfg.refer_wav_path, "caixukun.wav");
    }
    use crate::audio::decode::wav_bytes;
    use crate::remote::test_server::{full, serve};
    use crate::tts::Tts;

    /// The Python server's `GPT_SOVITS_V3` entry.
    const PYTHON_ENTRY: &str = "url: \"http://127.0.0.1:9880\"\noutput_dir: tmp/\ntext_language: \"auto\"\n\
        refer_wav_path: \"caixukun.wav\"\nprompt_language: \"zh\"\nprompt_text: \"\"\ntop_k: 15\ntop_p: 1.0\n\
        temperature: 1.0\ncut_punc: \"\"\nspeed: 1.0\ninp_refs: []\nsample_steps: 32\nif_sr: false\n";

    #[tokio::test]
    async fn sends_the_python_providers_query_and_reads_the_wav() {
        let samples: Vec<i16> = (0..2_400).map(|i| (i % 300) as i16 * 20).collect();
        let (base, mut requests) = serve(vec![
            full(200, "audio/wav", &wav_bytes(&samples, 24_000)),
            full(400, "application/json", "{\"code\": 400, \"message\": \"未指定参考音频且接口无预设\"}".as_bytes()),
        ])
        .await;
        let mut cfg: Config = serde_yaml_ng::from_str(PYTHON_ENTRY).expect("parses");
        cfg.url = base.clone();
        cfg.inp_refs = vec!["456.wav".into(), "789.wav".into()];
        let tts = GptSovitsV3::new(cfg).expect("valid");
        let clip = tts.synthesize("你好，世界").await.expect("audio");
        assert_eq!((clip.samples, clip.sample_rate), (samples, 24_000));
        let request = requests.recv().await.expect("request");
        assert_eq!(request.method(), "GET");
        // What Python's requests.get(url, params=…) sends for the same entry, computed with:
        // python3 -c 'import requests; print(requests.Request("GET", "http://h/", params={"refer_wav_path": "caixukun.wav",
        //   "prompt_text": "", "prompt_language": "zh", "text": "你好，世界", "text_language": "auto", "top_k": 15,
        //   "top_p": 1.0, "temperature": 1.0, "cut_punc": "", "speed": 1.0, "inp_refs": ["456.wav", "789.wav"],
        //   "sample_steps": 32, "if_sr": False}).prepare().url)'
        // (requests writes spaces as `+`; reqwest as `%20`/`+` alike: both decode the same.)
        let expected = "/?refer_wav_path=caixukun.wav&prompt_text=&prompt_language=zh\
            &text=%E4%BD%A0%E5%A5%BD%EF%BC%8C%E4%B8%96%E7%95%8C&text_language=auto&top_k=15&top_p=1.0\
            &temperature=1.0&cut_punc=&speed=1.0&inp_refs=456.wav&inp_refs=789.wav&sample_steps=32&if_sr=False";
        assert_eq!(request.target(), expected);
        match tts.synthesize("a").await {
            Err(ProviderError::Status { status: 400, body, .. }) => assert!(body.contains("未指定参考音频"), "{body}"),
            other => panic!("{other:?}"),
        }
        // Blank text: no request.
        assert!(tts.synthesize(" ").await.expect("empty").samples.is_empty());
    }

    #[test]
    fn values_as_python_writes_them() {
        let cfg: Config = serde_yaml_ng::from_str(
            "top_p: \"0.6\"\nspeed: 1\nif_sr: \"true\"\ninp_refs: \"a.wav;b.wav\"\nsample_steps: \"8\"",
        )
        .expect("parses");
        let query = cfg.query("t");
        let get = |key: &str| query.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()).unwrap_or_default();
        assert_eq!(
            (get("top_p"), get("speed"), get("if_sr"), get("sample_steps")),
            ("0.6".into(), "1.0".into(), "True".into(), "8".into())
        );
        assert_eq!(query.iter().filter(|(k, _)| *k == "inp_refs").count(), 2);
        assert!(matches!(
            GptSovitsV3::new(Config { url: String::new(), ..Config::default() }),
            Err(ProviderError::Config(_))
        ));
    }
}
