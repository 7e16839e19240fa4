//! Import: one pass over the tar, every regular entry streamed into an ingest (entries named
//! `blobs/<alg>/<hex>` verified against their name), then the index taken from the OCI layout
//! or built from docker's `manifest.json` exactly as containerd's `ImportIndex` builds it, then
//! a walk from the index under the platform filter checking that every blob it needs is there.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{self, Cursor, Read};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncRead;
use tokio_util::io::SyncIoBridge;

use berth_content::Committed;
use berth_errdefs::{Error, Kind, Result};
use berth_oci::Digest;

use crate::json::{
    self, validate_media_type, Descriptor, DockerArchiveEntry, DockerManifest, ImageLayout, Index,
    Manifest, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME,
};
use crate::platform::{Platform, PlatformMatcher};
use crate::reference::{oci_reference_name, Named};
use crate::{ContentSink, Limits, Progress, ProgressFn};

const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const DOCKER_MANIFEST_FILE: &str = "manifest.json";
const LAYOUT_VERSION: &str = "1.0.0";
const CHUNK: usize = 1 << 20;

/// How to import.
#[derive(Clone, Default)]
pub struct ImportOptions {
    /// Put before every ingest key (containerd's refs `tar-<entry>` and `manifest-<digest>`):
    /// berthd's `<namespace>/` plus something unique to the transfer.
    pub ingest_prefix: String,
    /// Which manifests of an index to walk and check. containerd's image store: `All` unless
    /// platforms are given.
    pub platforms: Option<PlatformMatcher>,
    pub limits: Limits,
    /// gzip the uncompressed layers of a docker archive (containerd's `WithImportCompression`,
    /// `ctr images import --compress-blobs`). berth's gzip bytes are not Go's, so such
    /// manifests' digests differ from containerd's.
    pub force_compress: bool,
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for ImportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportOptions")
            .field("ingest_prefix", &self.ingest_prefix)
            .field("platforms", &self.platforms)
            .field("limits", &self.limits)
            .field("force_compress", &self.force_compress)
            .finish_non_exhaustive()
    }
}

/// What an import stored.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The archive's index: its index.json, or the index built for a docker archive.
    pub index: Descriptor,
    /// The index's entries as written, annotations included: the image targets.
    pub manifests: Vec<Descriptor>,
    /// Every document walked (index, manifests, nested indexes) with all its children, in walk
    /// order: what containerd labels `containerd.io/gc.ref.content.*` so the collector keeps
    /// the children while the document lives.
    pub walked: Vec<(Descriptor, Vec<Descriptor>)>,
}

/// containerd's reference translators for an index entry's `org.opencontainers.image.ref.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefTranslator {
    /// Use the annotation as it is.
    None,
    /// `AddRefPrefix(image)`: a bare tag becomes `image:tag`, a full reference stays.
    AddPrefix(String),
    /// `FilterRefPrefix(image)`: as AddPrefix, but a full reference outside `image` is dropped.
    FilterPrefix(String),
}

impl RefTranslator {
    pub fn translate(&self, r: &str) -> String {
        let (image, check) = match self {
            RefTranslator::None => return r.to_owned(),
            RefTranslator::AddPrefix(i) => (i, false),
            RefTranslator::FilterPrefix(i) => (i, true),
        };
        if image.is_empty() {
            return String::new();
        }
        if r.contains(['/', ':', '@']) {
            if check && !is_image_prefix(r, image) {
                return String::new();
            }
            return r.to_owned();
        }
        format!("{image}:{r}")
    }
}

fn is_image_prefix(s: &str, prefix: &str) -> bool {
    match s.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with(['/', ':', '@']),
        None => false,
    }
}

/// containerd's `imageName`: `io.containerd.image.name` wins; otherwise the OCI ref name
/// through the translator; empty when the entry names no image.
pub fn image_name(annotations: &BTreeMap<String, String>, t: &RefTranslator) -> String {
    if let Some(n) = annotations
        .get(ANNOTATION_IMAGE_NAME)
        .filter(|n| !n.is_empty())
    {
        return n.clone();
    }
    match annotations
        .get(ANNOTATION_REF_NAME)
        .filter(|n| !n.is_empty())
    {
        Some(r) => t.translate(r),
        None => String::new(),
    }
}

impl Imported {
    /// Image names and their targets, as `ctr images import` names them: one per index entry
    /// that carries a name after translation.
    pub fn images(&self, t: &RefTranslator) -> Vec<(String, Descriptor)> {
        self.manifests
            .iter()
            .filter_map(|m| {
                let name = image_name(&m.annotations, t);
                (!name.is_empty()).then(|| (name, m.clone()))
            })
            .collect()
    }
}

/// Import an archive from an async byte stream. The tar is read, hashed and written on a
/// blocking thread; the returned future ends when the archive is stored or refused.
pub async fn import<R, S>(reader: R, sink: S, opts: ImportOptions) -> Result<Imported>
where
    R: AsyncRead + Send + Unpin + 'static,
    S: ContentSink + 'static,
{
    let bridge = SyncIoBridge::new(reader);
    tokio::task::spawn_blocking(move || import_blocking(bridge, &sink, &opts))
        .await
        .map_err(|e| Error::internal(format!("import task failed: {e}")))?
}

/// Import from a synchronous reader (on a thread that may block).
pub fn import_blocking<R: Read>(
    reader: R,
    sink: &dyn ContentSink,
    opts: &ImportOptions,
) -> Result<Imported> {
    let mut state = Importer {
        sink,
        opts,
        open_ingest: None,
    };
    let result = state.run(reader);
    if let Some(key) = state.open_ingest.take() {
        if let Err(e) = sink.abort(&key) {
            tracing::warn!(key, error = %e, "could not abort the ingest of a failed import");
        }
    }
    result
}

struct Importer<'a> {
    sink: &'a dyn ContentSink,
    opts: &'a ImportOptions,
    /// The ingest being written, aborted if the import fails.
    open_ingest: Option<String>,
}

/// What the tar held, by cleaned entry name.
#[derive(Default)]
struct Entries {
    layout: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
    blobs: BTreeMap<String, (Digest, u64)>,
    /// Symlink name → its target, resolved inside the archive.
    symlinks: BTreeMap<String, String>,
}

impl Importer<'_> {
    fn run<R: Read>(&mut self, reader: R) -> Result<Imported> {
        // Tar headers come 512 bytes at a time; each read of an async stream is a round trip
        // through the runtime, so read ahead.
        let reader = decompress(io::BufReader::with_capacity(CHUNK, reader))?;
        let entries = self.read_tar(reader)?;
        let index = if let Some(layout) = entries.layout.as_deref() {
            let layout: ImageLayout = serde_json::from_slice(layout)
                .map_err(|e| Error::invalid(format!("archive: invalid oci-layout: {e}")))?;
            if layout.version.is_empty() {
                self.docker_index(&entries)?
            } else if layout.version != LAYOUT_VERSION {
                return Err(Error::invalid(format!(
                    "archive: unsupported OCI version {}",
                    layout.version
                )));
            } else {
                let (digest, size) = entries.blobs.get(INDEX_FILE).cloned().ok_or_else(|| {
                    Error::invalid(format!(
                        "archive: missing index.json in OCI layout {LAYOUT_VERSION}"
                    ))
                })?;
                Descriptor::new(json::OCI_INDEX, digest, size)
            }
        } else {
            self.docker_index(&entries)?
        };
        self.walk_from(index)
    }

    fn limits(&self) -> &Limits {
        &self.opts.limits
    }

    fn read_tar(&mut self, reader: Box<dyn Read + '_>) -> Result<Entries> {
        let mut archive = tar::Archive::new(reader);
        let mut out = Entries::default();
        let mut seen: HashSet<String> = HashSet::new();
        let mut count = 0u64;
        let entries = archive.entries().map_err(|e| bad_tar("read", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad_tar("read entry", e))?;
            count += 1;
            if count > self.limits().max_entries {
                return Err(Error::invalid(format!(
                    "archive: more than {} entries",
                    self.limits().max_entries
                )));
            }
            let kind = entry.header().entry_type();
            // A PAX global header's name is whatever the writing tool chose (bsdtar: an
            // absolute /tmp path); it names nothing in the archive.
            if kind.is_dir() || kind.is_pax_global_extensions() {
                continue;
            }
            let raw = entry.path_bytes().into_owned();
            let name = clean_name(&raw)?;
            // Names are never paths here, but an entry "under" a symlink means something
            // different to every tool that extracts the archive: refuse it.
            if let Some(parent) = ancestors(&name).find(|a| out.symlinks.contains_key(*a)) {
                return Err(Error::invalid(format!(
                    "archive: entry {name:?} lies under the symlink {parent:?}"
                )));
            }
            if kind.is_symlink() {
                let link = entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                let target = resolve_link(&name, &link)?;
                if !seen.insert(name.clone()) {
                    return Err(duplicate(&name));
                }
                out.symlinks.insert(name, target);
                continue;
            }
            if !kind.is_file() {
                // Hard links, devices, FIFOs: containerd's importer ignores them too.
                tracing::debug!(name, "archive entry type ignored");
                continue;
            }
            if name == "." {
                return Err(Error::invalid("archive: a file entry without a name"));
            }
            if !seen.insert(name.clone()) {
                return Err(duplicate(&name));
            }
            let size = entry.size();
            match name.as_str() {
                LAYOUT_FILE => out.layout = Some(self.read_small(&name, &mut entry, size)?),
                DOCKER_MANIFEST_FILE => {
                    out.docker_manifest = Some(self.read_small(&name, &mut entry, size)?)
                }
                _ => {
                    let digest = self.ingest_entry(&name, &mut entry, size)?;
                    out.blobs.insert(name, (digest, size));
                }
            }
        }
        Ok(out)
    }

    /// A small JSON entry held in memory, bounded.
    fn read_small(&self, name: &str, r: &mut impl Read, size: u64) -> Result<Vec<u8>> {
        let max = self.limits().max_json_bytes;
        if size > max {
            return Err(Error::invalid(format!(
                "archive: {name} is {size} bytes, more than the {max} allowed"
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.take(size)
            .read_to_end(&mut buf)
            .map_err(|e| bad_tar(&format!("read {name}"), e))?;
        if buf.len() as u64 != size {
            return Err(truncated(name));
        }
        Ok(buf)
    }

    /// Stream one entry into the store; its name is its expected digest under `blobs/`.
    fn ingest_entry(&mut self, name: &str, r: &mut impl Read, size: u64) -> Result<Digest> {
        let expected = expected_digest(name)?;
        if name == INDEX_FILE && size > self.limits().max_json_bytes {
            return Err(Error::invalid(format!(
                "archive: index.json is {size} bytes, more than the {} allowed",
                self.limits().max_json_bytes
            )));
        }
        if let Some(d) = &expected {
            if self.sink.size(d)? == Some(size) {
                // Already stored: hash the entry anyway, so an archive lying about a blob fails
                // the same way whatever the store holds.
                let got = hash_all(r, size, name)?;
                check_name(name, d, &got)?;
                return self.committed(name, got, size, true);
            }
        }
        let key = format!("{}tar-{name}", self.opts.ingest_prefix);
        let mut w = self.sink.writer(&key, size, expected.clone())?;
        self.open_ingest = Some(key);
        let mut buf = vec![0u8; CHUNK.min(size.max(1) as usize)];
        let mut offset = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(bad_tar(&format!("read {name}"), e)),
            };
            w.write_at(offset as i64, &buf[..n])?;
            offset += n as u64;
        }
        if offset != size {
            return Err(truncated(name));
        }
        let total = i64::try_from(size).unwrap_or(i64::MAX);
        let written = w.digest();
        if let Some(d) = &expected {
            check_name(name, d, &written)?;
        }
        let c = w.commit(total, expected.as_ref()).map_err(|e| {
            if e.kind() == Kind::FailedPrecondition {
                Error::invalid(format!("archive: entry {name:?}: {}", e.message()))
            } else {
                e
            }
        })?;
        self.open_ingest = None;
        self.sink.committed(&c, None)?;
        self.report(
            if c.already_existed {
                "already exists"
            } else {
                "saved"
            },
            name,
            &c,
        );
        Ok(c.digest)
    }

    fn committed(&self, name: &str, digest: Digest, size: u64, existed: bool) -> Result<Digest> {
        let c = Committed {
            digest,
            size,
            already_existed: existed,
        };
        self.sink.committed(&c, None)?;
        self.report("already exists", name, &c);
        Ok(c.digest)
    }

    fn report(&self, event: &'static str, name: &str, c: &Committed) {
        if let Some(p) = &self.opts.progress {
            p(Progress {
                event,
                name: name.to_owned(),
                digest: c.digest.clone(),
                size: c.size,
            });
        }
    }

    /// Store a document berth made (a docker archive's manifest or index) under containerd's
    /// ref `manifest-<digest>`.
    fn write_document(&mut self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let digest = Digest::of_bytes(bytes);
        let size = bytes.len() as u64;
        let desc = Descriptor::new(media_type, digest.clone(), size);
        if self.sink.size(&digest)? == Some(size) {
            self.committed(&format!("manifest-{digest}"), digest, size, true)?;
            return Ok(desc);
        }
        let key = format!("{}manifest-{digest}", self.opts.ingest_prefix);
        let mut w = self.sink.writer(&key, size, Some(digest.clone()))?;
        self.open_ingest = Some(key.clone());
        w.write_at(0, bytes)?;
        let c = w.commit(size as i64, Some(&digest))?;
        self.open_ingest = None;
        self.sink.committed(&c, None)?;
        self.report("saved", &key, &c);
        Ok(desc)
    }

    /// containerd's importer for docker archives (`docker save`, Docker v1.1/v1.2).
    fn docker_index(&mut self, entries: &Entries) -> Result<Descriptor> {
        let Some(raw) = &entries.docker_manifest else {
            return Err(Error::invalid("archive: unrecognized image format"));
        };
        let mfsts: Vec<DockerArchiveEntry> = serde_json::from_slice(raw)
            .map_err(|e| Error::invalid(format!("archive: invalid manifest.json: {e}")))?;
        if mfsts.len() > self.limits().max_children {
            return Err(Error::invalid(format!(
                "archive: manifest.json lists {} images, more than {}",
                mfsts.len(),
                self.limits().max_children
            )));
        }
        let mut blobs = entries.blobs.clone();
        for (name, target) in &entries.symlinks {
            let Some(found) = entries.blobs.get(target) else {
                return Err(Error::invalid(format!(
                    "archive: no target for symlink layer from {name:?} to {target:?}"
                )));
            };
            blobs.insert(name.clone(), found.clone());
        }
        let lookup = |what: &str, name: &str| {
            blobs.get(name).cloned().ok_or_else(|| {
                Error::invalid(format!("archive: {what} {name:?} not found in the archive"))
            })
        };
        let mut manifests = Vec::new();
        for m in &mfsts {
            let (digest, size) = lookup("image config", &m.config)?;
            let config = Descriptor::new(json::DOCKER_CONFIG, digest, size);
            let files = m.layers.as_deref().unwrap_or_default();
            if files.len() > self.limits().max_children {
                return Err(Error::invalid(format!(
                    "archive: image {:?} has {} layers, more than {}",
                    m.config,
                    files.len(),
                    self.limits().max_children
                )));
            }
            let mut layers = Vec::with_capacity(files.len());
            for f in files {
                let (digest, size) = lookup("layer", f)?;
                layers.push(self.resolve_layer(digest, size)?);
            }
            let doc = DockerManifest {
                schema_version: 2,
                media_type: json::DOCKER_MANIFEST,
                config: &config,
                layers: &layers,
            };
            let bytes = json::to_go_json(&doc)?;
            let mut desc = self.write_document(json::DOCKER_MANIFEST, &bytes)?;
            desc.platform = Some(self.config_platform(&config)?);
            match m.repo_tags.as_deref() {
                None | Some([]) => manifests.push(desc),
                Some(tags) => {
                    for tag in tags {
                        let normalized = Named::parse_docker_ref(tag)?.to_string();
                        let mut d = desc.clone();
                        d.annotations = BTreeMap::from([
                            (
                                ANNOTATION_REF_NAME.to_owned(),
                                oci_reference_name(&normalized),
                            ),
                            (ANNOTATION_IMAGE_NAME.to_owned(), normalized),
                        ]);
                        manifests.push(d);
                    }
                }
            }
        }
        let index = Index {
            schema_version: 2,
            media_type: String::new(),
            manifests: (!manifests.is_empty()).then_some(manifests),
            annotations: BTreeMap::new(),
        };
        let bytes = json::to_go_json(&index)?;
        self.write_document(json::OCI_INDEX, &bytes)
    }

    /// containerd's `resolveLayers` for one layer: a compressed blob the store already has for
    /// it, else the archive's blob (gzip-compressed first when asked), typed by sniffing.
    fn resolve_layer(&mut self, digest: Digest, size: u64) -> Result<Descriptor> {
        if let Some((d, n)) = self.sink.compressed_of(&digest)? {
            let media_type = self.layer_media_type(&d)?;
            return Ok(Descriptor::new(media_type, d, n));
        }
        let media_type = self.layer_media_type(&digest)?;
        if self.opts.force_compress && media_type == berth_oci::media_types::DOCKER_LAYER {
            let (d, n) = self.compress(&digest)?;
            return Ok(Descriptor::new(
                berth_oci::media_types::DOCKER_LAYER_GZIP,
                d,
                n,
            ));
        }
        Ok(Descriptor::new(media_type, digest, size))
    }

    /// gzip a stored layer into a new blob under containerd's ref
    /// `compress-blob-sha256-<hex>`, recorded with the digest it uncompresses to.
    fn compress(&mut self, digest: &Digest) -> Result<(Digest, u64)> {
        let key = format!(
            "{}compress-blob-sha256-{}",
            self.opts.ingest_prefix,
            digest.hex()
        );
        let w = self.sink.writer(&key, 0, None)?;
        self.open_ingest = Some(key.clone());
        let mut src = self.sink.open(digest)?;
        let mut gz = flate2::write::GzEncoder::new(
            IngestWriter { w, offset: 0 },
            flate2::Compression::default(),
        );
        io::copy(&mut src, &mut gz).map_err(|e| Error::io(format!("compress {digest}"), e))?;
        let IngestWriter { w, offset } = gz
            .finish()
            .map_err(|e| Error::io(format!("compress {digest}"), e))?;
        let c = w.commit(offset as i64, None)?;
        self.open_ingest = None;
        self.sink.committed(&c, Some(digest))?;
        self.report("saved", &key, &c);
        Ok((c.digest, c.size))
    }

    /// containerd sniffs a docker layer: gzip and zstd magic both say "gzip" (as it does),
    /// anything else is an uncompressed tar.
    fn layer_media_type(&self, digest: &Digest) -> Result<&'static str> {
        let mut head = [0u8; 10];
        let mut f = self.sink.open(digest)?;
        let n = read_up_to(&mut f, &mut head).map_err(|e| Error::io("sniff layer", e))?;
        Ok(if is_compressed(&head[..n]) {
            berth_oci::media_types::DOCKER_LAYER_GZIP
        } else {
            berth_oci::media_types::DOCKER_LAYER
        })
    }

    /// The platform in an image config, normalised (containerd's `ConfigPlatform`).
    fn config_platform(&self, config: &Descriptor) -> Result<Platform> {
        let bytes = self.read_document(config)?;
        let p: Platform = serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid(format!(
                "archive: unable to resolve platform from config {}: {e}",
                config.digest
            ))
        })?;
        Ok(p.normalize())
    }

    /// A document from the store, bounded and checked against its descriptor.
    fn read_document(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let max = self.limits().max_json_bytes;
        if desc.size < 0 || desc.len() > max {
            return Err(Error::invalid(format!(
                "archive: {} {} has size {}, outside 0..={max}",
                desc.media_type, desc.digest, desc.size
            )));
        }
        let f = self.sink.open(&desc.digest).map_err(|e| missing(desc, e))?;
        let mut buf = Vec::with_capacity(desc.len() as usize);
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {}", desc.digest), e))?;
        if buf.len() as u64 != desc.len() {
            return Err(Error::invalid(format!(
                "archive: {} is {} bytes, its descriptor says {}",
                desc.digest,
                buf.len(),
                desc.size
            )));
        }
        Ok(buf)
    }

    /// Walk from the index as containerd's import does (children of every document; only
    /// manifests the platform filter takes are followed), refusing what is missing or wrong.
    fn walk_from(&mut self, index: Descriptor) -> Result<Imported> {
        let mut walked = Vec::new();
        let mut seen = BTreeSet::new();
        let top = self.children(&index)?;
        self.walk(&index, top.clone(), 0, &mut walked, &mut seen)?;
        Ok(Imported {
            index,
            manifests: top,
            walked,
        })
    }

    fn children(&self, desc: &Descriptor) -> Result<Vec<Descriptor>> {
        let bytes = self.read_document(desc)?;
        validate_media_type(&bytes, &desc.media_type, &desc.digest)?;
        let max = self.limits().max_children;
        let children = if json::is_index(&desc.media_type) {
            let idx: Index = serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(format!("archive: invalid index {}: {e}", desc.digest))
            })?;
            idx.manifests.unwrap_or_default()
        } else {
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(format!("archive: invalid manifest {}: {e}", desc.digest))
            })?;
            let mut c = vec![m.config];
            c.extend(m.layers.unwrap_or_default());
            c
        };
        if children.len() > max {
            return Err(Error::invalid(format!(
                "archive: {} has {} children, more than {max}",
                desc.digest,
                children.len()
            )));
        }
        if let Some(bad) = children.iter().find(|c| c.size < 0) {
            return Err(Error::invalid(format!(
                "archive: {} lists {} with negative size",
                desc.digest, bad.digest
            )));
        }
        Ok(children)
    }

    fn walk(
        &mut self,
        desc: &Descriptor,
        children: Vec<Descriptor>,
        depth: usize,
        walked: &mut Vec<(Descriptor, Vec<Descriptor>)>,
        seen: &mut BTreeSet<Digest>,
    ) -> Result<()> {
        if depth > self.limits().max_depth {
            return Err(Error::invalid(format!(
                "archive: indexes nested more than {} deep",
                self.limits().max_depth
            )));
        }
        walked.push((desc.clone(), children.clone()));
        let matcher = self.opts.platforms.as_ref();
        for child in children {
            if json::is_index(&child.media_type) || json::is_manifest(&child.media_type) {
                let selected = match (&child.platform, matcher) {
                    (Some(p), Some(m)) => m.matches(p),
                    _ => true,
                };
                if !selected || !seen.insert(child.digest.clone()) {
                    continue;
                }
                let grandchildren = self.children(&child)?;
                self.walk(&child, grandchildren, depth + 1, walked, seen)?;
            } else if !json::is_non_distributable(&child.media_type) {
                // Foreign layers are absent by design; everything else must have come in.
                match self.sink.size(&child.digest)? {
                    Some(n) if n == child.len() => {}
                    Some(n) => {
                        return Err(Error::invalid(format!(
                            "archive: blob {} is {n} bytes, {} says {}",
                            child.digest, desc.digest, child.size
                        )))
                    }
                    None => {
                        return Err(Error::invalid(format!(
                            "archive: blob {} referenced by {} is missing",
                            child.digest, desc.digest
                        )))
                    }
                }
            }
        }
        Ok(())
    }
}

/// `io::Write` onto an ingest, for the gzip encoder.
struct IngestWriter {
    w: berth_content::Writer,
    offset: u64,
}

impl io::Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w
            .write_at(self.offset as i64, buf)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.offset += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn missing(desc: &Descriptor, e: Error) -> Error {
    if e.is_not_found() {
        Error::invalid(format!(
            "archive: {} {} is missing",
            desc.media_type, desc.digest
        ))
    } else {
        e
    }
}

/// containerd accepts the stream gzip- or zstd-compressed, or plain.
fn decompress<'a, R: Read + 'a>(mut reader: R) -> Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 10];
    let n = read_up_to(&mut reader, &mut head).map_err(|e| bad_tar("read", e))?;
    let head = head[..n].to_vec();
    let whole = Cursor::new(head.clone()).chain(reader);
    Ok(if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Box::new(flate2::read::MultiGzDecoder::new(whole))
    } else if is_zstd(&head) {
        Box::new(zstd::stream::read::Decoder::new(whole).map_err(|e| bad_tar("zstd", e))?)
    } else {
        Box::new(whole)
    })
}

fn is_zstd(head: &[u8]) -> bool {
    head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (head.len() >= 8
            && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) & 0xFFFF_FFF0
                == 0x184D_2A50)
}

fn is_compressed(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b, 0x08]) || is_zstd(head)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn hash_all(r: &mut impl Read, size: u64, name: &str) -> Result<Digest> {
    let mut h = Sha256::new();
    let copied = io::copy(r, &mut h).map_err(|e| bad_tar(&format!("read {name}"), e))?;
    if copied != size {
        return Err(truncated(name));
    }
    Ok(Digest::from_sha256(&h.finalize().into()))
}

/// Go's `path.Clean` on an entry name, refusing what could only be an attack: absolute names,
/// `..`, NUL, names that are not UTF-8.
fn clean_name(raw: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(raw)
        .map_err(|_| Error::invalid("archive: an entry name is not UTF-8"))?;
    if s.starts_with('/') || s.contains('\0') {
        return Err(Error::invalid(format!(
            "archive: entry name {s:?} is absolute"
        )));
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::invalid(format!(
                    "archive: entry name {s:?} leaves the archive"
                )))
            }
            c => parts.push(c),
        }
    }
    Ok(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

/// A symlink's target inside the archive (containerd joins it to the link's directory).
fn resolve_link(name: &str, link: &[u8]) -> Result<String> {
    let l = std::str::from_utf8(link)
        .map_err(|_| Error::invalid(format!("archive: symlink {name:?} target is not UTF-8")))?;
    if l.is_empty() || l.starts_with('/') || l.contains('\0') {
        return Err(Error::invalid(format!(
            "archive: symlink {name:?} points outside the archive ({l:?})"
        )));
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    for c in l.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(Error::invalid(format!(
                        "archive: symlink {name:?} points outside the archive ({l:?})"
                    )));
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('/').map(move |(i, _)| &name[..i])
}

/// `blobs/<alg>/<hex>` names its digest; anything else under `blobs/` is refused.
fn expected_digest(name: &str) -> Result<Option<Digest>> {
    let Some(rest) = name.strip_prefix("blobs/") else {
        return Ok(None);
    };
    let Some((alg, hex)) = rest.split_once('/') else {
        return Err(Error::invalid(format!(
            "archive: blob entry {name:?} is not blobs/<algorithm>/<encoded>"
        )));
    };
    Digest::parse(&format!("{alg}:{hex}"))
        .map(Some)
        .map_err(|e| Error::invalid(format!("archive: blob entry {name:?}: {}", e.message())))
}

fn check_name(name: &str, expected: &Digest, got: &Digest) -> Result<()> {
    if expected != got {
        return Err(Error::invalid(format!(
            "archive: entry {name:?} has digest {got}, not the one its name says"
        )));
    }
    Ok(())
}

fn bad_tar(what: &str, e: io::Error) -> Error {
    Error::with_source(Kind::InvalidArgument, format!("archive: {what}"), e)
}

fn truncated(name: &str) -> Error {
    Error::invalid(format!("archive: entry {name:?} is truncated"))
}

fn duplicate(name: &str) -> Error {
    Error::invalid(format!("archive: entry {name:?} appears twice"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_or_refused() {
        assert_eq!(clean_name(b"./blobs/sha256/x").unwrap(), "blobs/sha256/x");
        assert_eq!(clean_name(b"a//b/").unwrap(), "a/b");
        assert_eq!(clean_name(b"./").unwrap(), ".");
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"a/../../x",
            b"a/\xff",
            b"a\0b",
        ] {
            assert!(clean_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_stay_inside() {
        assert_eq!(
            resolve_link("a/layer.tar", b"../b/layer.tar").unwrap(),
            "b/layer.tar"
        );
        assert!(resolve_link("a/layer.tar", b"../../x").is_err());
        assert!(resolve_link("x", b"/etc/passwd").is_err());
    }

    #[test]
    fn blob_names_are_digests() {
        let d = Digest::of_bytes(b"");
        assert_eq!(
            expected_digest(&format!("blobs/sha256/{}", d.hex())).unwrap(),
            Some(d)
        );
        assert_eq!(expected_digest("abc/layer.tar").unwrap(), None);
        assert!(expected_digest("blobs/sha256/zz").is_err());
        assert!(expected_digest("blobs/md5/abc").is_err());
        assert!(expected_digest("blobs/x").is_err());
    }

    #[test]
    fn translators_follow_containerd() {
        let add = RefTranslator::AddPrefix("import-2024".into());
        assert_eq!(add.translate("latest"), "import-2024:latest");
        assert_eq!(add.translate("docker.io/x:1"), "docker.io/x:1");
        let filter = RefTranslator::FilterPrefix("docker.io/x".into());
        assert_eq!(filter.translate("docker.io/y:1"), "");
        assert_eq!(filter.translate("docker.io/x:1"), "docker.io/x:1");
        assert_eq!(filter.translate("docker.io/xy:1"), "");
        let mut a = BTreeMap::new();
        a.insert(ANNOTATION_REF_NAME.to_owned(), "v1".to_owned());
        assert_eq!(image_name(&a, &add), "import-2024:v1");
        a.insert(ANNOTATION_IMAGE_NAME.to_owned(), "docker.io/a:b".to_owned());
        assert_eq!(image_name(&a, &add), "docker.io/a:b");
    }
}
