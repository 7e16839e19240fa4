//! `berth cp`: files between the host and a container's filesystem, with docker's rules (a
//! directory copies into an existing directory as a subdirectory, or its contents with a
//! trailing `/.`; a file into a directory by its name, or over a file). The container side is
//! its root as its processes see it (`/proc/<pid>/root`, volumes and tmpfs included) while a
//! task runs, else its rootfs snapshot mounted here. Every container path is resolved through
//! directory descriptors beneath that root (`fscopy`): a symlink leading out is refused, and
//! links inside the copied trees are copied as links, never followed.

use crate::containers::ContainerInfo;
use crate::fscopy::{self, Owner, Resolved, Shift};
use crate::lifecycle::ContainerStatus;
use crate::{Client, Error, Result};
use nix::errno::Errno;
use nix::sys::stat::Mode;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use tonic::Code;

/// How owners are set: docker's default (the destination side's user: root in a container,
/// the caller on the host), or the source's owners kept (`cp -a`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    Default,
    Archive,
}

impl Client {
    /// Copy `src` (a path in `container`) to `dest` on the host.
    pub async fn copy_from_container(
        &self,
        container: &ContainerInfo,
        src: &str,
        dest: &Path,
        ownership: Ownership,
    ) -> Result<()> {
        let shift = shift_of(container, false)?;
        let (src, dest) = (src.to_string(), dest.to_path_buf());
        let id = container.id.clone();
        self.with_container_root(container, false, move |root| {
            let owner = match ownership {
                Ownership::Archive => Owner::Source(shift.as_ref()),
                Ownership::Default => Owner::Fixed(
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                ),
            };
            let contents = src.ends_with("/.") || src == ".";
            let want_dir = contents || src.ends_with('/');
            let from = fscopy::resolve_beneath(root, &src, want_dir)?;
            let to = resolve_host(&dest, true)?;
            copy(
                from,
                &src,
                base_name(&src),
                contents,
                want_dir,
                to,
                &dest.display().to_string(),
                dest.to_string_lossy().ends_with('/'),
                owner,
            )
            .map_err(|e| not_found_in(e, &src, &id))
        })
        .await
    }

    /// Copy `src` on the host to `dest`, a path in `container`.
    pub async fn copy_to_container(
        &self,
        container: &ContainerInfo,
        src: &Path,
        dest: &str,
        ownership: Ownership,
    ) -> Result<()> {
        let shift = shift_of(container, true)?;
        // The container's root: host ids 0, or those its user namespace maps 0 to.
        let root_ids = match &shift {
            Some(s) => (s.uid.host_id(0).unwrap_or(0), s.gid.host_id(0).unwrap_or(0)),
            None => (0, 0),
        };
        let (src, dest) = (src.to_path_buf(), dest.to_string());
        self.with_container_root(container, true, move |root| {
            let owner = match ownership {
                Ownership::Archive => Owner::Source(shift.as_ref()),
                Ownership::Default => Owner::Fixed(root_ids.0, root_ids.1),
            };
            let s = src.to_string_lossy().into_owned();
            let contents = s.ends_with("/.") || s == ".";
            let want_dir = contents || s.ends_with('/');
            let from = resolve_host(&src, want_dir)?;
            let to = fscopy::resolve_beneath(root, &dest, true)?;
            copy(
                from,
                &s,
                base_name(&s),
                contents,
                want_dir,
                to,
                &dest,
                dest.ends_with('/'),
                owner,
            )
        })
        .await
    }

    /// Run `f` on the container's root directory: a running (or paused) task's root as its
    /// processes see it, else the rootfs snapshot mounted (read-only unless `writable`).
    async fn with_container_root<T: Send + 'static>(
        &self,
        container: &ContainerInfo,
        writable: bool,
        f: impl FnOnce(&OwnedFd) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pid = match self.status(container).await? {
            ContainerStatus::Running { pid, .. } | ContainerStatus::Paused { pid, .. }
                if pid > 0 =>
            {
                Some(pid)
            }
            _ => None,
        };
        let run = |job: Box<dyn FnOnce() -> Result<T> + Send>| async move {
            tokio::task::spawn_blocking(job)
                .await
                .map_err(|e| Error::local(Code::Internal, format!("copying files: {e}")))?
        };
        if let Some(pid) = pid {
            return run(Box::new(move || {
                let root = nix::fcntl::open(
                    format!("/proc/{pid}/root").as_str(),
                    nix::fcntl::OFlag::O_RDONLY
                        | nix::fcntl::OFlag::O_DIRECTORY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| {
                    Error::io(
                        format!("open the root of container process {pid} (berth cp needs root)"),
                        e.into(),
                    )
                })?;
                // SAFETY: open returned a new descriptor nothing else owns.
                let root = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(root) };
                f(&root)
            }))
            .await;
        }
        if container.snapshot_key.is_empty() {
            return Err(Error::invalid(format!(
                "container {} has no rootfs snapshot",
                container.id
            )));
        }
        let mounts = crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient::new(
            self.channel.clone(),
        )
        .mounts(
            self.request(crate::api::services::snapshots::v1::MountsRequest {
                snapshotter: container.snapshotter.clone(),
                key: container.snapshot_key.clone(),
            }),
        )
        .await?
        .into_inner()
        .mounts;
        run(Box::new(move || {
            crate::build::with_mounted(&mounts, !writable, |dir| {
                let root = fscopy::open_host_dir(dir)?;
                f(&root)
            })
        }))
        .await
    }
}

/// The id translation a copy with `container` needs: its spec's user namespace maps, if it has
/// any (berthd's `[userns] remap`, or a client's own).
fn shift_of(container: &ContainerInfo, into_container: bool) -> Result<Option<Shift>> {
    let Some(spec) = &container.spec else {
        return Ok(None);
    };
    let maps = crate::userns::spec_maps(spec)
        .map_err(|e| Error::invalid(format!("container {}: {e}", container.id)))?;
    Ok(maps.map(|(uid, gid)| Shift {
        uid,
        gid,
        into_container,
    }))
}

/// The last name of a path (None for a root, `.` or `/.`).
fn base_name(path: &str) -> Option<OsString> {
    path.split('/')
        .rev()
        .find(|p| !p.is_empty() && *p != ".")
        .map(OsString::from)
}

fn not_found_in(e: Error, src: &str, id: &str) -> Error {
    if e.is_not_found() {
        Error::not_found(format!(
            "could not find the file {src} in container {}: {e}",
            crate::names::short_id(id)
        ))
    } else {
        e
    }
}

/// A host path as the copy sees it (a host path is the caller's own choice: followed as
/// given, the last component only when `follow_last`).
fn resolve_host(path: &Path, follow_last: bool) -> Result<Resolved> {
    let md = if follow_last {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    if md.as_ref().is_ok_and(|m| m.is_dir()) {
        let fd = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(format!("open {}", path.display()), e.into()))?;
        // SAFETY: open returned a new descriptor nothing else owns.
        return Ok(Resolved::Dir(unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }));
    }
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .ok_or_else(|| Error::invalid(format!("{}: no file name", path.display())))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent_fd = match std::fs::metadata(&parent) {
        Ok(m) if m.is_dir() => {
            let fd = nix::fcntl::open(
                parent.as_path(),
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io(format!("open {}", parent.display()), e.into()))?;
            // SAFETY: as above.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        }
        Ok(_) => {
            return Err(Error::invalid(format!(
                "{}: {} is not a directory",
                path.display(),
                parent.display()
            )))
        }
        Err(_) => {
            return Err(Error::not_found(format!(
                "{}: no such directory {}",
                path.display(),
                parent.display()
            )))
        }
    };
    let stat = nix::sys::stat::fstatat(
        Some(parent_fd.as_raw_fd()),
        name.as_os_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok();
    Ok(Resolved::Entry {
        parent: parent_fd,
        name,
        stat,
    })
}

/// docker's rules for one copy from `from` to `to`.
#[allow(clippy::too_many_arguments)]
fn copy(
    from: Resolved,
    from_desc: &str,
    from_name: Option<OsString>,
    contents: bool,
    want_dir: bool,
    to: Resolved,
    to_desc: &str,
    to_trailing_slash: bool,
    owner: Owner,
) -> Result<()> {
    match from {
        Resolved::Dir(src) => match to {
            Resolved::Dir(dst) => match from_name.filter(|_| !contents) {
                None => fscopy::copy_dir_contents(&src, &dst, owner),
                Some(name) => {
                    let sub = make_dir(&dst, &name, to_desc)?;
                    fscopy::copy_dir_contents(&src, &sub, owner)?;
                    fscopy::copy_dir_attrs(&src, &sub, owner)
                }
            },
            Resolved::Entry {
                parent,
                name,
                stat: None,
            } => {
                let sub = make_dir(&parent, &name, to_desc)?;
                fscopy::copy_dir_contents(&src, &sub, owner)?;
                fscopy::copy_dir_attrs(&src, &sub, owner)
            }
            Resolved::Entry { .. } => Err(Error::invalid(format!(
                "cannot copy directory {from_desc} to {to_desc}: it exists and is not a directory"
            ))),
        },
        Resolved::Entry { stat: None, .. } => Err(Error::not_found(format!(
            "{from_desc}: no such file or directory"
        ))),
        Resolved::Entry {
            parent: sparent,
            name: sname,
            stat: Some(_),
        } => {
            if want_dir {
                return Err(Error::invalid(format!("{from_desc}: not a directory")));
            }
            match to {
                Resolved::Dir(dst) => fscopy::copy_entry(&sparent, &sname, &dst, &sname, owner),
                Resolved::Entry { stat: None, .. } if to_trailing_slash => Err(Error::not_found(
                    format!("destination directory {to_desc} does not exist"),
                )),
                Resolved::Entry { parent, name, .. } => {
                    fscopy::copy_entry(&sparent, &sname, &parent, &name, owner)
                }
            }
        }
    }
}

/// `name` in `dir` as a directory (made 0700 if absent; attributes come from the source).
fn make_dir(dir: &OwnedFd, name: &std::ffi::OsStr, desc: &str) -> Result<OwnedFd> {
    match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(Error::io(format!("create directory {desc}"), e.into())),
    }
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOTDIR | Errno::ELOOP => Error::invalid(format!(
            "cannot copy a directory over {desc}/{}: it is not a directory",
            std::path::Path::new(name).display()
        )),
        e => Error::io(format!("open directory {desc}"), e.into()),
    })?;
    // SAFETY: openat returned a new descriptor nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names() {
        assert_eq!(base_name("/a/b/"), Some("b".into()));
        assert_eq!(base_name("/a/b/."), Some("b".into()));
        assert_eq!(base_name("/"), None);
        assert_eq!(base_name("file"), Some("file".into()));
    }
}
