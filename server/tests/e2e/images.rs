//! Images end to end: import with unpack into real overlayfs snapshots, check, export, run up to
//! task creation, and garbage collection of layers — all driven by the real `ctr` (import, run
//! and export with both ctr 1.6 and ctr 2.4.2).

use crate::fixtures::{busybox_oci_archive, OciArchive};
use crate::harness::{process_token, Ctr, Daemon};
use std::path::Path;
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/berth/busybox:unpack";

fn archive(dir: &Path) -> OciArchive {
    busybox_oci_archive(dir, IMAGE)
}

/// The chain ID of a single-layer image is its layer's diff ID.
fn chain_id(image: &OciArchive) -> &str {
    &image.diff_id
}

fn snapshot_keys(d: &Daemon, ns: &str) -> Vec<String> {
    d.ctr(ns, &["snapshots", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn poll(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn import_unpacks_into_overlay_snapshots(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path());
    d.ctr(
        "default",
        &["images", "import", image.path.to_str().unwrap()],
    );

    // ctr computed the chain ID and committed the layer under it; berthd applied the layer.
    let keys = snapshot_keys(&d, "default");
    assert!(keys.contains(&chain_id(&image).to_string()), "{keys:?}");
    let check = d.ctr("default", &["images", "check"]);
    assert!(check.contains("complete"), "{check}");
    assert!(!check.contains("unpacked: false"), "{check}");

    // The layer's uncompressed digest is recorded where ctr reads it back.
    let ls = d.ctr("default", &["content", "ls"]);
    assert!(
        ls.contains(&format!("containerd.io/uncompressed={}", image.diff_id)),
        "{ls}"
    );

    // A container's rootfs: prepare on top of the chain, mount it on the host like ctr does,
    // and find busybox and the image's files there.
    d.ctr(
        "default",
        &["snapshots", "prepare", "rootfs-1", chain_id(&image)],
    );
    let mounts = d.ctr("default", &["snapshots", "mounts", "/mnt/x", "rootfs-1"]);
    assert!(mounts.starts_with("mount -t overlay"), "{mounts}");
    let target = dir.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    let opts = mounts
        .split(" -o ")
        .nth(1)
        .expect("mount options")
        .trim()
        .to_string();
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success());
    let busybox = std::fs::metadata(target.join("bin/busybox"));
    let passwd = std::fs::read_to_string(target.join("etc/passwd"));
    // Write through the overlay: it lands in the container's own layer, not the image's.
    std::fs::write(target.join("new-file"), b"container data").unwrap();
    let status = std::process::Command::new("umount")
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(busybox.expect("bin/busybox in the rootfs").len() > 100_000);
    assert!(passwd.expect("etc/passwd").starts_with("root:"));
    let usage = d.ctr("default", &["snapshots", "usage", "rootfs-1"]);
    assert!(usage.contains("rootfs-1"), "{usage}");

    // Removing the image and the container's snapshot frees the layer snapshot too.
    d.ctr("default", &["snapshots", "rm", "rootfs-1"]);
    d.ctr("default", &["images", "rm", "--sync", IMAGE]);
    poll(
        Duration::from_secs(10),
        "the layer snapshot to be collected",
        || snapshot_keys(&d, "default").is_empty(),
    );
    let layers = d.root().join("snapshots/overlayfs/snapshots");
    let left: Vec<_> = std::fs::read_dir(&layers)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "layer directories left on disk: {left:?}");
    assert_eq!(d.ctr("default", &["content", "ls", "-q"]), "");
}

fn run_on_an_imported_image_keeps_the_container(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path());
    d.ctr(
        "default",
        &["images", "import", image.path.to_str().unwrap()],
    );
    // Without --rm, ctr deletes the task after it exits but keeps the container and its rootfs.
    // The id names the host-wide cgroup /default/<id>: unique to this process.
    let id = format!("imported-run-{}", process_token());
    let out = d.ctr("default", &["run", IMAGE, &id, "echo", "hi"]);
    assert_eq!(out.trim(), "hi");
    assert_eq!(d.ctr("default", &["tasks", "ls", "-q"]), "");
    let containers = d.ctr("default", &["containers", "ls", "-q"]);
    assert_eq!(containers.trim(), id);
    // A collection that runs to the end (a synchronous lease deletion) keeps the container's
    // snapshot: the container is its root.
    d.ctr("default", &["leases", "create", "--id", "scratch"]);
    d.ctr("default", &["leases", "rm", "--sync", "scratch"]);
    assert!(snapshot_keys(&d, "default").contains(&id));
    let info = d.ctr("default", &["containers", "info", &id]);
    assert!(info.contains("\"echo\""), "{info}");
    d.ctr("default", &["containers", "rm", &id]);
    assert!(!snapshot_keys(&d, "default").contains(&id));
}

fn export_round_trips_an_imported_image(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path());
    d.ctr(
        "default",
        &["images", "import", image.path.to_str().unwrap()],
    );
    let out = dir.path().join("export.tar");
    d.ctr(
        "default",
        &["images", "export", out.to_str().unwrap(), IMAGE],
    );
    // Import the export into another namespace: same manifest, unpacked again.
    d.ctr("other", &["images", "import", out.to_str().unwrap()]);
    let ls = d.ctr("other", &["images", "ls"]);
    assert!(ls.contains(&image.manifest.digest), "{ls}");
    assert!(snapshot_keys(&d, "other").contains(&chain_id(&image).to_string()));
}

#[test]
fn a_second_berthd_serves_as_a_proxy_snapshotter() {
    // The remote: a plain berthd whose overlayfs snapshotter the first one reaches over its socket.
    let remote = Daemon::start();
    let d = Daemon::start_with_config(&format!(
        "[proxy_plugins.remote]\ntype = \"snapshot\"\naddress = {:?}\nsnapshotter = \"overlayfs\"\n",
        remote.socket
    ));
    let plugins = d.ctr("default", &["plugins", "ls"]);
    assert!(
        plugins
            .lines()
            .any(|l| l.contains("io.containerd.snapshotter.v1") && l.contains("remote")),
        "{plugins}"
    );
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path());
    d.ctr(
        "default",
        &[
            "images",
            "import",
            "--snapshotter",
            "remote",
            image.path.to_str().unwrap(),
        ],
    );
    let snapshots = |d: &Daemon, ns: &str, snapshotter: &str| {
        d.ctr(ns, &["snapshots", "--snapshotter", snapshotter, "ls"])
    };
    // Through the proxy the layer is listed under its chain ID...
    assert!(snapshots(&d, "default", "remote").contains(chain_id(&image)));
    // ...nothing landed in the local overlayfs snapshotter...
    assert!(!snapshots(&d, "default", "overlayfs").contains(chain_id(&image)));
    // ...and the remote daemon really holds it (keys carry the proxy's namespace prefix).
    assert!(snapshots(&remote, "berth", "overlayfs").contains(chain_id(&image)));
    let check = d.ctr("default", &["images", "check", "--snapshotter", "remote"]);
    assert!(check.contains("complete"), "{check}");
    // The unpacked layer is readable through the remote's mounts (prepare, not view: ctr labels
    // a prepared snapshot gc.root, a view it does not, so a collection could take the view).
    d.ctr(
        "default",
        &[
            "snapshots",
            "--snapshotter",
            "remote",
            "prepare",
            "v1",
            chain_id(&image),
        ],
    );
    let mounts = d.ctr(
        "default",
        &["snapshots", "--snapshotter", "remote", "mounts", "/x", "v1"],
    );
    let lower = mounts
        .split(',')
        .find_map(|o| o.trim().strip_prefix("lowerdir="))
        .expect("an overlay on the remote layer")
        .split(':')
        .next()
        .expect("lowerdir")
        .to_string();
    assert!(Path::new(&lower).join("bin/busybox").exists(), "{mounts}");
    d.ctr(
        "default",
        &["snapshots", "--snapshotter", "remote", "rm", "v1"],
    );
    // Removing the image collects the remote layer too.
    d.ctr("default", &["images", "rm", "--sync", IMAGE]);
    poll(
        Duration::from_secs(10),
        "the remote layer to be collected",
        || !snapshots(&remote, "berth", "overlayfs").contains(chain_id(&image)),
    );
}

/// Snapshots.View with a `containerd.io/gc.root` label, in one call.
fn view_kept_from_collection(d: &Daemon, key: &str, parent: &str) {
    use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
    use containerd_client::services::v1::snapshots::ViewSnapshotRequest;
    use containerd_client::tonic::Request;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut client = SnapshotsClient::new(d.channel().await);
        let req = ViewSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: key.into(),
            parent: parent.into(),
            labels: [(
                "containerd.io/gc.root".to_string(),
                "2026-01-01T00:00:00Z".to_string(),
            )]
            .into(),
        };
        client
            .view(containerd_client::with_namespace!(req, "default"))
            .await
            .expect("Snapshots.View");
    });
}

/// Mount `key`'s mounts (as `ctr snapshots mounts` prints them) on `target`, run `f`, unmount.
fn with_snapshot_mounted(d: &Daemon, key: &str, target: &Path, f: impl FnOnce()) {
    let mounts = d.ctr("default", &["snapshots", "mounts", "/unused", key]);
    let (kind, rest) = mounts
        .trim()
        .strip_prefix("mount -t ")
        .and_then(|m| m.split_once(' '))
        .expect("a mount command");
    let source = rest.split_whitespace().next().expect("mount source");
    let opts = rest.split(" -o ").nth(1).expect("mount options").trim();
    std::fs::create_dir_all(target).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", kind, source, "-o", opts])
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success(), "mount {mounts}");
    f();
    let status = std::process::Command::new("umount")
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn snapshot_commands_and_a_computed_layer() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let image = archive(dir.path());
    d.ctr(
        "default",
        &["images", "import", image.path.to_str().unwrap()],
    );
    let chain = chain_id(&image);
    // Let the collection that the import's lease ended finish (it takes the archive's index).
    poll(Duration::from_secs(10), "the import's collection", || {
        !d.ctr("default", &["content", "ls", "-q"])
            .contains(&image.index.digest)
    });

    // `ctr snapshots view` makes a read-only view: one read-only bind mount of the single layer.
    let printed = d.ctr(
        "default",
        &["snapshots", "view", "--mounts", "v-ctr", chain],
    );
    let mounts: serde_json::Value = serde_json::from_str(&printed).expect("mounts as JSON");
    assert_eq!(mounts[0]["Type"], "bind", "{printed}");
    assert!(
        mounts[0]["Options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "ro")),
        "{printed}"
    );
    // Unlike a prepared snapshot, ctr labels no view gc.root, and it holds no lease: any
    // collection may take it at once (as containerd's would). The view used below is made with
    // its gc.root label in the same call, so no collection can slip in between.
    view_kept_from_collection(&d, "v0", chain);
    let view = dir.path().join("view0");
    with_snapshot_mounted(&d, "v0", &view, || {
        assert!(view.join("bin/busybox").exists());
        assert!(
            std::fs::write(view.join("x"), b"").is_err(),
            "a view is read-only"
        );
    });

    // A container-like change on top of the image: a new file and a deleted one.
    d.ctr("default", &["snapshots", "prepare", "work", chain]);
    let rootfs = dir.path().join("rootfs");
    with_snapshot_mounted(&d, "work", &rootfs, || {
        std::fs::write(rootfs.join("hello.txt"), b"hello layer").unwrap();
        std::fs::remove_file(rootfs.join("etc/group")).unwrap();
    });

    // Diff: berthd computes the layer and stores it (ctr prints it), labelled with its
    // uncompressed digest.
    let out = d.ctr_raw("default", &["snapshots", "diff", "--keep", "work"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layer = out.stdout;
    let digest = crate::fixtures::sha256(&layer);
    let listed = d.ctr("default", &["content", "ls"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with(&digest))
        .unwrap_or_else(|| panic!("{digest} not in content ls:\n{listed}"));
    assert!(row.contains("containerd.io/uncompressed=sha256:"), "{row}");
    let mut names = Vec::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(layer.as_slice()));
    for entry in tar.entries().expect("a gzip tar") {
        let entry = entry.expect("tar entry");
        names.push(entry.path().unwrap().to_string_lossy().into_owned());
    }
    assert!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "hello.txt"),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "etc/.wh.group"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("busybox")),
        "unchanged files in the diff: {names:?}"
    );

    // commit, tree, info, label, view, usage, rm
    d.ctr("default", &["snapshots", "commit", "layer2", "work"]);
    let tree = d.ctr("default", &["snapshots", "tree"]);
    let chain_line = tree
        .lines()
        .position(|l| l.trim() == chain)
        .expect("chain in tree");
    assert!(
        tree.lines()
            .nth(chain_line + 1)
            .is_some_and(|l| l.contains("layer2")),
        "{tree}"
    );
    d.ctr("default", &["snapshots", "label", "layer2", "team=berth"]);
    let info = d.ctr("default", &["snapshots", "info", "layer2"]);
    assert!(info.contains("\"Kind\": \"Committed\""), "{info}");
    assert!(info.contains(&format!("\"Parent\": \"{chain}\"")), "{info}");
    assert!(info.contains("\"team\": \"berth\""), "{info}");
    d.ctr("default", &["snapshots", "prepare", "c2", "layer2"]);
    let merged = dir.path().join("merged");
    with_snapshot_mounted(&d, "c2", &merged, || {
        assert_eq!(
            std::fs::read(merged.join("hello.txt")).unwrap(),
            b"hello layer"
        );
        assert!(
            !merged.join("etc/group").exists(),
            "the whiteout hides etc/group"
        );
        assert!(merged.join("bin/busybox").exists());
    });
    let usage = d.ctr("default", &["snapshots", "usage", "layer2"]);
    assert!(usage.lines().any(|l| l.starts_with("layer2")), "{usage}");
    let err = d.ctr_err("default", &["snapshots", "rm", "layer2"]);
    assert!(
        err.contains("failed precondition"),
        "a parent with children cannot go: {err}"
    );
    d.ctr("default", &["snapshots", "rm", "c2"]);
    d.ctr("default", &["snapshots", "rm", "layer2"]);
    d.ctr("default", &["snapshots", "rm", "v0"]);
    let err = d.ctr_err("default", &["snapshots", "info", "layer2"]);
    assert!(err.contains("not found"), "{err}");
}

/// A proxy snapshotter that accepts every call and never answers: what a wedged plugin looks like.
mod hung_proxy {
    use berth_api::containerd::services::snapshots::v1::{self as api, snapshots_server};
    use std::path::Path;
    use tonic::{Request, Response, Status};

    pub struct Hung;

    async fn never<T>() -> Result<Response<T>, Status> {
        std::future::pending().await
    }

    #[tonic::async_trait]
    impl snapshots_server::Snapshots for Hung {
        async fn prepare(
            &self,
            _: Request<api::PrepareSnapshotRequest>,
        ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
            never().await
        }
        async fn view(
            &self,
            _: Request<api::ViewSnapshotRequest>,
        ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
            never().await
        }
        async fn mounts(
            &self,
            _: Request<api::MountsRequest>,
        ) -> Result<Response<api::MountsResponse>, Status> {
            never().await
        }
        async fn commit(
            &self,
            _: Request<api::CommitSnapshotRequest>,
        ) -> Result<Response<()>, Status> {
            never().await
        }
        async fn remove(
            &self,
            _: Request<api::RemoveSnapshotRequest>,
        ) -> Result<Response<()>, Status> {
            never().await
        }
        async fn stat(
            &self,
            _: Request<api::StatSnapshotRequest>,
        ) -> Result<Response<api::StatSnapshotResponse>, Status> {
            never().await
        }
        async fn update(
            &self,
            _: Request<api::UpdateSnapshotRequest>,
        ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
            never().await
        }
        type ListStream = tokio_stream::Pending<Result<api::ListSnapshotsResponse, Status>>;
        async fn list(
            &self,
            _: Request<api::ListSnapshotsRequest>,
        ) -> Result<Response<Self::ListStream>, Status> {
            never().await
        }
        async fn usage(
            &self,
            _: Request<api::UsageRequest>,
        ) -> Result<Response<api::UsageResponse>, Status> {
            never().await
        }
        async fn cleanup(&self, _: Request<api::CleanupRequest>) -> Result<Response<()>, Status> {
            never().await
        }
    }

    /// Serve `Hung` on `socket` from a runtime of its own for the rest of the test.
    pub fn serve(socket: &Path) -> tokio::runtime::Runtime {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = {
            let _entered = rt.enter();
            tokio::net::UnixListener::bind(socket).expect("bind the hung proxy's socket")
        };
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(snapshots_server::SnapshotsServer::new(Hung))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        rt
    }
}

#[test]
fn a_hung_proxy_snapshotter_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    let _proxy = hung_proxy::serve(&socket);
    let d = Daemon::start_with_config(&format!(
        "[proxy_plugins.hung]\ntype = \"snapshot\"\naddress = {socket:?}\ntimeout_ms = 1000\n"
    ));
    // A call through berthd answers DeadlineExceeded within the bound (plus slack), not never.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
        use containerd_client::services::v1::snapshots::StatSnapshotRequest;
        use containerd_client::tonic::Request;
        let mut client = SnapshotsClient::new(d.channel().await);
        let started = Instant::now();
        let req = StatSnapshotRequest {
            snapshotter: "hung".into(),
            key: "k".into(),
        };
        let err = client
            .stat(containerd_client::with_namespace!(req, "default"))
            .await
            .expect_err("a hung proxy cannot answer Stat");
        assert_eq!(
            err.code(),
            containerd_client::tonic::Code::DeadlineExceeded,
            "{err:?}"
        );
        assert!(err.message().contains("hung"), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{err:?}");
    });
    // Collection lists every snapshotter: with one hung, an image delete with sync still
    // completes (the record goes; the collection reports the proxy's DeadlineExceeded)...
    let image = archive(dir.path());
    d.ctr(
        "default",
        &["images", "import", image.path.to_str().unwrap()],
    );
    let started = Instant::now();
    let out = d.ctr_raw("default", &["images", "rm", "--sync", IMAGE]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "images rm --sync took {:?}: {out:?}",
        started.elapsed()
    );
    assert!(!d.ctr("default", &["images", "ls"]).contains(IMAGE));
    // ...and concurrent collections do not queue behind each other's proxy listing: five
    // synchronous lease deletions finish in less than five bounds.
    let leases: Vec<String> = (0..5)
        .map(|_| d.ctr("default", &["leases", "create"]).trim().to_string())
        .collect();
    let started = Instant::now();
    let handles: Vec<_> = leases
        .into_iter()
        .map(|id| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                crate::harness::ctr_command(&socket, "default", &["leases", "rm", "--sync", &id])
                    .output()
                    .expect("run ctr")
            })
        })
        .collect();
    for h in handles {
        h.join().expect("ctr thread");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(d.ctr("default", &["leases", "ls"]).lines().count() <= 1);
    // The daemon is still serving.
    d.ctr("default", &["namespaces", "ls"]);
}

/// While a collection waits on a hung proxy snapshotter's listing, writes go on: the listing is
/// taken before the collection's lock, so a lease, a content blob and a namespace are written in
/// a fraction of the proxy's bound while the synchronous deletion that started the collection is
/// still waiting it out.
#[test]
fn writes_go_on_while_a_collection_waits_on_a_hung_proxy() {
    const BOUND: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    let _proxy = hung_proxy::serve(&socket);
    let d = Daemon::start_with_config(&format!(
        "[proxy_plugins.hung]\ntype = \"snapshot\"\naddress = {socket:?}\ntimeout_ms = {}\n",
        BOUND.as_millis()
    ));
    let lease = d.ctr("default", &["leases", "create"]).trim().to_string();
    let started = Instant::now();
    let collecting = {
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            crate::harness::ctr_command(&socket, "default", &["leases", "rm", "--sync", &lease])
                .output()
                .expect("run ctr")
        })
    };
    // Let the deletion reach its collection's listing.
    std::thread::sleep(Duration::from_millis(300));
    let writes = Instant::now();
    d.ctr("default", &["leases", "create"]);
    crate::ctr::ingest(&d, "default", "during-collection", b"written meanwhile");
    d.ctr("default", &["namespaces", "create", "made-meanwhile"]);
    let wrote_in = writes.elapsed();
    let deletion = collecting.join().expect("ctr thread");
    let collected_in = started.elapsed();
    assert!(
        collected_in >= BOUND - Duration::from_millis(500),
        "the deletion did not wait on the hung proxy ({collected_in:?}): {deletion:?}"
    );
    assert!(
        wrote_in < BOUND / 2,
        "writes took {wrote_in:?} while the collection waited {collected_in:?}"
    );
    assert!(d
        .ctr("default", &["content", "ls"])
        .contains(&crate::fixtures::sha256(b"written meanwhile")));
}

mod ctr_1_6 {
    use crate::harness::Ctr;

    #[test]
    fn import_unpacks_into_overlay_snapshots() {
        super::import_unpacks_into_overlay_snapshots(Ctr::V1_6)
    }

    #[test]
    fn run_on_an_imported_image_keeps_the_container() {
        super::run_on_an_imported_image_keeps_the_container(Ctr::V1_6)
    }

    #[test]
    fn export_round_trips_an_imported_image() {
        super::export_round_trips_an_imported_image(Ctr::V1_6)
    }
}

mod ctr_2 {
    use crate::harness::Ctr;

    #[test]
    fn import_unpacks_into_overlay_snapshots() {
        super::import_unpacks_into_overlay_snapshots(Ctr::V2)
    }

    #[test]
    fn run_on_an_imported_image_keeps_the_container() {
        super::run_on_an_imported_image_keeps_the_container(Ctr::V2)
    }

    #[test]
    fn export_round_trips_an_imported_image() {
        super::export_round_trips_an_imported_image(Ctr::V2)
    }
}
