//! End-to-end: the device simulator holds spoken and typed conversations with a real server whose
//! providers are an OpenAI-compatible mock (real SSE, real espeak-ng speech). Real Opus, real
//! Silero VAD, real WebSocket.

use std::time::{Duration, Instant};

use serde_json::json;
use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_server::protocol::message::ListenMode;

const REPLY_WAIT: Duration = Duration::from_secs(30);
const SILENCE_WINDOW: Duration = Duration::from_millis(500);

/// Streams a spoken request in real time (with trailing silence, like a device in auto mode)
/// and returns when the reply has been received, with the server-added latency: first downlink
/// frame − (last voiced uplink frame + the configured silence window).
async fn spoken_turn(version: u32) -> anyhow::Result<()> {
    let mock = MockOpenAi::start(
        MockScript::default()
            .transcript("What is the weather like today?")
            .reply("😊 It is sunny and warm today. Enjoy it!"),
    )
    .await?;
    let server = TestServer::start(&mock, "").await?;
    // An instant mock: synthesize the reply's sentences once beforehand, so the figure below is
    // the server's own time and not espeak-ng's.
    mock.warm_tts(&["It is sunny and warm today", "Enjoy it"]).await?;
    let mut device = server.device("aa:bb:cc:00:00:01", version).await?;
    device.listen_start(ListenMode::Auto).await?;

    let speech = speech_16k("what is the weather like today")?;
    let before_ms = 400;
    // The voice ends at the last sample above the noise floor (espeak pads its output with silence).
    let voiced_len = speech.iter().rposition(|s| s.unsigned_abs() > 300).map_or(0, |i| i + 1);
    let voiced_end = Duration::from_millis(before_ms as u64 + voiced_len as u64 * 1000 / 16_000);
    let audio = with_silence(&speech, before_ms, 2000);
    let started = Instant::now();
    device.stream_speech(&audio, true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;

    assert_eq!(reply.stt.as_deref(), Some("What is the weather like today?"));
    assert_eq!(reply.emotion.as_deref(), Some("happy"));
    assert_eq!(reply.sentences, vec!["It is sunny and warm today".to_string(), "Enjoy it".to_string()]);
    assert!(reply.audio_ms() > 1000, "reply audio too short: {} ms", reply.audio_ms());
    assert_eq!(reply.sample_rate, 24_000);
    assert_eq!(reply.frames_outside_speaking, 0);
    assert!(reply.max_frames_ahead(60) <= 40.0, "pacing ran {} frames ahead", reply.max_frames_ahead(60));

    // The ASR got the whole utterance, pre-roll included (not cut at the first syllable).
    let asr = mock.requests().into_iter().find(|r| r.path.ends_with("/audio/transcriptions")).expect("ASR was called");
    let asr_ms = asr.body["audio_ms"].as_u64().unwrap_or(0);
    let speech_ms = speech.len() as u64 * 1000 / 16_000;
    assert!(asr_ms >= speech_ms, "ASR got {asr_ms} ms of audio for {speech_ms} ms of speech");

    let first = reply.frames.first().map(|(t, _)| *t).expect("audio frames");
    let since_voice = first.saturating_duration_since(started + voiced_end);
    let latency = since_voice.as_millis() as i64 - SILENCE_WINDOW.as_millis() as i64;
    eprintln!(
        "protocol v{version}: server-added latency {latency} ms (first downlink frame - end of voice - {} ms \
         silence window), {} frames, max {:.1} frames ahead",
        SILENCE_WINDOW.as_millis(),
        reply.frames.len(),
        reply.max_frames_ahead(60)
    );
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_turn_protocol_v1() -> anyhow::Result<()> {
    spoken_turn(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_turn_protocol_v2() -> anyhow::Result<()> {
    spoken_turn(2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_turn_protocol_v3() -> anyhow::Result<()> {
    spoken_turn(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_turn_and_history() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("😆 Ha, that is a good one.")).await?;
    let server = TestServer::start(&mock, "").await?;
    mock.warm_tts(&["Ha", "that is a good one"]).await?;
    let mut device = server.device("aa:bb:cc:00:00:02", 1).await?;
    let sent = Instant::now();
    device.detect("tell me a joke").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    if let Some((first, _)) = reply.frames.first() {
        eprintln!("typed turn: detect sent -> first downlink frame {} ms", first.duration_since(sent).as_millis());
    }
    assert_eq!(reply.stt.as_deref(), Some("tell me a joke"));
    assert_eq!(reply.emotion.as_deref(), Some("laughing"));
    assert!(!reply.sentences.is_empty());
    assert!(reply.audio_ms() > 500);

    device.detect("another one").await?;
    device.collect_reply(REPLY_WAIT).await?;
    // The second request carries the first exchange: the dialogue is kept per session.
    let chats: Vec<_> = mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).collect();
    let messages = chats.last().expect("two chat requests").body["messages"].as_array().cloned().unwrap_or_default();
    let texts: Vec<&str> = messages.iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(texts.contains(&"tell me a joke") && texts.contains(&"another one"), "{texts:?}");
    server.server.shutdown().await;
    Ok(())
}

/// A device that asks again the moment it gets `tts stop` (as a quick user with the firmware's
/// auto mode does) is answered with the whole dialogue so far: the turn reports its exchange
/// before the speaker ends the reply. (It raced before: the chat apps' conversation tests lost
/// their conversation on a loaded machine when the next question overtook the report.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_asked_the_moment_a_reply_ends_sees_the_whole_dialogue() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("Ok.")).await?;
    let server = TestServer::start(&mock, "").await?;
    mock.warm_tts(&["Ok"]).await?;
    let mut device = server.device("aa:bb:cc:00:00:07", 1).await?;
    const TURNS: usize = 10;
    for turn in 0..TURNS {
        device.detect(&format!("question {turn}")).await?;
        device.collect_reply(REPLY_WAIT).await?;
    }
    let chats: Vec<_> = mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).collect();
    assert_eq!(chats.len(), TURNS);
    for (turn, chat) in chats.iter().enumerate() {
        let messages = chat.body["messages"].as_array().cloned().unwrap_or_default();
        let dialogue: Vec<String> = messages
            .iter()
            .filter(|m| m["role"] != "system")
            .map(|m| format!("{}: {}", m["role"].as_str().unwrap_or("?"), m["content"].as_str().unwrap_or("")))
            .collect();
        let expected: Vec<String> = (0..turn)
            .flat_map(|k| [format!("user: question {k}"), "assistant: Ok.".to_owned()])
            .chain([format!("user: question {turn}")])
            .collect();
        assert_eq!(dialogue, expected, "request {turn}");
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_calls_the_device_volume_tool() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().tool(
        "volume",
        "self_audio_speaker_set_volume",
        json!({"volume": 30}),
        "😊 Done, the volume is now thirty.",
    ))
    .await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:00:03", 1).await?;
    // Typed right after the hello: the turn waits for the device's tool list (initialize, paged
    // tools/list) instead of missing the tools.
    device.detect("please set the volume to thirty").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(device.mcp_calls(), vec![("self.audio_speaker.set_volume".to_string(), json!({"volume": 30}))]);
    assert_eq!(device.volume(), 30);
    assert_eq!(device.mcp_state().tools_listed, 3, "all pages of tools/list were read");
    assert_eq!(reply.sentences, vec!["Done".to_string(), "the volume is now thirty".to_string()]);
    // The tool result went back to the LLM as a tool message.
    let last_chat = mock.requests().into_iter().rfind(|r| r.path.ends_with("/chat/completions")).expect("chat");
    let has_tool_result = last_chat.body["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
    assert!(has_tool_result);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_stops_audio_within_one_frame() -> anyhow::Result<()> {
    let long = "😊 Here is a long story. ".to_string()
        + &"Once upon a time there was a little robot who liked to talk about the weather all day long. ".repeat(6);
    let mock = MockOpenAi::start(MockScript::default().reply(long)).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:00:04", 1).await?;
    device.detect("tell me a story").await?;
    // Wait for real-time audio (beyond the pre-buffer), then abort.
    let mut frames = 0;
    while frames < 12 {
        match device.next_event(REPLY_WAIT).await {
            Some((_, xiaozhi_server::simulator::SimEvent::Audio { .. })) => frames += 1,
            Some(_) => {}
            None => anyhow::bail!("no audio before abort"),
        }
    }
    let aborted = xiaozhi_e2e::harness::abort_and_watch(&mut device, Duration::from_millis(60)).await?;
    assert!(aborted.stop_after < Duration::from_millis(500));
    assert!(
        aborted.late_frames <= 1,
        "{} audio frames arrived more than one frame after the abort",
        aborted.late_frames
    );
    // The session goes on.
    mock.set_reply("🙂 Yes, I am here.");
    device.detect("are you still there").await?;
    assert!(device.collect_reply(REPLY_WAIT).await?.audio_ms() > 0);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_hear_only_their_own_replies() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 You said: {user}.")).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut a = server.device("aa:bb:cc:00:00:0a", 1).await?;
    let mut b = server.device("aa:bb:cc:00:00:0b", 3).await?;
    a.detect("apples are red and round and sweet and crunchy").await?;
    b.detect("bananas").await?;
    let (ra, rb) = tokio::join!(a.collect_reply(REPLY_WAIT), b.collect_reply(REPLY_WAIT));
    let (ra, rb) = (ra?, rb?);
    let text_a = ra.sentences.join(" ");
    let text_b = rb.sentences.join(" ");
    assert!(text_a.contains("apples") && !text_a.contains("bananas"), "{text_a}");
    assert!(text_b.contains("bananas") && !text_b.contains("apples"), "{text_b}");
    // Each device got the audio of its own sentences: A's reply is much longer than B's.
    assert!(ra.audio_ms() > rb.audio_ms() + 1000, "A {} ms, B {} ms", ra.audio_ms(), rb.audio_ms());
    let expected_a = xiaozhi_e2e::speech::espeak_wav(&text_a)?;
    let expected_a_ms = expected_a.0.len() as u64 * 1000 / expected_a.1 as u64;
    let diff = ra.audio_ms().abs_diff(expected_a_ms);
    assert!(diff < 400 * ra.sentences.len() as u64, "A got {} ms, its own speech is {expected_a_ms} ms", ra.audio_ms());
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_refused_and_good_token_accepted() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start_with_server_yaml(
        &mock,
        "  auth_key: test-secret\n  auth:\n    enabled: true\n    allowed_devices: [\"aa:bb:cc:00:00:99\"]\n",
        "",
    )
    .await?;
    let base = xiaozhi_server::simulator::SimConfig { url: server.ws_url(), ..Default::default() };
    let bad = xiaozhi_server::simulator::SimConfig { token: Some("AAAA.1700000000".into()), ..base.clone() };
    let Err(err) = xiaozhi_server::simulator::SimDevice::connect(bad).await else { panic!("bad token accepted") };
    assert!(err.to_string().contains("401"), "{err}");
    let Err(none) = xiaozhi_server::simulator::SimDevice::connect(base.clone()).await else {
        panic!("missing token accepted")
    };
    assert!(none.to_string().contains("401"), "{none}");

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let token = xiaozhi_server::auth::issue_token("test-secret", &base.client_id, &base.device_id, now);
    let good = xiaozhi_server::simulator::SimConfig { token: Some(token), ..base.clone() };
    xiaozhi_server::simulator::SimDevice::connect(good.clone()).await?;

    // `xiaozhi-server revoke`: the device's tokens issued so far stop working, a newer one works.
    let state = xiaozhi_server::store::embedded::EmbeddedStore::open(&server.dir.path().join("store.sqlite3")).await?;
    xiaozhi_server::auth::revoke(&state, &base.device_id, now, Duration::from_secs(3600)).await?;
    let Err(revoked) = xiaozhi_server::simulator::SimDevice::connect(good).await else {
        panic!("revoked token accepted")
    };
    assert!(revoked.to_string().contains("401"), "{revoked}");
    let newer = xiaozhi_server::auth::issue_token("test-secret", &base.client_id, &base.device_id, now + 1);
    xiaozhi_server::simulator::SimDevice::connect(xiaozhi_server::simulator::SimConfig {
        token: Some(newer),
        ..base.clone()
    })
    .await?;
    let allowed = xiaozhi_server::simulator::SimConfig { device_id: "aa:bb:cc:00:00:99".into(), ..base };
    xiaozhi_server::simulator::SimDevice::connect(allowed).await?;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_the_session_serves_on() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Still here.")).await?;
    let server = TestServer::start(&mock, "").await?;
    for version in [1, 2, 3] {
        let mut device = server.device(&format!("aa:bb:cc:00:01:0{version}"), version).await?;
        device.listen_start(ListenMode::Auto).await?;
        device.send_text_raw("{not json".into()).await?;
        device.send_text_raw(r#"{"type":"dance","session_id":""}"#.into()).await?;
        device.send_text_raw(r#"{"session_id":"x"}"#.into()).await?;
        device
            .send_text_raw(format!(r#"{{"type":"listen","state":"detect","text":"{}"}}"#, "a".repeat(70_000)))
            .await?;
        // Truncated v2/v3 headers, a declared size larger than the frame, an oversize payload,
        // and an Opus packet that is garbage.
        device.send_binary_raw(vec![0, 2, 0]).await?;
        device.send_binary_raw(vec![0, 0, 0x10, 0]).await?;
        device.send_binary_raw(vec![0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3]).await?;
        device.send_binary_raw(vec![0u8; 70_000]).await?;
        device.send_binary_raw(vec![0xff; 40]).await?;
        let mut errors = 0;
        while let Some((_, event)) = device.next_event(Duration::from_millis(300)).await {
            if let xiaozhi_server::simulator::SimEvent::Json(v) = event
                && v["type"] == "error"
            {
                errors += 1;
            }
        }
        assert_eq!(errors, 4, "each bad text message gets an error (v{version})");
        device.detect("hello").await?;
        let reply = device.collect_reply(REPLY_WAIT).await?;
        assert_eq!(reply.sentences, vec!["Still here".to_string()], "v{version}");
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_failure_speaks_the_error_response_and_the_session_goes_on() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().llm_fail(true)).await?;
    let server = TestServer::start(&mock, "system_error_response: \"Sorry, something went wrong.\"\n").await?;
    let mut device = server.device("aa:bb:cc:00:00:05", 1).await?;
    device.detect("hello").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["Sorry".to_string(), "something went wrong".to_string()]);
    assert!(reply.audio_ms() > 500);
    mock.set_script(MockScript::default().reply("🙂 Back again."));
    device.detect("hello again").await?;
    assert_eq!(device.collect_reply(REPLY_WAIT).await?.sentences, vec!["Back again".to_string()]);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_and_tts_failures_are_survived() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().asr_fail(true)).await?;
    let server = TestServer::start(&mock, "system_error_response: \"Sorry, something went wrong.\"\n").await?;
    let mut device = server.device("aa:bb:cc:00:00:06", 1).await?;
    device.listen_start(ListenMode::Auto).await?;
    let speech = with_silence(&speech_16k("hello there")?, 300, 1500);
    device.stream_speech(&speech, true).await?;
    // ASR down: no stt, the error response is spoken.
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt, None);
    assert_eq!(reply.sentences, vec!["Sorry".to_string(), "something went wrong".to_string()]);
    assert!(reply.audio_ms() > 500);

    // TTS down: the reply's subtitle still arrives, and the error response is heard anyway: its
    // encoded audio is in the phrase cache since the first failure.
    mock.set_script(MockScript::default().tts_fail(true).reply("🙂 No voice today."));
    device.detect("say something").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ["No voice today", "Sorry", "something went wrong"].map(String::from).to_vec());
    assert!(reply.audio_ms() > 500, "the cached error phrase was played ({} ms)", reply.audio_ms());
    let speech_requests = mock.requests().iter().filter(|r| r.path.ends_with("/audio/speech")).count();

    // One failed request for the reply; the error phrases did not go to the TTS again.
    let failed = mock
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/audio/speech") && r.body["input"] == "No voice today")
        .count();
    assert_eq!(failed, 1);
    assert!(speech_requests <= 3, "{speech_requests} speech requests: the error phrases were synthesized again");

    // Both back: the session goes on normally.
    mock.set_script(MockScript::default().reply("🙂 All good."));
    device.detect("how about now").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["All good".to_string()]);
    assert!(reply.audio_ms() > 300);
    server.server.shutdown().await;
    Ok(())
}
