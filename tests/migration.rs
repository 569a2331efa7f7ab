//! Migrating from the Python server as is: its own `config.yaml` (v0.9.6) as the base file starts
//! with any supported entry selected; a typical user override over our `config.yaml` (entries that
//! only set `api_key`, `plugins:`, `Intent.*.functions`) starts with no error, its plugin settings
//! reach the extension, and `functions` is the list of tools offered; `test-provider` checks one
//! entry.

use std::collections::BTreeSet;

use serde_json::Value;
use serde_yaml_ng::Value as Yaml;
use xiaozhi_e2e::harness::{TestServer, repo_root};
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::providers::{REPLY_WAIT, providers_yaml};
use xiaozhi_server::config::migrate::{Support, lookup};
use xiaozhi_server::config::{ConfigSource, load};
use xiaozhi_server::tester::TestProviderArgs;

/// The Python server's own file.
fn python_config() -> std::path::PathBuf {
    repo_root().join("tests/assets/python-v0.9.6-config.yaml")
}

/// The entries of `section` in the Python file whose type runs here without local model files.
fn remote_entries(document: &Yaml, section: &str) -> Vec<String> {
    let entries = document.get(section).and_then(Yaml::as_mapping).cloned().unwrap_or_default();
    entries
        .iter()
        .filter_map(|(name, entry)| {
            let name = name.as_str()?;
            let kind = entry.get("type")?.as_str()?;
            let runs = matches!(lookup(section, kind).map(|t| t.support), Some(Support::Native));
            // Local models need their files; the alias is covered by the SenseVoice tests.
            let local =
                matches!(kind, "fun_local" | "sherpa_onnx_local" | "whisper_onnx" | "sensevoice_onnx" | "piper");
            (runs && !local).then(|| name.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_config_starts_with_every_supported_entry_selected() -> anyhow::Result<()> {
    let base = python_config();
    let document: Yaml = serde_yaml_ng::from_str(&std::fs::read_to_string(&base)?)?;
    let lists: Vec<(&str, Vec<String>)> =
        ["ASR", "LLM", "TTS"].into_iter().map(|section| (section, remote_entries(&document, section))).collect();
    for (section, names) in &lists {
        assert!(names.len() >= 8, "{section}: {names:?}");
    }
    let rounds = lists.iter().map(|(_, names)| names.len()).max().unwrap_or(0);
    for round in 0..rounds {
        let pick = |i: usize| &lists[i].1[round % lists[i].1.len()];
        let (asr, llm, tts) = (pick(0), pick(1), pick(2));
        let selection = format!("selected_module:\n  ASR: {asr}\n  LLM: {llm}\n  TTS: {tts}\n");
        // Every key of the Python entries is known here: no warning names the selected entries.
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(".config.yaml"), &selection)?;
        let loaded = load(&ConfigSource::new(&base, dir.path()))?;
        let about_selected: Vec<&String> = loaded
            .warnings
            .iter()
            .filter(|w| [asr, llm, tts].iter().any(|name| w.contains(&format!(".{name}."))))
            .collect();
        assert!(about_selected.is_empty(), "{selection}: {about_selected:?}");
        // And the server starts on it: a device connects and gets its hello.
        let server = TestServer::start_with_base(&base, &selection).await?;
        let device = server.device("aa:bb:cc:00:0e:01", 1).await?;
        assert_eq!(device.server_hello()["type"], "hello");
        device.close_abruptly().await;
        server.server.shutdown().await;
        println!("started with ASR {asr}, LLM {llm}, TTS {tts}");
    }
    Ok(())
}

/// A migrating user's `data/.config.yaml`: only the keys they had to set.
const USER_OVERRIDE: &str = "\
selected_module:
  ASR: DoubaoStreamASR
  LLM: ChatGLMLLM
  TTS: EdgeTTS
  Intent: function_call
ASR:
  DoubaoStreamASR:
    appid: \"1234567890\"
    access_token: user-access-token
LLM:
  ChatGLMLLM:
    api_key: user-glm-key
TTS:
  EdgeTTS:
    voice: zh-CN-YunxiNeural
plugins:
  get_weather:
    api_host: abc123xyz.re.qweatherapi.com
    api_key: user-weather-key
    default_location: 杭州
Intent:
  function_call:
    functions:
      - get_weather
      - get_news_from_newsnow
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typical_user_override_starts_and_its_weather_key_reaches_get_weather() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(".config.yaml"), USER_OVERRIDE)?;
    let loaded = load(&ConfigSource::new(repo_root().join("config.yaml"), dir.path()))?;
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = &loaded.config;
    assert_eq!(config.providers.asr.describe().0, "doubao_stream");
    assert_eq!(config.providers.llm.describe().0, "openai");
    assert_eq!(config.providers.tts.describe().0, "edge");
    assert_eq!(
        config.providers.functions.as_deref(),
        Some(&["get_weather".to_owned(), "get_news_from_newsnow".to_owned()][..])
    );
    let grant = config.extension_grants().remove("get_weather").expect("a grant from plugins.get_weather");
    assert_eq!(grant.config.get("api_key").map(String::as_str), Some("user-weather-key"));
    assert_eq!(grant.config.get("default_location").map(String::as_str), Some("杭州"));
    assert!(grant.http_hosts.contains(&"abc123xyz.re.qweatherapi.com".to_owned()), "{:?}", grant.http_hosts);

    // The server starts on it, and get_weather loads with that grant (without plugins it is
    // refused for want of one).
    let server = TestServer::start_with_providers(USER_OVERRIDE).await?;
    let status: Value =
        reqwest::get(format!("http://{}/xiaozhi/extensions", server.server.http_addr)).await?.json().await?;
    let list = status["extensions"].as_array().cloned().unwrap_or_default();
    let weather = list.iter().find(|e| e["id"] == "get_weather").expect("get_weather listed");
    assert_eq!(weather["serving"], "0.2.0", "{status}");
    let device = server.device("aa:bb:cc:00:0e:02", 1).await?;
    assert_eq!(device.server_hello()["type"], "hello");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

/// The tool names offered in the mock's chat requests.
fn offered_tools(mock: &MockOpenAi) -> BTreeSet<String> {
    mock.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .flat_map(|r| r.body["tools"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intent_functions_are_the_tools_offered_with_the_devices_own() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().reply("😊 Sure.")).await?;
    let functions = "Intent:\n  function_call:\n    functions: [change_role]\n";
    let server = TestServer::start_with_providers(&(providers_yaml(&mock, &[]) + functions)).await?;
    let mut device = server.device("aa:bb:cc:00:0e:03", 1).await?;
    device.detect("hello there").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let offered = offered_tools(&mock);
    assert!(offered.contains("change_role"), "{offered:?}");
    // Always offered, as in the Python server, and our get_time.
    for always in ["handle_exit_intent", "get_lunar", "get_time"] {
        assert!(offered.contains(always), "{always} not in {offered:?}");
    }
    // The device's own MCP tools too.
    assert!(offered.iter().any(|t| t.starts_with("self_")), "{offered:?}");
    // Not listed: not offered.
    assert!(!offered.contains("get_weather"), "{offered:?}");
    device.close_abruptly().await;
    server.server.shutdown().await;

    // Without `functions`, every tool serving is offered.
    let mock = MockOpenAi::start(MockScript::default().reply("😊 Sure.")).await?;
    let server = TestServer::start_with_providers(&providers_yaml(&mock, &[])).await?;
    let mut device = server.device("aa:bb:cc:00:0e:04", 1).await?;
    device.detect("hello there").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let offered = offered_tools(&mock);
    assert!(offered.contains("change_role") && offered.contains("get_time"), "{offered:?}");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_provider_checks_one_entry_and_fails_on_a_provider_error() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default().transcript("Testing one two three.")).await?;
    let dir = tempfile::tempdir()?;
    xiaozhi_e2e::harness::write_override(dir.path(), &providers_yaml(&mock, &[]), "", "")?;
    let source = ConfigSource::new(repo_root().join("config.yaml"), dir.path());
    let args = |entry: &str| TestProviderArgs {
        entry: entry.to_owned(),
        text: Some("Hello, this is a provider test.".into()),
        wav: None,
        timeout: 30,
    };
    for entry in ["LLM.MockLLM", "TTS.MockTTS", "ASR.MockASR"] {
        xiaozhi_server::tester::run(&source, args(entry)).await?;
    }
    assert!(mock.requests().iter().any(|r| r.path.ends_with("/audio/transcriptions")));
    mock.set_script(MockScript::default().llm_fail(true));
    let failed = xiaozhi_server::tester::run(&source, args("LLM.MockLLM")).await;
    assert!(failed.is_err(), "a provider error fails the test");
    let unknown = xiaozhi_server::tester::run(&source, args("LLM.NoSuchEntry")).await;
    assert!(unknown.err().is_some_and(|e| e.to_string().contains("NoSuchEntry")));
    Ok(())
}
