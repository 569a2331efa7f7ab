//! Opus codec wrappers over the system libopus (crate `audiopus`): a mono decoder for the uplink
//! and a mono encoder for the downlink.
//!
//! Both write into caller-owned buffers, so the per-frame path allocates nothing.

use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Bitrate, Channels, MutSignals, SampleRate, Signal};

/// The largest Opus packet [`OpusEncoder::encode`] can produce into a buffer of this size.
///
/// 4000 bytes is libopus's own recommendation for the output buffer of `opus_encode` ("a safe
/// upper bound" for any bitrate and frame size up to 120 ms); size the `out` buffer with it.
pub const MAX_PACKET: usize = 4000;

/// Packets of this many bytes or fewer are DTX silence (see [`OpusDecoder::decode`]).
const DTX_MAX_BYTES: usize = 3;

/// The frame duration assumed for a DTX packet: the uplink frame duration.
const DTX_FRAME_MS: u32 = 60;

/// Errors from the Opus wrappers.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The sample rate is not one libopus supports.
    #[error("unsupported Opus sample rate {0} Hz (supported: 8000, 12000, 16000, 24000, 48000)")]
    UnsupportedRate(u32),
    /// The frame duration is not one libopus supports.
    #[error("unsupported Opus frame duration {0} ms (supported: 10, 20, 40, 60, 80, 100, 120)")]
    UnsupportedFrame(u32),
    /// The encoder was handed a PCM slice that is not exactly one frame.
    #[error("Opus encoder expects exactly {expected} samples per frame, got {got}")]
    FrameLength {
        /// Samples per frame the encoder was built for.
        expected: usize,
        /// Samples handed in.
        got: usize,
    },
    /// The complexity is outside 0..=10.
    #[error("Opus complexity {0} is out of range 0..=10")]
    Complexity(u8),
    /// libopus (or the wrapper's checks) rejected the call: a corrupt packet, a buffer too
    /// small, an invalid setting.
    #[error("opus: {0}")]
    Opus(#[from] audiopus::Error),
}

/// Maps a rate in Hz to the libopus enum.
fn opus_rate(sample_rate: u32) -> Result<SampleRate, AudioError> {
    match sample_rate {
        8_000 => Ok(SampleRate::Hz8000),
        12_000 => Ok(SampleRate::Hz12000),
        16_000 => Ok(SampleRate::Hz16000),
        24_000 => Ok(SampleRate::Hz24000),
        48_000 => Ok(SampleRate::Hz48000),
        other => Err(AudioError::UnsupportedRate(other)),
    }
}

/// A mono Opus decoder (one per uplink stream).
#[derive(Debug)]
pub struct OpusDecoder {
    decoder: Decoder,
    /// Samples in one DTX frame (60 ms at the decoder rate).
    dtx_samples: usize,
}

impl OpusDecoder {
    /// Creates a mono decoder producing PCM at `sample_rate` (8, 12, 16, 24 or 48 kHz).
    pub fn new(sample_rate: u32) -> Result<Self, AudioError> {
        let decoder = Decoder::new(opus_rate(sample_rate)?, Channels::Mono)?;
        let dtx_samples = (sample_rate * DTX_FRAME_MS / 1000) as usize;
        Ok(Self { decoder, dtx_samples })
    }

    /// Decodes one packet into `out` and returns the number of samples written.
    ///
    /// `out` must hold the packet's frame (960 samples for 60 ms at 16 kHz; 120 ms is the Opus
    /// maximum); a packet that does not fit, or a corrupt one, is an error, never a panic.
    ///
    /// A packet of 0–3 bytes is DTX silence: the firmware encodes with DTX on and sends the
    /// encoder's output as-is, so silence arrives as tiny (or empty) packets. Such a packet
    /// carries no audio, so `out` is filled with one 60 ms frame of zeros (or `out.len()` if
    /// smaller) without calling libopus, because libopus would either reject it (an empty packet)
    /// or run packet-loss concealment / comfort noise on it, which extrapolates the last speech
    /// into the silence (the VAD would hear phantom voice) and can return a frame length other
    /// than the 60 ms the uplink clock (and the VAD's audio-time counting) assumes.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, AudioError> {
        if packet.len() <= DTX_MAX_BYTES {
            let n = self.dtx_samples.min(out.len());
            if let Some(head) = out.get_mut(..n) {
                head.fill(0);
            }
            return Ok(n);
        }
        let packet = Packet::try_from(packet)?;
        let signals = MutSignals::try_from(out)?;
        Ok(self.decoder.decode(Some(packet), signals, false)?)
    }
}

/// Whether `packet` can be one of the device's uplink packets: empty (DTX), or an Opus packet
/// whose frames add up to `frame_ms` of 16 kHz audio. Used by the UDP transport, whose encryption
/// has no integrity check: a datagram under another key opens into bytes that rarely pass.
pub fn is_uplink_packet(packet: &[u8], frame_ms: u32) -> bool {
    if packet.is_empty() {
        return true;
    }
    let Ok(packet) = Packet::try_from(packet) else { return false };
    let expected = usize::try_from(frame_ms.saturating_mul(16)).unwrap_or(usize::MAX);
    audiopus::packet::nb_samples(packet, SampleRate::Hz16000).is_ok_and(|n| n == expected)
}

/// A mono Opus encoder (one per downlink stream).
#[derive(Debug)]
pub struct OpusEncoder {
    encoder: Encoder,
    frame_samples: usize,
}

impl OpusEncoder {
    /// Creates a mono encoder for `frame_ms`-long frames at `sample_rate`.
    ///
    /// `bitrate` is in bits per second (0 or negative = libopus's automatic choice);
    /// `complexity` is 0..=10. The application is `Audio` (as the Python server uses) and the
    /// signal hint is `Voice`.
    pub fn new(sample_rate: u32, frame_ms: u32, bitrate: i32, complexity: u8) -> Result<Self, AudioError> {
        let rate = opus_rate(sample_rate)?;
        if !matches!(frame_ms, 10 | 20 | 40 | 60 | 80 | 100 | 120) {
            return Err(AudioError::UnsupportedFrame(frame_ms));
        }
        if complexity > 10 {
            return Err(AudioError::Complexity(complexity));
        }
        let mut encoder = Encoder::new(rate, Channels::Mono, Application::Audio)?;
        encoder.set_bitrate(if bitrate > 0 { Bitrate::BitsPerSecond(bitrate) } else { Bitrate::Auto })?;
        encoder.set_complexity(complexity)?;
        encoder.set_signal(Signal::Voice)?;
        let frame_samples = (sample_rate * frame_ms / 1000) as usize;
        Ok(Self { encoder, frame_samples })
    }

    /// Changes the encoder's complexity (0..=10; larger values are clamped) for the next frames.
    pub fn set_complexity(&mut self, complexity: u8) -> Result<(), AudioError> {
        self.encoder.set_complexity(complexity.min(10))?;
        Ok(())
    }

    /// Samples in one frame (the exact length [`encode`](Self::encode) expects).
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Encodes exactly one frame of PCM into `out` (size it with [`MAX_PACKET`]) and returns the
    /// packet length in bytes.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, AudioError> {
        if pcm.len() != self.frame_samples {
            return Err(AudioError::FrameLength { expected: self.frame_samples, got: pcm.len() });
        }
        // audiopus passes the length to libopus as an i32: clamp so it cannot wrap.
        let out_len = out.len().min(i32::MAX as usize);
        Ok(self.encoder.encode(pcm, &mut out[..out_len])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f32, samples: usize, amplitude: f32) -> Vec<i16> {
        (0..samples)
            .map(|i| (amplitude * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin()) as i16)
            .collect()
    }

    fn energy(pcm: &[i16]) -> f64 {
        pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / pcm.len().max(1) as f64
    }

    fn assert_send<T: Send>() {}

    #[test]
    fn codec_types_are_send() {
        assert_send::<OpusDecoder>();
        assert_send::<OpusEncoder>();
    }

    #[test]
    fn round_trip_16k_keeps_energy() {
        let mut enc = OpusEncoder::new(16_000, 60, 32_000, 5).unwrap();
        let mut dec = OpusDecoder::new(16_000).unwrap();
        assert_eq!(enc.frame_samples(), 960);
        let input = sine(16_000, 440.0, 960 * 20, 8_000.0);
        let mut decoded = Vec::new();
        let mut packet = [0u8; MAX_PACKET];
        let mut pcm = [0i16; 960 * 2];
        for frame in input.chunks_exact(960) {
            let n = enc.encode(frame, &mut packet).unwrap();
            assert!(n > DTX_MAX_BYTES && n <= MAX_PACKET, "packet of {n} bytes");
            let got = dec.decode(&packet[..n], &mut pcm).unwrap();
            assert_eq!(got, 960);
            decoded.extend_from_slice(&pcm[..got]);
        }
        // Skip the first frames (codec warm-up) when comparing energy.
        let e_in = energy(&input[960 * 2..]);
        let e_out = energy(&decoded[960 * 2..]);
        let ratio = e_out / e_in;
        assert!((0.7..1.3).contains(&ratio), "energy ratio {ratio}");
    }

    #[test]
    fn encodes_24k_frames() {
        let mut enc = OpusEncoder::new(24_000, 60, 24_000, 0).unwrap();
        assert_eq!(enc.frame_samples(), 1440);
        let mut dec = OpusDecoder::new(24_000).unwrap();
        let input = sine(24_000, 300.0, 1440, 6_000.0);
        let mut packet = vec![0u8; MAX_PACKET];
        let n = enc.encode(&input, &mut packet).unwrap();
        let mut pcm = vec![0i16; 1440];
        assert_eq!(dec.decode(&packet[..n], &mut pcm).unwrap(), 1440);
        // A frame of the wrong length is refused.
        assert!(matches!(
            enc.encode(&input[..960], &mut packet),
            Err(AudioError::FrameLength { expected: 1440, got: 960 })
        ));
    }

    #[test]
    fn dtx_packets_decode_to_silence() {
        let mut dec = OpusDecoder::new(16_000).unwrap();
        let mut pcm = [1i16; 1920];
        assert_eq!(dec.decode(&[0x08, 0x01], &mut pcm).unwrap(), 960);
        assert!(pcm[..960].iter().all(|&s| s == 0));
        assert!(pcm[960..].iter().all(|&s| s == 1), "only one frame is written");
        let mut small = [7i16; 100];
        assert_eq!(dec.decode(&[], &mut small).unwrap(), 100);
        assert!(small.iter().all(|&s| s == 0));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = OpusDecoder::new(16_000).unwrap();
        let mut pcm = [0i16; 960];
        // TOC code 3 (arbitrary frame count) with a frame count of 0 is invalid.
        assert!(dec.decode(&[0x0b, 0x00, 0xff, 0xff, 0x12], &mut pcm).is_err());
        // Code 3 claiming 63 frames of 60 ms does not fit any buffer.
        assert!(dec.decode(&[0x1b, 0x3f, 0xff, 0xff, 0xff, 0xff], &mut pcm).is_err());
        // A valid packet into a too-small buffer is an error too.
        let mut enc = OpusEncoder::new(16_000, 60, 16_000, 0).unwrap();
        let mut packet = [0u8; MAX_PACKET];
        let n = enc.encode(&sine(16_000, 200.0, 960, 5_000.0), &mut packet).unwrap();
        let mut tiny = [0i16; 100];
        assert!(dec.decode(&packet[..n], &mut tiny).is_err());
        // Random bytes never panic, whatever libopus makes of them.
        let mut seed = 0x1234_5678u32;
        for len in 4..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = dec.decode(&bytes, &mut pcm);
        }
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(matches!(OpusDecoder::new(44_100), Err(AudioError::UnsupportedRate(44_100))));
        assert!(matches!(OpusEncoder::new(16_000, 30, 0, 0), Err(AudioError::UnsupportedFrame(30))));
        assert!(matches!(OpusEncoder::new(16_000, 60, 0, 11), Err(AudioError::Complexity(11))));
    }
}
