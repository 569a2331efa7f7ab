//! (being written) SenseVoice in process.
use async_trait::async_trait;

use crate::config::SenseVoiceConfig;
use crate::remote::ProviderError;

/// SenseVoice speech recognition through ONNX Runtime.
pub struct SenseVoiceAsr;

impl SenseVoiceAsr {
    /// Loads the model.
    pub fn load(_cfg: &SenseVoiceConfig) -> Result<Self, ProviderError> {
        Err(ProviderError::Config("sensevoice_onnx is being written".into()))
    }
}

#[async_trait]
impl super::Asr for SenseVoiceAsr {
    async fn transcribe(&self, _pcm: &[i16]) -> Result<String, ProviderError> {
        Err(ProviderError::Config("sensevoice_onnx is being written".into()))
    }
}
