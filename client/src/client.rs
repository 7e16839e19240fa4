//! Where berthd is (`Host`: a socket path or docker's `unix:///path`) and the typed `Client`:
//! one channel and one namespace, from which the per-domain handles are taken.

use crate::api::services::introspection::v1::introspection_client::IntrospectionClient;
use crate::api::services::namespaces::v1::namespaces_client::NamespacesClient;
use crate::api::services::namespaces::v1::ListNamespacesRequest;
use crate::api::services::version::v1::version_client::VersionClient;
use crate::api::services::version::v1::VersionResponse;
use crate::{Error, Result};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;

/// berthd's socket when neither `-H` nor `BERTH_HOST` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/berth/berthd.sock";
/// The environment variable naming the daemon, as `DOCKER_HOST` does for docker.
pub const HOST_ENV: &str = "BERTH_HOST";

/// The daemon's address: a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub socket: PathBuf,
}

impl Host {
    /// Parse docker's `unix:///path/to/sock` form or a bare path. Other schemes (tcp://, ssh://)
    /// are refused: berthd serves a unix socket only.
    pub fn parse(s: &str) -> Result<Host> {
        let path = if let Some(rest) = s.strip_prefix("unix://") {
            rest
        } else if s.contains("://") {
            return Err(Error::invalid(format!(
                "unsupported host {s:?}: berthd listens on a unix socket (unix:///path/to/berthd.sock)"
            )));
        } else {
            s
        };
        if path.is_empty() {
            return Err(Error::invalid(format!("host {s:?} names no socket path")));
        }
        Ok(Host {
            socket: PathBuf::from(path),
        })
    }

    /// `$BERTH_HOST` if set, else [`DEFAULT_SOCKET`].
    pub fn default_host() -> Result<Host> {
        match std::env::var(HOST_ENV) {
            Ok(v) if !v.is_empty() => Host::parse(&v),
            _ => Ok(Host {
                socket: PathBuf::from(DEFAULT_SOCKET),
            }),
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unix://{}", self.socket.display())
    }
}

/// A connection to berthd working in one namespace. Cloning is cheap (the channel is shared).
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) channel: Channel,
    pub(crate) namespace: String,
}

impl Client {
    /// Connect to `host` and work in `namespace` (created on first write, as containerd does).
    pub async fn connect(host: &Host, namespace: &str) -> Result<Client> {
        Self::connect_with_timeout(host, namespace, crate::DEFAULT_CONNECT_TIMEOUT).await
    }

    pub async fn connect_with_timeout(
        host: &Host,
        namespace: &str,
        timeout: Duration,
    ) -> Result<Client> {
        let channel = crate::connect_with_timeout(&host.socket, timeout).await?;
        Ok(Client::from_channel(channel, namespace))
    }

    /// A client on an existing channel (e.g. one made by [`crate::connect`]).
    pub fn from_channel(channel: Channel, namespace: &str) -> Client {
        Client {
            channel,
            namespace: namespace.to_string(),
        }
    }

    /// The same connection in another namespace.
    pub fn with_namespace(&self, namespace: &str) -> Client {
        Client {
            channel: self.channel.clone(),
            namespace: namespace.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        crate::with_namespace(&self.namespace, message)
    }

    pub fn images(&self) -> crate::images::Images {
        crate::images::Images::new(self.clone())
    }

    pub fn containers(&self) -> crate::containers::Containers {
        crate::containers::Containers::new(self.clone())
    }

    /// berthd's named networks (host-wide; the namespace does not apply).
    pub fn networks(&self) -> crate::networks::Networks {
        crate::networks::Networks::new(self.clone())
    }

    /// berthd's named volumes in this namespace.
    pub fn volumes(&self) -> crate::volumes::Volumes {
        crate::volumes::Volumes::new(self.clone())
    }

    pub fn tasks(&self) -> crate::tasks::Tasks {
        crate::tasks::Tasks::new(self.clone())
    }

    pub fn leases(&self) -> crate::leases::Leases {
        crate::leases::Leases::new(self.clone())
    }

    pub fn events(&self) -> crate::events::Events {
        crate::events::Events::new(self.clone())
    }

    /// The daemon's version and revision.
    pub async fn version(&self) -> Result<VersionResponse> {
        Ok(VersionClient::new(self.channel.clone())
            .version(())
            .await?
            .into_inner())
    }

    /// The daemon's version as berth reads it: berth's own and the containerd API level it
    /// serves (see [`ServerVersion`]).
    pub async fn server_version(&self) -> Result<ServerVersion> {
        Ok(ServerVersion::parse(self.version().await?))
    }

    /// The daemon's uuid and plugins (Introspection.Server and Plugins).
    pub async fn server_info(&self) -> Result<ServerInfo> {
        let mut intro = IntrospectionClient::new(self.channel.clone());
        let server = intro.server(()).await?.into_inner();
        let plugins = intro
            .plugins(crate::api::services::introspection::v1::PluginsRequest { filters: vec![] })
            .await?
            .into_inner()
            .plugins
            .into_iter()
            .map(|p| (p.r#type, p.id, p.init_err.is_none()))
            .collect();
        Ok(ServerInfo {
            uuid: server.uuid,
            pid: server.pid,
            plugins,
        })
    }

    /// Every namespace with its labels.
    pub async fn namespaces(
        &self,
    ) -> Result<Vec<(String, std::collections::HashMap<String, String>)>> {
        let list = NamespacesClient::new(self.channel.clone())
            .list(ListNamespacesRequest {
                filter: String::new(),
            })
            .await?
            .into_inner();
        Ok(list
            .namespaces
            .into_iter()
            .map(|n| (n.name, n.labels))
            .collect())
    }
}

/// What Introspection says about the daemon.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub uuid: String,
    pub pid: u64,
    /// (type, id, initialised) of each plugin.
    pub plugins: Vec<(String, String, bool)>,
}

/// A daemon's Version answer, split. berthd reports containerd's version scheme with its own
/// version as build metadata (`2.4.0+berth.0.1.0`), because containerd clients pick their code
/// paths by that version; containerd itself reports just its release (`v2.4.2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// berth's version, when the daemon is berthd.
    pub berth: Option<String>,
    /// The containerd release (berthd: the API level) the daemon answers as.
    pub containerd: String,
    pub revision: String,
}

impl ServerVersion {
    pub fn parse(v: VersionResponse) -> ServerVersion {
        let (containerd, berth) = match v.version.split_once("+berth.") {
            Some((c, b)) => (c.to_string(), Some(b.to_string())),
            None => (v.version.clone(), None),
        };
        ServerVersion {
            berth,
            containerd,
            revision: v.revision,
        }
    }

    /// What a person asks for first: berth's version, or the daemon's own when it is not berthd.
    pub fn version(&self) -> &str {
        self.berth.as_deref().unwrap_or(&self.containerd)
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn berthd_and_containerd_versions_split() {
        let v = ServerVersion::parse(VersionResponse {
            version: "2.4.0+berth.0.1.0".into(),
            revision: "abc".into(),
        });
        assert_eq!(v.berth.as_deref(), Some("0.1.0"));
        assert_eq!(v.containerd, "2.4.0");
        assert_eq!(v.version(), "0.1.0");
        let v = ServerVersion::parse(VersionResponse {
            version: "v2.4.2".into(),
            revision: String::new(),
        });
        assert_eq!(v.berth, None);
        assert_eq!(v.version(), "v2.4.2");
    }
}
