//! (being written)
use async_trait::async_trait;
use crate::config::OpenAiAsrConfig;
use crate::llm::ProviderError;
/// placeholder
pub struct OpenAiAsr;
impl OpenAiAsr { /// placeholder
pub fn new(_c: OpenAiAsrConfig) -> Result<Self, ProviderError> { Err(ProviderError::Config("not yet".into())) } }
#[async_trait]
impl super::Asr for OpenAiAsr { async fn transcribe(&self, _pcm: &[i16]) -> Result<String, ProviderError> { Err(ProviderError::Config("not yet".into())) } }
