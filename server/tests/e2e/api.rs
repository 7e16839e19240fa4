//! API-level end-to-end tests: a real berthd driven by the `containerd-client` crate, whose clients
//! are generated from upstream containerd's protos. These cover what `ctr` does not reach: filters,
//! field masks, ListStream, Read with offsets, resumed and concurrent Writes, error codes, limits and
//! durability. Every error case asserts the gRPC code and that nothing changed.

use berth_api::LEASE_HEADER;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::events::{ContainerCreate, ContainerDelete, ContainerUpdate, ContentDelete};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, PrepareSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    AbortRequest, AddResourceRequest, Container, CreateContainerRequest, CreateImageRequest,
    CreateNamespaceRequest, CreateRequest as CreateLeaseRequest, DeleteContainerRequest,
    DeleteContentRequest, DeleteImageRequest, DeleteNamespaceRequest,
    DeleteRequest as DeleteLeaseRequest, DeleteResourceRequest, ForwardRequest,
    GetContainerRequest, GetImageRequest, GetNamespaceRequest, Image, ImageCreate, ImageDelete,
    ImageUpdate, Info, InfoRequest, Lease, ListContainersRequest, ListContentRequest,
    ListImagesRequest, ListNamespacesRequest, ListRequest as ListLeasesRequest,
    ListResourcesRequest, ListStatusesRequest, Namespace, PluginsRequest, PublishRequest,
    ReadContentRequest, ReadContentResponse, Resource, Status as IngestStatus, StatusRequest,
    SubscribeRequest, UpdateContainerRequest, UpdateImageRequest, UpdateNamespaceRequest,
    UpdateRequest as UpdateContentRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Response, Status, Streaming};
use containerd_client::types::{Descriptor, Envelope};
use containerd_client::with_namespace;
use prost::Message;
use prost_types::{Any, FieldMask, Timestamp};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::harness::Daemon;

const MIB: usize = 1 << 20;
/// Raised on the client so that it never refuses what the test means the server to judge.
const CLIENT_MAX_MESSAGE: usize = 32 << 20;
/// How long any single reply may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(20);
const RUNC: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// A realistic OCI runtime spec, as `ctr run` sends in Containers/Create.
const SAMPLE_SPEC: &[u8] = berth_testkit::SPEC_JSON;
const INDEX_MT: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_MT: &str = "application/vnd.oci.image.manifest.v1+json";

// ---------------------------------------------------------------------------------------------
// Clients and requests
// ---------------------------------------------------------------------------------------------

/// Every client the tests use, on one channel, with message limits raised past the server's.
#[derive(Clone)]
struct Api {
    containers: ContainersClient<Channel>,
    content: ContentClient<Channel>,
    images: ImagesClient<Channel>,
    leases: LeasesClient<Channel>,
    namespaces: NamespacesClient<Channel>,
    events: EventsClient<Channel>,
    introspection: IntrospectionClient<Channel>,
    version: VersionClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
}

macro_rules! client {
    ($client:ident, $channel:expr) => {
        $client::new($channel.clone())
            .max_encoding_message_size(CLIENT_MAX_MESSAGE)
            .max_decoding_message_size(CLIENT_MAX_MESSAGE)
    };
}

impl Api {
    async fn connect(d: &Daemon) -> Api {
        let ch = d.channel().await;
        Api {
            containers: client!(ContainersClient, ch),
            content: client!(ContentClient, ch),
            images: client!(ImagesClient, ch),
            leases: client!(LeasesClient, ch),
            namespaces: client!(NamespacesClient, ch),
            events: client!(EventsClient, ch),
            introspection: client!(IntrospectionClient, ch),
            version: client!(VersionClient, ch),
            snapshots: client!(SnapshotsClient, ch),
        }
    }
}

/// A request in namespace `ns`, the way containerd's clients send it.
fn ns_req<T>(ns: &str, msg: T) -> Request<T> {
    with_namespace!(msg, ns)
}

fn lease_req<T>(ns: &str, lease: &str, msg: T) -> Request<T> {
    let mut req = ns_req(ns, msg);
    req.metadata_mut()
        .insert(LEASE_HEADER, lease.parse().expect("ascii lease id"));
    req
}

pub(crate) mod disk;

type Rpc<T> = Result<T, Status>;

fn into_inner<T>(r: Result<Response<T>, Status>) -> Rpc<T> {
    r.map(Response::into_inner)
}

/// Unwrap a successful call, naming it when it failed.
#[track_caller]
fn ok<T>(r: Rpc<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(s) => panic!("{what}: unexpected {:?}: {}", s.code(), s.message()),
    }
}

/// Insist a call failed with `code`; returns the status for further checks.
#[track_caller]
fn fails<T: std::fmt::Debug>(r: Rpc<T>, code: Code, what: &str) -> Status {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, the call succeeded with {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "{what}: expected {code:?}, got {:?}: {}",
                s.code(),
                s.message()
            );
            s
        }
    }
}

/// Read a server stream to its end, failing the test on a hang.
async fn drain<T>(mut s: Streaming<T>) -> Rpc<Vec<T>> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, s.message()).await {
            Err(_) => panic!("server stream stalled for {PATIENCE:?}"),
            Ok(Ok(Some(m))) => out.push(m),
            Ok(Ok(None)) => return Ok(out),
            Ok(Err(status)) => return Err(status),
        }
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic, non-repeating-looking test data.
fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn sorted<I: IntoIterator<Item = String>>(it: I) -> Vec<String> {
    let mut v: Vec<String> = it.into_iter().collect();
    v.sort();
    v
}

fn strings(v: &[&str]) -> Vec<String> {
    sorted(v.iter().map(|s| s.to_string()))
}

/// What ctr sends for "not set": Go's zero time. The server must ignore it.
fn go_zero_time() -> Timestamp {
    Timestamp {
        seconds: -62_135_596_800,
        nanos: 0,
    }
}

fn ts_key(t: &Option<Timestamp>) -> (i64, i32) {
    let t = t.as_ref().expect("timestamp set");
    (t.seconds, t.nanos)
}

/// A timestamp the server set just now (not the client's zero time, not absent).
#[track_caller]
fn assert_recent(t: &Option<Timestamp>, what: &str) {
    let t = t
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: timestamp missing"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    assert!(
        (now - 600..=now + 60).contains(&t.seconds),
        "{what}: timestamp {t:?} is not the server's current time (now {now})"
    );
}

/// Poll `cond` until it holds, failing after PATIENCE.
async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn spec_any() -> Any {
    Any {
        type_url: SPEC_TYPE_URL.into(),
        value: SAMPLE_SPEC.to_vec(),
    }
}

/// The sample spec with a different command line: a second realistic spec.
fn other_spec_any() -> Any {
    let mut spec: serde_json::Value =
        serde_json::from_slice(&spec_any().value).expect("sample spec is JSON");
    spec["process"]["args"] = serde_json::json!(["sleep", "3600"]);
    spec["hostname"] = serde_json::json!("other");
    Any {
        type_url: SPEC_TYPE_URL.into(),
        value: serde_json::to_vec(&spec).expect("encode spec"),
    }
}

/// containerd.runc.v1.Options{binary_name: "runc", systemd_cgroup: true}, encoded by hand.
fn runc_options() -> Any {
    let mut value = vec![0x32, 4];
    value.extend_from_slice(b"runc");
    value.extend_from_slice(&[0x48, 1]);
    Any {
        type_url: "containerd.runc.v1.Options".into(),
        value,
    }
}

fn container(id: &str, image: &str, lbls: &[(&str, &str)]) -> Container {
    Container {
        id: id.into(),
        labels: labels(lbls),
        image: image.into(),
        runtime: Some(Runtime {
            name: RUNC.into(),
            options: Some(runc_options()),
        }),
        spec: Some(spec_any()),
        snapshotter: "overlayfs".into(),
        snapshot_key: format!("{id}-snapshot"),
        created_at: Some(go_zero_time()),
        updated_at: Some(go_zero_time()),
        ..Default::default()
    }
}

fn descriptor(media_type: &str, content: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: digest_of(content),
        size: content.len() as i64,
        annotations: HashMap::new(),
    }
}

fn image(name: &str, media_type: &str, lbls: &[(&str, &str)]) -> Image {
    Image {
        name: name.into(),
        labels: labels(lbls),
        target: Some(descriptor(media_type, name.as_bytes())),
        created_at: Some(go_zero_time()),
        updated_at: Some(go_zero_time()),
    }
}

fn resource(kind: &str, id: &str) -> Resource {
    Resource {
        id: id.into(),
        r#type: kind.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Service helpers (one call each, errors returned for the tests to judge)
// ---------------------------------------------------------------------------------------------

impl Api {
    async fn create_container(&self, ns: &str, c: Container) -> Rpc<Container> {
        let req = CreateContainerRequest { container: Some(c) };
        into_inner(self.containers.clone().create(ns_req(ns, req)).await)
            .map(|r| r.container.expect("CreateContainerResponse.container"))
    }

    async fn get_container(&self, ns: &str, id: &str) -> Rpc<Container> {
        let req = GetContainerRequest { id: id.into() };
        into_inner(self.containers.clone().get(ns_req(ns, req)).await)
            .map(|r| r.container.expect("GetContainerResponse.container"))
    }

    async fn list_containers(&self, ns: &str, filters: &[&str]) -> Rpc<Vec<Container>> {
        let req = ListContainersRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        into_inner(self.containers.clone().list(ns_req(ns, req)).await).map(|r| r.containers)
    }

    async fn list_stream_containers(&self, ns: &str, filters: &[&str]) -> Rpc<Vec<Container>> {
        let req = ListContainersRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        let stream = into_inner(self.containers.clone().list_stream(ns_req(ns, req)).await)?;
        Ok(drain(stream)
            .await?
            .into_iter()
            .map(|m| m.container.expect("ListContainerMessage.container"))
            .collect())
    }

    async fn update_container(
        &self,
        ns: &str,
        c: Container,
        update_mask: Option<FieldMask>,
    ) -> Rpc<Container> {
        let req = UpdateContainerRequest {
            container: Some(c),
            update_mask,
        };
        into_inner(self.containers.clone().update(ns_req(ns, req)).await)
            .map(|r| r.container.expect("UpdateContainerResponse.container"))
    }

    async fn delete_container(&self, ns: &str, id: &str) -> Rpc<()> {
        let req = DeleteContainerRequest { id: id.into() };
        into_inner(self.containers.clone().delete(ns_req(ns, req)).await)
    }

    async fn create_image(&self, ns: &str, i: Image) -> Rpc<Image> {
        let req = CreateImageRequest {
            image: Some(i),
            source_date_epoch: None,
        };
        into_inner(self.images.clone().create(ns_req(ns, req)).await)
            .map(|r| r.image.expect("CreateImageResponse.image"))
    }

    async fn get_image(&self, ns: &str, name: &str) -> Rpc<Image> {
        let req = GetImageRequest { name: name.into() };
        into_inner(self.images.clone().get(ns_req(ns, req)).await)
            .map(|r| r.image.expect("GetImageResponse.image"))
    }

    async fn list_images(&self, ns: &str, filters: &[&str]) -> Rpc<Vec<Image>> {
        let req = ListImagesRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        into_inner(self.images.clone().list(ns_req(ns, req)).await).map(|r| r.images)
    }

    async fn update_image(&self, ns: &str, i: Image, update_mask: Option<FieldMask>) -> Rpc<Image> {
        let req = UpdateImageRequest {
            image: Some(i),
            update_mask,
            source_date_epoch: None,
        };
        into_inner(self.images.clone().update(ns_req(ns, req)).await)
            .map(|r| r.image.expect("UpdateImageResponse.image"))
    }

    async fn delete_image(&self, ns: &str, name: &str) -> Rpc<()> {
        let req = DeleteImageRequest {
            name: name.into(),
            sync: true,
            target: None,
        };
        into_inner(self.images.clone().delete(ns_req(ns, req)).await)
    }

    async fn create_lease(&self, ns: &str, id: &str, lbls: HashMap<String, String>) -> Rpc<Lease> {
        let req = CreateLeaseRequest {
            id: id.into(),
            labels: lbls,
        };
        into_inner(self.leases.clone().create(ns_req(ns, req)).await)
            .map(|r| r.lease.expect("CreateResponse.lease"))
    }

    async fn list_leases(&self, ns: &str, filters: &[&str]) -> Rpc<Vec<Lease>> {
        let req = ListLeasesRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        into_inner(self.leases.clone().list(ns_req(ns, req)).await).map(|r| r.leases)
    }

    async fn delete_lease(&self, ns: &str, id: &str) -> Rpc<()> {
        let req = DeleteLeaseRequest {
            id: id.into(),
            sync: false,
        };
        into_inner(self.leases.clone().delete(ns_req(ns, req)).await)
    }

    async fn add_resource(&self, ns: &str, lease: &str, r: Resource) -> Rpc<()> {
        let req = AddResourceRequest {
            id: lease.into(),
            resource: Some(r),
        };
        into_inner(self.leases.clone().add_resource(ns_req(ns, req)).await)
    }

    async fn delete_resource(&self, ns: &str, lease: &str, r: Resource) -> Rpc<()> {
        let req = DeleteResourceRequest {
            id: lease.into(),
            resource: Some(r),
        };
        into_inner(self.leases.clone().delete_resource(ns_req(ns, req)).await)
    }

    /// Resources of a lease as sorted (type, id) pairs.
    async fn list_resources(&self, ns: &str, lease: &str) -> Rpc<Vec<(String, String)>> {
        let req = ListResourcesRequest { id: lease.into() };
        let mut v: Vec<(String, String)> =
            into_inner(self.leases.clone().list_resources(ns_req(ns, req)).await)?
                .resources
                .into_iter()
                .map(|r| (r.r#type, r.id))
                .collect();
        v.sort();
        Ok(v)
    }

    async fn get_namespace(&self, name: &str) -> Rpc<Namespace> {
        let req = GetNamespaceRequest { name: name.into() };
        into_inner(self.namespaces.clone().get(ns_req("default", req)).await)
            .map(|r| r.namespace.expect("GetNamespaceResponse.namespace"))
    }

    async fn list_namespaces(&self) -> Rpc<Vec<Namespace>> {
        let req = ListNamespacesRequest::default();
        let mut v =
            into_inner(self.namespaces.clone().list(ns_req("default", req)).await)?.namespaces;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn namespace_names(&self) -> Vec<String> {
        let all = ok(self.list_namespaces().await, "Namespaces/List");
        all.into_iter().map(|n| n.name).collect()
    }

    async fn create_namespace(&self, name: &str, lbls: &[(&str, &str)]) -> Rpc<Namespace> {
        let req = CreateNamespaceRequest {
            namespace: Some(Namespace {
                name: name.into(),
                labels: labels(lbls),
            }),
        };
        into_inner(self.namespaces.clone().create(ns_req("default", req)).await)
            .map(|r| r.namespace.unwrap_or_default())
    }

    async fn update_namespace(
        &self,
        name: &str,
        lbls: HashMap<String, String>,
        update_mask: Option<FieldMask>,
    ) -> Rpc<()> {
        let req = UpdateNamespaceRequest {
            namespace: Some(Namespace {
                name: name.into(),
                labels: lbls,
            }),
            update_mask,
        };
        into_inner(self.namespaces.clone().update(ns_req("default", req)).await).map(drop)
    }

    async fn delete_namespace(&self, name: &str) -> Rpc<()> {
        let req = DeleteNamespaceRequest { name: name.into() };
        into_inner(self.namespaces.clone().delete(ns_req("default", req)).await)
    }

    async fn info(&self, ns: &str, digest: &str) -> Rpc<Info> {
        let req = InfoRequest {
            digest: digest.into(),
        };
        into_inner(self.content.clone().info(ns_req(ns, req)).await)
            .map(|r| r.info.expect("InfoResponse.info"))
    }

    async fn update_info(
        &self,
        ns: &str,
        digest: &str,
        lbls: HashMap<String, String>,
        update_mask: Option<FieldMask>,
    ) -> Rpc<Info> {
        let req = UpdateContentRequest {
            info: Some(Info {
                digest: digest.into(),
                labels: lbls,
                ..Default::default()
            }),
            update_mask,
        };
        into_inner(self.content.clone().update(ns_req(ns, req)).await)
            .map(|r| r.info.expect("UpdateResponse.info"))
    }

    async fn list_content(&self, ns: &str, filters: &[&str]) -> Rpc<Vec<Info>> {
        let req = ListContentRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        let stream = into_inner(self.content.clone().list(ns_req(ns, req)).await)?;
        let mut v: Vec<Info> = drain(stream)
            .await?
            .into_iter()
            .flat_map(|r| r.info)
            .collect();
        v.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(v)
    }

    async fn delete_content(&self, ns: &str, digest: &str) -> Rpc<()> {
        let req = DeleteContentRequest {
            digest: digest.into(),
        };
        into_inner(self.content.clone().delete(ns_req(ns, req)).await)
    }

    /// The raw Read stream: every chunk with its offset.
    async fn read_chunks(
        &self,
        ns: &str,
        digest: &str,
        offset: i64,
        size: i64,
    ) -> Rpc<Vec<ReadContentResponse>> {
        let req = ReadContentRequest {
            digest: digest.into(),
            offset,
            size,
        };
        let stream = into_inner(self.content.clone().read(ns_req(ns, req)).await)?;
        drain(stream).await
    }

    /// Read and reassemble, checking the chunking rules on the way (≤ 1 MiB, contiguous offsets).
    async fn read(&self, ns: &str, digest: &str, offset: i64, size: i64) -> Rpc<Vec<u8>> {
        let chunks = self.read_chunks(ns, digest, offset, size).await?;
        let mut data = Vec::new();
        for c in chunks {
            assert!(
                c.data.len() <= MIB,
                "Read chunk of {} bytes exceeds 1 MiB",
                c.data.len()
            );
            if !c.data.is_empty() {
                assert_eq!(
                    c.offset,
                    offset + data.len() as i64,
                    "Read chunk offsets must be contiguous from the requested offset"
                );
            }
            data.extend_from_slice(&c.data);
        }
        Ok(data)
    }

    async fn status(&self, ns: &str, r: &str) -> Rpc<IngestStatus> {
        let req = StatusRequest { r#ref: r.into() };
        into_inner(self.content.clone().status(ns_req(ns, req)).await)
            .map(|r| r.status.expect("StatusResponse.status"))
    }

    async fn list_statuses(&self, ns: &str, filters: &[&str]) -> Rpc<Vec<IngestStatus>> {
        let req = ListStatusesRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        into_inner(self.content.clone().list_statuses(ns_req(ns, req)).await).map(|r| r.statuses)
    }

    async fn abort(&self, ns: &str, r: &str) -> Rpc<()> {
        let req = AbortRequest { r#ref: r.into() };
        into_inner(self.content.clone().abort(ns_req(ns, req)).await)
    }

    /// Write a whole blob the way containerd's client does (STAT, 1 MiB WRITEs, COMMIT).
    async fn write_blob(
        &self,
        ns: &str,
        lease: Option<&str>,
        r: &str,
        data: &[u8],
        lbls: HashMap<String, String>,
    ) -> Rpc<String> {
        let expected = digest_of(data);
        let total = data.len() as i64;
        let (mut w, _) = Writer::open(self, ns, lease, stat(r, total, &expected)).await?;
        for (i, chunk) in data.chunks(MIB).enumerate() {
            w.send(write_at((i * MIB) as i64, chunk)).await?;
        }
        let done = w.commit(total, &expected, lbls).await?;
        assert_eq!(done.digest, expected, "COMMIT response digest");
        Ok(expected)
    }

    async fn subscribe(&self, filters: &[&str]) -> Streaming<Envelope> {
        let req = SubscribeRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        ok(
            into_inner(self.events.clone().subscribe(ns_req("default", req)).await),
            "Events/Subscribe",
        )
    }

    async fn server_uuid(&self) -> String {
        let r = self
            .introspection
            .clone()
            .server(ns_req("default", ()))
            .await;
        ok(into_inner(r), "Introspection/Server").uuid
    }

    async fn version_ok(&self) {
        let v = ok(
            into_inner(self.version.clone().version(ns_req("default", ())).await),
            "Version/Version",
        );
        assert!(!v.version.is_empty(), "Version/Version: empty version");
    }
}

fn container_ids(v: &[Container]) -> Vec<String> {
    sorted(v.iter().map(|c| c.id.clone()))
}

fn image_names(v: &[Image]) -> Vec<String> {
    sorted(v.iter().map(|i| i.name.clone()))
}

fn lease_ids(v: &[Lease]) -> Vec<String> {
    sorted(v.iter().map(|l| l.id.clone()))
}

fn digests(v: &[Info]) -> Vec<String> {
    sorted(v.iter().map(|i| i.digest.clone()))
}

/// Sorted container ids from both List and ListStream, which must agree record for record (an
/// unfiltered List sends the stored encodings as they are; ListStream decodes and re-encodes).
async fn container_ids_both_ways(api: &Api, ns: &str, filters: &[&str]) -> Vec<String> {
    let by_id = |mut v: Vec<Container>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let listed = by_id(ok(
        api.list_containers(ns, filters).await,
        &format!("Containers/List {filters:?}"),
    ));
    let streamed = by_id(ok(
        api.list_stream_containers(ns, filters).await,
        &format!("Containers/ListStream {filters:?}"),
    ));
    assert_eq!(
        listed, streamed,
        "List and ListStream disagree for {filters:?}"
    );
    container_ids(&listed)
}

// ---------------------------------------------------------------------------------------------
// Content.Write, lock-step
// ---------------------------------------------------------------------------------------------

fn stat(r: &str, total: i64, expected: &str) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r.into(),
        total,
        expected: expected.into(),
        ..Default::default()
    }
}

fn write_at(offset: i64, data: &[u8]) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Write as i32,
        offset,
        data: data.to_vec(),
        ..Default::default()
    }
}

fn commit(total: i64, expected: &str, lbls: HashMap<String, String>) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Commit as i32,
        total,
        expected: expected.into(),
        labels: lbls,
        ..Default::default()
    }
}

/// One Content.Write stream driven lock-step: each request waits for its response.
struct Writer {
    tx: mpsc::Sender<WriteContentRequest>,
    rx: Streaming<WriteContentResponse>,
    /// The ingest's offset as the last response gave it.
    offset: i64,
}

impl Writer {
    /// Open a Write stream with `first` (which carries the ref); returns the first response.
    async fn open(
        api: &Api,
        ns: &str,
        lease: Option<&str>,
        first: WriteContentRequest,
    ) -> Rpc<(Writer, WriteContentResponse)> {
        let (tx, requests) = mpsc::channel(2);
        tx.send(first).await.expect("queue the first request");
        let requests = ReceiverStream::new(requests);
        let req = match lease {
            Some(l) => lease_req(ns, l, requests),
            None => ns_req(ns, requests),
        };
        let rx = into_inner(api.content.clone().write(req).await)?;
        let mut w = Writer { tx, rx, offset: 0 };
        let resp = w.recv().await?;
        Ok((w, resp))
    }

    async fn send(&mut self, r: WriteContentRequest) -> Rpc<WriteContentResponse> {
        // If the server already ended the stream, the status comes from recv().
        let _ = self.tx.send(r).await;
        self.recv().await
    }

    /// COMMIT at the offset written so far, as containerd's client does (an offset of 0 would
    /// start the ingest over).
    async fn commit(
        &mut self,
        total: i64,
        expected: &str,
        lbls: HashMap<String, String>,
    ) -> Rpc<WriteContentResponse> {
        let offset = self.offset;
        self.send(WriteContentRequest {
            offset,
            ..commit(total, expected, lbls)
        })
        .await
    }

    async fn recv(&mut self) -> Rpc<WriteContentResponse> {
        match tokio::time::timeout(PATIENCE, self.rx.message()).await {
            Err(_) => panic!("no Content.Write response within {PATIENCE:?}"),
            Ok(Ok(Some(r))) => {
                self.offset = r.offset;
                Ok(r)
            }
            Ok(Ok(None)) => Err(Status::unknown(
                "test client: Write stream ended without a response",
            )),
            Ok(Err(s)) => Err(s),
        }
    }
}

fn blob_path(d: &Daemon, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    d.root().join("content/blobs/sha256").join(hex)
}

// ---------------------------------------------------------------------------------------------
// 1. Containers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_keep_anys_verbatim_and_honour_filters_and_masks() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "ctrs";

    let mut web = container(
        "web",
        "docker.io/library/nginx:latest",
        &[("a.b", "c"), ("k", "v")],
    );
    web.extensions.insert(
        "ext.example.com/note".into(),
        Any {
            type_url: "example.com/v1/Note".into(),
            value: b"\x0a\x05hello\x10\x2a".to_vec(),
        },
    );
    let created = ok(api.create_container(ns, web.clone()).await, "Create web");
    let got = ok(api.get_container(ns, "web").await, "Get web");
    assert_eq!(created, got, "Create's answer and Get differ");
    assert_eq!(got.spec, web.spec, "spec Any (type_url and bytes)");
    assert_eq!(got.extensions, web.extensions, "extensions Anys");
    assert_eq!(got.runtime, web.runtime, "runtime name and options Any");
    assert_eq!(got.labels, web.labels);
    assert_eq!(got.image, web.image);
    assert_eq!(
        (got.snapshotter.as_str(), got.snapshot_key.as_str()),
        ("overlayfs", "web-snapshot")
    );
    assert_recent(&got.created_at, "created_at");
    assert_recent(&got.updated_at, "updated_at");

    let db = container("db", "quay.io/example/postgres:16", &[("k", "v")]);
    ok(api.create_container(ns, db).await, "Create db");
    let mut cache = container("cache", "docker.io/library/redis:7", &[("a.b", "d")]);
    cache.runtime = Some(Runtime {
        name: "io.containerd.runsc.v1".into(),
        options: None,
    });
    ok(api.create_container(ns, cache).await, "Create cache");

    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["cache", "db", "web"]),
        (&["id==web"], &["web"]),
        (&["labels.\"a.b\"==c"], &["web"]),
        (&["image~=^docker"], &["cache", "web"]),
        (&["id==db,labels.k==v"], &["db"]),
        (&["id==cache,labels.k==v"], &[]),
        (&["id==web", "id==db"], &["db", "web"]),
        (&["runtime.name==io.containerd.runc.v2"], &["db", "web"]),
        (&["labels.k"], &["db", "web"]),
        (&["id!=web"], &["cache", "db"]),
    ];
    for (filters, want) in cases {
        assert_eq!(
            container_ids_both_ways(&api, ns, filters).await,
            strings(want),
            "filters {filters:?}"
        );
    }
    for bad in ["id==", "labels.\"unterminated", "id~=("] {
        fails(
            api.list_containers(ns, &[bad]).await,
            Code::InvalidArgument,
            &format!("List {bad:?}"),
        );
        fails(
            api.list_stream_containers(ns, &[bad]).await,
            Code::InvalidArgument,
            &format!("ListStream {bad:?}"),
        );
    }

    // labels.KEY sets one label and leaves the others; the key may contain dots.
    let before = ok(api.get_container(ns, "web").await, "Get web");
    let patch = Container {
        id: "web".into(),
        labels: labels(&[("k", "new"), ("unmasked", "ignored")]),
        ..Default::default()
    };
    let after = ok(
        api.update_container(ns, patch, mask(&["labels.k"])).await,
        "Update labels.k",
    );
    assert_eq!(after.labels, labels(&[("a.b", "c"), ("k", "new")]));
    assert_eq!(
        (&after.image, &after.spec, &after.runtime),
        (&before.image, &before.spec, &before.runtime),
        "labels.k must touch nothing else"
    );
    assert_eq!(after.created_at, before.created_at, "created_at is fixed");
    assert!(ts_key(&after.updated_at) >= ts_key(&before.updated_at));
    assert_eq!(ok(api.get_container(ns, "web").await, "Get web"), after);

    // labels.a.b with no value deletes the label "a.b".
    let patch = Container {
        id: "web".into(),
        ..Default::default()
    };
    let after = ok(
        api.update_container(ns, patch, mask(&["labels.a.b"])).await,
        "Update labels.a.b (delete)",
    );
    assert_eq!(after.labels, labels(&[("k", "new")]));

    // labels replaces them all.
    let patch = Container {
        id: "web".into(),
        labels: labels(&[("z", "1")]),
        ..Default::default()
    };
    let after = ok(
        api.update_container(ns, patch, mask(&["labels"])).await,
        "Update labels",
    );
    assert_eq!(after.labels, labels(&[("z", "1")]));

    // spec replaces the spec, verbatim.
    let patch = Container {
        id: "web".into(),
        spec: Some(other_spec_any()),
        ..Default::default()
    };
    let after = ok(
        api.update_container(ns, patch, mask(&["spec"])).await,
        "Update spec",
    );
    assert_eq!(after.spec, Some(other_spec_any()));
    assert_eq!(
        after.labels,
        labels(&[("z", "1")]),
        "spec must not touch labels"
    );

    // image.
    let patch = Container {
        id: "web".into(),
        image: "docker.io/library/nginx:1.27".into(),
        ..Default::default()
    };
    let after = ok(
        api.update_container(ns, patch, mask(&["image"])).await,
        "Update image",
    );
    assert_eq!(after.image, "docker.io/library/nginx:1.27");
    assert_eq!(
        after.spec,
        Some(other_spec_any()),
        "image must not touch spec"
    );

    // An unknown mask path: InvalidArgument, record unchanged.
    let before = ok(api.get_container(ns, "web").await, "Get web");
    let patch = Container {
        id: "web".into(),
        labels: labels(&[("x", "y")]),
        image: "evil".into(),
        ..Default::default()
    };
    fails(
        api.update_container(ns, patch, mask(&["labels", "bogus"]))
            .await,
        Code::InvalidArgument,
        "Update with mask path \"bogus\"",
    );
    assert_eq!(ok(api.get_container(ns, "web").await, "Get web"), before);

    // No mask is a full update, but the snapshotter is immutable.
    let mut full = before.clone();
    full.snapshotter = "native".into();
    full.labels = labels(&[("changed", "yes")]);
    fails(
        api.update_container(ns, full, None).await,
        Code::InvalidArgument,
        "full Update changing the snapshotter",
    );
    assert_eq!(ok(api.get_container(ns, "web").await, "Get web"), before);

    // Update of a missing container: NotFound, and it is not created.
    fails(
        api.update_container(ns, container("ghost", "x", &[]), mask(&["image"]))
            .await,
        Code::NotFound,
        "Update missing container",
    );
    fails(
        api.get_container(ns, "ghost").await,
        Code::NotFound,
        "Get ghost",
    );

    // Duplicate Create: AlreadyExists, original untouched.
    fails(
        api.create_container(ns, container("web", "other:image", &[]))
            .await,
        Code::AlreadyExists,
        "duplicate Create",
    );
    assert_eq!(ok(api.get_container(ns, "web").await, "Get web"), before);

    // Delete.
    ok(api.delete_container(ns, "web").await, "Delete web");
    fails(
        api.get_container(ns, "web").await,
        Code::NotFound,
        "Get after Delete",
    );
    fails(
        api.delete_container(ns, "web").await,
        Code::NotFound,
        "second Delete",
    );
    assert_eq!(
        container_ids_both_ways(&api, ns, &[]).await,
        strings(&["cache", "db"])
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Images
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_create_get_list_update_delete() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "imgs";
    let busybox = "docker.io/library/busybox:latest";
    let nginx = "docker.io/library/nginx:1.27";

    let created = ok(
        api.create_image(ns, image(busybox, INDEX_MT, &[("x", "1")]))
            .await,
        "Create busybox",
    );
    let got = ok(api.get_image(ns, busybox).await, "Get busybox");
    assert_eq!(created, got);
    assert_eq!(got.target, image(busybox, INDEX_MT, &[]).target);
    assert_eq!(got.labels, labels(&[("x", "1")]));
    assert_recent(&got.created_at, "image created_at");
    assert_recent(&got.updated_at, "image updated_at");
    ok(
        api.create_image(ns, image(nginx, MANIFEST_MT, &[("x", "2")]))
            .await,
        "Create nginx",
    );

    let mediatype_filter = format!("target.mediatype=={MANIFEST_MT}");
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &[busybox, nginx]),
        (&["name==docker.io/library/busybox:latest"], &[busybox]),
        (&["labels.x==2"], &[nginx]),
        (&[&mediatype_filter], &[nginx]),
        (&["name~=nginx", "labels.x==1"], &[busybox, nginx]),
        (&["name~=^docker.io/,labels.x==1"], &[busybox]),
    ];
    for (filters, want) in cases {
        let got = ok(api.list_images(ns, filters).await, "Images/List");
        assert_eq!(image_names(&got), strings(want), "filters {filters:?}");
    }
    fails(
        api.list_images(ns, &["name~=("]).await,
        Code::InvalidArgument,
        "Images/List malformed filter",
    );

    // labels.k
    let before = ok(api.get_image(ns, busybox).await, "Get");
    let patch = Image {
        name: busybox.into(),
        labels: labels(&[("k", "v"), ("unmasked", "no")]),
        ..Default::default()
    };
    let after = ok(
        api.update_image(ns, patch, mask(&["labels.k"])).await,
        "Update labels.k",
    );
    assert_eq!(after.labels, labels(&[("x", "1"), ("k", "v")]));
    assert_eq!(after.target, before.target);
    assert_eq!(after.created_at, before.created_at);

    // target
    let new_target = descriptor(MANIFEST_MT, b"a new manifest");
    let patch = Image {
        name: busybox.into(),
        target: Some(new_target.clone()),
        ..Default::default()
    };
    let after = ok(
        api.update_image(ns, patch, mask(&["target"])).await,
        "Update target",
    );
    assert_eq!(after.target, Some(new_target.clone()));
    assert_eq!(after.labels, labels(&[("x", "1"), ("k", "v")]));

    // annotations.k sets one annotation of the target and keeps the rest of it.
    let mut annotated = new_target.clone();
    annotated.annotations = labels(&[("org.opencontainers.image.ref.name", "latest")]);
    let patch = Image {
        name: busybox.into(),
        target: Some(Descriptor {
            annotations: annotated.annotations.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let after = ok(
        api.update_image(
            ns,
            patch,
            mask(&["annotations.org.opencontainers.image.ref.name"]),
        )
        .await,
        "Update annotations.k",
    );
    assert_eq!(after.target, Some(annotated));

    // No mask: full replace.
    let replacement = image(busybox, INDEX_MT, &[("only", "this")]);
    let after = ok(
        api.update_image(ns, replacement.clone(), None).await,
        "Update without mask",
    );
    assert_eq!(after.labels, replacement.labels);
    assert_eq!(after.target, replacement.target);
    assert_eq!(ok(api.get_image(ns, busybox).await, "Get"), after);

    // Unknown mask path: InvalidArgument, unchanged.
    let patch = Image {
        name: busybox.into(),
        labels: labels(&[("a", "b")]),
        ..Default::default()
    };
    fails(
        api.update_image(ns, patch, mask(&["labels", "bogus"]))
            .await,
        Code::InvalidArgument,
        "Update with mask path \"bogus\"",
    );
    assert_eq!(ok(api.get_image(ns, busybox).await, "Get"), after);

    // Update of a missing image: NotFound (import relies on it) and nothing created.
    fails(
        api.update_image(ns, image("missing:1", INDEX_MT, &[]), None)
            .await,
        Code::NotFound,
        "Update missing image",
    );
    let all = ok(api.list_images(ns, &[]).await, "List");
    assert_eq!(image_names(&all), strings(&[busybox, nginx]));

    // Duplicate Create.
    fails(
        api.create_image(ns, image(nginx, INDEX_MT, &[])).await,
        Code::AlreadyExists,
        "duplicate Create",
    );
    assert_eq!(
        ok(api.get_image(ns, nginx).await, "Get nginx").target,
        image(nginx, MANIFEST_MT, &[]).target
    );

    // Delete.
    ok(api.delete_image(ns, busybox).await, "Delete busybox");
    fails(
        api.get_image(ns, busybox).await,
        Code::NotFound,
        "Get after Delete",
    );
    fails(
        api.delete_image(ns, busybox).await,
        Code::NotFound,
        "second Delete",
    );
    let all = ok(api.list_images(ns, &[]).await, "List");
    assert_eq!(image_names(&all), strings(&[nginx]));
}

// ---------------------------------------------------------------------------------------------
// 3. Namespaces
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_required_implicit_and_isolating() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;

    // No containerd-namespace header at all.
    let bare = Request::new(ListContainersRequest::default());
    let st = fails(
        into_inner(api.containers.clone().list(bare).await),
        Code::FailedPrecondition,
        "Containers/List without namespace header",
    );
    assert!(
        st.message().contains("namespace"),
        "the message should say what is missing: {:?}",
        st.message()
    );

    // Get of an unknown namespace answers it, empty, without creating it.
    let ghost = ok(api.get_namespace("ghost").await, "Get unknown namespace");
    assert_eq!(ghost.name, "ghost");
    assert!(ghost.labels.is_empty());
    assert!(!api.namespace_names().await.contains(&"ghost".to_string()));

    // A write creates its namespace.
    ok(
        api.create_container("implicit", container("c1", "img", &[]))
            .await,
        "Create in a new namespace",
    );
    assert!(api
        .namespace_names()
        .await
        .contains(&"implicit".to_string()));

    // Explicit create and labels.
    ok(
        api.create_namespace("explicit", &[("team", "infra")]).await,
        "Namespaces/Create",
    );
    ok(
        api.update_namespace(
            "explicit",
            labels(&[("env", "prod")]),
            mask(&["labels.env"]),
        )
        .await,
        "Namespaces/Update labels.env",
    );
    assert_eq!(
        ok(api.get_namespace("explicit").await, "Get explicit").labels,
        labels(&[("team", "infra"), ("env", "prod")])
    );
    fails(
        api.create_namespace("explicit", &[]).await,
        Code::AlreadyExists,
        "duplicate Namespaces/Create",
    );

    // Deleting a namespace that holds something.
    fails(
        api.delete_namespace("implicit").await,
        Code::FailedPrecondition,
        "Delete non-empty namespace",
    );
    assert!(api
        .namespace_names()
        .await
        .contains(&"implicit".to_string()));
    ok(api.get_container("implicit", "c1").await, "c1 survives");
    ok(api.delete_container("implicit", "c1").await, "Delete c1");
    ok(
        api.delete_namespace("implicit").await,
        "Delete empty namespace",
    );
    assert!(!api
        .namespace_names()
        .await
        .contains(&"implicit".to_string()));

    // Isolation: nothing of tenant-a is visible or reachable from tenant-b.
    let (a, b) = ("tenant-a", "tenant-b");
    ok(
        api.create_container(a, container("shared-id", "img", &[]))
            .await,
        "Create a/container",
    );
    ok(
        api.create_image(a, image("shared/image:1", INDEX_MT, &[]))
            .await,
        "Create a/image",
    );
    let data = blob(4096, 7);
    let dgst = ok(
        api.write_blob(a, None, "a-ref", &data, HashMap::new())
            .await,
        "Write a/blob",
    );
    ok(
        api.create_lease(a, "a-lease", HashMap::new()).await,
        "Create a/lease",
    );
    ok(
        api.add_resource(a, "a-lease", resource("content", &dgst))
            .await,
        "AddResource a/lease",
    );
    ok(
        api.create_container(b, container("other", "img", &[]))
            .await,
        "Create b/container",
    );

    fails(
        api.get_container(b, "shared-id").await,
        Code::NotFound,
        "b: Get a's container",
    );
    fails(
        api.get_image(b, "shared/image:1").await,
        Code::NotFound,
        "b: Get a's image",
    );
    fails(api.info(b, &dgst).await, Code::NotFound, "b: Info a's blob");
    fails(
        api.read(b, &dgst, 0, 0).await,
        Code::NotFound,
        "b: Read a's blob",
    );
    fails(
        api.list_resources(b, "a-lease").await,
        Code::NotFound,
        "b: ListResources of a's lease",
    );
    fails(
        api.update_container(b, container("shared-id", "x", &[]), mask(&["image"]))
            .await,
        Code::NotFound,
        "b: Update a's container",
    );
    fails(
        api.delete_container(b, "shared-id").await,
        Code::NotFound,
        "b: Delete a's container",
    );
    fails(
        api.delete_image(b, "shared/image:1").await,
        Code::NotFound,
        "b: Delete a's image",
    );
    fails(
        api.delete_content(b, &dgst).await,
        Code::NotFound,
        "b: Delete a's blob",
    );
    fails(
        api.delete_lease(b, "a-lease").await,
        Code::NotFound,
        "b: Delete a's lease",
    );
    assert_eq!(
        container_ids_both_ways(&api, b, &[]).await,
        strings(&["other"])
    );
    assert!(ok(api.list_images(b, &[]).await, "b images").is_empty());
    assert!(ok(api.list_content(b, &[]).await, "b content").is_empty());
    assert!(ok(api.list_leases(b, &[]).await, "b leases").is_empty());

    // And a still has everything.
    ok(
        api.get_container(a, "shared-id").await,
        "a container intact",
    );
    ok(api.get_image(a, "shared/image:1").await, "a image intact");
    assert_eq!(ok(api.read(a, &dgst, 0, 0).await, "a blob intact"), data);
    assert_eq!(
        ok(api.list_resources(a, "a-lease").await, "a lease intact"),
        vec![("content".to_string(), dgst.clone())]
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Content
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_write_lock_step_then_read_with_offsets() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "content";
    let data = blob(5 * MIB, 1);
    let total = data.len() as i64;
    let expected = digest_of(&data);
    let empty_digest = digest_of(b"");

    let (mut w, st) = ok(
        Writer::open(&api, ns, None, stat("five-mib", total, &expected)).await,
        "Write STAT",
    );
    assert_eq!(st.action, WriteAction::Stat as i32);
    assert_eq!((st.offset, st.total), (0, total), "STAT offset/total");
    assert_recent(&st.started_at, "STAT started_at");
    assert!(
        st.digest.is_empty() || st.digest == empty_digest,
        "STAT digest of nothing written: {:?}",
        st.digest
    );
    let mut hasher = Sha256::new();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        let offset = (i * MIB) as i64;
        let r = ok(w.send(write_at(offset, chunk)).await, "Write WRITE");
        hasher.update(chunk);
        let running = format!("sha256:{}", hex::encode(hasher.clone().finalize()));
        assert_eq!(r.action, WriteAction::Write as i32);
        assert_eq!(r.offset, offset + chunk.len() as i64, "WRITE offset");
        assert_eq!(r.total, total, "WRITE total");
        assert_eq!(r.digest, running, "WRITE running digest");
    }
    let c = ok(
        w.commit(total, &expected, labels(&[("k", "v")])).await,
        "Write COMMIT",
    );
    assert_eq!(c.action, WriteAction::Commit as i32);
    assert_eq!((c.offset, c.total), (total, total), "COMMIT offset/total");
    assert_eq!(c.digest, expected, "COMMIT digest");
    drop(w);

    let info = ok(api.info(ns, &expected).await, "Info");
    assert_eq!(
        (info.digest.as_str(), info.size),
        (expected.as_str(), total)
    );
    assert_eq!(info.labels, labels(&[("k", "v")]), "labels from COMMIT");
    assert_recent(&info.created_at, "Info created_at");
    assert!(blob_path(&d, &expected).is_file(), "blob file on disk");
    fails(
        api.status(ns, "five-mib").await,
        Code::NotFound,
        "Status after commit",
    );

    let all = ok(api.read(ns, &expected, 0, 0).await, "Read all");
    assert!(all == data, "Read(0, 0) must return the whole blob");
    assert_eq!(
        ok(api.read(ns, &expected, 1000, 10).await, "Read 1000+10"),
        data[1000..1010]
    );
    let tail = ok(
        api.read(ns, &expected, total - 5, 100).await,
        "Read past end",
    );
    assert_eq!(
        tail,
        data[data.len() - 5..],
        "size past the end reads to the end"
    );
    let mid = ok(
        api.read(ns, &expected, MIB as i64 - 3, MIB as i64 + 7)
            .await,
        "Read across chunks",
    );
    assert!(
        mid == data[MIB - 3..2 * MIB + 4],
        "Read across a 1 MiB boundary"
    );
    assert!(
        ok(api.read(ns, &expected, total, 0).await, "Read at end").is_empty(),
        "offset = size reads nothing"
    );
    fails(
        api.read(ns, &expected, total + 1, 0).await,
        Code::OutOfRange,
        "Read offset > size",
    );
    fails(
        api.read(ns, &digest_of(b"absent"), 0, 0).await,
        Code::NotFound,
        "Read missing blob",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_write_resumes_by_ref_across_streams_and_restarts() {
    let mut d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "resume";
    let data = blob(5 * MIB, 2);
    let total = data.len() as i64;
    let expected = digest_of(&data);

    // Write 2 MiB under ref R, then drop the stream.
    let (mut w, _) = ok(
        Writer::open(&api, ns, None, stat("R", total, &expected)).await,
        "STAT R",
    );
    for i in 0..2 {
        ok(
            w.send(write_at((i * MIB) as i64, &data[i * MIB..(i + 1) * MIB]))
                .await,
            "WRITE",
        );
    }
    drop(w);

    // The ingest shows in Status and ListStatuses.
    let st = ok(api.status(ns, "R").await, "Status R");
    assert_eq!(
        (st.r#ref.as_str(), st.offset, st.total),
        ("R", 2 * MIB as i64, total)
    );
    assert_recent(&st.started_at, "Status started_at");
    assert_recent(&st.updated_at, "Status updated_at");
    let listed = ok(api.list_statuses(ns, &[""]).await, "ListStatuses [\"\"]");
    assert_eq!(
        sorted(listed.iter().map(|s| s.r#ref.clone())),
        strings(&["R"])
    );
    let listed = ok(
        api.list_statuses(ns, &["ref==R"]).await,
        "ListStatuses ref==R",
    );
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].offset, 2 * MIB as i64);

    // A new stream on R resumes at 2 MiB. The old stream's lock may take a moment to go.
    let (mut w, st) = reopen(&api, ns, stat("R", total, &expected)).await;
    assert_eq!(st.offset, 2 * MIB as i64, "resumed STAT offset");
    assert_eq!(st.total, total);
    assert_eq!(
        st.digest,
        digest_of(&data[..2 * MIB]),
        "resumed running digest"
    );
    ok(
        w.send(write_at(2 * MIB as i64, &data[2 * MIB..3 * MIB]))
            .await,
        "WRITE after resume",
    );

    // Kill the daemon in the middle of the stream, restart, resume at 3 MiB.
    d.kill9();
    d.spawn();
    let api = Api::connect(&d).await;
    let st = ok(api.status(ns, "R").await, "Status R after restart");
    assert_eq!(st.offset, 3 * MIB as i64, "ingest offset survives kill -9");
    let (mut w, st) = ok(
        Writer::open(&api, ns, None, stat("R", total, &expected)).await,
        "STAT R after restart",
    );
    assert_eq!(
        st.offset,
        3 * MIB as i64,
        "resumed STAT offset after restart"
    );
    for i in 3..5 {
        ok(
            w.send(write_at((i * MIB) as i64, &data[i * MIB..(i + 1) * MIB]))
                .await,
            "WRITE after restart",
        );
    }
    let c = ok(
        w.commit(total, &expected, HashMap::new()).await,
        "COMMIT after restart",
    );
    assert_eq!((c.offset, c.digest.as_str()), (total, expected.as_str()));
    drop(w);
    assert!(ok(api.read(ns, &expected, 0, 0).await, "Read resumed blob") == data);
    fails(
        api.status(ns, "R").await,
        Code::NotFound,
        "Status after commit",
    );

    // Abort removes an ingest; a new Write under the ref starts from zero.
    let (mut w, _) = ok(
        Writer::open(&api, ns, None, stat("A", 0, "")).await,
        "STAT A",
    );
    ok(w.send(write_at(0, b"partial")).await, "WRITE A");
    drop(w);
    ok(while_locked(|| api.abort(ns, "A")).await, "Abort A");
    fails(
        api.status(ns, "A").await,
        Code::NotFound,
        "Status after Abort",
    );
    assert!(ok(api.list_statuses(ns, &[]).await, "ListStatuses").is_empty());
    fails(api.abort(ns, "A").await, Code::NotFound, "second Abort");
    let (_w, st) = ok(
        Writer::open(&api, ns, None, stat("A", 0, "")).await,
        "STAT A after Abort",
    );
    assert_eq!(st.offset, 0, "an aborted ref starts again from zero");
}

/// Retry `call` while it answers Unavailable: the server notices a dropped client stream (and
/// releases its ref) asynchronously.
async fn while_locked<T, F, Fut>(mut call: F) -> Rpc<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Rpc<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match call().await {
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            r => return r,
        }
    }
}

/// Open a Write stream, waiting for a just-dropped stream on the same ref to let go of it.
async fn reopen(api: &Api, ns: &str, first: WriteContentRequest) -> (Writer, WriteContentResponse) {
    let what = format!("reopen {:?}", first.r#ref);
    ok(
        while_locked(|| Writer::open(api, ns, None, first.clone())).await,
        &what,
    )
}

/// containerd's Content.Write reads a WRITE or COMMIT at offset 0 after data as "start over": the
/// ingest is truncated, so a COMMIT that forgot its offset commits nothing and fails on the size.
/// Any other offset must be the current one (OutOfRange), for a COMMIT as for a WRITE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_commit_at_offset_0_starts_over_as_in_containerd() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "commit-offset";
    let data = blob(100, 7);
    let right = digest_of(&data);

    let (mut w, _) = ok(
        Writer::open(&api, ns, None, stat("zero", 100, &right)).await,
        "STAT",
    );
    ok(w.send(write_at(0, &data)).await, "WRITE");
    fails(
        w.send(commit(100, &right, HashMap::new())).await,
        Code::FailedPrecondition,
        "COMMIT at offset 0 after 100 bytes",
    );
    drop(w);
    fails(
        api.info(ns, &right).await,
        Code::NotFound,
        "Info after a COMMIT at offset 0",
    );
    assert!(!blob_path(&d, &right).exists(), "no blob after offset 0");
    let st = ok(api.status(ns, "zero").await, "Status after COMMIT at 0");
    assert_eq!(st.offset, 0, "the COMMIT at offset 0 truncated the ingest");

    // Started over, the same ref takes the bytes again and commits at their end.
    let (mut w, st) = reopen(&api, ns, stat("zero", 100, &right)).await;
    assert_eq!(st.offset, 0);
    ok(w.send(write_at(0, &data)).await, "WRITE again");
    let c = ok(
        w.commit(100, &right, HashMap::new()).await,
        "COMMIT at offset 100",
    );
    assert_eq!((c.offset, c.digest.as_str()), (100, right.as_str()));
    drop(w);
    assert_eq!(ok(api.read(ns, &right, 0, 0).await, "Read"), data);

    // A COMMIT at an offset the ingest is not at: OutOfRange, the ingest unchanged.
    let other = blob(64, 9);
    let (mut w, _) = reopen(&api, ns, stat("ahead", 0, "")).await;
    ok(w.send(write_at(0, &other)).await, "WRITE");
    fails(
        w.send(WriteContentRequest {
            offset: 32,
            ..commit(64, &digest_of(&other), HashMap::new())
        })
        .await,
        Code::OutOfRange,
        "COMMIT at offset 32 of a 64-byte ingest",
    );
    drop(w);
    let st = ok(api.status(ns, "ahead").await, "Status after OutOfRange");
    assert_eq!(
        st.offset, 64,
        "the rejected COMMIT must not change the ingest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_write_rejects_bad_commits_offsets_and_concurrent_writers() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "strict";
    let data = blob(100, 3);
    let right = digest_of(&data);
    let wrong = digest_of(b"something else");

    // Wrong size at commit: error, nothing stored.
    let (mut w, _) = ok(
        Writer::open(&api, ns, None, stat("size", 0, "")).await,
        "STAT",
    );
    ok(w.send(write_at(0, &data)).await, "WRITE");
    fails(
        w.commit(101, &right, HashMap::new()).await,
        Code::FailedPrecondition,
        "COMMIT with the wrong total",
    );
    drop(w);
    fails(
        api.info(ns, &right).await,
        Code::NotFound,
        "Info after bad size",
    );
    assert!(!blob_path(&d, &right).exists(), "no blob after bad size");

    // Wrong expected digest: error, nothing stored under either digest.
    let (mut w, _) = ok(
        Writer::open(&api, ns, None, stat("digest", 0, "")).await,
        "STAT",
    );
    ok(w.send(write_at(0, &data)).await, "WRITE");
    fails(
        w.commit(100, &wrong, HashMap::new()).await,
        Code::FailedPrecondition,
        "COMMIT with the wrong digest",
    );
    drop(w);
    fails(
        api.info(ns, &right).await,
        Code::NotFound,
        "Info(actual) after bad digest",
    );
    fails(
        api.info(ns, &wrong).await,
        Code::NotFound,
        "Info(claimed) after bad digest",
    );
    assert!(ok(api.list_content(ns, &[]).await, "List").is_empty());
    assert!(!blob_path(&d, &right).exists() && !blob_path(&d, &wrong).exists());

    // WRITE at the wrong offset: OutOfRange, ingest unchanged.
    let (mut w, _) = ok(
        Writer::open(&api, ns, None, stat("offset", 0, "")).await,
        "STAT",
    );
    ok(w.send(write_at(0, &data)).await, "WRITE 0");
    fails(
        w.send(write_at(50, &data)).await,
        Code::OutOfRange,
        "WRITE at offset 50 of a 100-byte ingest",
    );
    drop(w);
    let st = ok(api.status(ns, "offset").await, "Status after OutOfRange");
    assert_eq!(
        st.offset, 100,
        "the rejected WRITE must not change the ingest"
    );
    let (_, st) = reopen(&api, ns, stat("offset", 0, "")).await;
    assert_eq!(st.offset, 100);

    // Two writers on one ref: the second gets Unavailable while the first holds it.
    let (mut first, _) = ok(
        Writer::open(&api, ns, None, stat("busy", 0, "")).await,
        "first writer",
    );
    fails(
        Writer::open(&api, ns, None, stat("busy", 0, ""))
            .await
            .map(|(_, r)| r),
        Code::Unavailable,
        "second writer on the same ref",
    );
    ok(
        first.send(write_at(0, &data)).await,
        "first writer still writes",
    );
    let c = ok(
        first.commit(100, &right, HashMap::new()).await,
        "first writer commits",
    );
    assert_eq!(c.digest, right);
    drop(first);
    assert_eq!(ok(api.info(ns, &right).await, "Info").size, 100);

    // Committing a digest that exists: AlreadyExists, the blob untouched.
    let (mut w, _) = reopen(&api, ns, stat("again", 0, "")).await;
    ok(w.send(write_at(0, &data)).await, "WRITE");
    fails(
        w.commit(100, &right, labels(&[("new", "label")])).await,
        Code::AlreadyExists,
        "COMMIT of an existing digest",
    );
    drop(w);
    let info = ok(api.info(ns, &right).await, "Info");
    assert!(
        info.labels.is_empty(),
        "AlreadyExists must not apply labels"
    );
    assert_eq!(ok(api.read(ns, &right, 0, 0).await, "Read"), data);

    // The first message must carry a ref.
    fails(
        Writer::open(&api, ns, None, stat("", 0, ""))
            .await
            .map(|(_, r)| r),
        Code::InvalidArgument,
        "Write without ref",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_labels_filters_and_delete() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "labels";
    let a = ok(
        api.write_blob(
            ns,
            None,
            "a",
            &blob(300, 4),
            labels(&[("k", "v"), ("a", "1")]),
        )
        .await,
        "write a",
    );
    let b = ok(
        api.write_blob(ns, None, "b", &blob(200, 5), labels(&[("k", "w")]))
            .await,
        "write b",
    );
    assert_eq!(
        ok(api.info(ns, &a).await, "Info a").labels,
        labels(&[("k", "v"), ("a", "1")])
    );

    let digest_filter = format!("digest=={a}");
    let cases: &[(&[&str], Vec<String>)] = &[
        (&[], sorted([a.clone(), b.clone()])),
        (&[&digest_filter], vec![a.clone()]),
        (&["labels.k==v"], vec![a.clone()]),
        (&["labels.k==w"], vec![b.clone()]),
        (
            &["labels.k==v", "labels.k==w"],
            sorted([a.clone(), b.clone()]),
        ),
        (&["labels.k==v,labels.a==2"], vec![]),
    ];
    for (filters, want) in cases {
        let got = digests(&ok(api.list_content(ns, filters).await, "Content/List"));
        assert_eq!(&got, want, "filters {filters:?}");
    }
    let listed = ok(api.list_content(ns, &[&digest_filter]).await, "List");
    assert_eq!(listed[0].size, 300);
    assert_eq!(listed[0].labels, labels(&[("k", "v"), ("a", "1")]));
    fails(
        api.list_content(ns, &["labels.\"unterminated"]).await,
        Code::InvalidArgument,
        "Content/List malformed filter",
    );

    // Masks.
    let after = ok(
        api.update_info(
            ns,
            &a,
            labels(&[("a", "2"), ("z", "9")]),
            mask(&["labels.a"]),
        )
        .await,
        "Update labels.a",
    );
    assert_eq!(after.labels, labels(&[("k", "v"), ("a", "2")]));
    assert_eq!(after.size, 300);
    let after = ok(
        api.update_info(ns, &a, labels(&[("only", "1")]), mask(&["labels"]))
            .await,
        "Update labels",
    );
    assert_eq!(after.labels, labels(&[("only", "1")]));
    assert_eq!(ok(api.info(ns, &a).await, "Info").labels, after.labels);
    fails(
        api.update_info(ns, &a, labels(&[("x", "y")]), mask(&["size"]))
            .await,
        Code::InvalidArgument,
        "Update mask \"size\"",
    );
    assert_eq!(ok(api.info(ns, &a).await, "Info").labels, after.labels);
    fails(
        api.update_info(
            ns,
            &digest_of(b"nope"),
            labels(&[("x", "y")]),
            mask(&["labels"]),
        )
        .await,
        Code::NotFound,
        "Update missing blob",
    );

    // Delete removes the record and the file.
    let path = blob_path(&d, &a);
    assert!(path.is_file());
    ok(api.delete_content(ns, &a).await, "Delete a");
    fails(api.info(ns, &a).await, Code::NotFound, "Info after Delete");
    fails(
        api.read(ns, &a, 0, 0).await,
        Code::NotFound,
        "Read after Delete",
    );
    fails(
        api.delete_content(ns, &a).await,
        Code::NotFound,
        "second Delete",
    );
    eventually("blob file removed after Delete", || !path.exists()).await;
    assert_eq!(
        digests(&ok(api.list_content(ns, &[]).await, "List")),
        vec![b]
    );

    // The same blob in two namespaces survives deletion from one.
    let shared = blob(1000, 6);
    let s1 = ok(
        api.write_blob("ns-one", None, "s", &shared, HashMap::new())
            .await,
        "write shared in ns-one",
    );
    let s2 = ok(
        api.write_blob("ns-two", None, "s", &shared, HashMap::new())
            .await,
        "write shared in ns-two",
    );
    assert_eq!(s1, s2);
    ok(
        api.delete_content("ns-one", &s1).await,
        "Delete from ns-one",
    );
    fails(api.info("ns-one", &s1).await, Code::NotFound, "ns-one Info");
    assert_eq!(ok(api.info("ns-two", &s1).await, "ns-two Info").size, 1000);
    assert_eq!(
        ok(api.read("ns-two", &s1, 0, 0).await, "ns-two Read"),
        shared
    );
    assert!(
        blob_path(&d, &s1).is_file(),
        "blob still referenced by ns-two"
    );
    ok(
        api.delete_content("ns-two", &s1).await,
        "Delete from ns-two",
    );
    let path = blob_path(&d, &s1);
    eventually("shared blob removed after its last reference", || {
        !path.exists()
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Leases
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_their_resources() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "leases";
    let l1_labels = labels(&[
        ("containerd.io/gc.expire", "2099-01-01T00:00:00Z"),
        ("x", "y"),
    ]);
    let l1 = ok(
        api.create_lease(ns, "l1", l1_labels.clone()).await,
        "Create l1",
    );
    assert_eq!((l1.id.as_str(), &l1.labels), ("l1", &l1_labels));
    assert_recent(&l1.created_at, "lease created_at");
    ok(
        api.create_lease(ns, "l2", HashMap::new()).await,
        "Create l2",
    );
    fails(
        api.create_lease(ns, "l1", HashMap::new()).await,
        Code::AlreadyExists,
        "duplicate lease",
    );

    let all = ok(api.list_leases(ns, &[]).await, "List");
    assert_eq!(lease_ids(&all), strings(&["l1", "l2"]));
    let only = ok(api.list_leases(ns, &["id==l1"]).await, "List id==l1");
    assert_eq!(only, vec![l1.clone()], "List id==l1 returns l1 as created");
    let by_label = ok(
        api.list_leases(ns, &["labels.x==y"]).await,
        "List labels.x==y",
    );
    assert_eq!(lease_ids(&by_label), strings(&["l1"]));

    let dgst = digest_of(b"leased");
    let wanted = [
        resource("content", &dgst),
        resource("ingests", "some-ref"),
        resource("snapshots/overlayfs", "sha256:abc layer key"),
    ];
    for r in &wanted {
        ok(api.add_resource(ns, "l1", r.clone()).await, "AddResource");
    }
    let expect_all: Vec<(String, String)> = {
        let mut v: Vec<_> = wanted
            .iter()
            .map(|r| (r.r#type.clone(), r.id.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        ok(api.list_resources(ns, "l1").await, "ListResources"),
        expect_all
    );
    assert!(ok(api.list_resources(ns, "l2").await, "ListResources l2").is_empty());

    fails(
        api.add_resource(ns, "l1", resource("images", "busybox"))
            .await,
        Code::InvalidArgument,
        "unsupported resource type",
    );
    fails(
        api.add_resource(ns, "missing", resource("content", &dgst))
            .await,
        Code::NotFound,
        "AddResource to a missing lease",
    );
    assert_eq!(
        ok(api.list_resources(ns, "l1").await, "unchanged"),
        expect_all
    );
    fails(
        api.list_resources(ns, "missing").await,
        Code::NotFound,
        "ListResources of a missing lease",
    );

    ok(
        api.delete_resource(ns, "l1", wanted[1].clone()).await,
        "DeleteResource ingests",
    );
    let mut left = expect_all.clone();
    left.retain(|(t, _)| t != "ingests");
    assert_eq!(ok(api.list_resources(ns, "l1").await, "after delete"), left);

    // Content written under the containerd-lease header belongs to that lease.
    let data = blob(2048, 9);
    let written = ok(
        api.write_blob(ns, Some("l2"), "leased-ref", &data, HashMap::new())
            .await,
        "write under lease l2",
    );
    let res = ok(api.list_resources(ns, "l2").await, "ListResources l2");
    assert!(
        res.contains(&("content".to_string(), written.clone())),
        "content written under lease l2 is one of its resources: {res:?}"
    );

    // Writing a blob the namespace already has answers AlreadyExists, and the blob joins the
    // writer's lease all the same (containerd's Writer does this), so a collection during the
    // client's work cannot take what the client relies on.
    fails(
        api.write_blob(ns, Some("l1"), "again-ref", &data, HashMap::new())
            .await,
        Code::AlreadyExists,
        "the same blob again, under lease l1",
    );
    let res = ok(api.list_resources(ns, "l1").await, "ListResources l1");
    assert!(
        res.contains(&("content".to_string(), written.clone())),
        "an existing blob written under l1 is one of its resources: {res:?}"
    );

    ok(api.delete_lease(ns, "l1").await, "Delete l1");
    assert_eq!(
        lease_ids(&ok(api.list_leases(ns, &[]).await, "List")),
        strings(&["l2"])
    );
    fails(
        api.delete_lease(ns, "l1").await,
        Code::NotFound,
        "second Delete",
    );
    fails(
        api.list_resources(ns, "l1").await,
        Code::NotFound,
        "ListResources of a deleted lease",
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Events
// ---------------------------------------------------------------------------------------------

async fn next_envelope(s: &mut Streaming<Envelope>) -> Envelope {
    match tokio::time::timeout(PATIENCE, s.message()).await {
        Err(_) => panic!("no event within {PATIENCE:?}"),
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) => panic!("Subscribe stream ended"),
        Ok(Err(st)) => panic!("Subscribe stream failed: {:?}: {}", st.code(), st.message()),
    }
}

#[track_caller]
fn assert_envelope(e: &Envelope, ns: &str, topic: &str, type_url: &str) {
    assert_eq!(
        (e.namespace.as_str(), e.topic.as_str()),
        (ns, topic),
        "envelope"
    );
    let ev = e.event.as_ref().expect("envelope carries an event");
    assert_eq!(
        ev.type_url, type_url,
        "event type_url (bare, no leading slash)"
    );
    assert_recent(&e.timestamp, "envelope timestamp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_subscribe_publish_forward() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "ev";
    let mut containers = api.subscribe(&[r#"topic~="^/containers/.*""#]).await;
    let mut custom = api.subscribe(&[r#"topic~="^/test/""#]).await;

    ok(
        api.create_container(
            ns,
            container("evc", "docker.io/library/busybox:latest", &[]),
        )
        .await,
        "Create",
    );
    // Not a container event: the filter must keep it out of the first stream.
    ok(
        api.create_image(ns, image("filtered/out:1", INDEX_MT, &[]))
            .await,
        "Create image",
    );
    let patch = Container {
        id: "evc".into(),
        labels: labels(&[("l", "1")]),
        ..Default::default()
    };
    ok(
        api.update_container(ns, patch, mask(&["labels.l"])).await,
        "Update",
    );
    ok(api.delete_container(ns, "evc").await, "Delete");

    let e = next_envelope(&mut containers).await;
    assert_envelope(
        &e,
        ns,
        "/containers/create",
        "containerd.events.ContainerCreate",
    );
    let create = ContainerCreate::decode(e.event.unwrap().value.as_slice()).expect("decode");
    assert_eq!(create.id, "evc");
    assert_eq!(create.image, "docker.io/library/busybox:latest");
    assert_eq!(create.runtime.map(|r| r.name).as_deref(), Some(RUNC));

    let e = next_envelope(&mut containers).await;
    assert_envelope(
        &e,
        ns,
        "/containers/update",
        "containerd.events.ContainerUpdate",
    );
    let update = ContainerUpdate::decode(e.event.unwrap().value.as_slice()).expect("decode");
    assert_eq!(update.id, "evc");
    assert_eq!(update.labels, labels(&[("l", "1")]));

    let e = next_envelope(&mut containers).await;
    assert_envelope(
        &e,
        ns,
        "/containers/delete",
        "containerd.events.ContainerDelete",
    );
    let delete = ContainerDelete::decode(e.event.unwrap().value.as_slice()).expect("decode");
    assert_eq!(delete.id, "evc");

    // Publish: bad topics are refused and never delivered; a good one arrives as sent.
    let payload = Any {
        type_url: "example.com/test.Ping".into(),
        value: b"\x0a\x04ping".to_vec(),
    };
    for bad in ["", "/", "test/no-slash", "/test/bad topic", "/test//empty"] {
        let req = PublishRequest {
            topic: bad.into(),
            event: Some(payload.clone()),
        };
        fails(
            into_inner(api.events.clone().publish(ns_req(ns, req)).await),
            Code::InvalidArgument,
            &format!("Publish topic {bad:?}"),
        );
    }
    let req = PublishRequest {
        topic: "/test/published".into(),
        event: Some(payload.clone()),
    };
    ok(
        into_inner(api.events.clone().publish(ns_req(ns, req)).await),
        "Publish",
    );
    let e = next_envelope(&mut custom).await;
    assert_envelope(&e, ns, "/test/published", "example.com/test.Ping");
    assert_eq!(
        e.event,
        Some(payload.clone()),
        "published Any arrives byte for byte"
    );

    // Forward: the envelope arrives unchanged, timestamp and namespace included.
    let envelope = Envelope {
        timestamp: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        }),
        namespace: "elsewhere".into(),
        topic: "/test/forwarded".into(),
        event: Some(payload),
    };
    let req = ForwardRequest {
        envelope: Some(envelope.clone()),
    };
    ok(
        into_inner(api.events.clone().forward(ns_req(ns, req)).await),
        "Forward",
    );
    assert_eq!(
        next_envelope(&mut custom).await,
        envelope,
        "forwarded envelope"
    );

    // Images and content publish containerd's topics and type URLs (the image events keep
    // containerd's quirky package, containerd.services.images.v1).
    let ns = "ev2";
    let mut all = api.subscribe(&["namespace==ev2"]).await;
    let name = "docker.io/library/evented:1";
    ok(
        api.create_image(ns, image(name, INDEX_MT, &[])).await,
        "Create image",
    );
    let patch = Image {
        name: name.into(),
        labels: labels(&[("l", "1")]),
        ..Default::default()
    };
    ok(
        api.update_image(ns, patch, mask(&["labels.l"])).await,
        "Update image",
    );
    ok(api.delete_image(ns, name).await, "Delete image");
    let dgst = ok(
        api.write_blob(ns, None, "ev", b"evented", HashMap::new())
            .await,
        "write blob",
    );
    ok(api.delete_content(ns, &dgst).await, "Delete blob");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = next_envelope(&mut all).await;
        assert_eq!(e.namespace, ns);
        let ev = e.event.expect("event");
        match e.topic.as_str() {
            "/content/create" => continue, // containerd 2 publishes it, 1.6 does not
            "/images/create" => {
                assert_eq!(ev.type_url, "containerd.services.images.v1.ImageCreate");
                assert_eq!(
                    ImageCreate::decode(ev.value.as_slice())
                        .expect("decode")
                        .name,
                    name
                );
            }
            "/images/update" => {
                assert_eq!(ev.type_url, "containerd.services.images.v1.ImageUpdate");
                let u = ImageUpdate::decode(ev.value.as_slice()).expect("decode");
                assert_eq!((u.name.as_str(), &u.labels), (name, &labels(&[("l", "1")])));
            }
            "/images/delete" => {
                assert_eq!(ev.type_url, "containerd.services.images.v1.ImageDelete");
                assert_eq!(
                    ImageDelete::decode(ev.value.as_slice())
                        .expect("decode")
                        .name,
                    name
                );
            }
            "/content/delete" => {
                assert_eq!(ev.type_url, "containerd.events.ContentDelete");
                let d = ContentDelete::decode(ev.value.as_slice()).expect("decode");
                assert_eq!(d.digest, dgst);
            }
            other => panic!("unexpected event {other} in {ns}"),
        }
        seen.push(e.topic);
    }
    assert_eq!(
        seen,
        [
            "/images/create",
            "/images/update",
            "/images/delete",
            "/content/delete"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Introspection, 11. Unimplemented
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_uuid_is_stable_and_plugins_filter() {
    let mut d = Daemon::start();
    let api = Api::connect(&d).await;
    let id = api.server_uuid().await;
    uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("Server uuid {id:?}: {e}"));
    assert_eq!(api.server_uuid().await, id);

    let all = ok(
        into_inner(
            api.introspection
                .clone()
                .plugins(ns_req("default", PluginsRequest::default()))
                .await,
        ),
        "Plugins",
    )
    .plugins;
    let req = PluginsRequest {
        filters: vec!["type==io.containerd.grpc.v1".into()],
    };
    let grpc = ok(
        into_inner(
            api.introspection
                .clone()
                .plugins(ns_req("default", req))
                .await,
        ),
        "Plugins type==grpc",
    )
    .plugins;
    assert!(
        grpc.iter().all(|p| p.r#type == "io.containerd.grpc.v1"),
        "filter returned other types: {grpc:?}"
    );
    let ids: BTreeSet<&str> = grpc.iter().map(|p| p.id.as_str()).collect();
    for want in [
        "containers",
        "content",
        "events",
        "images",
        "introspection",
        "leases",
        "namespaces",
        "version",
    ] {
        assert!(ids.contains(want), "grpc plugin {want:?} missing: {ids:?}");
    }
    assert_eq!(
        grpc.len(),
        all.iter()
            .filter(|p| p.r#type == "io.containerd.grpc.v1")
            .count(),
        "the filter must keep every grpc plugin"
    );

    d.kill9();
    d.spawn();
    let api = Api::connect(&d).await;
    assert_eq!(api.server_uuid().await, id, "uuid changed across a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_isolated_by_namespace() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let prepare = |key: &str| PrepareSnapshotRequest {
        snapshotter: "overlayfs".into(),
        key: key.into(),
        parent: String::new(),
        labels: HashMap::new(),
    };
    let mut snapshots = api.snapshots.clone();
    snapshots
        .prepare(ns_req("tenant-a", prepare("shared-key")))
        .await
        .expect("prepare in tenant-a");
    // The same key in another namespace is another snapshot, not a conflict.
    snapshots
        .prepare(ns_req("tenant-b", prepare("shared-key")))
        .await
        .expect("prepare the same key in tenant-b");
    snapshots
        .prepare(ns_req("tenant-a", prepare("only-a")))
        .await
        .expect("prepare only-a");
    let stat = |key: &str| StatSnapshotRequest {
        snapshotter: "overlayfs".into(),
        key: key.into(),
    };
    let r = snapshots.stat(ns_req("tenant-b", stat("only-a"))).await;
    fails(
        into_inner(r).map(drop),
        Code::NotFound,
        "Stat of another namespace's snapshot",
    );
    let list = |ns: &'static str| {
        let mut s = snapshots.clone();
        async move {
            let mut stream = s
                .list(ns_req(
                    ns,
                    ListSnapshotsRequest {
                        snapshotter: "overlayfs".into(),
                        filters: vec![],
                    },
                ))
                .await
                .expect("list")
                .into_inner();
            let mut names = BTreeSet::new();
            while let Some(msg) = stream.message().await.expect("list message") {
                names.extend(msg.info.into_iter().map(|i| i.name));
            }
            names
        }
    };
    assert_eq!(
        list("tenant-a").await,
        BTreeSet::from(["only-a".to_string(), "shared-key".to_string()])
    );
    assert_eq!(
        list("tenant-b").await,
        BTreeSet::from(["shared-key".to_string()])
    );
    let r = snapshots
        .prepare(ns_req(
            "tenant-a",
            PrepareSnapshotRequest {
                snapshotter: "no-such-snapshotter".into(),
                ..prepare("x")
            },
        ))
        .await;
    fails(
        into_inner(r).map(drop),
        Code::InvalidArgument,
        "unknown snapshotter",
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Limits
// ---------------------------------------------------------------------------------------------

/// A JSON spec padded to about `len` bytes.
fn padded_spec(len: usize) -> Any {
    let mut value = br#"{"ociVersion":"1.0.2-dev","annotations":{"pad":""#.to_vec();
    value.resize(len - 3, b'x');
    value.extend_from_slice(br#""}}"#);
    Any {
        type_url: SPEC_TYPE_URL.into(),
        value,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_limit_is_16_mib() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "limits";

    let mut big = container("twelve", "img", &[]);
    big.spec = Some(padded_spec(12 * MIB));
    ok(
        api.create_container(ns, big.clone()).await,
        "Create with a 12 MiB spec",
    );
    assert_eq!(
        ok(api.get_container(ns, "twelve").await, "Get 12 MiB").spec,
        big.spec,
        "12 MiB spec round-trips"
    );

    let mut huge = container("seventeen", "img", &[]);
    huge.spec = Some(padded_spec(17 * MIB));
    let r = tokio::time::timeout(PATIENCE, api.create_container(ns, huge))
        .await
        .expect("a 17 MiB Create must be answered, not hang");
    let st = r.expect_err("a 17 MiB message must be refused");
    assert!(
        // grpc-go (containerd) answers ResourceExhausted; tonic's decoder says OutOfRange.
        matches!(st.code(), Code::ResourceExhausted | Code::OutOfRange),
        "17 MiB Create: expected ResourceExhausted, got {:?}: {}",
        st.code(),
        st.message()
    );
    fails(
        api.get_container(ns, "seventeen").await,
        Code::NotFound,
        "the refused container",
    );
    api.version_ok().await;
    assert_eq!(
        container_ids_both_ways(&api, ns, &[]).await,
        strings(&["twelve"])
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Bad input, table-driven
// ---------------------------------------------------------------------------------------------

type Call = Pin<Box<dyn Future<Output = Rpc<()>> + Send>>;

struct Case {
    name: String,
    want: Code,
    call: Call,
}

/// `case!(cases, api, NAME, CODE, EXPR)`: EXPR is a future using an owned clone of `api`.
macro_rules! case {
    ($cases:ident, $api:ident, $name:expr, $code:ident, $call:expr) => {{
        let $api = $api.clone();
        $cases.push(Case {
            name: $name.to_string(),
            want: Code::$code,
            call: Box::pin(async move { $call.await.map(drop) }),
        });
    }};
}

/// Everything observable in the namespaces the table touches.
#[derive(Debug, PartialEq)]
struct World {
    namespaces: Vec<Namespace>,
    per_ns: BTreeMap<String, NsWorld>,
}

#[derive(Debug, PartialEq)]
struct NsWorld {
    containers: Vec<Container>,
    images: Vec<Image>,
    leases: Vec<Lease>,
    resources: Vec<Vec<(String, String)>>,
    content: Vec<Info>,
    ingests: Vec<String>,
}

async fn world(api: &Api, nss: &[&str]) -> World {
    let mut per_ns = BTreeMap::new();
    for ns in nss {
        let mut containers = ok(api.list_containers(ns, &[]).await, "world containers");
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut images = ok(api.list_images(ns, &[]).await, "world images");
        images.sort_by(|a, b| a.name.cmp(&b.name));
        let mut leases = ok(api.list_leases(ns, &[]).await, "world leases");
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        let mut resources = Vec::new();
        for l in &leases {
            resources.push(ok(api.list_resources(ns, &l.id).await, "world resources"));
        }
        let content = ok(api.list_content(ns, &[]).await, "world content");
        let ingests = sorted(
            ok(api.list_statuses(ns, &[]).await, "world ingests")
                .into_iter()
                .map(|s| s.r#ref),
        );
        per_ns.insert(
            ns.to_string(),
            NsWorld {
                containers,
                images,
                leases,
                resources,
                content,
                ingests,
            },
        );
    }
    World {
        namespaces: ok(api.list_namespaces().await, "world namespaces"),
        per_ns,
    }
}

/// The table: every bad input the issue names, with the code containerd answers.
#[rustfmt::skip]
fn bad_input_cases(api: &Api, ns: &'static str, base_blob: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();

    // Container identifiers: [A-Za-z0-9]+([._-][A-Za-z0-9]+)*, at most 76 characters.
    let long_id = "a".repeat(77);
    for id in ["", "-a", "a-", "a/b", "../x", long_id.as_str(), "a..b", "ça", "a b"] {
        let c = container(id, "img:1", &[]);
        case!(cases, api, format!("container id {id:?}"), InvalidArgument, api.create_container(ns, c));
    }
    // Namespace header values.
    let long_ns = "n".repeat(77);
    for bad_ns in ["a/b", "..", "-x", long_ns.as_str()] {
        let (c, bad_ns) = (container("fine", "img:1", &[]), bad_ns.to_string());
        case!(cases, api, format!("namespace header {bad_ns:?}"), InvalidArgument, api.create_container(&bad_ns, c));
    }
    // containerd (namespaces.NamespaceRequired): an empty header is "namespace is required", like none.
    let c = container("fine", "img:1", &[]);
    case!(cases, api, "namespace header \"\"", FailedPrecondition, api.create_container("", c));
    let c = CreateContainerRequest { container: Some(container("fine", "img:1", &[])) };
    case!(cases, api, "no namespace header", FailedPrecondition,
        async move { into_inner(api.containers.clone().create(Request::new(c)).await) });
    case!(cases, api, "Namespaces/Create \"a/b\"", InvalidArgument, api.create_namespace("a/b", &[]));

    // Malformed digests on Info, Read, Delete and lease resources.
    let bad_digests = [
        "sha256:xyz".to_string(),
        format!("sha256:{}", "a".repeat(63)),
        format!("sha256:{}", "A".repeat(64)),
        format!("md5:{}", "a".repeat(32)),
        "../../etc/passwd".to_string(),
        format!("sha256:../../{}", "a".repeat(58)),
        String::new(),
    ];
    for dg in bad_digests {
        let (d1, d2, d3) = (dg.clone(), dg.clone(), dg.clone());
        case!(cases, api, format!("Info {dg:?}"), InvalidArgument, api.info(ns, &d1));
        case!(cases, api, format!("Read {dg:?}"), InvalidArgument, api.read(ns, &d2, 0, 0));
        case!(cases, api, format!("Delete {dg:?}"), InvalidArgument, api.delete_content(ns, &d3));
        let r = resource("content", &dg);
        case!(cases, api, format!("lease AddResource content {dg:?}"), InvalidArgument, api.add_resource(ns, "base", r));
    }

    // A label of 4097 bytes, key + value.
    let big = labels(&[("big", &"v".repeat(4097 - 3))]);
    let patch = Container { id: "base".into(), labels: big.clone(), ..Default::default() };
    case!(cases, api, "container Update 4097-byte label", InvalidArgument, api.update_container(ns, patch, mask(&["labels.big"])));
    let c = Container { labels: big.clone(), ..container("biglabel", "img:1", &[]) };
    case!(cases, api, "container Create 4097-byte label", InvalidArgument, api.create_container(ns, c));
    let patch = Image { name: "base:1".into(), labels: big.clone(), ..Default::default() };
    case!(cases, api, "image Update 4097-byte label", InvalidArgument, api.update_image(ns, patch, mask(&["labels.big"])));
    let i = Image { labels: big.clone(), ..image("biglabel:1", INDEX_MT, &[]) };
    case!(cases, api, "image Create 4097-byte label", InvalidArgument, api.create_image(ns, i));
    let l = big.clone();
    case!(cases, api, "namespace Update 4097-byte label", InvalidArgument, api.update_namespace(ns, l, mask(&["labels.big"])));
    let l = big.clone();
    case!(cases, api, "lease Create 4097-byte label", InvalidArgument, api.create_lease(ns, "biglabel", l));
    let (l, dg) = (big.clone(), base_blob.to_string());
    case!(cases, api, "content Update 4097-byte label", InvalidArgument, api.update_info(ns, &dg, l, mask(&["labels.big"])));

    // Unknown mask fields (next to a valid one, which must not be applied either).
    let patch = Container { id: "base".into(), image: "changed".into(), ..Default::default() };
    case!(cases, api, "container mask \"bogus\"", InvalidArgument, api.update_container(ns, patch, mask(&["image", "bogus"])));
    let patch = Image { name: "base:1".into(), labels: labels(&[("x", "y")]), ..Default::default() };
    case!(cases, api, "image mask \"bogus\"", InvalidArgument, api.update_image(ns, patch, mask(&["labels.x", "bogus"])));
    case!(cases, api, "namespace mask \"bogus\"", InvalidArgument, api.update_namespace(ns, labels(&[("x", "y")]), mask(&["labels.x", "bogus"])));
    let dg = base_blob.to_string();
    case!(cases, api, "content mask \"size\"", InvalidArgument, api.update_info(ns, &dg, labels(&[("x", "y")]), mask(&["labels.x", "size"])));

    // Malformed filters on every List.
    for f in ["id==", "labels.\"unterminated", "id~=(", "==x", "id==a,"] {
        case!(cases, api, format!("Containers/List {f:?}"), InvalidArgument, api.list_containers(ns, &[f]));
        case!(cases, api, format!("Containers/ListStream {f:?}"), InvalidArgument, api.list_stream_containers(ns, &[f]));
        case!(cases, api, format!("Images/List {f:?}"), InvalidArgument, api.list_images(ns, &[f]));
        case!(cases, api, format!("Leases/List {f:?}"), InvalidArgument, api.list_leases(ns, &[f]));
        case!(cases, api, format!("Content/List {f:?}"), InvalidArgument, api.list_content(ns, &[f]));
        case!(cases, api, format!("Content/ListStatuses {f:?}"), InvalidArgument, api.list_statuses(ns, &[f]));
    }

    // Images missing what containerd requires (metadata/images.go validateImage).
    let with_target = |name: &str, edit: fn(&mut Descriptor)| {
        let mut i = image(name, INDEX_MT, &[]);
        edit(i.target.as_mut().expect("target"));
        i
    };
    let i = Image { name: String::new(), ..image("x", INDEX_MT, &[]) };
    case!(cases, api, "image with empty name", InvalidArgument, api.create_image(ns, i));
    let i = with_target("size0:1", |t| t.size = 0);
    case!(cases, api, "image with size 0", InvalidArgument, api.create_image(ns, i));
    let i = with_target("nomt:1", |t| t.media_type.clear());
    case!(cases, api, "image with empty media type", InvalidArgument, api.create_image(ns, i));
    let i = with_target("baddigest:1", |t| t.digest = "sha256:xyz".into());
    case!(cases, api, "image with bad target digest", InvalidArgument, api.create_image(ns, i));
    let i = Image { target: None, ..image("notarget:1", INDEX_MT, &[]) };
    case!(cases, api, "image without target", InvalidArgument, api.create_image(ns, i));
    let i = with_target("base:1", |t| t.size = 0);
    case!(cases, api, "image full Update with size 0", InvalidArgument, api.update_image(ns, i, None));

    // Containers missing what containerd requires (metadata/containers.go validateContainer).
    let c = Container { runtime: Some(Runtime { name: String::new(), options: None }), ..container("noruntime", "img:1", &[]) };
    case!(cases, api, "container with empty runtime name", InvalidArgument, api.create_container(ns, c));
    let c = Container { runtime: None, ..container("noruntime2", "img:1", &[]) };
    case!(cases, api, "container without runtime", InvalidArgument, api.create_container(ns, c));
    let c = Container { spec: None, ..container("nospec", "img:1", &[]) };
    case!(cases, api, "container without spec", InvalidArgument, api.create_container(ns, c));
    let c = Container { snapshotter: String::new(), ..container("nosnapshotter", "img:1", &[]) };
    case!(cases, api, "container snapshot_key without snapshotter", InvalidArgument, api.create_container(ns, c));

    // Lease resource types.
    case!(cases, api, "lease AddResource type \"images\"", InvalidArgument, api.add_resource(ns, "base", resource("images", "x")));
    case!(cases, api, "lease AddResource type \"snapshots/\"", InvalidArgument, api.add_resource(ns, "base", resource("snapshots/", "x")));

    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_and_changes_nothing() {
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "bad";

    // A baseline of one of everything, so that "unchanged" means something.
    ok(
        api.create_container(ns, container("base", "img:1", &[("k", "v")]))
            .await,
        "baseline container",
    );
    ok(
        api.create_image(ns, image("base:1", INDEX_MT, &[("k", "v")]))
            .await,
        "baseline image",
    );
    ok(
        api.create_lease(ns, "base", labels(&[("k", "v")])).await,
        "baseline lease",
    );
    let base_blob = ok(
        api.write_blob(ns, None, "base", b"baseline blob", labels(&[("k", "v")]))
            .await,
        "baseline blob",
    );
    ok(
        api.add_resource(ns, "base", resource("content", &base_blob))
            .await,
        "baseline resource",
    );
    ok(
        api.update_namespace(ns, labels(&[("k", "v")]), mask(&["labels.k"]))
            .await,
        "baseline namespace label",
    );
    let before = world(&api, &[ns]).await;

    let cases = bad_input_cases(&api, ns, &base_blob);
    let total = cases.len();
    let mut failures = Vec::new();
    for case in cases {
        let got = tokio::time::timeout(PATIENCE, case.call)
            .await
            .unwrap_or_else(|_| panic!("{}: no answer within {PATIENCE:?}", case.name));
        match got {
            Ok(()) => failures.push(format!("{}: succeeded, want {:?}", case.name, case.want)),
            Err(s) if s.code() != case.want => failures.push(format!(
                "{}: got {:?} ({}), want {:?}",
                case.name,
                s.code(),
                s.message(),
                case.want
            )),
            Err(_) => {}
        }
        let now = world(&api, &[ns]).await;
        if now != before {
            failures.push(format!("{}: changed state:\n{now:#?}", case.name));
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} bad-input cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Just inside the limits is fine.
    let c = container(&"a".repeat(76), "img:1", &[("k", &"v".repeat(4095))]);
    ok(
        api.create_container(ns, c).await,
        "76-char id, 4096-byte label",
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Durability
// ---------------------------------------------------------------------------------------------

const DURABLE_N: usize = 200;
const DURABLE_TASKS: usize = 8;
const DURABLE_NS: &str = "durable";

/// Object `i` of the durability test: five kinds in turn.
async fn write_durable(api: &Api, i: usize) -> Rpc<()> {
    let ns = DURABLE_NS;
    match i % 5 {
        0 => api
            .create_container(ns, container(&format!("c{i}"), "img:1", &[]))
            .await
            .map(drop),
        1 => api
            .create_image(ns, image(&format!("img/{i}:latest"), INDEX_MT, &[]))
            .await
            .map(drop),
        2 => api
            .create_lease(ns, &format!("l{i}"), HashMap::new())
            .await
            .map(drop),
        3 => api
            .write_blob(
                ns,
                None,
                &format!("r{i}"),
                format!("blob {i}").as_bytes(),
                HashMap::new(),
            )
            .await
            .map(drop),
        _ => {
            let key = format!("k{i}");
            api.update_namespace(
                ns,
                labels(&[(&key, &format!("v{i}"))]),
                mask(&[&format!("labels.{key}")]),
            )
            .await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let mut d = Daemon::start();
    let api = Api::connect(&d).await;
    ok(
        api.create_namespace(DURABLE_NS, &[]).await,
        "create namespace",
    );

    let mut tasks = Vec::new();
    for t in 0..DURABLE_TASKS {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..DURABLE_N).step_by(DURABLE_TASKS) {
                ok(write_durable(&api, i).await, &format!("durable object {i}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    d.kill9();
    d.spawn();
    let api = Api::connect(&d).await;
    let ns = DURABLE_NS;

    let by_kind = |k: usize| (0..DURABLE_N).filter(move |i| i % 5 == k);
    let containers = container_ids(&ok(api.list_containers(ns, &[]).await, "containers"));
    assert_eq!(containers, sorted(by_kind(0).map(|i| format!("c{i}"))));
    let images = image_names(&ok(api.list_images(ns, &[]).await, "images"));
    assert_eq!(
        images,
        sorted(by_kind(1).map(|i| format!("img/{i}:latest")))
    );
    let leases = lease_ids(&ok(api.list_leases(ns, &[]).await, "leases"));
    assert_eq!(leases, sorted(by_kind(2).map(|i| format!("l{i}"))));
    let blobs = digests(&ok(api.list_content(ns, &[]).await, "content"));
    assert_eq!(
        blobs,
        sorted(by_kind(3).map(|i| digest_of(format!("blob {i}").as_bytes())))
    );
    for i in by_kind(3) {
        let want = format!("blob {i}").into_bytes();
        let got = ok(
            api.read(ns, &digest_of(&want), 0, 0).await,
            "Read durable blob",
        );
        assert_eq!(got, want, "blob {i} content");
    }
    let ns_labels = ok(api.get_namespace(ns).await, "namespace").labels;
    let want: HashMap<String, String> = by_kind(4)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    assert_eq!(ns_labels, want, "namespace labels");
    let sample = ok(api.get_container(ns, "c0").await, "container c0");
    assert_eq!(sample.spec, Some(spec_any()), "spec survives byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_bounded_per_client() {
    let d =
        Daemon::start_with_config("[events]\nmax_event_bytes = 300000\nbacklog_bytes = 1000000\n");
    let api = Api::connect(&d).await;
    let publisher = Api::connect(&d).await;
    let ns = "evbound";
    let mut watcher = api.subscribe(&[r#"topic~="^/test/""#]).await;
    let payload = |len: usize| Any {
        type_url: "example.com/test.Blob".into(),
        value: vec![b'x'; len],
    };

    // Too large: refused with the limit named, and never delivered.
    let req = PublishRequest {
        topic: "/test/too-large".into(),
        event: Some(payload(400_000)),
    };
    let st = fails(
        into_inner(publisher.events.clone().publish(ns_req(ns, req)).await),
        Code::ResourceExhausted,
        "Publish of an oversized event",
    );
    assert!(st.message().contains("300000"), "{}", st.message());
    let req = ForwardRequest {
        envelope: Some(Envelope {
            timestamp: Some(go_zero_time()),
            namespace: ns.into(),
            topic: "/test/too-large".into(),
            event: Some(payload(400_000)),
        }),
    };
    fails(
        into_inner(publisher.events.clone().forward(ns_req(ns, req)).await),
        Code::ResourceExhausted,
        "Forward of an oversized event",
    );
    let req = PublishRequest {
        topic: "/test/fits".into(),
        event: Some(payload(10)),
    };
    ok(
        into_inner(publisher.events.clone().publish(ns_req(ns, req)).await),
        "Publish",
    );
    assert_eq!(next_envelope(&mut watcher).await.topic, "/test/fits");

    // A subscriber that stops reading is dropped once it is 1 MB behind: far more than that is
    // published while it stalls, and reading again ends in ResourceExhausted, not in everything.
    let mut stalled = api.subscribe(&[r#"topic~="^/test/""#]).await;
    let published = 60;
    for i in 0..published {
        let req = PublishRequest {
            topic: format!("/test/bulk-{i}"),
            event: Some(payload(250_000)),
        };
        ok(
            into_inner(publisher.events.clone().publish(ns_req(ns, req)).await),
            "Publish bulk",
        );
        // The watcher keeps up, so it is never dropped.
        assert_eq!(
            next_envelope(&mut watcher).await.topic,
            format!("/test/bulk-{i}")
        );
    }
    let mut received = 0;
    let end = loop {
        match tokio::time::timeout(PATIENCE, stalled.message()).await {
            Err(_) => panic!("the stalled subscriber neither got events nor an error"),
            Ok(Ok(Some(_))) => received += 1,
            Ok(Ok(None)) => panic!("the stream ended without an error after {received} events"),
            Ok(Err(st)) => break st,
        }
    };
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("fell behind"), "{end:?}");
    assert!(
        received < published,
        "{received} of {published} events arrived"
    );
    // The daemon goes on serving subscribers.
    let mut again = api.subscribe(&[r#"topic~="^/test/""#]).await;
    let req = PublishRequest {
        topic: "/test/after".into(),
        event: Some(payload(10)),
    };
    ok(
        into_inner(publisher.events.clone().publish(ns_req(ns, req)).await),
        "Publish",
    );
    assert_eq!(next_envelope(&mut again).await.topic, "/test/after");
}

// ---------------------------------------------------------------------------------------------
// The collector against concurrent commits of the same blob
// ---------------------------------------------------------------------------------------------

/// `rmi` then `load` of the same content, many times, with the load landing at every moment of
/// the collection the delete runs: whatever the interleaving, the image the load recorded keeps
/// its blob. Before the collector re-checked under the commit lock, a commit that found the blob
/// (or its record) just before the sweep recorded a blob the sweep then unlinked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_never_unlinks_a_blob_a_concurrent_commit_records() {
    const ROUNDS: u32 = 150;
    let d = Daemon::start();
    let api = Api::connect(&d).await;
    let ns = "gc-commit-race";
    let data = blob(512 * 1024, 41);
    let dgst = digest_of(&data);
    let target = Descriptor {
        media_type: MANIFEST_MT.into(),
        digest: dgst.clone(),
        size: data.len() as i64,
        annotations: HashMap::new(),
    };
    let image_named = |name: String| Image {
        name,
        target: Some(target.clone()),
        ..Default::default()
    };
    // The load of one round, as containerd's client does it: a lease, the blob written under it
    // (AlreadyExists when the namespace has it), the image, the lease dropped.
    let load = |round: u32| {
        let (api, data) = (api.clone(), data.clone());
        let img = image_named(format!("race:{round}"));
        async move {
            let lease = format!("load-{round}");
            ok(
                api.create_lease(ns, &lease, HashMap::new()).await,
                "Leases.Create",
            );
            match api
                .write_blob(
                    ns,
                    Some(&lease),
                    &format!("ref-{round}"),
                    &data,
                    HashMap::new(),
                )
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => {}
                Err(s) => panic!("round {round}: write: {:?}: {}", s.code(), s.message()),
            }
            ok(api.create_image(ns, img).await, "Images.Create");
            ok(api.delete_lease(ns, &lease).await, "Leases.Delete");
        }
    };
    // Records the collector must read and keep on every pass, so that each pass takes long
    // enough for the loads to land inside it.
    for i in 0..600u32 {
        let payload = format!("kept {i}");
        ok(
            api.write_blob(
                ns,
                None,
                &format!("kept-{i}"),
                payload.as_bytes(),
                labels(&[("containerd.io/gc.root", "yes")]),
            )
            .await,
            "write a rooted blob",
        );
    }
    load(0).await;
    let mut lost = Vec::new();
    for round in 1..=ROUNDS {
        let dropped = format!("race:{}", round - 1);
        let rmi = {
            let api = api.clone();
            async move { ok(api.delete_image(ns, &dropped).await, "Images.Delete sync") }
        };
        // Spread the load across the collection: from before it starts to after it ends.
        let delay = Duration::from_micros(u64::from(round % 25) * 200);
        let later = load(round);
        tokio::join!(rmi, async move {
            tokio::time::sleep(delay).await;
            later.await
        });
        let kept = api.info(ns, &dgst).await.is_ok()
            && api.read(ns, &dgst, 0, 0).await.ok().as_deref() == Some(&data[..]);
        if !kept {
            lost.push(round);
            // Start the next round from a whole store again.
            let _ = api.delete_image(ns, &format!("race:{round}")).await;
            load(round).await;
        }
    }
    assert!(
        lost.is_empty(),
        "the image of rounds {lost:?} (of {ROUNDS}) lost its blob to the collector"
    );
    ok(
        api.delete_image(ns, &format!("race:{ROUNDS}")).await,
        "Images.Delete",
    );
    assert!(
        !blob_path(&d, &dgst).exists(),
        "the collector still removes the blob once nothing holds it"
    );
}
