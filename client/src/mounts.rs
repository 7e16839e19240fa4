//! The mounts a container gets besides its image's root: docker's `-v`, `--mount` and `--tmpfs`
//! syntax parsed into [`MountRequest`]s, and those turned into OCI runtime mounts. Volumes
//! (named or anonymous) are resolved through berthd's Volumes service into binds of their
//! directories by `volumes.rs` when the container is created.

use crate::api::types::Mount;
use crate::{Error, Result};
use std::path::{Component, Path};

/// One mount a caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountRequest {
    /// A host path (absolute, existing) bind-mounted at `destination`.
    Bind {
        source: String,
        destination: String,
        readonly: bool,
        /// rprivate unless asked otherwise, as docker's default.
        propagation: String,
    },
    /// A fresh tmpfs; `options` are mount(8) options (size=, mode=, and the nosuid/nodev/noexec
    /// defaults of the flag that asked for it).
    Tmpfs {
        destination: String,
        options: Vec<String>,
    },
    /// A volume: `name` is `None` for an anonymous one.
    Volume {
        name: Option<String>,
        destination: String,
        readonly: bool,
    },
}

impl MountRequest {
    pub fn destination(&self) -> &str {
        match self {
            MountRequest::Bind { destination, .. }
            | MountRequest::Tmpfs { destination, .. }
            | MountRequest::Volume { destination, .. } => destination,
        }
    }

    /// docker's `-v`: `/host:/ctr[:opts]`, `NAME:/ctr[:opts]` or `/ctr` (anonymous volume);
    /// opts are `ro`, `rw`, a propagation mode, or SELinux's `z`/`Z` (no effect here).
    pub fn parse_volume_flag(s: &str) -> Result<MountRequest> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "invalid volume {s:?}: {why} (want /host/path:/container/path[:ro], \
                 NAME:/container/path[:ro] or /container/path)"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (source, destination, opts) = match parts.as_slice() {
            [dst] => (None, *dst, ""),
            [src, dst] => (Some(*src), *dst, ""),
            [src, dst, opts] => (Some(*src), *dst, *opts),
            _ => return Err(bad("too many ':'")),
        };
        let destination = container_path(destination).map_err(|e| bad(&e))?;
        let mut readonly = false;
        let mut propagation = "rprivate".to_string();
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => readonly = true,
                "rw" => readonly = false,
                "z" | "Z" | "nocopy" => {}
                p if is_propagation(p) => propagation = p.to_string(),
                other => return Err(bad(&format!("unknown option {other:?}"))),
            }
        }
        match source {
            None => Ok(MountRequest::Volume {
                name: None,
                destination,
                readonly,
            }),
            Some(src) if src.starts_with('/') => Ok(MountRequest::Bind {
                source: host_path(src).map_err(|e| bad(&e))?,
                destination,
                readonly,
                propagation,
            }),
            Some(name) => {
                validate_volume_name(name).map_err(|e| bad(&e))?;
                Ok(MountRequest::Volume {
                    name: Some(name.to_string()),
                    destination,
                    readonly,
                })
            }
        }
    }

    /// docker's `--mount type=bind|volume|tmpfs,source=..,target=..[,readonly][,...]`.
    pub fn parse_mount_flag(s: &str) -> Result<MountRequest> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "invalid mount {s:?}: {why} (want type=bind|volume|tmpfs,source=SRC,target=DST[,readonly])"
            ))
        };
        let mut kind = "volume".to_string();
        let mut source: Option<String> = None;
        let mut target: Option<String> = None;
        let mut readonly = false;
        let mut propagation = "rprivate".to_string();
        let mut tmpfs_options = Vec::new();
        for field in s.split(',').filter(|f| !f.is_empty()) {
            let (key, value) = match field.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (field.trim(), None),
            };
            let flag = |v: Option<&str>| match v {
                None | Some("1") | Some("true") => Ok(true),
                Some("0") | Some("false") => Ok(false),
                Some(other) => Err(bad(&format!("{key}={other} is not true or false"))),
            };
            let value_of = |v: Option<&str>| {
                v.map(str::to_string)
                    .ok_or_else(|| bad(&format!("{key} needs a value")))
            };
            match key {
                "type" => kind = value_of(value)?,
                "source" | "src" => source = Some(value_of(value)?),
                "target" | "destination" | "dst" => target = Some(value_of(value)?),
                "readonly" | "ro" => readonly = flag(value)?,
                "bind-propagation" => {
                    let p = value_of(value)?;
                    if !is_propagation(&p) {
                        return Err(bad(&format!("unknown bind-propagation {p:?}")));
                    }
                    propagation = p;
                }
                "tmpfs-size" => {
                    let size = value_of(value)?;
                    let bytes = crate::cli::format::parse_bytes(&size).map_err(|e| bad(&e))?;
                    tmpfs_options.push(format!("size={bytes}"));
                }
                "tmpfs-mode" => {
                    let mode = value_of(value)?;
                    u32::from_str_radix(&mode, 8)
                        .map_err(|_| bad(&format!("tmpfs-mode {mode:?} is not octal")))?;
                    tmpfs_options.push(format!("mode={mode}"));
                }
                "volume-nocopy" | "consistency" | "bind-nonrecursive" => {}
                other => return Err(bad(&format!("unknown field {other:?}"))),
            }
        }
        let target = target.ok_or_else(|| bad("no target"))?;
        let destination = container_path(&target).map_err(|e| bad(&e))?;
        match kind.as_str() {
            "bind" => {
                let src = source.ok_or_else(|| bad("a bind mount needs a source"))?;
                Ok(MountRequest::Bind {
                    source: host_path(&src).map_err(|e| bad(&e))?,
                    destination,
                    readonly,
                    propagation,
                })
            }
            "tmpfs" => {
                if source.is_some() {
                    return Err(bad("a tmpfs has no source"));
                }
                let mut options: Vec<String> = ["nosuid", "nodev"].map(String::from).to_vec();
                if readonly {
                    options.push("ro".into());
                }
                options.extend(tmpfs_options);
                Ok(MountRequest::Tmpfs {
                    destination,
                    options,
                })
            }
            "volume" => {
                if let Some(name) = &source {
                    validate_volume_name(name).map_err(|e| bad(&e))?;
                }
                Ok(MountRequest::Volume {
                    name: source,
                    destination,
                    readonly,
                })
            }
            other => Err(bad(&format!("unknown type {other:?}"))),
        }
    }

    /// docker's `--tmpfs /path[:opts]`: noexec, nosuid and nodev unless the options say
    /// otherwise (exec, suid, dev).
    pub fn parse_tmpfs_flag(s: &str) -> Result<MountRequest> {
        let (path, opts) = s.split_once(':').unwrap_or((s, ""));
        let destination = container_path(path)
            .map_err(|e| Error::invalid(format!("invalid tmpfs {s:?}: {e}")))?;
        let mut options: Vec<String> = ["noexec", "nosuid", "nodev"].map(String::from).to_vec();
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            let opposite = match o {
                "exec" => Some("noexec"),
                "suid" => Some("nosuid"),
                "dev" => Some("nodev"),
                _ => None,
            };
            match opposite {
                Some(no) => options.retain(|x| x != no),
                None => {
                    if o.contains(['\n', ' ']) {
                        return Err(Error::invalid(format!(
                            "invalid tmpfs {s:?}: option {o:?} has a space"
                        )));
                    }
                }
            }
            options.push(o.to_string());
        }
        Ok(MountRequest::Tmpfs {
            destination,
            options,
        })
    }

    /// The OCI mount for a bind or tmpfs request (a volume is resolved to a bind first).
    pub fn oci_mount(&self) -> Result<oci_spec::runtime::Mount> {
        let (kind, source, options) = match self {
            MountRequest::Bind {
                source,
                readonly,
                propagation,
                ..
            } => {
                let mut options = vec!["rbind".to_string(), propagation.clone()];
                if *readonly {
                    options.push("ro".into());
                }
                ("bind", source.as_str(), options)
            }
            MountRequest::Tmpfs { options, .. } => ("tmpfs", "tmpfs", options.clone()),
            MountRequest::Volume { name, .. } => {
                return Err(Error::invalid(format!(
                    "volume {} on {}: a volume becomes a bind of its directory once the daemon \
                     made it (Client::resolve_volumes), before the spec is built",
                    name.as_deref().unwrap_or("(anonymous)"),
                    self.destination()
                )))
            }
        };
        oci_spec::runtime::MountBuilder::default()
            .destination(self.destination())
            .typ(kind)
            .source(source)
            .options(options)
            .build()
            .map_err(|e| Error::invalid(format!("mount on {}: {e}", self.destination())))
    }
}

fn is_propagation(p: &str) -> bool {
    matches!(
        p,
        "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
    )
}

/// An absolute path inside the container, not `/` itself, without `..`.
fn container_path(p: &str) -> std::result::Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("the container path {p:?} is not absolute"));
    }
    if Path::new(p).components().any(|c| c == Component::ParentDir) {
        return Err(format!("the container path {p:?} has '..'"));
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("a mount cannot replace the container's root".into());
    }
    Ok(trimmed.to_string())
}

/// An existing absolute host path, canonical (a mount given a symlink binds its target, and
/// the spec should say which).
fn host_path(p: &str) -> std::result::Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("the host path {p:?} is not absolute"));
    }
    let real = std::fs::canonicalize(p).map_err(|e| format!("the host path {p}: {e}"))?;
    real.into_os_string()
        .into_string()
        .map_err(|_| format!("the host path {p:?} is not UTF-8"))
}

/// docker's volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn validate_volume_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok && name.len() <= 255 {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*) nor an absolute host path"
        ))
    }
}

/// Mount a snapshot's mounts (one bind or one overlay, as a View of berth's snapshotters
/// answers) read-only at `target`, which must exist. Needs root.
pub fn mount_read_only(mounts: &[Mount], target: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let m = match mounts {
        [m] => m,
        _ => {
            return Err(Error::local(
                tonic::Code::Unimplemented,
                format!("a view of {} mounts cannot be read here", mounts.len()),
            ))
        }
    };
    let mut flags = MsFlags::MS_RDONLY;
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => {}
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    let data = data.join(",");
    let fail = |e: nix::errno::Errno| {
        Error::io(
            format!(
                "mount a snapshot read-only at {} (this needs root)",
                target.display()
            ),
            e.into(),
        )
    };
    if flags.contains(MsFlags::MS_BIND) {
        mount(
            Some(m.source.as_str()),
            target,
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(fail)?;
        // A bind mount ignores MS_RDONLY until it is remounted.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            fail(e)
        })?;
    } else {
        mount(
            Some(m.source.as_str()),
            target,
            Some(m.r#type.as_str()),
            flags,
            Some(data.as_str()),
        )
        .map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flag_shapes() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().to_str().unwrap().to_string();
        let real = std::fs::canonicalize(&host).unwrap();
        assert_eq!(
            MountRequest::parse_volume_flag(&format!("{host}:/data:ro")).unwrap(),
            MountRequest::Bind {
                source: real.to_str().unwrap().into(),
                destination: "/data".into(),
                readonly: true,
                propagation: "rprivate".into(),
            }
        );
        assert_eq!(
            MountRequest::parse_volume_flag("cache:/var/cache/").unwrap(),
            MountRequest::Volume {
                name: Some("cache".into()),
                destination: "/var/cache".into(),
                readonly: false,
            }
        );
        assert!(matches!(
            MountRequest::parse_volume_flag("/data").unwrap(),
            MountRequest::Volume { name: None, .. }
        ));
        for bad in [
            "rel:/x:ro:extra",
            "/nonexistent-berth-path:/x",
            "a/b:/x",
            "/tmp:relative",
            "/tmp:/",
            "/tmp:/a/../b",
            "/tmp:/x:bogus",
        ] {
            assert!(MountRequest::parse_volume_flag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mount_flag_shapes() {
        let m = MountRequest::parse_mount_flag("type=bind,source=/tmp,target=/t,readonly").unwrap();
        assert!(matches!(m, MountRequest::Bind { readonly: true, .. }));
        let m =
            MountRequest::parse_mount_flag("type=tmpfs,dst=/run/x,tmpfs-size=1m,tmpfs-mode=1770")
                .unwrap();
        assert_eq!(
            m,
            MountRequest::Tmpfs {
                destination: "/run/x".into(),
                options: vec![
                    "nosuid".into(),
                    "nodev".into(),
                    "size=1048576".into(),
                    "mode=1770".into()
                ],
            }
        );
        assert!(MountRequest::parse_mount_flag("type=bind,target=/t").is_err());
        assert!(MountRequest::parse_mount_flag("type=nfs,target=/t").is_err());
        assert!(MountRequest::parse_mount_flag("type=tmpfs,target=/t,tmpfs-mode=9").is_err());
        assert!(MountRequest::parse_mount_flag("type=volume,source=../x,target=/t").is_err());
    }

    #[test]
    fn tmpfs_flag_defaults_and_overrides() {
        let m = MountRequest::parse_tmpfs_flag("/scratch:size=64k,exec").unwrap();
        assert_eq!(
            m,
            MountRequest::Tmpfs {
                destination: "/scratch".into(),
                options: vec![
                    "nosuid".into(),
                    "nodev".into(),
                    "size=64k".into(),
                    "exec".into()
                ],
            }
        );
        let oci = m.oci_mount().unwrap();
        assert_eq!(oci.typ().as_deref(), Some("tmpfs"));
    }
}
