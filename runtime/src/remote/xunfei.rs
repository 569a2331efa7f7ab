//! What the iFlytek (Xunfei, 讯飞开放平台) WebSocket providers share: the signed URL of the
//! platform's WebSocket authentication, and the lenient reading of the Python entries' values.
//!
//! The signing follows the platform's "接口鉴权" section (e.g. <https://www.xfyun.cn/doc/spark/spark_zh_iat.html>,
//! <https://www.xfyun.cn/doc/asr/voicedictation/API.html>): the request is signed over
//!
//! ```text
//! host: <host>\ndate: <RFC1123 date, GMT>\nGET <path> HTTP/1.1
//! ```
//!
//! with HMAC-SHA256 keyed by the APISecret; `signature` is its base64;
//! `authorization_origin` is `api_key="<APIKey>", algorithm="hmac-sha256", headers="host date
//! request-line", signature="<signature>"`, and the URL carries `authorization` (its base64),
//! `date` and `host` as query parameters. The platform refuses a date more than 300 s off its
//! clock.
//!
//! Used by the ASR (`asr::xunfei_stream`) and the TTS (`tts::xunfei_stream`).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer};
use sha2::Sha256;

use crate::remote::ProviderError;

/// The date format of the signature: RFC 1123 in GMT (`Tue, 14 May 2024 08:46:48 GMT`).
pub(crate) fn rfc1123(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `signature`: base64(HMAC-SHA256(api_secret, "host: …\ndate: …\nGET <path> HTTP/1.1")).
pub(crate) fn signature(api_secret: &str, host: &str, date: &str, path: &str) -> String {
    let origin = format!("host: {host}\ndate: {date}\nGET {path} HTTP/1.1");
    // HMAC accepts a key of any length: this never fails.
    let mut mac = Hmac::<Sha256>::new_from_slice(api_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(origin.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// `authorization`: base64 of `api_key="…", algorithm="hmac-sha256", headers="host date
/// request-line", signature="…"`.
pub(crate) fn authorization(api_key: &str, api_secret: &str, host: &str, date: &str, path: &str) -> String {
    let signature = signature(api_secret, host, date, path);
    let origin = format!(
        r#"api_key="{api_key}", algorithm="hmac-sha256", headers="host date request-line", signature="{signature}""#
    );
    BASE64.encode(origin.as_bytes())
}

/// A checked `ws://` / `wss://` endpoint of the platform.
#[derive(Clone)]
pub(crate) struct Endpoint {
    url: reqwest::Url,
}

impl Endpoint {
    /// Parses `url`; anything but an absolute ws(s) URL with a host is a configuration error
    /// (`what` names the entry in the message).
    pub(crate) fn parse(url: &str, what: &str) -> Result<Self, ProviderError> {
        let parsed = reqwest::Url::parse(url.trim())
            .map_err(|e| ProviderError::Config(format!("{what}: api_url `{url}` is invalid: {e}")))?;
        if !matches!(parsed.scheme(), "ws" | "wss") || parsed.host_str().is_none() {
            return Err(ProviderError::Config(format!("{what}: api_url `{url}` is not a ws:// or wss:// URL")));
        }
        Ok(Self { url: parsed })
    }

    /// The URL as configured (no signature: safe for messages).
    pub(crate) fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The `host` that is signed: the host, with its port when the URL names one.
    pub(crate) fn host(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// The URL signed for `date` (see the module documentation).
    pub(crate) fn signed(&self, api_key: &str, api_secret: &str, date: &str) -> String {
        let host = self.host();
        let authorization = authorization(api_key, api_secret, &host, date, self.url.path());
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("authorization", &authorization)
            .append_pair("date", date)
            .append_pair("host", &host);
        url.to_string()
    }

    /// The URL signed now.
    pub(crate) fn signed_now(&self, api_key: &str, api_secret: &str) -> String {
        self.signed(api_key, api_secret, &rfc1123(chrono::Utc::now()))
    }
}

/// A credential of the entry: read like a string, never printed.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The value, trimmed.
    pub fn expose(&self) -> &str {
        self.0.trim()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.expose().is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        lenient_string(deserializer).map(Secret)
    }
}

/// A string value that YAML may have read as a number (`app_id: 12345678`) or left empty.
pub(crate) fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Integer(i64),
        Float(f64),
        Flag(bool),
    }
    Ok(match Option::<Value>::deserialize(deserializer)? {
        None => String::new(),
        Some(Value::Text(text)) => text,
        Some(Value::Integer(n)) => n.to_string(),
        Some(Value::Float(n)) => n.to_string(),
        Some(Value::Flag(b)) => b.to_string(),
    })
}

/// An integer setting that the Python entry may give as a number or a string (`speed: "50"`);
/// empty means "the default" (`None`), as in the Python provider.
pub(crate) fn lenient_int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Integer(i64),
        Float(f64),
        Text(String),
    }
    match Option::<Value>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Value::Integer(n)) => Ok(Some(n)),
        Some(Value::Float(n)) if n.fract() == 0.0 && n.abs() < 1e15 => Ok(Some(n as i64)),
        Some(Value::Float(n)) => Err(serde::de::Error::custom(format!("{n} is not a whole number"))),
        Some(Value::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::Text(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a whole number"))),
    }
}

/// The error of a missing credential, at request time: `<what>: <key> is not set`.
pub(crate) fn require<'a>(value: &'a str, key: &str, what: &str) -> Result<&'a str, ProviderError> {
    let value = value.trim();
    if value.is_empty() { Err(ProviderError::Config(format!("{what}: {key} is not set"))) } else { Ok(value) }
}

/// The platform's error frame (`header.code` not 0) as an error: its code, message and session
/// id (`sid`, what the platform's support asks for).
pub(crate) fn vendor_error(url: &str, header: &serde_json::Value) -> ProviderError {
    let code = header.get("code").map(|c| c.to_string()).unwrap_or_default();
    let message = header.get("message").and_then(|m| m.as_str()).unwrap_or_default();
    let sid = header.get("sid").and_then(|s| s.as_str()).unwrap_or_default();
    ProviderError::Protocol {
        url: crate::remote::url_without_query(url),
        message: format!("iFlytek error {code}: {message} (sid {sid})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The documented examples of the platform's authentication sections. Recomputed with:
    // python3 -c 'import hmac,hashlib,base64;o="host: iat.xf-yun.com\ndate: Tue, 14 May 2024 08:46:48 GMT\nGET /v1 HTTP/1.1";print(base64.b64encode(hmac.new(b"secretxxxxxxxx2df7900c09xxxxxxxx",o.encode(),hashlib.sha256).digest()).decode())'
    const DOC_SECRET: &str = "secretxxxxxxxx2df7900c09xxxxxxxx";
    const DOC_KEY: &str = "keyxxxxxxxx8ee279348519exxxxxxxx";

    #[test]
    fn signature_matches_the_documented_examples() {
        // 大模型中文语音识别 (spark_zh_iat): host iat.xf-yun.com, GET /v1.
        let date = "Tue, 14 May 2024 08:46:48 GMT";
        assert_eq!(
            signature(DOC_SECRET, "iat.xf-yun.com", date, "/v1"),
            "S66FeqTJlvkd+KfJg+a73BAabocwRg2scKflONI8o80="
        );
        assert_eq!(
            authorization(DOC_KEY, DOC_SECRET, "iat.xf-yun.com", date, "/v1"),
            "YXBpX2tleT0ia2V5eHh4eHh4eHg4ZWUyNzkzNDg1MTlleHh4eHh4eHgiLCBhbGdvcml0aG09ImhtYWMtc2hhMjU2IiwgaGVhZGVycz0iaG9zdCBkYXRlIHJlcXVlc3QtbGluZSIsIHNpZ25hdHVyZT0iUzY2RmVxVEpsdmtkK0tmSmcrYTczQkFhYm9jd1JnMnNjS2ZsT05JOG84MD0i"
        );
        // 语音听写（流式版） (voicedictation): host iat-api.xfyun.cn, GET /v2/iat.
        let date = "Wed, 10 Jul 2019 07:35:43 GMT";
        assert_eq!(
            signature(DOC_SECRET, "iat-api.xfyun.cn", date, "/v2/iat"),
            "Hp3Ty4ZkSBmL8jKyOLpQiv9Sr5nvmeYEH7WsL/ZO2Jg="
        );
        assert_eq!(
            authorization(DOC_KEY, DOC_SECRET, "iat-api.xfyun.cn", date, "/v2/iat"),
            "YXBpX2tleT0ia2V5eHh4eHh4eHg4ZWUyNzkzNDg1MTlleHh4eHh4eHgiLCBhbGdvcml0aG09ImhtYWMtc2hhMjU2IiwgaGVhZGVycz0iaG9zdCBkYXRlIHJlcXVlc3QtbGluZSIsIHNpZ25hdHVyZT0iSHAzVHk0WmtTQm1MOGpLeU9McFFpdjlTcjVudm1lWUVIN1dzTC9aTzJKZz0i"
        );
    }

    #[test]
    fn the_signed_url_carries_authorization_date_and_host() {
        let endpoint = Endpoint::parse("wss://iat-api.xfyun.cn/v2/iat", "ASR").expect("valid");
        let url = endpoint.signed(DOC_KEY, DOC_SECRET, "Wed, 10 Jul 2019 07:35:43 GMT");
        // The documented example URL (its query form-encoded: spaces as `+`).
        assert_eq!(
            url,
            "wss://iat-api.xfyun.cn/v2/iat?authorization=YXBpX2tleT0ia2V5eHh4eHh4eHg4ZWUyNzkzNDg1MTlleHh4eHh4eHgiLCBhbGdvcml0aG09ImhtYWMtc2hhMjU2IiwgaGVhZGVycz0iaG9zdCBkYXRlIHJlcXVlc3QtbGluZSIsIHNpZ25hdHVyZT0iSHAzVHk0WmtTQm1MOGpLeU9McFFpdjlTcjVudm1lWUVIN1dzTC9aTzJKZz0i&date=Wed%2C+10+Jul+2019+07%3A35%3A43+GMT&host=iat-api.xfyun.cn"
        );
        // A port is part of the signed host.
        let local = Endpoint::parse("ws://127.0.0.1:9000/v1/private/x", "TTS").expect("valid");
        assert_eq!(local.host(), "127.0.0.1:9000");
        assert!(local.signed("k", "s", "d").contains("&host=127.0.0.1%3A9000"));
    }

    #[test]
    fn dates_are_rfc1123_in_gmt() {
        let at = chrono::DateTime::parse_from_rfc3339("2024-05-14T08:46:48Z").expect("date").to_utc();
        assert_eq!(rfc1123(at), "Tue, 14 May 2024 08:46:48 GMT");
    }

    #[test]
    fn only_websocket_urls_are_endpoints() {
        assert!(Endpoint::parse("https://iat.xf-yun.com/v1", "ASR").is_err());
        assert!(Endpoint::parse("not a url", "ASR").is_err());
        assert!(Endpoint::parse(" wss://iat.xf-yun.com/v1 ", "ASR").is_ok());
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", Secret("abc".into())), "\"***\"");
        assert_eq!(format!("{:?}", Secret(String::new())), "\"\"");
    }

    #[test]
    fn lenient_values_read_numbers_and_strings() {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(deserialize_with = "lenient_string", default)]
            app_id: String,
            #[serde(deserialize_with = "lenient_int", default)]
            speed: Option<i64>,
        }
        let entry: Entry = serde_yaml_ng::from_str("app_id: 12345678\nspeed: \"60\"").expect("parses");
        assert_eq!((entry.app_id.as_str(), entry.speed), ("12345678", Some(60)));
        let entry: Entry = serde_yaml_ng::from_str("app_id: abc\nspeed: \"\"").expect("parses");
        assert_eq!((entry.app_id.as_str(), entry.speed), ("abc", None));
        let entry: Entry = serde_yaml_ng::from_str("speed: 70").expect("parses");
        assert_eq!((entry.app_id.as_str(), entry.speed), ("", Some(70)));
        assert!(serde_yaml_ng::from_str::<Entry>("speed: fast").is_err());
    }
}
