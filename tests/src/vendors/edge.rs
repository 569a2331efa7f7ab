//! A protocol peer of Microsoft Edge's read-aloud speech service
//! (`wss://speech.platform.bing.com/consumer/speech/synthesize/readaloud/edge/v1`), for the
//! `edge` TTS provider. Microsoft publishes no page for this endpoint; the mock follows the
//! protocol as the edge-tts project documents and implements it (github.com/rany2/edge-tts:
//! `src/edge_tts/communicate.py`, `drm.py`, `constants.py`) and the message framing of the Azure
//! Speech WebSocket protocol it is built on (text messages `Name:value` headers, a blank line and
//! a body; binary messages with a 2-byte big-endian header length):
//!
//! - the handshake must carry `TrustedClientToken`, a 32-hex-digit `ConnectionId`, `Sec-MS-GEC`
//!   (recomputed here: SHA-256 of the Windows file time rounded down to 5 minutes followed by the
//!   token, upper-case hex; the current or the previous window) and `Sec-MS-GEC-Version`, and
//!   the extension's `Origin`; anything else is refused with 403;
//! - the client sends `Path:speech.config` (output format `audio-24khz-48kbitrate-mono-mp3`) and
//!   `Path:ssml`; the service answers `turn.start`, `response`, binary `Path:audio` messages with
//!   `Content-Type:audio/mpeg` (MP3 made with sox from espeak-ng speech, paced by [`Timing`]), an
//!   empty binary audio message, and `turn.end`;
//! - an error is a close frame with a code and reason (1007) before any audio: the mock answers
//!   one for every sentence containing the text set by [`EdgeMock::fail_sentences_with`].

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{Events, RequestHead, Timing, WsMock, speech};

/// The endpoint's path.
pub const PATH: &str = "/consumer/speech/synthesize/readaloud/edge/v1";
const TRUSTED_CLIENT_TOKEN: &str = "6A5AA1D4EAFF4E9FB37E23D68491D6F4";
const ORIGIN: &str = "chrome-extension://jdiccldimpdaibmpdkjnbmckianbfold";
/// The only format the mock (like the service) accepts.
const OUTPUT_FORMAT: &str = "audio-24khz-48kbitrate-mono-mp3";

/// `Sec-MS-GEC` for the five-minute window `back` windows before now.
fn expected_gec(back: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let windows = (now + 11_644_473_600) / 300 - back;
    let ticks = u128::from(windows * 300) * 10_000_000;
    let digest = Sha256::digest(format!("{ticks}{TRUSTED_CLIENT_TOKEN}").as_bytes());
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

/// Checks the handshake as the service does.
fn check(head: &RequestHead) -> Result<(), (u16, String)> {
    let query = head.query();
    let refuse = |why: &str| Err((403, why.to_owned()));
    if head.path() != PATH {
        return Err((404, "not found".into()));
    }
    if query.get("TrustedClientToken").map(String::as_str) != Some(TRUSTED_CLIENT_TOKEN) {
        return refuse("bad TrustedClientToken");
    }
    let id = query.get("ConnectionId").cloned().unwrap_or_default();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return refuse("bad ConnectionId");
    }
    let gec = query.get("Sec-MS-GEC").cloned().unwrap_or_default();
    if gec != expected_gec(0) && gec != expected_gec(1) {
        return refuse("bad Sec-MS-GEC");
    }
    if !query.get("Sec-MS-GEC-Version").is_some_and(|v| v.starts_with("1-")) {
        return refuse("bad Sec-MS-GEC-Version");
    }
    if head.header("origin") != Some(ORIGIN) {
        return refuse("bad Origin");
    }
    Ok(())
}

/// `samples` (mono 16-bit at `rate`) as MP3 at `kbps`, made by sox.
pub fn mp3_of(samples: &[i16], rate: u32, kbps: u32) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("in.raw");
    let mp3 = dir.path().join("out.mp3");
    std::fs::write(&raw, super::pcm_bytes(samples))?;
    let status = std::process::Command::new("sox")
        .args(["-t", "raw", "-r", &rate.to_string(), "-e", "signed-integer", "-b", "16", "-c", "1"])
        .arg(&raw)
        .args(["-t", "mp3", "-C", &kbps.to_string()])
        .arg(&mp3)
        .status()?;
    anyhow::ensure!(status.success(), "sox cannot write MP3 (install sox and libsox-fmt-mp3)");
    Ok(std::fs::read(&mp3)?)
}

/// The headers and body of a text message.
fn split_text(text: &str) -> (Vec<(String, String)>, String) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let headers = head
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The text inside `<prosody ...>...</prosody>`, unescaped, and the voice name.
fn ssml_text(ssml: &str) -> Option<(String, String)> {
    let voice = ssml.split("<voice name='").nth(1)?.split('\'').next()?.to_owned();
    let inner = ssml.split("<prosody").nth(1)?.split_once('>')?.1.split("</prosody>").next()?;
    let text = inner
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    Some((voice, text))
}

/// A text message from the service.
fn text_message(request_id: &str, path: &str, body: &str) -> Message {
    Message::text(format!(
        "X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\nPath:{path}\r\n\r\n{body}"
    ))
}

/// A binary audio message (no content type when `audio` is empty, as the service ends).
fn audio_message(request_id: &str, audio: &[u8]) -> Message {
    let head = if audio.is_empty() {
        format!("X-RequestId:{request_id}\r\nPath:audio\r\n")
    } else {
        format!("X-RequestId:{request_id}\r\nContent-Type:audio/mpeg\r\nPath:audio\r\n")
    };
    let mut data = (head.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(head.as_bytes());
    data.extend_from_slice(audio);
    Message::binary(data)
}

#[derive(Default)]
struct Shared {
    fail_marker: Option<String>,
    texts: Vec<String>,
}

/// The mock service. Events: `edge_request` (an SSML request), `edge_audio` (each audio message
/// sent), `edge_turn_end`, `edge_error` (an error close frame sent).
pub struct EdgeMock {
    ws: WsMock,
    /// What happened, when.
    pub events: Events,
    shared: Arc<Mutex<Shared>>,
}

impl EdgeMock {
    /// Starts the service; audio is sent at the pace of `timing`.
    pub async fn start(timing: Timing) -> anyhow::Result<Self> {
        let events = Events::default();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (session_events, session_shared) = (events.clone(), Arc::clone(&shared));
        let ws = WsMock::start(check, move |_head, ws| {
            let (events, shared) = (session_events.clone(), Arc::clone(&session_shared));
            async move {
                let _ = session(ws, timing, events, shared).await;
            }
        })
        .await?;
        Ok(Self { ws, events, shared })
    }

    /// The URL to configure (`url:` of the entry).
    pub fn url(&self) -> String {
        self.ws.url(PATH)
    }

    /// Every sentence containing `marker` gets an error close frame instead of audio.
    pub fn fail_sentences_with(&self, marker: &str) {
        self.lock().fail_marker = Some(marker.to_owned());
    }

    /// The texts synthesized so far, in order.
    pub fn texts(&self) -> Vec<String> {
        self.lock().texts.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(_))) | None => anyhow::bail!("closed"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

async fn close_with(ws: &mut WebSocketStream<TcpStream>, code: u16, reason: &str) -> anyhow::Result<()> {
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.to_owned().into() }))).await?;
    Ok(())
}

async fn session(
    mut ws: WebSocketStream<TcpStream>,
    timing: Timing,
    events: Events,
    shared: Arc<Mutex<Shared>>,
) -> anyhow::Result<()> {
    // speech.config, then ssml.
    let (headers, body) = split_text(&next_text(&mut ws).await?);
    if header(&headers, "Path") != Some("speech.config") || header(&headers, "X-Timestamp").is_none() {
        return close_with(&mut ws, 1007, "expected speech.config").await;
    }
    let config: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    if config["context"]["synthesis"]["audio"]["outputFormat"] != OUTPUT_FORMAT {
        return close_with(&mut ws, 1007, "Unsupported output format").await;
    }
    let (headers, body) = split_text(&next_text(&mut ws).await?);
    let request_id = header(&headers, "X-RequestId").unwrap_or_default().to_owned();
    if header(&headers, "Path") != Some("ssml")
        || header(&headers, "Content-Type") != Some("application/ssml+xml")
        || request_id.len() != 32
    {
        return close_with(&mut ws, 1007, "expected ssml").await;
    }
    let Some((_voice, text)) = ssml_text(&body) else {
        return close_with(&mut ws, 1007, "Invalid SSML").await;
    };
    let started = Instant::now();
    events.push("edge_request");
    let marker = {
        let mut shared = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.texts.push(text.clone());
        shared.fail_marker.clone()
    };
    ws.send(text_message(&request_id, "turn.start", "{\"context\":{\"serviceTag\":\"mock\"}}")).await?;
    if marker.is_some_and(|m| text.contains(&m)) {
        events.push("edge_error");
        return close_with(&mut ws, 1007, "Synthesis failed for this request").await;
    }
    ws.send(text_message(
        &request_id,
        "response",
        "{\"context\":{\"serviceTag\":\"mock\"},\"audio\":{\"type\":\"inline\",\"streamId\":\"1\"}}",
    ))
    .await?;
    let samples = speech(&text, 24_000)?;
    let mp3 = mp3_of(&samples, 24_000, 48)?;
    // 48 kbit/s: 6 bytes a millisecond.
    let per_piece = (timing.chunk_ms as usize * 6).max(1);
    for (index, piece) in mp3.chunks(per_piece).enumerate() {
        timing.wait_for_piece(started, index).await;
        ws.send(audio_message(&request_id, piece)).await?;
        events.push("edge_audio");
    }
    ws.send(audio_message(&request_id, &[])).await?;
    ws.send(text_message(&request_id, "turn.end", "{}")).await?;
    events.push("edge_turn_end");
    // The client closes.
    while let Some(Ok(message)) = ws.next().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
    Ok(())
}
