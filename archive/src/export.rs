//! Export: the OCI layout tar containerd's `Export` writes (oci-layout, index.json naming every
//! image, blobs/sha256/*) plus docker's `manifest.json` so `docker load` takes it too. Every
//! blob is checked present with its size before the first byte is written, and hashed again
//! while it is copied.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;
use tokio_util::io::SyncIoBridge;

use berth_errdefs::{Error, Result};
use berth_oci::Digest;

use crate::json::{
    self, Descriptor, DockerArchiveEntry, ImageLayout, Index, Manifest, ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
};
use crate::platform::PlatformMatcher;
use crate::reference::{oci_reference_name, Named};
use crate::{ContentProvider, Limits, Progress, ProgressFn};

/// How to export; the defaults are `ctr images export`'s.
#[derive(Clone)]
pub struct ExportOptions {
    /// Which manifests of an index go in (and which one docker's manifest.json names first).
    /// containerd: the given platforms in order, else this host's exactly.
    pub platforms: PlatformMatcher,
    /// Every manifest of an index goes in; a missing one fails the export.
    pub all_platforms: bool,
    /// Leave out docker's `manifest.json`.
    pub skip_docker_manifest: bool,
    /// Leave out foreign (non-distributable) layers.
    pub skip_non_distributable: bool,
    pub limits: Limits,
    pub progress: Option<ProgressFn>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            platforms: PlatformMatcher::default_strict(),
            all_platforms: false,
            skip_docker_manifest: false,
            skip_non_distributable: false,
            limits: Limits::default(),
            progress: None,
        }
    }
}

impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportOptions")
            .field("platforms", &self.platforms)
            .field("all_platforms", &self.all_platforms)
            .field("skip_docker_manifest", &self.skip_docker_manifest)
            .field("skip_non_distributable", &self.skip_non_distributable)
            .finish_non_exhaustive()
    }
}

/// Export `images` (name, target) to an async writer, which is flushed and shut down at the
/// end and handed back.
pub async fn export<W, P>(
    writer: W,
    provider: P,
    images: Vec<(String, Descriptor)>,
    opts: ExportOptions,
) -> Result<W>
where
    W: AsyncWrite + Send + Unpin + 'static,
    P: ContentProvider + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut bridge = SyncIoBridge::new(writer);
        // The tar builder writes 512-byte headers; each write to an async stream is a round
        // trip through the runtime, so batch them.
        let buffered = io::BufWriter::with_capacity(1 << 20, &mut bridge);
        export_blocking(buffered, &provider, &images, &opts)?;
        bridge
            .flush()
            .and_then(|()| bridge.shutdown())
            .map_err(|e| Error::io("finish the export stream", e))?;
        Ok(bridge.into_inner())
    })
    .await
    .map_err(|e| Error::internal(format!("export task failed: {e}")))?
}

/// One entry of the tar.
enum Body {
    Blob(Box<Descriptor>),
    Bytes(Vec<u8>),
    Dir,
}

struct Record {
    name: String,
    mode: u32,
    body: Body,
}

struct DockerImage {
    manifest: Descriptor,
    names: Vec<String>,
}

/// Export to a synchronous writer (on a thread that may block).
pub fn export_blocking<W: Write>(
    writer: W,
    provider: &dyn ContentProvider,
    images: &[(String, Descriptor)],
    opts: &ExportOptions,
) -> Result<()> {
    let ex = Exporter { provider, opts };
    let records = ex.plan(images)?;
    ex.check_present(&records)?;
    ex.write(writer, records)
}

struct Exporter<'a> {
    provider: &'a dyn ContentProvider,
    opts: &'a ExportOptions,
}

impl Exporter<'_> {
    /// containerd's `Export`, record for record.
    fn plan(&self, images: &[(String, Descriptor)]) -> Result<Vec<Record>> {
        let layout = json::to_go_json(&ImageLayout {
            version: "1.0.0".to_owned(),
        })?;
        let mut records = vec![Record {
            name: "oci-layout".to_owned(),
            mode: 0o444,
            body: Body::Bytes(layout),
        }];
        let mut manifests = Vec::with_capacity(images.len());
        for (name, target) in images {
            let mut d = target.clone();
            d.annotations
                .insert(ANNOTATION_IMAGE_NAME.to_owned(), name.clone());
            d.annotations
                .insert(ANNOTATION_REF_NAME.to_owned(), oci_reference_name(name));
            for (k, v) in self.provider.distribution_sources(&d.digest)? {
                d.annotations.insert(k, v);
            }
            manifests.push(d);
        }

        // Insertion-ordered: containerd iterates a Go map here, so any order is its order.
        let mut docker: Vec<(Digest, DockerImage)> = Vec::new();
        let mut resolved: HashMap<Digest, Option<Digest>> = HashMap::new();
        for desc in &manifests {
            let name = desc
                .annotations
                .get(ANNOTATION_IMAGE_NAME)
                .cloned()
                .unwrap_or_default();
            if json::is_manifest(&desc.media_type) {
                let i = match docker.iter().position(|(d, _)| *d == desc.digest) {
                    Some(i) => i,
                    None => {
                        self.records_of(desc, &mut records, 0)?;
                        docker.push((
                            desc.digest.clone(),
                            DockerImage {
                                manifest: desc.clone(),
                                names: Vec::new(),
                            },
                        ));
                        docker.len() - 1
                    }
                };
                if !name.is_empty() {
                    docker[i].1.names.push(name);
                }
            } else if json::is_index(&desc.media_type) {
                let chosen = match resolved.get(&desc.digest) {
                    Some(c) => c.clone(),
                    None => {
                        let c = self.index_records(desc, &mut records, &mut docker)?;
                        resolved.insert(desc.digest.clone(), c.clone());
                        c
                    }
                };
                if let Some(d) = chosen {
                    if !name.is_empty() {
                        if let Some((_, img)) = docker.iter_mut().find(|(x, _)| *x == d) {
                            img.names.push(name);
                        }
                    }
                }
            } else {
                return Err(Error::invalid(format!(
                    "only manifests may be exported: {} is {}",
                    desc.digest, desc.media_type
                )));
            }
        }

        let index = Index {
            schema_version: 2,
            media_type: json::OCI_INDEX.to_owned(),
            manifests: (!manifests.is_empty()).then_some(manifests),
            annotations: BTreeMap::new(),
        };
        records.push(Record {
            name: "index.json".to_owned(),
            mode: 0o644,
            body: Body::Bytes(json::to_go_json(&index)?),
        });
        if !self.opts.skip_docker_manifest && !docker.is_empty() {
            records.push(self.docker_manifest(&docker)?);
        }
        if records.iter().any(|r| matches!(r.body, Body::Blob(_))) {
            for dir in ["blobs/", "blobs/sha256/"] {
                records.push(Record {
                    name: dir.to_owned(),
                    mode: 0o755,
                    body: Body::Dir,
                });
            }
        }
        Ok(records)
    }

    /// An index target: the index blob, the manifests the platforms take (all of them with
    /// `all_platforms`), and the one docker's manifest.json will name.
    fn index_records(
        &self,
        desc: &Descriptor,
        records: &mut Vec<Record>,
        docker: &mut Vec<(Digest, DockerImage)>,
    ) -> Result<Option<Digest>> {
        self.push_blob(desc, records);
        let idx: Index = self.read_json(desc)?;
        let mut selected = Vec::new();
        let all = idx.manifests.unwrap_or_default();
        if all.len() > self.opts.limits.max_children {
            return Err(Error::invalid(format!(
                "index {} has {} manifests, more than {}",
                desc.digest,
                all.len(),
                self.opts.limits.max_children
            )));
        }
        for m in all {
            let matches = m
                .platform
                .as_ref()
                .is_none_or(|p| self.opts.platforms.matches(p));
            if matches {
                selected.push(m.clone());
            } else if !self.opts.all_platforms {
                continue;
            }
            self.records_of(&m, records, 1)?;
        }
        if selected.is_empty() {
            return Err(Error::not_found(format!(
                "no manifest found for platform in {}",
                desc.digest
            )));
        }
        // Stable, as Go's sort.SliceStable: equal platforms keep the index's order.
        let less = |a: &Descriptor, b: &Descriptor| match (&a.platform, &b.platform) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(x), Some(y)) => self.opts.platforms.less(x, y),
        };
        selected.sort_by(|a, b| {
            if less(a, b) {
                std::cmp::Ordering::Less
            } else if less(b, a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        let first = selected.swap_remove(0);
        let d = first.digest.clone();
        let img = DockerImage {
            manifest: first,
            names: Vec::new(),
        };
        match docker.iter_mut().find(|(x, _)| *x == d) {
            Some(slot) => slot.1 = img,
            None => docker.push((d.clone(), img)),
        }
        Ok(Some(d))
    }

    /// A document and everything below it, unfiltered (containerd's `getRecords`).
    fn records_of(&self, desc: &Descriptor, records: &mut Vec<Record>, depth: usize) -> Result<()> {
        if depth > self.opts.limits.max_depth {
            return Err(Error::invalid(format!(
                "indexes nested more than {} deep",
                self.opts.limits.max_depth
            )));
        }
        self.push_blob(desc, records);
        let children = if json::is_manifest(&desc.media_type) {
            let m: Manifest = self.read_json(desc)?;
            let mut c = vec![m.config];
            c.extend(m.layers.unwrap_or_default());
            c
        } else if json::is_index(&desc.media_type) {
            let i: Index = self.read_json(desc)?;
            i.manifests.unwrap_or_default()
        } else {
            return Ok(());
        };
        if children.len() > self.opts.limits.max_children {
            return Err(Error::invalid(format!(
                "{} has {} children, more than {}",
                desc.digest,
                children.len(),
                self.opts.limits.max_children
            )));
        }
        for c in &children {
            self.records_of(c, records, depth + 1)?;
        }
        Ok(())
    }

    fn push_blob(&self, desc: &Descriptor, records: &mut Vec<Record>) {
        if self.opts.skip_non_distributable && json::is_non_distributable(&desc.media_type) {
            return;
        }
        records.push(Record {
            name: blob_path(&desc.digest),
            mode: 0o444,
            body: Body::Blob(Box::new(desc.clone())),
        });
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, desc: &Descriptor) -> Result<T> {
        let max = self.opts.limits.max_json_bytes;
        if desc.size < 0 || desc.len() > max {
            return Err(Error::invalid(format!(
                "{} {} has size {}, outside 0..={max}",
                desc.media_type, desc.digest, desc.size
            )));
        }
        let f = self.provider.open(&desc.digest)?;
        let mut buf = Vec::with_capacity(desc.len() as usize);
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {}", desc.digest), e))?;
        if buf.len() as u64 != desc.len() || Digest::of_bytes(&buf) != desc.digest {
            return Err(Error::invalid(format!(
                "content {} does not match its descriptor",
                desc.digest
            )));
        }
        json::validate_media_type(&buf, &desc.media_type, &desc.digest)?;
        serde_json::from_slice(&buf).map_err(|e| {
            Error::invalid(format!("invalid {} {}: {e}", desc.media_type, desc.digest))
        })
    }

    fn docker_manifest(&self, docker: &[(Digest, DockerImage)]) -> Result<Record> {
        let mut entries = Vec::with_capacity(docker.len());
        for (_, img) in docker {
            let m: Manifest = self.read_json(&img.manifest)?;
            let layers: Vec<String> = m
                .layers
                .unwrap_or_default()
                .iter()
                .map(|l| blob_path(&l.digest))
                .collect();
            let mut tags = Vec::new();
            for n in &img.names {
                let named = Named::parse_normalized(n).map_err(|e| {
                    Error::invalid(format!("unable to create manifests file: {}", e.message()))
                })?;
                tags.push(named.familiar());
            }
            entries.push(DockerArchiveEntry {
                config: blob_path(&m.config.digest),
                repo_tags: (!tags.is_empty()).then_some(tags),
                layers: (!layers.is_empty()).then_some(layers),
            });
        }
        Ok(Record {
            name: "manifest.json".to_owned(),
            mode: 0o644,
            body: Body::Bytes(json::to_go_json(&entries)?),
        })
    }

    /// Every blob there with the size its descriptor says, before a byte goes out: a missing
    /// blob is an error rather than a truncated archive.
    fn check_present(&self, records: &[Record]) -> Result<()> {
        for r in records {
            if let Body::Blob(d) = &r.body {
                let f = self.provider.open(&d.digest)?;
                let len = f
                    .metadata()
                    .map_err(|e| Error::io(format!("stat {}", d.digest), e))?
                    .len();
                if d.size < 0 || len != d.len() {
                    return Err(Error::invalid(format!(
                        "content {} is {len} bytes, its descriptor says {}",
                        d.digest, d.size
                    )));
                }
            }
        }
        Ok(())
    }

    fn write<W: Write>(&self, writer: W, mut records: Vec<Record>) -> Result<()> {
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records.dedup_by(|a, b| a.name == b.name);
        let mut tar = tar::Builder::new(writer);
        let werr = |e: io::Error| Error::io("write the export stream", e);
        for r in &records {
            let mut h = tar::Header::new_ustar();
            h.set_mode(r.mode);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match &r.body {
                Body::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    tar.append_data(&mut h, &r.name, io::empty())
                        .map_err(werr)?;
                }
                Body::Bytes(b) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(b.len() as u64);
                    tar.append_data(&mut h, &r.name, b.as_slice())
                        .map_err(werr)?;
                }
                Body::Blob(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len());
                    let f = self.provider.open(&d.digest)?;
                    let mut reader = Verifying {
                        inner: f.take(d.len()),
                        hash: Sha256::new(),
                        read: 0,
                    };
                    tar.append_data(&mut h, &r.name, &mut reader)
                        .map_err(werr)?;
                    let got = Digest::from_sha256(&reader.hash.finalize().into());
                    if got != d.digest || reader.read != d.len() {
                        return Err(Error::internal(format!(
                            "content {} changed while it was exported (now {got})",
                            d.digest
                        )));
                    }
                    if let Some(p) = &self.opts.progress {
                        p(Progress {
                            event: "exported",
                            name: r.name.clone(),
                            digest: d.digest.clone(),
                            size: d.len(),
                        });
                    }
                }
            }
        }
        tar.into_inner().and_then(|mut w| w.flush()).map_err(werr)
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Hashes what the tar builder copies out of a blob.
struct Verifying<R> {
    inner: R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Read for Verifying<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}
