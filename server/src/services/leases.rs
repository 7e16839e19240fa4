use super::{namespace, reply, RpcResult, State};
use berth_api::containerd::services::leases::v1::{leases_server::Leases, *};
use berth_errdefs::Error;
use berth_metadata::filters::Filter;
use std::sync::Arc;
use tonic::Request;

pub struct LeasesService(pub Arc<State>);

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(&self, req: Request<CreateRequest>) -> RpcResult<CreateResponse> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let lease = Lease {
            // Like containerd, a lease without an id gets a random one (`ctr leases create`).
            id: if req.id.is_empty() {
                random_lease_id()
            } else {
                req.id
            },
            created_at: None,
            labels: req.labels,
        };
        let lease = self.0.meta.create_lease(&ns, lease).await?;
        reply(CreateResponse { lease: Some(lease) })
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        self.0.meta.delete_lease(&ns, &req.id).await?;
        super::collect_garbage(&self.0, req.sync).await?;
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

/// containerd's random lease id shape: `<nanoseconds>-<url-safe base64 of random bytes>`.
fn random_lease_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let random = uuid::Uuid::new_v4();
    let suffix: String = random.as_bytes()[..6]
        .iter()
        .map(|b| {
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            alphabet[(b & 63) as usize] as char
        })
        .collect();
    format!("{nanos}-{suffix}")
}
