//! (being written)
use async_trait::async_trait;
use crate::audio::AudioClip;
use crate::config::CustomTtsConfig;
use crate::llm::ProviderError;
/// placeholder
pub struct CustomTts;
impl CustomTts { /// placeholder
pub fn new(_c: CustomTtsConfig) -> Result<Self, ProviderError> { Err(ProviderError::Config("not yet".into())) } }
#[async_trait]
impl super::Tts for CustomTts { async fn synthesize(&self, _t: &str) -> Result<AudioClip, ProviderError> { Err(ProviderError::Config("not yet".into())) } }
