//! The daemon's user namespace remapping (berthd's `[userns] remap`, docker's
//! `--userns-remap`): read from the exports of the Introspection plugin `io.berth.userns.v1/remap`,
//! which only a remapping daemon lists. A remapped container runs in a user namespace with the
//! daemon's maps, its image shown to it with the mapped owners: through idmapped layers
//! (the snapshot is prepared with containerd's `containerd.io/snapshot/uidmapping` and
//! `gidmapping` labels) where the daemon says it can, else on a copy of the image chowned once
//! into a committed snapshot that later containers of the image share.

use crate::api::services::images::v1::images_client::ImagesClient;
use crate::api::services::images::v1::{Image, UpdateImageRequest};
use crate::api::services::introspection::v1::introspection_client::IntrospectionClient;
use crate::api::services::introspection::v1::PluginsRequest;
use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use crate::{Client, Error, Result};
use std::collections::HashMap;
use std::path::Path;
use tonic::Code;

const PLUGIN_FILTER: &str = "type==io.berth.userns.v1,id==remap";
pub use berth_oci::idmap::{spec_maps, IdMap, IdRange, GIDMAP_LABEL, UIDMAP_LABEL};

/// A remapping: the user namespace's maps and how images are shown in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remap {
    /// The subordinate id entry the daemon took the maps from.
    pub user: String,
    pub uid: IdMap,
    pub gid: IdMap,
    /// Idmapped layers (true) or a chowned copy of the image (false).
    pub idmap: bool,
}

/// The host id of container id `id` under `map`; ids it does not hold stay as they are.
fn host_id(map: &IdMap, id: u32) -> u32 {
    map.host_id(id).unwrap_or(id)
}

impl Remap {
    /// The host uid and gid of the container's root: the owner of its volumes.
    pub fn root(&self) -> (u32, u32) {
        (host_id(&self.uid, 0), host_id(&self.gid, 0))
    }
}

impl Client {
    /// The daemon's remapping, or none when it runs containers without one.
    pub async fn userns_remap(&self) -> Result<Option<Remap>> {
        let mut intro = IntrospectionClient::new(self.channel.clone());
        let plugins = intro
            .plugins(PluginsRequest {
                filters: vec![PLUGIN_FILTER.to_string()],
            })
            .await?
            .into_inner()
            .plugins;
        let Some(p) = plugins.first() else {
            return Ok(None);
        };
        let parse_export = |s: &str| {
            IdMap::parse(s).map_err(|e| {
                Error::local(
                    Code::Internal,
                    format!("the daemon's userns plugin exports {}", e.message()),
                )
            })
        };
        let get = |k: &str| {
            p.exports.get(k).ok_or_else(|| {
                Error::local(
                    Code::Internal,
                    format!("the daemon's userns plugin has no {k:?} export"),
                )
            })
        };
        Ok(Some(Remap {
            user: get("user")?.clone(),
            uid: parse_export(get("uidmap")?)?,
            gid: parse_export(get("gidmap")?)?,
            idmap: get("idmap")? == "true",
        }))
    }

    /// The labels and parent to prepare a remapped container's rootfs with, from the image
    /// (`image`, its record's name) and its chain ID: the idmap labels on the image itself, or the chowned copy of it (made now if
    /// this is the first container of the image).
    /// Snapshots made here are held by `lease` (the container's, until its record holds the
    /// rootfs whose parent the copy is).
    pub(crate) async fn remapped_rootfs(
        &self,
        remap: &Remap,
        snapshotter: &str,
        image: &str,
        chain_id: &str,
        lease: &crate::leases::LeaseGuard,
    ) -> Result<(String, HashMap<String, String>)> {
        if remap.idmap {
            let labels = [
                (UIDMAP_LABEL.to_string(), remap.uid.to_string()),
                (GIDMAP_LABEL.to_string(), remap.gid.to_string()),
            ]
            .into();
            return Ok((chain_id.to_string(), labels));
        }
        let (u, g) = remap.root();
        // containerd's name for a remapped parent.
        let name = format!("{chain_id}-{u}-{g}");
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let stat = StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: name.clone(),
        };
        match snapshots.stat(self.request(stat)).await {
            Ok(_) => return Ok((name, HashMap::new())),
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let key = format!("{name}-remap-{}", crate::names::new_id());
        let made = self
            .chowned_copy(remap, snapshotter, chain_id, &key, &name, lease)
            .await;
        match made {
            Ok(()) => {
                // Kept while the image is (containerd's GC follows an image's snapshot refs),
                // so the copy is made once per image, not once per container.
                let label = format!("containerd.io/gc.ref.snapshot.{snapshotter}/userns-{u}-{g}");
                let update = UpdateImageRequest {
                    image: Some(Image {
                        name: image.to_string(),
                        labels: [(label.clone(), name.clone())].into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{label}")],
                    }),
                    ..Default::default()
                };
                ImagesClient::new(self.channel.clone())
                    .update(lease.request(update))
                    .await?;
                Ok((name, HashMap::new()))
            }
            // Another container of the image made it first.
            Err(e) if e.code() == Code::AlreadyExists => Ok((name, HashMap::new())),
            Err(e) => {
                let remove = RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key,
                };
                let _ = snapshots.remove(self.request(remove)).await;
                Err(e)
            }
        }
    }

    async fn chowned_copy(
        &self,
        remap: &Remap,
        snapshotter: &str,
        chain_id: &str,
        key: &str,
        name: &str,
        lease: &crate::leases::LeaseGuard,
    ) -> Result<()> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: chain_id.to_string(),
            labels: HashMap::new(),
        };
        let mounts = snapshots
            .prepare(lease.request(prepare))
            .await?
            .into_inner()
            .mounts;
        let (uid, gid) = (remap.uid.clone(), remap.gid.clone());
        tokio::task::spawn_blocking(move || {
            crate::build::with_mounted(&mounts, false, |root| shift_owners(root, &uid, &gid))
        })
        .await
        .map_err(|e| Error::local(Code::Internal, format!("chowning the image copy: {e}")))??;
        // The copy lives as long as the image's layers do: the GC drops it with the image's
        // last container once nothing references it (as containerd's remapped parents).
        let commit = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels: HashMap::new(),
            parent: String::new(),
        };
        snapshots.commit(lease.request(commit)).await?;
        Ok(())
    }
}

/// Every owner under `root` shifted into the maps. Owners are read first and set after, so a
/// hard link (or an overlay copy-up changing what a path is) is shifted once from its original
/// owner. Symlinks are never followed (lchown; directories found by lstat).
pub(crate) fn shift_owners(root: &Path, uid: &IdMap, gid: &IdMap) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let stat = |p: &Path| {
        std::fs::symlink_metadata(p).map_err(|e| Error::io(format!("stat {}", p.display()), e))
    };
    let mut owners = vec![(root.to_path_buf(), stat(root)?)];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| Error::io(format!("read {}", dir.display()), e))?
                .path();
            let md = stat(&path)?;
            if md.file_type().is_dir() {
                dirs.push(path.clone());
            }
            owners.push((path, md));
        }
    }
    for (path, md) in owners {
        let (nu, ng) = (host_id(uid, md.uid()), host_id(gid, md.gid()));
        std::os::unix::fs::lchown(&path, Some(nu), Some(ng))
            .map_err(|e| Error::io(format!("chown {}", path.display()), e))?;
        // chown clears set-id bits; the image's stay.
        if !md.file_type().is_symlink() && md.mode() & 0o6000 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_outside_the_map_stay_as_they_are() {
        let m = IdMap::parse("0:100000:65536,65536:300000:10").expect("parses");
        assert_eq!(host_id(&m, 0), 100000);
        assert_eq!(host_id(&m, 65537), 300001);
        assert_eq!(host_id(&m, 70000), 70000);
    }
}
