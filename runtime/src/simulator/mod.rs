//! A device simulator that speaks the firmware's protocol (device-protocol.md §1–§4, §7): the
//! WebSocket handshake with the firmware's headers, or MQTT + encrypted UDP ([`mqtt`]); the
//! firmware hello and the checks it makes on the server hello, the `listen`/`abort` messages,
//! real-time 60 ms Opus uplink in binary protocol v1/v2/v3 (or UDP datagrams), the device side of
//! MCP, and the Speaking rule for downlink audio.
//!
//! [`SimDevice`] is used by the `simulate` subcommand ([`cli`]) and by the end-to-end tests. One
//! reader task owns the socket's read half: it decodes binary frames, answers the server's MCP
//! requests itself (as the firmware does, while the test streams audio) and forwards every event
//! with its arrival time. One writer task owns the write half, fed by a channel.

pub mod bench;
pub mod cli;
pub mod mcp;
pub mod mqtt;
pub mod reply;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use cli::{SimMode, SimulateArgs, run};
pub use mcp::DeviceState;
pub use reply::Reply;

use crate::audio::{UPLINK_FRAME_MS, UPLINK_FRAME_SAMPLES, UPLINK_SAMPLE_RATE};
use crate::protocol::frame::{self, ProtocolVersion};
use crate::protocol::message::ListenMode;

/// The firmware's WebSocket handshake timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the firmware waits for the server hello after sending its own.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The downlink sample rate the firmware assumes when the server hello gives none.
pub const DEFAULT_DOWNLINK_RATE: u32 = 24_000;

/// The downlink frame duration the firmware assumes when the server hello gives none.
pub const DEFAULT_DOWNLINK_FRAME_MS: u32 = 60;

/// The MAC address [`SimConfig::default`] uses as `Device-Id`.
pub const DEFAULT_DEVICE_ID: &str = "02:00:5e:10:00:01";

/// The UUID [`SimConfig::default`] uses as `Client-Id`.
pub const DEFAULT_CLIENT_ID: &str = "5f0c6a1e-7b2d-4c8e-9a41-3d2b6f9e0c17";

/// How a simulated device connects and what it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The WebSocket URL, e.g. `ws://127.0.0.1:8000/xiaozhi/v1/` (only `ws://`).
    pub url: String,
    /// `Device-Id`: a lowercase MAC address `aa:bb:cc:dd:ee:ff`.
    pub device_id: String,
    /// `Client-Id`: a lowercase UUIDv4.
    pub client_id: String,
    /// The access token; sent as `Authorization: Bearer <token>` (verbatim when it contains a
    /// space), and not at all when `None` or empty.
    pub token: Option<String>,
    /// The binary protocol version (1, 2 or 3): the `Protocol-Version` header and `hello.version`.
    pub protocol_version: u32,
    /// Whether the device runs an MCP server (`features.mcp`, and answering MCP requests). Without
    /// it the hello has no `features`, like firmware older than 1.6.6.
    pub mcp: bool,
    /// Whether the hello carries `audio_params` (`false` = a lenient browser-style hello).
    pub hello_audio_params: bool,
    /// MCP requests left unanswered, from the first (`usize::MAX`: a device whose MCP server never
    /// answers, though its hello says `features.mcp`). 0 = answer all, as the firmware does.
    pub mcp_ignore_requests: usize,
    /// How long each MCP answer takes (a slow device). Zero = at once, as the firmware does.
    pub mcp_reply_delay: Duration,
    /// The camera's photo (a JPEG): with one, the device lists `self.camera.take_photo`, and a
    /// call of it posts this photo and the call's `question` to the vision URL of `initialize`,
    /// answering with the response body, as the firmware does.
    pub camera: Option<Arc<Vec<u8>>>,
    /// WebSocket (`url`), or MQTT + UDP with the OTA block's settings.
    pub transport: SimTransport,
}

/// How a simulated device reaches the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SimTransport {
    /// The WebSocket at [`SimConfig::url`].
    #[default]
    WebSocket,
    /// MQTT for the JSON, UDP for the audio.
    Mqtt(mqtt::MqttSettings),
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            url: "ws://127.0.0.1:8000/xiaozhi/v1/".into(),
            device_id: DEFAULT_DEVICE_ID.into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            token: None,
            protocol_version: 1,
            mcp: true,
            hello_audio_params: true,
            mcp_ignore_requests: 0,
            mcp_reply_delay: Duration::ZERO,
            camera: None,
            transport: SimTransport::WebSocket,
        }
    }
}

/// Something the device received.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    /// A text message that parsed as JSON (every one is forwarded, `mcp` requests included).
    Json(Value),
    /// A binary frame, decoded per the protocol version: the Opus packet and the v2 timestamp (0
    /// in v1 and v3).
    Audio {
        /// The Opus packet.
        opus: Vec<u8>,
        /// The frame's timestamp.
        timestamp: u32,
    },
    /// The connection ended: `Some("<code> <reason>")` when the server sent a Close frame, `None`
    /// when the connection dropped without one. No event follows.
    Closed(Option<String>),
}

/// What the server hello told the device (§1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerHello {
    session_id: String,
    sample_rate: u32,
    frame_duration: u32,
}

/// Checks a server hello the way `WebsocketProtocol::ParseServerHello` does: `type` must be
/// `hello` and `transport` a string (without it the firmware dereferences a null pointer).
fn parse_server_hello(v: &Value) -> anyhow::Result<ServerHello> {
    if v.get("type").and_then(Value::as_str) != Some("hello") {
        bail!("not a hello: {v}");
    }
    if !v.get("transport").is_some_and(Value::is_string) {
        bail!("the server hello has no string \"transport\" (real firmware crashes on this): {v}");
    }
    let session_id = v.get("session_id").and_then(Value::as_str).unwrap_or("").to_string();
    let number = |key: &str| {
        v.get("audio_params")
            .and_then(|a| a.get(key))
            .and_then(Value::as_f64)
            .filter(|n| *n >= 1.0)
            .map(|n| n.min(f64::from(u32::MAX)) as u32)
    };
    Ok(ServerHello {
        session_id,
        sample_rate: number("sample_rate").unwrap_or(DEFAULT_DOWNLINK_RATE),
        frame_duration: number("frame_duration").unwrap_or(DEFAULT_DOWNLINK_FRAME_MS),
    })
}

/// The firmware hello (§1.2, §3.1), with the keys in the firmware's order.
fn client_hello(cfg: &SimConfig) -> String {
    let (version, transport) = match cfg.transport {
        SimTransport::WebSocket => (cfg.protocol_version, "websocket"),
        SimTransport::Mqtt(_) => (3, "udp"),
    };
    let mut s = format!(r#"{{"type":"hello","version":{version}"#);
    if cfg.mcp {
        s.push_str(r#","features":{"mcp":true}"#);
    }
    s.push_str(&format!(r#","transport":"{transport}""#));
    if cfg.hello_audio_params {
        s.push_str(r#","audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}"#);
    }
    s.push('}');
    s
}

/// A JSON string literal (the firmware concatenates unescaped text; escaping keeps the JSON valid
/// and is byte-identical for ordinary text).
fn quote(s: &str) -> String {
    Value::from(s).to_string()
}

fn mode_name(mode: ListenMode) -> &'static str {
    match mode {
        ListenMode::Auto => "auto",
        ListenMode::Manual => "manual",
        ListenMode::Realtime => "realtime",
    }
}

/// State shared by the device handle and its reader task.
#[derive(Debug)]
struct Shared {
    session_id: String,
    downlink_rate: u32,
    downlink_frame_ms: u32,
    mcp: DeviceState,
    /// MCP requests received so far (answered or not).
    mcp_requests: usize,
    protocol_errors: Vec<String>,
}

impl Shared {
    /// The state after the server hello.
    fn new(hello: ServerHello, cfg: &SimConfig, protocol_errors: Vec<String>) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            session_id: hello.session_id,
            downlink_rate: hello.sample_rate,
            downlink_frame_ms: hello.frame_duration,
            mcp: DeviceState { camera: cfg.camera.is_some(), ..DeviceState::default() },
            mcp_requests: 0,
            protocol_errors,
        }))
    }
}

/// How the simulated device's MCP server answers (from [`SimConfig`]).
#[derive(Debug, Clone)]
struct McpBehaviour {
    enabled: bool,
    ignore: usize,
    delay: Duration,
    /// The photo, and the `Device-Id` and `Client-Id` it is posted with.
    camera: Option<(Arc<Vec<u8>>, String, String)>,
}

impl McpBehaviour {
    fn of(cfg: &SimConfig) -> Self {
        Self {
            enabled: cfg.mcp,
            ignore: cfg.mcp_ignore_requests,
            delay: cfg.mcp_reply_delay,
            camera: cfg.camera.clone().map(|photo| (photo, cfg.device_id.clone(), cfg.client_id.clone())),
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the writer task is asked to do.
enum Outgoing {
    Send(Message),
    /// One uplink Opus packet (framed per the protocol version, or sealed into a datagram).
    Audio {
        opus: Vec<u8>,
        timestamp: u32,
    },
    /// Flush and stop (the caller then drops the socket without a Close frame).
    Shutdown,
}

/// The firmware's uplink Opus encoder: 16 kHz mono, 60 ms, `APPLICATION_AUDIO`, complexity 0,
/// VBR, automatic bitrate and **DTX on**, so silence becomes 1–3-byte packets as on a real device
/// (`AS_OPUS_ENC_CONFIG` in `audio_service.h`).
struct UplinkEncoder {
    encoder: audiopus::coder::Encoder,
}

impl UplinkEncoder {
    fn new() -> anyhow::Result<Self> {
        use audiopus::{Application, Bitrate, Channels, SampleRate};
        let mut encoder = audiopus::coder::Encoder::new(SampleRate::Hz16000, Channels::Mono, Application::Audio)?;
        encoder.set_complexity(0)?;
        encoder.set_vbr(true)?;
        encoder.set_bitrate(Bitrate::Auto)?;
        encoder.set_dtx(true)?;
        Ok(Self { encoder })
    }

    /// Encodes `pcm` as consecutive 60 ms packets, zero-padding the last frame.
    fn encode_all(&mut self, pcm: &[i16]) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut frame = [0i16; UPLINK_FRAME_SAMPLES];
        let mut out = vec![0u8; crate::audio::opus::MAX_PACKET];
        let mut packets = Vec::with_capacity(pcm.len().div_ceil(UPLINK_FRAME_SAMPLES));
        for chunk in pcm.chunks(UPLINK_FRAME_SAMPLES) {
            frame.fill(0);
            for (dst, src) in frame.iter_mut().zip(chunk) {
                *dst = *src;
            }
            let n = self.encoder.encode(&frame, &mut out).context("Opus encoding of the uplink failed")?;
            packets.push(out.get(..n).unwrap_or_default().to_vec());
        }
        Ok(packets)
    }
}

/// A connected simulated device. Dropping it drops the connection without a Close frame.
pub struct SimDevice {
    cfg: SimConfig,
    version: ProtocolVersion,
    server_hello: Value,
    connected_at: Instant,
    out: mpsc::UnboundedSender<Outgoing>,
    events: mpsc::UnboundedReceiver<(Instant, SimEvent)>,
    pending: VecDeque<(Instant, SimEvent)>,
    shared: Arc<Mutex<Shared>>,
    encoder: Mutex<UplinkEncoder>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// Over MQTT: the audio channel.
    udp: Option<Arc<mqtt::Audio>>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("url", &self.cfg.url)
            .field("device_id", &self.cfg.device_id)
            .field("version", &self.version)
            .field("session_id", &self.session_id())
            .finish_non_exhaustive()
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl SimDevice {
    /// Connects like the firmware: the upgrade with `Authorization`/`Client-Id`/`Device-Id`/
    /// `Protocol-Version` (10 s timeout), the firmware hello, then up to 10 s for a server hello
    /// with `type:"hello"` and a string `transport`. A refused upgrade is an error naming the HTTP
    /// status. Messages that arrive before the hello are kept as events.
    pub async fn connect(cfg: SimConfig) -> anyhow::Result<SimDevice> {
        if let SimTransport::Mqtt(settings) = &cfg.transport {
            let settings = settings.clone();
            return Self::connect_mqtt(cfg, &settings).await;
        }
        let version = ProtocolVersion::from_number(cfg.protocol_version)
            .ok_or_else(|| anyhow!("protocol version {} is not 1, 2 or 3", cfg.protocol_version))?;
        let mut request =
            cfg.url.as_str().into_client_request().with_context(|| format!("bad WebSocket URL {:?}", cfg.url))?;
        {
            let headers = request.headers_mut();
            if let Some(token) = cfg.token.as_deref().filter(|t| !t.is_empty()) {
                let value = if token.contains(' ') { token.to_string() } else { format!("Bearer {token}") };
                headers.insert("Authorization", HeaderValue::from_str(&value).context("token is not a valid header")?);
            }
            let header = |v: &str, what: &str| HeaderValue::from_str(v).with_context(|| format!("bad {what} {v:?}"));
            headers.insert("Client-Id", header(&cfg.client_id, "client id")?);
            headers.insert("Device-Id", header(&cfg.device_id, "device id")?);
            headers.insert("Protocol-Version", HeaderValue::from(cfg.protocol_version));
        }
        let (mut ws, _response) = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(request, None, true),
        )
        .await
        {
            Err(_) => bail!("WebSocket handshake with {} timed out after {HANDSHAKE_TIMEOUT:?}", cfg.url),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                bail!("server refused the WebSocket upgrade: HTTP {} {}", response.status(), body.trim());
            }
            Ok(Err(e)) => return Err(anyhow!(e).context(format!("WebSocket connection to {} failed", cfg.url))),
            Ok(Ok(pair)) => pair,
        };
        let connected_at = Instant::now();
        ws.send(Message::text(client_hello(&cfg))).await.context("sending the hello failed")?;

        let (events_tx, events) = mpsc::unbounded_channel();
        let mut protocol_errors = Vec::new();
        let (server_hello, hello) = wait_for_hello(&mut ws, version, &events_tx, &mut protocol_errors).await?;
        let shared = Shared::new(hello, &cfg, protocol_errors);
        let (sink, stream) = ws.split();
        let (out, out_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(sink, version, out_rx));
        let behaviour = McpBehaviour::of(&cfg);
        let reader = tokio::spawn(read_loop(stream, version, behaviour, Arc::clone(&shared), events_tx, out.clone()));
        let encoder = Mutex::new(UplinkEncoder::new()?);
        Ok(SimDevice {
            cfg,
            version,
            server_hello,
            connected_at,
            out,
            events,
            pending: VecDeque::new(),
            shared,
            encoder,
            reader,
            writer,
            udp: None,
        })
    }

    /// Connects over MQTT + UDP ([`mqtt`]): CONNECT with the OTA block's credentials, the hello
    /// (version 3, `transport: udp`), up to 10 s for the server hello with its `udp` object, then
    /// one frame of silence so the server learns the device's UDP address.
    async fn connect_mqtt(cfg: SimConfig, settings: &mqtt::MqttSettings) -> anyhow::Result<SimDevice> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut protocol_errors = Vec::new();
        let connected = mqtt::connect(settings, client_hello(&cfg), &events_tx, &mut protocol_errors).await?;
        let connected_at = Instant::now();
        let hello = connected.parsed;
        let shared = Shared::new(hello, &cfg, protocol_errors);
        let audio = connected.audio;
        let (out, out_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(mqtt::write_loop(
            connected.client,
            settings.publish_topic.clone(),
            Arc::clone(&audio),
            out_rx,
        ));
        let behaviour = McpBehaviour::of(&cfg);
        let reader = tokio::spawn(mqtt::read_loop(
            connected.eventloop,
            Arc::clone(&audio),
            behaviour,
            Arc::clone(&shared),
            events_tx,
            out.clone(),
        ));
        let device = SimDevice {
            cfg,
            version: ProtocolVersion::V3,
            server_hello: connected.hello,
            connected_at,
            out,
            events,
            pending: VecDeque::new(),
            shared,
            encoder: Mutex::new(UplinkEncoder::new()?),
            reader,
            writer,
            udp: Some(audio),
        };
        device.stream_silence(Duration::from_millis(u64::from(UPLINK_FRAME_MS))).await?;
        Ok(device)
    }

    /// Over MQTT: the session's UDP key and nonce, and the server's UDP address (tests forge
    /// datagrams with them).
    pub fn udp_channel(&self) -> Option<(crate::protocol::udp::SessionKeys, std::net::SocketAddr)> {
        let audio = self.udp.as_ref()?;
        Some((audio.keys.clone(), audio.server_addr().ok()?))
    }

    /// `{"session_id":S,"type":"goodbye"}`: the device closes its audio channel (MQTT).
    pub async fn goodbye(&self) -> anyhow::Result<()> {
        self.send_text_raw(format!(r#"{{"session_id":{},"type":"goodbye"}}"#, quote(&self.session_id()))).await
    }

    /// The configuration this device connected with.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The binary protocol version in use (1, 2 or 3).
    pub fn protocol_version(&self) -> u32 {
        self.version.number()
    }

    /// The server hello exactly as received.
    pub fn server_hello(&self) -> &Value {
        &self.server_hello
    }

    /// The session id from the latest server hello (`""` when it had none).
    pub fn session_id(&self) -> String {
        lock(&self.shared).session_id.clone()
    }

    /// The downlink Opus sample rate from the latest server hello (24000 when absent).
    pub fn downlink_sample_rate(&self) -> u32 {
        lock(&self.shared).downlink_rate
    }

    /// The downlink frame duration in ms from the latest server hello (60 when absent).
    pub fn downlink_frame_ms(&self) -> u32 {
        lock(&self.shared).downlink_frame_ms
    }

    /// Every `tools/call` the server made, in order: (tool name, arguments).
    pub fn mcp_calls(&self) -> Vec<(String, Value)> {
        lock(&self.shared).mcp.calls.clone()
    }

    /// The simulated speaker volume (starts at 70; `self.audio_speaker.set_volume` changes it).
    pub fn volume(&self) -> u8 {
        lock(&self.shared).mcp.volume
    }

    /// The full simulated MCP state (volume, brightness, calls, vision URL).
    pub fn mcp_state(&self) -> DeviceState {
        lock(&self.shared).mcp.clone()
    }

    /// Does what the firmware's `self.camera.take_photo` does after capturing: POSTs `question`
    /// and the JPEG `photo` to the vision URL and token the server gave in MCP `initialize`
    /// ([`post_photo`]). An error when no vision URL was given.
    pub async fn take_photo(&self, question: &str, photo: &[u8]) -> anyhow::Result<(u16, String)> {
        let (url, token) = self.mcp_state().vision.context("the server announced no capabilities.vision")?;
        post_photo(&url, token.as_deref(), &self.cfg.device_id, &self.cfg.client_id, question, photo).await
    }

    /// Server messages the firmware would have rejected: text that is not a JSON object with a
    /// string `type`, and binary frames that do not decode in the negotiated version.
    pub fn protocol_errors(&self) -> Vec<String> {
        lock(&self.shared).protocol_errors.clone()
    }

    fn enqueue(&self, msg: Message) -> anyhow::Result<()> {
        self.out.send(Outgoing::Send(msg)).map_err(|_| anyhow!("the connection is closed"))
    }

    /// Sends a JSON value as a text message.
    pub async fn send_json(&self, v: Value) -> anyhow::Result<()> {
        self.enqueue(Message::text(v.to_string()))
    }

    /// Sends any text (malformed input included).
    pub async fn send_text_raw(&self, s: String) -> anyhow::Result<()> {
        self.enqueue(Message::text(s))
    }

    /// Sends any bytes as a binary message (malformed frames included).
    pub async fn send_binary_raw(&self, b: Vec<u8>) -> anyhow::Result<()> {
        self.enqueue(Message::binary(b))
    }

    /// `{"session_id":S,"type":"listen","state":"start","mode":M}`.
    pub async fn listen_start(&self, mode: ListenMode) -> anyhow::Result<()> {
        let s = format!(
            r#"{{"session_id":{},"type":"listen","state":"start","mode":"{}"}}"#,
            quote(&self.session_id()),
            mode_name(mode)
        );
        self.send_text_raw(s).await
    }

    /// `{"session_id":S,"type":"listen","state":"stop"}` (push-to-talk released).
    pub async fn listen_stop(&self) -> anyhow::Result<()> {
        let s = format!(r#"{{"session_id":{},"type":"listen","state":"stop"}}"#, quote(&self.session_id()));
        self.send_text_raw(s).await
    }

    /// `{"session_id":S,"type":"listen","state":"detect","text":T}` (wake word or typed text).
    pub async fn detect(&self, text: &str) -> anyhow::Result<()> {
        let s = format!(
            r#"{{"session_id":{},"type":"listen","state":"detect","text":{}}}"#,
            quote(&self.session_id()),
            quote(text)
        );
        self.send_text_raw(s).await
    }

    /// `{"session_id":S,"type":"abort"}` (button pressed while speaking).
    pub async fn abort(&self) -> anyhow::Result<()> {
        let s = format!(r#"{{"session_id":{},"type":"abort"}}"#, quote(&self.session_id()));
        self.send_text_raw(s).await
    }

    /// `{"session_id":S,"type":"abort","reason":R}` (e.g. `wake_word_detected`).
    pub async fn abort_with_reason(&self, reason: &str) -> anyhow::Result<()> {
        let s = format!(r#"{{"session_id":{},"type":"abort","reason":{}}}"#, quote(&self.session_id()), quote(reason));
        self.send_text_raw(s).await
    }

    /// Sends one Opus packet as a binary frame of the negotiated version (v2 timestamp: ms since
    /// the connection opened).
    pub async fn send_opus(&self, packet: &[u8]) -> anyhow::Result<()> {
        let timestamp = (self.connected_at.elapsed().as_millis() % (1u128 << 32)) as u32;
        self.out
            .send(Outgoing::Audio { opus: packet.to_vec(), timestamp })
            .map_err(|_| anyhow!("the connection is closed"))
    }

    fn encode(&self, pcm: &[i16]) -> anyhow::Result<Vec<Vec<u8>>> {
        self.encoder.lock().unwrap_or_else(PoisonError::into_inner).encode_all(pcm)
    }

    /// Encodes 16 kHz mono PCM into the 60 ms Opus packets [`stream_speech`](Self::stream_speech)
    /// would send, so that many devices can send the same utterance without encoding it each.
    pub fn encode_speech(&self, pcm16k: &[i16]) -> anyhow::Result<Vec<Vec<u8>>> {
        self.encode(pcm16k)
    }

    /// Sends packets from [`encode_speech`](Self::encode_speech), one every 60 ms when `realtime`.
    pub async fn stream_packets(&self, packets: &[Vec<u8>], realtime: bool) -> anyhow::Result<()> {
        self.send_packets(packets, realtime).await
    }

    async fn send_packets(&self, packets: &[Vec<u8>], realtime: bool) -> anyhow::Result<()> {
        let start = tokio::time::Instant::now();
        let frame = Duration::from_millis(u64::from(UPLINK_FRAME_MS));
        for (i, packet) in packets.iter().enumerate() {
            if realtime {
                tokio::time::sleep_until(start + frame * u32::try_from(i).unwrap_or(u32::MAX)).await;
            }
            self.send_opus(packet).await?;
        }
        Ok(())
    }

    /// Streams 16 kHz mono PCM as the microphone would: 60 ms Opus frames (the firmware's encoder
    /// settings, the last frame zero-padded), one every 60 ms on a drift-free clock when
    /// `realtime`, else as fast as possible.
    pub async fn stream_speech(&self, pcm16k: &[i16], realtime: bool) -> anyhow::Result<()> {
        let packets = self.encode(pcm16k)?;
        self.send_packets(&packets, realtime).await
    }

    /// Streams `duration` of microphone silence in real time (rounded up to whole 60 ms frames).
    /// With DTX on, these are the tiny packets a real device sends.
    pub async fn stream_silence(&self, duration: Duration) -> anyhow::Result<()> {
        let packets = self.encode(&vec![0i16; silence_samples(duration)])?;
        self.send_packets(&packets, true).await
    }

    /// Streams silence in real time, as an auto-mode device keeps its microphone open, until
    /// `tts start` arrives (returns `true`), the connection closes or `max` passes (`false`).
    /// Everything received meanwhile stays queued for [`next_event`](Self::next_event) and
    /// [`collect_reply`](Self::collect_reply).
    pub async fn stream_silence_until_tts(&mut self, max: Duration) -> anyhow::Result<bool> {
        let silent = self.encode(&[0i16; UPLINK_FRAME_SAMPLES])?;
        let silent = silent.first().cloned().unwrap_or_default();
        let start = tokio::time::Instant::now();
        let deadline = start + max;
        let frame = Duration::from_millis(u64::from(UPLINK_FRAME_MS));
        let mut tick = start;
        while tick < deadline {
            self.send_opus(&silent).await?;
            tick += frame;
            loop {
                let event = tokio::time::timeout_at(tick, self.events.recv()).await;
                match event {
                    Err(_) => break,
                    Ok(None) => return Ok(false),
                    Ok(Some(ev)) => {
                        let is_start = matches!(&ev.1, SimEvent::Json(v)
                            if v.get("type").and_then(Value::as_str) == Some("tts")
                                && v.get("state").and_then(Value::as_str) == Some("start"));
                        let closed = matches!(ev.1, SimEvent::Closed(_));
                        self.pending.push_back(ev);
                        if is_start {
                            return Ok(true);
                        }
                        if closed {
                            return Ok(false);
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// The next event and its arrival time, or `None` after `timeout` or once the connection is
    /// gone and every event has been read.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<(Instant, SimEvent)> {
        if let Some(ev) = self.pending.pop_front() {
            return Some(ev);
        }
        tokio::time::timeout(timeout, self.events.recv()).await.ok().flatten()
    }

    /// Reads events until `tts stop` and returns the reply. Audio outside Speaking is only
    /// counted, as the firmware drops it. A close or `timeout` first is an error that lists what
    /// arrived.
    pub async fn collect_reply(&mut self, timeout: Duration) -> anyhow::Result<Reply> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut builder = reply::ReplyBuilder::new(self.downlink_sample_rate())?;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some((at, event)) = self.next_event(left).await else {
                bail!("no tts stop within {timeout:?}; received: {}", builder.reply().summary());
            };
            if let SimEvent::Closed(reason) = &event {
                bail!(
                    "the connection closed ({}) before tts stop; received: {}",
                    reason.as_deref().unwrap_or("no Close frame"),
                    builder.reply().summary()
                );
            }
            if builder.push(at, event) {
                return Ok(builder.finish());
            }
        }
    }

    /// Drops the TCP connection without a Close frame, as the firmware does when it ends a
    /// session. Messages already queued are written first.
    pub async fn close_abruptly(mut self) {
        let _ = self.out.send(Outgoing::Shutdown);
        if tokio::time::timeout(Duration::from_secs(2), &mut self.writer).await.is_err() {
            self.writer.abort();
            let _ = (&mut self.writer).await;
        }
        self.reader.abort();
        let _ = (&mut self.reader).await;
    }
}

/// A `tools/call` of the camera tool, to be answered once the photo is explained.
struct PhotoCall {
    id: Value,
    question: String,
    vision: Option<(String, Option<String>)>,
}

/// The camera call in `payload`, if it is one (with the vision URL and token of `initialize`).
fn photo_call(payload: &Value, vision: Option<(String, Option<String>)>) -> Option<PhotoCall> {
    let is_call = payload.get("method").and_then(Value::as_str) == Some("tools/call")
        && payload.pointer("/params/name").and_then(Value::as_str) == Some(mcp::TAKE_PHOTO);
    let id = payload.get("id").filter(|id| id.is_number())?.clone();
    let question = payload.pointer("/params/arguments/question").and_then(Value::as_str).unwrap_or("").to_owned();
    is_call.then_some(PhotoCall { id, question, vision })
}

impl PhotoCall {
    /// Posts the photo like `Esp32Camera::Explain` and returns the JSON-RPC reply: the response
    /// body as the tool's text on HTTP 200, an error otherwise.
    async fn run(self, photo: &[u8], device_id: &str, client_id: &str) -> Value {
        let outcome = match &self.vision {
            None => Err("Camera explain URL is not set".to_string()),
            Some((url, token)) => {
                match post_photo(url, token.as_deref(), device_id, client_id, &self.question, photo).await {
                    Ok((200, body)) => Ok(body),
                    Ok((status, _)) => Err(format!("Failed to upload photo, status code: {status}")),
                    Err(e) => Err(format!("Failed to connect to explain URL: {e}")),
                }
            }
        };
        match outcome {
            Ok(text) => serde_json::json!({"jsonrpc": "2.0", "id": self.id,
                "result": {"content": [{"type": "text", "text": text}], "isError": false}}),
            Err(message) => serde_json::json!({"jsonrpc": "2.0", "id": self.id, "error": {"message": message}}),
        }
    }
}

/// The multipart boundary of the simulated camera upload (any fixed string, as on the firmware).
pub const PHOTO_BOUNDARY: &str = "----ESP32_CAMERA_BOUNDARY";

/// The body of the firmware's camera upload (device-protocol.md §4.3): a `question` field, then a
/// `file` field `camera.jpg` of type `image/jpeg`, with [`PHOTO_BOUNDARY`].
pub fn photo_form(question: &str, photo: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(photo.len() + 512);
    body.extend_from_slice(
        format!(
            "--{PHOTO_BOUNDARY}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\n{question}\r\n\
             --{PHOTO_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"camera.jpg\"\r\n\
             Content-Type: image/jpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(photo);
    body.extend_from_slice(format!("\r\n--{PHOTO_BOUNDARY}--\r\n").as_bytes());
    body
}

/// POSTs a photo the way the firmware does (device-protocol.md §4.3): `multipart/form-data`
/// ([`photo_form`]) sent with `Transfer-Encoding: chunked` in small pieces, `Device-Id`,
/// `Client-Id`, and `Authorization: Bearer <token>` when there is a token. Returns the HTTP status
/// and the body (which the firmware hands back verbatim as the tool's result).
pub async fn post_photo(
    url: &str,
    token: Option<&str>,
    device_id: &str,
    client_id: &str,
    question: &str,
    photo: &[u8],
) -> anyhow::Result<(u16, String)> {
    let body = photo_form(question, photo);
    // The firmware writes the form piece by piece with chunked encoding: no Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(1024).map(|c| Ok(c.to_vec())).collect();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let mut request = client
        .post(url)
        .header("Device-Id", device_id)
        .header("Client-Id", client_id)
        .header("Content-Type", format!("multipart/form-data; boundary={PHOTO_BOUNDARY}"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)));
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.with_context(|| format!("posting the photo to {url}"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// Samples in `duration` of 16 kHz audio, rounded up to whole uplink frames.
fn silence_samples(duration: Duration) -> usize {
    let frames = duration.as_millis().div_ceil(u128::from(UPLINK_FRAME_MS));
    usize::try_from(frames).unwrap_or(usize::MAX / UPLINK_FRAME_SAMPLES).saturating_mul(UPLINK_FRAME_SAMPLES)
}

const _: () = assert!(UPLINK_SAMPLE_RATE == 16_000);

/// Reads until the server hello (10 s), forwarding anything else as events and noting what the
/// firmware would reject (it logs and drops such messages, and keeps waiting).
async fn wait_for_hello(
    ws: &mut Ws,
    version: ProtocolVersion,
    events: &mpsc::UnboundedSender<(Instant, SimEvent)>,
    protocol_errors: &mut Vec<String>,
) -> anyhow::Result<(Value, ServerHello)> {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => bail!("no server hello within {HELLO_TIMEOUT:?} (the firmware gives up here)"),
            Ok(None) => bail!("the server closed the connection before its hello"),
            Ok(Some(Err(e))) => return Err(anyhow!(e).context("the connection failed before the server hello")),
            Ok(Some(Ok(msg))) => msg,
        };
        let at = Instant::now();
        match msg {
            Message::Text(text) => {
                let v = match serde_json::from_str::<Value>(text.as_str()) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        protocol_errors.push(format!("text that is not a JSON object: {:?}", text.as_str()));
                        continue;
                    }
                };
                if v.get("type").and_then(Value::as_str) == Some("hello") {
                    let hello = parse_server_hello(&v)?;
                    return Ok((v, hello));
                }
                let _ = events.send((at, SimEvent::Json(v)));
            }
            Message::Binary(data) => match frame::decode(version, &data) {
                Ok(f) => {
                    let _ = events.send((at, SimEvent::Audio { opus: f.payload.to_vec(), timestamp: f.timestamp }));
                }
                Err(e) => protocol_errors.push(format!("undecodable v{} frame: {e}", version.number())),
            },
            Message::Close(frame) => bail!("the server closed the connection before its hello: {}", close_text(frame)),
            _ => {}
        }
    }
}

fn close_text(frame: Option<tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => format!("{} {}", u16::from(f.code), f.reason.as_str()).trim_end().to_string(),
        None => "1005".to_string(),
    }
}

async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    version: ProtocolVersion,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(cmd) = rx.recv().await {
        let cmd = match cmd {
            Outgoing::Audio { opus, timestamp } => {
                let mut out = Vec::with_capacity(opus.len() + 16);
                frame::encode(version, &opus, timestamp, &mut out);
                Outgoing::Send(Message::binary(out))
            }
            cmd => cmd,
        };
        match cmd {
            Outgoing::Audio { .. } => {}
            Outgoing::Send(msg) => {
                if let Err(e) = sink.send(msg).await {
                    tracing::debug!("simulator: write failed: {e}");
                    break;
                }
            }
            Outgoing::Shutdown => {
                let _ = sink.flush().await;
                break;
            }
        }
    }
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    version: ProtocolVersion,
    mcp: McpBehaviour,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::UnboundedSender<(Instant, SimEvent)>,
    out: mpsc::UnboundedSender<Outgoing>,
) {
    loop {
        let msg = match stream.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                tracing::debug!("simulator: connection ended: {e}");
                let _ = events.send((Instant::now(), SimEvent::Closed(None)));
                return;
            }
            None => {
                let _ = events.send((Instant::now(), SimEvent::Closed(None)));
                return;
            }
        };
        let at = Instant::now();
        match msg {
            Message::Text(text) => {
                let value = match serde_json::from_str::<Value>(text.as_str()) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        lock(&shared)
                            .protocol_errors
                            .push(format!("text that is not a JSON object: {:?}", text.as_str()));
                        continue;
                    }
                };
                on_json(&value, &mcp, &shared, &out);
                let _ = events.send((at, SimEvent::Json(value)));
            }
            Message::Binary(data) => match frame::decode(version, &data) {
                Ok(f) => {
                    let _ = events.send((at, SimEvent::Audio { opus: f.payload.to_vec(), timestamp: f.timestamp }));
                }
                Err(e) => lock(&shared).protocol_errors.push(format!("undecodable v{} frame: {e}", version.number())),
            },
            Message::Close(frame) => {
                // Like the firmware: no Close reply; the event ends the session.
                let _ = events.send((at, SimEvent::Closed(Some(close_text(frame)))));
                return;
            }
            // tungstenite answers Ping with Pong itself, as the firmware does.
            _ => {}
        }
    }
}

/// What the firmware does with one JSON message before the application sees it: a later hello
/// updates the session, `mcp` goes to the MCP server.
fn on_json(v: &Value, mcp: &McpBehaviour, shared: &Mutex<Shared>, out: &mpsc::UnboundedSender<Outgoing>) {
    match v.get("type").and_then(Value::as_str) {
        None => lock(shared).protocol_errors.push(format!("message without a string type: {v}")),
        Some("hello") => match parse_server_hello(v) {
            Ok(hello) => {
                let mut s = lock(shared);
                s.session_id = hello.session_id;
                s.downlink_rate = hello.sample_rate;
                s.downlink_frame_ms = hello.frame_duration;
            }
            Err(e) => lock(shared).protocol_errors.push(e.to_string()),
        },
        Some("mcp") if mcp.enabled => {
            let Some(payload) = v.get("payload").filter(|p| p.is_object()) else {
                lock(shared).protocol_errors.push(format!("mcp message without an object payload: {v}"));
                return;
            };
            let (reply, session_id) = {
                let mut s = lock(shared);
                s.mcp_requests += 1;
                if s.mcp_requests <= mcp.ignore {
                    return;
                }
                if let Some(photo) = &mcp.camera
                    && let Some(call) = photo_call(payload, s.mcp.vision.clone())
                {
                    s.mcp.calls.push((mcp::TAKE_PHOTO.to_string(), payload["params"]["arguments"].clone()));
                    let (session_id, out, photo) = (s.session_id.clone(), out.clone(), photo.clone());
                    tokio::spawn(async move {
                        let reply = call.run(&photo.0, &photo.1, &photo.2).await;
                        let text = format!(r#"{{"session_id":{},"type":"mcp","payload":{reply}}}"#, quote(&session_id));
                        let _ = out.send(Outgoing::Send(Message::text(text)));
                    });
                    return;
                }
                (mcp::handle_request(&mut s.mcp, payload), s.session_id.clone())
            };
            if let Some(reply) = reply {
                let text = format!(r#"{{"session_id":{},"type":"mcp","payload":{reply}}}"#, quote(&session_id));
                if mcp.delay.is_zero() {
                    let _ = out.send(Outgoing::Send(Message::text(text)));
                } else {
                    let (out, delay) = (out.clone(), mcp.delay);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = out.send(Outgoing::Send(Message::text(text)));
                    });
                }
            }
        }
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{Inbound, parse_inbound};
    use serde_json::json;

    #[test]
    fn hello_matches_the_firmware() {
        let cfg = SimConfig::default();
        assert_eq!(
            client_hello(&cfg),
            r#"{"type":"hello","version":1,"features":{"mcp":true},"transport":"websocket","audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}}"#
        );
        let Ok(Inbound::Hello(h)) = parse_inbound(&client_hello(&cfg)) else { panic!("the server parser refuses it") };
        assert!(h.features.mcp);
        assert_eq!(h.audio_params.and_then(|a| a.sample_rate), Some(16000));

        let lenient = SimConfig { protocol_version: 3, mcp: false, hello_audio_params: false, ..SimConfig::default() };
        assert_eq!(client_hello(&lenient), r#"{"type":"hello","version":3,"transport":"websocket"}"#);
    }

    #[test]
    fn server_hello_checks_and_defaults() {
        let h = parse_server_hello(&json!({"type":"hello","transport":"websocket","session_id":"abc",
            "audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":20}}))
        .unwrap();
        assert_eq!(h, ServerHello { session_id: "abc".into(), sample_rate: 16000, frame_duration: 20 });
        let h = parse_server_hello(&json!({"type":"hello","transport":"websocket"})).unwrap();
        assert_eq!(h, ServerHello { session_id: String::new(), sample_rate: 24000, frame_duration: 60 });
        assert!(parse_server_hello(&json!({"type":"hello","session_id":"x"})).is_err());
        assert!(parse_server_hello(&json!({"type":"hello","transport":1})).is_err());
        assert!(parse_server_hello(&json!({"type":"tts","transport":"websocket"})).is_err());
    }

    #[test]
    fn uplink_encoder_pads_and_uses_dtx_for_silence() {
        let mut enc = UplinkEncoder::new().unwrap();
        let tone: Vec<i16> = (0..2000)
            .map(|i| (6000.0 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin()) as i16)
            .collect();
        let packets = enc.encode_all(&tone).unwrap();
        assert_eq!(packets.len(), 3, "2000 samples = 2 full frames + 1 padded");
        assert!(packets.iter().all(|p| p.len() > 3));
        let silence = enc.encode_all(&vec![0; silence_samples(Duration::from_millis(1000))]).unwrap();
        assert_eq!(silence.len(), 17);
        // DTX: after a few frames, 1-byte packets with an occasional comfort-noise update.
        let tiny = silence.iter().filter(|p| p.len() <= 3).count();
        assert!(
            tiny >= 10,
            "DTX silence should be mostly tiny packets: {:?}",
            silence.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn mcp_replies_go_out_in_the_firmware_envelope() {
        let shared = Mutex::new(Shared {
            session_id: "s1".into(),
            downlink_rate: 24000,
            downlink_frame_ms: 60,
            mcp: DeviceState::default(),
            mcp_requests: 0,
            protocol_errors: Vec::new(),
        });
        let (out, mut rx) = mpsc::unbounded_channel();
        let on = McpBehaviour { enabled: true, ignore: 0, delay: Duration::ZERO, camera: None };
        let off = McpBehaviour { enabled: false, ..on.clone() };
        let req = json!({"type":"mcp","payload":{"jsonrpc":"2.0","id":7,"method":"tools/call",
            "params":{"name":"self.audio_speaker.set_volume","arguments":{"volume":20}}}});
        on_json(&req, &on, &shared, &out);
        let Ok(Outgoing::Send(Message::Text(text))) = rx.try_recv() else { panic!("no reply") };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        assert!(text.as_str().starts_with(r#"{"session_id":"s1","type":"mcp","payload":"#));
        assert_eq!(v["payload"]["id"], 7);
        assert_eq!(lock(&shared).mcp.volume, 20);
        // Without MCP (old firmware) nothing is answered; a later hello updates the session.
        on_json(&req, &off, &shared, &out);
        assert!(rx.try_recv().is_err());
        on_json(&json!({"type":"hello","transport":"websocket","session_id":"s2"}), &on, &shared, &out);
        assert_eq!(lock(&shared).session_id, "s2");
        on_json(&json!({"state":"start"}), &on, &shared, &out);
        assert_eq!(lock(&shared).protocol_errors.len(), 1);
    }

    #[tokio::test]
    async fn refused_upgrade_names_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let ok = req.contains("authorization: bearer tok") && req.contains("device-id: 02:00:5e:10:00:01");
                let body = if ok { "denied" } else { "bad headers" };
                let resp = format!("HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = sock.write_all(resp.as_bytes()).await;
            }
        });
        let cfg =
            SimConfig { url: format!("ws://{addr}/xiaozhi/v1/"), token: Some("tok".into()), ..SimConfig::default() };
        let err = SimDevice::connect(cfg).await.unwrap_err().to_string();
        assert!(err.contains("401") && err.contains("denied"), "{err}");
    }

    /// A scripted server on a loopback socket: checks the handshake, the hello, MCP answers and
    /// the uplink frames, then sends a reply; the device must see it all like the firmware.
    #[tokio::test]
    // The handshake callback's error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    async fn full_session_against_a_scripted_server() {
        use crate::audio::opus::{MAX_PACKET, OpusEncoder};
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut headers = Vec::new();
            let mut ws = tokio_tungstenite::accept_hdr_async(sock, |req: &Request, resp: Response| {
                for name in ["authorization", "client-id", "device-id", "protocol-version"] {
                    let v = req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    headers.push(v);
                }
                Ok(resp)
            })
            .await
            .unwrap();
            let hello = match ws.next().await {
                Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
                other => panic!("expected the hello, got {other:?}"),
            };
            ws.send(Message::text(
                r#"{"type":"hello","transport":"websocket","session_id":"sess","audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}}"#,
            ))
            .await
            .unwrap();
            let mcp =
                |payload: Value| Message::text(json!({"type":"mcp","session_id":"sess","payload":payload}).to_string());
            ws.send(mcp(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))).await.unwrap();
            ws.send(mcp(json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
                "params":{"name":"self.audio_speaker.set_volume","arguments":{"volume":55}}})))
                .await
                .unwrap();
            // Two MCP replies, the listen start and four audio frames, in whatever interleaving.
            let (mut texts, mut uplink) = (Vec::new(), Vec::new());
            while texts.len() < 3 || uplink.len() < 4 {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => texts.push(serde_json::from_str::<Value>(t.as_str()).unwrap()),
                    Some(Ok(Message::Binary(b))) => uplink.push(b.to_vec()),
                    Some(Ok(_)) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            let by_id = |id: i64| texts.iter().find(|v| v["payload"]["id"] == id).cloned().unwrap_or_default();
            let (list, call) = (by_id(1), by_id(2));
            let listen = texts.iter().find(|v| v["type"] == "listen").cloned().unwrap_or_default();
            // The reply: one frame too early (dropped by a device), then three while speaking.
            let mut enc = OpusEncoder::new(16_000, 60, 24_000, 0).unwrap();
            let tone: Vec<i16> = (0..960).map(|i| ((i % 40) as i16 - 20) * 300).collect();
            let mut buf = vec![0u8; MAX_PACKET];
            let n = enc.encode(&tone, &mut buf).unwrap();
            let mut framed = Vec::new();
            frame::encode(ProtocolVersion::V2, &buf[..n], 0, &mut framed);
            ws.send(Message::binary(framed.clone())).await.unwrap();
            ws.send(Message::text(r#"{"type":"stt","text":"hello there","session_id":"sess"}"#)).await.unwrap();
            ws.send(Message::text(r#"{"type":"tts","state":"start","session_id":"sess"}"#)).await.unwrap();
            for _ in 0..3 {
                ws.send(Message::binary(framed.clone())).await.unwrap();
            }
            ws.send(Message::text(r#"{"type":"tts","state":"stop","session_id":"sess"}"#)).await.unwrap();
            // The device then drops TCP without a Close frame.
            let end = loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) => break "close frame",
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break "dropped",
                }
            };
            (headers, hello, list, call, listen, uplink, end)
        });

        let cfg = SimConfig {
            url: format!("ws://{addr}/xiaozhi/v1/"),
            token: Some("secret".into()),
            protocol_version: 2,
            ..SimConfig::default()
        };
        let mut dev = SimDevice::connect(cfg).await.unwrap();
        assert_eq!(dev.session_id(), "sess");
        assert_eq!(dev.downlink_sample_rate(), 16_000);
        dev.listen_start(ListenMode::Auto).await.unwrap();
        let speech: Vec<i16> = (0..960 * 3).map(|i| ((i % 32) as i16 - 16) * 500).collect();
        let started = Instant::now();
        dev.stream_speech(&speech, true).await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(115) && took < Duration::from_secs(1), "3 frames in real time: {took:?}");
        dev.stream_silence(Duration::from_millis(60)).await.unwrap();
        let reply = dev.collect_reply(Duration::from_secs(10)).await.unwrap();
        assert_eq!(reply.stt.as_deref(), Some("hello there"));
        assert_eq!(reply.frames.len(), 3);
        assert_eq!(reply.frames_outside_speaking, 1);
        assert_eq!(reply.pcm.len(), 3 * 960);
        assert_eq!(reply.audio_ms(), 180);
        assert!(reply.json.iter().any(|v| v["type"] == "mcp"), "MCP requests are events too");
        assert_eq!(dev.volume(), 55);
        assert_eq!(dev.mcp_calls(), vec![("self.audio_speaker.set_volume".to_string(), json!({"volume":55}))]);
        assert!(dev.protocol_errors().is_empty(), "{:?}", dev.protocol_errors());
        dev.close_abruptly().await;

        let (headers, hello, list, call, listen, uplink, end) = server.await.unwrap();
        assert_eq!(headers, vec!["Bearer secret", DEFAULT_CLIENT_ID, DEFAULT_DEVICE_ID, "2"]);
        assert_eq!(hello["version"], 2);
        assert_eq!(list["session_id"], "sess");
        assert_eq!(list["payload"]["id"], 1);
        assert_eq!(list["payload"]["result"]["nextCursor"], "self.screen.set_brightness");
        assert_eq!(call["payload"]["result"]["content"][0]["text"], "true");
        assert_eq!(listen, json!({"session_id":"sess","type":"listen","state":"start","mode":"auto"}));
        for b in &uplink {
            let f = frame::decode(ProtocolVersion::V2, b).unwrap();
            assert_eq!(b.len(), 16 + f.payload.len());
            assert_eq!(f.kind, 0);
        }
        assert!(uplink[..3].iter().all(|b| b.len() > 16 + 3), "speech frames carry audio");
        assert_eq!(end, "dropped", "the firmware sends no Close frame");
    }
}
