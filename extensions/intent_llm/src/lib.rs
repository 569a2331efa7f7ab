//! The `intent_llm` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/intent-extension@0.2.0`, written with the guest SDK) that recognises the
//! user's intent with the host's LLM before the chat LLM runs, like the Python server's
//! `intent_llm` provider.
//!
//! The LLM may choose among the tools the host passes to `detect` (the session's extension and
//! device tools), `handle_exit_intent` and `continue_chat`; any other answer means plain chat.
//!
//! The logic lives in [`intent`]; everything compiles natively, so `cargo test` runs the unit
//! tests on the build machine.

pub mod intent;

use xiaozhi_sdk::host::{llm, log};
use xiaozhi_sdk::{CallContext, ExtensionError, Intent, IntentDecision, Message, Role, ToolDefinition};

/// Converts an SDK message into the plain module's message.
fn plain(message: &Message) -> intent::Message {
    let role = match message.role {
        Role::System => intent::Role::System,
        Role::User => intent::Role::User,
        Role::Assistant => intent::Role::Assistant,
        Role::Tool => intent::Role::Tool,
    };
    intent::Message { role, content: message.content.clone() }
}

/// The exported recogniser.
pub struct IntentLlm;

impl Intent for IntentLlm {
    fn detect(
        history: &[Message],
        text: &str,
        tools: &[ToolDefinition],
        _context: &CallContext,
    ) -> Result<IntentDecision, ExtensionError> {
        if text.trim().is_empty() {
            return Ok(IntentDecision::ContinueChat);
        }
        let available = intent::tools_from_definitions(
            tools.iter().map(|t| (t.name.as_str(), t.description.as_str(), t.parameters_json.as_str())),
        );
        let offered = intent::offered_tools(&available);
        let history: Vec<intent::Message> = history.iter().map(plain).collect();
        let messages = [
            Message { role: Role::System, content: intent::system_prompt(&offered) },
            Message { role: Role::User, content: intent::user_prompt(&history, text) },
        ];
        let reply = llm::complete(&messages, Some(intent::MAX_TOKENS))?;
        let decision = intent::decide(&reply, Some(&offered));
        let (kind, tool) = match &decision {
            intent::Decision::ContinueChat => ("continue-chat", ""),
            intent::Decision::Exit => ("exit", ""),
            intent::Decision::CallTool(name, _) => ("call-tool", name.as_str()),
        };
        if log::enabled(log::Level::Info) {
            log::log(
                log::Level::Info,
                "intent recognised",
                &[("decision".into(), kind.into()), ("tool".into(), tool.into())],
            );
        }
        Ok(match decision {
            intent::Decision::ContinueChat => IntentDecision::ContinueChat,
            intent::Decision::Exit => IntentDecision::Exit,
            intent::Decision::CallTool(name, arguments) => IntentDecision::CallTool((name, arguments)),
        })
    }
}

xiaozhi_sdk::export_intent!(IntentLlm);
