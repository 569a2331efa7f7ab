//! SenseVoice speech recognition in process, from a sherpa-onnx export of SenseVoiceSmall.
//!
//! The model directory holds `model.int8.onnx` or `model.onnx` and `tokens.txt`, as in the
//! sherpa-onnx release archives (`sherpa-onnx-sense-voice-*`). The model reads
//! `x` f32 \[N, T, 560\] (LFR + CMVN features), `x_length` i32 \[N\], `language` i32 \[N\] and
//! `text_norm` i32 \[N\], and writes `logits` f32 \[N, T + 4, vocab\]; its metadata carries the LFR
//! window, the CMVN vectors, the language and ITN query ids and whether samples are scaled to
//! [-1, 1] (`normalize_samples`, 0 for SenseVoice: samples keep their 16-bit range).
//!
//! One utterance: PCM → kaldi fbank → LFR → CMVN (`fbank.rs`) → the model → CTC greedy search →
//! pieces from `tokens.txt` (`tokens.rs`) → `<|zh|><|NEUTRAL|><|Speech|><|woitn|>text`, which is
//! split into text, language, emotion and event as the Python server's `lang_tag_filter` does
//! ([`parse_tags`]).

mod fbank;
mod tags;
mod tokens;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};

use self::fbank::{Fbank, NUM_MEL_BINS};
pub use self::tags::{emotion_emoji, parse_tags};
use self::tokens::Tokens;
use crate::config::SenseVoiceConfig;
use crate::onnx;
use crate::remote::ProviderError;

/// Model files looked for in `model_dir`, in order of preference (the int8 model is the one
/// sherpa-onnx recommends on CPUs: a quarter of the memory and faster, at the same accuracy).
const MODEL_FILES: [&str; 2] = ["model.int8.onnx", "model.onnx"];

/// The token table in `model_dir`.
const TOKENS_FILE: &str = "tokens.txt";

/// The published ONNX export of SenseVoiceSmall this backend runs (sherpa-onnx's), and where it is.
const SHERPA_EXPORT: &str = "sherpa-onnx-sense-voice-zh-en-ja-ko-yue-2024-07-17";
/// Where [`SHERPA_EXPORT`] is published.
const SHERPA_EXPORT_URL: &str = "https://github.com/k2-fsa/sherpa-onnx/releases/tag/asr-models";

/// Languages that can be forced (`auto` lets the model decide).
const LANGUAGES: [&str; 5] = ["zh", "en", "yue", "ja", "ko"];

/// Query positions the model puts before the frames (language, emotion, event, ITN).
const QUERY_ROWS: usize = 4;

/// The tags and text of one SenseVoice transcription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenseVoiceResult {
    /// The transcript without tags, trimmed; empty when nothing was said.
    pub text: String,
    /// The language tag, e.g. `zh`, `en`, `yue`, `ja`, `ko` or `nospeech`.
    pub language: Option<String>,
    /// The emotion tag, e.g. `NEUTRAL`, `HAPPY`, `SAD`, `ANGRY` or `EMO_UNKNOWN`.
    pub emotion: Option<String>,
    /// The audio event tag, e.g. `Speech`, `BGM`, `Laughter` or `Event_UNK`.
    pub event: Option<String>,
}

impl SenseVoiceResult {
    /// The emotion as the Python server reports it to the LLM: its emoji when it has one
    /// (`HAPPY` → 🙂), else the tag name.
    pub fn emotion_for_llm(&self) -> Option<&str> {
        self.emotion.as_deref().map(|e| emotion_emoji(e).unwrap_or(e))
    }
}

/// What the model's metadata says about its front end and queries.
#[derive(Debug)]
struct Metadata {
    /// LFR frames stacked per model frame (`lfr_window_size`).
    window_size: usize,
    /// LFR shift (`lfr_window_shift`).
    window_shift: usize,
    /// Whether samples are scaled to [-1, 1] (`normalize_samples`).
    normalize_samples: bool,
    /// Output vocabulary size (`vocab_size`).
    vocab_size: usize,
    /// The CTC blank (`blank_id`, 0 when absent).
    blank_id: usize,
    /// CMVN shift (`neg_mean`).
    neg_mean: Vec<f32>,
    /// CMVN scale (`inv_stddev`).
    inv_stddev: Vec<f32>,
    /// Query ids of `auto` and the forcible languages (`lang_*`).
    languages: HashMap<&'static str, i32>,
    /// Query id for inverse text normalisation (`with_itn`).
    with_itn: i32,
    /// Query id for no inverse text normalisation (`without_itn`).
    without_itn: i32,
}

impl Metadata {
    /// Reads and checks the metadata of `session`.
    fn read(session: &Session, path: &Path) -> Result<Self, ProviderError> {
        let bad = |message: String| {
            ProviderError::Config(format!("{} is not a sherpa-onnx SenseVoice model: {message}", path.display()))
        };
        let meta = session.metadata().map_err(|e| bad(format!("cannot read its metadata: {e}")))?;
        let text = |key: &str| meta.custom(key).ok_or_else(|| bad(format!("metadata `{key}` is missing")));
        let int = |key: &str| -> Result<i64, ProviderError> {
            let value = text(key)?;
            value.trim().parse().map_err(|_| bad(format!("metadata `{key}` = {value:?} is not an integer")))
        };
        let count = |key: &str, max: i64| -> Result<usize, ProviderError> {
            let value = int(key)?;
            if !(1..=max).contains(&value) {
                return Err(bad(format!("metadata `{key}` = {value} is out of range 1..={max}")));
            }
            usize::try_from(value).map_err(|_| bad(format!("metadata `{key}` = {value} is out of range")))
        };
        let query = |key: &str| -> Result<i32, ProviderError> {
            let value = int(key)?;
            i32::try_from(value).map_err(|_| bad(format!("metadata `{key}` = {value} is out of range")))
        };
        let floats = |key: &str| -> Result<Vec<f32>, ProviderError> {
            text(key)?
                .split(',')
                .map(|v| v.trim().parse::<f32>().ok().filter(|v| v.is_finite()))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| bad(format!("metadata `{key}` is not a comma-separated list of numbers")))
        };

        let window_size = count("lfr_window_size", 64)?;
        let window_shift = count("lfr_window_shift", 64)?;
        let vocab_size = count("vocab_size", 10_000_000)?;
        let blank_id = match meta.custom("blank_id") {
            None => 0,
            Some(_) => usize::try_from(int("blank_id")?)
                .ok()
                .filter(|id| *id < vocab_size)
                .ok_or_else(|| bad(format!("metadata `blank_id` is not below vocab_size {vocab_size}")))?,
        };
        let normalize_samples = int("normalize_samples")? != 0;
        let neg_mean = floats("neg_mean")?;
        let inv_stddev = floats("inv_stddev")?;
        let dim = NUM_MEL_BINS * window_size;
        if neg_mean.len() != dim || inv_stddev.len() != dim {
            return Err(bad(format!(
                "`neg_mean` has {} values and `inv_stddev` {}, expected {dim} (80 mel bins × lfr_window_size)",
                neg_mean.len(),
                inv_stddev.len()
            )));
        }
        let mut languages = HashMap::new();
        for language in std::iter::once("auto").chain(LANGUAGES) {
            languages.insert(language, query(&format!("lang_{language}"))?);
        }
        Ok(Self {
            window_size,
            window_shift,
            normalize_samples,
            vocab_size,
            blank_id,
            neg_mean,
            inv_stddev,
            languages,
            with_itn: query("with_itn")?,
            without_itn: query("without_itn")?,
        })
    }
}

/// The loaded model, shared by every transcription.
struct Model {
    /// The model file, for messages.
    path: PathBuf,
    /// `Session::run` takes `&mut self`, so transcriptions take turns on this mutex. One
    /// process-wide model (and ONNX Runtime thread pool) serves every device; an utterance holds
    /// the lock only for its inference, inside `spawn_blocking`, never across an `.await`, and
    /// turns of different devices rarely overlap. A copy per device would multiply the memory
    /// (≈ 230 MB for the int8 model) for no gain on a machine with few cores.
    session: Mutex<Session>,
    /// The front end tables.
    fbank: Fbank,
    /// `tokens.txt`.
    tokens: Tokens,
    /// The model's metadata.
    meta: Metadata,
    /// The `language` input: the configured language's query id.
    language: i32,
    /// The `text_norm` input: the query id of the configured ITN mode.
    text_norm: i32,
}

impl Model {
    /// The model's input features for `pcm`: rows of `80 × lfr_window_size` values, flattened.
    fn features(&self, pcm: &[i16]) -> Vec<f32> {
        let scale = if self.meta.normalize_samples { 1.0 / 32768.0 } else { 1.0 };
        let samples: Vec<f32> = pcm.iter().map(|&s| f32::from(s) * scale).collect();
        let fbank = self.fbank.compute(&samples);
        let mut feats = fbank::lfr(&fbank, NUM_MEL_BINS, self.meta.window_size, self.meta.window_shift);
        fbank::cmvn(&mut feats, &self.meta.neg_mean, &self.meta.inv_stddev);
        feats
    }

    /// The raw transcript of `pcm`: tags and text, e.g. `<|en|><|NEUTRAL|><|Speech|><|woitn|> hi`.
    /// Audio shorter than one frame (25 ms) gives an empty string.
    fn decode_raw(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        let feats = self.features(pcm);
        let dim = NUM_MEL_BINS * self.meta.window_size;
        let frames = feats.len() / dim;
        if frames == 0 {
            return Ok(String::new());
        }
        let err = |message: String| ProviderError::Protocol { url: self.path.display().to_string(), message };
        let frames_i32 = i32::try_from(frames).map_err(|_| err(format!("{frames} frames is too long")))?;
        let length = [frames_i32];
        let language = [self.language];
        let text_norm = [self.text_norm];
        let ort_err = |e: ort::Error| err(format!("SenseVoice inference: {e}"));
        let inputs = ort::inputs! {
            "x" => TensorRef::from_array_view(([1usize, frames, dim], &feats[..])).map_err(ort_err)?,
            "x_length" => TensorRef::from_array_view(([1usize], &length[..])).map_err(ort_err)?,
            "language" => TensorRef::from_array_view(([1usize], &language[..])).map_err(ort_err)?,
            "text_norm" => TensorRef::from_array_view(([1usize], &text_norm[..])).map_err(ort_err)?,
        };
        let ids = {
            let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let outputs = session.run(inputs).map_err(ort_err)?;
            let logits = outputs.get("logits").ok_or_else(|| err("the model has no output `logits`".into()))?;
            let (shape, logits) = logits.try_extract_tensor::<f32>().map_err(ort_err)?;
            let vocab = shape.last().and_then(|v| usize::try_from(*v).ok()).unwrap_or(0);
            if shape.len() != 3 || vocab != self.meta.vocab_size {
                return Err(err(format!(
                    "`logits` has shape {shape:?}, expected [1, {}, {}]",
                    frames + QUERY_ROWS,
                    self.meta.vocab_size
                )));
            }
            // Only the rows of real frames count (sherpa-onnx passes x_length + 4).
            let rows = (logits.len() / vocab).min(frames + QUERY_ROWS);
            tokens::ctc_greedy(&logits[..rows * vocab], vocab, self.meta.blank_id)
        };
        Ok(self.tokens.detokenize(&ids))
    }
}

/// SenseVoice speech recognition through ONNX Runtime.
pub struct SenseVoiceAsr {
    /// The model, shared with the blocking inference tasks.
    model: Arc<Model>,
}

impl fmt::Debug for SenseVoiceAsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenseVoiceAsr")
            .field("model", &self.model.path)
            .field("language", &self.model.language)
            .field("text_norm", &self.model.text_norm)
            .finish()
    }
}

impl SenseVoiceAsr {
    /// Loads `model.int8.onnx` (or, without it, `model.onnx`) and `tokens.txt` from
    /// `cfg.model_dir` (ONNX Runtime must be initialised with [`onnx::init`]), checks the
    /// model's inputs, output and metadata, and resolves `cfg.language` (`auto` or empty, `zh`,
    /// `en`, `yue`, `ja`, `ko`) and `cfg.use_itn` to the model's query ids. Every problem is a
    /// [`ProviderError::Config`] naming the file concerned. Blocks for the model load: call it
    /// off the async runtime threads.
    pub fn load(cfg: &SenseVoiceConfig) -> Result<Self, ProviderError> {
        let dir = Path::new(&cfg.model_dir);
        let candidates: Vec<PathBuf> = MODEL_FILES.iter().map(|name| dir.join(name)).collect();
        let path = candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            if dir.join("model.pt").is_file() {
                // The Python server's FunASR folder: the PyTorch weights do not run here.
                return ProviderError::Config(format!(
                    "{} holds the PyTorch model.pt of the Python server's FunASR, which does not run here; this \
                     server runs SenseVoiceSmall's ONNX export: download {SHERPA_EXPORT} (model.int8.onnx and \
                     tokens.txt, from {SHERPA_EXPORT_URL}) and put those two files in {}",
                    dir.display(),
                    dir.display()
                ));
            }
            ProviderError::Config(format!(
                "SenseVoice model not found: no {} (the ONNX export {SHERPA_EXPORT} from {SHERPA_EXPORT_URL} goes there)",
                tried.join(" or ")
            ))
        })?;
        let tokens_path = dir.join(TOKENS_FILE);
        if !tokens_path.is_file() {
            return Err(ProviderError::Config(format!("SenseVoice tokens not found: no {}", tokens_path.display())));
        }
        let wanted = cfg.language.trim().to_ascii_lowercase();
        let wanted = if wanted.is_empty() { "auto".to_string() } else { wanted };
        if wanted != "auto" && !LANGUAGES.contains(&wanted.as_str()) {
            return Err(ProviderError::Config(format!(
                "SenseVoice language {:?} is not one of auto, {}",
                cfg.language,
                LANGUAGES.join(", ")
            )));
        }
        let tokens = Tokens::load(&tokens_path)?;

        let session_err = |message: String| {
            ProviderError::Config(format!("cannot load SenseVoice model {}: {message}", path.display()))
        };
        let session = onnx::session_builder()
            .map_err(|e| session_err(e.to_string()))?
            .with_intra_threads(usize::from(cfg.threads.max(1)))
            .map_err(|e| session_err(e.to_string()))?
            .commit_from_file(&path)
            .map_err(|e| session_err(e.to_string()))?;
        check_signature(&session, &path)?;
        let meta = Metadata::read(&session, &path)?;
        let dim = NUM_MEL_BINS * meta.window_size;
        let x_dim =
            session.inputs().iter().find(|i| i.name() == "x").and_then(|x| x.dtype().tensor_shape()?.last().copied());
        if let Some(x_dim) = x_dim.filter(|d| *d > 0 && *d != dim as i64) {
            return Err(ProviderError::Config(format!(
                "{} takes {x_dim} features per frame, but its lfr_window_size gives {dim}",
                path.display()
            )));
        }
        if let Some(missing) = tokens.first_missing(meta.vocab_size) {
            return Err(ProviderError::Config(format!(
                "{} has no token {missing}, but the model's vocabulary has {} tokens",
                tokens_path.display(),
                meta.vocab_size
            )));
        }
        let language = meta.languages.get(wanted.as_str()).copied().unwrap_or_default();
        let text_norm = if cfg.use_itn { meta.with_itn } else { meta.without_itn };
        tracing::info!(model = %path.display(), language = %wanted, use_itn = cfg.use_itn, "SenseVoice loaded");
        let model =
            Model { path, session: Mutex::new(session), fbank: Fbank::new(), tokens, meta, language, text_norm };
        Ok(Self { model: Arc::new(model) })
    }

    /// Transcribes one utterance of 16 kHz mono PCM on the calling thread and returns the text
    /// with its language, emotion and event tags. Audio shorter than 25 ms gives an empty
    /// result. Blocks for the inference: from async code use [`Self::transcribe_detailed`].
    pub fn transcribe_detailed_blocking(&self, pcm: &[i16]) -> Result<SenseVoiceResult, ProviderError> {
        let started = Instant::now();
        let raw = self.model.decode_raw(pcm)?;
        tracing::debug!(
            samples = pcm.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            raw = %raw,
            "SenseVoice transcription"
        );
        Ok(parse_tags(&raw))
    }

    /// [`Self::transcribe_detailed_blocking`] on a blocking thread. Dropping the future leaves
    /// the inference to finish on its thread and discards its result.
    pub async fn transcribe_detailed(&self, pcm: &[i16]) -> Result<SenseVoiceResult, ProviderError> {
        let asr = Self { model: Arc::clone(&self.model) };
        let pcm = pcm.to_vec();
        tokio::task::spawn_blocking(move || asr.transcribe_detailed_blocking(&pcm)).await.map_err(|e| {
            ProviderError::Protocol {
                url: self.model.path.display().to_string(),
                message: format!("SenseVoice inference task failed: {e}"),
            }
        })?
    }
}

/// Checks that `session` has the inputs and output of the sherpa-onnx SenseVoice export.
fn check_signature(session: &Session, path: &Path) -> Result<(), ProviderError> {
    let bad = |message: String| {
        ProviderError::Config(format!("{} is not a sherpa-onnx SenseVoice model: {message}", path.display()))
    };
    let expected = [
        ("x", TensorElementType::Float32),
        ("x_length", TensorElementType::Int32),
        ("language", TensorElementType::Int32),
        ("text_norm", TensorElementType::Int32),
    ];
    for (name, ty) in expected {
        let input = session.inputs().iter().find(|i| i.name() == name).ok_or_else(|| {
            let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
            bad(format!("no input `{name}` (inputs: {names:?})"))
        })?;
        if input.dtype().tensor_type() != Some(ty) {
            return Err(bad(format!("input `{name}` is {:?}, expected a {ty:?} tensor", input.dtype())));
        }
    }
    if session.inputs().len() != expected.len() {
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        return Err(bad(format!("expected the inputs x, x_length, language, text_norm, found {names:?}")));
    }
    let logits = session.outputs().iter().find(|o| o.name() == "logits").ok_or_else(|| {
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        bad(format!("no output `logits` (outputs: {names:?})"))
    })?;
    if logits.dtype().tensor_type() != Some(TensorElementType::Float32) {
        return Err(bad(format!("output `logits` is {:?}, expected a Float32 tensor", logits.dtype())));
    }
    Ok(())
}

#[async_trait]
impl super::Asr for SenseVoiceAsr {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        Ok(self.transcribe_detailed(pcm).await?.text)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::asr::Asr;

    /// Runs `tests/assets/make_sensevoice_model.py` into a new temporary directory.
    fn generated_model() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temporary directory");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/assets/make_sensevoice_model.py");
        let output = Command::new("python3").arg(&script).arg(dir.path()).output().unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): the SenseVoice tests need python3 with `python3 -m pip install onnx numpy`"
            )
        });
        assert!(
            output.status.success(),
            "{} failed (it needs `python3 -m pip install onnx numpy`):\n{}{}",
            script.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        dir
    }

    fn config(dir: &Path, language: &str, use_itn: bool) -> SenseVoiceConfig {
        SenseVoiceConfig {
            model_dir: dir.display().to_string(),
            language: language.into(),
            use_itn,
            threads: 1,
            output_dir: None,
        }
    }

    fn load(dir: &Path, language: &str, use_itn: bool) -> SenseVoiceAsr {
        onnx::init_for_tests();
        SenseVoiceAsr::load(&config(dir, language, use_itn)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn wav(path: &Path) -> Vec<i16> {
        let mut reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(reader.spec().sample_rate, 16_000);
        reader.samples::<i16>().map(|s| s.unwrap()).collect()
    }

    fn f32_file(path: &Path) -> Vec<f32> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn features_match_the_numpy_reference() {
        let dir = generated_model();
        let asr = load(dir.path(), "auto", false);
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("reference.json")).unwrap()).unwrap();
        let pcm = wav(&dir.path().join("noise.wav"));
        assert_eq!(pcm.len() as u64, reference["noise"]["samples"].as_u64().unwrap());

        let samples: Vec<f32> = pcm.iter().map(|&s| f32::from(s)).collect();
        let fbank = asr.model.fbank.compute(&samples);
        let want = f32_file(&dir.path().join("noise.fbank.f32"));
        assert_eq!(fbank.len(), 132 * NUM_MEL_BINS, "frame count");
        let diff = max_abs_diff(&fbank, &want);
        assert!(diff < 1e-3, "fbank differs from numpy by {diff}");

        let feats = asr.model.features(&pcm);
        let want = f32_file(&dir.path().join("noise.features.f32"));
        assert_eq!(feats.len(), 22 * 560, "LFR rows");
        let diff = max_abs_diff(&feats, &want);
        assert!(diff < 1e-3, "LFR + CMVN features differ from numpy by {diff}");
        // The CMVN is not the identity: raw LFR features are far from the normalised ones.
        let raw = fbank::lfr(&fbank, NUM_MEL_BINS, 7, 6);
        assert!(max_abs_diff(&raw, &want) > 1.0);
    }

    #[test]
    fn generated_model_decodes_text_language_and_emotion() {
        let dir = generated_model();
        let hello = wav(&dir.path().join("hello.wav"));
        let nihao = wav(&dir.path().join("nihao.wav"));

        let auto = load(dir.path(), "auto", false);
        let r = auto.transcribe_detailed_blocking(&hello).unwrap();
        assert_eq!(r.text, "hello world");
        assert_eq!(r.language.as_deref(), Some("en"));
        assert_eq!(r.emotion.as_deref(), Some("HAPPY"));
        assert_eq!(r.emotion_for_llm(), Some("🙂"));
        assert_eq!(r.event.as_deref(), Some("Speech"));
        let r = auto.transcribe_detailed_blocking(&nihao).unwrap();
        // The blank between the two 好 keeps both; the long tones collapse to one token each.
        assert_eq!(r.text, "你好好。");
        assert_eq!(r.language.as_deref(), Some("zh"));
        assert_eq!(r.emotion.as_deref(), Some("SAD"));

        // A forced language wins over what the audio says; the ITN tag follows use_itn.
        let zh = load(dir.path(), "zh", true);
        assert_eq!(zh.model.decode_raw(&hello).unwrap(), "<|zh|><|HAPPY|><|Speech|><|withitn|> hello world");
        let ja = load(dir.path(), "JA", false);
        assert_eq!(ja.model.decode_raw(&nihao).unwrap(), "<|ja|><|SAD|><|Speech|><|woitn|>你好好。");

        // The raw decodes the generator expects, through ONNX Runtime.
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("reference.json")).unwrap()).unwrap();
        for case in reference["decodes"].as_array().unwrap() {
            let asr = load(dir.path(), case["language"].as_str().unwrap(), case["text_norm"] == 14);
            let pcm = wav(&dir.path().join(case["wav"].as_str().unwrap()));
            let want = case["raw"].as_str().unwrap().replace('\u{2581}', " ");
            assert_eq!(asr.model.decode_raw(&pcm).unwrap(), want, "{case}");
        }
    }

    #[tokio::test]
    async fn the_asr_trait_returns_the_text_and_silence_is_empty() {
        let dir = generated_model();
        let asr = Arc::new(load(dir.path(), "auto", true));
        let hello = wav(&dir.path().join("hello.wav"));
        let nihao = wav(&dir.path().join("nihao.wav"));
        // Concurrent utterances take turns on the session and each gets its own answer.
        let (a, b) = tokio::join!(asr.transcribe(&hello), asr.transcribe(&nihao));
        assert_eq!(a.unwrap(), "hello world");
        assert_eq!(b.unwrap(), "你好好。");

        assert_eq!(asr.transcribe(&vec![0; 16_000]).await.unwrap(), "");
        let r = asr.transcribe_detailed(&vec![0; 16_000]).await.unwrap();
        assert_eq!(r.language.as_deref(), Some("nospeech"));
        assert_eq!(r.emotion.as_deref(), Some("EMO_UNKNOWN"));
        // Shorter than one frame: nothing to run.
        assert_eq!(asr.transcribe_detailed(&[100; 399]).await.unwrap(), SenseVoiceResult::default());
        assert_eq!(asr.transcribe(&[]).await.unwrap(), "");
    }

    #[test]
    fn missing_files_and_bad_settings_are_config_errors_naming_the_file() {
        let empty = tempfile::tempdir().unwrap();
        let err = SenseVoiceAsr::load(&config(empty.path(), "auto", true)).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, ProviderError::Config(_)), "{err:?}");
        assert!(message.contains(&empty.path().join("model.int8.onnx").display().to_string()), "{message}");
        assert!(message.contains(&empty.path().join("model.onnx").display().to_string()), "{message}");

        // The Python server's FunASR folder: only the PyTorch weights.
        let python = tempfile::tempdir().unwrap();
        std::fs::write(python.path().join("model.pt"), b"torch").unwrap();
        let message = SenseVoiceAsr::load(&config(python.path(), "auto", true)).unwrap_err().to_string();
        assert!(message.contains("PyTorch model.pt"), "{message}");
        assert!(message.contains(SHERPA_EXPORT) && message.contains(SHERPA_EXPORT_URL), "{message}");
        assert!(message.contains("model.int8.onnx and tokens.txt"), "{message}");
        assert!(message.contains(&format!("put those two files in {}", python.path().display())), "{message}");

        let dir = generated_model();
        let tokens = dir.path().join("tokens.txt");
        let kept = std::fs::read_to_string(&tokens).unwrap();
        std::fs::remove_file(&tokens).unwrap();
        let err = SenseVoiceAsr::load(&config(dir.path(), "auto", true)).unwrap_err();
        assert!(matches!(&err, ProviderError::Config(m) if m.contains(&tokens.display().to_string())), "{err:?}");

        // A tokens.txt shorter than the model's vocabulary.
        let short: String = kept.lines().take(10).map(|l| format!("{l}\n")).collect();
        std::fs::write(&tokens, short).unwrap();
        onnx::init_for_tests();
        let err = SenseVoiceAsr::load(&config(dir.path(), "auto", true)).unwrap_err();
        assert!(matches!(&err, ProviderError::Config(m) if m.contains("no token 10")), "{err:?}");
        std::fs::write(&tokens, &kept).unwrap();

        let err = SenseVoiceAsr::load(&config(dir.path(), "fr", true)).unwrap_err();
        assert!(matches!(&err, ProviderError::Config(m) if m.contains("\"fr\"")), "{err:?}");

        // Not a SenseVoice model: the Silero VAD.
        let other = tempfile::tempdir().unwrap();
        let vad = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/silero_vad.onnx");
        std::fs::copy(vad, other.path().join("model.onnx")).unwrap();
        std::fs::write(other.path().join("tokens.txt"), &kept).unwrap();
        let err = SenseVoiceAsr::load(&config(other.path(), "auto", true)).unwrap_err();
        assert!(
            matches!(&err, ProviderError::Config(m) if m.contains("not a sherpa-onnx SenseVoice model")),
            "{err:?}"
        );

        // model.int8.onnx is preferred; a broken one is reported by name.
        std::fs::write(dir.path().join("model.int8.onnx"), b"not a model").unwrap();
        let err = SenseVoiceAsr::load(&config(dir.path(), "auto", true)).unwrap_err();
        assert!(matches!(&err, ProviderError::Config(m) if m.contains("model.int8.onnx")), "{err:?}");
    }
}
