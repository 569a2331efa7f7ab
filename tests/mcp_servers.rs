//! Server-side MCP servers from `data/.mcp_server_settings.json`: a stdio server, a
//! streamable-HTTP server and an HTTP+SSE server, all written with the `mcp` Python SDK (FastMCP,
//! from PyPI), are listed in the settings file; a typed turn's LLM calls each one's tool and the
//! result reaches the LLM. Killing the stdio server mid-session removes its tool from the next
//! turn and it is started again; removing an entry from the file stops it; at shutdown no server
//! process is left. The call overhead through stdio and streamable HTTP is measured.
//!
//! The Python side: `XIAOZHI_MCP_PYTHON` names a Python with `mcp` 1.x installed; without it, a
//! venv is made in a temporary directory and `mcp<2` is installed from PyPI.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::python::{Group, is_process_of, python_with};
use xiaozhi_server::mcp::servers::{SETTINGS_FILE, ServerTool};

const REPLY_WAIT: Duration = Duration::from_secs(20);
const DEVICE: &str = "aa:bb:cc:00:0f:01";

/// The stdio server: writes its pid to `PID_FILE` (so the test can kill exactly it), says hello
/// on stderr, offers `stdio_echo`.
const STDIO_PY: &str = r#"
import os, sys
from mcp.server.fastmcp import FastMCP

with open(os.environ["PID_FILE"], "w") as f:
    f.write(str(os.getpid()))
print("stdio tools are up", file=sys.stderr, flush=True)
mcp = FastMCP("stdio-tools")

@mcp.tool()
def stdio_echo(word: str) -> str:
    """Echoes a word, from the stdio server."""
    return f"stdio said {word}"

mcp.run(transport="stdio")
"#;

/// The HTTP server: `TRANSPORT` (`streamable-http` or `sse`) on `PORT`, offering the tool `TOOL`.
const HTTP_PY: &str = r#"
import os
from mcp.server.fastmcp import FastMCP

mcp = FastMCP("http-tools", host="127.0.0.1", port=int(os.environ["PORT"]), log_level="WARNING")
tool = os.environ["TOOL"]

def echo(word: str) -> str:
    return f"{tool} said {word}"

mcp.add_tool(echo, name=tool, description="Echoes a word, from an HTTP server.")
mcp.run(transport=os.environ["TRANSPORT"])
"#;

/// A free port on loopback.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the HTTP server script and waits until its port accepts connections.
async fn http_server(python: &Path, script: &Path, transport: &str, tool: &str) -> anyhow::Result<(Group, u16)> {
    let port = free_port()?;
    let group = Group::spawn(
        tokio::process::Command::new(python)
            .arg(script)
            .env("PORT", port.to_string())
            .env("TRANSPORT", transport)
            .env("TOOL", tool),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the {transport} server did not listen on {port} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((group, port))
}

/// The names of the tools the server's MCP servers offer now.
fn tool_names(server: &TestServer) -> Vec<String> {
    server.server.mcp_servers().tools().into_iter().map(|t| t.tool.exposed).collect()
}

/// Waits until the offered tool names are exactly `want`.
async fn wait_tools(server: &TestServer, want: &[&str], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let names = tool_names(server);
        if names == want {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the MCP servers offer {names:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The chat requests the mock has received.
fn chats(mock: &MockOpenAi) -> Vec<Value> {
    mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).map(|r| r.body).collect()
}

/// The tool names offered in a chat request.
fn offered(chat: &Value) -> Vec<String> {
    chat["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["function"]["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// One typed turn in which the LLM calls `tool`: returns the tool message the LLM got.
async fn turn_calling(
    mock: &MockOpenAi,
    device: &mut xiaozhi_server::simulator::SimDevice,
    tool: &str,
) -> anyhow::Result<String> {
    let trigger = format!("please use {tool}");
    mock.set_script(MockScript::default().tool(&trigger, tool, json!({"word": "apple"}), "Done: {tool}"));
    let before = chats(mock).len();
    device.detect(&trigger).await?;
    device.collect_reply(REPLY_WAIT).await?;
    let requests = chats(mock);
    let requests = requests.get(before..).unwrap_or_default();
    anyhow::ensure!(
        requests.first().is_some_and(|chat| offered(chat).contains(&tool.to_string())),
        "{tool} was not offered: {:?}",
        requests.first().map(offered)
    );
    let tool_message = requests
        .iter()
        .rev()
        .filter_map(|chat| chat["messages"].as_array())
        .find_map(|messages| messages.iter().rfind(|m| m["role"] == "tool").cloned())
        .ok_or_else(|| anyhow::anyhow!("the LLM never got a result of {tool}"))?;
    Ok(tool_message["content"].as_str().unwrap_or_default().to_owned())
}

/// p50/p99 of `n` calls of `tool`.
async fn measure(tool: &ServerTool, n: usize) -> anyhow::Result<String> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let text = tool.call(json!({"word": format!("w{i}")}), Duration::from_secs(5)).await?;
        took.push(started.elapsed());
        anyhow::ensure!(text.ends_with(&format!("said w{i}")), "unexpected result {text:?}");
    }
    took.sort();
    Ok(format!("p50 {:?}, p99 {:?} over {n} calls", took[n / 2], took[n * 99 / 100]))
}

/// The pid the stdio server wrote, once it is a live process of the script.
async fn stdio_pid(pid_file: &Path, not: Option<u32>, within: Duration) -> anyhow::Result<u32> {
    let deadline = Instant::now() + within;
    loop {
        let pid = std::fs::read_to_string(pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = pid
            && Some(pid) != not
            && is_process_of(pid, "stdio_server.py")
        {
            return Ok(pid);
        }
        anyhow::ensure!(Instant::now() < deadline, "no (new) stdio server process within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_settings(data_dir: &Path, servers: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(&json!({"des": ["written by the test"], "mcpServers": servers}))?;
    std::fs::write(data_dir.join(SETTINGS_FILE), text)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_file_servers_are_called_restarted_and_reloaded() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    // A 3 s first back-off leaves time to see the dead server's tool gone before it is back.
    let server = TestServer::start(&mock, "limits:\n  mcp_server_restart_ms: 3000\n").await?;
    let (python, _venv) = python_with(&["mcp<2"]).await?;
    let work = tempfile::tempdir()?;
    let stdio_script = work.path().join("stdio_server.py");
    std::fs::write(&stdio_script, STDIO_PY)?;
    let http_script = work.path().join("http_server.py");
    std::fs::write(&http_script, HTTP_PY)?;
    let pid_file = work.path().join("stdio.pid");
    let (_streamable, streamable_port) = http_server(&python, &http_script, "streamable-http", "http_echo").await?;
    let (_sse, sse_port) = http_server(&python, &http_script, "sse", "sse_echo").await?;

    let stdio = json!({"command": python, "args": [stdio_script], "env": {"PID_FILE": pid_file}});
    let streamable = json!({"url": format!("http://127.0.0.1:{streamable_port}/mcp"), "transport": "streamable-http",
                            "headers": {"X-Test": "1"}});
    let sse = json!({"url": format!("http://127.0.0.1:{sse_port}/sse")});
    write_settings(server.dir.path(), &json!({"a-stdio": stdio, "b-http": streamable, "c-sse": sse}))?;
    wait_tools(&server, &["stdio_echo", "http_echo", "sse_echo"], Duration::from_secs(60)).await?;

    // Each server's tool is offered and called in a typed turn; its result reaches the LLM.
    let mut device = server.device(DEVICE, 1).await?;
    for (tool, said) in
        [("stdio_echo", "stdio said apple"), ("http_echo", "http_echo said apple"), ("sse_echo", "sse_echo said apple")]
    {
        let result = turn_calling(&mock, &mut device, tool).await?;
        assert!(result.contains(said), "{tool}: the LLM got {result:?}");
    }

    // Overhead of one call through each transport (the Python server's own time included).
    let tools = server.server.mcp_servers().tools();
    for tool in &tools {
        let figures = measure(tool, 1000).await?;
        eprintln!("tool call via MCP server \"{}\": {figures}", tool.server);
    }

    // The stdio server is killed mid-session: its tool is gone from the next turn, and it is
    // started again (a new process) after the back-off.
    let pid = stdio_pid(&pid_file, None, Duration::from_secs(5)).await?;
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
    anyhow::ensure!(killed.success(), "kill {pid} failed");
    wait_tools(&server, &["http_echo", "sse_echo"], Duration::from_secs(5)).await?;
    mock.set_script(MockScript::default());
    let before = chats(&mock).len();
    device.detect("what tools are there").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let seen = offered(&chats(&mock)[before]);
    assert!(!seen.contains(&"stdio_echo".to_string()) && seen.contains(&"http_echo".to_string()), "{seen:?}");
    let restarted = stdio_pid(&pid_file, Some(pid), Duration::from_secs(30)).await?;
    wait_tools(&server, &["stdio_echo", "http_echo", "sse_echo"], Duration::from_secs(30)).await?;
    let result = turn_calling(&mock, &mut device, "stdio_echo").await?;
    assert!(result.contains("stdio said apple"), "after the restart the LLM got {result:?}");

    // The file changes: the removed entry stops, the others keep running (the same process).
    write_settings(server.dir.path(), &json!({"a-stdio": stdio, "b-http": streamable}))?;
    wait_tools(&server, &["stdio_echo", "http_echo"], Duration::from_secs(10)).await?;
    assert!(is_process_of(restarted, "stdio_server.py"), "an unchanged entry was restarted");

    // A broken file keeps the servers as they are.
    std::fs::write(server.dir.path().join(SETTINGS_FILE), "{ not json")?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tool_names(&server), ["stdio_echo", "http_echo"]);

    // Shutdown ends the stdio server's process.
    drop(device);
    server.server.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_process_of(restarted, "stdio_server.py") {
        anyhow::ensure!(Instant::now() < deadline, "the stdio server outlived the server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
