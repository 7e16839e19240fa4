//! A process's stdio through FIFOs, as `ctr` does it: the client makes the FIFOs in a private
//! temp dir, passes their paths to Tasks.Create or Exec, and copies between them and its own
//! stdio on threads doing blocking opens (which return once the shim opens the other end).
//! With a terminal, stdout carries the pty and there is no stderr FIFO; [`RawTerminal`] puts
//! the caller's terminal in raw mode for the duration.

use crate::tasks::TaskIo;
use crate::{Error, Result};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// Which streams to attach.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioConfig {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

/// The FIFOs of one process; removed (with their dir) when dropped.
pub struct Fifos {
    _dir: tempfile::TempDir,
    stdin: Option<PathBuf>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
    terminal: bool,
}

impl Fifos {
    /// Make the FIFOs `config` asks for, in a new 0700 temp dir.
    pub fn new(id: &str, config: StdioConfig) -> Result<Fifos> {
        // 0700: only root (this client and the shim) may open another's stdio.
        let dir = tempfile::Builder::new()
            .prefix("berth-fifo-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(|e| Error::io("create the FIFO dir", e))?;
        let make = |want: bool, stream: &str| -> Result<Option<PathBuf>> {
            if !want {
                return Ok(None);
            }
            let short = crate::names::short_id(id);
            let path = dir.path().join(format!("{short}-{stream}"));
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| Error::io(format!("mkfifo {}", path.display()), e.into()))?;
            Ok(Some(path))
        };
        let stdin = make(config.stdin, "stdin")?;
        let stdout = make(config.stdout, "stdout")?;
        let stderr = make(config.stderr && !config.terminal, "stderr")?;
        Ok(Fifos {
            _dir: dir,
            stdin,
            stdout,
            stderr,
            terminal: config.terminal,
        })
    }

    /// The paths for Tasks.Create / Exec.
    pub fn task_io(&self) -> TaskIo {
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        TaskIo {
            stdin: s(&self.stdin),
            stdout: s(&self.stdout),
            stderr: s(&self.stderr),
            terminal: self.terminal,
        }
    }

    /// Start copying: `input` into the stdin FIFO, the stdout and stderr FIFOs into `out` and
    /// `err`. `stdin_done` is told when `input` reached its end and the FIFO writer closed.
    pub fn attach(
        &self,
        input: Option<Box<dyn Read + Send>>,
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
        stdin_done: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Attached {
        let mut outputs = Vec::new();
        let mut pending = Vec::new();
        for (path, sink) in [(&self.stdout, out), (&self.stderr, err)] {
            if let Some(path) = path.clone() {
                pending.push(path.clone());
                outputs.push(std::thread::spawn(move || copy_out(&path, sink)));
            }
        }
        if let (Some(path), Some(input)) = (self.stdin.clone(), input) {
            std::thread::spawn(move || {
                copy_in(&path, input);
                if let Some(tx) = stdin_done {
                    let _ = tx.send(());
                }
            });
        }
        Attached { outputs, pending }
    }
}

/// The copies of one attached process.
pub struct Attached {
    outputs: Vec<JoinHandle<()>>,
    pending: Vec<PathBuf>,
}

impl Attached {
    /// Wait until stdout and stderr reached their end (the shim closes them after the process
    /// exited and its output was flushed), at most `limit`.
    pub async fn wait_output(self, limit: std::time::Duration) {
        let Attached { outputs, pending } = self;
        let joined = tokio::task::spawn_blocking(move || {
            for h in outputs {
                let _ = h.join();
            }
        });
        if tokio::time::timeout(limit, joined).await.is_err() {
            cancel(&pending);
        }
    }

    /// Stop waiting for a shim that will never open the FIFOs (the task was not created).
    pub fn cancel(self) {
        cancel(&self.pending);
    }
}

/// A blocked reader's open returns once any writer opens the FIFO: open one and close it at
/// once, so the reader sees EOF.
fn cancel(paths: &[PathBuf]) {
    for p in paths {
        let _ = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p);
    }
}

fn copy_out(path: &Path, mut sink: Box<dyn Write + Send>) {
    let Ok(mut fifo) = std::fs::File::open(path) else {
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match fifo.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if sink
                    .write_all(&buf[..n])
                    .and_then(|_| sink.flush())
                    .is_err()
                {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

fn copy_in(path: &Path, mut input: Box<dyn Read + Send>) {
    let Ok(mut fifo) = OpenOptions::new().write(true).open(path) else {
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if fifo.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// The caller's terminal in raw mode (keys reach the container's pty as typed) until dropped.
pub struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    /// Raw mode on stdin if it is a terminal; a no-op otherwise.
    pub fn enter() -> RawTerminal {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawTerminal { saved: None };
        }
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// The size (columns, rows) of the terminal on stdout, if it is one.
pub fn terminal_size() -> Option<(u32, u32)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((u32::from(ws.ws_col), u32::from(ws.ws_row)))
}
