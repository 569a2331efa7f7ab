//! (being written) Whisper in process.
use async_trait::async_trait;

use crate::config::WhisperConfig;
use crate::remote::ProviderError;

/// Whisper speech recognition through ONNX Runtime.
pub struct WhisperAsr;

impl WhisperAsr {
    /// Loads the model.
    pub fn load(_cfg: &WhisperConfig) -> Result<Self, ProviderError> {
        Err(ProviderError::Config("whisper_onnx is being written".into()))
    }
}

#[async_trait]
impl super::Asr for WhisperAsr {
    async fn transcribe(&self, _pcm: &[i16]) -> Result<String, ProviderError> {
        Err(ProviderError::Config("whisper_onnx is being written".into()))
    }
}
