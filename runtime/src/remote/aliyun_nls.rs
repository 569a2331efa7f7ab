//! What the Alibaba Cloud Intelligent Speech Interaction (NLS) providers share: the access token
//! (configured, or obtained from the `CreateToken` API with an AccessKey and cached until it
//! expires), the POP RPC signature of that call, the gateway URL, and the JSON frames of the NLS
//! WebSocket gateway (`header` + `payload` commands; events with `status`/`status_text`).
//!
//! Documentation followed:
//! - "Obtain an access token" / `CreateToken` (API version 2019-02-28, endpoint
//!   `nls-meta.cn-shanghai.aliyuncs.com`) and the POP RPC signature method ("Request signatures":
//!   sorted, RFC 3986 percent-encoded query; string to sign `GET&%2F&<encoded query>`; HMAC-SHA1
//!   keyed with `AccessKeySecret + "&"`, Base64).
//! - "WebSocket protocol" of real-time speech recognition (SpeechTranscriber) and of CosyVoice
//!   streaming synthesis (FlowingSpeechSynthesizer): the token in the `X-NLS-Token` header or the
//!   `token` query parameter; `header{message_id, task_id, namespace, name, appkey}`; a failure is
//!   the `TaskFailed` event with `header.status` and `header.status_text`.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use tokio::sync::Mutex;

use super::{ProviderError, body_start, request_error};

/// Most bytes of a `CreateToken` answer read (the real one is a few hundred).
const MAX_TOKEN_ANSWER_BYTES: usize = 64 * 1024;

/// The `CreateToken` endpoint (region cn-shanghai serves the tokens of every region).
pub(crate) const DEFAULT_TOKEN_URL: &str = "https://nls-meta.cn-shanghai.aliyuncs.com/";

/// `header.status` of a successful event.
pub(crate) const STATUS_OK: u64 = 20_000_000;

/// A token is renewed this long before its `ExpireTime`.
const RENEW_BEFORE_SECS: i64 = 60;

/// How a secret setting shows in `Debug`: whether it is set, never its value.
pub(crate) fn redacted(secret: &str) -> &'static str {
    if secret.trim().is_empty() { "" } else { "***" }
}

/// RFC 3986 percent-encoding as the POP signature requires: everything but `A-Z a-z 0-9 - _ . ~`
/// is encoded, in upper-case hex (a space is `%20`, `*` is `%2A`, `~` stays).
pub(crate) fn pop_encode(text: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

/// The canonicalized query string: parameters sorted by name, names and values encoded, joined
/// with `&`.
pub(crate) fn canonical_query(params: &[(&str, String)]) -> String {
    let mut sorted: Vec<&(&str, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted.iter().map(|(k, v)| format!("{}={}", pop_encode(k), pop_encode(v))).collect::<Vec<_>>().join("&")
}

/// The POP RPC signature of a `GET /` request with this canonicalized query: Base64 of
/// HMAC-SHA1 over `GET&%2F&<encoded query>`, keyed with `secret + "&"`.
pub(crate) fn pop_signature(secret: &str, canonical: &str) -> String {
    let string_to_sign = format!("GET&{}&{}", pop_encode("/"), pop_encode(canonical));
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes()).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The parameters of a `CreateToken` call (without the signature).
pub(crate) fn create_token_params(access_key_id: &str, nonce: &str, timestamp: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AccessKeyId", access_key_id.to_owned()),
        ("Action", "CreateToken".to_owned()),
        ("Format", "JSON".to_owned()),
        ("RegionId", "cn-shanghai".to_owned()),
        ("SignatureMethod", "HMAC-SHA1".to_owned()),
        ("SignatureNonce", nonce.to_owned()),
        ("SignatureVersion", "1.0".to_owned()),
        ("Timestamp", timestamp.to_owned()),
        ("Version", "2019-02-28".to_owned()),
    ]
}

/// The signed `CreateToken` URL under `base` (the signature first, then the canonical query).
pub(crate) fn create_token_url(base: &str, access_key_id: &str, secret: &str, nonce: &str, timestamp: &str) -> String {
    let canonical = canonical_query(&create_token_params(access_key_id, nonce, timestamp));
    let signature = pop_signature(secret, &canonical);
    let base = base.trim();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}Signature={}&{canonical}", pop_encode(&signature))
}

/// A token's `ExpireTime` as Unix seconds: a number, a string of digits, or an ISO time
/// (`2026-12-06T00:00:00Z`).
pub(crate) fn parse_expire_time(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(secs) = s.parse::<i64>() {
                return Some(secs);
            }
            chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp())
        }
        _ => None,
    }
}

/// Where the NLS providers get their access token: the configured `token`, or, with an
/// AccessKey pair, one from `CreateToken`, kept until shortly before it expires.
pub(crate) struct TokenSource {
    /// `ASR.aliyun_stream` / `TTS.aliyun_stream`, for messages.
    what: &'static str,
    token: String,
    access_key_id: String,
    access_key_secret: String,
    token_url: String,
    timeout: Duration,
    client: reqwest::Client,
    cached: Mutex<Option<(String, i64)>>,
}

impl TokenSource {
    /// A token source; the settings are checked only when a token is needed.
    pub(crate) fn new(
        what: &'static str,
        token: &str,
        access_key_id: &str,
        access_key_secret: &str,
        token_url: &str,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let token_url = if token_url.trim().is_empty() { DEFAULT_TOKEN_URL } else { token_url.trim() };
        super::check_url(token_url, &format!("{what} token_url"))?;
        Ok(Self {
            what,
            token: token.trim().to_owned(),
            access_key_id: access_key_id.trim().to_owned(),
            access_key_secret: access_key_secret.trim().to_owned(),
            token_url: token_url.to_owned(),
            timeout,
            client: super::http_client(timeout, Some(timeout))?,
            cached: Mutex::new(None),
        })
    }

    /// Whether tokens come from `CreateToken` (an AccessKey pair is set), as in the Python server.
    fn uses_access_key(&self) -> bool {
        !self.access_key_id.is_empty() && !self.access_key_secret.is_empty()
    }

    /// The token to connect with.
    pub(crate) async fn token(&self) -> Result<String, ProviderError> {
        if !self.uses_access_key() {
            if self.token.is_empty() {
                return Err(ProviderError::Config(format!(
                    "{}: token is not set (nor access_key_id and access_key_secret)",
                    self.what
                )));
            }
            return Ok(self.token.clone());
        }
        let mut cached = self.cached.lock().await;
        let now = chrono::Utc::now().timestamp();
        if let Some((token, expires)) = cached.as_ref()
            && now < expires - RENEW_BEFORE_SECS
        {
            return Ok(token.clone());
        }
        let (token, expires) = self.create_token().await?;
        *cached = Some((token.clone(), expires));
        Ok(token)
    }

    async fn create_token(&self) -> Result<(String, i64), ProviderError> {
        let nonce = uuid::Uuid::new_v4().to_string();
        let timestamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let url = create_token_url(&self.token_url, &self.access_key_id, &self.access_key_secret, &nonce, &timestamp);
        let shown = super::url_without_query(&self.token_url);
        let what = format!("{} CreateToken", self.what);
        let response =
            self.client.get(&url).send().await.map_err(|e| request_error(&shown, &what, self.timeout, &e))?;
        let status = response.status();
        let body = super::read_capped(response, MAX_TOKEN_ANSWER_BYTES)
            .await
            .map_err(|e| request_error(&shown, &what, self.timeout, &e))?;
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let token = parsed["Token"]["Id"].as_str().filter(|t| !t.trim().is_empty());
        match token {
            Some(token) if status.is_success() => {
                let expires = parse_expire_time(&parsed["Token"]["ExpireTime"]).ok_or_else(|| {
                    ProviderError::Protocol { url: shown.clone(), message: "CreateToken answered no ExpireTime".into() }
                })?;
                Ok((token.to_owned(), expires))
            }
            _ => {
                let code = parsed["Code"].as_str().unwrap_or_default();
                let message = parsed["Message"].as_str().or(parsed["ErrMsg"].as_str()).unwrap_or_default();
                let body = if code.is_empty() && message.is_empty() {
                    body_start(&body)
                } else {
                    format!("CreateToken failed: {code} {message}").trim().to_owned()
                };
                Err(ProviderError::Status { url: shown, status: status.as_u16(), body })
            }
        }
    }
}

/// The gateway's WebSocket URL for `host`: `wss://<host>/ws/v1` (`ws://` for an in-VPC
/// `-internal.` host, as the documentation lists it); a full `ws://`/`wss://` URL is taken as it
/// is.
pub(crate) fn gateway_url(host: &str, what: &str) -> Result<String, ProviderError> {
    let host = host.trim().trim_end_matches('/');
    if host.is_empty() {
        return Err(ProviderError::Config(format!("{what}: host is empty")));
    }
    let url = if host.contains("://") {
        host.to_owned()
    } else if host.contains("-internal.") {
        format!("ws://{host}/ws/v1")
    } else {
        format!("wss://{host}/ws/v1")
    };
    match reqwest::Url::parse(&url) {
        Ok(parsed) if matches!(parsed.scheme(), "ws" | "wss") && parsed.host_str().is_some() => Ok(url),
        _ => Err(ProviderError::Config(format!("{what}: host `{host}` does not make a WebSocket URL"))),
    }
}

/// A new 32-hex-digit id (`message_id`, `task_id`).
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A command frame: `header{message_id, task_id, namespace, name, appkey}` and, unless `Null`,
/// `payload`.
pub(crate) fn command(namespace: &str, name: &str, appkey: &str, task_id: &str, payload: Value) -> String {
    let mut frame = json!({
        "header": {
            "message_id": new_id(),
            "task_id": task_id,
            "namespace": namespace,
            "name": name,
            "appkey": appkey,
        }
    });
    if !payload.is_null() {
        frame["payload"] = payload;
    }
    frame.to_string()
}

/// An event of the gateway.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// `header.name`: `SynthesisStarted`, `SentenceEnd`, `TaskFailed`, ...
    pub name: String,
    /// `header.status` (20000000 is success).
    pub status: u64,
    /// `header.status_text`.
    pub status_text: String,
    /// `payload` (`Null` when absent).
    pub payload: Value,
}

impl Event {
    /// Parses a text frame.
    pub(crate) fn parse(text: &str, url: &str) -> Result<Self, ProviderError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ProviderError::Protocol {
            url: url.to_owned(),
            message: format!("an event is not JSON ({e}): {}", body_start(text.as_bytes())),
        })?;
        let header = &value["header"];
        let name = header["name"].as_str().ok_or_else(|| ProviderError::Protocol {
            url: url.to_owned(),
            message: format!("an event has no header.name: {}", body_start(text.as_bytes())),
        })?;
        let status = match &header["status"] {
            Value::Number(n) => n.as_u64().unwrap_or(0),
            Value::String(s) => s.trim().parse().unwrap_or(0),
            _ => STATUS_OK,
        };
        Ok(Self {
            name: name.to_owned(),
            status,
            status_text: header["status_text"].as_str().unwrap_or_default().to_owned(),
            payload: value.get("payload").cloned().unwrap_or(Value::Null),
        })
    }

    /// The vendor's failure this event reports (`TaskFailed`, or any status other than
    /// success), as an error with its code and message.
    pub(crate) fn failure(&self, url: &str) -> Option<ProviderError> {
        if self.name != "TaskFailed" && (self.status == STATUS_OK || self.status == 0) {
            return None;
        }
        let info = &self.payload["error_info"];
        let code = if self.status != STATUS_OK && self.status != 0 {
            self.status.to_string()
        } else {
            match &info["error_code"] {
                Value::Null => "unknown".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        };
        let text = if self.status_text.is_empty() {
            info["error_message"].as_str().unwrap_or_default().to_owned()
        } else {
            self.status_text.clone()
        };
        Some(ProviderError::Protocol {
            url: super::url_without_query(url),
            message: format!("Aliyun NLS {} {code}: {text}", self.name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pop_encoding_follows_rfc_3986() {
        assert_eq!(pop_encode("a b*c~d/e+f=g&h"), "a%20b%2Ac~d%2Fe%2Bf%3Dg%26h");
        assert_eq!(pop_encode("2026-12-05T23:00:00Z"), "2026-12-05T23%3A00%3A00Z");
        assert_eq!(pop_encode("中"), "%E4%B8%AD");
    }

    #[test]
    fn canonical_query_is_sorted_and_encoded() {
        let params = [("b", "2 3".to_owned()), ("a", "x:y".to_owned())];
        assert_eq!(canonical_query(&params), "a=x%3Ay&b=2%203");
    }

    /// The CreateToken signature against a vector computed independently with Python's hmac,
    /// following the documented algorithm:
    ///
    /// ```text
    /// python3 -c 'import hmac,hashlib,base64,urllib.parse as u
    /// q=lambda s:u.quote(s,safe="~")
    /// p={"AccessKeyId":"testid","Action":"CreateToken","Format":"JSON","RegionId":"cn-shanghai",
    ///    "SignatureMethod":"HMAC-SHA1","SignatureNonce":"b924c8c3-6d03-4c5d-ad36-d984d3116788",
    ///    "SignatureVersion":"1.0","Timestamp":"2019-04-18T08:32:31Z","Version":"2019-02-28"}
    /// c="&".join(q(k)+"="+q(p[k]) for k in sorted(p))
    /// s="GET&"+q("/")+"&"+q(c)
    /// print(c); print(base64.b64encode(hmac.new(b"testsecret&",s.encode(),hashlib.sha1).digest()).decode())'
    /// ```
    #[test]
    fn create_token_signature_matches_the_python_vector() {
        let params = create_token_params("testid", "b924c8c3-6d03-4c5d-ad36-d984d3116788", "2019-04-18T08:32:31Z");
        let canonical = canonical_query(&params);
        assert_eq!(
            canonical,
            "AccessKeyId=testid&Action=CreateToken&Format=JSON&RegionId=cn-shanghai&SignatureMethod=HMAC-SHA1\
             &SignatureNonce=b924c8c3-6d03-4c5d-ad36-d984d3116788&SignatureVersion=1.0\
             &Timestamp=2019-04-18T08%3A32%3A31Z&Version=2019-02-28"
        );
        assert_eq!(pop_signature("testsecret", &canonical), PYTHON_SIGNATURE);
        let url = create_token_url(
            "http://nls-meta.cn-shanghai.aliyuncs.com/",
            "testid",
            "testsecret",
            "b924c8c3-6d03-4c5d-ad36-d984d3116788",
            "2019-04-18T08:32:31Z",
        );
        assert_eq!(
            url,
            format!("http://nls-meta.cn-shanghai.aliyuncs.com/?Signature={}&{canonical}", pop_encode(PYTHON_SIGNATURE))
        );
    }

    /// Output of the command above.
    const PYTHON_SIGNATURE: &str = "z/FNfgKM5ti04NXV7KI4xbqt5tI=";

    #[test]
    fn expire_time_in_every_documented_shape() {
        assert_eq!(parse_expire_time(&json!(1_527_592_757)), Some(1_527_592_757));
        assert_eq!(parse_expire_time(&json!("1527592757")), Some(1_527_592_757));
        assert_eq!(parse_expire_time(&json!("2018-05-29T11:19:17Z")), Some(1_527_592_757));
        assert_eq!(parse_expire_time(&json!(null)), None);
    }

    #[test]
    fn gateway_urls() {
        assert_eq!(
            gateway_url("nls-gateway-cn-shanghai.aliyuncs.com", "t").unwrap(),
            "wss://nls-gateway-cn-shanghai.aliyuncs.com/ws/v1"
        );
        assert_eq!(
            gateway_url("nls-gateway-cn-beijing-internal.aliyuncs.com", "t").unwrap(),
            "ws://nls-gateway-cn-beijing-internal.aliyuncs.com/ws/v1"
        );
        assert_eq!(gateway_url("ws://127.0.0.1:9/ws/v1", "t").unwrap(), "ws://127.0.0.1:9/ws/v1");
        assert!(gateway_url("", "t").is_err());
        assert!(gateway_url("http://x/", "t").is_err());
    }

    #[test]
    fn command_frames_carry_the_header() {
        let frame: Value = serde_json::from_str(&command(
            "FlowingSpeechSynthesizer",
            "RunSynthesis",
            "key1",
            "task1",
            json!({"text": "hi"}),
        ))
        .unwrap();
        assert_eq!(frame["header"]["namespace"], "FlowingSpeechSynthesizer");
        assert_eq!(frame["header"]["name"], "RunSynthesis");
        assert_eq!(frame["header"]["appkey"], "key1");
        assert_eq!(frame["header"]["task_id"], "task1");
        assert_eq!(frame["header"]["message_id"].as_str().unwrap().len(), 32);
        assert_eq!(frame["payload"]["text"], "hi");
        let stop: Value =
            serde_json::from_str(&command("SpeechTranscriber", "StopTranscription", "k", "t", Value::Null)).unwrap();
        assert!(stop.get("payload").is_none());
    }

    #[test]
    fn task_failed_becomes_an_error_with_code_and_message() {
        let failed = Event::parse(
            r#"{"header":{"namespace":"Default","name":"TaskFailed","status":40000003,"message_id":"m","task_id":"t",
                "status_text":"PARAMETER_INVALID:voice is invalid"}}"#,
            "wss://gw/ws/v1?token=SECRET",
        )
        .unwrap();
        let message = failed.failure("wss://gw/ws/v1?token=SECRET").unwrap().to_string();
        assert!(message.contains("40000003") && message.contains("voice is invalid"), "{message}");
        assert!(!message.contains("SECRET"), "{message}");
        // The Python provider's reading: payload.error_info.
        let failed = Event::parse(
            r#"{"header":{"name":"TaskFailed"},"payload":{"error_info":{"error_code":418,"error_message":"teapot"}}}"#,
            "u",
        )
        .unwrap();
        let message = failed.failure("u").unwrap().to_string();
        assert!(message.contains("418") && message.contains("teapot"), "{message}");
        let ok = Event::parse(
            r#"{"header":{"name":"SentenceEnd","status":20000000,"status_text":"Gateway:SUCCESS:Success."},"payload":{"result":"hi"}}"#,
            "u",
        )
        .unwrap();
        assert!(ok.failure("u").is_none());
        assert_eq!(ok.payload["result"], "hi");
        assert!(Event::parse("not json", "u").is_err());
        assert!(Event::parse("{}", "u").is_err());
    }
}
