//! Tasks: running containers, each through a backend (`backend.rs`; today one berth-shim per
//! container, shim/README.md being the shim's contract).
//!
//! The backend is the source of truth for a task's processes: berthd keeps only which tasks
//! exist and how to reach what runs them, asks on every call, and rebuilds its table from the
//! bundles on disk after a restart (`recover`). Every transition publishes containerd's event.
//! Nothing in this module speaks a backend's protocol or knows how one is launched.
//!
//! On disk, under the state dir (tmpfs in production: tasks do not survive a reboot):
//! - `tasks/<ns>/<id>/` the bundle (0700): `config.json` (the container's spec verbatim),
//!   `rootfs/` (the snapshot mounts), `task.json` (how berthd launched it), the shim's files;
//! - `s/<hash>/` the shim's sockets (0700): short, so socket paths fit whatever the ids;
//! - `runc/<ns>/` runc's state (the default runtime root).

pub mod backend;
pub mod config;
mod recovery;
pub mod shim;
pub mod types;

use crate::blocking::blocking;
use crate::events::Exchange;
pub use backend::{Backends, NewTask, ShimSettings, TaskBackend};
use berth_api::containerd::events::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIo, TaskOom, TaskPaused,
    TaskResumed, TaskStart,
};
use berth_api::containerd::runc::v1::Options as RuncOptions;
use berth_api::containerd::services::containers::v1::Container;
use berth_api::containerd::types::Mount;
use berth_errdefs::{Error, Result};
pub use config::{RuntimeConfig, DEFAULT_RUNTIME};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
pub use types::{timestamp, Exit, ProcessPid, ProcessState, Status};

/// The longest socket name the shim binds in its socket dir is `console.sock`; sun_path is 108.
const MAX_SOCKET_DIR_LEN: usize = 107 - "/console.sock".len();

/// How berthd launched a task: which backend runs it, and enough to clean up after one that died.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub namespace: String,
    pub id: String,
    /// The runtime's name in the config (`[runtimes.NAME]`).
    pub runtime: String,
    /// The runtime's type, which picks the backend (`Backends`). Records written before it
    /// existed were all berth-shim's.
    #[serde(default = "default_runtime_type")]
    pub runtime_type: String,
    pub binary_name: String,
    /// runc's --root, the namespace included.
    pub runc_root: PathBuf,
    pub systemd_cgroup: bool,
    #[serde(default)]
    pub no_pivot_root: bool,
    #[serde(default)]
    pub no_new_keyring: bool,
}

fn default_runtime_type() -> String {
    DEFAULT_RUNTIME.to_string()
}

/// A task berthd knows: where its bundle is and how to reach what runs it.
#[derive(Debug)]
pub struct Task {
    pub record: TaskRecord,
    pub bundle: PathBuf,
    socket_dir: PathBuf,
    pub backend: TaskBackend,
    /// The init process's pid (fixed at create).
    pub pid: u32,
    /// Held by Start until its event is out, and taken by the exit watchers before they publish:
    /// a process that exits at once is still reported started before exited.
    lifecycle: tokio::sync::Mutex<()>,
}

/// The stdio of a process as the client named it.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

pub struct CreateTask {
    pub namespace: String,
    pub container: Container,
    pub rootfs: Vec<Mount>,
    pub stdio: Stdio,
    /// `containerd.runc.v1.Options` for this task; overrides the container's.
    pub options: Option<prost_types::Any>,
    /// Start the task too ([`berth_api::START_ON_CREATE_HEADER`]).
    pub start: bool,
}

/// A table slot: `Creating` while a reservation holds the id for a create, `Busy` while a
/// cleanup or recovery owns it, so nothing else races either.
enum Slot {
    Creating,
    Busy,
    Ready(Arc<Task>),
}

pub struct TaskManager {
    state_dir: PathBuf,
    backends: Backends,
    runtimes: BTreeMap<String, RuntimeConfig>,
    /// How long a backend may take to answer whether it lives (after a restart, after a broken
    /// wait).
    connect_timeout: Duration,
    events: Exchange,
    tasks: Mutex<HashMap<(String, String), Slot>>,
    /// Woken whenever a Busy slot settles (the task is created, or the slot is released).
    settled: tokio::sync::Notify,
}

/// How long a Get or CloseIO waits for a task being created or cleaned up to settle.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// An id's slot held Busy until this is dropped (released on every path, errors included): what
/// a caller does between reserving and creating, and undoes after a failed create (attaching the
/// container's networks), cannot race another create or a cleanup of the same id.
pub struct Reservation<'a> {
    manager: &'a TaskManager,
    key: (String, String),
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        {
            let mut tasks = self.manager.lock();
            if matches!(tasks.get(&self.key), Some(Slot::Busy | Slot::Creating)) {
                tasks.remove(&self.key);
            }
        }
        self.manager.settled.notify_waiters();
    }
}

impl TaskManager {
    pub fn new(
        state_dir: &Path,
        backends: Backends,
        runtimes: BTreeMap<String, RuntimeConfig>,
        connect_timeout: Duration,
        events: Exchange,
    ) -> Result<TaskManager> {
        let manager = TaskManager {
            state_dir: state_dir.to_path_buf(),
            backends,
            runtimes,
            connect_timeout,
            events,
            tasks: Mutex::new(HashMap::new()),
            settled: tokio::sync::Notify::new(),
        };
        let probe = manager.socket_dir("n", "i");
        if probe.as_os_str().len() > MAX_SOCKET_DIR_LEN {
            return Err(Error::invalid(format!(
                "state dir {} is too long for the shims' unix sockets (at most {} bytes)",
                state_dir.display(),
                MAX_SOCKET_DIR_LEN - (probe.as_os_str().len() - state_dir.as_os_str().len())
            )));
        }
        for dir in [manager.tasks_dir(), manager.state_dir.join("s")] {
            crate::fsutil::make_dir(&dir, 0o711)?;
        }
        Ok(manager)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Slot>> {
        // A poisoned lock only means another thread panicked mid-update of a plain map.
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `task`'s slot for a teardown (makes it Busy) if `task` still holds it; false when a
    /// delete or a dead-task cleanup took it first. The look and the take are one step under the
    /// lock, so of several finders of one task exactly one tears it down.
    fn claim_slot(&self, task: &Arc<Task>) -> bool {
        let key = (task.record.namespace.clone(), task.record.id.clone());
        let mut tasks = self.lock();
        match tasks.get(&key) {
            Some(Slot::Ready(t)) if Arc::ptr_eq(t, task) => {
                tasks.insert(key, Slot::Busy);
                true
            }
            _ => false,
        }
    }

    fn tasks_dir(&self) -> PathBuf {
        self.state_dir.join("tasks")
    }

    fn bundle_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.tasks_dir().join(ns).join(id)
    }

    fn socket_dir(&self, ns: &str, id: &str) -> PathBuf {
        let hash = Sha256::digest(format!("{ns}/{id}").as_bytes());
        self.state_dir.join("s").join(&hex::encode(hash)[..16])
    }

    /// Holds `ns/id`'s slot for a create: AlreadyExists if it has a task, Unavailable while
    /// another create or a cleanup holds it.
    pub fn reserve(&self, ns: &str, id: &str) -> Result<Reservation<'_>> {
        let key = (ns.to_string(), id.to_string());
        let mut tasks = self.lock();
        match tasks.get(&key) {
            Some(Slot::Ready(_)) => Err(Error::exists(format!("task {id} already exists"))),
            Some(Slot::Busy | Slot::Creating) => Err(Error::unavailable(format!(
                "task {id} is being created or cleaned up; retry"
            ))),
            None => {
                tasks.insert(key.clone(), Slot::Creating);
                Ok(Reservation { manager: self, key })
            }
        }
    }

    /// The task of container `id` in `ns`. A task being created or cleaned up is Unavailable,
    /// not NotFound: a client must not take it for gone (ctr removes the container's snapshot
    /// on NotFound, which may still be mounted).
    pub fn get(&self, ns: &str, id: &str) -> Result<Arc<Task>> {
        match self.lock().get(&(ns.to_string(), id.to_string())) {
            Some(Slot::Ready(t)) => Ok(t.clone()),
            Some(Slot::Busy | Slot::Creating) => Err(Error::unavailable(format!(
                "task {id} is being created or cleaned up; retry"
            ))),
            None => Err(Error::not_found(format!("no task for container {id}"))),
        }
    }

    /// Waits (at most SETTLE_WITHIN) while `ns/id`'s slot is held for a create. A client may
    /// ask about a task while its create is still under way: nerdctl's `run -i` closes stdin as
    /// soon as its input ends, which can be while runc create runs, since the shim opens the
    /// stdin FIFO first (containerd's shim opens it after runc create, so there the window is
    /// tiny); the answer waits for the create rather than telling the client to retry, which it
    /// does not. A slot Busy with a cleanup or a recovery is not waited for: a stopped shim is
    /// probed until it answers, and the caller gets Unavailable at once.
    pub async fn settled(&self, ns: &str, id: &str) {
        let key = (ns.to_string(), id.to_string());
        let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            // Registered before the look, so a settle between the look and the wait is seen.
            notified.as_mut().enable();
            if !matches!(self.lock().get(&key), Some(Slot::Creating)) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Every task of a namespace, by id.
    /// Every task of every namespace (metrics, the SIGUSR1 dump).
    pub fn all(&self) -> Vec<Arc<Task>> {
        let mut v: Vec<_> = self
            .lock()
            .values()
            .filter_map(|slot| match slot {
                Slot::Ready(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.record.namespace, &a.record.id).cmp(&(&b.record.namespace, &b.record.id))
        });
        v
    }

    pub fn in_namespace(&self, ns: &str) -> Vec<Arc<Task>> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .filter_map(|((n, _), slot)| match slot {
                Slot::Ready(t) if n == ns => Some(t.clone()),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        v
    }

    /// The runtime a container asks for, with the task's own runc options applied on top.
    fn resolve_runtime(
        &self,
        ns: &str,
        container: &Container,
        task_options: Option<&prost_types::Any>,
    ) -> Result<(String, RuntimeConfig)> {
        let name = container
            .runtime
            .as_ref()
            .map(|r| r.name.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_RUNTIME);
        let mut rt = self.runtimes.get(name).cloned().ok_or_else(|| {
            Error::not_found(format!(
                "runtime {name:?} is not configured (configured: {})",
                self.runtimes.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let container_options = container.runtime.as_ref().and_then(|r| r.options.as_ref());
        // The container's options, then the task's on top, field by field: `ctr run
        // --runc-binary crun --no-pivot` puts the binary in the first and the flag in the second.
        for any in [container_options, task_options]
            .into_iter()
            .flatten()
            .filter(|a| !a.type_url.is_empty())
        {
            let o: RuncOptions = berth_api::unpack_any(any).map_err(|e| {
                Error::invalid(format!(
                    "runtime options: {e} (berth's runtime takes containerd.runc.v1.Options)"
                ))
            })?;
            if !o.binary_name.is_empty() {
                rt.binary_name = o.binary_name;
            }
            if !o.root.is_empty() {
                rt.root = PathBuf::from(o.root);
            }
            rt.systemd_cgroup |= o.systemd_cgroup;
            rt.no_pivot_root |= o.no_pivot_root;
            rt.no_new_keyring |= o.no_new_keyring;
            if !o.shim_cgroup.is_empty() {
                rt.shim_cgroup = o.shim_cgroup;
            }
        }
        if rt.root.as_os_str().is_empty() {
            rt.root = self.state_dir.join("runc");
        }
        if !rt.root.is_absolute() {
            return Err(Error::invalid(format!(
                "runtime root {} must be an absolute path",
                rt.root.display()
            )));
        }
        // containerd keeps one runc root per namespace: container ids are unique only there.
        rt.root = rt.root.join(ns);
        Ok((name.to_string(), rt))
    }

    /// Create the task of a container: bundle, rootfs, shim, `runc create`. On failure nothing
    /// is left behind.
    pub async fn create(self: &Arc<Self>, req: CreateTask) -> Result<Arc<Task>> {
        let reservation = self.reserve(&req.namespace, &req.container.id)?;
        self.create_reserved(&reservation, req).await
    }

    /// [`create`](Self::create) in a slot the caller reserved and keeps until it is done.
    pub async fn create_reserved(
        self: &Arc<Self>,
        reservation: &Reservation<'_>,
        req: CreateTask,
    ) -> Result<Arc<Task>> {
        let ns = req.namespace.clone();
        let id = req.container.id.clone();
        if reservation.key != (ns.clone(), id.clone())
            || !std::ptr::eq(reservation.manager, &**self)
        {
            return Err(Error::internal(format!(
                "task {ns}/{id} created in a slot reserved for {}/{}",
                reservation.key.0, reservation.key.1
            )));
        }
        let (runtime, rt) = self.resolve_runtime(&ns, &req.container, req.options.as_ref())?;
        let spec = req
            .container
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .ok_or_else(|| Error::precondition(format!("container {id} has no spec")))?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .map_err(|e| Error::invalid(format!("container {id}: spec is not JSON: {e}")))?;

        let bundle = self.bundle_dir(&ns, &id);
        let socket_dir = self.socket_dir(&ns, &id);
        let record = TaskRecord {
            namespace: ns.clone(),
            id: id.clone(),
            runtime,
            runtime_type: rt.kind.clone(),
            binary_name: rt.binary_name.clone(),
            runc_root: rt.root.clone(),
            systemd_cgroup: rt.systemd_cgroup,
            no_pivot_root: rt.no_pivot_root,
            no_new_keyring: rt.no_new_keyring,
        };
        let started = std::time::Instant::now();
        // Leftovers of a create that died with an earlier daemon go first.
        remove_task_dirs(&bundle, &socket_dir).await?;
        // The directories first: the shim starts in them while the rootfs is mounted and the
        // spec written beside its start (it reads neither before `create`).
        let prepared = {
            let (bundle, socket_dir, record) = (bundle.clone(), socket_dir.clone(), record.clone());
            let shim_cgroup = rt.shim_cgroup.clone();
            let spec = spec.clone();
            blocking(move || {
                let dirs = shim_cgroup_dirs(&shim_cgroup)?;
                prepare_bundle_dirs(&bundle, &socket_dir, &record, &spec)?;
                Ok(dirs)
            })
            .await
        };
        let bundle_ready = started.elapsed();
        let launched = match prepared {
            Ok(shim_cgroup_dirs) => {
                let filled = {
                    let bundle = bundle.clone();
                    let rootfs = crate::snapshots::from_api_mounts(req.rootfs.clone());
                    blocking(move || fill_bundle(&bundle, &spec, &rootfs))
                };
                self.backends
                    .create(
                        NewTask {
                            record: &record,
                            bundle: &bundle,
                            socket_dir: &socket_dir,
                            stdio: &req.stdio,
                            shim_cgroup_dirs: &shim_cgroup_dirs,
                            start: req.start,
                        },
                        filled,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let (backend, pid) = match launched {
            Ok(ok) => ok,
            Err(e) => {
                if let Err(clean) = remove_task_dirs(&bundle, &socket_dir).await {
                    tracing::warn!(task = %id, error = %clean, "cleaning up after a failed create");
                }
                return Err(e);
            }
        };
        tracing::debug!(
            task = %id,
            bundle_ms = bundle_ready.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "task created"
        );
        let task = Arc::new(Task {
            record,
            bundle: bundle.clone(),
            socket_dir,
            backend,
            pid,
            lifecycle: Default::default(),
        });
        // Started already: its exit, if it comes at once, is published after /tasks/start.
        let starting = match req.start {
            true => Some(task.lifecycle.lock().await),
            false => None,
        };
        // The caller's reservation now finds the slot Ready and leaves it.
        self.lock()
            .insert((ns.clone(), id.clone()), Slot::Ready(task.clone()));
        self.settled.notify_waiters();
        self.watch_exit(task.clone(), String::new());
        // From create, not start: runc has put init in its cgroup, and a process that runs out
        // of memory at once must not slip past the monitor.
        self.watch_oom(&task);
        self.events.publish(
            &ns,
            "/tasks/create",
            &TaskCreate {
                container_id: id,
                bundle: bundle.display().to_string(),
                rootfs: req.rootfs,
                io: Some(TaskIo {
                    stdin: req.stdio.stdin,
                    stdout: req.stdio.stdout,
                    stderr: req.stdio.stderr,
                    terminal: req.stdio.terminal,
                }),
                checkpoint: String::new(),
                pid,
            },
        );
        if starting.is_some() {
            self.events.publish(
                &ns,
                "/tasks/start",
                &TaskStart {
                    container_id: task.record.id.clone(),
                    pid,
                },
            );
        }
        drop(starting);
        Ok(task)
    }

    /// Publish /tasks/exit when a process ends (one open `wait` per process). If init's wait
    /// breaks because the shim died (not because the task was deleted), the task is cleaned up
    /// as a restart would, and its exit reported from the shim's record (or 255, as containerd).
    fn watch_exit(self: &Arc<Self>, task: Arc<Task>, exec_id: String) {
        let manager = self.clone();
        tokio::spawn(async move {
            let id = if exec_id.is_empty() {
                task.record.id.clone()
            } else {
                exec_id.clone()
            };
            let exit = match task.backend.wait(&exec_id).await {
                Ok(exit) => exit,
                Err(_) if exec_id.is_empty() && manager.backend_died(&task).await => {
                    let record = manager
                        .backends
                        .recorded_exit(Some(&task.record), &task.bundle);
                    manager.clean_up_dead_task(&task, "the shim exited unexpectedly".into());
                    Exit {
                        pid: task.pid,
                        exit_status: record.as_ref().map_or(255, |r| r.exit_status),
                        exited_at: Some(
                            record
                                .and_then(|r| r.exited_at)
                                .unwrap_or_else(std::time::SystemTime::now),
                        ),
                    }
                }
                // Deleted (Delete publishes its own event), or the daemon is going away.
                Err(_) => return,
            };
            let _started = task.lifecycle.lock().await;
            manager.events.publish(
                &task.record.namespace,
                "/tasks/exit",
                &TaskExit {
                    container_id: task.record.id.clone(),
                    id,
                    pid: exit.pid,
                    exit_status: exit.exit_status,
                    exited_at: exit.exited_at.map(timestamp),
                },
            );
        });
    }

    /// Whether `task` is still this daemon's live task but its backend no longer answers.
    async fn backend_died(&self, task: &Arc<Task>) -> bool {
        let current = match self
            .lock()
            .get(&(task.record.namespace.clone(), task.record.id.clone()))
        {
            Some(Slot::Ready(t)) => Arc::ptr_eq(t, task),
            _ => false,
        };
        current && !task.backend.answers(self.connect_timeout).await
    }

    /// Publish /tasks/oom for every OOM kill in the task's cgroup while it lives.
    fn watch_oom(&self, task: &Arc<Task>) {
        match berth_cgroups::Cgroup::of_pid(task.pid).and_then(|c| c.oom_monitor()) {
            Ok(monitor) => self.publish_ooms(task, monitor),
            Err(e) => tracing::debug!(task = %task.record.id, error = %e, "no OOM monitoring"),
        }
    }

    fn publish_ooms(&self, task: &Arc<Task>, mut monitor: berth_cgroups::OomMonitor) {
        let events = self.events.clone();
        let (ns, id) = (task.record.namespace.clone(), task.record.id.clone());
        tokio::spawn(async move {
            while let Ok(true) = monitor.next().await {
                events.publish(
                    &ns,
                    "/tasks/oom",
                    &TaskOom {
                        container_id: id.clone(),
                    },
                );
            }
        });
    }

    pub async fn start(self: &Arc<Self>, ns: &str, id: &str, exec_id: &str) -> Result<u32> {
        let task = self.get(ns, id)?;
        let _lifecycle = task.lifecycle.lock().await;
        let pid = task.backend.start(exec_id).await?;
        if exec_id.is_empty() {
            self.events.publish(
                ns,
                "/tasks/start",
                &TaskStart {
                    container_id: id.to_string(),
                    pid,
                },
            );
        } else {
            self.events.publish(
                ns,
                "/tasks/exec-started",
                &TaskExecStarted {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    pid,
                },
            );
        }
        Ok(pid)
    }

    /// The state of init (`exec_id` "") or of an exec.
    pub async fn state(&self, ns: &str, id: &str, exec_id: &str) -> Result<ProcessState> {
        let task = self.get(ns, id)?;
        task.state(exec_id).await
    }

    /// Init's state of every task of a namespace, asked of all shims at once. A task whose shim
    /// does not answer and whose process is gone (SIGKILLed, OOM-killed) is cleaned up as
    /// recovery cleans a dead task at start (`runc delete --force`, unmount, bundle removed):
    /// hidden from the listing, nothing else would ever reach it while berthd runs, and its
    /// cgroup and rootfs mount would stay (the crash trials' `--kill-shims` found both).
    pub async fn list(self: &Arc<Self>, ns: &str) -> Vec<(Arc<Task>, ProcessState)> {
        let mut set = tokio::task::JoinSet::new();
        for (i, task) in self.in_namespace(ns).into_iter().enumerate() {
            set.spawn(async move {
                let state = task.state("").await;
                (i, task, state)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, task, Ok(state))) => out.push((i, task, state)),
                // Deleted meanwhile, or its shim is gone: not a task to show.
                Ok((_, task, Err(e))) => {
                    tracing::debug!(task = %task.record.id, error = %e, "not listed");
                    self.clean_up_if_shim_died(&task, &e);
                }
                Err(e) => tracing::warn!(error = %e, "listing a task failed"),
            }
        }
        out.sort_by_key(|(i, ..)| *i);
        out.into_iter().map(|(_, t, s)| (t, s)).collect()
    }

    /// When `task`'s shim process is gone, clean the task up in the background (its slot is
    /// held meanwhile); a shim that is only slow keeps its task.
    fn clean_up_if_shim_died(self: &Arc<Self>, task: &Arc<Task>, error: &Error) {
        let TaskBackend::Shim(_) = &task.backend;
        if shim::shim_process_alive(&task.bundle) {
            return;
        }
        // Only the task still in its slot: a delete or another cleanup may have taken it.
        self.clean_up_dead_task(task, format!("shim gone while berthd runs: {error}"));
    }

    pub async fn kill(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<()> {
        self.get(ns, id)?.backend.kill(exec_id, signal, all).await
    }

    pub async fn exec(
        self: &Arc<Self>,
        ns: &str,
        id: &str,
        exec_id: &str,
        spec: serde_json::Value,
        stdio: Stdio,
    ) -> Result<()> {
        let task = self.get(ns, id)?;
        task.backend.exec(exec_id, spec, stdio).await?;
        self.watch_exit(task, exec_id.to_string());
        self.events.publish(
            ns,
            "/tasks/exec-added",
            &TaskExecAdded {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            },
        );
        Ok(())
    }

    pub async fn resize_pty(
        &self,
        ns: &str,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let task = self.get(ns, id)?;
        task.backend.resize_pty(exec_id, width, height).await
    }

    pub async fn close_stdin(&self, ns: &str, id: &str, exec_id: &str) -> Result<()> {
        self.get(ns, id)?.backend.close_stdin(exec_id).await
    }

    pub async fn pause(&self, ns: &str, id: &str, pause: bool) -> Result<()> {
        self.get(ns, id)?.backend.pause(pause).await?;
        let container_id = id.to_string();
        if pause {
            self.events
                .publish(ns, "/tasks/paused", &TaskPaused { container_id });
        } else {
            self.events
                .publish(ns, "/tasks/resumed", &TaskResumed { container_id });
        }
        Ok(())
    }

    pub async fn pids(&self, ns: &str, id: &str) -> Result<Vec<ProcessPid>> {
        self.get(ns, id)?.backend.pids().await
    }

    pub async fn update(&self, ns: &str, id: &str, resources: serde_json::Value) -> Result<()> {
        self.get(ns, id)?.backend.update(resources).await
    }

    /// Block until the process has exited (at once if it has).
    pub async fn wait(&self, ns: &str, id: &str, exec_id: &str) -> Result<Exit> {
        self.get(ns, id)?.backend.wait(exec_id).await
    }

    /// Delete an exec process that has finished.
    pub async fn delete_process(&self, ns: &str, id: &str, exec_id: &str) -> Result<Exit> {
        let task = self.get(ns, id)?;
        let exit = task.backend.delete(exec_id).await?;
        self.publish_delete(ns, id, exec_id, &exit);
        Ok(exit)
    }

    /// Delete a stopped (or never started) task: `runc delete`, the shim, the rootfs mount and
    /// the bundle. A running or paused task is refused (kill it first).
    pub async fn delete(&self, ns: &str, id: &str) -> Result<Exit> {
        let task = self.get(ns, id)?;
        let exit = task.backend.delete("").await?;
        let key = (ns.to_string(), id.to_string());
        if !self.claim_slot(&task) {
            // The shim died right after it deleted init, and the dead-task cleanup holds the
            // slot: the bundle is that cleanup's to remove, and releasing its slot here would
            // let a new create of the id run into it.
            self.publish_delete(ns, id, "", &exit);
            return Ok(exit);
        }
        let reservation = Reservation { manager: self, key };
        if let Err(e) = task.backend.shutdown().await {
            tracing::warn!(task = %id, error = %e, "shim shutdown");
        }
        let cleaned = remove_task_dirs(&task.bundle, &task.socket_dir).await;
        drop(reservation);
        cleaned?;
        self.publish_delete(ns, id, "", &exit);
        Ok(exit)
    }

    fn publish_delete(&self, ns: &str, id: &str, exec_id: &str, exit: &Exit) {
        self.events.publish(
            ns,
            "/tasks/delete",
            &TaskDelete {
                container_id: id.to_string(),
                pid: exit.pid,
                exit_status: exit.exit_status,
                exited_at: exit.exited_at.map(timestamp),
                id: if exec_id.is_empty() { id } else { exec_id }.to_string(),
            },
        );
    }
}

impl Task {
    pub async fn state(&self, exec_id: &str) -> Result<ProcessState> {
        self.backend.state(exec_id).await
    }
}

/// The directories of the cgroup the shim is to join (`shim_cgroup`), made where missing; none
/// for "".
fn shim_cgroup_dirs(path: &str) -> Result<Vec<PathBuf>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    berth_cgroups::dirs::create(path).map_err(|e| {
        let msg = format!("shim cgroup {path:?}: {e}");
        match e.kind() {
            std::io::ErrorKind::InvalidInput => Error::invalid(msg),
            _ => Error::internal(msg),
        }
    })
}

/// The bundle (0700) with task.json, and the socket dir (0700): what the shim starts in.
fn prepare_bundle_dirs(
    bundle: &Path,
    socket_dir: &Path,
    record: &TaskRecord,
    spec: &[u8],
) -> Result<()> {
    make_bundle_dir(bundle)?;
    mkdir_private(socket_dir)?;
    if let Some(gid) = remapped_root_gid(spec)? {
        // With a user namespace, runc's container root must reach the rootfs through the bundle
        // (as containerd does): group of the remapped root, 0710; others still get nothing.
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(bundle, None, Some(gid))
            .and_then(|()| std::fs::set_permissions(bundle, std::fs::Permissions::from_mode(0o710)))
            .map_err(|e| Error::io(format!("chown {} to gid {gid}", bundle.display()), e))?;
    }
    let record_json = serde_json::to_vec(record)
        .map_err(|e| Error::internal(format!("encoding task record: {e}")))?;
    write_in_bundle(bundle, "task.json", &record_json)
}

fn write_in_bundle(bundle: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = bundle.join(name);
    std::fs::write(&path, bytes).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// The rest of the bundle, which runc reads: config.json and the mounted rootfs.
fn fill_bundle(bundle: &Path, spec: &[u8], rootfs: &[berth_snapshotter::Mount]) -> Result<()> {
    write_in_bundle(bundle, "config.json", spec)?;
    if !rootfs.is_empty() {
        let target = bundle.join("rootfs");
        mkdir_private(&target)?;
        berth_snapshotter::mount_all(rootfs, &target)?;
    }
    Ok(())
}

/// The host gid of the container's root group, when the spec asks for a user namespace.
fn remapped_root_gid(spec: &[u8]) -> Result<Option<u32>> {
    #[derive(Deserialize)]
    struct Spec {
        linux: Option<Linux>,
    }
    #[derive(Deserialize)]
    struct Linux {
        #[serde(rename = "gidMappings", default)]
        gid_mappings: Vec<IdMapping>,
    }
    #[derive(Deserialize)]
    struct IdMapping {
        #[serde(rename = "containerID")]
        container_id: u32,
        #[serde(rename = "hostID")]
        host_id: u32,
        size: u32,
    }
    let spec: Spec =
        serde_json::from_slice(spec).map_err(|e| Error::invalid(format!("spec: {e}")))?;
    let mappings = spec.linux.map(|l| l.gid_mappings).unwrap_or_default();
    if mappings.is_empty() {
        return Ok(None);
    }
    mappings
        .iter()
        .find(|m| m.container_id == 0 && m.size > 0)
        .map(|m| Some(m.host_id))
        .ok_or_else(|| Error::invalid("spec: the gid mappings do not map the container's gid 0"))
}

/// Unmount whatever is mounted in the bundle and remove it and the socket dir; absent is fine,
/// and so is running it again.
/// Creates `dir` (0700); it must not exist.
fn mkdir_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("create {}", dir.display()), e))
}

/// Held while a namespace dir is made with a bundle in it, or removed because it is empty: a
/// task's removal must not take the namespace dir away between another task's making of it and
/// of its bundle in it (a Tasks.Create failed with NotFound, "chmod <tasks>/<namespace>", about
/// once in 8,000 create/delete cycles of 8 clients in one namespace).
static NS_DIRS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock_ns_dirs() -> std::sync::MutexGuard<'static, ()> {
    NS_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Creates the bundle dir `<tasks>/<namespace>/<id>`, and its namespace dir if needed.
fn make_bundle_dir(bundle: &Path) -> Result<()> {
    let _ns_dirs = lock_ns_dirs();
    if let Some(ns_dir) = bundle.parent() {
        crate::fsutil::make_dir(ns_dir, 0o711)?;
    }
    mkdir_private(bundle)
}

/// Removes the namespace dir of `bundle` if no other task's bundle is in it: the namespace dir
/// goes with its last task.
fn remove_ns_dir_if_empty(bundle: &Path) {
    let _ns_dirs = lock_ns_dirs();
    if let Some(ns_dir) = bundle.parent() {
        let _ = std::fs::remove_dir(ns_dir);
    }
}

async fn remove_task_dirs(bundle: &Path, socket_dir: &Path) -> Result<()> {
    let (bundle, socket_dir) = (bundle.to_path_buf(), socket_dir.to_path_buf());
    blocking(move || {
        // Every mount the table lists below the bundle, whatever the record says was mounted
        // (removing a bundle through a live mount would delete the container's files), and a
        // busy one detached rather than left: the daemon owns the bundle, and after a shim died
        // in the middle of a create nothing else would ever unmount it (issue 15).
        if bundle.exists() {
            berth_snapshotter::unmount_under(&bundle)?;
        }
        for dir in [&bundle, &socket_dir] {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("remove {}", dir.display()), e))
                }
                _ => {}
            }
        }
        remove_ns_dir_if_empty(&bundle);
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle is made whatever another task's removal does to their namespace dir at the same
    /// time (see `NS_DIRS`).
    #[test]
    fn bundles_are_made_while_other_tasks_of_the_namespace_go() {
        const CYCLES: u32 = 5_000;
        let root = tempfile::tempdir().expect("temp dir");
        let cycles = |id: &str| {
            let bundle = root.path().join("ns").join(id);
            std::thread::spawn(move || {
                for n in 0..CYCLES {
                    make_bundle_dir(&bundle).map_err(|e| format!("cycle {n}: {e}"))?;
                    std::fs::remove_dir(&bundle).map_err(|e| format!("cycle {n}: {e}"))?;
                    remove_ns_dir_if_empty(&bundle);
                }
                Ok::<(), String>(())
            })
        };
        let (a, b) = (cycles("a"), cycles("b"));
        for (id, t) in [("a", a), ("b", b)] {
            if let Err(e) = t.join().expect("no panic") {
                panic!("task {id}: {e}");
            }
        }
    }

    /// A task's shim cgroup that could climb out of the cgroup tree is refused before anything
    /// is made; none asked for, none made.
    #[test]
    fn a_shim_cgroup_must_be_an_absolute_cgroupfs_path() {
        for bad in ["relative/pod", "/k8s.io/../escape"] {
            let err = shim_cgroup_dirs(bad).expect_err(bad);
            assert_eq!(
                err.kind(),
                berth_errdefs::Kind::InvalidArgument,
                "{bad}: {err}"
            );
        }
        assert!(shim_cgroup_dirs("").expect("no cgroup").is_empty());
        let cfg = RuntimeConfig {
            shim_cgroup: "pods/x".into(),
            ..Default::default()
        };
        assert!(cfg.validate("r").is_err());
    }
}
