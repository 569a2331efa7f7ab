//! The `intent_llm` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/intent-extension@0.1.0`) that recognises the user's intent with the
//! host's LLM before the chat LLM runs, like the Python server's `intent_llm` provider.
//!
//! The available tools come from the configuration key `tools_json` (a JSON array of tool
//! definitions, see [`intent::parse_tools`]). Without it, only `handle_exit_intent` and
//! `continue_chat` are offered, and any valid tool name the LLM picks is passed to the host.
//!
//! The logic lives in [`intent`], which also compiles natively, so `cargo test` runs the unit
//! tests on the build machine; the WIT bindings exist only on `wasm32`.

pub mod intent;

/// The component glue: WIT bindings and the exported `intent` interface.
#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../../wit/xiaozhi-extension@0.1.0",
        world: "intent-extension",
    });

    use crate::intent;
    use exports::xiaozhi::extension::intent::Guest;
    use xiaozhi::extension::types::{CallContext, ExtensionError, IntentDecision, Message, Role};
    use xiaozhi::extension::{config, llm};

    /// Converts a WIT message into the plain module's message.
    fn plain(message: &Message) -> intent::Message {
        let role = match message.role {
            Role::System => intent::Role::System,
            Role::User => intent::Role::User,
            Role::Assistant => intent::Role::Assistant,
            Role::Tool => intent::Role::Tool,
        };
        intent::Message { role, content: message.content.clone() }
    }

    /// The exported component.
    struct IntentLlm;

    impl Guest for IntentLlm {
        fn detect(
            history: Vec<Message>,
            text: String,
            _context: CallContext,
        ) -> Result<IntentDecision, ExtensionError> {
            if text.trim().is_empty() {
                return Ok(IntentDecision::ContinueChat);
            }
            let configured = match config::get(intent::TOOLS_CONFIG_KEY) {
                Some(json) if !json.trim().is_empty() => {
                    Some(intent::parse_tools(&json).map_err(ExtensionError::Failed)?)
                }
                _ => None,
            };
            let offered = intent::offered_tools(configured.as_deref().unwrap_or_default());
            let history: Vec<intent::Message> = history.iter().map(plain).collect();
            let messages = [
                Message { role: Role::System, content: intent::system_prompt(&offered) },
                Message { role: Role::User, content: intent::user_prompt(&history, &text) },
            ];
            let reply = llm::complete(&messages, Some(intent::MAX_TOKENS))?;
            Ok(match intent::decide(&reply, configured.as_ref().map(|_| offered.as_slice())) {
                intent::Decision::ContinueChat => IntentDecision::ContinueChat,
                intent::Decision::Exit => IntentDecision::Exit,
                intent::Decision::CallTool(name, arguments) => IntentDecision::CallTool((name, arguments)),
            })
        }
    }

    export!(IntentLlm);
}
