//! What berth's end-to-end tests, the bench and the demo share, so that each exists once: the
//! busybox OCI image ([`image`]), a realistic OCI spec ([`SPEC_JSON`]), a berthd on a throwaway
//! root ([`berthd`]) and honest skips ([`skip`]).
//!
//! A dev-dependency (and the bench's, which is never shipped): nothing berthd, the shim or the
//! client library ship depends on it. It uses the `berth` client crate to reach the daemon, so the
//! tests exercise that crate as well.

pub mod berthd;
pub mod cri_images;
pub mod crictl;
pub mod image;
pub mod net;
pub mod skip;

/// A `ctr run` spec of a service, ~9.5 KiB: the size and shape of what containerd's clients store
/// in container records.
pub const SPEC_JSON: &[u8] = include_bytes!("spec.json");
