//! Speech recognition: the [`Asr`] trait and its backends.
//!
//! Contract: [`Asr::transcribe`] takes one whole utterance of 16 kHz mono 16-bit PCM (the
//! pre-roll included) and returns its text, trimmed; an utterance with no words gives an empty
//! string, not an error. It must be cancel-safe: the turn drops the future on abort.

pub mod openai;
pub mod sensevoice;
pub mod whisper;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::AsrSpec;
use crate::remote::ProviderError;

/// Sample rate of the PCM handed to every ASR backend.
pub const ASR_SAMPLE_RATE: u32 = 16_000;

/// A speech recognizer.
#[async_trait]
pub trait Asr: Send + Sync {
    /// Transcribes one utterance of 16 kHz mono PCM.
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError>;
}

/// Builds the ASR backend that a validated config entry names. Local models are loaded here:
/// call it off the async runtime threads.
pub fn build(spec: &AsrSpec) -> Result<Arc<dyn Asr>, ProviderError> {
    match spec {
        AsrSpec::OpenAi(cfg) => Ok(Arc::new(openai::OpenAiAsr::new(cfg.clone())?)),
        AsrSpec::Whisper(cfg) => Ok(Arc::new(whisper::WhisperAsr::load(cfg)?)),
        AsrSpec::SenseVoice(cfg) => Ok(Arc::new(sensevoice::SenseVoiceAsr::load(cfg)?)),
    }
}
