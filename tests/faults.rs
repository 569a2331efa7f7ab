//! Fault injection: the LLM endpoint slow, failing, answering garbage or cutting its stream
//! mid-sentence; ASR and TTS failing; a device vanishing mid-reply (TCP drop, no Close); a
//! thousand connects and disconnects. After each, the server serves a new session, `/metrics`
//! shows no session or turn left behind, and the device heard the error response where one is due.

use std::time::{Duration, Instant};

use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_server::simulator::SimEvent;

const REPLY_WAIT: Duration = Duration::from_secs(30);
const ERROR_RESPONSE: &str = "system_error_response: \"Sorry, something went wrong.\"\n";
const ERROR_SENTENCES: [&str; 2] = ["Sorry", "something went wrong"];

/// One metric's value from the server's `/metrics`.
async fn metric(server: &TestServer, name: &str) -> anyhow::Result<f64> {
    xiaozhi_e2e::harness::metric(server.server.http_addr, name).await
}

/// Waits until no session and no turn is open (the devices are gone), or fails after 10 s.
async fn assert_nothing_left_behind(server: &TestServer) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (sessions, turns) =
            (metric(server, "xiaozhi_sessions").await?, metric(server, "xiaozhi_turns_active").await?);
        if sessions == 0.0 && turns == 0.0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "left behind: {sessions} session(s), {turns} turn(s)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new device gets a normal answer.
async fn serves_a_new_session(server: &TestServer, mock: &MockOpenAi, device_id: &str) -> anyhow::Result<()> {
    mock.set_script(MockScript::default().reply("🙂 All good."));
    let mut device = server.device(device_id, 1).await?;
    device.detect("are you there").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    anyhow::ensure!(reply.sentences == ["All good"], "unexpected reply {:?}", reply.sentences);
    device.close_abruptly().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_faults_are_answered_with_the_error_response_and_leave_nothing_behind() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    // A 1 s LLM timeout, so that the slow endpoint counts as failed quickly.
    let providers =
        mock.config_override_yaml().replace("model_name: mock-llm\n", "model_name: mock-llm\n    timeout: 1\n");
    let server = TestServer::start_with_providers(&format!("{providers}{ERROR_RESPONSE}")).await?;
    mock.warm_tts(&ERROR_SENTENCES).await?;
    let faults = [
        ("HTTP 500", MockScript::default().llm_fail(true)),
        ("garbage", MockScript::default().llm_garbage(true)),
        ("slow (no token within the timeout)", MockScript::default().latency(Duration::from_secs(3), Duration::ZERO)),
    ];
    for (i, (fault, script)) in faults.into_iter().enumerate() {
        mock.set_script(script);
        let mut device = server.device(&format!("aa:bb:cc:00:06:0{i}"), 1).await?;
        device.detect("hello").await?;
        let reply = device.collect_reply(REPLY_WAIT).await?;
        assert_eq!(reply.sentences, ERROR_SENTENCES, "{fault}: the device hears the error response");
        assert!(reply.audio_ms() > 300, "{fault}: with audio");
        // The same session serves on once the LLM is back.
        mock.set_script(MockScript::default().reply("🙂 Back again."));
        device.detect("hello again").await?;
        assert_eq!(device.collect_reply(REPLY_WAIT).await?.sentences, ["Back again"], "{fault}");
        device.close_abruptly().await;
        assert_nothing_left_behind(&server).await?;
        serves_a_new_session(&server, &mock, &format!("aa:bb:cc:00:06:1{i}")).await?;
    }

    // The stream cut mid-sentence: what arrived is spoken, the turn ends, the session serves on.
    mock.set_script(
        MockScript::default().reply("😊 The first sentence arrives whole. The second never does.").llm_cut_after(8),
    );
    let mut device = server.device("aa:bb:cc:00:06:20", 1).await?;
    device.detect("tell me").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert!(!reply.sentences.is_empty() && reply.sentences.len() < 3, "a part is spoken: {:?}", reply.sentences);
    assert!(!reply.sentences.iter().any(|s| s.contains("never does")), "{:?}", reply.sentences);
    device.close_abruptly().await;
    assert_nothing_left_behind(&server).await?;
    serves_a_new_session(&server, &mock, "aa:bb:cc:00:06:21").await?;

    assert!(metric(&server, "xiaozhi_provider_errors_total{provider=\"llm\"}").await? >= 4.0);
    assert_nothing_left_behind(&server).await?;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_and_tts_faults_are_answered_and_leave_nothing_behind() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, ERROR_RESPONSE).await?;
    mock.warm_tts(&ERROR_SENTENCES).await?;
    // ASR down: the spoken utterance gets the error response.
    mock.set_script(MockScript::default().asr_fail(true));
    let mut device = server.device("aa:bb:cc:00:06:30", 1).await?;
    device.listen_start(xiaozhi_server::protocol::message::ListenMode::Auto).await?;
    let speech = xiaozhi_e2e::speech::with_silence(&xiaozhi_e2e::speech::speech_16k("hello there")?, 300, 1500);
    device.stream_speech(&speech, true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES);
    device.close_abruptly().await;
    assert_nothing_left_behind(&server).await?;
    // TTS down: the subtitle and the (cached) error response.
    mock.set_script(MockScript::default().tts_fail(true).reply("🙂 No voice today."));
    let mut device = server.device("aa:bb:cc:00:06:31", 1).await?;
    device.detect("say something").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ["No voice today", "Sorry", "something went wrong"]);
    assert!(reply.audio_ms() > 300, "the error response is heard from the phrase cache");
    device.close_abruptly().await;
    assert_nothing_left_behind(&server).await?;
    serves_a_new_session(&server, &mock, "aa:bb:cc:00:06:32").await?;
    assert!(metric(&server, "xiaozhi_provider_errors_total{provider=\"asr\"}").await? >= 1.0);
    assert!(metric(&server, "xiaozhi_provider_errors_total{provider=\"tts\"}").await? >= 1.0);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_vanishing_mid_reply_leaves_nothing_behind() -> anyhow::Result<()> {
    // A long reply streamed slowly: the device drops its TCP connection while audio flows.
    let reply =
        "😊 This is a long answer. It has many sentences. Each one takes a while. The device will not hear the end.";
    let mock = MockOpenAi::start(MockScript::default().reply(reply).latency(Duration::ZERO, Duration::from_millis(30)))
        .await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:06:40", 1).await?;
    device.detect("talk to me").await?;
    let deadline = Instant::now() + REPLY_WAIT;
    let mut audio = false;
    while !audio && Instant::now() < deadline {
        if let Some((_, SimEvent::Audio { .. })) = device.next_event(Duration::from_secs(5)).await {
            audio = true;
        }
    }
    assert!(audio, "the reply started");
    assert_eq!(metric(&server, "xiaozhi_turns_active").await?, 1.0, "mid-reply");
    device.close_abruptly().await;
    assert_nothing_left_behind(&server).await?;
    assert_eq!(metric(&server, "xiaozhi_turns_total{outcome=\"cancelled\"}").await?, 1.0);
    serves_a_new_session(&server, &mock, "aa:bb:cc:00:06:41").await?;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connects_and_disconnects_leave_nothing_behind() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "").await?;
    const ROUNDS: usize = 1000;
    const AT_ONCE: usize = 50;
    for batch in 0..ROUNDS / AT_ONCE {
        let ids: Vec<String> = (0..AT_ONCE).map(|i| format!("aa:bb:cc:01:{batch:02x}:{i:02x}")).collect();
        let devices = ids.iter().map(|id| server.device(id, 1));
        for device in futures_util::future::try_join_all(devices).await? {
            device.close_abruptly().await;
        }
    }
    assert_nothing_left_behind(&server).await?;
    assert_eq!(metric(&server, "xiaozhi_sessions_opened_total").await?, ROUNDS as f64);
    serves_a_new_session(&server, &mock, "aa:bb:cc:00:06:50").await?;
    server.server.shutdown().await;
    Ok(())
}
