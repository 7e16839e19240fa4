//! CNI results: what an ADD answers. berth passes the last plugin's answer on verbatim as the next
//! one's `prevResult` (and keeps it for DEL and CHECK), and reads this typed view of it for the
//! caller. Debian's plugins (1.1) answer in the version of the config: 1.0.0, 0.4.0 and 0.3.x
//! share one shape; 0.1.0/0.2.0's `ip4`/`ip6` objects are converted to it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The netns path for an interface inside the container; empty for the host side.
    #[serde(default)]
    pub sandbox: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
    /// CIDR notation: `10.4.0.2/24`.
    pub address: String,
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default)]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

impl CniResult {
    /// Reads `value`, the answer of `plugin`, whatever the spec version it speaks.
    pub fn parse(plugin: &str, value: &Value) -> Result<CniResult> {
        let bad = |message: String| Error::Result {
            plugin: plugin.to_string(),
            message,
        };
        let version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0");
        match version {
            "0.1.0" | "0.2.0" => {
                let mut result = CniResult {
                    cni_version: version.to_string(),
                    ..Default::default()
                };
                for key in ["ip4", "ip6"] {
                    let Some(ip) = value.get(key) else { continue };
                    let address = ip
                        .get("ip")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(format!("{key} without \"ip\"")))?;
                    result.ips.push(IpConfig {
                        interface: None,
                        address: address.to_string(),
                        gateway: ip
                            .get("gateway")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    });
                    if let Some(routes) = ip.get("routes") {
                        let routes: Vec<Route> = serde_json::from_value(routes.clone())
                            .map_err(|e| bad(format!("{key}.routes: {e}")))?;
                        result.routes.extend(routes);
                    }
                }
                if let Some(dns) = value.get("dns") {
                    result.dns = serde_json::from_value(dns.clone())
                        .map_err(|e| bad(format!("dns: {e}")))?;
                }
                Ok(result)
            }
            "0.3.0" | "0.3.1" | "0.4.0" | "1.0.0" | "1.1.0" => {
                serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))
            }
            other => Err(bad(format!("unsupported CNI result version {other:?}"))),
        }
    }

    /// The interface `name` inside the container's netns, its index into `interfaces`.
    pub fn sandbox_interface(&self, name: &str) -> Option<(usize, &Interface)> {
        self.interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == name && !i.sandbox.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn current_and_legacy_shapes() {
        let current = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "br0", "mac": "aa"}, {"name": "eth0", "mac": "bb", "sandbox": "/run/netns/x"}],
            "ips": [{"interface": 1, "address": "10.4.0.2/24", "gateway": "10.4.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let r = CniResult::parse("bridge", &current).unwrap();
        assert_eq!(r.sandbox_interface("eth0").map(|(i, _)| i), Some(1));
        assert_eq!(r.ips[0].address, "10.4.0.2/24");

        let legacy =
            json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1"}});
        let r = CniResult::parse("old", &legacy).unwrap();
        assert_eq!(r.ips[0].address, "10.1.0.5/16");
        assert_eq!(r.ips[0].gateway.as_deref(), Some("10.1.0.1"));

        assert!(CniResult::parse("x", &json!({"cniVersion": "9.9.9"})).is_err());
    }
}
