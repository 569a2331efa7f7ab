//! The MCP endpoint: tool servers connect to us and their tools are offered to devices.
//!
//! Clients written for xiaozhi's hosted endpoint (`xiaozhi-mcp`, `mcp2xiaozhi`, the firmware
//! author's `mcp_pipe.py`) open a WebSocket to `ws://<host>:<port><server.mcp_endpoint_path>/?token=<token>`
//! and speak MCP JSON-RPC as the *server* over it, one message per text frame. We are the MCP
//! client on that socket, with the same [`McpClient`] as for the device's own tools: `initialize`,
//! the paged `tools/list`, `tools/call` (a call given up is announced with
//! `notifications/cancelled`), a `ping` every [`PING_INTERVAL`] (and the peer's pings answered).
//!
//! Tokens ([`issue`], [`revoke`], [`list`]; the `mcp-token` subcommand) live in the store, so
//! every instance sharing a Redis accepts them; only the SHA-256 of a token is stored. A token
//! names who sees the tools: every device, or one device id ([`Scope`]). A wrong token is refused
//! at the upgrade (401).
//!
//! The [`Hub`] holds the connected tool servers. Many may connect under one token; a turn offers
//! the tools of every server its device may see, in connection order (clashing names get a
//! numeric suffix in linear time, like the device tools, in [`crate::tools::ToolBox`]). A server
//! that connects again under the same token and `serverInfo.name` replaces the earlier
//! connection (closed), so a reconnect replaces its tools; a closed socket's tools are gone from
//! the next turn. Bounds: `limits.mcp_endpoint_clients` (503 above it),
//! `limits.mcp_endpoint_clients_per_token` (429), `limits.mcp_endpoint_tools` per server,
//! `limits.mcp_endpoint_message_bytes` per message and `limits.mcp_endpoint_call_timeout_ms` per
//! request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::{DeviceTool, McpCallError, McpClient};
use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How often a connected tool server is pinged (a dead one is dropped when it does not answer
/// within `limits.mcp_endpoint_call_timeout_ms`).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);

/// Messages waiting for the socket's writer; a tool server that does not read is closed.
const QUEUE: usize = 64;

/// Where tokens are kept: the key is this prefix and the token's SHA-256 in hex.
const TOKEN_PREFIX: &str = "mcp_endpoint_token:";

/// Longest tool name taken from a tool server (the LLM APIs allow 64).
const MAX_NAME_CHARS: usize = 64;

/// Who sees the tools of a token's tool servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every device.
    All,
    /// Only the device with this `Device-Id`.
    Device(String),
}

impl Scope {
    fn admits(&self, device_id: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Device(id) => id == device_id,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("all devices"),
            Scope::Device(id) => write!(f, "device {id}"),
        }
    }
}

/// What the store holds for one token (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The one device that sees the tools; `None`: every device.
    device: Option<String>,
    /// Seconds since the epoch when it was issued.
    issued: u64,
}

/// One issued token, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The first 12 hex digits of the token's SHA-256: what `revoke` takes.
    pub id: String,
    /// Who sees the tools.
    pub scope: Scope,
    /// Seconds since the epoch when it was issued.
    pub issued: u64,
}

/// The hex SHA-256 of a token (what the store and the hub know it by).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Issues a new token for `device` (`None`: every device); returns the token, shown once.
pub async fn issue(store: &dyn Store, device: Option<&str>) -> Result<String, StoreError> {
    let token = hex::encode(rand::random::<[u8; 32]>());
    let issued = crate::store::now_ms() / 1000;
    let record = Record { device: device.map(str::to_owned), issued };
    let value = serde_json::to_vec(&record).unwrap_or_default();
    store.set(&format!("{TOKEN_PREFIX}{}", token_hash(&token)), &value, None).await?;
    Ok(token)
}

/// Every issued token, oldest first.
pub async fn list(store: &dyn Store) -> Result<Vec<TokenInfo>, StoreError> {
    let mut out = Vec::new();
    for key in store.keys(TOKEN_PREFIX).await? {
        let Some(hash) = key.strip_prefix(TOKEN_PREFIX) else { continue };
        let Some(value) = store.get(&key).await? else { continue };
        let Ok(record) = serde_json::from_slice::<Record>(&value) else { continue };
        out.push(TokenInfo { id: hash.chars().take(12).collect(), scope: scope_of(&record), issued: record.issued });
    }
    out.sort_by(|a, b| (a.issued, &a.id).cmp(&(b.issued, &b.id)));
    Ok(out)
}

/// Revokes the token given as itself or as the id `list` shows (at least 8 hex digits, naming
/// one token). Returns how many were revoked (0 or 1). Connected tool servers stay connected
/// until their socket closes; the token is refused from then on.
pub async fn revoke(store: &dyn Store, token_or_id: &str) -> Result<usize, StoreError> {
    let token_or_id = token_or_id.trim();
    let full = format!("{TOKEN_PREFIX}{}", token_hash(token_or_id));
    if store.get(&full).await?.is_some() {
        store.delete(&full).await?;
        return Ok(1);
    }
    if token_or_id.len() < 8 || !token_or_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(0);
    }
    let prefix = format!("{TOKEN_PREFIX}{}", token_or_id.to_ascii_lowercase());
    let keys = store.keys(&prefix).await?;
    if keys.len() != 1 {
        return Ok(0);
    }
    store.delete(&keys[0]).await?;
    Ok(1)
}

/// Who sees the tools of `token`; `None` when it was never issued or is revoked.
pub async fn lookup(store: &dyn Store, token: &str) -> Result<Option<Scope>, StoreError> {
    if token.is_empty() || token.len() > 256 {
        return Ok(None);
    }
    let Some(value) = store.get(&format!("{TOKEN_PREFIX}{}", token_hash(token))).await? else { return Ok(None) };
    Ok(serde_json::from_slice::<Record>(&value).ok().map(|r| scope_of(&r)))
}

fn scope_of(record: &Record) -> Scope {
    match &record.device {
        Some(id) => Scope::Device(id.clone()),
        None => Scope::All,
    }
}

/// A tool of a connected tool server, as a turn offers it.
#[derive(Clone)]
pub struct EndpointTool {
    /// The server's connection.
    pub client: Arc<McpClient>,
    /// The tool (`name`: the server's own name; `exposed`: the name offered before merging).
    pub tool: DeviceTool,
}

/// Why a connection is refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `limits.mcp_endpoint_clients` are connected.
    #[error("too many MCP endpoint clients (limits.mcp_endpoint_clients)")]
    Full,
    /// `limits.mcp_endpoint_clients_per_token` are connected under this token.
    #[error("too many MCP endpoint clients for this token (limits.mcp_endpoint_clients_per_token)")]
    TokenFull,
}

struct Entry {
    token: String,
    scope: Scope,
    name: Option<String>,
    client: Arc<McpClient>,
    replaced: CancellationToken,
}

#[derive(Default)]
struct Inner {
    next: u64,
    connected: usize,
    per_token: HashMap<String, usize>,
    /// Registered (listed) servers, in connection order.
    clients: BTreeMap<u64, Entry>,
}

/// The connected tool servers of this instance.
#[derive(Default)]
pub struct Hub {
    // std Mutex: held for map updates and a scan of at most `mcp_endpoint_clients` entries,
    // never across an await.
    inner: Mutex<Inner>,
}

/// A reserved connection place; freed when dropped.
pub struct Slot {
    hub: Arc<Hub>,
    token: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        inner.connected = inner.connected.saturating_sub(1);
        if let Some(n) = inner.per_token.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                inner.per_token.remove(&self.token);
            }
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a place for a connection under the token whose hash is `token`.
    pub fn reserve(self: &Arc<Self>, token: &str, limits: &LimitsConfig) -> Result<Slot, Refusal> {
        let mut inner = self.lock();
        if inner.connected >= limits.mcp_endpoint_clients {
            return Err(Refusal::Full);
        }
        let n = inner.per_token.entry(token.to_owned()).or_default();
        if *n >= limits.mcp_endpoint_clients_per_token {
            return Err(Refusal::TokenFull);
        }
        *n += 1;
        inner.connected += 1;
        Ok(Slot { hub: Arc::clone(self), token: token.to_owned() })
    }

    /// Tool servers connected (including those still starting).
    pub fn connected(&self) -> usize {
        self.lock().connected
    }

    /// Offers `client`'s tools; an earlier connection under the same token with the same
    /// `serverInfo.name` is replaced (its `replaced` fires and its tools are gone).
    fn register(&self, token: &str, scope: Scope, client: Arc<McpClient>, replaced: CancellationToken) {
        let name = client.server_name();
        let mut inner = self.lock();
        if name.is_some() {
            let old: Vec<u64> =
                inner.clients.iter().filter(|(_, e)| e.token == token && e.name == name).map(|(id, _)| *id).collect();
            for id in old {
                if let Some(entry) = inner.clients.remove(&id) {
                    tracing::info!(server = ?entry.name, "MCP endpoint: a reconnect replaces the earlier connection");
                    entry.replaced.cancel();
                }
            }
        }
        inner.next += 1;
        let id = inner.next;
        inner.clients.insert(id, Entry { token: token.to_owned(), scope, name, client, replaced });
    }

    fn unregister(&self, client: &Arc<McpClient>) {
        self.lock().clients.retain(|_, e| !Arc::ptr_eq(&e.client, client));
    }

    /// The tools `device_id` may use, in connection order.
    pub fn tools_for(&self, device_id: &str) -> Vec<EndpointTool> {
        let inner = self.lock();
        let mut out = Vec::new();
        for entry in inner.clients.values().filter(|e| e.scope.admits(device_id)) {
            for tool in entry.client.tools() {
                out.push(EndpointTool { client: Arc::clone(&entry.client), tool });
            }
        }
        out
    }
}

/// Serves one upgraded tool-server socket until it closes, is replaced, stops answering or the
/// server shuts down.
pub async fn serve(
    upgraded: Upgraded,
    slot: Slot,
    scope: Scope,
    limits: LimitsConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(limits.mcp_endpoint_message_bytes))
        .max_frame_size(Some(limits.mcp_endpoint_message_bytes));
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(QUEUE);
    let timeout = Duration::from_millis(limits.mcp_endpoint_call_timeout_ms);
    let client = McpClient::for_socket(tx.clone(), limits.mcp_endpoint_tools, MAX_NAME_CHARS, timeout, metrics);
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let replaced = CancellationToken::new();
    let reader = async {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Text(text)) => dispatch(&client, &tx, text.as_str()),
                Ok(Message::Close(_)) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::info!("MCP endpoint socket: {e}");
                    break;
                }
            }
        }
    };
    let life = async {
        client.handshake().await?;
        tracing::info!(server = ?client.server_name(), %scope, "MCP endpoint: {} tool(s) offered", client.tools().len());
        slot.hub.register(&slot.token, scope.clone(), Arc::clone(&client), replaced.clone());
        loop {
            tokio::time::sleep(PING_INTERVAL).await;
            client.ping(timeout).await?;
        }
    };
    tokio::select! {
        _ = reader => {}
        outcome = life => {
            let outcome: Result<(), McpCallError> = outcome;
            if let Err(e) = outcome {
                tracing::warn!(server = ?client.server_name(), "MCP endpoint client dropped: {e}");
            }
        }
        _ = replaced.cancelled() => {}
        _ = shutdown.cancelled() => {}
    }
    slot.hub.unregister(&client);
    client.close();
    drop(client);
    drop(tx);
    drop(slot);
    // The writer ends once every sender is gone (a turn may still hold the closed client a
    // moment); it is not waited for longer than a second.
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), writer).await.is_err() {
        abort.abort();
    }
}

/// Handles one message from the tool server: answers to our requests complete them, its `ping`
/// is answered, any other request is refused and notifications are ignored.
fn dispatch(client: &McpClient, tx: &tokio::sync::mpsc::Sender<String>, text: &str) {
    let Ok(payload) = serde_json::from_str::<Value>(text) else {
        tracing::warn!("MCP endpoint: a message that is not JSON is ignored");
        return;
    };
    let Some(method) = payload.get("method").and_then(Value::as_str) else {
        client.handle_incoming(&payload);
        return;
    };
    let Some(id) = payload.get("id").filter(|id| !id.is_null()) else { return };
    let answer = if method == "ping" {
        json!({"jsonrpc": "2.0", "id": id, "result": {}})
    } else {
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("method not found: {method}")}})
    };
    let _ = tx.try_send(answer.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_token: usize) -> LimitsConfig {
        LimitsConfig { mcp_endpoint_clients: total, mcp_endpoint_clients_per_token: per_token, ..Default::default() }
    }

    #[test]
    fn places_are_bounded_per_token_and_overall_and_freed() {
        let hub = Arc::new(Hub::default());
        let l = limits(3, 2);
        let a1 = hub.reserve("a", &l).unwrap();
        let _a2 = hub.reserve("a", &l).unwrap();
        assert_eq!(hub.reserve("a", &l).err(), Some(Refusal::TokenFull));
        let _b1 = hub.reserve("b", &l).unwrap();
        assert_eq!(hub.reserve("c", &l).err(), Some(Refusal::Full));
        drop(a1);
        assert_eq!(hub.connected(), 2);
        assert!(hub.reserve("a", &l).is_ok());
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_scoped_listed_and_revoked() {
        let store = crate::store::memory::MemoryStore::new();
        let all = issue(&store, None).await.unwrap();
        let one = issue(&store, Some("aa:bb")).await.unwrap();
        assert_eq!(lookup(&store, &all).await.unwrap(), Some(Scope::All));
        assert_eq!(lookup(&store, &one).await.unwrap(), Some(Scope::Device("aa:bb".into())));
        assert_eq!(lookup(&store, "forged").await.unwrap(), None);
        // Only the hash is stored.
        for key in store.keys("").await.unwrap() {
            assert!(!key.contains(&all) && !key.contains(&one), "{key}");
            let value = store.get(&key).await.unwrap().unwrap();
            let text = String::from_utf8_lossy(&value);
            assert!(!text.contains(&all) && !text.contains(&one), "{text}");
        }
        let listed = list(&store).await.unwrap();
        assert_eq!(listed.len(), 2);
        let id = listed.iter().find(|t| t.scope == Scope::All).unwrap().id.clone();
        assert_eq!(revoke(&store, "abc").await.unwrap(), 0);
        assert_eq!(revoke(&store, &id).await.unwrap(), 1);
        assert_eq!(lookup(&store, &all).await.unwrap(), None);
        assert_eq!(revoke(&store, &one).await.unwrap(), 1);
        assert_eq!(lookup(&store, &one).await.unwrap(), None);
        assert!(list(&store).await.unwrap().is_empty());
    }
}
