//! berthd driven by containerd's own v2 Go client (github.com/containerd/containerd/v2/client,
//! default options): the Go test program compat/containerd-v2 pulls from a registry on loopback
//! with client-side unpack, runs a task with FIFO stdio, watches events and uses a lease, and
//! reads containerd 2's introspection (server pid, runtime info). The test binary is compiled once
//! per run with `go test -c` (Go's build cache makes later builds quick).

use crate::harness::Daemon;
use crate::registry::Registry;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `go test -c` of compat/containerd-v2, once per test process.
fn go_test_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compat/containerd-v2");
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("containerd-v2.test");
        let out = Command::new("go")
            .args(["test", "-c", "-o"])
            .arg(&bin)
            .current_dir(&module)
            .output()
            .expect("run go (berth's tests need Go: scripts/deps-go-tools.sh)");
        assert!(
            out.status.success(),
            "go test -c in {} failed:\n{}",
            module.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// Runs the Go tests matching `pattern` against `d`; asserts each of them ran and passed (a
/// skipped Go test would pass silently otherwise).
fn run_go_tests(d: &Daemon, image_ref: &str, tests: &[&str]) -> String {
    let pattern = format!("^({})$", tests.join("|"));
    let out = Command::new(go_test_binary())
        .args(["-test.v", "-test.count=1", "-test.run", &pattern])
        .env("BERTH_SOCKET", &d.socket)
        .env("BERTH_IMAGE_REF", image_ref)
        .env("BERTH_PID", d.pid().to_string())
        .output()
        .expect("run the containerd v2 client test binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "containerd v2 client tests failed:\n{stdout}\n{}\nberthd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    for t in tests {
        assert!(
            stdout.contains(&format!("--- PASS: {t} ")),
            "{t} did not pass (skipped?):\n{stdout}"
        );
    }
    stdout
}

#[test]
fn the_v2_go_client_pulls_runs_and_cleans_up() {
    let d = Daemon::start();
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    registry.push_busybox(work.path());
    run_go_tests(
        &d,
        &registry.reference(),
        &["TestPullRunDelete", "TestServerAndRuntimeInfo"],
    );
    // The client deleted what it made: no container, no task, no image left behind.
    assert_eq!(d.ctr("v2client", &["containers", "ls", "-q"]), "");
    assert_eq!(d.ctr("v2client", &["images", "ls", "-q"]), "");
}
