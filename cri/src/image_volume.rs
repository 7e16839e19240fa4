//! Image volumes (the CRI's `Mount.image`, Kubernetes' ImageVolume): an image already pulled,
//! mounted read-only into a container, whole or one path of it (`image_sub_path`).
//!
//! Each one is a View snapshot of the image's chain, keyed `<container>-image-volume-<n>`,
//! made through berthd's Snapshots API as the rootfs is. A lease holds it while the container
//! is created; after that the container record holds it through a
//! `containerd.io/gc.ref.snapshot.<snapshotter>/image-volume-<n>` label, so the collector keeps
//! it as long as the container exists and drops it with the record. The view is mounted
//! read-only on the host at `<cri state>/image-volumes/<container>/<n>`, and the container's
//! spec binds that (or the sub path inside it) in. RemoveContainer unmounts and removes the
//! views; at start the CRI unmounts what is left of containers that are gone.

use crate::Cri;
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::{
    MountsRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
};
use berth::containers::DEFAULT_SNAPSHOTTER;
use berth_api::runtime::v1 as cri;
use berth_errdefs::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The prefix of the record's labels that name its image volumes' views (the snapshotter and
/// then `/image-volume-<n>`, the form the collector follows).
fn ref_label(n: usize) -> String {
    format!("containerd.io/gc.ref.snapshot.{DEFAULT_SNAPSHOTTER}/image-volume-{n}")
}

fn view_key(container: &str, n: usize) -> String {
    format!("{container}-image-volume-{n}")
}

/// The image volumes a container record names: (n, view key).
pub(crate) fn of_record(labels: &HashMap<String, String>) -> Vec<(usize, String)> {
    let prefix = format!("containerd.io/gc.ref.snapshot.{DEFAULT_SNAPSHOTTER}/image-volume-");
    let mut out: Vec<(usize, String)> = labels
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.parse().ok()?, v.clone())))
        .collect();
    out.sort();
    out
}

/// What [`Cri::prepare_image_volumes`] made: the bind source of each image mount (by the
/// mount's index in the config), the labels the record must carry, and what to undo if the
/// record is not created.
#[derive(Default)]
pub(crate) struct Prepared {
    pub sources: HashMap<usize, PathBuf>,
    pub labels: HashMap<String, String>,
    views: Vec<(usize, String)>,
    lease: Option<berth::leases::LeaseGuard>,
}

/// The checks the kubelet's API makes of an image mount, before anything is made.
fn validate(m: &cri::Mount) -> Result<&str> {
    let image = m.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
    if image.is_empty() {
        return Err(Error::invalid(format!(
            "image volume at {:?} names no image",
            m.container_path
        )));
    }
    if !m.host_path.is_empty() {
        return Err(Error::invalid(format!(
            "image volume at {:?} has a host path too ({:?}): it is one or the other",
            m.container_path, m.host_path
        )));
    }
    if !m.readonly {
        return Err(Error::invalid(format!(
            "image volume at {:?} must be read-only",
            m.container_path
        )));
    }
    let sub = Path::new(&m.image_sub_path);
    if sub.is_absolute()
        || sub
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::invalid(format!(
            "image volume sub path {:?} must be relative and stay inside the image",
            m.image_sub_path
        )));
    }
    Ok(image)
}

/// `sub` resolved inside `root` as the container would see it (symlinks stay in the root),
/// as the real host path of what it names. The view is read-only and never changes, so the
/// path still names the same thing when runc binds it.
fn resolve_sub_path(root: &Path, sub: &str) -> Result<PathBuf> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let dir =
        std::fs::File::open(root).map_err(|e| Error::io(format!("open {}", root.display()), e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(std::os::fd::AsRawFd::as_raw_fd(&dir), sub, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => {
            return Err(Error::not_found(format!(
                "image volume sub path {sub:?} does not exist in the image"
            )))
        }
        Err(e) => return Err(Error::io(format!("open {sub:?} in the image"), e.into())),
    };
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let real = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ))
    .map_err(|e| Error::io(format!("resolve {sub:?} in the image"), e))?;
    if !real.starts_with(root) {
        return Err(Error::invalid(format!(
            "image volume sub path {sub:?} leaves the image"
        )));
    }
    Ok(real)
}

/// Whether `path` is a mount point (bind mounts share their parent's device, so the mount
/// table says, not stat).
fn is_mount_point(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|p| unescape_mountinfo(p) == want)
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cri {
    fn image_volumes_dir(&self) -> PathBuf {
        self.settings
            .config
            .state_dir(&self.settings.state)
            .join("image-volumes")
    }

    fn snapshots(&self) -> SnapshotsClient<tonic::transport::Channel> {
        SnapshotsClient::new(self.client.channel().clone())
    }

    /// Make and mount the views of `config`'s image mounts for container `id`, and fill in
    /// each mount's `image_ref` (the image id, what PullImage answered) for ContainerStatus.
    /// Nothing is made when the container has no image mount. On error nothing is left.
    pub(crate) async fn prepare_image_volumes(
        &self,
        id: &str,
        config: &mut cri::ContainerConfig,
    ) -> Result<Prepared> {
        let mut prepared = Prepared::default();
        if config.mounts.iter().all(|m| m.image.is_none()) {
            return Ok(prepared);
        }
        let result = self.prepare_into(id, config, &mut prepared).await;
        match result {
            Ok(()) => Ok(prepared),
            Err(e) => {
                self.abandon_image_volumes(id, prepared).await;
                Err(e)
            }
        }
    }

    async fn prepare_into(
        &self,
        id: &str,
        config: &mut cri::ContainerConfig,
        prepared: &mut Prepared,
    ) -> Result<()> {
        // Every image is looked up before anything is made: a missing one is the common
        // error (the kubelet pulls image volumes itself first).
        let mut chains = Vec::new();
        for (i, m) in config.mounts.iter().enumerate() {
            if m.image.is_none() {
                continue;
            }
            let image = validate(m)?;
            let details = self.client.images().inspect(image).await.map_err(|e| {
                let e = Error::from(e);
                if e.is_not_found() {
                    Error::not_found(format!(
                        "image {image:?} of the image volume at {:?} not found: pull it first",
                        m.container_path
                    ))
                } else {
                    e
                }
            })?;
            chains.push((
                i,
                details.chain_id.clone(),
                details.manifest.config().digest().to_string(),
            ));
        }
        prepared.lease = Some(
            self.client
                .leases()
                .create(std::time::Duration::from_secs(600))
                .await?,
        );
        let dir = self.image_volumes_dir().join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        for (n, (i, chain_id, image_id)) in chains.into_iter().enumerate() {
            let key = view_key(id, n);
            let view = ViewSnapshotRequest {
                snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
                key: key.clone(),
                parent: chain_id,
                labels: HashMap::new(),
            };
            let lease = prepared
                .lease
                .as_ref()
                .ok_or_else(|| Error::internal("image volume lease missing"))?;
            let mounts = self
                .snapshots()
                .view(lease.request(view))
                .await
                .map_err(Error::from)?
                .into_inner()
                .mounts;
            prepared.views.push((n, key.clone()));
            let target = dir.join(n.to_string());
            let m = &mut config.mounts[i];
            let sub = m.image_sub_path.clone();
            let source = crate::blocking(move || {
                std::fs::create_dir_all(&target)
                    .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
                berth::mounts::mount_read_only(&mounts, &target)?;
                if sub.is_empty() {
                    Ok(target)
                } else {
                    resolve_sub_path(&target, &sub)
                }
            })
            .await?;
            prepared.sources.insert(i, source);
            prepared.labels.insert(ref_label(n), key);
            if let Some(spec) = m.image.as_mut() {
                spec.image_ref = image_id;
            }
        }
        Ok(())
    }

    /// The record holds the views now: the lease can go.
    pub(crate) async fn commit_image_volumes(&self, prepared: Prepared) -> Result<()> {
        if let Some(lease) = prepared.lease {
            lease.release().await?;
        }
        Ok(())
    }

    /// Undo [`Cri::prepare_image_volumes`] when the record was not created.
    pub(crate) async fn abandon_image_volumes(&self, id: &str, prepared: Prepared) {
        if let Err(e) = self.remove_image_volumes(id, &prepared.views).await {
            tracing::warn!(container = %id, error = %e, "image volumes not cleaned up");
        }
        if let Some(lease) = prepared.lease {
            let _ = lease.release().await;
        }
    }

    /// Unmount a container's image volumes and remove their views.
    pub(crate) async fn remove_image_volumes(
        &self,
        id: &str,
        views: &[(usize, String)],
    ) -> Result<()> {
        let dir = self.image_volumes_dir().join(id);
        crate::blocking(move || crate::staging::remove_all(&dir)).await?;
        for (_, key) in views {
            let req = RemoveSnapshotRequest {
                snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
                key: key.clone(),
            };
            match self
                .snapshots()
                .remove(berth::with_namespace(self.client.namespace(), req))
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Mount again what is no longer mounted (the host rebooted with the state dir kept, or
    /// someone unmounted it) before the container's task binds it in.
    pub(crate) async fn ensure_image_volumes(
        &self,
        id: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        let dir = self.image_volumes_dir().join(id);
        for (n, key) in of_record(labels) {
            let target = dir.join(n.to_string());
            let check = target.clone();
            if crate::blocking(move || Ok(is_mount_point(&check))).await? {
                continue;
            }
            let req = MountsRequest {
                snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
                key,
            };
            let mounts = self
                .snapshots()
                .mounts(berth::with_namespace(self.client.namespace(), req))
                .await
                .map_err(Error::from)?
                .into_inner()
                .mounts;
            crate::blocking(move || {
                std::fs::create_dir_all(&target)
                    .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
                berth::mounts::mount_read_only(&mounts, &target).map_err(Error::from)
            })
            .await?;
            tracing::info!(container = %id, volume = n, "image volume mounted again");
        }
        Ok(())
    }

    /// At start: unmount the image volumes of containers that no longer exist (berthd stopped
    /// between mounting them and creating the record; their views go with their lease).
    pub(crate) async fn sweep_image_volumes(&self) -> Result<()> {
        for (id, path) in self
            .dirs_of_gone_containers(&self.image_volumes_dir())
            .await?
        {
            crate::blocking(move || crate::staging::remove_all(&path)).await?;
            tracing::info!(container = %id, "image volumes of a container that is gone unmounted");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_labels_name_the_views_in_order() {
        let labels = HashMap::from([
            (ref_label(1), "c-image-volume-1".to_string()),
            (ref_label(0), "c-image-volume-0".to_string()),
            ("other".to_string(), "x".to_string()),
        ]);
        assert_eq!(
            of_record(&labels),
            vec![
                (0, "c-image-volume-0".to_string()),
                (1, "c-image-volume-1".to_string())
            ]
        );
    }

    #[test]
    fn writable_or_escaping_image_mounts_are_refused() {
        let mount = |ro: bool, sub: &str, host: &str| cri::Mount {
            container_path: "/v".into(),
            host_path: host.into(),
            readonly: ro,
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            image_sub_path: sub.into(),
            ..Default::default()
        };
        assert!(validate(&mount(true, "", "")).is_ok());
        assert!(validate(&mount(true, "etc", "")).is_ok());
        assert!(validate(&mount(false, "", "")).is_err());
        assert!(validate(&mount(true, "../etc", "")).is_err());
        assert!(validate(&mount(true, "/etc", "")).is_err());
        assert!(validate(&mount(true, "", "/tmp")).is_err());
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/a\134b"), r"/a\b");
    }
}
