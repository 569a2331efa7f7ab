//! A FunASR runtime server (the `funasr-runtime-sdk` WebSocket servers), written from FunASR's
//! "WebSocket/gRPC Communication Protocol" (`runtime/docs/websocket_protocol.md` and
//! `websocket_protocol_zh.md` of modelscope/FunASR) and the servers' behaviour in
//! `runtime/websocket/bin/websocket-server.cpp` (offline) and `websocket-server-2pass.cpp`.
//!
//! - The client's first text message configures the utterance (`mode`, `wav_name`, `wav_format`,
//!   `audio_fs`, `is_speaking: true`, `chunk_size`, `itn`, `hotwords`); binary messages are PCM;
//!   `{"is_speaking": false}` ends the utterance.
//! - Offline mode: one answer after the end, `{"mode": "offline", "text", "wav_name",
//!   "is_final": false}` (the offline server's `is_final` is always false).
//! - 2pass mode: `2pass-online` partials while the audio comes (one per 600 ms chunk, as
//!   `chunk_size: [5,10,5]` means), and `{"mode": "2pass-offline", "is_final": true}` at the end.
//! - The FunASR server checks no credentials; deployments put an authenticating proxy in front.
//!   This mock plays that proxy when given a key: the handshake must carry the Python provider's
//!   `Authorization: Bearer; <api_key>`, else 401.
//! - Fault injection: [`FunAsrMock::set_fail`] makes the server close the connection at the end
//!   of speech with close code 1011 and no result (a decoder failure), as a crashed decoder does.
//!
//! It answers its transcript only when the audio it got sounds like speech (and in 16 kHz PCM);
//! otherwise the text is empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{Events, RequestHead, WsMock, is_speech, pcm_samples};

/// Bytes of 16 kHz PCM in one 600 ms online chunk.
const ONLINE_CHUNK_BYTES: usize = 16_000 * 2 * 600 / 1000;

/// The mock server.
pub struct FunAsrMock {
    server: WsMock,
    /// What happened: `connect`, `start`, `audio` (each binary message), `end`, `partial`,
    /// `result`, `failed`.
    pub events: Events,
    fail: Arc<AtomicBool>,
    starts: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl FunAsrMock {
    /// Starts a server that recognises `transcript`; `api_key` (when given) must come as
    /// `Authorization: Bearer; <api_key>`.
    pub async fn start(transcript: &str, api_key: Option<&str>) -> anyhow::Result<Self> {
        let events = Events::default();
        let fail = Arc::new(AtomicBool::new(false));
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let expected = api_key.map(|key| format!("Bearer; {key}"));
        let check = move |head: &RequestHead| match (&expected, head.header("authorization")) {
            (None, _) => Ok(()),
            (Some(expected), Some(got)) if got == expected => Ok(()),
            _ => Err((401, "Unauthorized".to_owned())),
        };
        let session = {
            let (events, fail, starts, transcript) =
                (events.clone(), Arc::clone(&fail), Arc::clone(&starts), transcript.to_owned());
            move |_head: RequestHead, ws| {
                let (events, fail, starts, transcript) =
                    (events.clone(), Arc::clone(&fail), Arc::clone(&starts), transcript.clone());
                async move { run(ws, events, fail, starts, transcript).await }
            }
        };
        let server = WsMock::start(check, session).await?;
        Ok(Self { server, events, fail, starts })
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// Makes every following utterance fail (or not).
    pub fn set_fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// The first message of every utterance so far.
    pub fn starts(&self) -> Vec<Value> {
        self.starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

async fn run(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    events: Events,
    fail: Arc<AtomicBool>,
    starts: Arc<std::sync::Mutex<Vec<Value>>>,
    transcript: String,
) {
    events.push("connect");
    let (mut mode, mut wav_name, mut pcm_ok) = ("2pass".to_owned(), "wav-default-id".to_owned(), true);
    let mut audio: Vec<u8> = Vec::new();
    let mut online_sent = 0;
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) => {
                let Ok(value) = serde_json::from_str::<Value>(&text) else { return };
                if value.get("is_speaking") == Some(&json!(true)) {
                    events.push("start");
                    if let Some(m) = value["mode"].as_str() {
                        mode = m.to_owned();
                    }
                    if let Some(name) = value["wav_name"].as_str() {
                        wav_name = name.to_owned();
                    }
                    pcm_ok = value["wav_format"].as_str().unwrap_or("pcm").eq_ignore_ascii_case("pcm")
                        && value["audio_fs"].as_u64().unwrap_or(16_000) == 16_000;
                    starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(value);
                    continue;
                }
                if value.get("is_speaking") != Some(&json!(false)) {
                    continue;
                }
                events.push("end");
                if fail.load(Ordering::SeqCst) {
                    events.push("failed");
                    let frame = CloseFrame { code: CloseCode::Error, reason: "decoder failed".into() };
                    let _ = ws.close(Some(frame)).await;
                    return;
                }
                let heard = pcm_ok && is_speech(&pcm_samples(&audio), 16_000, 300);
                let text = if heard { transcript.clone() } else { String::new() };
                let answer = if mode == "offline" {
                    json!({"mode": "offline", "text": text, "wav_name": wav_name, "is_final": false})
                } else if !pcm_ok {
                    json!({"text": "ERROR. Real-time transcription service ONLY SUPPORT PCM stream.", "wav_name": wav_name, "is_final": true})
                } else {
                    json!({"mode": "2pass-offline", "text": text, "wav_name": wav_name, "is_final": true, "timestamp": "[[100,200]]"})
                };
                events.push("result");
                let _ = ws.send(Message::text(answer.to_string())).await;
                audio.clear();
                online_sent = 0;
            }
            Message::Binary(data) => {
                events.push("audio");
                audio.extend_from_slice(&data);
                // The 2pass server's partial for each whole 600 ms chunk.
                if mode != "offline" && audio.len() / ONLINE_CHUNK_BYTES > online_sent {
                    online_sent = audio.len() / ONLINE_CHUNK_BYTES;
                    let partial = json!({"mode": "2pass-online", "text": "…", "wav_name": wav_name, "is_final": false});
                    events.push("partial");
                    let _ = ws.send(Message::text(partial.to_string())).await;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}
