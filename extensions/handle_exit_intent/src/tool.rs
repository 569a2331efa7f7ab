//! The `handle_exit_intent` tool itself, independent of the WebAssembly bindings: its
//! definition and the goodbye text it returns.

/// The tool's function name.
pub const NAME: &str = "handle_exit_intent";

/// The tool's description for the LLM. It states that calling the tool ends the conversation.
pub const DESCRIPTION: &str = "用户明确要结束对话或退出系统时调用（例如“退出”“再见，不聊了”“结束对话”）。\
调用后会说出告别语并结束本次对话、关闭连接；用户只是询问如何退出时不要调用。\
Call this when the user explicitly wants to end the conversation or exit. It speaks the farewell \
and then ENDS the conversation (the session is closed); do not call it when the user merely asks \
how exiting works.";

/// JSON schema of the tool's arguments.
pub const PARAMETERS_JSON: &str = r#"{"type":"object","properties":{"say_goodbye":{"type":"string","description":"A short, friendly farewell to the user, in the user's language; it is spoken before the conversation ends."}},"required":["say_goodbye"]}"#;

/// The tool message recorded for the LLM (`tool-result.result`).
pub const RESULT: &str = "Exit intent handled";

/// Farewell spoken when the arguments give none (Chinese conversations).
pub const DEFAULT_GOODBYE_ZH: &str = "再见，祝你有美好的一天！";
/// Farewell spoken when the arguments give none (English conversations).
pub const DEFAULT_GOODBYE_EN: &str = "Goodbye, have a wonderful day!";

/// The longest farewell spoken, in characters; longer texts are cut at a character boundary.
pub const MAX_GOODBYE_CHARS: usize = 300;

/// Whether a call's language tag or name (`en`, `en-US`, `English`, …) means English.
pub fn is_english(language: &str) -> bool {
    let lower = language.trim().to_ascii_lowercase();
    lower == "en" || lower.starts_with("en-") || lower.starts_with("en_") || lower.starts_with("english")
}

/// The farewell to speak for the arguments JSON: `say_goodbye` trimmed and capped at
/// [`MAX_GOODBYE_CHARS`], or the default farewell for `language` when it is missing, `null` or
/// blank (as the Python plugin does when the LLM omits it).
///
/// # Errors
/// A message when the text is not a JSON object or `say_goodbye` is not a string.
pub fn goodbye(arguments_json: &str, language: &str) -> Result<String, String> {
    let default = || if is_english(language) { DEFAULT_GOODBYE_EN } else { DEFAULT_GOODBYE_ZH }.to_owned();
    if arguments_json.trim().is_empty() {
        return Ok(default());
    }
    let value: serde_json::Value =
        serde_json::from_str(arguments_json).map_err(|error| format!("arguments are not valid JSON: {error}"))?;
    let object = match value {
        serde_json::Value::Null => return Ok(default()),
        serde_json::Value::Object(object) => object,
        _ => return Err("arguments must be a JSON object".to_owned()),
    };
    match object.get("say_goodbye") {
        None | Some(serde_json::Value::Null) => Ok(default()),
        Some(serde_json::Value::String(text)) => {
            let text = text.trim();
            if text.is_empty() { Ok(default()) } else { Ok(text.chars().take(MAX_GOODBYE_CHARS).collect()) }
        }
        Some(other) => Err(format!("say_goodbye must be a string, got {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_requires_the_goodbye_string() {
        let schema: serde_json::Value = serde_json::from_str(PARAMETERS_JSON).expect("schema parses");
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["properties"]["say_goodbye"]["type"], "string");
        assert_eq!(schema["required"], serde_json::json!(["say_goodbye"]));
        assert!(DESCRIPTION.contains("ENDS the conversation"));
    }

    #[test]
    fn uses_the_given_farewell() {
        assert_eq!(goodbye(r#"{"say_goodbye":"  拜拜，下次见！ "}"#, "zh-CN"), Ok("拜拜，下次见！".to_owned()));
        assert_eq!(goodbye(r#"{"say_goodbye":"See you","extra":1}"#, "en"), Ok("See you".to_owned()));
    }

    #[test]
    fn defaults_follow_the_language() {
        for arguments in ["", " ", "null", "{}", r#"{"say_goodbye":null}"#, r#"{"say_goodbye":"   "}"#] {
            assert_eq!(goodbye(arguments, "zh-CN"), Ok(DEFAULT_GOODBYE_ZH.to_owned()), "{arguments:?}");
            assert_eq!(goodbye(arguments, "en-US"), Ok(DEFAULT_GOODBYE_EN.to_owned()), "{arguments:?}");
        }
        assert!(is_english("English"));
        assert!(!is_english("中文"));
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(goodbye("[1]", "zh").is_err());
        assert!(goodbye("{not json", "zh").is_err());
        assert!(goodbye(r#"{"say_goodbye":42}"#, "zh").is_err());
    }

    #[test]
    fn caps_long_farewells_on_character_boundaries() {
        let long = "再".repeat(MAX_GOODBYE_CHARS + 50);
        let text = goodbye(&serde_json::json!({ "say_goodbye": long }).to_string(), "zh").expect("valid");
        assert_eq!(text.chars().count(), MAX_GOODBYE_CHARS);
    }
}
