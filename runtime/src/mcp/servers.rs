//! Server-side MCP servers: the tool servers the operator lists in
//! `<data-dir>/.mcp_server_settings.json`, the Python server's file in its format:
//!
//! ```json
//! {"mcpServers": {
//!     "files":  {"command": "python3", "args": ["files_server.py"], "env": {"ROOT": "/srv"}},
//!     "remote": {"url": "http://127.0.0.1:9000/mcp", "transport": "streamable-http",
//!                "headers": {"Authorization": "Bearer ..."}},
//!     "legacy": {"url": "http://127.0.0.1:9001/sse"}
//! }}
//! ```
//!
//! We are the MCP client, on the official Rust SDK (`rmcp`). A `command` entry is spawned as a
//! stdio server (in its own process group, with `HOME`, `LOGNAME`, `PATH`, `SHELL`, `TERM` and
//! `USER` of ours plus its `env`, as the Python SDK does, so our secrets stay ours; `cwd` is
//! honoured); each line it writes to stderr is logged at INFO with the server's name. A `url`
//! entry is a streamable-HTTP server when its `transport` (or `type`) says `streamable-http`
//! (`streamable_http`, `http`), else an HTTP+SSE server (the Python server's default, the MCP
//! 2024-11-05 transport: an SSE stream whose `endpoint` event names where to POST). `headers`
//! go with every request; `"disabled": true` skips an entry.
//!
//! Each server has a supervisor task: connect, `initialize`, list the tools (paged, at most
//! `limits.mcp_server_tools` of them, names of at most `limits.tool_name_chars` characters), then
//! wait. When the server goes away (a stdio server that dies, an HTTP stream that ends) its tools
//! are gone from the next turn, and it is started again after a back-off of
//! `limits.mcp_server_restart_ms`, doubling per failure up to 60 s (reset once a connection has
//! lasted 60 s). A `notifications/tools/list_changed` lists the tools again.
//!
//! The file is read at start-up and every [`POLL`] (its contents compared, so a Docker bind mount
//! that delivers no events works too): an added entry starts, a removed or changed one stops (its
//! process group killed), an unchanged one keeps running. A file that is not valid JSON keeps the
//! servers as they are and logs why; an invalid entry is skipped with its reason. Files over
//! [`MAX_SETTINGS_BYTES`] are refused; at most `limits.mcp_servers` entries run.
//!
//! The tools join the one registry of a turn ([`crate::tools::ToolBox`]) after the device's own
//! tools, under sanitized unique names. A call has `limits.mcp_server_call_timeout_ms` (never
//! more than the turn's tool timeout); a call given up (timed out, or its turn aborted) is
//! announced with `notifications/cancelled`. The servers are the operator's own programs and
//! services, trusted like the config file; what reaches the LLM from them is still capped by
//! `limits.tool_result_chars`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam, ClientInfo,
    ClientJsonRpcMessage, ClientNotification, ClientRequest, Implementation, PaginatedRequestParams, RequestId,
    ServerJsonRpcMessage, ServerResult,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess, Transport};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{DeviceTool, UniqueNames};
use crate::config::{Config, LimitsConfig};
use crate::protocol::mcp as wire;

/// The settings file's name in the data directory (the Python server's).
pub const SETTINGS_FILE: &str = ".mcp_server_settings.json";

/// How often the settings file is read for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// Largest settings file read, bytes.
pub const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;

/// Most `tools/list` pages followed.
const MAX_PAGES: usize = 32;

/// Longest stderr line logged, bytes (the rest of a longer line is dropped).
const STDERR_LINE_BYTES: usize = 4096;

/// Longest back-off between two starts of a server.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A connection that lasted this long resets the back-off.
const STABLE: Duration = Duration::from_secs(60);

/// The environment variables a stdio server inherits from us (the Python SDK's default set).
const INHERITED_ENV: [&str; 6] = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];

/// How one server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSpec {
    /// A program spoken to over its stdin and stdout.
    Stdio {
        /// The program (looked up on `PATH` when it has no slash).
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Variables set for it, on top of the few of ours it inherits (`PATH`, `HOME`…).
        env: BTreeMap<String, String>,
        /// Its working directory (ours when unset).
        cwd: Option<PathBuf>,
    },
    /// A server over HTTP.
    Http {
        /// Its MCP endpoint (streamable HTTP) or SSE stream (HTTP+SSE).
        url: String,
        /// Headers sent with every request.
        headers: BTreeMap<String, String>,
        /// Streamable HTTP or the older HTTP+SSE.
        transport: HttpTransport,
    },
}

/// The HTTP transports of MCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpTransport {
    /// One endpoint for POST (answers as JSON or SSE), protocol 2025-03-26 on.
    Streamable,
    /// An SSE stream whose `endpoint` event names where to POST (protocol 2024-11-05).
    Sse,
}

/// Each entry of a settings file: its name, and its spec or why it is not usable.
pub type Settings = Vec<(String, Result<ServerSpec, String>)>;

/// The entries of a settings file, in name order: each a spec or why it is not usable. Entries
/// with `"disabled": true` are left out.
pub fn parse_settings(text: &str) -> Result<Settings, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let servers = match root.get("mcpServers") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(servers)) => servers,
        Some(_) => return Err("\"mcpServers\" is not an object".into()),
    };
    let mut out: Settings = servers
        .iter()
        .filter(|(_, entry)| entry.get("disabled").and_then(Value::as_bool) != Some(true))
        .map(|(name, entry)| (name.clone(), parse_entry(entry)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn parse_entry(entry: &Value) -> Result<ServerSpec, String> {
    let Value::Object(entry) = entry else { return Err("not an object".into()) };
    let strings = |key: &str| -> Result<BTreeMap<String, String>, String> {
        match entry.get(key) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                    _ => Err(format!("\"{key}.{k}\" is not a string")),
                })
                .collect(),
            Some(_) => Err(format!("\"{key}\" is not an object")),
        }
    };
    let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    if let Some(command) = text("command") {
        let args = match entry.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(args)) => args
                .iter()
                .map(|a| a.as_str().map(str::to_owned).ok_or_else(|| "\"args\" holds a non-string".to_string()))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("\"args\" is not a list".into()),
        };
        return Ok(ServerSpec::Stdio {
            command: command.to_owned(),
            args,
            env: strings("env")?,
            cwd: text("cwd").map(PathBuf::from),
        });
    }
    if let Some(url) = text("url") {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("\"url\" is not an http(s) URL: {url}"));
        }
        let transport = match text("transport").or_else(|| text("type")).map(str::to_ascii_lowercase).as_deref() {
            None | Some("sse") => HttpTransport::Sse,
            Some("streamable-http" | "streamable_http" | "streamablehttp" | "http") => HttpTransport::Streamable,
            Some(other) => return Err(format!("unknown transport \"{other}\" (streamable-http or sse)")),
        };
        return Ok(ServerSpec::Http { url: url.to_owned(), headers: strings("headers")?, transport });
    }
    Err("neither \"command\" (stdio) nor \"url\" (HTTP) is set".into())
}

/// The migration report's lines for the settings file in `data_dir` (`check-config`): each entry
/// and whether it runs here (a stdio command is looked up on `PATH`, as it would be started).
pub fn report(data_dir: &Path) -> String {
    let path = data_dir.join(SETTINGS_FILE);
    let mut out = format!("MCP servers ({}):\n", path.display());
    let text = match std::fs::metadata(&path) {
        Err(_) => return out + "  none (no settings file)\n",
        Ok(meta) if meta.len() > MAX_SETTINGS_BYTES => {
            return out + &format!("  not read: over {MAX_SETTINGS_BYTES} bytes\n");
        }
        Ok(_) => std::fs::read_to_string(&path).unwrap_or_default(),
    };
    let entries = match parse_settings(&text) {
        Ok(entries) if entries.is_empty() => return out + "  none listed\n",
        Ok(entries) => entries,
        Err(e) => return out + &format!("  not usable: {e}\n"),
    };
    for (name, spec) in entries {
        let line = match spec {
            Err(e) => format!("not supported here: {e}"),
            Ok(ServerSpec::Stdio { command, args, .. }) => match find_program(&command) {
                Some(_) => format!("works: stdio, {command} {}", args.join(" ")),
                None => format!(
                    "works once {command:?} is installed: it is not on PATH here (stdio, {command} {})",
                    args.join(" ")
                ),
            },
            Ok(ServerSpec::Http { url, transport, .. }) => {
                let kind = if transport == HttpTransport::Streamable { "streamable HTTP" } else { "HTTP+SSE" };
                format!("works: {kind}, {url}")
            }
        };
        out += &format!("  {name}: {line}\n");
    }
    out
}

/// Where `command` would be found when started: itself when it names a path, else the first
/// `PATH` directory holding it.
fn find_program(command: &str) -> Option<PathBuf> {
    if command.contains('/') {
        return Path::new(command).is_file().then(|| PathBuf::from(command));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(command)).find(|candidate| candidate.is_file())
}

/// One tool of a connected server, as offered to the LLM.
#[derive(Clone)]
pub struct ServerTool {
    /// The server's name in the settings file.
    pub server: Arc<str>,
    /// The tool (its own name and the sanitized one offered).
    pub tool: DeviceTool,
    /// The connection that listed it.
    peer: Peer<RoleClient>,
}

impl std::fmt::Debug for ServerTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTool").field("server", &self.server).field("tool", &self.tool.name).finish()
    }
}

/// Why a call to a server's tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerCallError {
    /// No answer in time (announced to the server with `notifications/cancelled`).
    #[error("the MCP server did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection is gone.
    #[error("the MCP server is not connected")]
    Closed,
    /// The server answered with an error.
    #[error("MCP server error: {0}")]
    Server(String),
}

impl ServerTool {
    /// Calls the tool with `arguments` (a JSON object), waiting at most `timeout`; the text of
    /// its result.
    pub async fn call(&self, arguments: Value, timeout: Duration) -> Result<String, ServerCallError> {
        let arguments = match arguments {
            Value::Object(map) => Some(map),
            _ => None,
        };
        let params =
            CallToolRequestParams { meta: None, name: Cow::Owned(self.tool.name.clone()), arguments, task: None };
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = self
            .peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .map_err(|_| ServerCallError::Closed)?;
        // Dropped before the answer (timeout, or the turn aborted): the server is told.
        let mut pending = CancelOnDrop { peer: self.peer.clone(), id: Some(handle.id.clone()) };
        let answer = tokio::time::timeout(timeout, handle.rx).await.map_err(|_| ServerCallError::Timeout(timeout))?;
        pending.id = None;
        match answer {
            Err(_) => Err(ServerCallError::Closed),
            Ok(Err(e)) => Err(ServerCallError::Server(e.to_string())),
            Ok(Ok(ServerResult::CallToolResult(result))) => {
                let value = serde_json::to_value(result).map_err(|e| ServerCallError::Server(e.to_string()))?;
                wire::call_result_text(&value).map_err(|e| ServerCallError::Server(e.to_string()))
            }
            Ok(Ok(_)) => Err(ServerCallError::Server("the answer to tools/call is not a tool result".into())),
        }
    }
}

/// Sends `notifications/cancelled` for a request whose answer is no longer awaited.
struct CancelOnDrop {
    peer: Peer<RoleClient>,
    id: Option<RequestId>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(request_id) = self.id.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let peer = self.peer.clone();
        runtime.spawn(async move {
            let notification = CancelledNotification {
                params: CancelledNotificationParam { request_id, reason: Some("the call was given up".into()) },
                method: Default::default(),
                extensions: Default::default(),
            };
            let _ = peer.send_notification(ClientNotification::CancelledNotification(notification)).await;
        });
    }
}

/// One entry of the settings file while it runs.
struct Entry {
    name: Arc<str>,
    spec: ServerSpec,
    /// Its tools while connected (empty otherwise).
    tools: Arc<Mutex<Arc<[ServerTool]>>>,
    /// Stops its supervisor (and its process group).
    stop: CancellationToken,
}

/// The server-side MCP servers and their tools.
#[derive(Default)]
pub struct McpServers {
    // std Mutex: held to clone a few Arcs or to swap the list, never across an await.
    entries: Mutex<Vec<Entry>>,
}

impl McpServers {
    /// The tools of every connected server: servers in name order, each server's tools in its
    /// own order.
    pub fn tools(&self) -> Vec<ServerTool> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let lists: Vec<Arc<[ServerTool]>> =
            entries.iter().map(|e| Arc::clone(&e.tools.lock().unwrap_or_else(|p| p.into_inner()))).collect();
        drop(entries);
        lists.iter().flat_map(|list| list.iter().cloned()).collect()
    }

    /// The names of the running entries.
    pub fn names(&self) -> Vec<String> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|e| e.name.to_string()).collect()
    }

    /// Reads `<data_dir>/.mcp_server_settings.json` now and every [`POLL`], and runs what it lists
    /// until `shutdown`; every task goes on `tasks`, so waiting for them waits for the servers'
    /// process groups to be gone.
    pub fn watch(
        self: &Arc<Self>,
        data_dir: &Path,
        config: watch::Receiver<Arc<Config>>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) {
        let path = data_dir.join(SETTINGS_FILE);
        let this = Arc::clone(self);
        let spawner = tasks.clone();
        tasks.spawn(async move {
            let mut last: Option<Vec<u8>> = None;
            loop {
                match read_settings(&path).await {
                    Ok(contents) if last.as_ref() != Some(&contents) => {
                        this.apply(&path, &contents, &config, &shutdown, &spawner);
                        last = Some(contents);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("{}: {e}", path.display()),
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(POLL) => {}
                }
            }
            let entries = std::mem::take(&mut *this.entries.lock().unwrap_or_else(|p| p.into_inner()));
            for entry in entries {
                entry.stop.cancel();
            }
        });
    }

    /// Runs what `contents` lists: starts new entries, stops removed or changed ones.
    fn apply(
        &self,
        path: &Path,
        contents: &[u8],
        config: &watch::Receiver<Arc<Config>>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) {
        let wanted = if contents.is_empty() {
            Vec::new()
        } else {
            match parse_settings(&String::from_utf8_lossy(contents)) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!("{}: {e}; the MCP servers stay as they are", path.display());
                    return;
                }
            }
        };
        let max = config.borrow().limits.mcp_servers;
        let mut specs = Vec::new();
        for (name, spec) in wanted {
            match spec {
                Err(e) => tracing::warn!("{}: MCP server \"{name}\" is skipped: {e}", path.display()),
                Ok(_) if specs.len() >= max => {
                    tracing::warn!(
                        "{}: MCP server \"{name}\" is skipped: over limits.mcp_servers ({max})",
                        path.display()
                    );
                }
                Ok(spec) => specs.push((name, spec)),
            }
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = Vec::new();
        for entry in entries.drain(..) {
            if specs.iter().any(|(name, spec)| *name == *entry.name && *spec == entry.spec) {
                kept.push(entry);
            } else {
                tracing::info!("MCP server \"{}\" is stopped (removed or changed)", entry.name);
                entry.stop.cancel();
            }
        }
        for (name, spec) in specs {
            if let Some(at) = kept.iter().position(|e| *e.name == name) {
                entries.push(kept.remove(at));
                continue;
            }
            let entry = Entry {
                name: Arc::from(name.as_str()),
                spec: spec.clone(),
                tools: Arc::default(),
                stop: shutdown.child_token(),
            };
            let supervisor = Supervisor {
                name: Arc::clone(&entry.name),
                spec,
                tools: Arc::clone(&entry.tools),
                stop: entry.stop.clone(),
                config: config.clone(),
            };
            tasks.spawn(supervisor.run());
            entries.push(entry);
        }
    }
}

/// The settings file, or nothing when it does not exist.
async fn read_settings(path: &Path) -> Result<Vec<u8>, String> {
    match tokio::fs::metadata(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
        Ok(meta) if meta.len() > MAX_SETTINGS_BYTES => {
            return Err(format!("over {MAX_SETTINGS_BYTES} bytes; the MCP servers stay as they are"));
        }
        Ok(_) => {}
    }
    match tokio::fs::read(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
        Ok(bytes) => Ok(bytes),
    }
}

/// What our side of a connection answers and hears: our name, and `tools/list_changed`.
#[derive(Clone)]
struct Handler {
    list_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientInfo {
        ClientInfo {
            client_info: Implementation {
                name: "xiaozhi-server".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Implementation::default()
            },
            ..ClientInfo::default()
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }
}

/// Keeps one server connected.
struct Supervisor {
    name: Arc<str>,
    spec: ServerSpec,
    tools: Arc<Mutex<Arc<[ServerTool]>>>,
    stop: CancellationToken,
    config: watch::Receiver<Arc<Config>>,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff: Option<Duration> = None;
        while !self.stop.is_cancelled() {
            let limits = self.config.borrow().limits.clone();
            let first = Duration::from_millis(limits.mcp_server_restart_ms);
            let connected = Instant::now();
            match self.connect_and_serve(&limits).await {
                Ok(()) => tracing::warn!("MCP server \"{}\" went away", self.name),
                Err(e) => tracing::warn!("MCP server \"{}\": {e}", self.name),
            }
            self.publish(Vec::new());
            if self.stop.is_cancelled() {
                break;
            }
            let wait = match backoff {
                Some(previous) if connected.elapsed() < STABLE => (previous * 2).min(MAX_BACKOFF),
                _ => first,
            };
            backoff = Some(wait);
            tracing::info!("MCP server \"{}\" is started again in {wait:?}", self.name);
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.publish(Vec::new());
    }

    fn publish(&self, tools: Vec<ServerTool>) {
        *self.tools.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(tools);
    }

    /// One connection, from start to end: Ok when the server went away, Err when it could not
    /// be reached or set up.
    async fn connect_and_serve(&self, limits: &LimitsConfig) -> Result<(), String> {
        let start_timeout = Duration::from_millis(limits.mcp_server_start_timeout_ms);
        let list_changed = Arc::new(Notify::new());
        let handler = Handler { list_changed: Arc::clone(&list_changed) };
        let ct = self.stop.child_token();
        let started = async {
            match &self.spec {
                ServerSpec::Stdio { command, args, env, cwd } => {
                    let (transport, stderr) = spawn_stdio(command, args, env, cwd.as_deref())?;
                    if let Some(stderr) = stderr {
                        tokio::spawn(log_stderr(Arc::clone(&self.name), stderr));
                    }
                    handler.serve_with_ct(transport, ct.clone()).await.map_err(|e| e.to_string())
                }
                ServerSpec::Http { url, headers, transport: HttpTransport::Streamable } => {
                    let client = http_client(headers)?;
                    let config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                    let transport = StreamableHttpClientTransport::with_client(client, config);
                    handler.serve_with_ct(transport, ct.clone()).await.map_err(|e| e.to_string())
                }
                ServerSpec::Http { url, headers, transport: HttpTransport::Sse } => {
                    let transport = SseTransport::connect(http_client(headers)?, url).await?;
                    handler.serve_with_ct(transport, ct.clone()).await.map_err(|e| e.to_string())
                }
            }
        };
        let service: RunningService<RoleClient, Handler> = tokio::select! {
            () = self.stop.cancelled() => return Ok(()),
            started = tokio::time::timeout(start_timeout, started) => match started {
                Err(_) => return Err(format!("no answer to initialize within {start_timeout:?}")),
                Ok(service) => service.map_err(|e| format!("could not start: {e}"))?,
            },
        };
        let peer = service.peer().clone();
        let tools = tokio::time::timeout(start_timeout, self.list(&peer, limits))
            .await
            .map_err(|_| format!("no tool list within {start_timeout:?}"))??;
        tracing::info!("MCP server \"{}\" offers {} tools", self.name, tools.len());
        self.publish(tools);
        let closed = service.waiting();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => {
                    ct.cancel();
                    let _ = closed.await;
                    break;
                }
                _ = &mut closed => break,
                () = list_changed.notified() => {
                    match tokio::time::timeout(start_timeout, self.list(&peer, limits)).await {
                        Ok(Ok(tools)) => {
                            tracing::info!("MCP server \"{}\" now offers {} tools", self.name, tools.len());
                            self.publish(tools);
                        }
                        Ok(Err(e)) => tracing::warn!("MCP server \"{}\": {e}", self.name),
                        Err(_) => tracing::warn!("MCP server \"{}\": no tool list within {start_timeout:?}", self.name),
                    }
                }
            }
        }
        // The transport (and a stdio server's process group) is dropped with the service; let
        // the kill it spawns run before a shutdown ends the runtime.
        tokio::task::yield_now().await;
        Ok(())
    }

    /// The server's tools, paged and bounded, under sanitized unique names.
    async fn list(&self, peer: &Peer<RoleClient>, limits: &LimitsConfig) -> Result<Vec<ServerTool>, String> {
        let mut names = UniqueNames::default();
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        let (mut long_names, mut over) = (0usize, false);
        for _ in 0..MAX_PAGES {
            let page = peer
                .list_tools(Some(PaginatedRequestParams { meta: None, cursor: cursor.clone() }))
                .await
                .map_err(|e| format!("tools/list failed: {e}"))?;
            for tool in page.tools {
                if tool.name.chars().count() > limits.tool_name_chars {
                    long_names += 1;
                    continue;
                }
                if tools.len() >= limits.mcp_server_tools {
                    over = true;
                    break;
                }
                let exposed = names.take(&wire::sanitize_tool_name(&tool.name));
                tools.push(ServerTool {
                    server: Arc::clone(&self.name),
                    tool: DeviceTool {
                        name: tool.name.to_string(),
                        exposed,
                        description: tool.description.as_deref().unwrap_or_default().to_owned(),
                        input_schema: Value::Object((*tool.input_schema).clone()),
                    },
                    peer: peer.clone(),
                });
            }
            match page.next_cursor.filter(|c| !c.is_empty()) {
                Some(next) if !over && Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => break,
            }
        }
        if long_names > 0 {
            tracing::warn!(
                "MCP server \"{}\": {long_names} tool(s) ignored: names over {} characters",
                self.name,
                limits.tool_name_chars
            );
        }
        if over {
            tracing::warn!(
                "MCP server \"{}\" lists more than limits.mcp_server_tools ({}); the rest are ignored",
                self.name,
                limits.mcp_server_tools
            );
        }
        Ok(tools)
    }
}

/// Spawns a stdio server as the leader of its own process group (so killing it takes whatever
/// it started, such as `npx`'s node), with a cleared environment but [`INHERITED_ENV`] and `env`.
fn spawn_stdio(
    command: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
) -> Result<(TokioChildProcess, Option<tokio::process::ChildStderr>), String> {
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args).env_clear();
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.envs(env);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
    wrapped.wrap(process_wrap::tokio::ProcessGroup::leader()).wrap(process_wrap::tokio::KillOnDrop);
    TokioChildProcess::builder(wrapped)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command}: {e}"))
}

/// Logs a stdio server's stderr, line by line, with its name.
async fn log_stderr(name: Arc<str>, stderr: tokio::process::ChildStderr) {
    let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(STDERR_LINE_BYTES));
    while let Some(line) = lines.next().await {
        match line {
            Ok(line) => tracing::info!(mcp_server = %name, "{line}"),
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                tracing::info!(mcp_server = %name, "(a stderr line over {STDERR_LINE_BYTES} bytes, not shown)");
            }
            Err(LinesCodecError::Io(_)) => break,
        }
    }
}

/// An HTTP client that sends `headers` with every request.
fn http_client(headers: &BTreeMap<String, String>) -> Result<reqwest::Client, String> {
    let mut map = reqwest::header::HeaderMap::new();
    for (key, value) in headers {
        let key = reqwest::header::HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("\"headers.{key}\" is not a header name"))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| format!("\"headers.{key}\" has a value that is not a header value"))?;
        map.insert(key, value);
    }
    reqwest::Client::builder()
        .default_headers(map)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// The HTTP+SSE transport of MCP 2024-11-05 (the Python server's default for a `url`): a GET
/// opens an SSE stream whose first `endpoint` event names the URL to POST each message to; the
/// server's messages come as `message` events.
struct SseTransport {
    client: reqwest::Client,
    post: reqwest::Url,
    events: BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
}

/// Why the HTTP+SSE transport failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SseError(String);

impl SseTransport {
    async fn connect(client: reqwest::Client, url: &str) -> Result<Self, String> {
        let base = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        let response = client
            .get(base.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{url}: {e}"))?;
        let mut events = sse_stream::SseStream::from_bytes_stream(response.bytes_stream()).boxed();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| format!("{url}: {e}"))?;
            if event.event.as_deref() == Some("endpoint") {
                let target = event.data.unwrap_or_default();
                let post = base.join(target.trim()).map_err(|e| format!("{url}: endpoint {target:?}: {e}"))?;
                if post.origin() != base.origin() {
                    return Err(format!("{url}: the endpoint {post} is on another origin"));
                }
                return Ok(Self { client, post, events });
            }
        }
        Err(format!("{url}: the SSE stream ended before its endpoint event"))
    }
}

impl Transport<RoleClient> for SseTransport {
    type Error = SseError;

    fn send(&mut self, item: ClientJsonRpcMessage) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let request = self.client.post(self.post.clone()).json(&item);
        async move {
            request
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map(drop)
                .map_err(|e| SseError(e.to_string()))
        }
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        while let Some(event) = self.events.next().await {
            let Ok(event) = event else { return None };
            if !matches!(event.event.as_deref(), None | Some("message")) {
                continue;
            }
            match serde_json::from_str(event.data.as_deref().unwrap_or_default()) {
                Ok(message) => return Some(message),
                Err(e) => tracing::debug!("an SSE message that is not JSON-RPC: {e}"),
            }
        }
        None
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.events = futures_util::stream::empty().boxed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_as_the_python_server_reads_them() {
        let text = r#"{
            "des": ["comments are ignored"],
            "mcpServers": {
                "b-remote": {"url": "http://127.0.0.1:9/mcp", "transport": "streamable-http",
                             "headers": {"Authorization": "Bearer x"}},
                "a-files": {"command": "python3", "args": ["s.py", "--x"], "env": {"N": 3}},
                "c-legacy": {"url": "https://example.invalid/sse"},
                "d-off": {"command": "x", "disabled": true},
                "e-bad": {"url": "ftp://nope"},
                "f-empty": {}
            }
        }"#;
        let parsed = parse_settings(text).expect("parses");
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a-files", "b-remote", "c-legacy", "e-bad", "f-empty"]);
        assert_eq!(
            parsed[0].1,
            Ok(ServerSpec::Stdio {
                command: "python3".into(),
                args: vec!["s.py".into(), "--x".into()],
                env: BTreeMap::from([("N".into(), "3".into())]),
                cwd: None,
            })
        );
        assert!(matches!(&parsed[1].1, Ok(ServerSpec::Http { transport: HttpTransport::Streamable, headers, .. })
            if headers["Authorization"] == "Bearer x"));
        assert!(matches!(&parsed[2].1, Ok(ServerSpec::Http { transport: HttpTransport::Sse, .. })));
        assert!(parsed[3].1.as_ref().is_err_and(|e| e.contains("not an http(s) URL")));
        assert!(parsed[4].1.as_ref().is_err_and(|e| e.contains("neither")));
    }

    #[test]
    fn the_report_says_what_runs_here() {
        let dir = tempfile::tempdir().unwrap();
        assert!(report(dir.path()).contains("none (no settings file)"));
        let settings = r#"{"mcpServers": {
            "shell": {"command": "sh", "args": ["-c", "exit"]},
            "missing": {"command": "no-such-program-xz"},
            "web": {"url": "http://127.0.0.1:9/mcp", "type": "streamable-http"},
            "bad": {"url": "ftp://x"}
        }}"#;
        std::fs::write(dir.path().join(SETTINGS_FILE), settings).unwrap();
        let text = report(dir.path());
        assert!(text.contains("shell: works: stdio, sh -c exit"), "{text}");
        assert!(text.contains("missing: works once \"no-such-program-xz\" is installed"), "{text}");
        assert!(text.contains("web: works: streamable HTTP, http://127.0.0.1:9/mcp"), "{text}");
        assert!(text.contains("bad: not supported here"), "{text}");
    }

    #[test]
    fn a_broken_file_is_one_clear_error() {
        assert!(parse_settings("{").is_err_and(|e| e.contains("not valid JSON")));
        assert!(parse_settings(r#"{"mcpServers": []}"#).is_err_and(|e| e.contains("not an object")));
        assert_eq!(parse_settings("{}"), Ok(Vec::new()));
    }
}
