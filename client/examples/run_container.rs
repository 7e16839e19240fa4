//! Import a busybox image into berthd through the API, run a container on it, check, clean up.
//!
//! Inputs: BERTH_SOCKET (berthd's socket), BERTH_NAMESPACE, BERTH_IMAGE_LAYOUT (an OCI
//! image-layout directory). Prints what it does; exits non-zero on any failure.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth::api::events::{TaskCreate, TaskExit};
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::{
    container::Runtime, Container, CreateContainerRequest, DeleteContainerRequest,
};
use berth::api::services::content::v1::content_client::ContentClient;
use berth::api::services::content::v1::{WriteAction, WriteContentRequest};
use berth::api::services::diff::v1::diff_client::DiffClient;
use berth::api::services::diff::v1::ApplyRequest;
use berth::api::services::events::v1::events_client::EventsClient;
use berth::api::services::events::v1::SubscribeRequest;
use berth::api::services::images::v1::images_client::ImagesClient;
use berth::api::services::images::v1::{CreateImageRequest, Image, UpdateImageRequest};
use berth::api::services::leases::v1::leases_client::LeasesClient;
use berth::api::services::leases::v1::{CreateRequest, DeleteRequest};
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::{
    CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use berth::api::services::tasks::v1::tasks_client::TasksClient;
use berth::api::services::tasks::v1::{
    CreateTaskRequest, DeleteTaskRequest, StartRequest, WaitRequest,
};
use berth::api::types::Descriptor;
use berth::{with_lease, with_namespace};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::Code;

type Error = Box<dyn std::error::Error + Send + Sync>;

const SNAPSHOTTER: &str = "overlayfs";
const RUNTIME: &str = "io.containerd.runc.v2";
/// containerd's type URL for a JSON OCI runtime spec (not a protobuf message).
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CHUNK: usize = 1 << 20;
const WANT_EXIT: u32 = 3;
const WANT_OUTPUT: &str = "hello from rust\n";

#[tokio::main]
async fn main() {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let result = async {
        let (socket, ns, layout) = (
            var("BERTH_SOCKET")?,
            var("BERTH_NAMESPACE")?,
            var("BERTH_IMAGE_LAYOUT")?,
        );
        run(Path::new(&socket), &ns, Path::new(&layout)).await
    };
    if let Err(e) = result.await {
        eprintln!("example failed: {e}");
        std::process::exit(1);
    }
}

/// The clients the example uses, on one connection.
struct Api {
    content: ContentClient<Channel>,
    images: ImagesClient<Channel>,
    leases: LeasesClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
    diff: DiffClient<Channel>,
    containers: ContainersClient<Channel>,
    tasks: TasksClient<Channel>,
    events: EventsClient<Channel>,
}

/// A unique-enough suffix for the ids this run creates.
fn stamp() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Run the example against the berthd at `socket`, in namespace `ns`, with the image at `layout`.
pub async fn run(socket: &Path, ns: &str, layout: &Path) -> Result<(), Error> {
    let channel = berth::connect(socket).await?;
    let mut api = Api {
        content: ContentClient::new(channel.clone()),
        images: ImagesClient::new(channel.clone()),
        leases: LeasesClient::new(channel.clone()),
        snapshots: SnapshotsClient::new(channel.clone()),
        diff: DiffClient::new(channel.clone()),
        containers: ContainersClient::new(channel.clone()),
        tasks: TasksClient::new(channel.clone()),
        events: EventsClient::new(channel),
    };

    // The lease holds every blob and snapshot the import creates until the image record and the
    // container reference them; it expires on its own if this program dies half-way.
    let lease = format!("example-rust-{}", stamp());
    let expire = SystemTime::now() + Duration::from_secs(3600);
    let labels = HashMap::from([("containerd.io/gc.expire".to_string(), rfc3339(expire))]);
    let create = CreateRequest {
        id: lease.clone(),
        labels,
    };
    api.leases.create(with_namespace(ns, create)).await?;
    println!("lease {lease} created");
    let result = async {
        let (image, chain) = import_image(&mut api, ns, &lease, layout).await?;
        run_container(&mut api, ns, &lease, &image, &chain).await
    }
    .await;
    let deleted = api
        .leases
        .delete(with_namespace(
            ns,
            DeleteRequest {
                id: lease.clone(),
                sync: false,
            },
        ))
        .await;
    result?;
    deleted?;
    println!("lease {lease} deleted");
    Ok(())
}

/// `time` as RFC 3339 in UTC, without a date library: days to a civil date (Howard Hinnant's
/// algorithm), then the time of day.
fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

fn read_blob(layout: &Path, digest: &str) -> Result<Vec<u8>, Error> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("unsupported digest {digest:?}"))?;
    let path: PathBuf = layout.join("blobs/sha256").join(hex);
    std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()).into())
}

fn read_json(layout: &Path, digest: &str) -> Result<Value, Error> {
    Ok(serde_json::from_slice(&read_blob(layout, digest)?)?)
}

fn str_of<'a>(v: &'a Value, key: &str) -> Result<&'a str, Error> {
    v[key]
        .as_str()
        .ok_or_else(|| format!("{key} missing in {v}").into())
}

fn descriptor(v: &Value) -> Result<Descriptor, Error> {
    Ok(Descriptor {
        media_type: str_of(v, "mediaType")?.to_string(),
        digest: str_of(v, "digest")?.to_string(),
        size: v["size"].as_i64().ok_or("descriptor without a size")?,
        annotations: HashMap::new(),
    })
}

/// The names of the committed layer snapshots: the ChainID of each prefix of the layers.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match chain.last() {
            None => d.clone(),
            Some(below) => {
                let sum = Sha256::digest(format!("{below} {d}"));
                let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        chain.push(next);
    }
    chain
}

/// Write the image's blobs, create its record and unpack its layers; returns the image name and
/// the chain IDs of its layers.
async fn import_image(
    api: &mut Api,
    ns: &str,
    lease: &str,
    layout: &Path,
) -> Result<(String, Vec<String>), Error> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let target = index["manifests"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["mediaType"] == MANIFEST_TYPE))
        .ok_or("index.json lists no image manifest")?;
    let name = target["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap_or("example.invalid/busybox:latest")
        .to_string();
    let manifest = read_json(layout, str_of(target, "digest")?)?;
    let config_desc = descriptor(&manifest["config"])?;
    let config = read_json(layout, &config_desc.digest)?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or("manifest without layers")?
        .iter()
        .map(descriptor)
        .collect::<Result<Vec<_>, _>>()?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or("config without diff IDs")?
        .iter()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    if layers.is_empty() || layers.len() != diff_ids.len() {
        return Err(format!(
            "image has {} layers and {} diff IDs",
            layers.len(),
            diff_ids.len()
        )
        .into());
    }
    let chain = chain_ids(&diff_ids);
    let top = chain.last().cloned().unwrap_or_default();

    // Labels tell garbage collection what each blob keeps alive, as containerd's client sets them.
    let target = descriptor(target)?;
    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        config_desc.digest.clone(),
    )]);
    for (i, l) in layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    let mut blobs = vec![
        (target.clone(), manifest_labels),
        (
            config_desc,
            HashMap::from([(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top)]),
        ),
    ];
    for (l, d) in layers.iter().zip(&diff_ids) {
        let labels = HashMap::from([("containerd.io/uncompressed".to_string(), d.clone())]);
        blobs.push((l.clone(), labels));
    }
    for (desc, labels) in blobs {
        let data = read_blob(layout, &desc.digest)?;
        if write_blob(api, ns, lease, &desc.digest, data.clone(), labels).await? {
            println!("content {} written ({} bytes)", desc.digest, data.len());
        } else {
            println!("content {} already present", desc.digest);
        }
    }

    let image = Image {
        name: name.clone(),
        target: Some(target),
        ..Default::default()
    };
    let create = CreateImageRequest {
        image: Some(image.clone()),
        source_date_epoch: None,
    };
    match api.images.create(with_lease(ns, lease, create)).await {
        Err(e) if e.code() == Code::AlreadyExists => {
            let update = UpdateImageRequest {
                image: Some(image),
                ..Default::default()
            };
            api.images.update(with_lease(ns, lease, update)).await?;
        }
        r => {
            r?;
        }
    }
    println!("image {name} created");

    for (i, layer) in layers.iter().enumerate() {
        unpack_layer(api, ns, lease, layer, &chain, i, &diff_ids[i]).await?;
    }
    Ok((name, chain))
}

/// Content.Write in lock step: STAT, WRITE chunks, COMMIT with the expected digest and size,
/// which the server verifies. Returns false when the blob was already there.
async fn write_blob(
    api: &mut Api,
    ns: &str,
    lease: &str,
    digest: &str,
    data: Vec<u8>,
    labels: HashMap<String, String>,
) -> Result<bool, Error> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let r#ref = format!("example-rust-{digest}");
    let total = data.len() as i64;
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r#ref.clone(),
        total,
        expected: digest.to_string(),
        ..Default::default()
    })
    .await?;
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut responses = api
        .content
        .write(with_lease(ns, lease, requests))
        .await?
        .into_inner();
    match responses.message().await {
        Err(e) if e.code() == Code::AlreadyExists => return Ok(false),
        r => {
            r?;
        }
    }
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        let write = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r#ref.clone(),
            offset: (i * CHUNK) as i64,
            data: chunk.to_vec(),
            ..Default::default()
        };
        tx.send(write).await?;
        responses.message().await?;
    }
    // The commit carries the offset reached: containerd reads offset 0 on a commit as "start the
    // ingest over" and would then find it empty.
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref,
        offset: total,
        total,
        expected: digest.to_string(),
        labels,
        ..Default::default()
    };
    tx.send(commit).await?;
    responses.message().await?;
    Ok(true)
}

/// Apply layer i on the snapshot of the layers below it and commit it under its chain ID,
/// unless a snapshot of that name exists already.
async fn unpack_layer(
    api: &mut Api,
    ns: &str,
    lease: &str,
    layer: &Descriptor,
    chain: &[String],
    i: usize,
    diff_id: &str,
) -> Result<(), Error> {
    let stat = StatSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: chain[i].clone(),
    };
    match api.snapshots.stat(with_namespace(ns, stat)).await {
        Ok(_) => {
            println!("snapshot {} already unpacked", chain[i]);
            return Ok(());
        }
        Err(e) if e.code() == Code::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let key = format!("extract-{}-{}", stamp(), chain[i]);
    let prepare = PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: key.clone(),
        parent: if i > 0 {
            chain[i - 1].clone()
        } else {
            String::new()
        },
        labels: HashMap::new(),
    };
    let mounts = api
        .snapshots
        .prepare(with_lease(ns, lease, prepare))
        .await?
        .into_inner()
        .mounts;
    let applied: Result<(), Error> = async {
        let apply = ApplyRequest {
            diff: Some(layer.clone()),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let applied = api.diff.apply(with_lease(ns, lease, apply)).await?;
        let got = applied.into_inner().applied.map(|d| d.digest);
        if got.as_deref() != Some(diff_id) {
            return Err(
                format!("applied layer has diff ID {got:?}, the config says {diff_id}").into(),
            );
        }
        let commit = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: chain[i].clone(),
            key: key.clone(),
            labels: HashMap::new(),
            parent: String::new(),
        };
        api.snapshots.commit(with_lease(ns, lease, commit)).await?;
        Ok(())
    }
    .await;
    if applied.is_err() {
        // Leave no half-extracted snapshot behind.
        let remove = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key,
        };
        let _ = api.snapshots.remove(with_namespace(ns, remove)).await;
    }
    applied?;
    println!("layer {} unpacked into snapshot {}", layer.digest, chain[i]);
    Ok(())
}

/// A minimal OCI runtime spec of the shape containerd's client generates.
fn spec(ns: &str, id: &str) -> Value {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    let mount = |dest: &str, kind: &str, source: &str, options: &[&str]| json!({"destination": dest, "type": kind, "source": source, "options": options});
    let namespaces: Vec<Value> = ["pid", "ipc", "uts", "mount", "network"]
        .iter()
        .map(|t| json!({ "type": t }))
        .collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "echo hello from rust; exit 3"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs"},
        "hostname": id,
        "mounts": [
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount("/dev/pts", "devpts", "devpts",
                &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
            mount("/dev/shm", "tmpfs", "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        ],
        "linux": {
            "cgroupsPath": format!("/{ns}/{id}"),
            "namespaces": namespaces,
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

/// Prepare the rootfs, create the container, run its task; remove them again whatever happened.
async fn run_container(
    api: &mut Api,
    ns: &str,
    lease: &str,
    image: &str,
    chain: &[String],
) -> Result<(), Error> {
    let id = format!("example-rust-{}", stamp());
    let prepare = PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: id.clone(),
        parent: chain.last().cloned().unwrap_or_default(),
        labels: HashMap::new(),
    };
    api.snapshots
        .prepare(with_lease(ns, lease, prepare))
        .await?;
    println!("snapshot {id} prepared");
    let result = async {
        let container = Container {
            id: id.clone(),
            image: image.to_string(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(&spec(ns, &id))?,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.clone(),
            ..Default::default()
        };
        let create = CreateContainerRequest {
            container: Some(container),
        };
        api.containers.create(with_namespace(ns, create)).await?;
        println!("container {id} created");
        let ran = run_task(api, ns, &id).await;
        let delete = DeleteContainerRequest { id: id.clone() };
        let deleted = api.containers.delete(with_namespace(ns, delete)).await;
        ran?;
        deleted?;
        println!("container {id} deleted");
        Ok::<_, Error>(())
    }
    .await;
    let remove = RemoveSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: id.clone(),
    };
    let removed = api.snapshots.remove(with_namespace(ns, remove)).await;
    result?;
    removed?;
    println!("snapshot {id} removed");
    Ok(())
}

async fn run_task(api: &mut Api, ns: &str, id: &str) -> Result<(), Error> {
    // The client creates the FIFOs and reads them; the shim opens the other ends.
    let dir = tempfile::Builder::new()
        .prefix("berth-example-rust-")
        .tempdir()?;
    let stdout = dir.path().join("stdout");
    nix::unistd::mkfifo(&stdout, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    let fifo = stdout.clone();
    // A blocking open: it returns once the shim opens the write end; EOF once the shim closes it.
    let output = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        std::fs::File::open(fifo)?.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    });

    // Subscribe before creating the task. The response headers prove nothing portable (containerd
    // sends them only with the first event, and tonic's `subscribe` returns on them), so the
    // subscription runs in a task of its own, and the task's own /tasks/create event is what shows
    // it is live before the task starts.
    let subscribe = SubscribeRequest {
        filters: vec![format!(r#"topic~="/tasks/",namespace=={ns:?}"#)],
    };
    let subscribe = with_namespace(ns, subscribe);
    let mut events_api = api.events.clone();
    let (live_tx, live) = tokio::sync::oneshot::channel();
    let container = id.to_string();
    let task_events = tokio::spawn(async move {
        let mut events = events_api.subscribe(subscribe).await?.into_inner();
        let mut live_tx = Some(live_tx);
        while let Some(envelope) = events.message().await? {
            let Some(event) = envelope.event else {
                continue;
            };
            match envelope.topic.as_str() {
                "/tasks/create" => {
                    let created: TaskCreate = berth::unpack_any(&event)?;
                    if created.container_id == container {
                        if let Some(tx) = live_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                "/tasks/exit" => {
                    let exit: TaskExit = berth::unpack_any(&event)?;
                    if exit.container_id == container {
                        return Ok(exit);
                    }
                }
                _ => {}
            }
        }
        Err::<_, Error>("the event stream ended without /tasks/exit".into())
    });

    let stdout_path = stdout.to_str().ok_or("temp dir path is not UTF-8")?;
    let mounts = MountsRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: id.to_string(),
    };
    let rootfs = api
        .snapshots
        .mounts(with_namespace(ns, mounts))
        .await?
        .into_inner()
        .mounts;
    let create = CreateTaskRequest {
        container_id: id.to_string(),
        rootfs,
        stdout: stdout_path.to_string(),
        // containerd 1.6's runc shim opens a stderr even when its path is empty (and fails);
        // sharing stdout's FIFO works with both daemons and keeps one stream to read.
        stderr: stdout_path.to_string(),
        ..Default::default()
    };
    let created = api.tasks.create(with_namespace(ns, create)).await;
    let pid = match created {
        Ok(r) => r.into_inner().pid,
        Err(e) => {
            task_events.abort();
            return Err(e.into());
        }
    };
    println!("task {id} created (pid {pid})");
    let checked = check_run(api, ns, id, output, live, task_events).await;
    let delete = DeleteTaskRequest {
        container_id: id.to_string(),
    };
    let deleted = api.tasks.delete(with_namespace(ns, delete)).await;
    checked?;
    deleted?;
    println!("task {id} deleted");
    Ok(())
}

/// Start the task, wait for it, and check its exit status, its output and its exit event.
async fn check_run(
    api: &mut Api,
    ns: &str,
    id: &str,
    output: tokio::task::JoinHandle<std::io::Result<String>>,
    live: tokio::sync::oneshot::Receiver<()>,
    task_events: tokio::task::JoinHandle<Result<TaskExit, Error>>,
) -> Result<(), Error> {
    let limit = Duration::from_secs(30);
    match tokio::time::timeout(limit, live).await {
        Ok(Ok(())) => {}
        // The reader ended before this task's /tasks/create: its result says why.
        Ok(Err(_)) => {
            task_events.await??;
            return Err("the event stream ended before /tasks/create".into());
        }
        Err(_) => {
            task_events.abort();
            return Err("no /tasks/create event".into());
        }
    }
    let start = StartRequest {
        container_id: id.to_string(),
        exec_id: String::new(),
    };
    api.tasks.start(with_namespace(ns, start)).await?;
    println!("task {id} started");
    let wait = WaitRequest {
        container_id: id.to_string(),
        exec_id: String::new(),
    };
    let status = api
        .tasks
        .wait(with_namespace(ns, wait))
        .await?
        .into_inner()
        .exit_status;
    println!("task {id} exited with status {status}");
    let out = tokio::time::timeout(limit, output)
        .await
        .map_err(|_| "no end of output on the stdout FIFO")???;
    println!("output: {out:?}");
    let exit = tokio::time::timeout(limit, task_events)
        .await
        .map_err(|_| "no /tasks/exit event")???;
    println!(
        "event /tasks/exit: container {}, status {}",
        exit.container_id, exit.exit_status
    );
    if status != WANT_EXIT {
        return Err(format!("exit status {status}, want {WANT_EXIT}").into());
    }
    if out != WANT_OUTPUT {
        return Err(format!("output {out:?}, want {WANT_OUTPUT:?}").into());
    }
    if exit.exit_status != WANT_EXIT {
        return Err(format!(
            "/tasks/exit has status {}, want {WANT_EXIT}",
            exit.exit_status
        )
        .into());
    }
    println!("example ok: hello from rust, exit status 3");
    Ok(())
}
