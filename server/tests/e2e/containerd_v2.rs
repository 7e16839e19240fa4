//! berthd driven by containerd's own v2 Go client (github.com/containerd/containerd/v2/client,
//! default options): the Go test program compat/containerd-v2 pulls from a registry on loopback
//! with client-side unpack, runs a task with FIFO stdio, watches events and uses a lease, pulls
//! again through the daemon's Transfer service (`client.Transfer`, with progress and unpack), and
//! reads containerd 2's introspection (server pid, runtime info). The test binary is compiled once
//! per run with `go test -c` (Go's build cache makes later builds quick).

use crate::harness::{Ctr, Daemon};
use crate::registry::Registry;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `go test -c` of compat/containerd-v2, once per test process.
fn go_test_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compat/containerd-v2");
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("containerd-v2.test");
        let out = Command::new("go")
            .args(["test", "-c", "-o"])
            .arg(&bin)
            .current_dir(&module)
            .output()
            .expect("run go (berth's tests need Go: scripts/deps-go-tools.sh)");
        assert!(
            out.status.success(),
            "go test -c in {} failed:\n{}",
            module.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// Runs the Go tests matching `pattern` against `d`; asserts each of them ran and passed (a
/// skipped Go test would pass silently otherwise).
fn run_go_tests(d: &Daemon, image_ref: &str, tests: &[&str]) -> String {
    let pattern = format!("^({})$", tests.join("|"));
    let out = Command::new(go_test_binary())
        .args(["-test.v", "-test.count=1", "-test.run", &pattern])
        .env("BERTH_SOCKET", &d.socket)
        .env("BERTH_IMAGE_REF", image_ref)
        .env("BERTH_PID", d.pid().to_string())
        .output()
        .expect("run the containerd v2 client test binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "containerd v2 client tests failed:\n{stdout}\n{}\nberthd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    for t in tests {
        assert!(
            stdout.contains(&format!("--- PASS: {t} ")),
            "{t} did not pass (skipped?):\n{stdout}"
        );
    }
    stdout
}

#[test]
fn the_v2_go_client_pulls_runs_and_cleans_up() {
    let d = Daemon::start();
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    registry.push_busybox(work.path());
    run_go_tests(
        &d,
        &registry.reference(),
        &[
            "TestPullRunDelete",
            "TestServerAndRuntimeInfo",
            "TestTransferPull",
        ],
    );
    // The client deleted what it made: no container, no task, no image left behind.
    assert_eq!(d.ctr("v2client", &["containers", "ls", "-q"]), "");
    assert_eq!(d.ctr("v2client", &["images", "ls", "-q"]), "");
}

/// What ctr 2.x asks of services berthd does not serve yet gets a reason, not an empty
/// Unimplemented (`sandboxes ls`); a transfer that fails says why (an export of no image).
#[test]
fn ctr_2_hears_why_a_service_is_not_served() {
    let d = Daemon::start();
    let ctr = |args: &[&str]| {
        let out = Command::new(Ctr::V2.binary())
            .arg("-a")
            .arg(&d.socket)
            .args(["-n", "v2gaps"])
            .args(args)
            .output()
            .expect("run ctr 2 (scripts/deps-go-tools.sh)");
        assert!(!out.status.success(), "ctr {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("none.tar");
    // Export is served: a missing image is named in the refusal.
    let err = ctr(&["images", "export", archive.to_str().unwrap(), "none:latest"]);
    assert!(
        err.contains("none:latest") && err.contains("not found"),
        "{err}"
    );
    let err = ctr(&["sandboxes", "ls"]);
    assert!(
        err.contains("containerd.services.sandbox.v1.Store is not served yet"),
        "{err}"
    );
}

// ---- containerd 2's request and reply fields, through the containerd-client crate ------------

mod fields {
    use crate::harness::Daemon;
    use berth_api::containerd::services::snapshots::v1 as berth_snapshots;
    use containerd_client::events::{ContentCreate, SnapshotCommit, SnapshotPrepare};
    use containerd_client::services::v1::content_client::ContentClient;
    use containerd_client::services::v1::diff_client::DiffClient;
    use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
    use containerd_client::services::v1::snapshots::{
        CommitSnapshotRequest, PrepareSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
    };
    use containerd_client::services::v1::{
        container::Runtime, containers_client::ContainersClient, events_client::EventsClient,
        images_client::ImagesClient, ApplyRequest, Container, CreateContainerRequest,
        CreateImageRequest, DeleteImageRequest, DiffRequest, GetContainerRequest, GetImageRequest,
        Image, ListContainersRequest, ReadContentRequest, SubscribeRequest,
    };
    use containerd_client::tonic::{Code, Request};
    use containerd_client::types::{Descriptor, Mount};
    use containerd_client::with_namespace;
    use prost::Message;
    use std::io::Read;
    use std::time::Duration;

    const NS: &str = "v2fields";
    const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

    fn req<T>(msg: T) -> Request<T> {
        with_namespace!(msg, NS)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn container_sandbox_is_stored_and_image_delete_honours_target() {
        let d = Daemon::start();
        let ch = d.channel().await;
        let mut containers = ContainersClient::new(ch.clone());
        let container = Container {
            id: "in-a-pod".into(),
            image: "docker.io/library/busybox:latest".into(),
            runtime: Some(Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: b"{}".to_vec(),
            }),
            sandbox: "pod-1".into(),
            ..Default::default()
        };
        let created = containers
            .create(req(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .expect("create a container with a sandbox")
            .into_inner();
        assert_eq!(created.container.unwrap().sandbox, "pod-1");
        let got = containers
            .get(req(GetContainerRequest {
                id: "in-a-pod".into(),
            }))
            .await
            .expect("get")
            .into_inner();
        assert_eq!(got.container.unwrap().sandbox, "pod-1");
        let listed = containers
            .list(req(ListContainersRequest { filters: vec![] }))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.containers[0].sandbox, "pod-1");

        let mut images = ImagesClient::new(ch);
        let target = |hex: char| Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: format!("sha256:{}", hex.to_string().repeat(64)),
            size: 100,
            ..Default::default()
        };
        images
            .create(req(CreateImageRequest {
                image: Some(Image {
                    name: "example.com/app:1".into(),
                    target: Some(target('a')),
                    ..Default::default()
                }),
                source_date_epoch: None,
            }))
            .await
            .expect("create image");
        let delete = |t: Option<Descriptor>| DeleteImageRequest {
            name: "example.com/app:1".into(),
            sync: false,
            target: t,
        };
        let err = images
            .delete(req(delete(Some(target('b')))))
            .await
            .expect_err("delete with another target");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert!(err.message().contains(&target('a').digest), "{err:?}");
        images
            .get(req(GetImageRequest {
                name: "example.com/app:1".into(),
            }))
            .await
            .expect("the image survives a delete whose target does not match");
        images
            .delete(req(delete(Some(target('a')))))
            .await
            .expect("delete with the image's own target");
        let err = images
            .get(req(GetImageRequest {
                name: "example.com/app:1".into(),
            }))
            .await
            .expect_err("image gone");
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_events_name_the_snapshotter_and_commit_checks_the_parent() {
        let d = Daemon::start();
        let ch = d.channel().await;
        let mut events = EventsClient::new(ch.clone())
            .subscribe(SubscribeRequest {
                filters: vec![r#"topic~="^/snapshot/""#.into()],
            })
            .await
            .expect("subscribe")
            .into_inner();
        let mut snapshots = SnapshotsClient::new(ch.clone());
        let prepare = |key: &str, parent: &str| PrepareSnapshotRequest {
            snapshotter: "native".into(),
            key: key.into(),
            parent: parent.into(),
            labels: Default::default(),
        };
        let commit = |name: &str, key: &str| CommitSnapshotRequest {
            snapshotter: "native".into(),
            name: name.into(),
            key: key.into(),
            labels: Default::default(),
        };
        snapshots
            .prepare(req(prepare("base", "")))
            .await
            .expect("prepare base");
        snapshots
            .commit(req(commit("base-c", "base")))
            .await
            .expect("commit base");
        let mut seen = Vec::new();
        for _ in 0..2 {
            let env = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("an event in time")
                .expect("event stream")
                .expect("an event");
            let any = env.event.expect("event payload");
            let snapshotter = match env.topic.as_str() {
                "/snapshot/prepare" => SnapshotPrepare::decode(&any.value[..]).unwrap().snapshotter,
                "/snapshot/commit" => SnapshotCommit::decode(&any.value[..]).unwrap().snapshotter,
                other => panic!("unexpected event {other}"),
            };
            seen.push((env.topic, snapshotter));
        }
        assert_eq!(
            seen,
            [
                ("/snapshot/prepare".to_string(), "native".to_string()),
                ("/snapshot/commit".to_string(), "native".to_string())
            ]
        );

        // CommitSnapshotRequest.parent (containerd 2; the containerd-client crate predates it).
        let mut berth = berth_snapshots::snapshots_client::SnapshotsClient::new(ch);
        let commit_onto = |name: &str, key: &str, parent: &str| {
            let mut r = tonic::Request::new(berth_snapshots::CommitSnapshotRequest {
                snapshotter: "native".into(),
                name: name.into(),
                key: key.into(),
                labels: Default::default(),
                parent: parent.into(),
            });
            r.metadata_mut()
                .insert("containerd-namespace", NS.parse().unwrap());
            r
        };
        snapshots
            .prepare(req(prepare("child", "base-c")))
            .await
            .expect("prepare child");
        let err = berth
            .commit(commit_onto("child-c", "child", "elsewhere"))
            .await
            .expect_err("commit onto another parent");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        berth
            .commit(commit_onto("child-c", "child", "base-c"))
            .await
            .expect("commit naming the snapshot's own parent");

        snapshots
            .prepare(req(prepare("loose", "")))
            .await
            .expect("prepare a parentless snapshot");
        let err = berth
            .commit(commit_onto("loose-c", "loose", "base-c"))
            .await
            .expect_err("rebase on commit");
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
        assert!(err.message().contains("rebase"), "{err:?}");
        let info = snapshots
            .stat(req(StatSnapshotRequest {
                snapshotter: "native".into(),
                key: "loose".into(),
            }))
            .await
            .expect("the refused snapshot is still active")
            .into_inner()
            .info
            .unwrap();
        assert_eq!(info.parent, "");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plugin_info_answers_for_the_runtime_and_refuses_the_rest() {
        use containerd_client::services::v1::introspection_client::IntrospectionClient;
        use containerd_client::services::v1::PluginInfoRequest;
        use containerd_client::types::RuntimeRequest;
        let d = Daemon::start();
        let mut intro = IntrospectionClient::new(d.channel().await);
        let ask = |r#type: &str, id: &str, options: Option<prost_types::Any>| PluginInfoRequest {
            r#type: r#type.into(),
            id: id.into(),
            options,
        };
        let runtime = |path: &str| {
            Some(prost_types::Any {
                type_url: "containerd.types.RuntimeRequest".into(),
                value: RuntimeRequest {
                    runtime_path: path.into(),
                    options: None,
                }
                .encode_to_vec(),
            })
        };
        // Without options: the plugin's own record.
        let plain = intro
            .plugin_info(req(ask("io.containerd.content.v1", "content", None)))
            .await
            .expect("plugin info without options")
            .into_inner();
        assert_eq!(plain.plugin.unwrap().id, "content");
        assert!(plain.extra.is_none());
        let err = intro
            .plugin_info(req(ask("io.containerd.nothing.v1", "none", None)))
            .await
            .expect_err("an unknown plugin");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        let err = intro
            .plugin_info(req(ask("io.containerd.content.v1", "content", runtime(""))))
            .await
            .expect_err("options for a plugin with nothing more to say");
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
        let err = intro
            .plugin_info(req(ask(
                "io.containerd.runtime.v2",
                "task",
                runtime("no.such.runtime"),
            )))
            .await
            .expect_err("an unconfigured runtime");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        let info = intro
            .plugin_info(req(ask("io.containerd.runtime.v2", "task", runtime(""))))
            .await
            .expect("the default runtime's info")
            .into_inner()
            .extra
            .expect("RuntimeInfo");
        assert_eq!(info.type_url, "containerd.types.RuntimeInfo");
        let info = containerd_client::types::RuntimeInfo::decode(&info.value[..]).unwrap();
        assert_eq!(info.name, "io.containerd.runc.v2");
        let features = info.features.expect("runc features");
        let json: serde_json::Value =
            serde_json::from_slice(&features.value).expect("features are runc's JSON");
        assert!(json["ociVersionMax"].is_string(), "{json}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn task_api_address_is_refused_with_its_reason() {
        use berth_api::containerd::services::tasks::v1 as tasks;
        let d = Daemon::start();
        let ch = d.channel().await;
        ContainersClient::new(ch.clone())
            .create(req(CreateContainerRequest {
                container: Some(Container {
                    id: "sandboxed".into(),
                    runtime: Some(Runtime {
                        name: "io.containerd.runc.v2".into(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE_URL.into(),
                        value: b"{}".to_vec(),
                    }),
                    ..Default::default()
                }),
            }))
            .await
            .expect("create container");
        let mut r = tonic::Request::new(tasks::CreateTaskRequest {
            container_id: "sandboxed".into(),
            task_api_address: "ttrpc+unix:///run/elsewhere.sock".into(),
            task_api_version: 3,
            ..Default::default()
        });
        r.metadata_mut()
            .insert("containerd-namespace", NS.parse().unwrap());
        let err = tasks::tasks_client::TasksClient::new(ch)
            .create(r)
            .await
            .expect_err("a task in another shim");
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
        assert!(err.message().contains("task_api_address"), "{err:?}");
    }

    /// Modification times of a gzipped layer's entries, by name.
    fn layer_mtimes(gz: &[u8]) -> Vec<(String, u64)> {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut tar)
            .expect("gunzip the layer");
        let mut archive = tar::Archive::new(&tar[..]);
        archive
            .entries()
            .expect("tar entries")
            .map(|e| {
                let e = e.expect("tar entry");
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mtime().unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn diff_clamps_to_source_date_epoch_writes_zstd_and_apply_syncs() {
        let d = Daemon::start();
        let ch = d.channel().await;
        let mut snapshots = SnapshotsClient::new(ch.clone());
        let prepare = |key: &str, parent: &str| PrepareSnapshotRequest {
            snapshotter: "native".into(),
            key: key.into(),
            parent: parent.into(),
            labels: Default::default(),
        };
        snapshots
            .prepare(req(prepare("base", "")))
            .await
            .expect("prepare base");
        snapshots
            .commit(req(CommitSnapshotRequest {
                snapshotter: "native".into(),
                name: "base-c".into(),
                key: "base".into(),
                labels: Default::default(),
            }))
            .await
            .expect("commit base");
        let lower = snapshots
            .view(req(ViewSnapshotRequest {
                snapshotter: "native".into(),
                key: "base-view".into(),
                parent: "base-c".into(),
                labels: Default::default(),
            }))
            .await
            .expect("view base")
            .into_inner()
            .mounts;
        let upper = snapshots
            .prepare(req(prepare("work", "base-c")))
            .await
            .expect("prepare work")
            .into_inner()
            .mounts;
        // A native snapshot is a bind mount of its directory: write a file there, dated now.
        let dir = std::path::PathBuf::from(&upper[0].source);
        std::fs::write(dir.join("new-file"), b"made after the epoch").unwrap();

        let mut created = EventsClient::new(ch.clone())
            .subscribe(SubscribeRequest {
                filters: vec![r#"topic=="/content/create""#.into()],
            })
            .await
            .expect("subscribe")
            .into_inner();
        let epoch = 1_000_000_000; // 2001-09-09, before any file made here
        let mut diff = DiffClient::new(ch.clone());
        let computed = diff
            .diff(req(DiffRequest {
                left: lower.clone(),
                right: upper.clone(),
                media_type: String::new(),
                r#ref: String::new(),
                labels: Default::default(),
                source_date_epoch: Some(prost_types::Timestamp {
                    seconds: epoch,
                    nanos: 0,
                }),
            }))
            .await
            .expect("diff with a source date epoch")
            .into_inner()
            .diff
            .expect("a layer descriptor");
        // containerd 2 announces the committed layer blob.
        let env = tokio::time::timeout(Duration::from_secs(10), created.message())
            .await
            .expect("a /content/create event in time")
            .expect("event stream")
            .expect("an event");
        let event = ContentCreate::decode(&env.event.expect("payload").value[..]).unwrap();
        assert_eq!(
            (event.digest.as_str(), event.size),
            (computed.digest.as_str(), computed.size)
        );
        let mut blob = Vec::new();
        let mut stream = ContentClient::new(ch.clone())
            .read(req(ReadContentRequest {
                digest: computed.digest.clone(),
                offset: 0,
                size: 0,
            }))
            .await
            .expect("read the layer")
            .into_inner();
        while let Some(chunk) = stream.message().await.expect("read chunk") {
            blob.extend_from_slice(&chunk.data);
        }
        let mtimes = layer_mtimes(&blob);
        assert!(
            mtimes.iter().any(|(n, _)| n == "new-file"),
            "layer entries: {mtimes:?}"
        );
        for (name, mtime) in &mtimes {
            assert_eq!(*mtime, epoch as u64, "{name} is not clamped: {mtimes:?}");
        }

        // Apply that layer with sync_fs onto a fresh snapshot: the file arrives.
        let target: Vec<Mount> = snapshots
            .prepare(req(prepare("apply-here", "")))
            .await
            .expect("prepare the apply target")
            .into_inner()
            .mounts;
        diff.apply(req(ApplyRequest {
            diff: Some(computed),
            mounts: target.clone(),
            payloads: Default::default(),
            sync_fs: true,
        }))
        .await
        .expect("apply with sync_fs");
        let applied = std::path::PathBuf::from(&target[0].source).join("new-file");
        assert_eq!(std::fs::read(&applied).unwrap(), b"made after the epoch");

        // The same change as a zstd layer: containerd 2's differ writes tar+zstd when asked,
        // and Apply takes it back.
        let zstd_type = "application/vnd.oci.image.layer.v1.tar+zstd";
        let zstd_layer = diff
            .diff(req(DiffRequest {
                left: lower.clone(),
                right: upper.clone(),
                media_type: zstd_type.into(),
                r#ref: String::new(),
                labels: Default::default(),
                source_date_epoch: None,
            }))
            .await
            .expect("diff as tar+zstd")
            .into_inner()
            .diff
            .expect("a layer descriptor");
        assert_eq!(zstd_layer.media_type, zstd_type);
        let mut blob = Vec::new();
        let mut stream = ContentClient::new(ch.clone())
            .read(req(ReadContentRequest {
                digest: zstd_layer.digest.clone(),
                offset: 0,
                size: 0,
            }))
            .await
            .expect("read the zstd layer")
            .into_inner();
        while let Some(chunk) = stream.message().await.expect("read chunk") {
            blob.extend_from_slice(&chunk.data);
        }
        assert_eq!(blob.len() as i64, zstd_layer.size);
        assert!(
            blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            "not a zstd frame: {:02x?}",
            &blob[..blob.len().min(8)]
        );
        let target: Vec<Mount> = snapshots
            .prepare(req(prepare("apply-zstd", "")))
            .await
            .expect("prepare the zstd apply target")
            .into_inner()
            .mounts;
        let applied = diff
            .apply(req(ApplyRequest {
                diff: Some(zstd_layer),
                mounts: target.clone(),
                payloads: Default::default(),
                sync_fs: false,
            }))
            .await
            .expect("apply the zstd layer")
            .into_inner()
            .applied
            .expect("applied descriptor");
        assert_eq!(applied.media_type, "application/vnd.oci.image.layer.v1.tar");
        let file = std::path::PathBuf::from(&target[0].source).join("new-file");
        assert_eq!(std::fs::read(&file).unwrap(), b"made after the epoch");

        // A compression berthd does not write: NotImplemented, as containerd's differ says.
        let refused = diff
            .diff(req(DiffRequest {
                left: lower.clone(),
                right: upper.clone(),
                media_type: "application/vnd.oci.image.layer.v1.tar+bzip2".into(),
                r#ref: String::new(),
                labels: Default::default(),
                source_date_epoch: None,
            }))
            .await
            .expect_err("tar+bzip2 is not written");
        assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    }
}
