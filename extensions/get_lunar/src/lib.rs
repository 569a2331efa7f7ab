//! The `get_lunar` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) offering the Python server's `get_lunar` tool: the
//! Chinese lunar calendar and almanac of a date (lunar date, sexagenary year/month/day, zodiac,
//! constellation, solar term, festivals, and what the day is good and bad for, 宜/忌).
//!
//! Everything compiles natively, so `cargo test` runs the unit tests on the build machine.

pub mod tool;

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool};

/// The exported tool.
pub struct GetLunar;

impl Tool for GetLunar {
    const NAME: &'static str = tool::NAME;
    const DESCRIPTION: &'static str = tool::DESCRIPTION;
    const PARAMETERS: &'static str = tool::PARAMETERS_JSON;

    fn call(arguments: &Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        // std's SystemTime reads `wasi:clocks/wall-clock` on wasm32-wasip2.
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| ExtensionError::Failed("the host clock is before 1970".to_owned()))?;
        let seconds = i64::try_from(since_epoch.as_secs())
            .map_err(|_| ExtensionError::Failed("the host clock is out of range".to_owned()))?;
        let request = tool::parse(&arguments.to_json(), seconds).map_err(ExtensionError::InvalidArguments)?;
        Ok(vec![Effect::ReplyToLlm(tool::almanac(&request))])
    }
}

xiaozhi_sdk::export_tools!(GetLunar);
