//! `extension.toml`: what an extension is, which WIT version it targets and what it asks for.
//!
//! ```toml
//! id = "get_weather"
//! version = "0.1.0"
//! wit = "xiaozhi:extension@0.2.0"
//! kinds = ["tool"]
//! # Offer its tools whatever `Intent.<x>.functions` lists (default false).
//! always_offered = false
//!
//! [capabilities]
//! memory_mb = 16
//! timeout_ms = 3000
//! http_hosts = ["api.example.com"]
//! kv = true
//! llm = false
//! config = ["api_key"]
//! # Media directories read (0.2): each is granted by the operator
//! # (`extensions.grants.<id>.media_dirs.<name>`) and seen read-only at `/<name>`.
//! media_dirs = ["music"]
//! ```

use std::collections::BTreeSet;

use serde::Deserialize;

/// The WIT package versions this server implements, oldest first.
pub const SUPPORTED_WIT: [&str; 2] = [WIT_0_1, WIT_0_2];
/// The first interface: tools return one action and text (loaded through an adapter).
pub const WIT_0_1: &str = "xiaozhi:extension@0.1.0";
/// Tools return effects; `context` and `media` exports.
pub const WIT_0_2: &str = "xiaozhi:extension@0.2.0";

/// Which WIT package version a component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WitVersion {
    /// `xiaozhi:extension@0.1.0`.
    V0_1,
    /// `xiaozhi:extension@0.2.0`.
    V0_2,
}

impl WitVersion {
    /// The package name with its version.
    pub fn package(self) -> &'static str {
        match self {
            Self::V0_1 => WIT_0_1,
            Self::V0_2 => WIT_0_2,
        }
    }

    /// The version alone (`0.2.0`), as in export names.
    pub fn number(self) -> &'static str {
        self.package().rsplit('@').next().unwrap_or_default()
    }
}

/// The manifest file name inside an extension directory.
pub const MANIFEST_FILE: &str = "extension.toml";

/// What an extension exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Tools (LLM function calls): exports `xiaozhi:extension/tool`.
    Tool,
    /// Intent recognition: exports `xiaozhi:extension/intent`.
    Intent,
    /// Long-term memory: exports `xiaozhi:extension/memory`.
    Memory,
    /// Lines for the system prompt at session start: exports `xiaozhi:extension/context` (0.2).
    Context,
    /// Audio streamed by the extension itself: exports `xiaozhi:extension/media` (0.2).
    Media,
}

impl Kind {
    /// The exported interface's name.
    pub fn interface(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Intent => "intent",
            Self::Memory => "memory",
            Self::Context => "context",
            Self::Media => "media",
        }
    }
}

/// A parsed and validated `extension.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The extension id (`[a-z0-9_-]+`); the wasm file is `<id>.wasm`.
    pub id: String,
    /// The extension's own version.
    pub version: String,
    /// The WIT package the component was built against (one of [`SUPPORTED_WIT`]).
    pub wit: WitVersion,
    /// Whether its tools are offered whatever `Intent.<x>.functions` lists (as the Python server
    /// always loads `handle_exit_intent` and `get_lunar`).
    pub always_offered: bool,
    /// What the component exports (never empty).
    pub kinds: BTreeSet<Kind>,
    /// What the extension asks for.
    pub capabilities: Capabilities,
}

/// `[capabilities]`: the limits and host interfaces an extension asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// Most linear memory, MiB; empty = the grant's (or the host's) cap.
    pub memory_mb: Option<u32>,
    /// Longest single call, ms; empty = the grant's (or the host's) cap.
    pub timeout_ms: Option<u32>,
    /// Hosts reached over HTTP.
    pub http_hosts: Vec<String>,
    /// Whether the key/value store is used.
    pub kv: bool,
    /// Whether the server's LLM is used.
    pub llm: bool,
    /// Configuration keys read.
    pub config: Vec<String>,
    /// Configuration keys (among `config`) whose value is a host name or URL the extension
    /// reaches (a QWeather account's own API host): that host is reachable when the operator set
    /// the key, without being listed in `http_hosts`.
    pub config_hosts: Vec<String>,
    /// Media directories read (0.2), by name: each must be granted
    /// (`extensions.grants.<id>.media_dirs.<name>`) and is seen read-only at `/<name>`.
    pub media_dirs: Vec<String>,
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    id: String,
    version: String,
    wit: String,
    kinds: Vec<Kind>,
    #[serde(default)]
    always_offered: bool,
    #[serde(default)]
    capabilities: Capabilities,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not valid TOML, a missing or unknown key, or a wrong type.
    #[error("invalid extension.toml: {0}")]
    Syntax(String),
    /// The id has characters outside `[a-z0-9_-]` or is empty.
    #[error("invalid extension id {0:?}: use lower-case letters, digits, '_' and '-'")]
    Id(String),
    /// The component targets a WIT package version this server does not implement.
    #[error("extension {id} targets WIT {wit}; this server supports xiaozhi:extension@0.1.0 and @0.2.0")]
    WitVersion {
        /// The extension id.
        id: String,
        /// The WIT package the manifest names.
        wit: String,
    },
    /// `kinds` is empty.
    #[error(
        "extension {0}: kinds is empty; use one or more of \"tool\", \"intent\", \"memory\", \"context\", \"media\""
    )]
    NoKinds(String),
    /// A kind the manifest's WIT version does not have.
    #[error("extension {id}: kind {kind:?} needs wit = \"xiaozhi:extension@0.2.0\"")]
    KindNeedsNewerWit {
        /// The extension id.
        id: String,
        /// The kind.
        kind: Kind,
    },
    /// A limit of zero.
    #[error("extension {id}: capabilities.{field} must be greater than 0")]
    ZeroLimit {
        /// The extension id.
        id: String,
        /// `memory_mb` or `timeout_ms`.
        field: &'static str,
    },
    /// An HTTP host that is not a plain host name.
    #[error("extension {id}: capabilities.http_hosts has {host:?}, which is not a host name")]
    Host {
        /// The extension id.
        id: String,
        /// The offending entry.
        host: String,
    },
}

impl Manifest {
    /// Parses and validates the text of an `extension.toml`.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|err| ManifestError::Syntax(err.to_string()))?;
        if raw.id.is_empty()
            || !raw.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(ManifestError::Id(raw.id));
        }
        let wit = match raw.wit.as_str() {
            WIT_0_1 => WitVersion::V0_1,
            WIT_0_2 => WitVersion::V0_2,
            _ => return Err(ManifestError::WitVersion { id: raw.id, wit: raw.wit }),
        };
        if raw.kinds.is_empty() {
            return Err(ManifestError::NoKinds(raw.id));
        }
        if wit == WitVersion::V0_1
            && let Some(kind) = raw.kinds.iter().find(|k| matches!(k, Kind::Context | Kind::Media))
        {
            return Err(ManifestError::KindNeedsNewerWit { id: raw.id.clone(), kind: *kind });
        }
        if wit == WitVersion::V0_1 && !raw.capabilities.media_dirs.is_empty() {
            return Err(ManifestError::Syntax(format!(
                "extension {}: capabilities.media_dirs needs wit = \"{WIT_0_2}\"",
                raw.id
            )));
        }
        if let Some(name) = raw.capabilities.media_dirs.iter().find(|name| !is_media_name(name)) {
            return Err(ManifestError::Syntax(format!(
                "extension {}: capabilities.media_dirs has {name:?}; use lower-case letters, digits, '_' and '-'",
                raw.id
            )));
        }
        let caps = &raw.capabilities;
        for (field, value) in [("memory_mb", caps.memory_mb), ("timeout_ms", caps.timeout_ms)] {
            if value == Some(0) {
                return Err(ManifestError::ZeroLimit { id: raw.id, field });
            }
        }
        if let Some(host) = caps.http_hosts.iter().find(|host| !is_host_name(host)) {
            return Err(ManifestError::Host { id: raw.id.clone(), host: host.clone() });
        }
        if let Some(key) = caps.config_hosts.iter().find(|key| !caps.config.contains(key)) {
            return Err(ManifestError::Syntax(format!(
                "extension {}: capabilities.config_hosts names {key:?}, which is not in capabilities.config",
                raw.id
            )));
        }
        Ok(Self {
            id: raw.id,
            version: raw.version,
            wit,
            always_offered: raw.always_offered,
            kinds: raw.kinds.into_iter().collect(),
            capabilities: raw.capabilities,
        })
    }

    /// Whether the extension exports `kind`.
    pub fn has(&self, kind: Kind) -> bool {
        self.kinds.contains(&kind)
    }
}

/// A media directory name: `[a-z0-9_-]{1,32}` (it becomes the directory `/<name>` the guest sees).
fn is_media_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A DNS name or IP literal without scheme, port, path or user info.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'[' || b == b']' || b == b':')
        && !host.contains("://")
        && (host.starts_with('[') || !host.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
id = "get_weather"
version = "0.2.0"
wit = "xiaozhi:extension@0.1.0"
kinds = ["tool", "memory"]

[capabilities]
memory_mb = 16
timeout_ms = 3000
http_hosts = ["api.example.com"]
kv = true
config = ["api_key"]
"#;

    #[test]
    fn parses_a_full_manifest() {
        let manifest = Manifest::parse(FULL).expect("valid");
        assert_eq!(manifest.id, "get_weather");
        assert!(manifest.has(Kind::Tool) && manifest.has(Kind::Memory) && !manifest.has(Kind::Intent));
        assert_eq!(manifest.capabilities.http_hosts, vec!["api.example.com".to_owned()]);
        assert!(manifest.capabilities.kv && !manifest.capabilities.llm);
        assert_eq!(manifest.capabilities.config, vec!["api_key".to_owned()]);
        assert_eq!(manifest.capabilities.memory_mb, Some(16));
    }

    #[test]
    fn the_get_time_manifest_parses() {
        let text = include_str!("../../../extensions/get_time/extension.toml");
        let manifest = Manifest::parse(text).expect("valid");
        assert_eq!(manifest.id, "get_time");
        assert_eq!(manifest.capabilities.timeout_ms, Some(1000));
    }

    #[test]
    fn another_wit_version_is_refused_clearly() {
        let text = FULL.replace("xiaozhi:extension@0.1.0", "xiaozhi:extension@0.3.0");
        let err = Manifest::parse(&text).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "extension get_weather targets WIT xiaozhi:extension@0.3.0; this server supports xiaozhi:extension@0.1.0 and @0.2.0"
        );
        let newer = FULL.replace("xiaozhi:extension@0.1.0", "xiaozhi:extension@0.2.0");
        assert_eq!(Manifest::parse(&newer).expect("0.2 is supported").wit, WitVersion::V0_2);
        assert_eq!(Manifest::parse(FULL).expect("0.1 is supported").wit, WitVersion::V0_1);
    }

    #[test]
    fn context_media_and_media_dirs_need_0_2() {
        let context = FULL.replace("[\"tool\", \"memory\"]", "[\"context\"]");
        assert!(matches!(Manifest::parse(&context), Err(ManifestError::KindNeedsNewerWit { kind: Kind::Context, .. })));
        let ok = context.replace("@0.1.0", "@0.2.0").replace("kv = true", "kv = true\nmedia_dirs = [\"music\"]");
        let manifest = Manifest::parse(&ok).expect("valid");
        assert!(manifest.has(Kind::Context) && !manifest.always_offered);
        assert_eq!(manifest.capabilities.media_dirs, vec!["music".to_owned()]);
        let bad = ok.replace("[\"music\"]", "[\"../etc\"]");
        assert!(Manifest::parse(&bad).expect_err("refused").to_string().contains("media_dirs has \"../etc\""));
        let always = ok.replace("kinds =", "always_offered = true\nkinds =");
        assert!(Manifest::parse(&always).expect("valid").always_offered);
    }

    #[test]
    fn bad_ids_kinds_hosts_and_keys_are_refused() {
        let bad_id = FULL.replace("\"get_weather\"", "\"Get Weather\"");
        assert!(matches!(Manifest::parse(&bad_id), Err(ManifestError::Id(_))));
        let no_kinds = FULL.replace("[\"tool\", \"memory\"]", "[]");
        assert!(matches!(Manifest::parse(&no_kinds), Err(ManifestError::NoKinds(_))));
        let bad_kind = FULL.replace("\"memory\"]", "\"painting\"]");
        assert!(matches!(Manifest::parse(&bad_kind), Err(ManifestError::Syntax(_))));
        let url = FULL.replace("\"api.example.com\"", "\"https://api.example.com/x\"");
        assert!(matches!(Manifest::parse(&url), Err(ManifestError::Host { .. })));
        let unknown = FULL.replace("kv = true", "kv = true\nsockets = true");
        assert!(matches!(Manifest::parse(&unknown), Err(ManifestError::Syntax(_))));
        let zero = FULL.replace("memory_mb = 16", "memory_mb = 0");
        assert!(matches!(Manifest::parse(&zero), Err(ManifestError::ZeroLimit { field: "memory_mb", .. })));
        assert!(matches!(Manifest::parse("not toml ["), Err(ManifestError::Syntax(_))));
    }
    #[test]
    fn config_hosts_must_be_declared_settings() {
        let text = |caps: &str| {
            format!(
                "id = \"w\"\nversion = \"1\"\nwit = \"xiaozhi:extension@0.1.0\"\nkinds = [\"tool\"]\n[capabilities]\n{caps}"
            )
        };
        let ok = Manifest::parse(&text("config = [\"api_host\"]\nconfig_hosts = [\"api_host\"]")).expect("valid");
        assert_eq!(ok.capabilities.config_hosts, vec!["api_host".to_owned()]);
        let err = Manifest::parse(&text("config_hosts = [\"api_host\"]")).expect_err("undeclared");
        assert!(
            err.to_string().contains("config_hosts names \"api_host\", which is not in capabilities.config"),
            "{err}"
        );
    }
}
