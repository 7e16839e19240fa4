//! Containers: records made from an image (spec from [`crate::spec`], rootfs snapshot prepared
//! from the image's chain ID under a lease until the record holds it), found by id, name or id
//! prefix; names unique per namespace (a label, checked before creation and again after, when
//! the later of two racing creates withdraws); removal with the
//! snapshot.

use crate::api::services::containers::v1::containers_client::ContainersClient;
use crate::api::services::containers::v1::{
    container::Runtime, Container, CreateContainerRequest, DeleteContainerRequest,
    GetContainerRequest, ListContainersRequest, UpdateContainerRequest,
};
use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use crate::names::NAME_LABEL;
use crate::spec::{
    ContainerConfig, Network, NETWORKS_LABEL, NETWORK_LABEL, PORTS_LABEL, STOP_SIGNAL_LABEL,
    STOP_TIMEOUT_LABEL,
};
use crate::{Client, Error, Result};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tonic::Code;

/// The snapshotter berth prepares rootfs snapshots with.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// The runtime berthd runs tasks with.
pub const DEFAULT_RUNTIME: &str = "io.containerd.runc.v2";
/// containerd's type URL for a JSON OCI runtime spec (not a protobuf message).
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A container record.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    /// The name label, or the id's short form for containers made by other clients.
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
    /// The OCI runtime spec as stored (JSON).
    pub spec: Option<serde_json::Value>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub runtime: String,
    /// The record's extensions (containerd's `Container.extensions`): typed values other
    /// clients keep beside the spec, e.g. the CRI's pod and container metadata.
    pub extensions: HashMap<String, prost_types::Any>,
    /// The sandbox (pod) the container belongs to (containerd's `Container.sandbox`), or empty.
    pub sandbox: String,
}

/// What listings need of a spec; everything else in it is skipped unparsed.
#[derive(serde::Deserialize, Default)]
struct BriefSpec {
    #[serde(default)]
    process: Option<BriefProcess>,
}

#[derive(serde::Deserialize, Default)]
struct BriefProcess {
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    terminal: bool,
}

impl ContainerInfo {
    /// For listings: the spec is cut down to `process.args` and `process.terminal`. Building
    /// a JSON tree of every container's whole spec (about 10 KB each) was most of what a
    /// `ps` of 1,000 containers cost.
    fn from_api_brief(mut c: Container) -> ContainerInfo {
        let spec = c.spec.take().map(|s| {
            let p = serde_json::from_slice::<BriefSpec>(&s.value)
                .unwrap_or_default()
                .process
                .unwrap_or_default();
            serde_json::json!({"process": {"args": p.args, "terminal": p.terminal}})
        });
        ContainerInfo {
            spec,
            ..ContainerInfo::from_api(c)
        }
    }

    fn from_api(c: Container) -> ContainerInfo {
        let name = c
            .labels
            .get(NAME_LABEL)
            .cloned()
            .unwrap_or_else(|| crate::names::short_id(&c.id).to_string());
        ContainerInfo {
            spec: c
                .spec
                .as_ref()
                .and_then(|s| serde_json::from_slice(&s.value).ok()),
            name,
            id: c.id,
            image: c.image,
            labels: c.labels,
            created_at: c.created_at.and_then(crate::images::timestamp),
            updated_at: c.updated_at.and_then(crate::images::timestamp),
            snapshotter: c.snapshotter,
            snapshot_key: c.snapshot_key,
            runtime: c.runtime.map(|r| r.name).unwrap_or_default(),
            extensions: c.extensions,
            sandbox: c.sandbox,
        }
    }

    /// The signal `stop` sends first (docker's default SIGTERM).
    pub fn stop_signal(&self) -> &str {
        self.labels
            .get(STOP_SIGNAL_LABEL)
            .map_or("SIGTERM", String::as_str)
    }

    /// How long `stop` waits before SIGKILL, if the container says.
    pub fn stop_timeout(&self) -> Option<Duration> {
        self.labels
            .get(STOP_TIMEOUT_LABEL)
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
    }

    /// The process spec of the container's init process, for execs to start from.
    pub fn process_spec(&self) -> Option<&serde_json::Value> {
        self.spec.as_ref().map(|s| &s["process"])
    }

    /// Whether the container's init process gets a terminal (`-t`).
    pub fn terminal(&self) -> bool {
        self.process_spec()
            .and_then(|p| p["terminal"].as_bool())
            .unwrap_or(false)
    }
}

/// A record for [`Containers::create_record`].
#[derive(Debug, Clone, Default)]
pub struct NewContainer {
    pub id: String,
    /// The image name recorded (may be empty: a pod sandbox has none).
    pub image: String,
    /// The chain ID the rootfs snapshot (keyed by `id`) is prepared from; none: no rootfs.
    pub snapshot_parent: Option<String>,
    /// Labels of that snapshot when it is prepared (e.g. containerd's idmap labels).
    pub snapshot_labels: HashMap<String, String>,
    /// The OCI runtime spec, stored as JSON.
    pub spec: serde_json::Value,
    pub labels: HashMap<String, String>,
    pub extensions: HashMap<String, prost_types::Any>,
    /// The sandbox (pod) id the record belongs to, or empty.
    pub sandbox: String,
    /// The runtime's options for the container's tasks (`containerd.runc.v1.Options`), if any.
    pub runtime_options: Option<prost_types::Any>,
}

/// Label filter for one name, in containerd's filter language.
fn name_filter(name: &str) -> String {
    let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
    format!("labels.\"{NAME_LABEL}\"==\"{escaped}\"")
}

/// The containers of the client's namespace.
pub struct Containers {
    client: Client,
}

impl Containers {
    pub(crate) fn new(client: Client) -> Containers {
        Containers { client }
    }

    fn api(&self) -> ContainersClient<tonic::transport::Channel> {
        ContainersClient::new(self.client.channel.clone())
            .max_decoding_message_size(crate::MAX_MESSAGE_SIZE)
    }

    /// Every container matching any of `filters` (none: all).
    pub async fn list(&self, filters: &[String]) -> Result<Vec<ContainerInfo>> {
        self.list_as(filters, ContainerInfo::from_api).await
    }

    /// Like [`Containers::list`], for listings: each [`ContainerInfo::spec`] holds only
    /// `process.args` and `process.terminal` (enough for `ps`, its filters and statuses).
    pub async fn list_brief(&self, filters: &[String]) -> Result<Vec<ContainerInfo>> {
        self.list_as(filters, ContainerInfo::from_api_brief).await
    }

    async fn list_as(
        &self,
        filters: &[String],
        read: fn(Container) -> ContainerInfo,
    ) -> Result<Vec<ContainerInfo>> {
        let req = ListContainersRequest {
            filters: filters.to_vec(),
        };
        Ok(self
            .api()
            .list(self.client.request(req))
            .await?
            .into_inner()
            .containers
            .into_iter()
            .map(read)
            .collect())
    }

    /// The container with exactly this id.
    pub async fn get_by_id(&self, id: &str) -> Result<ContainerInfo> {
        let req = GetContainerRequest { id: id.to_string() };
        let c = self
            .api()
            .get(self.client.request(req))
            .await?
            .into_inner()
            .container
            .ok_or_else(|| Error::not_found(format!("no such container: {id}")))?;
        Ok(ContainerInfo::from_api(c))
    }

    /// Find a container as docker does: full id, name, then an id prefix naming one container.
    pub async fn find(&self, reference: &str) -> Result<ContainerInfo> {
        if reference.is_empty() {
            return Err(Error::invalid("empty container name or id"));
        }
        match self.get_by_id(reference).await {
            Err(e) if matches!(e.code(), Code::NotFound | Code::InvalidArgument) => {}
            other => return other,
        }
        let mut named = self.list(&[name_filter(reference)]).await?;
        if let Some(c) = named.pop() {
            return Ok(c);
        }
        let all = self.list(&[]).await?;
        let mut matches = all.into_iter().filter(|c| c.id.starts_with(reference));
        match (matches.next(), matches.next()) {
            (Some(c), None) => Ok(c),
            (Some(_), Some(_)) => Err(Error::local(
                Code::FailedPrecondition,
                format!("multiple containers match the id prefix {reference:?}: give more of it"),
            )),
            _ => Err(Error::not_found(format!("no such container: {reference}"))),
        }
    }

    /// docker's `rename`: the name label moved to `new`, refused when another container holds
    /// it; a second rename racing to one name loses as a second create would.
    pub async fn rename(&self, container: &ContainerInfo, new: &str) -> Result<()> {
        if !crate::names::valid_name(new) {
            return Err(Error::invalid(format!(
                "invalid container name {new:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        if container.name == new {
            return Err(Error::invalid(format!(
                "renaming a container with the same name as its current name: {new}"
            )));
        }
        let in_use = |holder: &str| {
            Error::local(
                Code::AlreadyExists,
                format!(
                    "the container name {new:?} is already in use by container {holder}: remove (berth rm {new}) or rename that container to reuse the name"
                ),
            )
        };
        if let Some(holder) = self.by_name(new).await? {
            return Err(in_use(&holder.id));
        }
        let mut labels = container.labels.clone();
        labels.insert(NAME_LABEL.to_string(), new.to_string());
        self.set_labels(&container.id, labels).await?;
        let holders = self.list(&[name_filter(new)]).await?;
        if let Some(first) = holders
            .iter()
            .filter(|h| h.id != container.id)
            .min_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)))
        {
            self.set_labels(&container.id, container.labels.clone())
                .await?;
            return Err(in_use(&first.id));
        }
        Ok(())
    }

    /// The container holding `name`, if any.
    pub async fn by_name(&self, name: &str) -> Result<Option<ContainerInfo>> {
        Ok(self.list(&[name_filter(name)]).await?.pop())
    }

    /// Create a container from `image` (a name, normalised name or id prefix): the spec from
    /// the image's config and `config`, the rootfs snapshot prepared from the image's layers.
    /// `name` defaults to a docker-style generated one.
    pub async fn create(
        &self,
        image: &str,
        name: Option<&str>,
        config: &ContainerConfig,
    ) -> Result<ContainerInfo> {
        let details = match self.client.images().inspect(image).await {
            Err(e) if e.code() == Code::NotFound => {
                return Err(Error::not_found(format!(
                    "unable to find image {image:?} in namespace {:?}: pull it first (berth pull {image}) or import it",
                    self.client.namespace
                )))
            }
            other => other?,
        };
        let name = match name {
            Some(n) => {
                if !crate::names::valid_name(n) {
                    return Err(Error::invalid(format!(
                        "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                n.to_string()
            }
            None => crate::names::generate_name(),
        };
        if let Some(holder) = self.by_name(&name).await? {
            return Err(Error::local(
                Code::AlreadyExists,
                format!(
                    "the container name {name:?} is already in use by container {}: remove (berth rm {name}) or rename that container to reuse the name",
                    holder.id
                ),
            ));
        }
        let mut config = std::borrow::Cow::Borrowed(config);
        if !config.userns_host && config.remap.is_none() {
            if let Some(remap) = self.client.userns_remap().await? {
                config.to_mut().remap = Some(remap);
            }
        }
        // Before volumes are made, so a network that is not there leaves nothing behind.
        if let Some(networks) = self.resolve_networks(&config).await? {
            let c = config.to_mut();
            c.network = Network::Named;
            c.networks = networks;
        }
        let config = config.as_ref();
        let snapshotter = DEFAULT_SNAPSHOTTER;
        let user = match config.user.as_deref() {
            Some(u) if crate::user::needs_image_files(u) => {
                let (passwd, group) =
                    crate::user::read_image_files(&self.client, snapshotter, &details.chain_id)
                        .await?;
                crate::user::resolve(u, passwd.as_deref(), group.as_deref())?
            }
            Some(u) => crate::user::resolve(u, None, None)?,
            None => match details
                .config
                .config()
                .as_ref()
                .and_then(|c| c.user().clone())
            {
                Some(u) if !u.is_empty() => {
                    let (passwd, group) =
                        crate::user::read_image_files(&self.client, snapshotter, &details.chain_id)
                            .await?;
                    crate::user::resolve(&u, passwd.as_deref(), group.as_deref())?
                }
                _ => crate::user::ResolvedUser::default(),
            },
        };
        // Volumes exist (made when absent, filled from the image when empty) before the
        // container names them; anonymous ones made here go again if the create fails.
        let volumes = self
            .client
            .resolve_volumes(
                &config.mounts,
                snapshotter,
                &details.chain_id,
                config.remap.as_ref(),
            )
            .await?;
        let result = self
            .create_with(&details, name, config, &user, &volumes)
            .await;
        if result.is_err() {
            for n in &volumes.made_anonymous {
                let _ = self.client.volumes().remove(n).await;
            }
        }
        result
    }

    /// The networks a container of `config` joins, when it joins any: the daemon's default
    /// network for [`Network::Default`] (berthd makes it on first use), else the names given,
    /// each checked to exist before anything is created, as docker does (the daemon would only
    /// notice when the task starts, leaving a container behind).
    async fn resolve_networks(&self, config: &ContainerConfig) -> Result<Option<Vec<String>>> {
        const WITHOUT: &str = "--network none runs a container without a network";
        match config.network {
            Network::None | Network::Host => Ok(None),
            Network::Named if config.networks.is_empty() => {
                Err(Error::invalid("a named network mode needs a network name"))
            }
            Network::Default => {
                let known = self
                    .client
                    .networks()
                    .list()
                    .await
                    .map_err(|e| Error::local(e.code(), format!("{e} ({WITHOUT})")))?;
                match known.into_iter().find(|n| n.is_default) {
                    Some(n) => Ok(Some(vec![n.name])),
                    None => Err(Error::local(
                        Code::FailedPrecondition,
                        format!("berthd has no default network ({WITHOUT})"),
                    )),
                }
            }
            Network::Named => {
                let known = self.client.networks().list().await?;
                match config
                    .networks
                    .iter()
                    .find(|n| !known.iter().any(|k| &k.name == *n))
                {
                    Some(missing) => Err(Error::not_found(format!(
                        "network {missing} not found (berth network ls lists them)"
                    ))),
                    None => Ok(Some(config.networks.clone())),
                }
            }
        }
    }

    async fn create_with(
        &self,
        details: &crate::images::ImageDetails,
        name: String,
        config: &ContainerConfig,
        user: &crate::user::ResolvedUser,
        volumes: &crate::volumes::ResolvedVolumes,
    ) -> Result<ContainerInfo> {
        let snapshotter = DEFAULT_SNAPSHOTTER;
        let resolved;
        let config = if volumes.names.is_empty() {
            config
        } else {
            let mut c = config.clone();
            c.mounts = volumes.mounts.clone();
            resolved = c;
            &resolved
        };
        let id = crate::names::new_id();
        let spec =
            crate::spec::generate(&self.client.namespace, &id, &details.config, config, user)?;
        let spec_json = serde_json::to_vec(&spec)
            .map_err(|e| Error::invalid(format!("encode the runtime spec: {e}")))?;

        let mut labels = config.labels.clone();
        labels.insert(NAME_LABEL.to_string(), name.clone());
        if !volumes.names.is_empty() {
            let names = serde_json::to_string(&volumes.names)
                .map_err(|e| Error::invalid(format!("encode the volumes: {e}")))?;
            labels.insert(crate::volumes::VOLUMES_LABEL.to_string(), names);
        }
        let log_path = crate::logs::log_path(&self.client.namespace, &id);
        if labels.contains_key(crate::logs::RESTART_POLICY_LABEL) {
            // A task the restart monitor creates logs to the same file.
            let uri = crate::logs::log_uri(&log_path, &labels)
                .map_err(|e| Error::invalid(format!("log directory: {e}")))?;
            labels.insert(crate::logs::RESTART_LOG_URI_LABEL.to_string(), uri);
            if config.tty {
                labels.insert(
                    crate::logs::RESTART_STDIN_LABEL.to_string(),
                    crate::attach::attach_uri(&log_path),
                );
            }
        }
        labels.insert(
            crate::logs::LOG_PATH_LABEL.to_string(),
            log_path.to_string_lossy().into_owned(),
        );
        labels.insert(
            NETWORK_LABEL.to_string(),
            match config.network {
                Network::Named => config.networks.join(","),
                other => other.as_str().to_string(),
            },
        );
        match config.network {
            // `create` resolved the default network and checked the names.
            Network::Named => {
                let names = serde_json::to_string(&config.networks)
                    .map_err(|e| Error::invalid(format!("encode the networks: {e}")))?;
                labels.insert(NETWORKS_LABEL.to_string(), names);
                if !config.ports.is_empty() {
                    let ports = serde_json::to_string(&config.ports)
                        .map_err(|e| Error::invalid(format!("encode the ports: {e}")))?;
                    labels.insert(PORTS_LABEL.to_string(), ports);
                }
            }
            _ if !config.ports.is_empty() => {
                return Err(Error::invalid(format!(
                    "ports are published on a network, not with --network {}: leave --network out (the default network) or name one",
                    config.network.as_str()
                )))
            }
            _ => {}
        }
        let image_stop = details
            .config
            .config()
            .as_ref()
            .and_then(|c| c.stop_signal().clone());
        if let Some(sig) = config.stop_signal.clone().or(image_stop) {
            labels.insert(STOP_SIGNAL_LABEL.to_string(), sig);
        }
        if let Some(t) = config.stop_timeout {
            labels.insert(STOP_TIMEOUT_LABEL.to_string(), t.to_string());
        }

        // The lease holds the new snapshot until the container record references it.
        let lease = self
            .client
            .leases()
            .create(Duration::from_secs(600))
            .await?;
        let (parent, snapshot_labels) = match &config.remap {
            None => (details.chain_id.clone(), HashMap::new()),
            Some(remap) => match self
                .client
                .remapped_rootfs(
                    remap,
                    snapshotter,
                    &details.image.name,
                    &details.chain_id,
                    &lease,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = lease.release().await;
                    return Err(e);
                }
            },
        };
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: id.clone(),
            parent,
            labels: snapshot_labels,
        };
        let mut snapshots = SnapshotsClient::new(self.client.channel.clone());
        if let Err(e) = snapshots.prepare(lease.request(prepare)).await {
            let _ = lease.release().await;
            return Err(if e.code() == Code::NotFound {
                Error::not_found(format!(
                    "image {} is not unpacked for snapshotter {snapshotter} (its layers' snapshot {} is missing): import or pull it again",
                    details.image.name, details.chain_id
                ))
            } else {
                e.into()
            });
        }
        let container = Container {
            id: id.clone(),
            labels,
            image: details.image.name.clone(),
            runtime: Some(Runtime {
                name: DEFAULT_RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec_json,
            }),
            snapshotter: snapshotter.to_string(),
            snapshot_key: id.clone(),
            ..Default::default()
        };
        let created = self
            .api()
            .create(self.client.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await;
        let result = match created {
            Ok(r) => r
                .into_inner()
                .container
                .map(ContainerInfo::from_api)
                .ok_or_else(|| Error::local(Code::Internal, "Containers.Create returned nothing")),
            Err(e) => {
                let remove = RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: id.clone(),
                };
                let _ = snapshots.remove(self.client.request(remove)).await;
                Err(e.into())
            }
        };
        let released = lease.release().await;
        let info = result?;
        released?;
        // Two creates of one name can both pass the check above; the record created first
        // (by the daemon's clock, then by id) keeps the name and the other one withdraws.
        let holders = self.list(&[name_filter(&name)]).await?;
        if let Some(first) = holders
            .iter()
            .min_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)))
        {
            if first.id != info.id {
                let _ = self.remove(&info).await;
                return Err(Error::local(
                    Code::AlreadyExists,
                    format!(
                        "the container name {name:?} is already in use by container {}: remove (berth rm {name}) or rename that container to reuse the name",
                        first.id
                    ),
                ));
            }
        }
        Ok(info)
    }

    /// Create a record whose spec the caller built (the CRI builds its own from the pod and
    /// container configs): with `new.snapshot_parent`, a rootfs snapshot keyed by the id is
    /// prepared from that chain ID once the record exists, and the record removed again if the
    /// snapshot cannot be prepared. The record comes first so that it holds the snapshot from
    /// the moment there is one (a record naming a snapshot not there yet holds nothing): no
    /// lease is needed in between, two calls fewer than `create`'s lease, prepare and record.
    /// No name label is added and no name is checked.
    pub async fn create_record(&self, new: NewContainer) -> Result<ContainerInfo> {
        let spec_json = serde_json::to_vec(&new.spec)
            .map_err(|e| Error::invalid(format!("encode the runtime spec: {e}")))?;
        let snapshotter = DEFAULT_SNAPSHOTTER;
        let with_snapshot = new.snapshot_parent.is_some();
        let container = Container {
            id: new.id.clone(),
            labels: new.labels,
            image: new.image,
            runtime: Some(Runtime {
                name: DEFAULT_RUNTIME.to_string(),
                options: new.runtime_options,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec_json,
            }),
            snapshotter: if with_snapshot {
                snapshotter.to_string()
            } else {
                String::new()
            },
            snapshot_key: if with_snapshot {
                new.id.clone()
            } else {
                String::new()
            },
            extensions: new.extensions,
            sandbox: new.sandbox,
            ..Default::default()
        };
        let info = self
            .api()
            .create(self.client.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await?
            .into_inner()
            .container
            .map(ContainerInfo::from_api)
            .ok_or_else(|| Error::local(Code::Internal, "Containers.Create returned nothing"))?;
        if let Some(parent) = new.snapshot_parent {
            let prepare = PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: new.id.clone(),
                parent,
                labels: new.snapshot_labels,
            };
            let mut snapshots = SnapshotsClient::new(self.client.channel.clone());
            if let Err(e) = snapshots.prepare(self.client.request(prepare)).await {
                // The record only: a snapshot that was there under this key is not ours.
                let delete = DeleteContainerRequest {
                    id: info.id.clone(),
                };
                let _ = self.api().delete(self.client.request(delete)).await;
                return Err(e.into());
            }
        }
        Ok(info)
    }

    /// Set (`Some`) or remove (`None`) one extension of a record, leaving the rest alone.
    pub async fn set_extension(
        &self,
        id: &str,
        key: &str,
        value: Option<prost_types::Any>,
    ) -> Result<()> {
        let container = Container {
            id: id.to_string(),
            extensions: value.map(|v| (key.to_string(), v)).into_iter().collect(),
            ..Default::default()
        };
        let req = UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("extensions.{key}")],
            }),
        };
        self.api().update(self.client.request(req)).await?;
        Ok(())
    }

    /// Replace a container's labels.
    pub async fn set_labels(&self, id: &str, labels: HashMap<String, String>) -> Result<()> {
        let container = Container {
            id: id.to_string(),
            labels,
            ..Default::default()
        };
        let req = UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels".to_string()],
            }),
        };
        self.api().update(self.client.request(req)).await?;
        Ok(())
    }

    /// Delete the record and its rootfs snapshot (the task must be gone).
    pub async fn remove(&self, container: &ContainerInfo) -> Result<()> {
        let req = DeleteContainerRequest {
            id: container.id.clone(),
        };
        self.api().delete(self.client.request(req)).await?;
        if !container.snapshot_key.is_empty() {
            let remove = RemoveSnapshotRequest {
                snapshotter: container.snapshotter.clone(),
                key: container.snapshot_key.clone(),
            };
            match SnapshotsClient::new(self.client.channel.clone())
                .remove(self.client.request(remove))
                .await
            {
                Err(e) if e.code() != Code::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

impl Client {
    /// Resolve docker's `user[:group]` against the /etc/passwd and /etc/group of the image
    /// `container` was made from (for an exec's `-u`).
    pub async fn resolve_user(
        &self,
        container: &ContainerInfo,
        user: &str,
    ) -> Result<crate::user::ResolvedUser> {
        if !crate::user::needs_image_files(user) {
            return crate::user::resolve(user, None, None);
        }
        let details = self.images().inspect(&container.image).await?;
        let snapshotter = if container.snapshotter.is_empty() {
            DEFAULT_SNAPSHOTTER
        } else {
            &container.snapshotter
        };
        let (passwd, group) =
            crate::user::read_image_files(self, snapshotter, &details.chain_id).await?;
        crate::user::resolve(user, passwd.as_deref(), group.as_deref())
    }
}
