//! The restart monitor (containerd's `io.containerd.internal.v1.restart` plugin, which nerdctl's
//! `--restart` relies on): a container labelled `containerd.io/restart.status` is brought back to
//! that status every interval.
//!
//! - `running`: a container whose task stopped (or that has none, read as a clean exit) gets a
//!   new one, unless its `containerd.io/restart.policy` says no: `always` (also when the label
//!   is missing), `no`, `on-failure[:N]` (only after a non-zero exit, at most N restarts as
//!   counted in `containerd.io/restart.count`), `unless-stopped` (unless
//!   `containerd.io/restart.explicitly-stopped` is true). The old task is deleted, the count
//!   label raised, and the new task logs to `containerd.io/restart.loguri` (or the file
//!   `containerd.io/restart.logpath`), else nowhere.
//! - `stopped`: a running task is killed (SIGKILL, all processes) and deleted.
//!
//! A paused task counts as running: unlike containerd, the monitor leaves it alone. A task being
//! created or cleaned up is left to the next round.

use crate::blocking::blocking;
use crate::events::Exchange;
use crate::runtime::Status;
use crate::runtime::{CreateTask, Stdio, TaskManager};
use crate::snapshots::{to_api_mounts, Snapshotters};
use berth_api::containerd::services::containers::v1::Container;
use berth_errdefs::{Error, Result};
use berth_metadata::containers::ContainerSummary;
use berth_metadata::Metadata;
use std::sync::Arc;
use std::time::Duration;

pub const STATUS_LABEL: &str = "containerd.io/restart.status";
pub const POLICY_LABEL: &str = "containerd.io/restart.policy";
pub const COUNT_LABEL: &str = "containerd.io/restart.count";
pub const EXPLICITLY_STOPPED_LABEL: &str = "containerd.io/restart.explicitly-stopped";
pub const LOG_URI_LABEL: &str = "containerd.io/restart.loguri";
pub const LOG_PATH_LABEL: &str = "containerd.io/restart.logpath";

const SIGKILL: u32 = 9;

pub struct RestartMonitor {
    pub meta: Arc<Metadata>,
    pub snapshotters: Snapshotters,
    pub tasks: Arc<TaskManager>,
    pub events: Exchange,
    pub interval: Duration,
}

/// How long a killed task may take to exit before the monitor gives up on it for this round
/// (the others must not wait behind it).
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// What a container's task looks like to the monitor.
enum Current {
    Absent,
    Running,
    Stopped {
        exit_status: u32,
    },
    /// Being created or cleaned up: next round.
    Busy,
}

/// Whether a stopped task should be started again under `labels`' policy.
fn should_restart(labels: &std::collections::HashMap<String, String>, exit_status: u32) -> bool {
    let Some(policy) = labels.get(POLICY_LABEL) else {
        return true;
    };
    let (name, max) = policy.split_once(':').unwrap_or((policy, ""));
    match name {
        "" | "always" => true,
        "no" => false,
        "on-failure" => {
            let max: u64 = max.parse().unwrap_or(0);
            let count: u64 = labels
                .get(COUNT_LABEL)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            exit_status != 0 && (max == 0 || count < max)
        }
        "unless-stopped" => !labels
            .get(EXPLICITLY_STOPPED_LABEL)
            .is_some_and(|v| matches!(v.as_str(), "true" | "1" | "TRUE" | "True" | "t" | "T")),
        other => {
            tracing::warn!(policy = other, "unknown restart policy; not restarting");
            false
        }
    }
}

impl RestartMonitor {
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "restart monitor");
            }
        }
    }

    /// One pass over every labelled container of every namespace. Records are read as
    /// summaries (no spec decoded); only a container to act on is read whole.
    pub async fn reconcile(&self) -> Result<()> {
        for ns in self.meta.list_namespaces()? {
            let labelled = self.meta.container_summaries(&ns.name)?.into_iter();
            for c in labelled.filter(|c| c.labels.contains_key(STATUS_LABEL)) {
                if let Err(e) = self.reconcile_one(&ns.name, &c).await {
                    tracing::warn!(namespace = %ns.name, container = %c.id, error = %e, "restart monitor");
                }
            }
        }
        Ok(())
    }

    async fn current(&self, ns: &str, id: &str) -> Result<Current> {
        match self.tasks.state(ns, id, "").await {
            Ok(s) => Ok(match s.status {
                Status::Stopped => Current::Stopped {
                    exit_status: s.exit_status,
                },
                Status::Running | Status::Paused | Status::Created => Current::Running,
            }),
            Err(e) if e.is_not_found() => Ok(Current::Absent),
            Err(e) if e.kind() == berth_errdefs::Kind::Unavailable => Ok(Current::Busy),
            Err(e) => Err(e),
        }
    }

    async fn reconcile_one(&self, ns: &str, c: &ContainerSummary) -> Result<()> {
        let current = self.current(ns, &c.id).await?;
        let desired = c.labels.get(STATUS_LABEL).map_or("", String::as_str);
        match (desired, current) {
            (_, Current::Busy) => Ok(()),
            // No task at all (a reboot, a deletion) reads as a clean exit, as in containerd.
            ("running", Current::Absent) if should_restart(&c.labels, 0) => {
                self.restart(ns, &c.id).await
            }
            ("running", Current::Stopped { exit_status }) => {
                if should_restart(&c.labels, exit_status) {
                    self.restart(ns, &c.id).await
                } else {
                    Ok(())
                }
            }
            ("stopped", Current::Running) => {
                tracing::info!(namespace = ns, container = %c.id, "restart monitor: stopping");
                self.kill_task(ns, &c.id).await
            }
            _ => Ok(()),
        }
    }

    /// Kills (all processes) and deletes the container's task, if it has one.
    async fn kill_task(&self, ns: &str, id: &str) -> Result<()> {
        match self.tasks.state(ns, id, "").await {
            Ok(s) if s.status != Status::Stopped => {
                self.tasks.kill(ns, id, "", SIGKILL, true).await?;
                tokio::time::timeout(KILL_PATIENCE, self.tasks.wait(ns, id, ""))
                    .await
                    .map_err(|_| {
                        Error::unavailable(format!(
                            "task {id} did not exit within {KILL_PATIENCE:?} of SIGKILL"
                        ))
                    })??;
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
        match self.tasks.delete(ns, id).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn restart(&self, ns: &str, id: &str) -> Result<()> {
        let c = self.meta.get_container(ns, id)?;
        let count: u64 = c
            .labels
            .get(COUNT_LABEL)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            + 1;
        tracing::info!(namespace = ns, container = %c.id, count, "restart monitor: starting");
        let update = Container {
            id: c.id.clone(),
            labels: [(COUNT_LABEL.to_string(), count.to_string())].into(),
            ..Default::default()
        };
        let c = self
            .meta
            .update_container(ns, update, &[format!("labels.{COUNT_LABEL}")])
            .await?;
        self.events.publish_container_update(ns, &c);
        self.kill_task(ns, &c.id).await?;
        let rootfs = if c.snapshot_key.is_empty() {
            Vec::new()
        } else {
            let scoped = self.snapshotters.scoped(&c.snapshotter, ns)?;
            let key = c.snapshot_key.clone();
            to_api_mounts(blocking(move || scoped.mounts(&key)).await?)
        };
        let log = match (c.labels.get(LOG_URI_LABEL), c.labels.get(LOG_PATH_LABEL)) {
            (Some(uri), _) if !uri.is_empty() => uri.clone(),
            (_, Some(path)) if !path.is_empty() => format!("file://{path}"),
            _ => String::new(),
        };
        let id = c.id.clone();
        self.tasks
            .create(CreateTask {
                namespace: ns.to_string(),
                container: c,
                rootfs,
                stdio: Stdio {
                    stdin: String::new(),
                    stdout: log.clone(),
                    stderr: log,
                    terminal: false,
                },
                options: None,
            })
            .await?;
        self.tasks.start(ns, &id, "").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn policies_as_containerd_reads_them() {
        assert!(should_restart(&labels(&[]), 0), "no policy: always");
        assert!(should_restart(&labels(&[(POLICY_LABEL, "always")]), 0));
        assert!(!should_restart(&labels(&[(POLICY_LABEL, "no")]), 1));
        let on_failure =
            |max: &str, count: &str| labels(&[(POLICY_LABEL, max), (COUNT_LABEL, count)]);
        assert!(!should_restart(&on_failure("on-failure", "0"), 0));
        assert!(should_restart(&on_failure("on-failure", "9"), 1));
        assert!(should_restart(&on_failure("on-failure:2", "1"), 1));
        assert!(!should_restart(&on_failure("on-failure:2", "2"), 1));
        let unless = |stopped: &str| {
            labels(&[
                (POLICY_LABEL, "unless-stopped"),
                (EXPLICITLY_STOPPED_LABEL, stopped),
            ])
        };
        assert!(should_restart(&unless("false"), 0));
        assert!(!should_restart(&unless("true"), 0));
        assert!(!should_restart(&labels(&[(POLICY_LABEL, "sometimes")]), 1));
    }
}
