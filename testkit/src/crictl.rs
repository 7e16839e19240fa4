//! The real crictl (cri-tools v1.37.0, built by scripts/deps-cri-tools.sh into
//! $BERTH_TEST_BIN) pointed at one CRI socket, for the CRI's tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The crictl binary; a test fails naming the script that installs it when it is missing.
pub fn binary() -> PathBuf {
    let dir = std::env::var_os("BERTH_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/berth-test/bin"));
    let path = dir.join("crictl");
    assert!(
        path.exists(),
        "{} is missing: run scripts/deps-cri-tools.sh",
        path.display()
    );
    path
}

/// crictl `args` against `socket` for both the runtime and the image service, each call bounded
/// by `timeout` (crictl's syntax, e.g. "20s"); the host's /etc/crictl.yaml is not read.
pub fn run(socket: &Path, timeout: &str, args: &[&str]) -> Output {
    let endpoint = format!("unix://{}", socket.display());
    Command::new(binary())
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", timeout, "--config", "/dev/null"])
        .args(args)
        .output()
        .expect("run crictl")
}
