//! The metadata store: namespaces, images, containers, leases and content records, per namespace.
//!
//! One writer at a time (a short in-process lock around read-modify-write), lock-free reads, and group
//! commit: every acknowledged write is durable before its caller returns, but concurrent writers share
//! one fsync instead of paying one each.
//!
//! Records are the containerd API messages themselves, protobuf-encoded: they are the wire-stable schema
//! clients already agree on, and client-supplied `Any` values (specs, extensions) round-trip byte for byte.

pub mod backend;
pub mod containers;
pub mod content;
pub mod filters;
pub mod images;
mod keys;
pub mod leases;
pub mod namespaces;
pub mod validate;

use backend::{Backend, Batch, SledBackend};
use berth_errdefs::{Error, Result};
use prost::Message;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The on-disk layout version this binary writes. A newer one on disk means a newer berthd wrote it.
pub const SCHEMA_VERSION: u32 = 1;

pub struct Metadata {
    backend: Arc<dyn Backend>,
    write_lock: Mutex<()>,
    /// Number of batches applied so far.
    applied: AtomicU64,
    /// Highest batch number known to be durable.
    durable: AtomicU64,
    sync_lock: tokio::sync::Mutex<()>,
    /// Syncs made by writers, and the time they took (ns): the metrics' `berth_metadata_sync*`.
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    /// containerd's `wlock`, for blobs: see `content_commit_lock`.
    content_lock: Arc<tokio::sync::RwLock<()>>,
    /// The same for snapshots: see `snapshot_use_lock`.
    snapshot_lock: Arc<tokio::sync::RwLock<()>>,
    /// Blobs a writer is storing and has yet to record: see `pin_content`.
    content_pins: content::Pins,
    server_uuid: String,
}

/// A read-modify-write transaction: reads see committed state; writes land atomically at the end.
pub struct Tx<'a> {
    backend: &'a dyn Backend,
    batch: Batch,
}

impl Tx<'_> {
    pub fn get<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>> {
        self.backend.get(key)?.map(|v| decode(&v)).transpose()
    }
    pub fn exists(&self, key: &[u8]) -> Result<bool> {
        Ok(self.backend.get(key)?.is_some())
    }
    pub fn scan_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .backend
            .scan(prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }
    pub fn any_with_prefix(&self, prefix: &[u8]) -> Result<bool> {
        self.backend.any_with_prefix(prefix)
    }
    pub fn put<M: Message>(&mut self, key: Vec<u8>, value: &M) {
        self.batch.put(key, value.encode_to_vec());
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.batch.delete(key);
    }
    /// Writes in a namespace create it implicitly, as in containerd.
    pub fn ensure_namespace(&mut self, ns: &str) -> Result<()> {
        let key = keys::namespace(ns);
        if !self.exists(&key)? {
            let record = berth_api::containerd::services::namespaces::v1::Namespace {
                name: ns.to_string(),
                labels: Default::default(),
            };
            self.put(key, &record);
        }
        Ok(())
    }
}

impl Metadata {
    pub fn open(dir: &Path) -> Result<Metadata> {
        let backend: Arc<dyn Backend> = Arc::new(SledBackend::open(dir)?);
        Self::with_backend(backend)
    }

    pub fn with_backend(backend: Arc<dyn Backend>) -> Result<Metadata> {
        let mut init = Batch::default();
        match backend.get(keys::SCHEMA)? {
            Some(v) => {
                let found = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                    Error::internal("metadata store: schema version record is corrupt")
                })?);
                if found > SCHEMA_VERSION {
                    return Err(Error::precondition(format!(
                        "metadata schema version {found} is newer than this berthd supports ({SCHEMA_VERSION}); \
                         run a newer berthd or restore a backup"
                    )));
                }
            }
            None => init.put(keys::SCHEMA.to_vec(), SCHEMA_VERSION.to_be_bytes().to_vec()),
        }
        if backend.get(keys::CONTAINER_ROOTS_BUILT)?.is_none() {
            containers::build_summaries(backend.as_ref(), &mut init)?;
        }
        let server_uuid = match backend.get(keys::SERVER_UUID)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                init.put(keys::SERVER_UUID.to_vec(), id.clone().into_bytes());
                id
            }
        };
        if !init.is_empty() {
            backend.apply(init)?;
            backend.sync()?;
        }
        Ok(Metadata {
            backend,
            write_lock: Mutex::new(()),
            applied: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            sync_lock: tokio::sync::Mutex::new(()),
            syncs: AtomicU64::new(0),
            sync_nanos: AtomicU64::new(0),
            content_lock: Arc::new(tokio::sync::RwLock::new(())),
            snapshot_lock: Arc::new(tokio::sync::RwLock::new(())),
            content_pins: content::Pins::default(),
            server_uuid,
        })
    }

    /// The daemon's stable identity (introspection Server), created once with the store.
    pub fn server_uuid(&self) -> &str {
        &self.server_uuid
    }

    pub fn get<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>> {
        self.backend.get(key)?.map(|v| decode(&v)).transpose()
    }

    pub fn scan<M: Message + Default>(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, M)>> {
        self.backend
            .scan(prefix)?
            .into_iter()
            .map(|(k, v)| Ok((k, decode(&v)?)))
            .collect()
    }

    /// Decode every record under `prefix` that `keep` accepts, straight from the store's buffers.
    pub fn list<M: Message + Default>(
        &self,
        prefix: &[u8],
        mut keep: impl FnMut(&M) -> bool,
    ) -> Result<Vec<M>> {
        let mut out = Vec::new();
        self.backend.for_each(prefix, &mut |_, v| {
            let m: M = decode(v)?;
            if keep(&m) {
                out.push(m);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// One page of records under `prefix` after the key `after`; see `Backend::scan_page`.
    pub fn scan_page<M: Message + Default>(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, M)>> {
        self.backend
            .scan_page(prefix, after, limit)?
            .into_iter()
            .map(|(k, v)| Ok((k, decode(&v)?)))
            .collect()
    }

    /// Run `f` as one atomic transaction and return once its writes are durable.
    pub async fn update<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let (out, pending) = self.apply(f)?;
        pending.durable().await?;
        Ok(out)
    }

    /// Run `f` as one atomic transaction, visible to readers at once; the caller waits for
    /// durability through the returned [`Pending`], possibly while doing other work that is
    /// acknowledged together with it.
    pub fn apply<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<(T, Pending<'_>)> {
        let _writer = self
            .write_lock
            .lock()
            .map_err(|_| Error::internal("metadata writer lock poisoned"))?;
        let mut tx = Tx {
            backend: self.backend.as_ref(),
            batch: Batch::default(),
        };
        let out = f(&mut tx)?;
        let seq = if tx.batch.is_empty() {
            0
        } else {
            self.backend.apply(tx.batch)?;
            self.applied.fetch_add(1, Ordering::SeqCst) + 1
        };
        Ok((out, Pending { meta: self, seq }))
    }

    /// Group commit: whoever holds the sync lock flushes everything applied so far; writers that queued
    /// behind it find their batch already durable and return without another fsync.
    async fn make_durable(&self, seq: u64) -> Result<()> {
        let _syncer = self.sync_lock.lock().await;
        if self.durable.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let target = self.applied.load(Ordering::SeqCst);
        let backend = self.backend.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || backend.sync())
            .await
            .map_err(|e| Error::internal(format!("metadata sync task failed: {e}")))??;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.sync_nanos.fetch_add(took, Ordering::Relaxed);
        self.durable.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// How many syncs writers have waited for since the store opened, and their total time.
    pub fn sync_stats(&self) -> SyncStats {
        SyncStats {
            syncs: self.syncs.load(Ordering::Relaxed),
            seconds: self.sync_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// Wait until every transaction applied so far is durable: one sync for a run of staged
    /// changes ([`Metadata::apply`] and the `stage_*` calls) that are acknowledged together.
    pub async fn sync_applied(&self) -> Result<()> {
        let seq = self.applied.load(Ordering::SeqCst);
        Pending { meta: self, seq }.durable().await
    }

    /// Flush everything (clean shutdown).
    pub fn sync_blocking(&self) -> Result<()> {
        self.backend.sync()
    }
}

/// See [`Metadata::sync_stats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncStats {
    pub syncs: u64,
    pub seconds: f64,
}

/// An applied transaction that may not be durable yet; see [`Metadata::apply`]. Nothing may be
/// acknowledged to a client on its behalf before [`Pending::durable`] returns.
#[must_use = "a change must be made durable before it is acknowledged"]
pub struct Pending<'a> {
    meta: &'a Metadata,
    /// 0 when the transaction wrote nothing.
    seq: u64,
}

impl Pending<'_> {
    /// Nothing to wait for (no transaction was needed).
    pub fn none(meta: &Metadata) -> Pending<'_> {
        Pending { meta, seq: 0 }
    }

    pub async fn durable(self) -> Result<()> {
        if self.seq == 0 {
            return Ok(());
        }
        self.meta.make_durable(self.seq).await
    }
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::internal(format!("metadata store: corrupt record: {e}")))
}

/// Now, as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}
