//! Reaping: the shim is the child subreaper of everything runc starts, so every container
//! process (init, execs, orphaned grandchildren) ends up as our child. SIGCHLD only wakes the
//! event loop through a self-pipe; the loop then reaps with `waitpid(-1, WNOHANG)`.
//!
//! Why a self-pipe rather than signalfd: signalfd needs SIGCHLD blocked, and a blocked mask
//! is inherited through runc by the container's processes. A handler is reset on exec.
//!
//! runc is run synchronously, but never waited for with `waitpid(runc)` alone: while it runs
//! the shim keeps reaping every child ([`wait_reaping`]). That matters: when a container's
//! init dies, the kernel holds it (not yet a zombie) until every other process of its pid
//! namespace has been reaped — and exec processes are *our* children. `runc delete --force`
//! waits for init to be gone, so blocking on runc alone would deadlock until runc gives up.
//! Exits reaped this way whose pid is not known yet (an exec that ended before runc exec
//! returned) are kept by the server until it has read the pid file.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The read end of the self-pipe, for [`wait_reaping_until`] to sleep on.
static WAKE_R_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: nix::libc::c_int) {
    let saved = Errno::last_raw();
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe and the fd is a nonblocking pipe that lives as
        // long as the process. A full pipe already means "wake up", so the result is ignored.
        unsafe { nix::libc::write(fd, b"c".as_ptr().cast(), 1) };
    }
    Errno::set_raw(saved);
}

pub struct Reaper {
    wake_r: OwnedFd,
    _wake_w: OwnedFd,
}

impl Reaper {
    pub fn install() -> nix::Result<Self> {
        let (wake_r, wake_w) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        WAKE_FD.store(wake_w.as_raw_fd(), Ordering::Relaxed);
        WAKE_R_FD.store(wake_r.as_raw_fd(), Ordering::Relaxed);
        let act = SigAction::new(
            SigHandler::Handler(on_sigchld),
            SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
            SigSet::empty(),
        );
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { sigaction(Signal::SIGCHLD, &act) }?;
        Ok(Reaper {
            wake_r,
            _wake_w: wake_w,
        })
    }

    /// Readable when a SIGCHLD arrived.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake_r.as_fd()
    }

    /// Drain the wake-ups, then reap every exited child: (pid, exit status).
    pub fn reap(&self) -> Vec<(u32, u32)> {
        let mut buf = [0u8; 64];
        while matches!(read(self.wake_r.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
        let mut exits = Vec::new();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => exits.extend(exit_of(ws)),
            }
        }
        exits
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // The pipe closes with us: nothing may write to or sleep on its numbers afterwards.
        WAKE_FD.store(-1, Ordering::Relaxed);
        WAKE_R_FD.store(-1, Ordering::Relaxed);
    }
}

/// Block until `child` exits, reaping every other child that exits meanwhile into `others`.
/// None if `child` is not (or no longer) our child.
pub fn wait_reaping(child: u32, others: &mut Vec<(u32, u32)>) -> Option<u32> {
    loop {
        match waitpid(None, None) {
            Ok(ws) => match exit_of(ws) {
                Some((pid, status)) if pid == child => return Some(status),
                Some(exit) => others.push(exit),
                None => {}
            },
            Err(Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// How [`wait_reaping_until`] ended.
pub enum Waited {
    Exited(u32),
    TimedOut,
    /// `child` is not (or no longer) our child.
    Lost,
}

/// [`wait_reaping`] with a deadline: sleeps on the SIGCHLD self-pipe between reaping rounds, so
/// an exit wakes it at once (the pipe is drained before each round: a SIGCHLD that lands after
/// the round leaves a byte and the poll returns). Without an installed reaper it naps instead.
pub fn wait_reaping_until(
    child: u32,
    others: &mut Vec<(u32, u32)>,
    deadline: std::time::Instant,
) -> Waited {
    let wake_r = WAKE_R_FD.load(Ordering::Relaxed);
    let mut drained = false;
    // Wake-ups drained here may belong to exits still unreaped when `child` is found (the
    // reaping stops there): hand the event loop a wake-up back so it reaps them.
    let done = |waited: Waited, drained: bool| {
        let fd = WAKE_FD.load(Ordering::Relaxed);
        if drained && fd >= 0 {
            // SAFETY: as in the signal handler; the pipe lives as long as the Reaper.
            unsafe { nix::libc::write(fd, b"c".as_ptr().cast(), 1) };
        }
        waited
    };
    loop {
        if wake_r >= 0 {
            let mut buf = [0u8; 64];
            while matches!(read(wake_r, &mut buf), Ok(n) if n > 0) {
                drained = true;
            }
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(ws) => match exit_of(ws) {
                    Some((pid, status)) if pid == child => {
                        return done(Waited::Exited(status), drained)
                    }
                    Some(exit) => others.push(exit),
                    None => {}
                },
                Err(Errno::EINTR) => {}
                Err(_) => return done(Waited::Lost, drained),
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return done(Waited::TimedOut, drained);
        }
        if wake_r < 0 {
            std::thread::sleep(left.min(std::time::Duration::from_millis(5)));
            continue;
        }
        // SAFETY: the pipe lives as long as the process (the Reaper is never dropped while the
        // server runs), and the borrow ends with this poll.
        let fd = unsafe { BorrowedFd::borrow_raw(wake_r) };
        let ms = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
        let _ = nix::poll::poll(
            &mut [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)],
            nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
        );
    }
}

/// containerd's convention: the exit code, or 128 + signal for a signalled process.
fn exit_of(ws: WaitStatus) -> Option<(u32, u32)> {
    match ws {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw() as u32, code as u32)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw() as u32, 128 + sig as u32)),
        _ => None,
    }
}
