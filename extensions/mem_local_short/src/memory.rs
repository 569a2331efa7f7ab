//! The short-term memory of the Python server's `mem_local_short` provider, independent of the
//! WebAssembly bindings: the summarising prompt, the extraction of the LLM's JSON answer and
//! the cap on the stored memory's length.

use serde_json::Value;

/// The key/value key under which the memory is stored (the host namespaces it per extension
/// and per device).
pub const KV_KEY: &str = "memory";
/// The configuration key of the offset of local time from UTC in minutes (default 480, UTC+8),
/// used to date the dialogue for the LLM.
pub const OFFSET_CONFIG_KEY: &str = "utc_offset_minutes";
/// The default offset of local time from UTC, in minutes (China Standard Time).
pub const DEFAULT_OFFSET_MINUTES: i32 = 480;
/// The longest stored memory, in characters (as in the Python server).
pub const MAX_MEMORY_CHARS: usize = 2000;
/// The longest dialogue transcript sent to the LLM, in characters; older lines are dropped.
pub const MAX_TRANSCRIPT_CHARS: usize = 12_000;
/// The most tokens the LLM may answer with.
pub const MAX_TOKENS: u32 = 2000;

/// The system prompt asking the LLM for the updated memory as JSON.
pub const SYSTEM_PROMPT: &str = "你是一个记忆整理助手。你的任务是根据一段语音助手的对话记录和已有的历史记忆，\
更新关于用户的长期记忆，让助手在以后的对话中更了解用户、提供更贴心的服务。\n\
\n\
规则：\n\
1. 只记录与用户本人有关、以后还有用的信息：称呼和名字、身份、家庭和朋友、喜好和厌恶、习惯、计划和待办、\
重要的经历和情绪、用户明确要求记住的事情。\n\
2. 不要记录：天气、时间日期、音量调节、播放音乐、设备控制及其成败、退出对话等操作，闲聊中的客套话，以及助手自己说的内容。\n\
3. 把新信息合并进历史记忆：保留仍然有效的旧信息；信息有变化时（例如用户改了名字）用新的替换旧的，必要时注明变化；\
不要重复记录同一件事。没有值得记住的新信息时，原样返回历史记忆。\n\
4. 事件带上日期（使用“当前时间”里的日期），时间越久、越不重要的内容越可以压缩或删除。\n\
5. 整个 JSON 不超过 1800 个字符；内容用简短的词语表达，不要写成长句。\n\
6. 只从对话中提取信息，不要编造，也不要照抄下面格式说明里的示例文字。\n\
\n\
只输出一个可以被解析的 JSON 对象，不要任何解释、注释或 Markdown。格式：\n\
{\"用户档案\": {\"称呼\": \"\", \"特征\": []}, \"重要事件\": [{\"日期\": \"\", \"事件\": \"\"}], \
\"喜好\": [], \"待办与关怀\": [], \"原话摘录\": []}";

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

/// Whether a dialogue is worth summarising: at least two user/assistant messages, one of them
/// from the user (the Python server skips dialogues of fewer than two messages).
pub fn worth_saving(messages: &[Message]) -> bool {
    let spoken = messages.iter().filter(|message| matches!(message.role, Role::User | Role::Assistant)).count();
    spoken >= 2 && messages.iter().any(|message| message.role == Role::User && !message.content.trim().is_empty())
}

/// The dialogue as `User: …` / `Assistant: …` lines (system and tool messages left out), keeping
/// the newest lines that fit in [`MAX_TRANSCRIPT_CHARS`].
pub fn transcript(messages: &[Message]) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut total = 0;
    for message in messages.iter().rev() {
        let who = match message.role {
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::System | Role::Tool => continue,
        };
        let content = message.content.trim();
        if content.is_empty() {
            continue;
        }
        let line = format!("{who}: {content}\n");
        let length = line.chars().count();
        if total + length > MAX_TRANSCRIPT_CHARS {
            break;
        }
        total += length;
        lines.push(line);
    }
    lines.reverse();
    lines.concat()
}

/// The days since 1970-01-01 as a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
}

/// Formats the instant `unix_seconds` at `offset_minutes` from UTC as `YYYY-MM-DD HH:MM`.
pub fn format_time(unix_seconds: i64, offset_minutes: i32) -> String {
    let local = unix_seconds.saturating_add(i64::from(offset_minutes) * 60);
    let (year, month, day) = civil_from_days(local.div_euclid(86_400));
    let second_of_day = local.rem_euclid(86_400);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", second_of_day / 3600, second_of_day / 60 % 60)
}

/// Parses the configured UTC offset; missing or invalid values (outside -720..=840) give
/// [`DEFAULT_OFFSET_MINUTES`].
pub fn parse_offset(value: Option<&str>) -> i32 {
    value
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|minutes| (-720..=840).contains(minutes))
        .unwrap_or(DEFAULT_OFFSET_MINUTES)
}

/// The user prompt: the transcript, the previous memory (if any) and the current time.
pub fn user_prompt(messages: &[Message], previous: Option<&str>, now: &str) -> String {
    let mut out = format!("对话记录：\n{}", transcript(messages));
    if let Some(previous) = previous.map(str::trim).filter(|previous| !previous.is_empty()) {
        out.push_str(&format!("\n历史记忆：\n{previous}\n"));
    }
    out.push_str(&format!("\n当前时间：{now}"));
    out
}

/// The first JSON object in `text` (possibly surrounded by other text).
fn first_object(text: &str) -> Option<Value> {
    text.char_indices().filter(|(_, c)| *c == '{').find_map(|(index, _)| {
        let rest = text.get(index..)?;
        match serde_json::Deserializer::from_str(rest).into_iter::<Value>().next() {
            Some(Ok(value @ Value::Object(_))) => Some(value),
            _ => None,
        }
    })
}

/// Extracts the memory object from the LLM's answer: the whole answer, a ```json fence or the
/// first object in the text. `None` when the answer holds no JSON object.
pub fn extract_memory(reply: &str) -> Option<Value> {
    let trimmed = reply.trim();
    if let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(trimmed) {
        return Some(value);
    }
    let parts: Vec<&str> = trimmed.split("```").collect();
    parts
        .iter()
        .skip(1)
        .step_by(2)
        .find_map(|block| first_object(block.strip_prefix("json").unwrap_or(block)))
        .or_else(|| first_object(trimmed))
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone)]
enum Step {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
}

/// The serialized length of a value in characters.
fn size(value: &Value) -> usize {
    value.to_string().chars().count()
}

/// Finds the container (non-empty array, or object when `objects`) with the largest serialized
/// size below `value`, recording its path.
fn largest(value: &Value, path: &mut Vec<Step>, objects: bool, best: &mut Option<(usize, Vec<Step>)>) {
    let candidate = match value {
        Value::Array(items) => !items.is_empty(),
        Value::Object(members) => objects && !members.is_empty(),
        _ => false,
    };
    if candidate {
        let length = size(value);
        if best.as_ref().is_none_or(|(best_length, _)| length > *best_length) {
            *best = Some((length, path.clone()));
        }
    }
    match value {
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Step::Index(index));
                largest(item, path, objects, best);
                path.pop();
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                path.push(Step::Key(key.clone()));
                largest(member, path, objects, best);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Finds the longest string (of more than 8 characters) below `value`, recording its path.
fn longest_string(value: &Value, path: &mut Vec<Step>, best: &mut Option<(usize, Vec<Step>)>) {
    match value {
        Value::String(text) => {
            let length = text.chars().count();
            if length > 8 && best.as_ref().is_none_or(|(best_length, _)| length > *best_length) {
                *best = Some((length, path.clone()));
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                path.push(Step::Index(index));
                longest_string(item, path, best);
                path.pop();
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                path.push(Step::Key(key.clone()));
                longest_string(member, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The value at `path` below `value`.
fn at_path<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |current, step| match step {
        Step::Key(key) => current.get_mut(key.as_str()),
        Step::Index(index) => current.get_mut(*index),
    })
}

/// Removes one piece of `value`, biggest first: the oldest (first) element of the largest
/// array, else half of the longest string, else the last member of the largest object.
/// Returns false when nothing is left to remove.
fn shrink(value: &mut Value) -> bool {
    let mut best = None;
    largest(value, &mut Vec::new(), false, &mut best);
    if let Some((_, path)) = best
        && let Some(Value::Array(items)) = at_path(value, &path)
        && !items.is_empty()
    {
        items.remove(0);
        return true;
    }
    let mut best = None;
    longest_string(value, &mut Vec::new(), &mut best);
    if let Some((length, path)) = best
        && let Some(Value::String(text)) = at_path(value, &path)
    {
        *text = text.chars().take(length / 2).collect();
        return true;
    }
    let mut best = None;
    largest(value, &mut Vec::new(), true, &mut best);
    if let Some((_, path)) = best
        && let Some(Value::Object(members)) = at_path(value, &path)
        && let Some(last) = members.keys().next_back().cloned()
    {
        members.remove(&last);
        return true;
    }
    false
}

/// The memory as compact JSON text of at most `max_chars` characters. Longer memories are
/// pruned (oldest array entries first, then long strings, then members) until they fit.
pub fn cap_json(mut value: Value, max_chars: usize) -> Option<String> {
    loop {
        let text = value.to_string();
        if text.chars().count() <= max_chars {
            return Some(text);
        }
        if !shrink(&mut value) {
            return None;
        }
    }
}

/// The memory to put into the system prompt from the stored bytes: the text, capped at
/// [`MAX_MEMORY_CHARS`]; empty when nothing is stored.
pub fn stored_text(stored: Option<&[u8]>) -> String {
    stored.map(|bytes| String::from_utf8_lossy(bytes).chars().take(MAX_MEMORY_CHARS).collect()).unwrap_or_default()
}

/// Why a summary could not be turned into a memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SummaryError {
    /// The LLM's answer holds no JSON object.
    NotJson,
    /// The object cannot be made short enough.
    TooLong,
}

/// Turns the LLM's answer into the memory text to store (compact JSON, at most
/// [`MAX_MEMORY_CHARS`] characters).
///
/// # Errors
/// [`SummaryError`] when the answer holds no JSON object or cannot be capped.
pub fn memory_from_reply(reply: &str) -> Result<String, SummaryError> {
    let value = extract_memory(reply).ok_or(SummaryError::NotJson)?;
    cap_json(value, MAX_MEMORY_CHARS).ok_or(SummaryError::TooLong)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: Role, content: &str) -> Message {
        Message { role, content: content.to_owned() }
    }

    fn dialogue() -> Vec<Message> {
        vec![
            message(Role::System, "你是小智"),
            message(Role::User, "我叫张三，下周要去北京出差"),
            message(Role::Assistant, "好的张三，祝你出差顺利！"),
            message(Role::Tool, "{\"weather\":\"晴\"}"),
            message(Role::User, "  "),
        ]
    }

    #[test]
    fn decides_what_is_worth_saving() {
        assert!(worth_saving(&dialogue()));
        assert!(!worth_saving(&[message(Role::User, "你好")]));
        assert!(!worth_saving(&[message(Role::System, "x"), message(Role::Assistant, "a"), message(Role::Tool, "t")]));
        assert!(!worth_saving(&[message(Role::Assistant, "a"), message(Role::Assistant, "b")]));
    }

    #[test]
    fn builds_the_prompt() {
        let prompt = user_prompt(&dialogue(), Some(" {\"用户档案\":{\"称呼\":\"小张\"}} "), "2026-11-26 09:30");
        assert_eq!(
            prompt,
            "对话记录：\nUser: 我叫张三，下周要去北京出差\nAssistant: 好的张三，祝你出差顺利！\n\
\n历史记忆：\n{\"用户档案\":{\"称呼\":\"小张\"}}\n\n当前时间：2026-11-26 09:30"
        );
        let first = user_prompt(&dialogue(), Some(""), "t");
        assert!(!first.contains("历史记忆"));
        assert!(SYSTEM_PROMPT.contains("1800"));
    }

    #[test]
    fn transcript_keeps_the_newest_lines() {
        let long: Vec<Message> =
            (0..2000).map(|index| message(Role::User, &format!("第{index:04}句话，内容"))).collect();
        let text = transcript(&long);
        assert!(text.chars().count() <= MAX_TRANSCRIPT_CHARS);
        assert!(text.ends_with("User: 第1999句话，内容\n"));
        assert!(!text.contains("第0000句"));
    }

    #[test]
    fn formats_time_and_offsets() {
        assert_eq!(format_time(0, 0), "1970-01-01 00:00");
        // 2026-11-25 21:53:28 UTC is 2026-11-26 05:53 in UTC+8.
        assert_eq!(format_time(1_795_643_608, 480), "2026-11-26 05:53");
        assert_eq!(format_time(951_782_400, 0), "2000-02-29 00:00");
        assert_eq!(format_time(-60, 0), "1969-12-31 23:59");
        assert_eq!(parse_offset(None), DEFAULT_OFFSET_MINUTES);
        assert_eq!(parse_offset(Some(" -300 ")), -300);
        assert_eq!(parse_offset(Some("5000")), DEFAULT_OFFSET_MINUTES);
        assert_eq!(parse_offset(Some("abc")), DEFAULT_OFFSET_MINUTES);
    }

    #[test]
    fn extracts_the_memory_object() {
        let expected = serde_json::json!({"用户档案": {"称呼": "张三"}});
        for reply in [
            "{\"用户档案\": {\"称呼\": \"张三\"}}",
            "```json\n{\"用户档案\": {\"称呼\": \"张三\"}}\n```",
            "好的，这是更新后的记忆：\n```\n{\"用户档案\": {\"称呼\": \"张三\"}}\n```",
            "记忆如下 {\"用户档案\": {\"称呼\": \"张三\"}} 完毕",
        ] {
            assert_eq!(extract_memory(reply), Some(expected.clone()), "{reply}");
        }
        assert_eq!(extract_memory("没有需要记住的内容"), None);
        assert_eq!(extract_memory("[1, 2]"), None);
        assert_eq!(memory_from_reply("not json"), Err(SummaryError::NotJson));
        assert_eq!(memory_from_reply("```json\n{\"a\": [1, 2]}\n```"), Ok("{\"a\":[1,2]}".to_owned()));
    }

    #[test]
    fn caps_long_memories_oldest_entries_first() {
        let events: Vec<Value> =
            (0..200).map(|index| serde_json::json!({"日期": "2026-11-26", "事件": format!("事件{index}")})).collect();
        let value = serde_json::json!({"用户档案": {"称呼": "张三", "特征": ["程序员", "养猫"]}, "重要事件": events});
        let text = cap_json(value, MAX_MEMORY_CHARS).expect("capped");
        assert!(text.chars().count() <= MAX_MEMORY_CHARS);
        let parsed: Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(parsed["用户档案"]["称呼"], "张三", "small members survive");
        let kept = parsed["重要事件"].as_array().expect("an array");
        assert!(!kept.is_empty());
        assert_eq!(kept.last().expect("an event")["事件"], "事件199", "the newest events are kept");
        assert_ne!(kept[0]["事件"], "事件0", "the oldest events are dropped");
    }

    #[test]
    fn caps_long_strings_and_members() {
        let value = serde_json::json!({"note": "长".repeat(5000), "name": "张三"});
        let text = cap_json(value, 100).expect("capped");
        assert!(text.chars().count() <= 100);
        let parsed: Value = serde_json::from_str(&text).expect("still JSON");
        assert_eq!(parsed["name"], "张三");
        let keys: serde_json::Map<String, Value> =
            (0..50).map(|index| (format!("key{index:02}"), Value::Bool(true))).collect();
        let text = cap_json(Value::Object(keys), 40).expect("capped");
        assert!(text.chars().count() <= 40);
        assert!(serde_json::from_str::<Value>(&text).is_ok());
        assert_eq!(cap_json(serde_json::json!({}), 1), None);
    }

    #[test]
    fn reads_stored_memory() {
        assert_eq!(stored_text(None), "");
        assert_eq!(stored_text(Some("{\"a\":1}".as_bytes())), "{\"a\":1}");
        let long = "记".repeat(MAX_MEMORY_CHARS + 100);
        assert_eq!(stored_text(Some(long.as_bytes())).chars().count(), MAX_MEMORY_CHARS);
        assert_eq!(stored_text(Some(&[0xff, b'a'])), "\u{fffd}a");
    }
}
