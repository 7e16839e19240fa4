//! ContainerStats, PodSandboxStats and the cAdvisor-named metrics, read centrally: each
//! container's cgroup (its spec's `linux.cgroupsPath`) is read here through berth-cgroups,
//! at most once per [`SAMPLE_INTERVAL`] whatever the number of callers, and no shim is asked.
//! Nano cores come from the last two samples of a cgroup; the writable layer's usage from
//! the snapshotter (Snapshots.Usage, which walks the upper dir) is cached longer.

use crate::{Cri, CRI_KIND_CONTAINER, CRI_KIND_LABEL, CRI_KIND_SANDBOX};
use berth::api::services::containers::v1::containers_client::ContainersClient;
use berth::api::services::containers::v1::{Container, ListContainersRequest};
use berth::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth::api::services::snapshots::v1::UsageRequest;
use berth_api::runtime::v1 as cri;
use berth_cgroups::{Cgroup, Usage};
use berth_errdefs::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one read of a cgroup answers every stats call.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a writable layer's usage is reused (it costs a walk of the layer).
pub const LAYER_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    read_at: Instant,
    /// Unix nanoseconds of the read.
    timestamp: i64,
    usage: Usage,
    nano_cores: Option<u64>,
}

/// The shared cache of cgroup samples and layer usages.
#[derive(Default)]
pub(crate) struct StatsCache {
    samples: Mutex<HashMap<String, Sample>>,
    layers: Mutex<HashMap<String, (Instant, i64, u64, u64)>>,
    /// Cgroup reads done, for tests and logs.
    pub reads: AtomicU64,
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl StatsCache {
    /// The sample of each cgroup path, reading only those older than the interval (on one
    /// blocking thread for the lot). A cgroup that cannot be read is left out.
    pub(crate) async fn samples(
        self: &Arc<Self>,
        paths: Vec<String>,
    ) -> Result<HashMap<String, Sample>> {
        let me = self.clone();
        crate::blocking(move || Ok(me.samples_blocking(&paths))).await
    }

    fn samples_blocking(&self, paths: &[String]) -> HashMap<String, Sample> {
        let mut out = HashMap::new();
        let mut stale = Vec::new();
        {
            let cache = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            for p in paths {
                match cache.get(p) {
                    Some(s) if s.read_at.elapsed() < SAMPLE_INTERVAL => {
                        out.insert(p.clone(), *s);
                    }
                    _ => stale.push(p.clone()),
                }
            }
        }
        let mut fresh = Vec::new();
        // One read of the mount table for the lot.
        let cgroups = match Cgroup::of_paths(&stale) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("stats: the cgroup mounts: {e}");
                return out;
            }
        };
        for (p, cgroup) in stale.into_iter().zip(cgroups) {
            self.reads.fetch_add(1, Ordering::Relaxed);
            match cgroup.and_then(|c| c.usage()) {
                Ok(usage) => fresh.push((p, usage, Instant::now(), now_nanos())),
                Err(e) => tracing::debug!(cgroup = %p, "stats: {e}"),
            }
        }
        let mut cache = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        for (p, usage, read_at, timestamp) in fresh {
            let nano_cores = cache.get(&p).and_then(|prev| {
                let dt = u64::try_from(timestamp.checked_sub(prev.timestamp)?).ok()?;
                let dcpu = usage.cpu_usage_ns.checked_sub(prev.usage.cpu_usage_ns)?;
                (dt > 0).then(|| {
                    u64::try_from(u128::from(dcpu) * 1_000_000_000 / u128::from(dt))
                        .unwrap_or(u64::MAX)
                })
            });
            let s = Sample {
                read_at,
                timestamp,
                usage,
                nano_cores,
            };
            cache.insert(p.clone(), s);
            out.insert(p, s);
        }
        // Forget cgroups nobody asked about for a while (removed containers).
        cache.retain(|_, s| s.read_at.elapsed() < SAMPLE_INTERVAL * 60);
        out
    }

    /// (timestamp, bytes, inodes) of the container's writable layer, if it has one.
    pub(crate) async fn layer(
        &self,
        client: &berth::Client,
        c: &Container,
    ) -> Option<(i64, u64, u64)> {
        if c.snapshot_key.is_empty() {
            return None;
        }
        if let Some((at, ts, b, i)) = self
            .layers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.id)
        {
            if at.elapsed() < LAYER_INTERVAL {
                return Some((*ts, *b, *i));
            }
        }
        let req = UsageRequest {
            snapshotter: c.snapshotter.clone(),
            key: c.snapshot_key.clone(),
        };
        let u = SnapshotsClient::new(client.channel().clone())
            .usage(berth::with_namespace(client.namespace(), req))
            .await
            .map_err(|e| tracing::debug!(id = %c.id, "layer usage: {e}"))
            .ok()?
            .into_inner();
        let (bytes, inodes) = (
            u64::try_from(u.size).unwrap_or(0),
            u64::try_from(u.inodes).unwrap_or(0),
        );
        let ts = now_nanos();
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        layers.insert(c.id.clone(), (Instant::now(), ts, bytes, inodes));
        layers.retain(|_, (at, ..)| at.elapsed() < LAYER_INTERVAL * 30);
        Some((ts, bytes, inodes))
    }
}

/// How many layer usages one stats call asks the snapshotter for at a time.
const LAYER_USAGE_CONCURRENCY: usize = 8;

pub(crate) fn spec_of(c: &Container) -> Option<serde_json::Value> {
    c.spec
        .as_ref()
        .and_then(|s| serde_json::from_slice(&s.value).ok())
}

pub(crate) fn cgroup_path(c: &Container) -> Option<String> {
    // Only the one field is decoded: a spec is ~10 KiB of JSON, and ListContainerStats asks
    // this of every container.
    #[derive(serde::Deserialize)]
    struct Spec {
        linux: Option<Linux>,
    }
    #[derive(serde::Deserialize)]
    struct Linux {
        #[serde(rename = "cgroupsPath")]
        cgroups_path: Option<String>,
    }
    let spec: Spec = serde_json::from_slice(&c.spec.as_ref()?.value).ok()?;
    spec.linux?.cgroups_path.filter(|p| p.starts_with('/'))
}

fn annotations(c: &Container) -> HashMap<String, String> {
    if let Some(cfg) = container_config(c) {
        return cfg.annotations;
    }
    if let Some(cfg) = pod_config(c) {
        return cfg.annotations;
    }
    spec_of(c)
        .and_then(|s| serde_json::from_value(s["annotations"].clone()).ok())
        .unwrap_or_default()
}

/// The CRI config the store keeps in a container's record (`store::CONFIG_EXT`).
fn container_config(c: &Container) -> Option<cri::ContainerConfig> {
    (label(c, CRI_KIND_LABEL) == CRI_KIND_CONTAINER)
        .then(|| c.extensions.get(crate::store::CONFIG_EXT))
        .flatten()
        .and_then(|a| prost::Message::decode(a.value.as_slice()).ok())
}

/// The same for a pod's record.
fn pod_config(c: &Container) -> Option<cri::PodSandboxConfig> {
    (label(c, CRI_KIND_LABEL) == CRI_KIND_SANDBOX)
        .then(|| c.extensions.get(crate::store::CONFIG_EXT))
        .flatten()
        .and_then(|a| prost::Message::decode(a.value.as_slice()).ok())
}

/// The CRI labels: the config's, else the record's (records made by other clients).
fn cri_labels(c: &Container) -> HashMap<String, String> {
    if let Some(cfg) = container_config(c) {
        return cfg.labels;
    }
    if let Some(cfg) = pod_config(c) {
        return cfg.labels;
    }
    c.labels.clone()
}

/// A pod's metadata: its config's, else the kubelet's `io.kubernetes.pod.*` labels.
pub(crate) fn pod_metadata(pod: &Container) -> cri::PodSandboxMetadata {
    pod_config(pod)
        .and_then(|cfg| cfg.metadata)
        .unwrap_or_else(|| cri::PodSandboxMetadata {
            name: label(pod, "io.kubernetes.pod.name").to_string(),
            uid: label(pod, "io.kubernetes.pod.uid").to_string(),
            namespace: label(pod, "io.kubernetes.pod.namespace").to_string(),
            attempt: 0,
        })
}

fn label<'a>(c: &'a Container, key: &str) -> &'a str {
    c.labels.get(key).map_or("", String::as_str)
}

fn matches(c: &Container, id: &str, selector: &HashMap<String, String>) -> bool {
    selected(&c.id, &cri_labels(c), id, selector)
}

/// Whether an object with `own_id` and `labels` passes a CRI filter's id prefix and selector.
fn selected(
    own_id: &str,
    labels: &HashMap<String, String>,
    id: &str,
    selector: &HashMap<String, String>,
) -> bool {
    (id.is_empty() || own_id.starts_with(id))
        && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn u64v(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// A container's id, CRI metadata, labels and annotations, its CRI config decoded once (a
/// ListContainerStats asks this of every container); records other clients made fall back to
/// their labels and spec.
fn container_attributes(c: &Container) -> cri::ContainerAttributes {
    let fallback_metadata = || {
        let name = match label(c, "io.kubernetes.container.name") {
            "" => c.id.clone(),
            n => n.to_string(),
        };
        let attempt = label(c, "io.kubernetes.container.restartCount")
            .parse()
            .unwrap_or(0);
        cri::ContainerMetadata { name, attempt }
    };
    let (metadata, labels, annotations) = match container_config(c) {
        Some(cfg) => (
            cfg.metadata.unwrap_or_else(fallback_metadata),
            cfg.labels,
            cfg.annotations,
        ),
        None => (fallback_metadata(), cri_labels(c), annotations(c)),
    };
    cri::ContainerAttributes {
        id: c.id.clone(),
        metadata: Some(metadata),
        labels,
        annotations,
    }
}

fn container_stats(
    attributes: cri::ContainerAttributes,
    s: Option<&Sample>,
    layer: Option<(i64, u64, u64)>,
    fs_mount: &str,
) -> cri::ContainerStats {
    cri::ContainerStats {
        attributes: Some(attributes),
        cpu: s.map(|s| cri::CpuUsage {
            timestamp: s.timestamp,
            usage_core_nano_seconds: u64v(s.usage.cpu_usage_ns),
            usage_nano_cores: u64v(s.nano_cores.unwrap_or(0)),
            psi: None,
        }),
        memory: s.map(|s| cri::MemoryUsage {
            timestamp: s.timestamp,
            working_set_bytes: u64v(s.usage.working_set),
            available_bytes: None,
            usage_bytes: u64v(s.usage.memory_usage),
            rss_bytes: u64v(s.usage.rss),
            page_faults: u64v(s.usage.page_faults),
            major_page_faults: u64v(s.usage.major_page_faults),
            psi: None,
        }),
        writable_layer: layer.map(|(ts, bytes, inodes)| cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: fs_mount.to_string(),
            }),
            used_bytes: u64v(bytes),
            inodes_used: u64v(inodes),
        }),
        swap: None,
        io: None,
    }
}

/// Each interface of a netns from `/proc/thread-self/net/dev` of a thread that entered it
/// (and ends right after).
async fn net_dev(netns: std::path::PathBuf) -> Option<Vec<NetDevRow>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cri-netstats".into())
        .spawn(move || {
            let text = (|| -> std::io::Result<String> {
                let f = std::fs::File::open(&netns)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                std::fs::read_to_string("/proc/thread-self/net/dev")
            })();
            let _ = tx.send(text);
        })
        .ok()?;
    let text = rx.await.ok()?.ok()?;
    Some(parse_net_dev(&text))
}

/// One interface's counters from `/proc/net/dev`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct NetDevRow {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The interfaces but loopback (the kubelet counts pod traffic, not lo's).
fn parse_net_dev(text: &str) -> Vec<NetDevRow> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() >= 12 && name.trim() != "lo").then(|| NetDevRow {
                name: name.trim().to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

fn interface_usage(r: &NetDevRow) -> cri::NetworkInterfaceUsage {
    cri::NetworkInterfaceUsage {
        name: r.name.clone(),
        rx_bytes: u64v(r.rx_bytes),
        rx_errors: u64v(r.rx_errors),
        tx_bytes: u64v(r.tx_bytes),
        tx_errors: u64v(r.tx_errors),
    }
}

/// A container's name for metric labels: its CRI metadata's, else its record id.
pub(crate) fn label_of(c: &Container) -> String {
    container_config(c)
        .and_then(|cfg| cfg.metadata)
        .map(|m| m.name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| match label(c, "io.kubernetes.container.name") {
            "" => c.id.clone(),
            n => n.to_string(),
        })
}

impl Cri {
    pub(crate) async fn raw_records(&self, kind: &str) -> Result<Vec<Container>> {
        let req = ListContainersRequest {
            filters: vec![format!("labels.\"{CRI_KIND_LABEL}\"=={kind}")],
        };
        Ok(ContainersClient::new(self.client.channel().clone())
            .list(berth::with_namespace(self.client.namespace(), req))
            .await
            .map_err(Error::from)?
            .into_inner()
            .containers)
    }

    pub(crate) fn fs_mount(&self) -> String {
        self.settings
            .root
            .join("snapshots")
            .join("overlayfs")
            .display()
            .to_string()
    }

    async fn stats_of(&self, containers: &[Container]) -> Result<Vec<cri::ContainerStats>> {
        let attributes = containers.iter().map(container_attributes).collect();
        self.stats_with(containers, attributes).await
    }

    /// The stats of `containers`, each with its `attributes` (in the same order).
    async fn stats_with(
        &self,
        containers: &[Container],
        attributes: Vec<cri::ContainerAttributes>,
    ) -> Result<Vec<cri::ContainerStats>> {
        // No task is asked: a container without a cgroup (not started, or deleted) simply
        // has no CPU and memory numbers.
        let paths: Vec<Option<String>> = containers.iter().map(cgroup_path).collect();
        let samples = self
            .stats
            .samples(paths.iter().flatten().cloned().collect())
            .await?;
        // Cached for a while; when stale, asked of the snapshotter a few containers at a time
        // rather than one after another (each answer is a walk of the container's upper dir).
        let mut layers = Vec::with_capacity(containers.len());
        for some in containers.chunks(LAYER_USAGE_CONCURRENCY) {
            let asks: Vec<_> = some
                .iter()
                .map(|c| self.stats.layer(&self.client, c))
                .collect();
            layers.extend(futures_util::future::join_all(asks).await);
        }
        let fs_mount = self.fs_mount();
        Ok(attributes
            .into_iter()
            .zip(paths)
            .zip(layers)
            .map(|((attributes, path), layer)| {
                let sample = path.and_then(|p| samples.get(&p));
                container_stats(attributes, sample, layer, &fs_mount)
            })
            .collect())
    }

    pub(crate) async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let c = crate::streaming::container(&self.client, id).await?;
        let mut stats = self.stats_of(std::slice::from_ref(&c)).await?;
        stats
            .pop()
            .ok_or_else(|| Error::internal(format!("no stats for {id}")))
    }

    pub(crate) async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let f = filter.unwrap_or_default();
        let (containers, attributes): (Vec<Container>, Vec<cri::ContainerAttributes>) = self
            .raw_records(CRI_KIND_CONTAINER)
            .await?
            .into_iter()
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox.starts_with(&f.pod_sandbox_id))
            .map(|c| {
                let a = container_attributes(&c);
                (c, a)
            })
            .filter(|(c, a)| selected(&c.id, &a.labels, &f.id, &f.label_selector))
            .unzip();
        self.stats_with(&containers, attributes).await
    }

    async fn pod_stats(
        &self,
        pod: &Container,
        containers: &[Container],
    ) -> Result<cri::PodSandboxStats> {
        let mine: Vec<Container> = containers
            .iter()
            .filter(|c| c.sandbox == pod.id)
            .cloned()
            .collect();
        let stats = self.stats_of(&mine).await?;
        let ts = now_nanos();
        let sum = |f: &dyn Fn(&cri::ContainerStats) -> Option<u64>| -> u64 {
            stats.iter().filter_map(f).sum()
        };
        let cpu = cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: u64v(sum(&|s| {
                s.cpu
                    .as_ref()?
                    .usage_core_nano_seconds
                    .as_ref()
                    .map(|v| v.value)
            })),
            usage_nano_cores: u64v(sum(&|s| {
                s.cpu.as_ref()?.usage_nano_cores.as_ref().map(|v| v.value)
            })),
            psi: None,
        };
        let mem = |pick: fn(&cri::MemoryUsage) -> &Option<cri::UInt64Value>| {
            u64v(sum(&|s| pick(s.memory.as_ref()?).as_ref().map(|v| v.value)))
        };
        let memory = cri::MemoryUsage {
            timestamp: ts,
            working_set_bytes: mem(|m| &m.working_set_bytes),
            available_bytes: None,
            usage_bytes: mem(|m| &m.usage_bytes),
            rss_bytes: mem(|m| &m.rss_bytes),
            page_faults: mem(|m| &m.page_faults),
            major_page_faults: mem(|m| &m.major_page_faults),
            psi: None,
        };
        let pids: u64 = {
            let paths: Vec<String> = mine.iter().filter_map(cgroup_path).collect();
            let samples = self.stats.samples(paths).await?;
            samples.values().map(|s| s.usage.pids).sum()
        };
        let network = self.pod_net_dev(pod).await.map(|rows| {
            let ifs: Vec<cri::NetworkInterfaceUsage> = rows.iter().map(interface_usage).collect();
            cri::NetworkUsage {
                timestamp: ts,
                default_interface: ifs
                    .iter()
                    .find(|i| i.name == "eth0")
                    .or(ifs.first())
                    .cloned(),
                interfaces: ifs,
            }
        });
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: Some(pod_metadata(pod)),
                labels: cri_labels(pod),
                annotations: annotations(pod),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cpu),
                memory: Some(memory),
                network,
                process: Some(cri::ProcessUsage {
                    timestamp: ts,
                    process_count: u64v(pids),
                }),
                containers: stats,
                io: None,
            }),
            windows: None,
        })
    }

    /// The pod's interfaces, when it has a network namespace of its own.
    pub(crate) async fn pod_net_dev(&self, pod: &Container) -> Option<Vec<NetDevRow>> {
        let key = berth_net::AttachmentKey::new(self.client.namespace(), pod.id.as_str());
        let net = self.net.clone();
        let netns = crate::blocking(move || Ok(net.inspect(&key).ok().map(|a| a.netns)))
            .await
            .ok()??;
        net_dev(netns).await
    }

    pub(crate) async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let pod = crate::streaming::sandbox(&self.client, id).await?;
        let containers = self.raw_records(CRI_KIND_CONTAINER).await?;
        self.pod_stats(&pod, &containers).await
    }

    pub(crate) async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>> {
        let f = filter.unwrap_or_default();
        let pods: Vec<Container> = self
            .raw_records(CRI_KIND_SANDBOX)
            .await?
            .into_iter()
            .filter(|p| matches(p, &f.id, &f.label_selector))
            .collect();
        let containers = self.raw_records(CRI_KIND_CONTAINER).await?;
        let mut out = Vec::with_capacity(pods.len());
        for p in &pods {
            out.push(self.pod_stats(p, &containers).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_parses() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    1234      10    2    0    0     0          0         0     5678      20    3    0    0     0       0          0\n";
        let ifs = parse_net_dev(text);
        assert_eq!(ifs.len(), 1);
        assert_eq!(ifs[0].name, "eth0");
        assert_eq!(
            ifs[0],
            NetDevRow {
                name: "eth0".into(),
                rx_bytes: 1234,
                rx_packets: 10,
                rx_errors: 2,
                rx_dropped: 0,
                tx_bytes: 5678,
                tx_packets: 20,
                tx_errors: 3,
                tx_dropped: 0,
            }
        );
        let usage = interface_usage(&ifs[0]);
        assert_eq!(usage.rx_bytes.map(|v| v.value), Some(1234));
        assert_eq!(usage.tx_errors.map(|v| v.value), Some(3));
    }

    /// A real cgroup made for the test: read once per interval however often asked.
    #[test]
    fn the_cache_reads_a_cgroup_once_per_interval() {
        let name = format!("/berth-stats-test-{}", std::process::id());
        let memory = format!("/sys/fs/cgroup/memory{name}");
        let unified = format!("/sys/fs/cgroup{name}");
        let dir = if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
            memory
        } else {
            unified
        };
        if let Err(e) = std::fs::create_dir(&dir) {
            berth_testkit::skip::skip_unless_ci(
                "the_cache_reads_a_cgroup_once_per_interval",
                &format!("cannot make a cgroup ({e}); needs root"),
            );
            return;
        }
        let cache = StatsCache::default();
        let paths = vec![name.clone()];
        let a = cache.samples_blocking(&paths);
        for _ in 0..50 {
            let b = cache.samples_blocking(&paths);
            assert_eq!(b[&name].timestamp, a[&name].timestamp);
        }
        assert_eq!(cache.reads.load(Ordering::Relaxed), 1);
        std::thread::sleep(SAMPLE_INTERVAL + Duration::from_millis(50));
        let c = cache.samples_blocking(&paths);
        assert_eq!(cache.reads.load(Ordering::Relaxed), 2);
        assert!(c[&name].timestamp > a[&name].timestamp);
        // Two samples give a rate.
        assert!(c[&name].nano_cores.is_some());
        let _ = std::fs::remove_dir(&dir);
    }
}
