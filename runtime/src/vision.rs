//! Vision: devices with a camera post a photo and a question, the selected `VLLM` explains it.
//!
//! The device learns where to post from MCP `initialize` (`capabilities.vision {url, token}`, see
//! [`VisionOffer`]); its `self.camera.take_photo` tool then POSTs `multipart/form-data` (a
//! `question` field and a `file` JPEG, usually chunked) to that URL with `Authorization: Bearer
//! <token>`, `Device-Id` and `Client-Id` (device-protocol.md §4.3). The HTTP route
//! ([`crate::http::vision`]) checks the token, caps the body, and asks the model ([`explain`]).
//!
//! **Tokens** are ours, per device and expiring: `base64url(HMAC-SHA256(k, "<device id>|<expiry>"))
//! + "." + <expiry>` (Unix seconds), where `k = HMAC-SHA256(server key, "xiaozhi vision token v1")`.
//! The derived key keeps vision tokens and device (WebSocket) tokens apart: neither can stand in
//! for the other, though both come from the one server key. A token checks only for the device it
//! was issued to, until its expiry (`limits.vision_token_seconds` after issue).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::config::VllmConfig;
use crate::remote::{ProviderError, body_start, check_url, endpoint, error_chain, json_f32};

type HmacSha256 = Hmac<Sha256>;

/// The path of the vision endpoint on the HTTP port.
pub const PATH: &str = "/mcp/vision/explain";

/// Largest answer body read from the vision model.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why a vision token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer …` header.
    #[error("no token")]
    Missing,
    /// Not `<signature>.<expiry>`.
    #[error("malformed token")]
    Malformed,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Not signed by this server for this device.
    #[error("token not valid for this device")]
    BadSignature,
}

fn mac(key: &str, device_id: &str, expires: u64) -> HmacSha256 {
    // HMAC accepts keys of any length, so neither step can fail.
    let mut derive = HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC accepts any key length");
    derive.update(b"xiaozhi vision token v1");
    let derived = derive.finalize().into_bytes();
    let mut mac = HmacSha256::new_from_slice(&derived).expect("HMAC accepts any key length");
    mac.update(format!("{device_id}|{expires}").as_bytes());
    mac
}

/// A vision token for `device_id`, valid until `expires` (Unix seconds).
pub fn issue_token(key: &str, device_id: &str, expires: u64) -> String {
    let signature = mac(key, device_id, expires).finalize().into_bytes();
    format!("{}.{expires}", URL_SAFE_NO_PAD.encode(signature))
}

/// Checks the `Authorization` header value of a vision request from `device_id` at `now`.
pub fn check_token(key: &str, authorization: Option<&str>, device_id: &str, now: u64) -> Result<(), TokenError> {
    let value = authorization.map(str::trim).filter(|v| !v.is_empty()).ok_or(TokenError::Missing)?;
    let token = match value.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => return Err(TokenError::Missing),
    };
    let (signature, expires) = token.split_once('.').ok_or(TokenError::Malformed)?;
    if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::Malformed);
    }
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    if signature.len() != 32 {
        return Err(TokenError::Malformed);
    }
    // The signature first: an expired token of another device says nothing about expiry.
    mac(key, device_id, expires).verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
    if now > expires {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// What a session tells its device in MCP `initialize` when a vision model is selected: the URL
/// to post photos to, and the key and lifetime of the tokens it issues (a fresh one for every
/// `initialize` sent).
#[derive(Clone)]
pub struct VisionOffer {
    /// Where the device posts photos.
    pub url: String,
    /// The server's token key.
    pub key: std::sync::Arc<str>,
    /// Token lifetime, seconds.
    pub lifetime: u64,
}

impl std::fmt::Debug for VisionOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionOffer").field("url", &self.url).field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl VisionOffer {
    /// The URL and a fresh token for `device_id`, issued now.
    pub fn grant(&self, device_id: &str) -> (String, String) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        (self.url.clone(), issue_token(&self.key, device_id, now.saturating_add(self.lifetime)))
    }
}

/// The vision URL devices are given: `server.vision_explain` when set, else this server's HTTP
/// port on the host the device reached the WebSocket at (`host`, a validated `Host` value), else
/// on the configured address.
pub fn endpoint_url(configured: &str, host: Option<&str>, fallback_host: &str, http_port: u16) -> String {
    let configured = configured.trim();
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = host.map(crate::http::ota::host_without_port).unwrap_or(fallback_host);
    format!("http://{host}:{http_port}{PATH}")
}

/// The image type of `data` by its magic bytes (the formats the Python server accepts).
pub fn image_mime(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if data.starts_with(b"BM") {
        Some("image/bmp")
    } else if data.starts_with(b"II*\0") || data.starts_with(b"MM\0*") {
        Some("image/tiff")
    } else if data.len() >= 12 && data.starts_with(b"RIFF") && data.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else {
        None
    }
}

/// One part of a multipart form.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    /// The `name` of its `Content-Disposition`.
    pub name: String,
    /// Its bytes.
    pub data: &'a [u8],
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

/// The parts of a `multipart/form-data` body (RFC 7578), in order. `None` when it is not one.
pub fn parse_multipart<'a>(body: &'a [u8], boundary: &str) -> Option<Vec<Part<'a>>> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut rest = body.get(find(body, delimiter)? + delimiter.len()..)?;
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = std::str::from_utf8(rest.get(..head_end)?).ok()?;
        let content = rest.get(head_end + 4..)?;
        let mut next = Vec::with_capacity(delimiter.len() + 2);
        next.extend_from_slice(b"\r\n");
        next.extend_from_slice(delimiter);
        let end = find(content, &next)?;
        let name = head
            .split("\r\n")
            .find(|line| line.to_ascii_lowercase().starts_with("content-disposition:"))
            .and_then(|line| {
                line.split(';').find_map(|p| p.trim().strip_prefix("name=").map(|v| v.trim_matches('"').to_owned()))
            })
            .unwrap_or_default();
        parts.push(Part { name, data: content.get(..end)? });
        rest = content.get(end + next.len()..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Asks the vision model about one image: an OpenAI-compatible chat completion (not streamed)
/// with the question as text and the image as a `data:` URL, within `timeout`. Returns the
/// answer text.
pub async fn explain(
    cfg: &VllmConfig,
    question: &str,
    image: &[u8],
    mime: &str,
    timeout: Duration,
) -> Result<String, ProviderError> {
    let url = endpoint(&cfg.base_url, "/chat/completions");
    check_url(&url, "VLLM")?;
    let mut body = json!({
        "model": cfg.model_name,
        "messages": [{
            "role": "user",
            "content": [
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{}", STANDARD.encode(image))}},
            ],
        }],
        "stream": false,
    });
    if let Some(obj) = body.as_object_mut() {
        if let Some(t) = cfg.temperature.and_then(json_f32) {
            obj.insert("temperature".into(), t);
        }
        if let Some(p) = cfg.top_p.and_then(json_f32) {
            obj.insert("top_p".into(), p);
        }
        if let Some(m) = cfg.max_tokens {
            obj.insert("max_tokens".into(), json!(m));
        }
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("xiaozhi-server/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {}", error_chain(&e))))?;
    let timed_out = || ProviderError::Timeout { what: "VLLM".into(), seconds: timeout.as_secs().max(1) };
    let mut request = client.post(&url).json(&body);
    if !cfg.api_key.is_empty() {
        request = request.bearer_auth(&cfg.api_key);
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            timed_out()
        } else {
            ProviderError::Transport { url: url.clone(), message: error_chain(&e) }
        }
    })?;
    let status = response.status();
    let mut bytes = Vec::new();
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        if e.is_timeout() {
            timed_out()
        } else {
            ProviderError::Transport { url: url.clone(), message: error_chain(&e) }
        }
    })? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ProviderError::Protocol { url, message: format!("answer over {MAX_ANSWER_BYTES} bytes") });
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(ProviderError::Status { url, status: status.as_u16(), body: body_start(&bytes) });
    }
    let answer: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ProviderError::Protocol { url: url.clone(), message: format!("not JSON ({e})") })?;
    let text = answer.pointer("/choices/0/message/content").and_then(Value::as_str).ok_or_else(|| {
        ProviderError::Protocol { url, message: format!("no choices[0].message.content in {}", body_start(&bytes)) }
    })?;
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_check_for_their_device_until_expiry() {
        let token = issue_token("k", "aa:bb", 1000);
        let bearer = format!("Bearer {token}");
        assert_eq!(check_token("k", Some(&bearer), "aa:bb", 999), Ok(()));
        assert_eq!(check_token("k", Some(&bearer), "aa:bb", 1000), Ok(()));
        assert_eq!(check_token("k", Some(&bearer), "aa:bb", 1001), Err(TokenError::Expired));
        assert_eq!(check_token("k", Some(&bearer), "aa:cc", 999), Err(TokenError::BadSignature));
        assert_eq!(check_token("other", Some(&bearer), "aa:bb", 999), Err(TokenError::BadSignature));
        assert_eq!(check_token("k", None, "aa:bb", 999), Err(TokenError::Missing));
        assert_eq!(check_token("k", Some(&token), "aa:bb", 999), Err(TokenError::Missing), "Bearer is required");
        // A later expiry written onto the signature does not check.
        let (sig, _) = token.split_once('.').unwrap();
        assert_eq!(check_token("k", Some(&format!("Bearer {sig}.5000")), "aa:bb", 999), Err(TokenError::BadSignature));
        assert_eq!(check_token("k", Some("Bearer x.y"), "aa:bb", 1), Err(TokenError::Malformed));
        // A device (WebSocket) token is not a vision token.
        let device = crate::auth::issue_token("k", "client", "aa:bb", 900);
        assert!(check_token("k", Some(&format!("Bearer {device}")), "aa:bb", 901).is_err());
    }

    #[test]
    fn multipart_parts_are_found_by_name() {
        let body = b"--XB\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\nWhat is it?\r\n--XB\r\n\
                     Content-Disposition: form-data; name=\"file\"; filename=\"camera.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\
                     \xff\xd8\xff\x00\r\n--X\r\n--XB--\r\n";
        let parts = parse_multipart(body, "XB").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], Part { name: "question".into(), data: b"What is it?" });
        assert_eq!(parts[1].name, "file");
        assert_eq!(parts[1].data, b"\xff\xd8\xff\x00\r\n--X");
        assert_eq!(image_mime(parts[1].data), Some("image/jpeg"));
        assert!(parse_multipart(b"garbage", "XB").is_none());
        assert_eq!(boundary("multipart/form-data; boundary=\"XB\""), Some("XB".into()));
        assert_eq!(boundary("application/json"), None);
    }

    #[test]
    fn the_url_is_configured_or_our_http_port() {
        assert_eq!(endpoint_url("http://x/e", Some("h:1"), "127.0.0.1", 8003), "http://x/e");
        assert_eq!(
            endpoint_url("", Some("10.0.0.2:8000"), "127.0.0.1", 8003),
            "http://10.0.0.2:8003/mcp/vision/explain"
        );
        assert_eq!(endpoint_url("", None, "127.0.0.1", 9), "http://127.0.0.1:9/mcp/vision/explain");
    }
}
