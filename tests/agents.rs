//! Agents (per-device settings over the configuration): a device assigned to an agent starts its
//! sessions with the agent's prompt and voice (seen at the mock LLM and TTS), other devices keep
//! the configuration's; a changed agent applies from the next session; an agent naming an entry
//! that does not exist is refused. Two server processes on one real `redis-server`: an agent
//! changed through one instance's `agent` command, then through its console, applies to a device
//! connected to the other.

use std::time::Duration;

use xiaozhi_e2e::harness::{ServerProcess, TestServer, repo_root, write_override};
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_server::agents::cli::{AgentCommand, SetArgs};
use xiaozhi_server::agents::{self, Agent};
use xiaozhi_server::config::{self, ConfigSource};
use xiaozhi_server::store::testing::RedisServer;

const SERVER: &str = env!("CARGO_BIN_EXE_test-server");
const REPLY_WAIT: Duration = Duration::from_secs(30);
const DEVICE_A: &str = "aa:bb:cc:00:0a:01";
const DEVICE_B: &str = "aa:bb:cc:00:0a:02";

/// The configuration a server on `data_dir` runs with.
fn source(data_dir: &std::path::Path) -> ConfigSource {
    ConfigSource::new(repo_root().join("config.yaml"), data_dir)
}

/// The system prompt and the TTS voice of one typed turn of `device`.
async fn turn(
    mock: &MockOpenAi,
    device: &mut xiaozhi_server::simulator::SimDevice,
) -> anyhow::Result<(String, String)> {
    let before = mock.requests().len();
    device.detect("who are you").await?;
    device.collect_reply(REPLY_WAIT).await?;
    let requests = mock.requests().split_off(before);
    let system = mock.system_prompts(before).into_iter().next().unwrap_or_default();
    let voice = requests
        .iter()
        .find(|r| r.path.ends_with("/audio/speech"))
        .and_then(|r| r.body["voice"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok((system, voice))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_speaks_with_its_agents_prompt_and_voice() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "").await?;
    let store = server.store().await?;
    let config = config::load(&source(server.dir.path()))?.config;

    let captain = Agent {
        id: "captain".into(),
        name: Some("Captain".into()),
        prompt: Some("You are Captain Agent, a friendly pirate.".into()),
        voice: Some("shimmer".into()),
        ..Agent::default()
    };
    agents::put(&store, &config, captain.clone()).await?;
    agents::assign(&store, DEVICE_A, Some("captain")).await?;

    let mut a = server.device(DEVICE_A, 1).await?;
    let (system, voice) = turn(&mock, &mut a).await?;
    assert!(system.contains("Captain Agent"), "device A's prompt: {system}");
    assert_eq!(voice, "shimmer");
    let mut b = server.device(DEVICE_B, 1).await?;
    let (system, voice) = turn(&mock, &mut b).await?;
    assert!(!system.contains("Captain Agent"), "device B got the agent's prompt: {system}");
    assert_eq!(voice, "en", "device B keeps the configured voice");

    // A change applies from the device's next session; the running one keeps what it started with.
    let changed = Agent { prompt: Some("You are Admiral Agent.".into()), ..captain };
    agents::put(&store, &config, changed).await?;
    let (system, _) = turn(&mock, &mut a).await?;
    assert!(system.contains("Captain Agent"), "a running session changed its prompt: {system}");
    drop(a);
    let mut a = server.device(DEVICE_A, 1).await?;
    let (system, voice) = turn(&mock, &mut a).await?;
    assert!(system.contains("Admiral Agent"), "the next session: {system}");
    assert_eq!(voice, "shimmer");

    // An agent that names an entry the configuration lacks is refused, and changes nothing.
    let broken = Agent { id: "captain".into(), llm: Some("NoSuchLLM".into()), ..Agent::default() };
    let refused = agents::put(&store, &config, broken).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("NoSuchLLM")));
    assert_eq!(agents::get(&store, "captain").await?.and_then(|a| a.prompt).as_deref(), Some("You are Admiral Agent."));

    // Unassigned, the device is back on the configuration's settings.
    agents::assign(&store, DEVICE_A, None).await?;
    drop(a);
    let mut a = server.device(DEVICE_A, 1).await?;
    let (system, voice) = turn(&mock, &mut a).await?;
    assert!(!system.contains("Admiral Agent"), "{system}");
    assert_eq!(voice, "en");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_changed_on_one_instance_applies_on_the_other_through_redis() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let store_yaml = |instance: &str| {
        format!(
            "store:\n  type: redis\n  url: \"{}\"\n  key_prefix: \"agents:\"\n  instance_id: {instance}\n",
            redis.url()
        )
    };
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let console = "console:\n  password: redis-console\n";
    write_override(dir_a.path(), &mock.config_override_yaml(), "", &format!("{}{console}", store_yaml("server-a")))?;
    write_override(dir_b.path(), &mock.config_override_yaml(), "", &store_yaml("server-b"))?;
    let (server_a, server_b) =
        tokio::try_join!(ServerProcess::spawn(SERVER, dir_a.path()), ServerProcess::spawn(SERVER, dir_b.path()))?;

    // Through instance A's configuration (its store is the shared Redis), as `xiaozhi-server agent` does.
    let on_a = source(dir_a.path());
    let args = SetArgs {
        id: "nurse".into(),
        prompt: Some("You are Nurse Agent.".into()),
        voice: Some("alloy".into()),
        ..SetArgs::default()
    };
    agents::cli::run(AgentCommand::Set(args), &on_a, dir_a.path()).await?;
    let assign = AgentCommand::Assign { device_id: DEVICE_A.into(), agent: "nurse".into() };
    agents::cli::run(assign, &on_a, dir_a.path()).await?;

    // The device connects to instance B.
    let mut device = server_b.device(DEVICE_A).await?;
    let (system, voice) = turn(&mock, &mut device).await?;
    assert!(system.contains("Nurse Agent"), "instance B: {system}");
    assert_eq!(voice, "alloy");
    drop(device);

    // Edited on A (only the prompt: the voice stays), the next session on B has it.
    let args = SetArgs { id: "nurse".into(), prompt: Some("You are Doctor Agent.".into()), ..SetArgs::default() };
    agents::cli::run(AgentCommand::Set(args), &on_a, dir_a.path()).await?;
    let mut device = server_b.device(DEVICE_A).await?;
    let (system, voice) = turn(&mock, &mut device).await?;
    assert!(system.contains("Doctor Agent"), "instance B after the edit: {system}");
    assert_eq!(voice, "alloy");
    drop(device);

    // Edited in instance A's console (the JSON API its pages use), the next session on B has it.
    let http = reqwest::Client::new();
    let base = format!("http://{}/console", server_a.http_addr);
    let login = http.post(format!("{base}/api/login")).json(&serde_json::json!({"password": "redis-console"}));
    let signed_in = login.send().await?;
    let cookie = signed_in.headers()["set-cookie"].to_str()?.split(';').next().unwrap_or_default().to_owned();
    let csrf = signed_in.json::<serde_json::Value>().await?["csrf"].as_str().unwrap_or_default().to_owned();
    let edited = http
        .put(format!("{base}/api/agents/nurse"))
        .header("Cookie", cookie)
        .header("X-CSRF-Token", csrf)
        .json(&serde_json::json!({"prompt": "You are Surgeon Agent.", "voice": "nova"}))
        .send()
        .await?;
    assert_eq!(edited.status(), reqwest::StatusCode::OK);
    let mut device = server_b.device(DEVICE_A).await?;
    let (system, voice) = turn(&mock, &mut device).await?;
    assert!(system.contains("Surgeon Agent"), "instance B after the console edit: {system}");
    assert_eq!(voice, "nova");
    Ok(())
}
