//! Load figures (issue 15, part 4 "Load"): berthd and containerd 1.6 under many clients at once,
//! driven by the same gRPC client code, one daemon at a time, the daemon that goes first
//! alternating from round to round.
//!
//! - `load.cycles`: 8 clients x 500 cycles each, all started together, on the lab's daemons with
//!   the busybox image imported. A cycle is what `ctr run --rm` asks of the daemon: under a lease,
//!   Snapshots.Prepare of the image's layer and Containers.Create with ctr's own spec (`/bin/true`,
//!   cgroupsPath `/<ns>/<id>`, runc options {root}); the lease deleted; Tasks.Create, Start, Wait
//!   (exit status 0), Tasks.Delete, Snapshots.Remove, Containers.Delete (the snapshot first, as
//!   containerd's client does: once the container is gone, the collector may take it first). A
//!   failed cycle is counted and its error kept (never retried, never hidden); what it left is
//!   removed before the next.
//!   Figures: cycles/s, cycle latency p50/p99, failed cycles; the daemon's RSS before, peak
//!   (sampled every 250 ms) and after, its open fds before and after. After each run, nothing of
//!   the run may be left: no shim naming the daemon's dir, no mount under it or under the temp
//!   root, no runc container, no task, container, lease or active snapshot in the namespace.
//! - `load.pull_under_create`: the Debian image (the pull group's fixture, ~111 MB) pulled from
//!   the loopback registry as the pull group pulls it (ctr 2.4.2 through berthd's Transfer
//!   service, ctr 1.6's client-side pull against containerd 1.6), each pull on a daemon started
//!   for it on a fresh root: once alone, and once while 50 clients loop over Containers.Create and
//!   Delete of records with a spec (no tasks). Before that pull, on the same daemon, the 50
//!   clients make a fixed number of creates alone: the Create latency without a pull. The pulled
//!   image must be unpacked (Snapshots.Stat of its chain id) and no create may fail.
//!
//! `--quick`: 2 clients x 20 cycles, and 10 creating clients beside a pull of the 12-layer image
//! (~3.6 MB) instead of the Debian one, so the smoke run stays under a minute.

use super::pull::{finish_ctr, spawn_ctr, sync_disks, NS as PULL_NS};
use super::tasks::{self, Side, RUNTIME, SNAPSHOTTER};
use super::{rpc_error, slot, Better, Figure, Outcome, Samples};
use crate::daemon::{self, order, Daemon, Kind, Lab};
use crate::fixtures::{self, Image, Registry};
use crate::stats::summarize;
use crate::{Opts, Result};
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::{
    container, Container, CreateContainerRequest, DeleteContainerRequest, ListContainersRequest,
};
use berth::api::services::leases::v1::leases_client::LeasesClient;
use berth::api::services::leases::v1::{
    DeleteRequest as DeleteLeaseRequest, ListRequest as ListLeasesRequest,
};
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::{
    Kind as SnapshotKind, RemoveSnapshotRequest, StatSnapshotRequest,
};
use berth::api::services::tasks::v1::tasks_client::TasksClient;
use berth::api::services::tasks::v1::{
    CreateTaskRequest, DeleteTaskRequest, ListTasksRequest, StartRequest, WaitRequest,
};
use berth::with_namespace;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use tonic::transport::Channel;

const G: &str = "load";
/// A cycle that takes longer than this is a hang: counted as failed.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the daemon's RSS is read during a run.
const RSS_EVERY: Duration = Duration::from_millis(250);
/// Cycle ids start with this (the leftover check looks for leases named so).
const CYCLE_PREFIX: &str = "ld";

/// One round's samples, `[berth, containerd]`.
type PerKind = [Vec<f64>; 2];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 and p99 of samples (NaN when empty).
fn p50_p99(v: &[f64]) -> (f64, f64) {
    let s = summarize(v);
    (s.median, s.p99)
}

/// VmRSS of `pid` in MiB.
fn vm_rss(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

/// Open file descriptors of `pid`.
fn fd_count(pid: u32) -> Option<f64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64)
}

/// Reads a process's RSS every [`RSS_EVERY`] until stopped: the peak (MiB) and the reading count.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<(f64, usize)>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let (mut peak, mut n) = (0.0f64, 0usize);
            loop {
                if let Some(r) = vm_rss(pid) {
                    peak = peak.max(r);
                    n += 1;
                }
                if flag.load(Ordering::Relaxed) {
                    return (peak, n);
                }
                tokio::time::sleep(RSS_EVERY).await;
            }
        });
        RssSampler { stop, handle }
    }

    async fn finish(self) -> (f64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap_or((f64::NAN, 0))
    }
}

/// Errors of failed operations, grouped by message (ids stripped) with a count and a first id.
#[derive(Default)]
struct Failures {
    n: usize,
    kinds: Vec<(String, usize, String)>,
}

impl Failures {
    fn add(&mut self, id: &str, error: &str) {
        self.n += 1;
        // The same failure on another container is the same failure: group by the text without
        // the id.
        let key = error.replace(id, "<id>");
        match self.kinds.iter_mut().find(|(k, _, _)| *k == key) {
            Some(k) => k.1 += 1,
            None => self.kinds.push((key, 1, id.to_string())),
        }
    }

    fn merge(&mut self, other: Failures) {
        self.n += other.n;
        for (k, c, id) in other.kinds {
            match self.kinds.iter_mut().find(|(m, _, _)| *m == k) {
                Some(m) => m.1 += c,
                None => self.kinds.push((k, c, id)),
            }
        }
    }

    fn describe(&self) -> String {
        self.kinds
            .iter()
            .map(|(k, c, id)| format!("{c} x [{k}] (first: {id})"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

// ---------------------------------------------------------------------------------------------
// load.cycles

/// One create/start/delete cycle of container `id` (see the module doc).
async fn cycle(ch: &Channel, s: &Side, spec: &Value, chain_id: &str, id: &str) -> Result<()> {
    let ns = s.ns.as_str();
    let mounts =
        tasks::create_container_as_ctr(ch, s, spec, chain_id, id, &format!("{id}-lease")).await?;
    let mut tasks = TasksClient::new(ch.clone());
    tasks
        .create(with_namespace(
            ns,
            CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                ..Default::default()
            },
        ))
        .await
        .map_err(rpc_error(s.kind, "Tasks.Create"))?;
    tasks
        .start(with_namespace(
            ns,
            StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            },
        ))
        .await
        .map_err(rpc_error(s.kind, "Tasks.Start"))?;
    let status = tasks
        .wait(with_namespace(
            ns,
            WaitRequest {
                container_id: id.into(),
                exec_id: String::new(),
            },
        ))
        .await
        .map_err(rpc_error(s.kind, "Tasks.Wait"))?
        .into_inner()
        .exit_status;
    if status != 0 {
        return Err(format!(
            "{}: /bin/true in {id} exited with status {status}",
            s.name()
        ));
    }
    tasks
        .delete(with_namespace(
            ns,
            DeleteTaskRequest {
                container_id: id.into(),
            },
        ))
        .await
        .map_err(rpc_error(s.kind, "Tasks.Delete"))?;
    // The snapshot before the container, as containerd's client deletes with snapshot cleanup:
    // once neither a lease nor a container holds it, either daemon's collector may take it first.
    SnapshotsClient::new(ch.clone())
        .remove(with_namespace(
            ns,
            RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            },
        ))
        .await
        .map_err(rpc_error(s.kind, "Snapshots.Remove"))?;
    ContainersClient::new(ch.clone())
        .delete(with_namespace(ns, DeleteContainerRequest { id: id.into() }))
        .await
        .map_err(rpc_error(s.kind, "Containers.Delete"))?;
    Ok(())
}

/// After a failed cycle: whatever of it exists goes (task, container, snapshot, lease).
async fn scrub(ch: &Channel, s: &Side, id: &str) -> Result<()> {
    tasks::remove_container(ch, s, id).await?;
    let _ = SnapshotsClient::new(ch.clone())
        .remove(with_namespace(
            &s.ns,
            RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            },
        ))
        .await;
    let _ = LeasesClient::new(ch.clone())
        .delete(with_namespace(
            &s.ns,
            DeleteLeaseRequest {
                id: format!("{id}-lease"),
                sync: false,
            },
        ))
        .await;
    Ok(())
}

/// What one run of `clients` x `per` cycles on one daemon showed.
struct CycleRun {
    per_s: f64,
    /// Latency of each successful cycle (ms).
    latency: Vec<f64>,
    failures: Failures,
    rss_before: f64,
    rss_peak: f64,
    rss_after: f64,
    rss_readings: usize,
    fds_before: f64,
    fds_after: f64,
    /// What the leftover check found (empty: nothing).
    leftovers: Vec<String>,
}

/// `clients` loops of `per` cycles each, started together, on one daemon; then the leftover check.
async fn cycle_run(
    lab: &Lab,
    s: &Side,
    spec: &Value,
    chain_id: &str,
    tag: &str,
    clients: usize,
    per: usize,
) -> Result<CycleRun> {
    let d = lab.daemon(s.kind);
    let pid = d
        .pid()
        .ok_or_else(|| format!("{} is not running", s.name()))?;
    // Before the clients connect, as "after" is read once they have gone.
    let (rss_before, fds_before) = (
        vm_rss(pid).unwrap_or(f64::NAN),
        fd_count(pid).unwrap_or(f64::NAN),
    );
    let mut chans = Vec::with_capacity(clients);
    for _ in 0..clients {
        chans.push(d.connect().await?);
    }
    let sampler = RssSampler::start(pid);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let spec = Arc::new(spec.clone());
    let mut handles = Vec::new();
    for (c, ch) in chans.iter().enumerate() {
        let (ch, s, spec, barrier) = (ch.clone(), s.clone(), spec.clone(), barrier.clone());
        let (chain_id, tag) = (chain_id.to_string(), tag.to_string());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            let mut failures = Failures::default();
            barrier.wait().await;
            for i in 0..per {
                let id = format!("{CYCLE_PREFIX}{tag}-{c}-{i}");
                let t = Instant::now();
                let r = tokio::time::timeout(CYCLE_TIMEOUT, cycle(&ch, &s, &spec, &chain_id, &id))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "{}: cycle {id} did not finish in {} s",
                            s.name(),
                            CYCLE_TIMEOUT.as_secs()
                        ))
                    });
                match r {
                    Ok(()) => lat.push(ms(t.elapsed())),
                    Err(e) => {
                        eprintln!("[load] cycle {id} FAILED: {e}");
                        failures.add(&id, &e);
                        if let Err(e) = scrub(&ch, &s, &id).await {
                            eprintln!("[load] removing what cycle {id} left failed: {e}");
                        }
                    }
                }
            }
            (lat, failures)
        }));
    }
    barrier.wait().await;
    let t = Instant::now();
    let mut latency = Vec::with_capacity(clients * per);
    let mut failures = Failures::default();
    for h in handles {
        let (lat, f) = h.await.map_err(|e| format!("client task: {e}"))?;
        latency.extend(lat);
        failures.merge(f);
    }
    let dt = t.elapsed();
    let (rss_peak, rss_readings) = sampler.finish().await;
    drop(chans);
    let leftovers = leftovers(lab, s).await;
    // Settled: the shims are gone (the check waited for them) and the clients' connections closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_after, fds_after) = (
        vm_rss(pid).unwrap_or(f64::NAN),
        fd_count(pid).unwrap_or(f64::NAN),
    );
    Ok(CycleRun {
        per_s: latency.len() as f64 / dt.as_secs_f64(),
        latency,
        failures,
        rss_before,
        rss_peak: rss_peak.max(rss_before).max(rss_after),
        rss_after,
        rss_readings,
        fds_before,
        fds_after,
        leftovers,
    })
}

/// What is left of a cycle run of side `s` on the host and in its namespace (empty: nothing).
async fn leftovers(lab: &Lab, s: &Side) -> Vec<String> {
    let mut left = Vec::new();
    // The shims exit on their own shortly after their task's Delete.
    if let Err(e) = tasks::wait_no_shims(s).await {
        left.push(e);
    }
    let mounts = daemon::mounts_under(&s.dir);
    if !mounts.is_empty() {
        left.push(format!(
            "{} mount(s) under {}: {}",
            mounts.len(),
            s.dir.display(),
            mounts
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // runc containers, shims/runc naming the temp root, processes in the namespace's cgroups,
    // mounts anywhere under the temp root.
    let swept = daemon::sweep(lab.root(), false);
    if !swept.is_empty() {
        left.push(format!("under the temp root: {}", swept.describe()));
    }
    let ch = match lab.daemon(s.kind).connect().await {
        Ok(ch) => ch,
        Err(e) => {
            left.push(format!("cannot ask the daemon: {e}"));
            return left;
        }
    };
    let ns = s.ns.as_str();
    match TasksClient::new(ch.clone())
        .list(with_namespace(ns, ListTasksRequest::default()))
        .await
    {
        Ok(r) if r.get_ref().tasks.is_empty() => {}
        Ok(r) => left.push(format!("{} task(s) in {ns}", r.get_ref().tasks.len())),
        Err(e) => left.push(rpc_error(s.kind, "Tasks.List")(e)),
    }
    match ContainersClient::new(ch.clone())
        .list(with_namespace(ns, ListContainersRequest::default()))
        .await
    {
        Ok(r) if r.get_ref().containers.is_empty() => {}
        Ok(r) => left.push(format!(
            "{} container(s) in {ns}",
            r.get_ref().containers.len()
        )),
        Err(e) => left.push(rpc_error(s.kind, "Containers.List")(e)),
    }
    match super::snapshot_names(ch.clone(), ns, SnapshotKind::Active).await {
        Ok(v) if v.is_empty() => {}
        Ok(v) => left.push(format!(
            "{} active snapshot(s) in {ns}: {}",
            v.len(),
            v.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        )),
        Err(e) => left.push(rpc_error(s.kind, "Snapshots.List")(e)),
    }
    match LeasesClient::new(ch)
        .list(with_namespace(ns, ListLeasesRequest::default()))
        .await
    {
        Ok(r) => {
            let ours: Vec<String> = r
                .into_inner()
                .leases
                .into_iter()
                .map(|l| l.id)
                .filter(|id| id.starts_with(CYCLE_PREFIX))
                .collect();
            if !ours.is_empty() {
                left.push(format!("{} lease(s) of cycles in {ns}", ours.len()));
            }
        }
        Err(e) => left.push(rpc_error(s.kind, "Leases.List")(e)),
    }
    left
}

async fn cycles(
    lab: &Lab,
    opts: &Opts,
    sides: &[Side; 2],
    specs: &[Value; 2],
    chain_id: &str,
) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let (clients, per) = if opts.quick { (2, 20) } else { (8, 500) };
    let rounds = opts.rounds();
    // Warm-up, not measured: the page cache of runc, the shims and the image's layer.
    for s in sides {
        let ch = lab.daemon(s.kind).connect().await?;
        for i in 0..2 {
            let id = format!("{CYCLE_PREFIX}warm-{i}");
            cycle(&ch, s, &specs[slot(s.kind)], chain_id, &id).await?;
        }
    }
    let mut rate = Samples::default();
    let (mut p50, mut p99, mut failed) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut rss_before, mut rss_peak, mut rss_after) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut fds_before, mut fds_after) = (Samples::default(), Samples::default());
    let mut failures: [Failures; 2] = Default::default();
    let mut left: Vec<String> = Vec::new();
    let mut readings = 0;
    for round in 0..rounds {
        let mut r: [PerKind; 9] = Default::default();
        for kind in order(round) {
            let s = &sides[slot(kind)];
            let run = cycle_run(
                lab,
                s,
                &specs[slot(kind)],
                chain_id,
                &format!("r{round}"),
                clients,
                per,
            )
            .await?;
            let (a, b) = p50_p99(&run.latency);
            eprintln!(
                "[load] {} x {per} cycles on {}: {:.1} cycles/s, p50 {a:.1} ms, p99 {b:.1} ms, {} failed; RSS {:.1} -> peak {:.1} -> {:.1} MiB, fds {} -> {}{}",
                clients,
                s.name(),
                run.per_s,
                run.failures.n,
                run.rss_before,
                run.rss_peak,
                run.rss_after,
                run.fds_before,
                run.fds_after,
                if run.leftovers.is_empty() {
                    "; nothing left".to_string()
                } else {
                    format!("; LEFT: {}", run.leftovers.join("; "))
                }
            );
            let k = slot(kind);
            for (i, v) in [
                run.per_s,
                a,
                b,
                run.failures.n as f64,
                run.rss_before,
                run.rss_peak,
                run.rss_after,
                run.fds_before,
                run.fds_after,
            ]
            .into_iter()
            .enumerate()
            {
                r[i][k].push(v);
            }
            readings += run.rss_readings;
            left.extend(
                run.leftovers
                    .iter()
                    .map(|l| format!("{} round {round}: {l}", s.name())),
            );
            failures[k].merge(run.failures);
            // Whatever the check found goes before the other daemon's run.
            if !run.leftovers.is_empty() {
                if let Err(e) = tasks::cleanup(lab, s).await {
                    eprintln!("[load] {}: cleanup failed: {e}", s.name());
                }
            }
        }
        for (samples, per_kind) in [
            &mut rate,
            &mut p50,
            &mut p99,
            &mut failed,
            &mut rss_before,
            &mut rss_peak,
            &mut rss_after,
            &mut fds_before,
            &mut fds_after,
        ]
        .into_iter()
        .zip(&r)
        {
            samples.round_by_kind(per_kind);
        }
    }
    eprintln!(
        "[load] cycles: {rounds} rounds in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let n = clients * per;
    let how = format!(
        "{clients} clients (one connection each) x {per} cycles, started together, one daemon at a time, each first in every other round; a cycle: under a lease Snapshots.Prepare of the busybox layer and Containers.Create with ctr's spec (/bin/true) and runc options {{root}}, Leases.Delete, Tasks.Create, Start, Wait (exit 0), Tasks.Delete, Snapshots.Remove, Containers.Delete; 2 warm-up cycles per daemon; {rounds} round(s)"
    );
    let fig = |id: &str, title: String, unit: &'static str, better: Better, s: &Samples| {
        Figure::new(G, id, title, unit, better).with(s.outcome())
    };
    let mut figs = vec![
        fig(
            "load.cycles",
            format!("{clients} clients x {per} create/start/delete cycles (gRPC), throughput"),
            "cycles/s",
            Better::Higher,
            &rate,
        )
        .note(format!(
            "{how}; cycles/s = successful cycles of the run ({n} asked) / wall time until the last client is done"
        )),
        fig(
            "load.cycles.p50",
            format!("{clients} clients x {per} cycles: cycle latency p50"),
            "ms",
            Better::Lower,
            &p50,
        )
        .note("median over the run's successful cycles, one value per daemon per round"),
        fig(
            "load.cycles.p99",
            format!("{clients} clients x {per} cycles: cycle latency p99"),
            "ms",
            Better::Lower,
            &p99,
        ),
        fig(
            "load.cycles.failed",
            format!("{clients} clients x {per} cycles: failed cycles"),
            "cycles",
            Better::Lower,
            &failed,
        )
        .note(if failures[0].n + failures[1].n == 0 {
            "none failed on either daemon".to_string()
        } else {
            format!(
                "berthd: {} ({}); containerd: {} ({})",
                failures[0].n,
                failures[0].describe(),
                failures[1].n,
                failures[1].describe()
            )
        }),
        fig(
            "load.cycles.rss_before",
            "daemon RSS before the cycles".into(),
            "MiB",
            Better::Lower,
            &rss_before,
        ),
        fig(
            "load.cycles.rss_peak",
            format!("daemon RSS peak during {clients} x {per} cycles"),
            "MiB",
            Better::Lower,
            &rss_peak,
        )
        .note(format!(
            "VmRSS read every {} ms during each run ({readings} readings in all)",
            RSS_EVERY.as_millis()
        )),
        fig(
            "load.cycles.rss_after",
            "daemon RSS after the cycles".into(),
            "MiB",
            Better::Lower,
            &rss_after,
        )
        .note("0.5 s after the leftover check, the clients' connections closed"),
        fig(
            "load.cycles.fds_before",
            "daemon open fds before the cycles".into(),
            "fds",
            Better::Lower,
            &fds_before,
        ),
        fig(
            "load.cycles.fds_after",
            "daemon open fds after the cycles".into(),
            "fds",
            Better::Lower,
            &fds_after,
        ),
    ];
    figs.extend(failure_figs(
        &failures,
        "load.cycles.errors",
        "failed cycles on",
        |f| format!("{} of {} cycles failed: {}", f.n, n * rounds, f.describe()),
    ));
    if left.is_empty() {
        eprintln!("[load] after every run: no shim, mount, runc container, task, container, lease or active snapshot left");
    } else {
        figs.push(failed_fig(
            "load.cycles.leftovers",
            "left on the host or in the namespace after the cycles",
            left.join("; "),
        ));
    }
    Ok(figs)
}

// ---------------------------------------------------------------------------------------------
// load.pull_under_create

/// The chain id of an image's top layer (the committed snapshot an unpack leaves).
fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        let h = Sha256::digest(format!("{chain} {d}").as_bytes());
        chain = format!("sha256:{}", hex::encode(h));
    }
    Some(chain)
}

/// One create (timed) and delete by a creating client.
struct Create {
    /// Start and end, from the run's epoch.
    start: Duration,
    end: Duration,
}

/// `chans.len()` clients, each looping over Containers.Create (timed) and Delete of a record with
/// `spec`, `limit` times or until `stop` is set.
async fn creators(
    chans: &[Channel],
    kind: Kind,
    spec: Arc<prost_types::Any>,
    tag: &str,
    limit: Option<usize>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> Result<(Vec<Create>, Failures)> {
    let mut handles = Vec::new();
    for (c, ch) in chans.iter().enumerate() {
        let (ch, spec, stop, tag) = (ch.clone(), spec.clone(), stop.clone(), tag.to_string());
        handles.push(tokio::spawn(async move {
            let mut client = ContainersClient::new(ch);
            let mut done = Vec::new();
            let mut failures = Failures::default();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| i < l) {
                let id = format!("{tag}-{c}-{i}");
                i += 1;
                let start = epoch.elapsed();
                let r = client
                    .create(with_namespace(
                        PULL_NS,
                        CreateContainerRequest {
                            container: Some(Container {
                                id: id.clone(),
                                image: "docker.io/bench/none:v1".into(),
                                runtime: Some(container::Runtime {
                                    name: RUNTIME.into(),
                                    options: None,
                                }),
                                spec: Some((*spec).clone()),
                                ..Default::default()
                            }),
                        },
                    ))
                    .await;
                let end = epoch.elapsed();
                if let Err(e) = r {
                    let e = rpc_error(kind, "Containers.Create")(e);
                    eprintln!("[load] create {id} FAILED: {e}");
                    failures.add(&id, &e);
                    continue;
                }
                done.push(Create { start, end });
                if let Err(e) = client
                    .delete(with_namespace(
                        PULL_NS,
                        DeleteContainerRequest { id: id.clone() },
                    ))
                    .await
                {
                    let e = rpc_error(kind, "Containers.Delete")(e);
                    eprintln!("[load] delete {id} FAILED: {e}");
                    failures.add(&id, &e);
                }
            }
            (done, failures)
        }));
    }
    let mut all = Vec::new();
    let mut failures = Failures::default();
    for h in handles {
        let (d, f) = h.await.map_err(|e| format!("creating client: {e}"))?;
        all.extend(d);
        failures.merge(f);
    }
    Ok((all, failures))
}

/// The pull half: fresh daemons, the registry and the image.
struct PullLab<'a> {
    opts: &'a Opts,
    berthd: PathBuf,
    base: PathBuf,
    reference: String,
    chain_id: String,
    next: usize,
}

/// One sample of each kind of pull on one daemon kind.
struct PullSample {
    alone_s: f64,
    loaded_s: f64,
    create_alone: Vec<f64>,
    create_loaded: Vec<f64>,
    failures: Failures,
}

impl PullLab<'_> {
    async fn fresh(&mut self, kind: Kind) -> Result<Daemon> {
        self.next += 1;
        let dir = self.base.join(format!(
            "{}{}",
            if kind == Kind::Berth { "b" } else { "c" },
            self.next
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut d = match kind {
            Kind::Berth => Daemon::berthd(&self.berthd, &dir)?,
            Kind::Containerd | Kind::Containerd2 => {
                Daemon::containerd(&self.opts.containerd, &dir)?
            }
        };
        d.start().await?;
        Ok(d)
    }

    /// The pull, timed; then (outside the clock) its top layer's snapshot must exist.
    async fn pull(&self, d: &Daemon) -> Result<f64> {
        let ctr = match d.kind {
            Kind::Berth => self.opts.ctr2.clone(),
            Kind::Containerd | Kind::Containerd2 => PathBuf::from("ctr"),
        };
        let args = ["images", "pull", "--plain-http", self.reference.as_str()];
        sync_disks();
        let t = Instant::now();
        finish_ctr(spawn_ctr(&ctr, d, &args)?, d, &args).await?;
        let dt = t.elapsed().as_secs_f64();
        let ch = d.connect().await?;
        SnapshotsClient::new(ch)
            .stat(with_namespace(
                PULL_NS,
                StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: self.chain_id.clone(),
                },
            ))
            .await
            .map_err(|e| {
                format!(
                    "{}: the pull returned but its image is not unpacked: Snapshots.Stat of the chain id {}: {:?}: {}",
                    d.kind.name(),
                    self.chain_id,
                    e.code(),
                    e.message()
                )
            })?;
        Ok(dt)
    }

    async fn sample(&mut self, kind: Kind, clients: usize, alone_per: usize) -> Result<PullSample> {
        // Alone.
        let mut d = self.fresh(kind).await?;
        let alone = self.pull(&d).await;
        d.stop();
        let alone_s = alone?;
        // Under 50 creating clients, on another fresh daemon.
        let mut d = self.fresh(kind).await?;
        let r = self.loaded(&d, clients, alone_per).await;
        d.stop();
        let (loaded_s, create_alone, create_loaded, failures) = r?;
        Ok(PullSample {
            alone_s,
            loaded_s,
            create_alone,
            create_loaded,
            failures,
        })
    }

    /// On one daemon: `clients` x `alone_per` creates alone, then the pull with the clients
    /// creating until it is done. Pull seconds, create latencies alone and during the pull.
    async fn loaded(
        &self,
        d: &Daemon,
        clients: usize,
        alone_per: usize,
    ) -> Result<(f64, Vec<f64>, Vec<f64>, Failures)> {
        let mut chans = Vec::with_capacity(clients);
        for _ in 0..clients {
            chans.push(d.connect().await?);
        }
        let spec = Arc::new(super::metadata::spec());
        let epoch = Instant::now();
        let never = Arc::new(AtomicBool::new(false));
        let (alone, mut failures) = creators(
            &chans,
            d.kind,
            spec.clone(),
            "alone",
            Some(alone_per),
            never,
            epoch,
        )
        .await?;
        let create_alone = alone.iter().map(|c| ms(c.end - c.start)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let creating = {
            let (chans, spec, stop, kind) = (chans.clone(), spec.clone(), stop.clone(), d.kind);
            tokio::spawn(
                async move { creators(&chans, kind, spec, "busy", None, stop, epoch).await },
            )
        };
        // Let every client get going before the pull starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let from = epoch.elapsed();
        let pulled = self.pull(d).await;
        let to = epoch.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (busy, f) = creating
            .await
            .map_err(|e| format!("creating clients: {e}"))??;
        failures.merge(f);
        let loaded_s = pulled?;
        // Only the creates wholly inside the pull's window.
        let create_loaded: Vec<f64> = busy
            .iter()
            .filter(|c| c.start >= from && c.end <= to)
            .map(|c| ms(c.end - c.start))
            .collect();
        if create_loaded.is_empty() {
            return Err(format!(
                "{}: no create finished during the pull",
                d.kind.name()
            ));
        }
        Ok((loaded_s, create_alone, create_loaded, failures))
    }
}

async fn pull_under_create(lab: &Lab, opts: &Opts, berthd: &Path) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    if !opts.ctr2.exists() {
        return Err(format!(
            "{} not found: run scripts/deps-go-tools.sh or pass --ctr2",
            opts.ctr2.display()
        ));
    }
    let (clients, alone_per) = if opts.quick { (10, 10) } else { (50, 20) };
    let img: Image = tokio::task::block_in_place(|| {
        if opts.quick {
            fixtures::layers12()
        } else {
            fixtures::debian()
        }
    })?;
    eprintln!("[load] {}", img.describe());
    let base = lab.root().join("load");
    let mut registry = Registry::start(&base.join("registry"))?;
    let reference =
        tokio::task::block_in_place(|| registry.push(&img, &format!("bench/load-{}", img.short)))?;
    let mut pl = PullLab {
        opts,
        berthd: berthd.to_path_buf(),
        base: base.clone(),
        reference,
        chain_id: chain_id(&img.diff_ids).ok_or("the image has no diff_ids")?,
        next: 0,
    };
    let mut samples: [Samples; 6] = Default::default();
    let mut failures: [Failures; 2] = Default::default();
    let mut counts = [0usize; 2];
    let result = async {
        for round in 0..opts.rounds() {
            let mut r: [PerKind; 6] = Default::default();
            for kind in order(round) {
                let s = pl.sample(kind, clients, alone_per).await?;
                let (a50, a99) = p50_p99(&s.create_alone);
                let (l50, l99) = p50_p99(&s.create_loaded);
                eprintln!(
                    "[load] {}: pull alone {:.2} s, beside {clients} creating clients {:.2} s; Create p50/p99 alone {a50:.2}/{a99:.2} ms, during the pull {l50:.2}/{l99:.2} ms ({} creates); {} failed",
                    kind.name(),
                    s.alone_s,
                    s.loaded_s,
                    s.create_loaded.len(),
                    s.failures.n
                );
                let k = slot(kind);
                for (i, v) in [s.alone_s, s.loaded_s, a50, a99, l50, l99]
                    .into_iter()
                    .enumerate()
                {
                    r[i][k].push(v);
                }
                counts[k] += s.create_loaded.len();
                failures[k].merge(s.failures);
            }
            for (samples, per_kind) in samples.iter_mut().zip(&r) {
                samples.round_by_kind(per_kind);
            }
        }
        Ok::<_, String>(())
    }
    .await;
    registry.stop();
    // The unpacked images go in the background (see the pull group).
    daemon::remove_in_background(&base);
    result?;
    eprintln!(
        "[load] pull under create: {} rounds in {:.1} s",
        opts.rounds(),
        t0.elapsed().as_secs_f64()
    );
    let title = format!(
        "{} image (~{:.0} MB, {} layers)",
        img.short,
        img.compressed_size() as f64 / 1e6,
        img.layers.len()
    );
    let how = format!(
        "{title} from the loopback registry, `ctr images pull --plain-http` (ctr 2.4.2 through berthd's Transfer; ctr 1.6's client-side pull against containerd 1.6), each pull on a daemon started for it on a fresh root, unpacked (Snapshots.Stat of the chain id after each); under load: {clients} clients (one connection each) looping Containers.Create + Delete of records with the testkit's ~9.5 KiB spec (no tasks) in the pull's namespace, from 0.3 s before the pull until it is done"
    );
    let [pull_alone, pull_loaded, a50, a99, l50, l99] = samples;
    let fig = |id: &str, title: String, unit: &'static str, s: Samples| {
        Figure::new(G, id, title, unit, Better::Lower).with(s.outcome())
    };
    let mut figs = vec![
        fig(
            "load.pull_under_create.pull_alone",
            format!("pull alone, {title}"),
            "s",
            pull_alone,
        )
        .note(how.clone()),
        fig(
            "load.pull_under_create.pull_loaded",
            format!("pull beside {clients} clients creating containers, {title}"),
            "s",
            pull_loaded,
        )
        .note(how),
        fig(
            "load.pull_under_create.create_alone.p50",
            format!("Containers.Create p50, {clients} clients, no pull"),
            "ms",
            a50,
        )
        .note(format!(
            "{clients} clients x {alone_per} Create + Delete on the daemon of the loaded pull, just before it; one p50 per daemon per round"
        )),
        fig(
            "load.pull_under_create.create_alone.p99",
            format!("Containers.Create p99, {clients} clients, no pull"),
            "ms",
            a99,
        ),
        fig(
            "load.pull_under_create.create_loaded.p50",
            format!("Containers.Create p50, {clients} clients, during the pull"),
            "ms",
            l50,
        )
        .note(format!(
            "the creates that started and ended within the pull: {} on berthd, {} on containerd in all rounds",
            counts[0], counts[1]
        )),
        fig(
            "load.pull_under_create.create_loaded.p99",
            format!("Containers.Create p99, {clients} clients, during the pull"),
            "ms",
            l99,
        ),
    ];
    figs.extend(failure_figs(
        &failures,
        "load.pull_under_create.errors",
        "failed creates/deletes beside the pull on",
        |f| format!("{} failed: {}", f.n, f.describe()),
    ));
    Ok(figs)
}

// ---------------------------------------------------------------------------------------------

/// A failed row per daemon (berthd's failures first, then containerd's) that had any:
/// `<id>.<daemon>`, titled `<title> <daemon>`.
fn failure_figs(
    failures: &[Failures],
    id: &str,
    title: &str,
    detail: impl Fn(&Failures) -> String,
) -> Vec<Figure> {
    failures
        .iter()
        .zip(["berthd", "containerd"])
        .filter(|(f, _)| f.n > 0)
        .map(|(f, name)| {
            failed_fig(
                &format!("{id}.{name}"),
                &format!("{title} {name}"),
                detail(f),
            )
        })
        .collect()
}

fn failed_fig(id: &str, title: &str, error: String) -> Figure {
    Figure::new(G, id, title, "", Better::Lower).with(Outcome::Failed { error })
}

fn push(figs: &mut Vec<Figure>, r: Result<Vec<Figure>>, id: &str, title: &str) {
    match r {
        Ok(f) => figs.extend(f),
        Err(e) => {
            eprintln!("[load] {id} failed: {e}");
            figs.push(failed_fig(id, title, e));
        }
    }
}

pub async fn run(lab: &Lab, opts: &Opts, berthd: &Path) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let mut figs = Vec::new();
    if opts.wants_figure("load.cycles") {
        let img = fixtures::busybox(&lab.root().join("fixtures"))?;
        let sides = [
            Side::named(lab, Kind::Berth, G)?,
            Side::named(lab, Kind::Containerd, G)?,
        ];
        let chain = img
            .diff_ids
            .first()
            .ok_or("the busybox image has no diff_id")?
            .clone();
        let mut specs: Vec<Value> = Vec::new();
        for s in &sides {
            tasks::ctr(
                s,
                &tasks::args(&["images", "import", &img.archive.to_string_lossy()]),
            )
            .await?;
            let mut spec = tasks::ctr_spec(lab, s).await?;
            spec["process"]["args"] = serde_json::json!(["/bin/true"]);
            specs.push(spec);
        }
        let specs: [Value; 2] = specs
            .try_into()
            .map_err(|_| "expected one spec per daemon".to_string())?;
        let r = cycles(lab, opts, &sides, &specs, &chain).await;
        push(
            &mut figs,
            r,
            "load.cycles",
            "create/start/delete cycles under load",
        );
        for s in &sides {
            if let Err(e) = tasks::cleanup(lab, s).await {
                eprintln!("[load] {}: cleanup failed: {e}", s.name());
            }
        }
    }
    if opts.wants_figure("load.pull_under_create") {
        let r = pull_under_create(lab, opts, berthd).await;
        push(
            &mut figs,
            r,
            "load.pull_under_create",
            "pull while clients create containers",
        );
    }
    let left = daemon::sweep(lab.root(), false);
    if !left.is_empty() {
        let what = left.describe();
        eprintln!("[load] LEFT after the group (now killed): {what}");
        daemon::sweep(lab.root(), true);
        figs.push(failed_fig(
            "load.cleanup",
            "cleanup after the load figures",
            format!("left after the daemons' cleanup: {what}"),
        ));
    }
    eprintln!("[load] group done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(figs)
}
