//! The iFlytek (Xunfei, 讯飞开放平台) mocks: the large-model dictation (`iat`) and the
//! super-natural synthesis (超拟人合成) WebSocket services.
//!
//! Written from the platform's documentation:
//! - WebSocket authentication, "接口鉴权" of <https://www.xfyun.cn/doc/spark/spark_zh_iat.html> and
//!   <https://www.xfyun.cn/doc/spark/spark_slm_iat.html>: the URL carries `authorization`, `date`
//!   and `host`; the signature (base64 HMAC-SHA256 with the APISecret of `host: …\ndate:
//!   …\nGET <path> HTTP/1.1`) is recomputed here and a wrong one refused with HTTP 401, a date
//!   more than 300 s off with HTTP 403 ("a valid date or x-date header is required"), the
//!   platform's answers to a refused handshake;
//! - dictation, "方言大模型 / 大模型中文语音识别 API 文档" (same pages): frames `{header: {app_id,
//!   status}, parameter: {iat: {domain, language, accent, ...}}, payload: {audio: {encoding: raw,
//!   sample_rate, status, seq, audio}}}` with status 0/1/2; answers `{header: {code, message, sid,
//!   status}, payload: {result: {text: base64 of {sn, ls, pgs, rg, ws: [{cw: [{w}]}]}}}}`, partial
//!   results replaced (`pgs: rpl`, `rg`) when `dwa: wpgs` is asked; error frames with a `code`
//!   (10313 invalid appid, 10163 param validate error, 10161 base64 error, ...);
//! - synthesis, "超拟人合成 API 文档" (<https://www.xfyun.cn/doc/spark/super%20smart-tts.html>):
//!   requests `{header: {app_id, status}, parameter: {oral, tts: {vcn, ..., audio: {encoding,
//!   sample_rate}}}, payload: {text: {status, seq, text: base64}}}` (text streamed in with status
//!   0/1/2), answers `{header: {code, message, sid, status}, payload: {audio: {encoding, sample_rate,
//!   status, seq, audio: base64}}}` paced like a synthesizer ([`Timing`]), status 2 last.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Events, Refusal, RequestHead, Timing, WsMock, is_speech, pcm_bytes, pcm_samples, speech};

/// The credentials a mock accepts.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// APPID.
    pub app_id: String,
    /// APIKey.
    pub api_key: String,
    /// APISecret.
    pub api_secret: String,
}

impl Default for Credentials {
    fn default() -> Self {
        Self {
            app_id: "5f9a1b2c".into(),
            api_key: "0123456789abcdef0123456789abcdef".into(),
            api_secret: "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4".into(),
        }
    }
}

impl Credentials {
    /// The entry's credential lines (YAML).
    pub fn yaml(&self) -> String {
        format!("app_id: \"{}\"\napi_key: \"{}\"\napi_secret: \"{}\"\n", self.app_id, self.api_key, self.api_secret)
    }
}

/// base64(HMAC-SHA256(api_secret, "host: <host>\ndate: <date>\nGET <path> HTTP/1.1")).
pub fn signature(api_secret: &str, host: &str, date: &str, path: &str) -> String {
    let origin = format!("host: {host}\ndate: {date}\nGET {path} HTTP/1.1");
    let mut mac = Hmac::<Sha256>::new_from_slice(api_secret.as_bytes()).expect("any key length");
    mac.update(origin.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// A URL signed for `date` by the documented rule (what a client of the platform sends).
pub fn signed_url(base: &str, host: &str, path: &str, creds: &Credentials, date: &str) -> String {
    let origin = format!(
        r#"api_key="{}", algorithm="hmac-sha256", headers="host date request-line", signature="{}""#,
        creds.api_key,
        signature(&creds.api_secret, host, date, path)
    );
    let mut url = reqwest::Url::parse(&format!("{base}{path}")).expect("a URL");
    url.query_pairs_mut()
        .append_pair("authorization", &BASE64.encode(origin))
        .append_pair("date", date)
        .append_pair("host", host);
    url.to_string()
}

/// The platform's check of a handshake: the signed `authorization`, `date` within 300 s, the
/// APIKey.
pub fn check_auth(head: &RequestHead, creds: &Credentials) -> Result<(), Refusal> {
    let unauthorized = |message: &str| (401, json!({ "message": message }).to_string());
    if head.method != "GET" {
        return Err(unauthorized("Unauthorized"));
    }
    let query = head.query();
    let (Some(authorization), Some(date), Some(host)) =
        (query.get("authorization"), query.get("date"), query.get("host"))
    else {
        return Err(unauthorized("Unauthorized"));
    };
    if head.header("host") != Some(host.as_str()) {
        return Err(unauthorized("HMAC signature cannot be verified"));
    }
    let Ok(at) = chrono::DateTime::parse_from_rfc2822(date) else {
        return Err((
            403,
            json!({"message": "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication"}).to_string(),
        ));
    };
    if (chrono::Utc::now() - at.to_utc()).num_seconds().abs() > 300 {
        return Err((
            403,
            json!({"message": "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication"}).to_string(),
        ));
    }
    let Some(origin) = BASE64.decode(authorization).ok().and_then(|b| String::from_utf8(b).ok()) else {
        return Err(unauthorized("HMAC signature cannot be verified"));
    };
    let mut fields = std::collections::BTreeMap::new();
    for part in origin.split(", ") {
        let Some((name, value)) = part.split_once('=') else {
            return Err(unauthorized("HMAC signature cannot be verified"));
        };
        fields.insert(name.trim().to_owned(), value.trim().trim_matches('"').to_owned());
    }
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
    if field("api_key") != creds.api_key {
        return Err(unauthorized("Unauthorized"));
    }
    if field("algorithm") != "hmac-sha256" || field("headers") != "host date request-line" {
        return Err(unauthorized("HMAC signature cannot be verified"));
    }
    if field("signature") != signature(&creds.api_secret, host, date, head.path()) {
        return Err(unauthorized("HMAC signature does not match"));
    }
    Ok(())
}

/// An error frame the mock answers: `code` and `message`.
pub type VendorError = (i64, String);

fn error_frame(code: i64, message: &str, sid: &str) -> Message {
    Message::text(json!({"header": {"code": code, "message": message, "sid": sid, "status": 2}}).to_string())
}

fn new_sid(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!("{prefix}{:08x}@dx18f5b16b0330324", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the dictation mock does and saw.
#[derive(Debug, Default)]
struct IatState {
    transcript: String,
    fail: Option<VendorError>,
    /// The first frame of each session.
    first_frames: Vec<Value>,
    /// The audio of the last session.
    audio: Vec<i16>,
}

/// The dictation service (`/v1`). Events: `connect`, `audio` (each audio frame), `partial` (a
/// first guess sent while the user speaks, with `dwa: wpgs`), `end` (the status 2 frame),
/// `result` (the last answer sent, which replaces the guess).
pub struct XunfeiIatMock {
    ws: WsMock,
    state: Arc<Mutex<IatState>>,
    events: Events,
}

impl XunfeiIatMock {
    /// Starts the service; it recognises `transcript` in any speech.
    pub async fn start(creds: Credentials, transcript: &str) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(IatState { transcript: transcript.to_owned(), ..IatState::default() }));
        let events = Events::default();
        let check_creds = creds.clone();
        let (session_state, session_events) = (Arc::clone(&state), events.clone());
        let ws = WsMock::start(
            move |head| check_auth(head, &check_creds),
            move |_, ws| iat_session(ws, creds.clone(), Arc::clone(&session_state), session_events.clone()),
        )
        .await?;
        Ok(Self { ws, state, events })
    }

    /// The endpoint (`ws://127.0.0.1:<port>/v1`).
    pub fn url(&self) -> String {
        self.ws.url("/v1")
    }

    /// What happened, when.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Answer this error frame to the next sessions (`None`: recognise again).
    pub fn set_error(&self, error: Option<VendorError>) {
        lock(&self.state).fail = error;
    }

    /// The first frames of the sessions so far.
    pub fn first_frames(&self) -> Vec<Value> {
        lock(&self.state).first_frames.clone()
    }

    /// The audio of the last session.
    pub fn last_audio(&self) -> Vec<i16> {
        lock(&self.state).audio.clone()
    }
}

/// The result text of the protocol: `{sn, ls, ws: [{cw: [{w}]}]}` plus `extra`, base64.
fn result_text(sn: i64, words: &[&str], last: bool, extra: Value) -> String {
    let mut result = json!({
        "sn": sn, "ls": last, "bg": 0, "ed": 0,
        "ws": words.iter().map(|w| json!({"bg": 0, "cw": [{"sc": 0, "w": w}]})).collect::<Vec<_>>(),
    });
    if let (Some(target), Some(extra)) = (result.as_object_mut(), extra.as_object()) {
        target.extend(extra.clone());
    }
    BASE64.encode(result.to_string())
}

fn result_frame(sid: &str, status: i64, seq: i64, text: String) -> Message {
    Message::text(
        json!({
            "header": {"code": 0, "message": "success", "sid": sid, "status": status},
            "payload": {"result": {"compress": "raw", "encoding": "utf8", "format": "json", "seq": seq, "status": status, "text": text}},
        })
        .to_string(),
    )
}

async fn iat_session(
    mut ws: WebSocketStream<TcpStream>,
    creds: Credentials,
    state: Arc<Mutex<IatState>>,
    events: Events,
) {
    events.push("connect");
    let sid = new_sid("iat000e0044");
    let mut audio = Vec::new();
    let mut frames = 0usize;
    let mut wpgs = false;
    let mut partial_sent = false;
    let mut seq = 0i64;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            let _ = ws.send(error_frame(10160, "parse request json error", &sid)).await;
            return;
        };
        if frame["header"]["app_id"].as_str() != Some(creds.app_id.as_str()) {
            let _ = ws.send(error_frame(10313, "invalid appid", &sid)).await;
            return;
        }
        let status = frame["header"]["status"].as_i64().unwrap_or(-1);
        if frames == 0 {
            let iat = &frame["parameter"]["iat"];
            let named = |key: &str| iat[key].as_str().is_some_and(|v| !v.is_empty());
            if status != 0 || !named("domain") || !named("language") || !named("accent") {
                let _ = ws
                    .send(error_frame(
                        10163,
                        "param validate error: first frame needs status 0 and parameter.iat",
                        &sid,
                    ))
                    .await;
                return;
            }
            wpgs = iat["dwa"] == "wpgs";
            lock(&state).first_frames.push(frame.clone());
            let fail = lock(&state).fail.clone();
            if let Some((code, message)) = fail {
                let _ = ws.send(error_frame(code, &message, &sid)).await;
                let _ = ws.close(None).await;
                return;
            }
            let _ = ws
                .send(Message::text(
                    json!({"header": {"code": 0, "message": "success", "sid": sid, "status": 0}}).to_string(),
                ))
                .await;
        }
        frames += 1;
        let payload = &frame["payload"]["audio"];
        if payload["encoding"] != "raw" || payload["sample_rate"] != 16000 {
            let _ = ws.send(error_frame(10163, "param validate error: audio must be raw 16000", &sid)).await;
            return;
        }
        let Some(bytes) = payload["audio"].as_str().and_then(|a| BASE64.decode(a).ok()) else {
            let _ = ws.send(error_frame(10161, "parse base64 string error", &sid)).await;
            return;
        };
        if !bytes.is_empty() {
            events.push("audio");
            audio.extend(pcm_samples(&bytes));
        }
        let transcript = lock(&state).transcript.clone();
        let words: Vec<&str> = transcript.split_inclusive(' ').collect();
        // With dynamic correction, a first guess after a second of audio (its first word
        // misheard), replaced by the final result.
        if wpgs && !partial_sent && audio.len() >= 16_000 && is_speech(&audio, 16_000, 500) {
            partial_sent = true;
            seq += 1;
            let guess = words.first().map(|w| format!("{}… ", w.trim_end())).unwrap_or_default();
            let _ = ws.send(result_frame(&sid, 1, seq, result_text(1, &[&guess], false, json!({"pgs": "apd"})))).await;
            events.push("partial");
        }
        if status == 2 {
            events.push("end");
            lock(&state).audio = audio.clone();
            let heard: Vec<&str> = if is_speech(&audio, 16_000, 300) { words } else { Vec::new() };
            let extra = if partial_sent { json!({"pgs": "rpl", "rg": [1, 1]}) } else { json!({}) };
            let sn = if partial_sent { 2 } else { 1 };
            seq += 1;
            let _ = ws.send(result_frame(&sid, 2, seq, result_text(sn, &heard, true, extra))).await;
            events.push("result");
            let _ = ws.close(None).await;
            return;
        }
    }
}

/// What the synthesis mock does and saw.
#[derive(Debug, Default)]
struct TtsState {
    timing: Timing,
    /// Answer an error frame to a sentence containing this text.
    fail: Option<(String, VendorError)>,
    /// The requests received.
    requests: Vec<Value>,
    /// The sentences synthesized.
    sentences: Vec<String>,
}

/// The synthesis service (`/v1/private/mcd9m97e6`). Events: `connect`, `text` (each request with
/// text), `text_end` (status 2), `audio` (each audio answer), `audio_end` (the last answer).
pub struct XunfeiTtsMock {
    ws: WsMock,
    state: Arc<Mutex<TtsState>>,
    events: Events,
}

impl XunfeiTtsMock {
    /// Starts the service, paced by `timing`.
    pub async fn start(creds: Credentials, timing: Timing) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(TtsState { timing, ..TtsState::default() }));
        let events = Events::default();
        let check_creds = creds.clone();
        let (session_state, session_events) = (Arc::clone(&state), events.clone());
        let ws = WsMock::start(
            move |head| check_auth(head, &check_creds),
            move |_, ws| tts_session(ws, creds.clone(), Arc::clone(&session_state), session_events.clone()),
        )
        .await?;
        Ok(Self { ws, state, events })
    }

    /// The endpoint (`ws://127.0.0.1:<port>/v1/private/mcd9m97e6`).
    pub fn url(&self) -> String {
        self.ws.url("/v1/private/mcd9m97e6")
    }

    /// What happened, when.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Answer `error` to sentences containing `needle` (`None`: synthesize everything).
    pub fn fail_on(&self, fail: Option<(&str, VendorError)>) {
        lock(&self.state).fail = fail.map(|(needle, error)| (needle.to_owned(), error));
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.state).requests.clone()
    }

    /// The sentences synthesized so far.
    pub fn sentences(&self) -> Vec<String> {
        lock(&self.state).sentences.clone()
    }
}

async fn tts_session(
    mut ws: WebSocketStream<TcpStream>,
    creds: Credentials,
    state: Arc<Mutex<TtsState>>,
    events: Events,
) {
    events.push("connect");
    let sid = new_sid("tts000e0044");
    let mut text = String::new();
    let mut parameters = Value::Null;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(raw) = message else { continue };
        let Ok(request) = serde_json::from_str::<Value>(raw.as_str()) else {
            let _ = ws.send(error_frame(10160, "parse request json error", &sid)).await;
            return;
        };
        lock(&state).requests.push(request.clone());
        if request["header"]["app_id"].as_str() != Some(creds.app_id.as_str()) {
            let _ = ws.send(error_frame(10313, "invalid appid", &sid)).await;
            return;
        }
        let tts = &request["parameter"]["tts"];
        let encoding = tts["audio"]["encoding"].as_str().unwrap_or_default();
        let rate = tts["audio"]["sample_rate"].as_u64().unwrap_or(0);
        if tts["vcn"].as_str().is_none_or(str::is_empty) || encoding != "raw" || ![8000, 16000, 24000].contains(&rate) {
            let _ = ws.send(error_frame(10163, "param validate error: parameter.tts", &sid)).await;
            return;
        }
        parameters = request["parameter"].clone();
        let Some(piece) = request["payload"]["text"]["text"]
            .as_str()
            .and_then(|t| BASE64.decode(t).ok())
            .and_then(|b| String::from_utf8(b).ok())
        else {
            let _ = ws.send(error_frame(10161, "parse base64 string error", &sid)).await;
            return;
        };
        if !piece.trim().is_empty() {
            events.push("text");
        }
        text.push_str(&piece);
        if request["header"]["status"] == 2 {
            events.push("text_end");
            break;
        }
    }
    let sentence = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let (timing, fail) = {
        let state = lock(&state);
        (state.timing, state.fail.clone())
    };
    if let Some((needle, (code, message))) = fail
        && sentence.contains(&needle)
    {
        let _ = ws.send(error_frame(code, &message, &sid)).await;
        let _ = ws.close(None).await;
        return;
    }
    let started = Instant::now();
    let rate = parameters["tts"]["audio"]["sample_rate"].as_u64().unwrap_or(24_000) as u32;
    let spoken = sentence.clone();
    let Ok(Ok(samples)) = tokio::task::spawn_blocking(move || speech(&spoken, rate)).await else {
        let _ = ws.send(error_frame(10700, "engine error", &sid)).await;
        return;
    };
    lock(&state).sentences.push(sentence);
    let answer = |status: i64, seq: usize, pcm: &[i16]| {
        Message::text(
            json!({
                "header": {"code": 0, "message": "success", "sid": sid, "status": status},
                "payload": {"audio": {
                    "encoding": "raw", "sample_rate": rate, "channels": 1, "bit_depth": 16,
                    "status": status, "seq": seq, "frame_size": 0, "audio": BASE64.encode(pcm_bytes(pcm)),
                }},
            })
            .to_string(),
        )
    };
    let mut seq = 0;
    for (index, piece) in timing.pieces(&samples, rate).enumerate() {
        timing.wait_for_piece(started, index).await;
        seq += 1;
        if ws.send(answer(1, seq, piece)).await.is_err() {
            return;
        }
        events.push("audio");
    }
    let _ = ws.send(answer(2, seq + 1, &[])).await;
    events.push("audio_end");
    // The client closes; wait briefly for it.
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
}
