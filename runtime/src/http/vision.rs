//! `POST /mcp/vision/explain`: a device's photo and question, explained by the selected `VLLM`
//! (see [`crate::vision`] for the tokens and the model call).
//!
//! In order: the token (`Authorization: Bearer`, issued to the `Device-Id` of the request and not
//! expired; otherwise 401 `{"success":false,"message":…}`), the declared size (a `Content-Length`
//! over `limits.vision_body_bytes` is 413 before anything is read), one request per device and
//! `limits.vision_requests` in all (429), the body (counted while it streams: 413 at the limit,
//! 408 after `limits.http_body_timeout_ms`), the form (`question` and `file` parts, the file an
//! image by its magic bytes; 400 otherwise), then the model, within `limits.vision_timeout_ms`.
//!
//! The answer is the Python server's: 200 `{"success":true,"action":"RESPONSE","response":…}`,
//! or 200 `{"success":false,"message":…}` when no model is selected or the model failed (the
//! firmware hands the body verbatim to the LLM as the tool's result).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use http_body_util::Full;
use hyper::body::Body;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::{HttpContext, body_error, json_response, read_body_limited, text};
use crate::vision;

/// The vision requests in progress, by device.
#[derive(Debug, Default)]
pub struct Gate {
    // std Mutex: held for one set update, never across an await.
    busy: Mutex<HashSet<String>>,
}

/// A request's place in the [`Gate`]; leaving frees it.
pub struct Pass {
    gate: Arc<Gate>,
    device: String,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.device);
    }
}

impl Gate {
    /// A place for `device`, unless it already has one or `max` are taken.
    pub fn enter(self: &Arc<Self>, device: &str, max: usize) -> Option<Pass> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if busy.len() >= max || !busy.insert(device.to_owned()) {
            return None;
        }
        Some(Pass { gate: Arc::clone(self), device: device.to_owned() })
    }
}

fn failure(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"success": false, "message": message}))
}

/// `GET`: whether the endpoint can answer.
pub fn status(ctx: &HttpContext) -> Response<Full<Bytes>> {
    let config = ctx.config.borrow().clone();
    match &config.providers.vllm {
        Some(vllm) => text(StatusCode::OK, format!("The vision endpoint is running (model {}).", vllm.model_name)),
        None => text(StatusCode::OK, "The vision endpoint is not in use: select a model in selected_module.VLLM."),
    }
}

/// `POST`: explains the posted photo (see the module documentation).
pub async fn explain<B>(req: Request<B>, ctx: &HttpContext) -> Response<Full<Bytes>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = ctx.config.borrow().clone();
    let (parts, body) = req.into_parts();
    let header = |name: &str| super::ota::header(&parts.headers, name);
    let device = header("device-id").unwrap_or_default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Err(e) = vision::check_token(&ctx.auth_key, header("authorization").as_deref(), &device, now) {
        tracing::warn!(%device, "vision request refused: {e}");
        return failure(StatusCode::UNAUTHORIZED, "Invalid authentication token or token expired");
    }
    let limits = &config.limits;
    let Some(_pass) = ctx.vision.enter(&device, limits.vision_requests) else {
        ctx.metrics.limit_hit("vision_requests");
        tracing::warn!(%device, "vision request refused: one is in progress for this device, or too many in all");
        return failure(StatusCode::TOO_MANY_REQUESTS, "another vision request is in progress");
    };
    let body = match read_body_limited(&parts.headers, body, ctx, limits.vision_body_bytes).await {
        Ok(body) => body,
        Err(e) => {
            if matches!(e, super::BodyError::TooLarge(_)) {
                ctx.metrics.limit_hit("vision_body_bytes");
                tracing::warn!(%device, "vision request refused: body over {} bytes", limits.vision_body_bytes);
            }
            return body_error(e);
        }
    };
    let Some(boundary) = header("content-type").as_deref().and_then(vision::boundary) else {
        return failure(StatusCode::BAD_REQUEST, "expected multipart/form-data");
    };
    let Some(form) = vision::parse_multipart(&body, &boundary) else {
        return failure(StatusCode::BAD_REQUEST, "malformed multipart/form-data body");
    };
    // By name, else by position (the firmware sends the question first, then the file).
    let by_name = |name: &str, index: usize| {
        form.iter().find(|p| p.name == name).or_else(|| form.get(index).filter(|p| p.name.is_empty()))
    };
    let Some(question) = by_name("question", 0).map(|p| String::from_utf8_lossy(p.data).into_owned()) else {
        return failure(StatusCode::BAD_REQUEST, "Missing question field");
    };
    let Some(image) = by_name("file", 1).map(|p| p.data).filter(|d| !d.is_empty()) else {
        return failure(StatusCode::BAD_REQUEST, "Missing image file");
    };
    let Some(mime) = vision::image_mime(image) else {
        return failure(StatusCode::BAD_REQUEST, "Unsupported file format: JPEG, PNG, GIF, BMP, TIFF or WEBP");
    };
    let Some(vllm) = &config.providers.vllm else {
        return failure(StatusCode::OK, "No vision model is selected (selected_module.VLLM)");
    };
    let started = std::time::Instant::now();
    let timeout = Duration::from_millis(limits.vision_timeout_ms);
    tracing::info!(%device, bytes = image.len(), "vision: {question}");
    match vision::explain(vllm, &question, image, mime, timeout).await {
        Ok(answer) => {
            tracing::info!(%device, ms = started.elapsed().as_millis() as u64, "vision answered");
            json_response(StatusCode::OK, &json!({"success": true, "action": "RESPONSE", "response": answer}))
        }
        Err(e) => {
            tracing::warn!(%device, "the vision model failed: {e}");
            failure(StatusCode::OK, "The vision model could not explain the photo")
        }
    }
}
