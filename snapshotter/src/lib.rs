//! berth-snapshotter: copy-on-write filesystem snapshots for container root filesystems.
//!
//! It owns the [`Snapshotter`] trait (containerd's snapshot operations, synchronous), the
//! [`OverlaySnapshotter`] (`overlayfs`) and [`NativeSnapshotter`] (`native`) implementations, their
//! shared on-disk metadata (`store.rs`), a mount helper ([`Mount::mount`]) and, behind the
//! `testsuite` feature, the conformance suite every implementation passes.
//!
//! **Invariant:** this crate knows nothing of gRPC, namespaces or berthd's metadata store. Keys are
//! opaque unique strings (berthd namespaces them before they get here) and are never used as paths.
//!
//! On disk, under the root given to `open`:
//! ```text
//! <root>/metadata.log               the journal of snapshot records: key, parent key, kind,
//!                                   labels, times, usage (one append and flush per change)
//! <root>/snapshots/<id>/fs/         the layer: overlay upperdir, or native's full copy
//! <root>/snapshots/<id>/work/       overlay workdir (overlayfs active snapshots only)
//! ```
//! `<id>` is a short decimal number so that long parent chains fit the mount-option size limit.

/// The `Snapshotter` methods both implementations answer from the shared `store::MetaStore`
/// (field `store`).
macro_rules! delegate_to_store {
    () => {
        fn stat(&self, key: &str) -> $crate::Result<$crate::Info> {
            self.store.stat(key)
        }
        fn update(
            &self,
            info: $crate::Info,
            fieldpaths: &[String],
        ) -> $crate::Result<$crate::Info> {
            self.store.update(info, fieldpaths)
        }
        fn usage(&self, key: &str) -> $crate::Result<$crate::Usage> {
            self.store.usage(key)
        }
        fn mounts(&self, key: &str) -> $crate::Result<Vec<$crate::Mount>> {
            Ok(self.mounts_of(&self.store.get_snapshot(key)?))
        }
        fn prepare(
            &self,
            key: &str,
            parent: &str,
            labels: std::collections::HashMap<String, String>,
        ) -> $crate::Result<Vec<$crate::Mount>> {
            let populate = |s: &$crate::store::Snapshot, d: &std::path::Path| self.populate(s, d);
            let snap = self
                .store
                .create($crate::Kind::Active, key, parent, labels, &populate)?;
            Ok(self.mounts_of(&snap))
        }
        fn view(
            &self,
            key: &str,
            parent: &str,
            labels: std::collections::HashMap<String, String>,
        ) -> $crate::Result<Vec<$crate::Mount>> {
            let populate = |s: &$crate::store::Snapshot, d: &std::path::Path| self.populate(s, d);
            let snap = self
                .store
                .create($crate::Kind::View, key, parent, labels, &populate)?;
            Ok(self.mounts_of(&snap))
        }
        fn commit(
            &self,
            name: &str,
            key: &str,
            labels: std::collections::HashMap<String, String>,
        ) -> $crate::Result<()> {
            self.store.commit(name, key, labels)
        }
        fn remove(&self, key: &str) -> $crate::Result<()> {
            self.store.remove(key)
        }
        fn walk(
            &self,
            f: &mut dyn FnMut(&$crate::Info) -> $crate::Result<()>,
        ) -> $crate::Result<()> {
            self.store.walk(f)
        }
        fn cleanup(&self) -> $crate::Result<()> {
            self.store.cleanup()
        }
        fn active_dir(&self, key: &str) -> $crate::Result<std::path::PathBuf> {
            self.store.active_dir(key)
        }
    };
}

mod copy;
mod error;
mod fsutil;
pub mod idmap;
mod journal;
mod mount;
mod native;
mod overlay;
mod store;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

pub use error::{Error, Result};
pub use mount::{mount_all, overlay_upperdir_over, unmount, unmount_under, Mount};
pub use native::NativeSnapshotter;
pub use overlay::{supported as overlay_supported, OverlaySnapshotter};

/// containerd's snapshot kinds; the numbers are the wire values of `containerd.snapshots.v1.Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A read-only view of a committed snapshot.
    View = 1,
    /// A writable snapshot being prepared (a container's rootfs, or a layer being unpacked).
    Active = 2,
    /// An immutable snapshot that can be a parent.
    Committed = 3,
}

impl Kind {
    pub fn from_wire(v: i32) -> Option<Kind> {
        match v {
            1 => Some(Kind::View),
            2 => Some(Kind::Active),
            3 => Some(Kind::Committed),
            _ => None,
        }
    }

    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "view" => Some(Kind::View),
            "active" => Some(Kind::Active),
            "committed" => Some(Kind::Committed),
            _ => None,
        }
    }
}

/// What a snapshotter knows about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The key of an active or view snapshot, or the name of a committed one.
    pub name: String,
    /// The committed snapshot this one is based on; empty for a base layer.
    pub parent: String,
    pub kind: Kind,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// Disk usage of one snapshot (its own layer, not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated (st_blocks × 512, as containerd counts), hardlinks counted once.
    pub size: i64,
    pub inodes: i64,
}

/// containerd's limit on one label: key and value together at most 4096 bytes.
pub const MAX_LABEL_SIZE: usize = 4096;

/// The operations of containerd's `snapshots.Snapshotter`, synchronous (berthd calls them from
/// `spawn_blocking`). Errors follow containerd's: see [`Error`].
pub trait Snapshotter: Send + Sync {
    /// "overlayfs" or "native".
    fn name(&self) -> &str;
    /// Info of any snapshot by key or committed name.
    fn stat(&self, key: &str) -> Result<Info>;
    /// Updates labels: field paths `labels` or `labels.KEY` (an empty value deletes); no paths
    /// replaces all labels. Anything else is InvalidArgument.
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;
    /// Bytes and inodes of the snapshot's own layer. Walks the tree for an active snapshot; a
    /// committed one reports what was measured at commit; a view reports zero (as containerd).
    fn usage(&self, key: &str) -> Result<Usage>;
    /// The mounts of an active or view snapshot; a committed one is FailedPrecondition.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;
    /// A new writable snapshot on top of `parent` (a committed name, or "" for none).
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>>;
    /// A new read-only snapshot of `parent`.
    fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>>;
    /// Turns the active snapshot `key` into the committed snapshot `name` (labels replaced, not
    /// inherited); `key` disappears. The layer is durable on disk before this returns.
    fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()>;
    /// Removes a snapshot and its layer; a committed one with children is FailedPrecondition.
    fn remove(&self, key: &str) -> Result<()>;
    /// Calls `f` for every snapshot (ordered by key). `f` may call back into the snapshotter.
    fn walk(&self, f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()>;
    /// Removes leftover directories no snapshot owns (failed removals, crashed creations).
    fn cleanup(&self) -> Result<()>;
    /// For the diff service's fast path: the directory a layer tar is extracted into for an active
    /// snapshot (overlay: its upperdir; native: its full tree). Not active is FailedPrecondition.
    fn active_dir(&self, key: &str) -> Result<PathBuf>;
    /// Whether [`Snapshotter::commit_onto`] works: a layer applied with no parent stays valid
    /// under any parent (containerd 2.2's "rebase" capability), which lets layers of one image
    /// be unpacked side by side and chained afterwards.
    fn can_rebase(&self) -> bool {
        false
    }
    /// Commits the active snapshot `key`, prepared with no parent, as `name` on top of the
    /// committed `parent`. A missing parent is NotFound, one not committed InvalidArgument, a
    /// taken `name` AlreadyExists, a `key` that has a parent FailedPrecondition; nothing changes
    /// on error. Durable as [`Snapshotter::commit`].
    fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let _ = (name, key, parent, labels);
        Err(Error::new(
            berth_errdefs::Kind::Unimplemented,
            format!(
                "snapshotter {} cannot commit a layer onto a parent",
                self.name()
            ),
        ))
    }
}

/// Checks labels against containerd's size limit.
pub fn validate_labels(labels: &HashMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_SIZE {
            let short: String = k.chars().take(10).collect();
            return Err(Error::invalid(format!(
                "label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {short}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_wire_values() {
        for k in [Kind::View, Kind::Active, Kind::Committed] {
            assert_eq!(Kind::from_wire(k as i32), Some(k));
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::from_wire(0), None);
        assert_eq!(Kind::from_wire(4), None);
    }

    #[test]
    fn labels_over_the_limit_are_invalid() {
        let mut l = HashMap::new();
        l.insert("k".to_string(), "v".repeat(MAX_LABEL_SIZE - 1));
        assert!(validate_labels(&l).is_ok());
        l.insert("k2".to_string(), "v".repeat(MAX_LABEL_SIZE - 1));
        assert_eq!(
            validate_labels(&l).map_err(|e| e.kind()).err(),
            Some(berth_errdefs::Kind::InvalidArgument)
        );
    }
}
