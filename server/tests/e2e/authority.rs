//! gRPC clients of other languages against a real berthd, each with its library's default options
//! and a `unix:` target: Python's grpcio, whose C core sends the percent-encoded socket path as
//! `:authority` (h2 alone resets every such stream), and Node's @grpc/grpc-js, which sends
//! `localhost` and so checks the path where the adapter changes nothing. The clients live in
//! `authority-clients/` and are installed by scripts/deps-grpc-peers.sh; they print each reply's
//! bytes in hex and this test decodes them with the upstream-generated messages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, ListContainersResponse, VersionResponse,
};
use containerd_client::tonic::Request;
use containerd_client::with_namespace;
use prost::Message;
use prost_types::Any;

use crate::harness::Daemon;

const NAMESPACE: &str = "authority-e2e";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/authority-clients")
}

/// A container record in NAMESPACE, created through the containerd-client crate, and the version
/// berthd reports to that crate: what the other clients must see too.
async fn prepare(d: &Daemon) -> (Container, VersionResponse) {
    let ch = d.channel().await;
    let container = Container {
        id: "authority-probe".into(),
        labels: HashMap::from([("berth.test/peer".to_string(), "python,node".to_string())]),
        image: "docker.io/library/busybox:latest".into(),
        runtime: Some(Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: berth_testkit::SPEC_JSON.to_vec(),
        }),
        snapshotter: "overlayfs".into(),
        snapshot_key: "authority-probe".into(),
        ..Default::default()
    };
    let req = CreateContainerRequest {
        container: Some(container),
    };
    let created = ContainersClient::new(ch.clone())
        .create(with_namespace!(req, NAMESPACE))
        .await
        .expect("create the probe container")
        .into_inner()
        .container
        .expect("CreateContainerResponse.container");
    let version = VersionClient::new(ch)
        .version(())
        .await
        .expect("Version through containerd-client")
        .into_inner();
    (created, version)
}

/// Runs a client, insisting it succeeds, and returns its replies by call name.
fn run_client(mut cmd: Command, what: &str, d: &Daemon) -> HashMap<String, Vec<u8>> {
    let out = cmd
        .arg(&d.socket)
        .arg(NAMESPACE)
        .output()
        .unwrap_or_else(|e| panic!("run the {what} client ({e}): run scripts/deps-grpc-peers.sh"));
    assert!(
        out.status.success(),
        "the {what} client failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(call, reply)| {
            let bytes = hex::decode(reply.trim()).expect("reply in hex");
            (call.to_string(), bytes)
        })
        .collect()
}

fn check(replies: &HashMap<String, Vec<u8>>, created: &Container, version: &VersionResponse) {
    let got = VersionResponse::decode(&replies["version"][..]).expect("decode VersionResponse");
    assert_eq!(&got, version);
    assert!(!got.version.is_empty());
    let list = ListContainersResponse::decode(&replies["containers"][..])
        .expect("decode ListContainersResponse");
    assert_eq!(list.containers, std::slice::from_ref(created));
    assert_eq!(list.containers[0].labels["berth.test/peer"], "python,node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_with_default_options() {
    let d = Daemon::start();
    let (created, version) = prepare(&d).await;
    let mut cmd = Command::new(clients_dir().join(".venv/bin/python"));
    cmd.arg(clients_dir().join("client.py"));
    let replies = run_client(cmd, "Python grpcio", &d);
    check(&replies, &created, &version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_grpc_js_with_default_options() {
    let d = Daemon::start();
    let (created, version) = prepare(&d).await;
    assert!(
        clients_dir().join("node_modules/@grpc/grpc-js").is_dir(),
        "@grpc/grpc-js is not installed: run scripts/deps-grpc-peers.sh"
    );
    let mut cmd = Command::new("node");
    cmd.arg(clients_dir().join("client.js"));
    let replies = run_client(cmd, "Node.js @grpc/grpc-js", &d);
    check(&replies, &created, &version);
}
