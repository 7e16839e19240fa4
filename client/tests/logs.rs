//! `berth logs` against a real berthd (berth-testkit's harness): detached containers log through
//! their shim's cri-log:// writer to a file the CLI reads itself. Needs root, and berthd and
//! berth-shim built in this target dir (`cargo build -p berthd -p berth-shim`).

use berth_testkit::berthd::{process_token, tail, Daemon};
use berth_testkit::image::{busybox_oci_archive_with_etc, EtcFiles, DEFAULT_APPLETS};
use std::process::{Command, Output, Stdio};

const IMAGE: &str = "docker.io/berth/busybox:logs";
const ETC: EtcFiles = EtcFiles {
    passwd: "root:x:0:0:root:/root:/bin/sh\n",
    group: "root:x:0:\n",
};

/// A berthd with the image imported, in a namespace of this test's own.
struct Env {
    daemon: Daemon,
    ns: String,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new(case: &str) -> Env {
        Env::with(case, Daemon::start())
    }

    fn with(case: &str, daemon: Daemon) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("berth-logs-")
            .tempdir()
            .expect("temp dir");
        let applets: Vec<&str> = DEFAULT_APPLETS.iter().copied().chain(["printf"]).collect();
        let archive = busybox_oci_archive_with_etc(dir.path(), IMAGE, &applets, ETC)
            .expect("build the busybox image");
        // The container cgroup paths name the namespace: unique to this process and case.
        let ns = format!("logs-{case}-{}", process_token());
        let path = archive.path.to_string_lossy().into_owned();
        daemon.ctr(&ns, &["images", "import", &path]);
        Env {
            daemon,
            ns,
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("-H")
            .arg(format!("unix://{}", self.daemon.socket.display()))
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .env_remove("BERTH_HOST")
            .env_remove("BERTH_NAMESPACE")
            .env("BERTH_LOG_DIR", self._dir.path().join("logs"))
            .stdin(Stdio::null());
        cmd
    }

    fn raw(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run berth")
    }

    /// Run berth, insist on exit code `code`; returns stdout.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.raw(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "berth {} exited {:?}\nstdout: {}\nstderr: {}\nberthd log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.daemon.log(), 20)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.expect(0, args)
    }

    fn status_of(&self, name: &str) -> String {
        self.ok(&["inspect", "--format", "{{.State.Status}}", name])
            .trim()
            .to_string()
    }
}

impl Drop for Env {
    /// Leave no task or shim behind: every container of the namespace is force-removed.
    /// runc removes a container's cgroup, not the namespace's parent `/<ns>`: this test's own.
    fn drop(&mut self) {
        let ids = self.raw(&["ps", "-a", "-q", "--no-trunc"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.raw(&["rm", "-f", id]);
        }
        let mut parents = vec![std::path::PathBuf::from("/sys/fs/cgroup").join(&self.ns)];
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            parents.extend(hierarchies.flatten().map(|h| h.path().join(&self.ns)));
        }
        for dir in parents.iter().filter(|d| d.is_dir()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn logs(env: &Env, args: &[&str]) -> (String, String) {
    let out = env.raw(&[&["logs"][..], args].concat());
    assert_eq!(out.status.code(), Some(0), "berth logs {args:?}: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn logs_of_a_stopped_container_tail_since_timestamps_and_stderr() {
    let env = Env::new("stopped");
    env.ok(&[
        "run", "-d", "--name", "chatty", IMAGE, "sh", "-c",
        "echo out1; echo err1 >&2; sleep 0.3; i=0; while [ $i -lt 5 ]; do echo line-$i; i=$((i+1)); done; printf no-newline",
    ]);
    assert_eq!(env.ok(&["wait", "chatty"]).trim(), "0");
    let (out, err) = logs(&env, &["chatty"]);
    assert_eq!(
        out,
        "out1\nline-0\nline-1\nline-2\nline-3\nline-4\nno-newline"
    );
    assert_eq!(err, "err1\n");

    let (out, err) = logs(&env, &["--tail", "2", "chatty"]);
    assert_eq!(out, "line-4\nno-newline");
    assert_eq!(err, "");

    let (out, _) = logs(&env, &["-t", "--tail", "3", "chatty"]);
    for l in out.lines() {
        let (ts, rest) = l.split_once(' ').unwrap();
        assert!(ts.len() == 30 && ts.ends_with('Z'), "{l:?}");
        assert!(rest.starts_with("line-") || rest == "no-newline", "{l:?}");
    }
    assert_eq!(
        logs(&env, &["--since", "1h", "chatty"]).0.lines().count(),
        7
    );
    assert_eq!(
        logs(&env, &["--since", "2099-01-01T00:00:00Z", "chatty"]).0,
        ""
    );
    assert_eq!(logs(&env, &["--until", "1h", "chatty"]).0, "");

    // rm takes the log directory with it.
    let dir = env._dir.path().join("logs").join(&env.ns);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    env.ok(&["rm", "chatty"]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn logs_follow_until_the_container_stops() {
    let env = Env::new("follow");
    env.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        IMAGE,
        "sh",
        "-c",
        "for i in 1 2 3 4; do echo f-$i; sleep 0.4; done; echo bye >&2",
    ]);
    let (out, err) = logs(&env, &["-f", "slow"]);
    assert_eq!(out, "f-1\nf-2\nf-3\nf-4\n");
    assert_eq!(err, "bye\n");
    assert_eq!(
        env.status_of("slow"),
        "exited",
        "logs -f returned only once the container stopped"
    );
}

#[test]
fn logs_follow_across_rotation_with_log_opts() {
    let env = Env::new("rotate");
    env.ok(&[
        "run",
        "-d",
        "--name",
        "rot",
        "--log-opt",
        "max-size=400",
        "--log-opt",
        "max-file=6",
        IMAGE,
        "sh",
        "-c",
        "i=10; while [ $i -lt 40 ]; do echo rot-$i; i=$((i+1)); sleep 0.1; done",
    ]);
    let (out, _) = logs(&env, &["-f", "rot"]);
    let want: String = (10..40).map(|i| format!("rot-{i}\n")).collect();
    assert_eq!(out, want, "every line once, in order, across the rotations");
    let dir = env._dir.path().join("logs").join(&env.ns);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .collect();
    assert!(files.len() > 2, "rotated into {} files", files.len());
    for f in &files {
        let len = f.metadata().unwrap().len();
        assert!(len <= 400, "{:?}: {len} bytes", f.path());
    }
    let e = env.raw(&["run", "-d", "--log-opt", "colour=red", IMAGE, "true"]);
    assert_eq!(e.status.code(), Some(125), "{e:?}");
}

#[test]
fn an_attached_run_is_logged_too() {
    let env = Env::new("attached");
    let out = env.ok(&[
        "run",
        "--name",
        "att",
        IMAGE,
        "sh",
        "-c",
        "echo seen-live; echo err-live >&2",
    ]);
    assert_eq!(out, "seen-live\n");
    let (out, err) = logs(&env, &["att"]);
    assert_eq!((out.as_str(), err.as_str()), ("seen-live\n", "err-live\n"));
}

#[test]
fn restart_on_failure_twice_and_stop_is_not_undone() {
    let env = Env::with(
        "restart",
        Daemon::start_with_config("[tasks]\nrestart_interval_ms = 100\n"),
    );
    env.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        IMAGE,
        "sh",
        "-c",
        "echo try; exit 3",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while logs(&env, &["flaky"]).0.lines().count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            logs(&env, &["flaky"])
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        logs(&env, &["flaky"]).0,
        "try\ntry\ntry\n",
        "restarted exactly twice"
    );

    env.ok(&[
        "run",
        "-d",
        "--name",
        "forever",
        "--restart",
        "always",
        IMAGE,
        "sleep",
        "1000",
    ]);
    env.ok(&["stop", "-t", "1", "forever"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    // The monitor itself deletes the stopped task (containerd's behaviour), so it shows as
    // created, not exited; what matters is that it is not started again.
    let status = env.status_of("forever");
    assert!(
        status == "exited" || status == "created",
        "stop is not undone: {status}"
    );
    assert_eq!(
        env.raw(&["run", "-d", "--restart", "sometimes", IMAGE, "true"])
            .status
            .code(),
        Some(125)
    );
}
