use super::{namespace, reply, RpcResult, State};
use crate::error::Error;
use crate::filters::Filter;
use berth_api::containerd::services::leases::v1::{leases_server::Leases, *};
use std::sync::Arc;
use tonic::Request;

pub struct LeasesService(pub Arc<State>);

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(&self, req: Request<CreateRequest>) -> RpcResult<CreateResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let lease = Lease {
            id: req.id,
            created_at: None,
            labels: req.labels,
        };
        let lease = self.0.meta.create_lease(&ns, lease).await?;
        reply(CreateResponse { lease: Some(lease) })
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        self.0.meta.delete_lease(&ns, &req.get_ref().id).await?;
        reply(())
    }

    async fn list(&self, req: Request<ListRequest>) -> RpcResult<ListResponse> {
        let ns = namespace(&req)?;
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        reply(ListResponse {
            leases: self.0.meta.list_leases(&ns, &filter)?,
        })
    }

    async fn add_resource(&self, req: Request<AddResourceRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let resource = req
            .resource
            .ok_or_else(|| Error::invalid("resource must be set"))?;
        self.0
            .meta
            .add_lease_resource(&ns, &req.id, &resource)
            .await?;
        reply(())
    }

    async fn delete_resource(&self, req: Request<DeleteResourceRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let resource = req
            .resource
            .ok_or_else(|| Error::invalid("resource must be set"))?;
        self.0
            .meta
            .delete_lease_resource(&ns, &req.id, &resource)
            .await?;
        reply(())
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> RpcResult<ListResourcesResponse> {
        let ns = namespace(&req)?;
        reply(ListResourcesResponse {
            resources: self.0.meta.list_lease_resources(&ns, &req.get_ref().id)?,
        })
    }
}
