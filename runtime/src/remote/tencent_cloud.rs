//! Tencent Cloud API 3.0, as the speech providers (`asr/tencent.rs`, `tts/tencent.rs`) call it:
//! one signed JSON `POST /` per action, answered `{"Response": {…}}`.
//!
//! Signing is TC3-HMAC-SHA256 as documented in "Signature v3" (Tencent Cloud API 3.0, e.g.
//! <https://www.tencentcloud.com/document/api/1093/35641>; cloud.tencent.com/document/api/1073/37995):
//!
//! - CanonicalRequest = `POST\n/\n\n` + the signed headers as `name:value\n` (names and values in
//!   lower case, sorted by name) + `\n` + the signed header names joined by `;` + `\n` +
//!   hex(SHA-256(body));
//! - StringToSign = `TC3-HMAC-SHA256\n<timestamp>\n<UTC date>/<service>/tc3_request\n` +
//!   hex(SHA-256(CanonicalRequest));
//! - SecretDate = HMAC-SHA256("TC3" + SecretKey, date), SecretService = HMAC(SecretDate, service),
//!   SecretSigning = HMAC(SecretService, "tc3_request"), Signature = hex(HMAC(SecretSigning,
//!   StringToSign));
//! - `Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/<date>/<service>/tc3_request,
//!   SignedHeaders=content-type;host;x-tc-action, Signature=<hex>`, with `X-TC-Action`,
//!   `X-TC-Version`, `X-TC-Timestamp` and (where the product wants it) `X-TC-Region`.
//!
//! Errors come back with HTTP 200 as `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`
//! and become [`ProviderError::Protocol`] with the code and message (the keys scrubbed out).

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Client;
use serde::Deserializer;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{ProviderError, body_start, check_url, http_client, request_error, status_error};

/// The signing algorithm's name.
pub(crate) const ALGORITHM: &str = "TC3-HMAC-SHA256";

/// The request body's type (JSON, as the API 3.0 documentation writes it).
pub(crate) const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Largest answer read, bytes (a synthesized sentence in base64 stays far below it).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// hex(SHA-256(`data`)), lower case.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The UTC date (`YYYY-MM-DD`) of a UNIX timestamp, as the credential scope wants it.
pub(crate) fn utc_date(timestamp: i64) -> String {
    chrono::DateTime::from_timestamp(timestamp, 0).unwrap_or_default().format("%Y-%m-%d").to_string()
}

/// The canonical request of a `POST /` with `headers` signed (any case, any order) and `payload`,
/// and the `SignedHeaders` list.
pub(crate) fn canonical_request(headers: &[(&str, &str)], payload: &[u8]) -> (String, String) {
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase()))
        .collect();
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(name, value)| format!("{name}:{value}\n")).collect();
    let signed_headers = signed.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(";");
    let canonical = format!("POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}", sha256_hex(payload));
    (canonical, signed_headers)
}

/// The string to sign of a canonical request.
pub(crate) fn string_to_sign(timestamp: i64, service: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{timestamp}\n{}/{service}/tc3_request\n{}",
        utc_date(timestamp),
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The signature (hex) of `string_to_sign` under the key derived from `secret_key`.
pub(crate) fn signature(secret_key: &str, date: &str, service: &str, string_to_sign: &str) -> String {
    let secret_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let secret_service = hmac_sha256(&secret_date, service.as_bytes());
    let secret_signing = hmac_sha256(&secret_service, b"tc3_request");
    hex::encode(hmac_sha256(&secret_signing, string_to_sign.as_bytes()))
}

/// The `Authorization` header of a request with `headers` signed.
pub(crate) fn authorization(
    secret_id: &str,
    secret_key: &str,
    service: &str,
    timestamp: i64,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> String {
    let (canonical, signed_headers) = canonical_request(headers, payload);
    let to_sign = string_to_sign(timestamp, service, &canonical);
    let date = utc_date(timestamp);
    let signature = signature(secret_key, &date, service, &to_sign);
    format!(
        "{ALGORITHM} Credential={secret_id}/{date}/{service}/tc3_request, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

/// One Tencent Cloud product endpoint (`https://asr.tencentcloudapi.com`, …).
pub(crate) struct Api {
    client: Client,
    url: String,
    host: String,
    service: &'static str,
    version: &'static str,
    region: String,
    timeout: Duration,
    what: &'static str,
}

/// A key pair (never printed).
#[derive(Clone, Copy)]
pub(crate) struct Keys<'a> {
    /// SecretId.
    pub id: &'a str,
    /// SecretKey.
    pub key: &'a str,
}

impl Api {
    /// An endpoint at `url` (the host is signed as the request sends it: `host[:port]`); `what`
    /// names calls in errors ("TTS request"). An empty `region` sends no `X-TC-Region`.
    pub(crate) fn new(
        url: &str,
        service: &'static str,
        version: &'static str,
        region: &str,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Self, ProviderError> {
        let url = url.trim().to_owned();
        check_url(&url, what)?;
        let parsed = reqwest::Url::parse(&url).map_err(|e| ProviderError::Config(format!("{what} URL: {e}")))?;
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(ProviderError::Config(format!("{what} URL `{url}` has no host"))),
        };
        let client = http_client(timeout, Some(timeout))?;
        Ok(Self { client, url, host, service, version, region: region.trim().to_owned(), timeout, what })
    }

    /// The URL requests go to.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Calls `action` with the JSON `payload`, signed with `keys` at the current time; the
    /// answer's `Response` object (its `Error` already turned into an error).
    pub(crate) async fn call(&self, action: &str, keys: Keys<'_>, payload: Vec<u8>) -> Result<Value, ProviderError> {
        let timestamp = chrono::Utc::now().timestamp();
        let authorization = authorization(
            keys.id,
            keys.key,
            self.service,
            timestamp,
            &[("content-type", CONTENT_TYPE), ("host", &self.host), ("x-tc-action", action)],
            &payload,
        );
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(reqwest::header::HOST, &self.host)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header("X-TC-Action", action)
            .header("X-TC-Version", self.version)
            .header("X-TC-Timestamp", timestamp.to_string());
        if !self.region.is_empty() {
            request = request.header("X-TC-Region", &self.region);
        }
        let send = async {
            let mut response = request
                .body(payload)
                .send()
                .await
                .map_err(|e| request_error(&self.url, self.what, self.timeout, &e))?;
            if !response.status().is_success() {
                return Err(status_error(&self.url, response, self.timeout).await);
            }
            let mut body = Vec::new();
            while let Some(piece) =
                response.chunk().await.map_err(|e| request_error(&self.url, self.what, self.timeout, &e))?
            {
                if body.len() + piece.len() > MAX_ANSWER_BYTES {
                    return Err(ProviderError::Protocol {
                        url: self.url.clone(),
                        message: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
                    });
                }
                body.extend_from_slice(&piece);
            }
            Ok(body)
        };
        let body = match tokio::time::timeout(self.timeout, send).await {
            Ok(body) => body?,
            Err(_) => {
                return Err(ProviderError::Timeout { what: self.what.to_owned(), seconds: self.timeout.as_secs() });
            }
        };
        parse_response(&self.url, &body, keys)
    }
}

/// The `Response` object of an answer; its `Error` becomes [`ProviderError::Protocol`] with the
/// vendor's code and message (any appearance of the keys replaced by `***`).
pub(crate) fn parse_response(url: &str, body: &[u8], keys: Keys<'_>) -> Result<Value, ProviderError> {
    let protocol = |message: String| ProviderError::Protocol { url: url.to_owned(), message };
    let mut answer: Value = serde_json::from_slice(body)
        .map_err(|_| protocol(format!("expected {{\"Response\": …}}, got: {}", body_start(body))))?;
    let Some(response) = answer.get_mut("Response").map(Value::take).filter(Value::is_object) else {
        return Err(protocol(format!("expected {{\"Response\": …}}, got: {}", body_start(body))));
    };
    if let Some(error) = response.get("Error") {
        let text = |field: &str| error.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut message = format!("Tencent Cloud error {}: {}", text("Code"), text("Message"));
        if let Some(id) = response.get("RequestId").and_then(Value::as_str) {
            message.push_str(&format!(" (RequestId {id})"));
        }
        for secret in [keys.key, keys.id] {
            if !secret.trim().is_empty() {
                message = message.replace(secret.trim(), "***");
            }
        }
        return Err(protocol(message));
    }
    Ok(response)
}

/// A setting that YAML may write as text or as a number (`appid: 1300000000` or `"1300…"`,
/// `voice: 101001`): its text; `null` is empty.
pub(crate) fn text_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or a number")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// The key named `name` of a provider, or the error that says it is not set.
pub(crate) fn required<'a>(value: &'a str, what: &str, name: &str) -> Result<&'a str, ProviderError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ProviderError::Config(format!("{what}: {name} is not set")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Tencent Cloud's "Signature v3" page (API 3.0, "Signature method
    /// v3" / 签名方法 v3): CVM DescribeInstances, ap-guangzhou, timestamp 1551113065, SecretKey
    /// `Gu5t9xGARNpq86cd98joQYCN3EXAMPLE`, only `content-type;host` signed. Every intermediate
    /// value below is printed in that document.
    const DOC_PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;

    #[test]
    fn reproduces_the_documented_worked_example() {
        assert_eq!(
            sha256_hex(DOC_PAYLOAD.as_bytes()),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let headers = [("Host", "cvm.tencentcloudapi.com"), ("Content-Type", "application/json; charset=utf-8")];
        let (canonical, signed) = canonical_request(&headers, DOC_PAYLOAD.as_bytes());
        assert_eq!(
            canonical,
            "POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:cvm.tencentcloudapi.com\n\n\
             content-type;host\n35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        assert_eq!(signed, "content-type;host");
        let to_sign = string_to_sign(1551113065, "cvm", &canonical);
        assert_eq!(
            to_sign,
            "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n\
             5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(
            signature("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "2019-02-25", "cvm", &to_sign),
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        assert_eq!(
            authorization(
                "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
                "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
                "cvm",
                1551113065,
                &headers,
                DOC_PAYLOAD.as_bytes()
            ),
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, \
             SignedHeaders=content-type;host, \
             Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    /// With `x-tc-action` signed too (what the providers send; its value in lower case), checked
    /// against an independent computation:
    ///
    /// ```text
    /// python3 -c 'import hashlib,hmac
    /// p=b"{\"Text\": \"hi\"}"; h=lambda b: hashlib.sha256(b).hexdigest()
    /// cr="POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:tts.tencentcloudapi.com\nx-tc-action:texttovoice\n\ncontent-type;host;x-tc-action\n"+h(p)
    /// s="TC3-HMAC-SHA256\n1700000000\n2023-11-14/tts/tc3_request\n"+h(cr.encode())
    /// k=lambda k,m: hmac.new(k,m.encode(),hashlib.sha256).digest()
    /// print(hmac.new(k(k(k(b"TC3sk-EXAMPLE","2023-11-14"),"tts"),"tc3_request"),s.encode(),hashlib.sha256).hexdigest())'
    /// ```
    #[test]
    fn signs_the_action_header_in_lower_case() {
        let auth = authorization(
            "AKID-EXAMPLE",
            "sk-EXAMPLE",
            "tts",
            1_700_000_000,
            &[("content-type", CONTENT_TYPE), ("host", "tts.tencentcloudapi.com"), ("x-tc-action", "TextToVoice")],
            br#"{"Text": "hi"}"#,
        );
        assert_eq!(
            auth,
            "TC3-HMAC-SHA256 Credential=AKID-EXAMPLE/2023-11-14/tts/tc3_request, \
             SignedHeaders=content-type;host;x-tc-action, Signature=6a68cd69eb75d6c4545b37deb36ab92200d8fe0649de126c94598621378f140d"
        );
    }

    #[test]
    fn the_date_is_utc() {
        // 2019-02-26 00:44:25 in UTC+8 is still the 25th in UTC.
        assert_eq!(utc_date(1551113065), "2019-02-25");
        assert_eq!(utc_date(1551139200), "2019-02-26");
    }

    #[test]
    fn error_answers_become_errors_with_code_and_message_without_keys() {
        let keys = Keys { id: "AKIDsecretid", key: "topsecret" };
        let body = br#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"The provided credentials could not be validated (AKIDsecretid, topsecret)."},"RequestId":"r-1"}}"#;
        match parse_response("https://asr.tencentcloudapi.com", body, keys) {
            Err(ProviderError::Protocol { message, .. }) => {
                assert!(message.contains("AuthFailure.SignatureFailure"), "{message}");
                assert!(message.contains("could not be validated"), "{message}");
                assert!(message.contains("r-1"), "{message}");
                assert!(!message.contains("topsecret") && !message.contains("AKIDsecretid"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let ok = parse_response("u", br#"{"Response":{"Result":"hi","RequestId":"r"}}"#, keys).expect("ok");
        assert_eq!(ok["Result"], "hi");
        for garbage in [&b"<html>"[..], br#"{"Result":"hi"}"#, br#"{"Response":"x"}"#] {
            assert!(matches!(parse_response("u", garbage, keys), Err(ProviderError::Protocol { .. })));
        }
    }

    #[test]
    fn text_or_number_accepts_both() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(deserialize_with = "text_or_number")]
            v: String,
        }
        for (yaml, want) in [("v: 101001", "101001"), ("v: \"abc\"", "abc"), ("v: ~", ""), ("v: 1.5", "1.5")] {
            let t: T = serde_yaml_ng::from_str(yaml).expect(yaml);
            assert_eq!(t.v, want);
        }
    }
}
