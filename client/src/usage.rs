//! What a namespace holds on disk, for `berth system df`: images (manifest, config and
//! compressed layers; active while a container was made from one), containers (their writable
//! layers through Snapshots.Usage; active while a task runs), volumes (measured by berthd;
//! active while a container names one) and berth build's layer cache.

use crate::api::services::content::v1::content_client::ContentClient;
use crate::api::services::content::v1::ListContentRequest;
use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::UsageRequest;
use crate::lifecycle::ContainerStatus;
use crate::{Client, Result};

/// One kind's count and bytes.
#[derive(Debug, Clone, Default)]
pub struct Category {
    pub total: usize,
    pub active: usize,
    pub size: i64,
    /// Bytes of the inactive ones.
    pub reclaimable: i64,
}

impl Category {
    fn add(&mut self, size: i64, active: bool) {
        self.total += 1;
        self.size += size;
        if active {
            self.active += 1;
        } else {
            self.reclaimable += size;
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DiskUsage {
    pub images: Category,
    pub containers: Category,
    pub volumes: Category,
    pub build_cache: Category,
}

impl Client {
    pub async fn disk_usage(&self) -> Result<DiskUsage> {
        let mut u = DiskUsage::default();
        let containers = self.containers().list(&[]).await?;
        let tasks = self.tasks().list().await?;
        for i in self.images().list(&[]).await? {
            let size = match self.images().inspect(&i.name).await {
                Ok(d) => d.size,
                Err(_) => i.target.size,
            };
            u.images
                .add(size, containers.iter().any(|c| c.image == i.name));
        }
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        for c in &containers {
            let size = if c.snapshot_key.is_empty() {
                0
            } else {
                snapshots
                    .usage(self.request(UsageRequest {
                        snapshotter: c.snapshotter.clone(),
                        key: c.snapshot_key.clone(),
                    }))
                    .await
                    .map(|r| r.into_inner().size)
                    .unwrap_or(0)
            };
            let running = matches!(
                tasks.get(&c.id).map(crate::lifecycle::status_of_task),
                Some(ContainerStatus::Running { .. }) | Some(ContainerStatus::Paused { .. })
            );
            u.containers.add(size, running);
        }
        for v in self.volumes().list(true).await? {
            let usage = v.usage.unwrap_or_default();
            u.volumes.add(usage.size, usage.ref_count > 0);
        }
        // The cache's records are small JSON blobs naming the layer each holds, and its size.
        let mut stream = ContentClient::new(self.channel.clone())
            .list(self.request(ListContentRequest {
                filters: vec![format!("labels.\"{}\"", crate::build::CACHE_LABEL)],
            }))
            .await?
            .into_inner();
        let mut records = Vec::new();
        while let Some(page) = stream.message().await? {
            records.extend(page.info);
        }
        for info in records {
            let desc = crate::api::types::Descriptor {
                media_type: "application/json".into(),
                digest: info.digest.clone(),
                size: info.size,
                annotations: Default::default(),
            };
            let size = match self.images().read_blob(&desc).await {
                Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["size"].as_i64())
                    .unwrap_or(0),
                Err(_) => 0,
            };
            u.build_cache.add(size, false);
        }
        Ok(u)
    }
}
