//! Whether a pod can have a user namespace of its own (CRI NamespaceMode POD) on this host,
//! probed once when the CRI starts; RuntimeStatus claims user namespaces only when it passed, and
//! RunPodSandbox refuses such a pod with the probe's reason otherwise.
//!
//! The probe runs the pieces a POD-mode pod needs: the holder making a mapped user namespace with
//! its IPC/UTS/PID/network namespaces inside, idmapped lower layers under overlayfs on the
//! snapshot filesystem (the rootfs shows the image's owners through the pod's maps), and berthd's
//! state directories open to others (runc reaches the bundle's rootfs and the pod's files as the
//! pod's root, a host uid with no rights over root's 0700 directories).

use crate::Settings;
use std::path::Path;

/// A host id range no one should own; used only for the probe's namespaces.
const PROBE_HOST_ID: u32 = 3_000_000_000;

/// `Ok` when POD-mode user namespaces work here, else why not.
pub fn probe(settings: &Settings) -> Result<(), String> {
    for dir in [
        settings.state.clone(),
        settings.config.state_dir(&settings.state),
    ] {
        searchable_by_others(&dir)?;
    }
    berth_snapshotter::idmap::supported(&settings.root.join("snapshots"))
        .map_err(|e| format!("idmapped layers do not work on the snapshot filesystem: {e}"))?;
    probe_holder(&settings.holder_binary)
}

fn searchable_by_others(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let Ok(md) = std::fs::metadata(d) else {
            continue;
        };
        if md.permissions().mode() & 0o001 == 0 {
            return Err(format!(
                "{} (mode {:o}) does not let others through, so a pod's root (a host uid of its \
                 mapping) cannot reach {}",
                d.display(),
                md.permissions().mode() & 0o7777,
                dir.display()
            ));
        }
    }
    Ok(())
}

/// How long the probe's holder may live at most.
const PROBE_HOLDER_LIFETIME_SECS: u32 = 30;

/// A holder in a user namespace mapped as asked, with its namespaces owned by it.
fn probe_holder(binary: &Path) -> Result<(), String> {
    let map = format!("0:{PROBE_HOST_ID}:1");
    let opts = crate::holder::HolderOptions {
        ipc: true,
        uts: true,
        pid: true,
        net: true,
        hostname: Some("berth-userns-probe".into()),
        userns: Some((map.clone(), map)),
        // Killed below once checked; should this berthd die first, it ends by itself.
        exit_after: Some(PROBE_HOLDER_LIFETIME_SECS),
        pod_dir: None,
    };
    let out = std::process::Command::new(binary)
        .arg("cri-holder")
        .args(crate::holder::args(&opts))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("run {} cri-holder: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = match (out.status.success(), text.split_whitespace().next()) {
        (true, Some(p)) => p
            .parse()
            .map_err(|_| format!("the holder printed {text:?}"))?,
        _ => {
            return Err(format!(
                "the holder cannot make a user namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let check = || -> Result<(), String> {
        let read = |f: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{f}"))
                .map_err(|e| format!("read /proc/{pid}/{f}: {e}"))
        };
        let uid_map = read("uid_map")?;
        let fields: Vec<&str> = uid_map.split_whitespace().collect();
        if fields != ["0", &PROBE_HOST_ID.to_string(), "1"] {
            return Err(format!("the holder's uid_map is {uid_map:?}"));
        }
        let ns = |p: String| std::fs::read_link(&p).map_err(|e| format!("readlink {p}: {e}"));
        if ns(format!("/proc/{pid}/ns/user"))? == ns("/proc/self/ns/user".into())? {
            return Err("the holder stayed in the host's user namespace".into());
        }
        Ok(())
    };
    let result = check();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    result
}
