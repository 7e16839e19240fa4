//! A real berthd on a throwaway root, as the end-to-end tests drive it: started (and waited for
//! until it serves), stopped with SIGTERM, killed with SIGKILL like a crash, started again on the
//! same root, and reached with the `berth` client crate or containerd's own `ctr`.
//!
//! `berthd_args` is the one place berthd's command line is spelled; the bench's supervisor,
//! which also runs containerd 1.6 beside it, starts berthd with it too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long berthd may take to serve after it was spawned.
const READY_WITHIN: Duration = Duration::from_secs(20);

pub struct Daemon {
    child: Option<Child>,
    binary: PathBuf,
    /// A config file passed with --config, if the test wrote one.
    config: Option<PathBuf>,
    /// Holds root, state, socket and log; removed when the daemon is dropped.
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The `ctr` that `ctr`, `ctr_raw` and `ctr_err` run.
    pub ctr: Ctr,
    /// This daemon's default network (bridge, subnet), unless the test chose its own; its
    /// bridge goes after the daemon (fields drop after `Drop::drop`).
    pub network: Option<crate::net::TestNetwork>,
}

/// Which `ctr` drives berthd: Debian's containerd 1.6 package, or containerd v2's, built by
/// scripts/deps-go-tools.sh into $BERTH_TEST_BIN (default /usr/local/lib/berth-test/bin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctr {
    V1_6,
    V2,
}

impl Ctr {
    pub fn binary(self) -> PathBuf {
        match self {
            Ctr::V1_6 => PathBuf::from("ctr"),
            Ctr::V2 => std::env::var_os("BERTH_TEST_BIN")
                .map_or_else(
                    || PathBuf::from("/usr/local/lib/berth-test/bin"),
                    PathBuf::from,
                )
                .join("ctr"),
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Ctr::V1_6 => "install Debian's containerd package",
            Ctr::V2 => "run scripts/deps-go-tools.sh",
        }
    }

    /// ctr 2.x sends `images pull/push/tag` through berthd's Transfer service; `import` and
    /// `export` too, but the shared scenarios keep those client-side with `--local`, as ctr
    /// 1.6 always is (e2e/archive.rs drives them through Transfer).
    pub fn args<'a>(self, args: &[&'a str]) -> Vec<&'a str> {
        let mut out = args.to_vec();
        if self == Ctr::V2
            && matches!(args.first(), Some(&("images" | "image" | "i")))
            && matches!(args.get(1), Some(&("import" | "export")))
        {
            out.insert(2, "--local");
        }
        out
    }
}

/// The tests mount, chown and lock as a daemon does; say so rather than fail obscurely.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests need root (they run berthd as it runs in production): run scripts/test.sh as root"
    );
}

/// A token unique to this test process on this host (its pid and a random part, for pid
/// namespaces): names that the host shares between processes — namespaces, which become cgroup
/// paths `/<ns>/<id>` — carry it, so two runs of the suite at once (CI beside a developer) never
/// meet.
pub fn process_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS per process: random enough, without a dependency.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{}-{:04x}", std::process::id(), h.finish() & 0xffff)
    })
}

/// The socket of the berthd whose files are under `dir`.
pub fn berthd_socket(dir: &Path) -> PathBuf {
    dir.join("berthd.sock")
}

/// berthd's arguments for a daemon whose root, state and socket are under `dir`.
pub fn berthd_args(dir: &Path, config: Option<&Path>, log_level: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![];
    if let Some(config) = config {
        args.extend(["--config".into(), config.into()]);
    }
    for (flag, path) in [
        ("--root", dir.join("root")),
        ("--state", dir.join("state")),
        ("--address", berthd_socket(dir)),
    ] {
        args.extend([flag.into(), path.into()]);
    }
    args.extend(["--log-level".into(), log_level.into()]);
    args
}

/// The berthd binary under test: `$BERTHD`, else the one cargo built beside the running test
/// (`target/<profile>/berthd`, the test being `target/<profile>/deps/<name>-<hash>`).
pub fn berthd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTHD") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let berthd = profile_dir.join("berthd");
    assert!(
        berthd.is_file(),
        "no berthd at {}: build it (cargo build -p berthd), or set BERTHD",
        berthd.display()
    );
    berthd
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with_config("")
    }

    /// Start with extra TOML configuration (e.g. proxy plugins); flags still set the paths.
    pub fn start_with_config(toml: &str) -> Daemon {
        Self::start_binary(&berthd_binary(), toml)
    }

    /// Start `binary` (a berthd) with extra TOML configuration.
    pub fn start_binary(binary: &Path, toml: &str) -> Daemon {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("create temp dir");
        let socket = berthd_socket(dir.path());
        // Unless the test configures them itself, berth's network config dir and default
        // network (see `net`), the CRI socket and the CRI's CNI config dir are the daemon's own,
        // never the host's /etc/berth/cni/net.d, berth0 or /run/berth/cri.sock.
        let (toml, network) = crate::net::with_cni_defaults(toml, &dir.path().join("net.d"));
        let toml = if toml.contains("[cri]") {
            toml
        } else {
            format!(
                "{toml}\n[cri]\naddress = {:?}\ncni_conf_dir = {:?}\n",
                dir.path().join("cri.sock"),
                dir.path().join("cri-net.d"),
            )
        };
        let config = (!toml.is_empty()).then(|| {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, toml).expect("write config");
            path
        });
        let mut d = Daemon {
            child: None,
            binary: binary.to_path_buf(),
            config,
            dir,
            socket,
            ctr: Ctr::V1_6,
            network,
        };
        d.spawn();
        d
    }

    /// The same daemon, driven by `ctr` from now on.
    pub fn using(mut self, ctr: Ctr) -> Daemon {
        self.ctr = ctr;
        self
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The CRI socket of a daemon whose test left `[cri]` to the fixture.
    pub fn cri_socket(&self) -> PathBuf {
        self.dir.path().join("cri.sock")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Start berthd on this root (again, after a stop or kill) and wait until it serves.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berthd.log"))
            .expect("open log");
        let child = Command::new(&self.binary)
            .args(berthd_args(
                self.dir.path(),
                self.config.as_deref(),
                "debug",
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if self.serves() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Its log follows, from the daemon's drop.
                panic!("berthd exited before serving ({status})");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("berthd did not serve within {READY_WITHIN:?}");
    }

    /// Whether this daemon serves: the socket's listener is this child's. A connection alone
    /// does not say so: after a kill -9 the old listener lives on in any child the old daemon
    /// was spawning (between fork and exec it holds every descriptor), so the stale path
    /// accepts for a moment.
    pub fn serves(&self) -> bool {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let Some(child) = self.child.as_ref() else {
            return false;
        };
        std::os::unix::net::UnixStream::connect(&self.socket)
            .ok()
            .and_then(|conn| getsockopt(&conn, PeerCredentials).ok())
            .is_some_and(|peer| peer.pid() as u32 == child.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown path runs, like a crash or an OOM kill.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("send SIGTERM");
        c.wait().expect("wait for berthd")
    }

    /// The namespaces the daemon has, if it runs and answers (within ctr's connect timeout).
    fn namespaces(&self) -> Vec<String> {
        if self.child.is_none() {
            return Vec::new();
        }
        let args = ["--connect-timeout", "2s", "namespaces", "ls", "-q"];
        match ctr_command_for(self.ctr, &self.socket, "default", &args)
            .stderr(std::process::Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Run `ctr -a SOCKET -n NS ARGS…` and return its output, whatever the exit status.
    pub fn ctr_raw(&self, ns: &str, args: &[&str]) -> Output {
        ctr_command_for(self.ctr, &self.socket, ns, args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "run {} ({e}): {}",
                    self.ctr.binary().display(),
                    self.ctr.install_hint()
                )
            })
    }

    /// `ctr -a SOCKET -n NS ARGS…` with this daemon's ctr, to spawn.
    pub fn ctr_command(&self, ns: &str, args: &[&str]) -> Command {
        ctr_command_for(self.ctr, &self.socket, ns, args)
    }

    /// Run ctr and insist it succeeds; returns stdout.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> String {
        let out = self.ctr_raw(ns, args);
        assert!(
            out.status.success(),
            "ctr -n {ns} {} failed: {}\nstdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run ctr expecting failure; returns stderr.
    pub fn ctr_err(&self, ns: &str, args: &[&str]) -> String {
        let out = self.ctr_raw(ns, args);
        assert!(
            !out.status.success(),
            "ctr -n {ns} {} unexpectedly succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A gRPC channel to the daemon, made by the `berth` client crate (which the tests thereby
    /// exercise), for any generated client of containerd's API. On failure the daemon's state
    /// and log follow, from its drop.
    pub async fn channel(&self) -> tonic::transport::Channel {
        berth::connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Debian's ctr 1.6.
pub fn ctr_command(socket: &Path, ns: &str, args: &[&str]) -> Command {
    ctr_command_for(Ctr::V1_6, socket, ns, args)
}

pub fn ctr_command_for(ctr: Ctr, socket: &Path, ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(ctr.binary());
    cmd.arg("-a")
        .arg(socket)
        .arg("-n")
        .arg(ns)
        .args(ctr.args(args));
    cmd
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test (the readiness and ctr helpers' panics included) says here, once,
            // what the daemon did; its log goes with the temp dir.
            let state = match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => "running".to_string(),
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Err(e)) => format!("unknown: {e}"),
                None => "not running".to_string(),
            };
            eprintln!(
                "---- berthd at {} ({state}), its log's tail ----\n{}\n---- end of berthd log ----",
                self.dir.path().display(),
                tail(&self.log(), 80)
            );
        }
        // Asked while it still answers (a test may have stopped it already: then none).
        let namespaces = self.namespaces();
        self.kill9();
        // Tasks outlive a SIGKILLed berthd by design, so whatever task the test left (a removal
        // that failed, issue 15's `psr-` mount) would stay on the host with its shim and its
        // rootfs mount. Only this daemon's: what names or lies under its directory.
        let mut left = remove_leftovers(self.dir.path());
        left.extend(remove_attachments(self.dir.path(), &self.state()));
        remove_namespace_cgroups(&namespaces);
        if !left.is_empty() {
            eprintln!(
                "warning: berthd at {} left behind (removed): {left:?}",
                self.dir.path().display()
            );
        }
    }
}

/// The Prometheus text of a daemon's `[metrics]` listener on loopback `port`.
pub fn scrape_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    conn.write_all(b"GET /v1/metrics HTTP/1.0\r\n\r\n")
        .expect("ask for the metrics");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read the metrics");
    text
}

/// The sum of the values of the series in `text` whose line starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Removes the cgroup parents (`/<ns>`, and any container cgroup left in them) of the daemon's
/// namespaces: runc makes them and nothing removes them, as in containerd, so each test's
/// namespace would leave one in every hierarchy. A test's namespace is its own
/// (`client/tests/common::claim`, the e2e fixtures); `default` and `k8s.io`, which concurrent
/// tests share, are left alone.
fn remove_namespace_cgroups(namespaces: &[String]) {
    for ns in namespaces {
        if ns == "default" || ns == "k8s.io" || ns.is_empty() || ns.contains('/') {
            continue;
        }
        // Whatever stays busy (a process the kernel has yet to let go of) is left.
        let _ = berth_cgroups::dirs::remove_tree(&format!("/{ns}"));
    }
}

/// Detaches the network attachments the killed daemon still had recorded, berth's (`<state>/cni`)
/// and the CRI's pods' (`<state>/cri/net`): their netns, veths, IP leases and port rules are the
/// host's and would outlive `dir`. One is left when the kill falls between a task's removal and
/// its detach (`rm -f` racing a restart, or the test's end right after either). berthd itself
/// does this at its next start; a test daemon has none. Says what it removed.
fn remove_attachments(dir: &Path, state: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for (state_dir, conf_dir) in [
        (state.join("cni"), dir.join("net.d")),
        (state.join("cri").join("net"), dir.join("cri-net.d")),
    ] {
        let recorded = std::fs::read_dir(state_dir.join("attachments"))
            .map(|mut namespaces| namespaces.next().is_some())
            .unwrap_or(false);
        if !recorded {
            continue;
        }
        let net = match berth_net::Net::new(berth_net::NetConfig::new(conf_dir, state_dir.clone()))
        {
            Ok(net) => net,
            Err(e) => {
                eprintln!("warning: open {}: {e}", state_dir.display());
                continue;
            }
        };
        match net.cleanup_stale(&std::collections::HashSet::new()) {
            Ok(report) => {
                removed.extend(report.removed.iter().map(|k| format!("attachment {k}")));
                for (key, e) in report.failed {
                    eprintln!("warning: attachment {key} not removed: {e}");
                }
            }
            Err(e) => eprintln!("warning: attachments in {}: {e}", state_dir.display()),
        }
    }
    removed
}

/// Kills the berth-shims and pod holders whose command line names `dir` and every process below
/// them, then detaches every mount under `dir` (deepest first); says what it found.
fn remove_leftovers(dir: &Path) -> Vec<String> {
    // With the slash: another daemon's directory may share this one's name as a prefix.
    let mut needle = dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let procs: Vec<(i32, i32, Vec<u8>)> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(|pid| {
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    let ppid = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    Some((pid, ppid, cmdline))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut doomed: Vec<i32> = procs
        .iter()
        .filter(|(_, _, cmd)| {
            let mut args = cmd.split(|&b| b == 0);
            // Its shims, and its CRI pods' namespace holders (`berthd cri-holder … --pod DIR`).
            let ours = args.next().is_some_and(|a| a.ends_with(b"berth-shim"))
                || args.next() == Some(b"cri-holder".as_slice());
            ours && cmd.windows(needle.len()).any(|w| w == needle.as_slice())
        })
        .map(|(pid, _, _)| *pid)
        .collect();
    // Their containers, listed before anything is killed (a killed shim's children move).
    loop {
        let more: Vec<i32> = procs
            .iter()
            .filter(|(pid, ppid, _)| doomed.contains(ppid) && !doomed.contains(pid))
            .map(|(pid, _, _)| *pid)
            .collect();
        if more.is_empty() {
            break;
        }
        doomed.extend(more);
    }
    let mut found: Vec<String> = doomed.iter().map(|pid| format!("process {pid}")).collect();
    for pid in doomed {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir) && Path::new(m) != dir)
        .map(str::to_string)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&m)
            .stderr(Stdio::null())
            .status();
        found.push(format!("mount {m}"));
    }
    found
}
