//! The two daemons under test: started on fresh dirs under one temp root, stopped (and the root
//! removed) on every exit path: normal return, error, panic (Drop guards), Ctrl-C / SIGTERM (signal
//! handler over a registry of live children), and the bench itself being killed (PDEATHSIG).

use crate::Result;
use berth::api::services::version::v1::version_client::VersionClient;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Berth,
    Containerd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Berth => "berthd",
            Kind::Containerd => "containerd",
        }
    }
}

/// A/B alternation: even rounds run berthd first, odd rounds containerd first.
pub fn order(round: usize) -> [Kind; 2] {
    if round.is_multiple_of(2) {
        [Kind::Berth, Kind::Containerd]
    } else {
        [Kind::Containerd, Kind::Berth]
    }
}

/// Live children and temp roots, for the signal handler (Drop does not run on `exit`).
static LIVE_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static ROOTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register_pid(pid: u32) {
    LIVE_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pid);
}

fn unregister_pid(pid: u32) {
    LIVE_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned ourselves; no memory is touched.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Ctrl-C or SIGTERM: stop every daemon we started, remove the temp roots, exit 130.
pub fn install_signal_handler() {
    tokio::spawn(async {
        use tokio::signal::unix::{signal as unix_signal, SignalKind};
        let mut term = match unix_signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("\nberth-bench: interrupted, stopping the daemons");
        emergency_cleanup();
        std::process::exit(130);
    });
}

fn emergency_cleanup() {
    let pids: Vec<u32> = LIVE_PIDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for &pid in &pids {
        signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for &pid in &pids {
        loop {
            // SAFETY: waitpid on our own child, non-blocking.
            let r =
                unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
            if r != 0 {
                break;
            }
            if Instant::now() > deadline {
                signal(pid, libc::SIGKILL);
                // SAFETY: as above, blocking reap after SIGKILL.
                unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for root in ROOTS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = fs::remove_dir_all(root);
    }
}

/// One daemon process on its own dirs.
pub struct Daemon {
    pub kind: Kind,
    pub socket: PathBuf,
    /// The daemon's own dir (its root, state, log and socket are under it).
    pub dir: PathBuf,
    /// Extra sockets to remove before a restart (containerd's ttrpc socket).
    stale: Vec<PathBuf>,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Time from spawn to the first answered Version call, for the last start.
    pub ready_after: Duration,
}

impl Daemon {
    fn berthd(program: &Path, dir: &Path) -> Result<Daemon> {
        let socket = dir.join("berthd.sock");
        let args = vec![
            "--root".into(),
            path_str(&dir.join("root")),
            "--state".into(),
            path_str(&dir.join("state")),
            "--address".into(),
            path_str(&socket),
            "--log-level".into(),
            "warn".into(),
        ];
        Ok(Daemon {
            kind: Kind::Berth,
            socket,
            dir: dir.to_path_buf(),
            stale: vec![],
            program: program.to_path_buf(),
            args,
            log: dir.join("berthd.log"),
            child: None,
            ready_after: Duration::ZERO,
        })
    }

    fn containerd(program: &Path, dir: &Path) -> Result<Daemon> {
        let socket = dir.join("containerd.sock");
        let ttrpc = dir.join("containerd.sock.ttrpc");
        // containerd's own defaults otherwise; only the CRI plugin is off (as issue 5 asks), and every
        // path points into our dir so nothing touches a system containerd (/run/containerd,
        // /var/lib/containerd, /opt/containerd).
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = path_str(&dir.join("root")),
            state = path_str(&dir.join("state")),
            sock = path_str(&socket),
            ttrpc = path_str(&ttrpc),
            opt = path_str(&dir.join("opt")),
        );
        let cfg = dir.join("config.toml");
        fs::write(&cfg, config).map_err(|e| format!("write {}: {e}", cfg.display()))?;
        Ok(Daemon {
            kind: Kind::Containerd,
            socket,
            dir: dir.to_path_buf(),
            stale: vec![ttrpc],
            program: program.to_path_buf(),
            args: vec!["--config".into(), path_str(&cfg)],
            log: dir.join("containerd.log"),
            child: None,
            ready_after: Duration::ZERO,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// CPU time used so far by the daemon, in ns (0 when not running).
    /// The process CPU clock (`clock_getcpuclockid`) counts every thread, also those that have
    /// exited (berthd runs each layer's decompression on a thread of its own); the sum over live
    /// threads' schedstat is only a fallback.
    pub fn cpu_ns(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        let mut clock: libc::clockid_t = 0;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: both calls only write to the two locals passed by pointer.
        if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } == 0
            && unsafe { libc::clock_gettime(clock, &mut ts) } == 0
        {
            return ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Spawn and wait until the Version RPC answers; records `ready_after`.
    pub async fn start(&mut self) -> Result<Duration> {
        for s in std::iter::once(&self.socket).chain(&self.stale) {
            let _ = fs::remove_file(s);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            // Own process group: a terminal Ctrl-C reaches only us, and we stop the daemons in order.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child when the
        // thread that spawned it dies, so a killed bench leaves no daemon behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let t0 = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.program.display()))?;
        register_pid(child.id());
        self.child = Some(child);
        let deadline = t0 + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let pid = child.id();
                    self.child = None;
                    unregister_pid(pid);
                    return Err(format!(
                        "{} exited during start ({status}); log tail:\n{}",
                        self.kind.name(),
                        log_tail(&self.log)
                    ));
                }
            }
            if self.socket.exists() {
                if let Ok(ch) = berth::connect(&self.socket).await {
                    if VersionClient::new(ch).version(()).await.is_ok() {
                        self.ready_after = t0.elapsed();
                        return Ok(self.ready_after);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready after 60 s; log tail:\n{}",
                    self.kind.name(),
                    log_tail(&self.log)
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A new connection (its own HTTP/2 connection).
    pub async fn connect(&self) -> Result<Channel> {
        berth::connect(&self.socket)
            .await
            .map_err(|e| format!("{}: {e}", self.kind.name()))
    }

    /// kill -9, reaped; the stores stay for a restart.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            unregister_pid(child.id());
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(10));
        }
    }
}

/// SIGTERM, SIGKILL once `grace` has passed, reap, and forget the pid.
fn terminate(mut child: std::process::Child, grace: Duration) {
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    unregister_pid(child.id());
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A helper process the bench starts (the loopback registry): in the same registry of live children
/// as the daemons, so every exit path stops it too; SIGTERM then SIGKILL on drop.
pub struct Helper {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Helper {
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Helper> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .process_group(0);
        // SAFETY: as for the daemons: only asks the kernel to SIGKILL the child if we die.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
        register_pid(child.id());
        Ok(Helper {
            name,
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Err with the log tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let pid = child.id();
                self.child = None;
                unregister_pid(pid);
                return Err(format!(
                    "{} exited ({status}); log tail:\n{}",
                    self.name,
                    log_tail(&self.log)
                ));
            }
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(5));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The temp root both daemons live under; removed on drop (unless kept).
struct TempRoot {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept temp root {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
        ROOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p != &self.path);
    }
}

/// Both daemons. Field order is drop order: daemons stop before their root is removed.
pub struct Lab {
    berth: Daemon,
    containerd: Daemon,
    root: TempRoot,
}

impl Lab {
    pub async fn start(berthd: &Path, containerd: &Path, tmp: &Path, keep: bool) -> Result<Lab> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let path = tmp.join(format!("berth-bench-{}-{stamp}", std::process::id()));
        let (bdir, cdir) = (path.join("b"), path.join("c"));
        for d in [&bdir, &cdir] {
            fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        if !keep {
            ROOTS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(path.clone());
        }
        let root = TempRoot { path, keep };
        let mut lab = Lab {
            berth: Daemon::berthd(berthd, &bdir)?,
            containerd: Daemon::containerd(containerd, &cdir)?,
            root,
        };
        for kind in [Kind::Berth, Kind::Containerd] {
            let d = lab.daemon_mut(kind);
            let t = d.start().await?;
            eprintln!(
                "started {} (pid {}) in {:.1} ms",
                kind.name(),
                d.pid().unwrap_or(0),
                t.as_secs_f64() * 1e3
            );
        }
        Ok(lab)
    }

    pub fn root(&self) -> &Path {
        &self.root.path
    }

    pub fn daemon(&self, kind: Kind) -> &Daemon {
        match kind {
            Kind::Berth => &self.berth,
            Kind::Containerd => &self.containerd,
        }
    }

    pub fn daemon_mut(&mut self, kind: Kind) -> &mut Daemon {
        match kind {
            Kind::Berth => &mut self.berth,
            Kind::Containerd => &mut self.containerd,
        }
    }

    pub fn stop(&mut self) {
        self.berth.stop();
        self.containerd.stop();
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
