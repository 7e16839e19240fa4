//! Test parts: Debian's `docker-registry` on a free loopback port (plain, htpasswd, TLS or
//! token auth), OCI layouts pushed into it with `skopeo`, and a scripted HTTP/1.1 stand-in for
//! hostile registries, storage hosts and token servers.

#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// A child process killed and reaped on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a test registry authenticates and serves.
#[derive(Default, Clone)]
pub struct RegistryOptions {
    /// (user, password) accepted through an htpasswd file.
    pub htpasswd: Option<(String, String)>,
    /// PEM certificate chain and key: serve HTTPS.
    pub tls: Option<(String, String)>,
    /// PEM CA that client certificates must chain to (mutual TLS).
    pub client_ca: Option<String>,
    /// (realm URL, service, issuer, root certificate PEM) of the token auth.
    pub token: Option<(String, String, String, String)>,
}

pub struct Registry {
    process: Process,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Registry {
    pub fn start(opts: RegistryOptions) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-test-")
            .tempdir()
            .expect("tempdir");
        let log_path = dir.path().join("registry.log");
        let mut auth = String::new();
        if let Some((user, password)) = &opts.htpasswd {
            let hash = bcrypt::hash(password, 5).expect("bcrypt");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            );
        }
        if let Some((realm, service, issuer, cert)) = &opts.token {
            let bundle = dir.path().join("token-root.pem");
            std::fs::write(&bundle, cert).unwrap();
            auth = format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                bundle.display()
            );
        }
        let mut tls = String::new();
        if let Some((cert, key)) = &opts.tls {
            std::fs::write(dir.path().join("server.pem"), cert).unwrap();
            std::fs::write(dir.path().join("server.key"), key).unwrap();
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("server.pem").display(),
                dir.path().join("server.key").display()
            );
            if let Some(ca) = &opts.client_ca {
                std::fs::write(dir.path().join("client-ca.pem"), ca).unwrap();
                tls.push_str(&format!(
                    "    clientcas:\n      - {}\n",
                    dir.path().join("client-ca.pem").display()
                ));
            }
        }
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{auth}http:\n  addr: 127.0.0.1:{port}\n{tls}",
                dir.path().join("storage").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry (apt-get install docker-registry)");
            let mut process = Process(child);
            if wait_listening(&mut process, port, &log_path) {
                return Registry { process, dir, port };
            }
        }
        panic!(
            "docker-registry did not start:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

/// The registry logs `listening on 127.0.0.1:<port>` once it holds the port (whatever its
/// auth or TLS); one that lost the port to someone else exits instead.
fn wait_listening(p: &mut Process, port: u16, log: &Path) -> bool {
    let want = format!("listening on 127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains(&want)) {
            return true;
        }
        if p.0.try_wait().ok().flatten().is_some() {
            return false;
        }
        // Polling a log file: there is nothing to wait on.
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

pub fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn digest(&self) -> String {
        sha256(&self.bytes)
    }
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.bytes.len()})
    }
}

/// One platform's image: config, layers, manifest.
#[derive(Clone, Debug)]
pub struct Image {
    pub arch: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn tar_with(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, content).unwrap();
    b.into_inner().unwrap()
}

/// A small image for `arch` with `layers` layers; `salt` makes its blobs unique to a test.
pub fn image(arch: &str, layers: usize, salt: &str) -> Image {
    let layers: Vec<Blob> = (0..layers)
        .map(|i| {
            // Some bulk, so a layer spans several reads and chunks.
            let content: Vec<u8> = format!("{salt} {arch} layer {i}\n")
                .repeat(2000)
                .into_bytes();
            Blob {
                media_type: OCI_LAYER.into(),
                bytes: tar_with(&format!("file{i}"), &content),
            }
        })
        .collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest()).collect();
    let config = Blob {
        media_type: OCI_CONFIG.into(),
        bytes: serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {"Cmd": ["sh"]},
        }))
        .unwrap(),
    };
    let manifest = Blob {
        media_type: OCI_MANIFEST.into(),
        bytes: serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        }))
        .unwrap(),
    };
    Image {
        arch: arch.into(),
        config,
        layers,
        manifest,
    }
}

fn variant(arch: &str) -> Option<&'static str> {
    (arch == "arm64").then_some("v8")
}

/// An index over `images`.
pub fn index(images: &[Image]) -> Blob {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|i| {
            let mut d = i.manifest.descriptor();
            let mut p = serde_json::json!({"architecture": i.arch, "os": "linux"});
            if let Some(v) = variant(&i.arch) {
                p["variant"] = v.into();
            }
            d["platform"] = p;
            d
        })
        .collect();
    Blob {
        media_type: OCI_INDEX.into(),
        bytes: serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
        )
        .unwrap(),
    }
}

/// Write an OCI layout holding `root` (an index or a manifest) under the name `name`, with
/// every blob of `images`.
pub fn oci_layout(dir: &Path, name: &str, root: &Blob, images: &[Image]) -> PathBuf {
    let layout = dir.join(format!("layout-{name}"));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let write = |b: &Blob| {
        let d = b.digest();
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), &b.bytes).unwrap();
    };
    write(root);
    for i in images {
        write(&i.config);
        write(&i.manifest);
        for l in &i.layers {
            write(l);
        }
    }
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut d = root.descriptor();
    d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": name});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [d]})).unwrap(),
    )
    .unwrap();
    layout
}

/// Push an OCI layout's `name` to `dest` (`host/repo:tag`) with skopeo, digests preserved.
pub fn push_layout(layout: &Path, name: &str, dest: &str, creds: Option<&str>) {
    let src = format!("oci:{}:{name}", layout.display());
    let dst = format!("docker://{dest}");
    let mut args = vec![
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src,
        &dst,
    ];
    if let Some(c) = creds {
        args.push("--dest-creds");
        args.push(c);
    }
    skopeo(&args);
}

/// A request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    /// The body, when the request said its Content-Length.
    pub body: Vec<u8>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|s| s.as_str())
    }
}

/// What the stand-in does with a request.
pub enum Reply {
    /// Write these bytes (a whole response) and close.
    Raw(Vec<u8>),
    /// Write the head, then `body` forever in chunked encoding.
    Endless(Vec<u8>),
    /// Write the head, then stall without a byte.
    Stall(Vec<u8>),
}

/// A response head and body as raw bytes, with Connection: close.
pub fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Raw(bytes)
}

type Handler = Arc<dyn Fn(&SeenRequest) -> Reply + Send + Sync>;

/// A scripted HTTP/1.1 server on a loopback port, recording every request.
pub struct StandIn {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    pub async fn start(handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static) -> StandIn {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    let head_end = loop {
                        let Ok(n) = sock.read(&mut tmp).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        // A TLS ClientHello: this stand-in speaks plain HTTP only.
                        if buf[0] == 0x16 {
                            return;
                        }
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let first = lines.next().unwrap_or("");
                    let mut parts = first.split(' ');
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    let headers: BTreeMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let want: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = buf[head_end + 4..].to_vec();
                    while body.len() < want {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => body.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let req = SeenRequest {
                        method,
                        path,
                        headers,
                        body,
                    };
                    seen.lock().unwrap().push(req.clone());
                    match handler(&req) {
                        Reply::Raw(mut bytes) => {
                            if req.method == "HEAD" {
                                if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                                    bytes.truncate(i + 4);
                                }
                            }
                            let _ = sock.write_all(&bytes).await;
                        }
                        Reply::Endless(head) => {
                            if sock.write_all(&head).await.is_err() {
                                return;
                            }
                            let chunk = vec![b' '; 64 * 1024];
                            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                            framed.extend_from_slice(&chunk);
                            framed.extend_from_slice(b"\r\n");
                            while sock.write_all(&framed).await.is_ok() {}
                        }
                        Reply::Stall(head) => {
                            let _ = sock.write_all(&head).await;
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        StandIn { port, seen, task }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

/// A hosts.toml directory with one `<dir>/<name>/hosts.toml`.
pub fn hosts_dir(root: &Path, name: &str, toml: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut f = std::fs::File::create(d.join("hosts.toml")).unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    root.to_path_buf()
}

/// A CA, and certificates it signed: a server's for 127.0.0.1 and localhost, and a client's.
pub struct TestPki {
    pub ca_pem: String,
    pub server_pem: String,
    pub server_key: String,
    pub client_pem: String,
    pub client_key: String,
}

pub fn test_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "berth-registry test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "berth-registry test client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        server_pem: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_pem: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}
