//! Images through a real registry on loopback: Debian's `docker-registry` (distribution 2.8),
//! filled by `skopeo` with the busybox fixture, pulled by the real `ctr` into berthd. Also the
//! docker-archive (`docker save` format) import, built by skopeo from the same fixture.
//!
//! All registry HTTP happens in ctr; berthd only stores what ctr writes and unpacks it. Each test
//! starts its own registry on a free port (tests run in parallel threads) and kills it on drop.

use crate::fixtures::{busybox_oci_archive, sha256};
use crate::harness::{process_token, Ctr, Daemon};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const REPO: &str = "library/busybox";
const TAG: &str = "latest";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A `docker-registry` process serving a throwaway storage directory on 127.0.0.1.
pub(crate) struct Registry {
    /// Declared first so it is dropped (killed) before the storage directory is removed.
    process: Process,
    dir: tempfile::TempDir,
    port: u16,
}

/// A child process killed and reaped on drop, panic or not.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Registry {
    /// Start a registry on a free loopback port and wait until `GET /v2/` answers 200.
    ///
    /// The port is found by binding port 0 and dropping the listener, so another process (or a
    /// parallel test's registry) may take it first. Each registry therefore sends a header unique
    /// to it, and only a 200 carrying that header counts; a registry that lost the port exits, and
    /// we try again with another.
    pub(crate) fn start() -> Registry {
        Registry::start_with(None)
    }

    /// A registry that wants basic auth (an htpasswd file) for everything.
    pub(crate) fn start_with_htpasswd(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user, password)))
    }

    fn start_with(htpasswd: Option<(&str, &str)>) -> Registry {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let mut dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .expect("create registry dir");
        let config = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        let auth = match htpasswd {
            Some((user, password)) => {
                let file = dir.path().join("htpasswd");
                let hash = bcrypt::hash(password, 5).expect("bcrypt");
                std::fs::write(&file, format!("{user}:{hash}\n")).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    file.display()
                )
            }
            None => String::new(),
        };
        for _attempt in 0..5 {
            let port = free_port();
            let token = format!(
                "{}-{}-{port}",
                std::process::id(),
                STARTED.fetch_add(1, Ordering::Relaxed)
            );
            std::fs::write(&config, registry_config(dir.path(), port, &token, &auth))
                .expect("write registry config");
            let log = std::fs::File::create(&log_path).expect("create registry log");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup registry log"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry (apt-get install docker-registry)");
            // From here on, dropping the registry kills the process, even if a wait panics.
            let mut registry = Registry {
                process: Process(child),
                dir,
                port,
            };
            if registry.wait_ready(&token) {
                return registry;
            }
            // It exited (the port was taken): reap it and try another port.
            let Registry { dir: d, .. } = registry;
            dir = d;
        }
        panic!(
            "docker-registry did not start on a free port after 5 attempts; last log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// Poll `GET /v2/` until this registry (recognised by its token header) answers 200. False if
    /// the process exits first (the port was taken).
    fn wait_ready(&mut self, token: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self
                .process
                .0
                .try_wait()
                .expect("poll docker-registry")
                .is_some()
            {
                return false;
            }
            // A short timeout: whatever else holds the port may accept and never answer.
            if let Ok(resp) = http_get(self.port, "/v2/", &[], Duration::from_millis(500)) {
                // 401: the registry wants credentials (htpasswd) and is up all the same.
                if matches!(resp.status, 200 | 401)
                    && resp.header("x-berth-registry") == Some(token)
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "docker-registry did not answer GET /v2/ within 20s:\n{}",
            self.log()
        );
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where the registry keeps a blob's bytes (distribution's filesystem layout).
    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }

    /// The GETs of `path` berthd's registry client made (user agent `berth/…`), from the
    /// registry's access log.
    pub(crate) fn berthd_gets(&self, path: &str) -> usize {
        let want = format!("\"GET {path} ");
        self.log()
            .lines()
            .filter(|l| {
                l.starts_with("127.0.0.1 - ") && l.contains(&want) && l.contains("\"berth/")
            })
            .count()
    }

    /// The client address (`127.0.0.1:port`) of every request berthd made, in order: one port
    /// per TCP connection.
    pub(crate) fn berthd_connections(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("msg=\"response completed\"")
                    && (l.contains("http.request.useragent=berth/")
                        || l.contains("http.request.useragent=\"berth/"))
            })
            .filter_map(|l| {
                let (_, rest) = l.split_once("http.request.remoteaddr=\"")?;
                rest.split_once('"').map(|(addr, _)| addr.to_string())
            })
            .collect()
    }

    /// Push the busybox fixture as `library/busybox:latest` with skopeo, logging in as CREDS
    /// (`user:password`).
    pub(crate) fn push_busybox_as(&self, work: &Path, creds: &str) {
        let fixture = busybox_oci_archive(work, &format!("docker.io/{REPO}:{TAG}"));
        let src = format!("oci-archive:{}:{TAG}", fixture.path.display());
        let dest = format!("docker://{}", self.reference());
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
            &src,
            &dest,
        ]);
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, the host part of references into this registry.
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The reference ctr pulls: `127.0.0.1:<port>/library/busybox:latest`.
    pub(crate) fn reference(&self) -> String {
        format!("{}/{REPO}:{TAG}", self.host())
    }

    /// Push the busybox fixture (an OCI archive) as `library/busybox:latest` with skopeo, then
    /// read back what the registry serves for it.
    pub(crate) fn push_busybox(&self, work: &Path) -> Served {
        let fixture = busybox_oci_archive(work, &format!("docker.io/{REPO}:{TAG}"));
        // skopeo's oci-archive reference is PATH[:NAME], NAME matching the index's
        // org.opencontainers.image.ref.name annotation, which the fixture sets to the tag.
        let src = format!("oci-archive:{}:{TAG}", fixture.path.display());
        let dest = format!("docker://{}", self.reference());
        skopeo(&["copy", "--dest-tls-verify=false", &src, &dest]);
        let served = self.served(REPO, TAG);
        // skopeo copies the OCI manifest as is: same bytes, same digests.
        assert_eq!(served.manifest_digest, fixture.manifest.digest);
        assert_eq!(served.config_digest, fixture.config.digest);
        assert_eq!(served.layer_digest, fixture.layer.digest);
        assert_eq!(served.diff_id, fixture.diff_id);
        served
    }

    /// What the registry serves for REPO:TAG, read over HTTP, checked against the bytes.
    pub(crate) fn served(&self, repo: &str, tag: &str) -> Served {
        let resp = http_get(
            self.port,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[OCI_MANIFEST, DOCKER_MANIFEST],
            HTTP_TIMEOUT,
        )
        .expect("GET manifest");
        assert_eq!(resp.status, 200, "GET manifest: {resp:?}\n{}", self.log());
        let manifest_digest = sha256(&resp.body);
        assert_eq!(
            resp.header("docker-content-digest"),
            Some(manifest_digest.as_str())
        );
        let manifest: serde_json::Value = serde_json::from_slice(&resp.body).expect("manifest");
        let media_type = resp
            .header("content-type")
            .expect("manifest content type")
            .to_string();
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .expect("config digest")
            .to_string();
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "the fixture has one layer: {manifest}");
        let layer_digest = layers[0]["digest"]
            .as_str()
            .expect("layer digest")
            .to_string();
        let layer_media_type = layers[0]["mediaType"]
            .as_str()
            .expect("layer media type")
            .to_string();

        let config = http_get(
            self.port,
            &format!("/v2/{repo}/blobs/{config_digest}"),
            &[],
            HTTP_TIMEOUT,
        )
        .expect("GET config");
        assert_eq!(config.status, 200, "GET config: {config:?}");
        assert_eq!(sha256(&config.body), config_digest);
        let config: serde_json::Value = serde_json::from_slice(&config.body).expect("config");
        let diff_id = config["rootfs"]["diff_ids"][0]
            .as_str()
            .expect("diff id")
            .to_string();
        Served {
            media_type,
            manifest_digest,
            config_digest,
            layer_digest,
            layer_media_type,
            diff_id,
        }
    }

    /// Push the busybox fixture as `library/busybox:latest` with its layer recompressed as
    /// zstd by skopeo (`tar+zstd` in an OCI manifest), and read back what the registry serves.
    pub(crate) fn push_busybox_zstd(&self, work: &Path) -> Served {
        let fixture = busybox_oci_archive(work, &format!("docker.io/{REPO}:{TAG}"));
        let src = format!("oci-archive:{}:{TAG}", fixture.path.display());
        let dest = format!("docker://{}", self.reference());
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            "zstd",
            &src,
            &dest,
        ]);
        let served = self.served(REPO, TAG);
        assert_eq!(
            served.layer_media_type, "application/vnd.oci.image.layer.v1.tar+zstd",
            "skopeo did not write a zstd layer"
        );
        assert_ne!(served.layer_digest, fixture.layer.digest);
        let blob = std::fs::read(self.blob_path(&served.layer_digest)).expect("the zstd layer");
        assert!(blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "not zstd");
        // Recompressed, not changed: the same tar inside.
        assert_eq!(served.diff_id, fixture.diff_id);
        served
    }
}

/// The image as the registry serves it.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) media_type: String,
    pub(crate) manifest_digest: String,
    pub(crate) config_digest: String,
    pub(crate) layer_digest: String,
    pub(crate) layer_media_type: String,
    /// The layer's uncompressed digest, from the config; with one layer, also the chain ID.
    diff_id: String,
}

impl Served {
    pub(crate) fn blobs(&self) -> [&str; 3] {
        [
            &self.manifest_digest,
            &self.config_digest,
            &self.layer_digest,
        ]
    }

    pub(crate) fn chain_id(&self) -> &str {
        &self.diff_id
    }
}

fn registry_config(dir: &Path, port: u16, token: &str, auth: &str) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: info\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         {auth}http:\n  addr: 127.0.0.1:{port}\n  headers:\n    X-Berth-Registry: [\"{token}\"]\n",
        dir.join("storage").display()
    )
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A bare HTTP/1.0 GET on 127.0.0.1:PORT: the server closes the connection after the body.
/// TIMEOUT bounds each read and write.
fn http_get(
    port: u16,
    path: &str,
    accept: &[&str],
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for a in accept {
        req.push_str(&format!("Accept: {a}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Run `skopeo --insecure-policy ARGS…` and insist it succeeds. (The policy is for signature
/// verification, which plays no part here; this keeps the tests independent of
/// /etc/containers/policy.json.)
pub(crate) fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The first column of each row of a ctr table (the header skipped).
fn first_column(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

pub(crate) fn snapshot_keys(d: &Daemon, ns: &str) -> Vec<String> {
    first_column(&d.ctr(ns, &["snapshots", "ls"]))
}

pub(crate) fn content_digests(d: &Daemon, ns: &str) -> Vec<String> {
    let mut v: Vec<_> = d
        .ctr(ns, &["content", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// `ctr content ls` as digest → sorted labels (`k=v,k=v`), leaving out the AGE column, which moves.
fn content_labels(d: &Daemon, ns: &str) -> std::collections::BTreeMap<String, String> {
    d.ctr(ns, &["content", "ls"])
        .lines()
        .skip(1)
        .map(|l| {
            let words: Vec<_> = l.split_whitespace().collect();
            // ctr prints labels in Go map order, which varies from run to run.
            let mut labels: Vec<_> = match words.last() {
                Some(w) if w.contains('=') => w.split(',').collect(),
                _ => Vec::new(),
            };
            labels.sort_unstable();
            (words[0].to_string(), labels.join(","))
        })
        .collect()
}

/// The row of `ctr images ls` for REF, split into columns.
fn image_row(d: &Daemon, ns: &str, reference: &str) -> Vec<String> {
    let ls = d.ctr(ns, &["images", "ls"]);
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} not in `ctr -n {ns} images ls`:\n{ls}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `ctr images check` says the image is complete and unpacked.
pub(crate) fn assert_complete(d: &Daemon, ns: &str, reference: &str) {
    let check = d.ctr(ns, &["images", "check"]);
    let row = check
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} not in `ctr -n {ns} images check`:\n{check}"));
    assert!(row.contains("complete (2/2)"), "{check}");
    assert!(row.trim_end().ends_with("true"), "not unpacked:\n{check}");
}

/// The layer directories of berthd's overlayfs snapshotter.
fn layer_dirs(d: &Daemon) -> Vec<PathBuf> {
    std::fs::read_dir(d.root().join("snapshots/overlayfs/snapshots"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Pull the registry's busybox into NS and check what ctr and berthd made of it.
pub(crate) fn pull_and_check(d: &Daemon, ns: &str, registry: &Registry, served: &Served) {
    let reference = registry.reference();
    let out = d.ctr(ns, &["images", "pull", "--plain-http", &reference]);
    // ctr 1.6 unpacks client-side and says so; ctr 2 pulls through berthd's Transfer service
    // and shows its progress stream. Not necessarily its last event ("saved"): ctr stops its
    // display when Transfer answers, and an event still in flight on the other stream is lost
    // (containerd's proxy client does the same); the record is checked below instead.
    match d.ctr {
        Ctr::V1_6 => assert!(out.contains("unpacking"), "{out}"),
        Ctr::V2 => assert!(out.contains("Pulling from OCI Registry"), "{out}"),
    }

    // The image record points at the manifest the registry serves.
    let row = image_row(d, ns, &reference);
    assert_eq!(row[1], served.media_type, "{row:?}");
    assert_eq!(row[2], served.manifest_digest, "{row:?}");
    assert_complete(d, ns, &reference);

    // ctr committed the layer under its chain ID; berthd applied it.
    let snapshots = d.ctr(ns, &["snapshots", "ls"]);
    let layer = snapshots
        .lines()
        .find(|l| l.split_whitespace().next() == Some(served.chain_id()))
        .unwrap_or_else(|| panic!("no snapshot {}:\n{snapshots}", served.chain_id()));
    assert!(layer.contains("Committed"), "{snapshots}");

    // Every blob carries the distribution source ctr set, and the references and uncompressed
    // digest labels of the unpack.
    let content = d.ctr(ns, &["content", "ls"]);
    // The key holds the registry's host name without the port: ctr takes url.Hostname().
    let source = format!("containerd.io/distribution.source.127.0.0.1={REPO}");
    for blob in served.blobs() {
        let line = content
            .lines()
            .find(|l| l.starts_with(blob))
            .unwrap_or_else(|| panic!("{blob} not in content ls:\n{content}"));
        assert!(line.contains(&source), "{blob} lacks {source}:\n{content}");
    }
    let line_of = |digest: &str| content.lines().find(|l| l.starts_with(digest)).unwrap();
    let manifest = line_of(&served.manifest_digest);
    assert!(
        manifest.contains(&format!(
            "containerd.io/gc.ref.content.config={}",
            served.config_digest
        )),
        "{content}"
    );
    assert!(
        manifest.contains(&format!(
            "containerd.io/gc.ref.content.l.0={}",
            served.layer_digest
        )),
        "{content}"
    );
    assert!(
        line_of(&served.layer_digest)
            .contains(&format!("containerd.io/uncompressed={}", served.diff_id)),
        "{content}"
    );
    assert!(
        line_of(&served.config_digest).contains(&format!(
            "containerd.io/gc.ref.snapshot.overlayfs={}",
            served.chain_id()
        )),
        "{content}"
    );
    assert_eq!(content_digests(d, ns), sorted(served.blobs()));
}

pub(crate) fn sorted(blobs: [&str; 3]) -> Vec<String> {
    let mut v: Vec<_> = blobs.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The committed layer's files as a client finds them through a snapshot's mounts: prepare a
/// rootfs on top of the chain (`ctr snapshots prepare` sets `containerd.io/gc.root`, so the
/// collector leaves it alone; a `view` has no such label and may be collected at any moment, as in
/// containerd) and read the layer from the overlay's lowerdir. Its busybox must be the host's.
pub(crate) fn assert_layer_content(d: &Daemon, ns: &str, chain_id: &str) {
    let mounts = d.ctr(
        ns,
        &[
            "snapshots",
            "prepare",
            "--target",
            "/mnt/x",
            "check-rootfs",
            chain_id,
        ],
    );
    // `mount -t overlay overlay /mnt/x -o …,lowerdir=<layer>`
    assert!(mounts.starts_with("mount -t overlay "), "{mounts}");
    let options = mounts.split(" -o ").nth(1).expect("mount options").trim();
    let lower = options
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("no lowerdir: {mounts}"));
    assert!(!lower.contains(':'), "one layer, one lowerdir: {mounts}");
    let layer = Path::new(lower);
    let busybox = std::fs::read(layer.join("bin/busybox")).expect("bin/busybox in the layer");
    assert!(
        busybox == std::fs::read("/bin/busybox").unwrap(),
        "the layer's bin/busybox differs from the host's"
    );
    let passwd = std::fs::read_to_string(layer.join("etc/passwd")).expect("etc/passwd");
    assert!(passwd.starts_with("root:"), "{passwd}");
    d.ctr(ns, &["snapshots", "rm", "check-rootfs"]);
}

/// Poll until OK holds, failing after TIMEOUT.
fn poll(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pull_from_a_registry_unpacks_and_labels_and_is_idempotent() {
    pull_scenario(Ctr::V1_6);
}

#[test]
fn pull_from_a_registry_with_ctr_2() {
    pull_scenario(Ctr::V2);
}

fn pull_scenario(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());

    pull_and_check(&d, "default", &registry, &served);
    assert_layer_content(&d, "default", served.chain_id());

    // Pulling again changes nothing and succeeds: blobs exist, the image is updated in place,
    // the layer is already unpacked.
    let before_content = content_labels(&d, "default");
    let before_snapshots = d.ctr("default", &["snapshots", "ls"]);
    let before_dirs = layer_dirs(&d);
    d.ctr(
        "default",
        &["images", "pull", "--plain-http", &registry.reference()],
    );
    assert_eq!(content_labels(&d, "default"), before_content);
    assert_eq!(d.ctr("default", &["snapshots", "ls"]), before_snapshots);
    assert_eq!(layer_dirs(&d), before_dirs);
    assert_eq!(
        first_column(&d.ctr("default", &["images", "ls"])),
        [registry.reference()]
    );
    assert_complete(&d, "default", &registry.reference());
}

#[test]
fn pulls_into_two_namespaces_stay_isolated() {
    let d = Daemon::start();
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let reference = registry.reference();

    pull_and_check(&d, "one", &registry, &served);
    // Nothing of it is visible from another namespace.
    assert_eq!(d.ctr("two", &["images", "ls", "-q"]), "");
    assert_eq!(d.ctr("two", &["content", "ls", "-q"]), "");
    assert!(snapshot_keys(&d, "two").is_empty());

    // The same blobs already sit in berthd's shared store: the second pull still gets its own
    // records, labels and snapshot.
    pull_and_check(&d, "two", &registry, &served);

    // Removing it from one namespace leaves the other whole.
    d.ctr("two", &["images", "rm", "--sync", &reference]);
    assert_eq!(d.ctr("two", &["images", "ls", "-q"]), "");
    assert_eq!(content_digests(&d, "two"), Vec::<String>::new());
    assert!(snapshot_keys(&d, "two").is_empty());
    assert_complete(&d, "one", &reference);
    assert_eq!(content_digests(&d, "one"), sorted(served.blobs()));
    assert_eq!(snapshot_keys(&d, "one"), [served.chain_id()]);
    assert_layer_content(&d, "one", served.chain_id());
}

#[test]
fn run_on_a_pulled_image_then_remove_it_all() {
    let d = Daemon::start();
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let reference = registry.reference();
    pull_and_check(&d, "default", &registry, &served);

    // The container runs on the pulled layers; without --rm its record and rootfs stay.
    // The id names the host-wide cgroup /default/<id>: unique to this process.
    let id = format!("pulled-run-{}", process_token());
    let out = d.ctr("default", &["run", &reference, &id, "echo", "hi"]);
    assert_eq!(out.trim(), "hi");
    assert_eq!(d.ctr("default", &["containers", "ls", "-q"]).trim(), id);
    let snapshots = d.ctr("default", &["snapshots", "ls"]);
    let rootfs = snapshots
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("no rootfs snapshot {id}:\n{snapshots}"));
    assert_eq!(
        rootfs.split_whitespace().collect::<Vec<_>>(),
        [id.as_str(), served.chain_id(), "Active"]
    );
    let info = d.ctr("default", &["containers", "info", &id]);
    assert!(
        info.contains(&format!("\"Image\": \"{reference}\"")),
        "{info}"
    );

    d.ctr("default", &["containers", "rm", &id]);
    assert_eq!(d.ctr("default", &["containers", "ls", "-q"]), "");
    assert_eq!(snapshot_keys(&d, "default"), [served.chain_id()]);

    // Removing the image with --sync collects everything before ctr returns: content, the
    // snapshot and its directory on disk.
    d.ctr("default", &["images", "rm", "--sync", &reference]);
    assert_eq!(d.ctr("default", &["images", "ls", "-q"]), "");
    assert_eq!(d.ctr("default", &["content", "ls", "-q"]), "");
    assert!(snapshot_keys(&d, "default").is_empty());
    assert_eq!(layer_dirs(&d), Vec::<PathBuf>::new());
}

#[test]
fn a_pull_survives_kill_9() {
    let mut d = Daemon::start();
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let reference = registry.reference();
    pull_and_check(&d, "default", &registry, &served);

    let labels = content_labels(&d, "default");
    let snapshots = d.ctr("default", &["snapshots", "ls"]);

    // No shutdown path: whatever the pull and unpack wrote must already be durable, labels too
    // (the collector follows them).
    d.kill9();
    d.spawn();
    assert_complete(&d, "default", &reference);
    assert_eq!(
        image_row(&d, "default", &reference)[2],
        served.manifest_digest
    );
    assert_eq!(d.ctr("default", &["snapshots", "ls"]), snapshots);
    assert_eq!(content_labels(&d, "default"), labels);
    assert_layer_content(&d, "default", served.chain_id());
    // And the image is usable: a pull is a no-op, a container runs on it.
    d.ctr("default", &["images", "pull", "--plain-http", &reference]);
    let out = d.ctr(
        "default",
        &[
            "run",
            "--rm",
            &reference,
            &format!("after-kill9-run-{}", process_token()),
            "echo",
            "ok",
        ],
    );
    assert_eq!(out.trim(), "ok");
}

#[test]
fn docker_archive_import_unpacks() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let fixture = busybox_oci_archive(work.path(), "docker.io/berth/busybox:latest");
    // A `docker save`-format tar: manifest.json, the config and uncompressed layer tars.
    let archive = work.path().join("busybox.docker.tar");
    let name = "docker.io/berth/busybox:docker";
    skopeo(&[
        "copy",
        &format!("oci-archive:{}:latest", fixture.path.display()),
        &format!("docker-archive:{}:{name}", archive.display()),
    ]);

    let out = d.ctr("default", &["images", "import", archive.to_str().unwrap()]);
    assert!(out.contains(name), "{out}");
    assert_complete(&d, "default", name);
    // The layer went in uncompressed, so its digest is the diff ID and the chain ID.
    assert_eq!(snapshot_keys(&d, "default"), [fixture.diff_id.as_str()]);
    assert_layer_content(&d, "default", &fixture.diff_id);

    // ctr stored every file of the tar as a blob (manifest.json aside) and built an index and a
    // manifest of its own. Once its lease is gone the collector (which runs in the background,
    // as containerd's) keeps what the image references: manifest, config, layer.
    let image = image_row(&d, "default", name);
    assert_eq!(image[1], DOCKER_MANIFEST, "{image:?}");
    let manifest = image[2].clone();
    let expected = [
        (
            manifest.clone(),
            format!(
                "containerd.io/gc.ref.content.config={},containerd.io/gc.ref.content.l.0={}",
                fixture.config.digest, fixture.diff_id
            ),
        ),
        (
            fixture.config.digest.clone(),
            format!(
                "containerd.io/gc.ref.snapshot.overlayfs={}",
                fixture.diff_id
            ),
        ),
        (
            fixture.diff_id.clone(),
            format!("containerd.io/uncompressed={}", fixture.diff_id),
        ),
    ]
    .into_iter()
    .collect::<std::collections::BTreeMap<_, _>>();
    poll(
        Duration::from_secs(10),
        "the import's leftovers to be collected",
        || content_labels(&d, "default") == expected,
    );

    // Importing the same archive again is a no-op success.
    d.ctr("default", &["images", "import", archive.to_str().unwrap()]);
    assert_complete(&d, "default", name);
    assert_eq!(image_row(&d, "default", name)[2], manifest);
    assert_eq!(snapshot_keys(&d, "default"), [fixture.diff_id.as_str()]);
    poll(
        Duration::from_secs(10),
        "the re-import's leftovers to be collected",
        || content_labels(&d, "default") == expected,
    );
}

#[test]
fn docker_archive_import_finds_a_compressed_layer_by_label() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let fixture = busybox_oci_archive(work.path(), "docker.io/berth/busybox:oci");
    let archive = work.path().join("busybox.docker.tar");
    let name = "docker.io/berth/busybox:docker";
    skopeo(&[
        "copy",
        &format!("oci-archive:{}:oci", fixture.path.display()),
        &format!("docker-archive:{}:{name}", archive.display()),
    ]);

    // The OCI import leaves the gzip layer labelled with its uncompressed digest, which a label
    // filter on Content/List finds.
    d.ctr(
        "default",
        &["images", "import", fixture.path.to_str().unwrap()],
    );
    let filter = format!("labels.\"containerd.io/uncompressed\"=={}", fixture.diff_id);
    assert_eq!(
        d.ctr("default", &["content", "ls", "-q", &filter]).trim(),
        fixture.layer.digest
    );

    // ctr's docker-archive importer asks Content/List for exactly that filter and, finding the
    // gzip blob, makes the image's manifest point at it instead of the uncompressed tar.
    d.ctr("default", &["images", "import", archive.to_str().unwrap()]);
    assert_complete(&d, "default", name);
    assert_complete(&d, "default", "docker.io/berth/busybox:oci");
    let manifest = image_row(&d, "default", name)[2].clone();
    let labels = content_labels(&d, "default");
    assert_eq!(
        labels[&manifest],
        format!(
            "containerd.io/gc.ref.content.config={},containerd.io/gc.ref.content.l.0={}",
            fixture.config.digest, fixture.layer.digest
        )
    );
    // One layer, one snapshot, shared by both images.
    assert_eq!(snapshot_keys(&d, "default"), [fixture.diff_id.as_str()]);
    poll(
        Duration::from_secs(10),
        "the uncompressed tar to be collected",
        || !content_digests(&d, "default").contains(&fixture.diff_id),
    );
}

/// A pull that fills the disk (issue 15, part 4; hostile-inputs.md B13): berthd's root is a
/// 48 MiB ext4 on a loop device, filled until the layer's blob fits and its unpacked files do
/// not. The pull fails saying the disk is full; after a collection no partial snapshot, ingest
/// or blob of it is left; an image acknowledged before is whole after a kill -9; with the space
/// back the same pull works.
#[test]
fn a_pull_that_fills_the_disk_fails_cleanly_and_the_next_one_works() {
    let mut d = Daemon::start();
    d.stop();
    let disk_image = d.dir.path().join("disk.img");
    let disk = crate::api::disk::LoopRoot::mount(&disk_image, 48, &d.root());
    d.spawn();
    let ns = "full";
    // Acknowledged before the disk fills: an image ctr imported and unpacked (its own layer:
    // other applets, so the pull below has a layer of its own to unpack).
    let kept_dir = tempfile::tempdir().unwrap();
    let kept = berth_testkit::image::busybox_oci_archive_with(
        kept_dir.path(),
        "docker.io/berth/kept:1",
        &["sh", "true"],
    )
    .expect("kept image");
    d.ctr(
        ns,
        &["images", "import", kept.path.to_str().expect("utf-8")],
    );
    assert_complete(&d, ns, "docker.io/berth/kept:1");
    // A collection, synchronous (a lease deleted with --sync): the import's own leftovers (the
    // archive's index blob, which no image names) go before the baseline is taken.
    let collect = |d: &Daemon| {
        let lease = d.ctr(ns, &["leases", "create"]);
        let lease = lease
            .split_whitespace()
            .next()
            .expect("lease id")
            .to_string();
        d.ctr(ns, &["leases", "delete", "--sync", &lease]);
    };
    collect(&d);
    let kept_snapshots = snapshot_keys(&d, ns);
    let kept_content = content_digests(&d, ns);

    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let reference = registry.reference();
    let layer_size = std::fs::metadata(registry.blob_path(&served.layer_digest))
        .expect("the layer's blob in the registry")
        .len();
    // Room for the blobs and the metadata (1 MiB), not for the ~2 MiB of files in the layer.
    let free = nix::sys::statvfs::statvfs(&d.root()).expect("statvfs");
    let available = free.blocks_available() * free.fragment_size();
    let filler = d.root().join("filler");
    let fill = available.saturating_sub(layer_size + (1 << 20));
    let out = Command::new("fallocate")
        .args(["-l", &fill.to_string()])
        .arg(&filler)
        .output()
        .expect("run fallocate");
    assert!(out.status.success(), "fallocate: {out:?}");

    let err = d.ctr_err(ns, &["images", "pull", "--plain-http", &reference]);
    // Shown with the test's output (on a failure, or --nocapture).
    println!("the pull on the full disk: {}", err.trim());
    let msg = err.to_lowercase();
    assert!(
        msg.contains("no space") || msg.contains("space left") || msg.contains("full"),
        "the failed pull does not say the disk is full: {err}"
    );

    // After a collection nothing of the failed unpack is left: no snapshot but the kept
    // image's, no layer directory but theirs, no ingest. ctr 1.6 records the image once its
    // blobs are fetched and unpacks after, so the image and its blobs may stay (acknowledged,
    // not unpacked); if ctr did not record it, none of its blobs may stay either.
    collect(&d);
    assert_eq!(snapshot_keys(&d, ns), kept_snapshots);
    assert_eq!(
        layer_dirs(&d).len(),
        kept_snapshots.len(),
        "{:?}",
        layer_dirs(&d)
    );
    let recorded = first_column(&d.ctr(ns, &["images", "ls"])).contains(&reference);
    let mut expected_content = kept_content.clone();
    if recorded {
        expected_content.extend(served.blobs().map(str::to_string));
        expected_content.sort();
    }
    println!("the image was recorded before the unpack failed: {recorded}");
    assert_eq!(
        content_digests(&d, ns),
        expected_content,
        "image recorded: {recorded}"
    );
    assert_eq!(d.ctr(ns, &["content", "active"]).lines().skip(1).count(), 0);
    let ingests: Vec<_> = std::fs::read_dir(d.root().join("content/ingest"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(ingests.is_empty(), "ingests left: {ingests:?}");
    let blob_files = std::fs::read_dir(d.root().join("content/blobs/sha256"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(blob_files, expected_content.len(), "blob files on disk");

    // What was acknowledged survives a crash on the full disk.
    d.kill9();
    d.spawn();
    assert_complete(&d, ns, "docker.io/berth/kept:1");
    assert_eq!(snapshot_keys(&d, ns), kept_snapshots);
    assert_eq!(content_digests(&d, ns), expected_content);

    // With the space back, the same pull works and unpacks.
    std::fs::remove_file(&filler).expect("remove the filler");
    d.ctr(ns, &["images", "pull", "--plain-http", &reference]);
    assert_complete(&d, ns, &reference);
    assert_layer_content(&d, ns, served.chain_id());
    d.kill9();
    drop(disk);
}
