//! The uncompressed layer stream: media type → decompressor, sha256 + byte/limit accounting, and a
//! producer thread so inflating and hashing overlap with the filesystem writes of extraction.

use std::io::{self, BufReader, Read};
use std::sync::mpsc;

use sha2::{Digest as _, Sha256};

use berth_errdefs::{Error, Result};
use berth_oci::Digest;

/// Size of the chunks handed from the decompression thread to the extractor. Large enough that a
/// typical file is one `write`, small enough that the in-flight memory stays a few MiB.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the threads (bounded so a decompression bomb cannot pile up memory).
const IN_FLIGHT: usize = 4;

/// How the blob is compressed, decided from the media type as containerd 1.6 does
/// (`images.DiffCompression` + `compression.DecompressStream`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    /// `…layer.v1.tar` (and wrapped docker types): read as is, no sniffing.
    None,
    /// gzip/zstd or docker's ambiguous `…diff.tar`: containerd sniffs the magic bytes, so a
    /// mislabelled blob still unpacks; we do the same.
    Sniff,
}

use berth_oci::media_types::{
    DOCKER_LAYER, DOCKER_LAYER_FOREIGN, DOCKER_LAYER_FOREIGN_GZIP, DOCKER_LAYER_GZIP, OCI_LAYER,
    OCI_LAYER_NONDISTRIBUTABLE as OCI_LAYER_ND,
};

/// Map a layer media type to its decompression, or `Unimplemented` like containerd's
/// "no processor for media-type" (errdefs.ErrNotImplemented).
pub(crate) fn compression_for(media_type: &str) -> Result<Compression> {
    let mut parts = media_type.split('+');
    let base = parts.next().unwrap_or_default();
    let mut ext: Vec<&str> = parts.collect();
    ext.sort_unstable();
    let unsupported = || {
        Error::unimplemented(format!(
            "unsupported diff media type {media_type:?}: no processor for media-type"
        ))
    };
    // Encrypted layers need a decryption processor that berth does not have.
    if ext.contains(&"encrypted") {
        return Err(unsupported());
    }
    match base {
        DOCKER_LAYER | DOCKER_LAYER_FOREIGN | DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN_GZIP => {
            if ext.is_empty() {
                Ok(Compression::Sniff)
            } else {
                // "Wrapped" docker type: containerd hands it over uncompressed.
                Ok(Compression::None)
            }
        }
        OCI_LAYER | OCI_LAYER_ND => match ext.last() {
            None => Ok(Compression::None),
            Some(&"gzip") | Some(&"zstd") => Ok(Compression::Sniff),
            Some(_) => Ok(Compression::None),
        },
        _ => Err(unsupported()),
    }
}

/// Open a decompressor over `blob`, sniffing gzip/zstd magic where the media type allows it.
fn decoder<'a, R: Read + 'a>(blob: R, compression: Compression) -> io::Result<Box<dyn Read + 'a>> {
    let mut blob = BufReader::with_capacity(256 << 10, blob);
    if compression == Compression::None {
        return Ok(Box::new(blob));
    }
    // Peek up to 10 bytes; an empty blob is an (empty) uncompressed stream, as in containerd.
    let mut head = [0u8; 10];
    let mut n = 0;
    while n < head.len() {
        match blob.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &head[..n];
    let stream = io::Cursor::new(head.to_vec()).chain(blob);
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        // Multi-member like Go's gzip reader (pigz and friends emit several members).
        let buffered = BufReader::with_capacity(256 << 10, stream);
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
    } else if is_zstd(head) {
        Ok(Box::new(zstd::stream::read::Decoder::new(stream)?))
    } else {
        Ok(Box::new(stream))
    }
}

fn is_zstd(head: &[u8]) -> bool {
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return true;
    }
    // Skippable frames (magic 0x184D2A50..=0x184D2A5F) may precede the first real frame.
    head.len() >= 4
        && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) & 0xFFFF_FFF0 == 0x184D_2A50
}

/// Pull the decompressed stream in `CHUNK`s, counting them against the limit, and hand them
/// over; returns the total size once the stream is exhausted.
///
/// Stops early (and quietly) when the consumer hangs up; reports a limit breach or a
/// decompression error as the next item. Hashing happens on the consumer side: inflating is
/// the slower half, so this thread does nothing else.
pub(crate) fn produce<R: Read>(
    blob: R,
    compression: Compression,
    max_bytes: u64,
    tx: mpsc::SyncSender<Result<Vec<u8>>>,
    recycled: mpsc::Receiver<Vec<u8>>,
) -> Option<u64> {
    let mut total: u64 = 0;
    let mut reader = match decoder(blob, compression) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Err(stream_error(e)));
            return None;
        }
    };
    loop {
        let mut buf = recycled.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
        buf.resize(CHUNK, 0);
        let mut n = 0;
        // Fill the chunk fully (decoders return small pieces) so the consumer sees big writes.
        let res = loop {
            if n == buf.len() {
                break Ok(());
            }
            match reader.read(&mut buf[n..]) {
                Ok(0) => break Ok(()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if n > 0 {
            total = total.saturating_add(n as u64);
            if total > max_bytes {
                let _ = tx.send(Err(Error::invalid(format!(
                    "layer exceeds the uncompressed size limit of {max_bytes} bytes"
                ))));
                return None;
            }
            buf.truncate(n);
            if tx.send(Ok(buf)).is_err() {
                return None; // the extractor gave up; nothing left to do
            }
        }
        if let Err(e) = res {
            let _ = tx.send(Err(stream_error(e)));
            return None;
        }
        if n < CHUNK {
            return Some(total);
        }
    }
}

fn stream_error(e: io::Error) -> Error {
    match e.kind() {
        // Corrupt or truncated gzip/zstd data is the blob's fault, not ours (zstd reports it
        // as `Other`); a failing read of the blob itself keeps its I/O kind.
        io::ErrorKind::InvalidData
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::Other => Error::invalid(format!("invalid layer compression stream: {e}")),
        _ => Error::io("read layer blob", e),
    }
}

type Chunk = Result<Vec<u8>>;

pub(crate) fn channel() -> (mpsc::SyncSender<Chunk>, mpsc::Receiver<Chunk>) {
    mpsc::sync_channel(IN_FLIGHT)
}

/// A pull-style byte source over the producer's chunks (a `BufRead` with our error type) that
/// hashes every chunk as it arrives, so the digest covers exactly the bytes received.
pub(crate) struct ChunkSource {
    rx: mpsc::Receiver<Result<Vec<u8>>>,
    recycle: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    eof: bool,
    hasher: Sha256,
}

impl ChunkSource {
    pub(crate) fn new(rx: mpsc::Receiver<Result<Vec<u8>>>, recycle: mpsc::Sender<Vec<u8>>) -> Self {
        ChunkSource {
            rx,
            recycle,
            cur: Vec::new(),
            pos: 0,
            eof: false,
            hasher: Sha256::new(),
        }
    }

    /// sha256 of everything received; meaningful once `fill` has returned EOF.
    pub(crate) fn digest(&self) -> Digest {
        Digest::from_sha256(&self.hasher.clone().finalize().into())
    }

    /// The unread bytes of the current chunk, fetching the next one if needed; empty at EOF.
    pub(crate) fn fill(&mut self) -> Result<&[u8]> {
        while self.pos == self.cur.len() && !self.eof {
            match self.rx.recv() {
                Ok(Ok(next)) => {
                    self.hasher.update(&next);
                    let old = std::mem::replace(&mut self.cur, next);
                    self.pos = 0;
                    if old.capacity() >= CHUNK {
                        let _ = self.recycle.send(old);
                    }
                }
                Ok(Err(e)) => {
                    self.eof = true;
                    return Err(e);
                }
                // The producer finished (its summary comes from the join).
                Err(mpsc::RecvError) => self.eof = true,
            }
        }
        Ok(&self.cur[self.pos..])
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.cur.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        use Compression::*;
        let ok = [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Sniff),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Sniff),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                None,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Sniff,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Sniff,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar", Sniff),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Sniff),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Sniff,
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar",
                Sniff,
            ),
        ];
        for (mt, want) in ok {
            assert_eq!(compression_for(mt).unwrap(), want, "{mt}");
        }
        for mt in [
            "application/octet-stream",
            "",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.manifest.v1+json",
        ] {
            assert!(
                matches!(compression_for(mt), Err(ref e) if e.kind() == berth_errdefs::Kind::Unimplemented),
                "{mt}"
            );
        }
    }
}
