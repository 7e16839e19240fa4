//! In-progress writes ("ingests") and their on-disk form.
//!
//! `<root>/ingest/<sha256(key)>/` holds:
//! - `data`: the bytes received so far (its length is the ingest's offset);
//! - `key`:  the full ingest key, verbatim, so the directory can be mapped back to its key;
//! - `meta`: total, expected digest, started_at and updated_at, so Status works and writes can
//!   resume after a daemon restart.
//!
//! The directory is named by a hash of the key because keys are arbitrary client strings
//! ("<namespace>/<ref>", refs full of slashes, `..`, anything): hashing makes every key map to
//! one fixed-length, path-safe component, exactly like containerd's `ingestRoot`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use super::lock::KeyLock;
use super::ContentStore;
use berth_errdefs::{Error, Result};
use berth_oci::Digest;

pub(crate) const DATA: &str = "data";
pub(crate) const KEY: &str = "key";
const META: &str = "meta";
const META_TMP: &str = "meta.tmp";

/// Files inside the store are private to the daemon.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Published blobs are immutable: no write bit, so an accidental open-for-write fails.
const BLOB_MODE: u32 = 0o444;

/// Progress of one ingest, as reported by Status / ListStatuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestStatus {
    pub key: String,
    /// Bytes received so far.
    pub offset: i64,
    /// Declared final size; 0 when unknown.
    pub total: i64,
    pub expected: Option<Digest>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

/// What `Writer::commit` published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub digest: Digest,
    pub size: u64,
    /// The blob was already in the store; the ingest was discarded and nothing was replaced.
    /// (containerd's local store reports this as an AlreadyExists error, which its metadata layer
    /// then swallows; a flag saves the caller from string-matching an error.)
    pub already_existed: bool,
}

/// The persisted part of an ingest besides its data and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub total: i64,
    pub expected: Option<Digest>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Meta {
    fn new(total: i64, expected: Option<Digest>) -> Meta {
        let now = SystemTime::now();
        Meta {
            total: total.max(0),
            expected,
            started_at: now,
            updated_at: now,
        }
    }

    /// Line-oriented `name value` text: trivially inspectable with cat, no serde needed.
    fn encode(&self) -> String {
        let expected = self.expected.as_ref().map(Digest::as_str).unwrap_or("");
        format!(
            "total {}\nexpected {}\nstarted_at {}\nupdated_at {}\n",
            self.total,
            expected,
            to_nanos(self.started_at),
            to_nanos(self.updated_at)
        )
    }

    fn decode(text: &str) -> std::result::Result<Meta, String> {
        let (mut total, mut expected, mut started, mut updated) = (None, None, None, None);
        for line in text.lines() {
            let (name, value) = line.split_once(' ').unwrap_or((line, ""));
            match name {
                "total" => total = Some(value.parse::<i64>().map_err(|e| e.to_string())?),
                "expected" if value.is_empty() => expected = Some(None),
                "expected" => {
                    expected = Some(Some(Digest::parse(value).map_err(|e| e.to_string())?))
                }
                "started_at" => started = Some(parse_nanos(value)?),
                "updated_at" => updated = Some(parse_nanos(value)?),
                // Unknown names are skipped so a newer berthd can add fields without breaking
                // resumption by an older one.
                _ => {}
            }
        }
        match (total, expected, started, updated) {
            (Some(total), Some(expected), Some(started_at), Some(updated_at)) => Ok(Meta {
                total,
                expected,
                started_at,
                updated_at,
            }),
            _ => Err("missing field".into()),
        }
    }
}

fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn parse_nanos(s: &str) -> std::result::Result<SystemTime, String> {
    let n = s.parse::<u64>().map_err(|e| e.to_string())?;
    Ok(UNIX_EPOCH + Duration::from_nanos(n))
}

/// sha256 of the key, hex: the ingest directory name.
pub(crate) fn dir_name(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Create or truncate a private file and fill it.
fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?
        .write_all(data)
}

/// Replace `meta` atomically (tmp + rename) so a crash mid-write leaves the old or the new
/// version, never a torn one. Not fsynced: ingests are not durable until commit (containerd
/// doesn't sync them either), and a lost meta only makes the next writer() start over.
fn store_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    let tmp = dir.join(META_TMP);
    write_file(&tmp, meta.encode().as_bytes())?;
    fs::rename(&tmp, dir.join(META))
}

fn not_found(key: &str) -> Error {
    Error::not_found(format!("ingest ref {key:?} not found"))
}

/// Read the ingest in `dir`, expecting it to belong to `key` (None: accept whatever key is
/// recorded, for listing). NotFound when the directory, key or data is missing or belongs to
/// another key; Internal when the meta file is unreadable.
/// Remove the ingest directories under `ingest` that a crash left dead: without meta (killed
/// while a fresh ingest was being made: meta is written before any byte) or without data (killed
/// after a commit renamed the data into blobs/, before the directory went). Neither is listed nor
/// holds a byte to resume, and unless a client happens to reuse the key nothing else would ever
/// remove them (the crash trials found both). Called when the store opens, before any writer.
pub(crate) fn remove_dead(ingest: &Path) {
    let Ok(entries) = fs::read_dir(ingest) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        if !dir.join(META).exists() || !dir.join(DATA).exists() {
            // Best effort: one left behind is what happened before, nothing worse.
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

pub(crate) fn read_status(dir: &Path, key: Option<&str>) -> Result<IngestStatus> {
    let not_found_or = |e: io::Error, what: &str| {
        let shown = key.unwrap_or("?");
        if e.kind() == ErrorKind::NotFound {
            not_found(shown)
        } else {
            Error::io(format!("read ingest {shown:?} {what}"), e)
        }
    };
    let stored_key = fs::read(dir.join(KEY)).map_err(|e| not_found_or(e, KEY))?;
    let stored_key = String::from_utf8(stored_key)
        .map_err(|_| Error::internal(format!("ingest {} has a non-UTF-8 key", dir.display())))?;
    if let Some(k) = key {
        // Only a sha256 collision or a corrupted key file gets here; either way it is not `k`.
        if k != stored_key {
            return Err(not_found(k));
        }
    }
    let key = stored_key;
    let meta_text = fs::read_to_string(dir.join(META)).map_err(|e| not_found_or(e, META))?;
    let meta = Meta::decode(&meta_text)
        .map_err(|e| Error::internal(format!("ingest {key:?}: corrupt meta: {e}")))?;
    let data = fs::metadata(dir.join(DATA)).map_err(|e| not_found_or(e, DATA))?;
    // updated_at is only persisted when a Writer goes away (not per chunk, for speed), so a live
    // or killed writer's data mtime can be newer; report the later one, as containerd does.
    let updated_at = match data.modified() {
        Ok(m) if m > meta.updated_at => m,
        _ => meta.updated_at,
    };
    Ok(IngestStatus {
        key,
        offset: i64::try_from(data.len()).unwrap_or(i64::MAX),
        total: meta.total,
        expected: meta.expected,
        started_at: meta.started_at,
        updated_at,
    })
}

/// Exclusive handle on one ingest. Dropping it keeps the ingest on disk for a later resume
/// (containerd's Close); `ContentStore::abort` discards it.
pub struct Writer {
    store: ContentStore,
    key: String,
    dir: PathBuf,
    file: File,
    hasher: Sha256,
    /// Bytes written == length of `data` (kept in step by write_at / truncation).
    offset: u64,
    meta: Meta,
    /// Set once the ingest directory is gone (committed), so Drop doesn't try to persist meta.
    finished: bool,
    // Fields drop after `Drop::drop`, so the key stays locked while meta is persisted.
    _lock: KeyLock,
}

impl Writer {
    /// Open or resume the ingest for `key`; the caller already holds `lock`.
    ///
    /// Mirrors containerd's local `store.writer`: an existing ingest is resumed by re-hashing
    /// its data; if it cannot be resumed (unreadable/corrupt files, another key, or a non-zero
    /// `total` differing from the recorded one) it is recreated from scratch.
    pub(crate) fn open(
        store: ContentStore,
        lock: KeyLock,
        key: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Writer> {
        let dir = store.ingest_dir(key);
        let ctx = |what: &str| format!("{what} ingest {key:?}");
        let created = match fs::DirBuilder::new().mode(super::DIR_MODE).create(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
            Err(e) => return Err(Error::io(ctx("create"), e)),
        };

        if !created {
            if let Some(r) = Self::resume(&dir, key, total, expected.clone())? {
                return Ok(Writer {
                    store,
                    key: key.to_owned(),
                    dir,
                    file: r.file,
                    hasher: r.hasher,
                    offset: r.offset,
                    meta: r.meta,
                    finished: false,
                    _lock: lock,
                });
            }
        }

        // Fresh (or recreated) ingest. Order: key, data, then meta last, so a crash part-way
        // leaves a directory without meta, which read_status skips and writer() recreates.
        write_file(&dir.join(KEY), key.as_bytes())
            .map_err(|e| Error::io(ctx("write key of"), e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(dir.join(DATA))
            .map_err(|e| Error::io(ctx("create data of"), e))?;
        let meta = Meta::new(total, expected);
        store_meta(&dir, &meta).map_err(|e| Error::io(ctx("write meta of"), e))?;
        Ok(Writer {
            store,
            key: key.to_owned(),
            dir,
            file,
            hasher: Sha256::new(),
            offset: 0,
            meta,
            finished: false,
            _lock: lock,
        })
    }

    /// Try to pick up an existing ingest. Ok(None) means "recreate it".
    fn resume(
        dir: &Path,
        key: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Option<Resumed>> {
        // Missing/corrupt pieces mean "start over" (containerd); a real I/O error (EIO,
        // EMFILE) is returned instead, so a transient failure never discards received data.
        let status = match read_status(dir, Some(key)) {
            Ok(st) => st,
            Err(e)
                if matches!(
                    e.kind(),
                    berth_errdefs::Kind::NotFound | berth_errdefs::Kind::Internal
                ) && e.io_kind().is_none() =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        if total > 0 && status.total > 0 && total != status.total {
            // containerd: "provided total differs from status" -> start over.
            return Ok(None);
        }
        let mut file = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(DATA))
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("open data of ingest {key:?}"), e)),
        };
        // Re-hash what is on disk rather than trusting a saved hash state: the data is the
        // only thing guaranteed to be consistent with itself after a crash.
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("re-hash ingest {key:?}"), e)),
            };
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        let mut meta = Meta {
            total: status.total,
            expected: status.expected,
            started_at: status.started_at,
            updated_at: status.updated_at,
        };
        let mut changed = false;
        if total > 0 && meta.total == 0 {
            meta.total = total;
            changed = true;
        }
        // A newer expectation wins, as in containerd's Write handler (it logs and replaces).
        if expected.is_some() && expected != meta.expected {
            meta.expected = expected;
            changed = true;
        }
        if changed {
            store_meta(dir, &meta).map_err(|e| Error::io(format!("write meta of {key:?}"), e))?;
        }
        Ok(Some(Resumed {
            file,
            hasher,
            offset,
            meta,
        }))
    }

    pub fn status(&self) -> IngestStatus {
        IngestStatus {
            key: self.key.clone(),
            offset: i64::try_from(self.offset).unwrap_or(i64::MAX),
            total: self.meta.total,
            expected: self.meta.expected.clone(),
            started_at: self.meta.started_at,
            updated_at: self.meta.updated_at,
        }
    }

    /// sha256 of everything written so far (cloning the hash state is a few hundred bytes).
    pub fn digest(&self) -> Digest {
        Digest::from_sha256(&self.hasher.clone().finalize().into())
    }

    /// Record the final size once a later message brings it (<= 0 means unknown). Call it
    /// before `write_at` when one message carries both, as containerd's handler updates its
    /// total before writing. Persisted best-effort now, and again when the Writer drops.
    pub fn set_total(&mut self, total: i64) {
        let total = total.max(0);
        // Only touch the disk on change: clients may repeat the total on every message.
        if total != self.meta.total {
            self.meta.total = total;
            let _ = store_meta(&self.dir, &self.meta);
        }
    }

    /// Record the expected digest (checked at commit). Persisted like `set_total`.
    pub fn set_expected(&mut self, d: Digest) {
        if self.meta.expected.as_ref() != Some(&d) {
            self.meta.expected = Some(d);
            let _ = store_meta(&self.dir, &self.meta);
        }
    }

    /// Append `data` at `offset`, which must be the current size. Offset 0 on a non-empty
    /// ingest truncates and restarts (containerd's Write handler does the same: a client that
    /// starts over sends offset 0).
    pub fn write_at(&mut self, offset: i64, data: &[u8]) -> Result<()> {
        if offset == 0 && self.offset > 0 {
            self.truncate()?;
        } else if u64::try_from(offset).ok() != Some(self.offset) {
            return Err(Error::out_of_range(format!(
                "write offset {offset} does not match current offset {}",
                self.offset
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        let end = self.offset + data.len() as u64;
        if self.meta.total > 0 && end > self.meta.total as u64 {
            return Err(Error::invalid(format!(
                "write of {} bytes at offset {} exceeds total {}",
                data.len(),
                self.offset,
                self.meta.total
            )));
        }
        // pwrite at the tracked offset: no seek state to get out of step with.
        if let Err(e) = self.file.write_all_at(data, self.offset) {
            // Drop any partial tail so file length and hash stay in step; if even that fails,
            // commit's length check refuses to publish.
            let _ = self.file.set_len(self.offset);
            return Err(Error::io(format!("write ingest {:?}", self.key), e));
        }
        self.hasher.update(data);
        self.offset = end;
        self.meta.updated_at = SystemTime::now();
        Ok(())
    }

    fn truncate(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .map_err(|e| Error::io(format!("truncate ingest {:?}", self.key), e))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        self.meta.updated_at = SystemTime::now();
        Ok(())
    }

    /// Verify and publish the blob.
    ///
    /// Checks, as containerd's local writer does, with FailedPrecondition on mismatch and the
    /// same texts: `size` (if > 0) and a recorded total must equal the bytes written
    /// ("unexpected commit size <written>, expected <size>"); `expected` and a recorded
    /// expected digest must equal the computed one ("unexpected commit digest <actual>,
    /// expected <expected>"). On a mismatch nothing is published and, like containerd, the
    /// ingest stays on disk (this Writer is consumed and its lock released): the client can
    /// resume it or Abort it.
    ///
    /// On success: fsync the data, rename it to `blobs/sha256/<hex>`, fsync that directory
    /// (so a kill -9 or power loss after return cannot lose the blob), remove the ingest. If
    /// the blob already exists the ingest is just removed and `already_existed` is set.
    pub fn commit(mut self, size: i64, expected: Option<&Digest>) -> Result<Committed> {
        let written = self.offset;
        for want in [size, self.meta.total] {
            if want > 0 && want as u64 != written {
                return Err(Error::precondition(format!(
                    "unexpected commit size {written}, expected {want}"
                )));
            }
        }
        let digest = self.digest();
        for want in [expected, self.meta.expected.as_ref()]
            .into_iter()
            .flatten()
        {
            if *want != digest {
                return Err(Error::precondition(format!(
                    "unexpected commit digest {digest}, expected {want}"
                )));
            }
        }
        let ctx = |what: &str| format!("commit {digest}: {what}");
        // Guard against a failed write that left bytes the hash never saw.
        let len = self
            .file
            .metadata()
            .map_err(|e| Error::io(ctx("stat ingest data"), e))?
            .len();
        if len != written {
            return Err(Error::internal(format!(
                "commit {digest}: ingest data is {len} bytes but {written} were hashed"
            )));
        }

        let target = self.store.blob_path(&digest);
        if fs::symlink_metadata(&target).is_ok() {
            self.remove_ingest();
            return Ok(Committed {
                digest,
                size: written,
                already_existed: true,
            });
        }
        // Make it read-only before publishing so it is never visible writable, and before the
        // fsync so the mode is durable with the data.
        self.file
            .set_permissions(fs::Permissions::from_mode(BLOB_MODE))
            .map_err(|e| Error::io(ctx("chmod"), e))?;
        self.file
            .sync_all()
            .map_err(|e| Error::io(ctx("fsync data"), e))?;
        // A concurrent commit of the same digest under another key may win between the check
        // above and here; rename then atomically swaps in identical bytes, which is harmless.
        fs::rename(self.dir.join(DATA), &target).map_err(|e| Error::io(ctx("publish"), e))?;
        // The data is in place; from here the ingest must go whatever happens next.
        let synced = self.store.sync_blobs_dir();
        self.remove_ingest();
        synced.map_err(|e| Error::io(ctx("fsync blobs dir"), e))?;
        Ok(Committed {
            digest,
            size: written,
            already_existed: false,
        })
    }

    /// Best-effort: a leftover directory without data is invisible to status/list, recreated by
    /// the next writer() for the key and removed when the store next opens, so failure here
    /// loses nothing.
    fn remove_ingest(&mut self) {
        self.finished = true;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // containerd's Close persists updatedat; we do the same so Status after a restart shows
        // when data last arrived. Best effort: read_status also consults the data mtime.
        if !self.finished {
            let _ = store_meta(&self.dir, &self.meta);
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("key", &self.key)
            .field("offset", &self.offset)
            .field("total", &self.meta.total)
            .finish_non_exhaustive()
    }
}

/// State recovered from disk by `Writer::resume`.
struct Resumed {
    file: File,
    hasher: Sha256,
    offset: u64,
    meta: Meta,
}
