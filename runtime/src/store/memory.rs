//! [`MemoryStore`]: the store in process memory (lost on exit), for tests and benchmarks.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Store, StoreError, parse_counter};

#[derive(Default)]
struct Maps {
    values: BTreeMap<String, (Vec<u8>, Option<Instant>)>,
    lists: BTreeMap<String, VecDeque<Vec<u8>>>,
    /// Values set with an expiry since the last purge of expired values.
    expiring_sets: usize,
}

/// Expired values are purged after this many sets with an expiry (so they cannot pile up).
const PURGE_EVERY: usize = 256;

/// A store in process memory.
#[derive(Default)]
pub struct MemoryStore {
    maps: Mutex<Maps>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        // Every operation leaves the maps consistent, so a poisoned lock is still usable.
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut maps = self.lock();
        match maps.values.get(key) {
            Some((_, Some(expires))) if *expires <= Instant::now() => {
                maps.values.remove(key);
                Ok(None)
            }
            Some((value, _)) => Ok(Some(value.clone())),
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let now = Instant::now();
        let expires = ttl.map(|ttl| now + ttl);
        let mut maps = self.lock();
        maps.values.insert(key.to_owned(), (value.to_vec(), expires));
        if expires.is_some() {
            maps.expiring_sets += 1;
            if maps.expiring_sets >= PURGE_EVERY {
                maps.expiring_sets = 0;
                maps.values.retain(|_, (_, expires)| expires.is_none_or(|e| e > now));
            }
        }
        Ok(())
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let mut maps = self.lock();
        let now = Instant::now();
        let current = match maps.values.get(key) {
            Some((value, expires)) if expires.is_none_or(|e| e > now) => parse_counter(value)?,
            _ => 0,
        };
        let next = current.saturating_add(delta);
        maps.values.insert(key.to_owned(), (next.to_string().into_bytes(), None));
        Ok(next)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut maps = self.lock();
        maps.values.remove(key);
        maps.lists.remove(key);
        Ok(())
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let maps = self.lock();
        let live = maps
            .values
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, (_, expires))| expires.is_none_or(|e| e > now))
            .map(|(k, _)| k.clone());
        let lists =
            maps.lists.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, _)| k.clone());
        let mut keys: Vec<String> = live.chain(lists).collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn push(&self, list: &str, items: &[Vec<u8>], keep: usize) -> Result<(), StoreError> {
        let mut maps = self.lock();
        let entries = maps.lists.entry(list.to_owned()).or_default();
        entries.extend(items.iter().cloned());
        while entries.len() > keep {
            entries.pop_front();
        }
        Ok(())
    }

    async fn range(&self, list: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.lock().lists.get(list).map(|l| l.iter().cloned().collect()).unwrap_or_default())
    }

    fn describe(&self) -> String {
        "in-memory".into()
    }
}
