//! Pods and containers through berthd's CRI, driven by the real crictl (cri-tools v1.37.0):
//! runp with a bridge + host-local + portmap + loopback conflist of the test's own, create,
//! start, ps, inspect, exec -s (ExecSync: exit codes, timeout, bounded output), update, stop,
//! rm, stopp, rmp; the pod's DNS, hostname, sysctls and IP seen from inside; CRI logs; the
//! idempotence rules; and berthd killed -9 and restarted with a pod running. Needs root,
//! berthd built in this target dir, crictl (scripts/deps-cri-tools.sh), Debian's CNI plugins
//! and busybox-static.
//!
//! crictl's `exec`, `inspect` and `ps` first validate the CRI ImageService (ImageFsInfo), which
//! is another part of issue 14: until it is served, ExecSync, ContainerStatus and ListContainers
//! are called here with the generated runtime.v1 client over the same socket (a real gRPC
//! client, no mock); every other step is crictl.

#[path = "support/crictl_files.rs"]
mod crictl_files;

use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::runtime_service_client::RuntimeServiceClient;
use berth_testkit::berthd::Daemon;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const APPLETS: &[&str] = &[
    "sh", "echo", "true", "cat", "sleep", "hostname", "id", "ip", "head", "yes", "ls",
];

/// A berthd with its CRI, a CNI conflist of its own and the busybox fixture in k8s.io; every
/// pod is removed through the CRI when dropped (containers, network, holders).
struct Env {
    daemon: Daemon,
    /// Held for its removal at drop: the image archive and the crictl files live in it.
    _dir: tempfile::TempDir,
    files: crictl_files::CrictlFiles,
    subnet_prefix: String,
    bridge: String,
}

impl Env {
    fn new(bridge: &str, subnet_prefix: &str) -> Env {
        Self::with_config(bridge, subnet_prefix, "")
    }

    /// [`Env::new`] with extra berthd configuration.
    fn with_config(bridge: &str, subnet_prefix: &str, toml: &str) -> Env {
        let daemon = Daemon::start_with_config(toml);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.cri_socket().exists() {
            assert!(Instant::now() < deadline, "no CRI socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        let conf_dir = daemon.cri_socket().with_file_name("cri-net.d");
        crictl_files::write_pods_conflist(&conf_dir, bridge, subnet_prefix);
        let dir = tempfile::tempdir().expect("temp dir");
        let applets: Vec<&str> = APPLETS.to_vec();
        let archive = berth_testkit::image::busybox_oci_archive_with(dir.path(), IMAGE, &applets)
            .expect("build the busybox image");
        daemon.ctr(
            "k8s.io",
            &["images", "import", &archive.path.to_string_lossy()],
        );
        Env {
            daemon,
            files: crictl_files::CrictlFiles::new(dir.path()),
            _dir: dir,
            subnet_prefix: subnet_prefix.to_string(),
            bridge: bridge.to_string(),
        }
    }

    fn crictl(&self, args: &[&str]) -> Output {
        berth_testkit::crictl::run(&self.daemon.cri_socket(), "60s", args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(
            out.status.success(),
            "crictl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("crictl {args:?}: {e}: {text}"))
    }

    fn pod_config(&self, name: &str) -> String {
        self.files.pod_config(
            name,
            "test",
            serde_json::json!({
                "hostname": format!("{name}-host"),
                "dns_config": {"servers": ["10.96.0.10"], "searches": ["svc.example"], "options": ["ndots:3"]},
                "linux": {"sysctls": {"net.ipv4.ip_unprivileged_port_start": "100"}},
            }),
        )
    }

    fn container_config(&self, name: &str, command: &[&str], extra: Value) -> String {
        let mut v = serde_json::json!({"envs": [{"key": "GREETING", "value": "hi there"}],});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        self.files.container_config(name, IMAGE, command, v)
    }

    /// One RPC on the generated runtime.v1 client.
    fn rpc<T>(
        &self,
        f: impl AsyncFnOnce(
            RuntimeServiceClient<tonic::transport::Channel>,
        ) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let channel = berth::connect(self.daemon.cri_socket())
                .await
                .expect("connect to the CRI socket");
            f(RuntimeServiceClient::new(channel).max_decoding_message_size(64 << 20))
                .await
                .map(tonic::Response::into_inner)
        })
    }

    fn exec_sync(
        &self,
        ctr: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let req = cri::ExecSyncRequest {
            container_id: ctr.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        self.rpc(async move |mut c| c.exec_sync(req).await)
    }

    fn exec(&self, ctr: &str, cmd: &[&str]) -> String {
        let r = self
            .exec_sync(ctr, cmd, 0)
            .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"));
        assert_eq!(
            r.exit_code,
            0,
            "exec {cmd:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        String::from_utf8_lossy(&r.stdout).trim().to_string()
    }

    fn status(&self, ctr: &str) -> Result<cri::ContainerStatus, tonic::Status> {
        let req = cri::ContainerStatusRequest {
            container_id: ctr.to_string(),
            verbose: false,
        };
        self.rpc(async move |mut c| c.container_status(req).await)
            .map(|r| r.status.expect("a status"))
    }

    fn list(&self, filter: cri::ContainerFilter) -> Vec<cri::Container> {
        let req = cri::ListContainersRequest {
            filter: Some(filter),
        };
        self.rpc(async move |mut c| c.list_containers(req).await)
            .expect("ListContainers")
            .containers
    }

    fn wait_state(&self, ctr: &str, state: cri::ContainerState) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.status(ctr).expect("ContainerStatus");
            if v.state == state as i32 {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{ctr} never reached {state:?}: {v:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.crictl(&["rmp", "-a", "-f"]);
        // The bridge plugin's DEL leaves its bridge.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod's namespace holder starts beside its CNI chain: a pod whose network cannot be set up
/// (the IP range is spent) fails RunPodSandbox with the IPAM plugin's error and leaves neither a
/// holder (found by the hostname of its UTS namespace) nor a network attachment; the pod that
/// took the range's one address is untouched.
#[test]
fn a_pod_whose_network_fails_leaves_no_holder_or_attachment() {
    let env = Env::new("bcricore5", "10.233.45");
    let conflist = env
        .daemon
        .cri_socket()
        .with_file_name("cri-net.d")
        .join("10-pods.conflist");
    std::fs::write(
        &conflist,
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
        {"type":"bridge","bridge":"bcricore5","isGateway":true,"ipMasq":false,
         "ipam":{"type":"host-local","ranges":[[{"subnet":"10.233.45.0/24",
           "rangeStart":"10.233.45.9","rangeEnd":"10.233.45.9"}]]}},
        {"type":"loopback"}]}"#,
    )
    .expect("write the conflist");
    let first = env.ok(&["runp", &env.pod_config("netfail-ok")]);
    let out = env.crictl(&["runp", &env.pod_config("netfail-spent")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no IP addresses available"),
        "the second pod: {out:?}"
    );
    let holders = holder_hostnames();
    assert!(
        holders.contains(&"netfail-ok-host".to_string()),
        "{holders:?}"
    );
    assert!(
        !holders.contains(&"netfail-spent-host".to_string()),
        "the failed pod's holder is left: {holders:?}"
    );
    let attachments: Vec<String> = std::fs::read_dir(
        env.daemon
            .state()
            .join("cri")
            .join("net")
            .join("attachments")
            .join("k8s.io"),
    )
    .expect("the attachments")
    .flatten()
    .map(|e| e.file_name().to_string_lossy().into_owned())
    .collect();
    assert_eq!(attachments, [first.as_str()], "attachments");
    let pods = env.ok(&["pods", "-q"]);
    assert_eq!(pods.lines().collect::<Vec<_>>(), [first.as_str()]);
}

/// The hostnames of the pod holders of this build's berthd (any test's), read in each one's UTS
/// namespace.
fn holder_hostnames() -> Vec<String> {
    let binary = berth_testkit::berthd::berthd_binary()
        .canonicalize()
        .expect("berthd's path");
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(exe), Ok(cmdline)) = (
            std::fs::read_link(format!("/proc/{pid}/exe")),
            std::fs::read(format!("/proc/{pid}/cmdline")),
        ) else {
            continue;
        };
        if exe != binary || cmdline.split(|&b| b == 0).nth(1) != Some(b"cri-holder".as_slice()) {
            continue;
        }
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-u", "hostname"])
            .output()
            .expect("run nsenter");
        if out.status.success() {
            names.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
    }
    names
}

#[test]
fn crictl_runs_a_pod_and_its_containers() {
    let env = Env::new("bcricore0", "10.233.40");
    let pod = env.ok(&["runp", &env.pod_config("web")]);
    assert!(is_id(&pod), "pod id {pod:?}");

    let status = env.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(status["status"]["state"], "SANDBOX_READY", "{status}");
    let ip = status["status"]["network"]["ip"]
        .as_str()
        .expect("a pod IP")
        .to_string();
    assert!(
        ip.starts_with(&format!("{}.", env.subnet_prefix)),
        "pod IP {ip}"
    );
    assert_eq!(status["status"]["metadata"]["name"], "web");
    let pods = env.json(&["pods", "-o", "json", "--label", "nothing=here"]);
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(0), "{pods}");
    let pods = env.json(&["pods", "-o", "json", "--state", "ready"]);
    assert_eq!(pods["items"][0]["id"], pod.as_str(), "{pods}");

    let pod_json = env.pod_config("web");
    let ctr_json = env.container_config(
        "app",
        &["sh", "-c", "echo hello-out; echo hello-err >&2; exec sleep 3600"],
        serde_json::json!({"linux": {"security_context": {"run_as_user": {"value": 1000}, "supplemental_groups": [4242]}}}),
    );
    let ctr = env.ok(&["create", &pod, &ctr_json, &pod_json]);
    assert!(is_id(&ctr), "container id {ctr:?}");
    let created = env.status(&ctr).expect("ContainerStatus");
    assert_eq!(
        created.state,
        cri::ContainerState::ContainerCreated as i32,
        "{created:?}"
    );
    // The record, as any containerd client sees it.
    let records = env.daemon.ctr("k8s.io", &["containers", "ls", "-q"]);
    assert!(
        records.contains(&ctr) && records.contains(&pod),
        "{records}"
    );

    env.ok(&["start", &ctr]);
    let running = env.wait_state(&ctr, cri::ContainerState::ContainerRunning);
    assert!(running.started_at > 0, "{running:?}");
    assert_eq!(
        running.image.as_ref().map(|i| i.image.as_str()),
        Some(IMAGE)
    );
    assert!(running.image_ref.contains("@sha256:"), "{running:?}");
    assert!(running.log_path.ends_with("web/app.log"), "{running:?}");
    let ps = env.list(cri::ContainerFilter {
        pod_sandbox_id: pod.clone(),
        ..Default::default()
    });
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].id, ctr);
    assert_eq!(ps[0].state, cri::ContainerState::ContainerRunning as i32);

    // The pod's DNS config, hostname, sysctl, IP and the container's user and env.
    let resolv = env.exec(&ctr, &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("svc.example"), "{resolv}");
    assert!(resolv.contains("ndots:3"), "{resolv}");
    assert_eq!(env.exec(&ctr, &["hostname"]), "web-host");
    assert_eq!(
        env.exec(
            &ctr,
            &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]
        ),
        "100"
    );
    let addr = env.exec(&ctr, &["ip", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("inet {ip}/")), "{addr}");
    assert_eq!(env.exec(&ctr, &["id", "-u"]), "1000");
    assert!(env
        .exec(&ctr, &["id", "-G"])
        .split_whitespace()
        .any(|g| g == "4242"));
    assert_eq!(env.exec(&ctr, &["sh", "-c", "echo $GREETING"]), "hi there");
    // The open-files limit is the daemon's (it inherits this test's), not a fixed 1024.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let want = match hard {
        nix::sys::resource::RLIM_INFINITY => "unlimited".to_string(),
        n => n.to_string(),
    };
    assert_eq!(env.exec(&ctr, &["sh", "-c", "ulimit -Hn"]), want);

    // ExecSync: exit codes, stderr apart, a timeout, output bounded.
    let r = env
        .exec_sync(&ctr, &["sh", "-c", "echo oops >&2; exit 3"], 0)
        .expect("ExecSync");
    assert_eq!(r.exit_code, 3, "{r:?}");
    assert_eq!(String::from_utf8_lossy(&r.stderr).trim(), "oops");
    let t0 = Instant::now();
    let e = env
        .exec_sync(&ctr, &["sleep", "30"], 2)
        .expect_err("a 30 s sleep beat a 2 s timeout");
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let big = env
        .exec_sync(&ctr, &["sh", "-c", "yes | head -c 12000000"], 0)
        .expect("ExecSync of 12 MB");
    assert_eq!(big.exit_code, 0);
    assert_eq!(
        big.stdout.len(),
        berth_cri::EXEC_SYNC_MAX_OUTPUT,
        "ExecSync output is bounded"
    );
    assert!(big.stdout.starts_with(b"y\ny\n"));

    // The CRI log.
    let log = env.files.logs_dir().join("web").join("app.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("hello-err") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains(" stdout F hello-out"), "{text}");
    assert!(text.contains(" stderr F hello-err"), "{text}");
    // ReopenContainerLog after the kubelet's rotation: the file is back at once.
    std::fs::rename(&log, log.with_extension("log.1")).expect("rotate");
    env.ok(&["logs", "--reopen", &ctr]);
    assert!(log.exists(), "ReopenContainerLog left no file");

    // The container's shim is charged to its pod: it is in the pod's cgroup everywhere.
    for dir in pod_cgroup_dirs(&pod) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("cgroup.procs");
        assert!(
            procs.lines().any(|pid| is_shim_of(pid, &ctr)),
            "no shim of {ctr} in {}: {procs:?}",
            dir.display()
        );
    }

    // UpdateContainerResources reaches the cgroup.
    env.ok(&["update", "--memory", "104857600", &ctr]);
    let status = env.status(&ctr).expect("ContainerStatus");
    let limit = status
        .resources
        .and_then(|r| r.linux)
        .map(|l| l.memory_limit_in_bytes);
    assert_eq!(limit, Some(104857600));
    let limit_file = Path::new("/sys/fs/cgroup/memory")
        .join(format!("k8s.io/{pod}/{ctr}"))
        .join("memory.limit_in_bytes");
    if limit_file.exists() {
        let limit = std::fs::read_to_string(&limit_file).expect("read the limit");
        assert_eq!(limit.trim(), "104857600");
    }

    // A container that completes.
    let done_json = env.container_config("done", &["sh", "-c", "echo bye; exit 0"], Value::Null);
    let done = env.ok(&["create", &pod, &done_json, &pod_json]);
    env.ok(&["start", &done]);
    let exited = env.wait_state(&done, cri::ContainerState::ContainerExited);
    assert_eq!((exited.exit_code, exited.reason.as_str()), (0, "Completed"));
    assert!(exited.finished_at >= exited.started_at, "{exited:?}");
    let failing_json = env.container_config("fails", &["sh", "-c", "exit 7"], Value::Null);
    let failing = env.ok(&["create", &pod, &failing_json, &pod_json]);
    env.ok(&["start", &failing]);
    let exited = env.wait_state(&failing, cri::ContainerState::ContainerExited);
    assert_eq!((exited.exit_code, exited.reason.as_str()), (7, "Error"));
    // A second start of an exited container is refused.
    assert!(!env.crictl(&["start", &failing]).status.success());
    // The same name again in the pod is refused.
    assert!(!env
        .crictl(&["create", &pod, &failing_json, &pod_json])
        .status
        .success());

    // Stop: sleep dies of SIGTERM; a shell that ignores it gets SIGKILL after the timeout.
    let stubborn_json = env.container_config(
        "stubborn",
        &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
        Value::Null,
    );
    let stubborn = env.ok(&["create", &pod, &stubborn_json, &pod_json]);
    env.ok(&["start", &stubborn]);
    env.wait_state(&stubborn, cri::ContainerState::ContainerRunning);
    // The pod's containers share its /dev/shm (as its IPC namespace), a tmpfs of the pod's.
    let pod_shm = env.daemon.state().join("cri/pods").join(&pod).join("shm");
    assert!(mounted(&pod_shm), "no shm at {}", pod_shm.display());
    env.exec(&ctr, &["sh", "-c", "echo shared > /dev/shm/segment"]);
    assert_eq!(env.exec(&stubborn, &["cat", "/dev/shm/segment"]), "shared");
    env.ok(&["stop", "--timeout", "10", &ctr]);
    let stopped = env.status(&ctr).expect("ContainerStatus");
    assert_eq!(stopped.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(stopped.exit_code, 143, "{stopped:?}");
    assert!(stopped.started_at >= stopped.created_at, "{stopped:?}");
    let t0 = Instant::now();
    env.ok(&["stop", "--timeout", "2", &stubborn]);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    let stopped = env.status(&stubborn).expect("ContainerStatus");
    assert_eq!(stopped.exit_code, 137, "{stopped:?}");
    env.ok(&["stop", &ctr]);
    let exited = env.list(cri::ContainerFilter {
        pod_sandbox_id: pod.clone(),
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerExited as i32,
        }),
        ..Default::default()
    });
    assert_eq!(exited.len(), 4, "{exited:?}");
    env.ok(&["rm", &ctr]);
    let e = env.status(&ctr).expect_err("a removed container");
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Stop the pod: containers stopped, network gone; again is fine.
    let netns = records_netns(&env, &pod);
    env.ok(&["stopp", &pod]);
    env.ok(&["stopp", &pod]);
    let status = env.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(status["status"]["state"], "SANDBOX_NOTREADY", "{status}");
    if let Some(ns) = netns {
        assert!(!Path::new(&ns).exists(), "netns {ns} outlived stopp");
    }
    assert!(!mounted(&pod_shm), "the pod's shm outlived stopp");
    // The pod's cgroup (berth's default parent, as crictl gives none) is in every hierarchy
    // until the pod is removed, and then nowhere.
    let cgroups = pod_cgroup_dirs(&pod);
    assert!(!cgroups.is_empty(), "no cgroup for pod {pod}");
    env.ok(&["rmp", &pod]);
    let left: Vec<_> = cgroups.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "the pod's cgroup outlived rmp: {left:?}");
    let out = env.crictl(&["inspectp", &pod]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
    let records = env.daemon.ctr("k8s.io", &["containers", "ls", "-q"]);
    assert!(records.trim().is_empty(), "records left: {records}");
}

/// Where berth's default cgroup parent of `pod` (`/k8s.io/<pod>`) is, in each hierarchy that
/// has it now.
fn pod_cgroup_dirs(pod: &str) -> Vec<std::path::PathBuf> {
    berth_testkit::cgroups::existing(&format!("/k8s.io/{pod}")).expect("read the cgroup mounts")
}

/// Whether process `pid` is the berth-shim serving container `id` (`--id ID` on its command line).
fn is_shim_of(pid: &str, id: &str) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.first().is_some_and(|a| a.ends_with(b"berth-shim"))
        && args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
}

/// The pod's netns path, from its verbose status.
fn records_netns(env: &Env, pod: &str) -> Option<String> {
    let v = env.json(&["inspectp", "-o", "json", pod]);
    let info = match &v["info"]["info"] {
        Value::String(s) => serde_json::from_str(s).ok()?,
        other => other.clone(),
    };
    info["netns"].as_str().map(String::from)
}

#[test]
fn bad_requests_change_nothing() {
    let env = Env::new("bcricore1", "10.233.41");
    assert_eq!(
        env.status("0123abcd").expect_err("unknown").code(),
        tonic::Code::NotFound
    );
    for args in [vec!["inspectp", "0123abcd"], vec!["start", &"a".repeat(64)]] {
        let out = env.crictl(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("NotFound"),
            "{args:?}: {out:?}"
        );
    }
    // Stop and remove of what is not there succeed (the RPCs themselves: crictl's rm and rmp
    // look the id up first).
    let (b, c) = ("b".repeat(64), "c".repeat(64));
    env.rpc(async |mut r| {
        r.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: b.clone(),
        })
        .await
    })
    .expect("StopPodSandbox of a missing pod");
    env.rpc(async |mut r| {
        r.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: b.clone(),
        })
        .await
    })
    .expect("RemovePodSandbox of a missing pod");
    env.rpc(async |mut r| {
        r.stop_container(cri::StopContainerRequest {
            container_id: c.clone(),
            timeout: 0,
        })
        .await
    })
    .expect("StopContainer of a missing container");
    env.rpc(async |mut r| {
        r.remove_container(cri::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
    })
    .expect("RemoveContainer of a missing container");
    // A pod without a name, a container of an unknown image: refused, nothing created.
    let nameless = env.files.write(
        "nameless.json",
        &serde_json::json!({"metadata": {"namespace": "test", "uid": "x"}}),
    );
    let out = env.crictl(&["runp", &nameless]);
    assert!(!out.status.success());
    let pod = env.ok(&["runp", &env.pod_config("lonely")]);
    let missing = env.files.write(
        "missing.json",
        &serde_json::json!({"metadata": {"name": "m"}, "image": {"image": "example.com/none:1"}, "command": ["true"]}),
    );
    let out = env.crictl(&["create", &pod, &missing, &env.pod_config("lonely")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
    // Id mappings on a mount of a pod in the host's user namespace are refused.
    let map = serde_json::json!([{"container_id": 0, "host_id": 100000, "length": 65536}]);
    let mapped = env.container_config(
        "mapped",
        &["true"],
        serde_json::json!({"mounts": [{"container_path": "/data", "host_path": "/tmp",
            "uidMappings": map, "gidMappings": map}]}),
    );
    let out = env.crictl(&["create", &pod, &mapped, &env.pod_config("lonely")]);
    assert!(
        !out.status.success(),
        "a mapped mount outside a user namespace was accepted"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("InvalidArgument"),
        "{out:?}"
    );
    assert!(env.list(cri::ContainerFilter::default()).is_empty());
    // The same pod name again is refused.
    assert!(!env
        .crictl(&["runp", &env.pod_config("lonely")])
        .status
        .success());
    // User namespaces a pod cannot have are refused, not silently ignored: several or
    // root-less mappings, CONTAINER and TARGET modes, mappings with NODE, and a pod user
    // namespace with the host's network.
    let map = serde_json::json!([{"container_id": 0, "host_id": 100000, "length": 65536}]);
    let two = serde_json::json!([{"container_id": 0, "host_id": 100000, "length": 65536},
        {"container_id": 0, "host_id": 200000, "length": 65536}]);
    let rootless = serde_json::json!([{"container_id": 1, "host_id": 100000, "length": 65536}]);
    for (name, userns, code) in [
        (
            "userns-two",
            serde_json::json!({"mode": 0, "uids": two, "gids": two}),
            "InvalidArgument",
        ),
        (
            "userns-rootless",
            serde_json::json!({"mode": 0, "uids": rootless, "gids": rootless}),
            "InvalidArgument",
        ),
        (
            "userns-hostnet",
            serde_json::json!({"mode": 0, "uids": map, "gids": map}),
            "InvalidArgument",
        ),
        (
            "userns-ctr",
            serde_json::json!({"mode": 1}),
            "InvalidArgument",
        ),
        (
            "userns-target",
            serde_json::json!({"mode": 3}),
            "InvalidArgument",
        ),
        (
            "userns-node-mapped",
            serde_json::json!({"mode": 2, "uids": map}),
            "InvalidArgument",
        ),
    ] {
        let network = if name == "userns-hostnet" { 2 } else { 0 };
        let cfg = env.files.write(
            &format!("{name}-pod.json"),
            &serde_json::json!({
                "metadata": {"name": name, "namespace": "test", "uid": name, "attempt": 0},
                "linux": {"security_context": {"namespace_options":
                    {"network": network, "userns_options": userns}}},
            }),
        );
        let out = env.crictl(&["runp", &cfg]);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(code),
            "{name}: {out:?}"
        );
    }
    let node = env.files.write(
        "userns-node-pod.json",
        &serde_json::json!({
            "metadata": {"name": "userns-node", "namespace": "test", "uid": "userns-node", "attempt": 0},
            "log_directory": env.files.logs_dir().join("userns-node"),
            "linux": {"security_context": {"namespace_options": {"userns_options": {"mode": 2}}}},
        }),
    );
    let node_pod = env.ok(&["runp", &node]);
    env.ok(&["rmp", "-f", &node_pod]);
    let pods = env.json(&["pods", "-o", "json"]);
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(1), "{pods}");
}

/// How many calls of `Service/Method` berthd has answered, from its metrics.
fn handled(metrics_port: u16, method: &str) -> u64 {
    let (service, name) = method.split_once('/').expect("Service/Method");
    let prefix = format!(
        "grpc_server_handled_total{{grpc_service=\"containerd.services.{}.v1.{service}\",grpc_method=\"{name}\"",
        service.to_lowercase()
    );
    berth_testkit::berthd::metric_sum(
        &berth_testkit::berthd::scrape_metrics(metrics_port),
        &prefix,
    )
}

/// CreateContainer makes the container's record, then its rootfs snapshot, which the record
/// holds from the moment it is there: no lease around them. A snapshot that cannot be prepared
/// (here: the image's layers were removed from under it) fails the create and takes the record
/// back with it.
#[test]
fn create_container_takes_no_lease_and_undoes_its_record_when_the_rootfs_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let env = Env::with_config(
        "bcricore6",
        "10.233.46",
        &format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"),
    );
    let pod_config = env.pod_config("undo");
    let pod = env.ok(&["runp", &pod_config]);
    let leases = handled(port, "Leases/Create");
    let made = env.container_config("made", &["sleep", "60"], serde_json::json!({}));
    let id = env.ok(&["create", &pod, &made, &pod_config]);
    assert!(is_id(&id), "{id}");
    assert_eq!(
        handled(port, "Leases/Create"),
        leases,
        "CreateContainer took a lease"
    );
    env.ok(&["rm", &id]);

    // Every committed snapshot of the image goes (top first), so the next rootfs has no parent.
    let ctr = |args: &[&str]| env.daemon.ctr("k8s.io", args);
    loop {
        let keys = ctr(&["snapshots", "ls"]);
        let keys: Vec<&str> = keys
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let _ = env.daemon.ctr_raw("k8s.io", &["snapshots", "rm", key]);
        }
    }
    let records_before = ctr(&["containers", "ls", "-q"]);
    let orphan = env.container_config("orphan", &["sleep", "60"], serde_json::json!({}));
    let out = env.crictl(&["create", &pod, &orphan, &pod_config]);
    assert!(!out.status.success(), "created without a rootfs: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
    assert_eq!(
        ctr(&["containers", "ls", "-q"]),
        records_before,
        "a failed CreateContainer left its record"
    );
    assert!(env.list(cri::ContainerFilter::default()).is_empty());
    assert_eq!(ctr(&["snapshots", "ls"]).lines().skip(1).count(), 0);
}

#[test]
fn pods_survive_a_berthd_kill_9() {
    let mut env = Env::new("bcricore2", "10.233.42");
    let pod = env.ok(&["runp", &env.pod_config("keep")]);
    let ip = env.json(&["inspectp", "-o", "json", &pod])["status"]["network"]["ip"]
        .as_str()
        .expect("an IP")
        .to_string();
    let ctr_json = env.container_config("sleeper", &["sleep", "3600"], Value::Null);
    let ctr = env.ok(&["create", &pod, &ctr_json, &env.pod_config("keep")]);
    env.ok(&["start", &ctr]);
    env.wait_state(&ctr, cri::ContainerState::ContainerRunning);
    env.exec(&ctr, &["sh", "-c", "echo kept > /dev/shm/segment"]);
    // The directory of a pod that is gone (berthd died between making it and recording the
    // pod), its shm mounted: swept at the next start, the live pod's left alone.
    let pods = env.daemon.state().join("cri/pods");
    let stale = pods.join("5b".repeat(32));
    std::fs::create_dir_all(stale.join("shm")).unwrap();
    std::fs::write(stale.join("hostname"), "gone\n").unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "shm"])
        .arg(stale.join("shm"))
        .status()
        .unwrap();
    assert!(status.success());

    env.daemon.kill9();
    env.daemon.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.daemon.cri_socket().exists() || !env.crictl(&["version"]).status.success() {
        assert!(Instant::now() < deadline, "no CRI after the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !mounted(&stale.join("shm")) && !stale.exists(),
        "the gone pod's directory was kept"
    );
    assert!(
        mounted(&pods.join(&pod).join("shm")),
        "the live pod lost its shm"
    );
    assert_eq!(env.exec(&ctr, &["cat", "/dev/shm/segment"]), "kept");
    let status = env.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(status["status"]["state"], "SANDBOX_READY", "{status}");
    assert_eq!(status["status"]["network"]["ip"], ip.as_str(), "{status}");
    let c = env.status(&ctr).expect("ContainerStatus");
    assert_eq!(
        c.state,
        cri::ContainerState::ContainerRunning as i32,
        "{c:?}"
    );
    // The pod keeps its network: the address is still on its interface.
    let addr = env.exec(&ctr, &["ip", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("inet {ip}/")), "{addr}");
    env.ok(&["stopp", &pod]);
    env.ok(&["rmp", &pod]);
}

/// A pod with a user namespace of its own (NamespaceMode POD): its root is the mapping's first
/// host id, the image's files are owned by its root (idmapped layers), it writes its rootfs, runs
/// in the pod's network with an IP, ExecSync works, and all of it survives a berthd kill -9;
/// RuntimeStatus claims user namespaces; the pod's namespaces go with it. The container has a
/// PID namespace of its own (the kubelet's default; critest's POD spec uses the pod's).
#[test]
fn crictl_runs_a_pod_in_its_own_user_namespace() {
    const HOST_ID: u32 = 2_000_000;
    let mut env = Env::new("bcricore4", "10.233.44");
    let info = env.json(&["info", "-o", "json"]);
    assert_eq!(
        info["runtimeHandlers"][0]["features"]["user_namespaces"], true,
        "{info}",
    );
    let map = serde_json::json!([{"container_id": 0, "host_id": HOST_ID, "length": 65536}]);
    let pod_json = env.files.pod_config(
        "users",
        "test",
        serde_json::json!({
            "hostname": "users-host",
            "linux": {"security_context": {"namespace_options": {
                "network": 0, "pid": 1, "ipc": 0,
                "userns_options": {"mode": 0, "uids": map, "gids": map}}}},
        }),
    );
    let pod = env.ok(&["runp", &pod_json]);
    let status = env.json(&["inspectp", "-o", "json", &pod]);
    let ip = status["status"]["network"]["ip"]
        .as_str()
        .expect("an IP")
        .to_string();
    assert!(ip.starts_with(&env.subnet_prefix), "{status}");
    // crictl puts the verbose info's "info" entry, parsed, at "info".
    let verbose = &status["info"];
    let holder = verbose["holder"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("no holder pid in {status}"));
    let netns = verbose["netns"]
        .as_str()
        .expect("the pod's netns")
        .to_string();
    // The holder is the pod's root, in a user namespace of its own that owns the pod's netns.
    let uid_map = std::fs::read_to_string(format!("/proc/{holder}/uid_map")).expect("uid_map");
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", &HOST_ID.to_string(), "65536"]
    );
    assert_ne!(
        std::fs::read_link(format!("/proc/{holder}/ns/user")).unwrap(),
        std::fs::read_link("/proc/self/ns/user").unwrap()
    );
    assert!(mounted(Path::new(&netns)), "{netns} is not mounted");

    // A host directory mounted with the pod's maps (an idmapped bind mount, staged by berthd
    // since runc 1.1 has no idmap option): its root-owned file is root's inside, and what the
    // pod's root writes there is root's on the host. Another without maps shows host root's
    // files as nobody's.
    let host_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(host_dir.path().join("from-host"), "h").expect("write a host file");
    let ctr_json = env.container_config(
        "rooted",
        &["sleep", "3600"],
        serde_json::json!({"mounts": [
            {"container_path": "/data", "host_path": host_dir.path(),
             "uidMappings": map, "gidMappings": map},
            {"container_path": "/plain", "host_path": host_dir.path(), "readonly": true}]}),
    );
    let ctr = env.ok(&["create", &pod, &ctr_json, &pod_json]);
    env.ok(&["start", &ctr]);
    env.wait_state(&ctr, cri::ContainerState::ContainerRunning);
    let check = |env: &Env| {
        assert_eq!(env.exec(&ctr, &["id", "-u"]), "0");
        assert_eq!(env.ok(&["exec", "-s", &ctr, "id", "-g"]), "0");
        let m = env.exec(&ctr, &["cat", "/proc/self/uid_map"]);
        assert_eq!(
            m.split_whitespace().collect::<Vec<_>>(),
            ["0", &HOST_ID.to_string(), "65536"],
            "{m}"
        );
        // The image's files show their owner, root, through the pod's maps.
        let ls = env.exec(&ctr, &["ls", "-ln", "/bin/busybox"]);
        let owners: Vec<&str> = ls.split_whitespace().skip(2).take(2).collect();
        assert_eq!(owners, ["0", "0"], "{ls}");
        // Its root writes the rootfs (the upper layer is owned by the mapped root).
        let w = env.exec(
            &ctr,
            &["sh", "-c", "echo hi > /root-file && ls -ln /root-file"],
        );
        assert_eq!(
            w.split_whitespace().skip(2).take(2).collect::<Vec<_>>(),
            ["0", "0"],
            "{w}"
        );
        let addr = env.exec(&ctr, &["ip", "-4", "addr", "show", "eth0"]);
        assert!(addr.contains(&format!("inet {ip}/")), "{addr}");
        assert_eq!(env.exec(&ctr, &["hostname"]), "users-host");
        let owner = |path: &str| {
            let ls = env.exec(&ctr, &["ls", "-ln", path]);
            ls.split_whitespace()
                .skip(2)
                .take(2)
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(owner("/data/from-host"), ["0", "0"]);
        assert_eq!(owner("/plain/from-host"), ["65534", "65534"]);
        env.exec(&ctr, &["sh", "-c", "echo c > /data/from-pod"]);
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(host_dir.path().join("from-pod")).expect("the pod's file");
        assert_eq!((md.uid(), md.gid()), (0, 0), "the pod's file on the host");
    };
    check(&env);
    // On the host, the container's process runs as the mapping's first id.
    let inspect = env.json(&["inspect", "-o", "json", &ctr]);
    let pid = inspect["info"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {inspect}"));
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process status");
    let uid = st
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default();
    assert_eq!(
        uid.split_whitespace().nth(1),
        Some(HOST_ID.to_string().as_str()),
        "{st}"
    );

    env.daemon.kill9();
    env.daemon.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.daemon.cri_socket().exists() || !env.crictl(&["version"]).status.success() {
        assert!(Instant::now() < deadline, "no CRI after the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = env.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(status["status"]["state"], "SANDBOX_READY", "{status}");
    env.wait_state(&ctr, cri::ContainerState::ContainerRunning);
    check(&env);

    env.ok(&["stopp", &pod]);
    assert!(!mounted(Path::new(&netns)), "{netns} is still mounted");
    // SIGKILLed by StopPodSandbox; gone (or a zombie init has yet to reap) soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while berth_testkit::running(holder as u32) {
        assert!(
            Instant::now() < deadline,
            "the holder {holder} outlived its pod"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    env.ok(&["rmp", &pod]);
    let staged = env
        .daemon
        .state()
        .join("cri/idmapped-mounts")
        .join(&ctr)
        .join("0");
    assert!(!mounted(&staged), "{} is still mounted", staged.display());
}

/// Whether anything is mounted at `path` on the host.
fn mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Image volumes (the CRI's `Mount.image`): a pulled image mounted read-only, whole or one
/// path of it; refused when writable, unpulled or with a sub path the image lacks (nothing left
/// behind); reported with the image's id; kept across a berthd kill -9; unmounted and its view
/// removed with the container; and a mount left by a container that is gone swept at start.
#[test]
fn crictl_mounts_an_image_volume_read_only() {
    let mut env = Env::new("bcricore3", "10.233.43");
    let image_id = env.json(&["inspecti", "-o", "json", IMAGE])["status"]["id"]
        .as_str()
        .expect("the image's id")
        .to_string();
    let pod_json = env.pod_config("vols");
    let pod = env.ok(&["runp", &pod_json]);
    let volume = |path: &str, readonly: bool, sub: &str| {
        serde_json::json!({"container_path": path, "readonly": readonly,
            "image": {"image": IMAGE}, "image_sub_path": sub})
    };
    let ctr_json = env.container_config(
        "reader",
        &["sleep", "3600"],
        serde_json::json!({"mounts": [volume("/mnt/image", true, ""), volume("/mnt/etc", true, "etc")]}),
    );
    let ctr = env.ok(&["create", &pod, &ctr_json, &pod_json]);
    env.ok(&["start", &ctr]);
    env.wait_state(&ctr, cri::ContainerState::ContainerRunning);

    assert_eq!(
        env.exec(&ctr, &["cat", "/mnt/image/etc/passwd"]),
        "root:x:0:0:root:/root:/bin/sh"
    );
    assert_eq!(
        env.exec(&ctr, &["cat", "/mnt/etc/passwd"]),
        "root:x:0:0:root:/root:/bin/sh"
    );
    // Read-only, and not noexec: the image's own busybox runs from the volume.
    let w = env
        .exec_sync(&ctr, &["sh", "-c", "echo x > /mnt/image/new"], 0)
        .expect("ExecSync");
    assert_ne!(w.exit_code, 0, "a write to the image volume succeeded");
    assert!(
        String::from_utf8_lossy(&w.stderr).contains("Read-only"),
        "{w:?}"
    );
    assert_eq!(
        env.exec(&ctr, &["/mnt/image/bin/busybox", "echo", "ran"]),
        "ran"
    );
    let status = env.status(&ctr).expect("ContainerStatus");
    let m = status
        .mounts
        .iter()
        .find(|m| m.container_path == "/mnt/image")
        .expect("the image volume in the status");
    assert_eq!(
        m.image.as_ref().map(|i| i.image_ref.as_str()),
        Some(image_id.as_str())
    );
    assert!(m.readonly);

    // On the host: mounted under the CRI's state, the views held by the record.
    let dir = env.daemon.state().join("cri/image-volumes").join(&ctr);
    assert!(
        mounted(&dir.join("0")) && mounted(&dir.join("1")),
        "{dir:?}"
    );
    let snapshots = env.daemon.ctr("k8s.io", &["snapshots", "ls"]);
    assert!(
        snapshots.contains(&format!("{ctr}-image-volume-0")),
        "{snapshots}"
    );

    // Refused: writable, unpulled, a sub path the image lacks. Nothing is left of them.
    for (name, mount, code) in [
        ("rw", volume("/mnt/v", false, ""), "InvalidArgument"),
        (
            "unpulled",
            serde_json::json!({"container_path": "/mnt/v", "readonly": true,
                "image": {"image": "registry.example/none:1"}}),
            "NotFound",
        ),
        ("nosub", volume("/mnt/v", true, "not-there"), "NotFound"),
    ] {
        let json = env.container_config(name, &["true"], serde_json::json!({"mounts": [mount]}));
        let out = env.crictl(&["create", &pod, &json, &pod_json]);
        assert!(!out.status.success(), "{name}: created");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(code),
            "{name}: {out:?}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(env.daemon.state().join("cri/image-volumes"))
        .expect("the image volumes dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(&ctr)], "left behind");

    // A mount of a container that is gone (berthd died before its record was made): swept
    // at the next start. The running container keeps its volumes.
    let stale = env
        .daemon
        .state()
        .join("cri/image-volumes")
        .join("5a".repeat(32))
        .join("0");
    std::fs::create_dir_all(&stale).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&stale)
        .status()
        .unwrap();
    assert!(status.success());
    env.daemon.kill9();
    env.daemon.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.daemon.cri_socket().exists() || !env.crictl(&["version"]).status.success() {
        assert!(Instant::now() < deadline, "no CRI after the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!mounted(&stale) && !stale.exists(), "stale mount kept");
    assert_eq!(env.exec(&ctr, &["cat", "/mnt/etc/group"]), "root:x:0:");

    // Removed with the container: unmounted, the dir and the views gone.
    env.ok(&["stop", &ctr]);
    env.ok(&["rm", &ctr]);
    assert!(!mounted(&dir.join("0")) && !dir.exists(), "{dir:?} left");
    let snapshots = env.daemon.ctr("k8s.io", &["snapshots", "ls"]);
    assert!(!snapshots.contains("-image-volume-"), "{snapshots}");
    env.ok(&["stopp", &pod]);
    env.ok(&["rmp", &pod]);
}
