//! A pod's /dev/shm. The containers of a pod share its IPC namespace (the holder's), so they
//! share POSIX shared memory too: the pod mounts one tmpfs at `<pod dir>/shm` (64 MiB, mode
//! 1777, as containerd's sandbox shm) and each container binds it over its /dev/shm. A pod on
//! the host's IPC namespace binds the host's /dev/shm instead.

use berth_errdefs::{Error, Result};
use std::path::Path;

/// What a pod on the host's IPC namespace binds.
const HOST_SHM: &str = "/dev/shm";
/// tmpfs options of a pod's own shm (and of a container's own, in a pod without one):
/// containerd's size, writable by every user of the pod.
pub const TMPFS_OPTIONS: [&str; 2] = ["mode=1777", "size=65536k"];

/// The shm of a pod whose directory is `pod_dir`: the host's when `host_ipc`, else a tmpfs
/// mounted at `<pod_dir>/shm` now. Returns the path its containers bind.
pub fn set_up(pod_dir: &Path, host_ipc: bool) -> Result<String> {
    if host_ipc {
        return Ok(HOST_SHM.to_string());
    }
    let path = pod_dir.join("shm");
    std::fs::create_dir(&path).map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("shm"),
        &path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        Some(TMPFS_OPTIONS.join(",").as_str()),
    )
    .map_err(|e| {
        Error::io(
            format!("mount the pod's shm at {}", path.display()),
            e.into(),
        )
    })?;
    Ok(path.to_string_lossy().into_owned())
}

/// Unmounts the tmpfs `set_up` made in `pod_dir` and removes its mount point; none there (a
/// host-IPC pod, a pod from before pods shared one, a second call) is no error.
pub fn tear_down(pod_dir: &Path) -> Result<()> {
    crate::staging::remove(&pod_dir.join("shm"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_host_ipc_pod_binds_the_hosts_shm_and_mounts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(set_up(dir.path(), true).unwrap(), "/dev/shm");
        assert!(!dir.path().join("shm").exists());
        tear_down(dir.path()).unwrap();
    }

    #[test]
    fn a_pods_shm_is_a_tmpfs_anyone_may_write_and_goes_at_tear_down() {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = set_up(dir.path(), false).unwrap();
        assert_eq!(Path::new(&path), dir.path().join("shm"));
        let fs = nix::sys::statfs::statfs(path.as_str()).unwrap();
        assert_eq!(fs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        assert_eq!(fs.blocks() * fs.block_size() as u64, 64 << 20);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
        std::fs::write(dir.path().join("shm/segment"), b"shared").unwrap();
        // A second pod set-up in the same directory is refused, not mounted twice.
        assert!(set_up(dir.path(), false).is_err());
        tear_down(dir.path()).unwrap();
        assert!(!dir.path().join("shm").exists());
        tear_down(dir.path()).unwrap();
    }
}
