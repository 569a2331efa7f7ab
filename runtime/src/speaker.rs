//! The per-session audio output: the only place that paces the downlink, and the one owner of
//! the device's speaking state (`tts` start, sentence_start and stop).
//!
//! One speaker task per session owns the Opus encoder (reused across turns) and the [`Pacer`].
//! Turns hand it sentences as a [`Source`]: a whole clip, or the chunks of a streamed TTS answer,
//! played as they arrive (the first frame goes out while the provider is still speaking). PCM at
//! any rate is resampled to the downlink rate as it comes ([`StreamResampler`]) and encoded one
//! frame at a time just before it is due; Opus packets that already match the downlink (its rate
//! and frame duration) pass through without decoding or encoding. Frames go to the writer paced:
//! the first `prebuffer` at once, then one per frame duration on a drift-free clock, so the
//! device's 40-packet queue never overflows. Every item carries its turn's cancellation token: an
//! abort stops the output within one frame interval and drops whatever was still queued.
//!
//! Real time wins over quality: when the task wakes more than [`LATE`] after a frame was due (the
//! machine is overloaded), its encoder's complexity steps down two levels at once, and back up one
//! level after [`ON_TIME_TO_STEP_UP`] frames on time, never above `audio.opus_complexity`
//! (counted in `xiaozhi_encoder_complexity_steps_total`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audio::AudioClip;
use crate::audio::chunks::AudioChunk;
use crate::audio::opus::{MAX_PACKET, OpusDecoder, OpusEncoder};
use crate::audio::pacer::Pacer;
use crate::audio::resample::StreamResampler;
use crate::config::{AudioConfig, AudioParams};
use crate::connection::{Outbound, Outbox};
use crate::protocol::message::TtsState;

/// Queued sentences per session; the turn waits when the speaker is this far behind. Small: a
/// streamed sentence holds its provider's audio in flight ([`STREAM_CHUNKS`]).
const SPEAKER_QUEUE: usize = 4;

/// Chunks of a streamed sentence read ahead of playback (its provider's answer keeps coming while
/// the sentences before it play).
pub const STREAM_CHUNKS: usize = 32;

/// A frame sent this much after it was due counts as late (the device's buffer is draining).
pub const LATE: Duration = Duration::from_millis(20);

/// After this many frames in a row on time, the encoder's complexity goes up one step.
pub const ON_TIME_TO_STEP_UP: u32 = 250;

/// How long a late frame anywhere keeps every session's encoder at complexity 0.
pub const LOAD_HOLD: Duration = Duration::from_secs(10);

/// One session's encoder complexity under load, as a pure rule: a late frame drops it to 0 at
/// once (real time wins over quality); [`ON_TIME_TO_STEP_UP`] frames in a row on time raise it one
/// step, never above the server-wide ceiling ([`EncoderLoad`]) nor the configured complexity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Complexity {
    /// The complexity now.
    pub current: u8,
    on_time: u32,
}

impl Complexity {
    /// Starting at `configured`.
    pub fn new(configured: u8) -> Self {
        Self { current: configured, on_time: 0 }
    }

    /// One frame, sent `late` or not, under `ceiling`; the new complexity when it changed.
    pub fn frame(&mut self, late: bool, ceiling: u8) -> Option<u8> {
        let next = if late {
            self.on_time = 0;
            0
        } else {
            self.on_time += 1;
            if self.on_time >= ON_TIME_TO_STEP_UP && self.current < ceiling {
                self.on_time = 0;
                self.current + 1
            } else {
                self.current.min(ceiling)
            }
        };
        (next != self.current).then(|| {
            self.current = next;
            next
        })
    }
}

/// The server's encoding load, shared by every session's speaker: when one session falls behind
/// real time, the machine is short of CPU, so every session encodes at complexity 0 for
/// [`LOAD_HOLD`] (sessions starting a reply then do not each pay a late frame to learn it).
#[derive(Debug, Default)]
pub struct EncoderLoad {
    /// When a frame was last late (ms on this process's monotonic clock); 0: never.
    lowered_at: std::sync::atomic::AtomicU64,
    origin: std::sync::OnceLock<std::time::Instant>,
}

impl EncoderLoad {
    /// A load with no late frame yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn ms(&self, now: std::time::Instant) -> u64 {
        let origin = *self.origin.get_or_init(|| now);
        (now.saturating_duration_since(origin).as_millis() as u64).saturating_add(1)
    }

    /// A frame was late at `now`.
    pub fn lower(&self, now: std::time::Instant) {
        self.lowered_at.store(self.ms(now), std::sync::atomic::Ordering::Relaxed);
    }

    /// The highest complexity any session may use at `now`: 0 within [`LOAD_HOLD`] of a late
    /// frame, else `configured`.
    pub fn ceiling(&self, now: std::time::Instant, configured: u8) -> u8 {
        let lowered = self.lowered_at.load(std::sync::atomic::Ordering::Relaxed);
        let held = lowered != 0 && self.ms(now).saturating_sub(lowered) < LOAD_HOLD.as_millis() as u64;
        if held { 0 } else { configured }
    }
}

/// What a sentence's audio is.
pub enum Source {
    /// A whole clip, at any rate.
    Clip(AudioClip),
    /// Chunks as the provider delivers them (the sentence ends when the sender is dropped).
    Stream(mpsc::Receiver<AudioChunk>),
    /// Opus frames already encoded for this downlink (a cached phrase).
    Encoded(Arc<[Bytes]>),
}

enum Command {
    Begin { turn: CancellationToken },
    Play { turn: CancellationToken, text: Option<String>, source: Source, record: Option<oneshot::Sender<Vec<Bytes>>> },
    Finish { turn: CancellationToken, done: oneshot::Sender<()> },
}

/// Most phrases kept by a [`PhraseCache`].
const PHRASE_CACHE_ENTRIES: usize = 64;

/// Encoded audio of fixed phrases (error prompts and the like), shared by all sessions: a phrase
/// said once is never synthesized or encoded again for the same voice and downlink format.
/// Bounded; the oldest entry is evicted first.
#[derive(Default)]
pub struct PhraseCache {
    // std Mutex: held only for a map lookup or insert, never across an await.
    entries: Mutex<Phrases>,
}

/// The cached phrases and their insertion order (oldest first).
#[derive(Default)]
struct Phrases {
    map: HashMap<String, Arc<[Bytes]>>,
    order: VecDeque<String>,
}

impl PhraseCache {
    /// The cache key of `text` said by `voice` (a description of the TTS and downlink settings).
    pub fn key(voice: &str, text: &str) -> String {
        format!("{voice}\u{1f}{text}")
    }

    /// The encoded frames of a phrase, if cached.
    pub fn get(&self, key: &str) -> Option<Arc<[Bytes]>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).map.get(key).cloned()
    }

    /// Stores the encoded frames of a phrase.
    pub fn insert(&self, key: String, frames: Vec<Bytes>) {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Phrases { map, order } = &mut *guard;
        if map.insert(key.clone(), frames.into()).is_none() {
            order.push_back(key);
        }
        while order.len() > PHRASE_CACHE_ENTRIES {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// How many phrases are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A `tts` message (start, sentence_start with its subtitle, stop). Only the speaker makes them,
/// so the device's speaking state has one owner: the connection just sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tts {
    state: TtsState,
    text: Option<String>,
}

impl Tts {
    fn start() -> Self {
        Self { state: TtsState::Start, text: None }
    }

    fn sentence(text: String) -> Self {
        Self { state: TtsState::SentenceStart, text: Some(text) }
    }

    fn stop() -> Self {
        Self { state: TtsState::Stop, text: None }
    }

    /// The state and, for `sentence_start`, the subtitle.
    pub fn into_parts(self) -> (TtsState, Option<String>) {
        (self.state, self.text)
    }
}

/// Handle to a session's speaker task; cloning shares the same speaker.
#[derive(Clone)]
pub struct Speaker {
    tx: mpsc::Sender<Command>,
    /// Asks the task to stop speaking now: it takes this before any queued command.
    stop: Arc<Notify>,
}

impl Speaker {
    /// Starts the speaker task of a session. It ends when every handle is dropped or the
    /// connection is gone. The Opus encoder is made by the first audio, so a speaker that only
    /// ever says `tts stop` (an abort on an idle device) costs no encoder.
    pub fn spawn(
        outbox: Outbox,
        params: &AudioParams,
        audio: &AudioConfig,
        metrics: Arc<crate::metrics::Metrics>,
        load: Arc<EncoderLoad>,
    ) -> Self {
        let pacer = Pacer::new(Duration::from_millis(params.frame_duration as u64), audio.prebuffer_frames);
        let (tx, rx) = mpsc::channel(SPEAKER_QUEUE);
        let stop = Arc::new(Notify::new());
        let task = Task {
            outbox,
            encoder: None,
            decoder: None,
            params: params.clone(),
            audio: audio.clone(),
            pacer,
            started: Instant::now(),
            stop: Arc::clone(&stop),
            complexity: Complexity::new(audio.opus_complexity),
            load,
            metrics,
        };
        tokio::spawn(task.run(rx));
        Self { tx, stop }
    }

    /// Says `tts start`: the device starts speaking (the first thing a reply sends).
    pub async fn begin(&self, turn: &CancellationToken) {
        let _ = self.tx.send(Command::Begin { turn: turn.clone() }).await;
    }

    /// Queues one sentence: its subtitle (`tts sentence_start`, sent just before its first frame)
    /// and its audio. An empty clip sends only the subtitle.
    pub async fn play(&self, turn: &CancellationToken, text: Option<String>, source: Source) {
        let _ = self.tx.send(Command::Play { turn: turn.clone(), text, source, record: None }).await;
    }

    /// Like [`Speaker::play`], and hands back every encoded frame once the sentence has been sent
    /// whole (not when the turn is cancelled midway), for the [`PhraseCache`].
    pub async fn play_recorded(
        &self,
        turn: &CancellationToken,
        text: Option<String>,
        source: Source,
        record: oneshot::Sender<Vec<Bytes>>,
    ) {
        let _ = self.tx.send(Command::Play { turn: turn.clone(), text, source, record: Some(record) }).await;
    }

    /// Waits until the device has played everything queued for `turn` (by the pacing clock),
    /// then says `tts stop`; a cancelled turn says nothing (its abort said it).
    pub async fn finish(&self, turn: &CancellationToken) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Finish { turn: turn.clone(), done }).await.is_ok() {
            tokio::select! {
                _ = wait => {}
                _ = turn.cancelled() => {}
            }
        }
    }

    /// Stops speaking now and says `tts stop` (abort, barge-in, a wake word that gets no
    /// greeting). Never waits: the task takes it before anything still queued, and what is queued
    /// for cancelled turns is skipped. Cancel the turn first.
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

struct Task {
    outbox: Outbox,
    /// Made by the first audio.
    encoder: Option<OpusEncoder>,
    /// Made by the first Opus packet that cannot pass through.
    decoder: Option<OpusDecoder>,
    params: AudioParams,
    audio: AudioConfig,
    pacer: Pacer,
    started: Instant,
    stop: Arc<Notify>,
    /// The encoder's complexity (lowered while the task falls behind its pacing clock).
    complexity: Complexity,
    /// The server's load: a late session lowers every session's complexity for a while.
    load: Arc<EncoderLoad>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// PCM waiting to be framed, and what was sent of a sentence.
struct Framing {
    pcm: Vec<i16>,
    resampler: Option<StreamResampler>,
    recorded: Option<Vec<Bytes>>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let cmd = tokio::select! {
                biased;
                _ = self.stop.notified() => {
                    self.pacer.reset();
                    self.say(Tts::stop());
                    continue;
                }
                _ = self.outbox.gone() => return,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => return,
                },
            };
            match cmd {
                Command::Begin { turn } => {
                    if !turn.is_cancelled() {
                        self.say(Tts::start());
                    }
                }
                Command::Play { turn, text, source, record } => {
                    if turn.is_cancelled() {
                        continue;
                    }
                    self.subtitle(text);
                    let sent = self.play(&turn, source, record.is_some()).await;
                    if turn.is_cancelled() {
                        self.pacer.reset();
                    } else if let (Some(record), Some(frames)) = (record, sent) {
                        let _ = record.send(frames);
                    }
                }
                Command::Finish { turn, done } => {
                    if let Some(end) = self.pacer.play_end() {
                        tokio::select! {
                            _ = turn.cancelled() => {}
                            _ = tokio::time::sleep_until(Instant::from_std(end)) => {}
                        }
                    }
                    if !turn.is_cancelled() {
                        self.say(Tts::stop());
                    }
                    let _ = done.send(());
                }
            }
            if self.outbox.is_gone() {
                return;
            }
        }
    }

    /// Plays one sentence's audio, paced; returns the frames sent (when `record`) once the
    /// sentence went out whole.
    async fn play(&mut self, turn: &CancellationToken, source: Source, record: bool) -> Option<Vec<Bytes>> {
        let mut framing = Framing { pcm: Vec::new(), resampler: None, recorded: record.then(Vec::new) };
        match source {
            Source::Clip(clip) => {
                if !clip.samples.is_empty() {
                    self.add_pcm(&mut framing, &clip.samples, clip.sample_rate);
                }
            }
            Source::Encoded(frames) => {
                for opus in frames.iter() {
                    if !self.send_paced(opus.clone(), turn, &mut framing).await {
                        return None;
                    }
                }
            }
            Source::Stream(mut chunks) => loop {
                let chunk = tokio::select! {
                    biased;
                    _ = turn.cancelled() => return None,
                    chunk = chunks.recv() => chunk,
                };
                match chunk {
                    None => break,
                    Some(AudioChunk::Pcm { samples, sample_rate }) => self.add_pcm(&mut framing, &samples, sample_rate),
                    Some(AudioChunk::Opus { packet, sample_rate, samples_48k }) => {
                        let fits = sample_rate == self.params.sample_rate
                            && samples_48k == self.params.frame_duration * 48
                            && framing.pcm.is_empty()
                            && framing.resampler.is_none();
                        if fits {
                            // Already what the device decodes: re-framed and paced, not re-encoded.
                            self.metrics.downlink_frame("passed_through");
                            if !self.send_paced(packet, turn, &mut framing).await {
                                return None;
                            }
                            continue;
                        }
                        self.decode_opus(&mut framing, &packet);
                    }
                }
                if !self.send_frames(turn, &mut framing, false).await {
                    return None;
                }
            },
        }
        if let Some(mut resampler) = framing.resampler.take() {
            resampler.finish(&mut framing.pcm);
        }
        if !self.send_frames(turn, &mut framing, true).await {
            return None;
        }
        framing.recorded
    }

    /// Adds PCM at `rate` to the frames to send, resampled to the downlink rate as it comes.
    fn add_pcm(&mut self, framing: &mut Framing, samples: &[i16], rate: u32) {
        if framing.resampler.as_ref().is_some_and(|r| r.from_rate() != rate) {
            // Another rate midway (a provider that changes it): flush the old one first.
            if let Some(mut old) = framing.resampler.take() {
                old.finish(&mut framing.pcm);
            }
        }
        let target = self.params.sample_rate;
        framing.resampler.get_or_insert_with(|| StreamResampler::new(rate, target)).push(samples, &mut framing.pcm);
    }

    /// Decodes an Opus packet that cannot pass through (another rate or frame length).
    fn decode_opus(&mut self, framing: &mut Framing, packet: &[u8]) {
        let rate = self.params.sample_rate;
        if self.decoder.is_none() {
            match OpusDecoder::new(rate) {
                Ok(decoder) => self.decoder = Some(decoder),
                Err(e) => {
                    tracing::error!("cannot start an Opus decoder at {rate} Hz: {e}");
                    return;
                }
            }
        }
        let Some(decoder) = self.decoder.as_mut() else { return };
        // The longest Opus packet is 120 ms.
        let mut scratch = vec![0i16; rate as usize * 120 / 1000];
        match decoder.decode(packet, &mut scratch) {
            Ok(n) => self.add_pcm(framing, &scratch[..n], rate),
            Err(e) => tracing::warn!("an Opus packet of the TTS answer does not decode, skipped: {e}"),
        }
    }

    /// Encodes and sends every whole frame of PCM (and, at the `end`, the rest zero-padded, as
    /// the Python server does); false when the turn was cancelled or the connection is gone.
    async fn send_frames(&mut self, turn: &CancellationToken, framing: &mut Framing, end: bool) -> bool {
        let frame_samples = (self.params.sample_rate * self.params.frame_duration / 1000) as usize;
        let mut frame = vec![0i16; frame_samples];
        let mut packet = vec![0u8; MAX_PACKET];
        let mut offset = 0;
        let mut alive = true;
        while framing.pcm.len() - offset >= frame_samples || (end && framing.pcm.len() > offset) {
            let take = frame_samples.min(framing.pcm.len() - offset);
            frame[..take].copy_from_slice(&framing.pcm[offset..offset + take]);
            frame[take..].fill(0);
            offset += take;
            if !self.wait_due(turn).await {
                alive = false;
                break;
            }
            // Encoded just before it is due: the encoder's work is spread over the reply.
            let Some(encoder) = self.encoder() else { break };
            let opus = match encoder.encode(&frame, &mut packet) {
                Ok(len) => {
                    self.metrics.downlink_frame("encoded");
                    Bytes::copy_from_slice(&packet[..len])
                }
                Err(e) => {
                    tracing::warn!("opus encode failed, frame skipped: {e}");
                    continue;
                }
            };
            if !self.send(opus, turn, framing).await {
                alive = false;
                break;
            }
        }
        framing.pcm.drain(..offset);
        alive
    }

    /// Waits for the frame's turn, then sends an encoded frame.
    async fn send_paced(&mut self, opus: Bytes, turn: &CancellationToken, framing: &mut Framing) -> bool {
        self.wait_due(turn).await && self.send(opus, turn, framing).await
    }

    /// The encoder, made on first use (`None`, logged, if the downlink settings cannot be encoded).
    fn encoder(&mut self) -> Option<&mut OpusEncoder> {
        if self.encoder.is_none() {
            let (params, audio) = (&self.params, &self.audio);
            let complexity =
                self.complexity.current.min(self.load.ceiling(Instant::now().into_std(), audio.opus_complexity));
            match OpusEncoder::new(params.sample_rate, params.frame_duration, audio.opus_bitrate, complexity) {
                Ok(encoder) => self.encoder = Some(encoder),
                Err(e) => {
                    tracing::error!(
                        "cannot start the Opus encoder at {} Hz / {} ms: {e}",
                        params.sample_rate,
                        params.frame_duration
                    );
                    return None;
                }
            }
        }
        self.encoder.as_mut()
    }

    fn say(&self, tts: Tts) {
        // A full queue closes the connection; nothing else to do here.
        let _ = self.outbox.send(Outbound::Tts(tts));
    }

    /// Sends `tts sentence_start` with the subtitle, just before the sentence's first frame.
    fn subtitle(&self, text: Option<String>) {
        if let Some(text) = text {
            self.say(Tts::sentence(text));
        }
    }

    /// Waits until the pacer lets the next frame go; false if the turn was cancelled meanwhile.
    /// Waking later than [`LATE`] means this task falls behind real time (the machine is
    /// overloaded): see [`Task::adapt`].
    async fn wait_due(&mut self, turn: &CancellationToken) -> bool {
        let due = Instant::from_std(self.pacer.due(Instant::now().into_std()));
        tokio::select! {
            biased;
            _ = turn.cancelled() => return false,
            _ = tokio::time::sleep_until(due) => {}
        }
        let late = Instant::now().saturating_duration_since(due) > LATE;
        self.adapt(late);
        true
    }

    /// Applies the complexity rules to one frame sent on time or `late`.
    fn adapt(&mut self, late: bool) {
        let now = Instant::now().into_std();
        if late {
            self.load.lower(now);
        }
        let ceiling = self.load.ceiling(now, self.audio.opus_complexity);
        let before = self.complexity.current;
        let Some(next) = self.complexity.frame(late, ceiling) else { return };
        self.metrics.encoder_step(if next < before { "down" } else { "up" });
        if let Some(encoder) = &mut self.encoder
            && let Err(e) = encoder.set_complexity(next)
        {
            tracing::warn!("cannot change the encoder's complexity: {e}");
        }
    }

    /// Queues one frame to the writer and records it with the pacer; false if the turn was
    /// cancelled or the connection is gone.
    async fn send(&mut self, opus: Bytes, turn: &CancellationToken, framing: &mut Framing) -> bool {
        let timestamp = self.started.elapsed().as_millis() as u32;
        if let Some(frames) = &mut framing.recorded {
            frames.push(opus.clone());
        }
        if !self.outbox.send_audio(opus, timestamp, turn).await {
            return false;
        }
        self.pacer.sent(Instant::now().into_std());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complexity_drops_at_once_when_late_and_climbs_slowly() {
        let mut c = Complexity::new(5);
        assert_eq!(c.frame(false, 5), None);
        assert_eq!(c.frame(true, 5), Some(0), "a late frame: 0 at once");
        for _ in 0..ON_TIME_TO_STEP_UP - 1 {
            assert_eq!(c.frame(false, 5), None);
        }
        assert_eq!(c.frame(false, 5), Some(1), "then one step per {ON_TIME_TO_STEP_UP} frames on time");
        assert_eq!(c.frame(false, 0), Some(0), "never above the server-wide ceiling");
        for _ in 0..ON_TIME_TO_STEP_UP * 10 {
            c.frame(false, 5);
        }
        assert_eq!(c.current, 5, "nor above the configured complexity");
    }

    #[test]
    fn one_late_session_lowers_every_session_for_a_while() {
        let load = EncoderLoad::new();
        let t0 = std::time::Instant::now();
        assert_eq!(load.ceiling(t0, 5), 5);
        load.lower(t0 + Duration::from_secs(1));
        assert_eq!(load.ceiling(t0 + Duration::from_secs(2), 5), 0);
        assert_eq!(load.ceiling(t0 + Duration::from_secs(1) + LOAD_HOLD, 5), 5);
    }

    #[test]
    fn phrase_cache_is_bounded_and_keyed_by_voice() {
        let cache = PhraseCache::default();
        let frame = Bytes::from_static(b"opus");
        cache.insert(PhraseCache::key("voice-a", "Sorry"), vec![frame.clone()]);
        assert!(cache.get(&PhraseCache::key("voice-a", "Sorry")).is_some());
        assert!(cache.get(&PhraseCache::key("voice-b", "Sorry")).is_none());
        for i in 0..(PHRASE_CACHE_ENTRIES + 10) {
            cache.insert(PhraseCache::key("v", &i.to_string()), vec![frame.clone()]);
        }
        assert_eq!(cache.len(), PHRASE_CACHE_ENTRIES);
        assert!(cache.get(&PhraseCache::key("voice-a", "Sorry")).is_none(), "the oldest entry went first");
        assert!(cache.get(&PhraseCache::key("v", &(PHRASE_CACHE_ENTRIES + 9).to_string())).is_some());
    }
}
