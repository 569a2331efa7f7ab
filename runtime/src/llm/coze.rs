//! `type: coze`: a Coze bot through the Coze v3 chat API, streamed.
//!
//! Follows Coze's API reference "发起对话 / Create chat" (`POST /v3/chat`,
//! <https://www.coze.cn/open/docs/developer_guides/chat_v3>): `Authorization: Bearer
//! {personal_access_token}`, a JSON body `{bot_id, user_id, stream: true, auto_save_history: true,
//! additional_messages: [{role: user, content, content_type: text}]}`, the conversation in the
//! query (`?conversation_id=`), and an SSE answer with `event:` names:
//! `conversation.chat.created` (its `conversation_id` is kept), `conversation.message.delta`
//! (`content` deltas of `type: answer`), `conversation.chat.completed` (the end),
//! `conversation.chat.failed` (`last_error {code, msg}`), `error` (`{code, msg}`) and `done`.
//! A JSON answer `{code, msg}` (Coze's error shape) is an error too.
//!
//! The Python server keeps one Coze conversation per device session; here the conversation is
//! found from the dialogue (see [`super::chat_app`]). Tools are not offered: a Coze bot has its
//! own plugins.

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

/// `LLM.<name>` with `type: coze`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The bot's id (a number or a string in YAML).
    #[serde(deserialize_with = "chat_app::string_or_number")]
    pub bot_id: String,
    /// The user id the chats belong to (a number or a string in YAML).
    #[serde(deserialize_with = "chat_app::string_or_number")]
    pub user_id: String,
    /// The personal access token (secret).
    pub personal_access_token: String,
    /// The API root: `https://api.coze.cn` (the Python server's), or `https://api.coze.com`.
    pub base_url: String,
    /// Seconds for the answer to start, and the longest silence while it streams.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bot_id: String::new(),
            user_id: String::new(),
            personal_access_token: String::new(),
            base_url: "https://api.coze.cn".into(),
            timeout: 120,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("bot_id", &self.bot_id)
            .field("user_id", &self.user_id)
            .field("personal_access_token", &chat_app::redacted(&self.personal_access_token))
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!(
            "{} bot {}, personal_access_token {}",
            self.base_url,
            if self.bot_id.is_empty() { "<unset>" } else { &self.bot_id },
            chat_app::redacted(&self.personal_access_token)
        )
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Llm>, ProviderError> {
    Ok(Arc::new(CozeLlm::new(cfg.clone())?))
}

/// A Coze bot.
pub struct CozeLlm {
    client: Client,
    url: String,
    cfg: Config,
    timeout: Duration,
    conversations: Arc<Conversations>,
}

impl CozeLlm {
    /// Validates the entry (URL, timeout); empty credentials are errors at request time.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let timeout = timeout_from(cfg.timeout, "LLM.coze")?;
        let url = crate::remote::endpoint(&cfg.base_url, "/v3/chat");
        check_url(&url, "LLM.coze")?;
        let client = http_client(timeout, None)?;
        Ok(Self { client, url, cfg, timeout, conversations: Arc::default() })
    }

    /// The request body.
    fn request_body(&self, question: &Question) -> Value {
        json!({
            "bot_id": self.cfg.bot_id.trim(),
            "user_id": self.cfg.user_id.trim(),
            "stream": true,
            "auto_save_history": true,
            "additional_messages": [
                {"role": "user", "content": question.query, "content_type": "text"},
            ],
        })
    }
}

#[async_trait]
impl super::Llm for CozeLlm {
    async fn stream(&self, messages: &[ChatMessage], _tools: &[ToolSpec]) -> Result<LlmStream, ProviderError> {
        let token = self.cfg.personal_access_token.trim();
        for (key, value) in
            [("personal_access_token", token), ("bot_id", &self.cfg.bot_id), ("user_id", &self.cfg.user_id)]
        {
            if value.trim().is_empty() {
                return Err(ProviderError::Config(format!("LLM.coze: {key} is not set")));
            }
        }
        let question = chat_app::question(messages, "LLM.coze")?;
        let mut found = self.conversations.find(&question.prior);
        loop {
            let mut recorder =
                Recorder::new(Arc::clone(&self.conversations), &question, found.take(), self.cfg.user_id.clone());
            let mut request = self.client.post(&self.url).bearer_auth(token).json(&self.request_body(&question));
            if let Some(id) = &recorder.id {
                request = request.query(&[("conversation_id", id)]);
            }
            let mut response = chat_app::send(request, &self.url, self.timeout, "Coze response").await?;
            if crate::remote::is_json(&response) {
                // Coze answers its errors as JSON `{code, msg}` (HTTP 200).
                let body = chat_app::read_body(&mut response, &self.url, self.timeout, "Coze response").await?;
                let data: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let code = chat_app::json_text(data.get("code"));
                let msg = chat_app::json_text(data.get("msg"));
                // A conversation Coze no longer knows: forget it and start a new one, once.
                if let Some(id) = recorder.id.take_if(|_| msg.to_lowercase().contains("conversation")) {
                    tracing::warn!(conversation = %id, "Coze refused the conversation ({code}: {msg}); starting a new one");
                    self.conversations.forget(&id);
                    continue;
                }
                return Err(chat_app::vendor_error(&self.url, &code, if msg.is_empty() { &body } else { &msg }));
            }
            let events = CozeEvents { url: self.url.clone(), recorder };
            return Ok(chat_app::sse_stream(response, self.url.clone(), self.timeout, "Coze stream", events));
        }
    }
}

/// Reads Coze's events.
struct CozeEvents {
    url: String,
    recorder: Recorder,
}

impl CozeEvents {
    fn error(&self, error: Option<&Value>, what: &str) -> Out {
        let code = chat_app::json_text(error.and_then(|e| e.get("code")));
        let msg = chat_app::json_text(error.and_then(|e| e.get("msg")));
        let message = if msg.is_empty() { what.to_owned() } else { msg };
        Out::Error(chat_app::vendor_error(&self.url, &code, &message))
    }
}

impl Events for CozeEvents {
    fn event(&mut self, event: SseEvent, out: &mut Vec<Out>) {
        let data = serde_json::from_str::<Value>(&event.data).unwrap_or(Value::Null);
        if let Some(id) = data.get("conversation_id").and_then(Value::as_str) {
            self.recorder.learn(id);
        }
        match event.event.as_str() {
            "conversation.message.delta" => {
                let kind = data.get("type").and_then(Value::as_str).unwrap_or("answer");
                let role = data.get("role").and_then(Value::as_str).unwrap_or("assistant");
                if kind == "answer" && role == "assistant" {
                    let content = data.get("content").and_then(Value::as_str).unwrap_or_default();
                    if !content.is_empty() {
                        out.push(Out::Text(content.to_owned()));
                    }
                }
            }
            "conversation.chat.completed" | "done" => out.push(Out::End),
            "conversation.chat.failed" => out.push(self.error(data.get("last_error"), "the chat failed")),
            "conversation.chat.requires_action" => out.push(Out::Error(chat_app::vendor_error(
                &self.url,
                "requires_action",
                "the bot asked for a local plugin, which is not supported",
            ))),
            "error" => out.push(self.error(Some(&data), "error event")),
            // A JSON answer (no event name): Coze's `{code, msg}`, an error unless code is 0.
            "" if data.get("code").is_some_and(|c| c.as_i64() != Some(0)) => {
                out.push(self.error(Some(&data), "error"));
            }
            // conversation.chat.created / in_progress, conversation.message.completed,
            // conversation.audio.delta …
            _ => {}
        }
    }

    fn body_ended(&mut self, out: &mut Vec<Out>) {
        out.push(Out::Error(ProviderError::Protocol {
            url: self.url.clone(),
            message: "the stream ended before `conversation.chat.completed`".into(),
        }));
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
        Config {
            bot_id: "7379462189365198898".into(),
            user_id: "123".into(),
            personal_access_token: "pat_secret".into(),
            base_url: base.into(),
            timeout: 5,
        }
    }

    fn ev(name: &str, data: Value) -> String {
        format!("event:{name}\ndata:{data}\n\n")
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

    fn chat(conversation: &str, parts: &[&str]) -> Vec<u8> {
        let mut body = ev(
            "conversation.chat.created",
            json!({"id": "chat1", "conversation_id": conversation, "bot_id": "b", "status": "created"}),
        );
        for part in parts {
            body.push_str(&ev(
                "conversation.message.delta",
                json!({"id": "m", "conversation_id": conversation, "role": "assistant", "type": "answer",
                    "content": part, "content_type": "text", "chat_id": "chat1"}),
            ));
        }
        body.push_str(&ev(
            "conversation.message.completed",
            json!({"role": "assistant", "type": "answer", "content": parts.concat()}),
        ));
        body.push_str(&ev(
            "conversation.message.completed",
            json!({"role": "assistant", "type": "follow_up", "content": "Ask me more?"}),
        ));
        body.push_str(&ev("conversation.chat.completed", json!({"id": "chat1", "status": "completed"})));
        body.push_str("event:done\ndata:\"[DONE]\"\n\n");
        body.into_bytes()
    }

    #[test]
    fn ids_may_be_numbers_and_debug_hides_the_token() {
        let cfg: Config =
            serde_yaml_ng::from_str("bot_id: 7379462189365198898\nuser_id: \"42\"\npersonal_access_token: pat_x\n")
                .expect("parses");
        assert_eq!((cfg.bot_id.as_str(), cfg.user_id.as_str()), ("7379462189365198898", "42"));
        assert!(!format!("{cfg:?} {}", cfg.summary()).contains("pat_x"));
    }

    #[tokio::test]
    async fn request_follows_the_v3_api_and_keeps_the_conversation() {
        let (base, mut requests) = serve(vec![
            vec![stream_head("text/event-stream"), Step::Send(chat("conv-9", &["你", "好！"]))],
            vec![stream_head("text/event-stream"), Step::Send(chat("conv-9", &["Again."]))],
        ])
        .await;
        let llm = CozeLlm::new(config(&base)).expect("valid");
        let mut dialogue = vec![ChatMessage::new(Role::System, "p"), ChatMessage::new(Role::User, "hi")];
        let (text, error) = collect(llm.stream(&dialogue, &[]).await.expect("starts")).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(text, "你好！");
        let first = requests.recv().await.expect("request");
        assert_eq!(first.target(), "/v3/chat");
        assert_eq!(first.header("authorization").as_deref(), Some("Bearer pat_secret"));
        assert_eq!(
            first.json(),
            json!({"bot_id": "7379462189365198898", "user_id": "123", "stream": true, "auto_save_history": true,
                "additional_messages": [{"role": "user", "content": "hi", "content_type": "text"}]})
        );
        dialogue.push(ChatMessage::new(Role::Assistant, "你好！"));
        dialogue.push(ChatMessage::new(Role::User, "more"));
        assert_eq!(collect(llm.stream(&dialogue, &[]).await.expect("starts")).await.0, "Again.");
        let second = requests.recv().await.expect("request");
        assert_eq!(second.target(), "/v3/chat?conversation_id=conv-9");
    }

    #[tokio::test]
    async fn failed_chat_error_event_and_json_error() {
        let failed = [
            ev("conversation.chat.created", json!({"id": "c", "conversation_id": "x"})),
            ev("conversation.message.delta", json!({"role": "assistant", "type": "answer", "content": "Hm"})),
            ev(
                "conversation.chat.failed",
                json!({"id": "c", "status": "failed",
                "last_error": {"code": 4011, "msg": "Insufficient credits"}}),
            ),
        ]
        .concat();
        let error = ev("error", json!({"code": 4000, "msg": "Request parameter error"}));
        let json_error = br#"{"code":4100,"msg":"authentication is invalid"}"#;
        let (base, _requests) = serve(vec![
            vec![stream_head("text/event-stream"), Step::Send(failed.into_bytes())],
            vec![stream_head("text/event-stream"), Step::Send(error.into_bytes())],
            full(200, "application/json", json_error),
        ])
        .await;
        let llm = CozeLlm::new(config(&base)).expect("valid");
        let ask = [ChatMessage::new(Role::User, "hi")];
        let expect = |(text, error): (String, Option<ProviderError>), want_text: &str, want: &str| {
            assert_eq!(text, want_text);
            match error {
                Some(ProviderError::Protocol { message, .. }) => assert_eq!(message, want),
                other => panic!("{other:?}"),
            }
        };
        expect(collect(llm.stream(&ask, &[]).await.expect("starts")).await, "Hm", "4011: Insufficient credits");
        expect(collect(llm.stream(&ask, &[]).await.expect("starts")).await, "", "4000: Request parameter error");
        // Coze's JSON error (HTTP 200) fails the request itself.
        match llm.stream(&ask, &[]).await {
            Err(ProviderError::Protocol { message, .. }) => assert_eq!(message, "4100: authentication is invalid"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn a_conversation_coze_no_longer_knows_is_started_again() {
        let gone = br#"{"code":4200,"msg":"conversation not found"}"#;
        let (base, mut requests) = serve(vec![
            vec![stream_head("text/event-stream"), Step::Send(chat("old", &["One."]))],
            full(200, "application/json", gone),
            vec![stream_head("text/event-stream"), Step::Send(chat("new", &["Two."]))],
            vec![stream_head("text/event-stream"), Step::Send(chat("new", &["Three."]))],
        ])
        .await;
        let llm = CozeLlm::new(config(&base)).expect("valid");
        let mut dialogue = vec![ChatMessage::new(Role::User, "1")];
        for (answer, question) in [("One.", "2"), ("Two.", "3")] {
            assert_eq!(collect(llm.stream(&dialogue, &[]).await.expect("starts")).await.0, answer);
            dialogue.push(ChatMessage::new(Role::Assistant, answer));
            dialogue.push(ChatMessage::new(Role::User, question));
        }
        assert_eq!(collect(llm.stream(&dialogue, &[]).await.expect("starts")).await.0, "Three.");
        let targets: Vec<String> = [(); 4].iter().map(|_| requests.try_recv().expect("request").target()).collect();
        assert_eq!(targets, ["/v3/chat", "/v3/chat?conversation_id=old", "/v3/chat", "/v3/chat?conversation_id=new"]);
    }

    #[tokio::test]
    async fn missing_credentials_are_named() {
        let llm = CozeLlm::new(Config { bot_id: String::new(), ..config("http://127.0.0.1:9") }).expect("builds");
        match llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await {
            Err(ProviderError::Config(m)) => assert!(m.contains("bot_id"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
        assert!(CozeLlm::new(Config::default()).is_ok());
    }
}
