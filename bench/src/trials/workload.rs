//! One client of a trial: its own namespace `c<k>`, a lease `hold` for its snapshots, and a loop of
//! random writes, each recorded in the ledger before it is sent and acknowledged when answered.
//! The loop ends at the first failed call: after the kill that is the daemon going away; before
//! it, a refusal from a live daemon, which the trial reports (the workload only asks for valid
//! things).

use crate::ledger::{Key, Ledger, State};
use crate::Rng;
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::{
    container, Container, CreateContainerRequest, DeleteContainerRequest, UpdateContainerRequest,
};
use berth::api::services::content::v1::content_client::ContentClient;
use berth::api::services::content::v1::{DeleteContentRequest, WriteAction, WriteContentRequest};
use berth::api::services::images::v1::images_client::ImagesClient;
use berth::api::services::images::v1::{CreateImageRequest, DeleteImageRequest, Image};
use berth::api::services::leases::v1::leases_client::LeasesClient;
use berth::api::services::leases::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
};
use berth::api::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth::api::services::namespaces::v1::{CreateNamespaceRequest, Namespace};
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use berth::api::types::Descriptor;
use berth::{with_lease, with_namespace};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

pub const SNAPSHOTTER: &str = "overlayfs";
pub const LEASE: &str = "hold";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const CHUNK: usize = 64 << 10;

pub struct Client {
    k: usize,
    ns: String,
    ch: Channel,
    ledger: Arc<Ledger>,
    rng: Rng,
    /// Rung when a COMMIT of a content write is sent while `arm` is set (the mid-flush kill).
    commit_sent: Arc<tokio::sync::Notify>,
    arm: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    /// The call under way, for the report of a client that does not stop after the kill.
    doing: Arc<std::sync::Mutex<String>>,
    errors: Vec<String>,
    containers: Vec<String>,
    blobs: Vec<(String, i64)>,
    /// Blobs an image points at: never deleted.
    pinned: Vec<String>,
    leases: Vec<String>,
    images: Vec<String>,
    parent: String,
}

fn labels(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn sorted(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl Client {
    pub fn new(
        k: usize,
        ch: Channel,
        ledger: Arc<Ledger>,
        rng: Rng,
        commit_sent: Arc<tokio::sync::Notify>,
        arm: Arc<AtomicBool>,
        killed: Arc<AtomicBool>,
    ) -> Client {
        Client {
            k,
            ns: format!("c{k}"),
            ch,
            ledger,
            rng,
            commit_sent,
            arm,
            killed,
            doing: Arc::default(),
            errors: vec![],
            containers: vec![],
            blobs: vec![],
            pinned: vec![],
            leases: vec![],
            images: vec![],
            parent: String::new(),
        }
    }

    /// What the client is waiting on, shared with the trial's report.
    pub fn doing(&self) -> Arc<std::sync::Mutex<String>> {
        self.doing.clone()
    }

    fn set_doing(&self, what: &str) {
        let mut doing = self
            .doing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        doing.clear();
        doing.push_str(what);
    }

    /// Record `changes`, send the call, and settle the ledger on its answer. None when it failed
    /// (and the client should stop).
    async fn step<T>(
        &mut self,
        what: String,
        changes: Vec<(Key, State)>,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Option<T> {
        for (k, s) in &changes {
            self.ledger.begin(k, s.clone());
        }
        self.set_doing(&what);
        let answer = call.await;
        self.set_doing(&format!("nothing (after {what})"));
        match answer {
            Ok(v) => {
                for (k, _) in &changes {
                    self.ledger.ack(k);
                }
                Some(v)
            }
            Err(s) => {
                if !self.killed.load(Ordering::SeqCst) {
                    self.errors.push(format!(
                        "client {}: {what} refused before the kill: {:?}: {}",
                        self.k,
                        s.code(),
                        s.message()
                    ));
                    for (k, _) in &changes {
                        self.ledger.refused(k);
                    }
                }
                None
            }
        }
    }

    /// Runs until a call fails; returns the failures that were not the kill.
    pub async fn run(mut self) -> Vec<String> {
        if self.setup().await.is_some() {
            for i in 0.. {
                if self.one(i).await.is_none() {
                    break;
                }
            }
        }
        self.errors
    }

    async fn setup(&mut self) -> Option<()> {
        let ns = self.ns.clone();
        let mut nc = NamespacesClient::new(self.ch.clone());
        let l = labels(&[("client", self.k.to_string())]);
        let state = State::Namespace { labels: sorted(&l) };
        self.step(
            format!("create namespace {ns}"),
            vec![(Key::Namespace(ns.clone()), state)],
            nc.create(CreateNamespaceRequest {
                namespace: Some(Namespace {
                    name: ns.clone(),
                    labels: l,
                }),
            }),
        )
        .await?;
        let mut lc = LeasesClient::new(self.ch.clone());
        self.step(
            format!("create lease {LEASE}"),
            vec![(Key::Lease(ns.clone(), LEASE.into()), State::Lease)],
            lc.create(with_namespace(
                &ns,
                CreateLeaseRequest {
                    id: LEASE.into(),
                    labels: HashMap::new(),
                },
            )),
        )
        .await?;
        Some(())
    }

    async fn one(&mut self, i: usize) -> Option<()> {
        let ns = self.ns.clone();
        match self.rng.range(0, 13) {
            0 => {
                let name = format!("{ns}-n{i}");
                let l = labels(&[("i", i.to_string())]);
                let mut nc = NamespacesClient::new(self.ch.clone());
                self.step(
                    format!("create namespace {name}"),
                    vec![(
                        Key::Namespace(name.clone()),
                        State::Namespace { labels: sorted(&l) },
                    )],
                    nc.create(CreateNamespaceRequest {
                        namespace: Some(Namespace { name, labels: l }),
                    }),
                )
                .await?;
            }
            1 | 2 => {
                let id = format!("x{i}");
                let l = labels(&[("v", "0".into())]);
                let mut cc = ContainersClient::new(self.ch.clone());
                self.step(
                    format!("create container {id}"),
                    vec![(
                        Key::Container(ns.clone(), id.clone()),
                        State::Container { labels: sorted(&l) },
                    )],
                    cc.create(with_namespace(
                        &ns,
                        CreateContainerRequest {
                            container: Some(container(&id, l)),
                        },
                    )),
                )
                .await?;
                self.containers.push(id);
            }
            3 if !self.containers.is_empty() => {
                let id = self.pick(&self.containers.clone());
                let l = labels(&[("v", i.to_string())]);
                let mut cc = ContainersClient::new(self.ch.clone());
                self.step(
                    format!("update container {id}"),
                    vec![(
                        Key::Container(ns.clone(), id.clone()),
                        State::Container { labels: sorted(&l) },
                    )],
                    cc.update(with_namespace(
                        &ns,
                        UpdateContainerRequest {
                            container: Some(container(&id, l)),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["labels".into()],
                            }),
                        },
                    )),
                )
                .await?;
            }
            4 if !self.containers.is_empty() => {
                let n = self.rng.range(0, self.containers.len() as u64) as usize;
                let id = self.containers.swap_remove(n);
                let mut cc = ContainersClient::new(self.ch.clone());
                self.step(
                    format!("delete container {id}"),
                    vec![(Key::Container(ns.clone(), id.clone()), State::Gone)],
                    cc.delete(with_namespace(&ns, DeleteContainerRequest { id })),
                )
                .await?;
            }
            5..=7 => self.write_blob(i).await?,
            8 if self.blobs.len() > self.pinned.len() => {
                let free: Vec<_> = self
                    .blobs
                    .iter()
                    .filter(|(d, _)| !self.pinned.contains(d))
                    .cloned()
                    .collect();
                let (digest, _) = free[self.rng.range(0, free.len() as u64) as usize].clone();
                self.blobs.retain(|(d, _)| *d != digest);
                let mut cc = ContentClient::new(self.ch.clone());
                self.step(
                    format!("delete blob {digest}"),
                    vec![(Key::Blob(ns.clone(), digest.clone()), State::Gone)],
                    cc.delete(with_namespace(&ns, DeleteContentRequest { digest })),
                )
                .await?;
            }
            9 => {
                let id = format!("l{i}");
                let mut lc = LeasesClient::new(self.ch.clone());
                self.step(
                    format!("create lease {id}"),
                    vec![(Key::Lease(ns.clone(), id.clone()), State::Lease)],
                    lc.create(with_namespace(
                        &ns,
                        CreateLeaseRequest {
                            id: id.clone(),
                            labels: HashMap::new(),
                        },
                    )),
                )
                .await?;
                self.leases.push(id);
            }
            10 if !self.leases.is_empty() => {
                let id = self.leases.swap_remove(0);
                let mut lc = LeasesClient::new(self.ch.clone());
                self.step(
                    format!("delete lease {id}"),
                    vec![(Key::Lease(ns.clone(), id.clone()), State::Gone)],
                    lc.delete(with_namespace(&ns, DeleteLeaseRequest { id, sync: false })),
                )
                .await?;
            }
            11 => self.snapshots(i).await?,
            12 if !self.blobs.is_empty() => {
                let (digest, size) = self.blobs[self.blobs.len() - 1].clone();
                let name = format!("registry.test/c{}/img:{i}", self.k);
                let mut ic = ImagesClient::new(self.ch.clone());
                self.pinned.push(digest.clone());
                self.step(
                    format!("create image {name}"),
                    vec![(
                        Key::Image(ns.clone(), name.clone()),
                        State::Image {
                            target: digest.clone(),
                        },
                    )],
                    ic.create(with_namespace(
                        &ns,
                        CreateImageRequest {
                            image: Some(Image {
                                name: name.clone(),
                                target: Some(Descriptor {
                                    media_type: LAYER.into(),
                                    digest,
                                    size,
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            source_date_epoch: None,
                        },
                    )),
                )
                .await?;
                self.images.push(name);
                // Now and then an image goes again (its blob stays pinned: it may be in use).
                if self.rng.range(0, 3) == 0 {
                    let name = self.images.swap_remove(0);
                    self.step(
                        format!("delete image {name}"),
                        vec![(Key::Image(ns.clone(), name.clone()), State::Gone)],
                        ic.delete(with_namespace(
                            &ns,
                            DeleteImageRequest {
                                name,
                                sync: false,
                                target: None,
                            },
                        )),
                    )
                    .await?;
                }
            }
            _ => {}
        }
        Some(())
    }

    fn pick(&mut self, from: &[String]) -> String {
        from[self.rng.range(0, from.len() as u64) as usize].clone()
    }

    /// A blob of 1 B to 512 KiB written the way containerd's client writes (STAT, WRITEs at their
    /// offsets, COMMIT with size and digest), a GC root so no collection may take it.
    async fn write_blob(&mut self, i: usize) -> Option<()> {
        let ns = self.ns.clone();
        let len = self.rng.range(1, 512 << 10) as usize;
        let blob = self.rng.bytes(len);
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
        let r#ref = format!("{ns}-w{i}");
        let cc = ContentClient::new(self.ch.clone())
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        let notify = (self.commit_sent.clone(), self.arm.clone());
        let call = write(cc, ns.clone(), r#ref, blob, digest.clone(), notify);
        self.step(
            format!("write blob {digest} ({len} B)"),
            vec![(
                Key::Blob(ns.clone(), digest.clone()),
                State::Blob { size: len as i64 },
            )],
            call,
        )
        .await?;
        if !self.blobs.iter().any(|(d, _)| *d == digest) {
            self.blobs.push((digest, len as i64));
        }
        Some(())
    }

    /// Prepare a layer on the last committed one, commit it; now and then prepare a scratch
    /// snapshot and remove it again. All under the client's lease.
    async fn snapshots(&mut self, i: usize) -> Option<()> {
        let ns = self.ns.clone();
        let mut sc = SnapshotsClient::new(self.ch.clone());
        let (key, name) = (format!("s{i}-a"), format!("s{i}"));
        let parent = self.parent.clone();
        self.step(
            format!("prepare snapshot {key}"),
            vec![(
                Key::Snapshot(ns.clone(), key.clone()),
                State::Snapshot {
                    committed: false,
                    parent: parent.clone(),
                },
            )],
            sc.prepare(with_lease(
                &ns,
                LEASE,
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: HashMap::new(),
                },
            )),
        )
        .await?;
        self.step(
            format!("commit snapshot {key} as {name}"),
            vec![
                (Key::Snapshot(ns.clone(), key.clone()), State::Gone),
                (
                    Key::Snapshot(ns.clone(), name.clone()),
                    State::Snapshot {
                        committed: true,
                        parent: parent.clone(),
                    },
                ),
            ],
            sc.commit(with_lease(
                &ns,
                LEASE,
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: name.clone(),
                    key,
                    labels: HashMap::new(),
                    parent: String::new(),
                },
            )),
        )
        .await?;
        self.parent = name.clone();
        if self.rng.range(0, 2) == 0 {
            let scratch = format!("s{i}-x");
            self.step(
                format!("prepare snapshot {scratch}"),
                vec![(
                    Key::Snapshot(ns.clone(), scratch.clone()),
                    State::Snapshot {
                        committed: false,
                        parent: name.clone(),
                    },
                )],
                sc.prepare(with_lease(
                    &ns,
                    LEASE,
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: scratch.clone(),
                        parent: name,
                        labels: HashMap::new(),
                    },
                )),
            )
            .await?;
            self.step(
                format!("remove snapshot {scratch}"),
                vec![(Key::Snapshot(ns.clone(), scratch.clone()), State::Gone)],
                sc.remove(with_lease(
                    &ns,
                    LEASE,
                    RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: scratch,
                    },
                )),
            )
            .await?;
        }
        Some(())
    }
}

fn container(id: &str, labels: HashMap<String, String>) -> Container {
    Container {
        id: id.into(),
        labels,
        image: "registry.test/trials:1".into(),
        runtime: Some(container::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: SPEC_TYPE_URL.into(),
            value: berth_testkit::SPEC_JSON.trim_ascii_end().to_vec(),
        }),
        ..Default::default()
    }
}

/// One lock-step content Write; an error from the stream is returned as the server's status.
async fn write(
    mut cc: ContentClient<Channel>,
    ns: String,
    r#ref: String,
    blob: Vec<u8>,
    expected: String,
    (commit_sent, arm): (Arc<tokio::sync::Notify>, Arc<AtomicBool>),
) -> Result<(), Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let closed = || Status::unavailable("write stream closed");
    tx.send(WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r#ref.clone(),
        total: blob.len() as i64,
        expected: expected.clone(),
        ..Default::default()
    })
    .await
    .map_err(|_| closed())?;
    let mut responses = cc
        .write(with_namespace(&ns, ReceiverStream::new(rx)))
        .await?
        .into_inner();
    let next = |m: Option<_>| m.ok_or_else(|| Status::unavailable("write stream ended early"));
    next(responses.message().await?)?;
    for (n, chunk) in blob.chunks(CHUNK).enumerate() {
        tx.send(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r#ref.clone(),
            offset: (n * CHUNK) as i64,
            data: chunk.to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|_| closed())?;
        next(responses.message().await?)?;
    }
    tx.send(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref,
        total: blob.len() as i64,
        offset: blob.len() as i64,
        expected: expected.clone(),
        labels: labels(&[("containerd.io/gc.root", "trials".into())]),
        ..Default::default()
    })
    .await
    .map_err(|_| closed())?;
    if arm.load(Ordering::SeqCst) {
        commit_sent.notify_one();
    }
    let resp = next(responses.message().await?)?;
    if resp.digest != expected {
        return Err(Status::internal(format!(
            "COMMIT answered digest {:?}, expected {expected}",
            resp.digest
        )));
    }
    Ok(())
}
