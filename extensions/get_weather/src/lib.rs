//! The `get_weather` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) offering one tool that fetches the current weather
//! and the 7-day forecast from QWeather (和风天气) through the host's `http` import, like the
//! Python server's `get_weather` plugin, and returns a summary for the LLM (`req-llm`).
//!
//! Configuration (host `config`): `api_key` (required), `api_host` (default
//! `devapi.qweather.com`), `default_location` (default `广州`).
//!
//! The logic lives in [`weather`] and [`gzip`]; everything compiles natively, so `cargo test`
//! runs the unit tests on the build machine.

pub mod gzip;
pub mod weather;

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool};

/// The exported tool.
pub struct GetWeather;

impl Tool for GetWeather {
    const NAME: &'static str = weather::NAME;
    const DESCRIPTION: &'static str = weather::DESCRIPTION;
    const PARAMETERS: &'static str = weather::PARAMETERS_JSON;

    fn call(arguments: &Arguments, context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let settings = weather::Config::load(xiaozhi_sdk::host::config::get).map_err(ExtensionError::Failed)?;
        let fetch = |request: &weather::Request| {
            let mut get = xiaozhi_sdk::web::get(&request.url, &[]);
            get.headers = request.headers.clone();
            get.timeout_ms = Some(weather::REQUEST_TIMEOUT_MS);
            xiaozhi_sdk::web::send(&get).map(|response| weather::Reply { status: response.status, body: response.body })
        };
        let summary =
            weather::run(&arguments.to_json(), &context.language, &settings, fetch).map_err(|error| match error {
                weather::Error::InvalidArguments(message) => ExtensionError::InvalidArguments(message),
                weather::Error::Service(message) => ExtensionError::Failed(message),
                weather::Error::Transport(error) => error,
            })?;
        Ok(vec![Effect::ReplyToLlm(summary)])
    }
}

xiaozhi_sdk::export_tools!(GetWeather);
