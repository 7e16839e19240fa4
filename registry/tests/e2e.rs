//! berth-registry against real parts: Debian's docker-registry (plain, htpasswd, TLS with a CA
//! the test makes, token auth with a token server the test runs), images pushed by skopeo, and
//! scripted stand-ins for hostile registries and storage hosts.

mod support;

use berth_registry::{
    BlobSource, Client, ClientConfig, Credentials, Descriptor, Document, Error, HostsConfig,
    Platform, PushOptions, PushOutcome, Reference, Resume, StaticCredentials,
};
use bytes::Bytes;
use std::sync::Arc;
use support::*;

fn client() -> Client {
    Client::new(ClientConfig::default())
}

fn client_with(hosts: HostsConfig, creds: Option<(&str, &str, &str)>) -> Client {
    let mut map = std::collections::BTreeMap::new();
    if let Some((host, u, p)) = creds {
        map.insert(
            host.to_string(),
            Credentials::Basic {
                username: u.into(),
                password: p.into(),
            },
        );
    }
    Client::with_credentials(
        ClientConfig {
            hosts,
            ..ClientConfig::default()
        },
        Arc::new(StaticCredentials(map)),
    )
}

fn desc(b: &Blob) -> Descriptor {
    Descriptor::new(&b.media_type, &b.digest(), b.bytes.len() as u64)
}

/// Read a blob whole through the verifying reader.
async fn read_all(c: &Client, r: &Reference, d: &Descriptor) -> Result<Vec<u8>, Error> {
    let mut reader = c.fetch_blob(r, d, None).await?;
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A registry holding a two-platform index at `multi/app:v1` and a single manifest at
/// `single/app:v1`.
struct Loaded {
    registry: Registry,
    _work: tempfile::TempDir,
    amd64: Image,
    arm64: Image,
    index: Blob,
    single: Image,
}

fn loaded(opts: RegistryOptions, creds: Option<&str>) -> Loaded {
    let registry = Registry::start(opts);
    let work = tempfile::tempdir().unwrap();
    let salt = format!("{}", registry.port);
    let amd64 = image("amd64", 2, &salt);
    let arm64 = image("arm64", 2, &salt);
    let index = index(&[amd64.clone(), arm64.clone()]);
    let layout = oci_layout(
        work.path(),
        "multi",
        &index,
        &[amd64.clone(), arm64.clone()],
    );
    push_layout(
        &layout,
        "multi",
        &format!("{}/multi/app:v1", registry.host()),
        creds,
    );
    let single = image("amd64", 3, &format!("single-{salt}"));
    let layout = oci_layout(
        work.path(),
        "single",
        &single.manifest,
        std::slice::from_ref(&single),
    );
    push_layout(
        &layout,
        "single",
        &format!("{}/single/app:v1", registry.host()),
        creds,
    );
    Loaded {
        registry,
        _work: work,
        amd64,
        arm64,
        index,
        single,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_index_and_manifest_by_tag_and_digest() {
    let l = loaded(RegistryOptions::default(), None);
    // Default options: a loopback registry is tried over HTTPS, then plain HTTP.
    let c = client();
    let r = Reference::parse(&format!("{}/multi/app:v1", l.registry.host())).unwrap();
    let root = c.resolve(&r).await.unwrap();
    assert_eq!(root.digest, l.index.digest());
    assert_eq!(root.media_type, OCI_INDEX);
    assert_eq!(root.size, l.index.bytes.len() as u64);

    for (platform, want) in [
        (Platform::new("linux", "arm64", ""), &l.arm64),
        (Platform::new("linux", "amd64", ""), &l.amd64),
    ] {
        let pulled = c.pull_manifest(&r, &[platform]).await.unwrap();
        assert_eq!(pulled.root.digest, l.index.digest());
        assert_eq!(pulled.index.as_deref(), Some(&l.index.bytes[..]));
        assert_eq!(pulled.descriptor.digest, want.manifest.digest());
        assert_eq!(&pulled.bytes[..], &want.manifest.bytes[..]);
        let config = c
            .fetch_blob_bytes(&r, &pulled.manifest.config, 1 << 20)
            .await
            .unwrap();
        assert_eq!(&config[..], &want.config.bytes[..]);
        for (d, blob) in pulled.manifest.layers.iter().zip(&want.layers) {
            assert_eq!(read_all(&c, &r, d).await.unwrap(), blob.bytes);
        }
    }
    assert!(matches!(
        c.pull_manifest(&r, &[Platform::new("linux", "s390x", "")])
            .await,
        Err(Error::NoMatchingPlatform(_))
    ));

    // By digest: the index, and a platform manifest directly.
    let by_digest = r.with_digest(&l.index.digest()).unwrap();
    assert_eq!(
        c.resolve(&by_digest).await.unwrap().digest,
        l.index.digest()
    );
    let (doc, _) = c.fetch_manifest(&r, &root).await.unwrap();
    assert!(matches!(doc, Document::Index(ref i) if i.manifests.len() == 2));

    // A single manifest.
    let s = Reference::parse(&format!("{}/single/app:v1", l.registry.host())).unwrap();
    let pulled = c.pull_manifest(&s, &[]).await.unwrap();
    assert!(pulled.index.is_none());
    assert_eq!(pulled.descriptor.digest, l.single.manifest.digest());
    assert_eq!(pulled.manifest.layers.len(), 3);

    // Unknown tag and unknown blob: not found.
    let missing = Reference::parse(&format!("{}/multi/app:nope", l.registry.host())).unwrap();
    assert!(c.resolve(&missing).await.unwrap_err().is_not_found());
    // A digest that would walk the registry's URL space is refused before any request.
    let mut walk = desc(&l.single.config);
    walk.digest = "sha256:../../../v2/_catalog".into();
    assert!(matches!(
        read_all(&c, &s, &walk).await,
        Err(Error::InvalidManifest(_))
    ));
    assert!(matches!(
        c.fetch_manifest(&s, &walk).await,
        Err(Error::InvalidManifest(_))
    ));
    let mut bogus = desc(&l.single.config);
    bogus.digest = sha256(b"not there");
    assert!(read_all(&c, &s, &bogus).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_basic_auth() {
    let l = loaded(
        RegistryOptions {
            htpasswd: Some(("alice".into(), "s3cret".into())),
            ..Default::default()
        },
        Some("alice:s3cret"),
    );
    let host = l.registry.host();
    let r = Reference::parse(&format!("{host}/multi/app:v1")).unwrap();

    let anonymous = client();
    assert!(matches!(
        anonymous.resolve(&r).await,
        Err(Error::Unauthorized(_))
    ));
    let wrong = client_with(HostsConfig::default(), Some((&host, "alice", "nope")));
    assert!(matches!(
        wrong.resolve(&r).await,
        Err(Error::Unauthorized(_))
    ));
    let elsewhere = client_with(
        HostsConfig::default(),
        Some(("other:5000", "alice", "s3cret")),
    );
    assert!(matches!(
        elsewhere.resolve(&r).await,
        Err(Error::Unauthorized(_))
    ));

    // Credentials from `berth login`'s store file.
    let store_dir = tempfile::tempdir().unwrap();
    let store = berth_registry::LoginStore::new(store_dir.path().join("auth.json"));
    store
        .store(
            &host,
            &Credentials::Basic {
                username: "alice".into(),
                password: "s3cret".into(),
            },
        )
        .unwrap();
    let good = Client::with_credentials(ClientConfig::default(), Arc::new(store));
    // And from docker's config.json, keyed by URL as `docker login` writes it.
    let docker = store_dir.path().join("config.json");
    std::fs::write(
        &docker,
        format!(
            "{{\"auths\":{{\"http://{host}\":{{\"auth\":\"{}\"}}}}}}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:s3cret")
        ),
    )
    .unwrap();
    let from_docker = Client::with_credentials(
        ClientConfig::default(),
        Arc::new(berth_registry::DockerConfig::new(&docker)),
    );
    from_docker.resolve(&r).await.unwrap();
    let pulled = good
        .pull_manifest(&r, &[Platform::new("linux", "amd64", "")])
        .await
        .unwrap();
    for (d, blob) in pulled.manifest.layers.iter().zip(&l.amd64.layers) {
        assert_eq!(read_all(&good, &r, d).await.unwrap(), blob.bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_back_and_mount_across_repositories() {
    let registry = Registry::start(RegistryOptions::default());
    let img = image("amd64", 2, &format!("push-{}", registry.port));
    let c = client();
    let r = Reference::parse(&format!("{}/pushed/app:v1", registry.host())).unwrap();

    // Config in one PUT, layers in chunks (the first streamed, the second from bytes).
    assert_eq!(
        c.push_blob(
            &r,
            &desc(&img.config),
            BlobSource::Bytes(Bytes::from(img.config.bytes.clone())),
            &PushOptions::default(),
        )
        .await
        .unwrap(),
        PushOutcome::Uploaded
    );
    let chunked = PushOptions {
        chunk_size: Some(7000),
        ..Default::default()
    };
    let pieces: Vec<std::io::Result<Bytes>> = img.layers[0]
        .bytes
        .chunks(3000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    assert_eq!(
        c.push_blob(
            &r,
            &desc(&img.layers[0]),
            BlobSource::Stream(Box::pin(futures_util::stream::iter(pieces))),
            &chunked,
        )
        .await
        .unwrap(),
        PushOutcome::Uploaded
    );
    assert_eq!(
        c.push_blob(
            &r,
            &desc(&img.layers[1]),
            BlobSource::Bytes(Bytes::from(img.layers[1].bytes.clone())),
            &chunked,
        )
        .await
        .unwrap(),
        PushOutcome::Uploaded
    );
    // Again: the registry has it.
    assert_eq!(
        c.push_blob(
            &r,
            &desc(&img.config),
            BlobSource::Bytes(Bytes::from(img.config.bytes.clone())),
            &PushOptions::default(),
        )
        .await
        .unwrap(),
        PushOutcome::Exists
    );
    let pushed = c
        .push_manifest(&r, OCI_MANIFEST, Bytes::from(img.manifest.bytes.clone()))
        .await
        .unwrap();
    assert_eq!(pushed.digest, img.manifest.digest());

    // Pulled back identical.
    let pulled = c.pull_manifest(&r, &[]).await.unwrap();
    assert_eq!(&pulled.bytes[..], &img.manifest.bytes[..]);
    for (d, blob) in pulled.manifest.layers.iter().zip(&img.layers) {
        assert_eq!(read_all(&c, &r, d).await.unwrap(), blob.bytes);
    }

    // Another repository mounts the layer instead of uploading it.
    let other = r.with_repository("other/app").unwrap();
    assert_eq!(
        c.push_blob(
            &other,
            &desc(&img.layers[0]),
            BlobSource::Bytes(Bytes::from(img.layers[0].bytes.clone())),
            &PushOptions {
                mount_from: vec!["pushed/app".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap(),
        PushOutcome::Mounted
    );
    assert_eq!(
        read_all(&c, &other, &desc(&img.layers[0])).await.unwrap(),
        img.layers[0].bytes
    );

    // A mount source without the blob: the registry starts an upload instead, and it is used.
    let third = r.with_repository("third/app").unwrap();
    assert_eq!(
        c.push_blob(
            &third,
            &desc(&img.layers[1]),
            BlobSource::Bytes(Bytes::from(img.layers[1].bytes.clone())),
            &PushOptions {
                mount_from: vec!["never/pushed".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap(),
        PushOutcome::Uploaded
    );
    assert!(c.blob_exists(&third, &desc(&img.layers[1])).await.unwrap());

    // Bytes that do not match their descriptor are refused, and the registry keeps nothing.
    let liar = Blob {
        media_type: OCI_LAYER.into(),
        bytes: b"the real bytes".to_vec(),
    };
    let mut claimed = desc(&liar);
    claimed.digest = sha256(b"something else");
    for opts in [PushOptions::default(), chunked.clone()] {
        let err = c
            .push_blob(
                &r,
                &claimed,
                BlobSource::Bytes(Bytes::from(liar.bytes.clone())),
                &opts,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::DigestMismatch { .. } | Error::Status { .. }),
            "{err}"
        );
        assert!(!c.blob_exists(&r, &claimed).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_used_then_server_when_mirror_is_down() {
    let l = loaded(RegistryOptions::default(), None);
    let dead = free_port();
    let root = tempfile::tempdir().unwrap();
    // An air-gapped name: the real server is unreachable, the mirror serves it.
    hosts_dir(
        root.path(),
        "registry.example",
        &format!(
            "server = \"http://127.0.0.1:{dead}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            l.registry.host()
        ),
    );
    // The mirror is down: the server answers.
    hosts_dir(
        root.path(),
        "fallback.example",
        &format!(
            "server = \"http://{}\"\n[host.\"http://127.0.0.1:{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            l.registry.host()
        ),
    );
    // A mirror whose URL is its whole API root (override_path), as for a pull-through cache
    // that serves many registries under different paths.
    hosts_dir(
        root.path(),
        "override.example",
        &format!(
            "server = \"http://127.0.0.1:{dead}\"\n[host.\"http://{}/v2\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n",
            l.registry.host()
        ),
    );
    let c = client_with(HostsConfig::with_config_path(root.path()), None);
    for name in ["registry.example", "fallback.example", "override.example"] {
        let r = Reference::parse(&format!("{name}/multi/app:v1")).unwrap();
        let pulled = c
            .pull_manifest(&r, &[Platform::new("linux", "arm64", "v8")])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(pulled.descriptor.digest, l.arm64.manifest.digest());
        let layer = &pulled.manifest.layers[0];
        assert_eq!(
            read_all(&c, &r, layer).await.unwrap(),
            l.arm64.layers[0].bytes
        );
    }
    // The mirror was asked with the name's namespace, as containerd does.
    assert!(
        l.registry.log().contains("ns=registry.example"),
        "mirror requests carry ?ns="
    );
    // Neither host up: an error, not a hang.
    hosts_dir(
        root.path(),
        "nowhere.example",
        &format!("server = \"http://127.0.0.1:{dead}\"\n"),
    );
    let r = Reference::parse("nowhere.example/multi/app:v1").unwrap();
    assert!(matches!(c.resolve(&r).await, Err(Error::Http { .. })));
}

/// A stand-in registry at `host` reached over plain HTTP through hosts.toml.
fn standin_client(root: &std::path::Path, host: &str, limits: berth_registry::Limits) -> Client {
    hosts_dir(
        root,
        &host.replace(':', "_"),
        &format!("server = \"http://{host}\"\n"),
    );
    Client::new(ClientConfig {
        hosts: HostsConfig::with_config_path(root),
        limits,
        ..ClientConfig::default()
    })
}

/// Read what a reader hands out until it ends or fails; the bytes and the outcome.
async fn drain(
    c: &Client,
    r: &Reference,
    d: &Descriptor,
    resume: Option<Resume>,
) -> (Vec<u8>, Result<(), Error>) {
    let mut out = Vec::new();
    let mut reader = match c.fetch_blob(r, d, resume).await {
        Ok(r) => r,
        Err(e) => return (out, Err(e)),
    };
    loop {
        match reader.next_chunk().await {
            Ok(Some(b)) => out.extend_from_slice(&b),
            Ok(None) => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_blobs_fail_before_the_caller_has_them_all() {
    let good: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let size = good.len();
    let body = good.clone();
    let standin = StandIn::start(move |req| {
        let mut wrong = body.clone();
        wrong[size / 2] ^= 1;
        let octet = ("Content-Type", "application/octet-stream".to_string());
        // The repository name (`case/<name>`) picks the behaviour.
        let case = req.path.split('/').nth(3).unwrap_or("");
        match case {
            "wrong" => response("200 OK", &[octet], &wrong),
            "short" => {
                // Promise the whole blob, send most of it, close.
                let mut raw = format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {size}\r\n\r\n"
                )
                .into_bytes();
                raw.extend_from_slice(&body[..size - 1000]);
                Reply::Raw(raw)
            }
            "long" => {
                // Chunked, so no Content-Length gives it away: more bytes than the descriptor.
                let mut raw =
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                        .to_vec();
                let extra = [&body[..], b"trailing junk"].concat();
                raw.extend_from_slice(format!("{:x}\r\n", extra.len()).as_bytes());
                raw.extend_from_slice(&extra);
                raw.extend_from_slice(b"\r\n0\r\n\r\n");
                Reply::Raw(raw)
            }
            "huge" => {
                Reply::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\n".to_vec())
            }
            "stall" => Reply::Stall(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes(),
            ),
            _ => response("404 Not Found", &[], b"{}"),
        }
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let limits = berth_registry::Limits {
        progress_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let c = standin_client(root.path(), &standin.host(), limits);
    let r = Reference::parse(&format!("{}/hostile/app:v1", standin.host())).unwrap();
    let digest = sha256(&good);

    for name in ["wrong", "short", "long", "huge", "stall"] {
        let d = Descriptor::new(OCI_LAYER, &digest, size as u64);
        let r = r.with_repository(&format!("case/{name}")).unwrap();
        let started = std::time::Instant::now();
        let (got, outcome) = drain(&c, &r, &d, None).await;
        let err = outcome.expect_err(name);
        assert!(
            got.len() < size,
            "{name}: the caller was handed the whole blob before the error {err}"
        );
        match name {
            "wrong" => assert!(matches!(err, Error::DigestMismatch { .. }), "{name}: {err}"),
            "short" => assert!(
                matches!(err, Error::Http { .. } | Error::SizeMismatch { .. }),
                "{name}: {err}"
            ),
            "long" => assert!(matches!(err, Error::SizeMismatch { .. }), "{name}: {err}"),
            "huge" => {
                assert!(
                    matches!(
                        err,
                        Error::SizeMismatch {
                            actual: 10737418240,
                            ..
                        }
                    ),
                    "{name}: {err}"
                );
                assert!(got.is_empty());
            }
            "stall" => {
                assert!(matches!(err, Error::Timeout { .. }), "{name}: {err}");
                assert!(started.elapsed() < std::time::Duration::from_secs(10));
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(standin.requests().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_manifests_stopped_at_their_bounds() {
    let d = sha256(b"x");
    let schema1 = br#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#.to_vec();
    let standin = StandIn::start(move |req| {
        let case = req.path.split('/').nth(3).unwrap_or("").to_string();
        let head = |extra: &str| {
            format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: {OCI_MANIFEST}\r\n{extra}\r\n")
                .into_bytes()
        };
        match (req.method.as_str(), case.as_str()) {
            // HEAD says nothing useful; GET never ends.
            ("HEAD", "endless") => response("200 OK", &[], b""),
            ("GET", "endless") => Reply::Endless(head("Transfer-Encoding: chunked\r\n")),
            (_, "huge") => Reply::Stall(head(&format!(
                "Content-Length: 10737418240\r\nDocker-Content-Digest: {d}\r\n"
            ))),
            (_, "schema1") => response(
                "200 OK",
                &[(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
                )],
                &schema1,
            ),
            _ => response("404 Not Found", &[], b"{}"),
        }
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let c = standin_client(root.path(), &standin.host(), Default::default());
    let r = |case: &str| Reference::parse(&format!("{}/case/{case}:v1", standin.host())).unwrap();

    let started = std::time::Instant::now();
    let err = c.resolve(&r("endless")).await.unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit, .. } if limit == 4 << 20),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let err = c.resolve(&r("huge")).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    // A descriptor that claims a 10 GiB manifest is refused before any request.
    let before = standin.requests().len();
    let big = Descriptor::new(OCI_MANIFEST, &sha256(b"y"), 10 << 30);
    let err = c.fetch_manifest(&r("huge"), &big).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert_eq!(standin.requests().len(), before);
    // An endless body behind a small descriptor is cut at the descriptor's size.
    let small = Descriptor::new(OCI_MANIFEST, &sha256(b"z"), 1000);
    let err = c.fetch_manifest(&r("endless"), &small).await.unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    let err = c.resolve(&r("schema1")).await.unwrap_err();
    assert!(matches!(err, Error::Schema1(_)), "{err}");
    assert!(err.to_string().contains("schema 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_another_host_drops_the_credentials() {
    let blob: Vec<u8> = b"layer bytes in object storage".repeat(1000);
    let digest = sha256(&blob);
    let served = blob.clone();
    let storage = StandIn::start(move |_| response("200 OK", &[], &served)).await;
    let storage_url = format!("http://{}/bucket/blob?signature=abc", storage.host());
    let registry = StandIn::start(move |req| match req.header("authorization") {
        None => response(
            "401 Unauthorized",
            &[("WWW-Authenticate", "Basic realm=\"test\"".into())],
            b"{}",
        ),
        Some(_) => response(
            "307 Temporary Redirect",
            &[("Location", storage_url.clone())],
            b"",
        ),
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    hosts_dir(
        root.path(),
        &registry.host().replace(':', "_"),
        &format!(
            "server = \"http://{}\"\n[header]\n  x-secret-header = \"for the registry only\"\n",
            registry.host()
        ),
    );
    let c = client_with(
        HostsConfig::with_config_path(root.path()),
        Some((&registry.host(), "bob", "hunter2")),
    );
    let r = Reference::parse(&format!("{}/app:v1", registry.host())).unwrap();
    let d = Descriptor::new(OCI_LAYER, &digest, blob.len() as u64);
    let (got, outcome) = drain(&c, &r, &d, None).await;
    outcome.unwrap();
    assert_eq!(got, blob);

    let asked = registry.requests();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[1]
        .header("authorization")
        .is_some_and(|a| a.starts_with("Basic ")));
    assert_eq!(
        asked[1].header("x-secret-header"),
        Some("for the registry only")
    );
    let fetched = storage.requests();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].path, "/bucket/blob?signature=abc");
    assert_eq!(fetched[0].header("authorization"), None, "{fetched:?}");
    assert_eq!(fetched[0].header("x-secret-header"), None, "{fetched:?}");

    // A layer's foreign URLs are not followed unless configured.
    let mut foreign = d.clone();
    foreign.digest = sha256(b"only elsewhere");
    foreign.urls = vec![format!("http://{}/foreign", storage.host())];
    let nothing = StandIn::start(|_| response("404 Not Found", &[], b"{}")).await;
    hosts_dir(
        root.path(),
        &nothing.host().replace(':', "_"),
        &format!("server = \"http://{}\"\n", nothing.host()),
    );
    let r2 = Reference::parse(&format!("{}/app:v1", nothing.host())).unwrap();
    let (_, outcome) = drain(&c, &r2, &foreign, None).await;
    assert!(
        matches!(outcome, Err(Error::ForeignLayer(_))),
        "{outcome:?}"
    );
    assert_eq!(storage.requests().len(), 1, "the foreign URL was fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_blob_resumes_from_its_offset() {
    let blob: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i * 7).to_le_bytes())
        .collect();
    let digest = sha256(&blob);
    let size = blob.len();
    for honours_range in [true, false] {
        let served = blob.clone();
        let standin = StandIn::start(move |req| {
            let range = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok());
            match range {
                Some(from) if honours_range => response(
                    "206 Partial Content",
                    &[("Content-Range", format!("bytes {from}-{}/{size}", size - 1))],
                    &served[from..],
                ),
                Some(_) => response("200 OK", &[], &served),
                None => {
                    // The connection drops part way.
                    let mut raw = format!(
                        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {size}\r\n\r\n"
                    )
                    .into_bytes();
                    raw.extend_from_slice(&served[..size / 3]);
                    Reply::Raw(raw)
                }
            }
        })
        .await;
        let root = tempfile::tempdir().unwrap();
        let c = standin_client(root.path(), &standin.host(), Default::default());
        let r = Reference::parse(&format!("{}/app:v1", standin.host())).unwrap();
        let d = Descriptor::new(OCI_LAYER, &digest, size as u64);
        let (prefix, outcome) = drain(&c, &r, &d, None).await;
        assert!(outcome.is_err());
        assert!(!prefix.is_empty() && prefix.len() < size);
        assert_eq!(&prefix[..], &blob[..prefix.len()]);

        let resume = Resume::from_prefix(&prefix);
        let (rest, outcome) = drain(&c, &r, &d, Some(resume)).await;
        outcome.unwrap_or_else(|e| panic!("resume (range honoured: {honours_range}): {e}"));
        assert_eq!([prefix, rest].concat(), blob);
        let asked = standin.requests();
        assert_eq!(asked.len(), 2);
        assert!(asked[1].header("range").is_some());

        // A caller holding every byte only has them verified.
        let (rest, outcome) = drain(&c, &r, &d, Some(Resume::from_prefix(&blob))).await;
        outcome.unwrap();
        assert!(rest.is_empty());
        assert_eq!(standin.requests().len(), 2, "nothing left to ask for");
        let mut tampered = blob.clone();
        tampered[7] ^= 1;
        let (_, outcome) = drain(&c, &r, &d, Some(Resume::from_prefix(&tampered))).await;
        assert!(
            matches!(outcome, Err(Error::DigestMismatch { .. })),
            "{outcome:?}"
        );

        // A wrong prefix is caught by the digest at the end.
        let mut bad = blob[..1000].to_vec();
        bad[0] ^= 0xff;
        let (_, outcome) = drain(&c, &r, &d, Some(Resume::from_prefix(&bad))).await;
        assert!(
            matches!(outcome, Err(Error::DigestMismatch { .. })),
            "{outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_and_client_certificates() {
    let pki = test_pki();
    let registry = Registry::start(RegistryOptions {
        tls: Some((pki.server_pem.clone(), pki.server_key.clone())),
        client_ca: Some(pki.ca_pem.clone()),
        ..Default::default()
    });
    let host = registry.host();
    // skopeo reads docker's certs.d layout: *.crt CAs, a *.cert with its *.key.
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), &pki.ca_pem).unwrap();
    std::fs::write(certs.path().join("client.cert"), &pki.client_pem).unwrap();
    std::fs::write(certs.path().join("client.key"), &pki.client_key).unwrap();
    let work = tempfile::tempdir().unwrap();
    let img = image("amd64", 1, &format!("tls-{}", registry.port));
    let layout = oci_layout(
        work.path(),
        "tls",
        &img.manifest,
        std::slice::from_ref(&img),
    );
    let dest = format!("docker://{host}/secure/app:v1");
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-cert-dir",
        &certs.path().display().to_string(),
        &format!("oci:{}:tls", layout.display()),
        &dest,
    ]);

    let r = Reference::parse(&format!("{host}/secure/app:v1")).unwrap();
    let configured = |name: &str, body: &str| {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(host.replace(':', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(dir.join("client.pem"), &pki.client_pem).unwrap();
        std::fs::write(dir.join("client.key"), &pki.client_key).unwrap();
        std::fs::write(
            dir.join("hosts.toml"),
            format!("server = \"https://{host}\"\n{body}"),
        )
        .unwrap();
        let c = client_with(HostsConfig::with_config_path(root.path()), None);
        (name.to_string(), c, root)
    };

    // The CA and the client certificate: a verified pull.
    let (_, good, _keep) = configured(
        "ca+client",
        "ca = \"ca.pem\"\nclient = [[\"client.pem\", \"client.key\"]]\n",
    );
    let pulled = good.pull_manifest(&r, &[]).await.unwrap();
    assert_eq!(pulled.descriptor.digest, img.manifest.digest());
    let layer = read_all(&good, &r, &pulled.manifest.layers[0])
        .await
        .unwrap();
    assert_eq!(
        (layer.len(), sha256(&layer)),
        (img.layers[0].bytes.len(), img.layers[0].digest())
    );

    // Over TLS the client and the registry agree on HTTP/2 (ALPN).
    assert!(
        registry.log().contains("HTTP/2.0"),
        "no HTTP/2 request in the registry log"
    );

    // skip_verify, where configured, trusts any server certificate.
    let (_, skip, _keep2) = configured(
        "skip_verify",
        "skip_verify = true\nclient = [[\"client.pem\", \"client.key\"]]\n",
    );
    skip.resolve(&r).await.unwrap();

    // Without the CA the server is refused; without the client certificate the server refuses.
    for (name, c, _keep) in [
        configured("no CA", "client = [[\"client.pem\", \"client.key\"]]\n"),
        configured("no client certificate", "ca = \"ca.pem\"\n"),
    ] {
        let err = c.resolve(&r).await.unwrap_err();
        assert!(matches!(err, Error::Http { .. }), "{name}: {err}");
    }
    // Unconfigured, a loopback host falls back to plain HTTP only when the server does not
    // speak TLS: a certificate it cannot verify is an error, not a clear-text retry.
    let err = client().resolve(&r).await.unwrap_err();
    assert!(matches!(err, Error::Http { .. }), "{err}");
    assert!(
        !registry.log().contains("HTTP request to an HTTPS server"),
        "fell back to plain HTTP after a certificate error"
    );
}

/// A token server as docker's distribution expects one: checks Basic credentials, and signs
/// an ES256 JWT (x5c header: the signing certificate, which the registry trusts as its root)
/// granting the scopes asked for.
struct TokenServer {
    standin: StandIn,
    cert_pem: String,
}

const SERVICE: &str = "berth-test-registry";
const ISSUER: &str = "berth-test-issuer";

async fn token_server(user: &'static str, password: &'static str) -> TokenServer {
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth test token signer");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .unwrap();
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let standin = StandIn::start(move |req| {
        if req.header("authorization") != Some(expected.as_str()) {
            return response(
                "401 Unauthorized",
                &[],
                b"{\"details\":\"bad credentials\"}",
            );
        }
        let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut access = Vec::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if k == "scope" {
                for scope in v.split(' ') {
                    let parts: Vec<&str> = scope.split(':').collect();
                    if let [kind, name, actions] = parts.as_slice() {
                        access.push(serde_json::json!({
                            "type": kind, "name": name,
                            "actions": actions.split(',').collect::<Vec<_>>(),
                        }));
                    }
                }
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": user, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", access.len()), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&serde_json::to_vec(&claims).unwrap())
        );
        let sig = signer
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        let token = format!("{signing_input}.{}", b64(sig.as_ref()));
        let body =
            serde_json::to_vec(&serde_json::json!({"token": token, "expires_in": 300})).unwrap();
        response(
            "200 OK",
            &[("Content-Type", "application/json".into())],
            &body,
        )
    })
    .await;
    TokenServer {
        standin,
        cert_pem: cert.pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_against_the_registry_token_auth() {
    let tokens = token_server("carol", "pa55").await;
    let l = loaded(
        RegistryOptions {
            token: Some((
                format!("http://{}/token", tokens.standin.host()),
                SERVICE.into(),
                ISSUER.into(),
                tokens.cert_pem.clone(),
            )),
            ..Default::default()
        },
        Some("carol:pa55"),
    );
    let host = l.registry.host();
    let r = Reference::parse(&format!("{host}/multi/app:v1")).unwrap();
    let pushed_by_skopeo = tokens.standin.requests().len();

    // No credentials: the token server refuses, and so does the pull.
    let err = client().resolve(&r).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err}");

    let c = client_with(HostsConfig::default(), Some((&host, "carol", "pa55")));
    let pulled = c
        .pull_manifest(&r, &[Platform::new("linux", "arm64", "")])
        .await
        .unwrap();
    assert_eq!(pulled.descriptor.digest, l.arm64.manifest.digest());
    for (d, blob) in pulled.manifest.layers.iter().zip(&l.arm64.layers) {
        let got = read_all(&c, &r, d).await.unwrap();
        assert_eq!(sha256(&got), blob.digest());
    }
    // One token for the whole pull: cached per host and scope.
    let asked: Vec<SeenRequest> = tokens.standin.requests()[pushed_by_skopeo..].to_vec();
    let with_creds = asked
        .iter()
        .filter(|q| q.header("authorization").is_some())
        .count();
    assert_eq!(
        asked.len(),
        2,
        "one refused anonymous, then one token: {asked:?}"
    );
    assert_eq!(with_creds, 1, "{asked:?}");
    let last = asked.last().unwrap();
    assert!(
        last.path.contains("service=berth-test-registry"),
        "{}",
        last.path
    );
    assert!(
        last.path.contains("scope=repository%3Amulti%2Fapp%3Apull"),
        "{}",
        last.path
    );

    // A push asks for a push token, and the registry accepts it.
    let img = image("amd64", 1, &format!("token-{}", l.registry.port));
    let pr = r.with_repository("pushed/by-token").unwrap();
    for b in [&img.config, &img.layers[0]] {
        c.push_blob(
            &pr,
            &desc(b),
            BlobSource::Bytes(Bytes::from(b.bytes.clone())),
            &PushOptions::default(),
        )
        .await
        .unwrap();
    }
    c.push_manifest(&pr, OCI_MANIFEST, Bytes::from(img.manifest.bytes.clone()))
        .await
        .unwrap();
    assert!(tokens
        .standin
        .requests()
        .iter()
        .any(|q| q.path.contains("pushed%2Fby-token%3Apull%2Cpush")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_refreshed_once_on_401() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let issued = Arc::new(AtomicU32::new(0));
    let n = issued.clone();
    let tokens = StandIn::start(move |_| {
        let t = n.fetch_add(1, Ordering::SeqCst) + 1;
        response(
            "200 OK",
            &[],
            format!("{{\"access_token\":\"t{t}\",\"expires_in\":3600}}").as_bytes(),
        )
    })
    .await;
    let revoked = Arc::new(AtomicBool::new(false));
    let rv = revoked.clone();
    let realm = format!("http://{}/token", tokens.host());
    let digest = sha256(b"manifest");
    let registry = StandIn::start(move |req| {
        let good = if rv.load(Ordering::SeqCst) {
            "Bearer t2"
        } else {
            "Bearer t1"
        };
        if req.header("authorization") == Some(good) {
            response(
                "200 OK",
                &[
                    ("Content-Type", OCI_MANIFEST.into()),
                    ("Docker-Content-Digest", digest.clone()),
                    ("Content-Length", "8".into()),
                ],
                b"",
            )
        } else {
            response(
                "401 Unauthorized",
                &[(
                    "WWW-Authenticate",
                    format!(
                        "Bearer realm=\"{realm}\",service=\"svc\",scope=\"repository:app:pull\""
                    ),
                )],
                b"{}",
            )
        }
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let c = standin_client(root.path(), &registry.host(), Default::default());
    let r = Reference::parse(&format!("{}/app:v1", registry.host())).unwrap();
    assert_eq!(c.resolve(&r).await.unwrap().digest, sha256(b"manifest"));
    assert_eq!(c.resolve(&r).await.unwrap().size, 8);
    assert_eq!(issued.load(Ordering::SeqCst), 1, "the token is cached");
    revoked.store(true, Ordering::SeqCst);
    c.resolve(&r).await.unwrap();
    assert_eq!(issued.load(Ordering::SeqCst), 2, "refreshed after the 401");
    assert_eq!(
        registry.requests().last().unwrap().header("authorization"),
        Some("Bearer t2")
    );
    // The token server got no credentials: this client has none.
    assert!(tokens
        .requests()
        .iter()
        .all(|q| q.header("authorization").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_wait_for_a_permit_of_the_shared_semaphore() {
    let standin = StandIn::start(|_| {
        Reply::Stall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec())
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    hosts_dir(
        root.path(),
        &standin.host().replace(':', "_"),
        &format!("server = \"http://{}\"\n", standin.host()),
    );
    // One permit shared by two clients, as a daemon-wide bound would be.
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let config = ClientConfig {
        hosts: HostsConfig::with_config_path(root.path()),
        ..ClientConfig::default()
    };
    let http = berth_registry::HttpClients::default();
    let a = Client::with_parts(
        config.clone(),
        Arc::new(berth_registry::Anonymous),
        permits.clone(),
        http.clone(),
    );
    let b = Client::with_parts(
        config,
        Arc::new(berth_registry::Anonymous),
        permits.clone(),
        http,
    );
    let r = Reference::parse(&format!("{}/app:v1", standin.host())).unwrap();
    let d = Descriptor::new(OCI_LAYER, &sha256(b"x"), 100);
    let first = a.fetch_blob(&r, &d, None).await.unwrap();
    let wait = std::time::Duration::from_millis(300);
    assert!(
        tokio::time::timeout(wait, b.fetch_blob(&r, &d, None))
            .await
            .is_err(),
        "a second download started while the only permit was held"
    );
    assert_eq!(standin.requests().len(), 1);
    drop(first);
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        b.fetch_blob(&r, &d, None),
    )
    .await
    .expect("the permit came back")
    .unwrap();
    assert_eq!(second.offset(), 0);
    assert_eq!(permits.available_permits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_token_is_exchanged_by_oauth_post() {
    let tokens = StandIn::start(|req| {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
        if req.method == "POST"
            && has("grant_type", "refresh_token")
            && has("refresh_token", "rt-123")
            && has("service", "svc")
            && has("scope", "repository:app:pull")
        {
            response("200 OK", &[], b"{\"access_token\":\"from-refresh\"}")
        } else {
            response("400 Bad Request", &[], b"{}")
        }
    })
    .await;
    let realm = format!("http://{}/oauth", tokens.host());
    let registry = StandIn::start(move |req| {
        if req.header("authorization") == Some("Bearer from-refresh") {
            response(
                "200 OK",
                &[
                    ("Content-Type", OCI_MANIFEST.into()),
                    ("Docker-Content-Digest", sha256(b"m")),
                    ("Content-Length", "1".into()),
                ],
                b"",
            )
        } else {
            response(
                "401 Unauthorized",
                &[(
                    "WWW-Authenticate",
                    format!("Bearer realm=\"{realm}\",service=\"svc\""),
                )],
                b"{}",
            )
        }
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    hosts_dir(
        root.path(),
        &registry.host().replace(':', "_"),
        &format!("server = \"http://{}\"\n", registry.host()),
    );
    let mut creds = std::collections::BTreeMap::new();
    creds.insert(
        registry.host(),
        Credentials::IdentityToken {
            username: "<token>".into(),
            token: "rt-123".into(),
        },
    );
    let c = Client::with_credentials(
        ClientConfig {
            hosts: HostsConfig::with_config_path(root.path()),
            ..ClientConfig::default()
        },
        Arc::new(StaticCredentials(creds)),
    );
    let r = Reference::parse(&format!("{}/app:v1", registry.host())).unwrap();
    assert_eq!(c.resolve(&r).await.unwrap().digest, sha256(b"m"));
    let asked = tokens.requests();
    assert_eq!(asked.len(), 1);
    // The refresh token travels in the body, never in the URL.
    assert!(!asked[0].path.contains("rt-123"), "{}", asked[0].path);
}
