//! Push: ImageStore → OCIRegistry. Every blob of the image the namespace holds goes up first
//! (nothing when the registry has it, a cross-repository mount when a
//! `containerd.io/distribution.source.<host>` label names another repository of the same
//! registry, else an upload the registry client checks against the descriptor), then the
//! manifests by digest, then the root under the reference's tag.

use super::fetch::api_descriptor;
use super::{pull, Ctx, Transferrer};
use crate::blocking::blocking;
use berth_api::containerd::types::transfer::{ImageStore, OciRegistry};
use berth_errdefs::{Error, Result};
use berth_oci::Digest;
use berth_registry::manifest::{is_index, is_manifest, parse_document};
use berth_registry::{
    BlobSource, Client, Descriptor, Document, PushOptions, PushOutcome, Reference,
};
use bytes::Bytes;
use std::io::Read;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Largest manifest or index read from the content store for a push.
const MAX_DOCUMENT: i64 = 4 << 20;
const READ_CHUNK: usize = 1 << 20;

fn describe(r: &OciRegistry) -> String {
    format!("OCI Registry ({})", r.reference)
}

pub(super) async fn push(
    t: &Transferrer,
    ctx: &Ctx,
    src: ImageStore,
    dst: OciRegistry,
) -> Result<()> {
    if src.name.is_empty() {
        return Err(Error::invalid("the source image store names no image"));
    }
    let image = t.meta.get_image(&ctx.ns, &src.name)?;
    let target = image
        .target
        .clone()
        .ok_or_else(|| Error::precondition(format!("image {:?} has no target", src.name)))?;
    let reference = Reference::parse(&dst.reference)?;
    let client = pull::client(t, &dst.reference, dst.resolver.as_ref())?;
    ctx.progress
        .note(format!("Pushing to {}", describe(&dst)))
        .await;
    ctx.progress
        .named("pushing content", &image.name, Some(target.clone()))
        .await;
    let p = Pusher {
        t,
        ctx,
        client: &client,
        reference: &reference,
        platforms: src.platforms.iter().map(pull::platform).collect(),
    };
    let root = Descriptor::new(
        &target.media_type,
        &target.digest,
        target.size.max(0) as u64,
    );
    let bytes = p.document(&root).await?;
    p.push_children(&root, &bytes).await?;
    client
        .push_manifest(&reference, &root.media_type, bytes)
        .await?;
    ctx.progress
        .named("pushed content", &image.name, Some(target.clone()))
        .await;
    ctx.progress
        .send(berth_api::containerd::types::transfer::Progress {
            event: format!("Completed push to {}", describe(&dst)),
            desc: Some(target),
            ..Default::default()
        })
        .await;
    Ok(())
}

struct Pusher<'a> {
    t: &'a Transferrer,
    ctx: &'a Ctx,
    client: &'a Client,
    reference: &'a Reference,
    platforms: Vec<berth_registry::Platform>,
}

impl Pusher<'_> {
    /// A manifest or index from the content store, bounded.
    async fn document(&self, desc: &Descriptor) -> Result<Bytes> {
        let digest = Digest::parse(&desc.digest)?;
        let info = self.t.meta.content_info(&self.ctx.ns, &digest)?;
        if info.size > MAX_DOCUMENT {
            return Err(Error::invalid(format!(
                "{} is {} bytes, more than a manifest may be",
                desc.digest, info.size
            )));
        }
        let content = self.t.content.clone();
        let bytes = blocking(move || {
            let mut f = content.open_blob(&digest)?;
            let mut out = Vec::new();
            f.read_to_end(&mut out)
                .map_err(|e| Error::io(format!("read {digest}"), e))?;
            Ok(out)
        })
        .await?;
        Ok(Bytes::from(bytes))
    }

    /// Everything below a manifest or index, children before parents.
    async fn push_children(&self, desc: &Descriptor, bytes: &Bytes) -> Result<()> {
        let doc = parse_document(&desc.digest, &desc.media_type, bytes, usize::MAX)?;
        match doc {
            Document::Manifest(m) => {
                // The config and layers go up side by side, bounded (containerd pushes them
                // concurrently too); the manifest only after all of them.
                let uploads =
                    tokio::sync::Semaphore::new(self.t.settings.max_concurrent_uploads.max(1));
                let pushes: Vec<_> = std::iter::once(&m.config)
                    .chain(&m.layers)
                    .map(|d| {
                        let uploads = &uploads;
                        async move {
                            let _slot = uploads
                                .acquire()
                                .await
                                .map_err(|_| Error::internal("the upload bound closed"))?;
                            self.push_blob(d).await
                        }
                    })
                    .collect();
                futures_util::future::try_join_all(pushes).await?;
            }
            Document::Index(index) => {
                for d in &index.manifests {
                    if !is_manifest(&d.media_type) && !is_index(&d.media_type) {
                        self.push_blob(d).await?;
                        continue;
                    }
                    let wanted = self.platforms.is_empty()
                        || d.platform
                            .as_ref()
                            .is_some_and(|p| self.platforms.iter().any(|w| w.matches(p)));
                    let held = self
                        .t
                        .meta
                        .has_content(&self.ctx.ns, &Digest::parse(&d.digest)?)?;
                    if !wanted || !held {
                        // Not pulled here (another platform): the registry has it or the
                        // index cannot be pushed whole; containerd pushes what it holds too.
                        continue;
                    }
                    let child = self.document(d).await?;
                    Box::pin(self.push_children(d, &child)).await?;
                    let by_digest = self.reference.with_digest(&d.digest)?;
                    self.client
                        .push_manifest(&by_digest, &d.media_type, child)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn push_blob(&self, desc: &Descriptor) -> Result<()> {
        let digest = Digest::parse(&desc.digest)?;
        let info = self.t.meta.content_info(&self.ctx.ns, &digest)?;
        let api = api_descriptor(desc);
        let size = desc.size as i64;
        // Repositories of the same registry the blob came from: a mount saves the upload.
        let prefix = pull::distribution_source_key(self.reference.domain());
        let mount_from: Vec<String> = info
            .labels
            .iter()
            .filter(|(k, _)| **k == prefix)
            .flat_map(|(_, v)| v.split(',').map(str::to_string))
            .filter(|r| r != self.reference.repository())
            .collect();
        self.ctx
            .progress
            .blob("uploading", &api, &[], 0, size)
            .await;
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let content = self.t.content.clone();
        let d = digest.clone();
        tokio::spawn(blocking(move || {
            let mut f = match content.open_blob(&d) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return Ok(());
                }
            };
            loop {
                let mut buf = vec![0u8; READ_CHUNK];
                match f.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return Ok(());
                    }
                }
            }
        }));
        let outcome = self
            .client
            .push_blob(
                self.reference,
                desc,
                BlobSource::Stream(Box::pin(ReceiverStream::new(rx))),
                &PushOptions {
                    mount_from,
                    chunk_size: None,
                },
            )
            .await?;
        let event = match outcome {
            PushOutcome::Exists | PushOutcome::Mounted => "already exists",
            PushOutcome::Uploaded => "complete",
        };
        self.ctx.progress.blob(event, &api, &[], size, size).await;
        Ok(())
    }
}
