//! berth.services.volumes.v1.Volumes (berth's own extension) over `volumes::Volumes`, in the
//! namespace of the `containerd-namespace` header.

use super::{namespace, reply, RpcResult};
use crate::volumes;
use berth_api::berth::services::volumes::v1::{volumes_server::Volumes, *};
use std::sync::Arc;

pub struct VolumesService {
    pub volumes: Arc<volumes::Volumes>,
}

fn api_volume(v: volumes::Volume) -> Volume {
    Volume {
        name: v.name,
        driver: v.driver,
        mountpoint: v.mountpoint.to_string_lossy().into_owned(),
        labels: v.labels,
        created_at: Some(prost_types::Timestamp {
            seconds: v.created_secs,
            nanos: v.created_nanos,
        }),
        anonymous: v.anonymous,
        usage: v.usage.map(|u| VolumeUsage {
            size: u.size as i64,
            ref_count: u.ref_count as i64,
        }),
    }
}

#[tonic::async_trait]
impl Volumes for VolumesService {
    async fn create(
        &self,
        req: tonic::Request<CreateVolumeRequest>,
    ) -> RpcResult<CreateVolumeResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let v = self
            .volumes
            .create(&ns, &r.name, &r.driver, r.labels)
            .await?;
        reply(CreateVolumeResponse {
            volume: Some(api_volume(v)),
        })
    }

    async fn get(&self, req: tonic::Request<GetVolumeRequest>) -> RpcResult<GetVolumeResponse> {
        let ns = namespace(&req)?;
        let v = self.volumes.get(&ns, &req.into_inner().name).await?;
        reply(GetVolumeResponse {
            volume: Some(api_volume(v)),
        })
    }

    async fn list(
        &self,
        req: tonic::Request<ListVolumesRequest>,
    ) -> RpcResult<ListVolumesResponse> {
        let ns = namespace(&req)?;
        let all = self.volumes.list(&ns, req.into_inner().usage).await?;
        reply(ListVolumesResponse {
            volumes: all.into_iter().map(api_volume).collect(),
        })
    }

    async fn remove(&self, req: tonic::Request<RemoveVolumeRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        self.volumes.remove(&ns, &req.into_inner().name).await?;
        reply(())
    }

    async fn prune(
        &self,
        req: tonic::Request<PruneVolumesRequest>,
    ) -> RpcResult<PruneVolumesResponse> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let p = self.volumes.prune(&ns, r.all, r.labels).await?;
        reply(PruneVolumesResponse {
            deleted: p.deleted,
            space_reclaimed: p.space_reclaimed as i64,
        })
    }
}
