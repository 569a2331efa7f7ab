//! The listening half of a session: uplink Opus → PCM → end-of-utterance detection.
//!
//! A [`Listener`] owns the session's Opus decoder, decode scratch, VAD state, pre-roll ring and
//! utterance buffer. The session creates it on the first audio frame it hears, so a device that is
//! only connected costs none of this memory. Nothing here allocates per frame (the utterance buffer
//! grows only while someone speaks); the only wait is for the VAD windows of a frame, which run
//! in batches with every other session's on the VAD thread ([`VadBatcher`]).
//!
//! Time is audio time: silence is counted in samples received, never on the wall clock, so a
//! stall of the server can never split an utterance.

use std::sync::Arc;

use crate::audio::opus::{AudioError, OpusDecoder};
use crate::audio::ring::PreRoll;
use crate::audio::vad::{Vad, VadBatcher, VadEvent};
use crate::audio::{UPLINK_FRAME_SAMPLES, UPLINK_SAMPLE_RATE};
use crate::config::SileroVadConfig;

use super::state::Heard;

/// Longest utterance; longer speech is cut and sent to ASR (Whisper's window is 30 s).
pub const MAX_UTTERANCE_SAMPLES: usize = 30 * UPLINK_SAMPLE_RATE as usize;

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
    /// A listener with a fresh decoder and VAD state; its VAD windows run on the shared `vad`
    /// batcher.
    pub fn new(vad: Arc<VadBatcher>, config: &SileroVadConfig) -> Result<Self, AudioError> {
        Ok(Self {
            decoder: OpusDecoder::new(UPLINK_SAMPLE_RATE)?,
            scratch: vec![0; UPLINK_FRAME_SAMPLES],
            vad: Vad::new(vad, config),
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

    /// Whether the VAD is inside an utterance now.
    pub fn in_speech(&self) -> bool {
        self.vad.in_speech()
    }

    /// The utterance heard so far (pre-roll included): what a streaming recognition is fed.
    pub fn utterance(&self) -> &[i16] {
        &self.utterance
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
    /// buffered (push-to-talk); otherwise Silero VAD decides where the utterance ends (this
    /// waits for the frame's one or two VAD windows to be run by the batcher). An utterance
    /// ends at the VAD's end of speech, or at the length cap.
    pub async fn push_packet(&mut self, packet: &[u8], manual: bool) -> Result<Heard, AudioError> {
        let n = self.decoder.decode(packet, &mut self.scratch)?;
        let pcm = &self.scratch[..n];
        if manual {
            if self.utterance.len() + n <= MAX_UTTERANCE_SAMPLES {
                self.utterance.extend_from_slice(pcm);
            }
            return Ok(self.nothing());
        }
        if self.vad.in_speech() {
            self.utterance.extend_from_slice(pcm);
        } else {
            self.pre_roll.push(pcm);
        }
        let event = self.vad.push(pcm).await.unwrap_or_else(|e| {
            tracing::error!("VAD failed: {e}");
            VadEvent::None
        });
        match event {
            VadEvent::SpeechStart => {
                // This frame is already in the ring: the utterance starts with the pre-roll.
                self.utterance.clear();
                self.pre_roll.drain_into(&mut self.utterance);
                tracing::debug!("speech started");
                self.no_voice_samples = 0;
                return Ok(Heard::SpeechStart);
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
        Ok(self.nothing())
    }

    fn nothing(&self) -> Heard {
        Heard::Nothing { no_voice_ms: self.no_voice_ms() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::opus::{MAX_PACKET, OpusEncoder};
    use crate::audio::resample::resample;
    use crate::audio::vad::{SileroModel, find_model};

    fn batcher() -> Arc<VadBatcher> {
        crate::onnx::init_for_tests();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let path = find_model("", &dir).unwrap_or_else(|e| panic!("{e}"));
        let model = SileroModel::load(&path).unwrap_or_else(|e| panic!("{e}: run models/fetch.sh"));
        VadBatcher::new(model).unwrap()
    }

    /// Speaks `text` with espeak-ng, at 16 kHz.
    fn speech(text: &str) -> Vec<i16> {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("speech.wav");
        let status = std::process::Command::new("espeak-ng").arg("-w").arg(&wav).arg(text).status();
        assert!(status.expect("espeak-ng must be installed").success());
        let mut reader = hound::WavReader::open(&wav).unwrap();
        let rate = reader.spec().sample_rate;
        let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        resample(&samples, rate, UPLINK_SAMPLE_RATE)
    }

    /// `pcm` as the device sends it: 60 ms Opus packets (the last one padded with silence).
    fn packets(pcm: &[i16]) -> Vec<Vec<u8>> {
        let mut encoder = OpusEncoder::new(UPLINK_SAMPLE_RATE, 60, 0, 5).unwrap();
        let mut out = vec![0u8; MAX_PACKET];
        pcm.chunks(UPLINK_FRAME_SAMPLES)
            .map(|frame| {
                let mut frame = frame.to_vec();
                frame.resize(UPLINK_FRAME_SAMPLES, 0);
                let n = encoder.encode(&frame, &mut out).unwrap();
                out[..n].to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn an_utterance_between_silences_is_heard_once_with_its_pre_roll() {
        let config = SileroVadConfig::default();
        let voice = speech("please turn on the kitchen light");
        let first = voice.iter().position(|s| s.unsigned_abs() > 1000).unwrap();
        let last = voice.iter().rposition(|s| s.unsigned_abs() > 1000).unwrap();
        let voice = &voice[first..=last];
        let audio = [vec![0; 16_000], voice.to_vec(), vec![0; 24_000]].concat();
        let mut listener = Listener::new(batcher(), &config).unwrap();
        let mut utterances = Vec::new();
        for packet in packets(&audio) {
            if let Heard::Utterance(pcm) = listener.push_packet(&packet, false).await.unwrap() {
                utterances.push(pcm);
            }
        }
        assert_eq!(utterances.len(), 1);
        let utterance = &utterances[0];
        // It starts in the pre-roll, before the voice, and ends within the silence after it.
        let onset = utterance.iter().position(|s| s.unsigned_abs() > 1000).unwrap();
        assert!(onset >= 100 * 16, "only {} ms before the voice", onset / 16);
        let after = utterance.len() - onset;
        assert!(after >= voice.len(), "the utterance misses the end of the voice");
        assert!(after <= voice.len() + 1200 * 16, "{} ms too long", (after - voice.len()) / 16);
        assert!(listener.no_voice_ms() >= 300, "silence after the utterance is counted");
    }

    #[tokio::test]
    async fn manual_mode_buffers_everything_until_taken() {
        let mut listener = Listener::new(batcher(), &SileroVadConfig::default()).unwrap();
        let voice = speech("hello");
        let sent = packets(&voice);
        for packet in &sent {
            assert!(matches!(listener.push_packet(packet, true).await.unwrap(), Heard::Nothing { .. }));
        }
        assert_eq!(listener.take_utterance().len(), sent.len() * UPLINK_FRAME_SAMPLES);
        assert!(listener.take_utterance().is_empty());
    }
}
