//! The `[cri]` section of berthd's config: declared, defaulted and validated here; berthd's
//! config.rs only composes it.

use berth_errdefs::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriConfig {
    /// Off: berthd serves no CRI socket.
    pub enabled: bool,
    /// The CRI socket the kubelet and crictl dial (0660; its parent 0711 like the API socket's).
    pub address: PathBuf,
    /// The streaming server's listen address (Exec, Attach, PortForward URLs): loopback and
    /// any free port by default.
    pub stream_address: String,
    /// The host put in streaming URLs when `stream_address` is unspecified (0.0.0.0 or ::);
    /// empty: the address the host routes from.
    pub stream_advertise_host: String,
    /// How long a streaming URL stays redeemable, in seconds (the kubelet's clients use theirs
    /// at once; tests shorten it to see a token expire).
    pub stream_token_ttl_seconds: u64,
    /// How many streaming URLs may wait to be redeemed at once; more is ResourceExhausted.
    pub stream_max_in_flight: usize,
    /// The berth namespace CRI objects live in (containerd's CRI uses `k8s.io`).
    pub namespace: String,
    /// Pod networks: the first config list here (by name) is the pods' network.
    pub cni_conf_dir: PathBuf,
    /// Searched in order for CNI plugin binaries.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Pod state (hostname, resolv.conf, network attachments); empty: `<state>/cri`.
    pub state_dir: PathBuf,
    /// Registry hosts for PullImage in containerd's `hosts.toml` layout
    /// (`<dir>/<host>/hosts.toml`: mirrors, TLS, plain HTTP), read again at every pull.
    pub registry_config_path: PathBuf,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            enabled: true,
            address: "/run/berth/cri.sock".into(),
            stream_address: "127.0.0.1:0".into(),
            stream_advertise_host: String::new(),
            stream_token_ttl_seconds: 60,
            stream_max_in_flight: 1000,
            namespace: "k8s.io".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            state_dir: PathBuf::new(),
            registry_config_path: "/etc/berth/certs.d".into(),
        }
    }
}

impl CriConfig {
    /// Each bad value is an InvalidArgument naming its key.
    pub fn validate(&self) -> Result<()> {
        let absolute = |key: &str, p: &Path| {
            if p.is_absolute() {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "cri.{key} must be an absolute path, not {:?}",
                    p.display().to_string()
                )))
            }
        };
        absolute("address", &self.address)?;
        absolute("cni_conf_dir", &self.cni_conf_dir)?;
        for dir in &self.cni_bin_dirs {
            absolute("cni_bin_dirs", dir)?;
        }
        if !self.state_dir.as_os_str().is_empty() {
            absolute("state_dir", &self.state_dir)?;
        }
        if !self.registry_config_path.as_os_str().is_empty() {
            absolute("registry_config_path", &self.registry_config_path)?;
        }
        self.stream_address
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                Error::invalid(format!(
                    "cri.stream_address {:?} is not an IP address and port: {e}",
                    self.stream_address
                ))
            })?;
        if !self.stream_advertise_host.is_empty() {
            self.stream_advertise_host
                .parse::<std::net::IpAddr>()
                .map_err(|e| {
                    Error::invalid(format!(
                        "cri.stream_advertise_host {:?} is not an IP address: {e}",
                        self.stream_advertise_host
                    ))
                })?;
        }
        if self.stream_token_ttl_seconds == 0 {
            return Err(Error::invalid(
                "cri.stream_token_ttl_seconds must be at least 1",
            ));
        }
        if self.stream_max_in_flight == 0 {
            return Err(Error::invalid(
                "cri.stream_max_in_flight must be at least 1",
            ));
        }
        let ns = &self.namespace;
        let valid_ns = !ns.is_empty()
            && ns.len() <= 76
            && ns
                .split(['.', '-', '_'])
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()));
        if !valid_ns {
            return Err(Error::invalid(format!(
                "cri.namespace {ns:?} is not a containerd namespace name"
            )));
        }
        Ok(())
    }

    /// Where pod state lives under berthd's state dir `state`.
    pub fn state_dir(&self, state: &Path) -> PathBuf {
        if self.state_dir.as_os_str().is_empty() {
            state.join("cri")
        } else {
            self.state_dir.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        CriConfig::default().validate().unwrap();
        type Change = fn(&mut CriConfig);
        let cases: [(Change, &str); 8] = [
            (
                |c| c.stream_token_ttl_seconds = 0,
                "cri.stream_token_ttl_seconds",
            ),
            (|c| c.stream_max_in_flight = 0, "cri.stream_max_in_flight"),
            (
                |c| c.stream_advertise_host = "node-1".into(),
                "cri.stream_advertise_host",
            ),
            (|c| c.address = "cri.sock".into(), "cri.address"),
            (
                |c| c.stream_address = "localhost".into(),
                "cri.stream_address",
            ),
            (|c| c.namespace = "a/b".into(), "cri.namespace"),
            (|c| c.cni_bin_dirs = vec!["bin".into()], "cri.cni_bin_dirs"),
            (
                |c| c.registry_config_path = "certs.d".into(),
                "cri.registry_config_path",
            ),
        ];
        for (change, key) in cases {
            let mut c = CriConfig::default();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.message().contains(key), "{key}: {e}");
        }
    }
}
