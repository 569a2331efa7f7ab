//! `type: dify`: a Dify app. (Scaffold: being written.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::remote::ProviderError;

/// `LLM.<name>` with `type: dify`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        String::new()
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Llm>, ProviderError> {
    let _ = cfg;
    Err(ProviderError::Config("type dify is not built yet".into()))
}
