//! What operators look at: the standard gRPC health service on the API socket, checked by a real
//! client (Python's grpcio-health-checking, through clients/python/run-health); the `[metrics]`
//! listener scraped by a real Prometheus (Debian's, scripts/deps-observe.sh) and queried through
//! its HTTP API; and the SIGUSR1 dump in the log.

use crate::harness::Daemon;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0: the server closes when done); the body, if 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// A Prometheus killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the first series `query` returns, through Prometheus's HTTP API.
fn query(port: u16, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(port, &format!("/api/v1/query?query={encoded}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_rpc_and_process_metrics() {
    let metrics_port = free_port();
    let d = Daemon::start_with_config(&format!(
        "[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n"
    ));
    // Calls to count: two that succeed, one that fails NotFound.
    d.ctr("default", &["namespaces", "ls"]);
    d.ctr("default", &["namespaces", "ls"]);
    let failed = d.ctr_raw("default", &["containers", "info", "none"]);
    assert!(
        !failed.status.success(),
        "info of an absent container failed"
    );
    let scraped = http_get(metrics_port, "/v1/metrics").expect("scrape the listener");
    for want in [
        "grpc_server_handled_total{grpc_service=\"containerd.services.namespaces.v1.Namespaces\",grpc_method=\"List\",grpc_code=\"OK\"} 2",
        "grpc_server_handled_total{grpc_service=\"containerd.services.containers.v1.Containers\",grpc_method=\"Get\",grpc_code=\"NotFound\"} 1",
        "grpc_server_handling_seconds_count{grpc_service=\"containerd.services.namespaces.v1.Namespaces\",grpc_method=\"List\"} 2",
    ] {
        assert!(scraped.lines().any(|l| l == want), "no `{want}` in:\n{scraped}");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let web_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: berthd\n    metrics_path: /v1/metrics\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (scripts/deps-observe.sh installs it)"),
    );
    let list = r#"grpc_server_handled_total{job="berthd",grpc_method="List",grpc_code="OK",grpc_service="containerd.services.namespaces.v1.Namespaces"}"#;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut lists, mut rss) = (None, None);
    while Instant::now() < deadline && (lists.is_none() || rss.is_none()) {
        std::thread::sleep(Duration::from_millis(500));
        lists = query(web_port, list);
        rss = query(web_port, r#"process_resident_memory_bytes{job="berthd"}"#);
    }
    assert_eq!(lists, Some(2.0), "Prometheus's view of Namespaces.List");
    assert!(
        rss.is_some_and(|v| v > 1_000_000.0),
        "berthd's RSS through Prometheus: {rss:?}"
    );
}

#[test]
fn sigusr1_dumps_tasks_and_calls_to_the_log() {
    let d = Daemon::start();
    d.ctr("default", &["namespaces", "ls"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .expect("send SIGUSR1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("SIGUSR1: dump ends") {
        assert!(
            Instant::now() < deadline,
            "no dump in the log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The daemon serves on after a dump.
    d.ctr("default", &["namespaces", "ls"]);
}

#[test]
fn grpc_health_is_serving_to_pythons_health_client() {
    let d = Daemon::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/run-health");
    let out = Command::new(&script)
        .env("BERTH_SOCKET", &d.socket)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "health client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == "health ok: Check SERVING, Watch SERVING, unknown service NOT_FOUND"),
        "{stdout}"
    );
}
