//! The leak proof of issue 13: many cycles of `berth run --rm --network NET -p HOST:80 IMAGE
//! true` leave nothing behind — no netns, veth, iptables rule, IP lease, network attachment
//! record, mount, task directory or process. Each resource is counted before and after, by
//! what ties it to this test alone (its daemon's dirs, its namespace, its network's bridge,
//! subnet and name, its host port), since other daemons and tests run on the same host.
//! While one container runs, the same counters must see it: a counter that could not see a
//! leak proves nothing.
//!
//! `run_rm_publish_cycles_leak_nothing` does the 100 cycles (about 55 s in a debug
//! build on a busy 2-core machine; `BERTH_LEAK_CYCLES` sets another count).
//! Needs root, berthd and berth-shim built in this target dir, containernetworking-plugins.

use berth_testkit::berthd::Daemon;
use berth_testkit::image::busybox_oci_archive_with;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

mod common;
use common::Cli;

const IMAGE: &str = "docker.io/berth/busybox:leak";
const LEAK_CYCLES: usize = 100;

/// What the test can leak, by kind.
type Counts = BTreeMap<&'static str, usize>;

struct Env {
    cli: Cli,
    net: String,
    bridge: String,
    /// The subnet's first three octets and a dot (`10.48.3.`): what a rule for one of its
    /// addresses contains.
    prefix: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cli.remove_all();
        let _ = self.cli.raw(&["network", "rm", &self.net]);
    }
}

fn lines_of(cmd: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Files (recursively) under `dir` whose name passes `keep`.
fn count_files(dir: &Path, keep: &dyn Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p, keep)
            } else {
                usize::from(keep(&e.file_name().to_string_lossy()))
            }
        })
        .sum()
}

/// Files under `dir` named by an IPv4 address (host-local's leases).
fn leases(dir: &Path) -> usize {
    count_files(dir, &|name| name.parse::<Ipv4Addr>().is_ok())
}

/// Files (recursively) under `dir`.
fn files(dir: &Path) -> usize {
    count_files(dir, &|_| true)
}

impl Env {
    fn counts(&self) -> Counts {
        let mut c = Counts::new();
        let ns = &self.cli.ns;
        let daemon_dir = self
            .cli
            .daemon
            .state()
            .parent()
            .expect("daemon dir")
            .to_string_lossy()
            .into_owned();
        c.insert(
            "netns",
            lines_of("ip", &["netns", "list"])
                .iter()
                .filter(|l| l.starts_with(&format!("berth-{ns}-")))
                .count(),
        );
        c.insert(
            "veth on the bridge",
            lines_of("ip", &["-o", "link", "show", "master", &self.bridge]).len(),
        );
        let port = format!("--dport {}", self.port);
        let name = format!("\"{}\"", self.net);
        c.insert(
            "iptables rules",
            lines_of("iptables-save", &[])
                .iter()
                .filter(|l| l.contains(&self.prefix) || l.contains(&port) || l.contains(&name))
                .count(),
        );
        let cni = self.cli.daemon.state().join("cni");
        c.insert("IP leases", leases(&cni.join("ipam")));
        c.insert("attachment records", files(&cni.join("attachments")));
        c.insert(
            "task dirs",
            std::fs::read_dir(self.cli.daemon.state().join("tasks").join(ns))
                .map(|d| d.count())
                .unwrap_or(0),
        );
        c.insert(
            "mounts",
            std::fs::read_to_string("/proc/self/mountinfo")
                .expect("mountinfo")
                .lines()
                .filter(|l| {
                    l.contains(&daemon_dir) || l.contains(&format!("/run/netns/berth-{ns}-"))
                })
                .count(),
        );
        // Shims (their command line names the daemon's dirs) and container processes (their
        // cgroup is under the namespace's).
        let daemon_pid = self.cli.daemon.pid();
        let mut procs = 0;
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == daemon_pid {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&daemon_dir)
                || cgroup.lines().any(|l| l.contains(&format!("/{ns}/")))
            {
                procs += 1;
            }
        }
        c.insert("processes", procs);
        c
    }
}

fn start() -> Env {
    berth_testkit::berthd::require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = busybox_oci_archive_with(
        dir.path(),
        IMAGE,
        &["sh", "true", "sleep", "httpd", "echo", "mkdir"],
    )
    .expect("busybox image");
    let cli = Cli::new(Daemon::start(), common::namespace("leak"));
    cli.ok(&["load", "-q", "-i", &archive.path.to_string_lossy()]);
    let net = format!("lk{}", std::process::id());
    cli.ok(&["network", "create", &net]);
    let inspect: serde_json::Value =
        serde_json::from_str(&cli.ok(&["network", "inspect", &net])).expect("inspect json");
    let bridge = inspect[0]["Bridge"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let subnet = inspect[0]["Subnets"][0].as_str().unwrap_or_default();
    let prefix: Vec<&str> = subnet.split('.').take(3).collect();
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let env = Env {
        cli,
        net,
        bridge,
        prefix: format!("{}.", prefix.join(".")),
        port,
        _dir: dir,
    };
    assert!(!env.bridge.is_empty() && env.prefix.len() > 4, "{inspect}");
    env
}

fn cycles() -> usize {
    std::env::var("BERTH_LEAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LEAK_CYCLES)
}

fn leak_check(n: usize) {
    let env = start();
    let publish = format!("127.0.0.1:{}:80", env.port);
    // A first container sets up what the network keeps while it exists (the bridge's own
    // rules); the baseline is taken after it.
    env.cli.ok(&[
        "run",
        "--rm",
        "--network",
        &env.net,
        "-p",
        &publish,
        IMAGE,
        "true",
    ]);
    let before = env.counts();

    // The counters see a running container's resources.
    env.cli.ok(&[
        "run",
        "-d",
        "--name",
        "probe",
        "--network",
        &env.net,
        "-p",
        &publish,
        IMAGE,
        "sleep",
        "600",
    ]);
    let during = env.counts();
    for kind in [
        "netns",
        "veth on the bridge",
        "iptables rules",
        "IP leases",
        "attachment records",
        "task dirs",
        "mounts",
        "processes",
    ] {
        assert!(
            during[kind] > before[kind],
            "the {kind} counter does not see a running container: before {before:?}, during {during:?}"
        );
    }
    env.cli.ok(&["rm", "-f", "probe"]);
    assert_eq!(env.counts(), before, "rm -f left something behind");

    let started = Instant::now();
    for i in 0..n {
        let out = env.cli.raw(&[
            "run",
            "--rm",
            "--network",
            &env.net,
            "-p",
            &publish,
            IMAGE,
            "true",
        ]);
        assert!(
            out.status.success(),
            "cycle {i}: {}",
            String::from_utf8_lossy(&out.stderr),
        );
    }
    let took = started.elapsed();
    let after = env.counts();
    eprintln!(
        "{n} cycles of run --rm -p in {took:?} ({:?} each); before {before:?}, after {after:?}",
        took / n.max(1) as u32
    );
    assert_eq!(after, before, "{n} cycles of run --rm -p leaked");
    assert!(
        env.cli.ok(&["ps", "-a", "-q"]).trim().is_empty(),
        "a --rm container stayed"
    );
}

#[test]
fn run_rm_publish_cycles_leak_nothing() {
    leak_check(cycles());
}
