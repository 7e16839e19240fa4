//! Verification while bytes move: `BlobReader` checks a download's length and digest as it
//! streams and holds its final bytes back until both are right, so a caller that commits on
//! the end of the stream never commits a wrong blob; `checked_upload` does the same for a push.

use crate::client::Progress;
use crate::error::Error;
use crate::manifest::Descriptor;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Only sha256 blobs are fetched or pushed (what registries and containerd use).
pub(crate) fn check_supported(digest: &str) -> Result<(), Error> {
    crate::reference::parse_digest(digest).map_err(Error::InvalidManifest)?;
    if !digest.starts_with("sha256:") {
        return Err(Error::InvalidManifest(format!(
            "{digest}: only sha256 digests are supported"
        )));
    }
    Ok(())
}

/// A running sha256.
#[derive(Clone, Default)]
pub struct Digester(Sha256);

impl Digester {
    pub fn new() -> Digester {
        Digester(Sha256::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}

/// Where a resumed download starts: the caller's ingest holds `offset` bytes, and `digester`
/// has already hashed them (containerd's writer keeps that state; or re-read the prefix).
#[derive(Clone)]
pub struct Resume {
    pub offset: u64,
    pub digester: Digester,
}

impl Resume {
    /// Resume after `prefix`, the bytes already held.
    pub fn from_prefix(prefix: &[u8]) -> Resume {
        let mut digester = Digester::new();
        digester.update(prefix);
        Resume {
            offset: prefix.len() as u64,
            digester,
        }
    }
}

/// A verified blob download. `next_chunk` yields bytes after `offset()` in order and returns
/// `Ok(None)` only once every byte arrived and the digest matched; any error means the
/// caller's partial data may be kept for a resume but must not be committed.
pub struct BlobReader {
    /// None when the caller already holds every byte (nothing to ask the registry).
    resp: Option<reqwest::Response>,
    what: String,
    expected_digest: String,
    size: u64,
    offset: u64,
    received: u64,
    skip: u64,
    digester: Option<Digester>,
    held: Option<Bytes>,
    done: bool,
    timeout: Duration,
    progress: Arc<Progress>,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("what", &self.what)
            .field("offset", &self.offset)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl BlobReader {
    /// Check the response's status and headers against the descriptor before any byte is read.
    pub(crate) fn start(
        resp: reqwest::Response,
        desc: &Descriptor,
        what: &str,
        resume: Option<Resume>,
        timeout: Duration,
        progress: Arc<Progress>,
    ) -> Result<BlobReader, Error> {
        let status = resp.status();
        let shown = what.to_string();
        let (offset, digester) = match resume {
            Some(r) => (r.offset, r.digester),
            None => (0, Digester::new()),
        };
        let expected_len;
        let (start, skip) = match status.as_u16() {
            200 => {
                // A whole body (a registry that ignores Range): skip what the caller holds.
                expected_len = desc.size;
                (offset, offset)
            }
            206 if offset > 0 => {
                let range = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let first = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, _)| a.trim().parse::<u64>().ok());
                if first != Some(offset) {
                    return Err(Error::Protocol {
                        url: shown,
                        message: format!(
                            "asked for bytes from {offset}, got Content-Range {range:?}"
                        ),
                    });
                }
                expected_len = desc.size - offset;
                (offset, 0)
            }
            404 => return Err(Error::NotFound(shown)),
            401 => return Err(Error::Unauthorized(shown)),
            403 => return Err(Error::Denied(shown)),
            s => {
                return Err(Error::Status {
                    url: shown,
                    status: s,
                    detail: String::new(),
                })
            }
        };
        if let Some(l) = crate::client::header_length(&resp) {
            if l != expected_len {
                return Err(Error::SizeMismatch {
                    what: what.to_string(),
                    expected: expected_len,
                    actual: l,
                });
            }
        }
        Ok(BlobReader {
            resp: Some(resp),
            what: what.to_string(),
            expected_digest: desc.digest.clone(),
            size: desc.size,
            offset: start,
            received: start,
            skip,
            digester: Some(digester),
            held: None,
            done: false,
            timeout,
            progress,
            permit: None,
        })
    }

    /// A reader for a resume whose prefix is already the whole blob: it only checks the digest.
    pub(crate) fn complete(desc: &Descriptor, what: &str, resume: Resume) -> BlobReader {
        BlobReader {
            resp: None,
            what: what.to_string(),
            expected_digest: desc.digest.clone(),
            size: desc.size,
            offset: resume.offset,
            received: resume.offset,
            skip: 0,
            digester: Some(resume.digester),
            held: None,
            done: false,
            timeout: Duration::from_secs(1),
            progress: Progress::new(),
            permit: None,
        }
    }

    /// The blob offset of the first byte this reader yields.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes of the blob accounted for so far, the resumed prefix included.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next bytes; `Ok(None)` at the verified end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(resp) = self.resp.as_mut() else {
                return self.finish();
            };
            let chunk = tokio::time::timeout(self.timeout, resp.chunk())
                .await
                .map_err(|_| {
                    self.done = true;
                    Error::Timeout {
                        what: self.what.clone(),
                        after: self.timeout,
                    }
                })?
                .map_err(|e| {
                    self.done = true;
                    Error::Http {
                        url: self.what.clone(),
                        source: e.without_url(),
                    }
                })?;
            self.progress.bump();
            match chunk {
                Some(mut b) => {
                    // HTTP/2 may end a stream with an empty DATA frame; it must not replace
                    // the held last bytes.
                    if b.is_empty() {
                        continue;
                    }
                    if self.skip > 0 {
                        let n = (self.skip.min(b.len() as u64)) as usize;
                        let _ = b.split_to(n);
                        self.skip -= n as u64;
                        if b.is_empty() {
                            continue;
                        }
                    }
                    let total = self.received + b.len() as u64;
                    if total > self.size {
                        self.done = true;
                        return Err(Error::SizeMismatch {
                            what: self.what.clone(),
                            expected: self.size,
                            actual: total,
                        });
                    }
                    self.received = total;
                    if let Some(d) = self.digester.as_mut() {
                        d.update(&b);
                    }
                    if self.received == self.size {
                        // The last bytes wait for the end of the body and the digest.
                        self.held = Some(b);
                        continue;
                    }
                    return Ok(Some(b));
                }
                None => return self.finish(),
            }
        }
    }

    /// The end of the body: every byte there and the digest right, or an error.
    fn finish(&mut self) -> Result<Option<Bytes>, Error> {
        self.done = true;
        if self.skip > 0 || self.received < self.size {
            return Err(Error::SizeMismatch {
                what: self.what.clone(),
                expected: self.size,
                actual: self.received,
            });
        }
        let actual = self
            .digester
            .take()
            .map(Digester::finish)
            .unwrap_or_default();
        if actual != self.expected_digest {
            self.held = None;
            return Err(Error::DigestMismatch {
                what: self.what.clone(),
                expected: self.expected_digest.clone(),
                actual,
            });
        }
        Ok(self.held.take())
    }
}

/// What a checked upload stream found, read after the request.
pub(crate) struct UploadCheck(Arc<Mutex<Option<Error>>>);

impl UploadCheck {
    pub fn result(&self) -> Result<(), Error> {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A request body from `source` that counts and hashes what it sends, and fails (aborting the
/// request, so the registry commits nothing) on too many or too few bytes or a wrong digest.
pub(crate) fn checked_upload(
    source: crate::client::BlobSource,
    desc: &Descriptor,
    what: &str,
    progress: Arc<Progress>,
) -> (reqwest::Body, UploadCheck) {
    let stream: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> = match source
    {
        crate::client::BlobSource::Bytes(b) => {
            Box::pin(futures_util::stream::once(async move { Ok(b) }))
        }
        crate::client::BlobSource::Stream(s) => s,
    };
    let slot = Arc::new(Mutex::new(None));
    let check = UploadCheck(slot.clone());
    struct State {
        stream: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
        digester: Option<Digester>,
        sent: u64,
        size: u64,
        digest: String,
        what: String,
        slot: Arc<Mutex<Option<Error>>>,
        progress: Arc<Progress>,
    }
    let state = State {
        stream,
        digester: Some(Digester::new()),
        sent: 0,
        size: desc.size,
        digest: desc.digest.clone(),
        what: what.to_string(),
        slot,
        progress,
    };
    let fail = |st: &State, e: Error| {
        let msg = e.to_string();
        *st.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        std::io::Error::other(msg)
    };
    let body = futures_util::stream::unfold(Some(state), move |st| async move {
        let mut st = st?;
        match st.stream.next().await {
            Some(Ok(b)) => {
                st.sent += b.len() as u64;
                st.progress.bump();
                if st.sent > st.size {
                    let e = Error::SizeMismatch {
                        what: st.what.clone(),
                        expected: st.size,
                        actual: st.sent,
                    };
                    return Some((Err(fail(&st, e)), None));
                }
                if let Some(d) = st.digester.as_mut() {
                    d.update(&b);
                }
                if st.sent == st.size {
                    let actual = st.digester.take().map(Digester::finish).unwrap_or_default();
                    if actual != st.digest {
                        let e = Error::DigestMismatch {
                            what: st.what.clone(),
                            expected: st.digest.clone(),
                            actual,
                        };
                        return Some((Err(fail(&st, e)), None));
                    }
                }
                Some((Ok(b), Some(st)))
            }
            Some(Err(e)) => {
                let err = Error::io(format!("{}: read the blob to push", st.what), e);
                Some((Err(fail(&st, err)), None))
            }
            None if st.sent < st.size => {
                let e = Error::SizeMismatch {
                    what: st.what.clone(),
                    expected: st.size,
                    actual: st.sent,
                };
                Some((Err(fail(&st, e)), None))
            }
            None => None,
        }
    });
    (reqwest::Body::wrap_stream(body), check)
}
