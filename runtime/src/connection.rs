//! One device WebSocket: the single writer task, outbound message types, and closing with a
//! timeout (devices never answer a Close frame, so we drop TCP ourselves).
//!
//! Everything that leaves for the device goes through one bounded channel into one writer task,
//! so JSON and audio leave in the order they were queued. Audio frames carry the cancellation
//! token of their turn: once a turn is aborted, its frames still queued are dropped by the writer,
//! so nothing of it reaches the device after the abort.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::protocol::frame::{self, ProtocolVersion};
use crate::protocol::message::ServerMessage;

/// The WebSocket of one device, after the HTTP upgrade.
pub type WsStream = WebSocketStream<TokioIo<Upgraded>>;

/// The read half, owned by the session task.
pub type WsReader = SplitStream<WsStream>;

/// How long we wait for the device after sending Close before dropping TCP.
pub const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

/// Capacity of the outbound queue. Audio is paced upstream, so the queue stays short; the bound
/// only protects memory if a device stops reading.
const OUTBOUND_QUEUE: usize = 256;

/// Something to send to the device.
#[derive(Debug)]
pub enum Outbound {
    /// A JSON text message.
    Text(String),
    /// One Opus packet of a turn's reply; dropped if `turn` was cancelled before it is written.
    Audio {
        /// The Opus packet.
        opus: Bytes,
        /// The v2 timestamp (ms); ignored by v1 and v3.
        timestamp: u32,
        /// The turn it belongs to.
        turn: CancellationToken,
    },
    /// Send a Close frame, then end the writer; `done` fires once the frame is flushed.
    Close {
        /// Close reason sent to the device.
        reason: String,
        /// Fires when the writer has finished.
        done: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable handle for queueing messages to one device.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outbound>,
    session_id: String,
}

impl Outbox {
    /// The session id stamped on every JSON message.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Queues a typed JSON message. Returns false if the connection is gone.
    pub async fn send(&self, msg: ServerMessage) -> bool {
        self.tx.send(Outbound::Text(msg.to_json())).await.is_ok()
    }

    /// Queues a raw outbound item. Returns false if the connection is gone.
    pub async fn send_raw(&self, item: Outbound) -> bool {
        self.tx.send(item).await.is_ok()
    }

    /// Asks the writer to send Close and waits (bounded) until it is flushed.
    pub async fn close(&self, reason: &str) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Outbound::Close { reason: reason.to_string(), done }).await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
        }
    }
}

/// Splits the socket: returns the read half for the session and an [`Outbox`] feeding a spawned
/// writer task. The binary framing version can be changed later with the returned sender (the
/// hello may name a version the headers did not).
pub fn split(
    ws: WsStream,
    session_id: String,
    version: ProtocolVersion,
) -> (WsReader, Outbox, tokio::sync::watch::Sender<ProtocolVersion>) {
    let (sink, reader) = ws.split();
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (version_tx, version_rx) = tokio::sync::watch::channel(version);
    tokio::spawn(write_loop(sink, rx, version_rx));
    (reader, Outbox { tx, session_id }, version_tx)
}

async fn write_loop(
    mut sink: SplitSink<WsStream, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    version: tokio::sync::watch::Receiver<ProtocolVersion>,
) {
    // Reused for every framed (v2/v3) packet: no allocation per frame beyond the message itself.
    let mut scratch = Vec::new();
    while let Some(item) = rx.recv().await {
        let result = match item {
            Outbound::Text(text) => sink.send(Message::Text(text.into())).await,
            Outbound::Audio { opus, timestamp, turn } => {
                if turn.is_cancelled() {
                    continue;
                }
                let v = *version.borrow();
                let msg = match v {
                    ProtocolVersion::V1 => Message::Binary(opus),
                    _ => {
                        frame::encode(v, &opus, timestamp, &mut scratch);
                        Message::Binary(Bytes::copy_from_slice(&scratch))
                    }
                };
                sink.send(msg).await
            }
            Outbound::Close { reason, done } => {
                let frame = CloseFrame { code: CloseCode::Normal, reason: reason.into() };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
                let _ = done.send(());
                return;
            }
        };
        if let Err(e) = result {
            tracing::debug!("writer stopped: {e}");
            return;
        }
    }
}

/// Waits (bounded) for the device to end the connection after our Close, then returns so the
/// caller drops the socket. Real devices never answer Close; browsers do.
pub async fn drain_after_close(reader: &mut WsReader) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = reader.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
}
