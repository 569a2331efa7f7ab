//! The `prompt_context` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/context-extension@0.2.0`, written with the guest SDK) that adds today's
//! date, weekday, lunar date and solar term to the system prompt of every session, as the
//! Python server's prompt template does, so the LLM knows them without calling a tool.

use tyme4rs::tyme::jd::JulianDay;
use xiaozhi_sdk::{CallContext, Context, ExtensionError};

/// The lines for a moment: `seconds` since 1970 (UTC) seen at `offset_minutes` east of UTC.
pub fn lines_at(seconds: i64, offset_minutes: i64, english: bool) -> Vec<String> {
    let local = seconds + offset_minutes * 60;
    let day = JulianDay::from_julian_day(2_440_587.5 + local.div_euclid(86_400) as f64).get_solar_day();
    let lunar = day.get_lunar_day();
    let term = day.get_term_day();
    let lunar_text = lunar.to_string();
    let lunar_text = lunar_text.trim_start_matches("农历");
    if english {
        vec![format!(
            "Today is {}-{:02}-{:02} (weekday {}), lunar date {lunar_text}, solar term {}.",
            day.get_year(),
            day.get_month(),
            day.get_day(),
            day.get_week().get_index(),
            term.get_solar_term()
        )]
    } else {
        vec![format!(
            "今天是{}年{}月{}日，星期{}，农历{lunar_text}，{}第{}天。",
            day.get_year(),
            day.get_month(),
            day.get_day(),
            day.get_week(),
            term.get_solar_term(),
            term.get_day_index() + 1
        )]
    }
}

/// The exported provider.
pub struct PromptContext;

impl Context for PromptContext {
    fn lines(context: &CallContext) -> Result<Vec<String>, ExtensionError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| ExtensionError::Failed("the clock is before 1970".into()))?;
        let offset = xiaozhi_sdk::host::config::get("utc_offset_minutes")
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|m| (-720..=840).contains(m))
            .unwrap_or(480);
        let english = context.language.to_ascii_lowercase().starts_with("en");
        Ok(lines_at(now.as_secs() as i64, offset, english))
    }
}

xiaozhi_sdk::export_context!(PromptContext);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_of_china_with_its_lunar_day_and_term() {
        // 2026-12-05 20:00 UTC is 2026-12-06 04:00 in China.
        let at = 1_796_500_800;
        assert_eq!(
            lines_at(at, 480, false),
            vec!["今天是2026年12月6日，星期日，农历丙午年十月廿八，小雪第15天。".to_owned()]
        );
        assert!(lines_at(at, 0, false)[0].starts_with("今天是2026年12月5日，星期六"));
        assert!(lines_at(at, 480, true)[0].starts_with("Today is 2026-12-06 (weekday 0), lunar date 丙午年十月廿八"));
    }
}
