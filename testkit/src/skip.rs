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

#[cfg(test)]
mod tests {
    use super::*;

    // One test, as it sets the process's environment.
    #[test]
    fn skips_are_recorded_and_ci_refuses_what_it_provides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("skips");
        std::env::set_var("BERTH_TEST_SKIPS", &file);
        std::env::set_var("CI", "false");
        skip("a::case", "the host cannot");
        skip_unless_ci("b::case", "no crun here");
        std::env::set_var("CI", "true");
        skip("c::case", "the host still cannot");
        let refused = std::panic::catch_unwind(|| skip_unless_ci("d::case", "not root"));
        std::env::remove_var("CI");
        std::env::remove_var("BERTH_TEST_SKIPS");
        assert!(
            refused.is_err(),
            "CI=true let a skip of what CI provides pass"
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "SKIPPED: a::case: the host cannot\n\
             SKIPPED: b::case: no crun here\n\
             SKIPPED: c::case: the host still cannot\n"
        );
    }
}
