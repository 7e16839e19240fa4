//! Snapshots service: any loaded snapshotter, by the name the client asks for, scoped to the
//! caller's namespace. Snapshotter calls touch the filesystem, so they run on blocking threads.

use super::{lease, mask_paths, namespace, reply, RpcResult, State};
use crate::blocking::blocking;
use crate::snapshots::{to_api_mounts, Scoped};
use berth_api::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use berth_api::containerd::services::leases::v1::Resource;
use berth_api::containerd::services::snapshots::v1::{snapshots_server::Snapshots, *};
use berth_errdefs::{Error, Result};
use berth_metadata::filters::{label_field, Adaptor, Filter};
use berth_metadata::Pending;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct SnapshotsService(pub Arc<State>);

/// Infos per List message, as containerd batches them.
const LIST_BATCH: usize = 100;

fn to_api_info(i: berth_snapshotter::Info) -> Info {
    Info {
        name: i.name,
        parent: i.parent,
        kind: match i.kind {
            berth_snapshotter::Kind::View => Kind::View,
            berth_snapshotter::Kind::Active => Kind::Active,
            berth_snapshotter::Kind::Committed => Kind::Committed,
        } as i32,
        created_at: Some(i.created.into()),
        updated_at: Some(i.updated.into()),
        labels: i.labels,
    }
}

impl SnapshotsService {
    fn scoped<T>(&self, req: &Request<T>, snapshotter: &str) -> Result<(String, Scoped)> {
        let ns = namespace(req)?;
        let scoped = self.0.snapshotters.scoped(snapshotter, &ns)?;
        Ok((ns, scoped))
    }

    /// Runs a snapshotter call that creates `key` under the client's lease, if it names one.
    /// The lease holds the snapshot before the call starts (the collector never sees it
    /// unreferenced); the lease's flush and the snapshotter's own run side by side, and the call
    /// is answered once both are durable.
    async fn under_lease<T: Send + 'static>(
        &self,
        ns: &str,
        lease: Option<String>,
        snapshotter: &str,
        key: &str,
        call: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pending = match lease {
            Some(lease) => {
                let resource = Resource {
                    id: key.to_string(),
                    r#type: format!("snapshots/{snapshotter}"),
                };
                self.0.meta.stage_lease_resource(ns, &lease, &resource)?
            }
            None => Pending::none(&self.0.meta),
        };
        let (durable, out) = tokio::join!(pending.durable(), blocking(call));
        durable?;
        out
    }
}

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> RpcResult<PrepareSnapshotResponse> {
        let (ns, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        let lease_id = lease(&req)?;
        let r = req.into_inner();
        berth_metadata::validate::labels(&r.labels)?;
        let (key, parent) = (r.key.clone(), r.parent.clone());
        // Held until the snapshot exists: a namespace deletion cannot check for snapshots in between.
        let _creating = self.0.snapshotters.namespace_guard(&ns).read_owned().await;
        self.0.meta.touch_namespace(&ns).await?;
        let snapshotter = r.snapshotter.clone();
        let mounts = self
            .under_lease(&ns, lease_id, &snapshotter, &key, move || {
                s.prepare(&r.key, &r.parent, r.labels)
            })
            .await?;
        self.0.events.publish(
            &ns,
            "/snapshot/prepare",
            &SnapshotPrepare {
                key,
                parent,
                snapshotter,
            },
        );
        reply(PrepareSnapshotResponse {
            mounts: to_api_mounts(mounts),
        })
    }

    async fn view(&self, req: Request<ViewSnapshotRequest>) -> RpcResult<ViewSnapshotResponse> {
        let (ns, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        let lease_id = lease(&req)?;
        let r = req.into_inner();
        berth_metadata::validate::labels(&r.labels)?;
        let key = r.key.clone();
        // Held until the snapshot exists: a namespace deletion cannot check for snapshots in between.
        let _creating = self.0.snapshotters.namespace_guard(&ns).read_owned().await;
        self.0.meta.touch_namespace(&ns).await?;
        let snapshotter = r.snapshotter.clone();
        let mounts = self
            .under_lease(&ns, lease_id, &snapshotter, &key, move || {
                s.view(&r.key, &r.parent, r.labels)
            })
            .await?;
        reply(ViewSnapshotResponse {
            mounts: to_api_mounts(mounts),
        })
    }

    async fn mounts(&self, req: Request<MountsRequest>) -> RpcResult<MountsResponse> {
        let (_, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        let key = req.into_inner().key;
        let mounts = blocking(move || s.mounts(&key)).await?;
        reply(MountsResponse {
            mounts: to_api_mounts(mounts),
        })
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> RpcResult<()> {
        let (ns, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        let lease_id = lease(&req)?;
        let r = req.into_inner();
        berth_metadata::validate::labels(&r.labels)?;
        let (key, name) = (r.key.clone(), r.name.clone());
        let snapshotter = r.snapshotter.clone();
        self.under_lease(&ns, lease_id, &snapshotter, &name, move || {
            // containerd 2's commit may name the parent: the active snapshot's own parent is a
            // no-op; giving a parentless snapshot one is a rebase, which berth's snapshotters
            // cannot do (a parentless overlay snapshot is a bind mount, so a layer applied there
            // loses its whiteouts). They do not advertise the "rebase" capability, so containerd
            // 2's unpacker never asks.
            if !r.parent.is_empty() {
                let active = s.stat(&r.key)?;
                if active.parent.is_empty() {
                    return Err(Error::unimplemented(format!(
                        "commit {:?} onto parent {:?}: rebasing a snapshot on commit is not \
                         supported by berth's snapshotters (no \"rebase\" capability)",
                        r.key, r.parent
                    )));
                }
                if active.parent != r.parent {
                    return Err(Error::invalid(format!(
                        "cannot change parent of active snapshot {:?} on commit",
                        r.key
                    )));
                }
            }
            s.commit(&r.name, &r.key, r.labels)
        })
        .await?;
        self.0.events.publish(
            &ns,
            "/snapshot/commit",
            &SnapshotCommit {
                key,
                name,
                snapshotter,
            },
        );
        reply(())
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> RpcResult<()> {
        let (ns, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        let RemoveSnapshotRequest { snapshotter, key } = req.into_inner();
        let k = key.clone();
        blocking(move || s.remove(&k)).await?;
        self.0.events.publish(
            &ns,
            "/snapshot/remove",
            &SnapshotRemove { key, snapshotter },
        );
        reply(())
    }

    async fn stat(&self, req: Request<StatSnapshotRequest>) -> RpcResult<StatSnapshotResponse> {
        let (_, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        let key = req.into_inner().key;
        let info = blocking(move || s.stat(&key)).await?;
        reply(StatSnapshotResponse {
            info: Some(to_api_info(info)),
        })
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> RpcResult<UpdateSnapshotResponse> {
        let (_, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        let r = req.into_inner();
        let info = r.info.ok_or_else(|| Error::invalid("info must be set"))?;
        berth_metadata::validate::labels(&info.labels)?;
        let paths = mask_paths(r.update_mask);
        let updated = blocking(move || {
            // Only labels may change; the rest of the info is taken from the snapshot itself.
            let mut current = s.stat(&info.name)?;
            current.labels = info.labels;
            s.update(current, &paths)
        })
        .await?;
        reply(UpdateSnapshotResponse {
            info: Some(to_api_info(updated)),
        })
    }

    type ListStream = Pin<Box<dyn Stream<Item = Result<ListSnapshotsResponse, Status>> + Send>>;

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let (_, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        let infos = blocking(move || s.list()).await?;
        let infos: Vec<Info> = infos
            .into_iter()
            .map(to_api_info)
            .filter(|i| filter.matches(&InfoFields(i)))
            .collect();
        let batches: Vec<_> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> RpcResult<UsageResponse> {
        let (_, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        let key = req.into_inner().key;
        let usage = blocking(move || s.usage(&key)).await?;
        reply(UsageResponse {
            size: usage.size,
            inodes: usage.inodes,
        })
    }

    async fn cleanup(&self, req: Request<CleanupRequest>) -> RpcResult<()> {
        let (_, s) = self.scoped(&req, &req.get_ref().snapshotter)?;
        blocking(move || s.cleanup()).await?;
        reply(())
    }
}

struct InfoFields<'a>(&'a Info);

impl Adaptor for InfoFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        let i = self.0;
        match path {
            ["name"] => Some(i.name.clone()),
            ["parent"] => Some(i.parent.clone()),
            ["kind"] => Kind::try_from(i.kind)
                .ok()
                .map(|k| k.as_str_name().to_lowercase()),
            ["labels", ..] => label_field(&i.labels, path),
            _ => None,
        }
    }
}
