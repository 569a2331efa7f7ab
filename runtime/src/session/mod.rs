//! The per-device session: one task that owns everything about one connected device.
//!
//! Nothing mutable is shared between devices: each session has its own Opus decoder, VAD state,
//! pre-roll ring, utterance buffer (`listener`), dialogue, speaker and MCP client. (The VAD
//! *model* is shared and batched across sessions; each session keeps its own recurrent state.) Other tasks (the turn, the
//! speaker, the writer) talk to it through channels. The loop `select!`s over server shutdown,
//! finished turns, the socket and a timer.
//!
//! Listening: in `auto` and `realtime` modes Silero VAD finds the end of each utterance, counting
//! silence in audio time (frames received), so a stall of ours can never split an utterance; the
//! pre-roll ring makes sure the first syllable reaches ASR. In `manual` mode everything between
//! `listen start` and `listen stop` is the utterance. In `realtime` mode the microphone is heard
//! while we speak too: speech from the user stops the reply (barge-in) and becomes the next turn.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::audio::UPLINK_SAMPLE_RATE;
use crate::connection::{self, Outbox, WsReader, WsStream};
use crate::extensions::{CallContext, ExtensionScope};
use crate::llm::{ChatMessage, Role};
use crate::mcp::McpClient;
use crate::memory;
use crate::protocol::frame::{self, ProtocolVersion};
use crate::protocol::message::{
    ClientHello, Inbound, Listen, ListenMode, ListenState, ServerMessage, TtsState, parse_inbound,
};
use crate::services::Services;
use crate::speaker::Speaker;
use crate::text;
use crate::tools::ToolBox;
use crate::turn::{self, TurnContext, TurnInput, TurnOutcome};

mod listener;

use listener::{Heard, Listener};

/// How long a device has to send its hello after connecting.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Dialogue messages kept per session (older ones are dropped at a user-message boundary).
pub const HISTORY_LIMIT: usize = 40;

/// How long a device's registry entry (which instance holds it) lives without a refresh.
pub const REGISTRY_TTL: Duration = Duration::from_secs(90);

/// How often a session refreshes its registry entry.
const REGISTRY_REFRESH: Duration = Duration::from_secs(30);

/// Extra wall-clock time after the no-voice timeout before a silent connection is dropped (the
/// Python server's hard cut: no-voice time + 60 s).
const HARD_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);

/// Who is connecting, from the upgrade request.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// `Device-Id` (the MAC address).
    pub device_id: String,
    /// `Client-Id` (a UUID).
    pub client_id: String,
    /// `Protocol-Version` header, if any.
    pub header_version: Option<u32>,
    /// The connection comes from the MQTT gateway (`?from=mqtt_gateway`): binary v2 framing.
    pub gateway: bool,
}

/// Runs one device session to its end. `shutdown` fires when the server stops.
pub async fn run(ws: WsStream, device: DeviceInfo, services: Arc<Services>, shutdown: CancellationToken) {
    let _open = crate::metrics::GaugeGuard::new(&services.metrics.sessions);
    services.metrics.sessions_total.inc();
    let session_id = uuid::Uuid::new_v4().to_string();
    let initial = if device.gateway {
        ProtocolVersion::V2
    } else {
        device.header_version.and_then(ProtocolVersion::from_number).unwrap_or(ProtocolVersion::V1)
    };
    let (mut reader, outbox, version_tx) = connection::split(ws, session_id.clone(), initial);
    let span = tracing::info_span!("session", device = %device.device_id, session = %session_id);
    let mut session = Session::new(device, services, outbox.clone(), version_tx, initial);
    tracing::info!(parent: &span, "device connected");
    session.register(true);
    let reason = tracing::Instrument::instrument(session.run(&mut reader, &shutdown), span.clone()).await;
    session.cancel_turn();
    session.register(false);
    match reason {
        End::DeviceGone => tracing::info!(parent: &span, "device disconnected"),
        End::Close(why) => {
            tracing::info!(parent: &span, "closing: {why}");
            outbox.close(why).await;
            connection::drain_after_close(&mut reader).await;
        }
    }
    for write in std::mem::take(&mut session.writes) {
        let _ = write.await;
    }
    // With the device gone, the memory extension (if any) keeps what was said.
    if let Some(scope) = session.extension_scope() {
        let dialogue = std::mem::take(&mut session.history);
        let memory = session.services.config.providers.memory.clone();
        tracing::Instrument::instrument(memory::remember(scope, &memory, dialogue), span).await;
    }
}

/// Why the session loop ended.
enum End {
    /// The device dropped the connection (or sent Close).
    DeviceGone,
    /// We close, for this reason.
    Close(&'static str),
}

struct ActiveTurn {
    id: u64,
    cancel: CancellationToken,
}

struct Session {
    device: DeviceInfo,
    services: Arc<Services>,
    outbox: Outbox,
    version_tx: tokio::sync::watch::Sender<ProtocolVersion>,
    version: ProtocolVersion,
    hello_done: bool,
    mode: ListenMode,
    listening: bool,
    /// Created by the first audio frame: idle devices cost no decoder, VAD or pre-roll memory.
    listener: Option<Listener>,
    last_activity: Instant,
    /// Created on the first reply.
    speaker: Option<Speaker>,
    mcp: Option<Arc<McpClient>>,
    history: Vec<ChatMessage>,
    /// The system prompt set by `change_role`; `None`: the configured prompt.
    prompt: Option<String>,
    turn: Option<ActiveTurn>,
    next_turn_id: u64,
    turn_tx: mpsc::Sender<(u64, TurnOutcome)>,
    turn_rx: mpsc::Receiver<(u64, TurnOutcome)>,
    goodbye_started: bool,
    bad_frames: u64,
    registered_at: Instant,
    /// Store writes in flight (history, registry); awaited before the session ends, so a server
    /// shutdown (which waits for sessions) never cuts them off.
    writes: Vec<tokio::task::JoinHandle<()>>,
}

impl Session {
    fn new(
        device: DeviceInfo,
        services: Arc<Services>,
        outbox: Outbox,
        version_tx: tokio::sync::watch::Sender<ProtocolVersion>,
        version: ProtocolVersion,
    ) -> Self {
        let (turn_tx, turn_rx) = mpsc::channel(4);
        Self {
            device,
            services,
            outbox,
            version_tx,
            version,
            hello_done: false,
            mode: ListenMode::Auto,
            listening: false,
            listener: None,
            last_activity: Instant::now(),
            speaker: None,
            mcp: None,
            history: Vec::new(),
            prompt: None,
            turn: None,
            next_turn_id: 1,
            turn_tx,
            turn_rx,
            goodbye_started: false,
            bad_frames: 0,
            registered_at: Instant::now(),
            writes: Vec::new(),
        }
    }

    async fn run(&mut self, reader: &mut WsReader, shutdown: &CancellationToken) -> End {
        let connected = Instant::now();
        let mut timer = tokio::time::interval(Duration::from_secs(1));
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Some(End::Close("server shutting down")),
                Some((id, outcome)) = self.turn_rx.recv() => self.on_turn_done(id, outcome),
                msg = reader.next() => match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Some(End::DeviceGone),
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_str()).await,
                    Some(Ok(Message::Binary(b))) => self.on_binary(&b).await,
                    Some(Ok(_)) => None,
                },
                _ = timer.tick() => self.on_timer(connected),
            };
            if let Some(end) = step {
                return end;
            }
        }
    }

    /// Records in the store that this instance holds the device (`held`), or that it no longer
    /// does, in the background; a store failure is logged and changes nothing else.
    fn register(&mut self, held: bool) {
        self.registered_at = Instant::now();
        let store = Arc::clone(&self.services.store);
        let (device, instance) = (self.device.device_id.clone(), self.services.instance.to_string());
        self.track(tokio::spawn(async move {
            let result = if held {
                crate::store::register_device(store.as_ref(), &device, &instance, REGISTRY_TTL).await
            } else {
                match crate::store::device_instance(store.as_ref(), &device).await {
                    // Only our own entry: the device may already be connected to another instance.
                    Ok(Some(holder)) if holder == instance => {
                        store.delete(&crate::store::device_instance_key(&device)).await
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = result {
                tracing::warn!(device, "device registry: {e}");
            }
        }));
    }

    /// Keeps the handle of a store write in flight (and forgets those already done).
    fn track(&mut self, write: tokio::task::JoinHandle<()>) {
        self.writes.retain(|w| !w.is_finished());
        self.writes.push(write);
    }

    fn on_timer(&mut self, connected: Instant) -> Option<End> {
        if self.registered_at.elapsed() >= REGISTRY_REFRESH {
            self.register(true);
        }
        if !self.hello_done && connected.elapsed() > HELLO_TIMEOUT {
            return Some(End::Close("no hello within 10 s"));
        }
        let limit = Duration::from_secs(self.services.config.close_connection_no_voice_time) + HARD_TIMEOUT_MARGIN;
        if self.turn.is_none() && self.last_activity.elapsed() > limit {
            return Some(End::Close("inactive"));
        }
        None
    }

    fn sid(&self) -> String {
        self.outbox.session_id().to_string()
    }

    async fn on_text(&mut self, text: &str) -> Option<End> {
        self.last_activity = Instant::now();
        let msg = match parse_inbound(text) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!("bad message from device: {e}");
                self.outbox.send(ServerMessage::Error { message: e.to_string(), session_id: self.sid() }).await;
                return None;
            }
        };
        match msg {
            Inbound::Hello(hello) => self.on_hello(hello).await,
            _ if !self.hello_done => {
                let message = "send a hello first".to_string();
                self.outbox.send(ServerMessage::Error { message, session_id: self.sid() }).await;
            }
            Inbound::Listen(listen) => return self.on_listen(listen).await,
            Inbound::Abort(abort) => {
                tracing::info!("abort ({})", abort.reason.as_deref().unwrap_or("no reason"));
                self.cancel_turn();
                self.outbox
                    .send(ServerMessage::Tts { state: TtsState::Stop, text: None, session_id: self.sid() })
                    .await;
            }
            Inbound::Mcp(payload) => match &self.mcp {
                Some(mcp) => mcp.handle_incoming(&payload),
                None => tracing::debug!("MCP message from a device that did not announce MCP"),
            },
            Inbound::Iot => tracing::debug!("legacy iot message ignored"),
            Inbound::Goodbye => return Some(End::Close("device said goodbye")),
            Inbound::Ping => {
                self.outbox.send(ServerMessage::Pong { session_id: self.sid() }).await;
            }
        }
        None
    }

    async fn on_hello(&mut self, hello: ClientHello) {
        let version = if self.device.gateway {
            ProtocolVersion::V2
        } else {
            let asked = self.device.header_version.or(hello.version).unwrap_or(1);
            ProtocolVersion::from_number(asked).unwrap_or_else(|| {
                tracing::warn!("unknown protocol version {asked}; using 1");
                ProtocolVersion::V1
            })
        };
        self.version = version;
        let _ = self.version_tx.send(version);
        let config = &self.services.config;
        let reply = ServerMessage::Hello {
            version: version.number(),
            transport: "websocket".into(),
            session_id: self.sid(),
            audio_params: config.xiaozhi.audio_params.clone(),
        };
        self.outbox.send(reply).await;
        if let Some(params) = &hello.audio_params
            && params.sample_rate.is_some_and(|r| r != UPLINK_SAMPLE_RATE)
        {
            tracing::warn!(
                "device announces uplink {:?} Hz; decoding as 16 kHz like the firmware sends",
                params.sample_rate
            );
        }
        if hello.features.mcp && self.mcp.is_none() {
            let mcp = McpClient::new(self.outbox.clone());
            let vision = Some(config.server.vision_explain.clone())
                .filter(|url| !url.is_empty())
                .map(|url| (url, String::new()));
            mcp.start(vision);
            self.mcp = Some(mcp);
        }
        self.hello_done = true;
        tracing::info!("hello: protocol v{}, mcp {}", version.number(), hello.features.mcp);
    }

    async fn on_listen(&mut self, listen: Listen) -> Option<End> {
        match listen.state {
            ListenState::Start => {
                if let Some(mode) = listen.mode {
                    self.mode = mode;
                }
                self.listening = true;
                self.reset_listening();
            }
            ListenState::Stop => {
                if self.listening && self.turn.is_none() {
                    self.listening = false;
                    let pcm = self.listener.as_mut().map(Listener::take_utterance).unwrap_or_default();
                    if !pcm.is_empty() {
                        self.start_turn(TurnInput::Speech(pcm));
                    }
                }
            }
            ListenState::Detect => {
                let text = listen.text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())?;
                let config = &self.services.config;
                if text::matches_any(&text, &config.wakeup_words) && !config.enable_greeting {
                    self.outbox.send(ServerMessage::Stt { text, session_id: self.sid() }).await;
                    self.outbox
                        .send(ServerMessage::Tts { state: TtsState::Stop, text: None, session_id: self.sid() })
                        .await;
                } else {
                    // A wake word gets a greeting from the LLM; any other text is a typed turn.
                    self.start_turn(TurnInput::Text(text));
                }
            }
        }
        None
    }

    async fn on_binary(&mut self, data: &[u8]) -> Option<End> {
        if !self.hello_done {
            return None;
        }
        let frame = match frame::decode(self.version, data) {
            Ok(frame) => frame,
            Err(e) => {
                self.count_bad_frame(&e);
                return None;
            }
        };
        self.last_activity = Instant::now();
        // While we speak, the microphone is only heard in realtime mode (the device has echo
        // cancellation there): that is what makes a barge-in possible.
        let realtime = self.mode == ListenMode::Realtime;
        if frame.kind != 0 || !self.listening || (self.turn.is_some() && !realtime) {
            return None;
        }
        if self.listener.is_none() {
            self.create_listener();
        }
        let listener = self.listener.as_mut()?;
        let heard = match listener.push_packet(frame.payload, self.mode == ListenMode::Manual).await {
            Ok(heard) => heard,
            Err(e) => {
                self.count_bad_frame(&e);
                return None;
            }
        };
        match heard {
            Heard::Utterance(pcm) => {
                self.start_turn(TurnInput::Speech(pcm));
                return None;
            }
            Heard::SpeechStart if self.turn.is_some() => {
                tracing::info!("barge-in: the user speaks over the reply");
                self.cancel_turn();
                self.outbox
                    .send(ServerMessage::Tts { state: TtsState::Stop, text: None, session_id: self.sid() })
                    .await;
                return None;
            }
            Heard::SpeechStart | Heard::Nothing => {}
        }
        if self.turn.is_some() {
            return None;
        }
        let listener = self.listener.as_ref()?;
        let config = &self.services.config;
        if listener.no_voice_ms() >= config.close_connection_no_voice_time * 1000 && !self.goodbye_started {
            self.goodbye_started = true;
            tracing::info!("no voice for {} s: saying goodbye", config.close_connection_no_voice_time);
            if !config.end_prompt.enable {
                return Some(End::Close("no voice"));
            }
            self.start_turn(TurnInput::Goodbye);
        }
        None
    }

    fn count_bad_frame(&mut self, error: &dyn std::fmt::Display) {
        self.bad_frames += 1;
        if self.bad_frames.is_power_of_two() {
            tracing::warn!("dropped bad audio frame ({} so far): {error}", self.bad_frames);
        }
    }

    /// Arms listening: resets the decoder and VAD state if there are any. They are created by
    /// the first audio frame ([`Session::create_listener`]), so a device that says `listen start`
    /// but streams nothing costs no decoder, VAD or pre-roll memory.
    fn reset_listening(&mut self) {
        if let Some(listener) = &mut self.listener {
            listener.reset();
        }
    }

    /// Creates the decoder, VAD state and pre-roll ring for the first audio frame.
    fn create_listener(&mut self) {
        match Listener::new(Arc::clone(&self.services.vad), &self.services.vad_config) {
            Ok(listener) => self.listener = Some(listener),
            Err(e) => tracing::error!("cannot start listening: {e}"),
        }
    }

    /// The session's speaker, started on the first reply.
    fn speaker(&mut self) -> Option<Speaker> {
        if self.speaker.is_none() {
            let config = &self.services.config;
            match Speaker::spawn(self.outbox.clone(), &config.xiaozhi.audio_params, &config.audio) {
                Ok(speaker) => self.speaker = Some(speaker),
                Err(e) => tracing::error!("cannot start the speaker: {e}"),
            }
        }
        self.speaker.clone()
    }

    fn start_turn(&mut self, input: TurnInput) {
        // A new utterance while we still speak replaces the old reply (the Python server aborts too).
        self.cancel_turn();
        let Some(speaker) = self.speaker() else { return };
        let id = self.next_turn_id;
        self.next_turn_id += 1;
        let cancel = CancellationToken::new();
        let extensions = self.extension_scope();
        let ctx = TurnContext {
            input,
            services: Arc::clone(&self.services),
            history: self.history.clone(),
            outbox: self.outbox.clone(),
            speaker,
            tools: ToolBox::new(self.mcp.clone(), extensions.clone()),
            started: std::time::Instant::now(),
            extensions,
            prompt: self.prompt.clone(),
            cancel: cancel.clone(),
        };
        let done = self.turn_tx.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let outcome = turn::run(ctx).await;
            let _ = done.send((id, outcome)).await;
        }));
        self.turn = Some(ActiveTurn { id, cancel });
    }

    /// The extensions for a new turn (or the final memory save): the registry's current snapshot.
    fn extension_scope(&self) -> Option<ExtensionScope> {
        let registry = self.services.extensions.as_ref()?;
        Some(ExtensionScope {
            snapshot: registry.snapshot(),
            host: Arc::clone(registry.host()),
            context: CallContext {
                device_id: self.device.device_id.clone(),
                session_id: self.sid(),
                language: String::new(),
            },
        })
    }

    /// Appends a turn's messages to the device's stored chat history, in the background.
    fn save_history(&mut self, messages: &[ChatMessage]) {
        if messages.is_empty() {
            return;
        }
        let store = Arc::clone(&self.services.store);
        let (device, session) = (self.device.device_id.clone(), self.sid());
        let (messages, keep) = (messages.to_vec(), self.services.config.store.history_limit);
        self.track(tokio::spawn(tracing::Instrument::in_current_span(async move {
            if let Err(e) = crate::store::append_history(store.as_ref(), &device, &session, &messages, keep).await {
                tracing::warn!("chat history not saved: {e}");
            }
        })));
    }

    fn cancel_turn(&mut self) {
        if let Some(turn) = self.turn.take() {
            turn.cancel.cancel();
        }
    }

    fn on_turn_done(&mut self, id: u64, outcome: TurnOutcome) -> Option<End> {
        self.save_history(&outcome.messages);
        self.history.extend(outcome.messages);
        if outcome.prompt.is_some() {
            self.prompt = outcome.prompt;
        }
        trim_history(&mut self.history, HISTORY_LIMIT);
        if self.turn.as_ref().is_none_or(|t| t.id != id) {
            // An aborted turn finishing late: keep what was said, change nothing else.
            return None;
        }
        self.turn = None;
        if outcome.close {
            return Some(End::Close(if self.goodbye_started { "no voice" } else { "exit command" }));
        }
        if outcome.heard_nothing {
            tracing::debug!("no words recognized");
        }
        // In realtime mode the user may already be speaking again: keep what was heard.
        if self.mode != ListenMode::Realtime
            && let Some(listener) = &mut self.listener
        {
            listener.reset();
        }
        None
    }
}

/// Drops the oldest messages beyond `limit`, cutting only before a user message so that tool
/// calls and their results stay together.
fn trim_history(history: &mut Vec<ChatMessage>, limit: usize) {
    if history.len() <= limit {
        return;
    }
    let excess = history.len() - limit;
    let cut = history.iter().enumerate().skip(excess).find(|(_, m)| m.role == Role::User).map(|(i, _)| i);
    match cut {
        Some(i) => {
            history.drain(..i);
        }
        None => history.clear(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_trimmed_at_user_boundaries() {
        let mut h = Vec::new();
        for i in 0..30 {
            h.push(ChatMessage::new(Role::User, format!("q{i}")));
            h.push(ChatMessage::tool_calls("", vec![]));
            h.push(ChatMessage::tool_result("c", "r"));
        }
        trim_history(&mut h, 40);
        assert!(h.len() <= 40);
        assert_eq!(h[0].role, Role::User);
        assert_eq!(h.last().map(|m| m.content.as_str()), Some("r"));
    }
}
