//! The `xiaozhi-server` command line: `serve` (default), `simulate`, `token`, `check-config`,
//! `test-provider`, `bind`, `revoke`, `agent`, `mcp-token`, `data`, `bench`, `health`. No logic lives here; each
//! subcommand calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use xiaozhi_server::config::{self, ConfigSource};
use xiaozhi_server::server::{self, ServerOptions};
use xiaozhi_server::{auth, http, simulator, store};

/// A fast server for xiaozhi ESP32 voice assistants.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The base configuration file.
    #[arg(long, global = true, default_value = "config.yaml", env = "XIAOZHI_CONFIG")]
    config: PathBuf,
    /// The data directory: `.config.yaml` overrides, firmware images (`bin/`), device bindings.
    #[arg(long, global = true, default_value = "data", env = "XIAOZHI_DATA_DIR")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Act as a device: connect, speak a WAV (or type text) and save the reply.
    Simulate(simulator::SimulateArgs),
    /// Load test: many simulated devices holding spoken conversations; prints latency, late
    /// frames, turns and the server's CPU and memory.
    Bench(simulator::bench::BenchArgs),
    /// Print a device token for `Authorization: Bearer <token>`.
    Token {
        /// The device's MAC address (`Device-Id`).
        #[arg(long)]
        device_id: String,
        /// The device's `Client-Id`.
        #[arg(long)]
        client_id: String,
    },
    /// Validate the configuration: a migration report (what of a Python server's config works
    /// here), then the effective result or every problem.
    CheckConfig,
    /// Send one short request to a configured provider entry (`ASR.<name>`, `LLM.<name>`,
    /// `TTS.<name>`) and print the latency to its first result and the outcome.
    TestProvider(xiaozhi_server::tester::TestProviderArgs),
    /// Bind a device by the 6-digit activation code it shows.
    Bind {
        /// The code.
        code: String,
    },
    /// Revoke every token issued so far to a device (its next OTA check gets a new one).
    Revoke {
        /// The device's MAC address (`Device-Id`).
        #[arg(long)]
        device_id: String,
    },
    /// Create, change, list and delete agents (per-device settings), and assign them to devices.
    #[command(subcommand)]
    Agent(xiaozhi_server::agents::cli::AgentCommand),
    /// Issue, revoke or list the tokens tool servers connect to the MCP endpoint with.
    #[command(subcommand)]
    McpToken(McpTokenCommand),
    /// Export, import or inspect what the store holds about devices (memory, chat history).
    #[command(subcommand)]
    Data(store::cli::DataCommand),
    /// Ask the running server's `GET /health` on this machine (the container HEALTHCHECK);
    /// exits non-zero unless it answers 200.
    Health {
        /// Address to ask; default: 127.0.0.1 and the configured `server.http_port`.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

/// `mcp-token` subcommands.
#[derive(Subcommand)]
enum McpTokenCommand {
    /// Issue a token and print it (shown once: only its hash is stored).
    Issue {
        /// Only this device (`Device-Id`) sees the tools; default: every device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Revoke a token, given as itself or as the id `list` shows.
    Revoke {
        /// The token or its id.
        token: String,
    },
    /// List the issued tokens: id, who sees the tools, when issued.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = ConfigSource { base: cli.config.clone(), override_path: cli.data_dir.join(".config.yaml") };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(source, cli.data_dir),
        Command::Bench(args) => {
            init_logging("warn");
            runtime().and_then(|rt| rt.block_on(simulator::bench::run(args)))
        }
        Command::Simulate(args) => {
            init_logging("warn");
            runtime().and_then(|rt| rt.block_on(simulator::run(args)))
        }
        Command::Token { device_id, client_id } => token(&source, &device_id, &client_id),
        Command::CheckConfig => check_config(&source),
        Command::TestProvider(args) => {
            init_logging("warn");
            runtime().and_then(|rt| rt.block_on(xiaozhi_server::tester::run(&source, args)))
        }
        Command::Bind { code } => runtime().and_then(|rt| rt.block_on(bind(&source, &cli.data_dir, &code))),
        Command::Revoke { device_id } => {
            runtime().and_then(|rt| rt.block_on(revoke(&source, &cli.data_dir, &device_id)))
        }
        Command::Agent(command) => {
            init_logging("warn");
            runtime().and_then(|rt| rt.block_on(xiaozhi_server::agents::cli::run(command, &source, &cli.data_dir)))
        }
        Command::McpToken(command) => runtime().and_then(|rt| rt.block_on(mcp_token(&source, &cli.data_dir, command))),
        Command::Data(command) => {
            init_logging("warn");
            runtime().and_then(|rt| rt.block_on(store::cli::run(command, &source, &cli.data_dir)))
        }
        Command::Health { addr, timeout } => health(&source, addr, timeout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: `docker logs` and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).try_init();
}

fn serve(source: ConfigSource, data_dir: PathBuf) -> anyhow::Result<()> {
    let level = config::load(&source).map(|l| l.config.log_filter()).unwrap_or_else(|_| "info".into());
    init_logging(&level);
    let rt = runtime()?;
    rt.block_on(async {
        let running = server::start(ServerOptions { source, data_dir, watch_config: true }).await?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate() => {}
        }
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}

fn token(source: &ConfigSource, device_id: &str, client_id: &str) -> anyhow::Result<()> {
    let loaded = config::load(source)?;
    let Some(key) = loaded.config.auth_key() else {
        anyhow::bail!("server.auth_key is not set: tokens need a fixed key (set it in data/.config.yaml)");
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    println!("{}", auth::issue_token(&key, client_id, device_id, now));
    Ok(())
}

/// Binds the device waiting with `code`, in the store the configuration names (the one the
/// running server uses).
async fn bind(source: &ConfigSource, data_dir: &std::path::Path, code: &str) -> anyhow::Result<()> {
    let config = config::load(source)?.config;
    let state = store::open(&config.store, data_dir).await?;
    let device = http::activation::bind(state.as_ref(), code).await?;
    println!("device {device} is bound");
    Ok(())
}

/// Revokes the device's tokens in the store the configuration names.
async fn revoke(source: &ConfigSource, data_dir: &std::path::Path, device_id: &str) -> anyhow::Result<()> {
    let config = config::load(source)?.config;
    let state = store::open(&config.store, data_dir).await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let lifetime = config.server.auth.expire_seconds.unwrap_or(auth::DEFAULT_EXPIRE_SECONDS);
    auth::revoke(state.as_ref(), device_id, now, std::time::Duration::from_secs(lifetime)).await?;
    println!("tokens of {device_id} issued until now are revoked");
    Ok(())
}

/// `mcp-token`: the MCP endpoint's tokens, in the store the configuration names.
async fn mcp_token(source: &ConfigSource, data_dir: &std::path::Path, command: McpTokenCommand) -> anyhow::Result<()> {
    use xiaozhi_server::mcp::endpoint;
    let config = config::load(source)?.config;
    let state = store::open(&config.store, data_dir).await?;
    match command {
        McpTokenCommand::Issue { device } => {
            let device = device.map(|d| d.trim().to_owned()).filter(|d| !d.is_empty());
            let token = endpoint::issue(state.as_ref(), device.as_deref()).await?;
            println!("{token}");
            let path = config.server.mcp_endpoint_path.trim_end_matches('/');
            eprintln!("connect tool servers to ws://<host>:{}{path}/?token={token}", config.server.port);
        }
        McpTokenCommand::Revoke { token } => match endpoint::revoke(state.as_ref(), &token).await? {
            0 => anyhow::bail!("no such token (give the token or the id `mcp-token list` shows)"),
            _ => println!("revoked"),
        },
        McpTokenCommand::List => {
            for t in endpoint::list(state.as_ref()).await? {
                println!("{}\t{}\tissued {}", t.id, t.scope, t.issued);
            }
        }
    }
    Ok(())
}

/// Probes `/health` on loopback; the port comes from the configuration unless `addr` is given.
fn health(source: &ConfigSource, addr: Option<std::net::SocketAddr>, timeout: u64) -> anyhow::Result<()> {
    let addr = match addr {
        Some(addr) => addr,
        None => (std::net::Ipv4Addr::LOCALHOST, config::load(source)?.config.server.http_port).into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = rt.block_on(http::probe::health(addr, std::time::Duration::from_secs(timeout)))?;
    println!("{body}");
    Ok(())
}

/// Prints the migration report of the merged files, then the effective configuration, or every
/// problem that refuses it.
fn check_config(source: &ConfigSource) -> anyhow::Result<()> {
    let document = config::load::merged_document(source)?;
    let dirs: Vec<std::path::PathBuf> = document
        .get("extensions")
        .and_then(|e| e.get("dirs"))
        .and_then(|d| serde_yaml_ng::from_value(d.clone()).ok())
        .unwrap_or_else(|| config::ExtensionsConfig::default().dirs);
    println!("{}", config::migrate::report(&document, &config::migrate::installed_extensions(&dirs)));
    let data_dir = source.override_path.parent().unwrap_or(std::path::Path::new("data"));
    println!("{}", xiaozhi_server::mcp::servers::report(data_dir));
    match config::load(source) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            print!("{}", loaded.config.effective_yaml());
            Ok(())
        }
        Err(e) => {
            let problems = e.problems();
            for problem in &problems {
                eprintln!("error: {problem}");
            }
            anyhow::bail!("the configuration is refused: {} problem(s), listed above", problems.len())
        }
    }
}
