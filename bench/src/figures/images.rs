//! Images figures (issue 5 item 3; the figures issue 3 asks for, with its targets):
//!
//! - `ctr images pull --plain-http` (fetch + unpack) of the Debian image (~110 MB compressed, two
//!   gzip layers, debootstrap + umoci) from Debian's docker-registry on loopback;
//! - `ctr images import` of the same image as an OCI archive;
//! - the same two for the small busybox image (no regression);
//! - one diff Apply of the Debian image's big gzip layer over gRPC (content written first,
//!   Snapshots.Prepare of a fresh key without parent, then Apply timed alone and Apply + Commit);
//! - snapshot Prepare+Commit pairs per second: a chain of empty layers, 1 client and 8 clients on
//!   separate chains.
//!
//! Every `ctr` run is in a fresh namespace and is followed (outside the clock) by `ctr images rm
//! --sync`, so the next run fetches and unpacks for real on both daemons: containerd shares blobs
//! across namespaces (content_sharing_policy = "shared"), so a blob left anywhere in its store
//! would turn a later "pull" into a no-op for that layer. The first run per daemon checks that the
//! layers are really gone from the daemon's disk afterwards.
//!
//! Unpacked snapshots, on the other hand, are kept until the end of the run (a lease holds them):
//! deleting a ~10,000-file layer and unpacking the next one right after makes ext4 without a
//! journal (this machine's disk) scan its recently deleted inodes on every file create
//! (`recently_deleted()` in the inode allocator, for 60-360 s after a delete): in a first version
//! of this bench it was 35-45% of both daemons' CPU in the Apply, all of it an artifact of the
//! bench. Every timed run starts after a `sync(2)`, so the previous run's dirty pages are not
//! written back on the next one's clock.

use super::content;
use super::{create_lease, rpc_error, slot, Better, Figure, Samples};
use crate::daemon::{order, Daemon, Kind, Lab};
use crate::fixtures::{self, Image, Registry};
use crate::{Opts, Result};
use berth::api::services::diff::v1::diff_client::DiffClient;
use berth::api::services::diff::v1::ApplyRequest;
use berth::api::services::leases::v1::leases_client::LeasesClient;
use berth::api::services::leases::v1::{AddResourceRequest, Resource};
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::{
    CommitSnapshotRequest, Kind as SnapshotKind, PrepareSnapshotRequest,
};
use berth::api::types::Descriptor;
use berth::with_namespace;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use tonic::transport::Channel;

const G: &str = "images";
const SNAPSHOTTER: &str = "overlayfs";
use berth::LEASE_HEADER;
/// Issue 3's targets for berth/containerd.
const PULL_TARGET: f64 = 0.8;
const APPLY_TARGET: f64 = 0.5;
const PREPARE_COMMIT_TARGET: f64 = 2.0;
/// "No regression on the small busybox image": not slower than containerd.
const BUSYBOX_TARGET: f64 = 1.0;

/// One round's samples, `[berth, containerd]`.
type PerKind = [Vec<f64>; 2];

fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and touches no memory of ours.
    unsafe { libc::sync() }
}

/// A namespaced request that also holds a lease, as containerd's clients send it.
fn leased<T>(ns: &str, lease: &str, msg: T) -> tonic::Request<T> {
    let mut r = with_namespace(ns, msg);
    if let Ok(v) = lease.parse() {
        r.metadata_mut().insert(LEASE_HEADER, v);
    }
    r
}

/// Run `ctr --address SOCK --namespace NS ARGS...` to completion; its wall time, or its stderr.
fn ctr(d: &Daemon, ns: &str, args: &[&str]) -> Result<(Duration, String)> {
    let t = Instant::now();
    let out = tokio::task::block_in_place(|| {
        Command::new("ctr")
            .arg("--address")
            .arg(&d.socket)
            .arg("--namespace")
            .arg(ns)
            .args(args)
            .stdin(Stdio::null())
            .output()
    })
    .map_err(|e| format!("run ctr: {e}"))?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "{}: ctr -n {ns} {} failed ({}): {}",
            d.kind.name(),
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Remove every image of the namespace and collect garbage synchronously (`images rm --sync`).
fn remove_images(d: &Daemon, ns: &str) -> Result<()> {
    let (_, list) = ctr(d, ns, &["images", "ls", "-q"])?;
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if names.is_empty() {
        return Err(format!(
            "{}: no image in namespace {ns} after the run",
            d.kind.name()
        ));
    }
    let mut args = vec!["images", "rm", "--sync"];
    args.extend(names);
    ctr(d, ns, &args).map(drop)
}

/// Hold every committed snapshot of namespace `ns` with a lease, so removing the images there
/// frees their content but deletes no unpacked layer (see the module doc).
async fn keep_snapshots(d: &Daemon, ns: &str) -> Result<usize> {
    let kind = d.kind;
    let ch = d.connect().await?;
    let lease = "bench-keep-snapshots";
    create_lease(ch.clone(), kind, ns, lease).await?;
    let names = super::snapshot_names(ch.clone(), ns, SnapshotKind::Committed)
        .await
        .map_err(rpc_error(kind, "Snapshots.List"))?;
    let mut leases = LeasesClient::new(ch);
    for name in &names {
        leases
            .add_resource(with_namespace(
                ns,
                AddResourceRequest {
                    id: lease.into(),
                    resource: Some(Resource {
                        id: name.clone(),
                        r#type: format!("snapshots/{SNAPSHOTTER}"),
                    }),
                },
            ))
            .await
            .map_err(rpc_error(kind, "Leases.AddResource"))?;
    }
    Ok(names.len())
}

/// Whether a blob `sha256:<hex>` is still in some `blobs/sha256/` of the daemon's dir (depth ≤ 5).
fn blob_on_disk(d: &Daemon, digest: &str) -> bool {
    fn walk(dir: &Path, hex: &str, depth: usize) -> bool {
        if dir.ends_with("blobs/sha256") && dir.join(hex).exists() {
            return true;
        }
        if depth == 0 {
            return false;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return false;
        };
        rd.flatten().any(|e| {
            let name = e.file_name();
            // Unpacked layers hold whole filesystems: no blob store in there.
            e.file_type().is_ok_and(|t| t.is_dir())
                && name != "snapshots"
                && !name.to_string_lossy().contains("snapshotter")
                && walk(&e.path(), hex, depth - 1)
        })
    }
    let hex = digest.trim_start_matches("sha256:");
    walk(&d.dir, hex, 5)
}

enum CtrOp {
    Pull {
        reference: String,
    },
    Import {
        archive: String,
        base_name: Option<String>,
    },
}

impl CtrOp {
    fn args(&self) -> Vec<&str> {
        match self {
            CtrOp::Pull { reference } => vec!["images", "pull", "--plain-http", reference],
            CtrOp::Import { archive, base_name } => {
                let mut a = vec!["images", "import"];
                if let Some(b) = base_name {
                    a.extend(["--base-name", b.as_str()]);
                }
                a.push(archive);
                a
            }
        }
    }
}

struct CtrFigure<'a> {
    id: &'static str,
    title: String,
    img: &'a Image,
    op: CtrOp,
    /// Runs per daemon per round.
    reps: usize,
    ms: bool,
    target: Option<(f64, &'static str)>,
}

/// One ctr figure: A/B rounds, each run in a fresh namespace, images removed (GC'd) after each.
/// Returns the wall-time figure and the daemon-CPU-per-run figure.
async fn ctr_figure(lab: &Lab, opts: &Opts, f: &CtrFigure<'_>) -> Result<[Figure; 2]> {
    let t0 = Instant::now();
    let args = f.op.args();
    let (unit, scale) = if f.ms { ("ms", 1e3) } else { ("s", 1.0) };
    // Warm-up, not measured: the first run per daemon (page cache of the registry's storage or the
    // archive, connection setup), which also checks that cleanup really frees the layers.
    for kind in [Kind::Berth, Kind::Containerd] {
        let d = lab.daemon(kind);
        let ns = format!("{}-warmup", f.id.replace('.', "-"));
        ctr(d, &ns, &args)?;
        let kept = keep_snapshots(d, &ns).await?;
        if kept < f.img.layers.len() {
            return Err(format!(
                "{}: {kept} committed snapshots after the run, expected {} (one per layer)",
                kind.name(),
                f.img.layers.len()
            ));
        }
        remove_images(d, &ns)?;
        for l in &f.img.layers {
            if blob_on_disk(d, &l.digest) {
                return Err(format!(
                    "{}: layer {} still on disk after `ctr images rm --sync`: later runs would not fetch it",
                    kind.name(),
                    l.digest
                ));
            }
        }
    }
    let (mut wall, mut cpu) = (Samples::default(), Samples::default());
    for round in 0..opts.rounds() {
        let (mut w, mut c): ([Vec<f64>; 2], [Vec<f64>; 2]) = Default::default();
        for kind in order(round) {
            let d = lab.daemon(kind);
            for rep in 0..f.reps {
                let ns = format!("{}-{round}-{rep}", f.id.replace('.', "-"));
                sync_disks();
                let cpu0 = d.cpu_ns();
                let (dt, _) = ctr(d, &ns, &args)?;
                let used = d.cpu_ns().saturating_sub(cpu0);
                w[slot(kind)].push(dt.as_secs_f64() * scale);
                c[slot(kind)].push(used as f64 / 1e6);
                keep_snapshots(d, &ns).await?;
                remove_images(d, &ns)?;
            }
        }
        wall.round_by_kind(&w);
        cpu.round_by_kind(&c);
    }
    eprintln!(
        "[images] {}: {} rounds x {} run(s) per daemon in {:.1} s",
        f.id,
        opts.rounds(),
        f.reps,
        t0.elapsed().as_secs_f64()
    );
    let mut wall_fig = Figure::new(G, f.id, f.title.clone(), unit, Better::Lower)
        .with(wall.outcome())
        .note(format!(
            "`ctr {}`; {}; fresh namespace per run, `ctr images rm --sync` after it (outside the clock; the unpacked snapshots are kept)",
            args.join(" "),
            f.img.describe()
        ));
    if let Some((t, why)) = f.target {
        wall_fig = wall_fig.target(t);
        wall_fig.note = wall_fig.note.map(|n| format!("{n}; target: {why}"));
    }
    let cpu_fig = Figure::new(
        G,
        format!("{}.cpu", f.id),
        format!("daemon CPU per run: {}", f.title),
        "ms",
        Better::Lower,
    )
    .with(cpu.outcome())
    .note("the daemon's process CPU clock (all threads, also exited ones); ctr's own CPU is not counted");
    Ok([wall_fig, cpu_fig])
}

/// The Apply figures: Apply alone, Apply + Commit, and the daemon's CPU for the Apply.
async fn apply_figures(lab: &Lab, opts: &Opts, img: &Image) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let ns = content::NS;
    let layer = img.largest_layer().ok_or("the image has no layer")?;
    let path = img
        .blob_path(layer)
        .ok_or("the image's blobs are not in a layout dir")?;
    let bytes = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let diff_id = img.diff_id(layer);
    let desc = Descriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size as i64,
        annotations: Default::default(),
    };
    let mut chans = Vec::new();
    for kind in [Kind::Berth, Kind::Containerd] {
        let ch = lab.daemon(kind).connect().await?;
        // The layer into content (a GC root, as the content group writes), outside every clock.
        content::write(
            &mut content::client(ch.clone()),
            &format!("bench-apply-layer-{}", kind.name()),
            &bytes,
            &layer.digest,
        )
        .await
        .map_err(|e| format!("{}: write the layer into content: {e}", kind.name()))?;
        chans.push(ch);
    }
    drop(bytes);
    let (mut apply, mut apply_commit, mut cpu) =
        (Samples::default(), Samples::default(), Samples::default());
    // Round 0 is a warm-up per daemon (not recorded).
    for round in 0..=opts.rounds() {
        let (mut a, mut ac, mut c): (PerKind, PerKind, PerKind) = Default::default();
        for kind in order(round) {
            let d = lab.daemon(kind);
            let ch = chans[slot(kind)].clone();
            let (mut snaps, mut diff) = (
                SnapshotsClient::new(ch.clone()),
                DiffClient::new(ch.clone()),
            );
            // Never deleted: it keeps the unpacked layer until the end of the run (module doc).
            let lease = format!("bench-apply-{round}");
            create_lease(ch, kind, ns, &lease).await?;
            let key = format!("bench-apply-{round}");
            let name = format!("bench-applied-{round}");
            let mounts = snaps
                .prepare(leased(
                    ns,
                    &lease,
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                        parent: String::new(),
                        labels: Default::default(),
                    },
                ))
                .await
                .map_err(rpc_error(kind, "Snapshots.Prepare"))?
                .into_inner()
                .mounts;
            let apply_req = leased(
                ns,
                &lease,
                ApplyRequest {
                    diff: Some(desc.clone()),
                    mounts,
                    payloads: Default::default(),
                    // The same as containerd 1.6's apply: the commit syncs the layer.
                    sync_fs: false,
                },
            );
            let commit_req = leased(
                ns,
                &lease,
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: name.clone(),
                    key: key.clone(),
                    labels: Default::default(),
                    parent: String::new(),
                },
            );
            sync_disks();
            let cpu0 = d.cpu_ns();
            let t = Instant::now();
            let applied = diff
                .apply(apply_req)
                .await
                .map_err(rpc_error(kind, "Diff.Apply"))?
                .into_inner()
                .applied;
            let ta = t.elapsed();
            let cpu1 = d.cpu_ns();
            snaps
                .commit(commit_req)
                .await
                .map_err(rpc_error(kind, "Snapshots.Commit"))?;
            let tc = t.elapsed();
            let got = applied.map(|a| a.digest).unwrap_or_default();
            if let Some(want) = &diff_id {
                if &got != want {
                    return Err(format!(
                        "{}: Apply returned {got:?}, the image config's diff_id is {want}",
                        kind.name()
                    ));
                }
            }
            if round > 0 {
                a[slot(kind)].push(ta.as_secs_f64());
                ac[slot(kind)].push(tc.as_secs_f64());
                c[slot(kind)].push(cpu1.saturating_sub(cpu0) as f64 / 1e6);
            }
        }
        if round > 0 {
            apply.round_by_kind(&a);
            apply_commit.round_by_kind(&ac);
            cpu.round_by_kind(&c);
        }
    }
    eprintln!(
        "[images] diff Apply of the {:.1} MB layer: {} rounds in {:.1} s",
        layer.size as f64 / 1e6,
        opts.rounds(),
        t0.elapsed().as_secs_f64()
    );
    let mb = layer.size as f64 / 1e6;
    let how = format!(
        "{} {} ({mb:.1} MB) from content onto Prepare's mounts of a fresh key without parent (snapshotter overlayfs), under a lease",
        layer.media_type, layer.digest
    );
    Ok(vec![
        Figure::new(
            G,
            "diff.apply",
            format!("diff Apply of the {mb:.0} MB gzip layer (Debian image)"),
            "s",
            Better::Lower,
        )
        .with(apply.outcome())
        .target(APPLY_TARGET)
        .note(format!("{how}; target: issue 3 (at most 0.5x containerd)")),
        Figure::new(
            G,
            "diff.apply_commit",
            format!("diff Apply + snapshot Commit of the {mb:.0} MB layer"),
            "s",
            Better::Lower,
        )
        .with(apply_commit.outcome())
        .note(format!(
            "{how}; then Snapshots.Commit (berthd makes the layer durable before Commit returns)"
        )),
        Figure::new(
            G,
            "diff.apply.cpu",
            format!("daemon CPU per diff Apply of the {mb:.0} MB layer"),
            "ms",
            Better::Lower,
        )
        .with(cpu.outcome())
        .note(
            "the daemon's process CPU clock (all threads, also exited ones) during the Apply call",
        ),
    ])
}

/// One chain of `n` Prepare+Commit pairs of empty layers, each on the previous one.
async fn chain(ch: Channel, ns: String, lease: String, prefix: String, n: usize) -> Result<()> {
    let mut c = SnapshotsClient::new(ch);
    let mut parent = String::new();
    for i in 0..n {
        let key = format!("{prefix}-k{i}");
        let name = format!("{prefix}-c{i}");
        c.prepare(leased(
            &ns,
            &lease,
            PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent: parent.clone(),
                labels: Default::default(),
            },
        ))
        .await
        .map_err(|s| format!("Prepare {key}: {:?}: {}", s.code(), s.message()))?;
        c.commit(leased(
            &ns,
            &lease,
            CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: name.clone(),
                key: key.clone(),
                labels: Default::default(),
                parent: String::new(),
            },
        ))
        .await
        .map_err(|s| format!("Commit {key}: {:?}: {}", s.code(), s.message()))?;
        parent = name;
    }
    Ok(())
}

/// Prepare+Commit pairs per second, with `clients` connections each building its own chain.
async fn prepare_commit(lab: &Lab, opts: &Opts, clients: usize) -> Result<Figure> {
    let t0 = Instant::now();
    let total = if opts.quick { 64 } else { 200 };
    let per = total / clients;
    let ns = "bench-snapshots";
    let mut chans: [Vec<Channel>; 2] = Default::default();
    for kind in [Kind::Berth, Kind::Containerd] {
        for _ in 0..clients {
            chans[slot(kind)].push(lab.daemon(kind).connect().await?);
        }
    }
    let mut rate = Samples::default();
    for round in 0..=opts.rounds() {
        let mut r: [Vec<f64>; 2] = Default::default();
        for kind in order(round) {
            // Never deleted: the chains stay until the end of the run (module doc).
            let lease = format!("bench-pc{clients}-{round}");
            create_lease(chans[slot(kind)][0].clone(), kind, ns, &lease).await?;
            sync_disks();
            let barrier = Arc::new(Barrier::new(clients + 1));
            let mut tasks = Vec::new();
            for (ci, ch) in chans[slot(kind)].iter().enumerate() {
                let (ch, lease, barrier) = (ch.clone(), lease.clone(), barrier.clone());
                let prefix = format!("pc{clients}-r{round}-c{ci}");
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    chain(ch, ns.to_string(), lease, prefix, per).await
                }));
            }
            barrier.wait().await;
            let t = Instant::now();
            for task in tasks {
                task.await
                    .map_err(|e| format!("client task: {e}"))?
                    .map_err(|e| format!("{}: {e}", kind.name()))?;
            }
            let dt = t.elapsed();
            if round > 0 {
                r[slot(kind)].push((per * clients) as f64 / dt.as_secs_f64());
            }
        }
        if round > 0 {
            rate.round_by_kind(&r);
        }
    }
    eprintln!(
        "[images] snapshot Prepare+Commit, {clients} client(s) x {per} pairs: {} rounds in {:.1} s",
        opts.rounds(),
        t0.elapsed().as_secs_f64()
    );
    let who = if clients == 1 {
        "1 client".to_string()
    } else {
        format!("{clients} clients on separate chains")
    };
    Ok(Figure::new(
        G,
        format!("snapshots.prepare_commit.c{clients}"),
        format!("snapshot Prepare+Commit pairs (empty layers, chained), {who}"),
        "pairs/s",
        Better::Higher,
    )
    .with(rate.outcome())
    .target(PREPARE_COMMIT_TARGET)
    .note(format!(
        "{} pairs per run ({clients} x {per}), each Prepare on the previous Commit, under a lease (the chains are kept until the end of the run); target: issue 3 (at least 2x containerd)",
        per * clients
    )))
}

/// The figures that need the image fixtures (the Debian one takes minutes to build the first
/// time), so a run of only the snapshot or GC figures skips them.
const IMAGE_FIGURES: [&str; 5] = [
    "images.pull.debian",
    "images.import.debian",
    "images.pull.busybox",
    "images.import.busybox",
    "diff.apply",
];

pub async fn run(lab: &Lab, opts: &Opts) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    if IMAGE_FIGURES.iter().any(|id| opts.wants_figure(id)) {
        figs.extend(image_figures(lab, opts).await?);
    }
    for clients in [1, 8] {
        if !opts.wants_figure(&format!("snapshots.prepare_commit.c{clients}")) {
            continue;
        }
        match prepare_commit(lab, opts, clients).await {
            Ok(f) => figs.push(f),
            Err(e) => {
                eprintln!("[images] snapshot Prepare+Commit failed: {e}");
                figs.push(failed(
                    &format!("snapshots.prepare_commit.c{clients}"),
                    "snapshot Prepare+Commit pairs",
                    "pairs/s",
                    Better::Higher,
                    e,
                ));
            }
        }
    }
    if opts.wants_figure("gc.") {
        match super::gc::run(lab, opts).await {
            Ok(f) => figs.extend(f),
            Err(e) => {
                eprintln!("[images] GC figure failed: {e}");
                figs.push(failed(
                    "gc.collect",
                    "GC of 1,000 images",
                    "ms",
                    Better::Lower,
                    e,
                ));
            }
        }
    }
    Ok(figs)
}

/// The ctr pull/import figures and the diff Apply, on the Debian and busybox fixtures.
async fn image_figures(lab: &Lab, opts: &Opts) -> Result<Vec<Figure>> {
    let debian = tokio::task::block_in_place(fixtures::debian)?;
    let mut figs = Vec::new();
    let busybox = fixtures::busybox(&lab.root().join("fixtures"))?;
    eprintln!("[images] {}", debian.describe());
    let mut registry = Registry::start(&lab.root().join("registry"))?;
    let (debian_ref, busybox_ref) = tokio::task::block_in_place(|| {
        Ok::<_, String>((
            registry.push(&debian, "bench/debian")?,
            registry.push(&busybox, "bench/busybox")?,
        ))
    })?;
    let debian_title = format!(
        "Debian image (~{:.0} MB, {} layers)",
        debian.compressed_size() as f64 / 1e6,
        debian.layers.len()
    );
    let ctr_figs = [
        CtrFigure {
            id: "images.pull.debian",
            title: format!("ctr images pull --plain-http, {debian_title}, loopback registry"),
            img: &debian,
            op: CtrOp::Pull {
                reference: debian_ref,
            },
            reps: 1,
            ms: false,
            target: Some((PULL_TARGET, "issue 3 (whole pull at most 0.8x containerd)")),
        },
        CtrFigure {
            id: "images.import.debian",
            title: format!("ctr images import, {debian_title} as an OCI archive"),
            img: &debian,
            op: CtrOp::Import {
                archive: debian.archive.to_string_lossy().into_owned(),
                base_name: Some("docker.io/bench/debian".into()),
            },
            reps: 1,
            ms: false,
            target: None,
        },
        CtrFigure {
            id: "images.pull.busybox",
            title: "ctr images pull --plain-http, busybox image (1 layer), loopback registry"
                .into(),
            img: &busybox,
            op: CtrOp::Pull {
                reference: busybox_ref,
            },
            reps: 3,
            ms: true,
            target: Some((BUSYBOX_TARGET, "issue 3 (no regression on busybox)")),
        },
        CtrFigure {
            id: "images.import.busybox",
            title: "ctr images import, busybox image (1 layer) as an OCI archive".into(),
            img: &busybox,
            op: CtrOp::Import {
                archive: busybox.archive.to_string_lossy().into_owned(),
                base_name: None,
            },
            reps: 3,
            ms: true,
            target: Some((BUSYBOX_TARGET, "issue 3 (no regression on busybox)")),
        },
    ];
    for f in ctr_figs.iter().filter(|f| opts.wants_figure(f.id)) {
        match ctr_figure(lab, opts, f).await {
            Ok([w, c]) => figs.extend([w, c]),
            Err(e) => {
                eprintln!("[images] {} failed: {e}", f.id);
                figs.push(failed(f.id, &f.title, "s", Better::Lower, e));
            }
        }
    }
    registry.stop();
    // After the ctr figures: a blob left in containerd's content store would be shared into the
    // namespaces of later pulls.
    if opts.wants_figure("diff.apply") {
        match apply_figures(lab, opts, &debian).await {
            Ok(f) => figs.extend(f),
            Err(e) => {
                eprintln!("[images] diff Apply failed: {e}");
                figs.push(failed(
                    "diff.apply",
                    "diff Apply of the big layer",
                    "s",
                    Better::Lower,
                    e,
                ));
            }
        }
    }
    Ok(figs)
}

fn failed(id: &str, title: &str, unit: &'static str, better: Better, error: String) -> Figure {
    Figure::new(G, id, title, unit, better).with(super::Outcome::Failed { error })
}
