//! containerd.services.tasks.v1.Tasks over `runtime::TaskManager` (one berth-shim per task).

use super::{namespace, reply, RpcResult, State};
use crate::runtime::{timestamp, CreateTask, Stdio, Task, TaskManager};
use crate::runtime::{ProcessState, Status};
use berth_api::containerd::runc::v1::ProcessDetails;
use berth_api::containerd::services::tasks::v1::{tasks_server::Tasks, *};
use berth_api::containerd::types::Metric;
use berth_api::containerd::v1::types::{Process, ProcessInfo, Status as ApiStatus};
use berth_api::START_ON_CREATE_HEADER;
use berth_cgroups::Cgroup;
use berth_errdefs::{Error, Result};
use berth_metadata::filters::{Adaptor, Filter};
use berth_metadata::validate;
use std::sync::{Arc, OnceLock};

pub struct TasksService {
    pub state: Arc<State>,
    pub tasks: Arc<TaskManager>,
    pub network: Arc<crate::network::Networking>,
}

fn api_status(s: Status) -> ApiStatus {
    match s {
        Status::Created => ApiStatus::Created,
        Status::Running => ApiStatus::Running,
        Status::Paused => ApiStatus::Paused,
        Status::Stopped => ApiStatus::Stopped,
    }
}

fn process(container_id: &str, p: ProcessState) -> Process {
    Process {
        container_id: container_id.to_string(),
        id: p.id,
        pid: p.pid,
        status: api_status(p.status) as i32,
        stdin: p.stdin,
        stdout: p.stdout,
        stderr: p.stderr,
        terminal: p.terminal,
        exit_status: p.exit_status,
        exited_at: p.exited_at.map(timestamp),
    }
}

/// The container id every Tasks call names; an identifier like any other.
fn container_id(id: &str) -> Result<&str> {
    validate::identifier("container id", id)?;
    Ok(id)
}

/// "" means the init process; anything else must be a valid exec id.
fn exec_id(id: &str) -> Result<&str> {
    if !id.is_empty() {
        validate::identifier("exec id", id)?;
    }
    Ok(id)
}

/// The JSON an Any carries (OCI `Process` for Exec, `LinuxResources` for Update).
fn json_any(what: &str, any: Option<&prost_types::Any>) -> Result<serde_json::Value> {
    let any = any.ok_or_else(|| Error::invalid(format!("{what} is required")))?;
    serde_json::from_slice(&any.value)
        .map_err(|e| Error::invalid(format!("{what} ({}) is not JSON: {e}", any.type_url)))
}

/// Filter fields of a listed task (`ctr tasks ls` passes none; API clients may).
struct ProcessFields<'a>(&'a ProcessState);

impl Adaptor for ProcessFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] | ["container_id"] => Some(self.0.id.clone()),
            ["pid"] => Some(self.0.pid.to_string()),
            ["status"] => Some(self.0.status.to_string()),
            _ => None,
        }
    }
}

/// Filter fields of a task for Metrics, as containerd's (`id==X` from ctr).
struct TaskFields<'a>(&'a Task);

impl Adaptor for TaskFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] => Some(self.0.record.id.clone()),
            ["namespace"] => Some(self.0.record.namespace.clone()),
            ["runtime"] => Some(self.0.record.runtime.clone()),
            _ => None,
        }
    }
}

/// Why checkpoint/restore is not available: CRIU is asked once (`criu check`, a process: run
/// off the async threads).
async fn checkpoint_unavailable() -> Error {
    static WHY: OnceLock<String> = OnceLock::new();
    let why = match WHY.get() {
        Some(why) => why.clone(),
        None => crate::blocking::blocking(|| Ok(WHY.get_or_init(criu_check).clone()))
            .await
            .unwrap_or_else(|e| e.to_string()),
    };
    Error::unimplemented(format!("checkpoint/restore needs CRIU: {why}"))
}

fn criu_check() -> String {
    match std::process::Command::new("criu")
        .arg("check")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Err(e) => format!("CRIU is not installed ({e})"),
        Ok(out) if !out.status.success() => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim().to_string();
            format!("`criu check` fails on this kernel: {last}")
        }
        Ok(_) => "CRIU works here, but berth's checkpoint/restore is not built yet".into(),
    }
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn create(
        &self,
        req: tonic::Request<CreateTaskRequest>,
    ) -> RpcResult<CreateTaskResponse> {
        let ns = namespace(&req)?;
        let start = start_on_create(&req)?;
        let r = req.into_inner();
        let id = container_id(&r.container_id)?;
        if r.checkpoint.is_some() {
            return Err(checkpoint_unavailable().await.into());
        }
        if !r.runtime_path.is_empty() {
            return Err(Error::invalid(
                "runtime_path is not supported: berth runs its own shim; name a configured runtime instead",
            )
            .into());
        }
        if !r.task_api_address.is_empty() {
            return Err(Error::unimplemented(format!(
                "task_api_address {:?}: starting a task in a sandbox's own shim comes with the \
                 sandbox work; berthd starts one berth-shim per task",
                r.task_api_address
            ))
            .into());
        }
        let mut container = self.state.meta.get_container(&ns, id)?;
        // The slot is held from before the network is attached until a failed create has undone
        // it: a second Create of this container (or a Delete's detach) cannot interleave and tear
        // down the attachment of the task that won.
        let reservation = self.tasks.reserve(&ns, id)?;
        let networked = self.network.before_create(&ns, &mut container).await?;
        let created = self
            .tasks
            .create_reserved(
                &reservation,
                CreateTask {
                    namespace: ns.clone(),
                    container,
                    rootfs: r.rootfs,
                    stdio: Stdio {
                        stdin: r.stdin,
                        stdout: r.stdout,
                        stderr: r.stderr,
                        terminal: r.terminal,
                    },
                    options: r.options,
                    start,
                },
            )
            .await;
        let task = match created {
            Ok(task) => task,
            Err(e) => {
                if networked {
                    self.network.after_delete(&ns, id).await;
                }
                return Err(e.into());
            }
        };
        drop(reservation);
        reply(CreateTaskResponse {
            container_id: task.record.id.clone(),
            pid: task.pid,
        })
    }

    async fn start(&self, req: tonic::Request<StartRequest>) -> RpcResult<StartResponse> {
        let ns = namespace(&req)?;
        let r = req.get_ref();
        let pid = self
            .tasks
            .start(&ns, container_id(&r.container_id)?, exec_id(&r.exec_id)?)
            .await?;
        reply(StartResponse { pid })
    }

    async fn delete(&self, req: tonic::Request<DeleteTaskRequest>) -> RpcResult<DeleteResponse> {
        let ns = namespace(&req)?;
        let id = container_id(&req.get_ref().container_id)?;
        let exit = self.tasks.delete(&ns, id).await?;
        // Detach under the slot: if a new Create holds it already, that create replaced this
        // task's attachment itself (before_create tears a left record down first).
        if let Ok(_slot) = self.tasks.reserve(&ns, id) {
            self.network.after_delete(&ns, id).await;
        }
        reply(DeleteResponse {
            id: id.to_string(),
            pid: exit.pid,
            exit_status: exit.exit_status,
            exited_at: exit.exited_at.map(timestamp),
        })
    }

    async fn delete_process(
        &self,
        req: tonic::Request<DeleteProcessRequest>,
    ) -> RpcResult<DeleteResponse> {
        let ns = namespace(&req)?;
        let r = req.get_ref();
        let id = container_id(&r.container_id)?;
        if r.exec_id.is_empty() {
            return Err(
                Error::invalid("exec id is required (Delete removes the task itself)").into(),
            );
        }
        let exec = exec_id(&r.exec_id)?;
        let exit = self.tasks.delete_process(&ns, id, exec).await?;
        reply(DeleteResponse {
            id: exec.to_string(),
            pid: exit.pid,
            exit_status: exit.exit_status,
            exited_at: exit.exited_at.map(timestamp),
        })
    }

    async fn get(&self, req: tonic::Request<GetRequest>) -> RpcResult<GetResponse> {
        let ns = namespace(&req)?;
        let r = req.get_ref();
        let id = container_id(&r.container_id)?;
        // A task whose create is under way is answered once it settles (see `settled`).
        self.tasks.settled(&ns, id).await;
        let state = self.tasks.state(&ns, id, exec_id(&r.exec_id)?).await?;
        reply(GetResponse {
            process: Some(process(id, state)),
        })
    }

    async fn list(&self, req: tonic::Request<ListTasksRequest>) -> RpcResult<ListTasksResponse> {
        let ns = namespace(&req)?;
        let filter = Filter::parse_all(&[req.get_ref().filter.as_str()])?;
        let tasks = self
            .tasks
            .list(&ns)
            .await
            .into_iter()
            .filter(|(_, s)| filter.matches(&ProcessFields(s)))
            .map(|(t, s)| process(&t.record.id, s))
            .collect();
        reply(ListTasksResponse { tasks })
    }

    async fn kill(&self, req: tonic::Request<KillRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.get_ref();
        if r.signal == 0 || r.signal > 64 {
            return Err(Error::invalid(format!("signal {} is not a signal", r.signal)).into());
        }
        self.tasks
            .kill(
                &ns,
                container_id(&r.container_id)?,
                exec_id(&r.exec_id)?,
                r.signal,
                r.all,
            )
            .await?;
        reply(())
    }

    async fn exec(&self, req: tonic::Request<ExecProcessRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let id = container_id(&r.container_id)?;
        if r.exec_id.is_empty() {
            return Err(Error::invalid("exec id is required").into());
        }
        let exec = exec_id(&r.exec_id)?;
        let spec = json_any("exec process spec", r.spec.as_ref())?;
        self.tasks
            .exec(
                &ns,
                id,
                exec,
                spec,
                Stdio {
                    stdin: r.stdin.clone(),
                    stdout: r.stdout.clone(),
                    stderr: r.stderr.clone(),
                    terminal: r.terminal,
                },
            )
            .await?;
        reply(())
    }

    async fn resize_pty(&self, req: tonic::Request<ResizePtyRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.get_ref();
        self.tasks
            .resize_pty(
                &ns,
                container_id(&r.container_id)?,
                exec_id(&r.exec_id)?,
                r.width,
                r.height,
            )
            .await?;
        reply(())
    }

    async fn close_io(&self, req: tonic::Request<CloseIoRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.get_ref();
        let id = container_id(&r.container_id)?;
        let exec = exec_id(&r.exec_id)?;
        self.tasks.settled(&ns, id).await;
        if r.stdin {
            self.tasks.close_stdin(&ns, id, exec).await?;
        } else {
            // Nothing to close, but the task must exist.
            self.tasks.state(&ns, id, exec).await?;
        }
        reply(())
    }

    async fn pause(&self, req: tonic::Request<PauseTaskRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let id = container_id(&req.get_ref().container_id)?;
        self.tasks.pause(&ns, id, true).await?;
        reply(())
    }

    async fn resume(&self, req: tonic::Request<ResumeTaskRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let id = container_id(&req.get_ref().container_id)?;
        self.tasks.pause(&ns, id, false).await?;
        reply(())
    }

    async fn list_pids(&self, req: tonic::Request<ListPidsRequest>) -> RpcResult<ListPidsResponse> {
        let ns = namespace(&req)?;
        let id = container_id(&req.get_ref().container_id)?;
        let pids = self.tasks.pids(&ns, id).await?;
        let processes = pids
            .into_iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                info: p
                    .exec_id
                    .map(|exec_id| berth_api::pack_any(&ProcessDetails { exec_id })),
            })
            .collect();
        reply(ListPidsResponse { processes })
    }

    async fn checkpoint(
        &self,
        req: tonic::Request<CheckpointTaskRequest>,
    ) -> RpcResult<CheckpointTaskResponse> {
        let ns = namespace(&req)?;
        // The task must exist for the answer to be about it.
        self.tasks
            .get(&ns, container_id(&req.get_ref().container_id)?)?;
        Err(checkpoint_unavailable().await.into())
    }

    async fn update(&self, req: tonic::Request<UpdateTaskRequest>) -> RpcResult<()> {
        let ns = namespace(&req)?;
        let r = req.get_ref();
        let id = container_id(&r.container_id)?;
        let resources = json_any("resources", r.resources.as_ref())?;
        self.tasks.update(&ns, id, resources).await?;
        reply(())
    }

    async fn metrics(&self, req: tonic::Request<MetricsRequest>) -> RpcResult<MetricsResponse> {
        let ns = namespace(&req)?;
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        let mut metrics = Vec::new();
        for (task, state) in self.tasks.list(&ns).await {
            if !filter.matches(&TaskFields(&task)) || state.status == Status::Stopped {
                continue;
            }
            let pid = state.pid;
            let read = crate::blocking::blocking(move || {
                Cgroup::of_pid(pid)
                    .and_then(|c| c.metrics())
                    .map_err(|e| Error::io(format!("cgroup metrics of pid {pid}"), e))
            })
            .await;
            match read {
                Ok(data) => metrics.push(Metric {
                    timestamp: Some(berth_metadata::now()),
                    id: task.record.id.clone(),
                    data: Some(data),
                }),
                // Exited between the state and the read: no metrics, as for a stopped task.
                Err(e) => tracing::debug!(task = %task.record.id, error = %e, "no metrics"),
            }
        }
        reply(MetricsResponse { metrics })
    }

    async fn wait(&self, req: tonic::Request<WaitRequest>) -> RpcResult<WaitResponse> {
        let ns = namespace(&req)?;
        let r = req.get_ref();
        let exit = self
            .tasks
            .wait(&ns, container_id(&r.container_id)?, exec_id(&r.exec_id)?)
            .await?;
        reply(WaitResponse {
            exit_status: exit.exit_status,
            exited_at: exit.exited_at.map(timestamp),
        })
    }
}

/// Whether a Tasks.Create asks to start the task too (berth's `berth-start-on-create: true`).
fn start_on_create<T>(req: &tonic::Request<T>) -> Result<bool> {
    match req.metadata().get(START_ON_CREATE_HEADER) {
        None => Ok(false),
        Some(v) => match v.to_str() {
            Ok("true") => Ok(true),
            Ok("false") => Ok(false),
            _ => Err(Error::invalid(format!(
                "{START_ON_CREATE_HEADER}: {v:?} is neither true nor false"
            ))),
        },
    }
}
