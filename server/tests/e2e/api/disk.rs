//! A root on a small filesystem that fills up (issue 15, part 4; hostile-inputs.md B13): the
//! root is a 40 MiB ext4 on a loop device. A content write that does not fit fails cleanly with
//! an error that says the disk is full; every blob acknowledged before it is still there, whole,
//! after a kill -9 and a restart; once the failed ingest is aborted the next write works.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The loop device and its mount; unmounted and detached on drop (after the daemon is gone).
pub(crate) struct LoopRoot {
    dev: String,
    at: PathBuf,
}

impl LoopRoot {
    pub(crate) fn mount(image: &Path, size_mib: u64, at: &Path) -> LoopRoot {
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        std::fs::File::create(image)
            .and_then(|f| f.set_len(size_mib << 20))
            .expect("create the disk image");
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(image));
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image));
        let root = LoopRoot {
            dev,
            at: at.to_path_buf(),
        };
        std::fs::create_dir_all(at).expect("mount point");
        run(Command::new("mount").arg(&root.dev).arg(at));
        root
    }
}

impl Drop for LoopRoot {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_write_cleanly_and_keeps_what_was_acknowledged() {
    let mut d = Daemon::start();
    d.stop();
    // The fresh daemon's root is replaced by an empty small filesystem before it starts again.
    let image = d.dir.path().join("disk.img");
    let _disk = LoopRoot::mount(&image, 40, &d.root());
    d.spawn();
    let api = Api::connect(&d).await;
    let ns = "full";
    let mut kept = vec![];
    for seed in 0..4u8 {
        let data = blob(2 * MIB, seed);
        let digest = ok(
            api.write_blob(ns, None, &format!("small-{seed}"), &data, HashMap::new())
                .await,
            "write a 2 MiB blob",
        );
        kept.push((digest, data));
    }
    // 64 MiB cannot fit in what is left of 40.
    let big = blob(64 * MIB, 9);
    let err = api
        .write_blob(ns, None, "big", &big, HashMap::new())
        .await
        .expect_err("a 64 MiB blob fitted on a 40 MiB disk");
    let msg = err.message().to_lowercase();
    assert!(
        msg.contains("no space") || msg.contains("space left") || msg.contains("full"),
        "the error does not say the disk is full: {:?} {}",
        err.code(),
        err.message()
    );
    let listed = digests(&ok(api.list_content(ns, &[]).await, "List"));
    assert!(
        !listed.contains(&digest_of(&big)),
        "the blob that did not fit is listed"
    );

    // A crash now loses nothing acknowledged.
    drop(api);
    d.kill9();
    d.spawn();
    let api = Api::connect(&d).await;
    for (digest, data) in &kept {
        let back = ok(
            api.read(ns, digest, 0, 0).await,
            "read back after the restart",
        );
        assert!(
            back == *data,
            "{digest} changed across the full disk and the restart"
        );
    }
    assert!(!digests(&ok(api.list_content(ns, &[]).await, "List")).contains(&digest_of(&big)));

    // The failed ingest holds the space until it is aborted; then the next write fits.
    for s in ok(api.list_statuses(ns, &[]).await, "ListStatuses") {
        ok(api.abort(ns, &s.r#ref).await, "abort the failed ingest");
    }
    let data = blob(8 * MIB, 20);
    ok(
        api.write_blob(ns, None, "after", &data, HashMap::new())
            .await,
        "write after the space came back",
    );
    drop(api);
    d.kill9();
}
