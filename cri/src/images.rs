//! The CRI ImageService over berthd's image store, as containerd's CRI presents it.
//!
//! An image's CRI id is its config digest. A pull records the image under the reference as
//! given (normalised as docker does), under `repository@<manifest or index digest>` and under
//! `sha256:<config digest>`, so ImageStatus and RemoveImage answer to a tag, a digest or the
//! id. Listing groups every record of the namespace by that id: tags are the names without a
//! digest, repo digests the `name@digest` ones. What an image's content says (id, size, user)
//! never changes for a target digest, so it is read from the content store once and cached.
//!
//! Registry credentials from a PullImage request go to berthd over the transfer's auth stream;
//! they are never logged (the request's Debug is never printed).

use crate::Cri;
use berth::api::types::Descriptor;
use berth::transfer::{RegistryAuth, RegistryOptions, RegistrySecret};
use berth_api::runtime::v1 as cri;
use berth_errdefs::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// containerd's CRI labels the images it pulls so; berth does the same.
const MANAGED_LABEL: &str = "io.cri-containerd.image";
/// An image the kubelet must never garbage-collect (containerd's sandbox image label).
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned";

/// How much before the request's deadline a pull answers DeadlineExceeded (at most half the
/// request's timeout), so that the answer is the CRI's and not tonic's Cancelled.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);

/// What an image's content says, per target digest (immutable, so cached for good).
#[derive(Debug, Clone)]
struct Content {
    /// `sha256:<config digest>`: the CRI id.
    id: String,
    /// The config's User as the CRI reports it: a numeric user is a uid, else a username.
    uid: Option<i64>,
    username: String,
    /// The manifest and config (CreateContainer builds from them, ImageStatus reports them);
    /// `details.image` is the record first read, replaced by the current one on each use.
    details: berth::images::ImageDetails,
}

fn cache() -> &'static Mutex<HashMap<String, Arc<Content>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Content>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// One CRI image: every record of the namespace whose content has this id.
#[derive(Debug, Clone)]
struct Grouped {
    content: Arc<Content>,
    names: Vec<String>,
    pinned: bool,
}

impl Grouped {
    fn to_cri(&self) -> cri::Image {
        let mut tags = BTreeSet::new();
        let mut digests = BTreeSet::new();
        for n in &self.names {
            match kind_of(n) {
                NameKind::Id => {}
                NameKind::Digest => {
                    digests.insert(n.clone());
                }
                NameKind::Tag => {
                    tags.insert(n.clone());
                }
            }
        }
        cri::Image {
            id: self.content.id.clone(),
            repo_tags: tags.into_iter().collect(),
            repo_digests: digests.into_iter().collect(),
            size: u64::try_from(self.content.details.size).unwrap_or(0),
            uid: self.content.uid.map(|value| cri::Int64Value { value }),
            username: self.content.username.clone(),
            spec: Some(cri::ImageSpec {
                image: self.content.id.clone(),
                ..Default::default()
            }),
            pinned: self.pinned,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum NameKind {
    /// `sha256:<hex>`: the id reference.
    Id,
    /// `repository@sha256:<hex>`.
    Digest,
    /// `repository:tag`.
    Tag,
}

fn kind_of(name: &str) -> NameKind {
    if is_id(name) {
        NameKind::Id
    } else if name.contains('@') {
        NameKind::Digest
    } else {
        NameKind::Tag
    }
}

fn is_id(name: &str) -> bool {
    name.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The repository of a normalised reference: without its tag and digest.
fn repository(reference: &str) -> &str {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

/// The CRI's user fields from an image config's `User` (`uid`, `name`, `uid:gid`,
/// `name:group`): a numeric user is a uid, anything else a username.
fn user_of(user: &str) -> (Option<i64>, String) {
    let user = user.split(':').next().unwrap_or("");
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

/// The labels of every record a PullImage makes (containerd's CRI mark of its images).
fn managed_labels() -> HashMap<String, String> {
    HashMap::from([(MANAGED_LABEL.to_string(), "managed".to_string())])
}

/// A gRPC `grpc-timeout` value (`<up to 8 digits><H|M|S|m|u|n>`).
pub(crate) fn grpc_timeout(value: &str) -> Option<Duration> {
    // ASCII only: the unit is split off as the last byte (found by fuzz target cri_requests).
    if !value.is_ascii() || value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The credentials of a PullImage request, as berthd's auth stream carries them: username and
/// password, then an identity token, then docker's base64 `auth`, then a registry token
/// (containerd's order). An empty AuthConfig is an anonymous pull.
pub(crate) fn registry_auth(auth: &cri::AuthConfig) -> Result<Option<RegistryAuth>> {
    let secret = if !auth.username.is_empty() {
        RegistrySecret::Basic {
            username: auth.username.clone(),
            password: auth.password.clone(),
        }
    } else if !auth.identity_token.is_empty() {
        RegistrySecret::IdentityToken {
            username: String::new(),
            token: auth.identity_token.clone(),
        }
    } else if !auth.auth.is_empty() {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Error::invalid("auth.auth is not base64 of \"username:password\""))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| Error::invalid("auth.auth is not base64 of \"username:password\""))?;
        RegistrySecret::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }
    } else if !auth.registry_token.is_empty() {
        RegistrySecret::BearerToken(auth.registry_token.clone())
    } else {
        return Ok(None);
    };
    Ok(Some(RegistryAuth {
        host: server_host(&auth.server_address),
        secret,
    }))
}

/// The registry host an AuthConfig's server_address names (`https://host/v1/`, `host:port`),
/// with docker.io's index aliases mapped to the host berthd asks about.
fn server_host(address: &str) -> Option<String> {
    let address = address.trim();
    if address.is_empty() {
        return None;
    }
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    Some(match host {
        "index.docker.io" | "docker.io" | "registry-1.docker.io" => "registry-1.docker.io".into(),
        h => h.to_string(),
    })
}

impl Cri {
    fn registry_options(&self, auth: Option<RegistryAuth>) -> RegistryOptions {
        let dir = &self.settings.config.registry_config_path;
        RegistryOptions {
            // Passed at each pull, and berthd reads the files at each pull: a mirror whose
            // port changed is followed without a restart.
            hosts_dir: (!dir.as_os_str().is_empty()).then(|| dir.display().to_string()),
            auth,
            ..RegistryOptions::default()
        }
    }

    /// What the content of the record `name` (with `target`) says, cached per target digest.
    async fn content(&self, name: &str, target: &Descriptor) -> Result<Arc<Content>> {
        if let Some(c) = cache()
            .lock()
            .map_err(|_| Error::internal("image cache poisoned"))?
            .get(&target.digest)
        {
            return Ok(c.clone());
        }
        let d = self
            .client
            .images()
            .inspect(name)
            .await
            .map_err(Error::from)?;
        if d.image.target.digest != target.digest {
            return Err(Error::unavailable(format!(
                "image {name} changed while it was read; try again"
            )));
        }
        let user = d
            .config
            .config()
            .as_ref()
            .and_then(|c| c.user().clone())
            .unwrap_or_default();
        let (uid, username) = user_of(&user);
        let content = Arc::new(Content {
            id: d.manifest.config().digest().to_string(),
            uid,
            username,
            details: d,
        });
        cache()
            .lock()
            .map_err(|_| Error::internal("image cache poisoned"))?
            .insert(target.digest.clone(), content.clone());
        Ok(content)
    }

    /// What CreateContainer needs of the image `reference` names (as `Images::inspect` finds
    /// it): the record read now, the manifest and config from the cache when its target was
    /// seen before (one Get instead of a Get and two content reads and their parsing).
    pub(crate) async fn image_details(
        &self,
        reference: &str,
    ) -> Result<berth::images::ImageDetails> {
        let image = self
            .client
            .images()
            .get(reference)
            .await
            .map_err(Error::from)?;
        let content = self.content(&image.name, &image.target).await?;
        let mut details = content.details.clone();
        details.image = image;
        Ok(details)
    }

    /// Every image of the namespace, grouped by id. A record whose content cannot be read
    /// (a pull under way, an image of another platform) is left out, as containerd does.
    async fn all_images(&self) -> Result<BTreeMap<String, Grouped>> {
        let records = self.client.images().list(&[]).await.map_err(Error::from)?;
        let mut out: BTreeMap<String, Grouped> = BTreeMap::new();
        for r in records {
            let content = match self.content(&r.name, &r.target).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(image = %r.name, error = %e, "left out of the CRI's images");
                    continue;
                }
            };
            let pinned = r.labels.get(PINNED_LABEL).is_some_and(|v| v == "pinned");
            let g = out.entry(content.id.clone()).or_insert_with(|| Grouped {
                content: content.clone(),
                names: Vec::new(),
                pinned: false,
            });
            g.names.push(r.name);
            g.pinned |= pinned;
        }
        Ok(out)
    }

    /// The id a CRI image reference names: a record's name as given or normalised, the
    /// `sha256:` id, or a bare id (or unique id prefix, as docker accepts). None: no such image.
    async fn resolve(
        &self,
        reference: &str,
    ) -> Result<Option<(String, BTreeMap<String, Grouped>)>> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(Error::invalid("an image reference is required"));
        }
        let all = self.all_images().await?;
        let normalized = berth::images::normalize(reference);
        let by_name = all
            .iter()
            .find(|(_, g)| g.names.iter().any(|n| n == reference || *n == normalized));
        if let Some((id, _)) = by_name {
            return Ok(Some((id.clone(), all)));
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let ids: Vec<&String> = all
                .keys()
                .filter(|id| {
                    id.strip_prefix("sha256:")
                        .is_some_and(|h| h.starts_with(hex))
                })
                .collect();
            match ids.as_slice() {
                [one] => {
                    let id = (*one).clone();
                    return Ok(Some((id, all)));
                }
                [] => {}
                _ => {
                    return Err(Error::precondition(format!(
                        "image id prefix {reference:?} names more than one image"
                    )))
                }
            }
        }
        Ok(None)
    }

    pub(crate) async fn list_images(
        &self,
        filter: Option<cri::ImageFilter>,
    ) -> Result<Vec<cri::Image>> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        match wanted {
            Some(reference) => Ok(self
                .resolve(&reference)
                .await?
                .and_then(|(id, all)| all.get(&id).map(Grouped::to_cri))
                .into_iter()
                .collect()),
            None => Ok(self
                .all_images()
                .await?
                .values()
                .map(Grouped::to_cri)
                .collect()),
        }
    }

    pub(crate) async fn image_status(
        &self,
        spec: Option<cri::ImageSpec>,
        verbose: bool,
    ) -> Result<cri::ImageStatusResponse> {
        let reference = spec.map(|s| s.image).unwrap_or_default();
        let Some((id, all)) = self.resolve(&reference).await? else {
            // The CRI's "not present": no image, no error.
            return Ok(cri::ImageStatusResponse::default());
        };
        let Some(g) = all.get(&id) else {
            return Ok(cri::ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if verbose {
            let spec = serde_json::to_value(&g.content.details.config)
                .map_err(|e| Error::internal(format!("image config of {id}: {e}")))?;
            let detail = serde_json::json!({
                "chainID": g.content.details.chain_id,
                "imageSpec": spec,
                "references": g.names,
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(cri::ImageStatusResponse {
            image: Some(g.to_cri()),
            info,
        })
    }

    /// Pull through berthd's Transfer service, then record the digest and id references.
    /// Past `deadline` the transfer is cancelled (berthd records nothing) and the answer is
    /// DeadlineExceeded. Runs detached from the RPC so a dropped call cannot stop it between
    /// the transfer and its references: it ends on its own deadline.
    pub(crate) async fn pull_image(
        self: &Arc<Self>,
        spec: Option<cri::ImageSpec>,
        auth: Option<cri::AuthConfig>,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<String> {
        let reference = spec.map(|s| s.image).unwrap_or_default();
        let reference = reference.trim().to_string();
        if reference.is_empty() {
            return Err(Error::invalid("PullImage needs an image reference"));
        }
        let auth = match &auth {
            Some(a) => registry_auth(a)?,
            None => None,
        };
        let this = self.clone();
        let late = Error::deadline_exceeded(format!(
            "pulling {reference}: the request's deadline passed; nothing was recorded"
        ));
        let task = tokio::spawn(async move { this.pull_detached(reference, auth, deadline).await });
        let joined = match deadline {
            // tonic's own grpc-timeout guard answers Cancelled once the deadline passes; the
            // CRI's answer is DeadlineExceeded, so it is given a little before (the pull task
            // still stops itself at the deadline).
            Some((start, timeout)) => {
                let answer_by = start + timeout - (timeout / 2).min(ANSWER_MARGIN);
                tokio::time::timeout_at(answer_by, task)
                    .await
                    .map_err(|_| late)?
            }
            None => task.await,
        };
        joined.map_err(|e| Error::internal(format!("pull task: {e}")))?
    }

    async fn pull_detached(
        self: &Arc<Self>,
        reference: String,
        auth: Option<RegistryAuth>,
        deadline: Option<(Instant, Duration)>,
    ) -> Result<String> {
        let deadline = deadline.map(|(start, timeout)| start + timeout);
        let name = berth::images::normalize(&reference);
        let images = self.client.images();
        let opts = self.registry_options(auth);
        let late = || {
            Error::deadline_exceeded(format!(
                "pulling {reference}: the request's deadline passed; nothing was recorded"
            ))
        };
        // What the name pointed at before: a re-pull that finds the same target changed no
        // image, and starts no walk of the image filesystems on a pod start's path.
        let before = images.get_exact(&name).await.ok().map(|r| r.target.digest);
        let pull = async {
            let transfer = images
                .pull_labelled(&name, &opts, managed_labels())
                .await
                .map_err(Error::from)?;
            let abort = transfer.abort_handle();
            Ok::<_, Error>((abort, transfer.finish()))
        };
        let (abort, finish) = match deadline {
            Some(d) => tokio::time::timeout_at(d, pull)
                .await
                .map_err(|_| late())??,
            None => pull.await?,
        };
        let result = match deadline {
            Some(d) => match tokio::time::timeout_at(d, finish).await {
                Ok(r) => r,
                Err(_) => {
                    abort.abort();
                    tracing::info!(image = %name, "deadline passed: the pull was cancelled");
                    return Err(late());
                }
            },
            None => finish.await,
        };
        result.map_err(|e| Error::from(e).context(format_args!("pull image {reference:?}")))?;
        let record = images.get_exact(&name).await.map_err(Error::from)?;
        let content = self.content(&record.name, &record.target).await?;
        let mut labels = record.labels.clone();
        labels.extend(managed_labels());
        let digest_ref = format!("{}@{}", repository(&name), record.target.digest);
        // As containerd's CRI: a name already on this target with these labels is left alone,
        // so a re-pull (a kubelet's `Always`, every `crictl run`) adds no write to the pull's.
        let unchanged =
            |c: &berth::images::ImageInfo| c.target == record.target && c.labels == labels;
        for n in [name.as_str(), digest_ref.as_str(), content.id.as_str()] {
            let skip = if n == record.name {
                unchanged(&record)
            } else {
                match images.get_exact(n).await {
                    Ok(found) => unchanged(&found),
                    Err(e) if e.code() == tonic::Code::NotFound => false,
                    Err(e) => return Err(e.into()),
                }
            };
            if skip {
                continue;
            }
            images
                .put(n, &record.target, &labels)
                .await
                .map_err(Error::from)?;
        }
        tracing::info!(image = %name, id = %content.id, "pulled");
        if before.as_ref() != Some(&record.target.digest) {
            self.image_fs_changed();
        }
        Ok(content.id.clone())
    }

    /// Remove every record of the image `reference` names (all its tags, digests and its id
    /// reference). A missing image is no error.
    pub(crate) async fn remove_image(self: &Arc<Self>, spec: Option<cri::ImageSpec>) -> Result<()> {
        let reference = spec.map(|s| s.image).unwrap_or_default();
        let Some((id, all)) = self.resolve(&reference).await? else {
            return Ok(());
        };
        let Some(g) = all.get(&id) else {
            return Ok(());
        };
        let images = self.client.images();
        // The id reference last: until then a retry still finds the image by its id.
        let mut names = g.names.clone();
        names.sort_by_key(|n| is_id(n));
        for n in &names {
            match images.delete_exact(n, false).await {
                Ok(()) => {}
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(Error::from(e).context(format_args!("remove image {n}"))),
            }
        }
        tracing::info!(image = %reference, id = %id, removed = names.len(), "removed");
        self.image_fs_changed();
        Ok(())
    }

    /// The snapshotter's filesystem (image layers and container layers alike, as with
    /// containerd's overlayfs) and the content store's: bytes and inodes used under each, from
    /// the last walk while it is fresh (see image_fs.rs).
    pub(crate) async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse> {
        let root = self.settings.root.clone();
        self.image_fs
            .get(|| crate::blocking(move || crate::image_fs::walk(&root)))
            .await
    }

    /// The CRI changed the images (a pull that moved a name to new content, a removal): the
    /// next walk starts now, and ImageFsInfo waits for it.
    fn image_fs_changed(self: &Arc<Self>) {
        self.image_fs.changed();
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.image_fs_info().await {
                tracing::debug!(error = %e, "walking the image filesystems");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_become_uid_or_username_as_the_cri_says() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1002"), (Some(1002), String::new()));
        assert_eq!(user_of("1003:1004"), (Some(1003), String::new()));
        assert_eq!(user_of("www-data"), (None, "www-data".to_string()));
        assert_eq!(user_of("www-data:1004"), (None, "www-data".to_string()));
    }

    #[test]
    fn names_are_tags_digests_or_the_id() {
        let id = format!("sha256:{}", "a".repeat(64));
        assert_eq!(kind_of(&id), NameKind::Id);
        assert_eq!(kind_of(&format!("gcr.io/x/y@{id}")), NameKind::Digest);
        assert_eq!(kind_of("gcr.io/x/y:1"), NameKind::Tag);
        assert_eq!(kind_of("sha256:abc"), NameKind::Tag);
        assert_eq!(repository("localhost:5000/a/b:v1"), "localhost:5000/a/b");
        assert_eq!(repository("localhost:5000/a/b"), "localhost:5000/a/b");
        assert_eq!(repository(&format!("gcr.io/x/y@{id}")), "gcr.io/x/y");
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            grpc_timeout("999999u"),
            Some(Duration::from_micros(999_999))
        );
        assert_eq!(grpc_timeout("5x"), None);
        assert_eq!(grpc_timeout("m"), None);
        assert_eq!(grpc_timeout("1234567890S"), None);
        // A unit that is not one byte is refused, not split inside a character.
        assert_eq!(grpc_timeout("1\u{5c0}"), None);
        assert_eq!(grpc_timeout("\n\u{1}C_W\u{5c0}"), None);
    }

    #[test]
    fn auth_configs_map_in_containerds_order_and_never_print_secrets() {
        use base64::Engine;
        let basic = cri::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("me:s3cret-pw"),
            server_address: "https://127.0.0.1:5000/v2/".into(),
            ..Default::default()
        };
        let a = registry_auth(&basic).unwrap().unwrap();
        assert_eq!(a.host.as_deref(), Some("127.0.0.1:5000"));
        assert!(
            matches!(&a.secret, RegistrySecret::Basic { username, password }
            if username == "me" && password == "s3cret-pw")
        );
        assert!(!format!("{a:?}").contains("s3cret-pw"));
        let token = cri::AuthConfig {
            identity_token: "tok".into(),
            ..Default::default()
        };
        let t = registry_auth(&token).unwrap().unwrap();
        assert!(matches!(t.secret, RegistrySecret::IdentityToken { .. }));
        assert_eq!(t.host, None);
        assert!(registry_auth(&cri::AuthConfig::default())
            .unwrap()
            .is_none());
        let bad = cri::AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert_eq!(
            registry_auth(&bad).unwrap_err().kind(),
            berth_errdefs::Kind::InvalidArgument
        );
    }
}
