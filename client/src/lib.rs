//! berth: a Rust client for berthd (and any containerd v1 API server), and the `berth` CLI
//! built on it.
//!
//! Two layers:
//! - the generated clients ([`api`]) on a channel from [`connect`], with the namespace and lease
//!   headers added by [`with_namespace`] and [`with_lease`];
//! - a typed [`Client`] for what people do with containers: images ([`images`]), containers
//!   created from an image with an OCI spec made from its config ([`containers`], [`spec`]),
//!   tasks with their stdio ([`tasks`]), leases ([`leases`]) and events as a stream
//!   ([`events`]). Every error is an [`Error`] that keeps its gRPC code.
//!
//! ```no_run
//! # async fn demo() -> Result<(), berth::Error> {
//! let client = berth::Client::connect(&berth::Host::default_host()?, "default").await?;
//! for image in client.images().list(&[]).await? {
//!     println!("{} {}", image.name, image.target.digest);
//! }
//! let v = client.version().await?;
//! println!("berthd {}", v.version);
//! # Ok(()) }
//! ```
//!
//! Run a container from an image and wait for it, as `berth run --rm -u nobody` does:
//! ```no_run
//! # async fn demo() -> Result<(), berth::Error> {
//! use berth::spec::ContainerConfig;
//! use berth::stdio::StdioConfig;
//! let client = berth::Client::connect(&berth::Host::parse("unix:///run/berth/berthd.sock")?, "default").await?;
//! let config = ContainerConfig {
//!     command: vec!["id".into()],
//!     user: Some("nobody".into()),
//!     memory: Some(64 << 20),
//!     ..Default::default()
//! };
//! let container = client.containers().create("busybox", None, &config).await?;
//! let stdio = StdioConfig { stdout: true, stderr: true, ..Default::default() };
//! let status = client.start_new_container(&container, Some(stdio)).await?.wait().await?;
//! client.remove_exited_container(&container).await?;
//! println!("exit code {}", status.code);
//! # Ok(()) }
//! ```
//!
//! Hold a lease while creating content or snapshots by hand:
//! ```no_run
//! # async fn demo(client: berth::Client) -> Result<(), berth::Error> {
//! use std::time::Duration;
//! let name = client
//!     .leases()
//!     .with(Duration::from_secs(600), |leased| async move {
//!         // Requests made with `leased.request(..)` carry the lease.
//!         Ok(leased.lease)
//!     })
//!     .await?;
//! println!("lease {name} held and released");
//! # Ok(()) }
//! ```
//!
//! # The generated clients
//! ```no_run
//! # async fn demo() -> Result<(), berth::Error> {
//! let channel = berth::connect("/run/berth/berthd.sock").await?;
//! let mut version = berth::api::services::version::v1::version_client::VersionClient::new(channel);
//! let v = version.version(()).await?.into_inner();
//! println!("{}", v.version);
//! # Ok(()) }
//! ```
//!
//! # A worked example
//! Import an OCI image layout through the API (content writes, image record, unpack under a
//! lease), run a container on it with its stdout on a FIFO, wait for it and for its
//! `/tasks/exit` event, and clean up. The same program is `examples/run_container.rs`, which
//! `tests/example.rs` runs against a real berthd.
//!
#![doc = concat!("```no_run\n", include_str!("../examples/run_container.rs"), "\n```")]

pub mod attach;
pub mod build;
pub mod changes;
mod client;
pub mod clock;
pub mod commit;
pub mod containers;
pub mod cp;
mod error;
pub mod events;
pub mod fscopy;
pub mod images;
pub mod import;
mod layers;
pub mod leases;
pub mod lifecycle;
pub mod logs;
pub mod mounts;
pub mod names;
pub mod networks;
pub mod prune;
pub mod spec;
pub mod stats;
pub mod stdio;
pub mod tasks;
pub mod transfer;
pub mod update;
pub mod usage;
pub mod user;
pub mod userns;
pub mod volumes;

#[doc(hidden)]
pub mod cli;

pub use berth_api::containerd as api;
/// Decode an `Any` (an event, runtime options) whose type URL is containerd's bare message name.
pub use berth_api::unpack_any;
pub use berth_api::{LEASE_HEADER, NAMESPACE_HEADER};
pub use client::{Client, Host, ServerVersion, DEFAULT_SOCKET, HOST_ENV};
pub use error::{Error, ExecFailure, Result};
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// containerd's clients send and accept messages up to this size.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// HTTP/2 receive windows of berth's connections, per stream and for the whole connection.
/// Large enough that a large answer, such as Containers.List of 1,000 containers (about 10 KB
/// of spec each), needs few window updates through two busy processes' schedulers; the
/// connection's is four times a stream's, so a stream its reader stopped reading (an events
/// subscriber that stalls) cannot take the whole connection's window and stall the others.
const STREAM_RECEIVE_WINDOW: u32 = 4 << 20;
const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// How long [`connect`] waits for the socket to accept a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect to a berthd (or containerd) unix socket.
pub async fn connect(socket: impl AsRef<Path>) -> Result<Channel> {
    connect_with_timeout(socket, DEFAULT_CONNECT_TIMEOUT).await
}

/// Connect, waiting at most `timeout` for the socket to accept the connection.
pub async fn connect_with_timeout(socket: impl AsRef<Path>, timeout: Duration) -> Result<Channel> {
    let path = socket.as_ref().to_path_buf();
    let dial = path.clone();
    // The URI is required by tonic but unused: every connection goes to the unix socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .initial_stream_window_size(STREAM_RECEIVE_WINDOW)
        .initial_connection_window_size(CONNECTION_RECEIVE_WINDOW)
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
