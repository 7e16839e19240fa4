//! Unpacking a pulled image's layers into a snapshotter: one snapshot per chain ID, each layer
//! applied (through `crate::applier`) as soon as its blob is stored and its parent committed,
//! its diff ID checked against the image config, and committed (the snapshotter makes the
//! layer durable before its record) under the transfer's lease. Afterwards the config carries
//! `containerd.io/gc.ref.snapshot.<snapshotter>` and each layer `containerd.io/uncompressed`,
//! as containerd's unpacker leaves them.

use super::fetch::{api_descriptor, Fetcher, Growing};
use crate::blocking::blocking;
use crate::snapshots::Scoped;
use berth_api::containerd::services::leases::v1::Resource;
use berth_errdefs::{Error, Result};
use berth_layer::Applied;
use berth_oci::Digest;
use berth_registry::Descriptor;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
const SNAPSHOT_REF_LABEL: &str = "containerd.io/gc.ref.snapshot.";

/// The `rootfs.diff_ids` of an image config.
pub fn diff_ids(config: &[u8]) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    let c: Config =
        serde_json::from_slice(config).map_err(|e| Error::invalid(format!("image config: {e}")))?;
    for d in &c.rootfs.diff_ids {
        Digest::parse(d)?;
    }
    Ok(c.rootfs.diff_ids)
}

/// containerd's chain IDs: the first is the first diff ID, each next one
/// sha256("<parent chain ID> <diff ID>").
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// Unpacks of one chain (in one namespace and snapshotter), one at a time daemon-wide: a second
/// transfer of the same image waits for the first's snapshot and keeps it, instead of applying
/// every layer again beside it (which doubled the work and lost the commit race anyway).
#[derive(Default)]
pub struct Unpacking {
    locks: std::sync::Mutex<HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

impl Unpacking {
    fn lock_for(&self, ns: &str, snapshotter: &str, chain: &str) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!("{ns}\0{snapshotter}\0{chain}");
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|_, l| l.strong_count() > 0);
        if let Some(lock) = locks.get(&key).and_then(std::sync::Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key, Arc::downgrade(&lock));
        lock
    }
}

/// How one layer's download reports: its outcome, and its bytes while it runs (if followed).
pub(super) type LayerSource = (oneshot::Receiver<Result<()>>, Option<Arc<Growing>>);

/// Unpack `layers` (whose downloads report on `stored`, in order) into `snapshotter`.
/// Returns the top chain ID.
pub(super) async fn unpack(
    f: &Fetcher<'_>,
    snapshotter: &str,
    config_desc: &Descriptor,
    config: &[u8],
    layers: &[Descriptor],
    stored: Vec<LayerSource>,
) -> Result<String> {
    let (t, ctx) = (f.t, f.ctx);
    let diffs = diff_ids(config)?;
    if diffs.len() != layers.len() {
        return Err(Error::invalid(format!(
            "image config {} lists {} diff IDs for {} layers",
            config_desc.digest,
            diffs.len(),
            layers.len()
        )));
    }
    let chains = chain_ids(&diffs);
    let scoped = Arc::new(t.snapshotters.scoped(snapshotter, &ctx.ns)?);
    let resource = |id: &str| Resource {
        id: id.to_string(),
        r#type: format!("snapshots/{snapshotter}"),
    };
    let parents = [super::progress::ref_key(
        &config_desc.media_type,
        &config_desc.digest,
    )];
    if layers.len() > 1 && t.settings.parallel_unpack && scoped.can_rebase() {
        let plan = Plan {
            snapshotter,
            scoped: &scoped,
            layers,
            diffs: &diffs,
            chains: &chains,
            progress_parents: &parents,
        };
        unpack_parallel(f, &plan, stored).await?;
        return finish(f, snapshotter, config_desc, &chains).await;
    }
    for (i, (layer, (done, growing))) in layers.iter().zip(stored).enumerate() {
        let chain = chains[i].clone();
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let downloaded = |r: std::result::Result<Result<()>, oneshot::error::RecvError>| {
            r.map_err(|_| Error::canceled("a layer download ended without a word"))?
        };
        let chain_lock = t.unpacking.lock_for(&ctx.ns, snapshotter, &chain);
        let _unpacking = chain_lock.lock().await;
        if lease_if_present(f, &scoped, &resource(&chain)).await? {
            // Already unpacked (this image before, or another sharing the chain), and now held
            // by the transfer's lease. The blob must be stored all the same: the image needs it.
            downloaded(done.await)?;
            continue;
        }
        let api = api_descriptor(layer);
        let size = layer.size as i64;
        ctx.progress
            .blob("extracting", &api, &parents, 0, size)
            .await;
        let key = format!("extract-{} {chain}", uuid::Uuid::new_v4().simple());
        t.meta
            .stage_lease_resource(&ctx.ns, &ctx.lease, &resource(&key))?
            .durable()
            .await?;
        let guard = t.snapshotters.namespace_guard(&ctx.ns);
        let mounts = {
            let _shared = guard.read().await;
            let (s, k, p) = (scoped.clone(), key.clone(), parent.clone());
            blocking(move || s.prepare(&k, &p, HashMap::new())).await?
        };
        let (content, applier, media_type) = (
            t.content.clone(),
            t.applier.clone(),
            layer.media_type.clone(),
        );
        let blob_digest = Digest::parse(&layer.digest)?;
        // Still downloading: apply the bytes as they land. Else (or when it failed) from the
        // stored blob, once the download's outcome is known.
        let follow = growing.filter(|g| !g.ended());
        let done = match follow {
            Some(_) => Some(done),
            None => {
                if let Err(e) = downloaded(done.await) {
                    let (s, k) = (scoped.clone(), key.clone());
                    let _ = blocking(move || s.remove(&k)).await;
                    return Err(e);
                }
                None
            }
        };
        let started = std::time::Instant::now();
        let applied = blocking(move || {
            let reader: Box<dyn std::io::Read + Send> =
                match follow.as_ref().and_then(|g| g.reader()) {
                    Some(r) => Box::new(r),
                    None => Box::new(content.open_blob(&blob_digest)?),
                };
            let blob = std::io::BufReader::with_capacity(1 << 20, reader);
            applier.apply(blob, &media_type, mounts, false)
        })
        .await;
        // Nothing is committed from bytes the download did not verify.
        let applied = match done {
            Some(done) => match downloaded(done.await) {
                Ok(()) => applied,
                Err(e) => Err(e),
            },
            None => applied,
        };
        let applied = match applied {
            Ok(a) if a.diff_id.as_str() == diffs[i] => a,
            other => {
                let s = scoped.clone();
                let k = key.clone();
                let _ = blocking(move || s.remove(&k)).await;
                return Err(match other {
                    Ok(a) => Error::invalid(format!(
                        "layer {} unpacks to diff ID {}, the image config says {}",
                        layer.digest, a.diff_id, diffs[i]
                    )),
                    Err(e) => e.context(format!("unpack layer {}", layer.digest)),
                });
            }
        };
        let applied_in = started.elapsed();
        t.meta
            .stage_lease_resource(&ctx.ns, &ctx.lease, &resource(&chain))?
            .durable()
            .await?;
        let (s, k, c) = (scoped.clone(), key.clone(), chain.clone());
        let committing = std::time::Instant::now();
        let committed = blocking(move || s.commit(&c, &k, HashMap::new())).await;
        tracing::debug!(
            layer = %layer.digest,
            apply_ms = applied_in.as_millis() as u64,
            commit_ms = committing.elapsed().as_millis() as u64,
            "layer unpacked"
        );
        match committed {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {
                // Another transfer committed the same chain first: the same bytes.
                let s = scoped.clone();
                let _ = blocking(move || s.remove(&key)).await;
            }
            Err(e) => {
                let s = scoped.clone();
                let _ = blocking(move || s.remove(&key)).await;
                return Err(e);
            }
        }
        f.record(
            &Digest::parse(&layer.digest)?,
            size,
            &layer.media_type,
            &[(UNCOMPRESSED_LABEL.to_string(), applied.diff_id.to_string())].into(),
        )
        .await?;
        ctx.progress
            .blob("extracted", &api, &parents, size, size)
            .await;
    }
    finish(f, snapshotter, config_desc, &chains).await
}

/// Whether the committed snapshot `chain` (a snapshot `Resource`) is there; leased to the
/// transfer first, under the metadata's snapshot use lock, so a collection that marked before
/// cannot remove it once it was seen (its sweep reads the leases again under that lock). A lease
/// naming a snapshot that turns out absent is harmless: the unpack is about to make it.
async fn lease_if_present(f: &Fetcher<'_>, scoped: &Arc<Scoped>, chain: &Resource) -> Result<bool> {
    let present = lease_all_if_present(f, scoped, std::slice::from_ref(chain)).await?;
    Ok(present.first().copied().unwrap_or(false))
}

/// [`lease_if_present`] for every chain of an image at once: all leased under one hold of the
/// snapshot use lock, then looked up.
async fn lease_all_if_present(
    f: &Fetcher<'_>,
    scoped: &Arc<Scoped>,
    chains: &[Resource],
) -> Result<Vec<bool>> {
    let (t, ctx) = (f.t, f.ctx);
    let _in_use = t.meta.snapshot_use_lock().await;
    for chain in chains {
        // Visible to the collector at once; durable with the transfer's other records.
        let _staged = t.meta.stage_lease_resource(&ctx.ns, &ctx.lease, chain)?;
    }
    let (s, ids) = (
        scoped.clone(),
        chains.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
    );
    blocking(move || Ok(ids.iter().map(|id| s.stat(id).is_ok()).collect())).await
}

/// Label the config with the top chain ID (`gc.ref.snapshot.<snapshotter>`); returns it.
async fn finish(
    f: &Fetcher<'_>,
    snapshotter: &str,
    config_desc: &Descriptor,
    chains: &[String],
) -> Result<String> {
    let top = chains.last().cloned().unwrap_or_default();
    if !top.is_empty() {
        f.record(
            &Digest::parse(&config_desc.digest)?,
            config_desc.size as i64,
            &config_desc.media_type,
            &[(format!("{SNAPSHOT_REF_LABEL}{snapshotter}"), top.clone())].into(),
        )
        .await?;
    }
    Ok(top)
}

/// What one image's unpack works from.
struct Plan<'p> {
    snapshotter: &'p str,
    scoped: &'p Arc<Scoped>,
    layers: &'p [Descriptor],
    diffs: &'p [String],
    chains: &'p [String],
    /// The config's progress key: each layer's progress names it as its parent.
    progress_parents: &'p [String],
}

/// How one layer's side of a parallel unpack ended.
enum Extracted {
    /// Its chain was committed already: nothing applied, the download's outcome.
    Present(Result<()>),
    /// Applied into the parentless snapshot `key` (None when it failed before one existed).
    Applied(Option<String>, Result<Applied>),
}

/// The parallel unpack, for a snapshotter that can commit a layer onto its parent after the fact
/// (overlayfs): every layer is applied as its bytes arrive into a snapshot of its own with no
/// parent, side by side (bounded by the cores), and committed in chain order onto the layer below
/// with `commit_onto`. A layer applied without its lowers cannot see them, so the directories it
/// implies (parents of its entries that it does not list) got default attributes; before its
/// commit they are given the lower layers' (`berth_layer::inherit_implied_dirs`), exactly as a
/// sequential apply gives them at creation. Every chain of the image is locked for the whole
/// unpack, in chain order (the order any other unpack of a shared chain takes them in).
async fn unpack_parallel(f: &Fetcher<'_>, plan: &Plan<'_>, stored: Vec<LayerSource>) -> Result<()> {
    let (t, ctx) = (f.t, f.ctx);
    let (scoped, chains) = (plan.scoped, plan.chains);
    let mut held = Vec::with_capacity(chains.len());
    for chain in chains {
        held.push(
            t.unpacking
                .lock_for(&ctx.ns, plan.snapshotter, chain)
                .lock_owned()
                .await,
        );
    }
    let resources: Vec<Resource> = chains
        .iter()
        .map(|chain| Resource {
            id: chain.clone(),
            r#type: format!("snapshots/{}", plan.snapshotter),
        })
        .collect();
    let present = lease_all_if_present(f, scoped, &resources).await?;
    // Applies in flight: each takes a decompression thread and an extraction thread.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let applies = tokio::sync::Semaphore::new(cores.clamp(2, 8));
    let failed = std::sync::atomic::AtomicBool::new(false);
    // Parentless snapshots prepared and not yet committed: removed at the end if still here.
    let pending = std::sync::Mutex::new(Vec::<String>::new());
    let mut outcomes = Vec::with_capacity(chains.len());
    let mut receivers = Vec::with_capacity(chains.len());
    for _ in chains {
        let (tx, rx) = oneshot::channel::<Extracted>();
        outcomes.push(tx);
        receivers.push(rx);
    }
    let extract_all =
        futures_util::future::join_all(stored.into_iter().zip(outcomes).enumerate().map(
            |(i, ((done, growing), tx))| {
                let (applies, failed, pending, present) = (&applies, &failed, &pending, &present);
                async move {
                    let outcome = if present[i] {
                        Extracted::Present(downloaded(done.await))
                    } else {
                        extract_one(f, plan, i, done, growing, applies, failed, pending).await
                    };
                    let _ = tx.send(outcome);
                }
            },
        ));
    let commit_all = async {
        let result = commit_in_order(f, plan, receivers, &pending).await;
        if result.is_err() {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    };
    let (_, result) = tokio::join!(extract_all, commit_all);
    // Whatever was prepared and not committed (a failure, or layers after one) goes.
    let leftovers = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
    for key in leftovers {
        let s = scoped.clone();
        let _ = blocking(move || s.remove(&key)).await;
    }
    drop(held);
    result
}

fn downloaded(r: std::result::Result<Result<()>, oneshot::error::RecvError>) -> Result<()> {
    r.map_err(|_| Error::canceled("a layer download ended without a word"))?
}

/// One layer of a parallel unpack: a parentless snapshot, the layer applied into it as its bytes
/// arrive (or from the stored blob), its diff ID checked.
#[allow(clippy::too_many_arguments)]
async fn extract_one(
    f: &Fetcher<'_>,
    plan: &Plan<'_>,
    i: usize,
    done: oneshot::Receiver<Result<()>>,
    growing: Option<Arc<Growing>>,
    applies: &tokio::sync::Semaphore,
    failed: &std::sync::atomic::AtomicBool,
    pending: &std::sync::Mutex<Vec<String>>,
) -> Extracted {
    let (t, ctx) = (f.t, f.ctx);
    let layer = &plan.layers[i];
    let chain = &plan.chains[i];
    let Ok(_permit) = applies.acquire().await else {
        return Extracted::Applied(None, Err(Error::internal("apply bound closed")));
    };
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        return Extracted::Applied(None, Err(Error::canceled("an earlier layer failed")));
    }
    let api = api_descriptor(layer);
    let size = layer.size as i64;
    ctx.progress
        .blob("extracting", &api, plan.progress_parents, 0, size)
        .await;
    let key = format!("extract-{} {chain}", uuid::Uuid::new_v4().simple());
    let resource = Resource {
        id: key.clone(),
        r#type: format!("snapshots/{}", plan.snapshotter),
    };
    let staged = match t.meta.stage_lease_resource(&ctx.ns, &ctx.lease, &resource) {
        Ok(p) => p.durable().await,
        Err(e) => Err(e),
    };
    if let Err(e) = staged {
        return Extracted::Applied(None, Err(e));
    }
    let guard = t.snapshotters.namespace_guard(&ctx.ns);
    let mounts = {
        let _shared = guard.read().await;
        let (s, k) = (plan.scoped.clone(), key.clone());
        blocking(move || s.prepare(&k, "", HashMap::new())).await
    };
    let mounts = match mounts {
        Ok(m) => m,
        Err(e) => return Extracted::Applied(None, Err(e)),
    };
    pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(key.clone());
    let (content, applier, media_type) = (
        t.content.clone(),
        t.applier.clone(),
        layer.media_type.clone(),
    );
    let blob_digest = match Digest::parse(&layer.digest) {
        Ok(d) => d,
        Err(e) => return Extracted::Applied(Some(key), Err(e)),
    };
    let follow = growing.filter(|g| !g.ended());
    let done = match follow {
        Some(_) => Some(done),
        None => {
            if let Err(e) = downloaded(done.await) {
                return Extracted::Applied(Some(key), Err(e));
            }
            None
        }
    };
    let started = std::time::Instant::now();
    let applied = blocking(move || {
        let reader: Box<dyn std::io::Read + Send> = match follow.as_ref().and_then(|g| g.reader()) {
            Some(r) => Box::new(r),
            None => Box::new(content.open_blob(&blob_digest)?),
        };
        let blob = std::io::BufReader::with_capacity(1 << 20, reader);
        applier.apply(blob, &media_type, mounts, false)
    })
    .await;
    // Nothing is committed from bytes the download did not verify.
    let applied = match done {
        Some(done) => downloaded(done.await).and(applied),
        None => applied,
    };
    let applied = match applied {
        Ok(a) if a.diff_id.as_str() == plan.diffs[i] => Ok(a),
        Ok(a) => Err(Error::invalid(format!(
            "layer {} unpacks to diff ID {}, the image config says {}",
            layer.digest, a.diff_id, plan.diffs[i]
        ))),
        Err(e) => Err(e.context(format!("unpack layer {}", layer.digest))),
    };
    tracing::debug!(layer = %layer.digest, apply_ms = started.elapsed().as_millis() as u64, "layer applied");
    Extracted::Applied(Some(key), applied)
}

/// The other half of a parallel unpack: each layer, in chain order, once applied, has its
/// implied directories fixed from the layers below and is committed onto its parent.
async fn commit_in_order(
    f: &Fetcher<'_>,
    plan: &Plan<'_>,
    receivers: Vec<oneshot::Receiver<Extracted>>,
    pending: &std::sync::Mutex<Vec<String>>,
) -> Result<()> {
    let ctx = f.ctx;
    let scoped = plan.scoped;
    let mut labels = Vec::with_capacity(receivers.len());
    for (i, rx) in receivers.into_iter().enumerate() {
        let layer = &plan.layers[i];
        let chain = plan.chains[i].clone();
        let parent = if i == 0 {
            String::new()
        } else {
            plan.chains[i - 1].clone()
        };
        let outcome = rx
            .await
            .map_err(|_| Error::internal("a layer's unpack ended without a word"))?;
        let (key, applied) = match outcome {
            // Its chain was leased with the others before any extract started.
            Extracted::Present(downloaded) => {
                downloaded?;
                continue;
            }
            Extracted::Applied(_, Err(e)) => return Err(e),
            Extracted::Applied(None, Ok(_)) => {
                return Err(Error::internal("a layer applied into no snapshot"))
            }
            Extracted::Applied(Some(key), Ok(applied)) => (key, applied),
        };
        let committing = std::time::Instant::now();
        if !parent.is_empty() && !applied.implied_dirs.is_empty() {
            let (s, k, p) = (scoped.clone(), key.clone(), parent.clone());
            let implied = applied.implied_dirs.clone();
            blocking(move || inherit_from_parent(&s, &k, &p, &implied)).await?;
        }
        // The chain is leased already (`lease_all_if_present`, before the extracts), so the
        // commit needs no metadata write of its own here: one durable write per layer fewer on
        // this sequential path.
        let (s, k, c, p) = (scoped.clone(), key.clone(), chain.clone(), parent.clone());
        let committed = blocking(move || {
            if p.is_empty() {
                s.commit(&c, &k, HashMap::new())
            } else {
                s.commit_onto(&c, &k, &p, HashMap::new())
            }
        })
        .await;
        match committed {
            Ok(()) => pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k| *k != key),
            // Committed by someone else meanwhile (not a transfer: those hold the chain's
            // lock): the same bytes. The leftover snapshot is removed with the others.
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        tracing::debug!(
            layer = %layer.digest,
            commit_ms = committing.elapsed().as_millis() as u64,
            implied_dirs = applied.implied_dirs.len(),
            "layer committed onto its parent"
        );
        let size = layer.size as i64;
        let digest = Digest::parse(&layer.digest)?;
        let label: HashMap<String, String> =
            [(UNCOMPRESSED_LABEL.to_string(), applied.diff_id.to_string())].into();
        // The layer's `uncompressed` label is bookkeeping nothing below needs: recorded with the
        // others once every layer is committed, all at once (one metadata sync for the lot),
        // instead of a durable write per layer on this sequential path.
        labels.push(async move { f.record(&digest, size, &layer.media_type, &label).await });
        ctx.progress
            .blob(
                "extracted",
                &api_descriptor(layer),
                plan.progress_parents,
                size,
                size,
            )
            .await;
    }
    for recorded in futures_util::future::join_all(labels).await {
        recorded?;
    }
    Ok(())
}

/// Give the implied directories of the parentless snapshot `key` the attributes the layers of
/// the committed `parent` chain give them. The lower layers' directories come from a short-lived
/// view of the parent (a bind of its one layer, or an overlay's `lowerdir=` list).
fn inherit_from_parent(
    s: &Scoped,
    key: &str,
    parent: &str,
    implied: &[std::path::PathBuf],
) -> Result<()> {
    let target = s.active_dir(key)?;
    let view = format!("implied-{}", uuid::Uuid::new_v4().simple());
    let mounts = s.view(&view, parent, HashMap::new())?;
    let lowers: Vec<std::path::PathBuf> = match mounts.as_slice() {
        [m] if m.r#type == "bind" => vec![m.source.clone().into()],
        [m] if m.r#type == "overlay" => m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .map(|l| l.split(':').map(std::path::PathBuf::from).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let result = if lowers.is_empty() {
        Err(Error::internal(format!(
            "cannot find the layers of {parent} to fix implied directories from"
        )))
    } else {
        let lowers: Vec<&std::path::Path> = lowers.iter().map(|p| p.as_path()).collect();
        berth_layer::inherit_implied_dirs(&target, implied, &lowers)
    };
    let _ = s.remove(&view);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        // Two diff IDs whose chain containerd computes as sha256("<a> <b>").
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        let want = hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()));
        assert_eq!(chains[1], format!("sha256:{want}"));
    }

    #[test]
    fn diff_ids_are_read_and_checked() {
        let good = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}}"#;
        assert_eq!(diff_ids(good).unwrap().len(), 1);
        assert!(diff_ids(br#"{"rootfs":{"diff_ids":["../x"]}}"#).is_err());
        assert!(diff_ids(b"{}").is_err());
    }
}
