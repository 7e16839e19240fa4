//! Idmapped bind mounts (a CRI `Mount` with `uidMappings`/`gidMappings`, what the kubelet asks
//! for the volumes of a pod with its own user namespace). Debian's runc 1.1 has no `idmap` mount
//! option, so berthd makes them itself: a detached clone of the host path's mount, idmapped with
//! a user namespace of the mount's maps (open_tree + mount_setattr, as the snapshotter's idmapped
//! layers), attached at `<cri state>/idmapped-mounts/<ctr>/<n>`, which the spec binds as it binds
//! any host path (a bind of an idmapped mount keeps its idmap). The container sees the files'
//! on-disk owners through the pod's maps. Unmounted at RemoveContainer (or when CreateContainer
//! fails) and swept at start for containers that are gone.

use crate::Cri;
use berth_api::runtime::v1 as cri;
use berth_errdefs::{Error, Result};
use berth_snapshotter::idmap::{IdMap, IdRange};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

fn id_map(kind: &str, maps: &[cri::IdMapping]) -> Result<IdMap> {
    if maps.is_empty() {
        return Err(Error::invalid(format!(
            "an idmapped mount needs {kind} mappings too"
        )));
    }
    let ranges = maps
        .iter()
        .map(|m| {
            IdRange::new(m.container_id, m.host_id, m.length).ok_or_else(|| {
                Error::invalid(format!(
                    "the {kind} mapping {}:{}:{} of a mount is empty or past the id range",
                    m.container_id, m.host_id, m.length
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(IdMap(ranges))
}

/// Attaches the detached mount `tree` at `target` (move_mount; nix has no wrapper).
fn attach(tree: &std::os::fd::OwnedFd, target: &Path) -> Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let empty = c"";
    let ctarget = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid(format!("{} has a NUL byte", target.display())))?;
    // SAFETY: both paths are NUL-terminated and outlive the call; the fd is open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            ctarget.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(Error::io(
            format!("attach the idmapped mount at {}", target.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Stages every mount of `config` that has id mappings under `dir` (the container's staging
/// directory); returns the staged path by the mount's index. On failure what was staged is
/// undone.
pub fn stage_all(dir: &Path, config: &cri::ContainerConfig) -> Result<HashMap<usize, PathBuf>> {
    let mut staged = HashMap::new();
    for (index, m) in config.mounts.iter().enumerate() {
        if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
            continue;
        }
        match stage(dir, index, m) {
            Ok(p) => {
                staged.insert(index, p);
            }
            Err(e) => {
                let _ = crate::staging::remove_all(dir);
                return Err(e);
            }
        }
    }
    Ok(staged)
}

fn stage(dir: &Path, index: usize, m: &cri::Mount) -> Result<PathBuf> {
    if m.image.is_some() {
        return Err(Error::invalid(format!(
            "the image volume at {:?} cannot be idmapped",
            m.container_path
        )));
    }
    // The staged mount is a clone that no host mount propagates to.
    if m.propagation != cri::MountPropagation::PropagationPrivate as i32 {
        return Err(Error::invalid(format!(
            "the idmapped mount at {:?} must have private propagation",
            m.container_path
        )));
    }
    let uid = id_map("uid", &m.uid_mappings)?;
    let gid = id_map("gid", &m.gid_mappings)?;
    let source = Path::new(&m.host_path);
    if !source.is_absolute() {
        return Err(Error::invalid(format!(
            "mount source {:?} is not an absolute path",
            m.host_path
        )));
    }
    if !source.exists() {
        // The kubelet's rule: a missing host path becomes a directory.
        std::fs::create_dir_all(source)
            .map_err(|e| Error::io(format!("create {}", source.display()), e))?;
    }
    let source = std::fs::canonicalize(source)
        .map_err(|e| Error::io(format!("resolve {}", source.display()), e))?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let target = dir.join(index.to_string());
    if source.is_dir() {
        std::fs::create_dir_all(&target)
    } else {
        std::fs::File::create(&target).map(drop)
    }
    .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
    let made = berth_snapshotter::idmap::userns_fd(&uid, &gid)
        .and_then(|ns| berth_snapshotter::idmap::idmapped_tree(&source, ns.as_fd()))
        .map_err(|e| {
            Error::precondition(format!(
                "idmap the mount of {} at {:?}: {e}",
                source.display(),
                m.container_path
            ))
        })
        .and_then(|tree| attach(&tree, &target));
    if let Err(e) = made {
        let _ = crate::staging::remove(&target);
        return Err(e);
    }
    Ok(target)
}

impl Cri {
    fn idmapped_mounts_root(&self) -> PathBuf {
        self.settings
            .config
            .state_dir(&self.settings.state)
            .join("idmapped-mounts")
    }

    /// Where a container's idmapped mounts are staged.
    pub(crate) fn idmapped_mounts_dir(&self, id: &str) -> PathBuf {
        self.idmapped_mounts_root().join(id)
    }

    /// The staging directories of containers that are gone (a crash between staging and the
    /// record, or a removal berthd did not finish), unmounted and removed.
    pub(crate) async fn sweep_idmapped_mounts(&self) -> Result<()> {
        for (id, path) in self
            .dirs_of_gone_containers(&self.idmapped_mounts_root())
            .await?
        {
            crate::blocking(move || crate::staging::remove_all(&path)).await?;
            tracing::info!(container = %id, "idmapped mounts of a container that is gone unmounted");
        }
        Ok(())
    }
}
