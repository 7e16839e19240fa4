//! Diff service: apply a layer blob onto a snapshot's mounts (unpack, through `crate::applier`,
//! which the Transfer service's unpack shares), and compute a layer from two sets of mounts
//! (commit of a container).

use super::{namespace, reply, RpcResult, State};
use crate::applier::{with_mounted, Applier};
use crate::blocking::blocking;
use crate::snapshots::from_api_mounts;
use berth_api::containerd::events::ContentCreate;
use berth_api::containerd::services::diff::v1::{diff_server::Diff, *};
use berth_api::containerd::types::Descriptor;
use berth_content::Writer;
use berth_errdefs::Error;
use berth_layer::{compute_layer_with, Applied, DiffOptions, LayerCompression};
use berth_oci::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::Request;

/// What Apply reports: the layer as it now exists, uncompressed.
const APPLIED_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

pub struct DiffService {
    pub state: Arc<State>,
    pub applier: Applier,
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
        let mounts = from_api_mounts(req.mounts);
        let sync_fs = req.sync_fs;
        let (applier, media_type) = (self.applier.clone(), desc.media_type.clone());
        let started = std::time::Instant::now();
        let applied: Applied = blocking(move || {
            let blob = content.open_blob(&blob_digest)?;
            let blob = std::io::BufReader::with_capacity(1 << 20, blob);
            applier.apply(blob, &media_type, mounts, sync_fs)
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
        // containerd's walking differ: empty means gzip; tar, tar+gzip and tar+zstd are written.
        let compression = if req.media_type.is_empty() {
            LayerCompression::Gzip
        } else {
            // Any other type: NotImplemented, as containerd's differ answers.
            LayerCompression::for_media_type(&req.media_type).ok_or_else(|| {
                Error::unimplemented(format!(
                    "unsupported diff media type {:?} (berthd writes {}, {} and {} layers)",
                    req.media_type,
                    LayerCompression::None.media_type(),
                    LayerCompression::Gzip.media_type(),
                    LayerCompression::Zstd.media_type(),
                ))
            })?
        };
        let media_type = compression.media_type();
        berth_metadata::validate::labels(&req.labels)?;
        let r#ref = if req.r#ref.is_empty() {
            format!("diff-{}", uuid::Uuid::new_v4())
        } else {
            req.r#ref.clone()
        };
        let (content, ingest) = (self.state.content.clone(), format!("{ns}/{ref}"));
        let (left, mut right) = (from_api_mounts(req.left), from_api_mounts(req.right));
        // A container's overlay over exactly its parent's tree: the walk visits only what its
        // upperdir names, instead of every file of the image below.
        let overlay_upperdir = berth_snapshotter::overlay_upperdir_over(&left, &right);
        // A remapped container's snapshot holds host ids: compared through the inverse maps.
        for m in &mut right {
            if let Some(view) =
                berth_snapshotter::idmap::unmapped_view(m).map_err(berth_errdefs::Error::from)?
            {
                *m = view;
            }
        }
        let mounts_dir = self.applier.mounts_dir.clone();
        let epoch = req.source_date_epoch.map(|t| t.seconds);
        let (writer, digest, size, diff_id) = blocking(move || {
            // Opening the ingest may wait out another writer's lock and re-hash a resumed one.
            let writer = content.writer(&ingest, 0, None)?;
            with_mounted(&mounts_dir, &left, |lower| {
                with_mounted(&mounts_dir, &right, |upper| {
                    let mut sink = IngestSink { writer, offset: 0 };
                    let options = DiffOptions {
                        source_date_epoch: epoch,
                        overlay_upperdir: overlay_upperdir.as_deref(),
                    };
                    let (digest, size, diff_id) =
                        compute_layer_with(lower, upper, compression, &options, &mut sink)?;
                    Ok((sink.writer, digest, size, diff_id))
                })
            })
        })
        .await?;
        let mut labels = req.labels;
        labels.insert(UNCOMPRESSED_LABEL.into(), diff_id.to_string());
        // Held from the commit to the record, as the content service's commit holds it, so the
        // collector cannot unlink the blob in between; not while the diff was computed (that
        // would stall every commit behind a waiting collector).
        let _recording = self.state.meta.content_commit_lock().await;
        let committed = blocking(move || writer.commit(size as i64, Some(&digest))).await?;
        let digest = committed.digest;
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
