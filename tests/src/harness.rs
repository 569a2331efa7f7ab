//! Starts a real `xiaozhi-server` in the test process: the repository's `config.yaml` with a
//! `data/.config.yaml` override that binds loopback port 0 and points the providers at a
//! [`MockOpenAi`]. The real VAD model and ONNX Runtime from `models/` are used (run
//! `models/fetch.sh` first; the test suite's `tests/run.sh` does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use xiaozhi_server::config::ConfigSource;
use xiaozhi_server::server::{self, RunningServer, ServerOptions};
use xiaozhi_server::simulator::{SimConfig, SimDevice};

use crate::mock::MockOpenAi;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A server under test with its data directory.
pub struct TestServer {
    /// The running server.
    pub server: RunningServer,
    /// Its data directory (holds `.config.yaml`).
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server whose providers are `mock`, with `extra` YAML appended to the override
    /// (top-level keys other than `server`, `models`, `selected_module`, `ASR`, `LLM`, `TTS`, `VAD`).
    pub async fn start(mock: &MockOpenAi, extra: &str) -> anyhow::Result<Self> {
        Self::start_with_server_yaml(mock, "", extra).await
    }

    /// Like [`TestServer::start`], with extra keys inside `server:` (indented by two spaces).
    pub async fn start_with_server_yaml(mock: &MockOpenAi, server_extra: &str, extra: &str) -> anyhow::Result<Self> {
        Self::start_inner(&mock.config_override_yaml(), server_extra, extra, false).await
    }

    /// Like [`TestServer::start`], watching the config files for changes.
    pub async fn start_watched(mock: &MockOpenAi, extra: &str) -> anyhow::Result<Self> {
        Self::start_inner(&mock.config_override_yaml(), "", extra, true).await
    }

    /// Starts a server whose providers are given whole by `providers` (`selected_module` and the
    /// provider dictionaries), e.g. local models with only the LLM on a mock.
    pub async fn start_with_providers(providers: &str) -> anyhow::Result<Self> {
        Self::start_inner(providers, "", "", false).await
    }

    /// The override file (`data/.config.yaml`) of this server.
    pub fn override_path(&self) -> PathBuf {
        self.dir.path().join(".config.yaml")
    }

    /// Starts a server whose base file is `base` (instead of the repository's `config.yaml`),
    /// with the usual test override and `providers`.
    pub async fn start_with_base(base: &Path, providers: &str) -> anyhow::Result<Self> {
        Self::start_from(base, providers, "", "", false).await
    }

    /// Like [`TestServer::start`], with `extensions_dir` searched for extensions too (after the
    /// repository's).
    pub async fn start_with_extensions(mock: &MockOpenAi, extensions_dir: &Path, extra: &str) -> anyhow::Result<Self> {
        let _ = tracing_subscriber_init();
        let dir = tempfile::tempdir()?;
        write_override_with(dir.path(), &mock.config_override_yaml(), "", extra, &[extensions_dir])?;
        let source =
            ConfigSource { base: repo_root().join("config.yaml"), override_path: dir.path().join(".config.yaml") };
        let server =
            server::start(ServerOptions { source, data_dir: dir.path().to_path_buf(), watch_config: false }).await?;
        Ok(Self { server, dir })
    }

    async fn start_inner(providers: &str, server_extra: &str, extra: &str, watch: bool) -> anyhow::Result<Self> {
        Self::start_from(&repo_root().join("config.yaml"), providers, server_extra, extra, watch).await
    }

    async fn start_from(
        base: &Path,
        providers: &str,
        server_extra: &str,
        extra: &str,
        watch: bool,
    ) -> anyhow::Result<Self> {
        let _ = tracing_subscriber_init();
        let dir = tempfile::tempdir()?;
        write_override(dir.path(), providers, server_extra, extra)?;
        let source = ConfigSource { base: base.to_path_buf(), override_path: dir.path().join(".config.yaml") };
        let server =
            server::start(ServerOptions { source, data_dir: dir.path().to_path_buf(), watch_config: watch }).await?;
        Ok(Self { server, dir })
    }

    /// A second handle on this server's embedded store (`store.sqlite3` in its data directory),
    /// to look at what it keeps.
    pub async fn store(&self) -> anyhow::Result<xiaozhi_server::store::embedded::EmbeddedStore> {
        Ok(xiaozhi_server::store::embedded::EmbeddedStore::open(&self.dir.path().join("store.sqlite3")).await?)
    }

    /// The OTA URL devices use.
    pub fn ota_url(&self) -> String {
        format!("http://{}/xiaozhi/ota/", self.server.http_addr)
    }

    /// The WebSocket URL devices use.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/xiaozhi/v1/", self.server.ws_addr)
    }

    /// Connects a simulated device with protocol version `version`.
    pub async fn device(&self, device_id: &str, version: u32) -> anyhow::Result<SimDevice> {
        let cfg = SimConfig {
            url: self.ws_url(),
            device_id: device_id.to_string(),
            protocol_version: version,
            ..SimConfig::default()
        };
        SimDevice::connect(cfg).await
    }
}

/// One metric's value from the server's `GET /metrics` at `http_addr` (the first sample whose
/// name and labels start with `name`; 0 when there is none).
pub async fn metric(http_addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{http_addr}/metrics")).await?.text().await?;
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']));
    let value = line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok());
    Ok(value.unwrap_or(0.0))
}

/// Writes `<data_dir>/.config.yaml`: loopback port 0, the repository's extensions (compile cache
/// in the data dir), the models, a Silero VAD with a 500 ms silence window, then `providers`
/// (`selected_module` and provider dictionaries) and `extra` top-level YAML; `server_extra` goes
/// inside `server:` (indented by two spaces).
pub fn write_override(data_dir: &Path, providers: &str, server_extra: &str, extra: &str) -> anyhow::Result<()> {
    write_override_with(data_dir, providers, server_extra, extra, &[])
}

/// [`write_override`], with `more_extensions` searched for extensions after the repository's.
pub fn write_override_with(
    data_dir: &Path,
    providers: &str,
    server_extra: &str,
    extra: &str,
    more_extensions: &[&Path],
) -> anyhow::Result<()> {
    let models = repo_root().join("models").canonicalize().context("models/ is missing: run models/fetch.sh")?;
    let yaml = format!(
        "server:\n  ip: 127.0.0.1\n  port: 0\n  http_port: 0\n{server_extra}\
         extensions:\n  dirs: [\"{extensions}\"{more}]\n  cache_dir: \"{cache}\"\n\
         models:\n  dir: \"{models}\"\n\
         VAD:\n  SileroVAD:\n    type: silero\n    model_dir: \"{models}\"\n    min_silence_duration_ms: 500\n\
         {providers}{extra}",
        models = models.display(),
        extensions = repo_root().join("extensions").display(),
        more = more_extensions.iter().map(|d| format!(", \"{}\"", d.display())).collect::<String>(),
        cache = data_dir.join("cache").display(),
    );
    std::fs::create_dir_all(data_dir)?;
    std::fs::write(data_dir.join(".config.yaml"), yaml)?;
    Ok(())
}

/// A server in its own process (`test-server`, the same library call as `xiaozhi-server serve`),
/// for tests where several instances share a store or one restarts. Killed when dropped.
pub struct ServerProcess {
    /// Where devices connect.
    pub ws_addr: SocketAddr,
    /// Where OTA and health answer.
    pub http_addr: SocketAddr,
    child: tokio::process::Child,
}

impl ServerProcess {
    /// Starts `binary` (pass `env!("CARGO_BIN_EXE_test-server")`) on `data_dir`, whose
    /// `.config.yaml` the caller wrote (see [`write_override`]), and waits for its addresses.
    pub async fn spawn(binary: &str, data_dir: &Path) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(binary)
            .arg(repo_root().join("config.yaml"))
            .arg(data_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {binary}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .context("the server process did not start within 60 s")??
            .context("the server process exited before listening")?;
        let addrs: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("unexpected output {line:?}"))?;
        let addr = |k: &str| -> anyhow::Result<SocketAddr> {
            addrs[k].as_str().context("missing address")?.parse().context("bad address")
        };
        Ok(Self { ws_addr: addr("ws")?, http_addr: addr("http")?, child })
    }

    /// Connects a simulated device (protocol version 1).
    pub async fn device(&self, device_id: &str) -> anyhow::Result<SimDevice> {
        let cfg = SimConfig {
            url: format!("ws://{}/xiaozhi/v1/", self.ws_addr),
            device_id: device_id.to_string(),
            protocol_version: 1,
            ..SimConfig::default()
        };
        SimDevice::connect(cfg).await
    }

    /// Sends SIGTERM (as `docker stop` does) and waits at most `within` for the process to exit;
    /// the exit status, or an error if it did not exit in time (it is then killed).
    pub async fn terminate(mut self, within: std::time::Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("the server process is gone")?;
        let sent = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status()?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("the server did not exit within {within:?} of SIGTERM")
            }
        }
    }

    /// Stops the process gracefully (closes its stdin: sessions end, memory is saved) and
    /// waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait()).await??;
        anyhow::ensure!(status.success(), "the server process exited with {status}");
        Ok(())
    }
}

fn tracing_subscriber_init() -> Option<()> {
    // Logs help when a test fails; `RUST_LOG=debug cargo test` shows them.
    let filter = std::env::var("RUST_LOG").ok()?;
    tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init().ok()
}

/// What an `abort` during a reply came to, as the device saw it.
pub struct AbortOutcome {
    /// Audio frames that arrived more than `frame` after the abort was sent.
    pub late_frames: usize,
    /// From the abort to `tts stop`.
    pub stop_after: std::time::Duration,
}

/// Sends `abort` and watches the downlink until half a second after `tts stop` (at most 2 s
/// without an event): frames later than one `frame` after the abort, and when `tts stop` came.
pub async fn abort_and_watch(
    device: &mut xiaozhi_server::simulator::SimDevice,
    frame: std::time::Duration,
) -> anyhow::Result<AbortOutcome> {
    use std::time::{Duration, Instant};
    use xiaozhi_server::simulator::SimEvent;
    let aborted_at = Instant::now();
    device.abort().await?;
    let (mut late_frames, mut stop_at) = (0, None);
    while let Some((at, event)) = device.next_event(Duration::from_secs(2)).await {
        match event {
            SimEvent::Audio { .. } if at > aborted_at + frame => late_frames += 1,
            SimEvent::Json(v) if v["type"] == "tts" && v["state"] == "stop" => {
                stop_at.get_or_insert(at);
            }
            _ => {}
        }
        if stop_at.is_some_and(|s: Instant| at > s + Duration::from_millis(500)) {
            break;
        }
    }
    let stop_at = stop_at.ok_or_else(|| anyhow::anyhow!("no tts stop after the abort"))?;
    Ok(AbortOutcome { late_frames, stop_after: stop_at.duration_since(aborted_at) })
}
