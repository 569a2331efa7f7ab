//! HTTP through the host's `http` import (only granted hosts), and the request and response
//! helpers every web tool needs. The requests are plain values, so a tool's logic can take a
//! `fetch` function and be unit-tested natively with canned responses.

use serde_json::Value;

use crate::ExtensionError;
pub use crate::host::http::{Request, Response};

/// Longest one request may take unless a tool says otherwise (the host also caps it by the
/// call's own time limit).
pub const DEFAULT_TIMEOUT_MS: u32 = 5_000;

/// A GET request with these headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Request {
    Request {
        method: "GET".into(),
        url: url.to_owned(),
        headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        body: None,
        timeout_ms: Some(DEFAULT_TIMEOUT_MS),
    }
}

/// A POST of `body` as JSON with these headers (and `Content-Type: application/json`).
pub fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> Request {
    let mut request = get(url, headers);
    request.method = "POST".into();
    request.headers.push(("Content-Type".into(), "application/json".into()));
    request.body = Some(body.to_string().into_bytes());
    request
}

/// Sends a request through the host (the extension's manifest must declare the host and the
/// operator grant it).
pub fn send(request: &Request) -> Result<Response, ExtensionError> {
    crate::host::http::fetch(request)
}

/// The body of a 2xx response as text, or an error naming the status and the start of the body.
pub fn text(response: &Response) -> Result<String, ExtensionError> {
    let body = String::from_utf8_lossy(&response.body).into_owned();
    if (200..300).contains(&response.status) {
        Ok(body)
    } else {
        let start: String = body.chars().take(200).collect();
        Err(ExtensionError::Failed(format!("HTTP {}: {start}", response.status)))
    }
}

/// The body of a 2xx response parsed as JSON.
pub fn json(response: &Response) -> Result<Value, ExtensionError> {
    let body = text(response)?;
    serde_json::from_str(&body).map_err(|err| ExtensionError::Failed(format!("the answer is not JSON: {err}")))
}

/// A URL-encoded query component.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `base` without trailing slashes, then `path` (which starts with `/`).
pub fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers() {
        let request = post_json("https://a.example/x", &[("Authorization", "Bearer k")], &serde_json::json!({"q": 1}));
        assert_eq!(request.method, "POST");
        assert_eq!(request.body.as_deref(), Some(br#"{"q":1}"#.as_slice()));
        assert!(request.headers.iter().any(|(k, v)| k == "Content-Type" && v == "application/json"));
        let ok = Response { status: 200, headers: vec![], body: br#"{"a":1}"#.to_vec() };
        assert_eq!(json(&ok).expect("json")["a"], 1);
        let bad = Response { status: 401, headers: vec![], body: b"no key".to_vec() };
        assert!(matches!(text(&bad), Err(ExtensionError::Failed(m)) if m == "HTTP 401: no key"));
        assert_eq!(encode("两 a&b"), "%E4%B8%A4%20a%26b");
        assert_eq!(join("http://h:8123/", "/api/states"), "http://h:8123/api/states");
    }
}
