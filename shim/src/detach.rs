//! `berth-shim start`: become a daemon, then serve.
//!
//! The daemon runs `berth-shim start ...`, reads one line from its stdout (the control
//! socket path) and waits for it to exit (status 0; otherwise stderr says why). Behind that:
//! fork; the child calls setsid and forks again; the grandchild — in its own session, not a
//! session leader, reparented away from the daemon once the middle process exits — sets
//! everything up and reports "ok" or the error through a pipe. So the daemon never is the
//! parent of the shim, and a daemon crash or restart leaves the shim and container running.

use crate::reaper::Reaper;
use crate::runc::Runc;
use crate::server::Server;
use crate::{log, Options};
use nix::fcntl::OFlag;
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::waitpid;
use nix::unistd::{dup2, fork, pipe2, setsid, ForkResult};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

pub fn start(opts: Options) -> ! {
    let sock = opts.socket_dir.join("shim.sock");
    let (r, w) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => fail(&format!("pipe: {e}")),
    };
    // SAFETY: the program is single-threaded here, so the child may do anything.
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(ForkResult::Parent { child }) => {
            drop(w);
            let mut msg = String::new();
            let _ = File::from(r).read_to_string(&mut msg);
            let _ = waitpid(child, None);
            if msg == "ok" {
                println!("{}", sock.display());
                std::process::exit(0);
            }
            if msg.is_empty() {
                msg = "the shim died during start-up".into();
            }
            fail(&msg)
        }
        Ok(ForkResult::Child) => {}
    }
    drop(r);
    let _ = setsid();
    // SAFETY: still single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => std::process::exit(0),
        Err(e) => {
            let _ = File::from(w).write_all(format!("fork: {e}").as_bytes());
            std::process::exit(1);
        }
        Ok(ForkResult::Child) => {}
    }
    let mut w = File::from(w);
    match setup(&opts, &sock) {
        Ok(server) => {
            let _ = w.write_all(b"ok");
            drop(w);
            server.run();
            std::process::exit(0)
        }
        Err(e) => {
            let _ = w.write_all(e.as_bytes());
            std::process::exit(1)
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("berth-shim: {msg}");
    std::process::exit(1)
}

fn setup(opts: &Options, sock: &Path) -> Result<Server, String> {
    // First of all, so that it overlaps the rest of the start and the container's create.
    let cgroup_join = crate::cgroup::spawn_join(opts.cgroup_dirs.clone())?;
    // Let go of the daemon's pipes: it reads our stdout until EOF.
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    let log = match &opts.log {
        Some(p) => OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(p)
            .map_err(|e| format!("log {}: {e}", p.display()))?,
        None => null.try_clone().map_err(|e| e.to_string())?,
    };
    for (f, fd) in [(&null, 0), (&null, 1), (&log, 2)] {
        dup2(f.as_raw_fd(), fd).map_err(|e| format!("dup2: {e}"))?;
    }
    let _ = std::env::set_current_dir("/");

    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    let reaper = Reaper::install().map_err(|e| format!("SIGCHLD handler: {e}"))?;

    let mode = std::fs::metadata(&opts.bundle)
        .map_err(|e| format!("bundle {}: {e}", opts.bundle.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        log!(
            "warning: bundle {} has mode {:o}; 0700 is expected",
            opts.bundle.display(),
            mode & 0o7777
        );
    }
    let listener = bind_control_socket(sock)?;
    std::fs::create_dir_all(&opts.runtime_root)
        .map_err(|e| format!("runtime root {}: {e}", opts.runtime_root.display()))?;

    let pid_file = opts.bundle.join("shim.pid");
    let tmp = opts.bundle.join(".shim.pid.tmp");
    std::fs::write(&tmp, std::process::id().to_string())
        .and_then(|()| std::fs::rename(&tmp, &pid_file))
        .map_err(|e| format!("{}: {e}", pid_file.display()))?;

    let runc = Runc {
        binary: opts.runtime_binary.clone(),
        root: opts.runtime_root.clone(),
        systemd_cgroup: opts.systemd_cgroup,
        no_pivot_root: opts.no_pivot_root,
        no_new_keyring: opts.no_new_keyring,
        bundle: opts.bundle.clone(),
        timeout: opts.runtime_timeout,
        timed_out: false,
        reaped: Vec::new(),
    };
    Server::new(
        opts.namespace.clone(),
        opts.id.clone(),
        opts.bundle.clone(),
        opts.socket_dir.clone(),
        runc,
        listener,
        reaper,
    )
    .map(|server| server.joining_cgroup(cgroup_join))
    .map_err(|e| format!("exits dir: {e}"))
}

/// A filesystem socket (never abstract: CVE-2020-15257), created 0600.
fn bind_control_socket(sock: &Path) -> Result<UnixListener, String> {
    if sock.exists() {
        if UnixStream::connect(sock).is_ok() {
            return Err(format!("a shim is already serving {}", sock.display()));
        }
        std::fs::remove_file(sock).map_err(|e| format!("stale {}: {e}", sock.display()))?;
    }
    // The umask makes the socket 0600 from birth, not after a chmod.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(sock);
    umask(old);
    let listener = bound.map_err(|e| format!("binding {}: {e}", sock.display()))?;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", sock.display()))?;
    Ok(listener)
}
