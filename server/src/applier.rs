//! Applying a layer blob onto a snapshot's mounts: what Diff.Apply does and what the Transfer
//! service's unpack does, once.
//!
//! The fast path is containerd's: for a single overlay mount the tar is extracted straight into
//! the upperdir, whiteouts becoming overlay metadata; a single bind mount of a base layer is
//! written directly too. Either only when the directory belongs to one of berthd's own
//! snapshotters. Anything else is mounted on a temporary directory and applied through the mount.
//! Blocking: call through `crate::blocking::blocking`.

use berth_errdefs::{Error, Result};
use berth_layer::{apply_layer_with_parents, Applied, Limits, Whiteouts};
use berth_snapshotter::Mount;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Applier {
    /// Where berthd's own snapshotters keep layers: only there may a layer be written directly.
    pub snapshots_root: PathBuf,
    /// Where temporary mounts go.
    pub mounts_dir: PathBuf,
    pub limits: Limits,
}

/// Where a layer goes for a given set of mounts.
enum Plan {
    /// Extract into this directory (an overlay upperdir or a bind source).
    Direct {
        target: PathBuf,
        parents: Vec<PathBuf>,
        whiteouts: Whiteouts,
    },
    /// Mount on a temporary directory and extract through the mount.
    Mounted(Vec<Mount>),
}

impl Applier {
    /// Extract `blob` (compressed as `media_type` says) onto `mounts`; with `sync_fs`, the
    /// filesystem is flushed before returning. Returns the diff ID and uncompressed size.
    pub fn apply(
        &self,
        blob: impl Read + Send,
        media_type: &str,
        mounts: Vec<Mount>,
        sync_fs: bool,
    ) -> Result<Applied> {
        match self.plan(mounts) {
            Plan::Direct {
                target,
                parents,
                whiteouts,
            } => {
                let parents: Vec<&Path> = parents.iter().map(PathBuf::as_path).collect();
                let applied = apply_layer_with_parents(
                    blob,
                    media_type,
                    &target,
                    &parents,
                    whiteouts,
                    &self.limits,
                )?;
                if sync_fs {
                    sync_filesystem(&target)?;
                }
                Ok(applied)
            }
            Plan::Mounted(mounts) => with_mounted(&self.mounts_dir, &mounts, |dir| {
                let applied = apply_layer_with_parents(
                    blob,
                    media_type,
                    dir,
                    &[],
                    Whiteouts::Native,
                    &self.limits,
                )?;
                // Before the unmount: syncfs reaches the mounted filesystem through `dir`.
                if sync_fs {
                    sync_filesystem(dir)?;
                }
                Ok(applied)
            }),
        }
    }

    fn plan(&self, mounts: Vec<Mount>) -> Plan {
        if let [m] = mounts.as_slice() {
            let option = |name: &str| {
                m.options
                    .iter()
                    .find_map(|o| o.strip_prefix(name).map(str::to_string))
            };
            let read_only = m.options.iter().any(|o| o == "ro");
            match m.r#type.as_str() {
                "overlay" if !read_only => {
                    if let Some(upper) = option("upperdir=") {
                        let parents = option("lowerdir=")
                            .map(|l| l.split(':').map(PathBuf::from).collect())
                            .unwrap_or_default();
                        if self.owned(Path::new(&upper)) {
                            return Plan::Direct {
                                target: upper.into(),
                                parents,
                                whiteouts: Whiteouts::Overlay,
                            };
                        }
                    }
                }
                "bind" if !read_only && self.owned(Path::new(&m.source)) => {
                    // A base layer of overlayfs is an upperdir-to-be; a native snapshot is a full tree.
                    let whiteouts = if Path::new(&m.source)
                        .starts_with(self.snapshots_root.join("overlayfs"))
                    {
                        Whiteouts::Overlay
                    } else {
                        Whiteouts::Native
                    };
                    return Plan::Direct {
                        target: m.source.clone().into(),
                        parents: vec![],
                        whiteouts,
                    };
                }
                _ => {}
            }
        }
        Plan::Mounted(mounts)
    }

    /// Whether `dir` lies inside berthd's snapshot storage (after resolving symlinks and `..`).
    fn owned(&self, dir: &Path) -> bool {
        match (dir.canonicalize(), self.snapshots_root.canonicalize()) {
            (Ok(d), Ok(root)) => d.starts_with(root),
            _ => false,
        }
    }
}

/// Flush the filesystem holding `dir` (syncfs(2), as containerd's sync_fs does), so applied
/// files are on disk before the reply, not only at the snapshot's commit.
fn sync_filesystem(dir: &Path) -> Result<()> {
    let d =
        std::fs::File::open(dir).map_err(|e| Error::io(format!("open {}", dir.display()), e))?;
    rustix::fs::syncfs(&d).map_err(|e| Error::io(format!("syncfs {}", dir.display()), e.into()))
}

/// Mount `mounts` on a fresh directory under `dir`, run `f` on it, and always unmount.
pub fn with_mounted<T>(
    dir: &Path,
    mounts: &[Mount],
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let target = dir.join(format!("diff-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&target)
        .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
    let result = berth_snapshotter::mount_all(mounts, &target)
        .map_err(Error::from)
        .and_then(|()| f(&target));
    let unmounted = berth_snapshotter::unmount(&target).map_err(Error::from);
    let _ = std::fs::remove_dir(&target);
    let out = result?;
    unmounted?;
    Ok(out)
}
