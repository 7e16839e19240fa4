//! Image archives: import OCI image layout tars and `docker save` tars (optionally gzip or
//! zstd compressed) into the content store, and export images as an OCI layout tar with
//! docker's `manifest.json`, as containerd's `core/images/archive` does, to the digest.
//!
//! This crate owns the archive formats and their bounds. It writes blobs only through the
//! content store's ingests (size and digest verified at commit) and leaves image records,
//! namespaces, leases and gRPC to its caller: a [`ContentSink`] is told of every committed blob
//! so the caller can record it under its lease, and an import returns the image names and
//! target descriptors it found. Archives are hostile input: entry names are never used as
//! paths, every document is read with a size bound, and any failure leaves no ingest behind.

mod export;
mod import;
pub mod json;
mod naming;
pub mod platform;
pub mod reference;

use std::fs::File;
use std::sync::Arc;

use berth_content::{Committed, ContentStore, Writer};
use berth_errdefs::{Error, Result};
use berth_oci::Digest;

pub use export::{export, export_blocking, ExportOptions};
pub use import::{image_name, import, import_blocking, ImportOptions, Imported, RefTranslator};
pub use json::Descriptor;
pub use naming::{ImageNaming, ImageReference, NameSource};
pub use platform::{Platform, PlatformMatcher};

/// Bounds on what an archive may make berth read or hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON document read: oci-layout, index.json, manifest.json, manifests, configs
    /// (containerd's importer stops at 20 MiB).
    pub max_json_bytes: u64,
    /// Most tar entries of any kind in one archive.
    pub max_entries: u64,
    /// Most manifests in one index, images in one `manifest.json`, layers in one manifest.
    pub max_children: usize,
    /// Deepest nesting of indexes.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_bytes: 20 << 20,
            max_entries: 1 << 16,
            max_children: 4096,
            max_depth: 8,
        }
    }
}

/// Where an export reads blobs from.
pub trait ContentProvider: Send + Sync {
    /// The blob's bytes; NotFound when the caller's view of the store lacks it.
    fn open(&self, digest: &Digest) -> Result<File>;

    /// The blob's `containerd.io/distribution.source.*` labels, which containerd's export
    /// copies into index.json's annotations.
    fn distribution_sources(&self, _digest: &Digest) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }
}

/// Where an import writes blobs. Called from a blocking thread.
pub trait ContentSink: ContentProvider {
    /// Open (or take over) the ingest `key` for a blob of `size` bytes, checked against
    /// `expected` at commit when given.
    fn writer(&self, key: &str, size: u64, expected: Option<Digest>) -> Result<Writer>;

    /// Drop the ingest `key`; an absent one is not an error.
    fn abort(&self, key: &str) -> Result<()>;

    /// The size of the blob when the caller's view of the store already holds it.
    fn size(&self, digest: &Digest) -> Result<Option<u64>>;

    /// A blob is in the store (written now, or already there): record it (namespace, lease)
    /// before anything refers to it. `uncompressed` is set for a layer berth compressed
    /// (`force_compress`): containerd labels it `containerd.io/uncompressed`.
    fn committed(&self, blob: &Committed, uncompressed: Option<&Digest>) -> Result<()>;

    /// A compressed blob the caller's store already holds for this uncompressed layer (a blob
    /// labelled `containerd.io/uncompressed` with it): containerd's importer puts that blob in
    /// a docker archive's manifest instead of the archive's uncompressed tar.
    fn compressed_of(&self, _uncompressed: &Digest) -> Result<Option<(Digest, u64)>> {
        Ok(None)
    }
}

impl ContentProvider for ContentStore {
    fn open(&self, digest: &Digest) -> Result<File> {
        self.open_blob(digest)
    }
}

/// The bare content store as a sink: blobs land in it with nothing recorded, for tools and
/// tests; berthd wraps the store with its namespace and lease instead.
#[derive(Debug, Clone)]
pub struct StoreSink {
    pub store: ContentStore,
}

impl ContentProvider for StoreSink {
    fn open(&self, digest: &Digest) -> Result<File> {
        self.store.open_blob(digest)
    }
}

impl ContentSink for StoreSink {
    fn writer(&self, key: &str, size: u64, expected: Option<Digest>) -> Result<Writer> {
        let total = i64::try_from(size)
            .map_err(|_| Error::invalid(format!("blob size {size} out of range")))?;
        self.store.writer(key, total, expected)
    }

    fn abort(&self, key: &str) -> Result<()> {
        match self.store.abort(key) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.store.blob_size(digest)
    }

    fn committed(&self, _blob: &Committed, _uncompressed: Option<&Digest>) -> Result<()> {
        Ok(())
    }
}

/// What an import or export reports as it goes, in containerd's progress vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// "saved" for a blob written, "already exists" for one the store had, "exported" for a
    /// blob copied into an export.
    pub event: &'static str,
    /// The archive entry name (import) or blob path (export).
    pub name: String,
    pub digest: Digest,
    pub size: u64,
}

/// A progress callback; called on the blocking thread doing the work.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;
