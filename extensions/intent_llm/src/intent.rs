//! LLM-based intent recognition, independent of the WebAssembly bindings: the prompt, the
//! list of available tools, the extraction of the LLM's JSON answer and the decision.
//!
//! The LLM is asked for strict JSON `{"function_call":{"name":...,"arguments":{...}}}`, as the
//! Python server's `intent_llm` does. The tools it may choose are those the host passes to
//! `detect` (see [`tools_from_definitions`]); `handle_exit_intent` and `continue_chat` are
//! always offered.

use serde_json::Value;

/// The pseudo-function meaning "no special intent".
pub const CONTINUE_CHAT: &str = "continue_chat";
/// The tool meaning "the user wants to end the conversation".
pub const EXIT_TOOL: &str = "handle_exit_intent";
/// How many of the latest history messages go into the prompt (as in the Python server).
pub const HISTORY_COUNT: usize = 4;
/// The longest history message copied into the prompt, in characters.
pub const MAX_HISTORY_MESSAGE_CHARS: usize = 500;
/// The longest LLM answer examined, in characters.
pub const MAX_REPLY_CHARS: usize = 8000;
/// The most tokens the LLM may answer with.
pub const MAX_TOKENS: u32 = 512;

/// The author of a message (mirrors the WIT `role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A system prompt.
    System,
    /// The user.
    User,
    /// The assistant.
    Assistant,
    /// A tool result.
    Tool,
}

/// One chat message (mirrors the WIT `message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
}

/// One parameter of a tool, as shown in the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter's name.
    pub name: String,
    /// Its JSON type (`string`, `integer`, …), empty when not given.
    pub kind: String,
    /// Its description, empty when not given.
    pub description: String,
}

/// A tool the LLM may choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// The function name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Its parameters.
    pub params: Vec<Param>,
}

/// The built-in exit tool, offered even when the configuration does not list it.
fn exit_tool() -> Tool {
    Tool {
        name: EXIT_TOOL.to_owned(),
        description: "The user explicitly wants to end the conversation or exit.".to_owned(),
        params: vec![Param {
            name: "say_goodbye".to_owned(),
            kind: "string".to_owned(),
            description: "A short farewell in the user's language.".to_owned(),
        }],
    }
}

/// A string field of a JSON object, empty when missing.
fn string_of(value: &Value, key: &str) -> String {
    value.get(key).and_then(Value::as_str).unwrap_or_default().trim().to_owned()
}

/// Whether `name` is a valid tool name: ASCII letters, digits, `_` and `-`, 1 to 64 bytes.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The tools the host offers (the WIT `tool-definition`s as `(name, description,
/// parameters-json)`), in the shape the prompt shows. Definitions without a valid name,
/// duplicates and `continue_chat` are skipped; unparseable parameter schemas give no parameters.
pub fn tools_from_definitions<'a>(definitions: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> Vec<Tool> {
    let items: Vec<Value> = definitions
        .into_iter()
        .map(|(name, description, parameters)| {
            serde_json::json!({"name": name, "description": description, "parameters": parameters})
        })
        .collect();
    tools_from_values(&items)
}

/// Parses a tool list given as JSON text: an array whose items are either OpenAI tool entries
/// `{"type":"function","function":{"name","description","parameters"}}` or flat
/// `{"name","description","parameters"}` objects, where `parameters` is a JSON schema object or
/// its text. Items are filtered as in [`tools_from_definitions`].
///
/// # Errors
/// A message when the text is not a JSON array.
pub fn parse_tools(tools_json: &str) -> Result<Vec<Tool>, String> {
    let value: Value =
        serde_json::from_str(tools_json).map_err(|error| format!("the tool list is not valid JSON: {error}"))?;
    let Value::Array(items) = value else {
        return Err("the tool list must be a JSON array".to_owned());
    };
    Ok(tools_from_values(&items))
}

fn tools_from_values(items: &[Value]) -> Vec<Tool> {
    let mut tools: Vec<Tool> = Vec::new();
    for item in items {
        let function = item.get("function").filter(|function| function.is_object()).unwrap_or(item);
        let name = string_of(function, "name");
        if !is_valid_name(&name) || name == CONTINUE_CHAT || tools.iter().any(|tool| tool.name == name) {
            continue;
        }
        let schema = match function.get("parameters").or_else(|| function.get("parameters_json")) {
            Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(Value::Null),
            Some(schema) => schema.clone(),
            None => Value::Null,
        };
        let params = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|properties| {
                properties
                    .iter()
                    .map(|(name, info)| Param {
                        name: name.clone(),
                        kind: string_of(info, "type"),
                        description: string_of(info, "description"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        tools.push(Tool { name, description: string_of(function, "description"), params });
    }
    tools
}

/// The tools offered to the LLM: the configured ones plus the exit tool when missing.
pub fn offered_tools(configured: &[Tool]) -> Vec<Tool> {
    let mut tools = configured.to_vec();
    if !tools.iter().any(|tool| tool.name == EXIT_TOOL) {
        tools.push(exit_tool());
    }
    tools
}

/// The system prompt listing `tools` (pass [`offered_tools`]) and the answer format.
pub fn system_prompt(tools: &[Tool]) -> String {
    let mut list = String::new();
    for tool in tools {
        list.push_str(&format!("\n- name: {}\n  description: {}\n", tool.name, tool.description));
        if !tool.params.is_empty() {
            list.push_str("  arguments:\n");
            for param in &tool.params {
                let kind = if param.kind.is_empty() { String::new() } else { format!(" ({})", param.kind) };
                list.push_str(&format!("    - {}{kind}: {}\n", param.name, param.description));
            }
        }
    }
    format!(
        "You are the intent recogniser of a voice assistant. Read the dialogue and decide what the user's LAST \
sentence asks for: one of the functions below, or ordinary conversation.\n\
\n\
Functions:{list}\
- name: {CONTINUE_CHAT}\n  description: Anything else: chatting, questions, or requests no function above handles.\n\
\n\
Rules:\n\
1. Choose a function only when the last sentence clearly asks for what it does; otherwise choose {CONTINUE_CHAT}.\n\
2. Choose {EXIT_TOOL} only for explicit requests to stop (\"exit\", \"goodbye, that's all\", \"I don't want to talk \
any more\", 退出, 再见, 不聊了). Questions about exiting (\"how do I exit?\") are {CONTINUE_CHAT}.\n\
3. Fill the arguments from the user's words; leave out optional arguments the user did not give.\n\
4. Answer with ONE JSON object and nothing else: no explanation, no Markdown.\n\
\n\
Answer format:\n\
{{\"function_call\": {{\"name\": \"<function name>\", \"arguments\": {{<arguments>}}}}}}\n\
\n\
Examples:\n\
User: 你好呀\n\
{{\"function_call\": {{\"name\": \"{CONTINUE_CHAT}\"}}}}\n\
User: 好了，我不想聊了，退出吧\n\
{{\"function_call\": {{\"name\": \"{EXIT_TOOL}\", \"arguments\": {{\"say_goodbye\": \"好的，再见，祝你开心！\"}}}}}}\n\
User: How do I turn you off?\n\
{{\"function_call\": {{\"name\": \"{CONTINUE_CHAT}\"}}}}"
    )
}

/// Cuts `text` to at most `max` characters.
fn cap(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// The user prompt: the last [`HISTORY_COUNT`] non-system messages of `history` and the new
/// utterance `text`.
pub fn user_prompt(history: &[Message], text: &str) -> String {
    let recent: Vec<&Message> = history.iter().filter(|message| message.role != Role::System).collect();
    let start = recent.len().saturating_sub(HISTORY_COUNT);
    let mut out = String::from("Dialogue:\n");
    for message in recent.iter().skip(start) {
        let who = match message.role {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::Tool => "Tool",
        };
        out.push_str(&format!("{who}: {}\n", cap(message.content.trim(), MAX_HISTORY_MESSAGE_CHARS)));
    }
    out.push_str(&format!("User: {}\n\nAnswer with the JSON object for the user's last sentence.", text.trim()));
    out
}

/// Whether a JSON object looks like an intent answer.
fn is_intent(value: &Value) -> bool {
    value.get("function_call").is_some() || value.get("function_calls").is_some()
}

/// The first JSON object found in `text` that looks like an intent answer, or else the first
/// JSON object at all. Objects may be surrounded by other text.
fn scan_objects(text: &str) -> Option<Value> {
    let mut first = None;
    for (index, _) in text.char_indices().filter(|(_, c)| *c == '{') {
        let Some(rest) = text.get(index..) else { continue };
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        if let Some(Ok(value @ Value::Object(_))) = values.next() {
            if is_intent(&value) {
                return Some(value);
            }
            first.get_or_insert(value);
        }
    }
    first
}

/// Extracts the JSON object of an LLM answer: the whole answer, the contents of a ```json (or
/// plain ```) fence, or the first object inside surrounding text. Answers written with
/// Python-style single quotes are accepted as a last resort. `None` when no object is found.
pub fn extract_json(reply: &str) -> Option<Value> {
    let reply = cap(reply, MAX_REPLY_CHARS);
    let trimmed = reply.trim();
    if let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(trimmed) {
        return Some(value);
    }
    // Fenced blocks: the text between each pair of ``` markers, without a language tag.
    let mut fenced = None;
    let parts: Vec<&str> = trimmed.split("```").collect();
    for block in parts.iter().skip(1).step_by(2) {
        let body = block.strip_prefix("json").or_else(|| block.strip_prefix("JSON")).unwrap_or(block);
        if let Some(value) = scan_objects(body) {
            if is_intent(&value) {
                return Some(value);
            }
            fenced.get_or_insert(value);
        }
    }
    let found = scan_objects(trimmed).filter(is_intent).or(fenced).or_else(|| scan_objects(trimmed));
    found.or_else(|| if trimmed.contains('\'') { scan_objects(&trimmed.replace('\'', "\"")) } else { None })
}

/// What the intent step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the normal chat handle the utterance.
    ContinueChat,
    /// Call this tool with these arguments (a JSON object text).
    CallTool(String, String),
    /// The user wants to end the conversation.
    Exit,
}

/// The arguments of a function call as a JSON object text: an object, or a string holding
/// one (OpenAI style); anything else gives `{}`.
fn arguments_text(arguments: Option<&Value>) -> String {
    match arguments {
        Some(object @ Value::Object(_)) => object.to_string(),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(object @ Value::Object(_)) => object.to_string(),
            _ => "{}".to_owned(),
        },
        _ => "{}".to_owned(),
    }
}

/// Maps the LLM's answer to a decision: `continue_chat` → [`Decision::ContinueChat`],
/// `handle_exit_intent` → [`Decision::Exit`], another tool → [`Decision::CallTool`]. With
/// `function_calls` (several calls) the first is used. Unparseable answers, invalid names and,
/// when `known` is given, names that are not in it give [`Decision::ContinueChat`].
pub fn decide(reply: &str, known: Option<&[Tool]>) -> Decision {
    let Some(value) = extract_json(reply) else { return Decision::ContinueChat };
    let call = match (value.get("function_call"), value.get("function_calls")) {
        (Some(call), _) => call.clone(),
        (None, Some(Value::Array(calls))) => {
            let first = calls.first().cloned().unwrap_or(Value::Null);
            first.get("function_call").cloned().unwrap_or(first)
        }
        _ => return Decision::ContinueChat,
    };
    let name = string_of(&call, "name");
    if name == EXIT_TOOL {
        return Decision::Exit;
    }
    if name == CONTINUE_CHAT || !is_valid_name(&name) {
        return Decision::ContinueChat;
    }
    if known.is_some_and(|tools| !tools.iter().any(|tool| tool.name == name)) {
        return Decision::ContinueChat;
    }
    Decision::CallTool(name, arguments_text(call.get("arguments")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<Tool> {
        parse_tools(
            r#"[
                {"type":"function","function":{"name":"get_weather","description":"Weather of a place",
                 "parameters":{"type":"object","properties":{"location":{"type":"string","description":"place"}}}}},
                {"name":"get_time","description":"Current time","parameters":"{\"type\":\"object\",\"properties\":{\"timezone_offset_minutes\":{\"type\":\"integer\"}}}"},
                {"name":"get_time","description":"duplicate"},
                {"name":"continue_chat"},
                {"name":"bad name!"},
                {"description":"no name"}
            ]"#,
        )
        .expect("valid list")
    }

    #[test]
    fn parses_both_tool_shapes() {
        let tools = tools();
        let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"]);
        assert_eq!(
            tools[0].params,
            [Param { name: "location".into(), kind: "string".into(), description: "place".into() }]
        );
        assert_eq!(tools[1].params[0].name, "timezone_offset_minutes");
        assert_eq!(tools[1].params[0].kind, "integer");
        assert!(parse_tools("{}").is_err());
        assert!(parse_tools("nope").is_err());
        let from_host = tools_from_definitions([
            ("get_time", "Current time", r#"{"type":"object","properties":{"tz":{"type":"integer"}}}"#),
            ("continue_chat", "", "{}"),
            ("bad name!", "", "{}"),
            ("lamp", "Lamp on/off", "not json"),
        ]);
        let names: Vec<&str> = from_host.iter().map(|tool| tool.name.as_str()).collect();
        assert_eq!(names, ["get_time", "lamp"]);
        assert_eq!(from_host[0].params[0].name, "tz");
        assert!(from_host[1].params.is_empty());
    }

    #[test]
    fn prompt_lists_the_tools_exit_and_continue() {
        let offered = offered_tools(&tools());
        assert_eq!(offered.len(), 3);
        let prompt = system_prompt(&offered);
        assert!(prompt.contains(
            "- name: get_weather\n  description: Weather of a place\n  arguments:\n    - location (string): place\n"
        ));
        assert!(prompt.contains("- name: handle_exit_intent"));
        assert!(prompt.contains("- name: continue_chat"));
        assert!(prompt.contains(r#"{"function_call": {"name": "<function name>", "arguments": {<arguments>}}}"#));
        // The exit tool is not added twice when configured.
        assert_eq!(offered_tools(&offered).len(), 3);
    }

    #[test]
    fn user_prompt_keeps_the_last_four_non_system_messages() {
        let mut history = vec![Message { role: Role::System, content: "system prompt".into() }];
        for index in 0..6 {
            let role = if index % 2 == 0 { Role::User } else { Role::Assistant };
            history.push(Message { role, content: format!("m{index}") });
        }
        history.push(Message { role: Role::Tool, content: "x".repeat(MAX_HISTORY_MESSAGE_CHARS + 10) });
        let prompt = user_prompt(&history, " 杭州天气怎么样 ");
        assert!(!prompt.contains("system prompt"));
        assert!(!prompt.contains("m2"));
        assert!(prompt.starts_with("Dialogue:\nAssistant: m3\nUser: m4\nAssistant: m5\nTool: "));
        assert!(prompt.contains(&format!("Tool: {}\nUser: 杭州天气怎么样\n", "x".repeat(MAX_HISTORY_MESSAGE_CHARS))));
    }

    #[test]
    fn extracts_json_from_plain_fenced_and_wrapped_answers() {
        let expected = serde_json::json!({"function_call": {"name": "get_time"}});
        for reply in [
            r#"{"function_call": {"name": "get_time"}}"#,
            "```json\n{\"function_call\": {\"name\": \"get_time\"}}\n```",
            "Sure! Here it is:\n```\n{\"function_call\": {\"name\": \"get_time\"}}\n```\nHope it helps.",
            r#"The intent is {"function_call": {"name": "get_time"}} as requested."#,
            r#"{"note": "thinking"} then {"function_call": {"name": "get_time"}}"#,
            r#"{'function_call': {'name': 'get_time'}}"#,
        ] {
            assert_eq!(extract_json(reply), Some(expected.clone()), "{reply}");
        }
        assert_eq!(extract_json("no json here"), None);
        assert_eq!(extract_json("{broken"), None);
        assert_eq!(extract_json(r#"{"other": 1}"#), Some(serde_json::json!({"other": 1})));
    }

    #[test]
    fn decides() {
        let known = offered_tools(&tools());
        let decide_known = |reply: &str| decide(reply, Some(&known));
        assert_eq!(decide_known(r#"{"function_call":{"name":"continue_chat"}}"#), Decision::ContinueChat);
        assert_eq!(
            decide_known(r#"{"function_call":{"name":"handle_exit_intent","arguments":{"say_goodbye":"bye"}}}"#),
            Decision::Exit
        );
        assert_eq!(
            decide_known(
                "```json\n{\"function_call\":{\"name\":\"get_weather\",\"arguments\":{\"location\":\"杭州\"}}}\n```"
            ),
            Decision::CallTool("get_weather".into(), r#"{"location":"杭州"}"#.into())
        );
        assert_eq!(
            decide_known(r#"{"function_call":{"name":"get_weather","arguments":"{\"location\":\"北京\"}"}}"#),
            Decision::CallTool("get_weather".into(), r#"{"location":"北京"}"#.into())
        );
        assert_eq!(
            decide_known(r#"{"function_call":{"name":"get_time","arguments":null}}"#),
            Decision::CallTool("get_time".into(), "{}".into())
        );
        assert_eq!(
            decide_known(r#"{"function_calls":[{"name":"get_time"},{"name":"get_weather"}]}"#),
            Decision::CallTool("get_time".into(), "{}".into())
        );
        // Unknown, invalid or missing names and unparseable answers fall back to chatting.
        assert_eq!(decide_known(r#"{"function_call":{"name":"play_music"}}"#), Decision::ContinueChat);
        assert_eq!(decide_known(r#"{"function_call":{"name":"rm -rf"}}"#), Decision::ContinueChat);
        assert_eq!(decide_known(r#"{"function_call":{}}"#), Decision::ContinueChat);
        assert_eq!(decide_known(r#"{"function_calls":[]}"#), Decision::ContinueChat);
        assert_eq!(decide_known(r#"{"intent":"Continue Chat"}"#), Decision::ContinueChat);
        assert_eq!(decide_known("I think the user wants the time."), Decision::ContinueChat);
        assert_eq!(decide_known(""), Decision::ContinueChat);
        // Without a list of known tools any valid name is passed on.
        assert_eq!(
            decide(r#"{"function_call":{"name":"play_music","arguments":{"song_name":"random"}}}"#, None),
            Decision::CallTool("play_music".into(), r#"{"song_name":"random"}"#.into())
        );
    }
}
