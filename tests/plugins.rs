//! End-to-end: the built-in extensions that call web APIs, configured as a Python server user
//! configures the plugins (`plugins.<id>` in the override file), against mocks of the vendors'
//! APIs (`tests/src/vendors/`): Home Assistant (`hass_get_state`, `hass_set_state`,
//! `hass_play_music`), web search (Tavily and Metaso), RAGFlow (`search_from_ragflow`) and the
//! news tools (China News RSS, newsnow).

use std::time::Duration;

use serde_json::{Value, json};
use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::vendors::home_assistant::HomeAssistantMock;
use xiaozhi_e2e::vendors::news::{NewsMock, TITLES};
use xiaozhi_e2e::vendors::ragflow::RagflowMock;
use xiaozhi_e2e::vendors::web_search::SearchMock;

const REPLY_WAIT: Duration = Duration::from_secs(30);

/// The bodies of the chat requests the mock received, in order.
fn chat_requests(mock: &MockOpenAi) -> Vec<Value> {
    mock.requests().into_iter().filter(|r| r.path.ends_with("/chat/completions")).map(|r| r.body).collect()
}

/// The tool message of the last chat request.
fn last_tool_message(mock: &MockOpenAi) -> String {
    let chats = chat_requests(mock);
    let message =
        chats.last().and_then(|c| c["messages"].as_array()?.iter().rev().find(|m| m["role"] == "tool").cloned());
    message.map(|m| m["content"].as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

/// The description of the tool `name` offered in the first chat request.
fn offered_description(mock: &MockOpenAi, name: &str) -> String {
    let chats = chat_requests(mock);
    let tools = chats.first().and_then(|c| c["tools"].as_array().cloned()).unwrap_or_default();
    let tool = tools.iter().find(|t| t["function"]["name"] == name).cloned().unwrap_or_default();
    tool["function"]["description"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_tools_read_and_set_states_and_play_music() -> anyhow::Result<()> {
    let ha = HomeAssistantMock::start(
        "ha-token",
        &[
            ("light.kitchen", json!({"entity_id": "light.kitchen", "state": "on", "attributes": {"brightness": 128, "friendly_name": "Kitchen"}})),
            ("media_player.living", json!({"entity_id": "media_player.living", "state": "idle", "attributes": {"volume_level": 0.5}})),
        ],
    )
    .await?;
    let plugins = format!(
        "plugins:\n  home_assistant:\n    base_url: \"{}\"\n    api_key: ha-token\n    devices:\n      - 厨房,灯,light.kitchen\n      - 客厅,音箱,media_player.living\n",
        ha.base_url()
    );
    let mock = MockOpenAi::start(MockScript::default().tool(
        "kitchen",
        "hass_get_state",
        json!({"entity_id": "light.kitchen"}),
        "😊 The kitchen light is on.",
    ))
    .await?;
    let server = TestServer::start(&mock, &plugins).await?;
    let mut device = server.device("aa:bb:cc:00:05:01", 1).await?;

    // Get: the state goes to the LLM, worded as the Python plugin words it.
    device.detect("is the kitchen light on").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["The kitchen light is on".to_string()]);
    assert_eq!(last_tool_message(&mock), "设备状态:on 亮度是:128");
    let description = offered_description(&mock, "hass_get_state");
    assert!(description.contains("厨房,灯,light.kitchen"), "the devices are in the description: {description}");

    // Set: the service is called and Home Assistant's state changes.
    mock.set_script(MockScript::default().tool(
        "off",
        "hass_set_state",
        json!({"entity_id": "light.kitchen", "state": {"type": "turn_off"}}),
        "😊 Done.",
    ));
    device.detect("turn the kitchen light off").await?;
    device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(last_tool_message(&mock), "设备已关闭");
    assert_eq!(ha.state("light.kitchen")["state"], "off");
    mock.set_script(MockScript::default().tool(
        "dim",
        "hass_set_state",
        json!({"entity_id": "light.kitchen", "state": {"type": "brightness_value", "input": 40}}),
        "😊 Done.",
    ));
    device.detect("dim the light").await?;
    device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(last_tool_message(&mock), "亮度已调整到40");
    assert_eq!(ha.state("light.kitchen")["attributes"]["brightness"], 102);

    // Play: Music Assistant's play_media, and the confirmation is spoken as it is.
    mock.set_script(MockScript::default().tool(
        "jazz",
        "hass_play_music",
        json!({"entity_id": "media_player.living", "media_content_id": "jazz"}),
        "unused",
    ));
    let chats_before = chat_requests(&mock).len();
    device.detect("play jazz in the living room").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["正在播放jazz的音乐".to_string()]);
    assert_eq!(chat_requests(&mock).len(), chats_before + 1, "a spoken result asks the LLM nothing more");
    assert_eq!(ha.state("media_player.living")["attributes"]["media_title"], "jazz");
    let calls: Vec<String> = ha.calls().into_iter().map(|(service, _)| service).collect();
    assert_eq!(calls, vec!["light/turn_off", "light/turn_on", "music_assistant/play_media"]);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_search_asks_tavily_or_metaso_and_the_llm_answers_from_the_results() -> anyhow::Result<()> {
    for provider in ["tavily", "metaso"] {
        let search =
            if provider == "tavily" { SearchMock::tavily("key-1").await? } else { SearchMock::metaso("key-1").await? };
        let mock = MockOpenAi::start(MockScript::default().tool(
            "search",
            "web_search",
            json!({"query": "xiaozhi esp32"}),
            "😊 It is an ESP32 voice assistant.",
        ))
        .await?;
        let plugins = format!(
            "plugins:\n  web_search:\n    provider: {provider}\n    api_key: key-1\n    max_results: 1\n    api_url: \"{}\"\n",
            search.base_url()
        );
        let server = TestServer::start(&mock, &plugins).await?;
        let mut device = server.device("aa:bb:cc:00:05:02", 1).await?;
        device.detect("search the web for xiaozhi").await?;
        let reply = device.collect_reply(REPLY_WAIT).await?;
        assert_eq!(reply.sentences, vec!["It is an ESP32 voice assistant".to_string()], "{provider}");
        let text = last_tool_message(&mock);
        assert!(
            text.contains(
                "1. xiaozhi esp32 — overview — Everything about xiaozhi esp32, in short. (https://example.org/a)"
            ),
            "{provider}: {text}"
        );
        assert!(!text.contains("A second page"), "{provider}: max_results is kept: {text}");
        if provider == "tavily" {
            assert!(text.contains("Short answer: The answer about xiaozhi esp32."), "{text}");
            assert_eq!(search.requests()[0]["query"], "xiaozhi esp32");
        } else {
            assert_eq!(search.requests()[0]["q"], "xiaozhi esp32");
            assert_eq!(search.requests()[0]["scope"], "webpage");
        }
        server.server.shutdown().await;
    }
    // A wrong key: the failure goes to the LLM as the tool's result, and the turn is answered.
    let search = SearchMock::tavily("right-key").await?;
    let mock = MockOpenAi::start(MockScript::default().tool(
        "search",
        "web_search",
        json!({"query": "q"}),
        "😊 I could not search.",
    ))
    .await?;
    let plugins = format!("plugins:\n  web_search:\n    api_key: wrong-key\n    api_url: \"{}\"\n", search.base_url());
    let server = TestServer::start(&mock, &plugins).await?;
    let mut device = server.device("aa:bb:cc:00:05:03", 1).await?;
    device.detect("search for something").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["I could not search".to_string()]);
    assert!(last_tool_message(&mock).contains("HTTP 401"), "{}", last_tool_message(&mock));
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_from_ragflow_gives_the_llm_the_knowledge_base_chunks() -> anyhow::Result<()> {
    let rag = RagflowMock::start(
        "ragflow-key",
        "ds-1",
        &["Returns are accepted within 30 days of delivery.", "Shipping takes two working days."],
    )
    .await?;
    let plugins = format!(
        "plugins:\n  search_from_ragflow:\n    description: \"当用户问退货或配送时调用\"\n    base_url: \"{}\"\n    api_key: ragflow-key\n    dataset_ids: [\"ds-1\"]\n",
        rag.base_url()
    );
    let mock = MockOpenAi::start(MockScript::default().tool(
        "returns",
        "search_from_ragflow",
        json!({"question": "what is the returns policy"}),
        "😊 You can return it within 30 days.",
    ))
    .await?;
    let server = TestServer::start(&mock, &plugins).await?;
    let mut device = server.device("aa:bb:cc:00:05:04", 1).await?;
    device.detect("what about returns").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, vec!["You can return it within 30 days".to_string()]);
    assert_eq!(
        last_tool_message(&mock),
        "# 关于问题【what is the returns policy】查到知识库如下\nReturns are accepted within 30 days of delivery."
    );
    assert_eq!(offered_description(&mock, "search_from_ragflow"), "当用户问退货或配送时调用");
    assert_eq!(rag.requests()[0]["dataset_ids"], json!(["ds-1"]));
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn news_tools_read_a_feed_and_newsnow_and_summarise_long_articles_with_the_llm() -> anyhow::Result<()> {
    // 40 paragraphs: longer than the extension keeps unsummarised, so the server's LLM is asked.
    let news = NewsMock::start(40).await?;
    let plugins = format!(
        "plugins:\n  get_news_from_chinanews:\n    society_rss_url: \"{}\"\n  get_news_from_newsnow:\n    url: \"{}\"\n",
        news.feed_url(),
        news.newsnow_url()
    );
    let mock =
        MockOpenAi::start(MockScript::default().rule("用不超过五句话概括", "公园新增了儿童乐园，市民反响热烈。").tool(
            "news",
            "get_news_from_chinanews",
            json!({"category": "社会", "lang": "zh_CN"}),
            "😊 有一条社会新闻。",
        ))
        .await?;
    let server = TestServer::start(&mock, &plugins).await?;
    let mut device = server.device("aa:bb:cc:00:05:05", 1).await?;

    // A random item of the feed goes to the LLM, in the Python plugin's words.
    device.detect("any news today").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let told = last_tool_message(&mock);
    assert!(told.starts_with("根据下列数据，用zh_CN回应用户的新闻查询请求"), "{told}");
    let title = TITLES.iter().find(|t| told.contains(&format!("新闻标题: {t}"))).copied();
    let title = title.unwrap_or_else(|| panic!("an item of the feed: {told}"));

    // "Tell me more": the same item's article, summarised by the server's LLM.
    mock.set_script(MockScript::default().rule("用不超过五句话概括", "公园新增了儿童乐园，市民反响热烈。").tool(
        "more",
        "get_news_from_chinanews",
        json!({"detail": true, "lang": "zh_CN"}),
        "😊 详细情况是这样的。",
    ));
    device.detect("tell me more").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let detail = last_tool_message(&mock);
    assert!(detail.contains(&format!("新闻标题: {title}")), "the item told before: {detail}");
    assert!(detail.contains("详细内容: 公园新增了儿童乐园，市民反响热烈。"), "summarised: {detail}");

    // newsnow: the source's headline.
    mock.set_script(MockScript::default().tool(
        "hot",
        "get_news_from_newsnow",
        json!({"source": "百度热搜", "lang": "zh_CN"}),
        "😊 这是百度热搜。",
    ));
    device.detect("what is hot on baidu").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let told = last_tool_message(&mock);
    assert!(TITLES.iter().any(|t| told.contains(&format!("新闻标题: {t}"))), "{told}");
    let description = offered_description(&mock, "get_news_from_newsnow");
    assert!(description.contains("澎湃新闻、百度热搜、财联社"), "{description}");
    server.server.shutdown().await;
    Ok(())
}
