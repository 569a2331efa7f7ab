//! The UDP audio socket of the MQTT transport: one socket per server instance, one channel per
//! session (device-protocol.md §3.2).
//!
//! Each session gets a random AES-128 key and a random stream id (ssrc) in its nonce; datagrams are
//! routed by ssrc. A channel learns the device's address from its first valid datagram (the device
//! may sit behind NAT); a valid-looking datagram from any other address is dropped afterwards, and
//! downlink audio waits for that first datagram (as in the Node gateway). Every drop is counted in
//! `xiaozhi_udp_dropped_total{reason}`. Opening and sealing are the pure [`crate::protocol::udp`]
//! codec; this shell only moves datagrams.
//!
//! Bounded: one map entry per live session (removed when its [`Channel`] is dropped), and audio
//! for a session goes through that session's bounded event queue (a full queue drops the packet,
//! as a lost datagram).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Event;
use crate::metrics::Metrics;
use crate::protocol::udp::{HEADER_LEN, Header, Opener, Sealer, SessionKeys};

/// Largest datagram read (a 60 ms Opus packet is a few hundred bytes).
const MAX_DATAGRAM: usize = 2048;

/// The instance's UDP socket and the channels of its sessions.
pub struct UdpEndpoint {
    socket: Arc<UdpSocket>,
    channels: Mutex<HashMap<u32, Arc<ChannelState>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for UdpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpEndpoint").field("addr", &self.socket.local_addr().ok()).finish_non_exhaustive()
    }
}

/// One session's side of the socket.
struct ChannelState {
    keys: SessionKeys,
    /// The uplink frame duration the device announced (packets of another duration are not its
    /// audio).
    frame_ms: u32,
    /// The session's events; weak, so that the session's end is not held up by its channel.
    events: mpsc::WeakSender<Event>,
    inner: Mutex<ChannelInner>,
}

struct ChannelInner {
    opener: Opener,
    sealer: Sealer,
    /// The device's address, from its first valid datagram.
    peer: Option<SocketAddr>,
    /// When the last valid datagram arrived.
    last_valid: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl UdpEndpoint {
    /// Binds the socket and starts reading it until `shutdown`.
    pub async fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let endpoint = Arc::new(Self { socket, channels: Mutex::default(), metrics });
        let reader = Arc::clone(&endpoint);
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = reader.read_loop() => {}
            }
        });
        Ok(endpoint)
    }

    /// The address the socket bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Opens a channel for a new session whose device sends `frame_ms` packets: a random key and
    /// an ssrc no other live session has. Audio that arrives goes to `events` while the session
    /// holds it.
    pub fn open(self: &Arc<Self>, frame_ms: u32, events: &mpsc::Sender<Event>) -> Channel {
        let mut channels = lock(&self.channels);
        let ssrc = loop {
            let ssrc: u32 = rand::random();
            if ssrc != 0 && !channels.contains_key(&ssrc) {
                break ssrc;
            }
        };
        let keys = SessionKeys::new(rand::random(), ssrc);
        let state = Arc::new(ChannelState {
            keys: keys.clone(),
            frame_ms,
            events: events.downgrade(),
            inner: Mutex::new(ChannelInner {
                opener: Opener::new(keys.clone()),
                sealer: Sealer::new(keys),
                peer: None,
                last_valid: None,
            }),
        });
        channels.insert(ssrc, Arc::clone(&state));
        Channel { endpoint: Arc::clone(self), state }
    }

    async fn read_loop(&self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (len, from) = match self.socket.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on some systems: not fatal.
                    tracing::debug!("UDP receive failed: {e}");
                    continue;
                }
            };
            self.on_datagram(buf.get(..len).unwrap_or_default(), from);
        }
    }

    /// Routes and opens one datagram; every drop is counted.
    fn on_datagram(&self, datagram: &[u8], from: SocketAddr) {
        let Some(head) = datagram.first_chunk::<HEADER_LEN>() else {
            self.metrics.udp_dropped("short");
            return;
        };
        let ssrc = Header::from_bytes(head).ssrc;
        let Some(channel) = lock(&self.channels).get(&ssrc).cloned() else {
            self.metrics.udp_dropped("unknown_ssrc");
            return;
        };
        let opened = {
            let mut inner = lock(&channel.inner);
            if inner.peer.is_some_and(|peer| peer != from) {
                drop(inner);
                self.metrics.udp_dropped("other_address");
                return;
            }
            let frame_ms = channel.frame_ms;
            match inner.opener.open(datagram, |opus| crate::audio::opus::is_uplink_packet(opus, frame_ms)) {
                Ok(opened) => {
                    if inner.peer.is_none() {
                        tracing::debug!(ssrc, %from, "UDP audio channel: the device's address learnt");
                        inner.peer = Some(from);
                    }
                    inner.last_valid = Some(Instant::now());
                    opened
                }
                Err(dropped) => {
                    drop(inner);
                    tracing::debug!(ssrc, %from, "UDP datagram dropped: {dropped}");
                    self.metrics.udp_dropped(dropped.reason());
                    return;
                }
            }
        };
        let event = Event::Audio { opus: Bytes::from(opened.payload), timestamp: opened.header.timestamp };
        match channel.events.upgrade() {
            Some(events) if events.try_send(event).is_ok() => {}
            Some(_) => self.metrics.udp_dropped("session_busy"),
            None => self.metrics.udp_dropped("unknown_ssrc"),
        }
    }
}

/// A session's audio channel; dropping it closes the channel (later datagrams of its ssrc are
/// dropped as unknown).
pub struct Channel {
    endpoint: Arc<UdpEndpoint>,
    state: Arc<ChannelState>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("ssrc", &self.state.keys.ssrc()).finish_non_exhaustive()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        lock(&self.endpoint.channels).remove(&self.state.keys.ssrc());
    }
}

/// Why a packet was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No valid datagram from the device yet: its address is unknown.
    #[error("the device has sent no audio yet, so its address is unknown")]
    NoAddress,
    /// The socket refused it.
    #[error("UDP send failed: {0}")]
    Io(#[from] std::io::Error),
}

impl Channel {
    /// The session's key and nonce (for the hello).
    pub fn keys(&self) -> &SessionKeys {
        &self.state.keys
    }

    /// How long ago the last valid datagram arrived (`None`: none yet).
    pub fn idle_for(&self) -> Option<Duration> {
        lock(&self.state.inner).last_valid.map(|at| at.elapsed())
    }

    /// Seals and sends one Opus packet at `timestamp` (ms) to the device's address.
    pub async fn send(&self, opus: &[u8], timestamp: u32) -> Result<(), SendError> {
        let (datagram, peer) = {
            let mut inner = lock(&self.state.inner);
            let Some(peer) = inner.peer else { return Err(SendError::NoAddress) };
            let Some(datagram) = inner.sealer.seal(opus, timestamp) else { return Ok(()) };
            (datagram, peer)
        };
        self.endpoint.socket.send_to(&datagram, peer).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silence_packet() -> Vec<u8> {
        let mut encoder = crate::audio::opus::OpusEncoder::new(16_000, 60, 24_000, 0).expect("encoder");
        let mut out = vec![0u8; 1500];
        let n = encoder.encode(&[0i16; 960], &mut out).expect("encodes");
        out.truncate(n);
        out
    }

    #[tokio::test]
    async fn audio_is_routed_by_ssrc_from_the_learnt_address_and_everything_else_is_counted() {
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let endpoint = UdpEndpoint::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&metrics), shutdown.clone())
            .await
            .expect("binds");
        let server = endpoint.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let channel = endpoint.open(60, &tx);
        let device = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut sealer = Sealer::new(channel.keys().clone());
        let opus = silence_packet();

        assert!(matches!(channel.send(&opus, 0).await, Err(SendError::NoAddress)), "no address before uplink");
        let first = sealer.seal(&opus, 60).unwrap();
        device.send_to(&first, server).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap();
        assert_eq!(event, Event::Audio { opus: Bytes::from(opus.clone()), timestamp: 60 });

        // A valid packet from another address, a replay, a wrong key, an unknown ssrc.
        let second = sealer.seal(&opus, 120).unwrap();
        stranger.send_to(&second, server).await.unwrap();
        device.send_to(&first, server).await.unwrap();
        let mut forger = Sealer::new(SessionKeys::new([9; 16], channel.keys().ssrc()));
        for _ in 0..3 {
            let _ = forger.seal(&opus, 0);
        }
        device.send_to(&forger.seal(&opus, 0).unwrap(), server).await.unwrap();
        let mut other = Sealer::new(SessionKeys::new([1; 16], channel.keys().ssrc().wrapping_add(1)));
        device.send_to(&other.seal(&opus, 0).unwrap(), server).await.unwrap();
        device.send_to(&second, server).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap();
        assert_eq!(event, Event::Audio { opus: Bytes::from(opus.clone()), timestamp: 120 }, "the device's own");
        let text = metrics.render();
        for reason in ["other_address", "replayed", "not_audio", "unknown_ssrc"] {
            assert!(text.contains(&format!("xiaozhi_udp_dropped_total{{reason=\"{reason}\"}} 1")), "{reason}: {text}");
        }

        // Downlink: sealed for the device at its address, sequence from 1.
        channel.send(&opus, 180).await.unwrap();
        let mut buf = [0u8; 2048];
        let (len, from) = device.recv_from(&mut buf).await.unwrap();
        assert_eq!(from, server);
        let mut opener = Opener::new(channel.keys().clone());
        let opened = opener.open(&buf[..len], |_| true).expect("opens");
        assert_eq!((opened.payload, opened.header.sequence, opened.header.timestamp), (opus.clone(), 1, 180));

        // A closed channel's datagrams are unknown.
        let ssrc = channel.keys().ssrc();
        drop(channel);
        assert!(!lock(&endpoint.channels).contains_key(&ssrc));
        shutdown.cancel();
    }
}
