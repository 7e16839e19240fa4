//! `berth build`'s executor: berth-build's front end driven over berthd's API. Each stage
//! starts from its base (an image, pulled when absent; `scratch`; an earlier stage), each RUN
//! runs in a task on an active snapshot, each COPY/ADD is written into that snapshot mounted
//! in a private temp dir, and every filesystem step becomes a layer through Diff.Diff and a
//! committed snapshot named by its chain ID. The config and manifest go through Content and
//! the image through Images, with containerd's gc labels so the collector keeps what the image
//! needs once the build's lease is gone.

use crate::api::services::containers::v1::container::Runtime;
use crate::api::services::containers::v1::containers_client::ContainersClient;
use crate::api::services::containers::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest,
};
use crate::api::services::content::v1::content_client::ContentClient;
use crate::api::services::content::v1::InfoRequest;
use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
};
use crate::api::types::{Descriptor, Mount};
use crate::containers::{DEFAULT_RUNTIME, DEFAULT_SNAPSHOTTER, SPEC_TYPE_URL};
use crate::leases::LeaseGuard;
use crate::spec::{ContainerConfig, Network};
use crate::stdio::{Fifos, StdioConfig};
use crate::{Client, Error, Result};
use berth_build::context::{Context, Limits};
use berth_build::copy::{copy_into, CopyRequest};
use berth_build::dockerfile::{
    self, parse_trigger, Action, Base, BuildArgs, Dockerfile, RunAction, StageEval, Step,
};
use berth_build::dockerignore::DockerIgnore;
use berth_build::image::{Blob, ImageDocument};
use berth_registry::Platform;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::Code;

use crate::layers::GZIP_LAYER;
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Marks the build's own containers, so an interrupted build's leftovers can be told apart.
pub const BUILD_LABEL: &str = "io.berth.build";

/// How the layers a build writes are compressed (buildx's `-o …,compression=`). Layers of a base
/// image are kept as the base has them, as buildx does without `force-compression`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

impl Compression {
    /// buildx's names: `gzip`, `zstd`, `uncompressed`.
    pub fn parse(name: &str) -> Result<Compression> {
        match name {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "uncompressed" => Ok(Compression::Uncompressed),
            other => Err(Error::invalid(format!(
                "compression {other:?}: gzip, zstd or uncompressed"
            ))),
        }
    }

    /// The layer media type Diff is asked for.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => GZIP_LAYER,
            Compression::Zstd => ZSTD_LAYER,
            Compression::Uncompressed => PLAIN_LAYER,
        }
    }
}

/// `berth build`'s options.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// A directory, or `-` for a tar on stdin.
    pub context: PathBuf,
    /// A Dockerfile on the host; default: `Dockerfile` in the context.
    pub dockerfile: Option<PathBuf>,
    pub tags: Vec<String>,
    /// `NAME=VALUE` or `NAME` (from the environment).
    pub build_args: Vec<String>,
    pub target: Option<String>,
    /// RUN's network: none (the default here), host, or [`Network::Named`] with `networks`.
    pub network: Network,
    /// The berthd networks RUN joins when `network` is [`Network::Named`].
    pub networks: Vec<String>,
    pub labels: HashMap<String, String>,
    pub limits: Option<Limits>,
    /// Run every step even when the cache has it (results are still recorded).
    pub no_cache: bool,
    /// Pull every base image even when it is present (docker's `--pull`).
    pub pull: bool,
    /// How the build's own layers are compressed.
    pub compression: Compression,
    /// The target platform, `os/arch[/variant]` (default: this host's): FROM takes its
    /// manifest from an index, and a RUN this host cannot execute fails saying so.
    pub platform: Option<String>,
    /// The most one RUN may write into its layer (default [`DEFAULT_MAX_LAYER_BYTES`]).
    pub max_layer_bytes: Option<u64>,
}

/// A RUN's writable layer is bounded by this unless `--max-layer-size` says otherwise: a RUN
/// that fills the disk is stopped long before the snapshotter's filesystem is full.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 10 << 30;
/// A RUN is also stopped when the snapshots' filesystem has less than this free, whatever the
/// limit: other builds and containers share it.
const MIN_FREE_BYTES: u64 = 512 << 20;
/// How often a RUN's upper directory is measured.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// What a build made.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub manifest_digest: String,
    pub config_digest: String,
    /// The tags written, normalised.
    pub names: Vec<String>,
    /// RUN steps that ran a container.
    pub containers_run: usize,
    pub layers_written: usize,
    /// Filesystem steps answered by the layer cache.
    pub cache_hits: usize,
}

#[derive(Clone)]
struct StageState {
    doc: ImageDocument,
    chain: Option<String>,
    layers: Vec<Blob>,
    /// The cache key of the last step (the base's identity before the first).
    key: String,
}

/// The lease that holds the layer cache's records (no expiry; `berth builder prune` deletes it).
pub const CACHE_LEASE: &str = "berth.build.cache";
/// The label that names a cache record's key, for Content.List's filter.
pub const CACHE_LABEL: &str = "berth.build.cache";

/// One cache entry, stored as a small JSON blob under [`CACHE_LEASE`]; its gc.ref labels keep
/// the layer blob and the committed snapshot for as long as the record lives.
#[derive(serde::Serialize, serde::Deserialize)]
struct CacheRecord {
    key: String,
    media_type: String,
    digest: String,
    size: i64,
    diff_id: String,
    chain: String,
    /// When the step first ran (RFC 3339): its history entry keeps that time on every cache hit,
    /// so a rebuild that changes nothing yields the same image, as docker's builders do. Empty
    /// in records written before it was kept.
    #[serde(default)]
    created: String,
}

/// `berth builder prune`: drops the cache lease and collects what only it held.
pub async fn prune(client: &Client) -> Result<()> {
    use crate::api::services::leases::v1::leases_client::LeasesClient;
    use crate::api::services::leases::v1::DeleteRequest;
    let req = DeleteRequest {
        id: CACHE_LEASE.to_string(),
        sync: true,
    };
    match LeasesClient::new(client.channel().clone())
        .delete(client.request(req))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Code::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn build_err(e: berth_build::Error) -> Error {
    Error::invalid(e.to_string())
}

/// Runs a Dockerfile build against berthd; progress lines go to `progress`, RUN output to
/// this process's stdout and stderr.
pub async fn build(
    client: &Client,
    opts: &BuildOptions,
    progress: &mut (dyn Write + Send),
) -> Result<BuildOutcome> {
    let limits = opts.limits.unwrap_or_default();
    let (context, text) = load_context(opts, limits).await?;
    let df = dockerfile::parse(&text).map_err(build_err)?;
    for note in &df.directives.notes {
        let _ = writeln!(progress, "note: {note}");
    }
    let host = Platform::host();
    let target = match &opts.platform {
        None => host.clone(),
        Some(p) => {
            Platform::parse(p).map_err(|e| Error::invalid(format!("--platform {p:?}: {e}")))?
        }
    };
    let variant = |p: &Platform| Some(p.variant.clone()).filter(|v| !v.is_empty());
    let mut build_args = BuildArgs::new();
    build_args.set_platform(
        &target.os,
        &target.architecture,
        variant(&target).as_deref(),
    );
    if target != host {
        build_args.set_build_platform(&host.os, &host.architecture, variant(&host).as_deref());
    }
    for a in &opts.build_args {
        build_args
            .add(a, |n| std::env::var(n).ok())
            .map_err(build_err)?;
    }
    let plan = df
        .plan(opts.target.as_deref(), &build_args)
        .map_err(build_err)?;
    for unused in &plan.unused_build_args {
        let _ = writeln!(
            progress,
            "warning: build arg {unused} was not consumed by any ARG"
        );
    }
    if opts.network == Network::Named {
        if opts.networks.is_empty() {
            return Err(Error::invalid("a named network mode needs a network name"));
        }
        // Checked before anything runs, as berth run does.
        let known = client.networks().list().await?;
        if let Some(missing) = opts
            .networks
            .iter()
            .find(|n| !known.iter().any(|k| &k.name == *n))
        {
            return Err(Error::not_found(format!(
                "network {missing} not found (berth network ls lists them)"
            )));
        }
    }
    let lease = client.leases().create(Duration::from_secs(3600)).await?;
    let run = Run {
        client,
        lease: &lease,
        df: &df,
        context: &context,
        // A build's RUN is isolated unless the build names a network (`BuildOptions`' rule),
        // so the library's default network mode means none here.
        network: match opts.network {
            Network::Default => Network::None,
            other => other,
        },
        networks: opts.networks.clone(),
        containers_run: AtomicUsize::new(0),
        layers_written: AtomicUsize::new(0),
        cache_hits: AtomicUsize::new(0),
        no_cache: opts.no_cache,
        pull: opts.pull,
        compression: opts.compression,
        pulled: Mutex::new(Vec::new()),
        platform: target,
        max_layer_bytes: opts.max_layer_bytes.unwrap_or(DEFAULT_MAX_LAYER_BYTES),
    };
    let progress: Progress<'_> = Mutex::new(progress);
    let result = run.stages(&plan, &build_args, &progress).await;
    let outcome = match result {
        Ok(state) => run.write_image(state, opts, &progress).await,
        Err(e) => Err(e),
    };
    let released = lease.release().await;
    let outcome = outcome?;
    released?;
    Ok(outcome)
}

/// The context (a directory, or `-`: a tar on stdin) and the Dockerfile's text: `-f` names a
/// file of the host, else `Dockerfile` is read from the context itself.
async fn load_context(opts: &BuildOptions, limits: Limits) -> Result<(Context, String)> {
    let (dir, dockerfile) = (opts.context.clone(), opts.dockerfile.clone());
    tokio::task::spawn_blocking(move || {
        let from_stdin = dir.as_os_str() == "-";
        let context = if from_stdin {
            Context::from_tar(std::io::stdin().lock(), &limits)
        } else {
            // docker's <Dockerfile>.dockerignore beside the Dockerfile wins over the context's.
            let own = dockerfile
                .as_ref()
                .map(|d| PathBuf::from(format!("{}.dockerignore", d.display())));
            match own.and_then(|p| std::fs::read_to_string(p).ok()) {
                Some(text) => DockerIgnore::parse(&text)
                    .and_then(|rules| Context::open_dir_with(&dir, &rules, &limits)),
                None => Context::open_dir(&dir, &limits),
            }
        }
        .map_err(build_err)?;
        let text = match &dockerfile {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?,
            None => {
                let mut text = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(
                        context.open_file("Dockerfile").map_err(build_err)?,
                        1 << 20,
                    ),
                    &mut text,
                )
                .map_err(|e| Error::io("read the context's Dockerfile", e))?;
                text
            }
        };
        Ok((context, text))
    })
    .await
    .map_err(|e| Error::local(Code::Internal, format!("context listing: {e}")))?
}

/// Progress lines from stages built at once, one line at a time.
type Progress<'p> = Mutex<&'p mut (dyn Write + Send)>;

fn say(progress: &Progress<'_>, line: std::fmt::Arguments<'_>) {
    if let Ok(mut p) = progress.lock() {
        let _ = p.write_fmt(line);
        let _ = p.write_all(b"\n");
    }
}

struct Run<'a> {
    client: &'a Client,
    lease: &'a LeaseGuard,
    df: &'a Dockerfile,
    context: &'a Context,
    network: Network,
    networks: Vec<String>,
    containers_run: AtomicUsize,
    layers_written: AtomicUsize,
    cache_hits: AtomicUsize,
    no_cache: bool,
    pull: bool,
    compression: Compression,
    /// Images `--pull` already pulled in this build (a base named twice is pulled once).
    pulled: Mutex<Vec<String>>,
    /// `--platform` (this host's by default); a stage's `FROM --platform=` overrides it.
    platform: Platform,
    max_layer_bytes: u64,
}

impl Run<'_> {
    fn snapshots(&self) -> SnapshotsClient<tonic::transport::Channel> {
        SnapshotsClient::new(self.client.channel().clone())
    }

    async fn stages(
        &self,
        plan: &dockerfile::Plan,
        build_args: &BuildArgs,
        progress: &Progress<'_>,
    ) -> Result<StageState> {
        // Stages whose dependencies are built run together, a wave at a time.
        let mut done: HashMap<usize, StageState> = HashMap::new();
        let mut pending: Vec<&dockerfile::PlannedStage> = plan.stages.iter().collect();
        while !pending.is_empty() {
            let (ready, rest): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|p| p.needs.iter().all(|n| done.contains_key(n)));
            if ready.is_empty() {
                return Err(Error::local(Code::Internal, "the stage graph has a cycle"));
            }
            // join_all, not try_join_all: a failing stage must not drop its siblings midway,
            // which would leave their containers and tasks behind; each cleans up itself.
            let built = futures_util::future::join_all(
                ready
                    .iter()
                    .map(|p| self.stage(p, plan, build_args, &done, progress)),
            )
            .await;
            for (p, state) in ready.iter().zip(built) {
                done.insert(p.index, state?);
            }
            pending = rest;
        }
        done.remove(&plan.target)
            .ok_or_else(|| Error::local(Code::Internal, "the target stage was not built"))
    }

    async fn stage(
        &self,
        planned: &dockerfile::PlannedStage,
        plan: &dockerfile::Plan,
        build_args: &BuildArgs,
        done: &HashMap<usize, StageState>,
        progress: &Progress<'_>,
    ) -> Result<StageState> {
        let stage = &self.df.stages[planned.index];
        let platform = match &planned.platform {
            None => self.platform.clone(),
            Some(p) => Platform::parse(p).map_err(|e| {
                Error::invalid(format!(
                    "Dockerfile line {}: FROM --platform={p}: {e}",
                    stage.line
                ))
            })?,
        };
        let mut state = match &planned.base {
            Base::Scratch => {
                let mut doc = ImageDocument::scratch(&platform.architecture);
                doc.os = platform.os.clone();
                doc.variant = Some(platform.variant.clone()).filter(|v| !v.is_empty());
                // The host's scratch keeps the key earlier builds cached under.
                let key = if platform == Platform::host() {
                    "scratch".to_string()
                } else {
                    format!("scratch:{platform}")
                };
                StageState {
                    doc,
                    chain: None,
                    layers: Vec::new(),
                    key,
                }
            }
            Base::Stage(i) => done
                .get(i)
                .cloned()
                .ok_or_else(|| Error::local(Code::Internal, format!("stage {i} not built")))?,
            Base::Image(name) => {
                let base = self.base_image(name, &platform, progress).await?;
                // A single-manifest image has no other platform to offer: built on, as docker
                // does, with a warning; its config keeps its own architecture.
                let arch = Platform::new(&base.doc.os, &base.doc.architecture, "").normalized();
                if !base.doc.architecture.is_empty() && arch.architecture != platform.architecture {
                    say(
                        progress,
                        format_args!(
                            "warning: {name} is {}/{}, not {platform}",
                            base.doc.os, base.doc.architecture
                        ),
                    );
                }
                base
            }
        };
        let (mut eval, triggers) = StageEval::new(
            self.df,
            state.doc.config.clone(),
            &plan.global_args,
            build_args,
        );
        let mut steps: Vec<(Option<usize>, Step)> = Vec::new();
        for t in &triggers {
            let step =
                parse_trigger(t, stage.line, self.df.directives.escape).map_err(build_err)?;
            steps.push((None, step));
        }
        steps.extend(
            stage
                .steps
                .iter()
                .cloned()
                .enumerate()
                .map(|(n, s)| (Some(n), s)),
        );
        let total = steps.len();
        for (k, (index, step)) in steps.iter().enumerate() {
            let started = Instant::now();
            say(
                progress,
                format_args!(
                    "#{} [stage {} {}/{}] {}",
                    planned.index,
                    stage.name.as_deref().unwrap_or(&planned.index.to_string()),
                    k + 1,
                    total,
                    step.text
                ),
            );
            let outcome = eval.step(step).map_err(build_err)?;
            // COPY --from reads another stage's or image's root: its chain, and its key for
            // the cache (the stage's last key, or the image's config digest).
            let from = match &outcome.action {
                Action::Copy(c) => match (index, &c.from) {
                    (_, None) => None,
                    (Some(n), Some(_)) => planned.copy_from.get(n).cloned(),
                    (None, Some(_)) => {
                        return Err(Error::invalid(format!(
                            "ONBUILD {}: COPY --from in a trigger is not supported",
                            step.text
                        )))
                    }
                },
                _ => None,
            };
            let source = match from {
                None => None,
                Some(Base::Scratch) => Some((None, "scratch".to_string())),
                Some(Base::Stage(i)) => {
                    let s = done.get(&i).ok_or_else(|| {
                        Error::local(Code::Internal, format!("stage {i} not built"))
                    })?;
                    Some((s.chain.clone(), s.key.clone()))
                }
                Some(Base::Image(name)) => {
                    let s = self.base_image(&name, &platform, progress).await?;
                    Some((s.chain, s.key))
                }
            };
            let copied = match (&outcome.action, &source) {
                (Action::Copy(_), Some((_, key))) => Some(key.clone()),
                (Action::Copy(c), None) => {
                    let keyword = if c.add { "ADD" } else { "COPY" };
                    let context = self.context;
                    Some(
                        tokio::task::block_in_place(|| {
                            let sources = context.select(keyword, &c.sources)?;
                            context.digest(&sources)
                        })
                        .map_err(build_err)?,
                    )
                }
                _ => None,
            };
            // A layer cached as gzip is not a zstd layer: other compressions key apart (gzip's
            // keys stay as they were).
            let instruction = match self.compression {
                Compression::Gzip => format!("{}\n{}", step.text, outcome.created_by),
                other => format!(
                    "{}\n{}\ncompression={}",
                    step.text,
                    outcome.created_by,
                    other.media_type()
                ),
            };
            let key = berth_build::image::cache_key(
                &state.key,
                &instruction,
                &outcome.cache_args,
                copied.as_deref(),
            );
            let cached = match &outcome.action {
                Action::Run(_) | Action::Copy(_) if !self.no_cache => self.cached(&key).await?,
                _ => None,
            };
            let now = || crate::clock::rfc3339(std::time::SystemTime::now());
            // A step's history time: when it ran; for a cache hit, when it first ran; for a
            // metadata step (no layer), the time of the entry before it. So a rebuild answered
            // wholly by the cache makes the same image: reading the clock for a metadata step
            // made the digest depend on whether a second ticked between two steps.
            let (layer, created) = match (&outcome.action, cached) {
                (Action::Config | Action::Workdir(_), _) => {
                    let created = state
                        .doc
                        .history
                        .last()
                        .and_then(|h| h.created.clone())
                        .unwrap_or_else(now);
                    (None, created)
                }
                (_, Some((hit, first_ran))) => {
                    say(progress, format_args!("#{} CACHED", planned.index));
                    self.cache_hits.fetch_add(1, Ordering::Relaxed);
                    (Some(hit), first_ran.unwrap_or_else(now))
                }
                (Action::Run(r), None) => {
                    let layer = self.run_step(&state, &eval, r, &step.text).await?;
                    let created = now();
                    self.remember(&key, &layer, &created).await?;
                    (Some(layer), created)
                }
                (Action::Copy(c), None) => {
                    let layer = self
                        .copy_step(&state, c, source.map(|(chain, _)| chain))
                        .await?;
                    let created = now();
                    self.remember(&key, &layer, &created).await?;
                    (Some(layer), created)
                }
            };
            state.key = key;
            state.doc.config = eval.config.clone();
            match layer {
                Some((blob, diff_id, chain)) => {
                    state
                        .doc
                        .record(&created, &outcome.created_by, Some(&diff_id));
                    state.layers.push(blob);
                    state.chain = Some(chain);
                }
                None => state.doc.record(&created, &outcome.created_by, None),
            }
            say(
                progress,
                format_args!(
                    "#{} DONE {:.1}s",
                    planned.index,
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        state.doc.config = eval.config.clone();
        if let Some(author) = &eval.author {
            state.doc.author = Some(author.clone());
        }
        Ok(state)
    }

    /// The base image's config and layers for `platform`, pulled through the daemon when
    /// absent (or when an index's manifest for `platform` was never pulled).
    async fn base_image(
        &self,
        name: &str,
        platform: &Platform,
        progress: &Progress<'_>,
    ) -> Result<StageState> {
        let host = *platform == Platform::host();
        let images = self.client.images();
        let pull_now = self.pull
            && self
                .pulled
                .lock()
                .map(|mut p| {
                    let first = !p.iter().any(|n| n == name);
                    if first {
                        p.push(name.to_string());
                    }
                    first
                })
                .unwrap_or(true);
        let present = if pull_now {
            None
        } else {
            let found = if host {
                images.inspect(name).await
            } else {
                images.inspect_for(name, Some(platform)).await
            };
            match found {
                Err(e) if e.code() == Code::NotFound => None,
                other => Some(other?),
            }
        };
        let details = match present {
            Some(d) => d,
            None => {
                let opts = crate::transfer::RegistryOptions::default();
                if host {
                    say(progress, format_args!("pulling {name}"));
                    images.pull(name, &opts).await?.finish().await?;
                    images.inspect(name).await?
                } else {
                    say(progress, format_args!("pulling {name} for {platform}"));
                    images
                        .pull_for(name, &opts, platform)
                        .await?
                        .finish()
                        .await?;
                    images.inspect_for(name, Some(platform)).await?
                }
            }
        };
        let config_desc = details.manifest.config();
        let bytes = images
            .read_blob(&Descriptor {
                media_type: config_desc.media_type().to_string(),
                digest: config_desc.digest().to_string(),
                size: config_desc.size() as i64,
                annotations: HashMap::new(),
            })
            .await?;
        let doc: ImageDocument = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("image config of {name}: {e}")))?;
        let layers = details
            .manifest
            .layers()
            .iter()
            .map(|l| Blob {
                media_type: l.media_type().to_string(),
                digest: l.digest().to_string(),
                size: l.size() as i64,
            })
            .collect();
        Ok(StageState {
            doc,
            chain: Some(details.chain_id),
            layers,
            key: config_desc.digest().to_string(),
        })
    }

    async fn prepare(&self, parent: Option<&str>) -> Result<(String, Vec<Mount>)> {
        let key = format!("berth-build-{}", crate::names::new_id());
        let req = PrepareSnapshotRequest {
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            key: key.clone(),
            parent: parent.unwrap_or_default().to_string(),
            labels: HashMap::new(),
        };
        let mounts = self
            .snapshots()
            .prepare(self.lease.request(req))
            .await?
            .into_inner()
            .mounts;
        Ok((key, mounts))
    }

    async fn remove_snapshot(&self, key: &str) {
        let req = RemoveSnapshotRequest {
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            key: key.to_string(),
        };
        let _ = self.snapshots().remove(self.client.request(req)).await;
    }

    /// Diff.Diff of the active snapshot `key` against its parent, then the commit under the
    /// new chain ID (an existing one, from an earlier build of the same layer, is kept).
    async fn layer(&self, parent: Option<&str>, key: &str) -> Result<(Blob, String, String)> {
        let (blob, diff_id) = crate::layers::diff_snapshot(
            self.client,
            self.lease.id(),
            DEFAULT_SNAPSHOTTER,
            key,
            parent,
            self.compression.media_type(),
            "berth-build-view-",
        )
        .await?;
        let chain = crate::images::next_chain_id(parent, &diff_id);
        let commit = CommitSnapshotRequest {
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            name: chain.clone(),
            key: key.to_string(),
            labels: HashMap::new(),
            ..Default::default()
        };
        match self.snapshots().commit(self.lease.request(commit)).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::AlreadyExists => self.remove_snapshot(key).await,
            Err(e) => return Err(e.into()),
        }
        self.layers_written.fetch_add(1, Ordering::Relaxed);
        Ok((blob, diff_id, chain))
    }

    async fn run_step(
        &self,
        state: &StageState,
        eval: &StageEval,
        run: &RunAction,
        text: &str,
    ) -> Result<(Blob, String, String)> {
        can_execute(&state.doc).map_err(|why| Error::invalid(format!("{text}: {why}")))?;
        let parent = state.chain.as_deref();
        let user = if run.user.is_empty() {
            crate::user::ResolvedUser::default()
        } else if crate::user::needs_image_files(&run.user) {
            let chain = parent.ok_or_else(|| {
                Error::invalid(format!(
                    "USER {}: a scratch stage has no /etc/passwd",
                    run.user
                ))
            })?;
            let (passwd, group) =
                crate::user::read_image_files(self.client, DEFAULT_SNAPSHOTTER, chain).await?;
            crate::user::resolve(&run.user, passwd.as_deref(), group.as_deref())?
        } else {
            crate::user::resolve(&run.user, None, None)?
        };
        // RUN --network takes BuildKit's values; the build's own network is the default.
        let network = match run.network.as_deref() {
            None | Some("default") => self.network,
            Some("none") => Network::None,
            Some("host") => Network::Host,
            Some(other) => {
                return Err(Error::invalid(format!(
                    "{text}: --network={other}: RUN takes default, none or host"
                )))
            }
        };
        let mut doc = state.doc.clone();
        doc.config = eval.config.clone();
        let image: oci_spec::image::ImageConfiguration = serde_json::to_vec(&doc)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Error::invalid("the stage's config is not an OCI image config"))?;
        let config = ContainerConfig {
            command: run.argv.clone(),
            entrypoint: Some(Vec::new()),
            env: run.env.clone(),
            workdir: Some(run.workdir.clone()),
            network,
            ..ContainerConfig::default()
        };
        let (key, mounts) = self.prepare(parent).await?;
        let id = crate::names::new_id();
        let bound = LayerBound {
            upper: upper_dir(&mounts),
            limit: self.max_layer_bytes,
        };
        let ran = self
            .run_container(&id, &key, &image, &config, &user, &bound)
            .await;
        // Over the limit, whatever the exit code: the layer is not kept. Measured once more at
        // the end: a RUN that wrote many files faster than the watcher's interval and exited 0
        // was kept whole (a 400 MiB layer under a 64 MiB bound, now and then).
        let over = match &ran {
            Ok((_, Some(over))) => Some(over.clone()),
            Ok((_, None)) => bound.exceeded().await,
            Err(_) => None,
        };
        if let Some(over) = over {
            self.remove_snapshot(&key).await;
            return Err(Error::local(
                Code::ResourceExhausted,
                format!("{text}: {over}; the RUN was stopped and its changes discarded"),
            ));
        }
        match ran.map(|(code, _)| code) {
            Ok(0) => {}
            Ok(code) => {
                self.remove_snapshot(&key).await;
                return Err(Error::local(
                    Code::Aborted,
                    format!("{text}: the command returned a non-zero code: {code}"),
                ));
            }
            Err(e) => {
                self.remove_snapshot(&key).await;
                return Err(e);
            }
        }
        self.layer_or_remove(parent, &key).await
    }

    /// [`Run::layer`], removing the active snapshot when it fails.
    async fn layer_or_remove(
        &self,
        parent: Option<&str>,
        key: &str,
    ) -> Result<(Blob, String, String)> {
        match self.layer(parent, key).await {
            Ok(layer) => Ok(layer),
            Err(e) => {
                self.remove_snapshot(key).await;
                Err(e)
            }
        }
    }

    async fn run_container(
        &self,
        id: &str,
        key: &str,
        image: &oci_spec::image::ImageConfiguration,
        config: &ContainerConfig,
        user: &crate::user::ResolvedUser,
        bound: &LayerBound,
    ) -> Result<(u32, Option<String>)> {
        let mut spec = crate::spec::generate(self.client.namespace(), id, image, config, user)?;
        bound.limit_file_size(&mut spec);
        let spec_json = serde_json::to_vec(&spec)
            .map_err(|e| Error::invalid(format!("encode the runtime spec: {e}")))?;
        let mut labels = HashMap::from([(BUILD_LABEL.to_string(), "run".to_string())]);
        if config.network == Network::Named {
            // berthd's network hook attaches a container with this label, as for berth run.
            let names = serde_json::to_string(&self.networks)
                .map_err(|e| Error::invalid(format!("encode the networks: {e}")))?;
            labels.insert(crate::spec::NETWORKS_LABEL.to_string(), names);
            labels.insert(
                crate::spec::NETWORK_LABEL.to_string(),
                self.networks.join(","),
            );
        }
        let container = Container {
            id: id.to_string(),
            labels,
            runtime: Some(Runtime {
                name: DEFAULT_RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec_json,
            }),
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            snapshot_key: key.to_string(),
            ..Default::default()
        };
        ContainersClient::new(self.client.channel().clone())
            .create(self.lease.request(CreateContainerRequest {
                container: Some(container),
            }))
            .await?;
        self.containers_run.fetch_add(1, Ordering::Relaxed);
        let result = self.run_task(id, bound).await;
        let _ = ContainersClient::new(self.client.channel().clone())
            .delete(
                self.client
                    .request(DeleteContainerRequest { id: id.to_string() }),
            )
            .await;
        result
    }

    /// Runs the RUN's task to its end; the second value says why it was killed when `bound`
    /// stopped it.
    async fn run_task(&self, id: &str, bound: &LayerBound) -> Result<(u32, Option<String>)> {
        let info = self.client.containers().get_by_id(id).await?;
        let fifos = Fifos::new(
            id,
            StdioConfig {
                stdout: true,
                stderr: true,
                ..StdioConfig::default()
            },
        )?;
        let attached = fifos.attach(
            None,
            Box::new(std::io::stdout()),
            Box::new(std::io::stderr()),
            None,
        );
        let tasks = self.client.tasks();
        if let Err(e) = tasks.create(&info, &fifos.task_io()).await {
            attached.cancel();
            return Err(e.classify_start());
        }
        let mut over = None;
        let exit = match tasks.start(id, "").await {
            Ok(_) => {
                let wait = tasks.wait(id, "");
                tokio::pin!(wait);
                tokio::select! {
                    exit = &mut wait => exit,
                    why = bound.watch() => {
                        // SIGKILL to every process of the RUN: nothing more is written.
                        let _ = tasks.kill(id, "", 9, true).await;
                        over = Some(why);
                        wait.await
                    }
                }
            }
            Err(e) => Err(e.classify_start()),
        };
        attached.wait_output(Duration::from_secs(5)).await;
        let _ = tasks.delete(id).await;
        Ok((exit?.code, over))
    }

    async fn copy_step(
        &self,
        state: &StageState,
        copy: &berth_build::dockerfile::CopyAction,
        from: Option<Option<String>>,
    ) -> Result<(Blob, String, String)> {
        let parent = state.chain.as_deref();
        let (key, mounts) = self.prepare(parent).await?;
        // COPY --from reads another stage's (or image's) root filesystem through a View.
        let source = match &from {
            Some(Some(chain)) => {
                let view_key = format!("berth-build-view-{}", crate::names::new_id());
                let req = ViewSnapshotRequest {
                    snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
                    key: view_key.clone(),
                    parent: chain.clone(),
                    labels: HashMap::new(),
                };
                let view = self.snapshots().view(self.lease.request(req)).await;
                match view {
                    Ok(v) => Some((view_key, v.into_inner().mounts)),
                    Err(e) => {
                        self.remove_snapshot(&key).await;
                        return Err(e.into());
                    }
                }
            }
            Some(None) => {
                self.remove_snapshot(&key).await;
                return Err(Error::invalid(
                    "COPY --from=scratch: there is nothing to copy",
                ));
            }
            None => None,
        };
        let copy = copy.clone();
        let source_mounts = source.as_ref().map(|(_, m)| m.clone());
        let context: &Context = self.context;
        // Mounting and copying block; block_in_place keeps the borrowed context usable (the
        // CLI's runtime is multi-threaded, as this needs).
        let written = tokio::task::block_in_place(|| {
            with_mounted(&mounts, false, |root| match &source_mounts {
                None => write_copy(context, root, &copy),
                Some(sm) => with_mounted(sm, true, |src| {
                    let ctx =
                        Context::open_dir_with(src, &DockerIgnore::default(), &Limits::default())
                            .map_err(build_err)?;
                    write_copy(&ctx, root, &copy)
                }),
            })
        });
        if let Some((view_key, _)) = &source {
            self.remove_snapshot(view_key).await;
        }
        if let Err(e) = written {
            self.remove_snapshot(&key).await;
            return Err(e);
        }
        self.layer_or_remove(parent, &key).await
    }

    /// The cached layer of `key`, if its record, blob and snapshot are all still there.
    /// The layer cached under `key`, with when its step first ran (if the record says).
    async fn cached(&self, key: &str) -> Result<Option<((Blob, String, String), Option<String>)>> {
        use crate::api::services::content::v1::ListContentRequest;
        use crate::api::services::snapshots::v1::StatSnapshotRequest;
        let filter = format!("labels.\"{CACHE_LABEL}\"==\"{key}\"");
        let mut list = ContentClient::new(self.client.channel().clone())
            .list(self.client.request(ListContentRequest {
                filters: vec![filter],
            }))
            .await?
            .into_inner();
        let mut found = None;
        while let Some(page) = list.message().await? {
            if let Some(info) = page.info.into_iter().next() {
                found = Some(info);
                break;
            }
        }
        let Some(info) = found else { return Ok(None) };
        let bytes = self
            .client
            .images()
            .read_blob(&Descriptor {
                media_type: "application/json".to_string(),
                digest: info.digest.clone(),
                size: info.size,
                annotations: HashMap::new(),
            })
            .await?;
        let Ok(record) = serde_json::from_slice::<CacheRecord>(&bytes) else {
            return Ok(None);
        };
        if record.key != key {
            return Ok(None);
        }
        let stat = StatSnapshotRequest {
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            key: record.chain.clone(),
        };
        match self.snapshots().stat(self.client.request(stat)).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let layer = ContentClient::new(self.client.channel().clone())
            .info(self.client.request(InfoRequest {
                digest: record.digest.clone(),
            }))
            .await;
        match layer {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let first_ran = Some(record.created).filter(|c| !c.is_empty());
        Ok(Some((
            (
                Blob {
                    media_type: record.media_type,
                    digest: record.digest,
                    size: record.size,
                },
                record.diff_id,
                record.chain,
            ),
            first_ran,
        )))
    }

    /// Records a step's layer under [`CACHE_LEASE`].
    async fn remember(
        &self,
        key: &str,
        layer: &(Blob, String, String),
        created: &str,
    ) -> Result<()> {
        use crate::api::services::leases::v1::leases_client::LeasesClient;
        use crate::api::services::leases::v1::CreateRequest;
        let create = CreateRequest {
            id: CACHE_LEASE.to_string(),
            labels: HashMap::new(),
        };
        match LeasesClient::new(self.client.channel().clone())
            .create(self.client.request(create))
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Code::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let (blob, diff_id, chain) = layer;
        let record = CacheRecord {
            key: key.to_string(),
            media_type: blob.media_type.clone(),
            digest: blob.digest.clone(),
            size: blob.size,
            diff_id: diff_id.clone(),
            chain: chain.clone(),
            created: created.to_string(),
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| Error::invalid(format!("encode a cache record: {e}")))?;
        let labels = HashMap::from([
            (CACHE_LABEL.to_string(), key.to_string()),
            (
                "containerd.io/gc.ref.content.layer".to_string(),
                blob.digest.clone(),
            ),
            (
                format!("containerd.io/gc.ref.snapshot.{DEFAULT_SNAPSHOTTER}"),
                chain.clone(),
            ),
        ]);
        crate::layers::write_blob(
            self.client,
            CACHE_LEASE,
            "berth-build-",
            "application/json",
            bytes,
            labels,
        )
        .await
        .map(|_| ())
    }

    async fn write_image(
        &self,
        mut state: StageState,
        opts: &BuildOptions,
        progress: &Progress<'_>,
    ) -> Result<BuildOutcome> {
        for (k, v) in &opts.labels {
            state.doc.config.labels.insert(k.clone(), v.clone());
        }
        // The last step's time: a rebuild whose every step was cached makes the same image.
        state.doc.created = Some(
            state
                .doc
                .history
                .last()
                .and_then(|h| h.created.clone())
                .unwrap_or_else(|| crate::clock::rfc3339(std::time::SystemTime::now())),
        );
        let snapshot = state
            .chain
            .as_deref()
            .map(|chain| (DEFAULT_SNAPSHOTTER, chain));
        let (config, manifest_blob) = crate::layers::write_image(
            self.client,
            self.lease.id(),
            "berth-build-",
            &state.doc,
            &state.layers,
            snapshot,
        )
        .await?;
        let mut names = Vec::new();
        for tag in &opts.tags {
            let name = crate::images::normalize(tag);
            self.client.name_image(&name, &manifest_blob).await?;
            say(progress, format_args!("naming to {name}"));
            names.push(name);
        }
        say(progress, format_args!("writing image {}", config.digest));
        Ok(BuildOutcome {
            manifest_digest: manifest_blob.digest,
            config_digest: config.digest,
            names,
            containers_run: self.containers_run.load(Ordering::Relaxed),
            layers_written: self.layers_written.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
        })
    }
}

/// The bound on what one RUN writes. Two parts, because berthd's overlay snapshotter keeps
/// every upper directory on its own filesystem (no per-snapshot quota there, no project quotas
/// on ext4 as mounted here, and a tmpfs or loop upper would need the snapshotter to make one
/// filesystem per snapshot): RLIMIT_FSIZE stops any one file at the limit exactly (the kernel
/// refuses the write), and a watcher measures the upper directory every [`WATCH_INTERVAL`] and
/// kills the task once its files add up to more (or the filesystem runs low), so many small
/// files overshoot by at most what the RUN writes in one interval. The snapshot is then
/// removed: nothing the RUN wrote stays.
struct LayerBound {
    /// The RUN's upper directory, when the snapshot's mounts name one.
    upper: Option<PathBuf>,
    limit: u64,
}

impl LayerBound {
    fn limit_file_size(&self, spec: &mut oci_spec::runtime::Spec) {
        use oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType};
        let Some(process) = spec.process_mut() else {
            return;
        };
        let Ok(fsize) = PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitFsize)
            .hard(self.limit)
            .soft(self.limit)
            .build()
        else {
            return;
        };
        let mut rlimits = process.rlimits().clone().unwrap_or_default();
        rlimits.retain(|r| r.typ() != PosixRlimitType::RlimitFsize);
        rlimits.push(fsize);
        process.set_rlimits(Some(rlimits));
    }

    /// Why the RUN is over its bound now, if it is.
    async fn exceeded(&self) -> Option<String> {
        let upper = self.upper.clone()?;
        let limit = self.limit;
        tokio::task::spawn_blocking(move || {
            let written = tree_size(&upper);
            if written >= limit {
                return Some(format!(
                    "the RUN wrote {} into its layer and the limit is {} (--max-layer-size)",
                    binary_size(written as i64),
                    binary_size(limit as i64)
                ));
            }
            let free = nix::sys::statvfs::statvfs(&upper)
                .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
                .ok()?;
            (free < MIN_FREE_BYTES).then(|| {
                format!(
                    "the filesystem of berthd's snapshots has {} free, under the {} a build \
                     leaves",
                    binary_size(free as i64),
                    binary_size(MIN_FREE_BYTES as i64)
                )
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// Resolves once the RUN is over its bound; never without an upper directory to watch.
    async fn watch(&self) -> String {
        if self.upper.is_none() {
            return std::future::pending().await;
        }
        // A large tree takes a while to walk: the watcher keeps to about a fifth of a core.
        let mut pause = WATCH_INTERVAL;
        loop {
            tokio::time::sleep(pause).await;
            let started = Instant::now();
            if let Some(why) = self.exceeded().await {
                return why;
            }
            pause = WATCH_INTERVAL.max(started.elapsed() * 4);
        }
    }
}

/// Sizes in the binary units `--max-layer-size` takes (64m is 64MiB).
fn binary_size(bytes: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    let n = format!("{v:.1}");
    format!("{}{}", n.trim_end_matches(".0"), units[i])
}

/// The directory a snapshot's writes land in: overlay's `upperdir=`, or a bind mount's source
/// (a first layer, which the snapshotter hands out as a plain directory).
fn upper_dir(mounts: &[Mount]) -> Option<PathBuf> {
    let [m] = mounts else { return None };
    if m.r#type == "overlay" {
        return m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from);
    }
    m.options
        .iter()
        .any(|o| o == "bind" || o == "rbind")
        .then(|| PathBuf::from(&m.source))
}

/// The apparent size of the files under `root` (what the layer's tar would hold; a sparse
/// file counts whole), not following symlinks or leaving its filesystem. Entries that vanish
/// while it walks are skipped.
fn tree_size(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = 0u64;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if meta.dev() == dev {
                    dirs.push(entry.path());
                }
            } else if meta.is_file() {
                total = total.saturating_add(meta.size());
            }
        }
    }
    total
}

/// Whether this host runs the programs of a stage whose config says `doc`'s platform: its own
/// architecture, or one a registered and enabled binfmt_misc handler emulates. berth brings
/// no emulator, so without one a cross-platform RUN is refused before a container is made.
fn can_execute(doc: &ImageDocument) -> std::result::Result<(), String> {
    let host = Platform::host();
    if doc.architecture.is_empty() {
        return Ok(());
    }
    let stage = Platform::new(
        if doc.os.is_empty() { "linux" } else { &doc.os },
        &doc.architecture,
        doc.variant.as_deref().unwrap_or(""),
    )
    .normalized();
    if host.matches(&stage) || (stage.architecture == "386" && host.architecture == "amd64") {
        return Ok(());
    }
    if stage.os != host.os {
        return Err(format!(
            "this stage is {stage} and this host runs {}: a RUN cannot execute here",
            host.os
        ));
    }
    // binfmt_misc names its entries after the emulator, as qemu-user-static registers them.
    let qemu = match stage.architecture.as_str() {
        "arm64" => "aarch64",
        "386" => "i386",
        "amd64" => "x86_64",
        "ppc64le" => "ppc64le",
        other => other,
    };
    let entry = format!("/proc/sys/fs/binfmt_misc/qemu-{qemu}");
    match std::fs::read_to_string(&entry) {
        Ok(text) if text.lines().next() == Some("enabled") => Ok(()),
        _ => Err(format!(
            "this stage is {stage} and this host ({host}) cannot execute its programs: no \
             binfmt_misc emulator is registered for {} ({entry}); berth build brings none \
             (COPY and metadata steps build for any platform)",
            stage.architecture
        )),
    }
}

fn write_copy(
    context: &Context,
    root: &Path,
    copy: &berth_build::dockerfile::CopyAction,
) -> Result<()> {
    let keyword = if copy.add { "ADD" } else { "COPY" };
    let sources = context.select(keyword, &copy.sources).map_err(build_err)?;
    copy_into(
        context,
        root,
        &CopyRequest {
            sources: &sources,
            dest: &copy.dest,
            chown: copy.chown.as_deref(),
            chmod: copy.chmod,
            add: copy.add,
        },
    )
    .map_err(build_err)
}

/// Unmounts `dir`, waiting (at most 2 s) while it is busy: a process another thread of this
/// one starts holds a copy of every descriptor, close-on-exec ones included, until it execs, and
/// one inside the mount keeps the mount busy for that moment. containerd's unmount waits too.
fn unmount_when_free(dir: &Path) -> nix::Result<()> {
    use nix::mount::{umount2, MntFlags};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match umount2(dir, MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            done => return done,
        }
    }
}

/// Mounts a snapshot's mounts in a private temp dir for `f`, then unmounts.
pub(crate) fn with_mounted<T>(
    mounts: &[Mount],
    read_only: bool,
    f: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let dir = tempfile::Builder::new()
        .prefix("berth-build-root-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| Error::io("create a temp dir for a build mount", e))?;
    let [m] = mounts else {
        return Err(Error::local(
            Code::Unimplemented,
            format!(
                "a snapshot of {} mounts cannot be written here",
                mounts.len()
            ),
        ));
    };
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let fail = |e: nix::errno::Errno| {
        Error::io("mount a build snapshot (berth build needs root)", e.into())
    };
    if flags.contains(MsFlags::MS_BIND) {
        mount(
            Some(m.source.as_str()),
            dir.path(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(fail)?;
        if flags.contains(MsFlags::MS_RDONLY) {
            mount(
                None::<&str>,
                dir.path(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| {
                let _ = umount2(dir.path(), MntFlags::MNT_DETACH);
                fail(e)
            })?;
        }
    } else {
        let data = data.join(",");
        mount(
            Some(m.source.as_str()),
            dir.path(),
            Some(m.r#type.as_str()),
            flags,
            Some(data.as_str()),
        )
        .map_err(fail)?;
    }
    let result = f(dir.path());
    let unmounted = unmount_when_free(dir.path());
    if let Err(e) = unmounted {
        let _ = umount2(dir.path(), MntFlags::MNT_DETACH);
        if result.is_ok() {
            return Err(Error::io("unmount a build snapshot", e.into()));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: kind.to_string(),
            source: source.to_string(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Mount::default()
        }
    }

    #[test]
    fn the_upper_dir_is_where_a_run_writes() {
        let overlay = mount(
            "overlay",
            "overlay",
            &["workdir=/s/1/work", "upperdir=/s/1/fs", "lowerdir=/s/0/fs"],
        );
        assert_eq!(upper_dir(&[overlay]), Some(PathBuf::from("/s/1/fs")));
        let first = mount("bind", "/s/2/fs", &["rw", "rbind"]);
        assert_eq!(upper_dir(&[first]), Some(PathBuf::from("/s/2/fs")));
        // A read-only view, or mounts this cannot read, have nothing to watch.
        assert_eq!(
            upper_dir(&[mount("overlay", "overlay", &["lowerdir=/a:/b"])]),
            None
        );
        assert_eq!(upper_dir(&[]), None);
    }

    #[test]
    fn sizes_in_the_units_the_flag_takes() {
        assert_eq!(binary_size(64 << 20), "64MiB");
        assert_eq!(binary_size(10 << 30), "10GiB");
        assert_eq!(binary_size(1536), "1.5KiB");
        assert_eq!(binary_size(12), "12B");
    }

    #[test]
    fn a_stage_of_another_architecture_needs_an_emulator() {
        let host = Platform::host();
        let mut doc = ImageDocument::scratch(&host.architecture);
        assert_eq!(can_execute(&doc), Ok(()));
        doc.architecture = String::new();
        assert_eq!(
            can_execute(&doc),
            Ok(()),
            "no architecture: nothing to refuse"
        );
        doc.architecture = "s390x".to_string();
        if !Path::new("/proc/sys/fs/binfmt_misc/qemu-s390x").exists() {
            let why = can_execute(&doc).unwrap_err();
            assert!(
                why.contains("linux/s390x") && why.contains("binfmt_misc"),
                "{why}"
            );
        }
    }

    #[test]
    fn the_file_size_limit_goes_into_the_spec() {
        let mut spec = oci_spec::runtime::Spec::default();
        LayerBound {
            upper: None,
            limit: 64 << 20,
        }
        .limit_file_size(&mut spec);
        let rlimits = spec.process().as_ref().unwrap().rlimits().clone().unwrap();
        let fsize: Vec<_> = rlimits
            .iter()
            .filter(|r| r.typ() == oci_spec::runtime::PosixRlimitType::RlimitFsize)
            .collect();
        assert_eq!(fsize.len(), 1);
        assert_eq!((fsize[0].hard(), fsize[0].soft()), (64 << 20, 64 << 20));
    }
}
