//! Records the git commit berthd is built from, for Version/Version's revision (and the bench's
//! reports). Re-run when HEAD moves: to another branch (`.git/HEAD`) or to a new commit on the
//! current one (the branch's ref file, or `packed-refs` once git packs it).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=../.git/HEAD");
    if let Ok(head) = std::fs::read_to_string("../.git/HEAD") {
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            // Only files that exist: cargo re-runs every build for a missing one.
            for path in [format!("../.git/{branch}"), "../.git/packed-refs".into()] {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
        }
    }
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(rev) = revision.filter(|r| !r.is_empty()) {
        println!("cargo:rustc-env=BERTH_GIT_REVISION={rev}");
    }
}
