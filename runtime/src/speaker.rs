//! The per-session audio output: the only place that paces the downlink, and the one owner of
//! the device's speaking state (`tts` start, sentence_start and stop).
//!
//! One speaker task per session owns the Opus encoder (reused across turns) and the [`Pacer`].
//! Turns hand it sentences ([`AudioClip`]s at any rate); it resamples each to the downlink rate,
//! encodes one frame at a time just before it is due, and queues it to the writer: the first
//! `prebuffer` frames at once, then one per frame duration on a drift-free clock, so the device's
//! 40-packet queue never overflows. Every item carries its turn's cancellation token: an abort
//! stops the output within one frame interval and drops whatever was still queued.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audio::AudioClip;
use crate::audio::opus::{MAX_PACKET, OpusEncoder};
use crate::audio::pacer::Pacer;
use crate::audio::resample::resample;
use crate::config::{AudioConfig, AudioParams};
use crate::connection::{Outbound, Outbox};
use crate::protocol::message::TtsState;

/// Queued sentences per session; the turn waits when the speaker is this far behind.
const SPEAKER_QUEUE: usize = 16;

enum Command {
    Begin { turn: CancellationToken },
    Play { turn: CancellationToken, text: Option<String>, clip: AudioClip, record: Option<oneshot::Sender<Vec<Bytes>>> },
    PlayEncoded { turn: CancellationToken, text: Option<String>, frames: Arc<[Bytes]> },
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
    pub fn spawn(outbox: Outbox, params: &AudioParams, audio: &AudioConfig) -> Self {
        let pacer = Pacer::new(Duration::from_millis(params.frame_duration as u64), audio.prebuffer_frames);
        let (tx, rx) = mpsc::channel(SPEAKER_QUEUE);
        let stop = Arc::new(Notify::new());
        let task = Task {
            outbox,
            encoder: None,
            params: params.clone(),
            audio: audio.clone(),
            pacer,
            started: Instant::now(),
            stop: Arc::clone(&stop),
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
    pub async fn play(&self, turn: &CancellationToken, text: Option<String>, clip: AudioClip) {
        let _ = self.tx.send(Command::Play { turn: turn.clone(), text, clip, record: None }).await;
    }

    /// Like [`Speaker::play`], and hands back every encoded frame once the clip has been sent
    /// whole (not when the turn is cancelled midway), for the [`PhraseCache`].
    pub async fn play_recorded(
        &self,
        turn: &CancellationToken,
        text: Option<String>,
        clip: AudioClip,
        record: oneshot::Sender<Vec<Bytes>>,
    ) {
        let _ = self.tx.send(Command::Play { turn: turn.clone(), text, clip, record: Some(record) }).await;
    }

    /// Queues already encoded frames (a cached phrase), paced like any other audio.
    pub async fn play_encoded(&self, turn: &CancellationToken, text: Option<String>, frames: Arc<[Bytes]>) {
        let _ = self.tx.send(Command::PlayEncoded { turn: turn.clone(), text, frames }).await;
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
    params: AudioParams,
    audio: AudioConfig,
    pacer: Pacer,
    started: Instant,
    stop: Arc<Notify>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut pcm_frame = Vec::new();
        let mut packet = vec![0u8; MAX_PACKET];
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
                Command::Play { turn, text, clip, record } => {
                    if turn.is_cancelled() {
                        continue;
                    }
                    self.subtitle(text);
                    if clip.samples.is_empty() {
                        continue;
                    }
                    let Some(frame_samples) = self.encoder().map(|encoder| encoder.frame_samples()) else { continue };
                    pcm_frame.resize(frame_samples, 0);
                    let rate = self.params.sample_rate;
                    let pcm = if clip.sample_rate == rate {
                        clip.samples
                    } else {
                        resample(&clip.samples, clip.sample_rate, rate)
                    };
                    let mut recorded = record.as_ref().map(|_| Vec::with_capacity(pcm.len() / frame_samples + 1));
                    for chunk in pcm.chunks(frame_samples) {
                        // The last frame of a sentence is zero-padded, as the Python server does.
                        pcm_frame[..chunk.len()].copy_from_slice(chunk);
                        pcm_frame[chunk.len()..].fill(0);
                        if !self.wait_due(&turn).await {
                            break;
                        }
                        // Encoded just before it is due: the encoder's work is spread over the reply.
                        let Some(encoder) = self.encoder.as_mut() else { break };
                        let opus = match encoder.encode(&pcm_frame, &mut packet) {
                            Ok(len) => Bytes::copy_from_slice(&packet[..len]),
                            Err(e) => {
                                tracing::warn!("opus encode failed, frame skipped: {e}");
                                continue;
                            }
                        };
                        if let Some(frames) = &mut recorded {
                            frames.push(opus.clone());
                        }
                        if !self.send(opus, &turn).await {
                            break;
                        }
                    }
                    if turn.is_cancelled() {
                        self.pacer.reset();
                    } else if let (Some(record), Some(frames)) = (record, recorded) {
                        let _ = record.send(frames);
                    }
                }
                Command::PlayEncoded { turn, text, frames } => {
                    if turn.is_cancelled() {
                        continue;
                    }
                    self.subtitle(text);
                    for opus in frames.iter() {
                        if !self.wait_due(&turn).await || !self.send(opus.clone(), &turn).await {
                            break;
                        }
                    }
                    if turn.is_cancelled() {
                        self.pacer.reset();
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

    /// The encoder, made on first use (`None`, logged, if the downlink settings cannot be encoded).
    fn encoder(&mut self) -> Option<&mut OpusEncoder> {
        if self.encoder.is_none() {
            let (params, audio) = (&self.params, &self.audio);
            match OpusEncoder::new(params.sample_rate, params.frame_duration, audio.opus_bitrate, audio.opus_complexity)
            {
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
    async fn wait_due(&mut self, turn: &CancellationToken) -> bool {
        let due = self.pacer.due(Instant::now().into_std());
        tokio::select! {
            biased;
            _ = turn.cancelled() => false,
            _ = tokio::time::sleep_until(Instant::from_std(due)) => true,
        }
    }

    /// Queues one frame to the writer and records it with the pacer; false if the turn was
    /// cancelled or the connection is gone.
    async fn send(&mut self, opus: Bytes, turn: &CancellationToken) -> bool {
        let timestamp = self.started.elapsed().as_millis() as u32;
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
