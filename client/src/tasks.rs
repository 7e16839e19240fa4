//! Tasks: a container's running (or stopped) init process and its execs — create with stdio
//! paths (see [`crate::stdio`]), start, wait, kill, delete, pause/resume, exec, resize, close
//! stdin, list pids. The daemon (its shim) is the source of truth; nothing is cached here.

use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::MountsRequest;
use crate::api::services::tasks::v1::tasks_client::TasksClient;
use crate::api::services::tasks::v1::{
    CloseIoRequest, CreateTaskRequest, DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest,
    GetRequest, KillRequest, ListPidsRequest, ListTasksRequest, PauseTaskRequest, ResizePtyRequest,
    ResumeTaskRequest, StartRequest, WaitRequest,
};
use crate::api::v1::types::Status;
use crate::containers::ContainerInfo;
use crate::{Client, Error, Result};
use std::str::FromStr;
use std::time::SystemTime;
use tonic::Code;

/// Where a process's stdio goes: FIFO (or `file://`, `binary://`) paths the shim opens; empty
/// for none. With `terminal`, stdout carries the pty and stderr must be empty.
#[derive(Debug, Clone, Default)]
pub struct TaskIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A process as the daemon reports it.
#[derive(Debug, Clone)]
pub struct ProcessState {
    pub pid: u32,
    pub status: Status,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy)]
pub struct ExitStatus {
    pub code: u32,
    pub exited_at: Option<SystemTime>,
}

/// A signal by name (`SIGTERM`, `TERM`, `term`) or number.
pub fn parse_signal(s: &str) -> Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let upper = s.to_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|sig| sig as i32 as u32)
        .map_err(|_| Error::invalid(format!("invalid signal {s:?}")))
}

/// The tasks of the client's namespace.
pub struct Tasks {
    client: Client,
}

impl Tasks {
    pub(crate) fn new(client: Client) -> Tasks {
        Tasks { client }
    }

    fn api(&self) -> TasksClient<tonic::transport::Channel> {
        TasksClient::new(self.client.channel.clone())
    }

    /// Create the container's task (runc create): its rootfs mounts come from the snapshot.
    pub async fn create(&self, container: &ContainerInfo, io: &TaskIo) -> Result<u32> {
        self.create_with(container, io, false).await
    }

    /// Create the task and start it, in one call and one runtime command (`runc run
    /// --detach`): berth's `berth-start-on-create` header, which berthd alone understands.
    pub async fn create_started(&self, container: &ContainerInfo, io: &TaskIo) -> Result<u32> {
        self.create_with(container, io, true).await
    }

    async fn create_with(
        &self,
        container: &ContainerInfo,
        io: &TaskIo,
        start: bool,
    ) -> Result<u32> {
        let mounts = MountsRequest {
            snapshotter: container.snapshotter.clone(),
            key: container.snapshot_key.clone(),
        };
        let rootfs = SnapshotsClient::new(self.client.channel.clone())
            .mounts(self.client.request(mounts))
            .await?
            .into_inner()
            .mounts;
        let req = CreateTaskRequest {
            container_id: container.id.clone(),
            rootfs,
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            ..Default::default()
        };
        let mut req = self.client.request(req);
        if start {
            req.metadata_mut().insert(
                berth_api::START_ON_CREATE_HEADER,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        Ok(self.api().create(req).await?.into_inner().pid)
    }

    /// Start the init process (`exec_id` empty) or an exec.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let req = StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        Ok(self
            .api()
            .start(self.client.request(req))
            .await?
            .into_inner()
            .pid)
    }

    /// Wait until the process exits (at once if it has).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitStatus> {
        let req = WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let r = self
            .api()
            .wait(self.client.request(req))
            .await?
            .into_inner();
        Ok(ExitStatus {
            code: r.exit_status,
            exited_at: r.exited_at.and_then(crate::images::timestamp),
        })
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = KillRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
        };
        self.api().kill(self.client.request(req)).await?;
        Ok(())
    }

    /// Delete the task (it must have exited); returns how it ended.
    pub async fn delete(&self, id: &str) -> Result<ExitStatus> {
        let req = DeleteTaskRequest {
            container_id: id.to_string(),
        };
        let r = self
            .api()
            .delete(self.client.request(req))
            .await?
            .into_inner();
        Ok(ExitStatus {
            code: r.exit_status,
            exited_at: r.exited_at.and_then(crate::images::timestamp),
        })
    }

    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<ExitStatus> {
        let req = DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        let r = self
            .api()
            .delete_process(self.client.request(req))
            .await?
            .into_inner();
        Ok(ExitStatus {
            code: r.exit_status,
            exited_at: r.exited_at.and_then(crate::images::timestamp),
        })
    }

    /// The task's init process, or None when the container has no task.
    pub async fn get(&self, id: &str) -> Result<Option<ProcessState>> {
        let req = GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        match self.api().get(self.client.request(req)).await {
            Ok(r) => Ok(r.into_inner().process.map(|p| ProcessState {
                pid: p.pid,
                status: Status::try_from(p.status).unwrap_or(Status::Unknown),
                exit_status: p.exit_status,
                exited_at: p.exited_at.and_then(crate::images::timestamp),
            })),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every task of the namespace, by container id.
    pub async fn list(&self) -> Result<std::collections::HashMap<String, ProcessState>> {
        let req = ListTasksRequest {
            filter: String::new(),
        };
        Ok(self
            .api()
            .list(self.client.request(req))
            .await?
            .into_inner()
            .tasks
            .into_iter()
            .map(|p| {
                (
                    p.container_id.clone(),
                    ProcessState {
                        pid: p.pid,
                        status: Status::try_from(p.status).unwrap_or(Status::Unknown),
                        exit_status: p.exit_status,
                        exited_at: p.exited_at.and_then(crate::images::timestamp),
                    },
                )
            })
            .collect())
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        let req = PauseTaskRequest {
            container_id: id.to_string(),
        };
        self.api().pause(self.client.request(req)).await?;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        let req = ResumeTaskRequest {
            container_id: id.to_string(),
        };
        self.api().resume(self.client.request(req)).await?;
        Ok(())
    }

    /// Add an exec process (`process` is an OCI process spec as JSON); start it with
    /// [`Tasks::start`] and the same `exec_id`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        io: &TaskIo,
    ) -> Result<()> {
        let value = serde_json::to_vec(process)
            .map_err(|e| Error::invalid(format!("encode the exec process spec: {e}")))?;
        let req = ExecProcessRequest {
            container_id: id.to_string(),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".to_string(),
                value,
            }),
            exec_id: exec_id.to_string(),
        };
        self.api().exec(self.client.request(req)).await?;
        Ok(())
    }

    pub async fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = ResizePtyRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
        };
        self.api().resize_pty(self.client.request(req)).await?;
        Ok(())
    }

    /// Tell the shim stdin is done: the process sees EOF once its FIFO writer closes too.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let req = CloseIoRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: true,
        };
        self.api().close_io(self.client.request(req)).await?;
        Ok(())
    }

    /// The host pids of the task's processes.
    pub async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let req = ListPidsRequest {
            container_id: id.to_string(),
        };
        Ok(self
            .api()
            .list_pids(self.client.request(req))
            .await?
            .into_inner()
            .processes
            .into_iter()
            .map(|p| p.pid)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("HUP").unwrap(), 1);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
    }
}
