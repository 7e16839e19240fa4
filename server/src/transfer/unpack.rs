//! Unpacking a pulled image's layers into a snapshotter: one snapshot per chain ID, each layer
//! applied (through `crate::applier`) as soon as its blob is stored and its parent committed,
//! its diff ID checked against the image config, and committed (the snapshotter makes the
//! layer durable before its record) under the transfer's lease. Afterwards the config carries
//! `containerd.io/gc.ref.snapshot.<snapshotter>` and each layer `containerd.io/uncompressed`,
//! as containerd's unpacker leaves them.

use super::fetch::{api_descriptor, Fetcher, Growing};
use crate::blocking::blocking;
use berth_api::containerd::services::leases::v1::Resource;
use berth_errdefs::{Error, Result};
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
        let s = scoped.clone();
        let c = chain.clone();
        if blocking(move || s.stat(&c)).await.is_ok() {
            // The blob must be stored all the same: the image needs it.
            downloaded(done.await)?;
            // Already unpacked (this image before, or another sharing the chain): keep it.
            t.meta
                .stage_lease_resource(&ctx.ns, &ctx.lease, &resource(&chain))?
                .durable()
                .await?;
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
