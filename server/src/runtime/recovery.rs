//! After a restart: find every task from the bundles on disk and ask its backend (the shim) how
//! it is, through `Backends::reconnect`.
//!
//! All backends are probed at once, each with a short timeout, so a hung or dead shim costs at
//! most that timeout and never blocks start-up for long (containerd once took an hour here). A
//! dead backend's task (shim killed, or a stale state dir) is cleaned up in the background: the
//! backend's own cleanup (`runc delete --force` for berth-shim), unmount, remove — its slot stays
//! Busy until then, so no new task races the cleanup.

use super::backend::Reconnected;
use super::types::{ProcessState, Status};
use super::{remove_task_dirs, Slot, Task, TaskManager, TaskRecord};
use berth_errdefs::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What probing one bundle found.
enum Found {
    Live(Arc<Task>, Vec<ProcessState>),
    /// The shim process lives but did not answer in time (busy in a long runc call, or
    /// stopped): never kill its container for that; keep asking in the background.
    Slow {
        ns: String,
        id: String,
        bundle: PathBuf,
    },
    /// The shim is gone or answers nothing useful: clean up.
    Dead {
        bundle: PathBuf,
        socket_dir: PathBuf,
        record: Option<TaskRecord>,
        why: String,
    },
}

impl TaskManager {
    /// Rebuild the task table from `<state>/tasks/<ns>/<id>`. Returns how many live tasks were
    /// found; dead ones are being cleaned up when this returns.
    pub async fn recover(self: &Arc<Self>) -> Result<usize> {
        let bundles = blocking_list_bundles(&self.tasks_dir())?;
        let mut probes = tokio::task::JoinSet::new();
        for (ns, id, bundle) in bundles {
            let manager = self.clone();
            probes.spawn(async move { manager.probe(ns, id, bundle).await });
        }
        let mut live = 0;
        while let Some(joined) = probes.join_next().await {
            let found = match joined {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "probing a task failed");
                    continue;
                }
            };
            match found {
                Found::Live(task, processes) => {
                    live += 1;
                    self.adopt(task, processes);
                }
                Found::Slow { ns, id, bundle } => self.keep_probing(ns, id, bundle),
                Found::Dead {
                    bundle,
                    socket_dir,
                    record,
                    why,
                } => self.clean_up_dead(bundle, socket_dir, record, why),
            }
        }
        Ok(live)
    }

    /// A slow shim's task stays Busy (Unavailable to clients) until its shim answers, or dies.
    fn keep_probing(self: &Arc<Self>, ns: String, id: String, bundle: PathBuf) {
        tracing::warn!(namespace = %ns, task = %id, "shim alive but not answering; will keep asking");
        self.lock().insert((ns.clone(), id.clone()), Slot::Busy);
        let manager = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match manager.probe(ns.clone(), id.clone(), bundle.clone()).await {
                    Found::Slow { .. } => continue,
                    Found::Live(task, processes) => manager.adopt(task, processes),
                    Found::Dead {
                        bundle,
                        socket_dir,
                        record,
                        why,
                    } => manager.clean_up_dead(bundle, socket_dir, record, why),
                }
                return;
            }
        });
    }

    async fn probe(&self, ns: String, id: String, bundle: PathBuf) -> Found {
        let socket_dir = self.socket_dir(&ns, &id);
        let dead = |record: Option<TaskRecord>, why: String| Found::Dead {
            bundle: bundle.clone(),
            socket_dir: socket_dir.clone(),
            record,
            why,
        };
        let file = bundle.join("task.json");
        let read = crate::blocking::blocking(move || {
            Ok(std::fs::read(&file)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())))
        });
        let record: TaskRecord = match read.await.unwrap_or_else(|e| Err(e.to_string())) {
            Ok(r) => r,
            // Written before the shim is launched: without it, no shim ever ran here.
            Err(e) => return dead(None, format!("no task record ({e})")),
        };
        let (backend, processes) = match self
            .backends
            .reconnect(&record, &bundle, &socket_dir, self.connect_timeout)
            .await
        {
            Reconnected::Live(backend, processes) => (backend, processes),
            Reconnected::Slow => return Found::Slow { ns, id, bundle },
            Reconnected::Dead(why) => return dead(Some(record), why),
        };
        // Init deleted but its backend still up: the daemon died in the middle of a Delete.
        let Some(init) = processes.iter().find(|p| p.id == id) else {
            let _ = backend.shutdown().await;
            return dead(Some(record), "init process already deleted".into());
        };
        let task = Arc::new(Task {
            pid: init.pid,
            record,
            bundle,
            socket_dir,
            backend,
            lifecycle: Default::default(),
        });
        Found::Live(task, processes)
    }

    /// Back in the table, with a `wait` per process so exits — including those that happened
    /// while berthd was down — are published.
    fn adopt(self: &Arc<Self>, task: Arc<Task>, processes: Vec<ProcessState>) {
        let key = (task.record.namespace.clone(), task.record.id.clone());
        tracing::info!(namespace = %key.0, task = %key.1, processes = processes.len(), "recovered task");
        for p in &processes {
            let exec_id = if p.id == task.record.id {
                if p.status != Status::Stopped {
                    self.watch_oom_in_background(&task);
                }
                String::new()
            } else {
                p.id.clone()
            };
            self.watch_exit(task.clone(), exec_id);
        }
        self.lock().insert(key, Slot::Ready(task));
    }

    /// As `watch_oom`, but resolving the cgroup (files under /proc) off the recovery path.
    fn watch_oom_in_background(self: &Arc<Self>, task: &Arc<Task>) {
        let (manager, task) = (self.clone(), task.clone());
        tokio::spawn(async move {
            let pid = task.pid;
            let cgroup =
                crate::blocking::blocking(move || Ok(berth_cgroups::Cgroup::of_pid(pid))).await;
            match cgroup.map(|c| c.and_then(|c| c.oom_monitor())) {
                Ok(Ok(monitor)) => manager.publish_ooms(&task, monitor),
                Ok(Err(e)) => {
                    tracing::debug!(task = %task.record.id, error = %e, "no OOM monitoring")
                }
                Err(e) => tracing::warn!(error = %e, "resolving a cgroup failed"),
            }
        });
    }

    pub(super) fn clean_up_dead(
        self: &Arc<Self>,
        bundle: PathBuf,
        socket_dir: PathBuf,
        record: Option<TaskRecord>,
        why: String,
    ) {
        let (ns, id) = match (
            bundle.parent().and_then(Path::file_name),
            bundle.file_name(),
        ) {
            (Some(ns), Some(id)) => (
                ns.to_string_lossy().into_owned(),
                id.to_string_lossy().into_owned(),
            ),
            _ => return,
        };
        self.lock().insert((ns.clone(), id.clone()), Slot::Busy);
        self.spawn_dead_cleanup(ns, id, bundle, socket_dir, record, why);
    }

    /// [`clean_up_dead`](Self::clean_up_dead) for a task of the table, only while `task` still
    /// holds its slot. The look and the slot going Busy are one step under the lock, so of the
    /// finders of one dead task (its exit watcher, a listing) one cleans it up, and a cleanup
    /// never starts behind a Delete, or runs on into a new create of the same id.
    pub(super) fn clean_up_dead_task(self: &Arc<Self>, task: &Arc<Task>, why: String) {
        if !self.claim_slot(task) {
            return;
        }
        self.spawn_dead_cleanup(
            task.record.namespace.clone(),
            task.record.id.clone(),
            task.bundle.clone(),
            task.socket_dir.clone(),
            Some(task.record.clone()),
            why,
        );
    }

    /// The cleanup of a dead backend's task whose slot the caller made Busy; the slot is
    /// released when it is done.
    fn spawn_dead_cleanup(
        self: &Arc<Self>,
        ns: String,
        id: String,
        bundle: PathBuf,
        socket_dir: PathBuf,
        record: Option<TaskRecord>,
        why: String,
    ) {
        let exit = self.backends.recorded_exit(record.as_ref(), &bundle);
        tracing::warn!(
            namespace = %ns, task = %id, reason = %why,
            exit_status = exit.as_ref().map(|e| e.exit_status),
            "cleaning up a task whose shim is gone"
        );
        let manager = self.clone();
        tokio::spawn(async move {
            if let Some(r) = &record {
                manager.backends.clean_up_dead(r).await;
            }
            if let Err(e) = remove_task_dirs(&bundle, &socket_dir).await {
                tracing::warn!(task = %id, error = %e, "removing a dead task's bundle");
            }
            let mut tasks = manager.lock();
            if matches!(tasks.get(&(ns.clone(), id.clone())), Some(Slot::Busy)) {
                tasks.remove(&(ns, id));
            }
        });
    }
}

/// `(namespace, id, bundle)` of every bundle directory.
fn blocking_list_bundles(tasks_dir: &Path) -> Result<Vec<(String, String, PathBuf)>> {
    let mut out = Vec::new();
    let read = |dir: &Path| {
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))
    };
    if !tasks_dir.exists() {
        return Ok(out);
    }
    for ns in read(tasks_dir)? {
        let ns = ns.map_err(|e| Error::io("read tasks dir", e))?;
        if !ns.path().is_dir() {
            continue;
        }
        for task in read(&ns.path())? {
            let task = task.map_err(|e| Error::io("read tasks dir", e))?;
            if task.path().is_dir() {
                out.push((
                    ns.file_name().to_string_lossy().into_owned(),
                    task.file_name().to_string_lossy().into_owned(),
                    task.path(),
                ));
            }
        }
    }
    Ok(out)
}
