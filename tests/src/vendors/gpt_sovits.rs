//! A GPT-SoVITS server, written from the API documentation at the top of GPT-SoVITS's
//! `api_v2.py` ("WebAPI文档", RVC-Boss/GPT-SoVITS) and of its `api.py` (the v3 API), and their
//! handlers (`check_params`, `tts_handle`, `handle`):
//!
//! - v2: `POST /tts` with JSON. `text`, `text_lang`, `ref_audio_path`, `prompt_lang` are
//!   required, `media_type` one of `wav`, `raw`, `ogg`, `aac` (this mock speaks `wav` and `raw`),
//!   `text_split_method` one of `cut0`…`cut5`, `streaming_mode` false/true or 0–3; a failed check is
//!   HTTP 400 `{"message": …}`, a failed synthesis HTTP 400 `{"message": "tts failed",
//!   "Exception": …}`. Streaming: a WAV header (Python's `wave` module, sizes 0) and then raw
//!   PCM chunk by chunk, paced by [`Timing`]; otherwise the whole file once synthesized.
//! - v3 (`api.py`): `GET /` with query parameters (`refer_wav_path`, `prompt_text`,
//!   `prompt_language`, `text`, `text_language`, `top_k`, `top_p`, `temperature`, `speed`,
//!   `inp_refs`, `sample_steps`, `if_sr`, `cut_punc`); without a complete reference the server's
//!   default one (`-dr/-dt/-dl`) is used, and with none: HTTP 400 `{"code": 400, "message":
//!   "未指定参考音频且接口无预设"}`. The answer is a whole WAV once synthesized (`-sm close`, the
//!   default).
//! - No authentication (the server has none).
//! - Fault injection: a text containing the `fail_on` word fails the synthesis (v2: 400 `tts
//!   failed`; v3: 400 `{"code": 400, …}`).
//!
//! The model's rate: 32 kHz (v2 models) for v2, 24 kHz for v3.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Events, HttpMock, HttpRequest, Timing, full_response, pcm_bytes, speech, streamed_response};

/// The mock server.
pub struct GptSovitsMock {
    server: HttpMock,
    /// `request`, `audio` (each piece sent), `done`, `failed`.
    pub events: Events,
    /// Every request: the v2 JSON body, or the v3 query as a JSON object (repeated keys as lists).
    pub requests: Arc<Mutex<Vec<Value>>>,
}

impl GptSovitsMock {
    /// Starts a server speaking at `timing`; texts containing `fail_on` fail. `default_refer`:
    /// whether the v3 server was started with a default reference.
    pub async fn start(timing: Timing, fail_on: &str, default_refer: bool) -> anyhow::Result<Self> {
        let events = Events::default();
        let requests: Arc<Mutex<Vec<Value>>> = Arc::default();
        let fail_on = fail_on.to_owned();
        let server = {
            let (events, requests) = (events.clone(), Arc::clone(&requests));
            HttpMock::start(move |request: HttpRequest| {
                let (events, requests, fail_on) = (events.clone(), Arc::clone(&requests), fail_on.clone());
                async move {
                    match (request.head.method.as_str(), request.head.path()) {
                        ("POST", "/tts") => v2(request, events, requests, timing, &fail_on).await,
                        ("GET", "/") => v3(request, events, requests, &fail_on, default_refer).await,
                        _ => full_response(404, "application/json", r#"{"detail":"Not Found"}"#),
                    }
                }
            })
            .await?
        };
        Ok(Self { server, events, requests })
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }
}

fn message(status: u16, body: Value) -> hyper::Response<super::HttpBody> {
    full_response(status, "application/json", body.to_string())
}

/// The header Python's `wave` module writes for no frames yet (sizes 0).
fn wave_header(rate: u32) -> Vec<u8> {
    let mut h = super::siliconflow::streaming_wav_header(rate);
    h[4..8].copy_from_slice(&36u32.to_le_bytes());
    h[40..44].copy_from_slice(&0u32.to_le_bytes());
    h
}

async fn v2(
    request: HttpRequest,
    events: Events,
    requests: Arc<Mutex<Vec<Value>>>,
    timing: Timing,
    fail_on: &str,
) -> hyper::Response<super::HttpBody> {
    let start = Instant::now();
    let req = request.json();
    requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(req.clone());
    events.push("request");
    let text = |key: &str| req[key].as_str().unwrap_or_default().to_owned();
    for key in ["ref_audio_path", "text", "text_lang", "prompt_lang"] {
        if text(key).is_empty() {
            return message(400, json!({"message": format!("{key} is required")}));
        }
    }
    let media_type = req["media_type"].as_str().unwrap_or("wav").to_owned();
    if !["wav", "raw", "ogg", "aac"].contains(&media_type.as_str()) {
        return message(400, json!({"message": format!("media_type: {media_type} is not supported")}));
    }
    let split = req["text_split_method"].as_str().unwrap_or("cut5");
    if !["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"].contains(&split) {
        return message(400, json!({"message": format!("text_split_method:{split} is not supported")}));
    }
    let streaming = match &req["streaming_mode"] {
        Value::Bool(b) => *b,
        Value::Number(n) if n.as_i64().is_some_and(|m| (0..=3).contains(&m)) => n.as_i64() != Some(0),
        Value::Null => false,
        _ => {
            return message(
                400,
                json!({"message": "the value of streaming_mode must be 0, 1, 2, 3(int) or true/false(bool)"}),
            );
        }
    } || req["return_fragment"] == json!(true);
    let input = text("text");
    if !fail_on.is_empty() && input.contains(fail_on) {
        events.push("failed");
        return message(400, json!({"message": "tts failed", "Exception": "CUDA out of memory"}));
    }
    if !["wav", "raw"].contains(&media_type.as_str()) {
        return message(400, json!({"message": "tts failed", "Exception": "this mock speaks wav and raw"}));
    }
    let rate = 32_000;
    let Ok(samples) = speech(&input, rate) else {
        return message(400, json!({"message": "tts failed", "Exception": "espeak-ng"}));
    };
    if !streaming {
        let audio_ms = samples.len() as u64 * 1000 / u64::from(rate);
        tokio::time::sleep(timing.first_byte + std::time::Duration::from_millis(audio_ms).mul_f64(timing.rtf)).await;
        events.push("audio");
        events.push("done");
        let body = if media_type == "wav" { wav(&samples, rate) } else { pcm_bytes(&samples) };
        return full_response(200, &format!("audio/{media_type}"), body);
    }
    let (tx, response) = streamed_response(200, &format!("audio/{media_type}"));
    tokio::spawn(async move {
        if media_type == "wav" && tx.send(Ok(Bytes::from(wave_header(rate)))).await.is_err() {
            return;
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

async fn v3(
    request: HttpRequest,
    events: Events,
    requests: Arc<Mutex<Vec<Value>>>,
    fail_on: &str,
    default_refer: bool,
) -> hyper::Response<super::HttpBody> {
    // The query, repeated keys (inp_refs) kept as lists.
    let query = request.head.target.split_once('?').map(|(_, q)| q.to_owned()).unwrap_or_default();
    let mut params = serde_json::Map::new();
    if let Ok(url) = reqwest::Url::parse(&format!("http://mock/?{query}")) {
        for (key, value) in url.query_pairs() {
            match params.get_mut(key.as_ref()) {
                Some(Value::Array(list)) => list.push(json!(value)),
                Some(existing) => *existing = json!([existing.clone(), value]),
                None if key == "inp_refs" => {
                    params.insert(key.into_owned(), json!([value]));
                }
                None => {
                    params.insert(key.into_owned(), json!(value));
                }
            }
        }
    }
    let req = Value::Object(params);
    requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(req.clone());
    events.push("request");
    let get = |key: &str| req[key].as_str().unwrap_or_default().to_owned();
    let complete =
        !get("refer_wav_path").is_empty() && !get("prompt_text").is_empty() && !get("prompt_language").is_empty();
    if !complete && !default_refer {
        return message(400, json!({"code": 400, "message": "未指定参考音频且接口无预设"}));
    }
    // FastAPI's validation of the typed parameters.
    for (key, is_valid) in [
        ("top_k", get("top_k").parse::<i64>().is_ok()),
        ("top_p", get("top_p").parse::<f64>().is_ok()),
        ("temperature", get("temperature").parse::<f64>().is_ok()),
        ("speed", get("speed").parse::<f64>().is_ok()),
        ("sample_steps", get("sample_steps").parse::<i64>().is_ok()),
        ("if_sr", ["true", "false", "1", "0"].contains(&get("if_sr").to_ascii_lowercase().as_str())),
    ] {
        if !is_valid {
            return message(422, json!({"detail": [{"loc": ["query", key], "msg": "invalid value"}]}));
        }
    }
    let text = get("text");
    if !fail_on.is_empty() && text.contains(fail_on) {
        events.push("failed");
        return message(400, json!({"code": 400, "message": "synthesis failed: CUDA out of memory"}));
    }
    let rate = 24_000;
    match speech(&text, rate) {
        Ok(samples) => {
            events.push("audio");
            events.push("done");
            full_response(200, "audio/wav", wav(&samples, rate))
        }
        Err(e) => message(400, json!({"code": 400, "message": e.to_string()})),
    }
}

fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let mut out = super::siliconflow::streaming_wav_header(rate);
    let data = pcm_bytes(samples);
    out[4..8].copy_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}
