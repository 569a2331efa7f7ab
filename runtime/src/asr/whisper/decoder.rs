//! The ONNX sessions (encoder and decoders) and greedy decoding with a KV cache.
//!
//! Two decoder layouts are supported, as exported by optimum / transformers.js:
//! - the split pair `decoder_model*.onnx` (first step, no past) + `decoder_with_past_model*.onnx`
//!   (later steps): no `If` node, the faster path;
//! - `decoder_model_merged*.onnx`: both in one graph behind `use_cache_branch`, which also needs
//!   empty past tensors on the first step and `encoder_hidden_states` on every step.
//!
//! The cross-attention keys and values (`present.*.encoder.*`) come out of the first step only and
//! are fed back, unchanged, on every later step; the self-attention cache
//! (`present.*.decoder.*`) grows by one position per step.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorRef};

use super::mel::N_FRAMES;
use super::spec::{Dims, SpecialTokens};
use crate::onnx::{self, OnnxError};

/// Which decoder files to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderLayout {
    /// The split pair when both files are there, else the merged decoder.
    Auto,
    /// The merged decoder only.
    Merged,
}

/// The model files found in a model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `encoder_model*.onnx`.
    pub encoder: PathBuf,
    /// The decoder file(s).
    pub decoder: DecoderFiles,
}

/// The decoder file(s) of a model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecoderFiles {
    /// `decoder_model*.onnx` and `decoder_with_past_model*.onnx`.
    Split {
        /// First step.
        first: PathBuf,
        /// Later steps.
        with_past: PathBuf,
    },
    /// `decoder_model_merged*.onnx`.
    Merged(PathBuf),
}

/// Float32 before int8: the same graph, more accurate.
const SUFFIXES: [&str; 2] = ["", "_quantized"];

/// The folders searched: `<model_dir>/onnx/`, then `<model_dir>/`.
fn search_dirs(model_dir: &Path) -> [PathBuf; 2] {
    [model_dir.join("onnx"), model_dir.to_path_buf()]
}

/// The first existing `<stem><suffix>.onnx` in the search folders.
fn find(model_dir: &Path, stem: &str) -> Option<PathBuf> {
    search_dirs(model_dir)
        .iter()
        .flat_map(|dir| SUFFIXES.iter().map(move |suffix| dir.join(format!("{stem}{suffix}.onnx"))))
        .find(|p| p.is_file())
}

impl ModelFiles {
    /// Finds the encoder and the decoder(s). A missing file is an error that names it.
    pub fn find(model_dir: &Path, layout: DecoderLayout) -> Result<Self, String> {
        let dir = model_dir.display();
        let encoder = find(model_dir, "encoder_model")
            .ok_or_else(|| format!("no encoder_model.onnx or encoder_model_quantized.onnx in {dir}/onnx or {dir}"))?;
        // The pair must match in precision: look for both with each suffix in turn.
        let split = search_dirs(model_dir).into_iter().find_map(|d| {
            SUFFIXES.iter().find_map(|suffix| {
                let first = d.join(format!("decoder_model{suffix}.onnx"));
                let with_past = d.join(format!("decoder_with_past_model{suffix}.onnx"));
                (first.is_file() && with_past.is_file()).then_some(DecoderFiles::Split { first, with_past })
            })
        });
        let decoder = match (layout, split) {
            (DecoderLayout::Auto, Some(split)) => split,
            _ => find(model_dir, "decoder_model_merged").map(DecoderFiles::Merged).ok_or_else(|| {
                format!(
                    "no decoder_model_merged.onnx (or _quantized), nor the decoder_model.onnx + \
                     decoder_with_past_model.onnx pair, in {dir}/onnx or {dir}"
                )
            })?,
        };
        Ok(Self { encoder, decoder })
    }
}

/// A decoder session with its input names (kept apart so the names can be borrowed while the
/// session runs).
struct DecoderSession {
    /// The session.
    session: Session,
    /// Its input names, in order.
    inputs: Vec<String>,
}

/// The decoder(s) of one model.
enum Decoders {
    /// First step and later steps in separate graphs.
    Split {
        /// `decoder_model`: `input_ids` + `encoder_hidden_states`.
        first: DecoderSession,
        /// `decoder_with_past_model`: `input_ids` + all the past keys and values.
        with_past: DecoderSession,
    },
    /// One graph with `use_cache_branch`.
    Merged(DecoderSession),
}

/// The encoder and decoder sessions of one model. `Session::run` takes `&mut self`: the owner
/// serialises access.
pub struct Sessions {
    /// The encoder.
    encoder: Session,
    /// The decoder(s).
    decoders: Decoders,
    /// The decoder's shape (for empty past tensors).
    dims: Dims,
}

/// Tokens generated for one 30 s window, with what the no-speech gate needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The generated ids (no prompt, no end of text).
    pub tokens: Vec<u32>,
    /// The probability of `<|nospeech|>` at the start-of-transcript position, if the vocabulary
    /// has that token.
    pub no_speech_prob: Option<f32>,
    /// The mean log-probability of the chosen tokens, the end of text included.
    pub avg_logprob: f32,
    /// Whether decoding stopped on a repetition loop.
    pub looped: bool,
}

/// Builds one session with `threads` intra-op threads.
fn session(path: &Path, threads: usize) -> Result<Session, String> {
    let builder = onnx::session_builder().map_err(|e| e.to_string())?;
    let mut builder =
        builder.with_intra_threads(threads.max(1)).map_err(|e| OnnxError::Session(e.to_string()).to_string())?;
    builder.commit_from_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks a decoder's signature and records its input names.
fn decoder_session(path: &Path, threads: usize, needs_past: bool) -> Result<DecoderSession, String> {
    let session = session(path, threads)?;
    let inputs: Vec<String> = session.inputs().iter().map(|i| i.name().to_string()).collect();
    let bad = |what: &str| format!("{} is not a Whisper decoder: {what} (inputs {inputs:?})", path.display());
    if !inputs.iter().any(|n| n == "input_ids") {
        return Err(bad("no `input_ids` input"));
    }
    if !session.outputs().iter().any(|o| o.name() == "logits") {
        return Err(bad("no `logits` output"));
    }
    if needs_past && !inputs.iter().any(|n| n.starts_with("past_key_values.")) {
        return Err(bad("no `past_key_values.*` inputs"));
    }
    if let Some(other) = inputs.iter().find(|n| {
        !matches!(n.as_str(), "input_ids" | "encoder_hidden_states" | "use_cache_branch")
            && !n.starts_with("past_key_values.")
    }) {
        return Err(bad(&format!("unknown input `{other}`")));
    }
    Ok(DecoderSession { session, inputs })
}

/// Keys or values of the attention cache, by name without the `past_key_values.` / `present.`
/// prefix (`0.decoder.key`, ...).
type Kv = HashMap<String, DynValue>;

/// What one decoder step needs besides the session.
struct StepInput<'a> {
    /// The new tokens.
    tokens: &'a [u32],
    /// The encoder output.
    hidden: &'a DynValue,
    /// Past keys/values by name without the `past_key_values.` prefix; `None` on the first step.
    past: Option<(&'a Kv, &'a Kv)>,
    /// An empty past tensor, for the merged decoder's first step.
    empty: &'a DynValue,
}

/// The outputs of one decoder step, by name without the `present.` prefix, plus the logits.
struct StepOutput {
    /// `logits`, [1, T, vocab].
    logits: DynValue,
    /// `present.*.decoder.*`.
    decoder_kv: Kv,
    /// `present.*.encoder.*` (empty for `decoder_with_past` and the merged cache branch).
    encoder_kv: Kv,
}

impl DecoderSession {
    /// Runs one step. Inputs are matched by name, so any input order works.
    fn step(&mut self, input: StepInput<'_>) -> Result<StepOutput, String> {
        let err = |e: ort::Error| e.to_string();
        let ids: Vec<i64> = input.tokens.iter().map(|&t| i64::from(t)).collect();
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(self.inputs.len());
        for name in &self.inputs {
            let value: SessionInputValue<'_> = match name.as_str() {
                "input_ids" => Tensor::from_array(([1usize, ids.len()], ids.clone())).map_err(err)?.into(),
                "encoder_hidden_states" => input.hidden.into(),
                "use_cache_branch" => Tensor::from_array(([1usize], vec![input.past.is_some()])).map_err(err)?.into(),
                other => {
                    let key = other.strip_prefix("past_key_values.").unwrap_or(other);
                    match input.past {
                        None => input.empty.into(),
                        Some((decoder_kv, encoder_kv)) => {
                            let kv = if key.contains(".encoder.") { encoder_kv } else { decoder_kv };
                            kv.get(key).ok_or_else(|| format!("no past value for `{other}`"))?.into()
                        }
                    }
                }
            };
            values.push((Cow::Borrowed(name.as_str()), value));
        }
        let outputs = self.session.run(values).map_err(err)?;
        let mut logits = None;
        let mut decoder_kv = HashMap::new();
        let mut encoder_kv = HashMap::new();
        for (name, value) in outputs {
            if name == "logits" {
                logits = Some(value);
            } else if let Some(key) = name.strip_prefix("present.") {
                if key.contains(".encoder.") {
                    encoder_kv.insert(key.to_string(), value);
                } else {
                    decoder_kv.insert(key.to_string(), value);
                }
            }
        }
        let logits = logits.ok_or("the decoder gave no `logits`")?;
        Ok(StepOutput { logits, decoder_kv, encoder_kv })
    }
}

/// A view of `logits` [1, T, vocab]: the row of position `t` (negative = from the end).
fn logits_row(logits: &DynValue, t: isize) -> Result<&[f32], String> {
    let (shape, data) = logits.try_extract_tensor::<f32>().map_err(|e| e.to_string())?;
    let (positions, vocab) = match shape.as_ref() {
        [1, p, v] if *p > 0 && *v > 0 => (*p as usize, *v as usize),
        other => return Err(format!("logits of shape {other:?}, expected [1, T, vocab]")),
    };
    let index = if t < 0 { positions.checked_sub(t.unsigned_abs()) } else { Some(t as usize) };
    index
        .filter(|&i| i < positions)
        .and_then(|i| data.get(i * vocab..(i + 1) * vocab))
        .ok_or_else(|| format!("logits row {t} out of {positions}"))
}

/// The token-choice rules of one model.
pub struct Chooser {
    /// `true` for ids that are never chosen (the suppress list and the timestamps).
    masked: Vec<bool>,
    /// Ids never chosen first.
    begin_suppress: Vec<u32>,
}

impl Chooser {
    /// Masks `suppress_tokens` and every id above `<|notimestamps|>` (timestamps).
    pub fn new(tokens: &SpecialTokens, vocab_size: usize) -> Self {
        let mut masked = vec![false; vocab_size];
        for &id in &tokens.suppress {
            if let Some(m) = masked.get_mut(id as usize) {
                *m = true;
            }
        }
        for m in masked.iter_mut().skip(tokens.no_timestamps as usize + 1) {
            *m = true;
        }
        Self { masked, begin_suppress: tokens.begin_suppress.clone() }
    }

    /// The allowed id with the highest logit and its log-probability among the allowed ids.
    /// Ids beyond the mask (a wider vocabulary than configured) are never chosen.
    pub fn choose(&self, logits: &[f32], first: bool) -> Option<(u32, f32)> {
        let allowed = |id: usize| {
            let masked = self.masked.get(id).copied().unwrap_or(true);
            !(masked || first && self.begin_suppress.contains(&(id as u32)))
        };
        let mut best: Option<(usize, f32)> = None;
        for (id, &l) in logits.iter().enumerate() {
            if l.is_nan() || !allowed(id) {
                continue;
            }
            if best.is_none_or(|(_, b)| l > b) {
                best = Some((id, l));
            }
        }
        let (id, max) = best?;
        let sum: f64 = logits
            .iter()
            .enumerate()
            .filter(|(i, l)| !l.is_nan() && allowed(*i))
            .map(|(_, &l)| f64::from(l - max).exp())
            .sum();
        Some((id as u32, -(sum.ln() as f32)))
    }
}

/// The softmax probability of `id` in `logits`.
fn probability(logits: &[f32], id: u32) -> Option<f32> {
    let target = *logits.get(id as usize)?;
    let max = logits.iter().copied().filter(|l| !l.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().filter(|l| !l.is_nan()).map(|&l| f64::from(l - max).exp()).sum();
    Some((f64::from(target - max).exp() / sum) as f32)
}

/// Whether `tokens` ends in a degenerate loop, and if so the length to keep (the tokens before
/// the loop plus one copy of the repeated block). A block of `p` tokens counts as a loop once it
/// repeats back to back at least `max(3, ceil(12 / p))` times: 12 identical tokens, 6 repeats of
/// a pair, 4 of a triple, 3 of anything from 4 to 32 tokens long.
pub fn repetition_cut(tokens: &[u32]) -> Option<usize> {
    for period in 1..=32usize {
        let repeats = 3usize.max(12usize.div_ceil(period));
        let span = period * repeats;
        if span > tokens.len() {
            break;
        }
        let tail = &tokens[tokens.len() - span..];
        let block = &tail[..period];
        if tail.chunks(period).all(|c| c == block) {
            // Extend the loop backwards over further whole repeats of the block.
            let mut start = tokens.len() - span;
            while start >= period && &tokens[start - period..start] == block {
                start -= period;
            }
            return Some(start + period);
        }
    }
    None
}

impl Sessions {
    /// Loads the encoder and decoder(s) with `threads` intra-op threads each.
    pub fn load(files: &ModelFiles, dims: Dims, threads: usize) -> Result<Self, String> {
        let encoder = session(&files.encoder, threads)?;
        let encoder_inputs: Vec<&str> = encoder.inputs().iter().map(|i| i.name()).collect();
        if encoder_inputs != ["input_features"] || encoder.outputs().is_empty() {
            return Err(format!(
                "{} is not a Whisper encoder: inputs {encoder_inputs:?}, expected [\"input_features\"]",
                files.encoder.display()
            ));
        }
        let decoders = match &files.decoder {
            DecoderFiles::Split { first, with_past } => Decoders::Split {
                first: decoder_session(first, threads, false)?,
                with_past: decoder_session(with_past, threads, true)?,
            },
            DecoderFiles::Merged(path) => {
                let merged = decoder_session(path, threads, true)?;
                if !merged.inputs.iter().any(|n| n == "use_cache_branch") {
                    return Err(format!("{} has no `use_cache_branch` input: not a merged decoder", path.display()));
                }
                Decoders::Merged(merged)
            }
        };
        Ok(Self { encoder, decoders, dims })
    }

    /// Runs the encoder on `[n_mels, 3000]` features; returns `last_hidden_state`.
    pub fn encode(&mut self, features: &[f32]) -> Result<DynValue, String> {
        let err = |e: ort::Error| e.to_string();
        let input = TensorRef::from_array_view(([1usize, self.dims.n_mels, N_FRAMES], features)).map_err(err)?;
        let outputs = self.encoder.run([SessionInputValue::from(input)]).map_err(err)?;
        let mut first = None;
        for (name, value) in outputs {
            if name == "last_hidden_state" {
                return Ok(value);
            }
            first.get_or_insert(value);
        }
        first.ok_or_else(|| "the encoder gave no output".to_string())
    }

    /// An empty past tensor, [1, heads, 0, head_dim].
    fn empty_past(&self) -> Result<DynValue, String> {
        Tensor::<f32>::from_array(([1usize, self.dims.heads, 0, self.dims.head_dim], Vec::new()))
            .map(|t| t.into_dyn())
            .map_err(|e| e.to_string())
    }

    /// The first-step session.
    fn first(&mut self) -> &mut DecoderSession {
        match &mut self.decoders {
            Decoders::Split { first, .. } => first,
            Decoders::Merged(merged) => merged,
        }
    }

    /// The later-steps session.
    fn with_past(&mut self) -> &mut DecoderSession {
        match &mut self.decoders {
            Decoders::Split { with_past, .. } => with_past,
            Decoders::Merged(merged) => merged,
        }
    }

    /// One decoder pass on `[<|startoftranscript|>]`; returns the language token with the highest
    /// logit and its probability among the languages.
    pub fn detect_language(&mut self, hidden: &DynValue, tokens: &SpecialTokens) -> Result<(u32, f32), String> {
        let empty = self.empty_past()?;
        let out = self.first().step(StepInput { tokens: &[tokens.sot], hidden, past: None, empty: &empty })?;
        let row = logits_row(&out.logits, -1)?;
        let scores: Vec<(u32, f32)> =
            tokens.languages.iter().filter_map(|(_, id)| row.get(*id as usize).map(|&l| (*id, l))).collect();
        let (best, max) = scores
            .iter()
            .copied()
            .filter(|(_, l)| !l.is_nan())
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or("no language logits")?;
        let sum: f32 = scores.iter().filter(|(_, l)| !l.is_nan()).map(|(_, l)| (l - max).exp()).sum();
        Ok((best, 1.0 / sum))
    }

    /// Greedy decoding after `prompt`, at most `limit` new tokens.
    pub fn greedy(
        &mut self,
        hidden: &DynValue,
        prompt: &[u32],
        tokens: &SpecialTokens,
        chooser: &Chooser,
        limit: usize,
    ) -> Result<Decoded, String> {
        let empty = self.empty_past()?;
        let first = self.first().step(StepInput { tokens: prompt, hidden, past: None, empty: &empty })?;
        // The no-speech probability is read at the <|startoftranscript|> position (row 0).
        let no_speech_prob = match tokens.no_speech {
            Some(id) => probability(logits_row(&first.logits, 0)?, id),
            None => None,
        };
        let encoder_kv = first.encoder_kv;
        if encoder_kv.is_empty() {
            return Err("the first decoder step gave no `present.*.encoder.*` values".into());
        }
        let mut decoder_kv = first.decoder_kv;
        let mut choice = chooser.choose(logits_row(&first.logits, -1)?, true);
        drop(first.logits);

        let mut generated: Vec<u32> = Vec::new();
        let mut sum_logprob = 0.0f64;
        let mut looped = false;
        while let Some((token, logprob)) = choice {
            sum_logprob += f64::from(logprob);
            if token == tokens.eot || generated.len() >= limit {
                break;
            }
            generated.push(token);
            if let Some(keep) = repetition_cut(&generated) {
                generated.truncate(keep);
                looped = true;
                break;
            }
            if generated.len() >= limit {
                break;
            }
            let out = self.with_past().step(StepInput {
                tokens: &[token],
                hidden,
                past: Some((&decoder_kv, &encoder_kv)),
                empty: &empty,
            })?;
            choice = chooser.choose(logits_row(&out.logits, -1)?, false);
            decoder_kv = out.decoder_kv;
        }
        let avg_logprob = (sum_logprob / (generated.len() + 1) as f64) as f32;
        Ok(Decoded { tokens: generated, no_speech_prob, avg_logprob, looped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_is_cut_to_one_copy() {
        // Period 4, three times: cut after the first copy.
        let mut t = vec![1, 2, 3];
        for _ in 0..3 {
            t.extend([7, 8, 9, 10]);
        }
        assert_eq!(repetition_cut(&t), Some(7));
        // Four copies, the loop reaches back over all of them.
        t.extend([7, 8, 9, 10]);
        assert_eq!(repetition_cut(&t), Some(7));
        // Two copies are not a loop; nor are short stutters.
        assert_eq!(repetition_cut(&[1, 2, 3, 4, 1, 2, 3, 4]), None);
        assert_eq!(repetition_cut(&[5, 5, 5, 5]), None);
        assert_eq!(repetition_cut(&[3, 4, 3, 4, 3, 4]), None);
        // Twelve identical tokens are.
        assert_eq!(repetition_cut(&[9; 12]), Some(1));
        assert_eq!(repetition_cut(&[1, 2, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]), Some(3));
        assert_eq!(repetition_cut(&[]), None);
    }

    fn tokens() -> SpecialTokens {
        SpecialTokens {
            sot: 5,
            eot: 4,
            no_timestamps: 7,
            no_speech: Some(6),
            transcribe: None,
            translate: None,
            languages: Vec::new(),
            multilingual: false,
            suppress: vec![1],
            begin_suppress: vec![2, 4],
        }
    }

    #[test]
    fn chooser_masks_suppressed_begin_and_timestamps() {
        let chooser = Chooser::new(&tokens(), 10);
        // id 9 (a timestamp) and 1 (suppressed) are highest but masked.
        let logits = [0.0, 9.0, 5.0, 1.0, 4.0, 0.0, 0.0, 0.0, 0.0, 10.0];
        assert_eq!(chooser.choose(&logits, false).map(|c| c.0), Some(2));
        // First step: 2 and 4 are begin-suppressed.
        assert_eq!(chooser.choose(&logits, true).map(|c| c.0), Some(3));
        // Log-probability over the allowed ids: ids 0, 2, 3, 4, 5, 6, 7.
        let (_, lp) = chooser.choose(&logits, false).unwrap();
        let z: f64 = [0.0f64, 5.0, 1.0, 4.0, 0.0, 0.0, 0.0].iter().map(|l| (l - 5.0).exp()).sum();
        assert!((f64::from(lp) + z.ln()).abs() < 1e-5);
        // NaN and ids beyond the mask are never chosen; nothing allowed gives None.
        let wide = [f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 99.0];
        assert_eq!(chooser.choose(&wide, false).map(|c| c.0), Some(7));
        assert_eq!(chooser.choose(&[f32::NAN, 1.0], false), None);
    }

    #[test]
    fn softmax_probability() {
        let p = probability(&[0.0, 0.0, 0.0, 0.0], 2).unwrap();
        assert!((p - 0.25).abs() < 1e-6);
        assert_eq!(probability(&[0.0], 3), None);
    }

    #[test]
    fn files_are_found_and_missing_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelFiles::find(dir.path(), DecoderLayout::Auto).unwrap_err();
        assert!(err.contains("encoder_model.onnx"), "{err}");
        std::fs::create_dir(dir.path().join("onnx")).unwrap();
        let touch = |name: &str| std::fs::write(dir.path().join("onnx").join(name), b"x").unwrap();
        touch("encoder_model_quantized.onnx");
        let err = ModelFiles::find(dir.path(), DecoderLayout::Auto).unwrap_err();
        assert!(err.contains("decoder_model_merged.onnx"), "{err}");
        touch("decoder_model_merged_quantized.onnx");
        touch("decoder_model_quantized.onnx");
        // Half a pair falls back to the merged decoder.
        let files = ModelFiles::find(dir.path(), DecoderLayout::Auto).unwrap();
        assert!(matches!(files.decoder, DecoderFiles::Merged(_)));
        touch("decoder_with_past_model_quantized.onnx");
        let files = ModelFiles::find(dir.path(), DecoderLayout::Auto).unwrap();
        assert!(matches!(files.decoder, DecoderFiles::Split { .. }));
        assert!(files.encoder.ends_with("onnx/encoder_model_quantized.onnx"));
        let files = ModelFiles::find(dir.path(), DecoderLayout::Merged).unwrap();
        assert!(matches!(files.decoder, DecoderFiles::Merged(_)));
        // A float32 encoder at the top level is preferred over nothing, and onnx/ over the top.
        std::fs::write(dir.path().join("encoder_model.onnx"), b"x").unwrap();
        let files = ModelFiles::find(dir.path(), DecoderLayout::Auto).unwrap();
        assert!(files.encoder.ends_with("onnx/encoder_model_quantized.onnx"));
    }
}
