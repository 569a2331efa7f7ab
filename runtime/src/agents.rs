//! Agents: named sets of overrides on the configuration, and which device uses which.
//!
//! An [`Agent`] names a system prompt, the ASR, LLM, TTS, VLLM, Memory and Intent entries, a voice,
//! the tools offered and a reply language. A device assigned to an agent starts each session with
//! the agent's settings merged over the loaded configuration ([`Agent::overrides`], resolved and
//! checked by [`crate::config::with_overrides`] exactly as `config.yaml` is), so everything the
//! configuration can select an agent can select, and an agent that names an entry that does not
//! exist is refused when it is saved. A changed agent applies from its devices' next session.
//!
//! Agents and assignments live in the store (`agent:<id>` and `agent_device:<device id>`, JSON),
//! so every instance sharing a Redis agrees; the `agent` subcommand and the console use the
//! functions here. A session start reads the assignment and the agent (two store reads) and takes
//! the providers built for that agent's settings from [`AgentServices`], which builds each
//! distinct (configuration, agent) pair once, off the async workers.
//!
//! Bounds: an id is 1–64 characters of `[A-Za-z0-9_-]`; a name at most 64 characters; a prompt at
//! most [`MAX_PROMPT_BYTES`]; at most [`MAX_TOOLS`] tool names; at most [`MAX_AGENTS`] agents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

use crate::config::Config;
use crate::store::{Store, StoreError};

/// Where an agent is kept: this prefix and its id.
const AGENT_PREFIX: &str = "agent:";
/// Where a device's agent is kept: this prefix and the device id.
const DEVICE_PREFIX: &str = "agent_device:";

/// Longest agent prompt, bytes.
pub const MAX_PROMPT_BYTES: usize = 16 * 1024;
/// Most tool names one agent lists.
pub const MAX_TOOLS: usize = 128;
/// Most agents kept.
pub const MAX_AGENTS: usize = 1000;
/// Longest id and name, characters.
const MAX_NAME_CHARS: usize = 64;
/// Agents whose providers are kept built (the least recently used go first).
const BUILT: usize = 64;

/// The keys a TTS entry may take its voice under, in the order looked for (the Python server's
/// providers differ); `voice` when the entry has none of them.
const VOICE_KEYS: [&str; 5] = ["voice", "voice_type", "voice_id", "speaker", "private_voice"];

/// One agent: every field but `id` is optional; an unset one keeps the configuration's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agent {
    /// Its id (`[A-Za-z0-9_-]`, 1–64 characters).
    pub id: String,
    /// The assistant's name, as shown in the console.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The system prompt (the configuration's `prompt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// `selected_module.ASR`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asr: Option<String>,
    /// `selected_module.LLM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<String>,
    /// `selected_module.TTS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tts: Option<String>,
    /// The voice of the selected TTS entry (under its `voice` key, or the key the entry uses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// `selected_module.VLLM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vllm: Option<String>,
    /// `selected_module.Memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// `selected_module.Intent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// The tools offered (`Intent.<selected>.functions`: extension ids or tool names; the device's
    /// own tools are always offered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// The language replies are in (a line added to the prompt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Milliseconds since the epoch of the last change.
    pub updated: u64,
}

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent is not valid on its own or over the configuration.
    #[error("{0}")]
    Invalid(String),
    /// No agent with that id.
    #[error("no agent {0:?}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&id.chars().count())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Agent {
    /// Checks the agent's own bounds, then its settings over `config` (each named entry exists
    /// and resolves, as `config.yaml` would be checked).
    pub fn check(&self, config: &Config) -> Result<(), AgentError> {
        if !valid_id(&self.id) {
            return Err(AgentError::Invalid(format!(
                "agent id {:?}: 1 to {MAX_NAME_CHARS} characters of A-Z, a-z, 0-9, _ and -",
                self.id
            )));
        }
        if self.name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_CHARS) {
            return Err(AgentError::Invalid(format!("name: at most {MAX_NAME_CHARS} characters")));
        }
        if self.prompt.as_ref().is_some_and(|p| p.len() > MAX_PROMPT_BYTES) {
            return Err(AgentError::Invalid(format!("prompt: at most {MAX_PROMPT_BYTES} bytes")));
        }
        if self.tools.as_ref().is_some_and(|t| t.len() > MAX_TOOLS) {
            return Err(AgentError::Invalid(format!("tools: at most {MAX_TOOLS}")));
        }
        self.apply(config).map(drop)
    }

    /// The configuration a session of this agent's devices starts with.
    pub fn apply(&self, config: &Config) -> Result<Config, AgentError> {
        crate::config::with_overrides(config, self.overrides(config))
            .map_err(|e| AgentError::Invalid(format!("agent {}: {e}", self.id)))
    }

    /// The agent's settings as configuration keys, to merge over `config`.
    pub fn overrides(&self, config: &Config) -> Mapping {
        let key = |k: &str| Value::String(k.to_owned());
        let mut root = Mapping::new();
        let mut prompt = self.prompt.clone();
        if let Some(language) = self.language.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            let base = prompt.clone().unwrap_or_else(|| config.prompt.clone());
            prompt = Some(format!("{}\n\nAlways reply in {language}.", base.trim_end()));
        }
        if let Some(prompt) = prompt {
            root.insert(key("prompt"), Value::String(prompt));
        }
        let mut selected = Mapping::new();
        for (kind, entry) in [
            ("ASR", &self.asr),
            ("LLM", &self.llm),
            ("TTS", &self.tts),
            ("VLLM", &self.vllm),
            ("Memory", &self.memory),
            ("Intent", &self.intent),
        ] {
            if let Some(entry) = entry.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
                selected.insert(key(kind), Value::String(entry.to_owned()));
            }
        }
        if !selected.is_empty() {
            root.insert(key("selected_module"), Value::Mapping(selected));
        }
        if let Some(voice) = &self.voice {
            let entry = self.tts.clone().unwrap_or_else(|| config.selected_module.tts.clone());
            let voice_key = config
                .tts
                .get(&entry)
                .and_then(Value::as_mapping)
                .and_then(|m| VOICE_KEYS.into_iter().find(|k| m.contains_key(*k)))
                .unwrap_or("voice");
            let mut settings = Mapping::new();
            settings.insert(key(voice_key), Value::String(voice.clone()));
            let mut tts = Mapping::new();
            tts.insert(key(&entry), Value::Mapping(settings));
            root.insert(key("TTS"), Value::Mapping(tts));
        }
        if let Some(tools) = &self.tools {
            let entry = self.intent.clone().unwrap_or_else(|| config.selected_module.intent.clone());
            let mut settings = Mapping::new();
            settings.insert(key("functions"), Value::Sequence(tools.iter().cloned().map(Value::String).collect()));
            let mut intent = Mapping::new();
            intent.insert(key(&entry), Value::Mapping(settings));
            root.insert(key("Intent"), Value::Mapping(intent));
        }
        root
    }
}

/// Saves `agent` (checked over `config`), stamped with the time; replaces one with its id.
pub async fn put(store: &dyn Store, config: &Config, mut agent: Agent) -> Result<Agent, AgentError> {
    agent.check(config)?;
    let exists = store.get(&format!("{AGENT_PREFIX}{}", agent.id)).await?.is_some();
    if !exists && store.keys(AGENT_PREFIX).await?.len() >= MAX_AGENTS {
        return Err(AgentError::Invalid(format!("at most {MAX_AGENTS} agents")));
    }
    agent.updated = crate::store::now_ms();
    let value = serde_json::to_vec(&agent).map_err(|e| AgentError::Invalid(e.to_string()))?;
    store.set(&format!("{AGENT_PREFIX}{}", agent.id), &value, None).await?;
    Ok(agent)
}

/// The agent `id`, if there is one (an unreadable record counts as none, logged).
pub async fn get(store: &dyn Store, id: &str) -> Result<Option<Agent>, StoreError> {
    if !valid_id(id) {
        return Ok(None);
    }
    let Some(bytes) = store.get(&format!("{AGENT_PREFIX}{id}")).await? else { return Ok(None) };
    match serde_json::from_slice::<Agent>(&bytes) {
        Ok(agent) => Ok(Some(agent)),
        Err(e) => {
            tracing::warn!("agent {id} in the store is unreadable: {e}");
            Ok(None)
        }
    }
}

/// Every agent, by id.
pub async fn list(store: &dyn Store) -> Result<Vec<Agent>, StoreError> {
    let mut keys = store.keys(AGENT_PREFIX).await?;
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(agent) = get(store, key.trim_start_matches(AGENT_PREFIX)).await? {
            out.push(agent);
        }
    }
    Ok(out)
}

/// Deletes the agent `id` and its devices' assignments.
pub async fn delete(store: &dyn Store, id: &str) -> Result<(), AgentError> {
    if get(store, id).await?.is_none() {
        return Err(AgentError::NotFound(id.to_owned()));
    }
    for device in devices(store, id).await? {
        store.delete(&format!("{DEVICE_PREFIX}{device}")).await?;
    }
    store.delete(&format!("{AGENT_PREFIX}{id}")).await?;
    Ok(())
}

/// Gives `device` the agent `id` (which must exist), or none.
pub async fn assign(store: &dyn Store, device: &str, id: Option<&str>) -> Result<(), AgentError> {
    let device = device.trim();
    if device.is_empty() || device.len() > 128 {
        return Err(AgentError::Invalid("a device id is 1 to 128 bytes".into()));
    }
    let key = format!("{DEVICE_PREFIX}{device}");
    match id {
        None => store.delete(&key).await?,
        Some(id) => {
            if get(store, id).await?.is_none() {
                return Err(AgentError::NotFound(id.to_owned()));
            }
            store.set(&key, id.as_bytes(), None).await?;
        }
    }
    Ok(())
}

/// The agent of `device`, if it has one that exists.
pub async fn of_device(store: &dyn Store, device: &str) -> Result<Option<Agent>, StoreError> {
    let Some(id) = store.get(&format!("{DEVICE_PREFIX}{device}")).await? else { return Ok(None) };
    get(store, &String::from_utf8_lossy(&id)).await
}

/// Every assignment: (device id, agent id), by device.
pub async fn assignments(store: &dyn Store) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    for key in store.keys(DEVICE_PREFIX).await? {
        if let Some(agent) = store.get(&key).await? {
            out.push((key.trim_start_matches(DEVICE_PREFIX).to_owned(), String::from_utf8_lossy(&agent).into_owned()));
        }
    }
    out.sort();
    Ok(out)
}

/// The devices assigned to the agent `id`, sorted.
pub async fn devices(store: &dyn Store, id: &str) -> Result<Vec<String>, StoreError> {
    Ok(assignments(store).await?.into_iter().filter(|(_, agent)| agent == id).map(|(device, _)| device).collect())
}

/// Builds the services of one agent's configuration (blocking: may load models).
pub type BuildFn<S> = dyn Fn(Config) -> Result<Arc<S>, String> + Send + Sync;

/// The providers of each agent in use, built once per (base services, agent version).
pub struct AgentServices<S> {
    build: Box<BuildFn<S>>,
    // std Mutex: held to look up or insert, never across an await or a build.
    built: Mutex<Built<S>>,
}

/// Built services by agent fingerprint: the base they were built over (only a live, identical
/// base matches), the services, and a use counter for eviction.
struct Built<S> {
    entries: HashMap<String, (Weak<S>, Arc<S>, u64)>,
    clock: u64,
}

impl<S: Send + Sync + 'static> AgentServices<S> {
    /// A cache that builds with `build`.
    pub fn new(build: Box<BuildFn<S>>) -> Self {
        Self { build, built: Mutex::new(Built { entries: HashMap::new(), clock: 0 }) }
    }

    /// The services for `agent` over `base` (whose configuration is `config`): built on a
    /// blocking thread the first time, then shared. An agent that no longer applies (an entry it
    /// names was removed from the configuration) falls back to `base`, logged.
    pub async fn for_agent(self: &Arc<Self>, base: &Arc<S>, config: &Config, agent: &Agent) -> Arc<S> {
        let key = serde_json::to_string(agent).unwrap_or_default();
        if let Some(found) = self.touch(&key, base) {
            return found;
        }
        let applied = match agent.apply(config) {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!("{e}; the device uses the configuration as it is");
                return Arc::clone(base);
            }
        };
        let this = Arc::clone(self);
        let built = tokio::task::spawn_blocking(move || (this.build)(applied)).await;
        match built {
            Ok(Ok(services)) => {
                let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
                built.clock += 1;
                let now = built.clock;
                // Services built over a base that is gone (an older configuration) go too.
                built.entries.retain(|_, (over, _, _)| over.strong_count() > 0);
                if built.entries.len() >= BUILT
                    && let Some(oldest) =
                        built.entries.iter().min_by_key(|(_, (_, _, used))| *used).map(|(k, _)| k.clone())
                {
                    built.entries.remove(&oldest);
                }
                built.entries.insert(key, (Arc::downgrade(base), Arc::clone(&services), now));
                services
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    "agent {}: its providers could not be built ({e}); the device uses the configuration as it is",
                    agent.id
                );
                Arc::clone(base)
            }
            Err(e) => {
                tracing::error!("agent {}: building its providers panicked: {e}", agent.id);
                Arc::clone(base)
            }
        }
    }

    fn touch(&self, key: &str, base: &Arc<S>) -> Option<Arc<S>> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        built.clock += 1;
        let now = built.clock;
        let (over, services, used) = built.entries.get_mut(key)?;
        if !Weak::ptr_eq(over, &Arc::downgrade(base)) {
            return None;
        }
        *used = now;
        Some(Arc::clone(services))
    }
}

/// `xiaozhi-server agent …`: the same operations as the console, for scripts. It opens the store
/// the configuration names, so it works beside a running server.
pub mod cli {
    use std::path::PathBuf;

    use anyhow::Context as _;
    use clap::{Args, Subcommand};

    use super::Agent;
    use crate::config::{self, ConfigSource};

    /// What `xiaozhi-server agent` does.
    // Parsed once per command line: the size of `Set` costs nothing.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, Clone, Subcommand)]
    pub enum AgentCommand {
        /// List the agents: id, name, and the devices assigned.
        List,
        /// Print one agent as JSON, and its devices.
        Show {
            /// The agent's id.
            id: String,
        },
        /// Create an agent, or change the fields given of an existing one.
        Set(SetArgs),
        /// Delete an agent; its devices go back to the configuration's settings.
        Delete {
            /// The agent's id.
            id: String,
        },
        /// Give a device an agent (from its next session).
        Assign {
            /// The device id (MAC address).
            device_id: String,
            /// The agent's id.
            agent: String,
        },
        /// Take a device's agent away (from its next session).
        Unassign {
            /// The device id (MAC address).
            device_id: String,
        },
    }

    /// The fields of `agent set`; each given one replaces that field, `--clear` unsets fields.
    #[derive(Debug, Clone, Default, Args)]
    pub struct SetArgs {
        /// The agent's id (`[A-Za-z0-9_-]`, 1–64 characters).
        pub id: String,
        /// The assistant's name.
        #[arg(long)]
        pub name: Option<String>,
        /// The system prompt.
        #[arg(long, conflicts_with = "prompt_file")]
        pub prompt: Option<String>,
        /// The system prompt, from a file.
        #[arg(long)]
        pub prompt_file: Option<PathBuf>,
        /// The `ASR` entry.
        #[arg(long)]
        pub asr: Option<String>,
        /// The `LLM` entry.
        #[arg(long)]
        pub llm: Option<String>,
        /// The `TTS` entry.
        #[arg(long)]
        pub tts: Option<String>,
        /// The voice of the TTS entry.
        #[arg(long)]
        pub voice: Option<String>,
        /// The `VLLM` entry.
        #[arg(long)]
        pub vllm: Option<String>,
        /// The `Memory` entry.
        #[arg(long)]
        pub memory: Option<String>,
        /// The `Intent` entry.
        #[arg(long)]
        pub intent: Option<String>,
        /// The tools offered, comma-separated (extension ids or tool names).
        #[arg(long, value_delimiter = ',')]
        pub tools: Option<Vec<String>>,
        /// The language replies are in.
        #[arg(long)]
        pub language: Option<String>,
        /// Fields to unset (back to the configuration's value): name, prompt, asr, llm, tts,
        /// voice, vllm, memory, intent, tools, language.
        #[arg(long, value_delimiter = ',')]
        pub clear: Vec<String>,
    }

    impl SetArgs {
        /// `agent` (a new one when `None`) with these changes.
        pub fn merge_into(self, agent: Option<Agent>) -> anyhow::Result<Agent> {
            let mut agent = agent.unwrap_or_else(|| Agent { id: self.id.clone(), ..Agent::default() });
            let prompt = match &self.prompt_file {
                Some(path) => {
                    Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
                }
                None => self.prompt,
            };
            for field in &self.clear {
                match field.trim() {
                    "name" => agent.name = None,
                    "prompt" => agent.prompt = None,
                    "asr" => agent.asr = None,
                    "llm" => agent.llm = None,
                    "tts" => agent.tts = None,
                    "voice" => agent.voice = None,
                    "vllm" => agent.vllm = None,
                    "memory" => agent.memory = None,
                    "intent" => agent.intent = None,
                    "tools" => agent.tools = None,
                    "language" => agent.language = None,
                    other => anyhow::bail!("--clear {other}: not a field of an agent"),
                }
            }
            let set = |slot: &mut Option<String>, value: Option<String>| {
                if value.is_some() {
                    *slot = value;
                }
            };
            set(&mut agent.name, self.name);
            set(&mut agent.prompt, prompt);
            set(&mut agent.asr, self.asr);
            set(&mut agent.llm, self.llm);
            set(&mut agent.tts, self.tts);
            set(&mut agent.voice, self.voice);
            set(&mut agent.vllm, self.vllm);
            set(&mut agent.memory, self.memory);
            set(&mut agent.intent, self.intent);
            set(&mut agent.language, self.language);
            if let Some(tools) = self.tools {
                agent.tools = Some(tools.into_iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect());
            }
            Ok(agent)
        }
    }

    /// Runs one `agent` subcommand against the store the configuration names.
    pub async fn run(command: AgentCommand, source: &ConfigSource, data_dir: &std::path::Path) -> anyhow::Result<()> {
        let config = config::load(source)?.config;
        let store = crate::store::open(&config.store, data_dir).await.context("opening the store")?;
        let store = store.as_ref();
        match command {
            AgentCommand::List => {
                for agent in super::list(store).await? {
                    let devices = super::devices(store, &agent.id).await?;
                    println!("{}\t{}\t{}", agent.id, agent.name.as_deref().unwrap_or("-"), devices.join(","));
                }
            }
            AgentCommand::Show { id } => {
                let agent = super::get(store, &id).await?.ok_or_else(|| anyhow::anyhow!("no agent {id:?}"))?;
                println!("{}", serde_json::to_string_pretty(&agent)?);
                println!("devices: {}", super::devices(store, &id).await?.join(", "));
            }
            AgentCommand::Set(args) => {
                let existing = super::get(store, &args.id).await?;
                let created = existing.is_none();
                let agent = super::put(store, &config, args.merge_into(existing)?).await?;
                println!("{} agent {}", if created { "created" } else { "changed" }, agent.id);
            }
            AgentCommand::Delete { id } => {
                super::delete(store, &id).await?;
                println!("deleted agent {id}");
            }
            AgentCommand::Assign { device_id, agent } => {
                super::assign(store, &device_id, Some(&agent)).await?;
                println!("{device_id} uses agent {agent} from its next session");
            }
            AgentCommand::Unassign { device_id } => {
                super::assign(store, &device_id, None).await?;
                println!("{device_id} uses the configuration's settings from its next session");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::load_str(include_str!("../../config.yaml"), None).expect("config.yaml loads").config
    }

    #[test]
    fn no_overrides_change_nothing() {
        let base = config();
        let same = Agent { id: "plain".into(), ..Agent::default() }.apply(&base).expect("applies");
        assert_eq!(serde_yaml_ng::to_string(&same).unwrap(), serde_yaml_ng::to_string(&base).unwrap());
    }

    #[test]
    fn an_agent_selects_entries_voice_prompt_and_tools() {
        let base = config();
        let agent = Agent {
            id: "kid".into(),
            prompt: Some("You are a patient teacher.".into()),
            tts: Some("OpenAITTS".into()),
            voice: Some("nova".into()),
            tools: Some(vec!["get_weather".into()]),
            language: Some("English".into()),
            ..Agent::default()
        };
        let applied = agent.apply(&base).expect("applies");
        assert!(applied.prompt.starts_with("You are a patient teacher."));
        assert!(applied.prompt.ends_with("Always reply in English."));
        assert_eq!(applied.selected_module.tts, "OpenAITTS");
        assert_eq!(applied.tts["OpenAITTS"]["voice"], Value::String("nova".into()));
        let intent = &base.selected_module.intent;
        assert_eq!(applied.intent[intent]["functions"][0], Value::String("get_weather".into()));
        // Other entries keep their settings.
        assert_eq!(applied.llm, base.llm);
    }

    #[test]
    fn an_agent_naming_a_missing_entry_or_out_of_bounds_is_refused() {
        let base = config();
        let missing = Agent { id: "a".into(), llm: Some("NoSuchLLM".into()), ..Agent::default() };
        assert!(missing.check(&base).is_err_and(|e| e.to_string().contains("NoSuchLLM")), "{:?}", missing.check(&base));
        assert!(Agent { id: "a b".into(), ..Agent::default() }.check(&base).is_err());
        assert!(Agent { id: String::new(), ..Agent::default() }.check(&base).is_err());
        let long = Agent { id: "a".into(), prompt: Some("x".repeat(MAX_PROMPT_BYTES + 1)), ..Agent::default() };
        assert!(long.check(&base).is_err());
    }

    #[tokio::test]
    async fn agents_and_assignments_live_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(&crate::config::StoreConfig::default(), dir.path()).await.unwrap();
        let base = config();
        let saved =
            put(store.as_ref(), &base, Agent { id: "kid".into(), prompt: Some("Hi".into()), ..Agent::default() })
                .await
                .unwrap();
        assert!(saved.updated > 0);
        assert!(assign(store.as_ref(), "dev-1", Some("nobody")).await.is_err());
        assign(store.as_ref(), "dev-1", Some("kid")).await.unwrap();
        assign(store.as_ref(), "dev-2", Some("kid")).await.unwrap();
        assert_eq!(of_device(store.as_ref(), "dev-1").await.unwrap(), Some(saved.clone()));
        assert_eq!(devices(store.as_ref(), "kid").await.unwrap(), ["dev-1", "dev-2"]);
        assert_eq!(list(store.as_ref()).await.unwrap(), [saved]);
        assign(store.as_ref(), "dev-2", None).await.unwrap();
        assert_eq!(devices(store.as_ref(), "kid").await.unwrap(), ["dev-1"]);
        delete(store.as_ref(), "kid").await.unwrap();
        assert_eq!(of_device(store.as_ref(), "dev-1").await.unwrap(), None);
        assert!(devices(store.as_ref(), "kid").await.unwrap().is_empty());
    }
}
