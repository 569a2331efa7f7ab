//! The extension host: one Wasmtime [`Engine`] per server, the compile cache, loading, and calls.
//!
//! - **Engine.** Epoch interruption, a modest wasm stack, linear memory reserved for our small
//!   guests ([`HOST_MAX_MEMORY_MB`]), copy-on-write memory images, and the pooling allocator when
//!   the machine grants its address-space reservation (otherwise on-demand allocation, logged). A
//!   dedicated thread advances the epoch every [`EPOCH_TICK`] and stops when the engine is
//!   dropped (it holds only a weak reference).
//! - **Load** ([`ExtensionHost::load`]). `extension.toml` is parsed and checked against the
//!   operator's grant, `<id>.wasm` is checked to be a component, compiled on a blocking thread
//!   through the compile cache (`<cache_dir>/<sha256 of the wasm>-<engine digest>.cwasm`), linked
//!   (WASI 0.2 without environment or sockets, only the granted media directories preopened
//!   read-only; stdout/stderr into the log; the host imports of 0.1 and 0.2) into an [`InstancePre`], and a tool extension's `describe` is called once as a smoke
//!   test.
//! - **Calls.** Every call gets a fresh [`Store`] (so a trap poisons nothing) holding the call's
//!   extension, device and grant, a memory cap ([`StoreLimits`]) and a deadline enforced twice: by
//!   the epoch callback (which also yields to the async runtime every tick, so a busy guest never
//!   hogs a worker thread) and by an outer `tokio::time::timeout` (which also cuts host calls
//!   short). A semaphore bounds concurrent instances to the pool's size.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Instance, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::bindings::exports::xiaozhi::extension as v01;
use super::bindings_v02::exports::xiaozhi::extension as v02;
use super::grant::{self, EffectiveGrant, HOST_MAX_MEMORY_MB};
use super::iface::http;
use super::iface::log::{LogPipe, LogTags};
use super::manifest::{Kind, MANIFEST_FILE, Manifest, WitVersion};
use super::{CallContext, ExtensionError, IntentDecision, PcmChunk, ToolDefinition, ToolResult};
use crate::config::{ExtensionsConfig, Grant};
use crate::llm::{ChatMessage, Llm};
use crate::metrics::Metrics;
use crate::store::Store as StateStore;

/// How often the epoch advances; the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Most wasm stack a guest may use.
pub const MAX_WASM_STACK: usize = 512 * 1024;
/// Most extension instances alive at once (the pool's size; further calls wait).
pub const MAX_INSTANCES: u32 = 64;
/// Time the outer timeout allows beyond a call's limit before it drops the call, so that the
/// epoch deadline (the precise one) normally fires first.
const TIMEOUT_GRACE: Duration = Duration::from_millis(50);
/// Longest tool name.
const MAX_TOOL_NAME: usize = 64;
/// Most lines a `context` extension adds to the prompt, and the longest line (characters).
pub const MAX_CONTEXT_LINES: usize = 16;
/// Longest line a `context` extension adds to the prompt, in characters.
pub const MAX_CONTEXT_LINE_CHARS: usize = 300;
/// Most audio one `media.read` chunk may carry.
pub const MAX_CHUNK_SECONDS: u32 = 10;
/// Most effects one tool result may carry.
pub const MAX_EFFECTS: usize = 32;

/// What the host offers extensions from the rest of the server.
#[derive(Clone)]
pub struct HostServices {
    /// The server's LLM, for extensions granted `llm` (`None`: such calls fail).
    pub llm: Option<Arc<dyn Llm>>,
    /// Storage behind the `kv` interface.
    pub store: Arc<dyn StateStore>,
    /// Where calls are counted (`None`: not counted).
    pub metrics: Option<Arc<Metrics>>,
    /// The bounds of the `kv` interface (`limits.kv_*`, as the server started).
    pub kv: KvLimits,
}

/// The bounds of the `kv` interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Keys one extension may keep for one device.
    pub keys_per_device: usize,
    /// Value bytes one extension may keep over all devices.
    pub bytes_per_extension: u64,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self::of(&crate::config::LimitsConfig::default())
    }
}

impl KvLimits {
    /// The `kv` bounds of `limits`.
    pub fn of(limits: &crate::config::LimitsConfig) -> Self {
        Self { keys_per_device: limits.kv_keys_per_device, bytes_per_extension: limits.kv_bytes_per_extension }
    }
}

/// The data of one call's [`Store`]: who the call is for, what the extension may do, its limits
/// and its WASI context. Created fresh for every call.
pub struct CallState {
    pub(crate) extension_id: Arc<str>,
    pub(crate) device_id: Arc<str>,
    pub(crate) grant: Arc<EffectiveGrant>,
    pub(crate) services: HostServices,
    pub(crate) http: reqwest::Client,
    pub(crate) deadline: Instant,
    pub(crate) log: LogTags,
    stdout: LogPipe,
    stderr: LogPipe,
    limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl CallState {
    /// The state of one call of extension `id` for `ctx`, ending at `deadline`.
    pub(crate) fn new(
        id: &str,
        ctx: &CallContext,
        grant: Arc<EffectiveGrant>,
        services: HostServices,
        http: reqwest::Client,
        deadline: Instant,
    ) -> Self {
        let log = LogTags {
            extension: Arc::from(id),
            device: Arc::from(ctx.device_id.as_str()),
            budget: Arc::new(Mutex::default()),
        };
        let (stdout, stderr) = (LogPipe::new(log.clone(), "stdout"), LogPipe::new(log.clone(), "stderr"));
        // No environment, no arguments, no sockets, empty stdin; the granted media directories
        // (only those) are preopened read-only at `/<name>`.
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (name, dir) in &grant.media_dirs {
            if let Err(err) = wasi.preopened_dir(dir, format!("/{name}"), FsPerms::ReadOnly) {
                tracing::warn!(extension = %id, "media directory {name} ({}) cannot be opened: {err:#}", dir.display());
            }
        }
        let wasi = wasi.build();
        let limits = StoreLimitsBuilder::new().memory_size(grant.memory_bytes).trap_on_grow_failure(true).build();
        Self {
            extension_id: log.extension.clone(),
            device_id: log.device.clone(),
            grant,
            services,
            http,
            deadline,
            log,
            stdout,
            stderr,
            limits,
            wasi,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The exports of a 0.1 component, per declared kind.
#[derive(Clone, Default)]
struct V01Exports {
    tool: Option<v01::tool::GuestIndices>,
    intent: Option<v01::intent::GuestIndices>,
    memory: Option<v01::memory::GuestIndices>,
}

/// The exports of a 0.2 component, per declared kind.
#[derive(Clone, Default)]
struct V02Exports {
    tool: Option<v02::tool::GuestIndices>,
    intent: Option<v02::intent::GuestIndices>,
    memory: Option<v02::memory::GuestIndices>,
    context: Option<v02::context::GuestIndices>,
    media: Option<v02::media::GuestIndices>,
}

/// The exports found in a component, by the WIT version it was built against.
#[derive(Clone)]
enum Exports {
    V01(V01Exports),
    V02(V02Exports),
}

/// Runs `$body` for the extension's WIT version, with `$b` naming that version's bindings module
/// and `$ix` the indices of its `$kind` export (a wrong-kind error when it has none): the calls
/// every version has are written once.
macro_rules! with_export {
    ($ext:ident, $kind:ident, $Kind:expr, |$b:ident, $ix:ident| $body:block) => {
        match &$ext.exports {
            Exports::V01(exports) => {
                #[allow(unused_imports)]
                use super::bindings as $b;
                let $ix = exports.$kind.clone().ok_or_else(|| wrong_kind($ext, $Kind))?;
                $body
            }
            Exports::V02(exports) => {
                #[allow(unused_imports)]
                use super::bindings_v02 as $b;
                let $ix = exports.$kind.clone().ok_or_else(|| wrong_kind($ext, $Kind))?;
                $body
            }
        }
    };
}

/// A compiled, linked and checked extension, ready to be called.
pub struct LoadedExtension {
    /// Its manifest.
    pub manifest: Manifest,
    /// What it may do (the manifest checked against the operator's grant).
    pub grant: Arc<EffectiveGrant>,
    /// The compiled component.
    pub component: Component,
    /// The component linked against the host, ready to instantiate per call.
    pub instance_pre: InstancePre<CallState>,
    /// SHA-256 of the wasm file, lower-case hex.
    pub wasm_sha256: String,
    /// Whether the compiled code came from the compile cache.
    pub from_cache: bool,
    /// The tools `describe` returned when the extension was loaded (empty unless it is a tool
    /// extension).
    pub tools: Vec<ToolDefinition>,
    exports: Exports,
}

impl LoadedExtension {
    /// The extension id.
    pub fn id(&self) -> &str {
        &self.manifest.id
    }
}

/// Loads and calls extensions; one per server.
pub struct ExtensionHost {
    engine: Engine,
    linker: Linker<CallState>,
    cache_dir: PathBuf,
    grants: BTreeMap<String, Grant>,
    services: HostServices,
    http: reqwest::Client,
    slots: Arc<Semaphore>,
    pooling: bool,
}

impl ExtensionHost {
    /// Creates the engine (pooling when possible), its epoch thread and the linker.
    pub fn new(config: &ExtensionsConfig, services: HostServices) -> anyhow::Result<Self> {
        Self::build(config, services, true)
    }

    /// [`ExtensionHost::new`], trying the pooling allocator only when `try_pooling` is set.
    pub(crate) fn build(config: &ExtensionsConfig, services: HostServices, try_pooling: bool) -> anyhow::Result<Self> {
        let pooled =
            if try_pooling { Engine::new(&engine_config(true)) } else { Err(wasmtime::Error::msg("not requested")) };
        let (engine, pooling) = match pooled {
            Ok(engine) => (engine, true),
            Err(err) => {
                tracing::info!("extension host: pooling allocator unavailable ({err:#}); using on-demand allocation");
                let engine = Engine::new(&engine_config(false))
                    .map_err(|err| anyhow::anyhow!("cannot create the WebAssembly engine: {err:#}"))?;
                (engine, false)
            }
        };
        start_epoch_ticker(&engine)?;

        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|err| anyhow::anyhow!("cannot link WASI: {err:#}"))?;
        super::bindings::FullExtension::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|err| anyhow::anyhow!("cannot link the extension host API 0.1: {err:#}"))?;
        super::bindings_v02::FullExtension::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|err| anyhow::anyhow!("cannot link the extension host API 0.2: {err:#}"))?;

        let http = http::client().map_err(|err| anyhow::anyhow!("cannot create the extension HTTP client: {err}"))?;
        Ok(Self {
            engine,
            linker,
            cache_dir: config.cache_dir.clone(),
            grants: config.grants.clone(),
            services,
            http,
            slots: Arc::new(Semaphore::new(MAX_INSTANCES as usize)),
            pooling,
        })
    }

    /// The host with `client` for the extensions' HTTP requests (tests: a test CA, fixed DNS).
    #[cfg(test)]
    pub(crate) fn with_http_client(mut self, client: reqwest::Client) -> Self {
        self.http = client;
        self
    }

    /// The HTTP client of the extensions' requests (also downloads the audio they play).
    pub fn http_client(&self) -> &reqwest::Client {
        &self.http
    }

    /// Where this host counts its calls, if anywhere.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.services.metrics.as_ref()
    }

    /// Whether the engine uses the pooling allocator (else on-demand allocation).
    pub fn uses_pooling(&self) -> bool {
        self.pooling
    }

    /// The compile-cache file name for a wasm file with this SHA-256 (hex) on this engine.
    pub fn cache_file(&self, wasm_sha256: &str) -> PathBuf {
        self.cache_dir.join(format!("{wasm_sha256}-{}.cwasm", engine_digest(&self.engine)))
    }

    /// Loads the extension in `dir` (which holds `extension.toml` and `<id>.wasm`): checks,
    /// compiles (through the cache), links and, for a tool extension, calls `describe` once.
    pub async fn load(&self, dir: &Path) -> Result<Arc<LoadedExtension>, ExtensionError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = tokio::fs::read_to_string(&manifest_path).await.map_err(|err| io_error(&manifest_path, &err))?;
        let manifest = Manifest::parse(&text)
            .map_err(|source| ExtensionError::Manifest { path: manifest_path.clone(), source })?;
        let id = manifest.id.clone();
        let wasm_path = dir.join(format!("{id}.wasm"));
        let wasm = tokio::fs::read(&wasm_path).await.map_err(|err| io_error(&wasm_path, &err))?;
        check_component(&id, &wasm_path, &wasm)?;
        let grant = grant::check(&manifest, self.grants.get(&id))?;

        let wasm_sha256 = hex(&Sha256::digest(&wasm));
        let cache_file = self.cache_file(&wasm_sha256);
        let engine = self.engine.clone();
        let compile_id = id.clone();
        let (component, from_cache) =
            tokio::task::spawn_blocking(move || compile_cached(&engine, &compile_id, &cache_file, &wasm))
                .await
                .map_err(|err| ExtensionError::Compile {
                    id: id.clone(),
                    message: format!("compiler task: {err}"),
                })??;

        check_imports(&manifest, &component, &self.engine)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|err| ExtensionError::Link { id: id.clone(), message: format!("{err:#}") })?;
        let exports = find_exports(&manifest, &instance_pre)?;

        let mut extension = LoadedExtension {
            manifest,
            grant: Arc::new(grant),
            component,
            instance_pre,
            wasm_sha256,
            from_cache,
            tools: Vec::new(),
            exports,
        };
        if extension.manifest.has(Kind::Tool) {
            extension.tools = self.describe(&extension).await?;
        }
        tracing::info!(
            extension = %id,
            version = %extension.manifest.version,
            from_cache,
            tools = extension.tools.len(),
            "extension loaded"
        );
        Ok(Arc::new(extension))
    }

    /// Calls the tool extension's `describe` and checks the definitions (names, schemas).
    pub async fn describe(&self, ext: &LoadedExtension) -> Result<Vec<ToolDefinition>, ExtensionError> {
        let call = "tool.describe";
        let defs: Vec<ToolDefinition> = with_export!(ext, tool, Kind::Tool, |b, indices| {
            let defs = self
                .run(ext, &CallContext::default(), call, move |store, instance| {
                    Box::pin(async move { indices.load(&mut *store, &instance)?.call_describe(&mut *store).await })
                })
                .await?;
            defs.into_iter().map(ToolDefinition::from).collect()
        });
        let checked = defs.iter().try_for_each(|def| {
            check_tool_definition(def).map_err(|message| ExtensionError::InvalidOutput {
                id: ext.id().to_owned(),
                call,
                message,
            })
        });
        self.counted(ext, call, checked.map(|()| defs))
    }

    /// Runs the tool `name` with `arguments_json` for the device in `ctx`; a 0.1 component's
    /// action and texts come back as effects.
    pub async fn call_tool(
        &self,
        ext: &LoadedExtension,
        name: &str,
        arguments_json: &str,
        ctx: CallContext,
    ) -> Result<ToolResult, ExtensionError> {
        let call = "tool.call";
        let (name, arguments) = (name.to_owned(), arguments_json.to_owned());
        let result = with_export!(ext, tool, Kind::Tool, |b, indices| {
            let wit_ctx = b::wit_context(&ctx);
            let result = self
                .run(ext, &ctx, call, move |store, instance| {
                    Box::pin(async move {
                        indices.load(&mut *store, &instance)?.call_call(&mut *store, &name, &arguments, &wit_ctx).await
                    })
                })
                .await?;
            result.map(ToolResult::from).map_err(|err| guest_error(ext, call, b::describe_guest_error(&err)))
        });
        let result = result.and_then(|result| {
            bounded_effects(result).map_err(|message| ExtensionError::InvalidOutput {
                id: ext.id().to_owned(),
                call,
                message,
            })
        });
        self.counted(ext, call, result)
    }

    /// Asks an intent extension what to do with `text` after `history` (oldest first), given the
    /// `tools` the session offers.
    pub async fn detect_intent(
        &self,
        ext: &LoadedExtension,
        history: &[ChatMessage],
        text: &str,
        tools: &[ToolDefinition],
        ctx: CallContext,
    ) -> Result<IntentDecision, ExtensionError> {
        let call = "intent.detect";
        let result = with_export!(ext, intent, Kind::Intent, |b, indices| {
            let history: Vec<_> = history.iter().map(b::to_wit_message).collect();
            let tools: Vec<_> = tools.iter().map(b::to_wit_tool).collect();
            let (text, wit_ctx) = (text.to_owned(), b::wit_context(&ctx));
            let result = self
                .run(ext, &ctx, call, move |store, instance| {
                    Box::pin(async move {
                        indices
                            .load(&mut *store, &instance)?
                            .call_detect(&mut *store, &history, &text, &tools, &wit_ctx)
                            .await
                    })
                })
                .await?;
            result.map(IntentDecision::from).map_err(|err| guest_error(ext, call, b::describe_guest_error(&err)))
        });
        self.counted(ext, call, result)
    }

    /// Asks a memory extension what it knows that is relevant to `text` for the device in `ctx`.
    pub async fn memory_query(
        &self,
        ext: &LoadedExtension,
        text: &str,
        ctx: CallContext,
    ) -> Result<String, ExtensionError> {
        let call = "memory.query";
        let (device, text) = (ctx.device_id.clone(), text.to_owned());
        let result = with_export!(ext, memory, Kind::Memory, |b, indices| {
            let result = self
                .run(ext, &ctx, call, move |store, instance| {
                    Box::pin(async move {
                        indices.load(&mut *store, &instance)?.call_query(&mut *store, &device, &text).await
                    })
                })
                .await?;
            result.map_err(|err| guest_error(ext, call, b::describe_guest_error(&err)))
        });
        self.counted(ext, call, result)
    }

    /// Gives a memory extension a finished dialogue (oldest first) of the device in `ctx`.
    pub async fn memory_save(
        &self,
        ext: &LoadedExtension,
        messages: &[ChatMessage],
        ctx: CallContext,
    ) -> Result<(), ExtensionError> {
        let call = "memory.save";
        let device = ctx.device_id.clone();
        let result = with_export!(ext, memory, Kind::Memory, |b, indices| {
            let messages: Vec<_> = messages.iter().map(b::to_wit_message).collect();
            let result = self
                .run(ext, &ctx, call, move |store, instance| {
                    Box::pin(async move {
                        indices.load(&mut *store, &instance)?.call_save(&mut *store, &device, &messages).await
                    })
                })
                .await?;
            result.map_err(|err| guest_error(ext, call, b::describe_guest_error(&err)))
        });
        self.counted(ext, call, result)
    }

    /// Asks a `context` extension (0.2) for its lines for the session in `ctx`: at most
    /// [`MAX_CONTEXT_LINES`], each cut at [`MAX_CONTEXT_LINE_CHARS`] characters, blank ones
    /// dropped.
    pub async fn context_lines(&self, ext: &LoadedExtension, ctx: CallContext) -> Result<Vec<String>, ExtensionError> {
        let call = "context.lines";
        let Exports::V02(V02Exports { context: Some(indices), .. }) = &ext.exports else {
            return Err(wrong_kind(ext, Kind::Context));
        };
        let (indices, wit_ctx) = (indices.clone(), super::bindings_v02::wit_context(&ctx));
        let result = self
            .run(ext, &ctx, call, move |store, instance| {
                Box::pin(async move { indices.load(&mut *store, &instance)?.call_lines(&mut *store, &wit_ctx).await })
            })
            .await?;
        let lines = result
            .map(|lines| capped_lines(&lines))
            .map_err(|err| guest_error(ext, call, super::bindings_v02::describe_guest_error(&err)));
        self.counted(ext, call, lines)
    }

    /// Chunk `index` of the audio stream `token` of a `media` extension (0.2), mixed down to
    /// mono; `None` after the last one. A chunk of an unusable shape (rate, channels) or longer
    /// than [`MAX_CHUNK_SECONDS`] is an error.
    pub async fn media_read(
        &self,
        ext: &LoadedExtension,
        token: &str,
        index: u32,
        ctx: CallContext,
    ) -> Result<Option<PcmChunk>, ExtensionError> {
        let call = "media.read";
        let Exports::V02(V02Exports { media: Some(indices), .. }) = &ext.exports else {
            return Err(wrong_kind(ext, Kind::Media));
        };
        let (indices, token) = (indices.clone(), token.to_owned());
        let result = self
            .run(ext, &ctx, call, move |store, instance| {
                Box::pin(
                    async move { indices.load(&mut *store, &instance)?.call_read(&mut *store, &token, index).await },
                )
            })
            .await?;
        let invalid = |message: String| ExtensionError::InvalidOutput { id: ext.id().to_owned(), call, message };
        let chunk = match result {
            Err(err) => Err(guest_error(ext, call, super::bindings_v02::describe_guest_error(&err))),
            Ok(None) => Ok(None),
            Ok(Some(chunk)) => super::bindings_v02::mono_chunk(chunk).map(Some).map_err(invalid),
        };
        self.counted(ext, call, chunk)
    }

    /// Counts a finished call that got an answer (`ok`, or `error` for the guest's own error).
    fn counted<T>(
        &self,
        ext: &LoadedExtension,
        call: &'static str,
        result: Result<T, ExtensionError>,
    ) -> Result<T, ExtensionError> {
        self.count(ext, call, if result.is_ok() { "ok" } else { "error" });
        result
    }

    fn count(&self, ext: &LoadedExtension, call: &'static str, outcome: &'static str) {
        if let Some(metrics) = &self.services.metrics {
            metrics.extension_call(ext.id(), call, outcome);
        }
    }

    /// Instantiates `ext` in a fresh store for `ctx` and runs `body` under the call's limits.
    async fn run<R: Send>(
        &self,
        ext: &LoadedExtension,
        ctx: &CallContext,
        call: &'static str,
        body: impl for<'s> FnOnce(&'s mut Store<CallState>, Instance) -> BoxFuture<'s, wasmtime::Result<R>> + Send,
    ) -> Result<R, ExtensionError> {
        let limit = ext.grant.timeout;
        let deadline = Instant::now() + limit;
        let state =
            CallState::new(ext.id(), ctx, ext.grant.clone(), self.services.clone(), self.http.clone(), deadline);
        let (tags, stdout, stderr) = (state.log.clone(), state.stdout.clone(), state.stderr.clone());
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // Check the deadline on every epoch tick; until it passes, yield to the async runtime so
        // that a guest computing in a loop never holds a worker thread for long.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline { Err(Trap::Interrupt.into()) } else { Ok(UpdateDeadline::Yield(1)) }
        });

        let slots = self.slots.clone();
        let work = async {
            let _slot =
                slots.acquire_owned().await.map_err(|_| wasmtime::Error::msg("the extension host is closed"))?;
            let instance = ext.instance_pre.instantiate_async(&mut store).await?;
            body(&mut store, instance).await
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(limit + TIMEOUT_GRACE, work).await;
        if let Some(metrics) = &self.services.metrics {
            metrics.extension_took(ext.id(), started.elapsed());
        }
        stdout.flush_line();
        stderr.flush_line();
        tags.report_dropped();
        let id = ext.id().to_owned();
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Err(_elapsed) => {
                self.count(ext, call, "timeout");
                Err(ExtensionError::Timeout { id, call, limit })
            }
            Ok(Err(err)) if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
                self.count(ext, call, "timeout");
                Err(ExtensionError::Timeout { id, call, limit })
            }
            Ok(Err(err)) => {
                // The root cause ("wasm `unreachable` instruction executed", ...) is the useful
                // part; the full chain with the wasm backtrace goes to the debug log.
                let mut message = err.root_cause().to_string();
                if message.contains("growing memory") {
                    message.push_str(&format!(
                        " (over the extension's memory cap of {} MiB)",
                        ext.grant.memory_bytes >> 20
                    ));
                }
                tracing::warn!(extension = %id, call, "extension call failed: {message}");
                tracing::debug!(extension = %id, call, "extension call failed: {err:#}");
                self.count(ext, call, "trap");
                Err(ExtensionError::Trap { id, call, message })
            }
        }
    }
}

/// A tool result with at most [`MAX_EFFECTS`] effects (else why not).
pub(crate) fn bounded_effects(result: ToolResult) -> Result<ToolResult, String> {
    if result.effects.len() > MAX_EFFECTS {
        return Err(format!("{} effects, more than {MAX_EFFECTS}", result.effects.len()));
    }
    Ok(result)
}

/// A `context` extension's lines as the prompt takes them: trimmed, blank ones dropped, at most
/// [`MAX_CONTEXT_LINES`], each cut at [`MAX_CONTEXT_LINE_CHARS`] characters.
pub(crate) fn capped_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty())
        .take(MAX_CONTEXT_LINES)
        .map(|line| crate::text::cut_chars(line, MAX_CONTEXT_LINE_CHARS).into_owned())
        .collect()
}

/// The engine configuration; `pooling` selects the pooling allocator.
fn engine_config(pooling: bool) -> Config {
    let memory_bytes = u64::from(HOST_MAX_MEMORY_MB) << 20;
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    config.memory_reservation(memory_bytes);
    config.memory_guard_size(32 << 20);
    config.memory_init_cow(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * 8)
            .total_memories(MAX_INSTANCES * 2)
            .total_tables(MAX_INSTANCES * 8)
            .total_stacks(MAX_INSTANCES)
            .max_memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated thread, until the engine is
/// dropped.
fn start_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(drop)
        .map_err(|err| anyhow::anyhow!("cannot start the epoch thread: {err}"))
}

/// A [`Hasher`] feeding SHA-256, to turn the engine's compatibility hash into a stable digest.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// 16 hex digits identifying everything about the engine that compiled code depends on
/// (Wasmtime version, target, settings).
fn engine_digest(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    let digest = hasher.0.finalize();
    hex(digest.get(..8).unwrap_or(&digest))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_error(path: &Path, err: &std::io::Error) -> ExtensionError {
    ExtensionError::Io { path: path.to_owned(), message: err.to_string() }
}

/// Checks the binary header: `\0asm`, then version 0x0d with layer 1 for a component (a core
/// module has version 1, layer 0).
fn check_component(id: &str, path: &Path, wasm: &[u8]) -> Result<(), ExtensionError> {
    let refuse = |what| Err(ExtensionError::NotAComponent { id: id.to_owned(), path: path.to_owned(), what });
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', _, _, 0, 0]) => refuse(
            "is a core WebAssembly module, not a component (build for wasm32-wasip2 or run `wasm-tools component new`)",
        ),
        Some([0, b'a', b's', b'm', ..]) => refuse("is WebAssembly of an unknown layer"),
        _ => refuse("is not a WebAssembly binary"),
    }
}

/// Compiles `wasm`, through the cache file when possible. Runs on a blocking thread.
fn compile_cached(
    engine: &Engine,
    id: &str,
    cache_file: &Path,
    wasm: &[u8],
) -> Result<(Component, bool), ExtensionError> {
    if cache_file.is_file() {
        // SAFETY: `deserialize_file` trusts the file to be machine code Wasmtime produced. The
        // cache directory belongs to the server (never an extension directory), files in it are
        // written only by this function (from `precompile_component`, to a temporary name, then
        // renamed, so a reader never sees a partial file), and the name carries the engine's
        // compatibility digest, so a file from another Wasmtime version or configuration is
        // never opened. Wasmtime still checks the header and refuses a mismatched file. The file
        // is mapped into memory, so it is only ever replaced (renamed over), never rewritten in
        // place: unlinking or renaming over a mapped file keeps the old contents alive.
        match unsafe { Component::deserialize_file(engine, cache_file) } {
            Ok(component) => return Ok((component, true)),
            Err(err) => {
                tracing::warn!(extension = %id, "compile cache {} unusable ({err:#}); recompiling", cache_file.display())
            }
        }
    }
    let compiled = engine
        .precompile_component(wasm)
        .map_err(|err| ExtensionError::Compile { id: id.to_owned(), message: format!("{err:#}") })?;
    match write_atomically(cache_file, &compiled) {
        Ok(()) => {
            // SAFETY: as above; the file was just written by this function from `compiled`.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, cache_file) } {
                return Ok((component, false));
            }
        }
        Err(err) => tracing::warn!(extension = %id, "cannot write compile cache {}: {err}", cache_file.display()),
    }
    // SAFETY: `compiled` is the output of `precompile_component` on this very engine.
    let component = unsafe { Component::deserialize(engine, &compiled) }
        .map_err(|err| ExtensionError::Compile { id: id.to_owned(), message: format!("{err:#}") })?;
    Ok((component, false))
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Refuses a component that imports a host interface its manifest does not declare.
fn check_imports(manifest: &Manifest, component: &Component, engine: &Engine) -> Result<(), ExtensionError> {
    let caps = &manifest.capabilities;
    for (name, _) in component.component_type().imports(engine) {
        let Some(rest) = name.strip_prefix("xiaozhi:extension/") else { continue };
        let interface = rest.split('@').next().unwrap_or(rest);
        let missing = match interface {
            "http" if caps.http_hosts.is_empty() && caps.config_hosts.is_empty() => Some("http_hosts"),
            "kv" if !caps.kv => Some("kv"),
            "llm" if !caps.llm => Some("llm"),
            _ => None,
        };
        if let Some(capability) = missing {
            return Err(ExtensionError::Link {
                id: manifest.id.clone(),
                message: format!(
                    "the component imports {name} but extension.toml declares no capabilities.{capability}"
                ),
            });
        }
    }
    Ok(())
}

/// Looks up the exports of every kind the manifest declares, under its WIT version.
fn find_exports(manifest: &Manifest, pre: &InstancePre<CallState>) -> Result<Exports, ExtensionError> {
    fn find<T>(
        manifest: &Manifest,
        kind: Kind,
        lookup: impl FnOnce() -> wasmtime::Result<T>,
    ) -> Result<Option<T>, ExtensionError> {
        if !manifest.has(kind) {
            return Ok(None);
        }
        lookup().map(Some).map_err(|err| ExtensionError::Link {
            id: manifest.id.clone(),
            message: format!(
                "kinds lists {interface} but the component does not export xiaozhi:extension/{interface}@{version} ({err:#})",
                interface = kind.interface(),
                version = manifest.wit.number(),
            ),
        })
    }
    Ok(match manifest.wit {
        WitVersion::V0_1 => Exports::V01(V01Exports {
            tool: find(manifest, Kind::Tool, || v01::tool::GuestIndices::new(pre))?,
            intent: find(manifest, Kind::Intent, || v01::intent::GuestIndices::new(pre))?,
            memory: find(manifest, Kind::Memory, || v01::memory::GuestIndices::new(pre))?,
        }),
        WitVersion::V0_2 => Exports::V02(V02Exports {
            tool: find(manifest, Kind::Tool, || v02::tool::GuestIndices::new(pre))?,
            intent: find(manifest, Kind::Intent, || v02::intent::GuestIndices::new(pre))?,
            memory: find(manifest, Kind::Memory, || v02::memory::GuestIndices::new(pre))?,
            context: find(manifest, Kind::Context, || v02::context::GuestIndices::new(pre))?,
            media: find(manifest, Kind::Media, || v02::media::GuestIndices::new(pre))?,
        }),
    })
}

/// A tool name the LLM APIs accept and a parameters schema that is a JSON object.
fn check_tool_definition(def: &ToolDefinition) -> Result<(), String> {
    let name_ok = !def.name.is_empty()
        && def.name.len() <= MAX_TOOL_NAME
        && def.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(format!("tool name {:?} must be 1 to {MAX_TOOL_NAME} of A-Z a-z 0-9 _ -", def.name));
    }
    match serde_json::from_str::<serde_json::Value>(&def.parameters_json) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(format!("tool {}: parameters-json is not a JSON object", def.name)),
        Err(err) => Err(format!("tool {}: parameters-json is not JSON: {err}", def.name)),
    }
}

fn wrong_kind(ext: &LoadedExtension, kind: Kind) -> ExtensionError {
    ExtensionError::WrongKind { id: ext.id().to_owned(), kind }
}

fn guest_error(ext: &LoadedExtension, call: &'static str, message: String) -> ExtensionError {
    ExtensionError::Guest { id: ext.id().to_owned(), call, message }
}
