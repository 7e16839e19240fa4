//! The pod's namespace holder, berth's answer to a pause container: a tiny process that owns
//! the pod's shared IPC and UTS namespaces (and PID namespace, when the pod asks for one) so
//! containers can join them by path (`/proc/<pid>/ns/*`) without any image.
//!
//! `berthd cri-holder` runs [`run`] before berthd starts its async runtime: it unshares, sets the
//! pod's hostname, forks the holder and prints the holder's pid and start time (`PID START`) on
//! stdout, then exits. The holder is then nobody's child but init's, so it survives berthd's
//! restarts and crashes; with a PID namespace it is that namespace's PID 1, reaping orphans.
//!
//! A pod with a user namespace of its own (CRI NamespaceMode POD) gets it from the holder too:
//! the launcher forks a child that unshares the user namespace, writes the child's
//! `/proc/PID/uid_map` and `gid_map` from outside (only a writer in the parent namespace may
//! write more than its own id), and the child then becomes the namespace's root and makes the
//! IPC/UTS/PID and network namespaces inside it, so they are owned by the pod's user namespace.
//! runc joins a container's user namespace before its others and may then only join namespaces
//! that user namespace owns.

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setsid, ForkResult, Gid, Pid, Uid};
use std::io::Write;
use std::os::fd::OwnedFd;

/// What the holder's namespaces are.
#[derive(Debug, Clone, Default)]
pub struct HolderOptions {
    pub ipc: bool,
    pub uts: bool,
    pub pid: bool,
    /// A network namespace of the holder's own (the pod's netns when it has a user namespace).
    pub net: bool,
    pub hostname: Option<String>,
    /// The pod's user namespace: uid and gid maps as `container:host:length[,…]`.
    pub userns: Option<(String, String)>,
    /// Seconds after which the holder ends by itself (SIGALRM); a pod's holder has none.
    pub exit_after: Option<u32>,
    /// The pod's state directory: only named on the command line, so that `ps` tells whose
    /// holder a process is (and a test harness finds the holders of a daemon it killed).
    pub pod_dir: Option<std::path::PathBuf>,
}

/// The command line berthd's sub-mode takes (after `cri-holder`).
pub fn args(opts: &HolderOptions) -> Vec<String> {
    let mut a = Vec::new();
    for (on, flag) in [
        (opts.ipc, "--ipc"),
        (opts.uts, "--uts"),
        (opts.pid, "--pid"),
        (opts.net, "--net"),
    ] {
        if on {
            a.push(flag.to_string());
        }
    }
    if let Some(h) = &opts.hostname {
        a.push("--hostname".into());
        a.push(h.clone());
    }
    if let Some((uid, gid)) = &opts.userns {
        a.extend([
            "--uidmap".into(),
            uid.clone(),
            "--gidmap".into(),
            gid.clone(),
        ]);
    }
    if let Some(secs) = opts.exit_after {
        a.push("--exit-after".into());
        a.push(secs.to_string());
    }
    if let Some(dir) = &opts.pod_dir {
        a.push("--pod".into());
        a.push(dir.to_string_lossy().into_owned());
    }
    a
}

/// `container:host:length[,…]` as `/proc/PID/uid_map` takes it (one range a line).
pub fn proc_map(map: &str) -> Option<String> {
    berth_snapshotter::idmap::IdMap::parse(map)
        .ok()
        .map(|m| m.proc_form())
}

/// Unshare, fork the holder, print `PID START`, return the launcher's exit code; with a user
/// namespace, first fork the child that makes it and map it from here.
pub fn run(opts: &HolderOptions) -> i32 {
    let Some((uid, gid)) = &opts.userns else {
        return make_holder(opts);
    };
    let (Some(uid_map), Some(gid_map)) = (proc_map(uid), proc_map(gid)) else {
        eprintln!("cri-holder: invalid id maps {uid:?} / {gid:?}");
        return 1;
    };
    let pipes = nix::unistd::pipe().and_then(|a| Ok((a, nix::unistd::pipe()?)));
    let ((ready_r, ready_w), (go_r, go_w)) = match pipes {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cri-holder: pipe: {e}");
            return 1;
        }
    };
    // SAFETY: single-threaded, as in make_holder.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("cri-holder: fork: {e}");
            1
        }
        Ok(ForkResult::Child) => {
            drop((ready_r, go_w));
            std::process::exit(in_userns(opts, ready_w, go_r))
        }
        Ok(ForkResult::Parent { child }) => {
            drop((ready_w, go_r));
            let mapped = wait_byte(&ready_r, b'u').and_then(|()| {
                for (file, map) in [("uid_map", &uid_map), ("gid_map", &gid_map)] {
                    let path = format!("/proc/{}/{file}", child.as_raw());
                    std::fs::write(&path, map.as_bytes())
                        .map_err(|e| format!("write {path}: {e}"))?;
                }
                nix::unistd::write(&go_w, b"g").map_err(|e| format!("signal the child: {e}"))?;
                Ok(())
            });
            if let Err(e) = mapped {
                eprintln!("cri-holder: map the pod's user namespace: {e}");
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return 1;
            }
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => code,
                _ => 1,
            }
        }
    }
}

/// Reads one byte from `fd` and checks it is `want`.
fn wait_byte(fd: &OwnedFd, want: u8) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut b) {
            Ok(1) if b[0] == want => return Ok(()),
            Ok(_) => return Err("the other side went away".into()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// The launcher's child: a new user namespace, mapped by the launcher, whose root it becomes
/// before making the holder's namespaces in it.
fn in_userns(opts: &HolderOptions, ready: OwnedFd, go: OwnedFd) -> i32 {
    if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
        eprintln!("cri-holder: unshare(CLONE_NEWUSER): {e}");
        return 1;
    }
    if let Err(e) = nix::unistd::write(&ready, b"u") {
        eprintln!("cri-holder: signal the launcher: {e}");
        return 1;
    }
    if let Err(e) = wait_byte(&go, b'g') {
        eprintln!("cri-holder: the launcher did not map the user namespace: {e}");
        return 1;
    }
    drop((ready, go));
    // The host's groups mean nothing here; setgroups stays allowed (the maps were written by a
    // privileged process) so the pod's processes can take their supplementary groups.
    let root = (Gid::from_raw(0), Uid::from_raw(0));
    let creds = nix::unistd::setgroups(&[])
        .and_then(|()| nix::unistd::setresgid(root.0, root.0, root.0))
        .and_then(|()| nix::unistd::setresuid(root.1, root.1, root.1));
    if let Err(e) = creds {
        eprintln!("cri-holder: become the user namespace's root: {e}");
        return 1;
    }
    make_holder(opts)
}

/// Unshare, fork the holder, print `PID START`, return the exit code.
fn make_holder(opts: &HolderOptions) -> i32 {
    let mut flags = CloneFlags::empty();
    if opts.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if opts.uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if opts.pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if opts.net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        eprintln!("cri-holder: unshare: {e}");
        return 1;
    }
    if let (true, Some(h)) = (opts.uts, &opts.hostname) {
        if let Err(e) = nix::unistd::sethostname(h) {
            eprintln!("cri-holder: sethostname {h:?}: {e}");
            return 1;
        }
    }
    // SAFETY: the launcher is single-threaded (berthd dispatches this sub-mode before it
    // starts any thread), so the child may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("cri-holder: fork: {e}");
            1
        }
        Ok(ForkResult::Child) => hold(opts.exit_after),
        Ok(ForkResult::Parent { child }) => {
            let start = start_time(child.as_raw() as u32).unwrap_or(0);
            let mut out = std::io::stdout();
            if writeln!(out, "{} {start}", child.as_raw())
                .and_then(|_| out.flush())
                .is_err()
            {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                return 1;
            }
            0
        }
    }
}

/// The holder: detached from berthd's session and stdio, reaping children until killed (or,
/// with `exit_after`, until that many seconds have passed).
fn hold(exit_after: Option<u32>) -> ! {
    let _ = setsid();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    let _ = std::env::set_current_dir("/");
    extern "C" fn noop(_: i32) {}
    // A handled SIGCHLD wakes sigsuspend; blocked outside it so no exit is missed between the
    // reaping pass and the wait.
    let action = SigAction::new(SigHandler::Handler(noop), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing.
    let _ = unsafe { sigaction(Signal::SIGCHLD, &action) };
    if let Some(secs) = exit_after {
        // Handled rather than left to its default action: a PID namespace's init ignores a
        // signal it has no handler for.
        extern "C" fn end(_: i32) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { nix::libc::_exit(0) }
        }
        let action = SigAction::new(SigHandler::Handler(end), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler only calls _exit.
        let _ = unsafe { sigaction(Signal::SIGALRM, &action) };
        nix::unistd::alarm::set(secs);
    }
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None);
    loop {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let _ = SigSet::empty().suspend();
    }
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid,
/// it names one process for good, so a recycled pid is never mistaken for a pod's holder.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the holder `pid` started at `start` is still alive.
pub fn alive(pid: u32, start: u64) -> bool {
    pid > 0 && start_time(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    #[test]
    fn maps_are_written_one_range_a_line() {
        assert_eq!(
            super::proc_map("0:1000:65536,65536:200000:1").as_deref(),
            Some("0 1000 65536\n65536 200000 1\n")
        );
        for bad in ["", "0:1", "0:1:0", "a:1:1", "0:1:1:1"] {
            assert_eq!(super::proc_map(bad), None, "{bad:?}");
        }
    }
}
