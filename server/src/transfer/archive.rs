//! Image archives through client streams: import (ImageImportStream → ImageStore) and export
//! (ImageStore → ImageExportStream), as containerd's transfer service runs them. berth-archive
//! reads and writes the tar; this file gives it the namespace's view of the content store
//! (every blob recorded under the transfer's lease as it is committed, with the
//! `containerd.io/gc.ref.content.*` labels of the documents walked), names the image records
//! as containerd's image store does, and unpacks the manifests the store's unpack
//! configurations ask for with the pull's unpacker.

use super::fetch::Fetcher;
use super::{Ctx, Transferrer};
use crate::blocking::blocking;
use crate::streams::receive_bytes;
use berth_api::containerd::services::images::v1::Image;
use berth_api::containerd::types::transfer::{
    ImageExportStream, ImageImportStream, ImageStore, UnpackConfiguration,
};
use berth_api::containerd::types::Descriptor as ApiDescriptor;
use berth_archive::json::Descriptor;
use berth_archive::{
    ContentProvider, ContentSink, ExportOptions, ImageNaming, ImageReference, ImportOptions,
    Imported, NameSource, Platform, PlatformMatcher,
};
use berth_content::{Committed, ContentStore, Writer};
use berth_errdefs::{Error, Result};
use berth_metadata::filters::Filter;
use berth_metadata::Metadata;
use berth_oci::Digest;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// containerd's label naming the digest a compressed layer uncompresses to.
const UNCOMPRESSED: &str = "containerd.io/uncompressed";
const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";

/// The namespace's view of the content store, for berth-archive's blocking thread.
struct NamespaceContent {
    content: Arc<ContentStore>,
    meta: Arc<Metadata>,
    events: crate::events::Exchange,
    ns: String,
    lease: String,
    runtime: Handle,
    /// Digests of the blobs this import writes, spared from the collector until it ends (see
    /// `Metadata::pin_content`): a blob whose bytes were already stored, unrecorded, must not be
    /// unlinked between its commit and its record.
    pins: std::sync::Mutex<Vec<berth_metadata::content::ContentPin>>,
}

impl NamespaceContent {
    fn holds(&self, d: &Digest) -> Result<bool> {
        self.meta.has_content(&self.ns, d)
    }
}

impl ContentProvider for NamespaceContent {
    fn open(&self, d: &Digest) -> Result<File> {
        if !self.holds(d)? {
            return Err(Error::not_found(format!("content {d} not found")));
        }
        self.content.open_blob(d)
    }

    fn distribution_sources(&self, d: &Digest) -> Result<Vec<(String, String)>> {
        let info = self.meta.content_info(&self.ns, d)?;
        Ok(info
            .labels
            .into_iter()
            .filter(|(k, _)| k.starts_with(DISTRIBUTION_SOURCE))
            .collect())
    }
}

impl ContentSink for NamespaceContent {
    fn writer(&self, key: &str, size: u64, expected: Option<Digest>) -> Result<Writer> {
        let total = i64::try_from(size)
            .map_err(|_| Error::invalid(format!("blob size {size} out of range")))?;
        if let Some(d) = &expected {
            let pin = self.meta.pin_content(d);
            self.pins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(pin);
        }
        self.content.writer(key, total, expected)
    }

    fn abort(&self, key: &str) -> Result<()> {
        match self.content.abort(key) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    fn size(&self, d: &Digest) -> Result<Option<u64>> {
        // The importer skips writing a blob found here and records it once it has hashed the
        // entry: the transfer's lease takes it now, under the commit lock, so a collection
        // already under way cannot drop its record (or unlink it) in between.
        self.runtime.block_on(async {
            let _recording = self.meta.content_commit_lock().await;
            if !self
                .meta
                .lease_content_if_present(&self.ns, &self.lease, d)
                .await?
            {
                return Ok(None);
            }
            self.content.blob_size(d)
        })
    }

    fn committed(&self, blob: &Committed, uncompressed: Option<&Digest>) -> Result<()> {
        let mut labels = HashMap::new();
        if let Some(u) = uncompressed {
            labels.insert(UNCOMPRESSED.to_owned(), u.to_string());
        }
        let size = i64::try_from(blob.size).unwrap_or(i64::MAX);
        self.runtime
            .block_on(record(self, &blob.digest, size, labels))
    }

    fn compressed_of(&self, u: &Digest) -> Result<Option<(Digest, u64)>> {
        let filter = Filter::parse_all(&[format!("labels.\"{UNCOMPRESSED}\"=={u}")])?;
        let found = self.meta.list_content(&self.ns, &filter)?;
        // containerd walks them all and keeps the last; any one is right.
        Ok(found.into_iter().last().and_then(|i| {
            Digest::parse(&i.digest)
                .ok()
                .map(|d| (d, u64::try_from(i.size).unwrap_or(0)))
        }))
    }
}

/// Record a blob in the namespace under the transfer's lease, as the pull does.
async fn record(
    c: &NamespaceContent,
    digest: &Digest,
    size: i64,
    labels: HashMap<String, String>,
) -> Result<()> {
    super::fetch::record_content(
        &c.meta, &c.content, &c.events, &c.ns, &c.lease, digest, size, "", &labels,
    )
    .await
}

fn namespace_content(t: &Transferrer, ctx: &Ctx) -> NamespaceContent {
    NamespaceContent {
        content: t.content.clone(),
        meta: t.meta.clone(),
        events: t.events.clone(),
        ns: ctx.ns.clone(),
        lease: ctx.lease.clone(),
        runtime: Handle::current(),
        pins: Default::default(),
    }
}

fn platform(p: &berth_api::containerd::types::Platform) -> Platform {
    Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
        os_version: p.os_version.clone(),
        ..Platform::default()
    }
    .normalize()
}

fn api_descriptor(d: &Descriptor) -> ApiDescriptor {
    ApiDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size,
        annotations: d
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn archive_descriptor(d: &ApiDescriptor) -> Result<Descriptor> {
    let mut out = Descriptor::new(&d.media_type, Digest::parse(&d.digest)?, 0);
    out.size = d.size;
    out.annotations = d
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(out)
}

fn naming(dst: &ImageStore) -> ImageNaming {
    ImageNaming {
        image_name: dst.name.clone(),
        extra_references: dst
            .extra_references
            .iter()
            .map(|r| ImageReference {
                name: r.name.clone(),
                is_prefix: r.is_prefix,
                allow_overwrite: r.allow_overwrite,
                add_digest: r.add_digest,
                skip_named_digest: r.skip_named_digest,
            })
            .collect(),
    }
}

pub(super) async fn import(
    t: &Transferrer,
    ctx: &Ctx,
    src: ImageImportStream,
    dst: ImageStore,
) -> Result<()> {
    let stream = t.streams.take(&src.stream)?;
    let reader = receive_bytes(stream);
    let sink = namespace_content(t, ctx);
    let opts = ImportOptions {
        ingest_prefix: format!("{}/import-{}/", ctx.ns, uuid::Uuid::new_v4()),
        platforms: Some(PlatformMatcher::ordered_or_all(
            dst.platforms.iter().map(platform).collect(),
        )),
        force_compress: src.force_compress,
        ..ImportOptions::default()
    };
    let imported = berth_archive::import(reader, sink, opts).await?;

    // The children labels containerd's image store sets while it walks, so the collector
    // keeps what the images need once the lease ends.
    let labeller = namespace_content(t, ctx);
    for (doc, children) in &imported.walked {
        let labels: HashMap<String, String> = berth_archive::json::gc_ref_labels(children)
            .into_iter()
            .collect();
        if !labels.is_empty() {
            record(&labeller, &doc.digest, doc.size, labels).await?;
        }
    }

    unpack(t, ctx, &imported, &dst.unpacks).await?;

    let naming = naming(&dst);
    let mut stored = 0usize;
    let index_names = naming.for_index(&imported.index);
    let mut records: Vec<(String, NameSource, &Descriptor)> = index_names
        .into_iter()
        .map(|(n, s)| (n, s, &imported.index))
        .collect();
    for entry in &imported.manifests {
        for (n, s) in naming.for_entry(entry) {
            records.push((n, s, entry));
        }
    }
    for (name, source, target) in records {
        let mut labels = dst.labels.clone();
        if source == NameSource::Extra && !dst.name.is_empty() {
            labels.insert("containerd.io/gc.bref.image".into(), dst.name.clone());
            labels.insert("containerd.io/gc.expire".into(), rfc3339_now()?);
        }
        let saved = t
            .put_image(
                &ctx.ns,
                Image {
                    name,
                    labels,
                    target: Some(api_descriptor(target)),
                    ..Image::default()
                },
            )
            .await?;
        stored += 1;
        ctx.progress
            .named("saved", &saved.name, saved.target.clone())
            .await;
    }
    if stored == 0 {
        tracing::info!(index = %imported.index.digest, "import stored no image: nothing named one");
    }
    Ok(())
}

/// Largest image config read to unpack (as a pull reads it).
const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Unpack every walked manifest an unpack configuration's platform takes (all of them when it
/// names none), each into its snapshotter, as containerd's import does after storing.
async fn unpack(
    t: &Transferrer,
    ctx: &Ctx,
    imported: &Imported,
    unpacks: &[UnpackConfiguration],
) -> Result<()> {
    if unpacks.is_empty() {
        return Ok(());
    }
    // The pull's unpacker records blobs through a registry Fetcher and asks its client for
    // nothing; an import has no registry, so it gets a client nobody calls.
    const NO_REGISTRY: &str = "localhost/berth-import";
    let reference = berth_registry::Reference::parse(NO_REGISTRY)?;
    let client = super::pull::client(t, NO_REGISTRY, None)?;
    let f = Fetcher {
        t,
        ctx,
        client: &client,
        reference: &reference,
    };
    // An index entry carries its manifest's platform.
    let mut platforms: BTreeMap<Digest, Platform> = BTreeMap::new();
    for (_, children) in &imported.walked {
        for c in children {
            if let Some(p) = &c.platform {
                platforms.insert(c.digest.clone(), p.clone());
            }
        }
    }
    for (doc, children) in &imported.walked {
        if !berth_archive::json::is_manifest(&doc.media_type) {
            continue;
        }
        let Some((config_desc, layers)) = children.split_first() else {
            continue;
        };
        let config = read_blob(t, &config_desc.digest, config_desc.len()).await?;
        let platform = match platforms.get(&doc.digest) {
            Some(p) => p.clone(),
            None => serde_json::from_slice::<Platform>(&config)
                .map_err(|e| Error::invalid(format!("image config {}: {e}", config_desc.digest)))?
                .normalize(),
        };
        for u in unpacks {
            if let Some(want) = &u.platform {
                if !PlatformMatcher::Ordered(vec![self::platform(want)]).matches(&platform) {
                    continue;
                }
            }
            let snapshotter = if u.snapshotter.is_empty() {
                t.settings.default_snapshotter.clone()
            } else {
                u.snapshotter.clone()
            };
            // Every layer is stored already: nothing to wait for or follow.
            let stored: Vec<super::unpack::LayerSource> = layers
                .iter()
                .map(|_| {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(Ok(()));
                    (rx, None)
                })
                .collect();
            let layers: Vec<berth_registry::Descriptor> =
                layers.iter().map(registry_descriptor).collect();
            super::unpack::unpack(
                &f,
                &snapshotter,
                &registry_descriptor(config_desc),
                &config,
                &layers,
                stored,
            )
            .await?;
        }
    }
    Ok(())
}

fn registry_descriptor(d: &Descriptor) -> berth_registry::Descriptor {
    berth_registry::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.len(),
        urls: d.urls.clone(),
        platform: None,
        annotations: d.annotations.clone(),
        artifact_type: None,
    }
}

async fn read_blob(t: &Transferrer, d: &Digest, size: u64) -> Result<Vec<u8>> {
    if size > MAX_CONFIG_BYTES {
        return Err(Error::invalid(format!(
            "image config {d} is {size} bytes, more than {MAX_CONFIG_BYTES}"
        )));
    }
    let (content, d) = (t.content.clone(), d.clone());
    blocking(move || {
        let mut buf = Vec::new();
        content
            .open_blob(&d)?
            .take(MAX_CONFIG_BYTES)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {d}"), e))?;
        Ok(buf)
    })
    .await
}

fn rfc3339_now() -> Result<String> {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::internal(format!("format a time: {e}")))
}

pub(super) async fn export(
    t: &Transferrer,
    ctx: &Ctx,
    src: ImageStore,
    dst: ImageExportStream,
) -> Result<()> {
    ctx.progress.note("Exporting").await;
    // containerd's image store Lookup: its name, then its (non-prefix) extra references.
    let mut images = Vec::new();
    let mut names: Vec<String> = Vec::new();
    if !src.name.is_empty() {
        names.push(src.name.clone());
    }
    for r in &src.extra_references {
        if r.is_prefix {
            return Err(Error::unimplemented(
                "prefix lookup on export not implemented",
            ));
        }
        names.push(r.name.clone());
    }
    for name in names {
        let image = t.meta.get_image(&ctx.ns, &name)?;
        let target = image
            .target
            .as_ref()
            .ok_or_else(|| Error::precondition(format!("image {name:?} has no target")))?;
        images.push((name, archive_descriptor(target)?));
    }
    let platforms: Vec<Platform> = dst.platforms.iter().map(platform).collect();
    let opts = ExportOptions {
        platforms: if platforms.is_empty() {
            PlatformMatcher::default_strict()
        } else {
            PlatformMatcher::Ordered(platforms)
        },
        all_platforms: dst.all_platforms,
        skip_docker_manifest: dst.skip_compatibility_manifest,
        skip_non_distributable: dst.skip_non_distributable,
        ..ExportOptions::default()
    };
    let stream = t.streams.take(&dst.stream)?;
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let provider = namespace_content(t, ctx);
    let write = async {
        berth_archive::export(writer, provider, images, opts)
            .await
            .map(|_| ())
    };
    let send = async { crate::streams::send_bytes(stream, reader).await.map(|_| ()) };
    tokio::try_join!(write, send)?;
    ctx.progress.note("Completed export").await;
    Ok(())
}
