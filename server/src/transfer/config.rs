//! The `[transfer]` config section: where registries' hosts.toml live, download bounds and
//! credential files. Owned here, composed by `config.rs`.

use crate::fsutil::require_absolute;
use berth_errdefs::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The Transfer service's registry side (containerd's `[plugins."io.containerd.transfer.v1.local"]`
/// and the CRI registry `config_path`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferConfig {
    /// Where `<host>/hosts.toml` (mirrors, CAs, client certificates, plain HTTP) is looked up;
    /// a request's own `host_dir` (nerdctl, `ctr --hosts-dir`) wins. Empty: defaults only.
    pub config_path: PathBuf,
    /// Blob downloads in flight per transfer (containerd's `max_concurrent_downloads`).
    pub max_concurrent_downloads: usize,
    /// Blob downloads in flight in the whole daemon, all transfers together.
    pub max_concurrent_downloads_total: usize,
    /// Blob uploads in flight per push (containerd's `max_concurrent_uploaded_layers`).
    pub max_concurrent_uploads: usize,
    /// A registry request fails after this long without a byte moving (not a wall-clock bound).
    pub progress_timeout_secs: u64,
    /// Largest manifest or index accepted.
    pub max_manifest_bytes: u64,
    /// Most layers in a manifest, and entries in an index.
    pub max_layers: usize,
    /// Follow foreign layer URLs (off, as containerd since CVE-2020-15157).
    pub allow_foreign_urls: bool,
    /// Apply the layers of a pull side by side and chain them afterwards, where the snapshotter
    /// can (overlayfs); off: one after another, each onto its committed parent.
    pub parallel_unpack: bool,
    /// docker's config.json to take registry credentials from; empty: not read.
    pub docker_config: PathBuf,
    /// `berth login`'s credential store (0600); absent file: no credentials from it.
    pub login_store: PathBuf,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            config_path: "/etc/berth/certs.d".into(),
            max_concurrent_downloads: 3,
            max_concurrent_downloads_total: 16,
            max_concurrent_uploads: 3,
            progress_timeout_secs: 30,
            max_manifest_bytes: 4 << 20,
            max_layers: 512,
            allow_foreign_urls: false,
            parallel_unpack: true,
            docker_config: PathBuf::new(),
            login_store: "/etc/berth/auth.json".into(),
        }
    }
}

impl TransferConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        for (key, v) in [
            (
                "transfer.max_concurrent_downloads",
                self.max_concurrent_downloads as u64,
            ),
            (
                "transfer.max_concurrent_downloads_total",
                self.max_concurrent_downloads_total as u64,
            ),
            (
                "transfer.max_concurrent_uploads",
                self.max_concurrent_uploads as u64,
            ),
            ("transfer.progress_timeout_secs", self.progress_timeout_secs),
            ("transfer.max_manifest_bytes", self.max_manifest_bytes),
            ("transfer.max_layers", self.max_layers as u64),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("{key} must be greater than 0")));
            }
        }
        for (key, path) in [
            ("transfer.config_path", &self.config_path),
            ("transfer.docker_config", &self.docker_config),
            ("transfer.login_store", &self.login_store),
        ] {
            if !path.as_os_str().is_empty() {
                require_absolute(key, path)?;
            }
        }
        Ok(())
    }
}
