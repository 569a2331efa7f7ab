//! OpenAI-compatible chat completions (OpenAI, DeepSeek, Qwen, GLM, Ollama, LM Studio, …),
//! streamed over server-sent events, with native tool calls.
//!
//! The request is `POST {base_url}/chat/completions` with `"stream": true`. The SSE body is parsed
//! here, byte chunk by byte chunk (`StreamDecoder`): `choices[0].delta.content` becomes
//! [`LlmDelta::Text`] with `<think>…</think>` removed (tags split across deltas included),
//! `reasoning_content` is ignored, and `delta.tool_calls` fragments are merged by `index` into one
//! [`LlmDelta::ToolCalls`] sent when the answer ends. A provider that ignores `stream` and answers
//! one JSON completion is understood too.
//!
//! Timeouts: `timeout` seconds for the response headers, and again as the longest silence allowed
//! between two body chunks. A body cut before `[DONE]` and before any `finish_reason` yields the
//! text received so far and then an error.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Client, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChatMessage, LlmDelta, LlmStream, Role, ToolCall, ToolSpec};
use crate::config::OpenAiLlmConfig;
use crate::remote::sse::SseLines;
use crate::remote::{
    ProviderError, body_start, check_url, endpoint, http_client, is_json, json_f32, request_error, status_error,
    timeout_from,
};

/// Largest non-streamed JSON answer accepted.
const MAX_JSON_BODY: usize = 8 << 20;

/// How long the end of the body is awaited after `[DONE]`, so the connection can be reused.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// The backend.
// ---------------------------------------------------------------------------------------------

/// An OpenAI-compatible streaming chat model.
pub struct OpenAiLlm {
    client: Client,
    url: String,
    cfg: OpenAiLlmConfig,
    timeout: Duration,
}

impl OpenAiLlm {
    /// Validates the entry and builds the backend (one HTTP client, reused for every request).
    pub fn new(cfg: OpenAiLlmConfig) -> Result<Self, ProviderError> {
        if cfg.model_name.trim().is_empty() {
            return Err(ProviderError::Config("LLM model_name is empty".into()));
        }
        let timeout = timeout_from(cfg.timeout, "LLM")?;
        let url = endpoint(&cfg.base_url, "/chat/completions");
        check_url(&url, "LLM")?;
        // No total timeout: a long answer may stream for minutes. Silence is bounded per chunk.
        let client = http_client(timeout, None)?;
        Ok(Self { client, url, cfg, timeout })
    }

    /// The JSON request body.
    fn request_body(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Value {
        let mut body = json!({
            "model": self.cfg.model_name,
            "messages": messages.iter().map(message_json).collect::<Vec<_>>(),
            "stream": true,
        });
        if let Some(obj) = body.as_object_mut() {
            if let Some(t) = self.cfg.temperature.and_then(json_f32) {
                obj.insert("temperature".into(), t);
            }
            if let Some(p) = self.cfg.top_p.and_then(json_f32) {
                obj.insert("top_p".into(), p);
            }
            if let Some(p) = self.cfg.frequency_penalty.and_then(json_f32) {
                obj.insert("frequency_penalty".into(), p);
            }
            if let Some(m) = self.cfg.max_tokens {
                obj.insert("max_tokens".into(), json!(m));
            }
            if !tools.is_empty() {
                let tools: Vec<Value> = tools
                    .iter()
                    .map(|t| {
                        json!({
                            "type": "function",
                            "function": { "name": t.name, "description": t.description, "parameters": t.parameters },
                        })
                    })
                    .collect();
                obj.insert("tools".into(), Value::Array(tools));
            }
        }
        body
    }
}

/// One dialogue message in OpenAI's chat shape.
fn message_json(message: &ChatMessage) -> Value {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut obj = serde_json::Map::new();
    obj.insert("role".into(), json!(role));
    if message.role == Role::Assistant && !message.tool_calls.is_empty() {
        let content = if message.content.is_empty() { Value::Null } else { json!(message.content) };
        obj.insert("content".into(), content);
        let calls: Vec<Value> = message
            .tool_calls
            .iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        obj.insert("tool_calls".into(), Value::Array(calls));
    } else {
        obj.insert("content".into(), json!(message.content));
    }
    if let Some(id) = &message.tool_call_id {
        obj.insert("tool_call_id".into(), json!(id));
    }
    Value::Object(obj)
}

#[async_trait]
impl super::Llm for OpenAiLlm {
    async fn stream(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Result<LlmStream, ProviderError> {
        let mut request = self.client.post(&self.url).json(&self.request_body(messages, tools));
        let key = self.cfg.api_key.trim();
        if !key.is_empty() {
            request = request.bearer_auth(key);
        }
        let response = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => {
                return Err(ProviderError::Timeout { what: "LLM response".into(), seconds: self.timeout.as_secs() });
            }
            Ok(Err(e)) => return Err(request_error(&self.url, "LLM response", self.timeout, &e)),
            Ok(Ok(response)) => response,
        };
        if !response.status().is_success() {
            return Err(status_error(&self.url, response, self.timeout).await);
        }
        let json_answer = is_json(&response);
        let state = StreamState {
            response,
            decoder: StreamDecoder::new(self.url.clone()),
            queue: VecDeque::new(),
            phase: if json_answer { Phase::JsonBody } else { Phase::Streaming },
            url: self.url.clone(),
            timeout: self.timeout,
        };
        Ok(Box::pin(futures_util::stream::unfold(state, next_item)))
    }
}

// ---------------------------------------------------------------------------------------------
// The stream.
// ---------------------------------------------------------------------------------------------

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading SSE chunks.
    Streaming,
    /// The answer is a single JSON completion: read it whole.
    JsonBody,
    /// `[DONE]` came: read the end of the body briefly so the connection can be reused.
    Draining,
    /// Nothing more to read.
    Ended,
}

/// The state carried by the [`futures_util::stream::unfold`] behind [`LlmStream`]. Dropping it
/// drops the response, which cancels the request.
struct StreamState {
    response: Response,
    decoder: StreamDecoder,
    queue: VecDeque<Result<LlmDelta, ProviderError>>,
    phase: Phase,
    url: String,
    timeout: Duration,
}

type Item = Result<LlmDelta, ProviderError>;

async fn next_item(mut st: StreamState) -> Option<(Item, StreamState)> {
    loop {
        if let Some(item) = st.queue.pop_front() {
            return Some((item, st));
        }
        match st.phase {
            Phase::Ended => return None,
            Phase::Draining => {
                // Any outcome ends the stream; this read only lets the pool keep the connection.
                let _ = tokio::time::timeout(DRAIN_AFTER_DONE.min(st.timeout), st.response.chunk()).await;
                st.phase = Phase::Ended;
            }
            Phase::JsonBody => {
                read_json_body(&mut st).await;
                st.phase = Phase::Ended;
            }
            Phase::Streaming => match tokio::time::timeout(st.timeout, st.response.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    st.decoder.push(&bytes, &mut st.queue);
                    if st.decoder.is_done() {
                        st.phase = Phase::Draining;
                    }
                }
                Ok(Ok(None)) => {
                    st.decoder.finish(&mut st.queue);
                    st.phase = Phase::Ended;
                }
                Ok(Err(e)) => {
                    let error = request_error(&st.url, "LLM stream", st.timeout, &e);
                    st.decoder.fail(error, &mut st.queue);
                    st.phase = Phase::Ended;
                }
                Err(_) => {
                    let error = ProviderError::Timeout { what: "LLM stream".into(), seconds: st.timeout.as_secs() };
                    st.decoder.fail(error, &mut st.queue);
                    st.phase = Phase::Ended;
                }
            },
        }
    }
}

/// Reads a non-streamed answer (a JSON completion, or an SSE body mislabelled as JSON).
async fn read_json_body(st: &mut StreamState) {
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout(st.timeout, st.response.chunk()).await {
            Ok(Ok(Some(bytes))) => {
                body.extend_from_slice(&bytes);
                if body.len() > MAX_JSON_BODY {
                    st.queue.push_back(Err(ProviderError::Protocol {
                        url: st.url.clone(),
                        message: format!("the JSON answer is larger than {MAX_JSON_BODY} bytes"),
                    }));
                    return;
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                st.queue.push_back(Err(request_error(&st.url, "LLM response", st.timeout, &e)));
                return;
            }
            Err(_) => {
                st.queue.push_back(Err(ProviderError::Timeout {
                    what: "LLM response".into(),
                    seconds: st.timeout.as_secs(),
                }));
                return;
            }
        }
    }
    let text = String::from_utf8_lossy(&body);
    if text.trim_start().starts_with('{') {
        st.decoder.complete_json(&text, &mut st.queue);
    } else {
        st.decoder.push(&body, &mut st.queue);
        st.decoder.finish(&mut st.queue);
    }
}

/// One streamed chunk (or a whole non-streamed completion).
#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    /// Non-streamed answers carry `message` instead of `delta`.
    #[serde(default)]
    message: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// The part of a delta we use; `reasoning_content` and anything else is ignored.
#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallFragment>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallFragment {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionFragment>,
}

#[derive(Debug, Deserialize)]
struct FunctionFragment {
    #[serde(default)]
    name: Option<String>,
    /// A string normally; some servers send the arguments object itself.
    #[serde(default)]
    arguments: Option<Value>,
}

/// Turns the SSE body of a chat completion into [`LlmDelta`]s. Pure: fed with byte chunks, it
/// appends what they produce to a queue.
#[derive(Debug)]
pub(crate) struct StreamDecoder {
    url: String,
    lines: SseLines,
    think: ThinkFilter,
    calls: ToolCallMerger,
    /// A `finish_reason` was seen: the answer is complete even if `[DONE]` never comes.
    finished: bool,
    /// `[DONE]` was seen, or the stream failed: nothing more is produced.
    done: bool,
}

impl StreamDecoder {
    /// A decoder for the answer of `url` (used in error messages).
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            lines: SseLines::default(),
            think: ThinkFilter::default(),
            calls: ToolCallMerger::default(),
            finished: false,
            done: false,
        }
    }

    /// Whether the answer has ended (`[DONE]` or an error).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Feeds one chunk of the body.
    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut VecDeque<Item>) {
        if self.done {
            return;
        }
        let mut payloads = Vec::new();
        let overflow = self.lines.push(chunk, &mut payloads);
        for event in payloads {
            self.payload(&event.data, out);
        }
        if let Err(message) = overflow
            && !self.done
        {
            self.fail(ProviderError::Protocol { url: self.url.clone(), message }, out);
        }
    }

    /// The body ended. Without `[DONE]` or a `finish_reason` before it, the stream was cut: the
    /// text so far is kept and an error follows.
    pub(crate) fn finish(&mut self, out: &mut VecDeque<Item>) {
        if self.done {
            return;
        }
        let mut payloads = Vec::new();
        self.lines.finish(&mut payloads);
        for event in payloads {
            self.payload(&event.data, out);
        }
        if self.done {
            return;
        }
        if self.finished {
            self.end(out);
        } else {
            let message = "the answer stream ended before [DONE]".to_string();
            self.fail(ProviderError::Transport { url: self.url.clone(), message }, out);
        }
    }

    /// The body could not be read further (`error`). After a `finish_reason` the answer is
    /// complete and the error is dropped; otherwise the text so far is kept and `error` follows.
    pub(crate) fn fail(&mut self, error: ProviderError, out: &mut VecDeque<Item>) {
        if self.done {
            return;
        }
        if self.finished {
            self.end(out);
            return;
        }
        let text = self.think.finish();
        push_text(out, text);
        out.push_back(Err(error));
        self.done = true;
    }

    /// Handles a whole non-streamed JSON completion.
    fn complete_json(&mut self, body: &str, out: &mut VecDeque<Item>) {
        match serde_json::from_str::<Chunk>(body) {
            Ok(chunk) => {
                self.chunk(chunk, out);
                if !self.done {
                    self.end(out);
                }
            }
            Err(e) => {
                let message = format!("the answer is not a chat completion ({e}): {}", body_start(body.as_bytes()));
                out.push_back(Err(ProviderError::Protocol { url: self.url.clone(), message }));
                self.done = true;
            }
        }
    }

    /// A normal end: the rest of the text, then the tool calls.
    fn end(&mut self, out: &mut VecDeque<Item>) {
        let text = self.think.finish();
        push_text(out, text);
        if let Some(calls) = self.calls.take() {
            out.push_back(Ok(LlmDelta::ToolCalls(calls)));
        }
        self.done = true;
    }

    fn payload(&mut self, payload: &str, out: &mut VecDeque<Item>) {
        if self.done {
            return;
        }
        if payload.trim() == "[DONE]" {
            self.end(out);
            return;
        }
        match serde_json::from_str::<Chunk>(payload) {
            Ok(chunk) => self.chunk(chunk, out),
            Err(e) => tracing::warn!(url = %self.url, error = %e, "skipping an SSE event that is not a chat chunk"),
        }
    }

    fn chunk(&mut self, chunk: Chunk, out: &mut VecDeque<Item>) {
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            let message = match error.get("message").and_then(Value::as_str) {
                Some(text) => text.to_string(),
                None => error.to_string(),
            };
            let text = self.think.finish();
            push_text(out, text);
            out.push_back(Err(ProviderError::Protocol { url: self.url.clone(), message }));
            self.done = true;
            return;
        }
        // After a finish_reason, later chunks (usage reports) carry nothing we use.
        if self.finished {
            return;
        }
        let Some(choice) = chunk.choices.into_iter().next() else { return };
        if let Some(delta) = choice.delta.or(choice.message) {
            if let Some(content) = delta.content {
                let text = self.think.push(&content);
                push_text(out, text);
            }
            for fragment in delta.tool_calls.into_iter().flatten() {
                self.calls.add(fragment);
            }
        }
        if choice.finish_reason.is_some_and(|r| !r.is_empty()) {
            // Flush now so the turn can act at once; [DONE] is still awaited for a clean close.
            let text = self.think.finish();
            push_text(out, text);
            if let Some(calls) = self.calls.take() {
                out.push_back(Ok(LlmDelta::ToolCalls(calls)));
            }
            self.finished = true;
        }
    }
}

/// Queues text, merged into a text item still waiting in the queue.
fn push_text(out: &mut VecDeque<Item>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Ok(LlmDelta::Text(last))) = out.back_mut() {
        last.push_str(&text);
    } else {
        out.push_back(Ok(LlmDelta::Text(text)));
    }
}

/// Merges `delta.tool_calls` fragments by `index`.
#[derive(Debug, Default)]
struct ToolCallMerger {
    calls: BTreeMap<u32, PartialCall>,
    last: Option<u32>,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

impl ToolCallMerger {
    fn add(&mut self, fragment: ToolCallFragment) {
        let id = fragment.id.filter(|id| !id.is_empty());
        let index = match (fragment.index, &id, self.last) {
            (Some(index), _, _) => index,
            // No index (some servers): a new id starts a new call, anything else continues the last.
            (None, Some(id), _) if !self.calls.values().any(|c| &c.id == id) => {
                self.calls.keys().next_back().map_or(0, |k| k.saturating_add(1))
            }
            (None, Some(id), _) => self.calls.iter().find(|(_, c)| &c.id == id).map(|(k, _)| *k).unwrap_or_default(),
            (None, None, Some(last)) => last,
            (None, None, None) => 0,
        };
        let call = self.calls.entry(index).or_default();
        if let Some(id) = id
            && call.id.is_empty()
        {
            call.id = id;
        }
        if let Some(function) = fragment.function {
            if let Some(name) = function.name.filter(|n| !n.is_empty())
                && call.name.is_empty()
            {
                call.name = name;
            }
            match function.arguments {
                Some(Value::String(part)) => call.arguments.push_str(&part),
                Some(Value::Null) | None => {}
                Some(other) => call.arguments.push_str(&other.to_string()),
            }
        }
        self.last = Some(index);
    }

    /// The merged calls in index order; calls without a name are dropped, a missing id is made
    /// up, and empty arguments become `{}`.
    fn take(&mut self) -> Option<Vec<ToolCall>> {
        let calls: Vec<ToolCall> = std::mem::take(&mut self.calls)
            .into_iter()
            .filter_map(|(index, call)| {
                if call.name.is_empty() {
                    tracing::warn!(index, "dropping a tool call without a name");
                    return None;
                }
                let id = if call.id.is_empty() { format!("call_{}", uuid::Uuid::new_v4().simple()) } else { call.id };
                let arguments = if call.arguments.trim().is_empty() { "{}".to_string() } else { call.arguments };
                Some(ToolCall { id, name: call.name, arguments })
            })
            .collect();
        self.last = None;
        if calls.is_empty() { None } else { Some(calls) }
    }
}

/// Removes `<think>…</think>` blocks from streamed text, whatever the split of the tags across
/// deltas. Text after a closing tag loses its leading whitespace. A block never closed swallows
/// the rest of the answer.
#[derive(Debug, Default)]
pub(crate) struct ThinkFilter {
    in_think: bool,
    /// The end of the text seen so far when it could be the start of a tag.
    held: String,
    /// Right after `</think>`: leading whitespace is dropped.
    trim_start: bool,
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

impl ThinkFilter {
    /// Feeds a delta and returns the text that is certainly outside a think block.
    pub(crate) fn push(&mut self, delta: &str) -> String {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(delta);
        let mut out = String::new();
        let mut rest = text.as_str();
        loop {
            let tag = if self.in_think { THINK_CLOSE } else { THINK_OPEN };
            if let Some(at) = rest.find(tag) {
                if !self.in_think {
                    self.emit(&mut out, &rest[..at]);
                }
                rest = &rest[at + tag.len()..];
                self.in_think = !self.in_think;
                if !self.in_think {
                    self.trim_start = true;
                }
                continue;
            }
            // Hold back a suffix that may be the start of the tag.
            let keep = partial_tag_len(rest, tag);
            let (certain, maybe) = rest.split_at(rest.len() - keep);
            if !self.in_think {
                self.emit(&mut out, certain);
            }
            self.held = maybe.to_string();
            break;
        }
        out
    }

    /// The answer ended: held text that was not a tag after all is released.
    pub(crate) fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        let mut out = String::new();
        if !self.in_think {
            self.emit(&mut out, &held);
        }
        out
    }

    fn emit(&mut self, out: &mut String, text: &str) {
        if self.trim_start {
            let trimmed = text.trim_start();
            if trimmed.is_empty() {
                return;
            }
            self.trim_start = false;
            out.push_str(trimmed);
        } else {
            out.push_str(text);
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `tag` (tags are ASCII, so
/// the split is on a char boundary).
fn partial_tag_len(text: &str, tag: &str) -> usize {
    let max = (tag.len() - 1).min(text.len());
    (1..=max).rev().find(|&n| text.as_bytes().ends_with(&tag.as_bytes()[..n])).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// A scripted local HTTP server for the provider tests.
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::llm::Llm;
    use crate::remote::test_server::{Step, full, serve, stream_head};

    fn decode(chunks: &[&[u8]]) -> Vec<Item> {
        let mut decoder = StreamDecoder::new("http://test".into());
        let mut out = VecDeque::new();
        for chunk in chunks {
            decoder.push(chunk, &mut out);
        }
        decoder.finish(&mut out);
        out.into_iter().collect()
    }

    /// The concatenated text, the tool calls, and the final error of a result list.
    fn summarize(items: Vec<Item>) -> (String, Vec<Vec<ToolCall>>, Option<ProviderError>) {
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut error = None;
        for item in items {
            assert!(error.is_none(), "nothing follows an error");
            match item {
                Ok(LlmDelta::Text(t)) => {
                    assert!(calls.is_empty(), "text after the tool calls");
                    text.push_str(&t)
                }
                Ok(LlmDelta::ToolCalls(c)) => calls.push(c),
                Err(e) => error = Some(e),
            }
        }
        (text, calls, error)
    }

    fn content_event(text: &str) -> String {
        format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"content": text}}]}))
    }

    /// Splits `bytes` into pieces of sizes 1, 2, 3, … so that every boundary falls somewhere odd.
    fn awkward_split(bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut size = 1;
        while !rest.is_empty() {
            let n = size.min(rest.len());
            out.push(&rest[..n]);
            rest = &rest[n..];
            size = size % 7 + 1;
        }
        out
    }

    fn parallel_tool_call_body() -> String {
        let events = [
            json!({"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[
                {"index":0,"id":"call_a","type":"function","function":{"name":"set_volume","arguments":""}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":1,"id":"call_b","type":"function","function":{"name":"get_weather","arguments":"{\"ci"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"volume\""}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"ty\":\"北京\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":": 50}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
        ];
        let mut body: String = events.iter().map(|e| format!("data: {e}\r\n\r\n")).collect();
        body.push_str("data: [DONE]\r\n\r\n");
        body
    }

    #[test]
    fn parallel_tool_calls_merge_by_index() {
        let body = parallel_tool_call_body();
        let (text, calls, error) = summarize(decode(&awkward_split(body.as_bytes())));
        assert!(error.is_none(), "{error:?}");
        assert_eq!(text, "");
        assert_eq!(
            calls,
            vec![vec![
                ToolCall { id: "call_a".into(), name: "set_volume".into(), arguments: "{\"volume\": 50}".into() },
                ToolCall { id: "call_b".into(), name: "get_weather".into(), arguments: "{\"city\":\"北京\"}".into() },
            ]]
        );
    }

    #[test]
    fn think_tags_split_across_deltas_and_chunks() {
        let deltas = ["<th", "ink>let me", " think</thi", "nk>\n\n你好", "，世界<", "think>again</think>", "！ a < b"];
        let body: String = deltas.iter().map(|d| content_event(d)).collect::<String>() + "data: [DONE]\n\n";
        for chunks in [vec![body.as_bytes()], awkward_split(body.as_bytes())] {
            let (text, calls, error) = summarize(decode(&chunks));
            assert!(error.is_none(), "{error:?}");
            assert!(calls.is_empty());
            assert_eq!(text, "你好，世界！ a < b");
        }
    }

    #[test]
    fn think_filter_edge_cases() {
        let mut f = ThinkFilter::default();
        assert_eq!(f.push("<think>never closed"), "");
        assert_eq!(f.push(" still thinking </thi"), "");
        assert_eq!(f.finish(), "");

        let mut f = ThinkFilter::default();
        // A lone `<` at the end is held, then released when it is not a tag.
        assert_eq!(f.push("1 <"), "1 ");
        assert_eq!(f.push(" 2"), "< 2");
        assert_eq!(f.push(" <thi"), " ");
        assert_eq!(f.finish(), "<thi");

        // Char by char.
        let mut f = ThinkFilter::default();
        let mut out = String::new();
        for c in "A<think>x</think> B<think>y</think>C".chars() {
            out.push_str(&f.push(&c.to_string()));
        }
        out.push_str(&f.finish());
        assert_eq!(out, "ABC");
    }

    #[test]
    fn answer_opening_with_unclosed_think_yields_no_text() {
        let body = [content_event("<think>"), content_event("hmm, the user wants"), "data: [DONE]\n\n".into()].concat();
        let (text, calls, error) = summarize(decode(&[body.as_bytes()]));
        assert!(error.is_none());
        assert!(calls.is_empty());
        assert_eq!(text, "");
    }

    #[test]
    fn reasoning_content_comments_and_other_fields_are_ignored() {
        let body = concat!(
            ": keep-alive\n\n",
            "event: message\nid: 1\nretry: 100\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"secret\",\"content\":null}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n",
            "data:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},\"finish_reason\":\"\"}]}\n\n",
            "data: [DONE]\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"after done\"}}]}\n\n",
        );
        let (text, calls, error) = summarize(decode(&awkward_split(body.as_bytes())));
        assert!(error.is_none(), "{error:?}");
        assert!(calls.is_empty());
        assert_eq!(text, "Hi there");
    }

    #[test]
    fn cut_stream_gives_text_then_transport_error() {
        let body = [content_event("Hello"), content_event(" wor")].concat();
        let items = decode(&[body.as_bytes(), b"data: {\"choices\":[{\"delta\":{\"cont"]);
        let (text, calls, error) = summarize(items);
        assert_eq!(text, "Hello wor");
        assert!(calls.is_empty());
        assert!(matches!(error, Some(ProviderError::Transport { .. })), "{error:?}");
    }

    #[test]
    fn finish_reason_without_done_is_a_clean_end() {
        let body = parallel_tool_call_body().replace("data: [DONE]\r\n\r\n", "");
        let (_, calls, error) = summarize(decode(&[body.as_bytes()]));
        assert!(error.is_none(), "{error:?}");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].len(), 2);
    }

    #[test]
    fn events_without_blank_lines_and_multi_line_data() {
        // Some servers put no blank line between events; others split one JSON over data lines.
        let body = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n",
            "data: {\"choices\":[{\"delta\":\n",
            "data: {\"content\":\"c\"}}]}\n\n",
            "data: [DONE]",
        );
        let (text, _, error) = summarize(decode(&[body.as_bytes()]));
        assert!(error.is_none(), "{error:?}");
        assert_eq!(text, "abc");
    }

    #[test]
    fn error_event_is_a_protocol_error() {
        let body = [content_event("Hi"), "data: {\"error\":{\"message\":\"rate limited\"}}\n\n".into()].concat();
        let (text, _, error) = summarize(decode(&[body.as_bytes()]));
        assert_eq!(text, "Hi");
        match error {
            Some(ProviderError::Protocol { message, .. }) => assert_eq!(message, "rate limited"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tool_calls_without_index_or_id() {
        let body = concat!(
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"x1\",\"function\":{\"name\":\"a\",\"arguments\":{\"k\":1}}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"b\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"id\":\"x2\",\"function\":{\"name\":\"c\",\"arguments\":\"{}\"}}]}}]}\n\n",
            "data: [DONE]\n\n",
        );
        let (_, calls, error) = summarize(decode(&[body.as_bytes()]));
        assert!(error.is_none());
        let calls = &calls[0];
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("x1", "a", "{\"k\":1}")
        );
        assert_eq!((calls[1].id.as_str(), calls[1].name.as_str(), calls[1].arguments.as_str()), ("x2", "c", "{}"));
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(endpoint("https://api.x.com/v1", "/chat/completions"), "https://api.x.com/v1/chat/completions");
        assert_eq!(endpoint("https://api.x.com/v1/", "/chat/completions"), "https://api.x.com/v1/chat/completions");
        assert_eq!(
            endpoint("https://api.x.com/v1/chat/completions", "/chat/completions"),
            "https://api.x.com/v1/chat/completions"
        );
    }

    fn config(base_url: &str, timeout: u64) -> OpenAiLlmConfig {
        OpenAiLlmConfig {
            api_key: "sk-test".into(),
            base_url: base_url.into(),
            model_name: "test-model".into(),
            temperature: Some(0.7),
            top_p: None,
            frequency_penalty: None,
            max_tokens: Some(100),
            timeout,
        }
    }

    #[test]
    fn config_errors() {
        assert!(matches!(OpenAiLlm::new(config("http://x/v1", 0)), Err(ProviderError::Config(_))));
        assert!(matches!(OpenAiLlm::new(config("not a url", 5)), Err(ProviderError::Config(_))));
        assert!(matches!(OpenAiLlm::new(config("ftp://x/v1", 5)), Err(ProviderError::Config(_))));
    }

    #[test]
    fn request_body_shape() {
        let llm = OpenAiLlm::new(config("http://127.0.0.1:9/v1", 5)).expect("valid");
        let call = ToolCall { id: "call_1".into(), name: "get_time".into(), arguments: "{}".into() };
        let messages = vec![
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, "what time is it"),
            ChatMessage::tool_calls("", vec![call]),
            ChatMessage::tool_result("call_1", "12:00"),
        ];
        let body = llm.request_body(&messages, &[]);
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["stream"], true);
        assert_eq!(body["temperature"], 0.7);
        assert_eq!(body["max_tokens"], 100);
        assert!(body.get("top_p").is_none());
        assert!(body.get("tools").is_none(), "no tools key without tools");
        let m = &body["messages"];
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(m[1], json!({"role": "user", "content": "what time is it"}));
        assert_eq!(
            m[2],
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]})
        );
        assert_eq!(m[3], json!({"role": "tool", "content": "12:00", "tool_call_id": "call_1"}));

        let tool =
            ToolSpec { name: "get_time".into(), description: "the time".into(), parameters: json!({"type": "object"}) };
        let body = llm.request_body(&messages[..2], &[tool]);
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "function": {"name": "get_time", "description": "the time", "parameters": {"type": "object"}}}])
        );
    }

    async fn collect(stream: LlmStream) -> Vec<Item> {
        stream.collect().await
    }

    #[tokio::test]
    async fn streams_over_http_with_awkward_chunks() {
        let body = [content_event("<thi"), content_event("nk>plan</think>Hello"), content_event(", world")].concat()
            + &parallel_tool_call_body();
        let mut script = vec![stream_head("text/event-stream")];
        for piece in awkward_split(body.as_bytes()).chunks(40) {
            script.push(Step::Send(piece.concat()));
            script.push(Step::Sleep(Duration::from_millis(5)));
        }
        let (base, mut requests) = serve(vec![script]).await;
        let llm = OpenAiLlm::new(config(&format!("{base}/v1/"), 5)).expect("valid");
        let tool =
            ToolSpec { name: "set_volume".into(), description: "volume".into(), parameters: json!({"type": "object"}) };
        let stream = llm.stream(&[ChatMessage::new(Role::User, "hi")], &[tool]).await.expect("stream starts");
        let (text, calls, error) = summarize(collect(stream).await);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(text, "Hello, world");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["set_volume", "get_weather"]);

        let request = requests.recv().await.expect("a request");
        assert_eq!(request.method(), "POST");
        assert_eq!(request.target(), "/v1/chat/completions");
        assert_eq!(request.header("authorization").as_deref(), Some("Bearer sk-test"));
        let json = request.json();
        assert_eq!(json["stream"], true);
        assert_eq!(json["tools"][0]["function"]["name"], "set_volume");
    }

    #[tokio::test]
    async fn stalled_stream_times_out_after_the_text() {
        let script = vec![
            stream_head("text/event-stream"),
            Step::Send(content_event("partial").into_bytes()),
            Step::Sleep(Duration::from_secs(10)),
        ];
        let (base, _requests) = serve(vec![script]).await;
        let llm = OpenAiLlm::new(config(&base, 1)).expect("valid");
        let started = std::time::Instant::now();
        let stream = llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await.expect("headers came");
        let (text, _, error) = summarize(collect(stream).await);
        assert_eq!(text, "partial");
        assert!(matches!(error, Some(ProviderError::Timeout { seconds: 1, .. })), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test]
    async fn stalled_headers_time_out() {
        let (base, _requests) = serve(vec![vec![Step::Sleep(Duration::from_secs(10))]]).await;
        let llm = OpenAiLlm::new(config(&base, 1)).expect("valid");
        let started = std::time::Instant::now();
        let result = llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await;
        assert!(matches!(result, Err(ProviderError::Timeout { .. })), "{:?}", result.err());
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test]
    async fn connection_closed_mid_stream_is_an_error_after_the_text() {
        let script = vec![stream_head("text/event-stream"), Step::Send(content_event("cut here").into_bytes())];
        let (base, _requests) = serve(vec![script]).await;
        let llm = OpenAiLlm::new(config(&base, 5)).expect("valid");
        let stream = llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await.expect("starts");
        let (text, _, error) = summarize(collect(stream).await);
        assert_eq!(text, "cut here");
        assert!(matches!(error, Some(ProviderError::Transport { .. })), "{error:?}");
    }

    #[tokio::test]
    async fn http_error_status_carries_the_body() {
        let script = full(401, "application/json", br#"{"error":{"message":"invalid api key"}}"#);
        let (base, _requests) = serve(vec![script]).await;
        let llm = OpenAiLlm::new(config(&base, 5)).expect("valid");
        match llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await {
            Err(ProviderError::Status { status, body, url }) => {
                assert_eq!(status, 401);
                assert!(body.contains("invalid api key"), "{body}");
                assert!(url.ends_with("/chat/completions"));
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn non_streamed_json_answer_is_understood() {
        let answer = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "<think>x</think>OK",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}]});
        let script = full(200, "application/json", answer.to_string().as_bytes());
        let (base, _requests) = serve(vec![script]).await;
        let llm = OpenAiLlm::new(config(&base, 5)).expect("valid");
        let stream = llm.stream(&[ChatMessage::new(Role::User, "hi")], &[]).await.expect("starts");
        let (text, calls, error) = summarize(collect(stream).await);
        assert!(error.is_none(), "{error:?}");
        assert_eq!(text, "OK");
        assert_eq!(calls, vec![vec![ToolCall { id: "c1".into(), name: "f".into(), arguments: "{\"a\":1}".into() }]]);
    }
}
