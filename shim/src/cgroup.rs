//! Joining the shim's own cgroup (`--cgroup-dir`, containerd's `shim_cgroup` runc option): the
//! CRI puts each container's shim in its pod's cgroup, so the pod is charged for it, as CRI-O
//! charges conmon.
//!
//! The join runs on its own thread from the first moment of the shim's life, beside the
//! container's `runc create`, and `create` waits for it only once runc is done. On cgroup v1 a
//! move into `cgroup.procs` after an idle spell waits for an RCU grace period (~10 ms here),
//! and moves that follow within a grace period do not: started first, the shim's move takes
//! that wait off runc's move of the container's init.

use std::path::PathBuf;
use std::thread::JoinHandle;

/// A join in progress.
pub type Joining = JoinHandle<Result<(), String>>;

/// Start moving this process into each directory's cgroup; None when there are none.
pub fn spawn_join(dirs: Vec<PathBuf>) -> Result<Option<Joining>, String> {
    if dirs.is_empty() {
        return Ok(None);
    }
    std::thread::Builder::new()
        .name("cgroup-join".into())
        .spawn(move || join(&dirs))
        .map(Some)
        .map_err(|e| format!("starting the cgroup join: {e}"))
}

/// The outcome of a join started by [`spawn_join`].
pub fn finish(joining: Joining) -> Result<(), String> {
    joining
        .join()
        .unwrap_or_else(|_| Err("the cgroup join panicked".into()))
}

fn join(dirs: &[PathBuf]) -> Result<(), String> {
    let pid = std::process::id().to_string();
    for dir in dirs {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &pid).map_err(|e| format!("joining {}: {e}", procs.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_directory_no_thread() {
        assert!(spawn_join(Vec::new()).unwrap().is_none());
    }

    #[test]
    fn a_missing_cgroup_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let joining = spawn_join(vec![missing.clone()]).unwrap().unwrap();
        let err = finish(joining).unwrap_err();
        assert!(
            err.contains(&missing.join("cgroup.procs").display().to_string()),
            "{err}"
        );
    }
}
