//! The `native` snapshotter (containerd's `snapshots/native`), for filesystems without overlay:
//! every active snapshot's `fs/` is a full copy of its parent's tree.
//!
//! Mounts, as containerd returns them: active → `bind <id>/fs [rbind, rw]`; view without parent →
//! `bind <id>/fs [rbind, ro]`; view of a parent → `bind <parent>/fs [rbind, ro]` (no copy: the
//! parent is a full tree and cannot be removed while the view exists).

use std::path::Path;

use crate::copy::copy_tree;
use crate::fsutil::mkdir_mode;
use crate::store::{MetaStore, Snapshot};
use crate::{Kind, Mount, Result, Snapshotter};

pub struct NativeSnapshotter {
    store: MetaStore,
}

impl NativeSnapshotter {
    /// Opens the snapshotter rooted at `root` (created if missing).
    pub fn open(root: &Path) -> Result<NativeSnapshotter> {
        let sn = NativeSnapshotter {
            store: MetaStore::open(root)?,
        };
        sn.store.restore_missing(&|s, d| sn.populate(s, d))?;
        Ok(sn)
    }

    fn populate(&self, snap: &Snapshot, dir: &Path) -> Result<()> {
        match (snap.kind, snap.parent_ids.first()) {
            (Kind::Active, Some(&parent)) => copy_tree(&self.store.fs_dir(parent), &dir.join("fs")),
            _ => mkdir_mode(&dir.join("fs"), 0o755),
        }
    }

    fn mounts_of(&self, snap: &Snapshot) -> Vec<Mount> {
        let (id, mode) = match (snap.kind, snap.parent_ids.first()) {
            (Kind::View, Some(&parent)) => (parent, "ro"),
            (Kind::View, None) => (snap.id, "ro"),
            _ => (snap.id, "rw"),
        };
        vec![Mount {
            r#type: "bind".into(),
            source: self.store.fs_dir(id).to_string_lossy().into_owned(),
            target: String::new(),
            options: vec!["rbind".into(), mode.into()],
        }]
    }
}

impl Snapshotter for NativeSnapshotter {
    fn name(&self) -> &str {
        "native"
    }

    delegate_to_store!();
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn mounts_match_containerd() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = NativeSnapshotter::open(tmp.path()).expect("open");
        let fs_of = |id: u64| sn.store.fs_dir(id).display().to_string();
        let bind = |id: u64, mode: &str| {
            vec![Mount {
                r#type: "bind".into(),
                source: fs_of(id),
                target: String::new(),
                options: vec!["rbind".into(), mode.into()],
            }]
        };
        assert_eq!(
            sn.prepare("a", "", HashMap::new()).expect("prepare"),
            bind(1, "rw")
        );
        sn.commit("c", "a", HashMap::new()).expect("commit");
        assert_eq!(
            sn.prepare("b", "c", HashMap::new()).expect("prepare"),
            bind(2, "rw")
        );
        assert_eq!(
            sn.view("v", "c", HashMap::new()).expect("view"),
            bind(1, "ro")
        );
        assert_eq!(
            sn.view("v0", "", HashMap::new()).expect("view"),
            bind(4, "ro")
        );
    }
}
