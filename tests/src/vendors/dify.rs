//! The Dify mock: a Dify app's service API, `POST /v1/chat-messages` with `response_mode:
//! streaming`, as Dify's API documentation describes it (the app's "API Access" page; "Send Chat
//! Message", <https://docs.dify.ai/guides/application-publishing/developing-with-apis>):
//! `Authorization: Bearer {api_key}` (else HTTP 401 `{code: "unauthorized", message, status}`),
//! a JSON body `{inputs, query, response_mode, user, conversation_id}`, conversations that belong
//! to their user (an unknown `conversation_id` is HTTP 404 `Conversation Not Exists.`), and an SSE
//! answer of `data:` objects naming their `event`: `message` deltas of `answer`, then
//! `message_end`; told to fail, an `error` event `{status, code, message}` instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Events, HttpMock, HttpRequest, full_response, streamed_response};

/// What the mock answers next.
#[derive(Debug, Clone, Default)]
struct Script {
    reply: String,
    fail: bool,
}

#[derive(Debug, Default)]
struct State {
    script: Script,
    /// conversation id → (user, queries asked in it).
    conversations: BTreeMap<String, (String, Vec<String>)>,
    requests: Vec<Value>,
}

/// A Dify app on loopback.
pub struct DifyMock {
    http: HttpMock,
    state: Arc<Mutex<State>>,
    /// `request`, `first_delta`, `end` / `error` as they happen.
    pub events: Events,
}

impl DifyMock {
    /// Starts the app; requests must carry `api_key`.
    pub async fn start(api_key: &str, reply: &str) -> anyhow::Result<Self> {
        let state =
            Arc::new(Mutex::new(State { script: Script { reply: reply.into(), fail: false }, ..State::default() }));
        let events = Events::default();
        let (key, shared, log) = (api_key.to_owned(), Arc::clone(&state), events.clone());
        let http = HttpMock::start(move |request| {
            let answer = answer(&key, &shared, &log, request);
            async move { answer }
        })
        .await?;
        Ok(Self { http, state, events })
    }

    /// The `base_url` of the provider entry.
    pub fn base_url(&self) -> String {
        self.http.url("/v1")
    }

    /// The answer of the next chats.
    pub fn reply(&self, text: &str) {
        self.lock().script = Script { reply: text.into(), fail: false };
    }

    /// The next chat fails with an `error` event.
    pub fn fail_next(&self) {
        self.lock().script.fail = true;
    }

    /// Every request body so far.
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    /// The queries asked in each conversation.
    pub fn conversations(&self) -> BTreeMap<String, Vec<String>> {
        self.lock().conversations.iter().map(|(id, (_, queries))| (id.clone(), queries.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn error_json(status: u16, code: &str, message: &str) -> hyper::Response<super::HttpBody> {
    full_response(status, "application/json", json!({"code": code, "message": message, "status": status}).to_string())
}

fn answer(key: &str, state: &Mutex<State>, events: &Events, request: HttpRequest) -> hyper::Response<super::HttpBody> {
    if request.head.method != "POST" || request.head.path() != "/v1/chat-messages" {
        return error_json(404, "not_found", "The requested URL was not found on the server.");
    }
    if request.head.header("authorization") != Some(&format!("Bearer {key}")) {
        return error_json(401, "unauthorized", "Access token is invalid");
    }
    let body = request.json();
    let query = body.get("query").and_then(Value::as_str).unwrap_or_default().to_owned();
    let user = body.get("user").and_then(Value::as_str).unwrap_or_default().to_owned();
    if query.is_empty()
        || user.is_empty()
        || body.get("response_mode") != Some(&json!("streaming"))
        || !body["inputs"].is_object()
    {
        return error_json(400, "invalid_param", "query, user, inputs and response_mode are required");
    }
    let mut state = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    state.requests.push(body.clone());
    let asked = body.get("conversation_id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let conversation = if asked.is_empty() {
        let id = format!("conv-{:04}", state.conversations.len() + 1);
        state.conversations.insert(id.clone(), (user.clone(), Vec::new()));
        id
    } else {
        match state.conversations.get(&asked) {
            Some((owner, _)) if *owner == user => asked,
            _ => return error_json(404, "not_found", "Conversation Not Exists."),
        }
    };
    if let Some((_, queries)) = state.conversations.get_mut(&conversation) {
        queries.push(query);
    }
    let fail = std::mem::take(&mut state.script.fail);
    let reply = state.script.reply.clone();
    drop(state);
    events.push("request");
    let (tx, response) = streamed_response(200, "text/event-stream; charset=utf-8");
    let events = events.clone();
    tokio::spawn(async move {
        let send = |value: Value| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(format!("data: {value}\n\n")))).await.is_ok() }
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        if fail {
            events.push("error");
            let _ = send(json!({"event": "error", "task_id": "task-1", "message_id": "msg-1", "status": 400,
                "code": "completion_request_error", "message": "[openai] Rate limit reached"}))
            .await;
            return;
        }
        for (i, word) in reply.split_inclusive(' ').enumerate() {
            let delta = json!({"event": "message", "task_id": "task-1", "message_id": "msg-1",
                "conversation_id": conversation, "answer": word, "created_at": 1_700_000_000});
            if !send(delta).await {
                return;
            }
            if i == 0 {
                events.push("first_delta");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = send(json!({"event": "message_end", "task_id": "task-1", "message_id": "msg-1",
            "conversation_id": conversation, "metadata": {"usage": {"total_tokens": 10}}}))
        .await;
        events.push("end");
    });
    response
}
