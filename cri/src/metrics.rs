//! ListMetricDescriptors and ListPodSandboxMetrics: the kubelet's CRI stats provider asks the
//! runtime for the metrics cAdvisor would have exported, under cAdvisor's names, help and label
//! keys, and serves them as its `/metrics/cadvisor`. So the names here are that contract, not
//! ours to choose. Each container's numbers come from one read of its whole cgroup (berth-cgroups'
//! containerd metrics, v1 or v2), its processes in /proc, its OCI spec, its writable layer and the
//! snapshot filesystem; the pod's own ("POD") metrics are its network interfaces.
//!
//! Every descriptor listed here has a value for every running container (critest checks both
//! ways), except the block-I/O and hugetlb ones, which exist only where the kernel accounts them.

use crate::stats::{cgroup_path, label_of, pod_metadata, spec_of, NetDevRow};
use crate::{Cri, CRI_KIND_CONTAINER, CRI_KIND_SANDBOX};
use berth::api::services::containers::v1::Container;
use berth_api::io::containerd::cgroups::{v1, v2};
use berth_api::runtime::v1 as cri;
use berth_cgroups::Cgroup;
use berth_errdefs::Result;
use std::collections::HashMap;
use std::path::Path;

use cri::MetricType::{Counter, Gauge};

/// cAdvisor's label keys every container metric starts with, in the order its values follow.
const BASE_LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

struct Desc {
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    /// Label keys after [`BASE_LABELS`].
    extra: &'static [&'static str],
}

const fn d(
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    extra: &'static [&'static str],
) -> Desc {
    Desc {
        name,
        help,
        kind,
        extra,
    }
}

const DEVICE: &[&str] = &["device"];
const IFACE: &[&str] = &["interface"];

/// The metrics served. The help texts are written for berth; the names and label keys are
/// cAdvisor's (the kubelet and dashboards key on them).
const DESCS: &[Desc] = &[
    d(
        "container_cpu_usage_seconds_total",
        "CPU time used by the container, seconds.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_user_seconds_total",
        "CPU time the container spent in user mode, seconds.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_system_seconds_total",
        "CPU time the container spent in the kernel, seconds.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_cfs_periods_total",
        "CFS enforcement periods that elapsed.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_cfs_throttled_periods_total",
        "CFS periods in which the container was throttled.",
        Counter,
        &[],
    ),
    d(
        "container_cpu_cfs_throttled_seconds_total",
        "Time the container was throttled, seconds.",
        Counter,
        &[],
    ),
    d(
        "container_memory_usage_bytes",
        "Memory charged to the container, all pages included, bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_max_usage_bytes",
        "Highest memory usage seen, bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_working_set_bytes",
        "Memory usage less inactive file pages, bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_rss",
        "Anonymous memory and swap cache, bytes.",
        Gauge,
        &[],
    ),
    d("container_memory_cache", "Page cache, bytes.", Gauge, &[]),
    d(
        "container_memory_mapped_file",
        "File pages mapped into the container's processes, bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_swap",
        "Swap used by the container, bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_kernel_usage",
        "Kernel memory charged to the container, bytes.",
        Gauge,
        &[],
    ),
    d(
        "container_memory_failcnt",
        "Times memory usage hit the limit.",
        Counter,
        &[],
    ),
    d(
        "container_memory_failures_total",
        "Page faults, by type and by scope.",
        Counter,
        &["failure_type", "scope"],
    ),
    d(
        "container_oom_events_total",
        "OOM kills in the container.",
        Counter,
        &[],
    ),
    d(
        "container_processes",
        "Processes in the container.",
        Gauge,
        &[],
    ),
    d("container_threads", "Threads in the container.", Gauge, &[]),
    d(
        "container_threads_max",
        "The container's task limit (0: none).",
        Gauge,
        &[],
    ),
    d(
        "container_file_descriptors",
        "Open file descriptors of the container's processes.",
        Gauge,
        &[],
    ),
    d(
        "container_sockets",
        "Open sockets of the container's processes.",
        Gauge,
        &[],
    ),
    d(
        "container_fs_usage_bytes",
        "Bytes the container's writable layer uses on its filesystem.",
        Gauge,
        DEVICE,
    ),
    d(
        "container_fs_limit_bytes",
        "Size of the filesystem holding the container's layer, bytes.",
        Gauge,
        DEVICE,
    ),
    d(
        "container_fs_inodes_total",
        "Inodes of the filesystem holding the container's layer.",
        Gauge,
        DEVICE,
    ),
    d(
        "container_fs_inodes_free",
        "Free inodes of the filesystem holding the container's layer.",
        Gauge,
        DEVICE,
    ),
    d(
        "container_fs_reads_bytes_total",
        "Bytes the container read from a block device.",
        Counter,
        DEVICE,
    ),
    d(
        "container_fs_writes_bytes_total",
        "Bytes the container wrote to a block device.",
        Counter,
        DEVICE,
    ),
    d(
        "container_fs_reads_total",
        "Reads the container completed on a block device.",
        Counter,
        DEVICE,
    ),
    d(
        "container_fs_writes_total",
        "Writes the container completed on a block device.",
        Counter,
        DEVICE,
    ),
    d(
        "container_blkio_device_usage_total",
        "Block device I/O of the container, bytes.",
        Counter,
        &["device", "major", "minor", "operation"],
    ),
    d(
        "container_hugetlb_usage_bytes",
        "Huge pages in use, bytes, by page size.",
        Gauge,
        &["pagesize"],
    ),
    d(
        "container_hugetlb_max_usage_bytes",
        "Highest huge page usage seen, bytes, by page size.",
        Gauge,
        &["pagesize"],
    ),
    d(
        "container_spec_cpu_period",
        "The container's CFS period, microseconds.",
        Gauge,
        &[],
    ),
    d(
        "container_spec_cpu_quota",
        "The container's CFS quota, microseconds (0: none).",
        Gauge,
        &[],
    ),
    d(
        "container_spec_cpu_shares",
        "The container's CPU shares.",
        Gauge,
        &[],
    ),
    d(
        "container_spec_memory_limit_bytes",
        "The container's memory limit, bytes (0: none).",
        Gauge,
        &[],
    ),
    d(
        "container_spec_memory_reservation_limit_bytes",
        "The container's memory reservation, bytes (0: none).",
        Gauge,
        &[],
    ),
    d(
        "container_spec_memory_swap_limit_bytes",
        "The container's memory+swap limit, bytes (0: none).",
        Gauge,
        &[],
    ),
    d(
        "container_start_time_seconds",
        "When the container started, Unix seconds.",
        Gauge,
        &[],
    ),
    d(
        "container_last_seen",
        "When these numbers were read, Unix seconds.",
        Gauge,
        &[],
    ),
    d(
        "container_network_receive_bytes_total",
        "Bytes received.",
        Counter,
        IFACE,
    ),
    d(
        "container_network_receive_packets_total",
        "Packets received.",
        Counter,
        IFACE,
    ),
    d(
        "container_network_receive_errors_total",
        "Receive errors.",
        Counter,
        IFACE,
    ),
    d(
        "container_network_receive_packets_dropped_total",
        "Received packets dropped.",
        Counter,
        IFACE,
    ),
    d(
        "container_network_transmit_bytes_total",
        "Bytes transmitted.",
        Counter,
        IFACE,
    ),
    d(
        "container_network_transmit_packets_total",
        "Packets transmitted.",
        Counter,
        IFACE,
    ),
    d(
        "container_network_transmit_errors_total",
        "Transmit errors.",
        Counter,
        IFACE,
    ),
    d(
        "container_network_transmit_packets_dropped_total",
        "Transmitted packets dropped.",
        Counter,
        IFACE,
    ),
];

/// One block-I/O counter of a device.
#[derive(Debug, Clone, Default, PartialEq)]
struct DeviceIo {
    device: String,
    major: u64,
    minor: u64,
    read_bytes: u64,
    write_bytes: u64,
    reads: u64,
    writes: u64,
}

/// What a container's cgroup and processes say, in cAdvisor's units (before seconds).
#[derive(Debug, Clone, Default, PartialEq)]
struct Numbers {
    cpu_ns: u64,
    cpu_user_ns: u64,
    cpu_system_ns: u64,
    cfs_periods: u64,
    cfs_throttled_periods: u64,
    cfs_throttled_ns: u64,
    mem_usage: u64,
    mem_max_usage: u64,
    mem_working_set: u64,
    mem_rss: u64,
    mem_cache: u64,
    mem_mapped: u64,
    mem_swap: u64,
    mem_kernel: u64,
    mem_failcnt: u64,
    /// (container-scope, hierarchy-scope) page faults and major faults.
    pgfault: (u64, u64),
    pgmajfault: (u64, u64),
    oom_kills: u64,
    tasks_limit: u64,
    devices: Vec<DeviceIo>,
    /// (page size, usage, max usage)
    hugetlb: Vec<(String, u64, u64)>,
    processes: u64,
    threads: u64,
    fds: u64,
    sockets: u64,
}

fn from_v1(m: &v1::Metrics, n: &mut Numbers) {
    if let Some(cpu) = &m.cpu {
        if let Some(u) = &cpu.usage {
            (n.cpu_ns, n.cpu_user_ns, n.cpu_system_ns) = (u.total, u.user, u.kernel);
        }
        if let Some(t) = &cpu.throttling {
            n.cfs_periods = t.periods;
            n.cfs_throttled_periods = t.throttled_periods;
            n.cfs_throttled_ns = t.throttled_time;
        }
    }
    if let Some(mem) = &m.memory {
        let usage = mem.usage.unwrap_or_default();
        n.mem_usage = usage.usage;
        n.mem_max_usage = usage.max;
        n.mem_failcnt = usage.failcnt;
        n.mem_working_set = usage.usage.saturating_sub(mem.total_inactive_file);
        n.mem_rss = mem.total_rss;
        n.mem_cache = mem.total_cache;
        n.mem_mapped = mem.total_mapped_file;
        // v1's swap entry is memory+swap (memsw); what is swapped is the difference.
        n.mem_swap = mem
            .swap
            .as_ref()
            .map_or(0, |s| s.usage.saturating_sub(usage.usage));
        n.mem_kernel = mem.kernel.as_ref().map_or(0, |k| k.usage);
        n.pgfault = (mem.pg_fault, mem.total_pg_fault);
        n.pgmajfault = (mem.pg_maj_fault, mem.total_pg_maj_fault);
    }
    n.oom_kills = m.memory_oom_control.as_ref().map_or(0, |o| o.oom_kill);
    n.tasks_limit = m.pids.as_ref().map_or(0, |p| p.limit);
    if let Some(b) = &m.blkio {
        let mut devices: Vec<DeviceIo> = Vec::new();
        let mut add = |e: &v1::BlkIoEntry, bytes: bool| {
            let i = match devices
                .iter()
                .position(|d| (d.major, d.minor) == (e.major, e.minor))
            {
                Some(i) => i,
                None => {
                    devices.push(DeviceIo {
                        device: e.device.clone(),
                        major: e.major,
                        minor: e.minor,
                        ..DeviceIo::default()
                    });
                    devices.len() - 1
                }
            };
            let d = &mut devices[i];
            match (e.op.to_ascii_lowercase().as_str(), bytes) {
                ("read", true) => d.read_bytes += e.value,
                ("write", true) => d.write_bytes += e.value,
                ("read", false) => d.reads += e.value,
                ("write", false) => d.writes += e.value,
                _ => {}
            }
        };
        for e in &b.io_service_bytes_recursive {
            add(e, true);
        }
        for e in &b.io_serviced_recursive {
            add(e, false);
        }
        n.devices = devices;
    }
    n.hugetlb = m
        .hugetlb
        .iter()
        .map(|h| (h.pagesize.clone(), h.usage, h.max))
        .collect();
}

fn from_v2(m: &v2::Metrics, n: &mut Numbers) {
    if let Some(cpu) = &m.cpu {
        n.cpu_ns = cpu.usage_usec.saturating_mul(1000);
        n.cpu_user_ns = cpu.user_usec.saturating_mul(1000);
        n.cpu_system_ns = cpu.system_usec.saturating_mul(1000);
        n.cfs_periods = cpu.nr_periods;
        n.cfs_throttled_periods = cpu.nr_throttled;
        n.cfs_throttled_ns = cpu.throttled_usec.saturating_mul(1000);
    }
    if let Some(mem) = &m.memory {
        n.mem_usage = mem.usage;
        // v2 keeps no peak in containerd's metrics: the current usage is the best lower bound.
        n.mem_max_usage = mem.usage;
        n.mem_working_set = mem.usage.saturating_sub(mem.inactive_file);
        n.mem_rss = mem.anon;
        n.mem_cache = mem.file;
        n.mem_mapped = mem.file_mapped;
        n.mem_swap = mem.swap_usage;
        n.mem_kernel = mem.kernel_stack + mem.slab + mem.sock;
        n.pgfault = (mem.pgfault, mem.pgfault);
        n.pgmajfault = (mem.pgmajfault, mem.pgmajfault);
    }
    if let Some(e) = &m.memory_events {
        n.oom_kills = e.oom_kill;
        // v2 has no failcnt; hitting memory.max is the same event.
        n.mem_failcnt = e.max;
    }
    n.tasks_limit = m.pids.as_ref().map_or(0, |p| p.limit);
    if let Some(io) = &m.io {
        n.devices = io
            .usage
            .iter()
            .map(|e| DeviceIo {
                device: format!("{}:{}", e.major, e.minor),
                major: e.major,
                minor: e.minor,
                read_bytes: e.rbytes,
                write_bytes: e.wbytes,
                reads: e.rios,
                writes: e.wios,
            })
            .collect();
    }
    n.hugetlb = m
        .hugetlb
        .iter()
        .map(|h| (h.pagesize.clone(), h.current, h.current))
        .collect();
}

/// Threads, open descriptors and sockets of these processes; a process that exits meanwhile
/// simply counts no more.
fn process_counts(pids: &[u32], n: &mut Numbers) {
    n.processes = pids.len() as u64;
    for pid in pids {
        let proc_dir = Path::new("/proc").join(pid.to_string());
        if let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) {
            n.threads += tasks.count() as u64;
        }
        if let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) {
            for fd in fds.flatten() {
                n.fds += 1;
                if std::fs::read_link(fd.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                {
                    n.sockets += 1;
                }
            }
        }
    }
}

/// Read one cgroup (blocking).
fn read_numbers(path: &str) -> std::io::Result<Numbers> {
    let cgroup = Cgroup::of_path(path)?;
    let any = cgroup.metrics()?;
    let mut n = Numbers::default();
    if let Ok(m) = berth_api::unpack_any::<v1::Metrics>(&any) {
        from_v1(&m, &mut n);
    } else if let Ok(m) = berth_api::unpack_any::<v2::Metrics>(&any) {
        from_v2(&m, &mut n);
    }
    process_counts(&cgroup.processes()?, &mut n);
    Ok(n)
}

/// The OCI spec's resources, as cAdvisor's `container_spec_*` report them (0: unset).
fn spec_numbers(c: &Container) -> [(&'static str, u64); 6] {
    let spec = spec_of(c).unwrap_or_default();
    let r = &spec["linux"]["resources"];
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    [
        ("container_spec_cpu_period", u(&r["cpu"]["period"])),
        ("container_spec_cpu_quota", u(&r["cpu"]["quota"])),
        ("container_spec_cpu_shares", u(&r["cpu"]["shares"])),
        (
            "container_spec_memory_limit_bytes",
            u(&r["memory"]["limit"]),
        ),
        (
            "container_spec_memory_reservation_limit_bytes",
            u(&r["memory"]["reservation"]),
        ),
        (
            "container_spec_memory_swap_limit_bytes",
            u(&r["memory"]["swap"]),
        ),
    ]
}

/// When the CRI state says the container started (else was created), Unix seconds.
fn start_seconds(c: &Container) -> u64 {
    let state: serde_json::Value = c
        .extensions
        .get(crate::store::STATE_EXT)
        .and_then(|a| serde_json::from_slice(&a.value).ok())
        .unwrap_or_default();
    let ns = state["started_at"]
        .as_i64()
        .filter(|v| *v > 0)
        .or_else(|| state["created_at"].as_i64())
        .unwrap_or(0);
    u64::try_from(ns / 1_000_000_000).unwrap_or(0)
}

/// Appends metrics that share a timestamp and base label values.
struct Sink<'a> {
    out: &'a mut Vec<cri::Metric>,
    ts: i64,
    base: &'a [String],
}

impl Sink<'_> {
    fn push(&mut self, name: &str, extra: &[&str], value: u64) {
        let kind = DESCS
            .iter()
            .find(|d| d.name == name)
            .map_or(Gauge, |d| d.kind);
        let mut label_values = self.base.to_vec();
        label_values.extend(extra.iter().map(|v| v.to_string()));
        self.out.push(cri::Metric {
            name: name.to_string(),
            timestamp: self.ts,
            metric_type: kind as i32,
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

const NANOS: u64 = 1_000_000_000;

/// Filesystem-wide numbers of the snapshot root: (size bytes, inodes, free inodes).
fn fs_numbers(mount: &str) -> Option<(u64, u64, u64)> {
    let s = nix::sys::statvfs::statvfs(mount).ok()?;
    Some((
        s.blocks().saturating_mul(s.fragment_size()),
        s.files(),
        s.files_free(),
    ))
}

fn push_container_metrics(
    sink: &mut Sink<'_>,
    c: &Container,
    n: &Numbers,
    layer: Option<(u64, u64)>,
    fs: Option<(u64, u64, u64)>,
    fs_device: &str,
) {
    sink.push("container_cpu_usage_seconds_total", &[], n.cpu_ns / NANOS);
    sink.push(
        "container_cpu_user_seconds_total",
        &[],
        n.cpu_user_ns / NANOS,
    );
    sink.push(
        "container_cpu_system_seconds_total",
        &[],
        n.cpu_system_ns / NANOS,
    );
    sink.push("container_cpu_cfs_periods_total", &[], n.cfs_periods);
    sink.push(
        "container_cpu_cfs_throttled_periods_total",
        &[],
        n.cfs_throttled_periods,
    );
    sink.push(
        "container_cpu_cfs_throttled_seconds_total",
        &[],
        n.cfs_throttled_ns / NANOS,
    );
    sink.push("container_memory_usage_bytes", &[], n.mem_usage);
    sink.push("container_memory_max_usage_bytes", &[], n.mem_max_usage);
    sink.push("container_memory_working_set_bytes", &[], n.mem_working_set);
    sink.push("container_memory_rss", &[], n.mem_rss);
    sink.push("container_memory_cache", &[], n.mem_cache);
    sink.push("container_memory_mapped_file", &[], n.mem_mapped);
    sink.push("container_memory_swap", &[], n.mem_swap);
    sink.push("container_memory_kernel_usage", &[], n.mem_kernel);
    sink.push("container_memory_failcnt", &[], n.mem_failcnt);
    for (kind, (own, all)) in [("pgfault", n.pgfault), ("pgmajfault", n.pgmajfault)] {
        sink.push("container_memory_failures_total", &[kind, "container"], own);
        sink.push("container_memory_failures_total", &[kind, "hierarchy"], all);
    }
    sink.push("container_oom_events_total", &[], n.oom_kills);
    sink.push("container_processes", &[], n.processes);
    sink.push("container_threads", &[], n.threads);
    sink.push("container_threads_max", &[], n.tasks_limit);
    sink.push("container_file_descriptors", &[], n.fds);
    sink.push("container_sockets", &[], n.sockets);
    if let Some((bytes, _inodes)) = layer {
        sink.push("container_fs_usage_bytes", &[fs_device], bytes);
    }
    if let Some((size, inodes, free)) = fs {
        sink.push("container_fs_limit_bytes", &[fs_device], size);
        sink.push("container_fs_inodes_total", &[fs_device], inodes);
        sink.push("container_fs_inodes_free", &[fs_device], free);
    }
    for dev in &n.devices {
        let device = dev.device.as_str();
        let (major, minor) = (dev.major.to_string(), dev.minor.to_string());
        sink.push("container_fs_reads_bytes_total", &[device], dev.read_bytes);
        sink.push(
            "container_fs_writes_bytes_total",
            &[device],
            dev.write_bytes,
        );
        sink.push("container_fs_reads_total", &[device], dev.reads);
        sink.push("container_fs_writes_total", &[device], dev.writes);
        for (op, v) in [("Read", dev.read_bytes), ("Write", dev.write_bytes)] {
            sink.push(
                "container_blkio_device_usage_total",
                &[device, &major, &minor, op],
                v,
            );
        }
    }
    for (size, usage, max) in &n.hugetlb {
        sink.push("container_hugetlb_usage_bytes", &[size], *usage);
        sink.push("container_hugetlb_max_usage_bytes", &[size], *max);
    }
    for (name, v) in spec_numbers(c) {
        sink.push(name, &[], v);
    }
    sink.push("container_start_time_seconds", &[], start_seconds(c));
    sink.push(
        "container_last_seen",
        &[],
        u64::try_from(sink.ts).unwrap_or(0) / NANOS,
    );
}

fn network_metrics(sink: &mut Sink<'_>, rows: &[NetDevRow]) {
    for r in rows {
        let i = [r.name.as_str()];
        sink.push("container_network_receive_bytes_total", &i, r.rx_bytes);
        sink.push("container_network_receive_packets_total", &i, r.rx_packets);
        sink.push("container_network_receive_errors_total", &i, r.rx_errors);
        sink.push(
            "container_network_receive_packets_dropped_total",
            &i,
            r.rx_dropped,
        );
        sink.push("container_network_transmit_bytes_total", &i, r.tx_bytes);
        sink.push("container_network_transmit_packets_total", &i, r.tx_packets);
        sink.push("container_network_transmit_errors_total", &i, r.tx_errors);
        sink.push(
            "container_network_transmit_packets_dropped_total",
            &i,
            r.tx_dropped,
        );
    }
}

impl Cri {
    pub(crate) fn metric_descriptors(&self) -> Vec<cri::MetricDescriptor> {
        DESCS
            .iter()
            .map(|d| cri::MetricDescriptor {
                name: d.name.to_string(),
                help: d.help.to_string(),
                label_keys: BASE_LABELS
                    .iter()
                    .chain(d.extra)
                    .map(|k| k.to_string())
                    .collect(),
            })
            .collect()
    }

    pub(crate) async fn pod_sandbox_metrics(&self) -> Result<Vec<cri::PodSandboxMetrics>> {
        let pods = self.raw_records(CRI_KIND_SANDBOX).await?;
        let containers = self.raw_records(CRI_KIND_CONTAINER).await?;
        let fs_device = self.fs_mount();
        // One blocking pass for every cgroup and the filesystem; a container without a
        // readable cgroup (not started, exited) has no metrics.
        let paths: Vec<(String, String)> = containers
            .iter()
            .filter_map(|c| Some((c.id.clone(), cgroup_path(c)?)))
            .collect();
        let mount = fs_device.clone();
        let (numbers, fs) = crate::blocking(move || {
            let numbers: HashMap<String, Numbers> = paths
                .into_iter()
                .filter_map(|(id, p)| match read_numbers(&p) {
                    Ok(n) => Some((id, n)),
                    Err(e) => {
                        tracing::debug!(cgroup = %p, "metrics: {e}");
                        None
                    }
                })
                .collect();
            Ok((numbers, fs_numbers(&mount)))
        })
        .await?;
        let mut out = Vec::with_capacity(pods.len());
        for pod in &pods {
            let meta = pod_metadata(pod);
            let ts = crate::store::now_ns();
            let mut container_metrics = Vec::new();
            for c in containers.iter().filter(|c| c.sandbox == pod.id) {
                let Some(n) = numbers.get(&c.id) else {
                    continue;
                };
                let layer = self
                    .stats
                    .layer(&self.client, c)
                    .await
                    .map(|(_, b, i)| (b, i));
                let name = label_of(c);
                let base = [
                    name.clone(),
                    c.id.clone(),
                    c.image.clone(),
                    c.id.clone(),
                    meta.namespace.clone(),
                    meta.name.clone(),
                ];
                let mut metrics = Vec::new();
                let mut sink = Sink {
                    out: &mut metrics,
                    ts,
                    base: &base,
                };
                push_container_metrics(&mut sink, c, n, layer, fs, &fs_device);
                container_metrics.push(cri::ContainerMetrics {
                    container_id: c.id.clone(),
                    metrics,
                });
            }
            let base = [
                "POD".to_string(),
                pod.id.clone(),
                String::new(),
                pod.id.clone(),
                meta.namespace.clone(),
                meta.name.clone(),
            ];
            let mut metrics = Vec::new();
            if let Some(rows) = self.pod_net_dev(pod).await {
                let mut sink = Sink {
                    out: &mut metrics,
                    ts,
                    base: &base,
                };
                network_metrics(&mut sink, &rows);
            }
            out.push(cri::PodSandboxMetrics {
                pod_sandbox_id: pod.id.clone(),
                metrics,
                container_metrics,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_numbers_split_swap_and_devices() {
        let m = v1::Metrics {
            memory: Some(v1::MemoryStat {
                total_inactive_file: 100,
                total_cache: 300,
                usage: Some(v1::MemoryEntry {
                    usage: 1000,
                    max: 2000,
                    ..Default::default()
                }),
                swap: Some(v1::MemoryEntry {
                    usage: 1500,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            blkio: Some(v1::BlkIoStat {
                io_service_bytes_recursive: vec![
                    v1::BlkIoEntry {
                        op: "Read".into(),
                        device: "vda".into(),
                        major: 254,
                        minor: 0,
                        value: 4096,
                    },
                    v1::BlkIoEntry {
                        op: "Write".into(),
                        device: "vda".into(),
                        major: 254,
                        minor: 0,
                        value: 8192,
                    },
                ],
                io_serviced_recursive: vec![v1::BlkIoEntry {
                    op: "Read".into(),
                    device: "vda".into(),
                    major: 254,
                    minor: 0,
                    value: 2,
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut n = Numbers::default();
        from_v1(&m, &mut n);
        assert_eq!(n.mem_working_set, 900);
        assert_eq!(n.mem_swap, 500);
        assert_eq!(n.mem_cache, 300);
        assert_eq!(n.mem_max_usage, 2000);
        assert_eq!(
            n.devices,
            vec![DeviceIo {
                device: "vda".into(),
                major: 254,
                minor: 0,
                read_bytes: 4096,
                write_bytes: 8192,
                reads: 2,
                writes: 0,
            }]
        );
    }

    #[test]
    fn every_metric_pushed_has_its_descriptor_and_label_count() {
        let descs: HashMap<&str, usize> = DESCS
            .iter()
            .map(|d| (d.name, BASE_LABELS.len() + d.extra.len()))
            .collect();
        let base: Vec<String> = BASE_LABELS.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        let mut sink = Sink {
            out: &mut out,
            ts: 1,
            base: &base,
        };
        let n = Numbers {
            devices: vec![DeviceIo::default()],
            hugetlb: vec![("2MB".into(), 0, 0)],
            ..Numbers::default()
        };
        push_container_metrics(
            &mut sink,
            &Container::default(),
            &n,
            Some((1, 1)),
            Some((1, 1, 1)),
            "/x",
        );
        network_metrics(
            &mut sink,
            &[NetDevRow {
                name: "eth0".into(),
                ..NetDevRow::default()
            }],
        );
        let mut seen = std::collections::HashSet::new();
        for m in &out {
            let want = descs.get(m.name.as_str()).copied();
            assert_eq!(want, Some(m.label_values.len()), "{}", m.name);
            seen.insert(m.name.as_str());
        }
        // And every descriptor is produced (critest asks for values of each).
        for d in DESCS {
            assert!(seen.contains(d.name), "{} is never produced", d.name);
        }
    }
}
