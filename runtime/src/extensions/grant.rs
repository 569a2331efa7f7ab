//! Declare and grant: an extension gets a capability only when its manifest asks for it **and**
//! the operator grants it in `extensions.grants.<id>`. Everything else is denied.
//!
//! [`check`] refuses an extension whose manifest asks for anything its grant does not give, so
//! an operator learns at load time, not at the first call, that something is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Grant;

use super::manifest::Manifest;

/// The most linear memory any extension may have, MiB.
pub const HOST_MAX_MEMORY_MB: u32 = 256;
/// The longest any single call may run, ms.
pub const HOST_MAX_TIMEOUT_MS: u32 = 60_000;
/// Memory given when neither the manifest nor the grant names a size, MiB.
pub const DEFAULT_MEMORY_MB: u32 = 64;
/// Timeout used when neither the manifest nor the grant names one, ms.
pub const DEFAULT_TIMEOUT_MS: u32 = 5_000;

/// What one extension may do, after the manifest has been checked against its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveGrant {
    /// Cap on the extension's linear memory (all memories of one instance together), bytes.
    pub memory_bytes: usize,
    /// Longest single call.
    pub timeout: Duration,
    /// Hosts it may reach over HTTP (lower case).
    pub http_hosts: BTreeSet<String>,
    /// Whether it may use its key/value store.
    pub kv: bool,
    /// Whether it may use the server's LLM.
    pub llm: bool,
    /// The settings it can read: the keys its manifest declares, with the operator's values.
    pub config: BTreeMap<String, String>,
    /// The media directories it reads (read-only, at `/<name>`) and plays files from.
    pub media_dirs: BTreeMap<String, PathBuf>,
}

impl EffectiveGrant {
    /// Whether `host` (any case) is one of the granted HTTP hosts.
    pub fn allows_host(&self, host: &str) -> bool {
        self.http_hosts.contains(&host.to_ascii_lowercase())
    }
}

/// A capability asked for by a manifest and refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("extension {id} {what}")]
pub struct GrantError {
    /// The extension id.
    pub id: String,
    /// What was refused and by whom, e.g. `requests http host api.example.com, not granted in
    /// extensions.grants.get_weather.http_hosts`.
    pub what: String,
}

/// Checks `manifest` against `grant` (`None` = no entry in `extensions.grants`: nothing granted
/// beyond the host's default limits).
pub fn check(manifest: &Manifest, grant: Option<&Grant>) -> Result<EffectiveGrant, GrantError> {
    let id = &manifest.id;
    let empty = Grant::default();
    let grant = grant.unwrap_or(&empty);
    let path = format!("extensions.grants.{id}");
    let refuse = |what: String| GrantError { id: id.clone(), what };
    let caps = &manifest.capabilities;

    let granted_hosts: BTreeSet<String> =
        grant.http_hosts.iter().map(|host| host.trim().to_ascii_lowercase()).collect();
    let mut http_hosts = BTreeSet::new();
    for host in &caps.http_hosts {
        let host = host.to_ascii_lowercase();
        // Configured as a Python plugin (`plugins.<id>`): the operator enabled the extension as
        // it is, with the hosts its manifest names.
        if !granted_hosts.contains(&host) && !grant.from_plugins {
            return Err(refuse(format!("requests http host {host}, not granted in {path}.http_hosts")));
        }
        http_hosts.insert(host);
    }
    // A host the operator wrote into a setting the manifest declares as a host is reachable.
    for key in &caps.config_hosts {
        if let Some(host) = grant.config.get(key).and_then(|value| crate::config::host_of(value, true)) {
            http_hosts.insert(host);
        }
    }
    if caps.kv && !grant.kv {
        return Err(refuse(format!("requests kv, not granted in {path}.kv")));
    }
    if caps.llm && !grant.llm {
        return Err(refuse(format!("requests llm, not granted in {path}.llm")));
    }
    let mut media_dirs = BTreeMap::new();
    for name in &caps.media_dirs {
        match grant.media_dirs.get(name) {
            Some(dir) => media_dirs.insert(name.clone(), dir.clone()),
            None => {
                return Err(refuse(format!(
                    "requests media directory {name}, not granted in {path}.media_dirs.{name}"
                )));
            }
        };
    }
    // Settings are not capabilities: a declared key the operator did not set reads as none (the
    // extension decides whether it can work without it); undeclared keys are never visible.
    let config: BTreeMap<String, String> =
        caps.config.iter().filter_map(|key| grant.config.get(key).map(|value| (key.clone(), value.clone()))).collect();

    let memory_mb =
        limit(caps.memory_mb, grant.memory_mb, HOST_MAX_MEMORY_MB, DEFAULT_MEMORY_MB, "memory_mb", "MiB", &path)
            .map_err(refuse)?;
    let timeout_ms =
        limit(caps.timeout_ms, grant.timeout_ms, HOST_MAX_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, "timeout_ms", "ms", &path)
            .map_err(refuse)?;

    Ok(EffectiveGrant {
        memory_bytes: usize::try_from(memory_mb).unwrap_or(usize::MAX).saturating_mul(1 << 20),
        timeout: Duration::from_millis(u64::from(timeout_ms)),
        http_hosts,
        kv: caps.kv,
        llm: caps.llm,
        config,
        media_dirs,
    })
}

/// The effective value of a limit: the manifest's request, which must fit under the grant's cap
/// and the host maximum; without a request, the default under the same caps.
fn limit(
    requested: Option<u32>,
    cap: Option<u32>,
    host_max: u32,
    default: u32,
    field: &str,
    unit: &str,
    path: &str,
) -> Result<u32, String> {
    match requested {
        Some(value) if value > host_max => {
            Err(format!("requests {field} = {value} {unit}, more than this server's maximum of {host_max} {unit}"))
        }
        Some(value) => match cap {
            Some(cap) if value > cap => {
                Err(format!("requests {field} = {value} {unit}, more than {path}.{field} = {cap}"))
            }
            _ => Ok(value),
        },
        None => Ok(default.min(cap.unwrap_or(host_max)).min(host_max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(capabilities: &str) -> Manifest {
        let text = format!(
            "id = \"get_weather\"\nversion = \"1\"\nwit = \"xiaozhi:extension@0.1.0\"\nkinds = [\"tool\"]\n[capabilities]\n{capabilities}"
        );
        Manifest::parse(&text).expect("valid manifest")
    }

    #[test]
    fn nothing_requested_needs_no_grant() {
        let effective = check(&manifest(""), None).expect("allowed");
        assert_eq!(effective.memory_bytes, (DEFAULT_MEMORY_MB as usize) << 20);
        assert_eq!(effective.timeout, Duration::from_millis(u64::from(DEFAULT_TIMEOUT_MS)));
        assert!(effective.http_hosts.is_empty() && !effective.kv && !effective.llm && effective.config.is_empty());
    }

    #[test]
    fn everything_requested_must_be_granted() {
        let wants = manifest("http_hosts = [\"api.example.com\"]\nkv = true\nllm = true\nconfig = [\"api_key\"]");
        let err = check(&wants, None).expect_err("denied by default");
        assert_eq!(
            err.to_string(),
            "extension get_weather requests http host api.example.com, not granted in extensions.grants.get_weather.http_hosts"
        );

        let mut grant = Grant { http_hosts: vec!["API.example.com".into()], ..Grant::default() };
        assert!(
            check(&wants, Some(&grant))
                .expect_err("kv")
                .to_string()
                .contains("requests kv, not granted in extensions.grants.get_weather.kv")
        );
        grant.kv = true;
        assert!(check(&wants, Some(&grant)).expect_err("llm").to_string().contains("requests llm"));
        grant.llm = true;
        let unset = check(&wants, Some(&grant)).expect("a declared setting may be left unset");
        assert!(unset.config.is_empty());
        grant.config.insert("api_key".into(), "secret".into());
        grant.config.insert("other".into(), "not requested".into());

        let effective = check(&wants, Some(&grant)).expect("all granted");
        assert!(effective.allows_host("api.EXAMPLE.com"));
        assert!(!effective.allows_host("example.com"));
        assert!(effective.kv && effective.llm);
        assert_eq!(effective.config.len(), 1, "only declared keys are visible");
        assert_eq!(effective.config.get("api_key").map(String::as_str), Some("secret"));
    }

    #[test]
    fn limits_must_fit_under_the_grant_and_the_host() {
        let grant = Grant { memory_mb: Some(8), timeout_ms: Some(500), ..Grant::default() };
        let err = check(&manifest("memory_mb = 16"), Some(&grant)).expect_err("over the grant");
        assert_eq!(
            err.to_string(),
            "extension get_weather requests memory_mb = 16 MiB, more than extensions.grants.get_weather.memory_mb = 8"
        );
        let err = check(&manifest("timeout_ms = 120000"), None).expect_err("over the host");
        assert!(err.to_string().contains("more than this server's maximum of 60000 ms"), "{err}");

        let effective = check(&manifest("memory_mb = 4"), Some(&grant)).expect("fits");
        assert_eq!(effective.memory_bytes, 4 << 20);
        assert_eq!(effective.timeout, Duration::from_millis(500), "the default is capped by the grant");
    }
    #[test]
    fn a_python_plugin_grants_the_manifest_hosts_and_the_host_of_its_settings() {
        let wants = manifest(
            "http_hosts = [\"devapi.qweather.com\"]\nconfig = [\"api_key\", \"api_host\"]\nconfig_hosts = [\"api_host\"]",
        );
        // From `plugins.get_weather`: the settings, and the manifest's own hosts.
        let config = crate::config::load::load_str(
            include_str!("../../../config.yaml"),
            Some("plugins:\n  get_weather:\n    api_key: k1\n    api_host: https://ABC.re.qweatherapi.com/\n"),
        )
        .expect("config")
        .config;
        let grants = config.extension_grants();
        let grant = grants.get("get_weather").expect("granted by plugins");
        assert!(grant.from_plugins);
        let effective = check(&wants, Some(grant)).expect("granted");
        assert!(effective.allows_host("devapi.qweather.com"));
        assert!(effective.allows_host("abc.re.qweatherapi.com"), "{:?}", effective.http_hosts);
        assert_eq!(effective.config.get("api_key").map(String::as_str), Some("k1"));

        // An explicit grant: the manifest's hosts must be listed, a host in a declared setting
        // needs no listing.
        let mut explicit = Grant { http_hosts: vec!["devapi.qweather.com".into()], ..Grant::default() };
        explicit.config.insert("api_host".into(), "mine.example.com".into());
        let effective = check(&wants, Some(&explicit)).expect("granted");
        assert!(effective.allows_host("mine.example.com"));
        assert!(!effective.allows_host("abc.re.qweatherapi.com"));
        // A host in a setting the manifest does not declare as a host is not reachable.
        let plain = manifest("config = [\"api_host\"]");
        assert!(!check(&plain, Some(&explicit)).expect("granted").allows_host("mine.example.com"));
    }
}
