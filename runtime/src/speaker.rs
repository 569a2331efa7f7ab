//! The per-session audio output: the only place that paces the downlink.
//!
//! One speaker task per session owns the Opus encoder (reused across turns) and the [`Pacer`].
//! Turns hand it sentences ([`AudioClip`]s at any rate); it resamples each to the downlink rate,
//! encodes one frame at a time just before it is due, and queues it to the writer: the first
//! `prebuffer` frames at once, then one per frame duration on a drift-free clock, so the device's
//! 40-packet queue never overflows. Every item carries its turn's cancellation token: an abort
//! stops the output within one frame interval and drops whatever was still queued.

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
    Play { turn: CancellationToken, text: Option<String>, clip: AudioClip },
    Drain { turn: CancellationToken, done: oneshot::Sender<()> },
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
        let _ = self.tx.send(Command::Play { turn: turn.clone(), text, clip }).await;
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
                Command::Play { turn, text, clip } => {
                    if turn.is_cancelled() {
                        continue;
                    }
                    if let Some(text) = text {
                        let msg = ServerMessage::Tts {
                            state: TtsState::SentenceStart,
                            text: Some(text),
                            session_id: self.outbox.session_id().to_string(),
                        };
                        self.outbox.send(msg).await;
                    }
                    let pcm = if clip.sample_rate == self.rate || clip.samples.is_empty() {
                        clip.samples
                    } else {
                        resample(&clip.samples, clip.sample_rate, self.rate)
                    };
                    for chunk in pcm.chunks(frame_samples) {
                        // The last frame of a sentence is zero-padded, as the Python server does.
                        pcm_frame[..chunk.len()].copy_from_slice(chunk);
                        pcm_frame[chunk.len()..].fill(0);
                        let due = self.pacer.due(Instant::now().into_std());
                        tokio::select! {
                            biased;
                            _ = turn.cancelled() => break,
                            _ = tokio::time::sleep_until(Instant::from_std(due)) => {}
                        }
                        let len = match self.encoder.encode(&pcm_frame, &mut packet) {
                            Ok(len) => len,
                            Err(e) => {
                                tracing::warn!("opus encode failed, frame skipped: {e}");
                                continue;
                            }
                        };
                        let timestamp = self.started.elapsed().as_millis() as u32;
                        let item = Outbound::Audio {
                            opus: Bytes::copy_from_slice(&packet[..len]),
                            timestamp,
                            turn: turn.clone(),
                        };
                        if !self.outbox.send_raw(item).await {
                            return;
                        }
                        self.pacer.sent(Instant::now().into_std());
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
}
