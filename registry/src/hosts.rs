//! Which hosts serve a registry name, read from containerd's `hosts.toml` layout:
//! `<config_path>/<host>/hosts.toml` (a `host:port` name also looked for as `host_port`, then
//! `_default`), with `server`, ordered `[host."URL"]` mirrors and their capabilities, `ca`,
//! `client`, `skip_verify`, `override_path` and `header`. A directory without hosts.toml is read
//! in docker's `certs.d` way (`*.crt` CAs, `*.cert`/`*.key` client pairs).
//!
//! Plain HTTP is used only where a URL says `http://`, where the caller's default scheme is
//! http, or, after HTTPS failed, for loopback hosts (containerd's localhost fallback).

use crate::error::Error;
use crate::reference::DOCKER_DOMAIN;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// TLS settings of one host. Paths are absolute (relative ones in hosts.toml are taken from
/// the hosts.toml directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// CA certificates (PEM) trusted in addition to the system roots.
    pub ca: Vec<PathBuf>,
    /// Client certificates: a PEM with the certificate chain and, if not in the same file, the key.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: bool,
}

/// One host to try for a registry name.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]` as it appears in URLs.
    pub host: String,
    /// The API root path: `/v2` normally, or the mirror's own path with `override_path`.
    pub path: String,
    pub capabilities: Capabilities,
    pub tls: TlsSettings,
    /// Extra request headers (`header` tables), sent only to this host.
    pub headers: Vec<(String, String)>,
    /// Retry over plain HTTP when HTTPS fails to connect (loopback hosts without configuration).
    pub http_fallback: bool,
    /// False for mirrors: they are asked with `?ns=<domain>` so one mirror can serve many names.
    pub is_server: bool,
}

impl RegistryHost {
    /// The URL of `suffix` (starting with '/') below the API root.
    pub fn url(&self, suffix: &str) -> String {
        format!("{}://{}{}{}", self.scheme, self.host, self.path, suffix)
    }
}

/// Where hosts configuration comes from, and the defaults for names it does not configure.
#[derive(Clone)]
pub struct HostsConfig {
    /// containerd's `config_path` (e.g. `/etc/berth/certs.d`); None: defaults only.
    pub config_path: Option<PathBuf>,
    /// Scheme of hosts given without one, and of unconfigured registries (`https`).
    pub default_scheme: String,
    /// Headers added to every host's requests (the caller's resolver headers).
    pub headers: Vec<(String, String)>,
}

impl Default for HostsConfig {
    fn default() -> Self {
        HostsConfig {
            config_path: None,
            default_scheme: "https".to_string(),
            headers: Vec::new(),
        }
    }
}

/// Header names only: configured header values may be tokens.
fn header_names(headers: &[(String, String)]) -> Vec<&str> {
    headers.iter().map(|(k, _)| k.as_str()).collect()
}

impl std::fmt::Debug for RegistryHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryHost")
            .field("url", &self.url(""))
            .field("capabilities", &self.capabilities)
            .field("tls", &self.tls)
            .field("headers", &header_names(&self.headers))
            .field("http_fallback", &self.http_fallback)
            .field("is_server", &self.is_server)
            .finish()
    }
}

impl std::fmt::Debug for HostsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostsConfig")
            .field("config_path", &self.config_path)
            .field("default_scheme", &self.default_scheme)
            .field("headers", &header_names(&self.headers))
            .finish()
    }
}

/// Loopback names containerd lets fall back to plain HTTP.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl HostsConfig {
    pub fn with_config_path(path: impl Into<PathBuf>) -> HostsConfig {
        HostsConfig {
            config_path: Some(path.into()),
            ..HostsConfig::default()
        }
    }

    /// The hosts for a reference's domain, in the order to try them: mirrors first (as written),
    /// the server last.
    pub fn hosts(&self, domain: &str) -> Result<Vec<RegistryHost>, Error> {
        let default_host = if domain == DOCKER_DOMAIN {
            crate::reference::DOCKER_REGISTRY_HOST
        } else {
            domain
        };
        let mut server = RegistryHost {
            scheme: self.default_scheme.clone(),
            host: default_host.to_string(),
            path: "/v2".to_string(),
            capabilities: Capabilities::ALL,
            tls: TlsSettings::default(),
            headers: self.headers.clone(),
            http_fallback: self.default_scheme == "https" && is_loopback(default_host),
            is_server: true,
        };
        let Some(dir) = self.host_dir(domain)? else {
            return Ok(vec![server]);
        };
        let file = dir.join("hosts.toml");
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("read {}", file.display()), e)),
        };
        let Some(text) = text else {
            server.tls = certs_d(&dir)?;
            if !server.tls.ca.is_empty() || !server.tls.client.is_empty() {
                server.http_fallback = false;
            }
            return Ok(vec![server]);
        };
        let bad = |message: String| Error::HostsConfig {
            path: file.display().to_string(),
            message,
        };
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        let mut hosts = Vec::new();
        if let Some(table) = doc.get("host") {
            let table = table
                .as_table()
                .ok_or_else(|| bad("`host` must be a table".into()))?;
            for (url, v) in table {
                let v = v
                    .as_table()
                    .ok_or_else(|| bad(format!("host {url:?} must be a table")))?;
                let mut h = self.parse_url(url, v, &bad)?;
                self.apply(&mut h, v, &dir, &bad)?;
                h.is_server = false;
                hosts.push(h);
            }
        }
        if let Some(s) = doc.get("server") {
            let url = s
                .as_str()
                .ok_or_else(|| bad("`server` must be a string".into()))?;
            server = self.parse_url(url, &doc, &bad)?;
        }
        self.apply(&mut server, &doc, &dir, &bad)?;
        server.is_server = true;
        hosts.push(server);
        Ok(hosts)
    }

    /// containerd's search order: `host_port` (for a name with a port), the name itself, `_default`.
    fn host_dir(&self, domain: &str) -> Result<Option<PathBuf>, Error> {
        let Some(root) = &self.config_path else {
            return Ok(None);
        };
        let mut candidates = Vec::new();
        if let Some((h, p)) = domain.rsplit_once(':') {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                candidates.push(format!("{h}_{p}"));
            }
        }
        candidates.push(domain.to_string());
        candidates.push("_default".to_string());
        for c in candidates {
            // The domain was validated as a reference, so it cannot climb out of the root.
            let dir = root.join(&c);
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => return Ok(Some(dir)),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("stat {}", dir.display()), e)),
            }
        }
        Ok(None)
    }

    fn parse_url(
        &self,
        url: &str,
        table: &toml::Table,
        bad: &dyn Fn(String) -> Error,
    ) -> Result<RegistryHost, Error> {
        let with_scheme = if url.contains("://") {
            url.to_string()
        } else {
            format!("{}://{url}", self.default_scheme)
        };
        let parsed =
            url::Url::parse(&with_scheme).map_err(|e| bad(format!("host URL {url:?}: {e}")))?;
        let scheme = parsed.scheme().to_string();
        if scheme != "http" && scheme != "https" {
            return Err(bad(format!(
                "host URL {url:?}: scheme must be http or https"
            )));
        }
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(bad(format!("host URL {url:?} has no host"))),
        };
        let override_path = match table.get("override_path") {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad("override_path must be a boolean".into()))?,
            None => false,
        };
        let mut path = parsed.path().trim_end_matches('/').to_string();
        if !override_path && !path.ends_with("/v2") {
            path.push_str("/v2");
        }
        Ok(RegistryHost {
            http_fallback: false,
            scheme,
            host,
            path,
            capabilities: Capabilities::ALL,
            tls: TlsSettings::default(),
            headers: self.headers.clone(),
            is_server: false,
        })
    }

    /// The per-host keys, shared by the top level (the server) and `[host."..."]` tables.
    fn apply(
        &self,
        h: &mut RegistryHost,
        t: &toml::Table,
        dir: &Path,
        bad: &dyn Fn(String) -> Error,
    ) -> Result<(), Error> {
        let abs = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };
        if let Some(caps) = t.get("capabilities") {
            let list = caps
                .as_array()
                .ok_or_else(|| bad("capabilities must be a list".into()))?;
            h.capabilities = Capabilities::default();
            for c in list {
                match c.as_str() {
                    Some("pull") => h.capabilities.pull = true,
                    Some("resolve") => h.capabilities.resolve = true,
                    Some("push") => h.capabilities.push = true,
                    other => return Err(bad(format!("unknown capability {other:?}"))),
                }
            }
        }
        match t.get("ca") {
            None => {}
            Some(toml::Value::String(s)) => h.tls.ca.push(abs(s)),
            Some(toml::Value::Array(a)) => {
                for v in a {
                    let s = v
                        .as_str()
                        .ok_or_else(|| bad("ca entries must be strings".into()))?;
                    h.tls.ca.push(abs(s));
                }
            }
            Some(_) => return Err(bad("ca must be a string or a list".into())),
        }
        let pair = |v: &toml::Value| -> Result<(PathBuf, Option<PathBuf>), Error> {
            match v {
                toml::Value::String(s) => Ok((abs(s), None)),
                toml::Value::Array(a) => match a.as_slice() {
                    [toml::Value::String(c)] => Ok((abs(c), None)),
                    [toml::Value::String(c), toml::Value::String(k)] => Ok((abs(c), Some(abs(k)))),
                    _ => Err(bad("client pairs are [cert, key]".into())),
                },
                _ => Err(bad(
                    "client must be a path, a [cert, key] pair or a list".into()
                )),
            }
        };
        match t.get("client") {
            None => {}
            Some(v @ toml::Value::String(_)) => h.tls.client.push(pair(v)?),
            Some(toml::Value::Array(a)) => {
                // `["cert", "key"]` is one pair; `[["c","k"], "pem"]` a list.
                if a.iter().all(|x| x.is_str()) && a.len() == 2 {
                    h.tls.client.push(pair(&toml::Value::Array(a.clone()))?);
                } else {
                    for v in a {
                        h.tls.client.push(pair(v)?);
                    }
                }
            }
            Some(_) => return Err(bad("client must be a path or a list".into())),
        }
        if let Some(v) = t.get("skip_verify") {
            h.tls.skip_verify = v
                .as_bool()
                .ok_or_else(|| bad("skip_verify must be a boolean".into()))?;
        }
        if let Some(v) = t.get("header") {
            let table = v
                .as_table()
                .ok_or_else(|| bad("header must be a table".into()))?;
            for (name, value) in table {
                let values: Vec<&str> = match value {
                    toml::Value::String(s) => vec![s.as_str()],
                    toml::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
                    _ => return Err(bad(format!("header {name:?} must be a string or a list"))),
                };
                for v in values {
                    h.headers.push((name.clone(), v.to_string()));
                }
            }
        }
        // Configured TLS material means the host speaks TLS: no clear-text fallback.
        if h.scheme == "https" && !h.tls.ca.is_empty() {
            h.http_fallback = false;
        }
        Ok(())
    }
}

/// docker's `certs.d/<host>/` files: `*.crt` CAs, `*.cert` with the `*.key` of the same stem.
fn certs_d(dir: &Path) -> Result<TlsSettings, Error> {
    let mut tls = TlsSettings::default();
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => tls.ca.push(p),
            Some("cert") => {
                let key = p.with_extension("key");
                if key.exists() {
                    tls.client.push((p, Some(key)));
                }
            }
            _ => {}
        }
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = HostsConfig::default();
        let h = c.hosts("docker.io").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].url("/"), "https://registry-1.docker.io/v2/");
        assert!(!h[0].http_fallback);
        let h = c.hosts("localhost:5000").unwrap();
        assert!(h[0].http_fallback);
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("example.com"));
    }

    #[test]
    fn hosts_toml() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("docker.io");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            r#"
server = "https://registry-1.docker.io"
[host."http://mirror-b:5000"]
  capabilities = ["pull", "resolve"]
[host."https://mirror-a/custom/path"]
  capabilities = ["pull"]
  override_path = true
  ca = "ca.pem"
  client = [["c.pem", "k.pem"]]
  skip_verify = true
  [host."https://mirror-a/custom/path".header]
    x-token = ["a", "b"]
"#,
        )
        .unwrap();
        let c = HostsConfig::with_config_path(root.path());
        let h = c.hosts("docker.io").unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].url("/x"), "http://mirror-b:5000/v2/x");
        assert!(h[0].capabilities.resolve && !h[0].capabilities.push);
        assert_eq!(h[1].url("/x"), "https://mirror-a/custom/path/x");
        assert_eq!(h[1].tls.ca, vec![d.join("ca.pem")]);
        assert_eq!(
            h[1].tls.client,
            vec![(d.join("c.pem"), Some(d.join("k.pem")))]
        );
        assert!(h[1].tls.skip_verify);
        assert_eq!(h[1].headers.len(), 2);
        assert!(
            !format!("{:?}", h[1]).contains("\"a\""),
            "header values redacted"
        );
        assert!(h[2].is_server && h[2].capabilities == Capabilities::ALL);
        assert_eq!(h[2].host, "registry-1.docker.io");

        // host_port directory naming, and the _default fallback.
        let p = root.path().join("reg.example_5000");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(
            p.join("hosts.toml"),
            "server = \"http://reg.example:5000\"\n",
        )
        .unwrap();
        assert_eq!(
            c.hosts("reg.example:5000").unwrap()[0].url("/"),
            "http://reg.example:5000/v2/"
        );
        let dflt = root.path().join("_default");
        std::fs::create_dir(&dflt).unwrap();
        std::fs::write(dflt.join("hosts.toml"), "[host.\"http://everything\"]\n").unwrap();
        let h = c.hosts("quay.io").unwrap();
        assert_eq!(h[0].host, "everything");
        assert_eq!(h[1].host, "quay.io");

        let bad = root.path().join("bad.example");
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("hosts.toml"), "server = \"ftp://x\"\n").unwrap();
        assert!(c.hosts("bad.example").is_err());
        std::fs::write(
            bad.join("hosts.toml"),
            "[host.\"https://x\"]\ncapabilities=[\"all\"]\n",
        )
        .unwrap();
        assert!(c.hosts("bad.example").is_err());
    }
}
