//! The wire of one device: the only place that knows how messages travel.
//!
//! A device connection is two halves, in the mini-redis shape:
//!
//! - [`Connection`] reads: [`Connection::recv`] yields typed [`Event`]s (a parsed message, an
//!   audio packet, or why something could not be understood). Framing (binary protocol v1/v2/v3),
//!   the negotiated protocol version and the session id live here and nowhere else.
//! - [`Outbox`] writes: typed [`Outbound`] messages and audio packets go through one queue into
//!   one writer task, so they leave in the order they were queued. The queue is bounded in bytes
//!   (`limits.outbound_queue_bytes`) and never blocks the session: [`Outbox::send`] returns at
//!   once, and a device that lets the queue fill up, or does not take one message within
//!   `limits.write_timeout_ms`, is closed as not reading (logged at WARN, counted in
//!   `xiaozhi_devices_dropped_total`). Any writer error closes the connection the same way, and
//!   [`Outbox::gone`] tells the session.
//!
//! Audio packets carry the cancellation token of their turn: once a turn is cancelled, its packets
//! still queued are dropped by the writer, so nothing of it reaches the device after an abort.
//! [`Outbox::close`] queues the Close frame behind what is already queued (the last `stt` or
//! `tts stop` still reaches the device), but waits at most [`CLOSE_TIMEOUT`] for it: a device that
//! does not take it is dropped then.
//!
//! The transports are [`ws`] (WebSocket) and [`mqtt`] (MQTT for the JSON, encrypted UDP for the
//! audio, through [`udp`]; devices on the built-in endpoint, or on an external broker in fleet
//! mode, [`broker`]); each is a reader of [`Event`]s and a writer task draining the [`Outbox`]. The session above never sees a socket, nor which transport it is on.

pub mod broker;
pub mod mqtt;
pub mod udp;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{AudioParams, LimitsConfig};
use crate::metrics::Metrics;
use crate::protocol::frame::{FrameError, ProtocolVersion};
use crate::protocol::message::{ClientHello, Inbound, MessageError, ServerMessage, UdpParams};
use crate::speaker::Tts;

/// How long we wait for the device after sending Close before dropping TCP.
pub const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

/// Largest message the device may send or be sent, bytes. The firmware's own frames are at most
/// 64 KiB; a bigger outgoing message is refused by [`Outbox::send`] (never written).
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Bytes every queued item counts for on top of its payload, so that a queue of tiny packets is
/// bounded in count too.
const ITEM_OVERHEAD: usize = 64;

/// What arrives from the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text message, parsed.
    Message(Inbound),
    /// A text message that could not be understood; the device should be told why.
    BadMessage(MessageError),
    /// One uplink Opus packet and its v2 timestamp (0 in v1 and v3).
    Audio {
        /// The Opus packet.
        opus: Bytes,
        /// The v2 timestamp, ms.
        timestamp: u32,
    },
    /// A binary frame that could not be decoded.
    BadAudio(FrameError),
    /// The device is gone: it closed, dropped TCP, or the read failed.
    Gone,
}

/// A message for the device. The connection adds the session id (and, to our hello, the
/// transport and protocol version) and frames it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// Our hello, with the downlink audio we really encode.
    Hello {
        /// What we encode at.
        audio_params: AudioParams,
    },
    /// The user's recognized (or typed) text.
    Stt(String),
    /// The assistant's emotion: the device sets its face.
    Emotion {
        /// The emoji.
        emoji: String,
        /// The emotion name.
        name: String,
    },
    /// `tts` start / sentence_start / stop: made only by the [`crate::speaker`].
    Tts(Tts),
    /// A JSON-RPC message for the device's MCP server.
    Mcp(Value),
    /// The answer to a `ping`.
    Pong,
    /// A message we could not handle; the device logs it.
    Error(String),
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is closed or closing.
    #[error("the device is gone")]
    Gone,
    /// The message is larger than any device may be sent; it was dropped, the connection serves on.
    #[error("a {0}-byte message is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
}

/// One queued item and the queue room it holds until written.
struct Queued {
    item: Item,
    _room: Option<OwnedSemaphorePermit>,
}

/// What the writer sends.
enum Item {
    Text(String),
    Audio {
        opus: Bytes,
        timestamp: u32,
        turn: CancellationToken,
    },
    /// Send Close with this reason, then end.
    Close(String),
}

/// What the writer sees of the queue.
struct WriterSide {
    rx: mpsc::UnboundedReceiver<Queued>,
    shared: Arc<Shared>,
}

impl WriterSide {
    /// The next queued item (holding its queue room until dropped); `None` once the connection
    /// is finished or nothing can be queued any more.
    async fn next(&mut self) -> Option<Queued> {
        tokio::select! {
            biased;
            _ = self.shared.gone.cancelled() => None,
            queued = self.rx.recv() => queued,
        }
    }
}

/// How a connection's messages travel, as far as our hello tells the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Everything over one WebSocket.
    WebSocket,
    /// JSON over MQTT, audio over UDP as the hello's `udp` object says.
    Udp(UdpParams),
}

/// State shared by the [`Outbox`] handles and the writer.
struct Shared {
    session_id: Arc<str>,
    transport: Transport,
    /// The binary protocol version; set by the reader when the hello names it.
    version: Arc<AtomicU8>,
    /// Queue room in bytes.
    room: Arc<Semaphore>,
    /// The configured room, for messages.
    room_bytes: usize,
    /// Fires when the connection is finished for whatever reason (the writer ended).
    gone: CancellationToken,
    metrics: Arc<Metrics>,
    write_timeout: Duration,
}

/// A cheap, cloneable handle for queueing messages to one device.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("session_id", &self.shared.session_id).finish_non_exhaustive()
    }
}

impl Outbox {
    fn new(
        session_id: Arc<str>,
        version: Arc<AtomicU8>,
        transport: Transport,
        limits: &LimitsConfig,
        metrics: Arc<Metrics>,
    ) -> (Self, WriterSide) {
        let room_bytes = limits.outbound_queue_bytes.clamp(MAX_MESSAGE, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            session_id,
            transport,
            version,
            room: Arc::new(Semaphore::new(room_bytes)),
            room_bytes,
            gone: CancellationToken::new(),
            metrics,
            write_timeout: Duration::from_millis(limits.write_timeout_ms.max(1)),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx, shared: Arc::clone(&shared) }, WriterSide { rx, shared })
    }

    /// This session's id, stamped on every message to the device.
    pub fn session_id(&self) -> &str {
        &self.shared.session_id
    }

    /// Queues a message. Never waits: when the queue is full the device is not reading, and the
    /// connection is closed (the message is then [`SendError::Gone`]).
    pub fn send(&self, msg: Outbound) -> Result<(), SendError> {
        let text = self.to_json(msg);
        if text.len() > MAX_MESSAGE {
            tracing::warn!("a {}-byte message to the device was dropped (over {MAX_MESSAGE} bytes)", text.len());
            return Err(SendError::TooLarge(text.len()));
        }
        let room = self.reserve(text.len())?;
        self.queue(Queued { item: Item::Text(text), _room: Some(room) })
    }

    /// Queues one Opus packet of a turn's reply, waiting while the queue is full (the speaker
    /// paces audio, so a full queue means the device is not reading and is about to be closed).
    /// Returns false when the connection is gone or the turn was cancelled meanwhile.
    pub async fn send_audio(&self, opus: Bytes, timestamp: u32, turn: &CancellationToken) -> bool {
        let need = permits(opus.len());
        let room = tokio::select! {
            biased;
            _ = turn.cancelled() => return false,
            _ = self.shared.gone.cancelled() => return false,
            room = Arc::clone(&self.shared.room).acquire_many_owned(need) => match room {
                Ok(room) => room,
                Err(_) => return false,
            },
        };
        self.queue(Queued { item: Item::Audio { opus, timestamp, turn: turn.clone() }, _room: Some(room) }).is_ok()
    }

    /// Queues Close (after what is already queued) and waits until the writer has sent it and
    /// ended; after [`CLOSE_TIMEOUT`] the connection is dropped without it.
    pub async fn close(&self, reason: &str) {
        if self.shared.gone.is_cancelled() {
            return;
        }
        // No room is reserved: it is the last item, and the writer ends with it.
        let queued = self.tx.send(Queued { item: Item::Close(reason.to_owned()), _room: None });
        if queued.is_ok() && tokio::time::timeout(CLOSE_TIMEOUT, self.shared.gone.cancelled()).await.is_ok() {
            return;
        }
        self.shared.gone.cancel();
    }

    /// Completes when the connection is finished: the writer ended (closed by us, not reading,
    /// or a write error).
    pub async fn gone(&self) {
        self.shared.gone.cancelled().await;
    }

    /// Whether the connection is finished.
    pub fn is_gone(&self) -> bool {
        self.shared.gone.is_cancelled()
    }

    fn reserve(&self, len: usize) -> Result<OwnedSemaphorePermit, SendError> {
        if self.shared.gone.is_cancelled() {
            return Err(SendError::Gone);
        }
        match Arc::clone(&self.shared.room).try_acquire_many_owned(permits(len)) {
            Ok(room) => Ok(room),
            Err(_) => {
                let queued = self.shared.room_bytes - self.shared.room.available_permits();
                self.shared.drop_device(
                    "not_reading",
                    &format!("the device is not reading: {queued} bytes are waiting to be sent"),
                );
                Err(SendError::Gone)
            }
        }
    }

    fn queue(&self, queued: Queued) -> Result<(), SendError> {
        self.tx.send(queued).map_err(|_| SendError::Gone)
    }

    fn to_json(&self, msg: Outbound) -> String {
        let session_id = self.shared.session_id.to_string();
        let message = match msg {
            Outbound::Hello { audio_params } => match &self.shared.transport {
                Transport::WebSocket => ServerMessage::Hello {
                    version: self.shared.version().number(),
                    transport: "websocket".into(),
                    session_id,
                    audio_params,
                    udp: None,
                },
                // The gateway's hello: version 3 over MQTT, whatever the binary framing would be.
                Transport::Udp(udp) => ServerMessage::Hello {
                    version: 3,
                    transport: "udp".into(),
                    session_id,
                    audio_params,
                    udp: Some(udp.clone()),
                },
            },
            Outbound::Stt(text) => ServerMessage::Stt { text, session_id },
            Outbound::Emotion { emoji, name } => ServerMessage::Llm { text: emoji, emotion: name, session_id },
            Outbound::Tts(tts) => {
                let (state, text) = tts.into_parts();
                ServerMessage::Tts { state, text, session_id }
            }
            Outbound::Mcp(payload) => ServerMessage::Mcp { payload, session_id },
            Outbound::Pong => ServerMessage::Pong { session_id },
            Outbound::Error(message) => ServerMessage::Error { message, session_id },
        };
        message.to_json()
    }
}

impl Shared {
    fn version(&self) -> ProtocolVersion {
        ProtocolVersion::from_number(u32::from(self.version.load(Ordering::Relaxed))).unwrap_or_default()
    }

    /// Gives up on the device: logs why at WARN, counts it and ends the connection.
    fn drop_device(&self, reason: &'static str, why: &str) {
        if self.gone.is_cancelled() {
            return;
        }
        tracing::warn!(session = %self.session_id, "closing the connection: {why}");
        self.metrics.device_dropped(reason);
        self.gone.cancel();
    }
}

/// Queue room a payload of `len` bytes takes.
fn permits(len: usize) -> u32 {
    u32::try_from(len.saturating_add(ITEM_OVERHEAD)).unwrap_or(u32::MAX)
}

/// Where a connection's events come from.
enum Reader {
    /// The device's WebSocket.
    Ws(ws::Reader),
    /// Fed by the transport's tasks (MQTT messages and UDP audio); closed when the session is
    /// over on the device's side.
    Channel(mpsc::Receiver<Event>),
}

impl Reader {
    async fn recv(&mut self, version: ProtocolVersion) -> Event {
        match self {
            Self::Ws(ws) => ws.recv(version).await,
            Self::Channel(rx) => rx.recv().await.unwrap_or(Event::Gone),
        }
    }

    async fn drain(&mut self) {
        match self {
            Self::Ws(ws) => ws.drain().await,
            // Over MQTT the device does not answer our goodbye: nothing to wait for.
            Self::Channel(_) => {}
        }
    }
}

/// The read half of a device connection.
pub struct Connection {
    inner: Reader,
    session_id: Arc<str>,
    version: Arc<AtomicU8>,
    /// The `Protocol-Version` header, if any: it wins over the hello's `version`.
    header_version: Option<u32>,
    /// The connection comes from the MQTT gateway: binary v2, whatever the hello says.
    gateway: bool,
}

impl Connection {
    /// This session's id (also stamped on every message to the device).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The binary protocol version in use.
    pub fn version(&self) -> ProtocolVersion {
        ProtocolVersion::from_number(u32::from(self.version.load(Ordering::Relaxed))).unwrap_or_default()
    }

    /// The next thing the device sent. A hello sets the binary protocol version for both
    /// directions: the `Protocol-Version` header if there was one, else the hello's `version`
    /// (v2 for the MQTT gateway).
    pub async fn recv(&mut self) -> Event {
        let event = self.inner.recv(self.version()).await;
        if let Event::Message(Inbound::Hello(hello)) = &event {
            self.negotiate(hello);
        }
        event
    }

    /// After our Close: waits (at most [`CLOSE_TIMEOUT`]) for the device to end the connection.
    /// Real devices never answer Close; browsers do.
    pub async fn drain(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.inner.drain()).await;
    }

    fn negotiate(&self, hello: &ClientHello) {
        let version = if self.gateway {
            ProtocolVersion::V2
        } else {
            let asked = self.header_version.or(hello.version).unwrap_or(1);
            ProtocolVersion::from_number(asked).unwrap_or_else(|| {
                tracing::warn!("unknown protocol version {asked}; using 1");
                ProtocolVersion::V1
            })
        };
        self.version.store(version.number() as u8, Ordering::Relaxed);
    }
}

/// The version a connection starts with, before any hello.
fn initial_version(header_version: Option<u32>, gateway: bool) -> ProtocolVersion {
    if gateway {
        ProtocolVersion::V2
    } else {
        header_version.and_then(ProtocolVersion::from_number).unwrap_or(ProtocolVersion::V1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(limits: &LimitsConfig) -> (Outbox, WriterSide) {
        let version = Arc::new(AtomicU8::new(1));
        Outbox::new(Arc::from("sid"), version, Transport::WebSocket, limits, Metrics::new())
    }

    #[test]
    fn messages_carry_the_session_id_and_our_hello_the_version() {
        let (out, mut writer) = outbox(&LimitsConfig::default());
        out.shared.version.store(3, Ordering::Relaxed);
        let params = AudioParams { format: "opus".into(), sample_rate: 24000, channels: 1, frame_duration: 60 };
        out.send(Outbound::Hello { audio_params: params }).unwrap();
        out.send(Outbound::Stt("hi".into())).unwrap();
        let texts: Vec<Value> = std::iter::from_fn(|| writer.rx.try_recv().ok())
            .map(|q| match q.item {
                Item::Text(t) => serde_json::from_str(&t).unwrap(),
                Item::Audio { .. } | Item::Close(_) => Value::Null,
            })
            .collect();
        assert_eq!(texts[0]["type"], "hello");
        assert_eq!(texts[0]["version"], 3);
        assert_eq!(texts[0]["transport"], "websocket");
        assert_eq!(texts[0]["session_id"], "sid");
        assert_eq!(texts[1], serde_json::json!({"type": "stt", "text": "hi", "session_id": "sid"}));
    }

    #[test]
    fn an_oversize_message_is_refused_and_the_connection_serves_on() {
        let (out, _writer) = outbox(&LimitsConfig::default());
        let big = "a".repeat(MAX_MESSAGE);
        assert!(matches!(out.send(Outbound::Stt(big)), Err(SendError::TooLarge(_))));
        assert!(!out.is_gone());
        assert_eq!(out.send(Outbound::Pong), Ok(()));
    }

    #[test]
    fn a_full_queue_closes_the_connection_instead_of_waiting() {
        let limits = LimitsConfig { outbound_queue_bytes: MAX_MESSAGE, ..LimitsConfig::default() };
        let (out, _writer) = outbox(&limits);
        let metrics = Arc::clone(&out.shared.metrics);
        let mut sent = 0;
        while out.send(Outbound::Pong).is_ok() {
            sent += 1;
            assert!(sent < MAX_MESSAGE, "the queue never filled");
        }
        assert!(out.is_gone(), "a device that lets the queue fill is closed");
        assert_eq!(out.send(Outbound::Pong), Err(SendError::Gone));
        assert!(metrics.render().contains("xiaozhi_devices_dropped_total{reason=\"not_reading\"} 1"));
    }

    #[test]
    fn the_version_comes_from_the_header_then_the_hello() {
        assert_eq!(initial_version(None, false), ProtocolVersion::V1);
        assert_eq!(initial_version(Some(3), false), ProtocolVersion::V3);
        assert_eq!(initial_version(Some(9), false), ProtocolVersion::V1);
        assert_eq!(initial_version(Some(3), true), ProtocolVersion::V2);
    }
}
