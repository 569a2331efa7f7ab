//! A server process for the multi-process tests: `test-server <config.yaml> <data dir>` starts
//! `xiaozhi-server` exactly as `serve` does (same library call), but prints the bound addresses
//! as one JSON line on stdout (`{"ws":"127.0.0.1:…","http":"127.0.0.1:…"}`), since the tests bind
//! port 0. It shuts down gracefully when stdin closes or on SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use tokio::io::AsyncReadExt;
use xiaozhi_server::config::ConfigSource;
use xiaozhi_server::server::{self, ServerOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let base = PathBuf::from(args.next().context("usage: test-server <config.yaml> <data dir>")?);
    let data_dir = PathBuf::from(args.next().context("usage: test-server <config.yaml> <data dir>")?);
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
    let source = ConfigSource { base, override_path: data_dir.join(".config.yaml") };
    let running = server::start(ServerOptions { source, data_dir, watch_config: false }).await?;
    println!("{}", serde_json::json!({"ws": running.ws_addr.to_string(), "http": running.http_addr.to_string()}));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    loop {
        tokio::select! {
            _ = term.recv() => break,
            read = stdin.read(&mut sink) => if matches!(read, Ok(0) | Err(_)) { break },
        }
    }
    running.shutdown().await;
    Ok(())
}
