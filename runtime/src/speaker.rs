//! The per-session audio output: the only place that paces the downlink.
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
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audio::AudioClip;
use crate::audio::opus::{MAX_PACKET, OpusEncoder};
use crate::audio::pacer::Pacer;
use crate::audio::resample::resample;
use crate::config::{AudioConfig, AudioParams};
use crate::connection::{Outbound, Outbox};
use crate::protocol::message::{ServerMessage, TtsState};

/// Queued sentences per session; the turn waits when the speaker is this far behind.
const SPEAKER_QUEUE: usize = 16;

enum Command {
    Play { turn: CancellationToken, text: Option<String>, clip: AudioClip, record: Option<oneshot::Sender<Vec<Bytes>>> },
    PlayEncoded { turn: CancellationToken, text: Option<String>, frames: Arc<[Bytes]> },
    Drain { turn: CancellationToken, done: oneshot::Sender<()> },
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

/// Handle to a session's speaker task; cloning shares the same speaker.
#[derive(Clone)]
pub struct Speaker {
    tx: mpsc::Sender<Command>,
}

/// Why the speaker could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the Opus encoder at {rate} Hz / {frame_ms} ms: {message}")]
pub struct SpeakerError {
    rate: u32,
    frame_ms: u32,
    message: String,
}

impl Speaker {
    /// Starts the speaker task of a session. It ends when every handle is dropped.
    pub fn spawn(outbox: Outbox, params: &AudioParams, audio: &AudioConfig) -> Result<Self, SpeakerError> {
        let encoder =
            OpusEncoder::new(params.sample_rate, params.frame_duration, audio.opus_bitrate, audio.opus_complexity)
                .map_err(|e| SpeakerError {
                    rate: params.sample_rate,
                    frame_ms: params.frame_duration,
                    message: e.to_string(),
                })?;
        let pacer = Pacer::new(Duration::from_millis(params.frame_duration as u64), audio.prebuffer_frames);
        let (tx, rx) = mpsc::channel(SPEAKER_QUEUE);
        let task = Task { outbox, encoder, pacer, rate: params.sample_rate, started: Instant::now() };
        tokio::spawn(task.run(rx));
        Ok(Self { tx })
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

    /// Waits until the device has played everything queued for `turn` (by the pacing clock), or
    /// until the turn is cancelled.
    pub async fn drain(&self, turn: &CancellationToken) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Drain { turn: turn.clone(), done }).await.is_ok() {
            tokio::select! {
                _ = wait => {}
                _ = turn.cancelled() => {}
            }
        }
    }
}

struct Task {
    outbox: Outbox,
    encoder: OpusEncoder,
    pacer: Pacer,
    rate: u32,
    started: Instant,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let frame_samples = self.encoder.frame_samples();
        let mut pcm_frame = vec![0i16; frame_samples];
        let mut packet = vec![0u8; MAX_PACKET];
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Play { turn, text, clip, record } => {
                    if turn.is_cancelled() {
                        continue;
                    }
                    self.subtitle(text).await;
                    let pcm = if clip.sample_rate == self.rate || clip.samples.is_empty() {
                        clip.samples
                    } else {
                        resample(&clip.samples, clip.sample_rate, self.rate)
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
                        let opus = match self.encoder.encode(&pcm_frame, &mut packet) {
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
                            return;
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
                    self.subtitle(text).await;
                    for opus in frames.iter() {
                        if !self.wait_due(&turn).await {
                            break;
                        }
                        if !self.send(opus.clone(), &turn).await {
                            return;
                        }
                    }
                    if turn.is_cancelled() {
                        self.pacer.reset();
                    }
                }
                Command::Drain { turn, done } => {
                    if let Some(end) = self.pacer.play_end() {
                        tokio::select! {
                            _ = turn.cancelled() => {}
                            _ = tokio::time::sleep_until(Instant::from_std(end)) => {}
                        }
                    }
                    let _ = done.send(());
                }
            }
        }
    }

    /// Sends `tts sentence_start` with the subtitle, just before the sentence's first frame.
    async fn subtitle(&mut self, text: Option<String>) {
        if let Some(text) = text {
            let session_id = self.outbox.session_id().to_string();
            self.outbox.send(ServerMessage::Tts { state: TtsState::SentenceStart, text: Some(text), session_id }).await;
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

    /// Queues one frame to the writer and records it with the pacer; false if the connection is gone.
    async fn send(&mut self, opus: Bytes, turn: &CancellationToken) -> bool {
        let timestamp = self.started.elapsed().as_millis() as u32;
        if !self.outbox.send_raw(Outbound::Audio { opus, timestamp, turn: turn.clone() }).await {
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
