//! In-process ingest locks (containerd content/local/locks.go).
//!
//! One live `Writer` per ingest key. The lock is in memory only: after a daemon restart every
//! ingest is unlocked, which is what makes on-disk ingests resumable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_errdefs::{Error, Result};

#[derive(Debug, Default)]
pub(crate) struct LockTable {
    held: Mutex<HashMap<String, Instant>>,
}

impl LockTable {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        // A panic while holding this mutex cannot leave the map inconsistent (every critical
        // section is a single insert/remove), so recover from poisoning instead of spreading it.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take the lock for `key` once, or fail with Unavailable naming how long it has been held
    /// (containerd does the same so a stuck writer can be told apart from contention).
    pub(crate) fn try_lock(self: &Arc<Self>, key: &str) -> Result<KeyLock> {
        let mut map = self.map();
        if let Some(since) = map.get(key) {
            return Err(Error::unavailable(format!(
                "ref {key} locked for {:?}: unavailable",
                since.elapsed()
            )));
        }
        map.insert(key.to_owned(), Instant::now());
        Ok(KeyLock {
            table: Arc::clone(self),
            key: key.to_owned(),
        })
    }

    /// containerd's Writer() retries the lock 10 times with a random sleep below 2^n ms: a client
    /// that reconnects right after its previous stream broke usually races the old handler's
    /// drop, and a short wait turns that into success instead of an error. Worst case ~1 s.
    pub(crate) fn lock_with_retry(self: &Arc<Self>, key: &str) -> Result<KeyLock> {
        let mut last = None;
        for attempt in 0..10u32 {
            match self.try_lock(key) {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(jitter_ms(1u64 << attempt)));
        }
        Err(last.unwrap_or_else(|| Error::unavailable(format!("ref {key} locked"))))
    }
}

/// A random value in `0..bound`, from std's randomly keyed hasher (no rand dependency needed
/// for a backoff jitter).
fn jitter_ms(bound: u64) -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    RandomState::new().build_hasher().finish() % bound.max(1)
}

/// Held lock on one ingest key; released on drop.
#[derive(Debug)]
pub(crate) struct KeyLock {
    table: Arc<LockTable>,
    key: String,
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        self.table.map().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_until_dropped() {
        let t = Arc::new(LockTable::default());
        let a = t.try_lock("ns/ref").unwrap();
        assert!(
            matches!(t.try_lock("ns/ref"), Err(e) if e.kind() == berth_errdefs::Kind::Unavailable && e.message().starts_with("ref ns/ref locked"))
        );
        let _other = t.try_lock("ns/other").unwrap();
        drop(a);
        t.try_lock("ns/ref").unwrap();
    }
}
