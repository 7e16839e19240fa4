//! `berthd cri-holder`, the pod's namespace holder, run as berthd runs it: it prints the
//! holder's pid and start time, and the holder owns new IPC, UTS and PID namespaces (PID 1 in
//! the last), carries the pod's hostname, and outlives the launcher. Needs root and berthd
//! built in this target dir.

use berth_testkit::berthd::{berthd_binary, require_root};
use std::process::Command;

fn ns_of(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/ns/{kind}: {e}"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn holder_owns_the_pod_namespaces_and_outlives_its_launcher() {
    require_root();
    let out = Command::new(berthd_binary())
        .args([
            "cri-holder",
            "--ipc",
            "--uts",
            "--pid",
            "--hostname",
            "pod-a",
        ])
        .output()
        .expect("run berthd cri-holder");
    assert!(
        out.status.success(),
        "cri-holder failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (pid, start) = line.split_once(' ').expect("`PID START` on stdout");
    let pid_n: u32 = pid.parse().expect("a pid");
    let start: u64 = start.parse().expect("a start time");
    // The launcher has exited (output() waited for it); the holder lives on.
    assert!(
        berth_cri::holder::alive(pid_n, start),
        "holder {pid} is gone"
    );
    assert!(!berth_cri::holder::alive(pid_n, start + 1));

    for kind in ["ipc", "uts", "pid"] {
        assert_ne!(
            ns_of(pid, kind),
            ns_of("self", kind),
            "{kind} namespace shared with the host"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid line");
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "not PID 1 of its namespace: {nspid}"
    );
    let hostname = Command::new("nsenter")
        .args(["-t", pid, "-u", "hostname"])
        .output()
        .expect("nsenter");
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "pod-a");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_n as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the holder");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Reparented to init, which reaps it.
    while berth_cri::holder::alive(pid_n, start)
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "holder {pid} survived SIGKILL"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
