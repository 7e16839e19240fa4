//! The snapshot records of one snapshotter root, kept in an append-only journal
//! (`<root>/metadata.log`): one record per change, made durable by one `fdatasync`, replayed at
//! open. A file per snapshot would cost a file, a directory and a parent-directory flush per
//! change; the journal costs one flush, and concurrent changes share it (group commit).
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload (JSON)`. A crash can only tear the tail
//! (appends are serialized); replay stops at the first bad frame and truncates the file there.
//! When dead records outnumber live ones the journal is rewritten (temp file, fsync, rename).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::error::at;
use crate::fsutil::fsync_dir;
use crate::{Error, Result};

pub(crate) const JOURNAL_FILE: &str = "metadata.log";
const HEADER: usize = 8;
/// A frame larger than this is corruption, not a record (labels are bounded far below).
const MAX_RECORD: usize = 16 << 20;
/// Compact once the journal holds this many records more than there are live snapshots.
const COMPACT_SLACK: usize = 4096;

/// A time as stored: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    pub secs: u64,
    pub nanos: u32,
}

/// One snapshot as stored: what `Info` and `Usage` hold, by id. The same JSON as the
/// `info.json` files of the layout before the journal, which therefore read as records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub key: String,
    #[serde(default)]
    pub parent: String,
    pub kind: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created: Stamp,
    pub updated: Stamp,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub inodes: i64,
}

#[derive(Serialize, Deserialize)]
enum Change {
    /// Creates or replaces snapshot `id` (prepare, view, commit, label update).
    Put {
        id: u64,
        record: Record,
    },
    Remove {
        id: u64,
    },
}

struct Log {
    file: Arc<File>,
    /// The replayed state, for compaction.
    live: BTreeMap<u64, Record>,
    /// Records in the file, and its length.
    records: usize,
    len: u64,
    /// Sequence number of the last appended change.
    written: u64,
}

pub(crate) struct Journal {
    dir: PathBuf,
    log: Mutex<Log>,
    /// Held while flushing, so one `fdatasync` covers every change appended before it started.
    flush: Mutex<()>,
    /// Sequence number up to which changes are durable.
    synced: AtomicU64,
}

fn encode(change: &Change) -> Result<Vec<u8>> {
    let payload =
        serde_json::to_vec(change).map_err(|e| Error::io("encode snapshot record", e.into()))?;
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Decodes whole frames from `data`; returns the changes and the length of the valid prefix.
fn decode(data: &[u8]) -> (Vec<Change>, usize) {
    let mut changes = Vec::new();
    let mut at = 0;
    while data.len() - at >= HEADER {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let start = at + HEADER;
        if len > MAX_RECORD || data.len() - start < len {
            break;
        }
        let payload = &data[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice(payload) {
            Ok(change) => changes.push(change),
            Err(_) => break,
        }
        at = start + len;
    }
    (changes, at)
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    // Appends either complete or fail before touching `live`; poisoning changes nothing.
    log.lock().unwrap_or_else(|e| e.into_inner())
}

impl Journal {
    /// Opens `<dir>/metadata.log`, replaying it. Without one, `seed` gives the initial records
    /// (from an older layout) and a journal holding them is written before anything else.
    pub fn open(
        dir: &Path,
        seed: impl FnOnce() -> Result<BTreeMap<u64, Record>>,
    ) -> Result<(Journal, BTreeMap<u64, Record>)> {
        let path = dir.join(JOURNAL_FILE);
        let (live, records) = match File::open(&path) {
            Ok(mut f) => {
                let mut data = Vec::new();
                f.read_to_end(&mut data).map_err(at("read", &path))?;
                let (changes, valid) = decode(&data);
                if valid < data.len() {
                    // A torn tail: the change it held was never acknowledged.
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(at("open", &path))?;
                    f.set_len(valid as u64).map_err(at("truncate", &path))?;
                    f.sync_all().map_err(at("fsync", &path))?;
                }
                let records = changes.len();
                let mut live = BTreeMap::new();
                for change in changes {
                    match change {
                        Change::Put { id, record } => live.insert(id, record),
                        Change::Remove { id } => live.remove(&id),
                    };
                }
                (live, records)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let live = seed()?;
                write_compacted(dir, &live)?;
                let records = live.len();
                (live, records)
            }
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(at("open", &path))?;
        let len = file.metadata().map_err(at("stat", &path))?.len();
        let journal = Journal {
            dir: dir.to_path_buf(),
            log: Mutex::new(Log {
                file: Arc::new(file),
                live: live.clone(),
                records,
                len,
                written: 0,
            }),
            flush: Mutex::new(()),
            synced: AtomicU64::new(0),
        };
        Ok((journal, live))
    }

    pub fn put(&self, id: u64, record: Record) -> Result<()> {
        self.append(Change::Put { id, record })
    }

    pub fn remove(&self, id: u64) -> Result<()> {
        self.append(Change::Remove { id })
    }

    /// Appends the removal of `id` without waiting for it to be durable: see [`Journal::sync_to`].
    pub fn stage_remove(&self, id: u64) -> Result<u64> {
        self.append_unsynced(Change::Remove { id })
    }

    /// Removes several snapshots in one durable step (open's repairs).
    pub fn remove_all(&self, ids: &[u64]) -> Result<()> {
        for &id in ids {
            self.append_unsynced(Change::Remove { id })?;
        }
        self.sync()
    }

    /// Appends `change` and returns once it is durable.
    fn append(&self, change: Change) -> Result<()> {
        let seq = self.append_unsynced(change)?;
        self.sync_to(seq)
    }

    fn append_unsynced(&self, change: Change) -> Result<u64> {
        let frame = encode(&change)?;
        let mut log = lock(&self.log);
        if log.records >= log.live.len() + COMPACT_SLACK {
            self.compact(&mut log)?;
        }
        let path = self.dir.join(JOURNAL_FILE);
        if let Err(e) = (&*log.file).write_all(&frame) {
            // A partial frame would hide every later one at replay: cut it off. If even that
            // fails, the next open truncates it (it cannot pass the checksum).
            let _ = log.file.set_len(log.len);
            return Err(Error::io(format!("append to {}", path.display()), e));
        }
        log.len += frame.len() as u64;
        log.records += 1;
        log.written += 1;
        match change {
            Change::Put { id, record } => log.live.insert(id, record),
            Change::Remove { id } => log.live.remove(&id),
        };
        Ok(log.written)
    }

    fn sync(&self) -> Result<()> {
        let seq = lock(&self.log).written;
        self.sync_to(seq)
    }

    /// Makes every change up to `seq` durable; a flush already under way may cover it.
    pub fn sync_to(&self, seq: u64) -> Result<()> {
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let _flushing = self.flush.lock().unwrap_or_else(|e| e.into_inner());
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let (file, upto) = {
            let log = lock(&self.log);
            (log.file.clone(), log.written)
        };
        // If a compaction replaces the file meanwhile, it made everything up to `upto` durable
        // itself, so flushing the old file is harmless.
        file.sync_data()
            .map_err(at("fsync", &self.dir.join(JOURNAL_FILE)))?;
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Rewrites the journal as one record per live snapshot. Called with the log locked, so no
    /// append races it; everything written so far is durable afterwards.
    fn compact(&self, log: &mut Log) -> Result<()> {
        write_compacted(&self.dir, &log.live)?;
        let path = self.dir.join(JOURNAL_FILE);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(at("open", &path))?;
        log.len = file.metadata().map_err(at("stat", &path))?.len();
        log.file = Arc::new(file);
        log.records = log.live.len();
        self.synced.fetch_max(log.written, Ordering::AcqRel);
        Ok(())
    }
}

/// Writes a journal of `live` beside the current one and renames it into place, durably.
fn write_compacted(dir: &Path, live: &BTreeMap<u64, Record>) -> Result<()> {
    let tmp = dir.join(format!(".{JOURNAL_FILE}.tmp"));
    let mut data = Vec::new();
    for (&id, record) in live {
        data.extend(encode(&Change::Put {
            id,
            record: record.clone(),
        })?);
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(at("create", &tmp))?;
    f.write_all(&data).map_err(at("write", &tmp))?;
    f.sync_all().map_err(at("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, dir.join(JOURNAL_FILE)).map_err(at("rename", &tmp))?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rec(key: &str) -> Record {
        Record {
            key: key.into(),
            parent: String::new(),
            kind: "committed".into(),
            labels: BTreeMap::new(),
            created: Stamp { secs: 1, nanos: 2 },
            updated: Stamp { secs: 3, nanos: 4 },
            size: 5,
            inodes: 1,
        }
    }

    fn open(dir: &Path) -> (Journal, BTreeMap<u64, Record>) {
        Journal::open(dir, || Ok(BTreeMap::new())).expect("open")
    }

    #[test]
    fn replays_puts_and_removes() {
        let d = tempfile::tempdir().expect("tempdir");
        {
            let (j, live) = open(d.path());
            assert!(live.is_empty());
            j.put(1, rec("a")).expect("put");
            j.put(2, rec("b")).expect("put");
            j.put(1, rec("a2")).expect("put");
            j.remove(2).expect("remove");
        }
        let (_, live) = open(d.path());
        assert_eq!(live.len(), 1);
        assert_eq!(live[&1].key, "a2");
    }

    #[test]
    fn torn_tail_is_cut_off() {
        let d = tempfile::tempdir().expect("tempdir");
        {
            let (j, _) = open(d.path());
            j.put(1, rec("a")).expect("put");
            j.put(2, rec("b")).expect("put");
        }
        let path = d.path().join(JOURNAL_FILE);
        let good = fs::metadata(&path).expect("stat").len();
        // A frame whose payload was only half written, then one with a wrong checksum.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        let frame = encode(&Change::Put {
            id: 3,
            record: rec("c"),
        })
        .expect("encode");
        f.write_all(&frame[..frame.len() / 2]).expect("write");
        drop(f);
        let (j, live) = open(d.path());
        assert_eq!(live.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(fs::metadata(&path).expect("stat").len(), good);
        let mut bad = encode(&Change::Remove { id: 1 }).expect("encode");
        bad[HEADER] ^= 0xff;
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&bad))
            .expect("write");
        drop(j);
        let (j, live) = open(d.path());
        assert_eq!(
            live.len(),
            2,
            "a record failing its checksum is not applied"
        );
        j.put(4, rec("d")).expect("put after a truncation");
        drop(j);
        assert_eq!(open(d.path()).1.len(), 3);
    }

    #[test]
    fn compaction_keeps_live_records_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join(JOURNAL_FILE);
        {
            let (j, _) = open(d.path());
            j.put(1, rec("keep")).expect("put");
            for i in 0..COMPACT_SLACK as u64 + 10 {
                j.put(100 + i, rec("churn")).expect("put");
                j.remove(100 + i).expect("remove");
            }
            let log = lock(&j.log);
            assert!(log.records < 30, "compacted: {} records", log.records);
        }
        let (_, live) = open(d.path());
        assert_eq!(live.len(), 1);
        assert_eq!(live[&1].key, "keep");
        assert!(fs::metadata(&path).expect("stat").len() < 4096);
    }

    #[test]
    fn seed_is_written_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let (_, live) =
            Journal::open(d.path(), || Ok(BTreeMap::from([(7, rec("old"))]))).expect("open");
        assert_eq!(live[&7].key, "old");
        let mode = fs::metadata(d.path().join(JOURNAL_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the journal is the daemon's alone");
        let (_, live) = Journal::open(d.path(), || panic!("seeded again")).expect("reopen");
        assert_eq!(live[&7].key, "old");
    }
}
