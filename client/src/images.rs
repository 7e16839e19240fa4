//! Images: list, get (by the name as given, docker's normalised name, or an id prefix), tag,
//! remove, and inspect (manifest and config read from the content store, the platform's
//! manifest picked from an index), plus the chain ID of the image's layers, which names the
//! snapshot a container's rootfs is prepared from.

use crate::api::services::content::v1::content_client::ContentClient;
use crate::api::services::content::v1::ReadContentRequest;
use crate::api::services::images::v1::images_client::ImagesClient;
use crate::api::services::images::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest,
};
use crate::api::types::Descriptor;
use crate::{Client, Error, Result};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::SystemTime;
use tonic::Code;

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Manifests and configs are small; a bigger blob is not what the descriptor says it is.
const MAX_DOCUMENT: i64 = 4 << 20;

/// An image record.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub name: String,
    pub target: Descriptor,
    pub labels: HashMap<String, String>,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
}

impl ImageInfo {
    fn from_api(i: Image) -> ImageInfo {
        ImageInfo {
            name: i.name,
            target: i.target.unwrap_or_default(),
            labels: i.labels,
            created_at: i.created_at.and_then(timestamp),
            updated_at: i.updated_at.and_then(timestamp),
        }
    }

    /// The image id docker shows: the target's digest without its algorithm.
    pub fn id(&self) -> &str {
        self.target
            .digest
            .strip_prefix("sha256:")
            .unwrap_or(&self.target.digest)
    }
}

pub(crate) fn timestamp(t: prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, nanos))
}

/// What an image is made of: its record, the manifest for this platform, its config.
#[derive(Debug, Clone)]
pub struct ImageDetails {
    pub image: ImageInfo,
    pub manifest_descriptor: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    /// The chain ID of the layers: the committed snapshot a container's rootfs starts from.
    pub chain_id: String,
    /// Manifest, config and compressed layers.
    pub size: i64,
}

/// docker's reference normalisation: `busybox` → `docker.io/library/busybox:latest`,
/// `me/app` → `docker.io/me/app:latest`, `host:5000/app` → `host:5000/app:latest` — the
/// registry client's parse, the one the daemon's pull uses. What is no valid reference (an id
/// prefix a caller tries next) comes back as given.
pub fn normalize(reference: &str) -> String {
    berth_registry::Reference::parse(reference)
        .map(|r| r.to_string())
        .unwrap_or_else(|_| reference.to_string())
}

/// The chain IDs of a stack of layers (each prefix's), from their diff IDs.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = next_chain_id(chain.last().map(String::as_str), d);
        chain.push(next);
    }
    chain
}

/// The chain ID of a layer with diff ID `diff_id` on the chain `parent` (none: the first layer).
pub fn next_chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_string(),
        Some(p) => format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{p} {diff_id}")))
        ),
    }
}

/// The architecture in OCI's vocabulary (GOARCH).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The images of the client's namespace.
pub struct Images {
    client: Client,
}

impl Images {
    pub(crate) fn new(client: Client) -> Images {
        Images { client }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    fn api(&self) -> ImagesClient<tonic::transport::Channel> {
        ImagesClient::new(self.client.channel.clone())
    }

    /// Every image matching all of containerd's `filters` (none: all), sorted by name.
    pub async fn list(&self, filters: &[String]) -> Result<Vec<ImageInfo>> {
        let req = ListImagesRequest {
            filters: filters.to_vec(),
        };
        let mut images: Vec<ImageInfo> = self
            .api()
            .list(self.client.request(req))
            .await?
            .into_inner()
            .images
            .into_iter()
            .map(ImageInfo::from_api)
            .collect();
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// The image named exactly `name`.
    pub async fn get_exact(&self, name: &str) -> Result<ImageInfo> {
        let req = GetImageRequest {
            name: name.to_string(),
        };
        let image = self
            .api()
            .get(self.client.request(req))
            .await?
            .into_inner()
            .image
            .ok_or_else(|| Error::not_found(format!("image {name:?}")))?;
        Ok(ImageInfo::from_api(image))
    }

    /// Find an image as docker does: the name as given, then its normalised form, then an id
    /// (digest) prefix that names exactly one image.
    pub async fn get(&self, reference: &str) -> Result<ImageInfo> {
        match self.get_exact(reference).await {
            Err(e) if e.code() == Code::NotFound => {}
            other => return other,
        }
        let full = normalize(reference);
        if full != reference {
            match self.get_exact(&full).await {
                Err(e) if e.code() == Code::NotFound => {}
                other => return other,
            }
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let all = self.list(&[]).await?;
            let matches: Vec<_> = all
                .into_iter()
                .filter(|i| i.id().starts_with(prefix))
                .collect();
            let ids: std::collections::BTreeSet<&str> = matches.iter().map(|i| i.id()).collect();
            if ids.len() > 1 {
                return Err(Error::local(
                    Code::FailedPrecondition,
                    format!("image id prefix {reference:?} is ambiguous"),
                ));
            }
            // One id (perhaps under several names): any of its records will do.
            if let Some(first) = matches.into_iter().next() {
                return Ok(first);
            }
        }
        Err(Error::not_found(format!("no such image: {reference}")))
    }

    /// Give the image `source` names a second name (`target`, normalised as docker does).
    pub async fn tag(&self, source: &str, target: &str) -> Result<ImageInfo> {
        let src = self.get(source).await?;
        let name = normalize(target);
        self.put(&name, &src.target, &src.labels).await
    }

    /// Create or update the record named exactly `name` (no normalisation: a CRI's
    /// `name@digest` and `sha256:<id>` references are names too) for `target`.
    pub async fn put(
        &self,
        name: &str,
        target: &Descriptor,
        labels: &HashMap<String, String>,
    ) -> Result<ImageInfo> {
        let image = Image {
            name: name.to_string(),
            labels: labels.clone(),
            target: Some(target.clone()),
            ..Default::default()
        };
        let req = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match self.api().create(self.client.request(req)).await {
            Ok(r) => Ok(ImageInfo::from_api(r.into_inner().image.unwrap_or(image))),
            Err(e) if e.code() == Code::AlreadyExists => {
                let update = crate::api::services::images::v1::UpdateImageRequest {
                    image: Some(image.clone()),
                    ..Default::default()
                };
                let r = self.api().update(self.client.request(update)).await?;
                Ok(ImageInfo::from_api(r.into_inner().image.unwrap_or(image)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Remove the record named exactly `name`; `sync` waits for garbage collection.
    pub async fn delete_exact(&self, name: &str, sync: bool) -> Result<()> {
        let req = DeleteImageRequest {
            name: name.to_string(),
            sync,
            target: None,
        };
        self.api().delete(self.client.request(req)).await?;
        Ok(())
    }

    /// Remove the image record named by `reference` (its content goes with garbage collection;
    /// `sync` waits for that).
    pub async fn remove(&self, reference: &str, sync: bool) -> Result<ImageInfo> {
        let image = self.get(reference).await?;
        let req = DeleteImageRequest {
            name: image.name.clone(),
            sync,
            target: None,
        };
        self.api().delete(self.client.request(req)).await?;
        Ok(image)
    }

    /// A blob's bytes, read through the Content service.
    pub async fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > MAX_DOCUMENT {
            return Err(Error::invalid(format!(
                "{} is {} bytes, more than a manifest or config may be",
                desc.digest, desc.size
            )));
        }
        let req = ReadContentRequest {
            digest: desc.digest.clone(),
            offset: 0,
            size: 0,
        };
        let mut stream = ContentClient::new(self.client.channel.clone())
            .read(self.client.request(req))
            .await?
            .into_inner();
        let mut data = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.data);
            if data.len() as i64 > MAX_DOCUMENT {
                return Err(Error::invalid(format!("{} is too large", desc.digest)));
            }
        }
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        if got != desc.digest {
            return Err(Error::local(
                Code::DataLoss,
                format!("content {} reads back as {got}", desc.digest),
            ));
        }
        Ok(data)
    }

    /// The image's manifest for this platform and its config.
    pub async fn inspect(&self, reference: &str) -> Result<ImageDetails> {
        self.inspect_for(reference, None).await
    }

    /// [`Images::inspect`] of `platform`'s manifest when the image is an index (None: this
    /// host's); NotFound when that manifest is listed but its content was never pulled.
    pub async fn inspect_for(
        &self,
        reference: &str,
        platform: Option<&berth_registry::Platform>,
    ) -> Result<ImageDetails> {
        let image = self.get(reference).await?;
        let mut desc = image.target.clone();
        let mut size = 0;
        if INDEX_TYPES.contains(&desc.media_type.as_str()) {
            let bytes = self.read_blob(&desc).await?;
            size += bytes.len() as i64;
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid(format!("index {}: {e}", desc.digest)))?;
            let chosen = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_none_or(|p| match platform {
                        None => {
                            p.os().to_string() == "linux"
                                && p.architecture().to_string() == oci_arch()
                        }
                        Some(want) => want.matches(&berth_registry::Platform::new(
                            &p.os().to_string(),
                            &p.architecture().to_string(),
                            p.variant().as_deref().unwrap_or(""),
                        )),
                    })
                })
                .ok_or_else(|| {
                    let wanted = platform
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| format!("linux/{}", oci_arch()));
                    Error::not_found(format!("image {} has no manifest for {wanted}", image.name))
                })?;
            desc = Descriptor {
                media_type: chosen.media_type().to_string(),
                digest: chosen.digest().to_string(),
                size: chosen.size() as i64,
                annotations: HashMap::new(),
            };
        }
        let bytes = self.read_blob(&desc).await?;
        size += bytes.len() as i64;
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("manifest {}: {e}", desc.digest)))?;
        let config_desc = Descriptor {
            media_type: manifest.config().media_type().to_string(),
            digest: manifest.config().digest().to_string(),
            size: manifest.config().size() as i64,
            annotations: HashMap::new(),
        };
        let config_bytes = self.read_blob(&config_desc).await?;
        size += config_bytes.len() as i64;
        size += manifest
            .layers()
            .iter()
            .map(|l| l.size() as i64)
            .sum::<i64>();
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| Error::invalid(format!("image config {}: {e}", config_desc.digest)))?;
        let chain_id = chain_ids(config.rootfs().diff_ids())
            .pop()
            .ok_or_else(|| Error::invalid(format!("image {} has no layers", image.name)))?;
        Ok(ImageDetails {
            image,
            manifest_descriptor: desc,
            manifest,
            config,
            chain_id,
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_as_docker_does() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("me/app", "docker.io/me/app:latest"),
            ("docker.io/berth/busybox:e2e", "docker.io/berth/busybox:e2e"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app:v1", "localhost/app:v1"),
            ("quay.io/a/b@sha256:00", "quay.io/a/b@sha256:00"),
        ] {
            assert_eq!(normalize(given), want, "{given}");
        }
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let ids = chain_ids(&["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(ids[0], "sha256:a");
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest("sha256:a sha256:b"))
        );
        assert_eq!(ids[1], want);
    }
}
