//! Proves our `.proto` files are wire-identical to upstream containerd's:
//! every upstream message/enum/service must exist in ours with identical
//! field numbers, names, types, type names and labels, enum values and rpc
//! signatures. Upstream comes from the Debian packages
//! `golang-github-containerd-containerd-dev` (the API) and
//! `golang-github-containerd-cgroups-dev` (the task metrics payloads).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorSet, ServiceDescriptorProto,
};

const GOCODE: &str = "/usr/share/gocode/src";
const CONTAINERD: &str = "github.com/containerd/containerd";
const CGROUPS: &str = "github.com/containerd/cgroups";

/// Upstream files (relative to `GOCODE`) that make up containerd's v1 API.
const UPSTREAM_FILES: &[&str] = &[
    "api/types/descriptor.proto",
    "api/types/metrics.proto",
    "api/types/mount.proto",
    "api/types/platform.proto",
    "api/types/task/task.proto",
    "api/events/container.proto",
    "api/events/content.proto",
    "api/events/image.proto",
    "api/events/namespace.proto",
    "api/events/snapshot.proto",
    "api/events/task.proto",
    "api/services/containers/v1/containers.proto",
    "api/services/content/v1/content.proto",
    "api/services/diff/v1/diff.proto",
    "api/services/events/v1/events.proto",
    "api/services/images/v1/images.proto",
    "api/services/introspection/v1/introspection.proto",
    "api/services/leases/v1/leases.proto",
    "api/services/namespaces/v1/namespace.proto",
    "api/services/snapshots/v1/snapshots.proto",
    "api/services/tasks/v1/tasks.proto",
    "api/services/version/v1/version.proto",
    "api/services/ttrpc/events/v1/events.proto",
    "runtime/v2/runc/options/oci.proto",
];

/// Upstream files (relative to `CGROUPS`): the metrics a task reports, in
/// packages `io.containerd.cgroups.v1` and `io.containerd.cgroups.v2`.
const UPSTREAM_CGROUPS_FILES: &[&str] = &["stats/v1/metrics.proto", "v2/stats/metrics.proto"];

/// Packages that only carry code-generation options upstream (or are
/// well-known types provided by protox) and so are not compared.
const IGNORED_PACKAGES: &[&str] = &["gogoproto", "containerd.plugin", "google.protobuf"];

fn our_proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")
}

fn compile_ours() -> FileDescriptorSet {
    let root = our_proto_dir();
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                files.push(path.strip_prefix(&root).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    protox::compile(&files, [&root]).unwrap_or_else(|e| panic!("compiling our protos: {e:?}"))
}

fn compile_upstream() -> FileDescriptorSet {
    let api = Path::new(GOCODE).join(CONTAINERD).join("api");
    assert!(
        api.is_dir(),
        "upstream containerd protos not found at {}: install the Debian package \
         golang-github-containerd-containerd-dev (apt-get install \
         golang-github-containerd-containerd-dev)",
        api.display()
    );
    let gogo = Path::new(GOCODE).join("github.com/gogo/protobuf");
    assert!(
        gogo.join("gogoproto/gogo.proto").is_file(),
        "gogoproto/gogo.proto not found under {}: install \
         golang-github-containerd-containerd-dev (pulls in golang-github-gogo-protobuf-dev)",
        gogo.display()
    );
    // introspection.proto imports google/rpc/status.proto; prefer the copy
    // shipped with gogo/googleapis, else fall back to ours.
    let googleapis = Path::new(GOCODE).join("github.com/gogo/googleapis");
    let status_root = if googleapis.join("google/rpc/status.proto").is_file() {
        googleapis
    } else {
        our_proto_dir()
    };

    let cgroups = Path::new(GOCODE).join(CGROUPS);
    assert!(
        cgroups.join(UPSTREAM_CGROUPS_FILES[0]).is_file(),
        "upstream cgroups metrics protos not found under {}: install the Debian package \
         golang-github-containerd-cgroups-dev (apt-get install \
         golang-github-containerd-cgroups-dev)",
        cgroups.display()
    );

    let files: Vec<String> = UPSTREAM_FILES
        .iter()
        .map(|f| format!("{CONTAINERD}/{f}"))
        .chain(
            UPSTREAM_CGROUPS_FILES
                .iter()
                .map(|f| format!("{CGROUPS}/{f}")),
        )
        .collect();
    let includes = [PathBuf::from(GOCODE), gogo, status_root];
    protox::compile(&files, &includes)
        .unwrap_or_else(|e| panic!("compiling upstream protos: {e:?}"))
}

/// Comparable summary of one field: name, type, type_name, label, oneof index.
type FieldSig = (String, Type, String, Label, Option<i32>);

/// Comparable summary of one message: map-entry flag and fields by number.
#[derive(Debug, PartialEq)]
struct MessageSig {
    map_entry: bool,
    fields: BTreeMap<i32, FieldSig>,
}

/// Comparable summary of one rpc: input, output, client/server streaming.
type MethodSig = (String, String, bool, bool);

#[derive(Default)]
struct Index {
    messages: BTreeMap<String, MessageSig>,
    enums: BTreeMap<String, BTreeMap<String, i32>>,
    /// service -> method -> (input, output, client_streaming, server_streaming)
    services: BTreeMap<String, BTreeMap<String, MethodSig>>,
}

fn index_message(idx: &mut Index, scope: &str, msg: &DescriptorProto) {
    let name = format!("{scope}.{}", msg.name());
    let fields = msg
        .field
        .iter()
        .map(|f| {
            (
                f.number(),
                (
                    f.name().to_string(),
                    f.r#type(),
                    f.type_name().to_string(),
                    f.label(),
                    f.oneof_index,
                ),
            )
        })
        .collect();
    let map_entry = msg.options.as_ref().and_then(|o| o.map_entry) == Some(true);
    idx.messages
        .insert(name.clone(), MessageSig { map_entry, fields });
    for nested in &msg.nested_type {
        index_message(idx, &name, nested);
    }
    for e in &msg.enum_type {
        index_enum(idx, &name, e);
    }
}

fn index_enum(idx: &mut Index, scope: &str, e: &EnumDescriptorProto) {
    let values = e
        .value
        .iter()
        .map(|v| (v.name().to_string(), v.number()))
        .collect();
    idx.enums.insert(format!("{scope}.{}", e.name()), values);
}

fn index_service(idx: &mut Index, scope: &str, s: &ServiceDescriptorProto) {
    let methods = s
        .method
        .iter()
        .map(|m| {
            (
                m.name().to_string(),
                (
                    m.input_type().to_string(),
                    m.output_type().to_string(),
                    m.client_streaming(),
                    m.server_streaming(),
                ),
            )
        })
        .collect();
    idx.services
        .insert(format!("{scope}.{}", s.name()), methods);
}

fn index(fds: &FileDescriptorSet) -> Index {
    let mut idx = Index::default();
    for file in &fds.file {
        if IGNORED_PACKAGES.contains(&file.package()) {
            continue;
        }
        let scope = format!(".{}", file.package());
        for m in &file.message_type {
            index_message(&mut idx, &scope, m);
        }
        for e in &file.enum_type {
            index_enum(&mut idx, &scope, e);
        }
        for s in &file.service {
            index_service(&mut idx, &scope, s);
        }
    }
    idx
}

fn is_extension(name: &str) -> bool {
    name.starts_with(".berth.")
}

fn diff_maps<V: std::fmt::Debug + PartialEq>(
    kind: &str,
    upstream: &BTreeMap<String, V>,
    ours: &BTreeMap<String, V>,
    diffs: &mut Vec<String>,
) {
    for (name, up) in upstream {
        match ours.get(name) {
            None => diffs.push(format!("missing {kind} {name}")),
            Some(our) if our != up => diffs.push(format!(
                "{kind} {name} differs:\n    upstream: {up:?}\n    ours:     {our:?}"
            )),
            Some(_) => {}
        }
    }
    for name in ours.keys() {
        if !upstream.contains_key(name) && !is_extension(name) {
            diffs.push(format!("extra {kind} {name} (not upstream, not berth.*)"));
        }
    }
}

#[test]
fn wire_compatible_with_upstream_containerd() {
    let upstream = index(&compile_upstream());
    let ours = index(&compile_ours());

    // Sanity: make sure we actually compared something substantial.
    assert!(upstream.messages.len() > 100, "too few upstream messages");
    assert!(upstream.services.len() >= 12, "too few upstream services");
    for metrics in [
        ".io.containerd.cgroups.v1.Metrics",
        ".io.containerd.cgroups.v2.Metrics",
    ] {
        assert!(
            upstream.messages.contains_key(metrics),
            "upstream {metrics} not compared"
        );
    }

    let mut diffs = Vec::new();
    diff_maps("message", &upstream.messages, &ours.messages, &mut diffs);
    diff_maps("enum", &upstream.enums, &ours.enums, &mut diffs);
    diff_maps("service", &upstream.services, &ours.services, &mut diffs);

    assert!(
        diffs.is_empty(),
        "{} difference(s) between berth-api and upstream containerd:\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );

    let packages: BTreeSet<_> = upstream
        .messages
        .keys()
        .map(|n| n.rsplit_once('.').unwrap().0.to_string())
        .collect();
    eprintln!(
        "compared {} messages, {} enums, {} services across {} scopes",
        upstream.messages.len(),
        upstream.enums.len(),
        upstream.services.len(),
        packages.len()
    );
}
