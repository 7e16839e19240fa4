//! The spare network namespaces behind `Net::setup`, seen from outside: the test looks at this
//! process's own fds, so it is the only test in its binary (no other `Net` holds spares here).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_net::{AttachOptions, AttachmentKey, Net, NetConfig};
use berth_testkit::skip::skip_unless_ci;

/// The network namespaces a process holds open, as (fd, inode).
fn netns_fds(pid: &str) -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let link = link.to_string_lossy();
            let inode = link
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), inode))
        })
        .collect()
}

/// This process's spares once the pool holds its two (within 5 s).
fn full_pool() -> Vec<(String, u64)> {
    let started = Instant::now();
    loop {
        let held = netns_fds("self");
        if held.len() == 2 || started.elapsed() > Duration::from_secs(5) {
            assert_eq!(held.len(), 2, "spares held: {held:?}");
            return held;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn close_on_exec(fd: &str) -> bool {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    flags & libc::O_CLOEXEC as u32 != 0
}

fn run_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Tears the attachments down however the test ends.
struct Attached<'a> {
    net: &'a Net,
    keys: &'a [AttachmentKey],
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        for key in self.keys {
            if let Err(e) = self.net.teardown(key) {
                eprintln!("cleanup: teardown {key}: {e}");
            }
        }
    }
}

#[test]
fn an_attachment_gets_a_fresh_spare_namespace_that_no_one_else_holds() {
    let case = "an_attachment_gets_a_fresh_spare_namespace_that_no_one_else_holds";
    if !nix::unistd::Uid::effective().is_root() {
        skip_unless_ci(case, "needs root (network namespaces)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Net::new(NetConfig::new(
        dir.path().join("net.d"),
        dir.path().join("state"),
    ))
    .unwrap();
    let tag = std::process::id() % 100000;
    let keys: Vec<AttachmentKey> = (0..3)
        .map(|i| AttachmentKey::new("berthnet-test", format!("pool{tag}-{i}")))
        .collect();
    let opts = AttachOptions {
        hostname: "pooled".into(),
        ..Default::default()
    };
    let inode_of = |key: &AttachmentKey| {
        std::fs::metadata(Path::new("/run/netns").join(net.netns_name(key)))
            .unwrap()
            .ino()
    };

    let _cleanup = Attached {
        net: &net,
        keys: &keys,
    };

    // The first attachment makes its own namespace; the pool fills after it.
    net.setup(&keys[0], &opts).unwrap();
    let spares = full_pool();
    for (fd, _) in &spares {
        assert!(close_on_exec(fd), "spare fd {fd} would be inherited");
    }
    // No child sees them.
    let mut child = Command::new("sleep").arg("5").spawn().unwrap();
    let inherited = netns_fds(&child.id().to_string());
    let _ = child.kill();
    let _ = child.wait();
    assert!(inherited.is_empty(), "{inherited:?}");

    // A name already taken is refused, and the spare it would have used stays in the pool.
    let clash = AttachmentKey::new("berthnet-test", format!("pool{tag}-clash"));
    let clash_path = Path::new("/run/netns").join(net.netns_name(&clash));
    std::fs::write(&clash_path, b"").unwrap();
    let refused = net.setup(&clash, &opts);
    let _ = std::fs::remove_file(&clash_path);
    assert!(
        matches!(refused, Err(berth_net::Error::AlreadyExists(_))),
        "{refused:?}"
    );
    let spare_inodes: HashSet<u64> = spares.iter().map(|(_, i)| *i).collect();
    let kept: HashSet<u64> = netns_fds("self").iter().map(|(_, i)| *i).collect();
    assert_eq!(kept, spare_inodes);

    // The next attachments are named from spares, each one a different namespace. Each waits
    // for the refill after the one before, so it takes a spare seen beforehand.
    let mut inodes = vec![inode_of(&keys[0])];
    for key in &keys[1..] {
        let ready: HashSet<u64> = full_pool().iter().map(|(_, i)| *i).collect();
        net.setup(key, &opts).unwrap();
        inodes.push(inode_of(key));
        assert!(
            ready.contains(inodes.last().unwrap()),
            "{inodes:?} {ready:?}"
        );
    }
    let host = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let distinct: HashSet<u64> = inodes.iter().copied().chain([host]).collect();
    assert_eq!(distinct.len(), 4, "{inodes:?}, host {host}");
    // A named spare is held by its bind alone: the pool let go of it.
    let held: HashSet<u64> = netns_fds("self").iter().map(|(_, i)| *i).collect();
    assert!(!held.contains(&inodes[1]) && !held.contains(&inodes[2]));

    // Fresh: `lo` alone, and up.
    for key in &keys[1..] {
        let ns = net.netns_name(key);
        let links = run_in(&ns, &["ip", "-o", "link", "show"]);
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains(" lo: ") && links.contains("UP"), "{links}");
    }

    for key in &keys {
        net.teardown(key).unwrap();
        assert!(!Path::new("/run/netns").join(net.netns_name(key)).exists());
    }
}
