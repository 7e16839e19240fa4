//! `attach://` (stdin, terminal only): the pty master the shim holds, reachable by `berth attach`
//! after a detached `run -t`, as docker's attach reaches a container's terminal.
//!
//! The shim binds a unix socket (0600) at the URI's path. Every connection gets, from the moment
//! it connects, a copy of what the pty writes (the log still gets it all), and what it sends
//! is written to the pty master, so the terminal's line discipline echoes it as for a local
//! terminal. Detach keys and resize are the client's business (resize goes through berthd's
//! ResizePty like any other). The container is never slowed by an attachment: output is sent
//! without blocking, and a connection that cannot take it (its buffer full) is dropped.
//! When the pty closes (the process and everything holding the slave are gone) every
//! connection is shut down, which is the client's sign to collect the exit status.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The connections output goes to.
#[derive(Default)]
struct Fanout {
    conns: Mutex<Vec<UnixStream>>,
    closed: AtomicBool,
}

/// The socket and its connections; held by the pty's output copier, closed when it is dropped.
pub struct AttachPoint {
    fanout: Arc<Fanout>,
    path: PathBuf,
    /// The socket's directory, opened so paths longer than a sockaddr_un holds still work.
    dir: OwnedFd,
}

/// A path to `name` in the directory `dir` is open on, short enough for a sockaddr_un whatever
/// the directory's own path length (log directories hold a 64-character container id).
fn short_path(dir: &OwnedFd, name: &std::ffi::OsStr) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

impl AttachPoint {
    /// Bind the socket at `path` and serve connections for the pty `master` from a thread.
    pub fn bind(path: &Path, master: &File) -> io::Result<AttachPoint> {
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("attach socket {}: not a file path", path.display()),
                ))
            }
        };
        let dir: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_PATH)
            .open(parent)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", parent.display())))?
            .into();
        let at = short_path(&dir, name);
        // A socket left by an earlier task of the same container.
        let _ = std::fs::remove_file(&at);
        let listener = UnixListener::bind(&at)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o600))?;
        let fanout = Arc::new(Fanout::default());
        let (f, input) = (fanout.clone(), master.try_clone()?);
        std::thread::Builder::new()
            .name("attach".into())
            .spawn(move || accept_loop(listener, f, input))?;
        Ok(AttachPoint {
            fanout,
            path: path.to_path_buf(),
            dir,
        })
    }

    /// Hand output to every connection without blocking; drop those that cannot take it.
    pub fn send(&self, data: &[u8]) {
        let Ok(mut conns) = self.fanout.conns.lock() else {
            return;
        };
        conns.retain(|c| {
            let mut rest = data;
            while !rest.is_empty() {
                match send(
                    c.as_raw_fd(),
                    rest,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                ) {
                    Ok(n) => rest = &rest[n..],
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => {
                        let _ = c.shutdown(std::net::Shutdown::Both);
                        return false;
                    }
                }
            }
            true
        });
    }
}

impl Drop for AttachPoint {
    /// The pty closed: every connection ends, and nobody new can come.
    fn drop(&mut self) {
        self.fanout.closed.store(true, Ordering::SeqCst);
        let name = self.path.file_name().unwrap_or_default();
        let at = short_path(&self.dir, name);
        // Wakes the accept thread, which sees `closed` and ends.
        let _ = UnixStream::connect(&at);
        let _ = std::fs::remove_file(&at);
        if let Ok(mut conns) = self.fanout.conns.lock() {
            for c in conns.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn accept_loop(listener: UnixListener, fanout: Arc<Fanout>, master: File) {
    let master = Arc::new(master);
    for conn in listener.incoming() {
        if fanout.closed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let (Ok(reader), Ok(mut conns)) = (conn.try_clone(), fanout.conns.lock()) else {
            continue;
        };
        conns.push(conn);
        drop(conns);
        let master = master.clone();
        let _ = std::thread::Builder::new()
            .name("attach-input".into())
            .spawn(move || copy_input(reader, &master));
    }
}

/// A connection's bytes into the pty master until the connection ends. The master is
/// non-blocking (the event loop reads it): a full input queue is waited out here, on this
/// connection's own thread.
fn copy_input(mut conn: UnixStream, mut master: &File) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            match master.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_gets_output_and_its_input_reaches_the_master() {
        let dir = tempfile::tempdir().unwrap();
        // A long directory, as a log directory with a container id in it.
        let long = dir.path().join("x".repeat(100));
        std::fs::create_dir(&long).unwrap();
        let path = long.join("attach.sock");
        // A socketpair stands in for the pty master: one end is "the master".
        let (master, other) = UnixStream::pair().unwrap();
        let master = File::from(OwnedFd::from(master));
        let point = AttachPoint::bind(&path, &master).unwrap();
        let d = OwnedFd::from(File::open(&long).unwrap());
        let mut c = UnixStream::connect(short_path(&d, "attach.sock".as_ref())).unwrap();
        // The connection is registered by the accept thread.
        let t0 = std::time::Instant::now();
        while point.fanout.conns.lock().unwrap().is_empty() {
            assert!(t0.elapsed().as_secs() < 5, "connection never registered");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        point.send(b"prompt$ ");
        let mut got = [0u8; 8];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"prompt$ ");
        c.write_all(b"ls\r").unwrap();
        let mut typed = [0u8; 3];
        (&other).read_exact(&mut typed).unwrap();
        assert_eq!(&typed, b"ls\r");
        drop(point);
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(!path.exists(), "the socket is removed with the pty");
    }
}
