//! fd-relative filesystem primitives: resolving a path inside a root with symlinks interpreted
//! as if the root were `/` (continuity's `fs.RootPath`), and removals that never follow links.
//!
//! Every operation on an archive entry goes through a directory fd obtained here plus a single
//! final name, so nothing can reach outside the root however the tree is laid out.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::tarfmt::invalid;
use berth_errdefs::{Error, Result};

/// continuity caps symlink walks at 255 (`errTooManyLinks`).
pub(crate) const MAX_LINK_HOPS: usize = 255;

/// Called for every directory the resolver creates: its path components (relative to the root)
/// and an `O_PATH` fd to it.
pub(crate) type OnCreate<'a> = &'a mut dyn FnMut(&[Vec<u8>], BorrowedFd<'_>) -> Result<()>;

pub(crate) struct Root {
    fd: OwnedFd,
    /// Cleared after the first ENOSYS so old kernels skip straight to the userspace walk.
    openat2: AtomicBool,
}

pub(crate) fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn display(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) fn path_o() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

#[cfg(test)]
thread_local! {
    /// Tests run every hostile case through the userspace walk as well as through openat2.
    pub(crate) static FORCE_WALK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn use_openat2() -> bool {
    #[cfg(test)]
    if FORCE_WALK.with(|f| f.get()) {
        return false;
    }
    true
}

impl Root {
    pub(crate) fn open(path: &Path) -> Result<Root> {
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(format!("open {}", path.display()), e.into()))?;
        Ok(Root {
            fd,
            openat2: AtomicBool::new(use_openat2()),
        })
    }

    /// Resolve `comps` to a directory inside the root. Missing components are created (mode
    /// 0755, then `on_create`) when `on_create` is given; otherwise a missing directory is
    /// `Ok(None)`. A non-directory in the way is an invalid archive; so are more than 255
    /// symlink hops.
    pub(crate) fn dir(
        &self,
        comps: &[&[u8]],
        on_create: Option<OnCreate<'_>>,
    ) -> Result<Option<OwnedFd>> {
        if comps.is_empty() {
            return self
                .fd
                .try_clone()
                .map(Some)
                .map_err(|e| Error::io("dup root fd", e));
        }
        if self.openat2.load(Ordering::Relaxed) {
            // Fast path: one syscall with the kernel doing exactly the root-confined walk.
            let joined = comps.join(&b'/');
            match rfs::openat2(
                &self.fd,
                os(&joined),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => return Ok(Some(fd)),
                Err(Errno::NOSYS) => self.openat2.store(false, Ordering::Relaxed),
                // Anything else (missing parents, dangling links, >40 hops, races): the
                // userspace walk is the authority and gives the precise outcome.
                Err(_) => {}
            }
        }
        self.walk(comps, on_create)
    }

    fn walk(
        &self,
        comps: &[&[u8]],
        mut on_create: Option<OnCreate<'_>>,
    ) -> Result<Option<OwnedFd>> {
        let path_for_err = || display(&comps.join(&b'/'));
        let mut queue: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        // Real directories from the root down, with their names; then names that do not exist
        // (treated as plain directories, like RootPath does, so `missing/..` cancels out).
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut virt: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0usize;
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                // Clamped at the root: `..` of the root is the root.
                if virt.pop().is_none() {
                    stack.pop();
                    names.pop();
                }
                continue;
            }
            if !virt.is_empty() {
                virt.push(c);
                continue;
            }
            let cur = stack.last().map_or(self.fd.as_fd(), |f| f.as_fd());
            let st = match rfs::statat(cur, os(&c), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => {
                    virt.push(c);
                    continue;
                }
                Err(e) => {
                    return Err(Error::io(format!("resolve {}", path_for_err()), e.into()));
                }
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let fd = rfs::openat(cur, os(&c), path_o(), Mode::empty())
                        .map_err(|e| Error::io(format!("open {}", path_for_err()), e.into()))?;
                    stack.push(fd);
                    names.push(c);
                }
                FileType::Symlink => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(invalid(format!(
                            "too many levels of symbolic links resolving {}",
                            path_for_err()
                        )));
                    }
                    let target = rfs::readlinkat(cur, os(&c), Vec::new())
                        .map_err(|e| Error::io(format!("readlink {}", path_for_err()), e.into()))?;
                    let target = target.into_bytes();
                    if target.starts_with(b"/") {
                        stack.clear();
                        names.clear();
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        queue.push_front(part.to_vec());
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "{}: {} is not a directory",
                        path_for_err(),
                        display(&c)
                    )))
                }
            }
        }
        if !virt.is_empty() {
            let Some(hook) = on_create.as_mut() else {
                return Ok(None);
            };
            for c in virt {
                let cur = stack.last().map_or(self.fd.as_fd(), |f| f.as_fd());
                match rfs::mkdirat(cur, os(&c), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(Error::io(format!("mkdir {}", path_for_err()), e.into()));
                    }
                }
                let fd = rfs::openat(cur, os(&c), path_o(), Mode::empty())
                    .map_err(|e| Error::io(format!("open {}", path_for_err()), e.into()))?;
                // mkdir's mode went through the umask; containerd chmods to exactly 0755.
                chmod_path(fd.as_fd(), 0o755)
                    .map_err(|e| Error::io(format!("chmod {}", path_for_err()), e))?;
                names.push(c);
                hook(&names, fd.as_fd())?;
                stack.push(fd);
            }
        }
        match stack.pop() {
            Some(fd) => Ok(Some(fd)),
            None => self
                .fd
                .try_clone()
                .map(Some)
                .map_err(|e| Error::io("dup root fd", e)),
        }
    }
}

/// `/proc/self/fd/N/name`: lets path-only syscalls (lsetxattr, chmod of an O_PATH fd) address
/// `name` in an fd-resolved directory without re-walking any path.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: Option<&[u8]>) -> PathBuf {
    use std::os::fd::AsRawFd;
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    if let Some(n) = name {
        p.push(os(n));
    }
    p
}

/// chmod through an `O_PATH` fd (never a symlink: callers only pass directories and files).
pub(crate) fn chmod_path(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    rfs::chmod(proc_path(fd, None), Mode::from_raw_mode(mode)).map_err(Into::into)
}

pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<rfs::Stat>> {
    match rfs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn is_dir(st: &rfs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

fn open_dir_read(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    rfs::openat(
        dir,
        os(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// Names in a directory (without `.`/`..`), read from a fresh fd so the caller's is untouched.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let fd = open_dir_read(dir, b".")?;
    let mut d = rfs::Dir::new(fd)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// `rm -rf dir/name` without following symlinks; a missing name is fine (os.RemoveAll).
///
/// Iterative with an explicit stack, so a deep tree costs heap and fds, not the thread stack.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rfs::unlinkat(dir, os(name), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    match rfs::unlinkat(dir, os(name), AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let top = rfs::openat(dir, os(name), path_o(), Mode::empty())?;
    // (dir fd, name of this dir within its parent) — the root frame's name is unused.
    let mut stack: Vec<(OwnedFd, Vec<u8>)> = vec![(top, Vec::new())];
    while let Some((cur, _)) = stack.last() {
        let mut descend = None;
        for child in list_dir(cur.as_fd())? {
            match rfs::unlinkat(cur, os(&child), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => continue,
                Err(Errno::ISDIR) | Err(Errno::PERM) => {}
                Err(e) => return Err(e.into()),
            }
            match rfs::unlinkat(cur, os(&child), AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => continue,
                Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            descend = Some(child);
            break;
        }
        match descend {
            Some(child) => {
                let fd = rfs::openat(cur, os(&child), path_o(), Mode::empty())?;
                stack.push((fd, child));
            }
            None => {
                // Emptied: remove it from its parent and resume the parent's listing.
                let Some((_, done)) = stack.pop() else { break };
                match stack.last() {
                    Some((parent, _)) => match rfs::unlinkat(parent, os(&done), AtFlags::REMOVEDIR)
                    {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    },
                    None => match rfs::unlinkat(dir, os(name), AtFlags::REMOVEDIR) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    },
                }
            }
        }
    }
    Ok(())
}

/// Remove everything under `dir` except what `keep(dir_stat, name)` says was unpacked by this
/// layer; kept directories are pruned the same way (containerd's opaque-dir walk).
pub(crate) fn prune_dir(dir: OwnedFd, keep: &dyn Fn(&rfs::Stat, &[u8]) -> bool) -> io::Result<()> {
    let mut pending = vec![dir];
    while let Some(cur) = pending.pop() {
        let st = rfs::fstat(&cur)?;
        for child in list_dir(cur.as_fd())? {
            if !keep(&st, &child) {
                remove_all_at(cur.as_fd(), &child)?;
            } else if let Some(cst) = lstat_at(cur.as_fd(), &child)? {
                if is_dir(&cst) {
                    pending.push(rfs::openat(&cur, os(&child), path_o(), Mode::empty())?);
                }
            }
        }
    }
    Ok(())
}

/// All xattrs of an open (non-`O_PATH`) fd, skipping `trusted.*` (overlay's own metadata).
pub(crate) fn list_xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rfs::flistxattr(fd, &mut names[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) if names.len() < 1 << 20 => names.resize(names.len() * 4, 0),
            Err(Errno::NOTSUP) | Err(Errno::NODATA) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.") {
            continue;
        }
        let mut buf = vec![0u8; 256];
        loop {
            match rfs::fgetxattr(fd, os(name), &mut buf[..]) {
                Ok(k) => {
                    buf.truncate(k);
                    out.push((name.to_vec(), buf));
                    break;
                }
                Err(Errno::RANGE) if buf.len() < 1 << 17 => buf.resize(buf.len() * 8, 0),
                Err(Errno::NODATA) | Err(Errno::NOTSUP) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

/// All xattrs of `path` (not following a final symlink), skipping `trusted.*`.
pub(crate) fn list_xattrs_path(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rfs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) if names.len() < 1 << 20 => names.resize(names.len() * 4, 0),
            Err(Errno::NOTSUP) | Err(Errno::NODATA) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.") {
            continue;
        }
        if let Some(v) = get_xattr(path, name)? {
            out.push((name.to_vec(), v));
        }
    }
    Ok(out)
}

/// One xattr of `path`, not following a final symlink; `None` when absent or unsupported.
pub(crate) fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rfs::lgetxattr(path, os(name), &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) if buf.len() < 1 << 17 => buf.resize(buf.len() * 8, 0),
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Open a readable fd on a directory given as an `O_PATH` fd (for f*xattr, futimens, fchown).
pub(crate) fn reopen_dir(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    open_dir_read(fd, b".")
}
