//! Per-container staging directories of the CRI (`<cri state>/image-volumes/<ctr>`,
//! `<cri state>/idmapped-mounts/<ctr>`): mounts berthd makes for a container outside its bundle,
//! one file or directory each, removed with the container and swept at start for containers
//! that are gone.

use crate::Cri;
use berth_errdefs::{Error, Result};
use std::path::{Path, PathBuf};

/// Unmounts (every layer, detached: an exec's process may still hold one) and removes `path`, a
/// staged file or directory; never recursively, so nothing under a mount still there is touched.
pub fn remove(path: &Path) -> Result<()> {
    loop {
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => return Err(Error::io(format!("unmount {}", path.display()), e.into())),
        }
    }
    let removed = if path.is_dir() {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Unmounts and removes a container's staging directory and what is staged in it; a missing one
/// is not an error.
pub fn remove_all(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    for entry in entries.flatten() {
        remove(&entry.path())?;
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io(format!("remove {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

impl Cri {
    /// The entries of `root` (one directory per container id, the CRI's own) whose container
    /// record is gone: what a crash between staging mounts there and the record, or a removal
    /// berthd did not finish, leaves behind. An entry that is not a container id at all counts
    /// as gone too: nothing but the CRI writes there.
    pub(crate) async fn dirs_of_gone_containers(
        &self,
        root: &Path,
    ) -> Result<Vec<(String, PathBuf)>> {
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", root.display()), e)),
        };
        let mut gone = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            match self.client.containers().get_by_id(&id).await {
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.code(),
                        tonic::Code::NotFound | tonic::Code::InvalidArgument
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            gone.push((id, entry.path()));
        }
        Ok(gone)
    }
}
