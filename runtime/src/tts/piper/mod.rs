//! Piper (VITS) voices in process through ONNX Runtime, phonemes from the espeak-ng program.
//!
//! A voice is a `*.onnx` model and its `*.onnx.json` config (sample rate, espeak voice,
//! `phoneme_id_map`, default scales, number of speakers), as published by rhasspy/piper and
//! fetched by `models/fetch.sh`. Synthesis follows Piper: the text is phonemized sentence by
//! sentence (see `phonemes`), each sentence's ids run through the model with `scales` =
//! (noise, length, noise_w) and `sid` for multi-speaker voices, and each sentence's audio is
//! normalised to full scale (Piper's `audio_float_to_int16`) before the sentences are joined.

mod phonemes;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use serde::Deserialize;

use self::phonemes::{Espeak, PhonemeIdMap};
use super::{AudioChunk, AudioStream, silence};
use crate::audio::AudioClip;
use crate::config::PiperConfig;
use crate::onnx;
use crate::remote::ProviderError;

/// Piper's defaults when the voice config has no `inference` section.
const DEFAULT_NOISE_SCALE: f32 = 0.667;
const DEFAULT_LENGTH_SCALE: f32 = 1.0;
const DEFAULT_NOISE_W: f32 = 0.8;

/// The largest value of a 16-bit sample, the target peak of every sentence.
const MAX_WAV_VALUE: f32 = 32767.0;

/// The parts of a Piper voice config (`*.onnx.json`) that synthesis needs.
#[derive(Debug, Deserialize)]
struct VoiceFile {
    audio: AudioSection,
    #[serde(default)]
    espeak: Option<EspeakSection>,
    #[serde(default)]
    inference: InferenceSection,
    #[serde(default)]
    phoneme_type: Option<String>,
    #[serde(default)]
    num_speakers: Option<u32>,
    #[serde(default)]
    num_symbols: Option<usize>,
    #[serde(default)]
    default_speaker_id: Option<i64>,
    #[serde(default)]
    vowel_clusters: Vec<Vec<String>>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}

/// `audio` of the voice config.
#[derive(Debug, Deserialize)]
struct AudioSection {
    sample_rate: u32,
}

/// `espeak` of the voice config.
#[derive(Debug, Deserialize)]
struct EspeakSection {
    voice: String,
}

/// `inference` of the voice config: the voice's default scales.
#[derive(Debug, Default, Deserialize)]
struct InferenceSection {
    noise_scale: Option<f32>,
    length_scale: Option<f32>,
    noise_w: Option<f32>,
}

/// A loaded voice, shared with the blocking synthesis tasks.
struct Voice {
    /// `Session::run` takes `&mut self`, so concurrent syntheses serialise here. One model copy
    /// (63 MB, with its own thread pool) per voice is what keeps memory and cores in check; the
    /// lock is only taken inside blocking tasks, never across an `.await`.
    session: Mutex<Session>,
    /// The model file, for error messages.
    model: PathBuf,
    /// The phonemizer.
    espeak: Espeak,
    /// Phoneme → ids.
    ids: PhonemeIdMap,
    /// Output sample rate.
    sample_rate: u32,
    /// The `scales` input: noise, length, noise_w.
    scales: [f32; 3],
    /// The `sid` input, when the model has one.
    sid: Option<i64>,
    /// The name of the audio output (the model's first output).
    output: String,
}

/// A Piper voice through ONNX Runtime.
pub struct PiperTts {
    voice: Arc<Voice>,
}

impl std::fmt::Debug for PiperTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperTts")
            .field("model", &self.voice.model)
            .field("sample_rate", &self.voice.sample_rate)
            .field("scales", &self.voice.scales)
            .field("sid", &self.voice.sid)
            .finish_non_exhaustive()
    }
}

/// Reads and checks a voice config.
fn read_voice_file(path: &Path) -> Result<VoiceFile, ProviderError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound { ": run models/fetch.sh" } else { "" };
        ProviderError::Config(format!("Piper voice config {}: {e}{hint}", path.display()))
    })?;
    let voice: VoiceFile = serde_json::from_str(&text)
        .map_err(|e| ProviderError::Config(format!("Piper voice config {}: {e}", path.display())))?;
    if !(1..=384_000).contains(&voice.audio.sample_rate) {
        return Err(ProviderError::Config(format!(
            "Piper voice config {}: audio.sample_rate {} is not a sample rate",
            path.display(),
            voice.audio.sample_rate
        )));
    }
    Ok(voice)
}

/// `value` if it is finite and at least `min` (strictly above it when `strict`).
fn check_scale(name: &str, value: f32, min: f32, strict: bool) -> Result<f32, ProviderError> {
    let ok = value.is_finite() && if strict { value > min } else { value >= min };
    if ok {
        Ok(value)
    } else {
        let bound = if strict { "above" } else { "at least" };
        Err(ProviderError::Config(format!("piper {name} must be a number {bound} {min}, got {value}")))
    }
}

impl PiperTts {
    /// Loads the voice: reads `cfg.config` (empty = `<model>.json`), checks that the espeak
    /// program runs with the voice's espeak voice, and loads `cfg.model` with
    /// [`onnx::session_builder`] (ONNX Runtime must be initialised) on `cfg.threads` intra-op
    /// threads. Every failure is [`ProviderError::Config`] with the file or program and the fix.
    pub fn load(cfg: &PiperConfig) -> Result<Self, ProviderError> {
        let model = PathBuf::from(&cfg.model);
        if !model.is_file() {
            return Err(ProviderError::Config(format!(
                "Piper voice model {} not found: run models/fetch.sh",
                model.display()
            )));
        }
        let config_path = if cfg.config.is_empty() {
            PathBuf::from(format!("{}.json", cfg.model))
        } else {
            PathBuf::from(&cfg.config)
        };
        let file = read_voice_file(&config_path)?;
        let in_config =
            |message: String| ProviderError::Config(format!("Piper voice config {}: {message}", config_path.display()));
        match file.phoneme_type.as_deref() {
            None | Some("espeak") => {}
            Some(other) => {
                return Err(in_config(format!("phoneme_type {other:?} is not supported (only \"espeak\")")));
            }
        }
        let espeak_voice =
            file.espeak.as_ref().map(|e| e.voice.clone()).ok_or_else(|| in_config("no espeak.voice".into()))?;
        let ids = PhonemeIdMap::new(&file.phoneme_id_map, &file.vowel_clusters, file.num_symbols).map_err(in_config)?;
        let scales = [
            check_scale(
                "noise_scale",
                cfg.noise_scale.or(file.inference.noise_scale).unwrap_or(DEFAULT_NOISE_SCALE),
                0.0,
                false,
            )?,
            check_scale(
                "length_scale",
                cfg.length_scale.or(file.inference.length_scale).unwrap_or(DEFAULT_LENGTH_SCALE),
                0.0,
                true,
            )?,
            check_scale("noise_w", cfg.noise_w.or(file.inference.noise_w).unwrap_or(DEFAULT_NOISE_W), 0.0, false)?,
        ];
        let num_speakers = file.num_speakers.unwrap_or(1).max(1);
        let speaker = if num_speakers > 1 {
            let sid = cfg.speaker_id.or(file.default_speaker_id).unwrap_or(0);
            if sid < 0 || sid >= i64::from(num_speakers) {
                return Err(in_config(format!("speaker_id {sid} is outside 0..{num_speakers}")));
            }
            Some(sid)
        } else {
            if cfg.speaker_id.is_some_and(|sid| sid != 0) {
                tracing::warn!(model = %model.display(), "piper speaker_id ignored: the voice has one speaker");
            }
            None
        };

        let espeak = Espeak::new(&cfg.espeak, &espeak_voice);
        espeak.check()?;

        let threads = usize::from(cfg.threads.max(1));
        let session_err =
            |message: String| ProviderError::Config(format!("Piper voice model {}: {message}", model.display()));
        let session = onnx::session_builder()
            .map_err(|e| session_err(e.to_string()))?
            .with_intra_threads(threads)
            .map_err(|e| session_err(e.to_string()))?
            .commit_from_file(&model)
            .map_err(|e| session_err(e.to_string()))?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for name in ["input", "input_lengths", "scales"] {
            if !inputs.contains(&name) {
                return Err(session_err(format!("not a Piper voice: no input `{name}` (inputs: {inputs:?})")));
            }
        }
        let sid = match (inputs.contains(&"sid"), speaker) {
            (true, speaker) => Some(speaker.unwrap_or(0)),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(session_err(format!(
                    "the config says {num_speakers} speakers but the model has no `sid` input"
                )));
            }
        };
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_owned())
            .ok_or_else(|| session_err("the model has no outputs".into()))?;
        tracing::info!(
            model = %model.display(),
            sample_rate = file.audio.sample_rate,
            espeak_voice = %espeak_voice,
            ?scales,
            ?sid,
            threads,
            "Piper voice loaded"
        );
        Ok(Self {
            voice: Arc::new(Voice {
                session: Mutex::new(session),
                model,
                espeak,
                ids,
                sample_rate: file.audio.sample_rate,
                scales,
                sid,
                output,
            }),
        })
    }

    /// Synthesizes `text` on the calling thread (phonemes, then one model run per sentence).
    /// Empty or blank text gives an empty clip without running anything.
    pub fn synthesize_blocking(&self, text: &str) -> Result<AudioClip, ProviderError> {
        self.voice.synthesize(text)
    }

    /// The voice's sample rate (every clip is at this rate).
    pub fn sample_rate(&self) -> u32 {
        self.voice.sample_rate
    }

    /// The model input ids of each sentence of `text`.
    #[cfg(test)]
    fn phoneme_ids(&self, text: &str) -> Result<Vec<Vec<i64>>, ProviderError> {
        let sentences = self.voice.espeak.phonemize(text)?;
        Ok(sentences.iter().map(|s| self.voice.ids.ids(s).ids).collect())
    }
}

impl Voice {
    /// Phonemes, inference and conversion for one piece of text.
    fn synthesize(&self, text: &str) -> Result<AudioClip, ProviderError> {
        let mut samples = Vec::new();
        if !text.trim().is_empty() {
            for sentence in self.espeak.phonemize(text)? {
                let ids = self.ids.ids(&sentence);
                if !ids.missing.is_empty() {
                    let missing: String = ids.missing.iter().collect();
                    tracing::debug!(count = ids.missing.len(), %missing, "phonemes without ids skipped");
                }
                let audio = self.infer(&ids.ids)?;
                float_to_i16(&audio, &mut samples);
            }
        }
        Ok(AudioClip { samples, sample_rate: self.sample_rate })
    }

    /// Runs the model on one sentence's ids and returns its raw audio.
    fn infer(&self, ids: &[i64]) -> Result<Vec<f32>, ProviderError> {
        let err = |e: ort::Error| ProviderError::Protocol {
            url: self.model.display().to_string(),
            message: format!("Piper inference: {e}"),
        };
        let lengths = [ids.len() as i64];
        let sid = [self.sid.unwrap_or(0)];
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            ("input".into(), TensorRef::from_array_view(([1usize, ids.len()], ids)).map_err(err)?.into()),
            ("input_lengths".into(), TensorRef::from_array_view(([1usize], &lengths[..])).map_err(err)?.into()),
            ("scales".into(), TensorRef::from_array_view(([3usize], &self.scales[..])).map_err(err)?.into()),
        ];
        if self.sid.is_some() {
            inputs.push(("sid".into(), TensorRef::from_array_view(([1usize], &sid[..])).map_err(err)?.into()));
        }
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session.run(inputs).map_err(err)?;
        let output = outputs.get(self.output.as_str()).ok_or_else(|| ProviderError::Protocol {
            url: self.model.display().to_string(),
            message: format!("Piper inference: no output `{}`", self.output),
        })?;
        let (_, audio) = output.try_extract_tensor::<f32>().map_err(err)?;
        Ok(audio.to_vec())
    }
}

/// Piper's `audio_float_to_int16`: scales the audio so its peak is full scale (peaks under 0.01
/// are treated as 0.01, so near-silence stays quiet), clips, and truncates to 16 bits. NaNs
/// become 0.
fn float_to_i16(audio: &[f32], out: &mut Vec<i16>) {
    let peak = audio.iter().map(|s| s.abs()).filter(|s| s.is_finite()).fold(0.0f32, f32::max);
    let scale = MAX_WAV_VALUE / peak.max(0.01);
    out.extend(audio.iter().map(|&s| (s * scale).clamp(-MAX_WAV_VALUE, MAX_WAV_VALUE) as i16));
}

/// The clauses of `text`, spoken one by one: cut after a comma-like or sentence mark (`，、,;；:：。.!！?？`
/// and a newline), merging pieces with fewer than [`MIN_CLAUSE_CHARS`] letters into the next so
/// that each inference has enough context.
fn clauses(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if matches!(c, '，' | '、' | ',' | ';' | '；' | ':' | '：' | '。' | '.' | '!' | '！' | '?' | '？' | '\n')
            && current.chars().filter(|c| c.is_alphanumeric()).count() >= MIN_CLAUSE_CHARS
        {
            out.push(std::mem::take(&mut current));
        }
    }
    if current.chars().any(char::is_alphanumeric) {
        out.push(current);
    } else if let Some(last) = out.last_mut() {
        last.push_str(&current);
    }
    out
}

/// A clause shorter than this (letters and digits) is merged into the next.
const MIN_CLAUSE_CHARS: usize = 4;

#[async_trait]
impl super::Tts for PiperTts {
    /// Synthesizes clause by clause on the blocking pool: each clause's audio is a chunk as soon as
    /// it is inferred, so the first words play while the rest is computed. Dropping the stream
    /// stops after the clause in progress.
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        if text.trim().is_empty() {
            return Ok(silence());
        }
        let voice = Arc::clone(&self.voice);
        let clauses = clauses(text);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            for clause in clauses {
                let result = voice
                    .synthesize(&clause)
                    .map(|clip| AudioChunk::Pcm { samples: clip.samples, sample_rate: clip.sample_rate });
                let failed = result.is_err();
                if tx.blocking_send(result).is_err() || failed {
                    break;
                }
            }
        });
        Ok(Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })))
    }

    /// Runs [`PiperTts::synthesize_blocking`] on the blocking pool. Dropping the future lets the
    /// running sentence finish in the background and discards it.
    async fn synthesize(&self, text: &str) -> Result<AudioClip, ProviderError> {
        if text.trim().is_empty() {
            return Ok(AudioClip { samples: Vec::new(), sample_rate: self.voice.sample_rate });
        }
        let voice = Arc::clone(&self.voice);
        let text = text.to_owned();
        tokio::task::spawn_blocking(move || voice.synthesize(&text)).await.map_err(|e| ProviderError::Protocol {
            url: self.voice.model.display().to_string(),
            message: format!("Piper synthesis task failed: {e}"),
        })?
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::tts::Tts;

    fn model_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/piper/en_US-joe-medium.onnx")
    }

    fn config() -> PiperConfig {
        let model = model_path();
        assert!(model.is_file(), "{} is missing: run models/fetch.sh", model.display());
        PiperConfig { model: model.display().to_string(), ..PiperConfig::default() }
    }

    fn load(cfg: &PiperConfig) -> PiperTts {
        onnx::init_for_tests();
        PiperTts::load(cfg).unwrap_or_else(|e| panic!("{e}: run models/fetch.sh"))
    }

    fn rms(samples: &[i16]) -> f64 {
        let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        (sum / samples.len().max(1) as f64).sqrt()
    }

    #[test]
    fn a_sentence_becomes_plausible_speech() {
        let tts = load(&config());
        assert_eq!(tts.sample_rate(), 22_050);
        let started = Instant::now();
        let clip = tts.synthesize_blocking("Hello, how are you today?").unwrap();
        let elapsed = started.elapsed();
        assert_eq!(clip.sample_rate, 22_050);
        let ms = clip.duration_ms();
        assert!((500..=5000).contains(&ms), "{ms} ms");
        let level = rms(&clip.samples);
        assert!(level > 1000.0, "RMS {level}");
        let peak = clip.samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!(peak >= 32_000, "each sentence is normalised to full scale, peak {peak}");
        // Speech has pauses and loud parts: compare 20 ms frames.
        let frames: Vec<f64> = clip.samples.chunks(441).map(rms).collect();
        let quiet = frames.iter().filter(|&&r| r < level / 10.0).count();
        assert!(quiet > 0 && quiet < frames.len() / 2, "{quiet} quiet frames of {}", frames.len());
        println!(
            "piper: {ms} ms of audio in {:.0} ms (real-time factor {:.3})",
            elapsed.as_secs_f64() * 1000.0,
            elapsed.as_secs_f64() * 1000.0 / ms as f64
        );
    }

    #[test]
    fn length_scale_slows_speech_down() {
        // No duration noise, so the lengths are exact.
        let base = PiperConfig { noise_w: Some(0.0), ..config() };
        let normal = load(&PiperConfig { length_scale: Some(1.0), ..base.clone() });
        let slow = load(&PiperConfig { length_scale: Some(1.5), ..base });
        let text = "The quick brown fox jumps over the lazy dog.";
        let a = normal.synthesize_blocking(text).unwrap().samples.len() as f64;
        let b = slow.synthesize_blocking(text).unwrap().samples.len() as f64;
        assert!(b > a * 1.3 && b < a * 1.7, "1.0 → {a} samples, 1.5 → {b}");
    }

    #[test]
    fn ids_are_framed_like_piper() {
        let tts = load(&config());
        let sentences = tts.phoneme_ids("Hi").unwrap();
        assert_eq!(sentences.len(), 1);
        let ids = &sentences[0];
        // en_US-joe-medium: ^ = 1, $ = 2, _ = 0; "Hi" is h ˈ a ɪ (20 120 14 74).
        assert_eq!(ids, &vec![1, 0, 20, 0, 120, 0, 14, 0, 74, 0, 2]);
        let two = tts.phoneme_ids("Yes. No?").unwrap();
        assert_eq!(two.len(), 2);
        // Each sentence ends with its punctuation (. = 10, ? = 13), a pad and $.
        assert_eq!(two[0].get(two[0].len() - 3..), Some(&[10, 0, 2][..]));
        assert_eq!(two[1].get(two[1].len() - 3..), Some(&[13, 0, 2][..]));
        for ids in &two {
            assert_eq!(ids.first(), Some(&1));
            assert!(ids.iter().skip(1).step_by(2).all(|&id| id == 0), "pads between phonemes: {ids:?}");
        }
    }

    #[test]
    fn two_sentences_are_both_spoken() {
        let tts = load(&PiperConfig { noise_w: Some(0.0), ..config() });
        let one = tts.synthesize_blocking("It is sunny.").unwrap();
        let both = tts.synthesize_blocking("It is sunny. Let us go outside and play.").unwrap();
        assert!(both.samples.len() > one.samples.len() * 2, "{} vs {}", both.samples.len(), one.samples.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn speaking_streams_clause_by_clause() {
        assert_eq!(clauses("Hello there, how are you today? Fine."), ["Hello there,", " how are you today?", " Fine."]);
        assert_eq!(clauses("好的，我们走吧。"), ["好的，我们走吧。"], "a two-letter clause joins the next");
        assert_eq!(clauses("Yes, it is."), ["Yes, it is."]);
        let tts = load(&config());
        let mut stream =
            crate::tts::Tts::speak(&tts, "The first clause is here, and the second one follows it.").await.unwrap();
        let mut chunks = Vec::new();
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            chunks.push(chunk.unwrap());
        }
        assert_eq!(chunks.len(), 2, "one chunk per clause");
        assert!(chunks.iter().all(|c| c.duration_ms() > 300));
    }

    #[tokio::test]
    async fn the_trait_synthesizes_off_the_runtime_and_skips_blank_text() {
        let tts: Arc<dyn Tts> = Arc::new(load(&config()));
        let clip = tts.synthesize("Good morning.").await.unwrap();
        assert!(clip.duration_ms() > 300, "{} ms", clip.duration_ms());
        for blank in ["", "   ", "\n\t"] {
            let clip = tts.synthesize(blank).await.unwrap();
            assert!(clip.samples.is_empty());
            assert_eq!(clip.sample_rate, 22_050);
        }
        // Concurrent calls share the one session.
        let (a, b) = tokio::join!(tts.synthesize("First."), tts.synthesize("Second."));
        assert!(!a.unwrap().samples.is_empty() && !b.unwrap().samples.is_empty());
    }

    #[test]
    fn load_errors_name_the_problem_and_the_fix() {
        onnx::init_for_tests();
        let message = |cfg: &PiperConfig| match PiperTts::load(cfg) {
            Err(ProviderError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        };
        let m = message(&PiperConfig { model: "/nonexistent/voice.onnx".into(), ..config() });
        assert!(m.contains("/nonexistent/voice.onnx") && m.contains("models/fetch.sh"), "{m}");
        let m = message(&PiperConfig { espeak: "/nonexistent/bin/espeak-ng".into(), ..config() });
        assert!(m.contains("/nonexistent/bin/espeak-ng") && m.contains("apt-get install espeak-ng"), "{m}");
        let m = message(&PiperConfig { length_scale: Some(0.0), ..config() });
        assert!(m.contains("length_scale"), "{m}");

        // A config that claims several speakers for this single-speaker model.
        let dir = tempfile::tempdir().unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{}.json", config().model)).unwrap()).unwrap();
        let write = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
            let mut json = json.clone();
            edit(&mut json);
            let path = dir.path().join(name);
            std::fs::write(&path, json.to_string()).unwrap();
            path.display().to_string()
        };
        let multi = write("multi.json", &|j| j["num_speakers"] = 4.into());
        let m = message(&PiperConfig { config: multi.clone(), ..config() });
        assert!(m.contains("`sid`"), "{m}");
        let m = message(&PiperConfig { config: multi, speaker_id: Some(7), ..config() });
        assert!(m.contains("speaker_id 7"), "{m}");
        let no_bos = write("no_bos.json", &|j| {
            j["phoneme_id_map"].as_object_mut().unwrap().remove("^");
        });
        let m = message(&PiperConfig { config: no_bos, ..config() });
        assert!(m.contains("'^'"), "{m}");
        let bad_voice = write("bad_voice.json", &|j| j["espeak"]["voice"] = "xx-no-such-voice".into());
        let m = message(&PiperConfig { config: bad_voice, ..config() });
        assert!(m.contains("xx-no-such-voice"), "{m}");
        let m = message(&PiperConfig { config: dir.path().join("absent.json").display().to_string(), ..config() });
        assert!(m.contains("absent.json") && m.contains("models/fetch.sh"), "{m}");
    }

    #[test]
    fn float_audio_is_normalised_like_piper() {
        let mut out = Vec::new();
        float_to_i16(&[0.0, 0.25, -0.5, 0.125], &mut out);
        assert_eq!(out, vec![0, 16383, -32767, 8191]);
        // Near-silence is not blown up to full scale.
        out.clear();
        float_to_i16(&[0.001, -0.002], &mut out);
        assert_eq!(out, vec![3276, -6553]);
        out.clear();
        float_to_i16(&[f32::NAN, 0.5, f32::INFINITY], &mut out);
        assert_eq!(out, vec![0, 32767, 32767]);
    }
}
