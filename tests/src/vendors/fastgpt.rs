//! The FastGPT mock: a FastGPT app's OpenAI-compatible chat API, `POST /api/v1/chat/completions`
//! with `stream: true`, as FastGPT's "对话接口 / Chat API" documentation describes it
//! (<https://doc.fastgpt.io/docs/introduction/development/openapi/chat>): `Authorization: Bearer
//! {api_key}` (else `{code: 514, statusText: "unAuthApiKey", message}`), a body `{chatId, stream,
//! detail, variables, messages}` where, with a `chatId`, FastGPT keeps the dialogue and uses only
//! the last message; an SSE answer of OpenAI chat chunks (`choices[0].delta.content`) ending with
//! `data: [DONE]`; told to fail, `event: error` with `{message}`.

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
    /// chatId → the user messages of that chat.
    chats: BTreeMap<String, Vec<String>>,
    requests: Vec<Value>,
}

/// A FastGPT app on loopback.
pub struct FastGptMock {
    http: HttpMock,
    state: Arc<Mutex<State>>,
    /// `request`, `first_delta`, `done` / `error` as they happen.
    pub events: Events,
}

impl FastGptMock {
    /// Starts the app; requests must carry `api_key`.
    pub async fn start(api_key: &str, reply: &str) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State { reply: reply.into(), ..State::default() }));
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
        self.http.url("/api/v1")
    }

    /// The answer of the next chats.
    pub fn reply(&self, text: &str) {
        let mut state = self.lock();
        state.reply = text.into();
        state.fail = false;
    }

    /// The next chat fails with an `error` event.
    pub fn fail_next(&self) {
        self.lock().fail = true;
    }

    /// The user messages of each chat.
    pub fn chats(&self) -> BTreeMap<String, Vec<String>> {
        self.lock().chats.clone()
    }

    /// Every request body so far.
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn fastgpt_error(status: u16, code: u32, status_text: &str, message: &str) -> hyper::Response<super::HttpBody> {
    let body = json!({"code": code, "statusText": status_text, "message": message, "data": null});
    full_response(status, "application/json", body.to_string())
}

fn answer(key: &str, state: &Mutex<State>, events: &Events, request: HttpRequest) -> hyper::Response<super::HttpBody> {
    if request.head.method != "POST" || request.head.path() != "/api/v1/chat/completions" {
        return fastgpt_error(404, 404, "", "not found");
    }
    if request.head.header("authorization") != Some(&format!("Bearer {key}")) {
        return fastgpt_error(403, 514, "unAuthApiKey", "Api Key 不合法");
    }
    let body = request.json();
    let question = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .filter(|m| m.get("role") == Some(&json!("user")))
        .and_then(|m| m.get("content").and_then(Value::as_str))
        .map(str::to_owned);
    let Some(question) = question else {
        return fastgpt_error(500, 500, "", "messages must end with a user message");
    };
    if body.get("stream") != Some(&json!(true)) || !body.get("variables").is_some_and(Value::is_object) {
        return fastgpt_error(500, 500, "", "the mock only streams, with variables");
    }
    let mut st = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    st.requests.push(body.clone());
    if let Some(chat_id) = body.get("chatId").and_then(Value::as_str) {
        st.chats.entry(chat_id.to_owned()).or_default().push(question);
    }
    let fail = std::mem::take(&mut st.fail);
    let reply = st.reply.clone();
    drop(st);
    events.push("request");
    let (tx, response) = streamed_response(200, "text/event-stream;charset=utf-8");
    let events = events.clone();
    tokio::spawn(async move {
        let send = |frame: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(frame))).await.is_ok() }
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        if fail {
            events.push("error");
            let _ = send(format!("event: error\ndata: {}\n\n", json!({"message": "AI 模型余额不足"}))).await;
            return;
        }
        let chunk = |content: Value, finish: Value| {
            json!({"id": "", "object": "", "created": 0, "model": "",
                "choices": [{"delta": {"role": "assistant", "content": content}, "index": 0, "finish_reason": finish}]})
        };
        for (i, piece) in reply.split_inclusive(' ').enumerate() {
            if !send(format!("data: {}\n\n", chunk(json!(piece), Value::Null))).await {
                return;
            }
            if i == 0 {
                events.push("first_delta");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = send(format!("data: {}\n\n", chunk(Value::Null, json!("stop")))).await;
        let _ = send("data: [DONE]\n\n".to_owned()).await;
        events.push("done");
    });
    response
}
