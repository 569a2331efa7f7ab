//! Speech-path benchmarks: `cargo bench -p xiaozhi-server --bench speech`.
//!
//! Prints one table: Opus encode/decode frames per second per core (16 and 24 kHz), Silero VAD
//! µs per 32 ms chunk unbatched and batched (1, 16, 64, 256 sessions), Whisper tiny.en real-time
//! factor, Piper real-time factor and time to first audio of a sentence. Models come from
//! `models/` (run `models/fetch.sh`) and `../shared/models/` (Whisper); a missing model skips
//! its rows with a note.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xiaozhi_server::audio::opus::{MAX_PACKET, OpusDecoder, OpusEncoder};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `f` repeatedly for about `budget` and returns the mean time per call.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    start.elapsed() / n.max(1)
}

/// A speech-like test signal: a few harmonics with a slow amplitude envelope.
fn signal(rate: u32, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let env = 0.5 + 0.5 * (2.0 * std::f32::consts::PI * 3.0 * t).sin();
            let v = (2.0 * std::f32::consts::PI * 180.0 * t).sin()
                + 0.5 * (2.0 * std::f32::consts::PI * 360.0 * t).sin()
                + 0.25 * (2.0 * std::f32::consts::PI * 1200.0 * t).sin();
            (v * env * 6000.0) as i16
        })
        .collect()
}

fn row(what: &str, figure: String) {
    println!("| {what:<52} | {figure:>28} |");
}

fn opus_rows() {
    for rate in [16_000u32, 24_000] {
        let frame = (rate * 60 / 1000) as usize;
        let pcm = signal(rate, frame * 50);
        for complexity in [0u8, 5, 10] {
            let mut encoder = OpusEncoder::new(rate, 60, 24_000, complexity).expect("encoder");
            let mut packet = vec![0u8; MAX_PACKET];
            let mut i = 0;
            let per = time_per_call(Duration::from_millis(700), || {
                let chunk = &pcm[(i % 50) * frame..(i % 50 + 1) * frame];
                encoder.encode(chunk, &mut packet).expect("encode");
                i += 1;
            });
            row(
                &format!("Opus encode {} kHz, 60 ms, complexity {complexity}", rate / 1000),
                format!("{:.0} frames/s", 1.0 / per.as_secs_f64()),
            );
        }
        let mut encoder = OpusEncoder::new(rate, 60, 24_000, 5).expect("encoder");
        let packets: Vec<Vec<u8>> = pcm
            .chunks(frame)
            .map(|c| {
                let mut p = vec![0u8; MAX_PACKET];
                let n = encoder.encode(c, &mut p).expect("encode");
                p.truncate(n);
                p
            })
            .collect();
        let mut decoder = OpusDecoder::new(rate).expect("decoder");
        let mut out = vec![0i16; frame];
        let mut i = 0;
        let per = time_per_call(Duration::from_millis(500), || {
            decoder.decode(&packets[i % packets.len()], &mut out).expect("decode");
            i += 1;
        });
        row(&format!("Opus decode {} kHz, 60 ms", rate / 1000), format!("{:.0} frames/s", 1.0 / per.as_secs_f64()));
    }
}

fn missing(what: &str, path: &Path) {
    row(what, format!("skipped: {} missing", path.display()));
}

fn main() {
    println!("| {:<52} | {:>28} |", "benchmark", "figure");
    println!("|{}|{}|", "-".repeat(54), "-".repeat(30));
    opus_rows();
    let library = root().join("models/lib/libonnxruntime.so");
    if !library.exists() {
        missing("ONNX models", &library);
        return;
    }
    xiaozhi_server::onnx::init(&library).expect("ONNX Runtime");
    models::vad_rows(&root());
    models::whisper_rows(&root());
    models::piper_rows(&root());
}

mod models {
    //! Rows that need the ONNX models.
    use std::path::Path;
    use std::time::{Duration, Instant};

    use xiaozhi_server::asr::whisper::WhisperAsr;
    use xiaozhi_server::audio::vad::{INPUT, STATE, SileroModel, Vad};
    use xiaozhi_server::config::{PiperConfig, SileroVadConfig, WhisperConfig};
    use xiaozhi_server::tts::piper::PiperTts;

    use super::{missing, row, signal, time_per_call};

    pub fn vad_rows(root: &Path) {
        let path = root.join("models/silero_vad.onnx");
        if !path.exists() {
            return missing("Silero VAD", &path);
        }
        let model = SileroModel::load(&path).expect("silero");
        // Unbatched: the per-session path, one run per 32 ms window, decisions included.
        let cfg = SileroVadConfig::default();
        let mut vad = Vad::new_unbatched(model.clone(), &cfg);
        let pcm = signal(16_000, 512);
        let per = time_per_call(Duration::from_millis(800), || {
            vad.push_blocking(&pcm).expect("vad");
        });
        row("Silero VAD unbatched (per 32 ms window)", format!("{:.1} µs", per.as_secs_f64() * 1e6));
        let input: Vec<f32> = signal(16_000, INPUT).iter().map(|&s| s as f32 / 32768.0).collect();
        let mut window = [0f32; INPUT];
        window.copy_from_slice(&input);
        for batch in [1usize, 16, 64, 256] {
            let inputs = vec![window; batch];
            let mut states = vec![[0f32; STATE]; batch];
            let per = time_per_call(Duration::from_millis(800), || {
                model.infer_batch(&inputs, &mut states).expect("batch");
            });
            row(
                &format!("Silero VAD batched, {batch} sessions (per window)"),
                format!("{:.1} µs", per.as_secs_f64() * 1e6 / batch as f64),
            );
        }
    }

    pub fn whisper_rows(root: &Path) {
        let dir = root.join("../shared/models/whisper-tiny-en");
        let wav = dir.join("test.wav");
        if !wav.exists() {
            return missing("Whisper tiny.en", &wav);
        }
        let pcm: Vec<i16> =
            hound::WavReader::open(&wav).expect("wav").into_samples().map(|s| s.expect("sample")).collect();
        let audio = pcm.len() as f64 / 16_000.0;
        for threads in [1u16, 2] {
            let cfg = WhisperConfig { model_dir: dir.display().to_string(), threads, ..WhisperConfig::default() };
            let whisper = WhisperAsr::load(&cfg).expect("whisper");
            let per = time_per_call(Duration::from_secs(4), || {
                whisper.transcribe_blocking(&pcm).expect("transcribe");
            });
            row(
                &format!("Whisper tiny.en int8, {threads} thread(s), {audio:.1} s clip"),
                format!("RTF {:.3} ({} ms)", per.as_secs_f64() / audio, per.as_millis()),
            );
        }
    }

    pub fn piper_rows(root: &Path) {
        let model = root.join("models/piper/en_US-joe-medium.onnx");
        if !model.exists() {
            return missing("Piper", &model);
        }
        let cfg = PiperConfig { model: model.display().to_string(), ..PiperConfig::default() };
        let piper = PiperTts::load(&cfg).expect("piper");
        for text in ["Sure.", "It is sunny and warm today, a good day for a walk in the park."] {
            let mut audio = 0.0;
            let per = time_per_call(Duration::from_secs(3), || {
                let clip = piper.synthesize_blocking(text).expect("piper");
                audio = clip.samples.len() as f64 / clip.sample_rate as f64;
            });
            row(
                &format!("Piper joe-medium, {:.1} s sentence: time to first audio", audio),
                format!("{} ms", per.as_millis()),
            );
            row(
                &format!("Piper joe-medium, {:.1} s sentence: real-time factor", audio),
                format!("{:.3}", per.as_secs_f64() / audio),
            );
        }
        let start = Instant::now();
        let _ = PiperTts::load(&cfg).expect("piper");
        row("Piper voice load", format!("{} ms", start.elapsed().as_millis()));
    }
}
