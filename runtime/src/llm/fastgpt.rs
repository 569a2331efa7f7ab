//! `type: fastgpt`: a FastGPT app through its OpenAI-compatible chat API, streamed.
//!
//! Follows FastGPT's "对话接口 / Chat API" documentation (`POST {base_url}/chat/completions`,
//! <https://doc.fastgpt.io/docs/introduction/development/openapi/chat>): `Authorization: Bearer
//! {api_key}` (the app's key), a body `{chatId, stream: true, detail, variables, messages}`, and an
//! SSE answer of OpenAI chat chunks (`choices[0].delta.content`) ending with `[DONE]`. With
//! `detail: true` the chunks come as `event: answer` among other named events (node status,
//! responses), which are skipped. An `event: error`, an `error` object in a chunk, or a JSON
//! error answer (`{code, statusText, message}`) ends the stream with the vendor's message.
//!
//! As in the Python server only the last user message is sent and FastGPT keeps the dialogue by
//! `chatId`: one id per conversation, found from the dialogue (see [`super::chat_app`]; the Python
//! server uses its session id). Tools are not offered (FastGPT apps have their own).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::chat_app::{self, Conversations, Events, Out, Question, Recorder};
use super::{ChatMessage, LlmStream, ToolSpec};
use crate::remote::sse::SseEvent;
use crate::remote::{ProviderError, check_url, http_client, timeout_from};

/// `LLM.<name>` with `type: fastgpt`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The API root (`https://<host>/api/v1`).
    pub base_url: String,
    /// The app's API key (secret).
    pub api_key: String,
    /// Values of the app's variables.
    pub variables: serde_json::Map<String, Value>,
    /// Ask for FastGPT's detailed stream (named events); the answer text is the same.
    pub detail: bool,
    /// Seconds for the answer to start, and the longest silence while it streams.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            api_key: String::new(),
            variables: Default::default(),
            detail: false,
            timeout: 120,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("base_url", &self.base_url)
            .field("api_key", &chat_app::redacted(&self.api_key))
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .field("detail", &self.detail)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!(
            "{}, {} variable(s), api_key {}",
            if self.base_url.is_empty() { "<no base_url>" } else { &self.base_url },
            self.variables.len(),
            chat_app::redacted(&self.api_key)
        )
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Llm>, ProviderError> {
    Ok(Arc::new(FastGptLlm::new(cfg.clone())?))
}

/// A FastGPT app.
pub struct FastGptLlm {
    client: Client,
    url: String,
    cfg: Config,
    timeout: Duration,
    conversations: Arc<Conversations>,
}

impl FastGptLlm {
    /// Validates the entry (a URL that is set, the timeout); an empty key or URL is an error at
    /// request time.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let timeout = timeout_from(cfg.timeout, "LLM.fastgpt")?;
        let url = if cfg.base_url.trim().is_empty() {
            String::new()
        } else {
            let url = crate::remote::endpoint(&cfg.base_url, "/chat/completions");
            check_url(&url, "LLM.fastgpt")?;
            url
        };
        let client = http_client(timeout, None)?;
        Ok(Self { client, url, cfg, timeout, conversations: Arc::default() })
    }

    /// The request body.
    fn request_body(&self, question: &Question, chat_id: &str) -> Value {
        json!({
            "chatId": chat_id,
            "stream": true,
            "detail": self.cfg.detail,
            "variables": self.cfg.variables,
            "messages": [{"role": "user", "content": question.query}],
        })
    }
}

#[async_trait]
impl super::Llm for FastGptLlm {
    async fn stream(&self, messages: &[ChatMessage], _tools: &[ToolSpec]) -> Result<LlmStream, ProviderError> {
        let key = self.cfg.api_key.trim();
        if key.is_empty() {
            return Err(ProviderError::Config("LLM.fastgpt: api_key is not set".into()));
        }
        if self.url.is_empty() {
            return Err(ProviderError::Config("LLM.fastgpt: base_url is not set".into()));
        }
        let question = chat_app::question(messages, "LLM.fastgpt")?;
        let found = self.conversations.find(&question.prior);
        let mut recorder = Recorder::new(Arc::clone(&self.conversations), &question, found, String::new());
        let chat_id = recorder.id.clone().unwrap_or_else(|| format!("xiaozhi-{}", uuid::Uuid::new_v4().simple()));
        recorder.learn(&chat_id);
        let request = self.client.post(&self.url).bearer_auth(key).json(&self.request_body(&question, &chat_id));
        let response = chat_app::send(request, &self.url, self.timeout, "FastGPT response").await?;
        let events = FastGptEvents { url: self.url.clone(), recorder, finished: false };
        Ok(chat_app::sse_stream(response, self.url.clone(), self.timeout, "FastGPT stream", events))
    }
}

/// Reads FastGPT's events.
struct FastGptEvents {
    url: String,
    recorder: Recorder,
    /// A chunk had a `finish_reason`: the end of the body is a normal end.
    finished: bool,
}

impl FastGptEvents {
    fn error(&self, data: &Value) -> Out {
        let error = data.get("error").filter(|e| e.is_object()).unwrap_or(data);
        let code = chat_app::json_text(error.get("code").or_else(|| error.get("statusText")));
        let mut message = chat_app::json_text(error.get("message").or_else(|| error.get("msg")));
        if message.is_empty() {
            message = chat_app::json_text(data.get("error")).chars().take(300).collect();
        }
        Out::Error(chat_app::vendor_error(&self.url, &code, &message))
    }

    fn chunk(&mut self, data: &Value, out: &mut Vec<Out>) {
        if data.get("error").is_some_and(|e| !e.is_null())
            || (data.get("choices").is_none() && data.get("message").is_some_and(Value::is_string))
        {
            out.push(self.error(data));
            return;
        }
        let Some(choice) = data.get("choices").and_then(|c| c.get(0)) else { return };
        let delta = choice.get("delta").or_else(|| choice.get("message"));
        if let Some(text) = delta.and_then(|d| d.get("content")).and_then(Value::as_str)
            && !text.is_empty()
        {
            out.push(Out::Text(text.to_owned()));
        }
        if choice.get("finish_reason").is_some_and(|r| r.as_str().is_some_and(|r| !r.is_empty())) {
            self.finished = true;
        }
    }
}

impl Events for FastGptEvents {
    fn event(&mut self, event: SseEvent, out: &mut Vec<Out>) {
        if event.data.trim() == "[DONE]" {
            out.push(Out::End);
            return;
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            tracing::warn!(url = %self.url, "skipping a FastGPT event that is not JSON");
            return;
        };
        match event.event.as_str() {
            "" | "answer" | "fastAnswer" => self.chunk(&data, out),
            "error" => out.push(self.error(&data)),
            // flowNodeStatus, flowResponses, toolCall, updateVariables, interactive …
            _ => {}
        }
    }

    fn body_ended(&mut self, out: &mut Vec<Out>) {
        if !self.finished {
            out.push(Out::Error(ProviderError::Protocol {
                url: self.url.clone(),
                message: "the stream ended before `[DONE]`".into(),
            }));
        }
    }

    fn json_body(&mut self, body: &str, out: &mut Vec<Out>) {
        match serde_json::from_str::<Value>(body) {
            Ok(data) if data.get("choices").is_some() => {
                self.chunk(&data, out);
                out.push(Out::End);
            }
            Ok(data) => out.push(self.error(&data)),
            Err(_) => out.push(Out::Error(ProviderError::Protocol {
                url: self.url.clone(),
                message: format!("the answer is not JSON: {}", crate::remote::body_start(body.as_bytes())),
            })),
        }
    }

    fn recorder(&mut self) -> Option<&mut Recorder> {
        Some(&mut self.recorder)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::llm::{Llm, LlmDelta, Role};
    use crate::remote::test_server::{Step, full, serve, stream_head};

    fn config(base: &str) -> Config {
        let variables = serde_json::from_value(json!({"k": "v", "k2": "v2"})).expect("map");
        Config { base_url: format!("{base}/api/v1"), api_key: "fastgpt-secret".into(), variables, ..Config::default() }
    }

    fn chunk(text: &str) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "", "object": "", "created": 0, "choices": [{"delta": {"role": "assistant", "content": text}, "index": 0, "finish_reason": null}]})
        )
    }

    async fn collect(stream: LlmStream) -> (String, Option<ProviderError>) {
        let mut text = String::new();
        let mut error = None;
        for item in stream.collect::<Vec<_>>().await {
            match item {
                Ok(LlmDelta::Text(t)) => text.push_str(&t),
                Ok(LlmDelta::ToolCalls(_)) => panic!("no tools"),
                Err(e) => error = Some(e),
            }
        }
        (text, error)
    }

    #[test]
    fn python_entry_parses_and_debug_hides_the_key() {
        let cfg: Config = serde_yaml_ng::from_str(
            "base_url: https://host/api/v1\napi_key: fastgpt-xyz\nvariables:\n  k: \"v\"\n  k2: \"v2\"\n",
        )
        .expect("parses");
        assert_eq!(cfg.variables.len(), 2);
        assert!(!format!("{cfg:?} {}", cfg.summary()).contains("fastgpt-xyz"));
        assert!(FastGptLlm::new(Config::default()).is_ok(), "empty settings build");
        assert!(FastGptLlm::new(Config { base_url: "host".into(), ..Config::default() }).is_err());
    }

    #[tokio::test]
    async fn request_follows_the_api_and_keeps_the_chat_id() {
        let answer = |parts: &[&str]| {
            let mut body: String = parts.iter().map(|p| chunk(p)).collect();
            body.push_str("data: [DONE]\n\n");
            vec![stream_head("text/event-stream"), Step::Send(body.into_bytes())]
        };
        let (base, mut requests) = serve(vec![answer(&["<think>hm</think>", "Hel", "lo"]), answer(&["Again"])]).await;
        let llm = FastGptLlm::new(config(&base)).expect("valid");
        let mut dialogue = vec![ChatMessage::new(Role::System, "p"), ChatMessage::new(Role::User, "hi")];
        let (text, error) = collect(llm.stream(&dialogue, &[]).await.expect("starts")).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(text, "Hello");
        let first = requests.recv().await.expect("request");
        assert_eq!(first.target(), "/api/v1/chat/completions");
        assert_eq!(first.header("authorization").as_deref(), Some("Bearer fastgpt-secret"));
        let body = first.json();
        let chat_id = body["chatId"].as_str().expect("chatId").to_owned();
        assert_eq!(
            body,
            json!({"chatId": chat_id, "stream": true, "detail": false, "variables": {"k": "v", "k2": "v2"},
                "messages": [{"role": "user", "content": "hi"}]})
        );
        dialogue.push(ChatMessage::new(Role::Assistant, "Hello"));
        dialogue.push(ChatMessage::new(Role::User, "more"));
        assert_eq!(collect(llm.stream(&dialogue, &[]).await.expect("starts")).await.0, "Again");
        let second = requests.recv().await.expect("request").json();
        assert_eq!(second["chatId"], chat_id.as_str(), "the same chat");
        assert_eq!(second["messages"], json!([{"role": "user", "content": "more"}]));
    }

    #[tokio::test]
    async fn detail_events_and_errors() {
        let detailed = [
            "event: flowNodeStatus\ndata: {\"status\":\"running\",\"name\":\"AI\"}\n\n".to_owned(),
            format!("event: answer\n{}", chunk("Yes")),
            "event: flowResponses\ndata: [{\"moduleName\":\"AI\"}]\n\n".to_owned(),
            "event: answer\ndata: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let error_event = [chunk("Par"), "event: error\ndata: {\"message\":\"余额不足\"}\n\n".to_owned()].concat();
        let json_error = br#"{"code":514,"statusText":"unAuthApiKey","message":"Api Key is invalid","data":null}"#;
        let (base, _requests) = serve(vec![
            vec![stream_head("text/event-stream"), Step::Send(detailed.into_bytes())],
            vec![stream_head("text/event-stream"), Step::Send(error_event.into_bytes())],
            full(200, "application/json", json_error),
        ])
        .await;
        let llm = FastGptLlm::new(Config { detail: true, ..config(&base) }).expect("valid");
        let ask = [ChatMessage::new(Role::User, "ok?")];
        let (text, error) = collect(llm.stream(&ask, &[]).await.expect("starts")).await;
        assert_eq!((text.as_str(), error.is_none()), ("Yes", true), "{error:?}");
        let (text, error) = collect(llm.stream(&ask, &[]).await.expect("starts")).await;
        assert_eq!(text, "Par");
        assert!(
            matches!(error, Some(ProviderError::Protocol { ref message, .. }) if message == "余额不足"),
            "{error:?}"
        );
        let (_, error) = collect(llm.stream(&ask, &[]).await.expect("starts")).await;
        assert!(
            matches!(error, Some(ProviderError::Protocol { ref message, .. }) if message == "514: Api Key is invalid"),
            "{error:?}"
        );
    }
}
