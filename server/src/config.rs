//! berthd's configuration: a TOML file shaped like containerd's, where every flag can also be set.

use berth_errdefs::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::runtime::config::{RuntimeConfig, DEFAULT_RUNTIME};

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
    pub events: EventsConfig,
    /// Pulls and pushes through the Transfer service: registries, bounds, credentials.
    pub transfer: TransferConfig,
    /// Runtimes a container may name (`Container.runtime.name`), as containerd's CRI
    /// `runtimes.NAME`. `io.containerd.runc.v2` (berth-shim + runc) is always there.
    pub runtimes: std::collections::BTreeMap<String, RuntimeConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TasksConfig {
    /// The berth-shim binary; empty: the one beside berthd.
    pub shim: PathBuf,
    /// How long a restarted daemon waits for each shim to answer before treating it as dead.
    pub shim_connect_timeout_ms: u64,
    /// How often the restart monitor brings containers labelled `containerd.io/restart.status`
    /// back to that status (containerd's restart plugin `interval`).
    pub restart_interval_ms: u64,
    /// How long `berth-shim start` may take to print its socket; past it the launcher is killed
    /// and the task's create fails with DeadlineExceeded.
    pub shim_start_timeout_ms: u64,
    /// How long one runc (runtime) command inside a shim may run before the shim kills it and
    /// fails the call with DeadlineExceeded. Keep it under the daemon's 120 s wait for such calls.
    pub runtime_timeout_ms: u64,
}

/// Shortest restart monitor interval: below it the monitor would spin on a busy host.
pub const MIN_RESTART_INTERVAL_MS: u64 = 100;

impl TasksConfig {
    fn validate(&self) -> Result<()> {
        for (key, v) in [
            (
                "tasks.shim_connect_timeout_ms",
                self.shim_connect_timeout_ms,
            ),
            ("tasks.shim_start_timeout_ms", self.shim_start_timeout_ms),
            ("tasks.runtime_timeout_ms", self.runtime_timeout_ms),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("{key} must be greater than 0")));
            }
        }
        // The daemon waits at most SLOW_CALL for a shim call that runs runc; a runtime bound past
        // it would turn the shim's clear DeadlineExceeded into the daemon's vaguer one.
        let slow_call_ms = crate::runtime::shim::SLOW_CALL.as_millis() as u64;
        if self.runtime_timeout_ms >= slow_call_ms {
            return Err(Error::invalid(format!(
                "tasks.runtime_timeout_ms must be less than {slow_call_ms} (the daemon's wait for a \
                 runtime call), not {}",
                self.runtime_timeout_ms
            )));
        }
        if self.restart_interval_ms < MIN_RESTART_INTERVAL_MS {
            return Err(Error::invalid(format!(
                "tasks.restart_interval_ms must be at least {MIN_RESTART_INTERVAL_MS}, not {}",
                self.restart_interval_ms
            )));
        }
        Ok(())
    }
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            shim: PathBuf::new(),
            shim_connect_timeout_ms: 1000,
            restart_interval_ms: 10_000,
            shim_start_timeout_ms: 30_000,
            runtime_timeout_ms: 60_000,
        }
    }
}

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
    /// A registry request fails after this long without a byte moving (not a wall-clock bound).
    pub progress_timeout_secs: u64,
    /// Largest manifest or index accepted.
    pub max_manifest_bytes: u64,
    /// Most layers in a manifest, and entries in an index.
    pub max_layers: usize,
    /// Follow foreign layer URLs (off, as containerd since CVE-2020-15157).
    pub allow_foreign_urls: bool,
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
            progress_timeout_secs: 30,
            max_manifest_bytes: 4 << 20,
            max_layers: 512,
            allow_foreign_urls: false,
            docker_config: PathBuf::new(),
            login_store: "/etc/berth/auth.json".into(),
        }
    }
}

impl TransferConfig {
    fn validate(&self) -> Result<()> {
        for (key, v) in [
            (
                "transfer.max_concurrent_downloads",
                self.max_concurrent_downloads as u64,
            ),
            (
                "transfer.max_concurrent_downloads_total",
                self.max_concurrent_downloads_total as u64,
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
                absolute(key, path)?;
            }
        }
        Ok(())
    }
}

/// What one client may make the event exchange hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Largest event (encoded envelope) Events.Publish and Events.Forward accept.
    pub max_event_bytes: usize,
    /// A subscriber further behind than this many events, or bytes, is dropped with
    /// ResourceExhausted (it may subscribe again).
    pub backlog_events: usize,
    pub backlog_bytes: usize,
}

impl EventsConfig {
    fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("events.max_event_bytes", self.max_event_bytes),
            ("events.backlog_events", self.backlog_events),
            ("events.backlog_bytes", self.backlog_bytes),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("{key} must be greater than 0")));
            }
        }
        Ok(())
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        let limits = crate::events::Limits::default();
        EventsConfig {
            max_event_bytes: limits.max_event_bytes,
            backlog_events: limits.backlog_events,
            backlog_bytes: limits.backlog_bytes,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyPlugin {
    /// Only "snapshot" is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The plugin's unix socket.
    pub address: PathBuf,
    /// The snapshotter name to ask the remote for (berth extension; default: the plugin's name).
    #[serde(default)]
    pub snapshotter: Option<String>,
    /// The bound on each call to the plugin, connecting included (berth extension): a hung plugin
    /// fails the call with DeadlineExceeded instead of holding its caller.
    #[serde(default = "default_proxy_timeout_ms")]
    pub timeout_ms: u64,
    /// Accepted for containerd config compatibility; berth does not use them.
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn default_proxy_timeout_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// The API socket (created mode 0660 once the daemon is ready).
    pub address: PathBuf,
    /// Owner of the socket, so a group of non-root users can be granted access.
    pub uid: u32,
    pub gid: u32,
    /// containerd's clients send and accept up to 16 MiB.
    pub max_recv_message_size: usize,
    pub max_send_message_size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// trace, debug, info, warn or error; RUST_LOG, when set, takes precedence.
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// How often leases past their `containerd.io/gc.expire` time are removed.
    pub expiry_interval_secs: u64,
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
            events: EventsConfig::default(),
            transfer: TransferConfig::default(),
            runtimes: [(DEFAULT_RUNTIME.to_string(), RuntimeConfig::default())].into(),
        }
    }
}

impl ProxyPlugin {
    fn validate(&self, name: &str) -> Result<()> {
        if self.kind != "snapshot" {
            return Err(Error::invalid(format!(
                "proxy_plugins.{name}.type: {:?} is not supported; only \"snapshot\" is",
                self.kind
            )));
        }
        if self.timeout_ms == 0 {
            return Err(Error::invalid(format!(
                "proxy_plugins.{name}.timeout_ms must be greater than 0"
            )));
        }
        absolute(&format!("proxy_plugins.{name}.address"), &self.address)
    }
}

impl GrpcConfig {
    fn validate(&self) -> Result<()> {
        absolute("grpc.address", &self.address)?;
        for (key, v) in [
            ("grpc.max_recv_message_size", self.max_recv_message_size),
            ("grpc.max_send_message_size", self.max_send_message_size),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("{key} must be greater than 0")));
            }
        }
        Ok(())
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

impl LeaseConfig {
    fn validate(&self) -> Result<()> {
        if self.expiry_interval_secs == 0 {
            return Err(Error::invalid(
                "leases.expiry_interval_secs must be greater than 0",
            ));
        }
        Ok(())
    }
}

fn absolute(key: &str, path: &Path) -> Result<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{key} must be an absolute path, not {:?}",
            path.display().to_string()
        )))
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: "/run/berth/berthd.sock".into(),
            uid: 0,
            gid: 0,
            max_recv_message_size: 16 << 20,
            max_send_message_size: 16 << 20,
        }
    }
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            level: "info".into(),
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            expiry_interval_secs: 60,
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
        absolute("root", &self.root)?;
        absolute("state", &self.state)?;
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
