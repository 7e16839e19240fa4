//! `berth commit`: a new image from a container's changes. The Diff service computes the layer
//! between a View of the container's parent (its image's chain) and the container's snapshot;
//! the layer is applied onto a new snapshot committed under the new chain ID (so the image is
//! unpacked and `run` can use it at once); the image's config gets the diff ID, a history entry
//! and the `-c` changes, and the manifest over it is named. Everything is written under one
//! lease until the image record holds it.

use crate::api::services::diff::v1::diff_client::DiffClient;
use crate::api::services::diff::v1::ApplyRequest;
use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use crate::api::types::Descriptor;
use crate::containers::ContainerInfo;
use crate::layers::GZIP_LAYER;
use crate::leases::LeaseGuard;
use crate::lifecycle::ContainerStatus;
use crate::{Client, Error, Result};
use berth_build::dockerfile::ImageConfig;
use berth_build::image::{Blob, HistoryEntry, ImageDocument};
use std::collections::HashMap;
use tonic::Code;

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
            let parent = (!details.chain_id.is_empty()).then_some(details.chain_id.as_str());
            let diffed = crate::layers::diff_snapshot(
                self,
                lease.id(),
                &container.snapshotter,
                &container.snapshot_key,
                parent,
                GZIP_LAYER,
                "berth-commit-view-",
            )
            .await;
            if paused {
                self.tasks().resume(&container.id).await?;
            }
            let (layer, diff_id) = diffed?;
            let chain = crate::images::next_chain_id(parent, &diff_id);
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
            let snapshotter = if container.snapshotter.is_empty() {
                crate::containers::DEFAULT_SNAPSHOTTER
            } else {
                &container.snapshotter
            };
            let (config, m) = crate::layers::write_image(
                self,
                lease.id(),
                "berth-commit-",
                &doc,
                &layers,
                Some((snapshotter, &chain)),
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

    /// The layer applied onto `parent` and committed as `chain` (kept if it exists already).
    pub(crate) async fn unpack_layer(
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

    /// Point `name` at the manifest (created, or moved from an older image).
    pub(crate) async fn name_image(&self, name: &str, m: &Blob) -> Result<()> {
        let target = Descriptor {
            media_type: crate::layers::MANIFEST_TYPE.to_string(),
            digest: m.digest.clone(),
            size: m.size,
            annotations: HashMap::new(),
        };
        self.images().put(name, &target, &HashMap::new()).await?;
        Ok(())
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
pub(crate) fn apply_change(config: &mut ImageConfig, change: &str) -> Result<()> {
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
