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
//!   `containerd.io/restart.logpath`), else nowhere. A container whose spec asks for a
//!   terminal gets one again (runc refuses a terminal spec without one): the log takes the pty's
//!   output and stdin is berth's `berth/restart.stdin` (the `attach://` socket the berth client
//!   names at its own detached starts, so `berth attach` reaches the new terminal too).
//! - `stopped`: a running task is killed (SIGKILL, all processes) and deleted.
//!
//! Back-off, as docker's and the kubelet's (containerd's monitor has none): a task that exits
//! within `QUICK_EXIT` of the restart that started it makes the next restart wait one interval
//! more, doubling with each such exit up to `MAX_BACKOFF`; a task that lived longer resets it.
//! The count is this process's (a restarted berthd starts afresh, as docker does).
//!
//! A paused task counts as running: unlike containerd, the monitor leaves it alone. A task being
//! created or cleaned up is left to the next round.
//!
//! A round reads summaries and may wait seconds on each container, so nothing is done on what the
//! round read: the record and the task are read again just before acting, and a restart checks
//! the record once more after creating the new task and before starting it. A client's stop
//! (nerdctl: label `explicitly-stopped`, then kill) either shows in that check, or its kill comes
//! after it and finds the new task.

use crate::blocking::blocking;
use crate::events::Exchange;
use crate::runtime::Status;
use crate::runtime::{CreateTask, Stdio, TaskManager};
use crate::snapshots::{to_api_mounts, Snapshotters};
use berth_api::containerd::services::containers::v1::Container;
use berth_errdefs::{Error, Result};
use berth_metadata::containers::ContainerSummary;
use berth_metadata::Metadata;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub const STATUS_LABEL: &str = "containerd.io/restart.status";
pub const POLICY_LABEL: &str = "containerd.io/restart.policy";
pub const COUNT_LABEL: &str = "containerd.io/restart.count";
pub const EXPLICITLY_STOPPED_LABEL: &str = "containerd.io/restart.explicitly-stopped";
pub const LOG_URI_LABEL: &str = "containerd.io/restart.loguri";
pub const LOG_PATH_LABEL: &str = "containerd.io/restart.logpath";
/// berth's addition: the stdin a restarted terminal task gets.
pub const STDIN_LABEL: &str = "berth/restart.stdin";

const SIGKILL: u32 = 9;

pub struct RestartMonitor {
    pub meta: Arc<Metadata>,
    pub snapshotters: Snapshotters,
    pub tasks: Arc<TaskManager>,
    pub events: Exchange,
    pub interval: Duration,
    /// A restarted task gets its network again as Tasks.Create gives it.
    pub network: Arc<crate::network::Networking>,
    pub backoff: Backoffs,
}

/// A task that exits sooner than this after its restart counts as a quick exit.
const QUICK_EXIT: Duration = Duration::from_secs(10);
/// The longest wait between restarts (the kubelet's CrashLoopBackOff cap), or the interval if
/// that is longer.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The restarts this process made, by (namespace, container).
#[derive(Default)]
pub struct Backoffs(Mutex<HashMap<(String, String), Restarted>>);

#[derive(Debug, Clone, Copy)]
struct Restarted {
    at: SystemTime,
    /// Consecutive restarted tasks that exited within `QUICK_EXIT`, this one's exit excluded.
    quick_exits: u32,
}

/// How long after a task's exit its next restart waits, with `quick_exits` consecutive quick
/// exits counted (this one included): none without any, one interval after the first, doubling
/// with each next.
fn backoff_wait(quick_exits: u32, interval: Duration) -> Duration {
    if quick_exits == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(quick_exits - 1).unwrap_or(u32::MAX);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF.max(interval))
}

impl Backoffs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Restarted>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The quick exits counting the exit at `exited_at`, and whether the restart may go now.
    fn check(
        &self,
        key: &(String, String),
        exited_at: Option<SystemTime>,
        interval: Duration,
        now: SystemTime,
    ) -> (u32, bool) {
        let Some(last) = self.lock().get(key).copied() else {
            return (0, true);
        };
        let Some(exited_at) = exited_at else {
            return (0, true); // no task at all: not a crash loop
        };
        let lived = exited_at.duration_since(last.at).unwrap_or_default();
        if lived >= QUICK_EXIT {
            return (0, true);
        }
        let quick_exits = last.quick_exits + 1;
        let due = exited_at + backoff_wait(quick_exits, interval);
        (quick_exits, now >= due)
    }

    fn record(&self, key: (String, String), quick_exits: u32, at: SystemTime) {
        self.lock().insert(key, Restarted { at, quick_exits });
    }

    /// Forgets the containers not in `labelled`.
    fn retain(&self, labelled: &std::collections::HashSet<(String, String)>) {
        self.lock().retain(|k, _| labelled.contains(k));
    }
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
        exited_at: Option<SystemTime>,
    },
    /// Being created or cleaned up: next round.
    Busy,
}

/// What the monitor does about one container.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Nothing,
    /// Start a new task; the old one ended with `exit_status` (0 when there was none).
    Restart {
        exit_status: u32,
    },
    Stop,
}

/// The decision, from the container's labels and its task.
fn decide(labels: &std::collections::HashMap<String, String>, current: &Current) -> Action {
    let desired = labels.get(STATUS_LABEL).map_or("", String::as_str);
    match (desired, current) {
        (_, Current::Busy) => Action::Nothing,
        // No task at all (a reboot, a deletion) reads as a clean exit, as in containerd.
        ("running", Current::Absent) if should_restart(labels, 0) => {
            Action::Restart { exit_status: 0 }
        }
        ("running", Current::Stopped { exit_status, .. })
            if should_restart(labels, *exit_status) =>
        {
            Action::Restart {
                exit_status: *exit_status,
            }
        }
        ("stopped", Current::Running) => Action::Stop,
        _ => Action::Nothing,
    }
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
        // A scan of every record is not the few-microsecond metadata call the blocking rule keeps
        // on the workers: with 20,000 containers it is ~50 ms, which held up the first answers
        // after a restart. It runs on the blocking pool.
        let meta = self.meta.clone();
        let labelled = blocking(move || {
            let mut labelled = Vec::new();
            for ns in meta.list_namespaces()? {
                let summaries = meta.container_summaries(&ns.name)?.into_iter();
                labelled.extend(
                    summaries
                        .filter(|c| c.labels.contains_key(STATUS_LABEL))
                        .map(|c| (ns.name.clone(), c)),
                );
            }
            Ok(labelled)
        })
        .await?;
        self.backoff.retain(
            &labelled
                .iter()
                .map(|(ns, c)| (ns.clone(), c.id.clone()))
                .collect(),
        );
        for (ns, c) in labelled {
            if let Err(e) = self.reconcile_one(&ns, &c).await {
                tracing::warn!(namespace = %ns, container = %c.id, error = %e, "restart monitor");
            }
        }
        Ok(())
    }

    async fn current(&self, ns: &str, id: &str) -> Result<Current> {
        match self.tasks.state(ns, id, "").await {
            Ok(s) => Ok(match s.status {
                Status::Stopped => Current::Stopped {
                    exit_status: s.exit_status,
                    exited_at: s.exited_at,
                },
                Status::Running | Status::Paused | Status::Created => Current::Running,
            }),
            Err(e) if e.is_not_found() => Ok(Current::Absent),
            Err(e) if e.kind() == berth_errdefs::Kind::Unavailable => Ok(Current::Busy),
            Err(e) => Err(e),
        }
    }

    async fn reconcile_one(&self, ns: &str, c: &ContainerSummary) -> Result<()> {
        if decide(&c.labels, &self.current(ns, &c.id).await?) == Action::Nothing {
            return Ok(());
        }
        // Decide again on the record and the task as they are now: the summary is as old as
        // the round.
        let c = match self.meta.get_container(ns, &c.id) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let current = self.current(ns, &c.id).await?;
        match decide(&c.labels, &current) {
            Action::Nothing => Ok(()),
            Action::Restart { exit_status } => {
                let exited_at = match current {
                    Current::Stopped { exited_at, .. } => exited_at,
                    _ => None,
                };
                let key = (ns.to_string(), c.id.clone());
                let now = SystemTime::now();
                let (quick_exits, due) = self.backoff.check(&key, exited_at, self.interval, now);
                if !due {
                    tracing::debug!(namespace = ns, container = %c.id, quick_exits, "restart monitor: backing off");
                    return Ok(());
                }
                self.restart(ns, c, exit_status).await?;
                self.backoff.record(key, quick_exits, now);
                Ok(())
            }
            Action::Stop => {
                tracing::info!(namespace = ns, container = %c.id, "restart monitor: stopping");
                self.kill_task(ns, &c.id).await
            }
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
        let deleted = match self.tasks.delete(ns, id).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        };
        if deleted.is_ok() {
            self.detach(ns, id).await;
        }
        deleted
    }

    /// Detaches a deleted task's networks under its slot; a create that already holds the slot
    /// replaces the attachment itself.
    async fn detach(&self, ns: &str, id: &str) {
        if let Ok(_slot) = self.tasks.reserve(ns, id) {
            self.network.after_delete(ns, id).await;
        }
    }

    async fn restart(&self, ns: &str, c: Container, exit_status: u32) -> Result<()> {
        let id = c.id.clone();
        let prior_count = c.labels.get(COUNT_LABEL).cloned();
        let count: u64 = prior_count
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            + 1;
        tracing::info!(namespace = ns, container = %id, count, "restart monitor: starting");
        let update = Container {
            id: id.clone(),
            labels: [(COUNT_LABEL.to_string(), count.to_string())].into(),
            ..Default::default()
        };
        let c = self
            .meta
            .update_container(ns, update, &[format!("labels.{COUNT_LABEL}")])
            .await?;
        self.events.publish_container_update(ns, &c);
        self.kill_task(ns, &id).await?;
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
        let stdio = restart_stdio(&c, log);
        let mut c = c;
        // As Tasks.Create: the slot is held across attach, create and a failed create's detach.
        let reservation = self.tasks.reserve(ns, &id)?;
        let networked = self.network.before_create(ns, &mut c).await?;
        let created = self
            .tasks
            .create_reserved(
                &reservation,
                CreateTask {
                    namespace: ns.to_string(),
                    container: c,
                    rootfs,
                    stdio,
                    options: None,
                    start: false,
                },
            )
            .await;
        if let Err(e) = created {
            if networked {
                self.network.after_delete(ns, &id).await;
            }
            return Err(e);
        }
        drop(reservation);
        // The last check, with the new task in place (see the module comment).
        let still = match self.meta.get_container(ns, &id) {
            Ok(mut c) => {
                // Judged as the decision was: before this restart's own count.
                match &prior_count {
                    Some(n) => c.labels.insert(COUNT_LABEL.to_string(), n.clone()),
                    None => c.labels.remove(COUNT_LABEL),
                };
                let stopped = Current::Stopped {
                    exit_status,
                    exited_at: None,
                };
                decide(&c.labels, &stopped) != Action::Nothing
            }
            Err(e) if e.is_not_found() => false,
            Err(e) => Err(e)?,
        };
        if !still {
            tracing::info!(namespace = ns, container = %id, "restart monitor: changed meanwhile; not starting");
            let deleted = match self.tasks.delete(ns, &id).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(e),
            };
            self.detach(ns, &id).await;
            return deleted;
        }
        self.tasks.start(ns, &id, "").await?;
        Ok(())
    }
}

/// The stdio of a restarted task: its log for both streams, or for a terminal (one stream) the
/// pty's output, with the stdin the container's label names when there is somewhere for the
/// output to go (an `attach://` socket copies it and needs a reader of the pty).
fn restart_stdio(c: &Container, log: String) -> Stdio {
    let terminal = c
        .spec
        .as_ref()
        .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s.value).ok())
        .and_then(|spec| spec["process"]["terminal"].as_bool())
        .unwrap_or(false);
    if !terminal {
        return Stdio {
            stdin: String::new(),
            stdout: log.clone(),
            stderr: log,
            terminal: false,
        };
    }
    let stdin = match c.labels.get(STDIN_LABEL) {
        Some(s) if !log.is_empty() => s.clone(),
        _ => String::new(),
    };
    Stdio {
        stdin,
        stdout: log,
        stderr: String::new(),
        terminal: true,
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

    #[test]
    fn restarts_back_off_while_tasks_exit_quickly() {
        let second = Duration::from_secs(1);
        assert_eq!(backoff_wait(0, second), Duration::ZERO);
        assert_eq!(backoff_wait(1, second), second);
        assert_eq!(backoff_wait(4, second), 8 * second);
        assert_eq!(backoff_wait(40, second), MAX_BACKOFF);
        assert_eq!(
            backoff_wait(3, Duration::from_secs(600)),
            Duration::from_secs(600)
        );

        let b = Backoffs::default();
        let key = ("ns".to_string(), "c".to_string());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Never restarted by this process: at once.
        assert_eq!(b.check(&key, Some(t0), second, t0), (0, true));
        b.record(key.clone(), 0, at(0));
        // Its task exits after 1 s: one quick exit, due one interval after the exit.
        assert_eq!(b.check(&key, Some(at(1)), second, at(1)), (1, false));
        assert_eq!(b.check(&key, Some(at(1)), second, at(2)), (1, true));
        b.record(key.clone(), 1, at(2));
        // Again quickly: two, due two intervals after.
        assert_eq!(b.check(&key, Some(at(3)), second, at(4)), (2, false));
        assert_eq!(b.check(&key, Some(at(3)), second, at(5)), (2, true));
        b.record(key.clone(), 2, at(5));
        // A task that lived past QUICK_EXIT resets it; so does a container with no task.
        assert_eq!(b.check(&key, Some(at(30)), second, at(30)), (0, true));
        assert_eq!(b.check(&key, None, second, at(6)), (0, true));
        // Containers no longer labelled are forgotten.
        b.retain(&std::collections::HashSet::new());
        assert!(b.lock().is_empty());
    }

    #[test]
    fn decisions() {
        let running = |extra: &[(&str, &str)]| {
            let mut l = labels(&[(STATUS_LABEL, "running")]);
            l.extend(labels(extra));
            l
        };
        let stopped = |exit_status| Current::Stopped {
            exit_status,
            exited_at: None,
        };
        assert_eq!(
            decide(&running(&[]), &Current::Absent),
            Action::Restart { exit_status: 0 }
        );
        assert_eq!(
            decide(&running(&[]), &stopped(3)),
            Action::Restart { exit_status: 3 }
        );
        assert_eq!(decide(&running(&[]), &Current::Running), Action::Nothing);
        assert_eq!(decide(&running(&[]), &Current::Busy), Action::Nothing);
        let unless_stopped = running(&[
            (POLICY_LABEL, "unless-stopped"),
            (EXPLICITLY_STOPPED_LABEL, "true"),
        ]);
        assert_eq!(decide(&unless_stopped, &stopped(0)), Action::Nothing);
        let stop = labels(&[(STATUS_LABEL, "stopped")]);
        assert_eq!(decide(&stop, &Current::Running), Action::Stop);
        assert_eq!(decide(&stop, &stopped(0)), Action::Nothing);
        assert_eq!(decide(&labels(&[]), &stopped(1)), Action::Nothing);
    }

    /// A monitor over a real metadata store whose task manager cannot start shims: any attempt
    /// to restart fails loudly, so "did nothing" is visible as Ok.
    async fn monitor(dir: &std::path::Path) -> RestartMonitor {
        let meta = Arc::new(Metadata::open(&dir.join("meta")).expect("metadata"));
        let events = Exchange::default();
        let tasks = TaskManager::new(
            &dir.join("state"),
            crate::runtime::Backends {
                shim: crate::runtime::ShimSettings {
                    binary: dir.join("no-such-shim"),
                    start_timeout: Duration::from_secs(30),
                    runtime_timeout: Duration::from_secs(60),
                },
            },
            [(
                crate::config::DEFAULT_RUNTIME.to_string(),
                crate::config::RuntimeConfig::default(),
            )]
            .into(),
            Duration::from_secs(1),
            events.clone(),
        )
        .expect("task manager");
        RestartMonitor {
            meta,
            snapshotters: Snapshotters::default(),
            tasks: Arc::new(tasks),
            events,
            interval: Duration::from_secs(3600),
            network: Arc::new(crate::network::Networking::disabled()),
            backoff: Backoffs::default(),
        }
    }

    async fn labelled_container(m: &RestartMonitor, ns: &str, id: &str) {
        let c = Container {
            id: id.into(),
            labels: labels(&[(STATUS_LABEL, "running"), (POLICY_LABEL, "unless-stopped")]),
            runtime: Some(
                berth_api::containerd::services::containers::v1::container::Runtime {
                    name: crate::config::DEFAULT_RUNTIME.into(),
                    options: None,
                },
            ),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: b"{}".to_vec(),
            }),
            ..Default::default()
        };
        m.meta
            .create_container(ns, c)
            .await
            .expect("create container");
    }

    #[tokio::test]
    async fn a_stop_between_the_rounds_read_and_its_act_is_honoured() {
        let dir = tempfile::tempdir().expect("temp dir");
        let m = monitor(dir.path()).await;
        labelled_container(&m, "ns", "web").await;
        labelled_container(&m, "ns", "control").await;
        // The round reads its summaries...
        let summaries = m.meta.container_summaries("ns").expect("summaries");
        // ...then a client stops `web` (nerdctl stop: the label, then the kill)...
        let stop = Container {
            id: "web".into(),
            labels: labels(&[(EXPLICITLY_STOPPED_LABEL, "true")]),
            ..Default::default()
        };
        m.meta
            .update_container("ns", stop, &[format!("labels.{EXPLICITLY_STOPPED_LABEL}")])
            .await
            .expect("label explicitly-stopped");
        // ...before the round gets to it: `web` is left alone, while `control`, whose labels did
        // not change, is acted on (and fails, there being no shim to start).
        for c in &summaries {
            let r = m.reconcile_one("ns", c).await;
            match c.id.as_str() {
                "web" => assert!(r.is_ok(), "{r:?}"),
                _ => {
                    let e = r.expect_err("the control container was restarted without a shim");
                    assert!(e.to_string().contains("shim"), "{e}");
                }
            }
        }
        let web = m.meta.get_container("ns", "web").expect("web");
        assert!(!web.labels.contains_key(COUNT_LABEL), "{:?}", web.labels);
        assert!(m.tasks.get("ns", "web").is_err());
    }

    #[test]
    fn a_terminal_spec_is_restarted_on_a_terminal_with_the_labelled_stdin() {
        let container = |terminal: bool, stdin: Option<&str>| Container {
            id: "c".into(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: serde_json::to_vec(&serde_json::json!({"process": {"terminal": terminal}}))
                    .unwrap(),
            }),
            labels: stdin
                .map(|s| labels(&[(STDIN_LABEL, s)]))
                .unwrap_or_default(),
            ..Default::default()
        };
        let log = "file:///l/c.log".to_string();
        let plain = restart_stdio(&container(false, Some("attach:///l/a.sock")), log.clone());
        assert_eq!(
            (plain.stdin.as_str(), plain.stderr.as_str(), plain.terminal),
            ("", log.as_str(), false)
        );
        let tty = restart_stdio(&container(true, Some("attach:///l/a.sock")), log.clone());
        assert_eq!(
            (
                tty.stdin.as_str(),
                tty.stdout.as_str(),
                tty.stderr.as_str(),
                tty.terminal
            ),
            ("attach:///l/a.sock", log.as_str(), "", true)
        );
        // Without a log nothing would read the pty for an attach socket to copy.
        let unlogged = restart_stdio(&container(true, Some("attach:///l/a.sock")), String::new());
        assert_eq!((unlogged.stdin.as_str(), unlogged.terminal), ("", true));
        assert_eq!(restart_stdio(&container(true, None), log).stdin, "");
    }
}
