//! The MCP client that talks to the device's own MCP server over the session socket.
//!
//! When the device's hello has `features.mcp`, the session creates an [`McpClient`] and calls
//! [`McpClient::start`]: `initialize` (with our vision endpoint and a fresh token, when a vision
//! model is selected), then `tools/list` page by page (the cursor is the `nextCursor` the device
//! returns). Tools are then offered to the LLM under sanitized names, and [`McpClient::call`]
//! sends `tools/call` and waits (bounded) for the matching response. Ids are numbers: the
//! firmware drops string ids.
//!
//! The start-up never stalls a conversation. Each of its requests has
//! `limits.device_mcp_timeout_ms` to be answered; a start-up that fails (a request unanswered or
//! refused) is run once more from `initialize`, then given up: the session goes on without device
//! tools. A turn waits for the tool list only until `limits.device_mcp_wait_ms` after the start
//! (the simulator, answering like the firmware, lists its tools in a few ms on loopback; the
//! default 500 ms leaves room for a device on Wi-Fi), and never after that: a device that answers
//! later has its tools offered from the next turn on.
//!
//! What a device lists is bounded: at most `limits.device_tools` tools (the rest of the list is
//! ignored, and no further page is asked for) with names of at most `limits.tool_name_chars`
//! characters; clashing names are made unique in linear time ([`UniqueNames`]), so no tool list
//! can keep a worker busy.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::config::LimitsConfig;
use crate::connection::{Outbound, Outbox, SendError};
use crate::metrics::Metrics;
use crate::protocol::mcp::{self, McpIncoming};

pub mod endpoint;
pub mod servers;

/// How many times the start-up exchange is run before the session goes on without device tools.
const STARTUP_ATTEMPTS: usize = 2;

/// Gives the vision URL and a fresh token for each `initialize` sent.
pub type VisionGrant = Box<dyn Fn() -> (String, String) + Send + Sync>;

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

/// Tool lists by fingerprint (see [`intern`]).
type Lists = HashMap<u64, Vec<Weak<[DeviceTool]>>>;

/// The one shared copy of a device tool list: devices running the same firmware list the same
/// tools (with their JSON schemas, several KB), so thousands of sessions hold one allocation
/// instead of one each. Lists are found by a fingerprint, so the cost does not grow with the
/// number of different lists; lists no session holds any more are forgotten.
fn intern(tools: Vec<DeviceTool>) -> Arc<[DeviceTool]> {
    // std Mutex: held for a hash lookup and a few comparisons, never across an await.
    static LISTS: LazyLock<Mutex<Lists>> = LazyLock::new(|| Mutex::new(HashMap::new()));
    let key = fingerprint(&tools);
    let mut lists = LISTS.lock().unwrap_or_else(|p| p.into_inner());
    let bucket = lists.entry(key).or_default();
    bucket.retain(|list| list.strong_count() > 0);
    if let Some(shared) = bucket.iter().filter_map(Weak::upgrade).find(|list| **list == *tools) {
        return shared;
    }
    let list: Arc<[DeviceTool]> = Arc::from(tools);
    bucket.push(Arc::downgrade(&list));
    // Now and then, forget the lists nobody holds (amortised: at each power of two).
    if lists.len().is_power_of_two() {
        lists.retain(|_, bucket| bucket.iter().any(|list| list.strong_count() > 0));
    }
    list
}

/// A hash of everything a tool list holds.
fn fingerprint(tools: &[DeviceTool]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for tool in tools {
        (&tool.name, &tool.exposed, &tool.description, tool.input_schema.to_string()).hash(&mut hasher);
    }
    hasher.finish()
}

/// Hands out unique names in linear time: a name already taken gets `_2`, `_3`, … The next
/// suffix to try is remembered per name, so n tools of one name cost O(n), not O(n²).
#[derive(Debug, Default)]
pub struct UniqueNames {
    taken: HashSet<String>,
    next: HashMap<String, usize>,
}

impl UniqueNames {
    /// `name` if it is free, else the first free `name_<n>`; the result is taken.
    pub fn take(&mut self, name: &str) -> String {
        if self.taken.insert(name.to_owned()) {
            return name.to_owned();
        }
        let next = self.next.entry(name.to_owned()).or_insert(2);
        loop {
            let candidate = format!("{name}_{next}");
            *next += 1;
            if self.taken.insert(candidate.clone()) {
                return candidate;
            }
        }
    }

    /// Takes `name` as it is; false if it was already taken.
    pub fn reserve(&mut self, name: &str) -> bool {
        self.taken.insert(name.to_owned())
    }
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

/// Where a client's JSON-RPC messages go.
enum Sink {
    /// The device's own session socket (`type: mcp` envelopes).
    Device(Outbox),
    /// A tool server connected to the MCP endpoint: one JSON-RPC message per text frame, through
    /// a bounded queue to the socket's writer.
    Socket(tokio::sync::mpsc::Sender<String>),
}

/// MCP client state of one session (or of one MCP endpoint socket, [`endpoint`]).
pub struct McpClient {
    sink: Sink,
    /// Set when the socket is gone: nothing more is sent, waiting requests end at once.
    closed: AtomicBool,
    /// Whether a request given up (timed out, or its caller gone: an aborted turn) is announced
    /// with `notifications/cancelled` (the endpoint's tool servers; the firmware ignores it).
    announce_cancel: bool,
    /// `serverInfo.name` from the `initialize` answer.
    server_name: Mutex<Option<String>>,
    /// Most tools taken from the device, and their longest name.
    max_tools: usize,
    max_name_chars: usize,
    /// How long each start-up request may wait for its answer.
    step_timeout: Duration,
    /// How long after the start a turn may wait for the tool list.
    wait: Duration,
    /// When [`McpClient::start`] ran (turns wait at most until `started + wait`).
    started: Mutex<Option<tokio::time::Instant>>,
    metrics: Arc<Metrics>,
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
    /// A client that sends through `outbox`, taking at most what `limits` allow.
    pub fn new(outbox: Outbox, limits: &LimitsConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            sink: Sink::Device(outbox),
            closed: AtomicBool::new(false),
            announce_cancel: false,
            server_name: Mutex::new(None),
            max_tools: limits.device_tools,
            max_name_chars: limits.tool_name_chars,
            step_timeout: Duration::from_millis(limits.device_mcp_timeout_ms),
            wait: Duration::from_millis(limits.device_mcp_wait_ms),
            started: Mutex::new(None),
            metrics,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            tools: Mutex::new(Arc::from(Vec::new())),
            ready: tokio::sync::watch::Sender::new(false),
        })
    }

    /// A client for a tool server on the MCP endpoint: messages go to `socket` (its writer),
    /// at most `max_tools` tools are taken, each start-up request waits at most `step_timeout`.
    pub fn for_socket(
        socket: tokio::sync::mpsc::Sender<String>,
        max_tools: usize,
        max_name_chars: usize,
        step_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            sink: Sink::Socket(socket),
            closed: AtomicBool::new(false),
            announce_cancel: true,
            server_name: Mutex::new(None),
            max_tools,
            max_name_chars,
            step_timeout,
            wait: Duration::ZERO,
            started: Mutex::new(None),
            metrics,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            tools: Mutex::new(Arc::from(Vec::new())),
            ready: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Runs `initialize` and the paged `tools/list` once, in the caller's task (the endpoint
    /// registers a tool server's tools only once they are listed).
    pub async fn handshake(&self) -> Result<(), McpCallError> {
        let outcome = self.discover(None).await;
        self.ready.send_replace(true);
        outcome
    }

    /// `serverInfo.name` of the peer, once `initialize` was answered.
    pub fn server_name(&self) -> Option<String> {
        self.server_name.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends a JSON-RPC `ping` and waits (bounded) for its answer.
    pub async fn ping(&self, timeout: Duration) -> Result<(), McpCallError> {
        self.request(|id| serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "ping"}), timeout).await.map(|_| ())
    }

    /// The socket is gone: every waiting request ends with [`McpCallError::Disconnected`] and
    /// nothing more is sent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Runs `initialize` and the paged `tools/list` in the background (retried once on failure).
    /// `vision` gives the vision URL and a fresh token for each `initialize`.
    pub fn start(self: &Arc<Self>, vision: Option<VisionGrant>) {
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
        let this = Arc::clone(self);
        tokio::spawn(async move {
            for attempt in 1..=STARTUP_ATTEMPTS {
                match this.discover(vision.as_deref()).await {
                    Ok(()) => break,
                    Err(McpCallError::Disconnected) => break,
                    Err(e) if attempt < STARTUP_ATTEMPTS => {
                        tracing::info!("device MCP start-up failed ({e}); trying once more");
                        this.metrics.limit_hit("device_mcp_timeout_ms");
                    }
                    Err(e) => {
                        tracing::warn!("device MCP start-up failed twice ({e}); going on without device tools");
                        this.metrics.limit_hit("device_mcp_timeout_ms");
                    }
                }
            }
            this.ready.send_replace(true);
        });
    }

    async fn discover(
        &self,
        vision: Option<&(dyn Fn() -> (String, String) + Send + Sync)>,
    ) -> Result<(), McpCallError> {
        let vision = vision.map(|grant| grant());
        let vision_ref = vision.as_ref().map(|(u, t)| (u.as_str(), t.as_str()));
        let init = self.request(|id| mcp::initialize(id, vision_ref), self.step_timeout).await?;
        let name = init.pointer("/serverInfo/name").and_then(Value::as_str).map(str::to_owned);
        *self.server_name.lock().unwrap_or_else(|p| p.into_inner()) = name;
        self.send(mcp::initialized_notification())?;
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        let (mut long_names, mut over) = (0usize, false);
        for _ in 0..MAX_PAGES {
            let result = self.request(|id| mcp::tools_list(id, cursor.as_deref()), self.step_timeout).await?;
            let (page, next) = mcp::parse_tools_list(&result).map_err(|e| McpCallError::Device(e.to_string()))?;
            for tool in page {
                if tool.name.chars().count() > self.max_name_chars {
                    long_names += 1;
                } else if tools.len() < self.max_tools {
                    tools.push(tool);
                } else {
                    over = true;
                    break;
                }
            }
            match next {
                Some(next) if !over && Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => break,
            }
        }
        if long_names > 0 {
            tracing::warn!("{long_names} device tool(s) ignored: names over {} characters", self.max_name_chars);
            self.metrics.limit_hit("tool_name_chars");
        }
        if over {
            tracing::warn!("the device lists more than {} tools; the rest are ignored", self.max_tools);
            self.metrics.limit_hit("device_tools");
        }
        // Two device names that sanitize alike (`a.b` and `a_b`) keep both: the later one gets a
        // numeric suffix, and we say so.
        let mut names = UniqueNames::default();
        let mut renamed = 0usize;
        let exposed: Vec<DeviceTool> = tools
            .into_iter()
            .map(|tool| {
                let base = mcp::sanitize_tool_name(&tool.name);
                let exposed = names.take(&base);
                renamed += usize::from(exposed != base);
                DeviceTool { name: tool.name, exposed, description: tool.description, input_schema: tool.input_schema }
            })
            .collect();
        if renamed > 0 {
            tracing::warn!("{renamed} device tool(s) renamed with a numeric suffix to avoid a clash");
        }
        tracing::info!("device offers {} MCP tools", exposed.len());
        *self.tools.lock().unwrap_or_else(|p| p.into_inner()) = intern(exposed);
        Ok(())
    }

    /// Waits until start-up has finished, but never past `limits.device_mcp_wait_ms` after the
    /// start, so a turn that begins right after the hello still sees the device's tools while a
    /// device that does not answer holds up no turn for longer than that (and later turns not at
    /// all).
    pub async fn wait_ready(&self) {
        let Some(started) = *self.started.lock().unwrap_or_else(|p| p.into_inner()) else { return };
        let mut ready = self.ready.subscribe();
        let _ = tokio::time::timeout_at(started + self.wait, ready.wait_for(|done| *done)).await;
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

    /// Calls a tool with this client's own request timeout (the MCP endpoint's
    /// `limits.mcp_endpoint_call_timeout_ms`, never more than `cap`).
    pub async fn call_bounded(&self, name: &str, arguments: Value, cap: Duration) -> Result<String, McpCallError> {
        self.call(name, arguments, self.step_timeout.min(cap)).await
    }

    async fn request(&self, build: impl FnOnce(u64) -> Value, timeout: Duration) -> Result<Value, McpCallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if self.closed.load(Ordering::Acquire) {
            return Err(McpCallError::Disconnected);
        }
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if let Err(e) = self.send(build(id)) {
            self.forget(id);
            return Err(e);
        }
        // Forgets the request however this ends; one given up (timed out, or this future dropped
        // by an aborted turn) is announced to the peer when `announce_cancel` is set.
        let mut guard = RequestGuard { client: self, id, answered: false };
        let outcome = tokio::time::timeout(timeout, rx).await;
        guard.answered = outcome.is_ok();
        drop(guard);
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

    fn send(&self, payload: Value) -> Result<(), McpCallError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(McpCallError::Disconnected);
        }
        match &self.sink {
            Sink::Device(outbox) => outbox.send(Outbound::Mcp(payload)).map_err(|e| match e {
                SendError::Gone => McpCallError::Disconnected,
                SendError::TooLarge(_) => McpCallError::Device(format!("the request is too large to send: {e}")),
            }),
            Sink::Socket(socket) => socket.try_send(payload.to_string()).map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Closed(_) => McpCallError::Disconnected,
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    McpCallError::Device("the tool server is not reading its socket".into())
                }
            }),
        }
    }
}

/// Removes a request from the waiting ones when its future ends or is dropped.
struct RequestGuard<'a> {
    client: &'a McpClient,
    id: u64,
    answered: bool,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.client.forget(self.id);
        if !self.answered && self.client.announce_cancel {
            let _ = self.client.send(mcp::cancelled_notification(self.id, "the call was given up"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashing_names_are_made_unique_in_linear_time() {
        // The attack: 20 000 tools all named `a`; renaming used to look up every earlier name for
        // every suffix tried, cubic in the number of clashes.
        let started = std::time::Instant::now();
        let mut names = UniqueNames::default();
        let taken: Vec<String> = (0..20_000).map(|_| names.take("a")).collect();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(taken[0], "a");
        assert_eq!(taken[1], "a_2");
        assert_eq!(taken[19_999], "a_20000");
        let unique: HashSet<&String> = taken.iter().collect();
        assert_eq!(unique.len(), taken.len());
        // A suffixed name that a tool already has is skipped.
        let mut names = UniqueNames::default();
        assert_eq!(names.take("b_2"), "b_2");
        assert_eq!(names.take("b"), "b");
        assert_eq!(names.take("b"), "b_3");
        assert!(!names.reserve("b"));
        assert!(names.reserve("c"));
    }

    #[test]
    fn equal_tool_lists_share_one_copy() {
        let tool = |name: &str| DeviceTool {
            name: name.into(),
            exposed: name.into(),
            description: String::new(),
            input_schema: serde_json::json!({"type": "object"}),
        };
        let a = intern(vec![tool("x"), tool("y")]);
        let b = intern(vec![tool("x"), tool("y")]);
        let c = intern(vec![tool("x"), tool("z")]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
