//! The generated clients of clients/<lang>/ against a real berthd: each language's run-example
//! builds its client from proto/ with that ecosystem's generator and default options, imports the
//! busybox OCI layout through the API, and runs a container from it (docs/clients.md).

use crate::fixtures;
use crate::harness::Daemon;
use std::path::Path;
use std::process::Command;

/// Runs `clients/<lang>/run-example` against a fresh berthd and insists that it succeeds and
/// printed the container's output.
fn run_client_example(lang: &str) {
    let d = Daemon::start();
    let work = tempfile::Builder::new()
        .prefix("berth-clients-")
        .tempdir()
        .expect("create temp dir");
    let archive = fixtures::busybox_oci_archive(work.path(), "docker.io/library/busybox:clients");
    let layout = work.path().join("layout");
    let file = std::fs::File::open(&archive.path).expect("open the OCI archive");
    tar::Archive::new(file)
        .unpack(&layout)
        .expect("unpack the OCI archive into a layout directory");

    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients")
        .join(lang)
        .join("run-example");
    let out = Command::new(&script)
        .env("BERTH_SOCKET", &d.socket)
        .env("BERTH_NAMESPACE", format!("clients-{lang}"))
        .env("BERTH_IMAGE_LAYOUT", &layout)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = d.log();
    let tail: Vec<_> = log.lines().rev().take(30).collect();
    assert!(
        out.status.success(),
        "{lang} example failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nberthd log tail:\n{}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let want = format!("hello from {lang}");
    assert!(
        stdout.lines().any(|l| l.contains(&want)),
        "{lang} example succeeded but did not print {want:?}:\n{stdout}"
    );
}

#[test]
fn typescript_client_example_runs_against_berthd() {
    run_client_example("typescript");
}

#[test]
fn java_client_example_runs_against_berthd() {
    run_client_example("java");
}
