//! The OCI image vocabulary every berth crate shares: validated digests, descriptors and the
//! media types berth recognises. Pure values: no I/O, no async runtime, no gRPC.

mod digest;
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
