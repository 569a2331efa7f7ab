//! The vision endpoint and the device MCP start-up, end to end.
//!
//! Vision: the simulator takes the vision URL and token the server gave in MCP `initialize` and
//! posts a real JPEG the way the firmware does (multipart, chunked, `Device-Id`/`Client-Id`,
//! `Authorization: Bearer`); the mock VLLM receives the image and the question, and its answer
//! comes back to the device in the firmware's JSON shape. Missing, expired, forged and
//! other-device tokens get 401; a 20 MB body gets 413 and is never held whole.
//!
//! Device MCP: a device that never answers MCP gets its first typed turn answered within the
//! bound (`limits.device_mcp_wait_ms`); one that answers only the retry, late, has its tools
//! offered on a later turn.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xiaozhi_e2e::harness::{TestServer, metric};
use xiaozhi_e2e::jpeg;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_server::simulator::{SimConfig, SimDevice, post_photo};

const KEY: &str = "vision-test-key";
const REPLY_WAIT: Duration = Duration::from_secs(30);

/// Points the base config's selected vision model (`OpenAIVLLM`) at the mock.
fn vllm_yaml(mock: &MockOpenAi) -> String {
    format!(
        "VLLM:\n  OpenAIVLLM:\n    base_url: \"{}\"\n    model_name: mock-vllm\n    api_key: test\n",
        mock.base_url()
    )
}

async fn start(mock: &MockOpenAi, limits: &str) -> anyhow::Result<TestServer> {
    let extra = format!("{}{limits}", vllm_yaml(mock));
    TestServer::start_with_server_yaml(mock, &format!("  auth_key: {KEY}\n"), &extra).await
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Waits until the device has listed all its tools to the server (and so got `initialize`).
async fn wait_for_tools(device: &SimDevice, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let wanted = xiaozhi_server::simulator::mcp::tool_names().len();
    while device.mcp_state().tools_listed < wanted {
        anyhow::ensure!(started.elapsed() < within, "the device listed no tools within {within:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}

/// The firmware's camera: a 160×120 mosaic (real JPEG, a few hundred bytes).
fn photo() -> Vec<u8> {
    jpeg::mosaic(160, 120, |x, y| ((x * 13 + y * 29) % 200 + 30) as u8)
}

fn assert_refused(status: u16, body: &str, what: &str) {
    assert_eq!(status, 401, "{what}: {body}");
    let v: Value = serde_json::from_str(body).unwrap_or_default();
    assert_eq!(v["success"], false, "{what}: {body}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_photo_reaches_the_vision_model_and_its_answer_the_device() -> anyhow::Result<()> {
    let mock =
        MockOpenAi::start(MockScript { vision_reply: "A mosaic of grey squares.".into(), ..MockScript::default() })
            .await?;
    let server = start(&mock, "").await?;
    let device = server.device("aa:bb:cc:00:0e:01", 1).await?;
    wait_for_tools(&device, Duration::from_secs(5)).await?;

    // `initialize` told the device where to post: our HTTP port on the host it connected to.
    let (url, token) = device.mcp_state().vision.expect("capabilities.vision in initialize");
    assert_eq!(url, format!("http://127.0.0.1:{}/mcp/vision/explain", server.server.http_addr.port()));
    let token = token.expect("a vision token");
    let expires: u64 = token.rsplit('.').next().unwrap_or_default().parse()?;
    assert!(expires.abs_diff(now() + 3600) < 60, "the token lives limits.vision_token_seconds: {expires}");

    let image = photo();
    assert_eq!(&image[..3], &[0xFF, 0xD8, 0xFF]);
    let started = Instant::now();
    let (status, body) = device.take_photo("What is on the table?", &image).await?;
    eprintln!("vision: {} byte JPEG posted and answered in {} ms", image.len(), started.elapsed().as_millis());
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body)?;
    assert_eq!(
        answer,
        serde_json::json!({"success": true, "action": "RESPONSE", "response": "A mosaic of grey squares."})
    );

    // The mock VLLM got the question and the very JPEG, as a data URL.
    let seen = mock.vision_requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].0.contains("What is on the table?"), "{:?}", seen[0].0);
    let b64 = seen[0].1.strip_prefix("data:image/jpeg;base64,").expect("a JPEG data URL");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64)?, image);
    let model = mock.requests().into_iter().rev().find(|r| r.path.ends_with("/chat/completions")).map(|r| r.body);
    assert_eq!(model.as_ref().and_then(|b| b["model"].as_str()), Some("mock-vllm"));

    // Refused, with the firmware's JSON shape and nothing sent to the model.
    let (dev, client) = ("aa:bb:cc:00:0e:01", xiaozhi_server::simulator::DEFAULT_CLIENT_ID);
    let q = "What is it?";
    let (s, b) = post_photo(&url, None, dev, client, q, &image).await?;
    assert_refused(s, &b, "missing token");
    let expired = xiaozhi_server::vision::issue_token(KEY, dev, now() - 5);
    let (s, b) = post_photo(&url, Some(&expired), dev, client, q, &image).await?;
    assert_refused(s, &b, "expired token");
    let forged = xiaozhi_server::vision::issue_token("not-the-server-key", dev, now() + 3600);
    let (s, b) = post_photo(&url, Some(&forged), dev, client, q, &image).await?;
    assert_refused(s, &b, "token signed with another key");
    let (sig, exp) = token.split_once('.').expect("sig.exp");
    let stretched = format!("{sig}.{}", exp.parse::<u64>()? + 86_400);
    let (s, b) = post_photo(&url, Some(&stretched), dev, client, q, &image).await?;
    assert_refused(s, &b, "token with a later expiry written on");
    let (s, b) = post_photo(&url, Some(&token), "aa:bb:cc:00:0e:99", client, q, &image).await?;
    assert_refused(s, &b, "another device's token");
    let ws_token = xiaozhi_server::auth::issue_token(KEY, client, dev, now());
    let (s, b) = post_photo(&url, Some(&ws_token), dev, client, q, &image).await?;
    assert_refused(s, &b, "a WebSocket token");
    assert_eq!(mock.vision_requests().len(), 1, "refused requests never reach the model");

    // The token still works for its own device.
    let (status, body) = post_photo(&url, Some(&token), dev, client, q, &image).await?;
    assert_eq!(status, 200, "{body}");
    server.server.shutdown().await;
    Ok(())
}

/// The resident memory of this process (the server runs in it), bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    kb.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// Request head of a photo upload to `addr` with `token`.
fn head(addr: std::net::SocketAddr, token: &str, length: Option<u64>) -> String {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_owned(),
    };
    format!(
        "POST /mcp/vision/explain HTTP/1.1\r\nHost: {addr}\r\nDevice-Id: aa:bb:cc:00:0e:02\r\n\
         Client-Id: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={}\r\n{framing}\r\n",
        xiaozhi_server::simulator::DEFAULT_CLIENT_ID,
        xiaozhi_server::simulator::PHOTO_BOUNDARY
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_photo_is_refused_without_being_buffered() -> anyhow::Result<()> {
    const HUGE: u64 = 20 * 1024 * 1024;
    let mock = MockOpenAi::start(MockScript::default()).await?;
    // A 1 MiB cap, so that what the server may rightly hold (up to the cap, twice while the body
    // is assembled) stands well apart from the 20 MB and from what the tests running beside this
    // one allocate.
    let server = start(&mock, "limits:\n  vision_body_bytes: 1048576\n").await?;
    let addr = server.server.http_addr;
    let token = xiaozhi_server::vision::issue_token(KEY, "aa:bb:cc:00:0e:02", now() + 600);

    // Declared: refused from the head alone, with not a byte of the body sent.
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket.write_all(head(addr, &token, Some(HUGE)).as_bytes()).await?;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    drop(socket);

    // Chunked, as the firmware sends: counted while it streams, refused at the limit. The body is
    // sent from one reused 64 KiB chunk, so this process grows only by what the server holds.
    let before = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let socket = tokio::net::TcpStream::connect(addr).await?;
    let (mut reader, mut writer) = socket.into_split();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let chunk = vec![0x55u8; 64 * 1024];
        let mut sent = 0u64;
        // The head, then (as the first chunk) the start of a form whose file goes on and on.
        let mut framed = head(addr, &token, None).into_bytes();
        let form = xiaozhi_server::simulator::photo_form("What?", &[0xFF, 0xD8, 0xFF]);
        let start = &form[..form.len() - xiaozhi_server::simulator::PHOTO_BOUNDARY.len() - 8];
        framed.extend_from_slice(format!("{:x}\r\n", start.len()).as_bytes());
        framed.extend_from_slice(start);
        framed.extend_from_slice(b"\r\n");
        if writer.write_all(&framed).await.is_err() {
            return sent;
        }
        while sent < HUGE {
            let piece = format!("{:x}\r\n", chunk.len());
            let ok = writer.write_all(piece.as_bytes()).await.is_ok()
                && writer.write_all(&chunk).await.is_ok()
                && writer.write_all(b"\r\n").await.is_ok();
            if !ok {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut response)).await;
    let sent = sender.await?;
    sampler.abort();
    let grown = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(before);
    let text = String::from_utf8_lossy(&response).into_owned();
    eprintln!(
        "vision 20 MB chunked upload: answered in {} ms after {} KiB sent; process memory grew by at most {} KiB",
        started.elapsed().as_millis(),
        sent / 1024,
        grown / 1024
    );
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    assert!(sent < HUGE, "the server read the whole 20 MB ({sent} bytes)");
    assert!(grown < 12 * 1024 * 1024, "memory grew by {grown} bytes");
    assert!(metric(addr, "xiaozhi_limits_hit_total{limit=\"vision_body_bytes\"}").await? >= 2.0);
    assert!(mock.vision_requests().is_empty());
    server.server.shutdown().await;
    Ok(())
}

/// Time from `detect` to the first audio frame of a typed turn, and the tools the LLM was
/// offered.
async fn typed_turn(device: &mut SimDevice, mock: &MockOpenAi, text: &str) -> anyhow::Result<(Duration, Vec<String>)> {
    let before = mock.requests().len();
    let sent = Instant::now();
    device.detect(text).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    let took = reply.frames.first().map_or(Duration::MAX, |(t, _)| t.duration_since(sent));
    let chat = mock.requests().into_iter().skip(before).find(|r| r.path.ends_with("/chat/completions"));
    let tools = chat
        .map(|r| r.body["tools"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    Ok((took, tools))
}

fn device_tools(tools: &[String]) -> Vec<&String> {
    tools.iter().filter(|t| t.starts_with("self_")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_answers_mcp_does_not_hold_up_its_first_turn() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("Hi.")).await?;
    let server = start(&mock, "").await?;
    mock.warm_tts(&["Hi"]).await?;
    let wait = xiaozhi_server::config::LimitsConfig::default().device_mcp_wait_ms;

    // The firmware-like simulator: how long its whole MCP start-up takes, and a first turn.
    let connected = Instant::now();
    let mut answering = server.device("aa:bb:cc:00:0e:03", 1).await?;
    let handshake = wait_for_tools(&answering, Duration::from_secs(5)).await? + connected.elapsed();
    let (normal, tools) = typed_turn(&mut answering, &mock, "hello").await?;
    assert!(!device_tools(&tools).is_empty(), "{tools:?}");

    // A device whose hello says features.mcp but whose MCP server never answers.
    let cfg = SimConfig {
        url: server.ws_url(),
        device_id: "aa:bb:cc:00:0e:04".into(),
        mcp_ignore_requests: usize::MAX,
        ..SimConfig::default()
    };
    let mut silent = SimDevice::connect(cfg).await?;
    let (first, tools) = typed_turn(&mut silent, &mock, "hello").await?;
    eprintln!(
        "device MCP: the simulator's whole start-up (initialize + 2 tools/list pages) took {} ms; first typed \
         turn (detect -> first audio): answering device {} ms, silent device {} ms (bound {wait} ms)",
        handshake.as_millis(),
        normal.as_millis(),
        first.as_millis()
    );
    assert!(device_tools(&tools).is_empty(), "{tools:?}");
    assert!(
        first <= normal + Duration::from_millis(wait + 300),
        "the silent device's turn took {first:?}, the answering one's {normal:?}"
    );
    assert!(handshake < Duration::from_millis(wait), "the bound leaves the firmware's start-up room");
    // Later turns do not wait at all.
    let (second, _) = typed_turn(&mut silent, &mock, "again").await?;
    assert!(second <= normal + Duration::from_millis(300), "{second:?}");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_answers_the_retry_late_gets_its_tools_on_a_later_turn() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("Hi.")).await?;
    let server = start(&mock, "limits:\n  device_mcp_timeout_ms: 1000\n").await?;
    mock.warm_tts(&["Hi"]).await?;
    // Ignores the first `initialize`; answers everything after it 600 ms late (after the turn's
    // wait, within the request timeout).
    let cfg = SimConfig {
        url: server.ws_url(),
        device_id: "aa:bb:cc:00:0e:05".into(),
        mcp_ignore_requests: 1,
        mcp_reply_delay: Duration::from_millis(600),
        ..SimConfig::default()
    };
    let connected = Instant::now();
    let mut device = SimDevice::connect(cfg).await?;
    let (first, tools) = typed_turn(&mut device, &mock, "hello").await?;
    assert!(device_tools(&tools).is_empty(), "no tools yet: {tools:?}");
    wait_for_tools(&device, Duration::from_secs(10)).await?;
    // The device counts a page when it handles the request; its answer takes 600 ms more.
    tokio::time::sleep(Duration::from_millis(900)).await;
    eprintln!(
        "device MCP retry: first turn {} ms (to first audio) without device tools; tools listed by {} ms after \
         connecting",
        first.as_millis(),
        (connected.elapsed()).as_millis()
    );
    // The retry's `initialize` carried a vision token too.
    assert!(device.mcp_state().vision.is_some_and(|(_, token)| token.is_some()));
    let (_, tools) = typed_turn(&mut device, &mock, "hello again").await?;
    let offered = device_tools(&tools);
    assert!(offered.iter().any(|t| t.as_str() == "self_audio_speaker_set_volume"), "{tools:?}");
    assert_eq!(offered.len(), xiaozhi_server::simulator::mcp::tool_names().len(), "{tools:?}");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vision_requests_are_one_per_device_and_the_model_is_timed_out() -> anyhow::Result<()> {
    let script = MockScript { vision_delay: Duration::from_millis(1500), ..MockScript::default() };
    let mock = MockOpenAi::start(script).await?;
    let server = start(&mock, "limits:\n  vision_timeout_ms: 800\n").await?;
    let url = format!("http://{}/mcp/vision/explain", server.server.http_addr);
    let (dev, client) = ("aa:bb:cc:00:0e:06", xiaozhi_server::simulator::DEFAULT_CLIENT_ID);
    let token = xiaozhi_server::vision::issue_token(KEY, dev, now() + 600);
    let image = photo();

    let started = Instant::now();
    let first = {
        let (url, token, image) = (url.clone(), token.clone(), image.clone());
        tokio::spawn(async move { post_photo(&url, Some(&token), dev, client, "slow?", &image).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = post_photo(&url, Some(&token), dev, client, "and now?", &image).await?;
    assert_eq!(status, 429, "one request per device at a time: {body}");
    let (status, body) = first.await??;
    let took = started.elapsed();
    eprintln!(
        "vision: a model slower than limits.vision_timeout_ms (800 ms) was given up after {} ms",
        took.as_millis()
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["success"], false, "{body}");
    assert!(took < Duration::from_millis(1400), "{took:?}");
    // The place is free again.
    let (status, _) = post_photo(&url, Some(&token), dev, client, "again?", &image).await?;
    assert_eq!(status, 200);
    assert!(metric(server.server.http_addr, "xiaozhi_limits_hit_total{limit=\"vision_requests\"}").await? >= 1.0);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_takes_a_photo_and_the_device_speaks_what_the_model_saw() -> anyhow::Result<()> {
    let script = MockScript::default().tool(
        "look",
        "self_camera_take_photo",
        serde_json::json!({"question": "What is on the table?"}),
        "(not used: the vision answer is spoken as it is)",
    );
    let mock = MockOpenAi::start(MockScript { vision_reply: "A mosaic of grey squares.".into(), ..script }).await?;
    let server = start(&mock, "").await?;
    let image = photo();
    let cfg = SimConfig {
        url: server.ws_url(),
        device_id: "aa:bb:cc:00:0e:07".into(),
        camera: Some(std::sync::Arc::new(image.clone())),
        ..SimConfig::default()
    };
    let mut device = SimDevice::connect(cfg).await?;
    device.detect("look at the table").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    let spoken = reply.sentences.join(" ");
    eprintln!("vision through the LLM: the device heard {spoken:?}");
    assert!(spoken.contains("mosaic of grey squares"), "{spoken:?}");
    assert!(reply.audio_ms() > 300, "the answer is spoken");
    assert_eq!(device.mcp_calls().first().map(|(name, _)| name.as_str()), Some("self.camera.take_photo"));
    let seen = mock.vision_requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].0.contains("What is on the table?"), "{:?}", seen[0].0);
    let b64 = seen[0].1.strip_prefix("data:image/jpeg;base64,").expect("a JPEG data URL");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(b64)?, image);
    server.server.shutdown().await;
    Ok(())
}
