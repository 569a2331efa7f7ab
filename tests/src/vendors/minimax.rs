//! A protocol peer of MiniMax's T2A v2 speech synthesis over HTTP, streamed, for the
//! `minimax_httpstream` TTS provider. It follows MiniMax's "T2A v2（语音生成）API 接口文档"
//! (platform.minimaxi.com, HTTP interface `https://api.minimax.chat/v1/t2a_v2`):
//!
//! - `POST /v1/t2a_v2?GroupId=<group id>` with `Authorization: Bearer <api key>` and a JSON body
//!   (`model`, `text`, `stream`, `voice_setting.voice_id`, `audio_setting.{sample_rate, bitrate,
//!   format, channel}`); a missing or wrong key or group id is answered, as MiniMax does, with
//!   HTTP 200 and `base_resp.status_code` 1004 (authentication failed);
//! - `stream: true` is answered as server-sent events: `data: {"data":{"audio":"<hex>","status":1},
//!   "trace_id":...,"base_resp":{"status_code":0,"status_msg":""}}` per piece of audio (paced by
//!   [`Timing`]), then a last event with `status` 2 carrying the whole audio again and
//!   `extra_info`;
//! - formats `pcm` (16-bit little-endian mono) and `mp3` (made with sox) at `sample_rate`;
//! - an error in the stream is an event with `data: null` and a `base_resp.status_code` other than
//!   0; the mock answers 1042 (too many invisible characters, a documented code) for every
//!   sentence containing the text set by [`MinimaxMock::fail_sentences_with`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Events, HttpBody, HttpMock, HttpRequest, Timing, full_response, pcm_bytes, speech, streamed_response};

/// The endpoint's path.
pub const PATH: &str = "/v1/t2a_v2";

#[derive(Default)]
struct Shared {
    fail_marker: Option<String>,
    requests: Vec<Value>,
}

/// The mock service. Events: `minimax_request`, `minimax_audio` (each audio event sent),
/// `minimax_end` (the closing event), `minimax_error`.
pub struct MinimaxMock {
    http: HttpMock,
    /// What happened, when.
    pub events: Events,
    shared: Arc<Mutex<Shared>>,
}

fn base_resp(code: i64, message: &str) -> Value {
    json!({"status_code": code, "status_msg": message})
}

fn sse(event: &Value) -> Bytes {
    Bytes::from(format!("data: {event}\n\n"))
}

impl MinimaxMock {
    /// Starts the service for the account `group_id` with `api_key`; audio is sent at the pace of
    /// `timing`.
    pub async fn start(group_id: &str, api_key: &str, timing: Timing) -> anyhow::Result<Self> {
        let events = Events::default();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (group_id, api_key) = (group_id.to_owned(), api_key.to_owned());
        let (handler_events, handler_shared) = (events.clone(), Arc::clone(&shared));
        let http = HttpMock::start(move |request: HttpRequest| {
            let (events, shared) = (handler_events.clone(), Arc::clone(&handler_shared));
            let (group_id, api_key) = (group_id.clone(), api_key.clone());
            async move { answer(request, &group_id, &api_key, timing, events, shared).await }
        })
        .await?;
        Ok(Self { http, events, shared })
    }

    /// The URL to configure (`api_url:` of the entry).
    pub fn url(&self) -> String {
        self.http.url(PATH)
    }

    /// Every sentence containing `marker` gets an error event instead of audio.
    pub fn fail_sentences_with(&self, marker: &str) {
        self.lock().fail_marker = Some(marker.to_owned());
    }

    /// The request bodies so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn answer(
    request: HttpRequest,
    group_id: &str,
    api_key: &str,
    timing: Timing,
    events: Events,
    shared: Arc<Mutex<Shared>>,
) -> hyper::Response<HttpBody> {
    let json_answer = |value: Value| full_response(200, "application/json", value.to_string());
    if request.head.method != "POST" || request.head.path() != PATH {
        return full_response(404, "text/plain", "404 page not found");
    }
    let authorized = request.head.header("authorization") == Some(&format!("Bearer {api_key}"));
    if !authorized || request.head.query().get("GroupId").map(String::as_str) != Some(group_id) {
        return json_answer(
            json!({"base_resp": base_resp(1004, "login fail: Please carry the API secret key in the 'Authorization' field of the request header")}),
        );
    }
    let body = request.json();
    let text = body["text"].as_str().unwrap_or_default().to_owned();
    let voice = body["voice_setting"]["voice_id"].as_str().unwrap_or_default();
    let weights = body["timber_weights"].as_array().is_some_and(|w| !w.is_empty());
    if body["model"].as_str().unwrap_or_default().is_empty() || text.is_empty() || (voice.is_empty() && !weights) {
        return json_answer(json!({"base_resp": base_resp(2013, "invalid params")}));
    }
    if body["stream"] != true {
        return json_answer(json!({"base_resp": base_resp(2013, "this mock only streams")}));
    }
    let setting = &body["audio_setting"];
    let format = setting["format"].as_str().unwrap_or("mp3").to_owned();
    let rate = setting["sample_rate"].as_u64().unwrap_or(32_000) as u32;
    if !matches!(format.as_str(), "mp3" | "pcm") || setting["channel"].as_u64().unwrap_or(1) != 1 {
        return json_answer(json!({"base_resp": base_resp(2013, "invalid audio_setting")}));
    }
    let started = Instant::now();
    events.push("minimax_request");
    let marker = {
        let mut shared = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.requests.push(body.clone());
        shared.fail_marker.clone()
    };
    let (tx, response) = streamed_response(200, "text/event-stream");
    let trace_id = "0303a2882bf18235ae7a809ae0f3cca7";
    tokio::spawn(async move {
        if marker.is_some_and(|m| text.contains(&m)) {
            events.push("minimax_error");
            let event = json!({"data": null, "trace_id": trace_id,
                "base_resp": base_resp(1042, "invisible character ratio exceeds the limit")});
            let _ = tx.send(Ok(sse(&event))).await;
            return;
        }
        let Ok(samples) = speech(&text, rate) else { return };
        let (audio, per_ms) = if format == "pcm" {
            (pcm_bytes(&samples), rate as usize * 2 / 1000)
        } else {
            match super::edge::mp3_of(&samples, rate, 128) {
                Ok(mp3) => (mp3, 16),
                Err(_) => return,
            }
        };
        let per_piece = (per_ms * timing.chunk_ms as usize).max(2) / 2 * 2;
        for (index, piece) in audio.chunks(per_piece).enumerate() {
            timing.wait_for_piece(started, index).await;
            let event = json!({"data": {"audio": hex::encode(piece), "status": 1}, "trace_id": trace_id,
                "base_resp": base_resp(0, "")});
            if tx.send(Ok(sse(&event))).await.is_err() {
                return;
            }
            events.push("minimax_audio");
        }
        let last = json!({
            "data": {"audio": hex::encode(&audio), "status": 2},
            "extra_info": {"audio_length": samples.len() as u64 * 1000 / u64::from(rate), "audio_sample_rate": rate,
                "audio_size": audio.len(), "bitrate": 128000, "audio_format": format, "audio_channel": 1,
                "invisible_character_ratio": 0, "usage_characters": text.chars().count()},
            "trace_id": trace_id,
            "base_resp": base_resp(0, ""),
        });
        let _ = tx.send(Ok(sse(&last))).await;
        events.push("minimax_end");
    });
    response
}
