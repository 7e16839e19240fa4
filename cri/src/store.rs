//! How pods and containers live in berthd: each is a container record in the CRI namespace,
//! labelled [`KIND_LABEL`] = `sandbox` or `container`, its CRI config protobuf-encoded in the
//! [`CONFIG_EXT`] extension and its CRI state (JSON) in [`STATE_EXT`]. berthd flushes a record
//! before it answers, so a kill -9 of berthd keeps every pod and container.

use crate::Cri;
use berth::containers::ContainerInfo;
use berth_api::runtime::v1 as cri;
use berth_errdefs::{Error, Result};
use prost::Message;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

pub use crate::{
    CRI_KIND_CONTAINER as KIND_CONTAINER, CRI_KIND_LABEL as KIND_LABEL,
    CRI_KIND_SANDBOX as KIND_SANDBOX,
};
/// The CRI name key (`name_namespace_uid_attempt` for pods, `name_pod…_attempt` for
/// containers), unique among records of one kind.
pub const NAME_LABEL: &str = "io.berth.cri.name";
/// The pod a container belongs to (also the record's `sandbox` field).
pub const SANDBOX_ID_LABEL: &str = "io.cri-containerd.sandbox-id";
pub const CONFIG_EXT: &str = "io.berth.cri.config";
pub const STATE_EXT: &str = "io.berth.cri.state";
const STATE_TYPE: &str = "io.berth.cri/state+json";

/// A pod's state beside its config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodState {
    pub ready: bool,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The netns path (none: host network).
    pub netns: Option<String>,
    /// The netns is the holder's, bound at `netns` by the CRI (a pod user namespace's), not
    /// one berth-net made: the CRI unmounts it.
    #[serde(default)]
    pub netns_bound: bool,
    /// Addresses, the first being the pod's IP.
    pub ips: Vec<String>,
    /// The namespace holder's pid and start time.
    pub holder: Option<(u32, u64)>,
    /// Bind-mounted into every container.
    pub hosts: String,
    pub resolv_conf: String,
    pub hostname_file: String,
    /// The cgroup parent of the pod's containers.
    pub cgroup_parent: String,
    /// The pod's /dev/shm, bound into each of its containers: a tmpfs in the pod's directory
    /// (see [`crate::pod_shm`]) or, for a pod on the host's IPC namespace, the host's. Empty in
    /// records from before pods shared one; their containers get a tmpfs each.
    #[serde(default)]
    pub shm: String,
}

impl PodState {
    /// `/proc/<holder>/ns/<kind>` when the holder is alive.
    pub fn holder_ns(&self, kind: &str) -> Option<String> {
        let (pid, start) = self.holder?;
        crate::holder::alive(pid, start).then(|| format!("/proc/{pid}/ns/{kind}"))
    }
}

/// A container's state beside its config (what its task cannot tell after it is deleted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerState {
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// Set once the exit above is final (the task is gone).
    pub exited: bool,
    pub log_path: String,
    pub image_ref: String,
    pub image_id: String,
    pub stdin_fifo: Option<String>,
    pub tty: bool,
    pub stop_signal: String,
    pub uid: i64,
    pub gid: i64,
    pub groups: Vec<i64>,
    pub cgroups_path: String,
    /// The resources as last set (create or UpdateContainerResources).
    #[serde(default)]
    pub resources: Option<serde_json::Value>,
}

/// A record decoded.
pub struct Record<C, S> {
    pub info: ContainerInfo,
    pub config: C,
    pub state: S,
}

pub type Pod = Record<cri::PodSandboxConfig, PodState>;
pub type Container = Record<cri::ContainerConfig, ContainerState>;

pub fn now_ns() -> i64 {
    nanos(SystemTime::now())
}

pub fn nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The labels and extensions of a new pod or container record: its kind, its CRI name key,
/// its CRI config (of protobuf type `config_type`) and its state.
pub fn new_record_parts<M: Message, S: Serialize>(
    kind: &str,
    name_key: String,
    config_type: &str,
    config: &M,
    state: &S,
) -> Result<(HashMap<String, String>, HashMap<String, prost_types::Any>)> {
    let labels = HashMap::from([
        (KIND_LABEL.to_string(), kind.to_string()),
        (NAME_LABEL.to_string(), name_key),
    ]);
    let extensions = HashMap::from([
        (CONFIG_EXT.to_string(), config_any(config_type, config)),
        (STATE_EXT.to_string(), state_any(state)?),
    ]);
    Ok((labels, extensions))
}

pub fn config_any<M: Message>(type_name: &str, m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/runtime.v1.{type_name}"),
        value: m.encode_to_vec(),
    }
}

pub fn state_any<S: Serialize>(s: &S) -> Result<prost_types::Any> {
    Ok(prost_types::Any {
        type_url: STATE_TYPE.to_string(),
        value: serde_json::to_vec(s)
            .map_err(|e| Error::internal(format!("encode the CRI state: {e}")))?,
    })
}

fn decode<C: Message + Default, S: DeserializeOwned>(info: ContainerInfo) -> Result<Record<C, S>> {
    let config = info
        .extensions
        .get(CONFIG_EXT)
        .ok_or_else(|| Error::internal(format!("record {} has no CRI config", info.id)))
        .and_then(|a| {
            C::decode(a.value.as_slice())
                .map_err(|e| Error::internal(format!("record {}: CRI config: {e}", info.id)))
        })?;
    let state = info
        .extensions
        .get(STATE_EXT)
        .ok_or_else(|| Error::internal(format!("record {} has no CRI state", info.id)))
        .and_then(|a| {
            serde_json::from_slice(&a.value)
                .map_err(|e| Error::internal(format!("record {}: CRI state: {e}", info.id)))
        })?;
    Ok(Record {
        info,
        config,
        state,
    })
}

fn kind_filter(kind: &str) -> String {
    format!("labels.\"{KIND_LABEL}\"=={kind}")
}

/// A CRI id (full or a unique prefix, as crictl passes them) must be lowercase hex.
fn check_id(id: &str, what: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{what} id is empty")));
    }
    if id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::not_found(format!("{what} {id:?} not found")));
    }
    Ok(())
}

impl Cri {
    async fn records(&self, kind: &str, extra: Option<String>) -> Result<Vec<ContainerInfo>> {
        let filter = match extra {
            Some(e) => format!("{},{e}", kind_filter(kind)),
            None => kind_filter(kind),
        };
        Ok(self.client.containers().list(&[filter]).await?)
    }

    /// The record of `kind` named by `id` or a unique prefix of it.
    pub(crate) async fn find(&self, kind: &str, id: &str, what: &str) -> Result<ContainerInfo> {
        check_id(id, what)?;
        if id.len() == 64 {
            return match self.client.containers().get_by_id(id).await {
                Ok(info) if info.labels.get(KIND_LABEL).map(String::as_str) == Some(kind) => {
                    Ok(info)
                }
                Ok(_) => Err(Error::not_found(format!("{what} {id} not found"))),
                Err(e) => {
                    let e = Error::from(e);
                    Err(if e.is_not_found() {
                        Error::not_found(format!("{what} {id} not found"))
                    } else {
                        e
                    })
                }
            };
        }
        let mut matches = self
            .records(kind, None)
            .await?
            .into_iter()
            .filter(|c| c.id.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(c), None) => Ok(c),
            (Some(_), Some(_)) => Err(Error::invalid(format!(
                "{what} id prefix {id:?} is ambiguous"
            ))),
            _ => Err(Error::not_found(format!("{what} {id} not found"))),
        }
    }

    pub async fn pod(&self, id: &str) -> Result<Pod> {
        decode(self.find(KIND_SANDBOX, id, "pod sandbox").await?)
    }

    pub async fn container(&self, id: &str) -> Result<Container> {
        decode(self.find(KIND_CONTAINER, id, "container").await?)
    }

    /// Every pod, undecodable records skipped with a warning.
    pub async fn pods(&self) -> Result<Vec<Pod>> {
        Ok(self
            .records(KIND_SANDBOX, None)
            .await?
            .into_iter()
            .filter_map(|i| ok_or_warn(decode(i)))
            .collect())
    }

    /// Every container (of one pod, when given).
    pub async fn containers_of(&self, pod: Option<&str>) -> Result<Vec<Container>> {
        let extra = pod.map(|p| format!("labels.\"{SANDBOX_ID_LABEL}\"=={p}"));
        Ok(self
            .records(KIND_CONTAINER, extra)
            .await?
            .into_iter()
            .filter_map(|i| ok_or_warn(decode(i)))
            .collect())
    }

    /// Whether a record of `kind` already holds the name key.
    pub async fn name_taken(&self, kind: &str, key: &str) -> Result<Option<String>> {
        let escaped = key.replace('\\', "\\\\").replace('"', "\\\"");
        let filter = format!("labels.\"{NAME_LABEL}\"==\"{escaped}\"");
        Ok(self
            .records(kind, Some(filter))
            .await?
            .into_iter()
            .next()
            .map(|c| c.id))
    }

    pub async fn save_state<S: Serialize>(&self, id: &str, state: &S) -> Result<()> {
        Ok(self
            .client
            .containers()
            .set_extension(id, STATE_EXT, Some(state_any(state)?))
            .await?)
    }
}

fn ok_or_warn<T>(r: Result<T>) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("skipping a CRI record: {e}");
            None
        }
    }
}

/// One async lock per pod or container id: a pod's or container's lifecycle calls run one at a
/// time, different ids in parallel.
pub async fn lock(id: &str) -> tokio::sync::OwnedMutexGuard<()> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let m = {
        let mut map = LOCKS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Drop the locks nobody holds or waits for, so the map stays as small as the work.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(id.to_string()).or_default().clone()
    };
    m.lock_owned().await
}

/// A new random id: 64 lowercase hex.
pub fn new_id() -> String {
    berth::names::new_id()
}

/// Whether `labels` has every pair of `selector`.
pub fn matches_labels(
    labels: &HashMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
