//! Attachments: a container (a task, or a CRI pod) joined to networks inside a network
//! namespace. Each one is recorded under `<state>/attachments/<namespace>/<id>/record.json`
//! *before* its netns is made and before each network's ADD, and the record follows every
//! plugin's result, so a DEL can always be run with what ADD did — after a failure half-way,
//! and at the next start when the daemon was down as the container died (`cleanup_stale`). A
//! record goes only once every DEL succeeded. The container's hosts and resolv.conf files live
//! beside the record, for the caller to bind-mount into the container.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::conflist::ConfigList;
use crate::error::{Error, Result};
use crate::hosts::{self, DnsConfig, HostEntry};
use crate::netns;
use crate::netns_pool::NetnsPool;
use crate::networks::{CreateOptions, DefaultNetwork, Network, NetworkStore};
use crate::plugin::{Command, Invocation, Plugins};
use crate::result::CniResult;

/// Where berth-net looks and keeps things; berthd's `[cni]` section.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Searched in order for plugin binaries (CNI_PATH).
    pub bin_dirs: Vec<PathBuf>,
    /// Network config lists.
    pub conf_dir: PathBuf,
    /// Attachment records, hosts/resolv.conf files and IPAM leases: runtime state, gone after
    /// a reboot as the namespaces, veths and rules they describe are.
    pub state_dir: PathBuf,
    /// Bound on one plugin run.
    pub plugin_timeout: Duration,
    pub default_network: DefaultNetwork,
    /// Whether each attachment's hosts file also names the other attachments on its networks,
    /// as docker's user-defined networks let containers reach each other by name. Every attach
    /// and detach then rewrites the hosts file of each attachment on the network. Off for the
    /// CRI: a pod's file names the pod only (peers are found through the cluster's DNS).
    pub peer_hosts: bool,
}

impl NetConfig {
    /// Debian installs the plugins in /usr/lib/cni, upstream's tarball in /opt/cni/bin.
    pub fn default_bin_dirs() -> Vec<PathBuf> {
        vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
    }

    pub fn new(conf_dir: PathBuf, state_dir: PathBuf) -> NetConfig {
        NetConfig {
            bin_dirs: NetConfig::default_bin_dirs(),
            conf_dir,
            state_dir,
            plugin_timeout: Duration::from_secs(30),
            default_network: DefaultNetwork::default(),
            peer_hosts: true,
        }
    }
}

/// Whose attachment: a containerd namespace and a container (or pod sandbox) id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub namespace: String,
    pub id: String,
}

impl AttachmentKey {
    pub fn new(namespace: impl Into<String>, id: impl Into<String>) -> AttachmentKey {
        AttachmentKey {
            namespace: namespace.into(),
            id: id.into(),
        }
    }

    fn validate(&self) -> Result<()> {
        for (what, s) in [("namespace", &self.namespace), ("id", &self.id)] {
            if !is_identifier(s) {
                return Err(Error::invalid(format!(
                    "invalid {what} {s:?} for a network attachment"
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// containerd's identifier rule: alphanumerics separated by single `.`, `_` or `-`, ≤ 76.
fn is_identifier(s: &str) -> bool {
    if s.is_empty() || s.len() > 76 {
        return false;
    }
    let mut prev_sep = true;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            prev_sep = false;
        } else if matches!(c, '.' | '_' | '-') && !prev_sep {
            prev_sep = true;
        } else {
            return false;
        }
    }
    !prev_sep
}

/// What lands in the hosts file, resolv.conf and CNI_ARGS must not be able to add lines or
/// arguments of its own.
fn validate_text(opts: &AttachOptions) -> Result<()> {
    for name in std::iter::once(&opts.hostname)
        .filter(|h| !h.is_empty())
        .chain(&opts.aliases)
    {
        let ok = name.len() <= 253
            && !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !ok {
            return Err(Error::invalid(format!(
                "invalid host name {name:?}: use letters, digits, '.', '-' and '_'"
            )));
        }
    }
    for (k, v) in &opts.cni_args {
        if k.is_empty() || k.contains(['=', ';']) || v.contains(';') || k.contains('\0') {
            return Err(Error::invalid(format!("invalid CNI argument {k:?}={v:?}")));
        }
    }
    if let Some(dns) = &opts.dns {
        for server in &dns.servers {
            server.parse::<IpAddr>().map_err(|_| {
                Error::invalid(format!("invalid DNS server {server:?}: not an IP address"))
            })?;
        }
        for word in dns.searches.iter().chain(&dns.options) {
            if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::invalid(format!(
                    "invalid DNS search domain or option {word:?}"
                )));
            }
        }
    }
    Ok(())
}

/// A published port, in the shape of the portmap plugin's `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Empty for every address of the host.
    #[serde(rename = "hostIP", default)]
    pub host_ip: String,
}

impl PortMapping {
    pub fn tcp(host_port: u16, container_port: u16) -> PortMapping {
        PortMapping {
            host_port,
            container_port,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.host_port == 0 || self.container_port == 0 {
            return Err(Error::invalid(format!(
                "invalid port mapping {}:{}: ports are 1-65535",
                self.host_port, self.container_port
            )));
        }
        if !matches!(self.protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(Error::invalid(format!(
                "invalid protocol {:?} (tcp, udp or sctp)",
                self.protocol
            )));
        }
        if !self.host_ip.is_empty() && self.host_ip.parse::<IpAddr>().is_err() {
            return Err(Error::invalid(format!(
                "invalid host IP {:?}",
                self.host_ip
            )));
        }
        Ok(())
    }

    fn clashes(&self, other: &PortMapping) -> bool {
        self.host_port == other.host_port
            && self.protocol == other.protocol
            && (self.host_ip.is_empty()
                || other.host_ip.is_empty()
                || self.host_ip == other.host_ip)
    }
}

#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// Network names, in the order their interfaces are made (eth0, eth1, ...).
    pub networks: Vec<String>,
    pub ports: Vec<PortMapping>,
    /// The container's hostname, its first name in the hosts files.
    pub hostname: String,
    /// Further names other containers reach it by (its container name).
    pub aliases: Vec<String>,
    /// Extra CNI_ARGS (the CRI's K8S_POD_*).
    pub cni_args: Vec<(String, String)>,
    /// Replaces the host's resolvers, search domains and options when set.
    pub dns: Option<DnsConfig>,
    /// Further runtimeConfig capability arguments, by capability name (portMappings is filled
    /// from `ports`).
    pub capability_args: BTreeMap<String, Value>,
    /// The container runs in a user namespace of its own with these maps: its netns is made
    /// inside one (see `netns::create_in_userns`), which the container then joins.
    pub userns: Option<UsernsMaps>,
}

/// A user namespace's maps in `/proc/PID/uid_map` form (`inside outside count` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsernsMaps {
    pub uid_map: String,
    pub gid_map: String,
}

/// What an attachment gave the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub key: AttachmentKey,
    pub netns: PathBuf,
    /// To bind-mount on the container's /etc/hosts and /etc/resolv.conf.
    pub hosts_path: PathBuf,
    pub resolv_conf_path: PathBuf,
    pub networks: Vec<NetworkAttachment>,
    pub ports: Vec<PortMapping>,
    /// The user namespace owning `netns`, for the container to join, when one was asked for.
    pub userns: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkAttachment {
    pub network: String,
    pub ifname: String,
    /// CIDR notation, as the IPAM plugin gave them.
    pub ips: Vec<String>,
    pub gateway: Option<String>,
    pub mac: Option<String>,
    pub result: CniResult,
}

impl NetworkAttachment {
    /// The addresses without prefix length.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter_map(|c| c.split('/').next().and_then(|a| a.parse().ok()))
            .collect()
    }
}

/// What `cleanup_stale` did.
#[derive(Debug, Default)]
pub struct CleanupReport {
    pub removed: Vec<AttachmentKey>,
    /// Kept for the next attempt.
    pub failed: Vec<(AttachmentKey, Error)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    key: AttachmentKey,
    cni_container_id: String,
    netns: PathBuf,
    owns_netns: bool,
    /// The bound user namespace that owns `netns`, when the container has its own.
    #[serde(default)]
    userns: Option<PathBuf>,
    hostname: String,
    aliases: Vec<String>,
    ports: Vec<PortMapping>,
    cni_args: Vec<(String, String)>,
    capability_args: BTreeMap<String, Value>,
    dns: Option<DnsConfig>,
    networks: Vec<RecordNetwork>,
    /// Every ADD succeeded.
    complete: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordNetwork {
    name: String,
    ifname: String,
    /// The config list as ADD used it: DEL must be given the same.
    config: Value,
    /// The latest plugin's result, the prevResult for the next plugin, DEL and CHECK.
    result: Option<Value>,
}

/// Networks, plugins and attachments over one config dir and one state dir.
#[derive(Debug)]
pub struct Net {
    plugins: Plugins,
    networks: NetworkStore,
    state_dir: PathBuf,
    // Record reads that decide something (port clashes, network in use) and hosts rewrites.
    records_lock: Mutex<()>,
    /// Bridges whose host rules this process has put in place (`host_rules`).
    ruled_bridges: Mutex<HashSet<String>>,
    peer_hosts: bool,
    /// Namespaces made ahead for the attachments that own theirs; filled after the first.
    netns_pool: Arc<NetnsPool>,
}

impl Net {
    pub fn new(config: NetConfig) -> Result<Net> {
        for dir in [&config.conf_dir, &config.state_dir] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io_at("create", dir, e))?;
        }
        let networks = NetworkStore::new(
            config.conf_dir.clone(),
            config.state_dir.join("ipam"),
            config.default_network.clone(),
        );
        Ok(Net {
            plugins: Plugins::new(config.bin_dirs, config.plugin_timeout),
            networks,
            state_dir: config.state_dir,
            records_lock: Mutex::new(()),
            ruled_bridges: Mutex::new(HashSet::new()),
            peer_hosts: config.peer_hosts,
            netns_pool: NetnsPool::new(),
        })
    }

    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    pub fn networks(&self) -> &NetworkStore {
        &self.networks
    }

    pub fn create_network(&self, name: &str, opts: &CreateOptions) -> Result<Network> {
        self.networks.create(name, opts)
    }

    pub fn list_networks(&self) -> Result<Vec<Network>> {
        self.networks.list()
    }

    pub fn inspect_network(&self, name: &str) -> Result<Network> {
        self.networks.inspect(name)
    }

    pub fn ensure_default_network(&self) -> Result<Network> {
        self.networks.ensure_default()
    }

    /// Removes a network no attachment uses (FailedPrecondition names the ones that do).
    pub fn remove_network(&self, name: &str) -> Result<()> {
        let _lock = self.lock_records();
        let users: Vec<String> = self
            .records()?
            .iter()
            .filter(|r| r.networks.iter().any(|n| n.name == name))
            .map(|r| r.key.to_string())
            .collect();
        if !users.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "network {name} is in use by {}",
                users.join(", ")
            )));
        }
        self.networks.remove(name)
    }

    fn lock_records(&self) -> std::sync::MutexGuard<'_, ()> {
        self.records_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn attachments_dir(&self) -> PathBuf {
        self.state_dir.join("attachments")
    }

    fn dir_of(&self, key: &AttachmentKey) -> PathBuf {
        self.attachments_dir().join(&key.namespace).join(&key.id)
    }

    /// Ids unique per state dir, so two daemons on one host never share a netns name, an IPAM
    /// lease or a portmap chain.
    pub fn cni_container_id(&self, key: &AttachmentKey) -> String {
        hex::encode(Sha256::digest(
            format!(
                "{}\0{}\0{}",
                self.state_dir.display(),
                key.namespace,
                key.id
            )
            .as_bytes(),
        ))
    }

    /// `berth-<namespace>-<id>-<8 hex>`: readable in `ip netns list`, unambiguous by the hash.
    pub fn netns_name(&self, key: &AttachmentKey) -> String {
        format!(
            "berth-{}-{}-{}",
            key.namespace,
            key.id,
            &self.cni_container_id(key)[..8]
        )
    }

    /// Makes a netns for `key` and attaches it: what a container of its own network gets.
    pub fn setup(&self, key: &AttachmentKey, opts: &AttachOptions) -> Result<Attachment> {
        self.attach_inner(key, None, opts)
    }

    /// Attaches the existing netns at `netns` (the caller's, kept by the caller).
    pub fn attach(
        &self,
        key: &AttachmentKey,
        netns: &Path,
        opts: &AttachOptions,
    ) -> Result<Attachment> {
        self.attach_inner(key, Some(netns), opts)
    }

    fn attach_inner(
        &self,
        key: &AttachmentKey,
        existing_netns: Option<&Path>,
        opts: &AttachOptions,
    ) -> Result<Attachment> {
        key.validate()?;
        let mut seen = BTreeSet::new();
        let mut configs = Vec::new();
        for name in &opts.networks {
            if !seen.insert(name.as_str()) {
                return Err(Error::invalid(format!("network {name} named twice")));
            }
            configs.push(self.networks.inspect(name)?.config);
        }
        for p in &opts.ports {
            p.validate()?;
        }
        validate_text(opts)?;
        if !opts.ports.is_empty() && configs.is_empty() {
            return Err(Error::invalid(
                "ports can be published only on a network (not with none)",
            ));
        }
        let dir = self.dir_of(key);
        let mut record = Record {
            key: key.clone(),
            cni_container_id: self.cni_container_id(key),
            netns: existing_netns
                .map(Path::to_path_buf)
                .unwrap_or_else(|| netns::path_of(&self.netns_name(key))),
            owns_netns: existing_netns.is_none(),
            userns: (existing_netns.is_none() && opts.userns.is_some()).then(|| dir.join("userns")),
            hostname: opts.hostname.clone(),
            aliases: opts.aliases.clone(),
            ports: opts.ports.clone(),
            cni_args: opts.cni_args.clone(),
            capability_args: opts.capability_args.clone(),
            dns: opts.dns.clone(),
            networks: Vec::new(),
            complete: false,
        };
        {
            let _lock = self.lock_records();
            if dir.join("record.json").exists() {
                return Err(Error::AlreadyExists(format!("network attachment of {key}")));
            }
            // Every other attachment's record is read only when there are ports to check.
            let others = match opts.ports.is_empty() {
                true => Vec::new(),
                false => self.records()?,
            };
            for other in others {
                for mine in &opts.ports {
                    if let Some(theirs) = other.ports.iter().find(|p| p.clashes(mine)) {
                        return Err(Error::AlreadyExists(format!(
                            "host port {}/{} is already published by {} (as {}:{})",
                            mine.host_port,
                            mine.protocol,
                            other.key,
                            theirs.host_port,
                            theirs.container_port
                        )));
                    }
                }
            }
            std::fs::create_dir_all(&dir).map_err(|e| Error::io_at("create", &dir, e))?;
            self.write_record(&record)?;
        }
        let added = self.add_all(&mut record, &configs, opts.userns.as_ref());
        // The next attachment's namespace is made now, off its critical path and past this
        // one's plugins.
        if record.owns_netns && record.userns.is_none() {
            self.netns_pool.refill();
        }
        match added {
            Ok(attachment) => Ok(attachment),
            Err(e) => {
                if let Err(undo) = self.detach_record(&record) {
                    tracing::warn!(
                        "undoing the failed attachment of {key}: {undo}; kept for cleanup"
                    );
                }
                Err(e)
            }
        }
    }

    /// The host rules of berth's networks among `configs`, once per bridge and process: they
    /// outlive containers, but not a reboot or a flush of the host's tables.
    fn ensure_host_rules(&self, configs: &[ConfigList]) -> Result<()> {
        for config in configs {
            let ruled = config.raw.get(crate::networks::HOST_RULES_KEY) == Some(&Value::Bool(true));
            let Some(bridge) = config.bridge().filter(|_| ruled) else {
                continue;
            };
            let mut done = self
                .ruled_bridges
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !done.contains(&bridge) {
                crate::host_rules::ensure(&bridge, &config.subnets())?;
                done.insert(bridge);
            }
        }
        Ok(())
    }

    fn add_all(
        &self,
        record: &mut Record,
        configs: &[ConfigList],
        userns: Option<&UsernsMaps>,
    ) -> Result<Attachment> {
        self.ensure_host_rules(configs)?;
        if record.owns_netns {
            // With `lo` up: runc does not do it for a netns it is given.
            let name = self.netns_name(&record.key);
            match (&record.userns, userns) {
                (Some(file), Some(maps)) => {
                    netns::create_in_userns(&name, file, &maps.uid_map, &maps.gid_map)?
                }
                _ => self.netns_pool.create(&name)?,
            };
        }
        let runtime = runtime_args(record);
        for (i, config) in configs.iter().enumerate() {
            record.networks.push(RecordNetwork {
                name: config.name.clone(),
                ifname: format!("eth{i}"),
                config: config.raw.clone(),
                result: None,
            });
            self.write_record(record)?;
            for p in 0..config.plugins.len() {
                let net = &record.networks[i];
                let stdin = config.plugin_config(p, net.result.as_ref(), &runtime);
                let inv = invocation(record, &net.ifname);
                let answer = self
                    .plugins
                    .exec(Command::Add, &inv, &config.name, &stdin)?
                    .ok_or_else(|| Error::Result {
                        plugin: config.plugin_type(p).to_string(),
                        message: "ADD printed no result".into(),
                    })?;
                CniResult::parse(config.plugin_type(p), &answer)?;
                record.networks[i].result = Some(answer);
                self.write_record(record)?;
            }
        }
        record.complete = true;
        self.write_record(record)?;
        let attachment = self.attachment_of(record)?;
        self.write_resolv_conf(record)?;
        let _lock = self.lock_records();
        self.refresh_hosts(
            &record.networks.iter().map(|n| n.name.clone()).collect(),
            Some(record),
        )?;
        Ok(attachment)
    }

    fn attachment_of(&self, record: &Record) -> Result<Attachment> {
        let dir = self.dir_of(&record.key);
        let mut networks = Vec::new();
        for n in &record.networks {
            let result = match &n.result {
                Some(v) => CniResult::parse(&n.name, v)?,
                None => CniResult::default(),
            };
            let iface = result.sandbox_interface(&n.ifname).map(|(i, _)| i);
            let ips: Vec<&crate::result::IpConfig> = result
                .ips
                .iter()
                .filter(|ip| ip.interface.is_none() || ip.interface == iface)
                .collect();
            networks.push(NetworkAttachment {
                network: n.name.clone(),
                ifname: n.ifname.clone(),
                ips: ips.iter().map(|ip| ip.address.clone()).collect(),
                gateway: ips.iter().find_map(|ip| ip.gateway.clone()),
                mac: iface
                    .and_then(|i| result.interfaces.get(i))
                    .map(|i| i.mac.clone())
                    .filter(|m| !m.is_empty()),
                result,
            });
        }
        Ok(Attachment {
            key: record.key.clone(),
            netns: record.netns.clone(),
            hosts_path: dir.join("hosts"),
            resolv_conf_path: dir.join("resolv.conf"),
            networks,
            ports: record.ports.clone(),
            userns: record.userns.clone(),
        })
    }

    /// The attachment of `key` as recorded.
    pub fn inspect(&self, key: &AttachmentKey) -> Result<Attachment> {
        key.validate()?;
        let record = self.read_record(key)?;
        self.attachment_of(&record)
    }

    /// Every recorded attachment's key.
    pub fn list(&self) -> Result<Vec<AttachmentKey>> {
        Ok(self.records()?.into_iter().map(|r| r.key).collect())
    }

    /// Runs CHECK on every network of `key`'s attachment.
    pub fn check(&self, key: &AttachmentKey) -> Result<()> {
        key.validate()?;
        let record = self.read_record(key)?;
        let runtime = runtime_args(&record);
        for n in &record.networks {
            let config = ConfigList::from_value(&n.name, n.config.clone())?;
            for p in 0..config.plugins.len() {
                let stdin = config.plugin_config(p, n.result.as_ref(), &runtime);
                self.plugins.exec(
                    Command::Check,
                    &invocation(&record, &n.ifname),
                    &n.name,
                    &stdin,
                )?;
            }
        }
        Ok(())
    }

    /// Undoes `key`'s attachment: DEL on every network, then its netns (when berth made it) and
    /// files. Nothing recorded is not an error. A failed DEL keeps the record for a retry.
    pub fn teardown(&self, key: &AttachmentKey) -> Result<()> {
        key.validate()?;
        let record = match self.read_record(key) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                let _ = std::fs::remove_dir(self.dir_of(key));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.detach_record(&record)
    }

    fn detach_record(&self, record: &Record) -> Result<()> {
        let runtime = runtime_args(record);
        let mut failures = Vec::new();
        for n in record.networks.iter().rev() {
            let config = match ConfigList::from_value(&n.name, n.config.clone()) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            for p in (0..config.plugins.len()).rev() {
                let stdin = config.plugin_config(p, n.result.as_ref(), &runtime);
                let inv = invocation(record, &n.ifname);
                match self.plugins.exec(Command::Del, &inv, &n.name, &stdin) {
                    Ok(_) => {}
                    // Nothing can run it, now or on a retry; keeping the record would only
                    // block the other plugins' cleanup forever.
                    Err(e @ Error::PluginNotFound { .. }) => {
                        tracing::warn!("detach {}: {e}; skipped", record.key)
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
        if !failures.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "detach {}: {}",
                record.key,
                failures.join("; ")
            )));
        }
        if record.owns_netns {
            netns::remove(&record.netns)?;
        }
        if let Some(userns) = &record.userns {
            netns::remove(userns)?;
        }
        let dir = self.dir_of(&record.key);
        // Under the records lock: a peer's refresh reads the records and then writes each one's
        // hosts file, which must not vanish in between.
        let _lock = self.lock_records();
        // The record goes first: a crash after it leaves files no one reads, never a record
        // pointing at things already undone twice.
        let file = dir.join("record.json");
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_at("remove", &file, e)),
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_at("remove", &dir, e)),
        }
        let _ = std::fs::remove_dir(dir.parent().unwrap_or(&dir));
        self.refresh_hosts(
            &record.networks.iter().map(|n| n.name.clone()).collect(),
            None,
        )
    }

    /// Tears down every recorded attachment whose key is not in `live` (the containers that
    /// still have a task): what a daemon runs at start.
    pub fn cleanup_stale(&self, live: &HashSet<AttachmentKey>) -> Result<CleanupReport> {
        let mut report = CleanupReport::default();
        // A directory without a record is an attachment that crashed before recording anything.
        for ns in read_dir_names(&self.attachments_dir())? {
            for id in read_dir_names(&self.attachments_dir().join(&ns))? {
                let dir = self.attachments_dir().join(&ns).join(&id);
                if !dir.join("record.json").exists() {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        for record in self.records()? {
            if live.contains(&record.key) {
                continue;
            }
            match self.detach_record(&record) {
                Ok(()) => report.removed.push(record.key),
                Err(e) => {
                    tracing::warn!("stale network attachment {}: {e}", record.key);
                    report.failed.push((record.key, e));
                }
            }
        }
        Ok(report)
    }

    fn write_record(&self, record: &Record) -> Result<()> {
        let value = serde_json::to_value(record).map_err(|e| Error::Result {
            plugin: String::new(),
            message: format!("encode record: {e}"),
        })?;
        crate::networks::write_atomic(
            &self.dir_of(&record.key).join("record.json"),
            &value,
            crate::networks::Durability::Volatile,
        )
    }

    fn read_record(&self, key: &AttachmentKey) -> Result<Record> {
        let path = self.dir_of(key).join("record.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("network attachment of {key}")))
            }
            Err(e) => return Err(Error::io_at("read", &path, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::Config {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    fn records(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let root = self.attachments_dir();
        for ns in read_dir_names(&root)? {
            for id in read_dir_names(&root.join(&ns))? {
                let key = AttachmentKey::new(ns.clone(), id);
                if key.validate().is_err() {
                    continue;
                }
                match self.read_record(&key) {
                    Ok(r) => out.push(r),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!("unreadable network attachment record: {e}"),
                }
            }
        }
        Ok(out)
    }

    fn write_resolv_conf(&self, record: &Record) -> Result<()> {
        let text = hosts::resolv_conf(&hosts::host_resolv_conf(), record.dns.as_ref());
        let path = self.dir_of(&record.key).join("resolv.conf");
        write_in_place(&path, text.as_bytes())
    }

    /// Rewrites the hosts file of every attachment on one of `networks` (and `new`'s, which is
    /// not yet among the complete ones when it is being added); without `peer_hosts`, only
    /// `new`'s.
    fn refresh_hosts(&self, networks: &BTreeSet<String>, new: Option<&Record>) -> Result<()> {
        if !self.peer_hosts {
            // A file names its own attachment only: the new one's is written, no other changes.
            return match new {
                Some(new) => self.write_hosts(new, &[]),
                None => Ok(()),
            };
        }
        let records: Vec<Record> = self.records()?.into_iter().filter(|r| r.complete).collect();
        let mut targets: Vec<&Record> = records
            .iter()
            .filter(|r| r.networks.iter().any(|n| networks.contains(&n.name)))
            .collect();
        if let Some(new) = new {
            if !targets.iter().any(|r| r.key == new.key) {
                targets.push(new);
            }
        }
        for target in targets {
            let mut peers = Vec::new();
            for other in &records {
                if other.key == target.key {
                    continue;
                }
                let shared: BTreeSet<&str> = target
                    .networks
                    .iter()
                    .map(|n| n.name.as_str())
                    .filter(|n| other.networks.iter().any(|o| o.name == *n))
                    .collect();
                if !shared.is_empty() {
                    peers.extend(entries_of(other, Some(&shared)));
                }
            }
            self.write_hosts(target, &peers)?;
        }
        Ok(())
    }

    /// `record`'s hosts file: its own names, then `peers`.
    fn write_hosts(&self, record: &Record, peers: &[HostEntry]) -> Result<()> {
        let path = self.dir_of(&record.key).join("hosts");
        write_in_place(
            &path,
            hosts::hosts_file(&entries_of(record, None), peers).as_bytes(),
        )
    }
}

fn invocation<'a>(record: &'a Record, ifname: &'a str) -> Invocation<'a> {
    Invocation {
        container_id: &record.cni_container_id,
        netns: &record.netns,
        ifname,
        args: &record.cni_args,
    }
}

fn runtime_args(record: &Record) -> BTreeMap<String, Value> {
    let mut rt = record.capability_args.clone();
    if !record.ports.is_empty() {
        rt.insert(
            "portMappings".into(),
            serde_json::to_value(&record.ports).unwrap_or(Value::Null),
        );
    }
    rt
}

/// A record's addresses with its names, on the networks in `only` (all when `None`).
fn entries_of(record: &Record, only: Option<&BTreeSet<&str>>) -> Vec<HostEntry> {
    let mut names: Vec<String> = Vec::new();
    for n in std::iter::once(&record.hostname).chain(&record.aliases) {
        if !n.is_empty() && !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut out = Vec::new();
    for n in &record.networks {
        if only.is_some_and(|o| !o.contains(n.name.as_str())) {
            continue;
        }
        let Some(result) = n
            .result
            .as_ref()
            .and_then(|r| CniResult::parse(&n.name, r).ok())
        else {
            continue;
        };
        let iface = result.sandbox_interface(&n.ifname).map(|(i, _)| i);
        for ip in &result.ips {
            if ip.interface.is_some() && ip.interface != iface {
                continue;
            }
            if let Some(addr) = ip.address.split('/').next().and_then(|a| a.parse().ok()) {
                out.push(HostEntry {
                    ip: addr,
                    names: names.clone(),
                });
            }
        }
    }
    out
}

/// Rewrites a file in place (same inode): it is bind-mounted into a running container, and a
/// rename would leave the container looking at the old file.
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io_at("open", path, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io_at("write", path, e))
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io_at("read", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io_at("read", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("web-1.a_b"));
        assert!(!is_identifier("a--b"));
        assert!(!is_identifier("-a"));
        assert!(!is_identifier("a/b"));
        assert!(!is_identifier(""));
        assert!(!is_identifier(&"a".repeat(77)));
    }

    #[test]
    fn text_that_could_add_lines_is_refused() {
        let bad = [
            AttachOptions {
                hostname: "web\n10.0.0.1 bank".into(),
                ..Default::default()
            },
            AttachOptions {
                aliases: vec!["a b".into()],
                ..Default::default()
            },
            AttachOptions {
                cni_args: vec![("K".into(), "v;IgnoreUnknown=0".into())],
                ..Default::default()
            },
            AttachOptions {
                dns: Some(DnsConfig {
                    servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            AttachOptions {
                dns: Some(DnsConfig {
                    options: vec!["ndots:5\nsearch evil".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        for opts in &bad {
            assert!(validate_text(opts).is_err(), "{opts:?}");
        }
        let good = AttachOptions {
            hostname: "web-1.example".into(),
            aliases: vec!["web_1".into()],
            cni_args: vec![("K8S_POD_NAME".into(), "p".into())],
            dns: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        validate_text(&good).unwrap();
    }

    #[test]
    fn port_clashes() {
        let a = PortMapping::tcp(8080, 80);
        let mut b = PortMapping::tcp(8080, 81);
        assert!(a.clashes(&b));
        b.protocol = "udp".into();
        assert!(!a.clashes(&b));
        let mut c = PortMapping::tcp(8080, 80);
        c.host_ip = "127.0.0.1".into();
        let mut d = c.clone();
        d.host_ip = "192.0.2.2".into();
        assert!(a.clashes(&c) && !c.clashes(&d));
        assert!(PortMapping::tcp(0, 80).validate().is_err());
    }

    #[test]
    fn port_mappings_in_portmap_shape() {
        let v = serde_json::to_value(PortMapping::tcp(8080, 80)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""})
        );
    }
}
