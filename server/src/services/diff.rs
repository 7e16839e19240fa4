//! Diff service: apply a layer blob onto a snapshot's mounts (unpack), and compute a layer from
//! two sets of mounts (commit of a container).
//!
//! Apply takes the fast path containerd takes: for a single overlay mount the tar is extracted
//! straight into the upperdir, whiteouts becoming overlay metadata; a single bind mount of a base
//! layer is written directly too. Either only when the directory belongs to one of berthd's own
//! snapshotters. Anything else is mounted on a temporary directory and applied through the mount.

use super::{namespace, reply, RpcResult, State};
use crate::blocking::blocking;
use crate::snapshots::from_api_mounts;
use berth_api::containerd::events::ContentCreate;
use berth_api::containerd::services::diff::v1::{diff_server::Diff, *};
use berth_api::containerd::types::Descriptor;
use berth_content::Writer;
use berth_errdefs::{Error, Result};
use berth_layer::{
    apply_layer_with_parents, compute_layer, compute_layer_with_epoch, Applied, Limits, Whiteouts,
};
use berth_oci::Digest;
use berth_snapshotter::Mount;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::Request;

/// What Apply reports: the layer as it now exists, uncompressed.
const APPLIED_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

pub struct DiffService {
    pub state: Arc<State>,
    /// Where berthd's own snapshotters keep layers: only there may Apply write directly.
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

impl DiffService {
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

/// ApplyRequest.sync_fs: flush the filesystem holding `dir` (syncfs(2), as containerd does), so
/// the applied files are on disk before the reply, not only at the snapshot's commit.
fn sync_filesystem(dir: &Path) -> Result<()> {
    let d =
        std::fs::File::open(dir).map_err(|e| Error::io(format!("open {}", dir.display()), e))?;
    rustix::fs::syncfs(&d).map_err(|e| Error::io(format!("syncfs {}", dir.display()), e.into()))
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(&self, req: Request<ApplyRequest>) -> RpcResult<ApplyResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let desc = req
            .diff
            .ok_or_else(|| Error::invalid("diff descriptor must be set"))?;
        let digest = Digest::parse(&desc.digest)?;
        let info = self.state.meta.content_info(&ns, &digest)?;
        if desc.size > 0 && desc.size != info.size {
            return Err(Error::invalid(format!(
                "descriptor size {} does not match content {digest} of size {}",
                desc.size, info.size
            ))
            .into());
        }
        if req.mounts.is_empty() {
            return Err(Error::invalid("no mounts to apply the layer to").into());
        }
        let (content, blob_digest) = (self.state.content.clone(), digest.clone());
        let plan = self.plan(from_api_mounts(req.mounts));
        let sync_fs = req.sync_fs;
        let (limits, mounts_dir, media_type) = (
            self.limits.clone(),
            self.mounts_dir.clone(),
            desc.media_type.clone(),
        );
        let started = std::time::Instant::now();
        let applied: Applied = blocking(move || {
            let blob = content.open_blob(&blob_digest)?;
            let blob = std::io::BufReader::with_capacity(1 << 20, blob);
            match plan {
                Plan::Direct {
                    target,
                    parents,
                    whiteouts,
                } => {
                    let parents: Vec<&Path> = parents.iter().map(PathBuf::as_path).collect();
                    let applied = apply_layer_with_parents(
                        blob,
                        &media_type,
                        &target,
                        &parents,
                        whiteouts,
                        &limits,
                    )?;
                    if sync_fs {
                        sync_filesystem(&target)?;
                    }
                    Ok(applied)
                }
                Plan::Mounted(mounts) => with_mounted(&mounts_dir, &mounts, |dir| {
                    let applied = apply_layer_with_parents(
                        blob,
                        &media_type,
                        dir,
                        &[],
                        Whiteouts::Native,
                        &limits,
                    )?;
                    // Before the unmount: syncfs reaches the mounted filesystem through `dir`.
                    if sync_fs {
                        sync_filesystem(dir)?;
                    }
                    Ok(applied)
                }),
            }
        })
        .await?;
        tracing::debug!(%digest, diff_id = %applied.diff_id, bytes = applied.size, elapsed_ms = started.elapsed().as_millis() as u64, "layer applied");
        reply(ApplyResponse {
            applied: Some(Descriptor {
                media_type: APPLIED_MEDIA_TYPE.into(),
                digest: applied.diff_id.to_string(),
                size: applied.size as i64,
                annotations: HashMap::new(),
            }),
        })
    }

    async fn diff(&self, req: Request<DiffRequest>) -> RpcResult<DiffResponse> {
        let ns = namespace(&req)?;
        let lease = super::lease(&req)?;
        let req = req.into_inner();
        let gzip = match req.media_type.as_str() {
            "" | "application/vnd.oci.image.layer.v1.tar+gzip" => true,
            "application/vnd.oci.image.layer.v1.tar" => false,
            other => {
                return Err(Error::unimplemented(format!(
                    "unsupported diff media type {other:?} (berthd writes tar and tar+gzip layers)"
                ))
                .into())
            }
        };
        let media_type = if gzip {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        berth_metadata::validate::labels(&req.labels)?;
        let r#ref = if req.r#ref.is_empty() {
            format!("diff-{}", uuid::Uuid::new_v4())
        } else {
            req.r#ref.clone()
        };
        let (content, ingest) = (self.state.content.clone(), format!("{ns}/{ref}"));
        let (left, right) = (from_api_mounts(req.left), from_api_mounts(req.right));
        let mounts_dir = self.mounts_dir.clone();
        let epoch = req.source_date_epoch.map(|t| t.seconds);
        let (digest, size, diff_id) = blocking(move || {
            // Opening the ingest may wait out another writer's lock and re-hash a resumed one.
            let writer = content.writer(&ingest, 0, None)?;
            with_mounted(&mounts_dir, &left, |lower| {
                with_mounted(&mounts_dir, &right, |upper| {
                    let mut sink = IngestSink { writer, offset: 0 };
                    let (digest, size, diff_id) = match epoch {
                        Some(epoch) => {
                            compute_layer_with_epoch(lower, upper, gzip, epoch, &mut sink)?
                        }
                        None => compute_layer(lower, upper, gzip, &mut sink)?,
                    };
                    let committed = sink.writer.commit(size as i64, Some(&digest))?;
                    Ok((committed.digest, size, diff_id))
                })
            })
        })
        .await?;
        let mut labels = req.labels;
        labels.insert(UNCOMPRESSED_LABEL.into(), diff_id.to_string());
        match self
            .state
            .meta
            .add_content(&ns, &digest, size as i64, labels, lease.as_deref())
            .await
        {
            // As a blob committed through the content service: containerd 2 announces it.
            Ok(_) => self.state.events.publish(
                &ns,
                "/content/create",
                &ContentCreate {
                    digest: digest.to_string(),
                    size: size as i64,
                    media_type: media_type.into(),
                },
            ),
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
        reply(DiffResponse {
            diff: Some(Descriptor {
                media_type: media_type.into(),
                digest: digest.to_string(),
                size: size as i64,
                annotations: HashMap::new(),
            }),
        })
    }
}

/// Bytes of a computed layer, written sequentially into a content ingest.
struct IngestSink {
    writer: Writer,
    offset: i64,
}

impl std::io::Write for IngestSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer
            .write_at(self.offset, buf)
            .map_err(std::io::Error::other)?;
        self.offset += buf.len() as i64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Mount `mounts` on a fresh directory under `dir`, run `f` on it, and always unmount.
fn with_mounted<T>(dir: &Path, mounts: &[Mount], f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
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
