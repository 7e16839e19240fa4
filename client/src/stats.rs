//! Resource usage of running containers, for `berth stats`: one [`Sample`] per task from
//! Tasks.Metrics (the cgroup's CPU time, memory, block I/O and pids, v1 or v2 as berthd reads
//! them) plus the network counters of the task's netns, read from `/proc/<pid>/net/dev` (the CLI
//! runs on berthd's host; the cgroup metrics carry no network). CPU % needs two samples:
//! [`cpu_percent`] is docker's "share of one CPU" over the time between them.

use crate::api::services::tasks::v1::tasks_client::TasksClient;
use crate::api::services::tasks::v1::MetricsRequest;
use crate::{Client, Error, Result};
use berth_api::io::containerd::cgroups::{v1 as cg1, v2 as cg2};
use std::collections::HashMap;
use std::time::Instant;
use tonic::Code;

/// One container's usage at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub container_id: String,
    /// When this side received the sample (CPU % is measured between two of them).
    pub taken: Option<Instant>,
    /// CPU time used since the task started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use (docker's figure: the usage less the inactive page cache).
    pub memory_usage: u64,
    /// The memory limit; None when unlimited.
    pub memory_limit: Option<u64>,
    pub net_rx: u64,
    pub net_tx: u64,
    pub block_read: u64,
    pub block_write: u64,
    pub pids: u64,
}

/// v1 reports "no limit" as the largest page-aligned value, v2 as 0 or u64::MAX.
const UNLIMITED_ABOVE: u64 = 1 << 62;

fn limit(v: u64) -> Option<u64> {
    (v > 0 && v < UNLIMITED_ABOVE).then_some(v)
}

/// docker's CPU %: CPU time used between the samples over the wall time between them, so one
/// fully busy CPU is 100 %.
pub fn cpu_percent(before: &Sample, after: &Sample) -> f64 {
    let (Some(t0), Some(t1)) = (before.taken, after.taken) else {
        return 0.0;
    };
    let wall = t1.saturating_duration_since(t0).as_nanos() as f64;
    if wall <= 0.0 {
        return 0.0;
    }
    after.cpu_ns.saturating_sub(before.cpu_ns) as f64 / wall * 100.0
}

fn from_v1(m: &cg1::Metrics, s: &mut Sample) {
    if let Some(u) = m.cpu.as_ref().and_then(|c| c.usage.as_ref()) {
        s.cpu_ns = u.total;
    }
    if let Some(mem) = &m.memory {
        let usage = mem.usage.as_ref().map(|u| u.usage).unwrap_or(0);
        s.memory_usage = usage.saturating_sub(mem.total_inactive_file);
        s.memory_limit = mem.usage.as_ref().and_then(|u| limit(u.limit));
    }
    if let Some(p) = &m.pids {
        s.pids = p.current;
    }
    if let Some(b) = &m.blkio {
        for e in &b.io_service_bytes_recursive {
            match e.op.to_ascii_lowercase().as_str() {
                "read" => s.block_read += e.value,
                "write" => s.block_write += e.value,
                _ => {}
            }
        }
    }
}

fn from_v2(m: &cg2::Metrics, s: &mut Sample) {
    if let Some(c) = &m.cpu {
        s.cpu_ns = c.usage_usec.saturating_mul(1000);
    }
    if let Some(mem) = &m.memory {
        s.memory_usage = mem.usage.saturating_sub(mem.inactive_file);
        s.memory_limit = limit(mem.usage_limit);
    }
    if let Some(p) = &m.pids {
        s.pids = p.current;
    }
    if let Some(io) = &m.io {
        for e in &io.usage {
            s.block_read += e.rbytes;
            s.block_write += e.wbytes;
        }
    }
}

/// Received and transmitted bytes over every interface but `lo` of the netns `pid` is in.
pub fn network_bytes(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut rx = 0;
    let mut tx = 0;
    // Two header lines, then `iface: rx_bytes packets ... (8 rx fields) tx_bytes ...`.
    for line in text.lines().skip(2) {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = fields
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        if f.len() >= 9 {
            rx += f[0];
            tx += f[8];
        }
    }
    Some((rx, tx))
}

impl Client {
    /// One sample for each running task of `ids` (every running task when empty); a stopped
    /// or absent task has none.
    pub async fn stats(&self, ids: &[String]) -> Result<Vec<Sample>> {
        // containerd's filter language: alternatives are separate filters.
        let filters = ids.iter().map(|id| format!("id=={id:?}")).collect();
        let tasks_api = self.tasks();
        let (metrics, tasks) = tokio::try_join!(
            async {
                TasksClient::new(self.channel.clone())
                    .metrics(self.request(MetricsRequest { filters }))
                    .await
                    .map_err(Error::from)
            },
            tasks_api.list()
        )?;
        let taken = Instant::now();
        let pids: HashMap<String, u32> = tasks.into_iter().map(|(k, v)| (k, v.pid)).collect();
        let mut out = Vec::new();
        for m in metrics.into_inner().metrics {
            let mut s = Sample {
                container_id: m.id.clone(),
                taken: Some(taken),
                ..Default::default()
            };
            if let Some(data) = &m.data {
                let name = data.type_url.trim_start_matches('/');
                if name.starts_with("io.containerd.cgroups.v1") {
                    let v: cg1::Metrics = berth_api::unpack_any(data).map_err(|e| {
                        Error::local(Code::Internal, format!("metrics of {}: {e:?}", m.id))
                    })?;
                    from_v1(&v, &mut s);
                } else if name.starts_with("io.containerd.cgroups.v2") {
                    let v: cg2::Metrics = berth_api::unpack_any(data).map_err(|e| {
                        Error::local(Code::Internal, format!("metrics of {}: {e:?}", m.id))
                    })?;
                    from_v2(&v, &mut s);
                }
            }
            if let Some((rx, tx)) = pids.get(&m.id).and_then(|p| network_bytes(*p)) {
                s.net_rx = rx;
                s.net_tx = tx;
            }
            out.push(s);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cpu_percent_is_a_share_of_one_cpu() {
        let t0 = Instant::now();
        let a = Sample {
            taken: Some(t0),
            cpu_ns: 1_000_000_000,
            ..Default::default()
        };
        let b = Sample {
            taken: Some(t0 + Duration::from_secs(2)),
            cpu_ns: 2_000_000_000,
            ..Default::default()
        };
        assert!((cpu_percent(&a, &b) - 50.0).abs() < 1e-9);
        assert_eq!(cpu_percent(&b, &b), 0.0);
    }

    #[test]
    fn v1_memory_leaves_out_inactive_cache_and_huge_limits() {
        let m = cg1::Metrics {
            memory: Some(cg1::MemoryStat {
                total_inactive_file: 100,
                usage: Some(cg1::MemoryEntry {
                    usage: 1100,
                    limit: 9_223_372_036_854_771_712,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut s = Sample::default();
        from_v1(&m, &mut s);
        assert_eq!(s.memory_usage, 1000);
        assert_eq!(s.memory_limit, None);
    }

    #[test]
    fn our_own_network_counters_read() {
        assert!(network_bytes(std::process::id()).is_some());
    }
}
