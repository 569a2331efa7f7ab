//! The WebSocket transport of a device connection: the upgrade's accept key, the socket's limits,
//! the reader (frames → [`Event`]s) and the writer task (the queue → frames).

use std::sync::Arc;
use std::sync::atomic::AtomicU8;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::{CLOSE_TIMEOUT, Connection, Event, Item, MAX_MESSAGE, Outbox, Transport, WriterSide, initial_version};
use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::protocol::frame::{self, KIND_JSON, KIND_OPUS, ProtocolVersion};
use crate::protocol::message::{MessageError, parse_inbound};

/// The WebSocket of one device, after the HTTP upgrade.
type WsStream = WebSocketStream<TokioIo<Upgraded>>;

/// Initial read buffer of a device socket: device messages are tiny (Opus packets of at most a
/// few hundred bytes), so the 128 KiB default would only cost memory on every idle connection.
const READ_BUFFER: usize = 4 * 1024;

/// The `Sec-WebSocket-Accept` value for a request's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    derive_accept_key(key)
}

/// Who is on the other end, as far as framing goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Framing {
    /// The `Protocol-Version` header, if any.
    pub header_version: Option<u32>,
    /// The connection comes from the MQTT gateway (`?from=mqtt_gateway`): binary v2.
    pub gateway: bool,
}

/// Takes over an upgraded HTTP connection: returns the reading half for the session and the
/// [`Outbox`] of a spawned writer task.
pub async fn open(
    upgraded: Upgraded,
    framing: Framing,
    limits: &LimitsConfig,
    metrics: Arc<Metrics>,
) -> (Connection, Outbox) {
    // Every message is written at once (no write buffering); the write buffer cap only has to
    // hold the largest message we send.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * MAX_MESSAGE)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (sink, stream) = ws.split();
    let session_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let version = initial_version(framing.header_version, framing.gateway);
    let version = Arc::new(AtomicU8::new(version.number() as u8));
    let (outbox, writer) =
        Outbox::new(Arc::clone(&session_id), Arc::clone(&version), Transport::WebSocket, limits, metrics);
    tokio::spawn(write_loop(sink, writer));
    let connection = Connection {
        inner: super::Reader::Ws(Reader { stream }),
        session_id,
        version,
        header_version: framing.header_version,
        gateway: framing.gateway,
    };
    (connection, outbox)
}

/// The reading half of the socket.
pub(super) struct Reader {
    stream: SplitStream<WsStream>,
}

impl Reader {
    /// The next event; WebSocket control frames are skipped.
    pub(super) async fn recv(&mut self, version: ProtocolVersion) -> Event {
        loop {
            let message = match self.stream.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Event::Gone,
                Some(Ok(message)) => message,
            };
            let event = match message {
                Message::Text(text) => text_event(text.as_str()),
                Message::Binary(data) => binary_event(version, data),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => None,
            };
            if let Some(event) = event {
                return event;
            }
        }
    }

    /// Reads until the device's Close or the end of the stream.
    pub(super) async fn drain(&mut self) {
        while let Some(Ok(message)) = self.stream.next().await {
            if message.is_close() {
                break;
            }
        }
    }
}

fn text_event(text: &str) -> Option<Event> {
    Some(match parse_inbound(text) {
        Ok(message) => Event::Message(message),
        Err(e) => Event::BadMessage(e),
    })
}

/// A binary frame: one Opus packet (borrowed from the frame's bytes, not copied), or JSON in a
/// v2/v3 frame of type 1. Frames of other types are skipped.
fn binary_event(version: ProtocolVersion, data: Bytes) -> Option<Event> {
    let frame = match frame::decode(version, &data) {
        Ok(frame) => frame,
        Err(e) => return Some(Event::BadAudio(e)),
    };
    match frame.kind {
        KIND_OPUS => {
            // The payload lies inside `data`: share those bytes instead of copying them.
            let start = (frame.payload.as_ptr() as usize).saturating_sub(data.as_ptr() as usize);
            let end = start + frame.payload.len();
            let opus = if end <= data.len() { data.slice(start..end) } else { Bytes::copy_from_slice(frame.payload) };
            Some(Event::Audio { opus, timestamp: frame.timestamp })
        }
        KIND_JSON => match std::str::from_utf8(frame.payload) {
            Ok(text) => text_event(text),
            Err(_) => Some(Event::BadMessage(MessageError::Malformed("a JSON frame that is not UTF-8".into()))),
        },
        _ => None,
    }
}

/// The writer task: sends what is queued, in order, each write bounded by the write timeout, until
/// the Close item or the connection is dropped. Ends when the connection is finished, and says so.
async fn write_loop(mut sink: SplitSink<WsStream, Message>, mut side: WriterSide) {
    let shared = Arc::clone(&side.shared);
    // Reused for every framed (v2/v3) packet: no allocation per frame beyond the message itself.
    let mut scratch = Vec::new();
    loop {
        let Some(queued) = side.next().await else { break };
        let message = match queued.item {
            Item::Close(reason) => {
                let frame = CloseFrame { code: CloseCode::Normal, reason: reason.into() };
                tokio::select! {
                    _ = shared.gone.cancelled() => {}
                    _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))) => {}
                }
                break;
            }
            Item::Text(text) => Message::Text(text.into()),
            Item::Audio { turn, .. } if turn.is_cancelled() => continue,
            Item::Audio { opus, timestamp, .. } => match shared.version() {
                ProtocolVersion::V1 => Message::Binary(opus),
                version => {
                    frame::encode(version, &opus, timestamp, &mut scratch);
                    Message::Binary(Bytes::copy_from_slice(&scratch))
                }
            },
        };
        // Bounded by the write timeout, and given up at once when the connection is dropped (a
        // close that the device did not take in time, or the queue overflowing).
        let result = tokio::select! {
            biased;
            _ = shared.gone.cancelled() => break,
            result = tokio::time::timeout(shared.write_timeout, sink.send(message)) => result,
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.drop_device("write_failed", &format!("writing to the device failed: {e}"));
                break;
            }
            Err(_) => {
                let waited = shared.write_timeout;
                shared.drop_device("not_reading", &format!("the device took nothing we sent for {waited:?}"));
                break;
            }
        }
    }
    shared.gone.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_frames_become_events() {
        let opus = Bytes::from_static(&[1, 2, 3]);
        assert_eq!(
            binary_event(ProtocolVersion::V1, opus.clone()),
            Some(Event::Audio { opus: opus.clone(), timestamp: 0 })
        );
        let mut v2 = Vec::new();
        frame::encode(ProtocolVersion::V2, &[7, 8], 1234, &mut v2);
        assert_eq!(
            binary_event(ProtocolVersion::V2, Bytes::from(v2)),
            Some(Event::Audio { opus: Bytes::from_static(&[7, 8]), timestamp: 1234 })
        );
        let json = Bytes::from_static(&[
            1, 0, 0, 15, b'{', b'"', b't', b'y', b'p', b'e', b'"', b':', b'"', b'p', b'i', b'n', b'g', b'"', b'}',
        ]);
        assert!(matches!(binary_event(ProtocolVersion::V3, json), Some(Event::Message(_))));
        assert!(matches!(
            binary_event(ProtocolVersion::V3, Bytes::from_static(&[0, 0, 0, 9, 1])),
            Some(Event::BadAudio(_))
        ));
        assert_eq!(binary_event(ProtocolVersion::V3, Bytes::from_static(&[5, 0, 0, 1, 1])), None);
    }
}
