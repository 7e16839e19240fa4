use super::{reply, RpcResult, State};
use crate::config::{RuntimeConfig, DEFAULT_RUNTIME};
use berth_api::containerd::runc::v1::Options as RuncOptions;
use berth_api::containerd::services::introspection::v1::{introspection_server::Introspection, *};
use berth_api::containerd::types::{Platform, RuntimeInfo, RuntimeRequest, RuntimeVersion};
use berth_errdefs::Error;
use berth_metadata::filters::{Adaptor, Filter};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::Request;

pub struct IntrospectionService {
    pub state: Arc<State>,
    pub plugins: Vec<Plugin>,
    /// The configured runtimes, for PluginInfo on the runtime plugin.
    pub runtimes: BTreeMap<String, RuntimeConfig>,
}

/// The plugin a client asks for a runtime's info (containerd's shim manager).
const RUNTIME_PLUGIN: (&str, &str) = ("io.containerd.runtime.v2", "task");

/// typeurl's name for runtime-spec's `features.Features`, which Go clients decode from JSON.
const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The inode of this process's pid namespace, as containerd reports it (0 if /proc says nothing).
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

impl IntrospectionService {
    /// containerd's runc shim `-info`: the runtime's name and version, the options asked about,
    /// and the OCI runtime's `features` output (left out, as containerd does, when the binary
    /// has no such command).
    async fn runtime_info(&self, options: &prost_types::Any) -> Result<RuntimeInfo, Error> {
        let request: RuntimeRequest = berth_api::unpack_any(options).map_err(|e| {
            Error::invalid(format!(
                "PluginInfo options: {e} (the runtime plugin takes containerd.types.RuntimeRequest)"
            ))
        })?;
        let name = if request.runtime_path.is_empty() {
            DEFAULT_RUNTIME
        } else {
            request.runtime_path.as_str()
        };
        let runtime = self.runtimes.get(name).ok_or_else(|| {
            Error::not_found(format!(
                "runtime {name:?} is not configured (configured: {})",
                self.runtimes.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let mut binary = runtime.binary_name.clone();
        let asked = request.options.filter(|a| !a.type_url.is_empty());
        if let Some(any) = &asked {
            let o: RuncOptions = berth_api::unpack_any(any).map_err(|e| {
                Error::invalid(format!(
                    "runtime options: {e} (berth's runtime takes containerd.runc.v1.Options)"
                ))
            })?;
            if !o.binary_name.is_empty() {
                binary = o.binary_name;
            }
        }
        let features = match tokio::process::Command::new(&binary)
            .arg("features")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
        {
            Ok(out) if out.status.success() => Some(prost_types::Any {
                type_url: FEATURES_TYPE_URL.to_string(),
                value: out.stdout,
            }),
            Ok(out) => {
                tracing::debug!(binary, stderr = %String::from_utf8_lossy(&out.stderr), "no runtime features");
                None
            }
            Err(e) => {
                return Err(Error::not_found(format!(
                    "runtime {name:?}: running {binary:?}: {e}"
                )))
            }
        };
        Ok(RuntimeInfo {
            name: name.to_string(),
            version: Some(RuntimeVersion {
                version: crate::VERSION.to_string(),
                revision: option_env!("BERTH_GIT_REVISION")
                    .unwrap_or("unknown")
                    .to_string(),
            }),
            options: asked,
            features,
            annotations: Default::default(),
        })
    }
}

/// The plugins this daemon really runs, in containerd's type/id vocabulary, so tools that inspect
/// `ctr plugins ls` see what is there (and what is not yet).
pub fn plugin_list(
    root: &std::path::Path,
    snapshotters: &[String],
    snapshotter_errors: &[(String, String)],
    remap: Option<&crate::userns::Remap>,
) -> Vec<Plugin> {
    let platform = Platform {
        os: "linux".into(),
        architecture: std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
        variant: String::new(),
        os_version: String::new(),
        os_features: vec![],
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
        // The restart monitor (controllers/restart.rs) under containerd's name: nerdctl looks
        // for it (`id==restart`) before it accepts `--restart`.
        plugin(
            "io.containerd.internal.v1",
            "restart",
            &["io.containerd.event.v1"],
        ),
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
    // Only a remapping daemon lists it: its absence is what tells clients remap is off.
    if let Some(remap) = remap {
        let mut p = plugin(crate::userns::PLUGIN_TYPE, crate::userns::PLUGIN_ID, &[]);
        p.exports = remap.exports();
        plugins.push(p);
    }
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
            pid: u64::from(std::process::id()),
            pidns: pid_namespace(),
            // berthd has no deprecated features or settings to warn about yet.
            deprecations: vec![],
        })
    }

    async fn plugin_info(&self, req: Request<PluginInfoRequest>) -> RpcResult<PluginInfoResponse> {
        let req = req.into_inner();
        let plugin = self
            .plugins
            .iter()
            .find(|p| p.r#type == req.r#type && p.id == req.id)
            .cloned()
            .ok_or_else(|| {
                Error::not_found(format!("plugin {}.{} not found", req.r#type, req.id))
            })?;
        let Some(options) = req.options.filter(|o| !o.type_url.is_empty()) else {
            return reply(PluginInfoResponse {
                plugin: Some(plugin),
                extra: None,
            });
        };
        if (plugin.r#type.as_str(), plugin.id.as_str()) != RUNTIME_PLUGIN {
            return Err(Error::unimplemented(format!(
                "plugin {}.{} does not provide extra information (berthd answers it for {}.{})",
                req.r#type, req.id, RUNTIME_PLUGIN.0, RUNTIME_PLUGIN.1
            ))
            .into());
        }
        let info = self.runtime_info(&options).await?;
        reply(PluginInfoResponse {
            plugin: Some(plugin),
            extra: Some(berth_api::pack_any(&info)),
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
