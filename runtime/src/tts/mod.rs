//! Speech synthesis: the [`Tts`] trait and its backends.
//!
//! Contract: [`Tts::speak`] starts speaking one sentence and returns once the provider has
//! answered, with the audio as an [`AudioStream`] of [`AudioChunk`]s that arrive as the provider
//! produces them (PCM at whatever rate the backend produces, or Ogg Opus packets); the
//! [`crate::speaker`] plays each chunk as it comes, resampling and encoding PCM to the downlink and
//! passing Opus packets that already match it through untouched. A stream that fails midway ends
//! with its error after the chunks that arrived. Everything must be cancel-safe: the turn drops
//! the stream on abort, which cancels the provider's request.
//!
//! Backends: OpenAI-compatible `/audio/speech` and the templated custom HTTP request, both read
//! as a chunked stream (WAV, raw PCM and Ogg Opus are decoded as they arrive; MP3 at the end);
//! Piper, synthesised clause by clause. [`Tts::synthesize`] collects a whole sentence (the cache
//! of fixed phrases uses it).

pub mod alibl_stream;
pub mod aliyun_stream;
pub mod custom;
pub mod doubao;
pub mod edge;
pub mod fishspeech;
pub mod gpt_sovits_v2;
pub mod gpt_sovits_v3;
pub mod huoshan_double_stream;
pub mod minimax_httpstream;
pub mod openai;
pub mod piper;
pub mod siliconflow;
pub mod tencent;
pub mod xunfei_stream;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{Stream, StreamExt};

use crate::audio::AudioClip;
pub use crate::audio::chunks::AudioChunk;
use crate::audio::chunks::ChunkDecoder;
use crate::audio::decode::AudioFormat;
use crate::config::TtsSpec;
use crate::remote::ProviderError;

/// The audio of one sentence, chunk by chunk.
pub type AudioStream = Pin<Box<dyn Stream<Item = Result<AudioChunk, ProviderError>> + Send>>;

/// A speech synthesizer.
#[async_trait]
pub trait Tts: Send + Sync {
    /// Starts speaking one sentence; its audio arrives as a stream of chunks. Blank text gives
    /// an empty stream without any request.
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError>;

    /// Whether this provider synthesizes while the text of a sentence is still being written
    /// (bidirectional streaming providers): the turn then hands it each sentence through
    /// [`Tts::speak_text`] from the sentence's first words on, instead of the whole sentence.
    fn streams_text(&self) -> bool {
        false
    }

    /// Starts speaking one sentence whose text arrives in pieces (in order; the sentence is
    /// complete when the sender is dropped). Providers that do not stream text wait for the whole
    /// sentence and [`Tts::speak`] it.
    async fn speak_text(&self, mut text: TextStream) -> Result<AudioStream, ProviderError> {
        let mut whole = String::new();
        while let Some(piece) = text.recv().await {
            whole.push_str(&piece);
        }
        self.speak(&whole).await
    }

    /// Synthesizes one whole sentence ([`Tts::speak`] collected; Opus packets decoded at 48 kHz).
    async fn synthesize(&self, text: &str) -> Result<AudioClip, ProviderError> {
        collect(self.speak(text).await?).await
    }
}

/// A whole clip from an audio stream (PCM chunks resampled to the first chunk's rate; Opus
/// decoded).
pub async fn collect(mut stream: AudioStream) -> Result<AudioClip, ProviderError> {
    let mut clip = AudioClip::default();
    let mut decoder: Option<crate::audio::opus::OpusDecoder> = None;
    let mut scratch = vec![0i16; 5760];
    while let Some(chunk) = stream.next().await {
        match chunk? {
            AudioChunk::Pcm { samples, sample_rate } => {
                if clip.sample_rate == 0 {
                    clip.sample_rate = sample_rate;
                }
                if sample_rate == clip.sample_rate {
                    clip.samples.extend_from_slice(&samples);
                } else {
                    clip.samples.extend(crate::audio::resample::resample(&samples, sample_rate, clip.sample_rate));
                }
            }
            AudioChunk::Opus { packet, .. } => {
                if clip.sample_rate == 0 {
                    clip.sample_rate = 48_000;
                }
                let rate = clip.sample_rate;
                let decoder = match &mut decoder {
                    Some(decoder) => decoder,
                    slot => slot.insert(crate::audio::opus::OpusDecoder::new(rate).map_err(|e| {
                        ProviderError::Protocol { url: String::new(), message: format!("Opus decoder: {e}") }
                    })?),
                };
                match decoder.decode(&packet, &mut scratch) {
                    Ok(n) => clip.samples.extend_from_slice(&scratch[..n]),
                    Err(e) => tracing::warn!("an Opus packet of the TTS answer does not decode: {e}"),
                }
            }
        }
    }
    Ok(clip)
}

/// The text of one sentence as it is written, piece by piece (see [`Tts::speak_text`]).
pub type TextStream = tokio::sync::mpsc::Receiver<String>;

/// An [`AudioStream`] fed through a channel, for providers whose audio is read by a task of
/// their own (a WebSocket reader): the stream ends when the sender is dropped.
pub fn channel_stream(rx: tokio::sync::mpsc::Receiver<Result<AudioChunk, ProviderError>>) -> AudioStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// A stream with no audio (blank text).
pub fn silence() -> AudioStream {
    Box::pin(futures_util::stream::empty())
}

/// The audio of a streamed HTTP answer: its bytes decoded as they arrive (see
/// [`crate::audio::chunks`]). A JSON answer is the provider's error, not audio.
pub(crate) async fn http_audio(
    url: &str,
    response: reqwest::Response,
    format: AudioFormat,
    timeout: std::time::Duration,
) -> Result<AudioStream, ProviderError> {
    if !response.status().is_success() {
        return Err(crate::remote::status_error(url, response, timeout).await);
    }
    if crate::remote::is_json(&response) {
        let body = response.bytes().await.unwrap_or_default();
        return Err(ProviderError::Protocol {
            url: url.to_owned(),
            message: format!("answered JSON instead of audio: {}", crate::remote::body_start(&body)),
        });
    }
    let url = url.to_owned();
    let bytes = response.bytes_stream();
    let state = (bytes, Some(ChunkDecoder::new(format)), std::collections::VecDeque::new(), false, url);
    let stream =
        futures_util::stream::unfold(state, move |(mut bytes, mut decoder, mut ready, mut any, url)| async move {
            loop {
                if let Some(chunk) = ready.pop_front() {
                    any = true;
                    return Some((Ok(chunk), (bytes, decoder, ready, any, url)));
                }
                let protocol = |message: String| ProviderError::Protocol { url: url.clone(), message };
                let active = decoder.as_mut()?;
                match bytes.next().await {
                    Some(Ok(piece)) => match active.push(&piece) {
                        Ok(chunks) => ready.extend(chunks),
                        Err(e) => return Some((Err(protocol(e.to_string())), (bytes, None, ready, any, url))),
                    },
                    Some(Err(e)) => {
                        let err = protocol(format!("the audio stream broke off: {}", crate::remote::error_chain(&e)));
                        return Some((Err(err), (bytes, None, ready, any, url)));
                    }
                    None => {
                        let finished = decoder.take().map(ChunkDecoder::finish);
                        match finished {
                            Some(Ok(chunks)) => {
                                if chunks.is_empty() && !any {
                                    return Some((
                                        Err(protocol("answered no audio".into())),
                                        (bytes, None, ready, any, url),
                                    ));
                                }
                                ready.extend(chunks);
                            }
                            Some(Err(e)) => {
                                return Some((Err(protocol(e.to_string())), (bytes, None, ready, any, url)));
                            }
                            None => return None,
                        }
                    }
                }
            }
        });
    Ok(Box::pin(stream))
}

/// Builds the TTS backend that a validated config entry names. Local voices are loaded here:
/// call it off the async runtime threads.
pub fn build(spec: &TtsSpec) -> Result<Arc<dyn Tts>, ProviderError> {
    match spec {
        TtsSpec::OpenAi(cfg) => Ok(Arc::new(openai::OpenAiTts::new(cfg.clone())?)),
        TtsSpec::Custom(cfg) => Ok(Arc::new(custom::CustomTts::new(cfg.clone())?)),
        TtsSpec::Piper(cfg) => Ok(Arc::new(piper::PiperTts::load(cfg)?)),
        TtsSpec::Edge(cfg) => edge::build(cfg),
        TtsSpec::Doubao(cfg) => doubao::build(cfg),
        TtsSpec::HuoshanDoubleStream(cfg) => huoshan_double_stream::build(cfg),
        TtsSpec::AliyunStream(cfg) => aliyun_stream::build(cfg),
        TtsSpec::AliBlStream(cfg) => alibl_stream::build(cfg),
        TtsSpec::SiliconFlow(cfg) => siliconflow::build(cfg),
        TtsSpec::MinimaxHttpStream(cfg) => minimax_httpstream::build(cfg),
        TtsSpec::GptSovitsV2(cfg) => gpt_sovits_v2::build(cfg),
        TtsSpec::GptSovitsV3(cfg) => gpt_sovits_v3::build(cfg),
        TtsSpec::FishSpeech(cfg) => fishspeech::build(cfg),
        TtsSpec::XunfeiStream(cfg) => xunfei_stream::build(cfg),
        TtsSpec::Tencent(cfg) => tencent::build(cfg),
    }
}
