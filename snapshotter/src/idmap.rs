//! Idmapped layers: a snapshot prepared with containerd's `containerd.io/snapshot/uidmapping` and
//! `gidmapping` labels is mounted with its lower layers shown through an idmapped mount, so a
//! container in a user namespace with those mappings sees the image's owners (its root owns what
//! the image's root owns) without a chowned copy of the image.
//!
//! overlayfs refuses to idmap the overlay mount itself (EINVAL from mount_setattr), and an
//! idmapped upper layer breaks the workdir (the mounter's uid 0 has no mapping there), so only the
//! lowers are idmapped; the upper stays plain and holds host ids, its root chowned to the mapped
//! owner when the snapshot is prepared (containerd's overlay snapshotter does the same).
//!
//! The idmapped lowers are detached mounts (open_tree + mount_setattr) named to overlayfs as
//! `/proc/self/fd/N`: nothing is attached anywhere, so nothing is left behind, and the lowerdir
//! option stays short. nix has none of these three syscalls, hence `libc::syscall`.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::libc;

use crate::error::at;
use crate::{Error, Result};

pub use berth_oci::idmap::{IdMap, IdRange, GIDMAP_LABEL, UIDMAP_LABEL};

/// A user namespace with these maps, as an fd: a child is cloned into a new user namespace, its
/// maps written from here, its namespace opened, and the child killed (the fd keeps the
/// namespace alive).
pub fn userns_fd(uid: &IdMap, gid: &IdMap) -> Result<OwnedFd> {
    let child = PausedChild::in_new_userns()?;
    let proc = format!("/proc/{}", child.0);
    std::fs::write(format!("{proc}/uid_map"), uid.proc_form())
        .map_err(|e| Error::io("write uid_map", e))?;
    std::fs::write(format!("{proc}/gid_map"), gid.proc_form())
        .map_err(|e| Error::io("write gid_map", e))?;
    std::fs::File::open(format!("{proc}/ns/user"))
        .map(OwnedFd::from)
        .map_err(|e| Error::io("open the user namespace", e))
}

/// A cloned child of this process, in a user namespace of its own, pausing until it is dropped
/// (killed and reaped).
///
/// It is cloned without an exec, so it starts with a copy of every descriptor of the daemon: the
/// API's listening socket, the root's lock, the metadata database. Were the daemon killed before
/// the drop, a child keeping those would keep the next daemon from locking its root while
/// clients' connections queue on a socket nobody serves. So the child closes all of them first,
/// and dies with the thread that made it (PR_SET_PDEATHSIG), which covers a parent already gone
/// before that by looking at its parent pid.
struct PausedChild(nix::unistd::Pid);

impl PausedChild {
    fn in_new_userns() -> Result<PausedChild> {
        use nix::sched::{clone, CloneFlags};
        let parent = nix::unistd::getpid();
        let mut stack = vec![0u8; 64 * 1024];
        // SAFETY: the child makes only raw syscalls (close_range, prctl, getppid, pause, exit),
        // async-signal-safe, on its own stack; it touches no memory shared with the parent's
        // threads.
        let pid = unsafe {
            clone(
                Box::new(move || {
                    // Death signal first: a parent gone before it shows in getppid.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() != parent.as_raw() {
                        libc::_exit(0);
                    }
                    libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                    loop {
                        libc::pause();
                    }
                }),
                &mut stack,
                CloneFlags::CLONE_NEWUSER,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(|e| Error::io("clone a user namespace", std::io::Error::from(e)))?;
        Ok(PausedChild(pid))
    }
}

impl Drop for PausedChild {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.0, None);
    }
}

/// A detached copy of the mount tree at `path` that shows its owners through `userns`'s maps.
pub fn idmapped_tree(path: &Path, userns: BorrowedFd<'_>) -> Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid(format!("path {} has a NUL byte", path.display())))?;
    // SAFETY: open_tree reads a NUL-terminated path; the returned fd is owned here.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(at("open_tree", path)(Errno::last()));
    }
    // SAFETY: fd was just returned by open_tree and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: mount_setattr reads `attr` (its size given) and the empty path; both outlive the
    // call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(at("idmap (mount_setattr)", path)(Errno::last()));
    }
    Ok(tree)
}

/// Whether idmapped lowers under an overlay work on the filesystem holding `root`: a file owned
/// by 0 in an idmapped lower must show the mapped owner through the overlay. Leaves nothing.
pub fn supported(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(root).map_err(|e| Error::io("create the snapshot root", e))?;
    let dir = root.join(format!("idmap-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = (|| {
        for d in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| Error::io("mkdir", e))?;
        }
        std::fs::write(dir.join("lower/f"), b"").map_err(|e| Error::io("write", e))?;
        let map = IdMap(vec![IdRange {
            container: 0,
            host: 1_000_000,
            length: 1,
        }]);
        let ns = userns_fd(&map, &map)?;
        let lower = idmapped_tree(&dir.join("lower"), std::os::fd::AsFd::as_fd(&ns))?;
        let m = crate::Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("lowerdir=/proc/self/fd/{}", lower.as_raw_fd()),
                format!("upperdir={}", dir.join("upper").display()),
                format!("workdir={}", dir.join("work").display()),
            ],
        };
        m.mount(&dir.join("merged"))?;
        let md = std::fs::metadata(dir.join("merged/f"));
        let _ = crate::unmount(&dir.join("merged"));
        match md {
            Ok(md) if md.uid() == 1_000_000 => Ok(()),
            Ok(md) => Err(Error::invalid(format!(
                "an idmapped lower shows uid {} instead of 1000000",
                md.uid()
            ))),
            Err(e) => Err(Error::io("stat through the overlay", e)),
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Mount options of berth's read-only diff view (see [`unmapped_view`]): the maps its top lower
/// is shown through.
const TOP_UIDMAP: &str = "x-berth.top-uidmap=";
const TOP_GIDMAP: &str = "x-berth.top-gidmap=";

/// Replaces `uidmap=`/`gidmap=` in an overlay's options by idmapped lowers (or the diff view's
/// top-lower maps by an idmapped top lower): the options to mount with, and the fds that must
/// stay open until the mount is made.
pub(crate) fn apply_to_overlay(options: &[String]) -> Result<(Vec<String>, Vec<OwnedFd>)> {
    let find = |p: &str| options.iter().find_map(|o| o.strip_prefix(p));
    let (maps, top_only) = match (
        find("uidmap="),
        find("gidmap="),
        find(TOP_UIDMAP),
        find(TOP_GIDMAP),
    ) {
        (Some(u), Some(g), None, None) => ((u, g), false),
        (None, None, Some(u), Some(g)) => ((u, g), true),
        _ => return Err(Error::invalid("uidmap= and gidmap= go together")),
    };
    let ns = userns_fd(&IdMap::parse(maps.0)?, &IdMap::parse(maps.1)?)?;
    let mut fds = Vec::new();
    let mut out = Vec::new();
    for o in options {
        if is_map_option(o) {
            continue;
        }
        match o.strip_prefix("lowerdir=") {
            Some(dirs) => {
                let mut named = Vec::new();
                for (i, d) in dirs.split(':').enumerate() {
                    if top_only && i > 0 {
                        named.push(d.to_string());
                        continue;
                    }
                    let fd = idmapped_tree(Path::new(d), std::os::fd::AsFd::as_fd(&ns))?;
                    named.push(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                    fds.push(fd);
                }
                out.push(format!("lowerdir={}", named.join(":")));
            }
            None => out.push(o.clone()),
        }
    }
    Ok((out, fds))
}

fn is_map_option(o: &str) -> bool {
    ["uidmap=", "gidmap=", TOP_UIDMAP, TOP_GIDMAP]
        .iter()
        .any(|p| o.starts_with(p))
}

/// Whether these mount options ask for idmapped layers.
pub(crate) fn wanted(options: &[String]) -> bool {
    options.iter().any(|o| is_map_option(o))
}

/// For a Diff of an idmapped active snapshot: a read-only overlay of its upper, shown through
/// the inverse maps (the host ids the container wrote, back to the container's), over its plain
/// lowers. Unchanged files then compare equal with the parent's view and the layer carries the
/// image's owners, not the host's. None for any other mount.
pub fn unmapped_view(m: &crate::Mount) -> Result<Option<crate::Mount>> {
    if m.r#type != "overlay" {
        return Ok(None);
    }
    let find = |p: &str| m.options.iter().find_map(|o| o.strip_prefix(p));
    let (Some(u), Some(g), Some(upper), Some(lower)) = (
        find("uidmap="),
        find("gidmap="),
        find("upperdir="),
        find("lowerdir="),
    ) else {
        return Ok(None);
    };
    let inverse = |s: &str| -> Result<IdMap> {
        Ok(IdMap(
            IdMap::parse(s)?
                .0
                .into_iter()
                .map(|r| IdRange {
                    container: r.host,
                    host: r.container,
                    length: r.length,
                })
                .collect(),
        ))
    };
    let mut options: Vec<String> = m
        .options
        .iter()
        .filter(|o| {
            !is_map_option(o)
                && !o.starts_with("upperdir=")
                && !o.starts_with("workdir=")
                && !o.starts_with("lowerdir=")
        })
        .cloned()
        .collect();
    options.push(format!("lowerdir={upper}:{lower}"));
    options.push(format!("{TOP_UIDMAP}{}", inverse(u)?));
    options.push(format!("{TOP_GIDMAP}{}", inverse(g)?));
    Ok(Some(crate::Mount {
        options,
        ..m.clone()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idmapped_lowers_work_here_and_leave_nothing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: idmapped mounts need root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        supported(dir.path()).expect("idmapped lowers under overlayfs");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read").collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// The clone starts with a copy of every descriptor of this process and keeps none, and it
    /// dies with the thread that made it: a daemon killed while the child lived left it pausing
    /// forever with the root's lock and the API socket (a full-suite run's restart failures).
    #[test]
    fn the_userns_child_keeps_no_descriptor_and_dies_with_its_thread() {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        use std::time::{Duration, Instant};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: user namespaces with maps need root");
            return;
        }
        // Its descriptors go once it runs; give it up to 5 s to.
        let descriptors_within = |pid: nix::unistd::Pid| {
            let fds = format!("/proc/{pid}/fd");
            let open = || std::fs::read_dir(&fds).map(|d| d.count()).unwrap_or(0);
            let deadline = Instant::now() + Duration::from_secs(5);
            while open() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            open()
        };
        let child = PausedChild::in_new_userns().expect("clone");
        assert_eq!(
            descriptors_within(child.0),
            0,
            "the child still holds descriptors"
        );
        drop(child);

        // Made by a thread that ends without dropping it, as when the daemon dies. The thread
        // waits for the child's descriptors to go (its death signal is set before that): a
        // thread gone earlier ends before the signal is asked for, and the process it would
        // look for in getppid, this one, lives on.
        let pid = std::thread::spawn(move || {
            let c = PausedChild::in_new_userns().expect("clone");
            descriptors_within(c.0);
            let pid = c.0;
            std::mem::forget(c);
            pid
        })
        .join()
        .expect("thread");
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
                WaitStatus::StillAlive if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => break other,
            }
        };
        if status == WaitStatus::StillAlive {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        assert!(
            matches!(
                status,
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
            ),
            "the orphaned child was not killed: {status:?}"
        );
    }
}
