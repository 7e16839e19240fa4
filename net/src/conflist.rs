//! Network configuration lists (CNI's `.conflist`, and single-plugin `.conf`/`.json` files read
//! as a list of one) and the per-plugin configuration each invocation gets: the plugin's object
//! with the list's `name` and `cniVersion`, the previous result, and the `runtimeConfig` entries
//! for the capabilities the plugin declares (libcni's rules, so configs written for
//! containerd or nerdctl behave the same here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::cidr::Subnet;
use crate::error::{Error, Result};

/// One network: a named chain of plugins.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's object as written (with `type`).
    pub plugins: Vec<Value>,
    /// The whole document, berth's own keys included.
    pub raw: Value,
}

impl ConfigList {
    /// Reads a CNI config document; `origin` names it in errors.
    pub fn from_value(origin: &str, raw: Value) -> Result<ConfigList> {
        let bad = |message: &str| Error::Config {
            path: origin.to_string(),
            message: message.to_string(),
        };
        let obj = raw.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"name\""))?
            .to_string();
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0")
            .to_string();
        let plugins = match obj.get("plugins") {
            Some(Value::Array(list)) => list.clone(),
            Some(_) => return Err(bad("\"plugins\" is not a list")),
            // A single-plugin .conf: the document is the plugin.
            None => vec![raw.clone()],
        };
        if plugins.is_empty() {
            return Err(bad("no plugins"));
        }
        for p in &plugins {
            if p.get("type").and_then(Value::as_str).is_none() {
                return Err(bad("a plugin without \"type\""));
            }
        }
        Ok(ConfigList {
            name,
            cni_version,
            plugins,
            raw,
        })
    }

    pub fn load(path: &Path) -> Result<ConfigList> {
        let text = std::fs::read(path).map_err(|e| Error::io_at("read", path, e))?;
        let raw: Value = serde_json::from_slice(&text).map_err(|e| Error::Config {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        ConfigList::from_value(&path.display().to_string(), raw)
    }

    /// What plugin `index` is given on stdin.
    pub fn plugin_config(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        runtime: &BTreeMap<String, Value>,
    ) -> Value {
        let mut obj = match self.plugins.get(index) {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        obj.insert("name".into(), Value::String(self.name.clone()));
        obj.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            obj.insert("prevResult".into(), prev.clone());
        }
        let declared: Vec<String> = obj
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|caps| {
                caps.iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut runtime_config = Map::new();
        for cap in declared {
            if let Some(v) = runtime.get(&cap) {
                runtime_config.insert(cap, v.clone());
            }
        }
        if !runtime_config.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        Value::Object(obj)
    }

    /// The plugin types in order, for messages.
    pub fn plugin_type(&self, index: usize) -> &str {
        self.plugins
            .get(index)
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The IPv4 subnets the IPAM sections hand out (host-local's `ranges` and legacy `subnet`).
    pub fn subnets(&self) -> Vec<Subnet> {
        let mut out = Vec::new();
        for p in &self.plugins {
            let Some(ipam) = p.get("ipam") else { continue };
            if let Some(s) = ipam.get("subnet").and_then(Value::as_str) {
                out.extend(s.parse::<Subnet>());
            }
            for set in ipam
                .get("ranges")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for range in set.as_array().into_iter().flatten() {
                    if let Some(s) = range.get("subnet").and_then(Value::as_str) {
                        out.extend(s.parse::<Subnet>());
                    }
                }
            }
        }
        out
    }

    /// The first gateway an IPAM range names.
    pub fn gateway(&self) -> Option<String> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("ipam"))
            .flat_map(|ipam| {
                ipam.get("ranges")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .flat_map(|set| set.as_array().into_iter().flatten())
            .find_map(|r| r.get("gateway").and_then(Value::as_str).map(str::to_string))
    }

    /// The bridge device of a `bridge` plugin, if the list has one.
    pub fn bridge(&self) -> Option<String> {
        self.plugins
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("bridge"))
            .map(|p| {
                p.get("bridge")
                    .and_then(Value::as_str)
                    // The bridge plugin's own default.
                    .unwrap_or("cni0")
                    .to_string()
            })
    }
}

/// Config files in `dir` the way libcni picks them: `.conflist`, `.conf`, `.json`, by name.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io_at("read", dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io_at("read", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("conflist" | "conf" | "json")
        ) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let list = ConfigList::from_value(
            "t",
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
                {"type": "bridge", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24", "gateway": "10.9.0.1"}]]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]}),
        )
        .unwrap();
        let mut rt = BTreeMap::new();
        rt.insert("portMappings".to_string(), json!([{"hostPort": 8080}]));
        let prev = json!({"cniVersion": "1.0.0"});
        let bridge = list.plugin_config(0, None, &rt);
        assert!(bridge.get("runtimeConfig").is_none());
        assert_eq!(bridge["name"], "n");
        let portmap = list.plugin_config(1, Some(&prev), &rt);
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(list.subnets(), vec!["10.9.0.0/24".parse().unwrap()]);
        assert_eq!(list.gateway().as_deref(), Some("10.9.0.1"));
        assert_eq!(list.bridge().as_deref(), Some("cni0"));
    }

    #[test]
    fn single_plugin_conf_is_a_list_of_one() {
        let list = ConfigList::from_value(
            "t",
            json!({"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}),
        )
        .unwrap();
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugin_type(0), "loopback");
        assert!(ConfigList::from_value("t", json!({"name": "x", "plugins": []})).is_err());
    }
}
