//! The Gemini mock: `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`, as the Gemini API
//! reference describes it ("Generating content", <https://ai.google.dev/api/generate-content>;
//! "Function calling", <https://ai.google.dev/gemini-api/docs/function-calling>): the key in the
//! `x-goog-api-key` header (else HTTP 400 `{error: {code, message: "API key not valid…", status:
//! INVALID_ARGUMENT}}`), a body of `contents` (roles `user` / `model`, each with `parts`),
//! `systemInstruction` and `tools: [{functionDeclarations}]` (a declaration's `parameters` must be
//! Gemini's schema: `additionalProperties` or an object without properties is refused, as Gemini
//! does), and an SSE answer of `GenerateContentResponse`s: `text` parts, or a `functionCall` part
//! (with a `thoughtSignature`, which must come back with the call in the next request, next to
//! the `functionResponse`), `finishReason: STOP` on the last. Told to fail, an `error` event
//! `{error: {code: 503, message, status: UNAVAILABLE}}`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Events, HttpMock, HttpRequest, full_response, streamed_response};

/// The thought signature the mock gives its function calls.
pub const SIGNATURE: &str = "bW9jay10aG91Z2h0LXNpZ25hdHVyZQ==";

#[derive(Debug, Default)]
struct State {
    reply: String,
    fail: bool,
    /// Call this function (when it is declared) before answering.
    call: Option<String>,
    requests: Vec<Value>,
}

/// Gemini on loopback.
pub struct GeminiMock {
    http: HttpMock,
    state: Arc<Mutex<State>>,
    /// `request`, `function_call`, `function_response`, `first_delta`, `done` / `error`.
    pub events: Events,
}

impl GeminiMock {
    /// Starts the API for `model`; requests must carry `api_key`.
    pub async fn start(api_key: &str, model: &str, reply: &str) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State { reply: reply.into(), ..State::default() }));
        let events = Events::default();
        let (key, path, shared, log) = (
            api_key.to_owned(),
            format!("/v1beta/models/{model}:streamGenerateContent"),
            Arc::clone(&state),
            events.clone(),
        );
        let http = HttpMock::start(move |request| {
            let answer = answer(&key, &path, &shared, &log, request);
            async move { answer }
        })
        .await?;
        Ok(Self { http, state, events })
    }

    /// The `base_url` of the provider entry.
    pub fn base_url(&self) -> String {
        self.http.url("/v1beta")
    }

    /// The answer of the next requests (after any function call).
    pub fn reply(&self, text: &str) {
        let mut state = self.lock();
        state.reply = text.into();
        state.fail = false;
    }

    /// The next request that may call `function` does.
    pub fn call_next(&self, function: &str) {
        self.lock().call = Some(function.into());
    }

    /// The next request fails with an `error` event.
    pub fn fail_next(&self) {
        self.lock().fail = true;
    }

    /// Every request body so far.
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn google_error(status: u16, google_status: &str, message: &str) -> hyper::Response<super::HttpBody> {
    let body = json!({"error": {"code": status, "message": message, "status": google_status}});
    full_response(status, "application/json; charset=UTF-8", body.to_string())
}

/// Why Gemini would refuse this body, if it would.
fn invalid(body: &Value) -> Option<String> {
    let contents = body.get("contents").and_then(Value::as_array).filter(|c| !c.is_empty())?;
    for (i, content) in contents.iter().enumerate() {
        let role = content.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != "user" && role != "model" {
            return Some(format!("contents[{i}].role: please use a valid role: user, model."));
        }
        if content.get("parts").and_then(Value::as_array).is_none_or(Vec::is_empty) {
            return Some(format!("contents[{i}].parts: contents.parts must not be empty."));
        }
    }
    if contents.last().and_then(|c| c.get("role")) != Some(&json!("user")) {
        return Some("the last content must be from the user".into());
    }
    let declarations =
        body.pointer("/tools/0/functionDeclarations").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, declaration) in declarations.iter().enumerate() {
        if declaration.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Some(format!("function_declarations[{i}].name: must not be empty"));
        }
        if let Some(parameters) = declaration.get("parameters") {
            let text = parameters.to_string();
            if text.contains("additionalProperties") || text.contains("$schema") {
                return Some(format!(
                    "Invalid JSON payload received. Unknown name in function_declarations[{i}].parameters"
                ));
            }
            if parameters.get("properties").and_then(Value::as_object).is_none_or(serde_json::Map::is_empty) {
                return Some(format!(
                    "function_declarations[{i}].parameters.properties: should be non-empty for OBJECT type"
                ));
            }
        }
    }
    None
}

fn answer(
    key: &str,
    path: &str,
    state: &Mutex<State>,
    events: &Events,
    request: HttpRequest,
) -> hyper::Response<super::HttpBody> {
    if request.head.method != "POST" || request.head.path() != path {
        return google_error(404, "NOT_FOUND", "models/x is not found for API version v1beta");
    }
    if request.head.header("x-goog-api-key") != Some(key) || request.head.query().contains_key("key") {
        return google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.");
    }
    if request.head.query().get("alt").map(String::as_str) != Some("sse") {
        return google_error(400, "INVALID_ARGUMENT", "the mock only answers alt=sse");
    }
    let body = request.json();
    let Some(contents) = body.get("contents").and_then(Value::as_array).cloned() else {
        return google_error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified");
    };
    if let Some(why) = invalid(&body) {
        return google_error(400, "INVALID_ARGUMENT", &why);
    }
    let last_parts =
        contents.last().and_then(|c| c.get("parts")).and_then(Value::as_array).cloned().unwrap_or_default();
    let responses: Vec<&Value> = last_parts.iter().filter_map(|p| p.get("functionResponse")).collect();
    if !responses.is_empty() {
        // The call answered must come back with its signature, in the model turn before.
        let previous = contents.iter().rev().nth(1).and_then(|c| c.get("parts")).and_then(Value::as_array);
        let signed = previous.is_some_and(|parts| {
            parts
                .iter()
                .any(|p| p.get("functionCall").is_some() && p.get("thoughtSignature") == Some(&json!(SIGNATURE)))
        });
        if !signed {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "Function call is missing a thought_signature in functionCall parts.",
            );
        }
        events.push("function_response");
    }
    let declared: Vec<String> = body
        .pointer("/tools/0/functionDeclarations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let mut st = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    st.requests.push(body.clone());
    let fail = std::mem::take(&mut st.fail);
    let call = match &st.call {
        Some(name) if responses.is_empty() && declared.contains(name) => st.call.take(),
        _ => None,
    };
    let reply = st.reply.clone();
    drop(st);
    events.push("request");
    let (tx, response) = streamed_response(200, "text/event-stream");
    let events = events.clone();
    tokio::spawn(async move {
        let send = |value: Value| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(format!("data: {value}\r\n\r\n")))).await.is_ok() }
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        if fail {
            events.push("error");
            let _ = send(json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE"}}))
            .await;
            return;
        }
        if let Some(name) = call {
            events.push("function_call");
            let _ = send(json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": name, "args": {}}, "thoughtSignature": SIGNATURE}]},
                "finishReason": "STOP", "index": 0}], "modelVersion": "gemini-2.0-flash"}))
            .await;
            events.push("done");
            return;
        }
        let pieces: Vec<&str> = reply.split_inclusive(' ').collect();
        for (i, piece) in pieces.iter().enumerate() {
            let mut candidate = json!({"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0});
            if i + 1 == pieces.len() {
                candidate["finishReason"] = json!("STOP");
            }
            if !send(json!({"candidates": [candidate], "modelVersion": "gemini-2.0-flash"})).await {
                return;
            }
            if i == 0 {
                events.push("first_delta");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        events.push("done");
    });
    response
}
