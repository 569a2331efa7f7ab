//! The Coze mock: the Coze v3 chat API, `POST /v3/chat` with `stream: true`, as Coze's API
//! reference describes it ("发起对话 / Create chat", <https://www.coze.cn/open/docs/developer_guides/chat_v3>):
//! `Authorization: Bearer {personal_access_token}` (else Coze's JSON error `{code: 4100, msg}`),
//! a body `{bot_id, user_id, stream, additional_messages: [{role, content, content_type}]}` with
//! the conversation in the query (`?conversation_id=`; none starts a new one, an unknown one is
//! error 4200), and an SSE answer with `event:` names: `conversation.chat.created` (with the
//! `conversation_id`), `conversation.chat.in_progress`, `conversation.message.delta` (content
//! pieces of the `answer`), `conversation.message.completed`, `conversation.chat.completed` and
//! `done`; told to fail, `conversation.chat.failed` with `last_error {code, msg}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Events, HttpMock, HttpRequest, full_response, streamed_response};

#[derive(Debug, Default)]
struct State {
    reply: String,
    fail: bool,
    /// conversation id → the user messages added to it.
    conversations: BTreeMap<String, Vec<String>>,
    /// (query, body) of every chat.
    requests: Vec<(BTreeMap<String, String>, Value)>,
}

/// A Coze bot on loopback.
pub struct CozeMock {
    http: HttpMock,
    state: Arc<Mutex<State>>,
    /// `request`, `first_delta`, `completed` / `failed` as they happen.
    pub events: Events,
}

impl CozeMock {
    /// Starts the API for bot `bot_id`; requests must carry `token`.
    pub async fn start(token: &str, bot_id: &str, reply: &str) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State { reply: reply.into(), ..State::default() }));
        let events = Events::default();
        let (token, bot, shared, log) = (token.to_owned(), bot_id.to_owned(), Arc::clone(&state), events.clone());
        let http = HttpMock::start(move |request| {
            let answer = answer(&token, &bot, &shared, &log, request);
            async move { answer }
        })
        .await?;
        Ok(Self { http, state, events })
    }

    /// The `base_url` of the provider entry.
    pub fn base_url(&self) -> String {
        self.http.url("")
    }

    /// The answer of the next chats.
    pub fn reply(&self, text: &str) {
        let mut state = self.lock();
        state.reply = text.into();
        state.fail = false;
    }

    /// The next chat fails (`conversation.chat.failed`).
    pub fn fail_next(&self) {
        self.lock().fail = true;
    }

    /// The user messages of each conversation.
    pub fn conversations(&self) -> BTreeMap<String, Vec<String>> {
        self.lock().conversations.clone()
    }

    /// The query parameters and body of every chat request.
    pub fn requests(&self) -> Vec<(BTreeMap<String, String>, Value)> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn coze_error(code: u32, msg: &str) -> hyper::Response<super::HttpBody> {
    // Coze answers its errors with HTTP 200 and a JSON body.
    full_response(200, "application/json", json!({"code": code, "msg": msg}).to_string())
}

fn answer(
    token: &str,
    bot: &str,
    state: &Mutex<State>,
    events: &Events,
    request: HttpRequest,
) -> hyper::Response<super::HttpBody> {
    if request.head.method != "POST" || request.head.path() != "/v3/chat" {
        return full_response(404, "text/plain", "404 page not found");
    }
    if request.head.header("authorization") != Some(&format!("Bearer {token}")) {
        return coze_error(4100, "authentication is invalid");
    }
    let body = request.json();
    let query = request.head.query();
    let messages = body.get("additional_messages").and_then(Value::as_array).cloned().unwrap_or_default();
    let question = messages
        .last()
        .filter(|m| m.get("role") == Some(&json!("user")) && m.get("content_type") == Some(&json!("text")))
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .map(str::to_owned);
    let user_ok = body.get("user_id").and_then(Value::as_str).is_some_and(|u| !u.is_empty());
    let (Some(question), true, true) = (question, body.get("bot_id") == Some(&json!(bot)), user_ok) else {
        return coze_error(4000, "Request parameter error: bot_id, user_id and a user text message are required");
    };
    if body.get("stream") != Some(&json!(true)) {
        return coze_error(4000, "the mock only streams");
    }
    let mut st = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    st.requests.push((query.clone(), body.clone()));
    let conversation = match query.get("conversation_id") {
        Some(id) if !st.conversations.contains_key(id) => return coze_error(4200, "conversation not found"),
        Some(id) => id.clone(),
        None => {
            let id = format!("74{:017}", st.conversations.len() + 1);
            st.conversations.insert(id.clone(), Vec::new());
            id
        }
    };
    if let Some(added) = st.conversations.get_mut(&conversation) {
        added.push(question);
    }
    let fail = std::mem::take(&mut st.fail);
    let reply = st.reply.clone();
    drop(st);
    events.push("request");
    let (tx, response) = streamed_response(200, "text/event-stream");
    let events = events.clone();
    let bot = bot.to_owned();
    tokio::spawn(async move {
        let chat = json!({"id": "7400000000000000001", "conversation_id": conversation, "bot_id": bot,
            "created_at": 1_718_792_949, "last_error": {"code": 0, "msg": ""}, "status": "created",
            "usage": {"token_count": 0, "output_count": 0, "input_count": 0}});
        let send = |name: &str, data: Value| {
            let tx = tx.clone();
            let frame = format!("event:{name}\ndata:{data}\n\n");
            async move { tx.send(Ok(Bytes::from(frame))).await.is_ok() }
        };
        if !send("conversation.chat.created", chat.clone()).await {
            return;
        }
        let mut progress = chat.clone();
        progress["status"] = json!("in_progress");
        let _ = send("conversation.chat.in_progress", progress).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if fail {
            let mut failed = chat.clone();
            failed["status"] = json!("failed");
            failed["last_error"] = json!({"code": 4011, "msg": "The balance of the account is insufficient"});
            events.push("failed");
            let _ = send("conversation.chat.failed", failed).await;
            let _ = send("done", json!("[DONE]")).await;
            return;
        }
        let message = |content: &str| {
            json!({"id": "7400000000000000002", "conversation_id": conversation, "bot_id": bot,
                "chat_id": "7400000000000000001", "role": "assistant", "type": "answer",
                "content": content, "content_type": "text"})
        };
        for (i, piece) in reply.split_inclusive(' ').enumerate() {
            if !send("conversation.message.delta", message(piece)).await {
                return;
            }
            if i == 0 {
                events.push("first_delta");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = send("conversation.message.completed", message(&reply)).await;
        let mut follow_up = message("Anything else?");
        follow_up["type"] = json!("follow_up");
        let _ = send("conversation.message.completed", follow_up).await;
        let mut completed = chat.clone();
        completed["status"] = json!("completed");
        let _ = send("conversation.chat.completed", completed).await;
        let _ = send("done", json!("[DONE]")).await;
        events.push("completed");
    });
    response
}
