//! Image layers: applying a layer tar to a directory and computing one from two directories.
//!
//! `apply_layer` follows containerd 1.6's `diff/apply` + `archive.Apply`: decompress by media
//! type, hash the uncompressed stream (the diff ID), and extract with OCI whiteouts converted
//! either to overlay metadata (write straight into an upperdir) or to deletions (apply onto a full
//! copy). Unlike containerd it bounds a decompression bomb (`Limits`) and resolves every entry
//! through fds inside the target (see `fsops`), so a hostile archive cannot reach the host.
//!
//! Nothing here fsyncs: the caller syncs the filesystem once (syncfs) before committing.

mod apply;
mod compute;
mod fsops;
mod stream;
mod tarfmt;

#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use berth_errdefs::{Error, Result};
use berth_oci::Digest;

/// How OCI whiteouts in a layer are realised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteouts {
    /// Overlay upperdir: `.wh.NAME` becomes a 0:0 character device NAME and `.wh..wh..opq`
    /// the xattr `trusted.overlay.opaque=y` on its directory.
    Overlay,
    /// A full copy of the parent: `.wh.NAME` deletes NAME, `.wh..wh..opq` empties the directory
    /// of everything this layer did not itself write there.
    Native,
}

/// Decompression-bomb and inode-bomb bounds, checked while streaming. Also berthd's `[diff]`
/// config section, so the limits a user sets are exactly the ones applied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest uncompressed layer Apply accepts: bounds a decompression bomb.
    pub max_uncompressed_bytes: u64,
    /// Most tar entries in one layer: bounds an inode bomb.
    pub max_entries: u64,
}

impl Limits {
    /// Check the limits as a config section named `section`; the error names the key.
    pub fn validate(&self, section: &str) -> Result<()> {
        if self.max_uncompressed_bytes == 0 {
            return Err(Error::invalid(format!(
                "{section}.max_uncompressed_bytes must be greater than 0"
            )));
        }
        if self.max_entries == 0 {
            return Err(Error::invalid(format!(
                "{section}.max_entries must be greater than 0"
            )));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed_bytes: 64 << 30,
            max_entries: 10_000_000,
        }
    }
}

/// The diff ID (sha256) and length of the uncompressed tar stream, trailing padding included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub diff_id: Digest,
    pub size: u64,
    /// Directories the layer implies (an entry's parent it does not list itself), relative to
    /// the target, parents first. Applied without its lower layers, these carry default
    /// attributes until [`inherit_implied_dirs`] gives them the lower layers'.
    pub implied_dirs: Vec<PathBuf>,
}

/// Apply a layer blob (compressed as `media_type` says) onto `target`.
///
/// Accepted media types are containerd's: `application/vnd.oci.image.layer.v1.tar` and
/// `…nondistributable.v1.tar`, each optionally `+gzip`/`+zstd`, and Docker's
/// `…rootfs.diff.tar[.gzip]` / `…rootfs.foreign.diff.tar[.gzip]`; gzip and zstd are detected by
/// magic bytes where containerd does so. Anything else is `Error::Unimplemented`. A malformed or
/// hostile archive is `Error::invalid("invalid archive: …")`, a breached limit
/// `InvalidArgument` naming the limit; on any error `target` is left partially written and the
/// caller discards it. Nothing outside `target` is ever created, modified, chmod'ed or chown'ed.
pub fn apply_layer<R: Read + Send>(
    blob: R,
    media_type: &str,
    target: &Path,
    whiteouts: Whiteouts,
    limits: &Limits,
) -> Result<Applied> {
    apply_layer_with_parents(blob, media_type, target, &[], whiteouts, limits)
}

/// `apply_layer` for an overlay upperdir whose lower layers are `parents` (topmost first, as in
/// the `lowerdir=` option): a directory the layer implies but does not list is created with the
/// owner, mode, times and xattrs of the same directory in the first parent that has it, rather
/// than root-owned 0755 (containerd's `WithParents`). Without this, e.g. a file added under
/// `/tmp` would make the merged `/tmp` lose its sticky 1777.
pub fn apply_layer_with_parents<R: Read + Send>(
    blob: R,
    media_type: &str,
    target: &Path,
    parents: &[&Path],
    whiteouts: Whiteouts,
    limits: &Limits,
) -> Result<Applied> {
    let compression = stream::compression_for(media_type)?;
    let root = fsops::Root::open(target)?;
    let parents = parents
        .iter()
        .map(|p| fsops::Root::open(p))
        .collect::<Result<Vec<_>>>()?;
    let mut applier = apply::Applier::new(root, parents, whiteouts);
    let (tx, rx) = stream::channel();
    let (recycle_tx, recycle_rx) = mpsc::channel();
    let max_bytes = limits.max_uncompressed_bytes;
    thread::scope(|s| {
        // Inflate + hash on a second core while this one does the filesystem work.
        let producer = thread::Builder::new()
            .name("layer-inflate".into())
            .spawn_scoped(s, move || {
                stream::produce(blob, compression, max_bytes, tx, recycle_rx)
            })
            .map_err(|e| Error::io("spawn layer decompression thread", e))?;
        let mut src = stream::ChunkSource::new(rx, recycle_tx);
        let res = applier.run(&mut src, limits);
        let diff_id = src.digest();
        // Hanging up makes a producer that is still going stop at its next chunk.
        drop(src);
        let size = producer
            .join()
            .map_err(|_| Error::internal("layer decompression thread panicked"))?;
        res?;
        // `run` only succeeds after reading to EOF, and EOF follows the producer's success.
        let size = size.ok_or_else(|| Error::internal("layer stream ended without a size"))?;
        let implied_dirs = applier
            .implied_dirs()
            .into_iter()
            .map(|n| PathBuf::from(std::ffi::OsString::from_vec(n)))
            .collect();
        Ok(Applied {
            diff_id,
            size,
            implied_dirs,
        })
    })
}

/// For a layer applied into `target` without its lower layers (`apply_layer` on a bare overlay
/// upperdir, to be committed onto its parent afterwards): give the directories it implied
/// (`Applied::implied_dirs`) the owner, mode, times and xattrs of the same directory in the first
/// of `parents` (the lower layers, topmost first) that has it, which is what
/// [`apply_layer_with_parents`] gives them at creation. Call it once the parents are final.
pub fn inherit_implied_dirs(target: &Path, implied: &[PathBuf], parents: &[&Path]) -> Result<()> {
    if implied.is_empty() || parents.is_empty() {
        return Ok(());
    }
    let root = fsops::Root::open(target)?;
    let parents = parents
        .iter()
        .map(|p| fsops::Root::open(p))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<Vec<u8>> = implied
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    apply::inherit_implied(&root, &names, &parents)
}

/// How a computed layer is compressed, i.e. which of the OCI layer media types it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    /// `application/vnd.oci.image.layer.v1.tar`
    None,
    /// `application/vnd.oci.image.layer.v1.tar+gzip`
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd` (zstd's default level, one frame)
    Zstd,
}

impl LayerCompression {
    /// The compression a layer of `media_type` is written with, for the media types a layer
    /// can be computed as (containerd's Diff accepts the same three); `None` for any other.
    pub fn for_media_type(media_type: &str) -> Option<LayerCompression> {
        use berth_oci::media_types::{OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD};
        match media_type {
            OCI_LAYER => Some(LayerCompression::None),
            OCI_LAYER_GZIP => Some(LayerCompression::Gzip),
            OCI_LAYER_ZSTD => Some(LayerCompression::Zstd),
            _ => None,
        }
    }

    /// The OCI media type of a layer written with this compression.
    pub fn media_type(self) -> &'static str {
        use berth_oci::media_types::{OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD};
        match self {
            LayerCompression::None => OCI_LAYER,
            LayerCompression::Gzip => OCI_LAYER_GZIP,
            LayerCompression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// What a layer computation may know beyond its two trees.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiffOptions<'a> {
    /// DiffRequest.source_date_epoch, in seconds since the epoch: entries modified later are
    /// dated this, whiteouts the epoch itself, as containerd 2 writes a reproducible layer.
    pub source_date_epoch: Option<i64>,
    /// The overlay upperdir under `upper` when `upper` is an overlay mounted on exactly `lower`'s
    /// tree: only the paths it names can differ, so the walk visits those and never lists or
    /// stats the rest of the lower tree. The output is the full double walk's, byte for byte.
    pub overlay_upperdir: Option<&'a Path>,
}

/// Write the changes that turn `lower` into `upper` as an OCI layer tar into `out`, compressed
/// as `compression` says; returns (digest of what was written, its size, diff ID of the uncompressed tar).
///
/// Both are complete trees: `lower` is the parent's merged view and `upper` the container's
/// merged view (for overlay, the mounted overlay, not the bare upperdir), both read-only and
/// quiescent. As containerd's walking differ: a double walk comparing mode, owner, rdev, file
/// capabilities, size and mtime (content when both mtimes lack nanoseconds); deletions become
/// `.wh.NAME` entries; parents of every change are included; hardlinks are kept as links;
/// sockets are skipped; only `security.capability` is carried among xattrs. Opaque markers are
/// never needed by a double walk (a replaced directory shows as per-entry whiteouts).
pub fn compute_layer<W: Write>(
    lower: &Path,
    upper: &Path,
    compression: LayerCompression,
    out: W,
) -> Result<(Digest, u64, Digest)> {
    compute::compute(lower, upper, compression, &DiffOptions::default(), out)
}

/// [`compute_layer`] with what else is known: a reproducible date, an overlay upperdir to
/// guide the walk.
pub fn compute_layer_with<W: Write>(
    lower: &Path,
    upper: &Path,
    compression: LayerCompression,
    options: &DiffOptions<'_>,
    out: W,
) -> Result<(Digest, u64, Digest)> {
    compute::compute(lower, upper, compression, options, out)
}
