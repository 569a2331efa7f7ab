//! WebAssembly extensions: tools (LLM function calls) whose results are [`Effect`]s, intent
//! recognition, long-term memory, prompt lines and audio streams, as components built against
//! the WIT package `xiaozhi:extension@0.2.0` (`wit/xiaozhi-extension@0.2.0/`, described in
//! `extensions/README.md`), or the older `@0.1.0`, whose text results an adapter turns into
//! effects.
//!
//! - [`manifest`]: `extension.toml` (id, WIT version, kinds, requested capabilities).
//! - [`grant`]: declare and grant: the manifest's requests checked against the operator's
//!   `extensions.grants.<id>`; everything else is denied.
//! - [`host`]: the [`ExtensionHost`]: one Wasmtime engine (epoch interruption, pooling allocator
//!   when available), the compile cache, loading, and calls in a fresh store per call with memory,
//!   time and concurrency limits.
//! - `bindings`, `bindings_v02`: the generated bindings of each WIT version and their conversions
//!   into this module's types (the 0.1 adapter: a `tool-action` and its texts become effects).
//! - `iface`: the host imports (`log`, `config`, `kv`, `http`, `llm`), each checking the grant
//!   before doing anything; 0.2's imports delegate to the same code.
//!
//! A failing extension (trap, out of memory, deadline, bad output) never takes the server down:
//! every failure is an [`ExtensionError`] naming the extension.

mod bindings;
mod bindings_v02;
pub mod grant;
pub mod host;
mod iface;
pub mod manifest;
pub mod registry;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use grant::{EffectiveGrant, GrantError};
pub use host::{CallState, ExtensionHost, HostServices, LoadedExtension};
pub use manifest::{Kind, Manifest, ManifestError, WitVersion};
pub use registry::{Registry, Snapshot};

/// The extensions one turn (or one end-of-connection memory save) sees: the registry's snapshot
/// taken when it started (in-flight calls finish on the version they started with), the host
/// that runs them, and who the calls are for.
#[derive(Clone)]
pub struct ExtensionScope {
    /// The registry's snapshot.
    pub snapshot: Arc<Snapshot>,
    /// The host that runs the extensions.
    pub host: Arc<ExtensionHost>,
    /// Device, session and language of the calls.
    pub context: CallContext,
}

/// Logs once per process and extension id that the extension `id` selected in the config
/// section `section` (`Intent`, `Memory`) is not serving, and what happens instead.
pub fn warn_not_serving(section: &str, id: &str, instead: &str) {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.insert(format!("{section}/{id}")) {
        tracing::warn!("{section}: the extension {id} is not serving (see GET /xiaozhi/extensions); {instead}");
    }
}

impl ExtensionScope {
    /// The serving extension `id`, if it is one of `kind`.
    pub fn find(&self, id: &str, kind: Kind) -> Option<&Arc<LoadedExtension>> {
        self.snapshot.extensions.get(id).filter(|ext| ext.manifest.has(kind))
    }
}

/// One tool offered by an extension (the WIT `tool-definition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDefinition {
    /// Function name shown to the LLM (`[A-Za-z0-9_-]{1,64}`, checked on load).
    pub name: String,
    /// What the tool does, for the LLM.
    pub description: String,
    /// JSON schema of the arguments (an object schema; checked to be a JSON object on load).
    pub parameters_json: String,
}

/// Where audio to play comes from (the WIT `audio-source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// A file in a granted media directory, by the path the extension sees (`/music/a.mp3`).
    File(String),
    /// A URL on a granted host.
    Url(String),
    /// Audio the extension streams out through its `media.read` export, by its token.
    Stream(String),
}

/// Audio to play (the WIT `play-audio`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayAudio {
    /// What to play.
    pub source: AudioSource,
    /// Shown while it plays.
    pub title: Option<String>,
}

/// One thing a tool call makes happen (the WIT `effect`); a result is a list, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Speak this text as it is.
    Speak(String),
    /// Give this text to the LLM as the tool's result and let it answer.
    ReplyToLlm(String),
    /// Keep this text in the dialogue as the tool's result without asking the LLM again.
    Note(String),
    /// End the conversation after what comes before has been said and played.
    EndConversation,
    /// Replace the session's system prompt.
    SetSystemPrompt(String),
    /// Play audio.
    Play(PlayAudio),
    /// Call one of the device's own MCP tools; its answer goes to the LLM.
    CallDeviceTool {
        /// The device's name for the tool.
        name: String,
        /// Its arguments as a JSON object text.
        arguments_json: String,
    },
}

/// The outcome of a successful tool call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolResult {
    /// What happens, in order.
    pub effects: Vec<Effect>,
}

/// A chunk of PCM an extension streams out (`media.read`), already mixed down to mono.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcmChunk {
    /// Mono samples.
    pub samples: Vec<i16>,
    /// Samples per second.
    pub sample_rate: u32,
}

/// What an intent extension decided about an utterance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentDecision {
    /// Let the normal chat handle the text.
    ContinueChat,
    /// Call a tool with arguments (a JSON object text).
    CallTool {
        /// The tool name.
        name: String,
        /// The arguments as JSON text.
        arguments_json: String,
    },
    /// Speak this text and skip the LLM.
    Reply(String),
    /// End the conversation.
    Exit,
}

/// Who a call is made for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    /// The device id (normally the MAC address); also the key/value namespace.
    pub device_id: String,
    /// The session id of the connection.
    pub session_id: String,
    /// The conversation language (BCP 47 tag or a name).
    pub language: String,
}

/// Why loading or calling an extension failed. Every case names the extension (or its path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// `extension.toml` is invalid (the message names the file).
    #[error("{path}: {source}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        source: ManifestError,
    },
    /// The manifest asks for something the operator did not grant.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The wasm file is a core module or not WebAssembly at all.
    #[error("extension {id}: {path} {what}")]
    NotAComponent {
        /// The extension id.
        id: String,
        /// The wasm file.
        path: PathBuf,
        /// What the file is instead.
        what: &'static str,
    },
    /// Wasmtime could not compile (or validate) the component.
    #[error("extension {id}: the component does not compile: {message}")]
    Compile {
        /// The extension id.
        id: String,
        /// Wasmtime's error.
        message: String,
    },
    /// The component's imports or exports do not fit the host or the manifest.
    #[error("extension {id}: {message}")]
    Link {
        /// The extension id.
        id: String,
        /// What does not fit.
        message: String,
    },
    /// The extension is called for a kind its manifest does not declare.
    #[error("extension {id} is not a {kind:?} extension")]
    WrongKind {
        /// The extension id.
        id: String,
        /// The kind asked for.
        kind: Kind,
    },
    /// The guest trapped (a bug, `unreachable`, running out of its memory cap, ...).
    #[error("extension {id} failed in {call}: {message}")]
    Trap {
        /// The extension id.
        id: String,
        /// The export called (`tool.call`, ...).
        call: &'static str,
        /// The trap and its context.
        message: String,
    },
    /// The call ran past its time limit and was stopped.
    #[error("extension {id} ran out of time in {call} (limit {limit:?})")]
    Timeout {
        /// The extension id.
        id: String,
        /// The export called.
        call: &'static str,
        /// The limit.
        limit: Duration,
    },
    /// The guest returned its own `extension-error`.
    #[error("extension {id} returned an error from {call}: {message}")]
    Guest {
        /// The extension id.
        id: String,
        /// The export called.
        call: &'static str,
        /// The guest's error case and message.
        message: String,
    },
    /// The guest's answer is unusable (for example a tool definition with a bad name).
    #[error("extension {id}: invalid answer from {call}: {message}")]
    InvalidOutput {
        /// The extension id.
        id: String,
        /// The export called.
        call: &'static str,
        /// What is wrong.
        message: String,
    },
}
