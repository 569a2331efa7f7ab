//! The same suite against every backend (Redis: a real `redis-server` on a free port), and the
//! Redis outage behaviour with the real process killed and restarted.

use std::time::Duration;

use super::testing::RedisServer;
use super::*;
use crate::config::StoreConfig;
use crate::llm::{ChatMessage, Role};

fn redis_config(url: &str) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::Redis,
        url: url.to_owned(),
        key_prefix: format!("test{}:", uuid::Uuid::new_v4().simple()),
        timeout_ms: 300,
        ..StoreConfig::default()
    }
}

/// What every backend must do.
async fn suite(store: &dyn Store) {
    // Values: set, replace, binary, delete, missing.
    assert_eq!(store.get("a/missing").await.expect("get"), None);
    store.set("a/one", b"1", None).await.expect("set");
    store.set("a/one", b"one", None).await.expect("replace");
    store.set("a/bin", &[0, 159, 146, 150, 255], None).await.expect("binary");
    store.set("a/中文 key", "值".as_bytes(), None).await.expect("unicode");
    store.set("b/other", b"x", None).await.expect("set");
    assert_eq!(store.get("a/one").await.expect("get"), Some(b"one".to_vec()));
    assert_eq!(store.get("a/bin").await.expect("get"), Some(vec![0, 159, 146, 150, 255]));
    assert_eq!(store.get("a/中文 key").await.expect("get"), Some("值".as_bytes().to_vec()));

    // Expiry.
    store.set("a/short", b"soon gone", Some(Duration::from_millis(150))).await.expect("set ttl");
    store.set("a/long", b"stays", Some(Duration::from_secs(60))).await.expect("set ttl");
    assert_eq!(store.get("a/short").await.expect("get"), Some(b"soon gone".to_vec()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.get("a/short").await.expect("get"), None, "expired");
    assert_eq!(store.get("a/long").await.expect("get"), Some(b"stays".to_vec()));

    // Lists: append, bounded, oldest first.
    for i in 0..5 {
        store.push("a/list", &[format!("m{i}").into_bytes()], 3).await.expect("push");
    }
    store.push("a/list", &[b"m5".to_vec(), b"m6".to_vec()], 3).await.expect("push two");
    let items: Vec<String> =
        store.range("a/list").await.expect("range").into_iter().map(|v| String::from_utf8(v).expect("utf8")).collect();
    assert_eq!(items, ["m4", "m5", "m6"]);
    assert!(store.range("a/nolist").await.expect("range").is_empty());

    // Keys by prefix: values and lists, no expired ones, nothing outside the prefix.
    let keys = store.keys("a/").await.expect("keys");
    assert_eq!(keys, ["a/bin", "a/list", "a/long", "a/one", "a/中文 key"]);
    assert_eq!(store.keys("a/o").await.expect("keys"), ["a/one"]);
    assert!(store.keys("zzz").await.expect("keys").is_empty());
    // Glob characters in a prefix are literal.
    store.set("g/[x]*?", b"1", None).await.expect("set");
    store.set("g/[x]y", b"2", None).await.expect("set");
    assert_eq!(store.keys("g/[x]*").await.expect("keys"), ["g/[x]*?"]);

    // Delete removes values and lists; deleting nothing is fine.
    store.delete("a/one").await.expect("delete");
    store.delete("a/list").await.expect("delete list");
    store.delete("a/never").await.expect("delete missing");
    assert_eq!(store.get("a/one").await.expect("get"), None);
    assert!(store.range("a/list").await.expect("range").is_empty());

    // Typed helpers: history, device registry, export and import, devices apart.
    let turn = [
        ChatMessage::new(Role::System, "not stored"),
        ChatMessage::new(Role::User, "my name is Ann"),
        ChatMessage::new(Role::Assistant, "Hello Ann"),
    ];
    append_history(store, "aa:aa", "s1", &turn, 10).await.expect("history");
    append_history(store, "bb/bb", "s2", &[ChatMessage::new(Role::User, "I am Bob")], 10).await.expect("history");
    let a = history(store, "aa:aa").await.expect("history a");
    assert_eq!(a.len(), 2);
    assert_eq!((a[0].message.content.as_str(), a[0].session_id.as_str()), ("my name is Ann", "s1"));
    assert_eq!(history(store, "bb/bb").await.expect("history b").len(), 1);
    store.set(&kv_key("mem", "aa:aa", "memory"), b"{\"name\":\"Ann\"}", None).await.expect("kv");
    store.set(&kv_key("mem", "bb/bb", "memory"), b"{\"name\":\"Bob\"}", None).await.expect("kv");
    store.set(&kv_key("other", "aa:aa", "blob"), &[0xff, 0], None).await.expect("kv");
    register_device(store, "aa:aa", "instance-1", Duration::from_secs(30)).await.expect("register");
    assert_eq!(device_instance(store, "aa:aa").await.expect("instance"), Some("instance-1".into()));
    assert_eq!(device_instance(store, "bb/bb").await.expect("instance"), None);
    // What an OTA check reported is kept when a session later notes only the time.
    note_device_seen(store, "aa:aa", Some("bread-compact-wifi"), Some("2.4.2"), 100).await.expect("seen");
    note_device_seen(store, "aa:aa", None, None, 200).await.expect("seen again");
    let seen = DeviceSeen { last_seen: 200, board: Some("bread-compact-wifi".into()), firmware: Some("2.4.2".into()) };
    assert_eq!(device_seen(store, "aa:aa").await.expect("seen"), Some(seen));
    assert!(known_devices(store).await.expect("devices").contains("aa:aa"));
    refresh_device_seen(store, "bb/bb", 300).await.expect("no record to refresh");
    assert_eq!(device_seen(store, "bb/bb").await.expect("not seen"), None, "a session alone makes no record");
    refresh_device_seen(store, "aa:aa", 300).await.expect("refresh");
    assert_eq!(device_seen(store, "aa:aa").await.expect("seen").map(|s| s.last_seen), Some(300));

    let export = export_device(store, "aa:aa").await.expect("export");
    assert_eq!(export.kv["mem"]["memory"], "{\"name\":\"Ann\"}");
    assert_eq!(export.kv["other"]["blob"], "base64:/wA=");
    assert_eq!(export.kv.len(), 2, "only this device's values: {export:?}");
    assert_eq!(export.history, a);
    // A device id with a slash stays inside its own keys.
    let b = export_device(store, "bb/bb").await.expect("export b");
    assert_eq!(b.kv["mem"]["memory"], "{\"name\":\"Bob\"}");

    let moved = DeviceExport { device_id: "cc:cc".into(), ..export.clone() };
    import_device(store, &moved, 10).await.expect("import");
    let back = export_device(store, "cc:cc").await.expect("export c");
    assert_eq!((back.kv, back.history), (export.kv.clone(), export.history.clone()));
    import_device(store, &moved, 10).await.expect("importing twice replaces, not doubles");
    assert_eq!(history(store, "cc:cc").await.expect("history").len(), 2);

    // Counters: atomic, missing = 0, negative deltas, many at once.
    assert_eq!(store.incr("count/a", 5).await.expect("incr"), 5);
    assert_eq!(store.incr("count/a", -2).await.expect("incr"), 3);
    assert_eq!(store.incr("count/b", -1).await.expect("incr"), -1);
    let adds = futures_util::future::join_all((0..20).map(|_| store.incr("count/c", 1))).await;
    assert!(adds.iter().all(Result::is_ok));
    assert_eq!(store.incr("count/c", 0).await.expect("incr"), 20);
    store.set("count/text", b"not a number", None).await.expect("set");
    assert!(store.incr("count/text", 1).await.is_err(), "a value that is not a counter is an error");

    // Many values with an expiry are gone once expired (and purged, not kept forever).
    for i in 0..300 {
        store.set(&format!("short/{i}"), b"x", Some(std::time::Duration::from_millis(30))).await.expect("set");
    }
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    store.set("short/trigger", b"x", Some(std::time::Duration::from_secs(60))).await.expect("set");
    assert_eq!(store.keys("short/").await.expect("keys"), vec!["short/trigger".to_string()]);
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    suite(&memory::MemoryStore::new()).await;
}

#[tokio::test]
async fn embedded_store_passes_the_suite_and_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/store.sqlite3");
    let store = embedded::EmbeddedStore::open(&path).await.expect("open");
    suite(&store).await;
    drop(store);
    let reopened = embedded::EmbeddedStore::open(&path).await.expect("reopen");
    assert_eq!(reopened.get("a/long").await.expect("get"), Some(b"stays".to_vec()));
    assert_eq!(history(&reopened, "aa:aa").await.expect("history").len(), 2);
    // A second handle (another process, e.g. `data export`) works while the first is open.
    // Expired values do not stay in the file: a burst of 256 sets with an expiry purges them.
    for i in 0..256 {
        reopened.set(&format!("gone/{i}"), b"x", Some(std::time::Duration::from_millis(1))).await.expect("set");
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for i in 0..256 {
        reopened.set(&format!("later/{i}"), b"x", Some(std::time::Duration::from_secs(60))).await.expect("set");
    }
    let raw = rusqlite::Connection::open(&path).expect("raw");
    let left: i64 = raw.query_row("SELECT COUNT(*) FROM kv WHERE key LIKE 'gone/%'", [], |r| r.get(0)).expect("count");
    assert_eq!(left, 0, "expired rows are deleted from the file");
    let second = embedded::EmbeddedStore::open(&path).await.expect("second handle");
    second.set("x", b"from the second", None).await.expect("write");
    assert_eq!(reopened.get("x").await.expect("read"), Some(b"from the second".to_vec()));
    // Not a database: a clear error.
    let bogus = dir.path().join("bogus.sqlite3");
    std::fs::write(&bogus, b"this is not sqlite, just some bytes that are long enough to be a header").expect("write");
    let err = embedded::EmbeddedStore::open(&bogus).await.err().expect("refused");
    assert!(err.to_string().contains("bogus.sqlite3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_suite() {
    let server = RedisServer::start().expect("redis-server");
    let store = redis::RedisStore::connect(&redis_config(&server.url())).await.expect("connect");
    suite(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_queues_writes_and_flushes_them_when_redis_is_back() {
    let mut server = RedisServer::start().expect("redis-server");
    let config = redis_config(&server.url());
    let store = redis::RedisStore::connect(&config).await.expect("connect");
    store.set("before", b"1", None).await.expect("set");

    server.stop();
    // The session goes on: the memory written during the outage is accepted and readable.
    let memory = kv_key("mem_local_short", "aa:aa", "memory");
    store.set(&memory, b"{\"name\":\"Ann\"}", None).await.expect("queued, not failed");
    append_history(&store, "aa:aa", "s1", &[ChatMessage::new(Role::User, "hello")], 10).await.expect("queued");
    store.delete("before").await.expect("queued");
    assert_eq!(store.queued(), 3);
    assert_eq!(store.get(&memory).await.expect("read falls back to the queue"), Some(b"{\"name\":\"Ann\"}".to_vec()));
    assert_eq!(store.get("unknown").await.expect("read falls back"), None);
    assert_eq!(history(&store, "aa:aa").await.expect("history from the queue").len(), 1);

    server.restart().expect("restart");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while store.queued() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.queued(), 0, "the queue is flushed once Redis is back");
    assert_eq!(store.dropped(), 0);
    // A fresh connection (another instance) sees the writes made during the outage.
    let other = redis::RedisStore::connect(&config).await.expect("connect again");
    assert_eq!(other.get(&memory).await.expect("get"), Some(b"{\"name\":\"Ann\"}".to_vec()));
    assert_eq!(history(&other, "aa:aa").await.expect("history").len(), 1);
    assert_eq!(other.get("before").await.expect("get"), None, "the queued delete was applied in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_is_bounded_and_unreachable_redis_is_a_clear_error_at_start() {
    let mut server = RedisServer::start().expect("redis-server");
    let config = StoreConfig { outage_buffer: 3, ..redis_config(&server.url()) };
    let store = redis::RedisStore::connect(&config).await.expect("connect");
    server.stop();
    for i in 0..5 {
        store.set(&format!("k{i}"), b"v", None).await.expect("queued");
    }
    assert_eq!((store.queued(), store.dropped()), (3, 2), "the oldest writes are dropped and counted");

    // Nothing listens: a clear error, or a degraded start when configured.
    let err = redis::RedisStore::connect(&config).await.err().expect("unreachable");
    assert!(err.to_string().contains("cannot be reached") && err.to_string().contains("start_degraded"), "{err}");
    let degraded = redis::RedisStore::connect(&StoreConfig { start_degraded: true, ..config.clone() }).await;
    let degraded = degraded.expect("starts degraded");
    degraded.set("later", b"v", None).await.expect("queued");
    server.restart().expect("restart");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while degraded.queued() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(degraded.get("later").await.expect("get"), Some(b"v".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_are_announced_to_the_other_instances() {
    use std::sync::Mutex;
    let server = RedisServer::start().expect("redis-server");
    let config = redis_config(&server.url());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let heard: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut senders = Vec::new();
    for name in ["a", "b"] {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(crate::config::Config::default()));
        let heard = Arc::clone(&heard);
        let listener = name.to_owned();
        announce::spawn(
            &config,
            Arc::from(name),
            rx,
            move |from: &str| {
                heard.lock().expect("lock").push((listener.clone(), from.to_owned()));
            },
            shutdown.clone(),
        )
        .expect("announcer");
        senders.push(tx);
    }
    // Give both subscriptions a moment to be in place, then instance a loads a new config.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut round = 0;
    while heard.lock().expect("lock").is_empty() && std::time::Instant::now() < deadline {
        round += 1;
        let changed = crate::config::Config { prompt: format!("change {round}"), ..Default::default() };
        senders[0].send_replace(Arc::new(changed));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let heard = heard.lock().expect("lock").clone();
    assert!(!heard.is_empty(), "instance b heard the announcement");
    assert!(heard.iter().all(|(listener, from)| listener == "b" && from == "a"), "never its own: {heard:?}");
    shutdown.cancel();
}
