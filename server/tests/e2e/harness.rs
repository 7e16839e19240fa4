//! Starting, stopping and killing a real berthd on a throwaway root, and reaching it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Option<Child>,
    /// A config file passed with --config, if the test wrote one.
    config: Option<PathBuf>,
    /// Holds root, state and socket; removed when the test ends.
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
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

/// The tests mount, chown and lock as a daemon does; say so rather than fail obscurely.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests need root (they run berthd as it runs in production): run scripts/test.sh as root"
    );
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with_config("")
    }

    /// Start with extra TOML configuration (e.g. proxy plugins); flags still set the paths.
    pub fn start_with_config(toml: &str) -> Daemon {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("create temp dir");
        let socket = dir.path().join("berthd.sock");
        let config = (!toml.is_empty()).then(|| {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, toml).expect("write config");
            path
        });
        let mut d = Daemon {
            child: None,
            config,
            dir,
            socket,
        };
        d.spawn();
        d
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berthd"));
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .arg("--address")
            .arg(&self.socket)
            .arg("--log-level")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn berthd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("berthd exited before serving ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("berthd did not serve within 20s:\n{}", self.log());
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

    /// Run `ctr -a SOCKET -n NS ARGS…` and return its output, whatever the exit status.
    pub fn ctr_raw(&self, ns: &str, args: &[&str]) -> Output {
        ctr_command(&self.socket, ns, args)
            .output()
            .expect("run ctr (install Debian's containerd package)")
    }

    /// Run ctr and insist it succeeds; returns stdout.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> String {
        let out = self.ctr_raw(ns, args);
        assert!(
            out.status.success(),
            "ctr -n {ns} {} failed: {}\nstdout: {}\nberthd log tail:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            tail(&self.log(), 30)
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

    /// A gRPC channel for the containerd-client crate's generated clients.
    pub async fn channel(&self) -> tonic::transport::Channel {
        containerd_client::connect(&self.socket)
            .await
            .expect("connect to berthd")
    }
}

pub fn ctr_command(socket: &Path, ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("-a").arg(socket).arg("-n").arg(ns).args(args);
    cmd
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
