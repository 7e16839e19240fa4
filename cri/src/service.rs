//! The gRPC faces: `runtime.v1` RuntimeService and ImageService over [`Cri`]. Handlers are thin;
//! errors become statuses only through berth-errdefs' one mapping.

use crate::Cri;
use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::image_service_server::{ImageService, ImageServiceServer};
use berth_api::runtime::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

type RpcResult<T> = Result<Response<T>, Status>;
type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The CRI version this server speaks, and the runtime's name in Version.
const CRI_API_VERSION: &str = "v1";
const RUNTIME_NAME: &str = "berth";

pub(crate) fn router(cri: Arc<Cri>) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(
            RuntimeServiceServer::new(Runtime(cri))
                .max_decoding_message_size(berth::MAX_MESSAGE_SIZE)
                .max_encoding_message_size(berth::MAX_MESSAGE_SIZE),
        )
        .add_service(
            ImageServiceServer::new(Images)
                .max_decoding_message_size(berth::MAX_MESSAGE_SIZE)
                .max_encoding_message_size(berth::MAX_MESSAGE_SIZE),
        )
}

pub(crate) struct Runtime(Arc<Cri>);
/// Images are not served yet; the service answers so rather than being absent.
pub(crate) struct Images;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not served by berth's CRI yet (issue 14)"
    ))
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(&self, _: Request<cri::VersionRequest>) -> RpcResult<cri::VersionResponse> {
        let v = self
            .0
            .client
            .version()
            .await
            .map_err(berth_errdefs::Error::from)?;
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: v.version,
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn status(&self, _: Request<cri::StatusRequest>) -> RpcResult<cri::StatusResponse> {
        let runtime_ready = self.0.client.version().await.is_ok();
        let (network_ready, reason, message) = match self.0.network_config().await {
            Ok(Some(_)) => (true, String::new(), String::new()),
            Ok(None) => (
                false,
                "NetworkPluginNotReady".to_string(),
                format!(
                    "no network config found in {}",
                    self.0.settings.config.cni_conf_dir.display()
                ),
            ),
            Err(e) => (false, "NetworkPluginNotReady".to_string(), e.to_string()),
        };
        let condition =
            |kind: &str, status: bool, reason: String, message: String| cri::RuntimeCondition {
                r#type: kind.to_string(),
                status,
                reason,
                message,
            };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![
                    condition("RuntimeReady", runtime_ready, String::new(), String::new()),
                    condition("NetworkReady", network_ready, reason, message),
                ],
            }),
            runtime_handlers: vec![cri::RuntimeHandler {
                name: String::new(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            ..Default::default()
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> RpcResult<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> RpcResult<cri::UpdateRuntimeConfigResponse> {
        // The pod CIDR is the CNI config's business (host-local ranges), as in containerd when
        // no config template is set.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        _: Request<cri::RunPodSandboxRequest>,
    ) -> RpcResult<cri::RunPodSandboxResponse> {
        Err(not_yet("RunPodSandbox"))
    }

    async fn stop_pod_sandbox(
        &self,
        _: Request<cri::StopPodSandboxRequest>,
    ) -> RpcResult<cri::StopPodSandboxResponse> {
        Err(not_yet("StopPodSandbox"))
    }

    async fn remove_pod_sandbox(
        &self,
        _: Request<cri::RemovePodSandboxRequest>,
    ) -> RpcResult<cri::RemovePodSandboxResponse> {
        Err(not_yet("RemovePodSandbox"))
    }

    async fn pod_sandbox_status(
        &self,
        _: Request<cri::PodSandboxStatusRequest>,
    ) -> RpcResult<cri::PodSandboxStatusResponse> {
        Err(not_yet("PodSandboxStatus"))
    }

    async fn list_pod_sandbox(
        &self,
        _: Request<cri::ListPodSandboxRequest>,
    ) -> RpcResult<cri::ListPodSandboxResponse> {
        Err(not_yet("ListPodSandbox"))
    }

    type StreamPodSandboxesStream = Stream<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        _: Request<cri::StreamPodSandboxesRequest>,
    ) -> RpcResult<Self::StreamPodSandboxesStream> {
        Err(not_yet("StreamPodSandboxes"))
    }

    async fn create_container(
        &self,
        _: Request<cri::CreateContainerRequest>,
    ) -> RpcResult<cri::CreateContainerResponse> {
        Err(not_yet("CreateContainer"))
    }

    async fn start_container(
        &self,
        _: Request<cri::StartContainerRequest>,
    ) -> RpcResult<cri::StartContainerResponse> {
        Err(not_yet("StartContainer"))
    }

    async fn stop_container(
        &self,
        _: Request<cri::StopContainerRequest>,
    ) -> RpcResult<cri::StopContainerResponse> {
        Err(not_yet("StopContainer"))
    }

    async fn remove_container(
        &self,
        _: Request<cri::RemoveContainerRequest>,
    ) -> RpcResult<cri::RemoveContainerResponse> {
        Err(not_yet("RemoveContainer"))
    }

    async fn list_containers(
        &self,
        _: Request<cri::ListContainersRequest>,
    ) -> RpcResult<cri::ListContainersResponse> {
        Err(not_yet("ListContainers"))
    }

    type StreamContainersStream = Stream<cri::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        _: Request<cri::StreamContainersRequest>,
    ) -> RpcResult<Self::StreamContainersStream> {
        Err(not_yet("StreamContainers"))
    }

    async fn container_status(
        &self,
        _: Request<cri::ContainerStatusRequest>,
    ) -> RpcResult<cri::ContainerStatusResponse> {
        Err(not_yet("ContainerStatus"))
    }

    async fn update_container_resources(
        &self,
        _: Request<cri::UpdateContainerResourcesRequest>,
    ) -> RpcResult<cri::UpdateContainerResourcesResponse> {
        Err(not_yet("UpdateContainerResources"))
    }

    async fn reopen_container_log(
        &self,
        _: Request<cri::ReopenContainerLogRequest>,
    ) -> RpcResult<cri::ReopenContainerLogResponse> {
        Err(not_yet("ReopenContainerLog"))
    }

    async fn exec_sync(
        &self,
        _: Request<cri::ExecSyncRequest>,
    ) -> RpcResult<cri::ExecSyncResponse> {
        Err(not_yet("ExecSync"))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn exec(&self, req: Request<cri::ExecRequest>) -> RpcResult<cri::ExecResponse> {
        let url = self.0.exec_url(req.into_inner()).await?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn attach(&self, req: Request<cri::AttachRequest>) -> RpcResult<cri::AttachResponse> {
        let url = self.0.attach_url(req.into_inner()).await?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().pod_sandbox_id))]
    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> RpcResult<cri::PortForwardResponse> {
        let url = self.0.port_forward_url(req.into_inner()).await?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().container_id))]
    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> RpcResult<cri::ContainerStatsResponse> {
        let stats = self.0.container_stats(&req.get_ref().container_id).await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> RpcResult<cri::ListContainerStatsResponse> {
        let stats = self.0.list_container_stats(req.into_inner().filter).await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    type StreamContainerStatsStream = Stream<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        _: Request<cri::StreamContainerStatsRequest>,
    ) -> RpcResult<Self::StreamContainerStatsStream> {
        Err(not_yet("StreamContainerStats"))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().pod_sandbox_id))]
    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> RpcResult<cri::PodSandboxStatsResponse> {
        let stats = self
            .0
            .pod_sandbox_stats(&req.get_ref().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> RpcResult<cri::ListPodSandboxStatsResponse> {
        let stats = self
            .0
            .list_pod_sandbox_stats(req.into_inner().filter)
            .await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    type StreamPodSandboxStatsStream = Stream<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        _: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> RpcResult<Self::StreamPodSandboxStatsStream> {
        Err(not_yet("StreamPodSandboxStats"))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> RpcResult<cri::CheckpointContainerResponse> {
        Err(not_yet("CheckpointContainer"))
    }

    async fn checkpoint_pod(
        &self,
        _: Request<cri::CheckpointPodRequest>,
    ) -> RpcResult<cri::CheckpointPodResponse> {
        Err(not_yet("CheckpointPod"))
    }

    async fn restore_pod(
        &self,
        _: Request<cri::RestorePodRequest>,
    ) -> RpcResult<cri::RestorePodResponse> {
        Err(not_yet("RestorePod"))
    }

    type GetContainerEventsStream = Stream<cri::ContainerEventResponse>;
    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> RpcResult<Self::GetContainerEventsStream> {
        Err(not_yet("GetContainerEvents"))
    }

    #[tracing::instrument(skip_all)]
    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> RpcResult<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: self.0.metric_descriptors(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> RpcResult<cri::ListPodSandboxMetricsResponse> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: self.0.pod_sandbox_metrics().await?,
        }))
    }

    type StreamPodSandboxMetricsStream = Stream<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> RpcResult<Self::StreamPodSandboxMetricsStream> {
        Err(not_yet("StreamPodSandboxMetrics"))
    }

    async fn update_pod_sandbox_resources(
        &self,
        _: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> RpcResult<cri::UpdatePodSandboxResourcesResponse> {
        Err(not_yet("UpdatePodSandboxResources"))
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        _: Request<cri::ListImagesRequest>,
    ) -> RpcResult<cri::ListImagesResponse> {
        Err(not_yet("ListImages"))
    }

    type StreamImagesStream = Stream<cri::StreamImagesResponse>;
    async fn stream_images(
        &self,
        _: Request<cri::StreamImagesRequest>,
    ) -> RpcResult<Self::StreamImagesStream> {
        Err(not_yet("StreamImages"))
    }

    async fn image_status(
        &self,
        _: Request<cri::ImageStatusRequest>,
    ) -> RpcResult<cri::ImageStatusResponse> {
        Err(not_yet("ImageStatus"))
    }

    async fn pull_image(
        &self,
        _: Request<cri::PullImageRequest>,
    ) -> RpcResult<cri::PullImageResponse> {
        Err(not_yet("PullImage"))
    }

    async fn remove_image(
        &self,
        _: Request<cri::RemoveImageRequest>,
    ) -> RpcResult<cri::RemoveImageResponse> {
        Err(not_yet("RemoveImage"))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> RpcResult<cri::ImageFsInfoResponse> {
        Err(not_yet("ImageFsInfo"))
    }
}

impl Cri {
    /// The pods' network: the first config list in `[cri] cni_conf_dir` (libcni's order).
    pub async fn network_config(&self) -> berth_errdefs::Result<Option<String>> {
        let net = self.net.clone();
        crate::blocking(move || {
            Ok(net
                .networks()
                .list()
                .map_err(berth_errdefs::Error::from)?
                .into_iter()
                .next()
                .map(|n| n.name))
        })
        .await
    }
}
