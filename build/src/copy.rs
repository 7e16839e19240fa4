//! COPY and ADD into a root filesystem the caller has mounted (a snapshot's mounts in a
//! private temporary directory): every destination is resolved with `openat2(RESOLVE_IN_ROOT)`
//! from the root's descriptor, so an image's own symlinks (`/usr/bin -> /bin`, or a planted
//! `/x -> /etc`) resolve inside it and nothing on the host is written. Owners are 0:0 unless
//! `--chown` says otherwise (names read from the root's /etc/passwd and /etc/group the same
//! way); modes are the context's unless `--chmod`. ADD unpacks a local tar (plain or gzip).

use crate::context::{Context, EntryKind, Source};
use crate::Error;
use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// What COPY/ADD writes: the context's sources, the absolute destination (a trailing `/` marks
/// a directory), and the flags as [`crate::dockerfile::CopyAction`] has them.
pub struct CopyRequest<'a> {
    pub sources: &'a [Source],
    pub dest: &'a str,
    pub chown: Option<&'a str>,
    pub chmod: Option<u32>,
    pub add: bool,
}

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(format!("{what}: {e}"))
}

fn in_root(root: &OwnedFd, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    let rel = path.trim_start_matches('/');
    let fd = openat2(
        root.as_raw_fd(),
        if rel.is_empty() { "." } else { rel },
        how,
    )?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn split(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, name)) => (
            if parent.is_empty() {
                "/".to_string()
            } else {
                parent.to_string()
            },
            name.to_string(),
        ),
        None => ("/".to_string(), trimmed.to_string()),
    }
}

fn join(dir: &str, rel: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if rel.is_empty() {
        if dir.is_empty() {
            "/".to_string()
        } else {
            dir.to_string()
        }
    } else {
        format!("{dir}/{rel}")
    }
}

/// Makes every missing directory of `path` (0755, root-owned, as docker does for parents) and
/// returns it opened. A dangling symlink on the way is followed inside the root and its
/// target made, as docker does for an image's `/var/run -> /run`.
fn ensure_dir(root: &OwnedFd, path: &str) -> Result<OwnedFd, Error> {
    ensure_dir_depth(root, path, 0)
}

fn ensure_dir_depth(root: &OwnedFd, path: &str, depth: usize) -> Result<OwnedFd, Error> {
    if depth > 40 {
        return Err(Error::new(format!(
            "{path}: too many levels of symbolic links"
        )));
    }
    let mut current = String::from("/");
    let mut fd = in_root(root, "/", OFlag::O_DIRECTORY | OFlag::O_RDONLY)
        .map_err(|e| err("open the root filesystem", e))?;
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (n, comp) in comps.iter().enumerate() {
        let parent = current.clone();
        current = join(&current, comp);
        match in_root(root, &current, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
            Ok(next) => fd = next,
            Err(Errno::ENOENT) => {
                match mkdirat(Some(fd.as_raw_fd()), *comp, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => {
                        // A dangling symlink: make its target, resolved from where it lies.
                        let link = nix::fcntl::readlinkat(Some(fd.as_raw_fd()), *comp)
                            .map_err(|e| err(&format!("open {current}"), e))?;
                        let link = link.to_string_lossy();
                        let mut next = if link.starts_with('/') {
                            link.to_string()
                        } else {
                            join(&parent, &link)
                        };
                        for rest in &comps[n + 1..] {
                            next = join(&next, rest);
                        }
                        return ensure_dir_depth(root, &next, depth + 1);
                    }
                    Err(e) => return Err(err(&format!("mkdir {current}"), e)),
                }
                fd = in_root(root, &current, OFlag::O_DIRECTORY | OFlag::O_RDONLY)
                    .map_err(|e| err(&format!("open {current}"), e))?;
            }
            Err(Errno::ENOTDIR) => {
                return Err(Error::new(format!(
                    "{current} exists and is not a directory"
                )))
            }
            Err(e) => return Err(err(&format!("open {current}"), e)),
        }
    }
    Ok(fd)
}

fn is_dir(root: &OwnedFd, path: &str) -> bool {
    in_root(root, path, OFlag::O_DIRECTORY | OFlag::O_RDONLY).is_ok()
}

/// Reads `name` (user or group) from the root's `file` (`/etc/passwd` or `/etc/group`).
fn lookup_id(root: &OwnedFd, file: &str, name: &str) -> Result<u32, Error> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let mut text = String::new();
    let fd = in_root(root, file, OFlag::O_RDONLY).map_err(|e| {
        Error::new(format!(
            "--chown={name}: no {file} in the image to look it up ({e})"
        ))
    })?;
    File::from(fd)
        .take(4 << 20)
        .read_to_string(&mut text)
        .map_err(|e| err(file, e))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1).and_then(|id| id.parse().ok()))?
        })
        .ok_or_else(|| Error::new(format!("--chown: {name:?} is not in the image's {file}")))
}

/// docker's `--chown=USER[:GROUP]`: a user without a group takes the user's id as group when
/// numeric, else the user's primary group from /etc/passwd.
pub fn resolve_chown(root: &OwnedFd, chown: &str) -> Result<(u32, u32), Error> {
    let (user, group) = match chown.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (chown, None),
    };
    let uid = lookup_id(root, "/etc/passwd", user)?;
    let gid = match group {
        Some(g) => lookup_id(root, "/etc/group", g)?,
        None if user.parse::<u32>().is_ok() => uid,
        None => {
            let mut text = String::new();
            let fd =
                in_root(root, "/etc/passwd", OFlag::O_RDONLY).map_err(|e| err("/etc/passwd", e))?;
            File::from(fd)
                .take(4 << 20)
                .read_to_string(&mut text)
                .map_err(|e| err("/etc/passwd", e))?;
            text.lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.first() == Some(&user)).then(|| f.get(3).and_then(|g| g.parse().ok()))?
                })
                .unwrap_or(uid)
        }
    };
    Ok((uid, gid))
}

fn remove_non_dir(parent: &OwnedFd, name: &str) -> Result<(), Error> {
    match unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => Err(Error::new(format!(
            "cannot replace the directory {name:?} with a file"
        ))),
        Err(e) => Err(err(&format!("replace {name}"), e)),
    }
}

fn is_tar(file: &mut File) -> bool {
    let mut head = [0u8; 512];
    let n = file.read(&mut head).unwrap_or(0);
    let _ = file.rewind();
    if n >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        return true;
    }
    // Old (v7) headers carry no magic; a valid header checksum is what marks a tar, as in
    // docker's archive detection.
    if n < 512 || head.iter().all(|b| *b == 0) {
        return false;
    }
    let stored = std::str::from_utf8(&head[148..156])
        .ok()
        .map(|t| t.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|t| u32::from_str_radix(t, 8).ok());
    let sum: u32 = head
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(*b)
            }
        })
        .sum();
    stored == Some(sum)
}

fn unpack(file: File, root: &OwnedFd, dest: &str) -> Result<(), Error> {
    let dir = ensure_dir(root, dest)?;
    let mut gz_check = file;
    let mut magic = [0u8; 2];
    let gz = gz_check.read(&mut magic).unwrap_or(0) == 2 && magic == [0x1f, 0x8b];
    gz_check.rewind().map_err(|e| err("ADD", e))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(gz_check))
    } else {
        Box::new(gz_check)
    };
    // The destination as resolved inside the root (never a host path built by joining, which
    // would follow the image's absolute symlinks on the host); tar's unpack_in canonicalises
    // it and refuses `..` and entries through symlinks that leave it.
    let target = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(|e| err("ADD: tar", e))? {
        let mut entry = entry.map_err(|e| err("ADD: tar", e))?;
        let ok = entry.unpack_in(&target).map_err(|e| err("ADD: tar", e))?;
        if !ok {
            return Err(Error::new(
                "ADD: a tar entry points outside its destination",
            ));
        }
    }
    Ok(())
}

/// Writes a COPY/ADD into the root filesystem mounted at `rootfs`.
pub fn copy_into(context: &Context, rootfs: &Path, req: &CopyRequest<'_>) -> Result<(), Error> {
    let root_fd = nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(&format!("open {}", rootfs.display()), e))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let root = unsafe { OwnedFd::from_raw_fd(root_fd) };
    let (uid, gid) = match req.chown {
        Some(c) => resolve_chown(&root, c)?,
        None => (0, 0),
    };
    let owner = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let many = req.sources.len() > 1;
    let dest_is_dir = req.dest.ends_with('/') || many || is_dir(&root, req.dest);
    for source in req.sources {
        let base = if source.is_dir || !dest_is_dir {
            req.dest.to_string()
        } else {
            join(req.dest, &source.name)
        };
        for picked in &source.entries {
            let target = join(&base, &picked.rel);
            let entry = &picked.entry;
            let mode = Mode::from_bits_truncate(req.chmod.unwrap_or(entry.mode));
            match &entry.kind {
                EntryKind::Dir => {
                    let fd = ensure_dir(&root, &target)?;
                    fchown(fd.as_raw_fd(), owner.0, owner.1)
                        .map_err(|e| err(&format!("chown {target}"), e))?;
                    fchmod(fd.as_raw_fd(), mode).map_err(|e| err(&format!("chmod {target}"), e))?;
                }
                EntryKind::File { .. } => {
                    let mut src = context.open_file(&entry.path)?;
                    // ADD unpacks a tar named as a source, not one inside a copied directory.
                    if req.add && !source.is_dir && is_tar(&mut src) {
                        unpack(src, &root, req.dest)?;
                        continue;
                    }
                    let (parent, name) = split(&target);
                    let parent_fd = ensure_dir(&root, &parent)?;
                    remove_non_dir(&parent_fd, &name)?;
                    let fd = nix::fcntl::openat(
                        Some(parent_fd.as_raw_fd()),
                        name.as_str(),
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    )
                    .map_err(|e| err(&format!("create {target}"), e))?;
                    // SAFETY: openat returned a new descriptor that nothing else owns.
                    let mut out = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                    std::io::copy(&mut src, &mut out)
                        .map_err(|e| err(&format!("write {target}"), e))?;
                    fchown(out.as_raw_fd(), owner.0, owner.1)
                        .map_err(|e| err(&format!("chown {target}"), e))?;
                    fchmod(out.as_raw_fd(), mode)
                        .map_err(|e| err(&format!("chmod {target}"), e))?;
                }
                EntryKind::Symlink { target: link } => {
                    let (parent, name) = split(&target);
                    let parent_fd = ensure_dir(&root, &parent)?;
                    remove_non_dir(&parent_fd, &name)?;
                    symlinkat(link.as_str(), Some(parent_fd.as_raw_fd()), name.as_str())
                        .map_err(|e| err(&format!("symlink {target}"), e))?;
                    fchownat(
                        Some(parent_fd.as_raw_fd()),
                        name.as_str(),
                        owner.0,
                        owner.1,
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| err(&format!("chown {target}"), e))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
