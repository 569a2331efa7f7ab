//! The MCP client that talks to the device's own MCP server over the session socket.
//!
//! When the device's hello has `features.mcp`, the session creates an [`McpClient`] and calls
//! [`McpClient::start`]: `initialize` (with our vision endpoint, when configured), then
//! `tools/list` page by page (the cursor is the `nextCursor` the device returns). Tools are then
//! offered to the LLM under sanitized names, and [`McpClient::call`] sends `tools/call` and waits
//! (bounded) for the matching response. Ids are numbers: the firmware drops string ids.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::connection::Outbox;
use crate::protocol::mcp::{self, McpIncoming};
use crate::protocol::message::ServerMessage;

/// How long each step of the start-up exchange may take.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Most `tools/list` pages we follow (a device lists a few dozen tools at most).
const MAX_PAGES: usize = 32;

/// A tool of the device, as offered to the LLM.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTool {
    /// The device's own name, e.g. `self.audio_speaker.set_volume`.
    pub name: String,
    /// The name offered to the LLM, e.g. `self_audio_speaker_set_volume`.
    pub exposed: String,
    /// Description from the device.
    pub description: String,
    /// JSON schema of the arguments.
    pub input_schema: Value,
}

/// The one shared copy of a device tool list: devices running the same firmware list the same
/// tools (with their JSON schemas, several KB), so thousands of sessions hold one allocation
/// instead of one each. Lists no session holds any more are forgotten.
fn intern(tools: Vec<DeviceTool>) -> Arc<[DeviceTool]> {
    static LISTS: Mutex<Vec<std::sync::Weak<[DeviceTool]>>> = Mutex::new(Vec::new());
    let mut lists = LISTS.lock().unwrap_or_else(|p| p.into_inner());
    lists.retain(|list| list.strong_count() > 0);
    if let Some(shared) = lists.iter().filter_map(std::sync::Weak::upgrade).find(|list| **list == *tools) {
        return shared;
    }
    let list: Arc<[DeviceTool]> = Arc::from(tools);
    lists.push(Arc::downgrade(&list));
    list
}

/// Why a device tool call failed.
#[derive(Debug, thiserror::Error)]
pub enum McpCallError {
    /// The device did not answer in time.
    #[error("the device did not answer within {0:?}")]
    Timeout(Duration),
    /// The session ended.
    #[error("the device disconnected")]
    Disconnected,
    /// The device answered with an error.
    #[error("device error: {0}")]
    Device(String),
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, String>>>;

/// MCP client state of one session.
pub struct McpClient {
    outbox: Outbox,
    next_id: AtomicU64,
    // std Mutex: held only to insert/remove a map entry, never across an await.
    pending: Mutex<Pending>,
    // std Mutex: replaced once when the tool list arrives, read (cloned) per turn.
    /// Shared with every other session whose device lists the same tools ([`intern`]).
    tools: Mutex<Arc<[DeviceTool]>>,
    /// Becomes true when start-up has finished (tools listed, or failed).
    ready: tokio::sync::watch::Sender<bool>,
}

impl McpClient {
    /// A client that sends through `outbox`.
    pub fn new(outbox: Outbox) -> Arc<Self> {
        Arc::new(Self {
            outbox,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            tools: Mutex::new(Arc::from(Vec::new())),
            ready: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Runs `initialize` and the paged `tools/list` in the background.
    pub fn start(self: &Arc<Self>, vision: Option<(String, String)>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.discover(vision).await {
                tracing::warn!("device MCP start-up failed: {e}");
            }
            this.ready.send_replace(true);
        });
    }

    async fn discover(&self, vision: Option<(String, String)>) -> Result<(), McpCallError> {
        let vision_ref = vision.as_ref().map(|(u, t)| (u.as_str(), t.as_str()));
        self.request(|id| mcp::initialize(id, vision_ref), STARTUP_TIMEOUT).await?;
        self.send(mcp::initialized_notification()).await;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let result = self.request(|id| mcp::tools_list(id, cursor.as_deref()), STARTUP_TIMEOUT).await?;
            let (page, next) = mcp::parse_tools_list(&result).map_err(|e| McpCallError::Device(e.to_string()))?;
            tools.extend(page);
            match next {
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => break,
            }
        }
        let mut exposed: Vec<DeviceTool> = Vec::with_capacity(tools.len());
        for tool in tools {
            let mut name = mcp::sanitize_tool_name(&tool.name);
            // Two device names that sanitize alike (`a.b` and `a_b`) keep both: the later one gets
            // a numeric suffix, and we say so.
            let base = name.clone();
            let mut n = 2;
            while exposed.iter().any(|t| t.exposed == name) {
                name = format!("{base}_{n}");
                n += 1;
            }
            if name != base {
                tracing::warn!("device tool {} renamed to {name} to avoid a clash", tool.name);
            }
            exposed.push(DeviceTool {
                name: tool.name,
                exposed: name,
                description: tool.description,
                input_schema: tool.input_schema,
            });
        }
        tracing::info!("device offers {} MCP tools", exposed.len());
        *self.tools.lock().unwrap_or_else(|p| p.into_inner()) = intern(exposed);
        Ok(())
    }

    /// Waits (at most `timeout`) until start-up has finished, so a turn that begins right after
    /// the hello still sees the device's tools.
    pub async fn wait_ready(&self, timeout: Duration) {
        let mut ready = self.ready.subscribe();
        let _ = tokio::time::timeout(timeout, ready.wait_for(|done| *done)).await;
    }

    /// The device's tools known so far.
    pub fn tools(&self) -> Vec<DeviceTool> {
        self.tools.lock().unwrap_or_else(|p| p.into_inner()).to_vec()
    }

    /// Handles an `mcp` message from the device: completes the matching request.
    pub fn handle_incoming(&self, payload: &Value) {
        let (id, outcome) = match mcp::parse(payload) {
            Ok(McpIncoming::Result { id, result }) => (id, Ok(result)),
            Ok(McpIncoming::Error { id, message }) => (id, Err(message)),
            Ok(McpIncoming::Other) => return,
            Err(e) => {
                tracing::warn!("malformed MCP message from the device: {e}");
                return;
            }
        };
        let waiter = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => tracing::debug!("MCP response {id} matches no request (late or duplicate)"),
        }
    }

    /// Calls a device tool by its device name; returns the tool's text result.
    pub async fn call(&self, name: &str, arguments: Value, timeout: Duration) -> Result<String, McpCallError> {
        let result = self.request(|id| mcp::tools_call(id, name, arguments), timeout).await?;
        mcp::call_result_text(&result).map_err(|e| McpCallError::Device(e.to_string()))
    }

    async fn request(&self, build: impl FnOnce(u64) -> Value, timeout: Duration) -> Result<Value, McpCallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if !self.send(build(id)).await {
            self.forget(id);
            return Err(McpCallError::Disconnected);
        }
        let outcome = tokio::time::timeout(timeout, rx).await;
        self.forget(id);
        match outcome {
            Err(_) => Err(McpCallError::Timeout(timeout)),
            Ok(Err(_)) => Err(McpCallError::Disconnected),
            Ok(Ok(Err(message))) => Err(McpCallError::Device(message)),
            Ok(Ok(Ok(value))) => Ok(value),
        }
    }

    fn forget(&self, id: u64) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    async fn send(&self, payload: Value) -> bool {
        let session_id = self.outbox.session_id().to_string();
        self.outbox.send(ServerMessage::Mcp { payload, session_id }).await
    }
}
