//! berth: a Rust client for berthd (and any containerd v1 API server).
//!
//! ```no_run
//! # async fn demo() -> Result<(), berth::Error> {
//! let channel = berth::connect("/run/berth/berthd.sock").await?;
//! let mut version = berth::api::services::version::v1::version_client::VersionClient::new(channel);
//! let v = version.version(()).await?.into_inner();
//! println!("{}", v.version);
//! # Ok(()) }
//! ```
//! Namespaced calls carry the `containerd-namespace` header: wrap requests with [`with_namespace`]
//! (and [`with_lease`] for calls whose content and snapshots a lease should hold).
//!
//! # A worked example
//! Import an OCI image layout through the API (content writes, image record, unpack under a
//! lease), run a container on it with its stdout on a FIFO, wait for it and for its
//! `/tasks/exit` event, and clean up. The same program is `examples/run_container.rs`, which
//! `tests/example.rs` runs against a real berthd.
//!
#![doc = concat!("```no_run\n", include_str!("../examples/run_container.rs"), "\n```")]

pub use berth_api::containerd as api;
/// Decode an `Any` (an event, runtime options) whose type URL is containerd's bare message name.
pub use berth_api::unpack_any;
pub use berth_api::{LEASE_HEADER, NAMESPACE_HEADER};
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint};

/// containerd's clients send and accept messages up to this size.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Rpc(#[from] tonic::Status),
}

/// In berth's one vocabulary: an unreachable socket is Unavailable, a status keeps its class.
impl From<Error> for berth_errdefs::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Connect { path, source } => berth_errdefs::Error::with_source(
                berth_errdefs::Kind::Unavailable,
                format!("connect to {}", path.display()),
                source,
            ),
            Error::Rpc(status) => status.into(),
        }
    }
}

/// Connect to a berthd (or containerd) unix socket.
pub async fn connect(socket: impl AsRef<Path>) -> Result<Channel, Error> {
    let path = socket.as_ref().to_path_buf();
    let dial = path.clone();
    // The URI is required by tonic but unused: every connection goes to the unix socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let dial = dial.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(dial).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| Error::Connect { path, source })
}

/// Attach the namespace header to a request.
pub fn with_namespace<T>(namespace: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = namespace.parse() {
        req.metadata_mut().insert(NAMESPACE_HEADER, v);
    }
    req
}

/// Attach the namespace and the lease headers to a request: what the call creates (content,
/// snapshots) is held by lease `lease` until the lease is deleted, safe from garbage collection.
pub fn with_lease<T>(namespace: &str, lease: &str, message: T) -> tonic::Request<T> {
    let mut req = with_namespace(namespace, message);
    if let Ok(v) = lease.parse() {
        req.metadata_mut().insert(LEASE_HEADER, v);
    }
    req
}
