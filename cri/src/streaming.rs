//! Exec, Attach and PortForward: the RPCs check the container or pod and answer with a
//! single-use URL of the cri-stream server; [`StreamBackend`] does the work once a client
//! redeems it.
//!
//! - exec: an exec process of the task with its stdio through FIFOs the shim opens; a tty's
//!   resizes go to the task's ResizePty; the exit code is the process's.
//! - attach: stdin is written into the container's stdin FIFO (`<state_dir>/io/<id>/stdin`);
//!   output is the container's CRI log file followed from its current end, each record's
//!   content routed to stdout or stderr (all to stdout with a tty), until the task exits.
//! - port-forward: a thread of its own enters the pod's netns, connects to 127.0.0.1:PORT
//!   and ends; the connected socket is handed to tokio and copied both ways.
//!
//! Every future here may be dropped when the client leaves: whatever it started (an exec
//! process, copy tasks) is stopped by guards, never left running.

use crate::{Cri, CRI_KIND_CONTAINER, CRI_KIND_LABEL, CRI_KIND_SANDBOX};
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::{Container, GetContainerRequest};
use berth::api::services::tasks::v1::tasks_client::TasksClient;
use berth::api::services::tasks::v1::GetRequest;
use berth::api::v1::types::Status as TaskStatus;
use berth::stdio::{Fifos, StdioConfig};
use berth_cri_stream::{
    AttachRequest, Backend, BoxWrite, ExecRequest, PortForwardRequest, StreamError, StreamIo,
    Tunnel,
};
use berth_errdefs::{Error, Result};
use std::fs::OpenOptions;
use std::io::SeekFrom;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// How long exec output may take to drain after the process exited.
const DRAIN: Duration = Duration::from_secs(5);
/// How often attach looks for new log records and whether the container still runs.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// After the container exited, attach keeps reading until the log is quiet this long (the
/// shim's writer thread may still be flushing the last records).
const FOLLOW_QUIET: Duration = Duration::from_millis(300);
/// How long a tty exec waits for the client's first terminal size before starting.
const FIRST_SIZE: Duration = Duration::from_secs(2);
/// Bound on connecting inside the pod.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The container record as berthd stores it (with the `sandbox` field the client library's
/// summary leaves out).
pub(crate) async fn record(client: &berth::Client, id: &str) -> Result<Option<Container>> {
    if id.is_empty() {
        return Err(Error::invalid("an id is required"));
    }
    let req = GetContainerRequest { id: id.to_string() };
    match ContainersClient::new(client.channel().clone())
        .get(berth::with_namespace(client.namespace(), req))
        .await
    {
        Ok(r) => Ok(r.into_inner().container),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(Error::from(s)),
    }
}

fn kind_of(c: &Container) -> &str {
    c.labels.get(CRI_KIND_LABEL).map_or("", String::as_str)
}

/// The CRI container `id`, NotFound if there is none.
pub(crate) async fn container(client: &berth::Client, id: &str) -> Result<Container> {
    match record(client, id).await? {
        Some(c) if kind_of(&c) == CRI_KIND_CONTAINER => Ok(c),
        _ => Err(Error::not_found(format!("container {id:?} not found"))),
    }
}

/// The pod sandbox `id`, NotFound if there is none.
pub(crate) async fn sandbox(client: &berth::Client, id: &str) -> Result<Container> {
    match record(client, id).await? {
        Some(c) if kind_of(&c) == CRI_KIND_SANDBOX => Ok(c),
        _ => Err(Error::not_found(format!("pod sandbox {id:?} not found"))),
    }
}

/// The task's init process: its state and the stdout URI it was created with.
async fn task(client: &berth::Client, id: &str) -> Result<Option<(TaskStatus, String)>> {
    let req = GetRequest {
        container_id: id.to_string(),
        exec_id: String::new(),
    };
    match TasksClient::new(client.channel().clone())
        .get(berth::with_namespace(client.namespace(), req))
        .await
    {
        Ok(r) => Ok(r.into_inner().process.map(|p| {
            (
                TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown),
                p.stdout,
            )
        })),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(Error::from(s)),
    }
}

async fn require_running(client: &berth::Client, id: &str) -> Result<String> {
    match task(client, id).await? {
        Some((TaskStatus::Running, stdout)) => Ok(stdout),
        _ => Err(Error::precondition(format!(
            "container {id:?} is not running"
        ))),
    }
}

fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<()> {
    if !(stdin || stdout || stderr) {
        return Err(Error::invalid(
            "one of stdin, stdout and stderr must be requested",
        ));
    }
    if tty && stderr {
        return Err(Error::invalid(
            "tty and stderr cannot both be true: a terminal has one output stream",
        ));
    }
    Ok(())
}

fn stream_error(e: StreamError) -> Error {
    match e {
        StreamError::ResourceExhausted => Error::resource_exhausted(e.to_string()),
        StreamError::NotFound(m) => Error::not_found(format!("{m} not found")),
        StreamError::Internal(m) => Error::internal(m),
    }
}

impl Cri {
    /// The full id of the container (or sandbox) `id` names, exactly or (as crictl users type
    /// them, from `crictl ps`) by a unique prefix.
    async fn full_id(&self, kind: &str, id: &str) -> Result<String> {
        let exact = record(&self.client, id).await?;
        if exact.as_ref().is_some_and(|c| kind_of(c) == kind) {
            return Ok(id.to_string());
        }
        let what = if kind == CRI_KIND_SANDBOX {
            "pod sandbox"
        } else {
            "container"
        };
        Ok(self.find(kind, id, what).await?.id)
    }

    pub(crate) async fn exec_url(&self, r: berth_api::runtime::v1::ExecRequest) -> Result<String> {
        if r.cmd.is_empty() || r.cmd[0].is_empty() {
            return Err(Error::invalid("cmd must not be empty"));
        }
        check_streams(r.stdin, r.stdout, r.stderr, r.tty)?;
        let container_id = self.full_id(CRI_KIND_CONTAINER, &r.container_id).await?;
        require_running(&self.client, &container_id).await?;
        self.stream
            .get_exec(ExecRequest {
                container_id,
                cmd: r.cmd,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(stream_error)
    }

    pub(crate) async fn attach_url(
        &self,
        r: berth_api::runtime::v1::AttachRequest,
    ) -> Result<String> {
        check_streams(r.stdin, r.stdout, r.stderr, r.tty)?;
        let container_id = self.full_id(CRI_KIND_CONTAINER, &r.container_id).await?;
        require_running(&self.client, &container_id).await?;
        self.stream
            .get_attach(AttachRequest {
                container_id,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(stream_error)
    }

    pub(crate) async fn port_forward_url(
        &self,
        r: berth_api::runtime::v1::PortForwardRequest,
    ) -> Result<String> {
        if let Some(p) = r.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Error::invalid(format!("port {p} is not a TCP port")));
        }
        let pod_sandbox_id = self.full_id(CRI_KIND_SANDBOX, &r.pod_sandbox_id).await?;
        self.stream
            .get_port_forward(PortForwardRequest { pod_sandbox_id })
            .map_err(stream_error)
    }
}

/// What runs behind the streaming server's URLs.
pub(crate) struct StreamBackend {
    pub client: berth::Client,
    pub net: Arc<berth_net::Net>,
    /// `<cri state_dir>/io`: each container's stdin FIFO is `<io_dir>/<id>/stdin`.
    pub io_dir: PathBuf,
}

fn lookup_error(what: String, e: Error) -> StreamError {
    if e.is_not_found() {
        StreamError::NotFound(what)
    } else {
        StreamError::Internal(format!("{what}: {e}"))
    }
}

/// Aborts a spawned task when dropped.
struct Aborting(JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Kills and deletes an exec process whose client went away before it ended.
struct ExecGuard {
    client: berth::Client,
    id: String,
    exec_id: String,
    armed: bool,
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (client, id, exec_id) = (
            self.client.clone(),
            self.id.clone(),
            std::mem::take(&mut self.exec_id),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let tasks = client.tasks();
                let _ = tasks.kill(&id, &exec_id, 9, false).await;
                let _ = tokio::time::timeout(DRAIN, tasks.wait(&id, &exec_id)).await;
                let _ = tasks.delete_process(&id, &exec_id).await;
            });
        }
    }
}

/// Opens the FIFO at `path` on a blocking thread: a reader's open returns once the shim
/// opened the write end, a writer's once it opened the read end.
fn open_fifo(path: String, write: bool) -> JoinHandle<std::io::Result<std::fs::File>> {
    tokio::task::spawn_blocking(move || {
        if write {
            OpenOptions::new().write(true).open(&path)
        } else {
            OpenOptions::new().read(true).open(&path)
        }
    })
}

/// Releases blocked opens of FIFOs the shim will never open: the other end, opened and
/// closed without blocking, lets them return.
fn unblock(paths: &[(&str, bool)]) {
    for (path, writer_waits) in paths {
        if path.is_empty() {
            continue;
        }
        let _ = if *writer_waits {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
        } else {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
        };
    }
}

async fn copy_out(
    open: JoinHandle<std::io::Result<std::fs::File>>,
    sink: Option<BoxWrite>,
) -> std::io::Result<()> {
    let file = open.await.map_err(std::io::Error::other)??;
    let mut fifo = pipe::Receiver::from_file(file)?;
    match sink {
        Some(mut sink) => {
            let copied = tokio::io::copy(&mut fifo, &mut sink).await;
            let _ = sink.shutdown().await;
            copied.map(|_| ())
        }
        None => tokio::io::copy(&mut fifo, &mut tokio::io::sink())
            .await
            .map(|_| ()),
    }
}

impl StreamBackend {
    async fn running(&self, id: &str) -> std::result::Result<String, StreamError> {
        container(&self.client, id)
            .await
            .map_err(|e| lookup_error(format!("container {id}"), e))?;
        require_running(&self.client, id)
            .await
            .map_err(|e| StreamError::Internal(e.to_string()))
    }

    /// The pod's netns, or None for a pod on the host's network.
    async fn pod_netns(&self, pod: &str) -> std::result::Result<Option<PathBuf>, StreamError> {
        let record = sandbox(&self.client, pod)
            .await
            .map_err(|e| lookup_error(format!("pod sandbox {pod}"), e))?;
        let key = berth_net::AttachmentKey::new(self.client.namespace(), pod);
        let net = self.net.clone();
        let attached = crate::blocking(move || match net.inspect(&key) {
            Ok(a) => Ok(Some(a.netns)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::from(e)),
        })
        .await
        .map_err(|e| StreamError::Internal(format!("network of pod {pod}: {e}")))?;
        if attached.is_some() {
            return Ok(attached);
        }
        // A netns the pod's spec names (one berth-net did not make) is used as such.
        let spec: Option<serde_json::Value> = record
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok());
        let named = spec
            .as_ref()
            .and_then(|s| s["linux"]["namespaces"].as_array())
            .and_then(|nss| {
                nss.iter()
                    .find(|n| n["type"] == "network")
                    .and_then(|n| n["path"].as_str())
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
            });
        Ok(named)
    }
}

#[async_trait::async_trait]
impl Backend for StreamBackend {
    async fn exec(
        &self,
        req: &ExecRequest,
        mut io: StreamIo,
    ) -> std::result::Result<i32, StreamError> {
        let id = req.container_id.as_str();
        self.running(id).await?;
        let info = self
            .client
            .containers()
            .get_by_id(id)
            .await
            .map_err(|e| lookup_error(format!("container {id}"), e.into()))?;
        let mut process = info
            .process_spec()
            .filter(|p| p.is_object())
            .cloned()
            .ok_or_else(|| StreamError::Internal(format!("container {id} has no process spec")))?;
        process["args"] = serde_json::json!(req.cmd);
        process["terminal"] = serde_json::json!(req.tty);
        if let Some(p) = process.as_object_mut() {
            p.remove("consoleSize");
        }
        // The client's terminal size, set before the process starts (runc sizes the pty from
        // consoleSize), so even its first output sees it; later sizes go to ResizePty.
        let mut first_size = None;
        if req.tty {
            if let Some(sizes) = io.resize.as_mut() {
                if let Ok(Some(s)) = tokio::time::timeout(FIRST_SIZE, sizes.recv()).await {
                    process["consoleSize"] =
                        serde_json::json!({"height": s.height, "width": s.width});
                    first_size = Some(s);
                }
            }
        }
        let exec_id = format!("stream-{}", berth::names::short_id(&berth::names::new_id()));
        let fifos = Fifos::new(
            &exec_id,
            StdioConfig {
                stdin: io.stdin.is_some(),
                // Output nobody asked for still needs a reader, or the process would block.
                stdout: true,
                stderr: !req.tty,
                terminal: req.tty,
            },
        )
        .map_err(|e| StreamError::Internal(format!("exec FIFOs: {e}")))?;
        let paths = fifos.task_io();
        let out = open_fifo(paths.stdout.clone(), false);
        let err = (!paths.stderr.is_empty()).then(|| open_fifo(paths.stderr.clone(), false));
        let inp = (!paths.stdin.is_empty()).then(|| open_fifo(paths.stdin.clone(), true));

        let tasks = self.client.tasks();
        let started = async {
            tasks.exec(id, &exec_id, &process, &paths).await?;
            tasks.start(id, &exec_id).await
        }
        .await;
        if let Err(e) = started {
            unblock(&[
                (&paths.stdout, false),
                (&paths.stderr, false),
                (&paths.stdin, true),
            ]);
            let _ = tasks.delete_process(id, &exec_id).await;
            return Err(StreamError::Internal(format!(
                "exec in container {id}: {e}"
            )));
        }
        let mut guard = ExecGuard {
            client: self.client.clone(),
            id: id.to_string(),
            exec_id: exec_id.clone(),
            armed: true,
        };

        // Not every runc sizes an exec's pty from consoleSize: the first size again, at once.
        if let Some(s) = first_size {
            let r = tasks
                .resize(id, &exec_id, u32::from(s.width), u32::from(s.height))
                .await;
            if let Err(e) = r {
                tracing::debug!(%id, %exec_id, "first resize: {e}");
            }
        }
        let _resize = io.resize.take().map(|mut sizes| {
            let (client, id, exec_id) = (self.client.clone(), id.to_string(), exec_id.clone());
            Aborting(tokio::spawn(async move {
                while let Some(s) = sizes.recv().await {
                    let r = client
                        .tasks()
                        .resize(&id, &exec_id, u32::from(s.width), u32::from(s.height))
                        .await;
                    if let Err(e) = r {
                        tracing::debug!(%id, %exec_id, "resize: {e}");
                    }
                }
            }))
        });
        let _stdin = match (inp, io.stdin.take()) {
            (Some(open), Some(mut from)) => {
                let (client, id, exec_id) = (self.client.clone(), id.to_string(), exec_id.clone());
                let tty = req.tty;
                Some(Aborting(tokio::spawn(async move {
                    if let Ok(Ok(file)) = open.await {
                        if let Ok(mut fifo) = pipe::Sender::from_file(file) {
                            let _ = tokio::io::copy(&mut from, &mut fifo).await;
                        }
                    }
                    // The shim keeps a spare writer: the process sees EOF only after CloseIO.
                    // A terminal stays open until the process ends (CloseIO would hang it up).
                    if !tty {
                        let _ = client.tasks().close_stdin(&id, &exec_id).await;
                    }
                })))
            }
            _ => None,
        };
        let mut stdout = Aborting(tokio::spawn(async move {
            let _ = copy_out(out, io.stdout.take()).await;
        }));
        let mut stderr = err.map(|open| {
            let sink = io.stderr.take();
            Aborting(tokio::spawn(async move {
                let _ = copy_out(open, sink).await;
            }))
        });

        let exit = tasks
            .wait(id, &exec_id)
            .await
            .map_err(|e| StreamError::Internal(format!("wait for exec in {id}: {e}")))?;
        // The shim closes the output FIFOs once the process's output is flushed.
        let drained = async {
            let _ = (&mut stdout.0).await;
            if let Some(h) = stderr.as_mut() {
                let _ = (&mut h.0).await;
            }
        };
        if tokio::time::timeout(DRAIN, drained).await.is_err() {
            tracing::debug!(%id, %exec_id, "exec output did not drain in time");
        }
        guard.armed = false;
        let _ = tasks.delete_process(id, &exec_id).await;
        drop(fifos);
        Ok(i32::try_from(exit.code).unwrap_or(i32::MAX))
    }

    async fn attach(
        &self,
        req: &AttachRequest,
        mut io: StreamIo,
    ) -> std::result::Result<(), StreamError> {
        let id = req.container_id.as_str();
        let record = container(&self.client, id)
            .await
            .map_err(|e| lookup_error(format!("container {id}"), e))?;
        let stdout_uri = require_running(&self.client, id)
            .await
            .map_err(|e| StreamError::Internal(e.to_string()))?;
        let log = cri_log_path(&stdout_uri).ok_or_else(|| {
            StreamError::Internal(format!(
                "container {id} does not write a CRI log (its stdout is {stdout_uri:?})"
            ))
        })?;
        // The log's end is taken before any input reaches the container, so what it answers
        // to that input is after the point the client follows from.
        let log_file = open_log_at_end(&log)
            .await
            .map_err(|e| StreamError::Internal(format!("log of {id}: {e}")))?;
        let stdin_once = stdin_once(&record);
        let _stdin = match io.stdin.take() {
            Some(mut from) => {
                let path = self.io_dir.join(id).join("stdin");
                let file = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| {
                        StreamError::Internal(format!(
                            "container {id} has no stdin to attach to ({}: {e})",
                            path.display()
                        ))
                    })?;
                let mut fifo = pipe::Sender::from_file(file)
                    .map_err(|e| StreamError::Internal(format!("stdin of {id}: {e}")))?;
                let (client, id) = (self.client.clone(), id.to_string());
                Some(Aborting(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from, &mut fifo).await;
                    // stdin_once: the client's end of input is the container's (the shim
                    // holds a writer of its own, so only CloseIO makes the process see EOF).
                    if stdin_once {
                        drop(fifo);
                        let _ = client.tasks().close_stdin(&id, "").await;
                    }
                })))
            }
            None => None,
        };
        let (stdout, stderr) = (io.stdout.take(), io.stderr.take());
        let result = follow(&self.client, id, &log, log_file, req.tty, stdout, stderr).await;
        if stdin_once && req.stdin {
            // The first attach detaching without closing its input closes it all the same:
            // a later attach never gets the container's stdin again.
            let _ = self.client.tasks().close_stdin(id, "").await;
        }
        result.map_err(|e| StreamError::Internal(format!("attach to {id}: {e}")))
    }

    async fn port_forward(
        &self,
        req: &PortForwardRequest,
        port: u16,
        mut tunnel: Box<dyn Tunnel>,
    ) -> std::result::Result<(), StreamError> {
        let netns = self.pod_netns(&req.pod_sandbox_id).await?;
        let conn = connect_in(netns, port).await.map_err(|e| {
            StreamError::Internal(format!("connect to 127.0.0.1:{port} in the pod: {e}"))
        })?;
        let mut conn = tokio::net::TcpStream::from_std(conn)
            .map_err(|e| StreamError::Internal(format!("socket: {e}")))?;
        match tokio::io::copy_bidirectional(&mut tunnel, &mut conn).await {
            Ok(_) => Ok(()),
            // The other side going away mid-copy ends the forward, as it would for a client.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(StreamError::Internal(e.to_string())),
        }
    }
}

/// The file of a `cri-log:///path?query` stdout URI.
fn cri_log_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("cri-log://")?;
    let path = rest.split('?').next().unwrap_or(rest);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Connects to 127.0.0.1:`port` inside `netns` (the host's network when None). The setns
/// happens on a thread made for it that ends right after, so no pooled thread ever runs in
/// another namespace; the socket stays in the namespace it was made in.
async fn connect_in(netns: Option<PathBuf>, port: u16) -> std::io::Result<std::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cri-portfwd".into())
        .spawn(move || {
            let result = (|| {
                if let Some(ns) = &netns {
                    let f = std::fs::File::open(ns)?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                }
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let s = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })();
            let _ = tx.send(result);
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the connecting thread ended without an answer"))?
}

/// One CRI log record: its stream, whether it ends a line, and its content.
fn parse_record(line: &[u8]) -> Option<(bool, bool, &[u8])> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or(b"");
    let stderr = match stream {
        b"stdout" => false,
        b"stderr" => true,
        _ => return None,
    };
    let full = match tag {
        b"F" => true,
        b"P" => false,
        // Tags may carry more flags after a colon; the first says partial or full.
        t => !t.starts_with(b"P"),
    };
    Some((stderr, full, content))
}

/// Whether the container's CRI config (the store's record extension) asks for stdin_once.
fn stdin_once(record: &Container) -> bool {
    record
        .extensions
        .get(crate::store::CONFIG_EXT)
        .and_then(|a| {
            <berth_api::runtime::v1::ContainerConfig as prost::Message>::decode(a.value.as_slice())
                .ok()
        })
        .is_some_and(|c| c.stdin_once)
}

/// A log file and its inode.
fn open_log(path: &Path) -> std::io::Result<(tokio::fs::File, u64)> {
    let f = std::fs::File::open(path)?;
    let ino = f.metadata()?.ino();
    Ok((tokio::fs::File::from_std(f), ino))
}

/// The log at `path` positioned at its current end.
async fn open_log_at_end(path: &Path) -> std::io::Result<(tokio::fs::File, u64)> {
    let (mut file, ino) = open_log(path)?;
    file.seek(SeekFrom::End(0)).await?;
    Ok((file, ino))
}

/// Streams the log at `path` from where `opened` stands into `stdout`/`stderr` until the task
/// exits (and the log went quiet) or a writer fails (the client left).
async fn follow(
    client: &berth::Client,
    id: &str,
    path: &Path,
    opened: (tokio::fs::File, u64),
    tty: bool,
    mut stdout: Option<BoxWrite>,
    mut stderr: Option<BoxWrite>,
) -> std::io::Result<()> {
    let open = open_log;
    let (file, mut ino) = opened;
    let mut reader = tokio::io::BufReader::new(file);
    let mut line = Vec::new();
    let mut exited_at: Option<tokio::time::Instant> = None;
    let mut last_check: Option<tokio::time::Instant> = None;
    loop {
        let n = reader.read_until(b'\n', &mut line).await?;
        if n > 0 && line.ends_with(b"\n") {
            line.pop();
            if let Some((is_err, full, content)) = parse_record(&line) {
                let sink = if is_err && !tty {
                    &mut stderr
                } else {
                    &mut stdout
                };
                if let Some(w) = sink {
                    w.write_all(content).await?;
                    if full {
                        w.write_all(b"\n").await?;
                    }
                    w.flush().await?;
                }
            }
            line.clear();
            if exited_at.is_some() {
                exited_at = Some(tokio::time::Instant::now());
            }
            continue;
        }
        // At the end for now (a partial line stays in `line` until the rest arrives).
        if let Some(at) = exited_at {
            if at.elapsed() >= FOLLOW_QUIET {
                break;
            }
        } else if last_check.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            last_check = Some(tokio::time::Instant::now());
            let running = matches!(
                task(client, id).await,
                Ok(Some((
                    TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing,
                    _
                )))
            );
            if !running {
                exited_at = Some(tokio::time::Instant::now());
            }
        }
        // The kubelet rotates by renaming: continue in the new file from its start.
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.ino() != ino {
                if let Ok((f, i)) = open(path) {
                    // Whatever remains of the old file was read above.
                    reader = tokio::io::BufReader::new(f);
                    ino = i;
                    continue;
                }
            }
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
    for w in [&mut stdout, &mut stderr].into_iter().flatten() {
        let _ = w.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_uris_parse() {
        let r = parse_record(b"2026-01-01T00:00:00.000000001Z stdout F hello world").unwrap();
        assert_eq!(r, (false, true, &b"hello world"[..]));
        let r = parse_record(b"2026-01-01T00:00:00Z stderr P part").unwrap();
        assert_eq!(r, (true, false, &b"part"[..]));
        assert_eq!(
            parse_record(b"2026-01-01T00:00:00Z stdout F").unwrap(),
            (false, true, &b""[..])
        );
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(b"t other F x").is_none());
        assert_eq!(
            cri_log_path("cri-log:///var/log/pods/a/0.log?max-size=10"),
            Some(PathBuf::from("/var/log/pods/a/0.log"))
        );
        assert_eq!(cri_log_path("/tmp/fifo"), None);
        assert_eq!(cri_log_path("cri-log://relative"), None);
        assert!(check_streams(false, false, false, false).is_err());
        assert!(check_streams(true, true, true, true).is_err());
        assert!(check_streams(false, true, false, true).is_ok());
    }
}
