//! (being written)
use async_trait::async_trait;
use crate::config::OpenAiLlmConfig;
use super::{ProviderError, ChatMessage, ToolSpec, LlmStream};
/// placeholder
pub struct OpenAiLlm;
impl OpenAiLlm { /// placeholder
pub fn new(_c: OpenAiLlmConfig) -> Result<Self, ProviderError> { Err(ProviderError::Config("not yet".into())) } }
#[async_trait]
impl super::Llm for OpenAiLlm { async fn stream(&self, _m: &[ChatMessage], _t: &[ToolSpec]) -> Result<LlmStream, ProviderError> { Err(ProviderError::Config("not yet".into())) } }
