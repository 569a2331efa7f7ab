//! End-to-end: state in the store survives a server restart (embedded SQLite) and is shared by
//! two server processes (a real `redis-server` on a free port), and two devices' memories never
//! mix. The servers run as separate processes (`test-server`, the same library call as `serve`).

use std::time::{Duration, Instant};

use xiaozhi_e2e::harness::{ServerProcess, write_override};
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_server::store::embedded::EmbeddedStore;
use xiaozhi_server::store::testing::RedisServer;
use xiaozhi_server::store::{self, Store};

const SERVER: &str = env!("CARGO_BIN_EXE_test-server");
const REPLY_WAIT: Duration = Duration::from_secs(30);
/// The system prompt of mem_local_short's summary request.
const SUMMARY_PROMPT: &str = "记忆整理助手";

/// A mock whose summaries quote the dialogue and whose chat echoes the user.
async fn mock() -> anyhow::Result<MockOpenAi> {
    MockOpenAi::start(
        MockScript::default().rule(SUMMARY_PROMPT, r#"{"dialogue": {user_json}}"#).reply("🙂 Noted: {user}"),
    )
    .await
}

fn providers(mock: &MockOpenAi) -> String {
    mock.config_override_yaml().replace("Memory: nomem", "Memory: mem_local_short")
}

fn summaries(mock: &MockOpenAi) -> usize {
    mock.system_prompts(0).iter().filter(|s| s.contains(SUMMARY_PROMPT)).count()
}

/// Says `text` on a new connection of `device_id`, then hangs up; returns the chat request's
/// system prompt.
async fn one_turn(server: &ServerProcess, mock: &MockOpenAi, device_id: &str, text: &str) -> anyhow::Result<String> {
    let before = mock.requests().len();
    let mut device = server.device(device_id).await?;
    device.detect(text).await?;
    device.collect_reply(REPLY_WAIT).await?;
    device.close_abruptly().await;
    let system = mock.system_prompts(before).into_iter().find(|s| !s.contains(SUMMARY_PROMPT));
    system.ok_or_else(|| anyhow::anyhow!("no chat request"))
}

/// Waits until the mock has received `n` memory summaries.
async fn wait_for_summaries(mock: &MockOpenAi, n: usize) {
    let deadline = Instant::now() + REPLY_WAIT;
    while summaries(mock) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(summaries(mock), n, "memory summaries");
}

/// A direct connection to what the servers store in `redis` under `prefix`.
async fn redis_store(redis: &RedisServer, prefix: &str) -> anyhow::Result<store::redis::RedisStore> {
    let config = xiaozhi_server::config::StoreConfig {
        kind: xiaozhi_server::config::StoreKind::Redis,
        url: redis.url(),
        key_prefix: prefix.into(),
        ..Default::default()
    };
    Ok(store::redis::RedisStore::connect(&config).await?)
}

/// Polls `check` (a store read) until it holds, for up to 10 s.
async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_memory_and_history_across_a_restart() -> anyhow::Result<()> {
    let mock = mock().await?;
    let data = tempfile::tempdir()?;
    write_override(data.path(), &providers(&mock), "", "")?;
    let server = ServerProcess::spawn(SERVER, data.path()).await?;
    one_turn(&server, &mock, "aa:bb:cc:00:05:01", "my name is Ann").await?;
    one_turn(&server, &mock, "aa:bb:cc:00:05:02", "my name is Bob").await?;
    wait_for_summaries(&mock, 2).await;
    // A graceful stop waits for memory saves still running.
    server.stop().await?;

    let server = ServerProcess::spawn(SERVER, data.path()).await?;
    let system = one_turn(&server, &mock, "aa:bb:cc:00:05:01", "what is my name").await?;
    assert!(system.contains("<memory>") && system.contains("my name is Ann"), "memory survived: {system}");
    assert!(!system.contains("Bob"), "never another device's memory: {system}");
    let system = one_turn(&server, &mock, "aa:bb:cc:00:05:02", "what is my name").await?;
    assert!(system.contains("my name is Bob") && !system.contains("Ann"), "{system}");
    server.stop().await?;

    // The history of both connections is in the file, readable by another process too.
    let file = EmbeddedStore::open(&data.path().join("store.sqlite3")).await?;
    let history = store::history(&file, "aa:bb:cc:00:05:01").await?;
    let said: Vec<&str> = history.iter().map(|e| e.message.content.as_str()).collect();
    assert_eq!(said, ["my name is Ann", "🙂 Noted: my name is Ann", "what is my name", "🙂 Noted: what is my name"]);
    assert_ne!(history[0].session_id, history[2].session_id, "two connections");
    let export = store::export_device(&file, "aa:bb:cc:00:05:01").await?;
    assert!(export.kv["mem_local_short"]["memory"].contains("Ann"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_share_memory_history_and_the_device_registry_through_redis() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let mock = mock().await?;
    let store_yaml = |instance: &str| {
        format!(
            "store:\n  type: redis\n  url: \"{}\"\n  key_prefix: \"e2e:\"\n  instance_id: {instance}\n",
            redis.url()
        )
    };
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    write_override(dir_a.path(), &providers(&mock), "", &store_yaml("server-a"))?;
    write_override(dir_b.path(), &providers(&mock), "", &store_yaml("server-b"))?;
    let (server_a, server_b) =
        tokio::try_join!(ServerProcess::spawn(SERVER, dir_a.path()), ServerProcess::spawn(SERVER, dir_b.path()))?;

    // The device talks to one instance, then (behind a load balancer) reaches the other.
    one_turn(&server_a, &mock, "aa:bb:cc:00:05:03", "my name is Ann").await?;
    one_turn(&server_b, &mock, "aa:bb:cc:00:05:04", "my name is Bob").await?;
    wait_for_summaries(&mock, 2).await;
    let redis_store = redis_store(&redis, "e2e:").await?;
    let memory_key = store::kv_key("mem_local_short", "aa:bb:cc:00:05:03", "memory");
    assert!(eventually(async || redis_store.get(&memory_key).await.ok().flatten().is_some()).await, "memory saved");

    let system = one_turn(&server_b, &mock, "aa:bb:cc:00:05:03", "what is my name").await?;
    assert!(system.contains("my name is Ann") && !system.contains("Bob"), "server b knows Ann's memory: {system}");
    let system = one_turn(&server_a, &mock, "aa:bb:cc:00:05:04", "what is my name").await?;
    assert!(system.contains("my name is Bob") && !system.contains("Ann"), "server a knows Bob's memory: {system}");

    // The history holds both connections, written by both instances.
    assert!(
        eventually(async || store::history(&redis_store, "aa:bb:cc:00:05:03").await.is_ok_and(|h| h.len() == 4)).await,
        "{:?}",
        store::history(&redis_store, "aa:bb:cc:00:05:03").await
    );

    // The registry names the instance that holds a connected device, and forgets it after.
    let device = server_b.device("aa:bb:cc:00:05:05").await?;
    let holder = async || store::device_instance(&redis_store, "aa:bb:cc:00:05:05").await.ok().flatten();
    assert!(eventually(async || holder().await.as_deref() == Some("server-b")).await, "registered");
    device.close_abruptly().await;
    assert!(eventually(async || holder().await.is_none()).await, "unregistered");

    server_a.stop().await?;
    server_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_go_on_while_redis_is_down_and_their_writes_land_when_it_is_back() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    let mock = mock().await?;
    let data = tempfile::tempdir()?;
    let yaml =
        format!("store:\n  type: redis\n  url: \"{}\"\n  key_prefix: \"outage:\"\n  timeout_ms: 300\n", redis.url());
    write_override(data.path(), &providers(&mock), "", &yaml)?;
    let server = ServerProcess::spawn(SERVER, data.path()).await?;

    redis.stop();
    // The whole conversation happens during the outage: the device hears its answer.
    let system = one_turn(&server, &mock, "aa:bb:cc:00:05:06", "my name is Ann").await?;
    assert!(!system.contains("<memory>"), "nothing to recall while Redis is down: {system}");
    wait_for_summaries(&mock, 1).await;

    redis.restart()?;
    let check = redis_store(&redis, "outage:").await?;
    // The memory and the history written during the outage were queued, then flushed.
    let memory_key = store::kv_key("mem_local_short", "aa:bb:cc:00:05:06", "memory");
    assert!(
        eventually(async || check
            .get(&memory_key)
            .await
            .ok()
            .flatten()
            .is_some_and(|m| m.windows(3).any(|w| w == b"Ann")))
        .await,
        "the memory saved during the outage is in Redis"
    );
    assert!(
        eventually(async || store::history(&check, "aa:bb:cc:00:05:06").await.is_ok_and(|h| h.len() == 2)).await,
        "the history written during the outage is in Redis"
    );
    // And the next connection recalls it.
    let system = one_turn(&server, &mock, "aa:bb:cc:00:05:06", "what is my name").await?;
    assert!(system.contains("my name is Ann"), "{system}");
    server.stop().await?;
    Ok(())
}

/// A device that hangs up in the middle of a reply: the cancelled turn's messages (the question
/// and what was said of the answer) still reach the stored history, as they join the dialogue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_hanging_up_mid_reply_keeps_the_turn_in_its_history() -> anyhow::Result<()> {
    let mock =
        MockOpenAi::start(MockScript::default().reply(
            "🙂 This answer is long. It goes on for a while. Sentence after sentence. Until the device hangs up.",
        ))
        .await?;
    let server = xiaozhi_e2e::harness::TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:05:40", 1).await?;
    device.detect("tell me something long").await?;
    // The first audio frame of the reply, then the device is gone.
    loop {
        match device.next_event(REPLY_WAIT).await {
            Some((_, xiaozhi_server::simulator::SimEvent::Audio { .. })) => break,
            Some(_) => continue,
            None => anyhow::bail!("no reply audio"),
        }
    }
    device.close_abruptly().await;
    let file = server.store().await?;
    let kept = eventually(async || {
        store::history(&file, "aa:bb:cc:00:05:40")
            .await
            .is_ok_and(|h| h.first().is_some_and(|e| e.message.content == "tell me something long"))
    })
    .await;
    let history = store::history(&file, "aa:bb:cc:00:05:40").await?;
    assert!(kept, "the question of the cancelled turn is in the history: {history:?}");
    assert!(history.len() >= 2 && history[1].message.content.contains("This answer is long"), "{history:?}");
    server.server.shutdown().await;
    Ok(())
}
