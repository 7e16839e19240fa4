//! berth's OCI distribution client: references, resolve, verified fetch, push, registry auth
//! and containerd's hosts.toml. It speaks HTTP to registries and hands the caller verified byte
//! streams and parsed manifests; storing them is the caller's business.
//!
//! **Invariant:** no gRPC, no berthd types (metadata, content store): the Transfer service
//! drives this crate, never the other way round.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod hosts;
pub mod manifest;
pub mod reference;
pub mod verify;

pub use client::{
    BlobSource, Client, ClientConfig, Limits, PulledManifest, PushOptions, PushOutcome,
};
pub use credentials::{
    Anonymous, CredentialProvider, Credentials, DockerConfig, LoginStore, StaticCredentials,
};
pub use error::Error;
pub use hosts::{Capabilities, HostsConfig, RegistryHost, TlsSettings};
pub use manifest::{Descriptor, Document, Index, Manifest, Platform};
pub use reference::Reference;
pub use verify::{sha256_digest, BlobReader, Digester, Resume};
