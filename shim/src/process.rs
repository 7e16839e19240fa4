//! The processes of one container (init + execs), their state machine and exit records.
//!
//! ```text
//! init:  created --start--> running <--pause/resume--> paused
//!           \                  |                          |
//!            +---- exit -------+--------- exit -----------+--> stopped --delete--> (gone)
//! exec:  created (registered, no pid) --start--> running --exit--> stopped --delete--> (gone)
//! ```
//! A process is *finished* once its exit is recorded on disk and its output copied out; only
//! then are waiters answered.

use crate::io::ProcessIo;
use berth_shim::protocol::{ExitRecord, ExitReply, ProcessState, Status, Timestamp};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// How long an exited process's output may take to drain into its FIFOs (a reader that
/// stopped reading, a grandchild holding a pty) before the shim closes them anyway.
pub const IO_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

pub struct Process {
    /// Container id for init, exec id for an exec (as reported in state).
    pub id: String,
    pub pid: u32,
    pub status: Status,
    pub exit: Option<ExitRecord>,
    pub stdio: Stdio,
    /// An exec's OCI process spec, until start.
    pub spec: Option<serde_json::Value>,
    pub io: ProcessIo,
    /// close_io arrived before the exec was started.
    pub stdin_closed: bool,
    /// Set at exit: the output copiers get until then.
    pub drain_deadline: Option<Instant>,
    /// Connections blocked in `wait` on this process.
    pub waiters: Vec<u64>,
}

impl Process {
    pub fn new(id: String, stdio: Stdio) -> Self {
        Process {
            id,
            pid: 0,
            status: Status::Created,
            exit: None,
            stdio,
            spec: None,
            io: ProcessIo::default(),
            stdin_closed: false,
            drain_deadline: None,
            waiters: Vec::new(),
        }
    }

    /// Exited, recorded, and output flushed.
    pub fn finished(&self) -> bool {
        self.exit.is_some() && self.io.copiers.is_empty()
    }

    pub fn state(&self) -> ProcessState {
        ProcessState {
            id: self.id.clone(),
            pid: self.pid,
            status: self.status,
            exit_status: self.exit.as_ref().map_or(0, |e| e.exit_status),
            exited_at: self.exit.as_ref().map(|e| e.exited_at),
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: self.stdio.terminal,
        }
    }

    pub fn exit_reply(&self) -> ExitReply {
        ExitReply {
            pid: self.pid,
            exit_status: self.exit.as_ref().map_or(0, |e| e.exit_status),
            exited_at: self.exit.as_ref().map(|e| e.exited_at),
        }
    }

    /// The process is gone: stop feeding its stdin, let its output drain.
    pub fn mark_exited(&mut self, exit_status: u32) -> ExitRecord {
        let rec = ExitRecord {
            pid: self.pid,
            exit_status,
            exited_at: Timestamp::now(),
        };
        self.status = Status::Stopped;
        self.exit = Some(rec.clone());
        self.io.stdin_spare = None;
        self.io
            .copiers
            .retain(|c| c.dir == crate::io::Direction::Output);
        for c in &mut self.io.copiers {
            c.set_exited();
        }
        self.drain_deadline = Some(Instant::now() + IO_DRAIN_TIMEOUT);
        rec
    }
}

/// Write an exit record whole or not at all: a tmp file renamed into place. Not fsynced: the
/// record must outlive a killed shim or berthd, which the rename gives (the kernel holds the
/// page), while the bundle is in the state dir, which does not outlive a reboot, and neither
/// does the process whose exit it records. Two fsyncs cost 3-12 ms on an exit's path here.
pub fn write_exit_record(dir: &Path, name: &str, rec: &ExitRecord) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(rec).map_err(std::io::Error::other)?)?;
    fs::rename(&tmp, dir.join(name))
}

/// Exec ids become file names (exit records, process specs): containerd's identifier rules,
/// and "init" is taken by the init process's record.
pub fn validate_exec_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 76
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(format!(
            "invalid exec id {id:?}: want 1-76 of [A-Za-z0-9_.-], starting alphanumeric"
        ));
    }
    if id == "init" {
        return Err("exec id \"init\" is reserved".into());
    }
    Ok(())
}

/// The host uid/gid the process runs as (from an OCI `process.user`, mapped through the
/// config's user namespace mappings): its stdio pipes are given to it.
pub fn io_owner(config: &serde_json::Value, process: &serde_json::Value) -> Option<(u32, u32)> {
    let user = process.get("user")?;
    let uid = user.get("uid").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    let gid = user.get("gid").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    let map = |id: u32, key: &str| -> u32 {
        let Some(maps) = config
            .pointer(&format!("/linux/{key}"))
            .and_then(|m| m.as_array())
        else {
            return id;
        };
        maps.iter()
            .find_map(|m| {
                let c = m.get("containerID")?.as_u64()? as u32;
                let h = m.get("hostID")?.as_u64()? as u32;
                let n = m.get("size")?.as_u64()? as u32;
                (id >= c && id - c < n).then(|| h + (id - c))
            })
            .unwrap_or(id)
    };
    Some((map(uid, "uidMappings"), map(gid, "gidMappings")))
}

/// Whether the OCI spec gives the container a pid namespace of its own (one without a path): if
/// not, its processes outlive init unless someone kills them.
pub fn has_own_pid_namespace(config: &serde_json::Value) -> bool {
    config
        .pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .is_some_and(|namespaces| {
            namespaces.iter().any(|ns| {
                ns.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && ns
                        .get("path")
                        .and_then(|p| p.as_str())
                        .is_none_or(str::is_empty)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_namespace() {
        let with = |ns: serde_json::Value| serde_json::json!({"linux": {"namespaces": ns}});
        assert!(has_own_pid_namespace(&with(
            serde_json::json!([{"type": "pid"}])
        )));
        assert!(has_own_pid_namespace(&with(
            serde_json::json!([{"type": "mount"}, {"type": "pid", "path": ""}])
        )));
        assert!(!has_own_pid_namespace(&with(
            serde_json::json!([{"type": "pid", "path": "/proc/1/ns/pid"}])
        )));
        assert!(!has_own_pid_namespace(&with(
            serde_json::json!([{"type": "mount"}])
        )));
        assert!(!has_own_pid_namespace(&serde_json::json!({})));
    }

    #[test]
    fn exec_ids() {
        assert!(validate_exec_id("e1").is_ok());
        assert!(validate_exec_id("a.b-c_d").is_ok());
        for bad in ["", "init", "../x", "a/b", ".x", &"x".repeat(77)] {
            assert!(validate_exec_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owner_mapping() {
        let cfg = serde_json::json!({"linux": {
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}});
        let p = serde_json::json!({"user": {"uid": 5, "gid": 6}});
        assert_eq!(io_owner(&cfg, &p), Some((100005, 200006)));
        assert_eq!(
            io_owner(&serde_json::json!({}), &p),
            Some((5, 6)),
            "no user namespace"
        );
    }

    #[test]
    fn exit_records_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let rec = ExitRecord {
            pid: 7,
            exit_status: 137,
            exited_at: Timestamp::now(),
        };
        write_exit_record(d.path(), "init", &rec).unwrap();
        let back = std::fs::read(d.path().join("init")).unwrap();
        assert_eq!(serde_json::from_slice::<ExitRecord>(&back).unwrap(), rec);
        assert!(!d.path().join(".init.tmp").exists());
    }
}
