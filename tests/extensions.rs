//! End-to-end: the built-in WebAssembly extensions (built by `extensions/build.sh`) serve the
//! LLM's tool calls during a conversation.

use std::time::Duration;

use serde_json::{Value, json};
use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_server::simulator::SimEvent;

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
    assert_eq!(get_time["serving"], "0.1.0", "{status}");
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
    let mut closed = false;
    while let Some((_, event)) = device.next_event(Duration::from_secs(5)).await {
        if matches!(event, SimEvent::Closed(_)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the session closes after the goodbye");
    server.server.shutdown().await;
    Ok(())
}

/// This year, as the guest writes it (UTC is close enough: the test runs far from New Year).
fn chrono_year() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    (1970 + secs / 31_556_952).to_string()
}
