//! The rules of one device session, as a value.
//!
//! [`State::step`] takes one [`Event`] (a message from the device, what the listener heard, a turn
//! finishing, the clock) and `now`, changes the state and returns the [`Action`]s the session task
//! performs. Nothing here does I/O, reads a clock or runs a model, so every rule is a table test
//! of plain values (below) that reads like device-protocol.md. The session task
//! ([`super`]) only performs the actions and feeds back what came of them.
//!
//! The named phases ([`Phase`]): **Connecting** (no hello yet) → **Idle** → **Listening** (after
//! `listen start`) → **Recognising** (an utterance is with ASR) → **Replying** (the LLM and TTS
//! answer) → back to Listening or Idle; **Closed** at the end. Timers are deadlines
//! ([`State::deadline`]): the hello timeout, the hard inactivity cut and the registry refresh
//! fire whatever the device does or does not send.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::protocol::message::{ClientHello, Inbound, ListenMode, ListenState};
use crate::text;

/// Identifies a turn: a late result of a cancelled turn never acts on the session.
pub type TurnId = u64;

/// Shortest utterance worth sending to ASR (250 ms at 16 kHz).
pub const MIN_SPEECH_SAMPLES: usize = 16_000 / 4;

/// Extra wall-clock time after the no-voice timeout before a connection that sends nothing at all
/// is dropped (the Python server's hard cut: no-voice time + 60 s).
pub const HARD_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);

/// How often the session refreshes its device-registry entry.
pub const REGISTRY_REFRESH: Duration = Duration::from_secs(30);

/// The settings the rules depend on (from the config the session started with).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// A device has this long to send its hello.
    pub hello_timeout: Duration,
    /// Audio without voice (in audio time) after which the assistant says goodbye.
    pub no_voice: Duration,
    /// Wall-clock time without any message or audio after which the connection is dropped.
    pub inactivity: Duration,
    /// Whether the LLM says goodbye at the no-voice timeout (else the connection just closes).
    pub goodbye: bool,
    /// Whether a wake word gets a spoken greeting.
    pub greeting: bool,
    /// Wake words.
    pub wake_words: Vec<String>,
    /// Utterances that end the conversation.
    pub exit_commands: Vec<String>,
}

impl Rules {
    /// The rules of `config`.
    pub fn of(config: &crate::config::Config) -> Self {
        let no_voice = Duration::from_secs(config.close_connection_no_voice_time);
        Self {
            hello_timeout: Duration::from_millis(config.limits.hello_timeout_ms),
            no_voice,
            inactivity: no_voice + HARD_TIMEOUT_MARGIN,
            goodbye: config.end_prompt.enable,
            greeting: config.enable_greeting,
            wake_words: config.wakeup_words.clone(),
            exit_commands: config.exit_commands.clone(),
        }
    }
}

/// What the listener made of the audio the state let through ([`Action::Hear`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    /// Nothing to act on; `no_voice_ms` of audio have passed since the last voice.
    Nothing {
        /// Audio time since the last voice.
        no_voice_ms: u64,
    },
    /// Speech started (in realtime mode while we speak: a barge-in).
    SpeechStart,
    /// An utterance ended: 16 kHz PCM, pre-roll included.
    Utterance(Vec<i16>),
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message from the device.
    Message(Inbound),
    /// A text message that could not be understood, and why.
    BadMessage(String),
    /// One valid uplink audio packet arrived (the session holds its bytes).
    Audio,
    /// What the listener made of the packet(s) it was given.
    Heard(Heard),
    /// ASR finished for `turn`: the text, or `None` when recognition failed.
    Transcript {
        /// The turn.
        turn: TurnId,
        /// The recognized text; `None`: ASR failed.
        text: Option<String>,
    },
    /// The reply of `turn` is over; `close` when it ends the conversation (an exit tool, the
    /// no-voice goodbye).
    TurnDone {
        /// The turn.
        turn: TurnId,
        /// The session should close.
        close: bool,
    },
    /// [`State::deadline`] has passed (or any moment: the rules look at `now`).
    Tick,
    /// The server is stopping.
    Shutdown,
    /// The device is gone, or the connection failed (it cannot take a Close frame).
    WireGone,
}

/// What a reply answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The user's words (recognized or typed).
    Text(String),
    /// The no-voice timeout: the LLM says goodbye (`end_prompt`), then the session closes.
    Goodbye,
    /// ASR failed: the device hears the error response.
    Error,
}

/// What the session task must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send our hello; start talking to the device's MCP server if the hello announces one.
    AnswerHello(ClientHello),
    /// Tell the device its message was not understood.
    SendError(String),
    /// Answer a `ping`.
    Pong,
    /// Hand a JSON-RPC message to the device's MCP client.
    ForwardMcp(Value),
    /// Decode the audio packet and run it through the listener (`manual`: buffer it all, the
    /// button ends the utterance); what it heard comes back as [`Event::Heard`].
    Hear {
        /// Push-to-talk: no VAD.
        manual: bool,
    },
    /// Push-to-talk released: hand what the listener buffered back as [`Heard::Utterance`] (if any).
    EndUtterance,
    /// The VAD heard speech start: open a recognition and feed it the utterance as it is heard
    /// (pre-roll first), so ASR works while the user speaks.
    StartRecognition,
    /// Forget any partial utterance and VAD state.
    ResetListener,
    /// Cancel the running turn (providers, tools, queued audio).
    CancelTurn,
    /// The speaker stops now and says `tts stop`.
    StopSpeaking,
    /// Show the user's text (`stt`).
    Stt(String),
    /// A turn begins with ASR on this utterance; the text comes back as [`Event::Transcript`].
    Recognise {
        /// The new turn.
        turn: TurnId,
        /// 16 kHz PCM.
        pcm: Vec<i16>,
    },
    /// The LLM and TTS answer; [`Event::TurnDone`] follows.
    Reply {
        /// The turn (new for typed text and the goodbye, else the recognising one).
        turn: TurnId,
        /// What is answered.
        to: Reply,
    },
    /// An utterance held no words: nothing was said.
    HeardNothing,
    /// Refresh this instance's entry in the device registry.
    Register,
    /// Send Close with this reason, then end.
    Close(&'static str),
    /// End without a close handshake (the wire is gone).
    End,
}

/// The phase a session is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected; no hello yet.
    Connecting,
    /// Hello done; the microphone is not open (or push-to-talk was released).
    Idle,
    /// `listen start`: the device streams its microphone.
    Listening,
    /// An utterance is being recognized.
    Recognising,
    /// The assistant answers.
    Replying,
    /// The session is over.
    Closed,
}

/// Where the running turn is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Recognising,
    Replying,
}

/// The state of one session.
#[derive(Debug, Clone)]
pub struct State {
    rules: std::sync::Arc<Rules>,
    hello: bool,
    closed: bool,
    mode: ListenMode,
    listening: bool,
    turn: Option<(TurnId, Stage)>,
    next_turn: TurnId,
    goodbye_started: bool,
    connected_at: Instant,
    last_activity: Instant,
    registered_at: Instant,
}

impl State {
    /// A session whose device connected at `now` (and was registered then), under `rules`
    /// (shared: every session of one config has the same).
    pub fn new(rules: std::sync::Arc<Rules>, now: Instant) -> Self {
        Self {
            rules,
            hello: false,
            closed: false,
            mode: ListenMode::Auto,
            listening: false,
            turn: None,
            next_turn: 1,
            goodbye_started: false,
            connected_at: now,
            last_activity: now,
            registered_at: now,
        }
    }

    /// The phase the session is in.
    pub fn phase(&self) -> Phase {
        match (self.closed, self.hello, self.turn, self.listening) {
            (true, ..) => Phase::Closed,
            (false, false, ..) => Phase::Connecting,
            (false, true, Some((_, Stage::Recognising)), _) => Phase::Recognising,
            (false, true, Some((_, Stage::Replying)), _) => Phase::Replying,
            (false, true, None, true) => Phase::Listening,
            (false, true, None, false) => Phase::Idle,
        }
    }

    /// The listening mode the device asked for last.
    pub fn mode(&self) -> ListenMode {
        self.mode
    }

    /// The running turn, if any.
    pub fn turn(&self) -> Option<TurnId> {
        self.turn.map(|(id, _)| id)
    }

    /// When [`Event::Tick`] is next due: the hello timeout, the inactivity cut or the registry
    /// refresh, whichever comes first.
    pub fn deadline(&self) -> Instant {
        let mut next = self.registered_at + REGISTRY_REFRESH;
        if !self.hello {
            next = next.min(self.connected_at + self.rules.hello_timeout);
        }
        if self.turn.is_none() {
            next = next.min(self.last_activity + self.rules.inactivity);
        }
        next
    }

    /// Applies `event` at `now`; returns what to do, in order.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        let mut out = Vec::new();
        match event {
            Event::Message(message) => {
                self.last_activity = now;
                self.on_message(message, &mut out);
            }
            Event::BadMessage(why) => {
                self.last_activity = now;
                out.push(Action::SendError(why));
            }
            Event::Audio => {
                self.last_activity = now;
                // While we speak the microphone is heard only in realtime mode (the device has
                // echo cancellation there): that is what makes a barge-in possible.
                let busy = self.turn.is_some() && self.mode != ListenMode::Realtime;
                if self.hello && self.listening && !busy {
                    out.push(Action::Hear { manual: self.mode == ListenMode::Manual });
                }
            }
            Event::Heard(heard) => self.on_heard(heard, &mut out),
            Event::Transcript { turn, text } => self.on_transcript(turn, text, &mut out),
            Event::TurnDone { turn, close } => {
                if self.turn() != Some(turn) {
                    // A cancelled turn finishing late changes nothing.
                    return out;
                }
                self.turn = None;
                if close {
                    self.close(if self.goodbye_started { "no voice" } else { "exit command" }, &mut out);
                } else if self.mode != ListenMode::Realtime {
                    // In realtime mode the user may already be speaking again: keep what was heard.
                    out.push(Action::ResetListener);
                }
            }
            Event::Tick => self.on_tick(now, &mut out),
            Event::Shutdown => self.close("server shutting down", &mut out),
            Event::WireGone => {
                self.cancel_turn(&mut out);
                self.closed = true;
                out.push(Action::End);
            }
        }
        out
    }

    fn on_message(&mut self, message: Inbound, out: &mut Vec<Action>) {
        if let Inbound::Hello(hello) = message {
            self.hello = true;
            out.push(Action::AnswerHello(hello));
            return;
        }
        if !self.hello {
            out.push(Action::SendError("send a hello first".into()));
            return;
        }
        match message {
            Inbound::Hello(_) => {}
            Inbound::Listen(listen) => match listen.state {
                ListenState::Start => {
                    if let Some(mode) = listen.mode {
                        self.mode = mode;
                    }
                    self.listening = true;
                    out.push(Action::ResetListener);
                }
                ListenState::Stop => {
                    if self.listening && self.turn.is_none() {
                        self.listening = false;
                        out.push(Action::EndUtterance);
                    }
                }
                ListenState::Detect => {
                    let text = listen.text.as_deref().map(str::trim).unwrap_or_default();
                    if !text.is_empty() {
                        self.on_typed(text.to_owned(), out);
                    }
                }
            },
            Inbound::Abort(_) => {
                self.cancel_turn(out);
                // After an abort the device stays in Speaking until it hears `tts stop`.
                out.push(Action::StopSpeaking);
            }
            Inbound::Mcp(payload) => out.push(Action::ForwardMcp(payload)),
            Inbound::Iot => {}
            Inbound::Goodbye => self.close("device said goodbye", out),
            Inbound::Ping => out.push(Action::Pong),
        }
    }

    /// `listen detect`: a wake word (a greeting, or just `stt` + `tts stop` without one), an exit
    /// command, or a typed turn.
    fn on_typed(&mut self, text: String, out: &mut Vec<Action>) {
        if text::matches_any(&text, &self.rules.exit_commands) {
            self.cancel_turn(out);
            out.push(Action::Stt(text));
            self.close("exit command", out);
        } else if text::matches_any(&text, &self.rules.wake_words) && !self.rules.greeting {
            out.push(Action::Stt(text));
            out.push(Action::StopSpeaking);
        } else {
            // A new utterance while we still speak replaces the old reply.
            self.cancel_turn(out);
            out.push(Action::Stt(text.clone()));
            let turn = self.new_turn(Stage::Replying);
            out.push(Action::Reply { turn, to: Reply::Text(text) });
        }
    }

    fn on_heard(&mut self, heard: Heard, out: &mut Vec<Action>) {
        match heard {
            Heard::Utterance(pcm) if pcm.len() < MIN_SPEECH_SAMPLES => {
                out.push(Action::HeardNothing);
                if self.mode != ListenMode::Realtime {
                    out.push(Action::ResetListener);
                }
            }
            Heard::Utterance(pcm) => {
                self.cancel_turn(out);
                let turn = self.new_turn(Stage::Recognising);
                out.push(Action::Recognise { turn, pcm });
            }
            Heard::SpeechStart => {
                if self.turn.is_some() {
                    // Barge-in: the user speaks over the reply.
                    self.cancel_turn(out);
                    out.push(Action::StopSpeaking);
                }
                out.push(Action::StartRecognition);
            }
            Heard::Nothing { no_voice_ms } => {
                let silent = Duration::from_millis(no_voice_ms) >= self.rules.no_voice;
                if self.turn.is_none() && silent && !self.goodbye_started {
                    self.goodbye_started = true;
                    if self.rules.goodbye {
                        let turn = self.new_turn(Stage::Replying);
                        out.push(Action::Reply { turn, to: Reply::Goodbye });
                    } else {
                        self.close("no voice", out);
                    }
                }
            }
        }
    }

    fn on_transcript(&mut self, turn: TurnId, text: Option<String>, out: &mut Vec<Action>) {
        if self.turn != Some((turn, Stage::Recognising)) {
            return;
        }
        let Some(text) = text else {
            self.turn = Some((turn, Stage::Replying));
            out.push(Action::Reply { turn, to: Reply::Error });
            return;
        };
        let text = text.trim().to_owned();
        if text.is_empty() {
            self.turn = None;
            out.push(Action::HeardNothing);
            if self.mode != ListenMode::Realtime {
                out.push(Action::ResetListener);
            }
        } else if text::matches_any(&text, &self.rules.exit_commands) {
            self.turn = None;
            out.push(Action::Stt(text));
            self.close("exit command", out);
        } else {
            self.turn = Some((turn, Stage::Replying));
            out.push(Action::Stt(text.clone()));
            out.push(Action::Reply { turn, to: Reply::Text(text) });
        }
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.hello && now >= self.connected_at + self.rules.hello_timeout {
            self.close("no hello in time", out);
            return;
        }
        if self.turn.is_none() && now >= self.last_activity + self.rules.inactivity {
            self.close("inactive", out);
            return;
        }
        if now >= self.registered_at + REGISTRY_REFRESH {
            self.registered_at = now;
            out.push(Action::Register);
        }
    }

    fn new_turn(&mut self, stage: Stage) -> TurnId {
        let id = self.next_turn;
        self.next_turn += 1;
        self.turn = Some((id, stage));
        id
    }

    fn cancel_turn(&mut self, out: &mut Vec<Action>) {
        if self.turn.take().is_some() {
            out.push(Action::CancelTurn);
        }
    }

    fn close(&mut self, reason: &'static str, out: &mut Vec<Action>) {
        self.cancel_turn(out);
        self.closed = true;
        out.push(Action::Close(reason));
    }
}

#[cfg(test)]
mod tests;
