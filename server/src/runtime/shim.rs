//! Talking to one berth-shim: starting it, and its newline-JSON protocol over tokio
//! (shim/README.md is the contract). One connection per call keeps the client stateless: a
//! shim that restarts its listener, or a daemon that restarts, needs no reconnect logic, and a
//! long `wait` never holds up other calls.

use berth_errdefs::{Error, Result};
use berth_shim::protocol::{encode_request, ErrorKind, Request, Response};
use serde::de::DeserializeOwned;
use std::os::unix::ffi::OsStrExt;
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
struct Launch<'a> {
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
    pub cgroup_dirs: &'a [PathBuf],
    /// The bound on `berth-shim start` itself.
    pub timeout: Duration,
    /// Passed to the shim: the bound on each runtime command it runs.
    pub runtime_timeout: Duration,
}

/// Run `berth-shim start`: it daemonizes (its own session, reparented away from berthd) and
/// prints its socket path once it serves.
async fn launch(l: &Launch<'_>) -> Result<PathBuf> {
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
        .arg("--runtime-timeout-ms")
        .arg(l.runtime_timeout.as_millis().max(1).to_string())
        .arg("--log")
        .arg(l.bundle.join("shim.log"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own group, so that on timeout whatever it started and did not detach goes too.
        .process_group(0)
        .kill_on_drop(true);
    for dir in l.cgroup_dirs {
        cmd.arg("--cgroup-dir").arg(dir);
    }
    for (set, flag) in [
        (l.systemd_cgroup, "--systemd-cgroup"),
        (l.no_pivot_root, "--no-pivot-root"),
        (l.no_new_keyring, "--no-new-keyring"),
    ] {
        if set {
            cmd.arg(flag);
        }
    }
    let child = cmd.spawn().map_err(|e| {
        Error::internal(format!(
            "cannot run the shim {}: {e} (berth-shim belongs beside berthd, or set [tasks] shim)",
            l.shim.display()
        ))
    })?;
    let group = child.id();
    // On timeout the child is dropped, so killed (kill_on_drop), and reaped by tokio; the
    // caller's reservation of the task then ends with the error.
    let out = match tokio::time::timeout(l.timeout, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| {
            Error::internal(format!("waiting for the shim {}: {e}", l.shim.display()))
        })?,
        Err(_) => {
            if let Some(pgid) = group {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(Error::deadline_exceeded(format!(
                "starting the shim for task {}: {} start did not finish within {:?}; it was killed",
                l.id,
                l.shim.display(),
                l.timeout
            )));
        }
    };
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

// The berth-shim backend's side of the runtime seam: every per-task operation as one protocol
// request, its reply converted into the runtime's own types (`types.rs`). Nothing outside the
// runtime sees `berth_shim::protocol`.

use super::types::{Exit, ProcessPid, ProcessState, Status};
use super::Stdio;
use berth_shim::protocol::{self as wire, Empty, ExecRequest};
use std::time::{SystemTime, UNIX_EPOCH};

pub(super) fn system_time(t: wire::Timestamp) -> SystemTime {
    u64::try_from(t.seconds).map_or(UNIX_EPOCH, |s| {
        UNIX_EPOCH + Duration::new(s, t.nanos.min(999_999_999))
    })
}

impl From<wire::Status> for Status {
    fn from(s: wire::Status) -> Self {
        match s {
            wire::Status::Created => Status::Created,
            wire::Status::Running => Status::Running,
            wire::Status::Paused => Status::Paused,
            wire::Status::Stopped => Status::Stopped,
        }
    }
}

impl From<wire::ProcessState> for ProcessState {
    fn from(p: wire::ProcessState) -> Self {
        ProcessState {
            id: p.id,
            pid: p.pid,
            status: p.status.into(),
            exit_status: p.exit_status,
            exited_at: p.exited_at.map(system_time),
            stdin: p.stdin,
            stdout: p.stdout,
            stderr: p.stderr,
            terminal: p.terminal,
        }
    }
}

impl From<wire::ExitReply> for Exit {
    fn from(e: wire::ExitReply) -> Self {
        Exit {
            pid: e.pid,
            exit_status: e.exit_status,
            exited_at: e.exited_at.map(system_time),
        }
    }
}

impl ShimSocket {
    pub async fn start(&self, exec_id: &str) -> Result<u32> {
        let req = Request::Start {
            exec_id: exec_id.to_string(),
        };
        let r: wire::PidReply = self.call(&req, Some(SLOW_CALL)).await?;
        Ok(r.pid)
    }

    pub async fn state(&self, exec_id: &str) -> Result<ProcessState> {
        let req = Request::State {
            exec_id: exec_id.to_string(),
        };
        let s: wire::ProcessState = self.call(&req, Some(QUICK_CALL)).await?;
        Ok(s.into())
    }

    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = Request::Kill {
            exec_id: exec_id.to_string(),
            signal,
            all,
        };
        self.call::<Empty>(&req, Some(SLOW_CALL)).await?;
        Ok(())
    }

    pub async fn exec(&self, exec_id: &str, spec: serde_json::Value, stdio: Stdio) -> Result<()> {
        let req = Request::Exec(ExecRequest {
            exec_id: exec_id.to_string(),
            spec,
            stdin: stdio.stdin,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            terminal: stdio.terminal,
        });
        self.call::<Empty>(&req, Some(QUICK_CALL)).await?;
        Ok(())
    }

    pub async fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = Request::ResizePty {
            exec_id: exec_id.to_string(),
            width,
            height,
        };
        self.call::<Empty>(&req, Some(QUICK_CALL)).await?;
        Ok(())
    }

    pub async fn close_stdin(&self, exec_id: &str) -> Result<()> {
        let req = Request::CloseIo {
            exec_id: exec_id.to_string(),
        };
        self.call::<Empty>(&req, Some(QUICK_CALL)).await?;
        Ok(())
    }

    pub async fn pause(&self, pause: bool) -> Result<()> {
        let req = if pause {
            Request::Pause
        } else {
            Request::Resume
        };
        self.call::<Empty>(&req, Some(SLOW_CALL)).await?;
        Ok(())
    }

    pub async fn pids(&self) -> Result<Vec<ProcessPid>> {
        let r: wire::PidsReply = self.call(&Request::Pids, Some(SLOW_CALL)).await?;
        Ok(r.processes
            .into_iter()
            .map(|p| ProcessPid {
                pid: p.pid,
                exec_id: p.exec_id,
            })
            .collect())
    }

    pub async fn update(&self, resources: serde_json::Value) -> Result<()> {
        self.call::<Empty>(&Request::Update { resources }, Some(SLOW_CALL))
            .await?;
        Ok(())
    }

    /// Block until the process has exited (at once if it has).
    pub async fn wait(&self, exec_id: &str) -> Result<Exit> {
        let req = Request::Wait {
            exec_id: exec_id.to_string(),
        };
        let e: wire::ExitReply = self.call(&req, None).await?;
        Ok(e.into())
    }

    pub async fn delete(&self, exec_id: &str) -> Result<Exit> {
        let req = Request::Delete {
            exec_id: exec_id.to_string(),
            force: false,
        };
        let e: wire::ExitReply = self.call(&req, Some(SLOW_CALL)).await?;
        Ok(e.into())
    }

    pub async fn shutdown(&self) -> Result<()> {
        self.call::<Empty>(&Request::Shutdown, Some(QUICK_CALL))
            .await?;
        Ok(())
    }

    /// Whether the shim answers within `timeout`.
    pub async fn answers(&self, timeout: Duration) -> bool {
        self.call::<wire::VersionReply>(&Request::Version, Some(timeout))
            .await
            .is_ok()
    }
}

impl ShimSocket {
    /// `runc create` the task's init through a freshly launched shim (`runc run --detach`
    /// with `start`); its pid.
    pub async fn create(&self, stdio: &Stdio, start: bool) -> Result<u32> {
        let req = Request::Create(wire::CreateRequest {
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            terminal: stdio.terminal,
            start,
        });
        let r: wire::PidReply = self.call(&req, Some(SLOW_CALL)).await?;
        Ok(r.pid)
    }
}

/// The exit the shim recorded in the bundle for `process` ("init" or an exec id), for a daemon
/// that finds the shim gone.
pub(super) fn recorded_exit(bundle: &Path, process: &str) -> Option<Exit> {
    wire::ExitRecord::read(bundle, process).map(|r| Exit {
        pid: r.pid,
        exit_status: r.exit_status,
        exited_at: Some(system_time(r.exited_at)),
    })
}

impl ShimSocket {
    /// Every process the shim knows, without a bound (the caller bounds the probe).
    pub async fn list(&self) -> Result<Vec<ProcessState>> {
        let l: wire::ListReply = self.call(&Request::List, None).await?;
        Ok(l.processes.into_iter().map(ProcessState::from).collect())
    }
}

/// The berth-shim backend's create: launch a shim for the bundle while `bundle_filled` completes
/// it, then `runc create` init through the shim. A shim whose create failed is shut down.
pub(super) async fn create(
    settings: &super::backend::ShimSettings,
    t: &super::backend::NewTask<'_>,
    bundle_filled: impl std::future::Future<Output = Result<()>>,
) -> Result<(ShimSocket, u32)> {
    let record = t.record;
    let launch_args = Launch {
        shim: &settings.binary,
        namespace: &record.namespace,
        id: &record.id,
        bundle: t.bundle,
        socket_dir: t.socket_dir,
        runtime_binary: &record.binary_name,
        runtime_root: &record.runc_root,
        systemd_cgroup: record.systemd_cgroup,
        no_pivot_root: record.no_pivot_root,
        no_new_keyring: record.no_new_keyring,
        cgroup_dirs: t.shim_cgroup_dirs,
        timeout: settings.start_timeout,
        runtime_timeout: settings.runtime_timeout,
    };
    let (launched, filled) = tokio::join!(launch(&launch_args), bundle_filled);
    let shim = ShimSocket {
        task: record.id.clone(),
        path: launched?,
    };
    if let Err(e) = filled {
        // Nothing was created: the shim may go.
        let _ = shim.shutdown().await;
        return Err(e);
    }
    let launched = std::time::Instant::now();
    let created = shim.create(t.stdio, t.start).await;
    tracing::debug!(
        task = %record.id,
        runc_create_ms = launched.elapsed().as_secs_f64() * 1e3,
        "shim launched, runc create done"
    );
    match created {
        Ok(pid) => Ok((shim, pid)),
        Err(e) => {
            // Nothing was created: the shim may go.
            if shim.shutdown().await.is_err() {
                // The shim is gone (SIGKILLed mid-create, issue 15): runc may have created the
                // container with nobody left to report it, or still be creating it. Once no
                // runtime command of this bundle runs any more, what it made is deleted as a
                // dead shim's task is; the caller then unmounts and removes the bundle.
                tracing::warn!(task = %record.id, error = %e, "the shim died during create");
                runtime_commands_done(t.bundle, settings.runtime_timeout).await;
                clean_up_dead(record).await;
            }
            Err(e)
        }
    }
}

/// Waits (at most `within`) until no process names `bundle` in its arguments: the runtime
/// commands a killed shim started (the shim gives runc `--bundle` and `--log` in the bundle)
/// run on without it, and a `runc create` still under way would make its container after a
/// `runc delete` looked for it.
async fn runtime_commands_done(bundle: &Path, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let dir = bundle.to_path_buf();
        let running = crate::blocking::blocking(move || Ok(processes_naming(&dir)))
            .await
            .unwrap_or_default();
        if running.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(bundle = %bundle.display(), ?running, "runtime commands still running");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Pids of the processes with an argument that is `dir` or a path below it.
fn processes_naming(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .any(|a| Path::new(std::ffi::OsStr::from_bytes(a)).starts_with(dir))
            })
        })
        .collect()
}

/// The berth-shim backend's reconnect: one round trip (`list`) within `timeout` tells a live
/// shim; one that does not answer but whose process still runs is slow, not dead.
pub(super) async fn reconnect(
    record: &super::TaskRecord,
    bundle: &Path,
    socket_dir: &Path,
    timeout: Duration,
) -> super::backend::Reconnected {
    use super::backend::{Reconnected, TaskBackend};
    let shim = ShimSocket {
        task: record.id.clone(),
        path: socket_dir.join("shim.sock"),
    };
    match tokio::time::timeout(timeout, shim.list()).await {
        Ok(Ok(processes)) => Reconnected::Live(TaskBackend::Shim(shim), processes),
        Err(_) if shim_process_alive(bundle) => Reconnected::Slow,
        Err(_) => Reconnected::Dead("shim not answering and not running".into()),
        Ok(Err(e)) => Reconnected::Dead(format!("shim not answering: {e}")),
    }
}

/// How many `runc delete --force` of dead tasks run at once.
static DEAD_CLEANUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// After a shim died: the container's processes outlive a killed shim until `runc delete
/// --force`.
pub(super) async fn clean_up_dead(r: &super::TaskRecord) {
    // After a reboot runc's state (under /run) went with the containers: there is nothing to
    // delete, and a thousand dead tasks must not cost a thousand runc processes at start-up
    // (they starved the daemon's start: 5.5 s to serve over 1000 such bundles, docs/reliability.md).
    let state = r.runc_root.join(&r.id);
    let present = crate::blocking::blocking(move || Ok(state.exists()))
        .await
        .unwrap_or(true);
    if !present {
        return;
    }
    // Those that do need runc go a few at a time, off the start-up's back.
    let _permit = DEAD_CLEANUPS.acquire().await;
    let out = tokio::process::Command::new(&r.binary_name)
        .arg("--root")
        .arg(&r.runc_root)
        .args(["delete", "--force", &r.id])
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    if let Ok(out) = out {
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !err.contains("does not exist") {
            tracing::warn!(task = %r.id, error = %err.trim(), "runc delete");
        }
    }
}

/// Whether the shim recorded in `<bundle>/shim.pid` is still a running berth-shim.
pub(super) fn shim_process_alive(bundle: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(bundle.join("shim.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return false;
    };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("berth-shim"))
        .unwrap_or(false)
}
