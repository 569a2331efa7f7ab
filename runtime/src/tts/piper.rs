//! (being written) Piper in process.
use async_trait::async_trait;

use crate::audio::AudioClip;
use crate::config::PiperConfig;
use crate::remote::ProviderError;

/// A Piper voice through ONNX Runtime.
pub struct PiperTts;

impl PiperTts {
    /// Loads the voice.
    pub fn load(_cfg: &PiperConfig) -> Result<Self, ProviderError> {
        Err(ProviderError::Config("piper is being written".into()))
    }
}

#[async_trait]
impl super::Tts for PiperTts {
    async fn synthesize(&self, _text: &str) -> Result<AudioClip, ProviderError> {
        Err(ProviderError::Config("piper is being written".into()))
    }
}
