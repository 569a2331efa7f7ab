//! The outside attack test's findings, each written as the attack: one device freezing the server
//! with its MCP tool list, a device that stops reading, a sentence larger than the write buffer,
//! an unbounded tool result, new-device floods, admin routes from the wrong port, slowloris and
//! an ambiguous token. After each, the server serves everyone else as before. (The kv quota,
//! the token's signed string and the config nesting are attacked in the unit tests of
//! `extensions`, `auth` and `config`.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xiaozhi_e2e::harness::{ServerProcess, TestServer, metric, write_override};
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::raw::{RawDevice, RawOptions};
use xiaozhi_server::simulator::{SimConfig, SimDevice, SimEvent};

const REPLY_WAIT: Duration = Duration::from_secs(30);

/// Time from `detect` to the first reply audio of a normal device connecting to `ws`.
async fn typed_turn_latency(ws: SocketAddr, device_id: &str) -> anyhow::Result<Duration> {
    let cfg = SimConfig { url: format!("ws://{ws}/xiaozhi/v1/"), device_id: device_id.into(), ..SimConfig::default() };
    let mut device = SimDevice::connect(cfg).await?;
    let asked = Instant::now();
    device.detect("are you there").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    anyhow::ensure!(reply.audio_ms() > 300, "no audio in the reply");
    let first = reply.frames.first().map(|(at, _)| *at).ok_or_else(|| anyhow::anyhow!("no audio"))?;
    device.close_abruptly().await;
    Ok(first.saturating_duration_since(asked))
}

/// How long `/health` takes to answer.
async fn health_latency(http: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response =
        tokio::time::timeout(Duration::from_secs(10), reqwest::get(format!("http://{http}/health"))).await??;
    anyhow::ensure!(response.status() == 200);
    Ok(started.elapsed())
}

/// Waits until `/metrics` shows no session open, or fails after `within`.
async fn no_session_left(http: SocketAddr, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if metric(http, "xiaozhi_sessions").await? == 0.0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(started.elapsed() < within, "a session is still open after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Finding 1: renaming clashing tool names was cubic and ran on a tokio worker: two devices with
/// 10 000 tools named `a` each stopped `/health` and every new hello. (The server runs as its own
/// process here, so a frozen server cannot freeze the test with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_same_named_tools_freeze_nothing() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Still here.")).await?;
    let dir = tempfile::tempdir()?;
    write_override(dir.path(), &mock.config_override_yaml(), "", "")?;
    let server = ServerProcess::spawn(env!("CARGO_BIN_EXE_test-server"), dir.path()).await?;
    let (ws, http) = (server.ws_addr, server.http_addr);
    let before = typed_turn_latency(ws, "aa:bb:cc:00:09:00").await?;

    let attackers: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(async move {
                let mut device = RawDevice::connect(ws, &RawOptions::device(&format!("aa:bb:cc:00:09:1{i}"))).await?;
                device.hello(true).await?;
                // 4 000 tools named `a` on each of 5 pages (every page under the 64 KiB message cap).
                let pages = device
                    .serve_mcp(
                        Duration::from_secs(3),
                        |cursor| {
                            let page: usize = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
                            let next = (page + 1 < 5).then(|| (page + 1).to_string());
                            (vec![json!({"name": "a"}); 4000], next)
                        },
                        |_| String::new(),
                    )
                    .await?;
                anyhow::Ok((device, pages))
            })
        })
        .collect();
    // While the attackers list their tools, a normal device talks and /health answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = tokio::time::timeout(Duration::from_secs(20), typed_turn_latency(ws, "aa:bb:cc:00:09:01")).await??;
    let health = health_latency(http).await?;
    let mut devices = Vec::new();
    for attacker in attackers {
        let (device, pages) = tokio::time::timeout(Duration::from_secs(20), attacker).await???;
        assert_eq!(pages, 1, "the server stops asking once it has limits.device_tools tools");
        devices.push(device);
    }
    println!("turn latency before {before:?}, during the attack {during:?}; /health {health:?}");
    assert!(during < before + Duration::from_secs(1), "the attack slowed a normal turn: {before:?} → {during:?}");
    assert!(health < Duration::from_millis(500), "/health took {health:?}");

    // The attacker's turn offers the LLM at most limits.device_tools of its tools.
    let mut attacker = devices.remove(0);
    let asked = mock.requests().len();
    attacker.send(json!({"type": "listen", "state": "detect", "text": "what can you do"}).to_string()).await?;
    attacker.serve_mcp(Duration::from_secs(2), |_| (Vec::new(), None), |_| String::new()).await?;
    let request = mock.requests().into_iter().skip(asked).find(|r| r.path.ends_with("/chat/completions"));
    let tools = request.map(|r| r.body["tools"].as_array().cloned().unwrap_or_default()).unwrap_or_default();
    let named_a =
        tools.iter().filter(|t| t["function"]["name"].as_str().is_some_and(|n| n == "a" || n.starts_with("a_")));
    assert_eq!(named_a.count(), 128, "limits.device_tools (default 128)");
    server.stop().await
}

/// Finding 2: a device that stops reading pinned its session forever (the session awaited the
/// writer queue inside its message handler; no timer fired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_is_closed_at_the_write_deadline() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Fine.")).await?;
    let server = TestServer::start(&mock, "limits:\n  write_timeout_ms: 1000\n").await?;
    let http = server.server.http_addr;
    let options = RawOptions { recv_buffer: Some(4096), ..RawOptions::device("aa:bb:cc:00:09:20") };
    let mut device = RawDevice::connect(server.server.ws_addr, &options).await?;
    device.hello(false).await?;
    // 3 000 pings, never reading a pong: far more than the socket buffers hold.
    for _ in 0..3000 {
        device.send(r#"{"type":"ping"}"#).await?;
    }
    let flooded = Instant::now();
    let gone = no_session_left(http, Duration::from_secs(5)).await?;
    println!("the non-reading device was closed {gone:?} after its last ping (write deadline 1 s)");
    assert!(metric(http, "xiaozhi_devices_dropped_total{reason=\"not_reading\"}").await? >= 1.0);
    assert!(flooded.elapsed() < Duration::from_secs(5));
    // Everyone else is served as before.
    typed_turn_latency(server.server.ws_addr, "aa:bb:cc:00:09:21").await?;
    server.server.shutdown().await;
    Ok(())
}

/// Finding 2, the timers: a device that never says hello and never reads is still closed at the
/// hello timeout (it used to be held forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_timeout_fires_while_the_device_does_not_read() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "limits:\n  hello_timeout_ms: 1000\n  write_timeout_ms: 60000\n").await?;
    let options = RawOptions { recv_buffer: Some(4096), ..RawOptions::device("aa:bb:cc:00:09:30") };
    let mut device = RawDevice::connect(server.server.ws_addr, &options).await?;
    // Every message before the hello gets an error back, which this device never reads.
    for _ in 0..3000 {
        device.send(r#"{"type":"listen","state":"start","mode":"auto"}"#).await?;
    }
    let gone = no_session_left(server.server.http_addr, Duration::from_secs(5)).await?;
    println!("closed {gone:?} after the flood (hello timeout 1 s)");
    server.server.shutdown().await;
    Ok(())
}

/// Finding 2, shutdown: with such a device connected, SIGTERM did not stop the server (under
/// Docker: SIGKILL at every stop). It must exit within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_5_s_with_a_device_that_does_not_read() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let dir = tempfile::tempdir()?;
    // A minute's write deadline and room for all the answers: the device stays connected, stuck.
    let limits = "limits:\n  write_timeout_ms: 60000\n  outbound_queue_bytes: 16777216\n";
    write_override(dir.path(), &mock.config_override_yaml(), "", limits)?;
    let server = ServerProcess::spawn(env!("CARGO_BIN_EXE_test-server"), dir.path()).await?;
    let options = RawOptions { recv_buffer: Some(4096), ..RawOptions::device("aa:bb:cc:00:09:40") };
    let mut device = RawDevice::connect(server.ws_addr, &options).await?;
    device.hello(false).await?;
    // 80 000 pings: their pongs (6 MB) are more than any kernel buffers hold. A server that stops
    // reading (the old one did, once its queue was full) makes the sends wait: give up after 10 s.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..80_000 {
            device.send(r#"{"type":"ping"}"#).await?;
        }
        anyhow::Ok(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(server.http_addr, "xiaozhi_sessions").await?, 1.0, "the device is still connected");
    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(5)).await?;
    println!("exited {:?} after SIGTERM ({status})", started.elapsed());
    assert!(status.success(), "{status}");
    drop(device);
    Ok(())
}

/// Finding 3: a sentence larger than the WebSocket write buffer killed the writer silently; the
/// session then never sent audio or `tts stop` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_000_character_sentence_is_spoken_in_pieces() -> anyhow::Result<()> {
    let endless = format!("🙂 {}", "word ".repeat(60_000));
    let mock = MockOpenAi::start(MockScript::default().reply(endless)).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:09:50", 1).await?;
    device.detect("say a lot").await?;
    let mut sentences = 0;
    let deadline = Instant::now() + REPLY_WAIT;
    while sentences < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match device.next_event(left).await {
            Some((_, SimEvent::Json(v))) if v["state"] == "sentence_start" => {
                let text = v["text"].as_str().unwrap_or_default();
                assert!(text.chars().count() <= 300, "a {}-character subtitle", text.chars().count());
                sentences += 1;
            }
            Some((_, SimEvent::Closed(why))) => anyhow::bail!("closed: {why:?}"),
            Some(_) => {}
            None => anyhow::bail!("only {sentences} sentence(s) within {REPLY_WAIT:?}"),
        }
    }
    // The writer is alive: an abort is answered with tts stop, and the next turn works.
    device.abort().await?;
    let mut stopped = false;
    while let Some((_, event)) = device.next_event(Duration::from_secs(5)).await {
        if let SimEvent::Json(v) = event
            && v["type"] == "tts"
            && v["state"] == "stop"
        {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "no tts stop after the abort");
    mock.set_script(MockScript::default().reply("🙂 Short now."));
    device.detect("and now").await?;
    assert_eq!(device.collect_reply(REPLY_WAIT).await?.sentences, ["Short now"]);
    assert_eq!(metric(server.server.http_addr, "xiaozhi_devices_dropped_total").await?, 0.0);
    server.server.shutdown().await;
    Ok(())
}

/// Finding 4: tool results were not capped: a huge result went to the LLM whole, into the stored
/// history, and again on every later turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_tool_result_is_cut_for_the_llm_and_the_history() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().tool("dump", "dump", json!({}), "🙂 Done.")).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = RawDevice::connect(server.server.ws_addr, &RawOptions::device("aa:bb:cc:00:09:60")).await?;
    device.hello(true).await?;
    let tool = json!({"name": "dump", "description": "Dumps everything", "inputSchema": {"type": "object"}});
    // The device's answer: 60 000 characters (its messages are capped at 64 KiB).
    let huge = "x".repeat(60_000);
    device.serve_mcp(Duration::from_secs(1), |_| (vec![tool.clone()], None), |_| huge.clone()).await?;
    device.send(json!({"type": "listen", "state": "detect", "text": "dump it"}).to_string()).await?;
    device.serve_mcp(Duration::from_secs(3), |_| (vec![tool.clone()], None), |_| huge.clone()).await?;
    device.send(json!({"type": "listen", "state": "detect", "text": "thanks"}).to_string()).await?;
    device.serve_mcp(Duration::from_secs(3), |_| (vec![tool.clone()], None), |_| huge.clone()).await?;

    let chats: Vec<Value> =
        mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).map(|r| r.body).collect();
    assert_eq!(chats.len(), 3, "the tool call, the answer with its result, the next turn");
    for chat in &chats[1..] {
        for message in chat["messages"].as_array().into_iter().flatten() {
            let chars = message["content"].as_str().unwrap_or_default().chars().count();
            assert!(chars <= 8100, "a {chars}-character {} message reached the LLM", message["role"]);
        }
    }
    let tool_message = chats[1]["messages"].as_array().and_then(|m| m.iter().find(|m| m["role"] == "tool")).cloned();
    let content = tool_message.map(|m| m["content"].as_str().unwrap_or_default().to_owned()).unwrap_or_default();
    assert!(content.starts_with("xxxx") && content.ends_with("more characters cut]"), "{}", &content[..40]);
    drop(device);
    no_session_left(server.server.http_addr, Duration::from_secs(5)).await?;
    // The stored history keeps at most limits.history_entry_bytes of it.
    let store = server.store().await?;
    let history = xiaozhi_server::store::history(&store, "aa:bb:cc:00:09:60").await?;
    let largest = history.iter().map(|e| e.message.content.len()).max().unwrap_or(0);
    assert!(!history.is_empty() && largest <= 16 * 1024, "a {largest}-byte history entry");
    server.server.shutdown().await;
    Ok(())
}

/// Finding 5: each OTA check with a new Device-Id (activation on) stored activation rows that
/// never expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_devices_is_rate_limited() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "activation:\n  enabled: true\n").await?;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..50 {
        let response = client
            .post(server.ota_url())
            .header("Device-Id", format!("aa:bb:cc:00:0a:{i:02x}"))
            .header("Client-Id", "5f0c6a1e-7b2d-4c8e-9a41-3d2b6f9e0c17")
            .json(&json!({"application": {"version": "2.4.2"}}))
            .send()
            .await?;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "limits.new_devices_per_ip_per_minute: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 40);
    let store = server.store().await?;
    let codes = xiaozhi_server::store::Store::keys(&store, "activation/code/").await?;
    assert_eq!(codes.len(), 10, "only the admitted devices have codes");
    server.server.shutdown().await;
    Ok(())
}

/// Finding 6: the admin routes answered anyone, also on the WebSocket port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_answer_only_on_the_http_port() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "").await?;
    let client = reqwest::Client::new();
    let (ws, http) = (server.server.ws_addr, server.server.http_addr);
    assert_eq!(client.get(format!("http://{ws}/metrics")).send().await?.status(), 404);
    assert_eq!(client.get(format!("http://{ws}/xiaozhi/extensions")).send().await?.status(), 404);
    assert_eq!(client.post(format!("http://{ws}/xiaozhi/extensions/reload")).send().await?.status(), 404);
    // On the HTTP port, from this machine, with no admin token set.
    assert_eq!(client.get(format!("http://{http}/metrics")).send().await?.status(), 200);
    assert_eq!(client.post(format!("http://{http}/xiaozhi/extensions/reload")).send().await?.status(), 200);
    server.server.shutdown().await;

    let locked = TestServer::start_with_server_yaml(&mock, "  admin_token: s3cret\n", "").await?;
    let http = locked.server.http_addr;
    assert_eq!(client.get(format!("http://{http}/metrics")).send().await?.status(), 401);
    let with_token = client.get(format!("http://{http}/metrics")).bearer_auth("s3cret").send().await?;
    assert_eq!(with_token.status(), 200);
    locked.server.shutdown().await;
    Ok(())
}

/// Finding 7: no HTTP header read timeout: 500 slowloris connections were held open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_header_timeout() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "limits:\n  http_header_timeout_ms: 1000\n").await?;
    let (ws, http) = (server.server.ws_addr, server.server.http_addr);
    let mut connections = Vec::new();
    for i in 0..500 {
        let addr = if i % 2 == 0 { http } else { ws };
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await?;
        connections.push(stream);
    }
    // One byte of header every 300 ms, never the end of the headers.
    let started = Instant::now();
    let mut open = connections.len();
    while started.elapsed() < Duration::from_secs(3) && open > 0 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        open = 0;
        for stream in &mut connections {
            if stream.write_all(b"X").await.is_ok() {
                open += 1;
            }
        }
        let health = health_latency(http).await?;
        assert!(health < Duration::from_millis(500), "/health took {health:?} during the attack");
    }
    // A closed connection reads as the end (after hyper's 408, if it sent one) or an error.
    let ends = connections.iter_mut().map(|stream| async move {
        let mut buf = [0u8; 512];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let all_closed = tokio::time::timeout(Duration::from_secs(2), futures_util::future::join_all(ends)).await;
    assert!(all_closed.is_ok(), "slow connections are still open");
    // A kept-alive connection that goes quiet after a request is closed too.
    let mut idle = tokio::net::TcpStream::connect(http).await?;
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(3), async {
        let mut total = 0;
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(read.is_ok_and(|n| n > 0), "the idle kept-alive connection was not closed");
    server.server.shutdown().await;
    Ok(())
}

/// Finding 8: a token minted for client `c`, device `x|V` was accepted for client `c|x`, device
/// `V`. Ids with the separator are refused at the door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_with_the_token_separator_are_refused() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start_with_server_yaml(&mock, "  auth:\n    enabled: true\n  auth_key: k3y\n", "").await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    // A token minted for client `c`, device `x|V` (say, by an OTA check with that Device-Id)…
    let token = xiaozhi_server::auth::issue_token("k3y", "c", "x|V", now);
    // …presented as client `c|x`, device `V`: the same signed string, refused at the door.
    let options = RawOptions { client_id: "c|x".into(), token: Some(token.clone()), ..RawOptions::device("V") };
    let err = RawDevice::connect(server.server.ws_addr, &options).await.err().expect("refused");
    assert!(format!("{err:#}").contains("400"), "{err:#}");
    let options = RawOptions { client_id: "c".into(), token: Some(token), ..RawOptions::device("x|V") };
    let err = RawDevice::connect(server.server.ws_addr, &options).await.err().expect("refused");
    assert!(format!("{err:#}").contains("400"), "{err:#}");
    // The OTA check does not sign such ids either.
    let ota = reqwest::Client::new().post(server.ota_url()).header("Device-Id", "x|V").header("Client-Id", "c");
    assert_eq!(ota.body("{}").send().await?.status(), 400);
    server.server.shutdown().await;
    Ok(())
}
