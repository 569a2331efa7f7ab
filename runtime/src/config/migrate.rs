//! Migrating from the Python server: its placeholders, its provider types, and the report that
//! `xiaozhi-server check-config` prints for a Python `config.yaml`.
//!
//! The Python server's files carry placeholders such as `api_key: 你的api_key` ("your api_key"); it
//! treats them as unset, and so does [`clear_placeholders`]. [`CATALOG`] says, for every provider
//! `type` of the Python server, whether it runs here, as what, or what to use instead. [`report`]
//! walks a merged configuration and says, for each selected entry and each of its keys and for
//! each other setting, whether it works here, works with a note, or is not supported (and what to
//! use instead).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_yaml_ng::{Mapping, Value};

use super::load::{self, SelectedEntry};

/// Whether a Python provider type runs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Runs here under the same name.
    Native,
    /// Runs here as another type (the same model or API): what runs.
    Alias(&'static str),
    /// Not supported (yet): what to use instead.
    Not(&'static str),
}

/// One provider type the Python server (or this server) knows.
#[derive(Debug, Clone, Copy)]
pub struct TypeInfo {
    /// `ASR`, `LLM`, `TTS`, `VAD`, `VLLM`, `Memory` or `Intent`.
    pub section: &'static str,
    /// The `type` value.
    pub name: &'static str,
    /// Whether and how it runs here.
    pub support: Support,
}

const fn native(section: &'static str, name: &'static str) -> TypeInfo {
    TypeInfo { section, name, support: Support::Native }
}

const fn alias(section: &'static str, name: &'static str, runs: &'static str) -> TypeInfo {
    TypeInfo { section, name, support: Support::Alias(runs) }
}

const fn not(section: &'static str, name: &'static str, instead: &'static str) -> TypeInfo {
    TypeInfo { section, name, support: Support::Not(instead) }
}

/// Every provider type of the Python server v0.9.6 (and this server's own), with its support here.
pub const CATALOG: &[TypeInfo] = &[
    native("VAD", "silero"),
    native("ASR", "openai"),
    native("ASR", "whisper_onnx"),
    native("ASR", "sensevoice_onnx"),
    alias("ASR", "fun_local", "SenseVoiceSmall through its ONNX export, in process (sensevoice_onnx)"),
    alias("ASR", "sherpa_onnx_local", "sherpa-onnx's SenseVoice export, in process (sensevoice_onnx)"),
    native("ASR", "fun_server"),
    native("ASR", "doubao_stream"),
    native("ASR", "aliyun_stream"),
    native("ASR", "aliyunbl_stream"),
    native("ASR", "qwen3_asr_flash"),
    native("ASR", "xunfei_stream"),
    native("ASR", "tencent"),
    not("ASR", "doubao", "use doubao_stream (the same Volcengine account, streaming)"),
    not("ASR", "aliyun", "use aliyun_stream (the same appkey and keys, streaming)"),
    not("ASR", "baidu", "use another cloud recognizer (tencent, xunfei_stream, aliyun_stream, doubao_stream)"),
    not("ASR", "vosk", "use sensevoice_onnx or whisper_onnx (offline, in process)"),
    not("ASR", "volcengine", "use doubao_stream"),
    native("LLM", "openai"),
    native("LLM", "ollama"),
    native("LLM", "xinference"),
    native("LLM", "dify"),
    native("LLM", "coze"),
    native("LLM", "fastgpt"),
    native("LLM", "AliBL"),
    native("LLM", "gemini"),
    not("LLM", "homeassistant", "use an openai-type LLM with the Home Assistant tools (hass_* extensions)"),
    not("LLM", "volcengine", "use openai (the Volcengine AI gateway is OpenAI-compatible: VolcesAiGatewayLLM)"),
    native("TTS", "piper"),
    native("TTS", "openai"),
    native("TTS", "custom"),
    native("TTS", "edge"),
    native("TTS", "doubao"),
    native("TTS", "huoshan_double_stream"),
    native("TTS", "aliyun_stream"),
    native("TTS", "alibl_stream"),
    native("TTS", "siliconflow"),
    native("TTS", "minimax_httpstream"),
    native("TTS", "gpt_sovits_v2"),
    native("TTS", "gpt_sovits_v3"),
    native("TTS", "fishspeech"),
    native("TTS", "xunfei_stream"),
    native("TTS", "tencent"),
    not("TTS", "aliyun", "use aliyun_stream (the same appkey and keys, streaming)"),
    not("TTS", "cozecn", "use another cloud voice (doubao, huoshan_double_stream, alibl_stream, edge)"),
    not("TTS", "paddle_speech", "use custom (a templated HTTP request to the PaddleSpeech server)"),
    not("TTS", "index_stream", "use custom (a templated HTTP request to the IndexTTS server)"),
    not("TTS", "cartesia_sdk", "use custom or openai"),
    not("TTS", "elevenlabs_sdk", "use custom or openai"),
    native("VLLM", "openai"),
    native("Memory", "nomem"),
    native("Memory", "mem_report_only"),
    native("Memory", "mem_local_short"),
    not("Memory", "mem0ai", "use mem_local_short (memory kept by this server)"),
    not("Memory", "powermem", "use mem_local_short (memory kept by this server)"),
    native("Intent", "nointent"),
    native("Intent", "function_call"),
    native("Intent", "intent_llm"),
];

/// What the catalog says about `name` in `section`.
pub fn lookup(section: &str, name: &str) -> Option<&'static TypeInfo> {
    CATALOG.iter().find(|t| t.section == section && t.name == name)
}

/// Whether a value is one of the Python server's placeholders ("你的api_key", "（选填）…").
fn is_placeholder(text: &str) -> bool {
    let text = text.trim_start();
    text.starts_with("你的") || text.starts_with("（选填）") || text.starts_with("(选填)")
}

/// Settings outside the provider entries whose Python placeholder is a URL with "你的" inside it.
const PLACEHOLDER_URLS: [&[&str]; 3] = [&["server", "websocket"], &["server", "vision_explain"], &["mcp_endpoint"]];

/// Clears the Python server's placeholders, as it does: string values of provider entries and of
/// `plugins` that start with "你的" (or "（选填）"), and the placeholder URLs of `server.websocket`,
/// `server.vision_explain` and `mcp_endpoint`, become empty.
pub fn clear_placeholders(document: &mut Mapping, _warnings: &mut Vec<String>) {
    for section in ["ASR", "LLM", "TTS", "VLLM", "VAD", "Memory", "Intent", "plugins"] {
        if let Some(Value::Mapping(entries)) = document.get_mut(section) {
            for (_, entry) in entries.iter_mut() {
                clear_in(entry);
            }
        }
    }
    for path in PLACEHOLDER_URLS {
        let mut value = Some(&mut *document);
        let (last, parents) = path.split_last().unwrap_or((&"", &[]));
        for key in parents {
            value = value.and_then(|m| m.get_mut(*key)).and_then(Value::as_mapping_mut);
        }
        if let Some(Value::String(text)) = value.and_then(|m| m.get_mut(*last))
            && text.contains("你的")
        {
            text.clear();
        }
    }
}

fn clear_in(value: &mut Value) {
    match value {
        Value::String(text) if is_placeholder(text) => text.clear(),
        Value::Mapping(mapping) => mapping.iter_mut().for_each(|(_, v)| clear_in(v)),
        Value::Sequence(items) => items.iter_mut().for_each(clear_in),
        _ => {}
    }
}

/// Notes on keys that work differently here, by provider type (`*` = every type).
const KEY_NOTES: &[(&str, &str, &str)] = &[
    ("*", "output_dir", "accepted; this server writes no audio files"),
    ("openai", "url", "read as base_url"),
    ("silero", "model_dir", "where silero_vad.onnx is looked for (else models.dir)"),
    ("fun_local", "model_dir", "must hold the ONNX export (model.int8.onnx or model.onnx, and tokens.txt)"),
    ("sherpa_onnx_local", "model_type", "sense_voice only"),
    ("intent_llm", "llm", "the selected LLM is used"),
    ("mem_local_short", "llm", "the selected LLM is used"),
    ("tencent", "appid", "accepted; API 3.0 signing needs only secret_id and secret_key"),
    ("edge", "format", "accepted; Edge always answers MP3, decoded as it arrives"),
    ("siliconflow", "fallback", "accepted; the ElevenLabs fallback is not supported"),
    ("gpt_sovits_v2", "private_voice", "data/gpt_sovits_data.yaml is not read: the entry's reference keys are used"),
    ("gpt_sovits_v3", "private_voice", "data/gpt_sovits_data.yaml is not read: the entry's reference keys are used"),
    ("gpt_sovits_v3", "format", "accepted; the answer's own format is decoded"),
    ("fishspeech", "channels", "accepted; Fish Speech answers mono"),
    ("minimax_httpstream", "pronunciation_dict", "sent only when set (the Python default is the docs' example)"),
    ("doubao", "language", "accepted; the voice decides the language"),
    ("huoshan_double_stream", "language", "accepted; the voice decides the language"),
    ("huoshan_double_stream", "cluster", "accepted; the v3 API authenticates with appid and access_token"),
    ("huoshan_double_stream", "authorization", "accepted; the v3 API authenticates with appid and access_token"),
    ("doubao_stream", "cluster", "accepted; used by the older v2 API only"),
    ("alibl_stream", "language", "accepted; the voice decides the language"),
    ("alibl_stream", "voice_zh", "accepted; used by the Python server only with FunASR's language tags"),
    ("alibl_stream", "voice_yue", "accepted; used by the Python server only with FunASR's language tags"),
    ("alibl_stream", "voice_en", "accepted; used by the Python server only with FunASR's language tags"),
    ("alibl_stream", "voice_ja", "accepted; used by the Python server only with FunASR's language tags"),
    ("alibl_stream", "voice_ko", "accepted; used by the Python server only with FunASR's language tags"),
    ("AliBL", "streaming_chunk_size", "accepted; the answer streams as Bailian sends it"),
    ("AliBL", "session_id", "not sent: the whole dialogue goes in input.messages"),
    ("aliyun_stream", "language", "accepted; the voice decides the language"),
    ("fun_server", "is_ssl", "wss without certificate checks, as the FunASR server's certificate is self-signed"),
];

/// Python settings outside the provider entries that work differently here or not at all: the
/// dotted path (a prefix matches everything under it), supported or not, and the note.
const SETTING_NOTES: &[(&str, bool, &str)] = &[
    ("server.auth.tokens", false, "device tokens are HMAC-signed (server.auth_key); see README \"Devices and tokens\""),
    (
        "server.mqtt_gateway",
        true,
        "OTA sends devices to this gateway while the built-in endpoint (mqtt.enabled) is off",
    ),
    ("server.mqtt_signature_key", true, "OTA issues MQTT passwords with it; the built-in endpoint (mqtt:) checks them"),
    ("server.udp_gateway", false, "the gateway's own setting; the built-in endpoint's UDP address is mqtt.udp_host"),
    ("log.log_format", false, "logs go to stderr in one format; log.log_level works"),
    ("log.log_format_file", false, "logs go to stderr; redirect them to a file"),
    ("log.log_dir", false, "logs go to stderr; redirect them to a file"),
    ("log.log_file", false, "logs go to stderr; redirect them to a file"),
    ("log.data_dir", false, "the data directory is the --data-dir option (default data)"),
    ("delete_audio", true, "this server never writes audio files"),
    ("enable_wakeup_words_response_cache", false, "greetings are cached per voice by the phrase cache anyway"),
    ("enable_stop_tts_notify", false, "no tone is played after speaking"),
    ("stop_tts_notify_voice", false, "no tone is played after speaking"),
    ("enable_websocket_ping", false, "the WebSocket layer answers ping frames; no JSON ping/pong"),
    ("tts_audio_send_delay", false, "audio is paced in real time (audio.prebuffer_frames)"),
    ("module_test", false, "use `xiaozhi-server test-provider <KIND>.<name>`"),
    (
        "mcp_endpoint",
        false,
        "not connected to: tool servers connect to the built-in endpoint instead (server.mcp_endpoint_path, `mcp-token issue`)",
    ),
    ("context_providers", false, "dynamic prompt context is not fetched"),
    ("voiceprint", false, "no speaker identification"),
    ("prompt_template", false, "the prompt is used as it is, with the local time appended"),
    ("manager-api.url", false, "the configuration is read from the local files only"),
    ("manager-api.secret", true, "used as the device-token key when server.auth_key is empty"),
];

/// The sections holding provider entries (checked entry by entry, not key by key here).
const PROVIDER_SECTIONS: [&str; 7] = ["ASR", "LLM", "TTS", "VAD", "Memory", "Intent", "VLLM"];

/// The mark of each outcome.
const WORKS: &str = "works";
const NOTE: &str = "works, note:";
const NOT: &str = "not supported here:";

/// The migration report of the merged configuration `document` (placeholders cleared); `extensions`
/// are the ids of the extensions found in `extensions.dirs` (for `plugins` and `functions`).
pub fn report(document: &Mapping, extensions: &BTreeSet<String>) -> String {
    let mut out = String::from(
        "Migration report: what of this configuration works here.\n\
         (\"works\"; \"works, note:\" with what differs; \"not supported here:\" with what to use instead)\n",
    );
    let selected = document.get("selected_module").and_then(Value::as_mapping);
    let name_of = |kind: &str| -> String {
        let default = super::SelectedModule::default();
        let fallback = match kind {
            "VAD" => default.vad,
            "ASR" => default.asr,
            "LLM" => default.llm,
            "TTS" => default.tts,
            "Memory" => default.memory,
            "Intent" => default.intent,
            _ => default.vllm,
        };
        selected.and_then(|s| s.get(kind)).and_then(Value::as_str).map_or(fallback, str::to_owned)
    };

    out.push_str("\nSelected providers:\n");
    for kind in PROVIDER_SECTIONS {
        let name = name_of(kind);
        if name.trim().is_empty() {
            if kind != "VLLM" {
                let _ = writeln!(out, "  {kind:<6} (none selected)");
            }
            continue;
        }
        let entry = document.get(kind).and_then(|d| d.get(name.as_str()));
        entry_report(&mut out, kind, &name, entry, extensions, true);
    }

    out.push_str("\nOther entries (not selected; only their type is checked):\n");
    for kind in PROVIDER_SECTIONS {
        let chosen = name_of(kind);
        let Some(entries) = document.get(kind).and_then(Value::as_mapping) else { continue };
        for (name, entry) in entries {
            let Some(name) = name.as_str() else { continue };
            if name == chosen {
                continue;
            }
            let kind_name = type_of(kind, name, entry);
            let runs = matches!(lookup(kind, &kind_name).map(|t| t.support), Some(Support::Native | Support::Alias(_)));
            let problems = if runs { entry_keys(kind, name, &kind_name, entry).1 } else { Vec::new() };
            let verdict = match problems.first() {
                Some(problem) => format!("{NOT} {problem}"),
                None => type_verdict(kind, &kind_name),
            };
            let _ = writeln!(out, "  {kind}.{name} ({kind_name}): {verdict}");
        }
    }

    out.push_str("\nOther settings:\n");
    let mut leaves = Vec::new();
    for (key, value) in document {
        let Some(key) = key.as_str() else { continue };
        if PROVIDER_SECTIONS.contains(&key) || key == "selected_module" || key == "plugins" {
            continue;
        }
        collect_leaves(key, value, &mut leaves);
    }
    let unknown = unknown_settings(document);
    for path in leaves {
        let verdict = match SETTING_NOTES.iter().find(|(p, _, _)| path == *p || path.starts_with(&format!("{p}."))) {
            Some((_, true, note)) => format!("{NOTE} {note}"),
            Some((_, false, note)) => format!("{NOT} {note}"),
            None if unknown.iter().any(|u| path == *u || path.starts_with(&format!("{u}."))) => {
                format!("{NOT} unknown here (ignored)")
            }
            None => continue,
        };
        let _ = writeln!(out, "  {path}: {verdict}");
    }
    plugins_report(&mut out, document.get("plugins"), extensions);
    out
}

/// The `type` of an entry (the entry's name when it has none, as the Python server does for
/// Memory and Intent).
fn type_of(kind: &str, name: &str, entry: &Value) -> String {
    match entry.get("type").and_then(Value::as_str) {
        Some(t) => t.trim().to_owned(),
        None if matches!(kind, "Memory" | "Intent") => name.to_owned(),
        None => String::new(),
    }
}

/// What the catalog says about a type, in words.
fn type_verdict(kind: &str, type_name: &str) -> String {
    match lookup(kind, type_name).map(|t| t.support) {
        Some(Support::Native) => WORKS.to_owned(),
        Some(Support::Alias(runs)) => format!("{NOTE} runs {runs}"),
        Some(Support::Not(instead)) => format!("{NOT} {instead}"),
        None if type_name.is_empty() => format!("{NOT} the entry has no type"),
        None => format!("{NOT} unknown type"),
    }
}

/// The report of one selected entry: its type, then each of its keys.
fn entry_report(
    out: &mut String,
    kind: &str,
    name: &str,
    entry: Option<&Value>,
    extensions: &BTreeSet<String>,
    detailed: bool,
) {
    let Some(entry) = entry else {
        if matches!(kind, "Memory" | "Intent") {
            let _ = writeln!(out, "  {kind:<6} {name} ({name}): {}", type_verdict(kind, name));
        } else {
            let _ = writeln!(out, "  {kind:<6} {name}: {NOT} there is no {kind}.{name} entry");
        }
        return;
    };
    let type_name = type_of(kind, name, entry);
    let _ = writeln!(out, "  {kind:<6} {name} ({type_name}): {}", type_verdict(kind, &type_name));
    if !detailed || !matches!(lookup(kind, &type_name).map(|t| t.support), Some(Support::Native | Support::Alias(_))) {
        return;
    }
    let Some(settings) = entry.as_mapping() else { return };
    let (ignored, problems) = entry_keys(kind, name, &type_name, entry);
    for (key, value) in settings {
        let Some(key) = key.as_str() else { continue };
        if key == "type" {
            continue;
        }
        let path = format!("{kind}.{name}.{key}");
        let verdict = if let Some(problem) = problems.iter().find(|p| p.starts_with(&path)) {
            format!("{NOT} {problem}")
        } else if ignored.contains(&path) {
            format!("{NOT} unknown here (ignored)")
        } else if let Some((_, _, note)) =
            KEY_NOTES.iter().find(|(t, k, _)| (*t == "*" || *t == type_name) && *k == key)
        {
            format!("{NOTE} {note}")
        } else if key == "functions" && kind == "Intent" {
            functions_verdict(value, extensions)
        } else {
            WORKS.to_owned()
        };
        let _ = writeln!(out, "           {key}: {verdict}");
    }
}

/// The unknown keys and the problems of one entry, found by resolving it as if selected (a key
/// with a wrong value is left out to find the unknown keys among the others).
fn entry_keys(kind: &str, name: &str, type_name: &str, entry: &Value) -> (BTreeSet<String>, Vec<String>) {
    let resolve = |entry: &Value, warnings: &mut Vec<String>| {
        let mut dictionary = std::collections::BTreeMap::new();
        dictionary.insert(name.to_owned(), entry.clone());
        let supported = [type_name];
        SelectedEntry::find_in(kind, name, &dictionary, &supported).and_then(|entry| match kind {
            "VAD" => load::resolve_vad(entry, warnings).map(drop),
            "ASR" => load::resolve_asr(entry, warnings).map(drop),
            "LLM" => load::openai_compatible_or(entry, warnings).map(drop),
            "TTS" => load::resolve_tts(entry, warnings).map(drop),
            _ => Ok(()),
        })
    };
    let mut warnings = Vec::new();
    let problems: Vec<String> = match resolve(entry, &mut warnings) {
        Ok(()) => Vec::new(),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    };
    if !problems.is_empty() {
        let prefix = format!("{kind}.{name}.");
        let mut rest = entry.clone();
        if let Some(mapping) = rest.as_mapping_mut() {
            mapping.retain(|key, _| {
                let key = key.as_str().unwrap_or_default();
                key == "type" || !problems.iter().any(|p| p.starts_with(&format!("{prefix}{key}")))
            });
        }
        warnings.clear();
        let _ = resolve(&rest, &mut warnings);
    }
    let ignored = warnings
        .iter()
        .filter_map(|w| w.strip_prefix("unknown key ").and_then(|w| w.strip_suffix(" (ignored)")))
        .map(str::to_owned)
        .collect();
    (ignored, problems)
}

/// What `Intent.<x>.functions` becomes: the tools offered.
fn functions_verdict(value: &Value, extensions: &BTreeSet<String>) -> String {
    let names: Vec<&str> =
        value.as_sequence().map(|s| s.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let missing: Vec<&str> = names.iter().copied().filter(|n| !extensions.contains(*n)).collect();
    let mut verdict = format!(
        "{WORKS}: the tools offered are those of {} (and the device's own MCP tools, and those of the extensions whose extension.toml says always_offered)",
        if names.is_empty() { "no extension".to_owned() } else { names.join(", ") }
    );
    if !missing.is_empty() {
        let _ = write!(
            verdict,
            "; not installed here: {} (they are matched by extension id or tool name; see README \"Extensions\")",
            missing.join(", ")
        );
    }
    verdict
}

/// What `plugins.<name>` becomes.
fn plugins_report(out: &mut String, plugins: Option<&Value>, extensions: &BTreeSet<String>) {
    let Some(plugins) = plugins.and_then(Value::as_mapping) else { return };
    for (name, settings) in plugins {
        let Some(name) = name.as_str() else { continue };
        let keys: Vec<&str> =
            settings.as_mapping().map(|m| m.keys().filter_map(Value::as_str).collect()).unwrap_or_default();
        let verdict = if extensions.contains(name) {
            let hosts = super::plugin_hosts(settings);
            let mut text = format!("{WORKS}: the config of the {name} extension ({})", keys.join(", "));
            let dirs: Vec<String> = settings
                .as_mapping()
                .into_iter()
                .flatten()
                .filter_map(|(key, value)| Some((key.as_str()?.strip_suffix("_dir")?, value.as_str()?)))
                .filter(|(name, _)| !name.is_empty())
                .map(|(name, dir)| format!("{name} = {dir}"))
                .collect();
            if !dirs.is_empty() {
                let _ = write!(text, "; grants it the media directory {}", dirs.join(", "));
            }
            if !hosts.is_empty() {
                let _ = write!(text, "; grants it the hosts {}", hosts.into_iter().collect::<Vec<_>>().join(", "));
            }
            text
        } else {
            format!("{NOT} no extension {name} is installed (see README \"Extensions\")")
        };
        let _ = writeln!(out, "  plugins.{name}: {verdict}");
    }
}

/// The dotted paths of every scalar or list under `value` (at `path`).
fn collect_leaves(path: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Mapping(mapping) if !mapping.is_empty() => {
            for (key, inner) in mapping {
                if let Some(key) = key.as_str() {
                    collect_leaves(&format!("{path}.{key}"), inner, out);
                }
            }
        }
        _ => out.push(path.to_owned()),
    }
}

/// The settings (outside provider entries) this server does not know.
fn unknown_settings(document: &Mapping) -> Vec<String> {
    let mut rest = document.clone();
    for key in PROVIDER_SECTIONS.iter().chain(["plugins", "selected_module"].iter()) {
        rest.remove(*key);
    }
    let mut warnings = Vec::new();
    let _ = load::deserialize_config(Value::Mapping(rest), &mut warnings);
    warnings
        .iter()
        .filter_map(|w| w.strip_prefix("unknown key ").and_then(|w| w.strip_suffix(" (ignored)")))
        .map(str::to_owned)
        .collect()
}

/// The ids of the extensions in `dirs` (sub-directories holding an `extension.toml`).
pub fn installed_extensions(dirs: &[PathBuf]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let manifest = entry.path().join("extension.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
            if let Ok(parsed) = crate::extensions::manifest::Manifest::parse(&text) {
                ids.insert(parsed.id);
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTHON: &str = include_str!("../../../tests/assets/python-v0.9.6-config.yaml");

    fn python_report(overrides: &str, extensions: &[&str]) -> String {
        let mut document: Mapping = serde_yaml_ng::from_str(PYTHON).expect("yaml");
        let overrides: Mapping = serde_yaml_ng::from_str(overrides).expect("yaml");
        load::deep_merge(&mut document, overrides);
        clear_placeholders(&mut document, &mut Vec::new());
        report(&document, &extensions.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn the_report_of_the_python_file_covers_entries_keys_and_settings() {
        let report = python_report("{}", &["get_weather", "change_role", "play_music"]);
        for line in [
            "  ASR    FunASR (fun_local): works, note: runs SenseVoiceSmall through its ONNX export",
            "           output_dir: works, note: accepted; this server writes no audio files",
            "  LLM    ChatGLMLLM (openai): works",
            "           url: works, note: read as base_url",
            "  TTS    EdgeTTS (edge): works",
            "  ASR.VoskASR (vosk): not supported here: use sensevoice_onnx or whisper_onnx",
            "  ASR.SherpaParaformerASR (sherpa_onnx_local): not supported here: ASR.SherpaParaformerASR.model_type",
            "  TTS.CozeCnTTS (cozecn): not supported here: use another cloud voice",
            "  LLM.HomeAssistant (homeassistant): not supported here:",
            "  Memory.mem0ai (mem0ai): not supported here: use mem_local_short",
            "  log.log_format: not supported here: logs go to stderr",
            "  delete_audio: works, note: this server never writes audio files",
            "  module_test.test_sentences: not supported here: use `xiaozhi-server test-provider",
            "  plugins.get_weather: works: the config of the get_weather extension (api_host, api_key, default_location); \
             grants it the hosts mj7p3y7naa.re.qweatherapi.com",
            "  plugins.play_music: works: the config of the play_music extension (music_dir, music_ext, refresh_time); \
             grants it the media directory music = ./music",
        ] {
            assert!(report.contains(line), "missing {line:?} in\n{report}");
        }
        // The functions of the selected intent: what is installed and what is not.
        assert!(
            report.contains(
                "functions: works: the tools offered are those of change_role, web_search, get_weather, \
                 get_news_from_newsnow, play_music"
            ),
            "{report}"
        );
        assert!(report.contains("not installed here: web_search, get_news_from_newsnow ("), "{report}");
    }

    #[test]
    fn the_report_names_unknown_keys_and_wrong_values_of_the_selected_entries() {
        let report = python_report(
            "selected_module: {LLM: DeepSeekLLM}\nLLM: {DeepSeekLLM: {temperature: hot, bogus_key: 1}}",
            &[],
        );
        assert!(report.contains("           bogus_key: not supported here: unknown here (ignored)"), "{report}");
        assert!(
            report.contains("           temperature: not supported here: LLM.DeepSeekLLM.temperature:"),
            "{report}"
        );
        assert!(report.contains("           model_name: works"), "{report}");
    }

    #[test]
    fn placeholders_are_cleared_only_where_the_python_server_puts_them() {
        let mut document: Mapping = serde_yaml_ng::from_str(
            "prompt: 你的朋友\nserver: {websocket: 'ws://你的ip:8000/xiaozhi/v1/'}\nmcp_endpoint: 你的接入点\n\
             ASR: {A: {appid: 你的appid, nested: {x: （选填）你的表}, list: [你的, ok], fine: value}}\n\
             plugins: {get_weather: {api_key: 你的key}}",
        )
        .expect("yaml");
        clear_placeholders(&mut document, &mut Vec::new());
        let get = |path: &[&str]| {
            let mut value = Value::Mapping(document.clone());
            for key in path {
                value = value.get(*key).cloned().unwrap_or(Value::Null);
            }
            value
        };
        assert_eq!(get(&["prompt"]), Value::from("你的朋友"));
        assert_eq!(get(&["server", "websocket"]), Value::from(""));
        assert_eq!(get(&["mcp_endpoint"]), Value::from(""));
        assert_eq!(get(&["ASR", "A", "appid"]), Value::from(""));
        assert_eq!(get(&["ASR", "A", "nested", "x"]), Value::from(""));
        assert_eq!(get(&["ASR", "A", "fine"]), Value::from("value"));
        assert_eq!(get(&["plugins", "get_weather", "api_key"]), Value::from(""));
    }

    #[test]
    fn every_python_type_is_in_the_catalog() {
        let document: Mapping = serde_yaml_ng::from_str(PYTHON).expect("yaml");
        for section in ["ASR", "LLM", "TTS", "VAD", "VLLM", "Memory", "Intent"] {
            let entries = document.get(section).and_then(Value::as_mapping).cloned().unwrap_or_default();
            for (name, entry) in &entries {
                let name = name.as_str().unwrap_or_default();
                let kind = type_of(section, name, entry);
                assert!(lookup(section, &kind).is_some(), "{section}.{name}: type {kind} is not in the catalog");
            }
        }
        // And every type the loader accepts is marked as running.
        for info in CATALOG {
            if let Support::Native = info.support {
                assert!(!info.name.is_empty());
            }
        }
    }
}
