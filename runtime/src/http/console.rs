//! The console's sign-in and its JSON API (`<console.path>/api/…`, HTTP port only), the same
//! operations as the `agent` subcommand. Off unless `console.password` is set.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /console/` | the console's page (and `console.css`, `console.js`); `GET /console/talk.html` the talk page (`talk.js`, `capture.js`): see `runtime/console/` |
//! | `POST /console/api/login` `{"password": …}` | 200 `{"csrf": …}` and the session cookie; 401 wrong password; 429 while the caller must wait |
//! | `POST /console/api/logout` | 200; the session ends |
//! | `GET /console/api/session` | 200 `{"csrf": …}` of the caller's session |
//! | `GET /console/api/agents` | 200 `{"agents": [{…agent, "devices": […]}]}` |
//! | `PUT /console/api/agents/<id>` agent JSON | 200 the saved agent; 400 with the reason it is refused |
//! | `DELETE /console/api/agents/<id>` | 200; its devices go back to the configuration's settings |
//! | `PUT /console/api/devices/<device id>/agent` `{"agent": id or null}` | 200 |
//! | `GET /console/api/devices` | 200 `{"devices": [{"id", "online", "bound", "agent", "last_seen", "board", "firmware"}]}`: every device checked in, bound, assigned or with stored memory or history |
//! | `POST /console/api/devices/bind` `{"code": …}` | 200 `{"device": …}`: the device showing that activation code is bound; 404 unknown code |
//! | `DELETE /console/api/devices/<id>/binding` | 200; it must activate again (when activation is on) |
//! | `POST /console/api/devices/<id>/revoke` | 200; the tokens issued to it so far stop working |
//! | `GET /console/api/devices/<id>/history?q=<text>` | 200 `{"history": […]}`, only messages containing `q` (any case) when given |
//! | `DELETE /console/api/devices/<id>/history` | 200; its chat history is gone |
//! | `GET /console/api/devices/<id>/export` | 200 its memory and history, as `xiaozhi-server data export` writes them |
//! | `GET /console/api/devices/<id>/memory` | 200 `{"memory": {extension: {key: value}}}` |
//! | `PUT /console/api/devices/<id>/memory/<extension>/<key>` `{"value": …}` | 200 |
//! | `DELETE /console/api/devices/<id>/memory` | 200 `{"deleted": n}`: every key/value of the device |
//! | `GET /console/api/figures` | 200 live figures: sessions, turns by outcome, first-audio latency ([`crate::metrics::Metrics::live`]) |
//! | `GET /console/api/extensions`, `POST /console/api/extensions/reload` | what the extensions serve (status, last error, grants); reload the folders |
//! | `GET /console/api/firmware`, `PUT /console/api/firmware/<model>_<version>.bin` (the image as the body, at most [`MAX_FIRMWARE_BYTES`]), `DELETE /console/api/firmware/<name>` | the firmware images OTA offers (`data/bin/`): list, upload (written whole, then renamed into place), delete |
//! | `POST /console/api/talk` `{"agent": id or null}` | 200 `{"url", "device_id", "client_id", "token"}`: how the talk page connects as the device `console-talk[-<agent>]`, which is given that agent (and bound, with activation on); `token` is null unless `server.auth` asks for one |
//! | `GET /console/api/mcp-tokens`, `POST /console/api/mcp-tokens` `{"device": id or null}`, `DELETE /console/api/mcp-tokens/<id>` | the MCP endpoint's tokens: list (with `url`, the endpoint's address a token is appended to), issue (shown once), revoke |
//!
//! **Sessions**: a sign-in sets `xz_console=<256 random bits>; HttpOnly; SameSite=Strict;
//! Path=<console.path>` (`Secure` too when the request came through HTTPS, `X-Forwarded-Proto:
//! https`), valid `console.session_hours`; at most [`MAX_SESSIONS`] at once (a new one ends the
//! oldest). Every API call but the sign-in needs the cookie (else 401), and every call that
//! changes something (POST, PUT, DELETE) also the session's CSRF token in `X-CSRF-Token` (else
//! 403), so another site cannot act through a signed-in browser.
//!
//! **Sign-in throttling**: after the n-th wrong password in a row from one address (IPv6 by its
//! /64), that address must wait 2^(n-1) s (at most [`MAX_WAIT`]) before its next try; a try
//! before then is answered 429 with `Retry-After`, without looking at the password. At most
//! [`MAX_ADDRESSES`] addresses are tracked; when all are waiting, unknown addresses wait too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::limit::block;
use super::{Caller, HttpContext, json_response, read_body, same_secret};
use crate::agents::{self, Agent, AgentError};

/// The session cookie's name.
pub const COOKIE: &str = "xz_console";

/// Largest firmware image uploaded, bytes (an ESP32 app partition is at most a few MiB).
pub const MAX_FIRMWARE_BYTES: usize = 16 * 1024 * 1024;

/// Most console sessions at once.
pub const MAX_SESSIONS: usize = 64;

/// Longest wait imposed after wrong passwords.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Most addresses whose wrong passwords are remembered.
pub const MAX_ADDRESSES: usize = 10_000;

/// One signed-in browser.
struct Session {
    csrf: String,
    expires: Instant,
}

/// Wrong passwords in a row from one address, and when it may try again.
struct Failures {
    count: u32,
    next_try: Instant,
}

/// The console's sessions and sign-in throttle.
#[derive(Default)]
pub struct Console {
    // std Mutexes: held for one map operation, never across an await.
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// How long `addr` must still wait before trying a password, if at all.
    fn must_wait(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = failures.get(&block(addr)) {
            return (f.next_try > now).then(|| f.next_try - now);
        }
        if failures.len() >= MAX_ADDRESSES {
            failures.retain(|_, f| f.next_try > now);
            if failures.len() >= MAX_ADDRESSES {
                return Some(Duration::from_secs(1));
            }
        }
        None
    }

    /// A wrong password from `addr`: the wait before its next try.
    fn failed(&self, addr: IpAddr, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let entry = failures.entry(block(addr)).or_insert(Failures { count: 0, next_try: now });
        entry.count = entry.count.saturating_add(1);
        let wait = Duration::from_secs(1u64 << (entry.count - 1).min(6)).min(MAX_WAIT);
        entry.next_try = now + wait;
        wait
    }

    /// A new session; returns its id and CSRF token.
    fn sign_in(&self, addr: IpAddr, lifetime: Duration, now: Instant) -> (String, String) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&block(addr));
        let id = hex::encode(rand::random::<[u8; 32]>());
        let csrf = hex::encode(rand::random::<[u8; 32]>());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), Session { csrf: csrf.clone(), expires: now + lifetime });
        (id, csrf)
    }

    /// The CSRF token of the live session `id`.
    fn csrf_of(&self, id: &str, now: Instant) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(id).filter(|s| s.expires > now).map(|s| s.csrf.clone())
    }

    fn sign_out(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// Whether `path` is the console's (`<console.path>` or under it).
pub fn is_console_path(path: &str, ctx: &HttpContext) -> bool {
    let base = ctx.config.borrow().console.path.trim_end_matches('/').to_owned();
    !base.is_empty() && (path == base || path.starts_with(&format!("{base}/")))
}

/// Answers a request under `<console.path>`.
pub async fn route<B>(req: Request<B>, ctx: &HttpContext) -> Response<Full<Bytes>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (password, base, hours) = {
        let config = ctx.config.borrow();
        (
            config.console.password.clone(),
            config.console.path.trim_end_matches('/').to_owned(),
            config.console.session_hours,
        )
    };
    let Some(caller) = req.extensions().get::<Caller>().copied().filter(|c| c.admin_port) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    if password.is_empty() {
        return error(StatusCode::NOT_FOUND, "the console is off: set console.password to turn it on");
    }
    let now = Instant::now();
    let path = req.uri().path().strip_prefix(base.as_str()).unwrap_or_default().to_owned();
    let method = req.method().clone();
    if method == Method::GET || method == Method::HEAD {
        if path.is_empty() {
            return redirect(&format!("{base}/"));
        }
        if let Some(page) = page(&path) {
            return page;
        }
    }
    if (method.clone(), path.as_str()) == (Method::POST, "/api/login") {
        return login(req, ctx, caller, &password, &base, Duration::from_secs(hours.saturating_mul(3600)), now).await;
    }
    let cookie = session_cookie(&req);
    let Some(csrf) = cookie.as_deref().and_then(|id| ctx.console.csrf_of(id, now)) else {
        return error(StatusCode::UNAUTHORIZED, "sign in first (POST api/login)");
    };
    if method != Method::GET && method != Method::HEAD {
        let given = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !same_secret(given, &csrf) {
            tracing::warn!(peer = %caller.peer, "console: refused a {method} without the session's CSRF token");
            return error(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token");
        }
    }
    // Segments percent-decoded (a device id may come as `aa%3Abb…`).
    let decoded: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| crate::server::percent_decode(s).unwrap_or_else(|| s.to_owned()))
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match (&method, segments.as_slice()) {
        (&Method::GET, ["api", "session"]) => json_response(StatusCode::OK, &json!({"csrf": csrf})),
        (&Method::POST, ["api", "talk"]) => match read_json(req, ctx).await {
            Ok(body) => talk(ctx, &body, host.as_deref()).await,
            Err(refused) => refused,
        },
        (&Method::POST, ["api", "logout"]) => {
            if let Some(id) = cookie {
                ctx.console.sign_out(&id);
            }
            let mut response = json_response(StatusCode::OK, &json!({"success": true}));
            let expired = format!("{COOKIE}=; Path={base}; HttpOnly; SameSite=Strict; Max-Age=0");
            if let Ok(value) = HeaderValue::from_str(&expired) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        (&Method::GET, ["api", "agents"]) => list_agents(ctx).await,
        (&Method::PUT, ["api", "agents", id]) => {
            let id = (*id).to_owned();
            match read_json(req, ctx).await {
                Ok(body) => put_agent(ctx, &id, body).await,
                Err(refused) => refused,
            }
        }
        (&Method::DELETE, ["api", "agents", id]) => {
            answer(agents::delete(ctx.store.as_ref(), id).await.map(|()| json!({})))
        }
        (&Method::PUT, ["api", "devices", device, "agent"]) => {
            let device = (*device).to_owned();
            match read_json(req, ctx).await {
                Ok(body) => {
                    let agent = body.get("agent").and_then(Value::as_str).map(str::to_owned);
                    answer(agents::assign(ctx.store.as_ref(), &device, agent.as_deref()).await.map(|()| json!({})))
                }
                Err(refused) => refused,
            }
        }
        (&Method::GET, ["api", "devices"]) => answer(list_devices(ctx).await),
        (&Method::POST, ["api", "devices", "bind"]) => match read_json(req, ctx).await {
            Ok(body) => {
                let code = body.get("code").and_then(Value::as_str).unwrap_or_default().trim().to_owned();
                match crate::http::activation::bind(ctx.store.as_ref(), &code).await {
                    Ok(device) => json_response(StatusCode::OK, &json!({"device": device})),
                    Err(e @ crate::http::activation::ActivationError::UnknownCode(_)) => {
                        error(StatusCode::NOT_FOUND, &e.to_string())
                    }
                    Err(e) => store_failed(&e),
                }
            }
            Err(refused) => refused,
        },
        (&Method::DELETE, ["api", "devices", device, "binding"]) => {
            match crate::http::activation::unbind(ctx.store.as_ref(), device).await {
                Ok(()) => json_response(StatusCode::OK, &json!({})),
                Err(e) => store_failed(&e),
            }
        }
        (&Method::POST, ["api", "devices", device, "revoke"]) => {
            let lifetime =
                ctx.config.borrow().server.auth.expire_seconds.unwrap_or(crate::auth::DEFAULT_EXPIRE_SECONDS);
            let now = crate::store::now_ms() / 1000;
            match crate::auth::revoke(ctx.store.as_ref(), device, now, Duration::from_secs(lifetime)).await {
                Ok(()) => json_response(StatusCode::OK, &json!({})),
                Err(e) => store_failed(&e),
            }
        }
        (&Method::GET, ["api", "devices", device, "history"]) => {
            let query = req.uri().query().unwrap_or_default().to_owned();
            let needle = url_query(&query, "q").map(|q| q.to_lowercase());
            match crate::store::history(ctx.store.as_ref(), device).await {
                Ok(history) => {
                    let matching: Vec<_> = history
                        .into_iter()
                        .filter(|entry| {
                            needle.as_ref().is_none_or(|needle| {
                                serde_json::to_string(&entry.message)
                                    .unwrap_or_default()
                                    .to_lowercase()
                                    .contains(needle)
                            })
                        })
                        .collect();
                    json_response(StatusCode::OK, &json!({"history": matching}))
                }
                Err(e) => store_failed(&e),
            }
        }
        (&Method::DELETE, ["api", "devices", device, "history"]) => {
            match ctx.store.delete(&crate::store::history_key(device)).await {
                Ok(()) => json_response(StatusCode::OK, &json!({})),
                Err(e) => store_failed(&e),
            }
        }
        (&Method::GET, ["api", "devices", device, "export"]) => {
            match crate::store::export_device(ctx.store.as_ref(), device).await {
                Ok(export) => json_response(StatusCode::OK, &serde_json::to_value(export).unwrap_or_default()),
                Err(e) => store_failed(&e),
            }
        }
        (&Method::GET, ["api", "devices", device, "memory"]) => {
            match crate::store::export_device(ctx.store.as_ref(), device).await {
                Ok(export) => json_response(StatusCode::OK, &json!({"memory": export.kv})),
                Err(e) => store_failed(&e),
            }
        }
        (&Method::PUT, ["api", "devices", device, "memory", extension, key]) => {
            let key = crate::store::kv_key(extension, device, key);
            match read_json(req, ctx).await {
                Ok(body) => match body.get("value").and_then(Value::as_str) {
                    Some(value) if value.len() <= crate::agents::MAX_PROMPT_BYTES => {
                        match ctx.store.set(&key, value.as_bytes(), None).await {
                            Ok(()) => json_response(StatusCode::OK, &json!({})),
                            Err(e) => store_failed(&e),
                        }
                    }
                    Some(_) => error(StatusCode::BAD_REQUEST, "a memory value is at most 16 KiB"),
                    None => error(StatusCode::BAD_REQUEST, "the body needs a string \"value\""),
                },
                Err(refused) => refused,
            }
        }
        (&Method::DELETE, ["api", "devices", device, "memory"]) => {
            match crate::store::forget_device_kv(ctx.store.as_ref(), device).await {
                Ok(deleted) => json_response(StatusCode::OK, &json!({"deleted": deleted})),
                Err(e) => store_failed(&e),
            }
        }
        (&Method::GET, ["api", "firmware"]) => {
            let images: Vec<Value> = super::firmware::images(&ctx.data_dir.join("bin"))
                .into_iter()
                .map(|(name, bytes)| {
                    let (model, version) = super::firmware::model_and_version(&name).unwrap_or_default();
                    json!({"name": name, "model": model, "version": version, "bytes": bytes})
                })
                .collect();
            json_response(StatusCode::OK, &json!({"images": images}))
        }
        (&Method::PUT, ["api", "firmware", name]) => {
            if super::firmware::model_and_version(name).is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "an image is named <board type>_<version>.bin, e.g. bread-compact-wifi_2.4.3.bin",
                );
            }
            let name = (*name).to_owned();
            let (parts, body) = req.into_parts();
            match super::read_body_limited(&parts.headers, body, ctx, MAX_FIRMWARE_BYTES).await {
                Ok(bytes) if bytes.is_empty() => error(StatusCode::BAD_REQUEST, "the image is empty"),
                Ok(bytes) => match save_image(&ctx.data_dir.join("bin"), &name, &bytes).await {
                    Ok(()) => json_response(StatusCode::OK, &json!({"name": name, "bytes": bytes.len()})),
                    Err(e) => {
                        tracing::warn!("console: cannot save firmware {name}: {e}");
                        error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot save the image: {e}"))
                    }
                },
                Err(e) => super::body_error(e),
            }
        }
        (&Method::DELETE, ["api", "firmware", name]) => {
            match super::firmware::resolve_image(&ctx.data_dir.join("bin"), name) {
                Ok(path) => match tokio::fs::remove_file(path).await {
                    Ok(()) => json_response(StatusCode::OK, &json!({})),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                },
                Err(_) => error(StatusCode::NOT_FOUND, "no such image"),
            }
        }
        (&Method::GET, ["api", "figures"]) => json_response(StatusCode::OK, &ctx.metrics.live()),
        (&Method::GET, ["api", "extensions"]) => match &ctx.extensions {
            Some(registry) => json_response(StatusCode::OK, &json!({"extensions": registry.status()})),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "the extension host is not running"),
        },
        (&Method::POST, ["api", "extensions", "reload"]) => match &ctx.extensions {
            Some(registry) => {
                let serving = registry.reload().await;
                json_response(StatusCode::OK, &json!({"serving": serving, "extensions": registry.status()}))
            }
            None => error(StatusCode::SERVICE_UNAVAILABLE, "the extension host is not running"),
        },
        (&Method::GET, ["api", "mcp-tokens"]) => match crate::mcp::endpoint::list(ctx.store.as_ref()).await {
            Ok(tokens) => {
                let tokens: Vec<Value> = tokens
                    .into_iter()
                    .map(|t| {
                        let device = match t.scope {
                            crate::mcp::endpoint::Scope::All => Value::Null,
                            crate::mcp::endpoint::Scope::Device(device) => Value::String(device),
                        };
                        json!({"id": t.id, "device": device, "issued": t.issued})
                    })
                    .collect();
                let config = ctx.config.borrow().clone();
                let host = host.as_deref().and_then(super::ota::valid_host).map(super::ota::host_without_port);
                let host = host.map_or_else(|| super::ota::configured_host(&config), str::to_owned);
                let path = config.server.mcp_endpoint_path.trim_end_matches('/');
                let url = format!("ws://{host}:{}{path}/?token=", ctx.ws_port);
                json_response(StatusCode::OK, &json!({"tokens": tokens, "url": url}))
            }
            Err(e) => store_failed(&e),
        },
        (&Method::POST, ["api", "mcp-tokens"]) => match read_json(req, ctx).await {
            Ok(body) => {
                let device = body.get("device").and_then(Value::as_str).map(str::trim).filter(|d| !d.is_empty());
                match crate::mcp::endpoint::issue(ctx.store.as_ref(), device).await {
                    Ok(token) => json_response(StatusCode::OK, &json!({"token": token})),
                    Err(e) => store_failed(&e),
                }
            }
            Err(refused) => refused,
        },
        (&Method::DELETE, ["api", "mcp-tokens", id]) => {
            match crate::mcp::endpoint::revoke(ctx.store.as_ref(), id).await {
                Ok(0) => error(StatusCode::NOT_FOUND, "no such token"),
                Ok(_) => json_response(StatusCode::OK, &json!({})),
                Err(e) => store_failed(&e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The talk page's device: `console-talk`, or `console-talk-<agent id>` to talk with an agent.
pub const TALK_DEVICE: &str = "console-talk";

/// The talk page's `Client-Id`.
pub const TALK_CLIENT: &str = "console-talk-page";

/// Prepares a talk page's connection: the device [`TALK_DEVICE`] (`-<agent>` when one is
/// chosen) is given that agent (or none) and, with activation on, bound; the answer is the
/// WebSocket URL devices are given, the ids to connect with and, when `server.auth` asks for one,
/// a fresh token.
async fn talk(ctx: &HttpContext, body: &Value, host: Option<&str>) -> Response<Full<Bytes>> {
    let agent = body.get("agent").and_then(Value::as_str).map(str::trim).filter(|a| !a.is_empty());
    let device = agent.map_or_else(|| TALK_DEVICE.to_owned(), |id| format!("{TALK_DEVICE}-{id}"));
    let store = ctx.store.as_ref();
    if let Err(e) = agents::assign(store, &device, agent).await {
        return answer(Err(e));
    }
    let config = ctx.config.borrow().clone();
    if config.activation.enabled
        && let Err(e) = super::activation::bind_directly(store, &device, TALK_CLIENT).await
    {
        return store_failed(&e);
    }
    let auth = crate::auth::Authenticator::new(ctx.auth_key.to_string(), &config.server.auth);
    let now = crate::store::now_ms() / 1000;
    let token = auth.requires_token(&device).then(|| auth.issue(TALK_CLIENT, &device, now));
    let url = super::ota::websocket_url(&config, host.and_then(super::ota::valid_host), ctx.ws_port);
    json_response(
        StatusCode::OK,
        &json!({"url": url, "device_id": device, "client_id": TALK_CLIENT, "token": token, "agent": agent}),
    )
}

/// Every device the store knows (checked in, bound, assigned an agent, or with memory or
/// history), with where it is connected now, whether it is bound, its agent, and what its last
/// OTA check reported.
async fn list_devices(ctx: &HttpContext) -> Result<Value, AgentError> {
    let store = ctx.store.as_ref();
    let mut ids = crate::store::known_devices(store).await?;
    let bound: std::collections::BTreeSet<String> = crate::http::activation::bound_devices(store)
        .await
        .map_err(|e| AgentError::Invalid(e.to_string()))?
        .into_iter()
        .collect();
    let assigned: HashMap<String, String> = agents::assignments(store).await?.into_iter().collect();
    ids.extend(bound.iter().cloned());
    ids.extend(assigned.keys().cloned());
    let mut devices = Vec::with_capacity(ids.len());
    for id in ids {
        let online = crate::store::device_instance(store, &id).await?;
        let seen = crate::store::device_seen(store, &id).await?.unwrap_or_default();
        devices.push(json!({
            "id": id,
            "online": online,
            "bound": bound.contains(&id),
            "agent": assigned.get(&id),
            "last_seen": Some(seen.last_seen).filter(|s| *s > 0),
            "board": seen.board,
            "firmware": seen.firmware,
        }));
    }
    Ok(json!({"devices": devices}))
}

/// Writes an uploaded image whole beside its place, then renames it there, so OTA never offers a
/// half-written file.
async fn save_image(bin_dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(bin_dir).await?;
    let partial = bin_dir.join(format!(".{name}.part"));
    tokio::fs::write(&partial, bytes).await?;
    tokio::fs::rename(&partial, bin_dir.join(name)).await
}

/// The value of `name` in a URL query (percent-decoded, `+` as a space).
fn url_query(query: &str, name: &str) -> Option<String> {
    crate::server::form_pairs(query).find(|(k, _)| k == name).map(|(_, v)| v)
}

fn store_failed(e: &dyn std::fmt::Display) -> Response<Full<Bytes>> {
    tracing::warn!("console: the store failed: {e}");
    error(StatusCode::SERVICE_UNAVAILABLE, "the store is not available now")
}

async fn login<B>(
    req: Request<B>,
    ctx: &HttpContext,
    caller: Caller,
    password: &str,
    base: &str,
    lifetime: Duration,
    now: Instant,
) -> Response<Full<Bytes>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = caller.peer.ip();
    if let Some(wait) = ctx.console.must_wait(addr, now) {
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "too many wrong passwords: wait before trying again");
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    let https = req.headers().get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let body = match read_json(req, ctx).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let given = body.get("password").and_then(Value::as_str).unwrap_or_default();
    if !same_secret(given, password) {
        let wait = ctx.console.failed(addr, now);
        tracing::warn!(peer = %caller.peer, "console: wrong password; the next try in {wait:?}");
        return error(StatusCode::UNAUTHORIZED, "wrong password");
    }
    let (id, csrf) = ctx.console.sign_in(addr, lifetime, now);
    tracing::info!(peer = %caller.peer, "console: signed in");
    let mut response = json_response(StatusCode::OK, &json!({"csrf": csrf}));
    let secure = if https { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={id}; Path={base}; HttpOnly; SameSite=Strict; Max-Age={}{secure}", lifetime.as_secs());
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The console session id in the request's cookies.
fn session_cookie<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

async fn read_json<B>(req: Request<B>, ctx: &HttpContext) -> Result<Value, Response<Full<Bytes>>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body, ctx).await.map_err(super::body_error)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(error(StatusCode::BAD_REQUEST, "the body is not a JSON object")),
    }
}

async fn list_agents(ctx: &HttpContext) -> Response<Full<Bytes>> {
    let store = ctx.store.as_ref();
    let listed = async {
        // One pass over the assignments for all agents, not one per agent.
        let assignments = agents::assignments(store).await?;
        let mut out = Vec::new();
        for agent in agents::list(store).await? {
            let devices: Vec<&str> =
                assignments.iter().filter(|(_, id)| *id == agent.id).map(|(device, _)| device.as_str()).collect();
            let mut value = serde_json::to_value(&agent).unwrap_or_default();
            value["devices"] = json!(devices);
            out.push(value);
        }
        Ok::<_, crate::store::StoreError>(out)
    };
    answer(listed.await.map(|agents| json!({"agents": agents})).map_err(AgentError::from))
}

async fn put_agent(ctx: &HttpContext, id: &str, mut body: Value) -> Response<Full<Bytes>> {
    body["id"] = Value::String(id.to_owned());
    let agent: Agent = match serde_json::from_value(body) {
        Ok(agent) => agent,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("not an agent: {e}")),
    };
    let config = ctx.config.borrow().clone();
    answer(
        agents::put(ctx.store.as_ref(), &config, agent)
            .await
            .map(|saved| serde_json::to_value(saved).unwrap_or_default()),
    )
}

fn answer(result: Result<Value, AgentError>) -> Response<Full<Bytes>> {
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(AgentError::Invalid(message)) => error(StatusCode::BAD_REQUEST, &message),
        Err(e @ AgentError::NotFound(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(AgentError::Store(e)) => {
            tracing::warn!("console: the store failed: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, "the store is not available now")
        }
    }
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The console's pages, from `runtime/console/` built into the binary: (path under
/// `console.path`, content type, text). Plain HTML, CSS and JavaScript, no build step.
const PAGES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../../console/index.html")),
    ("/console.css", "text/css; charset=utf-8", include_str!("../../console/console.css")),
    ("/console.js", JS, include_str!("../../console/console.js")),
    ("/talk.html", HTML, include_str!("../../console/talk.html")),
    ("/talk.js", JS, include_str!("../../console/talk.js")),
    ("/capture.js", JS, include_str!("../../console/capture.js")),
];

/// Where the pages may load from and connect to: this origin only, and WebSockets (the talk
/// page's device connection, on the WebSocket port); never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'";

/// A page of the console, with headers that keep it from being framed or sniffed.
fn page(path: &str) -> Option<Response<Full<Bytes>>> {
    let (_, content_type, text) = PAGES.iter().find(|(p, _, _)| *p == path)?;
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"success": false, "message": message}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_served_with_a_strict_policy_and_nothing_else_is() {
        for (path, content_type, _) in PAGES {
            let response = page(path).expect("a page");
            assert_eq!(response.headers()[header::CONTENT_TYPE], *content_type);
            assert!(
                response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("default-src 'self'")
            );
            assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
        }
        for path in ["/index.htm", "/../Cargo.toml", "/api", "/talk.js/"] {
            assert!(page(path).is_none(), "{path}");
        }
        // Every file the pages load is served.
        for (_, _, text) in PAGES {
            for quoted in
                text.split(['"', '\'']).filter(|s| s.ends_with(".js") || s.ends_with(".css") || s.ends_with(".html"))
            {
                assert!(page(&format!("/{quoted}")).is_some(), "{quoted} is referred to but not served");
            }
        }
    }

    #[test]
    fn wrong_passwords_double_the_wait_per_address() {
        let console = Console::default();
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(console.must_wait(a, now), None);
        assert_eq!(console.failed(a, now), Duration::from_secs(1));
        assert_eq!(console.must_wait(a, now), Some(Duration::from_secs(1)));
        let later = now + Duration::from_secs(1);
        assert_eq!(console.must_wait(a, later), None);
        assert_eq!(console.failed(a, later), Duration::from_secs(2));
        let mut t = later;
        for _ in 0..10 {
            t += MAX_WAIT;
            console.failed(a, t);
        }
        assert_eq!(console.must_wait(a, t), Some(MAX_WAIT));
        // Another address is not slowed; the same /64 is.
        assert_eq!(console.must_wait("192.0.2.2".parse().unwrap(), t), None);
        console.failed("2001:db8::1".parse().unwrap(), t);
        assert!(console.must_wait("2001:db8::ffff".parse().unwrap(), t).is_some());
        // A sign-in clears the address.
        console.sign_in(a, Duration::from_secs(60), t);
        assert_eq!(console.must_wait(a, t), None);
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let console = Console::default();
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let (first, csrf) = console.sign_in(a, Duration::from_secs(10), now);
        assert_eq!(console.csrf_of(&first, now), Some(csrf));
        assert_eq!(console.csrf_of(&first, now + Duration::from_secs(11)), None);
        for i in 0..MAX_SESSIONS {
            console.sign_in(a, Duration::from_secs(100 + i as u64), now);
        }
        assert_eq!(console.sessions.lock().unwrap().len(), MAX_SESSIONS);
        assert_eq!(console.csrf_of(&first, now), None, "the oldest session ended");
    }
}
