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
//! A tool call ends in a [`ToolOutcome`]: the [`Effect`]s an extension returned (speak, give the
//! LLM a result, note, end the conversation, set the prompt, play audio, call a device tool), or
//! the effect of a device or MCP tool's text (its JSON `action`, as the Python server reads it;
//! else the text goes to the LLM), or an error for the LLM. No tool is known here by name: what
//! a tool does is in its result.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::extensions::{Effect, ExtensionScope, Kind, LoadedExtension};
use crate::llm::ToolSpec;
use crate::mcp::endpoint::{EndpointTool, Hub};
use crate::mcp::servers::{McpServers, ServerTool};
use crate::mcp::{DeviceTool, McpClient, UniqueNames};

/// What a tool call came to.
#[derive(Clone)]
pub enum ToolOutcome {
    /// It ran: what happens, in order.
    Effects {
        /// The effects.
        effects: Vec<Effect>,
        /// The extension that answered, if one did (its grant decides what audio it may play).
        from: Option<Arc<LoadedExtension>>,
    },
    /// It failed; the error text goes to the LLM as the tool message.
    Error(String),
}

impl ToolOutcome {
    /// Effects that come from no extension.
    fn plain(effects: Vec<Effect>) -> Self {
        Self::Effects { effects, from: None }
    }
}

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
    /// (those `functions` names by extension id or tool name, and those of extensions whose
    /// manifest says `always_offered`; all of them when `functions` is `None`).
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

    /// Whether the extension's tool `name` is offered.
    fn offered(&self, ext: &LoadedExtension, name: &str) -> bool {
        match &self.functions {
            None => true,
            Some(list) => ext.manifest.always_offered || list.iter().any(|f| f == ext.id() || f == name),
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
                    if !self.offered(loaded, &tool.name) {
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
    pub async fn call(&self, name: &str, arguments: &str, timeout: Duration) -> ToolOutcome {
        let args = match object_arguments(name, arguments) {
            Ok(args) => args,
            Err(message) => return ToolOutcome::Error(message),
        };
        if let Some(ext) = &self.extensions
            && let Some(loaded) = ext.snapshot.tool_owner(name)
        {
            return match ext.host.call_tool(loaded, name, arguments, ext.context.clone()).await {
                Ok(result) => ToolOutcome::Effects { effects: result.effects, from: Some(Arc::clone(loaded)) },
                Err(e) => ToolOutcome::Error(format!("{name} failed: {e}")),
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
            return ToolOutcome::Error(format!("no tool named {name}"));
        };
        match outcome {
            Ok(text) => outcome_of_device_text(text),
            Err(e) => ToolOutcome::Error(format!("{name} failed: {e}")),
        }
    }

    /// Calls the device's own tool `name` (as the device lists it) for an extension's
    /// `call-device-tool` effect, and answers its text.
    pub async fn call_device(&self, name: &str, arguments: &str, timeout: Duration) -> Result<String, String> {
        let args = object_arguments(name, arguments)?;
        let Some(mcp) = &self.mcp else {
            return Err(format!("the device offers no tools, so {name} cannot be called"));
        };
        if !mcp.tools().iter().any(|tool| tool.name == name) {
            return Err(format!("the device has no tool named {name}"));
        }
        mcp.call(name, args, timeout).await.map_err(|e| format!("{name} failed: {e}"))
    }
}

/// A call's arguments as a JSON object (empty text is an empty object).
fn object_arguments(name: &str, arguments: &str) -> Result<Value, String> {
    match arguments.trim() {
        "" => Ok(Value::Object(Default::default())),
        text => match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) | Err(_) => Err(format!("arguments of {name} are not a JSON object: {text}")),
        },
    }
}

/// A device tool's text whose JSON carries an `action` (the vision tool does) maps to that
/// action, as in the Python server; anything else goes back to the LLM.
fn outcome_of_device_text(text: String) -> ToolOutcome {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text) {
        let field = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
        if let Some(action) = field("action") {
            match action.to_ascii_uppercase().as_str() {
                "RESPONSE" => return ToolOutcome::plain(vec![Effect::Speak(field("response").unwrap_or_default())]),
                "NONE" => return ToolOutcome::plain(Vec::new()),
                "ERROR" => return ToolOutcome::Error(field("response").or(field("message")).unwrap_or(text)),
                _ => {}
            }
        }
    }
    ToolOutcome::plain(vec![Effect::ReplyToLlm(text)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(text: &str) -> Result<Vec<Effect>, String> {
        match outcome_of_device_text(text.into()) {
            ToolOutcome::Effects { effects, from: None } => Ok(effects),
            ToolOutcome::Effects { .. } => Err("from an extension".into()),
            ToolOutcome::Error(message) => Err(message),
        }
    }

    #[test]
    fn device_text_maps_to_effects() {
        assert_eq!(effects("true"), Ok(vec![Effect::ReplyToLlm("true".into())]));
        assert_eq!(
            effects(r#"{"success":true,"action":"RESPONSE","response":"A cat."}"#),
            Ok(vec![Effect::Speak("A cat.".into())])
        );
        assert_eq!(effects(r#"{"volume":70}"#), Ok(vec![Effect::ReplyToLlm(r#"{"volume":70}"#.into())]));
        assert_eq!(effects(r#"{"action":"none"}"#), Ok(Vec::new()));
        assert_eq!(effects(r#"{"action":"ERROR","message":"no camera"}"#), Err("no camera".into()));
    }
}
