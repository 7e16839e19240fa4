//! A process's stdio, with containerd's FIFO semantics.
//!
//! The client (ctr) creates the FIFOs and opens its ends with blocking opens; the shim opens
//! the other ends, never blocking: the read end first with O_NONBLOCK (which never blocks),
//! then the write end (which a reader makes non-blocking to open).
//!
//! - stdout/stderr: the shim holds a writer and a spare reader it never reads, so a client
//!   that goes away (`ctr run -d`) causes no EPIPE; output just waits in the FIFO.
//! - stdin: the shim holds a spare writer, so the process sees EOF only after `close_io`
//!   (and the client's own writer closing), not whenever a client detaches.
//! - Like containerd, the process gets pipes, not the FIFOs, and the shim copies between
//!   them. So when the process exits the shim can flush and then close every FIFO writer it
//!   holds, even if a daemonised grandchild still has the pipe: ctr waits for that EOF.
//! - With a terminal, the pty master (received from runc over the console socket) replaces
//!   the pipes: stdin FIFO -> master, master -> stdout FIFO. Or stdin is `attach://PATH`: a
//!   socket `berth attach` connects to, joined to the master (`attach.rs`).
//!
//! Every fd is O_CLOEXEC (std and pipe2 flags), so nothing but the pipes reaches runc.

use crate::attach::AttachPoint;
use crate::crilog;
use crate::logger;
use crate::runc::ProcStdio;
use nix::cmsg_space;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::unistd::{fchown, pipe2, Gid, Uid};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::rc::Rc;

const BUF_SIZE: usize = 16 * 1024;

/// Where one stdio stream goes, parsed from the request's path string.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    None,
    Fifo(PathBuf),
    /// `file://` (stdout/stderr only): appended to a regular file.
    File(PathBuf),
    /// `binary://` (stdout/stderr only): a logging program the shim starts, which reads the
    /// process's output itself (containerd's logging plugins, as nerdctl uses).
    Binary(logger::Command),
    /// `cri-log://` (stdout/stderr only): the shim writes the CRI log format itself
    /// (`crilog.rs`).
    CriLog(crilog::Spec),
    /// `fifo:///path?tee=<escaped cri-log:// URI>` (stdout/stderr only): the FIFO, and the
    /// same output logged too (an attached client sees it live, and it is in the log).
    Tee(PathBuf, crilog::Spec),
    /// `attach:///path` (stdin, with a terminal only): a socket joined to the pty master.
    Attach(PathBuf),
}

pub fn parse_target(s: &str) -> Result<Target, String> {
    let (path, file) = if s.is_empty() {
        return Ok(Target::None);
    } else if s.starts_with("binary://") {
        return logger::Command::parse(s).map(Target::Binary);
    } else if let Some(p) = s.strip_prefix("attach://") {
        let path = PathBuf::from(p);
        if !path.is_absolute() {
            return Err(format!("stdio path {s:?} is not absolute"));
        }
        return Ok(Target::Attach(path));
    } else if s.starts_with("cri-log://") {
        return crilog::Spec::parse(s).map(Target::CriLog);
    } else if let Some(p) = s.strip_prefix("file://") {
        (p, true)
    } else if let Some(p) = s.strip_prefix("fifo://") {
        if let Some((p, query)) = p.split_once('?') {
            let uri = query
                .strip_prefix("tee=")
                .ok_or_else(|| format!("{s:?}: a fifo:// query is only tee=<cri-log:// URI>"))?;
            let spec = crilog::Spec::parse(&logger::unescape(uri, false)?)?;
            let path = PathBuf::from(p);
            if !path.is_absolute() {
                return Err(format!("stdio path {s:?} is not absolute"));
            }
            return Ok(Target::Tee(path, spec));
        }
        (p, false)
    } else if s.contains("://") {
        return Err(format!(
            "unsupported stdio URI {s:?} (only FIFO paths, file://, binary://, cri-log:// and attach://)"
        ));
    } else {
        (s, false)
    };
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!("stdio path {s:?} is not absolute"));
    }
    Ok(if file {
        Target::File(path)
    } else {
        Target::Fifo(path)
    })
}

fn open(path: &Path, read: bool, flags: OFlag) -> io::Result<File> {
    OpenOptions::new()
        .read(read)
        .write(!read)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn open_fifo(path: &Path, read: bool) -> io::Result<File> {
    let f = open(path, read, OFlag::O_NONBLOCK)?;
    if !f.metadata()?.file_type().is_fifo() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a FIFO", path.display()),
        ));
    }
    Ok(f)
}

fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// A pipe (both ends blocking; callers make the shim's end non-blocking), owned by the
/// process's user so the process can re-open /dev/stdout.
fn pipe(owner: Option<(u32, u32)>) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
    if let Some((uid, gid)) = owner {
        for fd in [&r, &w] {
            fchown(
                fd.as_raw_fd(),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
            )?;
        }
    }
    Ok((r, w))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// FIFO -> process.
    Stdin,
    /// process -> FIFO/file.
    Output,
}

/// Where a copier writes.
enum Dst {
    File(File),
    /// Never blocks: records go to the log's writer thread (or are dropped and counted).
    CriLog(crilog::Sink),
}

/// Copies one stream through a small buffer, driven by the event loop.
pub struct Copier {
    pub dir: Direction,
    src: File,
    dst: Dst,
    /// A log that gets a copy of everything read (`Target::Tee`).
    tee: Option<crilog::Sink>,
    /// Held open only to keep the FIFO readable (stdout/stderr spare reader).
    _spare: Option<File>,
    /// Attachments that get a copy of everything read (the pty's output); they end with it.
    attach: Option<AttachPoint>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The process has exited: once the source has nothing more to give, the copy is done.
    exited: bool,
    /// The source is a pty master: wait for its EIO rather than the first empty read, since
    /// the line discipline may still be pushing the last output after the exit.
    pty: bool,
}

pub enum Interest<'a> {
    Read(BorrowedFd<'a>),
    Write(BorrowedFd<'a>),
}

impl Copier {
    fn new(dir: Direction, src: File, dst: Dst, spare: Option<File>, pty: bool) -> Self {
        Copier {
            dir,
            src,
            dst,
            tee: None,
            _spare: spare,
            attach: None,
            buf: Vec::new(),
            start: 0,
            end: 0,
            exited: false,
            pty,
        }
    }

    pub fn interest(&self) -> Interest<'_> {
        match &self.dst {
            Dst::File(dst) if self.start < self.end => Interest::Write(dst.as_fd()),
            _ => Interest::Read(self.src.as_fd()),
        }
    }

    pub fn set_exited(&mut self) {
        self.exited = true;
    }

    /// Move as much as possible without blocking. Returns false when the copy is finished
    /// (the caller drops it, closing the destination and spare fds).
    pub fn step(&mut self) -> bool {
        loop {
            if self.start < self.end {
                let dst = match &mut self.dst {
                    Dst::File(f) => f,
                    Dst::CriLog(sink) => {
                        sink.write(&self.buf[self.start..self.end]);
                        self.start = self.end;
                        continue;
                    }
                };
                match dst.write(&self.buf[self.start..self.end]) {
                    Ok(n) => self.start += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EPIPE: the process closed its stdin; nothing else can be done.
                    Err(_) => return false,
                }
                continue;
            }
            if self.buf.is_empty() {
                self.buf = vec![0; BUF_SIZE];
            }
            match self.src.read(&mut self.buf) {
                Ok(0) => return false,
                Ok(n) => {
                    if let Some(tee) = &mut self.tee {
                        tee.write(&self.buf[..n]);
                    }
                    if let Some(a) = &self.attach {
                        a.send(&self.buf[..n]);
                    }
                    self.start = 0;
                    self.end = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return !self.exited || self.pty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EIO from a pty master: every slave fd is closed.
                Err(_) => return false,
            }
        }
    }
}

/// The shim's side of one process's stdio.
#[derive(Default)]
pub struct ProcessIo {
    pub copiers: Vec<Copier>,
    /// The spare stdin writer; dropped by close_io.
    pub stdin_spare: Option<File>,
    /// The pty master, for resize.
    pub console: Option<File>,
    /// The `binary://` logging program, told to stop when this goes (the process's delete).
    pub logger: Option<logger::Logger>,
}

/// Opened stdio before runc runs: the process-side fds for runc, and for terminal mode the
/// FIFO ends that get wired to the pty master once runc has sent it.
pub struct Prepared {
    pub io: ProcessIo,
    pub proc_stdio: ProcStdio,
    pty_stdin: Option<File>,
    pty_stdout: Option<(Dst, Option<File>, Option<crilog::Sink>)>,
    /// `attach://`: where to bind the socket once the master is there.
    pty_attach: Option<PathBuf>,
}

/// Open the FIFOs/files for a process. For terminal mode, runc gets /dev/null and the
/// console comes later through [`Prepared::attach_console`].
pub fn prepare(
    stdin: &Target,
    stdout: &Target,
    stderr: &Target,
    terminal: bool,
    owner: Option<(u32, u32)>,
    env: &logger::Env<'_>,
) -> io::Result<Prepared> {
    let mut io = ProcessIo::default();
    let mut proc_stdio = ProcStdio::null();
    let mut pty_stdin = None;
    let mut pty_stdout = None;
    let mut pty_attach = None;

    match stdin {
        Target::None => {}
        Target::Attach(p) => {
            // The attachment's output is a copy of the pty's: something must read the pty.
            if !terminal || matches!(stdout, Target::None) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "attach:// is for a terminal whose output goes somewhere (stdout)",
                ));
            }
            pty_attach = Some(p.clone());
        }
        Target::File(_) | Target::Binary(_) | Target::CriLog(_) | Target::Tee(..) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file://, binary:// and cri-log:// are not supported for stdin",
            ))
        }
        Target::Fifo(p) => {
            let reader = open_fifo(p, true)?;
            // Opened after the reader, so it cannot block; held until close_io.
            io.stdin_spare = Some(open_fifo(p, false)?);
            if terminal {
                pty_stdin = Some(reader);
            } else {
                let (r, w) = pipe(owner)?;
                set_nonblocking(w.as_fd(), true)?;
                io.copiers.push(Copier::new(
                    Direction::Stdin,
                    reader,
                    Dst::File(File::from(w)),
                    None,
                    false,
                ));
                proc_stdio.stdin = Stdio::from(r);
            }
        }
    }

    // A logging program takes both output streams, as in containerd (the client names it as
    // stdout, and as stderr too or not at all).
    let binary =
        match (stdout, stderr) {
            (Target::Binary(cmd), Target::Binary(other)) if cmd == other => Some(cmd),
            (Target::Binary(cmd), Target::None) => Some(cmd),
            (Target::Binary(_), _) | (_, Target::Binary(_)) => return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a binary:// logger takes stdout and stderr together: name the same one for both",
            )),
            _ => None,
        };
    if let Some(cmd) = binary {
        let (out_r, out_w) = pipe(owner)?;
        let (err_r, err_w) = pipe(owner)?;
        io.logger = Some(logger::Logger::start(cmd, env, out_r, err_r)?);
        if terminal {
            pty_stdout = Some((Dst::File(File::from(out_w)), None, None));
        } else {
            proc_stdio.stdout = Stdio::from(out_w);
            proc_stdio.stderr = Stdio::from(err_w);
        }
        return Ok(Prepared {
            io,
            proc_stdio,
            pty_stdin,
            pty_stdout,
            pty_attach,
        });
    }

    // stdout and stderr naming the same cri-log:// file share its writer.
    let mut cri_logs: Vec<(crilog::Spec, Rc<RefCell<crilog::CriLog>>)> = Vec::new();
    for (target, is_err) in [(stdout, false), (stderr, true)] {
        let stream = if is_err {
            crilog::Stream::Stderr
        } else {
            crilog::Stream::Stdout
        };
        let mut sink = |spec: &crilog::Spec| -> io::Result<crilog::Sink> {
            let log = match cri_logs.iter().find(|(s, _)| s == spec) {
                Some((_, log)) => log.clone(),
                None => {
                    let log = crilog::CriLog::open(spec)?;
                    cri_logs.push((spec.clone(), log.clone()));
                    log
                }
            };
            Ok(crilog::Sink::new(log, stream))
        };
        let mut tee = None;
        let (dst, spare) = match target {
            Target::None | Target::Binary(_) => continue,
            Target::Attach(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "attach:// is for stdin only",
                ))
            }
            Target::Fifo(p) => {
                let spare = open_fifo(p, true)?;
                (Dst::File(open_fifo(p, false)?), Some(spare))
            }
            Target::Tee(p, spec) => {
                tee = Some(sink(spec)?);
                let spare = open_fifo(p, true)?;
                (Dst::File(open_fifo(p, false)?), Some(spare))
            }
            Target::CriLog(spec) => (Dst::CriLog(sink(spec)?), None),
            Target::File(p) => {
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .custom_flags(OFlag::O_NONBLOCK.bits())
                    .open(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
                (Dst::File(f), None)
            }
        };
        if terminal {
            if !is_err {
                pty_stdout = Some((dst, spare, tee));
            }
            continue;
        }
        let (r, w) = pipe(owner)?;
        set_nonblocking(r.as_fd(), true)?;
        let mut c = Copier::new(Direction::Output, File::from(r), dst, spare, false);
        c.tee = tee;
        io.copiers.push(c);
        if is_err {
            proc_stdio.stderr = Stdio::from(w);
        } else {
            proc_stdio.stdout = Stdio::from(w);
        }
    }
    Ok(Prepared {
        io,
        proc_stdio,
        pty_stdin,
        pty_stdout,
        pty_attach,
    })
}

impl Prepared {
    /// Split off the fds runc needs; the shim keeps the rest.
    pub fn take_proc_stdio(&mut self) -> ProcStdio {
        std::mem::replace(&mut self.proc_stdio, ProcStdio::null())
    }

    /// Wire the pty master between the FIFOs.
    pub fn attach_console(mut self, master: File) -> io::Result<ProcessIo> {
        set_nonblocking(master.as_fd(), true)?;
        if let Some(reader) = self.pty_stdin.take() {
            let m = master.try_clone()?;
            self.io.copiers.push(Copier::new(
                Direction::Stdin,
                reader,
                Dst::File(m),
                None,
                false,
            ));
        }
        if let Some((dst, spare, tee)) = self.pty_stdout.take() {
            let m = master.try_clone()?;
            let mut c = Copier::new(Direction::Output, m, dst, spare, true);
            c.tee = tee;
            if let Some(path) = self.pty_attach.take() {
                c.attach = Some(AttachPoint::bind(&path, &master)?);
            }
            self.io.copiers.push(c);
        }
        self.io.console = Some(master);
        Ok(self.io)
    }

    pub fn into_io(self) -> ProcessIo {
        self.io
    }
}

/// The socket runc sends the pty master to (`--console-socket`).
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: PathBuf) -> io::Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(ConsoleSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Called after runc returned successfully, so its connection is already queued.
    pub fn receive_master(&self) -> io::Result<File> {
        self.listener.set_nonblocking(true)?;
        let (conn, _) = self.listener.accept()?;
        let mut byte = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = cmsg_space!([std::os::fd::RawFd; 2]);
        let msg = recvmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut master = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just installed this fd for us (close-on-exec); we own it.
                    let f = unsafe { File::from_raw_fd(fd) };
                    master.get_or_insert(f);
                }
            }
        }
        master.ok_or_else(|| io::Error::other("runc sent no pty master on the console socket"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

nix::ioctl_write_ptr_bad!(tiocswinsz, nix::libc::TIOCSWINSZ, nix::libc::winsize);

pub fn resize(console: &File, width: u16, height: u16) -> io::Result<()> {
    let ws = nix::libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call.
    unsafe { tiocswinsz(console.as_raw_fd(), &ws) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("").unwrap(), Target::None);
        assert_eq!(parse_target("/a/b").unwrap(), Target::Fifo("/a/b".into()));
        assert_eq!(
            parse_target("fifo:///a").unwrap(),
            Target::Fifo("/a".into())
        );
        assert_eq!(
            parse_target("file:///l").unwrap(),
            Target::File("/l".into())
        );
        assert!(matches!(
            parse_target("binary:///usr/bin/log?a=1"),
            Ok(Target::Binary(_))
        ));
        assert!(parse_target("binary://rel").is_err());
        assert!(matches!(
            parse_target("cri-log:///l/c.log?max-size=1k"),
            Ok(Target::CriLog(_))
        ));
        assert!(parse_target("cri-log://rel").is_err());
        assert!(matches!(
            parse_target("fifo:///f?tee=cri-log%3A%2F%2F%2Fl%2Fc.log%3Fmax-size%3D1k"),
            Ok(Target::Tee(p, s)) if p == Path::new("/f") && s.max_size == 1024
        ));
        assert!(parse_target("fifo:///f?x=1").is_err());
        assert_eq!(
            parse_target("attach:///l/attach.sock").unwrap(),
            Target::Attach("/l/attach.sock".into())
        );
        assert!(parse_target("attach://rel").is_err());
        assert!(parse_target("tcp://host:1").is_err());
        assert!(parse_target("rel/path").is_err());
    }
}
