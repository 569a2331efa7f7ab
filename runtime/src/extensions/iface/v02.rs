//! The host imports of `xiaozhi:extension@0.2.0`. They are the same interfaces as 0.1's (the
//! same records, variants and functions under the newer package), so each call converts its
//! arguments and delegates to the 0.1 implementation next door: one implementation, one set of
//! grant checks.

use super::super::bindings::xiaozhi::extension as v01;
use super::super::bindings_v02::xiaozhi::extension as v02;
use super::super::host::CallState;

impl v02::types::Host for CallState {}

fn error(err: v01::types::ExtensionError) -> v02::types::ExtensionError {
    use v01::types::ExtensionError as Old;
    use v02::types::ExtensionError as New;
    match err {
        Old::InvalidArguments(msg) => New::InvalidArguments(msg),
        Old::NotFound(msg) => New::NotFound(msg),
        Old::Denied(msg) => New::Denied(msg),
        Old::TimedOut(msg) => New::TimedOut(msg),
        Old::Failed(msg) => New::Failed(msg),
    }
}

fn level(level: v02::log::Level) -> v01::log::Level {
    use v01::log::Level as Old;
    use v02::log::Level as New;
    match level {
        New::Trace => Old::Trace,
        New::Debug => Old::Debug,
        New::Info => Old::Info,
        New::Warn => Old::Warn,
        New::Error => Old::Error,
    }
}

impl v02::log::Host for CallState {
    async fn log(&mut self, at: v02::log::Level, message: String, fields: Vec<(String, String)>) {
        v01::log::Host::log(self, level(at), message, fields).await;
    }

    async fn enabled(&mut self, at: v02::log::Level) -> bool {
        v01::log::Host::enabled(self, level(at)).await
    }
}

impl v02::config::Host for CallState {
    async fn get(&mut self, key: String) -> Option<String> {
        v01::config::Host::get(self, key).await
    }
}

impl v02::kv::Host for CallState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, v02::types::ExtensionError> {
        v01::kv::Host::get(self, key).await.map_err(error)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), v02::types::ExtensionError> {
        v01::kv::Host::set(self, key, value).await.map_err(error)
    }

    async fn delete(&mut self, key: String) -> Result<(), v02::types::ExtensionError> {
        v01::kv::Host::delete(self, key).await.map_err(error)
    }
}

impl v02::http::Host for CallState {
    async fn fetch(&mut self, req: v02::http::Request) -> Result<v02::http::Response, v02::types::ExtensionError> {
        let v02::http::Request { method, url, headers, body, timeout_ms } = req;
        let old = v01::http::Request { method, url, headers, body, timeout_ms };
        let v01::http::Response { status, headers, body } = v01::http::Host::fetch(self, old).await.map_err(error)?;
        Ok(v02::http::Response { status, headers, body })
    }
}

impl v02::llm::Host for CallState {
    async fn complete(
        &mut self,
        messages: Vec<v02::types::Message>,
        max_tokens: Option<u32>,
    ) -> Result<String, v02::types::ExtensionError> {
        use v01::types::Role as Old;
        use v02::types::Role as New;
        let messages = messages
            .into_iter()
            .map(|m| v01::types::Message {
                role: match m.role {
                    New::System => Old::System,
                    New::User => Old::User,
                    New::Assistant => Old::Assistant,
                    New::Tool => Old::Tool,
                },
                content: m.content,
            })
            .collect();
        v01::llm::Host::complete(self, messages, max_tokens).await.map_err(error)
    }
}
