//! Garbage collection, as containerd's: mark everything reachable from the roots of each
//! namespace, then sweep content and snapshots nothing reaches.
//!
//! Roots: images (their target), containers (their snapshot), leases (their resources), and
//! anything labelled `containerd.io/gc.root`. References: `containerd.io/gc.ref.content*` labels
//! name blobs, `containerd.io/gc.ref.snapshot.<snapshotter>` labels name snapshots, and a snapshot
//! keeps its parent. A namespace is marked and its records swept in one metadata transaction, so
//! writers wait for its marking (as containerd's write lock makes them); the blobs' bytes are
//! unlinked afterwards under the content sweep lock, which commits hold shared from finding or
//! writing a blob to recording it, and only when no namespace records them by then.

use crate::blocking::blocking;
use crate::snapshots::{NamespaceSnapshots, Snapshotters};
use berth_content::ContentStore;
use berth_errdefs::Result;
use berth_metadata::filters::Filter;
use berth_metadata::Metadata;
use berth_oci::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub const ROOT_LABEL: &str = "containerd.io/gc.root";
const CONTENT_REF: &str = "containerd.io/gc.ref.content";
const SNAPSHOT_REF: &str = "containerd.io/gc.ref.snapshot.";

/// containerd's gc scheduler, with its defaults. A scheduled (not `sync`) collection waits at
/// least the schedule delay for more deletions to batch; and collections may take at most the
/// pause threshold of the time between them (a collection that took 4 ms is followed by the next
/// no sooner than 200 ms after it), so a busy `ctr run --rm` loop pays one collection per
/// pause budget, not one per run. This many deletions since the last collection skip both waits.
const SCHEDULE_DELAY: Duration = Duration::from_millis(100);
const PAUSE_THRESHOLD: f64 = 0.02;
const DELETION_THRESHOLD: u64 = 100;
/// The pause budget's wait is bounded: a slow collection does not postpone the next for minutes.
const MAX_INTERVAL: Duration = Duration::from_secs(10);

pub struct Collector {
    meta: Arc<Metadata>,
    content: Arc<ContentStore>,
    snapshotters: Snapshotters,
    /// One collection at a time.
    running: tokio::sync::Mutex<()>,
    wake: tokio::sync::Notify,
    /// Deletions since the last collection began.
    deletions: std::sync::atomic::AtomicU64,
    /// When the last collection ended and how long collections take (a moving average).
    timing: std::sync::Mutex<Timing>,
    /// Whether this process's collections have looked at every blob file on disk yet (see
    /// `collect`).
    disk_swept: std::sync::atomic::AtomicBool,
    /// When this collector was made: blob files written since are this process's own.
    started: SystemTime,
}

#[derive(Default)]
struct Timing {
    last_end: Option<Instant>,
    average: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub blobs_removed: usize,
    pub snapshots_removed: usize,
}

impl Collector {
    pub fn new(
        meta: Arc<Metadata>,
        content: Arc<ContentStore>,
        snapshotters: Snapshotters,
    ) -> Self {
        Collector {
            meta,
            content,
            snapshotters,
            running: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            deletions: std::sync::atomic::AtomicU64::new(0),
            timing: std::sync::Mutex::new(Timing::default()),
            disk_swept: std::sync::atomic::AtomicBool::new(false),
            started: SystemTime::now(),
        }
    }

    /// Ask for a collection soon (after a deletion); returns at once.
    pub fn schedule(&self) {
        let deletions = self
            .deletions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if deletions == 1 || deletions >= DELETION_THRESHOLD {
            self.wake.notify_one();
        }
    }

    /// The background loop that serves `schedule`.
    pub async fn run_scheduled(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(SCHEDULE_DELAY).await;
            // The rest of the pause budget, unless deletions piled up past the threshold.
            let budget = self.wait_for_budget();
            let deadline = tokio::time::Instant::now() + budget;
            while self.pending() < DELETION_THRESHOLD {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = self.wake.notified() => {}
                }
            }
            if self.pending() == 0 {
                continue; // a synchronous collection took them meanwhile
            }
            if let Err(e) = self.collect().await {
                tracing::warn!(error = %e, "garbage collection failed");
            }
        }
    }

    fn pending(&self) -> u64 {
        self.deletions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How much longer the pause threshold asks the next collection to wait.
    fn wait_for_budget(&self) -> Duration {
        let t = self.timing.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last_end) = t.last_end else {
            return Duration::ZERO;
        };
        let interval = t.average.div_f64(PAUSE_THRESHOLD).min(MAX_INTERVAL);
        interval.saturating_sub(last_end.elapsed())
    }

    fn record_timing(&self, took: Duration) {
        let mut t = self.timing.lock().unwrap_or_else(|p| p.into_inner());
        // An exponential moving average: recent collections count most.
        t.average = if t.last_end.is_none() {
            took
        } else {
            (t.average * 3 + took) / 4
        };
        t.last_end = Some(Instant::now());
    }

    /// Collect now and return what went (`sync` deletions wait for this).
    pub async fn collect(&self) -> Result<Stats> {
        let started = Instant::now();
        let marked_at = SystemTime::now();
        // Listed before taking the lock: a proxy snapshotter's listing may take up to its bound,
        // and must not hold up other collections (and the synchronous deletes waiting on them)
        // meanwhile. A listing older than another collection's sweep is still safe: only what it
        // lists may be swept, and removing what is already gone is ignored.
        let snapshotters = self.snapshotters.clone();
        let mut snapshots = blocking(move || snapshotters.list_by_namespace()).await?;
        let _one_at_a_time = self.running.lock().await;
        // Deletions from here on are seen by this collection or scheduled for the next.
        self.deletions
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.meta.expire_leases(marked_at).await?;
        let mut stats = Stats::default();
        for ns in self.meta.list_namespaces()? {
            let seen = snapshots.remove(&ns.name).unwrap_or_default();
            let (meta, name) = (self.meta.clone(), ns.name.clone());
            let (live, seen, dead, orphaned) = blocking(move || {
                // Marking and dropping the records is one transaction, as containerd's (it holds
                // its write lock throughout): no write lands in between, so a reference moving
                // from one root to another while marking (a lease's blob taken by a new image,
                // then the lease dropped) is never missed. Reads every record of the namespace:
                // off the async threads.
                let runtime = tokio::runtime::Handle::current();
                let ((live, dead, orphaned), pending) = meta.apply(|tx| {
                    let live = mark(&meta, &name, &seen)?;
                    let all = Filter::parse_all::<&str>(&[])?;
                    let dead: Vec<Digest> = meta
                        .list_content(&name, &all)?
                        .into_iter()
                        .filter(|i| !live.content.contains(&i.digest))
                        .filter_map(|i| Digest::parse(&i.digest).ok())
                        .collect();
                    let orphaned = berth_metadata::content::remove_unreferenced_content(
                        tx, &name, &dead, marked_at,
                    )?;
                    Ok((live, dead.len(), orphaned))
                })?;
                runtime.block_on(pending.durable())?;
                Ok((live, seen, dead, orphaned))
            })
            .await?;
            unlink_unrecorded(&self.meta, &self.content, orphaned).await?;
            stats.blobs_removed += dead;
            stats.snapshots_removed += self
                .sweep_snapshots(&ns.name, &live, &seen, marked_at)
                .await?;
        }
        // A crash can leave a blob file no record names: killed after a collection dropped the
        // records but before it unlinked the bytes, or after a commit renamed the file into
        // place but before it recorded it. Only a crash makes them, so the first collection of
        // each process looks at every file once (crash trials found both). Only at files written
        // before this process started: a newer one may be a commit on its way to its record.
        if !self.disk_swept.load(std::sync::atomic::Ordering::Relaxed) {
            let (content, started) = (self.content.clone(), self.started);
            let digests = blocking(move || content.blobs_written_before(started)).await?;
            unlink_unrecorded(&self.meta, &self.content, digests).await?;
            self.disk_swept
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if stats != Stats::default() {
            tracing::info!(
                blobs = stats.blobs_removed,
                snapshots = stats.snapshots_removed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "garbage collected"
            );
        }
        self.record_timing(started.elapsed());
        tracing::debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            blobs = stats.blobs_removed,
            snapshots = stats.snapshots_removed,
            "collection done"
        );
        Ok(stats)
    }

    /// Remove unreachable snapshots, children before parents.
    async fn sweep_snapshots(
        &self,
        ns: &str,
        live: &Live,
        seen: &NamespaceSnapshots,
        marked_at: SystemTime,
    ) -> Result<usize> {
        let snapshotters = self.snapshotters.clone();
        let ns = ns.to_string();
        let candidates: Vec<(String, Vec<berth_snapshotter::Info>)> = seen
            .iter()
            .map(|(name, infos)| {
                let dead = infos
                    .values()
                    .filter(|i| !live.snapshots.contains(&(name.clone(), i.name.clone())))
                    .filter(|i| i.created < marked_at && i.updated < marked_at)
                    .cloned()
                    .collect();
                (name.clone(), dead)
            })
            .collect();
        if candidates.iter().all(|(_, dead)| dead.is_empty()) {
            return Ok(0);
        }
        // A snapshot leased since marking (an unpack keeping a chain it found) is spared: the
        // leases are read again under the sweep lock, which such an unpack holds shared from
        // before its lease until its look.
        let _no_new_users = self.meta.snapshot_sweep_lock().await;
        let meta = self.meta.clone();
        blocking(move || {
            let leased = meta.leased_snapshots(&ns)?;
            let mut removed = 0;
            for (name, dead) in candidates {
                let mut dead: Vec<_> = dead
                    .into_iter()
                    .filter(|i| !leased.contains(&(name.clone(), i.name.clone())))
                    .collect();
                let scoped = snapshotters.scoped(&name, &ns)?;
                // Removing leaves first; a snapshot whose children are still there waits a round.
                while !dead.is_empty() {
                    let before = dead.len();
                    let mut waiting = Vec::new();
                    for info in dead {
                        match scoped.remove(&info.name) {
                            Ok(()) => removed += 1,
                            Err(e) if e.kind() == berth_errdefs::Kind::FailedPrecondition => {
                                waiting.push(info)
                            }
                            Err(e) if e.is_not_found() => {}
                            Err(e) => return Err(e),
                        }
                    }
                    if waiting.len() == before {
                        break; // the rest have live children
                    }
                    dead = waiting;
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// Unlink the bytes of `digests`, whose records were just dropped, unless a commit recorded one
/// again meanwhile: looked at under the sweep lock, which a commit holds shared from finding a
/// blob to recording it, so no record can appear between the look and the unlink.
pub async fn unlink_unrecorded(
    meta: &Arc<Metadata>,
    content: &Arc<ContentStore>,
    digests: Vec<Digest>,
) -> Result<()> {
    if digests.is_empty() {
        return Ok(());
    }
    let _no_commits = meta.content_sweep_lock().await;
    let (meta, content) = (meta.clone(), content.clone());
    blocking(move || {
        for digest in &digests {
            if meta.content_referenced(digest)? {
                continue;
            }
            match content.delete_blob(digest) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(%digest, error = %e, "could not remove collected blob"),
            }
        }
        Ok(())
    })
    .await
}

/// Returns what is reachable from the roots of `ns`, whose snapshots were listed (`seen`)
/// before marking began: only those may be swept, since a snapshot created later may have
/// roots marking did not see. Reads the store: call off the async threads.
fn mark(meta: &Metadata, ns: &str, snapshots: &NamespaceSnapshots) -> Result<Live> {
    let all = Filter::parse_all::<&str>(&[])?;
    let mut live = Live::default();
    let mut content_labels = HashMap::new();
    for info in meta.list_content(ns, &all)? {
        if info.labels.contains_key(ROOT_LABEL) {
            live.content_queue.push(info.digest.clone());
        }
        content_labels.insert(info.digest, info.labels);
    }
    for image in meta.list_images(ns, &all)? {
        if let Some(t) = &image.target {
            live.content_queue.push(t.digest.clone());
        }
        live.refs_from(&image.labels);
    }
    for c in meta.container_summaries(ns)? {
        if !c.snapshot_key.is_empty() {
            live.snapshot_queue
                .push((c.snapshotter.clone(), c.snapshot_key.clone()));
        }
        live.refs_from(&c.labels);
    }
    for lease in meta.list_leases(ns, &all)? {
        for r in meta.list_lease_resources(ns, &lease.id)? {
            match r.r#type.as_str() {
                "content" => live.content_queue.push(r.id),
                t => {
                    if let Some(s) = t.strip_prefix("snapshots/") {
                        live.snapshot_queue.push((s.to_string(), r.id));
                    }
                }
            }
        }
    }
    for (snapshotter, infos) in snapshots {
        for (key, info) in infos {
            if info.labels.contains_key(ROOT_LABEL) {
                live.snapshot_queue.push((snapshotter.clone(), key.clone()));
            }
        }
    }
    // Follow references until nothing new is reached.
    loop {
        if let Some(digest) = live.content_queue.pop() {
            if live.content.insert(digest.clone()) {
                if let Some(labels) = content_labels.get(&digest) {
                    live.refs_from(labels);
                }
            }
        } else if let Some((snapshotter, key)) = live.snapshot_queue.pop() {
            let id = (snapshotter, key);
            if live.snapshots.insert(id.clone()) {
                if let Some(info) = snapshots.get(&id.0).and_then(|m| m.get(&id.1)) {
                    if !info.parent.is_empty() {
                        live.snapshot_queue
                            .push((id.0.clone(), info.parent.clone()));
                    }
                    live.refs_from(&info.labels);
                }
            }
        } else {
            break;
        }
    }
    Ok(live)
}

#[derive(Default)]
struct Live {
    content: HashSet<String>,
    snapshots: HashSet<(String, String)>,
    content_queue: Vec<String>,
    snapshot_queue: Vec<(String, String)>,
}

impl Live {
    /// Queue what `containerd.io/gc.ref.*` labels point at.
    fn refs_from(&mut self, labels: &HashMap<String, String>) {
        for (k, v) in labels {
            if k.starts_with(CONTENT_REF) {
                self.content_queue.push(v.clone());
            } else if let Some(rest) = k.strip_prefix(SNAPSHOT_REF) {
                // `…snapshot.<snapshotter>` or `…snapshot.<snapshotter>/<anything>`
                let snapshotter = rest.split('/').next().unwrap_or(rest);
                self.snapshot_queue
                    .push((snapshotter.to_string(), v.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unlink after a sweep spares a blob a writer pinned (a download between its look and
    /// its record), and takes it once the pin is gone and nothing records it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_unlink_spares_a_pinned_blob_until_its_pin_drops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(Metadata::open(&dir.path().join("meta")).expect("metadata"));
        let content = Arc::new(ContentStore::open(&dir.path().join("content")).expect("store"));
        let mut w = content.writer("pinned", 5, None).expect("writer");
        w.write_at(0, b"bytes").expect("write");
        let digest = w.commit(5, None).expect("commit").digest;

        let pin = meta.pin_content(&digest);
        unlink_unrecorded(&meta, &content, vec![digest.clone()])
            .await
            .expect("unlink");
        assert_eq!(content.blob_size(&digest).expect("look"), Some(5), "pinned");

        drop(pin);
        unlink_unrecorded(&meta, &content, vec![digest.clone()])
            .await
            .expect("unlink");
        assert_eq!(content.blob_size(&digest).expect("look"), None, "unpinned");
    }

    /// The first collection removes blob files no record names that were written before the
    /// process started (a crash's leftovers), and spares ones written since: those may be
    /// commits on their way to their records (Diff.Compare lost its layer to this once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_collection_takes_only_blob_files_older_than_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(Metadata::open(&dir.path().join("meta")).expect("metadata"));
        let content = Arc::new(ContentStore::open(&dir.path().join("content")).expect("store"));
        let store = |key: &str, bytes: &[u8]| {
            let mut w = content
                .writer(key, bytes.len() as i64, None)
                .expect("writer");
            w.write_at(0, bytes).expect("write");
            w.commit(bytes.len() as i64, None).expect("commit").digest
        };
        let leftover = store("leftover", b"from before a crash");
        // File times have the kernel's tick as their grain: step past it.
        std::thread::sleep(Duration::from_millis(50));
        let collector = Collector::new(meta.clone(), content.clone(), Snapshotters::default());
        std::thread::sleep(Duration::from_millis(50));
        let fresh = store("fresh", b"committed, not yet recorded");

        collector.collect().await.expect("collect");
        assert_eq!(
            content.blob_size(&leftover).expect("look"),
            None,
            "leftover"
        );
        assert!(content.blob_size(&fresh).expect("look").is_some(), "fresh");
    }
}
