//! Persistent state behind one interface, [`Store`], with three backends:
//!
//! - [`embedded::EmbeddedStore`]: an SQLite file in the data directory (the default: `serve`
//!   needs no other service). Several processes may open it at once (WAL), so the `data`
//!   subcommand works while the server runs.
//! - [`redis::RedisStore`]: Redis, shared by several server instances. Writes made while Redis
//!   is unreachable are queued (bounded) and flushed when it is back; reads fall back to the
//!   queue, else to "nothing stored", with a warning. Sessions never fail because of Redis.
//! - [`memory::MemoryStore`]: in-process maps, for tests and benchmarks.
//!
//! What lives there, by key (segments that come from devices are escaped by [`segment`], so a
//! device id can never reach into another device's keys):
//!
//! | Key | Value |
//! |---|---|
//! | `kv/<extension>/<device>/<key>` | an extension's `kv` value ([`kv_key`]); the memory of `mem_local_short` is `kv/mem_local_short/<device>/memory` |
//! | `history/<device>` | list of [`HistoryEntry`] JSON, oldest first, bounded by `store.history_limit` |
//! | `device/<device>/instance` | the instance holding the device's connection, with an expiry |
//! | `binding/<device>`, `activation/code/<code>`, `activation/device/<device>` | device bindings and pending activation codes ([`crate::http::activation`]) |
//! | `revoked/<device>` | the time before which the device's tokens are revoked ([`crate::auth::revoke`]) |
//!
//! The typed helpers ([`append_history`], [`history`], [`export_device`], [`import_device`],
//! [`register_device`]) are what the rest of the server uses.

pub mod announce;
pub mod cli;
pub mod embedded;
pub mod memory;
pub mod redis;
pub mod testing;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{StoreConfig, StoreKind};
use crate::llm::{ChatMessage, Role};

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached (Redis down): the operation may succeed later.
    #[error("the store is unreachable: {0}")]
    Unavailable(String),
    /// The backend failed or refused the operation.
    #[error("store failure: {0}")]
    Backend(String),
    /// Stored data is not what it should be.
    #[error("stored data is invalid: {0}")]
    Invalid(String),
}

/// A key/value store with bounded lists. Keys are UTF-8 text, values are bytes.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The value under `key` (not expired), if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key`, replacing any previous value; with `ttl`, it expires after it.
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError>;
    /// Removes the value or list under `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Every key (values and lists) that starts with `prefix`, sorted.
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Appends `items` to the list under `list` and keeps only its last `keep` items.
    async fn push(&self, list: &str, items: &[Vec<u8>], keep: usize) -> Result<(), StoreError>;
    /// The items of the list under `list`, oldest first (empty when there is none).
    async fn range(&self, list: &str) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Adds `delta` to the integer under `key` (a missing key counts as 0; the value is stored as
    /// decimal text, without expiry) and returns the new value, atomically. Not queued during a
    /// Redis outage: it fails with [`StoreError::Unavailable`] instead.
    async fn incr(&self, key: &str, delta: i64) -> Result<i64, StoreError>;
    /// What this store is, for the log (`embedded data/store.sqlite3`, `redis 127.0.0.1:6379`).
    fn describe(&self) -> String;
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Opens the store `config` names; relative embedded paths are inside `data_dir`.
///
/// # Errors
/// The embedded file cannot be opened, or Redis cannot be reached (unless `start_degraded`).
pub async fn open(config: &StoreConfig, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match config.kind {
        StoreKind::Embedded => {
            let path = if config.path.is_absolute() { config.path.clone() } else { data_dir.join(&config.path) };
            Ok(Arc::new(embedded::EmbeddedStore::open(&path).await?))
        }
        StoreKind::Redis => Ok(Arc::new(redis::RedisStore::connect(config).await?)),
    }
}

/// A counter's stored text as a number.
pub(crate) fn parse_counter(value: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| StoreError::Invalid("a counter is not a decimal number".into()))
}

/// A key segment that came from outside (a device id): `%` and `/` are percent-encoded, so
/// the segment can never contain the separator.
pub fn segment(text: &str) -> String {
    text.replace('%', "%25").replace('/', "%2F")
}

/// The inverse of [`segment`].
pub fn unsegment(text: &str) -> String {
    text.replace("%2F", "/").replace("%25", "%")
}

/// The prefix of every `kv` key of one extension and device (ends with `/`).
pub fn kv_prefix(extension_id: &str, device_id: &str) -> String {
    format!("kv/{}/{}/", segment(extension_id), segment(device_id))
}

/// The store key of an extension's `kv` key for a device.
pub fn kv_key(extension_id: &str, device_id: &str, key: &str) -> String {
    format!("{}{key}", kv_prefix(extension_id, device_id))
}

/// The chat history list of a device.
pub fn history_key(device_id: &str) -> String {
    format!("history/{}", segment(device_id))
}

/// The registry entry naming the instance that holds a device's connection.
pub fn device_instance_key(device_id: &str) -> String {
    format!("device/{}/instance", segment(device_id))
}

/// What the server last learnt about a device: kept [`SEEN_TTL`] after its last OTA check or
/// session, for the console's device list.
pub fn device_seen_key(device_id: &str) -> String {
    format!("device/{}/seen", segment(device_id))
}

/// How long a device's [`DeviceSeen`] record outlives its last OTA check or session.
pub const SEEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A device's board, firmware and when it was last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSeen {
    /// Unix seconds of its last OTA check, session start or session end.
    pub last_seen: u64,
    /// The board type its last OTA check reported.
    #[serde(default)]
    pub board: Option<String>,
    /// The firmware version its last OTA check reported.
    #[serde(default)]
    pub firmware: Option<String>,
}

/// Moves the `last_seen` of a device that has a [`DeviceSeen`] record to `now`; a device without
/// one (it never made an OTA check, which is where records are made) gets none, so connections
/// alone cannot add records.
pub async fn refresh_device_seen(store: &dyn Store, device_id: &str, now: u64) -> Result<(), StoreError> {
    match device_seen(store, device_id).await? {
        Some(_) => note_device_seen(store, device_id, None, None, now).await,
        None => Ok(()),
    }
}

/// The device's [`DeviceSeen`] record, if it has one (an unreadable one counts as none).
pub async fn device_seen(store: &dyn Store, device_id: &str) -> Result<Option<DeviceSeen>, StoreError> {
    Ok(store.get(&device_seen_key(device_id)).await?.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// Notes that the device was seen at `now` (Unix seconds), with its board and firmware when an
/// OTA check reported them (else the ones noted before are kept).
pub async fn note_device_seen(
    store: &dyn Store,
    device_id: &str,
    board: Option<&str>,
    firmware: Option<&str>,
    now: u64,
) -> Result<(), StoreError> {
    let mut seen = device_seen(store, device_id).await?.unwrap_or_default();
    seen.last_seen = now;
    if let Some(board) = board {
        seen.board = Some(board.chars().take(64).collect());
    }
    if let Some(firmware) = firmware {
        seen.firmware = Some(firmware.chars().take(64).collect());
    }
    let bytes = serde_json::to_vec(&seen).map_err(|e| StoreError::Invalid(e.to_string()))?;
    store.set(&device_seen_key(device_id), &bytes, Some(SEEN_TTL)).await
}

/// One message of a device's chat history as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix time in milliseconds when the turn ended.
    pub at_ms: u64,
    /// The session (connection) it belongs to.
    pub session_id: String,
    /// The message: role, content, tool calls.
    pub message: ChatMessage,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Appends a finished turn's messages (system messages left out) to the device's history,
/// keeping its last `keep` messages.
pub async fn append_history(
    store: &dyn Store,
    device_id: &str,
    session_id: &str,
    messages: &[ChatMessage],
    keep: usize,
) -> Result<(), StoreError> {
    let at_ms = now_ms();
    let items: Vec<Vec<u8>> = messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|message| {
            let entry = HistoryEntry { at_ms, session_id: session_id.to_owned(), message: message.clone() };
            serde_json::to_vec(&entry).map_err(|e| StoreError::Invalid(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if items.is_empty() {
        return Ok(());
    }
    store.push(&history_key(device_id), &items, keep.max(1)).await
}

/// The device's chat history, oldest first. Entries that do not parse are skipped (and logged).
pub async fn history(store: &dyn Store, device_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
    let items = store.range(&history_key(device_id)).await?;
    Ok(items
        .iter()
        .filter_map(|item| match serde_json::from_slice(item) {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::warn!(device = device_id, "skipping an unreadable history entry: {e}");
                None
            }
        })
        .collect())
}

/// Records that `instance` holds the device's connection, for `ttl` (refresh before it ends).
pub async fn register_device(
    store: &dyn Store,
    device_id: &str,
    instance: &str,
    ttl: Duration,
) -> Result<(), StoreError> {
    store.set(&device_instance_key(device_id), instance.as_bytes(), Some(ttl)).await
}

/// The instance holding the device's connection, if one is registered.
pub async fn device_instance(store: &dyn Store, device_id: &str) -> Result<Option<String>, StoreError> {
    Ok(store.get(&device_instance_key(device_id)).await?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Everything stored about one device, as exported by `xiaozhi-server data export`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceExport {
    /// The device id.
    pub device_id: String,
    /// Extension key/values by extension id, then key. Values are UTF-8 text when they are
    /// text, else `base64:` followed by the base64 of the bytes.
    pub kv: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// The chat history, oldest first.
    pub history: Vec<HistoryEntry>,
}

const BASE64_TAG: &str = "base64:";

fn encode_value(value: &[u8]) -> String {
    use base64::Engine as _;
    match std::str::from_utf8(value) {
        Ok(text) if !text.starts_with(BASE64_TAG) => text.to_owned(),
        _ => format!("{BASE64_TAG}{}", base64::engine::general_purpose::STANDARD.encode(value)),
    }
}

fn decode_value(text: &str) -> Result<Vec<u8>, StoreError> {
    use base64::Engine as _;
    match text.strip_prefix(BASE64_TAG) {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| StoreError::Invalid(format!("a base64 value does not decode: {e}"))),
        None => Ok(text.as_bytes().to_vec()),
    }
}

/// The devices the store holds memory, chat history or a [`DeviceSeen`] record for.
pub async fn known_devices(store: &dyn Store) -> Result<std::collections::BTreeSet<String>, StoreError> {
    let mut devices = std::collections::BTreeSet::new();
    for key in store.keys("kv/").await? {
        if let Some(device) = key.split('/').nth(2) {
            devices.insert(unsegment(device));
        }
    }
    for key in store.keys("history/").await? {
        if let Some(device) = key.strip_prefix("history/") {
            devices.insert(unsegment(device));
        }
    }
    for key in store.keys("device/").await? {
        if let Some(device) = key.strip_prefix("device/").and_then(|k| k.strip_suffix("/seen")) {
            devices.insert(unsegment(device));
        }
    }
    Ok(devices)
}

/// Deletes every extension key/value of `device_id` (its memory) and returns how many.
pub async fn forget_device_kv(store: &dyn Store, device_id: &str) -> Result<usize, StoreError> {
    let device = segment(device_id);
    let mut deleted = 0;
    for key in store.keys("kv/").await? {
        if key.split('/').nth(2) == Some(device.as_str()) {
            store.delete(&key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Collects everything stored about `device_id`.
pub async fn export_device(store: &dyn Store, device_id: &str) -> Result<DeviceExport, StoreError> {
    let mut export = DeviceExport { device_id: device_id.to_owned(), ..DeviceExport::default() };
    let device = segment(device_id);
    for key in store.keys("kv/").await? {
        // kv/<extension>/<device>/<key>
        let mut parts = key.splitn(4, '/');
        let (Some(_), Some(extension), Some(owner), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if owner != device {
            continue;
        }
        if let Some(value) = store.get(&key).await? {
            export.kv.entry(unsegment(extension)).or_default().insert(name.to_owned(), encode_value(&value));
        }
    }
    export.history = history(store, device_id).await?;
    Ok(export)
}

/// Writes an export back: every kv value is set (replacing what is there) and the history is
/// replaced by the exported one (bounded by `keep`).
pub async fn import_device(store: &dyn Store, export: &DeviceExport, keep: usize) -> Result<(), StoreError> {
    if export.device_id.is_empty() {
        return Err(StoreError::Invalid("the export names no device_id".into()));
    }
    for (extension, values) in &export.kv {
        for (key, value) in values {
            store.set(&kv_key(extension, &export.device_id, key), &decode_value(value)?, None).await?;
        }
    }
    let list = history_key(&export.device_id);
    store.delete(&list).await?;
    let items: Vec<Vec<u8>> = export
        .history
        .iter()
        .map(|entry| serde_json::to_vec(entry).map_err(|e| StoreError::Invalid(e.to_string())))
        .collect::<Result<_, _>>()?;
    if !items.is_empty() {
        store.push(&list, &items, keep.max(1)).await?;
    }
    Ok(())
}
