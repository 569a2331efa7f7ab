//! End-to-end tests of the chat-app LLM providers (Dify, Coze, FastGPT, Gemini) against their
//! vendor mocks (`tests/src/vendors/{dify,coze,fastgpt,gemini}.rs`): typed turns through the
//! device simulator are answered with the vendor's streamed text (heard as speech), the next turn
//! of the same session continues the vendor's conversation, a vendor error event makes the
//! device hear the `system_error_response` and the same session serves on. Gemini also calls a
//! tool (`get_time`) and gets its result back as a `functionResponse`.

use std::time::Duration;

use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::providers::{Entry, providers_yaml};
use xiaozhi_e2e::vendors::coze::CozeMock;
use xiaozhi_e2e::vendors::dify::DifyMock;
use xiaozhi_e2e::vendors::fastgpt::FastGptMock;
use xiaozhi_e2e::vendors::gemini::{GeminiMock, SIGNATURE};
use xiaozhi_server::simulator::{Reply, SimDevice};

const REPLY_WAIT: Duration = Duration::from_secs(30);
const ERROR_RESPONSE: &str = "system_error_response: \"Sorry, something went wrong.\"\n";
const ERROR_SENTENCES: [&str; 2] = ["Sorry", "something went wrong"];

/// A server whose LLM is `entry` (ASR and TTS on the OpenAI mock), with a known error response.
async fn server_for(entry: Entry) -> anyhow::Result<(MockOpenAi, TestServer)> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server =
        TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(&mock, &[entry]))).await?;
    mock.warm_tts(&ERROR_SENTENCES).await?;
    Ok((mock, server))
}

/// One typed turn on an open device.
async fn ask(device: &mut SimDevice, text: &str) -> anyhow::Result<Reply> {
    device.detect(text).await?;
    device.collect_reply(REPLY_WAIT).await
}

/// The error turn and the turn after it, on the same device.
async fn error_then_serves_on(
    device: &mut SimDevice,
    fail: impl Fn(),
    back: impl Fn(),
    expect: &str,
) -> anyhow::Result<()> {
    fail();
    let reply = ask(device, "are you there").await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES, "the vendor's error event is answered with the error response");
    assert!(reply.audio_ms() > 300, "the error response is heard");
    back();
    let reply = ask(device, "and now").await?;
    assert_eq!(reply.sentences, [expect], "the same session serves on");
    assert!(reply.audio_ms() > 300);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dify_answers_keeps_its_conversation_and_survives_an_error_event() -> anyhow::Result<()> {
    let dify = DifyMock::start("app-test-key", "Hello from Dify.").await?;
    let entry = Entry::llm(format!(
        "type: dify\nbase_url: \"{}\"\napi_key: app-test-key\nmode: chat-messages",
        dify.base_url()
    ));
    let (_mock, server) = server_for(entry).await?;
    let mut device = server.device("aa:bb:cc:00:0d:01", 1).await?;
    let reply = ask(&mut device, "hello there").await?;
    assert_eq!(reply.sentences, ["Hello from Dify"]);
    assert!(reply.audio_ms() > 300, "the answer is heard");
    dify.reply("Still here.");
    assert_eq!(ask(&mut device, "are you still there").await?.sentences, ["Still here"]);
    // The second turn continued the conversation the first one started, with the same user.
    let conversations = dify.conversations();
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    assert_eq!(conversations.values().next().cloned().unwrap_or_default(), ["hello there", "are you still there"]);
    let requests = dify.requests();
    assert_eq!(requests[0]["conversation_id"], "");
    assert_eq!(requests[1]["user"], requests[0]["user"]);
    // Another device gets its own conversation.
    let mut other = server.device("aa:bb:cc:00:0d:02", 1).await?;
    assert_eq!(ask(&mut other, "hello there").await?.sentences, ["Still here"]);
    assert_eq!(dify.conversations().len(), 2);
    other.close_abruptly().await;

    error_then_serves_on(&mut device, || dify.fail_next(), || dify.reply("Back again."), "Back again").await?;
    assert_eq!(dify.events.count("error"), 1);
    assert_eq!(dify.conversations().len(), 2, "the session's conversation goes on after the error");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coze_answers_keeps_its_conversation_and_survives_a_failed_chat() -> anyhow::Result<()> {
    let coze = CozeMock::start("pat_test", "7379462189365198898", "Hello from Coze.").await?;
    let entry = Entry::llm(format!(
        "type: coze\nbot_id: 7379462189365198898\nuser_id: \"1001\"\npersonal_access_token: pat_test\nbase_url: \"{}\"",
        coze.base_url()
    ));
    let (_mock, server) = server_for(entry).await?;
    let mut device = server.device("aa:bb:cc:00:0d:11", 1).await?;
    let reply = ask(&mut device, "hello there").await?;
    assert_eq!(reply.sentences, ["Hello from Coze"]);
    assert!(reply.audio_ms() > 300, "the answer is heard");
    coze.reply("Still here.");
    assert_eq!(ask(&mut device, "are you still there").await?.sentences, ["Still here"]);
    let conversations = coze.conversations();
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    let (id, asked) = conversations.into_iter().next().unwrap_or_default();
    assert_eq!(asked, ["hello there", "are you still there"]);
    let requests = coze.requests();
    assert!(!requests[0].0.contains_key("conversation_id"));
    assert_eq!(requests[1].0.get("conversation_id"), Some(&id));
    assert_eq!(requests[1].1["user_id"], "1001");

    error_then_serves_on(&mut device, || coze.fail_next(), || coze.reply("Back again."), "Back again").await?;
    assert_eq!(coze.events.count("failed"), 1);
    assert_eq!(coze.conversations().len(), 1, "the session's conversation goes on after the error");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastgpt_answers_keeps_its_chat_id_and_survives_an_error_event() -> anyhow::Result<()> {
    let fastgpt = FastGptMock::start("fastgpt-test", "Hello from FastGPT.").await?;
    let entry = Entry::llm(format!(
        "type: fastgpt\nbase_url: \"{}\"\napi_key: fastgpt-test\nvariables:\n  k: \"v\"\n  k2: \"v2\"",
        fastgpt.base_url()
    ));
    let (_mock, server) = server_for(entry).await?;
    let mut device = server.device("aa:bb:cc:00:0d:21", 1).await?;
    let reply = ask(&mut device, "hello there").await?;
    assert_eq!(reply.sentences, ["Hello from FastGPT"]);
    assert!(reply.audio_ms() > 300, "the answer is heard");
    fastgpt.reply("Still here.");
    assert_eq!(ask(&mut device, "are you still there").await?.sentences, ["Still here"]);
    let chats = fastgpt.chats();
    assert_eq!(chats.len(), 1, "one chatId for the session: {chats:?}");
    assert_eq!(chats.values().next().cloned().unwrap_or_default(), ["hello there", "are you still there"]);
    assert_eq!(fastgpt.requests()[0]["variables"], serde_json::json!({"k": "v", "k2": "v2"}));

    error_then_serves_on(&mut device, || fastgpt.fail_next(), || fastgpt.reply("Back again."), "Back again").await?;
    assert_eq!(fastgpt.events.count("error"), 1);
    assert_eq!(fastgpt.chats().len(), 1, "the session's chat goes on after the error");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_answers_calls_get_time_and_survives_an_error_event() -> anyhow::Result<()> {
    let gemini = GeminiMock::start("AIza-test", "gemini-2.0-flash", "Hello from Gemini.").await?;
    let entry = Entry::llm(format!(
        "type: gemini\napi_key: AIza-test\nmodel_name: gemini-2.0-flash\nhttp_proxy: \"\"\nhttps_proxy: \"\"\nbase_url: \"{}\"",
        gemini.base_url()
    ));
    let (_mock, server) = server_for(entry).await?;
    let mut device = server.device("aa:bb:cc:00:0d:31", 1).await?;
    let reply = ask(&mut device, "hello there").await?;
    assert_eq!(reply.sentences, ["Hello from Gemini"]);
    assert!(reply.audio_ms() > 300, "the answer is heard");
    let first = &gemini.requests()[0];
    assert!(first["systemInstruction"]["parts"][0]["text"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(first["contents"], serde_json::json!([{"role": "user", "parts": [{"text": "hello there"}]}]));

    // A tool round trip: the model calls get_time, its result goes back as a functionResponse
    // next to the signed call, and the model's answer is heard.
    gemini.call_next("get_time");
    gemini.reply("It is a fine day.");
    let reply = ask(&mut device, "what time is it").await?;
    assert_eq!(reply.sentences, ["It is a fine day"]);
    assert_eq!(gemini.events.count("function_call"), 1);
    assert_eq!(gemini.events.count("function_response"), 1);
    let last = gemini.requests().last().cloned().unwrap_or_default();
    let contents = last["contents"].as_array().cloned().unwrap_or_default();
    let n = contents.len();
    assert!(n >= 5, "{contents:?}");
    assert_eq!(contents[n - 2]["role"], "model");
    assert_eq!(contents[n - 2]["parts"][0]["functionCall"]["name"], "get_time");
    assert_eq!(contents[n - 2]["parts"][0]["thoughtSignature"], SIGNATURE);
    let response = &contents[n - 1]["parts"][0]["functionResponse"];
    assert_eq!(response["name"], "get_time");
    let result = response["response"]["result"].as_str().unwrap_or_default();
    let year = {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        (1970 + secs / 31_556_952).to_string()
    };
    assert!(result.contains(&year), "get_time's result reached Gemini: {result}");

    error_then_serves_on(&mut device, || gemini.fail_next(), || gemini.reply("Back again."), "Back again").await?;
    assert_eq!(gemini.events.count("error"), 1);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}
