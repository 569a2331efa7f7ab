//! The `change_role` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.1.0`) offering one tool that switches the assistant among
//! canned roles (a friendly assistant, an English teacher, a storyteller), like the Python
//! server's `change_role` plugin.
//!
//! The call returns action `response` with a spoken confirmation, and the new system prompt in
//! `tool-result.result`; the host applies that prompt to the session. An unknown role returns
//! no `result` (the prompt is kept) and a spoken explanation.
//!
//! The logic lives in [`roles`], which also compiles natively, so `cargo test` runs the unit
//! tests on the build machine; the WIT bindings exist only on `wasm32`.

pub mod roles;

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
    struct ChangeRole;

    impl Guest for ChangeRole {
        fn describe() -> Vec<ToolDefinition> {
            vec![ToolDefinition {
                name: crate::roles::NAME.to_owned(),
                description: crate::roles::description(),
                parameters_json: crate::roles::parameters_json(),
            }]
        }

        fn call(name: String, arguments_json: String, context: CallContext) -> Result<ToolResult, ExtensionError> {
            if name != crate::roles::NAME {
                return Err(ExtensionError::NotFound(format!("unknown tool {name:?}")));
            }
            let outcome =
                crate::roles::change(&arguments_json, &context.language).map_err(ExtensionError::InvalidArguments)?;
            Ok(ToolResult { action: ToolAction::Response, result: outcome.new_prompt, response: Some(outcome.spoken) })
        }
    }

    export!(ChangeRole);
}
