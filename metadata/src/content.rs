//! Content records: which namespace holds which blob, with its labels. The bytes live in the
//! content store (`berth_content`), shared by all namespaces.

use super::{keys, now, Metadata, Tx};
use crate::filters::{label_field, Adaptor, Filter};
use crate::validate;
use berth_api::containerd::services::content::v1::Info;
use berth_errdefs::{Error, Result};
use berth_oci::Digest;
use std::collections::HashMap;
use std::sync::Arc;

impl Metadata {
    pub fn content_info(&self, ns: &str, digest: &Digest) -> Result<Info> {
        self.get(&keys::object(ns, keys::CONTENT, digest.as_str()))?
            .ok_or_else(|| Error::not_found(format!("content {digest}: not found")))
    }

    pub fn has_content(&self, ns: &str, digest: &Digest) -> Result<bool> {
        Ok(self
            .get::<Info>(&keys::object(ns, keys::CONTENT, digest.as_str()))?
            .is_some())
    }

    pub fn list_content(&self, ns: &str, filter: &Filter) -> Result<Vec<Info>> {
        let all = filter.matches_all();
        self.list::<Info>(&keys::objects(ns, keys::CONTENT), |r| {
            all || filter.matches(&InfoFields(r))
        })
    }

    /// Whether `ns` holds `digest`; if it does and the client holds `lease`, the blob joins the
    /// lease, as containerd's Writer does, so a collection running during the client's work
    /// (an image import finding its blobs already there) cannot take it.
    pub async fn lease_content_if_present(
        &self,
        ns: &str,
        lease: &str,
        digest: &Digest,
    ) -> Result<bool> {
        self.update(|tx| {
            if !tx.exists(&keys::object(ns, keys::CONTENT, digest.as_str()))? {
                return Ok(false);
            }
            add_to_lease(tx, ns, lease, "content", digest.as_str())?;
            Ok(true)
        })
        .await
    }

    /// Record a committed blob in `ns` (and in `lease`, if the client holds one).
    /// AlreadyExists when the namespace already had it, as containerd's Commit answers; the blob
    /// joins the lease all the same.
    pub async fn add_content(
        &self,
        ns: &str,
        digest: &Digest,
        size: i64,
        labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<Info> {
        validate::labels(&labels)?;
        let added = self
            .update(|tx| {
                let key = keys::object(ns, keys::CONTENT, digest.as_str());
                if tx.exists(&key)? {
                    if let Some(lease) = lease {
                        add_to_lease(tx, ns, lease, "content", digest.as_str())?;
                    }
                    return Ok(None);
                }
                tx.ensure_namespace(ns)?;
                if let Some(lease) = lease {
                    add_to_lease(tx, ns, lease, "content", digest.as_str())?;
                }
                let info = new_record(digest, size, labels);
                tx.put(key, &info);
                Ok(Some(info))
            })
            .await?;
        added.ok_or_else(|| Error::exists(format!("content {digest}: already exists")))
    }

    /// A transfer's record of a blob it holds, in one transaction: the blob joins `lease`, a new
    /// record is made with `labels` (returned), or `labels` are merged into the existing one
    /// (written only if that changes it; an empty value removes the key). Visible at once,
    /// durable when the returned [`Pending`](crate::Pending) says so: a transfer makes all of
    /// its records durable together before it answers (see [`Metadata::sync_applied`]).
    pub fn stage_content_record(
        &self,
        ns: &str,
        digest: &Digest,
        size: i64,
        labels: &HashMap<String, String>,
        lease: &str,
    ) -> Result<(Option<Info>, crate::Pending<'_>)> {
        validate::labels(labels)?;
        self.apply(|tx| {
            let key = keys::object(ns, keys::CONTENT, digest.as_str());
            add_to_lease(tx, ns, lease, "content", digest.as_str())?;
            if let Some(mut current) = tx.get::<Info>(&key)? {
                let mut merged = current.labels.clone();
                for (k, v) in labels {
                    validate::set_label(&mut merged, k, v);
                }
                if merged != current.labels {
                    current.labels = merged;
                    current.updated_at = Some(now());
                    tx.put(key, &current);
                }
                return Ok(None);
            }
            tx.ensure_namespace(ns)?;
            let info = new_record(digest, size, labels.clone());
            tx.put(key, &info);
            Ok(Some(info))
        })
    }

    /// Only labels can change (`labels`, `labels.KEY`); no mask replaces all labels.
    pub async fn update_content(&self, ns: &str, info: Info, paths: &[String]) -> Result<Info> {
        let digest = Digest::parse(&info.digest)?;
        validate::labels(&info.labels)?;
        self.update(|tx| {
            let key = keys::object(ns, keys::CONTENT, digest.as_str());
            let mut current: Info = tx
                .get(&key)?
                .ok_or_else(|| Error::not_found(format!("content {digest}: not found")))?;
            if paths.is_empty() {
                current.labels = info.labels.clone();
                current.labels.retain(|_, v| !v.is_empty());
            }
            for path in paths {
                if !validate::apply_label_path(path, &mut current.labels, &info.labels) {
                    return Err(Error::invalid(format!(
                        "cannot update {path:?} field on content info {digest}"
                    )));
                }
            }
            current.updated_at = Some(now());
            tx.put(key, &current);
            Ok(current)
        })
        .await
    }

    /// Remove the blob from `ns`. Returns true when no namespace references it any more, so the
    /// caller may delete the bytes.
    pub async fn remove_content(&self, ns: &str, digest: &Digest) -> Result<bool> {
        self.update(|tx| {
            let key = keys::object(ns, keys::CONTENT, digest.as_str());
            if !tx.exists(&key)? {
                return Err(Error::not_found(format!("content {digest}: not found")));
            }
            tx.delete(key);
            let others = other_namespaces(tx, ns)?;
            Ok(!held_by_any(tx, &others, digest)?)
        })
        .await
    }

    /// Held shared by a commit from the moment it relies on a blob's bytes being in the store
    /// (it committed them, or found them there) until the blob is recorded in its namespace.
    /// The collector unlinks blobs only under `content_sweep_lock`, after looking once more for
    /// a record: so a blob is never unlinked between a commit's look and its record.
    pub async fn content_commit_lock(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.content_lock.clone().read_owned().await
    }

    /// The collector's (and Content.Delete's) side of `content_commit_lock`: held while blobs
    /// no namespace records are unlinked.
    pub async fn content_sweep_lock(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.content_lock.clone().write_owned().await
    }

    /// Spare `digest`'s bytes from the collector until the guard drops. A download holds it
    /// from before it looks for the blob until it has recorded it: the commit lock cannot be held
    /// that long (recording takes it again), and without the pin a collection whose candidates
    /// were marked before the download (the blob of an image removed just before) may unlink the
    /// fresh bytes before they are recorded, again at every retry.
    pub fn pin_content(&self, digest: &Digest) -> ContentPin {
        let mut pins = self.content_pins.lock();
        *pins.entry(digest.to_string()).or_default() += 1;
        ContentPin {
            pins: self.content_pins.clone(),
            digest: digest.to_string(),
        }
    }

    /// Whether any namespace records `digest`, or a writer pinned it: the last look before its
    /// bytes are unlinked.
    pub fn content_referenced(&self, digest: &Digest) -> Result<bool> {
        if self.content_pins.lock().contains_key(digest.as_str()) {
            return Ok(true);
        }
        for ns in self.list_namespaces()? {
            if self.has_content(&ns.name, digest)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Tie an ingest to the caller's lease so a later GC keeps it while the client writes.
    pub async fn lease_ingest(&self, ns: &str, lease: &str, ingest_ref: &str) -> Result<()> {
        self.update(|tx| add_to_lease(tx, ns, lease, "ingests", ingest_ref))
            .await
    }
}

/// Garbage collection's sweep, in the collector's transaction: drop the records of `digests` in
/// `ns`, except those created or updated at or after `marked_at` and those a lease holds. Returns
/// the digests no namespace records any more, whose bytes can go.
pub fn remove_unreferenced_content(
    tx: &mut Tx<'_>,
    ns: &str,
    digests: &[Digest],
    marked_at: std::time::SystemTime,
) -> Result<Vec<Digest>> {
    let marked_at = prost_types::Timestamp::from(marked_at);
    let before = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .is_some_and(|t| (t.seconds, t.nanos) < (marked_at.seconds, marked_at.nanos))
    };
    let others = other_namespaces(tx, ns)?;
    // A lease may have taken the blob since marking (a commit that found it recorded):
    // it holds it now.
    let leases_prefix = keys::objects(ns, keys::LEASES);
    let leases: Vec<String> = tx
        .scan_keys(&leases_prefix)?
        .into_iter()
        .map(|k| String::from_utf8_lossy(&k[leases_prefix.len()..]).into_owned())
        .collect();
    let mut orphaned = Vec::new();
    for digest in digests {
        let key = keys::object(ns, keys::CONTENT, digest.as_str());
        let Some(info) = tx.get::<Info>(&key)? else {
            continue;
        };
        if !(before(&info.created_at) && before(&info.updated_at)) {
            continue;
        }
        let mut leased = false;
        for lease in &leases {
            if tx.exists(&keys::lease_resource(ns, lease, "content", digest.as_str()))? {
                leased = true;
                break;
            }
        }
        if leased {
            continue;
        }
        tx.delete(key);
        if !held_by_any(tx, &others, digest)? {
            orphaned.push(digest.clone());
        }
    }
    Ok(orphaned)
}

/// Every namespace but `ns`.
fn other_namespaces(tx: &Tx<'_>, ns: &str) -> Result<Vec<String>> {
    Ok(tx
        .scan_keys(keys::NAMESPACES)?
        .into_iter()
        .map(|k| String::from_utf8_lossy(&k[keys::NAMESPACES.len()..]).into_owned())
        .filter(|other| other != ns)
        .collect())
}

/// Whether any of `namespaces` still records `digest`: then its bytes must stay on disk.
fn held_by_any(tx: &Tx<'_>, namespaces: &[String], digest: &Digest) -> Result<bool> {
    for other in namespaces {
        if tx.exists(&keys::object(other, keys::CONTENT, digest.as_str()))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A blob's first record in a namespace, created now; an empty label value is no label.
fn new_record(digest: &Digest, size: i64, labels: HashMap<String, String>) -> Info {
    let t = now();
    Info {
        digest: digest.to_string(),
        size,
        created_at: Some(t),
        updated_at: Some(t),
        labels: labels.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
    }
}

fn add_to_lease(tx: &mut Tx<'_>, ns: &str, lease: &str, kind: &str, id: &str) -> Result<()> {
    if !tx.exists(&keys::object(ns, keys::LEASES, lease))? {
        return Err(Error::not_found(format!("lease {lease:?} does not exist")));
    }
    tx.put(keys::lease_resource(ns, lease, kind, id), &());
    Ok(())
}

struct InfoFields<'a>(&'a Info);

impl Adaptor for InfoFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["digest"] => Some(self.0.digest.clone()),
            ["size"] => Some(self.0.size.to_string()),
            ["labels", ..] => label_field(&self.0.labels, path),
            _ => None,
        }
    }
}

/// Pinned digests and their number of holders.
#[derive(Default, Clone)]
pub(crate) struct Pins(Arc<std::sync::Mutex<HashMap<String, usize>>>);

impl Pins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// See `Metadata::pin_content`.
pub struct ContentPin {
    pins: Pins,
    digest: String,
}

impl Drop for ContentPin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock();
        if let Some(n) = pins.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `test` on a store of its own in a temp dir, removed afterwards.
    fn with_store<F: std::future::Future<Output = ()>>(
        name: &str,
        test: impl FnOnce(Metadata) -> F,
    ) {
        let dir = std::env::temp_dir().join(format!("berth-meta-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = Metadata::open(&dir).expect("metadata");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(test(m));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pinned_blob_counts_as_referenced_until_its_last_pin_drops() {
        with_store("pins", pins_hold);
    }

    async fn pins_hold(m: Metadata) {
        let d = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).expect("digest");
        let other = Digest::parse(&format!("sha256:{}", "cd".repeat(32))).expect("digest");
        assert!(!m.content_referenced(&d).expect("look"));

        let first = m.pin_content(&d);
        let second = m.pin_content(&d);
        assert!(m.content_referenced(&d).expect("look"));
        assert!(
            !m.content_referenced(&other).expect("look"),
            "pins are per digest"
        );
        drop(first);
        assert!(m.content_referenced(&d).expect("look"), "one holder left");
        drop(second);
        assert!(!m.content_referenced(&d).expect("look"));

        // A record keeps it referenced with no pin, as before.
        m.add_content("ns", &d, 1, HashMap::new(), None)
            .await
            .expect("record");
        assert!(m.content_referenced(&d).expect("look"));
    }

    #[test]
    fn a_staged_record_joins_the_lease_and_rewrites_only_changed_labels() {
        with_store("stage", staged_records);
    }

    async fn staged_records(m: Metadata) {
        let d = Digest::parse(&format!("sha256:{}", "ef".repeat(32))).expect("digest");
        let lease = berth_api::containerd::services::leases::v1::Lease {
            id: "pull".into(),
            ..Default::default()
        };
        m.create_lease("ns", lease).await.expect("lease");
        let labels = HashMap::from([("a".to_string(), "1".to_string())]);

        let (created, pending) = m
            .stage_content_record("ns", &d, 7, &labels, "pull")
            .expect("stage");
        pending.durable().await.expect("durable");
        let created = created.expect("a new record");
        assert_eq!((created.size, created.labels.clone()), (7, labels.clone()));
        let leased = m.list_lease_resources("ns", "pull").expect("resources");
        assert!(
            leased.iter().any(|r| r.id == d.as_str()),
            "the blob joins the lease: {leased:?}"
        );

        // The same labels again: the record is left as it is (no new update time).
        let (again, pending) = m
            .stage_content_record("ns", &d, 7, &labels, "pull")
            .expect("stage");
        pending.durable().await.expect("durable");
        assert!(again.is_none(), "an existing record is not created again");
        assert_eq!(m.content_info("ns", &d).expect("info"), created);

        // New and emptied keys merge into it; the others stay.
        let (_, pending) = m
            .stage_content_record(
                "ns",
                &d,
                7,
                &HashMap::from([
                    ("b".to_string(), "2".to_string()),
                    ("a".to_string(), String::new()),
                ]),
                "pull",
            )
            .expect("stage");
        pending.durable().await.expect("durable");
        let merged = m.content_info("ns", &d).expect("info");
        assert_eq!(
            merged.labels,
            HashMap::from([("b".to_string(), "2".to_string())])
        );

        // A lease that is not there refuses the record, and nothing changes.
        let other = Digest::parse(&format!("sha256:{}", "01".repeat(32))).expect("digest");
        assert!(m
            .stage_content_record("ns", &other, 1, &labels, "gone")
            .is_err());
        assert!(!m.has_content("ns", &other).expect("look"));

        // Staged writes are durable after one sync.
        let (_, _pending) = m
            .stage_content_record("ns", &other, 1, &labels, "pull")
            .expect("stage");
        let before = m.sync_stats().syncs;
        m.sync_applied().await.expect("sync");
        m.sync_applied().await.expect("nothing left to sync");
        assert_eq!(m.sync_stats().syncs, before + 1);
    }
}
