//! ImageFsInfo's numbers: a walk of the snapshotter's and the content store's trees (bytes and
//! inodes, as du counts them), kept while fresh. crictl asks before every command and the
//! kubelet every few seconds, and a walk of a large image store takes tens of ms (1 ms with one
//! busybox container here, 3-4.6 ms with thirty), so one walk answers for up to
//! [`FRESH`]. A pull that moves a name to new content, or a removal, through the CRI starts the
//! next walk at once and every call waits for it: what the CRI changed is always in the answer;
//! other changes (containers' writes, another client's pulls, the collector's removals) within
//! [`FRESH`]. A re-pull that finds the name's target unchanged (every `crictl run`, a kubelet's
//! `Always`) starts no walk.

use berth_api::runtime::v1 as cri;
use berth_errdefs::{Error, Result};
use std::collections::BTreeSet;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How long one walk answers for.
pub const FRESH: Duration = Duration::from_secs(1);

/// The last walk, and a count of the CRI's changes to the images.
pub(crate) struct FsUsageCache {
    /// How long a walk answers for: [`FRESH`].
    fresh: Duration,
    changes: AtomicU64,
    /// Held while a walk runs, so a call waits for a walk under way rather than starting another.
    last: tokio::sync::Mutex<Option<Walked>>,
}

struct Walked {
    /// [`FsUsageCache::changes`] when the walk started.
    changes: u64,
    started: Instant,
    info: cri::ImageFsInfoResponse,
}

impl Default for FsUsageCache {
    fn default() -> Self {
        FsUsageCache {
            fresh: FRESH,
            changes: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
        }
    }
}

impl FsUsageCache {
    /// The last walk's answer if it began after the CRI's last change and less than [`FRESH`]
    /// ago; otherwise `walk()`'s, kept.
    pub async fn get<F, Fut>(&self, walk: F) -> Result<cri::ImageFsInfoResponse>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<cri::ImageFsInfoResponse>>,
    {
        let mut last = self.last.lock().await;
        let changes = self.changes.load(Ordering::Acquire);
        if let Some(w) = last.as_ref() {
            if w.changes == changes && w.started.elapsed() < self.fresh {
                return Ok(w.info.clone());
            }
        }
        let started = Instant::now();
        let info = walk().await?;
        *last = Some(Walked {
            changes,
            started,
            info: info.clone(),
        });
        Ok(info)
    }

    /// The CRI changed the images: no earlier walk answers any more.
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }
}

/// The snapshotter's filesystem (image and container layers alike) and the content store's.
pub(crate) fn walk(root: &Path) -> Result<cri::ImageFsInfoResponse> {
    let snapshots = usage(&root.join("snapshots").join("overlayfs"))?;
    let content = usage(&root.join("content"))?;
    Ok(cri::ImageFsInfoResponse {
        image_filesystems: vec![snapshots.clone(), content],
        container_filesystems: vec![snapshots],
    })
}

/// du's count of a directory tree on its own filesystem: apparent blocks and inodes, each
/// hard-linked inode once; mounts below it (a container's rootfs) are not entered.
fn usage(dir: &Path) -> Result<cri::FilesystemUsage> {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let (bytes, inodes) = match std::fs::symlink_metadata(dir) {
        Ok(top) => {
            let mut seen = BTreeSet::new();
            let mut bytes = 0u64;
            let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
            seen.insert(top.ino());
            bytes += top.blocks() * 512;
            while let Some(d) = stack.pop() {
                let entries = match std::fs::read_dir(&d) {
                    Ok(e) => e,
                    // Removed while walking, or unreadable: counted as gone.
                    Err(_) => continue,
                };
                for entry in entries.flatten() {
                    let Ok(m) = entry.metadata() else { continue };
                    if m.dev() != top.dev() || !seen.insert(m.ino()) {
                        continue;
                    }
                    bytes += m.blocks() * 512;
                    if m.is_dir() {
                        stack.push(entry.path());
                    }
                }
            }
            (bytes, seen.len() as u64)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0),
        Err(e) => return Err(Error::io(format!("stat {}", dir.display()), e)),
    };
    Ok(cri::FilesystemUsage {
        timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: dir.display().to_string(),
        }),
        used_bytes: Some(cri::UInt64Value { value: bytes }),
        inodes_used: Some(cri::UInt64Value { value: inodes }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn answer(bytes: u64) -> cri::ImageFsInfoResponse {
        cri::ImageFsInfoResponse {
            image_filesystems: vec![cri::FilesystemUsage {
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                ..Default::default()
            }],
            container_filesystems: Vec::new(),
        }
    }

    fn bytes(r: &cri::ImageFsInfoResponse) -> u64 {
        r.image_filesystems[0]
            .used_bytes
            .as_ref()
            .map_or(0, |v| v.value)
    }

    #[tokio::test]
    async fn one_walk_answers_until_a_change() {
        let cache = FsUsageCache::default();
        let walks = AtomicUsize::new(0);
        let walk = || async {
            let n = walks.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            Ok(answer(n * 100))
        };
        assert_eq!(bytes(&cache.get(walk).await.unwrap()), 100);
        assert_eq!(
            bytes(&cache.get(walk).await.unwrap()),
            100,
            "a fresh walk answers"
        );
        cache.changed();
        assert_eq!(
            bytes(&cache.get(walk).await.unwrap()),
            200,
            "a change walks again"
        );
        assert_eq!(walks.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_walk_older_than_fresh_is_walked_again() {
        let cache = FsUsageCache {
            fresh: Duration::ZERO,
            ..Default::default()
        };
        let walks = AtomicUsize::new(0);
        let walk = || async {
            let n = walks.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            Ok(answer(n))
        };
        assert_eq!(bytes(&cache.get(walk).await.unwrap()), 1);
        assert_eq!(bytes(&cache.get(walk).await.unwrap()), 2);
    }

    #[tokio::test]
    async fn a_failed_walk_is_not_kept() {
        let cache = FsUsageCache::default();
        let err = cache
            .get(|| async { Err(Error::internal("unreadable")) })
            .await
            .expect_err("the walk's error");
        assert!(err.to_string().contains("unreadable"), "{err}");
        let ok = cache.get(|| async { Ok(answer(7)) }).await.unwrap();
        assert_eq!(bytes(&ok), 7);
    }

    #[test]
    fn the_walk_counts_files_once_and_a_missing_tree_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = dir.path().join("snapshots").join("overlayfs");
        std::fs::create_dir_all(&snaps).unwrap();
        std::fs::write(snaps.join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(snaps.join("a"), snaps.join("b")).unwrap();
        let info = walk(dir.path()).unwrap();
        let snapshots = &info.image_filesystems[0];
        // The directory and one inode for both names.
        assert_eq!(snapshots.inodes_used.as_ref().unwrap().value, 2);
        assert!(snapshots.used_bytes.as_ref().unwrap().value >= 10_000);
        let content = &info.image_filesystems[1];
        assert_eq!(
            content.inodes_used.as_ref().unwrap().value,
            0,
            "no content dir"
        );
    }
}
