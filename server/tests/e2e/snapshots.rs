//! Snapshot durability end to end: clients prepare, commit, view, label and remove snapshots under
//! a lease while berthd is killed with SIGKILL; after a restart every acknowledged change is there
//! and nothing else is, on the API and on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::CreateRequest as CreateLeaseRequest;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use containerd_client::with_namespace;
use prost_types::FieldMask;

use crate::harness::Daemon;

const NS: &str = "snap-durable";
const LEASE: &str = "hold";
const SNAPSHOTTER: &str = "overlayfs";
const WRITERS: usize = 4;
/// Acknowledged changes before the kill: enough to mean something, four per writer on average.
const ACKED_BEFORE_KILL: usize = 4 * WRITERS;

fn req<T>(msg: T) -> Request<T> {
    let mut r = with_namespace!(msg, NS);
    r.metadata_mut()
        .insert("containerd-lease", LEASE.parse().expect("ascii lease"));
    r
}

fn prepare_req(key: &str, parent: &str) -> Request<PrepareSnapshotRequest> {
    req(PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
}

/// What a key should be after the restart.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Exists {
        kind: Kind,
        parent: String,
        labels: BTreeMap<String, String>,
    },
    Gone,
}

/// The acknowledged outcome of every key, and the keys whose last call got no answer (their
/// outcome is either).
struct Ledger {
    want: BTreeMap<String, Want>,
    unsure: Vec<String>,
    acked: usize,
    /// The count of acknowledged changes, for the test to kill the daemon on a threshold.
    acks: tokio::sync::watch::Sender<usize>,
}

fn exists(kind: Kind, parent: &str, labels: &[(&str, &str)]) -> Want {
    Want::Exists {
        kind,
        parent: parent.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// One writer: a chain of committed layers, with a view, a label update and a removed scratch
/// snapshot along the way. Stops at the first failed call (the daemon is gone).
async fn writer(mut sn: SnapshotsClient<Channel>, w: usize, ledger: Arc<Mutex<Ledger>>) {
    let mut parent = String::new();
    for i in 0.. {
        let (key, name) = (format!("w{w}-{i}-a"), format!("w{w}-{i}"));
        let step = |keys: &[&str], done: Vec<(String, Want)>| {
            let mut l = ledger.lock().expect("ledger");
            match done.is_empty() {
                true => l.unsure.extend(keys.iter().map(|k| k.to_string())),
                false => {
                    l.acked += 1;
                    l.want.extend(done);
                    l.acks.send_replace(l.acked);
                }
            }
        };
        let labels: HashMap<String, String> = [("n".to_string(), i.to_string())].into();
        if sn.prepare(prepare_req(&key, &parent)).await.is_err() {
            return step(&[&key], vec![]);
        }
        step(&[], vec![(key.clone(), exists(Kind::Active, &parent, &[]))]);
        let r = sn
            .commit(req(CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: name.clone(),
                key: key.clone(),
                labels: labels.clone(),
            }))
            .await;
        if r.is_err() {
            return step(&[&key, &name], vec![]);
        }
        let n = i.to_string();
        step(
            &[],
            vec![
                (key.clone(), Want::Gone),
                (
                    name.clone(),
                    exists(Kind::Committed, &parent, &[("n", n.as_str())]),
                ),
            ],
        );
        if i % 3 == 0 {
            let view = format!("w{w}-{i}-v");
            let r = sn
                .view(req(ViewSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: view.clone(),
                    parent: name.clone(),
                    labels: [("v".to_string(), "1".to_string())].into(),
                }))
                .await;
            if r.is_err() {
                return step(&[&view], vec![]);
            }
            step(&[], vec![(view, exists(Kind::View, &name, &[("v", "1")]))]);
        }
        if i % 4 == 1 {
            let r = sn
                .update(req(UpdateSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    info: Some(Info {
                        name: name.clone(),
                        labels: [("u".to_string(), "yes".to_string())].into(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["labels.u".into()],
                    }),
                }))
                .await;
            if r.is_err() {
                return step(&[&name], vec![]);
            }
            let want = exists(Kind::Committed, &parent, &[("n", n.as_str()), ("u", "yes")]);
            step(&[], vec![(name.clone(), want)]);
        }
        if i % 5 == 2 {
            let scratch = format!("w{w}-{i}-s");
            if sn.prepare(prepare_req(&scratch, &name)).await.is_err() {
                return step(&[&scratch], vec![]);
            }
            let r = sn
                .remove(req(RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: scratch.clone(),
                }))
                .await;
            if r.is_err() {
                return step(&[&scratch], vec![]);
            }
            step(&[], vec![(scratch, Want::Gone)]);
        }
        parent = name;
    }
}

async fn list(sn: &mut SnapshotsClient<Channel>) -> Vec<Info> {
    let mut stream = sn
        .list(req(ListSnapshotsRequest {
            snapshotter: SNAPSHOTTER.into(),
            filters: vec![],
        }))
        .await
        .expect("list")
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.expect("list message") {
        out.extend(msg.info);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_snapshot_changes_survive_kill_9() {
    let mut d = Daemon::start();
    let ch = d.channel().await;
    LeasesClient::new(ch.clone())
        .create(with_namespace!(
            CreateLeaseRequest {
                id: LEASE.into(),
                labels: HashMap::new(),
            },
            NS
        ))
        .await
        .expect("create lease");
    let (acks, mut acked) = tokio::sync::watch::channel(0);
    let ledger = Arc::new(Mutex::new(Ledger {
        want: BTreeMap::new(),
        unsure: vec![],
        acked: 0,
        acks,
    }));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(SnapshotsClient::new(ch.clone()), w, ledger.clone())))
        .collect();
    // Kill while the writers are mid-call (each has a call in flight at any moment), once enough
    // changes were acknowledged.
    tokio::time::timeout(
        Duration::from_secs(30),
        acked.wait_for(|&n| n >= ACKED_BEFORE_KILL),
    )
    .await
    .unwrap_or_else(|_| panic!("{ACKED_BEFORE_KILL} acknowledged changes within 30 s"))
    .expect("the ledger outlives the wait");
    d.kill9();
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("writers notice the kill")
            .expect("writer task");
    }
    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("writers done")
        .into_inner()
        .expect("ledger");
    eprintln!(
        "{} acknowledged changes, {} keys in flight at the kill",
        ledger.acked,
        ledger.unsure.len()
    );
    assert!(
        ledger.acked >= ACKED_BEFORE_KILL,
        "too few acknowledged changes to mean anything: {}",
        ledger.acked
    );

    d.spawn();
    let mut sn = SnapshotsClient::new(d.channel().await);
    let listed: BTreeMap<String, Info> = list(&mut sn)
        .await
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
    for (key, want) in &ledger.want {
        if ledger.unsure.contains(key) {
            continue;
        }
        let got = sn
            .stat(req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
            }))
            .await;
        match (want, got) {
            (Want::Gone, Err(s)) => assert_eq!(s.code(), Code::NotFound, "{key}: {s:?}"),
            (Want::Gone, Ok(r)) => panic!("{key} was removed, yet is back: {r:?}"),
            (
                Want::Exists {
                    kind,
                    parent,
                    labels,
                },
                Ok(r),
            ) => {
                let info = r.into_inner().info.expect("StatSnapshotResponse.info");
                assert_eq!(info.kind(), *kind, "{key}: kind");
                assert_eq!(&info.parent, parent, "{key}: parent");
                let got: BTreeMap<String, String> = info.labels.into_iter().collect();
                assert_eq!(&got, labels, "{key}: labels");
            }
            (Want::Exists { .. }, Err(s)) => panic!("acknowledged {key} is lost: {s:?}"),
        }
    }
    // Nothing unacknowledged appeared, and every live snapshot has its layer on disk and mounts.
    for (name, info) in &listed {
        let known = ledger.unsure.contains(name)
            || matches!(ledger.want.get(name), Some(Want::Exists { .. }));
        assert!(known, "{name} was never acknowledged: {info:?}");
        if info.kind() != Kind::Committed {
            sn.mounts(req(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: name.clone(),
            }))
            .await
            .unwrap_or_else(|s| panic!("mounts of {name}: {s:?}"));
        }
    }
    let layers = std::fs::read_dir(d.root().join("snapshots/overlayfs/snapshots"))
        .expect("layers dir")
        .count();
    assert_eq!(layers, listed.len(), "one layer directory per snapshot");
    // The chains go on from where the acknowledged commits left them.
    let tip = listed
        .values()
        .filter(|i| i.kind() == Kind::Committed)
        .map(|i| i.name.clone())
        .max()
        .expect("a committed snapshot");
    sn.prepare(prepare_req("after-restart", &tip))
        .await
        .expect("prepare after restart");
}
