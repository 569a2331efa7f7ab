//! `type: AliBL`: an Aliyun Bailian (DashScope) application, through its completion API
//! ("DashScope API reference for applications", Alibaba Cloud Model Studio):
//! `POST {api root}/apps/{app_id}/completion` with the key as a bearer token and
//! `X-DashScope-SSE: enable`; the body carries `input.messages` (the dialogue; without the local
//! system prompt when `is_no_prompt`, so the app's own prompt applies), `input.memory_id` and
//! `input.prompt` when `ali_memory_id` is set, and `parameters.incremental_output: true`. The
//! answer is a server-sent event stream whose `output.text` pieces are the reply; an event (or an
//! HTTP error body) with `code` and `message` is the vendor's error.
//!
//! The API root: a `base_url` with `/api/` in it is used as is; the Python file's
//! OpenAI-compatible `…/compatible-mode/v1` becomes `…/api/v1` on the same host (the Python
//! server ignores it and uses the Beijing endpoint, which is the same for the default). Bailian
//! apps take no tools: offered tools are left out (the Python provider answers in plain text too).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Client, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::openai::ThinkFilter;
use super::{ChatMessage, LlmDelta, LlmStream, Role, ToolSpec};
use crate::remote::dashscope::{self, lenient};
use crate::remote::sse::{SseEvent, SseLines};
use crate::remote::{ProviderError, body_start, check_url, error_chain, request_error, streaming_client, timeout_from};

/// What errors and timeouts call this provider.
const WHAT: &str = "LLM.AliBL";

/// The DashScope API root (Beijing).
const DEFAULT_API_ROOT: &str = "https://dashscope.aliyuncs.com/api/v1";

/// How much of an error answer is read.
const MAX_ERROR_BYTES: usize = 16 << 10;

/// `LLM.<name>` with `type: AliBL`: the Python server's keys.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The API root (see the module documentation).
    pub base_url: String,
    /// The Bailian application id.
    #[serde(deserialize_with = "lenient::text")]
    pub app_id: String,
    /// The DashScope API key (a bearer token).
    pub api_key: String,
    /// `true`: the local system prompt is not sent (the app's own prompt applies).
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub is_no_prompt: Option<bool>,
    /// The app's long-term memory id, or `false`.
    #[serde(deserialize_with = "lenient::opt_text")]
    pub ali_memory_id: Option<String>,
    /// Accepted for the Python file (its SDK fallback's piece size); answers stream here.
    #[serde(deserialize_with = "lenient::opt_u32")]
    pub streaming_chunk_size: Option<u32>,
    /// Seconds allowed to connect and for each pause in the answer.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: "https://dashscope.aliyuncs.com/compatible-mode/v1".into(),
            app_id: String::new(),
            api_key: String::new(),
            is_no_prompt: None,
            ali_memory_id: None,
            streaming_chunk_size: None,
            timeout: 30,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("base_url", &self.base_url)
            .field("app_id", &self.app_id)
            .field("api_key", &dashscope::redacted(&self.api_key))
            .field("is_no_prompt", &self.is_no_prompt)
            .field("ali_memory_id", &self.ali_memory_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        let app = if self.app_id.is_empty() { "(app_id not set)" } else { self.app_id.as_str() };
        format!("Bailian app {app} at {}", api_root(&self.base_url))
    }

    /// The request body for `messages`.
    fn body(&self, messages: &[ChatMessage]) -> Value {
        let no_prompt = self.is_no_prompt.unwrap_or(false);
        let dialogue: Vec<Value> = messages
            .iter()
            .filter_map(|m| {
                let role = match m.role {
                    Role::System if no_prompt => return None,
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    // Bailian apps take no tool results.
                    Role::Tool => return None,
                };
                (!m.content.trim().is_empty()).then(|| json!({"role": role, "content": m.content}))
            })
            .collect();
        let mut input = json!({"messages": dialogue});
        if let Some(memory) = &self.ali_memory_id {
            let prompt =
                messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.clone()).unwrap_or_default();
            input["memory_id"] = json!(memory);
            input["prompt"] = json!(prompt);
        }
        json!({"input": input, "parameters": {"incremental_output": true}, "debug": {}})
    }
}

/// The API root for `base_url`.
fn api_root(base_url: &str) -> String {
    let base = base_url.trim().trim_end_matches('/');
    if base.is_empty() {
        return DEFAULT_API_ROOT.to_owned();
    }
    if base.contains("/api/") {
        return base.to_owned();
    }
    match base.find("/compatible-mode") {
        Some(at) => format!("{}/api/v1", &base[..at]),
        None => DEFAULT_API_ROOT.to_owned(),
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Llm>, ProviderError> {
    Ok(Arc::new(AliBlLlm::new(cfg.clone())?))
}

/// A Bailian application.
pub struct AliBlLlm {
    client: Client,
    root: String,
    cfg: Config,
    timeout: Duration,
}

impl AliBlLlm {
    /// Validates the entry (the key and the app id are checked at request time).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let timeout = timeout_from(cfg.timeout, WHAT)?;
        let root = api_root(&cfg.base_url);
        check_url(&root, WHAT)?;
        let client = streaming_client(timeout)?;
        Ok(Self { client, root, cfg, timeout })
    }

    /// The completion URL of the configured app.
    fn url(&self) -> Result<String, ProviderError> {
        let app = self.cfg.app_id.trim();
        if app.is_empty() {
            return Err(ProviderError::Config(format!("{WHAT}: app_id is not set")));
        }
        if !app.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ProviderError::Config(format!("{WHAT}: app_id `{app}` is not an application id")));
        }
        Ok(format!("{}/apps/{app}/completion", self.root))
    }
}

#[async_trait]
impl super::Llm for AliBlLlm {
    async fn stream(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Result<LlmStream, ProviderError> {
        let url = self.url()?;
        let key = dashscope::require_key(&self.cfg.api_key, WHAT)?;
        if !tools.is_empty() {
            tracing::debug!("{WHAT}: Bailian apps take no tools; {} offered tool(s) left out", tools.len());
        }
        let request = self
            .client
            .post(&url)
            .bearer_auth(key)
            .header("X-DashScope-SSE", "enable")
            .json(&self.cfg.body(messages))
            .send();
        let response = match tokio::time::timeout(self.timeout, request).await {
            Err(_) => {
                return Err(ProviderError::Timeout { what: "LLM request".into(), seconds: self.timeout.as_secs() });
            }
            Ok(Err(e)) => return Err(request_error(&url, "LLM request", self.timeout, &e)),
            Ok(Ok(response)) => response,
        };
        if !response.status().is_success() {
            return Err(status_error(&url, response, self.timeout).await);
        }
        let state = State {
            response: Some(response),
            lines: SseLines::default(),
            think: ThinkFilter::default(),
            queue: VecDeque::new(),
            url,
        };
        Ok(Box::pin(futures_util::stream::unfold(state, State::next)))
    }
}

/// `code: message` of a DashScope error (a JSON body, or the data of an SSE error event).
fn vendor_error(value: &Value) -> Option<String> {
    let code = value.get("code").and_then(Value::as_str).filter(|c| !c.is_empty())?;
    let message = value.get("message").and_then(Value::as_str).unwrap_or_default();
    Some(format!("{code}: {message}"))
}

/// The error of a non-success answer, with the vendor's code and message when it gave them.
async fn status_error(url: &str, mut response: Response, wait: Duration) -> ProviderError {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let read = async {
        while body.len() < MAX_ERROR_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    let from_json = serde_json::from_slice::<Value>(&body).ok().and_then(|v| vendor_error(&v));
    let from_sse = || {
        let mut lines = SseLines::default();
        let mut events = Vec::new();
        lines.push(&body, &mut events).ok()?;
        lines.finish(&mut events);
        events.iter().find_map(|e| vendor_error(&serde_json::from_str(&e.data).ok()?))
    };
    let body = from_json.or_else(from_sse).unwrap_or_else(|| body_start(&body));
    ProviderError::Status { url: url.to_owned(), status, body }
}

/// The reading of one streamed answer. Dropping it drops the response, which cancels the request.
struct State {
    response: Option<Response>,
    lines: SseLines,
    think: ThinkFilter,
    queue: VecDeque<Result<LlmDelta, ProviderError>>,
    url: String,
}

impl State {
    async fn next(mut self) -> Option<(Result<LlmDelta, ProviderError>, Self)> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some((item, self));
            }
            let response = self.response.as_mut()?;
            let mut events = Vec::new();
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = self.lines.push(&chunk, &mut events) {
                        self.fail(e);
                        continue;
                    }
                }
                Ok(None) => {
                    self.lines.finish(&mut events);
                    self.events(events);
                    self.end();
                    continue;
                }
                Err(e) => {
                    self.fail(format!("the answer broke off: {}", error_chain(&e)));
                    continue;
                }
            }
            self.events(events);
        }
    }

    /// Queues the text (or the error) of `events`.
    fn events(&mut self, events: Vec<SseEvent>) {
        for event in events {
            if self.response.is_none() {
                return;
            }
            let data = event.data.trim();
            if data.is_empty() || data == "[DONE]" {
                continue;
            }
            let value: Value = match serde_json::from_str(data) {
                Ok(value) => value,
                Err(e) => {
                    self.fail(format!("an event that is not JSON ({e}): {}", body_start(data.as_bytes())));
                    return;
                }
            };
            if let Some(error) = vendor_error(&value) {
                self.fail(error);
                return;
            }
            let output = &value["output"];
            if let Some(piece) = output["text"].as_str() {
                let text = self.think.push(piece);
                if !text.is_empty() {
                    self.queue.push_back(Ok(LlmDelta::Text(text)));
                }
            }
            if output["finish_reason"].as_str().is_some_and(|r| !r.is_empty() && r != "null") {
                self.end();
                return;
            }
        }
    }

    /// The answer is complete.
    fn end(&mut self) {
        let rest = self.think.finish();
        if !rest.is_empty() {
            self.queue.push_back(Ok(LlmDelta::Text(rest)));
        }
        self.response = None;
    }

    fn fail(&mut self, message: String) {
        self.queue.push_back(Err(ProviderError::Protocol { url: self.url.clone(), message }));
        self.response = None;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::llm::Llm;
    use crate::remote::test_server::{Step, full, serve, stream_head};

    fn config(base: &str) -> Config {
        Config {
            base_url: base.into(),
            app_id: "app123".into(),
            api_key: "sk-test".into(),
            is_no_prompt: Some(true),
            timeout: 3,
            ..Config::default()
        }
    }

    fn dialogue() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new(Role::System, "You are Xiaozhi."),
            ChatMessage::new(Role::User, "你好"),
            ChatMessage::new(Role::Assistant, "你好！"),
            ChatMessage::new(Role::User, "今天天气怎么样"),
        ]
    }

    #[test]
    fn api_roots_and_the_python_entry() {
        assert_eq!(api_root("https://dashscope.aliyuncs.com/compatible-mode/v1"), DEFAULT_API_ROOT);
        assert_eq!(
            api_root("https://dashscope-intl.aliyuncs.com/compatible-mode/v1/"),
            "https://dashscope-intl.aliyuncs.com/api/v1"
        );
        assert_eq!(api_root("http://127.0.0.1:9/api/v1"), "http://127.0.0.1:9/api/v1");
        assert_eq!(api_root(""), DEFAULT_API_ROOT);
        let cfg: Config = serde_yaml_ng::from_str(
            "type: AliBL\nbase_url: https://dashscope.aliyuncs.com/compatible-mode/v1\napp_id: 123\napi_key: sk-secret\n\
             is_no_prompt: true\nali_memory_id: false",
        )
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
        // `type` is the loader's; here it is an unknown key of the struct, which serde ignores.
        assert_eq!((cfg.app_id.as_str(), cfg.is_no_prompt, cfg.ali_memory_id.as_deref()), ("123", Some(true), None));
        assert!(!format!("{cfg:?}").contains("sk-secret") && !cfg.summary().contains("sk-secret"));
    }

    #[test]
    fn every_python_key_is_known() {
        let yaml = "type: AliBL\nbase_url: https://dashscope.aliyuncs.com/compatible-mode/v1\napp_id: a\napi_key: k\n\
                    is_no_prompt: true\nali_memory_id: false\nstreaming_chunk_size: 3\ntimeout: 5";
        assert_eq!(dashscope::unknown_keys::<Config>(yaml), Vec::<String>::new());
    }

    #[test]
    fn the_body_is_the_documented_json() {
        let cfg = config("http://x/api/v1");
        assert_eq!(
            cfg.body(&dialogue()),
            json!({"input": {"messages": [
                    {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                    {"role": "user", "content": "今天天气怎么样"}]},
                "parameters": {"incremental_output": true}, "debug": {}})
        );
        let mut cfg = config("http://x/api/v1");
        cfg.is_no_prompt = Some(false);
        cfg.ali_memory_id = Some("mem-1".into());
        let body = cfg.body(&dialogue());
        assert_eq!(body["input"]["messages"][0], json!({"role": "system", "content": "You are Xiaozhi."}));
        assert_eq!(
            (&body["input"]["memory_id"], &body["input"]["prompt"]),
            (&json!("mem-1"), &json!("今天天气怎么样"))
        );
    }

    async fn collect(stream: LlmStream) -> (String, Option<ProviderError>) {
        let mut text = String::new();
        let mut stream = stream;
        while let Some(item) = stream.next().await {
            match item {
                Ok(LlmDelta::Text(t)) => text.push_str(&t),
                Ok(other) => panic!("{other:?}"),
                Err(e) => return (text, Some(e)),
            }
        }
        (text, None)
    }

    #[tokio::test]
    async fn streams_output_text_and_maps_errors() {
        let event = |id: u32, text: &str, finish: &str| {
            format!(
                "id:{id}\nevent:result\n:HTTP_STATUS/200\ndata:{{\"output\":{{\"session_id\":\"s1\",\"finish_reason\":\"{finish}\",\"text\":\"{text}\"}},\"usage\":{{}},\"request_id\":\"r1\"}}\n\n"
            )
            .into_bytes()
        };
        let (base, mut requests) = serve(vec![
            vec![
                stream_head("text/event-stream;charset=UTF-8"),
                Step::Send(event(1, "今天", "null")),
                Step::Sleep(Duration::from_millis(50)),
                Step::Send(event(2, "晴。", "null")),
                Step::Send(event(3, "", "stop")),
            ],
            full(401, "application/json", br#"{"code":"InvalidApiKey","message":"Invalid API-key provided.","request_id":"r2"}"#),
            vec![
                stream_head("text/event-stream"),
                Step::Send(event(1, "一", "null")),
                Step::Send(
                    b"id:2\nevent:error\n:HTTP_STATUS/400\ndata:{\"code\":\"DataInspectionFailed\",\"message\":\"Input data may contain inappropriate content.\",\"request_id\":\"r3\"}\n\n".to_vec(),
                ),
            ],
        ])
        .await;
        let llm = AliBlLlm::new(config(&format!("{base}/api/v1"))).expect("valid");
        let (text, error) = collect(llm.stream(&dialogue(), &[]).await.expect("stream")).await;
        assert_eq!((text.as_str(), error.is_none()), ("今天晴。", true));
        let request = requests.recv().await.expect("request");
        assert_eq!(request.target(), "/api/v1/apps/app123/completion");
        assert_eq!(request.header("authorization").as_deref(), Some("Bearer sk-test"));
        assert_eq!(request.header("x-dashscope-sse").as_deref(), Some("enable"));
        assert_eq!(request.json()["parameters"]["incremental_output"], true);

        match llm.stream(&dialogue(), &[]).await {
            Err(ProviderError::Status { status: 401, body, .. }) => {
                assert_eq!(body, "InvalidApiKey: Invalid API-key provided.")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("expected an error"),
        }
        let (text, error) = collect(llm.stream(&dialogue(), &[]).await.expect("stream")).await;
        assert_eq!(text, "一");
        let error = error.expect("the vendor's error").to_string();
        assert!(error.contains("DataInspectionFailed") && error.contains("inappropriate"), "{error}");
    }

    #[tokio::test]
    async fn missing_settings_are_named_at_request_time() {
        let llm = AliBlLlm::new(Config::default()).expect("builds without credentials");
        let err = llm.stream(&dialogue(), &[]).await.err().expect("no app id");
        assert!(err.to_string().contains("app_id"), "{err}");
        let llm = AliBlLlm::new(Config { app_id: "a1".into(), ..Config::default() }).expect("builds");
        let err = llm.stream(&dialogue(), &[]).await.err().expect("no key");
        assert!(err.to_string().contains("api_key"), "{err}");
    }
}
