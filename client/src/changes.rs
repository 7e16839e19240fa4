//! A container's changes against its image (`berth diff`): berthd's Diff service computes the
//! layer between a View of the container's parent snapshot and the container's own snapshot,
//! as `commit` would; each entry of that layer is then Added or Changed by whether the path
//! exists in the parent (a read-only mount of the View, resolved with openat2 RESOLVE_IN_ROOT),
//! and each whiteout is a Deletion. `export` is the same Diff against an empty tree.

use crate::api::services::content::v1::content_client::ContentClient;
use crate::api::services::content::v1::ReadContentRequest;
use crate::api::services::diff::v1::diff_client::DiffClient;
use crate::api::services::diff::v1::DiffRequest;
use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{
    MountsRequest, RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use crate::api::types::Mount;
use crate::containers::ContainerInfo;
use crate::{Client, Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::Seek;
use std::os::fd::AsRawFd;
use tonic::Code;

/// docker's A/C/D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Changed,
    Added,
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Changed => 'C',
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path, absolute inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: String,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

impl Client {
    /// The changes of `container`'s filesystem against its image, sorted by path.
    pub async fn container_changes(&self, container: &ContainerInfo) -> Result<Vec<Change>> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let snapshotter = container.snapshotter.clone();
        let key = container.snapshot_key.clone();
        if key.is_empty() {
            return Err(Error::invalid(format!(
                "container {} has no rootfs snapshot",
                container.id
            )));
        }
        let info = snapshots
            .stat(self.request(StatSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key: key.clone(),
            }))
            .await?
            .into_inner()
            .info
            .ok_or_else(|| Error::local(Code::Internal, "Stat answered no info"))?;
        let right = snapshots
            .mounts(self.request(MountsRequest {
                snapshotter: snapshotter.clone(),
                key: key.clone(),
            }))
            .await?
            .into_inner()
            .mounts;
        // The view and the computed layer are garbage once read: the lease keeps them until
        // then and lets the collector take them after.
        let lease = self
            .leases()
            .create(std::time::Duration::from_secs(600))
            .await?;
        let view_key = format!("berth-diff-view-{}", crate::names::new_id());
        let result = async {
            let left = snapshots
                .view(lease.request(ViewSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    key: view_key.clone(),
                    parent: info.parent.clone(),
                    labels: HashMap::new(),
                }))
                .await?
                .into_inner()
                .mounts;
            let desc = self.layer_between(&lease, left.clone(), right).await?;
            let mut layer = tempfile::tempfile().map_err(|e| Error::io("create a temp file", e))?;
            self.copy_blob(&desc.digest, &mut layer).await?;
            tokio::task::spawn_blocking(move || classify(layer, &left))
                .await
                .map_err(|e| Error::local(Code::Internal, format!("reading the layer: {e}")))?
        }
        .await;
        let removed = snapshots
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter,
                key: view_key,
            }))
            .await;
        let released = lease.release().await;
        let changes = result?;
        match removed {
            Err(e) if e.code() != Code::NotFound => return Err(e.into()),
            _ => {}
        }
        released?;
        Ok(changes)
    }
}

impl Client {
    /// `berth export`: a tar of `container`'s whole filesystem (its snapshot as the Diff
    /// service sees it against an empty tree) written to `out`.
    pub async fn export_container(
        &self,
        container: &ContainerInfo,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<()> {
        if container.snapshot_key.is_empty() {
            return Err(Error::invalid(format!(
                "container {} has no rootfs snapshot",
                container.id
            )));
        }
        let right = SnapshotsClient::new(self.channel.clone())
            .mounts(self.request(MountsRequest {
                snapshotter: container.snapshotter.clone(),
                key: container.snapshot_key.clone(),
            }))
            .await?
            .into_inner()
            .mounts;
        let lease = self
            .leases()
            .create(std::time::Duration::from_secs(3600))
            .await?;
        let result = async {
            let desc = self.layer_between(&lease, Vec::new(), right).await?;
            self.copy_blob(&desc.digest, out).await
        }
        .await;
        let released = lease.release().await;
        result?;
        released
    }

    /// Diff/Diff of `right` against `left`, an uncompressed tar, held by `lease`.
    async fn layer_between(
        &self,
        lease: &crate::leases::LeaseGuard,
        left: Vec<Mount>,
        right: Vec<Mount>,
    ) -> Result<crate::api::types::Descriptor> {
        DiffClient::new(self.channel.clone())
            .diff(lease.request(DiffRequest {
                left,
                right,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                r#ref: String::new(),
                labels: HashMap::new(),
                source_date_epoch: None,
            }))
            .await?
            .into_inner()
            .diff
            .ok_or_else(|| Error::local(Code::Internal, "Diff answered no descriptor"))
    }

    /// A blob's bytes from Content into `out`, as they arrive.
    async fn copy_blob(&self, digest: &str, out: &mut (dyn std::io::Write + Send)) -> Result<()> {
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await?
            .into_inner();
        while let Some(chunk) = stream.message().await? {
            out.write_all(&chunk.data)
                .map_err(|e| Error::io("write the container's files", e))?;
        }
        out.flush()
            .map_err(|e| Error::io("write the container's files", e))
    }
}

/// The layer's entries as changes, with the parent mounted read-only to tell A from C.
fn classify(mut layer: std::fs::File, parent: &[Mount]) -> Result<Vec<Change>> {
    layer
        .rewind()
        .map_err(|e| Error::io("rewind the layer", e))?;
    let dir = tempfile::Builder::new()
        .prefix("berth-diff-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| Error::io("create a temp dir for the parent", e))?;
    let empty_parent = parent.is_empty();
    if !empty_parent {
        crate::mounts::mount_read_only(parent, dir.path())?;
    }
    let result = (|| {
        let root =
            std::fs::File::open(dir.path()).map_err(|e| Error::io("open the mounted parent", e))?;
        let mut changes: BTreeMap<String, ChangeKind> = BTreeMap::new();
        let mut archive = tar::Archive::new(layer);
        let entries = archive
            .entries()
            .map_err(|e| Error::io("read the layer", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read the layer", e))?;
            let path = entry
                .path()
                .map_err(|e| Error::io("read the layer", e))?
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            if path.is_empty() || path == "." {
                continue;
            }
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (format!("/{d}"), n.to_string()),
                None => (String::new(), path.clone()),
            };
            if name == OPAQUE {
                continue;
            }
            if let Some(deleted) = name.strip_prefix(WHITEOUT_PREFIX) {
                changes.insert(format!("{dir}/{deleted}"), ChangeKind::Deleted);
                continue;
            }
            let kind = if !empty_parent && exists_in_root(&root, &path)? {
                ChangeKind::Changed
            } else {
                ChangeKind::Added
            };
            changes.insert(format!("/{path}"), kind);
        }
        Ok(changes
            .into_iter()
            .map(|(path, kind)| Change { kind, path })
            .collect())
    })();
    if !empty_parent {
        let _ = nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
    result
}

/// Whether `path` exists in the tree at `root`, symlinks resolved inside it; the last
/// component itself is not followed (a changed symlink is the link).
fn exists_in_root(root: &std::fs::File, path: &str) -> Result<bool> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root.as_raw_fd(), path, how) {
        Ok(fd) => {
            let _ = nix::unistd::close(fd);
            Ok(true)
        }
        Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => Ok(false),
        Err(e) => Err(Error::io(format!("look up /{path} in the image"), e.into())),
    }
}
