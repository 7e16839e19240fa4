//! Extracting a layer tar into a directory: containerd's `archive.applyNaive` semantics, done
//! with fd-relative syscalls so no entry can touch anything outside the target.

use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::fsops::{self, lstat_at, os, Root};
use super::stream::ChunkSource;
use super::tarfmt::{invalid, Entry, Kind, TarReader, Time};
use super::{Limits, Whiteouts};
use berth_errdefs::{Error, Result};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub(crate) struct Applier {
    root: Root,
    /// Lower layers (topmost first) that implicitly created parents copy their attributes from
    /// (containerd's `WithParents`, used when writing straight into an overlay upperdir).
    parents: Vec<Root>,
    whiteouts: Whiteouts,
    skip_devices: bool,
    /// Directories to re-stamp at the end: (cleaned name, atime, mtime).
    dirs: Vec<(Vec<u8>, Timespec, Timespec)>,
    /// Directories the resolver created for entries whose parents the layer does not carry
    /// (resolved names, parents first); those the layer later lists itself are dropped at the end.
    implied: Vec<Vec<u8>>,
    /// Native mode only: entries written by this layer, keyed by (parent dev, parent ino, name),
    /// so a later `.wh..wh..opq` in the same layer keeps them (the marker may come after them).
    unpacked: HashSet<u64>,
    hash_state: RandomState,
}

/// Split an entry name into components, cleaned like Go's `filepath.Clean` and clamped at the
/// root (leading `..` and `/` vanish), so the result never contains `.` or `..`.
pub(crate) fn clean(name: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(c),
        }
    }
    out
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// containerd's `boundTime`: anything before the epoch or past what a 64-bit nanosecond count
/// holds becomes the epoch.
fn bound(t: Time) -> Timespec {
    const MAX_SECS: i64 = i64::MAX / 1_000_000_000;
    if t.0 < 0 || t.0 > MAX_SECS {
        return Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
    }
    Timespec {
        tv_sec: t.0,
        tv_nsec: t.1.into(),
    }
}

fn times(e: &Entry) -> Timestamps {
    // atime = the later of atime and mtime (containerd's `latestTime`).
    let atime = match e.atime {
        Some(a) if a > e.mtime => a,
        _ => e.mtime,
    };
    Timestamps {
        last_access: bound(atime),
        last_modification: bound(e.mtime),
    }
}

fn in_user_namespace() -> bool {
    static USERNS: OnceLock<bool> = OnceLock::new();
    *USERNS.get_or_init(|| match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let f: Vec<&str> = map.split_whitespace().collect();
            f != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    })
}

fn io_err(what: &str, name: &[u8], e: impl Into<std::io::Error>) -> Error {
    Error::io(format!("{what} {}", lossy(name)), e.into())
}

impl Applier {
    pub(crate) fn new(root: Root, parents: Vec<Root>, whiteouts: Whiteouts) -> Self {
        Applier {
            root,
            parents,
            whiteouts,
            skip_devices: in_user_namespace(),
            dirs: Vec::new(),
            implied: Vec::new(),
            unpacked: HashSet::new(),
            hash_state: RandomState::new(),
        }
    }

    pub(crate) fn run(&mut self, src: &mut ChunkSource, limits: &Limits) -> Result<()> {
        let mut rd = TarReader::new(src, limits.max_entries);
        while let Some(e) = rd.next()? {
            self.entry(&mut rd, &e)?;
        }
        rd.drain_trailer()?;
        if !self.implied.is_empty() {
            let listed: HashSet<&[u8]> = self.dirs.iter().map(|(n, ..)| n.as_slice()).collect();
            let mut implied = std::mem::take(&mut self.implied);
            implied.retain(|n| !listed.contains(n.as_slice()));
            self.implied = implied;
        }
        self.fix_dir_times()
    }

    /// The directories this layer implied but never listed (see [`Applier::implied`]).
    pub(crate) fn implied_dirs(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.implied)
    }

    fn key(&self, parent: &rfs::Stat, name: &[u8]) -> u64 {
        self.hash_state
            .hash_one((parent.st_dev, parent.st_ino, name))
    }

    fn entry(&mut self, rd: &mut TarReader<'_>, e: &Entry) -> Result<()> {
        let comps = clean(&e.name);
        // An entry naming the root itself ("./", "/", "..") is ignored, as in containerd.
        let Some((&base, parent)) = comps.split_last() else {
            return Ok(());
        };
        if self.skip_devices && matches!(e.kind, Kind::Char | Kind::Block) {
            tracing::warn!(name = %lossy(&e.name), "device node ignored inside a user namespace");
            return Ok(());
        }
        let pfd = {
            let parents = &self.parents;
            let implied = &mut self.implied;
            let mut on_create = |names: &[Vec<u8>], fd: BorrowedFd<'_>| {
                implied.push(names.join(&b'/'));
                copy_parent_info(parents, names, fd).map(|_| ())
            };
            self.root
                .dir(parent, Some(&mut on_create))?
                .ok_or_else(|| invalid(format!("cannot create parent of {}", lossy(&e.name))))?
        };
        let pfd = pfd.as_fd();

        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(pfd, base, e);
        }

        // Replace whatever is there, except that a directory over a directory merges.
        if let Some(st) = lstat_at(pfd, base).map_err(|err| io_err("lstat", &e.name, err))? {
            if !(fsops::is_dir(&st) && e.kind == Kind::Dir) {
                fsops::remove_all_at(pfd, base).map_err(|err| io_err("remove", &e.name, err))?;
            }
        }

        match e.kind {
            Kind::Regular => self.regular(rd, pfd, base, e)?,
            Kind::Dir => self.directory(pfd, base, e)?,
            Kind::Symlink => {
                rfs::symlinkat(os(&e.linkname), pfd, os(base))
                    .map_err(|err| io_err("symlink", &e.name, err))?;
                self.meta_at(pfd, base, e, true)?;
            }
            Kind::Link => {
                self.hardlink(pfd, base, e)?;
                let st = lstat_at(pfd, base)
                    .map_err(|err| io_err("lstat", &e.name, err))?
                    .ok_or_else(|| invalid(format!("hardlink {} vanished", lossy(&e.name))))?;
                let is_link = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
                self.meta_at(pfd, base, e, is_link)?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (ft, dev) = match e.kind {
                    Kind::Char => (
                        FileType::CharacterDevice,
                        rfs::makedev(e.devmajor, e.devminor),
                    ),
                    Kind::Block => (FileType::BlockDevice, rfs::makedev(e.devmajor, e.devminor)),
                    _ => (FileType::Fifo, 0),
                };
                rfs::mknodat(pfd, os(base), ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(|err| io_err("mknod", &e.name, err))?;
                self.meta_at(pfd, base, e, false)?;
            }
        }

        if self.whiteouts == Whiteouts::Native {
            let pst = rfs::fstat(pfd).map_err(|err| io_err("stat parent of", &e.name, err))?;
            let k = self.key(&pst, base);
            self.unpacked.insert(k);
        }
        Ok(())
    }

    fn whiteout(&mut self, pfd: BorrowedFd<'_>, base: &[u8], e: &Entry) -> Result<()> {
        if base == WHITEOUT_OPAQUE {
            match self.whiteouts {
                Whiteouts::Overlay => {
                    let dir = fsops::reopen_dir(pfd).map_err(|err| io_err("open", &e.name, err))?;
                    rfs::fsetxattr(&dir, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
                        .map_err(|err| io_err("set opaque xattr for", &e.name, err))?;
                }
                Whiteouts::Native => {
                    let dir = pfd
                        .try_clone_to_owned()
                        .map_err(|err| io_err("dup", &e.name, err))?;
                    let keep =
                        |st: &rfs::Stat, name: &[u8]| self.unpacked.contains(&self.key(st, name));
                    fsops::prune_dir(dir, &keep).map_err(|err| io_err("opaque", &e.name, err))?;
                }
            }
            return Ok(());
        }
        let target = &base[WHITEOUT_PREFIX.len()..];
        // `.wh.`, `.wh..`, `.wh...` would name the directory itself or its parent.
        if target.is_empty() || target == b"." || target == b".." {
            return Err(invalid(format!("invalid whiteout name: {}", lossy(base))));
        }
        match self.whiteouts {
            Whiteouts::Overlay => {
                rfs::mknodat(pfd, os(target), FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(|err| io_err("whiteout", &e.name, err))?;
                rfs::chownat(
                    pfd,
                    os(target),
                    Some(rfs::Uid::from_raw(e.uid)),
                    Some(rfs::Gid::from_raw(e.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|err| io_err("chown whiteout", &e.name, err))?;
            }
            Whiteouts::Native => {
                fsops::remove_all_at(pfd, target)
                    .map_err(|err| io_err("whiteout", &e.name, err))?;
            }
        }
        Ok(())
    }

    fn regular(
        &mut self,
        rd: &mut TarReader<'_>,
        pfd: BorrowedFd<'_>,
        base: &[u8],
        e: &Entry,
    ) -> Result<()> {
        // O_EXCL|O_NOFOLLOW: the name was just cleared, so nothing planted can be followed.
        let fd = rfs::openat(
            pfd,
            os(base),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|err| io_err("create", &e.name, err))?;
        let mut file = File::from(fd);
        match &e.sparse {
            None => rd.read_data(e.size, |chunk| {
                file.write_all(chunk)
                    .map_err(|err| io_err("write", &e.name, err))
            })?,
            Some(map) => {
                for &(off, len) in map {
                    let mut pos = off;
                    rd.read_data(len, |chunk| {
                        file.write_all_at(chunk, pos)
                            .map_err(|err| io_err("write", &e.name, err))?;
                        pos += chunk.len() as u64;
                        Ok(())
                    })?;
                }
                // Holes stay holes: only the length is set.
                file.set_len(e.size)
                    .map_err(|err| io_err("truncate", &e.name, err))?;
            }
        }
        self.meta_fd(file.as_fd(), e)
    }

    fn directory(&mut self, pfd: BorrowedFd<'_>, base: &[u8], e: &Entry) -> Result<()> {
        match rfs::mkdirat(pfd, os(base), Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(err) => return Err(io_err("mkdir", &e.name, err)),
        }
        let fd = rfs::openat(
            pfd,
            os(base),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|err| io_err("open", &e.name, err))?;
        self.meta_fd(fd.as_fd(), e)?;
        // Entries created inside later bump the mtime; the final value is set at the end.
        let t = times(e);
        self.dirs.push((
            clean(&e.name).join(&b'/'),
            t.last_access,
            t.last_modification,
        ));
        Ok(())
    }

    fn hardlink(&self, pfd: BorrowedFd<'_>, base: &[u8], e: &Entry) -> Result<()> {
        // containerd's hardlinkRootPath: the target's parent is resolved inside the root, the
        // last component is linked as is (a symlink is linked, not followed).
        let (lparent, lbase) = match e.linkname.iter().rposition(|&c| c == b'/') {
            Some(i) => (&e.linkname[..i], &e.linkname[i + 1..]),
            None => (&[][..], &e.linkname[..]),
        };
        if lbase.is_empty() || lbase == b"." || lbase == b".." {
            return Err(invalid(format!(
                "invalid hardlink target {:?} for {}",
                lossy(&e.linkname),
                lossy(&e.name)
            )));
        }
        let lcomps: Vec<&[u8]> = lparent
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let tfd = self.root.dir(&lcomps, None)?.ok_or_else(|| {
            invalid(format!(
                "hardlink target {} of {} not found",
                lossy(&e.linkname),
                lossy(&e.name)
            ))
        })?;
        rfs::linkat(&tfd, os(lbase), pfd, os(base), AtFlags::empty())
            .map_err(|err| io_err("link", &e.name, err))
    }

    /// Ownership, xattrs, mode (after chown, which clears setuid) and times, through an fd.
    fn meta_fd(&self, fd: BorrowedFd<'_>, e: &Entry) -> Result<()> {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(e.uid)),
            Some(rfs::Gid::from_raw(e.gid)),
        )
        .map_err(|err| io_err("chown", &e.name, err))?;
        for (k, v) in e.xattrs.iter().filter(|(k, _)| allowed_xattr(k, e)) {
            let res = rfs::fsetxattr(fd, os(k), v, XattrFlags::empty());
            xattr_result(res, k, e, false)?;
        }
        rfs::fchmod(fd, Mode::from_raw_mode(e.mode))
            .map_err(|err| io_err("chmod", &e.name, err))?;
        if e.kind != Kind::Dir {
            rfs::futimens(fd, &times(e)).map_err(|err| io_err("set times of", &e.name, err))?;
        }
        Ok(())
    }

    /// The same for things that cannot be opened safely (symlinks, devices, FIFOs, hardlinks):
    /// every call is `*at(parent, name)` without following a final symlink, and a symlink is
    /// never chmod'ed (CVE-2021-32760).
    fn meta_at(&self, pfd: BorrowedFd<'_>, base: &[u8], e: &Entry, is_symlink: bool) -> Result<()> {
        rfs::chownat(
            pfd,
            os(base),
            Some(rfs::Uid::from_raw(e.uid)),
            Some(rfs::Gid::from_raw(e.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|err| io_err("lchown", &e.name, err))?;
        if !e.xattrs.is_empty() {
            let path = fsops::proc_path(pfd, Some(base));
            for (k, v) in e.xattrs.iter().filter(|(k, _)| allowed_xattr(k, e)) {
                let res = rfs::lsetxattr(&path, os(k), v, XattrFlags::empty());
                xattr_result(res, k, e, true)?;
            }
        }
        if !is_symlink {
            rfs::chmodat(pfd, os(base), Mode::from_raw_mode(e.mode), AtFlags::empty())
                .map_err(|err| io_err("chmod", &e.name, err))?;
        }
        rfs::utimensat(pfd, os(base), &times(e), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| io_err("set times of", &e.name, err))
    }

    /// Directory mtimes last, once nothing more is created inside them.
    fn fix_dir_times(&mut self) -> Result<()> {
        for (name, atime, mtime) in std::mem::take(&mut self.dirs) {
            let comps = clean(&name);
            let Some((&base, parent)) = comps.split_last() else {
                continue;
            };
            // A directory removed or replaced later in the layer has nothing left to stamp.
            let Some(pfd) = self.root.dir(parent, None)? else {
                continue;
            };
            match lstat_at(pfd.as_fd(), base) {
                Ok(Some(st)) if fsops::is_dir(&st) => {}
                _ => continue,
            }
            let ts = Timestamps {
                last_access: atime,
                last_modification: mtime,
            };
            rfs::utimensat(&pfd, os(base), &ts, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|err| io_err("set times of", &name, err))?;
        }
        Ok(())
    }
}

/// `trusted.*` from an archive could forge overlay metadata (opaque, redirect); containerd's
/// `setxattr` refuses it with ENOTSUP, which its caller then skips with a warning.
fn allowed_xattr(key: &[u8], e: &Entry) -> bool {
    if key.starts_with(b"trusted.") {
        tracing::warn!(name = %lossy(&e.name), key = %lossy(key), "trusted.* xattr from archive ignored");
        return false;
    }
    true
}

/// containerd's xattr policy: `trusted.*` (overlay metadata forgery) and ENOTSUP are skipped
/// with a warning, as is EPERM for `user.*` on things other than files and directories.
fn xattr_result(res: rustix::io::Result<()>, key: &[u8], e: &Entry, special: bool) -> Result<()> {
    match res {
        Ok(()) => Ok(()),
        Err(Errno::NOTSUP) => {
            tracing::warn!(name = %lossy(&e.name), key = %lossy(key), "xattr not supported, ignored");
            Ok(())
        }
        Err(Errno::PERM) if special && key.starts_with(b"user.") => {
            tracing::warn!(name = %lossy(&e.name), key = %lossy(key), "user xattr on a special file ignored");
            Ok(())
        }
        Err(err) => Err(io_err(&format!("setxattr {} on", lossy(key)), &e.name, err)),
    }
}

/// Give the directories a layer applied on its own implied (`implied`, relative names, parents
/// first) the attributes sequential application would have given them, now that its lower
/// layers (`parents`, topmost first) exist: the same [`copy_parent_info`]. A name the layer
/// since replaced by a non-directory, or removed, is left alone.
pub(crate) fn inherit_implied(root: &Root, implied: &[Vec<u8>], parents: &[Root]) -> Result<()> {
    for name in implied {
        let comps: Vec<&[u8]> = name.split(|&b| b == b'/').collect();
        let names: Vec<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        // Not through symlinks: the resolver recorded real names, and the layer may have put a
        // link there since.
        let Some((&base, parent)) = comps.split_last() else {
            continue;
        };
        let Ok(Some(pfd)) = root.dir(parent, None) else {
            continue;
        };
        match lstat_at(pfd.as_fd(), base) {
            Ok(Some(st)) if fsops::is_dir(&st) => {}
            _ => continue,
        }
        let fd = rfs::openat(
            pfd.as_fd(),
            os(base),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open", name, e))?;
        if !copy_parent_info(parents, &names, fd.as_fd())? {
            // No lower has it: made in sequence, it took the group of a set-group-ID parent
            // from the kernel at mkdir (and the parent is final by now: parents come first).
            let pst = rfs::fstat(&pfd).map_err(|e| io_err("stat parent of", name, e))?;
            if pst.st_mode & 0o2000 != 0 {
                let dst = fsops::reopen_dir(fd.as_fd()).map_err(|e| io_err("open", name, e))?;
                rfs::fchown(&dst, None, Some(rfs::Gid::from_raw(pst.st_gid)))
                    .map_err(|e| io_err("chown", name, e))?;
            }
        }
    }
    Ok(())
}

/// For a directory the resolver had to create: copy owner, mode, times and (non-trusted)
/// xattrs from the first lower layer that has it, as containerd's `mkparent` does. Whether one
/// had it.
fn copy_parent_info(parents: &[Root], names: &[Vec<u8>], fd: BorrowedFd<'_>) -> Result<bool> {
    let comps: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
    let rel = || lossy(&comps.join(&b'/')).into_owned();
    for p in parents {
        let src = match p.dir(&comps, None) {
            Ok(Some(src)) => src,
            Ok(None) => continue,
            // Replaced by a non-directory in that layer: keep the defaults.
            Err(_) => return Ok(false),
        };
        let err = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", rel()), e);
        let src = fsops::reopen_dir(src.as_fd()).map_err(|e| err("open lower", e))?;
        let dst: OwnedFd = fsops::reopen_dir(fd).map_err(|e| err("open", e))?;
        let st = rfs::fstat(&src).map_err(|e| err("stat lower", e.into()))?;
        rfs::fchown(
            &dst,
            Some(rfs::Uid::from_raw(st.st_uid)),
            Some(rfs::Gid::from_raw(st.st_gid)),
        )
        .map_err(|e| err("chown", e.into()))?;
        rfs::fchmod(&dst, Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(|e| err("chmod", e.into()))?;
        for (k, v) in
            fsops::list_xattrs_fd(src.as_fd()).map_err(|e| err("list xattrs of lower", e))?
        {
            match rfs::fsetxattr(&dst, os(&k), &v, XattrFlags::CREATE) {
                Ok(()) | Err(Errno::NOTSUP) | Err(Errno::NODATA) | Err(Errno::EXIST) => {}
                Err(e) => return Err(err("setxattr", e.into())),
            }
        }
        let ts = Timestamps {
            last_access: Timespec {
                tv_sec: st.st_atime as i64,
                tv_nsec: st.st_atime_nsec as _,
            },
            last_modification: Timespec {
                tv_sec: st.st_mtime as i64,
                tv_nsec: st.st_mtime_nsec as _,
            },
        };
        rfs::futimens(&dst, &ts).map_err(|e| err("set times of", e.into()))?;
        return Ok(true);
    }
    Ok(false)
}
