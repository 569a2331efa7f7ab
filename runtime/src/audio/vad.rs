//! Silero VAD: finds where the user starts and stops speaking in the 16 kHz uplink.
//!
//! One [`SileroModel`] (the ONNX session) is loaded per process and shared; each session owns a
//! [`Vad`] with its own recurrent state, context and decision state. The model runs on 512-sample
//! windows with 64 samples of context; the decisions are the pure rules of
//! [`super::endpoint`]: speech once 3 of the last 5 windows are voiced (the Python server's rule),
//! and the end of an utterance `min_silence_duration_ms` after the last loud sample once the model
//! hears no voice (or after that much of the model's own silence), counted in audio time
//! (samples received), never wall-clock time, so a stall on our side can never split an
//! utterance.
//!
//! # Batching
//!
//! The model takes a batch dimension, and one run over B windows costs far less than B runs of
//! one window. A [`VadBatcher`] (one per loaded model) owns a dedicated OS thread: sessions hand
//! it their window and recurrent state, it runs every window queued at that moment as one batch
//! and answers each session. There is no waiting for a batch to fill: at low load a batch is a
//! single window; under load the windows that queue up during one run form the next batch. The
//! model never runs on the async runtime's worker threads. The decisions are the same as
//! running each window alone ([`Vad::new_unbatched`]), up to float rounding in the batched
//! kernels.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use tokio::sync::oneshot;

use super::endpoint::EndPointer;
use crate::config::SileroVadConfig;
use crate::onnx::{self, OnnxError};

/// The only sample rate the detector runs at.
const SAMPLE_RATE: u32 = 16_000;

/// New samples per inference window.
const WINDOW: usize = 512;

/// Samples of the previous window prepended as context (without it the model never fires).
const CONTEXT: usize = 64;

/// Length of one window's model input: context + new samples.
pub const INPUT: usize = CONTEXT + WINDOW;

/// Width of one layer of the recurrent state.
const LAYER: usize = 128;

/// Length of one session's recurrent state ([2, 1, 128]).
pub const STATE: usize = 2 * LAYER;

/// Most windows the [`VadBatcher`] runs in one inference.
pub const MAX_BATCH: usize = 256;

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
    /// The batch thread could not be started, or is gone.
    #[error("Silero VAD batcher: {0}")]
    Batcher(String),
}

impl VadError {
    /// The error to give each window of a batch whose run failed with `self`.
    fn for_each_job(&self) -> Self {
        match self {
            Self::Inference(message) => Self::Inference(message.clone()),
            other => Self::Inference(other.to_string()),
        }
    }
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

/// The Silero VAD ONNX session, loaded once and shared (through a [`VadBatcher`]) by every
/// session's [`Vad`].
#[derive(Debug)]
pub struct SileroModel {
    /// `Session::run` takes `&mut self`, so runs serialise on this mutex. In the server only the
    /// batch thread runs the model, so it is never contended there.
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

    /// Runs B windows (B = `inputs.len()`, which must equal `states.len()`) in ONE inference and
    /// returns their speech probabilities, in order.
    ///
    /// Each input is 64 samples of context + 512 new samples at 16 kHz in [-1, 1]; each state is
    /// one session's recurrent state ([2, 1, 128]: layer 0 then layer 1), read and replaced by
    /// the new one. In the batch the state tensor is [2, B, 128], so the sessions' layers are
    /// interleaved on the way in and split again on the way out. If the run fails, no state is
    /// changed. Blocks for the run (about 0.1 ms for one window): never call it on an async
    /// worker thread with a large batch.
    pub fn infer_batch(&self, inputs: &[[f32; INPUT]], states: &mut [[f32; STATE]]) -> Result<Vec<f32>, VadError> {
        let batch = inputs.len();
        if states.len() != batch {
            return Err(VadError::Inference(format!("{batch} inputs but {} states", states.len())));
        }
        if batch == 0 {
            return Ok(Vec::new());
        }
        let err = |e: ort::Error| VadError::Inference(e.to_string());
        // [2, B, 128]: every session's layer 0, then every session's layer 1.
        let mut packed: Vec<f32> = Vec::with_capacity(STATE * batch);
        packed.extend(states.iter().flat_map(|s| &s[..LAYER]));
        packed.extend(states.iter().flat_map(|s| &s[LAYER..]));
        let input_value = TensorRef::from_array_view(([batch, INPUT], inputs.as_flattened())).map_err(err)?;
        let state_value = TensorRef::from_array_view(([2usize, batch, LAYER], &packed[..])).map_err(err)?;
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
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session.run([a, b, c]).map_err(err)?;
        let output = outputs.get("output").ok_or_else(|| VadError::Inference("no `output`".into()))?;
        let (_, probabilities) = output.try_extract_tensor::<f32>().map_err(err)?;
        if probabilities.len() != batch {
            let found = probabilities.len();
            return Err(VadError::Inference(format!("`output` has {found} values for a batch of {batch}")));
        }
        let new_state = outputs.get("stateN").ok_or_else(|| VadError::Inference("no `stateN`".into()))?;
        let (shape, new_state) = new_state.try_extract_tensor::<f32>().map_err(err)?;
        let expected = [2, batch as i64, LAYER as i64];
        if **shape != expected || new_state.len() != STATE * batch {
            return Err(VadError::Inference(format!("`stateN` has shape {:?}, expected {expected:?}", &**shape)));
        }
        // Split [2, B, 128] back into each session's [2, 1, 128].
        let (layer0, layer1) = new_state.split_at(batch * LAYER);
        for ((state, l0), l1) in states.iter_mut().zip(layer0.chunks_exact(LAYER)).zip(layer1.chunks_exact(LAYER)) {
            let (dst0, dst1) = state.split_at_mut(LAYER);
            dst0.copy_from_slice(l0);
            dst1.copy_from_slice(l1);
        }
        Ok(probabilities.to_vec())
    }

    /// Runs one window (a batch of one); `state` is replaced by the new state on success.
    fn infer_one(&self, input: &[f32; INPUT], state: &[f32; STATE]) -> Result<(f32, [f32; STATE]), VadError> {
        let mut states = [*state];
        let probabilities = self.infer_batch(std::slice::from_ref(input), &mut states)?;
        let probability = probabilities.first().copied().ok_or_else(|| VadError::Inference("empty `output`".into()))?;
        let [new_state] = states;
        Ok((probability, new_state))
    }
}

/// What the batch thread runs on each batch: [`SileroModel::infer_batch`] in the server (tests
/// wrap it to count, hold or fail runs).
type Engine = Box<dyn FnMut(&[[f32; INPUT]], &mut [[f32; STATE]]) -> Result<Vec<f32>, VadError> + Send>;

/// One window waiting for the batch thread.
struct Job {
    input: [f32; INPUT],
    state: [f32; STATE],
    reply: oneshot::Sender<Result<(f32, [f32; STATE]), VadError>>,
}

/// Counters shared by a [`VadBatcher`] and its thread.
#[derive(Debug, Default)]
struct Counters {
    runs: AtomicU64,
    windows: AtomicU64,
}

/// How much work a [`VadBatcher`] has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherStats {
    /// Inferences run (one per batch, failed ones included).
    pub runs: u64,
    /// Windows answered by those runs; `windows / runs` is the mean batch size.
    pub windows: u64,
}

/// Runs the windows of all sessions sharing one [`SileroModel`] in batches, on a dedicated OS
/// thread (ONNX Runtime runs block, so they stay off the async workers).
///
/// The thread waits for a window, takes every window already queued (up to [`MAX_BATCH`]),
/// runs them as one inference and answers each; nothing waits for a batch to fill. It ends when
/// the last handle (the [`VadBatcher`] itself, shared through `Arc` by the services and every
/// session's [`Vad`]) is dropped.
#[derive(Debug)]
pub struct VadBatcher {
    jobs: mpsc::Sender<Job>,
    model: Arc<SileroModel>,
    counters: Arc<Counters>,
}

impl VadBatcher {
    /// Starts the batch thread for `model`.
    pub fn new(model: Arc<SileroModel>) -> Result<Arc<Self>, VadError> {
        let engine_model = Arc::clone(&model);
        Self::with_engine(model, Box::new(move |inputs, states| engine_model.infer_batch(inputs, states)))
    }

    /// Starts the batch thread with `engine` running each batch; `model` serves
    /// [`VadBatcher::model`].
    fn with_engine(model: Arc<SileroModel>, engine: Engine) -> Result<Arc<Self>, VadError> {
        let (jobs, queue) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("silero-vad".into())
            .spawn(move || serve(&queue, engine, &thread_counters))
            .map_err(|e| VadError::Batcher(format!("cannot start the thread: {e}")))?;
        Ok(Arc::new(Self { jobs, model, counters }))
    }

    /// Runs one window (`input`: 64 samples of context + 512 new samples in [-1, 1]; `state`:
    /// the session's recurrent state) in the next batch and returns its speech probability and
    /// new state.
    ///
    /// The window is queued when this is called, before the returned future is first polled.
    /// Dropping the future withdraws it (a window whose caller is gone is not run).
    pub fn infer(
        &self,
        input: [f32; INPUT],
        state: [f32; STATE],
    ) -> impl Future<Output = Result<(f32, [f32; STATE]), VadError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.jobs.send(Job { input, state, reply }).is_ok();
        async move {
            let gone = || VadError::Batcher("the batch thread has stopped".into());
            if !queued {
                return Err(gone());
            }
            answer.await.map_err(|_| gone())?
        }
    }

    /// The model this batcher runs (for direct, unbatched runs: tests and benchmarks).
    pub fn model(&self) -> &Arc<SileroModel> {
        &self.model
    }

    /// Inferences run and windows answered so far.
    pub fn stats(&self) -> BatcherStats {
        BatcherStats {
            runs: self.counters.runs.load(Ordering::Relaxed),
            windows: self.counters.windows.load(Ordering::Relaxed),
        }
    }
}

/// The batch thread: until every sender is gone, waits for a window, gathers all queued ones,
/// runs them as one batch and answers each.
fn serve(queue: &mpsc::Receiver<Job>, mut engine: Engine, counters: &Counters) {
    let mut batch: Vec<Job> = Vec::new();
    let mut inputs: Vec<[f32; INPUT]> = Vec::new();
    let mut states: Vec<[f32; STATE]> = Vec::new();
    while let Ok(first) = queue.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A caller that stopped waiting (its session ended) does not need its window run.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        inputs.clear();
        inputs.extend(batch.iter().map(|job| job.input));
        states.clear();
        states.extend(batch.iter().map(|job| job.state));
        // A panic must not take the thread (and every session's VAD) down with it.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| engine(&inputs, &mut states)))
            .unwrap_or_else(|_| Err(VadError::Inference("the inference panicked".into())));
        counters.runs.fetch_add(1, Ordering::Relaxed);
        counters.windows.fetch_add(batch.len() as u64, Ordering::Relaxed);
        match result {
            Ok(probabilities) if probabilities.len() == batch.len() => {
                for ((job, probability), state) in batch.drain(..).zip(probabilities).zip(&states) {
                    let _ = job.reply.send(Ok((probability, *state)));
                }
            }
            Ok(probabilities) => {
                let message = format!("{} probabilities for a batch of {}", probabilities.len(), batch.len());
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(VadError::Inference(message.clone())));
                }
            }
            Err(e) => {
                tracing::debug!(windows = batch.len(), "Silero VAD batch failed: {e}");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.for_each_job()));
                }
            }
        }
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

/// Where a [`Vad`] runs its windows.
enum Backend {
    /// Through the shared batch thread.
    Batched(Arc<VadBatcher>),
    /// Directly on the model, one window per run, on the caller's thread.
    Direct(Arc<SileroModel>),
}

impl Backend {
    fn model(&self) -> &SileroModel {
        match self {
            Self::Batched(batcher) => &batcher.model,
            Self::Direct(model) => model,
        }
    }
}

/// The per-session speech detector.
pub struct Vad {
    backend: Backend,
    /// The decision rules and their state.
    rules: EndPointer,
    /// Recurrent model state ([2, 1, 128]).
    state: [f32; STATE],
    /// The model input: context (last 64 samples of the previous window) + the new window.
    input: [f32; INPUT],
    /// Samples received but not yet a full window.
    carry: [i16; WINDOW],
    carry_len: usize,
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
            .field("batched", &matches!(self.backend, Backend::Batched(_)))
            .field("rules", &self.rules)
            .field("reported_speaking", &self.reported_speaking)
            .finish_non_exhaustive()
    }
}

impl Vad {
    /// Creates a detector whose windows run through the shared `batcher`, with the thresholds
    /// and silence duration of `cfg`.
    pub fn new(batcher: Arc<VadBatcher>, cfg: &SileroVadConfig) -> Self {
        Self::with_backend(Backend::Batched(batcher), cfg)
    }

    /// Creates a detector that runs each window directly on `model` (a batch of one, on the
    /// caller's thread): for tests and benchmarks. Its decisions are those of [`Vad::new`].
    pub fn new_unbatched(model: Arc<SileroModel>, cfg: &SileroVadConfig) -> Self {
        Self::with_backend(Backend::Direct(model), cfg)
    }

    fn with_backend(backend: Backend, cfg: &SileroVadConfig) -> Self {
        let min_silence = u64::from(cfg.min_silence_duration_ms) * u64::from(SAMPLE_RATE) / 1000;
        Self {
            backend,
            rules: EndPointer::new(cfg.threshold, cfg.threshold_low, min_silence),
            state: [0.0; STATE],
            input: [0.0; INPUT],
            carry: [0; WINDOW],
            carry_len: 0,
            reported_speaking: false,
            unreported: 0,
            #[cfg(test)]
            trace: Vec::new(),
        }
    }

    /// Feeds 16 kHz mono PCM (any length) and returns the transition to report, if any.
    ///
    /// Samples are collected into 512-sample windows (the remainder is carried to the next call)
    /// and each complete window runs one inference, one after the other (each needs the state
    /// the previous one left): through the batcher for [`Vad::new`], directly on this thread
    /// for [`Vad::new_unbatched`].
    ///
    /// At most one transition is reported per call. If the audio of one call holds more (say a
    /// whole short utterance: SpeechStart then SpeechEnd), the first is reported and the others
    /// stay pending, in order, for the next calls (an empty `pcm` just delivers the next one).
    /// The decisions themselves depend only on the audio, never on how it was chunked.
    ///
    /// If an inference fails, that window is skipped, the rest of `pcm` is still processed and
    /// the first error is returned (a transition found meanwhile stays pending for the next
    /// call); the detector stays usable. If the future is dropped while a window is in flight,
    /// that window and the rest of `pcm` are lost.
    pub async fn push(&mut self, mut pcm: &[i16]) -> Result<VadEvent, VadError> {
        let mut first_error = None;
        while !pcm.is_empty() {
            if !self.fill(&mut pcm) {
                continue;
            }
            let result = match &self.backend {
                Backend::Batched(batcher) => batcher.infer(self.input, self.state).await,
                Backend::Direct(model) => model.infer_one(&self.input, &self.state),
            };
            if let Err(e) = self.complete(result) {
                first_error.get_or_insert(e);
            }
        }
        self.finish(first_error)
    }

    /// [`Vad::push`] on the caller's thread: every window runs directly on the model, whatever
    /// the constructor (for tests and benchmarks; the decisions are the same).
    pub fn push_blocking(&mut self, mut pcm: &[i16]) -> Result<VadEvent, VadError> {
        let mut first_error = None;
        while !pcm.is_empty() {
            if !self.fill(&mut pcm) {
                continue;
            }
            let result = self.backend.model().infer_one(&self.input, &self.state);
            if let Err(e) = self.complete(result) {
                first_error.get_or_insert(e);
            }
        }
        self.finish(first_error)
    }

    /// Moves samples from the front of `pcm` into the carry. When that completes a window, it is
    /// written (as floats, after the context) into the model input and `true` is returned.
    fn fill(&mut self, pcm: &mut &[i16]) -> bool {
        let take = (WINDOW - self.carry_len).min(pcm.len());
        let (head, rest) = pcm.split_at(take);
        self.carry[self.carry_len..self.carry_len + take].copy_from_slice(head);
        self.carry_len += take;
        *pcm = rest;
        if self.carry_len < WINDOW {
            return false;
        }
        self.carry_len = 0;
        for (dst, &src) in self.input[CONTEXT..].iter_mut().zip(self.carry.iter()) {
            *dst = f32::from(src) / 32768.0;
        }
        true
    }

    /// Takes the result of the window in the model input: keeps its last samples as the next
    /// context and, on success, the new state and the decision.
    fn complete(&mut self, result: Result<(f32, [f32; STATE]), VadError>) -> Result<(), VadError> {
        // The last 64 samples of this window are the next window's context.
        self.input.copy_within(WINDOW.., 0);
        let (probability, state) = result?;
        self.state = state;
        self.decide(probability);
        Ok(())
    }

    /// The result of a push: its first error, else the next transition to report. The samples
    /// carried towards the next window may already end the utterance (the silence after the last
    /// loud sample is complete within them).
    fn finish(&mut self, first_error: Option<VadError>) -> Result<VadEvent, VadError> {
        if let Some(e) = first_error {
            return Err(e);
        }
        if self.rules.ends_within(&self.carry[..self.carry_len]) {
            self.rules.end();
            self.unreported += 1;
        }
        Ok(self.next_event())
    }

    /// Applies the decision rules to the window just run and its speech probability.
    fn decide(&mut self, probability: f32) {
        if self.rules.window(&self.carry, probability).is_some() {
            self.unreported += 1;
        }
        #[cfg(test)]
        self.trace.push((probability, self.rules.speaking()));
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
        self.rules.reset();
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
    use std::sync::atomic::AtomicU8;
    use std::time::{Duration, Instant};

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
            let event = vad.push_blocking(piece).unwrap();
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
        let mut vad = Vad::new_unbatched(model, &cfg);
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
        let mut vad = Vad::new_unbatched(model, &config(500));
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
            let mut vad = Vad::new_unbatched(model.clone(), &cfg);
            let mut events: Vec<VadEvent> = run(&mut vad, &audio, chunk).into_iter().map(|(e, _)| e).collect();
            // Deliver anything still pending (a single push of the whole clip holds both events).
            loop {
                match vad.push_blocking(&[]).unwrap() {
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
        let mut vad = Vad::new_unbatched(model, &config(500));
        assert_eq!(vad.push_blocking(&audio).unwrap(), VadEvent::SpeechStart);
        assert!(vad.in_speech());
        assert_eq!(vad.push_blocking(&[]).unwrap(), VadEvent::SpeechEnd);
        assert!(!vad.in_speech());
        assert_eq!(vad.push_blocking(&[]).unwrap(), VadEvent::None);
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
        let mut vad = Vad::new_unbatched(model.clone(), &config(500));
        let events: Vec<VadEvent> = run(&mut vad, &with_gap(300), 960).into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, vec![VadEvent::SpeechStart, VadEvent::SpeechEnd]);

        // A 1.2 s pause does: two utterances.
        let mut vad = Vad::new_unbatched(model.clone(), &config(500));
        let events: Vec<VadEvent> = run(&mut vad, &with_gap(1200), 960).into_iter().map(|(e, _)| e).collect();
        assert_eq!(
            events,
            vec![VadEvent::SpeechStart, VadEvent::SpeechEnd, VadEvent::SpeechStart, VadEvent::SpeechEnd]
        );

        // At min_silence 2000 the trailing second of silence is not enough to end it.
        let mut vad = Vad::new_unbatched(model, &config(2000));
        let events: Vec<VadEvent> = run(&mut vad, &with_gap(1200), 960).into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, vec![VadEvent::SpeechStart]);
        assert!(vad.in_speech());
    }

    #[test]
    fn reset_forgets_speech() {
        let model = model();
        let voice = speech("hello there");
        let mut vad = Vad::new_unbatched(model, &config(500));
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

    // ---- Batching ----

    /// One window of a session's run: the input and state it was run with, and what it gave.
    struct Step {
        input: [f32; INPUT],
        state: [f32; STATE],
        probability: f32,
        new_state: [f32; STATE],
    }

    /// Runs `pcm` window by window (one run per window) and records every step, so each step
    /// carries a different, realistic recurrent state.
    fn trajectory(model: &SileroModel, pcm: &[i16]) -> Vec<Step> {
        let mut input = [0.0f32; INPUT];
        let mut state = [0.0f32; STATE];
        let mut steps = Vec::new();
        for window in pcm.chunks_exact(WINDOW) {
            for (dst, &src) in input[CONTEXT..].iter_mut().zip(window) {
                *dst = f32::from(src) / 32768.0;
            }
            let (probability, new_state) = model.infer_one(&input, &state).unwrap();
            steps.push(Step { input, state, probability, new_state });
            state = new_state;
            input.copy_within(WINDOW.., 0);
        }
        steps
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "{what}: differs by {worst}");
    }

    #[test]
    fn infer_batch_matches_one_window_at_a_time() {
        let model = model();
        let steps = trajectory(&model, &padded(&speech("batch me if you can")));
        assert!(steps.len() >= 64);
        assert!(steps.iter().any(|s| s.probability > 0.9), "the clip must hold speech");
        // 64 windows, each with its own state: a wrong [2, B, 128] interleaving would mix them.
        let picked: Vec<&Step> = steps.iter().step_by(steps.len() / 64).take(64).collect();
        let inputs: Vec<[f32; INPUT]> = picked.iter().map(|s| s.input).collect();
        let mut states: Vec<[f32; STATE]> = picked.iter().map(|s| s.state).collect();
        let probabilities = model.infer_batch(&inputs, &mut states).unwrap();
        let expected: Vec<f32> = picked.iter().map(|s| s.probability).collect();
        assert_close(&probabilities, &expected, "probabilities");
        for (i, (state, step)) in states.iter().zip(&picked).enumerate() {
            assert_close(state, &step.new_state, &format!("state of window {i}"));
        }
        // Degenerate calls.
        assert!(model.infer_batch(&[], &mut []).unwrap().is_empty());
        let err = model.infer_batch(&inputs[..2], &mut states[..1]).unwrap_err();
        assert!(err.to_string().contains("2 inputs but 1 states"), "{err}");
    }

    /// Runs `audio` through a detector in 960-sample frames; returns its events (pending ones
    /// included) and its per-window trace.
    async fn detect(mut vad: Vad, audio: Vec<i16>, batched: bool) -> (Vec<VadEvent>, Vec<(f32, bool)>) {
        let mut events = Vec::new();
        for frame in audio.chunks(960).chain(std::iter::repeat_n(&[][..], 4)) {
            let event = if batched { vad.push(frame).await } else { vad.push_blocking(frame) };
            match event.unwrap() {
                VadEvent::None => {}
                e => events.push(e),
            }
        }
        (events, vad.trace)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_sessions_decide_like_unbatched_ones() {
        let model = model();
        let cfg = config(500);
        let clips = [speech("hello there, how are you today"), speech("turn on the light"), speech("what time is it")];
        // Every fourth session has exactly the same audio; the others differ in words and in
        // where the windows fall.
        let audio_of = |i: usize| -> Vec<i16> {
            let (clip, lead) = if i.is_multiple_of(4) { (0, 8000) } else { (i % 3, 8000 + 97 * i) };
            [vec![0; lead], clips[clip].clone(), silence(900)].concat()
        };
        for sessions in [1usize, 16, 64] {
            let batcher = VadBatcher::new(model.clone()).unwrap();
            let mut tasks = Vec::new();
            for i in 0..sessions {
                let vad = Vad::new(batcher.clone(), &cfg);
                tasks.push(tokio::spawn(detect(vad, audio_of(i), true)));
            }
            let mut windows = 0;
            for (i, task) in tasks.into_iter().enumerate() {
                let (events, trace) = task.await.unwrap();
                let (expected_events, expected_trace) =
                    detect(Vad::new_unbatched(model.clone(), &cfg), audio_of(i), false).await;
                assert_eq!(expected_events, vec![VadEvent::SpeechStart, VadEvent::SpeechEnd], "session {i}");
                assert_eq!(events, expected_events, "{sessions} sessions: events of session {i}");
                assert_eq!(trace.len(), expected_trace.len());
                for (w, (got, want)) in trace.iter().zip(&expected_trace).enumerate() {
                    assert_eq!(got.1, want.1, "{sessions} sessions: decision of session {i} window {w}");
                    assert!((got.0 - want.0).abs() <= 1e-5, "session {i} window {w}: {} vs {}", got.0, want.0);
                }
                windows += trace.len() as u64;
            }
            let stats = batcher.stats();
            assert_eq!(stats.windows, windows);
            if sessions == 1 {
                // One session waits for each window before sending the next.
                assert_eq!(stats.runs, windows);
            } else if sessions == 64 {
                assert!(stats.runs * 4 <= windows, "{} runs for {windows} windows", stats.runs);
            }
        }
    }

    /// A batcher over the real model whose engine records batch sizes, signals each run's start,
    /// waits for a token on `gate` before running, and fails (mode 1) or panics (mode 2) on
    /// demand.
    struct Harness {
        batcher: Arc<VadBatcher>,
        sizes: Arc<Mutex<Vec<usize>>>,
        started: mpsc::Receiver<()>,
        gate: mpsc::Sender<()>,
        mode: Arc<AtomicU8>,
    }

    fn harness(model: &Arc<SileroModel>) -> Harness {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(AtomicU8::new(0));
        let (started_tx, started) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel::<()>();
        let (engine_model, engine_sizes, engine_mode) = (model.clone(), sizes.clone(), mode.clone());
        let engine: Engine = Box::new(move |inputs, states| {
            engine_sizes.lock().unwrap().push(inputs.len());
            let _ = started_tx.send(());
            let _ = gate_rx.recv();
            match engine_mode.load(Ordering::SeqCst) {
                0 => engine_model.infer_batch(inputs, states),
                1 => Err(VadError::Inference("injected failure".into())),
                _ => panic!("injected panic"),
            }
        });
        let batcher = VadBatcher::with_engine(model.clone(), engine).unwrap();
        Harness { batcher, sizes, started, gate, mode }
    }

    #[tokio::test]
    async fn queued_windows_run_as_one_batch() {
        let model = model();
        let steps = trajectory(&model, &padded(&speech("one run for all of them")));
        // 64 windows spread over the clip, each with its own state.
        let steps: Vec<&Step> = steps.iter().step_by((steps.len() / 64).max(1)).take(64).collect();
        assert_eq!(steps.len(), 64);
        let h = harness(&model);
        // The first window starts a run alone and is held there...
        let first = h.batcher.infer(steps[0].input, steps[0].state);
        h.started.recv().unwrap();
        // ...while 63 more queue up: they must all go in the next run.
        let rest: Vec<_> = steps[1..].iter().map(|s| h.batcher.infer(s.input, s.state)).collect();
        h.gate.send(()).unwrap();
        h.gate.send(()).unwrap();
        let mut results = vec![first.await.unwrap()];
        for answer in rest {
            results.push(answer.await.unwrap());
        }
        assert_eq!(*h.sizes.lock().unwrap(), vec![1, 63]);
        assert_eq!(h.batcher.stats(), BatcherStats { runs: 2, windows: 64 });
        for (i, ((probability, state), step)) in results.iter().zip(&steps).enumerate() {
            assert!((probability - step.probability).abs() <= 1e-5, "window {i}");
            assert_close(state, &step.new_state, &format!("state of window {i}"));
        }
    }

    #[tokio::test]
    async fn a_failed_run_fails_its_whole_batch_and_the_next_one_works() {
        let model = model();
        let steps = trajectory(&model, &padded(&speech("errors are shared")));
        let h = harness(&model);
        let first = h.batcher.infer(steps[0].input, steps[0].state);
        h.started.recv().unwrap();
        let doomed: Vec<_> = steps[1..8].iter().map(|s| h.batcher.infer(s.input, s.state)).collect();
        // The held run succeeds; the next one (the 7 windows queued meanwhile) fails.
        h.gate.send(()).unwrap();
        first.await.unwrap();
        h.mode.store(1, Ordering::SeqCst);
        h.gate.send(()).unwrap();
        for answer in doomed {
            let err = answer.await.unwrap_err().to_string();
            assert_eq!(err, "Silero VAD inference: injected failure");
        }
        assert_eq!(*h.sizes.lock().unwrap(), vec![1, 7]);
        // From here on the gate stays open: the mode is set before the windows it applies to
        // are queued, and each step waits for its answers before changing it.
        for _ in 0..100 {
            h.gate.send(()).unwrap();
        }

        // A panicking run is an error for each of its windows; the thread survives it.
        h.mode.store(2, Ordering::SeqCst);
        let panicked: Vec<_> = steps[8..11].iter().map(|s| h.batcher.infer(s.input, s.state)).collect();
        for answer in panicked {
            assert!(answer.await.unwrap_err().to_string().contains("panicked"));
        }

        // The next batch works.
        h.mode.store(0, Ordering::SeqCst);
        let fine: Vec<_> = steps[11..14].iter().map(|s| h.batcher.infer(s.input, s.state)).collect();
        for (answer, step) in fine.into_iter().zip(&steps[11..14]) {
            let (probability, state) = answer.await.unwrap();
            assert!((probability - step.probability).abs() <= 1e-5);
            assert_close(&state, &step.new_state, "state");
        }

        // A detector on a failing batcher reports the error and keeps working afterwards.
        let mut vad = Vad::new(h.batcher.clone(), &config(500));
        h.mode.store(1, Ordering::SeqCst);
        assert!(vad.push(&silence(40)).await.is_err());
        h.mode.store(0, Ordering::SeqCst);
        assert_eq!(vad.push(&silence(40)).await.unwrap(), VadEvent::None);
        assert_eq!(vad.trace.len(), 1, "the failed window made no decision");
    }

    #[tokio::test]
    async fn the_thread_ends_with_the_last_handle() {
        let model = model();
        let batcher = VadBatcher::new(model.clone()).unwrap();
        // The test, the batcher and the thread's engine.
        assert_eq!(Arc::strong_count(&model), 3);
        let mut vad = Vad::new(batcher.clone(), &config(500));
        drop(batcher);
        // The detector's handle keeps the thread running.
        assert_eq!(vad.push(&silence(100)).await.unwrap(), VadEvent::None);
        assert_eq!(vad.trace.len(), 3);
        drop(vad);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&model) > 1 {
            assert!(Instant::now() < deadline, "the batch thread is still running");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    const PHRASES: [&str; 10] = [
        "hello there, how are you today",
        "please turn on the kitchen light",
        "what is the weather like tomorrow",
        "set a timer for ten minutes",
        "tell me a joke about cats",
        "how far is the moon from the earth",
        "play some relaxing music please",
        "who wrote the lord of the rings",
        "remind me to call my mother",
        "what time is it in tokyo",
    ];

    /// The end-of-speech tail: the decision − the end of the voice's energy (its last sample
    /// above 1000) − the 500 ms silence window, over ten phrases streamed as the device does
    /// (60 ms frames). Silero's probability lags the voice by 60–140 ms; counting the silence from
    /// the last loud sample brings the median from about 120 ms down to the frame alignment.
    #[test]
    fn the_end_of_speech_comes_right_after_the_silence_window() {
        let model = model();
        let mut tails: Vec<i64> = PHRASES
            .iter()
            .map(|text| {
                let audio = [silence(1000), speech(text), silence(1500)].concat();
                let last = audio.iter().rposition(|s| s.unsigned_abs() > 1000).unwrap() as i64;
                let mut vad = Vad::new_unbatched(model.clone(), &config(500));
                let events = run(&mut vad, &audio, 960);
                assert_eq!(events.len(), 2, "{text:?}: {events:?}");
                assert_eq!(events[1].0, VadEvent::SpeechEnd);
                (events[1].1 as i64 - last - 8000) / 16
            })
            .collect();
        tails.sort_unstable();
        let median = (tails[4] + tails[5]) / 2;
        println!("end-of-speech tails (ms): {tails:?}, median {median}");
        assert!(tails[0] >= 0, "an utterance ended before its silence window: {tails:?}");
        assert!(median <= 40, "median tail {median} ms: {tails:?}");
        assert!(tails[9] <= 100, "{tails:?}");
    }
}
