use super::{reply, RpcResult, State};
use berth_api::containerd::services::introspection::v1::{introspection_server::Introspection, *};
use berth_api::containerd::types::Platform;
use berth_metadata::filters::{Adaptor, Filter};
use std::sync::Arc;
use tonic::Request;

pub struct IntrospectionService {
    pub state: Arc<State>,
    pub plugins: Vec<Plugin>,
}

/// The plugins this daemon really runs, in containerd's type/id vocabulary, so tools that inspect
/// `ctr plugins ls` see what is there (and what is not yet).
pub fn plugin_list(
    root: &std::path::Path,
    snapshotters: &[String],
    snapshotter_errors: &[(String, String)],
) -> Vec<Plugin> {
    let platform = Platform {
        os: "linux".into(),
        architecture: std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
        variant: String::new(),
    };
    let plugin = |r#type: &str, id: &str, requires: &[&str]| Plugin {
        r#type: r#type.to_string(),
        id: id.to_string(),
        requires: requires.iter().map(|s| s.to_string()).collect(),
        platforms: vec![],
        exports: Default::default(),
        capabilities: vec![],
        init_err: None,
    };
    let mut content = plugin("io.containerd.content.v1", "content", &[]);
    content.exports.insert(
        "root".into(),
        root.join("content").to_string_lossy().into_owned(),
    );
    let mut metadata = plugin(
        "io.containerd.metadata.v1",
        "sled",
        &["io.containerd.content.v1"],
    );
    metadata.platforms.push(platform.clone());
    let snapshotter = |id: &str| {
        let mut p = plugin("io.containerd.snapshotter.v1", id, &[]);
        p.platforms.push(platform.clone());
        p.exports.insert(
            "root".into(),
            root.join("snapshots")
                .join(id)
                .to_string_lossy()
                .into_owned(),
        );
        p.init_err = snapshotter_errors
            .iter()
            .find(|(name, _)| name == id)
            .map(|(_, err)| berth_api::google::rpc::Status {
                code: tonic::Code::FailedPrecondition as i32,
                message: err.clone(),
                details: vec![],
            });
        p
    };
    let grpc = "io.containerd.grpc.v1";
    let deps = &["io.containerd.metadata.v1"];
    let mut names: Vec<&str> = snapshotters
        .iter()
        .map(String::as_str)
        .chain(snapshotter_errors.iter().map(|(n, _)| n.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut plugins = vec![content];
    plugins.extend(names.into_iter().map(snapshotter));
    plugins.extend([
        metadata,
        plugin("io.containerd.event.v1", "exchange", &[]),
        plugin(
            "io.containerd.differ.v1",
            "layer",
            &["io.containerd.content.v1"],
        ),
        plugin("io.containerd.gc.v1", "collector", deps),
        plugin("io.containerd.runtime.v2", "task", deps),
        plugin(grpc, "containers", deps),
        plugin(grpc, "content", deps),
        plugin(grpc, "diff", &["io.containerd.differ.v1"]),
        plugin(grpc, "events", &["io.containerd.event.v1"]),
        plugin(grpc, "images", deps),
        plugin(grpc, "introspection", &[]),
        plugin(grpc, "leases", deps),
        plugin(grpc, "namespaces", deps),
        plugin(grpc, "snapshots", &["io.containerd.snapshotter.v1"]),
        plugin(grpc, "tasks", &["io.containerd.runtime.v2"]),
        plugin(grpc, "version", &[]),
    ]);
    plugins
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(&self, req: Request<PluginsRequest>) -> RpcResult<PluginsResponse> {
        let filter = Filter::parse_all(&req.get_ref().filters)?;
        reply(PluginsResponse {
            plugins: self
                .plugins
                .iter()
                .filter(|p| filter.matches(&PluginFields(p)))
                .cloned()
                .collect(),
        })
    }

    async fn server(&self, _: Request<()>) -> RpcResult<ServerResponse> {
        reply(ServerResponse {
            uuid: self.state.meta.server_uuid().to_string(),
        })
    }
}

struct PluginFields<'a>(&'a Plugin);

impl Adaptor for PluginFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        let p = self.0;
        match path {
            ["type"] => Some(p.r#type.clone()),
            ["id"] => Some(p.id.clone()),
            // containerd reports "ok" or "error" under the status field
            ["status"] => Some(if p.init_err.is_some() { "error" } else { "ok" }.into()),
            ["capabilities"] => Some(p.capabilities.join(",")),
            _ => None,
        }
    }
}
