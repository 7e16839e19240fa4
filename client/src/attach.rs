//! `berth attach`: the caller's stdio joined to a container that already runs. berthd is not
//! in the data path; the container's shim is.
//! - With a terminal (`run -dt`): the shim keeps the pty master and joins it to a socket
//!   beside the log (`<log dir>/attach.sock`, named to the shim as stdin `attach://PATH`), as
//!   docker's shim keeps the pty for its attach. The attachment reads the terminal's bytes
//!   live (prompts, echo, escape sequences, nothing framed) and writes the caller's keys into
//!   it; the size follows the caller's terminal through ResizePty.
//! - Without: the output goes only to the log file, so attaching follows that file from its
//!   current end until the task exits, as the CRI's attach does. Input goes into the stdin
//!   FIFO a container created with `-i` gets at start (`<log dir>/stdin`, beside its log; the
//!   shim holds a spare writer, so the process never sees EOF from an attach leaving).
//!
//! docker's detach keys (default ctrl-p ctrl-q) end the attachment and leave the container
//! running.

use crate::containers::ContainerInfo;
use crate::logs::LogLine;
use crate::tasks::ExitStatus;
use crate::{Client, Error, Result};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tonic::Code;

/// The label a container created with `-i` carries: its starts give it a stdin FIFO.
pub const STDIN_LABEL: &str = "io.berth.stdin";
/// docker's default detach keys: ctrl-p, ctrl-q.
pub const DEFAULT_DETACH_KEYS: &[u8] = &[0x10, 0x11];

/// How an attachment ended.
#[derive(Debug, Clone, Copy)]
pub enum Attachment {
    /// The container's process exited.
    Exited(ExitStatus),
    /// The detach keys were read; the container still runs.
    Detached,
}

/// docker's `--detach-keys`: comma-separated keys, each a single character or `ctrl-X` (X a
/// letter or one of `@[\]^_`).
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for key in spec.split(',') {
        let bad = || {
            Error::invalid(format!(
                "invalid detach keys {spec:?}: {key:?} is not a key"
            ))
        };
        match key.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => {
                let b = c.as_bytes()[0].to_ascii_uppercase();
                if !(b'@'..=b'_').contains(&b) {
                    return Err(bad());
                }
                out.push(b - b'@');
            }
            Some(_) => return Err(bad()),
            None if key.len() == 1 => out.push(key.as_bytes()[0]),
            None => return Err(bad()),
        }
    }
    Ok(out)
}

/// The stdin FIFO of a container whose log is at `log_path`.
pub fn stdin_fifo(log_path: &Path) -> PathBuf {
    log_path.with_file_name("stdin")
}

/// The socket the shim joins to the pty of a `-t` container whose log is at `log_path`.
pub fn attach_socket(log_path: &Path) -> PathBuf {
    log_path.with_file_name("attach.sock")
}

/// The stdin a detached start of a `-t` container names to the shim.
pub(crate) fn attach_uri(log_path: &Path) -> String {
    format!("attach://{}", attach_socket(log_path).display())
}

/// Connect to a unix socket whose path may be longer than a sockaddr_un holds (a log
/// directory has a 64-character container id in it): through its directory's descriptor.
fn connect_socket(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a socket path",
        ));
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(dir)?;
    use std::os::fd::AsRawFd;
    let short = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    std::os::unix::net::UnixStream::connect(short)
}

/// Make the stdin FIFO for a detached start of `container`, if it was created with `-i`;
/// its path for Tasks.Create.
pub(crate) fn prepare_stdin(container: &ContainerInfo) -> Result<Option<PathBuf>> {
    if container.labels.get(STDIN_LABEL).map(String::as_str) != Some("true") {
        return Ok(None);
    }
    let Some(log) = container.labels.get(crate::logs::LOG_PATH_LABEL) else {
        return Ok(None);
    };
    let fifo = stdin_fifo(Path::new(log));
    if let Some(dir) = fifo.parent() {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    match nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(Some(fifo)),
        Err(e) => Err(Error::io(format!("mkfifo {}", fifo.display()), e.into())),
    }
}

/// Copies `input` into `fifo` until it ends (false) or the detach keys come (true). Bytes
/// that start the key sequence are held back until it is clear they are not it.
fn copy_stdin<W: Write>(mut input: Box<dyn Read + Send>, mut fifo: Option<W>, keys: &[u8]) -> bool {
    let mut held: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let mut out = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if !keys.is_empty() && b == keys[held.len()] {
                held.push(b);
                if held.len() == keys.len() {
                    if let Some(f) = fifo.as_mut() {
                        let _ = f.write_all(&out);
                    }
                    return true;
                }
                continue;
            }
            out.append(&mut held);
            if !keys.is_empty() && b == keys[0] {
                held.push(b);
            } else {
                out.push(b);
            }
        }
        if let Some(f) = fifo.as_mut() {
            if f.write_all(&out).is_err() {
                // The process closed its stdin: keep reading for the detach keys only.
                fifo = None;
            }
        }
    }
}

impl Client {
    /// The log of `container`, which must be running.
    async fn running_log(&self, container: &ContainerInfo) -> Result<PathBuf> {
        if !self.status(container).await?.is_running() {
            return Err(Error::local(
                Code::FailedPrecondition,
                format!(
                    "cannot attach to container {}: it is not running; start it first (berth start -a {})",
                    container.name, container.name
                ),
            ));
        }
        container
            .labels
            .get(crate::logs::LOG_PATH_LABEL)
            .map(PathBuf::from)
            .ok_or_else(|| {
                Error::local(
                    Code::FailedPrecondition,
                    format!(
                        "container {} was not created by berth and has no log to attach to",
                        container.name
                    ),
                )
            })
    }

    /// Join the terminal of a running `-t` container: its pty's bytes from now on go to `out`
    /// and, when the container was created with `-i`, `input` goes to the pty (the keys are
    /// read either way, for `detach_keys`). None when its shim holds no attach socket (started
    /// by another client, or restarted by the monitor without `berth/restart.stdin`):
    /// [`Client::attach_container`] follows the log instead. Ends when the process exits or the detach keys are read.
    pub async fn attach_terminal(
        &self,
        container: &ContainerInfo,
        input: Option<Box<dyn Read + Send>>,
        detach_keys: Vec<u8>,
        mut out: Box<dyn Write + Send>,
    ) -> Result<Option<Attachment>> {
        let log = self.running_log(container).await?;
        let socket = attach_socket(&log);
        let conn = match connect_socket(&socket) {
            Ok(c) => c,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Error::io(format!("connect {}", socket.display()), e)),
        };
        let io_err = |e| Error::io(format!("attach {}", socket.display()), e);
        let mut reader = conn.try_clone().map_err(io_err)?;
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = ended_tx.send(());
        });
        let (detach_tx, detach_rx) = tokio::sync::oneshot::channel::<()>();
        if let Some(input) = input {
            let stdin_open = container.labels.get(STDIN_LABEL).map(String::as_str) == Some("true");
            let writer = if stdin_open {
                Some(conn.try_clone().map_err(io_err)?)
            } else {
                None
            };
            std::thread::spawn(move || {
                if copy_stdin(input, writer, &detach_keys) {
                    let _ = detach_tx.send(());
                }
            });
        }
        // A sender gone without a word (no input, or input that ended) never detaches.
        let keys_read = async {
            if detach_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let detached = tokio::select! {
            _ = ended_rx => false,
            () = keys_read => true,
        };
        if detached {
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return Ok(Some(Attachment::Detached));
        }
        Ok(Some(Attachment::Exited(
            self.tasks().wait(&container.id, "").await?,
        )))
    }

    /// Join a running container: every line of output it writes from now on goes to `on_line`
    /// and, when `input` is given and the container was created with `-i`, `input` goes to its
    /// stdin. Ends when the process exits or `detach_keys` (empty: none) are read from `input`.
    pub async fn attach_container(
        &self,
        container: &ContainerInfo,
        input: Option<Box<dyn Read + Send>>,
        detach_keys: Vec<u8>,
        on_line: &mut (dyn FnMut(&LogLine) -> std::io::Result<()> + Send),
    ) -> Result<Attachment> {
        let log = self.running_log(container).await?;
        // Taken before stdin flows, so the answer to the first input is not missed.
        let position = std::fs::File::open(&log)
            .and_then(|f| Ok((f.metadata()?, f)))
            .ok();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut stop = None;
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(input) = input {
            // O_NONBLOCK only for the open (it must not wait for a reader: the shim is one),
            // then blocking writes.
            let fifo = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(stdin_fifo(&log))
                .ok();
            if let Some(f) = &fifo {
                use std::os::fd::AsRawFd;
                // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
                unsafe {
                    let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                    libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
                }
            }
            let flag = flag.clone();
            std::thread::spawn(move || {
                if copy_stdin(input, fifo, &detach_keys) {
                    // Set before the word goes out: follow returns on the word.
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = tx.send(());
                }
            });
            stop = Some(rx);
        }
        crate::logs::follow(self, container, &log, position, on_line, stop).await?;
        let detached = flag.load(std::sync::atomic::Ordering::SeqCst);
        if detached {
            return Ok(Attachment::Detached);
        }
        Ok(Attachment::Exited(
            self.tasks().wait(&container.id, "").await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_as_docker_writes_them() {
        assert_eq!(
            parse_detach_keys("ctrl-p,ctrl-q").unwrap(),
            DEFAULT_DETACH_KEYS
        );
        assert_eq!(parse_detach_keys("ctrl-a,x").unwrap(), vec![1, b'x']);
        assert!(parse_detach_keys("ctrl-").is_err());
        assert!(parse_detach_keys("ab").is_err());
    }

    #[test]
    fn stdin_stops_at_the_detach_keys_and_passes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let f = std::fs::File::create(&out).unwrap();
        let input = b"ab\x10c\x10\x11never".to_vec();
        assert!(copy_stdin(
            Box::new(std::io::Cursor::new(input)),
            Some(f),
            DEFAULT_DETACH_KEYS,
        ));
        assert_eq!(std::fs::read(&out).unwrap(), b"ab\x10c");
    }
}
