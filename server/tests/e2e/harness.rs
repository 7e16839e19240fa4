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
    /// The `ctr` that `ctr`, `ctr_raw` and `ctr_err` run.
    pub ctr: Ctr,
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

    /// ctr 2.x sends `images pull/push/import/export/tag` through the Transfer service, which
    /// berthd does not serve yet: `--local` keeps them client-side, as ctr 1.6 always is.
    /// Drop this once the transfer service lands.
    pub fn args<'a>(self, args: &[&'a str]) -> Vec<&'a str> {
        let mut out = args.to_vec();
        if self == Ctr::V2
            && matches!(args.first(), Some(&("images" | "image" | "i")))
            && matches!(
                args.get(1),
                Some(&("pull" | "push" | "import" | "export" | "tag"))
            )
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
            ctr: Ctr::V1_6,
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

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
