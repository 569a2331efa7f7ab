//! What the chat-app providers share: Dify, Coze and FastGPT keep the dialogue on their side (a
//! conversation id), Gemini does not; all four stream server-sent events.
//!
//! **Conversations.** The Python server maps its `session_id` to the vendor's conversation id.
//! [`super::Llm::stream`] gets only the dialogue, so the conversation is found from the dialogue
//! itself: each finished answer records, under the vendor's conversation id, a digest of every
//! user and assistant message so far ([`Conversations`]); the next request of the same session
//! sends a dialogue whose messages before the new question are exactly those, and so finds its
//! conversation again. A session's history is trimmed from the front once long: a long dialogue
//! (at least [`MIN_SUFFIX_MATCH`] messages) also matches the end of a recorded one. A dialogue
//! that matches nothing (the first question of a session, an answer that did not come from this
//! provider) starts a new conversation. Two sessions can only meet in one conversation when every
//! message of both dialogues so far is the same. At most [`MAX_CONVERSATIONS`] conversations are
//! remembered (least recently used dropped first), each with its last [`MAX_DIGESTS`] digests.
//!
//! **Streams.** [`sse_stream`] reads the body chunk by chunk with `timeout` as the longest
//! silence, splits it into events ([`SseLines`], event names kept) and hands each to the vendor's
//! [`Events`]; text goes through the `<think>` filter, an error ends the stream after the text
//! already received. Dropping the stream drops the response, which cancels the request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Response;
use sha2::{Digest as _, Sha256};

use super::openai::ThinkFilter;
use super::{ChatMessage, LlmDelta, LlmStream, Role};
use crate::remote::sse::{SseEvent, SseLines};
use crate::remote::{ProviderError, body_start, is_json, request_error};

/// Most conversations remembered per provider entry (about 2 KiB each at most).
pub(crate) const MAX_CONVERSATIONS: usize = 1024;

/// Most message digests kept per conversation (the session keeps 40 messages).
pub(crate) const MAX_DIGESTS: usize = 128;

/// A dialogue at least this long may match the end of a recorded conversation (its start was
/// trimmed by the session); a shorter one must match a whole conversation.
pub(crate) const MIN_SUFFIX_MATCH: usize = 16;

/// How much of a message counts for its digest (the session may cut long messages).
const DIGEST_PREFIX_BYTES: usize = 512;

/// Largest JSON (non-SSE) answer read.
const MAX_JSON_BODY: usize = 1 << 20;

/// A message's digest: its role and the start of its text.
pub(crate) type Digest = [u8; 16];

/// The digest of one user or assistant message.
pub(crate) fn digest(role: Role, content: &str) -> Digest {
    let text = content.trim();
    let mut end = text.len().min(DIGEST_PREFIX_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = text.get(..end).unwrap_or_default();
    let mut hash = Sha256::new();
    hash.update(match role {
        Role::User => b"u",
        _ => b"a",
    });
    hash.update(text.trim().as_bytes());
    let full = hash.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// What a chat app is asked: the last user message (with any tool results after it, the way the
/// Python server passes them), and the digests of the dialogue before it.
#[derive(Debug, Clone)]
pub(crate) struct Question {
    /// The text sent as the query.
    pub query: String,
    /// The user message as the session records it.
    pub asked: String,
    /// Digests of the user and assistant messages before it.
    pub prior: Vec<Digest>,
}

/// Splits the dialogue; errs (`what` names the provider) when it has no user message.
pub(crate) fn question(messages: &[ChatMessage], what: &str) -> Result<Question, ProviderError> {
    let Some(last_user) = messages.iter().rposition(|m| m.role == Role::User) else {
        return Err(ProviderError::Config(format!("{what}: the dialogue has no user message")));
    };
    let asked = messages.get(last_user).map(|m| m.content.clone()).unwrap_or_default();
    let mut query = asked.clone();
    let results: Vec<&str> =
        messages.iter().skip(last_user + 1).filter(|m| m.role == Role::Tool).map(|m| m.content.as_str()).collect();
    if !results.is_empty() {
        let mut prefix = String::new();
        for result in results {
            prefix.push_str("\ntool call result: ");
            prefix.push_str(result);
            prefix.push_str("\n\n");
        }
        query = prefix + &query;
    }
    let prior = messages.get(..last_user).unwrap_or_default().iter().filter_map(message_digest).collect();
    Ok(Question { query, asked, prior })
}

/// The digest of a message that counts for finding the conversation: user messages and the
/// assistant's text answers.
fn message_digest(message: &ChatMessage) -> Option<Digest> {
    match message.role {
        Role::User => Some(digest(Role::User, &message.content)),
        Role::Assistant if message.tool_calls.is_empty() && !message.content.trim().is_empty() => {
            Some(digest(Role::Assistant, &message.content))
        }
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Entry {
    id: String,
    user: String,
    digests: Vec<Digest>,
}

/// The vendor conversations of one provider entry, found by their dialogue (see the module).
#[derive(Debug, Default)]
pub(crate) struct Conversations {
    entries: Mutex<VecDeque<Entry>>,
}

/// A conversation found: the vendor's id and the user it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The vendor's conversation id.
    pub id: String,
    /// The user id the conversation was started with.
    pub user: String,
}

impl Conversations {
    /// The conversation whose recorded dialogue is `prior` (most recent first); `None` for an
    /// empty dialogue.
    pub(crate) fn find(&self, prior: &[Digest]) -> Option<Found> {
        if prior.is_empty() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .iter()
            .rev()
            .find(|e| matches(&e.digests, prior))
            .map(|e| Found { id: e.id.clone(), user: e.user.clone() })
    }

    /// Forgets conversation `id` (the vendor no longer knows it).
    pub(crate) fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.retain(|e| e.id != id);
    }

    /// Records that conversation `id` now holds `digests` (replacing what it held).
    pub(crate) fn record(&self, id: &str, user: &str, mut digests: Vec<Digest>) {
        if digests.len() > MAX_DIGESTS {
            digests.drain(..digests.len() - MAX_DIGESTS);
        }
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.retain(|e| e.id != id);
        entries.push_back(Entry { id: id.to_owned(), user: user.to_owned(), digests });
        while entries.len() > MAX_CONVERSATIONS {
            entries.pop_front();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or_default()
    }
}

/// Whether a dialogue `prior` continues the recorded `digests`: the same messages, or (a long
/// dialogue whose start the session trimmed) their end. A recorded question whose answer was cut
/// off may be missing from the dialogue.
fn matches(recorded: &[Digest], prior: &[Digest]) -> bool {
    let same =
        |recorded: &[Digest]| recorded == prior || (prior.len() >= MIN_SUFFIX_MATCH && recorded.ends_with(prior));
    if same(recorded) {
        return true;
    }
    // The last question went unanswered (the turn was interrupted): the session may or may not
    // have recorded it.
    recorded.split_last().is_some_and(|(_, rest)| !rest.is_empty() && same(rest))
}

/// Records a turn's conversation when its stream is dropped: the dialogue before, the question,
/// and the answer when the stream was read to its end (as the session records it).
pub(crate) struct Recorder {
    conversations: Arc<Conversations>,
    /// The vendor's conversation id, once known.
    pub id: Option<String>,
    user: String,
    prior: Vec<Digest>,
    asked: Digest,
    answer: String,
    finished: bool,
}

impl Recorder {
    /// A recorder for `question` in the conversation `found` (or a new one of `user`).
    pub(crate) fn new(
        conversations: Arc<Conversations>,
        question: &Question,
        found: Option<Found>,
        user: String,
    ) -> Self {
        let (id, user) = match found {
            Some(found) => (Some(found.id), found.user),
            None => (None, user),
        };
        Self {
            conversations,
            id,
            user,
            prior: question.prior.clone(),
            asked: digest(Role::User, &question.asked),
            answer: String::new(),
            finished: false,
        }
    }

    /// The user id of the conversation.
    pub(crate) fn user(&self) -> &str {
        &self.user
    }

    /// Notes the vendor's conversation id (the first one seen counts).
    pub(crate) fn learn(&mut self, id: &str) {
        if self.id.is_none() && !id.trim().is_empty() {
            self.id = Some(id.to_owned());
        }
    }

    fn yielded(&mut self, item: &Item) {
        match item {
            Ok(LlmDelta::Text(text)) => self.answer.push_str(text),
            Ok(LlmDelta::ToolCalls(_)) => {}
            Err(_) => self.finished = true,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let mut digests = std::mem::take(&mut self.prior);
        digests.push(self.asked);
        if self.finished && !self.answer.trim().is_empty() {
            digests.push(digest(Role::Assistant, &self.answer));
        }
        self.conversations.record(&id, &self.user, digests);
    }
}

/// One item of an [`LlmStream`].
pub(crate) type Item = Result<LlmDelta, ProviderError>;

/// What a vendor's event handler gives back for one event.
#[derive(Debug)]
pub(crate) enum Out {
    /// Answer text (the `<think>` filter is applied by the stream).
    Text(String),
    /// Tool calls of the answer.
    ToolCalls(Vec<super::ToolCall>),
    /// The vendor reported an error: the stream ends with it.
    Error(ProviderError),
    /// The answer is complete: the stream ends.
    End,
}

/// A vendor's reading of its events.
pub(crate) trait Events: Send + 'static {
    /// Handles one event.
    fn event(&mut self, event: SseEvent, out: &mut Vec<Out>);

    /// The body ended without an end event: what that means (an error, or a normal end).
    fn body_ended(&mut self, out: &mut Vec<Out>);

    /// The answer is one JSON document, not an event stream (often the vendor's error).
    fn json_body(&mut self, body: &str, out: &mut Vec<Out>) {
        self.event(SseEvent { event: String::new(), data: body.to_owned() }, out);
        self.body_ended(out);
    }

    /// The conversation recorder, if the vendor keeps conversations.
    fn recorder(&mut self) -> Option<&mut Recorder> {
        None
    }
}

struct State<E: Events> {
    response: Response,
    events: E,
    lines: SseLines,
    think: ThinkFilter,
    queue: VecDeque<Item>,
    json: bool,
    ended: bool,
    url: String,
    timeout: Duration,
    what: &'static str,
}

/// The [`LlmStream`] of an SSE answer read by `events`. `url` (without secrets) names the
/// endpoint in errors, `what` the call in timeouts ("Dify stream").
pub(crate) fn sse_stream<E: Events>(
    response: Response,
    url: String,
    timeout: Duration,
    what: &'static str,
    events: E,
) -> LlmStream {
    let json = is_json(&response);
    let state = State {
        response,
        events,
        lines: SseLines::default(),
        think: ThinkFilter::default(),
        queue: VecDeque::new(),
        json,
        ended: false,
        url,
        timeout,
        what,
    };
    Box::pin(futures_util::stream::unfold(state, next_item))
}

async fn next_item<E: Events>(mut st: State<E>) -> Option<(Item, State<E>)> {
    loop {
        if let Some(item) = st.queue.pop_front() {
            if let Some(recorder) = st.events.recorder() {
                recorder.yielded(&item);
            }
            return Some((item, st));
        }
        if st.ended {
            if let Some(recorder) = st.events.recorder() {
                recorder.finished = true;
            }
            return None;
        }
        let mut out = Vec::new();
        if st.json {
            match read_json(&mut st).await {
                Ok(body) => st.events.json_body(&body, &mut out),
                Err(e) => out.push(Out::Error(e)),
            }
            out.push(Out::End);
        } else {
            match tokio::time::timeout(st.timeout, st.response.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    let mut events = Vec::new();
                    if let Err(message) = st.lines.push(&bytes, &mut events) {
                        out.push(Out::Error(ProviderError::Protocol { url: st.url.clone(), message }));
                    }
                    for event in events {
                        st.events.event(event, &mut out);
                    }
                }
                Ok(Ok(None)) => {
                    let mut events = Vec::new();
                    st.lines.finish(&mut events);
                    for event in events {
                        st.events.event(event, &mut out);
                    }
                    st.events.body_ended(&mut out);
                    out.push(Out::End);
                }
                Ok(Err(e)) => out.push(Out::Error(request_error(&st.url, st.what, st.timeout, &e))),
                Err(_) => out.push(Out::Error(ProviderError::Timeout {
                    what: st.what.to_owned(),
                    seconds: st.timeout.as_secs(),
                })),
            }
        }
        apply(&mut st, out);
    }
}

/// Queues what the handler gave, up to the first end or error.
fn apply<E: Events>(st: &mut State<E>, out: Vec<Out>) {
    for item in out {
        match item {
            Out::Text(text) => {
                let text = st.think.push(&text);
                push_text(&mut st.queue, text);
            }
            Out::ToolCalls(calls) => {
                let text = st.think.finish();
                push_text(&mut st.queue, text);
                st.queue.push_back(Ok(LlmDelta::ToolCalls(calls)));
            }
            Out::Error(e) => {
                let text = st.think.finish();
                push_text(&mut st.queue, text);
                st.queue.push_back(Err(e));
                st.ended = true;
                return;
            }
            Out::End => {
                let text = st.think.finish();
                push_text(&mut st.queue, text);
                st.ended = true;
                return;
            }
        }
    }
}

fn push_text(queue: &mut VecDeque<Item>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Ok(LlmDelta::Text(last))) = queue.back_mut() {
        last.push_str(&text);
    } else {
        queue.push_back(Ok(LlmDelta::Text(text)));
    }
}

async fn read_json<E: Events>(st: &mut State<E>) -> Result<String, ProviderError> {
    read_body(&mut st.response, &st.url, st.timeout, st.what).await
}

/// Reads a (JSON) answer whole: at most 1 MiB, `timeout` as the longest silence.
pub(crate) async fn read_body(
    response: &mut Response,
    url: &str,
    timeout: Duration,
    what: &str,
) -> Result<String, ProviderError> {
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout(timeout, response.chunk()).await {
            Ok(Ok(Some(bytes))) => {
                body.extend_from_slice(&bytes);
                if body.len() > MAX_JSON_BODY {
                    return Err(ProviderError::Protocol {
                        url: url.to_owned(),
                        message: format!("the JSON answer is larger than {MAX_JSON_BODY} bytes: {}", body_start(&body)),
                    });
                }
            }
            Ok(Ok(None)) => return Ok(String::from_utf8_lossy(&body).into_owned()),
            Ok(Err(e)) => return Err(request_error(url, what, timeout, &e)),
            Err(_) => return Err(ProviderError::Timeout { what: what.to_owned(), seconds: timeout.as_secs() }),
        }
    }
}

/// A vendor's error with its code and message, as a protocol error of `url`.
pub(crate) fn vendor_error(url: &str, code: &str, message: &str) -> ProviderError {
    let message = if code.is_empty() { message.to_owned() } else { format!("{code}: {message}") };
    ProviderError::Protocol { url: url.to_owned(), message }
}

/// A JSON value as a short string: strings as they are, numbers and others as JSON.
pub(crate) fn json_text(value: Option<&serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Sends `request` within `timeout`, mapping failures; a non-success status becomes
/// [`ProviderError::Status`] with the start of the body (vendors put their error JSON there).
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    url: &str,
    timeout: Duration,
    what: &str,
) -> Result<Response, ProviderError> {
    let response = match tokio::time::timeout(timeout, request.send()).await {
        Err(_) => return Err(ProviderError::Timeout { what: what.to_owned(), seconds: timeout.as_secs() }),
        Ok(Err(e)) => return Err(request_error(url, what, timeout, &e)),
        Ok(Ok(response)) => response,
    };
    if !response.status().is_success() {
        return Err(crate::remote::status_error(url, response, timeout).await);
    }
    Ok(response)
}

/// Deserializes a string that YAML may have read as a number (`bot_id: 7379462189365198898`).
pub(crate) fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    use serde::Deserialize as _;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(String::new()),
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        other => Err(serde::de::Error::custom(format!("expected a string or a number, found {other}"))),
    }
}

/// A secret for `Debug`: whether it is set, never its value.
pub(crate) fn redacted(secret: &str) -> &'static str {
    if secret.trim().is_empty() { "<unset>" } else { "<redacted>" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(role: Role, text: &str) -> Digest {
        digest(role, text)
    }

    #[test]
    fn question_takes_the_last_user_message_and_the_dialogue_before_it() {
        let messages = vec![
            ChatMessage::new(Role::System, "prompt"),
            ChatMessage::new(Role::User, "hi"),
            ChatMessage::new(Role::Assistant, "hello"),
            ChatMessage::new(Role::User, "what time is it"),
            ChatMessage::tool_calls("", vec![]),
            ChatMessage::tool_result("c1", "12:00"),
        ];
        let q = question(&messages, "Dify").expect("has a user message");
        assert_eq!(q.asked, "what time is it");
        assert_eq!(q.query, "\ntool call result: 12:00\n\nwhat time is it");
        assert_eq!(q.prior, vec![d(Role::User, "hi"), d(Role::Assistant, "hello")]);
        assert!(matches!(question(&messages[..1], "Dify"), Err(ProviderError::Config(_))));
    }

    #[test]
    fn digests_survive_cut_messages_and_whitespace() {
        let long = "x".repeat(20_000);
        assert_eq!(d(Role::User, &long), d(Role::User, &long[..1000]));
        assert_eq!(d(Role::User, " hi\n"), d(Role::User, "hi"));
        assert_ne!(d(Role::User, "hi"), d(Role::Assistant, "hi"));
    }

    #[test]
    fn a_conversation_is_found_by_its_dialogue_and_follows_it() {
        let map = Arc::new(Conversations::default());
        let first = vec![ChatMessage::new(Role::System, "p"), ChatMessage::new(Role::User, "hi")];
        let q = question(&first, "x").expect("q");
        assert_eq!(map.find(&q.prior), None, "an empty dialogue starts a conversation");
        {
            let mut rec = Recorder::new(Arc::clone(&map), &q, None, "u1".into());
            rec.learn("conv-1");
            rec.yielded(&Ok(LlmDelta::Text("Hello".into())));
            rec.finished = true;
        }
        let second = vec![
            ChatMessage::new(Role::System, "another time"),
            ChatMessage::new(Role::User, "hi"),
            ChatMessage::new(Role::Assistant, "Hello"),
            ChatMessage::new(Role::User, "and now?"),
        ];
        let q2 = question(&second, "x").expect("q");
        assert_eq!(map.find(&q2.prior), Some(Found { id: "conv-1".into(), user: "u1".into() }));
        // Another session with another first answer does not find it.
        let other = question(
            &[
                ChatMessage::new(Role::User, "hi"),
                ChatMessage::new(Role::Assistant, "Hey"),
                ChatMessage::new(Role::User, "?"),
            ],
            "x",
        )
        .expect("q");
        assert_eq!(map.find(&other.prior), None);
        // An interrupted answer records the question only; the next dialogue may or may not hold it.
        {
            let found = map.find(&q2.prior);
            let mut rec = Recorder::new(Arc::clone(&map), &q2, found, "ignored".into());
            rec.yielded(&Ok(LlmDelta::Text("partial".into())));
            assert_eq!(rec.user(), "u1");
        }
        let mut third = second.clone();
        third.push(ChatMessage::new(Role::User, "again"));
        let q3 = question(&third, "x").expect("q");
        assert_eq!(map.find(&q3.prior).map(|f| f.id), Some("conv-1".into()));
        assert_eq!(map.find(&q2.prior).map(|f| f.id), Some("conv-1".into()));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn trimmed_long_dialogues_match_the_end_of_a_conversation() {
        let map = Conversations::default();
        let all: Vec<Digest> =
            (0..50).map(|i| d(if i % 2 == 0 { Role::User } else { Role::Assistant }, &i.to_string())).collect();
        map.record("long", "u", all.clone());
        assert!(map.find(&all[10..]).is_some(), "a trimmed dialogue");
        assert!(map.find(&all[48..]).is_none(), "a short end alone is not enough");
        assert!(map.find(&all[10..40]).is_none(), "the middle is not the end");
    }

    #[test]
    fn the_map_is_bounded() {
        let map = Conversations::default();
        for i in 0..MAX_CONVERSATIONS + 10 {
            map.record(&format!("c{i}"), "u", vec![d(Role::User, &i.to_string())]);
        }
        assert_eq!(map.len(), MAX_CONVERSATIONS);
        assert!(map.find(&[d(Role::User, "0")]).is_none(), "the oldest went first");
        assert!(map.find(&[d(Role::User, &(MAX_CONVERSATIONS + 9).to_string())]).is_some());
        map.record("big", "u", vec![d(Role::User, "x"); MAX_DIGESTS + 5]);
        assert!(map.entries.lock().expect("lock").back().is_some_and(|e| e.digests.len() == MAX_DIGESTS));
    }

    /// Every key of the Python server's entries is a field of ours, and the entries parse.
    #[test]
    fn the_python_entries_keys_are_all_known() {
        let python: serde_json::Value =
            serde_yaml_ng::from_str(include_str!("../../../tests/assets/python-v0.9.6-config.yaml")).expect("yaml");
        fn check<T: serde::de::DeserializeOwned + serde::Serialize + Default>(python: &serde_json::Value, name: &str) {
            let entry = python.pointer(&format!("/LLM/{name}")).and_then(serde_json::Value::as_object).expect(name);
            let known = serde_json::to_value(T::default()).expect("serializes");
            for key in entry.keys().filter(|k| *k != "type") {
                assert!(known.get(key).is_some(), "LLM.{name}.{key} is not a field");
            }
            let mut entry = entry.clone();
            entry.remove("type");
            serde_json::from_value::<T>(serde_json::Value::Object(entry)).expect(name);
        }
        check::<super::super::dify::Config>(&python, "DifyLLM");
        check::<super::super::coze::Config>(&python, "CozeLLM");
        check::<super::super::fastgpt::Config>(&python, "FastgptLLM");
        check::<super::super::gemini::Config>(&python, "GeminiLLM");
    }
}
