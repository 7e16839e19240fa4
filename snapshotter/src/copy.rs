//! A faithful tree copy for the native snapshotter (containerd's continuity `fs.CopyDir`):
//! ownership, modes (setuid included), xattrs, hardlinks, symlinks, device nodes, FIFOs, atime
//! and mtime. Xattrs that cannot be set (security.*, user.* on symlinks) are skipped, as containerd
//! does.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::error::at;
use crate::Result;

/// Copies the tree at `src` to `dst`, which must not exist.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links = HashMap::new();
    copy_entry(src, dst, &mut links)
}

fn copy_entry(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    let md = fs::symlink_metadata(src).map_err(at("stat", src))?;
    let ft = md.file_type();
    if !ft.is_dir() && md.nlink() > 1 {
        if let Some(first) = links.get(&(md.dev(), md.ino())) {
            return fs::hard_link(first, dst).map_err(at("link", dst));
        }
        links.insert((md.dev(), md.ino()), dst.to_path_buf());
    }
    if ft.is_dir() {
        fs::create_dir(dst).map_err(at("mkdir", dst))?;
        for entry in fs::read_dir(src).map_err(at("read dir", src))? {
            let entry = entry.map_err(at("read dir", src))?;
            copy_entry(&entry.path(), &dst.join(entry.file_name()), links)?;
        }
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(at("copy", src))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(at("readlink", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(at("symlink", dst))?;
    } else {
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            SFlag::S_IFSOCK
        };
        mknod(dst, kind, Mode::from_bits_truncate(0o600), md.rdev()).map_err(at("mknod", dst))?;
    }
    // Ownership before mode: chown clears setuid/setgid bits.
    lchown(dst, Some(md.uid()), Some(md.gid())).map_err(at("chown", dst))?;
    if !ft.is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(at("chmod", dst))?;
    }
    copy_xattrs(src, dst);
    // Last, since creating children and setting xattrs touch a directory's times.
    let atime = TimeSpec::new(md.atime(), md.atime_nsec());
    let mtime = TimeSpec::new(md.mtime(), md.mtime_nsec());
    utimensat(None, dst, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(at("utimensat", dst))?;
    Ok(())
}

fn cpath(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

/// Best effort, like containerd's native snapshotter: a failure to read or set one attribute
/// does not fail the copy.
fn copy_xattrs(src: &Path, dst: &Path) {
    let (Some(s), Some(d)) = (cpath(src), cpath(dst)) else {
        return;
    };
    let Some(names) = xattr_list(&s) else {
        return;
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        if let Some(value) = xattr_get(&s, &cname) {
            // SAFETY: valid NUL-terminated strings and a buffer of the given length.
            unsafe {
                nix::libc::lsetxattr(
                    d.as_ptr(),
                    cname.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                );
            }
        }
    }
}

/// Calls a size-probing xattr syscall twice: once for the length, once to fill the buffer.
fn probe(mut call: impl FnMut(*mut u8, usize) -> isize) -> Option<Vec<u8>> {
    for _ in 0..4 {
        let n = call(std::ptr::null_mut(), 0);
        if n < 0 {
            return None;
        }
        let mut buf = vec![0u8; n as usize];
        let m = call(buf.as_mut_ptr(), buf.len());
        if m >= 0 {
            buf.truncate(m as usize);
            return Some(buf);
        }
        // ERANGE: the attribute grew between the calls; try again.
        if nix::errno::Errno::last() != nix::errno::Errno::ERANGE {
            return None;
        }
    }
    None
}

fn xattr_list(path: &CString) -> Option<Vec<u8>> {
    // SAFETY: `path` is NUL-terminated; the buffer pointer/length pair comes from `probe`.
    probe(|buf, len| unsafe { nix::libc::llistxattr(path.as_ptr(), buf.cast(), len) })
}

fn xattr_get(path: &CString, name: &CString) -> Option<Vec<u8>> {
    // SAFETY: as above.
    probe(|buf, len| unsafe { nix::libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.cast(), len) })
}

/// Reads one xattr (for tests and the suite).
#[cfg(any(test, feature = "testsuite"))]
pub(crate) fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr_get(&cpath(path)?, &CString::new(name).ok()?)
}

/// Sets one xattr (for tests and the suite).
#[cfg(any(test, feature = "testsuite"))]
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = cpath(path).ok_or(std::io::ErrorKind::InvalidInput)?;
    let n = CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        nix::libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
