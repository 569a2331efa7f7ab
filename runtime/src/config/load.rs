//! Loading: read `config.yaml`, deep-merge `data/.config.yaml` over it, deserialize with the YAML
//! path of every problem, resolve the selected providers and check the values.
//!
//! Keys this server does not know become warnings (`unknown key server.foo (ignored)`); wrong
//! types, a selected provider that does not exist or whose `type` is not supported, and values
//! out of range are errors that name the YAML path. Only the *selected* provider entries are
//! checked: a migrating user's file keeps dozens of unused entries with types we do not support.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use super::{
    AsrSpec, Config, IntentMode, LlmSpec, MemoryMode, OpenAiLlmConfig, Providers, SileroVadConfig, TtsSpec, VadSpec,
};

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The documented base file, `config.yaml`. It must exist.
    pub base: PathBuf,
    /// The user's overrides, `data/.config.yaml`, deep-merged over the base when it exists.
    pub override_path: PathBuf,
}

impl ConfigSource {
    /// The base file `base` and the override file `<data_dir>/.config.yaml`.
    pub fn new(base: impl Into<PathBuf>, data_dir: impl AsRef<Path>) -> Self {
        Self { base: base.into(), override_path: data_dir.as_ref().join(".config.yaml") }
    }
}

/// A successfully loaded configuration and what was wrong with it but not fatal.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The merged, validated configuration with `providers` resolved.
    pub config: Config,
    /// Problems that were ignored, e.g. `unknown key server.foo (ignored)`.
    pub warnings: Vec<String>,
}

/// A configuration problem. The message names the file or the YAML path at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The base file does not exist.
    #[error("the config file {} does not exist", path.display())]
    MissingBase {
        /// The base file.
        path: PathBuf,
    },
    /// A file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file is not valid YAML.
    #[error("{} is not valid YAML: {source}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{} has {bytes} bytes; a config file may have at most {MAX_CONFIG_BYTES}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: usize,
    },
    /// A file nests `[...]`/`{...}` deeper than [`MAX_FLOW_DEPTH`].
    #[error(
        "{}: the [ ] / {{ }} collections at line {line} nest deeper than {MAX_FLOW_DEPTH} levels",
        path.display()
    )]
    TooDeep {
        /// The file.
        path: PathBuf,
        /// The line where the limit is passed.
        line: usize,
    },
    /// A file's top level is not a mapping.
    #[error("{} must hold a mapping of settings at the top level, not {found}", path.display())]
    NotAMapping {
        /// The file.
        path: PathBuf,
        /// What it holds instead.
        found: &'static str,
    },
    /// A value has the wrong type or is out of range.
    #[error("{path}: {message}")]
    Invalid {
        /// The YAML path, e.g. `server.port`.
        path: String,
        /// What is wrong, e.g. `invalid type: string "abc", expected u16`.
        message: String,
    },
    /// `selected_module.<kind>` names an entry that does not exist.
    #[error("selected_module.{kind} names \"{name}\", but there is no {kind}.{name} (entries: {entries})")]
    MissingProvider {
        /// `VAD`, `ASR`, `LLM` or `TTS`.
        kind: String,
        /// The selected name.
        name: String,
        /// The names that do exist, comma-separated (`none` when there are none).
        entries: String,
    },
    /// The selected entry's `type` is not implemented by this server.
    #[error("{path}: \"{found}\" is not supported by this server (supported: {supported})")]
    UnsupportedType {
        /// The YAML path of the `type` key, e.g. `ASR.Foo.type`.
        path: String,
        /// The type found.
        found: String,
        /// The supported types, comma-separated.
        supported: String,
    },
    /// More than one problem: all of them, in the order found.
    #[error("{} problems:{}", .0.len(), .0.iter().map(|e| format!("\n  - {e}")).collect::<String>())]
    Several(Vec<ConfigError>),
    /// The file watcher could not be set up.
    #[error("cannot watch the config files: {0}")]
    Watch(#[from] notify::Error),
    /// The watcher thread could not be started.
    #[error("cannot start the config watcher thread: {0}")]
    WatchThread(#[source] io::Error),
}

impl ConfigError {
    /// One problem as itself, several as [`ConfigError::Several`].
    fn several(mut problems: Vec<ConfigError>) -> Self {
        if problems.len() == 1 { problems.remove(0) } else { ConfigError::Several(problems) }
    }

    /// Every single problem this error stands for.
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(all) => all.iter().collect(),
            one => vec![one],
        }
    }
}

/// Loads the configuration: reads the base file, deep-merges the override file over it when it
/// exists, deserializes, resolves the selected providers and checks the values.
pub fn load(source: &ConfigSource) -> Result<Loaded, ConfigError> {
    let texts = read_texts(source)?;
    load_texts(source, &texts)
}

/// Loads a configuration from file contents instead of files (`config.yaml` and, when given,
/// `data/.config.yaml`, the names used in errors), exactly as [`load`] does.
pub fn load_str(base: &str, override_text: Option<&str>) -> Result<Loaded, ConfigError> {
    let source = ConfigSource { base: PathBuf::from("config.yaml"), override_path: PathBuf::from("data/.config.yaml") };
    let texts = Texts { base: base.to_owned(), override_text: override_text.map(str::to_owned) };
    load_texts(&source, &texts)
}

/// Loads the configuration as [`load`] does, with `selected_module.<kind>` set to `name` (for
/// `test-provider`, which tests an entry whether or not it is selected).
pub fn load_selecting(source: &ConfigSource, kind: &str, name: &str) -> Result<Loaded, ConfigError> {
    let texts = read_texts(source)?;
    let mut merged = parse_document(&source.base, &texts.base)?;
    if let Some(text) = &texts.override_text {
        deep_merge(&mut merged, parse_document(&source.override_path, text)?);
    }
    let mut selection = Mapping::new();
    selection.insert(Value::String(kind.to_owned()), Value::String(name.to_owned()));
    let mut overrides = Mapping::new();
    overrides.insert(Value::String("selected_module".into()), Value::Mapping(selection));
    deep_merge(&mut merged, overrides);
    from_mapping(merged)
}

/// `config` with `overrides` deep-merged over it (maps merge, lists and scalars replace), resolved
/// and checked as [`load`] does: an agent's settings on top of the loaded configuration.
pub fn with_overrides(config: &Config, overrides: Mapping) -> Result<Config, ConfigError> {
    let Ok(Value::Mapping(mut document)) = serde_yaml_ng::to_value(config) else {
        return Err(ConfigError::Invalid {
            path: String::new(),
            message: "the configuration does not serialize".into(),
        });
    };
    deep_merge(&mut document, overrides);
    from_mapping(document).map(|loaded| loaded.config)
}

/// The merged document of both files as the loader sees it before typing it: nulls removed and
/// the Python server's placeholders cleared (for the migration report).
pub fn merged_document(source: &ConfigSource) -> Result<Mapping, ConfigError> {
    let texts = read_texts(source)?;
    let mut merged = parse_document(&source.base, &texts.base)?;
    if let Some(text) = &texts.override_text {
        deep_merge(&mut merged, parse_document(&source.override_path, text)?);
    }
    remove_nulls(&mut merged, &|key| !PROVIDER_KEYS.contains(&key));
    super::migrate::clear_placeholders(&mut merged, &mut Vec::new());
    Ok(merged)
}

/// The raw contents of both files, as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Texts {
    /// The base file.
    pub(crate) base: String,
    /// The override file, `None` when it does not exist.
    pub(crate) override_text: Option<String>,
}

/// Reads both files. A missing base is an error; a missing override is not.
pub(crate) fn read_texts(source: &ConfigSource) -> Result<Texts, ConfigError> {
    let base = match std::fs::read_to_string(&source.base) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(ConfigError::MissingBase { path: source.base.clone() });
        }
        Err(err) => return Err(ConfigError::Read { path: source.base.clone(), source: err }),
    };
    let override_text = match std::fs::read_to_string(&source.override_path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(ConfigError::Read { path: source.override_path.clone(), source: err }),
    };
    Ok(Texts { base, override_text })
}

/// Parses, merges and resolves already-read file contents (`source` names them in errors).
pub(crate) fn load_texts(source: &ConfigSource, texts: &Texts) -> Result<Loaded, ConfigError> {
    let mut merged = parse_document(&source.base, &texts.base)?;
    if let Some(text) = &texts.override_text {
        let overrides = parse_document(&source.override_path, text)?;
        deep_merge(&mut merged, overrides);
    }
    from_mapping(merged)
}

/// Largest config file, bytes (the documented `config.yaml` has 15 KB). Fixed, not a config key:
/// it guards the reading of the config itself.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Deepest nesting of flow collections (`[...]`, `{...}`) in a config file. The YAML parser's
/// time grows with the square of that depth (100 000 levels: tens of seconds), so deeper files
/// are refused before it sees them. Block nesting (indentation) is bounded by the
/// deserializer's own recursion limit. Fixed, like [`MAX_CONFIG_BYTES`].
pub const MAX_FLOW_DEPTH: usize = 64;

/// Refuses a file that is too large or nests flow collections too deeply, in one linear pass.
fn check_shape(path: &Path, text: &str) -> Result<(), ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { path: path.to_path_buf(), bytes: text.len() });
    }
    match flow_too_deep(text, MAX_FLOW_DEPTH) {
        Some(line) => Err(ConfigError::TooDeep { path: path.to_path_buf(), line }),
        None => Ok(()),
    }
}

/// Whether `c` is the end of the text or YAML white space.
fn is_space(c: Option<&u8>) -> bool {
    matches!(c, None | Some(b' ' | b'\t' | b'\n' | b'\r'))
}

/// The line at which YAML `text` nests flow collections deeper than `max`, if it does. Counts
/// only the brackets YAML reads as collections: those where a token starts (after `: `, `- `,
/// `[`, `{`, `,`, a line start, an anchor or a tag), outside quoted scalars, comments and block
/// scalars (`|`, `>`).
fn flow_too_deep(text: &str, max: usize) -> Option<usize> {
    let b = text.as_bytes();
    let (mut i, mut depth, mut line) = (0usize, 0usize, 1usize);
    let mut token_start = true;
    // Indentation of the current line (a block scalar's text is indented deeper than it).
    let mut indent = 0usize;
    let mut at_line_start = true;
    while i < b.len() {
        let c = b[i];
        if at_line_start {
            indent = b[i..].iter().take_while(|c| **c == b' ').count();
            at_line_start = false;
        }
        match c {
            b'\n' => {
                line += 1;
                token_start = true;
                at_line_start = true;
            }
            b'#' if token_start || i == 0 || is_space(b.get(i - 1)) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' if token_start => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' if c == b'"' => i += 1,
                        b'\'' if c == b'\'' && b.get(i + 1) == Some(&b'\'') => i += 1,
                        q if q == c => break,
                        b'\n' => line += 1,
                        _ => {}
                    }
                    i += 1;
                }
                token_start = false;
            }
            b'[' | b'{' if token_start => {
                depth += 1;
                if depth > max {
                    return Some(line);
                }
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                token_start = false;
            }
            b',' if depth > 0 => token_start = true,
            b':' | b'-' | b'?' if is_space(b.get(i + 1)) || (c == b':' && depth > 0) => token_start = true,
            b'&' | b'*' | b'!' if token_start => {
                while i < b.len() && !is_space(b.get(i)) {
                    i += 1;
                }
                continue;
            }
            b'|' | b'>' if token_start && depth == 0 => {
                // A block scalar: every following line indented deeper (or blank) is its text.
                let opener = indent;
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                while i < b.len() {
                    let rest = &b[i + 1..];
                    let spaces = rest.iter().take_while(|c| **c == b' ').count();
                    let blank = matches!(rest.get(spaces), None | Some(b'\n' | b'\r'));
                    if rest.is_empty() || !(blank || spaces > opener) {
                        break;
                    }
                    line += 1;
                    i += 1 + rest.iter().position(|c| *c == b'\n').unwrap_or(rest.len());
                }
                continue;
            }
            b' ' | b'\t' | b'\r' => {}
            _ => token_start = false,
        }
        i += 1;
    }
    None
}

/// Parses one file into its top-level mapping. An empty file is an empty mapping; YAML merge
/// keys (`<<: *anchor`) are applied, as PyYAML does.
fn parse_document(path: &Path, text: &str) -> Result<Mapping, ConfigError> {
    check_shape(path, text)?;
    let yaml_error = |source| ConfigError::Yaml { path: path.to_path_buf(), source };
    let mut value: Value = serde_yaml_ng::from_str(text).map_err(yaml_error)?;
    value.apply_merge().map_err(yaml_error)?;
    match value {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(mapping) => Ok(mapping),
        other => Err(ConfigError::NotAMapping { path: path.to_path_buf(), found: kind_name(&other) }),
    }
}

/// Merges `overrides` into `base`: mappings merge recursively, everything else (lists, scalars,
/// a mapping over a non-mapping) replaces.
pub(crate) fn deep_merge(base: &mut Mapping, overrides: Mapping) {
    for (key, value) in overrides {
        match value {
            Value::Mapping(inner) => {
                if let Some(Value::Mapping(existing)) = base.get_mut(&key) {
                    deep_merge(existing, inner);
                } else {
                    base.insert(key, Value::Mapping(inner));
                }
            }
            other => {
                base.insert(key, other);
            }
        }
    }
}

/// The provider dictionaries: their entries are checked only when selected.
const PROVIDER_KEYS: [&str; 7] = ["VAD", "ASR", "LLM", "TTS", "Memory", "Intent", "VLLM"];

/// Turns the merged document into a validated [`Loaded`].
fn from_mapping(mut document: Mapping) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    // `key:` with nothing after it is null; the Python server treats it as "use the default".
    remove_nulls(&mut document, &|key| !PROVIDER_KEYS.contains(&key));
    super::migrate::clear_placeholders(&mut document, &mut warnings);
    if let Some(url) = document.get("manager-api").and_then(|api| api.get("url")).and_then(Value::as_str)
        && !url.trim().is_empty()
    {
        warnings.push(format!(
            "manager-api.url is set ({url}), but this server does not read its config from the manager API; \
             using the local files"
        ));
    }
    let mut problems = Vec::new();
    let mut config: Config = match deserialize_at(Value::Mapping(document.clone()), "", &mut warnings) {
        Ok(config) => config,
        Err(_) => {
            // Find every setting that is wrong on its own, then go on with the others, so that one
            // run names all the problems.
            let rest = without_invalid(document, "", 2, &mut problems);
            match deserialize_at(Value::Mapping(rest), "", &mut warnings) {
                Ok(config) => config,
                Err(e) => {
                    problems.push(e);
                    return Err(ConfigError::several(problems));
                }
            }
        }
    };
    config.providers = resolve_providers(&config, &mut warnings, &mut problems);
    validate(&config, &mut problems);
    if problems.is_empty() { Ok(Loaded { config, warnings }) } else { Err(ConfigError::several(problems)) }
}

/// `mapping` (at `prefix`) without the settings that do not deserialize into [`Config`] on their
/// own, each of which is added to `problems`; a mapping that fails is searched `depth` levels deep
/// for the settings at fault, and only those are left out.
fn without_invalid(mapping: Mapping, prefix: &str, depth: usize, problems: &mut Vec<ConfigError>) -> Mapping {
    let mut kept = Mapping::new();
    for (key, value) in mapping {
        let Some(name) = key.as_str().map(str::to_owned) else { continue };
        let path = join_path(prefix, &name);
        if deserializes_alone(&path, &value) {
            kept.insert(key, value);
            continue;
        }
        match value {
            Value::Mapping(inner) if depth > 1 => {
                let inner = without_invalid(inner, &path, depth - 1, problems);
                kept.insert(key, Value::Mapping(inner));
            }
            other => {
                if let Err(e) = deserialize_at::<Config>(nest(&path, other), "", &mut Vec::new()) {
                    problems.push(e);
                }
            }
        }
    }
    kept
}

/// Whether `value` at the dotted `path` deserializes into [`Config`] with every other setting at
/// its default.
fn deserializes_alone(path: &str, value: &Value) -> bool {
    deserialize_at::<Config>(nest(path, value.clone()), "", &mut Vec::new()).is_ok()
}

/// `{a: {b: value}}` for the path `a.b`.
fn nest(path: &str, value: Value) -> Value {
    path.rsplit('.').fold(value, |inner, key| {
        let mut mapping = Mapping::new();
        mapping.insert(Value::String(key.to_owned()), inner);
        Value::Mapping(mapping)
    })
}

/// Removes null values from `mapping`, and recursively from nested mappings under keys for which
/// `descend` is true.
fn remove_nulls(mapping: &mut Mapping, descend: &dyn Fn(&str) -> bool) {
    mapping.retain(|_, value| !value.is_null());
    for (key, value) in mapping.iter_mut() {
        if let (Some(key), Value::Mapping(inner)) = (key.as_str(), value)
            && descend(key)
        {
            remove_nulls(inner, &|_| true);
        }
    }
}

/// Deserializes `value` into `T`, reporting type errors with their YAML path and unknown keys as
/// warnings, both prefixed with `prefix` (the path of `value` itself; empty for the root).
fn deserialize_at<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    warnings: &mut Vec<String>,
) -> Result<T, ConfigError> {
    let mut ignored = Vec::new();
    let result = {
        let mut on_ignored = |path: serde_ignored::Path<'_>| {
            let mut text = String::new();
            write_ignored_path(&path, &mut text);
            ignored.push(text);
        };
        let deserializer = serde_ignored::Deserializer::new(value, &mut on_ignored);
        serde_path_to_error::deserialize::<_, T>(deserializer)
    };
    match result {
        Ok(parsed) => {
            warnings.extend(ignored.iter().map(|path| format!("unknown key {} (ignored)", join_path(prefix, path))));
            Ok(parsed)
        }
        Err(err) => {
            let path = err.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let path = join_path(prefix, &path);
            let path = if path.is_empty() { "(top level)".to_owned() } else { path };
            Err(ConfigError::Invalid { path, message: err.inner().to_string() })
        }
    }
}

/// The whole [`Config`] from `value`, with unknown keys as warnings.
pub(crate) fn deserialize_config(value: Value, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
    deserialize_at(value, "", warnings)
}

/// Writes a `serde_ignored` path as `a.b[2].c`, leaving out `Option`/newtype steps.
fn write_ignored_path(path: &serde_ignored::Path<'_>, out: &mut String) {
    match path {
        serde_ignored::Path::Root => {}
        serde_ignored::Path::Seq { parent, index } => {
            write_ignored_path(parent, out);
            let _ = write!(out, "[{index}]");
        }
        serde_ignored::Path::Map { parent, key } => {
            write_ignored_path(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => write_ignored_path(parent, out),
    }
}

/// `prefix.path`, or whichever of the two is not empty.
fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// A YAML value's kind, for messages.
fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Supported `type`s of the selected VAD entry.
const VAD_TYPES: &[&str] = &["silero"];
/// Supported `type`s of the selected ASR entry.
const ASR_TYPES: &[&str] = &[
    "openai",
    "whisper_onnx",
    "sensevoice_onnx",
    "fun_local",
    "sherpa_onnx_local",
    "fun_server",
    "doubao_stream",
    "aliyun_stream",
    "aliyunbl_stream",
    "qwen3_asr_flash",
    "xunfei_stream",
    "tencent",
];
/// Supported `type`s of the selected LLM entry (`ollama` and `xinference` speak the OpenAI API).
const LLM_TYPES: &[&str] = &["openai", "ollama", "xinference", "dify", "coze", "fastgpt", "AliBL", "gemini"];
/// Supported `type`s of the selected TTS entry.
const TTS_TYPES: &[&str] = &[
    "openai",
    "custom",
    "piper",
    "edge",
    "doubao",
    "huoshan_double_stream",
    "aliyun_stream",
    "alibl_stream",
    "siliconflow",
    "minimax_httpstream",
    "gpt_sovits_v2",
    "gpt_sovits_v3",
    "fishspeech",
    "xunfei_stream",
    "tencent",
];

/// Resolves `selected_module` against the provider dictionaries into typed [`Providers`].
fn resolve_providers(config: &Config, warnings: &mut Vec<String>, problems: &mut Vec<ConfigError>) -> Providers {
    let selected = &config.selected_module;
    let vad = keep(
        problems,
        SelectedEntry::find_in("VAD", &selected.vad, &config.vad, VAD_TYPES).and_then(|e| resolve_vad(e, warnings)),
    );
    let asr = keep(
        problems,
        SelectedEntry::find_in("ASR", &selected.asr, &config.asr, ASR_TYPES).and_then(|e| resolve_asr(e, warnings)),
    );
    let llm = keep(
        problems,
        SelectedEntry::find_in("LLM", &selected.llm, &config.llm, LLM_TYPES)
            .and_then(|e| openai_compatible_or(e, warnings)),
    );
    let tts = keep(
        problems,
        SelectedEntry::find_in("TTS", &selected.tts, &config.tts, TTS_TYPES).and_then(|e| resolve_tts(e, warnings)),
    );

    let intent = match lenient_type("Intent", &selected.intent, &config.intent) {
        None => IntentMode::default(),
        Some((name, kind)) => match kind.as_str() {
            "nointent" => IntentMode::NoIntent,
            "function_call" => IntentMode::FunctionCall,
            other => {
                warn_dedicated_llm("Intent", &name, &config.intent, &selected.llm, warnings);
                IntentMode::Extension(other.to_owned())
            }
        },
    };

    let memory = match lenient_type("Memory", &selected.memory, &config.memory) {
        None => MemoryMode::default(),
        Some((name, kind)) => match kind.as_str() {
            "nomem" | "mem_report_only" => MemoryMode::NoMem,
            other => {
                warn_dedicated_llm("Memory", &name, &config.memory, &selected.llm, warnings);
                MemoryMode::Extension(other.to_owned())
            }
        },
    };

    let functions = intent_functions(config, warnings);
    let vllm = resolve_vllm(config, warnings);
    Providers {
        vllm,
        functions,
        vad: vad.unwrap_or_default(),
        asr: asr.unwrap_or_default(),
        llm: llm.unwrap_or_default(),
        tts: tts.unwrap_or_default(),
        intent,
        memory,
    }
}

/// The value of `result`, or `None` with its error added to `problems`.
fn keep<T>(problems: &mut Vec<ConfigError>, result: Result<T, ConfigError>) -> Option<T> {
    result.map_err(|e| problems.push(e)).ok()
}

/// `Intent.<selected>.functions`: the tools offered (`None` without the key: every tool).
fn intent_functions(config: &Config, warnings: &mut Vec<String>) -> Option<Vec<String>> {
    let name = config.selected_module.intent.trim();
    let value = config.intent.get(name)?.get("functions")?;
    match value {
        Value::Null => None,
        Value::Sequence(items) => Some(items.iter().filter_map(Value::as_str).map(|s| s.trim().to_owned()).collect()),
        other => {
            warnings.push(format!(
                "Intent.{name}.functions is {}, not a list of names; every tool is offered",
                kind_name(other)
            ));
            None
        }
    }
}

/// Supported `type`s of the selected VLLM entry (the Python server's only one).
const VLLM_TYPES: &[&str] = &["openai"];

/// The selected vision model, if any. A selection that cannot be used (missing entry, another
/// type, bad settings) is a warning, not an error: the server runs, without vision.
fn resolve_vllm(config: &Config, warnings: &mut Vec<String>) -> Option<super::VllmConfig> {
    let name = config.selected_module.vllm.trim();
    if name.is_empty() {
        return None;
    }
    let resolved = SelectedEntry::find_in("VLLM", name, &config.vllm, VLLM_TYPES).and_then(|mut entry| {
        // The Python provider reads `url` when `base_url` is absent.
        if let Some(url) = entry.settings.shift_remove("url")
            && !entry.settings.contains_key("base_url")
        {
            entry.settings.insert("base_url".into(), url);
        }
        entry.typed::<super::VllmConfig>(warnings)
    });
    match resolved {
        Ok(vllm) if vllm.model_name.trim().is_empty() || vllm.base_url.trim().is_empty() => {
            warnings.push(format!("VLLM.{name}: model_name and base_url (or url) are needed; vision is off"));
            None
        }
        Ok(vllm) => Some(vllm),
        Err(e) => {
            warnings.push(format!("{e}; vision is off"));
            None
        }
    }
}

/// The settings of a `VAD` entry.
pub(crate) fn resolve_vad(entry: SelectedEntry, warnings: &mut Vec<String>) -> Result<VadSpec, ConfigError> {
    let low_given = entry.settings.contains_key("threshold_low");
    let mut settings: SileroVadConfig = entry.typed(warnings)?;
    if !low_given && settings.threshold_low > settings.threshold {
        // Only `threshold` was lowered: keep the default hysteresis from inverting.
        settings.threshold_low = settings.threshold;
    }
    Ok(VadSpec::Silero(settings))
}

/// The settings of an `ASR` entry, by its type.
pub(crate) fn resolve_asr(entry: SelectedEntry, warnings: &mut Vec<String>) -> Result<AsrSpec, ConfigError> {
    Ok(match entry.kind.as_str() {
        "whisper_onnx" => AsrSpec::Whisper(entry.typed(warnings)?),
        "sensevoice_onnx" => AsrSpec::SenseVoice(entry.typed(warnings)?),
        "fun_local" | "sherpa_onnx_local" => sensevoice_alias(entry, warnings)?,
        "fun_server" => AsrSpec::FunServer(entry.typed(warnings)?),
        "doubao_stream" => AsrSpec::DoubaoStream(entry.typed(warnings)?),
        "aliyun_stream" => AsrSpec::AliyunStream(entry.typed(warnings)?),
        "aliyunbl_stream" => AsrSpec::AliyunBlStream(entry.typed(warnings)?),
        "qwen3_asr_flash" => AsrSpec::Qwen3AsrFlash(entry.typed(warnings)?),
        "xunfei_stream" => AsrSpec::XunfeiStream(entry.typed(warnings)?),
        "tencent" => AsrSpec::Tencent(entry.typed(warnings)?),
        _ => AsrSpec::OpenAi(entry.typed(warnings)?),
    })
}

/// The settings of a `TTS` entry, by its type.
pub(crate) fn resolve_tts(entry: SelectedEntry, warnings: &mut Vec<String>) -> Result<TtsSpec, ConfigError> {
    Ok(match entry.kind.as_str() {
        "custom" => TtsSpec::Custom(entry.typed(warnings)?),
        "piper" => TtsSpec::Piper(entry.typed(warnings)?),
        "edge" => TtsSpec::Edge(entry.typed(warnings)?),
        "doubao" => TtsSpec::Doubao(entry.typed(warnings)?),
        "huoshan_double_stream" => TtsSpec::HuoshanDoubleStream(entry.typed(warnings)?),
        "aliyun_stream" => TtsSpec::AliyunStream(entry.typed(warnings)?),
        "alibl_stream" => TtsSpec::AliBlStream(entry.typed(warnings)?),
        "siliconflow" => TtsSpec::SiliconFlow(entry.typed(warnings)?),
        "minimax_httpstream" => TtsSpec::MinimaxHttpStream(entry.typed(warnings)?),
        "gpt_sovits_v2" => TtsSpec::GptSovitsV2(entry.typed(warnings)?),
        "gpt_sovits_v3" => TtsSpec::GptSovitsV3(entry.typed(warnings)?),
        "fishspeech" => TtsSpec::FishSpeech(entry.typed(warnings)?),
        "xunfei_stream" => TtsSpec::XunfeiStream(entry.typed(warnings)?),
        "tencent" => TtsSpec::Tencent(entry.typed(warnings)?),
        _ => TtsSpec::OpenAi(entry.typed(warnings)?),
    })
}

/// The Python server's local SenseVoice types: `fun_local` (FunASR's SenseVoiceSmall) and
/// `sherpa_onnx_local` (sherpa-onnx's SenseVoice export) run the same model as `sensevoice_onnx`.
/// sherpa-onnx's Paraformer models (`model_type: paraformer`) are another model, not supported.
fn sensevoice_alias(mut entry: SelectedEntry, warnings: &mut Vec<String>) -> Result<AsrSpec, ConfigError> {
    if let Some(model_type) = entry.settings.shift_remove("model_type") {
        let model_type = model_type.as_str().unwrap_or_default().trim().to_ascii_lowercase();
        if !model_type.is_empty() && model_type != "sense_voice" && model_type != "sensevoice" {
            return Err(ConfigError::Invalid {
                path: format!("{}.model_type", entry.path),
                message: format!(
                    "\"{model_type}\" is not supported here: only SenseVoice models run in process (use \
                     model_type: sense_voice with a SenseVoice export, or whisper_onnx)"
                ),
            });
        }
    }
    Ok(AsrSpec::SenseVoice(entry.typed(warnings)?))
}

/// The LLM spec of the selected entry: its own type's settings, or the OpenAI-compatible ones
/// (`openai`, `ollama`, `xinference`).
pub(crate) fn openai_compatible_or(
    mut entry: SelectedEntry,
    warnings: &mut Vec<String>,
) -> Result<LlmSpec, ConfigError> {
    match entry.kind.as_str() {
        "dify" => return Ok(LlmSpec::Dify(entry.typed(warnings)?)),
        "coze" => return Ok(LlmSpec::Coze(entry.typed(warnings)?)),
        "fastgpt" => return Ok(LlmSpec::FastGpt(entry.typed(warnings)?)),
        "AliBL" => return Ok(LlmSpec::AliBl(entry.typed(warnings)?)),
        "gemini" => return Ok(LlmSpec::Gemini(entry.typed(warnings)?)),
        _ => {}
    }
    // The Python server's OpenAI provider reads `url` when `base_url` is absent.
    if let Some(url) = entry.settings.shift_remove("url")
        && !entry.settings.contains_key("base_url")
    {
        entry.settings.insert("base_url".into(), url);
    }
    let base_url_given = entry.settings.contains_key("base_url");
    let kind = entry.kind.clone();
    let mut settings: OpenAiLlmConfig = entry.typed(warnings)?;
    let local_root = match kind.as_str() {
        "ollama" => Some("http://localhost:11434"),
        "xinference" => Some("http://localhost:9997"),
        _ => None,
    };
    if let Some(default_root) = local_root {
        // Like the Python providers: default host, and `/v1` appended unless already there.
        let root = if base_url_given { settings.base_url.trim().trim_end_matches('/') } else { default_root };
        settings.base_url = if root.ends_with("/v1") { root.to_owned() } else { format!("{root}/v1") };
    }
    Ok(LlmSpec::OpenAi(settings))
}

/// The selected entry of one provider dictionary, with a supported `type`.
pub(crate) struct SelectedEntry {
    /// `VAD.SileroVAD`: the YAML path of the entry.
    path: String,
    /// The entry's `type`.
    kind: String,
    /// The entry's other settings (`type` removed, null values removed).
    settings: Mapping,
}

impl SelectedEntry {
    /// Finds `dictionary[name]`, checks that it is a mapping with a supported string `type`.
    pub(crate) fn find_in(
        section: &str,
        name: &str,
        dictionary: &std::collections::BTreeMap<String, Value>,
        supported: &[&str],
    ) -> Result<Self, ConfigError> {
        let entries = || {
            if dictionary.is_empty() {
                "none".to_owned()
            } else {
                dictionary.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            }
        };
        if name.trim().is_empty() {
            return Err(ConfigError::Invalid {
                path: format!("selected_module.{section}"),
                message: format!("no {section} entry is selected (entries: {})", entries()),
            });
        }
        let Some(entry) = dictionary.get(name) else {
            return Err(ConfigError::MissingProvider {
                kind: section.to_owned(),
                name: name.to_owned(),
                entries: entries(),
            });
        };
        let path = format!("{section}.{name}");
        let mut settings = match entry {
            Value::Null => Mapping::new(),
            Value::Mapping(mapping) => mapping.clone(),
            other => {
                return Err(ConfigError::Invalid {
                    path,
                    message: format!("expected a mapping of settings, found {}", kind_name(other)),
                });
            }
        };
        let supported_list = supported.join(", ");
        let kind = match settings.shift_remove("type") {
            None | Some(Value::Null) => {
                return Err(ConfigError::Invalid {
                    path: format!("{path}.type"),
                    message: format!("missing; the selected entry needs a type (supported: {supported_list})"),
                });
            }
            Some(Value::String(kind)) => kind.trim().to_owned(),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    path: format!("{path}.type"),
                    message: format!("expected a string, found {}", kind_name(&other)),
                });
            }
        };
        if !supported.contains(&kind.as_str()) {
            if let Some(super::migrate::Support::Not(instead)) =
                super::migrate::lookup(section, &kind).map(|t| t.support)
            {
                return Err(ConfigError::Invalid {
                    path: format!("{path}.type"),
                    message: format!("the Python server's type \"{kind}\" is not supported here; {instead}"),
                });
            }
            return Err(ConfigError::UnsupportedType {
                path: format!("{path}.type"),
                found: kind,
                supported: supported_list,
            });
        }
        remove_nulls(&mut settings, &|_| false);
        Ok(Self { path, kind, settings })
    }

    /// Deserializes the settings into `T`, with this entry's path on errors and warnings.
    fn typed<T: DeserializeOwned>(self, warnings: &mut Vec<String>) -> Result<T, ConfigError> {
        deserialize_at(Value::Mapping(self.settings), &self.path, warnings)
    }
}

/// The Python server lets an Intent/Memory entry name its own LLM (`llm: ChatGLMLLM`); here
/// extensions complete through the selected LLM, so a different name is reported.
fn warn_dedicated_llm(
    section: &str,
    name: &str,
    dictionary: &std::collections::BTreeMap<String, Value>,
    selected_llm: &str,
    warnings: &mut Vec<String>,
) {
    if let Some(Value::String(llm)) = dictionary.get(name).and_then(|entry| entry.get("llm"))
        && !llm.trim().is_empty()
        && llm.trim() != selected_llm.trim()
    {
        warnings.push(format!(
            "{section}.{name}.llm is {llm}, but extensions use the selected LLM ({selected_llm}); {llm} is not used"
        ));
    }
}

/// The `type` of the selected Memory/Intent entry: its `type` key, else (no entry, or no `type`)
/// the selected name itself, as the Python server does. `None` when nothing is selected.
fn lenient_type(
    section: &str,
    name: &str,
    dictionary: &std::collections::BTreeMap<String, Value>,
) -> Option<(String, String)> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let kind = match dictionary.get(name).and_then(|entry| entry.get("type")) {
        Some(Value::String(kind)) => kind.trim().to_owned(),
        Some(other) if !other.is_null() => {
            tracing::debug!("{section}.{name}.type is {}, using the entry name", kind_name(other));
            name.to_owned()
        }
        _ => name.to_owned(),
    };
    Some((name.to_owned(), kind))
}

/// Opus sample rates.
const SAMPLE_RATES: [u32; 5] = [8_000, 12_000, 16_000, 24_000, 48_000];
/// Frame durations the server encodes at, in milliseconds.
const FRAME_DURATIONS: [u32; 4] = [10, 20, 40, 60];
/// Frames the firmware can buffer.
const MAX_PREBUFFER_FRAMES: u32 = 40;

/// Range checks that serde cannot express.
fn validate(config: &Config, problems: &mut Vec<ConfigError>) {
    if let Err(e) = check_log_level(&config.log.log_level) {
        problems.push(e);
    }
    check_limits(&config.limits, problems);
    let mut invalid =
        |path: &str, message: String| problems.push(ConfigError::Invalid { path: path.to_owned(), message });

    let params = &config.xiaozhi.audio_params;
    if !SAMPLE_RATES.contains(&params.sample_rate) {
        invalid(
            "xiaozhi.audio_params.sample_rate",
            format!("{} Hz is not an Opus rate (use 8000, 12000, 16000, 24000 or 48000)", params.sample_rate),
        );
    }
    if !FRAME_DURATIONS.contains(&params.frame_duration) {
        invalid(
            "xiaozhi.audio_params.frame_duration",
            format!("{} ms is not supported (use 10, 20, 40 or 60)", params.frame_duration),
        );
    }
    if params.channels != 1 {
        invalid("xiaozhi.audio_params.channels", format!("{} is not supported (use 1)", params.channels));
    }
    if config.audio.opus_complexity > 10 {
        invalid("audio.opus_complexity", format!("{} is out of range (0 to 10)", config.audio.opus_complexity));
    }
    if !(500..=512_000).contains(&config.audio.opus_bitrate) {
        invalid(
            "audio.opus_bitrate",
            format!("{} is out of range (500 to 512000 bits per second)", config.audio.opus_bitrate),
        );
    }
    if config.audio.prebuffer_frames > MAX_PREBUFFER_FRAMES {
        invalid(
            "audio.prebuffer_frames",
            format!(
                "{} is more than the firmware buffers (at most {MAX_PREBUFFER_FRAMES})",
                config.audio.prebuffer_frames
            ),
        );
    }
    let mqtt = &config.mqtt;
    if mqtt.enabled {
        match mqtt.broker_address() {
            Some(Err(why)) => invalid("mqtt.broker", why),
            Some(Ok(_)) => {
                if config.store.kind != super::StoreKind::Redis {
                    invalid(
                        "mqtt.broker",
                        "fleet mode needs store.type: redis (the device registry decides which instance serves a device)"
                            .into(),
                    );
                }
                if mqtt.udp_host.trim().is_empty() {
                    invalid(
                        "mqtt.udp_host",
                        "fleet mode needs the address devices send this instance's UDP audio to".into(),
                    );
                }
                let group = mqtt.share_group.trim();
                if group.is_empty() || group.contains(['/', '+', '#']) {
                    invalid("mqtt.share_group", format!("{group:?} is not a topic level"));
                }
            }
            None if mqtt.port != 0 && [config.server.port, config.server.http_port].contains(&mqtt.port) => {
                invalid(
                    "mqtt.port",
                    format!("{} is also a port of server:; the listeners need different ports", mqtt.port),
                );
            }
            None => {}
        }
    }
    if config.server.port != 0 && config.server.port == config.server.http_port {
        invalid(
            "server.http_port",
            format!("{} is also server.port; the two listeners need different ports", config.server.http_port),
        );
    }
    let VadSpec::Silero(vad) = &config.providers.vad;
    let vad_path = format!("VAD.{}", config.selected_module.vad);
    for (key, value) in [("threshold", vad.threshold), ("threshold_low", vad.threshold_low)] {
        if !(0.0..=1.0).contains(&value) {
            invalid(&format!("{vad_path}.{key}"), format!("{value} is out of range (0 to 1)"));
        }
    }
    if vad.threshold_low > vad.threshold {
        invalid(
            &format!("{vad_path}.threshold_low"),
            format!("{} is above threshold ({}); it must not be", vad.threshold_low, vad.threshold),
        );
    }
}

/// Every `limits` value must be above zero: a zero would refuse everything (or disable the limit,
/// which is not what a limit of zero says).
fn check_limits(limits: &super::LimitsConfig, problems: &mut Vec<ConfigError>) {
    let value = serde_json::to_value(limits).unwrap_or_default();
    let Some(map) = value.as_object() else { return };
    for (key, value) in map {
        if value.as_u64() == Some(0) {
            problems.push(ConfigError::Invalid { path: format!("limits.{key}"), message: "must be above zero".into() });
        }
    }
}

/// `log.log_level` must be a level name or a `tracing` filter directive.
fn check_log_level(raw: &str) -> Result<(), ConfigError> {
    let path = "log.log_level";
    if super::level_name(raw).is_some() {
        return Ok(());
    }
    let raw = raw.trim();
    let is_directive = raw.contains(['=', ',', ':', '[']);
    if !is_directive {
        return Err(ConfigError::Invalid {
            path: path.into(),
            message: format!(
                "unknown level \"{raw}\" (use TRACE, DEBUG, INFO, WARNING or ERROR, or a filter such as \
                 info,xiaozhi_server=debug)"
            ),
        });
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(raw)
        .map(drop)
        .map_err(|err| ConfigError::Invalid { path: path.into(), message: format!("not a valid log filter: {err}") })
}

/// Placeholder shown instead of secrets in [`Config::effective_yaml`].
const REDACTED: &str = "<redacted>";

impl Config {
    /// The effective configuration as YAML (for `xiaozhi-server check-config`): a comment header
    /// summarising the resolved providers, then the whole merged config. Non-empty secrets
    /// (`api_key`, `secret`, tokens, passwords, `Authorization` headers…) are shown as
    /// `<redacted>`.
    pub fn effective_yaml(&self) -> String {
        let mut out = String::from(
            "# Effective configuration: config.yaml with data/.config.yaml merged over it.\n\
             # Secrets are shown as <redacted>.\n\
             # Resolved providers:\n",
        );
        for line in self.provider_summary() {
            let _ = writeln!(out, "#   {line}");
        }
        let body = serde_yaml_ng::to_value(self).and_then(|mut value| {
            redact(&mut value);
            serde_yaml_ng::to_string(&value)
        });
        match body {
            Ok(body) => out.push_str(&body),
            Err(err) => {
                let _ = writeln!(out, "# cannot serialize the configuration: {err}");
            }
        }
        out
    }

    /// One line per resolved provider, for [`Config::effective_yaml`].
    fn provider_summary(&self) -> Vec<String> {
        let selected = &self.selected_module;
        let providers = &self.providers;
        let VadSpec::Silero(vad) = &providers.vad;
        let line = |kind: &str, name: &str, (type_name, about): (&str, String)| {
            format!("{kind:<6} {name} ({type_name}): {about}")
        };
        let intent = match &providers.intent {
            IntentMode::NoIntent => "nointent (no tools)".to_owned(),
            IntentMode::FunctionCall => "function_call".to_owned(),
            IntentMode::Extension(id) => format!("the intent extension {id}"),
        };
        let memory = match &providers.memory {
            MemoryMode::NoMem => "nomem".to_owned(),
            MemoryMode::Extension(id) => format!("the memory extension {id}"),
        };
        vec![
            format!(
                "VAD    {} (silero): threshold {}, threshold_low {}, min_silence_duration_ms {}",
                selected.vad, vad.threshold, vad.threshold_low, vad.min_silence_duration_ms
            ),
            line("ASR", &selected.asr, providers.asr.describe()),
            line("LLM", &selected.llm, providers.llm.describe()),
            line("TTS", &selected.tts, providers.tts.describe()),
            format!("Intent {} → {intent}", selected.intent),
            format!("Memory {} → {memory}", selected.memory),
        ]
    }
}

/// Replaces non-empty secret strings anywhere in `value` with [`REDACTED`].
fn redact(value: &mut Value) {
    match value {
        Value::Mapping(mapping) => {
            for (key, inner) in mapping.iter_mut() {
                let secret = key.as_str().is_some_and(is_secret_key);
                match inner {
                    Value::String(text) if secret && !text.is_empty() => *text = REDACTED.to_owned(),
                    // A map of secrets (`activation.hmac_keys`): every value is one.
                    Value::Mapping(secrets) if key.as_str() == Some("hmac_keys") => {
                        for (_, value) in secrets.iter_mut() {
                            *value = Value::String(REDACTED.to_owned());
                        }
                    }
                    other => redact(other),
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(redact),
        Value::Tagged(tagged) => redact(&mut tagged.value),
        _ => {}
    }
}

/// Whether a key names a secret (`api_key`, `auth_key`, `secret`, `access_token`, `password`,
/// `Authorization`…). `max_tokens` is not one.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "authorization"
        || key == "token"
        || key.ends_with("key")
        || key.ends_with("_token")
        || key.contains("secret")
        || key.contains("password")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's documented `config.yaml`.
    const REPO_CONFIG: &str = include_str!("../../../config.yaml");

    /// The anchor-features appendix: a migrating user's `data/.config.yaml`.
    const APPENDIX_OVERRIDE: &str = r#"
server:
  ip: 0.0.0.0
  port: 8000
  http_port: 8003
  websocket: ws://192.168.1.10:8000/xiaozhi/v1/
  vision_explain: http://192.168.1.10:8003/mcp/vision/explain
  auth:
    enabled: false
delete_audio: true
selected_module:
  VAD: SileroVAD
  ASR: OpenaiASR
  LLM: OpenAILLM
  VLLM: ChatGLMVLLM
  TTS: OpenAITTS
  Memory: nomem
  Intent: function_call
VAD:
  SileroVAD:
    type: silero
    threshold: 0.5
    threshold_low: 0.3
    model_dir: models/snakers4_silero-vad
    min_silence_duration_ms: 200
ASR:
  OpenaiASR:
    type: openai
    api_key: sk-xxx
    base_url: https://api.openai.com/v1/audio/transcriptions
    model_name: gpt-4o-mini-transcribe
    output_dir: tmp/
LLM:
  OpenAILLM:
    type: openai
    base_url: https://api.deepseek.com/v1
    model_name: deepseek-chat
    api_key: sk-xxx
VLLM:
  ChatGLMVLLM:
    type: openai
    model_name: glm-4v-flash
    url: https://open.bigmodel.cn/api/paas/v4/
    api_key: sk-xxx
TTS:
  OpenAITTS:
    type: openai
    api_key: sk-xxx
    api_url: https://api.openai.com/v1/audio/speech
    model: tts-1
    voice: onyx
    speed: 1
    format: wav
    output_dir: tmp/
"#;

    /// Loads `base` with `overrides` merged over it, from real files.
    fn load_files(base: &str, overrides: Option<&str>) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = ConfigSource::new(dir.path().join("config.yaml"), dir.path().join("data"));
        std::fs::write(&source.base, base).expect("write the base");
        if let Some(text) = overrides {
            std::fs::create_dir_all(dir.path().join("data")).expect("create data/");
            std::fs::write(&source.override_path, text).expect("write the override");
        }
        load(&source)
    }

    /// Loads the repository config with `overrides` merged over it.
    fn load_over_repo(overrides: &str) -> Result<Loaded, ConfigError> {
        load_files(REPO_CONFIG, Some(overrides))
    }

    fn expect_error(result: Result<Loaded, ConfigError>) -> String {
        match result {
            Ok(loaded) => panic!("expected an error, got a config with warnings {:?}", loaded.warnings),
            Err(err) => err.to_string(),
        }
    }

    fn yaml(text: &str) -> Mapping {
        match serde_yaml_ng::from_str(text) {
            Ok(Value::Mapping(mapping)) => mapping,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    #[test]
    fn deep_merge_merges_maps_and_replaces_lists_and_scalars() {
        let mut base = yaml(
            "server: {ip: 0.0.0.0, port: 8000, auth: {enabled: false, allowed_devices: [a, b]}}\n\
             exit_commands: [quit, exit]\nprompt: hello\nkeep: 1",
        );
        let overrides = yaml(
            "server: {port: 9000, auth: {allowed_devices: [c]}}\nexit_commands: [bye]\nprompt: {nested: true}\n\
             new: x",
        );
        deep_merge(&mut base, overrides);
        let expected = yaml(
            "server: {ip: 0.0.0.0, port: 9000, auth: {enabled: false, allowed_devices: [c]}}\n\
             exit_commands: [bye]\nprompt: {nested: true}\nkeep: 1\nnew: x",
        );
        assert_eq!(base, expected);

        // A scalar over a mapping replaces it too.
        let mut base = yaml("server: {port: 8000}");
        deep_merge(&mut base, yaml("server: off"));
        assert_eq!(base, yaml("server: off"));
    }

    #[test]
    fn mqtt_fleet_mode_needs_redis_a_udp_host_and_a_broker_url() {
        let loaded = load_over_repo("mqtt:\n  enabled: true\n").expect("the built-in endpoint loads");
        assert_eq!(loaded.config.mqtt.broker_address(), None);
        let err = expect_error(load_over_repo("mqtt:\n  enabled: true\n  broker: mqtt://broker:1883\n"));
        assert!(err.contains("mqtt.broker") && err.contains("store.type: redis"), "{err}");
        assert!(err.contains("mqtt.udp_host"), "{err}");
        let fleet = "store:\n  type: redis\nmqtt:\n  enabled: true\n  udp_host: 10.0.0.5\n  broker: ";
        let loaded = load_over_repo(&format!("{fleet}mqtt://broker:11883\n")).expect("fleet mode loads");
        assert_eq!(loaded.config.mqtt.broker_address(), Some(Ok(("broker".to_owned(), 11883))));
        let loaded = load_over_repo(&format!("{fleet}broker\n")).expect("the default port");
        assert_eq!(loaded.config.mqtt.broker_address(), Some(Ok(("broker".to_owned(), 1883))));
        let err = expect_error(load_over_repo(&format!("{fleet}mqtt://broker:x\n")));
        assert!(err.contains("the port is not a number"), "{err}");
        let err = expect_error(load_over_repo("mqtt:\n  enabled: true\n  port: 8003\n"));
        assert!(err.contains("mqtt.port"), "{err}");
    }

    #[test]
    fn override_file_is_merged_over_the_base() {
        let loaded = load_over_repo("server:\n  port: 9000\nexit_commands: [bye]\n").expect("loads");
        assert_eq!(loaded.config.server.port, 9000);
        assert_eq!(loaded.config.server.http_port, 8003, "sibling keys survive the merge");
        assert_eq!(loaded.config.exit_commands, vec!["bye".to_owned()], "lists are replaced");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn repo_config_alone_loads_without_warnings_and_matches_the_defaults() {
        let loaded = load_files(REPO_CONFIG, None).expect("config.yaml loads");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

        let strip = |config: &Config| {
            let Ok(Value::Mapping(mut mapping)) = serde_yaml_ng::to_value(config) else { panic!("serializes") };
            for key in PROVIDER_KEYS {
                mapping.remove(key);
            }
            mapping
        };
        assert_eq!(strip(&loaded.config), strip(&Config::default()));

        // The default provider entries resolve to the same providers as config.yaml's.
        let mut warnings = Vec::new();
        let mut problems = Vec::new();
        let default_providers = resolve_providers(&Config::default(), &mut warnings, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(format!("{:?}", loaded.config.providers), format!("{default_providers:?}"));
        assert_eq!(format!("{default_providers:?}"), format!("{:?}", Providers::default()));
        let defaults = Config::default();
        for (name, default_dictionary, repo_dictionary) in [
            ("VAD", &defaults.vad, &loaded.config.vad),
            ("ASR", &defaults.asr, &loaded.config.asr),
            ("LLM", &defaults.llm, &loaded.config.llm),
            ("TTS", &defaults.tts, &loaded.config.tts),
            ("Memory", &defaults.memory, &loaded.config.memory),
            ("Intent", &defaults.intent, &loaded.config.intent),
        ] {
            for key in default_dictionary.keys() {
                assert!(repo_dictionary.contains_key(key), "config.yaml lacks {name}.{key}");
            }
        }
        assert!(matches!(loaded.config.providers.tts, TtsSpec::Piper(_)));
        assert!(loaded.config.tts.contains_key("CustomTTS"), "config.yaml documents the custom TTS");
    }

    #[test]
    fn custom_tts_example_in_repo_config_resolves() {
        let loaded = load_over_repo("selected_module:\n  TTS: CustomTTS\n").expect("loads");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let TtsSpec::Custom(custom) = &loaded.config.providers.tts else { panic!("custom TTS selected") };
        assert_eq!(custom.method, "POST");
        assert!(
            custom.params.values().any(|value| value.as_str().is_some_and(|text| text.contains("{prompt_text}"))),
            "{:?}",
            custom.params
        );
    }

    #[test]
    fn nesting_is_measured_like_yaml_reads_it() {
        assert_eq!(flow_too_deep(REPO_CONFIG, 2), None, "the documented config nests no flow collections");
        let nested = |n: usize| format!("a: {}1{}\n", "[".repeat(n), "]".repeat(n));
        assert_eq!(flow_too_deep(&nested(64), 64), None);
        assert_eq!(flow_too_deep(&nested(65), 64), Some(1));
        let maps = format!("x: 1\nb: {{a: {}1{}}}\n", "{b: ".repeat(70), "}".repeat(70));
        assert_eq!(flow_too_deep(&maps, 64), Some(2));
        assert_eq!(flow_too_deep(&format!("a: &anchor {}1{}\n", "[".repeat(70), "]".repeat(70)), 64), Some(1));
        assert_eq!(flow_too_deep(&format!("- {}\n", "[".repeat(70)), 64), Some(1));
        // Brackets that are text: in quotes, plain scalars, comments and block scalars.
        let text = format!(
            "a: \"{b}\"\nb: '{b}'\nc: use {b} here\n# {b}\nd: |\n  {b}\n  \"\n\ne: [1, [2]]\n",
            b = "[".repeat(100)
        );
        assert_eq!(flow_too_deep(&text, 64), None);
        assert_eq!(flow_too_deep(&format!("{text}f: {}\n", "[".repeat(65)), 64), Some(10));
    }

    #[test]
    fn a_config_nested_100000_deep_is_refused_at_once() {
        // The attack: 200 KB of `[` kept the config watcher busy for ~50 s.
        let text = format!("prompt: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        let err = expect_error(load_files(REPO_CONFIG, Some(&text)));
        assert!(started.elapsed() < std::time::Duration::from_millis(500), "{:?}", started.elapsed());
        assert!(err.contains("nest deeper than 64 levels"), "{err}");
        let big = format!("prompt: \"{}\"\n", "x".repeat(MAX_CONFIG_BYTES));
        assert!(expect_error(load_files(REPO_CONFIG, Some(&big))).contains("at most 1048576"));
    }

    #[test]
    fn wrong_type_reports_the_yaml_path() {
        let message = expect_error(load_over_repo("server:\n  port: abc\n"));
        assert_eq!(message, "server.port: invalid type: string \"abc\", expected u16");

        let message = expect_error(load_over_repo("ASR:\n  OpenaiASR:\n    timeout: soon\n"));
        assert!(message.starts_with("ASR.OpenaiASR.timeout: invalid type: string \"soon\""), "{message}");

        let message = expect_error(load_over_repo("exit_commands: [ok, [nested]]\n"));
        assert!(message.starts_with("exit_commands[1]: invalid type: sequence"), "{message}");
    }

    #[test]
    fn unreadable_inputs_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = ConfigSource::new(dir.path().join("config.yaml"), dir.path().join("data"));
        let message = expect_error(load(&source));
        assert!(message.contains("config.yaml") && message.contains("does not exist"), "{message}");

        let message = expect_error(load_over_repo("server: [unclosed\n"));
        assert!(message.contains(".config.yaml is not valid YAML"), "{message}");

        let message = expect_error(load_over_repo("- a list\n"));
        assert!(message.contains("must hold a mapping") && message.contains("a list"), "{message}");
    }

    #[test]
    fn empty_override_and_null_values_mean_defaults() {
        let loaded = load_over_repo("# nothing here yet\n").expect("loads");
        assert_eq!(loaded.config.server.port, 8000);

        let loaded = load_over_repo("server:\n  websocket:\nprompt:\n").expect("loads");
        assert_eq!(loaded.config.server.websocket, "");
        assert_eq!(loaded.config.prompt, Config::default().prompt);
    }

    #[test]
    fn missing_selected_provider_is_an_error_listing_the_entries() {
        let message = expect_error(load_over_repo("selected_module:\n  ASR: Foo\n"));
        assert_eq!(
            message,
            "selected_module.ASR names \"Foo\", but there is no ASR.Foo (entries: AliyunBLStreamASR, AliyunStreamASR, \
             DoubaoStreamASR, DoubaoStreamASRV2, FunASR, FunASRServer, GroqASR, OpenaiASR, Qwen3ASRFlash, \
             SenseVoiceLocal, SherpaASR, TencentASR, WhisperLocal, XunfeiStreamASR)"
        );

        let message = expect_error(load_over_repo("selected_module:\n  LLM: ''\n"));
        assert!(message.starts_with("selected_module.LLM: no LLM entry is selected"), "{message}");
    }

    #[test]
    fn unsupported_or_missing_type_of_the_selected_entry_is_an_error() {
        // A Python type that does not run here names what to use instead.
        let message = expect_error(load_over_repo(
            "selected_module:\n  ASR: VoskASR\nASR:\n  VoskASR:\n    type: vosk\n    model_path: models/x\n",
        ));
        assert_eq!(
            message,
            "ASR.VoskASR.type: the Python server's type \"vosk\" is not supported here; use sensevoice_onnx or \
             whisper_onnx (offline, in process)"
        );
        // A type nobody knows lists the supported ones.
        let message = expect_error(load_over_repo("selected_module:\n  TTS: X\nTTS:\n  X:\n    type: nosuch\n"));
        assert!(
            message.starts_with(
                "TTS.X.type: \"nosuch\" is not supported by this server (supported: openai, custom, piper, edge,"
            ),
            "{message}"
        );

        let message = expect_error(load_over_repo("selected_module:\n  TTS: Edge\nTTS:\n  Edge:\n    voice: x\n"));
        assert!(message.starts_with("TTS.Edge.type: missing"), "{message}");

        let message = expect_error(load_over_repo("selected_module:\n  VAD: V\nVAD:\n  V:\n    type: [silero]\n"));
        assert_eq!(message, "VAD.V.type: expected a string, found a list");
    }

    #[test]
    fn unknown_keys_warn_at_top_level_and_in_the_selected_provider() {
        let loaded = load_over_repo(
            "server:\n  foo: 1\nplugins:\n  get_weather: {}\nno_such_thing: 1\nLLM:\n  OpenAILLM:\n    top_k: 50\n",
        )
        .expect("unknown keys are not fatal");
        let mut warnings = loaded.warnings.clone();
        warnings.sort();
        assert_eq!(
            warnings,
            vec![
                "unknown key LLM.OpenAILLM.top_k (ignored)".to_owned(),
                "unknown key no_such_thing (ignored)".to_owned(),
                "unknown key server.foo (ignored)".to_owned(),
            ]
        );
    }

    #[test]
    fn appendix_config_loads_with_resolved_providers() {
        let loaded = load_over_repo(APPENDIX_OVERRIDE).expect("the appendix config loads");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let config = &loaded.config;
        assert_eq!(config.server.websocket, "ws://192.168.1.10:8000/xiaozhi/v1/");
        assert_eq!(config.server.vision_explain, "http://192.168.1.10:8003/mcp/vision/explain");

        let VadSpec::Silero(vad) = &config.providers.vad;
        assert_eq!(vad.model_dir, "models/snakers4_silero-vad");
        assert_eq!(vad.min_silence_duration_ms, 200);
        assert_eq!(vad.pre_roll_ms, 1000, "unset keys keep their defaults");

        let AsrSpec::OpenAi(asr) = &config.providers.asr else { panic!("openai ASR") };
        assert_eq!(asr.base_url, "https://api.openai.com/v1/audio/transcriptions");
        assert_eq!(asr.api_key, "sk-xxx");
        assert_eq!(asr.output_dir.as_deref(), Some("tmp/"));

        let LlmSpec::OpenAi(llm) = &config.providers.llm else { panic!("openai LLM") };
        assert_eq!(llm.base_url, "https://api.deepseek.com/v1");
        assert_eq!(llm.model_name, "deepseek-chat");

        let TtsSpec::OpenAi(tts) = &config.providers.tts else { panic!("openai TTS") };
        assert_eq!(tts.api_url, "https://api.openai.com/v1/audio/speech");
        assert_eq!(tts.voice, "onyx");
        assert_eq!(tts.speed, 1.0);
        assert_eq!(config.providers.intent, IntentMode::FunctionCall);
        assert_eq!(config.providers.memory, MemoryMode::NoMem);
        assert_eq!(config.selected_module.vllm, "ChatGLMVLLM");
        let vllm = config.providers.vllm.as_ref().expect("the selected VLLM is resolved");
        assert_eq!(vllm.base_url, "https://open.bigmodel.cn/api/paas/v4/", "`url` is read as base_url");
        assert_eq!(vllm.model_name, "glm-4v-flash");
    }

    #[test]
    fn unselected_entries_with_unknown_types_are_ignored() {
        let loaded = load_over_repo(
            "ASR:\n  FunASR:\n    type: fun_local\n    whatever: [1, 2]\n\
             TTS:\n  EdgeTTS:\n    type: edge\n    bogus: {a: b}\n  Broken: 42\n\
             LLM:\n  ChatGLMLLM:\n    type: openai\n    temperature: not-a-number\n",
        )
        .expect("unused entries are not checked");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert!(loaded.config.asr.contains_key("FunASR"));
    }

    #[test]
    fn other_intent_and_memory_types_name_extensions() {
        let loaded = load_over_repo(
            "selected_module:\n  Intent: intent_llm\n  Memory: mem0ai\n\
             Intent:\n  intent_llm:\n    type: intent_llm\n    llm: ChatGLMLLM\n\
             Memory:\n  mem0ai:\n    type: mem0ai\n    api_key: x\n",
        )
        .expect("loads");
        assert_eq!(loaded.config.providers.intent, IntentMode::Extension("intent_llm".into()));
        assert_eq!(loaded.config.providers.memory, MemoryMode::Extension("mem0ai".into()));
        let selected_llm = &loaded.config.selected_module.llm;
        assert_eq!(
            loaded.warnings,
            vec![format!(
                "Intent.intent_llm.llm is ChatGLMLLM, but extensions use the selected LLM ({selected_llm}); ChatGLMLLM is not used"
            )]
        );

        // No entries at all: the selected name is the type.
        let base = "selected_module:\n  Intent: nointent\n  Memory: nomem\n  TTS: OpenAITTS\n".to_owned()
            + "VAD: {SileroVAD: {type: silero}}\nASR: {OpenaiASR: {type: openai}}\n"
            + "LLM: {OpenAILLM: {type: openai}}\nTTS: {OpenAITTS: {type: openai}}\n";
        let loaded = load_files(&base, None).expect("loads without Memory/Intent dictionaries");
        assert_eq!(loaded.config.providers.intent, IntentMode::NoIntent);
        assert_eq!(loaded.config.providers.memory, MemoryMode::NoMem);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn value_checks_name_the_path() {
        for (overrides, expected) in [
            ("xiaozhi:\n  audio_params:\n    sample_rate: 44100\n", "xiaozhi.audio_params.sample_rate: 44100 Hz"),
            ("xiaozhi:\n  audio_params:\n    frame_duration: 30\n", "xiaozhi.audio_params.frame_duration: 30 ms"),
            ("audio:\n  opus_complexity: 11\n", "audio.opus_complexity: 11 is out of range"),
            ("audio:\n  prebuffer_frames: 41\n", "audio.prebuffer_frames: 41 is more than"),
            ("VAD:\n  SileroVAD:\n    threshold_low: 0.6\n", "VAD.SileroVAD.threshold_low: 0.6 is above threshold"),
            ("VAD:\n  SileroVAD:\n    threshold: 1.5\n", "VAD.SileroVAD.threshold: 1.5 is out of range"),
            ("log:\n  log_level: LOUD\n", "log.log_level: unknown level \"LOUD\""),
            ("server:\n  http_port: 8000\n", "server.http_port: 8000 is also server.port"),
        ] {
            let message = expect_error(load_over_repo(overrides));
            assert!(message.starts_with(expected), "{overrides:?} gave {message:?}");
        }
        assert!(load_over_repo("audio:\n  prebuffer_frames: 40\n").is_ok());
    }

    #[test]
    fn lowering_only_the_threshold_keeps_the_hysteresis_valid() {
        let loaded = load_files(
            "VAD: {V: {type: silero, threshold: 0.2}}\nselected_module: {VAD: V, TTS: OpenAITTS}\n\
             ASR: {OpenaiASR: {type: openai}}\nLLM: {OpenAILLM: {type: openai}}\nTTS: {OpenAITTS: {type: openai}}\n",
            None,
        )
        .expect("loads");
        let VadSpec::Silero(vad) = &loaded.config.providers.vad;
        assert_eq!((vad.threshold, vad.threshold_low), (0.2, 0.2));
    }

    #[test]
    fn llm_aliases_follow_the_python_providers() {
        let loaded = load_over_repo(
            "selected_module: {LLM: Local}\nLLM:\n  Local:\n    type: ollama\n    model_name: qwen3\n    \
             base_url: http://gpu:11434/\n",
        )
        .expect("loads");
        let LlmSpec::OpenAi(llm) = &loaded.config.providers.llm else { panic!("openai LLM") };
        assert_eq!(llm.base_url, "http://gpu:11434/v1");

        let loaded = load_over_repo("selected_module: {LLM: X}\nLLM:\n  X:\n    type: xinference\n").expect("loads");
        let LlmSpec::OpenAi(llm) = &loaded.config.providers.llm else { panic!("openai LLM") };
        assert_eq!(llm.base_url, "http://localhost:9997/v1");

        let loaded = load_over_repo(
            "selected_module: {LLM: GLM}\nLLM:\n  GLM:\n    type: openai\n    url: https://open.bigmodel.cn/api/paas/v4/\n",
        )
        .expect("loads");
        let LlmSpec::OpenAi(llm) = &loaded.config.providers.llm else { panic!("openai LLM") };
        assert_eq!(llm.base_url, "https://open.bigmodel.cn/api/paas/v4/", "`url` is read like base_url");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn helpers_map_levels_keys_and_paths() {
        let mut config = Config::default();
        for (level, filter) in
            [("INFO", "info"), ("DEBUG", "debug"), ("WARNING", "warn"), ("ERROR", "error"), ("", "info")]
        {
            config.log.log_level = level.into();
            assert_eq!(config.log_filter(), filter);
        }
        config.log.log_level = "info,xiaozhi_server=debug".into();
        assert_eq!(config.log_filter(), "info,xiaozhi_server=debug");
        assert!(check_log_level("info,xiaozhi_server=debug").is_ok());
        assert!(check_log_level("info,=bogus[").is_err());

        assert_eq!(config.auth_key(), None);
        config.manager_api.secret = "你的secret".into();
        assert_eq!(config.auth_key(), None, "the Python placeholder counts as unset");
        config.manager_api.secret = "from-manager".into();
        assert_eq!(config.auth_key().as_deref(), Some("from-manager"));
        config.server.auth_key = "local".into();
        assert_eq!(config.auth_key().as_deref(), Some("local"));

        config.models.dir = "/opt/models".into();
        assert!(config.onnxruntime_path().starts_with("/opt/models/lib"));
        config.models.onnxruntime = "/usr/lib/libonnxruntime.so.1".into();
        assert_eq!(config.onnxruntime_path(), PathBuf::from("/usr/lib/libonnxruntime.so.1"));
    }

    #[test]
    fn manager_api_section_is_accepted_with_a_warning_for_url() {
        let loaded = load_over_repo("manager-api:\n  url: http://manager:8002/xiaozhi\n  secret: s3\n").expect("loads");
        assert_eq!(loaded.config.auth_key().as_deref(), Some("s3"));
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].starts_with("manager-api.url is set"), "{:?}", loaded.warnings);
    }

    #[test]
    fn effective_yaml_summarises_redacts_and_reloads() {
        let loaded = load_over_repo(APPENDIX_OVERRIDE).expect("loads");
        let text = loaded.config.effective_yaml();
        assert!(text.starts_with("# Effective configuration"), "{text}");
        assert!(text.contains("#   ASR    OpenaiASR (openai): model gpt-4o-mini-transcribe"), "{text}");
        assert!(text.contains("#   LLM    OpenAILLM (openai): model deepseek-chat"), "{text}");
        assert!(!text.contains("sk-xxx"), "secrets are redacted:\n{text}");
        assert!(text.contains(REDACTED));

        // Apart from the redacted secrets it is a loadable config with the same settings.
        let reloaded = load_files(&text, None).expect("the effective YAML loads");
        assert_eq!(reloaded.config.server.websocket, loaded.config.server.websocket);
        let LlmSpec::OpenAi(llm) = &reloaded.config.providers.llm else { panic!("openai LLM") };
        assert_eq!(llm.base_url, "https://api.deepseek.com/v1");
        assert!(reloaded.warnings.is_empty(), "{:?}", reloaded.warnings);
    }

    #[test]
    fn merge_keys_are_applied() {
        let loaded = load_over_repo(
            "common: &common\n  type: openai\n  api_key: k\nLLM:\n  OpenAILLM:\n    <<: *common\n    model_name: m\n",
        )
        .expect("loads");
        let LlmSpec::OpenAi(llm) = &loaded.config.providers.llm else { panic!("openai LLM") };
        assert_eq!((llm.api_key.as_str(), llm.model_name.as_str()), ("k", "m"));
        assert_eq!(loaded.warnings, vec!["unknown key common (ignored)".to_owned()]);
    }
    #[test]
    fn a_refusal_names_every_problem_at_once() {
        let err = load_over_repo(
            "server:\n  port: eighty\n  http_port: [1]\nxiaozhi:\n  audio_params:\n    sample_rate: 1234\n\
             audio:\n  opus_complexity: 11\nlimits:\n  device_tools: 0\n  hello_timeout_ms: 0\n\
             selected_module:\n  ASR: Nowhere\n  TTS: VoskLike\nTTS:\n  VoskLike:\n    type: cozecn\n",
        )
        .expect_err("refused");
        let problems: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        let expected = [
            "server.port:",
            "server.http_port:",
            "selected_module.ASR names \"Nowhere\"",
            "TTS.VoskLike.type: the Python server's type \"cozecn\" is not supported here",
            "limits.device_tools: must be above zero",
            "limits.hello_timeout_ms: must be above zero",
            "xiaozhi.audio_params.sample_rate: 1234 Hz",
            "audio.opus_complexity: 11 is out of range",
        ];
        for start in expected {
            assert!(problems.iter().any(|p| p.starts_with(start)), "{start} missing from {problems:#?}");
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        let message = err.to_string();
        assert!(message.starts_with("8 problems:\n  - "), "{message}");
    }

    #[test]
    fn python_placeholders_count_as_unset() {
        let loaded = load_over_repo(
            "server:\n  websocket: ws://你的ip或者域名:端口号/xiaozhi/v1/\n  vision_explain: http://你的ip或者域名:端口号/mcp/vision/explain\n\
             selected_module:\n  LLM: ChatGLMLLM\nLLM:\n  ChatGLMLLM:\n    api_key: 你的chat-glm web key\n\
             prompt: 你是小智，你的朋友\n",
        )
        .expect("loads");
        assert_eq!(loaded.config.server.websocket, "");
        assert_eq!(loaded.config.server.vision_explain, "");
        let LlmSpec::OpenAi(llm) = &loaded.config.providers.llm else { panic!("openai LLM") };
        assert_eq!(llm.api_key, "");
        // Only placeholders: a prompt that says 你的 stays as it is.
        assert_eq!(loaded.config.prompt, "你是小智，你的朋友");
    }

    #[test]
    fn the_python_v096_file_loads_as_the_base() {
        let python = include_str!("../../../tests/assets/python-v0.9.6-config.yaml");
        // Its defaults: FunASR (SenseVoice here), ChatGLMLLM, EdgeTTS, function_call with its functions.
        let loaded = load_files(python, None).expect("the Python file loads");
        assert!(matches!(loaded.config.providers.asr, AsrSpec::SenseVoice(_)));
        assert_eq!(loaded.config.providers.llm.describe().0, "openai");
        assert_eq!(loaded.config.providers.tts.describe().0, "edge");
        assert!(loaded.config.providers.functions.as_ref().is_some_and(|f| f.contains(&"get_weather".to_owned())));
        assert_eq!(loaded.config.xiaozhi.audio_params.sample_rate, 24_000);
        assert_eq!(loaded.config.server.websocket, "", "the placeholder URL counts as unset");
        // A type that does not run here is named with what to use instead, with every other problem.
        let err =
            load_files(python, Some("selected_module:\n  ASR: VoskASR\n  TTS: CozeCnTTS\n")).expect_err("refused");
        let problems: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("\"vosk\" is not supported here; use sensevoice_onnx"), "{problems:?}");
        assert!(problems[1].contains("\"cozecn\" is not supported here"), "{problems:?}");
    }

    /// No secret of any remote entry shows in what may be printed of a provider: its resolved
    /// spec's `Debug` and its `check-config` summary.
    #[test]
    fn no_entry_prints_its_secrets() {
        const SECRET: &str = "SeCrEt-0123456789";
        let repo = include_str!("../../../config.yaml");
        let document: serde_yaml_ng::Value = serde_yaml_ng::from_str(repo).expect("config.yaml parses");
        let mut checked = 0;
        let mut leaks = Vec::new();
        for section in ["ASR", "LLM", "TTS"] {
            let entries = document.get(section).and_then(|v| v.as_mapping()).cloned().unwrap_or_default();
            for (name, entry) in &entries {
                let (Some(name), Some(map)) = (name.as_str(), entry.as_mapping()) else { continue };
                let kind = map.get("type").and_then(|v| v.as_str()).unwrap_or_default();
                if matches!(kind, "fun_local" | "sherpa_onnx_local" | "whisper_onnx" | "sensevoice_onnx" | "piper") {
                    continue;
                }
                let secrets: Vec<&str> = map
                    .keys()
                    .filter_map(|k| k.as_str())
                    .filter(|k| {
                        // (`appkey`: Aliyun's project id, not a secret)
                        (k.ends_with("key") && *k != "appkey")
                            || k.ends_with("token")
                            || k.contains("secret")
                            || k.contains("password")
                    })
                    .collect();
                if secrets.is_empty() {
                    continue;
                }
                let mut overrides = format!("selected_module:\n  {section}: {name}\n{section}:\n  {name}:\n");
                for key in &secrets {
                    overrides.push_str(&format!("    {key}: \"{SECRET}\"\n"));
                }
                let loaded = load_files(repo, Some(&overrides)).unwrap_or_else(|e| panic!("{section}.{name}: {e}"));
                let providers = &loaded.config.providers;
                let ((_, summary), debug) = match section {
                    "ASR" => (providers.asr.describe(), format!("{:?}", providers.asr)),
                    "LLM" => (providers.llm.describe(), format!("{:?}", providers.llm)),
                    _ => (providers.tts.describe(), format!("{:?}", providers.tts)),
                };
                if debug.contains(SECRET) {
                    leaks.push(format!("{section}.{name} (Debug)"));
                }
                if summary.contains(SECRET) {
                    leaks.push(format!("{section}.{name} (summary: {summary})"));
                }
                checked += 1;
            }
        }
        assert!(leaks.is_empty(), "secrets printed by {leaks:#?}");
        assert!(checked >= 25, "{checked} entries with secrets checked");
    }
}
