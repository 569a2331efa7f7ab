//! The MCP JSON-RPC 2.0 messages exchanged with the device's MCP server (device-protocol.md §4).
//!
//! These are the `payload` of `{"type":"mcp","payload":…}` envelopes. The firmware's rules shape
//! this module: request ids must be JSON **numbers** (a string id is dropped without a reply), error
//! replies carry a `message` but no `code`, and `tools/list` pages with a `nextCursor` that is the
//! name of the next tool.

use serde_json::{Map, Value, json};

/// The MCP protocol revision the firmware speaks.
pub const PROTOCOL_VERSION: &str = "2024-11-05";

/// Longest tool name the LLM APIs accept.
pub const MAX_TOOL_NAME: usize = 64;

/// Why an MCP message or result could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum McpError {
    /// The payload is not a JSON object.
    #[error("MCP payload is not a JSON object")]
    NotAnObject,
    /// A response whose `id` is missing or not a non-negative integer, so it matches no request.
    #[error("MCP response has no numeric id")]
    BadId,
    /// A result of the wrong shape.
    #[error("malformed MCP result: {0}")]
    Malformed(String),
    /// The tool ran and reported an error (`isError: true`); the text is the tool's own message.
    #[error("tool error: {0}")]
    ToolError(String),
}

/// An MCP message received from the device.
#[derive(Debug, Clone, PartialEq)]
pub enum McpIncoming {
    /// The successful answer to our request `id`.
    Result {
        /// The request id.
        id: u64,
        /// The `result` member.
        result: Value,
    },
    /// The error answer to our request `id`.
    Error {
        /// The request id.
        id: u64,
        /// `error.message` (the firmware sends no `code`).
        message: String,
    },
    /// A request or notification from the device, which this client does not serve.
    Other,
}

/// A tool offered by the device.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    /// The device's name for it, e.g. `self.audio_speaker.set_volume`.
    pub name: String,
    /// What it does (empty when the device gave none).
    pub description: String,
    /// The JSON Schema of its arguments (an empty object schema when the device gave none).
    pub input_schema: Value,
}

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// The `initialize` request. With `vision = Some((url, token))` the device's camera is told where
/// to POST photos for explanation (`capabilities.vision`).
pub fn initialize(id: u64, vision: Option<(&str, &str)>) -> Value {
    let mut capabilities = Map::new();
    if let Some((url, token)) = vision {
        capabilities.insert("vision".into(), json!({"url": url, "token": token}));
    }
    request(
        id,
        "initialize",
        json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": capabilities,
            "clientInfo": {"name": "xiaozhi-server", "version": env!("CARGO_PKG_VERSION")},
        }),
    )
}

/// The `tools/list` request for the page starting at `cursor` (the first page when `None`).
pub fn tools_list(id: u64, cursor: Option<&str>) -> Value {
    let params = match cursor {
        Some(c) => json!({"cursor": c}),
        None => json!({}),
    };
    request(id, "tools/list", params)
}

/// The `tools/call` request for tool `name` (the device's own name) with `arguments`.
pub fn tools_call(id: u64, name: &str, arguments: Value) -> Value {
    request(id, "tools/call", json!({"name": name, "arguments": arguments}))
}

/// `notifications/cancelled` for our request `id`, given up (timed out or its turn aborted).
pub fn cancelled_notification(id: u64, reason: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id, "reason": reason}})
}

/// The `notifications/initialized` notification (no id; the device ignores notifications).
pub fn initialized_notification() -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
}

/// Classifies one JSON-RPC message from the device.
///
/// Anything with a `method` is a request or notification ([`McpIncoming::Other`]). Otherwise it is
/// a response and must carry a numeric `id` and a `result` or an `error`.
pub fn parse(payload: &Value) -> Result<McpIncoming, McpError> {
    let Value::Object(map) = payload else {
        return Err(McpError::NotAnObject);
    };
    if map.contains_key("method") {
        return Ok(McpIncoming::Other);
    }
    let id = map.get("id").and_then(numeric_id);
    if let Some(error) = map.get("error") {
        let id = id.ok_or(McpError::BadId)?;
        let message = match error {
            Value::Object(e) => match e.get("message") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => error.to_string(),
            },
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Ok(McpIncoming::Error { id, message });
    }
    if let Some(result) = map.get("result") {
        let id = id.ok_or(McpError::BadId)?;
        return Ok(McpIncoming::Result { id, result: result.clone() });
    }
    Ok(McpIncoming::Other)
}

/// A JSON number that is a non-negative integer (cJSON may print ids as `1.0`-style doubles).
fn numeric_id(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        (f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64)
    })
}

/// The tools of one `tools/list` result and the cursor of the next page (`nextCursor`, when
/// present and non-empty). Entries without a string `name` are skipped.
pub fn parse_tools_list(result: &Value) -> Result<(Vec<McpTool>, Option<String>), McpError> {
    let tools = result
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| McpError::Malformed("tools/list result has no \"tools\" array".into()))?;
    let tools = tools
        .iter()
        .filter_map(|t| {
            let name = t.get("name")?.as_str()?.to_string();
            let description = t.get("description").and_then(Value::as_str).unwrap_or_default().to_string();
            let input_schema = match t.get("inputSchema") {
                Some(schema @ Value::Object(_)) => schema.clone(),
                _ => json!({"type": "object", "properties": {}}),
            };
            Some(McpTool { name, description, input_schema })
        })
        .collect();
    let cursor = result.get("nextCursor").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string);
    Ok((tools, cursor))
}

/// The text of a `tools/call` result: the `text` of every `content[]` item of type `text`, joined
/// by newlines. A result with `isError: true` is [`McpError::ToolError`] with that text.
pub fn call_result_text(result: &Value) -> Result<String, McpError> {
    let content = result
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| McpError::Malformed("tools/call result has no \"content\" array".into()))?;
    let text = content
        .iter()
        .filter(|item| item.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|item| item.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n");
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        return Err(McpError::ToolError(text));
    }
    Ok(text)
}

/// A tool name the LLM APIs accept: every character outside `[A-Za-z0-9_-]` becomes `_`, and the
/// result is at most [`MAX_TOOL_NAME`] characters.
pub fn sanitize_tool_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(MAX_TOOL_NAME)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_has_numeric_id_and_optional_vision() {
        let m = initialize(1, Some(("http://host:8003/mcp/vision/explain", "tok")));
        assert_eq!(m["jsonrpc"], "2.0");
        assert_eq!(m["id"], 1);
        assert!(m["id"].is_u64());
        assert_eq!(m["method"], "initialize");
        assert_eq!(m["params"]["protocolVersion"], "2024-11-05");
        assert_eq!(m["params"]["capabilities"]["vision"]["url"], "http://host:8003/mcp/vision/explain");
        assert_eq!(m["params"]["capabilities"]["vision"]["token"], "tok");
        assert_eq!(m["params"]["clientInfo"]["name"], "xiaozhi-server");
        assert_eq!(m["params"]["clientInfo"]["version"], env!("CARGO_PKG_VERSION"));
        let m = initialize(7, None);
        assert!(m["params"]["capabilities"].is_object());
        assert!(m["params"]["capabilities"].get("vision").is_none());
    }

    #[test]
    fn tools_list_and_call_shapes() {
        assert_eq!(tools_list(2, None), json!({"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}));
        assert_eq!(
            tools_list(3, Some("self.screen.set_theme")),
            json!({"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"cursor":"self.screen.set_theme"}})
        );
        assert_eq!(
            tools_call(4, "self.audio_speaker.set_volume", json!({"volume": 50})),
            json!({"jsonrpc":"2.0","id":4,"method":"tools/call",
                   "params":{"name":"self.audio_speaker.set_volume","arguments":{"volume":50}}})
        );
        let n = initialized_notification();
        assert_eq!(n["method"], "notifications/initialized");
        assert!(n.get("id").is_none());
    }

    #[test]
    fn parses_results_errors_and_others() {
        let init_reply = json!({"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2024-11-05",
            "capabilities":{"tools":{}},"serverInfo":{"name":"bread-compact-wifi","version":"2.4.2"}}});
        let McpIncoming::Result { id, result } = parse(&init_reply).unwrap() else { panic!() };
        assert_eq!(id, 1);
        assert_eq!(result["serverInfo"]["version"], "2.4.2");

        let err = json!({"jsonrpc":"2.0","id":5,"error":{"message":"Missing valid argument: volume"}});
        assert_eq!(
            parse(&err).unwrap(),
            McpIncoming::Error { id: 5, message: "Missing valid argument: volume".into() }
        );

        let float_id = json!({"jsonrpc":"2.0","id":6.0,"result":{}});
        assert!(matches!(parse(&float_id).unwrap(), McpIncoming::Result { id: 6, .. }));

        let request = json!({"jsonrpc":"2.0","id":9,"method":"tools/list","params":{}});
        assert_eq!(parse(&request).unwrap(), McpIncoming::Other);
        let notification = json!({"jsonrpc":"2.0","method":"notifications/state_changed","params":{}});
        assert_eq!(parse(&notification).unwrap(), McpIncoming::Other);

        assert_eq!(parse(&json!([1])), Err(McpError::NotAnObject));
        assert_eq!(parse(&json!({"jsonrpc":"2.0","id":"1","result":{}})), Err(McpError::BadId));
        assert_eq!(parse(&json!({"jsonrpc":"2.0","id":-1,"error":{"message":"x"}})), Err(McpError::BadId));
    }

    #[test]
    fn parses_tool_pages() {
        let page = json!({"tools":[
            {"name":"self.get_device_status","description":"Provides the real-time information of the device",
             "inputSchema":{"type":"object","properties":{}}},
            {"name":"self.audio_speaker.set_volume","description":"Set the volume of the audio speaker.",
             "inputSchema":{"type":"object","properties":{"volume":{"type":"integer","minimum":0,"maximum":100}},
                            "required":["volume"]}},
            {"description":"nameless"}
        ],"nextCursor":"self.screen.set_brightness"});
        let (tools, cursor) = parse_tools_list(&page).unwrap();
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[1].name, "self.audio_speaker.set_volume");
        assert_eq!(tools[1].input_schema["required"][0], "volume");
        assert_eq!(cursor.as_deref(), Some("self.screen.set_brightness"));

        let last = json!({"tools":[{"name":"self.reboot"}],"nextCursor":""});
        let (tools, cursor) = parse_tools_list(&last).unwrap();
        assert_eq!(tools[0].description, "");
        assert_eq!(tools[0].input_schema, json!({"type":"object","properties":{}}));
        assert_eq!(cursor, None);
        assert!(matches!(parse_tools_list(&json!({"items":[]})), Err(McpError::Malformed(_))));
    }

    #[test]
    fn call_results_become_text() {
        let ok = json!({"content":[{"type":"text","text":"true"}],"isError":false});
        assert_eq!(call_result_text(&ok).unwrap(), "true");
        let multi =
            json!({"content":[{"type":"text","text":"a"},{"type":"image","image":"{}"},{"type":"text","text":"b"}]});
        assert_eq!(call_result_text(&multi).unwrap(), "a\nb");
        let failed = json!({"content":[{"type":"text","text":"volume out of range"}],"isError":true});
        assert_eq!(call_result_text(&failed), Err(McpError::ToolError("volume out of range".into())));
        assert!(matches!(call_result_text(&json!({"isError":false})), Err(McpError::Malformed(_))));
    }

    #[test]
    fn sanitizes_tool_names() {
        assert_eq!(sanitize_tool_name("self.audio_speaker.set_volume"), "self_audio_speaker_set_volume");
        assert_eq!(sanitize_tool_name("a-b_C9 灯/x"), "a-b_C9___x");
        let long = "x.".repeat(50);
        let s = sanitize_tool_name(&long);
        assert_eq!(s.chars().count(), MAX_TOOL_NAME);
        assert!(s.starts_with("x_x_"));
    }
}
