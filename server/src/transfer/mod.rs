//! The Transfer service's domain: moving images between a registry, the image store and client
//! streams, inside the daemon. `Transferrer::transfer` dispatches on the type URLs of the source
//! and destination (`pull.rs`: registry → image store; `push.rs`: image store → registry;
//! `tag.rs`: image store → image store; `archive.rs`: import/export streams), runs the whole
//! transfer under the caller's lease or a temporary one, and reports progress in containerd's
//! vocabulary on the client's progress stream.
//!
//! **Invariant:** no gRPC here (the service in `services/transfer.rs` is the only gRPC face);
//! every blob stored passed the registry client's size and digest checks and the content
//! store's commit checks, and is recorded with the `containerd.io/gc.ref.*` labels containerd's
//! image store writes, so the collector keeps what an image needs once the lease is gone.

pub mod archive;
mod auth;
mod config;
mod fetch;
mod progress;
mod pull;
mod push;
mod tag;
mod unpack;

use crate::applier::Applier;
use crate::events::Exchange;
use crate::snapshots::Snapshotters;
use crate::streams::Streams;
use berth_api::containerd::services::images::v1::{Image, ImageCreate, ImageUpdate};
use berth_api::containerd::services::leases::v1::Lease;
use berth_api::containerd::types::transfer::{
    ImageExportStream, ImageImportStream, ImageStore, OciRegistry,
};
use berth_api::{type_url, unpack_any};
use berth_content::ContentStore;
use berth_errdefs::{Error, Result};
use berth_metadata::Metadata;
use prost_types::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub use config::TransferConfig;
pub use fetch::InFlight;
pub use progress::Progress;
pub use unpack::Unpacking;

/// The `[transfer]` section's values, as the domain uses them.
#[derive(Clone, Debug)]
pub struct Settings {
    /// containerd's `config_path`: `<dir>/<host>/hosts.toml`. A request's `host_dir` wins.
    pub config_path: Option<PathBuf>,
    /// Blob downloads in flight per transfer.
    pub max_concurrent_downloads: usize,
    /// Blob uploads in flight per push.
    pub max_concurrent_uploads: usize,
    /// No byte moving for this long fails a registry request (not a wall-clock bound).
    pub progress_timeout: Duration,
    /// Largest manifest or index read.
    pub max_manifest_bytes: u64,
    /// Most layers in a manifest, and manifests in an index.
    pub max_layers: usize,
    /// Follow foreign layer URLs (off by default, as containerd since CVE-2020-15157).
    pub allow_foreign_urls: bool,
    /// Apply a pull's layers side by side where the snapshotter can rebase (`unpack.rs`).
    pub parallel_unpack: bool,
    /// docker's config.json to read credentials from, if any.
    pub docker_config: Option<PathBuf>,
    /// `berth login`'s store.
    pub login_store: Option<PathBuf>,
    /// The snapshotter an unpack without one uses.
    pub default_snapshotter: String,
}

/// Everything a transfer touches. Cheap to share.
pub struct Transferrer {
    pub meta: Arc<Metadata>,
    pub content: Arc<ContentStore>,
    pub snapshotters: Snapshotters,
    pub events: Exchange,
    pub streams: Streams,
    pub applier: Applier,
    pub settings: Settings,
    /// Daemon-wide bound on blob downloads, shared by every transfer's registry client.
    pub downloads: Arc<Semaphore>,
    /// Daemon-wide: registry clients' HTTP clients, with their idle connections.
    pub http: berth_registry::HttpClients,
    pub inflight: InFlight,
    /// Daemon-wide: one unpack of a chain at a time.
    pub unpacking: Unpacking,
}

/// One transfer call as the service hands it over.
pub struct Request {
    pub namespace: String,
    /// The caller's lease (`containerd-lease`), if it holds one.
    pub lease: Option<String>,
    pub source: Any,
    pub destination: Any,
    /// Id of the client's progress stream, if it opened one.
    pub progress_stream: Option<String>,
}

/// What one running transfer works in.
pub(crate) struct Ctx {
    pub ns: String,
    /// The lease everything new joins (the caller's or the temporary one).
    pub lease: String,
    pub progress: Progress,
}

/// How a temporary lease's expiry label is written (containerd's RFC 3339).
const TEMP_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

fn kind_of(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or(&any.type_url)
}

impl Transferrer {
    /// Run one transfer to its end. Unknown pairs are Unimplemented, naming the pair.
    pub async fn transfer(&self, req: Request) -> Result<()> {
        let (src, dst) = (kind_of(&req.source), kind_of(&req.destination));
        let registry = type_url::<OciRegistry>();
        let store = type_url::<ImageStore>();
        let import = type_url::<ImageImportStream>();
        let export = type_url::<ImageExportStream>();
        enum Op {
            Pull(OciRegistry, ImageStore),
            Push(ImageStore, OciRegistry),
            Tag(ImageStore, ImageStore),
            Import(ImageImportStream, ImageStore),
            Export(ImageStore, ImageExportStream),
        }
        let decode =
            |what: &str, e: berth_api::UnpackError| Error::invalid(format!("transfer {what}: {e}"));
        let op = if src == registry && dst == store {
            Op::Pull(
                unpack_any(&req.source).map_err(|e| decode("source", e))?,
                unpack_any(&req.destination).map_err(|e| decode("destination", e))?,
            )
        } else if src == store && dst == registry {
            Op::Push(
                unpack_any(&req.source).map_err(|e| decode("source", e))?,
                unpack_any(&req.destination).map_err(|e| decode("destination", e))?,
            )
        } else if src == store && dst == store {
            Op::Tag(
                unpack_any(&req.source).map_err(|e| decode("source", e))?,
                unpack_any(&req.destination).map_err(|e| decode("destination", e))?,
            )
        } else if src == import && dst == store {
            Op::Import(
                unpack_any(&req.source).map_err(|e| decode("source", e))?,
                unpack_any(&req.destination).map_err(|e| decode("destination", e))?,
            )
        } else if src == store && dst == export {
            Op::Export(
                unpack_any(&req.source).map_err(|e| decode("source", e))?,
                unpack_any(&req.destination).map_err(|e| decode("destination", e))?,
            )
        } else {
            return Err(Error::unimplemented(format!(
                "transfer from {src:?} to {dst:?} is not supported (berthd transfers \
                 {registry} -> {store} (pull), {store} -> {registry} (push), {store} -> {store} \
                 (tag), {import} -> {store} (import), {store} -> {export} (export))"
            )));
        };
        // A stream the client named must exist before anything else happens.
        let progress = match &req.progress_stream {
            Some(id) => Progress::new(Some(self.streams.take(id)?)),
            None => Progress::new(None),
        };
        let (lease, temporary) = match &req.lease {
            Some(l) => (l.clone(), false),
            None => (self.temporary_lease(&req.namespace)?, true),
        };
        let ctx = Ctx {
            ns: req.namespace.clone(),
            lease,
            progress,
        };
        let result = match op {
            Op::Pull(s, d) => pull::pull(self, &ctx, s, d).await,
            Op::Push(s, d) => push::push(self, &ctx, s, d).await,
            Op::Tag(s, d) => tag::tag(self, &ctx, s, d).await,
            Op::Import(s, d) => archive::import(self, &ctx, s, d).await,
            Op::Export(s, d) => archive::export(self, &ctx, s, d).await,
        };
        // The transfer's records were staged as it went (content records, lease references):
        // one sync makes them durable before the answer, instead of one per record (none when
        // its last write, the image record, already synced them).
        let result = match result {
            Ok(()) => self.meta.sync_applied().await,
            Err(e) => Err(e),
        };
        if temporary {
            // Not waited for: it is durable with the next sync, and a crash before that only
            // leaves the lease to expire.
            if let Err(e) = self.meta.stage_lease_delete(&ctx.ns, &ctx.lease) {
                tracing::warn!(lease = %ctx.lease, error = %e, "could not delete a transfer's lease; it expires");
            }
        }
        ctx.progress.close().await;
        result
    }

    /// A lease for a transfer whose caller holds none, removed at its end; it expires on its
    /// own should the daemon die first.
    fn temporary_lease(&self, ns: &str) -> Result<String> {
        let expire = time::OffsetDateTime::now_utc() + TEMP_LEASE_TTL;
        let expire = expire
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| Error::internal(format!("format lease expiry: {e}")))?;
        let lease = Lease {
            id: format!("transfer-{}", uuid::Uuid::new_v4()),
            created_at: None,
            labels: [(berth_metadata::leases::EXPIRE_LABEL.to_string(), expire)].into(),
        };
        // Staged: the collector sees it at once, and the transfer's closing sync makes it durable.
        let (lease, _pending) = self.meta.stage_lease(ns, lease)?;
        Ok(lease.id)
    }

    /// Create an image record, or update it if the name exists (containerd's image store
    /// does the same), publishing the matching event.
    pub(crate) async fn put_image(&self, ns: &str, image: Image) -> Result<Image> {
        match self.meta.create_image(ns, image.clone()).await {
            Ok(created) => {
                self.events.publish(
                    ns,
                    "/images/create",
                    &ImageCreate {
                        name: created.name.clone(),
                        labels: created.labels.clone(),
                    },
                );
                Ok(created)
            }
            Err(e) if e.is_already_exists() => {
                let updated = self
                    .meta
                    .update_image(ns, image, &["target".into(), "labels".into()])
                    .await?;
                self.events.publish(
                    ns,
                    "/images/update",
                    &ImageUpdate {
                        name: updated.name.clone(),
                        labels: updated.labels.clone(),
                    },
                );
                Ok(updated)
            }
            Err(e) => Err(e),
        }
    }
}
