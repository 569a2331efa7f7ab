//! Speech recognition: the [`Asr`] trait, the streaming [`Recognition`] interface, and the
//! backends.
//!
//! One path for every backend: a recognition opens when the VAD hears speech start
//! ([`start`]), 16 kHz mono PCM is pushed as it arrives (the pre-roll first), and
//! [`Recognition::finish`] at the end of speech gives the final text; dropping it aborts.
//! Streaming backends ([`Asr::open`]) recognise while the user speaks, so the text is ready
//! moments after the last word; whole-utterance backends (OpenAI-compatible upload, Whisper,
//! SenseVoice) sit behind the [`Buffered`] adapter, which keeps the audio and transcribes it at
//! `finish`.
//!
//! Contract of [`Asr::transcribe`]: one whole utterance (pre-roll included) in, its text out,
//! trimmed; an utterance with no words gives an empty string, not an error. Everything must be
//! cancel-safe: the turn drops the future on abort.

pub mod aliyun_stream;
pub mod aliyunbl_stream;
pub mod doubao_stream;
pub mod fun_server;
pub mod openai;
pub mod qwen3_asr_flash;
pub mod sensevoice;
pub mod tencent;
pub mod whisper;
pub mod xunfei_stream;

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

    /// Opens a streaming recognition, for backends that recognise while the user speaks;
    /// `None` (the default) for backends that recognise whole utterances ([`Buffered`]).
    async fn open(&self) -> Option<Result<Box<dyn Recognition>, ProviderError>> {
        None
    }
}

/// One utterance being recognised.
#[async_trait]
pub trait Recognition: Send {
    /// Adds the next 16 kHz mono PCM of the utterance.
    async fn push(&mut self, pcm: &[i16]) -> Result<(), ProviderError>;
    /// The end of speech: the final text (trimmed; empty when there were no words).
    async fn finish(self: Box<Self>) -> Result<String, ProviderError>;
}

/// Opens a recognition on `asr`: its own streaming one, else a [`Buffered`] one.
pub async fn start(asr: &Arc<dyn Asr>) -> Result<Box<dyn Recognition>, ProviderError> {
    match asr.open().await {
        Some(streaming) => streaming,
        None => Ok(Box::new(Buffered { asr: Arc::clone(asr), pcm: Vec::new() })),
    }
}

/// The adapter of whole-utterance backends: keeps the audio (at most 30 s of it, the longest
/// utterance) and transcribes it at `finish`.
pub struct Buffered {
    asr: Arc<dyn Asr>,
    pcm: Vec<i16>,
}

/// Most samples a [`Buffered`] recognition keeps (30 s at 16 kHz).
const MAX_BUFFERED_SAMPLES: usize = 30 * ASR_SAMPLE_RATE as usize;

#[async_trait]
impl Recognition for Buffered {
    async fn push(&mut self, pcm: &[i16]) -> Result<(), ProviderError> {
        let room = MAX_BUFFERED_SAMPLES.saturating_sub(self.pcm.len());
        self.pcm.extend_from_slice(&pcm[..pcm.len().min(room)]);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<String, ProviderError> {
        Ok(self.asr.transcribe(&self.pcm).await?.trim().to_owned())
    }
}

/// Builds the ASR backend that a validated config entry names. Local models are loaded here:
/// call it off the async runtime threads.
pub fn build(spec: &AsrSpec) -> Result<Arc<dyn Asr>, ProviderError> {
    match spec {
        AsrSpec::OpenAi(cfg) => Ok(Arc::new(openai::OpenAiAsr::new(cfg.clone())?)),
        AsrSpec::Whisper(cfg) => Ok(Arc::new(whisper::WhisperAsr::load(cfg)?)),
        AsrSpec::SenseVoice(cfg) => Ok(Arc::new(sensevoice::SenseVoiceAsr::load(cfg)?)),
        AsrSpec::FunServer(cfg) => fun_server::build(cfg),
        AsrSpec::DoubaoStream(cfg) => doubao_stream::build(cfg),
        AsrSpec::AliyunStream(cfg) => aliyun_stream::build(cfg),
        AsrSpec::AliyunBlStream(cfg) => aliyunbl_stream::build(cfg),
        AsrSpec::Qwen3AsrFlash(cfg) => qwen3_asr_flash::build(cfg),
        AsrSpec::XunfeiStream(cfg) => xunfei_stream::build(cfg),
        AsrSpec::Tencent(cfg) => tencent::build(cfg),
    }
}
