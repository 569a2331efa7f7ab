//! The per-device session: one task that owns everything about one connected device.
//!
//! The rules live in [`state`], a pure state machine (`step(event, now) → actions`); this module
//! is its shell: it turns what the [`Connection`] yields, what turns report and the clock into
//! [`state::Event`]s, and performs the [`state::Action`]s that come back. It never touches a
//! socket: messages go out through the [`Outbox`] (which never waits) and audio through the
//! session's [`Speaker`].
//!
//! Nothing mutable is shared between devices: each session has its own Opus decoder, VAD state,
//! pre-roll ring, utterance buffer (`listener`), dialogue, speaker and MCP client. (The VAD
//! *model* is shared and batched across sessions; each session keeps its own recurrent state.)
//! Turns run as their own tasks (ASR, then LLM and TTS) and report back through a channel. The
//! loop `select!`s over server shutdown, the connection going away, finished turns, the socket
//! and the state's next deadline, and nothing in it waits on the device, so the timers always
//! fire.
//!
//! Listening: in `auto` and `realtime` modes Silero VAD finds the end of each utterance, counting
//! silence in audio time (frames received), so a stall of ours can never split an utterance; the
//! pre-roll ring makes sure the first syllable reaches ASR. In `manual` mode everything between
//! `listen start` and `listen stop` is the utterance. In `realtime` mode the microphone is heard
//! while we speak too: speech from the user stops the reply (barge-in) and becomes the next turn.

pub mod state;

mod listener;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, Event as Incoming, Outbound, Outbox};
use crate::extensions::{CallContext, ExtensionScope};
use crate::llm::{ChatMessage, Role};
use crate::mcp::McpClient;
use crate::memory;
use crate::metrics::{GaugeGuard, TurnLabels};
use crate::protocol::message::ClientHello;
use crate::services::Services;
use crate::speaker::Speaker;
use crate::tools::ToolBox;
use crate::turn::{TurnContext, TurnOutcome};

use listener::Listener;
use state::{Action, Event, Heard, Reply, State, TurnId};

/// Dialogue messages kept per session (older ones are dropped at a user-message boundary).
pub const HISTORY_LIMIT: usize = 40;

/// How long a device's registry entry (which instance holds it) lives without a refresh.
pub const REGISTRY_TTL: std::time::Duration = std::time::Duration::from_secs(90);

/// Who is connecting, from the upgrade request.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// `Device-Id` (the MAC address).
    pub device_id: String,
    /// `Client-Id` (a UUID).
    pub client_id: String,
    /// Where the device is told to post camera photos (MCP `initialize`), when a vision model is
    /// selected.
    pub vision: Option<crate::vision::VisionOffer>,
}

/// Runs one device session to its end. `shutdown` fires when the server stops.
pub async fn run(
    mut connection: Connection,
    outbox: Outbox,
    device: DeviceInfo,
    services: Arc<Services>,
    shutdown: CancellationToken,
) {
    let _open = GaugeGuard::new(&services.metrics.sessions);
    services.metrics.sessions_total.inc();
    let span = tracing::info_span!("session", device = %device.device_id, session = %connection.session_id());
    let mut session = Session::new(device, services, outbox.clone());
    tracing::info!(parent: &span, "device connected");
    session.register(true);
    let end = tracing::Instrument::instrument(session.run(&mut connection, &shutdown), span.clone()).await;
    session.end_turn().await;
    session.register(false);
    match end {
        End::Gone => tracing::info!(parent: &span, "device disconnected"),
        End::Close(why) => {
            tracing::info!(parent: &span, "closing: {why}");
            outbox.close(why).await;
            connection.drain().await;
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
    /// The device dropped the connection (or sent Close), or the connection failed.
    Gone,
    /// We close, for this reason.
    Close(&'static str),
}

/// What the recognition task is fed, in order.
enum Feed {
    /// The next audio of the utterance.
    Audio(Vec<i16>),
    /// The utterance is over: the text goes to `turn`, unless `cancel` fires first.
    Finish { turn: TurnId, cancel: CancellationToken },
}

/// Feed items a recognition may have waiting (60 ms packets: a minute of audio); beyond, audio is
/// dropped (logged) rather than the session waiting.
const RECOGNITION_FEED: usize = 1024;

/// How long a session that is over waits for its cancelled turn to report what was said.
const LAST_REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The recognition of the utterance being heard: a task fed in order (see [`recognition`]).
struct Recognizer {
    feed: mpsc::Sender<Feed>,
    /// Samples of the listener's utterance already fed.
    pushed: usize,
}

/// One utterance's recognition task: opens a [`Recognition`](crate::asr::Recognition) (a
/// streaming one, or the buffered adapter of whole-utterance backends), pushes the audio as it
/// comes and, at [`Feed::Finish`], reports the final text. Dropping the feed aborts it.
async fn recognition(services: Arc<Services>, mut feed: mpsc::Receiver<Feed>, reports: mpsc::Sender<TurnReport>) {
    let mut open = match crate::asr::start(&services.asr).await {
        Ok(open) => Some(open),
        Err(e) => {
            tracing::warn!("ASR failed to start: {e}");
            None
        }
    };
    while let Some(item) = feed.recv().await {
        match item {
            Feed::Audio(pcm) => {
                if let Some(recognition) = &mut open
                    && let Err(e) = recognition.push(&pcm).await
                {
                    tracing::warn!("ASR failed while listening: {e}");
                    open = None;
                }
            }
            Feed::Finish { turn, cancel } => {
                let text = match open.take() {
                    Some(recognition) => tokio::select! {
                        _ = cancel.cancelled() => return,
                        text = recognition.finish() => text.map_err(|e| e.to_string()),
                    },
                    None => Err("no recognition".to_owned()),
                };
                let text = text
                    .inspect_err(|e| {
                        tracing::warn!("ASR failed: {e}");
                        services.metrics.provider_error("asr");
                    })
                    .ok();
                let _ = reports.send(TurnReport::Transcript { turn, text }).await;
                return;
            }
        }
    }
}

/// What a turn's tasks report.
enum TurnReport {
    /// ASR finished (`None`: it failed).
    Transcript { turn: TurnId, text: Option<String> },
    /// The reply is written and queued for the speaker: its dialogue, reported before the device
    /// hears the reply end (the device may ask again the moment it gets `tts stop`).
    Said { outcome: TurnOutcome },
    /// The reply is over: the speaker has sent `tts stop` (or the turn was cancelled).
    Done { turn: TurnId, close: bool },
}

/// The running turn, as the shell holds it.
struct ActiveTurn {
    id: TurnId,
    cancel: CancellationToken,
    /// When the utterance was complete (or the text arrived): the first-audio metric's start.
    started: std::time::Instant,
    /// Counts the turn in `xiaozhi_turns_active` while it lives.
    _active: GaugeGuard,
}

struct Session {
    device: DeviceInfo,
    services: Arc<Services>,
    outbox: Outbox,
    state: State,
    /// The audio packet of the [`Incoming::Audio`] being stepped, for [`Action::Hear`].
    packet: Option<Bytes>,
    /// Created by the first audio frame: idle devices cost no decoder, VAD or pre-roll memory.
    listener: Option<Listener>,
    /// The recognition of the utterance being heard (from the VAD's speech start).
    recognizer: Option<Recognizer>,
    /// Created on the first reply (or abort).
    speaker: Option<Speaker>,
    mcp: Option<Arc<McpClient>>,
    history: Vec<ChatMessage>,
    /// The system prompt set by a tool's effect; `None`: the configured prompt.
    prompt: Option<String>,
    /// The lines `context` extensions add to the prompt (asked for when the session starts).
    context: crate::turn::ContextLines,
    turn: Option<ActiveTurn>,
    reports_tx: mpsc::Sender<TurnReport>,
    reports: mpsc::Receiver<TurnReport>,
    /// Replies started whose [`TurnReport::Done`] has not been taken yet.
    replies_due: usize,
    bad_frames: u64,
    bad_messages: u64,
    /// Store writes in flight (history, registry); awaited before the session ends, so a server
    /// shutdown (which waits for sessions) never cuts them off.
    writes: Vec<tokio::task::JoinHandle<()>>,
}

impl Session {
    fn new(device: DeviceInfo, services: Arc<Services>, outbox: Outbox) -> Self {
        let (reports_tx, reports) = mpsc::channel(4);
        let state = State::new(Arc::clone(&services.rules), Instant::now().into_std());
        Self {
            device,
            services,
            outbox,
            state,
            packet: None,
            listener: None,
            recognizer: None,
            speaker: None,
            mcp: None,
            history: Vec::new(),
            prompt: None,
            context: Arc::default(),
            turn: None,
            reports_tx,
            reports,
            replies_due: 0,
            bad_frames: 0,
            bad_messages: 0,
            writes: Vec::new(),
        }
    }

    async fn run(&mut self, connection: &mut Connection, shutdown: &CancellationToken) -> End {
        self.prefetch_context();
        loop {
            let deadline = Instant::from_std(self.state.deadline());
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Event::Shutdown,
                _ = self.outbox.gone() => Event::WireGone,
                Some(report) = self.reports.recv() => match self.on_report(report) {
                    Some(event) => event,
                    None => continue,
                },
                incoming = connection.recv() => match self.on_incoming(incoming) {
                    Some(event) => event,
                    None => continue,
                },
                _ = tokio::time::sleep_until(deadline) => Event::Tick,
            };
            if let Some(end) = self.apply(event).await {
                return end;
            }
        }
    }

    /// What the connection yielded, as a state event (`None`: nothing for the rules).
    fn on_incoming(&mut self, incoming: Incoming) -> Option<Event> {
        Some(match incoming {
            Incoming::Message(message) => Event::Message(message),
            Incoming::BadMessage(e) => {
                // Logged at powers of two: a device sending garbage cannot flood the log.
                self.bad_messages += 1;
                if self.bad_messages.is_power_of_two() {
                    tracing::warn!("bad message from device ({} so far): {e}", self.bad_messages);
                }
                Event::BadMessage(e.to_string())
            }
            Incoming::Audio { opus, .. } => {
                self.packet = Some(opus);
                Event::Audio
            }
            Incoming::BadAudio(e) => {
                self.count_bad_frame(&e);
                return None;
            }
            Incoming::Gone => Event::WireGone,
        })
    }

    /// Steps the state with `first` and everything its actions lead to; performs the actions.
    async fn apply(&mut self, first: Event) -> Option<End> {
        let mut events = VecDeque::from([first]);
        while let Some(event) = events.pop_front() {
            for action in self.state.step(event, Instant::now().into_std()) {
                match action {
                    Action::AnswerHello(hello) => self.answer_hello(hello),
                    Action::SendError(message) => self.send(Outbound::Error(message)),
                    Action::Pong => self.send(Outbound::Pong),
                    Action::ForwardMcp(payload) => match &self.mcp {
                        Some(mcp) => mcp.handle_incoming(&payload),
                        None => tracing::debug!("MCP message from a device that did not announce MCP"),
                    },
                    Action::Hear { manual } => {
                        if let Some(heard) = self.hear(manual).await {
                            events.push_back(Event::Heard(heard));
                        }
                        self.feed_recognition();
                    }
                    Action::StartRecognition => {
                        self.start_recognition();
                        self.feed_recognition();
                    }
                    Action::EndUtterance => {
                        let pcm = self.listener.as_mut().map(Listener::take_utterance).unwrap_or_default();
                        if !pcm.is_empty() {
                            events.push_back(Event::Heard(Heard::Utterance(pcm)));
                        }
                    }
                    Action::ResetListener => {
                        if let Some(listener) = &mut self.listener {
                            listener.reset();
                        }
                        // Dropping the feed aborts a recognition in progress.
                        self.recognizer = None;
                    }
                    Action::CancelTurn => self.cancel_turn(),
                    Action::StopSpeaking => self.speaker().stop(),
                    Action::Stt(text) => self.send(Outbound::Stt(text)),
                    Action::Recognise { turn, pcm } => self.recognise(turn, pcm),
                    Action::Reply { turn, to } => self.reply(turn, to),
                    Action::HeardNothing => {
                        tracing::debug!("no words recognized");
                        self.count_turn("heard_nothing");
                    }
                    Action::Register => self.register(true),
                    Action::Close(why) => return Some(End::Close(why)),
                    Action::End => return Some(End::Gone),
                }
            }
            // The shell's turn follows the state's (a transcript without words ends it).
            if self.turn.as_ref().map(|t| t.id) != self.state.turn() {
                self.turn = None;
            }
        }
        None
    }

    /// Queues a message; a full queue closes the connection, which the loop then sees.
    fn send(&self, message: Outbound) {
        let _ = self.outbox.send(message);
    }

    fn answer_hello(&mut self, hello: ClientHello) {
        let config = &self.services.config;
        self.send(Outbound::Hello { audio_params: config.xiaozhi.audio_params.clone() });
        if let Some(params) = &hello.audio_params
            && params.sample_rate.is_some_and(|r| r != crate::audio::UPLINK_SAMPLE_RATE)
        {
            tracing::warn!(
                "device announces uplink {:?} Hz; decoding as 16 kHz like the firmware sends",
                params.sample_rate
            );
        }
        if hello.features.mcp && self.mcp.is_none() {
            let mcp = McpClient::new(self.outbox.clone(), &config.limits, Arc::clone(&self.services.metrics));
            // A fresh vision token for every `initialize` sent (the retry included).
            let vision = self.device.vision.clone().map(|offer| {
                let device = self.device.device_id.clone();
                Box::new(move || offer.grant(&device)) as crate::mcp::VisionGrant
            });
            mcp.start(vision);
            self.mcp = Some(mcp);
        }
        tracing::info!("hello: mcp {}", hello.features.mcp);
    }

    /// Runs the audio packet being stepped through the listener (made on first use).
    async fn hear(&mut self, manual: bool) -> Option<Heard> {
        let packet = self.packet.take()?;
        if self.listener.is_none() {
            match Listener::new(Arc::clone(&self.services.vad), &self.services.vad_config) {
                Ok(listener) => self.listener = Some(listener),
                Err(e) => {
                    tracing::error!("cannot start listening: {e}");
                    return None;
                }
            }
        }
        let listener = self.listener.as_mut()?;
        match listener.push_packet(&packet, manual).await {
            Ok(heard) => Some(heard),
            Err(e) => {
                self.count_bad_frame(&e);
                None
            }
        }
    }

    fn count_bad_frame(&mut self, error: &dyn std::fmt::Display) {
        self.bad_frames += 1;
        if self.bad_frames.is_power_of_two() {
            tracing::warn!("dropped bad audio frame ({} so far): {error}", self.bad_frames);
        }
    }

    fn count_turn(&self, outcome: &'static str) {
        self.services.metrics.turns.get_or_create(&TurnLabels { outcome }).inc();
    }

    /// The session's speaker, started on first use.
    fn speaker(&mut self) -> Speaker {
        let config = &self.services.config;
        self.speaker
            .get_or_insert_with(|| {
                let metrics = Arc::clone(&self.services.metrics);
                let load = Arc::clone(&self.services.encoder_load);
                Speaker::spawn(self.outbox.clone(), &config.xiaozhi.audio_params, &config.audio, metrics, load)
            })
            .clone()
    }

    /// The cancellation token and start time of the running turn `id`, made if it is new.
    fn active(&mut self, id: TurnId) -> (CancellationToken, std::time::Instant) {
        if let Some(turn) = self.turn.as_ref().filter(|t| t.id == id) {
            return (turn.cancel.clone(), turn.started);
        }
        let turn = ActiveTurn {
            id,
            cancel: CancellationToken::new(),
            started: std::time::Instant::now(),
            _active: GaugeGuard::new(&self.services.metrics.turns_active),
        };
        let handles = (turn.cancel.clone(), turn.started);
        self.turn = Some(turn);
        handles
    }

    /// Opens the recognition of the utterance the VAD just heard start, in its own task.
    fn start_recognition(&mut self) {
        let (feed, rx) = mpsc::channel(RECOGNITION_FEED);
        let (services, reports) = (Arc::clone(&self.services), self.reports_tx.clone());
        tokio::spawn(tracing::Instrument::in_current_span(recognition(services, rx, reports)));
        self.recognizer = Some(Recognizer { feed, pushed: 0 });
    }

    /// Feeds the recognition what the listener has heard of the utterance since the last time.
    fn feed_recognition(&mut self) {
        let (Some(recognizer), Some(listener)) = (&mut self.recognizer, &self.listener) else { return };
        if !listener.in_speech() {
            return;
        }
        let heard = listener.utterance();
        if let Some(fresh) = heard.get(recognizer.pushed..).filter(|fresh| !fresh.is_empty()) {
            if recognizer.feed.try_send(Feed::Audio(fresh.to_vec())).is_err() {
                tracing::warn!("the recognition is not keeping up; audio dropped");
            }
            recognizer.pushed = heard.len();
        }
    }

    /// The utterance is over: its recognition (opened at speech start, or now, for push-to-talk)
    /// gets the rest of the audio and finishes; the text comes back as a transcript of `id`.
    fn recognise(&mut self, id: TurnId, pcm: Vec<i16>) {
        let (cancel, _) = self.active(id);
        if self.recognizer.is_none() {
            self.start_recognition();
        }
        let Some(recognizer) = self.recognizer.take() else { return };
        let rest = pcm.get(recognizer.pushed.min(pcm.len())..).unwrap_or_default();
        let fed = (rest.is_empty() || recognizer.feed.try_send(Feed::Audio(rest.to_vec())).is_ok())
            && recognizer.feed.try_send(Feed::Finish { turn: id, cancel }).is_ok();
        if !fed {
            tracing::warn!("the recognition is not keeping up; the utterance is lost");
        }
    }

    /// The LLM and TTS answer, in the turn's own task.
    fn reply(&mut self, id: TurnId, to: Reply) {
        let speaker = self.speaker();
        let extensions = self.extension_scope();
        let (cancel, started) = self.active(id);
        let ctx = TurnContext {
            reply: to,
            services: Arc::clone(&self.services),
            history: self.history.clone(),
            outbox: self.outbox.clone(),
            speaker,
            tools: ToolBox::new(self.mcp.clone(), extensions.clone(), self.services.functions.clone())
                .with_endpoint(Arc::clone(&self.services.mcp_endpoint), &self.device.device_id)
                .with_servers(
                    Arc::clone(&self.services.mcp_servers),
                    std::time::Duration::from_millis(self.services.config.limits.mcp_server_call_timeout_ms),
                ),
            started,
            extensions,
            prompt: self.prompt.clone(),
            context: Arc::clone(&self.context),
            cancel,
        };
        let reports = self.reports_tx.clone();
        self.replies_due += 1;
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let outcome = crate::turn::run(&ctx).await;
            let close = outcome.close;
            let _ = reports.send(TurnReport::Said { outcome }).await;
            crate::turn::finish(&ctx).await;
            let _ = reports.send(TurnReport::Done { turn: id, close }).await;
        }));
    }

    /// A turn's report as a state event, if it is one; a reply's messages join the dialogue and
    /// the stored history whether or not the turn was cancelled meanwhile.
    fn on_report(&mut self, report: TurnReport) -> Option<Event> {
        match report {
            TurnReport::Transcript { turn, text } => Some(Event::Transcript { turn, text }),
            TurnReport::Said { outcome } => {
                let cap = self.services.config.limits.history_entry_bytes;
                let messages: Vec<ChatMessage> =
                    outcome.messages.into_iter().map(|message| crate::llm::capped(message, cap)).collect();
                self.save_history(&messages);
                self.history.extend(messages);
                if outcome.prompt.is_some() {
                    self.prompt = outcome.prompt;
                }
                trim_history(&mut self.history, HISTORY_LIMIT);
                None
            }
            TurnReport::Done { turn, close } => {
                self.replies_due = self.replies_due.saturating_sub(1);
                if self.turn.as_ref().is_some_and(|t| t.id == turn) {
                    self.count_turn("answered");
                }
                Some(Event::TurnDone { turn, close })
            }
        }
    }

    /// The session is over: the turn under way is cancelled, and the reports of the turns that
    /// are done (what was said, maybe already waiting in the channel, or sent by the cancelled
    /// turn within [`LAST_REPORT_WAIT`]) still join the stored history: a device that hangs up
    /// right after the reply loses none of it.
    async fn end_turn(&mut self) {
        self.cancel_turn();
        let deadline = Instant::now() + LAST_REPORT_WAIT;
        while self.replies_due > 0 {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => {
                    self.on_report(report);
                }
                _ => {
                    tracing::debug!("a cancelled turn did not report within {LAST_REPORT_WAIT:?}");
                    return;
                }
            }
        }
    }

    fn cancel_turn(&mut self) {
        if let Some(turn) = self.turn.take() {
            turn.cancel.cancel();
            self.count_turn("cancelled");
        }
    }

    /// Records in the store that this instance holds the device (`held`), or that it no longer
    /// does, and when it was last seen, in the background; a store failure is logged and changes
    /// nothing else.
    fn register(&mut self, held: bool) {
        let store = Arc::clone(&self.services.store);
        let (device, instance) = (self.device.device_id.clone(), self.services.instance.to_string());
        self.track(tokio::spawn(async move {
            let now = crate::store::now_ms() / 1000;
            if let Err(e) = crate::store::refresh_device_seen(store.as_ref(), &device, now).await {
                tracing::warn!(device, "cannot note when the device was seen: {e}");
            }
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

    /// Starts asking the `context` extensions for the session's prompt lines, so that the first
    /// turn normally finds them ready (it waits for them otherwise).
    fn prefetch_context(&self) {
        let Some(scope) = self.extension_scope() else { return };
        if scope.snapshot.of_kind(crate::extensions::Kind::Context).next().is_none() {
            return;
        }
        let cell = Arc::clone(&self.context);
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            cell.get_or_init(|| crate::turn::context_lines(&scope)).await;
        }));
    }

    /// The extensions for a new turn (or the final memory save): the registry's current snapshot.
    fn extension_scope(&self) -> Option<ExtensionScope> {
        let registry = self.services.extensions.as_ref()?;
        Some(ExtensionScope {
            snapshot: registry.snapshot(),
            host: Arc::clone(registry.host()),
            context: CallContext {
                device_id: self.device.device_id.clone(),
                session_id: self.outbox.session_id().to_string(),
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
        let (device, session) = (self.device.device_id.clone(), self.outbox.session_id().to_string());
        let (messages, keep) = (messages.to_vec(), self.services.config.store.history_limit);
        self.track(tokio::spawn(tracing::Instrument::in_current_span(async move {
            if let Err(e) = crate::store::append_history(store.as_ref(), &device, &session, &messages, keep).await {
                tracing::warn!("chat history not saved: {e}");
            }
        })));
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
