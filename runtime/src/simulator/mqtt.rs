//! The simulator's MQTT + UDP transport, as the firmware speaks it (device-protocol.md §3):
//! MQTT 3.1.1 with the OTA block's credentials (a `rumqttc` client), every JSON message published
//! on `publish_topic` at QoS 0, the hello with `version 3` and `transport: udp`, then the audio
//! as AES-128-CTR datagrams sealed with the hello's key and nonce (sequence from 1, the header as
//! IV). Current firmware never subscribes; with [`MqttSettings::subscribe`] the device subscribes
//! to `subscribe_topic` as firmware before 2025 did (a stock broker delivers only then).
//!
//! The server learns the device's UDP address from its first datagram, so right after the hello
//! the simulator sends one frame of silence, as the firmware's microphone does once listening.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rumqttc::{AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{HELLO_TIMEOUT, McpBehaviour, Outgoing, ServerHello, Shared, SimEvent, lock, on_json, parse_server_hello};
use crate::protocol::udp::{Opener, Sealer, SessionKeys};

/// What the OTA `mqtt` block gives the device (§5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// `host:port` (1883 when no port is given; the firmware's 8883 means TLS, not simulated).
    pub endpoint: String,
    /// The MQTT client id.
    pub client_id: String,
    /// The MQTT user name.
    pub username: String,
    /// The MQTT password.
    pub password: String,
    /// Where every JSON message is published.
    pub publish_topic: String,
    /// The topic firmware before 2025 subscribed to; current firmware does not subscribe.
    pub subscribe_topic: Option<String>,
    /// Whether to subscribe to `subscribe_topic` (old firmware; needed with a stock broker).
    pub subscribe: bool,
    /// Keep-alive, seconds (240 when the block has none).
    pub keepalive: u16,
}

impl MqttSettings {
    /// Reads the OTA `mqtt` block the way the firmware stores it (strings or numbers).
    pub fn from_ota(block: &Value) -> anyhow::Result<Self> {
        let text = |key: &str| match block.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let required = |key: &str| text(key).with_context(|| format!("the OTA mqtt block has no {key}"));
        Ok(Self {
            endpoint: required("endpoint")?,
            client_id: required("client_id")?,
            username: text("username").unwrap_or_default(),
            password: text("password").unwrap_or_default(),
            publish_topic: required("publish_topic")?,
            subscribe_topic: text("subscribe_topic").filter(|t| !t.is_empty() && t != "null"),
            subscribe: false,
            keepalive: block
                .get("keepalive")
                .and_then(Value::as_u64)
                .and_then(|k| u16::try_from(k).ok())
                .unwrap_or(240),
        })
    }

    fn host_port(&self) -> anyhow::Result<(String, u16)> {
        match self.endpoint.rsplit_once(':') {
            Some((host, port)) => {
                Ok((host.to_owned(), port.parse().with_context(|| format!("bad port in {:?}", self.endpoint))?))
            }
            None => Ok((self.endpoint.clone(), 8883)),
        }
    }
}

/// The UDP side of a session, from the server hello.
pub(super) struct Audio {
    socket: Arc<UdpSocket>,
    /// The hello's key and nonce (tests forge datagrams with them).
    pub(super) keys: SessionKeys,
    sealer: Mutex<Sealer>,
    opener: Mutex<Opener>,
}

impl Audio {
    /// Reads the hello's `udp` object (§3.1: a string server, a port, 16-byte hex key and nonce).
    async fn open(hello: &Value) -> anyhow::Result<Self> {
        let udp = hello.get("udp").context("the server hello has no udp object")?;
        let server = udp.get("server").and_then(Value::as_str).context("udp.server is not a string")?;
        let port =
            udp.get("port").and_then(Value::as_u64).filter(|p| (1..=65535).contains(p)).context("bad udp.port")?;
        let bytes16 = |key: &str| -> anyhow::Result<[u8; 16]> {
            let text = udp.get(key).and_then(Value::as_str).with_context(|| format!("udp.{key} is not a string"))?;
            hex::decode(text)
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| format!("udp.{key} is not 16 hex bytes"))
        };
        let keys = SessionKeys { key: bytes16("key")?, nonce: bytes16("nonce")? };
        let socket = UdpSocket::bind("0.0.0.0:0").await?;
        socket.connect((server, port as u16)).await.with_context(|| format!("UDP {server}:{port}"))?;
        Ok(Self {
            socket: Arc::new(socket),
            sealer: Mutex::new(Sealer::new(keys.clone())),
            opener: Mutex::new(Opener::new(keys.clone())),
            keys,
        })
    }

    /// Seals and sends one Opus packet.
    pub(super) async fn send(&self, opus: &[u8], timestamp: u32) -> anyhow::Result<()> {
        let datagram = lock_plain(&self.sealer).seal(opus, timestamp).context("packet too large")?;
        self.socket.send(&datagram).await?;
        Ok(())
    }

    /// Sends raw bytes (forged datagrams in tests).
    pub(super) async fn send_raw(&self, datagram: &[u8]) -> anyhow::Result<()> {
        self.socket.send(datagram).await?;
        Ok(())
    }

    /// The server's UDP address.
    pub(super) fn server_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.peer_addr()?)
    }
}

fn lock_plain<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connected MQTT device: the client, its event loop (read by the reader task), the audio.
pub(super) struct Connected {
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    pub audio: Arc<Audio>,
    pub hello: Value,
    pub parsed: ServerHello,
}

/// Connects, says hello and opens the audio channel, like `MqttProtocol::OpenAudioChannel`.
pub(super) async fn connect(
    settings: &MqttSettings,
    hello: String,
    events: &mpsc::UnboundedSender<(Instant, SimEvent)>,
    protocol_errors: &mut Vec<String>,
) -> anyhow::Result<Connected> {
    let (host, port) = settings.host_port()?;
    let mut options = MqttOptions::new(settings.client_id.clone(), host, port);
    options.set_credentials(settings.username.clone(), settings.password.clone());
    options.set_keep_alive(Duration::from_secs(u64::from(settings.keepalive.max(5))));
    options.set_max_packet_size(256 * 1024, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let deadline = tokio::time::Instant::now() + super::HANDSHAKE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => bail!("no CONNACK within {:?}", super::HANDSHAKE_TIMEOUT),
            Ok(Err(ConnectionError::ConnectionRefused(code))) => {
                bail!("the MQTT server refused the connection: {code:?}")
            }
            Ok(Err(e)) => return Err(anyhow!(e).context(format!("MQTT connection to {} failed", settings.endpoint))),
            Ok(Ok(MqttEvent::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
        }
    }
    if settings.subscribe
        && let Some(topic) = &settings.subscribe_topic
    {
        client.subscribe(topic.clone(), QoS::AtMostOnce).await?;
    }
    client.publish(settings.publish_topic.clone(), QoS::AtMostOnce, false, hello.into_bytes()).await?;
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let (hello, parsed) = loop {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => bail!("no server hello within {HELLO_TIMEOUT:?} (the firmware gives up here)"),
            Ok(Err(e)) => return Err(anyhow!(e).context("the MQTT connection failed before the server hello")),
            Ok(Ok(event)) => event,
        };
        let MqttEvent::Incoming(Packet::Publish(publish)) = event else { continue };
        let at = Instant::now();
        let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(&publish.payload) else {
            protocol_errors
                .push(format!("a publish that is not a JSON object: {:?}", String::from_utf8_lossy(&publish.payload)));
            continue;
        };
        if v.get("type").and_then(Value::as_str) == Some("hello") {
            let parsed = parse_server_hello(&v)?;
            break (v, parsed);
        }
        let _ = events.send((at, SimEvent::Json(v)));
    };
    let audio = Arc::new(Audio::open(&hello).await?);
    Ok(Connected { client, eventloop, audio, hello, parsed })
}

/// Reads the MQTT connection (server JSON, answered by the device's MCP server) and the UDP socket
/// (audio, checked as the firmware checks it) until either ends. A server `goodbye` for the
/// current session closes the audio channel: it ends the events with `Closed("goodbye")`.
pub(super) async fn read_loop(
    eventloop: EventLoop,
    audio: Arc<Audio>,
    mcp: McpBehaviour,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::UnboundedSender<(Instant, SimEvent)>,
    out: mpsc::UnboundedSender<Outgoing>,
) {
    // The event loop is polled in a task of its own (its `poll` is not documented as cancel-safe,
    // so it is never raced against the UDP socket), ending with this reader.
    let (polled_tx, mut polled) = mpsc::unbounded_channel();
    let pump = tokio::spawn(pump(eventloop, polled_tx));
    let _pump = AbortOnDrop(pump);
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            polled = polled.recv() => match polled {
                Some(Ok(MqttEvent::Incoming(Packet::Publish(publish)))) => {
                    let at = Instant::now();
                    let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(&publish.payload) else {
                        lock(&shared).protocol_errors.push(format!("a publish that is not a JSON object: {:?}", String::from_utf8_lossy(&publish.payload)));
                        continue;
                    };
                    on_json(&value, &mcp, &shared, &out);
                    let goodbye = value.get("type").and_then(Value::as_str) == Some("goodbye")
                        && value.get("session_id").and_then(Value::as_str) == Some(lock(&shared).session_id.as_str());
                    let _ = events.send((at, SimEvent::Json(value)));
                    if goodbye {
                        let _ = events.send((Instant::now(), SimEvent::Closed(Some("goodbye".into()))));
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!("simulator: MQTT connection ended: {e}");
                    let _ = events.send((Instant::now(), SimEvent::Closed(None)));
                    return;
                }
                None => {
                    let _ = events.send((Instant::now(), SimEvent::Closed(None)));
                    return;
                }
            },
            received = audio.socket.recv(&mut buf) => {
                let Ok(len) = received else { continue };
                let at = Instant::now();
                // The firmware's checks: length, type, payload_len, sequence (any ssrc).
                match lock_plain(&audio.opener).open(buf.get(..len).unwrap_or_default(), |_| true) {
                    Ok(opened) => {
                        let _ = events.send((at, SimEvent::Audio { opus: opened.payload, timestamp: opened.header.timestamp }));
                    }
                    Err(e) => lock(&shared).protocol_errors.push(format!("a dropped UDP datagram: {e}")),
                }
            }
        }
    }
}

/// Polls the MQTT event loop until it fails (the firmware does not reconnect mid-session), handing
/// every event over.
async fn pump(mut eventloop: EventLoop, polled: mpsc::UnboundedSender<Result<MqttEvent, ConnectionError>>) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if polled.send(event).is_err() || failed {
            return;
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends what the device is asked to: JSON as publishes on `topic`, audio as sealed datagrams, raw
/// binary as raw datagrams. Shutdown drops the connection without DISCONNECT.
pub(super) async fn write_loop(
    client: AsyncClient,
    topic: String,
    audio: Arc<Audio>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(cmd) = rx.recv().await {
        let sent = match cmd {
            Outgoing::Send(Message::Text(text)) => client
                .publish(topic.clone(), QoS::AtMostOnce, false, text.as_bytes().to_vec())
                .await
                .map_err(|e| anyhow!(e)),
            Outgoing::Send(Message::Binary(bytes)) => audio.send_raw(&bytes).await,
            Outgoing::Send(_) => Ok(()),
            Outgoing::Audio { opus, timestamp } => audio.send(&opus, timestamp).await,
            Outgoing::Shutdown => break,
        };
        if let Err(e) = sent {
            tracing::debug!("simulator: MQTT/UDP write failed: {e}");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_ota_block_is_read_like_the_firmware() {
        let block = json!({"endpoint": "10.0.0.2:1883", "client_id": "GID_xiaozhi@@@aa_bb_cc_dd_ee_01@@@u",
            "username": "dXNlcg==", "password": "p", "publish_topic": "device-server",
            "subscribe_topic": "devices/p2p/aa_bb_cc_dd_ee_01", "keepalive": 60});
        let settings = MqttSettings::from_ota(&block).unwrap();
        assert_eq!(settings.host_port().unwrap(), ("10.0.0.2".to_owned(), 1883));
        assert_eq!(settings.keepalive, 60);
        assert_eq!(settings.subscribe_topic.as_deref(), Some("devices/p2p/aa_bb_cc_dd_ee_01"));
        assert!(!settings.subscribe, "current firmware does not subscribe");
        let mut no_port = block.clone();
        no_port["endpoint"] = json!("mqtt.example.com");
        no_port["subscribe_topic"] = json!("null");
        let settings = MqttSettings::from_ota(&no_port).unwrap();
        assert_eq!(settings.host_port().unwrap().1, 8883);
        assert_eq!(settings.subscribe_topic, None);
        assert!(MqttSettings::from_ota(&json!({"endpoint": "x"})).is_err());
    }
}
