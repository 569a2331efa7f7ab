//! The shared, read-only state a new session starts with: the config and the providers built
//! from it. A config change builds a new [`Services`]; sessions already running keep theirs, new
//! sessions take the new one, so a change applies without a restart and never mid-conversation.

use std::path::PathBuf;
use std::sync::Arc;

use crate::asr::{self, Asr};
use crate::audio::vad::{self, SileroModel, VadBatcher};
use crate::config::{Config, SileroVadConfig, VadSpec};
use crate::extensions::Registry;
use crate::llm::{self, Llm};
use crate::metrics::Metrics;
use crate::speaker::{EncoderLoad, PhraseCache};
use crate::store::Store;
use crate::tts::{self, Tts};

/// Providers and config for new sessions.
pub struct Services {
    /// The config these were built from.
    pub config: Arc<Config>,
    /// The session rules of that config (shared by every session that starts with it).
    pub rules: Arc<crate::session::state::Rules>,
    /// Speech recognition.
    pub asr: Arc<dyn Asr>,
    /// Language model.
    pub llm: Arc<dyn Llm>,
    /// Speech synthesis.
    pub tts: Arc<dyn Tts>,
    /// The Silero VAD batcher: one model and one inference thread shared by all sessions.
    pub vad: Arc<VadBatcher>,
    /// The WebAssembly extensions (tools, intent, memory), when the host could start.
    pub extensions: Option<Arc<Registry>>,
    /// The tool servers connected to the MCP endpoint (carried over every rebuild).
    pub mcp_endpoint: Arc<crate::mcp::endpoint::Hub>,
    /// The MCP servers of `data/.mcp_server_settings.json` (carried over every rebuild).
    pub mcp_servers: Arc<crate::mcp::servers::McpServers>,
    /// Encoded fixed phrases, shared by all sessions and kept across config changes.
    pub phrases: Arc<PhraseCache>,
    /// The server's encoding load, shared by every session's speaker.
    pub encoder_load: Arc<EncoderLoad>,
    /// Describes the voice and downlink format: the phrase cache key prefix.
    pub voice_key: String,
    /// `Intent.<selected>.functions`: the extension tools offered (`None`: all).
    pub functions: Option<Arc<[String]>>,
    /// Silero settings of the selected VAD entry.
    pub vad_config: SileroVadConfig,
    /// Where state lives (opened once at start-up; `store:` changes need a restart).
    pub store: Arc<dyn Store>,
    /// This instance's name in the device registry.
    pub instance: Arc<str>,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
}

/// Why the services could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// A provider rejected its settings.
    #[error("{kind} provider: {message}")]
    Provider {
        /// ASR, LLM or TTS.
        kind: &'static str,
        /// Why.
        message: String,
    },
    /// The VAD model could not be loaded.
    #[error("VAD: {0}")]
    Vad(String),
}

/// Keeps loaded models between rebuilds, so a config change reloads a model (seconds for a local
/// ASR or TTS) only when its own settings changed; also carries what is made once at start-up
/// (the store, the extension registry).
pub struct ModelCache {
    vad: Option<(PathBuf, Arc<VadBatcher>)>,
    asr: Option<(String, Arc<dyn Asr>)>,
    tts: Option<(String, Arc<dyn Tts>)>,
    phrases: Arc<PhraseCache>,
    encoder_load: Arc<EncoderLoad>,
    /// The extension registry: created once at start-up, carried over every rebuild.
    pub extensions: Option<Arc<Registry>>,
    /// The tool servers connected to the MCP endpoint (carried over every rebuild).
    pub mcp_endpoint: Arc<crate::mcp::endpoint::Hub>,
    /// The MCP servers of `data/.mcp_server_settings.json` (carried over every rebuild).
    pub mcp_servers: Arc<crate::mcp::servers::McpServers>,
    store: Arc<dyn Store>,
    instance: Arc<str>,
    metrics: Arc<Metrics>,
}

impl ModelCache {
    /// An empty cache for a server whose state lives in `store`, registered as `instance`,
    /// counting into `metrics`.
    pub fn new(store: Arc<dyn Store>, instance: Arc<str>, metrics: Arc<Metrics>) -> Self {
        Self {
            vad: None,
            asr: None,
            tts: None,
            phrases: Arc::default(),
            encoder_load: Arc::default(),
            extensions: None,
            mcp_endpoint: Arc::default(),
            mcp_servers: Arc::default(),
            store,
            instance,
            metrics,
        }
    }
}

/// Returns the cached value when `key` matches, else builds, caches and returns a new one.
fn cached<T: ?Sized, E>(
    slot: &mut Option<(String, Arc<T>)>,
    key: String,
    build: impl FnOnce() -> Result<Arc<T>, E>,
) -> Result<Arc<T>, E> {
    if let Some((cached_key, value)) = slot
        && *cached_key == key
    {
        return Ok(Arc::clone(value));
    }
    let value = build()?;
    *slot = Some((key, Arc::clone(&value)));
    Ok(value)
}

impl Services {
    /// Builds the providers `config` selects. Loading local models blocks: call it off the
    /// async runtime threads.
    pub fn build(config: Arc<Config>, cache: &mut ModelCache) -> Result<Self, ServicesError> {
        let p = &config.providers;
        let asr = cached(&mut cache.asr, format!("{:?}", p.asr), || asr::build(&p.asr))
            .map_err(|e| ServicesError::Provider { kind: "ASR", message: e.to_string() })?;
        let llm = llm::build(&p.llm).map_err(|e| ServicesError::Provider { kind: "LLM", message: e.to_string() })?;
        let tts = cached(&mut cache.tts, format!("{:?}", p.tts), || tts::build(&p.tts))
            .map_err(|e| ServicesError::Provider { kind: "TTS", message: e.to_string() })?;
        let VadSpec::Silero(vad_config) = p.vad.clone();
        let path = vad::find_model(&vad_config.model_dir, &config.models.dir)
            .map_err(|e| ServicesError::Vad(e.to_string()))?;
        let vad = match &cache.vad {
            Some((cached, batcher)) if *cached == path => Arc::clone(batcher),
            _ => {
                let batcher = SileroModel::load(&path)
                    .and_then(VadBatcher::new)
                    .map_err(|e| ServicesError::Vad(e.to_string()))?;
                cache.vad = Some((path, Arc::clone(&batcher)));
                batcher
            }
        };
        // A phrase is cached per voice and downlink format: any change of those is another key.
        let voice_key = format!("{:?}|{:?}|{:?}", p.tts, config.xiaozhi.audio_params, config.audio);
        let rules = Arc::new(crate::session::state::Rules::of(&config));
        let functions = p.functions.as_deref().map(Arc::from);
        Ok(Self {
            rules,
            config,
            asr,
            llm,
            tts,
            vad,
            vad_config,
            extensions: cache.extensions.clone(),
            mcp_endpoint: Arc::clone(&cache.mcp_endpoint),
            mcp_servers: Arc::clone(&cache.mcp_servers),
            phrases: Arc::clone(&cache.phrases),
            encoder_load: Arc::clone(&cache.encoder_load),
            voice_key,
            functions,
            store: Arc::clone(&cache.store),
            instance: Arc::clone(&cache.instance),
            metrics: Arc::clone(&cache.metrics),
        })
    }
}
