//! Sample-rate conversion with rubato's FFT resampler: of whole clips ([`resample`]: test speech
//! to the 16 kHz the VAD and ASR expect, cached phrases), and of audio that arrives in pieces
//! ([`StreamResampler`]: streamed TTS to the downlink rate, chunk by chunk, with the same output as
//! a whole-clip conversion).

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

/// Input frames per FFT chunk: the resampler rounds it to a multiple of the smallest block the
/// rate pair allows; about 1024 keeps the FFTs small and the quality high.
const CHUNK: usize = 1024;

/// Resamples a whole mono clip from `from` Hz to `to` Hz.
///
/// - Same rate: a copy. An empty clip, or a rate of 0, gives an empty clip.
/// - Otherwise the clip goes through rubato's FFT resampler (band-limited, Blackman-Harris
///   anti-aliasing). The resampler's start-up delay is trimmed and the tail is flushed, so the
///   output is aligned with the input (speech is neither shifted nor cut) and has
///   `ceil(len × to / from)` samples.
pub fn resample(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to {
        return input.to_vec();
    }
    if input.is_empty() || from == 0 || to == 0 {
        return Vec::new();
    }
    match resample_fft(input, from, to) {
        Ok(out) => out,
        Err(e) => {
            // Not expected for valid rates; keep the audio with a simpler method rather than
            // dropping it.
            tracing::warn!(from, to, error = %e, "FFT resampling failed; using linear interpolation");
            resample_linear(input, from, to)
        }
    }
}

/// Resamples audio that arrives in pieces: [`push`](Self::push) gives out every sample it can
/// (whole FFT chunks of input), [`finish`](Self::finish) flushes the rest. The start-up delay is
/// trimmed and the total length is `ceil(len × to / from)`, as with [`resample`].
pub struct StreamResampler {
    inner: Option<Fft<f32>>,
    from: u32,
    to: u32,
    /// Input not yet resampled (less than one chunk).
    pending: Vec<f32>,
    /// Output frames of start-up delay still to drop.
    delay_left: usize,
    input_total: u64,
    output_total: u64,
    /// Reused output buffer.
    scratch: Vec<f32>,
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz (the same rate, or a rate of 0: copies).
    pub fn new(from: u32, to: u32) -> Self {
        let inner = (from != to && from != 0 && to != 0)
            .then(|| Fft::<f32>::new(from as usize, to as usize, CHUNK, 1, FixedSync::Input).ok())
            .flatten();
        let delay_left = inner.as_ref().map_or(0, Resampler::output_delay);
        Self { inner, from, to, pending: Vec::new(), delay_left, input_total: 0, output_total: 0, scratch: Vec::new() }
    }

    /// The input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Takes `input`; appends to `out` what can be resampled so far.
    pub fn push(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.input_total += input.len() as u64;
        if self.inner.is_none() {
            out.extend_from_slice(input);
            self.output_total += input.len() as u64;
            return;
        }
        self.pending.extend(input.iter().map(|&s| f32::from(s) / 32768.0));
        while let Some(need) = self.inner.as_ref().map(Resampler::input_frames_next)
            && self.pending.len() >= need
        {
            self.process(need, out);
        }
    }

    /// No more input: appends the rest.
    pub fn finish(&mut self, out: &mut Vec<i16>) {
        let expected =
            if self.from == 0 { 0 } else { (self.input_total * u64::from(self.to)).div_ceil(u64::from(self.from)) };
        if self.inner.is_none() {
            return;
        }
        // Zeros push the tail (and the filter's delay) out.
        let mut guard = 0;
        while self.output_total < expected && guard < 64 {
            let need = self.inner.as_ref().map_or(0, Resampler::input_frames_next);
            if self.pending.len() < need {
                self.pending.resize(need, 0.0);
            }
            let before = out.len();
            self.process(need, out);
            guard += 1;
            if out.len() == before && self.delay_left == 0 {
                break;
            }
        }
        let excess = self.output_total.saturating_sub(expected) as usize;
        out.truncate(out.len().saturating_sub(excess));
        self.output_total -= excess as u64;
    }

    /// Resamples the first `need` pending input frames.
    fn process(&mut self, need: usize, out: &mut Vec<i16>) {
        let Some(inner) = self.inner.as_mut() else { return };
        let frames_out = inner.output_frames_next();
        self.scratch.resize(frames_out, 0.0);
        let result =
            InterleavedSlice::new(&self.pending[..need], 1, need).map_err(|e| e.to_string()).and_then(|input| {
                let mut output =
                    InterleavedSlice::new_mut(&mut self.scratch[..], 1, frames_out).map_err(|e| e.to_string())?;
                inner.process_into_buffer(&input, &mut output, None).map_err(|e| e.to_string())
            });
        self.pending.drain(..need);
        match result {
            Ok((_, produced)) => {
                let skip = self.delay_left.min(produced);
                self.delay_left -= skip;
                let fresh = &self.scratch[skip..produced];
                out.extend(fresh.iter().copied().map(to_i16));
                self.output_total += fresh.len() as u64;
            }
            Err(e) => tracing::warn!("streamed resampling failed, a chunk is lost: {e}"),
        }
    }
}

/// The FFT path of [`resample`].
fn resample_fft(input: &[i16], from: u32, to: u32) -> Result<Vec<i16>, String> {
    let samples: Vec<f32> = input.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let mut resampler =
        Fft::<f32>::new(from as usize, to as usize, CHUNK, 1, FixedSync::Input).map_err(|e| e.to_string())?;
    let adapter = InterleavedSlice::new(&samples[..], 1, samples.len()).map_err(|e| e.to_string())?;
    // `process_all` trims the start-up delay and pumps zeros until the tail is out.
    let out = resampler.process_all(&adapter, samples.len(), None).map_err(|e| e.to_string())?;
    Ok(out.take_data().into_iter().map(to_i16).collect())
}

/// Linear interpolation, the fallback of [`resample`].
fn resample_linear(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    let out_len = (input.len() as u64 * u64::from(to)).div_ceil(u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    let last = input.len().saturating_sub(1);
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let idx = (pos as usize).min(last);
            let frac = (pos - idx as f64) as f32;
            let a = f32::from(input.get(idx).copied().unwrap_or(0));
            let b = f32::from(input.get(idx + 1).copied().unwrap_or(input.get(idx).copied().unwrap_or(0)));
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

/// Converts a float sample in [-1, 1) to i16, rounding and clamping (the filter can overshoot).
fn to_i16(x: f32) -> i16 {
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_resampling_matches_the_whole_clip() {
        let input = sine(22_050, 440.0, 22_050);
        let whole = resample(&input, 22_050, 24_000);
        for piece in [37, 441, 5000] {
            let mut stream = StreamResampler::new(22_050, 24_000);
            let mut out = Vec::new();
            let mut first_output_after = None;
            for (i, chunk) in input.chunks(piece).enumerate() {
                stream.push(chunk, &mut out);
                if first_output_after.is_none() && !out.is_empty() {
                    first_output_after = Some((i + 1) * piece);
                }
            }
            stream.finish(&mut out);
            // The whole-clip path rounds the length in floating point (one sample more, here).
            assert!(out.len().abs_diff(whole.len()) <= 1, "pieces of {piece}: {} vs {}", out.len(), whole.len());
            let diff = out.iter().zip(&whole).map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs()).max().unwrap_or(0);
            assert!(diff <= 2, "pieces of {piece}: differs by {diff}");
            // Audio comes out after a few thousand input samples, not at the end.
            assert!(first_output_after.is_some_and(|n| n < 6000), "pieces of {piece}: {first_output_after:?}");
        }
        let mut same = StreamResampler::new(24_000, 24_000);
        let mut out = Vec::new();
        same.push(&[1, 2, 3], &mut out);
        same.finish(&mut out);
        assert_eq!(out, [1, 2, 3]);
    }

    fn sine(rate: u32, freq: f64, samples: usize) -> Vec<i16> {
        (0..samples)
            .map(|i| (10_000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    /// Power of `freq` in `pcm` (Goertzel), normalised by length.
    fn goertzel(pcm: &[i16], rate: u32, freq: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in pcm {
            let s0 = f64::from(x) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (pcm.len() as f64).powi(2)
    }

    fn zero_crossings(pcm: &[i16]) -> usize {
        pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
    }

    fn check_sine(from: u32, to: u32) {
        let input = sine(from, 440.0, from as usize); // one second
        let out = resample(&input, from, to);
        let expected = to as f64;
        let len_err = (out.len() as f64 - expected).abs() / expected;
        assert!(len_err < 0.01, "{from}->{to}: length {} vs {expected}", out.len());
        // 440 Hz for one second: 880 zero crossings.
        let zc = zero_crossings(&out) as f64;
        assert!((zc - 880.0).abs() / 880.0 < 0.01, "{from}->{to}: {zc} zero crossings");
        // The energy is at 440 Hz, not at a neighbouring frequency.
        let at = goertzel(&out, to, 440.0);
        assert!(at > 100.0 * goertzel(&out, to, 470.0), "{from}->{to}: 440 Hz is not dominant");
        assert!(at > 100.0 * goertzel(&out, to, 410.0), "{from}->{to}: 440 Hz is not dominant");
    }

    #[test]
    fn sine_keeps_frequency_and_length_22050_to_24000() {
        check_sine(22_050, 24_000);
    }

    #[test]
    fn sine_keeps_frequency_and_length_24000_to_16000() {
        check_sine(24_000, 16_000);
    }

    fn peak_index(pcm: &[i16]) -> usize {
        pcm.iter().enumerate().max_by_key(|(_, s)| s.unsigned_abs()).map(|(i, _)| i).unwrap()
    }

    #[test]
    fn no_leading_delay_and_tail_kept() {
        let (from, to) = (22_050u32, 16_000u32);
        let mut input = vec![0i16; 22_050];
        input[1_000] = 20_000;
        let out = resample(&input, from, to);
        let expected = (1_000.0 * f64::from(to) / f64::from(from)).round() as usize;
        let got = peak_index(&out);
        assert!(got.abs_diff(expected) <= 1, "click at {got}, expected {expected}");

        // A click 20 samples before the end survives.
        let mut input = vec![0i16; 22_050];
        input[22_030] = 20_000;
        let out = resample(&input, from, to);
        let expected = (22_030.0 * f64::from(to) / f64::from(from)).round() as usize;
        let got = peak_index(&out);
        assert!(got.abs_diff(expected) <= 1, "tail click at {got}, expected {expected}");
        assert!(out[got] > 5_000, "tail click attenuated to {}", out[got]);
    }

    #[test]
    fn short_clips_and_edge_cases() {
        assert_eq!(resample(&[1, 2, 3], 16_000, 16_000), vec![1, 2, 3]);
        assert!(resample(&[], 16_000, 24_000).is_empty());
        assert!(resample(&[1, 2, 3], 0, 24_000).is_empty());
        // Shorter than one FFT chunk still comes out with the right length.
        let out = resample(&sine(16_000, 300.0, 100), 16_000, 24_000);
        assert_eq!(out.len(), 150);
        // A full-scale square wave may overshoot: clamped, not wrapped.
        let square: Vec<i16> = (0..4_000).map(|i| if (i / 40) % 2 == 0 { 32_767 } else { -32_768 }).collect();
        let out = resample(&square, 16_000, 24_000);
        assert_eq!(out.len(), 6_000);
        assert!(out[130..170].iter().all(|&s| s > 20_000), "no wrap-around to negative");
        assert!(out.contains(&i16::MAX) && out.contains(&i16::MIN), "the overshoot is clamped");
    }

    #[test]
    fn linear_fallback_is_sane() {
        let out = resample_linear(&[0, 100, 200, 300], 16_000, 32_000);
        assert_eq!(out, vec![0, 50, 100, 150, 200, 250, 300, 300]);
    }
}
