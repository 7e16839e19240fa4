//! `binary://` logging programs: containerd's contract for logging plugins (the ones nerdctl and
//! others ship), which such programs rely on:
//!
//! - `binary:///path/to/prog?k1=v1&k2` runs `/path/to/prog k1 v1 k2`, with only CONTAINER_ID (the
//!   process id: the container's, or the exec's) and CONTAINER_NAMESPACE in its environment;
//! - fd 3 is the read end of the process's stdout pipe, fd 4 of its stderr pipe, and fd 5 the
//!   write end of a pipe the program closes (or writes a byte to) once it is ready: the process
//!   is created only then, so no output is written before anyone reads it;
//! - when the process is deleted the program gets SIGTERM, to flush and exit. The shim does not
//!   wait for it (its exit is reaped like any child's).

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, read, Pid};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long a logging program may take to say it is ready before the create or exec fails.
const READY_TIMEOUT_MS: u16 = 10_000;
/// Fds the program gets: stdout, stderr, ready.
const FIRST_FD: RawFd = 3;

/// A parsed `binary://` URI.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    path: PathBuf,
    args: Vec<String>,
}

/// Who the logging program logs for.
pub struct Env<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
}

/// `%XX` escapes, and in a query `+` for a space (Go's url package, which containerd's clients
/// build these URIs with).
pub(crate) fn unescape(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad escape in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once unescaped"))
}

impl Command {
    pub fn parse(uri: &str) -> Result<Command, String> {
        let rest = uri
            .strip_prefix("binary://")
            .ok_or_else(|| format!("{uri:?} is not a binary:// URI"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = PathBuf::from(unescape(path, false)?);
        if !path.is_absolute() {
            return Err(format!(
                "logging binary in {uri:?} must be an absolute path (binary:///path)"
            ));
        }
        let mut args = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            args.push(unescape(k, true)?);
            if !v.is_empty() {
                args.push(unescape(v, true)?);
            }
        }
        Ok(Command { path, args })
    }
}

/// A started logging program.
pub struct Logger {
    pid: Pid,
    /// Reaped: its pid may belong to someone else now, so it is never signalled again.
    reaped: bool,
}

/// A copy of `fd` numbered 10 or above, so that placing the program's fds at 3-5 cannot
/// overwrite one that is still to be placed.
fn above_stdio(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let n = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: fcntl just created this fd for us.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

impl Logger {
    /// Starts the program on the read ends of the process's output pipes and waits until it is
    /// ready. The shim keeps no copy of the read ends.
    pub fn start(
        cmd: &Command,
        env: &Env<'_>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> io::Result<Self> {
        let (ready_r, ready_w) = pipe2(OFlag::O_CLOEXEC)?;
        let fds = [
            above_stdio(&stdout)?,
            above_stdio(&stderr)?,
            above_stdio(&ready_w)?,
        ];
        drop((stdout, stderr, ready_w));
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut c = std::process::Command::new(&cmd.path);
        c.args(&cmd.args)
            .env_clear()
            .env("CONTAINER_ID", env.id)
            .env("CONTAINER_NAMESPACE", env.namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec the closure only calls dup2, which is
        // async-signal-safe, on fds that stay open until spawn returns; dup2 clears
        // close-on-exec on the copies, so exactly fds 3-5 reach the program.
        unsafe {
            c.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if nix::libc::dup2(*fd, FIRST_FD + i as RawFd) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = c.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting logging binary {}: {e}", cmd.path.display()),
            )
        })?;
        drop(fds);
        let logger = Logger {
            pid: Pid::from_raw(child.id() as i32),
            reaped: false,
        };
        // Ready when the program writes a byte or closes fd 5 (exiting closes it too).
        let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS.into());
        let ready = loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis();
            let mut pfd = [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut pfd,
                PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO),
            ) {
                Ok(n) => break n > 0,
                // SIGCHLD (the shim's handler) interrupts poll even with SA_RESTART.
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    let _ = kill(logger.pid, Signal::SIGKILL);
                    return Err(e.into());
                }
            }
        };
        if !ready {
            let _ = kill(logger.pid, Signal::SIGKILL);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "logging binary {} did not signal ready on fd 5 within {} s",
                    cmd.path.display(),
                    READY_TIMEOUT_MS / 1000
                ),
            ));
        }
        let mut byte = [0u8; 1];
        let _ = read(ready_r.as_raw_fd(), &mut byte);
        Ok(logger)
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    pub fn set_reaped(&mut self) {
        self.reaped = true;
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_as_containerd_builds_them() {
        let c = Command::parse("binary:///usr/bin/my%20log?driver=json-file&max-size=10m&flag")
            .expect("parse");
        assert_eq!(c.path, PathBuf::from("/usr/bin/my log"));
        assert_eq!(c.args, ["driver", "json-file", "max-size", "10m", "flag"]);
        let c = Command::parse("binary:///bin/l?msg=a+b%26c").expect("parse");
        assert_eq!(c.args, ["msg", "a b&c"]);
        assert!(Command::parse("binary://relative/x").is_err());
        assert!(Command::parse("binary:///x?a=%zz").is_err());
    }
}
