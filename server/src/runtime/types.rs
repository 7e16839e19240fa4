//! The runtime's own vocabulary for tasks and their processes: what services and controllers
//! see, whichever backend runs the task. Backends convert their wire types into these
//! (the berth-shim backend in `shim.rs`).

use std::fmt;
use std::time::SystemTime;

/// A process's lifecycle status, as containerd's task API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The state of one process of a task (init, or an exec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessState {
    /// The container id for init, the exec id for an exec.
    pub id: String,
    /// 0 until the process exists (an exec before `start`).
    pub pid: u32,
    pub status: Status,
    /// Meaningful only when `status` is stopped.
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
    /// The stdio paths exactly as given at create/exec (clients re-open them to attach).
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    /// Exit code, or 128 + signal number for a process killed by a signal.
    pub exit_status: u32,
    /// None only for a process that never ran (an exec deleted before start).
    pub exited_at: Option<SystemTime>,
}

/// One process in a task's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPid {
    pub pid: u32,
    /// Set when the pid is an exec process of the task.
    pub exec_id: Option<String>,
}

/// A time as the API carries it.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}
