//! The two daemons under test: started on fresh dirs under one temp root, stopped (and the root
//! removed) on every exit path: normal return, error, panic (Drop guards), Ctrl-C / SIGTERM (signal
//! handler over a registry of live children), and the bench itself being killed (PDEATHSIG).
//!
//! Containers outlive their daemon (the shims are daemonized by design), so the temp root is also
//! swept before it is removed ([`sweep`]): runc containers under it are force-deleted, shims and
//! container processes killed, mounts under it detached, the containers' cgroups removed. Only a
//! SIGKILL of the bench itself can leave containers behind (their daemons die with it).

use crate::Result;
use berth::api::services::version::v1::version_client::VersionClient;
use std::ffi::OsString;
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
    /// Debian's containerd 1.6, the peer of every group.
    Containerd,
    /// containerd 2.4 built from its Go module (`bench/peers.sh`), the pull group's second peer.
    Containerd2,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Berth => "berthd",
            Kind::Containerd => "containerd",
            Kind::Containerd2 => "containerd-2.4",
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
/// Temp roots, and whether to keep their files (they are swept either way).
static ROOTS: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());
/// Namespaces the tasks group runs containers in: their cgroups are `/<ns>/<id>` (ctr's default).
static TASK_NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Record a namespace containers run in, so a sweep finds their processes and cgroups.
pub fn register_task_namespace(ns: &str) {
    let mut v = TASK_NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    if !v.iter().any(|n| n == ns) {
        v.push(ns.to_string());
    }
}

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
    for (root, keep) in ROOTS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let left = sweep(root, true);
        if !left.is_empty() {
            eprintln!("berth-bench: stopped leftovers: {}", left.describe());
        }
        if !keep {
            let _ = fs::remove_dir_all(root);
        }
    }
}

/// Move `dir` out of its temp root (a rename beside the root, same filesystem) and remove it with
/// a detached `rm -rf` at idle CPU and I/O priority that outlives the bench. Only for trees with
/// no mounts and no processes left in them; if the rename fails, `dir` is removed here and now.
pub fn remove_in_background(dir: &Path) {
    let Some(trash) = dir.parent().and_then(Path::parent).map(|p| {
        p.join(format!(
            "berth-bench-trash-{}-{}",
            std::process::id(),
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ))
    }) else {
        let _ = fs::remove_dir_all(dir);
        return;
    };
    if fs::rename(dir, &trash).is_err() {
        let _ = fs::remove_dir_all(dir);
        return;
    }
    let spawned = Command::new("nice")
        .args(["-n", "19", "ionice", "-c", "3", "rm", "-rf", "--"])
        .arg(&trash)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        // Not waited for: it is reaped by init once the bench has exited.
        Ok(_) => eprintln!("removing {} in the background", trash.display()),
        Err(_) => {
            let _ = fs::remove_dir_all(&trash);
        }
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
    args: Vec<OsString>,
    /// A directory put first on the daemon's PATH (containerd 2.4's own shim).
    path_first: Option<PathBuf>,
    log: PathBuf,
    child: Option<Child>,
    /// Time from spawn to the first answered Version call, for the last start.
    pub ready_after: Duration,
}

impl Daemon {
    pub fn berthd(program: &Path, dir: &Path) -> Result<Daemon> {
        // The command line the end-to-end tests start berthd with, and, as for containerd, the
        // CRI off: it is not what these figures compare, and it would take /run/berth/cri.sock.
        let socket = berth_testkit::berthd::berthd_socket(dir);
        let config = dir.join("config.toml");
        // BERTH_BENCH_BERTHD_TOML: more of berthd's config for a run, e.g. `[tracing]` to
        // measure the cost of exporting spans.
        let extra = std::env::var("BERTH_BENCH_BERTHD_TOML").unwrap_or_default();
        fs::create_dir_all(dir)
            .and_then(|()| fs::write(&config, format!("[cri]\nenabled = false\n{extra}\n")))
            .map_err(|e| format!("writing {}: {e}", config.display()))?;
        let args = berth_testkit::berthd::berthd_args(dir, Some(&config), "warn");
        Ok(Daemon {
            kind: Kind::Berth,
            socket,
            dir: dir.to_path_buf(),
            stale: vec![],
            program: program.to_path_buf(),
            args,
            log: dir.join("berthd.log"),
            path_first: None,
            child: None,
            ready_after: Duration::ZERO,
        })
    }

    pub fn containerd(program: &Path, dir: &Path) -> Result<Daemon> {
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
            args: vec!["--config".into(), cfg.into_os_string()],
            log: dir.join("containerd.log"),
            path_first: None,
            child: None,
            ready_after: Duration::ZERO,
        })
    }

    /// containerd 2.4 on `dir`, with `shim_dir` (where its own containerd-shim-runc-v2 is) first on
    /// its PATH, so it never starts Debian's 1.6 shim.
    pub fn containerd2(program: &Path, dir: &Path, shim_dir: &Path) -> Result<Daemon> {
        let socket = dir.join("containerd.sock");
        let ttrpc = dir.join("containerd.sock.ttrpc");
        // Version 3 (containerd 2.x's own schema). Off: the CRI plugins (as for 1.6, with the pod
        // sandbox controller that needs them) and NRI, whose socket is a fixed host path
        // (/var/run/nri/nri.sock) another containerd may hold. Every
        // other path points into our dir; the transfer service keeps its defaults (overlayfs).
        let config = format!(
            r#"version = 3
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.nri.v1.nri",
  "io.containerd.podsandbox.controller.v1.podsandbox",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""
  level = "warn"

[metrics]
  address = ""
"#,
            root = path_str(&dir.join("root")),
            state = path_str(&dir.join("state")),
            sock = path_str(&socket),
            ttrpc = path_str(&ttrpc),
        );
        let cfg = dir.join("config.toml");
        fs::write(&cfg, config).map_err(|e| format!("write {}: {e}", cfg.display()))?;
        Ok(Daemon {
            kind: Kind::Containerd2,
            socket,
            dir: dir.to_path_buf(),
            stale: vec![ttrpc],
            program: program.to_path_buf(),
            args: vec!["--config".into(), cfg.into_os_string()],
            log: dir.join("containerd.log"),
            path_first: Some(shim_dir.to_path_buf()),
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
        if let Some(first) = &self.path_first {
            let mut path = first.clone().into_os_string();
            if let Some(rest) = std::env::var_os("PATH") {
                path.push(":");
                path.push(rest);
            }
            cmd.env("PATH", path);
        }
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
        let left = sweep(&self.path, true);
        if !left.is_empty() {
            eprintln!("berth-bench: stopped leftovers: {}", left.describe());
        }
        if self.keep {
            eprintln!("kept temp root {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
        ROOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _)| p != &self.path);
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
        ROOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path.clone(), keep));
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
            // The Lab runs one containerd; containerd 2.4 runs only in the pull group's own dirs.
            Kind::Containerd | Kind::Containerd2 => &self.containerd,
        }
    }

    pub fn daemon_mut(&mut self, kind: Kind) -> &mut Daemon {
        match kind {
            Kind::Berth => &mut self.berth,
            Kind::Containerd | Kind::Containerd2 => &mut self.containerd,
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

/// What a [`sweep`] found under a temp root (and, when asked to, stopped or removed).
#[derive(Debug, Default)]
pub struct Leftovers {
    /// runc containers (`runc-root/ns/id`) still in a runc state dir under the root.
    pub containers: Vec<String>,
    /// Processes: shims and anything else naming the root on its command line, and processes in
    /// the cgroups of the registered task namespaces (`pid comm`).
    pub processes: Vec<String>,
    /// Mount points under the root.
    pub mounts: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.processes.is_empty() && self.mounts.is_empty()
    }

    pub fn describe(&self) -> String {
        let part = |what: &str, v: &[String]| {
            if v.is_empty() {
                None
            } else {
                let shown: Vec<&str> = v.iter().take(5).map(String::as_str).collect();
                let more = if v.len() > 5 {
                    format!(", … ({} in all)", v.len())
                } else {
                    String::new()
                };
                Some(format!("{what}: {}{more}", shown.join(", ")))
            }
        };
        [
            part("runc containers", &self.containers),
            part("processes", &self.processes),
            part("mounts", &self.mounts),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
    }
}

/// The runc state dirs under `root`: every `<dir>/runc/<ns>/<id>/state.json` up to 3 levels down
/// (the bench passes `<daemon dir>/runc` as runc root; berthd's default is `state/runc`).
fn runc_containers(root: &Path) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            if e.file_name() == "runc" {
                out.push(p);
            } else if depth > 0 && e.file_name() != "snapshots" && e.file_name() != "content" {
                walk(&p, depth - 1, out);
            }
        }
    }
    let mut runc_dirs = Vec::new();
    walk(root, 3, &mut runc_dirs);
    let mut found = Vec::new();
    for rd in runc_dirs {
        let Ok(namespaces) = fs::read_dir(&rd) else {
            continue;
        };
        for ns in namespaces.flatten() {
            let Ok(ids) = fs::read_dir(ns.path()) else {
                continue;
            };
            for id in ids.flatten() {
                if id.path().join("state.json").exists() {
                    found.push((ns.path(), id.file_name().to_string_lossy().into_owned()));
                }
            }
        }
    }
    found
}

/// Mount points under `root` (from /proc/self/mountinfo, octal escapes decoded), deepest first.
pub fn mounts_under(root: &Path) -> Vec<String> {
    let prefix = format!("{}/", root.to_string_lossy().trim_end_matches('/'));
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|m| m.starts_with(&prefix))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v.dedup();
    v
}

fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The programs a sweep may kill when their command line names the temp root.
const RUNTIME_PROGRAMS: &[&str] = &["berth-shim", "containerd-shim", "runc", "ctr"];

/// Processes that belong to a run under `root`: one of [`RUNTIME_PROGRAMS`] whose command line
/// names the root (shims, runc, ctr), or anything in a cgroup `/<ns>/...` of a registered task
/// namespace (container processes).
/// Our own pid and the registered live children (the daemons, stopped on their own) are left out.
fn processes_under(root: &Path) -> Vec<(u32, String, Vec<String>)> {
    let needle = root.to_string_lossy().into_owned();
    let namespaces: Vec<String> = TASK_NAMESPACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|n| format!("/{n}/"))
        .collect();
    let me = std::process::id();
    let live: Vec<u32> = LIVE_PIDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let Ok(rd) = fs::read_dir("/proc") else {
        return vec![];
    };
    let mut found = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || live.contains(&pid) {
            continue;
        }
        let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program = argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        let named = RUNTIME_PROGRAMS.iter().any(|p| program.starts_with(p))
            && argv.iter().any(|a| a.contains(&needle));
        let in_cgroup = !namespaces.is_empty()
            && fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|cg| {
                cg.lines().any(|l| {
                    let path = l.splitn(3, ':').nth(2).unwrap_or("");
                    namespaces.iter().any(|n| path.starts_with(n.as_str()))
                })
            });
        if named || in_cgroup {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string(), argv));
        }
    }
    found
}

/// containerd 1.6 puts a shim's socket at `/run/containerd/s/<sha256(address/ns/id)>` whatever
/// its root: remove it for a shim that was killed (a clean shim exit removes it itself).
fn containerd_shim_socket(argv: &[String]) -> Option<PathBuf> {
    use sha2::{Digest, Sha256};
    let arg = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let (ns, id, address) = (arg("-namespace")?, arg("-id")?, arg("-address")?);
    let digest = Sha256::digest(format!("{address}/{ns}/{id}").as_bytes());
    Some(Path::new("/run/containerd/s").join(hex::encode(digest)))
}

/// Find what runs on, or is mounted under, the temp root `root`, outside the daemons. With `kill`:
/// force-delete the runc containers, SIGKILL the processes, detach the mounts, remove the task
/// namespaces' (empty) cgroups; the result lists what was found before that.
pub fn sweep(root: &Path, kill: bool) -> Leftovers {
    let containers = runc_containers(root);
    let mut left = Leftovers {
        containers: containers
            .iter()
            .map(|(r, id)| format!("{}/{id}", r.display()))
            .collect(),
        ..Default::default()
    };
    if kill {
        for (runc_root, id) in &containers {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(runc_root)
                .args(["delete", "--force", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let procs = processes_under(root);
    left.processes = procs
        .iter()
        .map(|(pid, comm, _)| format!("{pid} {comm}"))
        .collect();
    if kill && !procs.is_empty() {
        for (pid, _, _) in &procs {
            signal(*pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while procs
            .iter()
            .any(|(pid, _, _)| Path::new(&format!("/proc/{pid}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (_, comm, argv) in &procs {
            if comm.starts_with("containerd-shim") {
                if let Some(sock) = containerd_shim_socket(argv) {
                    let _ = fs::remove_file(sock);
                }
            }
        }
    }
    left.mounts = mounts_under(root);
    if kill {
        for m in &left.mounts {
            if let Ok(c) = std::ffi::CString::new(m.as_str()) {
                // SAFETY: umount2 with a NUL-terminated path we own; no memory is shared.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
        remove_task_cgroups();
    }
    left
}

/// rmdir the (empty) cgroups `/<ns>` and below of the registered task namespaces, in every
/// cgroup hierarchy; a cgroup with processes left stays (rmdir fails).
fn remove_task_cgroups() {
    fn rmdir_tree(dir: &Path) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
    let namespaces = TASK_NAMESPACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if namespaces.is_empty() {
        return;
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2") {
            for ns in &namespaces {
                rmdir_tree(&Path::new(f[1]).join(ns));
            }
        }
    }
}
