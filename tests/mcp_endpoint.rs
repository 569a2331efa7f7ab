//! The MCP endpoint (`/mcp_endpoint/mcp/?token=`): `xiaozhi-mcp` from PyPI, run as a user runs it
//! (`MCP_ENDPOINT=<url> xiaozhi-mcp server.py`), bridges a local stdio MCP server written with the
//! `mcp` Python SDK; its tool is offered to the token's device only and a typed turn calls it. A
//! wrong token is refused at the upgrade, a reconnect replaces the tools, and the call overhead
//! and the memory per connected client are measured with a minimal tool server written here from
//! the hosted endpoint's protocol.
//!
//! The Python side: `XIAOZHI_MCP_PYTHON` names a Python that has `xiaozhi-mcp` and `mcp` 1.x
//! (`mcp.server.fastmcp`; 2.x renamed it) installed; without it, a venv is made in a temporary directory and both are installed from PyPI.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::python::{Group, python_with};
use xiaozhi_server::mcp::endpoint;

const REPLY_WAIT: Duration = Duration::from_secs(20);
const DEVICE_A: &str = "aa:bb:cc:00:0e:01";
const DEVICE_B: &str = "aa:bb:cc:00:0e:02";

/// The local MCP server the bridge runs: FastMCP from the `mcp` SDK; `TOOLSET=2` offers
/// `multiply` instead of `add_numbers`.
const SERVER_PY: &str = r#"
import os
from mcp.server.fastmcp import FastMCP

mcp = FastMCP("calc")

if os.environ.get("TOOLSET") == "2":
    @mcp.tool()
    def multiply(a: int, b: int) -> str:
        """Multiplies two numbers."""
        return f"product={a * b}"
else:
    @mcp.tool()
    def add_numbers(a: int, b: int) -> str:
        """Adds two numbers."""
        return f"sum={a + b}"

mcp.run(transport="stdio")
"#;

/// A Python with `xiaozhi-mcp` and `mcp`, and the temporary venv that holds it (if one was made).
async fn python() -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    python_with(&["xiaozhi-mcp==0.0.1", "mcp<2"]).await
}

/// Runs the bridge as a user would: `MCP_ENDPOINT=<url> python -m xiaozhi_mcp server.py`.
fn bridge(python: &PathBuf, script: &PathBuf, url: &str, toolset: &str) -> anyhow::Result<Group> {
    Group::spawn(
        tokio::process::Command::new(python)
            .args(["-m", "xiaozhi_mcp"])
            .arg(script)
            .env("MCP_ENDPOINT", url)
            .env("TOOLSET", toolset)
            .current_dir(script.parent().expect("script dir")),
    )
}

fn endpoint_url(server: &TestServer, token: &str) -> String {
    format!("ws://{}/mcp_endpoint/mcp/?token={token}", server.server.ws_addr)
}

/// Waits until `device` sees exactly the tool names `want`.
async fn wait_tools(server: &TestServer, device: &str, want: &[&str], within: Duration) -> anyhow::Result<()> {
    let hub = server.server.mcp_endpoint();
    let deadline = Instant::now() + within;
    loop {
        let names: Vec<String> = hub.tools_for(device).into_iter().map(|t| t.tool.name).collect();
        if names == want {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{device} sees {names:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names of the tools offered in the chat requests since `since`.
fn offered(mock: &MockOpenAi, since: usize) -> Vec<String> {
    mock.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .skip(since)
        .flat_map(|r| r.body["tools"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect()
}

fn chats(mock: &MockOpenAi) -> usize {
    mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_tool_reaches_its_device_only_and_reconnects_replace_it() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().tool(
        "add",
        "add_numbers",
        json!({"a": 2, "b": 3}),
        "😊 The sum is five.",
    ))
    .await?;
    let server = TestServer::start(&mock, "").await?;
    let store = server.store().await?;
    let token = endpoint::issue(&store, Some(DEVICE_A)).await?;
    let (python, _venv) = python().await?;
    let work = tempfile::tempdir()?;
    let script = work.path().join("server.py");
    std::fs::write(&script, SERVER_PY)?;

    // A wrong token is refused at the upgrade.
    let refused = tokio_tungstenite::connect_async(endpoint_url(&server, "forged")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => anyhow::bail!("a forged token was not refused with 401: {:?}", other.map(|_| ())),
    }

    let first = bridge(&python, &script, &endpoint_url(&server, &token), "1")?;
    wait_tools(&server, DEVICE_A, &["add_numbers"], Duration::from_secs(60)).await?;
    wait_tools(&server, DEVICE_B, &[], Duration::ZERO).await?;

    // Device A's typed turn: the LLM calls the tool through the endpoint, the result reaches it.
    let mut a = server.device(DEVICE_A, 1).await?;
    let before = chats(&mock);
    a.detect("please add two and three").await?;
    let reply = a.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["The sum is five".to_string()]);
    assert!(offered(&mock, before).contains(&"add_numbers".to_string()));
    let last = mock.requests().into_iter().rfind(|r| r.path.ends_with("/chat/completions")).expect("chat");
    let tool_message = last.body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "tool").cloned())
        .expect("a tool message");
    assert!(tool_message["content"].as_str().is_some_and(|c| c.contains("sum=5")), "{tool_message}");

    // Device B is not offered the tool.
    let mut b = server.device(DEVICE_B, 1).await?;
    let before = chats(&mock);
    b.detect("hello there").await?;
    b.collect_reply(REPLY_WAIT).await?;
    let seen = offered(&mock, before);
    assert!(!seen.contains(&"add_numbers".to_string()), "device B was offered {seen:?}");

    // Overhead of one call through the endpoint, the bridge and the Python server.
    let tool = server.server.mcp_endpoint().tools_for(DEVICE_A).remove(0);
    let figures = measure(&tool, 1000).await?;
    eprintln!("tool call via endpoint + xiaozhi-mcp + FastMCP stdio: {figures}");

    // The bridge goes away: its tool is gone; a new one (other tools) replaces it.
    drop(first);
    wait_tools(&server, DEVICE_A, &[], Duration::from_secs(10)).await?;
    let _second = bridge(&python, &script, &endpoint_url(&server, &token), "2")?;
    wait_tools(&server, DEVICE_A, &["multiply"], Duration::from_secs(60)).await?;
    server.server.shutdown().await;
    Ok(())
}

/// p50/p99 of `n` calls of `tool`.
async fn measure(tool: &endpoint::EndpointTool, n: usize) -> anyhow::Result<String> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let text = tool.client.call_bounded(&tool.tool.name, json!({"a": i, "b": 1}), Duration::from_secs(5)).await?;
        took.push(started.elapsed());
        anyhow::ensure!(!text.is_empty());
    }
    took.sort();
    Ok(format!("p50 {:?}, p99 {:?} over {n} calls", took[n / 2], took[n * 99 / 100]))
}

/// A minimal tool server written from the hosted endpoint's protocol: answers `initialize`,
/// `tools/list` (two pages), `tools/call` and `ping`; records cancellations.
async fn raw_tool_server(url: &str, name: &str, tools: &[&str]) -> anyhow::Result<RawServer> {
    // A small read buffer (the default is 128 KiB), so the memory figure is mostly the server's.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    let (mut tx, mut rx) = ws.split();
    let name = name.to_owned();
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| json!({"name": t, "description": "a test tool", "inputSchema": {"type": "object"}}))
        .collect();
    let cancelled = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&cancelled);
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = rx.next().await {
            let Message::Text(text) = message else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
            let id = v["id"].clone();
            let result = match v["method"].as_str() {
                Some("initialize") => json!({"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                                             "serverInfo": {"name": name, "version": "1"}}),
                Some("tools/list") if v["params"]["cursor"].is_null() && tools.len() > 1 => {
                    json!({"tools": tools[..1], "nextCursor": "2"})
                }
                Some("tools/list") if tools.len() > 1 => json!({"tools": tools[1..]}),
                Some("tools/list") => json!({"tools": tools}),
                Some("tools/call") if v["params"]["arguments"]["sleep"].is_u64() => {
                    continue; // never answered: the caller gives up and cancels
                }
                Some("tools/call") => {
                    json!({"content": [{"type": "text", "text": format!("ok {}", v["params"]["arguments"])}]})
                }
                Some("ping") => json!({}),
                Some("notifications/cancelled") => {
                    seen.lock().unwrap().push(v["params"].clone());
                    continue;
                }
                _ => continue,
            };
            let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
            if tx.send(Message::text(answer.to_string())).await.is_err() {
                break;
            }
        }
    });
    Ok(RawServer { task, cancelled })
}

/// A running [`raw_tool_server`].
struct RawServer {
    task: tokio::task::JoinHandle<()>,
    /// The `params` of each `notifications/cancelled` received.
    cancelled: Arc<Mutex<Vec<Value>>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_merges_replaces_bounds_and_measures() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(
        &mock,
        "limits:\n  mcp_endpoint_clients_per_token: 300\n  mcp_endpoint_call_timeout_ms: 1000\n",
    )
    .await?;
    let store = server.store().await?;
    let all = endpoint::issue(&store, None).await?;
    let url = endpoint_url(&server, &all);
    let hub = server.server.mcp_endpoint();

    // Two servers under one token, clashing tool names: merged, both kept (one renamed).
    let one = raw_tool_server(&url, "one", &["echo", "first"]).await?;
    wait_tools(&server, DEVICE_B, &["echo", "first"], Duration::from_secs(5)).await?;
    let two = raw_tool_server(&url, "two", &["echo"]).await?;
    wait_tools(&server, DEVICE_B, &["echo", "first", "echo"], Duration::from_secs(5)).await?;
    let mut device = server.device(DEVICE_B, 1).await?;
    let before = chats(&mock);
    device.detect("hello there").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let seen = offered(&mock, before);
    assert_eq!(seen.iter().filter(|n| n.starts_with("echo")).count(), 2, "{seen:?}");
    assert!(seen.contains(&"echo_2".to_string()), "{seen:?}");

    // A reconnect (same serverInfo.name) replaces the earlier connection and its tools.
    let _one_again = raw_tool_server(&url, "one", &["second"]).await?;
    wait_tools(&server, DEVICE_B, &["echo", "second"], Duration::from_secs(5)).await?;
    let first_gone = tokio::time::timeout(Duration::from_secs(5), one.task).await;
    assert!(first_gone.is_ok(), "the replaced connection was not closed");

    // A call not answered in time is given up and announced with notifications/cancelled.
    let echo = hub.tools_for(DEVICE_B).into_iter().find(|t| t.tool.name == "echo").expect("echo");
    let outcome = echo.client.call_bounded("echo", json!({"sleep": 1}), Duration::from_secs(5)).await;
    assert!(outcome.is_err(), "{outcome:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while two.cancelled.lock().unwrap().is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no notifications/cancelled for the call given up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(two.cancelled.lock().unwrap()[0]["requestId"].is_u64());
    two.task.abort();
    wait_tools(&server, DEVICE_B, &["second"], Duration::from_secs(5)).await?;

    // Pure endpoint overhead (no Python in the way).
    let second = hub.tools_for(DEVICE_B).remove(0);
    let figures = measure(&second, 1000).await?;
    eprintln!("tool call via endpoint + minimal WebSocket tool server: {figures}");

    // Memory per connected client (server and client side of each socket: both run here).
    let rss_before = rss_kib();
    let mut clients = Vec::new();
    for i in 0..200 {
        clients.push(raw_tool_server(&url, &format!("m{i}"), &["t"]).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.tools_for(DEVICE_B).len() < 201 {
        anyhow::ensure!(Instant::now() < deadline, "200 clients did not all list their tools");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let per_client = (rss_kib().saturating_sub(rss_before)) as f64 / 200.0;
    eprintln!("memory per connected endpoint client (both ends, one process): {per_client:.1} KiB");
    for c in clients {
        c.task.abort();
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_limits_refuse_before_the_upgrade() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(
        &mock,
        "limits:\n  mcp_endpoint_clients_per_token: 1\n  mcp_endpoint_tools: 2\n  mcp_endpoint_message_bytes: 4096\n",
    )
    .await?;
    let store = server.store().await?;
    let token = endpoint::issue(&store, None).await?;
    let url = endpoint_url(&server, &token);
    // A revoked token is refused.
    let revoked = endpoint::issue(&store, None).await?;
    assert_eq!(endpoint::revoke(&store, &revoked).await?, 1);
    match tokio_tungstenite::connect_async(endpoint_url(&server, &revoked)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => anyhow::bail!("a revoked token was accepted: {:?}", other.map(|_| ())),
    }
    // At most `mcp_endpoint_tools` tools are taken from one server.
    let _first = raw_tool_server(&url, "big", &["a", "b", "c"]).await?;
    wait_tools(&server, DEVICE_A, &["a", "b"], Duration::from_secs(5)).await?;
    // One client per token here: the second is refused with 429.
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 429),
        other => anyhow::bail!("a client over the per-token limit was accepted: {:?}", other.map(|_| ())),
    }
    // A message over `mcp_endpoint_message_bytes` closes that socket (and its tools go).
    let other = endpoint::issue(&store, None).await?;
    let (ws, _) = tokio_tungstenite::connect_async(endpoint_url(&server, &other)).await?;
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text("x".repeat(10_000))).await?;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = rx.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an oversized message did not close the socket");
    server.server.shutdown().await;
    Ok(())
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_turn_cancels_its_endpoint_call() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().tool("slow", "echo", json!({"sleep": 1}), "😊 Done.")).await?;
    let server = TestServer::start(&mock, "").await?;
    let store = server.store().await?;
    let token = endpoint::issue(&store, Some(DEVICE_A)).await?;
    let tool_server = raw_tool_server(&endpoint_url(&server, &token), "slow", &["echo"]).await?;
    wait_tools(&server, DEVICE_A, &["echo"], Duration::from_secs(5)).await?;
    let device = server.device(DEVICE_A, 1).await?;
    device.detect("a slow one please").await?;
    // The call reaches the tool server, which never answers; the user aborts the turn.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(tool_server.cancelled.lock().unwrap().is_empty(), "cancelled before the abort");
    device.abort().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while tool_server.cancelled.lock().unwrap().is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "the aborted turn's call was not cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tool_server.task.abort();
    server.server.shutdown().await;
    Ok(())
}
