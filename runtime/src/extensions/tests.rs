//! Tests of the extension host with real components: `get_time` as the previous release built it
//! (WIT 0.1.0, kept in `testdata/`), the built-ins built by `extensions/build.sh` (0.2, SDK), and
//! small components written here in WAT that misbehave.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{ExtensionsConfig, Grant};
use crate::store::memory::MemoryStore;

/// `get_time` as the previous release built it: a WIT 0.1.0 component, kept as test data
/// (`testdata/get_time-0.1.0/`, its wasm and manifest unchanged), so that the 0.1 adapter is
/// tested against a real component of that version.
fn get_time_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/extensions/testdata/get_time-0.1.0")
}

fn host(cache: &Path, grants: &[(&str, Grant)]) -> ExtensionHost {
    let config = ExtensionsConfig {
        dirs: Vec::new(),
        cache_dir: cache.to_owned(),
        grants: grants.iter().map(|(id, grant)| ((*id).to_owned(), grant.clone())).collect(),
    };
    let services = HostServices {
        llm: None,
        store: Arc::new(MemoryStore::new()),
        metrics: Some(crate::metrics::Metrics::new()),
        kv: Default::default(),
    };
    ExtensionHost::new(&config, services).expect("host starts")
}

fn ctx(device: &str, language: &str) -> CallContext {
    CallContext { device_id: device.into(), session_id: "s1".into(), language: language.into() }
}

/// Writes an extension directory `<root>/<id>/` with `manifest_extra` appended to a minimal tool
/// manifest and `wasm` as `<id>.wasm`.
fn write_extension(root: &Path, id: &str, manifest: &str, wasm: &[u8]) -> PathBuf {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("extension.toml"), manifest).expect("manifest");
    std::fs::write(dir.join(format!("{id}.wasm")), wasm).expect("wasm");
    dir
}

fn tool_manifest(id: &str, capabilities: &str) -> String {
    format!(
        "id = \"{id}\"\nversion = \"0.1.0\"\nwit = \"xiaozhi:extension@0.1.0\"\nkinds = [\"tool\"]\n\n[capabilities]\n{capabilities}\n"
    )
}

/// A tool component whose `describe` returns no tools and whose `call` runs `call_body` (core
/// wasm instructions ending in an `i32` or diverging).
fn tool_component(call_body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(component
  (core module $m
    (memory (export "mem") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      global.get $bump
      local.set $p
      global.get $bump
      local.get 3
      i32.add
      global.set $bump
      local.get $p)
    ;; An empty list<tool-definition>: (pointer, length) = (0, 0) at address 16.
    (func (export "describe") (result i32) i32.const 16)
    (func (export "call") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      {call_body}))
  (core instance $i (instantiate $m))
  (type $action' (enum "none" "response" "req-llm" "record"))
  (export $action "tool-action" (type $action'))
  (type $def' (record (field "name" string) (field "description" string) (field "parameters-json" string)))
  (type $ctx' (record (field "device-id" string) (field "session-id" string) (field "language" string)))
  (type $res' (record (field "action" $action) (field "result" (option string)) (field "response" (option string))))
  (type $err' (variant (case "invalid-arguments" string) (case "not-found" string) (case "denied" string)
    (case "timed-out" string) (case "failed" string)))
  (export $def "tool-definition" (type $def'))
  (export $ctx "call-context" (type $ctx'))
  (export $res "tool-result" (type $res'))
  (export $err "extension-error" (type $err'))
  (func $describe (result (list $def))
    (canon lift (core func $i "describe") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
  (func $call (param "name" string) (param "arguments-json" string) (param "context" $ctx)
    (result (result $res (error $err)))
    (canon lift (core func $i "call") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
  (instance $tool (export "describe" (func $describe)) (export "call" (func $call)))
  (export "xiaozhi:extension/tool@0.1.0" (instance $tool)))"#
    );
    wat::parse_str(wat).expect("valid WAT")
}

/// Today in UTC+8 as `get_time` writes it in Chinese, for now and a moment later (midnight).
fn expected_dates() -> [String; 2] {
    let day = |t: chrono::DateTime<chrono::Utc>| {
        let local = t + chrono::Duration::hours(8);
        local.format("%Y年%-m月%-d日").to_string()
    };
    let now = chrono::Utc::now();
    [day(now), day(now + chrono::Duration::seconds(5))]
}

/// What a tool result says (its first `speak`).
fn spoken(result: &ToolResult) -> Option<&str> {
    result.effects.iter().find_map(|effect| match effect {
        Effect::Speak(text) => Some(text.as_str()),
        _ => None,
    })
}

/// What a tool result gives the LLM (its only effect must be `reply-to-llm`).
fn for_llm(result: &ToolResult) -> Option<&str> {
    match &result.effects[..] {
        [Effect::ReplyToLlm(text)] => Some(text.as_str()),
        _ => None,
    }
}

async fn assert_get_time_works(host: &ExtensionHost, ext: &LoadedExtension) {
    let result = host.call_tool(ext, "get_time", "{}", ctx("aa:bb", "zh-CN")).await.expect("get_time call");
    let text = for_llm(&result).expect("a result for the LLM");
    assert!(expected_dates().iter().any(|date| text.contains(date.as_str())), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_time_loads_describes_and_answers_with_the_date() {
    // The previous release's 0.1.0 component loads and works unchanged, through the adapter.
    let dir = get_time_dir();
    let cache = tempfile::tempdir().expect("tempdir");
    let host = host(cache.path(), &[]);

    let started = Instant::now();
    let ext = host.load(&dir).await.expect("get_time loads");
    let cold = started.elapsed();
    assert!(!ext.from_cache);
    assert_eq!(ext.wasm_sha256.len(), 64);
    assert!(host.cache_file(&ext.wasm_sha256).is_file(), "compiled code is cached");

    let started = Instant::now();
    let cached = host.load(&dir).await.expect("get_time loads again");
    let warm = started.elapsed();
    assert!(cached.from_cache, "the second load hits the compile cache");

    // A new host (a restart) with the same cache directory hits it too.
    let restarted = self::host(cache.path(), &[]);
    assert!(restarted.load(&dir).await.expect("loads after restart").from_cache);
    println!("get_time load: cold (compile) {cold:?}, cached {warm:?}; pooling allocator: {}", host.uses_pooling());

    assert_eq!(ext.tools.len(), 1);
    let tools = host.describe(&ext).await.expect("describe");
    assert_eq!(tools, ext.tools);
    assert_eq!(tools[0].name, "get_time");
    let schema: serde_json::Value = serde_json::from_str(&tools[0].parameters_json).expect("JSON schema");
    assert_eq!(schema["type"], "object");

    assert_get_time_works(&host, &ext).await;
    let english = host.call_tool(&ext, "get_time", "{}", ctx("aa:bb", "en-US")).await.expect("call");
    let english = for_llm(&english).unwrap_or_default().to_owned();
    assert!(english.starts_with("Date: ") && english.contains("Chinese lunar date"), "{english}");

    let err = host.call_tool(&ext, "no_such_tool", "{}", ctx("aa:bb", "zh")).await.expect_err("unknown tool");
    assert!(matches!(err, ExtensionError::Guest { ref message, .. } if message.starts_with("not found")), "{err}");
    let err = host.call_tool(&ext, "get_time", "{\"timezone_offset_minutes\": 9999}", ctx("d", "zh")).await;
    assert!(matches!(err, Err(ExtensionError::Guest { .. })), "{err:?}");
    let err = host.memory_query(&ext, "hi", ctx("d", "zh")).await.expect_err("not a memory extension");
    assert!(matches!(err, ExtensionError::WrongKind { kind: Kind::Memory, .. }), "{err}");

    let calls = 20;
    let started = Instant::now();
    for _ in 0..calls {
        host.call_tool(&ext, "get_time", "{}", ctx("aa:bb", "zh")).await.expect("call");
    }
    println!("get_time call (fresh store + instantiate + call): {:?} on average", started.elapsed() / calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_components_fail_cleanly_and_the_host_serves_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let host = host(&root.path().join("cache"), &[]);
    let get_time = host.load(&get_time_dir()).await.expect("get_time loads");

    // A trap.
    let dir = write_extension(root.path(), "trap", &tool_manifest("trap", ""), &tool_component("unreachable"));
    let ext = host.load(&dir).await.expect("loads: describe works");
    assert!(ext.tools.is_empty());
    let err = host.call_tool(&ext, "x", "{}", ctx("d", "zh")).await.expect_err("traps");
    println!("trap: {err}");
    let ExtensionError::Trap { id, call, message } = &err else { panic!("expected a trap, got {err}") };
    assert_eq!((id.as_str(), *call), ("trap", "tool.call"));
    assert!(message.contains("unreachable"), "{message}");
    assert_get_time_works(&host, &get_time).await;

    // An infinite loop ends by the epoch deadline.
    let timeout = Duration::from_millis(200);
    let manifest = tool_manifest("spin", "timeout_ms = 200");
    let dir = write_extension(root.path(), "spin", &manifest, &tool_component("(loop $l (br $l)) unreachable"));
    let ext = host.load(&dir).await.expect("loads");
    let started = Instant::now();
    let err = host.call_tool(&ext, "x", "{}", ctx("d", "zh")).await.expect_err("runs out of time");
    let elapsed = started.elapsed();
    println!("infinite loop stopped after {elapsed:?} (limit {timeout:?})");
    assert!(matches!(err, ExtensionError::Timeout { ref id, limit, .. } if id == "spin" && limit == timeout), "{err}");
    assert!(elapsed >= timeout && elapsed <= timeout + Duration::from_millis(100), "{elapsed:?}");
    assert_get_time_works(&host, &get_time).await;

    // Growing memory past the cap (16 MiB here) traps instead of taking the host's memory.
    let grow = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) i32.const 16";
    let dir = write_extension(root.path(), "hog", &tool_manifest("hog", "memory_mb = 16"), &tool_component(grow));
    let ext = host.load(&dir).await.expect("loads");
    let err = host.call_tool(&ext, "x", "{}", ctx("d", "zh")).await.expect_err("out of memory");
    println!("memory cap: {err}");
    let ExtensionError::Trap { message, .. } = &err else { panic!("expected a trap, got {err}") };
    assert!(message.contains("memory"), "{message}");
    assert_get_time_works(&host, &get_time).await;

    // Many calls at once all end cleanly, and the host still works.
    let calls = (0..8).map(|_| host.call_tool(&ext, "x", "{}", ctx("d", "zh")));
    for result in futures_util::future::join_all(calls).await {
        assert!(matches!(result, Err(ExtensionError::Trap { .. })), "{result:?}");
    }
    assert_get_time_works(&host, &get_time).await;

    // Every call was counted by outcome.
    let metrics = host.metrics().expect("metrics").render();
    for line in [
        r#"xiaozhi_extension_calls_total{extension="trap",call="tool.call",outcome="trap"} 1"#,
        r#"xiaozhi_extension_calls_total{extension="spin",call="tool.call",outcome="timeout"} 1"#,
        r#"xiaozhi_extension_calls_total{extension="hog",call="tool.call",outcome="trap"} 9"#,
        r#"xiaozhi_extension_calls_total{extension="get_time",call="tool.call",outcome="ok"} 4"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn bad_extensions_are_refused_with_clear_errors() {
    let root = tempfile::tempdir().expect("tempdir");
    let grants = [("wants_kv", Grant { kv: false, ..Grant::default() })];
    let host = host(&root.path().join("cache"), &grants);
    let good = tool_component("unreachable");

    let core = wat::parse_str("(module (func (export \"f\")))").expect("core module");
    let dir = write_extension(root.path(), "core", &tool_manifest("core", ""), &core);
    let err = host.load(&dir).await.err().expect("a core module is refused");
    assert!(err.to_string().contains("is a core WebAssembly module, not a component"), "{err}");

    let dir = write_extension(root.path(), "junk", &tool_manifest("junk", ""), b"#!/bin/sh\necho hi\n");
    let err = host.load(&dir).await.err().expect("garbage is refused");
    assert!(err.to_string().contains("is not a WebAssembly binary"), "{err}");

    let truncated = &good[..good.len() / 2];
    let dir = write_extension(root.path(), "cut", &tool_manifest("cut", ""), truncated);
    let err = host.load(&dir).await.err().expect("a truncated component is refused");
    assert!(matches!(err, ExtensionError::Compile { .. }), "{err}");

    let manifest = tool_manifest("future", "").replace("@0.1.0", "@0.3.0");
    let dir = write_extension(root.path(), "future", &manifest, &good);
    let err = host.load(&dir).await.err().expect("another WIT version is refused");
    assert!(
        err.to_string().ends_with(
            "extension future targets WIT xiaozhi:extension@0.3.0; this server supports xiaozhi:extension@0.1.0 and @0.2.0"
        ),
        "{err}"
    );
    // A 0.1 component whose manifest claims 0.2 does not link as 0.2: the message names the export.
    let manifest = tool_manifest("claims", "").replace("@0.1.0", "@0.2.0");
    let dir = write_extension(root.path(), "claims", &manifest, &good);
    let err = host.load(&dir).await.err().expect("a version mismatch is refused");
    assert!(err.to_string().contains("does not export xiaozhi:extension/tool@0.2.0"), "{err}");

    let dir = write_extension(root.path(), "wants_kv", &tool_manifest("wants_kv", "kv = true"), &good);
    let err = host.load(&dir).await.err().expect("kv not granted");
    assert_eq!(err.to_string(), "extension wants_kv requests kv, not granted in extensions.grants.wants_kv.kv");

    let manifest = tool_manifest("weather", "http_hosts = [\"api.example.com\"]");
    let dir = write_extension(root.path(), "weather", &manifest, &good);
    let err = host.load(&dir).await.err().expect("http host not granted");
    assert_eq!(
        err.to_string(),
        "extension weather requests http host api.example.com, not granted in extensions.grants.weather.http_hosts"
    );

    let manifest = tool_manifest("intent_only", "").replace("[\"tool\"]", "[\"intent\"]");
    let dir = write_extension(root.path(), "intent_only", &manifest, &good);
    let err = host.load(&dir).await.err().expect("the declared export is missing");
    assert!(err.to_string().contains("does not export xiaozhi:extension/intent@0.1.0"), "{err}");

    let err = host.load(&root.path().join("nowhere")).await.err().expect("no directory");
    assert!(matches!(err, ExtensionError::Io { .. }), "{err}");

    // The host still loads and runs a good extension.
    let get_time = host.load(&get_time_dir()).await.expect("get_time loads");
    assert_get_time_works(&host, &get_time).await;
}

#[tokio::test]
async fn a_corrupt_cache_file_is_replaced() {
    let root = tempfile::tempdir().expect("tempdir");
    let host = host(&root.path().join("cache"), &[]);
    let wasm = tool_component("unreachable");
    let dir = write_extension(root.path(), "cached", &tool_manifest("cached", ""), &wasm);
    let ext = host.load(&dir).await.expect("loads");
    let cache_file = host.cache_file(&ext.wasm_sha256);
    // Replace the file (never rewrite it in place: loaded components map it into memory).
    std::fs::remove_file(&cache_file).expect("remove the cache file");
    std::fs::write(&cache_file, b"not compiled code").expect("corrupt the cache");
    let again = host.load(&dir).await.expect("recompiles");
    assert!(!again.from_cache);
    assert!(host.load(&dir).await.expect("loads").from_cache, "the cache file was rewritten");
}

/// A chat model that answers with the last message's text, in two pieces.
struct EchoLlm;

#[async_trait::async_trait]
impl crate::llm::Llm for EchoLlm {
    async fn stream(
        &self,
        messages: &[crate::llm::ChatMessage],
        _tools: &[crate::llm::ToolSpec],
    ) -> Result<crate::llm::LlmStream, crate::remote::ProviderError> {
        let text = messages.last().map(|m| m.content.clone()).unwrap_or_default();
        let (head, tail) = text.split_at(text.len() / 2);
        let deltas =
            vec![Ok(crate::llm::LlmDelta::Text(head.to_owned())), Ok(crate::llm::LlmDelta::Text(tail.to_owned()))];
        Ok(Box::pin(futures_util::stream::iter(deltas)))
    }
}

/// The state of a call of extension `id` for `device` with the capabilities in `capabilities`
/// granted by `grant`.
fn call_state(id: &str, device: &str, capabilities: &str, grant: &Grant, services: &HostServices) -> CallState {
    let manifest = Manifest::parse(&tool_manifest(id, capabilities)).expect("manifest");
    let effective = grant::check(&manifest, Some(grant)).expect("granted");
    let http = super::iface::http::client().expect("http client");
    CallState::new(
        id,
        &ctx(device, "zh"),
        Arc::new(effective),
        services.clone(),
        http,
        Instant::now() + Duration::from_secs(5),
    )
}

/// Serves one canned HTTP answer per connection on 127.0.0.1; returns the port.
async fn canned_http_server(body: Vec<u8>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Test: yes\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    port
}

/// The attack: the device id is whatever the client says, so a caller inventing device ids got
/// the per-device quota once per id. The per-extension byte quota holds over all of them.
#[tokio::test]
async fn invented_device_ids_do_not_multiply_the_kv_quota() {
    use super::bindings::xiaozhi::extension::kv;
    use super::bindings::xiaozhi::extension::types::ExtensionError as WitError;

    let metrics = crate::metrics::Metrics::new();
    let limits = super::host::KvLimits { keys_per_device: 4, bytes_per_extension: 10 * 1024 };
    let services = HostServices {
        llm: None,
        store: Arc::new(MemoryStore::new()),
        metrics: Some(Arc::clone(&metrics)),
        kv: limits,
    };
    let grant = Grant { kv: true, ..Grant::default() };
    let value = vec![7u8; 1024];
    let mut stored = 0usize;
    let mut refused = 0usize;
    for device in 0..21 {
        let mut call = call_state("notes", &format!("invented:{device}"), "kv = true", &grant, &services);
        for key in 0..4 {
            match kv::Host::set(&mut call, format!("k{key}"), value.clone()).await {
                Ok(()) => stored += 1,
                Err(WitError::Failed(message)) if message.contains("full") => refused += 1,
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
    }
    assert_eq!(stored, 10, "10 KiB of 1 KiB values over all devices, not 21 x 4");
    assert_eq!(refused, 21 * 4 - 10);
    assert!(metrics.render().contains("xiaozhi_limits_hit_total{limit=\"kv_bytes_per_extension\"}"));
    // Replacing a value with one of the same size, and deleting, keep the count right.
    let mut first = call_state("notes", "invented:0", "kv = true", &grant, &services);
    kv::Host::set(&mut first, "k0".into(), value.clone()).await.expect("same size fits");
    kv::Host::delete(&mut first, "k0".into()).await.expect("delete");
    let mut late = call_state("notes", "invented:99", "kv = true", &grant, &services);
    kv::Host::set(&mut late, "k".into(), value.clone()).await.expect("a deleted value frees its room");
    assert!(kv::Host::set(&mut late, "k2".into(), value.clone()).await.is_err(), "and only its room");
    // Another extension has its own quota.
    let mut other = call_state("other", "invented:0", "kv = true", &grant, &services);
    kv::Host::set(&mut other, "k".into(), value).await.expect("other extension");
}

#[tokio::test]
async fn host_imports_check_the_grant_and_keep_devices_apart() {
    use super::bindings::xiaozhi::extension::types::{ExtensionError as WitError, Message, Role};
    use super::bindings::xiaozhi::extension::{config, http, kv, llm};

    let services = HostServices {
        llm: Some(Arc::new(EchoLlm)),
        store: Arc::new(MemoryStore::new()),
        metrics: None,
        kv: Default::default(),
    };
    let grant = Grant {
        http_hosts: vec!["127.0.0.1".into()],
        kv: true,
        llm: true,
        config: [("api_key".to_owned(), "secret".to_owned()), ("hidden".to_owned(), "x".to_owned())].into(),
        ..Grant::default()
    };
    let caps = "kv = true\nllm = true\nhttp_hosts = [\"127.0.0.1\"]\nconfig = [\"api_key\"]";
    let mut device_a = call_state("notes", "aa:aa", caps, &grant, &services);
    let mut device_b = call_state("notes", "bb:bb", caps, &grant, &services);
    let mut other_ext = call_state("other", "aa:aa", "kv = true", &grant, &services);
    let mut no_caps = call_state("plain", "aa:aa", "", &grant, &services);

    // kv: per extension and device.
    kv::Host::set(&mut device_a, "name".into(), b"Ann".to_vec()).await.expect("set");
    assert_eq!(kv::Host::get(&mut device_a, "name".into()).await.expect("get"), Some(b"Ann".to_vec()));
    assert_eq!(kv::Host::get(&mut device_b, "name".into()).await.expect("get"), None, "another device");
    assert_eq!(kv::Host::get(&mut other_ext, "name".into()).await.expect("get"), None, "another extension");
    kv::Host::delete(&mut device_a, "name".into()).await.expect("delete");
    assert_eq!(kv::Host::get(&mut device_a, "name".into()).await.expect("get"), None);
    let denied = kv::Host::get(&mut no_caps, "name".into()).await;
    assert_eq!(denied, Err(WitError::Denied("kv is not granted to extension plain".into())));
    let too_big = kv::Host::set(&mut device_a, "k".into(), vec![0; super::iface::kv::MAX_VALUE_BYTES + 1]).await;
    assert!(matches!(too_big, Err(WitError::InvalidArguments(_))), "{too_big:?}");
    let most = services.kv.keys_per_device;
    for i in 0..most {
        kv::Host::set(&mut device_b, format!("k{i}"), vec![1]).await.expect("room");
    }
    let full = kv::Host::set(&mut device_b, "one more".into(), vec![1]).await;
    assert!(matches!(full, Err(WitError::Failed(ref m)) if m.contains("full")), "{full:?}");
    kv::Host::set(&mut device_b, "k0".into(), vec![2]).await.expect("replacing needs no room");
    kv::Host::set(&mut device_a, "k0".into(), vec![3]).await.expect("another device has its own room");

    // config: only declared and granted keys.
    assert_eq!(config::Host::get(&mut device_a, "api_key".into()).await, Some("secret".into()));
    assert_eq!(config::Host::get(&mut device_a, "hidden".into()).await, None, "granted but not declared");
    assert_eq!(config::Host::get(&mut no_caps, "api_key".into()).await, None);

    // http: only granted hosts (any port), body capped.
    let port = canned_http_server(b"hello".to_vec()).await;
    let request =
        |url: String| http::Request { method: "GET".into(), url, headers: vec![], body: None, timeout_ms: Some(2000) };
    let response =
        http::Host::fetch(&mut device_a, request(format!("http://127.0.0.1:{port}/x"))).await.expect("fetch");
    assert_eq!((response.status, response.body.as_slice()), (200, b"hello".as_slice()));
    assert!(response.headers.iter().any(|(name, value)| name == "x-test" && value == "yes"));
    let denied = http::Host::fetch(&mut device_a, request("http://localhost:1/".into())).await;
    assert_eq!(denied, Err(WitError::Denied("http host localhost is not granted to extension notes".into())));
    let denied = http::Host::fetch(&mut no_caps, request(format!("http://127.0.0.1:{port}/"))).await;
    assert_eq!(denied, Err(WitError::Denied("http host 127.0.0.1 is not granted to extension plain".into())));
    let bad = http::Host::fetch(&mut device_a, request("file:///etc/passwd".into())).await;
    assert!(matches!(bad, Err(WitError::InvalidArguments(_))), "{bad:?}");
    let big_port = canned_http_server(vec![b'x'; super::iface::http::MAX_BODY_BYTES + 1]).await;
    let big = http::Host::fetch(&mut device_a, request(format!("http://127.0.0.1:{big_port}/"))).await;
    assert!(matches!(big, Err(WitError::Failed(ref message)) if message.contains("over")), "{big:?}");

    // llm: only when granted; the answer's pieces are joined.
    let messages = vec![Message { role: Role::User, content: "hello world".into() }];
    assert_eq!(llm::Host::complete(&mut device_a, messages.clone(), None).await, Ok("hello world".into()));
    let denied = llm::Host::complete(&mut no_caps, messages, None).await;
    assert_eq!(denied, Err(WitError::Denied("llm is not granted to extension plain".into())));
}

#[tokio::test]
async fn on_demand_allocation_works_too() {
    let cache = tempfile::tempdir().expect("tempdir");
    let config = ExtensionsConfig { dirs: Vec::new(), cache_dir: cache.path().to_owned(), grants: Default::default() };
    let services = HostServices {
        llm: None,
        store: Arc::new(MemoryStore::new()),
        metrics: Some(crate::metrics::Metrics::new()),
        kv: Default::default(),
    };
    let host = ExtensionHost::build(&config, services, false).expect("host starts");
    assert!(!host.uses_pooling());
    let ext = host.load(&get_time_dir()).await.expect("loads");
    assert_get_time_works(&host, &ext).await;
    let root = tempfile::tempdir().expect("tempdir");
    let grow = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) i32.const 16";
    let dir = write_extension(root.path(), "hog", &tool_manifest("hog", "memory_mb = 8"), &tool_component(grow));
    let hog = host.load(&dir).await.expect("loads");
    let err = host.call_tool(&hog, "x", "{}", ctx("d", "zh")).await.expect_err("out of memory");
    assert!(err.to_string().contains("memory cap of 8 MiB"), "{err}");
}

#[tokio::test]
async fn the_host_and_its_calls_can_be_shared_across_tasks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ExtensionHost>();
    assert_send_sync::<LoadedExtension>();

    let cache = tempfile::tempdir().expect("tempdir");
    let host = Arc::new(host(cache.path(), &[]));
    let ext = host.load(&get_time_dir()).await.expect("loads");
    let task = tokio::spawn({
        let (host, ext) = (host.clone(), ext.clone());
        async move { host.call_tool(&ext, "get_time", "{}", ctx("aa:bb", "zh")).await }
    });
    let result = task.await.expect("task").expect("call");
    assert!(for_llm(&result).is_some(), "{result:?}");
}

/// A built guest's wasm; fails with the fix when it is not built.
fn built_guest(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../extensions/{name}/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|_| panic!("{} is missing: run `extensions/build.sh` first", path.display()))
}

/// Hot swap under load: a loop of calls runs while the extension's wasm is replaced by another
/// component: no call fails, the new version answers soon after the file lands, a broken file
/// keeps the last good version serving (with the error in the status), and deleting the folder
/// unloads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_keeps_serving_and_reports_broken_files() {
    let root = tempfile::tempdir().expect("tempdir");
    let cache = tempfile::tempdir().expect("tempdir");
    let exts = root.path().join("extensions");
    let id = "swap";
    let manifest = tool_manifest(id, "memory_mb = 16\ntimeout_ms = 1000");
    write_extension(&exts, id, &manifest, &std::fs::read(get_time_dir().join("get_time.wasm")).expect("0.1 get_time"));
    let registry = registry::Registry::new(Arc::new(host(cache.path(), &[])), vec![exts.clone()]);
    assert_eq!(registry.reload().await, 1);
    registry::watch(Arc::clone(&registry), tokio_util::sync::CancellationToken::new());

    // The load: a caller that keeps calling whatever tool the current snapshot offers.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = {
        let (registry, stop) = (Arc::clone(&registry), Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut calls, mut failures) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let snapshot = registry.snapshot();
                let Some(ext) = snapshot.extensions.get("swap") else { break };
                let tool = ext.tools[0].name.clone();
                let args = if tool == "get_time" { "{}" } else { r#"{"say_goodbye":"bye"}"# };
                if let Err(e) = registry.host().call_tool(ext, &tool, args, ctx("dev", "en")).await {
                    failures.push(e.to_string());
                }
                calls += 1;
            }
            (calls, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(registry.snapshot().extensions["swap"].tools[0].name, "get_time");

    // A new version lands (another component, built against WIT 0.2: its tool list changes).
    let landed = Instant::now();
    let new_wasm = built_guest("handle_exit_intent");
    std::fs::write(exts.join(id).join("extension.toml"), manifest.replace("@0.1.0", "@0.2.0")).expect("manifest");
    let tmp = exts.join(id).join("swap.wasm.tmp");
    std::fs::write(&tmp, &new_wasm).expect("write");
    std::fs::rename(&tmp, exts.join(id).join("swap.wasm")).expect("rename");
    let mut swapped = None;
    while landed.elapsed() < Duration::from_secs(5) {
        if registry.snapshot().extensions["swap"].tools[0].name == "handle_exit_intent" {
            swapped = Some(landed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let swapped = swapped.expect("the new version never served");
    eprintln!("hot swap: the new version served {} ms after the file landed", swapped.as_millis());
    // How fast is a figure for the release benchmark (`cargo bench --bench extensions`), not a
    // timed assertion in a debug build that shares two cores with the rest of the suite; here
    // the new version must simply serve, well inside the 5 s wait above.
    assert!(swapped < Duration::from_secs(5), "took {swapped:?}");

    // A broken file: the last good version keeps serving, the status says why.
    std::fs::write(exts.join(id).join("swap.wasm"), b"not wasm at all").expect("write");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(registry.snapshot().extensions["swap"].tools[0].name, "handle_exit_intent");
    let status = registry.status();
    assert!(status[0].error.as_deref().is_some_and(|e| e.contains("swap")), "{status:?}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failures) = caller.await.expect("caller");
    assert!(calls > 20, "only {calls} calls ran");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );

    // Deleting the folder unloads the extension.
    std::fs::remove_dir_all(exts.join(id)).expect("rm");
    let deadline = Instant::now() + Duration::from_secs(3);
    while registry.snapshot().extensions.contains_key("swap") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!registry.snapshot().extensions.contains_key("swap"), "deleting the folder unloads it");
}

/// The same `handle_exit_intent` tool written in Rust (WIT 0.2, with the SDK: its effects also
/// end the conversation), C and Python (0.1, through the adapter) passes the same checks: one
/// tool described, the given farewell spoken, a default for a blank one, and
/// `invalid-arguments` (not a trap) for arguments that are not JSON. Each guest is loaded by its
/// own host; the load times show what the compile cache saves (the Python component embeds
/// CPython and compiles slowly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_tool_in_rust_c_and_python_behaves_the_same() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extensions");
    let guests = [
        ("handle_exit_intent", "extensions/handle_exit_intent", "extensions/build.sh handle_exit_intent"),
        ("exit_c", "extensions/examples/exit_c", "extensions/examples/exit_c/build.sh"),
        ("exit_py", "extensions/examples/exit_py", "extensions/examples/exit_py/build.sh"),
    ];
    for (id, dir, build) in guests {
        let path = root.join(dir.trim_start_matches("extensions/"));
        assert!(path.join(format!("{id}.wasm")).is_file(), "{dir}/{id}.wasm is missing: run `{build}` first");
        let cache = tempfile::tempdir().expect("tempdir");
        let host = host(cache.path(), &[]);

        let started = Instant::now();
        let ext = host.load(&path).await.unwrap_or_else(|err| panic!("{id} loads: {err}"));
        let cold = started.elapsed();
        assert_eq!(ext.id(), id);
        assert!(!ext.from_cache, "{id}: a fresh cache");
        let started = Instant::now();
        let again = host.load(&path).await.unwrap_or_else(|err| panic!("{id} loads again: {err}"));
        let cached = started.elapsed();
        assert!(again.from_cache, "{id}: the second load hits the compile cache");

        let tools = host.describe(&ext).await.unwrap_or_else(|err| panic!("{id} describes: {err}"));
        assert_eq!(tools, ext.tools, "{id}");
        assert_eq!(tools.len(), 1, "{id}: {tools:?}");
        assert_eq!(tools[0].name, "handle_exit_intent", "{id}");
        assert!(!tools[0].description.is_empty(), "{id}");
        let schema: serde_json::Value = serde_json::from_str(&tools[0].parameters_json).expect("JSON schema");
        assert_eq!(schema["type"], "object", "{id}");
        assert_eq!(schema["properties"]["say_goodbye"]["type"], "string", "{id}");

        let started = Instant::now();
        let said = host
            .call_tool(&ext, "handle_exit_intent", r#"{"say_goodbye":"Bye now"}"#, ctx("aa:bb", "en"))
            .await
            .unwrap_or_else(|err| panic!("{id} call: {err}"));
        let first_call = started.elapsed();
        assert_eq!(spoken(&said), Some("Bye now"), "{id}");
        if ext.manifest.wit == WitVersion::V0_2 {
            assert_eq!(said.effects.last(), Some(&Effect::EndConversation), "{id}: {said:?}");
        }

        for (blank, language) in [(r#"{"say_goodbye":"   "}"#, "en"), ("{}", "zh-CN"), ("", "en-US")] {
            let result = host
                .call_tool(&ext, "handle_exit_intent", blank, ctx("aa:bb", language))
                .await
                .unwrap_or_else(|err| panic!("{id} call with {blank:?}: {err}"));
            let text = spoken(&result).unwrap_or_default();
            assert!(!text.trim().is_empty(), "{id}: no default farewell for {blank:?}");
        }

        for bad in ["{not json", r#"{"say_goodbye":42}"#, "[1]"] {
            let err = host
                .call_tool(&ext, "handle_exit_intent", bad, ctx("aa:bb", "en"))
                .await
                .expect_err("bad arguments are refused");
            assert!(
                matches!(err, ExtensionError::Guest { ref message, .. } if message.starts_with("invalid arguments")),
                "{id} with {bad:?}: {err}"
            );
        }
        let err = host.call_tool(&ext, "no_such_tool", "{}", ctx("aa:bb", "en")).await.expect_err("unknown tool");
        assert!(matches!(err, ExtensionError::Guest { ref message, .. } if message.starts_with("not found")), "{err}");

        // The host keeps serving after the errors.
        let said = host
            .call_tool(&ext, "handle_exit_intent", r#"{"say_goodbye":"再见"}"#, ctx("aa:bb", "zh"))
            .await
            .unwrap_or_else(|err| panic!("{id} call after errors: {err}"));
        assert_eq!(spoken(&said), Some("再见"), "{id}");

        let size = std::fs::metadata(path.join(format!("{id}.wasm"))).map(|m| m.len()).unwrap_or_default();
        println!("{id}: {size} bytes; load cold (compile) {cold:?}, cached {cached:?}; first call {first_call:?}");
    }
}

/// The directory of the built-in extension `id`; fails with the fix when it is not built.
fn builtin_dir(id: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extensions").join(id);
    assert!(
        dir.join(format!("{id}.wasm")).is_file(),
        "{}/{id}.wasm is missing: run `extensions/build.sh {id}` first",
        dir.display()
    );
    dir
}

/// A chat model whose answer is computed from the request, and which records the requests.
struct ScriptedLlm {
    answer: fn(&[crate::llm::ChatMessage]) -> String,
    requests: std::sync::Mutex<Vec<Vec<crate::llm::ChatMessage>>>,
}

impl ScriptedLlm {
    fn new(answer: fn(&[crate::llm::ChatMessage]) -> String) -> Arc<Self> {
        Arc::new(Self { answer, requests: std::sync::Mutex::default() })
    }

    fn requests(&self) -> Vec<Vec<crate::llm::ChatMessage>> {
        self.requests.lock().expect("lock").clone()
    }
}

#[async_trait::async_trait]
impl crate::llm::Llm for ScriptedLlm {
    async fn stream(
        &self,
        messages: &[crate::llm::ChatMessage],
        _tools: &[crate::llm::ToolSpec],
    ) -> Result<crate::llm::LlmStream, crate::remote::ProviderError> {
        self.requests.lock().expect("lock").push(messages.to_vec());
        let text = (self.answer)(messages);
        Ok(Box::pin(futures_util::stream::iter(vec![Ok(crate::llm::LlmDelta::Text(text))])))
    }
}

fn host_with(cache: &Path, grants: &[(&str, Grant)], llm: Arc<dyn crate::llm::Llm>) -> ExtensionHost {
    let config = ExtensionsConfig {
        dirs: Vec::new(),
        cache_dir: cache.to_owned(),
        grants: grants.iter().map(|(id, grant)| ((*id).to_owned(), grant.clone())).collect(),
    };
    let services =
        HostServices { llm: Some(llm), store: Arc::new(MemoryStore::new()), metrics: None, kv: Default::default() };
    ExtensionHost::new(&config, services).expect("host starts")
}

/// A `Write` into a shared buffer, to read back what a `tracing` subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

#[tokio::test]
async fn intent_llm_chooses_among_the_tools_the_host_passes() {
    use crate::llm::{ChatMessage, Role};
    // The model picks get_time when the prompt offers it, whatever the user said.
    let llm = ScriptedLlm::new(|messages| {
        if messages[0].content.contains("get_time") {
            r#"```json
{"function_call": {"name": "get_time", "arguments": {}}}
```"#
                .into()
        } else {
            r#"{"function_call": {"name": "continue_chat"}}"#.into()
        }
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let grant = Grant { llm: true, ..Grant::default() };
    let host = host_with(cache.path(), &[("intent_llm", grant)], llm.clone());
    let ext = host.load(&builtin_dir("intent_llm")).await.expect("intent_llm loads");
    let tools = [ToolDefinition {
        name: "get_time".into(),
        description: "The current date and time".into(),
        parameters_json: r#"{"type":"object","properties":{}}"#.into(),
    }];
    let history = [ChatMessage::new(Role::User, "hello"), ChatMessage::new(Role::Assistant, "hi")];

    let decision = host.detect_intent(&ext, &history, "what time is it", &tools, ctx("aa", "en")).await;
    assert_eq!(
        decision.expect("detect"),
        IntentDecision::CallTool { name: "get_time".into(), arguments_json: "{}".into() }
    );
    let request = llm.requests().remove(0);
    assert!(request[0].content.contains("- name: get_time"), "{}", request[0].content);
    assert!(request[1].content.contains("what time is it"), "{}", request[1].content);

    let decision = host.detect_intent(&ext, &history, "tell me a joke", &[], ctx("aa", "en")).await;
    assert_eq!(decision.expect("detect"), IntentDecision::ContinueChat);

    // Without the llm grant the extension is refused at load.
    let refused = self::host(cache.path(), &[]).load(&builtin_dir("intent_llm")).await.err().expect("refused");
    assert!(refused.to_string().contains("requests llm, not granted"), "{refused}");
}

#[tokio::test(flavor = "current_thread")]
async fn mem_local_short_keeps_devices_apart_and_its_logs_are_tagged() {
    use crate::llm::{ChatMessage, Role};
    // The "summary" is the dialogue's user lines as JSON.
    let llm = ScriptedLlm::new(|messages| {
        let prompt = &messages.last().expect("a prompt").content;
        let said: Vec<&str> = prompt.lines().filter(|l| l.contains("name is")).collect();
        serde_json::json!({"said": said}).to_string()
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let grant = Grant { llm: true, kv: true, ..Grant::default() };
    let host = host_with(cache.path(), &[("mem_local_short", grant)], llm.clone());
    let ext = host.load(&builtin_dir("mem_local_short")).await.expect("mem_local_short loads");

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dialogue = |name: &str| {
        vec![
            ChatMessage::new(Role::User, format!("Hello, my name is {name}.")),
            ChatMessage::new(Role::Assistant, format!("Nice to meet you, {name}!")),
        ]
    };
    assert_eq!(host.memory_query(&ext, "who am I", ctx("dev:a", "en")).await.expect("query"), "");
    host.memory_save(&ext, &dialogue("Ann"), ctx("dev:a", "en")).await.expect("save a");
    host.memory_save(&ext, &dialogue("Bob"), ctx("dev:b", "en")).await.expect("save b");
    let a = host.memory_query(&ext, "who am I", ctx("dev:a", "en")).await.expect("query a");
    let b = host.memory_query(&ext, "who am I", ctx("dev:b", "en")).await.expect("query b");
    assert!(a.contains("Ann") && !a.contains("Bob"), "device a remembers only its own dialogue: {a}");
    assert!(b.contains("Bob") && !b.contains("Ann"), "device b remembers only its own dialogue: {b}");
    assert_eq!(llm.requests().len(), 2, "one summary per saved dialogue");

    // The guest's own log records carry the extension id and the device of the call.
    let logs = captured.text();
    let saved: Vec<&str> = logs.lines().filter(|l| l.contains("memory saved")).collect();
    assert_eq!(saved.len(), 2, "{logs}");
    assert!(saved.iter().all(|l| l.contains("extension=mem_local_short")), "{logs}");
    assert!(saved[0].contains("device=dev:a") && saved[1].contains("device=dev:b"), "{logs}");
}

/// A QWeather API host over HTTPS on loopback, as `name` (a certificate made for it): answers the
/// city lookup, current weather and forecast, and records each request's path and API key.
async fn qweather_over_https(
    name: &str,
) -> (std::net::SocketAddr, reqwest::Certificate, Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    use http_body_util::Full;
    use hyper::body::Bytes;

    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("certificate");
    let cert_der = certified.cert.der().clone();
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let tls = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .expect("server TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, record) = (acceptor.clone(), Arc::clone(&record));
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let key = req.headers().get("x-qw-api-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let path = req.uri().path().to_owned();
                    record.lock().expect("lock").push((path.clone(), key));
                    let body = if path.starts_with("/geo/v2/city/lookup") {
                        r#"{"code":"200","location":[{"name":"杭州","id":"101210101","adm2":"杭州","adm1":"浙江省","country":"中国"}]}"#
                    } else if path.starts_with("/v7/weather/now") {
                        r#"{"code":"200","now":{"temp":"14","feelsLike":"12","text":"多云","windDir":"东北风","windScale":"3","humidity":"72"}}"#
                    } else {
                        r#"{"code":"200","daily":[{"fxDate":"2026-11-26","tempMax":"17","tempMin":"9","textDay":"多云","textNight":"晴"}]}"#
                    };
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let ca = reqwest::Certificate::from_der(&cert_der).expect("certificate");
    (addr, ca, seen)
}

/// The acceptance of the Python plugin settings: `plugins.get_weather` in a migrating user's
/// `data/.config.yaml` becomes get_weather's config and grant, and its key is what the extension
/// sends to the account's own QWeather host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_weather_key_reaches_get_weather_and_its_api_host() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extensions/get_weather");
    assert!(dir.join("get_weather.wasm").is_file(), "run `extensions/build.sh get_weather` first");
    let api_host = "abc123xyz.re.qweatherapi.com";
    let (addr, ca, seen) = qweather_over_https(api_host).await;
    let config = crate::config::load_str(
        include_str!("../../../config.yaml"),
        Some(&format!(
            "plugins:\n  get_weather:\n    api_host: {api_host}\n    api_key: user-weather-key\n    default_location: 杭州\n"
        )),
    )
    .expect("config")
    .config;
    let cache = tempfile::tempdir().expect("tempdir");
    let grants: Vec<(String, Grant)> = config.extension_grants().into_iter().collect();
    let grants: Vec<(&str, Grant)> = grants.iter().map(|(id, grant)| (id.as_str(), grant.clone())).collect();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(api_host, addr)
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let host = host(cache.path(), &grants).with_http_client(client);
    let ext = host.load(&dir).await.expect("get_weather loads with the grant plugins.get_weather gives");
    let result = host
        .call_tool(&ext, "get_weather", r#"{"location":"杭州"}"#, ctx("aa:bb", "zh-CN"))
        .await
        .expect("get_weather answers");
    let text = for_llm(&result).unwrap_or_default();
    assert!(text.contains("杭州") && text.contains("14"), "{text}");
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|(_, key)| key == "user-weather-key"), "every request carries the key: {seen:?}");
    assert!(seen.iter().any(|(path, _)| path.starts_with("/geo/v2/city/lookup")), "{seen:?}");
}

/// The 0.1 adapter: each `tool-action` with its texts becomes the effects the old host applied.
#[test]
fn the_0_1_adapter_turns_actions_into_effects() {
    use super::bindings::xiaozhi::extension::types::{ToolAction as Old, ToolResult as OldResult};
    let convert = |action, result: Option<&str>, response: Option<&str>| {
        ToolResult::from(OldResult { action, result: result.map(Into::into), response: response.map(Into::into) })
            .effects
    };
    assert_eq!(convert(Old::None, Some("r"), Some("s")), vec![]);
    assert_eq!(convert(Old::Response, Some("r"), Some("s")), vec![Effect::Speak("s".into())]);
    assert_eq!(convert(Old::Response, Some("r"), None), vec![Effect::Speak("r".into())]);
    assert_eq!(convert(Old::ReqLlm, Some("r"), Some("s")), vec![Effect::ReplyToLlm("r".into())]);
    assert_eq!(convert(Old::ReqLlm, None, Some("s")), vec![Effect::ReplyToLlm("s".into())]);
    assert_eq!(convert(Old::Record, Some("r"), Some("s")), vec![Effect::Speak("s".into()), Effect::Note("r".into())]);
}

/// `play_music` (0.2, with the SDK) reads the granted music folder through WASI and answers
/// with an announcement and a `play` effect of the file it chose; without the grant it does
/// not load, and the refusal names the key to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn play_music_chooses_a_song_from_the_granted_folder() {
    let dir = builtin_dir("play_music");
    let cache = tempfile::tempdir().expect("tempdir");
    let err = host(cache.path(), &[]).load(&dir).await.err().expect("refused without a grant").to_string();
    assert!(
        err.contains("requests media directory music, not granted in extensions.grants.play_music.media_dirs.music"),
        "{err}"
    );

    let music = tempfile::tempdir().expect("music");
    std::fs::create_dir_all(music.path().join("kids")).expect("mkdir");
    std::fs::write(music.path().join("kids/两只老虎.wav"), crate::audio::decode::wav_bytes(&[0; 1600], 16_000))
        .expect("song");
    std::fs::write(music.path().join("notes.txt"), b"not a song").expect("text");
    let grant =
        Grant { media_dirs: [("music".to_owned(), music.path().to_owned())].into_iter().collect(), ..Grant::default() };
    let host = host(cache.path(), &[("play_music", grant)]);
    let ext = host.load(&dir).await.expect("loads with the grant");
    assert_eq!(ext.manifest.wit, WitVersion::V0_2);
    assert_eq!(ext.tools[0].name, "play_music");

    let result = host
        .call_tool(&ext, "play_music", r#"{"song_name":"两只老虎"}"#, ctx("aa:bb", "zh-CN"))
        .await
        .expect("play_music answers");
    match &result.effects[..] {
        [Effect::Speak(said), Effect::Play(PlayAudio { source: AudioSource::File(path), title })] => {
            assert!(said.contains("《两只老虎》"), "{said}");
            assert_eq!(path, "/music/kids/两只老虎.wav");
            assert_eq!(title.as_deref(), Some("正在播放：《两只老虎》"));
        }
        other => panic!("unexpected effects {other:?}"),
    }
    let random =
        host.call_tool(&ext, "play_music", r#"{"song_name":"random"}"#, ctx("aa:bb", "en")).await.expect("random");
    assert!(matches!(&random.effects[..], [Effect::Speak(_), Effect::Play(_)]), "{random:?}");
    let unknown = host
        .call_tool(&ext, "play_music", r#"{"song_name":"Bohemian Rhapsody"}"#, ctx("aa:bb", "en"))
        .await
        .expect("unknown song");
    assert!(matches!(&unknown.effects[..], [Effect::ReplyToLlm(text)] if text.contains("两只老虎")), "{unknown:?}");
}

/// The caps on what a `context` extension adds and on a streamed chunk's shape and length.
#[test]
fn context_lines_and_stream_chunks_are_capped() {
    let many: Vec<String> = (0..40).map(|i| if i % 2 == 0 { format!(" line {i} ") } else { "  ".into() }).collect();
    let kept = host::capped_lines(&many);
    assert_eq!(kept.len(), host::MAX_CONTEXT_LINES, "blank lines dropped, the rest capped");
    assert_eq!(kept[0], "line 0");
    let long = vec!["字".repeat(host::MAX_CONTEXT_LINE_CHARS + 50)];
    let cut = &host::capped_lines(&long)[0];
    assert!(cut.starts_with(&"字".repeat(host::MAX_CONTEXT_LINE_CHARS)), "{cut}");
    assert!(cut.ends_with("[50 more characters cut]"), "{cut}");

    use super::bindings_v02::xiaozhi::extension::types::PcmChunk as Wit;
    let chunk = |samples: Vec<i16>, sample_rate, channels| Wit { samples, sample_rate, channels };
    let stereo = super::bindings_v02::mono_chunk(chunk(vec![100, 300, -100, -300], 16_000, 2)).expect("stereo");
    assert_eq!(stereo.samples, vec![200, -200], "mixed down to mono");
    for bad in [chunk(vec![1, 2, 3], 16_000, 2), chunk(vec![1], 4_000, 1), chunk(vec![1], 16_000, 3)] {
        assert!(super::bindings_v02::mono_chunk(bad).is_err());
    }
    assert!(super::bindings_v02::mono_chunk(chunk(Vec::new(), 16_000, 1)).is_err(), "an empty chunk");
    let speak = |n: usize| ToolResult { effects: vec![Effect::Speak("hi".into()); n] };
    assert!(host::bounded_effects(speak(host::MAX_EFFECTS)).is_ok());
    assert_eq!(host::bounded_effects(speak(host::MAX_EFFECTS + 1)), Err("33 effects, more than 32".into()));
    let eleven_seconds = vec![0i16; 8_000 * 11];
    let err = super::bindings_v02::mono_chunk(chunk(eleven_seconds, 8_000, 1)).expect_err("too long");
    assert_eq!(err, format!("a chunk is longer than {} s", host::MAX_CHUNK_SECONDS));
}

/// A `stream` source: the doorbell example's chime, pulled through `media.read` chunk by chunk,
/// mixed down to mono, and cut at the playback limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_source_is_pulled_mixed_down_and_cut_at_the_limit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extensions/examples/doorbell");
    assert!(dir.join("doorbell.wasm").is_file(), "run `extensions/build.sh extensions/examples/doorbell` first");
    let cache = tempfile::tempdir().expect("tempdir");
    let host = Arc::new(host(cache.path(), &[]));
    let ext = host.load(&dir).await.expect("doorbell loads");
    let scope = ExtensionScope {
        snapshot: Arc::new(Snapshot { extensions: [("doorbell".to_owned(), Arc::clone(&ext))].into_iter().collect() }),
        host: Arc::clone(&host),
        context: ctx("aa:bb", "en"),
    };
    let total = |max_seconds| {
        let (ext, scope) = (Arc::clone(&ext), scope.clone());
        async move {
            let limits = crate::media::MediaLimits { max_bytes: 1 << 20, max_seconds };
            let source = AudioSource::Stream("chime:880:1200".into());
            let mut chunks = crate::media::open(&source, &ext, &scope, limits).await.expect("the stream opens");
            let mut samples = 0;
            while let Some(crate::audio::chunks::AudioChunk::Pcm { samples: s, sample_rate }) = chunks.recv().await {
                assert_eq!(sample_rate, 16_000);
                samples += s.len();
            }
            samples
        }
    };
    assert_eq!(total(10).await, 16_000 * 1_200 / 1_000, "the whole 1.2 s chime, one sample per frame");
    assert_eq!(total(1).await, 16_000, "cut at media_seconds");
    let err = crate::media::open(
        &AudioSource::Stream("bell".into()),
        &ext,
        &scope,
        crate::media::MediaLimits { max_bytes: 1 << 20, max_seconds: 10 },
    )
    .await
    .expect_err("an unknown stream fails before playing");
    assert!(err.to_string().contains("no stream"), "{err}");
}
