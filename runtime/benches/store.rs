//! Store benchmarks: `cargo bench -p xiaozhi-server --bench store`.
//!
//! Prints the latency (p50/p99 over sequential operations from one task) of the operations the
//! server makes — a memory `get` (every turn), a `set` (a memory save), a history `push` (every
//! turn, one message pair) — against the embedded SQLite file and a real local `redis-server`
//! (started on a free loopback port; install `redis-server` first).

use std::time::{Duration, Instant};

use xiaozhi_server::config::{StoreConfig, StoreKind};
use xiaozhi_server::store::embedded::EmbeddedStore;
use xiaozhi_server::store::redis::RedisStore;
use xiaozhi_server::store::testing::RedisServer;
use xiaozhi_server::store::{Store, kv_key};

const OPS: usize = 5000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn measure(store: &dyn Store, name: &str) {
    let value = vec![b'x'; 600]; // about a mem_local_short memory
    let message = vec![b'y'; 200];
    let mut timings: Vec<(&str, Vec<Duration>)> = vec![("set", Vec::new()), ("get", Vec::new()), ("push", Vec::new())];
    for i in 0..OPS {
        let key = kv_key("mem_local_short", &format!("dev{}", i % 100), "memory");
        let started = Instant::now();
        store.set(&key, &value, None).await.expect("set");
        timings[0].1.push(started.elapsed());
        let started = Instant::now();
        store.get(&key).await.expect("get");
        timings[1].1.push(started.elapsed());
        let started = Instant::now();
        store.push(&format!("history/dev{}", i % 100), &[message.clone(), message.clone()], 200).await.expect("push");
        timings[2].1.push(started.elapsed());
    }
    for (op, mut samples) in timings {
        samples.sort();
        println!(
            "| {name:<22} | {op:<5} | {:>9.1} µs | {:>9.1} µs |",
            percentile(&samples, 0.5).as_secs_f64() * 1e6,
            percentile(&samples, 0.99).as_secs_f64() * 1e6
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("| {:<22} | {:<5} | {:>12} | {:>12} |", "backend", "op", "p50", "p99");
    println!("|{}|{}|{}|{}|", "-".repeat(24), "-".repeat(7), "-".repeat(14), "-".repeat(14));
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = EmbeddedStore::open(&dir.path().join("store.sqlite3")).await.expect("embedded");
    measure(&embedded, "embedded (SQLite, WAL)").await;
    let server = RedisServer::start().expect("redis-server");
    let config = StoreConfig { kind: StoreKind::Redis, url: server.url(), ..StoreConfig::default() };
    let redis = RedisStore::connect(&config).await.expect("redis");
    measure(&redis, "redis (loopback)").await;
}
