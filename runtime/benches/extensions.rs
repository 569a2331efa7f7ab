//! Extension benchmarks: `cargo bench -p xiaozhi-server --bench extensions`.
//!
//! Prints the tool call overhead of the WebAssembly `get_time` extension (a fresh store, an
//! instantiation and the call; p50/p99) next to a native call doing the same work, the load time
//! with and without the compile cache, and the time from a new `.wasm` landing in the watched
//! directory to it serving; the size, load time and call time of `get_lunar` (which carries
//! the `tyme4rs` calendar); the size and cold/cached load time of every built-in; the call of a
//! `get_time` built against WIT 0.2 (SDK) beside the previous release's 0.1.0 build (through the
//! adapter);
//! and the time from a `play_music` call to its first decoded audio. Needs the guests built by
//! `extensions/build.sh`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xiaozhi_server::config::{ExtensionsConfig, Grant};
use xiaozhi_server::extensions::registry::{self, Registry};
use xiaozhi_server::extensions::{CallContext, Effect, ExtensionHost, ExtensionScope, HostServices, Manifest};
use xiaozhi_server::store::memory::MemoryStore;

fn guest(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../extensions").join(name);
    assert!(dir.join(format!("{name}.wasm")).exists(), "{} is not built: run extensions/build.sh", dir.display());
    dir
}

fn host(cache: &Path) -> Arc<ExtensionHost> {
    granted_host(cache, Default::default())
}

/// A host granting each built-in what its manifest asks for (a media directory: `media`).
fn host_for_builtins(cache: &Path, media: &Path) -> Arc<ExtensionHost> {
    let mut grants = std::collections::BTreeMap::new();
    for dir in builtins() {
        let text = std::fs::read_to_string(dir.join("extension.toml")).expect("manifest");
        let manifest = Manifest::parse(&text).expect("manifest parses");
        let caps = &manifest.capabilities;
        let grant = Grant {
            http_hosts: caps.http_hosts.clone(),
            kv: caps.kv,
            llm: caps.llm,
            media_dirs: caps.media_dirs.iter().map(|name| (name.clone(), media.to_owned())).collect(),
            ..Grant::default()
        };
        grants.insert(manifest.id, grant);
    }
    granted_host(cache, grants)
}

/// Every built-in extension directory (with an `extension.toml`), in name order.
fn builtins() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../extensions");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("extensions/")
        .flatten()
        .map(|e| e.path())
        .filter(|d| d.join("extension.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn granted_host(cache: &Path, grants: std::collections::BTreeMap<String, Grant>) -> Arc<ExtensionHost> {
    let config = ExtensionsConfig { dirs: Vec::new(), cache_dir: cache.to_owned(), grants };
    Arc::new(
        ExtensionHost::new(
            &config,
            HostServices { llm: None, store: Arc::new(MemoryStore::new()), metrics: None, kv: Default::default() },
        )
        .expect("host"),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn row(what: &str, figure: String) {
    println!("| {what:<58} | {figure:>30} |");
}

/// The native twin of `get_time`'s work: format the date and time for a fixed offset.
fn native_get_time() -> String {
    let now = chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("offset"));
    format!("当前日期：{}，当前时间：{}", now.format("%Y年%m月%d日 %A"), now.format("%H:%M:%S"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("| {:<58} | {:>30} |", "benchmark", "figure");
    println!("|{}|{}|", "-".repeat(60), "-".repeat(32));
    let cache = tempfile::tempdir().expect("tempdir");
    let ctx = CallContext { device_id: "dev".into(), session_id: "s".into(), language: "en".into() };

    // get_lunar (the tyme4rs calendar inside): size, load, call.
    let bytes = std::fs::metadata(guest("get_lunar").join("get_lunar.wasm")).expect("get_lunar.wasm").len();
    let lunar_cache = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    drop(host(lunar_cache.path()).load(&guest("get_lunar")).await.expect("load"));
    let cold_ms = started.elapsed();
    let lunar_host = host(lunar_cache.path());
    let started = Instant::now();
    let lunar = lunar_host.load(&guest("get_lunar")).await.expect("load");
    let cached_ms = started.elapsed();
    row("get_lunar.wasm size", format!("{} KiB", bytes / 1024));
    row(
        "load get_lunar, compiling / from the compile cache",
        format!("{:.1} / {:.1} ms", cold_ms.as_secs_f64() * 1e3, cached_ms.as_secs_f64() * 1e3),
    );
    let mut calls = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        lunar_host.call_tool(&lunar, "get_lunar", r#"{"query":"宜忌"}"#, ctx.clone()).await.expect("call");
        calls.push(t.elapsed());
    }
    calls.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    row(
        "get_lunar call p50/p99",
        format!("{:.0} / {:.0} µs", us(percentile(&calls, 0.5)), us(percentile(&calls, 0.99))),
    );

    // Load: cold (compile) vs from the compile cache (a second host on the same cache dir, as
    // after a restart). get_time as the previous release built it (WIT 0.1.0, through the
    // adapter), the same tool built against 0.2 with the SDK further down.
    let get_time_01 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/extensions/testdata/get_time-0.1.0");
    let started = Instant::now();
    let cold = host(cache.path()).load(&get_time_01).await.expect("load");
    let cold_ms = started.elapsed();
    assert!(!cold.from_cache);
    let host = host(cache.path());
    let started = Instant::now();
    let ext = host.load(&get_time_01).await.expect("load");
    let cached_ms = started.elapsed();
    assert!(ext.from_cache);
    row("load get_time, compiling (no cache)", format!("{:.1} ms", cold_ms.as_secs_f64() * 1e3));
    row("load get_time, from the compile cache", format!("{:.1} ms", cached_ms.as_secs_f64() * 1e3));

    // Calls.
    let mut wasm = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        host.call_tool(&ext, "get_time", "{}", ctx.clone()).await.expect("call");
        wasm.push(t.elapsed());
    }
    let mut native = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        std::hint::black_box(native_get_time());
        native.push(t.elapsed());
    }
    wasm.sort();
    native.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    row(
        "get_time call, wasm (fresh store + instantiate + call) p50/p99",
        format!("{:.0} / {:.0} µs", us(percentile(&wasm, 0.5)), us(percentile(&wasm, 0.99))),
    );
    row(
        "same work natively p50/p99",
        format!("{:.1} / {:.1} µs", us(percentile(&native, 0.5)), us(percentile(&native, 0.99))),
    );
    row(
        "overhead of the extension call p50",
        format!("{:.0} µs", us(percentile(&wasm, 0.5)) - us(percentile(&native, 0.5))),
    );

    // The same tool, get_time, built against WIT 0.2 with the SDK beside the previous release's
    // 0.1.0 build (whose text the adapter turns into an effect): the whole call, fresh store and
    // instance, same work inside.
    let get_time_02 = host.load(&guest("get_time")).await.expect("load");
    let mut v02 = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        host.call_tool(&get_time_02, "get_time", "{}", ctx.clone()).await.expect("call");
        v02.push(t.elapsed());
    }
    v02.sort();
    row(
        "get_time 0.2.0 (SDK) call p50/p99",
        format!("{:.0} / {:.0} µs", us(percentile(&v02, 0.5)), us(percentile(&v02, 0.99))),
    );
    row(
        "get_time 0.1.0 (previous release, adapter) call p50/p99",
        format!("{:.0} / {:.0} µs", us(percentile(&wasm, 0.5)), us(percentile(&wasm, 0.99))),
    );

    // Every built-in: size, load compiling / from the compile cache.
    let media = tempfile::tempdir().expect("media");
    let samples: Vec<i16> = (0..48_000).map(|i| ((i as f32 * 0.05).sin() * 8_000.0) as i16).collect();
    std::fs::write(media.path().join("tone.wav"), xiaozhi_server::audio::decode::wav_bytes(&samples, 16_000))
        .expect("song");
    let builtin_cache = tempfile::tempdir().expect("tempdir");
    for dir in builtins() {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let bytes = std::fs::metadata(dir.join(format!("{name}.wasm"))).map(|m| m.len()).unwrap_or_default();
        let started = Instant::now();
        let cold = host_for_builtins(builtin_cache.path(), media.path()).load(&dir).await;
        let cold_ms = started.elapsed();
        let started = Instant::now();
        let cached = host_for_builtins(builtin_cache.path(), media.path()).load(&dir).await;
        let cached_ms = started.elapsed();
        let figure = match (cold, cached) {
            (Ok(_), Ok(again)) if again.from_cache => format!(
                "{} KiB; {:.1} / {:.1} ms",
                bytes / 1024,
                cold_ms.as_secs_f64() * 1e3,
                cached_ms.as_secs_f64() * 1e3
            ),
            (Err(e), _) | (_, Err(e)) => format!("{} KiB; not loaded: {e}", bytes / 1024),
            _ => format!("{} KiB; the second load missed the cache", bytes / 1024),
        };
        row(&format!("{name}: size; load compiling / cached"), figure);
    }

    // play_music: from the call to the first decoded chunk of the song (the speaker takes it
    // from there; the announcement's speech is the TTS's time and not counted here).
    let music_root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(music_root.path().join("play_music")).expect("mkdir");
    for file in ["extension.toml", "play_music.wasm"] {
        std::fs::copy(guest("play_music").join(file), music_root.path().join("play_music").join(file)).expect("copy");
    }
    let music_host = host_for_builtins(builtin_cache.path(), media.path());
    let registry = Registry::new(Arc::clone(&music_host), vec![music_root.path().to_owned()]);
    registry.reload().await;
    let snapshot = registry.snapshot();
    let player = snapshot.extensions.get("play_music").cloned().expect("play_music serves");
    let scope = ExtensionScope { snapshot, host: Arc::clone(&music_host), context: ctx.clone() };
    let limits = xiaozhi_server::media::MediaLimits { max_bytes: 64 << 20, max_seconds: 1200 };
    let mut first_audio = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let result =
            music_host.call_tool(&player, "play_music", r#"{"song_name":"tone"}"#, ctx.clone()).await.expect("call");
        let Some(Effect::Play(play)) = result.effects.iter().find(|e| matches!(e, Effect::Play(_))).cloned() else {
            panic!("no play effect: {result:?}")
        };
        let mut chunks = xiaozhi_server::media::open(&play.source, &player, &scope, limits).await.expect("open");
        chunks.recv().await.expect("a first chunk");
        first_audio.push(t.elapsed());
    }
    first_audio.sort();
    row(
        "play_music call -> first decoded audio (WAV) p50/p99",
        format!("{:.0} / {:.0} µs", us(percentile(&first_audio, 0.5)), us(percentile(&first_audio, 0.99))),
    );

    // Hot swap: file landing → new version serving, alternating two components.
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("swap");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let manifest = std::fs::read_to_string(get_time_01.join("extension.toml")).expect("manifest");
    let manifest = manifest.replace("id = \"get_time\"", "id = \"swap\"");
    // get_time 0.1.0 and handle_exit_intent (0.2) alternate: each lands with its manifest.
    let manifests = [manifest.clone(), manifest.replace("xiaozhi:extension@0.1.0", "xiaozhi:extension@0.2.0")];
    std::fs::write(dir.join("extension.toml"), &manifests[0]).expect("write");
    let versions = [
        std::fs::read(get_time_01.join("get_time.wasm")).expect("wasm"),
        std::fs::read(guest("handle_exit_intent").join("handle_exit_intent.wasm")).expect("wasm"),
    ];
    let tools = ["get_time", "handle_exit_intent"];
    std::fs::write(dir.join("swap.wasm"), &versions[0]).expect("write");
    let registry = Registry::new(Arc::clone(&host), vec![root.path().to_owned()]);
    registry.reload().await;
    registry::watch(Arc::clone(&registry), tokio_util::sync::CancellationToken::new());
    let mut swaps = Vec::new();
    for i in 1..=10 {
        let v = i % 2;
        // Make each landing a new file (its bytes change) so the compile cache is not what is
        // measured on the first two swaps only: from the third on, both versions are cached.
        std::fs::write(dir.join("extension.toml"), &manifests[v]).expect("manifest");
        let tmp = dir.join("swap.wasm.tmp");
        std::fs::write(&tmp, &versions[v]).expect("write");
        let landed = Instant::now();
        std::fs::rename(&tmp, dir.join("swap.wasm")).expect("rename");
        loop {
            if registry.snapshot().extensions.get("swap").is_some_and(|e| e.tools[0].name == tools[v]) {
                break;
            }
            assert!(landed.elapsed() < Duration::from_secs(10), "swap {i} never served");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        swaps.push(landed.elapsed());
    }
    let first_two: Vec<_> = swaps[..2].to_vec();
    let mut rest = swaps[2..].to_vec();
    rest.sort();
    row(
        "file landed -> new version serving, first sight (compile)",
        format!("{:.0} / {:.0} ms", first_two[0].as_secs_f64() * 1e3, first_two[1].as_secs_f64() * 1e3),
    );
    row(
        "file landed -> new version serving, cached code, p50",
        format!("{:.0} ms", percentile(&rest, 0.5).as_secs_f64() * 1e3),
    );
}
