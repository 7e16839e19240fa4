//! Daemon lifecycle: directories and locks, opening the stores, serving the API on a unix socket,
//! readiness notification and a clean shutdown.

use crate::config::Config;
use crate::controllers::gc::Collector;
use crate::controllers::restart::RestartMonitor;
use crate::events::Exchange;
use crate::fsutil::{make_dir, require_absolute};
use crate::remote_snapshotter::RemoteSnapshotter;
use crate::runtime::{Backends, ShimSettings, TaskManager};
use crate::services::{self, *};
use crate::snapshots::Snapshotters;
use berth_api::containerd::services as api;
use berth_authority::AuthorityFix;
use berth_content::ContentStore;
use berth_errdefs::{Error, Result};
use berth_metadata::Metadata;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

/// How long in-flight calls may run after SIGTERM before berthd stops regardless.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a start waits for the root's lock. A daemon killed with -9 while it was spawning a
/// child leaves that child holding every descriptor it had, the lock and the listening socket
/// included, until the child's exec closes them: a restart right after must wait that moment
/// out rather than take the dead daemon for a live one.
const ROOT_LOCK_WAIT: Duration = Duration::from_secs(2);

/// `[grpc]`: the API socket this module serves and the message sizes it allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// The API socket (created mode 0660 once the daemon is ready).
    pub address: PathBuf,
    /// Owner of the socket, so a group of non-root users can be granted access.
    pub uid: u32,
    pub gid: u32,
    /// containerd's clients send and accept up to 16 MiB.
    pub max_recv_message_size: usize,
    pub max_send_message_size: usize,
}

impl GrpcConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        require_absolute("grpc.address", &self.address)?;
        for (key, v) in [
            ("grpc.max_recv_message_size", self.max_recv_message_size),
            ("grpc.max_send_message_size", self.max_send_message_size),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!("{key} must be greater than 0")));
            }
        }
        Ok(())
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: "/run/berth/berthd.sock".into(),
            uid: 0,
            gid: 0,
            max_recv_message_size: 16 << 20,
            max_send_message_size: 16 << 20,
        }
    }
}

/// Run berthd until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    make_dir(&config.root, 0o711)?;
    make_dir(&config.state, 0o711)?;
    make_dir(&config.state.join("mounts"), 0o700)?;
    let _root_lock = lock_root(&config.root).await?;

    make_dir(&config.root.join("meta"), 0o700)?;
    let meta = Arc::new(Metadata::open(&config.root.join("meta"))?);
    let content = Arc::new(ContentStore::open(&config.root.join("content"))?);
    let (snapshotters, snapshotter_errors) = open_snapshotters(&config)?;
    let remap = crate::userns::resolve(&config.userns, &config.root, &config.state)?;
    let gc = Arc::new(Collector::new(
        meta.clone(),
        content.clone(),
        snapshotters.clone(),
    ));
    tokio::spawn(gc.clone().run_scheduled());
    let state = Arc::new(State {
        meta: meta.clone(),
        content,
        events: Exchange::new(config.events),
        snapshotters,
        gc,
    });
    tokio::spawn(crate::controllers::leases::expire(
        meta.clone(),
        config.leases.clone(),
    ));

    let tasks = Arc::new(TaskManager::new(
        &config.state,
        Backends {
            shim: ShimSettings {
                binary: shim_binary(&config)?,
                start_timeout: Duration::from_millis(config.tasks.shim_start_timeout_ms),
                runtime_timeout: Duration::from_millis(config.tasks.runtime_timeout_ms),
            },
        },
        config.runtimes.clone(),
        Duration::from_millis(config.tasks.shim_connect_timeout_ms),
        state.events.clone(),
    )?);
    let recovered = tasks.recover().await?;
    if recovered > 0 {
        tracing::info!(tasks = recovered, "reconnected to running shims");
    }
    let network = Arc::new(crate::network::Networking::open(
        &config.cni,
        &config.state,
    )?);
    // Attachments of containers whose task did not survive (a task is what holds a network).
    let live = tasks.clone();
    if let Err(e) = network
        .clone()
        .cleanup_stale(move |ns, id| match live.get(ns, id) {
            Ok(_) => crate::network::TaskPresence::Live,
            Err(e) if e.is_not_found() => crate::network::TaskPresence::Gone,
            Err(_) => crate::network::TaskPresence::Settling,
        })
        .await
    {
        tracing::warn!(error = %e, "cleaning up stale network attachments");
    }
    let volumes = Arc::new(crate::volumes::Volumes::open(&config.root, meta.clone())?);
    tokio::spawn(
        RestartMonitor {
            meta: meta.clone(),
            snapshotters: state.snapshotters.clone(),
            tasks: tasks.clone(),
            events: state.events.clone(),
            interval: Duration::from_millis(config.tasks.restart_interval_ms),
            network: network.clone(),
            backoff: Default::default(),
        }
        .run(),
    );

    let listener = bind_socket(&config)?;
    let address = config.grpc.address.clone();
    tracing::info!(address = %address.display(), root = %config.root.display(), "berthd ready");
    notify_ready();

    if config.cri.enabled {
        let settings = berth_cri::Settings {
            config: config.cri.clone(),
            api_socket: address.clone(),
            state: config.state.clone(),
            root: config.root.clone(),
            holder_binary: std::env::current_exe()
                .map_err(|e| Error::io("find berthd's own binary", e))?,
        };
        let events = state.events.clone();
        // A client of the API socket like any other, started once the socket is bound; it
        // stops with the daemon.
        tokio::spawn(async move {
            if let Err(e) = berth_cri::serve(settings, async move { events.closed().await }).await {
                tracing::error!(error = %e, "the CRI server stopped");
            }
        });
    }

    let events = state.events.clone();
    let stopping = async move {
        shutdown_signal().await;
        events.close();
    };
    let metrics = Arc::new(crate::metrics::Metrics::default());
    if !config.metrics.address.is_empty() {
        let (address, metrics, tasks, meta) = (
            config.metrics.address.clone(),
            metrics.clone(),
            tasks.clone(),
            meta.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(&address, metrics, tasks, meta).await {
                tracing::error!(%address, error = %e, "cannot serve metrics");
            }
        });
    }
    tokio::spawn(dump_on_sigusr1(metrics.clone(), tasks.clone()));
    let plugins = crate::services::introspection::plugin_list(
        &config.root,
        &state
            .snapshotters
            .names()
            .map(str::to_string)
            .collect::<Vec<_>>(),
        &snapshotter_errors,
        remap.as_ref(),
    );
    let serve = router(
        &config,
        state.clone(),
        tasks,
        network,
        volumes,
        plugins,
        metrics,
    )
    .serve_with_incoming_shutdown(
        // Every client's :authority reaches h2 in a form it accepts (gRPC's C core and
        // grpc-java send the socket path).
        UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new)),
        stopping,
    );
    // In-flight calls get a bounded time to finish once the signal came; a client that never
    // ends its stream must not keep the daemon up.
    let result = tokio::select! {
        r = serve => r,
        _ = async {
            state.events.closed().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!("in-flight calls did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
            Ok(())
        }
    };
    // Stop accepting first: the socket disappears as soon as we stop serving.
    let _ = fs::remove_file(&address);
    meta.sync_blocking()?;
    tracing::info!("berthd stopped");
    result.map_err(|e| Error::internal(format!("grpc server: {e}")))
}

fn router(
    config: &Config,
    state: Arc<State>,
    tasks: Arc<TaskManager>,
    network: Arc<crate::network::Networking>,
    volumes: Arc<crate::volumes::Volumes>,
    plugins: Vec<berth_api::containerd::services::introspection::v1::Plugin>,
    metrics: Arc<crate::metrics::Metrics>,
) -> tonic::transport::server::Router<
    tower::layer::util::Stack<crate::metrics::MetricsLayer, tower::layer::util::Identity>,
> {
    let recv = config.grpc.max_recv_message_size;
    let send = config.grpc.max_send_message_size;
    macro_rules! svc {
        ($server:path, $inner:expr) => {{
            use $server as S;
            S::new($inner)
                .max_decoding_message_size(recv)
                .max_encoding_message_size(send)
        }};
    }
    let streams = crate::streams::Streams::default();
    // Spans only carry the OTLP fields and the client's trace context when they are exported.
    let traced = config.tracing.enabled();
    let transferrer = Arc::new(transferrer(config, &state, streams.clone()));
    tonic::transport::Server::builder()
        // Every RPC counted and timed by one layer, not by each handler.
        .layer(crate::metrics::MetricsLayer(metrics))
        .trace_fn(move |req| {
            let ns = req
                .headers()
                .get(berth_api::NAMESPACE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let method = req.uri().path();
            if !traced {
                return tracing::info_span!("rpc", method = %method, namespace = %ns);
            }
            // The OTLP names: a gRPC server span is called `package.Service/Method`.
            let span = tracing::info_span!(
                "rpc",
                method = %method,
                namespace = %ns,
                otel.name = %method.trim_start_matches('/'),
                otel.kind = "server",
                rpc.system = "grpc",
            );
            crate::telemetry::continue_trace(&span, req.headers());
            span
        })
        .add_service(svc!(
            api::version::v1::version_server::VersionServer,
            version::VersionService
        ))
        .add_service(svc!(
            api::introspection::v1::introspection_server::IntrospectionServer,
            introspection::IntrospectionService {
                state: state.clone(),
                plugins,
                runtimes: config.runtimes.clone(),
            }
        ))
        .add_service(svc!(
            api::namespaces::v1::namespaces_server::NamespacesServer,
            namespaces::NamespacesService(state.clone())
        ))
        .add_service(containers_list::WithRawList {
            inner: svc!(
                api::containers::v1::containers_server::ContainersServer,
                containers::ContainersService(state.clone())
            ),
            state: state.clone(),
            max_decoding: recv,
            max_encoding: send,
        })
        .add_service(svc!(
            api::images::v1::images_server::ImagesServer,
            images::ImagesService(state.clone())
        ))
        .add_service(svc!(
            api::leases::v1::leases_server::LeasesServer,
            leases::LeasesService(state.clone())
        ))
        .add_service(svc!(
            api::content::v1::content_server::ContentServer,
            content::ContentService(state.clone())
        ))
        .add_service(svc!(
            api::events::v1::events_server::EventsServer,
            services::events::EventsService(state.clone())
        ))
        .add_service(svc!(
            api::snapshots::v1::snapshots_server::SnapshotsServer,
            snapshots::SnapshotsService(state.clone())
        ))
        .add_service(svc!(
            api::diff::v1::diff_server::DiffServer,
            diff::DiffService {
                state: state.clone(),
                applier: applier(config),
            }
        ))
        .add_service(svc!(
            api::tasks::v1::tasks_server::TasksServer,
            services::tasks::TasksService {
                state: state.clone(),
                tasks,
                network: network.clone(),
            }
        ))
        .add_service(svc!(
            berth_api::berth::services::networks::v1::networks_server::NetworksServer,
            services::networks::NetworksService { network }
        ))
        .add_service(svc!(
            berth_api::berth::services::volumes::v1::volumes_server::VolumesServer,
            services::volumes::VolumesService { volumes }
        ))
        // grpc.health.v1: "" is SERVING while the router is up (containerd's client IsServing).
        .add_service(tonic_health::server::health_reporter().1)
        // containerd 2's services berthd lacks: Unimplemented with a reason, not tonic's silence.
        .add_service(svc!(
            api::transfer::v1::transfer_server::TransferServer,
            services::transfer::TransferService(transferrer)
        ))
        .add_service(svc!(
            api::streaming::v1::streaming_server::StreamingServer,
            services::streaming::StreamingService { streams }
        ))
        .add_service(services::not_served::SandboxStore)
        .add_service(services::not_served::SandboxController)
        .add_service(services::not_served::Mounts)
}

fn transferrer(
    config: &Config,
    state: &State,
    streams: crate::streams::Streams,
) -> crate::transfer::Transferrer {
    let t = &config.transfer;
    let path = |p: &std::path::PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
    crate::transfer::Transferrer {
        meta: state.meta.clone(),
        content: state.content.clone(),
        snapshotters: state.snapshotters.clone(),
        events: state.events.clone(),
        streams,
        applier: applier(config),
        settings: crate::transfer::Settings {
            config_path: path(&t.config_path),
            max_concurrent_downloads: t.max_concurrent_downloads,
            max_concurrent_uploads: t.max_concurrent_uploads,
            progress_timeout: Duration::from_secs(t.progress_timeout_secs),
            max_manifest_bytes: t.max_manifest_bytes,
            max_layers: t.max_layers,
            allow_foreign_urls: t.allow_foreign_urls,
            parallel_unpack: t.parallel_unpack,
            docker_config: path(&t.docker_config),
            login_store: path(&t.login_store),
            // containerd's default, where this host can hold overlay layers.
            default_snapshotter: if state.snapshotters.names().any(|n| n == "overlayfs") {
                "overlayfs".to_string()
            } else {
                "native".to_string()
            },
        },
        downloads: Arc::new(tokio::sync::Semaphore::new(
            t.max_concurrent_downloads_total,
        )),
        http: Default::default(),
        inflight: Default::default(),
        unpacking: Default::default(),
    }
}

fn applier(config: &Config) -> crate::applier::Applier {
    crate::applier::Applier {
        snapshots_root: config.root.join("snapshots"),
        mounts_dir: config.state.join("mounts"),
        limits: config.diff.clone(),
    }
}

/// The built-in snapshotters under `<root>/snapshots/<name>`. overlayfs needs a filesystem that
/// can hold an overlay upper dir; where it cannot, it is reported as a failed plugin (as containerd
/// does) and native remains. Returns the init errors by snapshotter name.
fn open_snapshotters(config: &Config) -> Result<(Snapshotters, Vec<(String, String)>)> {
    let root = &config.root;
    use berth_snapshotter::{overlay_supported, NativeSnapshotter, OverlaySnapshotter};
    let dir = root.join("snapshots");
    make_dir(&dir, 0o700)?;
    let mut snapshotters = Snapshotters::default();
    let mut errors = Vec::new();
    let overlay_root = dir.join("overlayfs");
    match overlay_supported(&dir).and_then(|()| OverlaySnapshotter::open(&overlay_root)) {
        Ok(s) => snapshotters.insert(Arc::new(s)),
        Err(e) => {
            tracing::warn!(error = %e, "overlayfs snapshotter unavailable");
            errors.push(("overlayfs".to_string(), e.to_string()));
        }
    }
    snapshotters.insert(Arc::new(NativeSnapshotter::open(&dir.join("native"))?));
    for (name, plugin) in &config.proxy_plugins {
        if plugin.kind != "snapshot" {
            return Err(Error::invalid(format!(
                "proxy plugin {name:?}: type {:?} is not supported (berthd proxies snapshotters only)",
                plugin.kind
            )));
        }
        let remote_name = plugin.snapshotter.as_deref().unwrap_or(name);
        let remote = RemoteSnapshotter::new(
            name,
            remote_name,
            &plugin.address,
            Duration::from_millis(plugin.timeout_ms),
        )?;
        tracing::info!(name, address = %plugin.address.display(), "proxy snapshotter");
        snapshotters.insert(Arc::new(remote));
    }
    Ok((snapshotters, errors))
}

/// berth-shim: as configured, else beside the berthd binary (where packages install both).
fn shim_binary(config: &Config) -> Result<PathBuf> {
    if !config.tasks.shim.as_os_str().is_empty() {
        return Ok(config.tasks.shim.clone());
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("locate the berthd binary (to find berth-shim beside it)", e))?;
    Ok(exe.with_file_name("berth-shim"))
}

/// One daemon per root: a second berthd on the same root would corrupt the stores.
async fn lock_root(root: &Path) -> Result<Flock<File>> {
    let path = root.join("berthd.lock");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let deadline = std::time::Instant::now() + ROOT_LOCK_WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, errno)) if std::time::Instant::now() >= deadline => {
                return Err(Error::precondition(format!(
                    "another berthd holds the root {} ({errno}); stop it first or use another --root",
                    root.display()
                )));
            }
            Err((unlocked, _)) => {
                file = unlocked;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Bind under a temporary name and rename into place, so the socket appears only with its final
/// mode and owner, once the daemon can serve.
fn bind_socket(config: &Config) -> Result<UnixListener> {
    let address = &config.grpc.address;
    if let Some(dir) = address.parent() {
        if !dir.exists() {
            make_dir(dir, 0o711)?;
        }
    }
    if address.exists() {
        if UnixStream::connect(address).is_ok() {
            return Err(Error::precondition(format!(
                "another daemon is serving on {}; stop it first or use another --address",
                address.display()
            )));
        }
        fs::remove_file(address)
            .map_err(|e| Error::io(format!("remove stale socket {}", address.display()), e))?;
    }
    let tmp = address.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| Error::io(format!("bind {}", tmp.display()), e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
    nix::unistd::chown(
        &tmp,
        Some(nix::unistd::Uid::from_raw(config.grpc.uid)),
        Some(nix::unistd::Gid::from_raw(config.grpc.gid)),
    )
    .map_err(|e| Error::io(format!("chown {}", tmp.display()), e.into()))?;
    fs::rename(&tmp, address)
        .map_err(|e| Error::io(format!("rename socket to {}", address.display()), e))?;
    Ok(listener)
}

/// systemd Type=notify readiness; a no-op when not started by systemd.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(b"READY=1", &addr));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not notify systemd of readiness");
    }
}

/// SIGUSR1: what the daemon is doing, to its log (as containerd dumps its goroutines).
async fn dump_on_sigusr1(metrics: Arc<crate::metrics::Metrics>, tasks: Arc<TaskManager>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGUSR1: no dumps");
            return;
        }
    };
    while usr1.recv().await.is_some() {
        crate::metrics::dump(&metrics, &tasks);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop berthd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_root_lock_waits_out_a_moment_but_not_a_live_daemon() {
        let root = tempfile::tempdir().expect("temp root");
        let held = lock_root(root.path()).await.expect("first lock");
        let started = std::time::Instant::now();
        let err = lock_root(root.path())
            .await
            .expect_err("a held root was locked twice");
        assert!(
            err.to_string().contains("another berthd holds the root"),
            "{err}"
        );
        assert!(started.elapsed() >= ROOT_LOCK_WAIT, "gave up early");

        // A holder that lets go within the wait (a dead daemon's child reaching its exec).
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(held);
        });
        lock_root(root.path())
            .await
            .expect("the lock once its holder let go");
        release.await.expect("release task");
    }
}
