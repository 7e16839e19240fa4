use super::{mask_paths, namespace, reply, RpcResult, State};
use berth_api::containerd::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use berth_api::containerd::services::namespaces::v1::{namespaces_server::Namespaces, *};
use berth_errdefs::Error;
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
        let snapshotters = self.0.snapshotters.clone();
        let ns = name.clone();
        let in_use = crate::blocking::blocking(move || snapshotters.namespace_in_use(&ns)).await?;
        if in_use {
            return Err(Error::precondition(format!(
                "namespace {name:?} must be empty, but it still has snapshots"
            ))
            .into());
        }
        self.0.meta.delete_namespace(&name).await?;
        self.0.events.publish(
            &name,
            "/namespaces/delete",
            &NamespaceDelete { name: name.clone() },
        );
        reply(())
    }
}
