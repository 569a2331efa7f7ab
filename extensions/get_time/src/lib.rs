//! The `get_time` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) offering one tool that
//! tells the current date, time, weekday and Chinese lunar date; its result goes to the LLM.
//!
//! Everything compiles natively, so `cargo test` runs the unit tests on the build machine.

pub mod calendar;
pub mod lunar;
pub mod tool;

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool};

/// The exported tool.
pub struct GetTime;

impl Tool for GetTime {
    const NAME: &'static str = tool::NAME;
    const DESCRIPTION: &'static str = tool::DESCRIPTION;
    const PARAMETERS: &'static str = tool::PARAMETERS_JSON;

    fn call(arguments: &Arguments, context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let offset = tool::parse_offset(&arguments.to_json()).map_err(ExtensionError::InvalidArguments)?;
        // std's SystemTime reads `wasi:clocks/wall-clock` on wasm32-wasip2.
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| ExtensionError::Failed("the host clock is before 1970".to_owned()))?;
        let seconds = i64::try_from(since_epoch.as_secs())
            .map_err(|_| ExtensionError::Failed("the host clock is out of range".to_owned()))?;
        let language = tool::Language::from_tag(&context.language);
        Ok(vec![Effect::ReplyToLlm(tool::describe_instant(seconds, offset, language))])
    }
}

xiaozhi_sdk::export_tools!(GetTime);
