//! Runs the crate's worked example (examples/run_container.rs) against a real berthd on a
//! throwaway root, with the busybox image the e2e tests build. Needs root, and berthd and
//! berth-shim built in this target directory (`cargo build -p berthd -p berth-shim`; the project's
//! scripts/test.sh builds the whole workspace first) or BERTHD naming a berthd binary.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../examples/run_container.rs"]
mod run_container;

/// berthd beside this test binary's profile directory (target/<profile>/), or $BERTHD.
fn berthd() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTHD") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile.join("berthd");
    assert!(
        path.is_file() && profile.join("berth-shim").is_file(),
        "{} and berth-shim beside it are needed: cargo build -p berthd -p berth-shim (or set BERTHD)",
        path.display()
    );
    path
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worked_example_runs_against_berthd() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs berthd and containers as in production: run it as root"
    );
    let dir = tempfile::Builder::new()
        .prefix("berth-client-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("berthd.sock");
    let log = std::fs::File::create(dir.path().join("berthd.log")).unwrap();
    let mut daemon = Daemon(
        Command::new(berthd())
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start berthd"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            daemon.0.try_wait().unwrap().is_none(),
            "berthd exited before serving"
        );
        assert!(Instant::now() < deadline, "berthd did not serve within 20s");
        std::thread::sleep(Duration::from_millis(10));
    }

    let archive =
        berth_testkit::image::busybox_oci_archive(dir.path(), "docker.io/berth/busybox:client")
            .unwrap_or_else(|e| panic!("build the busybox image: {e}"));
    let layout = dir.path().join("layout");
    tar::Archive::new(std::fs::File::open(&archive.path).unwrap())
        .unpack(&layout)
        .unwrap();

    let result = run_container::run(&socket, "client-rust", &layout).await;
    let log = std::fs::read_to_string(dir.path().join("berthd.log")).unwrap_or_default();
    assert!(
        result.is_ok(),
        "example failed: {result:?}\nberthd log:\n{log}"
    );
}
