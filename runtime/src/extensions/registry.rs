//! The set of loaded extensions and its hot swap.
//!
//! [`Registry::reload`] scans the extension directories (one folder per extension, holding
//! `extension.toml` and `<id>.wasm`), loads what is new or changed (verify → compile off the async
//! threads → smoke `describe()`), and swaps the whole set atomically. In-flight calls keep the
//! `Arc` of the version they started with, so they finish on it. A broken new file keeps the old
//! version serving and its error is reported (log + [`Registry::status`]); a deleted folder or file
//! unloads the extension. [`watch`] triggers reloads on file changes (notify, with a polling
//! fallback for Docker mounts), debounced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{ExtensionHost, Kind, LoadedExtension};

/// What identifies one version of an extension on disk: a change of either file is a new version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    manifest: (u64, Option<SystemTime>),
    wasm: (u64, Option<SystemTime>),
}

fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let stat = |p: PathBuf| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
    let manifest = stat(dir.join("extension.toml"))?;
    let id = dir.file_name()?.to_str()?;
    let wasm = stat(dir.join(format!("{id}.wasm")))?;
    Some(Fingerprint { manifest, wasm })
}

/// The extensions currently serving; cheap to clone, never changes (a reload makes a new one).
#[derive(Default)]
pub struct Snapshot {
    /// Loaded extensions by id.
    pub extensions: BTreeMap<String, Arc<LoadedExtension>>,
}

impl Snapshot {
    /// The extensions of one kind, in id order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<LoadedExtension>> {
        self.extensions.values().filter(move |e| e.manifest.has(kind))
    }

    /// The extension that offers the tool `name`.
    pub fn tool_owner(&self, name: &str) -> Option<&Arc<LoadedExtension>> {
        self.of_kind(Kind::Tool).find(|e| e.tools.iter().any(|t| t.name == name))
    }
}

/// The state of one extension folder, for the status endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ExtensionStatus {
    /// The folder name (the extension id).
    pub id: String,
    /// The version serving now, if any.
    pub serving: Option<String>,
    /// SHA-256 of the wasm serving now.
    pub sha256: Option<String>,
    /// The last load error, if the newest files did not load.
    pub error: Option<String>,
    /// What the version serving now may do (its manifest checked against the operator's grant).
    pub grant: Option<GrantSummary>,
    /// Its calls since start (every version) by outcome, with p50/p99 of the recent ones; `None`
    /// before the first call.
    pub calls: Option<crate::metrics::ExtensionFigures>,
}

/// An extension's effective grant as shown to operators: the names of the settings it reads,
/// never their values (they may be keys).
#[derive(Debug, Clone, Serialize)]
pub struct GrantSummary {
    /// Memory cap, MiB.
    pub memory_mb: usize,
    /// Longest single call, ms.
    pub timeout_ms: u128,
    /// Hosts it may reach over HTTP.
    pub http_hosts: Vec<String>,
    /// Whether it may use its key/value store.
    pub kv: bool,
    /// Whether it may use the server's LLM.
    pub llm: bool,
    /// The settings it reads.
    pub config: Vec<String>,
    /// The media directories it reads and plays from, as `name=path`.
    pub media_dirs: Vec<String>,
}

impl GrantSummary {
    fn of(grant: &super::grant::EffectiveGrant) -> Self {
        Self {
            memory_mb: grant.memory_bytes >> 20,
            timeout_ms: grant.timeout.as_millis(),
            http_hosts: grant.http_hosts.iter().cloned().collect(),
            kv: grant.kv,
            llm: grant.llm,
            config: grant.config.keys().cloned().collect(),
            media_dirs: grant.media_dirs.iter().map(|(name, dir)| format!("{name}={}", dir.display())).collect(),
        }
    }
}

struct Entry {
    fingerprint: Fingerprint,
    loaded: Option<Arc<LoadedExtension>>,
    error: Option<String>,
}

/// Loaded extensions and their hot swap; one per server.
pub struct Registry {
    host: Arc<ExtensionHost>,
    dirs: Vec<PathBuf>,
    // std RwLock: the lock only guards swapping an Arc; readers clone it and never await inside.
    current: RwLock<Arc<Snapshot>>,
    // tokio Mutex: one reload at a time, held across the loads (which await).
    reloading: tokio::sync::Mutex<BTreeMap<String, Entry>>,
    // std Mutex: copied out for the status endpoint, never held across an await.
    status: Mutex<Vec<ExtensionStatus>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dirs", &self.dirs)
            .field("serving", &self.snapshot().extensions.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry over `dirs`; call [`Registry::reload`] to load.
    pub fn new(host: Arc<ExtensionHost>, dirs: Vec<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            host,
            dirs,
            current: RwLock::new(Arc::new(Snapshot::default())),
            reloading: tokio::sync::Mutex::new(BTreeMap::new()),
            status: Mutex::new(Vec::new()),
        })
    }

    /// The host that runs the extensions.
    pub fn host(&self) -> &Arc<ExtensionHost> {
        &self.host
    }

    /// The extensions serving now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every extension folder: what it serves, its grant, last error and call figures (for
    /// `/xiaozhi/extensions` and the console).
    pub fn status(&self) -> Vec<ExtensionStatus> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(metrics) = self.host.metrics() {
            for entry in &mut status {
                entry.calls = metrics.extension_figures(&entry.id);
            }
        }
        status
    }

    /// Scans the directories and swaps in every new or changed extension that loads. Returns the
    /// number of extensions serving afterwards.
    pub async fn reload(&self) -> usize {
        let mut entries = self.reloading.lock().await;
        let mut seen = BTreeMap::new();
        for dir in &self.dirs {
            let Ok(read) = std::fs::read_dir(dir) else { continue };
            for folder in read.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
                let Some(id) = folder.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
                if let Some(fp) = fingerprint(&folder) {
                    seen.insert(id, (folder, fp));
                }
            }
        }
        // Gone from disk: unload.
        let gone: Vec<String> = entries.keys().filter(|id| !seen.contains_key(*id)).cloned().collect();
        for id in gone {
            tracing::info!(extension = %id, "extension removed: unloaded");
            entries.remove(&id);
        }
        for (id, (folder, fp)) in seen {
            if entries.get(&id).is_some_and(|e| e.fingerprint == fp) {
                continue;
            }
            let previous = entries.remove(&id).and_then(|e| e.loaded);
            let entry = match self.host.load(&folder).await {
                Ok(loaded) if loaded.id() != id => {
                    let error = format!("extension.toml says id {:?}, but the folder is {id:?}", loaded.id());
                    tracing::warn!(extension = %id, "not loaded: {error}");
                    Entry { fingerprint: fp, loaded: previous, error: Some(error) }
                }
                Ok(loaded) => {
                    tracing::info!(
                        extension = %id,
                        version = %loaded.manifest.version,
                        cached = loaded.from_cache,
                        "extension {}",
                        if previous.is_some() { "reloaded" } else { "loaded" }
                    );
                    Entry { fingerprint: fp, loaded: Some(loaded), error: None }
                }
                Err(e) => {
                    let kept = if previous.is_some() { "; the previous version keeps serving" } else { "" };
                    tracing::warn!(extension = %id, "not loaded: {e}{kept}");
                    Entry { fingerprint: fp, loaded: previous, error: Some(e.to_string()) }
                }
            };
            entries.insert(id, entry);
        }
        let snapshot = Snapshot {
            extensions: entries
                .iter()
                .filter_map(|(id, e)| Some((id.clone(), Arc::clone(e.loaded.as_ref()?))))
                .collect(),
        };
        let serving = snapshot.extensions.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = entries
            .iter()
            .map(|(id, e)| ExtensionStatus {
                id: id.clone(),
                serving: e.loaded.as_ref().map(|l| l.manifest.version.clone()),
                sha256: e.loaded.as_ref().map(|l| l.wasm_sha256.clone()),
                error: e.error.clone(),
                grant: e.loaded.as_ref().map(|l| GrantSummary::of(&l.grant)),
                calls: None,
            })
            .collect();
        serving
    }
}

/// How often the polling fallback looks at the extension folders.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Quiet time after the last file event before reloading (editors and `cp` write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Reloads `registry` whenever a file under its directories changes, until `stop` fires. Uses
/// inotify (notify) and, because file events do not cross some Docker mounts, also polls.
pub fn watch(registry: Arc<Registry>, stop: tokio_util::sync::CancellationToken) {
    use notify::Watcher as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
    let events = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = events.try_send(());
        }
    });
    let watcher = match watcher {
        Ok(mut w) => {
            for dir in &registry.dirs {
                if let Err(e) = w.watch(dir, notify::RecursiveMode::Recursive) {
                    tracing::warn!("cannot watch {} (polling only): {e}", dir.display());
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!("file events unavailable (polling only): {e}");
            None
        }
    };
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = rx.recv() => {
                    // Debounce: wait until the burst of events is over.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                }
                _ = poll.tick() => {}
            }
            // A reload with nothing changed only reads file metadata.
            registry.reload().await;
        }
    });
    drop(tx);
}
