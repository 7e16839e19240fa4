//! The seam between the runtime's task table and what actually runs a task.
//!
//! `TaskManager` keeps which tasks exist, their slots and events; every per-task operation goes
//! through a `TaskBackend`, in the runtime's own types (`types.rs`). Today there is one backend,
//! berth-shim (`shim.rs`, the only module that speaks its protocol). A backend is chosen by the
//! runtime's `type` and recorded in the task's record, so a restarted daemon reconnects through
//! the same one. A second backend — a containerd shim-v2 binary over ttrpc, or an in-process
//! runner — is a new `TaskBackend` variant plus its arms in `Backends` (create, reconnect, clean
//! up after it died); `TaskManager`, services and controllers do not change.

use super::config::DEFAULT_RUNTIME;
use super::shim::{self, ShimSocket};
use super::types::{Exit, ProcessPid, ProcessState};
use super::{Stdio, TaskRecord};
use berth_errdefs::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a backend is given to run a new task: its record (the resolved runtime), the prepared
/// bundle (spec, mounted rootfs), a private directory for its sockets, and the client's stdio.
pub struct NewTask<'a> {
    pub record: &'a TaskRecord,
    pub bundle: &'a Path,
    pub socket_dir: &'a Path,
    pub stdio: &'a Stdio,
    /// The shim's own cgroup, one directory per hierarchy; empty: berthd's.
    pub shim_cgroup_dirs: &'a [PathBuf],
    /// Start init as well (one runtime command).
    pub start: bool,
}

/// What reconnecting to a task's backend after a restart found.
pub enum Reconnected {
    /// It answers; these are the processes it knows (init among them, unless it was deleted).
    Live(TaskBackend, Vec<ProcessState>),
    /// It lives but did not answer in time (busy, or stopped): ask again later, never kill
    /// the container for that.
    Slow,
    /// Gone, or answering nothing useful; why.
    Dead(String),
}

/// berth-shim's settings (`[tasks]`).
#[derive(Debug, Clone)]
pub struct ShimSettings {
    /// The berth-shim binary.
    pub binary: PathBuf,
    /// The bound on `berth-shim start`.
    pub start_timeout: Duration,
    /// The shim's bound on each runtime command it runs.
    pub runtime_timeout: Duration,
}

/// The backends the runtime can create tasks with, by runtime type.
#[derive(Debug, Clone)]
pub struct Backends {
    pub shim: ShimSettings,
}

impl Backends {
    /// Start what runs the task and create its init process: the backend and init's pid. The
    /// backend starts while `bundle_filled` (the rootfs mount, the spec) completes; init is
    /// created once it has. On failure nothing of the backend is left running (the bundle is
    /// the caller's).
    pub async fn create(
        &self,
        t: NewTask<'_>,
        bundle_filled: impl std::future::Future<Output = Result<()>>,
    ) -> Result<(TaskBackend, u32)> {
        match t.record.runtime_type.as_str() {
            DEFAULT_RUNTIME => {
                let (socket, pid) = shim::create(&self.shim, &t, bundle_filled).await?;
                Ok((TaskBackend::Shim(socket), pid))
            }
            other => Err(unsupported(other)),
        }
    }

    /// Reach the backend of a task found on disk after a restart, within `timeout`.
    pub async fn reconnect(
        &self,
        record: &TaskRecord,
        bundle: &Path,
        socket_dir: &Path,
        timeout: Duration,
    ) -> Reconnected {
        match record.runtime_type.as_str() {
            DEFAULT_RUNTIME => shim::reconnect(record, bundle, socket_dir, timeout).await,
            other => Reconnected::Dead(unsupported(other).to_string()),
        }
    }

    /// After a task's backend died: stop the container's processes it left behind.
    pub async fn clean_up_dead(&self, record: &TaskRecord) {
        match record.runtime_type.as_str() {
            DEFAULT_RUNTIME => shim::clean_up_dead(record).await,
            other => tracing::warn!(task = %record.id, "{}", unsupported(other)),
        }
    }

    /// The exit of init a dead backend left on record in the bundle, if any.
    pub fn recorded_exit(&self, record: Option<&TaskRecord>, bundle: &Path) -> Option<Exit> {
        match record.map(|r| r.runtime_type.as_str()) {
            Some(DEFAULT_RUNTIME) => shim::recorded_exit(bundle, "init"),
            // No record: nothing was launched for this bundle, so nothing recorded an exit.
            _ => None,
        }
    }
}

fn unsupported(runtime_type: &str) -> Error {
    Error::unimplemented(format!(
        "runtime type {runtime_type:?} has no backend in berthd (it runs {DEFAULT_RUNTIME})"
    ))
}

/// How berthd reaches the thing running one task.
#[derive(Debug)]
pub enum TaskBackend {
    /// A berth-shim, over its newline-JSON socket.
    Shim(ShimSocket),
}

impl TaskBackend {
    /// Which shim serves the task, for logs.
    pub fn describe(&self) -> String {
        match self {
            TaskBackend::Shim(s) => format!("berth-shim at {}", s.path.display()),
        }
    }

    pub async fn start(&self, exec_id: &str) -> Result<u32> {
        match self {
            TaskBackend::Shim(s) => s.start(exec_id).await,
        }
    }

    pub async fn state(&self, exec_id: &str) -> Result<ProcessState> {
        match self {
            TaskBackend::Shim(s) => s.state(exec_id).await,
        }
    }

    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        match self {
            TaskBackend::Shim(s) => s.kill(exec_id, signal, all).await,
        }
    }

    pub async fn exec(&self, exec_id: &str, spec: serde_json::Value, stdio: Stdio) -> Result<()> {
        match self {
            TaskBackend::Shim(s) => s.exec(exec_id, spec, stdio).await,
        }
    }

    pub async fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        match self {
            TaskBackend::Shim(s) => s.resize_pty(exec_id, width, height).await,
        }
    }

    pub async fn close_stdin(&self, exec_id: &str) -> Result<()> {
        match self {
            TaskBackend::Shim(s) => s.close_stdin(exec_id).await,
        }
    }

    pub async fn pause(&self, pause: bool) -> Result<()> {
        match self {
            TaskBackend::Shim(s) => s.pause(pause).await,
        }
    }

    pub async fn pids(&self) -> Result<Vec<ProcessPid>> {
        match self {
            TaskBackend::Shim(s) => s.pids().await,
        }
    }

    pub async fn update(&self, resources: serde_json::Value) -> Result<()> {
        match self {
            TaskBackend::Shim(s) => s.update(resources).await,
        }
    }

    /// Block until the process has exited (at once if it has).
    pub async fn wait(&self, exec_id: &str) -> Result<Exit> {
        match self {
            TaskBackend::Shim(s) => s.wait(exec_id).await,
        }
    }

    /// Delete a stopped process (`exec_id` "": init, then the task's runtime state).
    pub async fn delete(&self, exec_id: &str) -> Result<Exit> {
        match self {
            TaskBackend::Shim(s) => s.delete(exec_id).await,
        }
    }

    /// Stop whatever serves the task once it is deleted.
    pub async fn shutdown(&self) -> Result<()> {
        match self {
            TaskBackend::Shim(s) => s.shutdown().await,
        }
    }

    /// Whether the backend still answers for this task within `timeout`.
    pub async fn answers(&self, timeout: Duration) -> bool {
        match self {
            TaskBackend::Shim(s) => s.answers(timeout).await,
        }
    }
}
