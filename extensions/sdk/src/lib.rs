//! The guest SDK of xiaozhi-server extensions, for the WIT package `xiaozhi:extension@0.2.0`.
//!
//! A tool is a struct and one function:
//!
//! ```ignore
//! use xiaozhi_sdk::{CallContext, Effect, ExtensionError, Tool};
//!
//! struct Hello;
//!
//! impl Tool for Hello {
//!     const NAME: &'static str = "say_hello";
//!     const DESCRIPTION: &'static str = "Greets the user by name.";
//!     const PARAMETERS: &'static str = r#"{"type":"object","properties":{"name":{"type":"string"}}}"#;
//!
//!     fn call(arguments: &xiaozhi_sdk::Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
//!         Ok(vec![Effect::Speak(format!("Hello, {}!", arguments.str("name").unwrap_or("friend")))])
//!     }
//! }
//!
//! xiaozhi_sdk::export_tools!(Hello);
//! ```
//!
//! `export_tools!` exports the `tool` interface (world `tool-extension`) for one or more tools;
//! with the feature `player`, `export_player!` also exports `media` for tools that stream audio of
//! their own (world `player-extension`); with the feature `context`, `export_context!` exports
//! lines for the system prompt (world `context-extension`); with `intent` or `memory`,
//! `export_intent!` / `export_memory!` export intent recognition or long-term memory. One world per
//! build: the features exclude each other. The host imports (`log`, `config`, `kv`, `http`, `llm`) are in [`host`],
//! with the shared types ([`Effect`], [`CallContext`], ...) at the crate root.
//!
//! Everything also compiles for the build machine, so a guest's logic is unit-tested with a
//! plain `cargo test` (calling a host import there panics: only the server provides them).

/// The host imports and the shared types (world `host-api`).
pub mod host {
    wit_bindgen::generate!({
        path: "../../wit/xiaozhi-extension@0.2.0",
        world: "host-api",
        additional_derives: [PartialEq],
    });

    pub use self::xiaozhi::extension::{config, http, kv, llm, log, types};
}

/// The world the extension exports: `tool-extension`, or with one of the features `player`
/// (tools and `media`), `context`, `intent` or `memory` the world of that name. Its import types
/// are those of [`host`]. (One world per build: wit-bindgen's export glue of two worlds cannot
/// live in one crate.)
#[doc(hidden)]
pub mod world {
    /// The bindings of `$world`, its imports taken from [`crate::host`].
    macro_rules! export_world {
        ($world:literal) => {
            wit_bindgen::generate!({
                path: "../../wit/xiaozhi-extension@0.2.0",
                world: $world,
                with: {
                    "xiaozhi:extension/types@0.2.0": crate::host::types,
                    "xiaozhi:extension/log@0.2.0": crate::host::log,
                    "xiaozhi:extension/config@0.2.0": crate::host::config,
                    "xiaozhi:extension/kv@0.2.0": crate::host::kv,
                    "xiaozhi:extension/http@0.2.0": crate::host::http,
                    "xiaozhi:extension/llm@0.2.0": crate::host::llm,
                },
                default_bindings_module: "xiaozhi_sdk::world",
                pub_export_macro: true,
                export_macro_name: "__export_world",
            });
        };
    }

    #[cfg(not(any(feature = "player", feature = "context", feature = "intent", feature = "memory")))]
    export_world!("tool-extension");
    #[cfg(feature = "intent")]
    export_world!("intent-extension");
    #[cfg(feature = "memory")]
    export_world!("memory-extension");
    #[cfg(feature = "context")]
    export_world!("context-extension");
    #[cfg(feature = "player")]
    export_world!("player-extension");
}

pub use host::types::{
    AudioSource, CallContext, DeviceToolCall, Effect, ExtensionError, IntentDecision, Message, PcmChunk, PlayAudio,
    Role, ToolDefinition, ToolResult,
};

mod arguments;
pub mod web;
pub use arguments::Arguments;

/// One tool: its name, description and JSON-schema parameters, and the function that runs it.
pub trait Tool {
    /// The function name shown to the LLM (`[A-Za-z0-9_-]{1,64}`).
    const NAME: &'static str;
    /// What the tool does and when to call it.
    const DESCRIPTION: &'static str = "";
    /// The JSON schema (an object schema) of the arguments.
    const PARAMETERS: &'static str = r#"{"type":"object","properties":{}}"#;

    /// The definition `describe` gives; override it when the description or schema is computed.
    fn definition() -> ToolDefinition {
        ToolDefinition {
            name: Self::NAME.to_owned(),
            description: Self::DESCRIPTION.to_owned(),
            parameters_json: Self::PARAMETERS.to_owned(),
        }
    }

    /// Runs the tool. The effects are applied in order by the host.
    fn call(arguments: &Arguments, context: &CallContext) -> Result<Vec<Effect>, ExtensionError>;
}

/// Audio a player extension streams out (`audio-source::stream`): chunk `index` of the stream
/// `token`, or `None` after the last one. Each call runs in a fresh instance, so a chunk must
/// follow from the token and the index alone.
pub trait Player {
    /// Chunk `index` of `token`.
    fn read(token: &str, index: u32) -> Result<Option<PcmChunk>, ExtensionError>;
}

/// Lines for the system prompt at session start (world `context-extension`, feature `context`).
pub trait Context {
    /// The lines for the session in `context` (the host keeps at most 16 of 300 characters).
    fn lines(context: &CallContext) -> Result<Vec<String>, ExtensionError>;
}

/// Intent recognition (world `intent-extension`, feature `intent`).
pub trait Intent {
    /// What to do with `text` after `history` (oldest first), given the session's `tools`.
    fn detect(
        history: &[Message],
        text: &str,
        tools: &[ToolDefinition],
        context: &CallContext,
    ) -> Result<IntentDecision, ExtensionError>;
}

/// Long-term memory (world `memory-extension`, feature `memory`).
pub trait Memory {
    /// What is known that is relevant to `text`, for the system prompt (empty: nothing).
    fn query(device_id: &str, text: &str) -> Result<String, ExtensionError>;
    /// Keeps what is worth keeping of a finished dialogue (oldest first).
    fn save(device_id: &str, messages: &[Message]) -> Result<(), ExtensionError>;
}

/// Runs `T` on the arguments text (an object; empty text is `{}`).
pub fn run<T: Tool>(arguments_json: &str, context: &CallContext) -> Result<ToolResult, ExtensionError> {
    let arguments = Arguments::parse(arguments_json)?;
    T::call(&arguments, context).map(|effects| ToolResult { effects })
}

/// The error for a name no tool of the extension has.
pub fn unknown_tool(name: &str) -> ExtensionError {
    ExtensionError::NotFound(format!("unknown tool {name:?}"))
}

/// The `tool` export of `$guest` for the tools given: `describe` lists their definitions,
/// `call` runs the one named.
#[doc(hidden)]
#[macro_export]
macro_rules! __tool_guest {
    ($guest:ident; $($tool:ty),+) => {
        impl $crate::world::exports::xiaozhi::extension::tool::Guest for $guest {
            fn describe() -> ::std::vec::Vec<$crate::ToolDefinition> {
                ::std::vec![$(<$tool as $crate::Tool>::definition()),+]
            }

            fn call(
                name: ::std::string::String,
                arguments_json: ::std::string::String,
                context: $crate::CallContext,
            ) -> ::std::result::Result<$crate::ToolResult, $crate::ExtensionError> {
                $(
                    if name == <$tool as $crate::Tool>::NAME {
                        return $crate::run::<$tool>(&arguments_json, &context);
                    }
                )+
                Err($crate::unknown_tool(&name))
            }
        }
    };
}

/// Exports the `tool` interface for the tools given (types implementing [`Tool`]).
#[cfg(not(any(feature = "player", feature = "context", feature = "intent", feature = "memory")))]
#[macro_export]
macro_rules! export_tools {
    ($($tool:ty),+ $(,)?) => {
        #[doc(hidden)]
        pub struct __XiaozhiTools;

        $crate::__tool_guest!(__XiaozhiTools; $($tool),+);

        $crate::world::__export_world!(__XiaozhiTools with_types_in $crate::world);
    };
}

/// Exports `tool` for the tools given and `media` from the [`Player`] `player` (feature
/// `player`).
#[cfg(feature = "player")]
#[macro_export]
macro_rules! export_player {
    ($player:ty; $($tool:ty),+ $(,)?) => {
        #[doc(hidden)]
        pub struct __XiaozhiPlayer;

        $crate::__tool_guest!(__XiaozhiPlayer; $($tool),+);

        impl $crate::world::exports::xiaozhi::extension::media::Guest for __XiaozhiPlayer {
            fn read(
                token: ::std::string::String,
                index: u32,
            ) -> ::std::result::Result<::std::option::Option<$crate::PcmChunk>, $crate::ExtensionError> {
                <$player as $crate::Player>::read(&token, index)
            }
        }

        $crate::world::__export_world!(__XiaozhiPlayer with_types_in $crate::world);
    };
}

/// Exports the `context` interface from the [`Context`] `provider` (feature `context`).
#[cfg(feature = "context")]
#[macro_export]
macro_rules! export_context {
    ($provider:ty) => {
        #[doc(hidden)]
        pub struct __XiaozhiContext;

        impl $crate::world::exports::xiaozhi::extension::context::Guest for __XiaozhiContext {
            fn lines(
                context: $crate::CallContext,
            ) -> ::std::result::Result<::std::vec::Vec<::std::string::String>, $crate::ExtensionError> {
                <$provider as $crate::Context>::lines(&context)
            }
        }

        $crate::world::__export_world!(__XiaozhiContext with_types_in $crate::world);
    };
}

/// Exports the `intent` interface from the [`Intent`] `recogniser` (feature `intent`).
#[cfg(feature = "intent")]
#[macro_export]
macro_rules! export_intent {
    ($recogniser:ty) => {
        #[doc(hidden)]
        pub struct __XiaozhiIntent;

        impl $crate::world::exports::xiaozhi::extension::intent::Guest for __XiaozhiIntent {
            fn detect(
                history: ::std::vec::Vec<$crate::Message>,
                text: ::std::string::String,
                tools: ::std::vec::Vec<$crate::ToolDefinition>,
                context: $crate::CallContext,
            ) -> ::std::result::Result<$crate::IntentDecision, $crate::ExtensionError> {
                <$recogniser as $crate::Intent>::detect(&history, &text, &tools, &context)
            }
        }

        $crate::world::__export_world!(__XiaozhiIntent with_types_in $crate::world);
    };
}

/// Exports the `memory` interface from the [`Memory`] `store` (feature `memory`).
#[cfg(feature = "memory")]
#[macro_export]
macro_rules! export_memory {
    ($store:ty) => {
        #[doc(hidden)]
        pub struct __XiaozhiMemory;

        impl $crate::world::exports::xiaozhi::extension::memory::Guest for __XiaozhiMemory {
            fn query(
                device_id: ::std::string::String,
                text: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::ExtensionError> {
                <$store as $crate::Memory>::query(&device_id, &text)
            }

            fn save(
                device_id: ::std::string::String,
                messages: ::std::vec::Vec<$crate::Message>,
            ) -> ::std::result::Result<(), $crate::ExtensionError> {
                <$store as $crate::Memory>::save(&device_id, &messages)
            }
        }

        $crate::world::__export_world!(__XiaozhiMemory with_types_in $crate::world);
    };
}
