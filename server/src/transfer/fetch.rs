//! Blobs from a registry into the content store. A blob is written as an ingest (`<ns>/<ref
//! key>`, containerd's name) so an interrupted pull resumes from the ingest's offset with a Range
//! request; it is committed only once the registry client verified its size and digest (and the
//! content store verified them again), then recorded in the namespace with its labels under the
//! transfer's lease. One download per digest runs at a time daemon-wide: a second transfer
//! wanting the same blob waits for the first (`InFlight`) and then records the stored blob.

use super::progress::ref_key;
use super::{Ctx, Transferrer};
use crate::blocking::blocking;
use crate::events::Exchange;
use berth_api::containerd::events::ContentCreate;
use berth_api::containerd::types::Descriptor as ApiDescriptor;
use berth_content::ContentStore;
use berth_errdefs::{Error, Kind, Result};
use berth_metadata::Metadata;
use berth_oci::Digest;
use berth_registry::{Client, Descriptor, Digester, Reference, Resume};
use bytes::Bytes;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How often a running download reports its offset.
const PROGRESS_EVERY: Duration = Duration::from_millis(300);

type Outcome = std::result::Result<(), (Kind, String)>;

/// Downloads in progress by digest, daemon-wide.
#[derive(Default)]
pub struct InFlight {
    map: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
}

enum Join<'a> {
    Leader(Leader<'a>),
    Follower(watch::Receiver<Option<Outcome>>),
}

/// The download of one digest; tells the waiting transfers how it ended, even when dropped
/// half-way (the transfer was cancelled).
struct Leader<'a> {
    inflight: &'a InFlight,
    digest: String,
    tx: watch::Sender<Option<Outcome>>,
}

impl InFlight {
    fn join(&self, digest: &str) -> Join<'_> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(digest) {
            return Join::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(digest.to_string(), rx);
        Join::Leader(Leader {
            inflight: self,
            digest: digest.to_string(),
            tx,
        })
    }

    /// Digests being downloaded right now (tests, introspection).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Leader<'_> {
    fn finish(&self, result: &Result<()>) {
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(e) => Err((e.kind(), e.to_string())),
        };
        let _ = self.tx.send(Some(outcome));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.tx.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(Err((Kind::Canceled, "the download was cancelled".into())));
                true
            } else {
                false
            }
        });
        let mut map = self.inflight.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&self.digest);
    }
}

/// The registry side of one pull.
pub(super) struct Fetcher<'a> {
    pub t: &'a Transferrer,
    pub ctx: &'a Ctx,
    pub client: &'a Client,
    pub reference: &'a Reference,
}

pub fn api_descriptor(d: &Descriptor) -> ApiDescriptor {
    ApiDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

impl Fetcher<'_> {
    /// Record `digest` in the namespace under the lease, merging `labels` into an existing
    /// record's.
    pub async fn record(
        &self,
        digest: &Digest,
        size: i64,
        media_type: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        let (t, ctx) = (self.t, self.ctx);
        record_content(
            &t.meta, &t.content, &t.events, &ctx.ns, &ctx.lease, digest, size, media_type, labels,
        )
        .await
    }

    /// Store a document already fetched and verified (manifest, index, config).
    pub async fn store_bytes(
        &self,
        desc: &Descriptor,
        bytes: Bytes,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        let digest = Digest::parse(&desc.digest)?;
        let size = desc.size as i64;
        // Pinned as a download is (see `fetch_inner`): a collection already unlinking may still
        // take the stored bytes before the record, and then they are written again.
        let _pin = self.t.meta.pin_content(&digest);
        let mut collected = 0;
        loop {
            if !self.t.meta.has_content(&self.ctx.ns, &digest)?
                && self.t.content.blob_size(&digest)? != Some(desc.size)
            {
                let key = format!(
                    "{}/{}",
                    self.ctx.ns,
                    ref_key(&desc.media_type, &desc.digest)
                );
                let (content, d, bytes) = (self.t.content.clone(), digest.clone(), bytes.clone());
                blocking(move || {
                    let mut w = content.writer(&key, size, Some(d.clone()))?;
                    w.write_at(0, &bytes)?;
                    w.commit(size, Some(&d)).map(|_| ())
                })
                .await?;
            }
            match self.record(&digest, size, &desc.media_type, labels).await {
                Err(e) if is_collected(&e) && collected < MAX_COLLECTED => collected += 1,
                other => return other,
            }
        }
    }

    /// Bring one blob into the store (downloading it, waiting for another transfer's download
    /// of it, or finding it there) and record it with `labels`.
    pub async fn fetch(
        &self,
        desc: &Descriptor,
        labels: &HashMap<String, String>,
        parents: &[String],
    ) -> Result<()> {
        self.fetch_growing(desc, labels, parents, None).await
    }

    /// `fetch`, telling `growing` (if any) about the bytes as they land and how it ended.
    pub async fn fetch_growing(
        &self,
        desc: &Descriptor,
        labels: &HashMap<String, String>,
        parents: &[String],
        growing: Option<&std::sync::Arc<Growing>>,
    ) -> Result<()> {
        let result = self.fetch_inner(desc, labels, parents, growing).await;
        if let Some(g) = growing {
            g.finish(&result);
        }
        result
    }

    async fn fetch_inner(
        &self,
        desc: &Descriptor,
        labels: &HashMap<String, String>,
        parents: &[String],
        growing: Option<&std::sync::Arc<Growing>>,
    ) -> Result<()> {
        let digest = Digest::parse(&desc.digest)?;
        let api = api_descriptor(desc);
        let size = desc.size as i64;
        let progress = &self.ctx.progress;
        // No collection that starts unlinking from now on takes this blob before it is recorded.
        // One already unlinking may still take it between our look and our record: the record
        // then fails as collected and the blob is fetched again, once at most.
        let _pin = self.t.meta.pin_content(&digest);
        if self.t.meta.has_content(&self.ctx.ns, &digest)? {
            match self.record(&digest, size, &desc.media_type, labels).await {
                Ok(()) => {
                    progress
                        .blob("already exists", &api, parents, size, size)
                        .await;
                    return Ok(());
                }
                Err(e) if is_collected(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mut waited = false;
        let mut collected = 0;
        loop {
            if self.t.content.blob_size(&digest)? == Some(desc.size) {
                match self.record(&digest, size, &desc.media_type, labels).await {
                    Ok(()) => {
                        let event = if waited { "complete" } else { "already exists" };
                        progress.blob(event, &api, parents, size, size).await;
                        return Ok(());
                    }
                    Err(e) if is_collected(&e) && collected < MAX_COLLECTED => collected += 1,
                    Err(e) => return Err(e),
                }
            }
            match self.t.inflight.join(&desc.digest) {
                Join::Leader(leader) => {
                    let result = self.download(desc, &api, parents, growing).await;
                    leader.finish(&result);
                    drop(leader);
                    result?;
                    match self.record(&digest, size, &desc.media_type, labels).await {
                        Ok(()) => {}
                        Err(e) if is_collected(&e) && collected < MAX_COLLECTED => {
                            collected += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    progress.blob("complete", &api, parents, size, size).await;
                    return Ok(());
                }
                Join::Follower(mut rx) => {
                    if !waited {
                        progress.blob("waiting", &api, parents, 0, size).await;
                    }
                    let outcome = rx
                        .wait_for(Option::is_some)
                        .await
                        .map(|v| v.clone())
                        .ok()
                        .flatten();
                    if let Some(Err((kind, message))) = outcome {
                        if waited {
                            return Err(Error::new(kind, message));
                        }
                    }
                    // Done (or failed once): look again, and download ourselves if need be.
                    waited = true;
                }
            }
        }
    }

    /// Download into the blob's ingest (resuming it) and commit.
    async fn download(
        &self,
        desc: &Descriptor,
        api: &ApiDescriptor,
        parents: &[String],
        growing: Option<&std::sync::Arc<Growing>>,
    ) -> Result<()> {
        let progress = &self.ctx.progress;
        let digest = Digest::parse(&desc.digest)?;
        let size = desc.size as i64;
        let r#ref = ref_key(&desc.media_type, &desc.digest);
        let key = format!("{}/{}", self.ctx.ns, r#ref);
        progress.blob("waiting", api, parents, 0, size).await;
        self.t
            .meta
            .lease_ingest(&self.ctx.ns, &self.ctx.lease, &r#ref)
            .await?;
        let (content, k, d) = (self.t.content.clone(), key.clone(), digest.clone());
        let (writer, resume, data_path) = blocking(move || {
            let w = content.writer(&k, size, Some(d))?;
            let offset = w.status().offset.max(0) as u64;
            let resume = if offset > 0 {
                Some(hash_prefix(&content, &k, offset)?)
            } else {
                None
            };
            Ok((w, resume, content.ingest_data_path(&k)))
        })
        .await?;
        if let Some(g) = growing {
            let offset = resume.as_ref().map_or(0, |r| r.offset);
            g.update(|s| {
                s.file = Some(data_path);
                s.written = offset;
            });
        }
        let growing_writer = growing.cloned();
        if let Some(r) = &resume {
            tracing::debug!(digest = %desc.digest, offset = r.offset, "resuming a download");
        }
        let start_offset = resume.as_ref().map_or(0, |r| r.offset);
        let mut reader = match self.client.fetch_blob(self.reference, desc, resume).await {
            Ok(r) => r,
            Err(e) => return Err(e.into()),
        };
        // Disk writes on a blocking thread, fed chunk by chunk as they arrive.
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let writing = tokio::spawn(blocking(move || {
            let mut w = writer;
            let mut offset = start_offset as i64;
            while let Some(chunk) = rx.blocking_recv() {
                w.write_at(offset, &chunk)?;
                offset += chunk.len() as i64;
                if let Some(g) = &growing_writer {
                    g.update(|s| s.written = offset as u64);
                }
            }
            Ok(w)
        }));
        let mut last = Instant::now();
        let fetched: Result<()> = loop {
            match reader.next_chunk().await {
                Ok(Some(chunk)) => {
                    if tx.send(chunk).await.is_err() {
                        break Ok(()); // the writer failed: its error follows
                    }
                    if last.elapsed() >= PROGRESS_EVERY {
                        last = Instant::now();
                        progress
                            .blob("downloading", api, parents, reader.received() as i64, size)
                            .await;
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        drop(tx);
        let written = writing
            .await
            .map_err(|e| Error::internal(format!("ingest writer: {e}")))?;
        if let Err(e) = fetched {
            drop(written);
            // Bytes that contradict the descriptor are worth nothing to a resume.
            if e.kind() == Kind::FailedPrecondition {
                let (content, k) = (self.t.content.clone(), key.clone());
                let _ = blocking(move || content.abort(&k)).await;
            }
            return Err(e);
        }
        let writer = written?;
        let d = digest.clone();
        blocking(move || writer.commit(size, Some(&d)).map(|_| ())).await?;
        Ok(())
    }
}

/// The digest state of the `offset` bytes an ingest already holds.
fn hash_prefix(content: &berth_content::ContentStore, key: &str, offset: u64) -> Result<Resume> {
    let mut file = content.open_ingest_data(key)?.take(offset);
    let mut digester = Digester::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(format!("read ingest {key:?}"), e))?;
        if n == 0 {
            break;
        }
        digester.update(&buf[..n]);
        read += n as u64;
    }
    if read != offset {
        return Err(Error::internal(format!(
            "ingest {key:?} holds {read} bytes, its status says {offset}"
        )));
    }
    Ok(Resume { offset, digester })
}

/// A blob being downloaded, readable while it grows: the unpack of a layer whose parent is
/// ready starts on the ingest's bytes as they land instead of after the download (nothing is
/// committed before the blob is verified: the unpack waits for the download's result before
/// committing its snapshot).
#[derive(Default)]
pub struct Growing {
    state: Mutex<GrowState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct GrowState {
    /// The ingest's data file, once the download opened it.
    file: Option<std::path::PathBuf>,
    /// Bytes in the file so far.
    written: u64,
    /// The download ended: Ok (the blob is stored) or why not. Set by every way `fetch` ends.
    done: Option<std::result::Result<(), String>>,
}

impl Growing {
    fn update(&self, f: impl FnOnce(&mut GrowState)) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        self.changed.notify_all();
    }

    pub(super) fn finish(&self, result: &Result<()>) {
        self.update(|s| {
            s.done = Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        });
    }

    /// Whether the download has ended (then read the stored blob instead).
    pub(super) fn ended(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .done
            .is_some()
    }

    /// A reader of the blob's bytes as they arrive. Blocking: call on a blocking thread. None
    /// when the download ended before it opened an ingest this reader could follow.
    pub(super) fn reader(self: &std::sync::Arc<Self>) -> Option<GrowingReader> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(path) = &s.file {
                // Opened before any rename: the descriptor follows the inode into blobs/.
                let file = std::fs::File::open(path).ok()?;
                return Some(GrowingReader {
                    growing: self.clone(),
                    file,
                    pos: 0,
                });
            }
            if s.done.is_some() {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

pub(super) struct GrowingReader {
    growing: std::sync::Arc<Growing>,
    file: std::fs::File,
    pos: u64,
}

impl Read for GrowingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            let (written, done) = {
                let s = self.growing.state.lock().unwrap_or_else(|e| e.into_inner());
                (s.written, s.done.clone())
            };
            if self.pos < written {
                let want = buf.len().min((written - self.pos) as usize);
                let n = self.file.read_at(&mut buf[..want], self.pos)?;
                if n == 0 {
                    return Err(std::io::Error::other("the ingest shrank while being read"));
                }
                self.pos += n as u64;
                return Ok(n);
            }
            match done {
                Some(Ok(())) => return Ok(0),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => {
                    let s = self.growing.state.lock().unwrap_or_else(|e| e.into_inner());
                    if s.written == written && s.done.is_none() {
                        let _unused = self
                            .growing
                            .changed
                            .wait(s)
                            .unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
    }
}

/// How many times one fetch stores a blob again after the collector took it. The fetch pins its
/// digest first, so only a collection already unlinking at that moment can take it: one retry
/// is all a fetch needs; the second is slack.
const MAX_COLLECTED: u32 = 2;

/// Record a stored blob in `ns` under `lease` (a `/content/create` event when it is new), merging
/// `labels` into the record the namespace already has: pulls and archive imports alike. Staged:
/// the transfer makes its records durable together before it answers (`Transferrer::transfer`),
/// one sync instead of one per blob. NotFound (see `is_collected`) when the collector unlinked
/// the blob before it could be recorded: the caller stores it again.
#[allow(clippy::too_many_arguments)]
pub(super) async fn record_content(
    meta: &Metadata,
    content: &ContentStore,
    events: &Exchange,
    ns: &str,
    lease: &str,
    digest: &Digest,
    size: i64,
    media_type: &str,
    labels: &HashMap<String, String>,
) -> Result<()> {
    // The bytes are looked at and recorded under the commit lock: the collector cannot unlink
    // them in between, and a blob it unlinked just before is not recorded.
    let _recording = meta.content_commit_lock().await;
    if content.blob_size(digest)? != Some(size as u64) {
        return Err(Error::not_found(format!("{COLLECTED}: {digest}")));
    }
    // Made durable with the transfer's other records before it answers (`sync_applied`).
    let (created, _pending) = meta.stage_content_record(ns, digest, size, labels, lease)?;
    if created.is_some() {
        events.publish(
            ns,
            "/content/create",
            &ContentCreate {
                digest: digest.to_string(),
                size,
                media_type: media_type.to_string(),
            },
        );
    }
    Ok(())
}

const COLLECTED: &str = "blob collected before it was recorded";

/// Whether `record_content` failed because the blob went to the collector first.
pub(super) fn is_collected(e: &Error) -> bool {
    e.is_not_found() && e.message().starts_with(COLLECTED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    #[test]
    fn a_growing_reader_follows_the_writer_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let mut file = std::fs::File::create(&path).unwrap();
        let g = Arc::new(Growing::default());
        let reading = {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                g.reader()
                    .expect("a reader")
                    .read_to_end(&mut out)
                    .map(|_| out)
            })
        };
        g.update(|s| s.file = Some(path.clone()));
        let mut want = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; 1000 + i as usize];
            file.write_all(&chunk).unwrap();
            want.extend_from_slice(&chunk);
            let n = want.len() as u64;
            g.update(|s| s.written = n);
        }
        g.finish(&Ok(()));
        assert_eq!(reading.join().unwrap().unwrap(), want);
    }

    #[test]
    fn a_growing_reader_fails_with_the_download() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"partial").unwrap();
        let g = Arc::new(Growing::default());
        g.update(|s| {
            s.file = Some(path.clone());
            s.written = 7;
        });
        let mut r = g.reader().unwrap();
        g.finish(&Err(Error::precondition("digest mismatch")));
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert_eq!(out, b"partial");
        // A download that ended before opening an ingest has nothing to follow.
        let ended = Arc::new(Growing::default());
        ended.finish(&Ok(()));
        assert!(ended.reader().is_none());
    }
}
