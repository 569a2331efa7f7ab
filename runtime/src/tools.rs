//! The one registry of tools offered to the LLM in a turn, and what a tool call does.
//!
//! The tools are the server's WebAssembly extension tools, the device's MCP tools, the tools of
//! the MCP servers of `data/.mcp_server_settings.json` ([`crate::mcp::servers`]) and the tools
//! of the servers connected to the MCP endpoint that the device may see ([`crate::mcp::endpoint`]).
//! Name-clash rule: names are unique in what the LLM sees. Extension tools keep their names (the
//! registry's snapshot at the start of the turn; in id order, a later extension offering a name
//! already taken is skipped for that name, with a warning). Device tools are exposed under their
//! sanitized names (`self.audio_speaker.set_volume` → `self_audio_speaker_set_volume`); a device
//! tool whose name is taken by an extension tool, or two device names that sanitize alike, keep
//! both: the later one gets a numeric suffix, logged — never silently dropped. The settings file's
//! servers' tools come next (servers in name order), then the endpoint's, in connection order,
//! under the same rule (suffixes handed out in linear time).
//!
//! A tool call ends in a [`ToolAction`] that mirrors the Python server's `ActionResponse`.
//! One tool is special, as in the Python server where the plugin rewrites the connection's
//! prompt: a `response` from the tool named [`CHANGE_ROLE_TOOL`] that carries a `result` makes
//! that result the session's new system prompt ([`ToolAction::ChangeRole`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::extensions::{ExtensionScope, Kind, ToolAction as ExtAction, ToolResult};
use crate::llm::ToolSpec;
use crate::mcp::endpoint::{EndpointTool, Hub};
use crate::mcp::servers::{McpServers, ServerTool};
use crate::mcp::{DeviceTool, McpClient, UniqueNames};

/// The tool whose `response` with a `result` replaces the session's system prompt (the built-in
/// `change_role` extension).
pub const CHANGE_ROLE_TOOL: &str = "change_role";

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
    /// Speak `response` and make `prompt` the session's system prompt ([`CHANGE_ROLE_TOOL`]).
    ChangeRole {
        /// The new system prompt.
        prompt: String,
        /// What is said to the user.
        response: String,
    },
}

/// Extension tools offered whatever `Intent.<x>.functions` lists: `handle_exit_intent` and
/// `get_lunar`, which the Python server always loads, and our `get_time` (the Python server puts
/// the time in every prompt instead).
pub const ALWAYS_OFFERED: [&str; 3] = ["handle_exit_intent", "get_lunar", "get_time"];

/// The tools of one turn.
#[derive(Clone, Default)]
pub struct ToolBox {
    mcp: Option<Arc<McpClient>>,
    extensions: Option<ExtensionScope>,
    /// `Intent.<x>.functions`: extension ids or tool names offered; `None` offers every tool.
    functions: Option<Arc<[String]>>,
    /// The MCP endpoint's tool servers and the device whose turn this is.
    endpoint: Option<(Arc<Hub>, Arc<str>)>,
    /// The MCP servers of the settings file, and the longest a call to one may take.
    servers: Option<(Arc<McpServers>, Duration)>,
}

/// The tools of one turn, under the names the LLM sees.
struct Listing {
    extensions: Vec<ToolSpec>,
    device: Vec<(String, DeviceTool)>,
    servers: Vec<(String, ServerTool)>,
    endpoint: Vec<(String, EndpointTool)>,
}

impl ToolBox {
    /// Tools of a session: its device's MCP tools (if any) and the server's extension tools
    /// (those `functions` names by extension id or tool name, and [`ALWAYS_OFFERED`]; all of them
    /// when `functions` is `None`).
    pub fn new(
        mcp: Option<Arc<McpClient>>,
        extensions: Option<ExtensionScope>,
        functions: Option<Arc<[String]>>,
    ) -> Self {
        Self { mcp, extensions, functions, endpoint: None, servers: None }
    }

    /// Also offers the tools of the settings file's MCP servers; a call to one waits at most
    /// `call_timeout` (and never more than the turn's tool timeout).
    pub fn with_servers(mut self, servers: Arc<McpServers>, call_timeout: Duration) -> Self {
        self.servers = Some((servers, call_timeout));
        self
    }

    /// Also offers the tools of the MCP endpoint's servers that `device_id` may see.
    pub fn with_endpoint(mut self, hub: Arc<Hub>, device_id: &str) -> Self {
        self.endpoint = Some((hub, Arc::from(device_id)));
        self
    }

    /// Whether the extension `id`'s tool `name` is offered.
    fn offered(&self, id: &str, name: &str) -> bool {
        match &self.functions {
            None => true,
            Some(list) => ALWAYS_OFFERED.contains(&name) || list.iter().any(|f| f == id || f == name),
        }
    }

    /// The tool definitions offered to the LLM. Waits briefly for the device's tool list when
    /// the session has only just started.
    pub async fn specs(&self) -> Vec<ToolSpec> {
        if let Some(mcp) = &self.mcp {
            mcp.wait_ready().await;
        }
        let Listing { extensions: mut specs, device, servers, endpoint } = self.listing();
        let servers = servers.into_iter().map(|(name, t)| (name, t.tool));
        let endpoint = endpoint.into_iter().map(|(name, t)| (name, t.tool));
        specs.extend(device.into_iter().chain(servers).chain(endpoint).map(|(name, t)| ToolSpec {
            name,
            description: t.description,
            parameters: t.input_schema,
        }));
        specs
    }

    /// The one place that names the tools, so that [`ToolBox::specs`] and [`ToolBox::call`] agree:
    /// the extension tools (a name offered twice goes to the first extension), then the device
    /// tools with the names they are exposed under, then the settings file's servers' tools, then
    /// the endpoint's tools.
    fn listing(&self) -> Listing {
        let mut names = UniqueNames::default();
        let mut specs: Vec<ToolSpec> = Vec::new();
        if let Some(ext) = &self.extensions {
            for loaded in ext.snapshot.of_kind(Kind::Tool) {
                for tool in &loaded.tools {
                    if !self.offered(loaded.id(), &tool.name) {
                        continue;
                    }
                    if !names.reserve(&tool.name) {
                        tracing::warn!(extension = %loaded.id(), "tool {} is offered twice; the first extension keeps it", tool.name);
                        continue;
                    }
                    let parameters = serde_json::from_str(&tool.parameters_json)
                        .unwrap_or_else(|_| serde_json::json!({"type": "object"}));
                    specs.push(ToolSpec { name: tool.name.clone(), description: tool.description.clone(), parameters });
                }
            }
        }
        let mut device = Vec::new();
        if let Some(mcp) = &self.mcp {
            for t in mcp.tools() {
                let name = names.take(&t.exposed);
                if name != t.exposed {
                    tracing::debug!("device tool {} is exposed as {name}: an extension tool has its name", t.exposed);
                }
                device.push((name, t));
            }
        }
        let mut servers = Vec::new();
        if let Some((hub, _)) = &self.servers {
            for t in hub.tools() {
                let name = names.take(&t.tool.exposed);
                servers.push((name, t));
            }
        }
        let mut endpoint = Vec::new();
        if let Some((hub, device_id)) = &self.endpoint {
            for t in hub.tools_for(device_id) {
                let name = names.take(&t.tool.exposed);
                endpoint.push((name, t));
            }
        }
        Listing { extensions: specs, device, servers, endpoint }
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
        if let Some(ext) = &self.extensions
            && let Some(loaded) = ext.snapshot.tool_owner(name)
        {
            return match ext.host.call_tool(loaded, name, arguments, ext.context.clone()).await {
                Ok(ToolResult { action: ExtAction::Response, result: Some(prompt), response })
                    if name == CHANGE_ROLE_TOOL =>
                {
                    ToolAction::ChangeRole { prompt, response: response.unwrap_or_default() }
                }
                Ok(result) => action_from_extension(result),
                Err(e) => ToolAction::Error(format!("{name} failed: {e}")),
            };
        }
        let Listing { device, servers, endpoint, .. } = self.listing();
        let outcome = if let Some((_, tool)) = device.into_iter().find(|(exposed, _)| exposed == name)
            && let Some(mcp) = &self.mcp
        {
            mcp.call(&tool.name, args, timeout).await.map_err(|e| e.to_string())
        } else if let Some((_, t)) = servers.into_iter().find(|(exposed, _)| exposed == name) {
            let cap = self.servers.as_ref().map_or(timeout, |(_, cap)| timeout.min(*cap));
            t.call(args, cap).await.map_err(|e| e.to_string())
        } else if let Some((_, t)) = endpoint.into_iter().find(|(exposed, _)| exposed == name) {
            t.client.call_bounded(&t.tool.name, args, timeout).await.map_err(|e| e.to_string())
        } else {
            return ToolAction::Error(format!("no tool named {name}"));
        };
        match outcome {
            Ok(text) => action_from_device_text(text),
            Err(e) => ToolAction::Error(format!("{name} failed: {e}")),
        }
    }
}

/// An extension's result as the turn's action (`record` is spoken and recorded, like `response`).
fn action_from_extension(result: ToolResult) -> ToolAction {
    match result.action {
        ExtAction::None => ToolAction::None,
        ExtAction::Response | ExtAction::Record => {
            ToolAction::Response(result.response.or(result.result).unwrap_or_default())
        }
        ExtAction::ReqLlm => ToolAction::ReqLlm(result.result.or(result.response).unwrap_or_default()),
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
