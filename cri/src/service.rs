//! The gRPC faces: `runtime.v1` RuntimeService and ImageService over [`Cri`]. Handlers are thin;
//! errors become statuses only through berth-errdefs' one mapping.

use crate::Cri;
use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::image_service_server::{ImageService, ImageServiceServer};
use berth_api::runtime::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

type RpcResult<T> = Result<Response<T>, Status>;
type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The CRI version this server speaks, and the runtime's name in Version.
const CRI_API_VERSION: &str = "v1";
const RUNTIME_NAME: &str = "berth";

pub(crate) fn router(cri: Arc<Cri>) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(
            RuntimeServiceServer::new(Runtime(cri.clone()))
                .max_decoding_message_size(berth::MAX_MESSAGE_SIZE)
                .max_encoding_message_size(berth::MAX_MESSAGE_SIZE),
        )
        .add_service(
            ImageServiceServer::new(Images(cri.clone()))
                .max_decoding_message_size(berth::MAX_MESSAGE_SIZE)
                .max_encoding_message_size(berth::MAX_MESSAGE_SIZE),
        )
}

pub(crate) struct Runtime(Arc<Cri>);
/// The ImageService: each method delegates to `crate::images`.
pub(crate) struct Images(Arc<Cri>);

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
        let rro = crate::blocking(|| Ok(crate::spec::runtime_supports_rro())).await?;
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
                    recursive_read_only_mounts: rro,
                    user_namespaces: self.0.userns.is_ok(),
                }),
            }],
            // CreateContainer honours SupplementalGroupsPolicy=Strict (no groups from the
            // image's /etc/group) and ContainerStatus reports the user the process runs as.
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
                mount_options: false,
            }),
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
        req: Request<cri::RunPodSandboxRequest>,
    ) -> RpcResult<cri::RunPodSandboxResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("RunPodSandbox");
        Ok(Response::new(
            async {
                self.0
                    .run_pod_sandbox(req)
                    .await
                    .map(|pod_sandbox_id| cri::RunPodSandboxResponse { pod_sandbox_id })
            }
            .instrument(span)
            .await?,
        ))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> RpcResult<cri::StopPodSandboxResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("StopPodSandbox");
        Ok(Response::new(
            async {
                self.0
                    .stop_pod_sandbox(&req.pod_sandbox_id)
                    .await
                    .map(|()| cri::StopPodSandboxResponse {})
            }
            .instrument(span)
            .await?,
        ))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> RpcResult<cri::RemovePodSandboxResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("RemovePodSandbox");
        Ok(Response::new(
            async {
                self.0
                    .remove_pod_sandbox(&req.pod_sandbox_id)
                    .await
                    .map(|()| cri::RemovePodSandboxResponse {})
            }
            .instrument(span)
            .await?,
        ))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> RpcResult<cri::PodSandboxStatusResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("PodSandboxStatus");
        Ok(Response::new(
            async { self.0.pod_sandbox_status(req).await }
                .instrument(span)
                .await?,
        ))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> RpcResult<cri::ListPodSandboxResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("ListPodSandbox");
        Ok(Response::new(
            async {
                self.0
                    .list_pod_sandbox(req)
                    .await
                    .map(|items| cri::ListPodSandboxResponse { items })
            }
            .instrument(span)
            .await?,
        ))
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
        req: Request<cri::CreateContainerRequest>,
    ) -> RpcResult<cri::CreateContainerResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("CreateContainer");
        Ok(Response::new(
            async {
                self.0
                    .create_container(req)
                    .await
                    .map(|container_id| cri::CreateContainerResponse { container_id })
            }
            .instrument(span)
            .await?,
        ))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> RpcResult<cri::StartContainerResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("StartContainer");
        Ok(Response::new(
            async {
                self.0
                    .start_container(&req.container_id)
                    .await
                    .map(|()| cri::StartContainerResponse {})
            }
            .instrument(span)
            .await?,
        ))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> RpcResult<cri::StopContainerResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("StopContainer");
        Ok(Response::new(
            async {
                self.0
                    .stop_container(&req.container_id, req.timeout)
                    .await
                    .map(|()| cri::StopContainerResponse {})
            }
            .instrument(span)
            .await?,
        ))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> RpcResult<cri::RemoveContainerResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("RemoveContainer");
        Ok(Response::new(
            async {
                self.0
                    .remove_container(&req.container_id)
                    .await
                    .map(|()| cri::RemoveContainerResponse {})
            }
            .instrument(span)
            .await?,
        ))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> RpcResult<cri::ListContainersResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("ListContainers");
        Ok(Response::new(
            async {
                self.0
                    .list_containers(req)
                    .await
                    .map(|containers| cri::ListContainersResponse { containers })
            }
            .instrument(span)
            .await?,
        ))
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
        req: Request<cri::ContainerStatusRequest>,
    ) -> RpcResult<cri::ContainerStatusResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("ContainerStatus");
        Ok(Response::new(
            async { self.0.container_status(req).await }
                .instrument(span)
                .await?,
        ))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> RpcResult<cri::UpdateContainerResourcesResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("UpdateContainerResources");
        Ok(Response::new(
            async {
                self.0
                    .update_container_resources(req)
                    .await
                    .map(|()| cri::UpdateContainerResourcesResponse {})
            }
            .instrument(span)
            .await?,
        ))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> RpcResult<cri::ReopenContainerLogResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("ReopenContainerLog");
        Ok(Response::new(
            async {
                self.0
                    .reopen_container_log(&req.container_id)
                    .await
                    .map(|()| cri::ReopenContainerLogResponse {})
            }
            .instrument(span)
            .await?,
        ))
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> RpcResult<cri::ExecSyncResponse> {
        let req = req.into_inner();
        let span = tracing::info_span!("ExecSync");
        Ok(Response::new(
            async { self.0.exec_sync(req).await }
                .instrument(span)
                .await?,
        ))
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
    #[tracing::instrument(name = "cri.ListImages", skip_all)]
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> RpcResult<cri::ListImagesResponse> {
        let images = self.0.list_images(req.into_inner().filter).await?;
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    type StreamImagesStream = Stream<cri::StreamImagesResponse>;
    #[tracing::instrument(name = "cri.StreamImages", skip_all)]
    async fn stream_images(
        &self,
        req: Request<cri::StreamImagesRequest>,
    ) -> RpcResult<Self::StreamImagesStream> {
        let images = self.0.list_images(req.into_inner().filter).await?;
        let reply = Ok(cri::StreamImagesResponse { images });
        Ok(Response::new(Box::pin(tokio_stream::iter([reply]))))
    }

    #[tracing::instrument(name = "cri.ImageStatus", skip_all)]
    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> RpcResult<cri::ImageStatusResponse> {
        let req = req.into_inner();
        Ok(Response::new(
            self.0.image_status(req.image, req.verbose).await?,
        ))
    }

    // The request carries registry secrets: it is never logged, only its image.
    #[tracing::instrument(name = "cri.PullImage", skip_all)]
    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> RpcResult<cri::PullImageResponse> {
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::images::grpc_timeout)
            .map(|t| (tokio::time::Instant::now(), t));
        let req = req.into_inner();
        let image_ref = self.0.pull_image(req.image, req.auth, deadline).await?;
        Ok(Response::new(cri::PullImageResponse { image_ref }))
    }

    #[tracing::instrument(name = "cri.RemoveImage", skip_all)]
    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> RpcResult<cri::RemoveImageResponse> {
        self.0.remove_image(req.into_inner().image).await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    #[tracing::instrument(name = "cri.ImageFsInfo", skip_all)]
    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> RpcResult<cri::ImageFsInfoResponse> {
        Ok(Response::new(self.0.image_fs_info().await?))
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
