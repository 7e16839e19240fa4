//! berthd's configuration: a TOML file shaped like containerd's, where every flag can also be set.
//! This module only composes: each section's type, default and validation live with the module
//! that uses it (`[grpc]` daemon, `[leases]` controllers::leases, `[tasks]` and `[runtimes]`
//! runtime, `[events]` events, `[diff]` berth-layer, `[proxy_plugins]` remote_snapshotter,
//! `[transfer]` transfer, `[cni]` network, `[cri]` berth-cri, `[userns]` userns,
//! `[metrics]` metrics, `[tracing]` telemetry); the top-level keys and `[debug]` (the process's
//! logging) are the daemon's own, here.

use crate::fsutil::require_absolute;
use berth_errdefs::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::controllers::leases::LeaseConfig;
pub use crate::daemon::GrpcConfig;
pub use crate::remote_snapshotter::ProxyPlugin;
pub use crate::runtime::config::{RuntimeConfig, TasksConfig, DEFAULT_RUNTIME};

/// The only config format version berthd reads.
pub const CONFIG_VERSION: u32 = 1;

/// Read when no `--config` is given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Config format version.
    pub version: u32,
    /// Persistent data: metadata, content, snapshots.
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot: sockets, task bundles.
    pub state: PathBuf,
    pub grpc: GrpcConfig,
    pub debug: DebugConfig,
    pub leases: LeaseConfig,
    /// The layer code's own limits type: what is set here is what Apply enforces.
    pub diff: berth_layer::Limits,
    /// External plugins reached over a unix socket, as containerd's `[proxy_plugins.NAME]`.
    pub proxy_plugins: std::collections::BTreeMap<String, ProxyPlugin>,
    pub tasks: TasksConfig,
    /// The event exchange's own limits type.
    pub events: crate::events::Limits,
    /// Pulls and pushes through the Transfer service: registries, bounds, credentials.
    pub transfer: crate::transfer::TransferConfig,
    /// Runtimes a container may name (`Container.runtime.name`), as containerd's CRI
    /// `runtimes.NAME`. `io.containerd.runc.v2` (berth-shim + runc) is always there.
    pub runtimes: std::collections::BTreeMap<String, RuntimeConfig>,
    /// Container networks (owned by `network.rs`).
    pub cni: crate::network::CniConfig,
    /// Prometheus metrics over HTTP (owned by `metrics.rs`); off by default.
    pub metrics: crate::metrics::MetricsConfig,
    /// OpenTelemetry traces over OTLP (owned by `telemetry.rs`); off by default.
    pub tracing: crate::telemetry::TracingConfig,
    /// Kubernetes' CRI socket and pods (owned by berth-cri).
    pub cri: berth_cri::CriConfig,
    /// User namespaces for every container berth's clients make (owned by `userns.rs`); off by
    /// default.
    pub userns: crate::userns::UsernsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// trace, debug, info, warn or error; RUST_LOG, when set, takes precedence.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            grpc: GrpcConfig::default(),
            debug: DebugConfig::default(),
            leases: LeaseConfig::default(),
            diff: berth_layer::Limits::default(),
            proxy_plugins: Default::default(),
            tasks: TasksConfig::default(),
            events: crate::events::Limits::default(),
            transfer: Default::default(),
            runtimes: [(DEFAULT_RUNTIME.to_string(), RuntimeConfig::default())].into(),
            cni: Default::default(),
            metrics: Default::default(),
            tracing: Default::default(),
            cri: Default::default(),
            userns: Default::default(),
        }
    }
}

impl DebugConfig {
    fn validate(&self) -> Result<()> {
        const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];
        if !LEVELS.contains(&self.level.as_str()) {
            return Err(Error::invalid(format!(
                "debug.level {:?} is not one of {}",
                self.level,
                LEVELS.join(", ")
            )));
        }
        Ok(())
    }
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            level: "info".into(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("read config {}", path.display()), e))?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| Error::invalid(format!("config {}: {e}", path.display())))?;
        // A file naming other runtimes keeps the default one.
        config
            .runtimes
            .entry(DEFAULT_RUNTIME.to_string())
            .or_default();
        config
            .validate()
            .map_err(|e| e.context(format!("config {}", path.display())))?;
        Ok(config)
    }

    /// Every section checks its own values once, here, so the daemon never clamps or guesses;
    /// an error names the key (`tasks.restart_interval_ms must be ...`).
    pub fn validate(&self) -> Result<()> {
        if self.version != CONFIG_VERSION {
            return Err(Error::invalid(format!(
                "version = {} is not supported; berthd reads version {CONFIG_VERSION}",
                self.version
            )));
        }
        require_absolute("root", &self.root)?;
        require_absolute("state", &self.state)?;
        self.grpc.validate()?;
        self.debug.validate()?;
        self.leases.validate()?;
        self.diff.validate("diff")?;
        self.tasks.validate()?;
        self.events.validate()?;
        self.transfer.validate()?;
        for (name, plugin) in &self.proxy_plugins {
            plugin.validate(name)?;
        }
        for (name, rt) in &self.runtimes {
            rt.validate(name)?;
        }
        self.cni.validate()?;
        self.cri.validate()?;
        self.userns.validate()?;
        self.tracing.validate()?;
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        // Serializing a plain struct of strings and numbers cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips() {
        let text = Config::default().to_toml();
        let back: Config = toml::from_str(&text).expect("default config parses");
        assert_eq!(back.grpc.address, PathBuf::from("/run/berth/berthd.sock"));
        assert_eq!(back.grpc.max_recv_message_size, 16 << 20);
    }

    fn check(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("write config");
        Config::load(&path)
    }

    #[test]
    fn the_default_config_is_valid() {
        Config::default().validate().expect("default is valid");
        check(&Config::default().to_toml()).expect("printed default loads");
    }

    #[test]
    fn bad_values_are_errors_naming_their_key() {
        for (text, key) in [
            ("version = 2", "version"),
            ("root = \"relative/root\"", "root"),
            ("state = \"\"", "state"),
            ("[grpc]\naddress = \"berthd.sock\"", "grpc.address"),
            (
                "[grpc]\nmax_recv_message_size = 0",
                "grpc.max_recv_message_size",
            ),
            ("[debug]\nlevel = \"loud\"", "debug.level"),
            (
                "[leases]\nexpiry_interval_secs = 0",
                "leases.expiry_interval_secs",
            ),
            ("[diff]\nmax_entries = 0", "diff.max_entries"),
            (
                "[diff]\nmax_uncompressed_bytes = 0",
                "diff.max_uncompressed_bytes",
            ),
            (
                "[tasks]\nrestart_interval_ms = 10",
                "tasks.restart_interval_ms",
            ),
            (
                "[tasks]\nshim_connect_timeout_ms = 0",
                "tasks.shim_connect_timeout_ms",
            ),
            (
                "[tasks]\nshim_start_timeout_ms = 0",
                "tasks.shim_start_timeout_ms",
            ),
            (
                "[tasks]\nruntime_timeout_ms = 0",
                "tasks.runtime_timeout_ms",
            ),
            (
                "[tasks]\nruntime_timeout_ms = 120000",
                "tasks.runtime_timeout_ms",
            ),
            ("[events]\nmax_event_bytes = 0", "events.max_event_bytes"),
            ("[events]\nbacklog_events = 0", "events.backlog_events"),
            ("[events]\nbacklog_bytes = 0", "events.backlog_bytes"),
            (
                "[proxy_plugins.p]\ntype = \"snapshot\"\naddress = \"/run/p.sock\"\ntimeout_ms = 0",
                "proxy_plugins.p.timeout_ms",
            ),
            (
                "[runtimes.kata]\ntype = \"io.containerd.kata.v2\"",
                "runtimes.kata.type",
            ),
            (
                "[runtimes.crun]\nbinary_name = \"\"",
                "runtimes.crun.binary_name",
            ),
            ("[cni]\nplugin_timeout_ms = 0", "cni.plugin_timeout_ms"),
            ("[cni]\nconf_dir = \"net.d\"", "cni.conf_dir"),
            (
                "[proxy_plugins.p]\ntype = \"content\"\naddress = \"/run/p.sock\"",
                "proxy_plugins.p.type",
            ),
            (
                "[proxy_plugins.p]\ntype = \"snapshot\"\naddress = \"p.sock\"",
                "proxy_plugins.p.address",
            ),
        ] {
            let err = check(text).expect_err(text);
            assert_eq!(err.kind(), berth_errdefs::Kind::InvalidArgument, "{text}");
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<Config>("rooot = \"/x\"").is_err());
    }
}
