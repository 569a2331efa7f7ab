//! [`EmbeddedStore`]: the store in an SQLite file (rusqlite, SQLite compiled in).
//!
//! Two tables: `kv(key, value, expires_ms)` and `list(id, key, value)` (a list is the rows of one
//! key in `id` order). The file is in WAL mode with a busy timeout, so another process (the
//! `data` subcommand, a backup) can read and write while the server runs. Every operation runs
//! on a blocking thread, one at a time per process (they take microseconds).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError, now_ms, parse_counter};

/// How long an operation waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Expired values are deleted after this many sets with an expiry (so they cannot pile up).
const PURGE_EVERY: u64 = 256;

/// A store in an SQLite file.
pub struct EmbeddedStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// Sets with an expiry since the file was opened.
    expiring_sets: std::sync::atomic::AtomicU64,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database file at `path` and its parent directory.
    ///
    /// # Errors
    /// The directory or file cannot be created, or the file is not an SQLite database.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let owned = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || open_connection(&owned))
            .await
            .map_err(backend)?
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
            expiring_sets: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Runs `op` on the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            op(&mut conn)
        })
        .await
        .map_err(backend)?
        .map_err(backend)
    }
}

fn open_connection(path: &Path) -> Result<Connection, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, expires_ms INTEGER);
         CREATE INDEX IF NOT EXISTS kv_by_expiry ON kv (expires_ms) WHERE expires_ms IS NOT NULL;
         CREATE TABLE IF NOT EXISTS list (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, value BLOB NOT NULL);
         CREATE INDEX IF NOT EXISTS list_by_key ON list (key, id);",
    )
    .map_err(|e| format!("not a usable SQLite database: {e}"))?;
    Ok(conn)
}

/// `now` as SQLite's integer.
fn now() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

/// The smallest string greater than every string starting with `prefix` (for range scans), or
/// `None` when there is none.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.with(move |conn| {
            conn.query_row(
                "SELECT value FROM kv WHERE key = ?1 AND (expires_ms IS NULL OR expires_ms > ?2)",
                params![key, now()],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        let expires = ttl.map(|ttl| now().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        let purge = expires.is_some()
            && self.expiring_sets.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1;
        self.with(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO kv (key, value, expires_ms) VALUES (?1, ?2, ?3)",
                params![key, value, expires],
            )?;
            if purge {
                conn.execute("DELETE FROM kv WHERE expires_ms IS NOT NULL AND expires_ms <= ?1", params![now()])?;
            }
            Ok(())
        })
        .await
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let key = key.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let current: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT value FROM kv WHERE key = ?1 AND (expires_ms IS NULL OR expires_ms > ?2)",
                    params![key, now()],
                    |row| row.get(0),
                )
                .optional()?;
            let current = match current.as_deref().map(parse_counter) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => return Ok(Err(StoreError::Invalid(format!("{key} is not a counter")))),
            };
            let next = current.saturating_add(delta);
            tx.execute(
                "INSERT OR REPLACE INTO kv (key, value, expires_ms) VALUES (?1, ?2, NULL)",
                params![key, next.to_string().into_bytes()],
            )?;
            tx.commit()?;
            Ok(Ok(next))
        })
        .await?
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM kv WHERE key = ?1", params![key])?;
            tx.execute("DELETE FROM list WHERE key = ?1", params![key])?;
            tx.commit()
        })
        .await
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let start = prefix.to_owned();
        // Keys are compared as text; without an upper bound every key from `start` on is read
        // and filtered.
        let end = prefix_end(prefix).unwrap_or_else(|| "\u{10FFFF}".repeat(2));
        let mut keys = self
            .with(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT key FROM kv WHERE key >= ?1 AND key < ?2 AND (expires_ms IS NULL OR expires_ms > ?3)
                     UNION SELECT DISTINCT key FROM list WHERE key >= ?1 AND key < ?2",
                )?;
                let rows = stmt.query_map(params![start, end, now()], |row| row.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            })
            .await?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        Ok(keys)
    }

    async fn push(&self, list: &str, items: &[Vec<u8>], keep: usize) -> Result<(), StoreError> {
        let (list, items) = (list.to_owned(), items.to_vec());
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let tx = conn.transaction()?;
            for item in &items {
                tx.execute("INSERT INTO list (key, value) VALUES (?1, ?2)", params![list, item])?;
            }
            tx.execute(
                "DELETE FROM list WHERE key = ?1 AND id NOT IN
                 (SELECT id FROM list WHERE key = ?1 ORDER BY id DESC LIMIT ?2)",
                params![list, keep],
            )?;
            tx.commit()
        })
        .await
    }

    async fn range(&self, list: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let list = list.to_owned();
        self.with(move |conn| {
            let mut stmt = conn.prepare("SELECT value FROM list WHERE key = ?1 ORDER BY id")?;
            let rows = stmt.query_map(params![list], |row| row.get::<_, Vec<u8>>(0))?;
            rows.collect()
        })
        .await
    }

    fn describe(&self) -> String {
        format!("embedded (SQLite) {}", self.path.display())
    }
}
