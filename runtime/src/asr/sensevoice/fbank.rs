//! The SenseVoice front end: kaldi log-mel filter banks, low frame rate (LFR) stacking and CMVN.
//!
//! The fbank follows kaldi (`kaldi-native-fbank`, which sherpa-onnx uses) as sherpa-onnx
//! configures it for SenseVoice: 16 kHz, 25 ms frames every 10 ms with `snip_edges` (only whole
//! frames), no dither, DC removal, pre-emphasis 0.97, a Hamming window, a 512-point power
//! spectrum and 80 triangular mel bins from 20 Hz to Nyquist, then the natural log floored at
//! `f32::EPSILON`. LFR follows FunASR's `apply_lfr`, the front end SenseVoice was trained with
//! (and the one the Python server runs): 3 copies of the first frame are prepended, 7 frames
//! are stacked every 6, and the last window is completed with copies of the last frame, giving
//! `ceil(frames / 6)` rows of 560 values. CMVN is `(x + neg_mean) * inv_stddev` per dimension.
//!
//! Everything is computed in `f64` and returned as `f32`, the model's input type.

use std::f64::consts::PI;
use std::sync::Arc;

use rustfft::num_complex::Complex;

/// Sample rate the front end runs at.
const SAMPLE_RATE: f64 = 16_000.0;
/// Samples per analysis frame (25 ms).
pub(crate) const FRAME_LENGTH: usize = 400;
/// Samples between frame starts (10 ms).
pub(crate) const FRAME_SHIFT: usize = 160;
/// FFT size: the frame length rounded up to a power of two.
const FFT_LENGTH: usize = 512;
/// Mel bins per frame.
pub(crate) const NUM_MEL_BINS: usize = 80;
/// Lowest frequency covered by the mel bins.
const LOW_FREQ: f64 = 20.0;
/// Pre-emphasis coefficient.
const PREEMPHASIS: f64 = 0.97;

/// Kaldi's mel scale.
fn mel_scale(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

/// One triangular mel filter: its weights over a contiguous run of FFT bins.
struct MelBin {
    /// The first FFT bin with a non-zero weight.
    first: usize,
    /// The weights of bins `first..first + weights.len()`.
    weights: Vec<f64>,
}

/// The fbank computer: the window, the mel filters and the FFT tables, built once per model.
pub(crate) struct Fbank {
    /// The Hamming window.
    window: Vec<f64>,
    /// The mel filters.
    bins: Vec<MelBin>,
    /// The FFT (the same `rustfft` the Whisper front end uses).
    fft: Arc<dyn rustfft::Fft<f64>>,
}

impl Fbank {
    /// Builds the tables.
    pub(crate) fn new() -> Self {
        let window =
            (0..FRAME_LENGTH).map(|i| 0.54 - 0.46 * (2.0 * PI * i as f64 / (FRAME_LENGTH - 1) as f64).cos()).collect();
        let mel_low = mel_scale(LOW_FREQ);
        let mel_high = mel_scale(SAMPLE_RATE / 2.0);
        let delta = (mel_high - mel_low) / (NUM_MEL_BINS + 1) as f64;
        let bin_width = SAMPLE_RATE / FFT_LENGTH as f64;
        let bins = (0..NUM_MEL_BINS)
            .map(|b| {
                let left = mel_low + b as f64 * delta;
                let center = left + delta;
                let right = center + delta;
                let mut first = None;
                let mut weights = Vec::new();
                // The Nyquist bin (FFT_LENGTH / 2) is not covered, as in kaldi.
                for k in 0..FFT_LENGTH / 2 {
                    let mel = mel_scale(bin_width * k as f64);
                    if mel > left && mel < right {
                        first.get_or_insert(k);
                        let weight = if mel <= center {
                            (mel - left) / (center - left)
                        } else {
                            (right - mel) / (right - center)
                        };
                        weights.push(weight);
                    }
                }
                MelBin { first: first.unwrap_or(0), weights }
            })
            .collect();
        Self { window, bins, fft: rustfft::FftPlanner::new().plan_fft_forward(FFT_LENGTH) }
    }

    /// Log-mel features of `samples` (already scaled as the model wants): one row of
    /// [`NUM_MEL_BINS`] values per whole frame, flattened row-major. Fewer than
    /// [`FRAME_LENGTH`] samples give no frames.
    pub(crate) fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let frames = frame_count(samples.len());
        let mut out = Vec::with_capacity(frames * NUM_MEL_BINS);
        let mut frame = [0.0f64; FRAME_LENGTH];
        let mut spectrum = vec![Complex::new(0.0f64, 0.0); FFT_LENGTH];
        let mut scratch = vec![Complex::new(0.0f64, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = vec![0.0f64; FFT_LENGTH / 2 + 1];
        for f in 0..frames {
            let start = f * FRAME_SHIFT;
            let Some(chunk) = samples.get(start..start + FRAME_LENGTH) else { break };
            for (dst, &src) in frame.iter_mut().zip(chunk) {
                *dst = f64::from(src);
            }
            let mean = frame.iter().sum::<f64>() / FRAME_LENGTH as f64;
            for v in frame.iter_mut() {
                *v -= mean;
            }
            for i in (1..FRAME_LENGTH).rev() {
                frame[i] -= PREEMPHASIS * frame[i - 1];
            }
            frame[0] -= PREEMPHASIS * frame[0];
            spectrum.fill(Complex::new(0.0, 0.0));
            for ((dst, &v), &w) in spectrum.iter_mut().zip(frame.iter()).zip(self.window.iter()) {
                dst.re = v * w;
            }
            self.fft.process_with_scratch(&mut spectrum, &mut scratch);
            for (p, c) in power.iter_mut().zip(spectrum.iter()) {
                *p = c.norm_sqr();
            }
            for bin in &self.bins {
                let band = power.get(bin.first..).unwrap_or(&[]);
                let energy: f64 = bin.weights.iter().zip(band).map(|(w, p)| w * p).sum();
                out.push(energy.max(f64::from(f32::EPSILON)).ln() as f32);
            }
        }
        out
    }
}

/// Number of whole frames in `samples` samples (kaldi `snip_edges`).
pub(crate) fn frame_count(samples: usize) -> usize {
    if samples < FRAME_LENGTH { 0 } else { 1 + (samples - FRAME_LENGTH) / FRAME_SHIFT }
}

/// FunASR's low frame rate stacking of `feats` (rows of `dim` values): `ceil(rows / shift)`
/// rows of `dim * window` values, with `(window - 1) / 2` copies of the first row prepended and
/// the last row repeated to complete the final windows. No rows (or `window` / `shift` of 0)
/// give no rows.
pub(crate) fn lfr(feats: &[f32], dim: usize, window: usize, shift: usize) -> Vec<f32> {
    if dim == 0 || window == 0 || shift == 0 {
        return Vec::new();
    }
    let rows = feats.len() / dim;
    if rows == 0 {
        return Vec::new();
    }
    let left = (window - 1) / 2;
    let padded_rows = rows + left;
    // Row `i` of the left-padded sequence, clamped to the last row past the end.
    let row = |i: usize| -> &[f32] {
        let source = i.saturating_sub(left).min(rows - 1);
        &feats[source * dim..(source + 1) * dim]
    };
    let out_rows = rows.div_ceil(shift);
    let mut out = Vec::with_capacity(out_rows * dim * window);
    for r in 0..out_rows {
        for k in 0..window {
            let i = (r * shift + k).min(padded_rows - 1);
            out.extend_from_slice(row(i));
        }
    }
    out
}

/// Applies CMVN in place: every row of `neg_mean.len()` values becomes
/// `(x + neg_mean) * inv_stddev`.
pub(crate) fn cmvn(feats: &mut [f32], neg_mean: &[f32], inv_stddev: &[f32]) {
    if neg_mean.is_empty() {
        return;
    }
    for row in feats.chunks_mut(neg_mean.len()) {
        for ((x, m), s) in row.iter_mut().zip(neg_mean).zip(inv_stddev) {
            *x = (*x + m) * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_snips_edges() {
        assert_eq!(frame_count(0), 0);
        assert_eq!(frame_count(399), 0);
        assert_eq!(frame_count(400), 1);
        assert_eq!(frame_count(559), 1);
        assert_eq!(frame_count(560), 2);
        assert_eq!(frame_count(16_000), 98);
    }

    #[test]
    fn a_tone_peaks_in_its_mel_bin_and_silence_is_the_floor() {
        let fbank = Fbank::new();
        let silence = fbank.compute(&[0.0; 1200]);
        assert_eq!(silence.len(), frame_count(1200) * NUM_MEL_BINS);
        let floor = f32::EPSILON.ln();
        assert!(silence.iter().all(|&v| (v - floor).abs() < 1e-6));
        // The peak is the bin whose centre (mel_low + (b + 1) * delta) is nearest 1 kHz.
        let tone: Vec<f32> =
            (0..1600).map(|i| 8000.0 * (2.0 * PI * 1000.0 * i as f64 / 16_000.0).sin() as f32).collect();
        let feats = fbank.compute(&tone);
        let row = &feats[..NUM_MEL_BINS];
        let peak = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap();
        let centre_mel = mel_scale(1000.0);
        let delta = (mel_scale(8000.0) - mel_scale(LOW_FREQ)) / 81.0;
        let expected = ((centre_mel - mel_scale(LOW_FREQ)) / delta).round() as usize - 1;
        assert_eq!(peak, expected);
    }

    #[test]
    fn lfr_pads_left_with_the_first_frame_and_right_with_the_last() {
        // 8 frames of dim 1 with values 0..8: ceil(8 / 6) = 2 rows of 7.
        let feats: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let out = lfr(&feats, 1, 7, 6);
        assert_eq!(out, vec![0., 0., 0., 0., 1., 2., 3., 3., 4., 5., 6., 7., 7., 7.]);
        // Dim 2 keeps rows together.
        let feats = [1.0, 10.0, 2.0, 20.0];
        let out = lfr(&feats, 2, 7, 6);
        assert_eq!(out, vec![1., 10., 1., 10., 1., 10., 1., 10., 2., 20., 2., 20., 2., 20.]);
        assert!(lfr(&[], 80, 7, 6).is_empty());
        assert!(lfr(&[1.0; 80], 80, 7, 0).is_empty());
        // 13 frames: 3 rows; the second needs no padding, the third 3 copies of the last frame.
        let feats: Vec<f32> = (0..13).map(|v| v as f32).collect();
        let out = lfr(&feats, 1, 7, 6);
        assert_eq!(out.len(), 21);
        assert_eq!(&out[7..14], &[3., 4., 5., 6., 7., 8., 9.]);
        assert_eq!(&out[14..], &[9., 10., 11., 12., 12., 12., 12.]);
    }

    #[test]
    fn cmvn_shifts_then_scales() {
        let mut feats = vec![1.0, 2.0, 3.0, 4.0];
        cmvn(&mut feats, &[-1.0, 1.0], &[2.0, 0.5]);
        assert_eq!(feats, vec![0.0, 1.5, 4.0, 2.5]);
    }
}
