//! The OCI runtime spec of a container made from an image: the image config's env,
//! entrypoint/cmd, working dir and user, then the caller's overrides ([`ContainerConfig`]), on
//! a base of containerd's defaults (namespaces, mounts, masked and read-only paths, device
//! rules, capabilities), built with the `oci-spec` crate.

use crate::user::ResolvedUser;
use crate::{Error, Result};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::collections::{BTreeSet, HashMap};

/// The label containerd's client sets from an image's StopSignal; `berth stop` reads it.
pub const STOP_SIGNAL_LABEL: &str = "io.containerd.image.config.stop-signal";
/// Seconds `berth stop` waits after the stop signal before SIGKILL.
pub const STOP_TIMEOUT_LABEL: &str = "io.berth.stop-timeout";
/// The network mode the container was created with.
pub const NETWORK_LABEL: &str = "io.berth.network";
/// berthd's network hook label: a JSON list of the networks a container's task joins.
pub const NETWORKS_LABEL: &str = "berth/networks";
/// berthd's published ports label: a JSON list of [`PublishedPort`]s.
pub const PORTS_LABEL: &str = "berth/ports";

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a container gets besides its image: docker's `run`/`create` options.
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// Replaces the image's Cmd when not empty.
    pub command: Vec<String>,
    /// Replaces the image's Entrypoint (an empty vector clears it); the image's Cmd is then
    /// dropped too unless `command` is given, as docker does.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE` (or `KEY`, taken from nowhere and skipped), after the image's.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// docker's `user[:group]`, names resolved from the image's /etc/passwd and /etc/group.
    pub user: Option<String>,
    pub hostname: Option<String>,
    /// Bytes.
    pub memory: Option<i64>,
    /// CPUs, as a fraction (1.5 = one and a half).
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub labels: HashMap<String, String>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u32>,
    /// A pty for the process.
    pub tty: bool,
    pub network: Network,
    /// The networks to join when `network` is [`Network::Named`] (berthd's `berth/networks`).
    pub networks: Vec<String>,
    /// Ports to publish on those networks (berthd's `berth/ports`).
    pub ports: Vec<PublishedPort>,
    /// Bind mounts and tmpfs (`-v`, `--mount`, `--tmpfs`), after the defaults; one on a
    /// default's destination replaces it.
    pub mounts: Vec<crate::mounts::MountRequest>,
    /// docker's `--userns=host`: no user namespace although the daemon remaps.
    pub userns_host: bool,
    /// The user namespace maps the container runs with; [`crate::containers::Containers::create`]
    /// sets the daemon's (berthd's `[userns] remap`) unless `userns_host`.
    pub remap: Option<crate::userns::Remap>,
}

/// docker's `-p [IP:]HOST:CONTAINER[/PROTO]`, in the shape berthd's `berth/ports` label takes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublishedPort {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(rename = "HostIP", default)]
    pub host_ip: String,
}

impl PublishedPort {
    /// Parse `-p`: `8080:80`, `127.0.0.1:8080:80`, `8080:80/udp`.
    pub fn parse(s: &str) -> Result<PublishedPort> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "invalid port {s:?}: {why} (want [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp])"
            ))
        };
        let (spec, protocol) = match s.rsplit_once('/') {
            Some((p, proto @ ("tcp" | "udp" | "sctp"))) => (p, proto),
            Some(_) => return Err(bad("the protocol is tcp, udp or sctp")),
            None => (s, "tcp"),
        };
        let (rest, container) = spec.rsplit_once(':').ok_or_else(|| bad("no host port"))?;
        let (ip, host) = match rest.rsplit_once(':') {
            Some((ip, host)) => (ip.trim_start_matches('[').trim_end_matches(']'), host),
            None => ("", rest),
        };
        if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
            return Err(bad("the host IP is not an address"));
        }
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
        Ok(PublishedPort {
            host_port: port(host).ok_or_else(|| bad("the host port is not 1-65535"))?,
            container_port: port(container)
                .ok_or_else(|| bad("the container port is not 1-65535"))?,
            protocol: protocol.to_string(),
            host_ip: ip.to_string(),
        })
    }
}

/// The network a container joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// berthd's default network (`bridge`, as docker's and nerdctl's), whichever network the
    /// daemon marks as its default: what a container gets when it asks for nothing, as in
    /// docker. [`crate::containers::Containers::create`] turns it into [`Network::Named`].
    #[default]
    Default,
    /// A network namespace of its own with only `lo`.
    None,
    /// The host's network namespace.
    Host,
    /// A network namespace of its own on berthd's (CNI) networks, named in
    /// [`ContainerConfig::networks`].
    Named,
}

impl Network {
    /// Parse `--network`: default (docker's word for the default network), none, host, or a
    /// network's name (the daemon says whether it exists).
    pub fn parse(s: &str) -> Result<Network> {
        match s {
            "default" => Ok(Network::Default),
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            other
                if other.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && other
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
            {
                Ok(Network::Named)
            }
            other => Err(Error::invalid(format!(
                "invalid network name {other:?}: letters, digits, '_', '.' and '-'"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Network::Default => "default",
            Network::None => "none",
            Network::Host => "host",
            Network::Named => "named",
        }
    }
}

/// containerd's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The masked paths of an unprivileged container (containerd's, and the CRI's default).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    // RAPL power counters, a side channel (GHSA-7ww5-4wqc-m92c).
    "/sys/devices/virtual/powercap",
];

/// containerd's read-only paths for an unprivileged container.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Every capability Linux defines up to 5.9 (without `CAP_`), for `--privileged` and
/// `--cap-add ALL`.
pub const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn parse_cap(name: &str) -> Result<Capability> {
    let canonical = format!("CAP_{}", name.to_uppercase().trim_start_matches("CAP_"));
    serde_json::from_value(serde_json::Value::String(canonical.clone()))
        .map_err(|_| Error::invalid(format!("unknown capability {name:?}")))
}

/// `CAP_<NAME>` for a capability named with or without `CAP_`, in any case; an unknown one is
/// InvalidArgument.
pub fn canonical_capability(name: &str) -> Result<String> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if !ALL_CAPS.contains(&bare) {
        return Err(Error::invalid(format!("unknown capability {name:?}")));
    }
    Ok(format!("CAP_{bare}"))
}

/// The capability set after docker's rules: ALL in add or drop, then adds, then drops.
pub fn capabilities(privileged: bool, add: &[String], drop: &[String]) -> Result<Vec<String>> {
    let all = || ALL_CAPS.iter().map(|c| format!("CAP_{c}"));
    let mut set: BTreeSet<String> = if privileged {
        all().collect()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    for a in add {
        if a.eq_ignore_ascii_case("ALL") {
            set.extend(all());
        } else {
            set.insert(canonical_capability(a)?);
        }
    }
    for d in drop {
        if d.eq_ignore_ascii_case("ALL") {
            set.clear();
        } else {
            set.remove(&canonical_capability(d)?);
        }
    }
    Ok(set.into_iter().collect())
}

/// The process's argv: docker's Entrypoint + Cmd rules.
pub fn args(image: &ImageConfiguration, config: &ContainerConfig) -> Result<Vec<String>> {
    let ic = image.config().as_ref();
    let image_entry = ic.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let image_cmd = ic.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let entry = config.entrypoint.clone().unwrap_or(image_entry);
    let cmd = if !config.command.is_empty() {
        config.command.clone()
    } else if config.entrypoint.is_some() {
        vec![]
    } else {
        image_cmd
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::invalid(
            "no command specified: the image has no Entrypoint or Cmd, give one",
        ));
    }
    Ok(args)
}

/// The environment: the image's, then HOSTNAME, TERM with a tty, HOME from passwd, then the
/// caller's (a later KEY replaces an earlier one in place).
pub fn environment(
    image: &ImageConfiguration,
    config: &ContainerConfig,
    hostname: &str,
    user: &ResolvedUser,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_string();
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            Some(slot) => *slot = kv,
            None => env.push(kv),
        }
    };
    let image_env = image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    if !image_env.iter().any(|e| e.starts_with("PATH=")) {
        set(DEFAULT_PATH.to_string());
    }
    image_env.into_iter().for_each(&mut set);
    set(format!("HOSTNAME={hostname}"));
    if config.tty {
        set("TERM=xterm".to_string());
    }
    for kv in &config.env {
        if kv.contains('=') {
            set(kv.clone());
        }
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }
    env
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(kind)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

fn spec_error(e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("build the runtime spec: {e}"))
}

/// The whole spec of container `id` in namespace `ns`.
pub fn generate(
    ns: &str,
    id: &str,
    image: &ImageConfiguration,
    config: &ContainerConfig,
    user: &ResolvedUser,
) -> Result<Spec> {
    let hostname = match (&config.hostname, config.network) {
        (Some(h), _) => h.clone(),
        (None, Network::Host) => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| crate::names::short_id(id).to_string()),
        (None, Network::Default | Network::None | Network::Named) => {
            crate::names::short_id(id).to_string()
        }
    };
    let cwd = config
        .workdir
        .clone()
        .or_else(|| {
            image
                .config()
                .as_ref()
                .and_then(|c| c.working_dir().clone())
        })
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(Error::invalid(format!(
            "the working directory {cwd:?} is not an absolute path"
        )));
    }
    let caps: Vec<Capability> = capabilities(config.privileged, &config.cap_add, &config.cap_drop)?
        .iter()
        .map(|c| parse_cap(c))
        .collect::<Result<_>>()?;
    let caps: oci_spec::runtime::Capabilities = caps.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        // oci-spec's builder defaults these to its default set: inheritable capabilities let
        // execve of a binary with inheritable file caps gain them (CVE-2022-24769), and
        // containerd's default spec has none of either.
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(spec_error)?;
    let mut user_builder = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        user_builder = user_builder.additional_gids(user.additional_gids.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(user_builder.build().map_err(spec_error)?)
        .args(args(image, config)?)
        .env(environment(image, config, &hostname, user))
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()
            .map_err(spec_error)?])
        .no_new_privileges(false)
        .build()
        .map_err(spec_error)?;

    let sys_options: &[&str] = if config.privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
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
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount("/sys", "sysfs", "sysfs", sys_options)?,
    ];
    let network_owned_elsewhere = config.network != Network::None;
    if config.remap.is_some() && network_owned_elsewhere {
        // A sysfs mount needs the network namespace to belong to the container's user
        // namespace; the host's and berthd's CNI ones do not: the host's /sys, read-only.
        mounts.pop();
        mounts.push(mount(
            "/sys",
            "bind",
            "/sys",
            &["rbind", "nosuid", "noexec", "nodev", "ro"],
        )?);
    }
    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    match config.network {
        // berthd's network hook puts a named network's namespace path in the spec it runs.
        Network::Default | Network::None | Network::Named => {
            namespaces.push(LinuxNamespaceType::Network)
        }
        Network::Host => {
            // The host's name resolution, read-only, as docker gives a host-network container.
            for file in ["/etc/hosts", "/etc/resolv.conf"] {
                if std::path::Path::new(file).exists() {
                    mounts.push(mount(file, "bind", file, &["rbind", "ro"])?);
                }
            }
        }
    }
    for request in &config.mounts {
        mounts.retain(|m| m.destination().to_str() != Some(request.destination()));
        mounts.push(request.oci_mount()?);
    }
    if config.remap.is_some() {
        namespaces.push(LinuxNamespaceType::User);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(spec_error)?;

    let mut resources =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(config.privileged)
            .access("rwm")
            .build()
            .map_err(spec_error)?]);
    if let Some(limit) = config.memory {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(spec_error)?,
        );
    }
    if let Some(cpus) = config.cpus {
        if !(cpus > 0.0 && cpus.is_finite()) {
            return Err(Error::invalid(format!(
                "--cpus {cpus} is not a positive number"
            )));
        }
        let period: u64 = 100_000;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota((cpus * period as f64).round() as i64)
                .build()
                .map_err(spec_error)?,
        );
    }
    if let Some(limit) = config.pids_limit {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(spec_error)?,
        );
    }
    let mut linux = LinuxBuilder::default()
        .cgroups_path(format!("/{ns}/{id}"))
        .namespaces(namespaces)
        .resources(resources.build().map_err(spec_error)?);
    if let Some(remap) = &config.remap {
        let ids = |map: &crate::userns::IdMap| {
            map.0
                .iter()
                .map(|r| {
                    LinuxIdMappingBuilder::default()
                        .container_id(r.container)
                        .host_id(r.host)
                        .size(r.length)
                        .build()
                        .map_err(spec_error)
                })
                .collect::<Result<Vec<_>>>()
        };
        linux = linux
            .uid_mappings(ids(&remap.uid)?)
            .gid_mappings(ids(&remap.gid)?);
    }
    if !config.privileged {
        linux = linux
            .masked_paths(
                MASKED_PATHS
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>(),
            )
            .readonly_paths(
                READONLY_PATHS
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>(),
            );
    }
    SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(config.read_only)
                .build()
                .map_err(spec_error)?,
        )
        .hostname(hostname)
        .mounts(mounts)
        .linux(linux.build().map_err(spec_error)?)
        .build()
        .map_err(spec_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entry: Option<&[&str]>, cmd: Option<&[&str]>, env: &[&str]) -> ImageConfiguration {
        let v = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": entry, "Cmd": cmd, "Env": env, "WorkingDir": "/srv"},
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let img = image(Some(&["/init"]), Some(&["serve"]), &[]);
        let mut c = ContainerConfig::default();
        assert_eq!(args(&img, &c).unwrap(), ["/init", "serve"]);
        c.command = vec!["x".into()];
        assert_eq!(args(&img, &c).unwrap(), ["/init", "x"]);
        c.entrypoint = Some(vec!["sh".into()]);
        assert_eq!(args(&img, &c).unwrap(), ["sh", "x"]);
        c.command.clear();
        assert_eq!(args(&img, &c).unwrap(), ["sh"]);
        let none = image(None, None, &[]);
        assert!(args(&none, &ContainerConfig::default()).is_err());
    }

    #[test]
    fn overrides_reach_the_spec() {
        let img = image(None, Some(&["sh"]), &["A=1", "B=2"]);
        let c = ContainerConfig {
            env: vec!["B=3".into(), "C=4".into()],
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids_limit: Some(20),
            read_only: true,
            cap_add: vec!["sys_admin".into()],
            cap_drop: vec!["CAP_CHOWN".into()],
            hostname: Some("box".into()),
            tty: true,
            ..Default::default()
        };
        let user = ResolvedUser {
            uid: 65534,
            gid: 65534,
            additional_gids: vec![10],
            home: Some("/nonexistent".into()),
        };
        let spec = generate("ns", "0123456789abcdef", &img, &c, &user).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let p = &v["process"];
        assert_eq!(p["args"], serde_json::json!(["sh"]));
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["terminal"], true);
        assert_eq!(p["user"]["uid"], 65534);
        assert_eq!(p["user"]["additionalGids"], serde_json::json!([10]));
        let env: Vec<String> = serde_json::from_value(p["env"].clone()).unwrap();
        assert!(env.contains(&"B=3".to_string()) && env.contains(&"C=4".to_string()));
        assert!(env.contains(&"A=1".to_string()) && env.contains(&"HOSTNAME=box".to_string()));
        assert!(env.contains(&"HOME=/nonexistent".to_string()));
        assert!(!env.contains(&"B=2".to_string()));
        let caps = p["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&"CAP_SYS_ADMIN".into()) && !caps.contains(&"CAP_CHOWN".into()));
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["hostname"], "box");
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["pids"]["limit"], 20);
        assert_eq!(v["linux"]["cgroupsPath"], "/ns/0123456789abcdef");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network"));
        // hostile-inputs.md B29: no inheritable capabilities, the RAPL counters masked.
        for set in ["inheritable", "ambient"] {
            assert!(
                p["capabilities"][set]
                    .as_array()
                    .is_none_or(|a| a.is_empty()),
                "{set}: {}",
                p["capabilities"][set]
            );
        }
        let masked = v["linux"]["maskedPaths"].as_array().unwrap();
        for path in [
            "/sys/devices/virtual/powercap",
            "/proc/kcore",
            "/sys/firmware",
        ] {
            assert!(masked.contains(&path.into()), "{path} is not masked");
        }
    }

    #[test]
    fn a_remapped_container_gets_a_user_namespace_and_a_bound_sys() {
        let img = image(Some(&["sh"]), None, &[]);
        let remap = crate::userns::Remap {
            user: "berth".into(),
            uid: crate::userns::IdMap::parse("0:100000:65536").unwrap(),
            gid: crate::userns::IdMap::parse("0:200000:65536").unwrap(),
            idmap: true,
        };
        for (network, sys_type) in [(Network::None, "sysfs"), (Network::Host, "bind")] {
            let c = ContainerConfig {
                network,
                remap: Some(remap.clone()),
                ..Default::default()
            };
            let spec = generate("ns", "0123456789abcdef", &img, &c, &Default::default()).unwrap();
            let v = serde_json::to_value(&spec).unwrap();
            let l = &v["linux"];
            assert!(l["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "user"));
            assert_eq!(
                l["uidMappings"],
                serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}])
            );
            assert_eq!(l["gidMappings"][0]["hostID"], 200000);
            let sys = v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == "/sys")
                .unwrap();
            assert_eq!(sys["type"], sys_type, "{network:?}");
        }
        let plain = generate(
            "ns",
            "0123456789abcdef",
            &img,
            &ContainerConfig::default(),
            &Default::default(),
        )
        .unwrap();
        let v = serde_json::to_value(&plain).unwrap();
        assert!(v["linux"]["uidMappings"].is_null());
    }

    #[test]
    fn bad_capabilities_and_networks_are_refused() {
        assert!(capabilities(false, &["NOPE".into()], &[]).is_err());
        assert_eq!(capabilities(false, &[], &["ALL".into()]).unwrap().len(), 0);
        assert_eq!(capabilities(true, &[], &[]).unwrap().len(), ALL_CAPS.len());
        assert_eq!(Network::parse("bridge").unwrap(), Network::Named);
        assert!(Network::parse("-x").is_err());
        assert!(Network::parse("a/b").is_err());
        let p = PublishedPort::parse("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(
            (
                p.host_ip.as_str(),
                p.host_port,
                p.container_port,
                p.protocol.as_str()
            ),
            ("127.0.0.1", 8080, 80, "udp")
        );
        assert_eq!(PublishedPort::parse("8080:80").unwrap().protocol, "tcp");
        for bad in ["80", "0:80", "8080:80/icmp", "x:8080:80", "8080:70000"] {
            assert!(PublishedPort::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Network::parse("host").unwrap(), Network::Host);
        assert_eq!(Network::parse("default").unwrap(), Network::Default);
        assert_eq!(ContainerConfig::default().network, Network::Default);
    }
}
