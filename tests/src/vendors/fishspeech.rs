//! A Fish Speech API server, written from fishaudio/fish-speech's HTTP API: `tools/api_server.py`
//! (the `--api-key` bearer check), `tools/server/views.py` (`POST /v1/tts`), `tools/server/api_utils.py`
//! (bodies in msgpack, JSON or a form), `fish_speech/utils/schema.py` (`ServeTTSRequest`),
//! `tools/server/inference.py` and `fish_speech/inference_engine` (the streamed answer) and
//! `tools/server/exception_handler.py` (errors):
//!
//! - With a key, `Authorization: Bearer <key>` or HTTP 401 `{"statusCode": 401, "message":
//!   "Invalid token", "error": "Unauthorized"}`.
//! - A JSON `ServeTTSRequest`: `text`; `chunk_length` 100–1000; `format` `wav`/`pcm`/`mp3`;
//!   `references` `[{audio (base64), text}]`; `reference_id`; `seed`; `use_memory_cache` `on`/`off`;
//!   `normalize`; `streaming`; `max_new_tokens`; `top_p` 0.1–1; `repetition_penalty` 0.9–2;
//!   `temperature` 0.1–1 (out of range: HTTP 422). `streaming` with a format other than `wav` is
//!   HTTP 400 `Streaming only supports WAV format`.
//! - Streaming: a WAV header with sizes 0 (Python's `wave` module), then int16 PCM segment by
//!   segment, paced by [`Timing`]; otherwise the whole file once synthesized. 44.1 kHz.
//! - Fault injection: a text containing the `fail_on` word fails like an inference error: HTTP 500
//!   `{"statusCode": 500, "message": "No audio generated, please check the input text.", …}`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Events, HttpMock, HttpRequest, Timing, full_response, pcm_bytes, speech, streamed_response};

/// The model's output rate.
pub const RATE: u32 = 44_100;

/// The mock server.
pub struct FishSpeechMock {
    server: HttpMock,
    /// `request`, `audio` (each piece sent), `done`, `refused`, `failed`.
    pub events: Events,
    /// Every JSON body received.
    pub requests: Arc<Mutex<Vec<Value>>>,
}

impl FishSpeechMock {
    /// Starts a server (`api_key`: its `--api-key`) speaking at `timing`; texts containing
    /// `fail_on` fail.
    pub async fn start(api_key: Option<&str>, timing: Timing, fail_on: &str) -> anyhow::Result<Self> {
        let events = Events::default();
        let requests: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (key, fail_on) = (api_key.map(|k| format!("Bearer {k}")), fail_on.to_owned());
        let server = {
            let (events, requests) = (events.clone(), Arc::clone(&requests));
            HttpMock::start(move |request: HttpRequest| {
                let (events, requests, key, fail_on) =
                    (events.clone(), Arc::clone(&requests), key.clone(), fail_on.clone());
                async move { answer(request, events, requests, key.as_deref(), timing, &fail_on).await }
            })
            .await?
        };
        Ok(Self { server, events, requests })
    }

    /// The `/v1/tts` URL.
    pub fn url(&self) -> String {
        self.server.url("/v1/tts")
    }
}

fn error(status: u16, message: &str, phrase: &str) -> hyper::Response<super::HttpBody> {
    full_response(
        status,
        "application/json",
        json!({"statusCode": status, "message": message, "error": phrase}).to_string(),
    )
}

/// Checks the `ServeTTSRequest` fields the schema constrains.
fn validate(req: &Value) -> Result<(), String> {
    let number = |key: &str, default: f64| req.get(key).map_or(Some(default), Value::as_f64);
    if !req["text"].is_string() {
        return Err("text: field required".into());
    }
    let in_range =
        |key: &str, default: f64, low: f64, high: f64| number(key, default).is_some_and(|v| (low..=high).contains(&v));
    if !in_range("chunk_length", 200.0, 100.0, 1000.0)
        || !in_range("top_p", 0.8, 0.1, 1.0)
        || !in_range("repetition_penalty", 1.1, 0.9, 2.0)
        || !in_range("temperature", 0.8, 0.1, 1.0)
    {
        return Err("a sampling parameter is out of range".into());
    }
    if !["wav", "pcm", "mp3", "opus"].contains(&req["format"].as_str().unwrap_or("wav")) {
        return Err("format: unexpected value".into());
    }
    if !["on", "off"].contains(&req["use_memory_cache"].as_str().unwrap_or("off")) {
        return Err("use_memory_cache: unexpected value".into());
    }
    for reference in req["references"].as_array().into_iter().flatten() {
        let audio = reference["audio"].as_str().ok_or("references.audio: field required")?;
        if !is_base64(audio) {
            return Err("references.audio: not base64".into());
        }
        if !reference["text"].is_string() {
            return Err("references.text: field required".into());
        }
    }
    Ok(())
}

/// Whether `text` is standard base64 (the schema decodes reference audio given as a string).
fn is_base64(text: &str) -> bool {
    text.len().is_multiple_of(4)
        && text.trim_end_matches('=').len() + 2 >= text.len()
        && text.trim_end_matches('=').bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

async fn answer(
    request: HttpRequest,
    events: Events,
    requests: Arc<Mutex<Vec<Value>>>,
    key: Option<&str>,
    timing: Timing,
    fail_on: &str,
) -> hyper::Response<super::HttpBody> {
    let start = Instant::now();
    if let Some(key) = key
        && request.head.header("authorization") != Some(key)
    {
        events.push("refused");
        return error(401, "Invalid token", "Unauthorized");
    }
    if request.head.method != "POST" || request.head.path() != "/v1/tts" {
        return error(404, "Not Found", "Not Found");
    }
    if !request.head.header("content-type").unwrap_or_default().starts_with("application/json") {
        return error(415, "Unsupported Media Type", "Unsupported Media Type");
    }
    let req = request.json();
    requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(req.clone());
    events.push("request");
    if let Err(message) = validate(&req) {
        return error(422, &message, "Unprocessable Entity");
    }
    let format = req["format"].as_str().unwrap_or("wav").to_owned();
    let streaming = req["streaming"] == json!(true);
    if streaming && format != "wav" {
        return error(400, "Streaming only supports WAV format", "Bad Request");
    }
    let text = req["text"].as_str().unwrap_or_default().to_owned();
    if text.trim().is_empty() || (!fail_on.is_empty() && text.contains(fail_on)) {
        events.push("failed");
        return error(500, "No audio generated, please check the input text.", "Internal Server Error");
    }
    if !["wav", "pcm"].contains(&format.as_str()) {
        return error(500, "this mock speaks wav and pcm", "Internal Server Error");
    }
    let Ok(samples) = speech(&text, RATE) else {
        return error(500, "espeak-ng failed", "Internal Server Error");
    };
    let header = {
        let mut h = super::siliconflow::streaming_wav_header(RATE);
        h[4..8].copy_from_slice(&36u32.to_le_bytes());
        h[40..44].copy_from_slice(&0u32.to_le_bytes());
        h
    };
    let content_type = if format == "wav" { "audio/wav" } else { "application/octet-stream" };
    if !streaming {
        let audio_ms = samples.len() as u64 * 1000 / u64::from(RATE);
        tokio::time::sleep(timing.first_byte + std::time::Duration::from_millis(audio_ms).mul_f64(timing.rtf)).await;
        let data = pcm_bytes(&samples);
        let body = if format == "wav" {
            let mut out = header;
            out[4..8].copy_from_slice(&(36 + data.len() as u32).to_le_bytes());
            out[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&data);
            out
        } else {
            data
        };
        events.push("audio");
        events.push("done");
        return full_response(200, content_type, body);
    }
    let (tx, response) = streamed_response(200, content_type);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(header))).await.is_err() {
            return;
        }
        for (index, piece) in timing.pieces(&samples, RATE).enumerate() {
            timing.wait_for_piece(start, index).await;
            events.push("audio");
            if tx.send(Ok(Bytes::from(pcm_bytes(piece)))).await.is_err() {
                return;
            }
        }
        events.push("done");
    });
    response
}
