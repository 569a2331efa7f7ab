//! The device side of MCP: what the firmware's `McpServer::ParseMessage` (`main/mcp_server.cc`)
//! answers, as pure functions over a small simulated device state.
//!
//! The rules followed (device-protocol.md §4.1–4.3):
//! - `jsonrpc` must be `"2.0"` and `method` a string, or the message is dropped (so responses sent
//!   to the device are dropped); `notifications/*` are ignored; `params`, when present, must be an
//!   object; `id` must be a JSON number (a string id is dropped without a reply).
//! - Errors carry no `code`: `{"jsonrpc":"2.0","id":N,"error":{"message":"..."}}`.
//! - `tools/list` pages by tool name: the cursor is the name of the first tool of the next page.
//!   The simulator pages at [`TOOLS_PAGE_SIZE`] tools so that servers must follow `nextCursor`.

use serde_json::{Value, json};

/// Tools per `tools/list` page (the firmware pages at 8000 bytes; two tools per page makes every
/// server follow `nextCursor` at least once).
pub const TOOLS_PAGE_SIZE: usize = 2;

/// The volume the simulated speaker starts at (the firmware's default).
pub const DEFAULT_VOLUME: u8 = 70;

/// The brightness the simulated backlight starts at.
pub const DEFAULT_BRIGHTNESS: u8 = 80;

/// `serverInfo.version` in the `initialize` reply: the firmware version the simulator mimics.
pub const FIRMWARE_VERSION: &str = "2.4.2";

/// The simulated device state that the MCP tools read and change.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// Speaker volume, 0..=100.
    pub volume: u8,
    /// Screen brightness, 0..=100.
    pub brightness: u8,
    /// Every `tools/call` received with a string tool name, in order: (name, arguments). The
    /// arguments are `{}` when the call had none.
    pub calls: Vec<(String, Value)>,
    /// The vision URL and token from the last `initialize` (`capabilities.vision`), if any.
    pub vision: Option<(String, Option<String>)>,
    /// How many tools the server has been sent through `tools/list` so far.
    pub tools_listed: usize,
    /// Whether the device has a camera: it then lists [`TAKE_PHOTO`] (answered by the simulator's
    /// reader, which posts the photo to the vision URL).
    pub camera: bool,
}

/// The camera tool of boards with a camera.
pub const TAKE_PHOTO: &str = "self.camera.take_photo";

/// The camera tool as the firmware lists it.
fn take_photo_json() -> Value {
    json!({
        "name": TAKE_PHOTO,
        "description": "Take a photo and explain it. Use this tool after the user asks you to see something.\nArgs:\n  \
                        `question`: The question that you want to ask about the photo.\nReturn:\n  A JSON object \
                        that provides the photo information.",
        "inputSchema": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]},
    })
}

impl Default for DeviceState {
    fn default() -> Self {
        Self {
            volume: DEFAULT_VOLUME,
            brightness: DEFAULT_BRIGHTNESS,
            calls: Vec::new(),
            vision: None,
            tools_listed: 0,
            camera: false,
        }
    }
}

/// One integer parameter of a tool (every built-in tool the simulator offers takes integers).
struct IntParam {
    name: &'static str,
    min: i32,
    max: i32,
}

/// A tool as the firmware declares it.
struct Tool {
    name: &'static str,
    description: &'static str,
    params: &'static [IntParam],
}

/// The tools, in the firmware's order (common tools first).
const TOOLS: &[Tool] = &[
    Tool {
        name: "self.get_device_status",
        description: "Provides the real-time information of the device, including the current status of the audio \
                      speaker, screen, battery, network, etc.\nUse this tool for: \n1. Answering questions about \
                      current condition (e.g. what is the current volume of the audio speaker?)\n2. As the first \
                      step to control the device (e.g. turn up / down the volume of the audio speaker, etc.)",
        params: &[],
    },
    Tool {
        name: "self.audio_speaker.set_volume",
        description: "Set the volume of the audio speaker. If the current volume is unknown, you must call \
                      `self.get_device_status` tool first and then call this tool.",
        params: &[IntParam { name: "volume", min: 0, max: 100 }],
    },
    Tool {
        name: "self.screen.set_brightness",
        description: "Set the brightness of the screen.",
        params: &[IntParam { name: "brightness", min: 0, max: 100 }],
    },
];

impl Tool {
    /// The tool's JSON in `tools/list` (parameters without a default are required).
    fn to_json(&self) -> Value {
        let mut properties = serde_json::Map::new();
        for p in self.params {
            properties.insert(p.name.into(), json!({"type": "integer", "minimum": p.min, "maximum": p.max}));
        }
        let mut schema = json!({"type": "object", "properties": properties});
        if !self.params.is_empty() {
            schema["required"] = self.params.iter().map(|p| Value::from(p.name)).collect();
        }
        json!({"name": self.name, "description": self.description, "inputSchema": schema})
    }
}

/// The names of the tools the simulator offers, in listing order.
pub fn tool_names() -> Vec<&'static str> {
    TOOLS.iter().map(|t| t.name).collect()
}

/// Handles one MCP JSON-RPC message from the server the way the firmware does and returns the
/// JSON-RPC reply to send back, or `None` when the firmware would stay silent (malformed
/// envelope, notification, non-numeric id).
pub fn handle_request(state: &mut DeviceState, msg: &Value) -> Option<Value> {
    if msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return None;
    }
    let method = msg.get("method")?.as_str()?;
    if method.starts_with("notifications") {
        return None;
    }
    let params = msg.get("params");
    if params.is_some_and(|p| !p.is_object()) {
        return None;
    }
    let id = json_valueint(msg.get("id")?)?;
    let outcome = match method {
        "initialize" => Ok(initialize(state, params)),
        "tools/list" => tools_list(state.camera, params).inspect(|page| {
            state.tools_listed += page.get("tools").and_then(Value::as_array).map_or(0, Vec::len);
        }),
        "tools/call" => tools_call(state, params),
        other => Err(format!("Method not implemented: {other}")),
    };
    Some(match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(message) => json!({"jsonrpc": "2.0", "id": id, "error": {"message": message}}),
    })
}

/// cJSON's `valueint` of a number (the double truncated and saturated to `i32`); `None` when the
/// value is not a number.
fn json_valueint(v: &Value) -> Option<i32> {
    let n = v.as_number()?;
    Some(match n.as_i64() {
        Some(i) => i.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
        // `as` saturates and truncates toward zero, like cJSON.
        None => n.as_f64().map_or(0, |f| f as i32),
    })
}

fn initialize(state: &mut DeviceState, params: Option<&Value>) -> Value {
    let vision = params.and_then(|p| p.get("capabilities")).and_then(|c| c.get("vision"));
    if let Some(url) = vision.and_then(|v| v.get("url")).and_then(Value::as_str) {
        let token = vision.and_then(|v| v.get("token")).and_then(Value::as_str).map(str::to_string);
        state.vision = Some((url.to_string(), token));
    }
    json!({
        "protocolVersion": "2024-11-05",
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "simulator", "version": FIRMWARE_VERSION},
    })
}

fn tools_list(camera: bool, params: Option<&Value>) -> Result<Value, String> {
    let mut all: Vec<Value> = TOOLS.iter().map(Tool::to_json).collect();
    if camera {
        all.push(take_photo_json());
    }
    let cursor = params.and_then(|p| p.get("cursor")).and_then(Value::as_str).unwrap_or("");
    let start = if cursor.is_empty() {
        0
    } else {
        match all.iter().position(|t| t["name"] == cursor) {
            Some(i) => i,
            // The firmware skips every tool looking for the cursor, ends with an empty page and
            // reports it as a size error with an empty tool name.
            None => return Err("Failed to add tool  because of payload size limit".into()),
        }
    };
    let page: Vec<Value> = all.iter().skip(start).take(TOOLS_PAGE_SIZE).cloned().collect();
    let mut result = json!({"tools": page});
    if let Some(next) = all.get(start + TOOLS_PAGE_SIZE) {
        result["nextCursor"] = next["name"].clone();
    }
    Ok(result)
}

fn tools_call(state: &mut DeviceState, params: Option<&Value>) -> Result<Value, String> {
    let Some(params) = params.filter(|p| p.is_object()) else {
        return Err("Missing params".into());
    };
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err("Missing name".into());
    };
    let arguments = params.get("arguments");
    state.calls.push((name.to_string(), arguments.cloned().unwrap_or_else(|| json!({}))));
    if arguments.is_some_and(|a| !a.is_object()) {
        return Err("Invalid arguments".into());
    }
    let Some(tool) = TOOLS.iter().find(|t| t.name == name) else {
        return Err(format!("Unknown tool: {name}"));
    };
    let mut values = Vec::with_capacity(tool.params.len());
    for p in tool.params {
        let Some(v) = arguments.and_then(|a| a.get(p.name)).and_then(json_valueint) else {
            return Err(format!("Missing valid argument: {}", p.name));
        };
        if v < p.min {
            return Err(format!("Value is below minimum allowed: {}", p.min));
        }
        if v > p.max {
            return Err(format!("Value exceeds maximum allowed: {}", p.max));
        }
        values.push(v);
    }
    let first = values.first().copied().unwrap_or(0);
    // The range check above keeps `first` in 0..=100.
    let as_u8 = u8::try_from(first).unwrap_or(0);
    let text = match tool.name {
        "self.get_device_status" => device_status(state),
        "self.audio_speaker.set_volume" => {
            state.volume = as_u8;
            "true".to_string()
        }
        "self.screen.set_brightness" => {
            state.brightness = as_u8;
            "true".to_string()
        }
        other => return Err(format!("Unknown tool: {other}")),
    };
    Ok(json!({"content": [{"type": "text", "text": text}], "isError": false}))
}

/// The JSON text `self.get_device_status` returns (shaped like `wifi_board.cc`'s).
fn device_status(state: &DeviceState) -> String {
    json!({
        "audio_speaker": {"volume": state.volume},
        "screen": {"brightness": state.brightness, "theme": "light"},
        "battery": {"level": 85, "charging": false},
        "network": {"type": "wifi", "ssid": "simulator", "signal": "strong"},
        "chip": {"temperature": 42},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(state: &mut DeviceState, id: i64, name: &str, args: Value) -> Value {
        let req = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":args}});
        handle_request(state, &req).expect("a reply")
    }

    #[test]
    fn initialize_answers_like_the_firmware_and_stores_vision() {
        let mut s = DeviceState::default();
        let req = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2024-11-05","capabilities":{"vision":{"url":"http://x/explain","token":"t"}}}});
        let reply = handle_request(&mut s, &req).unwrap();
        assert_eq!(
            reply,
            json!({"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2024-11-05","capabilities":{"tools":{}},
                "serverInfo":{"name":"simulator","version":"2.4.2"}}})
        );
        assert_eq!(s.vision, Some(("http://x/explain".into(), Some("t".into()))));
    }

    #[test]
    fn tools_list_pages_by_name() {
        let mut s = DeviceState::default();
        let first = handle_request(&mut s, &json!({"jsonrpc":"2.0","id":2,"method":"tools/list"})).unwrap();
        let tools = first["result"]["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[0]["name"], "self.get_device_status");
        assert_eq!(tools[0]["inputSchema"], json!({"type":"object","properties":{}}));
        assert_eq!(tools[1]["name"], "self.audio_speaker.set_volume");
        assert_eq!(
            tools[1]["inputSchema"],
            json!({"type":"object","properties":{"volume":{"type":"integer","minimum":0,"maximum":100}},
                "required":["volume"]})
        );
        assert_eq!(first["result"]["nextCursor"], "self.screen.set_brightness");

        let req = json!({"jsonrpc":"2.0","id":3,"method":"tools/list",
            "params":{"cursor":"self.screen.set_brightness","withUserTools":false}});
        let second = handle_request(&mut s, &req).unwrap();
        let tools = second["result"]["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 1);
        assert_eq!(tools[0]["name"], "self.screen.set_brightness");
        assert!(second["result"].get("nextCursor").is_none(), "last page has no cursor: {second}");

        let req = json!({"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"cursor":"self.nope"}});
        let bad = handle_request(&mut s, &req).unwrap();
        assert!(bad["error"]["message"].as_str().unwrap().contains("payload size limit"));
        assert!(bad["error"].get("code").is_none());
    }

    #[test]
    fn a_camera_adds_the_photo_tool_on_the_last_page() {
        let mut s = DeviceState { camera: true, ..DeviceState::default() };
        let req =
            json!({"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"cursor":"self.screen.set_brightness"}});
        let page = handle_request(&mut s, &req).unwrap();
        let tools = page["result"]["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[1]["name"], TAKE_PHOTO);
        assert_eq!(tools[1]["inputSchema"]["required"][0], "question");
        assert!(page["result"].get("nextCursor").is_none());
    }

    #[test]
    fn set_volume_validates_and_stores() {
        let mut s = DeviceState::default();
        assert_eq!(s.volume, 70);
        let ok = call(&mut s, 5, "self.audio_speaker.set_volume", json!({"volume": 35}));
        assert_eq!(
            ok,
            json!({"jsonrpc":"2.0","id":5,"result":{"content":[{"type":"text","text":"true"}],"isError":false}})
        );
        assert_eq!(s.volume, 35);

        let high = call(&mut s, 6, "self.audio_speaker.set_volume", json!({"volume": 101}));
        assert_eq!(high, json!({"jsonrpc":"2.0","id":6,"error":{"message":"Value exceeds maximum allowed: 100"}}));
        let low = call(&mut s, 7, "self.audio_speaker.set_volume", json!({"volume": -1}));
        assert_eq!(low["error"]["message"], "Value is below minimum allowed: 0");
        let missing = call(&mut s, 8, "self.audio_speaker.set_volume", json!({"volume": "50"}));
        assert_eq!(missing["error"]["message"], "Missing valid argument: volume");
        assert_eq!(s.volume, 35, "rejected calls change nothing");
        // A float is truncated like cJSON's valueint.
        call(&mut s, 9, "self.audio_speaker.set_volume", json!({"volume": 42.9}));
        assert_eq!(s.volume, 42);

        let names: Vec<&str> = s.calls.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 5);
        assert_eq!(s.calls[0], ("self.audio_speaker.set_volume".to_string(), json!({"volume": 35})));
    }

    #[test]
    fn device_status_reflects_state() {
        let mut s = DeviceState::default();
        call(&mut s, 1, "self.screen.set_brightness", json!({"brightness": 10}));
        let reply = call(&mut s, 2, "self.get_device_status", json!({}));
        assert_eq!(reply["result"]["isError"], false);
        let text = reply["result"]["content"][0]["text"].as_str().unwrap();
        let status: Value = serde_json::from_str(text).unwrap();
        assert_eq!(status["audio_speaker"]["volume"], 70);
        assert_eq!(status["screen"]["brightness"], 10);
    }

    #[test]
    fn firmware_drop_and_error_rules() {
        let mut s = DeviceState::default();
        // String id, wrong jsonrpc, missing method, notifications, non-object params: no reply.
        assert!(handle_request(&mut s, &json!({"jsonrpc":"2.0","id":"1","method":"tools/list"})).is_none());
        assert!(handle_request(&mut s, &json!({"jsonrpc":"1.0","id":1,"method":"tools/list"})).is_none());
        assert!(handle_request(&mut s, &json!({"id":1,"method":"tools/list"})).is_none());
        assert!(handle_request(&mut s, &json!({"jsonrpc":"2.0","id":1,"result":{}})).is_none());
        assert!(handle_request(&mut s, &json!({"jsonrpc":"2.0","method":"notifications/initialized"})).is_none());
        assert!(handle_request(&mut s, &json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":[1]})).is_none());
        // Errors carry only a message.
        let unknown = handle_request(&mut s, &json!({"jsonrpc":"2.0","id":3,"method":"ping"})).unwrap();
        assert_eq!(unknown, json!({"jsonrpc":"2.0","id":3,"error":{"message":"Method not implemented: ping"}}));
        let no_params = handle_request(&mut s, &json!({"jsonrpc":"2.0","id":4,"method":"tools/call"})).unwrap();
        assert_eq!(no_params["error"]["message"], "Missing params");
        let unknown_tool = call(&mut s, 5, "self.fly", json!({}));
        assert_eq!(unknown_tool["error"]["message"], "Unknown tool: self.fly");
        let bad_args = handle_request(
            &mut s,
            &json!({"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"self.get_device_status","arguments":3}}),
        )
        .unwrap();
        assert_eq!(bad_args["error"]["message"], "Invalid arguments");
        assert_eq!(tool_names().len(), TOOLS.len());
    }
}
