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
    while berth_cri::holder::alive(pid_n, start) && berth_testkit::running(pid_n) {
        assert!(
            std::time::Instant::now() < deadline,
            "holder {pid} survived SIGKILL"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The inode of the user namespace that owns the namespace at `path` (NS_GET_USERNS).
fn owner_of(path: &str) -> u64 {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    let ns = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd, owned here.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS) };
    assert!(fd >= 0, "NS_GET_USERNS on {path} failed");
    // SAFETY: the fd was just returned to us and nothing else owns it.
    let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    owner.metadata().expect("fstat the owner").ino()
}

/// A pod with a user namespace of its own (CRI NamespaceMode POD): the holder is its root, the
/// maps are the pod's (written from outside, setgroups left allowed), and the IPC, UTS, PID and
/// network namespaces it makes are owned by that user namespace (what runc needs to join them
/// after the user namespace). Bad maps are refused before anything is made.
#[test]
fn holder_makes_the_pods_user_namespace_with_its_namespaces_inside() {
    use std::os::unix::fs::MetadataExt;
    require_root();
    let out = Command::new(berthd_binary())
        .args([
            "cri-holder",
            "--ipc",
            "--uts",
            "--pid",
            "--net",
            "--hostname",
            "pod-u",
            "--uidmap",
            "0:2200000:65536",
            "--gidmap",
            "0:2300000:65536",
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
    let kill = || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid_n as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let words = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let checks = std::panic::catch_unwind(|| {
        assert!(berth_cri::holder::alive(pid_n, start));
        assert_eq!(words(read("uid_map")), ["0", "2200000", "65536"]);
        assert_eq!(words(read("gid_map")), ["0", "2300000", "65536"]);
        assert_eq!(read("setgroups").trim(), "allow");
        // Its root, with no host groups.
        let status = read("status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| words(l.to_string())[1..].to_vec())
                .unwrap_or_default()
        };
        assert_eq!(field("Uid:"), ["2200000"; 4], "{status}");
        assert_eq!(field("Gid:"), ["2300000"; 4], "{status}");
        assert!(field("Groups:").is_empty(), "{status}");
        let userns = std::fs::metadata(format!("/proc/{pid}/ns/user"))
            .expect("stat the user namespace")
            .ino();
        assert_ne!(
            userns,
            std::fs::metadata("/proc/self/ns/user").unwrap().ino(),
            "the holder stayed in the host's user namespace"
        );
        for kind in ["ipc", "uts", "pid", "net"] {
            assert_ne!(
                ns_of(pid, kind),
                ns_of("self", kind),
                "{kind} is the host's"
            );
            assert_eq!(
                owner_of(&format!("/proc/{pid}/ns/{kind}")),
                userns,
                "the {kind} namespace is not owned by the pod's user namespace"
            );
        }
    });
    kill();
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }

    for bad in [
        ["--uidmap", "0:1:0", "--gidmap", "0:1:1"],
        ["--uidmap", "0:1", "--gidmap", "0:1:1"],
    ] {
        let out = Command::new(berthd_binary())
            .args(["cri-holder", "--ipc"])
            .args(bad)
            .output()
            .expect("run berthd cri-holder");
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(out.stdout.is_empty(), "{bad:?} made a holder");
    }
}

/// The startup probe's holder (`--exit-after`) ends by itself, PID 1 of its namespaces and in a
/// user namespace as the probe makes it, so a berthd killed mid-probe leaves no holder behind.
#[test]
fn a_holder_with_exit_after_ends_by_itself() {
    require_root();
    let out = Command::new(berthd_binary())
        .args([
            "cri-holder",
            "--ipc",
            "--uts",
            "--pid",
            "--net",
            "--uidmap",
            "0:3000000001:1",
            "--gidmap",
            "0:3000000001:1",
            "--exit-after",
            "1",
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
    let (pid, start): (u32, u64) = (pid.parse().expect("a pid"), start.parse().expect("start"));
    assert!(
        berth_cri::holder::alive(pid, start),
        "holder {pid} is gone at once"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while berth_cri::holder::alive(pid, start) {
        if std::time::Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("holder {pid} still alive 10 s after a 1 s --exit-after");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
