use super::{reply, RpcResult};
use berth_api::containerd::services::version::v1::{version_server::Version, VersionResponse};

/// Version/Version: the containerd API level with berth's version as build metadata
/// ([`crate::reported_version`]); the revision is the git commit it was built from, when known.
pub struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _: tonic::Request<()>) -> RpcResult<VersionResponse> {
        reply(VersionResponse {
            version: crate::reported_version(),
            revision: option_env!("BERTH_GIT_REVISION")
                .unwrap_or("unknown")
                .to_string(),
        })
    }
}
