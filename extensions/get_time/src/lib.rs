//! The `get_time` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.1.0`) offering one tool that tells the current date,
//! time, weekday and Chinese lunar date.
//!
//! The calendar code lives in plain modules that also compile natively, so `cargo test` runs
//! the unit tests on the build machine; the WIT bindings exist only on `wasm32`.

pub mod calendar;
pub mod lunar;
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
    struct GetTime;

    impl Guest for GetTime {
        fn describe() -> Vec<ToolDefinition> {
            vec![ToolDefinition {
                name: crate::tool::NAME.to_owned(),
                description: crate::tool::DESCRIPTION.to_owned(),
                parameters_json: crate::tool::PARAMETERS_JSON.to_owned(),
            }]
        }

        fn call(name: String, arguments_json: String, context: CallContext) -> Result<ToolResult, ExtensionError> {
            if name != crate::tool::NAME {
                return Err(ExtensionError::NotFound(format!("unknown tool {name:?}")));
            }
            let offset = crate::tool::parse_offset(&arguments_json).map_err(ExtensionError::InvalidArguments)?;
            // std's SystemTime reads `wasi:clocks/wall-clock` on wasm32-wasip2.
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|_| ExtensionError::Failed("the host clock is before 1970".to_owned()))?;
            let seconds = i64::try_from(since_epoch.as_secs())
                .map_err(|_| ExtensionError::Failed("the host clock is out of range".to_owned()))?;
            let language = crate::tool::Language::from_tag(&context.language);
            Ok(ToolResult {
                action: ToolAction::ReqLlm,
                result: Some(crate::tool::describe_instant(seconds, offset, language)),
                response: None,
            })
        }
    }

    export!(GetTime);
}
