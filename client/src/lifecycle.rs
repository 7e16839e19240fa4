//! What a person does with a container, as one call each: start it with stdio attached and
//! wait for it, stop it (signal, grace period, SIGKILL), remove it (forcibly), exec in it, and
//! read its status the way `ps` shows it. Built on [`crate::tasks`] and [`crate::stdio`].

use crate::api::v1::types::Status;
use crate::containers::ContainerInfo;
use crate::stdio::{Attached, Fifos, StdioConfig};
use crate::tasks::{parse_signal, ExitStatus, TaskIo};
use crate::{Client, Error, Result};
use std::time::{Duration, SystemTime};
use tonic::Code;

/// docker's default grace period for `stop`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the output of an exited process to drain.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
const SIGKILL: u32 = 9;
/// How long a forced removal keeps killing and deleting the tasks it finds (see
/// `kill_and_delete_tasks`).
const TASK_SETTLE: Duration = Duration::from_secs(30);

/// A container's state as `ps` shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerStatus {
    Created,
    Running {
        pid: u32,
        started_at: Option<SystemTime>,
    },
    Paused {
        pid: u32,
        started_at: Option<SystemTime>,
    },
    Exited {
        code: u32,
        at: Option<SystemTime>,
    },
    /// Exited, and berthd's restart monitor will start it again at its next round (docker's
    /// restart back-off): `code` and `at` are the last exit's.
    Restarting {
        code: u32,
        at: Option<SystemTime>,
    },
    Unknown,
}

impl ContainerStatus {
    /// docker's one-word state: created, running, paused, exited.
    pub fn state(&self) -> &'static str {
        match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running { .. } => "running",
            ContainerStatus::Paused { .. } => "paused",
            ContainerStatus::Exited { .. } => "exited",
            ContainerStatus::Restarting { .. } => "restarting",
            ContainerStatus::Unknown => "unknown",
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(
            self,
            ContainerStatus::Running { .. } | ContainerStatus::Paused { .. }
        )
    }

    /// `Up 3 seconds`, `Up 2 minutes (Paused)`, `Exited (0) 5 seconds ago`, `Created`.
    pub fn describe(&self, now: SystemTime) -> String {
        let since = |t: &Option<SystemTime>| {
            t.and_then(|t| now.duration_since(t).ok())
                .map(human_duration)
        };
        match self {
            ContainerStatus::Created => "Created".to_string(),
            ContainerStatus::Running { started_at, .. } => match since(started_at) {
                Some(d) => format!("Up {d}"),
                None => "Up".to_string(),
            },
            ContainerStatus::Paused { started_at, .. } => match since(started_at) {
                Some(d) => format!("Up {d} (Paused)"),
                None => "Up (Paused)".to_string(),
            },
            ContainerStatus::Exited { code, at } => match since(at) {
                Some(d) => format!("Exited ({code}) {d} ago"),
                None => format!("Exited ({code})"),
            },
            ContainerStatus::Restarting { code, at } => match since(at) {
                Some(d) => format!("Restarting ({code}) {d} ago"),
                None => format!("Restarting ({code})"),
            },
            ContainerStatus::Unknown => "Unknown".to_string(),
        }
    }
}

/// docker's `units.HumanDuration`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=2699 => format!("{} minutes", s / 60),
        2700..=5399 => "About an hour".to_string(),
        5400..=172_799 => format!("{} hours", (s + 1800) / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86_400),
        1_209_600..=5_183_999 => format!("{} weeks", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

/// When host process `pid` started: its start time in clock ticks after boot (/proc/PID/stat)
/// plus the boot time (/proc/stat). None when the process is not visible from here.
pub fn process_start_time(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = rest.split(' ').nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(boot * 1000 + ticks * 1000 / hz))
}

/// A started process whose stdio may be attached.
pub struct Process {
    client: Client,
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
    pub pid: u32,
    _fifos: Option<Fifos>,
    attached: Option<Attached>,
}

impl Process {
    /// Wait for the process to exit and its output to drain; returns its exit code.
    pub async fn wait(mut self) -> Result<ExitStatus> {
        let status = self
            .client
            .tasks()
            .wait(&self.container_id, &self.exec_id)
            .await?;
        if let Some(a) = self.attached.take() {
            a.wait_output(OUTPUT_DRAIN).await;
        }
        Ok(status)
    }

    /// Keep the terminal size of the process's pty in step with ours (SIGWINCH), until the
    /// returned task is aborted.
    pub fn follow_terminal_size(&self) -> tokio::task::JoinHandle<()> {
        follow_terminal_size(&self.client, &self.container_id, &self.exec_id)
    }
}

/// Keep the terminal size of a process's pty (`exec_id` empty: the container's init) in step
/// with ours (SIGWINCH), until the returned task is aborted.
pub fn follow_terminal_size(
    client: &Client,
    container_id: &str,
    exec_id: &str,
) -> tokio::task::JoinHandle<()> {
    let tasks = client.tasks();
    let (id, exec) = (container_id.to_string(), exec_id.to_string());
    tokio::spawn(async move {
        let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        else {
            return;
        };
        loop {
            if let Some((w, h)) = crate::stdio::terminal_size() {
                let _ = tasks.resize(&id, &exec, w, h).await;
            }
            if winch.recv().await.is_none() {
                return;
            }
        }
    })
}

/// Attach the caller's stdio to the FIFOs; the receiver fires when the caller's stdin ended
/// (hand it to [`close_stdin_when_done`] once the process runs).
fn attach(
    fifos: &Fifos,
    config: StdioConfig,
) -> (Attached, Option<tokio::sync::oneshot::Receiver<()>>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let input: Option<Box<dyn std::io::Read + Send>> = config
        .stdin
        .then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>);
    let attached = fifos.attach(
        input,
        Box::new(std::io::stdout()),
        Box::new(std::io::stderr()),
        config.stdin.then_some(tx),
    );
    (attached, config.stdin.then_some(rx))
}

/// Once the caller's stdin ended, let the process see EOF: the shim holds a spare writer
/// until told. Only after the process exists, or the daemon would not know it yet.
fn close_stdin_when_done(
    client: &Client,
    container_id: &str,
    exec_id: &str,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
) {
    if let Some(rx) = done {
        let tasks = client.tasks();
        let (id, exec) = (container_id.to_string(), exec_id.to_string());
        tokio::spawn(async move {
            if rx.await.is_ok() {
                let _ = tasks.close_stdin(&id, &exec).await;
            }
        });
    }
}

/// Whether berthd's restart monitor will start a container with these labels again after an
/// exit with `code`: it watches the container (status label `running`) and the policy says so
/// (the monitor's own rules: `always`, `on-failure[:N]` after a non-zero exit while the count
/// is below N, `unless-stopped` unless explicitly stopped).
pub fn will_restart(labels: &std::collections::HashMap<String, String>, code: u32) -> bool {
    use crate::logs::{RESTART_POLICY_LABEL, RESTART_STATUS_LABEL};
    if labels.get(RESTART_STATUS_LABEL).map(String::as_str) != Some("running") {
        return false;
    }
    let Some(policy) = labels.get(RESTART_POLICY_LABEL) else {
        return true;
    };
    let (name, max) = policy.split_once(':').unwrap_or((policy, ""));
    match name {
        "" | "always" => true,
        "on-failure" => {
            let max: u64 = max.parse().unwrap_or(0);
            let count: u64 = labels
                .get(crate::logs::RESTART_COUNT_LABEL)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            code != 0 && (max == 0 || count < max)
        }
        "unless-stopped" => !labels
            .get(crate::logs::RESTART_EXPLICITLY_STOPPED_LABEL)
            .is_some_and(|v| matches!(v.as_str(), "true" | "1" | "TRUE" | "True" | "t" | "T")),
        _ => false,
    }
}

/// The status of `container` with this task, as `ps` shows it: an exit the restart monitor
/// will undo reads `restarting`.
pub fn status_of_container(
    container: &ContainerInfo,
    task: Option<&crate::tasks::ProcessState>,
) -> ContainerStatus {
    let status = match task {
        None => ContainerStatus::Created,
        Some(t) => status_of_task(t),
    };
    match status {
        ContainerStatus::Exited { code, at } if will_restart(&container.labels, code) => {
            ContainerStatus::Restarting { code, at }
        }
        // The monitor deletes the old task before it makes the new one.
        ContainerStatus::Created if task.is_none() && will_restart(&container.labels, 0) => {
            ContainerStatus::Restarting { code: 0, at: None }
        }
        other => other,
    }
}

impl Client {
    /// The container's status as `ps` shows it.
    pub async fn status(&self, container: &ContainerInfo) -> Result<ContainerStatus> {
        let task = match self.tasks().get(&container.id).await {
            Ok(t) => t,
            // The task is being created or cleaned up (the restart monitor's restart, a racing
            // client): for the moment it has none.
            Err(e) if e.code() == Code::Unavailable => None,
            Err(e) => return Err(e),
        };
        Ok(status_of_container(container, task.as_ref()))
    }

    /// Start the container's task with the caller's stdio attached as `stdio` says (None:
    /// detached, no stdio). A task that already ran is deleted first, as docker's `start` does.
    pub async fn start_container(
        &self,
        container: &ContainerInfo,
        stdio: Option<StdioConfig>,
    ) -> Result<Process> {
        self.start_task(container, stdio, true).await
    }

    /// [`Client::start_container`] for a container just created, which has no task yet: one
    /// round trip fewer on `run`'s path.
    pub async fn start_new_container(
        &self,
        container: &ContainerInfo,
        stdio: Option<StdioConfig>,
    ) -> Result<Process> {
        self.start_task(container, stdio, false).await
    }

    async fn start_task(
        &self,
        container: &ContainerInfo,
        stdio: Option<StdioConfig>,
        may_have_task: bool,
    ) -> Result<Process> {
        let tasks = self.tasks();
        let existing = if may_have_task {
            tasks.get(&container.id).await?
        } else {
            None
        };
        if let Some(task) = existing {
            match task.status {
                Status::Stopped => {
                    tasks.delete(&container.id).await?;
                }
                Status::Created => {
                    // Created but never started (a failed start): start afresh.
                    let _ = tasks.kill(&container.id, "", SIGKILL, true).await;
                    tasks.delete(&container.id).await?;
                }
                _ => {
                    return Err(Error::local(
                        Code::FailedPrecondition,
                        format!("container {} is already running", container.name),
                    ))
                }
            }
        }
        let fifos = stdio.map(|s| Fifos::new(&container.id, s)).transpose()?;
        let mut io = fifos.as_ref().map(Fifos::task_io).unwrap_or_default();
        // The shim writes the output to the container's log file (`berth logs`): detached,
        // as the stdio itself; attached, as a tee beside the FIFOs.
        if let Some(path) = container.labels.get(crate::logs::LOG_PATH_LABEL) {
            let uri = crate::logs::log_uri(std::path::Path::new(path), &container.labels).map_err(
                |e| Error::local(Code::Internal, format!("log directory of {path}: {e}")),
            )?;
            if fifos.is_none() {
                io.stdout = uri.clone();
                io.stderr = uri;
                if container.terminal() {
                    // The pty carries both streams; the shim joins its master to a socket
                    // `berth attach` connects to.
                    io.terminal = true;
                    io.stderr = String::new();
                    io.stdin = crate::attach::attach_uri(std::path::Path::new(path));
                } else if let Some(stdin) = crate::attach::prepare_stdin(container)? {
                    // A container made with -i keeps a stdin `berth attach` can write into.
                    io.stdin = stdin.to_string_lossy().into_owned();
                }
            } else {
                for s in [&mut io.stdout, &mut io.stderr] {
                    if !s.is_empty() {
                        *s = crate::logs::tee(s, &uri);
                    }
                }
            }
        }
        let (attached, stdin_done) = match (&fifos, stdio) {
            (Some(f), Some(s)) => {
                let (a, done) = attach(f, s);
                (Some(a), done)
            }
            _ => (None, None),
        };
        // Created and started by one call and one runtime command; a failure leaves no task.
        let pid = match tasks.create_started(container, &io).await {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(a) = attached {
                    a.cancel();
                }
                return Err(e.classify_start());
            }
        };
        close_stdin_when_done(self, &container.id, "", stdin_done);
        self.set_restart_status(container, Some("running")).await?;
        Ok(Process {
            client: self.clone(),
            container_id: container.id.clone(),
            exec_id: String::new(),
            pid,
            _fifos: fifos,
            attached,
        })
    }

    /// The status berthd's restart monitor keeps the container in; None takes the monitor off it.
    async fn set_restart_status(
        &self,
        container: &ContainerInfo,
        status: Option<&str>,
    ) -> Result<()> {
        if !container
            .labels
            .contains_key(crate::logs::RESTART_POLICY_LABEL)
        {
            return Ok(());
        }
        let mut labels = self.containers().get_by_id(&container.id).await?.labels;
        match status {
            Some(s) => labels.insert(crate::logs::RESTART_STATUS_LABEL.to_string(), s.to_string()),
            None => labels.remove(crate::logs::RESTART_STATUS_LABEL),
        };
        self.containers().set_labels(&container.id, labels).await
    }

    /// Send the container's stop signal, wait `timeout` (the container's own, else 10 s), then
    /// SIGKILL. Returns the exit status, or None if it was not running.
    pub async fn stop_container(
        &self,
        container: &ContainerInfo,
        timeout: Option<Duration>,
    ) -> Result<Option<ExitStatus>> {
        // An explicit stop is not undone by the restart monitor. The monitor is taken off the
        // container while it stops: told "stopped" at once it would SIGKILL the task within its
        // interval, cutting the grace period short, and delete it, so `ps` would show Created
        // instead of the exit. "stopped" is set once the task has exited.
        self.set_restart_status(container, None).await?;
        let stopped = self.stop_task(container, timeout).await;
        self.set_restart_status(container, Some("stopped")).await?;
        stopped
    }

    async fn stop_task(
        &self,
        container: &ContainerInfo,
        timeout: Option<Duration>,
    ) -> Result<Option<ExitStatus>> {
        let tasks = self.tasks();
        let Some(task) = tasks.get(&container.id).await? else {
            return Ok(None);
        };
        if !matches!(
            task.status,
            Status::Running | Status::Paused | Status::Pausing
        ) {
            return Ok(None);
        }
        let timeout = timeout
            .or_else(|| container.stop_timeout())
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        let signal = parse_signal(container.stop_signal())?;
        let paused = task.status != Status::Running;
        let waiter = {
            let tasks = self.tasks();
            let id = container.id.clone();
            tokio::spawn(async move { tasks.wait(&id, "").await })
        };
        ignore_gone(tasks.kill(&container.id, "", signal, false).await)?;
        if paused {
            // A frozen process acts on no signal until it is thawed.
            ignore_gone(tasks.resume(&container.id).await)?;
        }
        let waiter = match tokio::time::timeout(timeout, waiter).await {
            Ok(done) => return join(done).map(Some),
            Err(_) => {
                let tasks = self.tasks();
                let id = container.id.clone();
                tokio::spawn(async move { tasks.wait(&id, "").await })
            }
        };
        ignore_gone(tasks.kill(&container.id, "", SIGKILL, true).await)?;
        join(waiter.await).map(Some)
    }

    /// Remove a container whose task has exited (or that never had one): `run --rm`'s cleanup,
    /// without asking for the task's state first.
    pub async fn remove_exited_container(&self, container: &ContainerInfo) -> Result<()> {
        ignore_gone(self.tasks().delete(&container.id).await.map(|_| ()))?;
        self.containers().remove(container).await?;
        remove_logs(container);
        Ok(())
    }

    /// Remove the container: its stopped task, the record and the rootfs snapshot. A running
    /// container is refused unless `force`, which kills it first.
    pub async fn remove_container(&self, container: &ContainerInfo, force: bool) -> Result<()> {
        let tasks = self.tasks();
        let found = match tasks.get(&container.id).await {
            // Held by a create or a cleanup in the daemon (the restart monitor's, say): a forced
            // removal deals with whatever task settles there.
            Err(e) if force && e.code() == Code::Unavailable => Some(None),
            found => found?.map(Some),
        };
        if let Some(task) = found {
            let active = task
                .as_ref()
                .is_some_and(|t| t.status != Status::Stopped && t.status != Status::Created);
            if active && !force {
                return Err(Error::local(
                    Code::FailedPrecondition,
                    format!(
                        "cannot remove container {}: it is {}; stop it first (berth stop {}) or force removal (berth rm -f)",
                        container.name,
                        status_of(task).state(),
                        container.name
                    ),
                ));
            }
            // The restart monitor must not bring back what is being removed.
            self.set_restart_status(container, None).await?;
            self.kill_and_delete_tasks(container).await?;
        }
        self.containers().remove(container).await?;
        remove_logs(container);
        Ok(())
    }

    /// Kill and delete the container's task, and any the restart monitor brought in meanwhile:
    /// a restart that read the container before its restart label went may still create and
    /// start a task after the one found first is gone. Until the daemon says there is none (or
    /// TASK_SETTLE passes), each task found is killed, waited for and deleted. Removing the
    /// record while a task lives would orphan the task, its shim and its rootfs mount
    /// (issue 15: `rm -f` of a flapping `--restart always` container left one).
    async fn kill_and_delete_tasks(&self, container: &ContainerInfo) -> Result<()> {
        let tasks = self.tasks();
        let id = container.id.as_str();
        let deadline = tokio::time::Instant::now() + TASK_SETTLE;
        loop {
            let round = async {
                let Some(task) = tasks.get(id).await? else {
                    return Ok(true);
                };
                if task.status != Status::Stopped {
                    // Created too: the monitor may start it between the kill and the delete.
                    let waiter = {
                        let tasks = self.tasks();
                        let id = id.to_string();
                        tokio::spawn(async move { tasks.wait(&id, "").await })
                    };
                    ignore_gone(tasks.kill(id, "", SIGKILL, true).await)?;
                    if matches!(task.status, Status::Paused | Status::Pausing) {
                        ignore_gone(tasks.resume(id).await)?;
                    }
                    match join(waiter.await) {
                        Err(e) if e.code() != Code::NotFound => return Err(e),
                        _ => {}
                    }
                }
                match tasks.delete(id).await {
                    Err(e) if e.code() != Code::NotFound => Err(e),
                    _ => Ok(false),
                }
            }
            .await;
            match round {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // Running again (started by the monitor after the look), or held by a create
                // or a cleanup in the daemon: look again.
                Err(e)
                    if matches!(e.code(), Code::FailedPrecondition | Code::Unavailable)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Run `process` (an OCI process spec) in the running container with stdio attached as
    /// `stdio` says (None: detached).
    pub async fn exec(
        &self,
        container: &ContainerInfo,
        process: &serde_json::Value,
        stdio: Option<StdioConfig>,
    ) -> Result<Process> {
        let tasks = self.tasks();
        match tasks.get(&container.id).await? {
            Some(t) if t.status == Status::Running => {}
            Some(t) => {
                return Err(Error::local(
                    Code::FailedPrecondition,
                    format!(
                        "container {} is {}, not running",
                        container.name,
                        status_of(Some(t)).state()
                    ),
                ))
            }
            None => {
                return Err(Error::local(
                    Code::FailedPrecondition,
                    format!("container {} is not running", container.name),
                ))
            }
        }
        let exec_id = format!("exec-{}", crate::names::short_id(&crate::names::new_id()));
        let fifos = stdio.map(|s| Fifos::new(&exec_id, s)).transpose()?;
        let io: TaskIo = fifos.as_ref().map(Fifos::task_io).unwrap_or_default();
        let (attached, stdin_done) = match (&fifos, stdio) {
            (Some(f), Some(s)) => {
                let (a, done) = attach(f, s);
                (Some(a), done)
            }
            _ => (None, None),
        };
        let started = async {
            tasks.exec(&container.id, &exec_id, process, &io).await?;
            tasks.start(&container.id, &exec_id).await
        }
        .await;
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(a) = attached {
                    a.cancel();
                }
                let _ = tasks.delete_process(&container.id, &exec_id).await;
                return Err(e.classify_start());
            }
        };
        close_stdin_when_done(self, &container.id, &exec_id, stdin_done);
        Ok(Process {
            client: self.clone(),
            container_id: container.id.clone(),
            exec_id,
            pid,
            _fifos: fifos,
            attached,
        })
    }
}

fn status_of(task: Option<crate::tasks::ProcessState>) -> ContainerStatus {
    match task {
        None => ContainerStatus::Created,
        Some(t) => status_of_task(&t),
    }
}

/// The status a container with this task has.
pub fn status_of_task(t: &crate::tasks::ProcessState) -> ContainerStatus {
    match t.status {
        Status::Created => ContainerStatus::Created,
        Status::Running => ContainerStatus::Running {
            pid: t.pid,
            started_at: process_start_time(t.pid),
        },
        Status::Paused | Status::Pausing => ContainerStatus::Paused {
            pid: t.pid,
            started_at: process_start_time(t.pid),
        },
        Status::Stopped => ContainerStatus::Exited {
            code: t.exit_status,
            at: t.exited_at,
        },
        Status::Unknown => ContainerStatus::Unknown,
    }
}

/// A process that exited meanwhile is what a kill or resume wanted anyway.
fn ignore_gone(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if matches!(e.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
        other => other,
    }
}

fn join(r: std::result::Result<Result<ExitStatus>, tokio::task::JoinError>) -> Result<ExitStatus> {
    r.map_err(|e| Error::local(Code::Internal, format!("waiting for the task: {e}")))?
}

/// The container's log directory goes with it (only the one its own label names).
fn remove_logs(container: &ContainerInfo) {
    if let Some(path) = container.labels.get(crate::logs::LOG_PATH_LABEL) {
        let p = std::path::Path::new(path);
        if p.file_name()
            .map(|f| f.to_string_lossy() == format!("{}.log", container.id))
            == Some(true)
        {
            crate::logs::remove_logs(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_docker_writes_them() {
        let now = SystemTime::now();
        let ago = |s| Some(now - Duration::from_secs(s));
        assert_eq!(ContainerStatus::Created.describe(now), "Created");
        let up = ContainerStatus::Running {
            pid: 1,
            started_at: ago(3),
        };
        assert_eq!(up.describe(now), "Up 3 seconds");
        let paused = ContainerStatus::Paused {
            pid: 1,
            started_at: ago(125),
        };
        assert_eq!(paused.describe(now), "Up 2 minutes (Paused)");
        let exited = ContainerStatus::Exited {
            code: 137,
            at: ago(7200),
        };
        assert_eq!(exited.describe(now), "Exited (137) 2 hours ago");
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
        assert_eq!(human_duration(Duration::from_secs(90)), "About a minute");
    }

    #[test]
    fn our_own_start_time_is_in_the_past() {
        let t = process_start_time(std::process::id()).expect("our own /proc entry");
        let age = SystemTime::now()
            .duration_since(t)
            .expect("started before now");
        assert!(age < Duration::from_secs(3600 * 24), "{age:?}");
    }
}
