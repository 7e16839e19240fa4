//! Records the git commit berthd is built from, for Version/Version's revision.
//! Only re-run when HEAD moves to another branch: clean builds (CI, releases) are exact; an
//! incremental dev build may report the commit it was first built at.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=../.git/HEAD");
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
