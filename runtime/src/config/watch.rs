//! Hot reload: watch `config.yaml` and `data/.config.yaml`, reload on change, and publish each
//! valid configuration on a `tokio::sync::watch` channel.
//!
//! The rest of the server holds the channel's receiver and each new session takes
//! `borrow().clone()` when it connects, so a change applies to new sessions without a restart;
//! sessions already running keep the config they started with.
//!
//! The parent directories of both files are watched (non-recursively) with the platform's
//! watcher (inotify, FSEvents…) rather than the files, because editors replace a file by renaming
//! a new one over it, and `data/` may not exist yet: then its nearest existing ancestor is watched
//! until it appears. Events are filtered on the two file names and debounced (~250 ms).
//!
//! When the platform's watcher cannot start or cannot watch, and always when
//! `XIAOZHI_CONFIG_POLL=1` (Docker bind mounts often deliver no events), both files are also
//! polled every second. Polling compares the files' *contents* with what was last loaded, so it
//! sees every change (notify's `PollWatcher` compares modification times in whole seconds and
//! misses a second save within the same second) and costs two small reads a second.
//!
//! Loading runs on its own thread (the loader), never on the async runtime and never on the
//! watcher's loop, so the watcher keeps taking events while a file is parsed; when several changes
//! wait, only the newest is loaded. A save with unchanged contents publishes nothing. Files over
//! [`MAX_CONFIG_BYTES`](super::load::MAX_CONFIG_BYTES), or nesting flow collections deeper than
//! [`MAX_FLOW_DEPTH`](super::load::MAX_FLOW_DEPTH), are refused before they are parsed.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

use super::Config;
use super::load::{ConfigError, ConfigSource, Texts, load_texts, read_texts};

/// Environment variable that turns polling on in addition to the platform watcher.
const POLL_ENV: &str = "XIAOZHI_CONFIG_POLL";
/// How often the files are read when polling.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Quiet time after the last event before the files are loaded.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// Longest wait for a quiet moment while events keep coming.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// Watches the config files while it lives; dropping it stops the watching (and drops the
/// channel's sender).
pub struct ConfigWatcher {
    /// Tells the watcher thread to stop.
    control: Sender<Message>,
    /// The watcher thread, joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigWatcher").field("running", &self.thread.is_some()).finish()
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        // The thread may already have ended (a closed channel); nothing to report then.
        let _ = self.control.send(Message::Stop);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the config watcher thread panicked");
        }
    }
}

/// What the watcher thread receives.
enum Message {
    /// A file system event (or a watcher error) from the platform's watcher.
    Event(notify::Result<Event>),
    /// Read the files now (another instance announced a change).
    Check,
    /// The [`ConfigWatcher`] was dropped.
    Stop,
}

/// Makes a [`ConfigWatcher`] read the files now, as if they had changed (used when another
/// server instance announces a config change). Cheap to clone; does nothing once the watcher
/// is gone.
#[derive(Clone)]
pub struct ConfigCheck(Sender<Message>);

impl ConfigCheck {
    /// Asks the watcher to read the files; an unchanged content changes nothing.
    pub fn check_now(&self) {
        let _ = self.0.send(Message::Check);
    }
}

impl ConfigWatcher {
    /// A handle that makes this watcher read the files now.
    pub fn checker(&self) -> ConfigCheck {
        ConfigCheck(self.control.clone())
    }
}

/// How the watcher works; tests shorten the delays.
#[derive(Debug, Clone, Copy)]
struct Options {
    /// Try the platform's watcher.
    native: bool,
    /// Poll even when the platform's watcher runs.
    always_poll: bool,
    /// Polling period.
    poll_interval: Duration,
    /// Quiet time before loading.
    debounce: Duration,
}

impl Options {
    /// The production settings, with `XIAOZHI_CONFIG_POLL` read from the environment.
    fn from_env() -> Self {
        let always_poll = std::env::var(POLL_ENV)
            .map(|value| matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self { native: true, always_poll, poll_interval: POLL_INTERVAL, debounce: DEBOUNCE }
    }
}

/// Starts watching both files of `source`. Each change that loads is published on `tx` (and
/// logged with its warnings); a change that does not load is logged and the previous config
/// stays. The contents at the time of this call are taken as already published.
pub fn spawn_watcher(source: ConfigSource, tx: watch::Sender<Arc<Config>>) -> Result<ConfigWatcher, ConfigError> {
    spawn_with(source, tx, Options::from_env())
}

/// [`spawn_watcher`] with explicit options.
fn spawn_with(
    source: ConfigSource,
    tx: watch::Sender<Arc<Config>>,
    options: Options,
) -> Result<ConfigWatcher, ConfigError> {
    let files = [absolute(&source.base)?, absolute(&source.override_path)?];
    let (control, events) = mpsc::channel();
    let native = if options.native {
        match notify::recommended_watcher(forward(control.clone())) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!("cannot start the file watcher ({err}); polling the config files instead");
                None
            }
        }
    } else {
        None
    };
    let polling = options.always_poll || native.is_none();
    let last = snapshot(&read_texts(&source));
    let loader = Loader::spawn(source.clone(), tx)?;
    let mut state = State { source, files, loader, native, polling, watched: BTreeSet::new(), last, options };
    state.refresh_watches();
    tracing::info!(
        "watching {} and {} for changes ({})",
        state.files[0].display(),
        state.files[1].display(),
        match (state.native.is_some(), state.polling) {
            (true, true) => "file events and polling",
            (true, false) => "file events",
            _ => "polling",
        }
    );
    let thread = std::thread::Builder::new()
        .name("config-watcher".into())
        .spawn(move || state.run(&events))
        .map_err(ConfigError::WatchThread)?;
    Ok(ConfigWatcher { control, thread: Some(thread) })
}

/// `path` made absolute (against the current directory), so event paths compare equal.
fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|err| ConfigError::Watch(notify::Error::io(err).add_path(path.to_path_buf())))
}

/// What was read from disk: the contents, or the error reading them.
type Snapshot = Result<Texts, String>;

/// A [`Snapshot`] of a read.
fn snapshot(texts: &Result<Texts, ConfigError>) -> Snapshot {
    match texts {
        Ok(texts) => Ok(texts.clone()),
        Err(err) => Err(err.to_string()),
    }
}

/// The event handler given to the platform's watcher: forwards events to the watcher thread.
fn forward(sender: Sender<Message>) -> impl Fn(notify::Result<Event>) + Send + 'static {
    move |event| {
        // The thread has stopped when this fails; the watcher is being dropped too.
        let _ = sender.send(Message::Event(event));
    }
}

/// The watcher thread's state.
struct State {
    /// The files as given (named in error messages).
    source: ConfigSource,
    /// The two files, absolute: what events are compared against.
    files: [PathBuf; 2],
    /// Loads and publishes changed contents.
    loader: Loader,
    /// The platform's watcher, while it works.
    native: Option<RecommendedWatcher>,
    /// Whether the files are read every `poll_interval`.
    polling: bool,
    /// The directories the platform's watcher watches now.
    watched: BTreeSet<PathBuf>,
    /// The contents last loaded (or the error reading them).
    last: Snapshot,
    /// Delays.
    options: Options,
}

impl State {
    /// Waits for relevant events or polled changes, debounces them and reloads, until stopped.
    fn run(mut self, events: &Receiver<Message>) {
        loop {
            let message = if self.polling {
                match events.recv_timeout(self.options.poll_interval) {
                    Ok(message) => Some(message),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match events.recv() {
                    Ok(message) => Some(message),
                    Err(_) => return,
                }
            };
            let relevant = match message {
                None => snapshot(&read_texts(&self.source)) != self.last,
                Some(Message::Check) => true,
                Some(Message::Event(event)) => self.handle(event),
                Some(Message::Stop) => return,
            };
            if !relevant {
                continue;
            }
            let started = Instant::now();
            while started.elapsed() < MAX_DEBOUNCE {
                match events.recv_timeout(self.options.debounce) {
                    Ok(Message::Event(event)) => {
                        self.handle(event);
                    }
                    Ok(Message::Check) => {}
                    Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
            self.reload();
        }
    }

    /// Updates the watches for `event`; whether it may have changed one of the files.
    fn handle(&mut self, event: notify::Result<Event>) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!("config watcher: {err}");
                return false;
            }
        };
        // Opening and reading (ours included) change nothing.
        if let EventKind::Access(kind) = event.kind
            && !matches!(kind, AccessKind::Close(AccessMode::Write))
        {
            return false;
        }
        // A watched directory removed or renamed away: its watch is gone with it.
        if matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))) {
            for path in &event.paths {
                if self.watched.remove(path)
                    && let Some(native) = &mut self.native
                {
                    // It may be gone already.
                    let _ = native.unwatch(path);
                }
            }
        }
        let new_watch = self.refresh_watches();
        new_watch || event.need_rescan() || event.paths.iter().any(|path| self.files.contains(path))
    }

    /// Has the platform's watcher watch the nearest existing directory of each file; whether a
    /// directory was added (a file may have appeared in it before the watch started). A watch
    /// that fails for another reason than a vanished directory switches to polling.
    fn refresh_watches(&mut self) -> bool {
        let Some(native) = &mut self.native else { return false };
        let desired: BTreeSet<PathBuf> =
            self.files.iter().filter_map(|file| file.parent()).map(nearest_existing_dir).collect();
        let stale: Vec<PathBuf> = self.watched.difference(&desired).cloned().collect();
        for dir in stale {
            // It may be gone already.
            let _ = native.unwatch(&dir);
            self.watched.remove(&dir);
        }
        let mut added = false;
        for dir in desired {
            if self.watched.contains(&dir) {
                continue;
            }
            match native.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                    added = true;
                }
                // Removed in the meantime: the next event finds its nearest existing ancestor.
                Err(err) if matches!(err.kind, notify::ErrorKind::PathNotFound) => {}
                Err(err) => {
                    tracing::warn!("cannot watch {} ({err}); polling the config files instead", dir.display());
                    self.native = None;
                    self.watched.clear();
                    self.polling = true;
                    return true;
                }
            }
        }
        added
    }

    /// Reads the files; hands changed contents to the loader, logs a read error.
    fn reload(&mut self) {
        let texts = read_texts(&self.source);
        let snapshot = snapshot(&texts);
        if snapshot == self.last {
            tracing::debug!("config files touched, contents unchanged");
            return;
        }
        self.last = snapshot;
        match texts {
            Ok(texts) => self.loader.load(texts),
            Err(err) => tracing::warn!("config change rejected, keeping the previous config: {err}"),
        }
    }
}

/// The loader thread: parses what the watcher hands it, newest first, and publishes each valid
/// config. It ends (dropping the channel's sender) when the watcher's loop does.
struct Loader {
    tx: Option<Sender<Texts>>,
    thread: Option<JoinHandle<()>>,
}

impl Loader {
    fn spawn(source: ConfigSource, publish: watch::Sender<Arc<Config>>) -> Result<Self, ConfigError> {
        let (tx, rx) = mpsc::channel::<Texts>();
        let thread = std::thread::Builder::new()
            .name("config-loader".into())
            .spawn(move || {
                while let Ok(mut texts) = rx.recv() {
                    // Changes that came in meanwhile: only the newest counts.
                    while let Ok(newer) = rx.try_recv() {
                        texts = newer;
                    }
                    match load_texts(&source, &texts) {
                        Ok(loaded) => {
                            if loaded.warnings.is_empty() {
                                tracing::info!("config reloaded; new connections use it");
                            } else {
                                tracing::info!(
                                    "config reloaded with {} warning(s); new connections use it: {}",
                                    loaded.warnings.len(),
                                    loaded.warnings.join("; ")
                                );
                            }
                            publish.send_replace(Arc::new(loaded.config));
                        }
                        Err(err) => tracing::warn!("config change rejected, keeping the previous config: {err}"),
                    }
                }
            })
            .map_err(ConfigError::WatchThread)?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    fn load(&self, texts: Texts) {
        if let Some(tx) = &self.tx {
            // The loader only ends after this sender is dropped.
            let _ = tx.send(texts);
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the config loader thread panicked");
        }
    }
}

/// `dir` if it is a directory, else its nearest ancestor that is.
fn nearest_existing_dir(dir: &Path) -> PathBuf {
    let mut current = dir;
    loop {
        if current.is_dir() {
            return current.to_path_buf();
        }
        match current.parent() {
            Some(parent) => current = parent,
            None => return current.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;

    /// The repository's documented `config.yaml`.
    const REPO_CONFIG: &str = include_str!("../../../config.yaml");

    /// Fast settings for tests.
    fn options(native: bool) -> Options {
        Options {
            native,
            always_poll: !native,
            poll_interval: Duration::from_millis(100),
            debounce: Duration::from_millis(50),
        }
    }

    /// A temporary root with `config.yaml` and the loaded config's channel.
    fn setup(
        create_data: bool,
    ) -> (tempfile::TempDir, ConfigSource, watch::Sender<Arc<Config>>, watch::Receiver<Arc<Config>>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = ConfigSource::new(dir.path().join("config.yaml"), dir.path().join("data"));
        std::fs::write(&source.base, REPO_CONFIG).expect("write config.yaml");
        if create_data {
            std::fs::create_dir(dir.path().join("data")).expect("create data/");
        }
        let config = load(&source).expect("the repository config loads").config;
        let (tx, rx) = watch::channel(Arc::new(config));
        (dir, source, tx, rx)
    }

    /// Replaces `path` the way editors do: write a sibling, rename it over.
    fn replace_file(path: &Path, text: &str) {
        let temporary = path.with_extension("tmp-save");
        std::fs::write(&temporary, text).expect("write");
        std::fs::rename(&temporary, path).expect("rename");
    }

    /// Waits up to 5 s for the published config to satisfy `check`.
    fn wait_for(rx: &mut watch::Receiver<Arc<Config>>, check: impl Fn(&Config) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if check(&rx.borrow_and_update()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Publishes a valid override, rejects an invalid one, then publishes the next valid one.
    fn publishes_valid_and_rejects_invalid(native: bool, create_data: bool) {
        let (_dir, source, tx, mut rx) = setup(create_data);
        let override_path = source.override_path.clone();
        let watcher = spawn_with(source, tx, options(native)).expect("the watcher starts");

        if !create_data {
            std::fs::create_dir(override_path.parent().expect("data/")).expect("create data/");
        }
        std::fs::write(&override_path, "server:\n  port: 9000\n").expect("write the override");
        assert!(wait_for(&mut rx, |config| config.server.port == 9000), "the valid change was not published");

        replace_file(&override_path, "server:\n  port: abc\n");
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(rx.has_changed().ok(), Some(false), "an invalid change must not be published");
        assert_eq!(rx.borrow().server.port, 9000, "the previous config stays");

        replace_file(&override_path, "server:\n  port: 9001\nselected_module:\n  Intent: nointent\n");
        assert!(
            wait_for(&mut rx, |config| config.server.port == 9001
                && config.providers.intent == crate::config::IntentMode::NoIntent),
            "the watcher keeps working after a rejected change"
        );

        drop(watcher);
        assert!(rx.has_changed().is_err(), "dropping the watcher stops it and closes the channel");
    }

    #[test]
    fn native_watcher_follows_changes_and_the_creation_of_data_dir() {
        publishes_valid_and_rejects_invalid(true, false);
    }

    #[test]
    fn polling_watcher_follows_changes() {
        publishes_valid_and_rejects_invalid(false, true);
    }

    #[test]
    fn polling_watcher_sees_data_dir_appear() {
        publishes_valid_and_rejects_invalid(false, false);
    }

    #[test]
    fn base_file_changes_and_unchanged_saves() {
        let (_dir, source, tx, mut rx) = setup(true);
        let base = source.base.clone();
        let _watcher = spawn_with(source, tx, options(true)).expect("the watcher starts");

        // Saving identical contents publishes nothing.
        replace_file(&base, REPO_CONFIG);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(rx.has_changed().ok(), Some(false));

        replace_file(
            &base,
            &REPO_CONFIG.replace("close_connection_no_voice_time: 120", "close_connection_no_voice_time: 30"),
        );
        assert!(wait_for(&mut rx, |config| config.close_connection_no_voice_time == 30));
    }

    #[test]
    fn a_deeply_nested_file_does_not_hold_up_the_next_change() {
        let (_dir, source, tx, mut rx) = setup(true);
        let override_path = source.override_path.clone();
        let _watcher = spawn_with(source, tx, options(true)).expect("the watcher starts");
        // The attack: 200 KB nested 100 000 deep (the parser took ~50 s over it).
        let nested = format!("prompt: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        replace_file(&override_path, &nested);
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        replace_file(&override_path, "server:\n  port: 9100\n");
        assert!(wait_for(&mut rx, |config| config.server.port == 9100), "the valid change waited");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn nearest_existing_dir_walks_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(nearest_existing_dir(&dir.path().join("a/b/c")), dir.path());
        assert_eq!(nearest_existing_dir(dir.path()), dir.path());
    }
}
