//! ExecSync: a process in the running container with its stdout and stderr read from FIFOs
//! into buffers of at most [`MAX_OUTPUT`] bytes each; what comes after is read and dropped, so
//! a process that spews output never grows berthd's memory (containerd's CVE-2022-31030), nor
//! blocks on a full pipe. With a timeout, the process is killed when it passes and the call
//! fails with DeadlineExceeded.

use crate::Cri;
use berth::api::v1::types::Status as TaskStatus;
use berth_api::runtime::v1 as cri;
use berth_errdefs::{Error, Result};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most of each stream ExecSync returns: both together stay under the 16 MiB message size
/// crictl and the kubelet accept.
pub const MAX_OUTPUT: usize = 4 << 20;

/// Read `f` (a FIFO's read end) to its end, keeping the first `limit` bytes.
fn drain(mut f: std::fs::File, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return Ok(kept),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// Both ends of the FIFO at `path`, opened before the shim gets it. Were the reader to open
/// it only once the exec runs, a process that ends at once (`pgrep`) could have come and gone
/// with the shim's writer before that open, which would then wait forever for a writer. The
/// write end returned keeps the FIFO from reading EOF until it is dropped, which is done once
/// the shim holds its own writer (after Start) or the exec failed to start.
fn open_fifo(path: &Path) -> std::io::Result<(std::fs::File, std::fs::File)> {
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    // The reader blocks from now on: drain runs on a blocking thread.
    let fd = reader.as_raw_fd();
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok((reader, writer))
}

/// The exec's FIFO dir, removed when dropped.
struct ExecDir(PathBuf);

impl Drop for ExecDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Cri {
    pub async fn exec_sync(&self, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse> {
        self.exec_sync_limited(req, MAX_OUTPUT).await
    }

    pub(crate) async fn exec_sync_limited(
        &self,
        req: cri::ExecSyncRequest,
        limit: usize,
    ) -> Result<cri::ExecSyncResponse> {
        if req.cmd.is_empty() {
            return Err(Error::invalid("ExecSync needs a command"));
        }
        if req.timeout < 0 {
            return Err(Error::invalid("the ExecSync timeout is negative"));
        }
        let c = self.container(&req.container_id).await?;
        let id = c.info.id.clone();
        let tasks = self.client.tasks();
        match tasks.get(&id).await? {
            Some(t) if t.status == TaskStatus::Running => {}
            _ => {
                return Err(Error::precondition(format!(
                    "container {id} is not running"
                )))
            }
        }
        let mut process = c
            .info
            .process_spec()
            .cloned()
            .ok_or_else(|| Error::internal(format!("container {id} has no process spec")))?;
        process["args"] = serde_json::json!(req.cmd);
        process["terminal"] = serde_json::json!(false);

        let exec_id = format!("sync-{}", &crate::store::new_id()[..16]);
        let dir = self
            .settings
            .config
            .state_dir(&self.settings.state)
            .join("exec")
            .join(&exec_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let dir = ExecDir(dir);
        let mut paths = Vec::new();
        for name in ["stdout", "stderr"] {
            let p = dir.0.join(name);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| Error::io(format!("mkfifo {}", p.display()), e.into()))?;
            paths.push(p);
        }
        let mut holders = Vec::new();
        let mut readers = Vec::new();
        for p in &paths {
            let (reader, writer) =
                open_fifo(p).map_err(|e| Error::io(format!("open {}", p.display()), e))?;
            holders.push(writer);
            readers.push(tokio::task::spawn_blocking(move || drain(reader, limit)));
        }
        let io = berth::tasks::TaskIo {
            stdout: paths[0].to_string_lossy().into_owned(),
            stderr: paths[1].to_string_lossy().into_owned(),
            ..Default::default()
        };
        let started = async {
            tasks.exec(&id, &exec_id, &process, &io).await?;
            tasks.start(&id, &exec_id).await
        }
        .await;
        // The shim holds its writers now (or never will): ours go, so the output ends with
        // the process's.
        drop(holders);
        if let Err(e) = started {
            let _ = tasks.delete_process(&id, &exec_id).await;
            for r in readers {
                let _ = r.await;
            }
            return Err(e.into());
        }
        let wait = tasks.wait(&id, &exec_id);
        let exit = if req.timeout > 0 {
            match tokio::time::timeout(Duration::from_secs(req.timeout as u64), wait).await {
                Ok(r) => r?,
                Err(_) => {
                    let _ = tasks.kill(&id, &exec_id, 9, false).await;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), tasks.wait(&id, &exec_id))
                            .await;
                    let _ = tasks.delete_process(&id, &exec_id).await;
                    return Err(Error::deadline_exceeded(format!(
                        "command {:?} timed out after {}s",
                        req.cmd, req.timeout
                    )));
                }
            }
        } else {
            wait.await?
        };
        let mut out = Vec::new();
        for r in readers {
            // The shim closes its ends once the process and its copiers are done.
            let read = tokio::time::timeout(Duration::from_secs(30), r)
                .await
                .map_err(|_| Error::internal("the exec's output did not end"))?
                .map_err(|e| Error::internal(format!("read the exec's output: {e}")))?
                .map_err(|e| Error::io("read the exec's output", e))?;
            out.push(read);
        }
        let _ = tasks.delete_process(&id, &exec_id).await;
        let stderr = out.pop().unwrap_or_default();
        let stdout = out.pop().unwrap_or_default();
        Ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code: exit.code as i32,
        })
    }
}
