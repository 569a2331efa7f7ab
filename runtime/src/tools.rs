//! The one registry of tools offered to the LLM in a turn, and what a tool call does.
//!
//! Today the tools are the device's MCP tools (issue #4 adds WebAssembly extension tools here).
//! Name-clash rule: names are unique in what the LLM sees. Device tools are exposed under their
//! sanitized names (`self.audio_speaker.set_volume` → `self_audio_speaker_set_volume`); two
//! device names that sanitize alike keep both, the later with a numeric suffix (logged). When
//! server-side tools arrive, a server tool keeps its name and a clashing device tool is the one
//! renamed, with a warning — never silently dropped.
//!
//! A tool call ends in a [`ToolAction`] that mirrors the Python server's `ActionResponse`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::llm::ToolSpec;
use crate::mcp::McpClient;

/// How long a turn waits for a just-connected device to list its tools.
const MCP_READY_WAIT: Duration = Duration::from_secs(2);

/// What the turn does with a tool's outcome (the Python server's `Action`).
#[derive(Debug, Clone, PartialEq)]
pub enum ToolAction {
    /// Nothing to say; the turn ends.
    None,
    /// Speak this text as it is; no further LLM call.
    Response(String),
    /// Give this result to the LLM as the tool message and let it answer.
    ReqLlm(String),
    /// The call failed; the error text goes to the LLM as the tool message.
    Error(String),
}

/// The tools of one turn.
#[derive(Clone, Default)]
pub struct ToolBox {
    mcp: Option<Arc<McpClient>>,
}

impl ToolBox {
    /// Tools of a session whose device may offer MCP tools.
    pub fn new(mcp: Option<Arc<McpClient>>) -> Self {
        Self { mcp }
    }

    /// The tool definitions offered to the LLM. Waits briefly for the device's tool list when
    /// the session has only just started.
    pub async fn specs(&self) -> Vec<ToolSpec> {
        let Some(mcp) = &self.mcp else { return Vec::new() };
        mcp.wait_ready(MCP_READY_WAIT).await;
        mcp.tools()
            .into_iter()
            .map(|t| ToolSpec { name: t.exposed, description: t.description, parameters: t.input_schema })
            .collect()
    }

    /// Runs the tool the LLM called `name` with `arguments` (JSON text).
    pub async fn call(&self, name: &str, arguments: &str, timeout: Duration) -> ToolAction {
        let args: Value = match arguments.trim() {
            "" => Value::Object(Default::default()),
            text => match serde_json::from_str(text) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) | Err(_) => {
                    return ToolAction::Error(format!("arguments of {name} are not a JSON object: {text}"));
                }
            },
        };
        let Some(mcp) = &self.mcp else {
            return ToolAction::Error(format!("no tool named {name}"));
        };
        let Some(tool) = mcp.tools().into_iter().find(|t| t.exposed == name) else {
            return ToolAction::Error(format!("no tool named {name}"));
        };
        match mcp.call(&tool.name, args, timeout).await {
            Ok(text) => action_from_device_text(text),
            Err(e) => ToolAction::Error(format!("{name} failed: {e}")),
        }
    }
}

/// A device tool's text whose JSON carries an `action` (the vision tool does) maps to that
/// action, as in the Python server; anything else goes back to the LLM.
fn action_from_device_text(text: String) -> ToolAction {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text) {
        let field = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
        if let Some(action) = field("action") {
            match action.to_ascii_uppercase().as_str() {
                "RESPONSE" => return ToolAction::Response(field("response").unwrap_or_default()),
                "NONE" => return ToolAction::None,
                "ERROR" => return ToolAction::Error(field("response").or(field("message")).unwrap_or(text)),
                _ => {}
            }
        }
    }
    ToolAction::ReqLlm(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_text_maps_to_actions() {
        assert_eq!(action_from_device_text("true".into()), ToolAction::ReqLlm("true".into()));
        assert_eq!(
            action_from_device_text(r#"{"success":true,"action":"RESPONSE","response":"A cat."}"#.into()),
            ToolAction::Response("A cat.".into())
        );
        assert_eq!(action_from_device_text(r#"{"volume":70}"#.into()), ToolAction::ReqLlm(r#"{"volume":70}"#.into()));
    }
}
