//! (being written)
use async_trait::async_trait;
use crate::audio::AudioClip;
use crate::config::OpenAiTtsConfig;
use crate::llm::ProviderError;
/// placeholder
pub struct OpenAiTts;
impl OpenAiTts { /// placeholder
pub fn new(_c: OpenAiTtsConfig) -> Result<Self, ProviderError> { Err(ProviderError::Config("not yet".into())) } }
#[async_trait]
impl super::Tts for OpenAiTts { async fn synthesize(&self, _t: &str) -> Result<AudioClip, ProviderError> { Err(ProviderError::Config("not yet".into())) } }
