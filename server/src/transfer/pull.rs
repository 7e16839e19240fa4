//! Pull: OCIRegistry → ImageStore. Resolve the reference (hosts.toml, the request's host_dir
//! and default scheme, credentials from the client's auth stream and the configured files),
//! store the index and manifests with containerd's `gc.ref.content.*` labels, fetch each
//! selected manifest's config and layers (in parallel, bounded per transfer and daemon-wide),
//! unpack the layers as they land, then write the image record(s).

use super::fetch::{api_descriptor, Fetcher, Growing};
use super::progress::ref_key;
use super::{auth, unpack, Ctx, Transferrer};
use berth_api::containerd::services::images::v1::Image;
use berth_api::containerd::types::transfer::{ImageStore, OciRegistry, UnpackConfiguration};
use berth_errdefs::{Error, Result};
use berth_registry::manifest::{is_index, is_manifest};
use berth_registry::{
    Client, ClientConfig, Descriptor, Document, HostsConfig, Limits, Manifest, Platform, Reference,
};
use bytes::Bytes;
use futures_util::future::join_all;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{oneshot, Semaphore};

const CONTENT_REF: &str = "containerd.io/gc.ref.content";
const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source";
/// Largest image config read whole (containerd reads configs whole too).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// How containerd names an OciRegistry in its progress notes.
fn describe(r: &OciRegistry) -> String {
    format!("OCI Registry ({})", r.reference)
}

pub(super) fn platform(p: &berth_api::containerd::types::Platform) -> Platform {
    Platform::new(&p.os, &p.architecture, &p.variant)
}

/// The registry client for one transfer.
pub(super) fn client(
    t: &Transferrer,
    ctx_reference: &str,
    resolver: Option<&berth_api::containerd::types::transfer::RegistryResolver>,
) -> Result<Client> {
    let s = &t.settings;
    let mut hosts = HostsConfig {
        config_path: s.config_path.clone(),
        ..HostsConfig::default()
    };
    let mut auth_stream = None;
    if let Some(r) = resolver {
        if !r.host_dir.is_empty() {
            hosts.config_path = Some(r.host_dir.clone().into());
        }
        match r.default_scheme.as_str() {
            "" => {}
            "http" | "https" => hosts.default_scheme = r.default_scheme.clone(),
            other => {
                return Err(Error::invalid(format!(
                    "default scheme {other:?} is neither http nor https"
                )))
            }
        }
        hosts.headers = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !r.auth_stream.is_empty() {
            auth_stream = Some(t.streams.take(&r.auth_stream)?);
        }
    }
    let config = ClientConfig {
        hosts,
        limits: Limits {
            max_manifest_size: s.max_manifest_bytes,
            max_layers: s.max_layers,
            max_concurrent_downloads: s.max_concurrent_downloads,
            progress_timeout: s.progress_timeout,
            ..Limits::default()
        },
        allow_foreign_urls: s.allow_foreign_urls,
        ..ClientConfig::default()
    };
    let credentials = auth::provider(s, auth_stream, ctx_reference);
    Ok(Client::with_parts(
        config,
        credentials,
        t.downloads.clone(),
        t.http.clone(),
    ))
}

pub(super) async fn pull(
    t: &Transferrer,
    ctx: &Ctx,
    src: OciRegistry,
    dst: ImageStore,
) -> Result<()> {
    let reference = Reference::parse(&src.reference)?;
    let client = client(t, &src.reference, src.resolver.as_ref())?;
    ctx.progress
        .note(format!("Resolving from {}", describe(&src)))
        .await;
    let root = client.resolve(&reference).await?;
    let name = reference.to_string();
    ctx.progress
        .note(format!("Pulling from {}", describe(&src)))
        .await;
    ctx.progress
        .named("fetching image content", &name, Some(api_descriptor(&root)))
        .await;
    let f = Fetcher {
        t,
        ctx,
        client: &client,
        reference: &reference,
    };
    let source_label = (
        distribution_source_key(reference.domain()),
        reference.repository().to_string(),
    );
    let wanted: Vec<Platform> = dst.platforms.iter().map(platform).collect();

    let (doc, bytes) = fetch_document(&f, &root).await?;
    match doc {
        Document::Manifest(m) => {
            let unpacks = unpacks_for(&dst.unpacks, None);
            let mut labels = manifest_labels(&m, true);
            labels.insert(source_label.0.clone(), source_label.1.clone());
            f.store_bytes(&root, bytes, &labels).await?;
            pull_manifest(&f, &root, &m, &unpacks, &source_label).await?;
        }
        Document::Index(index) => {
            // Which entries get their content (config, layers), and which only the manifest
            // (all_metadata), in index order.
            let selected: Vec<usize> = index
                .manifests
                .iter()
                .enumerate()
                .filter(|(_, d)| is_manifest(&d.media_type) || is_index(&d.media_type))
                .filter(|(_, d)| {
                    wanted.is_empty()
                        || d.platform
                            .as_ref()
                            .is_some_and(|p| wanted.iter().any(|w| w.matches(p)))
                })
                .map(|(i, _)| i)
                .collect();
            let mut metadata: Vec<usize> = if dst.all_metadata {
                (0..index.manifests.len())
                    .filter(|i| !selected.contains(i))
                    .filter(|&i| is_manifest(&index.manifests[i].media_type))
                    .collect()
            } else {
                Vec::new()
            };
            if dst.manifest_limit > 0 {
                let room = (dst.manifest_limit as usize).saturating_sub(selected.len());
                metadata.truncate(room);
            }
            if selected.is_empty() {
                return Err(berth_registry::Error::NoMatchingPlatform(name).into());
            }
            let mut labels: HashMap<String, String> = HashMap::new();
            for &i in selected.iter().chain(&metadata) {
                labels.insert(
                    format!("{CONTENT_REF}.m.{i}"),
                    index.manifests[i].digest.clone(),
                );
            }
            labels.insert(source_label.0.clone(), source_label.1.clone());
            f.store_bytes(&root, bytes, &labels).await?;
            let parents = [ref_key(&root.media_type, &root.digest)];
            for &i in &metadata {
                let d = &index.manifests[i];
                let (doc, mbytes) = fetch_document(&f, d).await?;
                if let Document::Manifest(m) = doc {
                    let mut labels = manifest_labels(&m, false);
                    labels.insert(source_label.0.clone(), source_label.1.clone());
                    f.store_bytes(d, mbytes, &labels).await?;
                    let mut config_labels = HashMap::new();
                    config_labels.insert(source_label.0.clone(), source_label.1.clone());
                    f.fetch(&m.config, &config_labels, &parents).await?;
                }
            }
            for &i in &selected {
                let d = &index.manifests[i];
                if !is_manifest(&d.media_type) {
                    return Err(Error::unimplemented(format!(
                        "{name}: nested index {} is not supported",
                        d.digest
                    )));
                }
                let (doc, mbytes) = fetch_document(&f, d).await?;
                let Document::Manifest(m) = doc else {
                    return Err(Error::invalid(format!(
                        "{name}: the index entry {} is not a manifest",
                        d.digest
                    )));
                };
                let mut labels = manifest_labels(&m, true);
                labels.insert(source_label.0.clone(), source_label.1.clone());
                f.store_bytes(d, mbytes, &labels).await?;
                let unpacks = unpacks_for(&dst.unpacks, d.platform.as_ref());
                pull_manifest(&f, d, &m, &unpacks, &source_label).await?;
            }
        }
    }

    let target = api_descriptor(&root);
    for image in image_records(&dst, &target)? {
        let saved = t.put_image(&ctx.ns, image).await?;
        ctx.progress
            .named("saved", &saved.name, saved.target.clone())
            .await;
    }
    ctx.progress
        .note(format!("Completed pull from {}", describe(&src)))
        .await;
    Ok(())
}

/// A manifest or index by its descriptor. One this namespace already holds is read from the
/// content store, so pulling an image that is there asks the registry only to resolve the tag (a
/// kubelet's `Always` policy re-pulls at every container start); containerd's fetch skips the
/// blobs it has too. Anything else, or a stored copy that does not check out, comes from the
/// registry.
async fn fetch_document(f: &Fetcher<'_>, desc: &Descriptor) -> Result<(Document, Bytes)> {
    if let Some(found) = stored_document(f, desc).await? {
        return Ok(found);
    }
    Ok(f.client.fetch_manifest(f.reference, desc).await?)
}

async fn stored_document(f: &Fetcher<'_>, desc: &Descriptor) -> Result<Option<(Document, Bytes)>> {
    let s = &f.t.settings;
    // The media type says how to parse it; a descriptor without one takes the registry's word.
    if desc.media_type.is_empty()
        || desc.size > s.max_manifest_bytes
        || !desc.digest.starts_with("sha256:")
    {
        return Ok(None);
    }
    let Ok(digest) = berth_oci::Digest::parse(&desc.digest) else {
        return Ok(None);
    };
    if !f.t.meta.has_content(&f.ctx.ns, &digest)? {
        return Ok(None);
    }
    // Gone meanwhile (collected) or unreadable: the registry has it.
    let Ok(bytes) = read_blob(f.t, digest, desc.size + 1).await else {
        return Ok(None);
    };
    if bytes.len() as u64 != desc.size || berth_registry::sha256_digest(&bytes) != desc.digest {
        tracing::warn!(digest = %desc.digest, "stored manifest does not match its digest; fetching it");
        return Ok(None);
    }
    let what = format!("{}@{}", f.reference.name(), desc.digest);
    match berth_registry::manifest::parse_document(&what, &desc.media_type, &bytes, s.max_layers) {
        Ok(doc) => Ok(Some((doc, Bytes::from(bytes)))),
        Err(_) => Ok(None),
    }
}

/// containerd's `containerd.io/distribution.source.<host>` key: the registry's host name
/// without its port (Go's `url.Hostname()`), as ctr and containerd's pull write it.
pub(super) fn distribution_source_key(domain: &str) -> String {
    let host = if let Some(rest) = domain.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        domain.rsplit_once(':').map_or(domain, |(h, _)| h)
    };
    format!("{DISTRIBUTION_SOURCE}.{host}")
}

/// The children labels containerd's image store puts on a manifest: its config and (when its
/// content is fetched) its layers.
fn manifest_labels(m: &Manifest, with_layers: bool) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    labels.insert(format!("{CONTENT_REF}.config"), m.config.digest.clone());
    if with_layers {
        for (i, l) in m.layers.iter().enumerate() {
            labels.insert(format!("{CONTENT_REF}.l.{i}"), l.digest.clone());
        }
    }
    labels
}

/// The unpack configurations that apply to a manifest of `platform` (None: a single-manifest
/// image, checked against its config later).
fn unpacks_for(
    unpacks: &[UnpackConfiguration],
    manifest_platform: Option<&Platform>,
) -> Vec<UnpackConfiguration> {
    unpacks
        .iter()
        .filter(|u| match (&u.platform, manifest_platform) {
            (Some(want), Some(have)) => platform(want).matches(have),
            _ => true,
        })
        .cloned()
        .collect()
}

/// A manifest's config and layers into the store, unpacked as they land.
async fn pull_manifest(
    f: &Fetcher<'_>,
    desc: &Descriptor,
    m: &Manifest,
    unpacks: &[UnpackConfiguration],
    source_label: &(String, String),
) -> Result<()> {
    let t = f.t;
    let manifest_parent = [ref_key(&desc.media_type, &desc.digest)];
    let source: HashMap<String, String> = [source_label.clone()].into();
    // The config first: the unpack needs its diff IDs. Through the store like any blob, so
    // concurrent pulls fetch it once too.
    f.fetch(&m.config, &source, &manifest_parent).await?;
    let config = read_config(t, &m.config).await?;
    let config_platform = config_platform(&config);
    let unpacks: Vec<&UnpackConfiguration> = unpacks
        .iter()
        .filter(|u| match (&u.platform, &config_platform) {
            (Some(want), Some(have)) => platform(want).matches(have),
            _ => true,
        })
        .collect();

    let per_transfer = Semaphore::new(t.settings.max_concurrent_downloads.max(1));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in &m.layers {
        let (tx, rx) = oneshot::channel();
        let growing = Arc::new(Growing::default());
        senders.push((tx, growing.clone()));
        receivers.push((rx, Some(growing)));
    }
    let downloads = join_all(m.layers.iter().zip(senders).map(|(layer, (tx, growing))| {
        let (per_transfer, source, parents) = (&per_transfer, &source, &manifest_parent);
        async move {
            let result = match per_transfer.acquire().await {
                Ok(_permit) => {
                    f.fetch_growing(layer, source, parents, Some(&growing))
                        .await
                }
                Err(_) => {
                    let e = Err(Error::internal("download bound closed"));
                    growing.finish(&e);
                    e
                }
            };
            let _ = tx.send(result);
        }
    }));
    let consume = async {
        match unpacks.first() {
            Some(u) => {
                let snapshotter = if u.snapshotter.is_empty() {
                    t.settings.default_snapshotter.clone()
                } else {
                    u.snapshotter.clone()
                };
                unpack::unpack(f, &snapshotter, &m.config, &config, &m.layers, receivers)
                    .await
                    .map(|_| ())
            }
            None => {
                for (rx, _) in receivers {
                    rx.await
                        .map_err(|_| Error::canceled("a layer download ended without a word"))??;
                }
                Ok(())
            }
        }
    };
    let downloads = async {
        downloads.await;
        Ok::<(), Error>(())
    };
    tokio::try_join!(downloads, consume)?;
    // A second unpack configuration (another snapshotter) reads the stored blobs.
    for u in unpacks.iter().skip(1) {
        let mut done = Vec::new();
        for _ in &m.layers {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Ok(()));
            done.push((rx, None));
        }
        let snapshotter = if u.snapshotter.is_empty() {
            t.settings.default_snapshotter.clone()
        } else {
            u.snapshotter.clone()
        };
        unpack::unpack(f, &snapshotter, &m.config, &config, &m.layers, done).await?;
    }
    Ok(())
}

/// An image config from the content store, bounded.
async fn read_config(t: &Transferrer, desc: &Descriptor) -> Result<Vec<u8>> {
    if desc.size > MAX_CONFIG_BYTES {
        return Err(Error::invalid(format!(
            "image config {} is {} bytes, more than {MAX_CONFIG_BYTES}",
            desc.digest, desc.size
        )));
    }
    let digest = berth_oci::Digest::parse(&desc.digest)?;
    read_blob(t, digest, MAX_CONFIG_BYTES).await
}

/// At most `limit` bytes of a blob in the content store.
async fn read_blob(t: &Transferrer, digest: berth_oci::Digest, limit: u64) -> Result<Vec<u8>> {
    let content = t.content.clone();
    crate::blocking::blocking(move || {
        use std::io::Read;
        let mut out = Vec::new();
        content
            .open_blob(&digest)?
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(format!("read blob {digest}"), e))?;
        Ok(out)
    })
    .await
}

/// The platform an image config declares (`os`, `architecture`, `variant`).
fn config_platform(config: &[u8]) -> Option<Platform> {
    #[derive(serde::Deserialize)]
    struct C {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        variant: String,
    }
    let c: C = serde_json::from_slice(config).ok()?;
    if c.os.is_empty() || c.architecture.is_empty() {
        return None;
    }
    Some(Platform::new(&c.os, &c.architecture, &c.variant))
}

/// The image records an ImageStore destination asks for (containerd's `Store`, without
/// archive annotations): its name, then its extra references.
pub(super) fn image_records(
    dst: &ImageStore,
    target: &berth_api::containerd::types::Descriptor,
) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    if !dst.name.is_empty() {
        out.push(Image {
            name: dst.name.clone(),
            labels: dst.labels.clone(),
            target: Some(target.clone()),
            ..Image::default()
        });
    }
    for r in &dst.extra_references {
        if r.is_prefix && !r.add_digest {
            continue;
        }
        let name = if r.add_digest {
            format!("{}@{}", r.name, target.digest)
        } else {
            r.name.clone()
        };
        let mut labels = dst.labels.clone();
        if !dst.name.is_empty() {
            // Goes with the primary name, as containerd's image store marks it.
            labels.insert("containerd.io/gc.bref.image".into(), dst.name.clone());
        }
        out.push(Image {
            name,
            labels,
            target: Some(target.clone()),
            ..Image::default()
        });
    }
    if out.is_empty() {
        return Err(Error::not_found("no image name found"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_source_keys_drop_the_port() {
        let key = |d| distribution_source_key(d);
        assert_eq!(
            key("127.0.0.1:5000"),
            "containerd.io/distribution.source.127.0.0.1"
        );
        assert_eq!(
            key("docker.io"),
            "containerd.io/distribution.source.docker.io"
        );
        assert_eq!(key("[::1]:5000"), "containerd.io/distribution.source.::1");
    }

    #[test]
    fn extra_references_follow_containerd() {
        let target = berth_api::containerd::types::Descriptor {
            digest: format!("sha256:{}", "a".repeat(64)),
            ..Default::default()
        };
        let dst = ImageStore {
            name: "x:1".into(),
            extra_references: vec![
                berth_api::containerd::types::transfer::ImageReference {
                    name: "x".into(),
                    is_prefix: true,
                    add_digest: true,
                    ..Default::default()
                },
                berth_api::containerd::types::transfer::ImageReference {
                    name: "skipped".into(),
                    is_prefix: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let names: Vec<String> = image_records(&dst, &target)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["x:1".to_string(), format!("x@{}", target.digest)]);
        assert!(image_records(&ImageStore::default(), &target)
            .unwrap_err()
            .is_not_found());
    }
}
