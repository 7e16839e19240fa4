//! Container networking in berthd: the `[cni]` config section, and the hook that gives a task its
//! network. A container asks with two labels in nerdctl's shape under berth's own prefix:
//! `berth/networks` (a JSON list of network names, or `["none"]` / `["host"]`) and `berth/ports`
//! (a JSON list of `{"HostPort","ContainerPort","Protocol","HostIP"}`). nerdctl's own
//! `nerdctl/*` labels are not read: nerdctl networks its containers itself (through an OCI hook),
//! and acting on them as well would attach every nerdctl container twice.
//!
//! Tasks.Create (and the restart monitor) call [`Networking::before_create`]: it makes the netns,
//! attaches it (berth-net), and edits the spec handed to the runtime — the network namespace's
//! path, /etc/hosts and /etc/resolv.conf bind mounts — while the stored container stays as the
//! client wrote it. Task deletion calls [`Networking::after_delete`]; daemon start runs
//! [`Networking::cleanup_stale`] for containers whose task is gone. The CNI work itself is
//! berth-net's; everything here runs it off the async workers.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_api::containerd::services::containers::v1::Container;
use berth_errdefs::{Error, Result};
use berth_net::{AttachOptions, AttachmentKey, CreateOptions, DefaultNetwork, Net, NetConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::blocking::blocking;

/// The label naming the networks a container joins.
pub const NETWORKS_LABEL: &str = "berth/networks";
/// The label listing a container's published ports.
pub const PORTS_LABEL: &str = "berth/ports";
/// The label holding the name `berth run --name` gave a container.
pub const NAME_LABEL: &str = "io.berth.name";

/// `[cni]`: where plugins, network configs and attachment state live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    /// Off: containers asking for networks fail with FailedPrecondition; the Networks service
    /// answers the same.
    pub enabled: bool,
    /// Searched in order for plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
    /// berth's network configs; kept apart from /etc/cni/net.d so the kubelet's CNI config is
    /// not mixed with the CLI's networks.
    pub conf_dir: PathBuf,
    /// Attachment records, hosts/resolv.conf files and IP leases; empty: `<state>/cni`.
    pub state_dir: PathBuf,
    /// Bound on one plugin run.
    pub plugin_timeout_ms: u64,
    /// The network containers join when they name none, created the first time it is asked for.
    pub default_network: String,
    pub default_subnet: String,
    pub default_bridge: String,
}

impl Default for CniConfig {
    fn default() -> Self {
        let d = DefaultNetwork::default();
        CniConfig {
            enabled: true,
            bin_dirs: NetConfig::default_bin_dirs(),
            conf_dir: "/etc/berth/cni/net.d".into(),
            state_dir: PathBuf::new(),
            plugin_timeout_ms: 30_000,
            default_network: d.name,
            default_subnet: d.subnet.to_string(),
            default_bridge: d.bridge,
        }
    }
}

impl CniConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let absolute = |key: &str, p: &Path| {
            if p.is_absolute() {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "cni.{key} must be an absolute path, not {:?}",
                    p.display().to_string()
                )))
            }
        };
        for dir in &self.bin_dirs {
            absolute("bin_dirs", dir)?;
        }
        absolute("conf_dir", &self.conf_dir)?;
        if !self.state_dir.as_os_str().is_empty() {
            absolute("state_dir", &self.state_dir)?;
        }
        if self.plugin_timeout_ms == 0 {
            return Err(Error::invalid(
                "cni.plugin_timeout_ms must be greater than 0",
            ));
        }
        berth_net::networks::validate_name(&self.default_network)
            .map_err(|e| Error::invalid(format!("cni.default_network: {e}")))?;
        self.default_subnet
            .parse::<berth_net::Subnet>()
            .map_err(|e| Error::invalid(format!("cni.default_subnet: {e}")))?;
        let b = &self.default_bridge;
        if b.is_empty() || b.len() > 15 || b.contains(['/', ' ']) {
            return Err(Error::invalid(format!(
                "cni.default_bridge {b:?} is not a Linux interface name (1-15 characters)"
            )));
        }
        Ok(())
    }
}

/// Whether a container still has a task, for [`Networking::cleanup_stale`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPresence {
    Live,
    Gone,
    /// Being probed or cleaned up: decided later.
    Settling,
}

/// How long start-up cleanup waits for tasks to settle.
const SETTLE_BOUND: Duration = Duration::from_secs(600);

/// berthd's networking: berth-net over the configured dirs, or nothing when disabled.
pub struct Networking {
    net: Option<Arc<Net>>,
}

/// What a container asked for in its labels.
#[derive(Debug, PartialEq)]
enum Mode {
    /// No labels: the spec is left as the client wrote it.
    Unmanaged,
    Host,
    /// Its own netns: `lo` only with no networks (`none`).
    Own {
        networks: Vec<String>,
        ports: Vec<berth_net::PortMapping>,
    },
}

/// nerdctl's `nerdctl/ports` element (go-cni's PortMapping).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LabelPort {
    host_port: u16,
    container_port: u16,
    #[serde(default)]
    protocol: String,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
}

impl Networking {
    pub fn open(config: &CniConfig, state: &Path) -> Result<Networking> {
        if !config.enabled {
            return Ok(Networking::disabled());
        }
        let state_dir = if config.state_dir.as_os_str().is_empty() {
            state.join("cni")
        } else {
            config.state_dir.clone()
        };
        let net = Net::new(NetConfig {
            bin_dirs: config.bin_dirs.clone(),
            conf_dir: config.conf_dir.clone(),
            state_dir,
            plugin_timeout: Duration::from_millis(config.plugin_timeout_ms),
            default_network: DefaultNetwork {
                name: config.default_network.clone(),
                subnet: config
                    .default_subnet
                    .parse()
                    .map_err(|e: berth_net::Error| Error::from(e))?,
                bridge: config.default_bridge.clone(),
            },
            // docker's user-defined networks: containers reach each other by name.
            peer_hosts: true,
        })?;
        Ok(Networking {
            net: Some(Arc::new(net)),
        })
    }

    pub fn disabled() -> Networking {
        Networking { net: None }
    }

    fn net(&self) -> Result<Arc<Net>> {
        self.net.clone().ok_or_else(|| {
            Error::precondition("container networking is disabled ([cni] enabled = false)")
        })
    }

    /// Runs `f` on berth-net off the async workers.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Net) -> berth_net::Result<T> + Send + 'static,
    ) -> Result<T> {
        let net = self.net()?;
        blocking(move || f(&net).map_err(Error::from)).await
    }

    /// Gives the task of `container` its network (when its labels ask for one) by editing the
    /// spec the runtime will get. Returns whether an attachment was made, which the caller undoes
    /// with [`Networking::after_delete`] if the task is not created after all.
    pub async fn before_create(&self, ns: &str, container: &mut Container) -> Result<bool> {
        let mode = mode_of(&container.labels)?;
        let Some(spec_any) = container.spec.as_mut() else {
            return Ok(false);
        };
        let mut spec: Value = match mode {
            Mode::Unmanaged => return Ok(false),
            _ => serde_json::from_slice(&spec_any.value).map_err(|e| {
                Error::invalid(format!("container {}: spec is not JSON: {e}", container.id))
            })?,
        };
        let (networks, ports) = match mode {
            Mode::Unmanaged => return Ok(false),
            Mode::Host => {
                set_network_namespace(&mut spec, None);
                spec_any.value = serde_json::to_vec(&spec)
                    .map_err(|e| Error::internal(format!("encode spec: {e}")))?;
                return Ok(false);
            }
            Mode::Own { networks, ports } => (networks, ports),
        };
        let key = AttachmentKey::new(ns, &container.id);
        let hostname = spec
            .get("hostname")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .unwrap_or(&container.id)
            .to_string();
        // Peers reach a container by the name the CLI gave it as well as by its id.
        let mut aliases: Vec<String> = container
            .labels
            .get(NAME_LABEL)
            // A label set by another client may not be a host name: it is then left out
            // rather than failing the task.
            .filter(|n| {
                !n.is_empty()
                    && n.len() <= 253
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                    && **n != hostname
            })
            .cloned()
            .into_iter()
            .collect();
        aliases.push(container.id.clone());
        let opts = AttachOptions {
            networks,
            ports,
            hostname,
            aliases,
            userns: new_user_namespace(&spec),
            ..Default::default()
        };
        let attachment = self
            .run(move |net| {
                let default = &net.networks().default_network().name;
                if opts.networks.iter().any(|n| n == default) {
                    net.ensure_default_network()?;
                }
                // A record left for this container is its previous task's (a container has one
                // task at a time, and the caller checked that it has none now).
                net.teardown(&key)?;
                net.setup(&key, &opts)
            })
            .await?;
        set_network_namespace(&mut spec, Some(&attachment.netns));
        if let Some(userns) = &attachment.userns {
            join_user_namespace(&mut spec, userns);
        }
        add_file_mount(&mut spec, "/etc/hosts", &attachment.hosts_path);
        add_file_mount(&mut spec, "/etc/resolv.conf", &attachment.resolv_conf_path);
        spec_any.value =
            serde_json::to_vec(&spec).map_err(|e| Error::internal(format!("encode spec: {e}")))?;
        Ok(true)
    }

    /// Detaches the task of `ns/id` from its networks, if it had any. A failure is logged and
    /// the record kept: the next daemon start retries it.
    pub async fn after_delete(&self, ns: &str, id: &str) {
        if self.net.is_none() {
            return;
        }
        let key = AttachmentKey::new(ns, id);
        if let Err(e) = self.run(move |net| net.teardown(&key)).await {
            tracing::warn!(namespace = ns, container = id, error = %e, "network detach failed; retried at the next start");
        }
    }

    /// Undoes the attachments of containers whose task is gone (they died while berthd was
    /// down). Run at start, before the daemon serves: nothing can be creating a task then.
    /// Tasks still settling (a shim being probed or cleaned up) are decided when they settle, in
    /// the background.
    pub async fn cleanup_stale(
        self: Arc<Self>,
        presence: impl Fn(&str, &str) -> TaskPresence + Send + Sync + 'static,
    ) -> Result<()> {
        if self.net.is_none() {
            return Ok(());
        }
        let keys = self.run(|net| net.list()).await?;
        let mut settling = Vec::new();
        let mut keep = HashSet::new();
        for key in keys {
            match presence(&key.namespace, &key.id) {
                TaskPresence::Live => {
                    keep.insert(key);
                }
                TaskPresence::Settling => {
                    keep.insert(key.clone());
                    settling.push(key);
                }
                TaskPresence::Gone => {}
            }
        }
        let report = self.run(move |net| net.cleanup_stale(&keep)).await?;
        if !report.removed.is_empty() {
            tracing::info!(
                count = report.removed.len(),
                "stale network attachments removed"
            );
        }
        for (key, e) in &report.failed {
            tracing::warn!(attachment = %key, error = %e, "stale network attachment not removed");
        }
        if !settling.is_empty() {
            tokio::spawn(async move {
                // Polled: the runtime has no notification for a dead shim's cleanup ending. A
                // shim that never settles is left alone after the bound.
                let deadline = tokio::time::Instant::now() + SETTLE_BOUND;
                while !settling.is_empty() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let mut still = Vec::new();
                    for key in settling {
                        match presence(&key.namespace, &key.id) {
                            TaskPresence::Live => {}
                            TaskPresence::Settling => still.push(key),
                            TaskPresence::Gone => {
                                let k = key.clone();
                                match self.run(move |net| net.teardown(&k)).await {
                                    Ok(()) => {
                                        tracing::info!(attachment = %key, "stale network attachment removed")
                                    }
                                    Err(e) => {
                                        tracing::warn!(attachment = %key, error = %e, "stale network attachment not removed")
                                    }
                                }
                            }
                        }
                    }
                    settling = still;
                }
            });
        }
        Ok(())
    }

    pub async fn create_network(
        &self,
        name: String,
        subnet: Option<berth_net::Subnet>,
        labels: BTreeMap<String, String>,
    ) -> Result<berth_net::Network> {
        self.run(move |net| net.create_network(&name, &CreateOptions { subnet, labels }))
            .await
    }

    /// Every network; the default one is created first when missing (it exists "after install").
    pub async fn list_networks(&self) -> Result<Vec<berth_net::Network>> {
        self.run(|net| {
            net.ensure_default_network()?;
            net.list_networks()
        })
        .await
    }

    pub async fn get_network(&self, name: String) -> Result<berth_net::Network> {
        self.run(move |net| {
            if name == net.networks().default_network().name {
                net.ensure_default_network()?;
            }
            net.inspect_network(&name)
        })
        .await
    }

    pub async fn delete_network(&self, name: String) -> Result<()> {
        self.run(move |net| net.remove_network(&name)).await
    }
}

fn mode_of(labels: &std::collections::HashMap<String, String>) -> Result<Mode> {
    let Some(raw) = labels.get(NETWORKS_LABEL) else {
        if labels.contains_key(PORTS_LABEL) {
            return Err(Error::invalid(format!(
                "label {PORTS_LABEL} needs {NETWORKS_LABEL} (ports are published on a network)"
            )));
        }
        return Ok(Mode::Unmanaged);
    };
    let networks: Vec<String> = serde_json::from_str(raw).map_err(|e| {
        Error::invalid(format!(
            "label {NETWORKS_LABEL}: want a JSON list of network names, like [\"bridge\"]: {e}"
        ))
    })?;
    let ports: Vec<LabelPort> = match labels.get(PORTS_LABEL) {
        Some(raw) => serde_json::from_str(raw).map_err(|e| {
            Error::invalid(format!(
                "label {PORTS_LABEL}: want a JSON list like [{{\"HostPort\":8080,\"ContainerPort\":80,\"Protocol\":\"tcp\"}}]: {e}"
            ))
        })?,
        None => Vec::new(),
    };
    let ports: Vec<berth_net::PortMapping> = ports
        .into_iter()
        .map(|p| berth_net::PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: if p.protocol.is_empty() {
                "tcp".into()
            } else {
                p.protocol.to_lowercase()
            },
            // nerdctl writes 0.0.0.0 for "every address".
            host_ip: if p.host_ip == "0.0.0.0" {
                String::new()
            } else {
                p.host_ip
            },
        })
        .collect();
    let special = |m: &str| networks.iter().any(|n| n == m);
    if special("host") || special("none") {
        if networks.len() != 1 {
            return Err(Error::invalid(format!(
                "label {NETWORKS_LABEL}: \"host\" and \"none\" cannot be combined with other networks"
            )));
        }
        if !ports.is_empty() {
            return Err(Error::invalid(format!(
                "label {PORTS_LABEL}: ports cannot be published with network {}",
                networks[0]
            )));
        }
        if special("host") {
            return Ok(Mode::Host);
        }
        return Ok(Mode::Own {
            networks: Vec::new(),
            ports,
        });
    }
    if networks.is_empty() {
        return Err(Error::invalid(format!(
            "label {NETWORKS_LABEL}: name at least one network (or \"none\")"
        )));
    }
    Ok(Mode::Own { networks, ports })
}

/// Points the spec's network namespace at `path`, or removes it (`None`: the host's).
fn set_network_namespace(spec: &mut Value, path: Option<&Path>) {
    let Some(linux) = spec.as_object_mut().map(|s| {
        s.entry("linux")
            .or_insert_with(|| json!({}))
            .as_object_mut()
    }) else {
        return;
    };
    let Some(linux) = linux else { return };
    let namespaces = linux.entry("namespaces").or_insert_with(|| json!([]));
    let Some(list) = namespaces.as_array_mut() else {
        return;
    };
    list.retain(|ns| ns.get("type").and_then(Value::as_str) != Some("network"));
    if let Some(path) = path {
        list.push(json!({"type": "network", "path": path}));
    }
}

/// The maps of the user namespace the spec asks runc to create (a `user` namespace without a
/// path, and both id maps), in `/proc` form; `None` when it asks for none or joins one.
fn new_user_namespace(spec: &Value) -> Option<berth_net::UsernsMaps> {
    let linux = spec.get("linux")?;
    let asks = linux.get("namespaces")?.as_array()?.iter().any(|ns| {
        ns.get("type").and_then(Value::as_str) == Some("user") && ns.get("path").is_none()
    });
    if !asks {
        return None;
    }
    // Maps runc would refuse are runc's to report: no netns of their own here.
    let (uid, gid) = berth_oci::idmap::spec_maps(spec).ok().flatten()?;
    Some(berth_net::UsernsMaps {
        uid_map: uid.proc_form(),
        gid_map: gid.proc_form(),
    })
}

/// Makes the spec's user namespace the one at `path` (which owns the container's netns) rather
/// than a new one; the maps stay in the spec, as runc 1.1 takes them beside a path.
fn join_user_namespace(spec: &mut Value, path: &Path) {
    let Some(list) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for ns in list.iter_mut() {
        if ns.get("type").and_then(Value::as_str) == Some("user") {
            *ns = json!({"type": "user", "path": path});
        }
    }
}

/// Bind-mounts `source` on `destination`, replacing a mount the spec already had there.
fn add_file_mount(spec: &mut Value, destination: &str, source: &Path) {
    let Some(obj) = spec.as_object_mut() else {
        return;
    };
    let mounts = obj.entry("mounts").or_insert_with(|| json!([]));
    let Some(list) = mounts.as_array_mut() else {
        return;
    };
    list.retain(|m| m.get("destination").and_then(Value::as_str) != Some(destination));
    list.push(json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate"],
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_in_nerdctls_shape() {
        assert_eq!(mode_of(&labels(&[])).unwrap(), Mode::Unmanaged);
        assert_eq!(
            mode_of(&labels(&[(NETWORKS_LABEL, r#"["host"]"#)])).unwrap(),
            Mode::Host
        );
        let m = mode_of(&labels(&[
            (NETWORKS_LABEL, r#"["bridge"]"#),
            (
                PORTS_LABEL,
                r#"[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":"0.0.0.0"}]"#,
            ),
        ]))
        .unwrap();
        assert_eq!(
            m,
            Mode::Own {
                networks: vec!["bridge".into()],
                ports: vec![berth_net::PortMapping::tcp(8080, 80)]
            }
        );
        for bad in [
            labels(&[(NETWORKS_LABEL, "bridge")]),
            labels(&[(NETWORKS_LABEL, r#"["host","bridge"]"#)]),
            labels(&[(NETWORKS_LABEL, "[]")]),
            labels(&[(PORTS_LABEL, "[]")]),
            labels(&[
                (NETWORKS_LABEL, r#"["none"]"#),
                (PORTS_LABEL, r#"[{"HostPort":1,"ContainerPort":1}]"#),
            ]),
        ] {
            assert!(mode_of(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spec_gets_the_netns_and_files() {
        let mut spec = json!({
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]},
            "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/elsewhere"}]
        });
        set_network_namespace(&mut spec, Some(Path::new("/run/netns/x")));
        add_file_mount(&mut spec, "/etc/hosts", Path::new("/s/hosts"));
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}])
        );
        assert_eq!(spec["mounts"].as_array().unwrap().len(), 1);
        assert_eq!(spec["mounts"][0]["source"], "/s/hosts");
        set_network_namespace(&mut spec, None);
        assert_eq!(spec["linux"]["namespaces"], json!([{"type": "pid"}]));
    }

    #[test]
    fn config_is_validated() {
        CniConfig::default().validate().unwrap();
        for bad in [
            CniConfig {
                default_bridge: "a-name-far-too-long".into(),
                ..Default::default()
            },
            CniConfig {
                conf_dir: "relative".into(),
                ..Default::default()
            },
            CniConfig {
                default_subnet: "10.0.0.1/8".into(),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
