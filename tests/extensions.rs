//! End-to-end: the built-in WebAssembly extensions (built by `extensions/build.sh`) serve the
//! LLM's tool calls during spoken and typed turns, recognise intents (`intent_llm`), remember
//! each device apart (`mem_local_short`), change the assistant's role (`change_role`), answer
//! the lunar almanac (`get_lunar`) and play music (`play_music`). The host knows none of these
//! tools by name: ending the session, changing the prompt and playing are the tools' effects.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::simulator::{SimDevice, SimEvent};

const REPLY_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_calls_the_get_time_extension_and_the_answer_goes_back_to_the_llm() -> anyhow::Result<()> {
    let mock =
        MockOpenAi::start(MockScript::default().tool("time", "get_time", json!({}), "😊 It is a fine day.")).await?;
    let server = TestServer::start(&mock, "").await?;
    // The status endpoint lists what serves, and why the extensions without a grant do not.
    let status: Value =
        reqwest::get(format!("http://{}/xiaozhi/extensions", server.server.http_addr)).await?.json().await?;
    let list = status["extensions"].as_array().cloned().unwrap_or_default();
    let get_time = list.iter().find(|e| e["id"] == "get_time").expect("get_time listed");
    assert_eq!(get_time["serving"], "0.2.0", "{status}");
    let weather = list.iter().find(|e| e["id"] == "get_weather").expect("get_weather listed");
    assert!(weather["error"].as_str().is_some_and(|e| e.contains("not granted")), "{weather}");

    let mut device = server.device("aa:bb:cc:00:04:01", 1).await?;
    device.detect("what time is it").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["It is a fine day".to_string()]);
    // The LLM was offered the extension tool next to the device's tools, and got its result.
    let chats: Vec<Value> =
        mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).map(|r| r.body).collect();
    let offered = chats[0]["tools"].as_array().cloned().unwrap_or_default();
    assert!(offered.iter().any(|t| t["function"]["name"] == "get_time"), "get_time offered");
    let tool_message =
        chats.last().and_then(|c| c["messages"].as_array()?.iter().find(|m| m["role"] == "tool").cloned());
    let text = tool_message.expect("a tool message")["content"].as_str().unwrap_or("").to_string();
    let year = chrono_year();
    assert!(text.contains(&year), "the tool result has the date: {text}");
    // The call is counted: in the status (with its duration) and in /metrics.
    let status: Value =
        reqwest::get(format!("http://{}/xiaozhi/extensions", server.server.http_addr)).await?.json().await?;
    let list = status["extensions"].as_array().cloned().unwrap_or_default();
    let calls = list.iter().find(|e| e["id"] == "get_time").map(|e| e["calls"].clone()).unwrap_or_default();
    assert!(calls["calls"].as_u64().is_some_and(|n| n >= 1) && calls["errors"] == 0, "{calls}");
    assert!(calls["p50_ms"].as_f64().is_some_and(|ms| ms > 0.0) && calls["p99_ms"].is_number(), "{calls}");
    let count = xiaozhi_e2e::harness::metric(
        server.server.http_addr,
        "xiaozhi_extension_call_seconds_count{extension=\"get_time\"}",
    )
    .await?;
    assert!(count >= 1.0, "{count}");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_lunar_answers_the_almanac_of_a_date_as_the_python_plugin() -> anyhow::Result<()> {
    let arguments = json!({"date": "2026-02-17", "query": "节日和宜忌"});
    let mock =
        MockOpenAi::start(MockScript::default().tool("almanac", "get_lunar", arguments, "😊 今天是春节。")).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:04:09", 1).await?;
    device.detect("what does the almanac say").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["今天是春节".to_string()]);
    let chats: Vec<Value> =
        mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).map(|r| r.body).collect();
    let tool_message =
        chats.last().and_then(|c| c["messages"].as_array()?.iter().find(|m| m["role"] == "tool").cloned());
    let text = tool_message.expect("a tool message")["content"].as_str().unwrap_or("").to_string();
    for line in ["农历：丙午年正月初一", "干支：丙午年 庚寅月 壬戌日", "生肖：马", "节日：春节", "宜：祭祀"]
    {
        assert!(text.contains(line), "{line:?} missing from the tool result:\n{text}");
    }
    assert!(text.contains("关于“节日和宜忌”"), "{text}");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_extension_says_goodbye_and_closes() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().tool(
        "bye",
        "handle_exit_intent",
        json!({"say_goodbye": "Goodbye, see you soon!"}),
        "unused",
    ))
    .await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:04:02", 1).await?;
    device.detect("ok bye now").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["Goodbye".to_string(), "see you soon".to_string()]);
    assert!(reply.audio_ms() > 500);
    assert!(closes(&mut device).await, "the session closes after the goodbye");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_turns_reach_the_wasm_tools_and_their_actions_behave_like_the_python_server() -> anyhow::Result<()> {
    // Turn 1, req-llm: get_time's result goes back to the LLM, which answers in words.
    let mock = MockOpenAi::start(MockScript::default().transcript("What time is it?").tool(
        "time",
        "get_time",
        json!({}),
        "😊 It is a fine day.",
    ))
    .await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:04:03", 1).await?;
    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&with_silence(&speech_16k("what time is it")?, 300, 1500), true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some("What time is it?"));
    assert_eq!(reply.sentences, vec!["It is a fine day".to_string()]);
    let chats = chat_requests(&mock);
    assert_eq!(chats.len(), 2, "the tool call, then the answer with the tool result");
    let tool_message = chats[1]["messages"].as_array().and_then(|m| m.iter().find(|m| m["role"] == "tool").cloned());
    let text = tool_message.expect("a tool message")["content"].as_str().unwrap_or("").to_string();
    assert!(text.contains(&chrono_year()), "the LLM got get_time's result: {text}");

    // Turn 2, response: the exit tool's goodbye is spoken as is (no further LLM call) and the
    // session closes.
    mock.set_script(MockScript::default().transcript("Goodbye now.").tool(
        "Goodbye",
        "handle_exit_intent",
        json!({"say_goodbye": "Bye bye, talk soon!"}),
        "unused",
    ));
    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&with_silence(&speech_16k("goodbye now")?, 300, 1500), true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some("Goodbye now."));
    assert_eq!(reply.sentences, vec!["Bye bye".to_string(), "talk soon".to_string()]);
    assert!(reply.audio_ms() > 500);
    assert_eq!(chat_requests(&mock).len(), 3, "a response action asks the LLM nothing more");
    assert!(closes(&mut device).await, "the session closes after the goodbye");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intent_llm_calls_the_tool_and_the_chat_llm_answers_with_its_result() -> anyhow::Result<()> {
    // The intent prompt (it lists continue_chat) gets the JSON decision; the chat gets words.
    let mock = MockOpenAi::start(
        MockScript::default()
            .rule("continue_chat", r#"{"function_call": {"name": "get_time", "arguments": {}}}"#)
            .tool("time", "get_time", json!({}), "😊 It is a fine day."),
    )
    .await?;
    let providers = mock.config_override_yaml().replace("Intent: function_call", "Intent: intent_llm");
    let server = TestServer::start_with_providers(&providers).await?;
    let mut device = server.device("aa:bb:cc:00:04:04", 1).await?;
    device.detect("what time is it").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["It is a fine day".to_string()]);

    let chats = chat_requests(&mock);
    assert_eq!(chats.len(), 2, "the intent request, then the chat: {chats:?}");
    let intent_prompt = chats[0]["messages"][0]["content"].as_str().unwrap_or("");
    assert!(intent_prompt.contains("- name: get_time"), "the session's tools are offered: {intent_prompt}");
    assert!(chats[1].get("tools").is_none(), "the chat LLM is offered no tools in intent mode");
    let tool_message = chats[1]["messages"].as_array().and_then(|m| m.iter().find(|m| m["role"] == "tool").cloned());
    let text = tool_message.expect("the tool result reaches the chat")["content"].as_str().unwrap_or("").to_string();
    assert!(text.contains(&chrono_year()), "{text}");

    // Plain chat when the intent LLM says so.
    mock.set_script(
        MockScript::default()
            .rule("continue_chat", r#"{"function_call": {"name": "continue_chat"}}"#)
            .reply("🙂 Sure."),
    );
    device.detect("tell me something").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["Sure".to_string()]);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_local_short_remembers_each_device_apart() -> anyhow::Result<()> {
    // The summary prompt of mem_local_short gets a JSON "memory" quoting the dialogue.
    let mock = MockOpenAi::start(
        MockScript::default().rule("记忆整理助手", r#"{"dialogue": {user_json}}"#).reply("🙂 Noted: {user}"),
    )
    .await?;
    let providers = mock.config_override_yaml().replace("Memory: nomem", "Memory: mem_local_short");
    let server = TestServer::start_with_providers(&providers).await?;

    // Each device says its name in a first connection, which then ends.
    for (device_id, name) in [("aa:bb:cc:00:04:05", "Ann"), ("aa:bb:cc:00:04:06", "Bob")] {
        let mut device = server.device(device_id, 1).await?;
        device.detect(&format!("my name is {name}")).await?;
        device.collect_reply(REPLY_WAIT).await?;
        device.close_abruptly().await;
    }
    // Both dialogues are summarised in the background once their connections end.
    let deadline = Instant::now() + REPLY_WAIT;
    while summaries(&mock) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(summaries(&mock), 2, "one summary per finished dialogue");
    // The summary has arrived; give the extension a moment to store it.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // In their next connections, each device's prompt holds its own memory and nothing else's.
    for (device_id, own, other) in [("aa:bb:cc:00:04:05", "Ann", "Bob"), ("aa:bb:cc:00:04:06", "Bob", "Ann")] {
        let before = mock.requests().len();
        let mut device = server.device(device_id, 1).await?;
        device.detect("what is my name").await?;
        device.collect_reply(REPLY_WAIT).await?;
        // (The previous connection's summary may arrive in between: skip it.)
        let system = mock
            .system_prompts(before)
            .into_iter()
            .find(|system| !system.contains("记忆整理助手"))
            .expect("a chat request");
        let memory = system.split("<memory>").nth(1).unwrap_or("");
        assert!(memory.contains(&format!("my name is {own}")), "{device_id} remembers itself: {system}");
        assert!(!system.contains(other), "{device_id} never sees {other}'s memory: {system}");
        device.close_abruptly().await;
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_extension_adds_todays_date_to_every_sessions_prompt() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:04:0b", 1).await?;
    device.detect("hello").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let chats = chat_requests(&mock);
    let system = chats[0]["messages"][0]["content"].as_str().unwrap_or_default().to_owned();
    // prompt_context (WIT 0.2 `context`, asked once when the session starts) adds the date in
    // China with its lunar day and solar term.
    let day = |t: chrono::DateTime<chrono::Utc>| {
        (t + chrono::Duration::hours(8)).format("今天是%Y年%-m月%-d日，").to_string()
    };
    let (now, earlier) = (chrono::Utc::now(), chrono::Utc::now() - chrono::Duration::seconds(60));
    let line = system.lines().find(|l| l.starts_with("今天是")).unwrap_or_default();
    assert!(line.starts_with(&day(now)) || line.starts_with(&day(earlier)), "{system}");
    assert!(line.contains("，农历") && line.contains("第") && line.ends_with("天。"), "{line}");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_role_changes_the_prompt_of_the_following_turns() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().tool(
        "teacher",
        "change_role",
        json!({"role": "english_teacher", "role_name": "Lily"}),
        "unused",
    ))
    .await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:04:07", 1).await?;
    device.detect("be my english teacher").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert!(!reply.sentences.is_empty(), "the confirmation is spoken");
    assert_eq!(chat_requests(&mock).len(), 1, "a response action asks the LLM nothing more");

    device.detect("hello").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let chats = chat_requests(&mock);
    let system = chats.last().and_then(|c| c["messages"][0]["content"].as_str()).unwrap_or("").to_owned();
    assert!(system.starts_with("You are Lily, a patient and encouraging English teacher"), "{system}");
    // Another device keeps the configured prompt.
    let mut other = server.device("aa:bb:cc:00:04:08", 1).await?;
    other.detect("hello").await?;
    other.collect_reply(REPLY_WAIT).await?;
    let system = chat_requests(&mock).last().and_then(|c| c["messages"][0]["content"].as_str().map(str::to_owned));
    assert!(!system.unwrap_or_default().contains("Lily"));
    server.server.shutdown().await;
    Ok(())
}

/// A WAV file of `ms` milliseconds of a 440 Hz tone at 16 kHz.
fn tone_wav(ms: usize) -> Vec<u8> {
    let samples: Vec<i16> =
        (0..ms * 16).map(|i| ((i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin() * 8_000.0) as i16).collect();
    xiaozhi_server::audio::decode::wav_bytes(&samples, 16_000)
}

/// Events until `tts stop` (or `wait` without any): the audio frames after the sentence whose
/// text contains `title` began, with their arrival times, and the sentence texts.
async fn song_frames(device: &mut SimDevice, title: &str, wait: Duration) -> (Vec<Instant>, Vec<String>) {
    let (mut frames, mut sentences, mut in_song) = (Vec::new(), Vec::new(), false);
    while let Some((at, event)) = device.next_event(wait).await {
        match event {
            SimEvent::Json(v) if v["type"] == "tts" && v["state"] == "sentence_start" => {
                let text = v["text"].as_str().unwrap_or_default().to_owned();
                in_song = text.contains(title);
                sentences.push(text);
            }
            SimEvent::Json(v) if v["type"] == "tts" && v["state"] == "stop" => break,
            SimEvent::Audio { .. } if in_song => frames.push(at),
            SimEvent::Closed(_) => break,
            _ => {}
        }
    }
    (frames, sentences)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_music_plays_the_song_paced_abort_stops_it_and_the_next_question_works() -> anyhow::Result<()> {
    let music = tempfile::tempdir()?;
    std::fs::write(music.path().join("chime.wav"), tone_wav(1_500))?;
    std::fs::write(music.path().join("long tone.wav"), tone_wav(6_000))?;
    let mock =
        MockOpenAi::start(MockScript::default().tool("music", "play_music", json!({"song_name": "chime"}), "unused"))
            .await?;
    // Granted as a Python server user writes it: plugins.play_music.music_dir.
    let grant = format!("plugins:\n  play_music:\n    music_dir: \"{}\"\n", music.path().display());
    let server = TestServer::start(&mock, &grant).await?;
    let mut device = server.device("aa:bb:cc:00:04:0a", 1).await?;
    let frame_ms = u64::from(device.downlink_frame_ms());

    // The whole song arrives as paced Opus after its announcement, as long as the file.
    let asked = Instant::now();
    device.detect("play some music").await?;
    let (frames, sentences) = song_frames(&mut device, "正在播放：《chime》", REPLY_WAIT).await;
    assert!(sentences.len() >= 2, "announced before it plays: {sentences:?}");
    assert_eq!(sentences.last().map(String::as_str), Some("正在播放：《chime》"), "{sentences:?}");
    let song_ms = frames.len() as u64 * frame_ms;
    assert!((1_440..=1_620).contains(&song_ms), "{song_ms} ms of song for a 1 500 ms file");
    let spread = frames.last().zip(frames.first()).map(|(l, f)| l.duration_since(*f)).unwrap_or_default();
    assert!(spread >= Duration::from_millis(900), "paced like speech, not sent at once: {spread:?}");
    println!("play_music: first song frame {:?} after the question", frames[0].duration_since(asked));
    assert_eq!(chat_requests(&mock).len(), 1, "playing asks the LLM nothing more");

    // A long song, stopped by abort within one frame.
    mock.set_script(MockScript::default().tool("long tone", "play_music", json!({"song_name": "long tone"}), "unused"));
    device.detect("play the long tone").await?;
    let mut song_started = None;
    let mut seen = Vec::new();
    while let Some((at, event)) = device.next_event(REPLY_WAIT).await {
        if let SimEvent::Json(v) = &event {
            seen.push(v.to_string());
        }
        match event {
            SimEvent::Json(v)
                if v["type"] == "tts"
                    && v["state"] == "sentence_start"
                    && v["text"].as_str().is_some_and(|t| t == "正在播放：《long tone》") =>
            {
                song_started = Some(at);
            }
            SimEvent::Audio { .. } if song_started.is_some_and(|s| at > s + Duration::from_millis(1_000)) => break,
            _ => {}
        }
    }
    assert!(song_started.is_some(), "the long song started: {seen:?}");
    let aborted = xiaozhi_e2e::harness::abort_and_watch(&mut device, Duration::from_millis(frame_ms)).await?;
    assert!(aborted.stop_after < Duration::from_millis(500));
    assert!(aborted.late_frames <= 1, "{} frames arrived more than one frame after the abort", aborted.late_frames);

    // The session goes on.
    mock.set_reply("🙂 Yes, I am here.");
    device.detect("are you still there").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["Yes".to_string(), "I am here".to_string()]);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_calls_a_device_tool_streams_its_own_audio_and_speaks_through_effects() -> anyhow::Result<()> {
    // The doorbell example (not installed by default): copied into an extensions directory of
    // this server's own.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../extensions/examples/doorbell");
    assert!(example.join("doorbell.wasm").is_file(), "run `extensions/build.sh extensions/examples/doorbell` first");
    let installed = tempfile::tempdir()?;
    std::fs::create_dir_all(installed.path().join("doorbell"))?;
    for file in ["extension.toml", "doorbell.wasm"] {
        std::fs::copy(example.join(file), installed.path().join("doorbell").join(file))?;
    }
    let mock = MockOpenAi::start(MockScript::default().tool(
        "door",
        "ring_doorbell",
        json!({"who": "The postman"}),
        "😊 I turned the speaker up and rang.",
    ))
    .await?;
    let server = TestServer::start_with_extensions(&mock, installed.path(), "").await?;
    let mut device = server.device("aa:bb:cc:00:04:0c", 1).await?;
    let frame_ms = u64::from(device.downlink_frame_ms());
    device.detect("who is at the door").await?;
    let (chime, sentences) = song_frames(&mut device, "叮咚", REPLY_WAIT).await;
    // 1. The device's own volume tool was called (an MCP tools/call over the session).
    assert!(
        device.mcp_calls().iter().any(|(name, _)| name == "self.audio_speaker.set_volume"),
        "{:?}",
        device.mcp_calls()
    );
    assert_eq!(device.volume(), 80);
    // 2. The chime the extension streamed (1 200 ms, stereo 16 kHz chunks through media.read).
    let chime_ms = chime.len() as u64 * frame_ms;
    assert!((1_140..=1_320).contains(&chime_ms), "{chime_ms} ms of chime for 1 200 ms streamed");
    // 3. Then what it said, and the LLM's answer with the device tool's result.
    assert_eq!(sentences.first().map(String::as_str), Some("叮咚"), "{sentences:?}");
    assert!(sentences.iter().any(|s| s == "The postman is at the door"), "{sentences:?}");
    assert!(sentences.iter().any(|s| s.starts_with("I turned the speaker up")), "{sentences:?}");
    server.server.shutdown().await;
    Ok(())
}

/// The bodies of the chat requests the mock received, in order.
fn chat_requests(mock: &MockOpenAi) -> Vec<Value> {
    mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).map(|r| r.body).collect()
}

/// How many memory summaries (mem_local_short's LLM requests) the mock received.
fn summaries(mock: &MockOpenAi) -> usize {
    mock.system_prompts(0).iter().filter(|s| s.contains("记忆整理助手")).count()
}

/// Whether the server closes the session within a few seconds.
async fn closes(device: &mut SimDevice) -> bool {
    while let Some((_, event)) = device.next_event(Duration::from_secs(5)).await {
        if matches!(event, SimEvent::Closed(_)) {
            return true;
        }
    }
    false
}

/// This year, as the guest writes it (UTC is close enough: the test runs far from New Year).
fn chrono_year() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (1970 + secs / 31_556_952).to_string()
}
