//! Pull, push and tag through berthd's Transfer service, driven by the real `ctr` 2.4.2 with its
//! default (Transfer) paths against Debian's `docker-registry` on loopback: all registry HTTP
//! happens in berthd. (`registry.rs`'s `pull_from_a_registry_with_ctr_2` checks the labels,
//! snapshots and idempotence of such a pull; the v2 Go client's `client.Transfer` is in
//! `containerd_v2.rs`.)

use crate::harness::{process_token, Ctr, Daemon};
use crate::observe::{free_port, http_get};
use crate::registry::{
    assert_layer_content, content_digests, pull_and_check, snapshot_keys, sorted, Registry,
};

#[test]
fn ctr_2_pulls_runs_tags_and_pushes_through_the_daemon() {
    let d = Daemon::start().using(Ctr::V2);
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let reference = registry.reference();
    pull_and_check(&d, "default", &registry, &served);

    let id = format!("transfer-run-{}", process_token());
    let out = d.ctr(
        "default",
        &["run", "--rm", &reference, &id, "echo", "pulled"],
    );
    assert_eq!(out.trim(), "pulled");

    // Tag: a second record with the same target.
    let tagged = format!("{}/copies/busybox:v2", registry.host());
    d.ctr("default", &["images", "tag", &reference, &tagged]);
    let ls = d.ctr("default", &["images", "ls"]);
    let target_of = |name: &str| {
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("{name} not in images ls:\n{ls}"))
            .to_string()
    };
    assert_eq!(target_of(&tagged), served.manifest_digest);
    assert_eq!(target_of(&reference), served.manifest_digest);

    // Push it to another repository: the registry then serves the same manifest there, its
    // blobs mounted from library/busybox or uploaded, each verified by the registry's digest.
    let out = d.ctr("default", &["images", "push", "--plain-http", &tagged]);
    assert!(
        out.contains("pushed content") || out.contains("Completed push"),
        "{out}"
    );
    let pushed = registry.served("copies/busybox", "v2");
    assert_eq!(pushed.manifest_digest, served.manifest_digest);
    assert_eq!(pushed.layer_digest, served.layer_digest);

    // Push to a fresh registry: every blob is uploaded (nothing to mount from).
    let other = Registry::start();
    let elsewhere = format!("{}/moved/busybox:latest", other.host());
    d.ctr("default", &["images", "tag", &reference, &elsewhere]);
    d.ctr("default", &["images", "push", "--plain-http", &elsewhere]);
    let moved = other.served("moved/busybox", "latest");
    assert_eq!(moved.manifest_digest, served.manifest_digest);
    assert_eq!(moved.config_digest, served.config_digest);
}

/// An image whose layer is `tar+zstd` (skopeo recompresses the fixture's): ctr 2 pulls it
/// through the Transfer service (berthd fetches and inflates the zstd stream while it arrives),
/// ctr 1.6 pulls it client-side with berthd's Diff.Apply unpacking it; both run it.
#[test]
fn ctr_2_and_ctr_1_6_pull_and_run_a_zstd_image() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox_zstd(work.path());
    let reference = registry.reference();
    for ctr in [Ctr::V2, Ctr::V1_6] {
        let d = Daemon::start().using(ctr);
        pull_and_check(&d, "default", &registry, &served);
        assert_layer_content(&d, "default", served.chain_id());
        let id = format!("zstd-run-{}", process_token());
        let out = d.ctr(
            "default",
            &["run", "--rm", &reference, &id, "echo", "from zstd"],
        );
        assert_eq!(out.trim(), "from zstd", "{ctr:?}");
    }
}

#[test]
fn ctr_2_pulls_with_user_from_an_htpasswd_registry() {
    let d = Daemon::start().using(Ctr::V2);
    let registry = Registry::start_with_htpasswd("berth", "s3cret-pw");
    let work = tempfile::tempdir().unwrap();
    registry.push_busybox_as(work.path(), "berth:s3cret-pw");
    let reference = registry.reference();

    // Without credentials the registry refuses and nothing is stored.
    let err = d.ctr_err("auth", &["images", "pull", "--plain-http", &reference]);
    assert!(
        err.contains("401") || err.contains("unauthenticated") || err.contains("authoriz"),
        "{err}"
    );
    assert_eq!(d.ctr("auth", &["images", "ls", "-q"]), "");

    // With --user, ctr answers berthd's questions on its auth stream.
    d.ctr(
        "auth",
        &[
            "images",
            "pull",
            "--plain-http",
            "--user",
            "berth:s3cret-pw",
            &reference,
        ],
    );
    assert_eq!(d.ctr("auth", &["images", "ls", "-q"]).trim(), reference);
    assert_eq!(content_digests(&d, "auth").len(), 3);

    // Push back under another name: refused without credentials, stored with --user.
    let pushed = format!("{}/pushed/busybox:latest", registry.host());
    d.ctr("auth", &["images", "tag", &reference, &pushed]);
    let err = d.ctr_err("auth", &["images", "push", "--plain-http", &pushed]);
    assert!(
        err.contains("401") || err.contains("unauthenticated") || err.contains("authoriz"),
        "{err}"
    );
    d.ctr(
        "auth",
        &[
            "images",
            "push",
            "--plain-http",
            "--user",
            "berth:s3cret-pw",
            &pushed,
        ],
    );
    d.ctr("auth", &["images", "rm", &pushed]);
    d.ctr(
        "auth",
        &[
            "images",
            "pull",
            "--plain-http",
            "--user",
            "berth:s3cret-pw",
            &pushed,
        ],
    );
    // The password never reaches berthd's log.
    assert!(
        !d.log().contains("s3cret-pw"),
        "the password is in berthd's log"
    );
}

#[test]
fn a_hostile_registry_stores_nothing() {
    let d = Daemon::start().using(Ctr::V2);
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    // The registry now serves other bytes (same length) under the layer's digest.
    let path = registry.blob_path(&served.layer_digest);
    let mut bytes = std::fs::read(&path).expect("the layer in the registry's storage");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let err = d.ctr_err(
        "hostile",
        &["images", "pull", "--plain-http", &registry.reference()],
    );
    assert!(err.contains("digest mismatch"), "{err}");
    // No image, no layer blob, no snapshot, no ingest left to resume from.
    assert_eq!(d.ctr("hostile", &["images", "ls", "-q"]), "");
    assert!(
        !content_digests(&d, "hostile").contains(&served.layer_digest),
        "the corrupt layer was stored"
    );
    assert!(snapshot_keys(&d, "hostile").is_empty());
    assert_eq!(d.ctr("hostile", &["content", "active"]).lines().count(), 1);
}

#[test]
fn two_concurrent_pulls_fetch_each_blob_once() {
    let d = Daemon::start().using(Ctr::V2);
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let reference = registry.reference();
    let pulls: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|ns| {
            d.ctr_command(ns, &["images", "pull", "--plain-http", &reference])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn ctr")
        })
        .collect();
    for p in pulls {
        let out = p.wait_with_output().expect("wait for ctr");
        assert!(out.status.success(), "{out:?}");
    }
    for ns in ["one", "two"] {
        assert_eq!(content_digests(&d, ns), sorted(served.blobs()));
        assert_eq!(snapshot_keys(&d, ns), [served.chain_id()]);
    }
    // The registry's access log: one GET per blob, whatever the two pulls' timing.
    for blob in [&served.layer_digest, &served.config_digest] {
        let gets = registry.berthd_gets(&format!("/v2/library/busybox/blobs/{blob}"));
        assert_eq!(gets, 1, "{blob} fetched {gets} times:\n{}", registry.log());
    }
}

/// Pulling an image the namespace holds asks the registry to resolve the tag and nothing else
/// (a kubelet's `Always` policy re-pulls at every container start). Another namespace, which does
/// not hold the manifest, still fetches it: content is not shared across namespaces by digest.
#[test]
fn a_repull_reads_the_stored_manifest_and_fetches_nothing() {
    let metrics_port = free_port();
    let d = Daemon::start_with_config(&format!(
        "[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n"
    ))
    .using(Ctr::V2);
    let syncs = || -> u64 {
        let scraped = http_get(metrics_port, "/v1/metrics").expect("scrape the metrics");
        scraped
            .lines()
            .find_map(|l| l.strip_prefix("berth_metadata_syncs_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no berth_metadata_syncs_total in:\n{scraped}"))
    };
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let reference = registry.reference();
    let manifest = format!("/v2/library/busybox/manifests/{}", served.manifest_digest);
    let blobs = |r: &Registry| {
        [&served.layer_digest, &served.config_digest]
            .map(|b| r.berthd_gets(&format!("/v2/library/busybox/blobs/{b}")))
    };

    d.ctr("repull", &["images", "pull", "--plain-http", &reference]);
    assert_eq!(registry.berthd_gets(&manifest), 1, "{}", registry.log());
    assert_eq!(blobs(&registry), [1, 1]);
    let first_pull = registry.berthd_connections();

    let before = syncs();
    let out = d.ctr("repull", &["images", "pull", "--plain-http", &reference]);
    assert!(out.contains("saved"), "{out}");
    // ctr's lease create and delete take a sync each. The transfer's records (the lease's
    // references to each blob and the chain, the labels) are staged and made durable together
    // with the image record: one sync, where a sync per record made eight. (One more is
    // allowed for a write of the daemon's own landing in between.)
    let repull_syncs = syncs() - before;
    assert!(
        (3..=4).contains(&repull_syncs),
        "the re-pull waited for {repull_syncs} metadata syncs"
    );
    // Its resolve went over a connection the first pull opened: the daemon keeps its HTTP
    // clients, and their idle connections, from pull to pull.
    let second_pull = registry.berthd_connections()[first_pull.len()..].to_vec();
    assert!(!second_pull.is_empty(), "{}", registry.log());
    assert!(
        second_pull.iter().all(|c| first_pull.contains(c)),
        "the second pull connected anew ({second_pull:?}, not of {first_pull:?})"
    );
    assert_eq!(
        registry.berthd_gets(&manifest),
        1,
        "the second pull fetched the manifest again:\n{}",
        registry.log()
    );
    assert_eq!(blobs(&registry), [1, 1]);
    assert_eq!(content_digests(&d, "repull"), sorted(served.blobs()));
    assert_eq!(snapshot_keys(&d, "repull"), [served.chain_id()]);

    d.ctr(
        "repull-other",
        &["images", "pull", "--plain-http", &reference],
    );
    assert_eq!(registry.berthd_gets(&manifest), 2, "{}", registry.log());
    assert_eq!(content_digests(&d, "repull-other"), sorted(served.blobs()));
}

/// critest's order: remove every tag of an image, then pull it again at once. Each removal
/// queues a collection that may drop the blobs' records and unlink them while the pull looks
/// for, fetches and records them; each round must end with every blob and the unpacked chain
/// there. (Which interleaving a round hits is up to timing: `controllers::gc`'s unit test pins
/// the mechanism down.)
#[test]
fn pulls_right_after_removing_every_tag_keep_their_blobs() {
    let d = Daemon::start().using(Ctr::V2);
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let reference = registry.reference();
    let tags: Vec<String> = (1..=3)
        .map(|i| format!("{}/copies/busybox:t{i}", registry.host()))
        .collect();
    d.ctr("default", &["images", "pull", "--plain-http", &reference]);
    for round in 0..8 {
        for tag in &tags {
            d.ctr("default", &["images", "tag", "--force", &reference, tag]);
        }
        let mut names = vec!["images", "rm"];
        names.extend(tags.iter().map(String::as_str));
        names.push(&reference);
        d.ctr("default", &names);
        // The removals' collection starts at least 100 ms later: pull before it, while it
        // marks, and after it swept, across the rounds.
        std::thread::sleep(std::time::Duration::from_millis(40 * round));
        let out = d.ctr("default", &["images", "pull", "--plain-http", &reference]);
        assert!(out.contains("saved"), "round {round}: {out}");
        assert_eq!(
            content_digests(&d, "default"),
            sorted(served.blobs()),
            "round {round}"
        );
        assert_eq!(
            snapshot_keys(&d, "default"),
            [served.chain_id()],
            "round {round}"
        );
    }
}

/// A TCP relay in front of a registry that, while `cut` is set, closes a connection once it
/// has relayed `limit` bytes of the answer to a request naming `path`; it records what clients
/// sent, to see their Range headers.
struct CuttingRelay {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl CuttingRelay {
    fn start(upstream: u16, path: String, limit: usize) -> CuttingRelay {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (cut.clone(), seen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let named = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (seen, named_up, path) = (s.clone(), named.clone(), path.clone());
                // Client → registry, recorded.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut all = seen.lock().unwrap();
                        all.extend_from_slice(&buf[..n]);
                        if String::from_utf8_lossy(&buf[..n]).contains(&path) {
                            named_up.store(true, Ordering::SeqCst);
                        }
                        drop(all);
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                // Registry → client, cut short in the named answer while `cut` holds.
                let cut = c.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut relayed = 0usize;
                    while let Ok(n) = server.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if named.load(Ordering::SeqCst) && cut.load(Ordering::SeqCst) {
                            let room = limit.saturating_sub(relayed).min(n);
                            let _ = client.write_all(&buf[..room]);
                            relayed += room;
                            if relayed >= limit {
                                let _ = client.shutdown(Shutdown::Both);
                                let _ = server.shutdown(Shutdown::Both);
                                return;
                            }
                            continue;
                        }
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(Shutdown::Write);
                });
            }
        });
        CuttingRelay { port, cut, seen }
    }

    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).to_ascii_lowercase()
    }
}

#[test]
fn an_interrupted_pull_resumes_from_its_ingest() {
    let d = Daemon::start().using(Ctr::V2);
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let layer_path = format!("/v2/library/busybox/blobs/{}", served.layer_digest);
    // 300 KiB of the ~1 MiB layer answer get through, then the connection dies.
    let relay = CuttingRelay::start(registry.port(), layer_path.clone(), 300 << 10);
    let reference = format!("127.0.0.1:{}/library/busybox:latest", relay.port);

    let err = d.ctr_err("resume", &["images", "pull", "--plain-http", &reference]);
    assert!(!err.is_empty());
    assert_eq!(d.ctr("resume", &["images", "ls", "-q"]), "");
    // The ingest kept what arrived.
    let active = d.ctr("resume", &["content", "active"]);
    let layer_ref = format!("layer-{}", served.layer_digest);
    let row = active
        .lines()
        .find(|l| l.starts_with(&layer_ref))
        .unwrap_or_else(|| panic!("no ingest {layer_ref}:\n{active}"));
    assert!(!row.contains(" 0B") && !row.contains("\t0B"), "{active}");

    relay.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    d.ctr("resume", &["images", "pull", "--plain-http", &reference]);
    assert_eq!(d.ctr("resume", &["images", "ls", "-q"]).trim(), reference);
    assert_eq!(content_digests(&d, "resume"), sorted(served.blobs()));
    assert_eq!(snapshot_keys(&d, "resume"), [served.chain_id()]);
    // The second pull asked only for the rest of the layer.
    let seen = relay.seen();
    assert!(
        seen.contains("range: bytes=") && !seen.contains("range: bytes=0-"),
        "no resuming Range request:\n{seen}"
    );
    assert_eq!(d.ctr("resume", &["content", "active"]).lines().count(), 1);
}

#[test]
fn a_python_client_pulls_with_progress_through_the_generated_stubs() {
    let d = Daemon::start().using(Ctr::V2);
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/run-pull");
    let out = std::process::Command::new(&script)
        .env("BERTH_SOCKET", &d.socket)
        .env("BERTH_NAMESPACE", "python-pull")
        .env("BERTH_IMAGE_REF", registry.reference())
        .output()
        .expect("run clients/python/run-pull");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Progress in containerd's vocabulary, layer by layer.
    let layer = format!("layer-{}", served.layer_digest);
    for event in ["complete", "extracted"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{event} {layer}"))),
            "no {event} for {layer}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains(&format!("saved {}", registry.reference())),
        "{stdout}"
    );
    assert_eq!(
        d.ctr("python-pull", &["images", "ls", "-q"]).trim(),
        registry.reference()
    );
    assert_eq!(snapshot_keys(&d, "python-pull"), [served.chain_id()]);
}

/// hosts.toml sends a name that resolves nowhere to the loopback registry, the image keeping its
/// name: from the daemon's `[transfer] config_path`, and from the client's `--hosts-dir`.
#[test]
fn hosts_toml_sends_a_registry_name_to_a_mirror() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let served = registry.push_busybox(work.path());
    let certs = work.path().join("certs.d");
    let name = "registry.invalid";
    std::fs::create_dir_all(certs.join(name)).unwrap();
    std::fs::write(
        certs.join(name).join("hosts.toml"),
        format!(
            "server = \"https://{name}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.host()
        ),
    )
    .unwrap();
    let reference = format!("{name}/library/busybox:latest");

    let d = Daemon::start_with_config(&format!(
        "[transfer]\nconfig_path = \"{}\"\n",
        certs.display()
    ))
    .using(Ctr::V2);
    d.ctr("mirror", &["images", "pull", &reference]);
    assert_eq!(d.ctr("mirror", &["images", "ls", "-q"]).trim(), reference);
    assert_eq!(content_digests(&d, "mirror"), sorted(served.blobs()));

    let d = Daemon::start().using(Ctr::V2);
    let dir = certs.to_str().unwrap();
    d.ctr(
        "mirror",
        &["images", "pull", "--hosts-dir", dir, &reference],
    );
    assert_eq!(snapshot_keys(&d, "mirror"), [served.chain_id()]);
}
