//! berth-registry against real parts: Debian's docker-registry (plain, htpasswd, TLS with a CA
//! the test makes, token auth with a token server the test runs), images pushed by skopeo, and
//! scripted stand-ins for hostile registries and storage hosts.

mod support;

use berth_registry::{
    BlobSource, Client, ClientConfig, Credentials, Descriptor, Document, Error, HostsConfig,
    Platform, PushOptions, PushOutcome, Reference, StaticCredentials,
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

    let good = client_with(HostsConfig::default(), Some((&host, "alice", "s3cret")));
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
    let c = client_with(HostsConfig::with_config_path(root.path()), None);
    for name in ["registry.example", "fallback.example"] {
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
