//! What the numbers were measured on: machine, kernel, cgroup layout, disk, daemon and runc versions.

use crate::daemon::{Kind, Lab};
use berth::api::services::version::v1::version_client::VersionClient;
use serde::Serialize;
use std::path::Path;
use std::process::Command;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory: String,
    pub kernel: String,
    pub os: String,
    pub cgroup: String,
    /// `df -T` of the temp root: device, filesystem type.
    pub disk: String,
    pub temp_root: String,
    /// /proc/loadavg when the run started: other work on the machine skews every figure.
    pub load_at_start: String,
}

#[derive(Debug, Serialize)]
pub struct Versions {
    pub berthd: String,
    pub containerd: String,
    pub runc: String,
    pub ctr: String,
    /// The pull group's peers: containerd 2.4 and its ctr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containerd2: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctr2: Option<String>,
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// v2 (unified), v1, or hybrid (v1 controllers with a cgroup2 mount beside them).
pub fn cgroup_layout() -> String {
    let mounts = read("/proc/mounts");
    let fstype = |at: &str| {
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == at).then(|| f[2].to_string())
        })
    };
    let v1 = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup"));
    match fstype("/sys/fs/cgroup").as_deref() {
        Some("cgroup2") => "v2 (unified)".into(),
        _ if v1
            && mounts
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some("cgroup2")) =>
        {
            let at = mounts
                .lines()
                .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?");
            format!("hybrid (v1 controllers, cgroup2 at {at})")
        }
        _ if v1 => "v1".into(),
        _ => "none mounted".into(),
    }
}

pub fn describe(root: &Path) -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let memory = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default();
    let root_s = root.to_string_lossy().into_owned();
    let disk = run("df", &["-T", &root_s])
        .and_then(|o| {
            let l = o.lines().nth(1)?.to_string();
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(format!(
                "{} {} (mounted on {})",
                f.first()?,
                f.get(1)?,
                f.last()?
            ))
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu,
        memory,
        kernel: run("uname", &["-r"]).unwrap_or_default(),
        os,
        cgroup: cgroup_layout(),
        disk,
        temp_root: root_s,
        load_at_start: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

pub async fn versions(lab: &Lab) -> Versions {
    let mut v = [String::new(), String::new()];
    for (i, kind) in [Kind::Berth, Kind::Containerd].into_iter().enumerate() {
        v[i] = match lab.daemon(kind).connect().await {
            Ok(ch) => match VersionClient::new(ch).version(()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    format!("{} (revision {})", r.version, r.revision)
                }
                Err(s) => format!("Version failed: {}", s.message()),
            },
            Err(e) => e,
        };
    }
    let [berthd, containerd] = v;
    Versions {
        berthd,
        containerd,
        runc: run("runc", &["--version"])
            .and_then(|o| o.lines().next().map(str::to_string))
            .unwrap_or_else(|| "not found".into()),
        ctr: run("ctr", &["--version"]).unwrap_or_else(|| "not found".into()),
        containerd2: None,
        ctr2: None,
    }
}

/// The versions the pull group's containerd 2.4 and ctr 2.4 print.
pub fn pull_peer_versions(v: &mut Versions, containerd2: &Path, ctr2: &Path) {
    let version = |p: &Path| {
        let out = Command::new(p).arg("--version").output().ok();
        match out {
            Some(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => format!("{} not found", p.display()),
        }
    };
    v.containerd2 = Some(version(containerd2));
    v.ctr2 = Some(version(ctr2));
}

pub fn now_utc() -> String {
    run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default()
}
