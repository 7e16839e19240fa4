//! What berth's end-to-end tests, the bench and the demo share, so that each exists once: the
//! busybox OCI image ([`image`]), a realistic OCI spec ([`SPEC_JSON`]), a berthd on a throwaway
//! root ([`berthd`]) and honest skips ([`skip`]).
//!
//! A dev-dependency (and the bench's, which is never shipped): nothing berthd, the shim or the
//! client library ship depends on it. It uses the `berth` client crate to reach the daemon, so the
//! tests exercise that crate as well.

pub mod berthd;
/// Making, finding and removing a cgroup in every hierarchy, for tests that check or clean up
/// what runc made (berth's own code, not a copy).
pub use berth_cgroups::dirs as cgroups;
pub mod cri_images;
pub mod crictl;
pub mod image;
pub mod net;
pub mod skip;

/// A `ctr run` spec of a service, ~9.5 KiB: the size and shape of what containerd's clients store
/// in container records.
pub const SPEC_JSON: &[u8] = include_bytes!("spec.json");

/// Whether process `pid` is running: it exists and is not a zombie (a zombie has ended; only
/// its reaping is left).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Writes an executable file (a test's stand-in plugin, runtime or shim) through a child
/// process. Written from this process, the file's write descriptor would be copied into every
/// process another test thread starts, until that one execs, and running the file meanwhile
/// fails with ETXTBSY, "Text file busy" (a full-suite run saw it).
pub fn write_executable(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run sh to write an executable");
    child
        .stdin
        .take()
        .expect("its stdin")
        .write_all(text.as_bytes())
        .expect("write to sh");
    let status = child.wait().expect("wait for sh");
    assert!(
        status.success(),
        "writing {} failed: {status}",
        path.display()
    );
}
