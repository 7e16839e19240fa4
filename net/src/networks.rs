//! Named networks: CNI config lists in a config dir. berth writes its own as
//! `berth-<name>.conflist` — bridge + host-local + portmap + tuning, with masquerade, forwarding
//! and isolation kept as per-network host rules (`host_rules`, marked `berthHostRules`) rather
//! than the per-container ones of the bridge plugin's `ipMasq` and the firewall plugin that
//! nerdctl's chain uses — and reads every other config in the dir too (a CRI's
//! /etc/cni/net.d), but removes only its own. Subnets are chosen (or checked, when given) so
//! that they overlap neither another network's nor a route of the host. The default network
//! (`bridge`) is created when missing, on a fixed subnet, and cannot be removed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cidr::{host_routes, Subnet};
use crate::conflist::{config_files, ConfigList};
use crate::error::{Error, Result};
use crate::CNI_VERSION;

/// The network containers join when they name none, as docker's and nerdctl's `bridge`.
#[derive(Debug, Clone)]
pub struct DefaultNetwork {
    pub name: String,
    pub subnet: Subnet,
    /// The Linux bridge device.
    pub bridge: String,
}

impl Default for DefaultNetwork {
    fn default() -> Self {
        DefaultNetwork {
            name: "bridge".into(),
            // Fixed so containers on the default network keep their addressing across
            // restarts; outside docker's 172.17/16 and nerdctl's 10.4.0/24 so all can coexist.
            subnet: Subnet::of(std::net::Ipv4Addr::new(10, 47, 0, 0), 16),
            bridge: "berth0".into(),
        }
    }
}

/// Network names: docker's rule, and filename-safe because a name becomes a file name.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(Error::invalid(format!(
            "invalid network name {name:?}: use 1-64 of [a-zA-Z0-9_.-], starting with a letter or digit"
        )));
    }
    if matches!(name, "host" | "none") {
        return Err(Error::invalid(format!(
            "network name {name:?} is reserved (it is a network mode, not a network)"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// When absent, the first free /24 of the pool (10.48.0.0/12).
    pub subnet: Option<Subnet>,
    pub labels: BTreeMap<String, String>,
}

/// A network as `list` and `inspect` show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    /// berth's id for its own networks (sha256 of the name and creation), empty for others.
    pub id: String,
    pub path: PathBuf,
    pub subnets: Vec<Subnet>,
    pub gateway: Option<String>,
    pub bridge: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Written by berth (so berth may remove it).
    pub managed: bool,
    pub is_default: bool,
    pub config: ConfigList,
}

/// The config dir, seen as a set of named networks.
#[derive(Debug)]
pub struct NetworkStore {
    conf_dir: PathBuf,
    ipam_dir: PathBuf,
    default: DefaultNetwork,
    pool: Subnet,
    lock: Mutex<()>,
}

const FILE_PREFIX: &str = "berth-";

/// Marks a config whose masquerade, forwarding and isolation are berth's per-network host
/// rules (`host_rules`), to be ensured before its first attachment.
pub(crate) const HOST_RULES_KEY: &str = "berthHostRules";

impl NetworkStore {
    /// `ipam_dir` is where host-local keeps the leases of berth's networks: beside the
    /// attachment records in the runtime state dir, so both vanish together at a reboot.
    pub fn new(conf_dir: PathBuf, ipam_dir: PathBuf, default: DefaultNetwork) -> NetworkStore {
        NetworkStore {
            conf_dir,
            ipam_dir,
            default,
            pool: Subnet::of(std::net::Ipv4Addr::new(10, 48, 0, 0), 12),
            lock: Mutex::new(()),
        }
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    pub fn default_network(&self) -> &DefaultNetwork {
        &self.default
    }

    /// Serialises changes in this process and with other processes on the same dir.
    fn exclusive(&self) -> Result<(std::sync::MutexGuard<'_, ()>, Flock<File>)> {
        let guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::fs::create_dir_all(&self.conf_dir)
            .map_err(|e| Error::io_at("create", &self.conf_dir, e))?;
        let path = self.conf_dir.join(".berth-networks.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io_at("open", &path, e))?;
        let flock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::sys(format!("lock {}", path.display()), e))?;
        Ok((guard, flock))
    }

    pub fn list(&self) -> Result<Vec<Network>> {
        let mut out: Vec<Network> = Vec::new();
        for path in config_files(&self.conf_dir)? {
            match ConfigList::load(&path) {
                Ok(config) => {
                    // libcni's rule: the first file with a name wins.
                    if out.iter().any(|n| n.name == config.name) {
                        continue;
                    }
                    out.push(self.network(path, config));
                }
                Err(e) => tracing::warn!("skipping network config: {e}"),
            }
        }
        Ok(out)
    }

    pub fn inspect(&self, name: &str) -> Result<Network> {
        self.list()?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::NotFound(format!("network {name}")))
    }

    fn network(&self, path: PathBuf, config: ConfigList) -> Network {
        let id = config
            .raw
            .get("berthID")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let labels = config
            .raw
            .get("berthLabels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        Network {
            name: config.name.clone(),
            managed: !id.is_empty(),
            id,
            path,
            subnets: config.subnets(),
            gateway: config.gateway(),
            bridge: config.bridge(),
            labels,
            is_default: config.name == self.default.name,
            config,
        }
    }

    /// Creates network `name`. A name in use is AlreadyExists; a subnet overlapping another
    /// network's or a host route is FailedPrecondition and writes nothing.
    pub fn create(&self, name: &str, opts: &CreateOptions) -> Result<Network> {
        validate_name(name)?;
        if name == self.default.name {
            return Err(Error::AlreadyExists(format!(
                "network {name} (the default network)"
            )));
        }
        let _lock = self.exclusive()?;
        self.create_locked(name, opts.subnet, &opts.labels, None)
    }

    /// The default network, created when missing.
    pub fn ensure_default(&self) -> Result<Network> {
        let _lock = self.exclusive()?;
        if let Some(n) = self
            .list()?
            .into_iter()
            .find(|n| n.name == self.default.name)
        {
            return Ok(n);
        }
        let default = self.default.clone();
        self.create_locked(
            &default.name,
            Some(default.subnet),
            &BTreeMap::new(),
            Some(&default.bridge),
        )
        .map_err(|e| match e {
            // Said so that the one who runs the daemon can act: the subnet is configuration.
            Error::FailedPrecondition(m) => Error::FailedPrecondition(format!(
                "default network {}: {m}: configure a free one with berthd's [cni] default_subnet",
                default.name
            )),
            other => other,
        })
    }

    fn create_locked(
        &self,
        name: &str,
        subnet: Option<Subnet>,
        labels: &BTreeMap<String, String>,
        bridge: Option<&str>,
    ) -> Result<Network> {
        let existing = self.list()?;
        if existing.iter().any(|n| n.name == name) {
            return Err(Error::AlreadyExists(format!("network {name}")));
        }
        let id = hex::encode(Sha256::digest(
            format!("{name}\0{}", self.conf_dir.display()).as_bytes(),
        ));
        let bridge = bridge
            .map(str::to_string)
            .unwrap_or_else(|| format!("br-{}", &id[..12]));
        let taken: Vec<(String, Subnet)> = existing
            .iter()
            .flat_map(|n| {
                n.subnets
                    .iter()
                    .map(move |s| (format!("network {}", n.name), *s))
            })
            .chain(
                host_routes()?
                    .into_iter()
                    // A bridge left by an earlier network of this name is ours to reuse.
                    .filter(|r| r.iface != bridge)
                    .map(|r| (format!("host route via {}", r.iface), r.dst)),
            )
            .collect();
        let subnet = match subnet {
            Some(s) => {
                if s.prefix() > 30 {
                    return Err(Error::invalid(format!(
                        "subnet {s} is too small for a gateway and containers"
                    )));
                }
                if let Some((what, other)) = taken.iter().find(|(_, t)| t.overlaps(&s)) {
                    return Err(Error::FailedPrecondition(format!(
                        "subnet {s} overlaps {other} of {what}"
                    )));
                }
                s
            }
            None => self.free_subnet(&taken)?,
        };
        let gateway = subnet
            .host(1)
            .ok_or_else(|| Error::invalid(format!("subnet {subnet} has no gateway address")))?;
        let doc = json!({
            "cniVersion": CNI_VERSION,
            "name": name,
            "berthID": id,
            "berthLabels": labels,
            HOST_RULES_KEY: true,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet.to_string(), "gateway": gateway.to_string()}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir,
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "tuning"}
            ]
        });
        let config = ConfigList::from_value(name, doc)?;
        let path = self.conf_dir.join(format!("{FILE_PREFIX}{name}.conflist"));
        write_atomic(&path, &config.raw, Durability::Synced)?;
        Ok(self.network(path, config))
    }

    fn free_subnet(&self, taken: &[(String, Subnet)]) -> Result<Subnet> {
        let count = 1u32 << (24 - u32::from(self.pool.prefix()));
        for i in 0..count {
            let Some(base) = self.pool.host(i << 8) else {
                break;
            };
            let candidate = Subnet::of(base, 24);
            if !taken.iter().any(|(_, t)| t.overlaps(&candidate)) {
                return Ok(candidate);
            }
        }
        Err(Error::FailedPrecondition(format!(
            "no free /24 left in {}",
            self.pool
        )))
    }

    /// Removes berth's network `name`: its config, its bridge device and its lease dir. The
    /// caller has checked that nothing is attached.
    pub fn remove(&self, name: &str) -> Result<()> {
        let _lock = self.exclusive()?;
        let network = self.inspect(name)?;
        if network.is_default {
            return Err(Error::FailedPrecondition(format!(
                "network {name} is the default network and cannot be removed"
            )));
        }
        if !network.managed {
            return Err(Error::FailedPrecondition(format!(
                "network {name} ({}) was not created by berth; remove its file instead",
                network.path.display()
            )));
        }
        std::fs::remove_file(&network.path)
            .map_err(|e| Error::io_at("remove", &network.path, e))?;
        if let Some(bridge) = &network.bridge {
            delete_link(bridge)?;
            crate::host_rules::remove(bridge)?;
        }
        let leases = self.ipam_dir.join(name);
        match std::fs::remove_dir_all(&leases) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_at("remove", &leases, e)),
        }
        Ok(())
    }
}

/// Deletes a link the bridge plugin created (it never deletes bridges itself), if present.
fn delete_link(name: &str) -> Result<()> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    let out = std::process::Command::new("ip")
        .args(["link", "delete", "dev", name])
        .output()
        .map_err(|e| Error::io("run ip link delete", e))?;
    if !out.status.success() && Path::new("/sys/class/net").join(name).exists() {
        return Err(Error::FailedPrecondition(format!(
            "delete bridge {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// How far a file replaced through a temporary file and a rename must survive. Either way a
/// reader sees the old file or the new one, never half of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Synced before and after the rename, to outlive a power loss: network configs in the conf
    /// dir, which outlive reboots.
    Synced,
    /// The rename alone, which a crash of the process cannot undo (the kernel holds the page).
    /// For the state dir's records: the state dir, like the netns, veths, rules and leases they
    /// describe, does not outlive a reboot, so a power loss has nothing to keep. Two fsyncs per
    /// write cost 3-12 ms here, and an attach writes its record once per plugin.
    Volatile,
}

/// Writes `value` as pretty JSON to `path`; see [`Durability`].
pub(crate) fn write_atomic(path: &Path, value: &Value, durability: Durability) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Config {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    write_bytes_atomic(path, &bytes, durability)
}

fn write_bytes_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::invalid(format!("{} has no parent", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| Error::io_at("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| match durability {
            Durability::Synced => f.sync_all(),
            Durability::Volatile => Ok(()),
        })
        .map_err(|e| Error::io_at("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io_at("rename into", path, e))?;
    if durability == Durability::Synced {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("my-net_1.x").is_ok());
        for bad in ["", "-a", "a b", "host", "none", "a/b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
