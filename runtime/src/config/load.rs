//! (being written)
use std::path::PathBuf;
use super::Config;
/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource { pub base: PathBuf, pub override_path: PathBuf }
/// A configuration problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);
/// Loads the configuration.
pub fn load(_source: &ConfigSource) -> Result<Config, ConfigError> { Err(ConfigError("not yet".into())) }
