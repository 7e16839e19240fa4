//! `berth commit`: a new image from a container's changes. The Diff service computes the layer
//! between a View of the container's parent (its image's chain) and the container's snapshot;
//! the layer is applied onto a new snapshot committed under the new chain ID (so the image is
//! unpacked and `run` can use it at once); the image's config gets the diff ID, a history entry
//! and the `-c` changes, and the manifest over it is named. Everything is written under one
//! lease until the image record holds it.

use crate::api::services::content::v1::content_client::ContentClient;
use crate::api::services::content::v1::{InfoRequest, WriteAction, WriteContentRequest};
use crate::api::services::diff::v1::diff_client::DiffClient;
use crate::api::services::diff::v1::{ApplyRequest, DiffRequest};
use crate::api::services::images::v1::images_client::ImagesClient;
use crate::api::services::images::v1::{CreateImageRequest, Image, UpdateImageRequest};
use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{
    CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    ViewSnapshotRequest,
};
use crate::api::types::Descriptor;
use crate::containers::ContainerInfo;
use crate::leases::LeaseGuard;
use crate::lifecycle::ContainerStatus;
use crate::{Client, Error, Result};
use berth_build::dockerfile::ImageConfig;
use berth_build::image::{manifest, Blob, HistoryEntry, ImageDocument};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tonic::Code;

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// docker's `commit` options.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// The new image's name (normalised like a pull's).
    pub reference: String,
    /// `-m`: the history entry's comment.
    pub message: Option<String>,
    /// `-a`: the image's and the history entry's author.
    pub author: Option<String>,
    /// `-c`: Dockerfile instructions applied to the config (CMD, ENTRYPOINT, ENV, WORKDIR,
    /// USER, LABEL, EXPOSE, STOPSIGNAL, VOLUME).
    pub changes: Vec<String>,
    /// Freeze the container while its changes are read.
    pub pause: bool,
}

/// What a commit wrote.
#[derive(Debug, Clone)]
pub struct Committed {
    pub name: String,
    pub config_digest: String,
    pub manifest_digest: String,
}

impl Client {
    /// A new image `opts.reference` from `container`'s filesystem changes.
    pub async fn commit_container(
        &self,
        container: &ContainerInfo,
        opts: &CommitOptions,
    ) -> Result<Committed> {
        if container.snapshot_key.is_empty() {
            return Err(Error::invalid(format!(
                "container {} has no rootfs snapshot to commit",
                container.id
            )));
        }
        let details = self.images().inspect(&container.image).await?;
        let cd = details.manifest.config();
        let bytes = self
            .images()
            .read_blob(&Descriptor {
                media_type: cd.media_type().to_string(),
                digest: cd.digest().to_string(),
                size: cd.size() as i64,
                annotations: HashMap::new(),
            })
            .await?;
        let mut doc: ImageDocument = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("image config of {}: {e}", container.image)))?;
        // Changes are checked before anything is written.
        for c in &opts.changes {
            apply_change(&mut doc.config, c)?;
        }
        let mut layers: Vec<Blob> = details
            .manifest
            .layers()
            .iter()
            .map(|l| Blob {
                media_type: l.media_type().to_string(),
                digest: l.digest().to_string(),
                size: l.size() as i64,
            })
            .collect();

        let lease = self
            .leases()
            .create(std::time::Duration::from_secs(3600))
            .await?;
        let result = async {
            let paused = opts.pause && self.pause_if_running(container).await?;
            let diffed = self
                .container_layer(&lease, container, &details.chain_id)
                .await;
            if paused {
                self.tasks().resume(&container.id).await?;
            }
            let (layer, diff_id) = diffed?;
            let parent = (!details.chain_id.is_empty()).then_some(details.chain_id.as_str());
            let chain = match parent {
                None => diff_id.clone(),
                Some(p) => format!(
                    "sha256:{}",
                    hex::encode(Sha256::digest(format!("{p} {diff_id}").as_bytes()))
                ),
            };
            self.unpack_layer(&lease, &container.snapshotter, parent, &layer, &chain)
                .await?;
            let now = crate::clock::rfc3339(std::time::SystemTime::now());
            doc.created = Some(now.clone());
            if opts.author.is_some() {
                doc.author = opts.author.clone();
            }
            doc.rootfs.diff_ids.push(diff_id);
            doc.history.push(HistoryEntry {
                created: Some(now),
                created_by: Some(if opts.changes.is_empty() {
                    "berth commit".to_string()
                } else {
                    format!("berth commit -c {}", opts.changes.join(" -c "))
                }),
                author: opts.author.clone(),
                comment: opts.message.clone(),
                empty_layer: false,
            });
            layers.push(layer);
            let config_bytes = serde_json::to_vec(&doc)
                .map_err(|e| Error::invalid(format!("encode the image config: {e}")))?;
            let snapshotter = if container.snapshotter.is_empty() {
                crate::containers::DEFAULT_SNAPSHOTTER
            } else {
                &container.snapshotter
            };
            let config = self
                .write_blob(
                    &lease,
                    CONFIG_TYPE,
                    config_bytes,
                    HashMap::from([(
                        format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                        chain,
                    )]),
                )
                .await?;
            let mut manifest_labels = HashMap::from([(
                "containerd.io/gc.ref.content.config".to_string(),
                config.digest.clone(),
            )]);
            for (i, l) in layers.iter().enumerate() {
                manifest_labels.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    l.digest.clone(),
                );
            }
            let m = self
                .write_blob(
                    &lease,
                    MANIFEST_TYPE,
                    manifest(&config, &layers),
                    manifest_labels,
                )
                .await?;
            let name = crate::images::normalize(&opts.reference);
            self.name_image(&name, &m).await?;
            Ok::<_, Error>(Committed {
                name,
                config_digest: config.digest,
                manifest_digest: m.digest,
            })
        }
        .await;
        let released = lease.release().await;
        let committed = result?;
        released?;
        Ok(committed)
    }

    /// Pause a running container; whether it was paused here.
    async fn pause_if_running(&self, c: &ContainerInfo) -> Result<bool> {
        match self.status(c).await? {
            ContainerStatus::Running { .. } => {
                self.tasks().pause(&c.id).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The container's changes as a gzip layer, and its diff ID.
    async fn container_layer(
        &self,
        lease: &LeaseGuard,
        c: &ContainerInfo,
        parent: &str,
    ) -> Result<(Blob, String)> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let right = snapshots
            .mounts(self.request(MountsRequest {
                snapshotter: c.snapshotter.clone(),
                key: c.snapshot_key.clone(),
            }))
            .await?
            .into_inner()
            .mounts;
        let view_key = format!("berth-commit-view-{}", crate::names::new_id());
        let left = if parent.is_empty() {
            Vec::new()
        } else {
            snapshots
                .view(lease.request(ViewSnapshotRequest {
                    snapshotter: c.snapshotter.clone(),
                    key: view_key.clone(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                }))
                .await?
                .into_inner()
                .mounts
        };
        let diffed = DiffClient::new(self.channel.clone())
            .diff(lease.request(DiffRequest {
                left,
                right,
                media_type: GZIP_LAYER.to_string(),
                r#ref: String::new(),
                labels: HashMap::new(),
                source_date_epoch: None,
            }))
            .await;
        if !parent.is_empty() {
            let _ = snapshots
                .remove(self.request(RemoveSnapshotRequest {
                    snapshotter: c.snapshotter.clone(),
                    key: view_key,
                }))
                .await;
        }
        let desc = diffed?
            .into_inner()
            .diff
            .ok_or_else(|| Error::local(Code::Internal, "Diff answered no descriptor"))?;
        let info = ContentClient::new(self.channel.clone())
            .info(self.request(InfoRequest {
                digest: desc.digest.clone(),
            }))
            .await?
            .into_inner()
            .info
            .ok_or_else(|| Error::local(Code::Internal, "Content.Info answered nothing"))?;
        let diff_id = info.labels.get(UNCOMPRESSED).cloned().ok_or_else(|| {
            Error::local(
                Code::Internal,
                format!("layer {} has no diff ID label", desc.digest),
            )
        })?;
        Ok((
            Blob {
                media_type: desc.media_type,
                digest: desc.digest,
                size: desc.size,
            },
            diff_id,
        ))
    }

    /// The layer applied onto `parent` and committed as `chain` (kept if it exists already).
    async fn unpack_layer(
        &self,
        lease: &LeaseGuard,
        snapshotter: &str,
        parent: Option<&str>,
        layer: &Blob,
        chain: &str,
    ) -> Result<()> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let key = format!("berth-commit-{}", crate::names::new_id());
        let mounts = snapshots
            .prepare(lease.request(PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.clone(),
                parent: parent.unwrap_or_default().to_string(),
                labels: HashMap::new(),
            }))
            .await?
            .into_inner()
            .mounts;
        let remover = snapshots.clone();
        let remove = |key: String| {
            let mut s = remover.clone();
            let req = self.request(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key,
            });
            async move {
                let _ = s.remove(req).await;
            }
        };
        let applied = DiffClient::new(self.channel.clone())
            .apply(lease.request(ApplyRequest {
                diff: Some(Descriptor {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest.clone(),
                    size: layer.size,
                    annotations: HashMap::new(),
                }),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await;
        if let Err(e) = applied {
            remove(key).await;
            return Err(e.into());
        }
        let commit = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: chain.to_string(),
            key: key.clone(),
            labels: HashMap::new(),
            ..Default::default()
        };
        match snapshots.commit(lease.request(commit)).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::AlreadyExists => {
                remove(key).await;
                Ok(())
            }
            Err(e) => {
                remove(key).await;
                Err(e.into())
            }
        }
    }

    async fn write_blob(
        &self,
        lease: &LeaseGuard,
        media_type: &str,
        bytes: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<Blob> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let size = bytes.len() as i64;
        let req = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: format!("berth-commit-{digest}"),
            total: size,
            expected: digest.clone(),
            offset: 0,
            data: bytes,
            labels,
        };
        match ContentClient::new(self.channel.clone())
            .write(lease.request(tokio_stream::iter(vec![req])))
            .await
        {
            Ok(resp) => {
                let mut resp = resp.into_inner();
                loop {
                    match resp.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) if e.code() == Code::AlreadyExists => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Err(e) if e.code() == Code::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Blob {
            media_type: media_type.to_string(),
            digest,
            size,
        })
    }

    /// Point `name` at the manifest (created, or moved from an older image).
    async fn name_image(&self, name: &str, m: &Blob) -> Result<()> {
        let image = Image {
            name: name.to_string(),
            target: Some(Descriptor {
                media_type: MANIFEST_TYPE.to_string(),
                digest: m.digest.clone(),
                size: m.size,
                annotations: HashMap::new(),
            }),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        match images
            .create(self.request(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::AlreadyExists => {
                images
                    .update(self.request(UpdateImageRequest {
                        image: Some(image),
                        ..Default::default()
                    }))
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A command as docker reads `CMD`/`ENTRYPOINT`: a JSON array, or a shell form.
fn command_form(rest: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(rest) {
        Ok(v) => v,
        Err(_) => vec!["/bin/sh".into(), "-c".into(), rest.to_string()],
    }
}

/// KEY=VALUE pairs (values may be double-quoted), or the legacy `KEY VALUE`.
fn pairs(rest: &str, what: &str) -> Result<Vec<(String, String)>> {
    if !rest.contains('=') {
        return match rest.split_once(char::is_whitespace) {
            Some((k, v)) => Ok(vec![(k.to_string(), v.trim().to_string())]),
            None => Err(Error::invalid(format!("{what} {rest:?}: want KEY=VALUE"))),
        };
    }
    let mut out = Vec::new();
    for word in rest.split_whitespace() {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("{what} {rest:?}: want KEY=VALUE")))?;
        out.push((k.to_string(), v.trim_matches('"').to_string()));
    }
    Ok(out)
}

/// One `-c` instruction applied to `config`.
fn apply_change(config: &mut ImageConfig, change: &str) -> Result<()> {
    let change = change.trim();
    let (word, rest) = change
        .split_once(char::is_whitespace)
        .unwrap_or((change, ""));
    let rest = rest.trim();
    match word.to_ascii_uppercase().as_str() {
        "CMD" => config.cmd = Some(command_form(rest)),
        "ENTRYPOINT" => config.entrypoint = Some(command_form(rest)),
        "ENV" => {
            for (k, v) in pairs(rest, "ENV")? {
                config
                    .env
                    .retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
                config.env.push(format!("{k}={v}"));
            }
        }
        "LABEL" => {
            for (k, v) in pairs(rest, "LABEL")? {
                config.labels.insert(k, v);
            }
        }
        "WORKDIR" => config.working_dir = rest.to_string(),
        "USER" => config.user = rest.to_string(),
        "STOPSIGNAL" => config.stop_signal = rest.to_string(),
        "EXPOSE" => {
            for p in rest.split_whitespace() {
                let p = if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                };
                config.exposed_ports.insert(p, Default::default());
            }
        }
        "VOLUME" => {
            let paths = serde_json::from_str::<Vec<String>>(rest)
                .unwrap_or_else(|_| rest.split_whitespace().map(String::from).collect());
            for p in paths {
                config.volumes.insert(p, Default::default());
            }
        }
        _ => {
            return Err(Error::invalid(format!(
                "unsupported change {change:?}: commit -c takes CMD, ENTRYPOINT, ENV, LABEL, \
                 WORKDIR, USER, STOPSIGNAL, EXPOSE, VOLUME"
            )))
        }
    }
    if rest.is_empty() {
        return Err(Error::invalid(format!("change {change:?} has no value")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_edit_the_config() {
        let mut c = ImageConfig::default();
        apply_change(&mut c, r#"CMD ["cat", "/x"]"#).unwrap();
        apply_change(&mut c, "ENTRYPOINT echo hi").unwrap();
        apply_change(&mut c, "ENV A=1 B=\"two\"").unwrap();
        apply_change(&mut c, "env A 3").unwrap();
        apply_change(&mut c, "EXPOSE 80").unwrap();
        assert_eq!(c.cmd, Some(vec!["cat".to_string(), "/x".to_string()]));
        assert_eq!(
            c.entrypoint,
            Some(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(c.env, vec!["B=two".to_string(), "A=3".to_string()]);
        assert!(c.exposed_ports.contains_key("80/tcp"));
        assert!(apply_change(&mut c, "RUN rm -rf /").is_err());
        assert!(apply_change(&mut c, "WORKDIR").is_err());
    }
}
