//! A Tencent Cloud API 3.0 peer for `asr.tencentcloudapi.com` (`SentenceRecognition`, version
//! 2019-06-14) and `tts.tencentcloudapi.com` (`TextToVoice`, version 2019-08-23).
//!
//! Written from Tencent Cloud's documentation: "Signature v3" (API 3.0 signing, TC3-HMAC-SHA256:
//! cloud.tencent.com/document/api/1093/35641 and the same page under each product), "Common
//! Request Parameters" / "Common Error Codes" (`X-TC-Action`, `X-TC-Version`, `X-TC-Timestamp`,
//! `X-TC-Region`; errors as HTTP 200 `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`),
//! "SentenceRecognition" (cloud.tencent.com/document/api/1093/35646: `EngSerViceType`,
//! `SourceType` 1 with base64 `Data` and `DataLen` the byte length before encoding, at most 60 s
//! / 3 MB; answer `Result`, `AudioDuration`) and "TextToVoice"
//! (cloud.tencent.com/document/api/1073/37995: `Text` of at most 150 characters, `SessionId`,
//! `VoiceType`, `Codec` wav/mp3/pcm, `SampleRate`; answer base64 `Audio`, `SessionId`).
//!
//! Like Tencent, it recomputes the signature from the request as received (the headers named in
//! `SignedHeaders`, the body's hash, the derived key of the known SecretKey) and answers
//! `AuthFailure.SecretIdNotFound`, `AuthFailure.SignatureExpire` (timestamp more than 5 minutes
//! off) or `AuthFailure.SignatureFailure`. It can be told to answer an error to the next
//! request(s) or to texts containing a word, and paces synthesis with [`Timing`] (the whole
//! sentence is answered once it is "synthesized": `TextToVoice` is not streamed).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Events, HttpMock, HttpRequest, Timing, full_response, is_speech, pcm_bytes, pcm_samples, speech};

/// The key pair the mock accepts.
pub const SECRET_ID: &str = "AKIDmockTencentSecretId0001";
/// The SecretKey of [`SECRET_ID`].
pub const SECRET_KEY: &str = "mockTencentSecretKey0001";

/// An error the mock is told to answer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The action it applies to (`SentenceRecognition`, `TextToVoice`).
    pub action: String,
    /// Only texts containing this (TTS); empty: any request.
    pub needle: String,
    /// How many more times (`usize::MAX`: always).
    pub times: usize,
    /// Tencent's error code.
    pub code: String,
    /// Its message.
    pub message: String,
}

/// What the mock saw of a request that passed authentication.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `X-TC-Action`.
    pub action: String,
    /// `X-TC-Region` (empty when none).
    pub region: String,
    /// The JSON body.
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    transcript: String,
    timing: Timing,
    failures: Vec<Failure>,
    seen: Vec<Seen>,
}

/// The Tencent Cloud mock (one server answers both products).
pub struct TencentMock {
    server: HttpMock,
    state: Arc<Mutex<State>>,
    /// `asr request` / `asr answer` / `tts request` / `tts answer` / `auth refused`.
    pub events: Events,
}

impl TencentMock {
    /// Starts the mock; recognition answers `transcript` for speech.
    pub async fn start(transcript: &str) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State { transcript: transcript.to_owned(), ..State::default() }));
        let events = Events::default();
        let (shared, log) = (Arc::clone(&state), events.clone());
        let server = HttpMock::start(move |request| {
            let (state, events) = (Arc::clone(&shared), log.clone());
            async move {
                let answer = handle(&state, &events, request).await;
                full_response(200, "application/json", answer.to_string())
            }
        })
        .await?;
        Ok(Self { server, state, events })
    }

    /// The endpoint, as a provider's `api_url`.
    pub fn url(&self) -> String {
        self.server.url("/")
    }

    /// Paces synthesis: the answer comes when the whole sentence is "synthesized".
    pub fn set_timing(&self, timing: Timing) {
        lock(&self.state).timing = timing;
    }

    /// Answers `code`/`message` to the next `times` requests of `action` whose text contains
    /// `needle` (any request when empty).
    pub fn fail(&self, action: &str, needle: &str, times: usize, code: &str, message: &str) {
        lock(&self.state).failures.push(Failure {
            action: action.into(),
            needle: needle.into(),
            times,
            code: code.into(),
            message: message.into(),
        });
    }

    /// The authenticated requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state).seen.clone()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn error(code: &str, message: &str) -> Value {
    json!({"Response": {"Error": {"Code": code, "Message": message}, "RequestId": uuid()}})
}

/// A RequestId (unique per answer).
fn uuid() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!("00000000-0000-4000-8000-{:012x}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn hmac_sha256(key: &[u8], message: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The UTC date of a timestamp (days since the epoch → civil date).
fn utc_date(timestamp: i64) -> String {
    let days = timestamp.div_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Checks the request's TC3-HMAC-SHA256 signature as Tencent does; the error answer if it fails.
fn check_auth(request: &HttpRequest, service: &str) -> Result<(), Value> {
    let head = &request.head;
    let authorization = head.header("authorization").unwrap_or_default();
    let Some(rest) = authorization.strip_prefix("TC3-HMAC-SHA256 ") else {
        return Err(error("AuthFailure.InvalidAuthorization", "Authorization is not TC3-HMAC-SHA256."));
    };
    let field = |name: &str| {
        rest.split(", ").find_map(|part| part.trim().strip_prefix(&format!("{name}="))).unwrap_or_default().to_owned()
    };
    let (credential, signed_headers, signature) = (field("Credential"), field("SignedHeaders"), field("Signature"));
    let parts: Vec<&str> = credential.split('/').collect();
    let [secret_id, date, scope_service, "tc3_request"] = parts[..] else {
        return Err(error("AuthFailure.InvalidAuthorization", "Credential is malformed."));
    };
    if secret_id != SECRET_ID {
        return Err(error(
            "AuthFailure.SecretIdNotFound",
            "The SecretId is not found, please ensure that your SecretId is correct.",
        ));
    }
    let Some(timestamp) = head.header("x-tc-timestamp").and_then(|t| t.parse::<i64>().ok()) else {
        return Err(error("MissingParameter", "The request is missing a required parameter `Timestamp`."));
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if (now - timestamp).abs() > 300 {
        return Err(error("AuthFailure.SignatureExpire", "Signature expired. Timestamp is more than 5 minutes off."));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    if scope_service != service
        || date != utc_date(timestamp)
        || !names.contains(&"content-type")
        || !names.contains(&"host")
    {
        return Err(error("AuthFailure.SignatureFailure", "The provided credentials could not be validated."));
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let value = head.header(name).unwrap_or_default().trim().to_ascii_lowercase();
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical = format!("POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}", sha256_hex(&request.body));
    let to_sign =
        format!("TC3-HMAC-SHA256\n{timestamp}\n{date}/{service}/tc3_request\n{}", sha256_hex(canonical.as_bytes()));
    let key =
        hmac_sha256(&hmac_sha256(&hmac_sha256(format!("TC3{SECRET_KEY}").as_bytes(), date), service), "tc3_request");
    if hex::encode(hmac_sha256(&key, &to_sign)) != signature {
        return Err(error(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. Please check your signature is correct.",
        ));
    }
    Ok(())
}

async fn handle(state: &Mutex<State>, events: &Events, request: HttpRequest) -> Value {
    let head = &request.head;
    if head.method != "POST" || head.path() != "/" {
        return error("UnsupportedProtocol", "Only POST / is supported.");
    }
    let content_type = head.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return error("UnsupportedProtocol", "Content-Type must be application/json.");
    }
    let action = head.header("x-tc-action").unwrap_or_default().to_owned();
    let (service, version) = match action.as_str() {
        "SentenceRecognition" => ("asr", "2019-06-14"),
        "TextToVoice" => ("tts", "2019-08-23"),
        "" => return error("MissingParameter", "The request is missing a required parameter `Action`."),
        _ => return error("InvalidAction", &format!("The action `{action}` is not supported.")),
    };
    if head.header("x-tc-version") != Some(version) {
        return error("NoSuchVersion", "The requested version does not exist or is not supported.");
    }
    // TextToVoice names Region as required; SentenceRecognition does not need one.
    if action == "TextToVoice" && head.header("x-tc-region").is_none_or(|r| r.trim().is_empty()) {
        return error("MissingParameter", "The request is missing a required parameter `Region`.");
    }
    if let Err(refusal) = check_auth(&request, service) {
        events.push("auth refused");
        return refusal;
    }
    let body = request.json();
    let text = body.get("Text").and_then(Value::as_str).unwrap_or_default().to_owned();
    let failure = {
        let mut state = lock(state);
        state.seen.push(Seen {
            action: action.clone(),
            region: head.header("x-tc-region").unwrap_or_default().to_owned(),
            body: body.clone(),
            at: Instant::now(),
        });
        let found = state.failures.iter_mut().find(|f| f.action == action && f.times > 0 && text.contains(&f.needle));
        found.map(|f| {
            f.times = f.times.saturating_sub(1);
            (f.code.clone(), f.message.clone())
        })
    };
    if let Some((code, message)) = failure {
        events.push(format!("{service} error"));
        return error(&code, &message);
    }
    match action.as_str() {
        "SentenceRecognition" => recognize(state, events, &body),
        _ => synthesize(state, events, &body).await,
    }
}

fn recognize(state: &Mutex<State>, events: &Events, body: &Value) -> Value {
    events.push("asr request");
    let engine = body.get("EngSerViceType").and_then(Value::as_str).unwrap_or_default();
    if !engine.starts_with("16k_") && !engine.starts_with("8k_") {
        return error("InvalidParameterValue", "EngSerViceType is invalid.");
    }
    if body.get("SourceType").and_then(Value::as_i64) != Some(1) {
        return error("InvalidParameterValue", "SourceType must be 1 when Data is sent.");
    }
    if body.get("VoiceFormat").and_then(Value::as_str) != Some("pcm") {
        return error("InvalidParameterValue", "The mock only takes VoiceFormat pcm.");
    }
    let Ok(audio) =
        base64::engine::general_purpose::STANDARD.decode(body.get("Data").and_then(Value::as_str).unwrap_or_default())
    else {
        return error("InvalidParameterValue", "Data is not base64.");
    };
    if body.get("DataLen").and_then(Value::as_u64) != Some(audio.len() as u64) {
        return error("InvalidParameterValue", "DataLen does not match the length of the data.");
    }
    if audio.len() > 3 << 20 || audio.len() > 60 * 32_000 {
        return error("FailedOperation.ErrorDownFile", "The audio is longer than 60 s or larger than 3 MB.");
    }
    let samples = pcm_samples(&audio);
    let text = if is_speech(&samples, 16_000, 300) { lock(state).transcript.clone() } else { String::new() };
    events.push("asr answer");
    json!({"Response": {
        "Result": text,
        "AudioDuration": samples.len() / 16,
        "WordSize": 0,
        "WordList": null,
        "RequestId": uuid(),
    }})
}

async fn synthesize(state: &Mutex<State>, events: &Events, body: &Value) -> Value {
    let start = Instant::now();
    events.push("tts request");
    let text = body.get("Text").and_then(Value::as_str).unwrap_or_default();
    if text.trim().is_empty() || text.chars().count() > 150 {
        return error("InvalidParameterValue.TextTooLong", "Text is empty or longer than 150 characters.");
    }
    let Some(session) = body.get("SessionId").and_then(Value::as_str) else {
        return error("MissingParameter", "The request is missing a required parameter `SessionId`.");
    };
    if body.get("VoiceType").is_some_and(|v| !v.is_i64()) {
        return error("InvalidParameterValue.VoiceType", "VoiceType is invalid.");
    }
    let rate = body.get("SampleRate").and_then(Value::as_u64).unwrap_or(16_000) as u32;
    if ![8_000, 16_000, 24_000].contains(&rate) {
        return error("InvalidParameterValue.SampleRate", "SampleRate is invalid.");
    }
    let codec = body.get("Codec").and_then(Value::as_str).unwrap_or("wav");
    let samples = match speech(text, rate) {
        Ok(samples) => samples,
        Err(e) => return error("InternalError", &format!("synthesis failed: {e}")),
    };
    let audio = match codec {
        "pcm" => pcm_bytes(&samples),
        "wav" => xiaozhi_server::audio::decode::wav_bytes(&samples, rate),
        _ => return error("InvalidParameterValue.Codec", "The mock only makes wav and pcm."),
    };
    // Not streamed: the answer waits until the whole sentence is synthesized.
    let timing = lock(state).timing;
    let pieces = timing.pieces(&samples, rate).count();
    timing.wait_for_piece(start, pieces).await;
    events.push("tts answer");
    json!({"Response": {
        "Audio": base64::engine::general_purpose::STANDARD.encode(audio),
        "SessionId": session,
        "Subtitles": [],
        "RequestId": uuid(),
    }})
}

#[cfg(test)]
mod tests {
    use super::utc_date;

    #[test]
    fn civil_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1551113065), "2019-02-25");
        assert_eq!(utc_date(1709208000), "2024-02-29");
    }
}
