//! Real speech for the simulated microphone: `espeak-ng` synthesis, resampling to 16 kHz, silence
//! padding and WAV files.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

/// The sample rate of device audio (the microphone stream and ASR uploads).
pub const DEVICE_RATE: u32 = 16_000;

/// A fresh temporary `.wav` path, unique within this machine's temp dir for this process.
pub(crate) fn temp_wav_path() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("xiaozhi-e2e-{}-{n}.wav", std::process::id()))
}

/// The `espeak-ng` arguments that write `text` spoken by the `en-us` voice at `words_per_minute`
/// to the WAV file `out` (22050 Hz, 16-bit, mono).
pub(crate) fn espeak_args(text: &str, words_per_minute: u32, out: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        vec!["-v".into(), "en-us".into(), "-s".into(), words_per_minute.to_string().into(), "-w".into()];
    args.push(out.as_os_str().to_owned());
    // `--` so that text starting with `-` is never read as an option.
    args.push("--".into());
    args.push(text.into());
    args
}

/// Reads a 16-bit mono WAV file's bytes into samples and its sample rate.
pub fn read_wav(bytes: &[u8]) -> anyhow::Result<(Vec<i16>, u32)> {
    let reader = hound::WavReader::new(Cursor::new(bytes)).context("not a WAV file")?;
    let spec = reader.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        bail!("expected 16-bit integer mono WAV, got {spec:?}");
    }
    let samples = reader.into_samples::<i16>().collect::<Result<Vec<_>, _>>().context("truncated WAV data")?;
    Ok((samples, spec.sample_rate))
}

/// Speaks `text` with `espeak-ng` (voice `en-us`) and returns its samples and sample rate
/// (22050 Hz, 16-bit mono).
pub fn espeak_wav(text: &str) -> anyhow::Result<(Vec<i16>, u32)> {
    let path = temp_wav_path();
    let output = std::process::Command::new("espeak-ng")
        .args(espeak_args(text, 175, &path))
        .output()
        .context("running espeak-ng (Debian package `espeak-ng`)")?;
    let bytes = std::fs::read(&path);
    // Best effort: the file may not exist when espeak-ng failed.
    let _ = std::fs::remove_file(&path);
    if !output.status.success() {
        bail!("espeak-ng failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    read_wav(&bytes.context("reading espeak-ng output")?)
}

/// Speaks `text` with `espeak-ng` and resamples it to 16 kHz, the device microphone rate.
pub fn speech_16k(text: &str) -> anyhow::Result<Vec<i16>> {
    let (pcm, rate) = espeak_wav(text)?;
    Ok(xiaozhi_server::audio::resample::resample(&pcm, rate, DEVICE_RATE))
}

/// `pcm` (16 kHz) with `before_ms` of digital silence before it and `after_ms` after it.
pub fn with_silence(pcm: &[i16], before_ms: u32, after_ms: u32) -> Vec<i16> {
    let samples = |ms: u32| (u64::from(ms) * u64::from(DEVICE_RATE) / 1000) as usize;
    let mut out = vec![0i16; samples(before_ms)];
    out.extend_from_slice(pcm);
    out.resize(out.len() + samples(after_ms), 0);
    out
}

/// Encodes `pcm` as a 16-bit mono WAV file at `rate` Hz, in memory.
pub fn wav_bytes(pcm: &[i16], rate: u32) -> anyhow::Result<Vec<u8>> {
    let spec =
        hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut cursor = Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut cursor, spec)?;
    for &s in pcm {
        writer.write_sample(s)?;
    }
    writer.finalize()?;
    Ok(cursor.into_inner())
}

/// Writes `pcm` as a 16-bit mono WAV file at `rate` Hz to `path`.
pub fn write_wav(path: impl AsRef<Path>, pcm: &[i16], rate: u32) -> anyhow::Result<()> {
    let path = path.as_ref();
    std::fs::write(path, wav_bytes(pcm, rate)?).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn espeak_speaks_at_22050_hz() {
        let (pcm, rate) = espeak_wav("Hello there, how are you today?").unwrap();
        assert_eq!(rate, 22_050);
        let seconds = pcm.len() as f64 / f64::from(rate);
        assert!((0.8..5.0).contains(&seconds), "{seconds} s");
        assert!(pcm.iter().any(|s| s.unsigned_abs() > 3000), "speech should not be near-silent");
    }

    #[test]
    fn silence_padding_and_wav_round_trip() {
        let padded = with_silence(&[1, 2, 3], 100, 50);
        assert_eq!(padded.len(), 1600 + 3 + 800);
        assert_eq!(&padded[1600..1603], &[1, 2, 3]);
        assert!(padded[..1600].iter().chain(&padded[1603..]).all(|&s| s == 0));
        let (back, rate) = read_wav(&wav_bytes(&padded, DEVICE_RATE).unwrap()).unwrap();
        assert_eq!((back, rate), (padded, DEVICE_RATE));
        assert!(read_wav(b"RIFF junk").is_err());
    }
}
