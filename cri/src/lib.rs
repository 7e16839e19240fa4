//! berth-cri: Kubernetes' Container Runtime Interface (`runtime.v1` RuntimeService and
//! ImageService), served by berthd on its own socket.
//!
//! Like containerd's CRI plugin over containerd's client, this crate reaches berthd only
//! through the `berth` client library, over berthd's own API socket, in one namespace
//! (`[cri] namespace`, `k8s.io`). Pods need no pause image: a netns from berth-net and a holder
//! process of berth's own for the shared IPC/UTS/PID namespaces ([`holder`]).
//! **Invariant:** no berthd types; no CRI type leaves this crate.

pub mod config;
mod container;
mod exec_sync;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod holder;
mod idmap_mount;
mod image_fs;
mod image_volume;
mod images;
mod metrics;
mod pod;
mod pod_shm;
mod service;
mod spec;
mod staging;
mod stats;
mod store;
mod streaming;
mod userns;

pub use config::CriConfig;
pub use exec_sync::MAX_OUTPUT as EXEC_SYNC_MAX_OUTPUT;

use berth_errdefs::{Error, Result};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;

/// The label that says what a CRI record is (containerd's CRI uses the same).
pub const CRI_KIND_LABEL: &str = "io.cri-containerd.kind";
/// [`CRI_KIND_LABEL`]'s value on a pod sandbox's record.
pub const CRI_KIND_SANDBOX: &str = "sandbox";
/// [`CRI_KIND_LABEL`]'s value on a container's record.
pub const CRI_KIND_CONTAINER: &str = "container";

/// What berthd hands the CRI when it starts it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: CriConfig,
    /// berthd's API socket, which the CRI dials as any client does.
    pub api_socket: PathBuf,
    /// berthd's state dir (`[cri] state_dir` defaults under it).
    pub state: PathBuf,
    /// berthd's root, whose snapshots ImageFsInfo reports.
    pub root: PathBuf,
    /// The berthd binary, re-run as `berthd cri-holder` for each pod.
    pub holder_binary: PathBuf,
}

/// The CRI's shared state: a client of berthd in the CRI namespace and the pods' networking.
pub(crate) struct Cri {
    pub client: berth::Client,
    pub settings: Settings,
    pub net: Arc<berth_net::Net>,
    /// The streaming server whose URLs Exec, Attach and PortForward answer.
    pub stream: berth_cri_stream::StreamServer,
    /// Cgroup samples and layer usages shared by every stats call.
    pub stats: Arc<stats::StatsCache>,
    /// ImageFsInfo's last walk.
    pub image_fs: image_fs::FsUsageCache,
    /// Whether pods can have user namespaces of their own here (else why not), probed once.
    pub userns: std::result::Result<(), String>,
}

/// Serve the CRI on `[cri] address` until `shutdown` completes, then remove the socket.
pub async fn serve(settings: Settings, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let state_dir = settings.config.state_dir(&settings.state);
    make_dir(&state_dir, 0o711)?;
    let mut net_config =
        berth_net::NetConfig::new(settings.config.cni_conf_dir.clone(), state_dir.join("net"));
    net_config.bin_dirs = settings.config.cni_bin_dirs.clone();
    // A pod's /etc/hosts names the pod alone, as containerd's and the kubelet's do.
    net_config.peer_hosts = false;
    let net = tokio::task::spawn_blocking(move || berth_net::Net::new(net_config))
        .await
        .map_err(|e| Error::internal(format!("open the pods' networking: {e}")))?
        .map_err(berth_errdefs::Error::from)?;
    let channel = berth::connect(&settings.api_socket).await?;
    let client = berth::Client::from_channel(channel, &settings.config.namespace);
    let net = Arc::new(net);
    let stream = start_streaming(&settings, &client, &net, &state_dir).await?;
    let probed = settings.clone();
    let userns = tokio::task::spawn_blocking(move || userns::probe(&probed))
        .await
        .unwrap_or_else(|e| Err(format!("the probe panicked: {e}")));
    match &userns {
        Ok(()) => tracing::info!("pod user namespaces available"),
        Err(e) => tracing::warn!(reason = %e, "pod user namespaces unavailable"),
    }
    let listener = bind(&settings.config.address)?;
    let address = settings.config.address.clone();
    tracing::info!(stream = %stream.local_addr(), "CRI streaming server listening");
    let cri = Arc::new(Cri {
        client,
        net,
        stream,
        stats: Arc::default(),
        image_fs: Default::default(),
        userns,
        settings,
    });
    if let Err(e) = cri.sweep_image_volumes().await {
        tracing::warn!(error = %e, "image volumes of removed containers not swept");
    }
    if let Err(e) = cri.sweep_idmapped_mounts().await {
        tracing::warn!(error = %e, "idmapped mounts of removed containers not swept");
    }
    if let Err(e) = cri.sweep_pod_dirs().await {
        tracing::warn!(error = %e, "directories of removed pods not swept");
    }
    tracing::info!(address = %address.display(), "CRI ready");
    let result = service::router(cri)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await;
    let _ = std::fs::remove_file(&address);
    result.map_err(|e| Error::internal(format!("CRI server: {e}")))
}

/// The streaming server on `[cri] stream_address` (port 0: any free port; an unspecified
/// address: the URLs name the host's primary address, or `[cri] stream_advertise_host`).
async fn start_streaming(
    settings: &Settings,
    client: &berth::Client,
    net: &Arc<berth_net::Net>,
    state_dir: &Path,
) -> Result<berth_cri_stream::StreamServer> {
    let config = &settings.config;
    let address = config.stream_address.parse().map_err(|e| {
        Error::invalid(format!(
            "cri.stream_address {:?}: {e}",
            config.stream_address
        ))
    })?;
    let advertise_host = match config.stream_advertise_host.as_str() {
        "" => None,
        h => Some(
            h.parse()
                .map_err(|e| Error::invalid(format!("cri.stream_advertise_host {h:?}: {e}")))?,
        ),
    };
    let backend = streaming::StreamBackend {
        client: client.clone(),
        net: net.clone(),
        io_dir: state_dir.join("io"),
    };
    berth_cri_stream::StreamServer::start(
        berth_cri_stream::Config {
            address,
            advertise_host,
            token_ttl: std::time::Duration::from_secs(config.stream_token_ttl_seconds),
            max_in_flight: config.stream_max_in_flight,
        },
        Arc::new(backend),
    )
    .await
    .map_err(|e| Error::io(format!("listen for CRI streams on {address}"), e))
}

fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))
}

/// The socket is bound under a temporary name and renamed into place with mode 0660, as
/// berthd's API socket is, so a client never finds it with the wrong mode.
fn bind(address: &Path) -> Result<UnixListener> {
    if let Some(dir) = address.parent() {
        if !dir.exists() {
            make_dir(dir, 0o711)?;
        }
    }
    if address.exists() {
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            return Err(Error::precondition(format!(
                "another daemon is serving the CRI on {}; stop it first or set [cri] address",
                address.display()
            )));
        }
        std::fs::remove_file(address)
            .map_err(|e| Error::io(format!("remove stale socket {}", address.display()), e))?;
    }
    let tmp = address.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| Error::io(format!("bind {}", tmp.display()), e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
    std::fs::rename(&tmp, address)
        .map_err(|e| Error::io(format!("rename socket to {}", address.display()), e))?;
    Ok(listener)
}

/// Runs blocking work (files, CNI plugins, processes) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("blocking task: {e}")))?
}
