//! Copying trees between directory descriptors, for `berth cp` and volume copy-up. Every name
//! is taken relative to an open directory and never followed when it is a symlink
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `O_DIRECTORY` on each step down), so a link planted in
//! a tree copies as a link and never redirects a read or a write. Paths inside a container are
//! resolved with openat2's `RESOLVE_BENEATH`: a symlink that would leave the container's root
//! (absolute, or `..` past it) is refused rather than followed.

use crate::userns::IdMap;
use crate::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Who owns what a copy creates.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// These ids, for everything.
    Fixed(u32, u32),
    /// The source's own ids, translated when the two sides see ids differently.
    Source(Option<&'a Shift>),
}

/// How ids translate between the sides of a copy with a container in a user namespace: its
/// uid and gid maps, and whether the copy goes into the container (container ids become host
/// ids) or out of it (host ids become container ids).
#[derive(Debug, Clone)]
pub struct Shift {
    pub uid: IdMap,
    pub gid: IdMap,
    pub into_container: bool,
}

/// What the kernel shows for a host id a user namespace does not map (`overflowuid`).
const OVERFLOW_ID: u32 = 65534;

impl Shift {
    fn ids(&self, uid: u32, gid: u32) -> Result<(u32, u32)> {
        if !self.into_container {
            let out = |map: &IdMap, id: u32| map.container_id(id).unwrap_or(OVERFLOW_ID);
            return Ok((out(&self.uid, uid), out(&self.gid, gid)));
        }
        let into = |map: &IdMap, id: u32, what: &str| {
            map.host_id(id).ok_or_else(|| {
                Error::invalid(format!(
                    "{what} {id} cannot be mapped into the container's user namespace ({map})"
                ))
            })
        };
        Ok((into(&self.uid, uid, "uid")?, into(&self.gid, gid, "gid")?))
    }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: every caller passes a descriptor a syscall just returned and nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn io_err(what: impl std::fmt::Display, e: Errno) -> Error {
    Error::io(what.to_string(), std::io::Error::from(e))
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// A directory of the host, opened by path.
pub fn open_host_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(path, DIR_FLAGS, Mode::empty())
        .map(owned)
        .map_err(|e| io_err(format!("open directory {}", path.display()), e))
}

/// The directory at `path` of the tree mounted at `root`, symlinks resolved inside that root
/// (as the container would see them); None when it is absent or not a directory.
pub fn open_dir_in_root(root: &Path, path: &str) -> Result<Option<OwnedFd>> {
    let root_fd = open_host_dir(root)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    match openat2(root_fd.as_raw_fd(), rel, how) {
        Ok(fd) => Ok(Some(owned(fd))),
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(io_err(format!("open {path} in the image"), e)),
    }
}

/// Where a path inside a container leads.
pub enum Resolved {
    /// A directory (symlinks on the way, the last one too, followed beneath the root).
    Dir(OwnedFd),
    /// Something else, or nothing yet: its parent directory and its name there.
    Entry {
        parent: OwnedFd,
        name: OsString,
        stat: Option<FileStat>,
    },
}

/// `path` inside the tree at `root` with every symlink resolved beneath it: one that would
/// lead out (an absolute target, or `..` past the root) is refused with a message naming the
/// path. `follow_last`: whether a symlink as the last component is followed (to a directory).
pub fn resolve_beneath(root: &OwnedFd, path: &str, follow_last: bool) -> Result<Resolved> {
    let refuse = |p: &str| {
        Error::local(
            tonic::Code::PermissionDenied,
            format!(
                "refusing to follow {path:?}: {p} is a symlink leading outside the container's \
                 filesystem"
            ),
        )
    };
    let open_dir = |rel: &str| -> Result<std::result::Result<OwnedFd, Errno>> {
        let rel = if rel.is_empty() { "." } else { rel };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        match openat2(root.as_raw_fd(), rel, how) {
            Ok(fd) => Ok(Ok(owned(fd))),
            Err(Errno::EXDEV) | Err(Errno::ELOOP) => Err(refuse(&format!("/{rel}"))),
            Err(e) => Ok(Err(e)),
        }
    };
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let Some((last, dirs)) = parts.split_last() else {
        return match open_dir("")? {
            Ok(fd) => Ok(Resolved::Dir(fd)),
            Err(e) => Err(io_err("open the container's root", e)),
        };
    };
    let parent_rel = dirs.join("/");
    let parent = match open_dir(&parent_rel)? {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            return Err(Error::not_found(format!(
                "{path}: /{parent_rel} does not exist in the container"
            )))
        }
        Err(Errno::ENOTDIR) => {
            return Err(Error::invalid(format!(
                "{path}: /{parent_rel} is not a directory in the container"
            )))
        }
        Err(e) => return Err(io_err(format!("open /{parent_rel} in the container"), e)),
    };
    let stat = match fstatat(
        Some(parent.as_raw_fd()),
        *last,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(s) => Some(s),
        Err(Errno::ENOENT) => None,
        Err(e) => return Err(io_err(format!("stat {path} in the container"), e)),
    };
    let is = |s: &FileStat, k: SFlag| SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == k;
    match &stat {
        Some(s) if is(s, SFlag::S_IFDIR) || (follow_last && is(s, SFlag::S_IFLNK)) => {
            let full = parts.join("/");
            match open_dir(&full)? {
                Ok(fd) => return Ok(Resolved::Dir(fd)),
                // A link to a file (or a dangling one) is an entry like any other.
                Err(Errno::ENOTDIR) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io_err(format!("open {path} in the container"), e)),
            }
        }
        _ => {}
    }
    Ok(Resolved::Entry {
        parent,
        name: OsString::from(*last),
        stat,
    })
}

fn kind(s: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT
}

fn times(s: &FileStat) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(s.st_atime, s.st_atime_nsec),
        TimeSpec::new(s.st_mtime, s.st_mtime_nsec),
    )
}

fn ids(s: &FileStat, owner: Owner) -> Result<(Uid, Gid)> {
    let (u, g) = match owner {
        Owner::Fixed(u, g) => (u, g),
        Owner::Source(None) => (s.st_uid, s.st_gid),
        Owner::Source(Some(shift)) => shift.ids(s.st_uid, s.st_gid)?,
    };
    Ok((Uid::from_raw(u), Gid::from_raw(g)))
}

/// The owner, mode and times of the directory `src` given to `dst`.
pub fn copy_dir_attrs(src: &OwnedFd, dst: &OwnedFd, owner: Owner) -> Result<()> {
    let s = fstat(src.as_raw_fd()).map_err(|e| io_err("stat a source directory", e))?;
    set_attrs(dst.as_raw_fd(), &s, owner)
}

fn set_attrs(fd: RawFd, s: &FileStat, owner: Owner) -> Result<()> {
    let (u, g) = ids(s, owner)?;
    fchown(fd, Some(u), Some(g)).map_err(|e| io_err("set an owner", e))?;
    // After the chown, which clears set-id bits.
    fchmod(fd, Mode::from_bits_truncate(s.st_mode & 0o7777))
        .map_err(|e| io_err("set a mode", e))?;
    let (a, m) = times(s);
    futimens(fd, &a, &m).map_err(|e| io_err("set times", e))
}

/// Every entry of the directory `src` copied into `dst`.
pub fn copy_dir_contents(src: &OwnedFd, dst: &OwnedFd, owner: Owner) -> Result<()> {
    // Close-on-exec: a process another thread starts meanwhile must not inherit a descriptor
    // inside a mounted snapshot (it would keep the mount busy; CI saw EBUSY at its unmount).
    let dup = nix::fcntl::fcntl(src.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))
        .map_err(|e| io_err("dup a directory", e))?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(|e| io_err("read a directory", e))?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| io_err("read a directory", e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    for name in names {
        copy_entry(src, &name, dst, &name, owner)?;
    }
    Ok(())
}

/// `src_dir/src_name` (not followed if a symlink) copied to `dst_dir/dst_name`, directories
/// recursively; an existing non-directory there is replaced, an existing directory merged.
pub fn copy_entry(
    src_dir: &OwnedFd,
    src_name: &OsStr,
    dst_dir: &OwnedFd,
    dst_name: &OsStr,
    owner: Owner,
) -> Result<()> {
    let show = || Path::new(dst_name).display().to_string();
    let s = fstatat(
        Some(src_dir.as_raw_fd()),
        src_name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(format!("stat {}", Path::new(src_name).display()), e))?;
    let existing = fstatat(
        Some(dst_dir.as_raw_fd()),
        dst_name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok();
    let d = dst_dir.as_raw_fd();
    let k = kind(&s);
    if k == SFlag::S_IFDIR {
        match &existing {
            Some(e) if kind(e) == SFlag::S_IFDIR => {}
            Some(_) => {
                return Err(Error::invalid(format!(
                    "cannot overwrite non-directory {} with a directory",
                    show()
                )))
            }
            None => mkdirat(Some(d), dst_name, Mode::from_bits_truncate(0o700))
                .map_err(|e| io_err(format!("create directory {}", show()), e))?,
        }
        let sd = openat(
            Some(src_dir.as_raw_fd()),
            src_name,
            DIR_FLAGS,
            Mode::empty(),
        )
        .map(owned)
        .map_err(|e| io_err("open a source directory", e))?;
        let dd = openat(Some(d), dst_name, DIR_FLAGS, Mode::empty())
            .map(owned)
            .map_err(|e| io_err(format!("open directory {}", show()), e))?;
        copy_dir_contents(&sd, &dd, owner)?;
        return set_attrs(dd.as_raw_fd(), &s, owner);
    }
    if let Some(e) = &existing {
        if kind(e) == SFlag::S_IFDIR {
            return Err(Error::invalid(format!(
                "cannot overwrite directory {} with a non-directory",
                show()
            )));
        }
        if k != SFlag::S_IFREG || kind(e) != SFlag::S_IFREG {
            unlinkat(Some(d), dst_name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| io_err(format!("replace {}", show()), e))?;
        }
    }
    let (u, g) = ids(&s, owner)?;
    let (atime, mtime) = times(&s);
    match k {
        SFlag::S_IFREG => {
            let sf = openat(
                Some(src_dir.as_raw_fd()),
                src_name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(format!("open {}", Path::new(src_name).display()), e))?;
            let mut sf = std::fs::File::from(owned(sf));
            let df = openat(
                Some(d),
                dst_name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_TRUNC
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| io_err(format!("create {}", show()), e))?;
            let mut df = std::fs::File::from(owned(df));
            std::io::copy(&mut sf, &mut df)
                .map_err(|e| Error::io(format!("copy {}", show()), e))?;
            set_attrs(df.as_raw_fd(), &s, owner)
        }
        SFlag::S_IFLNK => {
            let target = readlinkat(Some(src_dir.as_raw_fd()), src_name)
                .map_err(|e| io_err("read a symlink", e))?;
            symlinkat(target.as_os_str(), Some(d), dst_name)
                .map_err(|e| io_err(format!("create symlink {}", show()), e))?;
            fchownat(
                Some(d),
                dst_name,
                Some(u),
                Some(g),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(format!("set the owner of {}", show()), e))?;
            utimensat(
                Some(d),
                dst_name,
                &atime,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| io_err(format!("set the times of {}", show()), e))
        }
        SFlag::S_IFIFO | SFlag::S_IFCHR | SFlag::S_IFBLK => {
            let perm = Mode::from_bits_truncate(s.st_mode & 0o7777);
            mknodat(Some(d), dst_name, k, perm, s.st_rdev)
                .map_err(|e| io_err(format!("create {}", show()), e))?;
            fchownat(
                Some(d),
                dst_name,
                Some(u),
                Some(g),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(format!("set the owner of {}", show()), e))?;
            fchmodat(Some(d), dst_name, perm, FchmodatFlags::FollowSymlink)
                .map_err(|e| io_err(format!("set the mode of {}", show()), e))?;
            utimensat(
                Some(d),
                dst_name,
                &atime,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| io_err(format!("set the times of {}", show()), e))
        }
        // Sockets are not copied, as tar does not carry them.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn copies_keep_modes_links_and_do_not_follow() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), "x").unwrap();
        std::fs::set_permissions(src.join("sub/f"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        symlink("/etc/passwd", src.join("link")).unwrap();
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        // A symlink planted where a file is written is replaced, not written through.
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::create_dir(dst.join("sub")).unwrap();
        symlink(&victim, dst.join("sub/f")).unwrap();
        let (s, d) = (open_host_dir(&src).unwrap(), open_host_dir(&dst).unwrap());
        copy_dir_contents(&s, &d, Owner::Source(None)).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(dst.join("sub/f")).unwrap(), "x");
        let md = std::fs::symlink_metadata(dst.join("sub/f")).unwrap();
        assert!(md.is_file());
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn resolution_stays_beneath_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../..", root.join("a/up")).unwrap();
        symlink("b", root.join("a/rel")).unwrap();
        let r = open_host_dir(root).unwrap();
        assert!(matches!(
            resolve_beneath(&r, "/a/rel", true).unwrap(),
            Resolved::Dir(_)
        ));
        for bad in ["/abs/passwd", "/a/up/etc", "/../etc/passwd"] {
            let e = resolve_beneath(&r, bad, true).err().expect(bad);
            assert!(e.to_string().contains("outside"), "{bad}: {e}");
        }
        // The link itself, not followed, is an entry.
        assert!(matches!(
            resolve_beneath(&r, "/abs", false).unwrap(),
            Resolved::Entry { stat: Some(_), .. }
        ));
    }
}
