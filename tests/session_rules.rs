//! End-to-end: the session rules a migrating user relies on — wake words, exit commands, the
//! no-voice goodbye, push-to-talk, OTA, and config changes applied to new sessions without a
//! restart.

use std::time::Duration;

use serde_json::{Value, json};
use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::speech::speech_16k;
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::simulator::{SimDevice, SimEvent};

const REPLY_WAIT: Duration = Duration::from_secs(30);

/// Waits until the server closes the connection; returns what arrived before.
async fn wait_closed(device: &mut SimDevice, within: Duration) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut json = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match device.next_event(left).await {
            Some((_, SimEvent::Closed(_))) => return Ok(json),
            Some((_, SimEvent::Json(v))) => json.push(v),
            Some(_) => {}
            None => anyhow::bail!("not closed within {within:?}; got {json:?}"),
        }
    }
}

fn chat_requests(mock: &MockOpenAi) -> Vec<Value> {
    mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).map(|r| r.body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_word_gets_a_greeting() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("😊 Hi! What can I do for you?")).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:02:01", 1).await?;
    device.detect("你好小智").await?;
    device.listen_start(ListenMode::Auto).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some("你好小智"));
    assert!(reply.audio_ms() > 500);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_command_closes_the_connection() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:02:02", 1).await?;
    device.detect("退出。").await?;
    let before = wait_closed(&mut device, Duration::from_secs(5)).await?;
    assert!(before.iter().any(|v| v["type"] == "stt" && v["text"] == "退出。"), "{before:?}");
    assert!(chat_requests(&mock).is_empty(), "an exit command does not reach the LLM");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_voice_timeout_says_goodbye_then_closes() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("👋 Goodbye, talk to you soon.")).await?;
    let server = TestServer::start(
        &mock,
        "close_connection_no_voice_time: 2\nend_prompt:\n  enable: true\n  prompt: \"Say goodbye now.\"\n",
    )
    .await?;
    let mut device = server.device("aa:bb:cc:00:02:03", 1).await?;
    device.listen_start(ListenMode::Auto).await?;
    // Silence in real time, like an open microphone in a quiet room.
    device.stream_silence(Duration::from_millis(2600)).await?;
    let reply = device.collect_reply(Duration::from_secs(10)).await?;
    assert_eq!(reply.stt, None);
    assert!(reply.audio_ms() > 500);
    wait_closed(&mut device, Duration::from_secs(5)).await?;
    let last = chat_requests(&mock).pop().expect("goodbye asked the LLM");
    let user = last["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
    assert_eq!(user["content"], "Say goodbye now.");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_mode_ends_the_utterance_on_listen_stop() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().transcript("Turn on the light.").reply("🙂 Okay.")).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:02:04", 2).await?;
    device.listen_start(ListenMode::Manual).await?;
    // No trailing silence: push-to-talk, the button release ends the utterance.
    let speech = speech_16k("turn on the light")?;
    device.stream_speech(&speech, true).await?;
    device.listen_stop().await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some("Turn on the light."));
    let asr = mock.requests().into_iter().find(|r| r.path.ends_with("/audio/transcriptions")).expect("ASR called");
    let speech_ms = speech.len() as u64 * 1000 / 16_000;
    assert!(asr.body["audio_ms"].as_u64().unwrap_or(0) + 120 >= speech_ms);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_points_the_device_at_our_websocket() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "").await?;
    let report = json!({
        "version": 2, "language": "zh-CN", "flash_size": 16777216, "minimum_free_heap_size": "123456",
        "mac_address": "aa:bb:cc:00:02:05", "uuid": "0c9d7c6e-3a5b-4a52-8f6a-1f6d2b8e9a01", "chip_model_name": "esp32s3",
        "application": {"name": "xiaozhi", "version": "2.4.2"}, "board": {"type": "bread-compact-wifi", "name": "bread"}
    });
    let response = reqwest::Client::new()
        .post(server.ota_url())
        .header("Device-Id", "aa:bb:cc:00:02:05")
        .header("Client-Id", "0c9d7c6e-3a5b-4a52-8f6a-1f6d2b8e9a01")
        .json(&report)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    assert_eq!(body["websocket"]["url"], server.ws_url());
    assert!(body.get("mqtt").is_none());
    assert!(body["server_time"]["timestamp"].as_u64().unwrap_or(0) > 1_700_000_000_000);
    assert_eq!(body["server_time"]["timezone_offset"], 480);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_apply_to_new_sessions_without_restart() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Fine.")).await?;
    let server = TestServer::start_watched(&mock, "prompt: \"You are the FIRST assistant.\"\n").await?;
    let mut old = server.device("aa:bb:cc:00:02:06", 1).await?;

    // A valid change: new sessions get it, the session already open keeps its settings.
    let path = server.override_path();
    let original = std::fs::read_to_string(&path)?;
    std::fs::write(&path, original.replace("FIRST", "SECOND"))?;
    let system_prompt = |body: &Value| body["messages"][0]["content"].as_str().unwrap_or("").to_string();
    let mut applied = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = server.device("aa:bb:cc:00:02:07", 1).await?;
        probe.detect("which one are you").await?;
        probe.collect_reply(REPLY_WAIT).await?;
        if system_prompt(&chat_requests(&mock).pop().unwrap_or_default()).contains("SECOND") {
            applied = true;
            break;
        }
    }
    assert!(applied, "the new prompt never reached a new session");
    old.detect("and you").await?;
    old.collect_reply(REPLY_WAIT).await?;
    assert!(system_prompt(&chat_requests(&mock).pop().unwrap_or_default()).contains("FIRST"));

    // An invalid change is refused: the server keeps the last good config and serves on.
    std::fs::write(&path, original.replace("FIRST", "THIRD") + "server:\n  port: not-a-port\n")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut after = server.device("aa:bb:cc:00:02:08", 1).await?;
    after.detect("still there").await?;
    after.collect_reply(REPLY_WAIT).await?;
    assert!(system_prompt(&chat_requests(&mock).pop().unwrap_or_default()).contains("SECOND"));
    server.server.shutdown().await;
    Ok(())
}
