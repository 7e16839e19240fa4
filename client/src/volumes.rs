//! berthd's named volumes (`berth.services.volumes.v1`, namespaced): create, inspect, list,
//! remove, prune; and what `run -v NAME:/path` needs of them: the volume made when absent, its
//! directory bind-mounted, and an empty volume filled from the image's content at that path
//! (docker's copy-up: owners, modes and times kept), through a read-only View of the image
//! resolved inside its root.

use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{RemoveSnapshotRequest, ViewSnapshotRequest};
use crate::mounts::MountRequest;
use crate::{Client, Error, Result};
use berth_api::berth::services::volumes::v1::volumes_client::VolumesClient;
pub use berth_api::berth::services::volumes::v1::Volume;
use berth_api::berth::services::volumes::v1::{
    CreateVolumeRequest, GetVolumeRequest, ListVolumesRequest, PruneVolumesRequest,
    RemoveVolumeRequest,
};
use std::collections::HashMap;
use tonic::Code;

/// The container label listing the volumes it mounts (a JSON list of names); berthd refuses
/// to remove a volume a container names there.
pub const VOLUMES_LABEL: &str = "berth/volumes";

/// What a prune removed.
#[derive(Debug, Clone, Default)]
pub struct Pruned {
    pub deleted: Vec<String>,
    pub space_reclaimed: u64,
}

pub struct Volumes {
    client: Client,
}

impl Volumes {
    pub(crate) fn new(client: Client) -> Volumes {
        Volumes { client }
    }

    fn api(&self) -> VolumesClient<tonic::transport::Channel> {
        VolumesClient::new(self.client.channel.clone())
    }

    /// Create `name` (None: an anonymous volume with a generated name). An existing name
    /// answers the existing volume, as docker does.
    pub async fn create(
        &self,
        name: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<Volume> {
        self.api()
            .create(self.client.request(CreateVolumeRequest {
                name: name.unwrap_or_default().to_string(),
                driver: String::new(),
                labels,
            }))
            .await?
            .into_inner()
            .volume
            .ok_or_else(|| Error::local(Code::Internal, "create answered no volume"))
    }

    pub async fn get(&self, name: &str) -> Result<Volume> {
        self.api()
            .get(self.client.request(GetVolumeRequest {
                name: name.to_string(),
            }))
            .await?
            .into_inner()
            .volume
            .ok_or_else(|| Error::not_found(format!("volume {name:?}: not found")))
    }

    /// Every volume of the namespace by name; with `usage`, sizes and reference counts.
    pub async fn list(&self, usage: bool) -> Result<Vec<Volume>> {
        Ok(self
            .api()
            .list(self.client.request(ListVolumesRequest { usage }))
            .await?
            .into_inner()
            .volumes)
    }

    /// Remove `name` and its data; the daemon refuses while a container uses it.
    pub async fn remove(&self, name: &str) -> Result<()> {
        self.api()
            .remove(self.client.request(RemoveVolumeRequest {
                name: name.to_string(),
            }))
            .await?;
        Ok(())
    }

    /// Remove unused volumes: anonymous ones, or all with `all`; only those with `labels`.
    pub async fn prune(&self, all: bool, labels: HashMap<String, String>) -> Result<Pruned> {
        let r = self
            .api()
            .prune(self.client.request(PruneVolumesRequest { all, labels }))
            .await?
            .into_inner();
        Ok(Pruned {
            deleted: r.deleted,
            space_reclaimed: r.space_reclaimed.max(0) as u64,
        })
    }
}

/// The volume mounts of a container about to be created, resolved: each volume request made a
/// bind of the volume's directory, with the names for the container's label.
pub(crate) struct ResolvedVolumes {
    pub mounts: Vec<MountRequest>,
    pub names: Vec<String>,
    /// Anonymous volumes made for this container.
    pub made_anonymous: Vec<String>,
}

impl Client {
    /// Volumes of `requests` made (anonymous ones) or found (created when absent), filled from
    /// the image `chain_id` when empty, and turned into bind mounts.
    pub(crate) async fn resolve_volumes(
        &self,
        requests: &[MountRequest],
        snapshotter: &str,
        chain_id: &str,
        remap: Option<&crate::userns::Remap>,
    ) -> Result<ResolvedVolumes> {
        let mut out = ResolvedVolumes {
            mounts: Vec::new(),
            names: Vec::new(),
            made_anonymous: Vec::new(),
        };
        let mut fill: Vec<(String, String)> = Vec::new();
        for r in requests {
            let MountRequest::Volume {
                name,
                destination,
                readonly,
            } = r
            else {
                out.mounts.push(r.clone());
                continue;
            };
            let v = self
                .volumes()
                .create(name.as_deref(), HashMap::new())
                .await?;
            let empty = std::fs::read_dir(&v.mountpoint)
                .map_err(|e| Error::io(format!("read volume {}'s directory", v.name), e))?
                .next()
                .is_none();
            if empty {
                fill.push((destination.clone(), v.mountpoint.clone()));
            }
            if name.is_none() {
                out.made_anonymous.push(v.name.clone());
            }
            out.names.push(v.name.clone());
            out.mounts.push(MountRequest::Bind {
                source: v.mountpoint,
                destination: destination.clone(),
                readonly: *readonly,
                propagation: "rprivate".into(),
            });
        }
        if !fill.is_empty() && !chain_id.is_empty() {
            self.copy_up(snapshotter, chain_id, fill.clone()).await?;
        }
        if let Some(remap) = remap {
            // A new volume belongs to the container's root, as docker's under userns-remap:
            // its directory and what the image put in it, shifted into the maps.
            let (uid, gid) = (remap.uid.clone(), remap.gid.clone());
            tokio::task::spawn_blocking(move || {
                fill.iter().try_for_each(|(_, dir)| {
                    crate::userns::shift_owners(std::path::Path::new(dir), &uid, &gid)
                })
            })
            .await
            .map_err(|e| Error::local(Code::Internal, format!("chowning a volume: {e}")))??;
        }
        Ok(out)
    }

    /// docker's copy-up: for each (path in the image, empty volume dir), the image's directory
    /// at that path copied into the volume, owners and modes kept; paths that are not
    /// directories in the image leave the volume empty.
    async fn copy_up(
        &self,
        snapshotter: &str,
        chain_id: &str,
        fill: Vec<(String, String)>,
    ) -> Result<()> {
        let key = format!("berth-volume-view-{}", crate::names::new_id());
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let lease = self
            .leases()
            .create(std::time::Duration::from_secs(600))
            .await?;
        let view = ViewSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
            parent: chain_id.to_string(),
            labels: HashMap::new(),
        };
        let mounts = match snapshots.view(lease.request(view)).await {
            Ok(r) => r.into_inner().mounts,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e.into());
            }
        };
        let copied = tokio::task::spawn_blocking(move || {
            crate::build::with_mounted(&mounts, true, |root| {
                for (path, dir) in &fill {
                    let Some(src) = crate::fscopy::open_dir_in_root(root, path)? else {
                        continue;
                    };
                    let dst = crate::fscopy::open_host_dir(std::path::Path::new(dir))?;
                    crate::fscopy::copy_dir_contents(
                        &src,
                        &dst,
                        crate::fscopy::Owner::Source(None),
                    )?;
                    crate::fscopy::copy_dir_attrs(&src, &dst, crate::fscopy::Owner::Source(None))?;
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| Error::local(Code::Internal, format!("copying into a volume: {e}")));
        let removed = snapshots
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key,
            }))
            .await;
        let released = lease.release().await;
        copied??;
        match removed {
            Err(e) if e.code() != Code::NotFound => return Err(e.into()),
            _ => {}
        }
        released
    }

    /// The anonymous volumes `container` names in its label (for `rm -v`).
    pub async fn anonymous_volumes_of(
        &self,
        container: &crate::containers::ContainerInfo,
    ) -> Result<Vec<String>> {
        let names: Vec<String> = container
            .labels
            .get(VOLUMES_LABEL)
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        let mut out = Vec::new();
        for n in names {
            match self.volumes().get(&n).await {
                Ok(v) if v.anonymous => out.push(n),
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
