//! A snapshotter reached over a unix socket that speaks containerd's Snapshots API (containerd's
//! proxy plugins: `[proxy_plugins.NAME] type = "snapshot"`). Another berthd can be one.
//!
//! The `Snapshotter` trait is synchronous. Each proxy owns a small runtime on a thread of its own
//! that does all its I/O; a trait call hands its request to that thread and waits on a plain
//! channel for the answer, so calling it can never panic whatever thread it is called from (no
//! `Handle::block_on` on a caller's runtime), and a hung remote costs the caller at most the
//! plugin's `timeout_ms`: the call then fails with DeadlineExceeded and the request is dropped.

use crate::fsutil::require_absolute;
use crate::snapshots::from_api_mounts;
use berth_api::containerd::services::snapshots::v1::{
    self as api, snapshots_client::SnapshotsClient,
};
use berth_errdefs::Kind as ErrorKind;
use berth_snapshotter::{Error, Info, Kind, Mount, Result, Snapshotter, Usage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tonic::transport::{Channel, Endpoint};

/// `[proxy_plugins.NAME]`: one proxy plugin of containerd's config. Only snapshotters exist.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyPlugin {
    /// Only "snapshot" is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The plugin's unix socket.
    pub address: PathBuf,
    /// The snapshotter name to ask the remote for (berth extension; default: the plugin's name).
    #[serde(default)]
    pub snapshotter: Option<String>,
    /// The bound on each call to the plugin, connecting included (berth extension): a hung plugin
    /// fails the call with DeadlineExceeded instead of holding its caller.
    #[serde(default = "default_proxy_timeout_ms")]
    pub timeout_ms: u64,
    /// Accepted for containerd config compatibility; berth does not use them.
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn default_proxy_timeout_ms() -> u64 {
    30_000
}

impl ProxyPlugin {
    pub(crate) fn validate(&self, name: &str) -> berth_errdefs::Result<()> {
        if self.kind != "snapshot" {
            return Err(berth_errdefs::Error::invalid(format!(
                "proxy_plugins.{name}.type: {:?} is not supported; only \"snapshot\" is",
                self.kind
            )));
        }
        if self.timeout_ms == 0 {
            return Err(berth_errdefs::Error::invalid(format!(
                "proxy_plugins.{name}.timeout_ms must be greater than 0"
            )));
        }
        require_absolute(&format!("proxy_plugins.{name}.address"), &self.address)
    }
}

/// The namespace sent to the remote: berthd has already scoped keys by its own namespaces.
const REMOTE_NAMESPACE: &str = "berth";

/// Snapshots are created on the remote with this gc.root value: this daemon's collector decides
/// their life, so a remote with a collector of its own (another berthd) must keep them. The label
/// is hidden again from what this daemon reports.
const ROOT_LABEL: &str = "containerd.io/gc.root";
const PROXY_ROOT: &str = "held-by-proxy";

fn held(mut labels: HashMap<String, String>) -> HashMap<String, String> {
    labels
        .entry(ROOT_LABEL.to_string())
        .or_insert_with(|| PROXY_ROOT.to_string());
    labels
}

pub struct RemoteSnapshotter {
    /// The name clients use on this daemon.
    name: String,
    /// The name the remote knows it by.
    remote_name: String,
    client: SnapshotsClient<Channel>,
    /// The proxy's own runtime (see the module comment); it stops when `_stop` is dropped.
    runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
    /// The bound on each call, connecting included.
    timeout: Duration,
}

impl RemoteSnapshotter {
    /// Connects lazily: a remote that is not up yet fails its first call, not berthd's start.
    pub fn new(
        name: &str,
        remote_name: &str,
        address: &Path,
        timeout: Duration,
    ) -> Result<RemoteSnapshotter> {
        let (runtime, stop) = spawn_runtime(name)?;
        // The channel's connection task lives on the proxy's runtime, not on the caller's.
        let _entered = runtime.enter();
        let path = address.to_path_buf();
        let channel = Endpoint::from_static("http://localhost").connect_with_connector_lazy(
            tower::service_fn(move |_| {
                let path: PathBuf = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }),
        );
        Ok(RemoteSnapshotter {
            name: name.to_string(),
            remote_name: remote_name.to_string(),
            client: SnapshotsClient::new(channel)
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
            runtime: runtime.clone(),
            _stop: stop,
            timeout,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert(
            berth_api::NAMESPACE_HEADER,
            tonic::metadata::MetadataValue::from_static(REMOTE_NAMESPACE),
        );
        req
    }

    fn call<T, F>(&self, what: &str, f: impl FnOnce(SnapshotsClient<Channel>) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
    {
        let call = f(self.client.clone());
        self.run(
            what,
            async move { call.await.map(tonic::Response::into_inner) },
        )
    }

    /// Run `fut` on the proxy's runtime within the bound and wait for it on this thread.
    fn run<T: Send + 'static>(
        &self,
        what: &str,
        fut: impl Future<Output = std::result::Result<T, tonic::Status>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let bound = self.timeout;
        self.runtime.spawn(async move {
            let _ = tx.send(tokio::time::timeout(bound, fut).await);
        });
        match rx.recv() {
            Ok(Ok(answer)) => answer.map_err(|s| from_status(&self.name, s)),
            Ok(Err(_elapsed)) => Err(Error::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "remote snapshotter {}: no answer to {what} within {bound:?}",
                    self.name
                ),
            )),
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "remote snapshotter {}: its connection thread has stopped",
                    self.name
                ),
            )),
        }
    }
}

/// A current-thread runtime on a thread of its own, running until the returned sender is dropped
/// (the runtime is then dropped on that thread, never inside another runtime).
fn spawn_runtime(name: &str) -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
    let failed = |e: std::io::Error| {
        Error::io(
            format!("remote snapshotter {name}: start its connection thread"),
            e,
        )
    };
    std::thread::Builder::new()
        .name(format!("proxy-{name}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            let _ = handle_tx.send(Ok(rt.handle().clone()));
            rt.block_on(async move {
                let _ = stop_rx.await;
            });
        })
        .map_err(failed)?;
    let handle = handle_rx
        .recv()
        .map_err(|_| failed(std::io::Error::other("the thread ended before it started")))?
        .map_err(failed)?;
    Ok((handle, stop_tx))
}

/// A peer's answer keeps the class it gave, through errdefs' one mapping of gRPC codes.
fn from_status(name: &str, s: tonic::Status) -> Error {
    berth_errdefs::Error::from(s)
        .context(format!("remote snapshotter {name}"))
        .into()
}

fn to_info(mut i: api::Info) -> Info {
    if i.labels.get(ROOT_LABEL).map(String::as_str) == Some(PROXY_ROOT) {
        i.labels.remove(ROOT_LABEL);
    }
    let time = |t: Option<prost_types::Timestamp>| {
        t.and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    Info {
        name: i.name,
        parent: i.parent,
        kind: Kind::from_wire(i.kind).unwrap_or(Kind::Active),
        labels: i.labels,
        created: time(i.created_at),
        updated: time(i.updated_at),
    }
}

fn from_info(i: Info) -> api::Info {
    api::Info {
        name: i.name,
        parent: i.parent,
        kind: i.kind as i32,
        created_at: Some(i.created.into()),
        updated_at: Some(i.updated.into()),
        labels: i.labels,
    }
}

impl Snapshotter for RemoteSnapshotter {
    fn name(&self) -> &str {
        &self.name
    }

    fn stat(&self, key: &str) -> Result<Info> {
        let req = self.request(api::StatSnapshotRequest {
            snapshotter: self.remote_name.clone(),
            key: key.into(),
        });
        let info = self
            .call("stat", |mut c| async move { c.stat(req).await })?
            .info;
        info.map(to_info).ok_or_else(|| {
            Error::invalid(format!(
                "remote snapshotter {}: empty Stat answer",
                self.name
            ))
        })
    }

    fn update(&self, mut info: Info, fieldpaths: &[String]) -> Result<Info> {
        // A full label replacement must not drop the hold.
        if fieldpaths.is_empty() || fieldpaths.iter().any(|p| p == "labels") {
            info.labels = held(info.labels);
        }
        let req = self.request(api::UpdateSnapshotRequest {
            snapshotter: self.remote_name.clone(),
            info: Some(from_info(info)),
            update_mask: Some(prost_types::FieldMask {
                paths: fieldpaths.to_vec(),
            }),
        });
        let info = self
            .call("update", |mut c| async move { c.update(req).await })?
            .info;
        info.map(to_info).ok_or_else(|| {
            Error::invalid(format!(
                "remote snapshotter {}: empty Update answer",
                self.name
            ))
        })
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let req = self.request(api::UsageRequest {
            snapshotter: self.remote_name.clone(),
            key: key.into(),
        });
        let u = self.call("usage", |mut c| async move { c.usage(req).await })?;
        Ok(Usage {
            size: u.size,
            inodes: u.inodes,
        })
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let req = self.request(api::MountsRequest {
            snapshotter: self.remote_name.clone(),
            key: key.into(),
        });
        Ok(from_api_mounts(
            self.call("mounts", |mut c| async move { c.mounts(req).await })?
                .mounts,
        ))
    }

    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let req = self.request(api::PrepareSnapshotRequest {
            snapshotter: self.remote_name.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: held(labels),
        });
        Ok(from_api_mounts(
            self.call("prepare", |mut c| async move { c.prepare(req).await })?
                .mounts,
        ))
    }

    fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>> {
        let req = self.request(api::ViewSnapshotRequest {
            snapshotter: self.remote_name.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: held(labels),
        });
        Ok(from_api_mounts(
            self.call("view", |mut c| async move { c.view(req).await })?
                .mounts,
        ))
    }

    fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        let req = self.request(api::CommitSnapshotRequest {
            snapshotter: self.remote_name.clone(),
            name: name.into(),
            key: key.into(),
            labels: held(labels),
            // berthd checked a requested parent against the active snapshot's own already.
            parent: String::new(),
        });
        self.call("commit", |mut c| async move { c.commit(req).await })
    }

    fn remove(&self, key: &str) -> Result<()> {
        let req = self.request(api::RemoveSnapshotRequest {
            snapshotter: self.remote_name.clone(),
            key: key.into(),
        });
        self.call("remove", |mut c| async move { c.remove(req).await })
    }

    fn walk(&self, f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        let req = self.request(api::ListSnapshotsRequest {
            snapshotter: self.remote_name.clone(),
            filters: vec![],
        });
        let mut client = self.client.clone();
        let infos = self.run("list", async move {
            let mut stream = client.list(req).await?.into_inner();
            let mut infos = Vec::new();
            while let Some(msg) = stream.message().await? {
                infos.extend(msg.info);
            }
            Ok(infos)
        })?;
        for info in infos {
            f(&to_info(info))?;
        }
        Ok(())
    }

    fn cleanup(&self) -> Result<()> {
        let req = self.request(api::CleanupRequest {
            snapshotter: self.remote_name.clone(),
        });
        self.call("cleanup", |mut c| async move { c.cleanup(req).await })
    }

    fn active_dir(&self, key: &str) -> Result<PathBuf> {
        Err(Error::precondition(format!(
            "snapshot {key:?} lives in remote snapshotter {}: no local directory",
            self.name
        )))
    }
}
