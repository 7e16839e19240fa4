//! The on-disk content store: blobs addressed by digest, plus resumable in-progress writes.
//!
//! The equivalent of containerd's `content/local` store. It knows nothing of namespaces,
//! labels, leases or gRPC: the metadata layer records which namespace holds which digest and
//! builds ingest keys as `<namespace>/<ref>`. The API is synchronous; the gRPC layer calls it
//! from `spawn_blocking`.
//!
//! Layout under the root (berthd passes `<root>/content`):
//! ```text
//! blobs/sha256/<hex>                    published blobs, mode 0444
//! ingest/<sha256(key)>/{data,key,meta}  in-progress writes (see ingest.rs)
//! ```
//! Directories are 0700 and ingest files 0600: content may be private image data.
//!
//! Only validated `Digest`s and hashes of ingest keys ever become path components, so no
//! client string can name a path outside the root.

mod ingest;
mod lock;

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::ingest::{Committed, IngestStatus, Writer};
use self::lock::LockTable;
use berth_errdefs::{Error, Result};
pub use berth_oci::Digest;

pub(crate) const DIR_MODE: u32 = 0o700;

/// Handle on a content store. Cloning is cheap (shared state behind an `Arc`); it is `Send +
/// Sync` and may be used from many threads at once.
#[derive(Debug, Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `<root>/blobs/sha256`
    blobs: PathBuf,
    /// `<root>/ingest`
    ingest: PathBuf,
    locks: Arc<LockTable>,
}

impl ContentStore {
    /// Open the store at `root`, creating its directories (0700) if needed. Leftover ingests stay
    /// resumable; only ingest directories a crash left without their data or meta file are
    /// removed (see `ingest::remove_dead`), and garbage collection belongs to the layer above.
    pub fn open(root: &Path) -> Result<ContentStore> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        for dir in [&blobs, &ingest] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        // Make the directory entries themselves durable once, so a blob fsynced into
        // blobs/sha256 at commit cannot vanish with a parent directory after a power loss.
        for dir in [root.join("blobs").as_path(), root] {
            sync_dir(dir).map_err(|e| Error::io(format!("fsync {}", dir.display()), e))?;
        }
        ingest::remove_dead(&ingest);
        Ok(ContentStore {
            inner: Arc::new(Inner {
                blobs,
                ingest,
                locks: Arc::new(LockTable::default()),
            }),
        })
    }

    /// Where the blob for `d` lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.blobs.join(d.hex())
    }

    /// Size of the blob, or None when it is absent.
    pub fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        match fs::metadata(self.blob_path(d)) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("stat content {d}"), e)),
        }
    }

    /// Open the blob read-only. Callers serving ranges should keep the File and `read_at` on it
    /// (pread) rather than reopening per chunk.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        File::open(self.blob_path(d)).map_err(|e| blob_err(d, "open", e))
    }

    /// Read up to `buf.len()` bytes at `offset`; fewer only at the end of the blob. An offset
    /// past the end is OutOfRange, like containerd's Read ("read past object length").
    pub fn read_at(&self, d: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let file = self.open_blob(d)?;
        let len = file.metadata().map_err(|e| blob_err(d, "stat", e))?.len();
        if offset > len {
            return Err(Error::out_of_range(format!(
                "read past object length {len} bytes"
            )));
        }
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(blob_err(d, "read", e)),
            }
        }
        Ok(done)
    }

    /// Remove the blob. NotFound if absent. Readers holding it open keep their data (unlink).
    pub fn delete_blob(&self, d: &Digest) -> Result<()> {
        fs::remove_file(self.blob_path(d)).map_err(|e| blob_err(d, "delete", e))
    }

    /// Every blob with its size, sorted by digest. Entries that are not valid digests or not
    /// regular files (strays, partial copies by hand) are skipped, as containerd's Walk does.
    pub fn walk_blobs(&self) -> Result<Vec<(Digest, u64)>> {
        let ctx = |e| Error::io(format!("list {}", self.inner.blobs.display()), e);
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.inner.blobs).map_err(ctx)? {
            let entry = entry.map_err(ctx)?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            match entry.metadata() {
                Ok(m) if m.is_file() => out.push((d, m.len())),
                Ok(_) => {}
                // Deleted between readdir and stat.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(ctx(e)),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Blobs whose bytes were last written before `t`: files a crash may have left unrecorded,
    /// as opposed to ones a writer of this process may be about to record.
    pub fn blobs_written_before(&self, t: std::time::SystemTime) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for (d, _) in self.walk_blobs()? {
            match fs::metadata(self.blob_path(&d)).and_then(|m| m.modified()) {
                Ok(modified) if modified < t => out.push(d),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(blob_err(&d, "stat", e)),
            }
        }
        Ok(out)
    }

    /// Open (or resume) the ingest for `key`.
    ///
    /// - Only one live Writer per key: otherwise Unavailable("ref KEY locked for …"), after
    ///   retrying briefly like containerd (up to ~1 s). The lock is in-process and released
    ///   when the Writer drops.
    /// - An existing ingest is resumed: its data is re-hashed so offset and digest continue.
    /// - As in containerd, an ingest that cannot be resumed (corrupt files, or a non-zero
    ///   `total` that differs from the recorded non-zero total) is recreated empty rather than
    ///   failing: the client is evidently writing something else under the same ref.
    /// - `total` (if > 0) is recorded when none was; `expected` (if Some) replaces a recorded
    ///   one. Unlike containerd's local store, an `expected` blob that already exists is not an
    ///   error here: that check is per namespace and belongs to the metadata layer (containerd's
    ///   metadata store never passes the digest down either); commit then reports
    ///   `already_existed`.
    pub fn writer(&self, key: &str, total: i64, expected: Option<Digest>) -> Result<Writer> {
        if key.is_empty() {
            return Err(Error::invalid("ref must not be empty"));
        }
        let lock = self.inner.locks.lock_with_retry(key)?;
        Writer::open(self.clone(), lock, key, total, expected)
    }

    /// Status of the ingest for `key` from disk (works for live and abandoned ingests, and
    /// after a restart). NotFound if there is none.
    pub fn status(&self, key: &str) -> Result<IngestStatus> {
        ingest::read_status(&self.ingest_dir(key), Some(key))
    }

    /// All ingests, sorted by key. Half-created or corrupt ones are skipped (they can still be
    /// aborted by key, and writer() recreates them).
    pub fn list_ingests(&self) -> Result<Vec<IngestStatus>> {
        let ctx = |e| Error::io(format!("list {}", self.inner.ingest.display()), e);
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.inner.ingest).map_err(ctx)? {
            let entry = entry.map_err(ctx)?;
            match ingest::read_status(&entry.path(), None) {
                Ok(st) => out.push(st),
                Err(e)
                    if matches!(
                        e.kind(),
                        berth_errdefs::Kind::NotFound | berth_errdefs::Kind::Internal
                    ) && e.io_kind().is_none() => {}
                Err(e) if e.io_kind() == Some(ErrorKind::NotADirectory) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Discard the ingest for `key`. NotFound if there is none; Unavailable if a live Writer
    /// holds it (containerd's local store would delete from under the writer; refusing keeps
    /// that writer's commit from failing mysteriously).
    pub fn abort(&self, key: &str) -> Result<()> {
        // Holding the key lock while deleting keeps a concurrent writer() from recreating the
        // directory half-way through.
        let _lock = self.inner.locks.try_lock(key)?;
        let dir = self.ingest_dir(key);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(Error::not_found(format!("ingest ref {key:?} not found")))
            }
            Err(e) => Err(Error::io(format!("abort ingest {key:?}"), e)),
        }
    }

    /// The bytes an ingest holds so far, for a caller that resumes a download and must hash
    /// the prefix it already has (call while holding the ingest's Writer, so it cannot move).
    pub fn open_ingest_data(&self, key: &str) -> Result<File> {
        let path = self.ingest_dir(key).join(ingest::DATA);
        File::open(&path).map_err(|e| Error::io(format!("open ingest data of {key:?}"), e))
    }

    /// Where an ingest's bytes are (a reader opened on it keeps reading the same file once the
    /// commit renames it into blobs/).
    pub fn ingest_data_path(&self, key: &str) -> PathBuf {
        self.ingest_dir(key).join(ingest::DATA)
    }

    fn ingest_dir(&self, key: &str) -> PathBuf {
        self.inner.ingest.join(ingest::dir_name(key))
    }

    fn sync_blobs_dir(&self) -> io::Result<()> {
        sync_dir(&self.inner.blobs)
    }
}

/// fsync a directory so renames/creates in it survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// containerd's text for a missing blob is "content <digest>: not found".
fn blob_err(d: &Digest, what: &str, e: io::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        Error::not_found(format!("content {d} not found"))
    } else {
        Error::io(format!("{what} content {d}"), e)
    }
}

#[cfg(test)]
mod tests;
