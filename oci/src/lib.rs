//! The OCI vocabulary every berth crate shares: validated digests, descriptors, the media types
//! berth recognises and user-namespace id maps. Pure values: no I/O, no async runtime, no gRPC.

mod digest;
pub mod idmap;
pub mod media_types;

pub use digest::Digest;

use std::collections::BTreeMap;

/// What a blob is, where to find it (its digest) and how big it is: an OCI descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}
