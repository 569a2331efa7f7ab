//! `xiaozhi:extension/http`: outgoing requests, only to hosts granted to the extension.
//!
//! Redirects are not followed (the guest sees the 3xx answer and may fetch the new location,
//! which is checked again), so a granted host cannot bounce a request to one that is not.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::super::bindings::xiaozhi::extension::http::{Host, Request, Response};
use super::super::bindings::xiaozhi::extension::types::ExtensionError as WitError;
use super::super::host::CallState;

/// Longest a request may take, whatever the guest asks.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body, bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest request body, bytes.
pub const MAX_REQUEST_BODY_BYTES: usize = 1 << 20;

/// The shared HTTP client of the extension host: no redirects, rustls.
pub(crate) fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("xiaozhi-server/", env!("CARGO_PKG_VERSION"), " (extension)"))
        .build()
}

/// The time a request may take: the guest's wish, capped by [`MAX_TIMEOUT`], the extension's
/// timeout and what is left of the call in progress.
pub(crate) fn request_timeout(requested_ms: Option<u32>, grant: Duration, deadline: Instant, now: Instant) -> Duration {
    let requested = requested_ms.map_or(MAX_TIMEOUT, |ms| Duration::from_millis(u64::from(ms)));
    requested.min(MAX_TIMEOUT).min(grant).min(deadline.saturating_duration_since(now))
}

impl CallState {
    /// Checks the URL against the grant and returns it parsed.
    fn allowed_url(&self, url: &str) -> Result<reqwest::Url, WitError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|err| WitError::InvalidArguments(format!("bad url {url:?}: {err}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(WitError::InvalidArguments(format!("url {url:?} is not http or https")));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(WitError::InvalidArguments("user info in urls is not supported".into()));
        }
        let Some(host) = parsed.host_str() else {
            return Err(WitError::InvalidArguments(format!("url {url:?} has no host")));
        };
        if !self.grant.allows_host(host) {
            return Err(WitError::Denied(format!(
                "http host {host} is not granted to extension {}",
                self.extension_id
            )));
        }
        Ok(parsed)
    }
}

fn headers(pairs: Vec<(String, String)>) -> Result<HeaderMap, WitError> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| WitError::InvalidArguments(format!("bad header name {name:?}")))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| WitError::InvalidArguments(format!("bad value for header {name}")))?;
        map.append(header, value);
    }
    Ok(map)
}

impl Host for CallState {
    async fn fetch(&mut self, req: Request) -> Result<Response, WitError> {
        let url = self.allowed_url(&req.url)?;
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| WitError::InvalidArguments(format!("bad method {:?}", req.method)))?;
        let timeout = request_timeout(req.timeout_ms, self.grant.timeout, self.deadline, Instant::now());
        if timeout.is_zero() {
            return Err(WitError::TimedOut("no time is left in this call".into()));
        }
        let mut request = self.http.request(method, url).headers(headers(req.headers)?).timeout(timeout);
        if let Some(body) = req.body {
            if body.len() > MAX_REQUEST_BODY_BYTES {
                return Err(WitError::InvalidArguments(format!("request body over {MAX_REQUEST_BODY_BYTES} bytes")));
            }
            request = request.body(body);
        }
        let transport = |err: reqwest::Error| {
            if err.is_timeout() {
                WitError::TimedOut(format!("request timed out after {timeout:?}"))
            } else {
                WitError::Failed(format!("request failed: {err}"))
            }
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(WitError::Failed(format!("response body over {MAX_BODY_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response { status, headers, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_is_the_smallest_of_the_caps() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        assert_eq!(request_timeout(None, Duration::from_secs(30), far, now), MAX_TIMEOUT);
        assert_eq!(request_timeout(Some(60_000), Duration::from_secs(30), far, now), MAX_TIMEOUT);
        assert_eq!(request_timeout(Some(500), Duration::from_secs(30), far, now), Duration::from_millis(500));
        assert_eq!(request_timeout(None, Duration::from_secs(2), far, now), Duration::from_secs(2));
        let soon = now + Duration::from_millis(300);
        assert_eq!(request_timeout(None, Duration::from_secs(2), soon, now), Duration::from_millis(300));
        assert_eq!(request_timeout(None, Duration::from_secs(2), now, now + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(headers(vec![("x-ok".into(), "1".into())]).is_ok());
        assert!(matches!(headers(vec![("bad name".into(), "1".into())]), Err(WitError::InvalidArguments(_))));
        assert!(matches!(headers(vec![("x".into(), "a\nb".into())]), Err(WitError::InvalidArguments(_))));
    }
}
