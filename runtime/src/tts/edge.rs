//! `type: edge`: Microsoft Edge's read-aloud voices (what the Python server's `edge_tts` package
//! speaks to), over their WebSocket protocol.
//!
//! One connection per sentence to
//! `wss://speech.platform.bing.com/consumer/speech/synthesize/readaloud/edge/v1` with the query
//! `TrustedClientToken`, `ConnectionId` (a dashless UUID), `Sec-MS-GEC` (see [`sec_ms_gec`]) and
//! `Sec-MS-GEC-Version`, and the headers of Edge's read-aloud extension. The client sends a
//! `Path:speech.config` text message (the output format) and a `Path:ssml` text message (the
//! sentence as SSML: voice, rate, volume, pitch); the service answers `turn.start`, `response` and
//! `audio.metadata` text messages, binary `Path:audio` messages (a 2-byte big-endian header
//! length, the headers, then MP3 bytes) and a `Path:turn.end` text message when the sentence is
//! done. An error closes the connection with a close code and reason instead.
//!
//! The service only accepts the formats Edge itself asks for (MP3 or WebM); MP3
//! (`audio-24khz-48kbitrate-mono-mp3`) is decoded frame by frame as it arrives
//! ([`crate::audio::chunks`]), so the first audio plays while the rest is being synthesized.
//! `timeout` bounds the connection and every wait for the next message. Dropping the stream
//! closes the connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{AudioChunk, AudioStream, channel_stream, silence};
use crate::audio::chunks::ChunkDecoder;
use crate::audio::decode::AudioFormat;
use crate::remote::{ProviderError, WsStream, url_without_query, ws_connect};

/// The read-aloud endpoint.
pub const DEFAULT_URL: &str = "wss://speech.platform.bing.com/consumer/speech/synthesize/readaloud/edge/v1";
/// The token Edge's read-aloud extension sends (public, the same for every user).
pub const TRUSTED_CLIENT_TOKEN: &str = "6A5AA1D4EAFF4E9FB37E23D68491D6F4";
/// The Edge version the client presents itself as.
const CHROMIUM_FULL_VERSION: &str = "143.0.3650.75";
const CHROMIUM_MAJOR_VERSION: &str = "143";
/// Seconds from 1601-01-01 (Windows file time) to 1970-01-01.
const WINDOWS_EPOCH_OFFSET: u64 = 11_644_473_600;
/// The output format asked for (the one Edge uses).
const OUTPUT_FORMAT: &str = "audio-24khz-48kbitrate-mono-mp3";
/// Largest SSML message: the service's messages are at most 64 KiB; longer text goes in pieces,
/// one connection each, as Edge does.
const MAX_SSML_BYTES: usize = 60_000;

/// `TTS.<name>` with `type: edge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The voice (`zh-CN-XiaoxiaoNeural`; `edge-tts --list-voices` lists them).
    pub voice: String,
    /// Python server compatibility: a voice that replaces `voice` when set.
    pub private_voice: Option<String>,
    /// Speaking rate, `+0%` (`-50%` … `+100%`).
    pub rate: String,
    /// Volume, `+0%`.
    pub volume: String,
    /// Pitch, `+0Hz`.
    pub pitch: String,
    /// Python server compatibility (the file extension of saved audio); the service sends MP3,
    /// which is decoded as it arrives.
    pub format: Option<String>,
    /// Python server compatibility; not used (no audio is written).
    pub output_dir: Option<String>,
    /// Seconds for the connection and for each wait on the service.
    pub timeout: u64,
    /// The endpoint (`ws://` or `wss://`); the official one unless testing.
    pub url: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            voice: "zh-CN-XiaoxiaoNeural".into(),
            private_voice: None,
            rate: "+0%".into(),
            volume: "+0%".into(),
            pitch: "+0Hz".into(),
            format: None,
            output_dir: None,
            timeout: 10,
            url: DEFAULT_URL.into(),
        }
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("voice {}, {}", self.voice_name(), url_without_query(&self.url))
    }

    /// The voice used: `private_voice` when set, else `voice`.
    fn voice_name(&self) -> &str {
        match self.private_voice.as_deref().map(str::trim) {
            Some(private) if !private.is_empty() => private,
            _ => self.voice.trim(),
        }
    }
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn super::Tts>, ProviderError> {
    Ok(Arc::new(EdgeTts::new(cfg.clone())?))
}

/// `Sec-MS-GEC`: the SHA-256 of the Windows file time (100 ns ticks since 1601) rounded down to
/// five minutes, written in decimal and followed by the trusted client token, as upper-case hex.
pub fn sec_ms_gec(unix_seconds: u64) -> String {
    let seconds = unix_seconds + WINDOWS_EPOCH_OFFSET;
    let ticks = u128::from(seconds - seconds % 300) * 10_000_000;
    hex::encode_upper(Sha256::digest(format!("{ticks}{TRUSTED_CLIENT_TOKEN}").as_bytes()))
}

/// `Sec-MS-GEC-Version`.
fn sec_ms_gec_version() -> String {
    format!("1-{CHROMIUM_FULL_VERSION}")
}

/// Whether a prosody value is a signed integer with `unit` (`+0%`, `-10Hz`).
fn valid_prosody(value: &str, unit: &str) -> bool {
    let Some(number) = value.strip_suffix(unit) else { return false };
    let Some(digits) = number.strip_prefix(['+', '-']) else { return false };
    !digits.is_empty() && digits.len() <= 4 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Text the service accepts: control characters (a vertical tab breaks it) become spaces.
fn clean_text(text: &str) -> String {
    text.chars().map(|c| if c.is_control() && !matches!(c, '\t' | '\n' | '\r') { ' ' } else { c }).collect()
}

/// `text` with the XML special characters escaped.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` in pieces whose escaped form stays under `max` bytes, cut at the last space or newline
/// before the limit where there is one, never inside a character.
fn split_text(text: &str, max: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text.trim();
    while xml_escape(rest).len() > max {
        // The longest prefix whose escaped form fits.
        let mut end = 0;
        let mut size = 0;
        for (at, c) in rest.char_indices() {
            size += xml_escape(c.encode_utf8(&mut [0; 4])).len();
            if size > max {
                break;
            }
            end = at + c.len_utf8();
        }
        let end = if end == 0 { rest.chars().next().map_or(0, char::len_utf8) } else { end };
        let cut = rest[..end].rfind(['\n', ' ']).filter(|&at| at > 0).unwrap_or(end);
        let (head, tail) = rest.split_at(cut);
        if !head.trim().is_empty() {
            pieces.push(head.trim().to_owned());
        }
        rest = tail.trim_start();
    }
    if !rest.is_empty() {
        pieces.push(rest.to_owned());
    }
    pieces
}

/// The date as JavaScript writes it (`Sat Dec 05 2026 23:30:58 GMT+0000 (Coordinated Universal
/// Time)`), as Edge puts it in `X-Timestamp`.
fn js_date() -> String {
    chrono::Utc::now().format("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)").to_string()
}

/// A dashless UUID (connection and request ids).
fn dashless_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `speech.config` message.
fn config_message(timestamp: &str) -> String {
    format!(
        "X-Timestamp:{timestamp}\r\nContent-Type:application/json; charset=utf-8\r\nPath:speech.config\r\n\r\n\
         {{\"context\":{{\"synthesis\":{{\"audio\":{{\"metadataoptions\":{{\"sentenceBoundaryEnabled\":\"false\",\
         \"wordBoundaryEnabled\":\"true\"}},\"outputFormat\":\"{OUTPUT_FORMAT}\"}}}}}}}}\r\n"
    )
}

/// The `ssml` message for one piece of (escaped) text. The `Z` after the timestamp is Edge's own.
fn ssml_message(
    request_id: &str,
    timestamp: &str,
    voice: &str,
    rate: &str,
    volume: &str,
    pitch: &str,
    escaped: &str,
) -> String {
    format!(
        "X-RequestId:{request_id}\r\nContent-Type:application/ssml+xml\r\nX-Timestamp:{timestamp}Z\r\nPath:ssml\r\n\r\n\
         <speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang='en-US'>\
         <voice name='{voice}'><prosody pitch='{pitch}' rate='{rate}' volume='{volume}'>{escaped}</prosody></voice></speak>"
    )
}

/// The headers of a message (`Name:value` lines) as pairs.
fn parse_headers(text: &str) -> Vec<(&str, &str)> {
    text.split("\r\n").filter_map(|line| line.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect()
}

fn header<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
}

/// A text message: its `Path` (empty when it has none).
fn text_path(text: &str) -> &str {
    let head = text.split_once("\r\n\r\n").map_or(text, |(head, _)| head);
    header(&parse_headers(head), "Path").unwrap_or_default()
}

/// A binary message: its `Path`, `Content-Type` and body. Errs when the header length does not
/// fit the message.
fn parse_binary(data: &[u8]) -> Result<(String, Option<String>, &[u8]), String> {
    let Some(len) = data.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
        return Err("a binary message without its header length".into());
    };
    let Some(head) = data.get(2..2 + len) else {
        return Err(format!("a binary message's header length {len} exceeds its {} bytes", data.len()));
    };
    let head = String::from_utf8_lossy(head);
    let headers = parse_headers(&head);
    let path = header(&headers, "Path").unwrap_or_default().to_owned();
    let content_type = header(&headers, "Content-Type").map(str::to_owned);
    Ok((path, content_type, &data[2 + len..]))
}

/// Edge read-aloud voices.
pub struct EdgeTts {
    cfg: Config,
    voice: String,
    timeout: Duration,
}

impl EdgeTts {
    /// Validates the entry.
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        let timeout = crate::remote::timeout_from(cfg.timeout, "TTS.edge")?;
        let url = cfg.url.trim();
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "ws" | "wss") && parsed.query().is_none() => {}
            Ok(_) => {
                return Err(ProviderError::Config(format!(
                    "TTS.edge: url `{url}` must be a ws:// or wss:// URL without a query"
                )));
            }
            Err(e) => return Err(ProviderError::Config(format!("TTS.edge: url `{url}` is invalid: {e}"))),
        }
        for (key, value, unit) in [("rate", &cfg.rate, "%"), ("volume", &cfg.volume, "%"), ("pitch", &cfg.pitch, "Hz")]
        {
            if !valid_prosody(value.trim(), unit) {
                return Err(ProviderError::Config(format!(
                    "TTS.edge: {key} `{value}` is not a signed whole number of {unit} (like +0{unit})"
                )));
            }
        }
        let voice = cfg.voice_name().to_owned();
        if voice.chars().any(|c| matches!(c, '\'' | '<' | '>' | '&' | '"')) {
            return Err(ProviderError::Config(format!("TTS.edge: voice `{voice}` is not a voice name")));
        }
        Ok(Self { cfg, voice, timeout })
    }

    /// The signed URL of one connection.
    fn connection_url(&self) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        format!(
            "{}?TrustedClientToken={TRUSTED_CLIENT_TOKEN}&ConnectionId={}&Sec-MS-GEC={}&Sec-MS-GEC-Version={}",
            self.cfg.url.trim(),
            dashless_id(),
            sec_ms_gec(now),
            sec_ms_gec_version()
        )
    }

    /// Opens a connection and sends the request for one piece of text.
    async fn start(&self, escaped: &str) -> Result<WsStream, ProviderError> {
        let url = self.connection_url();
        let user_agent = format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/{CHROMIUM_MAJOR_VERSION}.0.0.0 Safari/537.36 Edg/{CHROMIUM_MAJOR_VERSION}.0.0.0"
        );
        let muid: String = uuid::Uuid::new_v4().simple().to_string().to_ascii_uppercase();
        let headers = [
            ("Pragma", "no-cache".to_owned()),
            ("Cache-Control", "no-cache".to_owned()),
            ("Origin", "chrome-extension://jdiccldimpdaibmpdkjnbmckianbfold".to_owned()),
            ("User-Agent", user_agent),
            ("Accept-Encoding", "gzip, deflate, br".to_owned()),
            ("Accept-Language", "en-US,en;q=0.9".to_owned()),
            ("Cookie", format!("muid={muid};")),
        ];
        let mut ws = ws_connect(&url, &headers, self.timeout, "Edge TTS connection").await?;
        let timestamp = js_date();
        let ssml = ssml_message(
            &dashless_id(),
            &timestamp,
            &self.voice,
            self.cfg.rate.trim(),
            self.cfg.volume.trim(),
            self.cfg.pitch.trim(),
            escaped,
        );
        let send = async {
            ws.send(Message::text(config_message(&timestamp))).await?;
            ws.send(Message::text(ssml)).await
        };
        match tokio::time::timeout(self.timeout, send).await {
            Ok(Ok(())) => Ok(ws),
            Ok(Err(e)) => Err(ProviderError::Transport {
                url: url_without_query(&url),
                message: format!("sending the request: {}", crate::remote::error_chain(&e)),
            }),
            Err(_) => Err(ProviderError::Timeout { what: "Edge TTS request".into(), seconds: self.timeout.as_secs() }),
        }
    }
}

#[async_trait]
impl super::Tts for EdgeTts {
    async fn speak(&self, text: &str) -> Result<AudioStream, ProviderError> {
        let pieces = split_text(&clean_text(text), MAX_SSML_BYTES);
        if pieces.is_empty() {
            return Ok(silence());
        }
        let escaped: Vec<String> = pieces.iter().map(|piece| xml_escape(piece)).collect();
        // The first connection is opened here, so that a refusal is the call's error.
        let first = self.start(&escaped[0]).await?;
        let (tx, rx) = mpsc::channel(32);
        let reader = Reader { url: url_without_query(self.cfg.url.trim()), timeout: self.timeout };
        let this = EdgeTts { cfg: self.cfg.clone(), voice: self.voice.clone(), timeout: self.timeout };
        tokio::spawn(async move {
            let mut first = Some(first);
            for piece in &escaped {
                let ws = match first.take() {
                    Some(ws) => ws,
                    None => match this.start(piece).await {
                        Ok(ws) => ws,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    },
                };
                if !reader.read_turn(ws, &tx).await {
                    return;
                }
            }
        });
        Ok(channel_stream(rx))
    }
}

/// Reads the service's answer to one request.
struct Reader {
    url: String,
    timeout: Duration,
}

impl Reader {
    fn protocol(&self, message: String) -> ProviderError {
        ProviderError::Protocol { url: self.url.clone(), message }
    }

    /// Reads one turn into `tx`; false when the stream ended (an error, or nobody listens).
    async fn read_turn(&self, mut ws: WsStream, tx: &mpsc::Sender<Result<AudioChunk, ProviderError>>) -> bool {
        let mut decoder = ChunkDecoder::new(AudioFormat::Mp3);
        let mut audio_bytes = 0usize;
        loop {
            let next = tokio::select! {
                () = tx.closed() => return false,
                next = tokio::time::timeout(self.timeout, ws.next()) => next,
            };
            let message = match next {
                Err(_) => {
                    let seconds = self.timeout.as_secs();
                    let _ = tx.send(Err(ProviderError::Timeout { what: "Edge TTS audio".into(), seconds })).await;
                    return false;
                }
                Ok(None) => {
                    let _ = tx.send(Err(self.protocol("the connection closed before turn.end".into()))).await;
                    return false;
                }
                Ok(Some(Err(e))) => {
                    let error =
                        ProviderError::Transport { url: self.url.clone(), message: crate::remote::error_chain(&e) };
                    let _ = tx.send(Err(error)).await;
                    return false;
                }
                Ok(Some(Ok(message))) => message,
            };
            let chunks = match message {
                Message::Text(text) => match text_path(&text) {
                    "turn.end" => {
                        let _ = ws.close(None).await;
                        let result = if audio_bytes == 0 {
                            Err(self.protocol("no audio was received (check the voice)".into()))
                        } else {
                            decoder.finish().map_err(|e| self.protocol(e.to_string()))
                        };
                        return match result {
                            Ok(chunks) => {
                                for chunk in chunks {
                                    if tx.send(Ok(chunk)).await.is_err() {
                                        return false;
                                    }
                                }
                                true
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                false
                            }
                        };
                    }
                    // turn.start, response, audio.metadata (word boundaries): nothing to play.
                    _ => continue,
                },
                Message::Binary(data) => {
                    let (path, content_type, body) = match parse_binary(&data) {
                        Ok(parts) => parts,
                        Err(message) => {
                            let _ = tx.send(Err(self.protocol(message))).await;
                            return false;
                        }
                    };
                    if path != "audio" {
                        let _ = tx.send(Err(self.protocol(format!("a binary message with Path:{path}")))).await;
                        return false;
                    }
                    if body.is_empty() {
                        // The end of the audio comes as an empty message without a content type.
                        continue;
                    }
                    if content_type.as_deref().is_some_and(|t| t != "audio/mpeg") {
                        let message =
                            format!("audio of type {} instead of audio/mpeg", content_type.unwrap_or_default());
                        let _ = tx.send(Err(self.protocol(message))).await;
                        return false;
                    }
                    audio_bytes += body.len();
                    match decoder.push(body) {
                        Ok(chunks) => chunks,
                        Err(e) => {
                            let _ = tx.send(Err(self.protocol(e.to_string()))).await;
                            return false;
                        }
                    }
                }
                Message::Close(frame) => {
                    // How the service reports an error (an unknown voice, invalid SSML).
                    let message = match frame {
                        Some(frame) if frame.code != CloseCode::Normal || !frame.reason.is_empty() => {
                            format!("the service closed the connection: {} {}", u16::from(frame.code), frame.reason)
                        }
                        _ => "the service closed the connection before turn.end".to_owned(),
                    };
                    let _ = tx.send(Err(self.protocol(message))).await;
                    return false;
                }
                _ => continue,
            };
            for chunk in chunks {
                if tx.send(Ok(chunk)).await.is_err() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_ms_gec_matches_the_documented_algorithm() {
        // Computed independently with the algorithm of edge-tts (rany2/edge-tts, drm.py):
        // python3 -c 'import hashlib
        // for t in (1700000000, 1700000299, 1700000300):
        //   ticks=(t+11644473600)*10000000; ticks-=ticks%3000000000
        //   print(ticks, hashlib.sha256(f"{ticks}6A5AA1D4EAFF4E9FB37E23D68491D6F4".encode()).hexdigest().upper())'
        assert_eq!(sec_ms_gec(1_700_000_000), "42301B335578FEFDAE2637DED1ABD614505D432559EC08032B82048483726AFF");
        // Within the same five minutes, the same token; the next window, the next one.
        assert_eq!(sec_ms_gec(1_700_000_299), "AE4CF72E466874182A75878E20EADA83D29A1C12CAD9C3E0E014CCE0BFA55880");
        assert_eq!(sec_ms_gec(1_700_000_300), "AE4CF72E466874182A75878E20EADA83D29A1C12CAD9C3E0E014CCE0BFA55880");
        assert_eq!(sec_ms_gec_version(), "1-143.0.3650.75");
    }

    #[test]
    fn messages_are_framed_as_edge_frames_them() {
        let config = config_message("Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)");
        assert_eq!(text_path(&config), "speech.config");
        let (_, body) = config.split_once("\r\n\r\n").expect("head and body");
        let json: serde_json::Value = serde_json::from_str(body.trim()).expect("json");
        assert_eq!(json["context"]["synthesis"]["audio"]["outputFormat"], "audio-24khz-48kbitrate-mono-mp3");
        let ssml = ssml_message("abc", "T", "zh-CN-XiaoxiaoNeural", "+0%", "+0%", "+0Hz", &xml_escape("a<b & 'c'"));
        assert!(ssml.starts_with(
            "X-RequestId:abc\r\nContent-Type:application/ssml+xml\r\nX-Timestamp:TZ\r\nPath:ssml\r\n\r\n"
        ));
        assert!(ssml.ends_with(
            "<voice name='zh-CN-XiaoxiaoNeural'><prosody pitch='+0Hz' rate='+0%' volume='+0%'>a&lt;b &amp; &apos;c&apos;</prosody></voice></speak>"
        ));
        assert_eq!(text_path("X-RequestId:1\r\nPath:turn.end\r\n\r\n{}"), "turn.end");

        // A binary audio message: 2-byte big-endian header length, headers, MP3 bytes.
        let head = b"X-RequestId:1\r\nContent-Type:audio/mpeg\r\nPath:audio\r\n";
        let mut frame = (head.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(head);
        frame.extend_from_slice(b"\xFF\xF3mp3");
        let (path, content_type, body) = parse_binary(&frame).expect("parses");
        assert_eq!((path.as_str(), content_type.as_deref(), body), ("audio", Some("audio/mpeg"), &b"\xFF\xF3mp3"[..]));
        assert!(parse_binary(&[0]).is_err());
        assert!(parse_binary(&[0, 200, b'P']).is_err());
    }

    #[test]
    fn text_is_cleaned_escaped_and_split() {
        assert_eq!(clean_text("a\u{b}b\u{0}c\nd"), "a b c\nd");
        assert_eq!(split_text("  hello  ", 100), ["hello"]);
        let long = "word ".repeat(50);
        let pieces = split_text(&long, 32);
        assert!(pieces.iter().all(|p| xml_escape(p).len() <= 32 && !p.contains("wor ")), "{pieces:?}");
        assert_eq!(pieces.join(" "), long.trim());
        // No space: cut between characters, never inside one or inside an entity.
        let pieces = split_text(&"你&".repeat(20), 16);
        assert!(pieces.iter().all(|p| xml_escape(p).len() <= 16));
        assert_eq!(pieces.concat(), "你&".repeat(20));
        assert!(split_text(" \n ", 10).is_empty());
    }

    /// A one-connection service: checks the two requests, then answers `answer` (built with
    /// the request id).
    async fn serve_once(answer: fn(&str) -> Vec<Message>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(stream).await.expect("handshake");
            let Some(Ok(Message::Text(config))) = ws.next().await else { panic!("no speech.config") };
            assert_eq!(text_path(&config), "speech.config");
            let Some(Ok(Message::Text(ssml))) = ws.next().await else { panic!("no ssml") };
            assert_eq!(text_path(&ssml), "ssml");
            let id = ssml.split("X-RequestId:").nth(1).and_then(|r| r.split("\r\n").next()).unwrap_or_default();
            for message in answer(id) {
                if ws.send(message).await.is_err() {
                    return;
                }
            }
            while ws.next().await.is_some() {}
        });
        format!("ws://{addr}/consumer/speech/synthesize/readaloud/edge/v1")
    }

    fn audio(id: &str, body: &[u8]) -> Message {
        let head = format!("X-RequestId:{id}\r\nContent-Type:audio/mpeg\r\nPath:audio\r\n");
        let mut data = (head.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(head.as_bytes());
        data.extend_from_slice(body);
        Message::binary(data)
    }

    fn turn(id: &str, path: &str) -> Message {
        Message::text(format!(
            "X-RequestId:{id}\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n{{}}"
        ))
    }

    #[tokio::test]
    async fn audio_frames_become_pcm_and_an_error_close_frame_an_error() {
        use crate::tts::Tts;
        // 0.5 s of a tone as 24 kHz MP3 (sox with its MP3 format, as tests/run.sh installs).
        fn tone() -> Vec<u8> {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("t.mp3");
            let made = std::process::Command::new("sox")
                .args(["-n", "-r", "24000", "-c", "1", "-C", "48"])
                .arg(&path)
                .args(["synth", "0.5", "sine", "440"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(made, "sox cannot write MP3 here");
            std::fs::read(&path).expect("mp3")
        }
        let url = serve_once(|id| {
            let mp3 = tone();
            let mut out = vec![turn(id, "turn.start"), turn(id, "response")];
            out.extend(mp3.chunks(700).map(|piece| audio(id, piece)));
            // The end of the audio: an empty message without a content type.
            let head = format!("X-RequestId:{id}\r\nPath:audio\r\n");
            let mut end = (head.len() as u16).to_be_bytes().to_vec();
            end.extend_from_slice(head.as_bytes());
            out.push(Message::binary(end));
            out.push(turn(id, "turn.end"));
            out
        })
        .await;
        let tts = EdgeTts::new(Config { url, ..Config::default() }).expect("valid");
        let clip = tts.synthesize("你好 & <hi>").await.expect("audio");
        assert_eq!(clip.sample_rate, 24_000);
        assert!((400..700).contains(&clip.duration_ms()), "{} ms", clip.duration_ms());

        let url = serve_once(|id| {
            vec![
                turn(id, "turn.start"),
                Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: CloseCode::Invalid,
                    reason: "Unsupported voice".into(),
                })),
            ]
        })
        .await;
        let tts = EdgeTts::new(Config { url, ..Config::default() }).expect("valid");
        match tts.synthesize("hi").await {
            Err(ProviderError::Protocol { message, .. }) => {
                assert!(message.contains("1007 Unsupported voice"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // turn.end without audio is an error too.
        let url = serve_once(|id| vec![turn(id, "turn.start"), turn(id, "turn.end")]).await;
        let tts = EdgeTts::new(Config { url, ..Config::default() }).expect("valid");
        assert!(matches!(tts.synthesize("hi").await, Err(ProviderError::Protocol { .. })));
    }

    #[test]
    fn config_is_checked_and_never_fails_on_defaults() {
        assert!(EdgeTts::new(Config::default()).is_ok());
        let with = |f: fn(&mut Config)| {
            let mut cfg = Config::default();
            f(&mut cfg);
            EdgeTts::new(cfg)
        };
        assert!(matches!(with(|c| c.url = "https://x/edge/v1".into()), Err(ProviderError::Config(_))));
        assert!(matches!(with(|c| c.url = "wss://x/edge/v1?a=b".into()), Err(ProviderError::Config(_))));
        assert!(matches!(with(|c| c.rate = "fast".into()), Err(ProviderError::Config(_))));
        assert!(matches!(with(|c| c.pitch = "+5%".into()), Err(ProviderError::Config(_))));
        assert!(matches!(with(|c| c.timeout = 0), Err(ProviderError::Config(_))));
        assert!(matches!(with(|c| c.voice = "x' onload='y".into()), Err(ProviderError::Config(_))));
        assert!(with(|c| c.rate = "-20%".into()).is_ok());
        let tts = with(|c| c.private_voice = Some("en-US-AvaNeural".into())).expect("valid");
        assert_eq!(tts.voice, "en-US-AvaNeural");
        let url = tts.connection_url();
        assert!(url.starts_with(&format!("{DEFAULT_URL}?TrustedClientToken={TRUSTED_CLIENT_TOKEN}&ConnectionId=")));
        assert!(url.contains("&Sec-MS-GEC-Version=1-143.0.3650.75"));
    }
}
