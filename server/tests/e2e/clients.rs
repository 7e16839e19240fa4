//! Clients generated from proto/ in other languages, with their libraries' default options:
//! each `clients/<lang>/run-example` builds its client and runs its example against a real berthd
//! (import of the busybox image through the API, unpack, a container that prints and exits 3, the
//! /tasks/exit event, cleanup). What the example left behind is checked here with `ctr`.

use crate::fixtures::busybox_oci_archive;
use crate::harness::{process_token, Daemon};
use std::path::Path;
use std::process::Command;

const IMAGE: &str = "docker.io/berth/busybox:clients";

/// Start a daemon, lay the busybox image out as an OCI image-layout directory and run
/// `clients/<lang>/run-example` against them; insist it succeeds and did what it says.
pub fn run_client_example(lang: &str) {
    let d = Daemon::start();
    // The container's cgroup path names the namespace: unique to this test process.
    let ns = format!("client-{lang}-{}", process_token());
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = busybox_oci_archive(dir.path(), IMAGE);
    let layout = dir.path().join("layout");
    tar::Archive::new(std::fs::File::open(&archive.path).expect("open archive"))
        .unpack(&layout)
        .expect("unpack the archive into an image layout");

    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients")
        .join(lang)
        .join("run-example");
    let out = Command::new(&script)
        .env("BERTH_SOCKET", &d.socket)
        .env("BERTH_NAMESPACE", &ns)
        .env("BERTH_IMAGE_LAYOUT", &layout)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{lang} example failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nberthd log:\n{}",
        out.status,
        d.log()
    );
    let done = format!("example ok: hello from {lang}, exit status 3");
    assert!(
        stdout.lines().any(|l| l == done),
        "{lang} example did not report `{done}`:\n{stdout}\nstderr:\n{stderr}"
    );

    // The image stays, unpacked; the container, its task, its snapshot and the lease are gone.
    let images = d.ctr(&ns, &["images", "ls", "-q"]);
    assert_eq!(images.lines().collect::<Vec<_>>(), [IMAGE], "{images}");
    let snapshots = d.ctr(&ns, &["snapshots", "ls"]);
    let keys: Vec<_> = snapshots
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(keys, [archive.diff_id.as_str()], "{snapshots}");
    for what in [["containers", "ls"], ["tasks", "ls"], ["leases", "ls"]] {
        let listed = d.ctr(&ns, &[what[0], what[1], "-q"]);
        assert!(listed.trim().is_empty(), "{what:?} left behind: {listed}");
    }
}

#[test]
fn go_client_example_runs_against_berthd() {
    run_client_example("go");
}

#[test]
fn python_client_example_runs_against_berthd() {
    run_client_example("python");
}

#[test]
fn typescript_client_example_runs_against_berthd() {
    run_client_example("typescript");
}

#[test]
fn java_client_example_runs_against_berthd() {
    run_client_example("java");
}
