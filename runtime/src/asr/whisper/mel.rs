//! Whisper's log-mel front end: 30 s of 16 kHz audio → 80 × 3000 features.
//!
//! The recipe is `WhisperFeatureExtractor`'s (and the numpy reference in the model folder's
//! `convert/ort_greedy.py`): pad or cut to 480 000 samples, STFT with n_fft 400 / hop 160 / a
//! periodic Hann window over centred, reflect-padded frames, power spectrum, 80 Slaney mel filters
//! (0–8000 Hz, Slaney area normalisation), `log10(max(x, 1e-10))`, drop the last frame, clamp to
//! `max - 8`, then `(x + 4) / 4`. Computed in `f64` like numpy, returned as `f32`.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// The sample rate the features are defined for.
pub const SAMPLE_RATE: usize = 16_000;

/// Samples in one 30 s window.
pub const N_SAMPLES: usize = 30 * SAMPLE_RATE;

/// FFT length (25 ms).
pub const N_FFT: usize = 400;

/// Hop between frames (10 ms).
pub const HOP: usize = 160;

/// Frames in one window after the last one is dropped.
pub const N_FRAMES: usize = N_SAMPLES / HOP;

/// Frequency bins of the one-sided spectrum.
const N_BINS: usize = N_FFT / 2 + 1;

/// One triangular mel filter, stored over the bins where it is non-zero.
#[derive(Debug, Clone)]
struct Filter {
    /// First bin with a non-zero weight.
    start: usize,
    /// The weights of bins `start..start + weights.len()`.
    weights: Vec<f64>,
}

/// The precomputed window, filterbank and FFT plan. Build it once per model and share it.
pub struct LogMel {
    /// Number of mel bands (80 for every Whisper before large-v3).
    n_mels: usize,
    /// Periodic Hann window of length [`N_FFT`].
    window: Vec<f64>,
    /// The mel filters, sparse.
    filters: Vec<Filter>,
    /// The forward FFT of length [`N_FFT`].
    fft: Arc<dyn Fft<f64>>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel").field("n_mels", &self.n_mels).finish_non_exhaustive()
    }
}

/// Hz → mel on the Slaney scale (linear below 1 kHz, logarithmic above).
fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz { min_log_mel + (hz.max(1e-10) / min_log_hz).ln() / logstep } else { hz / f_sp }
}

/// Mel → Hz on the Slaney scale.
fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel { min_log_hz * (logstep * (mel - min_log_mel)).exp() } else { f_sp * mel }
}

/// The dense filterbank `[n_mels][N_BINS]` (librosa `filters.mel(sr=16000, n_fft=400, n_mels)`,
/// Slaney scale and normalisation, 0–8000 Hz).
fn mel_filterbank(n_mels: usize) -> Vec<Vec<f64>> {
    let nyquist = SAMPLE_RATE as f64 / 2.0;
    let fft_freqs: Vec<f64> = (0..N_BINS).map(|i| nyquist * i as f64 / (N_BINS - 1) as f64).collect();
    let (mel_min, mel_max) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let points = n_mels + 2;
    let hz_points: Vec<f64> =
        (0..points).map(|i| mel_to_hz(mel_min + (mel_max - mel_min) * i as f64 / (points - 1) as f64)).collect();
    hz_points
        .windows(3)
        .map(|edges| {
            let (left, centre, right) = (edges[0], edges[1], edges[2]);
            let norm = 2.0 / (right - left);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - left) / (centre - left);
                    let upper = (right - f) / (right - centre);
                    lower.min(upper).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

impl LogMel {
    /// Precomputes the window, the `n_mels` filters and the FFT plan.
    pub fn new(n_mels: usize) -> Self {
        let window =
            (0..N_FFT).map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()).collect();
        let filters = mel_filterbank(n_mels)
            .into_iter()
            .map(|dense| {
                let start = dense.iter().position(|&w| w > 0.0).unwrap_or(0);
                let end = dense.iter().rposition(|&w| w > 0.0).map_or(start, |e| e + 1);
                Filter { start, weights: dense.get(start..end).unwrap_or_default().to_vec() }
            })
            .collect();
        let fft = FftPlanner::new().plan_fft_forward(N_FFT);
        Self { n_mels, window, filters, fft }
    }

    /// Number of mel bands.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Computes the features of one 30 s window: `pcm` (16 kHz mono) is padded with silence or
    /// cut to [`N_SAMPLES`]. Returns `[n_mels][N_FRAMES]`, row-major, ready for `input_features`.
    pub fn compute(&self, pcm: &[i16]) -> Vec<f32> {
        let used = &pcm[..pcm.len().min(N_SAMPLES)];
        // Centred frames: the 30 s window with `N_FFT / 2` samples reflected at each end
        // (numpy's "reflect": the edge sample itself is not repeated).
        let half = N_FFT / 2;
        let mut signal = vec![0.0f64; N_SAMPLES + 2 * half];
        for (dst, &s) in signal[half..].iter_mut().zip(used) {
            *dst = f64::from(s) / 32768.0;
        }
        for k in 1..=half {
            signal[half - k] = signal[half + k];
            signal[half + N_SAMPLES - 1 + k] = signal[half + N_SAMPLES - 1 - k];
        }

        // Frames that start after the last non-zero sample are pure silence (the padding): zero
        // power in every band, so the FFT is skipped and the result is the same `log10(1e-10)`.
        let audible = signal.iter().rposition(|&s| s != 0.0).map_or(0, |last| (last / HOP + 1).min(N_FRAMES));
        let floor = 1e-10f64.log10();
        let mut log_spec = vec![floor; self.n_mels * N_FRAMES];
        let mut buffer = vec![Complex::new(0.0f64, 0.0); N_FFT];
        let mut scratch = vec![Complex::new(0.0f64, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = [0.0f64; N_BINS];
        // The recipe computes 3001 frames and drops the last one, so frames stop at N_FRAMES.
        for frame in 0..audible {
            let samples = &signal[frame * HOP..frame * HOP + N_FFT];
            for ((dst, &s), &w) in buffer.iter_mut().zip(samples).zip(&self.window) {
                *dst = Complex::new(s * w, 0.0);
            }
            self.fft.process_with_scratch(&mut buffer, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buffer) {
                *p = c.norm_sqr();
            }
            for (mel, filter) in self.filters.iter().enumerate() {
                let bins = power.get(filter.start..).unwrap_or_default();
                let energy: f64 = filter.weights.iter().zip(bins).map(|(w, p)| w * p).sum();
                log_spec[mel * N_FRAMES + frame] = energy.max(1e-10).log10();
            }
        }

        let max = log_spec.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = max - 8.0;
        log_spec.into_iter().map(|x| ((x.max(min) + 4.0) / 4.0) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from the numpy recipe (`convert/ort_greedy.py`, `log_mel`) on
    /// `whisper-tiny-en/test.wav`: features at these mel bins × frames.
    const BINS: [usize; 8] = [0, 5, 13, 27, 40, 55, 66, 79];
    const FRAMES: [usize; 10] = [30, 60, 100, 140, 180, 220, 300, 333, 390, 420];
    const GRID: [[f32; 10]; 8] = [
        [0.551372, -0.683900, -0.124982, 0.270563, 0.446152, 0.369387, 0.424351, 0.439250, 0.473854, 0.573481],
        [0.762343, -0.683900, 0.839127, 0.845409, 0.992221, 0.809772, 0.761148, 0.673340, 0.797276, 0.823911],
        [0.913279, -0.683900, -0.014233, 0.990234, 0.954002, 0.739627, 0.915420, 0.827771, 1.067194, 1.063949],
        [0.897894, -0.683900, -0.110300, 0.833378, -0.464685, 0.622744, 0.661652, -0.036092, -0.280987, -0.654088],
        [-0.520068, -0.683900, 0.241442, -0.139107, 0.441684, 0.156934, -0.526869, -0.180096, 0.344906, 0.566636],
        [0.116308, -0.683900, -0.140903, 0.291289, 0.175923, 0.004369, 0.118115, 0.234841, 0.280201, -0.084309],
        [-0.333060, -0.683900, 0.223668, -0.324931, -0.467995, -0.498026, -0.683900, -0.228527, -0.580225, -0.683900],
        [-0.402876, -0.683900, -0.233751, -0.506631, -0.345635, -0.405675, -0.443720, -0.454325, -0.369720, -0.170865],
    ];
    /// The mean of each mel row over all 3000 frames.
    const ROW_MEANS: [f32; 80] = [
        -0.552509, -0.517947, -0.517514, -0.520483, -0.511644, -0.511817, -0.511558, -0.508554, -0.507080, -0.507682,
        -0.505790, -0.510398, -0.517144, -0.519795, -0.530860, -0.538497, -0.546155, -0.556428, -0.565298, -0.572532,
        -0.579783, -0.587228, -0.593320, -0.599408, -0.602875, -0.604855, -0.605108, -0.606401, -0.606010, -0.604329,
        -0.602581, -0.601032, -0.598426, -0.591196, -0.589700, -0.589373, -0.585686, -0.589078, -0.586369, -0.589074,
        -0.586859, -0.589396, -0.592362, -0.595297, -0.596780, -0.595020, -0.589488, -0.581315, -0.570696, -0.561829,
        -0.559240, -0.563356, -0.572545, -0.584298, -0.590356, -0.587092, -0.570898, -0.555573, -0.553415, -0.558447,
        -0.566059, -0.568251, -0.580985, -0.602927, -0.627570, -0.640486, -0.644340, -0.644730, -0.644960, -0.646675,
        -0.650312, -0.652092, -0.652112, -0.649712, -0.645501, -0.626772, -0.608185, -0.604198, -0.619142, -0.641266,
    ];
    /// The largest feature.
    const MAX: f32 = 1.3161;

    fn test_wav() -> Vec<i16> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models/whisper-tiny-en/test.wav");
        let mut reader = hound::WavReader::open(&path)
            .unwrap_or_else(|e| panic!("{} is needed by this test (the shared Whisper models): {e}", path.display()));
        assert_eq!(reader.spec().sample_rate, 16_000);
        reader.samples::<i16>().map(|s| s.unwrap()).collect()
    }

    #[test]
    fn features_match_the_numpy_reference() {
        let mel = LogMel::new(80);
        let features = mel.compute(&test_wav());
        assert_eq!(features.len(), 80 * N_FRAMES);
        let mut worst = 0.0f32;
        for (row, &bin) in GRID.iter().zip(&BINS) {
            for (&expected, &frame) in row.iter().zip(&FRAMES) {
                let got = features[bin * N_FRAMES + frame];
                worst = worst.max((got - expected).abs());
            }
        }
        for (bin, &expected) in ROW_MEANS.iter().enumerate() {
            let row = &features[bin * N_FRAMES..(bin + 1) * N_FRAMES];
            let mean = row.iter().map(|&x| f64::from(x)).sum::<f64>() / N_FRAMES as f64;
            worst = worst.max((mean as f32 - expected).abs());
        }
        let max = features.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        worst = worst.max((max - MAX).abs());
        assert!(worst < 1e-3, "max abs diff from the numpy reference: {worst}");
    }

    #[test]
    fn filterbank_matches_librosa() {
        let fb = mel_filterbank(80);
        // Values of librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (via the numpy recipe).
        assert!((fb[0][1] - 0.024862593984176087).abs() < 1e-12);
        assert!((fb[1][2] - 0.022871772096078016).abs() < 1e-12);
        assert_eq!(fb[40][100], 0.0);
        let total: f64 = fb.iter().flatten().sum();
        assert!((total - 1.9990241029178577).abs() < 1e-9, "{total}");
        let nonzero: usize = LogMel::new(80).filters.iter().map(|f| f.weights.len()).sum();
        assert_eq!(nonzero, 391);
    }

    #[test]
    fn a_tone_lights_up_its_own_band() {
        // 1 kHz sine, 1 s: the loudest band is the one whose centre is nearest 1 kHz.
        let pcm: Vec<i16> = (0..16_000)
            .map(|n| (10_000.0 * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 16_000.0).sin()) as i16)
            .collect();
        let mel = LogMel::new(80);
        let features = mel.compute(&pcm);
        let frame = 50;
        let loudest =
            (0..80).max_by(|&a, &b| features[a * N_FRAMES + frame].total_cmp(&features[b * N_FRAMES + frame])).unwrap();
        let centres: Vec<f64> = (1..=80).map(|i| mel_to_hz(hz_to_mel(8000.0) * i as f64 / 81.0)).collect();
        let nearest =
            (0..80).min_by(|&a, &b| (centres[a] - 1000.0).abs().total_cmp(&(centres[b] - 1000.0).abs())).unwrap();
        assert!(loudest.abs_diff(nearest) <= 1, "loudest band {loudest}, 1 kHz is band {nearest}");
        // The padding (after 1 s) sits at the floor: max - 8 → the minimum value.
        let min = features.iter().copied().fold(f32::INFINITY, f32::min);
        assert_eq!(features[10 * N_FRAMES + 2000], min);
    }

    #[test]
    fn empty_and_overlong_input() {
        let mel = LogMel::new(80);
        // Silence: log10(1e-10) everywhere → (−10 + 4) / 4.
        let silent = mel.compute(&[]);
        assert!(silent.iter().all(|&x| (x - -1.5).abs() < 1e-6));
        // Longer than 30 s: only the first 30 s count.
        let mut long = vec![0i16; N_SAMPLES + 16_000];
        for (i, s) in long.iter_mut().enumerate().skip(N_SAMPLES) {
            *s = if i % 2 == 0 { 20_000 } else { -20_000 };
        }
        assert_eq!(mel.compute(&long), silent);
    }
}
