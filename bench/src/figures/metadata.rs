//! Metadata figures (issue 5, item 1): containers Create / Get / Update / Delete with 1 and 8
//! concurrent clients, List with 1,000 and 10,000 containers, and the latency of one durable write.
//!
//! Containers carry a realistic ~9.5 KiB OCI spec (berth-testkit's `spec.json`: a `ctr run` spec
//! of a service, with a seccomp profile, bind mounts and resources), runtime io.containerd.runc.v2
//! and a few labels.

use super::{slot, Better, Figure, Outcome, Samples};
use crate::daemon::{order, Kind, Lab};
use crate::{Opts, Result};
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::{
    container, Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest,
    ListContainersRequest, UpdateContainerRequest,
};
use berth::api::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth::api::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, Namespace,
};
use berth::with_namespace;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use tonic::transport::Channel;

const G: &str = "metadata";
const NS: &str = "bench";
const LIST_NS: &str = "bench-list";
const SPEC_JSON: &[u8] = berth_testkit::SPEC_JSON;
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Responses of List with 10,000 ~10 KiB containers are ~100 MB: let the client take them.
const MAX_MSG: usize = 1 << 30;
const CLIENTS: usize = 8;

pub fn spec() -> prost_types::Any {
    prost_types::Any {
        type_url: SPEC_TYPE_URL.into(),
        value: SPEC_JSON.trim_ascii_end().to_vec(),
    }
}

fn containers(ch: Channel) -> ContainersClient<Channel> {
    ContainersClient::new(ch)
        .max_decoding_message_size(MAX_MSG)
        .max_encoding_message_size(MAX_MSG)
}

fn new_container(id: &str, spec: &prost_types::Any) -> Container {
    let labels: HashMap<String, String> = [
        ("app", "app-server"),
        ("tier", "backend"),
        ("team", "platform"),
        ("bench", "berth-bench"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Container {
        id: id.into(),
        labels,
        image: "registry.example.org/team/app-server:1.4.2".into(),
        runtime: Some(container::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(spec.clone()),
        snapshotter: "overlayfs".into(),
        snapshot_key: id.into(),
        ..Default::default()
    }
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Get,
    Update,
    Delete,
}

const OPS: [Op; 4] = [Op::Create, Op::Get, Op::Update, Op::Delete];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "Create",
            Op::Get => "Get",
            Op::Update => "Update",
            Op::Delete => "Delete",
        }
    }
}

/// One call of `op` on container `id`; the request is built before the clock starts.
async fn call(
    client: &mut ContainersClient<Channel>,
    op: Op,
    ns: &str,
    id: &str,
    spec: &prost_types::Any,
    round: usize,
) -> std::result::Result<Duration, tonic::Status> {
    match op {
        Op::Create => {
            let req = with_namespace(
                ns,
                CreateContainerRequest {
                    container: Some(new_container(id, spec)),
                },
            );
            let t = Instant::now();
            client.create(req).await?;
            Ok(t.elapsed())
        }
        Op::Get => {
            let req = with_namespace(ns, GetContainerRequest { id: id.into() });
            let t = Instant::now();
            client.get(req).await?;
            Ok(t.elapsed())
        }
        Op::Update => {
            // What `ctr containers label ID revision=N` sends: one label path in the mask.
            let req = with_namespace(
                ns,
                UpdateContainerRequest {
                    container: Some(Container {
                        id: id.into(),
                        labels: [("revision".to_string(), round.to_string())].into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["labels.revision".into()],
                    }),
                },
            );
            let t = Instant::now();
            client.update(req).await?;
            Ok(t.elapsed())
        }
        Op::Delete => {
            let req = with_namespace(ns, DeleteContainerRequest { id: id.into() });
            let t = Instant::now();
            client.delete(req).await?;
            Ok(t.elapsed())
        }
    }
}

/// Per phase (Create, Get, Update, Delete): every op's latency in µs, and the phase's wall time.
struct CrudRound {
    lat_us: [Vec<f64>; 4],
    wall: [Duration; 4],
}

/// One CRUD round: every client creates its `per_client` containers, then (after all are done) gets
/// each, updates each, deletes each. Phases are separated by barriers so ops/s is per phase.
async fn crud_round(
    channels: &[Channel],
    per_client: usize,
    spec: &Arc<prost_types::Any>,
    round: usize,
) -> Result<CrudRound> {
    let barrier = Arc::new(Barrier::new(channels.len() + 1));
    let mut tasks = Vec::new();
    for (ci, ch) in channels.iter().enumerate() {
        let (ch, barrier, spec) = (ch.clone(), barrier.clone(), spec.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = containers(ch);
            let ids: Vec<String> = (0..per_client)
                .map(|i| format!("r{round}-c{ci}-{i}"))
                .collect();
            let mut lat: [Vec<f64>; 4] = Default::default();
            let mut err: Option<String> = None;
            for (p, op) in OPS.into_iter().enumerate() {
                barrier.wait().await;
                if err.is_none() {
                    for id in &ids {
                        match call(&mut client, op, NS, id, &spec, round).await {
                            Ok(d) => lat[p].push(d.as_secs_f64() * 1e6),
                            Err(s) => {
                                err = Some(format!("{} {id}: {}", op.name(), s.message()));
                                break;
                            }
                        }
                    }
                }
                barrier.wait().await;
            }
            match err {
                Some(e) => Err(e),
                None => Ok(lat),
            }
        }));
    }
    let mut wall = [Duration::ZERO; 4];
    for w in wall.iter_mut() {
        barrier.wait().await;
        let t = Instant::now();
        barrier.wait().await;
        *w = t.elapsed();
    }
    let mut lat_us: [Vec<f64>; 4] = Default::default();
    for t in tasks {
        let l = t.await.map_err(|e| format!("client task: {e}"))??;
        for (all, mine) in lat_us.iter_mut().zip(l) {
            all.extend(mine);
        }
    }
    Ok(CrudRound { lat_us, wall })
}

async fn connections(lab: &Lab, kind: Kind, n: usize) -> Result<Vec<Channel>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(lab.daemon(kind).connect().await?);
    }
    Ok(v)
}

/// The group: returns its figures and how many containers are left stored (for the footprint).
pub async fn run(lab: &Lab, opts: &Opts) -> Result<(Vec<Figure>, usize)> {
    let spec = Arc::new(spec());
    let rounds = opts.rounds();
    // 8 connections per daemon; the 1-client figures use the first.
    let mut chans: [Vec<Channel>; 2] = Default::default();
    for kind in [Kind::Berth, Kind::Containerd] {
        chans[slot(kind)] = connections(lab, kind, CLIENTS).await?;
    }
    // Warm-up (connections, namespace creation, first-write paths), not measured.
    for kind in [Kind::Berth, Kind::Containerd] {
        crud_round(&chans[slot(kind)][..1], 20, &spec, 9999).await?;
    }

    let mut figs = Vec::new();
    // `--only list_small` (say) skips the rest of the group.
    let crud = ["create", "get", "update", "delete", "lifecycle"]
        .iter()
        .any(|op| opts.wants_figure(&format!("containers.{op}")));
    for clients in [1, CLIENTS] {
        if !crud {
            break;
        }
        let per_client = match (opts.quick, clients) {
            (true, 1) => 40,
            (true, _) => 10,
            (false, 1) => 250,
            (false, _) => 60,
        };
        let t0 = Instant::now();
        let mut lat: [Samples; 4] = Default::default();
        let mut rate: [Samples; 4] = Default::default();
        let mut cpu = Samples::default();
        for round in 0..rounds {
            let mut per: [Option<CrudRound>; 2] = [None, None];
            let mut cpu_round: [Vec<f64>; 2] = Default::default();
            for kind in order(round) {
                let cpu0 = lab.daemon(kind).cpu_ns();
                per[slot(kind)] = Some(
                    crud_round(&chans[slot(kind)][..clients], per_client, &spec, round).await?,
                );
                let used = lab.daemon(kind).cpu_ns().saturating_sub(cpu0);
                cpu_round[slot(kind)].push(used as f64 / 1e3 / (clients * per_client) as f64);
            }
            cpu.round_by_kind(&cpu_round);
            let [Some(b), Some(c)] = per else {
                unreachable!("both daemons ran the round")
            };
            for p in 0..4 {
                lat[p].round(&b.lat_us[p], &c.lat_us[p]);
                let ops = (clients * per_client) as f64;
                rate[p].round(
                    &[ops / b.wall[p].as_secs_f64()],
                    &[ops / c.wall[p].as_secs_f64()],
                );
            }
        }
        eprintln!(
            "[metadata] containers CRUD, {clients} client(s): {rounds} rounds x {} ops/phase in {:.1} s",
            clients * per_client,
            t0.elapsed().as_secs_f64()
        );
        let who = if clients == 1 {
            "1 client".to_string()
        } else {
            format!("{clients} clients")
        };
        for (p, op) in OPS.into_iter().enumerate() {
            let n = op.name().to_lowercase();
            figs.push(
                Figure::new(
                    G,
                    format!("containers.{n}.latency.c{clients}"),
                    format!("containers {} latency, {who}", op.name()),
                    "µs",
                    Better::Lower,
                )
                .with(lat[p].outcome()),
            );
            figs.push(
                Figure::new(
                    G,
                    format!("containers.{n}.rate.c{clients}"),
                    format!("containers {} throughput, {who}", op.name()),
                    "ops/s",
                    Better::Higher,
                )
                .with(rate[p].outcome()),
            );
        }
        figs.push(
            Figure::new(
                G,
                format!("containers.lifecycle.cpu.c{clients}"),
                format!("daemon CPU per container Create+Get+Update+Delete, {who}"),
                "µs",
                Better::Lower,
            )
            .with(cpu.outcome())
            .note("the daemon's process CPU clock (clock_getcpuclockid: all threads, also exited ones)"),
        );
    }

    if opts.wants_figure("durable") {
        figs.push(durable_write(lab, opts).await?);
    }
    let mut stored = 0;
    if opts.wants_figure("containers.list.") || opts.wants_figure("containers.list_stream") {
        let (list_figs, n) = list(lab, opts, &chans, &spec).await?;
        figs.extend(list_figs);
        stored += n;
    }
    if opts.wants_figure("containers.list_small") {
        let (small_fig, n) = list_small(opts, &chans).await?;
        figs.push(small_fig);
        stored += n;
    }
    Ok((figs, stored))
}

/// Unary List of containers whose records are small (a minimal spec, no labels): the cost of the
/// listing itself rather than of moving ~100 MB of specs.
async fn list_small(opts: &Opts, chans: &[Vec<Channel>; 2]) -> Result<(Figure, usize)> {
    const NS: &str = "bench-list-small";
    let size = if opts.quick { 1_000 } else { 10_000 };
    let spec = Arc::new(prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: br#"{"ociVersion":"1.0.2-dev"}"#.to_vec(),
    });
    for kind in [Kind::Berth, Kind::Containerd] {
        populate(&chans[slot(kind)], NS, 0, size, &spec).await?;
    }
    let mut clients = [
        containers(chans[0][0].clone()),
        containers(chans[1][0].clone()),
    ];
    let reps = if opts.quick { 6 } else { 20 };
    let mut samples = Samples::default();
    for rep in 0..reps {
        let mut per: [Vec<f64>; 2] = Default::default();
        for kind in order(rep) {
            let (d, n) = list_once(&mut clients[slot(kind)], NS, false)
                .await
                .map_err(|s| format!("{}: List: {}", kind.name(), s.message()))?;
            if n != size {
                return Err(format!(
                    "{}: List returned {n}, expected {size}",
                    kind.name()
                ));
            }
            per[slot(kind)].push(d.as_secs_f64() * 1e3);
        }
        samples.round_by_kind(&per);
    }
    let fig = Figure::new(
        G,
        format!("containers.list_small.{size}"),
        format!(
            "containers List, {} minimal containers (one call)",
            thousands(size)
        ),
        "ms",
        Better::Lower,
    );
    Ok((fig.with(samples.outcome()), size))
}

/// The latency of one durable write: sequential namespaces Create (one small record, fsynced before
/// the reply by both daemons).
async fn durable_write(lab: &Lab, opts: &Opts) -> Result<Figure> {
    let n = if opts.quick { 30 } else { 150 };
    let mut clients = [
        NamespacesClient::new(lab.daemon(Kind::Berth).connect().await?),
        NamespacesClient::new(lab.daemon(Kind::Containerd).connect().await?),
    ];
    let t0 = Instant::now();
    let mut samples = Samples::default();
    for round in 0..opts.rounds() {
        let mut per: [Vec<f64>; 2] = Default::default();
        for kind in order(round) {
            let client = &mut clients[slot(kind)];
            for i in 0..n {
                // With a namespace header, as ctr sends it (containerd needs one to publish the event).
                let req = with_namespace(
                    NS,
                    CreateNamespaceRequest {
                        namespace: Some(Namespace {
                            name: format!("dw-{round}-{i}"),
                            labels: [("bench".to_string(), "durable-write".to_string())].into(),
                        }),
                    },
                );
                let t = Instant::now();
                client
                    .create(req)
                    .await
                    .map_err(|s| format!("{}: namespaces Create: {}", kind.name(), s.message()))?;
                per[slot(kind)].push(t.elapsed().as_secs_f64() * 1e6);
            }
            // Clean up outside the clock so every round starts from the same store.
            for i in 0..n {
                let _ = client
                    .delete(with_namespace(
                        NS,
                        DeleteNamespaceRequest {
                            name: format!("dw-{round}-{i}"),
                        },
                    ))
                    .await;
            }
        }
        samples.round_by_kind(&per);
    }
    eprintln!(
        "[metadata] durable single write: {} rounds x {n} in {:.1} s",
        opts.rounds(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Figure::new(
        G,
        "durable_write.latency",
        "durable single write latency (namespaces Create, sequential)",
        "µs",
        Better::Lower,
    )
    .with(samples.outcome()))
}

/// Create containers `from..to` in the list namespace, spread over the 8 connections.
async fn populate(
    chans: &[Channel],
    ns: &'static str,
    from: usize,
    to: usize,
    spec: &Arc<prost_types::Any>,
) -> Result<()> {
    let mut tasks = Vec::new();
    for (ci, ch) in chans.iter().enumerate() {
        let (ch, spec, k) = (ch.clone(), spec.clone(), chans.len());
        tasks.push(tokio::spawn(async move {
            let mut client = containers(ch);
            for i in (from..to).filter(|i| i % k == ci) {
                call(
                    &mut client,
                    Op::Create,
                    ns,
                    &format!("list-{i:05}"),
                    &spec,
                    0,
                )
                .await
                .map_err(|s| format!("populate list-{i:05}: {}", s.message()))?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("populate task: {e}"))??;
    }
    Ok(())
}

async fn list_once(
    client: &mut ContainersClient<Channel>,
    ns: &str,
    stream: bool,
) -> std::result::Result<(Duration, usize), tonic::Status> {
    let req = with_namespace(ns, ListContainersRequest { filters: vec![] });
    let t = Instant::now();
    let n = if stream {
        let mut s = client.list_stream(req).await?.into_inner();
        let mut n = 0;
        while s.message().await?.is_some() {
            n += 1;
        }
        n
    } else {
        client.list(req).await?.into_inner().containers.len()
    };
    Ok((t.elapsed(), n))
}

/// List (unary) and ListStream (what containerd's Go client, and so ctr, calls first) with 1,000
/// and 10,000 containers in the namespace; latency of one whole call in ms.
async fn list(
    lab: &Lab,
    opts: &Opts,
    chans: &[Vec<Channel>; 2],
    spec: &Arc<prost_types::Any>,
) -> Result<(Vec<Figure>, usize)> {
    let mut figs = Vec::new();
    let mut have = 0;
    let sizes: &[usize] = if opts.quick {
        &[1_000]
    } else {
        &[1_000, 10_000]
    };
    for &size in sizes {
        let t0 = Instant::now();
        for kind in [Kind::Berth, Kind::Containerd] {
            populate(&chans[slot(kind)], LIST_NS, have, size, spec).await?;
        }
        eprintln!(
            "[metadata] populated {} containers on both daemons in {:.1} s",
            thousands(size),
            t0.elapsed().as_secs_f64()
        );
        have = size;
        rss_note(lab, &format!("after populating {}", thousands(size)));
        let reps = match (opts.quick, size) {
            (true, _) => 6,
            (false, 1_000) => 20,
            (false, _) => 8,
        };
        // Unary List of 10,000 ~10 KiB containers would be a ~100 MB message: over the 16 MiB limit
        // of both daemons (containerd's clients use ListStream), so only ListStream is measured there.
        let methods: &[bool] = if size > 1_000 {
            &[true]
        } else {
            &[false, true]
        };
        if size > 1_000 {
            figs.push(
                Figure::new(G, format!("containers.list.{size}"), format!("containers List, {} containers (one call)", thousands(size)), "ms", Better::Lower)
                    .with(Outcome::Skipped { why: "a ~100 MB unary response exceeds both daemons' 16 MiB gRPC message limit; see ListStream".into() }),
            );
        }
        for &stream in methods {
            let (method, id) = if stream {
                ("ListStream", "list_stream")
            } else {
                ("List", "list")
            };
            let mut clients = [
                containers(chans[0][0].clone()),
                containers(chans[1][0].clone()),
            ];
            let mut samples = Samples::default();
            let mut failed: Option<String> = None;
            let t0 = Instant::now();
            'reps: for rep in 0..reps {
                let mut per: [Vec<f64>; 2] = Default::default();
                for kind in order(rep) {
                    match list_once(&mut clients[slot(kind)], LIST_NS, stream).await {
                        Ok((d, n)) if n == size => per[slot(kind)].push(d.as_secs_f64() * 1e3),
                        Ok((_, n)) => {
                            failed = Some(format!(
                                "{}: {method} returned {n} containers, expected {size}",
                                kind.name()
                            ));
                            break 'reps;
                        }
                        Err(s) => {
                            failed = Some(format!(
                                "{}: {method}: {:?}: {}",
                                kind.name(),
                                s.code(),
                                s.message()
                            ));
                            break 'reps;
                        }
                    }
                }
                samples.round_by_kind(&per);
            }
            eprintln!(
                "[metadata] {method} of {size}: {reps} reps in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            let fig = Figure::new(
                G,
                format!("containers.{id}.{size}"),
                format!(
                    "containers {method}, {} containers (one call)",
                    thousands(size)
                ),
                "ms",
                Better::Lower,
            );
            figs.push(match failed {
                None => fig.with(samples.outcome()),
                Some(error) => fig.with(Outcome::Failed { error }),
            });
        }
    }
    rss_note(lab, "after the List calls");
    if opts.quick {
        figs.push(
            Figure::new(
                G,
                "containers.list_stream.10000",
                "containers ListStream, 10,000 containers (one call)",
                "ms",
                Better::Lower,
            )
            .with(Outcome::Skipped {
                why: "skipped in --quick".into(),
            }),
        );
    }
    Ok((figs, have))
}

/// 10000 -> "10,000".
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Progress line with both daemons' RSS: where metadata memory goes (stored vs listed).
fn rss_note(lab: &Lab, when: &str) {
    let rss = |k: Kind| {
        lab.daemon(k)
            .pid()
            .and_then(|p| super::footprint::memory(p).ok())
            .map(|(rss, _)| format!("{rss:.0} MiB"))
            .unwrap_or_else(|| "?".into())
    };
    eprintln!(
        "[metadata] RSS {when}: berthd {}, containerd {}",
        rss(Kind::Berth),
        rss(Kind::Containerd)
    );
}
