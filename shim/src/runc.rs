//! Driving the OCI runtime binary (runc or a runc-compatible one).
//!
//! Every call is synchronous — the event loop stops while runc runs (tens of ms), which a
//! container does not notice — but keeps reaping (see reaper.rs): exits of other children
//! seen meanwhile are collected in [`Runc::reaped`] for the server. A call is bounded by
//! [`Runc::timeout`] (`--runtime-timeout-ms`): a runtime still running then is killed and the
//! call fails ([`Runc::timed_out`]), so a wedged runc cannot stop the shim serving for good. runc writes its errors
//! as JSON lines to `<bundle>/log.json` (as under containerd); on failure the last error
//! logged by this call is the message.

use crate::reaper;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    /// `runc create --no-pivot` (a rootfs on a ramdisk cannot be pivoted away from).
    pub no_pivot_root: bool,
    /// `runc create --no-new-keyring`: the container keeps the shim's session keyring.
    pub no_new_keyring: bool,
    /// The bundle: runc's --log file and scratch files live there.
    pub bundle: PathBuf,
    /// How long one runtime command may run.
    pub timeout: Duration,
    /// Whether the last command was killed for running past `timeout`.
    pub timed_out: bool,
    /// (pid, status) of children other than runc reaped while runc ran.
    pub reaped: Vec<(u32, u32)>,
}

/// The process-facing stdio handed to `runc create` / `runc exec` (inherited by the process).
pub struct ProcStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl ProcStdio {
    pub fn null() -> Self {
        ProcStdio {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        }
    }
}

impl Runc {
    fn log(&self) -> PathBuf {
        self.bundle.join("log.json")
    }

    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(self.log())
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c.args(args);
        c
    }

    /// The last `"level":"error"` message runc logged after `offset`.
    fn logged_error(&self, offset: u64) -> Option<String> {
        let mut f = File::open(self.log()).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        let mut text = String::new();
        f.take(1 << 20).read_to_string(&mut text).ok()?;
        text.lines().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v.get("level")?.as_str()? != "error" {
                return None;
            }
            v.get("msg")?.as_str().map(String::from)
        })
    }

    /// Spawn, then wait while reaping. Ok(stderr-less) on success; Err(message) otherwise.
    fn spawn_wait(&mut self, mut cmd: Command, stderr: Option<&mut File>) -> Result<(), String> {
        let offset = std::fs::metadata(self.log()).map_or(0, |m| m.len());
        let what = format!("{}", self.binary.display());
        // The subcommand follows the global flags `command` puts first.
        let global_flags = 6 + usize::from(self.systemd_cgroup);
        let sub = cmd
            .get_args()
            .nth(global_flags)
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.timed_out = false;
        let child = cmd.spawn().map_err(|e| format!("running {what}: {e}"))?;
        // Our copies of the process's stdio must not outlive the spawn.
        drop(cmd);
        let deadline = Instant::now() + self.timeout;
        let status = match reaper::wait_reaping_until(child.id(), &mut self.reaped, deadline) {
            reaper::Waited::Exited(status) => status,
            reaper::Waited::Lost => {
                return Err(format!("{what}: lost track of the runtime process"))
            }
            reaper::Waited::TimedOut => {
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = reaper::wait_reaping(child.id(), &mut self.reaped);
                self.timed_out = true;
                return Err(format!(
                    "{what} {sub} did not finish within {:?}; it was killed",
                    self.timeout
                ));
            }
        };
        if status == 0 {
            return Ok(());
        }
        if let Some(m) = self.logged_error(offset) {
            return Err(m);
        }
        let mut text = String::new();
        if let Some(f) = stderr {
            let _ = f.rewind();
            let _ = f.take(64 * 1024).read_to_string(&mut text);
        }
        let text = text.trim();
        Err(if text.is_empty() {
            format!("{what} exited with status {status}")
        } else {
            text.to_string()
        })
    }

    fn scratch(&self) -> Result<File, String> {
        // An unnamed file in the bundle: no pipe to drain while we are busy reaping.
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_TMPFILE)
            .mode(0o600)
            .open(&self.bundle)
            .map_err(|e| format!("scratch file in {}: {e}", self.bundle.display()))
    }

    /// Run a command that hands no stdio to a container process; returns its stdout.
    fn run<I, S>(&mut self, args: I) -> Result<Vec<u8>, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut out = self.scratch()?;
        let mut err = self.scratch()?;
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null());
        cmd.stdout(out.try_clone().map_err(|e| e.to_string())?);
        cmd.stderr(err.try_clone().map_err(|e| e.to_string())?);
        self.spawn_wait(cmd, Some(&mut err))?;
        let mut bytes = Vec::new();
        out.rewind()
            .and_then(|_| out.read_to_end(&mut bytes))
            .map_err(|e| format!("reading runtime output: {e}"))?;
        Ok(bytes)
    }

    /// Run create/exec, whose stdio becomes the container process's stdio.
    fn run_with_stdio(&mut self, args: Vec<&OsStr>, stdio: ProcStdio) -> Result<(), String> {
        let mut cmd = self.command(args);
        cmd.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        self.spawn_wait(cmd, None)
    }

    /// `runc create`, or with `start` `runc run --detach` (created and started at once).
    pub fn create(
        &mut self,
        id: &str,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: ProcStdio,
        start: bool,
    ) -> Result<(), String> {
        let bundle = self.bundle.clone();
        let mut args: Vec<&OsStr> = match start {
            true => vec!["run".as_ref(), "--detach".as_ref()],
            false => vec!["create".as_ref()],
        };
        args.extend([
            OsStr::new("--bundle"),
            bundle.as_os_str(),
            OsStr::new("--pid-file"),
            pid_file.as_os_str(),
        ]);
        if let Some(s) = console_socket {
            args.extend(["--console-socket".as_ref(), s.as_os_str()]);
        }
        if self.no_pivot_root {
            args.push("--no-pivot".as_ref());
        }
        if self.no_new_keyring {
            args.push("--no-new-keyring".as_ref());
        }
        args.push(id.as_ref());
        self.run_with_stdio(args, stdio)
    }

    pub fn exec(
        &mut self,
        id: &str,
        process_file: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: ProcStdio,
    ) -> Result<(), String> {
        let mut args: Vec<&OsStr> = vec![
            "exec".as_ref(),
            "--detach".as_ref(),
            "--process".as_ref(),
            process_file.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
        ];
        if let Some(s) = console_socket {
            args.extend(["--console-socket".as_ref(), s.as_os_str()]);
        }
        args.push(id.as_ref());
        self.run_with_stdio(args, stdio)
    }

    pub fn start(&mut self, id: &str) -> Result<(), String> {
        self.run(["start", id]).map(drop)
    }

    pub fn kill(&mut self, id: &str, signal: u32, all: bool) -> Result<(), String> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, &sig]);
        self.run(args).map(drop)
    }

    pub fn pause(&mut self, id: &str) -> Result<(), String> {
        self.run(["pause", id]).map(drop)
    }

    pub fn resume(&mut self, id: &str) -> Result<(), String> {
        self.run(["resume", id]).map(drop)
    }

    pub fn delete(&mut self, id: &str, force: bool) -> Result<(), String> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.run(args).map(drop)
    }

    pub fn update(&mut self, id: &str, resources_file: &Path) -> Result<(), String> {
        self.run([
            OsStr::new("update"),
            OsStr::new("--resources"),
            resources_file.as_os_str(),
            OsStr::new(id),
        ])
        .map(drop)
    }

    pub fn ps(&mut self, id: &str) -> Result<Vec<u32>, String> {
        let out = self.run(["ps", "--format", "json", id])?;
        serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("runtime ps output: {e}"))
    }
}

/// Read a pid file runc wrote.
pub fn read_pid_file(path: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{}: not a pid: {text:?}", path.display()))
}
