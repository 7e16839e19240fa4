//! The storage seam under the metadata store: an ordered key-value backend with atomic batches.
//!
//! Everything above this trait (namespaces, images, containers, leases, content records) is written in
//! terms of keys and byte values, so a second backend only has to implement these few methods.

use berth_errdefs::{Error, Kind, Result};
use std::path::Path;

/// One atomic group of writes.
#[derive(Default, Debug)]
pub struct Batch {
    pub(crate) ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A visitor of key-value pairs, as `Backend::for_each` calls it.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

pub trait Backend: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// All pairs whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Call `f` with every pair under `prefix`, in key order, without copying them out first
    /// (listings decode straight from the store's buffers).
    fn for_each(&self, prefix: &[u8], f: &mut Visit<'_>) -> Result<()>;
    /// At most `limit` pairs under `prefix` with keys after `after` (all when None), in key order:
    /// lets long listings stream page by page instead of materialising everything.
    fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Whether any key starts with `prefix` (cheaper than a scan).
    fn any_with_prefix(&self, prefix: &[u8]) -> Result<bool>;
    /// Apply all writes of `batch` atomically (all or none survive a crash).
    fn apply(&self, batch: Batch) -> Result<()>;
    /// Make every applied batch durable. Blocking: call it off the async runtime.
    fn sync(&self) -> Result<()>;
}

/// A sled failure: the store is broken or unreachable, which no client can fix.
fn store(e: sled::Error) -> Error {
    Error::with_source(Kind::Internal, "metadata store", e)
}

/// The sled backend: one tree, keys as laid out in `keys.rs`.
pub struct SledBackend {
    db: sled::Db,
}

impl SledBackend {
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            // sled's page cache defaults to 1 GiB; metadata is small and the OS caches the file anyway.
            .cache_capacity(8 * 1024 * 1024)
            // We flush explicitly (group commit) before acknowledging writes; no background timer needed.
            .flush_every_ms(None)
            .open()
            .map_err(store)?;
        Ok(SledBackend { db })
    }
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key).map_err(store)?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.db
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(store)?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn for_each(&self, prefix: &[u8], f: &mut Visit<'_>) -> Result<()> {
        for kv in self.db.scan_prefix(prefix) {
            let (k, v) = kv.map_err(store)?;
            f(&k, &v)?;
        }
        Ok(())
    }

    fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let start = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        self.db
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take_while(|kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(store)?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn any_with_prefix(&self, prefix: &[u8]) -> Result<bool> {
        Ok(self
            .db
            .scan_prefix(prefix)
            .next()
            .transpose()
            .map_err(store)?
            .is_some())
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(store)?;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().map_err(store)?;
        Ok(())
    }
}
