//! Whisper in process, through ONNX Runtime (`type: whisper_onnx`).
//!
//! The model folder is in the Hugging Face optimum / transformers.js layout (`config.json`,
//! `generation_config.json`, `tokenizer.json`, `onnx/encoder_model*.onnx` and the decoder(s)).
//! One utterance goes: 16 kHz PCM → log-mel features ([`mel`]) → encoder → (multilingual models
//! with no language set: one decoder step to detect it) → greedy decoding with a KV cache
//! ([`decoder`]) → text ([`tokenizer`]). Utterances longer than 30 s are cut into 30 s windows,
//! each transcribed on its own.
//!
//! Two guards against Whisper's known failures on silence and noise: decoding stops on a
//! repetition loop (and keeps one copy of the repeated block), and a window is dropped as
//! silent when `<|nospeech|>` is likely (p > 0.6) and the transcript is unlikely (mean
//! log-probability < −1), OpenAI's own rule.

pub mod decoder;
pub mod mel;
pub mod spec;
pub mod tokenizer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use self::decoder::{Chooser, DecoderLayout, ModelFiles, Sessions};
use self::mel::{LogMel, N_SAMPLES, SAMPLE_RATE};
use self::spec::{ModelFolder, SpecialTokens};
use self::tokenizer::Tokenizer;
use crate::config::WhisperConfig;
use crate::remote::ProviderError;

/// Shortest input worth running the model on: 0.1 s.
const MIN_SAMPLES: usize = SAMPLE_RATE / 10;

/// `<|nospeech|>` probability above which a window may be silent (OpenAI's default).
const NO_SPEECH_THRESHOLD: f32 = 0.6;

/// Mean log-probability below which a likely-silent window is dropped (OpenAI's default).
const LOGPROB_THRESHOLD: f32 = -1.0;

/// The language of the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    /// English-only model: no language or task token.
    None,
    /// A fixed language token.
    Fixed(u32),
    /// Detected per window.
    Detect,
}

/// The loaded model, shared by every session.
struct Model {
    /// The ONNX sessions. `Session::run` takes `&mut self`, so the encoder and decoders of one
    /// utterance run under this lock and concurrent utterances wait their turn: one copy of the
    /// weights (and one thread pool) serves every device, and a transcription is a fraction of
    /// the utterance's length. The lock is only taken inside `spawn_blocking`, never across an
    /// `.await`.
    sessions: Mutex<Sessions>,
    /// The precomputed log-mel front end.
    mel: LogMel,
    /// Token ids → text.
    tokenizer: Tokenizer,
    /// Special ids and suppress lists.
    tokens: SpecialTokens,
    /// Token masks.
    chooser: Chooser,
    /// Language of the prompt.
    language: Language,
    /// `<|transcribe|>` or `<|translate|>` (multilingual models).
    task: Option<u32>,
    /// Most tokens generated per 30 s window.
    max_tokens: usize,
    /// The decoder's position limit.
    max_positions: usize,
    /// The model folder, for error messages.
    label: String,
}

/// Whisper speech recognition through ONNX Runtime. Cheap to clone; clones share the model.
#[derive(Clone)]
pub struct WhisperAsr {
    /// The shared model.
    model: Arc<Model>,
}

impl std::fmt::Debug for WhisperAsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperAsr").field("model_dir", &self.model.label).finish_non_exhaustive()
    }
}

impl WhisperAsr {
    /// Loads the model from `cfg.model_dir` (ONNX Runtime must be initialised with
    /// [`crate::onnx::init`]). Prefers the split decoder pair when it is there. A missing file,
    /// an unknown language or task, or a model that does not look like Whisper is
    /// [`ProviderError::Config`].
    pub fn load(cfg: &WhisperConfig) -> Result<Self, ProviderError> {
        Self::load_with(cfg, DecoderLayout::Auto)
    }

    /// [`WhisperAsr::load`] with a choice of decoder files.
    pub fn load_with(cfg: &WhisperConfig, layout: DecoderLayout) -> Result<Self, ProviderError> {
        let dir = Path::new(&cfg.model_dir);
        let config_err =
            |message: String| ProviderError::Config(format!("whisper_onnx ({}): {message}", cfg.model_dir));
        if !dir.is_dir() {
            return Err(config_err("model_dir is not a directory".into()));
        }
        let ModelFolder { dims, tokenizer, tokens } = ModelFolder::read(dir).map_err(&config_err)?;
        let language = resolve_language(&tokens, &cfg.language).map_err(&config_err)?;
        let task = match (cfg.task.trim(), tokens.multilingual) {
            (_, false) => {
                if cfg.task.trim() == "translate" {
                    tracing::warn!("whisper_onnx: an English-only model cannot translate; it transcribes");
                }
                None
            }
            ("" | "transcribe", true) => tokens.transcribe,
            ("translate", true) => {
                Some(tokens.translate.ok_or_else(|| config_err("the model has no <|translate|> token".into()))?)
            }
            (other, true) => return Err(config_err(format!("task `{other}` is not transcribe or translate"))),
        };

        let files = ModelFiles::find(dir, layout).map_err(&config_err)?;
        let sessions = Sessions::load(&files, dims, usize::from(cfg.threads)).map_err(&config_err)?;
        tracing::info!(
            model_dir = %cfg.model_dir,
            encoder = %files.encoder.display(),
            decoder = ?files.decoder,
            multilingual = tokens.multilingual,
            "Whisper loaded"
        );
        let max_tokens = if cfg.max_tokens == 0 { usize::MAX } else { cfg.max_tokens as usize };
        let chooser = Chooser::new(&tokens, dims.vocab_size);
        Ok(Self {
            model: Arc::new(Model {
                sessions: Mutex::new(sessions),
                mel: LogMel::new(dims.n_mels),
                tokenizer,
                tokens,
                chooser,
                language,
                task,
                max_tokens,
                max_positions: dims.max_positions,
                label: cfg.model_dir.clone(),
            }),
        })
    }

    /// Transcribes one utterance of 16 kHz mono PCM, blocking the calling thread (what
    /// [`Asr::transcribe`](super::Asr::transcribe) runs in `spawn_blocking`; also the entry point
    /// for benchmarks). Less than 0.1 s of audio gives an empty string without running the
    /// model. The text is trimmed.
    pub fn transcribe_blocking(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        let mut text = String::new();
        for window in pcm.chunks(N_SAMPLES) {
            if window.len() < MIN_SAMPLES {
                continue;
            }
            text.push_str(&self.model.transcribe_window(window, self.model.language)?.text);
        }
        Ok(text.trim().to_string())
    }
}

/// The prompt language for the configured `language`: none for English-only models (a
/// warning when another language is asked for), detection for empty or `auto`, else the
/// language's token; an unknown language is an error.
fn resolve_language(tokens: &SpecialTokens, requested: &str) -> Result<Language, String> {
    let requested = requested.trim();
    let auto = requested.is_empty() || requested.eq_ignore_ascii_case("auto");
    if !tokens.multilingual {
        if !auto && !requested.eq_ignore_ascii_case("en") {
            tracing::warn!(language = requested, "whisper_onnx: an English-only model ignores `language`");
        }
        return Ok(Language::None);
    }
    if auto {
        return Ok(Language::Detect);
    }
    match tokens.language(requested) {
        Some(id) => Ok(Language::Fixed(id)),
        None => Err(format!("language `{requested}` is not one of the model's languages")),
    }
}

/// The result of one 30 s window.
#[derive(Debug, Clone, PartialEq)]
struct Window {
    /// The text (not trimmed; empty when judged silent).
    text: String,
    /// The language token of the prompt, if any.
    language: Option<u32>,
}

impl Model {
    /// An inference error.
    fn error(&self, message: String) -> ProviderError {
        ProviderError::Protocol { url: format!("whisper_onnx {}", self.label), message }
    }

    /// Transcribes up to 30 s of audio in `language`.
    fn transcribe_window(&self, pcm: &[i16], language: Language) -> Result<Window, ProviderError> {
        let started = std::time::Instant::now();
        let features = self.mel.compute(pcm);
        let mel_done = started.elapsed();
        let mut sessions = self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let hidden = sessions.encode(&features).map_err(|e| self.error(format!("encoder: {e}")))?;
        let encoded = started.elapsed();
        let mut prompt = vec![self.tokens.sot];
        let language = match language {
            Language::None => None,
            Language::Fixed(id) => Some(id),
            Language::Detect => {
                let (id, p) = sessions
                    .detect_language(&hidden, &self.tokens)
                    .map_err(|e| self.error(format!("language detection: {e}")))?;
                tracing::debug!(language = self.tokens.language_code(id).unwrap_or("?"), p, "Whisper language");
                Some(id)
            }
        };
        prompt.extend(language);
        if let Some(task) = self.task {
            prompt.push(task);
        }
        prompt.push(self.tokens.no_timestamps);
        let limit = self.max_tokens.min(self.max_positions.saturating_sub(prompt.len()));
        let decoded = sessions
            .greedy(&hidden, &prompt, &self.tokens, &self.chooser, limit)
            .map_err(|e| self.error(format!("decoder: {e}")))?;
        drop(sessions);
        let text = self.tokenizer.decode(&decoded.tokens);
        tracing::debug!(
            mel_ms = mel_done.as_millis() as u64,
            encoder_ms = (encoded - mel_done).as_millis() as u64,
            decoder_ms = (started.elapsed() - encoded).as_millis() as u64,
            tokens = decoded.tokens.len(),
            no_speech = decoded.no_speech_prob,
            avg_logprob = decoded.avg_logprob,
            looped = decoded.looped,
            text = %text,
            "Whisper window"
        );
        if decoded.looped {
            tracing::warn!(text = %text, "Whisper fell into a repetition loop; kept one copy");
        }
        let silent =
            decoded.no_speech_prob.is_some_and(|p| p > NO_SPEECH_THRESHOLD) && decoded.avg_logprob < LOGPROB_THRESHOLD;
        Ok(Window { text: if silent { String::new() } else { text }, language })
    }
}

#[async_trait]
impl super::Asr for WhisperAsr {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        if pcm.len() < MIN_SAMPLES {
            return Ok(String::new());
        }
        let this = self.clone();
        let pcm = pcm.to_vec();
        // ONNX Runtime blocks for the whole inference: keep it off the async worker threads. If
        // the turn drops this future, the inference finishes in the background and is discarded.
        tokio::task::spawn_blocking(move || this.transcribe_blocking(&pcm)).await.map_err(|e| {
            ProviderError::Protocol { url: "whisper_onnx".into(), message: format!("inference task failed: {e}") }
        })?
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::asr::Asr;

    fn model_dir(model: &str) -> String {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models").join(model);
        assert!(
            dir.join("config.json").is_file(),
            "{} is needed by this test: the shared Whisper models (../shared/models next to the repository)",
            dir.display()
        );
        dir.to_string_lossy().into_owned()
    }

    fn config(model: &str, language: &str) -> WhisperConfig {
        WhisperConfig {
            model_dir: model_dir(model),
            language: language.into(),
            task: "transcribe".into(),
            max_tokens: 224,
            threads: 2,
        }
    }

    fn load(model: &str, language: &str, layout: DecoderLayout) -> WhisperAsr {
        crate::onnx::init_for_tests();
        WhisperAsr::load_with(&config(model, language), layout).unwrap_or_else(|e| panic!("{e}"))
    }

    fn wav(model: &str, name: &str) -> Vec<i16> {
        let path = Path::new(&model_dir(model)).join(name);
        let mut reader = hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(reader.spec().sample_rate, 16_000);
        reader.samples::<i16>().map(|s| s.unwrap()).collect()
    }

    fn expected(model: &str, name: &str) -> String {
        let path = Path::new(&model_dir(model)).join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
    }

    /// Words that differ (a word-level edit distance), ignoring case and punctuation.
    fn word_errors(got: &str, want: &str) -> usize {
        let words = |s: &str| -> Vec<String> {
            s.split_whitespace()
                .map(|w| w.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase())
                .filter(|w| !w.is_empty())
                .collect()
        };
        let (a, b) = (words(got), words(want));
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, x) in a.iter().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, y) in b.iter().enumerate() {
                let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + usize::from(x != y));
                prev = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    }

    #[test]
    fn word_errors_counts_edits() {
        assert_eq!(word_errors("Hello, world.", "hello world"), 0);
        assert_eq!(word_errors("hello there world", "hello world"), 1);
        assert_eq!(word_errors("", "a b"), 2);
    }

    #[test]
    fn tiny_en_transcribes_its_test_wav_exactly() {
        let asr = load("whisper-tiny-en", "", DecoderLayout::Auto);
        let pcm = wav("whisper-tiny-en", "test.wav");
        let started = Instant::now();
        let text = asr.transcribe_blocking(&pcm).unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        let rtf = elapsed / (pcm.len() as f64 / 16_000.0);
        eprintln!("tiny.en split decoder: {elapsed:.2} s for {:.2} s of audio, RTF {rtf:.3}", pcm.len() as f64 / 16e3);
        assert_eq!(text, expected("whisper-tiny-en", "test.txt"));
    }

    #[test]
    fn split_and_merged_decoders_agree() {
        let pcm = wav("whisper-tiny-en", "test.wav");
        let merged = load("whisper-tiny-en", "", DecoderLayout::Merged);
        let split = load("whisper-tiny-en", "", DecoderLayout::Auto);
        let a = merged.transcribe_blocking(&pcm).unwrap();
        let b = split.transcribe_blocking(&pcm).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, expected("whisper-tiny-en", "test.txt"));
    }

    #[test]
    fn base_transcribes_english_with_detection() {
        let asr = load("whisper-base", "auto", DecoderLayout::Auto);
        let text = asr.transcribe_blocking(&wav("whisper-base", "test.wav")).unwrap();
        assert_eq!(text, expected("whisper-base", "test.txt"));
    }

    #[test]
    fn base_transcribes_german_detected_and_fixed() {
        let pcm = wav("whisper-base", "test_de.wav");
        let want = expected("whisper-base", "test_de.txt");
        // What the int8 files give (the README): "es die heute? Bitte macht" where the speaker
        // said "es dir heute? Bitte mach": two words off, the same as the reference decoder.
        let int8 = "Guten Morgen, wie geht es die heute? Bitte macht das Licht in der Küche an.";
        let asr = load("whisper-base", "", DecoderLayout::Auto);
        let model = &asr.model;
        assert_eq!(model.language, Language::Detect);
        let detected = model.transcribe_window(&pcm, Language::Detect).unwrap();
        assert_eq!(detected.language.and_then(|id| model.tokens.language_code(id)), Some("de"));
        let text = detected.text.trim();
        assert!(text == int8 || word_errors(text, &want) <= 1, "{text:?}");
        // `language: de` resolves to <|de|> and gives the same transcript.
        let de = resolve_language(&model.tokens, "de").unwrap();
        assert_eq!(de, Language::Fixed(50261));
        let fixed = model.transcribe_window(&pcm, de).unwrap();
        assert_eq!(fixed, detected);
    }

    #[test]
    fn languages_resolve_per_model() {
        let base = ModelFolder::read(Path::new(&model_dir("whisper-base"))).unwrap().tokens;
        assert_eq!(resolve_language(&base, ""), Ok(Language::Detect));
        assert_eq!(resolve_language(&base, " AUTO "), Ok(Language::Detect));
        assert_eq!(resolve_language(&base, "zh"), Ok(Language::Fixed(50260)));
        assert!(resolve_language(&base, "xx").unwrap_err().contains("`xx`"));
        // English-only: no language token whatever is asked for.
        let tiny = ModelFolder::read(Path::new(&model_dir("whisper-tiny-en"))).unwrap().tokens;
        assert_eq!(resolve_language(&tiny, "de"), Ok(Language::None));
        assert_eq!(resolve_language(&tiny, "auto"), Ok(Language::None));
    }

    #[tokio::test]
    async fn silence_and_short_input_give_nothing() {
        let asr = load("whisper-tiny-en", "", DecoderLayout::Auto);
        // Under 0.1 s: no model run at all.
        assert_eq!(asr.transcribe(&[]).await.unwrap(), "");
        assert_eq!(asr.transcribe(&[1000; 1599]).await.unwrap(), "");
        let started = Instant::now();
        let text = asr.transcribe(&vec![0i16; 3 * 16_000]).await.unwrap();
        assert!(text.split_whitespace().count() <= 1, "{text:?}");
        assert!(started.elapsed().as_secs_f64() < 10.0, "silence took {:?}", started.elapsed());
        // Low noise too.
        let mut seed = 0x2545_f491u32;
        let noise: Vec<i16> = (0..3 * 16_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed % 401) as i16 - 200
            })
            .collect();
        let text = asr.transcribe(&noise).await.unwrap();
        assert!(text.split_whitespace().count() <= 2, "{text:?}");
    }

    #[tokio::test]
    async fn async_path_and_long_input() {
        let asr = load("whisper-tiny-en", "", DecoderLayout::Auto);
        let pcm = wav("whisper-tiny-en", "test.wav");
        let want = expected("whisper-tiny-en", "test.txt");
        assert_eq!(asr.transcribe(&pcm).await.unwrap(), want);
        // Over 30 s: the speech, then silence up to 30 s, then the speech again — two windows.
        let mut long = pcm.clone();
        long.resize(N_SAMPLES, 0);
        long.extend_from_slice(&pcm);
        let text = asr.transcribe(&long).await.unwrap();
        assert_eq!(text, format!("{want} {want}"));
    }

    #[test]
    fn load_errors_name_the_problem() {
        crate::onnx::init_for_tests();
        let err = |cfg: &WhisperConfig| match WhisperAsr::load(cfg) {
            Err(ProviderError::Config(message)) => message,
            Err(other) => panic!("not a config error: {other}"),
            Ok(_) => panic!("loaded"),
        };
        let mut cfg = config("whisper-base", "xx");
        assert!(err(&cfg).contains("language `xx`"));
        cfg.language = "de".into();
        cfg.task = "summarise".into();
        assert!(err(&cfg).contains("task `summarise`"));
        cfg.model_dir = "/nonexistent/whisper".into();
        assert!(err(&cfg).contains("not a directory"));
        // A folder with the configs but no graphs names the missing encoder.
        let dir = tempfile::tempdir().unwrap();
        for file in ["config.json", "generation_config.json", "tokenizer.json", "added_tokens.json"] {
            std::fs::copy(Path::new(&model_dir("whisper-tiny-en")).join(file), dir.path().join(file)).unwrap();
        }
        cfg = config("whisper-tiny-en", "");
        cfg.model_dir = dir.path().to_string_lossy().into_owned();
        let message = err(&cfg);
        assert!(message.contains("encoder_model.onnx"), "{message}");
    }
}
