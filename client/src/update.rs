//! `berth update`: change a container's limits and restart policy after it was created. A
//! running task gets the new limits through Tasks.Update (the shim runs `runc update`, which
//! writes the cgroup files); the record's spec gets them too, so the next start keeps them;
//! the restart policy is the restart monitor's labels.

use crate::api::services::containers::v1::containers_client::ContainersClient;
use crate::api::services::containers::v1::{Container, UpdateContainerRequest};
use crate::api::services::tasks::v1::tasks_client::TasksClient;
use crate::api::services::tasks::v1::UpdateTaskRequest;
use crate::api::v1::types::Status;
use crate::containers::{ContainerInfo, SPEC_TYPE_URL};
use crate::logs::{
    RESTART_LOG_URI_LABEL, RESTART_POLICY_LABEL, RESTART_STATUS_LABEL, RESTART_STDIN_LABEL,
};
use crate::{Client, Error, Result};
use serde_json::{json, Value};

/// The type URL containerd's clients give a runtime-spec LinuxResources in an Any.
pub const RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// docker's CFS period for `--cpus`.
const CPU_PERIOD: u64 = 100_000;

/// What to change; None leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPUs (a CFS quota over docker's 100 ms period).
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// docker's `--restart` value: no, on-failure[:N], always, unless-stopped.
    pub restart: Option<String>,
}

impl Update {
    /// The changed part of an OCI LinuxResources, as JSON (what `runc update` merges).
    pub fn resources(&self) -> Result<Value> {
        let mut r = json!({});
        if let Some(m) = self.memory {
            if m <= 0 {
                return Err(Error::invalid(format!(
                    "--memory {m} is not a positive size"
                )));
            }
            r["memory"] = json!({ "limit": m });
        }
        if let Some(c) = self.cpus {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::invalid(format!(
                    "--cpus {c} is not a positive number"
                )));
            }
            r["cpu"] = json!({
                "period": CPU_PERIOD,
                "quota": (c * CPU_PERIOD as f64).round() as i64,
            });
        }
        if let Some(p) = self.pids_limit {
            r["pids"] = json!({ "limit": p });
        }
        Ok(r)
    }

    fn changes_resources(&self) -> bool {
        self.memory.is_some() || self.cpus.is_some() || self.pids_limit.is_some()
    }
}

/// Merge the object `from` into `into`, key by key (nested objects merged, the rest replaced).
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

impl Client {
    /// Apply `update` to the container: the running task's cgroup first (a limit the kernel
    /// refuses, e.g. below the memory in use, changes nothing), then the record.
    pub async fn update_container(&self, container: &ContainerInfo, update: &Update) -> Result<()> {
        let resources = update.resources()?;
        let task = self.tasks().get(&container.id).await?;
        let running = task.as_ref().is_some_and(|t| {
            matches!(t.status, Status::Running | Status::Paused | Status::Pausing)
        });
        if update.changes_resources() && running {
            let value = serde_json::to_vec(&resources)
                .map_err(|e| Error::invalid(format!("encode the resources: {e}")))?;
            let req = UpdateTaskRequest {
                container_id: container.id.clone(),
                resources: Some(prost_types::Any {
                    type_url: RESOURCES_TYPE_URL.to_string(),
                    value,
                }),
                annotations: Default::default(),
            };
            TasksClient::new(self.channel.clone())
                .update(self.request(req))
                .await?;
        }
        // Read the record again: the restart monitor may have raised its count meanwhile.
        let current = self.containers().get_by_id(&container.id).await?;
        let mut paths = Vec::new();
        let mut record = Container {
            id: container.id.clone(),
            ..Default::default()
        };
        if update.changes_resources() {
            let mut spec = current.spec.clone().ok_or_else(|| {
                Error::local(
                    tonic::Code::FailedPrecondition,
                    format!("container {} has no runtime spec", container.name),
                )
            })?;
            if !spec["linux"].is_object() {
                spec["linux"] = json!({});
            }
            if !spec["linux"]["resources"].is_object() {
                spec["linux"]["resources"] = json!({});
            }
            merge(&mut spec["linux"]["resources"], &resources);
            let value = serde_json::to_vec(&spec)
                .map_err(|e| Error::invalid(format!("encode the runtime spec: {e}")))?;
            record.spec = Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value,
            });
            paths.push("spec".to_string());
        }
        if let Some(policy) = &update.restart {
            let mut labels = current.labels.clone();
            let new = crate::logs::restart_labels(policy).map_err(Error::invalid)?;
            if new.is_empty() {
                labels.remove(RESTART_POLICY_LABEL);
                labels.remove(RESTART_STATUS_LABEL);
            } else {
                labels.extend(new);
                if !labels.contains_key(RESTART_LOG_URI_LABEL) {
                    if let Some(path) = labels.get(crate::logs::LOG_PATH_LABEL) {
                        let uri = crate::logs::log_uri(std::path::Path::new(path), &labels)
                            .map_err(|e| Error::invalid(format!("log directory: {e}")))?;
                        labels.insert(RESTART_LOG_URI_LABEL.to_string(), uri);
                    }
                }
                if current.terminal() && !labels.contains_key(RESTART_STDIN_LABEL) {
                    if let Some(path) = labels.get(crate::logs::LOG_PATH_LABEL) {
                        let uri = crate::attach::attach_uri(std::path::Path::new(path));
                        labels.insert(RESTART_STDIN_LABEL.to_string(), uri);
                    }
                }
                // A running container is watched from now on; a stopped one once started.
                if running {
                    labels.insert(RESTART_STATUS_LABEL.to_string(), "running".to_string());
                }
            }
            record.labels = labels;
            paths.push("labels".to_string());
        }
        if paths.is_empty() {
            return Ok(());
        }
        let req = UpdateContainerRequest {
            container: Some(record),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        ContainersClient::new(self.channel.clone())
            .update(self.request(req))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_hold_only_what_changes() {
        let u = Update {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            ..Default::default()
        };
        let r = u.resources().unwrap();
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert!(r.get("pids").is_none());
        assert!(Update {
            cpus: Some(-1.0),
            ..Default::default()
        }
        .resources()
        .is_err());
    }

    #[test]
    fn merge_keeps_what_is_not_given() {
        let mut spec = json!({"memory": {"limit": 1, "swap": 2}, "devices": [1]});
        merge(
            &mut spec,
            &json!({"memory": {"limit": 5}, "pids": {"limit": 3}}),
        );
        assert_eq!(
            spec,
            json!({"memory": {"limit": 5, "swap": 2}, "devices": [1], "pids": {"limit": 3}})
        );
    }
}
