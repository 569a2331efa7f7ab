//! Audio: Opus codec wrappers, resampling, decoding of provider audio files, the downlink pacer,
//! the pre-roll ring and Silero VAD.
//!
//! The per-frame path allocates nothing: decoders and encoders write into caller-owned scratch
//! (`&[u8] -> &mut [i16]`), and the pre-roll is a fixed ring.

pub mod chunks;
pub mod decode;
pub mod endpoint;
pub mod opus;
pub mod pacer;
pub mod resample;
pub mod ring;
pub mod vad;

/// Sample rate of the device uplink (the firmware always sends 16 kHz mono).
pub const UPLINK_SAMPLE_RATE: u32 = 16_000;

/// Duration of one uplink Opus frame in milliseconds.
pub const UPLINK_FRAME_MS: u32 = 60;

/// Samples in one uplink frame (60 ms at 16 kHz).
pub const UPLINK_FRAME_SAMPLES: usize = (UPLINK_SAMPLE_RATE * UPLINK_FRAME_MS / 1000) as usize;

/// Mono 16-bit PCM at a known rate: what TTS backends return.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AudioClip {
    /// The samples.
    pub samples: Vec<i16>,
    /// Samples per second.
    pub sample_rate: u32,
}

impl AudioClip {
    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        if self.sample_rate == 0 {
            return 0;
        }
        self.samples.len() as u64 * 1000 / self.sample_rate as u64
    }
}
