//! The lease expiry loop and its config section, `[leases]`: leases past their
//! `containerd.io/gc.expire` time are removed (containerd's metadata does so at GC time; berthd
//! on a timer, so an expired lease frees its resources without waiting for a collection).

use berth_errdefs::{Error, Result};
use berth_metadata::Metadata;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// How often leases past their `containerd.io/gc.expire` time are removed.
    pub expiry_interval_secs: u64,
}

impl LeaseConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.expiry_interval_secs == 0 {
            return Err(Error::invalid(
                "leases.expiry_interval_secs must be greater than 0",
            ));
        }
        Ok(())
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            expiry_interval_secs: 60,
        }
    }
}

/// Remove expired leases every `config.expiry_interval_secs`, forever.
pub async fn expire(meta: Arc<Metadata>, config: LeaseConfig) {
    // LeaseConfig::validate keeps this above 0, which tokio::time::interval requires.
    let mut tick = tokio::time::interval(Duration::from_secs(config.expiry_interval_secs));
    loop {
        tick.tick().await;
        match meta.expire_leases(SystemTime::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "expired leases removed"),
            Err(e) => tracing::warn!(error = %e, "lease expiry failed"),
        }
    }
}
