//! What every test of the `berth` binary shares: the binary run against one test daemon in one
//! namespace, with its exit code checked and berthd's log shown when it is not the expected one.
// Each test crate uses part of this module.
#![allow(dead_code)]

pub mod registry;

use berth_testkit::berthd::Daemon;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The `berth` binary pointed at `daemon`, in namespace `ns`.
pub struct Cli {
    pub daemon: Daemon,
    pub ns: String,
    /// Extra environment for every run (e.g. BERTH_LOG_DIR).
    pub env: Vec<(String, OsString)>,
}

/// Namespaces this test process has handed out. Two tests in one namespace share its cgroup
/// parent `/<ns>` (on the host, whatever their daemons), and `remove_all` removes that parent
/// when one test ends: the other test's next `runc create` then fails to make its cgroup under
/// it. So a name is given once per process, and a second claim is a bug in the test.
pub fn claim(ns: &str) {
    static CLAIMED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        !claimed.iter().any(|n| n == ns),
        "namespace {ns:?} is already another test's in this process: give each test its own"
    );
    claimed.push(ns.to_string());
}

/// A namespace name no other test of this process has: `<prefix><n>-<process token>` (one
/// prefix may serve several tests of a file).
pub fn namespace(prefix: &str) -> String {
    static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{n}-{}", berth_testkit::berthd::process_token())
}

impl Cli {
    pub fn new(daemon: Daemon, ns: String) -> Cli {
        claim(&ns);
        Cli {
            daemon,
            ns,
            env: Vec::new(),
        }
    }

    /// The command, not yet run: stdin is /dev/null, and the caller's BERTH_* settings are gone.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("-H")
            .arg(format!("unix://{}", self.daemon.socket.display()))
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .env_remove("BERTH_HOST")
            .env_remove("BERTH_NAMESPACE")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn raw(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run berth")
    }

    /// Exit code, stdout and stderr.
    pub fn berth(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.raw(args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Run berth, insist on exit code `code`; returns stdout.
    pub fn expect(&self, code: i32, args: &[&str]) -> String {
        let (got, stdout, stderr) = self.berth(args);
        assert_eq!(
            got,
            code,
            "berth {}\nstdout: {stdout}\nstderr: {stderr}",
            args.join(" "),
        );
        stdout
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.expect(0, args)
    }

    /// stderr of a run that must exit with `code`.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let (got, stdout, stderr) = self.berth(args);
        assert_eq!(
            got,
            code,
            "berth {}: stdout {stdout} stderr {stderr}",
            args.join(" ")
        );
        stderr
    }

    pub fn status_of(&self, name: &str) -> String {
        self.ok(&["inspect", "--format", "{{.State.Status}}", name])
            .trim()
            .to_string()
    }

    /// Leave no task or shim behind: every container of the namespace is force-removed. runc
    /// removes a container's cgroup, not the namespace's parent `/<ns>`, which is this test's own.
    pub fn remove_all(&self) {
        let ids = self.raw(&["ps", "-a", "-q", "--no-trunc"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.raw(&["rm", "-f", id]);
        }
        let mut parents = vec![PathBuf::from("/sys/fs/cgroup").join(&self.ns)];
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            parents.extend(hierarchies.flatten().map(|h| h.path().join(&self.ns)));
        }
        for dir in parents.iter().filter(|d| d.is_dir()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A [`Cli`] in a namespace of its own (`<prefix><n>-<token>`) with a busybox image of `applets`
/// loaded as `image`, and a temp dir for the test's files; every container goes on drop.
pub struct BusyboxEnv {
    pub cli: Cli,
    pub dir: tempfile::TempDir,
}

impl BusyboxEnv {
    pub fn start(prefix: &str, image: &str, applets: &[&str]) -> BusyboxEnv {
        berth_testkit::berthd::require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = berth_testkit::image::busybox_oci_archive_with(dir.path(), image, applets)
            .expect("busybox image");
        let ns = namespace(prefix);
        let env = BusyboxEnv {
            cli: Cli::new(Daemon::start(), ns),
            dir,
        };
        env.cli
            .ok(&["load", "-q", "-i", &archive.path.to_string_lossy()]);
        env
    }
}

impl std::ops::Deref for BusyboxEnv {
    type Target = Cli;
    fn deref(&self) -> &Cli {
        &self.cli
    }
}

impl Drop for BusyboxEnv {
    fn drop(&mut self) {
        self.cli.remove_all();
    }
}
