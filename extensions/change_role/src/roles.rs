//! The `change_role` tool itself, independent of the WebAssembly bindings: the canned roles,
//! their prompts and the argument handling.

/// The tool's function name.
pub const NAME: &str = "change_role";

/// The assistant name used when the arguments give none.
pub const DEFAULT_ASSISTANT_NAME: &str = "小智";

/// The longest accepted assistant name, in characters; longer names are cut.
pub const MAX_NAME_CHARS: usize = 32;

/// The placeholder in a prompt template that is replaced by the assistant's name.
const NAME_PLACEHOLDER: &str = "{name}";

/// One canned role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// The identifier the LLM passes as `role`.
    pub id: &'static str,
    /// Other accepted spellings of `role` (compared after [`normalize`]).
    pub aliases: &'static [&'static str],
    /// The role's title in Chinese, for the spoken confirmation.
    pub title_zh: &'static str,
    /// The role's title in English, for the spoken confirmation.
    pub title_en: &'static str,
    /// The system prompt, with `{name}` standing for the assistant's name.
    pub prompt: &'static str,
}

/// The canned roles, the default assistant first.
pub const ROLES: [Role; 3] = [
    Role {
        id: "friendly_assistant",
        aliases: &["assistant", "default", "助手", "小助手", "智能助手", "默认", "默认角色"],
        title_zh: "贴心助手",
        title_en: "friendly assistant",
        prompt: "你是{name}，一个温暖、耐心、乐于助人的语音助手。\n\
你说话自然亲切，像朋友聊天一样，回答简短清楚，通常不超过三句话，因为你的回答会被朗读出来。\n\
你会认真理解用户的需求，遇到不确定的事情坦诚说明，不编造信息。\n\
你不使用 Markdown、列表或表情符号以外的特殊格式，用户使用什么语言你就用什么语言回答。",
    },
    Role {
        id: "english_teacher",
        aliases: &["teacher", "english", "英语老师", "英语教师", "英文老师", "英语"],
        title_zh: "英语老师",
        title_en: "English teacher",
        prompt: "You are {name}, a patient and encouraging English teacher talking with a learner through a voice device.\n\
Speak clear, natural American English with simple vocabulary and short sentences, so the learner can follow by ear.\n\
Your goal is to get the learner speaking: ask one short question at a time and keep your own turns brief.\n\
When the learner makes a mistake, repeat the sentence correctly in a friendly way and briefly explain why.\n\
If the learner speaks Chinese, you may explain difficult points in Chinese, then switch back to English.\n\
Politely steer conversations that have nothing to do with learning English back to practice.",
    },
    Role {
        id: "storyteller",
        aliases: &["story_teller", "story", "故事大王", "讲故事", "故事家", "讲故事的人", "说书人"],
        title_zh: "故事大王",
        title_en: "storyteller",
        prompt: "你是{name}，一位声音生动、想象力丰富的故事大王，最擅长给孩子和大人讲故事。\n\
你会根据用户的要求即兴创作或复述童话、寓言、神话、历史和科学小故事，情节有起伏，语言口语化、有画面感。\n\
因为故事会被朗读出来，每次只讲一小段（大约五到八句话），然后问用户想不想继续听，或者想让故事怎么发展。\n\
故事内容积极健康，适合全家收听；用户使用什么语言你就用什么语言讲。",
    },
];

/// Lower-cases ASCII letters, trims, and turns spaces and hyphens into `_`, so that
/// `English-Teacher` and `english teacher` both match `english_teacher`.
pub fn normalize(role: &str) -> String {
    role.trim().chars().map(|c| if c == ' ' || c == '-' { '_' } else { c.to_ascii_lowercase() }).collect()
}

/// The role whose id or alias matches `role` after [`normalize`], if any.
pub fn find(role: &str) -> Option<&'static Role> {
    let wanted = normalize(role);
    ROLES.iter().find(|candidate| candidate.id == wanted || candidate.aliases.iter().any(|alias| *alias == wanted))
}

/// The tool's description for the LLM, listing the role ids.
pub fn description() -> String {
    let ids: Vec<&str> = ROLES.iter().map(|role| role.id).collect();
    format!(
        "当用户想切换角色、性格或助手名字时调用。Call this when the user wants to switch the assistant's role, \
personality or name. Available roles: [{}] (friendly assistant, English teacher, storyteller).",
        ids.join(", ")
    )
}

/// JSON schema of the tool's arguments; `role` is an enum of the role ids.
pub fn parameters_json() -> String {
    let ids: Vec<&str> = ROLES.iter().map(|role| role.id).collect();
    serde_json::json!({
        "type": "object",
        "properties": {
            "role_name": {"type": "string", "description": "The name the assistant takes in the new role, e.g. 小智 or Lily."},
            "role": {"type": "string", "enum": ids, "description": "The role to switch to."}
        },
        "required": ["role", "role_name"]
    })
    .to_string()
}

/// What a successful call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The new system prompt for the host to apply, or `None` when the role is unknown and the
    /// prompt must stay as it is.
    pub new_prompt: Option<String>,
    /// The confirmation (or the explanation) to speak.
    pub spoken: String,
}

/// Whether a call's language tag or name (`en`, `en-US`, `English`, …) means English.
fn is_english(language: &str) -> bool {
    let lower = language.trim().to_ascii_lowercase();
    lower == "en" || lower.starts_with("en-") || lower.starts_with("en_") || lower.starts_with("english")
}

/// An English title with its indefinite article (`an English teacher`).
fn with_article(title: &str) -> String {
    let vowel = title.chars().next().is_some_and(|c| "aeiouAEIOU".contains(c));
    format!("{} {title}", if vowel { "an" } else { "a" })
}

/// Reads an optional string field of the arguments object.
fn string_field(object: &serde_json::Map<String, serde_json::Value>, key: &str) -> Result<Option<String>, String> {
    match object.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text.trim().to_owned()).filter(|text| !text.is_empty())),
        Some(other) => Err(format!("{key} must be a string, got {other}")),
    }
}

/// Runs the tool for the arguments JSON: finds the role, fills the assistant's name (or
/// [`DEFAULT_ASSISTANT_NAME`]) into its prompt and phrases the confirmation in the call's
/// language. An unknown role gives an [`Outcome`] without a prompt that lists the roles.
///
/// # Errors
/// A message when the text is not a JSON object, a field is not a string or `role` is missing.
pub fn change(arguments_json: &str, language: &str) -> Result<Outcome, String> {
    let value: serde_json::Value =
        serde_json::from_str(arguments_json).map_err(|error| format!("arguments are not valid JSON: {error}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err("arguments must be a JSON object".to_owned());
    };
    let role = string_field(&object, "role")?.ok_or_else(|| "role is required".to_owned())?;
    let name: String = string_field(&object, "role_name")?
        .unwrap_or_else(|| DEFAULT_ASSISTANT_NAME.to_owned())
        .chars()
        .take(MAX_NAME_CHARS)
        .collect();
    let english = is_english(language);
    let Some(found) = find(&role) else {
        let spoken = if english {
            let titles: Vec<String> = ROLES.iter().map(|role| with_article(role.title_en)).collect();
            format!("Sorry, I can't switch to that role. I can be {}.", titles.join(", "))
        } else {
            let titles: Vec<&str> = ROLES.iter().map(|role| role.title_zh).collect();
            format!("抱歉，暂不支持这个角色。可以切换的角色有：{}。", titles.join("、"))
        };
        return Ok(Outcome { new_prompt: None, spoken });
    };
    let spoken = if english {
        format!("Role switched! I'm now {name}, your {}.", found.title_en)
    } else {
        format!("角色切换成功！我现在是{}{name}。", found.title_zh)
    };
    Ok(Outcome { new_prompt: Some(found.prompt.replace(NAME_PLACEHOLDER, &name)), spoken })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_lists_every_role() {
        let schema: serde_json::Value = serde_json::from_str(&parameters_json()).expect("schema parses");
        assert_eq!(schema["required"], serde_json::json!(["role", "role_name"]));
        assert_eq!(
            schema["properties"]["role"]["enum"],
            serde_json::json!(["friendly_assistant", "english_teacher", "storyteller"])
        );
        for role in &ROLES {
            assert!(description().contains(role.id));
            assert!(role.prompt.contains(NAME_PLACEHOLDER), "{}", role.id);
        }
    }

    #[test]
    fn aliases_are_unique_and_normalized() {
        let mut seen = std::collections::HashSet::new();
        for role in &ROLES {
            assert!(seen.insert(role.id));
            for alias in role.aliases {
                assert_eq!(normalize(alias), *alias);
                assert!(seen.insert(alias), "duplicate alias {alias}");
            }
        }
    }

    #[test]
    fn switches_to_the_english_teacher() {
        let outcome = change(r#"{"role":"English Teacher","role_name":"Lily"}"#, "zh-CN").expect("valid");
        let prompt = outcome.new_prompt.expect("a prompt");
        assert!(prompt.starts_with("You are Lily, a patient"));
        assert!(!prompt.contains(NAME_PLACEHOLDER));
        assert_eq!(outcome.spoken, "角色切换成功！我现在是英语老师Lily。");
    }

    #[test]
    fn chinese_aliases_and_default_name() {
        let outcome = change(r#"{"role":"故事大王"}"#, "en-US").expect("valid");
        assert!(outcome.new_prompt.expect("a prompt").starts_with("你是小智，一位"));
        assert_eq!(outcome.spoken, "Role switched! I'm now 小智, your storyteller.");
        assert_eq!(find("助手").map(|role| role.id), Some("friendly_assistant"));
    }

    #[test]
    fn unknown_roles_keep_the_prompt() {
        let outcome = change(r#"{"role":"pirate","role_name":"Jack"}"#, "zh").expect("valid");
        assert_eq!(outcome.new_prompt, None);
        assert_eq!(outcome.spoken, "抱歉，暂不支持这个角色。可以切换的角色有：贴心助手、英语老师、故事大王。");
        let english = change(r#"{"role":"pirate"}"#, "en").expect("valid");
        assert_eq!(
            english.spoken,
            "Sorry, I can't switch to that role. I can be a friendly assistant, an English teacher, a storyteller."
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(change("{}", "zh").is_err());
        assert!(change(r#"{"role":"   "}"#, "zh").is_err());
        assert!(change(r#"{"role":3}"#, "zh").is_err());
        assert!(change(r#"{"role":"storyteller","role_name":[]}"#, "zh").is_err());
        assert!(change("not json", "zh").is_err());
        assert!(change("[]", "zh").is_err());
    }

    #[test]
    fn long_names_are_capped() {
        let arguments = serde_json::json!({"role": "storyteller", "role_name": "名".repeat(100)}).to_string();
        let prompt = change(&arguments, "zh").expect("valid").new_prompt.expect("a prompt");
        assert!(prompt.starts_with(&format!("你是{}，", "名".repeat(MAX_NAME_CHARS))));
    }
}
