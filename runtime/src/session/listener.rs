//! The listening half of a session: uplink Opus → PCM → end-of-utterance detection.
//!
//! A [`Listener`] owns the session's Opus decoder, decode scratch, VAD state, pre-roll ring and
//! utterance buffer. The session creates it on the first `listen start`, so a device that is only
//! connected costs none of this memory. Everything here is synchronous and allocation-free per
//! frame (the utterance buffer grows only while someone speaks).
//!
//! Time is audio time: silence is counted in samples received, never on the wall clock, so a
//! stall of the server can never split an utterance.

use std::sync::Arc;

use crate::audio::opus::{AudioError, OpusDecoder};
use crate::audio::ring::PreRoll;
use crate::audio::vad::{SileroModel, Vad, VadEvent};
use crate::audio::{UPLINK_FRAME_SAMPLES, UPLINK_SAMPLE_RATE};
use crate::config::SileroVadConfig;

/// Longest utterance; longer speech is cut and sent to ASR (Whisper's window is 30 s).
pub const MAX_UTTERANCE_SAMPLES: usize = 30 * UPLINK_SAMPLE_RATE as usize;

/// What one uplink packet led to.
#[derive(Debug, PartialEq)]
pub enum Heard {
    /// Nothing to act on yet.
    Nothing,
    /// An utterance ended (VAD end of speech, or the length cap): 16 kHz PCM, pre-roll included.
    Utterance(Vec<i16>),
}

/// Listening state of one session.
pub struct Listener {
    decoder: OpusDecoder,
    /// Decoded PCM of one uplink frame; reused for every frame.
    scratch: Vec<i16>,
    vad: Vad,
    pre_roll: PreRoll,
    utterance: Vec<i16>,
    /// Audio time, in samples, since the last voice.
    no_voice_samples: u64,
}

impl Listener {
    /// A listener with a fresh decoder and VAD state.
    pub fn new(model: Arc<SileroModel>, config: &SileroVadConfig) -> Result<Self, AudioError> {
        Ok(Self {
            decoder: OpusDecoder::new(UPLINK_SAMPLE_RATE)?,
            scratch: vec![0; UPLINK_FRAME_SAMPLES],
            vad: Vad::new(model, config),
            pre_roll: PreRoll::new(config.pre_roll_ms as usize * UPLINK_SAMPLE_RATE as usize / 1000),
            utterance: Vec::new(),
            no_voice_samples: 0,
        })
    }

    /// Forgets any partial utterance and VAD state (a new `listen start`, or after a turn).
    pub fn reset(&mut self) {
        self.vad.reset();
        self.pre_roll.clear();
        self.utterance.clear();
        self.no_voice_samples = 0;
    }

    /// Takes everything buffered (manual mode: the button was released).
    pub fn take_utterance(&mut self) -> Vec<i16> {
        std::mem::take(&mut self.utterance)
    }

    /// Milliseconds of audio received since the last voice.
    pub fn no_voice_ms(&self) -> u64 {
        self.no_voice_samples * 1000 / UPLINK_SAMPLE_RATE as u64
    }

    /// Decodes one uplink Opus packet and updates the utterance. In `manual` mode everything is
    /// buffered (push-to-talk); otherwise Silero VAD decides where the utterance ends.
    pub fn push_packet(&mut self, packet: &[u8], manual: bool) -> Result<Heard, AudioError> {
        let n = self.decoder.decode(packet, &mut self.scratch)?;
        let pcm = &self.scratch[..n];
        if manual {
            if self.utterance.len() + n <= MAX_UTTERANCE_SAMPLES {
                self.utterance.extend_from_slice(pcm);
            }
            return Ok(Heard::Nothing);
        }
        if self.vad.in_speech() {
            self.utterance.extend_from_slice(pcm);
        } else {
            self.pre_roll.push(pcm);
        }
        let event = self.vad.push(pcm).unwrap_or_else(|e| {
            tracing::error!("VAD failed: {e}");
            VadEvent::None
        });
        match event {
            VadEvent::SpeechStart => {
                // This frame is already in the ring: the utterance starts with the pre-roll.
                self.utterance.clear();
                self.pre_roll.drain_into(&mut self.utterance);
                tracing::debug!("speech started");
            }
            VadEvent::SpeechEnd => {
                tracing::debug!("speech ended after {} ms", self.utterance.len() * 1000 / UPLINK_SAMPLE_RATE as usize);
                self.no_voice_samples = 0;
                return Ok(Heard::Utterance(std::mem::take(&mut self.utterance)));
            }
            VadEvent::None => {}
        }
        if self.vad.in_speech() {
            self.no_voice_samples = 0;
            if self.utterance.len() >= MAX_UTTERANCE_SAMPLES {
                self.vad.reset();
                return Ok(Heard::Utterance(std::mem::take(&mut self.utterance)));
            }
        } else {
            self.no_voice_samples += n as u64;
        }
        Ok(Heard::Nothing)
    }
}
