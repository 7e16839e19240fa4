//! What operators see of berthd: the `[metrics]` config section, the one tower layer that counts
//! and times every RPC (and knows the calls in flight), the Prometheus text served on the
//! optional HTTP listener, and the SIGUSR1 dump of tasks, shims and calls in flight to the log.
//!
//! Metric names are containerd's (go-grpc-prometheus's `grpc_server_*`, the Prometheus process
//! collector's `process_*`) so that dashboards written for containerd read berthd unchanged.

use crate::runtime::TaskManager;
use berth_metadata::Metadata;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codegen::http;

/// `[metrics]`: off unless `address` (host:port) is set, as containerd's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where the Prometheus text is served over HTTP (any path); empty: nowhere.
    pub address: String,
}

/// go-grpc-prometheus's default histogram buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Handled {
    count: u64,
    /// Per bucket of `BUCKETS`, not cumulative (summed at render).
    buckets: [u64; BUCKETS.len()],
    sum: f64,
}

struct InFlight {
    method: String,
    namespace: String,
    since: Instant,
}

/// Every RPC's counts and times, and the calls in flight now.
#[derive(Default)]
pub struct Metrics {
    started: Mutex<HashMap<String, u64>>,
    /// By (method path, grpc status code).
    handled: Mutex<HashMap<(String, u32), Handled>>,
    in_flight: Mutex<BTreeMap<u64, InFlight>>,
    next_call: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one map update: a panic cannot leave it half done.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    fn start(&self, method: &str, namespace: &str) -> u64 {
        *locked(&self.started).entry(method.to_string()).or_default() += 1;
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        locked(&self.in_flight).insert(
            id,
            InFlight {
                method: method.to_string(),
                namespace: namespace.to_string(),
                since: Instant::now(),
            },
        );
        id
    }

    fn finish(&self, id: u64, code: u32) {
        let Some(call) = locked(&self.in_flight).remove(&id) else {
            return;
        };
        let secs = call.since.elapsed().as_secs_f64();
        let mut handled = locked(&self.handled);
        let h = handled.entry((call.method, code)).or_default();
        h.count += 1;
        h.sum += secs;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.buckets[i] += 1;
        }
    }

    /// The calls in flight, oldest first: (method, namespace, running for).
    pub fn in_flight(&self) -> Vec<(String, String, Duration)> {
        locked(&self.in_flight)
            .values()
            .map(|c| (c.method.clone(), c.namespace.clone(), c.since.elapsed()))
            .collect()
    }

    /// The Prometheus text exposition of the RPC and process metrics (tasks' are appended by
    /// `render_all`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let split = |path: &str| -> (String, String) {
            let path = path.trim_start_matches('/');
            match path.split_once('/') {
                Some((s, m)) => (s.to_string(), m.to_string()),
                None => (String::new(), path.to_string()),
            }
        };
        out.push_str("# HELP grpc_server_started_total Total number of RPCs started on the server.\n# TYPE grpc_server_started_total counter\n");
        let mut started: Vec<_> = locked(&self.started)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        started.sort();
        for (path, n) in &started {
            let (service, method) = split(path);
            let _ = writeln!(
                out,
                "grpc_server_started_total{{grpc_service=\"{}\",grpc_method=\"{}\"}} {n}",
                escape(&service),
                escape(&method)
            );
        }
        let handled = locked(&self.handled);
        let mut keys: Vec<_> = handled.keys().cloned().collect();
        keys.sort();
        out.push_str("# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n# TYPE grpc_server_handled_total counter\n");
        for k in &keys {
            let (service, method) = split(&k.0);
            let _ = writeln!(
                out,
                "grpc_server_handled_total{{grpc_service=\"{}\",grpc_method=\"{}\",grpc_code=\"{}\"}} {}",
                escape(&service),
                escape(&method),
                code_name(k.1),
                handled[k].count
            );
        }
        // The histogram is per method, all codes together (as go-grpc-prometheus's).
        let mut per_method: BTreeMap<&str, Handled> = BTreeMap::new();
        for ((path, _), h) in handled.iter() {
            let m = per_method.entry(path.as_str()).or_default();
            m.count += h.count;
            m.sum += h.sum;
            for (a, b) in m.buckets.iter_mut().zip(h.buckets.iter()) {
                *a += b;
            }
        }
        out.push_str("# HELP grpc_server_handling_seconds Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.\n# TYPE grpc_server_handling_seconds histogram\n");
        for (path, h) in &per_method {
            let (service, method) = split(path);
            let labels = format!(
                "grpc_service=\"{}\",grpc_method=\"{}\"",
                escape(&service),
                escape(&method)
            );
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(h.buckets.iter()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "grpc_server_handling_seconds_bucket{{{labels},le=\"{b}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "grpc_server_handling_seconds_bucket{{{labels},le=\"+Inf\"}} {}\ngrpc_server_handling_seconds_sum{{{labels}}} {}\ngrpc_server_handling_seconds_count{{{labels}}} {}",
                h.count, h.sum, h.count
            );
        }
        drop(handled);
        render_process(&mut out);
        out
    }

    /// `render` plus the metadata store's syncs and per-task cgroup metrics under containerd's
    /// names.
    pub async fn render_all(&self, tasks: &TaskManager, meta: &Metadata) -> String {
        let mut out = self.render();
        render_metadata(&mut out, meta);
        render_tasks(&mut out, tasks).await;
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// The syncs acknowledged writes waited for: what a write costs on this disk, and how well
/// group commit and staged writes share them.
fn render_metadata(out: &mut String, meta: &Metadata) {
    let stats = meta.sync_stats();
    let _ = writeln!(out, "# HELP berth_metadata_syncs_total Syncs of the metadata store that writers waited for.\n# TYPE berth_metadata_syncs_total counter\nberth_metadata_syncs_total {}", stats.syncs);
    let _ = writeln!(out, "# HELP berth_metadata_sync_seconds_total Time spent in those syncs.\n# TYPE berth_metadata_sync_seconds_total counter\nberth_metadata_sync_seconds_total {}", stats.seconds);
}

/// RSS, open fds, threads, CPU and start time of berthd, from /proc/self.
fn render_process(out: &mut String) {
    let ticks = 100.0; // USER_HZ, fixed at 100 on Linux's ABI
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command's closing parenthesis, which may itself hold spaces.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // man proc(5): utime 14, stime 15, num_threads 20, vsize 23, rss 24 (1-based, the
            // first two being pid and comm).
            let cpu = (num(11) + num(12)) as f64 / ticks;
            let _ = writeln!(out, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}");
            let _ = writeln!(out, "# HELP process_threads Number of OS threads in the process.\n# TYPE process_threads gauge\nprocess_threads {}", num(17));
            let _ = writeln!(out, "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {}", num(20));
        }
    }
    // VmRSS is in kB: no page size to look up.
    let rss_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    if let Some(kb) = rss_kb {
        let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}", kb * 1024);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(out, "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}", fds.count());
    }
}

/// Per-task cgroup metrics under containerd's names (its cgroups v1 and v2 collectors'), read
/// through berth-cgroups as Tasks.Metrics reads them.
async fn render_tasks(out: &mut String, tasks: &TaskManager) {
    use berth_api::io::containerd::cgroups::{v1, v2};
    use prost::Message;
    let mut series: BTreeMap<&'static str, String> = BTreeMap::new();
    for task in tasks.all() {
        let pid = task.pid;
        let Ok(any) = crate::blocking::blocking(move || {
            berth_cgroups::Cgroup::of_pid(pid)
                .and_then(|c| c.metrics())
                .map_err(|e| berth_errdefs::Error::io(format!("cgroup metrics of pid {pid}"), e))
        })
        .await
        else {
            continue; // exited meanwhile
        };
        let labels = format!(
            "container_id=\"{}\",namespace=\"{}\"",
            escape(&task.record.id),
            escape(&task.record.namespace)
        );
        let mut put = |name: &'static str, v: u64| {
            let _ = writeln!(series.entry(name).or_default(), "{name}{{{labels}}} {v}");
        };
        if any.type_url.ends_with("v2.Metrics") {
            let Ok(m) = v2::Metrics::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(p) = m.pids {
                put("container_pids_current", p.current);
                put("container_pids_limit", p.limit);
            }
            if let Some(c) = m.cpu {
                put("container_cpu_usage_usec_microseconds", c.usage_usec);
                put("container_cpu_user_usec_microseconds", c.user_usec);
                put("container_cpu_system_usec_microseconds", c.system_usec);
            }
            if let Some(mem) = m.memory {
                put("container_memory_usage_bytes", mem.usage);
                put("container_memory_usage_limit_bytes", mem.usage_limit);
            }
        } else if let Ok(m) = v1::Metrics::decode(any.value.as_slice()) {
            if let Some(p) = m.pids {
                put("container_pids_current", p.current);
                put("container_pids_limit", p.limit);
            }
            if let Some(u) = m.cpu.and_then(|c| c.usage) {
                put("container_cpu_total_nanoseconds", u.total);
                put("container_cpu_user_nanoseconds", u.user);
                put("container_cpu_kernel_nanoseconds", u.kernel);
            }
            if let Some(u) = m.memory.and_then(|m| m.usage) {
                put("container_memory_usage_usage_bytes", u.usage);
                put("container_memory_usage_limit_bytes", u.limit);
            }
        }
    }
    for (name, body) in series {
        let _ = write!(out, "# TYPE {name} gauge\n{body}");
    }
}

/// Serve the Prometheus text on `address` until the daemon stops: any request gets it (a
/// scraper asks for `/v1/metrics`, containerd's path).
pub async fn serve(
    address: &str,
    metrics: Arc<Metrics>,
    tasks: Arc<TaskManager>,
    meta: Arc<Metadata>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(address = %listener.local_addr()?, "serving metrics");
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, tasks, meta) = (metrics.clone(), tasks.clone(), meta.clone());
        tokio::spawn(async move {
            // The request is read up to its blank line (a scrape has no body), within bounds.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let body = metrics.render_all(&tasks, &meta).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Log what berthd is doing: its tasks and their shims, and the calls in flight (SIGUSR1).
pub fn dump(metrics: &Metrics, tasks: &TaskManager) {
    let all = tasks.all();
    tracing::info!(tasks = all.len(), "SIGUSR1: dump begins");
    for t in &all {
        tracing::info!(
            namespace = %t.record.namespace,
            id = %t.record.id,
            pid = t.pid,
            runtime = %t.record.runtime,
            shim = %t.backend.describe(),
            "task"
        );
    }
    let calls = metrics.in_flight();
    for (method, namespace, running) in &calls {
        tracing::info!(%method, %namespace, running_ms = running.as_millis() as u64, "call in flight");
    }
    tracing::info!(tasks = all.len(), calls = calls.len(), "SIGUSR1: dump ends");
}

/// The tower layer: one per server, around every service.
#[derive(Clone)]
pub struct MetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Ends the call with its status code, or as Canceled when dropped first (a client gone
/// mid-call drops the future).
struct Call {
    metrics: Option<Arc<Metrics>>,
    id: u64,
}

impl Call {
    fn end(mut self, code: u32) {
        if let Some(m) = self.metrics.take() {
            m.finish(self.id, code);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(m) = self.metrics.take() {
            m.finish(self.id, 1);
        }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let namespace = req
            .headers()
            .get(berth_api::NAMESPACE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let id = self.metrics.start(req.uri().path(), namespace);
        let call = Call {
            metrics: Some(self.metrics.clone()),
            id,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            // An error status travels in the headers of a trailers-only response; a streamed
            // reply's status comes in trailers, after this layer sees it: it counts as OK here.
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                Err(_) => 13,
            };
            call.end(code);
            result
        })
    }
}
