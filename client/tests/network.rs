//! `--network` and `-p` against a real berthd (berth-testkit's harness) and the host's CNI
//! plugins: a busybox httpd published on the host's loopback and reached with curl, and a
//! second container on the same network reaching it by IP.
//! Needs root, berthd and berth-shim built in this target dir, and containernetworking-plugins.

use berth_testkit::berthd::Daemon;
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
        if !self.2.is_empty() {
            let _ = self.0.berth(&["network", "rm", &self.2]);
        }
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
        cli: Cli::new(Daemon::start(), common::namespace("net")),
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
    let body = curl_until_served(&url);
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

    // -p with no network to publish on is refused before anything is created.
    for mode in ["none", "host"] {
        let (code, _, err) = env.berth(&[
            "run",
            "--rm",
            "--network",
            mode,
            "-p",
            "8080:80",
            IMAGE,
            "true",
        ]);
        assert_eq!(code, 125, "{err}");
        assert!(err.contains("--network"), "{err}");
    }
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "");
}

/// `env` with the busybox image loaded, on a daemon of its own (whose default network is a
/// bridge and /24 of its own: berth-testkit's `net`), extra berthd config `toml`.
fn env_with(case: &str, toml: &str) -> Env {
    berth_testkit::berthd::require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let applets = [
        "sh", "echo", "true", "cat", "sleep", "httpd", "wget", "mkdir", "ip",
    ];
    let archive = busybox_oci_archive_with(dir.path(), IMAGE, &applets).expect("busybox image");
    let env = Env {
        cli: Cli::new(Daemon::start_with_config(toml), common::namespace(case)),
        _dir: dir,
    };
    env.ok(&["load", "-q", "-i", &archive.path.to_string_lossy()]);
    env
}

/// The IPv4 address in `ip -4 -o addr show eth0`'s output.
fn eth0_address(out: &str) -> String {
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on eth0:\n{out}"))
        .to_string()
}

/// Wall time of a successful `berth ARGS`, in ms.
fn time_ms(env: &Env, args: &[&str]) -> u128 {
    let t = Instant::now();
    env.ok(args);
    t.elapsed().as_millis()
}

#[test]
fn run_without_network_joins_the_default_bridge_and_publishes_ports() {
    let env = env_with("netdef", "");
    let own = env
        .daemon
        .network
        .as_ref()
        .expect("the fixture's default network");
    let (bridge, prefix) = (own.bridge.clone(), own.prefix.clone());
    let cleanup = Cleanup(&env, vec!["web"], String::new());

    // The default network exists without anyone creating it, on the configured bridge/subnet.
    assert!(env
        .ok(&["network", "ls", "-q"])
        .lines()
        .any(|l| l == "bridge"));
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["network", "inspect", "bridge"])).expect("inspect json");
    assert_eq!(inspect[0]["Subnets"][0], own.subnet.as_str(), "{inspect}");

    // -p without --network: published from the default network, reached from the host.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("127.0.0.1:{port}:80"),
        IMAGE,
        "sh",
        "-c",
        "mkdir /www && echo hello-from-default > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    assert_eq!(
        env.ok(&["inspect", "--format", "{{.HostConfig.NetworkMode}}", "web"])
            .trim(),
        "bridge"
    );
    let url = format!("http://127.0.0.1:{port}/");
    let body = curl_until_served(&url);
    assert_eq!(body.trim(), "hello-from-default");
    assert!(
        std::path::Path::new(&format!("/sys/class/net/{bridge}/bridge")).is_dir(),
        "the default network's bridge {bridge} is not there"
    );

    // `run --rm` without flags: an eth0 in the default subnet, and the other container on the
    // default network reached by its address.
    let web_ip = eth0_address(&env.ok(&["exec", "web", "ip", "-4", "-o", "addr", "show", "eth0"]));
    assert!(
        web_ip.starts_with(&prefix),
        "{web_ip} not in {}",
        own.subnet
    );
    let out = env.ok(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        &format!("ip -4 -o addr show eth0 && wget -qO- http://{web_ip}/"),
    ]);
    let mut lines = out.lines();
    let ip = eth0_address(lines.next().unwrap_or_default());
    assert!(ip.starts_with(&prefix) && ip != web_ip, "{ip}: {out}");
    assert_eq!(lines.next(), Some("hello-from-default"), "{out}");

    // --network none keeps loopback only; `default` is docker's name for the default network.
    let isolated = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        IMAGE,
        "cat",
        "/proc/net/dev",
    ]);
    assert!(!isolated.contains("eth0"), "{isolated}");
    let named = env.ok(&[
        "run",
        "--rm",
        "--network",
        "default",
        IMAGE,
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(eth0_address(&named).starts_with(&prefix), "{named}");

    // For information (a debug build on a shared machine): `run --rm true` on the default
    // network against --network none, interleaved so both see the same load.
    let (mut bridged, mut none) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        bridged.push(time_ms(&env, &["run", "--rm", IMAGE, "true"]));
        none.push(time_ms(
            &env,
            &["run", "--rm", "--network", "none", IMAGE, "true"],
        ));
    }
    bridged.sort_unstable();
    none.sort_unstable();
    eprintln!(
        "run --rm true, median of 5: default bridge {} ms, --network none {} ms",
        bridged[2], none[2]
    );

    // Nothing of the finished containers is left: no netns of this namespace, one bridge port
    // (web's) until web goes, none after.
    let netns = |ns: &str| {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(ns))
            .count()
    };
    assert_eq!(netns(&env.ns), 1, "web's netns only");
    env.ok(&["rm", "-f", "web"]);
    assert_eq!(netns(&env.ns), 0);
    let ports = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(ports, 0, "veths left on {bridge}");
    drop(cleanup);

    // The daemon's default bridge and its firewall rules go with the fixture.
    drop(env);
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&bridge)
        .exists());
    let rules = Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        !rules
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == bridge)),
        "rules naming {bridge} left:\n{rules}"
    );
}

#[test]
fn a_default_subnet_on_a_host_route_fails_clearly_and_none_still_runs() {
    // A subnet the host routes already (the LAN of its default route's device), as a default
    // network must not take.
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let default = ip(&["-4", "route", "show", "default"]);
    let dev = default
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or_else(|| panic!("no default route on this host: {default:?}"));
    let routes = ip(&["-4", "route", "show", "dev", dev, "scope", "link"]);
    let taken = routes
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|dst| dst.contains('/'))
        .unwrap_or_else(|| panic!("no link route with a prefix on {dev}:\n{routes}"))
        .to_string();
    let taken = taken.as_str();
    let env = env_with(
        "netclash",
        &format!(
            "[cni]\ndefault_bridge = \"btkclash{}\"\ndefault_subnet = \"{taken}\"\n",
            std::process::id() % 1000
        ),
    );
    let err = env.fails(125, &["run", "--rm", IMAGE, "true"]);
    assert!(
        err.contains("default network") && err.contains("default_subnet") && err.contains(taken),
        "{err}"
    );
    assert!(err.contains("--network none"), "{err}");
    eprintln!("a run on a default subnet a host route has: {}", err.trim());
    assert_eq!(
        env.ok(&["ps", "-a", "-q"]),
        "",
        "a failed run left a container"
    );
    assert_eq!(
        env.ok(&["run", "--rm", "--network", "none", IMAGE, "echo", "ok"])
            .trim(),
        "ok"
    );
}

/// The body `url` serves from the host, asked again until it answers (the container's server
/// and the portmap rules take a moment), for up to 15 s.
fn curl_until_served(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "2", url])
            .output()
            .expect("run curl");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
