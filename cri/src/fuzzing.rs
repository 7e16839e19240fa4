//! What the fuzz targets (fuzz/, feature `fuzzing`) reach: every translation of a decoded CRI
//! request that neither reads nor writes host paths. An error is an answer; a panic is a bug.

use crate::{images, spec};
use berth_api::runtime::v1 as cri;
use berth_snapshotter::idmap::IdMap;
use oci_spec::image::ImageConfiguration;

/// A RunPodSandbox config: its security context and its user namespace, whose maps must print
/// in a form that parses back to the same ranges.
pub fn pod_sandbox(pod: &cri::PodSandboxConfig) {
    let _ = spec::pod_security(pod);
    if let Ok(Some(userns)) = spec::pod_userns(pod) {
        for (map, range) in [
            (userns.uid_map(), userns.uid),
            (userns.gid_map(), userns.gid),
        ] {
            let parsed = IdMap::parse(&map).expect("a checked pod map prints parseable");
            assert_eq!(parsed.0, vec![range], "{map}");
        }
    }
}

/// A CreateContainer request against an image config: capabilities, the process's arguments,
/// the resources, and its pod's config.
pub fn create_container(req: &cri::CreateContainerRequest, image: &ImageConfiguration) {
    let config = req.config.clone().unwrap_or_default();
    let sc = spec::security(&config);
    let _ = spec::capabilities(sc.privileged, sc.capabilities.as_ref());
    let _ = spec::args(image, &config);
    if let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        let _ = spec::resources(r);
    }
    pod_sandbox(&req.sandbox_config.clone().unwrap_or_default());
}

/// A PullImage request's credentials, and a `grpc-timeout` header value.
pub fn pull_image(req: &cri::PullImageRequest, grpc_timeout: &str) {
    if let Some(auth) = &req.auth {
        let _ = images::registry_auth(auth);
    }
    let _ = images::grpc_timeout(grpc_timeout);
}
