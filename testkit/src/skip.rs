//! Honest skips. A test that cannot run a case on this machine says so by name instead of passing
//! without testing anything: it prints `SKIPPED: <case>: <reason>`, and appends that line to the
//! file named by `BERTH_TEST_SKIPS` when set, which scripts/test.sh counts in its closing line.
//! What the project's own scripts provide (root, an installed tool) is no reason to skip on CI:
//! under `CI=true` such a skip fails the test.
//!
//! Crates that cannot depend on this one keep a copy of these few lines with the same contract
//! (the real-cgroup tests in the cgroups module).

use std::io::Write;

/// The case cannot run on this host as it is (e.g. a cgroup v1 case on a pure v2 host): skipped,
/// on CI too.
pub fn skip(case: &str, reason: &str) {
    record(&format!("SKIPPED: {case}: {reason}"));
}

/// The case lacks something CI provides (root; a tool scripts/deps.sh installs): skipped on a
/// developer's machine, a failure under `CI=true`.
#[track_caller]
pub fn skip_unless_ci(case: &str, reason: &str) {
    let line = format!("SKIPPED: {case}: {reason}");
    if on_ci() {
        panic!("{line} (CI=true: CI provides this, so the case must run)");
    }
    record(&line);
}

/// `CI=true`, as CI services and `.ci/run` set it.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn record(line: &str) {
    eprintln!("{line}");
    let Some(path) = std::env::var_os("BERTH_TEST_SKIPS") else {
        return;
    };
    // One write of one short line to an O_APPEND file: lines of parallel tests do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot record the skip in {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}
