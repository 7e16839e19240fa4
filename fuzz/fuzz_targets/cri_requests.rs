//! CRI requests as the kubelet sends them, decoded from protobuf and run through the CRI's
//! translations that touch nothing on the host (berth-cri's `fuzzing` module): pod security
//! and user namespaces, capabilities, arguments against an image config, resources, pull
//! credentials, grpc-timeout values. The first byte picks the request.
#![no_main]
use berth_api::runtime::v1 as cri;
use berth_cri::fuzzing;
use libfuzzer_sys::fuzz_target;
use oci_spec::image::{ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder};
use prost::Message;
use std::sync::OnceLock;

/// An image with an entrypoint and a command, so both of the CRI's override rules are used.
fn image() -> &'static ImageConfiguration {
    static IMAGE: OnceLock<ImageConfiguration> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let config = ConfigBuilder::default()
            .entrypoint(vec!["/bin/entry".to_string()])
            .cmd(vec!["serve".to_string(), "--port=80".to_string()])
            .working_dir("/srv".to_string())
            .build()
            .expect("config");
        ImageConfigurationBuilder::default()
            .config(config)
            .build()
            .expect("image configuration")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(req) = cri::RunPodSandboxRequest::decode(body) {
                fuzzing::pod_sandbox(&req.config.unwrap_or_default());
            }
        }
        1 => {
            if let Ok(req) = cri::CreateContainerRequest::decode(body) {
                fuzzing::create_container(&req, image());
            }
        }
        2 => {
            if let Ok(req) = cri::PullImageRequest::decode(body) {
                fuzzing::pull_image(&req, "");
            }
        }
        _ => {
            if let Ok(value) = std::str::from_utf8(body) {
                fuzzing::pull_image(&cri::PullImageRequest::default(), value);
            }
        }
    }
});
