//! CRI containers: records in the pod (`sandbox` = the pod id), their task (id = the container
//! id) created at StartContainer with stdout/stderr to the kubelet's log through the shim's
//! `cri-log://` writer and, with `stdin`, a FIFO at `<state>/io/<id>/stdin`.

use crate::spec::{self, Inputs, User};
use crate::store::{self, Container, ContainerState, KIND_CONTAINER, SANDBOX_ID_LABEL};
use crate::Cri;
use berth::api::v1::types::Status as TaskStatus;
use berth_api::containerd::runc::v1::Options as RuncOptions;
use berth_api::runtime::v1 as cri;
use berth_errdefs::{Error, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

const SIGKILL: u32 = 9;
/// containerd's exit code for a container whose start failed.
const START_ERROR_CODE: i32 = 128;

fn name_key(c: &cri::ContainerMetadata, pod: &cri::PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}_{}",
        c.name, pod.name, pod.namespace, pod.uid, c.attempt
    )
}

/// The bound of the CRI log kept for a container the kubelet gave no log path (bytes).
const UNLOGGED_OUTPUT_MAX: u64 = 1 << 20;

/// `cri-log:///path` as the shim parses it (no rotation: the kubelet rotates).
fn cri_log_uri(path: &str) -> String {
    let escaped: String = path
        .chars()
        .map(|c| match c {
            '%' => "%25".to_string(),
            '?' => "%3F".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!("cri-log://{escaped}")
}

/// Whether the container's cgroup saw an OOM kill (cgroup v1 memory.oom_control or v2
/// memory.events), read before the task is deleted.
fn oom_killed(cgroups_path: &str) -> bool {
    let rel = cgroups_path.trim_start_matches('/');
    let count = |file: PathBuf, key: &str| -> u64 {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok())?
                })
            })
            .unwrap_or(0)
    };
    count(
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
        "oom_kill",
    ) > 0
        || count(
            PathBuf::from("/sys/fs/cgroup/unified")
                .join(rel)
                .join("memory.events"),
            "oom_kill",
        ) > 0
        || count(
            PathBuf::from("/sys/fs/cgroup")
                .join(rel)
                .join("memory.events"),
            "oom_kill",
        ) > 0
}

impl Cri {
    fn io_dir(&self, id: &str) -> PathBuf {
        self.settings
            .config
            .state_dir(&self.settings.state)
            .join("io")
            .join(id)
    }

    pub async fn create_container(&self, req: cri::CreateContainerRequest) -> Result<String> {
        let mut config = req
            .config
            .ok_or_else(|| Error::invalid("CreateContainer needs a config"))?;
        let meta = config
            .metadata
            .clone()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| Error::invalid("the container config needs metadata with a name"))?;
        let image_ref = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::invalid("the container config names no image"))?;
        let pod = self.pod(&req.pod_sandbox_id).await?;
        let pod_id = pod.info.id.clone();
        let _pod_guard = store::lock(&pod_id).await;
        if !pod.state.ready {
            return Err(Error::precondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        let pod_meta = pod.config.metadata.clone().unwrap_or_default();
        let key = name_key(&meta, &pod_meta);
        if let Some(other) = self.name_taken(KIND_CONTAINER, &key).await? {
            return Err(Error::exists(format!(
                "the container name {key:?} is reserved by {other}"
            )));
        }
        let details = self.image_details(&image_ref).await.map_err(|e| {
            if e.is_not_found() {
                Error::not_found(format!("image {image_ref:?} not found: pull it first"))
            } else {
                e
            }
        })?;
        let sc = spec::security(&config);
        let user = self.resolve_user(&details, &sc).await?;
        let target_pid = match sc.namespace_options.as_ref() {
            Some(ns) if ns.pid == cri::NamespaceMode::Target as i32 => {
                let target = self.container(&ns.target_id).await?;
                match self.client.tasks().get(&target.info.id).await? {
                    Some(t) if t.status == TaskStatus::Running => Some(t.pid),
                    _ => None,
                }
            }
            _ => None,
        };
        let id = store::new_id();
        // Id mappings on a mount only mean something in the pod's own user namespace.
        if spec::pod_userns(&pod.config)?.is_none()
            && config
                .mounts
                .iter()
                .any(|m| !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty())
        {
            return Err(Error::invalid(
                "a mount with id mappings needs a pod with its own user namespace",
            ));
        }
        let staging = self.idmapped_mounts_dir(&id);
        let idmapped = {
            let (dir, config) = (staging.clone(), config.clone());
            crate::blocking(move || crate::idmap_mount::stage_all(&dir, &config)).await?
        };
        let volumes = match self.prepare_image_volumes(&id, &mut config).await {
            Ok(v) => v,
            Err(e) => {
                let _ = crate::blocking(move || crate::staging::remove_all(&staging)).await;
                return Err(e);
            }
        };
        let created = self
            .create_record(
                &id, &config, &pod, &details, &user, target_pid, &volumes, &idmapped,
            )
            .await;
        match created {
            Ok(()) => {
                // The record holds the views now; a lease left behind expires on its own.
                if let Err(e) = self.commit_image_volumes(volumes).await {
                    tracing::warn!(container = %id, error = %e, "image volume lease not released");
                }
                tracing::info!(container = %id, pod = %pod_id, "container created");
                Ok(id)
            }
            Err(e) => {
                self.abandon_image_volumes(&id, volumes).await;
                let _ = crate::blocking(move || crate::staging::remove_all(&staging)).await;
                Err(e)
            }
        }
    }

    /// The spec, state and record of a new container (the part of CreateContainer that its
    /// image volumes are undone after when it fails).
    #[allow(clippy::too_many_arguments)]
    async fn create_record(
        &self,
        id: &str,
        config: &cri::ContainerConfig,
        pod: &store::Pod,
        details: &berth::images::ImageDetails,
        user: &User,
        target_pid: Option<u32>,
        volumes: &crate::image_volume::Prepared,
        idmapped: &HashMap<usize, PathBuf>,
    ) -> Result<()> {
        let id = id.to_string();
        let pod_id = pod.info.id.clone();
        let pod_meta = pod.config.metadata.clone().unwrap_or_default();
        let meta = config.metadata.clone().unwrap_or_default();
        let key = name_key(&meta, &pod_meta);
        let spec_json = spec::generate(&Inputs {
            id: &id,
            pod_id: &pod_id,
            pod: &pod.config,
            pod_state: &pod.state,
            config,
            image: &details.config,
            user,
            target_pid,
            image_volumes: &volumes.sources,
            idmapped_mounts: idmapped,
        })?;
        let log_path = if pod.config.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            PathBuf::from(&pod.config.log_directory)
                .join(&config.log_path)
                .to_string_lossy()
                .into_owned()
        };
        let stdin_fifo = if config.stdin {
            let dir = self.io_dir(&id);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
            let fifo = dir.join("stdin");
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| Error::io(format!("mkfifo {}", fifo.display()), e.into()))?;
            Some(fifo.to_string_lossy().into_owned())
        } else {
            None
        };
        let stop_signal = details
            .config
            .config()
            .as_ref()
            .and_then(|c| c.stop_signal().clone())
            .unwrap_or_else(|| "SIGTERM".into());
        let repo = details
            .image
            .name
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map(|(r, _)| r.to_string())
            .unwrap_or_else(|| details.image.name.clone());
        let state = ContainerState {
            created_at: store::now_ns(),
            log_path,
            image_ref: format!("{repo}@{}", details.image.target.digest),
            image_id: details.manifest.config().digest().to_string(),
            stdin_fifo,
            tty: config.tty,
            stop_signal,
            uid: i64::from(user.uid),
            gid: i64::from(user.gid),
            groups: user.groups.iter().map(|g| i64::from(*g)).collect(),
            cgroups_path: spec::cgroups_path(&pod.state, &id),
            resources: spec_json["linux"].get("resources").cloned(),
            ..Default::default()
        };
        let (mut labels, extensions) =
            store::new_record_parts(KIND_CONTAINER, key, "ContainerConfig", config, &state)?;
        labels.insert(SANDBOX_ID_LABEL.to_string(), pod_id.clone());
        labels.extend(volumes.labels.clone());
        // In a pod user namespace the image's files are shown through the pod's maps (idmapped
        // lower layers), so its root owns what the image's root owns, with no chowned copy.
        let snapshot_labels = match spec::pod_userns(&pod.config)? {
            Some(u) => HashMap::from([
                (berth::userns::UIDMAP_LABEL.to_string(), u.uid_map()),
                (berth::userns::GIDMAP_LABEL.to_string(), u.gid_map()),
            ]),
            None => HashMap::new(),
        };
        let created = self
            .client
            .containers()
            .create_record(berth::containers::NewContainer {
                id: id.clone(),
                image: details.image.name.clone(),
                snapshot_parent: Some(details.chain_id.clone()),
                snapshot_labels,
                spec: spec_json,
                labels,
                extensions,
                sandbox: pod_id.clone(),
                // Each container's shim goes in its pod's cgroup: the pod is charged for it (as
                // CRI-O charges conmon), and its move shares the kernel's wait with runc's. A
                // parent that is no cgroupfs path (a systemd slice name) is left to runc.
                runtime_options: berth_cgroups::check_path(&pod.state.cgroup_parent)
                    .is_ok()
                    .then(|| {
                        berth_api::pack_any(&RuncOptions {
                            shim_cgroup: pod.state.cgroup_parent.clone(),
                            ..Default::default()
                        })
                    }),
            })
            .await;
        if let Err(e) = created {
            let _ = std::fs::remove_dir_all(self.io_dir(&id));
            return Err(e.into());
        }
        Ok(())
    }

    /// The user from the security context (uid, or a name from the image's /etc/passwd) or the
    /// image's USER, with groups by the supplemental groups policy.
    async fn resolve_user(
        &self,
        details: &berth::images::ImageDetails,
        sc: &cri::LinuxContainerSecurityContext,
    ) -> Result<User> {
        let image_user = details
            .config
            .config()
            .as_ref()
            .and_then(|c| c.user().clone())
            .unwrap_or_default();
        let spec = match (
            &sc.run_as_user,
            sc.run_as_username.as_str(),
            &sc.run_as_group,
        ) {
            (Some(u), _, Some(g)) => format!("{}:{}", u.value, g.value),
            (Some(u), _, None) => u.value.to_string(),
            (None, name, Some(g)) if !name.is_empty() => format!("{name}:{}", g.value),
            (None, name, None) if !name.is_empty() => name.to_string(),
            (None, _, Some(_)) => {
                return Err(Error::invalid(
                    "runAsGroup is given without runAsUser or runAsUserName",
                ))
            }
            (None, _, None) => image_user,
        };
        if let Some(u) = &sc.run_as_user {
            if u.value < 0 || u.value > i64::from(u32::MAX) {
                return Err(Error::invalid(format!(
                    "runAsUser {} is out of range",
                    u.value
                )));
            }
        }
        let resolved = if spec.is_empty() {
            berth::user::ResolvedUser::default()
        } else {
            let (passwd, group) = if berth::user::needs_image_files(&spec) || !spec.contains(':') {
                berth::user::read_image_files(
                    &self.client,
                    berth::containers::DEFAULT_SNAPSHOTTER,
                    &details.chain_id,
                )
                .await?
            } else {
                (None, None)
            };
            berth::user::resolve(&spec, passwd.as_deref(), group.as_deref())?
        };
        let strict = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
        let mut groups: Vec<u32> = if strict {
            vec![resolved.gid]
        } else {
            resolved.additional_gids.clone()
        };
        for g in &sc.supplemental_groups {
            let g = u32::try_from(*g)
                .map_err(|_| Error::invalid(format!("supplemental group {g} is out of range")))?;
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        Ok(User {
            uid: resolved.uid,
            gid: resolved.gid,
            groups,
            home: resolved.home,
        })
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let c = self.container(id).await?;
        let id = c.info.id.clone();
        let _guard = store::lock(&id).await;
        let c = self.container(&id).await?;
        if c.state.started_at != 0 || c.state.exited {
            return Err(Error::precondition(format!(
                "container {id} is not in the created state"
            )));
        }
        let pod = self.pod(&c.info.sandbox).await?;
        if !pod.state.ready {
            return Err(Error::precondition(format!(
                "pod sandbox {} is not ready",
                pod.info.id
            )));
        }
        self.ensure_image_volumes(&id, &c.info.labels).await?;
        let mut io = berth::tasks::TaskIo {
            terminal: c.state.tty,
            stdin: c.state.stdin_fifo.clone().unwrap_or_default(),
            ..Default::default()
        };
        // With no log path from the kubelet the output still goes to a CRI log of our own,
        // bounded (nobody rotates it), so Attach has something to follow.
        let uri = if c.state.log_path.is_empty() {
            let path = self.io_dir(&id).join("output.log");
            format!(
                "{}?max-size={UNLOGGED_OUTPUT_MAX}&max-files=1",
                cri_log_uri(&path.to_string_lossy())
            )
        } else {
            cri_log_uri(&c.state.log_path)
        };
        let log_file = if c.state.log_path.is_empty() {
            self.io_dir(&id).join("output.log")
        } else {
            PathBuf::from(&c.state.log_path)
        };
        if let Some(dir) = log_file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        io.stdout = uri.clone();
        if !c.state.tty {
            io.stderr = uri;
        }
        let tasks = self.client.tasks();
        // Created and started by one runtime command (runc run --detach), one call.
        let before = store::now_ns();
        let started = tasks.create_started(&c.info, &io).await;
        let mut state = c.state.clone();
        match started {
            Ok(pid) => {
                // Taken just before the call that started it, not from /proc's boot-relative
                // start time, which can read earlier than the creation it follows.
                state.started_at = before;
                self.save_state(&id, &state).await?;
                tracing::info!(container = %id, pid, "container started");
                Ok(())
            }
            Err(e) => {
                let _ = tasks.kill(&id, "", SIGKILL, true).await;
                let _ = tasks.delete(&id).await;
                state.exited = true;
                state.started_at = store::now_ns();
                state.finished_at = state.started_at;
                state.exit_code = START_ERROR_CODE;
                state.reason = "StartError".into();
                state.message = e.to_string();
                let _ = self.save_state(&id, &state).await;
                Err(e.into())
            }
        }
    }

    /// Record a stopped task's exit in the state and delete the task (and its shim).
    async fn reap(
        &self,
        c: &mut Container,
        exit_code: u32,
        exited_at: Option<std::time::SystemTime>,
    ) -> Result<()> {
        let oom = oom_killed(&c.state.cgroups_path);
        match self.client.tasks().delete(&c.info.id).await {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if c.state.exited {
            return Ok(());
        }
        c.state.exited = true;
        c.state.exit_code = exit_code as i32;
        c.state.finished_at = exited_at
            .map(store::nanos)
            .unwrap_or_else(store::now_ns)
            .max(c.state.started_at);
        c.state.reason = if oom {
            "OOMKilled".into()
        } else if exit_code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        };
        self.save_state(&c.info.id, &c.state).await
    }

    /// Bring the state up to date with the task: an exited task is reaped.
    async fn refresh(&self, c: &mut Container) -> Result<cri::ContainerState> {
        if c.state.exited {
            return Ok(cri::ContainerState::ContainerExited);
        }
        match self.client.tasks().get(&c.info.id).await? {
            Some(t) if t.status == TaskStatus::Stopped => {
                self.reap(c, t.exit_status, t.exited_at).await?;
                Ok(cri::ContainerState::ContainerExited)
            }
            Some(t)
                if matches!(
                    t.status,
                    TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing
                ) =>
            {
                Ok(cri::ContainerState::ContainerRunning)
            }
            Some(_) => Ok(cri::ContainerState::ContainerCreated),
            None if c.state.started_at != 0 => {
                // The task vanished without an exit we saw (its shim died).
                c.state.exited = true;
                c.state.exit_code = 255;
                c.state.finished_at = store::now_ns();
                c.state.reason = "Unknown".into();
                c.state.message = "the container's task is gone".into();
                self.save_state(&c.info.id, &c.state).await?;
                Ok(cri::ContainerState::ContainerExited)
            }
            None => Ok(cri::ContainerState::ContainerCreated),
        }
    }

    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let c = match self.container(id).await {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container_id(&c.info.id, timeout).await
    }

    /// The stop signal, `timeout` seconds, then SIGKILL; the exit recorded, the task deleted.
    pub async fn stop_container_id(&self, id: &str, timeout: i64) -> Result<()> {
        let _guard = store::lock(id).await;
        let mut c = match self.container(id).await {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let tasks = self.client.tasks();
        let task = match tasks.get(id).await? {
            None => {
                self.refresh(&mut c).await?;
                return Ok(());
            }
            Some(t) => t,
        };
        if task.status != TaskStatus::Stopped {
            let mut waiter = {
                let client = self.client.clone();
                let id = id.to_string();
                tokio::spawn(async move { client.tasks().wait(&id, "").await })
            };
            let mut exited = false;
            if timeout > 0 {
                let signal = berth::tasks::parse_signal(&c.state.stop_signal).unwrap_or(15);
                match tasks.kill(id, "", signal, false).await {
                    Ok(()) => {}
                    Err(e) if e.code() == tonic::Code::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                exited = tokio::time::timeout(Duration::from_secs(timeout as u64), &mut waiter)
                    .await
                    .is_ok();
            }
            if !exited {
                match tasks.kill(id, "", SIGKILL, true).await {
                    Ok(()) => {}
                    Err(e) if e.code() == tonic::Code::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                let _ = tokio::time::timeout(Duration::from_secs(30), waiter).await;
            }
        }
        let task = tasks.get(id).await?;
        match task {
            Some(t) if t.status == TaskStatus::Stopped => {
                self.reap(&mut c, t.exit_status, t.exited_at).await?
            }
            Some(_) => {
                return Err(Error::internal(format!(
                    "container {id} did not stop after SIGKILL"
                )))
            }
            None => {
                self.refresh(&mut c).await?;
            }
        }
        tracing::info!(container = %id, "container stopped");
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let c = match self.container(id).await {
            Ok(c) => c,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let id = c.info.id.clone();
        self.stop_container_id(&id, 0).await?;
        let _guard = store::lock(&id).await;
        // Unmounted before the record goes, so a failure leaves the record for a retry.
        self.remove_image_volumes(&id, &crate::image_volume::of_record(&c.info.labels))
            .await?;
        let staging = self.idmapped_mounts_dir(&id);
        crate::blocking(move || crate::staging::remove_all(&staging)).await?;
        match self.client.containers().remove(&c.info).await {
            Ok(()) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let _ = std::fs::remove_dir_all(self.io_dir(&id));
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    pub async fn list_containers(
        &self,
        req: cri::ListContainersRequest,
    ) -> Result<Vec<cri::Container>> {
        let filter = req.filter.unwrap_or_default();
        let pod_filter = if filter.pod_sandbox_id.is_empty() {
            None
        } else if filter.pod_sandbox_id.len() == 64 {
            Some(filter.pod_sandbox_id.clone())
        } else {
            match self.pod(&filter.pod_sandbox_id).await {
                Ok(p) => Some(p.info.id),
                Err(e) if e.is_not_found() || e.kind() == berth_errdefs::Kind::InvalidArgument => {
                    return Ok(Vec::new())
                }
                Err(e) => return Err(e),
            }
        };
        let containers = self.containers_of(pod_filter.as_deref()).await?;
        let tasks = self.client.tasks().list().await?;
        let mut out = Vec::new();
        for c in containers {
            if !filter.id.is_empty() && !c.info.id.starts_with(&filter.id) {
                continue;
            }
            if !store::matches_labels(&c.config.labels, &filter.label_selector) {
                continue;
            }
            let state = if c.state.exited {
                cri::ContainerState::ContainerExited
            } else {
                match tasks.get(&c.info.id) {
                    Some(t) if t.status == TaskStatus::Stopped => {
                        cri::ContainerState::ContainerExited
                    }
                    Some(t) if t.status == TaskStatus::Created => {
                        cri::ContainerState::ContainerCreated
                    }
                    Some(_) => cri::ContainerState::ContainerRunning,
                    None if c.state.started_at != 0 => cri::ContainerState::ContainerExited,
                    None => cri::ContainerState::ContainerCreated,
                }
            };
            if let Some(s) = &filter.state {
                if s.state != state as i32 {
                    continue;
                }
            }
            out.push(cri::Container {
                id: c.info.id.clone(),
                pod_sandbox_id: c.info.sandbox.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(image_spec(&c)),
                image_ref: c.state.image_ref.clone(),
                image_id: c.state.image_id.clone(),
                state: state as i32,
                created_at: c.state.created_at,
                labels: c.config.labels,
                annotations: c.config.annotations,
            });
        }
        Ok(out)
    }

    pub async fn container_status(
        &self,
        req: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse> {
        let c = self.container(&req.container_id).await?;
        let id = c.info.id.clone();
        let _guard = store::lock(&id).await;
        let mut c = self.container(&id).await?;
        let state = self.refresh(&mut c).await?;
        let resources: Option<cri::LinuxContainerResources> =
            c.config.linux.as_ref().and_then(|l| l.resources.clone());
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "sandboxID": c.info.sandbox,
                "runtimeSpec": c.info.spec,
                "pid": match self.client.tasks().get(&id).await? { Some(t) => t.pid, None => 0 },
            });
            info.insert("info".to_string(), v.to_string());
        }
        let status = cri::ContainerStatus {
            id: id.clone(),
            metadata: c.config.metadata.clone(),
            state: state as i32,
            created_at: c.state.created_at,
            started_at: c.state.started_at,
            finished_at: c.state.finished_at,
            exit_code: c.state.exit_code,
            image: Some(image_spec(&c)),
            image_ref: c.state.image_ref.clone(),
            image_id: c.state.image_id.clone(),
            reason: c.state.reason.clone(),
            message: c.state.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.state.log_path.clone(),
            resources: Some(cri::ContainerResources {
                linux: c.state.resources.as_ref().map(resources_back).or(resources),
                windows: None,
            }),
            user: Some(cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: c.state.uid,
                    gid: c.state.gid,
                    // The primary group first, then the others, as containerd reports them
                    // (critest compares the whole list).
                    supplemental_groups: std::iter::once(c.state.gid)
                        .chain(c.state.groups.iter().copied().filter(|g| *g != c.state.gid))
                        .collect(),
                }),
            }),
            stop_signal: c.config.stop_signal,
        };
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    pub async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<()> {
        let c = self.container(&req.container_id).await?;
        let id = c.info.id.clone();
        let _guard = store::lock(&id).await;
        let mut c = self.container(&id).await?;
        let linux = req
            .linux
            .ok_or_else(|| Error::invalid("UpdateContainerResources needs linux resources"))?;
        let mut res = spec::resources(&linux);
        // The device rules stay as created.
        if let Some(devices) = c
            .info
            .spec
            .as_ref()
            .and_then(|s| s["linux"]["resources"].get("devices"))
        {
            res["devices"] = devices.clone();
        }
        let state = self.refresh(&mut c).await?;
        if state == cri::ContainerState::ContainerExited {
            return Err(Error::precondition(format!(
                "container {id} has exited: its resources cannot change"
            )));
        }
        if state == cri::ContainerState::ContainerRunning {
            let req = berth_api::containerd::services::tasks::v1::UpdateTaskRequest {
                container_id: id.clone(),
                resources: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .into(),
                    value: serde_json::to_vec(&res)
                        .map_err(|e| Error::internal(format!("encode resources: {e}")))?,
                }),
                annotations: req.annotations,
            };
            berth_api::containerd::services::tasks::v1::tasks_client::TasksClient::new(
                self.client.channel().clone(),
            )
            .update(berth::with_namespace(self.client.namespace(), req))
            .await
            .map_err(berth::Error::from)?;
        }
        // The record's spec too, so a task created later (or a restart) has them.
        if let Some(mut spec_json) = c.info.spec.clone() {
            spec_json["linux"]["resources"] = res.clone();
            let container = berth_api::containerd::services::containers::v1::Container {
                id: id.clone(),
                spec: Some(prost_types::Any {
                    type_url: berth::containers::SPEC_TYPE_URL.into(),
                    value: serde_json::to_vec(&spec_json)
                        .map_err(|e| Error::internal(format!("encode the spec: {e}")))?,
                }),
                ..Default::default()
            };
            let update = berth_api::containerd::services::containers::v1::UpdateContainerRequest {
                container: Some(container),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["spec".into()],
                }),
            };
            berth_api::containerd::services::containers::v1::containers_client::ContainersClient::new(
                self.client.channel().clone(),
            )
            .update(berth::with_namespace(self.client.namespace(), update))
            .await
            .map_err(berth::Error::from)?;
        }
        c.state.resources = Some(res);
        self.save_state(&id, &c.state).await
    }

    /// The shim's writer reopens the log path at its next write when the path names another
    /// file; the file is created here so it is there when this call returns.
    pub async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let mut c = self.container(id).await?;
        if self.refresh(&mut c).await? != cri::ContainerState::ContainerRunning {
            return Err(Error::precondition(format!(
                "container {} is not running",
                c.info.id
            )));
        }
        if c.state.log_path.is_empty() {
            return Ok(());
        }
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&c.state.log_path)
            .map_err(|e| Error::io(format!("reopen {}", c.state.log_path), e))?;
        Ok(())
    }
}

fn image_spec(c: &Container) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.info.image.clone(),
        annotations: c
            .config
            .image
            .as_ref()
            .map(|i| i.annotations.clone())
            .unwrap_or_default(),
        user_specified_image: c
            .config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The CRI's resources from the OCI ones kept in the state.
fn resources_back(v: &serde_json::Value) -> cri::LinuxContainerResources {
    let i = |p: &str| v.pointer(p).and_then(|x| x.as_i64()).unwrap_or(0);
    let s = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    cri::LinuxContainerResources {
        cpu_period: i("/cpu/period"),
        cpu_quota: i("/cpu/quota"),
        cpu_shares: i("/cpu/shares"),
        memory_limit_in_bytes: i("/memory/limit"),
        memory_swap_limit_in_bytes: i("/memory/swap"),
        cpuset_cpus: s("/cpu/cpus"),
        cpuset_mems: s("/cpu/mems"),
        ..Default::default()
    }
}
