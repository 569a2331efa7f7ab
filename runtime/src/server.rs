//! The accept loops, routing, the WebSocket upgrade and graceful shutdown.
//!
//! Two listeners (`server.port` for devices, `server.http_port` for OTA) share one router: a
//! WebSocket upgrade on `/xiaozhi/v1/` becomes a device session, one on
//! `server.mcp_endpoint_path` a tool server of the MCP endpoint ([`crate::mcp::endpoint`]: token
//! checked before the upgrade), everything else goes to [`crate::http::route`]. This module never parses frames or audio.
//!
//! Start-up order: load and validate the config, load the ONNX Runtime library and the VAD model,
//! build the providers, bind, serve. A config change (file watcher) rebuilds the providers for
//! new sessions; a change that fails to build keeps the previous ones.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{self, Config, ConfigSource};
use crate::connection::ws::{self, Framing};
use crate::extensions::{ExtensionHost, HostServices, Registry};
use crate::http::{self, Caller, HttpContext};
use crate::onnx;
use crate::services::{ModelCache, Services};
use crate::session::{self, DeviceInfo};
use crate::store::{self, Store};

/// The WebSocket path devices connect to.
pub const WS_PATH: &str = "/xiaozhi/v1";

/// Longest `Device-Id` or `Client-Id`, bytes (a MAC address has 17, a UUID 36).
const MAX_ID_BYTES: usize = 128;

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `config.yaml` and `data/.config.yaml`.
    pub source: ConfigSource,
    /// The data directory (`data/`): overrides, firmware images, bindings.
    pub data_dir: PathBuf,
    /// Whether to watch the config files and apply valid changes to new sessions.
    pub watch_config: bool,
}

/// A running server; dropping it does not stop it, call [`RunningServer::shutdown`].
pub struct RunningServer {
    /// Where devices connect (WebSocket).
    pub ws_addr: SocketAddr,
    /// Where OTA and health answer.
    pub http_addr: SocketAddr,
    /// The built-in MQTT endpoint and its UDP audio socket, when `mqtt.enabled`.
    pub mqtt_addrs: Option<(SocketAddr, SocketAddr)>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    _watcher: Option<config::watch::ConfigWatcher>,
    mcp_endpoint: Arc<crate::mcp::endpoint::Hub>,
    mcp_servers: Arc<crate::mcp::servers::McpServers>,
}

impl RunningServer {
    /// Tells every session to finish and waits until all connections are gone.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The tool servers connected to the MCP endpoint.
    pub fn mcp_endpoint(&self) -> Arc<crate::mcp::endpoint::Hub> {
        Arc::clone(&self.mcp_endpoint)
    }

    /// The MCP servers of `data/.mcp_server_settings.json`.
    pub fn mcp_servers(&self) -> Arc<crate::mcp::servers::McpServers> {
        Arc::clone(&self.mcp_servers)
    }

    /// A token that fires when the server shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

struct App {
    services: watch::Receiver<Arc<Services>>,
    /// The services of each agent in use, over the current ones.
    agents: Arc<crate::agents::AgentServices<Services>>,
    http: HttpContext,
    /// The port the HTTP listener really bound (the vision URL devices are given).
    http_port: u16,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Loads everything, binds both ports and starts serving in the background.
pub async fn start(options: ServerOptions) -> anyhow::Result<RunningServer> {
    let loaded = config::load(&options.source)?;
    for warning in &loaded.warnings {
        tracing::warn!("config: {warning}");
    }
    let config = Arc::new(loaded.config);
    let library = config.onnxruntime_path();
    onnx::init(&library).with_context(|| format!("ONNX Runtime ({})", library.display()))?;
    let shutdown = CancellationToken::new();
    let state = store::open(&config.store, &options.data_dir)
        .await
        .with_context(|| format!("opening the store ({:?})", config.store.kind))?;
    tracing::info!("state in {}", state.describe());
    let metrics = crate::metrics::Metrics::new();
    let extensions = start_extensions(&config, Arc::clone(&state), Arc::clone(&metrics), &shutdown).await;
    let first = Arc::clone(&config);
    let instance: Arc<str> = Arc::from(instance_name(&config).as_str());
    let announced = Arc::clone(&instance);
    let services_instance = Arc::clone(&instance);
    let (services, cache) = tokio::task::spawn_blocking(move || {
        let mut cache = ModelCache::new(state, announced, metrics);
        cache.extensions = extensions;
        Services::build(first, &mut cache).map(|services| (services, cache))
    })
    .await??;
    let extensions = services.extensions.clone();
    let state = Arc::clone(&services.store);
    let metrics = Arc::clone(&services.metrics);
    let (config_tx, config_rx) = watch::channel(Arc::clone(&config));
    // One model cache for the configuration's rebuilds and the agents' builds (each on a blocking
    // thread, one at a time).
    let cache = Arc::new(std::sync::Mutex::new(cache));
    let agent_cache = Arc::clone(&cache);
    let agents = Arc::new(crate::agents::AgentServices::new(Box::new(move |config| {
        let mut cache = agent_cache.lock().unwrap_or_else(|p| p.into_inner());
        Services::build(Arc::new(config), &mut cache).map(Arc::new).map_err(|e| e.to_string())
    })));
    let mcp_endpoint = Arc::clone(&services.mcp_endpoint);
    let mcp_servers = Arc::clone(&services.mcp_servers);
    let (services_tx, services_rx) = watch::channel(Arc::new(services));

    let (key, generated) = crate::auth::resolve_key(config.auth_key());
    if generated && config.server.auth.enabled {
        tracing::warn!(
            "server.auth_key is not set: device tokens are signed with a random key and stop working on restart"
        );
    }
    if !config.server.auth.enabled && !is_loopback_bind(&config.server.ip) {
        tracing::warn!(
            "server.auth.enabled is false and the server listens on {}: any device (or anyone) that reaches these \
             ports can talk to it; set server.auth.enabled: true and server.auth_key to require device tokens",
            config.server.ip
        );
    }

    let ws_listener = TcpListener::bind((config.server.ip.as_str(), config.server.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.server.ip, config.server.port))?;
    let ws_addr = ws_listener.local_addr()?;
    let http_listener = TcpListener::bind((config.server.ip.as_str(), config.server.http_port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.server.ip, config.server.http_port))?;
    let http_addr = http_listener.local_addr()?;
    let mqtt = match config.mqtt.enabled {
        true => Some(bind_mqtt(&config, Arc::clone(&metrics), &shutdown).await?),
        false => None,
    };

    let tasks = TaskTracker::new();
    let app = Arc::new(App {
        services: services_rx,
        agents,
        http: HttpContext {
            config: config_rx.clone(),
            data_dir: options.data_dir.clone(),
            auth_key: Arc::from(key.as_str()),
            ws_port: ws_addr.port(),
            mqtt_port: mqtt.as_ref().map(|sockets| sockets.port),
            extensions,
            store: state,
            metrics,
            new_devices: Arc::new(http::limit::RateLimit::new()),
            seen_devices: Arc::new(http::limit::RateLimit::new()),
            vision: Arc::new(http::vision::Gate::default()),
            console: Arc::default(),
        },
        http_port: http_addr.port(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    });

    let watcher = if options.watch_config {
        let watcher = config::watch::spawn_watcher(options.source.clone(), config_tx)?;
        if config.store.kind == config::StoreKind::Redis
            && let Err(e) = store::announce::spawn(
                &config.store,
                instance,
                config_rx.clone(),
                {
                    let check = watcher.checker();
                    move |_: &str| check.check_now()
                },
                shutdown.clone(),
            )
        {
            tracing::warn!("config changes are not announced to other instances: {e}");
        }
        Some(watcher)
    } else {
        drop(config_tx);
        None
    };
    mcp_servers.watch(&options.data_dir, config_rx.clone(), shutdown.clone(), &tasks);
    tasks.spawn(rebuild_services_on_change(config_rx, services_tx, cache, shutdown.clone()));
    tasks.spawn(accept_loop(ws_listener, Arc::clone(&app), Port::WebSocket));
    tasks.spawn(accept_loop(http_listener, Arc::clone(&app), Port::Http));
    tracing::info!("WebSocket on ws://{ws_addr}{WS_PATH}/, OTA on http://{http_addr}/xiaozhi/ota/");
    let mut mqtt_addrs = None;
    if let Some(MqttSockets { listener, udp, port }) = mqtt {
        let udp_addr = udp.local_addr()?;
        let starter = Arc::clone(&app);
        let start: crate::connection::mqtt::StartSession = Arc::new(move |new| {
            let app = Arc::clone(&starter);
            starter.tasks.spawn(mqtt_session(app, new));
        });
        let metrics = Arc::clone(&app.http.metrics);
        let config = app.http.config.clone();
        match listener {
            Some(listener) => {
                let mqtt_addr = listener.local_addr()?;
                tracing::info!("MQTT on {mqtt_addr}, UDP audio on {udp_addr}");
                mqtt_addrs = Some((mqtt_addr, udp_addr));
                tasks.spawn(crate::connection::mqtt::serve(listener, config, udp, metrics, start, shutdown.clone()));
            }
            None => {
                tracing::info!("MQTT fleet mode: devices on the broker (port {port} in OTA), UDP audio on {udp_addr}");
                mqtt_addrs = Some((SocketAddr::new(udp_addr.ip(), port), udp_addr));
                let store = Arc::clone(&app.http.store);
                let instance = Arc::clone(&services_instance);
                tasks.spawn(crate::connection::broker::serve(
                    config,
                    udp,
                    metrics,
                    start,
                    store,
                    instance,
                    shutdown.clone(),
                ));
            }
        }
    }
    let console_path = config.console.path.trim_end_matches('/');
    if config.console.password.is_empty() {
        tracing::info!("the console is off: set console.password in data/.config.yaml to turn it on");
    } else {
        tracing::info!("console API on http://{http_addr}{console_path}/api/ (sign in with console.password)");
    }
    Ok(RunningServer { ws_addr, http_addr, mqtt_addrs, shutdown, tasks, _watcher: watcher, mcp_endpoint, mcp_servers })
}

/// The MQTT transport's sockets: the built-in endpoint's TCP port (none in fleet mode, where the
/// devices are on the external broker) and the UDP audio socket.
struct MqttSockets {
    listener: Option<TcpListener>,
    udp: Arc<crate::connection::udp::UdpEndpoint>,
    /// The port devices are given in OTA: ours, or the broker's.
    port: u16,
}

/// Binds the MQTT transport's sockets (`mqtt:`).
async fn bind_mqtt(
    config: &Config,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<MqttSockets> {
    let ip = config.server.ip.as_str();
    let (listener, port) = match config.mqtt.broker_address() {
        Some(broker) => (None, broker.map_err(anyhow::Error::msg)?.1),
        None => {
            let listener = TcpListener::bind((ip, config.mqtt.port))
                .await
                .with_context(|| format!("cannot listen for MQTT on {ip}:{}", config.mqtt.port))?;
            let port = listener.local_addr()?.port();
            (Some(listener), port)
        }
    };
    let udp_addr = tokio::net::lookup_host((ip, config.mqtt.udp_port))
        .await?
        .next()
        .with_context(|| format!("{ip} is not an address"))?;
    let udp = crate::connection::udp::UdpEndpoint::start(udp_addr, metrics, shutdown.clone())
        .await
        .with_context(|| format!("cannot bind UDP {udp_addr}"))?;
    Ok(MqttSockets { listener, udp, port })
}

/// Runs one session the MQTT endpoint opened: the activation check, the device's services, then
/// the same session as over WebSocket.
async fn mqtt_session(app: Arc<App>, new: crate::connection::mqtt::NewSession) {
    let crate::connection::mqtt::NewSession { identity, connection, outbox, local_addr } = new;
    let config = Arc::clone(&app.http.config.borrow());
    let (device_id, client_id) = (identity.device_id, identity.client_id);
    // In fleet mode the broker authenticates devices and their client id is not known here: the
    // device must be bound, with whatever Client-Id.
    let admitted = async || match client_id.as_str() {
        "" => http::activation::binding(app.http.store.as_ref(), &device_id).await.ok().flatten().is_some(),
        client_id => http::activation::admits(app.http.store.as_ref(), &device_id, client_id).await,
    };
    if config.activation.enabled && !admitted().await {
        tracing::warn!(device = %device_id, "MQTT session refused: device not activated (or bound with another Client-Id)");
        outbox.close("device not activated").await;
        return;
    }
    let host = match local_addr.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let device = DeviceInfo { device_id, client_id, vision: vision_offer(&app, &config, Some(&host)) };
    let services = Arc::clone(&app.services.borrow());
    let services = app.services_for(services, &device.device_id).await;
    session::run(connection, outbox, device, services, app.shutdown.clone()).await;
}

/// With a vision model selected, where the device is told to post photos: our HTTP port on the
/// host it reached us at (or `server.vision_explain`).
fn vision_offer(app: &App, config: &Config, host: Option<&str>) -> Option<crate::vision::VisionOffer> {
    config.providers.vllm.as_ref().map(|_| crate::vision::VisionOffer {
        url: crate::vision::endpoint_url(
            &config.server.vision_explain,
            host,
            &http::ota::configured_host(config),
            app.http_port,
        ),
        key: Arc::clone(&app.http.auth_key),
        lifetime: config.limits.vision_token_seconds,
    })
}

/// Starts the WebAssembly extension host, loads the extension folders and watches them. A host
/// that cannot start is logged and the server runs without extensions.
async fn start_extensions(
    config: &Config,
    store: Arc<dyn Store>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: &CancellationToken,
) -> Option<Arc<Registry>> {
    let llm = match crate::llm::build(&config.providers.llm) {
        Ok(llm) => Some(llm),
        Err(e) => {
            tracing::warn!("extensions get no LLM: {e}");
            None
        }
    };
    let services =
        HostServices { llm, store, metrics: Some(metrics), kv: crate::extensions::host::KvLimits::of(&config.limits) };
    // `plugins.<id>` (the Python server's plugin settings) feed the grants.
    let extensions = crate::config::ExtensionsConfig { grants: config.extension_grants(), ..config.extensions.clone() };
    let host = match ExtensionHost::new(&extensions, services) {
        Ok(host) => Arc::new(host),
        Err(e) => {
            tracing::error!("the extension host cannot start, running without extensions: {e:#}");
            return None;
        }
    };
    let registry = Registry::new(host, config.extensions.dirs.clone());
    let serving = registry.reload().await;
    tracing::info!("{serving} extension(s) loaded from {:?}", config.extensions.dirs);
    crate::extensions::registry::watch(Arc::clone(&registry), shutdown.clone());
    Some(registry)
}

/// This instance's name in the device registry: `store.instance_id`, else the host name and
/// the WebSocket port.
fn instance_name(config: &Config) -> String {
    if !config.store.instance_id.trim().is_empty() {
        return config.store.instance_id.trim().to_owned();
    }
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let host = if host.is_empty() { "localhost".to_owned() } else { host };
    format!("{host}:{}", config.server.port)
}

async fn rebuild_services_on_change(
    mut config_rx: watch::Receiver<Arc<Config>>,
    services_tx: watch::Sender<Arc<Services>>,
    cache: Arc<std::sync::Mutex<ModelCache>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = config_rx.changed() => if changed.is_err() { return },
        }
        let config = Arc::clone(&config_rx.borrow_and_update());
        // Loading a model file is blocking work: keep it off the async worker threads.
        let cache = Arc::clone(&cache);
        let built = tokio::task::spawn_blocking(move || {
            Services::build(config, &mut cache.lock().unwrap_or_else(|p| p.into_inner()))
        })
        .await;
        match built {
            Ok(Ok(services)) => {
                let _ = services_tx.send(Arc::new(services));
                tracing::info!("config applied: new sessions use the new settings");
            }
            Ok(Err(e)) => {
                tracing::warn!("config change not applied, keeping the previous providers: {e}");
            }
            Err(e) => {
                tracing::error!("provider rebuild panicked: {e}");
                return;
            }
        }
    }
}

impl App {
    /// The services a device's session starts with: its agent's ([`crate::agents`]) over `base`,
    /// or `base` when it has none (or the store cannot say: logged).
    async fn services_for(&self, base: Arc<Services>, device_id: &str) -> Arc<Services> {
        match crate::agents::of_device(base.store.as_ref(), device_id).await {
            Ok(None) => base,
            Ok(Some(agent)) => {
                tracing::debug!(device = %device_id, agent = %agent.id, "the session starts with its agent's settings");
                let config = Arc::clone(&base.config);
                self.agents.for_agent(&base, &config, &agent).await
            }
            Err(e) => {
                tracing::warn!(device = %device_id, "the device's agent cannot be read ({e}); using the configuration");
                base
            }
        }
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// `server.port`: devices.
    WebSocket,
    /// `server.http_port`: OTA, activation, health and the admin routes.
    Http,
}

/// Whether `ip` (the configured bind address) only accepts connections from this machine.
fn is_loopback_bind(ip: &str) -> bool {
    let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
    ip == "localhost" || ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn accept_loop(listener: TcpListener, app: Arc<App>, port: Port) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = app.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // A bounded kernel send buffer: a peer that stops reading holds little, and its writer
        // notices soon (the write deadline then closes it).
        let send_buffer = app.http.config.borrow().limits.socket_send_buffer_bytes;
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer) {
            tracing::debug!("cannot set the send buffer of {peer}: {e}");
        }
        let app2 = Arc::clone(&app);
        let shutdown = app.shutdown.clone();
        // A client has `limits.http_header_timeout_ms` to send each request's headers (also the
        // next request on a kept-alive connection), so idle or trickling connections are closed.
        let header_timeout = std::time::Duration::from_millis(app.http.config.borrow().limits.http_header_timeout_ms);
        app.tasks.spawn(async move {
            let service = service_fn(move |req| {
                let app = Arc::clone(&app2);
                async move { Ok::<_, Infallible>(handle(req, app, peer, port).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
}

async fn handle(mut req: Request<Incoming>, app: Arc<App>, peer: SocketAddr, port: Port) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if (path == WS_PATH || path.starts_with(&format!("{WS_PATH}/"))) && is_websocket_upgrade(&req) {
        return upgrade(req, app, peer).await;
    }
    if port == Port::WebSocket
        && is_endpoint_path(path, &app.http.config.borrow().server.mcp_endpoint_path)
        && is_websocket_upgrade(&req)
    {
        return endpoint_upgrade(req, app, peer).await;
    }
    req.extensions_mut().insert(Caller { peer, admin_port: port == Port::Http });
    http::route(req, &app.http).await
}

/// Whether `path` is the MCP endpoint's (`configured`, with or without a trailing `/`).
fn is_endpoint_path(path: &str, configured: &str) -> bool {
    let configured = configured.trim_end_matches('/');
    !configured.is_empty() && path.trim_end_matches('/') == configured
}

/// A tool server connecting to the MCP endpoint: its `token` (query) is checked and a place
/// reserved before the upgrade.
async fn endpoint_upgrade(req: Request<Incoming>, app: Arc<App>, peer: SocketAddr) -> Response<Full<Bytes>> {
    use crate::mcp::endpoint;
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).map(|k| ws::accept_key(k.as_bytes())) else {
        return text_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let token = req.uri().query().and_then(|q| form_pairs(q).find(|(k, _)| k == "token").map(|(_, v)| v));
    let scope = match endpoint::lookup(app.http.store.as_ref(), token.as_deref().unwrap_or_default()).await {
        Ok(Some(scope)) => scope,
        Ok(None) => {
            tracing::warn!(%peer, "MCP endpoint: refused a missing or unknown token");
            return text_response(StatusCode::UNAUTHORIZED, "unknown MCP endpoint token");
        }
        Err(e) => {
            tracing::warn!(%peer, "MCP endpoint: the store cannot check the token: {e}");
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "the token cannot be checked now");
        }
    };
    let services = Arc::clone(&app.services.borrow());
    let limits = services.config.limits.clone();
    let hash = endpoint::token_hash(token.as_deref().unwrap_or_default());
    let slot = match services.mcp_endpoint.reserve(&hash, &limits) {
        Ok(slot) => slot,
        Err(refusal) => {
            tracing::warn!(%peer, "MCP endpoint: refused: {refusal}");
            services.metrics.limit_hit(match refusal {
                endpoint::Refusal::Full => "mcp_endpoint_clients",
                endpoint::Refusal::TokenFull => "mcp_endpoint_clients_per_token",
            });
            let status = match refusal {
                endpoint::Refusal::Full => StatusCode::SERVICE_UNAVAILABLE,
                endpoint::Refusal::TokenFull => StatusCode::TOO_MANY_REQUESTS,
            };
            return text_response(status, &refusal.to_string());
        }
    };
    let mut req = req;
    let upgrade = hyper::upgrade::on(&mut req);
    let shutdown = app.shutdown.clone();
    app.tasks.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                endpoint::serve(upgraded, slot, scope, limits, Arc::clone(&services.metrics), shutdown).await;
            }
            Err(e) => tracing::warn!("MCP endpoint upgrade from {peer} failed: {e}"),
        }
    });
    switching_protocols(&key)
}

fn switching_protocols(key: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(key) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    let has = |name, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    has(CONNECTION, "upgrade") && has(UPGRADE, "websocket")
}

fn text_response(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Reads a device identity field from the headers, or from the query string (browser clients
/// cannot set headers on a WebSocket).
fn identity_field(req: &Request<Incoming>, header: &str) -> Option<String> {
    if let Some(v) = req.headers().get(header).and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    let query = req.uri().query()?;
    let alt = header.replace('-', "_");
    form_pairs(query).find(|(k, _)| k.eq_ignore_ascii_case(header) || k.eq_ignore_ascii_case(&alt)).map(|(_, v)| v)
}

pub(crate) fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Some((percent_decode(k)?, percent_decode(v)?))
    })
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn upgrade(mut req: Request<Incoming>, app: Arc<App>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).map(|k| ws::accept_key(k.as_bytes())) else {
        return text_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let Some(device_id) = identity_field(&req, "device-id").filter(|d| !d.is_empty()) else {
        return text_response(StatusCode::BAD_REQUEST, "missing Device-Id (header, or device-id query parameter)");
    };
    let client_id = identity_field(&req, "client-id").unwrap_or_default();
    for (name, id) in [("Device-Id", &device_id), ("Client-Id", &client_id)] {
        if let Err(why) = crate::auth::check_id(id, MAX_ID_BYTES) {
            tracing::warn!(%peer, "refused: {name} {why}");
            return text_response(StatusCode::BAD_REQUEST, &format!("bad {name}: {why}"));
        }
    }
    let authorization = identity_field(&req, "authorization");
    let header_version = identity_field(&req, "protocol-version").and_then(|v| v.parse().ok());
    let gateway = req.uri().query().is_some_and(|q| form_pairs(q).any(|(k, v)| k == "from" && v == "mqtt_gateway"));

    let config = Arc::clone(&app.http.config.borrow());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let auth = Authenticator::new(app.http.auth_key.to_string(), &config.server.auth);
    if let Err(e) = auth.check(authorization.as_deref(), &client_id, &device_id, now) {
        tracing::warn!(device = %device_id, %peer, "refused: {e}");
        return text_response(StatusCode::UNAUTHORIZED, &format!("authentication failed: {e}"));
    }
    if auth.requires_token(&device_id)
        && let Some(issued) = authorization.as_deref().and_then(crate::auth::token_timestamp)
        && crate::auth::is_revoked(app.http.store.as_ref(), &device_id, issued).await
    {
        tracing::warn!(device = %device_id, %peer, "refused: token revoked");
        return text_response(StatusCode::UNAUTHORIZED, "authentication failed: token revoked");
    }
    // In fleet mode the broker authenticates devices and their client id is not known here: the
    // device must be bound, with whatever Client-Id.
    let admitted = async || match client_id.as_str() {
        "" => http::activation::binding(app.http.store.as_ref(), &device_id).await.ok().flatten().is_some(),
        client_id => http::activation::admits(app.http.store.as_ref(), &device_id, client_id).await,
    };
    if config.activation.enabled && !admitted().await {
        tracing::warn!(device = %device_id, %peer, "refused: device not activated (or bound with another Client-Id)");
        return text_response(StatusCode::FORBIDDEN, "device not activated: run the OTA check and bind its code");
    }

    let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok()).and_then(http::ota::valid_host);
    let vision = vision_offer(&app, &config, host);
    let upgrade = hyper::upgrade::on(&mut req);
    let device = DeviceInfo { device_id, client_id, vision };
    let framing = Framing { header_version, gateway };
    let app2 = Arc::clone(&app);
    app.tasks.spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::warn!("WebSocket upgrade from {peer} failed: {e}");
                return;
            }
        };
        let services = Arc::clone(&app2.services.borrow());
        let services = app2.services_for(services, &device.device_id).await;
        let limits = services.config.limits.clone();
        let (connection, outbox) = ws::open(upgraded, framing, &limits, Arc::clone(&services.metrics)).await;
        session::run(connection, outbox, device, services, app2.shutdown.clone()).await;
    });
    switching_protocols(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_identity_is_decoded() {
        let pairs: Vec<_> = form_pairs("device-id=aa%3Abb&client_id=x+y&authorization=Bearer%20t.1").collect();
        assert_eq!(pairs[0], ("device-id".into(), "aa:bb".into()));
        assert_eq!(pairs[1], ("client_id".into(), "x y".into()));
        assert_eq!(pairs[2].1, "Bearer t.1");
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn endpoint_path_matches_with_or_without_slash() {
        assert!(is_endpoint_path("/mcp_endpoint/mcp/", "/mcp_endpoint/mcp"));
        assert!(is_endpoint_path("/mcp_endpoint/mcp", "/mcp_endpoint/mcp/"));
        assert!(!is_endpoint_path("/mcp_endpoint/mcpx", "/mcp_endpoint/mcp"));
        assert!(!is_endpoint_path("/", ""));
    }
}
