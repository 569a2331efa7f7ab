//! `type: aliyun_stream`: Aliyun NLS real-time speech recognition (WebSocket). (Scaffold: being written.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::remote::ProviderError;

/// `ASR.<name>` with `type: aliyun_stream`.
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
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Asr>, ProviderError> {
    let _ = cfg;
    Err(ProviderError::Config("type aliyun_stream is not built yet".into()))
}
