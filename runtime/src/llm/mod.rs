//! Language models: the [`Llm`] trait, chat messages and tool calls.
//!
//! Contract: [`Llm::stream`] sends the dialogue (and the tools, when there are any) and returns a
//! stream of [`LlmDelta`]s: text as it arrives with any `<think>…</think>` block already removed,
//! then, if the model asked for tools, one [`LlmDelta::ToolCalls`] with the calls merged by index
//! (parallel calls included). Dropping the stream cancels the request.

pub mod alibl;
pub(crate) mod chat_app;
pub mod coze;
pub mod dify;
pub mod fastgpt;
pub mod gemini;
pub mod openai;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::config::LlmSpec;
use crate::remote::ProviderError;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt.
    System,
    /// The person talking to the device.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

/// One tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The id the model gave the call; echoed in the tool result.
    pub id: String,
    /// The tool's name as offered to the model.
    pub name: String,
    /// The arguments as JSON text, exactly as the model produced them.
    pub arguments: String,
}

/// One message of the dialogue, in the shape of OpenAI's chat API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The text (may be empty for an assistant message that only calls tools).
    pub content: String,
    /// Tool calls made by an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool result: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with text only.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// An assistant message that calls tools.
    pub fn tool_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self { role: Role::Assistant, content: content.into(), tool_calls: calls, tool_call_id: None }
    }

    /// A tool result answering `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: Role::Tool, content: content.into(), tool_calls: Vec::new(), tool_call_id: Some(call_id.into()) }
    }
}

/// `message` bounded for keeping (the dialogue, the stored history): its text cut at `max_bytes`,
/// and tool-call arguments over `max_bytes` replaced by `{}` (cut JSON would not parse).
pub fn capped(mut message: ChatMessage, max_bytes: usize) -> ChatMessage {
    if let std::borrow::Cow::Owned(cut) = crate::text::cut_bytes(&message.content, max_bytes) {
        message.content = cut;
    }
    for call in &mut message.tool_calls {
        if call.arguments.len() > max_bytes {
            call.arguments = "{}".into();
        }
    }
    message
}

/// A tool offered to the model (OpenAI function-calling shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model uses to call it (`^[A-Za-z0-9_-]{1,64}$`).
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmDelta {
    /// Answer text, in order, with `<think>` blocks removed.
    Text(String),
    /// The tool calls of this answer, merged by index; sent once, at the end.
    ToolCalls(Vec<ToolCall>),
}

/// The stream returned by [`Llm::stream`].
pub type LlmStream = Pin<Box<dyn Stream<Item = Result<LlmDelta, ProviderError>> + Send>>;

/// A chat model.
#[async_trait]
pub trait Llm: Send + Sync {
    /// Starts a streamed completion of `messages`, offering `tools` when it is not empty.
    async fn stream(&self, messages: &[ChatMessage], tools: &[ToolSpec]) -> Result<LlmStream, ProviderError>;
}

/// Builds the LLM backend that a validated config entry names.
pub fn build(spec: &LlmSpec) -> Result<Arc<dyn Llm>, ProviderError> {
    match spec {
        LlmSpec::OpenAi(cfg) => Ok(Arc::new(openai::OpenAiLlm::new(cfg.clone())?)),
        LlmSpec::Dify(cfg) => dify::build(cfg),
        LlmSpec::Coze(cfg) => coze::build(cfg),
        LlmSpec::FastGpt(cfg) => fastgpt::build(cfg),
        LlmSpec::AliBl(cfg) => alibl::build(cfg),
        LlmSpec::Gemini(cfg) => gemini::build(cfg),
    }
}
