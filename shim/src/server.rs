//! The shim's single-threaded event loop: the control socket, stdio copying and reaping all
//! run from one `poll(2)`. Requests are handled one at a time, to completion — except
//! `wait`, which parks its connection until the process is finished.

use crate::cgroup;
use crate::io::{self, ConsoleSocket, Interest};
use crate::log;
use crate::logger;
use crate::process::{self, Process};
use crate::reaper::Reaper;
use crate::runc::{read_pid_file, Runc};
use berth_shim::protocol::{
    decode_request, CreateRequest, Empty, ErrorKind, ExecRequest, ListReply, PidInfo, PidReply,
    PidsReply, Request, Response, ShimError, Status, VersionReply, MAX_REQUEST_LINE,
    PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Instant;

type Reply = Result<serde_json::Value, ShimError>;

/// Where a process's stderr goes. A terminal has one output stream, so the stderr a client names
/// beside `terminal` is left unopened, as containerd's shim leaves it: containerd's Go client
/// (`cio`, which ctr 2.x and nerdctl use) names all three FIFOs for `-t`. It must still parse.
fn stderr_target(stderr: &str, terminal: bool) -> Result<io::Target, String> {
    let target = io::parse_target(stderr)?;
    Ok(if terminal { io::Target::None } else { target })
}

fn ok<T: Serialize>(t: T) -> Reply {
    Ok(serde_json::to_value(t).unwrap_or_default())
}

fn err(kind: ErrorKind, op: &str, msg: impl std::fmt::Display) -> ShimError {
    ShimError::new(kind, op, msg)
}

fn internal(op: &str, msg: impl std::fmt::Display) -> ShimError {
    err(ErrorKind::Internal, op, msg)
}

/// A runtime command's failure: DeadlineExceeded when it was killed for running too long.
fn runc_error(runc: &Runc, op: &str, msg: impl std::fmt::Display) -> ShimError {
    match runc.timed_out {
        true => err(ErrorKind::DeadlineExceeded, op, msg),
        false => internal(op, msg),
    }
}

fn precondition(op: &str, msg: impl std::fmt::Display) -> ShimError {
    err(ErrorKind::FailedPrecondition, op, msg)
}

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Parked in `wait`: no further requests are read until it is answered.
    waiting: bool,
    /// The client sent EOF (or must be cut off): close once the replies are written.
    eof: bool,
    dead: bool,
}

impl Conn {
    fn flush(&mut self) {
        while !self.wbuf.is_empty() {
            match self.stream.write(&self.wbuf) {
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }
}

enum Tag {
    Wake,
    Listen,
    Conn(u64),
    Copy(String, usize),
}

pub struct Server {
    namespace: String,
    id: String,
    bundle: PathBuf,
    /// Where the control and console sockets live (the bundle unless --socket-dir).
    sockets: PathBuf,
    exits_dir: PathBuf,
    runc: Runc,
    listener: UnixListener,
    reaper: Reaper,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Key "" is init; other keys are exec ids.
    procs: BTreeMap<String, Process>,
    init_deleted: bool,
    /// The container has no pid namespace of its own (it shares the host's or another's), so
    /// its other processes do not die with init: they are killed when init exits (containerd).
    kill_all_on_init_exit: bool,
    /// Exits reaped during a runc call whose pid was not known yet (see reaper.rs).
    unknown_exits: HashMap<u32, u32>,
    /// Connections whose wait was answered: their buffered requests are handled from the
    /// loop, never from inside another request's handler.
    resume: Vec<u64>,
    shutting_down: bool,
    /// The move into the shim's own cgroup, until `create` has waited for it.
    cgroup_join: Option<cgroup::Joining>,
}

impl Server {
    pub fn new(
        namespace: String,
        id: String,
        bundle: PathBuf,
        sockets: PathBuf,
        runc: Runc,
        listener: UnixListener,
        reaper: Reaper,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let exits_dir = bundle.join("exits");
        std::fs::create_dir_all(&exits_dir)?;
        Ok(Server {
            namespace,
            id,
            bundle,
            sockets,
            exits_dir,
            runc,
            listener,
            reaper,
            conns: BTreeMap::new(),
            next_conn: 0,
            procs: BTreeMap::new(),
            init_deleted: false,
            kill_all_on_init_exit: false,
            unknown_exits: HashMap::new(),
            resume: Vec::new(),
            shutting_down: false,
            cgroup_join: None,
        })
    }

    /// The shim's move into its own cgroup, which `create` waits for.
    pub fn joining_cgroup(mut self, joining: Option<cgroup::Joining>) -> Self {
        self.cgroup_join = joining;
        self
    }

    /// Serve until a successful `shutdown`.
    pub fn run(mut self) {
        log!(
            "serving {}/{} in {}",
            self.namespace,
            self.id,
            self.bundle.display()
        );
        loop {
            let (tags, events) = match self.poll_once() {
                Some(r) => r,
                None => continue,
            };
            // Copy events first: their indices are only valid before anything else mutates.
            let mut finished: Vec<(String, usize)> = Vec::new();
            for (tag, ev) in tags.iter().zip(&events) {
                if let (Tag::Copy(key, i), false) = (tag, ev.is_empty()) {
                    if let Some(c) = self
                        .procs
                        .get_mut(key)
                        .and_then(|p| p.io.copiers.get_mut(*i))
                    {
                        if !c.step() {
                            finished.push((key.clone(), *i));
                        }
                    }
                }
            }
            for (key, i) in finished.into_iter().rev() {
                if let Some(p) = self.procs.get_mut(&key) {
                    p.io.copiers.remove(i);
                }
            }
            for (tag, ev) in tags.into_iter().zip(events) {
                if ev.is_empty() {
                    continue;
                }
                match tag {
                    Tag::Wake => {
                        let exits = self.reaper.reap();
                        self.handle_exits(exits, false);
                    }
                    Tag::Listen => self.accept(),
                    Tag::Conn(id) => self.on_conn(id, ev),
                    Tag::Copy(..) => {}
                }
            }
            self.expire_drains();
            self.complete_waiters();
            while let Some(id) = self.resume.pop() {
                self.process_lines(id);
                self.complete_waiters();
            }
            self.conns
                .retain(|_, c| !(c.dead || (c.eof && !c.waiting && c.wbuf.is_empty())));
            if self.shutting_down && self.conns.values().all(|c| c.wbuf.is_empty()) {
                break;
            }
        }
        let _ = std::fs::remove_file(self.sockets.join("shim.sock"));
        let _ = std::fs::remove_file(self.bundle.join("shim.pid"));
        log!("shut down");
    }

    fn poll_once(&self) -> Option<(Vec<Tag>, Vec<PollFlags>)> {
        let mut fds = vec![PollFd::new(self.reaper.fd(), PollFlags::POLLIN)];
        let mut tags = vec![Tag::Wake];
        if !self.shutting_down {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            tags.push(Tag::Listen);
        }
        for (id, c) in &self.conns {
            let mut ev = PollFlags::empty();
            if !c.waiting && !c.eof {
                ev |= PollFlags::POLLIN;
            }
            if !c.wbuf.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            // Even with no events requested, POLLHUP reports a client that went away.
            fds.push(PollFd::new(c.stream.as_fd(), ev));
            tags.push(Tag::Conn(*id));
        }
        let mut deadline: Option<Instant> = None;
        for (key, p) in &self.procs {
            for (i, c) in p.io.copiers.iter().enumerate() {
                fds.push(match c.interest() {
                    Interest::Read(fd) => PollFd::new(fd, PollFlags::POLLIN),
                    Interest::Write(fd) => PollFd::new(fd, PollFlags::POLLOUT),
                });
                tags.push(Tag::Copy(key.clone(), i));
            }
            if let (Some(d), false) = (p.drain_deadline, p.io.copiers.is_empty()) {
                deadline = Some(deadline.map_or(d, |x| x.min(d)));
            }
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let ms = d.saturating_duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::NONE)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return None,
            Err(e) => {
                log!("poll: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                return None;
            }
        }
        let events = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        Some((tags, events))
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.next_conn += 1;
                    self.conns.insert(
                        self.next_conn,
                        Conn {
                            stream,
                            rbuf: Vec::new(),
                            wbuf: Vec::new(),
                            waiting: false,
                            eof: false,
                            dead: false,
                        },
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_conn(&mut self, id: u64, ev: PollFlags) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if ev.contains(PollFlags::POLLOUT) {
            c.flush();
        }
        if c.waiting {
            // A client that hangs up while waiting cancels its wait.
            if ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                c.dead = true;
            }
            return;
        }
        if !ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    c.eof = true;
                    break;
                }
                Ok(n) => c.rbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
            if c.rbuf.len() > MAX_REQUEST_LINE {
                break;
            }
        }
        self.process_lines(id);
    }

    fn send(&mut self, id: u64, reply: Reply) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let resp = match reply {
            Ok(v) => Response {
                result: Some(v),
                error: None,
            },
            Err(e) => Response {
                result: None,
                error: Some(e),
            },
        };
        if let Ok(mut line) = serde_json::to_vec(&resp) {
            line.push(b'\n');
            c.wbuf.extend_from_slice(&line);
        }
        c.flush();
    }

    /// Handle the complete request lines buffered on a connection, in order.
    fn process_lines(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.waiting || c.dead {
                return;
            }
            let Some(nl) = c.rbuf.iter().position(|&b| b == b'\n') else {
                if c.rbuf.len() > MAX_REQUEST_LINE {
                    c.rbuf.clear();
                    c.eof = true;
                    let e = err(
                        ErrorKind::InvalidArgument,
                        "request",
                        "request line too long",
                    );
                    self.send(id, Err(e));
                }
                return;
            };
            let line: Vec<u8> = c.rbuf.drain(..=nl).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let reply = match decode_request(line) {
                Ok(req) => self.handle(id, req),
                Err(e) => Some(Err(e)),
            };
            // Exits reaped during runc calls whose pid never became known are orphans.
            self.unknown_exits.clear();
            match reply {
                Some(r) => self.send(id, r),
                None => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.waiting = true;
                    }
                }
            }
        }
    }

    /// None: the connection waits (the reply comes from `complete_waiters`).
    fn handle(&mut self, conn: u64, req: Request) -> Option<Reply> {
        let op = req.op();
        if self.shutting_down {
            return Some(Err(err(
                ErrorKind::Unavailable,
                op,
                "shim is shutting down",
            )));
        }
        Some(match req {
            Request::Version => ok(VersionReply {
                protocol: PROTOCOL_VERSION,
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
            }),
            Request::Create(c) => self.create(op, c),
            Request::Start { exec_id } => self.start(op, &exec_id),
            Request::Exec(e) => self.exec(op, e),
            Request::Kill {
                exec_id,
                signal,
                all,
            } => self.kill(op, &exec_id, signal, all),
            Request::ResizePty {
                exec_id,
                width,
                height,
            } => self.resize(op, &exec_id, width, height),
            Request::CloseIo { exec_id } => self.close_io(op, &exec_id),
            Request::Pause => self.pause_resume(op, true),
            Request::Resume => self.pause_resume(op, false),
            Request::Pids => self.pids(op),
            Request::List => ok(ListReply {
                processes: self.procs.values().map(|p| p.state()).collect(),
            }),
            Request::State { exec_id } => {
                let key = self.key(&exec_id);
                self.proc(op, &key).map(|p| p.state()).and_then(ok)
            }
            Request::Wait { exec_id } => {
                let key = self.key(&exec_id);
                match self.procs.get_mut(&key) {
                    None => Err(self.not_found(op, &key)),
                    Some(p) if p.finished() => ok(p.exit_reply()),
                    Some(p) => {
                        p.waiters.push(conn);
                        return None;
                    }
                }
            }
            Request::Delete { exec_id, force } => self.delete(op, &exec_id, force),
            Request::Update { resources } => self.update(op, &resources),
            Request::Shutdown => self.shutdown(op),
        })
    }

    /// The process key for a request's exec_id: "" (or the container id) is init.
    fn key(&self, exec_id: &str) -> String {
        if exec_id == self.id {
            String::new()
        } else {
            exec_id.to_string()
        }
    }

    fn not_found(&self, op: &str, key: &str) -> ShimError {
        let what = match (key.is_empty(), self.init_deleted) {
            (true, true) => format!("container {} was deleted", self.id),
            (true, false) => format!("container {} is not created", self.id),
            (false, _) => format!("exec {key} not found in container {}", self.id),
        };
        err(ErrorKind::NotFound, op, what)
    }

    fn proc(&self, op: &str, key: &str) -> Result<&Process, ShimError> {
        self.procs.get(key).ok_or_else(|| self.not_found(op, key))
    }

    fn proc_mut(&mut self, op: &str, key: &str) -> Result<&mut Process, ShimError> {
        if !self.procs.contains_key(key) {
            return Err(self.not_found(op, key));
        }
        self.procs
            .get_mut(key)
            .ok_or_else(|| internal(op, "process table changed"))
    }

    fn read_config(&self, op: &str) -> Result<serde_json::Value, ShimError> {
        let path = self.bundle.join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| {
            err(
                ErrorKind::InvalidArgument,
                op,
                format!("{}: {e}", path.display()),
            )
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            err(
                ErrorKind::InvalidArgument,
                op,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Record the exits runc's calls (or the loop) reaped. With `from_runc`, exits of pids not
    /// known yet are kept until the pid file is read.
    fn handle_exits(&mut self, exits: Vec<(u32, u32)>, from_runc: bool) {
        for (pid, status) in exits {
            // A process's logging program (io::logger): gone, so never signalled again.
            let logger = self
                .procs
                .values_mut()
                .filter_map(|p| p.io.logger.as_mut())
                .find(|l| l.pid() == pid);
            if let Some(l) = logger {
                l.set_reaped();
                continue;
            }
            let key = self
                .procs
                .iter()
                .find(|(_, p)| p.pid == pid && p.exit.is_none())
                .map(|(k, _)| k.clone());
            match key {
                Some(k) => self.record_exit(&k, status),
                None if from_runc => {
                    self.unknown_exits.insert(pid, status);
                }
                None => {}
            }
        }
    }

    fn after_runc(&mut self) {
        let exits = std::mem::take(&mut self.runc.reaped);
        self.handle_exits(exits, true);
    }

    /// The process is gone: write its exit record (before anyone hears of it), start
    /// draining its output.
    fn record_exit(&mut self, key: &str, status: u32) {
        let Some(p) = self.procs.get_mut(key) else {
            return;
        };
        let rec = p.mark_exited(status);
        let name = if key.is_empty() { "init" } else { key };
        if let Err(e) = process::write_exit_record(&self.exits_dir, name, &rec) {
            log!("recording exit of {name}: {e}");
        }
        log!("{} (pid {}) exited with status {status}", p.id, rec.pid);
        if key.is_empty() && self.kill_all_on_init_exit {
            // Before the output is pulled: the killed processes close their ends of the pipes.
            let id = self.id.clone();
            if let Err(e) = self.runc.kill(&id, Signal::SIGKILL as u32, true) {
                log!("killing the rest of the container after init's exit: {e}");
            }
            self.after_runc();
        }
        // Pull what the process left in its pipes now: with a grandchild holding the pipe, no
        // readiness event would ever come.
        if let Some(p) = self.procs.get_mut(key) {
            p.io.copiers.retain_mut(|c| c.step());
        }
    }

    /// Output that cannot be delivered in time (nobody reads the FIFO) is dropped.
    fn expire_drains(&mut self) {
        let now = Instant::now();
        for p in self.procs.values_mut() {
            if matches!(p.drain_deadline, Some(d) if d <= now) && !p.io.copiers.is_empty() {
                log!("{}: output not drained in time, closing its stdio", p.id);
                p.io.copiers.clear();
            }
        }
    }

    fn complete_waiters(&mut self) {
        let mut ready = Vec::new();
        for p in self.procs.values_mut() {
            if p.finished() && !p.waiters.is_empty() {
                let reply = ok(p.exit_reply());
                ready.extend(p.waiters.drain(..).map(|w| (w, reply.clone())));
            }
        }
        for (conn, reply) in ready {
            self.release(conn, reply);
        }
    }

    fn release(&mut self, conn: u64, reply: Reply) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.waiting = false;
            self.send(conn, reply);
            self.resume.push(conn);
        }
    }

    /// Answer every waiter of a process that is being removed.
    fn release_all(&mut self, p: &mut Process) {
        let reply = ok(p.exit_reply());
        for w in std::mem::take(&mut p.waiters) {
            self.release(w, reply.clone());
        }
    }

    fn create(&mut self, op: &str, c: CreateRequest) -> Reply {
        if self.procs.contains_key("") || self.init_deleted {
            let m = format!("container {} already created", self.id);
            return Err(err(ErrorKind::AlreadyExists, op, m));
        }
        let invalid = |m: String| err(ErrorKind::InvalidArgument, op, m);
        let stdin = io::parse_target(&c.stdin).map_err(invalid)?;
        let stdout = io::parse_target(&c.stdout).map_err(invalid)?;
        let stderr = stderr_target(&c.stderr, c.terminal).map_err(invalid)?;
        let config = self.read_config(op)?;
        let owner = config
            .get("process")
            .and_then(|p| process::io_owner(&config, p));
        self.kill_all_on_init_exit = !process::has_own_pid_namespace(&config);
        let env = logger::Env {
            id: &self.id,
            namespace: &self.namespace,
        };
        let mut prepared = io::prepare(&stdin, &stdout, &stderr, c.terminal, owner, &env)
            .map_err(|e| internal(op, format!("opening stdio: {e}")))?;
        let console = match c.terminal {
            true => Some(
                ConsoleSocket::bind(self.sockets.join("console.sock"))
                    .map_err(|e| internal(op, format!("console socket: {e}")))?,
            ),
            false => None,
        };
        let pid_file = self.bundle.join("init.pid");
        let _ = std::fs::remove_file(&pid_file);
        let stdio = prepared.take_proc_stdio();
        let id = self.id.clone();
        let created = self.runc.create(
            &id,
            &pid_file,
            console.as_ref().map(|c| c.path()),
            stdio,
            c.start,
        );
        self.after_runc();
        let joining = self.cgroup_join.take();
        let setup = created.and_then(|()| {
            // The shim's move into its cgroup ran beside runc; a shim outside the cgroup asked
            // for fails the create, as containerd's fails its start.
            if let Some(joining) = joining {
                cgroup::finish(joining)?;
            }
            let pid = read_pid_file(&pid_file)?;
            let io = match &console {
                Some(cs) => cs
                    .receive_master()
                    .and_then(|m| prepared.attach_console(m))
                    .map_err(|e| format!("receiving the pty master: {e}"))?,
                None => prepared.into_io(),
            };
            Ok((pid, io))
        });
        let (pid, io) = match setup {
            Ok(r) => r,
            Err(m) => {
                let e = runc_error(&self.runc, op, m);
                // runc may have left a half-created container behind.
                let _ = self.runc.delete(&id, true);
                self.after_runc();
                return Err(e);
            }
        };
        let mut p = Process::new(
            id,
            process::Stdio {
                stdin: c.stdin,
                stdout: c.stdout,
                stderr: c.stderr,
                terminal: c.terminal,
            },
        );
        p.pid = pid;
        p.io = io;
        if c.start {
            p.status = Status::Running;
        }
        self.procs.insert(String::new(), p);
        // Started, init may have exited before its pid was known (see reaper.rs).
        if let Some(status) = self.unknown_exits.remove(&pid) {
            self.record_exit("", status);
        }
        log!(
            "{}, init pid {pid}",
            if c.start { "started" } else { "created" }
        );
        ok(PidReply { pid })
    }

    fn start(&mut self, op: &str, exec_id: &str) -> Reply {
        let key = self.key(exec_id);
        if !key.is_empty() {
            return self.start_exec(op, &key);
        }
        let p = self.proc(op, "")?;
        if p.status != Status::Created {
            return Err(precondition(
                op,
                format!("process {} is {}", p.id, p.status),
            ));
        }
        let (id, pid) = (self.id.clone(), p.pid);
        let started = self.runc.start(&id);
        // The init may exit while runc start still runs: recorded here, not lost.
        self.after_runc();
        started.map_err(|m| runc_error(&self.runc, op, m))?;
        let p = self.proc_mut(op, "")?;
        if p.status == Status::Created {
            p.status = Status::Running;
        }
        ok(PidReply { pid })
    }

    fn start_exec(&mut self, op: &str, key: &str) -> Reply {
        match self.proc(op, "")?.status {
            s @ (Status::Paused | Status::Stopped) => {
                return Err(precondition(op, format!("container {} is {s}", self.id)))
            }
            Status::Created | Status::Running => {}
        }
        let p = self.proc(op, key)?;
        if p.status != Status::Created {
            return Err(precondition(op, format!("exec {key} is {}", p.status)));
        }
        let invalid = |m: String| err(ErrorKind::InvalidArgument, op, m);
        let stdin = io::parse_target(&p.stdio.stdin).map_err(invalid)?;
        let stdout = io::parse_target(&p.stdio.stdout).map_err(invalid)?;
        let stderr = stderr_target(&p.stdio.stderr, p.stdio.terminal).map_err(invalid)?;
        let terminal = p.stdio.terminal;
        let spec = p.spec.clone().unwrap_or_default();
        let config = self.read_config(op)?;
        let owner = process::io_owner(&config, &spec);

        let spec_file = self.bundle.join(format!("exec-{key}.json"));
        let pid_file = self.bundle.join(format!("exec-{key}.pid"));
        let _ = std::fs::remove_file(&pid_file);
        std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap_or_default())
            .map_err(|e| internal(op, format!("{}: {e}", spec_file.display())))?;
        let result = (|| {
            let env = logger::Env {
                id: key,
                namespace: &self.namespace,
            };
            let mut prepared = io::prepare(&stdin, &stdout, &stderr, terminal, owner, &env)
                .map_err(|e| format!("opening stdio: {e}"))?;
            let console = match terminal {
                true => Some(
                    ConsoleSocket::bind(self.sockets.join("console.sock"))
                        .map_err(|e| format!("console socket: {e}"))?,
                ),
                false => None,
            };
            let stdio = prepared.take_proc_stdio();
            let cs = console.as_ref().map(|c| c.path());
            let run = self.runc.exec(&self.id, &spec_file, &pid_file, cs, stdio);
            self.after_runc();
            run?;
            let pid = read_pid_file(&pid_file)?;
            let io = match &console {
                Some(cs) => cs
                    .receive_master()
                    .and_then(|m| prepared.attach_console(m))
                    .map_err(|e| format!("receiving the pty master: {e}"))?,
                None => prepared.into_io(),
            };
            Ok::<_, String>((pid, io))
        })();
        let _ = std::fs::remove_file(&spec_file);
        let _ = std::fs::remove_file(&pid_file);
        match result {
            Ok((pid, io)) => {
                let p = self.proc_mut(op, key)?;
                p.pid = pid;
                p.io = io;
                p.spec = None;
                p.status = Status::Running;
                if p.stdin_closed {
                    p.io.stdin_spare = None;
                }
                if let Some(status) = self.unknown_exits.remove(&pid) {
                    self.record_exit(key, status);
                }
                ok(PidReply { pid })
            }
            Err(m) => {
                let e = runc_error(&self.runc, op, m);
                // The exec never ran: it is stopped (status 255), so waiters are released.
                self.record_exit(key, 255);
                Err(e)
            }
        }
    }

    fn exec(&mut self, op: &str, e: ExecRequest) -> Reply {
        let invalid = |m: String| err(ErrorKind::InvalidArgument, op, m);
        if e.exec_id == self.id {
            return Err(invalid("exec id equals the container id".into()));
        }
        process::validate_exec_id(&e.exec_id).map_err(invalid)?;
        if !e.spec.is_object() {
            return Err(invalid("spec must be an OCI process object".into()));
        }
        for s in [&e.stdin, &e.stdout, &e.stderr] {
            io::parse_target(s).map_err(invalid)?;
        }
        if let s @ Status::Stopped = self.proc(op, "")?.status {
            return Err(precondition(op, format!("container {} is {s}", self.id)));
        }
        if self.procs.contains_key(&e.exec_id) {
            let m = format!("exec {} already exists", e.exec_id);
            return Err(err(ErrorKind::AlreadyExists, op, m));
        }
        let mut p = Process::new(
            e.exec_id.clone(),
            process::Stdio {
                stdin: e.stdin,
                stdout: e.stdout,
                stderr: e.stderr,
                terminal: e.terminal,
            },
        );
        p.spec = Some(e.spec);
        self.procs.insert(e.exec_id, p);
        ok(Empty {})
    }

    fn kill(&mut self, op: &str, exec_id: &str, signal: u32, all: bool) -> Reply {
        let key = self.key(exec_id);
        let p = self.proc(op, &key)?;
        if p.status == Status::Stopped {
            let m = format!("process {} already finished", p.id);
            return Err(err(ErrorKind::NotFound, op, m));
        }
        if key.is_empty() {
            let id = self.id.clone();
            let r = self.runc.kill(&id, signal, all);
            self.after_runc();
            return match r {
                Ok(()) => ok(Empty {}),
                Err(m) if m.contains("not running") || m.contains("does not exist") => {
                    Err(err(ErrorKind::NotFound, op, m))
                }
                Err(m) => Err(runc_error(&self.runc, op, m)),
            };
        }
        if all {
            let m = "\"all\" applies to the init process only";
            return Err(err(ErrorKind::InvalidArgument, op, m));
        }
        if p.status == Status::Created {
            return Err(precondition(op, format!("exec {key} is not started")));
        }
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| err(ErrorKind::InvalidArgument, op, format!("signal {signal}")))?;
        // Safe from pid reuse: the exec is our child and not reaped yet (status not stopped).
        match kill(Pid::from_raw(p.pid as i32), sig) {
            Ok(()) => ok(Empty {}),
            Err(Errno::ESRCH) => Err(err(ErrorKind::NotFound, op, "process already finished")),
            Err(e) => Err(internal(op, e)),
        }
    }

    fn resize(&mut self, op: &str, exec_id: &str, width: u32, height: u32) -> Reply {
        let key = self.key(exec_id);
        let p = self.proc(op, &key)?;
        let console =
            p.io.console
                .as_ref()
                .ok_or_else(|| precondition(op, format!("process {} has no terminal", p.id)))?;
        let dim = |v: u32| {
            u16::try_from(v).map_err(|_| err(ErrorKind::InvalidArgument, op, "size too large"))
        };
        io::resize(console, dim(width)?, dim(height)?).map_err(|e| internal(op, e))?;
        ok(Empty {})
    }

    fn close_io(&mut self, op: &str, exec_id: &str) -> Reply {
        let key = self.key(exec_id);
        let p = self.proc_mut(op, &key)?;
        p.stdin_closed = true;
        p.io.stdin_spare = None;
        ok(Empty {})
    }

    fn pause_resume(&mut self, op: &str, pause: bool) -> Reply {
        let (from, to) = match pause {
            true => (Status::Running, Status::Paused),
            false => (Status::Paused, Status::Running),
        };
        let p = self.proc(op, "")?;
        if p.status != from {
            return Err(precondition(
                op,
                format!("container {} is {}", self.id, p.status),
            ));
        }
        let id = self.id.clone();
        let r = match pause {
            true => self.runc.pause(&id),
            false => self.runc.resume(&id),
        };
        self.after_runc();
        r.map_err(|m| runc_error(&self.runc, op, m))?;
        let p = self.proc_mut(op, "")?;
        if p.status == from {
            p.status = to;
        }
        ok(Empty {})
    }

    fn pids(&mut self, op: &str) -> Reply {
        if self.proc(op, "")?.status == Status::Stopped {
            return ok(PidsReply { processes: vec![] });
        }
        let id = self.id.clone();
        let r = self.runc.ps(&id);
        self.after_runc();
        let pids = r.map_err(|m| runc_error(&self.runc, op, m))?;
        let processes = pids
            .into_iter()
            .map(|pid| PidInfo {
                pid,
                exec_id: self
                    .procs
                    .iter()
                    .find(|(k, p)| !k.is_empty() && p.pid == pid)
                    .map(|(k, _)| k.clone()),
            })
            .collect();
        ok(PidsReply { processes })
    }

    fn delete(&mut self, op: &str, exec_id: &str, force: bool) -> Reply {
        let key = self.key(exec_id);
        let p = self.proc(op, &key)?;
        let (status, pid) = (p.status, p.pid);
        if !key.is_empty() {
            if status == Status::Running {
                if !force {
                    return Err(precondition(op, format!("exec {key} is running")));
                }
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                let mut others = Vec::new();
                let st = crate::reaper::wait_reaping(pid, &mut others);
                self.runc.reaped.extend(others);
                self.after_runc();
                if let Some(st) = st {
                    self.record_exit(&key, st);
                }
            }
            let Some(mut p) = self.procs.remove(&key) else {
                return Err(self.not_found(op, &key));
            };
            p.io = Default::default();
            self.release_all(&mut p);
            let _ = std::fs::remove_file(self.exits_dir.join(&key));
            return ok(p.exit_reply());
        }

        if matches!(status, Status::Running | Status::Paused) && !force {
            let m = format!("container {} is {status}; stop it first or force", self.id);
            return Err(precondition(op, m));
        }
        let id = self.id.clone();
        // Created: runc delete kills the waiting init itself. Running/paused: --force.
        let r = self
            .runc
            .delete(&id, matches!(status, Status::Running | Status::Paused));
        self.after_runc();
        if let Err(m) = r {
            if !m.contains("does not exist") {
                return Err(internal(op, m));
            }
        }
        if self.procs.get("").is_some_and(|p| p.exit.is_none()) {
            // runc returns once init is dead; collect its status (it is our child).
            let mut others = Vec::new();
            let st = crate::reaper::wait_reaping(pid, &mut others);
            self.runc.reaped.extend(others);
            self.after_runc();
            if let Some(st) = st {
                self.record_exit("", st);
            }
        }
        self.init_deleted = true;
        let mut reply = Err(self.not_found(op, ""));
        for (k, mut p) in std::mem::take(&mut self.procs) {
            p.io = Default::default();
            if k.is_empty() {
                reply = ok(p.exit_reply());
            }
            self.release_all(&mut p);
        }
        let _ = std::fs::remove_file(self.bundle.join("init.pid"));
        log!("deleted");
        reply
    }

    fn update(&mut self, op: &str, resources: &serde_json::Value) -> Reply {
        if !resources.is_object() {
            let m = "resources must be an OCI linux.resources object";
            return Err(err(ErrorKind::InvalidArgument, op, m));
        }
        let p = self.proc(op, "")?;
        if p.status == Status::Stopped {
            return Err(precondition(
                op,
                format!("container {} is stopped", self.id),
            ));
        }
        let file = self.bundle.join("resources.json");
        std::fs::write(&file, serde_json::to_vec(resources).unwrap_or_default())
            .map_err(|e| internal(op, format!("{}: {e}", file.display())))?;
        let id = self.id.clone();
        let r = self.runc.update(&id, &file);
        self.after_runc();
        let _ = std::fs::remove_file(&file);
        r.map_err(|m| runc_error(&self.runc, op, m))?;
        ok(Empty {})
    }

    fn shutdown(&mut self, op: &str) -> Reply {
        if self.procs.contains_key("") {
            let m = format!("container {} is not deleted", self.id);
            return Err(precondition(op, m));
        }
        self.shutting_down = true;
        let waiting: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.waiting)
            .map(|(id, _)| *id)
            .collect();
        for w in waiting {
            let e = err(ErrorKind::Unavailable, "wait", "shim is shutting down");
            self.release(w, Err(e));
        }
        ok(Empty {})
    }
}
