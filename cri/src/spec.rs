//! The OCI runtime spec of a CRI container: the image config (entrypoint, cmd, env, working
//! dir, user) under the ContainerConfig (command/args, envs, mounts, devices, resources,
//! security context), joined to its pod's namespaces (the netns by path, the holder's IPC/UTS/PID
//! by `/proc/<holder>/ns/*`), with the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname.

use crate::store::PodState;
use berth::spec::{canonical_capability, ALL_CAPS, DEFAULT_CAPS};
use berth_api::runtime::v1 as cri;
use berth_errdefs::{Error, Result};
use berth_snapshotter::idmap::{IdMap, IdRange};
use oci_spec::image::ImageConfiguration;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Syscalls the RuntimeDefault profile refuses (EPERM): what docker's and containerd's default
/// profiles leave out of their allow lists for an unprivileged container — kernel modules and
/// keyrings, clocks, reboot and swap, mounts and namespaces, tracing other processes, BPF.
const RUNTIME_DEFAULT_DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// The user a container runs as.
#[derive(Debug, Clone, Default)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: Option<String>,
}

/// What the spec is made from.
pub struct Inputs<'a> {
    pub id: &'a str,
    pub pod_id: &'a str,
    pub pod: &'a cri::PodSandboxConfig,
    pub pod_state: &'a PodState,
    pub config: &'a cri::ContainerConfig,
    pub image: &'a ImageConfiguration,
    pub user: &'a User,
    /// The running task pid of the container a TARGET PID namespace names.
    pub target_pid: Option<u32>,
    /// The host path each image mount binds (by its index in `config.mounts`): its view,
    /// mounted read-only by `image_volume`, or the sub path inside it.
    pub image_volumes: &'a std::collections::HashMap<usize, std::path::PathBuf>,
    /// The staged idmapped mount each mount with id mappings binds (by its index), made by
    /// `idmap_mount`.
    pub idmapped_mounts: &'a std::collections::HashMap<usize, std::path::PathBuf>,
}

/// "All capabilities" for a privileged container or an add of ALL: those in berthd's own
/// bounding set, as containerd does. A capability berthd lacks (a sandboxed host without
/// CAP_SYS_RESOURCE, an older kernel without CAP_BPF) cannot be granted: runc would fail the
/// start with "unable to apply caps".
fn all_caps() -> &'static [String] {
    static ALL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let bounding = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let hex = s.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
                u64::from_str_radix(hex.trim(), 16).ok()
            })
            .unwrap_or(u64::MAX);
        // ALL_CAPS is in the kernel's numbering order: index i is capability bit i.
        ALL_CAPS
            .iter()
            .enumerate()
            .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
            .map(|(_, c)| format!("CAP_{c}"))
            .collect()
    })
}

/// Whether the OCI runtime (runc on PATH, the default runtime's binary) takes the `rro`
/// mount option (runc >= 1.1 on a kernel with mount_setattr): asked once with `runc features`.
/// Blocking: it runs runc the first time.
pub fn runtime_supports_rro() -> bool {
    static RRO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RRO.get_or_init(|| {
        let Ok(out) = std::process::Command::new("runc").arg("features").output() else {
            return false;
        };
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|f| {
            f["mountOptions"]
                .as_array()
                .is_some_and(|o| o.iter().any(|v| v == "rro"))
        })
    })
}

/// containerd's order: drop ALL empties the set, add ALL fills it, then the named adds and drops.
pub fn capabilities(privileged: bool, caps: Option<&cri::Capability>) -> Result<Vec<String>> {
    let all = || all_caps().iter().cloned();
    let mut set: BTreeSet<String> = if privileged {
        all().collect()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    let Some(caps) = caps else {
        return Ok(set.into_iter().collect());
    };
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    if caps.drop_capabilities.iter().any(is_all) {
        set.clear();
    }
    if caps.add_capabilities.iter().any(is_all) {
        set.extend(all());
    }
    for a in caps.add_capabilities.iter().filter(|c| !is_all(c)) {
        set.insert(canonical_capability(a)?);
    }
    for d in caps.drop_capabilities.iter().filter(|c| !is_all(c)) {
        set.remove(&canonical_capability(d)?);
    }
    Ok(set.into_iter().collect())
}

/// CRI's argv rules: command replaces the entrypoint, args the cmd.
pub fn args(image: &ImageConfiguration, config: &cri::ContainerConfig) -> Result<Vec<String>> {
    let ic = image.config().clone().unwrap_or_default();
    let entrypoint = ic.entrypoint().clone().unwrap_or_default();
    let cmd = ic.cmd().clone().unwrap_or_default();
    let argv = if !config.command.is_empty() {
        let mut a = config.command.clone();
        a.extend(config.args.iter().cloned());
        a
    } else if !config.args.is_empty() {
        let mut a = entrypoint;
        a.extend(config.args.iter().cloned());
        a
    } else {
        let mut a = entrypoint;
        a.extend(cmd);
        a
    };
    if argv.is_empty() {
        return Err(Error::invalid(
            "no command specified: the container config and the image give none",
        ));
    }
    Ok(argv)
}

fn env(image: &ImageConfiguration, config: &cri::ContainerConfig, user: &User) -> Vec<String> {
    let mut env: Vec<String> = image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let mut set = |k: &str, v: String| {
        let prefix = format!("{k}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{k}={v}"));
    };
    for kv in &config.envs {
        set(&kv.key, String::from_utf8_lossy(&kv.value).into_owned());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            user.home.clone().unwrap_or_else(|| "/".into())
        ));
    }
    env
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": kind, "source": source, "options": options})
}

/// The security context of the container (or an empty one).
pub fn security(config: &cri::ContainerConfig) -> cri::LinuxContainerSecurityContext {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default()
}

pub fn pod_security(pod: &cri::PodSandboxConfig) -> cri::LinuxSandboxSecurityContext {
    pod.linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default()
}

/// A pod's own user namespace (NamespaceMode POD): one uid and one gid range, each mapping
/// container id 0, as the kubelet gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Userns {
    pub uid: IdRange,
    pub gid: IdRange,
}

impl Userns {
    /// `container:host:length`, the holder's arguments' and the snapshot labels' form.
    pub fn uid_map(&self) -> String {
        IdMap(vec![self.uid]).to_string()
    }

    pub fn gid_map(&self) -> String {
        IdMap(vec![self.gid]).to_string()
    }
}

/// The pod's user namespace, checked: `None` for the host's (NODE, no mappings), the mappings
/// for POD. Anything else is refused (InvalidArgument) before the pod is set up, so a pod never
/// runs in the host's user namespace when it asked for its own.
pub fn pod_userns(pod: &cri::PodSandboxConfig) -> Result<Option<Userns>> {
    let ns = pod_security(pod).namespace_options.unwrap_or_default();
    let Some(u) = ns.userns_options else {
        return Ok(None);
    };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) if u.uids.is_empty() && u.gids.is_empty() => return Ok(None),
        Ok(cri::NamespaceMode::Node) => {
            return Err(Error::invalid(
                "the host's user namespace (NODE) takes no id mappings",
            ))
        }
        Ok(cri::NamespaceMode::Pod) => {}
        _ => {
            return Err(Error::invalid(format!(
                "user namespace mode {} is not one a pod can have (NODE or POD)",
                u.mode
            )))
        }
    }
    let one = |kind: &str, maps: &[cri::IdMapping]| -> Result<IdRange> {
        let [m] = maps else {
            return Err(Error::invalid(format!(
                "a pod user namespace needs exactly one {kind} mapping, got {}",
                maps.len()
            )));
        };
        if m.container_id != 0 {
            return Err(Error::invalid(format!(
                "the {kind} mapping must map container id 0 (it starts at {})",
                m.container_id
            )));
        }
        IdRange::new(m.container_id, m.host_id, m.length).ok_or_else(|| {
            Error::invalid(format!(
                "the {kind} mapping {}+{} is empty or past the id range",
                m.host_id, m.length
            ))
        })
    };
    let userns = Userns {
        uid: one("uid", &u.uids)?,
        gid: one("gid", &u.gids)?,
    };
    // A process in the pod's user namespace cannot join a namespace of the host's (the kubelet
    // refuses hostUsers: false with hostNetwork, hostIPC or hostPID for the same reason).
    for (what, mode) in [("network", ns.network), ("IPC", ns.ipc), ("PID", ns.pid)] {
        if mode == cri::NamespaceMode::Node as i32 {
            return Err(Error::invalid(format!(
                "a pod with its own user namespace cannot use the host's {what} namespace"
            )));
        }
    }
    Ok(Some(userns))
}

fn seccomp(profile: Option<&cri::SecurityProfile>, privileged: bool) -> Result<Option<Value>> {
    let Some(p) = profile else {
        // No profile asked for: unconfined, as the CRI's default is.
        return Ok(None);
    };
    // A privileged container runs unconfined whatever profile it names, localhost ones
    // included (containerd's and the kubelet's contract; critest checks it).
    if privileged {
        return Ok(None);
    }
    match cri::security_profile::ProfileType::try_from(p.profile_type) {
        Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
        Ok(cri::security_profile::ProfileType::RuntimeDefault) => Ok(Some(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
            "syscalls": [{
                "names": RUNTIME_DEFAULT_DENIED,
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1,
            }],
        }))),
        Ok(cri::security_profile::ProfileType::Localhost) => {
            let path = p
                .localhost_ref
                .strip_prefix("localhost/")
                .unwrap_or(&p.localhost_ref);
            if !path.starts_with('/') {
                return Err(Error::invalid(format!(
                    "seccomp localhost profile {:?} is not an absolute path",
                    p.localhost_ref
                )));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::invalid(format!("read the seccomp profile {path}: {e}")))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| {
                Error::invalid(format!("the seccomp profile {path} is not JSON: {e}"))
            })?;
            Ok(Some(v))
        }
        Err(_) => Err(Error::invalid(format!(
            "unknown seccomp profile type {}",
            p.profile_type
        ))),
    }
}

/// The OCI resources of the CRI's LinuxContainerResources.
pub fn resources(r: &cri::LinuxContainerResources) -> Value {
    let mut v = json!({});
    let mut cpu = serde_json::Map::new();
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if r.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        v["cpu"] = Value::Object(cpu);
    }
    let mut memory = serde_json::Map::new();
    if r.memory_limit_in_bytes > 0 {
        memory.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    if !memory.is_empty() {
        v["memory"] = Value::Object(memory);
    }
    if !r.hugepage_limits.is_empty() {
        v["hugepageLimits"] = r
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect();
    }
    if !r.unified.is_empty() {
        v["unified"] = json!(r.unified);
    }
    v
}

/// A host path's device entry and its cgroup rule.
fn device(d: &cri::Device) -> Result<(Value, Value)> {
    let meta = std::fs::metadata(&d.host_path)
        .map_err(|e| Error::invalid(format!("device {:?}: {e}", d.host_path)))?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else {
        return Err(Error::invalid(format!("{:?} is not a device", d.host_path)));
    };
    let rdev = meta.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let path = if d.container_path.is_empty() {
        &d.host_path
    } else {
        &d.container_path
    };
    let access = if d.permissions.is_empty() {
        "rwm"
    } else {
        &d.permissions
    };
    Ok((
        json!({"path": path, "type": kind, "major": major, "minor": minor,
               "fileMode": meta.mode() & 0o777, "uid": meta.uid(), "gid": meta.gid()}),
        json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": access}),
    ))
}

/// The container's cgroup path under its pod's parent.
pub fn cgroups_path(pod_state: &PodState, id: &str) -> String {
    format!("{}/{id}", pod_state.cgroup_parent.trim_end_matches('/'))
}

/// The lowest oom_score_adj this daemon may give (it cannot go below its own without
/// CAP_SYS_RESOURCE; containerd's `restrict_oom_score_adj`).
fn oom_score_adj(wanted: i64) -> i64 {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    wanted.clamp(own, 1000)
}

pub fn generate(i: &Inputs<'_>) -> Result<Value> {
    let sc = security(i.config);
    let psc = pod_security(i.pod);
    let privileged = sc.privileged;
    if privileged && !psc.privileged {
        return Err(Error::invalid(
            "a privileged container needs a privileged pod sandbox",
        ));
    }
    let pod_ns = psc.namespace_options.clone().unwrap_or_default();
    let ctr_ns = sc.namespace_options.clone().unwrap_or_default();
    let host_net = pod_ns.network == cri::NamespaceMode::Node as i32;

    let cwd = if i.config.working_dir.is_empty() {
        i.image
            .config()
            .as_ref()
            .and_then(|c| c.working_dir().clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    } else {
        i.config.working_dir.clone()
    };
    if !cwd.starts_with('/') {
        return Err(Error::invalid(format!(
            "the working directory {cwd:?} is not an absolute path"
        )));
    }
    let caps = capabilities(privileged, sc.capabilities.as_ref())?;
    let mut process = json!({
        "terminal": i.config.tty,
        "user": {"uid": i.user.uid, "gid": i.user.gid},
        "args": args(i.image, i.config)?,
        "env": env(i.image, i.config, i.user),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": sc.no_new_privs,
        // No rlimits: the container keeps the ones berthd runs with (its unit sets them), as
        // under containerd since its CRI issue 515. A fixed 1024 hard limit on open files left
        // a server no way to raise its own.
    });
    if !i.user.groups.is_empty() {
        process["user"]["additionalGids"] = json!(i.user.groups);
    }
    if let Some(r) = i.config.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        if r.oom_score_adj != 0 {
            process["oomScoreAdj"] = json!(oom_score_adj(r.oom_score_adj));
        }
    }
    for amb in sc
        .capabilities
        .iter()
        .flat_map(|c| c.add_ambient_capabilities.iter())
    {
        let c = canonical_capability(amb)?;
        for set in ["ambient", "inheritable"] {
            let list = process["capabilities"][set]
                .as_array_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            let mut list: Vec<Value> = list;
            list.push(json!(c));
            process["capabilities"][set] = Value::Array(list);
        }
    }

    let sys_options: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        // The pod's, shared by its containers (see `pod_shm`).
        if i.pod_state.shm.is_empty() {
            let options: Vec<&str> = ["nosuid", "noexec", "nodev"]
                .into_iter()
                .chain(crate::pod_shm::TMPFS_OPTIONS)
                .collect();
            mount("/dev/shm", "tmpfs", "shm", &options)
        } else {
            mount(
                "/dev/shm",
                "bind",
                &i.pod_state.shm,
                &["rbind", "rprivate", "rw"],
            )
        },
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", sys_options),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ];
    // The pod's files, unless the container mounts its own there.
    let user_dests: BTreeSet<&str> = i
        .config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    let rootfs_ro = sc.readonly_rootfs;
    for (dest, src) in [
        ("/etc/hosts", &i.pod_state.hosts),
        ("/etc/resolv.conf", &i.pod_state.resolv_conf),
        ("/etc/hostname", &i.pod_state.hostname_file),
    ] {
        if !src.is_empty() && !user_dests.contains(dest) {
            let ro: &[&str] = if rootfs_ro {
                &["rbind", "rprivate", "ro"]
            } else {
                &["rbind", "rprivate", "rw"]
            };
            mounts.push(mount(dest, "bind", src, ro));
        }
    }
    let mut rootfs_propagation: Option<&str> = None;
    for (index, m) in i.config.mounts.iter().enumerate() {
        if m.container_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(Error::invalid(format!(
                "mount destination {:?} is not an absolute path",
                m.container_path
            )));
        }
        if m.image.is_some() {
            let source = i.image_volumes.get(&index).ok_or_else(|| {
                Error::internal(format!(
                    "the image volume at {:?} was not mounted",
                    m.container_path
                ))
            })?;
            // Read-only and private always (the image is shared by every user of it); not
            // noexec: the kubelet's API lets the container run what the image holds.
            let ro = if m.recursive_read_only { "rro" } else { "ro" };
            mounts.retain(|x| x["destination"] != json!(m.container_path));
            mounts.push(json!({
                "destination": m.container_path,
                "type": "bind",
                "source": source,
                "options": ["rbind", "rprivate", ro],
            }));
            continue;
        }
        let mut source = std::path::PathBuf::from(&m.host_path);
        if let Some(staged) = i.idmapped_mounts.get(&index) {
            source = staged.clone();
        } else if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(Error::internal(format!(
                "the idmapped mount at {:?} was not staged",
                m.container_path
            )));
        } else if !source.is_absolute() {
            return Err(Error::invalid(format!(
                "mount source {:?} is not an absolute path",
                m.host_path
            )));
        }
        if !source.exists() {
            // The kubelet's rule: a missing host path becomes a directory.
            std::fs::create_dir_all(&source)
                .map_err(|e| Error::io(format!("create {}", source.display()), e))?;
        }
        if !i.idmapped_mounts.contains_key(&index) {
            source = std::fs::canonicalize(&source)
                .map_err(|e| Error::io(format!("resolve {}", source.display()), e))?;
        }
        let mut options = vec!["rbind".to_string()];
        match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationBidirectional) => {
                options.push("rshared".into());
                rootfs_propagation = Some("rshared");
            }
            Ok(cri::MountPropagation::PropagationHostToContainer) => {
                options.push("rslave".into());
                if rootfs_propagation != Some("rshared") {
                    rootfs_propagation = Some("rslave");
                }
            }
            _ => options.push("rprivate".into()),
        }
        // A recursive read-only mount must stay private: a submount propagated in later
        // would not be read-only (the kubelet's and containerd's rule too).
        if m.recursive_read_only
            && m.propagation != cri::MountPropagation::PropagationPrivate as i32
        {
            return Err(Error::invalid(format!(
                "recursive read-only mount {:?} needs private propagation",
                m.container_path
            )));
        }
        if m.readonly {
            options.push(if m.recursive_read_only { "rro" } else { "ro" }.into());
        } else if m.recursive_read_only {
            return Err(Error::invalid(
                "recursive read-only mounts must be read-only",
            ));
        } else {
            options.push("rw".into());
        }
        mounts.retain(|x| x["destination"] != json!(m.container_path));
        mounts.push(json!({
            "destination": m.container_path,
            "type": "bind",
            "source": source,
            "options": options,
        }));
    }

    // Namespaces: the pod's netns and the holder's, or new ones.
    let mut namespaces = vec![json!({"type": "mount"})];
    if !host_net {
        let netns = i
            .pod_state
            .netns
            .as_ref()
            .ok_or_else(|| Error::precondition("the pod sandbox has no network namespace"))?;
        namespaces.push(json!({"type": "network", "path": netns}));
    }
    if pod_ns.ipc != cri::NamespaceMode::Node as i32 {
        let path = i
            .pod_state
            .holder_ns("ipc")
            .ok_or_else(|| Error::precondition("the pod sandbox's namespace holder is gone"))?;
        namespaces.push(json!({"type": "ipc", "path": path}));
    }
    if !host_net {
        let path = i
            .pod_state
            .holder_ns("uts")
            .ok_or_else(|| Error::precondition("the pod sandbox's namespace holder is gone"))?;
        namespaces.push(json!({"type": "uts", "path": path}));
    }
    let pid_mode = if ctr_ns.pid == cri::NamespaceMode::Target as i32 {
        cri::NamespaceMode::Target as i32
    } else if pod_ns.pid == cri::NamespaceMode::Node as i32 {
        cri::NamespaceMode::Node as i32
    } else if pod_ns.pid == cri::NamespaceMode::Pod as i32
        || ctr_ns.pid == cri::NamespaceMode::Pod as i32
    {
        pod_ns.pid
    } else {
        cri::NamespaceMode::Container as i32
    };
    match pid_mode {
        m if m == cri::NamespaceMode::Node as i32 => {}
        m if m == cri::NamespaceMode::Pod as i32 => {
            let path = i
                .pod_state
                .holder_ns("pid")
                .ok_or_else(|| Error::precondition("the pod sandbox's namespace holder is gone"))?;
            namespaces.push(json!({"type": "pid", "path": path}));
        }
        m if m == cri::NamespaceMode::Target as i32 => {
            let pid = i.target_pid.ok_or_else(|| {
                Error::not_found(format!(
                    "the target container {:?} of the PID namespace is not running",
                    ctr_ns.target_id
                ))
            })?;
            namespaces.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}));
        }
        _ => namespaces.push(json!({"type": "pid"})),
    }

    // Sysctls: the pod's, then the container's annotations cannot add any (kubelet's rule).
    let sysctls = i
        .pod
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone())
        .unwrap_or_default();

    let mut devices = Vec::new();
    let mut device_rules = vec![json!({"allow": privileged, "access": "rwm"})];
    for d in &i.config.devices {
        let (dev, rule) = device(d)?;
        devices.push(dev);
        device_rules.push(rule);
    }
    let mut res = i
        .config
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map(resources)
        .unwrap_or_else(|| json!({}));
    res["devices"] = Value::Array(device_rules);

    // The pod's user namespace, held by the holder; every other namespace the container joins
    // or makes is owned by it. runc wants the maps beside the path (it chowns what it makes for
    // the container's root by them).
    let userns = pod_userns(i.pod)?;
    if userns.is_some() {
        let path = i
            .pod_state
            .holder_ns("user")
            .ok_or_else(|| Error::precondition("the pod sandbox's namespace holder is gone"))?;
        namespaces.insert(0, json!({"type": "user", "path": path}));
    }
    let mut linux = json!({
        "cgroupsPath": cgroups_path(i.pod_state, i.id),
        "namespaces": namespaces,
        "resources": res,
        "sysctl": sysctls,
    });
    if !devices.is_empty() {
        linux["devices"] = Value::Array(devices);
    }
    if let Some(u) = userns {
        let map =
            |r: IdRange| json!([{"containerID": r.container, "hostID": r.host, "size": r.length}]);
        linux["uidMappings"] = map(u.uid);
        linux["gidMappings"] = map(u.gid);
    }
    // Exactly the paths the request names, as containerd since its issue 5029: the kubelet sends
    // its defaults for a `procMount: Default` container and none for `Unmasked`, which a default
    // filled in here would undo.
    if !privileged {
        linux["maskedPaths"] = json!(sc.masked_paths);
        linux["readonlyPaths"] = json!(sc.readonly_paths);
    }
    if let Some(s) = seccomp(sc.seccomp.as_ref(), privileged)? {
        linux["seccomp"] = s;
    }
    if let Some(p) = rootfs_propagation {
        linux["rootfsPropagation"] = json!(p);
    }

    Ok(json!({
        "ociVersion": "1.1.0",
        "process": process,
        "root": {"path": "rootfs", "readonly": rootfs_ro},
        "mounts": mounts,
        "linux": linux,
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": i.pod_id,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(ns: cri::NamespaceOption) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_user_namespaces_are_checked() {
        let m = |c, h, l| cri::IdMapping {
            container_id: c,
            host_id: h,
            length: l,
        };
        let userns = |mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>| {
            Some(cri::UserNamespace {
                mode: mode as i32,
                gids: uids.clone(),
                uids,
            })
        };
        let ok = pod_with(cri::NamespaceOption {
            userns_options: userns(cri::NamespaceMode::Pod, vec![m(0, 1000, 65536)]),
            ..Default::default()
        });
        let u = pod_userns(&ok).unwrap().expect("a pod user namespace");
        assert_eq!(
            (u.uid_map(), u.gid_map()),
            ("0:1000:65536".into(), "0:1000:65536".into())
        );
        assert_eq!(pod_userns(&pod_with(Default::default())).unwrap(), None);
        let node = pod_with(cri::NamespaceOption {
            userns_options: userns(cri::NamespaceMode::Node, vec![]),
            ..Default::default()
        });
        assert_eq!(pod_userns(&node).unwrap(), None);
        for (uids, mode, network) in [
            (
                vec![m(0, 1000, 1), m(1, 2000, 1)],
                cri::NamespaceMode::Pod,
                0,
            ),
            (vec![m(1, 1000, 65536)], cri::NamespaceMode::Pod, 0),
            (vec![m(0, 1000, 0)], cri::NamespaceMode::Pod, 0),
            (vec![m(0, u32::MAX, 2)], cri::NamespaceMode::Pod, 0),
            (vec![m(0, 1000, 65536)], cri::NamespaceMode::Pod, 2),
            (vec![m(0, 1000, 65536)], cri::NamespaceMode::Node, 0),
            (vec![], cri::NamespaceMode::Container, 0),
            (vec![], cri::NamespaceMode::Target, 0),
        ] {
            let pod = pod_with(cri::NamespaceOption {
                network,
                userns_options: userns(mode, uids.clone()),
                ..Default::default()
            });
            let err = pod_userns(&pod).expect_err(&format!("{uids:?} {mode:?} accepted"));
            assert_eq!(err.kind(), berth_errdefs::Kind::InvalidArgument, "{err}");
        }
    }

    #[test]
    fn capabilities_follow_containerd_order() {
        let c = |add: &[&str], drop: &[&str]| cri::Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: vec![],
        };
        assert_eq!(
            capabilities(false, Some(&c(&["NET_ADMIN"], &["ALL"]))).unwrap(),
            ["CAP_NET_ADMIN"]
        );
        let all_but = capabilities(false, Some(&c(&["ALL"], &["CHOWN"]))).unwrap();
        assert_eq!(all_but.len(), all_caps().len() - 1);
        assert!(!all_but.contains(&"CAP_CHOWN".to_string()));
        assert!(capabilities(false, Some(&c(&["NOPE"], &[]))).is_err());
        assert_eq!(capabilities(false, None).unwrap().len(), DEFAULT_CAPS.len());
    }

    /// The spec of a `sleep` container, with `sc` as its security context, in a pod whose state
    /// is `pod_state`.
    fn spec_of(sc: cri::LinuxContainerSecurityContext, pod_state: &PodState) -> Value {
        let image: ImageConfiguration = serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .unwrap();
        let config = cri::ContainerConfig {
            command: vec!["sleep".into(), "1".into()],
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(sc),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                // On the host's namespaces: nothing to hold them for the spec to name.
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    privileged: true,
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        pid: cri::NamespaceMode::Node as i32,
                        ipc: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let none = std::collections::HashMap::new();
        generate(&Inputs {
            id: "c",
            pod_id: "p",
            pod: &pod,
            pod_state,
            config: &config,
            image: &image,
            user: &User {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: None,
            },
            target_pid: None,
            image_volumes: &none,
            idmapped_mounts: &none,
        })
        .unwrap()
    }

    #[test]
    fn masked_and_read_only_paths_are_exactly_the_requested_ones() {
        let paths = |spec: &Value, key: &str| spec["linux"][key].clone();
        // The kubelet's `procMount: Unmasked`: nothing masked, nothing made read-only.
        let unmasked = spec_of(Default::default(), &PodState::default());
        assert_eq!(paths(&unmasked, "maskedPaths"), json!([]));
        assert_eq!(paths(&unmasked, "readonlyPaths"), json!([]));
        let given = spec_of(
            cri::LinuxContainerSecurityContext {
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                ..Default::default()
            },
            &PodState::default(),
        );
        assert_eq!(paths(&given, "maskedPaths"), json!(["/proc/kcore"]));
        assert_eq!(paths(&given, "readonlyPaths"), json!(["/proc/sys"]));
        // A privileged container has neither, whatever it asks.
        let privileged = spec_of(
            cri::LinuxContainerSecurityContext {
                privileged: true,
                masked_paths: vec!["/proc/kcore".into()],
                ..Default::default()
            },
            &PodState::default(),
        );
        assert_eq!(paths(&privileged, "maskedPaths"), Value::Null);
    }

    #[test]
    fn a_container_keeps_the_daemons_rlimits() {
        let spec = spec_of(Default::default(), &PodState::default());
        assert_eq!(spec["process"].get("rlimits"), None, "{spec}");
    }

    #[test]
    fn a_container_binds_its_pods_shm() {
        let shm = |spec: &Value| {
            let mounts = spec["mounts"].as_array().unwrap();
            let found: Vec<&Value> = mounts
                .iter()
                .filter(|m| m["destination"] == "/dev/shm")
                .collect();
            assert_eq!(found.len(), 1, "{mounts:?}");
            (found[0]["type"].clone(), found[0]["source"].clone())
        };
        let shared = PodState {
            shm: "/run/berth/pods/p/shm".into(),
            ..Default::default()
        };
        assert_eq!(
            shm(&spec_of(Default::default(), &shared)),
            (json!("bind"), json!("/run/berth/pods/p/shm"))
        );
        // A pod recorded before pods had a shm (or stopped since): a tmpfs of the container's.
        assert_eq!(
            shm(&spec_of(Default::default(), &PodState::default())),
            (json!("tmpfs"), json!("shm"))
        );
    }

    #[test]
    fn argv_follows_the_cri() {
        let img: ImageConfiguration = serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/init"], "Cmd": ["serve"]},
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .unwrap();
        let mut c = cri::ContainerConfig::default();
        assert_eq!(args(&img, &c).unwrap(), ["/init", "serve"]);
        c.args = vec!["x".into()];
        assert_eq!(args(&img, &c).unwrap(), ["/init", "x"]);
        c.command = vec!["sh".into()];
        assert_eq!(args(&img, &c).unwrap(), ["sh", "x"]);
        let empty: ImageConfiguration = serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .unwrap();
        assert!(args(&empty, &cri::ContainerConfig::default()).is_err());
    }
}
