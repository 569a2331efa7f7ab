//! Silero VAD: finds where the user starts and stops speaking in the 16 kHz uplink.
//!
//! One [`SileroModel`] (the ONNX session) is loaded per process and shared; each session owns a
//! [`Vad`] with its own recurrent state, context and decision history. Decisions follow the
//! Python server: 512-sample windows with 64 samples of context, a double threshold
//! (hysteresis), speech once 3 of the last 5 windows are voiced, and the end of an utterance
//! after `min_silence_duration_ms` of silence, counted in audio time (samples received), never
//! wall-clock time, so a stall on our side can never split an utterance.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use crate::config::SileroVadConfig;
use crate::onnx::{self, OnnxError};

/// The only sample rate the detector runs at.
const SAMPLE_RATE: u32 = 16_000;

/// New samples per inference window.
const WINDOW: usize = 512;

/// Samples of the previous window prepended as context (without it the model never fires).
const CONTEXT: usize = 64;

/// Length of the model's `input` tensor.
const INPUT: usize = CONTEXT + WINDOW;

/// Length of the model's recurrent `state` tensor ([2, 1, 128]).
const STATE: usize = 2 * 128;

/// Windows in the voting history (the Python server's rule: 3 of the last 5).
const VOTE_WINDOWS: u32 = 5;

/// Voiced windows among the last [`VOTE_WINDOWS`] needed to start speech.
const VOTES_TO_START: u32 = 3;

/// The model's `sr` input: a scalar, always 16 kHz.
static SR: [i64; 1] = [SAMPLE_RATE as i64];

/// Errors from loading or running Silero VAD.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    /// No model file was found.
    #[error("Silero VAD model not found (tried {}): run models/fetch.sh", list(.0))]
    ModelMissing(Vec<PathBuf>),
    /// The model does not have the inputs and outputs of Silero VAD v5/v6.
    #[error("{path} is not a Silero VAD model: {message}")]
    Signature {
        /// The model file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// ONNX Runtime is not initialised, or the session could not be built.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// An inference failed.
    #[error("Silero VAD inference: {0}")]
    Inference(String),
}

/// Formats a path list for an error message.
fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Finds `silero_vad.onnx`: `<model_dir>/silero_vad.onnx`, then
/// `<model_dir>/src/silero_vad/data/silero_vad.onnx` (the Python server's layout), then
/// `<models_dir>/silero_vad.onnx`. An empty `model_dir` skips the first two.
pub fn find_model(model_dir: &str, models_dir: &Path) -> Result<PathBuf, VadError> {
    let mut tried = Vec::with_capacity(3);
    if !model_dir.is_empty() {
        let dir = Path::new(model_dir);
        tried.push(dir.join("silero_vad.onnx"));
        tried.push(dir.join("src/silero_vad/data/silero_vad.onnx"));
    }
    tried.push(models_dir.join("silero_vad.onnx"));
    match tried.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(VadError::ModelMissing(tried)),
    }
}

/// The Silero VAD ONNX session, loaded once and shared by every session's [`Vad`].
#[derive(Debug)]
pub struct SileroModel {
    /// `Session::run` takes `&mut self`, so concurrent sessions serialise on this mutex. One run
    /// is about 0.1 ms and the lock is never held across an `.await`, so contention is
    /// negligible next to one model copy (and one thread pool) per device.
    session: Mutex<Session>,
    /// Positions of `input`, `state` and `sr` among the model's inputs.
    input_order: [usize; 3],
}

impl SileroModel {
    /// Loads the model (ONNX Runtime must be initialised with [`onnx::init`]) and checks its
    /// signature: inputs `input`, `state`, `sr`; outputs `output`, `stateN`.
    pub fn load(model_path: &Path) -> Result<Arc<Self>, VadError> {
        if !model_path.is_file() {
            return Err(VadError::ModelMissing(vec![model_path.to_path_buf()]));
        }
        let session = onnx::session_builder()?
            .commit_from_file(model_path)
            .map_err(|e| OnnxError::Session(format!("{}: {e}", model_path.display())))?;
        let signature = |message: String| VadError::Signature { path: model_path.to_path_buf(), message };
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        if inputs.len() != 3 {
            return Err(signature(format!("expected 3 inputs (input, state, sr), found {inputs:?}")));
        }
        let mut input_order = [0usize; 3];
        for (slot, name) in input_order.iter_mut().zip(["input", "state", "sr"]) {
            *slot = inputs
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| signature(format!("no input `{name}` (inputs: {inputs:?})")))?;
        }
        for name in ["output", "stateN"] {
            if !session.outputs().iter().any(|o| o.name() == name) {
                let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
                return Err(signature(format!("no output `{name}` (outputs: {outputs:?})")));
            }
        }
        tracing::debug!(model = %model_path.display(), "Silero VAD loaded");
        Ok(Arc::new(Self { session: Mutex::new(session), input_order }))
    }

    /// Runs one window: `input` is 64 samples of context + 512 new samples at 16 kHz in [-1, 1];
    /// `state` is read and replaced by the new recurrent state. Returns the speech probability.
    fn infer(&self, input: &[f32; INPUT], state: &mut [f32; STATE]) -> Result<f32, VadError> {
        let err = |e: ort::Error| VadError::Inference(e.to_string());
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let input_value = TensorRef::from_array_view(([1usize, INPUT], &input[..])).map_err(err)?;
        let state_value = TensorRef::from_array_view(([2usize, 1, 128], &state[..])).map_err(err)?;
        let sr_value = TensorRef::from_array_view(((), &SR[..])).map_err(err)?;
        // Place the three values in the model's input order.
        let mut values: [Option<SessionInputValue<'_>>; 3] = [None, None, None];
        for (position, value) in self.input_order.iter().zip([input_value.into(), state_value.into(), sr_value.into()])
        {
            if let Some(slot) = values.get_mut(*position) {
                *slot = Some(value);
            }
        }
        let [Some(a), Some(b), Some(c)] = values else {
            return Err(VadError::Inference("model input positions are inconsistent".into()));
        };
        let outputs = session.run([a, b, c]).map_err(err)?;
        let output = outputs.get("output").ok_or_else(|| VadError::Inference("no `output`".into()))?;
        let (_, prob) = output.try_extract_tensor::<f32>().map_err(err)?;
        let probability = prob.first().copied().ok_or_else(|| VadError::Inference("empty `output`".into()))?;
        let new_state = outputs.get("stateN").ok_or_else(|| VadError::Inference("no `stateN`".into()))?;
        let (_, new_state) = new_state.try_extract_tensor::<f32>().map_err(err)?;
        if new_state.len() != STATE {
            return Err(VadError::Inference(format!("`stateN` has {} values, expected {STATE}", new_state.len())));
        }
        // The input views of `state` were consumed by `run`; the output is ONNX Runtime's buffer.
        state.copy_from_slice(new_state);
        Ok(probability)
    }
}

/// A transition reported by [`Vad::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// No transition.
    None,
    /// The user started speaking.
    SpeechStart,
    /// The user stopped speaking (the silence reached `min_silence_duration_ms`).
    SpeechEnd,
}

/// The per-session speech detector.
pub struct Vad {
    model: Arc<SileroModel>,
    threshold: f32,
    threshold_low: f32,
    /// `min_silence_duration_ms` in samples at 16 kHz.
    min_silence_samples: u64,
    /// Recurrent model state ([2, 1, 128]).
    state: [f32; STATE],
    /// The model input: context (last 64 samples of the previous window) + the new window.
    input: [f32; INPUT],
    /// Samples received but not yet a full window.
    carry: [i16; WINDOW],
    carry_len: usize,
    /// Voiced flags of the last windows, newest in bit 0.
    history: u8,
    /// The detector's own state (transitions may still be waiting to be reported).
    speaking: bool,
    /// Unvoiced samples since the last voiced window, while speaking.
    silence_samples: u64,
    /// The state the caller has been told about through events.
    reported_speaking: bool,
    /// Transitions that happened but were not reported yet (they alternate, starting with the
    /// opposite of `reported_speaking`).
    unreported: u32,
    /// Per-window (probability, speaking) trace, to compare decisions across chunkings.
    #[cfg(test)]
    trace: Vec<(f32, bool)>,
}

impl std::fmt::Debug for Vad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vad")
            .field("threshold", &self.threshold)
            .field("threshold_low", &self.threshold_low)
            .field("min_silence_samples", &self.min_silence_samples)
            .field("speaking", &self.speaking)
            .field("reported_speaking", &self.reported_speaking)
            .finish_non_exhaustive()
    }
}

impl Vad {
    /// Creates a detector over the shared `model` with the thresholds and silence duration of
    /// `cfg`.
    pub fn new(model: Arc<SileroModel>, cfg: &SileroVadConfig) -> Self {
        Self {
            model,
            threshold: cfg.threshold,
            threshold_low: cfg.threshold_low,
            min_silence_samples: u64::from(cfg.min_silence_duration_ms) * u64::from(SAMPLE_RATE) / 1000,
            state: [0.0; STATE],
            input: [0.0; INPUT],
            carry: [0; WINDOW],
            carry_len: 0,
            history: 0,
            speaking: false,
            silence_samples: 0,
            reported_speaking: false,
            unreported: 0,
            #[cfg(test)]
            trace: Vec::new(),
        }
    }

    /// Feeds 16 kHz mono PCM (any length) and returns the transition to report, if any.
    ///
    /// Samples are collected into 512-sample windows (the remainder is carried to the next call)
    /// and each complete window runs one inference; nothing is allocated here.
    ///
    /// At most one transition is reported per call. If the audio of one call holds more (say a
    /// whole short utterance: SpeechStart then SpeechEnd), the first is reported and the others
    /// stay pending, in order, for the next calls (an empty `pcm` just delivers the next one).
    /// The decisions themselves depend only on the audio, never on how it was chunked.
    ///
    /// If an inference fails, that window is skipped, the rest of `pcm` is still processed and
    /// the first error is returned (a transition found meanwhile stays pending for the next
    /// call); the detector stays usable.
    pub fn push(&mut self, mut pcm: &[i16]) -> Result<VadEvent, VadError> {
        let mut first_error = None;
        while !pcm.is_empty() {
            let take = (WINDOW - self.carry_len).min(pcm.len());
            let (head, rest) = pcm.split_at(take);
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(head);
            self.carry_len += take;
            pcm = rest;
            if self.carry_len == WINDOW {
                self.carry_len = 0;
                if let Err(e) = self.run_window() {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.next_event()),
        }
    }

    /// Runs the model on the full carry window and updates the decision state.
    fn run_window(&mut self) -> Result<(), VadError> {
        for (dst, &src) in self.input[CONTEXT..].iter_mut().zip(self.carry.iter()) {
            *dst = f32::from(src) / 32768.0;
        }
        let result = self.model.infer(&self.input, &mut self.state);
        // The last 64 samples of this window are the next window's context.
        self.input.copy_within(WINDOW.., 0);
        let probability = result?;
        self.decide(probability);
        Ok(())
    }

    /// Applies the decision rules to one window's speech probability.
    fn decide(&mut self, probability: f32) {
        let voiced = probability >= self.threshold || (self.speaking && probability >= self.threshold_low);
        let mask = (1u8 << VOTE_WINDOWS) - 1;
        self.history = ((self.history << 1) | u8::from(voiced)) & mask;
        if !self.speaking {
            if self.history.count_ones() >= VOTES_TO_START {
                self.speaking = true;
                self.silence_samples = 0;
                self.unreported += 1;
            }
        } else if voiced {
            self.silence_samples = 0;
        } else {
            self.silence_samples += WINDOW as u64;
            if self.silence_samples >= self.min_silence_samples {
                self.speaking = false;
                self.silence_samples = 0;
                // The windows that started this utterance must not vote for the next one.
                self.history = 0;
                self.unreported += 1;
            }
        }
        #[cfg(test)]
        self.trace.push((probability, self.speaking));
    }

    /// Pops the oldest unreported transition.
    fn next_event(&mut self) -> VadEvent {
        if self.unreported == 0 {
            return VadEvent::None;
        }
        self.unreported -= 1;
        self.reported_speaking = !self.reported_speaking;
        if self.reported_speaking { VadEvent::SpeechStart } else { VadEvent::SpeechEnd }
    }

    /// Forgets everything: model state, context, carried samples, history and pending events.
    pub fn reset(&mut self) {
        self.state = [0.0; STATE];
        self.input = [0.0; INPUT];
        self.carry_len = 0;
        self.history = 0;
        self.speaking = false;
        self.silence_samples = 0;
        self.reported_speaking = false;
        self.unreported = 0;
    }

    /// Whether the user is speaking, as reported by the events returned so far.
    pub fn in_speech(&self) -> bool {
        self.reported_speaking
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::resample::resample;

    fn model() -> Arc<SileroModel> {
        onnx::init_for_tests();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let path = find_model("", &dir).unwrap_or_else(|e| panic!("{e}"));
        SileroModel::load(&path).unwrap_or_else(|e| panic!("{e}: run models/fetch.sh"))
    }

    fn config(min_silence_duration_ms: u32) -> SileroVadConfig {
        SileroVadConfig { min_silence_duration_ms, ..SileroVadConfig::default() }
    }

    /// Speaks `text` with espeak-ng and returns it at 16 kHz.
    fn speech(text: &str) -> Vec<i16> {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("speech.wav");
        let status = std::process::Command::new("espeak-ng")
            .arg("-w")
            .arg(&wav)
            .arg(text)
            .status()
            .expect("espeak-ng must be installed (apt-get install espeak-ng)");
        assert!(status.success());
        let mut reader = hound::WavReader::open(&wav).unwrap();
        let rate = reader.spec().sample_rate;
        let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
        resample(&samples, rate, SAMPLE_RATE)
    }

    fn silence(ms: usize) -> Vec<i16> {
        vec![0; ms * 16]
    }

    /// First and last sample index above an amplitude of 1000.
    fn voice_bounds(pcm: &[i16]) -> (usize, usize) {
        let first = pcm.iter().position(|s| s.unsigned_abs() > 1000).unwrap();
        let last = pcm.iter().rposition(|s| s.unsigned_abs() > 1000).unwrap();
        (first, last)
    }

    /// Pushes `pcm` in `chunk`-sized pieces; returns each non-None event with the number of
    /// samples pushed when it was reported.
    fn run(vad: &mut Vad, pcm: &[i16], chunk: usize) -> Vec<(VadEvent, usize)> {
        let mut events = Vec::new();
        let mut pushed = 0;
        for piece in pcm.chunks(chunk) {
            pushed += piece.len();
            let event = vad.push(piece).unwrap();
            if event != VadEvent::None {
                events.push((event, pushed));
            }
        }
        events
    }

    fn padded(voice: &[i16]) -> Vec<i16> {
        [silence(1000), voice.to_vec(), silence(1000)].concat()
    }

    #[test]
    fn one_utterance_gives_one_start_and_one_end() {
        let model = model();
        let cfg = config(500);
        let voice = speech("hello there, how are you today");
        let audio = padded(&voice);
        let (onset, offset) = voice_bounds(&audio);
        let mut vad = Vad::new(model, &cfg);
        let events = run(&mut vad, &audio, 960);
        assert_eq!(events.len(), 2, "{events:?}");
        let (start, start_at) = events[0];
        let (end, end_at) = events[1];
        assert_eq!(start, VadEvent::SpeechStart);
        assert_eq!(end, VadEvent::SpeechEnd);
        assert!(start_at > onset, "start {start_at} before the voice at {onset}");
        assert!(start_at - onset <= 300 * 16, "start {} ms after the onset", (start_at - onset) / 16);
        assert!(end_at >= offset + 500 * 16, "end {} ms after the voice", (end_at - offset) / 16);
        assert!(end_at <= offset + 1000 * 16, "end {} ms after the voice", (end_at - offset) / 16);
        assert!(!vad.in_speech());
    }

    #[test]
    fn silence_and_low_noise_never_start() {
        let model = model();
        let mut vad = Vad::new(model, &config(500));
        assert!(run(&mut vad, &silence(3000), 960).is_empty());
        let mut seed = 0x9e37_79b9u32;
        let noise: Vec<i16> = (0..16_000 * 3)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed % 201) as i16 - 100
            })
            .collect();
        assert!(run(&mut vad, &noise, 960).is_empty());
        assert!(!vad.in_speech());
    }

    #[test]
    fn decisions_do_not_depend_on_chunking() {
        let model = model();
        let cfg = config(500);
        let audio = padded(&speech("hello there, how are you today"));
        let mut reference: Option<Vec<(f32, bool)>> = None;
        for chunk in [960, 512, 1, 333, 4096, audio.len()] {
            let mut vad = Vad::new(model.clone(), &cfg);
            let mut events: Vec<VadEvent> = run(&mut vad, &audio, chunk).into_iter().map(|(e, _)| e).collect();
            // Deliver anything still pending (a single push of the whole clip holds both events).
            loop {
                match vad.push(&[]).unwrap() {
                    VadEvent::None => break,
                    e => events.push(e),
                }
            }
            assert_eq!(events, vec![VadEvent::SpeechStart, VadEvent::SpeechEnd], "chunk {chunk}");
            let trace = std::mem::take(&mut vad.trace);
            assert_eq!(trace.len(), audio.len() / WINDOW);
            // Bit-identical probabilities and states: the context and carry are chunk-independent.
            match &reference {
                None => reference = Some(trace),
                Some(first) => assert_eq!(&trace, first, "chunk {chunk} changed the decisions"),
            }
        }
    }

    #[test]
    fn a_whole_utterance_in_one_push_reports_start_then_end() {
        let model = model();
        let audio = padded(&speech("good morning"));
        let mut vad = Vad::new(model, &config(500));
        assert_eq!(vad.push(&audio).unwrap(), VadEvent::SpeechStart);
        assert!(vad.in_speech());
        assert_eq!(vad.push(&[]).unwrap(), VadEvent::SpeechEnd);
        assert!(!vad.in_speech());
        assert_eq!(vad.push(&[]).unwrap(), VadEvent::None);
    }

    #[test]
    fn min_silence_is_respected() {
        let model = model();
        // Trim espeak's own leading and trailing silence so the gap is exactly `gap_ms`.
        let voice = speech("hello there");
        let (first, last) = voice_bounds(&voice);
        let voice = voice[first..=last].to_vec();
        let with_gap = |gap_ms: usize| padded(&[voice.clone(), silence(gap_ms), voice.clone()].concat());

        // A 300 ms pause at min_silence 500 does not end the utterance.
        let mut vad = Vad::new(model.clone(), &config(500));
        let events: Vec<VadEvent> = run(&mut vad, &with_gap(300), 960).into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, vec![VadEvent::SpeechStart, VadEvent::SpeechEnd]);

        // A 1.2 s pause does: two utterances.
        let mut vad = Vad::new(model.clone(), &config(500));
        let events: Vec<VadEvent> = run(&mut vad, &with_gap(1200), 960).into_iter().map(|(e, _)| e).collect();
        assert_eq!(
            events,
            vec![VadEvent::SpeechStart, VadEvent::SpeechEnd, VadEvent::SpeechStart, VadEvent::SpeechEnd]
        );

        // At min_silence 2000 the trailing second of silence is not enough to end it.
        let mut vad = Vad::new(model, &config(2000));
        let events: Vec<VadEvent> = run(&mut vad, &with_gap(1200), 960).into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, vec![VadEvent::SpeechStart]);
        assert!(vad.in_speech());
    }

    #[test]
    fn reset_forgets_speech() {
        let model = model();
        let voice = speech("hello there");
        let mut vad = Vad::new(model, &config(500));
        let events = run(&mut vad, &[silence(500), voice.clone()].concat(), 960);
        assert_eq!(events.first().map(|e| e.0), Some(VadEvent::SpeechStart));
        vad.reset();
        assert!(!vad.in_speech());
        assert!(run(&mut vad, &silence(2000), 960).is_empty(), "no SpeechEnd after a reset");
        // And it detects the next utterance normally.
        let events: Vec<VadEvent> = run(&mut vad, &padded(&voice), 960).into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, vec![VadEvent::SpeechStart, VadEvent::SpeechEnd]);
    }

    #[test]
    fn find_model_lists_what_it_tried() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_model("/nonexistent/vad", dir.path()).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/vad/silero_vad.onnx"), "{err}");
        assert!(err.contains("/nonexistent/vad/src/silero_vad/data/silero_vad.onnx"), "{err}");
        assert!(err.contains("models/fetch.sh"), "{err}");
        // The Python server's layout is found.
        let nested = dir.path().join("src/silero_vad/data");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(nested.join("silero_vad.onnx"), b"x").unwrap();
        let found = find_model(dir.path().to_str().unwrap(), Path::new("/nonexistent")).unwrap();
        assert_eq!(found, nested.join("silero_vad.onnx"));
        let err = SileroModel::load(Path::new("/nonexistent/silero_vad.onnx")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/silero_vad.onnx") && err.contains("models/fetch.sh"), "{err}");
    }
}
