//! Pod sandboxes without a pause container: a netns attached by berth-net's CNI code (none for
//! hostNetwork), a `berthd cri-holder` process owning the shared IPC/UTS (and PID) namespaces,
//! the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname and its /dev/shm (see
//! [`crate::pod_shm`]) in `<state>/pods/<id>/`, and a container record (see [`crate::store`])
//! holding the config and that state.

use crate::store::{self, Pod, PodState, KIND_SANDBOX};
use crate::Cri;
use berth_api::runtime::v1 as cri;
use berth_errdefs::{Error, Result};
use std::collections::HashMap;
use std::path::PathBuf;

/// Linux's limit on a hostname's length.
const HOST_NAME_MAX: usize = 64;

fn ns_mode(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn name_key(m: &cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

impl Cri {
    fn pods_dir(&self) -> PathBuf {
        self.settings
            .config
            .state_dir(&self.settings.state)
            .join("pods")
    }

    fn pod_dir(&self, id: &str) -> PathBuf {
        self.pods_dir().join(id)
    }

    /// At start: the directories of pods whose record is gone (berthd stopped between making
    /// one and recording its pod, or in the middle of a removal), their shm unmounted first.
    pub(crate) async fn sweep_pod_dirs(&self) -> Result<()> {
        for (id, dir) in self.dirs_of_gone_containers(&self.pods_dir()).await? {
            crate::blocking(move || {
                crate::pod_shm::tear_down(&dir)?;
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| Error::io(format!("remove {}", dir.display()), e))
            })
            .await?;
            tracing::info!(pod = %id, "directory of a pod that is gone removed");
        }
        Ok(())
    }

    /// The cgroup a pod's containers go under when the kubelet gives none: berth's to make and
    /// to remove (a kubelet-given parent is the kubelet's).
    fn default_cgroup_parent(&self, id: &str) -> String {
        format!("/{}/{id}", self.settings.config.namespace)
    }

    fn owned_cgroup_parent(&self, id: &str, state: &PodState) -> Option<String> {
        let default = self.default_cgroup_parent(id);
        (state.cgroup_parent == default).then_some(default)
    }

    /// Remove the pod's own cgroup parent, once its containers' cgroups are gone (runc makes
    /// missing parents but never removes them: left alone, each pod would leave one behind in
    /// every hierarchy).
    async fn remove_cgroup_parent(&self, id: &str, state: &PodState) {
        if let Some(parent) = self.owned_cgroup_parent(id, state) {
            let removal = tokio::task::spawn_blocking(move || berth_cgroups::dirs::remove(&parent));
            best_effort(id, "remove the pod's cgroup", removal).await;
        }
    }

    fn attachment_key(&self, id: &str) -> berth_net::AttachmentKey {
        berth_net::AttachmentKey::new(self.settings.config.namespace.clone(), id)
    }

    pub async fn run_pod_sandbox(&self, req: cri::RunPodSandboxRequest) -> Result<String> {
        let config = req
            .config
            .ok_or_else(|| Error::invalid("RunPodSandbox needs a config"))?;
        let meta = config
            .metadata
            .as_ref()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| Error::invalid("the pod sandbox config needs metadata with a name"))?;
        // Refused before anything is set up, rather than running the pod in the host's user
        // namespace while it asked for its own.
        if crate::spec::pod_userns(&config)?.is_some() {
            if let Err(why) = &self.userns {
                return Err(Error::precondition(format!(
                    "pod user namespaces (POD) do not work on this host: {why}"
                )));
            }
        }
        if !req.runtime_handler.is_empty() {
            return Err(Error::not_found(format!(
                "no runtime handler {:?} (berth has only the default one)",
                req.runtime_handler
            )));
        }
        // The kernel takes at most 64 bytes (sethostname fails with EINVAL past it).
        if config.hostname.len() > HOST_NAME_MAX {
            return Err(Error::invalid(format!(
                "pod hostname {:?} is longer than {HOST_NAME_MAX} bytes",
                config.hostname
            )));
        }
        let key = name_key(meta);
        if let Some(other) = self.name_taken(KIND_SANDBOX, &key).await? {
            return Err(Error::exists(format!(
                "the pod sandbox name {key:?} is reserved by {other}"
            )));
        }
        let id = store::new_id();
        let _guard = store::lock(&id).await;
        let dir = self.pod_dir(&id);
        let mut state = PodState {
            created_at: store::now_ns(),
            cgroup_parent: config
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| self.default_cgroup_parent(&id)),
            ..Default::default()
        };
        // The pod's own cgroup parent is made now, beside the holder and the network, so that
        // the first container's create finds it rather than making it on its way (a cgroup
        // made in each hierarchy). Best effort: that create makes what is missing (shim_cgroup).
        let cgroup = self.owned_cgroup_parent(&id, &state).map(|parent| {
            tokio::task::spawn_blocking(move || berth_cgroups::dirs::create(&parent).map(drop))
        });
        let set_up = self.set_up_pod(&id, &config, &dir, &mut state).await;
        if let Some(made) = cgroup {
            best_effort(&id, "make the pod's cgroup", made).await;
        }
        match set_up {
            Ok(()) => {}
            Err(e) => {
                self.tear_down_pod(&id, &mut state).await;
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
        state.ready = true;
        let (labels, extensions) =
            store::new_record_parts(KIND_SANDBOX, key, "PodSandboxConfig", &config, &state)?;
        let created = self
            .client
            .containers()
            .create_record(berth::containers::NewContainer {
                id: id.clone(),
                spec: serde_json::json!({"ociVersion": "1.1.0"}),
                labels,
                extensions,
                ..Default::default()
            })
            .await;
        if let Err(e) = created {
            self.tear_down_pod(&id, &mut state).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        tracing::info!(pod = %id, "pod sandbox ready");
        Ok(id)
    }

    /// The pod's directory, holder and network, and its hostname file.
    async fn set_up_pod(
        &self,
        id: &str,
        config: &cri::PodSandboxConfig,
        dir: &std::path::Path,
        state: &mut PodState,
    ) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let ns = ns_mode(config);
        let host_net = ns.network == cri::NamespaceMode::Node as i32;
        let host_name_of_node = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        // As containerd: a pod given no hostname takes the node's (the kubelet always gives one;
        // a pod's name may be longer than a hostname can be).
        let hostname = if config.hostname.is_empty() {
            host_name_of_node.clone()
        } else {
            config.hostname.clone()
        };
        let hostname_file = dir.join("hostname");
        write(
            &hostname_file,
            &format!(
                "{}\n",
                if host_net {
                    &host_name_of_node
                } else {
                    &hostname
                }
            ),
        )?;
        state.hostname_file = hostname_file.to_string_lossy().into_owned();
        state.shm = crate::pod_shm::set_up(dir, ns.ipc == cri::NamespaceMode::Node as i32)?;

        // The holder: IPC unless the host's, UTS unless the host network's, PID for a pod-wide
        // PID namespace. A pod user namespace is the holder's too, with the pod's netns made
        // inside it (CNI then attaches that netns): runc joins a container's user namespace
        // first and may then join only namespaces it owns.
        let userns = crate::spec::pod_userns(config)?;
        let opts = crate::holder::HolderOptions {
            ipc: ns.ipc != cri::NamespaceMode::Node as i32,
            uts: !host_net,
            pid: ns.pid == cri::NamespaceMode::Pod as i32,
            net: userns.is_some(),
            hostname: (!host_net).then(|| hostname.clone()),
            userns: userns.map(|u| (u.uid_map(), u.gid_map())),
            exit_after: None,
            pod_dir: Some(dir.to_path_buf()),
        };
        let wants_holder = opts.ipc || opts.uts || opts.pid || opts.userns.is_some();
        if host_net || userns.is_some() {
            // The holder first: with a user namespace its netns is the pod's.
            if wants_holder {
                state.holder = Some(self.start_holder(&opts).await?);
            }
            let in_userns = userns.is_some();
            return self
                .set_up_network(id, config, hostname, host_net, in_userns, state)
                .await;
        }
        // Otherwise the holder and the network have nothing to do with each other: started
        // together, the holder's exec (~10 ms) hides behind the CNI chain. Each part that
        // succeeded is recorded so a failure of the other undoes it.
        let holder = async {
            if wants_holder {
                self.start_holder(&opts).await.map(Some)
            } else {
                Ok(None)
            }
        };
        let (holder, network) = tokio::join!(
            holder,
            self.set_up_network(id, config, hostname, host_net, false, state)
        );
        if let Some(holder) = holder? {
            state.holder = Some(holder);
        }
        network
    }

    /// The pod's hosts and resolv.conf, and unless it is on the host's network its netns
    /// attached to the CNI network: the holder's, made inside its user namespace, when
    /// `in_userns`.
    async fn set_up_network(
        &self,
        id: &str,
        config: &cri::PodSandboxConfig,
        hostname: String,
        host_net: bool,
        in_userns: bool,
        state: &mut PodState,
    ) -> Result<()> {
        let dir = self.pod_dir(id);
        let dns = config.dns_config.as_ref().map(|d| berth_net::DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        });
        if host_net {
            let hosts = dir.join("hosts");
            let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            write(&hosts, &host_hosts)?;
            let resolv = dir.join("resolv.conf");
            let text = match &dns {
                Some(d) if !d.servers.is_empty() || !d.searches.is_empty() => {
                    berth_net::hosts::resolv_conf(&berth_net::hosts::host_resolv_conf(), Some(d))
                }
                _ => berth_net::hosts::host_resolv_conf(),
            };
            write(&resolv, &text)?;
            state.hosts = hosts.to_string_lossy().into_owned();
            state.resolv_conf = resolv.to_string_lossy().into_owned();
            return Ok(());
        }

        let network = self.network_config().await?.ok_or_else(|| {
            Error::precondition(format!(
                "the pod network is not ready: no CNI config in {}",
                self.settings.config.cni_conf_dir.display()
            ))
        })?;
        let meta = config.metadata.clone().unwrap_or_default();
        let mut ports = Vec::new();
        for p in &config.port_mappings {
            if p.host_port <= 0 {
                continue;
            }
            let protocol = match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            ports.push(berth_net::PortMapping {
                host_port: u16::try_from(p.host_port).map_err(|_| {
                    Error::invalid(format!("host port {} out of range", p.host_port))
                })?,
                container_port: u16::try_from(p.container_port).map_err(|_| {
                    Error::invalid(format!("container port {} out of range", p.container_port))
                })?,
                protocol: protocol.to_string(),
                host_ip: p.host_ip.clone(),
            });
        }
        let opts = berth_net::AttachOptions {
            networks: vec![network],
            ports,
            hostname: hostname.clone(),
            cni_args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), meta.namespace.clone()),
                ("K8S_POD_NAME".into(), meta.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
                ("K8S_POD_UID".into(), meta.uid.clone()),
            ],
            dns,
            ..Default::default()
        };
        let net = self.net.clone();
        let key = self.attachment_key(id);
        let holder_netns = match (in_userns, state.holder) {
            (true, Some((pid, _))) => Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
            _ => None,
        };
        let attachment = match holder_netns {
            None => crate::blocking(move || Ok(net.setup(&key, &opts)?)).await?,
            Some(source) => {
                // Named under /run/netns as berth-net names its own, and kept by the bind
                // (not by the holder) until the pod's network is torn down.
                let name = net.netns_name(&key);
                let path =
                    crate::blocking(move || Ok(berth_net::netns::bind(&name, &source)?)).await?;
                state.netns = Some(path.to_string_lossy().into_owned());
                state.netns_bound = true;
                crate::blocking(move || Ok(net.attach(&key, &path, &opts)?)).await?
            }
        };
        state.netns = Some(attachment.netns.to_string_lossy().into_owned());
        state.ips = attachment
            .networks
            .iter()
            .flat_map(|n| n.addresses())
            .map(|a| a.to_string())
            .collect();
        state.hosts = attachment.hosts_path.to_string_lossy().into_owned();
        state.resolv_conf = attachment.resolv_conf_path.to_string_lossy().into_owned();
        Ok(())
    }

    async fn start_holder(&self, opts: &crate::holder::HolderOptions) -> Result<(u32, u64)> {
        let binary = self.settings.holder_binary.clone();
        let args = crate::holder::args(opts);
        crate::blocking(move || {
            let out = std::process::Command::new(&binary)
                .arg("cri-holder")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| Error::io(format!("run {} cri-holder", binary.display()), e))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let parsed = text
                .trim()
                .split_once(' ')
                .and_then(|(p, s)| Some((p.parse::<u32>().ok()?, s.parse::<u64>().ok()?)));
            match (out.status.success(), parsed) {
                (true, Some(p)) => Ok(p),
                _ => Err(Error::internal(format!(
                    "the pod's namespace holder failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))),
            }
        })
        .await
    }

    /// Undo the network and holder; each part once (the state forgets what is undone).
    async fn tear_down_pod(&self, id: &str, state: &mut PodState) {
        if let Err(e) = self.tear_down_network(id, state).await {
            tracing::warn!(pod = %id, "tear down the pod network: {e}");
        }
        self.end_holder_and_shm(id, state);
        self.remove_cgroup_parent(id, state).await;
    }

    /// Kills the pod's holder and unmounts its shm. Its containers are stopped (their binds of
    /// the shm go with their mount namespaces); a container made in the stopped pod gets a
    /// tmpfs of its own.
    fn end_holder_and_shm(&self, id: &str, state: &mut PodState) {
        if let Some((pid, start)) = state.holder.take() {
            if crate::holder::alive(pid, start) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        match crate::pod_shm::tear_down(&self.pod_dir(id)) {
            Ok(()) => state.shm.clear(),
            Err(e) => tracing::warn!(pod = %id, "unmount the pod's shm: {e}"),
        }
    }

    async fn tear_down_network(&self, id: &str, state: &mut PodState) -> Result<()> {
        let net = self.net.clone();
        let key = self.attachment_key(id);
        crate::blocking(move || Ok(net.teardown(&key)?)).await?;
        if state.netns_bound {
            if let Some(path) = state.netns.clone() {
                crate::blocking(move || Ok(berth_net::netns::remove(path.as_ref())?)).await?;
            }
            state.netns_bound = false;
        }
        state.netns = None;
        Ok(())
    }

    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let pod = match self.pod(id).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let id = pod.info.id.clone();
        for c in self.containers_of(Some(&id)).await? {
            self.stop_container_id(&c.info.id, 0).await?;
        }
        let _guard = store::lock(&id).await;
        let mut state = self.pod(&id).await?.state;
        self.tear_down_network(&id, &mut state).await?;
        self.end_holder_and_shm(&id, &mut state);
        if state.ready || pod.state.holder.is_some() || !pod.state.shm.is_empty() {
            state.ready = false;
            self.save_state(&id, &state).await?;
        }
        tracing::info!(pod = %id, "pod sandbox stopped");
        Ok(())
    }

    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let pod = match self.pod(id).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let id = pod.info.id.clone();
        self.stop_pod_sandbox(&id).await?;
        for c in self.containers_of(Some(&id)).await? {
            self.remove_container(&c.info.id).await?;
        }
        let _guard = store::lock(&id).await;
        self.remove_cgroup_parent(&id, &pod.state).await;
        match self.client.containers().remove(&pod.info).await {
            Ok(()) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // Unmounted first: removing the directory would empty a shm still mounted there.
        let dir = self.pod_dir(&id);
        match crate::pod_shm::tear_down(&dir) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(e) => tracing::warn!(pod = %id, "unmount the pod's shm: {e}"),
        }
        tracing::info!(pod = %id, "pod sandbox removed");
        Ok(())
    }

    fn pod_status_of(&self, pod: &Pod) -> cri::PodSandboxStatus {
        let ns = ns_mode(&pod.config);
        let mut ips = pod.state.ips.iter();
        cri::PodSandboxStatus {
            id: pod.info.id.clone(),
            metadata: pod.config.metadata.clone(),
            state: state_of(pod) as i32,
            created_at: pod.state.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: ips.next().cloned().unwrap_or_default(),
                additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: ns.network,
                        pid: ns.pid,
                        ipc: ns.ipc,
                        target_id: ns.target_id,
                        userns_options: ns.userns_options.clone(),
                    }),
                }),
            }),
            labels: pod.config.labels.clone(),
            annotations: pod.config.annotations.clone(),
            runtime_handler: String::new(),
        }
    }

    pub async fn pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse> {
        let pod = self.pod(&req.pod_sandbox_id).await?;
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "netns": pod.state.netns,
                "holder": pod.state.holder,
                "cgroupParent": pod.state.cgroup_parent,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(self.pod_status_of(&pod)),
            info,
            containers_statuses: Vec::new(),
            timestamp: store::now_ns(),
        })
    }

    pub async fn list_pod_sandbox(
        &self,
        req: cri::ListPodSandboxRequest,
    ) -> Result<Vec<cri::PodSandbox>> {
        let filter = req.filter.unwrap_or_default();
        Ok(self
            .pods()
            .await?
            .into_iter()
            .filter(|p| filter.id.is_empty() || p.info.id.starts_with(&filter.id))
            .filter(|p| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == state_of(p) as i32)
            })
            .filter(|p| store::matches_labels(&p.config.labels, &filter.label_selector))
            .map(|p| cri::PodSandbox {
                id: p.info.id.clone(),
                state: state_of(&p) as i32,
                created_at: p.state.created_at,
                metadata: p.config.metadata,
                labels: p.config.labels,
                annotations: p.config.annotations,
                runtime_handler: String::new(),
            })
            .collect())
    }
}

/// Ready while its record says so and its network and holder are there.
fn state_of(pod: &Pod) -> cri::PodSandboxState {
    let holder_ok = pod
        .state
        .holder
        .is_none_or(|(pid, start)| crate::holder::alive(pid, start));
    let netns_ok = pod
        .state
        .netns
        .as_ref()
        .is_none_or(|p| std::path::Path::new(p).exists());
    if pod.state.ready && holder_ok && netns_ok {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

/// Wait for a cgroup change that runc does not depend on; a failure is only logged.
async fn best_effort(pod: &str, what: &str, task: tokio::task::JoinHandle<std::io::Result<()>>) {
    match task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(pod, "{what}: {e}"),
        Err(e) => tracing::warn!(pod, "{what}: {e}"),
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
}
