//! End-to-end tests of the Aliyun Bailian (DashScope) providers against the DashScope mock
//! (`xiaozhi_e2e::vendors::dashscope`): CosyVoice synthesis (`alibl_stream`), Paraformer
//! real-time recognition (`aliyunbl_stream`), Qwen3-ASR-Flash (`qwen3_asr_flash`) and a Bailian
//! application (`AliBL`). Per provider: a turn through the device simulator, a vendor error
//! answered with the `system_error_response` on a session that then serves a next turn, and the
//! streaming behaviour (first audio before the synthesis ends; audio at the recognizer while the
//! user speaks).

use std::time::{Duration, Instant};

use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::providers::{Entry, REPLY_WAIT, providers_yaml};
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_e2e::vendors::dashscope::{API_KEY, Api, DashScopeMock};
use xiaozhi_e2e::vendors::{Timing, is_speech};
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::simulator::{Reply, SimDevice};

const ERROR_RESPONSE: &str = "system_error_response: \"Sorry, something went wrong.\"\n";
const ERROR_SENTENCES: [&str; 2] = ["Sorry", "something went wrong"];

/// A server whose `entries` point at the DashScope mock (the rest at the OpenAI mock), with the
/// error response set.
async fn server(mock: &MockOpenAi, entries: &[Entry]) -> anyhow::Result<TestServer> {
    TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(mock, entries))).await
}

/// The device says `question` and waits for the reply; `Instant`: when its speech ended (the
/// trailing silence follows).
async fn say(device: &mut SimDevice, question: &str) -> anyhow::Result<(Reply, Instant)> {
    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&with_silence(&speech_16k(question)?, 300, 0), true).await?;
    let speech_end = Instant::now();
    device.stream_silence(Duration::from_millis(1500)).await?;
    Ok((device.collect_reply(REPLY_WAIT).await?, speech_end))
}

async fn ask(device: &mut SimDevice, text: &str) -> anyhow::Result<Reply> {
    device.detect(text).await?;
    device.collect_reply(REPLY_WAIT).await
}

fn actions(received: &[serde_json::Value]) -> Vec<String> {
    received.iter().filter_map(|c| c["header"]["action"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alibl_stream_speaks_as_the_text_is_written_and_survives_a_failed_task() -> anyhow::Result<()> {
    let vendor = DashScopeMock::start().await?;
    // A synthesizer that starts after 100 ms and speaks in real time, in 100 ms frames.
    vendor.set_timing(Timing::new(Duration::from_millis(100), 1.0));
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 It is sunny and warm today. Enjoy the walk!")).await?;
    let tts = Entry::tts(format!(
        "type: alibl_stream\napi_key: {API_KEY}\nmodel: cosyvoice-v2\nvoice: longcheng_v2\noutput_dir: tmp/\nws_url: \"{}\"",
        vendor.ws_url()
    ));
    let server = server(&mock, &[tts]).await?;
    let mut device = server.device("aa:bb:cc:0d:05:01", 1).await?;

    // (a) A typed turn: real speech from the vendor reaches the device.
    let reply = ask(&mut device, "what is the weather").await?;
    assert_eq!(reply.sentences, ["It is sunny and warm today", "Enjoy the walk"]);
    assert!(reply.audio_ms() > 1_000, "{} ms of audio", reply.audio_ms());
    assert!(is_speech(&reply.pcm, reply.sample_rate, 500), "the device heard speech");
    assert_eq!(reply.decode_errors, 0);
    let received = vendor.received();
    let run = received.iter().find(|c| c["header"]["action"] == "run-task").expect("a run-task");
    assert_eq!(run["payload"]["parameters"]["voice"], "longcheng_v2");
    assert_eq!(run["payload"]["model"], "cosyvoice-v2");
    let actions = actions(&received);
    assert!(actions.iter().filter(|a| *a == "finish-task").count() >= 2, "one task per sentence: {actions:?}");
    // (c) Streaming: the first audio played before the vendor had sent the first sentence's audio.
    let first_frame = reply.frames.first().expect("audio frames").0;
    let synthesis_done = vendor.events.first("tts-done").expect("synthesis ended");
    assert!(first_frame < synthesis_done, "first audio {:?} after the synthesis ended", first_frame - synthesis_done);

    // (b) The vendor fails the task: the error response is heard, the session goes on.
    vendor.fail_tts_on("storm", "DataInspectionFailed", "Input data may contain inappropriate content.");
    mock.set_reply("🙂 A storm is coming.");
    let reply = ask(&mut device, "and tomorrow").await?;
    assert_eq!(reply.sentences, ["A storm is coming", ERROR_SENTENCES[0], ERROR_SENTENCES[1]]);
    assert!(reply.audio_ms() > 300, "the error response is heard");
    assert!(vendor.events.count("task-failed") >= 1);
    mock.set_reply("🙂 Back again.");
    let reply = ask(&mut device, "hello").await?;
    assert_eq!(reply.sentences, ["Back again"]);
    assert!(reply.audio_ms() > 300);
    // Connections whose task finished serve the next sentences.
    let tasks = vendor.events.count("task-started");
    let connections = vendor.events.count("connection");
    assert!(connections < tasks, "{connections} connections for {tasks} tasks");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alibl_stream_with_a_wrong_key_is_refused_and_answered() -> anyhow::Result<()> {
    let vendor = DashScopeMock::start().await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Hello there.")).await?;
    let tts = Entry::tts(format!("type: alibl_stream\napi_key: sk-wrong\nws_url: \"{}\"", vendor.ws_url()));
    let server = server(&mock, &[tts]).await?;
    let mut device = server.device("aa:bb:cc:0d:05:02", 1).await?;
    let reply = ask(&mut device, "hi").await?;
    assert_eq!(reply.sentences.first().map(String::as_str), Some("Hello there"));
    assert!(vendor.events.first("task-started").is_none(), "no task without the key");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliyunbl_stream_recognizes_while_the_user_speaks() -> anyhow::Result<()> {
    let vendor = DashScopeMock::start().await?;
    vendor.set_transcript("What is the weather like today?");
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Sunny all day.")).await?;
    let asr = Entry::asr(format!(
        "type: aliyunbl_stream\napi_key: {API_KEY}\nmodel: paraformer-realtime-v2\nformat: pcm\nsample_rate: 16000\n\
         disfluency_removal_enabled: false\nsemantic_punctuation_enabled: false\nmax_sentence_silence: 200\n\
         multi_threshold_mode_enabled: false\npunctuation_prediction_enabled: true\n\
         inverse_text_normalization_enabled: true\noutput_dir: tmp/\nws_url: \"{}\"",
        vendor.ws_url()
    ));
    let server = server(&mock, &[asr]).await?;
    let mut device = server.device("aa:bb:cc:0d:05:03", 1).await?;

    // (a) A spoken turn.
    let (reply, speech_end) = say(&mut device, "what is the weather like today").await?;
    assert_eq!(reply.stt.as_deref(), Some("What is the weather like today?"));
    assert_eq!(reply.sentences, ["Sunny all day"]);
    // (c) The audio reached the recognizer while the user was still speaking.
    let first_audio = vendor.events.first("asr-audio").expect("audio reached the vendor");
    assert!(first_audio + Duration::from_millis(500) < speech_end, "the first audio came after the speech");
    assert!(vendor.events.count("asr-audio") > 10, "streamed in pieces");
    let finish = vendor.events.first("asr-finish").expect("finish-task");
    assert!(finish > speech_end, "finish-task after the end of speech");
    let received = vendor.received();
    assert_eq!(actions(&received)[..2], ["run-task".to_owned(), "finish-task".to_owned()]);
    assert_eq!(received[0]["payload"]["parameters"]["max_sentence_silence"], 200);

    // (b) The vendor fails the task: the error response, then the same session recognizes again.
    vendor.fail_next(Api::Asr, "InvalidParameter", "The vocabulary does not exist.");
    let (reply, _) = say(&mut device, "what is the weather like today").await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES);
    assert!(vendor.events.count("task-failed") >= 1);
    let (reply, _) = say(&mut device, "what is the weather like today").await?;
    assert_eq!(reply.stt.as_deref(), Some("What is the weather like today?"));
    assert_eq!(reply.sentences, ["Sunny all day"]);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen3_asr_flash_recognizes_the_utterance() -> anyhow::Result<()> {
    let vendor = DashScopeMock::start().await?;
    vendor.set_transcript("Turn on the light.");
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 The light is on.")).await?;
    let asr = Entry::asr(format!(
        "type: qwen3_asr_flash\napi_key: {API_KEY}\nbase_url: \"{}\"\nmodel_name: qwen3-asr-flash\noutput_dir: tmp/\n\
         enable_lid: true\nenable_itn: true\ncontext: \"\"",
        vendor.compatible_base()
    ));
    let server = server(&mock, &[asr]).await?;
    let mut device = server.device("aa:bb:cc:0d:05:04", 1).await?;

    let (reply, _) = say(&mut device, "turn on the light").await?;
    assert_eq!(reply.stt.as_deref(), Some("Turn on the light."));
    assert_eq!(reply.sentences, ["The light is on"]);
    let request = vendor.received().pop().expect("a request");
    assert_eq!(request["model"], "qwen3-asr-flash");
    assert_eq!(request["asr_options"], serde_json::json!({"enable_lid": true, "enable_itn": true}));

    vendor.fail_next(Api::Qwen, "DataInspectionFailed", "Input data may contain inappropriate content.");
    let (reply, _) = say(&mut device, "turn on the light").await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES);
    let (reply, _) = say(&mut device, "turn on the light").await?;
    assert_eq!(reply.sentences, ["The light is on"]);
    assert_eq!(vendor.events.count("qwen-request"), 3);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alibl_app_answers_in_streamed_pieces() -> anyhow::Result<()> {
    let vendor = DashScopeMock::start().await?;
    vendor.set_reply("It is sunny today. Take a hat!");
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let llm = Entry::llm(format!(
        "type: AliBL\nbase_url: \"{}\"\napp_id: app0123456789\napi_key: {API_KEY}\nis_no_prompt: true\nali_memory_id: false",
        vendor.api_base()
    ));
    let server = server(&mock, &[llm]).await?;
    let mut device = server.device("aa:bb:cc:0d:05:05", 1).await?;

    let reply = ask(&mut device, "what is the weather").await?;
    assert_eq!(reply.sentences, ["It is sunny today", "Take a hat"]);
    assert!(reply.audio_ms() > 500);
    let request = vendor.received().pop().expect("a request");
    assert_eq!(request["app_id"], "app0123456789");
    assert_eq!(request["sse"], "enable");
    assert_eq!(request["body"]["parameters"]["incremental_output"], true);
    let messages = request["body"]["input"]["messages"].as_array().expect("messages").clone();
    assert!(messages.iter().all(|m| m["role"] != "system"), "is_no_prompt: the app's own prompt applies");
    assert_eq!(messages.last().map(|m| m["content"].clone()), Some("what is the weather".into()));

    vendor.fail_next(Api::App, "DataInspectionFailed", "Output data may contain inappropriate content.");
    let reply = ask(&mut device, "tell me more").await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES);
    vendor.set_reply("Back again.");
    let reply = ask(&mut device, "hello").await?;
    assert_eq!(reply.sentences, ["Back again"]);
    let request = vendor.received().pop().expect("a request");
    let turns = request["body"]["input"]["messages"].as_array().map_or(0, Vec::len);
    assert!(turns >= 3, "the dialogue so far is sent: {turns} messages");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}
