//! The `get_weather` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.1.0`) offering one tool that fetches the current weather
//! and the 7-day forecast from QWeather (和风天气) through the host's `http` import, like the
//! Python server's `get_weather` plugin, and returns a summary for the LLM (`req-llm`).
//!
//! Configuration (host `config`): `api_key` (required), `api_host` (default
//! `devapi.qweather.com`), `default_location` (default `广州`).
//!
//! The logic lives in [`weather`] and [`gzip`], which also compile natively, so `cargo test`
//! runs the unit tests on the build machine; the WIT bindings exist only on `wasm32`.

pub mod gzip;
pub mod weather;

/// The component glue: WIT bindings and the exported `tool` interface.
#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../../wit/xiaozhi-extension@0.1.0",
        world: "tool-extension",
    });

    use crate::weather;
    use exports::xiaozhi::extension::tool::Guest;
    use xiaozhi::extension::types::{CallContext, ExtensionError, ToolAction, ToolDefinition, ToolResult};
    use xiaozhi::extension::{config, http};

    /// The exported component.
    struct GetWeather;

    impl Guest for GetWeather {
        fn describe() -> Vec<ToolDefinition> {
            vec![ToolDefinition {
                name: weather::NAME.to_owned(),
                description: weather::DESCRIPTION.to_owned(),
                parameters_json: weather::PARAMETERS_JSON.to_owned(),
            }]
        }

        fn call(name: String, arguments_json: String, context: CallContext) -> Result<ToolResult, ExtensionError> {
            if name != weather::NAME {
                return Err(ExtensionError::NotFound(format!("unknown tool {name:?}")));
            }
            let settings = weather::Config::load(|key| config::get(key)).map_err(ExtensionError::Failed)?;
            let fetch = |request: &weather::Request| {
                http::fetch(&http::Request {
                    method: "GET".to_owned(),
                    url: request.url.clone(),
                    headers: request.headers.clone(),
                    body: None,
                    timeout_ms: Some(weather::REQUEST_TIMEOUT_MS),
                })
                .map(|response| weather::Reply { status: response.status, body: response.body })
            };
            let summary =
                weather::run(&arguments_json, &context.language, &settings, fetch).map_err(|error| match error {
                    weather::Error::InvalidArguments(message) => ExtensionError::InvalidArguments(message),
                    weather::Error::Service(message) => ExtensionError::Failed(message),
                    weather::Error::Transport(error) => error,
                })?;
            Ok(ToolResult { action: ToolAction::ReqLlm, result: Some(summary), response: None })
        }
    }

    export!(GetWeather);
}
