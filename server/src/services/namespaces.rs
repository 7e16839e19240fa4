use super::{mask_paths, namespace, reply, RpcResult, State};
use crate::blocking::blocking;
use crate::snapshots::Snapshotters;
use berth_api::containerd::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use berth_api::containerd::services::namespaces::v1::{namespaces_server::Namespaces, *};
use berth_errdefs::{Error, Result};
use berth_metadata::Metadata;
use std::sync::Arc;
use tonic::Request;

pub struct NamespacesService(pub Arc<State>);

#[tonic::async_trait]
impl Namespaces for NamespacesService {
    async fn get(&self, req: Request<GetNamespaceRequest>) -> RpcResult<GetNamespaceResponse> {
        let ns = self.0.meta.get_namespace(&req.get_ref().name)?;
        reply(GetNamespaceResponse {
            namespace: Some(ns),
        })
    }

    async fn list(&self, _: Request<ListNamespacesRequest>) -> RpcResult<ListNamespacesResponse> {
        reply(ListNamespacesResponse {
            namespaces: self.0.meta.list_namespaces()?,
        })
    }

    async fn create(
        &self,
        req: Request<CreateNamespaceRequest>,
    ) -> RpcResult<CreateNamespaceResponse> {
        let caller = namespace(&req).unwrap_or_default();
        let ns = req
            .into_inner()
            .namespace
            .ok_or_else(|| Error::invalid("namespace must be set"))?;
        let ns = self.0.meta.create_namespace(ns).await?;
        self.0.events.publish(
            &caller,
            "/namespaces/create",
            &NamespaceCreate {
                name: ns.name.clone(),
                labels: ns.labels.clone(),
            },
        );
        reply(CreateNamespaceResponse {
            namespace: Some(ns),
        })
    }

    async fn update(
        &self,
        req: Request<UpdateNamespaceRequest>,
    ) -> RpcResult<UpdateNamespaceResponse> {
        let caller = namespace(&req).unwrap_or_default();
        let req = req.into_inner();
        let ns = req
            .namespace
            .ok_or_else(|| Error::invalid("namespace must be set"))?;
        let ns = self
            .0
            .meta
            .update_namespace(ns, &mask_paths(req.update_mask))
            .await?;
        self.0.events.publish(
            &caller,
            "/namespaces/update",
            &NamespaceUpdate {
                name: ns.name.clone(),
                labels: ns.labels.clone(),
            },
        );
        reply(UpdateNamespaceResponse {
            namespace: Some(ns),
        })
    }

    async fn delete(&self, req: Request<DeleteNamespaceRequest>) -> RpcResult<()> {
        let name = req.into_inner().name;
        berth_metadata::validate::identifier("namespace", &name)?;
        delete_if_empty(&self.0.meta, &self.0.snapshotters, &name).await?;
        self.0.events.publish(
            &name,
            "/namespaces/delete",
            &NamespaceDelete { name: name.clone() },
        );
        reply(())
    }
}

/// Delete namespace `name` if it holds nothing. The snapshot check and the metadata deletion run
/// under the namespace's guard held exclusive, so no Prepare or View (which hold it shared) can
/// create a snapshot between them and be orphaned.
async fn delete_if_empty(meta: &Metadata, snapshotters: &Snapshotters, name: &str) -> Result<()> {
    let _deleting = snapshotters.namespace_guard(name).write_owned().await;
    let (all, ns) = (snapshotters.clone(), name.to_string());
    if blocking(move || all.namespace_in_use(&ns)).await? {
        return Err(Error::precondition(format!(
            "namespace {name:?} must be empty, but it still has snapshots"
        )));
    }
    meta.delete_namespace(name).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_snapshotter::NativeSnapshotter;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_prepared_during_a_delete_keeps_the_namespace() {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = Arc::new(Metadata::open(&dir.path().join("meta")).expect("metadata"));
        let mut snapshotters = Snapshotters::default();
        snapshotters.insert(Arc::new(
            NativeSnapshotter::open(&dir.path().join("native")).expect("native snapshotter"),
        ));
        meta.touch_namespace("racy").await.expect("namespace");

        // A Prepare is under way: it holds the guard, the namespace exists, no snapshot yet.
        let creating = snapshotters.namespace_guard("racy").read_owned().await;
        let deletion = {
            let (meta, snapshotters) = (meta.clone(), snapshotters.clone());
            tokio::spawn(async move { delete_if_empty(&meta, &snapshotters, "racy").await })
        };
        // The deletion waits for it rather than checking now...
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !deletion.is_finished(),
            "the deletion did not wait for the Prepare"
        );
        let scoped = snapshotters.scoped("native", "racy").expect("scoped");
        tokio::task::spawn_blocking(move || scoped.prepare("k", "", Default::default()))
            .await
            .expect("join")
            .expect("prepare");
        drop(creating);
        // ...and then sees the snapshot: refused, and nothing is orphaned.
        let refused = deletion.await.expect("join");
        assert!(
            matches!(&refused, Err(e) if e.kind() == berth_errdefs::Kind::FailedPrecondition),
            "{refused:?}"
        );
        let exists = |meta: &Metadata| {
            meta.list_namespaces()
                .expect("list")
                .iter()
                .any(|n| n.name == "racy")
        };
        assert!(exists(&meta));

        // Once empty, it goes.
        snapshotters
            .scoped("native", "racy")
            .and_then(|s| s.remove("k"))
            .expect("remove");
        delete_if_empty(&meta, &snapshotters, "racy")
            .await
            .expect("delete the empty namespace");
        assert!(!exists(&meta));
    }
}
