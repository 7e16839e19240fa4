//! The JSON files crictl reads (`runp POD.json`, `create POD CTR.json POD.json`), written into a
//! test's temp dir, and the CNI conflist the CRI gives its pods: the one copy every crictl test
//! uses.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Config files in `dir`; the pods' CRI logs under `dir/logs/<pod>`.
pub struct CrictlFiles {
    dir: PathBuf,
}

impl CrictlFiles {
    pub fn new(dir: &Path) -> CrictlFiles {
        CrictlFiles {
            dir: dir.to_path_buf(),
        }
    }

    /// `v` written as `dir/name`; its path.
    pub fn write(&self, name: &str, v: &Value) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, v.to_string()).expect("write a config");
        p.to_string_lossy().into_owned()
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// A pod config (`<name>-pod.json`) in the Kubernetes namespace `namespace`, uid
    /// `uid-<name>`, its logs under [`Self::logs_dir`]; `extra`'s keys are added or replace.
    pub fn pod_config(&self, name: &str, namespace: &str, extra: Value) -> String {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "attempt": 0},
            "log_directory": self.logs_dir().join(name),
            "linux": {},
        });
        merge(&mut v, extra);
        self.write(&format!("{name}-pod.json"), &v)
    }

    /// A container config (`<name>-ctr.json`) of `image` running `command`, logging to
    /// `<name>.log` in its pod's log directory; `extra`'s keys are added or replace.
    pub fn container_config(
        &self,
        name: &str,
        image: &str,
        command: &[&str],
        extra: Value,
    ) -> String {
        let mut v = serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": image},
            "command": command,
            "log_path": format!("{name}.log"),
        });
        merge(&mut v, extra);
        self.write(&format!("{name}-ctr.json"), &v)
    }
}

fn merge(v: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
}

/// `dir/10-pods.conflist`: a network `pods` of bridge `bridge` on `SUBNET_PREFIX.0/24` with
/// host-local addresses, portmap and loopback (`dir` is made if missing).
pub fn write_pods_conflist(dir: &Path, bridge: &str, subnet_prefix: &str) {
    std::fs::create_dir_all(dir).expect("create the CNI conf dir");
    std::fs::write(
        dir.join("10-pods.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"pods","plugins":[
            {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
             "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{subnet_prefix}.0/24"}}]]}}}},
            {{"type":"portmap","capabilities":{{"portMappings":true}}}},
            {{"type":"loopback"}}]}}"#
        ),
    )
    .expect("write the conflist");
}
