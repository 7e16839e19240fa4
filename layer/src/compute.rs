//! Computing a layer from two trees: continuity's `fs.Changes` double walk feeding containerd's
//! `ChangeWriter` (archive/tar.go), written as an OCI layer tar.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use sha2::{Digest as _, Sha256};

use super::fsops::{self, lstat_at, os, path_o, Root};
use super::tarfmt::{self, WriteHeader, BLOCK};
use super::{DiffOptions, LayerCompression};
use berth_errdefs::{Error, Result};
use berth_oci::Digest;

const CAPABILITY: &[u8] = b"security.capability";

/// A writer that hashes and counts what passes through it.
struct HashCount<W> {
    inner: W,
    hasher: Sha256,
    n: u64,
}

impl<W: Write> HashCount<W> {
    fn new(inner: W) -> Self {
        HashCount {
            inner,
            hasher: Sha256::new(),
            n: 0,
        }
    }
    fn digest(&self) -> Digest {
        Digest::from_sha256(&self.hasher.clone().finalize().into())
    }
}

impl<W: Write> Write for HashCount<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn werr(e: io::Error) -> Error {
    Error::io("write layer", e)
}

pub(crate) fn compute<W: Write>(
    lower: &Path,
    upper: &Path,
    compression: LayerCompression,
    options: &DiffOptions<'_>,
    out: W,
) -> Result<(Digest, u64, Digest)> {
    let mut comp = HashCount::new(out);
    let diff_id = match compression {
        LayerCompression::None => {
            {
                let mut bw = BufWriter::with_capacity(1 << 20, &mut comp);
                write_diff(lower, upper, options, &mut bw)?;
                bw.flush().map_err(werr)?;
            }
            comp.digest()
        }
        LayerCompression::Gzip => {
            let gz = GzEncoder::new(&mut comp, flate2::Compression::default());
            let (diff_id, gz) = write_through(lower, upper, options, gz)?;
            gz.finish().map_err(werr)?;
            diff_id
        }
        LayerCompression::Zstd => {
            // Level 3 is zstd's default, and what containerd's (klauspost) encoder writes by
            // default too.
            let zst = zstd::stream::write::Encoder::new(&mut comp, ZSTD_LEVEL).map_err(werr)?;
            let (diff_id, zst) = write_through(lower, upper, options, zst)?;
            zst.finish().map_err(werr)?;
            diff_id
        }
    };
    comp.flush().map_err(werr)?;
    Ok((comp.digest(), comp.n, diff_id))
}

/// zstd's default level (`ZSTD_CLEVEL_DEFAULT`).
const ZSTD_LEVEL: i32 = 3;

/// Write the diff tar into the compressor `enc`, hashing the uncompressed bytes on the way;
/// returns the diff ID and the compressor, to be finished by the caller.
fn write_through<E: Write>(
    lower: &Path,
    upper: &Path,
    options: &DiffOptions<'_>,
    enc: E,
) -> Result<(Digest, E)> {
    let mut unc = HashCount::new(enc);
    {
        let mut bw = BufWriter::with_capacity(1 << 20, &mut unc);
        write_diff(lower, upper, options, &mut bw)?;
        bw.flush().map_err(werr)?;
    }
    Ok((unc.digest(), unc.inner))
}

#[cfg(test)]
thread_local! {
    /// Names the walk looked at: tests check that a guided walk leaves the unchanged ones alone.
    pub(crate) static VISITS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One directory being merged: both sides' fds and the names to visit, sorted — the union of
/// both sides' names, or, where an overlay upperdir guides, only the names it holds.
struct Frame {
    rel: Vec<u8>,
    lower: Option<OwnedFd>,
    upper: OwnedFd,
    /// The upperdir's directory at `rel`, when it alone says what can differ here.
    guide: Option<OwnedFd>,
    names: Vec<Vec<u8>>,
    idx: usize,
}

struct Writer<'w> {
    w: &'w mut dyn Write,
    upper_root: Root,
    /// Directories already in the tar (containerd's `addedDirs`).
    added_dirs: HashSet<Vec<u8>>,
    /// Hardlinked inode → first name written for it.
    inode_src: HashMap<(u64, u64), Vec<u8>>,
    /// Hardlinked inode → unmodified names seen before any changed name of it.
    inode_refs: HashMap<(u64, u64), Vec<Vec<u8>>>,
    whiteout_time: i64,
    /// SOURCE_DATE_EPOCH: no entry is dated later (containerd's mod time upper bound).
    mtime_bound: Option<i64>,
    buf: Vec<u8>,
}

fn join(rel: &[u8], name: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(rel.len() + 1 + name.len());
    p.extend_from_slice(rel);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn rerr(what: &str, path: &[u8], e: impl Into<io::Error>) -> Error {
    Error::io(format!("{what} {}", lossy(path)), e.into())
}

fn merged_names(lower: Option<&OwnedFd>, upper: &OwnedFd, rel: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut names = fsops::list_dir(upper.as_fd()).map_err(|e| rerr("read upper dir", rel, e))?;
    if let Some(l) = lower {
        names.extend(fsops::list_dir(l.as_fd()).map_err(|e| rerr("read lower dir", rel, e))?);
    }
    // Byte order per directory = Go's filepath.Walk order, so parents precede children.
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

/// overlayfs's marks on an upperdir directory whose merged content is not "the lower directory
/// plus the names here": an opaque directory hides the lower one, a redirect shows another.
const OVERLAY_DIR_MARKS: [&[u8]; 4] = [
    b"trusted.overlay.opaque",
    b"trusted.overlay.redirect",
    b"user.overlay.opaque",
    b"user.overlay.redirect",
];

/// `name` in the upperdir directory `guide` as a guide for its subtree: a directory carrying
/// none of overlay's marks. Anything else (missing, not a directory, opaque, redirected) is
/// walked in full.
fn guide_into(guide: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<Option<OwnedFd>> {
    match lstat_at(guide, name).map_err(|e| rerr("lstat upperdir", path, e))? {
        Some(st) if fsops::is_dir(&st) => {}
        _ => return Ok(None),
    }
    if marked(&fsops::proc_path(guide, Some(name)), path)? {
        return Ok(None);
    }
    rfs::openat(guide, os(name), path_o(), Mode::empty())
        .map(Some)
        .map_err(|e| rerr("open upperdir", path, e))
}

/// Whether overlay marked the upperdir directory at `at` opaque or redirected (`at` names it
/// by a final component: xattrs are read without following a symlink).
fn marked(at: &Path, path: &[u8]) -> Result<bool> {
    for mark in OVERLAY_DIR_MARKS {
        if fsops::get_xattr(at, mark)
            .map_err(|e| rerr("getxattr upperdir", path, e))?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The names a frame visits: the guide's alone, or both sides' union.
fn frame_names(
    guide: Option<&OwnedFd>,
    lower: Option<&OwnedFd>,
    upper: &OwnedFd,
    rel: &[u8],
) -> Result<Vec<Vec<u8>>> {
    match guide {
        Some(g) => {
            let mut names =
                fsops::list_dir(g.as_fd()).map_err(|e| rerr("read upperdir", rel, e))?;
            names.sort_unstable();
            Ok(names)
        }
        None => merged_names(lower, upper, rel),
    }
}

fn write_diff(
    lower: &Path,
    upper: &Path,
    options: &DiffOptions<'_>,
    w: &mut dyn Write,
) -> Result<()> {
    let source_date_epoch = options.source_date_epoch;
    let lower_root = Root::open(lower)?;
    let upper_root = Root::open(upper)?;
    let lfd = lower_root.dir(&[], None)?;
    let ufd = upper_root
        .dir(&[], None)?
        .ok_or_else(|| Error::internal("upper root vanished"))?;
    let guide = match (options.overlay_upperdir, &lfd) {
        (Some(dir), Some(_)) if !marked(dir, b"")? => Some(
            rfs::open(dir, path_o(), Mode::empty())
                .map_err(|e| Error::io(format!("open upperdir {}", dir.display()), e.into()))?,
        ),
        _ => None,
    };
    let names = frame_names(guide.as_ref(), lfd.as_ref(), &ufd, b"")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut wr = Writer {
        w,
        upper_root,
        added_dirs: HashSet::new(),
        inode_src: HashMap::new(),
        inode_refs: HashMap::new(),
        // A reproducible layer cannot date whiteouts by the clock: containerd 2 uses the epoch.
        whiteout_time: if source_date_epoch.is_some() { 0 } else { now },
        mtime_bound: source_date_epoch,
        buf: vec![0u8; 1 << 20],
    };
    let mut stack = vec![Frame {
        rel: Vec::new(),
        lower: lfd,
        upper: ufd,
        guide,
        names,
        idx: 0,
    }];
    while let Some(top) = stack.last_mut() {
        if top.idx == top.names.len() {
            stack.pop();
            continue;
        }
        let name = std::mem::take(&mut top.names[top.idx]);
        top.idx += 1;
        #[cfg(test)]
        VISITS.with(|v| v.set(v.get() + 1));
        let path = join(&top.rel, &name);
        let lst = match &top.lower {
            Some(l) => lstat_at(l.as_fd(), &name).map_err(|e| rerr("lstat lower", &path, e))?,
            None => None,
        };
        let ust = lstat_at(top.upper.as_fd(), &name).map_err(|e| rerr("lstat upper", &path, e))?;
        let (lower_fd, upper_fd) = (top.lower.as_ref().map(|f| f.as_fd()), top.upper.as_fd());
        let descend = match (lst, ust) {
            (Some(_), None) => {
                // Deleted: one whiteout; nothing below it needs mentioning.
                wr.whiteout(&top.rel, &name)?;
                None
            }
            (None, Some(u)) => {
                wr.change(upper_fd, &name, &path, &u, false)?;
                fsops::is_dir(&u).then_some(None)
            }
            (Some(l), Some(u)) => {
                let lfd = lower_fd.ok_or_else(|| Error::internal("lower fd missing"))?;
                let same = same_file(lfd, upper_fd, &name, &path, &l, &u, &mut wr.buf)?;
                if !same || is_linked(&u) {
                    wr.change(upper_fd, &name, &path, &u, same)?;
                }
                fsops::is_dir(&u).then_some(fsops::is_dir(&l).then_some(()))
            }
            (None, None) => None, // vanished between listing and stat
        };
        if let Some(lower_too) = descend {
            let open = |fd: BorrowedFd<'_>, side: &str| {
                rfs::openat(fd, os(&name), path_o(), Mode::empty())
                    .map_err(|e| rerr(&format!("open {side}"), &path, e))
            };
            let ufd = open(upper_fd, "upper")?;
            let lfd = match (lower_too, lower_fd) {
                (Some(()), Some(l)) => Some(open(l, "lower")?),
                _ => None,
            };
            // A directory new in this layer has no lower to leave out: walked in full.
            let guide = match (&lfd, &top.guide) {
                (Some(_), Some(g)) => guide_into(g.as_fd(), &name, &path)?,
                _ => None,
            };
            let names = frame_names(guide.as_ref(), lfd.as_ref(), &ufd, &path)?;
            stack.push(Frame {
                rel: path,
                lower: lfd,
                upper: ufd,
                guide,
                names,
                idx: 0,
            });
        }
    }
    wr.w.write_all(&[0u8; 2 * BLOCK]).map_err(werr)
}

fn is_linked(st: &rfs::Stat) -> bool {
    !fsops::is_dir(st) && st.st_nlink > 1
}

/// continuity's `sameFile`: identical inode, or same type/mode/owner/rdev and capabilities, and
/// for non-directories the same size and mtime — with a content comparison when both mtimes
/// have zero nanoseconds (they may have been truncated by a tar round trip).
#[allow(clippy::too_many_arguments)]
fn same_file(
    lfd: BorrowedFd<'_>,
    ufd: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    l: &rfs::Stat,
    u: &rfs::Stat,
    buf: &mut [u8],
) -> Result<bool> {
    if l.st_dev == u.st_dev && l.st_ino == u.st_ino {
        return Ok(true);
    }
    if l.st_mode != u.st_mode
        || l.st_uid != u.st_uid
        || l.st_gid != u.st_gid
        || l.st_rdev != u.st_rdev
    {
        return Ok(false);
    }
    let cap = |fd| {
        fsops::get_xattr(&fsops::proc_path(fd, Some(name)), CAPABILITY)
            .map_err(|e| rerr("getxattr", path, e))
    };
    if cap(lfd)? != cap(ufd)? {
        return Ok(false);
    }
    if fsops::is_dir(u) {
        return Ok(true);
    }
    if l.st_size != u.st_size || l.st_mtime != u.st_mtime {
        return Ok(false);
    }
    if l.st_mtime_nsec != 0 || u.st_mtime_nsec != 0 {
        return Ok(l.st_mtime_nsec == u.st_mtime_nsec);
    }
    match FileType::from_raw_mode(u.st_mode) {
        FileType::Symlink => {
            let t = |fd| {
                rfs::readlinkat(fd, os(name), Vec::new()).map_err(|e| rerr("readlink", path, e))
            };
            Ok(t(lfd)? == t(ufd)?)
        }
        FileType::RegularFile if u.st_size > 0 => same_content(lfd, ufd, name, path, buf),
        _ => Ok(true),
    }
}

fn open_file(dir: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<File> {
    rfs::openat(
        dir,
        os(name),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(|e| rerr("open", path, e))
}

fn same_content(
    lfd: BorrowedFd<'_>,
    ufd: BorrowedFd<'_>,
    name: &[u8],
    path: &[u8],
    buf: &mut [u8],
) -> Result<bool> {
    let mut a = open_file(lfd, name, path)?;
    let mut b = open_file(ufd, name, path)?;
    let half = buf.len() / 2;
    let (ba, bb) = buf.split_at_mut(half);
    loop {
        let n = read_full(&mut a, ba).map_err(|e| rerr("read", path, e))?;
        let m = read_full(&mut b, bb).map_err(|e| rerr("read", path, e))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n < half {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Writer<'_> {
    fn whiteout(&mut self, rel: &[u8], name: &[u8]) -> Result<()> {
        let mut base = b".wh.".to_vec();
        base.extend_from_slice(name);
        let path = join(rel, &base);
        self.include_parents(&path)?;
        let h = WriteHeader {
            name: &path,
            linkname: b"",
            typeflag: b'0',
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: self.whiteout_time,
            devmajor: 0,
            devminor: 0,
            xattrs: &[],
        };
        tarfmt::write_header(self.w, &h).map_err(werr)
    }

    /// containerd's `includeParents`: make sure every ancestor directory of `path` is in the tar
    /// before it, taking its metadata from the upper tree.
    fn include_parents(&mut self, path: &[u8]) -> Result<()> {
        let comps: Vec<&[u8]> = path.split(|&c| c == b'/').collect();
        for depth in 1..comps.len() {
            let dir = comps[..depth].join(&b'/');
            if self.added_dirs.contains(&dir) {
                continue;
            }
            let (base, parent) = match comps[..depth].split_last() {
                Some((b, p)) => (*b, p),
                None => continue,
            };
            let pfd = self
                .upper_root
                .dir(parent, None)?
                .ok_or_else(|| rerr("resolve", &dir, io::ErrorKind::NotFound))?;
            let st = lstat_at(pfd.as_fd(), base)
                .map_err(|e| rerr("lstat", &dir, e))?
                .ok_or_else(|| rerr("lstat", &dir, io::ErrorKind::NotFound))?;
            self.added_dirs.insert(dir.clone());
            self.entry(pfd.as_fd(), base, &dir, &st, None)?;
        }
        Ok(())
    }

    /// An added, modified or (hardlinked) unmodified path of the upper tree.
    fn change(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        st: &rfs::Stat,
        unmodified: bool,
    ) -> Result<()> {
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Socket {
            return Ok(()); // sockets are not archived
        }
        if is_linked(st) {
            let key = (st.st_dev, st.st_ino);
            if let Some(src) = self.inode_src.get(&key).cloned() {
                self.include_parents(path)?;
                return self.entry(dir, name, path, st, Some(&src));
            }
            if unmodified {
                self.inode_refs.entry(key).or_default().push(path.to_vec());
                return Ok(());
            }
            self.inode_src.insert(key, path.to_vec());
            self.include_parents(path)?;
            self.entry(dir, name, path, st, None)?;
            // Unchanged names of this inode seen earlier now link to it.
            for extra in self.inode_refs.remove(&key).unwrap_or_default() {
                self.include_parents(&extra)?;
                self.entry(dir, name, &extra, st, Some(path))?;
            }
            return Ok(());
        }
        self.include_parents(path)?;
        if ft == FileType::Directory {
            self.added_dirs.insert(path.to_vec());
        }
        self.entry(dir, name, path, st, None)
    }

    /// Write one header (and data) for `dir/name`, stored in the tar as `path`, or as a
    /// hardlink to `link_to`.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        st: &rfs::Stat,
        link_to: Option<&[u8]>,
    ) -> Result<()> {
        let ft = FileType::from_raw_mode(st.st_mode);
        let mut linkname = Vec::new();
        let mut size = 0u64;
        let typeflag = match (link_to, ft) {
            (Some(src), _) => {
                linkname = src.to_vec();
                b'1'
            }
            (None, FileType::RegularFile) => {
                size = st.st_size as u64;
                b'0'
            }
            (None, FileType::Directory) => b'5',
            (None, FileType::Symlink) => {
                linkname = rfs::readlinkat(dir, os(name), Vec::new())
                    .map_err(|e| rerr("readlink", path, e))?
                    .into_bytes();
                b'2'
            }
            (None, FileType::CharacterDevice) => b'3',
            (None, FileType::BlockDevice) => b'4',
            (None, FileType::Fifo) => b'6',
            (None, _) => return Ok(()),
        };
        let mut tar_name = path.to_vec();
        if ft == FileType::Directory && link_to.is_none() {
            tar_name.push(b'/');
        }
        // containerd carries only security.capability; we carry every xattr except overlay's
        // own (trusted.*) and host-specific SELinux labels, so user xattrs and ACLs survive.
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> =
            fsops::list_xattrs_path(&fsops::proc_path(dir, Some(name)))
                .map_err(|e| rerr("list xattrs of", path, e))?
                .into_iter()
                .filter(|(k, _)| !k.starts_with(b"security.selinux"))
                .collect();
        let xattrs: Vec<(&[u8], Vec<u8>)> = xattrs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.clone()))
            .collect();
        let (devmajor, devminor) =
            if matches!(ft, FileType::CharacterDevice | FileType::BlockDevice) {
                (rfs::major(st.st_rdev), rfs::minor(st.st_rdev))
            } else {
                (0, 0)
            };
        let h = WriteHeader {
            name: &tar_name,
            linkname: &linkname,
            typeflag,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size,
            mtime: self.mtime_bound.map_or(st.st_mtime, |b| st.st_mtime.min(b)),
            devmajor,
            devminor,
            xattrs: &xattrs,
        };
        tarfmt::write_header(self.w, &h).map_err(werr)?;
        if size > 0 {
            let mut f = open_file(dir, name, path)?;
            let mut left = size;
            while left > 0 {
                let want = (self.buf.len() as u64).min(left) as usize;
                let n =
                    read_full(&mut f, &mut self.buf[..want]).map_err(|e| rerr("read", path, e))?;
                if n == 0 {
                    // containerd: "short write copying file" — the tree changed under us.
                    return Err(rerr(
                        "read",
                        path,
                        io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while archiving"),
                    ));
                }
                self.w.write_all(&self.buf[..n]).map_err(werr)?;
                left -= n as u64;
            }
            let pad = tarfmt::padding(size) as usize;
            self.w.write_all(&[0u8; BLOCK][..pad]).map_err(werr)?;
        }
        Ok(())
    }
}
