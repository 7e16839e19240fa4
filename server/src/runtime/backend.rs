//! The seam between the runtime's task table and what actually runs a task.
//!
//! `TaskManager` keeps which tasks exist, their slots and events; every per-task operation goes
//! through a `TaskBackend`, in the runtime's own types (`types.rs`). Today there is one backend,
//! berth-shim (`shim.rs`, the only module that speaks its protocol). A second one — a containerd
//! shim-v2 binary over ttrpc, or an in-process runner — is a new variant here plus its create
//! and recovery paths in `TaskManager`; services and controllers do not change.

use super::shim::ShimSocket;
use super::types::{Exit, ProcessPid, ProcessState};
use super::Stdio;
use berth_errdefs::Result;
use std::time::Duration;

/// How berthd reaches the thing running one task.
#[derive(Debug)]
pub enum TaskBackend {
    /// A berth-shim, over its newline-JSON socket.
    Shim(ShimSocket),
}

impl TaskBackend {
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
