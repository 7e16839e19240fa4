//! Talking to one berth-shim: starting it, and its newline-JSON protocol over tokio
//! (shim/README.md is the contract). One connection per call keeps the client stateless: a
//! shim that restarts its listener, or a daemon that restarts, needs no reconnect logic, and a
//! long `wait` never holds up other calls.

use berth_errdefs::{Error, Result};
use berth_shim::protocol::{encode_request, ErrorKind, Request, Response};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// For calls that run runc (create, start, delete...): runc plus hooks can take long.
pub const SLOW_CALL: Duration = Duration::from_secs(120);
/// For calls answered from the shim's memory.
pub const QUICK_CALL: Duration = Duration::from_secs(10);

/// The control socket of the shim serving one task.
#[derive(Debug, Clone)]
pub struct ShimSocket {
    /// Which task, for error messages.
    pub task: String,
    pub path: PathBuf,
}

impl ShimSocket {
    /// One request, one reply. `timeout` None waits forever (`wait`).
    pub async fn call<T: DeserializeOwned>(
        &self,
        req: &Request,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let exchange = self.exchange(req);
        let resp = match timeout {
            Some(t) => tokio::time::timeout(t, exchange).await.map_err(|_| {
                Error::deadline_exceeded(format!(
                    "task {}: the shim did not answer {} within {t:?}",
                    self.task,
                    req.op()
                ))
            })??,
            None => exchange.await?,
        };
        match (resp.result, resp.error) {
            (_, Some(e)) => Err(self.shim_error(e.kind, e.message)),
            (Some(v), None) => serde_json::from_value(v).map_err(|e| {
                Error::internal(format!(
                    "task {}: undecodable {} reply from the shim: {e}",
                    self.task,
                    req.op()
                ))
            }),
            (None, None) => Err(Error::internal(format!(
                "task {}: empty {} reply from the shim",
                self.task,
                req.op()
            ))),
        }
    }

    async fn exchange(&self, req: &Request) -> Result<Response> {
        let gone = |e: std::io::Error| {
            Error::unavailable(format!(
                "task {}: cannot reach its shim at {}: {e}",
                self.task,
                self.path.display()
            ))
        };
        let mut stream = UnixStream::connect(&self.path).await.map_err(gone)?;
        stream.write_all(&encode_request(req)).await.map_err(gone)?;
        let mut line = String::new();
        let n = BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(gone)?;
        if n == 0 {
            return Err(Error::unavailable(format!(
                "task {}: the shim closed the connection during {}",
                self.task,
                req.op()
            )));
        }
        serde_json::from_str(&line).map_err(|e| {
            Error::internal(format!(
                "task {}: undecodable reply from the shim: {e}",
                self.task
            ))
        })
    }

    /// The shim names its error kinds after gRPC codes; keep them.
    fn shim_error(&self, kind: ErrorKind, message: String) -> Error {
        let msg = format!("task {}: {message}", self.task);
        Error::new(kind.into(), msg)
    }
}

/// What `berth-shim start` needs.
pub struct Launch<'a> {
    pub shim: &'a Path,
    pub namespace: &'a str,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub socket_dir: &'a Path,
    pub runtime_binary: &'a str,
    pub runtime_root: &'a Path,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
}

/// Run `berth-shim start`: it daemonizes (its own session, reparented away from berthd) and
/// prints its socket path once it serves.
pub async fn launch(l: &Launch<'_>) -> Result<PathBuf> {
    let mut cmd = tokio::process::Command::new(l.shim);
    cmd.arg("start")
        .arg("--namespace")
        .arg(l.namespace)
        .arg("--id")
        .arg(l.id)
        .arg("--bundle")
        .arg(l.bundle)
        .arg("--socket-dir")
        .arg(l.socket_dir)
        .arg("--runtime-binary")
        .arg(l.runtime_binary)
        .arg("--runtime-root")
        .arg(l.runtime_root)
        .arg("--log")
        .arg(l.bundle.join("shim.log"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (set, flag) in [
        (l.systemd_cgroup, "--systemd-cgroup"),
        (l.no_pivot_root, "--no-pivot-root"),
        (l.no_new_keyring, "--no-new-keyring"),
    ] {
        if set {
            cmd.arg(flag);
        }
    }
    let out = cmd.output().await.map_err(|e| {
        Error::internal(format!(
            "cannot run the shim {}: {e} (berth-shim belongs beside berthd, or set [tasks] shim)",
            l.shim.display()
        ))
    })?;
    if !out.status.success() {
        return Err(Error::internal(format!(
            "starting the shim for task {}: {} ({})",
            l.id,
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    let printed = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(printed.trim()))
}
