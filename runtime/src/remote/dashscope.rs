//! What the Aliyun Bailian (DashScope) providers share: the WebSocket task protocol of its speech
//! models (CosyVoice synthesis, Paraformer real-time recognition), its bearer-key authentication,
//! and the lenient reading of the Python server's setting values.
//!
//! The protocol ("CosyVoice WebSocket API" / "Paraformer real-time speech recognition WebSocket
//! API", Alibaba Cloud Model Studio documentation): one WebSocket to
//! `wss://dashscope.aliyuncs.com/api-ws/v1/inference` opened with `Authorization: Bearer <API key>`;
//! the client sends JSON text frames `{"header": {"action": "run-task" | "continue-task" |
//! "finish-task", "task_id", "streaming": "duplex"}, "payload": {…}}`; the server answers JSON
//! events `{"header": {"task_id", "event": "task-started" | "result-generated" | "task-finished"
//! | "task-failed", "error_code", "error_message"}, "payload": {…}}` and, for synthesis, the audio
//! as binary frames. A client may send nothing but `run-task` until `task-started`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{ProviderError, WsStream, url_without_query, ws_connect};

/// The DashScope speech WebSocket (Beijing region).
pub(crate) const DEFAULT_WS_URL: &str = "wss://dashscope.aliyuncs.com/api-ws/v1/inference";

/// The longest JSON event accepted (events are a few hundred bytes; binary audio frames are
/// bounded by [`super::MAX_WS_MESSAGE_BYTES`]).
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// The handshake headers: the API key as a bearer token (and, for synthesis, the data
/// inspection header the Python server sends).
pub(crate) fn ws_headers(api_key: &str, data_inspection: bool) -> Vec<(&'static str, String)> {
    let mut headers = vec![("Authorization", format!("Bearer {}", api_key.trim()))];
    if data_inspection {
        headers.push(("X-DashScope-DataInspection", "enable".to_owned()));
    }
    headers
}

/// A new task id: 32 lower-case hex digits (a UUID without dashes, as the documentation's
/// examples use).
pub(crate) fn new_task_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `run-task` command: `task` is `tts` or `asr`, `function` `SpeechSynthesizer` or
/// `recognition`.
pub(crate) fn run_task(task_id: &str, task: &str, function: &str, model: &str, parameters: Value) -> String {
    json!({
        "header": {"action": "run-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {
            "task_group": "audio",
            "task": task,
            "function": function,
            "model": model,
            "parameters": parameters,
            "input": {},
        },
    })
    .to_string()
}

/// The `continue-task` command carrying text to synthesize.
pub(crate) fn continue_task(task_id: &str, text: &str) -> String {
    json!({
        "header": {"action": "continue-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {"input": {"text": text}},
    })
    .to_string()
}

/// The `finish-task` command: no more input; the server finishes and answers `task-finished`.
pub(crate) fn finish_task(task_id: &str) -> String {
    json!({
        "header": {"action": "finish-task", "task_id": task_id, "streaming": "duplex"},
        "payload": {"input": {}},
    })
    .to_string()
}

/// One server event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// The task runs: input may be sent.
    TaskStarted,
    /// A result; its `payload`.
    ResultGenerated(Value),
    /// The task is over (after `finish-task`).
    TaskFinished,
    /// The task failed: the vendor's `error_code` and `error_message`.
    TaskFailed {
        /// `header.error_code`.
        code: String,
        /// `header.error_message`.
        message: String,
    },
    /// An event this client does not use.
    Other(String),
}

/// Parses one JSON text frame of the server.
pub(crate) fn parse_event(text: &str) -> Result<Event, String> {
    if text.len() > MAX_EVENT_BYTES {
        return Err(format!("an event of {} bytes", text.len()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("an event that is not JSON ({e})"))?;
    let header = value.get("header").ok_or_else(|| "an event without a header".to_owned())?;
    let name = header.get("event").and_then(Value::as_str).unwrap_or_default();
    let field = |key: &str| match header.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    Ok(match name {
        "task-started" => Event::TaskStarted,
        "result-generated" => Event::ResultGenerated(value.get("payload").cloned().unwrap_or(Value::Null)),
        "task-finished" => Event::TaskFinished,
        "task-failed" => Event::TaskFailed { code: field("error_code"), message: field("error_message") },
        "" => return Err("an event without a name".to_owned()),
        other => Event::Other(other.chars().take(64).collect()),
    })
}

/// The error of a `task-failed` event: the vendor's code and message.
pub(crate) fn task_failed(url: &str, code: &str, message: &str) -> ProviderError {
    let code = if code.is_empty() { "unknown" } else { code };
    ProviderError::Protocol {
        url: url_without_query(url),
        message: format!("task failed: {code}: {}", message.chars().take(300).collect::<String>()),
    }
}

/// A task's WebSocket: opened, `run-task` sent and `task-started` received.
pub(crate) struct Task {
    /// The connection.
    pub(crate) ws: WsStream,
    /// The task id every command carries.
    pub(crate) task_id: String,
    /// The URL (for errors).
    pub(crate) url: String,
}

/// Opens the WebSocket at `url` with the bearer key and starts a task (`run_task` built by
/// [`run_task`] with `task_id`), all within `timeout`. A `task-failed` answer becomes the vendor's
/// error; `what` names the call in timeouts.
pub(crate) async fn start_task(
    url: &str,
    headers: &[(&str, String)],
    task_id: String,
    run_task: String,
    timeout: Duration,
    what: &str,
) -> Result<Task, ProviderError> {
    let started = std::time::Instant::now();
    let ws = ws_connect(url, headers, timeout, what).await?;
    let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
    begin_task(ws, url, task_id, run_task, left, what).await.map_err(|(e, _)| e)
}

/// Starts a task on an open connection (a new one, or one whose previous task finished): sends
/// `run_task` and waits, within `timeout`, for `task-started`. On failure the error, and whether
/// the connection itself was broken (closed, not a vendor refusal).
pub(crate) async fn begin_task(
    mut ws: WsStream,
    url: &str,
    task_id: String,
    run_task: String,
    timeout: Duration,
    what: &str,
) -> Result<Task, (ProviderError, bool)> {
    let start = async {
        ws.send(Message::text(run_task)).await.map_err(|e| (transport(url, &e), true))?;
        loop {
            match ws.next().await {
                None => return Err((closed(url, "before task-started"), true)),
                Some(Err(e)) => return Err((transport(url, &e), true)),
                Some(Ok(Message::Text(text))) => match parse_event(&text) {
                    Ok(Event::TaskStarted) => break,
                    Ok(Event::TaskFailed { code, message }) => return Err((task_failed(url, &code, &message), false)),
                    Ok(Event::Other(_)) => {}
                    Ok(other) => {
                        return Err((protocol(url, format!("expected task-started, got {other:?}")), false));
                    }
                    Err(e) => return Err((protocol(url, e), false)),
                },
                Some(Ok(Message::Close(frame))) => {
                    return Err((closed(url, &frame.map(|f| f.reason.to_string()).unwrap_or_default()), true));
                }
                Some(Ok(_)) => {}
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, start).await {
        Ok(Ok(())) => Ok(Task { ws, task_id, url: url.to_owned() }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err((ProviderError::Timeout { what: what.to_owned(), seconds: timeout.as_secs().max(1) }, false)),
    }
}

/// Idle connections whose last task finished, for the next tasks (the documentation lets a
/// connection run tasks one after another; the Python server reuses one for 60 s).
#[derive(Default)]
pub(crate) struct Idle(std::sync::Mutex<Vec<(WsStream, std::time::Instant)>>);

/// How long an idle connection is kept for reuse.
pub(crate) const IDLE_REUSE: Duration = Duration::from_secs(50);

/// Most idle connections kept.
const MAX_IDLE: usize = 2;

impl Idle {
    /// A connection that finished a task recently, if there is one.
    pub(crate) fn take(&self) -> Option<WsStream> {
        let mut idle = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|(_, since)| since.elapsed() < IDLE_REUSE);
        idle.pop().map(|(ws, _)| ws)
    }

    /// Keeps a connection whose task finished.
    pub(crate) fn put(&self, ws: WsStream) {
        let mut idle = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|(_, since)| since.elapsed() < IDLE_REUSE);
        if idle.len() < MAX_IDLE {
            idle.push((ws, std::time::Instant::now()));
        }
    }
}

/// A broken connection.
pub(crate) fn transport(url: &str, err: &dyn std::error::Error) -> ProviderError {
    ProviderError::Transport { url: url_without_query(url), message: super::error_chain(err) }
}

/// An answer that breaks the protocol.
pub(crate) fn protocol(url: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::Protocol { url: url_without_query(url), message: message.into() }
}

/// The server closed the connection too early.
pub(crate) fn closed(url: &str, when: &str) -> ProviderError {
    let when = if when.is_empty() { "before the task finished" } else { when };
    protocol(url, format!("the connection closed {when}"))
}

/// Checks a configured WebSocket URL (`ws://` or `wss://`).
pub(crate) fn check_ws_url(url: &str, what: &str) -> Result<(), ProviderError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "ws" | "wss") => Ok(()),
        Ok(_) => Err(ProviderError::Config(format!("{what} URL `{url}` is not ws or wss"))),
        Err(e) => Err(ProviderError::Config(format!("{what} URL `{url}` is invalid: {e}"))),
    }
}

/// The key, or the request-time error naming it.
pub(crate) fn require_key(key: &str, what: &str) -> Result<String, ProviderError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(ProviderError::Config(format!("{what}: api_key is not set")));
    }
    Ok(key.to_owned())
}

/// A secret for `Debug`: whether it is set, never its value.
pub(crate) fn redacted(secret: &str) -> &'static str {
    if secret.trim().is_empty() { "(unset)" } else { "(set)" }
}

/// Setting values as the Python server's file writes them: numbers may be written as strings
/// (`sample_rate: "24000"`), and an empty value means the default.
pub(crate) mod lenient {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
        Text(String),
        Bool(bool),
    }

    fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
        let raw: Option<Raw> = Option::deserialize(deserializer)?;
        match raw {
            None => Ok(None),
            Some(Raw::Int(n)) => Ok(Some(n as f64)),
            Some(Raw::Float(f)) => Ok(Some(f)),
            Some(Raw::Text(t)) if t.trim().is_empty() => Ok(None),
            Some(Raw::Text(t)) => t
                .trim()
                .parse::<f64>()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("`{t}` is not a number"))),
            Some(Raw::Bool(b)) => Err(serde::de::Error::custom(format!("`{b}` is not a number"))),
        }
    }

    /// An optional whole number (`None` when absent or empty).
    pub(crate) fn opt_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
        match read(deserializer)? {
            None => Ok(None),
            Some(n) if n >= 0.0 && n <= f64::from(u32::MAX) && n.fract() == 0.0 => Ok(Some(n as u32)),
            Some(n) => Err(serde::de::Error::custom(format!("`{n}` is not a whole number"))),
        }
    }

    /// An optional text: a string, or a number written without quotes (`app_id: 123`); `false`,
    /// null and empty are `None`.
    pub(crate) fn opt_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
        let raw: Option<Raw> = Option::deserialize(deserializer)?;
        Ok(match raw {
            None | Some(Raw::Bool(false)) => None,
            Some(Raw::Bool(true)) => Some("true".to_owned()),
            Some(Raw::Int(n)) => Some(n.to_string()),
            Some(Raw::Float(f)) => Some(f.to_string()),
            Some(Raw::Text(t)) => Some(t.trim().to_owned()).filter(|t| !t.is_empty()),
        })
    }

    /// [`opt_text`] boxed (entries with many optional texts stay small).
    pub(crate) fn opt_boxed<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Box<str>>, D::Error> {
        Ok(opt_text(deserializer)?.map(String::into_boxed_str))
    }

    /// An optional number as `f32` (`None` when absent or empty).
    pub(crate) fn opt_f32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f32>, D::Error> {
        Ok(read(deserializer)?.map(|n| n as f32))
    }

    /// A text that may be written as a number (`app_id: 123`); null is empty.
    pub(crate) fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        Ok(opt_text(deserializer)?.unwrap_or_default())
    }

    /// A flag that may be written as a string (`"true"`, `"false"`); null is `None`.
    pub(crate) fn opt_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
        let raw: Option<Raw> = Option::deserialize(deserializer)?;
        match raw {
            None => Ok(None),
            Some(Raw::Bool(b)) => Ok(Some(b)),
            Some(Raw::Int(n)) => Ok(Some(n != 0)),
            Some(Raw::Text(t)) => match t.trim().to_ascii_lowercase().as_str() {
                "" => Ok(None),
                "true" | "yes" | "1" => Ok(Some(true)),
                "false" | "no" | "0" => Ok(Some(false)),
                _ => Err(serde::de::Error::custom(format!("`{t}` is not true or false"))),
            },
            Some(Raw::Float(f)) => Err(serde::de::Error::custom(format!("`{f}` is not true or false"))),
        }
    }
}

/// The keys of `yaml` that `T` does not know (`type` is the loader's), for the tests that check
/// every key of the Python entries.
#[cfg(test)]
pub(crate) fn unknown_keys<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<String> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).expect("YAML");
    let mut unknown = Vec::new();
    let parsed: Result<T, _> = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    assert!(parsed.is_ok(), "the entry parses");
    unknown.retain(|key| key != "type");
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_documented_json() {
        let run = run_task(
            "0123456789abcdef0123456789abcdef",
            "tts",
            "SpeechSynthesizer",
            "cosyvoice-v2",
            json!({"voice": "longxiaochun_v2"}),
        );
        assert_eq!(
            serde_json::from_str::<Value>(&run).expect("json"),
            json!({
                "header": {"action": "run-task", "task_id": "0123456789abcdef0123456789abcdef", "streaming": "duplex"},
                "payload": {"task_group": "audio", "task": "tts", "function": "SpeechSynthesizer",
                    "model": "cosyvoice-v2", "parameters": {"voice": "longxiaochun_v2"}, "input": {}},
            })
        );
        assert_eq!(
            serde_json::from_str::<Value>(&continue_task("t1", "床前明月光")).expect("json"),
            json!({"header": {"action": "continue-task", "task_id": "t1", "streaming": "duplex"},
                "payload": {"input": {"text": "床前明月光"}}})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&finish_task("t1")).expect("json"),
            json!({"header": {"action": "finish-task", "task_id": "t1", "streaming": "duplex"},
                "payload": {"input": {}}})
        );
        let id = new_task_id();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn the_key_is_a_bearer_token() {
        assert_eq!(ws_headers(" sk-abc ", false), vec![("Authorization", "Bearer sk-abc".to_owned())]);
        assert_eq!(
            ws_headers("sk-abc", true),
            vec![("Authorization", "Bearer sk-abc".to_owned()), ("X-DashScope-DataInspection", "enable".to_owned())]
        );
        assert!(matches!(require_key(" ", "TTS.alibl_stream"), Err(ProviderError::Config(m)) if m.contains("api_key")));
    }

    #[test]
    fn events_parse_and_failures_keep_the_vendor_code() {
        assert_eq!(
            parse_event(r#"{"header":{"task_id":"t","event":"task-started","attributes":{}},"payload":{}}"#),
            Ok(Event::TaskStarted)
        );
        assert_eq!(
            parse_event(
                r#"{"header":{"task_id":"t","event":"result-generated"},"payload":{"output":{"sentence":{"text":"你好"}}}}"#
            ),
            Ok(Event::ResultGenerated(json!({"output": {"sentence": {"text": "你好"}}})))
        );
        assert_eq!(parse_event(r#"{"header":{"event":"task-finished"},"payload":{}}"#), Ok(Event::TaskFinished));
        let failed = parse_event(
            r#"{"header":{"task_id":"t","event":"task-failed","error_code":"InvalidParameter","error_message":"request timeout after 23 seconds.","attributes":{}},"payload":{}}"#,
        )
        .expect("event");
        let Event::TaskFailed { code, message } = failed else { panic!("{failed:?}") };
        let err = task_failed("wss://dashscope.aliyuncs.com/api-ws/v1/inference?x=secret", &code, &message).to_string();
        assert!(err.contains("InvalidParameter") && err.contains("request timeout after 23 seconds"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(parse_event("not json").is_err());
        assert!(parse_event(r#"{"payload":{}}"#).is_err());
    }

    #[test]
    fn lenient_values() {
        #[derive(Deserialize)]
        struct S {
            #[serde(default, deserialize_with = "lenient::opt_u32")]
            rate: Option<u32>,
            #[serde(default, deserialize_with = "lenient::opt_f32")]
            pitch: Option<f32>,
            #[serde(default, deserialize_with = "lenient::opt_text")]
            memory: Option<String>,
            #[serde(default, deserialize_with = "lenient::text")]
            app: String,
            #[serde(default, deserialize_with = "lenient::opt_bool")]
            flag: Option<bool>,
        }
        let s: S = serde_yaml_ng::from_str("rate: \"24000\"\npitch: '1.5'\nmemory: false\napp: 123\nflag: 'true'")
            .expect("ok");
        assert_eq!(
            (s.rate, s.pitch, s.memory, s.app.as_str(), s.flag),
            (Some(24000), Some(1.5), None, "123", Some(true))
        );
        let s: S = serde_yaml_ng::from_str("rate: 16000\npitch: 1\nmemory: mem-1\napp: abc\nflag: false").expect("ok");
        assert_eq!(
            (s.rate, s.pitch, s.memory, s.app.as_str(), s.flag),
            (Some(16000), Some(1.0), Some("mem-1".into()), "abc", Some(false))
        );
        let s: S = serde_yaml_ng::from_str("rate: ''\npitch:\nmemory: ''").expect("ok");
        assert_eq!((s.rate, s.pitch, s.memory), (None, None, None));
        assert!(serde_yaml_ng::from_str::<S>("rate: fast").is_err());
        assert!(serde_yaml_ng::from_str::<S>("rate: -1").is_err());
    }
}
