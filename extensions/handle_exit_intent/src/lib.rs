//! The `handle_exit_intent` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.1.0`) offering one tool the LLM calls when the user wants
//! to end the conversation. It answers with the goodbye text to speak; the host closes the
//! session once that response has been spoken.
//!
//! The logic lives in [`tool`], which also compiles natively, so `cargo test` runs the unit
//! tests on the build machine; the WIT bindings exist only on `wasm32`.

pub mod tool;

/// The component glue: WIT bindings and the exported `tool` interface.
#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../../wit/xiaozhi-extension@0.1.0",
        world: "tool-extension",
    });

    use exports::xiaozhi::extension::tool::Guest;
    use xiaozhi::extension::types::{CallContext, ExtensionError, ToolAction, ToolDefinition, ToolResult};

    /// The exported component.
    struct HandleExitIntent;

    impl Guest for HandleExitIntent {
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
            let goodbye =
                crate::tool::goodbye(&arguments_json, &context.language).map_err(ExtensionError::InvalidArguments)?;
            Ok(ToolResult {
                action: ToolAction::Response,
                result: Some(crate::tool::RESULT.to_owned()),
                response: Some(goodbye),
            })
        }
    }

    export!(HandleExitIntent);
}
