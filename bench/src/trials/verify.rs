//! After the restart: read back everything the API lists and hold it against the ledger.

use crate::ledger::{Key, Ledger, State};
use crate::workload::SNAPSHOTTER;
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::ListContainersRequest;
use berth::api::services::content::v1::content_client::ContentClient;
use berth::api::services::content::v1::{ListContentRequest, ReadContentRequest};
use berth::api::services::images::v1::images_client::ImagesClient;
use berth::api::services::images::v1::ListImagesRequest;
use berth::api::services::leases::v1::leases_client::LeasesClient;
use berth::api::services::leases::v1::ListRequest as ListLeasesRequest;
use berth::api::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth::api::services::namespaces::v1::ListNamespacesRequest;
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::{Kind, ListSnapshotsRequest};
use berth::with_namespace;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tonic::transport::Channel;

fn sorted(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn status(what: &str, s: tonic::Status) -> String {
    format!("{what}: {:?}: {}", s.code(), s.message())
}

/// Everything the daemon shows, as ledger keys and states; and the failures found on the way
/// (blobs that do not hash to their digest, snapshots without their parent, images without their
/// target).
async fn observe(ch: Channel) -> Result<(HashMap<Key, State>, Vec<String>), String> {
    let mut seen = HashMap::new();
    let mut bad = vec![];
    let namespaces = NamespacesClient::new(ch.clone())
        .list(ListNamespacesRequest::default())
        .await
        .map_err(|s| status("list namespaces", s))?
        .into_inner()
        .namespaces;
    for n in &namespaces {
        seen.insert(
            Key::Namespace(n.name.clone()),
            State::Namespace {
                labels: sorted(&n.labels),
            },
        );
    }
    for n in namespaces {
        let ns = n.name;
        let containers = ContainersClient::new(ch.clone())
            .max_decoding_message_size(64 << 20)
            .list(with_namespace(&ns, ListContainersRequest::default()))
            .await
            .map_err(|s| status("list containers", s))?
            .into_inner()
            .containers;
        for c in containers {
            seen.insert(
                Key::Container(ns.clone(), c.id),
                State::Container {
                    labels: sorted(&c.labels),
                },
            );
        }
        let leases = LeasesClient::new(ch.clone())
            .list(with_namespace(&ns, ListLeasesRequest::default()))
            .await
            .map_err(|s| status("list leases", s))?
            .into_inner()
            .leases;
        for l in leases {
            seen.insert(Key::Lease(ns.clone(), l.id), State::Lease);
        }
        let mut cc = ContentClient::new(ch.clone());
        let mut stream = cc
            .list(with_namespace(&ns, ListContentRequest::default()))
            .await
            .map_err(|s| status("list content", s))?
            .into_inner();
        let mut blobs = BTreeSet::new();
        while let Some(m) = stream
            .message()
            .await
            .map_err(|s| status("list content", s))?
        {
            for info in m.info {
                blobs.insert(info.digest.clone());
                seen.insert(
                    Key::Blob(ns.clone(), info.digest.clone()),
                    State::Blob { size: info.size },
                );
                match read_all(&mut cc, &ns, &info.digest).await {
                    Ok(data) => {
                        let got = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
                        if got != info.digest || data.len() as i64 != info.size {
                            bad.push(format!(
                                "{ns}: blob {} ({} B listed) reads back as {got} ({} B)",
                                info.digest,
                                info.size,
                                data.len()
                            ));
                        }
                    }
                    Err(e) => bad.push(format!(
                        "{ns}: blob {} is listed but does not read: {e}",
                        info.digest
                    )),
                }
            }
        }
        let mut sc = SnapshotsClient::new(ch.clone());
        let mut stream = sc
            .list(with_namespace(
                &ns,
                ListSnapshotsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    filters: vec![],
                },
            ))
            .await
            .map_err(|s| status("list snapshots", s))?
            .into_inner();
        let mut snaps = vec![];
        while let Some(m) = stream
            .message()
            .await
            .map_err(|s| status("list snapshots", s))?
        {
            snaps.extend(m.info);
        }
        let names: BTreeSet<_> = snaps.iter().map(|s| s.name.clone()).collect();
        for s in snaps {
            if !s.parent.is_empty() && !names.contains(&s.parent) {
                bad.push(format!(
                    "{ns}: snapshot {} has parent {} which does not exist",
                    s.name, s.parent
                ));
            }
            seen.insert(
                Key::Snapshot(ns.clone(), s.name),
                State::Snapshot {
                    committed: s.kind == Kind::Committed as i32,
                    parent: s.parent,
                },
            );
        }
        let images = ImagesClient::new(ch.clone())
            .list(with_namespace(&ns, ListImagesRequest::default()))
            .await
            .map_err(|s| status("list images", s))?
            .into_inner()
            .images;
        for i in images {
            let target = i.target.map(|t| t.digest).unwrap_or_default();
            if !blobs.contains(&target) {
                bad.push(format!(
                    "{ns}: image {} points at {target}, which is not in the content store",
                    i.name
                ));
            }
            seen.insert(Key::Image(ns.clone(), i.name), State::Image { target });
        }
    }
    Ok((seen, bad))
}

async fn read_all(
    cc: &mut ContentClient<Channel>,
    ns: &str,
    digest: &str,
) -> Result<Vec<u8>, String> {
    let mut s = cc
        .read(with_namespace(
            ns,
            ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size: 0,
            },
        ))
        .await
        .map_err(|s| status("read", s))?
        .into_inner();
    let mut data = vec![];
    while let Some(m) = s.message().await.map_err(|s| status("read", s))? {
        if m.offset as usize != data.len() {
            return Err(format!("chunk at {} after {} B", m.offset, data.len()));
        }
        data.extend_from_slice(&m.data);
    }
    Ok(data)
}

/// The failures of a trial's check: empty when the daemon kept every promise.
///
/// `unledgered` is the ctr client's namespace: the blobs, snapshots and leases there are made by
/// ctr's imports, pulls and runs (one per layer, config, container), not by calls the ledger records;
/// they are held to the collection check instead (`tasks::collect_and_check`).
pub async fn verify(ch: Channel, ledger: &Ledger, unledgered: Option<&str>) -> Vec<String> {
    let (seen, mut failures) = match observe(ch).await {
        Ok(x) => x,
        Err(e) => return vec![format!("reading the restarted daemon: {e}")],
    };
    let entries = ledger.snapshot();
    let known: BTreeSet<&Key> = entries.iter().map(|(k, _)| k).collect();
    for (key, entry) in &entries {
        let now = seen.get(key).cloned().unwrap_or(State::Gone);
        if !entry.allows(&now) {
            failures.push(format!(
                "{key:?}: is {now:?}, acknowledged {:?}{}",
                entry.acked(),
                entry
                    .pending
                    .as_ref()
                    .map(|p| format!(" (or unanswered {p:?})"))
                    .unwrap_or_default()
            ));
        }
    }
    for key in seen.keys() {
        // The default namespace may be made by the daemon itself.
        let by_ctr = match key {
            // ctr's own short leases (with an expiry) too.
            Key::Blob(ns, _) | Key::Snapshot(ns, _) | Key::Lease(ns, _) => {
                Some(ns.as_str()) == unledgered
            }
            Key::Namespace(ns) => Some(ns.as_str()) == unledgered,
            _ => false,
        };
        if !known.contains(key) && *key != Key::Namespace("default".into()) && !by_ctr {
            failures.push(format!("{key:?}: appeared, never asked for"));
        }
    }
    failures
}
