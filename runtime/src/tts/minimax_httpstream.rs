//! `type: minimax_httpstream`: MiniMax T2A streamed over HTTP. (Scaffold: being written.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::remote::ProviderError;

/// `TTS.<name>` with `type: minimax_httpstream`.
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
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    let _ = cfg;
    Err(ProviderError::Config("type minimax_httpstream is not built yet".into()))
}
