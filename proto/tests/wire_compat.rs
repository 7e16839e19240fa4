//! Proves our `.proto` files are wire-identical to upstream containerd's:
//! every upstream message/enum/service must exist in ours with identical
//! field numbers, names, types, type names and labels, enum values and rpc
//! signatures. Two upstreams: containerd 1.6 from the Debian packages
//! `golang-github-containerd-containerd-dev` (the API) and
//! `golang-github-containerd-cgroups-dev` (the task metrics payloads), and the
//! current API, the Go module `github.com/containerd/containerd/api` at the
//! version containerd `CONTAINERD_RELEASE` requires, from the Go module cache
//! (scripts/deps-go-tools.sh downloads it).
//!
//! The CRI (package `runtime.v1`) is compared the same way with its one
//! upstream, k8s.io/cri-api's api.proto at the version cri-tools
//! `CRI_TOOLS_RELEASE` requires, also from the Go module cache.

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
#[derive(Clone, Debug, PartialEq)]
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

/// The CRI's package: compared with cri-api (`wire_compatible_with_cri_api`),
/// not with containerd's API.
const CRI_SCOPE: &str = ".runtime.v1.";

impl Index {
    /// This index with only the definitions `keep` accepts by full name.
    fn filtered(&self, keep: impl Fn(&str) -> bool) -> Index {
        Index {
            messages: self
                .messages
                .iter()
                .filter(|(n, _)| keep(n))
                .map(|(n, m)| (n.clone(), m.clone()))
                .collect(),
            enums: self
                .enums
                .iter()
                .filter(|(n, _)| keep(n))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
            services: self
                .services
                .iter()
                .filter(|(n, _)| keep(n))
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect(),
        }
    }

    fn without_cri(&self) -> Index {
        self.filtered(|n| !n.starts_with(CRI_SCOPE))
    }

    fn only_cri(&self) -> Index {
        self.filtered(|n| n.starts_with(CRI_SCOPE))
    }
}

fn is_extension(name: &str) -> bool {
    name.starts_with(".berth.")
}

/// The containerd release whose API berth follows; the test reads which
/// version of the `github.com/containerd/containerd/api` module it requires
/// from its go.mod in the Go module cache (scripts/deps-go-tools.sh downloads both).
const CONTAINERD_RELEASE: &str = "v2.4.2";
const API_MODULE: &str = "github.com/containerd/containerd/api";

/// Files of the current API module that berth follows, compared field by field.
const CURRENT_FILES: &[&str] = &[
    "types/descriptor.proto",
    "types/event.proto",
    "types/fieldpath.proto",
    "types/introspection.proto",
    "types/metrics.proto",
    "types/mount.proto",
    "types/platform.proto",
    "types/task/task.proto",
    "types/runc/options/oci.proto",
    "events/container.proto",
    "events/content.proto",
    "events/image.proto",
    "events/namespace.proto",
    "events/snapshot.proto",
    "events/task.proto",
    "services/containers/v1/containers.proto",
    "services/content/v1/content.proto",
    "services/diff/v1/diff.proto",
    "services/events/v1/events.proto",
    "services/images/v1/images.proto",
    "services/introspection/v1/introspection.proto",
    "services/leases/v1/leases.proto",
    "services/namespaces/v1/namespace.proto",
    "services/snapshots/v1/snapshots.proto",
    "services/tasks/v1/tasks.proto",
    "services/version/v1/version.proto",
    "services/ttrpc/events/v1/events.proto",
    "services/transfer/v1/transfer.proto",
    "services/streaming/v1/streaming.proto",
    "types/transfer/container.proto",
    "types/transfer/imagestore.proto",
    "types/transfer/importexport.proto",
    "types/transfer/progress.proto",
    "types/transfer/registry.proto",
    "types/transfer/streaming.proto",
];

/// Files of the current API module berth does not carry yet, and why. Every
/// file of the module must be in one list or the other, so a file a new
/// release adds fails the test until someone decides.
const NOT_YET: &[(&str, &str)] = &[
    (
        "services/sandbox/v1/sandbox.proto",
        "the sandbox controller and store (their own issue)",
    ),
    ("types/sandbox.proto", "the sandbox store"),
    (
        "events/sandbox.proto",
        "sandbox events come with the sandbox controller",
    ),
    (
        "runtime/sandbox/v1/sandbox.proto",
        "shim-side sandbox API: berth-shim speaks its own protocol",
    ),
    (
        "runtime/task/v2/shim.proto",
        "shim-side task API: berth-shim speaks its own protocol",
    ),
    (
        "runtime/task/v3/shim.proto",
        "shim-side task API: berth-shim speaks its own protocol",
    ),
    (
        "runtime/bootstrap/v1/bootstrap.proto",
        "shim bootstrap: berth-shim speaks its own protocol",
    ),
    (
        "services/mounts/v1/mounts.proto",
        "the mount manager (its own issue)",
    ),
    (
        "types/runtimeoptions/v1/api.proto",
        "CRI runtime options: berth has no CRI plugin",
    ),
];

fn gomodcache() -> PathBuf {
    if let Some(dir) = std::env::var_os("GOMODCACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let out = std::process::Command::new("go")
        .args(["env", "GOMODCACHE"])
        .output()
        .unwrap_or_else(|e| {
            panic!("running `go env GOMODCACHE` ({e}): run scripts/deps.sh (installs Go)")
        });
    assert!(out.status.success(), "go env GOMODCACHE failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The directory, in the Go module cache, of the version of `dep` that
/// `module@version`'s go.mod requires (both downloaded by
/// scripts/deps-go-tools.sh).
fn required_module_dir(module: &str, version: &str, dep: &str) -> PathBuf {
    let cache = gomodcache();
    let gomod = cache.join(format!("cache/download/{module}/@v/{version}.mod"));
    let text = std::fs::read_to_string(&gomod).unwrap_or_else(|e| {
        panic!(
            "{} ({e}): run scripts/deps-go-tools.sh (go mod download {module}@{version})",
            gomod.display()
        )
    });
    let required = text
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            // Inside a `require (` block a line is `dep version`; alone it is `require dep version`.
            let first = words.next();
            let first = if first == Some("require") {
                words.next()
            } else {
                first
            };
            (first == Some(dep)).then(|| words.next()).flatten()
        })
        .unwrap_or_else(|| panic!("{} requires no {dep}", gomod.display()));
    let dir = cache.join(format!("{dep}@{required}"));
    assert!(
        dir.is_dir(),
        "{} missing: run scripts/deps-go-tools.sh (go mod download {dep}@{required})",
        dir.display()
    );
    dir
}

/// The api module's directory at the version `CONTAINERD_RELEASE` requires.
fn current_api_dir() -> PathBuf {
    required_module_dir(
        "github.com/containerd/containerd/v2",
        CONTAINERD_RELEASE,
        API_MODULE,
    )
}

fn compile_current() -> FileDescriptorSet {
    let api = current_api_dir();
    let mut on_disk = BTreeSet::new();
    let mut stack = vec![api.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                let rel = path.strip_prefix(&api).unwrap();
                on_disk.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let listed: BTreeSet<String> = CURRENT_FILES
        .iter()
        .copied()
        .chain(NOT_YET.iter().map(|(f, _)| *f))
        .map(String::from)
        .collect();
    let unlisted: Vec<_> = on_disk.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&on_disk).collect();
    assert!(
        unlisted.is_empty() && gone.is_empty(),
        "{} has files this test does not classify: {unlisted:?}; listed but absent: {gone:?}",
        api.display()
    );
    // google/rpc/status.proto is not in the module; ours is wire-identical.
    let includes = [api, our_proto_dir()];
    protox::compile(CURRENT_FILES, &includes)
        .unwrap_or_else(|e| panic!("compiling current upstream protos: {e:?}"))
}

/// Messages containerd moved between 1.6 and now, field for field the same
/// (so the same bytes on the wire): ours carry only the new name.
const MOVED: &[(&str, &str)] = &[
    (
        ".containerd.services.events.v1.Envelope",
        ".containerd.types.Envelope",
    ),
    (
        ".containerd.services.events.ttrpc.v1.Envelope",
        ".containerd.types.Envelope",
    ),
];

/// Rewrites an older release's index to the current names of moved messages,
/// after checking each moved message is wire-identical to its new self.
fn follow_moves(older: &mut Index, current: &Index) {
    for (old, new) in MOVED {
        let was = older
            .messages
            .remove(*old)
            .unwrap_or_else(|| panic!("{old} is not in the older release"));
        let now = current
            .messages
            .get(*new)
            .unwrap_or_else(|| panic!("{new} is not in the current release"));
        assert_eq!(&was, now, "{old} moved to {new} but changed on the way");
        for msg in older.messages.values_mut() {
            for f in msg.fields.values_mut() {
                if f.2 == *old {
                    f.2 = new.to_string();
                }
            }
        }
        for methods in older.services.values_mut() {
            for m in methods.values_mut() {
                for t in [&mut m.0, &mut m.1] {
                    if t == old {
                        *t = new.to_string();
                    }
                }
            }
        }
    }
}

/// Reports how `ours` differs from `upstream`: every upstream definition
/// must be in ours, identical field by field. Ours may hold a field, enum
/// value or rpc more only where `other` (the other release compared) has it
/// identically: fields a later release added, or ones it retired that older
/// clients still send.
fn compare(upstream: &Index, ours: &Index, other: &Index, diffs: &mut Vec<String>) {
    for (name, up) in &upstream.messages {
        let Some(our) = ours.messages.get(name) else {
            diffs.push(format!("missing message {name}"));
            continue;
        };
        if up.map_entry != our.map_entry {
            diffs.push(format!("message {name}: map entry flag differs"));
        }
        for (num, f) in &up.fields {
            match our.fields.get(num) {
                None => diffs.push(format!("message {name}: missing field {num} {f:?}")),
                Some(o) if o != f => diffs.push(format!(
                    "message {name} field {num} differs:\n    upstream: {f:?}\n    ours:     {o:?}"
                )),
                Some(_) => {}
            }
        }
        let elsewhere = other.messages.get(name);
        for (num, f) in &our.fields {
            if !up.fields.contains_key(num) && elsewhere.and_then(|m| m.fields.get(num)) != Some(f)
            {
                diffs.push(format!("message {name}: extra field {num} {f:?}"));
            }
        }
    }
    for (name, up) in &upstream.enums {
        let Some(our) = ours.enums.get(name) else {
            diffs.push(format!("missing enum {name}"));
            continue;
        };
        for (v, n) in up {
            if our.get(v) != Some(n) {
                diffs.push(format!(
                    "enum {name}: value {v} = {n} missing or renumbered"
                ));
            }
        }
        let elsewhere = other.enums.get(name);
        for (v, n) in our {
            if !up.contains_key(v) && elsewhere.and_then(|e| e.get(v)) != Some(n) {
                diffs.push(format!("enum {name}: extra value {v} = {n}"));
            }
        }
    }
    for (name, up) in &upstream.services {
        let Some(our) = ours.services.get(name) else {
            diffs.push(format!("missing service {name}"));
            continue;
        };
        for (m, sig) in up {
            match our.get(m) {
                None => diffs.push(format!("service {name}: missing rpc {m}")),
                Some(o) if o != sig => diffs.push(format!(
                    "service {name} rpc {m} differs:\n    upstream: {sig:?}\n    ours:     {o:?}"
                )),
                Some(_) => {}
            }
        }
        let elsewhere = other.services.get(name);
        for (m, sig) in our {
            if !up.contains_key(m) && elsewhere.and_then(|s| s.get(m)) != Some(sig) {
                diffs.push(format!("service {name}: extra rpc {m}"));
            }
        }
    }
}

/// Definitions of ours that no upstream release has (berth.* aside).
fn extras(ours: &Index, upstreams: &[&Index], diffs: &mut Vec<String>) {
    let ours = &ours.without_cri();
    let known = |f: &dyn Fn(&Index) -> bool| upstreams.iter().any(|u| f(u));
    for name in ours.messages.keys().filter(|n| !is_extension(n)) {
        if !known(&|u| u.messages.contains_key(name)) {
            diffs.push(format!("extra message {name} (not upstream, not berth.*)"));
        }
    }
    for name in ours.enums.keys().filter(|n| !is_extension(n)) {
        if !known(&|u| u.enums.contains_key(name)) {
            diffs.push(format!("extra enum {name} (not upstream, not berth.*)"));
        }
    }
    for name in ours.services.keys().filter(|n| !is_extension(n)) {
        if !known(&|u| u.services.contains_key(name)) {
            diffs.push(format!("extra service {name} (not upstream, not berth.*)"));
        }
    }
}

fn sanity(upstream: &Index, which: &str) {
    assert!(upstream.messages.len() > 100, "too few {which} messages");
    assert!(upstream.services.len() >= 12, "too few {which} services");
}

fn report(which: &str, upstream: &Index, diffs: &[String]) {
    assert!(
        diffs.is_empty(),
        "{} difference(s) between berth-api and {which}:\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );
    let packages: BTreeSet<_> = upstream
        .messages
        .keys()
        .map(|n| n.rsplit_once('.').unwrap().0.to_string())
        .collect();
    eprintln!(
        "{which}: compared {} messages, {} enums, {} services across {} scopes",
        upstream.messages.len(),
        upstream.enums.len(),
        upstream.services.len(),
        packages.len()
    );
}

/// containerd 1.6 (Debian's files): every definition is still there, unchanged
/// on the wire.
#[test]
fn wire_compatible_with_containerd_1_6() {
    let current = index(&compile_current());
    let mut upstream = index(&compile_upstream());
    follow_moves(&mut upstream, &current);
    let ours = index(&compile_ours());
    sanity(&upstream, "containerd 1.6");
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
    compare(&upstream, &ours, &current, &mut diffs);
    extras(&ours, &[&upstream, &current], &mut diffs);
    report("containerd 1.6", &upstream, &diffs);
}

/// The API module containerd `CONTAINERD_RELEASE` requires: every definition
/// identical, and nothing more than what 1.6 clients still send.
#[test]
fn wire_compatible_with_current_containerd() {
    let upstream = index(&compile_current());
    let mut older = index(&compile_upstream());
    follow_moves(&mut older, &upstream);
    let ours = index(&compile_ours());
    sanity(&upstream, "current containerd");
    let mut diffs = Vec::new();
    compare(&upstream, &ours, &older, &mut diffs);
    extras(&ours, &[&upstream, &older], &mut diffs);
    report(
        &format!("containerd {CONTAINERD_RELEASE}'s API"),
        &upstream,
        &diffs,
    );
}

/// The cri-tools release whose critest and crictl berth's CRI is tested with;
/// the CRI protos follow the k8s.io/cri-api version its go.mod requires.
const CRI_TOOLS_RELEASE: &str = "v1.37.0";
const CRI_API_MODULE: &str = "k8s.io/cri-api";
const CRI_API_FILE: &str = "pkg/apis/runtime/v1/api.proto";

/// Kubernetes' CRI (package `runtime.v1`): every message, enum and rpc of
/// cri-api's api.proto, identical field by field, and nothing of ours in
/// `runtime.v1` that upstream lacks.
#[test]
fn wire_compatible_with_cri_api() {
    let dir = required_module_dir("sigs.k8s.io/cri-tools", CRI_TOOLS_RELEASE, CRI_API_MODULE);
    let fds = protox::compile([CRI_API_FILE], [&dir])
        .unwrap_or_else(|e| panic!("compiling {}/{CRI_API_FILE}: {e:?}", dir.display()));
    let upstream = index(&fds);
    let ours = index(&compile_ours()).only_cri();
    assert!(upstream.messages.len() > 150, "too few CRI messages");
    for service in [".runtime.v1.RuntimeService", ".runtime.v1.ImageService"] {
        assert!(
            upstream.services.contains_key(service),
            "upstream {service} not compared"
        );
    }
    let mut diffs = Vec::new();
    compare(&upstream, &ours, &Index::default(), &mut diffs);
    for name in ours.messages.keys() {
        if !upstream.messages.contains_key(name) {
            diffs.push(format!("extra message {name}"));
        }
    }
    for name in ours.enums.keys() {
        if !upstream.enums.contains_key(name) {
            diffs.push(format!("extra enum {name}"));
        }
    }
    for name in ours.services.keys() {
        if !upstream.services.contains_key(name) {
            diffs.push(format!("extra service {name}"));
        }
    }
    report(
        &format!("{CRI_API_MODULE} (cri-tools {CRI_TOOLS_RELEASE})"),
        &upstream,
        &diffs,
    );
}
