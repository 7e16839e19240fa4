//! The runtime's config section, `[runtimes.NAME]`: owned and validated here, read by config.rs.

use berth_errdefs::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The runtime containerd's clients ask for by default.
pub const DEFAULT_RUNTIME: &str = "io.containerd.runc.v2";

/// One named runtime: containerd's runc options (`containerd.runc.v1.Options`) as defaults that
/// a container's or a task's own options override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Only `io.containerd.runc.v2` (berth's shim driving a runc-compatible binary) exists.
    #[serde(rename = "type")]
    pub kind: String,
    /// The OCI runtime binary: runc, crun, ...
    pub binary_name: String,
    /// runc's `--root`; empty: `<state>/runc`. The namespace is appended, as containerd does.
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    /// `runc create --no-pivot`, for a rootfs on a ramdisk.
    pub no_pivot_root: bool,
    /// `runc create --no-new-keyring`.
    pub no_new_keyring: bool,
}

impl RuntimeConfig {
    pub(crate) fn validate(&self, name: &str) -> Result<()> {
        if self.kind != DEFAULT_RUNTIME {
            return Err(Error::invalid(format!(
                "runtimes.{name}.type: runtime {name:?} has type {:?}; berth supports {DEFAULT_RUNTIME}",
                self.kind
            )));
        }
        if self.binary_name.is_empty() {
            return Err(Error::invalid(format!(
                "runtimes.{name}.binary_name must not be empty"
            )));
        }
        Ok(())
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            kind: DEFAULT_RUNTIME.into(),
            binary_name: "runc".into(),
            root: PathBuf::new(),
            systemd_cgroup: false,
            no_pivot_root: false,
            no_new_keyring: false,
        }
    }
}
