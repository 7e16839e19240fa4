//! Tasks figures (issue 5, items 4 and 5): running containers, berthd (berth-shim + runc) against
//! containerd 1.6 (containerd-shim-runc-v2 + runc), both driven by the same `ctr` binary and the
//! same gRPC client code, with the busybox image of the images group imported into each daemon.
//!
//! - `ctr run --rm busybox ID /bin/true`, end to end (the whole `ctr` process), and the daemon's CPU
//!   per run;
//! - task Create+Start alone over gRPC (Snapshots.Prepare and Containers.Create with ctr's own spec
//!   first, Kill/Wait/Delete after, all outside the clock);
//! - 4 clients running `ctr run --rm` cycles in parallel: runs per second;
//! - `ctr tasks exec` of /bin/true into a running container;
//! - with 100 containers running (`ctr run -d busybox ID sleep 100000`), one daemon at a time so
//!   the memory readings are clean: the daemon's RSS/PSS, every shim's RSS/PSS, and
//!   restart-to-ready after kill -9 (spawn until `ctr tasks ls` lists all 100 as RUNNING).
//!
//! Isolation: each daemon runs its containers in a namespace of its own (`tasks-b-<pid>`,
//! `tasks-c-<pid>`; ctr's cgroupsPath is `/<ns>/<id>`, so the cgroups never collide), with runc's
//! root in its own dir (`ctr run --runc-root <daemon dir>/runc`, and the same in the runtime
//! options of the gRPC containers; containerd would otherwise use /run/containerd/runc) and the
//! FIFOs of `ctr` in `<daemon dir>/fifo`. Every figure is followed by a cleanup through the daemon
//! (kill -9, Wait, Delete of every task; Delete of every container and its snapshot), and the
//! group ends by checking that no runc container, shim, container process or mount is left under
//! the temp root; `daemon::sweep` catches whatever an error, panic or Ctrl-C leaves.

use super::footprint::memory;
use super::{create_lease, rpc_error, slot, Better, Figure, Outcome, Samples};
use crate::daemon::{self, order, Kind, Lab};
use crate::fixtures::{self, Image};
use crate::{Opts, Result};
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::{
    container, Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest,
    ListContainersRequest,
};
use berth::api::services::leases::v1::leases_client::LeasesClient;
use berth::api::services::leases::v1::DeleteRequest as DeleteLeaseRequest;
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::{
    Kind as SnapshotKind, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use berth::api::services::tasks::v1::tasks_client::TasksClient;
use berth::api::services::tasks::v1::{
    CreateTaskRequest, DeleteTaskRequest, KillRequest, ListTasksRequest, StartRequest, WaitRequest,
};
use berth::{with_lease, with_namespace};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use tonic::transport::Channel;

const G: &str = "tasks";
/// The busybox fixture's name (the `io.containerd.image.name` annotation of its archive).
pub(super) const IMAGE: &str = "docker.io/bench/busybox:v1";
pub(super) const RUNTIME: &str = "io.containerd.runc.v2";
pub(super) const SNAPSHOTTER: &str = "overlayfs";
pub(super) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Issue 5's targets for berth/containerd.
const RUN_RM_TARGET: f64 = 0.5;
const CYCLES_TARGET: f64 = 1.5;
/// Any single `ctr` call taking longer than this is a hang: fail the figure.
const CTR_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restarted daemon may take to list every container as RUNNING.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const SIGKILL: u32 = 9;

/// One round's samples, `[berth, containerd]`.
type PerKind = [Vec<f64>; 2];

/// One daemon as these figures drive it: where to reach it and its own namespace, runc root and
/// FIFO dir.
#[derive(Clone, Debug)]
pub(super) struct Side {
    pub(super) kind: Kind,
    socket: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) ns: String,
    runc_root: PathBuf,
    fifo_dir: PathBuf,
}

impl Side {
    fn new(lab: &Lab, kind: Kind) -> Result<Side> {
        Side::named(lab, kind, G)
    }

    /// A side whose namespace is `<group>-<b|c>-<pid>` (each group its own, so their cleanups
    /// and leftover checks never see each other's objects).
    pub(super) fn named(lab: &Lab, kind: Kind, group: &str) -> Result<Side> {
        let d = lab.daemon(kind);
        let tag = match kind {
            Kind::Berth => "b",
            Kind::Containerd | Kind::Containerd2 => "c",
        };
        let ns = format!("{group}-{tag}-{}", std::process::id());
        daemon::register_task_namespace(&ns);
        let side = Side {
            kind,
            socket: d.socket.clone(),
            dir: d.dir.clone(),
            ns,
            runc_root: d.dir.join("runc"),
            fifo_dir: d.dir.join("fifo"),
        };
        for p in [&side.runc_root, &side.fifo_dir] {
            std::fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display()))?;
        }
        Ok(side)
    }

    pub(super) fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// `ctr run <mode> --fifo-dir F --runc-root R busybox ID CMD...`
    fn run_args(&self, mode: &str, id: &str, cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            mode.into(),
            "--fifo-dir".into(),
            self.fifo_dir.to_string_lossy().into_owned(),
            "--runc-root".into(),
            self.runc_root.to_string_lossy().into_owned(),
            IMAGE.into(),
            id.into(),
        ];
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    /// containerd.runc.v1.Options{root: <runc root>}, as `ctr run --runc-root` sends it.
    pub(super) fn runtime_options(&self) -> prost_types::Any {
        // Field 7 (root), wire type 2: the only field set, so encoded by hand (no prost dependency).
        let root = self.runc_root.to_string_lossy().into_owned().into_bytes();
        let mut value = vec![(7 << 3) | 2];
        let mut len = root.len();
        while len >= 0x80 {
            value.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        value.push(len as u8);
        value.extend(root);
        prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value,
        }
    }
}

/// `ctr --address SOCK --namespace NS ARGS...` to completion: its wall time and stdout, or an error
/// with its stderr. Timed around the whole process; killed after [`CTR_TIMEOUT`].
pub(super) async fn ctr(s: &Side, args: &[String]) -> Result<(Duration, String)> {
    let mut cmd = tokio::process::Command::new("ctr");
    cmd.arg("--address")
        .arg(&s.socket)
        .arg("--namespace")
        .arg(&s.ns)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let t = Instant::now();
    let out = tokio::time::timeout(CTR_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            format!(
                "{}: ctr {} did not finish in {} s",
                s.name(),
                args.join(" "),
                CTR_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("run ctr: {e}"))?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "{}: ctr -n {} {} failed ({}): {}",
            s.name(),
            s.ns,
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

pub(super) fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Kill -9 a task (all its processes), wait for it, delete it; then its container and the
/// container's snapshot. What is already gone is skipped.
pub(super) async fn remove_container(ch: &Channel, s: &Side, id: &str) -> Result<()> {
    let ns = s.ns.as_str();
    let mut tasks = TasksClient::new(ch.clone());
    let gone = |e: &tonic::Status| e.code() == tonic::Code::NotFound;
    // Killing a stopped (or absent) task fails with NotFound or FailedPrecondition: fine.
    let _ = tasks
        .kill(with_namespace(
            ns,
            KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal: SIGKILL,
                all: true,
            },
        ))
        .await;
    let wait = tasks.wait(with_namespace(
        ns,
        WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        },
    ));
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if gone(&e) => {}
        Ok(Err(e)) => return Err(rpc_error(s.kind, "Tasks.Wait")(e)),
        Err(_) => {
            return Err(format!(
                "{}: task {id} still running 30 s after kill -9",
                s.name()
            ))
        }
    }
    match tasks
        .delete(with_namespace(
            ns,
            DeleteTaskRequest {
                container_id: id.into(),
            },
        ))
        .await
    {
        Ok(_) => {}
        Err(e) if gone(&e) => {}
        Err(e) => return Err(rpc_error(s.kind, "Tasks.Delete")(e)),
    }
    let mut containers = ContainersClient::new(ch.clone());
    let key = match containers
        .get(with_namespace(ns, GetContainerRequest { id: id.into() }))
        .await
    {
        Ok(r) => r
            .into_inner()
            .container
            .map(|c| (c.snapshotter, c.snapshot_key)),
        Err(e) if gone(&e) => None,
        Err(e) => return Err(rpc_error(s.kind, "Containers.Get")(e)),
    };
    match containers
        .delete(with_namespace(ns, DeleteContainerRequest { id: id.into() }))
        .await
    {
        Ok(_) => {}
        Err(e) if gone(&e) => {}
        Err(e) => return Err(rpc_error(s.kind, "Containers.Delete")(e)),
    }
    if let Some((snapshotter, key)) = key.filter(|(_, k)| !k.is_empty()) {
        match SnapshotsClient::new(ch.clone())
            .remove(with_namespace(
                ns,
                RemoveSnapshotRequest { snapshotter, key },
            ))
            .await
        {
            Ok(_) => {}
            Err(e) if gone(&e) => {}
            Err(e) => return Err(rpc_error(s.kind, "Snapshots.Remove")(e)),
        }
    }
    Ok(())
}

/// Remove every task, container and active snapshot of the side's namespace (the image stays).
pub(super) async fn cleanup(lab: &Lab, s: &Side) -> Result<usize> {
    let ch = lab.daemon(s.kind).connect().await?;
    let ns = s.ns.as_str();
    let listed = TasksClient::new(ch.clone())
        .list(with_namespace(ns, ListTasksRequest::default()))
        .await
        .map_err(rpc_error(s.kind, "Tasks.List"))?
        .into_inner()
        .tasks;
    let mut ids: Vec<String> = listed
        .into_iter()
        .map(|p| {
            if p.container_id.is_empty() {
                p.id
            } else {
                p.container_id
            }
        })
        .collect();
    let containers = ContainersClient::new(ch.clone())
        .max_decoding_message_size(1 << 30)
        .list(with_namespace(ns, ListContainersRequest::default()))
        .await
        .map_err(rpc_error(s.kind, "Containers.List"))?
        .into_inner()
        .containers;
    ids.extend(containers.into_iter().map(|c| c.id));
    ids.sort();
    ids.dedup();
    for id in &ids {
        remove_container(&ch, s, id).await?;
    }
    // Snapshots a failed run prepared but no container holds.
    let active = super::snapshot_names(ch.clone(), ns, SnapshotKind::Active)
        .await
        .map_err(rpc_error(s.kind, "Snapshots.List"))?;
    for key in active {
        let _ = SnapshotsClient::new(ch.clone())
            .remove(with_namespace(
                ns,
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key,
                },
            ))
            .await;
    }
    Ok(ids.len())
}

/// The shims of one daemon: berth-shim / containerd-shim-runc-v2 processes whose command line
/// names the daemon's dir (berth-shim's `--bundle`, containerd's shim's `-address`).
pub(super) fn shim_pids(s: &Side) -> Vec<u32> {
    let program = match s.kind {
        Kind::Berth => "berth-shim",
        Kind::Containerd | Kind::Containerd2 => "containerd-shim-runc-v2",
    };
    let dir = s.dir.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            argv.first()
                .is_some_and(|a0| a0.rsplit('/').next() == Some(program))
                && argv.iter().any(|a| a.contains(&dir))
        })
        .collect()
}

/// Until `ctr tasks ls` lists `n` tasks named `prefix*` as RUNNING.
async fn wait_running(s: &Side, prefix: &str, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match ctr(s, &args(&["tasks", "ls"])).await {
            Ok((_, out)) => {
                let running = out
                    .lines()
                    .filter(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() >= 3 && f[0].starts_with(prefix) && f[2] == "RUNNING"
                    })
                    .count();
                if running >= n {
                    return Ok(());
                }
                format!("{running} of {n} RUNNING")
            }
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(format!(
                "{}: not all {n} tasks RUNNING after {} s ({last})",
                s.name(),
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

/// `ctr run --rm busybox ID /bin/true`: wall time of the whole ctr process, and daemon CPU.
async fn run_rm(lab: &Lab, opts: &Opts, sides: &[Side; 2]) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let per = if opts.quick { 3 } else { 5 };
    // Warm-up, not measured: page cache of the image's layer, runc and the shims' binaries.
    for s in sides {
        for i in 0..2 {
            ctr(
                s,
                &s.run_args("--rm", &format!("rm-warm-{i}"), &["/bin/true"]),
            )
            .await?;
        }
    }
    let (mut wall, mut cpu) = (Samples::default(), Samples::default());
    for round in 0..opts.rounds() {
        let (mut w, mut c): (PerKind, PerKind) = Default::default();
        for i in 0..per {
            // Alternate within the round too: run i goes berth first when (round + i) is even.
            for kind in order(round + i) {
                let s = &sides[slot(kind)];
                let d = lab.daemon(kind);
                let cpu0 = d.cpu_ns();
                let (dt, _) = ctr(
                    s,
                    &s.run_args("--rm", &format!("rm-{round}-{i}"), &["/bin/true"]),
                )
                .await?;
                let used = d.cpu_ns().saturating_sub(cpu0);
                w[slot(kind)].push(ms(dt));
                c[slot(kind)].push(used as f64 / 1e6);
            }
        }
        wall.round_by_kind(&w);
        cpu.round_by_kind(&c);
    }
    eprintln!(
        "[tasks] ctr run --rm: {} rounds x {per} runs per daemon in {:.1} s",
        opts.rounds(),
        t0.elapsed().as_secs_f64()
    );
    Ok(vec![
        Figure::new(
            G,
            "tasks.run_rm",
            "ctr run --rm busybox ID /bin/true, end to end",
            "ms",
            Better::Lower,
        )
        .with(wall.outcome())
        .target(RUN_RM_TARGET)
        .note(format!(
            "wall time of `ctr run --rm --fifo-dir F --runc-root R {IMAGE} ID /bin/true` (snapshot Prepare, container Create, task Create/Wait/Start, exit, task and container Delete); {per} runs per daemon per round, alternating; 2 warm-up runs per daemon; target: issue 5 (at most 0.5x containerd)"
        )),
        Figure::new(
            G,
            "tasks.run_rm.cpu",
            "daemon CPU per ctr run --rm /bin/true",
            "ms",
            Better::Lower,
        )
        .with(cpu.outcome())
        .note("the daemon's process CPU clock (all threads) over the run; the shims, runc and ctr are separate processes, counted for neither daemon"),
    ])
}

/// ctr's own spec for a busybox container running `sleep 1000`: made by `ctr containers create`
/// and read back (then the container is removed).
pub(super) async fn ctr_spec(lab: &Lab, s: &Side) -> Result<Value> {
    let id = "spec-template";
    ctr(
        s,
        &args(&["containers", "create", IMAGE, id, "/bin/sleep", "1000"]),
    )
    .await?;
    let ch = lab.daemon(s.kind).connect().await?;
    let c = ContainersClient::new(ch)
        .get(with_namespace(&s.ns, GetContainerRequest { id: id.into() }))
        .await
        .map_err(rpc_error(s.kind, "Containers.Get"))?
        .into_inner()
        .container
        .ok_or("Containers.Get returned no container")?;
    let spec = c.spec.ok_or("ctr's container has no spec")?;
    ctr(s, &args(&["containers", "rm", id])).await?;
    serde_json::from_slice(&spec.value).map_err(|e| format!("ctr's spec is not JSON: {e}"))
}

/// Container `id` made as containerd's Go client makes one (ctr run): under lease `lease`, a
/// snapshot of the image's top layer (`chain_id`) keyed by the container id, then the container
/// with `spec` (its cgroupsPath set to `/<ns>/<id>`) and the runc options; then the lease goes, as
/// the container holds the snapshot. Returns the snapshot's mounts, the task's rootfs.
pub(super) async fn create_container_as_ctr(
    ch: &Channel,
    s: &Side,
    spec: &Value,
    chain_id: &str,
    id: &str,
    lease: &str,
) -> Result<Vec<berth::api::types::Mount>> {
    let ns = s.ns.as_str();
    create_lease(ch.clone(), s.kind, ns, lease).await?;
    let mounts = SnapshotsClient::new(ch.clone())
        .prepare(with_lease(
            ns,
            lease,
            PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
                parent: chain_id.into(),
                labels: Default::default(),
            },
        ))
        .await
        .map_err(rpc_error(s.kind, "Snapshots.Prepare"))?
        .into_inner()
        .mounts;
    let mut spec = spec.clone();
    spec["linux"]["cgroupsPath"] = Value::String(format!("/{ns}/{id}"));
    let spec = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    ContainersClient::new(ch.clone())
        .create(with_lease(
            ns,
            lease,
            CreateContainerRequest {
                container: Some(Container {
                    id: id.into(),
                    image: IMAGE.into(),
                    runtime: Some(container::Runtime {
                        name: RUNTIME.into(),
                        options: Some(s.runtime_options()),
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE_URL.into(),
                        value: spec,
                    }),
                    snapshotter: SNAPSHOTTER.into(),
                    snapshot_key: id.into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .map_err(rpc_error(s.kind, "Containers.Create"))?;
    LeasesClient::new(ch.clone())
        .delete(with_namespace(
            ns,
            DeleteLeaseRequest {
                id: lease.into(),
                sync: false,
            },
        ))
        .await
        .map_err(rpc_error(s.kind, "Leases.Delete"))?;
    Ok(mounts)
}

/// One task Create+Start over gRPC; only the two calls are timed.
async fn create_start_once(
    ch: &Channel,
    s: &Side,
    spec: &Value,
    chain_id: &str,
    id: &str,
) -> Result<Duration> {
    let ns = s.ns.as_str();
    let mounts = create_container_as_ctr(ch, s, spec, chain_id, id, &format!("bench-{id}")).await?;
    let mut tasks = TasksClient::new(ch.clone());
    let create = with_namespace(
        ns,
        CreateTaskRequest {
            container_id: id.into(),
            rootfs: mounts,
            ..Default::default()
        },
    );
    let start = with_namespace(
        ns,
        StartRequest {
            container_id: id.into(),
            exec_id: String::new(),
        },
    );
    let t = Instant::now();
    tasks
        .create(create)
        .await
        .map_err(rpc_error(s.kind, "Tasks.Create"))?;
    tasks
        .start(start)
        .await
        .map_err(rpc_error(s.kind, "Tasks.Start"))?;
    let dt = t.elapsed();
    remove_container(ch, s, id).await?;
    Ok(dt)
}

/// Task Create+Start alone, over gRPC.
async fn create_start(
    lab: &Lab,
    opts: &Opts,
    sides: &[Side; 2],
    img: &Image,
) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let chain_id = img
        .diff_ids
        .first()
        .ok_or("the busybox image has no diff_id")?
        .clone();
    let spec = ctr_spec(lab, &sides[0]).await?;
    let mut chans = Vec::new();
    for s in sides {
        chans.push(lab.daemon(s.kind).connect().await?);
    }
    let per = if opts.quick { 3 } else { 5 };
    for s in sides {
        create_start_once(&chans[slot(s.kind)], s, &spec, &chain_id, "cs-warm").await?;
    }
    let mut samples = Samples::default();
    for round in 0..opts.rounds() {
        let mut r: PerKind = Default::default();
        for i in 0..per {
            for kind in order(round + i) {
                let s = &sides[slot(kind)];
                let dt = create_start_once(
                    &chans[slot(kind)],
                    s,
                    &spec,
                    &chain_id,
                    &format!("cs-{round}-{i}"),
                )
                .await?;
                r[slot(kind)].push(ms(dt));
            }
        }
        samples.round_by_kind(&r);
    }
    eprintln!(
        "[tasks] task Create+Start: {} rounds x {per} per daemon in {:.1} s",
        opts.rounds(),
        t0.elapsed().as_secs_f64()
    );
    Ok(vec![Figure::new(
        G,
        "tasks.create_start",
        "task Create+Start alone (gRPC), busybox sleep",
        "ms",
        Better::Lower,
    )
    .with(samples.outcome())
    .note(format!(
        "Tasks.Create (rootfs = the snapshot's mounts, no stdio) then Tasks.Start, timed together; before, outside the clock: under a lease, Snapshots.Prepare of the image's layer and Containers.Create with ctr's own spec (from `ctr containers create`, cgroupsPath /<ns>/<id>) and runc options {{root}}; after: Kill -9, Wait, Delete, container and snapshot removal; {per} per daemon per round, alternating"
    ))])
}

/// `clients` loops of `per` sequential `ctr run --rm` each, all started together: wall time.
async fn cycles_once(s: &Side, tag: &str, clients: usize, per: usize) -> Result<Duration> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for c in 0..clients {
        let (s, barrier, tag) = (s.clone(), barrier.clone(), tag.to_string());
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            for i in 0..per {
                ctr(
                    &s,
                    &s.run_args("--rm", &format!("cy-{tag}-{c}-{i}"), &["/bin/true"]),
                )
                .await?;
            }
            Ok::<_, String>(())
        }));
    }
    barrier.wait().await;
    let t = Instant::now();
    let mut first_err = None;
    for h in handles {
        let r = h.await.map_err(|e| format!("client task: {e}"))?;
        if let (Err(e), None) = (r, &first_err) {
            first_err = Some(e);
        }
    }
    let dt = t.elapsed();
    match first_err {
        Some(e) => Err(e),
        None => Ok(dt),
    }
}

/// 4 clients x 100 `ctr run --rm` cycles in parallel: runs per second.
async fn cycles(opts: &Opts, sides: &[Side; 2]) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let clients = 4;
    let per = if opts.quick { 10 } else { 100 };
    // Two rounds (each daemon once first) are enough for a figure of 400 runs per sample.
    let rounds = if opts.quick { 1 } else { 2 };
    let mut rate = Samples::default();
    for round in 0..rounds {
        let mut r: PerKind = Default::default();
        for kind in order(round) {
            let s = &sides[slot(kind)];
            let dt = cycles_once(s, &format!("r{round}"), clients, per).await?;
            let runs_per_s = (clients * per) as f64 / dt.as_secs_f64();
            eprintln!(
                "[tasks] {} x {per} ctr run --rm on {}: {:.1} s, {runs_per_s:.1} runs/s",
                clients,
                s.name(),
                dt.as_secs_f64()
            );
            r[slot(kind)].push(runs_per_s);
        }
        rate.round_by_kind(&r);
    }
    eprintln!(
        "[tasks] run cycles: {rounds} rounds in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(vec![Figure::new(
        G,
        "tasks.cycles",
        format!("{clients} clients x {per} ctr run --rm cycles in parallel, throughput"),
        "runs/s",
        Better::Higher,
    )
    .with(rate.outcome())
    .target(CYCLES_TARGET)
    .note(format!(
        "{clients} concurrent loops of {per} sequential `ctr run --rm ... /bin/true` each, started together; runs/s = {} / wall time of the slowest loop; {rounds} round(s), each daemon first once; target: issue 5 (at least 1.5x containerd)",
        clients * per
    ))])
}

/// `ctr tasks exec` of /bin/true into a running busybox `sleep`.
async fn exec(lab: &Lab, opts: &Opts, sides: &[Side; 2]) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let target = "exec-target";
    for s in sides {
        ctr(s, &s.run_args("-d", target, &["/bin/sleep", "100000"])).await?;
        wait_running(s, target, 1, Duration::from_secs(30)).await?;
    }
    let exec_args = |s: &Side, xid: &str| {
        args(&[
            "tasks",
            "exec",
            "--exec-id",
            xid,
            "--fifo-dir",
            &s.fifo_dir.to_string_lossy(),
            target,
            "/bin/true",
        ])
    };
    for s in sides {
        ctr(s, &exec_args(s, "warm")).await?;
    }
    let per = if opts.quick { 3 } else { 5 };
    let mut samples = Samples::default();
    for round in 0..opts.rounds() {
        let mut r: PerKind = Default::default();
        for i in 0..per {
            for kind in order(round + i) {
                let s = &sides[slot(kind)];
                let (dt, _) = ctr(s, &exec_args(s, &format!("x{round}-{i}"))).await?;
                r[slot(kind)].push(ms(dt));
            }
        }
        samples.round_by_kind(&r);
    }
    for s in sides {
        let ch = lab.daemon(s.kind).connect().await?;
        remove_container(&ch, s, target).await?;
    }
    eprintln!(
        "[tasks] ctr tasks exec: {} rounds x {per} per daemon in {:.1} s",
        opts.rounds(),
        t0.elapsed().as_secs_f64()
    );
    Ok(vec![Figure::new(
        G,
        "tasks.exec",
        "ctr tasks exec /bin/true into a running container",
        "ms",
        Better::Lower,
    )
    .with(samples.outcome())
    .note(format!(
        "wall time of `ctr tasks exec --exec-id ID --fifo-dir F {target} /bin/true` into `sleep 100000` started by `ctr run -d`; one warm-up exec per daemon; {per} per daemon per round, alternating"
    ))])
}

/// What one daemon showed with `n` containers running.
#[derive(Default)]
struct Loaded {
    /// `ctr run -d` latency of each of the n containers (ms).
    run_d: Vec<f64>,
    rss: Vec<f64>,
    pss: Vec<f64>,
    /// Per shim (MiB).
    shim_rss: Vec<f64>,
    shim_pss: Vec<f64>,
    /// Restart-to-ready (ms) per kill -9.
    restart: Vec<f64>,
    /// Of which spawn to the first answered Version call (ms).
    version_ready: Vec<f64>,
}

/// On one daemon (the other idle): start `n` containers, read memory, restart it `reps` times.
async fn loaded(lab: &mut Lab, s: &Side, n: usize, reps: usize) -> Result<Loaded> {
    let mut out = Loaded::default();
    let t0 = Instant::now();
    for i in 0..n {
        let (dt, _) = ctr(
            s,
            &s.run_args("-d", &format!("idle-{i}"), &["/bin/sleep", "100000"]),
        )
        .await?;
        out.run_d.push(ms(dt));
    }
    wait_running(s, "idle-", n, Duration::from_secs(60)).await?;
    eprintln!(
        "[tasks] {}: {n} containers running after {:.1} s",
        s.name(),
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = lab
        .daemon(s.kind)
        .pid()
        .ok_or_else(|| format!("{} is not running", s.name()))?;
    for _ in 0..5 {
        let (r, p) = memory(pid)?;
        out.rss.push(r);
        out.pss.push(p);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shims = shim_pids(s);
    if shims.len() != n {
        return Err(format!(
            "{}: {} shim processes for {n} running containers",
            s.name(),
            shims.len()
        ));
    }
    for pid in shims {
        let (r, p) = memory(pid)?;
        out.shim_rss.push(r);
        out.shim_pss.push(p);
    }
    for _ in 0..reps {
        let d = lab.daemon_mut(s.kind);
        d.kill9();
        let version = d.start().await?;
        let t = Instant::now();
        wait_running(s, "idle-", n, READY_TIMEOUT).await?;
        out.restart.push(ms(version + t.elapsed()));
        out.version_ready.push(ms(version));
    }
    Ok(out)
}

/// The figures of the loaded daemons (one pass each, so one "round").
fn loaded_figures(n: usize, reps: usize, b: &Loaded, c: &Loaded) -> Vec<Figure> {
    let fig = |id: &str, title: String, unit: &'static str, bv: &[f64], cv: &[f64]| {
        let mut s = Samples::default();
        s.round(bv, cv);
        Figure::new(G, id, title, unit, Better::Lower).with(s.outcome())
    };
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let mean = |v: &[f64]| sum(v) / v.len().max(1) as f64;
    let dmed = |v: &[f64]| crate::stats::median(v);
    vec![
        fig(
            "tasks.running.run_d",
            format!("ctr run -d busybox sleep, while filling up to {n} running"),
            "ms",
            &b.run_d,
            &c.run_d,
        )
        .note(format!("{n} sequential `ctr run -d --fifo-dir F --runc-root R {IMAGE} idle-N /bin/sleep 100000` per daemon, one daemon at a time")),
        fig(
            "tasks.running.rss",
            format!("daemon RSS with {n} running containers"),
            "MiB",
            &b.rss,
            &c.rss,
        )
        .note("VmRSS of berthd / containerd, 5 readings 100 ms apart, 2 s after the last container started; the other daemon has no container running"),
        fig(
            "tasks.running.pss",
            format!("daemon PSS with {n} running containers"),
            "MiB",
            &b.pss,
            &c.pss,
        ),
        fig(
            "tasks.running.shim_rss",
            format!("shim RSS per container ({n} running; berth-shim vs containerd-shim-runc-v2)"),
            "MiB",
            &b.shim_rss,
            &c.shim_rss,
        )
        .note(format!(
            "VmRSS of each shim process (one per container); mean {:.2} vs {:.2} MiB",
            mean(&b.shim_rss),
            mean(&c.shim_rss)
        )),
        fig(
            "tasks.running.shim_pss",
            format!("shim PSS per container ({n} running)"),
            "MiB",
            &b.shim_pss,
            &c.shim_pss,
        )
        .note(format!(
            "Pss of each shim (/proc/PID/smaps_rollup: shared pages split among the {n} shims); mean {:.3} vs {:.3} MiB",
            mean(&b.shim_pss),
            mean(&c.shim_pss)
        )),
        fig(
            "tasks.running.shim_rss_total",
            format!("shim RSS, total over the {n} shims"),
            "MiB",
            &[sum(&b.shim_rss)],
            &[sum(&c.shim_rss)],
        ),
        fig(
            "tasks.running.shim_pss_total",
            format!("shim PSS, total over the {n} shims"),
            "MiB",
            &[sum(&b.shim_pss)],
            &[sum(&c.shim_pss)],
        ),
        fig(
            "tasks.running.total_pss",
            format!("daemon + shims PSS with {n} running containers"),
            "MiB",
            &[dmed(&b.pss) + sum(&b.shim_pss)],
            &[dmed(&c.pss) + sum(&c.shim_pss)],
        )
        .note("the daemon's median PSS plus the sum of its shims' PSS (runc is not resident; the containers' own `sleep` is not counted)"),
        fig(
            "tasks.running.restart_to_ready",
            format!("restart-to-ready after kill -9 with {n} running containers"),
            "ms",
            &b.restart,
            &c.restart,
        )
        .note(format!(
            "kill -9 of the daemon, spawn on the same root/state, until `ctr tasks ls` lists all {n} as RUNNING; {reps} per daemon; of which spawn to the first Version answer: median {:.1} vs {:.1} ms",
            dmed(&b.version_ready),
            dmed(&c.version_ready)
        )),
    ]
}

/// `n` running containers on each daemon in turn: memory, then restart-to-ready.
async fn running(lab: &mut Lab, opts: &Opts, sides: &[Side; 2]) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let n = if opts.quick { 10 } else { 100 };
    let reps = if opts.quick { 1 } else { 3 };
    let mut results: [Option<Loaded>; 2] = [None, None];
    for s in sides {
        let r = loaded(lab, s, n, reps).await;
        let t = Instant::now();
        let cleaned = cleanup(lab, s).await;
        eprintln!(
            "[tasks] {}: removed {} containers in {:.1} s",
            s.name(),
            cleaned.as_ref().copied().unwrap_or(0),
            t.elapsed().as_secs_f64()
        );
        let r = r?;
        cleaned?;
        wait_no_shims(s).await?;
        results[slot(s.kind)] = Some(r);
    }
    eprintln!(
        "[tasks] {n} running containers, each daemon in turn: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let [Some(b), Some(c)] = results else {
        return Err("a daemon was not measured".into());
    };
    Ok(loaded_figures(n, reps, &b, &c))
}

/// After a cleanup, a daemon's shims exit on their own (shortly after Delete).
pub(super) async fn wait_no_shims(s: &Side) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = shim_pids(s);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{}: {} shim(s) still running 10 s after every task was deleted (pids {:?})",
                s.name(),
                left.len(),
                left
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn failed(id: &str, title: &str, unit: &'static str, better: Better, error: String) -> Figure {
    Figure::new(G, id, title, unit, better).with(Outcome::Failed { error })
}

pub async fn run(lab: &mut Lab, opts: &Opts) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let img = fixtures::busybox(&lab.root().join("fixtures"))?;
    let sides = [
        Side::new(lab, Kind::Berth)?,
        Side::new(lab, Kind::Containerd)?,
    ];
    for s in &sides {
        ctr(
            s,
            &args(&["images", "import", &img.archive.to_string_lossy()]),
        )
        .await?;
    }
    eprintln!(
        "[tasks] namespaces {} / {}; runc roots {} / {}",
        sides[0].ns,
        sides[1].ns,
        sides[0].runc_root.display(),
        sides[1].runc_root.display()
    );
    let mut figs = Vec::new();
    let wants = |id: &str| opts.wants_figure(id);
    if wants("tasks.run_rm") {
        let r = run_rm(lab, opts, &sides).await;
        push(
            &mut figs,
            r,
            "tasks.run_rm",
            "ctr run --rm busybox /bin/true",
            "ms",
            Better::Lower,
        );
        after_figure(lab, &sides).await;
    }
    if wants("tasks.create_start") {
        let r = create_start(lab, opts, &sides, &img).await;
        push(
            &mut figs,
            r,
            "tasks.create_start",
            "task Create+Start alone",
            "ms",
            Better::Lower,
        );
        after_figure(lab, &sides).await;
    }
    if wants("tasks.cycles") {
        let r = cycles(opts, &sides).await;
        push(
            &mut figs,
            r,
            "tasks.cycles",
            "4 clients x 100 run cycles, throughput",
            "runs/s",
            Better::Higher,
        );
        after_figure(lab, &sides).await;
    }
    if wants("tasks.exec") {
        let r = exec(lab, opts, &sides).await;
        push(
            &mut figs,
            r,
            "tasks.exec",
            "ctr tasks exec latency",
            "ms",
            Better::Lower,
        );
        after_figure(lab, &sides).await;
    }
    if [
        "tasks.running.run_d",
        "tasks.running.rss",
        "tasks.running.pss",
        "tasks.running.shim_rss",
        "tasks.running.shim_pss",
        "tasks.running.shim_rss_total",
        "tasks.running.shim_pss_total",
        "tasks.running.total_pss",
        "tasks.running.restart_to_ready",
    ]
    .iter()
    .any(|id| wants(id))
    {
        let r = running(lab, opts, &sides).await;
        push(
            &mut figs,
            r,
            "tasks.running",
            "100 running containers: memory and restart-to-ready",
            "MiB",
            Better::Lower,
        );
        after_figure(lab, &sides).await;
    }
    // Nothing may be left: no runc container, shim, container process or mount under the root.
    let left = daemon::sweep(lab.root(), false);
    if left.is_empty() {
        eprintln!("[tasks] after cleanup: no runc container, shim, container process or mount left under the temp root");
    } else {
        let what = left.describe();
        eprintln!("[tasks] LEFT after cleanup (now killed): {what}");
        daemon::sweep(lab.root(), true);
        figs.push(failed(
            "tasks.cleanup",
            "cleanup after the tasks figures",
            "",
            Better::Lower,
            format!("left after the daemons' cleanup: {what}"),
        ));
    }
    eprintln!("[tasks] group done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(figs)
}

fn push(
    figs: &mut Vec<Figure>,
    r: Result<Vec<Figure>>,
    id: &str,
    title: &str,
    unit: &'static str,
    better: Better,
) {
    match r {
        Ok(f) => figs.extend(f),
        Err(e) => {
            eprintln!("[tasks] {id} failed: {e}");
            figs.push(failed(id, title, unit, better, e));
        }
    }
}

/// Remove whatever a figure left (all of it, if it failed half-way) on both daemons.
async fn after_figure(lab: &mut Lab, sides: &[Side; 2]) {
    for s in sides {
        // A figure that failed may have left a daemon stopped (a failed restart): start it again.
        let d = lab.daemon_mut(s.kind);
        if d.pid().is_none() {
            if let Err(e) = d.start().await {
                eprintln!("[tasks] {}: restart for the cleanup failed: {e}", s.name());
                continue;
            }
        }
        if let Err(e) = cleanup(lab, s).await {
            eprintln!("[tasks] {}: cleanup failed: {e}", s.name());
        }
    }
}
