//! berth-net against the real thing: Debian's CNI plugins, real network namespaces, iptables and
//! bridges, as root. Each test has its own config and state dirs, network names and subnets
//! (10.213.N.0/24, N per test), and undoes what it made even when it fails (`Fixture`'s Drop);
//! it never touches anything it did not create, since other work runs on this host.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_net::{
    AttachOptions, AttachmentKey, CreateOptions, DefaultNetwork, Net, NetConfig, PortMapping,
    Subnet,
};
use berth_testkit::skip::skip_unless_ci;

/// Why this host cannot run the tests, if it cannot.
fn unable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (netns, iptables, bridges)".into());
    }
    let have = NetConfig::default_bin_dirs()
        .iter()
        .any(|d| d.join("bridge").is_file());
    if !have {
        return Some("CNI plugins missing (scripts/deps-cni.sh installs them)".into());
    }
    None
}

macro_rules! require_host {
    ($case:expr) => {
        if let Some(reason) = unable() {
            skip_unless_ci($case, &reason);
            return;
        }
    };
}

struct Fixture {
    _dir: tempfile::TempDir,
    conf_dir: PathBuf,
    state_dir: PathBuf,
    net: Option<Net>,
    tag: String,
    networks: Vec<String>,
    keys: Vec<AttachmentKey>,
    children: Vec<Child>,
}

impl Fixture {
    /// `n` picks the test's subnets (10.213.n.0/24 and up) and names its networks.
    fn new(case: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("net.d");
        let state_dir = dir.path().join("state");
        let mut f = Fixture {
            conf_dir,
            state_dir,
            _dir: dir,
            net: None,
            tag: format!("{case}{}", std::process::id() % 10000),
            networks: Vec::new(),
            keys: Vec::new(),
            children: Vec::new(),
        };
        f.net = Some(f.open());
        f
    }

    fn config(&self) -> NetConfig {
        let mut c = NetConfig::new(self.conf_dir.clone(), self.state_dir.clone());
        // A default network of the test's own, never the host's berth0 on 10.47.0.0/16.
        c.default_network = DefaultNetwork {
            name: "bridge".into(),
            subnet: "10.213.250.0/24".parse().unwrap(),
            bridge: format!("bt{}", std::process::id() % 100000),
        };
        c
    }

    fn open(&self) -> Net {
        Net::new(self.config()).unwrap()
    }

    fn net(&self) -> &Net {
        self.net.as_ref().unwrap()
    }

    fn network(&mut self, suffix: &str, subnet: &str) -> String {
        let name = format!("{}-{suffix}", self.tag);
        let opts = CreateOptions {
            subnet: Some(subnet.parse().unwrap()),
            ..Default::default()
        };
        self.net().create_network(&name, &opts).unwrap();
        self.networks.push(name.clone());
        name
    }

    fn key(&mut self, id: &str) -> AttachmentKey {
        let key = AttachmentKey::new("berthnet-test", format!("{}-{id}", self.tag));
        self.keys.push(key.clone());
        key
    }

    fn netns_name(&self, key: &AttachmentKey) -> String {
        self.net().netns_name(key)
    }

    fn spawn_in(&mut self, ns: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let net = self.net.take().unwrap_or_else(|| self.open());
        for key in &self.keys {
            if let Err(e) = net.teardown(key) {
                eprintln!("cleanup: teardown {key}: {e}");
            }
        }
        for n in &self.networks {
            if let Err(e) = net.remove_network(n) {
                if !e.is_not_found() {
                    eprintln!("cleanup: remove network {n}: {e}");
                }
            }
        }
    }
}

fn run_in(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap()
}

fn busybox() -> &'static str {
    if Path::new("/bin/busybox").exists() {
        "/bin/busybox"
    } else {
        "/usr/bin/busybox"
    }
}

/// Waits (bounded) until `addr` answers an HTTP GET of `path`, and returns the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
                let mut body = String::new();
                match s.read_to_string(&mut body) {
                    Ok(_) if body.starts_with("HTTP/1.") => return Ok(body),
                    Ok(_) => last = format!("answer {body:?}"),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        // The server in the netns may not be listening yet: the condition is retried, bounded.
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{addr}{path}: {last}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn web_root(dir: &Path, token: &str) -> PathBuf {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), token).unwrap();
    root
}

/// Interfaces enslaved to `bridge` (its veths' host ends).
fn bridge_ports(bridge: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// iptables rules (every table) that mention one of `needles`.
fn iptables_lines(needles: &[String]) -> Vec<String> {
    let out = Command::new("iptables-save").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
        .map(str::to_string)
        .collect()
}

/// Leases host-local holds for `network` (one file per address).
fn leases(state_dir: &Path, network: &str) -> Vec<String> {
    std::fs::read_dir(state_dir.join("ipam").join(network))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default()
}

fn netns_listed(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn first_ipv4(a: &berth_net::Attachment) -> Ipv4Addr {
    match a.networks[0].addresses()[0] {
        std::net::IpAddr::V4(v4) => v4,
        other => panic!("not IPv4: {other}"),
    }
}

#[test]
fn two_containers_on_one_network_reach_each_other_by_ip_and_name() {
    require_host!("two_containers_on_one_network_reach_each_other_by_ip_and_name");
    let mut f = Fixture::new("pair");
    let network = f.network("n", "10.213.1.0/24");
    let (ka, kb) = (f.key("a"), f.key("b"));
    let opts = |name: &str| AttachOptions {
        networks: vec![network.clone()],
        hostname: name.into(),
        aliases: vec![format!("{name}.alias")],
        ..Default::default()
    };
    let a = f.net().setup(&ka, &opts("alpha")).unwrap();
    let b = f.net().setup(&kb, &opts("beta")).unwrap();
    let (ns_a, ns_b) = (f.netns_name(&ka), f.netns_name(&kb));
    assert!(
        netns_listed(&ns_a) && netns_listed(&ns_b),
        "ip netns list shows both"
    );
    let (ip_a, ip_b) = (first_ipv4(&a), first_ipv4(&b));
    let subnet: Subnet = "10.213.1.0/24".parse().unwrap();
    assert!(subnet.contains(ip_a) && subnet.contains(ip_b) && ip_a != ip_b);
    assert_eq!(a.networks[0].ifname, "eth0");
    assert_eq!(a.networks[0].gateway.as_deref(), Some("10.213.1.1"));

    // By IP: ICMP, then TCP to a server in the other netns.
    let ping = run_in(
        &ns_a,
        &[busybox(), "ping", "-c", "1", "-W", "3", &ip_b.to_string()],
    );
    assert!(ping.status.success(), "ping a->b: {ping:?}");
    let dir = tempfile::tempdir().unwrap();
    let root = web_root(dir.path(), "served-by-beta");
    f.spawn_in(
        &ns_b,
        &[
            busybox(),
            "httpd",
            "-f",
            "-p",
            "8000",
            "-h",
            root.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    // busybox's nc, not its wget: Debian's static wget crashes on glibc's NSS.
    let script = format!(
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | {} nc -w 3 {ip_b} 8000",
        busybox()
    );
    let out = loop {
        let out = run_in(&ns_a, &[busybox(), "sh", "-c", &script]);
        if out.stdout.ends_with(b"served-by-beta") || Instant::now() > deadline {
            break out;
        }
        // The server may not be listening yet: the condition is retried, bounded.
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("served-by-beta"),
        "{out:?}"
    );

    // By name: alpha's hosts file (written before beta existed) now names beta, and the
    // resolver inside alpha's netns, given that file as /etc/hosts, finds beta's address.
    let hosts_a = std::fs::read_to_string(&a.hosts_path).unwrap();
    assert!(
        hosts_a.contains(&format!("{ip_b}\tbeta beta.alias")),
        "{hosts_a}"
    );
    assert!(
        hosts_a.contains(&format!("{ip_a}\talpha alpha.alias")),
        "{hosts_a}"
    );
    let script = format!(
        "mount --bind {} /etc/hosts && getent hosts beta.alias",
        a.hosts_path.display()
    );
    let resolved = run_in(&ns_a, &["unshare", "-m", "sh", "-c", &script]);
    assert!(resolved.status.success(), "{resolved:?}");
    assert!(
        String::from_utf8_lossy(&resolved.stdout).starts_with(&ip_b.to_string()),
        "{resolved:?}"
    );
    let resolv = std::fs::read_to_string(&a.resolv_conf_path).unwrap();
    assert!(
        resolv.contains("nameserver ") && !resolv.contains("nameserver 127."),
        "{resolv}"
    );

    // CHECK passes on a live attachment; a network in use cannot be removed.
    f.net().check(&ka).unwrap();
    let err = f.net().remove_network(&network).unwrap_err();
    assert!(
        matches!(err, berth_net::Error::FailedPrecondition(_)),
        "{err}"
    );

    // Detaching beta takes it out of alpha's hosts file; teardown is idempotent.
    f.net().teardown(&kb).unwrap();
    f.net().teardown(&kb).unwrap();
    assert!(!netns_listed(&ns_b));
    let hosts_a = std::fs::read_to_string(&a.hosts_path).unwrap();
    assert!(!hosts_a.contains("beta"), "{hosts_a}");
}

/// The CRI's way: with `peer_hosts` off, a hosts file names its own attachment alone, and an
/// attach or detach leaves the other attachments' files as they were.
#[test]
fn without_peer_hosts_a_hosts_file_names_its_own_attachment_only() {
    require_host!("without_peer_hosts_a_hosts_file_names_its_own_attachment_only");
    let mut f = Fixture::new("own");
    f.net = Some(
        Net::new(NetConfig {
            peer_hosts: false,
            ..f.config()
        })
        .unwrap(),
    );
    let network = f.network("n", "10.213.11.0/24");
    let (ka, kb) = (f.key("a"), f.key("b"));
    let opts = |name: &str| AttachOptions {
        networks: vec![network.clone()],
        hostname: name.into(),
        ..Default::default()
    };
    let a = f.net().setup(&ka, &opts("alpha")).unwrap();
    let hosts_a = std::fs::read_to_string(&a.hosts_path).unwrap();
    let b = f.net().setup(&kb, &opts("beta")).unwrap();
    let (ip_a, ip_b) = (first_ipv4(&a), first_ipv4(&b));
    assert!(hosts_a.contains(&format!("{ip_a}\talpha")), "{hosts_a}");
    assert!(hosts_a.contains("localhost"), "{hosts_a}");
    assert_eq!(std::fs::read_to_string(&a.hosts_path).unwrap(), hosts_a);
    let hosts_b = std::fs::read_to_string(&b.hosts_path).unwrap();
    assert!(hosts_b.contains(&format!("{ip_b}\tbeta")), "{hosts_b}");
    assert!(
        !hosts_b.contains("alpha") && !hosts_b.contains(&ip_a.to_string()),
        "{hosts_b}"
    );
    f.net().teardown(&kb).unwrap();
    assert_eq!(std::fs::read_to_string(&a.hosts_path).unwrap(), hosts_a);
}

/// The host's first global IPv4 address (not loopback, not one of the test's bridges).
fn host_address() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let i = f.iter().position(|w| *w == "inet")?;
        let ip: Ipv4Addr = f.get(i + 1)?.split('/').next()?.parse().ok()?;
        (!ip.octets().starts_with(&[10, 213])).then_some(ip)
    })
}

#[test]
fn published_port_is_reached_from_host_loopback_and_address() {
    require_host!("published_port_is_reached_from_host_loopback_and_address");
    let mut f = Fixture::new("port");
    let network = f.network("n", "10.213.2.0/24");
    let key = f.key("web");
    let host_port = free_port();
    let a = f
        .net()
        .setup(
            &key,
            &AttachOptions {
                networks: vec![network],
                ports: vec![PortMapping::tcp(host_port, 8080)],
                hostname: "web".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let ns = f.netns_name(&key);
    let dir = tempfile::tempdir().unwrap();
    let token = format!("published-{host_port}");
    let root = web_root(dir.path(), &token);
    f.spawn_in(
        &ns,
        &[
            busybox(),
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            root.to_str().unwrap(),
        ],
    );

    let body = http_get(SocketAddr::from(([127, 0, 0, 1], host_port)), "/index.html").unwrap();
    assert!(body.ends_with(&token), "{body}");
    let addr = host_address().expect("the host has a global IPv4 address");
    let body = http_get(SocketAddr::from((addr, host_port)), "/index.html").unwrap();
    assert!(body.ends_with(&token), "{body}");

    // A second attachment cannot take the same host port.
    let other = f.key("web2");
    let err = f
        .net()
        .setup(
            &other,
            &AttachOptions {
                networks: vec![a.networks[0].network.clone()],
                ports: vec![PortMapping::tcp(host_port, 80)],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, berth_net::Error::AlreadyExists(_)), "{err}");

    // Once detached, nothing answers on the port and its rules are gone.
    let id = f.net().cni_container_id(&key);
    assert!(
        !iptables_lines(std::slice::from_ref(&id)).is_empty(),
        "portmap rules name the container"
    );
    f.net().teardown(&key).unwrap();
    assert_eq!(iptables_lines(&[id]), Vec::<String>::new());
    assert!(TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], host_port)),
        Duration::from_millis(500)
    )
    .is_err());
}

#[test]
fn networks_are_created_listed_and_removed_without_collisions() {
    require_host!("networks_are_created_listed_and_removed_without_collisions");
    let mut f = Fixture::new("cfg");
    let net = f.network("one", "10.213.3.0/24");

    // Same name, overlapping subnet, bad names, reserved names: refused, nothing written.
    let before = std::fs::read_dir(&f.conf_dir).unwrap().count();
    let err = f
        .net()
        .create_network(&net, &CreateOptions::default())
        .unwrap_err();
    assert!(matches!(err, berth_net::Error::AlreadyExists(_)), "{err}");
    let overlapping = CreateOptions {
        subnet: Some("10.213.3.128/25".parse().unwrap()),
        ..Default::default()
    };
    let err = f
        .net()
        .create_network(&format!("{}-two", f.tag), &overlapping)
        .unwrap_err();
    assert!(
        matches!(err, berth_net::Error::FailedPrecondition(_)),
        "{err}"
    );
    for bad in ["", "-x", "a/b", "host", "none", &"x".repeat(65)] {
        let err = f
            .net()
            .create_network(bad, &CreateOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, berth_net::Error::InvalidArgument(_)),
            "{bad}: {err}"
        );
    }
    // A host route's subnet is refused too.
    let routes = berth_net::cidr::host_routes().unwrap();
    if let Some(route) = routes.first() {
        let err = f
            .net()
            .create_network(
                &format!("{}-route", f.tag),
                &CreateOptions {
                    subnet: Some(route.dst),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(
            matches!(err, berth_net::Error::FailedPrecondition(_)),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_dir(&f.conf_dir).unwrap().count(), before);

    // A chosen subnet collides with neither the networks nor the host's routes.
    let auto_name = format!("{}-auto", f.tag);
    let auto = f
        .net()
        .create_network(&auto_name, &CreateOptions::default())
        .unwrap();
    f.networks.push(auto_name.clone());
    let chosen = auto.subnets[0];
    assert!(!chosen.overlaps(&"10.213.3.0/24".parse().unwrap()));
    assert!(routes.iter().all(|r| !r.dst.overlaps(&chosen)), "{chosen}");
    assert_eq!(auto.gateway, chosen.host(1).map(|g| g.to_string()));

    // The default network appears when missing, stays put, and cannot be removed.
    let default = f.net().ensure_default_network().unwrap();
    assert!(default.is_default);
    assert_eq!(default.subnets, vec!["10.213.250.0/24".parse().unwrap()]);
    assert_eq!(f.net().ensure_default_network().unwrap().path, default.path);
    let err = f.net().remove_network("bridge").unwrap_err();
    assert!(
        matches!(err, berth_net::Error::FailedPrecondition(_)),
        "{err}"
    );

    let mut names: Vec<String> = f
        .net()
        .list_networks()
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    names.sort();
    let mut want = vec![net.clone(), auto_name.clone(), "bridge".to_string()];
    want.sort();
    assert_eq!(names, want);

    // A config berth did not write is listed but not removed.
    std::fs::write(
        f.conf_dir.join("10-foreign.conflist"),
        r#"{"cniVersion":"1.0.0","name":"foreign","plugins":[{"type":"loopback"}]}"#,
    )
    .unwrap();
    assert!(!f.net().inspect_network("foreign").unwrap().managed);
    assert!(f.net().remove_network("foreign").is_err());

    f.net().remove_network(&auto_name).unwrap();
    let err = f.net().inspect_network(&auto_name).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(f
        .net()
        .remove_network(&auto_name)
        .unwrap_err()
        .is_not_found());
}

#[test]
fn stale_attachments_are_undone_after_a_crash() {
    require_host!("stale_attachments_are_undone_after_a_crash");
    let mut f = Fixture::new("stale");
    let network = f.network("n", "10.213.4.0/24");
    let bridge = f.net().inspect_network(&network).unwrap().bridge.unwrap();
    let (live, dead) = (f.key("live"), f.key("dead"));
    let port = free_port();
    for (key, ports) in [(&live, vec![]), (&dead, vec![PortMapping::tcp(port, 80)])] {
        f.net()
            .setup(
                key,
                &AttachOptions {
                    networks: vec![network.clone()],
                    ports,
                    ..Default::default()
                },
            )
            .unwrap();
    }
    let dead_id = f.net().cni_container_id(&dead);
    let dead_ns = f.netns_name(&dead);
    assert_eq!(bridge_ports(&bridge), 2);
    assert_eq!(leases(&f.state_dir, &network).len(), 2);
    assert!(!iptables_lines(std::slice::from_ref(&dead_id)).is_empty());

    // The daemon "crashes": its Net goes away with records, netns, veths and rules left.
    drop(f.net.take());
    let restarted = f.open();
    let report = restarted
        .cleanup_stale(&HashSet::from([live.clone()]))
        .unwrap();
    assert_eq!(report.removed, vec![dead.clone()]);
    assert!(report.failed.is_empty());
    assert!(!netns_listed(&dead_ns));
    assert!(!Path::new("/run/netns").join(&dead_ns).exists());
    assert_eq!(bridge_ports(&bridge), 1);
    assert_eq!(leases(&f.state_dir, &network).len(), 1);
    assert_eq!(iptables_lines(&[dead_id]), Vec::<String>::new());
    assert_eq!(restarted.list().unwrap(), vec![live.clone()]);
    assert!(restarted.inspect(&dead).unwrap_err().is_not_found());
    f.net = Some(restarted);
}

#[test]
fn a_failed_add_is_undone_completely() {
    require_host!("a_failed_add_is_undone_completely");
    let mut f = Fixture::new("fail");
    let network = f.network("n", "10.213.5.0/24");
    let bridge = f.net().inspect_network(&network).unwrap().bridge.unwrap();
    // A second network whose chain fails after the bridge plugin has done its work.
    let broken = format!("{}-broken", f.tag);
    std::fs::write(
        f.conf_dir.join(format!("{broken}.conflist")),
        serde_json::to_vec(&serde_json::json!({
            "cniVersion": "1.0.0", "name": broken,
            "plugins": [
                {"type": "bridge", "bridge": format!("{}x", &bridge[..14]), "isGateway": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.213.6.0/24"}]],
                          "dataDir": f.state_dir.join("ipam")}},
                {"type": "no-such-plugin"}
            ]
        }))
        .unwrap(),
    )
    .unwrap();
    let key = f.key("x");
    let err = f
        .net()
        .setup(
            &key,
            &AttachOptions {
                networks: vec![network.clone(), broken.clone()],
                ports: vec![PortMapping::tcp(free_port(), 80)],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("no-such-plugin"), "{err}");
    let id = f.net().cni_container_id(&key);
    assert!(!netns_listed(&f.netns_name(&key)));
    assert_eq!(bridge_ports(&bridge), 0);
    assert_eq!(bridge_ports(&format!("{}x", &bridge[..14])), 0);
    assert!(leases(&f.state_dir, &network).is_empty());
    assert!(leases(&f.state_dir, &broken).is_empty());
    assert_eq!(iptables_lines(&[id]), Vec::<String>::new());
    assert!(f.net().list().unwrap().is_empty());
    // The bridge the broken network made is the test's to delete.
    let _ = Command::new("ip")
        .args(["link", "delete", &format!("{}x", &bridge[..14])])
        .status();
}

#[test]
fn networks_are_isolated_from_each_other_by_per_network_rules() {
    require_host!("networks_are_isolated_from_each_other_by_per_network_rules");
    let mut f = Fixture::new("iso");
    let one = f.network("one", "10.213.9.0/24");
    let two = f.network("two", "10.213.10.0/24");
    let bridge_two = f.net().inspect_network(&two).unwrap().bridge.unwrap();
    let on = |net: &str| AttachOptions {
        networks: vec![net.to_string()],
        ..Default::default()
    };
    let (ka, kb, kc) = (f.key("a"), f.key("b"), f.key("c"));
    let a = f.net().setup(&ka, &on(&one)).unwrap();
    let b = f.net().setup(&kb, &on(&two)).unwrap();
    let c = f.net().setup(&kc, &on(&one)).unwrap();
    let ping = |from: &AttachmentKey, to: &berth_net::Attachment| {
        run_in(
            &f.netns_name(from),
            &[
                busybox(),
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                &first_ipv4(to).to_string(),
            ],
        )
        .status
        .success()
    };
    assert!(ping(&ka, &c), "a and c share a network");
    assert!(!ping(&ka, &b), "a reached b on another network");
    assert!(!ping(&kb, &a), "b reached a on another network");
    // The rules are the network's, not the containers': none names an address.
    let drop_rule = format!("-A BERTH-ISOLATION-2 -o {bridge_two} -j DROP");
    assert!(
        iptables_lines(std::slice::from_ref(&drop_rule)).len() == 1,
        "{drop_rule} once"
    );
    let ids: Vec<String> = [&ka, &kb, &kc]
        .iter()
        .map(|k| f.net().cni_container_id(k))
        .collect();
    for k in [&ka, &kb, &kc] {
        f.net().teardown(k).unwrap();
    }
    assert_eq!(iptables_lines(&ids), Vec::<String>::new());
    f.net().remove_network(&two).unwrap();
    assert_eq!(iptables_lines(&[bridge_two]), Vec::<String>::new());
}

#[test]
fn attach_detach_cycles_leak_nothing() {
    require_host!("attach_detach_cycles_leak_nothing");
    const CYCLES: usize = 20;
    let mut f = Fixture::new("leak");
    let network = f.network("n", "10.213.7.0/24");
    let bridge = f.net().inspect_network(&network).unwrap().bridge.unwrap();
    let netns_before = std::fs::read_dir("/run/netns")
        .map(|d| d.count())
        .unwrap_or(0);
    let mut ids = Vec::new();
    let started = Instant::now();
    for i in 0..CYCLES {
        let key = f.key(&format!("c{i}"));
        ids.push(f.net().cni_container_id(&key));
        let a = f
            .net()
            .setup(
                &key,
                &AttachOptions {
                    networks: vec![network.clone()],
                    ports: vec![PortMapping::tcp(free_port(), 80)],
                    hostname: format!("c{i}"),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(bridge_ports(&bridge), 1);
        assert!(netns_listed(&f.netns_name(&key)));
        assert!(a.networks[0].mac.is_some());
        f.net().teardown(&key).unwrap();
    }
    eprintln!(
        "{CYCLES} attach/detach cycles with a published port: {:?} each",
        started.elapsed() / CYCLES as u32
    );
    assert_eq!(bridge_ports(&bridge), 0, "veths left on {bridge}");
    assert_eq!(iptables_lines(&ids), Vec::<String>::new());
    // What stays with the network is its own masquerade rule, naming its bridge, no address.
    let subnet_rules = iptables_lines(&["10.213.7.".to_string()]);
    assert!(
        subnet_rules.len() == 1
            && subnet_rules[0].contains("-A BERTH-POSTROUTING -s 10.213.7.0/24 ! -o ")
            && subnet_rules[0].contains(&bridge),
        "{subnet_rules:?}"
    );
    assert!(leases(&f.state_dir, &network).is_empty());
    let netns_after = std::fs::read_dir("/run/netns")
        .map(|d| d.count())
        .unwrap_or(0);
    let ours: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&f.tag))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
    // Others' namespaces may come and go meanwhile; ours are counted by name above.
    eprintln!("netns entries on the host: {netns_before} before, {netns_after} after");
    // Removing the network takes its bridge and its host rules.
    f.net().remove_network(&network).unwrap();
    assert_eq!(
        iptables_lines(&["10.213.7.".to_string()]),
        Vec::<String>::new()
    );
    assert!(!Path::new("/sys/class/net").join(&bridge).exists());
    assert_eq!(
        iptables_lines(std::slice::from_ref(&bridge)),
        Vec::<String>::new()
    );
    assert!(f.net().list().unwrap().is_empty());
    assert!(
        std::fs::read_dir(f.state_dir.join("attachments/berthnet-test"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
}

#[test]
fn parallel_attachments_get_distinct_addresses_and_all_detach() {
    require_host!("parallel_attachments_get_distinct_addresses_and_all_detach");
    const N: usize = 6;
    let mut f = Fixture::new("par");
    let network = f.network("n", "10.213.8.0/24");
    let bridge = f.net().inspect_network(&network).unwrap().bridge.unwrap();
    let keys: Vec<AttachmentKey> = (0..N).map(|i| f.key(&format!("p{i}"))).collect();
    let net = f.net();
    // Distinct host ports, chosen before the threads start: free_port() called from each
    // thread could hand two of them the same just-released port.
    let mut ports = HashSet::new();
    while ports.len() < N {
        ports.insert(free_port());
    }
    let ports: Vec<u16> = ports.into_iter().collect();
    let addresses: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, (key, &port))| {
                let network = network.clone();
                s.spawn(move || {
                    let a = net
                        .setup(
                            key,
                            &AttachOptions {
                                networks: vec![network],
                                ports: vec![PortMapping::tcp(port, 80)],
                                hostname: format!("p{i}"),
                                ..Default::default()
                            },
                        )
                        .unwrap();
                    first_ipv4(&a)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<Ipv4Addr> = addresses.iter().copied().collect();
    assert_eq!(distinct.len(), N, "{addresses:?}");
    assert_eq!(bridge_ports(&bridge), N);
    // Every hosts file names every other container, whatever order they came in.
    for key in &keys {
        let hosts = std::fs::read_to_string(net.inspect(key).unwrap().hosts_path).unwrap();
        for ip in &addresses {
            assert!(
                hosts.contains(&ip.to_string()),
                "{ip} missing in {key}'s\n{hosts}"
            );
        }
    }
    std::thread::scope(|s| {
        for key in &keys {
            s.spawn(move || net.teardown(key).unwrap());
        }
    });
    assert_eq!(bridge_ports(&bridge), 0);
    assert!(leases(&f.state_dir, &network).is_empty());
    assert!(net.list().unwrap().is_empty());
}

#[test]
fn no_networks_gives_a_netns_with_loopback_up_and_bad_input_changes_nothing() {
    require_host!("no_networks_gives_a_netns_with_loopback_up_and_bad_input_changes_nothing");
    let mut f = Fixture::new("none");
    let key = f.key("solo");
    let a = f
        .net()
        .setup(
            &key,
            &AttachOptions {
                hostname: "solo".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(a.networks.is_empty());
    let ns = f.netns_name(&key);
    let lo = run_in(&ns, &["ip", "-o", "link", "show", "lo"]);
    assert!(String::from_utf8_lossy(&lo.stdout).contains("UP"), "{lo:?}");
    let ping = run_in(&ns, &[busybox(), "ping", "-c", "1", "-W", "2", "127.0.0.1"]);
    assert!(ping.status.success(), "{ping:?}");
    f.net().teardown(&key).unwrap();
    assert!(!netns_listed(&ns));

    // Refused before anything is made: no record, no netns.
    let bad = f.key("bad");
    for opts in [
        AttachOptions {
            hostname: "x\n10.0.0.1 bank".into(),
            ..Default::default()
        },
        AttachOptions {
            networks: vec!["no-such-network".into()],
            ..Default::default()
        },
        AttachOptions {
            ports: vec![PortMapping::tcp(8080, 80)],
            ..Default::default()
        },
    ] {
        assert!(f.net().setup(&bad, &opts).is_err(), "{opts:?}");
        assert!(!netns_listed(&f.netns_name(&bad)));
        assert!(f.net().list().unwrap().is_empty());
    }
    let hostile = AttachmentKey::new("berthnet-test", "../../etc");
    assert!(f.net().setup(&hostile, &AttachOptions::default()).is_err());
    assert!(f.net().teardown(&hostile).is_err());
}
