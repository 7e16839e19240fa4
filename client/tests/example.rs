//! Runs the crate's worked example (examples/run_container.rs) against a real berthd on a
//! throwaway root, with the busybox image the e2e tests build (berth-testkit). Needs root, and
//! berthd and berth-shim built in this target directory (`cargo build -p berthd -p berth-shim`;
//! the project's scripts/test.sh builds the whole workspace first) or BERTHD naming a berthd binary.

use berth_testkit::berthd::{process_token, Daemon};
use berth_testkit::image::busybox_oci_archive;

#[allow(dead_code)]
#[path = "../examples/run_container.rs"]
mod run_container;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worked_example_runs_against_berthd() {
    let daemon = Daemon::start();
    let dir = tempfile::Builder::new()
        .prefix("berth-client-")
        .tempdir()
        .expect("temp dir");
    let archive = busybox_oci_archive(dir.path(), "docker.io/berth/busybox:client")
        .expect("build the busybox image");
    let layout = dir.path().join("layout");
    tar::Archive::new(std::fs::File::open(&archive.path).expect("open the archive"))
        .unpack(&layout)
        .expect("unpack the archive into an image layout");

    // The container's cgroup path names the namespace: unique to this test process.
    let ns = format!("client-rust-{}", process_token());
    let result = run_container::run(&daemon.socket, &ns, &layout).await;
    assert!(result.is_ok(), "example failed: {result:?}");
}
