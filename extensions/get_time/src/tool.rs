//! The `get_time` tool itself, independent of the WebAssembly bindings: its definition, its
//! argument parsing and the text it returns.

use crate::{calendar, lunar};

/// The tool's function name.
pub const NAME: &str = "get_time";

/// The tool's description for the LLM.
pub const DESCRIPTION: &str = "获取当前的日期、时间、星期和农历日期。用户询问现在几点、今天几号、星期几或农历日期时调用。\
Get the current date, time, weekday and Chinese lunar date; call it when the user asks what time or date it is.";

/// JSON schema of the tool's arguments.
pub const PARAMETERS_JSON: &str = r#"{"type":"object","properties":{"timezone_offset_minutes":{"type":"integer","minimum":-720,"maximum":840,"description":"Offset of the user's time zone from UTC in minutes (480 = UTC+8, China Standard Time). Omit it to use UTC+8."}},"required":[]}"#;

/// The offset used when the arguments give none: China Standard Time (UTC+8).
pub const DEFAULT_OFFSET_MINUTES: i32 = 480;

/// The smallest accepted offset (UTC-12).
const MIN_OFFSET_MINUTES: i64 = -720;
/// The largest accepted offset (UTC+14).
const MAX_OFFSET_MINUTES: i64 = 840;

/// Language of the returned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Chinese (the default).
    Chinese,
    /// English.
    English,
}

impl Language {
    /// Picks the text language from a call's language tag or name: English for `en`, `en-US`,
    /// `English`, …; Chinese for everything else.
    pub fn from_tag(tag: &str) -> Self {
        let lower = tag.trim().to_ascii_lowercase();
        if lower == "en" || lower.starts_with("en-") || lower.starts_with("en_") || lower.starts_with("english") {
            Language::English
        } else {
            Language::Chinese
        }
    }
}

/// Parses the arguments JSON into the UTC offset in minutes. An empty text, `null`, `{}` or a
/// `null` offset give [`DEFAULT_OFFSET_MINUTES`]; unknown keys are ignored.
///
/// # Errors
/// A message for the LLM when the text is not a JSON object or the offset is not an integer
/// between -720 and 840.
pub fn parse_offset(arguments_json: &str) -> Result<i32, String> {
    if arguments_json.trim().is_empty() {
        return Ok(DEFAULT_OFFSET_MINUTES);
    }
    let value: serde_json::Value =
        serde_json::from_str(arguments_json).map_err(|error| format!("arguments are not valid JSON: {error}"))?;
    let object = match value {
        serde_json::Value::Null => return Ok(DEFAULT_OFFSET_MINUTES),
        serde_json::Value::Object(object) => object,
        _ => return Err("arguments must be a JSON object".to_owned()),
    };
    match object.get("timezone_offset_minutes") {
        None | Some(serde_json::Value::Null) => Ok(DEFAULT_OFFSET_MINUTES),
        Some(offset) => offset
            .as_i64()
            .filter(|minutes| (MIN_OFFSET_MINUTES..=MAX_OFFSET_MINUTES).contains(minutes))
            .and_then(|minutes| i32::try_from(minutes).ok())
            .ok_or_else(|| format!("timezone_offset_minutes must be an integer from -720 to 840, got {offset}")),
    }
}

/// Chinese weekday names, Monday first.
const WEEKDAYS_ZH: [&str; 7] = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"];
/// English weekday names, Monday first.
const WEEKDAYS_EN: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Formats an offset in minutes as `UTC+08:00`.
fn format_offset(offset_minutes: i32) -> String {
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let magnitude = offset_minutes.unsigned_abs();
    format!("UTC{sign}{:02}:{:02}", magnitude / 60, magnitude % 60)
}

/// The tool's result text for the instant `unix_seconds` seen at `offset_minutes` from UTC:
/// the date, the time, the weekday and the lunar date (or a note when the date lies outside
/// the lunar table).
pub fn describe_instant(unix_seconds: i64, offset_minutes: i32, language: Language) -> String {
    let local = unix_seconds.saturating_add(i64::from(offset_minutes) * 60);
    let days = local.div_euclid(calendar::SECONDS_PER_DAY);
    let second_of_day = local.rem_euclid(calendar::SECONDS_PER_DAY);
    let date = calendar::civil_from_days(days);
    let weekday_index = usize::from(calendar::iso_weekday(days)).saturating_sub(1);
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    let zone = format_offset(offset_minutes);
    let lunar = lunar::from_days(days);
    match language {
        Language::Chinese => {
            let weekday = WEEKDAYS_ZH.get(weekday_index).copied().unwrap_or_default();
            let lunar_text = match lunar {
                Some(lunar) => lunar.to_chinese(),
                None => format!("超出可换算范围（农历{}–{}年）", lunar::FIRST_YEAR, lunar::LAST_YEAR),
            };
            format!(
                "当前日期：{}年{}月{}日，{weekday}\n当前时间：{hour:02}:{minute:02}:{second:02}（{zone}）\n农历：{lunar_text}",
                date.year, date.month, date.day
            )
        }
        Language::English => {
            let weekday = WEEKDAYS_EN.get(weekday_index).copied().unwrap_or_default();
            let lunar_text = match lunar {
                Some(lunar) => format!(
                    "year {} ({}), {}month {} day {} ({}{})",
                    lunar.ganzhi_year(),
                    lunar.zodiac_en(),
                    if lunar.is_leap_month { "leap " } else { "" },
                    lunar.month,
                    lunar.day,
                    lunar.month_name(),
                    lunar.day_name()
                ),
                None => format!("out of range (lunar years {}–{})", lunar::FIRST_YEAR, lunar::LAST_YEAR),
            };
            format!(
                "Date: {:04}-{:02}-{:02}, {weekday}\nTime: {hour:02}:{minute:02}:{second:02} ({zone})\nChinese lunar date: {lunar_text}",
                date.year, date.month, date.day
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_valid_json_with_the_offset_property() {
        let schema: serde_json::Value = serde_json::from_str(PARAMETERS_JSON).expect("schema parses");
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["properties"]["timezone_offset_minutes"]["type"], "integer");
        assert_eq!(schema["required"], serde_json::json!([]));
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset(""), Ok(DEFAULT_OFFSET_MINUTES));
        assert_eq!(parse_offset("  "), Ok(DEFAULT_OFFSET_MINUTES));
        assert_eq!(parse_offset("null"), Ok(DEFAULT_OFFSET_MINUTES));
        assert_eq!(parse_offset("{}"), Ok(DEFAULT_OFFSET_MINUTES));
        assert_eq!(parse_offset(r#"{"timezone_offset_minutes":null}"#), Ok(DEFAULT_OFFSET_MINUTES));
        assert_eq!(parse_offset(r#"{"timezone_offset_minutes":-300,"other":1}"#), Ok(-300));
        assert_eq!(parse_offset(r#"{"timezone_offset_minutes":840}"#), Ok(840));
        assert_eq!(parse_offset(r#"{"timezone_offset_minutes":-720}"#), Ok(-720));
        assert!(parse_offset(r#"{"timezone_offset_minutes":841}"#).is_err());
        assert!(parse_offset(r#"{"timezone_offset_minutes":-721}"#).is_err());
        assert!(parse_offset(r#"{"timezone_offset_minutes":1e30}"#).is_err());
        assert!(parse_offset(r#"{"timezone_offset_minutes":480.5}"#).is_err());
        assert!(parse_offset(r#"{"timezone_offset_minutes":"480"}"#).is_err());
        assert!(parse_offset("[480]").is_err());
        assert!(parse_offset("{").is_err());
    }

    #[test]
    fn languages() {
        assert_eq!(Language::from_tag("en"), Language::English);
        assert_eq!(Language::from_tag("en-US"), Language::English);
        assert_eq!(Language::from_tag("English"), Language::English);
        assert_eq!(Language::from_tag("zh-CN"), Language::Chinese);
        assert_eq!(Language::from_tag("中文"), Language::Chinese);
        assert_eq!(Language::from_tag(""), Language::Chinese);
    }

    #[test]
    fn chinese_text() {
        // 2024-02-09T16:30:05Z is 2024-02-10 00:30:05 in UTC+8: the Spring Festival of 甲辰.
        let text = describe_instant(1_707_496_205, 480, Language::Chinese);
        assert_eq!(
            text,
            "当前日期：2024年2月10日，星期六\n当前时间：00:30:05（UTC+08:00）\n农历：甲辰年（龙年）正月初一"
        );
        // The same instant in UTC is still New Year's Eve of 癸卯.
        let text = describe_instant(1_707_496_205, 0, Language::Chinese);
        assert_eq!(
            text,
            "当前日期：2024年2月9日，星期五\n当前时间：16:30:05（UTC+00:00）\n农历：癸卯年（兔年）腊月三十"
        );
    }

    #[test]
    fn english_text_and_negative_offsets() {
        let text = describe_instant(1_707_496_205, -570, Language::English);
        assert_eq!(
            text,
            "Date: 2024-02-09, Friday\nTime: 07:00:05 (UTC-09:30)\nChinese lunar date: year 癸卯 (Rabbit), month 12 day 30 (腊月三十)"
        );
        let text = describe_instant(1_681_084_800, 480, Language::English);
        assert!(text.ends_with("year 癸卯 (Rabbit), leap month 2 day 20 (闰二月二十)"), "{text}");
    }

    #[test]
    fn instants_outside_the_lunar_table() {
        let text = describe_instant(-2_300_000_000, 0, Language::Chinese);
        assert!(text.starts_with("当前日期：1897年"), "{text}");
        assert!(text.ends_with("农历：超出可换算范围（农历1900–2100年）"), "{text}");
        // Extreme inputs must not panic.
        let _ = describe_instant(i64::MAX, 840, Language::English);
        let _ = describe_instant(i64::MIN, -720, Language::Chinese);
    }
}
