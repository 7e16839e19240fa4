//! The pod's namespace holder, berth's answer to a pause container: a tiny process that owns
//! the pod's shared IPC and UTS namespaces (and PID namespace, when the pod asks for one) so
//! containers can join them by path (`/proc/<pid>/ns/*`) without any image.
//!
//! `berthd cri-holder` runs [`run`] before berthd starts its async runtime: it unshares, sets the
//! pod's hostname, forks the holder and prints the holder's pid and start time (`PID START`) on
//! stdout, then exits. The holder is then nobody's child but init's, so it survives berthd's
//! restarts and crashes; with a PID namespace it is that namespace's PID 1, reaping orphans.

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setsid, ForkResult, Pid};
use std::io::Write;

/// What the holder's namespaces are.
#[derive(Debug, Clone, Default)]
pub struct HolderOptions {
    pub ipc: bool,
    pub uts: bool,
    pub pid: bool,
    pub hostname: Option<String>,
}

/// The command line berthd's sub-mode takes (after `cri-holder`).
pub fn args(opts: &HolderOptions) -> Vec<String> {
    let mut a = Vec::new();
    for (on, flag) in [
        (opts.ipc, "--ipc"),
        (opts.uts, "--uts"),
        (opts.pid, "--pid"),
    ] {
        if on {
            a.push(flag.to_string());
        }
    }
    if let Some(h) = &opts.hostname {
        a.push("--hostname".into());
        a.push(h.clone());
    }
    a
}

/// Unshare, fork the holder, print `PID START`, return the launcher's exit code.
pub fn run(opts: &HolderOptions) -> i32 {
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
        Ok(ForkResult::Child) => hold(),
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

/// The holder: detached from berthd's session and stdio, reaping children until killed.
fn hold() -> ! {
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
