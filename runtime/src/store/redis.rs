//! [`RedisStore`]: the store in Redis, shared by several server instances.
//!
//! Every key is prefixed with `store.key_prefix`. Values are strings (`SET … PX` for expiry),
//! lists are Redis lists (`RPUSH` + `LTRIM` in one `MULTI`).
//!
//! **Outages.** The connection is a [`ConnectionManager`] (it reconnects by itself), made lazily
//! so that a server configured with `start_degraded` can start while Redis is down. A command
//! that fails because Redis is unreachable (connection refused or dropped, I/O error, no answer
//! within `store.timeout_ms`) does not fail the caller:
//! - a write goes into a bounded queue (`store.outage_buffer`; beyond it the oldest queued write
//!   is dropped and counted) and returns `Ok`; while the queue is not empty every new write
//!   queues behind it, so the order of writes is kept;
//! - a read answers from the newest queued write of that key if there is one, else "nothing
//!   stored", with a warning.
//!
//! A flusher task replays the queue in order as soon as Redis answers again (checking every
//! [`FLUSH_RETRY`]), and logs how many writes it flushed and how many were dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Store, StoreError};
use crate::config::StoreConfig;

/// How often the flusher retries while Redis is unreachable.
pub const FLUSH_RETRY: Duration = Duration::from_millis(500);
/// Connection attempts at start before giving up (or starting degraded).
pub const CONNECT_ATTEMPTS: u32 = 5;

/// A write waiting for Redis.
#[derive(Debug, Clone)]
enum Op {
    Set { key: String, value: Vec<u8>, ttl: Option<Duration> },
    Delete { key: String },
    Push { list: String, items: Vec<Vec<u8>>, keep: usize },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Set { key, .. } | Op::Delete { key } => key,
            Op::Push { list, .. } => list,
        }
    }
}

#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    dropped: u64,
    queued_total: u64,
}

struct Inner {
    client: redis::Client,
    address: String,
    prefix: String,
    timeout: Duration,
    capacity: usize,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    queue: Mutex<Queue>,
    wake: tokio::sync::Notify,
}

/// A store in Redis.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// Whether an error means "Redis cannot be reached right now" (as opposed to a refused command).
fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped()
}

impl RedisStore {
    /// Connects to `config.url`, retrying [`CONNECT_ATTEMPTS`] times with backoff. With
    /// `start_degraded`, a Redis that cannot be reached is logged and the store starts anyway
    /// (writes queue until Redis answers).
    ///
    /// # Errors
    /// The URL is invalid, or Redis cannot be reached and `start_degraded` is off.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| StoreError::Backend(format!("store.url {:?}: {e}", config.url)))?;
        let address = client.get_connection_info().addr().to_string();
        let store = Self {
            inner: Arc::new(Inner {
                client,
                address,
                prefix: config.key_prefix.clone(),
                timeout: Duration::from_millis(config.timeout_ms.max(50)),
                capacity: config.outage_buffer.max(1),
                conn: tokio::sync::Mutex::new(None),
                queue: Mutex::new(Queue::default()),
                wake: tokio::sync::Notify::new(),
            }),
        };
        let mut delay = Duration::from_millis(200);
        let mut last = None;
        for attempt in 1..=CONNECT_ATTEMPTS {
            match store.ping().await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        "Redis at {} is not answering (attempt {attempt}/{CONNECT_ATTEMPTS}): {e}",
                        store.inner.address
                    );
                    last = Some(e);
                    if attempt < CONNECT_ATTEMPTS {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        if let Some(e) = last {
            if !config.start_degraded {
                return Err(StoreError::Unavailable(format!(
                    "Redis at {} cannot be reached ({e}); start it, fix store.url, or set store.start_degraded: true",
                    store.inner.address
                )));
            }
            tracing::error!(
                "Redis at {} cannot be reached; starting degraded: writes are queued (at most {}) until it answers",
                store.inner.address,
                store.inner.capacity
            );
        }
        tokio::spawn(flusher(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// Sends `PING`.
    ///
    /// # Errors
    /// Redis cannot be reached or answers with an error.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.inner.connection().await?;
        self.inner.run(redis::cmd("PING").query_async::<String>(&mut conn)).await.map(drop)
    }

    /// Writes waiting for Redis to come back.
    pub fn queued(&self) -> usize {
        self.inner.lock_queue().ops.len()
    }

    /// Queued writes dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.inner.lock_queue().dropped
    }

    /// Publishes `message` on the channel `<key_prefix><channel>`.
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), StoreError> {
        let mut conn = self.inner.connection().await?;
        let channel = format!("{}{channel}", self.inner.prefix);
        self.inner.run(redis::cmd("PUBLISH").arg(channel).arg(message).query_async::<i64>(&mut conn)).await.map(drop)
    }

    /// A Redis client for subscriptions (pub/sub needs its own connection).
    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// The full name of a channel (`<key_prefix><channel>`).
    pub fn channel(&self, channel: &str) -> String {
        format!("{}{channel}", self.inner.prefix)
    }

    async fn write(&self, op: Op) -> Result<(), StoreError> {
        if self.inner.lock_queue().ops.is_empty() {
            match self.inner.apply(&op).await {
                Err(StoreError::Unavailable(why)) => {
                    tracing::warn!("Redis unreachable ({why}); queueing writes until it is back");
                }
                other => return other,
            }
        }
        self.inner.enqueue(op);
        Ok(())
    }

    /// The newest queued write of `key`, if any: `Some(None)` when it is a delete.
    fn queued_value(&self, key: &str) -> Option<Option<Vec<u8>>> {
        let queue = self.inner.lock_queue();
        queue.ops.iter().rev().find(|op| op.key() == key).and_then(|op| match op {
            Op::Set { value, .. } => Some(Some(value.clone())),
            Op::Delete { .. } => Some(None),
            Op::Push { .. } => None,
        })
    }
}

impl Inner {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn enqueue(&self, op: Op) {
        let mut queue = self.lock_queue();
        if queue.ops.len() >= self.capacity {
            queue.ops.pop_front();
            queue.dropped += 1;
            if queue.dropped.is_power_of_two() {
                tracing::error!(
                    "Redis outage: the write queue is full ({} writes); {} oldest writes dropped so far",
                    self.capacity,
                    queue.dropped
                );
            }
        }
        queue.ops.push_back(op);
        queue.queued_total += 1;
        drop(queue);
        self.wake.notify_one();
    }

    /// The shared connection, made on first use (and after a failed start).
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made =
            tokio::time::timeout(self.timeout * 2, ConnectionManager::new_with_config(self.client.clone(), config))
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!("no answer from {} within {:?}", self.address, self.timeout * 2))
                })?
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.address)))?;
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Runs one command future with the response timeout, mapping errors.
    async fn run<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, command).await {
            Err(_) => {
                Err(StoreError::Unavailable(format!("no answer from {} within {:?}", self.address, self.timeout)))
            }
            Ok(Err(e)) if is_outage(&e) => Err(StoreError::Unavailable(format!("{}: {e}", self.address))),
            Ok(Err(e)) => Err(StoreError::Backend(e.to_string())),
            Ok(Ok(value)) => Ok(value),
        }
    }

    async fn apply(&self, op: &Op) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        match op {
            Op::Set { key, value, ttl } => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.key(key)).arg(value.as_slice());
                if let Some(ttl) = ttl {
                    cmd.arg("PX").arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
                }
                self.run(cmd.query_async::<()>(&mut conn)).await
            }
            Op::Delete { key } => {
                self.run(redis::cmd("DEL").arg(self.key(key)).query_async::<i64>(&mut conn)).await.map(drop)
            }
            Op::Push { list, items, keep } => {
                let key = self.key(list);
                let keep = i64::try_from(*keep).unwrap_or(i64::MAX);
                let mut pipe = redis::pipe();
                pipe.atomic().cmd("RPUSH").arg(&key).arg(items.as_slice()).ignore();
                pipe.cmd("LTRIM").arg(&key).arg(-keep).arg(-1).ignore();
                self.run(pipe.query_async::<()>(&mut conn)).await
            }
        }
    }
}

/// Replays queued writes in order whenever Redis answers; ends when the store is dropped.
async fn flusher(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let waiting = strong.lock_queue().ops.len();
        if waiting == 0 {
            // Wait for a queued write (or check again now and then, in case of a lost wake-up).
            let _ = tokio::time::timeout(Duration::from_secs(5), strong.wake.notified()).await;
            continue;
        }
        let mut flushed = 0u64;
        loop {
            let Some(op) = strong.lock_queue().ops.front().cloned() else { break };
            match strong.apply(&op).await {
                Ok(()) => {
                    strong.lock_queue().ops.pop_front();
                    flushed += 1;
                }
                Err(StoreError::Unavailable(_)) => break,
                Err(e) => {
                    // Redis answered but refused this write: retrying cannot help.
                    tracing::error!("Redis refused a queued write to {}: {e}; dropping it", op.key());
                    strong.lock_queue().ops.pop_front();
                }
            }
        }
        if flushed > 0 {
            let queue = strong.lock_queue();
            tracing::info!(
                "Redis is back: flushed {flushed} queued writes ({} still queued, {} dropped since start)",
                queue.ops.len(),
                queue.dropped
            );
        }
        let retry = !strong.lock_queue().ops.is_empty();
        drop(strong);
        if retry {
            tokio::time::sleep(FLUSH_RETRY).await;
        }
    }
}

/// `text` with Redis glob characters escaped, for `SCAN … MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(queued) = self.queued_value(key) {
            return Ok(queued);
        }
        let inner = &self.inner;
        let result = async {
            let mut conn = inner.connection().await?;
            inner.run(redis::cmd("GET").arg(inner.key(key)).query_async::<Option<Vec<u8>>>(&mut conn)).await
        }
        .await;
        match result {
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!("Redis unreachable ({why}); reading {key} as empty");
                Ok(None)
            }
            other => other,
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.write(Op::Set { key: key.to_owned(), value: value.to_vec(), ttl }).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.write(Op::Delete { key: key.to_owned() }).await
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let inner = &self.inner;
        let pattern = format!("{}*", glob_escape(&inner.key(prefix)));
        let mut conn = inner.connection().await?;
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch) = inner
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async::<(u64, Vec<String>)>(&mut conn),
                )
                .await?;
            keys.extend(batch.into_iter().filter_map(|k| k.strip_prefix(inner.prefix.as_str()).map(str::to_owned)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn push(&self, list: &str, items: &[Vec<u8>], keep: usize) -> Result<(), StoreError> {
        self.write(Op::Push { list: list.to_owned(), items: items.to_vec(), keep }).await
    }

    async fn range(&self, list: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let inner = &self.inner;
        let result = async {
            let mut conn = inner.connection().await?;
            inner
                .run(redis::cmd("LRANGE").arg(inner.key(list)).arg(0).arg(-1).query_async::<Vec<Vec<u8>>>(&mut conn))
                .await
        }
        .await;
        let mut items = match result {
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!("Redis unreachable ({why}); reading {list} from the write queue only");
                Vec::new()
            }
            other => other?,
        };
        // Pushes still queued belong at the end.
        let queue = self.inner.lock_queue();
        for op in queue.ops.iter().filter(|op| op.key() == list) {
            match op {
                Op::Push { items: queued, keep, .. } => {
                    items.extend(queued.iter().cloned());
                    let excess = items.len().saturating_sub(*keep);
                    items.drain(..excess);
                }
                Op::Delete { .. } => items.clear(),
                Op::Set { .. } => {}
            }
        }
        Ok(items)
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let inner = &self.inner;
        let mut conn = inner.connection().await?;
        inner.run(redis::cmd("INCRBY").arg(inner.key(key)).arg(delta).query_async::<i64>(&mut conn)).await
    }

    fn describe(&self) -> String {
        format!("redis {} (key prefix {:?})", self.inner.address, self.inner.prefix)
    }
}
