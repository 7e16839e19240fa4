//! The runtime's config sections, `[tasks]` and `[runtimes.NAME]`: owned and validated here,
//! composed by config.rs.

use berth_errdefs::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The runtime containerd's clients ask for by default.
pub const DEFAULT_RUNTIME: &str = "io.containerd.runc.v2";

/// One named runtime: containerd's runc options (`containerd.runc.v1.Options`) as defaults that
/// a container's or a task's own options override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Only `io.containerd.runc.v2` (berth's shim driving a runc-compatible binary) exists.
    #[serde(rename = "type")]
    pub kind: String,
    /// The OCI runtime binary: runc, crun, ...
    pub binary_name: String,
    /// runc's `--root`; empty: `<state>/runc`. The namespace is appended, as containerd does.
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    /// `runc create --no-pivot`, for a rootfs on a ramdisk.
    pub no_pivot_root: bool,
    /// `runc create --no-new-keyring`.
    pub no_new_keyring: bool,
    /// The cgroup the shim moves itself into (`/k8s.io/<pod>`); empty: it stays in berthd's.
    /// Made in every hierarchy if missing, as runc makes a container's.
    pub shim_cgroup: String,
}

impl RuntimeConfig {
    pub(crate) fn validate(&self, name: &str) -> Result<()> {
        if self.kind != DEFAULT_RUNTIME {
            return Err(Error::invalid(format!(
                "runtimes.{name}.type: runtime {name:?} has type {:?}; berth supports {DEFAULT_RUNTIME}",
                self.kind
            )));
        }
        if self.binary_name.is_empty() {
            return Err(Error::invalid(format!(
                "runtimes.{name}.binary_name must not be empty"
            )));
        }
        if !self.shim_cgroup.is_empty() {
            berth_cgroups::check_path(&self.shim_cgroup)
                .map_err(|e| Error::invalid(format!("runtimes.{name}.shim_cgroup: {e}")))?;
        }
        Ok(())
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            kind: DEFAULT_RUNTIME.into(),
            binary_name: "runc".into(),
            root: PathBuf::new(),
            systemd_cgroup: false,
            no_pivot_root: false,
            no_new_keyring: false,
            shim_cgroup: String::new(),
        }
    }
}

/// `[tasks]`: how the daemon launches and waits for shims, and (for the restart monitor, which
/// brings tasks back) how often it looks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// The berth-shim binary; empty: the one beside berthd.
    pub shim: PathBuf,
    /// How long a restarted daemon waits for each shim to answer before treating it as dead.
    pub shim_connect_timeout_ms: u64,
    /// How often the restart monitor brings containers labelled `containerd.io/restart.status`
    /// back to that status (containerd's restart plugin `interval`).
    pub restart_interval_ms: u64,
    /// How long `berth-shim start` may take to print its socket; past it the launcher is killed
    /// and the task's create fails with DeadlineExceeded.
    pub shim_start_timeout_ms: u64,
    /// How long one runc (runtime) command inside a shim may run before the shim kills it and
    /// fails the call with DeadlineExceeded. Keep it under the daemon's 120 s wait for such calls.
    pub runtime_timeout_ms: u64,
}

/// Shortest restart monitor interval: below it the monitor would spin on a busy host.
pub const MIN_RESTART_INTERVAL_MS: u64 = 100;

impl TasksConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        for (key, v) in [
            (
                "tasks.shim_connect_timeout_ms",
                self.shim_connect_timeout_ms,
            ),
            ("tasks.shim_start_timeout_ms", self.shim_start_timeout_ms),
            ("tasks.runtime_timeout_ms", self.runtime_timeout_ms),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("{key} must be greater than 0")));
            }
        }
        // The daemon waits at most SLOW_CALL for a shim call that runs runc; a runtime bound past
        // it would turn the shim's clear DeadlineExceeded into the daemon's vaguer one.
        let slow_call_ms = super::shim::SLOW_CALL.as_millis() as u64;
        if self.runtime_timeout_ms >= slow_call_ms {
            return Err(Error::invalid(format!(
                "tasks.runtime_timeout_ms must be less than {slow_call_ms} (the daemon's wait for a \
                 runtime call), not {}",
                self.runtime_timeout_ms
            )));
        }
        if self.restart_interval_ms < MIN_RESTART_INTERVAL_MS {
            return Err(Error::invalid(format!(
                "tasks.restart_interval_ms must be at least {MIN_RESTART_INTERVAL_MS}, not {}",
                self.restart_interval_ms
            )));
        }
        Ok(())
    }
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            shim: PathBuf::new(),
            shim_connect_timeout_ms: 1000,
            restart_interval_ms: 10_000,
            shim_start_timeout_ms: 30_000,
            runtime_timeout_ms: 60_000,
        }
    }
}
