//! Test inputs built here rather than downloaded: the busybox OCI image archive, which lives in
//! berth-testkit (the bench and the demo use it too). The tests name it through this module.

use std::path::Path;

// What the tests name; the rest of berth_testkit::image is theirs to import when needed.
pub use berth_testkit::image::{oci_arch, sha256, OciArchive, MANIFEST_MEDIA_TYPE};

/// `<dir>/busybox.oci.tar`, an image named `name`: see berth_testkit::image.
pub fn busybox_oci_archive(dir: &Path, name: &str) -> OciArchive {
    berth_testkit::image::busybox_oci_archive(dir, name)
        .unwrap_or_else(|e| panic!("build the busybox image: {e}"))
}
