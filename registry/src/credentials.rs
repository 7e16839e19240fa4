//! Where credentials come from: the `CredentialProvider` the caller implements (the Transfer
//! service asks its client over the auth stream), docker's `config.json`, and `berth login`'s
//! store file (0600). `Credentials` never prints its secret.

use crate::error::Error;
use base64::Engine;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// What a registry host accepts from us.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Basic auth, or the username/password grant of a token realm.
    Basic { username: String, password: String },
    /// A refresh token (docker's `identitytoken`), exchanged at the realm with OAuth's
    /// refresh_token grant.
    IdentityToken { username: String, token: String },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::IdentityToken { username, .. } => f
                .debug_struct("IdentityToken")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

pub type CredentialFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Credentials>, Error>> + Send + 'a>>;

/// Credentials for a registry host (`host[:port]`, as in the request URL, e.g.
/// `registry-1.docker.io` or `127.0.0.1:5000`), asked for only when that host answers 401.
pub trait CredentialProvider: Send + Sync {
    fn credentials<'a>(&'a self, host: &'a str) -> CredentialFuture<'a>;
}

/// No credentials: anonymous pulls.
pub struct Anonymous;

impl CredentialProvider for Anonymous {
    fn credentials<'a>(&'a self, _host: &'a str) -> CredentialFuture<'a> {
        Box::pin(async { Ok(None) })
    }
}

/// Fixed credentials per host (tests, and callers that already hold them).
#[derive(Default)]
pub struct StaticCredentials(pub BTreeMap<String, Credentials>);

impl CredentialProvider for StaticCredentials {
    fn credentials<'a>(&'a self, host: &'a str) -> CredentialFuture<'a> {
        let found = self.0.get(host).cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// The docker Hub keys docker's config files use for `docker.io`.
const DOCKER_HUB_KEYS: [&str; 3] = [
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
];

/// Credentials from an `auths` map as docker's `config.json` and our login store hold it:
/// `{"auths": {"<host>": {"auth": base64("user:pass")} | {"username", "password"} |
/// {"identitytoken"}}}`. Keys may be bare hosts or URLs (`https://host/v1/`).
#[derive(Default, serde::Deserialize, serde::Serialize)]
pub struct AuthFile {
    #[serde(default)]
    pub auths: BTreeMap<String, AuthEntry>,
}

#[derive(Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identitytoken: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthEntry")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl AuthFile {
    fn read(path: &Path) -> Result<Option<AuthFile>, Error> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                // serde_json's message names a position, never the content.
                Error::Credentials(format!("{}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    /// The entry for `host`, matching keys written as URLs too; docker.io's hosts share Hub's keys.
    pub fn lookup(&self, host: &str) -> Result<Option<Credentials>, Error> {
        let hub = host == crate::reference::DOCKER_REGISTRY_HOST || DOCKER_HUB_KEYS.contains(&host);
        let entry = self.auths.iter().find(|(key, _)| {
            let bare = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let bare = bare.split('/').next().unwrap_or(bare);
            bare == host
                || (hub
                    && (DOCKER_HUB_KEYS.contains(&key.as_str()) || DOCKER_HUB_KEYS.contains(&bare)))
        });
        let Some((_, entry)) = entry else {
            return Ok(None);
        };
        let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
        if let Some(auth) = &entry.auth {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| Error::Credentials(format!("{host}: auth is not base64")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| Error::Credentials(format!("{host}: auth is not UTF-8")))?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| Error::Credentials(format!("{host}: auth is not user:password")))?;
            username = Some(u.to_string());
            password = Some(p.to_string());
        }
        if let Some(token) = entry.identitytoken.clone().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken {
                username: username.unwrap_or_default(),
                token,
            }));
        }
        Ok(match (username, password) {
            (Some(username), Some(password)) if !username.is_empty() => {
                Some(Credentials::Basic { username, password })
            }
            _ => None,
        })
    }
}

/// docker's `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), read
/// at each ask so a `docker login` in between is seen. Only `auths`: credential helpers
/// (`credsStore`, `credHelpers`) are programs this crate does not run.
pub struct DockerConfig {
    path: PathBuf,
}

impl DockerConfig {
    pub fn new(path: impl Into<PathBuf>) -> DockerConfig {
        DockerConfig { path: path.into() }
    }

    /// The file docker itself would read.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }
}

impl CredentialProvider for DockerConfig {
    fn credentials<'a>(&'a self, host: &'a str) -> CredentialFuture<'a> {
        lookup_in_file(self.path.clone(), host, "docker config")
    }
}

/// `berth login`'s store: the same `auths` layout as docker's, in a file that is always 0600
/// (created so, and rewritten whole through a 0600 temporary file and a rename).
pub struct LoginStore {
    path: PathBuf,
}

impl LoginStore {
    pub fn new(path: impl Into<PathBuf>) -> LoginStore {
        LoginStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record credentials for `host` (replacing any), as `berth login` does after checking them.
    pub fn store(&self, host: &str, credentials: &Credentials) -> Result<(), Error> {
        let mut file = AuthFile::read(&self.path)?.unwrap_or_default();
        let entry = match credentials {
            Credentials::Basic { username, password } => AuthEntry {
                auth: Some(
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}")),
                ),
                ..AuthEntry::default()
            },
            Credentials::IdentityToken { username, token } => AuthEntry {
                username: Some(username.clone()),
                identitytoken: Some(token.clone()),
                ..AuthEntry::default()
            },
        };
        file.auths.insert(host.to_string(), entry);
        self.write(&file)
    }

    /// Forget `host` (`berth logout`); true if it was there.
    pub fn remove(&self, host: &str) -> Result<bool, Error> {
        let Some(mut file) = AuthFile::read(&self.path)? else {
            return Ok(false);
        };
        let had = file.auths.remove(host).is_some();
        if had {
            self.write(&file)?;
        }
        Ok(had)
    }

    fn write(&self, file: &AuthFile) -> Result<(), Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let ctx = |what: &str| format!("{what} {}", self.path.display());
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(ctx("create the directory of"), e))?;
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| Error::Credentials(format!("encode: {e}")))?;
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(ctx("write"), e));
        }
        Ok(())
    }
}

impl CredentialProvider for LoginStore {
    fn credentials<'a>(&'a self, host: &'a str) -> CredentialFuture<'a> {
        lookup_in_file(self.path.clone(), host, "login store")
    }
}

/// Several providers asked in order; the first that knows the host answers.
pub struct Chain(pub Vec<Box<dyn CredentialProvider>>);

impl CredentialProvider for Chain {
    fn credentials<'a>(&'a self, host: &'a str) -> CredentialFuture<'a> {
        Box::pin(async move {
            for p in &self.0 {
                if let Some(c) = p.credentials(host).await? {
                    return Ok(Some(c));
                }
            }
            Ok(None)
        })
    }
}

/// Both credential files (docker's config.json and the login store) are read the same way: on a
/// blocking thread, fresh on every lookup so a `berth login` takes effect at once.
fn lookup_in_file<'a>(path: PathBuf, host: &'a str, what: &'static str) -> CredentialFuture<'a> {
    let host = host.to_string();
    Box::pin(async move {
        tokio::task::spawn_blocking(move || match AuthFile::read(&path)? {
            Some(file) => file.lookup(&host),
            None => Ok(None),
        })
        .await
        .map_err(|e| Error::Credentials(format!("reading {what}: {e}")))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn debug_redacts() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = Credentials::IdentityToken {
            username: "u".into(),
            token: "sekrit".into(),
        };
        assert!(!format!("{t:?}").contains("sekrit"));
    }

    #[tokio::test]
    async fn docker_config_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnB3"},"127.0.0.1:5000":{"username":"a","password":"b"},"ghcr.io":{"identitytoken":"rt"}},"credsStore":"desktop"}"#,
        )
        .unwrap();
        let cfg = DockerConfig::new(&path);
        assert_eq!(
            cfg.credentials("registry-1.docker.io").await.unwrap(),
            Some(Credentials::Basic {
                username: "hub".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            cfg.credentials("127.0.0.1:5000").await.unwrap(),
            Some(Credentials::Basic {
                username: "a".into(),
                password: "b".into()
            })
        );
        assert!(matches!(
            cfg.credentials("ghcr.io").await.unwrap(),
            Some(Credentials::IdentityToken { .. })
        ));
        assert_eq!(cfg.credentials("quay.io").await.unwrap(), None);
        assert_eq!(
            DockerConfig::new(dir.path().join("none"))
                .credentials("x")
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn login_store_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = LoginStore::new(dir.path().join("sub/auth.json"));
        let creds = Credentials::Basic {
            username: "me".into(),
            password: "p:w".into(),
        };
        store.store("localhost:5000", &creds).unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            store.credentials("localhost:5000").await.unwrap(),
            Some(creds)
        );
        assert!(store.remove("localhost:5000").unwrap());
        assert_eq!(store.credentials("localhost:5000").await.unwrap(), None);
        assert!(!store.remove("localhost:5000").unwrap());
    }
}
