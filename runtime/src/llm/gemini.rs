//! `type: gemini`: Google Gemini through its native API, streamed, with function calling.
//!
//! Follows the Gemini API reference (`models.streamGenerateContent`,
//! <https://ai.google.dev/api/generate-content>; function calling,
//! <https://ai.google.dev/gemini-api/docs/function-calling>): `POST
//! {base_url}/models/{model}:streamGenerateContent?alt=sse` with the key in the `x-goog-api-key`
//! header (never in the URL, so never in an error or a log line), a body of `contents` (roles
//! `user` and `model`), `systemInstruction`, `tools: [{functionDeclarations}]` and the Python
//! server's `generationConfig`; the answer is SSE, each `data:` a `GenerateContentResponse`.
//!
//! - `text` parts are the answer (`thought` parts are skipped); `functionCall` parts become one
//!   [`LlmDelta::ToolCalls`] at the end. A call's Gemini `id` and `thoughtSignature` (which
//!   Gemini wants back with the call) ride in the [`ToolCall`] id, so the dialogue carries them.
//! - An assistant message with tool calls goes back as `functionCall` parts, a tool result as a
//!   `functionResponse` part (`{name, response: {result}}`) of a `user` turn.
//! - `{error: {code, message, status}}` (an HTTP error body or an event) becomes an error with
//!   the code, status and message; a blocked prompt (`promptFeedback.blockReason`) too.
//! - `http_proxy` / `https_proxy`: the proxy for `http://` / `https://` URLs; an `https://` URL
//!   goes through `http_proxy` when only that one is set (the Python server reuses it the same
//!   way when it works for HTTPS).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::chat_app::{self, Events, Out};
use super::{ChatMessage, LlmStream, Role, ToolCall, ToolSpec};
use crate::remote::sse::SseEvent;
use crate::remote::{ProviderError, check_url, error_chain, timeout_from};

/// The prefix of a tool-call id that carries Gemini's call id and thought signature.
const CALL_PREFIX: &str = "gemini:";

/// `LLM.<name>` with `type: gemini`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The Gemini API key (secret).
    pub api_key: String,
    /// The model (`gemini-2.0-flash`).
    pub model_name: String,
    /// Proxy for `http://` URLs (empty: none).
    pub http_proxy: String,
    /// Proxy for `https://` URLs (empty: `http_proxy`, if set).
    pub https_proxy: String,
    /// The API root (tests point it at a mock).
    pub base_url: String,
    /// Seconds for the answer to start, and the longest silence while it streams.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            model_name: "gemini-2.0-flash".into(),
            http_proxy: String::new(),
            https_proxy: String::new(),
            base_url: "https://generativelanguage.googleapis.com/v1beta".into(),
            timeout: 120,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_key", &chat_app::redacted(&self.api_key))
            .field("model_name", &self.model_name)
            .field("http_proxy", &proxy_shown(&self.http_proxy))
            .field("https_proxy", &proxy_shown(&self.https_proxy))
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A proxy URL without any credentials in it.
fn proxy_shown(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            format!("{parsed} (with credentials)")
        }
        _ => url.trim().to_owned(),
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        let proxy = match (self.http_proxy.trim(), self.https_proxy.trim()) {
            ("", "") => String::new(),
            _ => ", through a proxy".into(),
        };
        format!("{}{proxy}, api_key {}", self.model_name, chat_app::redacted(&self.api_key))
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Llm>, ProviderError> {
    Ok(Arc::new(GeminiLlm::new(cfg.clone())?))
}

/// Google Gemini.
pub struct GeminiLlm {
    client: Client,
    url: String,
    cfg: Config,
    timeout: Duration,
}

impl GeminiLlm {
    /// Validates the entry (model, URLs, proxies, timeout); an empty key is an error at request
    /// time.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let model = cfg.model_name.trim().trim_start_matches("models/");
        if model.is_empty() || model.contains(['/', '?', '#', ' ']) {
            return Err(ProviderError::Config(format!(
                "LLM.gemini: model_name `{}` is not a model name",
                cfg.model_name
            )));
        }
        let timeout = timeout_from(cfg.timeout, "LLM.gemini")?;
        let url = format!("{}/models/{model}:streamGenerateContent?alt=sse", cfg.base_url.trim().trim_end_matches('/'));
        check_url(&url, "LLM.gemini")?;
        let mut builder = Client::builder()
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("xiaozhi-server/", env!("CARGO_PKG_VERSION")));
        let (http, https) = (cfg.http_proxy.trim(), cfg.https_proxy.trim());
        let https = if https.is_empty() { http } else { https };
        let bad = |which: &str, e: reqwest::Error| {
            ProviderError::Config(format!("LLM.gemini: {which} is not a proxy URL: {}", error_chain(&e)))
        };
        if !http.is_empty() {
            builder = builder.proxy(reqwest::Proxy::http(http).map_err(|e| bad("http_proxy", e))?);
        }
        if !https.is_empty() {
            builder = builder.proxy(reqwest::Proxy::https(https).map_err(|e| bad("https_proxy", e))?);
        }
        let client = builder
            .build()
            .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {}", error_chain(&e))))?;
        Ok(Self { client, url, cfg, timeout })
    }

    /// The JSON request body.
    fn request_body(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Value {
        let system: Vec<&str> =
            messages.iter().filter(|m| m.role == Role::System).map(|m| m.content.as_str()).collect();
        let mut body = json!({
            "contents": contents(messages),
            "generationConfig": {"temperature": 0.7, "topP": 0.9, "topK": 40, "maxOutputTokens": 2048},
        });
        if let Some(obj) = body.as_object_mut() {
            if !system.is_empty() {
                obj.insert("systemInstruction".into(), json!({"parts": [{"text": system.join("\n\n")}]}));
            }
            if !tools.is_empty() {
                let declarations: Vec<Value> = tools.iter().map(declaration).collect();
                obj.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
            }
        }
        body
    }
}

/// The dialogue as Gemini `contents`: consecutive messages of one role share a turn (tool
/// results answering parallel calls must).
fn contents(messages: &[ChatMessage]) -> Vec<Value> {
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let (role, parts) = match message.role {
            Role::System => continue,
            // Gemini refuses empty text parts: empty messages are left out.
            Role::User if message.content.trim().is_empty() => continue,
            Role::User => ("user", vec![json!({"text": message.content})]),
            Role::Assistant => {
                let mut parts = Vec::new();
                if !message.content.trim().is_empty() {
                    parts.push(json!({"text": message.content}));
                }
                if parts.is_empty() && message.tool_calls.is_empty() {
                    continue;
                }
                parts.extend(message.tool_calls.iter().map(call_part));
                ("model", parts)
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let name = messages
                    .get(..i)
                    .unwrap_or_default()
                    .iter()
                    .rev()
                    .flat_map(|m| m.tool_calls.iter())
                    .find(|c| c.id == id)
                    .map_or("tool", |c| c.name.as_str());
                let mut response = json!({"name": name, "response": {"result": message.content}});
                if let (Some(gemini_id), _) = decode_id(id)
                    && let Some(obj) = response.as_object_mut()
                {
                    obj.insert("id".into(), json!(gemini_id));
                }
                ("user", vec![json!({"functionResponse": response})])
            }
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    turns.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect()
}

/// A tool call of the dialogue as a `functionCall` part (with its id and thought signature).
fn call_part(call: &ToolCall) -> Value {
    let args = match serde_json::from_str::<Value>(&call.arguments) {
        Ok(Value::Object(map)) => Value::Object(map),
        _ => json!({}),
    };
    let mut function_call = json!({"name": call.name, "args": args});
    let (gemini_id, signature) = decode_id(&call.id);
    if let (Some(id), Some(obj)) = (gemini_id, function_call.as_object_mut()) {
        obj.insert("id".into(), json!(id));
    }
    let mut part = json!({"functionCall": function_call});
    if let (Some(signature), Some(obj)) = (signature, part.as_object_mut()) {
        obj.insert("thoughtSignature".into(), json!(signature));
    }
    part
}

/// The tool-call id of a Gemini call: `call_<uuid>`, or `gemini:<id>:<signature>` when Gemini
/// gave an id or a thought signature.
fn encode_id(gemini_id: Option<&str>, signature: Option<&str>) -> String {
    match (gemini_id.filter(|s| !s.is_empty()), signature.filter(|s| !s.is_empty())) {
        (None, None) => format!("call_{}", uuid::Uuid::new_v4().simple()),
        (id, sig) => format!("{CALL_PREFIX}{}:{}", id.unwrap_or_default(), sig.unwrap_or_default()),
    }
}

/// The Gemini call id and thought signature carried by a tool-call id.
fn decode_id(id: &str) -> (Option<&str>, Option<&str>) {
    let Some(rest) = id.strip_prefix(CALL_PREFIX) else { return (None, None) };
    let (gemini_id, signature) = rest.split_once(':').unwrap_or((rest, ""));
    (Some(gemini_id).filter(|s| !s.is_empty()), Some(signature).filter(|s| !s.is_empty()))
}

/// A tool as a function declaration; the parameters are cut down to the schema fields Gemini
/// knows, and left out when they are an object without properties (Gemini refuses those).
fn declaration(tool: &ToolSpec) -> Value {
    let mut out = json!({"name": tool.name, "description": tool.description});
    let parameters = gemini_schema(&tool.parameters);
    let empty_object = parameters.get("properties").and_then(Value::as_object).is_none_or(Map::is_empty)
        && parameters.get("type").and_then(Value::as_str).is_none_or(|t| t.eq_ignore_ascii_case("object"));
    if !empty_object && let Some(obj) = out.as_object_mut() {
        obj.insert("parameters".into(), parameters);
    }
    out
}

/// A JSON schema reduced to Gemini's `Schema` fields (`additionalProperties`, `$schema` … go).
fn gemini_schema(schema: &Value) -> Value {
    const KEPT: [&str; 16] = [
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "propertyOrdering",
    ];
    let Some(obj) = schema.as_object() else { return json!({}) };
    let mut out = Map::new();
    match obj.get("type") {
        Some(Value::String(t)) => {
            out.insert("type".into(), json!(t));
        }
        Some(Value::Array(types)) => {
            let real: Vec<&str> = types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
            if let Some(first) = real.first() {
                out.insert("type".into(), json!(first));
            }
            if real.len() < types.len() {
                out.insert("nullable".into(), json!(true));
            }
        }
        _ => {}
    }
    for key in KEPT {
        if let Some(value) = obj.get(key) {
            out.insert(key.into(), value.clone());
        }
    }
    if let Some(properties) = obj.get("properties").and_then(Value::as_object) {
        let properties: Map<String, Value> =
            properties.iter().map(|(name, schema)| (name.clone(), gemini_schema(schema))).collect();
        out.insert("properties".into(), Value::Object(properties));
    }
    if let Some(items) = obj.get("items") {
        out.insert("items".into(), gemini_schema(items));
    }
    if let Some(any_of) = obj.get("anyOf").and_then(Value::as_array) {
        out.insert("anyOf".into(), Value::Array(any_of.iter().map(gemini_schema).collect()));
    }
    Value::Object(out)
}

#[async_trait]
impl super::Llm for GeminiLlm {
    async fn stream(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Result<LlmStream, ProviderError> {
        let key = self.cfg.api_key.trim();
        if key.is_empty() {
            return Err(ProviderError::Config("LLM.gemini: api_key is not set".into()));
        }
        let request =
            self.client.post(&self.url).header("x-goog-api-key", key).json(&self.request_body(messages, tools));
        let response = chat_app::send(request, &self.url, self.timeout, "Gemini response").await?;
        let events = GeminiEvents { url: self.url.clone(), calls: Vec::new(), finish: None, produced: false };
        Ok(chat_app::sse_stream(response, self.url.clone(), self.timeout, "Gemini stream", events))
    }
}

/// Reads Gemini's events.
struct GeminiEvents {
    url: String,
    calls: Vec<ToolCall>,
    /// The candidate's `finishReason`, once given.
    finish: Option<String>,
    /// Whether any text came.
    produced: bool,
}

impl GeminiEvents {
    fn error(&self, error: &Value) -> Out {
        let code = format!("{} {}", chat_app::json_text(error.get("code")), chat_app::json_text(error.get("status")));
        let message = chat_app::json_text(error.get("message"));
        Out::Error(chat_app::vendor_error(&self.url, code.trim(), &message))
    }

    fn response(&mut self, data: &Value, out: &mut Vec<Out>) {
        if let Some(error) = data.get("error").filter(|e| !e.is_null()) {
            out.push(self.error(error));
            return;
        }
        let candidate = data.get("candidates").and_then(|c| c.get(0));
        if candidate.is_none()
            && let Some(reason) = data.pointer("/promptFeedback/blockReason").and_then(Value::as_str)
        {
            out.push(Out::Error(chat_app::vendor_error(
                &self.url,
                "blocked",
                &format!("the prompt was blocked: {reason}"),
            )));
            return;
        }
        let Some(candidate) = candidate else { return };
        for part in candidate.pointer("/content/parts").and_then(Value::as_array).into_iter().flatten() {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(call) = part.get("functionCall") {
                let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.is_empty() {
                    tracing::warn!("dropping a Gemini function call without a name");
                    continue;
                }
                let arguments = match call.get("args") {
                    Some(args) if args.is_object() => args.to_string(),
                    _ => "{}".to_owned(),
                };
                let id = encode_id(
                    call.get("id").and_then(Value::as_str),
                    part.get("thoughtSignature").and_then(Value::as_str),
                );
                self.calls.push(ToolCall { id, name: name.to_owned(), arguments });
            } else if let Some(text) = part.get("text").and_then(Value::as_str)
                && !text.is_empty()
            {
                self.produced = true;
                out.push(Out::Text(text.to_owned()));
            }
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            self.finish = Some(reason.to_owned());
        }
    }
}

impl Events for GeminiEvents {
    fn event(&mut self, event: SseEvent, out: &mut Vec<Out>) {
        match serde_json::from_str::<Value>(&event.data) {
            // A JSON answer may be an array of responses.
            Ok(Value::Array(items)) => items.iter().for_each(|item| self.response(item, out)),
            Ok(data) => self.response(&data, out),
            Err(_) => tracing::warn!(url = %self.url, "skipping a Gemini event that is not JSON"),
        }
    }

    fn body_ended(&mut self, out: &mut Vec<Out>) {
        let calls = std::mem::take(&mut self.calls);
        match self.finish.as_deref() {
            None if calls.is_empty() => out.push(Out::Error(ProviderError::Protocol {
                url: self.url.clone(),
                message: "the stream ended before a finishReason".into(),
            })),
            Some(reason) if calls.is_empty() && !self.produced && reason != "STOP" => {
                out.push(Out::Error(chat_app::vendor_error(&self.url, reason, "the answer was stopped")));
            }
            _ => {
                if !calls.is_empty() {
                    out.push(Out::ToolCalls(calls));
                }
                out.push(Out::End);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::llm::{Llm, LlmDelta};
    use crate::remote::test_server::{Step, full, serve, stream_head};

    fn config(base: &str) -> Config {
        Config { api_key: "AIza-secret".into(), base_url: format!("{base}/v1beta"), timeout: 5, ..Config::default() }
    }

    fn ev(value: Value) -> String {
        format!("data: {value}\r\n\r\n")
    }

    async fn collect(stream: LlmStream) -> (String, Vec<Vec<ToolCall>>, Option<ProviderError>) {
        let (mut text, mut calls, mut error) = (String::new(), Vec::new(), None);
        for item in stream.collect::<Vec<_>>().await {
            match item {
                Ok(LlmDelta::Text(t)) => text.push_str(&t),
                Ok(LlmDelta::ToolCalls(c)) => calls.push(c),
                Err(e) => error = Some(e),
            }
        }
        (text, calls, error)
    }

    #[test]
    fn config_debug_hides_secrets_and_checks_values() {
        let cfg = Config { https_proxy: "http://user:pw@127.0.0.1:10808".into(), ..config("http://x") };
        let shown = format!("{cfg:?} {}", cfg.summary());
        assert!(!shown.contains("AIza-secret") && !shown.contains("pw"), "{shown}");
        assert!(GeminiLlm::new(cfg).is_ok());
        assert!(GeminiLlm::new(Config::default()).is_ok(), "an empty key builds");
        assert!(GeminiLlm::new(Config { http_proxy: "::".into(), ..Config::default() }).is_err());
        assert!(GeminiLlm::new(Config { model_name: "a/b".into(), ..Config::default() }).is_err());
    }

    #[test]
    fn request_body_maps_roles_system_tools_and_tool_results() {
        let llm = GeminiLlm::new(config("http://127.0.0.1:9")).expect("valid");
        let call = ToolCall {
            id: encode_id(Some("fc1"), Some("c2lnbmF0dXJl")),
            name: "get_time".into(),
            arguments: "{}".into(),
        };
        let messages = vec![
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, "hi"),
            ChatMessage::new(Role::Assistant, "hello"),
            ChatMessage::new(Role::User, "time?"),
            ChatMessage::tool_calls("", vec![call.clone()]),
            ChatMessage::tool_result(call.id.clone(), "12:00"),
        ];
        let tools = vec![
            ToolSpec {
                name: "get_time".into(),
                description: "the time".into(),
                parameters: json!({"type": "object", "properties": {}}),
            },
            ToolSpec {
                name: "set_volume".into(),
                description: "volume".into(),
                parameters: json!({"$schema": "x", "type": "object", "additionalProperties": false,
                    "properties": {"level": {"type": ["integer", "null"], "minimum": 0, "description": "0-100"}},
                    "required": ["level"]}),
            },
        ];
        let body = llm.request_body(&messages, &tools);
        assert_eq!(
            body,
            json!({
                "contents": [
                    {"role": "user", "parts": [{"text": "hi"}]},
                    {"role": "model", "parts": [{"text": "hello"}]},
                    {"role": "user", "parts": [{"text": "time?"}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}, "id": "fc1"},
                        "thoughtSignature": "c2lnbmF0dXJl"}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "get_time", "id": "fc1",
                        "response": {"result": "12:00"}}}]},
                ],
                "systemInstruction": {"parts": [{"text": "be brief"}]},
                "tools": [{"functionDeclarations": [
                    {"name": "get_time", "description": "the time"},
                    {"name": "set_volume", "description": "volume", "parameters": {"type": "object",
                        "properties": {"level": {"type": "integer", "nullable": true, "minimum": 0, "description": "0-100"}},
                        "required": ["level"]}},
                ]}],
                "generationConfig": {"temperature": 0.7, "topP": 0.9, "topK": 40, "maxOutputTokens": 2048},
            })
        );
        // Empty messages are left out; what is left of one role shares a turn.
        let messages = vec![
            ChatMessage::new(Role::User, "a"),
            ChatMessage::new(Role::Assistant, ""),
            ChatMessage::new(Role::User, "b"),
            ChatMessage::new(Role::User, " "),
        ];
        assert_eq!(contents(&messages), vec![json!({"role": "user", "parts": [{"text": "a"}, {"text": "b"}]})]);
        // Parallel results share one user turn; a plain call id carries nothing.
        let a = ToolCall { id: encode_id(None, None), name: "a".into(), arguments: "{\"x\":1}".into() };
        assert!(a.id.starts_with("call_"));
        let b = ToolCall { id: "call_b".into(), name: "b".into(), arguments: "not json".into() };
        let messages = vec![
            ChatMessage::new(Role::User, "go"),
            ChatMessage::tool_calls("ok", vec![a.clone(), b.clone()]),
            ChatMessage::tool_result(a.id.clone(), "1"),
            ChatMessage::tool_result("call_b", "2"),
        ];
        assert_eq!(
            contents(&messages),
            vec![
                json!({"role": "user", "parts": [{"text": "go"}]}),
                json!({"role": "model", "parts": [{"text": "ok"}, {"functionCall": {"name": "a", "args": {"x": 1}}},
                    {"functionCall": {"name": "b", "args": {}}}]}),
                json!({"role": "user", "parts": [{"functionResponse": {"name": "a", "response": {"result": "1"}}},
                    {"functionResponse": {"name": "b", "response": {"result": "2"}}}]}),
            ]
        );
    }

    #[tokio::test]
    async fn streams_text_and_function_calls_with_the_key_in_a_header() {
        let body = [
            ev(json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Let me "}]}, "index": 0}]})),
            ev(json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true},
                {"text": "check."},
                {"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": "SIG"},
                {"functionCall": {"name": "set_volume", "args": {"level": 5}, "id": "v1"}},
            ]}, "finishReason": "STOP", "index": 0}], "usageMetadata": {"totalTokenCount": 9}})),
        ]
        .concat();
        let (base, mut requests) =
            serve(vec![vec![stream_head("text/event-stream"), Step::Send(body.into_bytes())]]).await;
        let llm = GeminiLlm::new(config(&base)).expect("valid");
        let (text, calls, error) =
            collect(llm.stream(&[ChatMessage::new(Role::User, "time?")], &[]).await.expect("starts")).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(text, "Let me check.");
        assert_eq!(calls.len(), 1);
        let calls = &calls[0];
        assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("get_time", "{}"));
        assert_eq!(decode_id(&calls[0].id), (None, Some("SIG")));
        assert_eq!((calls[1].name.as_str(), calls[1].arguments.as_str()), ("set_volume", "{\"level\":5}"));
        assert_eq!(decode_id(&calls[1].id), (Some("v1"), None));
        let request = requests.recv().await.expect("request");
        assert_eq!(request.target(), "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse");
        assert_eq!(request.header("x-goog-api-key").as_deref(), Some("AIza-secret"));
        assert!(request.header("authorization").is_none());
        assert!(!request.target().contains("key="));
    }

    #[tokio::test]
    async fn errors_carry_code_status_and_message_but_never_the_key() {
        let error = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT"}});
        let mid_stream = [
            ev(json!({"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]})),
            ev(json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})),
        ]
        .concat();
        let blocked = ev(json!({"promptFeedback": {"blockReason": "SAFETY"}}));
        let (base, _requests) = serve(vec![
            full(400, "application/json", error.to_string().as_bytes()),
            vec![stream_head("text/event-stream"), Step::Send(mid_stream.into_bytes())],
            vec![stream_head("text/event-stream"), Step::Send(blocked.into_bytes())],
        ])
        .await;
        let llm = GeminiLlm::new(config(&base)).expect("valid");
        let ask = [ChatMessage::new(Role::User, "hi")];
        match llm.stream(&ask, &[]).await {
            Err(e @ ProviderError::Status { status: 400, .. }) => {
                let shown = e.to_string();
                assert!(shown.contains("API key not valid") && !shown.contains("AIza-secret"), "{shown}");
            }
            other => panic!("{:?}", other.err()),
        }
        let (text, _, error) = collect(llm.stream(&ask, &[]).await.expect("starts")).await;
        assert_eq!(text, "Hi");
        assert!(
            matches!(error, Some(ProviderError::Protocol { ref message, .. }) if message == "503 UNAVAILABLE: The model is overloaded."),
            "{error:?}"
        );
        let (_, _, error) = collect(llm.stream(&ask, &[]).await.expect("starts")).await;
        assert!(
            matches!(error, Some(ProviderError::Protocol { ref message, .. }) if message.contains("SAFETY")),
            "{error:?}"
        );
        let llm = GeminiLlm::new(Config { api_key: String::new(), ..config(&base) }).expect("valid");
        assert!(matches!(llm.stream(&ask, &[]).await, Err(ProviderError::Config(ref m)) if m.contains("api_key")));
    }
}
