//! `berth logs` against a real berthd (berth-testkit's harness): detached containers log through
//! their shim's cri-log:// writer to a file the CLI reads itself. Needs root, and berthd and
//! berth-shim built in this target dir (`cargo build -p berthd -p berth-shim`).

use berth_testkit::berthd::Daemon;
use berth_testkit::image::{busybox_oci_archive_with_etc, EtcFiles, DEFAULT_APPLETS};

mod common;
use common::Cli;

const IMAGE: &str = "docker.io/berth/busybox:logs";
const ETC: EtcFiles = EtcFiles {
    passwd: "root:x:0:0:root:/root:/bin/sh\n",
    group: "root:x:0:\n",
};

/// A berthd with the image imported, in a namespace of this test's own.
struct Env {
    cli: Cli,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = Cli;
    fn deref(&self) -> &Cli {
        &self.cli
    }
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
        let ns = common::namespace(&format!("logs-{case}"));
        let path = archive.path.to_string_lossy().into_owned();
        daemon.ctr(&ns, &["images", "import", &path]);
        let mut cli = Cli::new(daemon, ns);
        cli.env
            .push(("BERTH_LOG_DIR".into(), dir.path().join("logs").into()));
        Env { cli, _dir: dir }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cli.remove_all();
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
    // sleep as PID 1 ignores SIGTERM: the grace period must run out before the SIGKILL, even
    // with the restart monitor looking every 100 ms.
    let stopping = std::time::Instant::now();
    env.ok(&["stop", "-t", "1", "forever"]);
    assert!(
        stopping.elapsed() >= std::time::Duration::from_secs(1),
        "the grace period was cut short: {:?}",
        stopping.elapsed()
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Not started again, and the stopped task stays for ps to show the exit.
    assert_eq!(env.status_of("forever"), "exited");
    assert_eq!(
        env.raw(&["run", "-d", "--restart", "sometimes", IMAGE, "true"])
            .status
            .code(),
        Some(125)
    );
}
