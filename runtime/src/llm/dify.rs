//! `type: dify`: a Dify app through its service API, streamed (`response_mode: streaming`).
//!
//! Follows Dify's service API documentation (the app's "API Access" page, `POST /chat-messages`,
//! `POST /workflows/run`, `POST /completion-messages`; <https://docs.dify.ai/guides/application-publishing/developing-with-apis>):
//! `Authorization: Bearer {api_key}`, a JSON body, and an SSE answer whose `data:` objects name
//! their `event`.
//!
//! - `mode: chat-messages` (default): `{inputs: {}, query, response_mode, user, conversation_id}`;
//!   `message` / `agent_message` events carry `answer` deltas, `message_end` ends the answer,
//!   `message_replace` (moderation output) is skipped as the Python server does. The conversation
//!   id is kept per conversation found from the dialogue (see [`super::chat_app`]): the Python
//!   server keeps it per device session, which the [`super::Llm`] trait does not name.
//! - `mode: workflows/run` and `completion-messages`: `{inputs: {query}, response_mode, user}`; a
//!   workflow's `text_chunk` events stream its text, `workflow_finished` ends it (its
//!   `outputs.answer` is the answer when nothing was streamed; a status other than `succeeded` is
//!   an error).
//! - An `error` event (`status`, `code`, `message`) ends the stream with a
//!   [`ProviderError::Protocol`] carrying the code and message.
//!
//! Tools are not offered: a Dify app has its own. The local prompt is not sent (it is set in
//! Dify), as in the Python server.

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

/// The modes of the Python entry (the path after `base_url`).
const MODES: [&str; 3] = ["chat-messages", "workflows/run", "completion-messages"];

/// The `user` of requests outside a conversation (workflows, completions).
const PLAIN_USER: &str = "xiaozhi-server";

/// `LLM.<name>` with `type: dify`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The service API root (`https://api.dify.ai/v1` or a self-hosted `/v1`).
    pub base_url: String,
    /// The app's API key (secret).
    pub api_key: String,
    /// `chat-messages`, `workflows/run` or `completion-messages`.
    pub mode: String,
    /// Seconds for the answer to start, and the longest silence while it streams.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: "https://api.dify.ai/v1".into(),
            api_key: String::new(),
            mode: "chat-messages".into(),
            timeout: 120,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("base_url", &self.base_url)
            .field("api_key", &chat_app::redacted(&self.api_key))
            .field("mode", &self.mode)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("{} ({}), api_key {}", self.base_url, self.mode, chat_app::redacted(&self.api_key))
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Llm>, ProviderError> {
    Ok(Arc::new(DifyLlm::new(cfg.clone())?))
}

/// A Dify app.
pub struct DifyLlm {
    client: Client,
    url: String,
    cfg: Config,
    timeout: Duration,
    conversations: Arc<Conversations>,
}

impl DifyLlm {
    /// Validates the entry (URL, mode, timeout); an empty key is an error at request time.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let mode = cfg.mode.trim().trim_matches('/');
        if !MODES.contains(&mode) {
            return Err(ProviderError::Config(format!(
                "LLM.dify: mode `{}` is not one of {}",
                cfg.mode,
                MODES.join(", ")
            )));
        }
        let timeout = timeout_from(cfg.timeout, "LLM.dify")?;
        let url = format!("{}/{mode}", cfg.base_url.trim().trim_end_matches('/'));
        check_url(&url, "LLM.dify")?;
        let client = http_client(timeout, None)?;
        Ok(Self { client, url, cfg: Config { mode: mode.to_owned(), ..cfg }, timeout, conversations: Arc::default() })
    }

    fn chat_mode(&self) -> bool {
        self.cfg.mode == "chat-messages"
    }

    /// The request body for `question` (in the conversation `recorder` names, in chat mode).
    fn request_body(&self, question: &Question, recorder: &Recorder) -> Value {
        if self.chat_mode() {
            json!({
                "inputs": {},
                "query": question.query,
                "response_mode": "streaming",
                "user": recorder.user(),
                "conversation_id": recorder.id.clone().unwrap_or_default(),
            })
        } else {
            json!({
                "inputs": {"query": question.query},
                "response_mode": "streaming",
                "user": PLAIN_USER,
            })
        }
    }
}

#[async_trait]
impl super::Llm for DifyLlm {
    async fn stream(&self, messages: &[ChatMessage], _tools: &[ToolSpec]) -> Result<LlmStream, ProviderError> {
        let key = self.cfg.api_key.trim();
        if key.is_empty() {
            return Err(ProviderError::Config("LLM.dify: api_key is not set".into()));
        }
        let question = chat_app::question(messages, "LLM.dify")?;
        let mut found = if self.chat_mode() { self.conversations.find(&question.prior) } else { None };
        let (recorder, response) = loop {
            let user = format!("xiaozhi-{}", uuid::Uuid::new_v4().simple());
            let mut recorder = Recorder::new(Arc::clone(&self.conversations), &question, found.take(), user);
            let body = self.request_body(&question, &recorder);
            let request = self.client.post(&self.url).bearer_auth(key).json(&body);
            match chat_app::send(request, &self.url, self.timeout, "Dify response").await {
                Ok(response) => break (recorder, response),
                // A conversation Dify no longer knows (deleted): forget it and start a new one, once.
                Err(ProviderError::Status { status: 404, .. }) if recorder.id.is_some() => {
                    if let Some(id) = recorder.id.take() {
                        tracing::warn!(conversation = %id, "Dify does not know the conversation; starting a new one");
                        self.conversations.forget(&id);
                    }
                }
                // The question stays recorded in the conversation, as the session records it.
                Err(e) => return Err(e),
            }
        };
        let events = DifyEvents {
            url: self.url.clone(),
            workflow: self.cfg.mode == "workflows/run",
            recorder: self.chat_mode().then_some(recorder),
            streamed: false,
        };
        Ok(chat_app::sse_stream(response, self.url.clone(), self.timeout, "Dify stream", events))
    }
}

/// Reads Dify's events.
struct DifyEvents {
    url: String,
    /// `workflows/run`: the answer ends with `workflow_finished`.
    workflow: bool,
    /// Chat mode: the conversation being continued.
    recorder: Option<Recorder>,
    /// Whether any text came.
    streamed: bool,
}

impl DifyEvents {
    fn text(&mut self, text: &str, out: &mut Vec<Out>) {
        if !text.is_empty() {
            self.streamed = true;
            out.push(Out::Text(text.to_owned()));
        }
    }
}

impl Events for DifyEvents {
    fn event(&mut self, event: SseEvent, out: &mut Vec<Out>) {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            tracing::warn!(url = %self.url, "skipping a Dify event that is not JSON");
            return;
        };
        if let (Some(recorder), Some(id)) =
            (self.recorder.as_mut(), data.get("conversation_id").and_then(Value::as_str))
        {
            recorder.learn(id);
        }
        let name = data.get("event").and_then(Value::as_str).unwrap_or_default();
        match name {
            "message" | "agent_message" => {
                let answer = data.get("answer").and_then(Value::as_str).unwrap_or_default();
                self.text(answer, out);
            }
            "text_chunk" => {
                let text = data.pointer("/data/text").and_then(Value::as_str).unwrap_or_default();
                self.text(text, out);
            }
            "message_end" if !self.workflow => out.push(Out::End),
            "workflow_finished" if self.workflow => {
                let status = data.pointer("/data/status").and_then(Value::as_str).unwrap_or_default();
                if status != "succeeded" {
                    let message = chat_app::json_text(data.pointer("/data/error"));
                    out.push(Out::Error(chat_app::vendor_error(&self.url, &format!("workflow {status}"), &message)));
                    return;
                }
                if !self.streamed {
                    let answer = chat_app::json_text(data.pointer("/data/outputs/answer"));
                    self.text(&answer, out);
                }
                out.push(Out::End);
            }
            "error" => {
                let code =
                    format!("{} {}", chat_app::json_text(data.get("status")), chat_app::json_text(data.get("code")));
                let message = chat_app::json_text(data.get("message"));
                out.push(Out::Error(chat_app::vendor_error(&self.url, code.trim(), &message)));
            }
            // A JSON answer that is not an event (an error object without `event`).
            "" if data.get("code").is_some() && data.get("message").is_some() => {
                let code = chat_app::json_text(data.get("code"));
                let message = chat_app::json_text(data.get("message"));
                out.push(Out::Error(chat_app::vendor_error(&self.url, &code, &message)));
            }
            // ping, message_replace (moderation's full replacement, skipped like the Python
            // server), workflow/node progress, tts_message, message_file, agent_thought …
            _ => {}
        }
    }

    fn body_ended(&mut self, out: &mut Vec<Out>) {
        let end = if self.workflow { "workflow_finished" } else { "message_end" };
        out.push(Out::Error(ProviderError::Protocol {
            url: self.url.clone(),
            message: format!("the stream ended before `{end}`"),
        }));
    }

    fn recorder(&mut self) -> Option<&mut Recorder> {
        self.recorder.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::llm::{Llm, LlmDelta, Role};
    use crate::remote::test_server::{Step, full, serve, stream_head};

    fn config(base: &str) -> Config {
        Config { base_url: format!("{base}/v1"), api_key: "app-secret".into(), ..Config::default() }
    }

    fn ev(value: Value) -> String {
        format!("data: {value}\n\n")
    }

    /// (text, error) of a whole stream.
    async fn collect(stream: LlmStream) -> (String, Option<ProviderError>) {
        let items: Vec<_> = stream.collect().await;
        let mut text = String::new();
        let mut error = None;
        for item in items {
            match item {
                Ok(LlmDelta::Text(t)) => text.push_str(&t),
                Ok(LlmDelta::ToolCalls(_)) => panic!("no tools"),
                Err(e) => error = Some(e),
            }
        }
        (text, error)
    }

    fn chat_body(conversation: &str, parts: &[&str]) -> Vec<u8> {
        let mut body = ev(json!({"event": "workflow_started", "conversation_id": conversation, "data": {}}));
        body.push_str("event: ping\n\n");
        for part in parts {
            body.push_str(&ev(json!({"event": "message", "task_id": "t", "message_id": "m",
                "conversation_id": conversation, "answer": part, "created_at": 1})));
        }
        body.push_str(&ev(json!({"event": "message_replace", "conversation_id": conversation, "answer": "REPLACED"})));
        body.push_str(&ev(json!({"event": "message_end", "conversation_id": conversation, "metadata": {}})));
        body.into_bytes()
    }

    #[test]
    fn config_checks_and_debug_hides_the_key() {
        assert!(DifyLlm::new(Config { mode: "chat".into(), ..config("http://x") }).is_err());
        assert!(DifyLlm::new(Config { base_url: "nope".into(), ..Config::default() }).is_err());
        assert!(DifyLlm::new(Config::default()).is_ok(), "an empty key builds");
        let shown = format!("{:?} {}", config("http://x"), config("http://x").summary());
        assert!(!shown.contains("app-secret"), "{shown}");
    }

    #[tokio::test]
    async fn chat_request_follows_the_api_and_keeps_the_conversation() {
        let (base, mut requests) = serve(vec![
            vec![stream_head("text/event-stream"), Step::Send(chat_body("conv-1", &["Hel", "lo!"]))],
            vec![stream_head("text/event-stream"), Step::Send(chat_body("conv-1", &["Again."]))],
        ])
        .await;
        let llm = DifyLlm::new(config(&base)).expect("valid");
        let mut dialogue = vec![ChatMessage::new(Role::System, "ignored"), ChatMessage::new(Role::User, "hi")];
        let (text, error) = collect(llm.stream(&dialogue, &[]).await.expect("starts")).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(text, "Hello!");
        let first = requests.recv().await.expect("request");
        assert_eq!(first.method(), "POST");
        assert_eq!(first.target(), "/v1/chat-messages");
        assert_eq!(first.header("authorization").as_deref(), Some("Bearer app-secret"));
        assert!(first.header("content-type").is_some_and(|v| v.contains("application/json")));
        let body = first.json();
        let user = body["user"].as_str().expect("user").to_owned();
        assert!(user.starts_with("xiaozhi-"));
        assert_eq!(
            body,
            json!({"inputs": {}, "query": "hi", "response_mode": "streaming", "user": user, "conversation_id": ""})
        );

        dialogue.push(ChatMessage::new(Role::Assistant, "Hello!"));
        dialogue.push(ChatMessage::new(Role::User, "once more"));
        let (text, _) = collect(llm.stream(&dialogue, &[]).await.expect("starts")).await;
        assert_eq!(text, "Again.");
        let second = requests.recv().await.expect("request").json();
        assert_eq!(second["conversation_id"], "conv-1");
        assert_eq!(second["user"], user.as_str(), "the conversation's user");
        assert_eq!(second["query"], "once more");
    }

    #[tokio::test]
    async fn a_conversation_dify_no_longer_knows_is_started_again() {
        let gone = br#"{"code":"not_found","message":"Conversation Not Exists.","status":404}"#;
        let (base, mut requests) = serve(vec![
            vec![stream_head("text/event-stream"), Step::Send(chat_body("old", &["One."]))],
            full(404, "application/json", gone),
            vec![stream_head("text/event-stream"), Step::Send(chat_body("new", &["Two."]))],
            vec![stream_head("text/event-stream"), Step::Send(chat_body("new", &["Three."]))],
        ])
        .await;
        let llm = DifyLlm::new(config(&base)).expect("valid");
        let mut dialogue = vec![ChatMessage::new(Role::User, "1")];
        for (answer, question) in [("One.", "2"), ("Two.", "3")] {
            assert_eq!(collect(llm.stream(&dialogue, &[]).await.expect("starts")).await.0, answer);
            dialogue.push(ChatMessage::new(Role::Assistant, answer));
            dialogue.push(ChatMessage::new(Role::User, question));
        }
        assert_eq!(collect(llm.stream(&dialogue, &[]).await.expect("starts")).await.0, "Three.");
        let ids: Vec<Value> =
            [(); 4].iter().map(|_| requests.try_recv().expect("request").json()["conversation_id"].clone()).collect();
        assert_eq!(ids, [json!(""), json!("old"), json!(""), json!("new")]);
    }

    #[tokio::test]
    async fn error_event_ends_the_stream_with_code_and_message() {
        let mut body = ev(json!({"event": "message", "conversation_id": "c", "answer": "Hi"}));
        body.push_str(&ev(json!({"event": "error", "task_id": "t", "message_id": "m", "status": 400,
            "code": "provider_quota_exceeded", "message": "Your quota has been used up"})));
        let (base, _requests) =
            serve(vec![vec![stream_head("text/event-stream"), Step::Send(body.into_bytes())]]).await;
        let llm = DifyLlm::new(config(&base)).expect("valid");
        let (text, error) =
            collect(llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await.expect("starts")).await;
        assert_eq!(text, "Hi");
        match error {
            Some(ProviderError::Protocol { message, .. }) => {
                assert_eq!(message, "400 provider_quota_exceeded: Your quota has been used up");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn http_error_and_missing_key() {
        let answer = br#"{"code":"unauthorized","message":"Access token is invalid","status":401}"#;
        let (base, _requests) = serve(vec![full(401, "application/json", answer)]).await;
        let llm = DifyLlm::new(config(&base)).expect("valid");
        match llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await {
            Err(ProviderError::Status { status: 401, body, .. }) => assert!(body.contains("Access token is invalid")),
            other => panic!("{:?}", other.err()),
        }
        let llm = DifyLlm::new(Config { api_key: " ".into(), ..config(&base) }).expect("valid");
        match llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await {
            Err(ProviderError::Config(m)) => assert!(m.contains("api_key"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn workflow_mode_streams_text_chunks_and_fails_on_a_failed_run() {
        let ok = [
            ev(json!({"event": "workflow_started", "data": {"id": "w"}})),
            ev(json!({"event": "text_chunk", "data": {"text": "It is "}})),
            ev(json!({"event": "text_chunk", "data": {"text": "noon."}})),
            ev(json!({"event": "workflow_finished", "data": {"status": "succeeded", "outputs": {"answer": "It is noon."}}})),
        ]
        .concat();
        let quiet = ev(
            json!({"event": "workflow_finished", "data": {"status": "succeeded", "outputs": {"answer": "Only here."}}}),
        );
        let failed = ev(json!({"event": "workflow_finished", "data": {"status": "failed", "error": "node x broke"}}));
        let (base, mut requests) = serve(vec![
            vec![stream_head("text/event-stream"), Step::Send(ok.into_bytes())],
            vec![stream_head("text/event-stream"), Step::Send(quiet.into_bytes())],
            vec![stream_head("text/event-stream"), Step::Send(failed.into_bytes())],
        ])
        .await;
        let llm = DifyLlm::new(Config { mode: "workflows/run".into(), ..config(&base) }).expect("valid");
        let ask = [ChatMessage::new(Role::User, "time?")];
        assert_eq!(collect(llm.stream(&ask, &[]).await.expect("starts")).await.0, "It is noon.");
        let request = requests.recv().await.expect("request");
        assert_eq!(request.target(), "/v1/workflows/run");
        assert_eq!(
            request.json(),
            json!({"inputs": {"query": "time?"}, "response_mode": "streaming", "user": PLAIN_USER})
        );
        assert_eq!(collect(llm.stream(&ask, &[]).await.expect("starts")).await.0, "Only here.");
        let (_, error) = collect(llm.stream(&ask, &[]).await.expect("starts")).await;
        assert!(
            matches!(error, Some(ProviderError::Protocol { ref message, .. }) if message.contains("node x broke")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_body_cut_before_message_end_is_an_error_after_the_text() {
        let body = ev(json!({"event": "message", "conversation_id": "c", "answer": "Half"}));
        let (base, _requests) =
            serve(vec![vec![stream_head("text/event-stream"), Step::Send(body.into_bytes())]]).await;
        let llm = DifyLlm::new(config(&base)).expect("valid");
        let (text, error) =
            collect(llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await.expect("starts")).await;
        assert_eq!(text, "Half");
        assert!(matches!(error, Some(ProviderError::Protocol { .. })), "{error:?}");
    }
}
