//! The session rules as a table: plain values, no socket, model or clock. Each row says a rule of
//! device-protocol.md (§1.4 messages, §1.7 device states, §7 timing) in words, the events that
//! lead up to it, the event, and the actions and phase that must follow.

use std::time::{Duration, Instant};

use super::*;
use crate::protocol::message::{Abort, Listen};

fn rules(greeting: bool, goodbye: bool) -> Rules {
    Rules {
        hello_timeout: Duration::from_secs(10),
        no_voice: Duration::from_secs(120),
        inactivity: Duration::from_secs(180),
        goodbye,
        greeting,
        wake_words: vec!["你好小智".into()],
        exit_commands: vec!["退出".into(), "关闭".into()],
    }
}

fn hello() -> Event {
    Event::Message(Inbound::Hello(ClientHello::default()))
}

fn listen(state: ListenState, mode: Option<ListenMode>) -> Event {
    Event::Message(Inbound::Listen(Listen { state, mode, text: None }))
}

fn start(mode: ListenMode) -> Event {
    listen(ListenState::Start, Some(mode))
}

fn detect(text: &str) -> Event {
    Event::Message(Inbound::Listen(Listen { state: ListenState::Detect, mode: None, text: Some(text.into()) }))
}

fn abort() -> Event {
    Event::Message(Inbound::Abort(Abort { reason: None }))
}

fn utterance(samples: usize) -> Event {
    Event::Heard(Heard::Utterance(vec![1; samples]))
}

fn transcript(turn: TurnId, text: &str) -> Event {
    Event::Transcript { turn, text: Some(text.into()) }
}

fn silence(ms: u64) -> Event {
    Event::Heard(Heard::Nothing { no_voice_ms: ms })
}

const SPEECH: usize = 16_000;

/// A rule: from a fresh session at t0, `given` happens (each at t0 + its seconds), then `when` at
/// t0 + `at` seconds must give exactly `then` and leave the session in `phase`.
struct Rule {
    says: &'static str,
    rules: Rules,
    given: Vec<(f64, Event)>,
    at: f64,
    when: Event,
    then: Vec<Action>,
    phase: Phase,
}

fn rule(says: &'static str, given: Vec<(f64, Event)>, at: f64, when: Event, then: Vec<Action>, phase: Phase) -> Rule {
    Rule { says, rules: rules(false, true), given, at, when, then, phase }
}

fn table() -> Vec<Rule> {
    let ready = || vec![(0.0, hello())];
    let listening = |mode| vec![(0.0, hello()), (0.1, start(mode))];
    let recognising = |mode| {
        let mut given = listening(mode);
        given.push((2.0, utterance(SPEECH)));
        given
    };
    let replying = |mode| {
        let mut given = recognising(mode);
        given.push((2.5, transcript(1, "turn on the light")));
        given
    };
    let reply_1 = Action::Reply { turn: 1, to: Reply::Text("turn on the light".into()) };
    vec![
        // §1.2 / §1.3: the hello.
        rule(
            "the hello is answered",
            vec![],
            0.5,
            hello(),
            vec![Action::AnswerHello(ClientHello::default())],
            Phase::Idle,
        ),
        rule(
            "anything before the hello is refused with an error",
            vec![],
            0.5,
            start(ListenMode::Auto),
            vec![Action::SendError("send a hello first".into())],
            Phase::Connecting,
        ),
        rule("audio before the hello is not heard", vec![], 0.5, Event::Audio, vec![], Phase::Connecting),
        rule(
            "a device has 10 s to say hello",
            vec![(9.0, Event::Audio)],
            10.0,
            Event::Tick,
            vec![Action::Close("no hello in time")],
            Phase::Closed,
        ),
        rule("within 10 s nothing happens", vec![], 9.9, Event::Tick, vec![], Phase::Connecting),
        // §1.4 listen start / stop, listening modes.
        rule(
            "listen start opens the microphone",
            ready(),
            1.0,
            start(ListenMode::Auto),
            vec![Action::ResetListener],
            Phase::Listening,
        ),
        rule(
            "audio is heard while listening",
            listening(ListenMode::Auto),
            1.0,
            Event::Audio,
            vec![Action::Hear { manual: false }],
            Phase::Listening,
        ),
        rule("audio is not heard before listen start", ready(), 1.0, Event::Audio, vec![], Phase::Idle),
        rule(
            "push-to-talk buffers everything",
            listening(ListenMode::Manual),
            1.0,
            Event::Audio,
            vec![Action::Hear { manual: true }],
            Phase::Listening,
        ),
        rule(
            "releasing push-to-talk ends the utterance",
            listening(ListenMode::Manual),
            3.0,
            listen(ListenState::Stop, None),
            vec![Action::EndUtterance],
            Phase::Idle,
        ),
        rule(
            "the end of an utterance starts recognition",
            listening(ListenMode::Auto),
            2.0,
            utterance(SPEECH),
            vec![Action::Recognise { turn: 1, pcm: vec![1; SPEECH] }],
            Phase::Recognising,
        ),
        rule(
            "an utterance shorter than 250 ms holds no words",
            listening(ListenMode::Auto),
            2.0,
            utterance(MIN_SPEECH_SAMPLES - 1),
            vec![Action::HeardNothing, Action::ResetListener],
            Phase::Listening,
        ),
        rule(
            "recognized words are shown, then answered",
            recognising(ListenMode::Auto),
            2.5,
            transcript(1, "turn on the light"),
            vec![Action::Stt("turn on the light".into()), reply_1.clone()],
            Phase::Replying,
        ),
        rule(
            "no words: nothing is said and listening goes on",
            recognising(ListenMode::Auto),
            2.5,
            transcript(1, "  "),
            vec![Action::HeardNothing, Action::ResetListener],
            Phase::Listening,
        ),
        rule(
            "ASR failing: the device hears the error response",
            recognising(ListenMode::Auto),
            2.5,
            Event::Transcript { turn: 1, text: None },
            vec![Action::Reply { turn: 1, to: Reply::Error }],
            Phase::Replying,
        ),
        rule(
            "in auto mode the microphone is not heard while we speak",
            replying(ListenMode::Auto),
            3.0,
            Event::Audio,
            vec![],
            Phase::Replying,
        ),
        rule(
            "after the reply, auto mode listens afresh",
            replying(ListenMode::Auto),
            6.0,
            Event::TurnDone { turn: 1, close: false },
            vec![Action::ResetListener],
            Phase::Listening,
        ),
        // Exit commands.
        rule(
            "a spoken exit command closes without asking the LLM",
            recognising(ListenMode::Auto),
            2.5,
            transcript(1, "退出。"),
            vec![Action::Stt("退出。".into()), Action::Close("exit command")],
            Phase::Closed,
        ),
        rule(
            "a typed exit command closes too",
            ready(),
            1.0,
            detect("关闭"),
            vec![Action::Stt("关闭".into()), Action::Close("exit command")],
            Phase::Closed,
        ),
        rule(
            "an exit tool's reply closes when it is over",
            replying(ListenMode::Auto),
            6.0,
            Event::TurnDone { turn: 1, close: true },
            vec![Action::Close("exit command")],
            Phase::Closed,
        ),
        // §1.4 listen detect: wake words and typed text.
        rule(
            "a wake word without greeting: stt, then tts stop",
            ready(),
            1.0,
            detect("你好小智"),
            vec![Action::Stt("你好小智".into()), Action::StopSpeaking],
            Phase::Idle,
        ),
        Rule {
            says: "a wake word with greeting is answered by the LLM",
            rules: rules(true, true),
            given: ready(),
            at: 1.0,
            when: detect("你好小智"),
            then: vec![Action::Stt("你好小智".into()), Action::Reply { turn: 1, to: Reply::Text("你好小智".into()) }],
            phase: Phase::Replying,
        },
        rule(
            "typed text is a turn",
            ready(),
            1.0,
            detect(" what time is it "),
            vec![
                Action::Stt("what time is it".into()),
                Action::Reply { turn: 1, to: Reply::Text("what time is it".into()) },
            ],
            Phase::Replying,
        ),
        rule(
            "typed text while we speak replaces the reply",
            replying(ListenMode::Auto),
            3.0,
            detect("stop that"),
            vec![
                Action::CancelTurn,
                Action::Stt("stop that".into()),
                Action::Reply { turn: 2, to: Reply::Text("stop that".into()) },
            ],
            Phase::Replying,
        ),
        rule("an empty detect does nothing", ready(), 1.0, detect("  "), vec![], Phase::Idle),
        // §1.4 abort: the device stays in Speaking until `tts stop`.
        rule(
            "abort stops the reply and answers tts stop",
            replying(ListenMode::Auto),
            3.0,
            abort(),
            vec![Action::CancelTurn, Action::StopSpeaking],
            Phase::Listening,
        ),
        rule(
            "abort with nothing running still answers tts stop",
            ready(),
            1.0,
            abort(),
            vec![Action::StopSpeaking],
            Phase::Idle,
        ),
        rule(
            "abort during recognition cancels it",
            recognising(ListenMode::Auto),
            2.2,
            abort(),
            vec![Action::CancelTurn, Action::StopSpeaking],
            Phase::Listening,
        ),
        rule(
            "a cancelled turn finishing late changes nothing",
            {
                let mut given = replying(ListenMode::Auto);
                given.push((3.0, abort()));
                given
            },
            4.0,
            Event::TurnDone { turn: 1, close: true },
            vec![],
            Phase::Listening,
        ),
        rule(
            "a late transcript of a cancelled turn changes nothing",
            {
                let mut given = recognising(ListenMode::Auto);
                given.push((2.2, abort()));
                given
            },
            2.5,
            transcript(1, "hello"),
            vec![],
            Phase::Listening,
        ),
        // Realtime mode: barge-in.
        rule(
            "in realtime mode the microphone is heard while we speak",
            replying(ListenMode::Realtime),
            3.0,
            Event::Audio,
            vec![Action::Hear { manual: false }],
            Phase::Replying,
        ),
        rule(
            "speech over the reply is a barge-in",
            replying(ListenMode::Realtime),
            3.0,
            Event::Heard(Heard::SpeechStart),
            vec![Action::CancelTurn, Action::StopSpeaking, Action::StartRecognition],
            Phase::Listening,
        ),
        rule(
            "speech start opens the recognition, which listens while the user speaks",
            listening(ListenMode::Auto),
            1.5,
            Event::Heard(Heard::SpeechStart),
            vec![Action::StartRecognition],
            Phase::Listening,
        ),
        rule(
            "after the reply, realtime mode keeps what was heard",
            replying(ListenMode::Realtime),
            6.0,
            Event::TurnDone { turn: 1, close: false },
            vec![],
            Phase::Listening,
        ),
        // §7: the no-voice goodbye and the inactivity cut.
        rule(
            "120 s without voice: the assistant says goodbye",
            listening(ListenMode::Auto),
            121.0,
            silence(120_000),
            vec![Action::Reply { turn: 1, to: Reply::Goodbye }],
            Phase::Replying,
        ),
        rule(
            "the goodbye closes when it is over",
            {
                let mut given = listening(ListenMode::Auto);
                given.push((121.0, silence(120_000)));
                given
            },
            125.0,
            Event::TurnDone { turn: 1, close: true },
            vec![Action::Close("no voice")],
            Phase::Closed,
        ),
        Rule {
            says: "without a goodbye prompt, 120 s without voice just closes",
            rules: rules(false, false),
            given: listening(ListenMode::Auto),
            at: 121.0,
            when: silence(120_000),
            then: vec![Action::Close("no voice")],
            phase: Phase::Closed,
        },
        rule(
            "119 s without voice is still fine",
            listening(ListenMode::Auto),
            120.0,
            silence(119_999),
            vec![],
            Phase::Listening,
        ),
        rule(
            "a device that sends nothing at all is cut after 180 s",
            listening(ListenMode::Auto),
            180.2,
            Event::Tick,
            vec![Action::Close("inactive")],
            Phase::Closed,
        ),
        rule(
            "a running reply is never cut for inactivity",
            replying(ListenMode::Auto),
            400.0,
            Event::Tick,
            vec![Action::Register],
            Phase::Replying,
        ),
        rule(
            "the registry entry is refreshed every 30 s",
            ready(),
            30.0,
            Event::Tick,
            vec![Action::Register],
            Phase::Idle,
        ),
        // Messages that only pass through.
        rule("ping is answered", ready(), 1.0, Event::Message(Inbound::Ping), vec![Action::Pong], Phase::Idle),
        rule(
            "MCP goes to the device's MCP client",
            ready(),
            1.0,
            Event::Message(Inbound::Mcp(serde_json::json!({"id": 1}))),
            vec![Action::ForwardMcp(serde_json::json!({"id": 1}))],
            Phase::Idle,
        ),
        rule(
            "a bad message gets an error and changes nothing",
            listening(ListenMode::Auto),
            1.0,
            Event::BadMessage("malformed JSON".into()),
            vec![Action::SendError("malformed JSON".into())],
            Phase::Listening,
        ),
        rule(
            "the device's goodbye closes",
            ready(),
            1.0,
            Event::Message(Inbound::Goodbye),
            vec![Action::Close("device said goodbye")],
            Phase::Closed,
        ),
        // The end.
        rule(
            "shutdown cancels the reply and closes",
            replying(ListenMode::Auto),
            3.0,
            Event::Shutdown,
            vec![Action::CancelTurn, Action::Close("server shutting down")],
            Phase::Closed,
        ),
        rule(
            "a device that is gone ends the session without a close handshake",
            replying(ListenMode::Auto),
            3.0,
            Event::WireGone,
            vec![Action::CancelTurn, Action::End],
            Phase::Closed,
        ),
        rule("a closed session does nothing more", vec![(0.0, Event::WireGone)], 1.0, hello(), vec![], Phase::Closed),
    ]
}

#[test]
fn the_session_follows_the_device_protocol() {
    let t0 = Instant::now();
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
    let mut failures = Vec::new();
    for rule in table() {
        let mut state = State::new(std::sync::Arc::new(rule.rules), t0);
        for (secs, event) in rule.given {
            state.step(event, at(secs));
        }
        let actions = state.step(rule.when, at(rule.at));
        if actions != rule.then || state.phase() != rule.phase {
            failures.push(format!(
                "{}:\n  expected {:?} in {:?}\n  got      {:?} in {:?}",
                rule.says,
                rule.then,
                rule.phase,
                actions,
                state.phase()
            ));
        }
    }
    assert!(failures.is_empty(), "{} rule(s) broken:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn deadlines_name_the_next_timer() {
    let t0 = Instant::now();
    let mut state = State::new(std::sync::Arc::new(rules(false, true)), t0);
    assert_eq!(state.deadline(), t0 + Duration::from_secs(10), "the hello timeout first");
    state.step(hello(), t0 + Duration::from_secs(1));
    assert_eq!(state.deadline(), t0 + REGISTRY_REFRESH, "then the registry refresh");
    for k in 1..=6 {
        assert_eq!(state.step(Event::Tick, t0 + REGISTRY_REFRESH * k), vec![Action::Register]);
    }
    assert_eq!(state.deadline(), t0 + Duration::from_secs(1) + Duration::from_secs(180), "then the inactivity cut");
}
