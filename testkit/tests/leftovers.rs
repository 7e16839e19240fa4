//! The fixture's last line of defence (issue 15): a test daemon dropped while a task of it still
//! runs (a removal that failed, say) takes the task's shim, its processes and its rootfs mount
//! with it, rather than leaving them on the host after the run. Needs root, and berthd and
//! berth-shim built in this target dir.

use berth_testkit::berthd::{process_token, Daemon};
use berth_testkit::image::busybox_oci_archive;
use std::path::Path;

const IMAGE: &str = "docker.io/berth/busybox:leftovers";

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_daemon_dropped_with_a_running_task_leaves_nothing_on_the_host() {
    berth_testkit::berthd::require_root();
    let images = tempfile::tempdir().expect("temp dir");
    let archive = busybox_oci_archive(images.path(), IMAGE).expect("busybox image");
    let d = Daemon::start();
    let ns = format!("leftovers-{}", process_token());
    d.ctr(
        &ns,
        &["images", "import", archive.path.to_str().expect("utf-8")],
    );
    d.ctr(&ns, &["run", "-d", IMAGE, "left", "sleep", "1000"]);
    let pid: u32 = d
        .ctr(&ns, &["tasks", "ls"])
        .lines()
        .find(|l| l.starts_with("left "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("the task's pid");
    let dir = d.dir.path().to_path_buf();
    assert!(
        !mounts_under(&dir).is_empty(),
        "the task's rootfs is not mounted"
    );
    drop(d);
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while berth_testkit::running(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the container process {pid} outlived its daemon's fixture"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // runc leaves the container's cgroup (`/<ns>/left`) behind with its processes gone.
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let _ = std::fs::remove_dir(h.path().join(&ns).join("left"));
            let _ = std::fs::remove_dir(h.path().join(&ns));
        }
    }
}
