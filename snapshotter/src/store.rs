//! Snapshot metadata shared by the implementations (containerd's `snapshots/storage`): the rules
//! (names unique across kinds, parents committed, no removal of a parent), ids, and their
//! persistence, without a database.
//!
//! Each snapshot is `<root>/snapshots/<id>/`; its record (key, parent, kind, labels, times, usage)
//! lives in the journal (`journal.rs`, `<root>/metadata.log`), which is the truth: one append and
//! one flush per change. At open the index (key → entry, with child counts) is rebuilt from it, and
//! what a crash left is mended:
//! - a numbered directory without a record (a creation that died before its record, a removal
//!   that died before deleting the tree) and `rm-<id>` directories are removed;
//! - a record whose directory is missing (its creation never reached the disk) gets an empty one
//!   again if it held nothing durable: an active or view snapshot, or an empty committed layer.
//!   A committed layer with content is synced before its record is written, so it cannot go
//!   missing short of outside damage; such a snapshot is dropped, and with it its children.
//!
//! Concurrency: one mutex guards the index and is held only for bookkeeping. Slow work (copying a
//! tree, measuring and syncing a layer, journal flushes) runs unlocked while the entry is marked:
//! a `Creating` entry reserves its key but is invisible; a `Busy` one (commit or update in flight)
//! is visible, and other mutations of it wait on a condvar.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::at;
use crate::fsutil::{disk_usage, fsync_dir, mkdir_mode, usage_and_sync};
use crate::journal::{Journal, Record, Stamp};
use crate::{validate_labels, Error, Info, Kind, Result, Usage};

/// A snapshot's record in the layout before the journal, read once to seed it.
const LEGACY_INFO_FILE: &str = "info.json";

/// What an implementation needs to build mounts: the snapshot's id and its parents' ids, nearest
/// first.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub id: u64,
    pub kind: Kind,
    pub parent_ids: Vec<u64>,
    /// The snapshot's `uidmapping`/`gidmapping` labels (see `idmap.rs`), when it has both.
    pub idmap: Option<(String, String)>,
}

fn idmap_of(labels: &HashMap<String, String>) -> Option<(String, String)> {
    Some((
        labels.get(crate::idmap::UIDMAP_LABEL)?.clone(),
        labels.get(crate::idmap::GIDMAP_LABEL)?.clone(),
    ))
}

/// Fills a new snapshot directory (which exists, empty): the implementation's part of a create.
pub(crate) type Populate<'a> = &'a dyn Fn(&Snapshot, &Path) -> Result<()>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Creating,
    Busy,
}

struct Entry {
    id: u64,
    info: Info,
    /// Measured at commit; active snapshots are measured on demand.
    usage: Usage,
    children: usize,
    state: State,
}

impl Entry {
    fn visible(&self) -> bool {
        self.state != State::Creating
    }
}

struct Index {
    entries: BTreeMap<String, Entry>,
    next_id: u64,
}

pub(crate) struct MetaStore {
    dir: PathBuf,
    journal: Journal,
    index: Mutex<Index>,
    idle: Condvar,
    /// Ids whose directories open() found missing, for restore_missing().
    missing: Mutex<Vec<u64>>,
}

fn to_stamp(t: SystemTime) -> Stamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Stamp {
        secs: d.as_secs(),
        nanos: d.subsec_nanos(),
    }
}

fn from_stamp(t: Stamp) -> SystemTime {
    UNIX_EPOCH + Duration::new(t.secs, t.nanos.min(999_999_999))
}

fn to_record(info: &Info, usage: Usage) -> Record {
    Record {
        key: info.name.clone(),
        parent: info.parent.clone(),
        kind: info.kind.as_str().to_string(),
        labels: info
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created: to_stamp(info.created),
        updated: to_stamp(info.updated),
        size: usage.size,
        inodes: usage.inodes,
    }
}

fn from_record(rec: Record) -> Option<(Info, Usage)> {
    let info = Info {
        kind: Kind::parse(&rec.kind)?,
        name: rec.key,
        parent: rec.parent,
        labels: rec.labels.into_iter().collect(),
        created: from_stamp(rec.created),
        updated: from_stamp(rec.updated),
    };
    let usage = Usage {
        size: rec.size,
        inodes: rec.inodes,
    };
    (!info.name.is_empty()).then_some((info, usage))
}

/// The records of a root written before the journal: every numbered directory's `info.json`.
fn legacy_records(dir: &Path) -> Result<BTreeMap<u64, Record>> {
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(at("read dir", dir))? {
        let entry = entry.map_err(at("read dir", dir))?;
        let Some(id) = parse_id(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let Ok(data) = fs::read(entry.path().join(LEGACY_INFO_FILE)) else {
            continue;
        };
        if let Ok(rec) = serde_json::from_slice::<Record>(&data) {
            found.insert(id, rec);
        }
    }
    Ok(found)
}

/// A canonical decimal id (no sign, no leading zeros), so `007` is not taken for `7`.
fn parse_id(name: &str) -> Option<u64> {
    let id: u64 = name.parse().ok()?;
    (id.to_string() == name).then_some(id)
}

/// Removes a directory tree or a stray file; already gone is fine.
fn remove_path(path: &Path) -> std::io::Result<()> {
    let res = match path.symlink_metadata() {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn new_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(at("mkdir", path))
}

impl MetaStore {
    /// Opens (creating) `<root>/snapshots` and its journal, rebuilds the index and removes what
    /// crashed operations left behind. Snapshots whose directory is to be made again are kept
    /// for [`MetaStore::restore_missing`], which the implementation calls next.
    pub fn open(root: &Path) -> Result<MetaStore> {
        let dir = root.join("snapshots");
        new_dir(root)?;
        new_dir(&dir)?;
        let migrated = std::cell::Cell::new(false);
        let (journal, records) = Journal::open(root, || {
            migrated.set(true);
            legacy_records(&dir)
        })?;

        let mut dropped: Vec<u64> = Vec::new();
        let mut found: Vec<(u64, Info, Usage)> = Vec::new();
        for (id, rec) in records {
            match from_record(rec) {
                Some((info, usage)) => found.push((id, info, usage)),
                None => dropped.push(id),
            }
        }
        let owned: std::collections::HashSet<u64> = found.iter().map(|f| f.0).collect();
        let mut max_id = owned.iter().chain(&dropped).copied().max().unwrap_or(0);
        for entry in fs::read_dir(&dir).map_err(at("read dir", &dir))? {
            let entry = entry.map_err(at("read dir", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if let Some(id) = parse_id(&name) {
                max_id = max_id.max(id);
                if owned.contains(&id) {
                    if migrated.get() {
                        let _ = fs::remove_file(path.join(LEGACY_INFO_FILE));
                    }
                    continue;
                }
            } else if let Some(id) = name.strip_prefix("rm-").and_then(parse_id) {
                max_id = max_id.max(id);
            }
            // Half-created, half-removed or foreign: nothing refers to it. Failures are left
            // for cleanup().
            let _ = remove_path(&path);
        }

        // Newest first, so that if a key somehow appears twice the newer snapshot wins.
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut entries = BTreeMap::new();
        let mut missing = Vec::new();
        for (id, info, usage) in found {
            let has_dir = dir.join(id.to_string()).join("fs").is_dir();
            let lost = !has_dir && info.kind == Kind::Committed && usage.inodes > 1;
            if lost || entries.contains_key(&info.name) {
                let _ = remove_path(&dir.join(id.to_string()));
                dropped.push(id);
                continue;
            }
            if !has_dir {
                missing.push(id);
            }
            let e = Entry {
                id,
                info,
                usage,
                children: 0,
                state: State::Ready,
            };
            entries.insert(e.info.name.clone(), e);
        }
        // A snapshot whose parent is missing or not committed cannot be mounted; drop it, and
        // then its own children.
        loop {
            let orphans: Vec<String> = entries
                .iter()
                .filter(|(_, e)| {
                    !e.info.parent.is_empty()
                        && entries
                            .get(&e.info.parent)
                            .is_none_or(|p: &Entry| p.info.kind != Kind::Committed)
                })
                .map(|(k, _)| k.clone())
                .collect();
            if orphans.is_empty() {
                break;
            }
            for k in orphans {
                if let Some(e) = entries.remove(&k) {
                    let _ = remove_path(&dir.join(e.id.to_string()));
                    missing.retain(|&id| id != e.id);
                    dropped.push(e.id);
                }
            }
        }
        if !dropped.is_empty() {
            journal.remove_all(&dropped)?;
        }
        let parents: Vec<String> = entries.values().map(|e| e.info.parent.clone()).collect();
        for p in parents.iter().filter(|p| !p.is_empty()) {
            if let Some(e) = entries.get_mut(p) {
                e.children += 1;
            }
        }
        missing.sort_unstable();
        Ok(MetaStore {
            dir,
            journal,
            index: Mutex::new(Index {
                entries,
                next_id: max_id + 1,
            }),
            idle: Condvar::new(),
            missing: Mutex::new(missing),
        })
    }

    /// Makes the directories of snapshots whose records reached the disk but whose directories
    /// did not (see the module doc), parents first. An empty committed layer is made as the
    /// active snapshot it was, so it gets its parent's owner and mode again.
    pub fn restore_missing(&self, populate: Populate<'_>) -> Result<()> {
        let ids = std::mem::take(&mut *self.missing.lock().unwrap_or_else(|e| e.into_inner()));
        for id in ids {
            let snap = {
                let g = self.lock();
                let Some(e) = g.entries.values().find(|e| e.id == id) else {
                    continue;
                };
                Snapshot {
                    id,
                    kind: match e.info.kind {
                        Kind::Committed => Kind::Active,
                        kind => kind,
                    },
                    parent_ids: Self::chain(&g, &e.info.parent)?,
                    idmap: idmap_of(&e.info.labels),
                }
            };
            let dir = self.snapshot_dir(id);
            remove_path(&dir).map_err(|e| Error::io(format!("remove {}", dir.display()), e))?;
            mkdir_mode(&dir, 0o700)?;
            populate(&snap, &dir)?;
        }
        Ok(())
    }

    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// The layer directory: overlay's upperdir, native's tree.
    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    pub fn work_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way later
        // operations would misread, so poisoning is ignored.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the index once `key` has no commit or update in flight.
    fn lock_idle(&self, key: &str) -> MutexGuard<'_, Index> {
        let mut g = self.lock();
        while g.entries.get(key).is_some_and(|e| e.state == State::Busy) {
            g = self.idle.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g
    }

    fn get<'a>(g: &'a Index, key: &str) -> Result<&'a Entry> {
        g.entries
            .get(key)
            .filter(|e| e.visible())
            .ok_or_else(|| Error::not_found(key))
    }

    /// Parent ids of a snapshot whose parent is `parent`, nearest first.
    fn chain(g: &Index, parent: &str) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut p = parent;
        while !p.is_empty() {
            let e = g.entries.get(p).ok_or_else(|| Error::not_found(p))?;
            ids.push(e.id);
            p = &e.info.parent;
            if ids.len() > g.entries.len() {
                return Err(Error::precondition(format!(
                    "parent chain of {parent:?} has a cycle"
                )));
            }
        }
        Ok(ids)
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(Self::get(&self.lock(), key)?.info.clone())
    }

    /// An active or view snapshot, for its mounts.
    pub fn get_snapshot(&self, key: &str) -> Result<Snapshot> {
        let g = self.lock();
        let e = Self::get(&g, key)?;
        if e.info.kind == Kind::Committed {
            return Err(Error::precondition(format!(
                "snapshot {key:?} is committed, not active or view"
            )));
        }
        Ok(Snapshot {
            id: e.id,
            kind: e.info.kind,
            parent_ids: Self::chain(&g, &e.info.parent)?,
            idmap: idmap_of(&e.info.labels),
        })
    }

    pub fn active_dir(&self, key: &str) -> Result<PathBuf> {
        let g = self.lock();
        let e = Self::get(&g, key)?;
        if e.info.kind != Kind::Active {
            return Err(Error::precondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        Ok(self.fs_dir(e.id))
    }

    /// Creates an active or view snapshot. `populate` fills the new snapshot directory (it exists,
    /// empty) without the lock held; a failure, or a crash before the record is durable, leaves
    /// nothing behind.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        populate: Populate<'_>,
    ) -> Result<Snapshot> {
        if key.is_empty() {
            return Err(Error::invalid("snapshot key must not be empty"));
        }
        validate_labels(&labels)?;
        let (snap, info) = {
            let mut g = self.lock();
            // containerd checks the parent before the key.
            let parent_ids = if parent.is_empty() {
                Vec::new()
            } else {
                let p = Self::get(&g, parent)?;
                if p.info.kind != Kind::Committed {
                    return Err(Error::invalid(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
                Self::chain(&g, parent)?
            };
            if g.entries.contains_key(key) {
                return Err(Error::exists(key));
            }
            let id = g.next_id;
            g.next_id += 1;
            let now = SystemTime::now();
            let info = Info {
                name: key.to_string(),
                parent: parent.to_string(),
                kind,
                labels,
                created: now,
                updated: now,
            };
            let e = Entry {
                id,
                info: info.clone(),
                usage: Usage::default(),
                children: 0,
                state: State::Creating,
            };
            g.entries.insert(key.to_string(), e);
            if let Some(p) = g.entries.get_mut(parent) {
                p.children += 1;
            }
            (
                Snapshot {
                    id,
                    kind,
                    parent_ids,
                    idmap: idmap_of(&info.labels),
                },
                info,
            )
        };

        let dir = self.snapshot_dir(snap.id);
        let mut recorded = false;
        let res = mkdir_mode(&dir, 0o700)
            .and_then(|()| populate(&snap, &dir))
            .and_then(|()| {
                recorded = true;
                self.journal
                    .put(snap.id, to_record(&info, Usage::default()))
            });
        if res.is_err() && recorded {
            // The record may have reached the file although its flush failed.
            let _ = self.journal.remove(snap.id);
        }
        let mut g = self.lock();
        match res {
            Ok(()) => {
                if let Some(e) = g.entries.get_mut(key) {
                    e.state = State::Ready;
                }
                Ok(snap)
            }
            Err(err) => {
                let _ = fs::remove_dir_all(&dir);
                g.entries.remove(key);
                if let Some(p) = g.entries.get_mut(parent) {
                    p.children = p.children.saturating_sub(1);
                }
                Err(err)
            }
        }
    }

    /// Commits the active snapshot `key` as `name`: measures and syncs its layer, then replaces
    /// its record (same id, same directory).
    pub fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        self.commit_under(name, key, None, labels)
    }

    /// Commits the parentless active snapshot `key` as `name` on top of the committed `parent`
    /// ("" keeps it a base layer). Only sound where a layer directory does not depend on its
    /// parents (overlay upper directories), which the caller vouches for.
    pub fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.commit_under(name, key, Some(parent), labels)
    }

    fn commit_under(
        &self,
        name: &str,
        key: &str,
        onto: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if name.is_empty() || key.is_empty() {
            return Err(Error::invalid("snapshot name and key must not be empty"));
        }
        validate_labels(&labels)?;
        let (id, info) = {
            let mut g = self.lock_idle(key);
            if g.entries.contains_key(name) {
                return Err(Error::exists(name));
            }
            if let Some(parent) = onto.filter(|p| !p.is_empty()) {
                // The new parent is checked like prepare's: it exists, is committed, and its own
                // chain is sound. `name` is not in the index yet, so it cannot be on that chain.
                let p = Self::get(&g, parent)?;
                if p.info.kind != Kind::Committed {
                    return Err(Error::invalid(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
                Self::chain(&g, parent)?;
            }
            let e = g
                .entries
                .get_mut(key)
                .filter(|e| e.visible())
                .ok_or_else(|| Error::not_found(key))?;
            if e.info.kind != Kind::Active {
                return Err(Error::precondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            if onto.is_some() && !e.info.parent.is_empty() {
                return Err(Error::precondition(format!(
                    "snapshot {key:?} already has parent {:?}",
                    e.info.parent
                )));
            }
            e.state = State::Busy;
            let parent = onto.map_or_else(|| e.info.parent.clone(), str::to_string);
            let now = SystemTime::now();
            let info = Info {
                name: name.to_string(),
                parent,
                kind: Kind::Committed,
                labels, // replaced, not inherited (containerd)
                created: now,
                updated: now,
            };
            let id = e.id;
            let reserved = Entry {
                id,
                info: info.clone(),
                usage: Usage::default(),
                children: 0,
                state: State::Creating,
            };
            g.entries.insert(name.to_string(), reserved);
            if let Some(p) = onto.and_then(|p| g.entries.get_mut(p)) {
                // Held from now, so the parent cannot be removed under the commit.
                p.children += 1;
            }
            (id, info)
        };

        let res = usage_and_sync(&self.fs_dir(id)).and_then(|u| {
            if u.inodes > 1 {
                // The layer has content: its directory's own entries must be durable too. An
                // empty one needs nothing (open() makes a lost one again).
                fsync_dir(&self.snapshot_dir(id))?;
                fsync_dir(&self.dir)?;
            }
            self.journal.put(id, to_record(&info, u)).map(|()| u)
        });
        let mut g = self.lock();
        let out = match res {
            Ok(usage) => {
                g.entries.remove(key);
                if let Some(e) = g.entries.get_mut(name) {
                    e.usage = usage;
                    e.state = State::Ready;
                }
                Ok(())
            }
            Err(err) => {
                g.entries.remove(name);
                if let Some(e) = g.entries.get_mut(key) {
                    e.state = State::Ready;
                }
                if let Some(p) = onto.and_then(|p| g.entries.get_mut(p)) {
                    p.children = p.children.saturating_sub(1);
                }
                Err(err)
            }
        };
        drop(g);
        self.idle.notify_all();
        out
    }

    /// Removes a snapshot: its record first (staged under the lock, so records of a parent and
    /// its children reach the journal in the order they changed), then its tree, unlocked. A
    /// crash in between leaves a tree without a record, which open() removes.
    pub fn remove(&self, key: &str) -> Result<()> {
        let (id, seq) = {
            let mut g = self.lock_idle(key);
            let e = Self::get(&g, key)?;
            if e.children > 0 {
                return Err(Error::precondition(format!(
                    "cannot remove snapshot {key:?} with child"
                )));
            }
            let (id, parent) = (e.id, e.info.parent.clone());
            let seq = self.journal.stage_remove(id)?;
            g.entries.remove(key);
            if let Some(p) = g.entries.get_mut(&parent) {
                p.children = p.children.saturating_sub(1);
            }
            (id, seq)
        };
        self.journal.sync_to(seq)?;
        // Freeing the space is best effort: cleanup() removes whatever is left.
        let _ = fs::remove_dir_all(self.snapshot_dir(id));
        Ok(())
    }

    pub fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let name = info.name.as_str();
        if name.is_empty() {
            return Err(Error::invalid("snapshot name must not be empty"));
        }
        let (id, usage, updated) = {
            let mut g = self.lock_idle(name);
            let e = g
                .entries
                .get_mut(name)
                .filter(|e| e.visible())
                .ok_or_else(|| Error::not_found(name))?;
            let mut labels = e.info.labels.clone();
            if fieldpaths.is_empty() {
                labels = info.labels;
            } else {
                for path in fieldpaths {
                    if let Some(k) = path.strip_prefix("labels.") {
                        match info.labels.get(k) {
                            Some(v) => labels.insert(k.to_string(), v.clone()),
                            None => labels.remove(k),
                        };
                    } else if path == "labels" {
                        labels = info.labels.clone();
                    } else {
                        return Err(Error::invalid(format!(
                            "cannot update {path:?} field on snapshot {name:?}"
                        )));
                    }
                }
            }
            // containerd stores no empty label values: setting one to "" deletes it.
            labels.retain(|_, v| !v.is_empty());
            validate_labels(&labels)?;
            let mut updated = e.info.clone();
            updated.labels = labels;
            updated.updated = SystemTime::now();
            e.state = State::Busy;
            (e.id, e.usage, updated)
        };

        let res = self.journal.put(id, to_record(&updated, usage));
        let mut g = self.lock();
        if let Some(e) = g.entries.get_mut(name) {
            e.state = State::Ready;
            if res.is_ok() {
                e.info = updated.clone();
            }
        }
        drop(g);
        self.idle.notify_all();
        res.map(|()| updated)
    }

    pub fn usage(&self, key: &str) -> Result<Usage> {
        let (kind, id, stored) = {
            let g = self.lock();
            let e = Self::get(&g, key)?;
            (e.info.kind, e.id, e.usage)
        };
        if kind == Kind::Active {
            return disk_usage(&self.fs_dir(id));
        }
        Ok(stored)
    }

    /// Calls `f` on a snapshot of the index, unlocked, so `f` may call back in.
    pub fn walk(&self, f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        let infos: Vec<Info> = {
            let g = self.lock();
            g.entries
                .values()
                .filter(|e| e.visible())
                .map(|e| e.info.clone())
                .collect()
        };
        infos.iter().try_for_each(f)
    }

    /// Removes every directory under `snapshots/` that no snapshot owns; the first failure is
    /// returned after trying them all.
    pub fn cleanup(&self) -> Result<()> {
        // List first, then read the ids: an entry is registered before its directory is made,
        // so a listed directory that is not in the index afterwards is garbage.
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(at("read dir", &self.dir))? {
            names.push(entry.map_err(at("read dir", &self.dir))?.file_name());
        }
        let live: std::collections::HashSet<u64> =
            self.lock().entries.values().map(|e| e.id).collect();
        let mut first_err = None;
        for name in names {
            if parse_id(&name.to_string_lossy()).is_some_and(|id| live.contains(&id)) {
                continue;
            }
            let path = self.dir.join(&name);
            if let Err(e) = remove_path(&path) {
                first_err.get_or_insert(Error::io(format!("remove {}", path.display()), e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
