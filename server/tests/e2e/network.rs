//! Container networks end to end: the real `ctr` (containerd 1.6's) runs busybox with berth's
//! network labels against a real berthd, which attaches it with Debian's CNI plugins; curl on the
//! host reaches the published port. Each test has its own daemon, its own CNI config dir, its own
//! default network (bridge name and subnet 10.213.24N.0/24 of its own) and namespace, and
//! removes the bridge and the firewall rules its network left, even when it fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fixtures::busybox_oci_archive;
use crate::harness::{process_token, Daemon};

const IMAGE: &str = "docker.io/berth/busybox:net";

struct Fixture {
    d: Daemon,
    ns: String,
    bridge: String,
    _dirs: tempfile::TempDir,
}

impl Fixture {
    fn start(case: &str, subnet: &str, bridge: &str) -> Fixture {
        Self::start_with(case, subnet, bridge, "")
    }

    fn start_with(case: &str, subnet: &str, bridge: &str, extra_toml: &str) -> Fixture {
        let dirs = tempfile::tempdir().unwrap();
        let conf = dirs.path().join("net.d");
        let toml = format!(
            "{extra_toml}\n[cni]\nconf_dir = \"{}\"\ndefault_subnet = \"{subnet}\"\ndefault_bridge = \"{bridge}\"\n",
            conf.display()
        );
        let images = dirs.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let image = busybox_oci_archive(&images, IMAGE);
        let f = Fixture {
            d: Daemon::start_with_config(&toml),
            ns: format!("{case}-{}", process_token()),
            bridge: bridge.to_string(),
            _dirs: dirs,
        };
        f.ctr(&["images", "import", image.path.to_str().unwrap()]);
        f
    }

    fn ctr(&self, args: &[&str]) -> String {
        self.d.ctr(&self.ns, args)
    }

    fn try_ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = self.d.ctr_raw(&self.ns, args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `ctr run -d` of busybox httpd serving `token` on port 80, with berth's labels.
    fn run_web(&self, id: &str, token: &str, labels: &[String]) {
        let script = format!("echo {token} > /tmp/index.html && exec httpd -f -p 80 -h /tmp");
        let mut args: Vec<&str> = vec!["run", "-d"];
        for l in labels {
            args.extend(["--label", l.as_str()]);
        }
        args.extend([IMAGE, id, "sh", "-c", &script]);
        self.ctr(&args);
    }

    fn stop_task(&self, id: &str) {
        let _ = self.try_ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.try_ctr(&["tasks", "delete", id]) {
                Ok(_) => return,
                Err(e) if e.contains("not found") => return,
                // Still running: the SIGKILL's exit has not been seen yet.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        panic!("task {id} could not be deleted");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A failed test's berthd log is printed by the daemon's own drop.
        if self.d.serves() {
            if let Ok(out) = self.try_ctr(&["tasks", "ls", "-q"]) {
                for id in out.split_whitespace() {
                    self.stop_task(id);
                }
            }
            if let Ok(out) = self.try_ctr(&["containers", "ls", "-q"]) {
                for id in out.split_whitespace() {
                    let _ = self.try_ctr(&["containers", "rm", id]);
                }
            }
            self.d.stop();
        }
        // runc leaves the namespace level `/<ns>` of the cgroups behind, and the daemon is
        // stopped now (berth-testkit removes it only for a daemon still running): this test's.
        for dir in crate::tasks::namespace_cgroups(&self.ns) {
            let _ = std::fs::remove_dir(dir);
        }
        // The default network's bridge and the host rules for it are this test's.
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .output();
        let _ = berth_net::host_rules::remove(&self.bridge);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// curl (default options) until it answers, bounded: the server in the container starts
/// after `ctr run -d` returns.
fn curl(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "3", url])
            .output()
            .expect("run curl (scripts/deps-cni.sh installs it)");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn netns_entries(part: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(part))
                .collect()
        })
        .unwrap_or_default()
}

fn bridge_ports(bridge: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == "inet")?;
            let ip = f.get(i + 1)?.split('/').next()?.to_string();
            (!ip.starts_with("10.213.")).then_some(ip)
        })
        .expect("a global IPv4 address on the host")
}

fn unable() -> Option<&'static str> {
    if !Path::new("/usr/lib/cni/bridge").exists() && !Path::new("/opt/cni/bin/bridge").exists() {
        return Some("CNI plugins missing (scripts/deps-cni.sh installs them)");
    }
    None
}

#[test]
fn ctr_run_with_a_published_port_is_reached_by_curl_and_torn_down() {
    if let Some(reason) = unable() {
        berth_testkit::skip::skip_unless_ci(
            "ctr_run_with_a_published_port_is_reached_by_curl_and_torn_down",
            reason,
        );
        return;
    }
    let bridge = format!("bte{}", std::process::id() % 100000);
    let f = Fixture::start("netport", "10.213.241.0/24", &bridge);
    let port = free_port();
    let token = format!("berth-net-{port}");
    f.run_web(
        "web",
        &token,
        &[
            r#"berth/networks=["bridge"]"#.to_string(),
            format!(r#"berth/ports=[{{"HostPort":{port},"ContainerPort":80,"Protocol":"tcp"}}]"#),
        ],
    );
    let body = curl(&format!("http://127.0.0.1:{port}/index.html"));
    assert_eq!(body.trim(), token);
    let body = curl(&format!("http://{}:{port}/index.html", host_address()));
    assert_eq!(body.trim(), token);

    // The netns is visible to `ip netns` while the task lives, and the container sees its
    // own name in /etc/hosts and no loopback resolver.
    let ns_part = format!("berth-{}-web-", f.ns);
    assert_eq!(netns_entries(&ns_part).len(), 1, "{ns_part}");
    let hosts = f.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "h",
        "web",
        "cat",
        "/etc/hosts",
    ]);
    assert!(
        hosts
            .lines()
            .any(|l| l.starts_with("10.213.241.") && l.contains("web")),
        "{hosts}"
    );
    let resolv = f.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "r",
        "web",
        "cat",
        "/etc/resolv.conf",
    ]);
    assert!(
        resolv.contains("nameserver ") && !resolv.contains("nameserver 127."),
        "{resolv}"
    );
    assert_eq!(bridge_ports(&bridge), 1);

    // Task delete detaches: no netns, no veth on the bridge, the port closed.
    f.stop_task("web");
    assert!(netns_entries(&ns_part).is_empty());
    assert_eq!(bridge_ports(&bridge), 0);
    let closed = Command::new("curl")
        .args(["-sS", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .unwrap();
    assert!(!closed.status.success());
}

#[test]
fn attachments_of_tasks_that_died_with_the_daemon_down_are_cleaned_at_start() {
    if let Some(reason) = unable() {
        berth_testkit::skip::skip_unless_ci(
            "attachments_of_tasks_that_died_with_the_daemon_down_are_cleaned_at_start",
            reason,
        );
        return;
    }
    let bridge = format!("btf{}", std::process::id() % 100000);
    let mut f = Fixture::start("netstale", "10.213.242.0/24", &bridge);
    let port = free_port();
    f.run_web(
        "gone",
        "gone",
        &[
            r#"berth/networks=["bridge"]"#.to_string(),
            format!(r#"berth/ports=[{{"HostPort":{port},"ContainerPort":80}}]"#),
        ],
    );
    f.run_web(
        "stays",
        "stays",
        &[r#"berth/networks=["bridge"]"#.to_string()],
    );
    curl(&format!("http://127.0.0.1:{port}/index.html"));
    let gone_part = format!("berth-{}-gone-", f.ns);
    let stays_part = format!("berth-{}-stays-", f.ns);
    assert_eq!(netns_entries(&gone_part).len(), 1);
    assert_eq!(bridge_ports(&bridge), 2);

    // berthd dies; meanwhile "gone" dies too, its shim with it.
    let pid: u32 = f
        .ctr(&["tasks", "ls"])
        .lines()
        .find(|l| l.starts_with("gone "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("gone's pid");
    let shim: i32 = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
        })
        .expect("gone's shim");
    f.d.kill9();
    for p in [shim, pid as i32] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    f.d.spawn();

    // The dead shim's task is cleaned up in the background after start; its network with it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !netns_entries(&gone_part).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(netns_entries(&gone_part).is_empty(), "gone's netns left");
    assert_eq!(netns_entries(&stays_part).len(), 1, "stays keeps its netns");
    assert_eq!(bridge_ports(&bridge), 1);
    let closed = Command::new("curl")
        .args(["-sS", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .unwrap();
    assert!(
        !closed.status.success(),
        "gone's published port still answers"
    );
}

#[tokio::test]
async fn networks_service_creates_lists_gets_and_deletes() {
    use berth_api::berth::services::networks::v1::networks_client::NetworksClient;
    use berth_api::berth::services::networks::v1::*;
    use tonic::Code;

    if let Some(reason) = unable() {
        berth_testkit::skip::skip_unless_ci(
            "networks_service_creates_lists_gets_and_deletes",
            reason,
        );
        return;
    }
    let bridge = format!("btg{}", std::process::id() % 100000);
    let f = Fixture::start("netapi", "10.213.243.0/24", &bridge);
    let mut client = NetworksClient::new(f.d.channel().await);

    // The default network exists from the first listing on, and cannot be deleted.
    let listed = client
        .list(ListNetworksRequest {})
        .await
        .unwrap()
        .into_inner();
    let default = listed
        .networks
        .iter()
        .find(|n| n.is_default)
        .expect("the default network is listed");
    assert_eq!(default.name, "bridge");
    assert_eq!(default.subnets, vec!["10.213.243.0/24".to_string()]);
    let err = client
        .delete(DeleteNetworkRequest {
            name: "bridge".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    let name = format!("netapi-{}", std::process::id());
    let created = client
        .create(CreateNetworkRequest {
            name: name.clone(),
            subnet: "10.213.244.0/24".into(),
            labels: [("team".to_string(), "a".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner()
        .network
        .unwrap();
    assert_eq!(created.gateway, "10.213.244.1");
    assert!(created.managed && !created.is_default);
    assert!(created.config.contains("\"portmap\""), "{}", created.config);
    let got = client
        .get(GetNetworkRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner()
        .network
        .unwrap();
    assert_eq!(got, created);

    // Failures keep their errdefs class on the wire; nothing changes.
    for (req, code) in [
        (
            CreateNetworkRequest {
                name: name.clone(),
                ..Default::default()
            },
            Code::AlreadyExists,
        ),
        (
            CreateNetworkRequest {
                name: format!("{name}-overlap"),
                subnet: "10.213.244.0/25".into(),
                ..Default::default()
            },
            Code::FailedPrecondition,
        ),
        (
            CreateNetworkRequest {
                name: "bad/name".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            CreateNetworkRequest {
                name: format!("{name}-badsubnet"),
                subnet: "10.213.244.1/24".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
    ] {
        let err = client.create(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err}");
    }
    assert_eq!(
        client
            .list(ListNetworksRequest {})
            .await
            .unwrap()
            .into_inner()
            .networks
            .len(),
        2
    );

    client
        .delete(DeleteNetworkRequest { name: name.clone() })
        .await
        .unwrap();
    let err = client.get(GetNetworkRequest { name }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

/// The task's pid as `ctr tasks ls` shows it, when it is RUNNING.
fn running_pid(f: &Fixture, id: &str) -> Option<u32> {
    f.try_ctr(&["tasks", "ls"]).ok()?.lines().find_map(|l| {
        let c: Vec<&str> = l.split_whitespace().collect();
        (c.first() == Some(&id) && c.get(2) == Some(&"RUNNING"))
            .then(|| c.get(1)?.parse().ok())
            .flatten()
    })
}

#[test]
fn the_restart_monitor_gives_a_restarted_task_its_network_again() {
    if let Some(reason) = unable() {
        berth_testkit::skip::skip_unless_ci(
            "the_restart_monitor_gives_a_restarted_task_its_network_again",
            reason,
        );
        return;
    }
    let bridge = format!("bth{}", std::process::id() % 100000);
    let f = Fixture::start_with(
        "netrestart",
        "10.213.245.0/24",
        &bridge,
        "[tasks]\nrestart_interval_ms = 200\n",
    );
    let port = free_port();
    f.run_web(
        "rw",
        "again",
        &[
            r#"berth/networks=["bridge"]"#.to_string(),
            format!(r#"berth/ports=[{{"HostPort":{port},"ContainerPort":80}}]"#),
        ],
    );
    let url = format!("http://127.0.0.1:{port}/index.html");
    assert_eq!(curl(&url).trim(), "again");
    let first = running_pid(&f, "rw").expect("rw runs");
    let ns_part = format!("berth-{}-rw-", f.ns);
    let first_ns = netns_entries(&ns_part);
    assert_eq!(first_ns.len(), 1);
    // Labelled once the task runs, so no monitor round races ctr's own start.
    f.ctr(&[
        "containers",
        "label",
        "rw",
        "containerd.io/restart.status=running",
    ]);
    f.ctr(&["tasks", "kill", "-s", "SIGKILL", "rw"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while running_pid(&f, "rw").is_none_or(|p| p == first) {
        assert!(Instant::now() < deadline, "rw was not restarted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(curl(&url).trim(), "again");
    assert_eq!(
        netns_entries(&ns_part),
        first_ns,
        "one netns, of the same name"
    );
    assert_eq!(
        bridge_ports(&bridge),
        1,
        "the old veth went with the old task"
    );
    // The monitor stops it again; the fixture removes it.
    f.ctr(&[
        "containers",
        "label",
        "rw",
        "containerd.io/restart.status=stopped",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while running_pid(&f, "rw").is_some() {
        assert!(Instant::now() < deadline, "rw was not stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn containers_on_one_network_reach_each_other_and_runs_leak_nothing() {
    if let Some(reason) = unable() {
        berth_testkit::skip::skip_unless_ci(
            "containers_on_one_network_reach_each_other_and_runs_leak_nothing",
            reason,
        );
        return;
    }
    const RUNS: usize = 15;
    let bridge = format!("bti{}", std::process::id() % 100000);
    let f = Fixture::start("netpair", "10.213.246.0/24", &bridge);
    let net_label = r#"berth/networks=["bridge"]"#.to_string();
    f.run_web("server", "from-server", std::slice::from_ref(&net_label));
    let hosts = f.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "h",
        "server",
        "cat",
        "/etc/hosts",
    ]);
    let server_ip = hosts
        .lines()
        .find(|l| l.ends_with("\tserver"))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("server's address in\n{hosts}"))
        .to_string();

    // Short-lived clients on the same network: each reaches the server, and lists it by name.
    let state = f.d.state().join("cni");
    let before_leases = count_files(&state.join("ipam/bridge"));
    let started = Instant::now();
    for i in 0..RUNS {
        let id = format!("client{i}");
        let script = format!(
            "grep -q '^{server_ip}\tserver$' /etc/hosts && \
             printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {server_ip} 80"
        );
        let out = f.d.ctr_raw(
            &f.ns,
            &[
                "run", "--rm", "--label", &net_label, IMAGE, &id, "sh", "-c", &script,
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("from-server"),
            "{id}: {out:?}"
        );
    }
    eprintln!(
        "{RUNS} `ctr run --rm` on a network: {:?} each",
        started.elapsed() / RUNS as u32
    );
    // Only the server is left attached: one veth, one netns, its lease alone.
    assert_eq!(bridge_ports(&bridge), 1);
    assert!(netns_entries(&format!("berth-{}-client", f.ns)).is_empty());
    assert_eq!(count_files(&state.join("ipam/bridge")), before_leases);
    let attachments = count_files(&state.join("attachments").join(&f.ns));
    assert_eq!(attachments, 1, "attachment records left");
    // berth-net's CNI_CONTAINERID: sha256 of state dir, namespace and id.
    let ids: Vec<String> = (0..RUNS)
        .map(|i| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(
                format!("{}\0{}\0client{i}", state.display(), f.ns).as_bytes(),
            ))
        })
        .collect();
    let rules = Command::new("iptables-save").output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    let left: Vec<&str> = rules
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
        .collect();
    assert!(
        left.is_empty(),
        "iptables rules of finished clients: {left:?}"
    );
    // Containers without published ports have no rules of their own: the network's masquerade,
    // forwarding and isolation rules name its bridge (berth-net's host_rules), and stay with it.
    let network_rules: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with("-A BERTH-") && l.split_whitespace().any(|w| w == bridge))
        .collect();
    assert_eq!(network_rules.len(), 6, "{network_rules:?}");
}

/// Entries of `dir` other than host-local's bookkeeping files.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n != "lock" && !n.starts_with("last_reserved_ip")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn racing_task_creates_leave_the_winners_network_in_place() {
    if let Some(reason) = unable() {
        berth_testkit::skip::skip_unless_ci(
            "racing_task_creates_leave_the_winners_network_in_place",
            reason,
        );
        return;
    }
    let bridge = format!("btr{}", std::process::id() % 100000);
    let f = Fixture::start("netrace", "10.213.243.0/24", &bridge);
    let port = free_port();
    let networks = r#"berth/networks=["bridge"]"#.to_string();
    let ports =
        format!(r#"berth/ports=[{{"HostPort":{port},"ContainerPort":80,"Protocol":"tcp"}}]"#);
    f.ctr(&[
        "containers",
        "create",
        "--label",
        &networks,
        "--label",
        &ports,
        IMAGE,
        "web",
        "--",
        "sh",
        "-c",
        "exec httpd -f -p 80 -h /etc",
    ]);
    // Four clients create the task at once; each create attaches for a few hundred ms (the
    // plugins), so they overlap. Only one may win, and the losers must not detach it.
    let outcomes: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| f.try_ctr(&["tasks", "start", "-d", "web"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 1, "{outcomes:?}");
    let ns_part = format!("berth-{}-web-", f.ns);
    assert_eq!(netns_entries(&ns_part).len(), 1, "{ns_part}");
    assert_eq!(bridge_ports(&bridge), 1);
    let body = curl(&format!("http://127.0.0.1:{port}/passwd"));
    assert!(body.starts_with("root:"), "{body}");

    f.stop_task("web");
    assert!(netns_entries(&ns_part).is_empty());
    assert_eq!(bridge_ports(&bridge), 0);
}
