//! SiliconFlow's speech endpoint, written from SiliconFlow's API reference "创建文本转语音请求"
//! (<https://docs.siliconflow.cn/api-reference/audio/create-speech>) and its error codes page:
//!
//! - `POST /v1/audio/speech`, `Authorization: Bearer <api key>` (else HTTP 401 `Invalid token`,
//!   plain text, as the API answers), JSON body `{model, input, voice, response_format,
//!   sample_rate, stream, speed, gain}`; `input` required, `response_format` one of `mp3`, `opus`,
//!   `wav`, `pcm`, `sample_rate` one of the documented rates (wav/pcm default 44100), `speed` 0.25–4,
//!   `gain` -10–10; a bad parameter is HTTP 400 `{"code": 20015, "message": …, "data": null}`.
//! - The answer is the audio (`wav` or `pcm` here), streamed as it is produced when `stream` is
//!   true, paced by [`Timing`].
//! - Fault injection: an `input` containing the [`SiliconFlowMock::fail_on`] word is answered
//!   HTTP 400 `{"code": 20012, "message": "…"}` (a content the API refuses).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Events, HttpMock, HttpRequest, Timing, full_response, pcm_bytes, speech, streamed_response};

/// What the mock was asked, request by request.
pub type Requests = Arc<Mutex<Vec<Value>>>;

/// The mock server.
pub struct SiliconFlowMock {
    server: HttpMock,
    /// `request`, `audio` (each piece sent), `done` (the body finished), `refused`.
    pub events: Events,
    /// Every JSON body received.
    pub requests: Requests,
}

impl SiliconFlowMock {
    /// Starts the endpoint for key `api_key`, speaking at `timing`; inputs containing `fail_on`
    /// are refused.
    pub async fn start(api_key: &str, timing: Timing, fail_on: &str) -> anyhow::Result<Self> {
        let events = Events::default();
        let requests: Requests = Arc::default();
        let (key, fail_on) = (format!("Bearer {api_key}"), fail_on.to_owned());
        let server = {
            let (events, requests) = (events.clone(), Arc::clone(&requests));
            HttpMock::start(move |request: HttpRequest| {
                let (events, requests, key, fail_on) =
                    (events.clone(), Arc::clone(&requests), key.clone(), fail_on.clone());
                async move { answer(request, events, requests, &key, timing, &fail_on).await }
            })
            .await?
        };
        Ok(Self { server, events, requests })
    }

    /// The endpoint's URL.
    pub fn url(&self) -> String {
        self.server.url("/v1/audio/speech")
    }
}

fn error(status: u16, code: u32, message: &str) -> hyper::Response<super::HttpBody> {
    full_response(status, "application/json", json!({"code": code, "message": message, "data": null}).to_string())
}

async fn answer(
    request: HttpRequest,
    events: Events,
    requests: Requests,
    key: &str,
    timing: Timing,
    fail_on: &str,
) -> hyper::Response<super::HttpBody> {
    let start = Instant::now();
    if request.head.method != "POST" || request.head.path() != "/v1/audio/speech" {
        return full_response(404, "text/plain", "404 page not found");
    }
    if request.head.header("authorization") != Some(key) {
        events.push("refused");
        return full_response(401, "text/plain", "Invalid token");
    }
    let body = request.json();
    requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(body.clone());
    events.push("request");
    let input = body["input"].as_str().unwrap_or_default().to_owned();
    let format = body["response_format"].as_str().unwrap_or("mp3").to_owned();
    let rate = body["sample_rate"].as_u64().unwrap_or(44_100) as u32;
    let speed = body["speed"].as_f64().unwrap_or(1.0);
    let gain = body["gain"].as_f64().unwrap_or(0.0);
    if input.is_empty() || body["model"].as_str().unwrap_or_default().is_empty() {
        return error(400, 20015, "input and model are required");
    }
    if !["wav", "pcm"].contains(&format.as_str()) || ![8_000, 16_000, 24_000, 32_000, 44_100].contains(&rate) {
        return error(400, 20015, "response_format or sample_rate is not supported");
    }
    if !(0.25..=4.0).contains(&speed) || !(-10.0..=10.0).contains(&gain) || body["stream"] != json!(true) {
        return error(400, 20015, "speed, gain or stream is invalid");
    }
    if !fail_on.is_empty() && input.contains(fail_on) {
        events.push("failed");
        return error(400, 20012, "The input contains content that cannot be synthesized.");
    }
    let samples = match speech(&input, rate) {
        Ok(samples) => samples,
        Err(e) => return error(500, 50000, &e.to_string()),
    };
    let content_type = if format == "wav" { "audio/wav" } else { "audio/pcm" };
    let (tx, response) = streamed_response(200, content_type);
    tokio::spawn(async move {
        if format == "wav" {
            // A streaming synthesizer does not know the length: the sizes are left at their maximum.
            if tx.send(Ok(Bytes::from(streaming_wav_header(rate)))).await.is_err() {
                return;
            }
        }
        for (index, piece) in timing.pieces(&samples, rate).enumerate() {
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

/// A 16-bit mono WAV header whose sizes are unknown (0xFFFFFFFF), as streaming servers send.
pub fn streaming_wav_header(rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&u32::MAX.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * 2).to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&u32::MAX.to_le_bytes());
    h
}
