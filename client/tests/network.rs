//! `--network` and `-p` against a real berthd (berth-testkit's harness) and the host's CNI
//! plugins: a busybox httpd published on the host's loopback and reached with curl, and a
//! second container on the same network reaching it by IP.
//! Needs root, berthd and berth-shim built in this target dir, and containernetworking-plugins.

use berth_testkit::berthd::{process_token, tail, Daemon};
use berth_testkit::image::busybox_oci_archive_with;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::Cli;

const IMAGE: &str = "docker.io/berth/busybox:net";

struct Env {
    cli: Cli,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = Cli;
    fn deref(&self) -> &Cli {
        &self.cli
    }
}

/// Removes the test's containers, then its network, even when an assertion fails half-way.
struct Cleanup<'a>(&'a Env, Vec<&'static str>, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for name in &self.1 {
            let _ = self.0.berth(&["rm", "-f", name]);
        }
        let _ = self.0.berth(&["network", "rm", &self.2]);
    }
}

#[test]
fn httpd_published_with_p_and_reached_by_ip_on_a_network() {
    berth_testkit::berthd::require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let applets = [
        "sh", "echo", "true", "cat", "sleep", "httpd", "wget", "mkdir", "grep", "ip",
    ];
    let archive = busybox_oci_archive_with(dir.path(), IMAGE, &applets).expect("busybox image");
    let env = Env {
        cli: Cli::new(Daemon::start(), format!("net-{}", process_token())),
        _dir: dir,
    };
    env.ok(&["load", "-q", "-i", &archive.path.to_string_lossy()]);
    let net = format!("t{}", std::process::id());
    let cleanup = Cleanup(&env, vec!["web"], net.clone());
    env.ok(&["network", "create", &net]);
    assert!(env.ok(&["network", "ls", "-q"]).lines().any(|l| l == net));
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["network", "inspect", &net])).expect("inspect json");
    let subnet = inspect[0]["Subnets"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(subnet.contains('/'), "{inspect}");

    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let publish = format!("127.0.0.1:{port}:80");
    env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        "-p",
        &publish,
        IMAGE,
        "sh",
        "-c",
        "mkdir /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    assert_eq!(
        env.ok(&["port", "web"]).trim(),
        format!("80/tcp -> 127.0.0.1:{port}")
    );

    // From the host, through the portmap plugin's DNAT on loopback.
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "2", &url])
            .output()
            .expect("run curl");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "curl {url}: {}\nberthd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&env.daemon.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(body.trim(), "hello-from-web");

    // Another container on the network reaches it by IP (by name: tests/fs.rs).
    let addr = env.ok(&["exec", "web", "ip", "-4", "-o", "addr", "show", "eth0"]);
    let ip = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on eth0:\n{addr}"))
        .to_string();
    assert!(
        ip.parse::<Ipv4Addr>().is_ok_and(|a| !a.is_loopback()),
        "{ip}"
    );
    let by_ip = env.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        IMAGE,
        "wget",
        "-qO-",
        &format!("http://{ip}/"),
    ]);
    assert_eq!(by_ip.trim(), "hello-from-web");

    // The peer's address is in the network's subnet.
    let prefix: Vec<&str> = subnet.split('.').take(3).collect();
    assert!(ip.starts_with(&prefix.join(".")), "{ip} not in {subnet}");

    // The network goes once its containers are gone.
    env.ok(&["rm", "-f", "web"]);
    env.ok(&["network", "rm", &net]);
    assert!(!env.ok(&["network", "ls", "-q"]).lines().any(|l| l == net));
    let (code, _, _) = env.berth(&["network", "inspect", &net]);
    assert_eq!(code, 125);
    drop(cleanup);

    // -p without a network is refused before anything is created.
    let (code, _, err) = env.berth(&["run", "--rm", "-p", "8080:80", IMAGE, "true"]);
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("--network"), "{err}");
}
