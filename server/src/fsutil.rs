//! Small file system helpers every berthd module may use (they depend on nothing of berthd).

use berth_errdefs::{Error, Result};
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Create `path` (and its parents) with `mode`.
pub fn make_dir(path: &Path, mode: u32) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    // The mode of an existing directory is enforced too: an earlier, looser one is tightened.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))
}

/// Config validation: `key` names a path that must be absolute (a relative one would depend on
/// the directory berthd happened to start in).
pub fn require_absolute(key: &str, path: &Path) -> Result<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{key} must be an absolute path, not {:?}",
            path.display().to_string()
        )))
    }
}
