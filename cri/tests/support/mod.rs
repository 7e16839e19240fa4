//! A berthd with its CRI, and CRI containers made the way berth's CRI makes them (until
//! CreateContainer is served): a record in `k8s.io` with the `sandbox` field and the kind
//! label, its spec's `linux.cgroupsPath` under a cgroup parent of the test's own, output to a
//! CRI log through the shim's `cri-log://` writer and stdin from a FIFO in the CRI's state dir.
//! Everything is removed when the [`Env`] drops.

#![allow(dead_code)]

use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::{container::Runtime, Container, CreateContainerRequest};
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::PrepareSnapshotRequest;
use berth::containers::{DEFAULT_RUNTIME, SPEC_TYPE_URL};
use berth::spec::{ContainerConfig, Network};
use berth::tasks::TaskIo;
use berth_api::runtime::v1::runtime_service_client::RuntimeServiceClient;
use berth_testkit::berthd::{process_token, Daemon};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub const NS: &str = "k8s.io";
pub const IMAGE: &str = "docker.io/library/busybox-cri-stream:test";
const APPLETS: &[&str] = &[
    "sh", "echo", "true", "cat", "sleep", "httpd", "stty", "head", "mkdir", "yes",
];

pub struct Env {
    pub daemon: Daemon,
    pub client: berth::Client,
    pub cri: RuntimeServiceClient<Channel>,
    pub dir: tempfile::TempDir,
    /// The cgroup every container of this test lives under.
    pub cgroup_parent: String,
    chain_id: String,
    made: Mutex<Vec<String>>,
    netns: Mutex<Vec<berth_net::AttachmentKey>>,
}

impl Env {
    pub async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon.cri_socket().exists() {
            assert!(Instant::now() < deadline, "no CRI socket");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let image = berth_testkit::image::busybox_oci_archive_with(dir.path(), IMAGE, APPLETS)
            .expect("build the busybox image");
        daemon.ctr(NS, &["images", "import", image.path.to_str().unwrap()]);
        let client = berth::Client::from_channel(daemon.channel().await, NS);
        let cri = RuntimeServiceClient::new(berth::connect(daemon.cri_socket()).await.unwrap());
        Env {
            daemon,
            client,
            cri,
            dir,
            // One per Env: each removes its parent when it goes, which would pull it from
            // under another test's runc create.
            cgroup_parent: format!("/berth-cri-test-{}-{}", process_token(), next_env()),
            chain_id: image.diff_id,
            made: Mutex::new(Vec::new()),
            netns: Mutex::new(Vec::new()),
        }
    }

    pub fn cri_state(&self) -> PathBuf {
        self.daemon.state().join("cri")
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    fn net(&self) -> berth_net::Net {
        let mut config =
            berth_net::NetConfig::new(self.dir.path().join("no-cni"), self.cri_state().join("net"));
        config.bin_dirs = berth_net::NetConfig::default_bin_dirs();
        config.peer_hosts = false;
        berth_net::Net::new(config).expect("open berth-net")
    }

    /// A pod sandbox record; with `netns`, a network namespace of its own from berth-net
    /// (lo up), whose path is returned.
    pub async fn pod(&self, id: &str, labels: &[(&str, &str)], netns: bool) -> Option<PathBuf> {
        let mut all: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert("io.cri-containerd.kind".into(), "sandbox".into());
        let spec = serde_json::json!({"ociVersion": "1.0.2", "linux": {}});
        self.create_record(id, "", all, spec, false).await;
        if !netns {
            return None;
        }
        let key = berth_net::AttachmentKey::new(NS, id);
        let attachment = self
            .net()
            .setup(&key, &berth_net::attach::AttachOptions::default())
            .expect("make the pod's netns");
        self.netns.lock().unwrap().push(key);
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", attachment.netns.display()))
            .args(["ip", "link", "set", "lo", "up"])
            .output()
            .unwrap();
        assert!(out.status.success(), "lo up: {out:?}");
        Some(attachment.netns)
    }

    async fn create_record(
        &self,
        id: &str,
        sandbox: &str,
        labels: HashMap<String, String>,
        spec: serde_json::Value,
        rootfs: bool,
    ) {
        let lease = self
            .client
            .leases()
            .create(Duration::from_secs(600))
            .await
            .unwrap();
        if rootfs {
            SnapshotsClient::new(self.client.channel().clone())
                .prepare(lease.request(PrepareSnapshotRequest {
                    snapshotter: "overlayfs".into(),
                    key: id.into(),
                    parent: self.chain_id.clone(),
                    labels: HashMap::new(),
                }))
                .await
                .unwrap();
        }
        let container = Container {
            id: id.into(),
            labels,
            image: if rootfs { IMAGE.into() } else { String::new() },
            runtime: Some(Runtime {
                name: DEFAULT_RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(&spec).unwrap(),
            }),
            snapshotter: if rootfs {
                "overlayfs".into()
            } else {
                String::new()
            },
            snapshot_key: if rootfs { id.into() } else { String::new() },
            sandbox: sandbox.into(),
            ..Default::default()
        };
        ContainersClient::new(self.client.channel().clone())
            .create(lease.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .unwrap();
        lease.release().await.unwrap();
        self.made.lock().unwrap().push(id.to_string());
    }

    /// A running CRI container of `pod` running `cmd`, in `netns` (else the host's network).
    pub async fn container(
        &self,
        id: &str,
        pod: &str,
        cmd: &[&str],
        tty: bool,
        netns: Option<&Path>,
        labels: &[(&str, &str)],
    ) {
        let details = self.client.images().inspect(IMAGE).await.unwrap();
        let config = ContainerConfig {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            network: Network::Host,
            tty,
            ..Default::default()
        };
        let spec = berth::spec::generate(
            NS,
            id,
            &details.config,
            &config,
            &berth::user::ResolvedUser::default(),
        )
        .unwrap();
        let mut spec = serde_json::to_value(&spec).unwrap();
        spec["linux"]["cgroupsPath"] = format!("{}/{id}", self.cgroup_parent).into();
        if let Some(ns) = netns {
            let nss = spec["linux"]["namespaces"].as_array_mut().unwrap();
            nss.retain(|n| n["type"] != "network");
            nss.push(serde_json::json!({"type": "network", "path": ns}));
        }
        let mut all: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert("io.cri-containerd.kind".into(), "container".into());
        all.insert("io.kubernetes.container.name".into(), format!("name-{id}"));
        self.create_record(id, pod, all, spec, true).await;

        let io_dir = self.cri_state().join("io").join(id);
        std::fs::create_dir_all(&io_dir).unwrap();
        let stdin = io_dir.join("stdin");
        nix::unistd::mkfifo(&stdin, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let log = format!("cri-log://{}", self.log_path(id).display());
        let io = TaskIo {
            stdin: stdin.display().to_string(),
            stdout: log.clone(),
            stderr: if tty { String::new() } else { log },
            terminal: tty,
        };
        let info = self.client.containers().get_by_id(id).await.unwrap();
        let tasks = self.client.tasks();
        tasks.create(&info, &io).await.unwrap();
        tasks.start(id, "").await.unwrap();
    }

    /// The CRI log's content lines so far.
    pub fn log_lines(&self, id: &str) -> Vec<String> {
        std::fs::read_to_string(self.log_path(id))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
            .collect()
    }
}

/// A number per Env of this test process.
fn next_env() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Drop for Env {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        for id in made.iter().rev() {
            let _ = self
                .daemon
                .ctr_raw(NS, &["tasks", "kill", "-a", "-s", "SIGKILL", id]);
            let _ = self.daemon.ctr_raw(NS, &["tasks", "rm", "-f", id]);
            let _ = self.daemon.ctr_raw(NS, &["containers", "rm", id]);
        }
        for key in std::mem::take(&mut *self.netns.lock().unwrap()) {
            let _ = self.net().teardown(&key);
        }
        // Container cgroups first, then the parent, in every hierarchy that has it.
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let parent = e.path().join(self.cgroup_parent.trim_start_matches('/'));
                for id in &made {
                    let _ = std::fs::remove_dir(parent.join(id));
                }
                let _ = std::fs::remove_dir(&parent);
            }
        }
        let unified = Path::new("/sys/fs/cgroup").join(self.cgroup_parent.trim_start_matches('/'));
        let _ = std::fs::remove_dir(unified);
    }
}

/// Builds the client-go test program of cri-stream once per test binary.
pub fn stream_client() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cri-stream-client");
        let status = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../cri-stream/tests/go"
            ))
            .status()
            .expect("run go build (scripts/deps-cri-stream.sh fetches its modules)");
        assert!(status.success(), "go build of the streaming client failed");
        bin
    })
    .clone()
}

/// Runs the streaming client with `stdin`, bounded in time.
pub async fn run_client(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(stream_client())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("client {args:?} did not finish in time"),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
