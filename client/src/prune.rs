//! docker's prunes: stopped containers, unused networks, dangling (or all unused) images and,
//! for `system prune`, the build cache and anonymous volumes. Each returns what it removed and
//! the bytes that freed: the namespace's content and snapshot bytes measured before and after
//! (the image deletes are synchronous, so berthd's collection has run by then), which counts
//! what was really freed rather than what the removed objects claimed.

use crate::api::services::content::v1::content_client::ContentClient;
use crate::api::services::content::v1::ListContentRequest;
use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{ListSnapshotsRequest, UsageRequest};
use crate::containers::{ContainerInfo, DEFAULT_SNAPSHOTTER};
use crate::lifecycle::ContainerStatus;
use crate::{Client, Result};
use std::collections::HashSet;

/// What one prune removed.
#[derive(Debug, Clone, Default)]
pub struct Pruned {
    /// Container ids, image names or network names, in the order removed.
    pub deleted: Vec<String>,
    pub space_reclaimed: u64,
}

/// Whether an image name is a tag (`repo:tag`) rather than a bare digest reference: an image
/// with no tag is docker's dangling `<none>:<none>`.
fn is_tagged(name: &str) -> bool {
    if name.contains('@') {
        return false;
    }
    matches!(name.rsplit_once(':'), Some((_, tag)) if !tag.contains('/'))
}

impl Client {
    /// Content blob bytes plus the disk usage of every snapshot of the namespace.
    pub async fn store_bytes(&self) -> Result<u64> {
        let mut total: u64 = 0;
        let mut stream = ContentClient::new(self.channel.clone())
            .list(self.request(ListContentRequest { filters: vec![] }))
            .await?
            .into_inner();
        while let Some(page) = stream.message().await? {
            total += page.info.iter().map(|i| i.size.max(0) as u64).sum::<u64>();
        }
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut stream = snapshots
            .list(self.request(ListSnapshotsRequest {
                snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
                filters: vec![],
            }))
            .await?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(page) = stream.message().await? {
            keys.extend(page.info.into_iter().map(|i| i.name));
        }
        for key in keys {
            // A snapshot removed meanwhile has no usage left to count.
            if let Ok(u) = snapshots
                .usage(self.request(UsageRequest {
                    snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
                    key,
                }))
                .await
            {
                total += u.into_inner().size.max(0) as u64;
            }
        }
        Ok(total)
    }

    /// Run `f` between two measures of the namespace's store; the bytes it freed.
    async fn measured<F, Fut>(&self, f: F) -> Result<Pruned>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<String>>>,
    {
        let before = self.store_bytes().await?;
        let deleted = f().await?;
        let after = self.store_bytes().await?;
        Ok(Pruned {
            deleted,
            space_reclaimed: before.saturating_sub(after),
        })
    }

    /// Remove every container that is created or exited (not running, paused or about to be
    /// restarted by the monitor), with its task, record, snapshot and logs.
    pub async fn prune_containers(&self) -> Result<Pruned> {
        self.measured(|| async {
            let tasks = self.tasks().list().await?;
            let mut deleted = Vec::new();
            for c in self.containers().list(&[]).await? {
                let status = crate::lifecycle::status_of_container(&c, tasks.get(&c.id));
                if !matches!(
                    status,
                    ContainerStatus::Created | ContainerStatus::Exited { .. }
                ) {
                    continue;
                }
                match self.remove_container(&c, false).await {
                    Ok(()) => deleted.push(c.id.clone()),
                    // Started or removed meanwhile: not this prune's to take.
                    Err(e) if e.is_not_found() || e.code() == tonic::Code::FailedPrecondition => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(deleted)
        })
        .await
    }

    /// Every container record of every namespace (networks are host-wide, and so is their use).
    async fn all_containers(&self) -> Result<Vec<ContainerInfo>> {
        let mut all = Vec::new();
        for (ns, _) in self.namespaces().await? {
            all.extend(self.with_namespace(&ns).containers().list(&[]).await?);
        }
        Ok(all)
    }

    /// Remove every network berth made that no container of any namespace names (the default
    /// network stays). Networks hold no store bytes: nothing is reclaimed.
    pub async fn prune_networks(&self) -> Result<Pruned> {
        let used: HashSet<String> = self
            .all_containers()
            .await?
            .iter()
            .filter_map(|c| c.labels.get(crate::spec::NETWORK_LABEL))
            .flat_map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
            .collect();
        let mut deleted = Vec::new();
        for n in self.networks().list().await? {
            if n.is_default || !n.managed || used.contains(&n.name) {
                continue;
            }
            match self.networks().remove(&n.name).await {
                Ok(()) => deleted.push(n.name),
                // In use by a task meanwhile (berthd checks its attachments).
                Err(e) if e.is_not_found() || e.code() == tonic::Code::FailedPrecondition => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Pruned {
            deleted,
            space_reclaimed: 0,
        })
    }

    /// Remove the images no container uses: with `all` every such image, else only the
    /// dangling ones (no tag: digest references, or names whose tag was taken away).
    pub async fn prune_images(&self, all: bool) -> Result<Pruned> {
        self.measured(|| async {
            let containers = self.containers().list(&[]).await?;
            let images = self.images().list(&[]).await?;
            // A container holds its image's manifest under any name that points at it.
            let used_targets: HashSet<String> = images
                .iter()
                .filter(|i| containers.iter().any(|c| c.image == i.name))
                .map(|i| i.target.digest.clone())
                .collect();
            let mut deleted = Vec::new();
            for i in images {
                if used_targets.contains(&i.target.digest) || (!all && is_tagged(&i.name)) {
                    continue;
                }
                match self.images().delete_exact(&i.name, true).await {
                    Ok(()) => deleted.push(i.name),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(deleted)
        })
        .await
    }

    /// Empty `berth build`'s layer cache; the bytes that freed.
    pub async fn prune_build_cache(&self) -> Result<Pruned> {
        self.measured(|| async {
            crate::build::prune(self).await?;
            Ok(Vec::new())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangling_means_untagged() {
        assert!(is_tagged("docker.io/library/busybox:latest"));
        assert!(is_tagged("localhost:5000/app:v1"));
        assert!(!is_tagged("localhost:5000/app"));
        assert!(!is_tagged("docker.io/library/busybox@sha256:abcd"));
    }
}
