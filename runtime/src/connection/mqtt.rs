//! The built-in MQTT endpoint: the firmware's second transport (device-protocol.md §3), a second
//! implementation of the wire beside [`super::ws`].
//!
//! Devices never talk to each other and never subscribe (the firmware pushes every JSON message to
//! `device-server` and takes whatever is pushed to it), so the endpoint is not a general broker: it
//! is the device-facing half of what the Node `xiaozhi-mqtt-gateway` does, in process. MQTT 3.1.1
//! packets are read and written with `rumqttc`'s codec; this module holds the connection rules:
//!
//! - CONNECT within `limits.mqtt_connect_timeout_ms`, protocol level 4 only, a client id
//!   `GID_<group>@@@<mac_>@@@<uuid>` ([`crate::protocol::mqtt`]), and, with
//!   `server.mqtt_signature_key` set, the gateway's HMAC password; a refusal is a CONNACK with the
//!   reason, counted in `xiaozhi_mqtt_refused_total{reason}`. At most `limits.mqtt_clients`
//!   clients; a second connection with a client id closes the first (MQTT 3.1.1 §3.1.4).
//! - QoS 0 and 1 from the device (1 is acknowledged), QoS 2 closes the connection; SUBSCRIBE is
//!   acknowledged and ignored (old firmware subscribes to its own topic); a client silent for
//!   1.5 × its keep-alive is closed; packets over `limits.mqtt_packet_bytes` close it.
//! - Every `hello` starts a session with its own UDP channel ([`super::udp`]) and session id;
//!   the messages that follow go to it, `goodbye` ends it, a new `hello` replaces it. Our messages
//!   are pushed on `devices/p2p/<mac_>` (QoS 0), our audio goes over UDP, and a session we end
//!   says `goodbye`. A session whose channel has had no valid datagram or MQTT message for
//!   `limits.udp_channel_timeout` seconds ends.
//!
//! The session above is the same as over WebSocket: it sees a [`Connection`] and an [`Outbox`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::udp::{self, UdpEndpoint};
use super::{Connection, Event, Item, Outbox, Transport, WriterSide};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::frame::ProtocolVersion;
use crate::protocol::message::{ClientHello, Inbound, ServerMessage, UdpParams, parse_inbound};
use crate::protocol::mqtt::{self as identity, ClientIdentity};

/// Packets queued for one MQTT client; a client that lets more pile up is not reading.
const CLIENT_QUEUE: usize = 256;

/// Events queued for one session (its messages and audio): about 15 s of 60 ms packets.
const SESSION_QUEUE: usize = 256;

/// A packet for a client's writer, and who waits until it is written.
type Queued = (Packet, Option<oneshot::Sender<()>>);

/// How long audio waits after a message published through an external broker, which delivers
/// it over its own connection to the device: the firmware drops audio that arrives before
/// `tts start` puts it in Speaking. (Through the built-in endpoint the message is written to the
/// device's socket before the audio is sent.)
const BROKER_SETTLE: Duration = Duration::from_millis(50);

/// How often a client's channel idleness is checked.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A session the endpoint opened: the device, its wire, and where its MQTT connection arrived.
pub struct NewSession {
    /// Who the device is (from its client id).
    pub identity: ClientIdentity,
    /// The reading half, for the session.
    pub connection: Connection,
    /// The writing half.
    pub outbox: Outbox,
    /// The local address the device's MQTT connection reached.
    pub local_addr: SocketAddr,
}

/// Starts a session (the server spawns [`crate::session::run`] with the device's services).
pub type StartSession = Arc<dyn Fn(NewSession) + Send + Sync>;

/// What every device link shares.
pub(super) struct Endpoint {
    config: watch::Receiver<Arc<Config>>,
    udp: Arc<UdpEndpoint>,
    metrics: Arc<Metrics>,
    start: StartSession,
    clients: Arc<Semaphore>,
    /// The live connection of each client id: a newer one closes the older.
    by_client_id: Mutex<HashMap<String, (u64, CancellationToken)>>,
    shutdown: CancellationToken,
}

impl Endpoint {
    pub(super) fn new(
        config: watch::Receiver<Arc<Config>>,
        udp: Arc<UdpEndpoint>,
        metrics: Arc<Metrics>,
        start: StartSession,
        shutdown: CancellationToken,
        clients: Arc<Semaphore>,
    ) -> Self {
        Self { config, udp, metrics, start, clients, by_client_id: Mutex::default(), shutdown }
    }
}

/// Serves MQTT clients on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: watch::Receiver<Arc<Config>>,
    udp: Arc<UdpEndpoint>,
    metrics: Arc<Metrics>,
    start: StartSession,
    shutdown: CancellationToken,
) {
    let max_clients = config.borrow().limits.mqtt_clients.min(Semaphore::MAX_PERMITS);
    let clients = Arc::new(Semaphore::new(max_clients));
    let endpoint = Arc::new(Endpoint::new(config, udp, metrics, start, shutdown.clone(), clients));
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("MQTT accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        // At the limit a connection is closed at once: it holds nothing while it would wait.
        let Ok(permit) = Arc::clone(&endpoint.clients).try_acquire_owned() else {
            endpoint.metrics.mqtt_refused("full");
            tracing::warn!(%peer, "MQTT connection refused: {max_clients} clients are connected (limits.mqtt_clients)");
            continue;
        };
        tokio::spawn(serve_client(Arc::clone(&endpoint), stream, peer, next_id, permit));
    }
}

type Reader = FramedRead<tokio::net::tcp::OwnedReadHalf, Codec>;

async fn serve_client(
    endpoint: Arc<Endpoint>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    permit: OwnedSemaphorePermit,
) {
    let config = Arc::clone(&endpoint.config.borrow());
    let limits = &config.limits;
    let Ok(local_addr) = stream.local_addr() else { return };
    let _ = stream.set_nodelay(true);
    let codec = Codec { max_incoming_size: limits.mqtt_packet_bytes, max_outgoing_size: super::MAX_MESSAGE + 1024 };
    let (read, write) = stream.into_split();
    let mut reader = FramedRead::new(read, codec.clone());
    let mut writer = FramedWrite::new(write, codec);

    let connect_timeout = Duration::from_millis(limits.mqtt_connect_timeout_ms.max(1));
    let connect = match tokio::time::timeout(connect_timeout, reader.next()).await {
        Ok(Some(Ok(Packet::Connect(connect)))) => connect,
        Err(_) => {
            endpoint.metrics.mqtt_refused("no_connect");
            tracing::debug!(%peer, "MQTT: no CONNECT within {connect_timeout:?}");
            return;
        }
        Ok(_) => {
            endpoint.metrics.mqtt_refused("protocol");
            tracing::debug!(%peer, "MQTT: the first packet is not a CONNECT");
            return;
        }
    };
    let refuse = |code: ConnectReturnCode, reason: &'static str, why: String| {
        endpoint.metrics.mqtt_refused(reason);
        tracing::warn!(%peer, client_id = %connect.client_id.chars().take(128).collect::<String>(), "MQTT connection refused: {why}");
        Packet::ConnAck(ConnAck { session_present: false, code })
    };
    let verdict = if connect.protocol != Protocol::V4 {
        Err(refuse(ConnectReturnCode::RefusedProtocolVersion, "protocol", "not MQTT 3.1.1".into()))
    } else {
        match identity::parse_client_id(&connect.client_id) {
            Err(e) => Err(refuse(ConnectReturnCode::BadClientId, "bad_client_id", e.to_string())),
            Ok(who) => {
                let (username, password) =
                    connect.login.as_ref().map(|l| (l.username.as_str(), l.password.as_str())).unwrap_or_default();
                let key = config.server.mqtt_signature_key.trim();
                if identity::password_ok(key, &connect.client_id, username, password) {
                    Ok(who)
                } else {
                    Err(refuse(ConnectReturnCode::BadUserNamePassword, "bad_password", "wrong password".into()))
                }
            }
        }
    };
    let who = match verdict {
        Ok(who) => who,
        Err(connack) => {
            let _ = tokio::time::timeout(super::CLOSE_TIMEOUT, writer.send(connack)).await;
            return;
        }
    };
    let accepted = Packet::ConnAck(ConnAck { session_present: false, code: ConnectReturnCode::Success });
    if !matches!(tokio::time::timeout(connect_timeout, writer.send(accepted)).await, Ok(Ok(()))) {
        return;
    }
    // A newer connection of the same client id closes this one.
    let replaced = CancellationToken::new();
    if let Some((_, older)) = lock(&endpoint.by_client_id).insert(connect.client_id.clone(), (id, replaced.clone())) {
        older.cancel();
    }
    tracing::info!(device = %who.device_id, %peer, "MQTT client connected");

    let (packets, packets_rx) = mpsc::channel::<Queued>(CLIENT_QUEUE);
    let write_timeout = Duration::from_millis(limits.write_timeout_ms.max(1));
    let write_task = tokio::spawn(write_packets(writer, packets_rx, write_timeout));
    // 1.5 × the client's keep-alive: the configured one when it asks for none, and never more than
    // that (at least the firmware's 240 s), so a client cannot hold a slot idle for hours.
    let most = config.mqtt.keepalive.max(240);
    let keepalive = match connect.keep_alive {
        0 => config.mqtt.keepalive.max(1),
        k => k.min(most),
    };
    let silence = Duration::from_millis(u64::from(keepalive) * 1500);
    let udp_host = match config.mqtt.udp_host.trim() {
        "" => local_addr.ip().to_string(),
        host => host.to_owned(),
    };
    let link = DeviceLink::new(Arc::clone(&endpoint), who, Downlink::Direct(packets.clone()), udp_host, local_addr);
    let mut client = Client { link, packets };
    let end = client.run(&mut reader, silence, &replaced).await;
    tracing::info!(device = %client.link.who.device_id, %peer, "MQTT client gone: {end}");
    client.link.end_session(false);
    drop(client);
    let _ = write_task.await;
    let mut clients = lock(&endpoint.by_client_id);
    if clients.get(&connect.client_id).is_some_and(|(owner, _)| *owner == id) {
        clients.remove(&connect.client_id);
    }
    drop(permit);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes the client's packets in order, each within the write timeout.
async fn write_packets(
    mut writer: FramedWrite<tokio::net::tcp::OwnedWriteHalf, Codec>,
    mut packets: mpsc::Receiver<Queued>,
    timeout: Duration,
) {
    while let Some((packet, written)) = packets.recv().await {
        match tokio::time::timeout(timeout, writer.send(packet)).await {
            Ok(Ok(())) => {
                if let Some(written) = written {
                    let _ = written.send(());
                }
            }
            Ok(Err(e)) => {
                tracing::debug!("MQTT write failed: {e}");
                break;
            }
            Err(_) => {
                tracing::warn!("MQTT client took nothing we sent for {timeout:?}; closing it");
                break;
            }
        }
    }
}

/// How our messages reach a device.
#[derive(Clone)]
pub(super) enum Downlink {
    /// Its own connection to the built-in endpoint (the client's packet queue).
    Direct(mpsc::Sender<Queued>),
    /// Through the external broker (fleet mode).
    Broker(rumqttc::AsyncClient),
}

/// Why a message did not go.
#[derive(Debug)]
pub(super) enum Undelivered {
    /// The connection is gone.
    Gone,
    /// Nothing was taken within the write timeout.
    Timeout,
}

impl Downlink {
    /// Publishes `text` on `topic` (QoS 0): on the built-in endpoint it returns once the message
    /// is written to the device's socket, through a broker once the broker client took it; at
    /// most `timeout`.
    async fn send(&self, topic: &str, text: String, timeout: Duration) -> Result<(), Undelivered> {
        let sent = match self {
            // Returns once the message is written to the device's socket.
            Self::Direct(packets) => {
                tokio::time::timeout(timeout, async {
                    let (written, wait) = oneshot::channel();
                    packets.send((publish(topic, text), Some(written))).await.map_err(|_| Undelivered::Gone)?;
                    wait.await.map_err(|_| Undelivered::Gone)
                })
                .await
            }
            Self::Broker(client) => tokio::time::timeout(
                timeout,
                client.publish(topic.to_owned(), rumqttc::QoS::AtMostOnce, false, text.into_bytes()),
            )
            .await
            .map(|sent| sent.map_err(|_| Undelivered::Gone)),
        };
        sent.unwrap_or(Err(Undelivered::Timeout))
    }

    /// Publishes without waiting; false when there is no room.
    fn try_send(&self, topic: &str, text: String) -> bool {
        match self {
            Self::Direct(packets) => packets.try_send((publish(topic, text), None)).is_ok(),
            Self::Broker(client) => {
                client.try_publish(topic.to_owned(), rumqttc::QoS::AtMostOnce, false, text.into_bytes()).is_ok()
            }
        }
    }
}

/// One device on the MQTT transport, whichever way it is connected: its sessions (one per
/// hello), the messages it publishes, and the end of each session.
pub(super) struct DeviceLink {
    endpoint: Arc<Endpoint>,
    pub(super) who: ClientIdentity,
    downlink: Downlink,
    /// The hello's `udp.server`.
    udp_host: String,
    /// The address the session is told it reached (for the vision URL).
    local_addr: SocketAddr,
    session: Option<Live>,
    channel_timeout: Duration,
}

/// One connected MQTT client of the built-in endpoint.
struct Client {
    link: DeviceLink,
    packets: mpsc::Sender<Queued>,
}

/// The client's session under way.
struct Live {
    session_id: Arc<str>,
    events: mpsc::Sender<Event>,
    channel: Arc<udp::Channel>,
    /// When the last MQTT message of the session arrived.
    last_message: Instant,
}

impl Client {
    /// Serves the client until its connection ends; returns why.
    async fn run(&mut self, reader: &mut Reader, silence: Duration, replaced: &CancellationToken) -> String {
        let mut deadline = tokio::time::Instant::now() + silence;
        let mut idle_check = tokio::time::interval(IDLE_CHECK);
        loop {
            let packet = tokio::select! {
                biased;
                _ = self.link.endpoint.shutdown.cancelled() => {
                    self.link.end_session(true);
                    return "the server stops".into();
                }
                _ = replaced.cancelled() => return "a newer connection of the client id".into(),
                _ = self.packets.closed() => return "writing to it failed".into(),
                _ = tokio::time::sleep_until(deadline) => {
                    return format!("silent for {silence:?} (1.5 x its keep-alive)");
                }
                _ = idle_check.tick() => {
                    self.link.check_idle();
                    continue;
                }
                packet = reader.next() => packet,
            };
            let packet = match packet {
                None => return "the connection closed".into(),
                Some(Err(e)) => return format!("a bad packet: {e}"),
                Some(Ok(packet)) => packet,
            };
            deadline = tokio::time::Instant::now() + silence;
            let reply = match packet {
                Packet::Publish(publish) => match publish.qos {
                    QoS::ExactlyOnce => return "a QoS 2 publish (only 0 and 1 are served)".into(),
                    qos => {
                        self.link.on_message(&publish.payload);
                        (qos == QoS::AtLeastOnce).then(|| Packet::PubAck(PubAck::new(publish.pkid)))
                    }
                },
                Packet::Subscribe(subscribe) => {
                    // Granted at QoS 0: everything we push is QoS 0.
                    let codes =
                        subscribe.filters.iter().map(|_| SubscribeReasonCode::Success(QoS::AtMostOnce)).collect();
                    Some(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
                }
                Packet::Unsubscribe(unsubscribe) => Some(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid))),
                Packet::PingReq => Some(Packet::PingResp),
                Packet::Disconnect => return "it disconnected".into(),
                Packet::PubAck(_) => None,
                other => return format!("an unexpected {} packet", packet_name(&other)),
            };
            if let Some(reply) = reply
                && self.packets.try_send((reply, None)).is_err()
            {
                return "it is not reading".into();
            }
        }
    }
}

impl DeviceLink {
    pub(super) fn new(
        endpoint: Arc<Endpoint>,
        who: ClientIdentity,
        downlink: Downlink,
        udp_host: String,
        local_addr: SocketAddr,
    ) -> Self {
        let channel_timeout = Duration::from_secs(endpoint.config.borrow().limits.udp_channel_timeout.max(1));
        Self { endpoint, who, downlink, udp_host, local_addr, session: None, channel_timeout }
    }

    /// Whether a session is under way.
    pub(super) fn in_session(&self) -> bool {
        self.session.as_ref().is_some_and(|live| !live.events.is_closed())
    }

    /// One JSON message from the device.
    pub(super) fn on_message(&mut self, payload: &Bytes) {
        let Ok(text) = std::str::from_utf8(payload) else {
            tracing::debug!(device = %self.who.device_id, "MQTT: a message that is not UTF-8");
            return;
        };
        match parse_inbound(text) {
            Ok(Inbound::Hello(hello)) => self.start_session(hello),
            Ok(Inbound::Goodbye) => {
                // The device closed its channel: the session ends without our goodbye.
                self.forward(Event::Message(Inbound::Goodbye));
                self.session = None;
            }
            Ok(message) => self.forward(Event::Message(message)),
            Err(e) => self.forward(Event::BadMessage(e)),
        }
    }

    fn forward(&mut self, event: Event) {
        let Some(live) = &mut self.session else {
            tracing::debug!(device = %self.who.device_id, "MQTT: a message outside a session is ignored");
            return;
        };
        live.last_message = Instant::now();
        match live.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(device = %self.who.device_id, "the session is not keeping up; a message is lost");
            }
            // The session ended on our side (it said goodbye).
            Err(mpsc::error::TrySendError::Closed(_)) => self.session = None,
        }
    }

    /// A hello: a new session (the one under way, if any, ends).
    fn start_session(&mut self, hello: ClientHello) {
        self.end_session(false);
        let config = Arc::clone(&self.endpoint.config.borrow());
        let frame_ms = hello
            .audio_params
            .as_ref()
            .and_then(|a| a.frame_duration)
            .filter(|ms| (10..=120).contains(ms))
            .unwrap_or(60);
        let (events, events_rx) = mpsc::channel(SESSION_QUEUE);
        let channel = Arc::new(self.endpoint.udp.open(frame_ms, &events));
        let (key, nonce) = channel.keys().hex();
        let server = self.udp_host.clone();
        let port = self.endpoint.udp.local_addr().map(|a| a.port()).unwrap_or(config.mqtt.udp_port);
        let udp = UdpParams { server, port, encryption: "aes-128-ctr".into(), key, nonce };
        let session_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        let version = Arc::new(AtomicU8::new(ProtocolVersion::V3.number() as u8));
        let (outbox, writer) = Outbox::new(
            Arc::clone(&session_id),
            Arc::clone(&version),
            Transport::Udp(udp),
            &config.limits,
            Arc::clone(&self.endpoint.metrics),
        );
        tokio::spawn(write_session(writer, self.downlink.clone(), self.who.device_topic(), Arc::clone(&channel)));
        let connection = Connection {
            inner: super::Reader::Channel(events_rx),
            session_id: Arc::clone(&session_id),
            version,
            header_version: Some(3),
            gateway: false,
        };
        // The hello is the session's first event, as over WebSocket.
        let _ = events.try_send(Event::Message(Inbound::Hello(hello)));
        self.session = Some(Live { session_id, events, channel, last_message: Instant::now() });
        (self.endpoint.start)(NewSession {
            identity: self.who.clone(),
            connection,
            outbox,
            local_addr: self.local_addr,
        });
    }

    /// Ends the session under way, if any: its connection reads the end; with `goodbye`, the
    /// device is told.
    pub(super) fn end_session(&mut self, goodbye: bool) {
        let Some(live) = self.session.take() else { return };
        if goodbye {
            let _ = self.downlink.try_send(&self.who.device_topic(), goodbye_json(&live.session_id));
        }
    }

    /// Ends a session whose channel has been idle for the channel timeout, saying goodbye.
    pub(super) fn check_idle(&mut self) {
        let Some(live) = &self.session else { return };
        if live.events.is_closed() {
            // The session ended on our side (and said goodbye).
            self.session = None;
            return;
        }
        let since_message = live.last_message.elapsed();
        let idle = live.channel.idle_for().map_or(since_message, |udp| udp.min(since_message));
        if idle >= self.channel_timeout {
            tracing::info!(device = %self.who.device_id, "the audio channel has been idle for {idle:?}; the session ends");
            self.end_session(true);
        }
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::SubAck(_) => "SUBACK",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingResp => "PINGRESP",
        _ => "other",
    }
}

/// A QoS 0 publish of `text` on `topic`.
fn publish(topic: &str, text: String) -> Packet {
    Packet::Publish(Publish::new(topic, QoS::AtMostOnce, text.into_bytes()))
}

fn goodbye_json(session_id: &str) -> String {
    ServerMessage::Goodbye { session_id: session_id.to_owned() }.to_json()
}

/// The writer of one session: JSON as MQTT publishes on the device's topic, audio as UDP
/// datagrams, and a goodbye when we close. Ends when the session is over, and says so.
async fn write_session(mut side: WriterSide, downlink: Downlink, topic: String, channel: Arc<udp::Channel>) {
    let shared = Arc::clone(&side.shared);
    let mut unaddressed = false;
    let mut published: Option<Instant> = None;
    loop {
        let Some(queued) = side.next().await else { break };
        let text = match queued.item {
            Item::Close(_) => {
                let _ = downlink.send(&topic, goodbye_json(&shared.session_id), super::CLOSE_TIMEOUT).await;
                break;
            }
            Item::Text(text) => text,
            Item::Audio { turn, .. } if turn.is_cancelled() => continue,
            Item::Audio { opus, timestamp, .. } => {
                if let (Downlink::Broker(_), Some(at)) = (&downlink, published.take()) {
                    tokio::time::sleep(BROKER_SETTLE.saturating_sub(at.elapsed())).await;
                }
                match channel.send(&opus, timestamp).await {
                    Ok(()) => {}
                    Err(udp::SendError::NoAddress) => {
                        if !unaddressed {
                            tracing::debug!("audio for a device that has sent no UDP datagram yet is dropped");
                            unaddressed = true;
                        }
                    }
                    Err(e) => tracing::debug!("{e}"),
                }
                continue;
            }
        };
        match downlink.send(&topic, text, shared.write_timeout).await {
            Ok(()) => published = Some(Instant::now()),
            Err(Undelivered::Gone) => break,
            Err(Undelivered::Timeout) => {
                let waited = shared.write_timeout;
                shared.drop_device("not_reading", &format!("the device took nothing we sent for {waited:?}"));
                break;
            }
        }
    }
    shared.gone.cancel();
}
