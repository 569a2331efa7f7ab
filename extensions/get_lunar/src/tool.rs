//! The `get_lunar` tool itself, independent of the WebAssembly bindings: its definition, its
//! argument parsing and the almanac text it returns. The calendar is `tyme4rs`.

use tyme4rs::tyme::jd::JulianDay;
use tyme4rs::tyme::solar::SolarDay;
use tyme4rs::tyme::{Culture, Tyme};

/// The tool's function name (the Python server's plugin name).
pub const NAME: &str = "get_lunar";

/// The tool's description for the LLM (the Python plugin's, with an English sentence).
pub const DESCRIPTION: &str = "用于具体日期的阴历/农历和黄历信息。用户可以指定查询内容，如：阴历日期、天干地支、节气、生肖、星座、八字、宜忌等。\
如果没有指定查询内容，默认查询干支年和农历日期。\
Chinese lunar calendar and almanac of a date: lunar date, sexagenary cycle, solar term, zodiac, constellation, festivals, and what the day is good or bad for.";

/// JSON schema of the tool's arguments.
pub const PARAMETERS_JSON: &str = r#"{"type":"object","properties":{"date":{"type":"string","description":"要查询的日期，格式为YYYY-MM-DD，例如2024-01-01。如果不提供，则使用当前日期 (the date, YYYY-MM-DD; today in China when omitted)"},"query":{"type":"string","description":"要查询的内容，例如阴历日期、天干地支、节日、节气、生肖、星座、八字、宜忌等 (what to look up)"}},"required":[]}"#;

/// The time zone "today" is taken in: China Standard Time (UTC+8), as the Python plugin.
const TODAY_OFFSET_SECONDS: i64 = 8 * 3600;

/// The years answered (the range of the Python plugin's `cnlunar` table).
const YEARS: std::ops::RangeInclusive<i32> = 1900..=2100;

/// Longest `query` kept, characters.
const MAX_QUERY_CHARS: usize = 100;

/// What to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The Gregorian date.
    pub year: i32,
    /// 1–12.
    pub month: u32,
    /// 1–31.
    pub day: u32,
    /// What the user asked about (may be empty).
    pub query: String,
}

/// Parses the arguments; `now_unix` (seconds) gives today's date in UTC+8 when `date` is absent.
///
/// # Errors
/// A message for the LLM when the text is not a JSON object, or the date is not a real
/// `YYYY-MM-DD` date from 1900 to 2100.
pub fn parse(arguments_json: &str, now_unix: i64) -> Result<Request, String> {
    let value: serde_json::Value = if arguments_json.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(arguments_json).map_err(|error| format!("arguments are not valid JSON: {error}"))?
    };
    let object = match value {
        serde_json::Value::Null => serde_json::Map::new(),
        serde_json::Value::Object(object) => object,
        _ => return Err("arguments must be a JSON object".to_owned()),
    };
    let query = object.get("query").and_then(serde_json::Value::as_str).unwrap_or_default();
    let query: String = query.trim().chars().take(MAX_QUERY_CHARS).collect();
    let (year, month, day) = match object.get("date").and_then(serde_json::Value::as_str).map(str::trim) {
        None | Some("") => civil_date(now_unix.saturating_add(TODAY_OFFSET_SECONDS)),
        Some(date) => parse_date(date)?,
    };
    if !YEARS.contains(&year) {
        return Err(format!("the date must be from 1900 to 2100, got the year {year}"));
    }
    Ok(Request { year, month, day, query })
}

/// `YYYY-MM-DD` (also `YYYY/MM/DD` or `YYYY.MM.DD`, one-digit months and days) as a real date.
fn parse_date(text: &str) -> Result<(i32, u32, u32), String> {
    let wrong = || format!("date must be YYYY-MM-DD, e.g. 2024-01-01, got {text:?}");
    let parts: Vec<&str> = text.split(['-', '/', '.']).collect();
    let [year, month, day] = parts.as_slice() else { return Err(wrong()) };
    let year: i32 = year.parse().map_err(|_| wrong())?;
    let month: u32 = month.parse().map_err(|_| wrong())?;
    let day: u32 = day.parse().map_err(|_| wrong())?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(format!("{text} is not a date"));
    }
    Ok((year, month, day))
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The Gregorian date of a count of seconds since 1970-01-01 (through `tyme4rs`' Julian days:
/// the epoch is Julian day 2440587.5).
fn civil_date(seconds: i64) -> (i32, u32, u32) {
    let day = JulianDay::from_julian_day(2_440_587.5 + seconds.div_euclid(86_400) as f64).get_solar_day();
    (day.get_year() as i32, day.get_month() as u32, day.get_day() as u32)
}

/// The almanac of the requested date, in Chinese, for the LLM to answer from.
pub fn almanac(request: &Request) -> String {
    let day = SolarDay::from_ymd(request.year as isize, request.month as usize, request.day as usize);
    let lunar = day.get_lunar_day();
    let cycle = day.get_sixty_cycle_day();
    let term = day.get_term_day();
    let next_term = term.get_solar_term().next(1);
    let festivals: Vec<String> = [lunar.get_festival().map(|f| f.get_name()), day.get_festival().map(|f| f.get_name())]
        .into_iter()
        .flatten()
        .collect();
    let names = |taboos: Vec<tyme4rs::tyme::culture::Taboo>| {
        let names: Vec<String> = taboos.iter().map(Culture::get_name).collect();
        if names.is_empty() { "无".to_owned() } else { names.join("、") }
    };
    let query = if request.query.is_empty() { "干支年和农历日期" } else { request.query.as_str() };
    let term_line = if term.get_day_index() == 0 {
        format!("今日{}；下一个节气{}（{}）", term.get_solar_term(), next_term, next_term.get_solar_day())
    } else {
        format!(
            "{}第{}天；下一个节气{}（{}）",
            term.get_solar_term(),
            term.get_day_index() + 1,
            next_term,
            next_term.get_solar_day()
        )
    };
    [
        format!("根据以下信息回应用户关于“{query}”的查询："),
        format!("公历：{} 星期{}", day, day.get_week()),
        format!("农历：{}", lunar.to_string().trim_start_matches("农历")),
        format!("干支：{}年 {}月 {}日", cycle.get_year(), cycle.get_month(), cycle.get_sixty_cycle()),
        format!("生肖：{}", cycle.get_year().get_earth_branch().get_zodiac()),
        format!("星座：{}座", day.get_constellation()),
        format!("节气：{term_line}"),
        format!("节日：{}", if festivals.is_empty() { "无".to_owned() } else { festivals.join("、") }),
        format!("宜：{}", names(cycle.get_recommends())),
        format!("忌：{}", names(cycle.get_avoids())),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06 00:00 UTC.
    const DEC_6_2026: i64 = 1_796_515_200;

    #[test]
    fn schema_is_valid_json() {
        let schema: serde_json::Value = serde_json::from_str(PARAMETERS_JSON).unwrap();
        assert!(schema["properties"]["date"].is_object() && schema["properties"]["query"].is_object());
    }

    #[test]
    fn today_is_taken_in_china() {
        let today = parse("{}", DEC_6_2026).unwrap();
        assert_eq!((today.year, today.month, today.day), (2026, 12, 6));
        // 17:00 UTC on the 6th is already the 7th in China.
        let late = parse("", DEC_6_2026 + 17 * 3600).unwrap();
        assert_eq!((late.year, late.month, late.day), (2026, 12, 7));
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400), (2000, 2, 29));
    }

    #[test]
    fn dates_are_checked() {
        assert_eq!(parse(r#"{"date":"2024/2/29"}"#, 0).unwrap().day, 29);
        for bad in [
            r#"{"date":"2023-02-29"}"#,
            r#"{"date":"2024-13-01"}"#,
            r#"{"date":"tomorrow"}"#,
            r#"{"date":"1800-01-01"}"#,
            "[1]",
            "{",
        ] {
            assert!(parse(bad, 0).is_err(), "{bad}");
        }
        let long = format!(r#"{{"query":"{}"}}"#, "宜".repeat(500));
        assert_eq!(parse(&long, 0).unwrap().query.chars().count(), MAX_QUERY_CHARS);
    }

    #[test]
    fn an_ordinary_day() {
        let text = almanac(&parse(r#"{"date":"2026-12-06","query":"宜忌"}"#, 0).unwrap());
        assert!(text.starts_with("根据以下信息回应用户关于“宜忌”的查询："), "{text}");
        for line in [
            "公历：2026年12月6日 星期日",
            "农历：丙午年十月廿八",
            "干支：丙午年 己亥月 甲寅日",
            "生肖：马",
            "星座：射手座",
            "节气：小雪第15天；下一个节气大雪（2026年12月7日）",
            "节日：无",
            "忌：开仓、盖屋、造桥、祭祀",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert!(text.contains("宜：纳采、移徙、纳财、开市"), "{text}");
    }

    #[test]
    fn festivals_and_terms() {
        let spring = almanac(&parse(r#"{"date":"2026-02-17"}"#, 0).unwrap());
        assert!(spring.contains("农历：丙午年正月初一") && spring.contains("节日：春节"), "{spring}");
        assert!(spring.contains("关于“干支年和农历日期”"), "{spring}");
        let national = almanac(&parse(r#"{"date":"2026-10-01"}"#, 0).unwrap());
        assert!(national.contains("节日：国庆节"), "{national}");
        let term = almanac(&parse(r#"{"date":"2026-12-07"}"#, 0).unwrap());
        assert!(term.contains("节气：今日大雪；下一个节气冬至"), "{term}");
        // The first and last years answered.
        assert!(almanac(&parse(r#"{"date":"1900-01-01"}"#, 0).unwrap()).contains("生肖"));
        assert!(almanac(&parse(r#"{"date":"2100-12-31"}"#, 0).unwrap()).contains("生肖"));
    }
}
