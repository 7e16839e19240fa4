//! nerdctl (containerd's docker-compatible CLI, v2.3.5, built by scripts/deps-nerdctl.sh) drives
//! a real berthd: pull from a loopback docker-registry, run/exec/logs/stop/start/rm, `-i` and
//! `-t`, tag/save/load/rmi, events, a network with a published port reached with curl and a
//! second container reaching the first by name, and a volume outliving its container. nerdctl
//! runs its CNI networking as OCI hooks (`nerdctl internal oci-hook`) and its logs as a
//! `binary://` logger started by berth-shim, so those paths of berthd run too.
//! Needs root, berthd and berth-shim built in this target dir, containernetworking-plugins,
//! docker-registry, skopeo and curl. docs/nerdctl.md lists what works and what does not.

use berth_testkit::berthd::{process_token, Daemon};
use berth_testkit::image::busybox_oci_archive_with;
use berth_testkit::skip::skip_unless_ci;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::registry::Registry;

/// No nerdctl command of these tests takes long; one that hangs fails the test instead.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

const APPLETS: &[&str] = &[
    "sh", "echo", "true", "cat", "sleep", "httpd", "wget", "tty", "mkdir",
];

fn nerdctl_binary() -> Option<PathBuf> {
    let bin = std::env::var_os("BERTH_TEST_BIN")
        .map_or_else(
            || PathBuf::from("/usr/local/lib/berth-test/bin"),
            PathBuf::from,
        )
        .join("nerdctl");
    bin.is_file().then_some(bin)
}

/// Debian installs the CNI plugins in /usr/lib/cni, upstream's packages in /opt/cni/bin.
fn cni_path() -> &'static str {
    ["/usr/lib/cni", "/opt/cni/bin"]
        .into_iter()
        .find(|d| Path::new(d).join("bridge").is_file())
        .unwrap_or("/usr/lib/cni")
}

/// nerdctl pointed at one test daemon by a config file of its own (NERDCTL_TOML), with its data
/// root and CNI config dir in the test's temp dir; removes what the test left on drop.
struct Nerdctl {
    bin: PathBuf,
    toml: PathBuf,
    ns: String,
    /// Held for the test: its drop stops berthd (and prints its log when the test failed).
    _daemon: Daemon,
    /// Serves the image until the test ends.
    _registry: Registry,
    /// The image, as pushed to the registry: `127.0.0.1:PORT/berth/busybox:nerdctl`.
    image: String,
    networks: Vec<String>,
    /// The host bridges of the networks the test made, read when each was made (a test may
    /// remove its network before the end).
    bridges: Vec<String>,
    volumes: Vec<String>,
    /// The host bridge of this test's default network.
    bridge: String,
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Nerdctl {
    /// None (after recording the skip) when nerdctl is not installed.
    /// `config`: berthd's extra TOML.
    fn start(case: &str, config: &str) -> Option<Nerdctl> {
        berth_testkit::berthd::require_root();
        let Some(bin) = nerdctl_binary() else {
            skip_unless_ci(case, "no nerdctl: run scripts/deps-nerdctl.sh");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let daemon = Daemon::start_with_config(config);
        // Its own per test: the namespace's cgroup parent goes when the test ends.
        let name = case.rsplit("::").next().unwrap_or(case);
        let ns = format!("nerdctl-{name}-{}", process_token());
        let toml = dir.path().join("nerdctl.toml");
        std::fs::write(
            &toml,
            format!(
                "address = {:?}\nnamespace = {ns:?}\nsnapshotter = \"overlayfs\"\n\
                 data_root = {:?}\ncni_path = {:?}\ncni_netconfpath = {:?}\n",
                daemon.socket,
                dir.path().join("data"),
                cni_path(),
                dir.path().join("net.d"),
            ),
        )
        .expect("write nerdctl.toml");

        let bridge = write_default_network(&dir.path().join("net.d"));

        let registry = Registry::start();
        let archive = busybox_oci_archive_with(dir.path(), "berth/busybox:nerdctl", APPLETS)
            .expect("busybox image");
        let image = format!("127.0.0.1:{}/berth/busybox:nerdctl", registry.port);
        let pushed = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.path.display()))
            .arg(format!("docker://{image}"))
            .output()
            .expect("run skopeo (apt-get install skopeo)");
        assert!(
            pushed.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&pushed.stderr)
        );
        Some(Nerdctl {
            bin,
            toml,
            ns,
            _daemon: daemon,
            _registry: registry,
            image,
            networks: Vec::new(),
            bridges: Vec::new(),
            volumes: Vec::new(),
            bridge,
            dir,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("NERDCTL_TOML", &self.toml)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_SNAPSHOTTER");
        cmd
    }

    /// Runs `cmd` with `input` on its stdin (None: /dev/null), killed after COMMAND_TIMEOUT.
    fn run_command(&self, mut cmd: Command, what: &str, input: Option<&[u8]>) -> Run {
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn nerdctl");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(input).expect("write stdin");
        }
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(out) => out.expect("wait for nerdctl"),
            Err(_) => {
                // nerdctl forwards SIGTERM to the container: only SIGKILL ends it.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
            }
        };
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn raw(&self, args: &[&str]) -> Run {
        let what = format!("nerdctl {}", args.join(" "));
        self.run_command(self.command(args), &what, None)
    }

    /// Runs nerdctl, insists on success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with_input(args, None)
    }

    fn ok_with_input(&self, args: &[&str], input: Option<&[u8]>) -> String {
        let what = format!("nerdctl {}", args.join(" "));
        let r = self.run_command(self.command(args), &what, input);
        assert_eq!(
            r.code, 0,
            "{what}\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr,
        );
        r.stdout
    }

    /// `nerdctl ARGS` with a pseudo-terminal on its stdin, through util-linux's `script`.
    fn ok_on_tty(&self, args: &[&str]) -> String {
        let line = std::iter::once(self.bin.to_string_lossy().into_owned())
            .chain(args.iter().map(|a| format!("'{a}'")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env("NERDCTL_TOML", &self.toml);
        let r = self.run_command(cmd, &line, None);
        assert_eq!(
            r.code, 0,
            "{line}\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        r.stdout.replace('\r', "")
    }

    fn status(&self, name: &str) -> String {
        self.ok(&["inspect", "--format", "{{.State.Status}}", name])
            .trim()
            .to_string()
    }
}

impl Drop for Nerdctl {
    fn drop(&mut self) {
        let ids = self.raw(&["ps", "-a", "-q"]).stdout;
        for id in ids.split_whitespace() {
            let _ = self.raw(&["rm", "-f", id]);
        }
        // Read before `network rm` takes the configs away: the firewall plugin's isolation rules
        // name each bridge, and no CNI DEL removes them.
        let mut bridges = bridges_in(&self.dir.path().join("net.d"));
        bridges.extend(self.bridges.iter().cloned());
        for net in &self.networks {
            let _ = self.raw(&["network", "rm", net]);
            // host-local's reservations dir, which `network rm` leaves behind.
            let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(net));
        }
        for vol in &self.volumes {
            let _ = self.raw(&["volume", "rm", vol]);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        remove_isolation_rules(&bridges);
        // runc removes each container's cgroup, not the namespace's parent, which is ours.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join(&self.ns));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.ns));
    }
}

/// The host bridges the CNI configs in `dir` name (nerdctl keeps a namespace's own networks in
/// a subdirectory).
fn bridges_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(bridges_in(&entry.path()));
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        for plugin in config["plugins"].as_array().into_iter().flatten() {
            if let Some(bridge) = plugin["bridge"].as_str() {
                out.push(bridge.to_string());
            }
        }
    }
    out
}

/// The CNI firewall plugin's `ingressPolicy: same-bridge` rules for `bridges`
/// (CNI-ISOLATION-STAGE-1 and -2 of the filter table), which outlive the bridges.
fn remove_isolation_rules(bridges: &[String]) {
    for chain in ["CNI-ISOLATION-STAGE-1", "CNI-ISOLATION-STAGE-2"] {
        let Ok(out) = Command::new("iptables").args(["-w", "-S", chain]).output() else {
            continue;
        };
        for rule in String::from_utf8_lossy(&out.stdout).lines() {
            let names_ours = bridges
                .iter()
                .any(|b| rule.contains(&format!("-i {b} ")) || rule.contains(&format!("-o {b} ")));
            if let (true, Some(spec)) = (names_ours, rule.strip_prefix("-A ")) {
                // The rule's comment is quoted as iptables -S prints it: let sh split it.
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!("iptables -w -D {spec}"))
                    .status();
            }
        }
    }
}

/// nerdctl's default network (`bridge`) is its own CNI config, which it writes on first use with
/// the same bridge (nerdctl0) and subnet (10.4.0.0/24) in every data root, and then refuses when
/// another nerdctl on the host (another test, a developer's) already has that subnet. So the
/// test writes it first, in nerdctl's format, with a bridge of its own on a subnet no host
/// address or route is in. Returns the bridge's name.
fn write_default_network(dir: &Path) -> String {
    let taken = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let third = (100..250)
        .map(|i| (i + std::process::id() % 150) % 150 + 100)
        .find(|i| !taken.contains(&format!("10.4.{i}.")))
        .expect("a free 10.4.x.0/24 for nerdctl's default network");
    let bridge = format!("nct{}", std::process::id() % 100_000);
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bridge",
        "nerdctlID": format!("{:064x}", std::process::id()),
        "nerdctlLabels": {"nerdctl/default-network": "true"},
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("10.4.{third}.0/24"), "gateway": format!("10.4.{third}.1")}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall", "ingressPolicy": "same-bridge"},
            {"type": "tuning"}
        ]
    });
    std::fs::create_dir_all(dir).expect("create the CNI config dir");
    std::fs::write(
        dir.join("nerdctl-bridge.conflist"),
        serde_json::to_vec_pretty(&config).expect("json"),
    )
    .expect("write nerdctl's default network");
    bridge
}

/// Transfer/Transfer calls berthd has completed, from its Prometheus text.
fn transfer_calls(metrics_port: u16) -> u64 {
    let out = Command::new("curl")
        .args([
            "-sf",
            &format!("http://127.0.0.1:{metrics_port}/v1/metrics"),
        ])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "scrape berthd's metrics");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains("grpc_service=\"containerd.services.transfer.v1.Transfer\"")
                && l.contains("grpc_method=\"Transfer\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[test]
fn nerdctl_pulls_runs_and_moves_images() {
    // The restart monitor looks every 300 ms rather than containerd's 10 s; the metrics
    // listener counts the RPCs nerdctl makes.
    let metrics_port = free_port();
    let config = format!(
        "[tasks]\nrestart_interval_ms = 300\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n"
    );
    let config = config.as_str();
    let Some(n) = Nerdctl::start("nerdctl::nerdctl_pulls_runs_and_moves_images", config) else {
        return;
    };
    let image = n.image.as_str();

    let version = n.ok(&["version"]);
    assert!(version.contains("Server:"), "{version}");
    // containerd's version scheme, so nerdctl takes its containerd 2 paths, with berth's own.
    assert!(
        version.contains(&format!(
            "Version:\t2.4.0+berth.{}",
            env!("CARGO_PKG_VERSION")
        )),
        "berthd's version in nerdctl version: {version}"
    );
    let info = n.ok(&["info"]);
    assert!(info.contains("Storage Driver: overlayfs"), "{info}");
    assert!(info.contains(&format!("Namespace:\t{}", n.ns)), "{info}");

    let transfers = || transfer_calls(metrics_port);
    let before = transfers();
    n.ok(&["pull", "--insecure-registry", "--quiet", image]);
    // Pulled by berthd through the Transfer service, not client-side.
    assert!(
        transfers() > before,
        "nerdctl pull made no Transfer call (before: {before})"
    );
    // A push is client-side whatever the version (nerdctl 2.3.5 takes Transfer for it only
    // with --allow-nondistributable-artifacts), over berthd's content and images.
    let pushed = format!("{}:pushed", image.rsplit_once(':').expect("a tag").0);
    n.ok(&["tag", image, &pushed]);
    n.ok(&["push", "--insecure-registry", &pushed]);
    n.ok(&["rmi", &pushed]);
    n.ok(&["pull", "--insecure-registry", "--quiet", &pushed]);
    n.ok(&["rmi", &pushed]);
    let images = n.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.lines().any(|l| l == image), "{images}");
    assert!(n.ok(&["namespace", "ls", "-q"]).lines().any(|l| l == n.ns));

    // A foreground run: the binary:// logger and the client's FIFOs both carry its output.
    let out = n.ok(&["run", "--rm", "--net", "none", image, "echo", "hello-berth"]);
    assert_eq!(out.trim(), "hello-berth");

    // -i: stdin reaches the container and its end closes the container's stdin (CloseIO),
    // which nerdctl sends as soon as its input ends, possibly while the task is being created.
    let out = n.ok_with_input(
        &["run", "-i", "--rm", "--net", "none", image, "cat"],
        Some(b"through-stdin\n"),
    );
    assert_eq!(out.trim(), "through-stdin");

    // -t: a terminal, with the stderr FIFO containerd's client names beside it left unused.
    let out = n.ok_on_tty(&["run", "-t", "--rm", "--net", "none", image, "tty"]);
    assert!(out.contains("/dev/pts/"), "{out:?}");

    // A detached container: ps, logs (written by nerdctl's logger), exec, stop, start, rm.
    n.ok(&[
        "run",
        "-d",
        "--name",
        "worker",
        "--net",
        "none",
        image,
        "sh",
        "-c",
        "echo started-once; exec sleep 1000",
    ]);
    let ps = n.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.lines().any(|l| l == "worker Up"), "{ps}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n.ok(&["logs", "worker"]).contains("started-once") {
        assert!(Instant::now() < deadline, "no log line from worker");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        n.ok(&["exec", "worker", "echo", "in-exec"]).trim(),
        "in-exec"
    );
    let out = n.ok_on_tty(&["exec", "-t", "worker", "tty"]);
    assert!(out.contains("/dev/pts/"), "{out:?}");
    n.ok(&["stop", "-t", "1", "worker"]);
    assert_eq!(n.status("worker"), "exited");
    let ps = n.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("worker Exited (137)") || l.starts_with("worker Exited (143)")),
        "{ps}"
    );
    n.ok(&["start", "worker"]);
    assert_eq!(n.status("worker"), "running");
    n.ok(&["rm", "-f", "worker"]);
    assert_eq!(n.ok(&["ps", "-a", "-q"]).trim(), "");

    // --restart always: nerdctl looks for containerd's restart plugin, then labels the
    // container for it; berthd's restart monitor starts it again after each exit.
    n.ok(&[
        "run",
        "-d",
        "--name",
        "phoenix",
        "--restart",
        "always",
        "--net",
        "none",
        image,
        "sh",
        "-c",
        "sleep 1; exit 3",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = n.ok(&["inspect", "--format", "{{.RestartCount}}", "phoenix"]);
        if count.trim().parse::<u32>().is_ok_and(|c| c >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "phoenix never restarted: {count}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    n.ok(&["rm", "-f", "phoenix"]);

    // events: a container's lifecycle, as nerdctl decodes berthd's envelopes.
    let mut events = n
        .command(&["events", "--format", "{{json .}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nerdctl events");
    std::thread::sleep(Duration::from_millis(500));
    n.ok(&["run", "--rm", "--net", "none", image, "true"]);
    let _ = events.kill();
    let out = events.wait_with_output().expect("nerdctl events");
    let text = String::from_utf8_lossy(&out.stdout);
    for topic in ["/containers/create", "/tasks/start", "/tasks/exit"] {
        assert!(text.contains(topic), "no {topic} in: {text}");
    }

    // tag, save, rmi, load: the loaded image runs.
    n.ok(&["tag", image, "local/saved:v1"]);
    let archive = n.dir.path().join("saved.tar");
    n.ok(&["save", "-o", &archive.to_string_lossy(), "local/saved:v1"]);
    n.ok(&["rmi", "local/saved:v1"]);
    let images = n.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(!images.contains("local/saved:v1"), "{images}");
    let loaded = n.ok(&["load", "-i", &archive.to_string_lossy()]);
    assert!(loaded.contains("docker.io/local/saved:v1"), "{loaded}");
    let out = n.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "local/saved:v1",
        "echo",
        "loaded",
    ]);
    assert_eq!(out.trim(), "loaded");
    n.ok(&["rmi", "local/saved:v1"]);
}

#[test]
fn nerdctl_networks_ports_and_volumes() {
    let Some(mut n) = Nerdctl::start("nerdctl::nerdctl_networks_ports_and_volumes", "") else {
        return;
    };
    let image = n.image.clone();
    n.ok(&["pull", "--insecure-registry", "--quiet", &image]);

    let net = format!("nt{}", std::process::id());
    n.networks.push(net.clone());
    n.ok(&["network", "create", &net]);
    let made = bridges_in(&n.dir.path().join("net.d"));
    n.bridges.extend(made);
    let ls = n.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(ls.lines().any(|l| l == net), "{ls}");

    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    n.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        "-p",
        &publish,
        &image,
        "sh",
        "-c",
        "echo hello-from-nerdctl > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
    ]);
    let ports = n.ok(&["port", "web"]);
    assert!(
        ports.contains(&format!("80/tcp -> 127.0.0.1:{port}")),
        "{ports}"
    );
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let curl = Command::new("curl")
            .args(["-sS", "--max-time", "2", &url])
            .output()
            .expect("run curl (apt-get install curl)");
        let body = String::from_utf8_lossy(&curl.stdout);
        if body.trim() == "hello-from-nerdctl" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "curl {url}: {body} {}",
            String::from_utf8_lossy(&curl.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A second container on the network finds the first by name (nerdctl's /etc/hosts).
    let out = n.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        &image,
        "wget",
        "-qO-",
        "http://web/",
    ]);
    assert_eq!(out.trim(), "hello-from-nerdctl");
    n.ok(&["rm", "-f", "web"]);
    n.ok(&["network", "rm", &net]);
    let ls = n.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.lines().any(|l| l == net), "{ls}");

    // A volume's data outlives the container that wrote it.
    let vol = format!("nv{}", std::process::id());
    n.volumes.push(vol.clone());
    n.ok(&["volume", "create", &vol]);
    assert!(n.ok(&["volume", "ls", "-q"]).lines().any(|l| l == vol));
    let mount = format!("{vol}:/data");
    n.ok(&[
        "run",
        "--rm",
        "--net",
        "none",
        "-v",
        &mount,
        &image,
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    // On the default network: nerdctl's hooks attach it to the test's own bridge.
    let out = n.ok(&["run", "--rm", "-v", &mount, &image, "cat", "/data/f"]);
    assert_eq!(out.trim(), "kept");
    n.ok(&["volume", "rm", &vol]);
    assert!(!n.ok(&["volume", "ls", "-q"]).lines().any(|l| l == vol));
}
