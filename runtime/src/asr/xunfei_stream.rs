//! `type: xunfei_stream`: iFlytek (Xunfei, 讯飞开放平台) streaming dictation with the large
//! model (大模型识别, the interface the Python provider uses: `wss://iat.cn-huabei-1.xf-yun.com/v1`,
//! `domain: slm`). Documentation: "方言大模型 / 大模型中文语音识别 API 文档"
//! (<https://www.xfyun.cn/doc/spark/spark_slm_iat.html>, <https://www.xfyun.cn/doc/spark/spark_zh_iat.html>).
//!
//! One WebSocket per utterance, opened (with the signed URL of [`auth`]) when speech starts.
//! Audio goes out while the user speaks: JSON frames `{header: {app_id, status}, parameter: {iat:
//! {...}}, payload: {audio: {encoding: raw, sample_rate: 16000, status, seq, audio: base64}}}`,
//! status 0 for the first (which carries the `parameter` section), 1 for the next, and an empty
//! status 2 frame at the end of speech. The platform answers `{header: {code, message, sid,
//! status}, payload: {result: {text: base64}}}`; the decoded text is `{sn, ls, pgs, rg, ws:
//! [{cw: [{w}]}]}`: the words of result `sn`, which with dynamic correction (`dwa: wpgs`) may
//! replace the results `rg[0]..=rg[1]` (`pgs: rpl`). `header.status` 2 is the last answer;
//! `header.code` other than 0 is an error (its code, message and `sid` are kept).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use super::{ASR_SAMPLE_RATE, Asr, Recognition};
use crate::remote::xunfei::{Endpoint, Secret, lenient_int, lenient_string, require, vendor_error};
use crate::remote::{ProviderError, WsStream, timeout_from, ws_connect};

/// The large-model dictation endpoint the Python provider uses.
pub const DEFAULT_URL: &str = "wss://iat.cn-huabei-1.xf-yun.com/v1";

/// Audio per frame: 40 ms (1280 bytes), what the documentation recommends.
const FRAME_SAMPLES: usize = 640;

/// How the entry is named in errors.
const WHAT: &str = "ASR.xunfei_stream";

/// `ASR.<name>` with `type: xunfei_stream`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The dictation endpoint (the Python provider's is fixed: this one).
    pub api_url: String,
    /// The application's APPID.
    #[serde(deserialize_with = "lenient_string")]
    pub app_id: String,
    /// The APIKey (signs the URL).
    pub api_key: Secret,
    /// The APISecret (signs the URL).
    pub api_secret: Secret,
    /// `parameter.iat.domain` (`slm`: the large model).
    #[serde(deserialize_with = "lenient_string")]
    pub domain: String,
    /// `parameter.iat.language` (`zh_cn`, `mul_cn`, ...).
    #[serde(deserialize_with = "lenient_string")]
    pub language: String,
    /// `parameter.iat.accent` (`mandarin`, `mulacc`).
    #[serde(deserialize_with = "lenient_string")]
    pub accent: String,
    /// `parameter.iat.dwa`: `wpgs` turns on dynamic correction (results replace earlier ones);
    /// empty leaves it off.
    #[serde(deserialize_with = "lenient_string")]
    pub dwa: String,
    /// `parameter.iat.eos`, ms: the silence after which the platform ends the utterance by
    /// itself. Our VAD ends utterances, so the default is the longest the platform allows.
    #[serde(deserialize_with = "lenient_int")]
    pub eos: Option<i64>,
    /// Accepted for the Python entry; audio is not written to disk here.
    pub output_dir: Option<String>,
    /// Seconds allowed for the connection and for each answer.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_url: DEFAULT_URL.into(),
            app_id: String::new(),
            api_key: Secret::default(),
            api_secret: Secret::default(),
            domain: "slm".into(),
            language: "zh_cn".into(),
            accent: "mandarin".into(),
            dwa: String::new(),
            eos: None,
            output_dir: None,
            timeout: 10,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &self.api_url)
            .field("app_id", &self.app_id)
            .field("api_key", &self.api_key)
            .field("api_secret", &self.api_secret)
            .field("domain", &self.domain)
            .field("language", &self.language)
            .field("accent", &self.accent)
            .field("dwa", &self.dwa)
            .field("eos", &self.eos)
            .field("output_dir", &self.output_dir)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("{} ({}, {}, {})", self.api_url.trim(), self.domain, self.language, self.accent)
    }

    /// `parameter.iat` of the first frame.
    fn iat_parameters(&self) -> Value {
        let mut iat = json!({
            "domain": self.domain.trim(),
            "language": self.language.trim(),
            "accent": self.accent.trim(),
            "eos": self.eos.unwrap_or(60_000),
            "result": {"encoding": "utf8", "compress": "raw", "format": "json"},
        });
        if !self.dwa.trim().is_empty() {
            iat["dwa"] = json!(self.dwa.trim());
        }
        iat
    }
}

/// Builds the backend of a validated entry. Empty credentials are an error at request time.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Asr>, ProviderError> {
    Ok(Arc::new(XunfeiAsr::new(cfg.clone())?))
}

/// The iFlytek streaming dictation backend.
pub struct XunfeiAsr {
    cfg: Config,
    endpoint: Endpoint,
    timeout: Duration,
}

impl XunfeiAsr {
    /// Checks the entry's URL and timeout.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let endpoint = Endpoint::parse(&cfg.api_url, WHAT)?;
        let timeout = timeout_from(cfg.timeout, WHAT)?;
        Ok(Self { cfg, endpoint, timeout })
    }

    async fn start(&self) -> Result<XunfeiRecognition, ProviderError> {
        let app_id = require(&self.cfg.app_id, "app_id", WHAT)?.to_owned();
        let api_key = require(self.cfg.api_key.expose(), "api_key", WHAT)?;
        let api_secret = require(self.cfg.api_secret.expose(), "api_secret", WHAT)?;
        let url = self.endpoint.signed_now(api_key, api_secret);
        let ws = ws_connect(&url, &[], self.timeout, "iFlytek ASR connection").await?;
        let (sink, stream) = ws.split();
        let (done, outcome) = oneshot::channel();
        let reader = tokio::spawn(read_results(stream, self.endpoint.as_str().to_owned(), done));
        Ok(XunfeiRecognition {
            sink,
            reader: tokio_util::task::AbortOnDropHandle::new(reader),
            outcome,
            url: self.endpoint.as_str().to_owned(),
            app_id,
            parameters: self.cfg.iat_parameters(),
            timeout: self.timeout,
            pending: Vec::new(),
            seq: 0,
            ended: None,
        })
    }
}

#[async_trait]
impl Asr for XunfeiAsr {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        let mut recognition = Box::new(self.start().await?);
        recognition.push(pcm).await?;
        recognition.finish().await
    }

    async fn open(&self) -> Option<Result<Box<dyn Recognition>, ProviderError>> {
        Some(self.start().await.map(|r| Box::new(r) as Box<dyn Recognition>))
    }
}

/// One utterance on its own connection. Dropping it closes the connection.
struct XunfeiRecognition {
    sink: SplitSink<WsStream, Message>,
    /// Reads the answers; aborted (and the connection with it) when the recognition is dropped.
    reader: tokio_util::task::AbortOnDropHandle<()>,
    /// The final text, or the error, once the platform has answered its last result.
    outcome: oneshot::Receiver<Result<String, ProviderError>>,
    url: String,
    app_id: String,
    parameters: Value,
    timeout: Duration,
    /// Samples not yet sent (less than a frame).
    pending: Vec<i16>,
    /// Frames sent so far.
    seq: u64,
    /// Set when the platform ended the session before the end of speech (its own end of
    /// utterance, or an error): what it answered.
    ended: Option<Result<String, ProviderError>>,
}

impl XunfeiRecognition {
    /// Sends one audio frame (`status` 0, 1 or 2), within the timeout.
    async fn send_frame(&mut self, pcm: &[i16], status: u8) -> Result<(), ProviderError> {
        self.seq += 1;
        let frame = audio_frame(&self.app_id, &self.parameters, pcm, status, self.seq);
        let send = self.sink.send(Message::text(frame.to_string()));
        match tokio::time::timeout(self.timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ProviderError::Transport {
                url: self.url.clone(),
                message: format!("sending audio failed: {}", crate::remote::error_chain(&e)),
            }),
            Err(_) => Err(ProviderError::Timeout { what: "iFlytek ASR audio".into(), seconds: self.timeout.as_secs() }),
        }
    }

    /// Whether the platform has already ended the session (its answer is kept in `ended`).
    fn check_ended(&mut self) -> bool {
        if self.ended.is_none() {
            match self.outcome.try_recv() {
                Ok(result) => self.ended = Some(result),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.ended = Some(Err(ProviderError::Protocol {
                        url: self.url.clone(),
                        message: "the connection ended without a result".into(),
                    }));
                }
            }
        }
        self.ended.is_some()
    }
}

#[async_trait]
impl Recognition for XunfeiRecognition {
    async fn push(&mut self, pcm: &[i16]) -> Result<(), ProviderError> {
        if self.check_ended() {
            // An error is reported once, here; after the platform's own end of utterance the
            // rest of the audio has nowhere to go.
            return match self.ended.take() {
                Some(Err(e)) => {
                    self.ended = Some(Err(ProviderError::Protocol {
                        url: self.url.clone(),
                        message: "the recognition failed earlier".into(),
                    }));
                    Err(e)
                }
                other => {
                    self.ended = other;
                    Ok(())
                }
            };
        }
        self.pending.extend_from_slice(pcm);
        while self.pending.len() >= FRAME_SAMPLES {
            let frame: Vec<i16> = self.pending.drain(..FRAME_SAMPLES).collect();
            let status = if self.seq == 0 { 0 } else { 1 };
            self.send_frame(&frame, status).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<String, ProviderError> {
        if !self.check_ended() {
            let rest = std::mem::take(&mut self.pending);
            if self.seq == 0 && rest.is_empty() {
                // Nothing was said: no session to end.
                let _ = self.sink.close().await;
                return Ok(String::new());
            }
            if self.seq == 0 || !rest.is_empty() {
                let status = if self.seq == 0 { 0 } else { 1 };
                self.send_frame(&rest, status).await?;
            }
            self.send_frame(&[], 2).await?;
            let answer = match tokio::time::timeout(self.timeout, &mut self.outcome).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ProviderError::Protocol {
                    url: self.url.clone(),
                    message: "the connection ended without a result".into(),
                }),
                Err(_) => {
                    Err(ProviderError::Timeout { what: "iFlytek ASR result".into(), seconds: self.timeout.as_secs() })
                }
            };
            self.ended = Some(answer);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
        self.reader.abort();
        self.ended.take().unwrap_or_else(|| Ok(String::new())).map(|text| text.trim().to_owned())
    }
}

/// One audio frame of the dictation protocol. The first (status 0) carries the parameters.
fn audio_frame(app_id: &str, parameters: &Value, pcm: &[i16], status: u8, seq: u64) -> Value {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut frame = json!({
        "header": {"app_id": app_id, "status": status},
        "payload": {"audio": {
            "encoding": "raw",
            "sample_rate": ASR_SAMPLE_RATE,
            "channels": 1,
            "bit_depth": 16,
            "seq": seq,
            "status": status,
            "audio": BASE64.encode(bytes),
        }},
    });
    if status == 0 {
        frame["parameter"] = json!({"iat": parameters});
    }
    frame
}

/// Reads the answers until the last one (or an error) and sends the outcome.
async fn read_results(
    mut stream: SplitStream<WsStream>,
    url: String,
    done: oneshot::Sender<Result<String, ProviderError>>,
) {
    let mut transcript = Transcript::default();
    // No timeout here: results come as the platform pleases while the user speaks; the wait is
    // bounded at the end of speech, in `finish`.
    let outcome = loop {
        let message = match stream.next().await {
            None => {
                break Err(ProviderError::Protocol {
                    url: url.clone(),
                    message: "the connection closed before the last result".into(),
                });
            }
            Some(Err(e)) => {
                break Err(ProviderError::Transport {
                    url: url.clone(),
                    message: format!("reading results failed: {}", crate::remote::error_chain(&e)),
                });
            }
            Some(Ok(message)) => message,
        };
        let text = match &message {
            Message::Text(text) => text.as_str(),
            Message::Close(_) => {
                break Err(ProviderError::Protocol {
                    url: url.clone(),
                    message: "the platform closed the connection before the last result".into(),
                });
            }
            _ => continue,
        };
        match parse_answer(text, &url) {
            Err(e) => break Err(e),
            Ok(answer) => {
                if let Some(result) = answer.result {
                    transcript.apply(&result);
                }
                if answer.last {
                    break Ok(transcript.text());
                }
            }
        }
    };
    let _ = done.send(outcome);
}

/// One answer of the platform.
#[derive(Debug, Default, PartialEq)]
struct Answer {
    /// The decoded result (`payload.result.text`), when the answer carries one.
    result: Option<Value>,
    /// `header.status` 2: the last answer.
    last: bool,
}

/// Parses one answer: an error frame becomes the error.
fn parse_answer(text: &str, url: &str) -> Result<Answer, ProviderError> {
    let protocol = |message: String| ProviderError::Protocol { url: url.to_owned(), message };
    let value: Value =
        serde_json::from_str(text).map_err(|e| protocol(format!("an answer is not JSON ({e}): {}", snippet(text))))?;
    let header = value.get("header").cloned().unwrap_or(Value::Null);
    if header.get("code").and_then(Value::as_i64).unwrap_or(0) != 0 {
        return Err(vendor_error(url, &header));
    }
    let mut answer = Answer { result: None, last: header.get("status").and_then(Value::as_i64) == Some(2) };
    if let Some(encoded) = value.pointer("/payload/result/text").and_then(Value::as_str)
        && !encoded.is_empty()
    {
        let bytes = BASE64.decode(encoded).map_err(|e| protocol(format!("a result is not base64: {e}")))?;
        let result: Value = serde_json::from_slice(&bytes).map_err(|e| {
            protocol(format!("a result is not JSON ({e}): {}", snippet(&String::from_utf8_lossy(&bytes))))
        })?;
        answer.result = Some(result);
    }
    Ok(answer)
}

/// The start of a text, for messages.
fn snippet(text: &str) -> String {
    text.chars().take(200).collect()
}

/// The results so far, by their `sn`.
#[derive(Debug, Default)]
struct Transcript {
    results: BTreeMap<i64, String>,
}

impl Transcript {
    /// Adds one decoded result: its words (the first candidate of each slot) under its `sn`;
    /// with `pgs: rpl` it first removes the results `rg[0]..=rg[1]` it replaces.
    fn apply(&mut self, result: &Value) {
        let sn = result.get("sn").and_then(Value::as_i64).unwrap_or_else(|| self.next_sn());
        if result.get("pgs").and_then(Value::as_str) == Some("rpl")
            && let Some([first, last]) = result.get("rg").and_then(Value::as_array).map(Vec::as_slice)
            && let (Some(first), Some(last)) = (first.as_i64(), last.as_i64())
        {
            self.results.retain(|n, _| *n < first || *n > last);
        }
        let words: String = result
            .get("ws")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|slot| slot.pointer("/cw/0/w").and_then(Value::as_str))
            .collect();
        self.results.insert(sn, words);
    }

    fn next_sn(&self) -> i64 {
        self.results.keys().next_back().map_or(1, |n| n + 1)
    }

    /// The whole text.
    fn text(&self) -> String {
        self.results.values().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_json(sn: i64, words: &[&str], extra: Value) -> Value {
        let mut result = json!({
            "sn": sn, "ls": false, "bg": 0, "ed": 0,
            "ws": words.iter().map(|w| json!({"bg": 0, "cw": [{"sc": 0, "w": w}]})).collect::<Vec<_>>(),
        });
        if let (Some(target), Some(extra)) = (result.as_object_mut(), extra.as_object()) {
            target.extend(extra.clone());
        }
        result
    }

    fn answer_text(status: i64, result: Option<&Value>) -> String {
        let mut answer =
            json!({"header": {"code": 0, "message": "success", "sid": "iat000e0044@dx1", "status": status}});
        if let Some(result) = result {
            answer["payload"] = json!({"result": {
                "compress": "raw", "encoding": "utf8", "format": "json", "seq": 1, "status": status,
                "text": BASE64.encode(result.to_string()),
            }});
        }
        answer.to_string()
    }

    #[test]
    fn the_first_frame_carries_the_parameters_and_the_audio() {
        let cfg = Config { app_id: "123456".into(), dwa: "wpgs".into(), ..Config::default() };
        let frame = audio_frame("123456", &cfg.iat_parameters(), &[1, -2], 0, 1);
        assert_eq!(
            frame,
            json!({
                "header": {"app_id": "123456", "status": 0},
                "parameter": {"iat": {
                    "domain": "slm", "language": "zh_cn", "accent": "mandarin", "eos": 60000, "dwa": "wpgs",
                    "result": {"encoding": "utf8", "compress": "raw", "format": "json"},
                }},
                "payload": {"audio": {
                    "encoding": "raw", "sample_rate": 16000, "channels": 1, "bit_depth": 16,
                    "seq": 1, "status": 0, "audio": BASE64.encode([1u8, 0, 0xfe, 0xff]),
                }},
            })
        );
        let last = audio_frame("123456", &cfg.iat_parameters(), &[], 2, 9);
        assert!(last.get("parameter").is_none(), "only the first frame has parameters");
        assert_eq!(last["header"]["status"], 2);
        assert_eq!(last["payload"]["audio"]["audio"], "");
        assert!(Config::default().iat_parameters().get("dwa").is_none(), "no dynamic correction unless asked");
    }

    #[test]
    fn results_are_joined_by_sn() {
        let mut transcript = Transcript::default();
        for text in [
            answer_text(0, None),
            answer_text(1, Some(&result_json(1, &["今天", "天气"], json!({})))),
            answer_text(2, Some(&result_json(2, &["怎么样", "？"], json!({"ls": true})))),
        ] {
            let answer = parse_answer(&text, "wss://x/v1").expect("parses");
            if let Some(result) = answer.result {
                transcript.apply(&result);
            }
        }
        assert_eq!(transcript.text(), "今天天气怎么样？");
        let last = parse_answer(&answer_text(2, None), "wss://x/v1").expect("parses");
        assert!(last.last);
        assert!(!parse_answer(&answer_text(1, None), "wss://x/v1").expect("parses").last);
    }

    #[test]
    fn dynamic_correction_replaces_earlier_results() {
        let mut transcript = Transcript::default();
        transcript.apply(&result_json(1, &["今天"], json!({"pgs": "apd"})));
        transcript.apply(&result_json(2, &["天汽"], json!({"pgs": "apd"})));
        assert_eq!(transcript.text(), "今天天汽");
        // Result 3 replaces 1..=2.
        transcript.apply(&result_json(3, &["今天", "天气", "怎么样"], json!({"pgs": "rpl", "rg": [1, 2]})));
        assert_eq!(transcript.text(), "今天天气怎么样");
        transcript.apply(&result_json(4, &["？"], json!({"pgs": "apd"})));
        assert_eq!(transcript.text(), "今天天气怎么样？");
    }

    #[test]
    fn an_error_frame_becomes_an_error_with_code_message_and_sid() {
        let frame =
            json!({"header": {"code": 10163, "message": "param validate error", "sid": "iat000e@dx9", "status": 2}});
        let err = parse_answer(&frame.to_string(), "wss://iat.xf-yun.com/v1?authorization=secret").expect_err("error");
        let text = err.to_string();
        assert!(
            text.contains("10163") && text.contains("param validate error") && text.contains("iat000e@dx9"),
            "{text}"
        );
        assert!(!text.contains("secret"), "no signed query in errors: {text}");
        assert!(parse_answer("not json", "wss://x").is_err());
    }

    #[test]
    fn keys_of_the_python_entry_are_read() {
        let yaml = "app_id: 12345678\napi_key: k\napi_secret: s\ndomain: slm\nlanguage: zh_cn\naccent: mandarin\ndwa: wpgs\noutput_dir: tmp/\n";
        let cfg: Config = serde_yaml_ng::from_str(yaml).expect("parses");
        assert_eq!(cfg.app_id, "12345678");
        assert_eq!(cfg.dwa, "wpgs");
        assert_eq!(cfg.api_url, DEFAULT_URL);
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("\"k\"") && !debug.contains("\"s\""), "{debug}");
    }

    #[tokio::test]
    async fn missing_credentials_are_an_error_at_request_time() {
        let asr = XunfeiAsr::new(Config::default()).expect("builds without credentials");
        let err = asr.transcribe(&[0; 1600]).await.expect_err("no credentials");
        assert!(err.to_string().contains("app_id is not set"), "{err}");
        let asr = XunfeiAsr::new(Config { app_id: "a".into(), ..Config::default() }).expect("builds");
        let err = asr.transcribe(&[0; 1600]).await.expect_err("no key");
        assert!(err.to_string().contains("api_key is not set"), "{err}");
        assert!(XunfeiAsr::new(Config { api_url: "http://x".into(), ..Config::default() }).is_err());
    }
}
