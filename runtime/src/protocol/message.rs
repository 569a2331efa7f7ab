//! Typed JSON messages of the device protocol (text WebSocket frames), both directions.
//!
//! Device → server messages are parsed leniently, the way the firmware writes them: every field but
//! `type` is optional, because old firmware sends less. Server → device messages always carry what
//! the firmware requires (`type`, and `transport` in our hello).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::config::AudioParams;

/// Largest text message we parse; anything longer is refused with an error.
pub const MAX_TEXT_MESSAGE: usize = 64 * 1024;

/// A message from the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// `hello`: the first message of a session.
    Hello(ClientHello),
    /// `listen`: start/stop/detect.
    Listen(Listen),
    /// `abort`: stop speaking now.
    Abort(Abort),
    /// `mcp`: a JSON-RPC message from the device's MCP server.
    Mcp(Value),
    /// `iot`: legacy IoT descriptors and states (firmware before 1.8.0); accepted and ignored.
    Iot,
    /// `goodbye`: the device ends the session (MQTT firmware; accepted over WebSocket too).
    Goodbye,
    /// `ping`: a keep-alive from browser clients.
    Ping,
}

/// Why a text message could not be understood.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum MessageError {
    /// Over [`MAX_TEXT_MESSAGE`] bytes.
    #[error("message of {0} bytes is over the {MAX_TEXT_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// Not JSON, or not an object.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// No string `type` field.
    #[error("message has no string \"type\" field")]
    MissingType,
    /// A `type` this server does not handle.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A known type with a field of the wrong shape.
    #[error("bad {kind} message: {message}")]
    BadField {
        /// The message type.
        kind: String,
        /// What was wrong.
        message: String,
    },
}

/// `{"type":"hello", ...}` from the device.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClientHello {
    /// Binary protocol version (equals the `Protocol-Version` header).
    #[serde(deserialize_with = "lenient_u32")]
    pub version: Option<u32>,
    /// `websocket` (or `udp` over MQTT).
    pub transport: Option<String>,
    /// Optional features.
    pub features: Features,
    /// The uplink audio parameters; browser clients may leave them out.
    pub audio_params: Option<ClientAudioParams>,
}

/// `hello.features`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Features {
    /// The device runs an MCP server.
    #[serde(deserialize_with = "lenient_bool")]
    pub mcp: bool,
    /// The device wants server-side echo cancellation.
    #[serde(deserialize_with = "lenient_bool")]
    pub aec: bool,
}

/// `hello.audio_params` from the device; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClientAudioParams {
    /// `opus` (or `pcm` from some browser clients).
    pub format: Option<String>,
    /// Uplink sample rate.
    #[serde(deserialize_with = "lenient_u32")]
    pub sample_rate: Option<u32>,
    /// Channels.
    #[serde(deserialize_with = "lenient_u32")]
    pub channels: Option<u32>,
    /// Uplink frame duration in ms.
    #[serde(deserialize_with = "lenient_u32")]
    pub frame_duration: Option<u32>,
}

/// `{"type":"listen", ...}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Listen {
    /// start, stop or detect.
    pub state: ListenState,
    /// auto, manual or realtime (sent with `start`).
    #[serde(default)]
    pub mode: Option<ListenMode>,
    /// The wake word or typed text (with `detect`).
    #[serde(default)]
    pub text: Option<String>,
}

/// `listen.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenState {
    /// The device opened its microphone.
    Start,
    /// Push-to-talk released (manual mode).
    Stop,
    /// A wake word, or typed text.
    Detect,
}

/// `listen.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenMode {
    /// Server VAD ends utterances; the device re-sends `listen start` after each reply.
    #[default]
    Auto,
    /// Push-to-talk: `listen stop` ends the utterance.
    Manual,
    /// Full duplex: the microphone stays open while we speak.
    Realtime,
}

/// `{"type":"abort"}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Abort {
    /// e.g. `wake_word_detected`.
    pub reason: Option<String>,
}

/// Parses one text message from the device.
pub fn parse_inbound(text: &str) -> Result<Inbound, MessageError> {
    if text.len() > MAX_TEXT_MESSAGE {
        return Err(MessageError::TooLarge(text.len()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| MessageError::Malformed(e.to_string()))?;
    let Value::Object(map) = &value else {
        return Err(MessageError::Malformed("not a JSON object".into()));
    };
    let kind = map.get("type").and_then(Value::as_str).ok_or(MessageError::MissingType)?;
    let bad = |e: serde_json::Error| MessageError::BadField { kind: kind.to_string(), message: e.to_string() };
    Ok(match kind {
        "hello" => Inbound::Hello(ClientHello::deserialize(&value).map_err(bad)?),
        "listen" => Inbound::Listen(Listen::deserialize(&value).map_err(bad)?),
        "abort" => Inbound::Abort(Abort::deserialize(&value).map_err(bad)?),
        "mcp" => match map.get("payload") {
            Some(payload @ Value::Object(_)) => Inbound::Mcp(payload.clone()),
            _ => {
                return Err(MessageError::BadField {
                    kind: kind.into(),
                    message: "\"payload\" must be an object".into(),
                });
            }
        },
        "iot" => Inbound::Iot,
        "goodbye" => Inbound::Goodbye,
        "ping" => Inbound::Ping,
        other => return Err(MessageError::UnknownType(other.to_string())),
    })
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::Number(n) => n.as_u64().is_some_and(|v| v != 0),
        Value::String(s) => s == "true",
        _ => false,
    })
}

/// A message to the device.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// Our hello: always with `transport`, `session_id` and the real downlink `audio_params`.
    Hello {
        /// The protocol version in use.
        version: u32,
        /// `websocket`, or `udp` over MQTT.
        transport: String,
        /// This session's id; the device echoes it.
        session_id: String,
        /// What we encode the downlink at.
        audio_params: AudioParams,
        /// Over MQTT: where and how the session's audio travels.
        #[serde(skip_serializing_if = "Option::is_none")]
        udp: Option<UdpParams>,
    },
    /// Over MQTT: the session is over (the device closes its audio channel).
    Goodbye {
        /// Session id.
        session_id: String,
    },
    /// The recognized user text.
    Stt {
        /// The text.
        text: String,
        /// Session id.
        session_id: String,
    },
    /// The assistant's emotion (sets the device's face).
    Llm {
        /// The emoji.
        text: String,
        /// The emotion name.
        emotion: String,
        /// Session id.
        session_id: String,
    },
    /// Speaking state.
    Tts {
        /// start, sentence_start or stop.
        state: TtsState,
        /// The sentence (with `sentence_start`).
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// Session id.
        session_id: String,
    },
    /// A JSON-RPC message for the device's MCP server.
    Mcp {
        /// The JSON-RPC message.
        payload: Value,
        /// Session id.
        session_id: String,
    },
    /// Answer to a `ping`.
    Pong {
        /// Session id.
        session_id: String,
    },
    /// A message we could not handle; the device logs it.
    Error {
        /// What was wrong.
        message: String,
        /// Session id.
        session_id: String,
    },
}

/// The hello's `udp` object (device-protocol.md §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UdpParams {
    /// The address the device sends its datagrams to.
    pub server: String,
    /// The UDP port.
    pub port: u16,
    /// Always `aes-128-ctr`.
    pub encryption: String,
    /// The session's AES-128 key, 32 hex digits.
    pub key: String,
    /// The session's nonce (the header template), 32 hex digits.
    pub nonce: String,
}

/// `tts.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TtsState {
    /// We start speaking.
    Start,
    /// A new sentence starts (with its text as subtitle).
    SentenceStart,
    /// We stopped speaking.
    Stop,
}

impl ServerMessage {
    /// Serializes to the JSON text sent to the device.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_firmware_hello() {
        let m = parse_inbound(
            r#"{"type":"hello","version":1,"features":{"aec":true,"mcp":true,"glyph_push":true},"text_font":{"bundle":"noto-v1"},"transport":"websocket","audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}}"#,
        )
        .unwrap();
        let Inbound::Hello(h) = m else { panic!("{m:?}") };
        assert_eq!(h.version, Some(1));
        assert!(h.features.mcp && h.features.aec);
        assert_eq!(h.audio_params.unwrap().sample_rate, Some(16000));
    }

    #[test]
    fn parses_lenient_browser_hello() {
        let Inbound::Hello(h) = parse_inbound(r#"{"type":"hello","version":"3"}"#).unwrap() else { panic!() };
        assert_eq!(h.version, Some(3));
        assert!(h.audio_params.is_none());
        assert!(!h.features.mcp);
    }

    #[test]
    fn parses_listen_and_abort() {
        let m = parse_inbound(r#"{"session_id":"S","type":"listen","state":"start","mode":"realtime"}"#).unwrap();
        assert_eq!(
            m,
            Inbound::Listen(Listen { state: ListenState::Start, mode: Some(ListenMode::Realtime), text: None })
        );
        let m = parse_inbound(r#"{"session_id":"S","type":"listen","state":"detect","text":"你好小智"}"#).unwrap();
        assert_eq!(
            m,
            Inbound::Listen(Listen { state: ListenState::Detect, mode: None, text: Some("你好小智".into()) })
        );
        let m = parse_inbound(r#"{"session_id":"S","type":"abort","reason":"wake_word_detected"}"#).unwrap();
        assert_eq!(m, Inbound::Abort(Abort { reason: Some("wake_word_detected".into()) }));
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        assert!(matches!(parse_inbound("{not json"), Err(MessageError::Malformed(_))));
        assert!(matches!(parse_inbound("42"), Err(MessageError::Malformed(_))));
        assert_eq!(parse_inbound(r#"{"state":"start"}"#), Err(MessageError::MissingType));
        assert_eq!(parse_inbound(r#"{"type":"dance"}"#), Err(MessageError::UnknownType("dance".into())));
        assert!(matches!(parse_inbound(r#"{"type":"listen","state":"jump"}"#), Err(MessageError::BadField { .. })));
        assert!(matches!(parse_inbound(r#"{"type":"mcp","payload":3}"#), Err(MessageError::BadField { .. })));
        let big = format!(r#"{{"type":"listen","text":"{}"}}"#, "a".repeat(MAX_TEXT_MESSAGE));
        assert!(matches!(parse_inbound(&big), Err(MessageError::TooLarge(_))));
    }

    #[test]
    fn server_messages_have_the_firmware_shape() {
        let hello = ServerMessage::Hello {
            version: 1,
            transport: "websocket".into(),
            session_id: "abc".into(),
            audio_params: AudioParams { format: "opus".into(), sample_rate: 24000, channels: 1, frame_duration: 60 },
            udp: None,
        };
        let v: Value = serde_json::from_str(&hello.to_json()).unwrap();
        assert!(v.get("udp").is_none());
        assert_eq!(v["type"], "hello");
        assert_eq!(v["transport"], "websocket");
        assert_eq!(v["session_id"], "abc");
        assert_eq!(v["audio_params"]["sample_rate"], 24000);
        let tts =
            ServerMessage::Tts { state: TtsState::SentenceStart, text: Some("Hi.".into()), session_id: "abc".into() };
        assert_eq!(tts.to_json(), r#"{"type":"tts","state":"sentence_start","text":"Hi.","session_id":"abc"}"#);
        let stop = ServerMessage::Tts { state: TtsState::Stop, text: None, session_id: "abc".into() };
        assert_eq!(stop.to_json(), r#"{"type":"tts","state":"stop","session_id":"abc"}"#);
    }
}
