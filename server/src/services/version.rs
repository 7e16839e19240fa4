use super::{reply, RpcResult};
use berth_api::containerd::services::version::v1::{version_server::Version, VersionResponse};

/// Version/Version: berth's version; the revision is the git commit it was built from, when known.
pub struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _: tonic::Request<()>) -> RpcResult<VersionResponse> {
        reply(VersionResponse {
            version: crate::VERSION.to_string(),
            revision: option_env!("BERTH_GIT_REVISION")
                .unwrap_or("unknown")
                .to_string(),
        })
    }
}
