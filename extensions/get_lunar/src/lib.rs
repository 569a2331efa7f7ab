//! The `get_lunar` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.1.0`) offering the Python server's `get_lunar` tool: the
//! Chinese lunar calendar and almanac of a date (lunar date, sexagenary year/month/day, zodiac,
//! constellation, solar term, festivals, and what the day is good and bad for, 宜/忌).
//!
//! The tool lives in a plain module that also compiles natively, so `cargo test` runs its unit
//! tests on the build machine; the WIT bindings exist only on `wasm32`.

pub mod tool;

/// The component glue: WIT bindings and the exported `tool` interface.
#[cfg(target_arch = "wasm32")]
mod component {
    use std::time::{SystemTime, UNIX_EPOCH};

    wit_bindgen::generate!({
        path: "../../wit/xiaozhi-extension@0.1.0",
        world: "tool-extension",
    });

    use exports::xiaozhi::extension::tool::Guest;
    use xiaozhi::extension::types::{CallContext, ExtensionError, ToolAction, ToolDefinition, ToolResult};

    /// The exported component.
    struct GetLunar;

    impl Guest for GetLunar {
        fn describe() -> Vec<ToolDefinition> {
            vec![ToolDefinition {
                name: crate::tool::NAME.to_owned(),
                description: crate::tool::DESCRIPTION.to_owned(),
                parameters_json: crate::tool::PARAMETERS_JSON.to_owned(),
            }]
        }

        fn call(name: String, arguments_json: String, _context: CallContext) -> Result<ToolResult, ExtensionError> {
            if name != crate::tool::NAME {
                return Err(ExtensionError::NotFound(format!("unknown tool {name:?}")));
            }
            // std's SystemTime reads `wasi:clocks/wall-clock` on wasm32-wasip2.
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|_| ExtensionError::Failed("the host clock is before 1970".to_owned()))?;
            let seconds = i64::try_from(since_epoch.as_secs())
                .map_err(|_| ExtensionError::Failed("the host clock is out of range".to_owned()))?;
            let request = crate::tool::parse(&arguments_json, seconds).map_err(ExtensionError::InvalidArguments)?;
            Ok(ToolResult { action: ToolAction::ReqLlm, result: Some(crate::tool::almanac(&request)), response: None })
        }
    }

    export!(GetLunar);
}
