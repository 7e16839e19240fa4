//! Descriptors, manifests, indexes and image configs as a registry or an archive serves them:
//! parsed under every media type, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

const TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.image.config.v1+json",
    "",
];

fuzz_target!(|data: &[u8]| {
    let digest = berth_oci::Digest::parse(&format!(
        "sha256:{}",
        "0".repeat(64)
    ))
    .expect("a valid digest");
    for t in TYPES {
        let _ = berth_registry::manifest::parse_document("fuzz", t, data, 64);
        let _ = berth_archive::json::validate_media_type(data, t, &digest);
    }
});
