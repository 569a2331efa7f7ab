//! Speech synthesis: the [`Tts`] trait and its backends.
//!
//! Contract: [`Tts::synthesize`] turns one sentence into mono 16-bit PCM at whatever rate the
//! backend produces ([`AudioClip::sample_rate`]); the [`crate::speaker`] resamples it to the
//! downlink rate. It must be cancel-safe: the turn drops the future on abort.

pub mod custom;
pub mod openai;
pub mod piper;

use std::sync::Arc;

use async_trait::async_trait;

use crate::audio::AudioClip;
use crate::config::TtsSpec;
use crate::remote::ProviderError;

/// A speech synthesizer.
#[async_trait]
pub trait Tts: Send + Sync {
    /// Synthesizes one sentence.
    async fn synthesize(&self, text: &str) -> Result<AudioClip, ProviderError>;
}

/// Builds the TTS backend that a validated config entry names. Local voices are loaded here:
/// call it off the async runtime threads.
pub fn build(spec: &TtsSpec) -> Result<Arc<dyn Tts>, ProviderError> {
    match spec {
        TtsSpec::OpenAi(cfg) => Ok(Arc::new(openai::OpenAiTts::new(cfg.clone())?)),
        TtsSpec::Custom(cfg) => Ok(Arc::new(custom::CustomTts::new(cfg.clone())?)),
        TtsSpec::Piper(cfg) => Ok(Arc::new(piper::PiperTts::load(cfg)?)),
    }
}
