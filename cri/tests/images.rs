//! The CRI ImageService driven by the real crictl (cri-tools v1.37.0, scripts/deps-cri-tools.sh)
//! against critest's fixture images on Debian's docker-registry (scripts/critest/fixtures.sh,
//! started once per test binary): pull, images, inspecti, rmi, imagefsinfo; registry mirrors
//! from the test daemon's own hosts.toml dir (`[cri] registry_config_path`); a missing image;
//! credentials against an htpasswd registry (wrong ones fail and never reach the log); a few ms
//! deadline that fails with DeadlineExceeded and records nothing. Needs root, berthd built in
//! this target dir, docker-registry and skopeo.

#[path = "support/fixtures.rs"]
mod fixtures;

use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::image_service_client::ImageServiceClient;
use berth_testkit::berthd::Daemon;
use fixtures::fixtures;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const USER_UID: &str = "gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest";
const USER_NAME: &str = "gcr.io/k8s-staging-cri-tools/test-image-user-username-group:latest";
const TAGS: [&str; 3] = [
    "gcr.io/k8s-staging-cri-tools/test-image-tags:1",
    "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
    "gcr.io/k8s-staging-cri-tools/test-image-tags:3",
];

/// A berthd whose CRI takes its mirrors from its own certs.d, sending critest's three
/// registries to the fixture registry.
struct Cri {
    daemon: Daemon,
    dir: tempfile::TempDir,
    /// berthd's `[metrics]` listener on loopback.
    metrics_port: u16,
}

impl Cri {
    fn start() -> Cri {
        let dir = tempfile::Builder::new()
            .prefix("berth-cri-images-")
            .tempdir()
            .expect("temp dir");
        let certs = fixtures::certs_d(dir.path());
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let daemon = Daemon::start_with_config(&format!(
            "[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n\
             [cri]\naddress = {:?}\ncni_conf_dir = {:?}\nregistry_config_path = {:?}\n",
            dir.path().join("cri.sock"),
            dir.path().join("net.d"),
            certs,
        ));
        let cri = Cri {
            daemon,
            dir,
            metrics_port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cri.socket().exists() {
            assert!(Instant::now() < deadline, "no CRI socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        cri
    }

    /// The sum of the metrics series whose line starts with `prefix` (and a value).
    fn metric(&self, prefix: &str) -> u64 {
        berth_testkit::berthd::metric_sum(
            &berth_testkit::berthd::scrape_metrics(self.metrics_port),
            prefix,
        )
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("cri.sock")
    }

    fn crictl(&self, args: &[&str]) -> std::process::Output {
        berth_testkit::crictl::run(&self.socket(), "60s", args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(
            out.status.success(),
            "crictl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("crictl {args:?}: {e}: {out}"))
    }

    /// `crictl pull` prints "Image is up to date for <image ref>".
    fn pull(&self, image: &str) -> String {
        let out = self.ok(&["pull", image]);
        out.trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    fn inspect(&self, image: &str) -> Option<Value> {
        let out = self.crictl(&["inspecti", "-o", "json", image]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("inspecti JSON");
        Some(v["status"].clone())
    }

    /// The names berthd's image store holds in the CRI namespace, as ctr sees them.
    fn records(&self) -> Vec<String> {
        self.daemon
            .ctr("k8s.io", &["images", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn crictl_pulls_lists_inspects_removes_and_reports_the_image_fs() {
    let cri = Cri::start();
    let before = cri.json(&["imagefsinfo", "-o", "json"]);
    let used = |v: &Value| {
        v["status"]["imageFilesystems"][0]["usedBytes"]["value"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or_else(|| v["status"]["imageFilesystems"][0]["usedBytes"]["value"].as_u64())
            .unwrap_or_else(|| panic!("no used bytes in {v}"))
    };

    // A pull answers the config digest, and the image is there under tag, digest and id.
    let id = cri.pull(BUSYBOX);
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let status = cri.inspect(BUSYBOX).expect("busybox after its pull");
    assert_eq!(status["id"], id);
    assert_eq!(strings(&status["repoTags"]), vec![BUSYBOX.to_string()]);
    let digests = strings(&status["repoDigests"]);
    assert_eq!(digests.len(), 1, "{status}");
    assert!(
        digests[0].starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"),
        "{digests:?}"
    );
    let size: u64 = status["size"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| status["size"].as_u64())
        .expect("size");
    assert!(size > 100_000, "busybox is {size} bytes?");
    for reference in [id.as_str(), digests[0].as_str(), &id[7..19]] {
        let by = cri
            .inspect(reference)
            .unwrap_or_else(|| panic!("by {reference}"));
        assert_eq!(by, status, "inspecti {reference}");
    }
    let records = cri.records();
    for name in [BUSYBOX, digests[0].as_str(), id.as_str()] {
        assert!(
            records.iter().any(|r| r == name),
            "{name} not in {records:?}"
        );
    }
    // Unpacked for the overlayfs snapshotter: the layers are on the image filesystem now.
    let after = cri.json(&["imagefsinfo", "-o", "json"]);
    assert!(
        used(&after) > used(&before) + 100_000,
        "{before} -> {after}"
    );
    let mountpoint = after["status"]["imageFilesystems"][0]["fsId"]["mountpoint"]
        .as_str()
        .expect("mountpoint");
    assert!(
        mountpoint.starts_with(cri.daemon.root().to_str().unwrap()),
        "{mountpoint}"
    );
    assert!(after["status"]["containerFilesystems"][0]["inodesUsed"].is_object());

    // The config's User, as the CRI reports it.
    cri.pull(USER_UID);
    let uid = cri.inspect(USER_UID).expect("uid image");
    assert_eq!(
        uid["uid"]["value"].as_str().unwrap_or_default(),
        "1002",
        "{uid}"
    );
    assert_eq!(uid["username"], "");
    cri.pull(USER_NAME);
    let named = cri.inspect(USER_NAME).expect("username image");
    assert_eq!(named["username"], "www-data", "{named}");
    assert!(named["uid"].is_null(), "{named}");

    // Three tags of one image: one id, listed once with all three; rmi by one tag takes all.
    let ids: Vec<String> = TAGS.iter().map(|t| cri.pull(t)).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let listed = cri.json(&["images", "-o", "json"]);
    let entry = listed["images"]
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["id"] == ids[0].as_str())
        .unwrap_or_else(|| panic!("{} not listed: {listed}", ids[0]))
        .clone();
    assert_eq!(
        strings(&entry["repoTags"]),
        TAGS.map(str::to_string).to_vec()
    );
    let filtered = cri.json(&["images", "-o", "json", TAGS[1]]);
    assert_eq!(filtered["images"].as_array().map(Vec::len), Some(1));
    cri.ok(&["rmi", TAGS[0]]);
    for t in TAGS {
        assert!(cri.inspect(t).is_none(), "{t} survived rmi of {}", TAGS[0]);
    }
    assert!(cri.inspect(&ids[0]).is_none());
    assert!(!cri.records().iter().any(|r| r.contains("test-image-tags")));
    // Removing what is gone succeeds (the CRI's idempotence; crictl itself refuses to ask).
    cri.remove(TAGS[0]).expect("RemoveImage of a removed image");
    cri.remove("registry.k8s.io/never-pulled:1")
        .expect("RemoveImage of a missing image");

    // Removal by id leaves the other images alone.
    cri.ok(&["rmi", &id]);
    assert!(cri.inspect(BUSYBOX).is_none());
    assert!(cri.inspect(USER_UID).is_some());
}

/// A kubelet with `Always` (and every `crictl run`) pulls at each container start. When the
/// registry still names the same manifest, the digest and id references the CRI adds are written
/// by the first pull only; the tag is the pull's own record, which every pull updates (as
/// containerd's transfer image store does), with the CRI's mark in that same write.
#[test]
fn a_repull_of_an_unchanged_image_rewrites_no_record() {
    let cri = Cri::start();
    let id = cri.pull(BUSYBOX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let records = || {
        rt.block_on(async {
            let client = berth::Client::from_channel(cri.daemon.channel().await, "k8s.io");
            let mut out: Vec<(String, Option<std::time::SystemTime>)> = Vec::new();
            for image in client.images().list(&[]).await.expect("list images") {
                assert_eq!(
                    image
                        .labels
                        .get("io.cri-containerd.image")
                        .map(String::as_str),
                    Some("managed"),
                    "{} lacks the CRI's mark: {:?}",
                    image.name,
                    image.labels
                );
                out.push((image.name, image.updated_at));
            }
            out.sort();
            out
        })
    };
    let first = records();
    assert_eq!(first.len(), 3, "tag, digest and id references: {first:?}");
    assert!(first.iter().any(|(name, _)| *name == id), "{first:?}");
    let added = |all: Vec<(String, Option<std::time::SystemTime>)>| {
        all.into_iter()
            .filter(|(name, _)| name != BUSYBOX)
            .collect::<Vec<_>>()
    };
    let first = added(first);
    let streams =
        "grpc_server_handled_total{grpc_service=\"containerd.services.streaming.v1.Streaming\"";
    for _ in 0..2 {
        let (syncs, opened) = (
            cri.metric("berth_metadata_syncs_total "),
            cri.metric(streams),
        );
        assert_eq!(cri.pull(BUSYBOX), id);
        assert_eq!(added(records()), first, "a re-pull rewrote a record");
        // Its records (lease references, content labels) durable in one sync (a second is
        // allowed for a write of the daemon's own landing in between), and no progress stream
        // opened for a pull nobody watches.
        let pull_syncs = cri.metric("berth_metadata_syncs_total ") - syncs;
        assert!(
            (1..=2).contains(&pull_syncs),
            "a re-pull took {pull_syncs} syncs"
        );
        assert_eq!(
            cri.metric(streams),
            opened,
            "PullImage opened a progress stream"
        );
    }
}

#[test]
fn pulling_a_missing_image_fails_with_a_clear_message() {
    let cri = Cri::start();
    // Straight at the fixture registry: through a mirror, a miss falls back to the real
    // registry.k8s.io, which is out of reach here (as containerd does).
    let missing = format!("{}/e2e-test-images/no-such-image:1", fixtures().registry);
    let out = cri.crictl(&["pull", &missing]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-image") && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(cri.records().is_empty(), "{:?}", cri.records());
}

#[test]
fn a_pull_past_its_deadline_fails_and_records_nothing() {
    let cri = Cri::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = berth::connect(cri.socket()).await.expect("dial the CRI");
        let mut images = ImageServiceClient::new(channel);
        let mut req = tonic::Request::new(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        // The deadline as grpc-go sends it, with no timer of the client's own: the code is the
        // server's to keep (a few ms: far less than a pull takes).
        req.metadata_mut()
            .insert("grpc-timeout", "5m".parse().expect("header value"));
        let err = images.pull_image(req).await.expect_err("a 5 ms pull");
        // tonic's client keeps the deadline too and may give up first (Cancelled, "Timeout
        // expired"); grpc-go's (critest's 1 ms case) reports DeadlineExceeded either way. What
        // the server did is in its log.
        assert!(
            matches!(
                err.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            "{err:?}"
        );
        // Had the pull gone on behind the client's back it would be done well within this.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = images
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("image status")
            .into_inner();
        assert!(status.image.is_none(), "{status:?}");
    });
    assert!(
        cri.daemon
            .log()
            .contains("deadline passed: the pull was cancelled"),
        "the CRI did not cancel the pull at its deadline",
    );
    assert!(cri.records().is_empty(), "{:?}", cri.records());
    // The same pull with time to run completes.
    cri.pull(BUSYBOX);
}

/// Debian's docker-registry with an htpasswd user, holding the fixtures' busybox.
struct AuthRegistry {
    child: Child,
    _dir: tempfile::TempDir,
    host: String,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn auth_registry(user: &str, password: &str) -> AuthRegistry {
    let dir = tempfile::tempdir().expect("temp dir");
    let hash = bcrypt::hash(password, 5).expect("bcrypt");
    std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).expect("htpasswd");
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nauth:\n  htpasswd:\n    realm: berth-test\n    path: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display(),
                dir.path().join("htpasswd").display()
            ),
        )
        .expect("registry config");
        let log = dir.path().join("registry.log");
        let file = std::fs::File::create(&log).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = AuthRegistry {
            child,
            _dir: tempfile::tempdir().expect("temp dir"),
            host: format!("127.0.0.1:{port}"),
        };
        let want = format!("listening on 127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&want)) {
                registry._dir = dir;
                return registry;
            }
            // One that lost the port to someone else exits: try another.
            if registry.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("docker-registry with htpasswd did not start");
}

#[test]
fn wrong_credentials_fail_and_never_reach_the_log() {
    let f = fixtures();
    let (user, password, wrong) = ("berth", "right-Pa55word-7f3c", "wrong-Pa55word-91ad");
    let registry = auth_registry(user, password);
    let image = format!("{}/berth/busybox:auth", registry.host);
    let status = Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false", "--dest-creds"])
        .arg(format!("{user}:{password}"))
        .arg(format!(
            "oci:{}:busybox_1.29-2",
            f.cache.join("layout").display()
        ))
        .arg(format!("docker://{image}"))
        .status()
        .expect("run skopeo");
    assert!(status.success(), "skopeo push to the htpasswd registry");

    let cri = Cri::start();
    let anonymous = cri.crictl(&["pull", &image]);
    assert!(!anonymous.status.success(), "an anonymous pull got through");
    let out = cri.crictl(&["pull", "--creds", &format!("{user}:{wrong}"), &image]);
    assert!(!out.status.success(), "wrong credentials got through");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("unauthorized") || stderr.contains("401"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(wrong),
        "the password is in crictl's error: {stderr}"
    );
    assert!(cri.inspect(&image).is_none());

    let id = cri.pull_with(&["--creds", &format!("{user}:{password}")], &image);
    assert!(id.starts_with("sha256:"), "{id}");
    assert!(cri.inspect(&image).is_some());
    let log = cri.daemon.log();
    assert!(
        !log.contains(wrong) && !log.contains(password),
        "a password reached berthd's log"
    );
}

impl Cri {
    /// RemoveImage straight over gRPC.
    fn remove(&self, image: &str) -> Result<(), tonic::Status> {
        let socket = self.socket();
        let image = image.to_string();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let channel = berth::connect(socket).await.expect("dial the CRI");
                ImageServiceClient::new(channel)
                    .remove_image(cri::RemoveImageRequest {
                        image: Some(cri::ImageSpec {
                            image,
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(|_| ())
            })
    }

    fn pull_with(&self, flags: &[&str], image: &str) -> String {
        let mut args = vec!["pull"];
        args.extend_from_slice(flags);
        args.push(image);
        let out = self.ok(&args);
        out.trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}
