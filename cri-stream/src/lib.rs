//! berth-cri-stream owns the CRI streaming server: the HTTP endpoint whose URLs the CRI's
//! Exec, Attach and PortForward return, and the protocols the kubelet's clients (client-go,
//! crictl, kubectl) speak on it — SPDY/3.1 with the `channel.k8s.io` subprotocols v1–v4 and
//! `portforward.k8s.io`, and WebSocket with `v4`/`v5.channel.k8s.io` and client-go's
//! `SPDY/3.1+portforward.k8s.io` tunnel.
//!
//! Known limit: SPDY flow control is not enforced, so a backend that never reads stdin while
//! the client keeps sending stalls that session's other streams (not other sessions).
//!
//! It knows nothing of containers: what runs behind a stream is a [`Backend`], which the CRI
//! service implements.
//!
//! # How to wire it into the CRI service
//! 1. At start-up: `let server = StreamServer::start(config, Arc::new(backend)).await?;` with
//!    `config.address` from `[cri] stream_address` (loopback by default).
//! 2. In the `Exec`/`Attach`/`PortForward` RPCs: validate the container or sandbox exists,
//!    then answer with `server.get_exec(ExecRequest { .. })?` (likewise `get_attach`,
//!    `get_port_forward`) as the response's `url`. [`StreamError::ResourceExhausted`] maps to
//!    the gRPC code of the same name.
//! 3. Implement [`Backend`]: `exec` runs the process in the container (through the shim's
//!    Exec with the given stdio) and returns its exit code; `attach` connects to the
//!    container's stdio until it exits; `port_forward` copies between the stream and
//!    `127.0.0.1:port` inside the sandbox's network namespace. The futures are dropped when
//!    the client goes away, so a backend must kill what it started on drop.

mod portforward;
mod remotecommand;
mod server;
mod spdy;
mod token;
mod websocket;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use server::StreamServer;

/// A reader the backend takes stdin from.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A writer the backend sends stdout or stderr to.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
/// A bidirectional byte stream for one forwarded connection.
pub trait Tunnel: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Tunnel for T {}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP server listens; port 0 picks a free one.
    pub address: SocketAddr,
    /// Host put in the URLs; needed only when `address` is unspecified and the
    /// guessed interface address is not the one clients reach.
    pub advertise_host: Option<std::net::IpAddr>,
    /// How long a URL stays valid.
    pub token_ttl: Duration,
    /// How many URLs may wait to be used at once.
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_host: None,
            token_ttl: Duration::from_secs(60),
            max_in_flight: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// The client's streams for one exec or attach; a stream the client did not ask for is None.
/// With a tty, stdout carries the terminal and stderr is None.
pub struct StreamIo {
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    /// Terminal sizes, the first one as soon as the client knows it; only with a tty.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("too many streaming requests in flight")]
    ResourceExhausted,
    #[error("{0}")]
    Internal(String),
}

/// What runs behind the streams; implemented by the CRI service.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `req.cmd` in the container and returns its exit code.
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, StreamError>;
    /// Connects the streams to the container's own stdio until it exits or the client leaves.
    async fn attach(&self, req: &AttachRequest, io: StreamIo) -> Result<(), StreamError>;
    /// Copies between `tunnel` and `port` of the sandbox until either side closes.
    async fn port_forward(
        &self,
        req: &PortForwardRequest,
        port: u16,
        tunnel: Box<dyn Tunnel>,
    ) -> Result<(), StreamError>;
}
