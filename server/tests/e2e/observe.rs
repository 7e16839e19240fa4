//! What operators look at: the standard gRPC health service on the API socket, checked by a real
//! client (Python's grpcio-health-checking, through clients/python/run-health); the `[metrics]`
//! listener scraped by a real Prometheus (Debian's, scripts/deps-observe.sh) and queried through
//! its HTTP API; and the SIGUSR1 dump in the log.

use crate::harness::Daemon;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A loopback port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0: the server closes when done); the body, if 200.
pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
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

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    attributes: Vec<(String, String)>,
    service: String,
}

impl ReceivedSpan {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 request (Content-Length bodies, as OTLP/HTTP exporters send) off `conn`;
/// `None` at the end of the connection.
fn read_request(conn: &mut std::io::BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    use std::io::BufRead;
    let mut line = String::new();
    if conn.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let request_line = line.trim_end().to_string();
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).ok()?;
    Some((request_line, body))
}

/// An OTLP/HTTP trace receiver on a loopback port: every span of every accepted export goes to
/// the channel; anything that is not a decodable `POST /v1/traces` is a test failure.
fn otlp_receiver() -> (u16, mpsc::Receiver<Result<ReceivedSpan, String>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OTLP receiver");
    let port = listener.local_addr().expect("receiver address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut out = conn.try_clone().expect("clone the connection");
                let mut conn = std::io::BufReader::new(conn);
                while let Some((request_line, body)) = read_request(&mut conn) {
                    if !request_line.starts_with("POST /v1/traces ") {
                        let _ = tx.send(Err(format!("unexpected request {request_line:?}")));
                        return;
                    }
                    let export = match ExportTraceServiceRequest::decode(body.as_slice()) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = tx.send(Err(format!("undecodable export: {e}")));
                            return;
                        }
                    };
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
                    );
                    for resource_spans in export.resource_spans {
                        let service = resource_spans
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                            .map(|v| match v {
                                Value::StringValue(s) => s.clone(),
                                other => format!("{other:?}"),
                            })
                            .unwrap_or_default();
                        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                            let attributes = span
                                .attributes
                                .iter()
                                .map(|kv| {
                                    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                        Some(Value::StringValue(s)) => s.clone(),
                                        other => format!("{other:?}"),
                                    };
                                    (kv.key.clone(), v)
                                })
                                .collect();
                            let _ = tx.send(Ok(ReceivedSpan {
                                name: span.name,
                                trace_id: hex::encode(&span.trace_id),
                                span_id: hex::encode(&span.span_id),
                                parent_span_id: hex::encode(&span.parent_span_id),
                                kind: span.kind,
                                attributes,
                                service: service.clone(),
                            }));
                        }
                    }
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_reach_an_otlp_receiver_in_the_clients_trace() {
    use containerd_client::services::v1::images_client::ImagesClient;
    use containerd_client::services::v1::namespaces_client::NamespacesClient;
    use containerd_client::services::v1::{ListImagesRequest, ListNamespacesRequest};
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    const NS: &str = "berth-e2e-otel";

    let (port, spans) = otlp_receiver();
    let mut d = Daemon::start_with_config(&format!(
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n"
    ));
    let ch = d.channel().await;
    // A client in the middle of a trace: W3C trace context in the gRPC metadata, sampled.
    let mut req = tonic::Request::new(ListImagesRequest::default());
    req.metadata_mut()
        .insert("containerd-namespace", NS.parse().expect("metadata value"));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT}-01")
            .parse()
            .expect("metadata value"),
    );
    ImagesClient::new(ch.clone())
        .list(req)
        .await
        .expect("Images.List");
    // A client with no trace: berthd's span starts one of its own.
    NamespacesClient::new(ch)
        .list(ListNamespacesRequest::default())
        .await
        .expect("Namespaces.List");
    // A clean stop sends what the batch holds.
    let status = d.stop();
    assert!(
        status.success(),
        "berthd stopped with {status}:\n{}",
        d.log()
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut list, mut own) = (None, None);
    while list.is_none() || own.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let span = match spans.recv_timeout(left) {
            Ok(Ok(span)) => span,
            Ok(Err(e)) => panic!("OTLP receiver: {e}"),
            Err(_) => panic!(
                "spans received: Images.List {list:?}, Namespaces.List {own:?}; log:\n{}",
                d.log()
            ),
        };
        match span.name.as_str() {
            "containerd.services.images.v1.Images/List" => list = Some(span),
            "containerd.services.namespaces.v1.Namespaces/List" => own = Some(span),
            _ => {}
        }
    }
    let list = list.expect("Images.List span");
    assert_eq!(list.trace_id, TRACE_ID, "{list:?}");
    assert_eq!(list.parent_span_id, PARENT, "{list:?}");
    assert_ne!(list.span_id, PARENT, "{list:?}");
    assert_eq!(list.attribute("namespace"), Some(NS), "{list:?}");
    assert_eq!(
        list.attribute("method"),
        Some("/containerd.services.images.v1.Images/List"),
        "{list:?}"
    );
    assert_eq!(list.attribute("rpc.system"), Some("grpc"), "{list:?}");
    // SpanKind::Server in OTLP's enum.
    assert_eq!(list.kind, 2, "{list:?}");
    assert_eq!(list.service, "berthd", "{list:?}");
    let own = own.expect("Namespaces.List span");
    assert_ne!(own.trace_id, TRACE_ID, "{own:?}");
    assert!(
        own.parent_span_id.is_empty(),
        "a call with no traceparent is a root span: {own:?}"
    );
}
