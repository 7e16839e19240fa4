//! The build context: a directory (or a tar read into a private temporary one), listed once
//! without following a single symlink, minus what `.dockerignore` excludes, under a size bound.
//! COPY and ADD sources are chosen from that listing, so nothing outside the context can be
//! named (`COPY ../x` is refused) and a symlink is only ever copied as a symlink; file bytes
//! are read through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the context's root.
//! Each source set has a digest of its contents and metadata, for the layer cache.

use crate::dockerignore::DockerIgnore;
use crate::Error;
use nix::dir::Dir;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Bounds on what a context may hold (`berth build` refuses a bigger one, saying so).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 30,
            max_entries: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File { size: u64 },
    Symlink { target: String },
}

/// One path of the context, as `lstat` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context's root, `/`-separated, never empty (the root itself is not one).
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One chosen entry: `rel` is its path below the source that named it ("" for that source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    pub entry: Entry,
    pub rel: String,
}

/// What one source of a COPY named: a file or symlink, or a directory's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub is_dir: bool,
    /// The base name the source has in the context ("" for the context's root).
    pub name: String,
    pub entries: Vec<Picked>,
}

pub struct Context {
    root: OwnedFd,
    entries: Vec<Entry>,
    bytes: u64,
    _extracted: Option<tempfile::TempDir>,
}

fn io(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(format!("build context: {what}: {e}"))
}

fn open_beneath(root: &OwnedFd, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(root.as_raw_fd(), rel, how)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Lexically cleans a COPY source against the context's root; `None` when it leaves it.
fn clean_source(source: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Go's filepath.Match on whole paths: `*` and `?` stay within a segment.
fn glob_regex(pattern: &str) -> Result<regex::Regex, Error> {
    let mut out = String::from("^");
    let mut in_class = false;
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push_str(&regex::escape(&n.to_string()));
                }
            }
            c if in_class => {
                if c == '[' || c == '&' || c == '~' {
                    out.push('\\');
                }
                out.push(c);
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '[' => {
                in_class = true;
                out.push('[');
                let rest = chars.as_str();
                if let Some(stripped) = rest.strip_prefix(['!', '^']) {
                    out.push('^');
                    chars = stripped.chars();
                }
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out.push('$');
    regex::Regex::new(&out).map_err(|e| Error::new(format!("bad source pattern {pattern:?}: {e}")))
}

impl Context {
    /// Lists `dir`, honouring its `.dockerignore`.
    pub fn open_dir(dir: &Path, limits: &Limits) -> Result<Context, Error> {
        let root = open_root(dir)?;
        let ignore = match open_beneath(&root, ".dockerignore", OFlag::O_RDONLY) {
            Ok(fd) => {
                let mut text = String::new();
                File::from(fd)
                    .take(1 << 20)
                    .read_to_string(&mut text)
                    .map_err(|e| io("read .dockerignore", e))?;
                DockerIgnore::parse(&text)?
            }
            Err(nix::errno::Errno::ENOENT) => DockerIgnore::default(),
            Err(e) => return Err(io(".dockerignore", e)),
        };
        Context::list(root, &ignore, limits)
    }

    /// Lists `dir` under the given rules instead of its own `.dockerignore`: docker's
    /// `<Dockerfile>.dockerignore` beside a Dockerfile, or none at all for a stage's root
    /// filesystem read by `COPY --from`.
    pub fn open_dir_with(
        dir: &Path,
        ignore: &DockerIgnore,
        limits: &Limits,
    ) -> Result<Context, Error> {
        Context::list(open_root(dir)?, ignore, limits)
    }

    fn list(root: OwnedFd, ignore: &DockerIgnore, limits: &Limits) -> Result<Context, Error> {
        let mut context = Context {
            root,
            entries: Vec::new(),
            bytes: 0,
            _extracted: None,
        };
        let root_fd = context.root.as_raw_fd();
        context.walk(root_fd, "", ignore, limits)?;
        context.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(context)
    }

    /// Reads a tar stream (docker's `-` context) into a private temporary directory, bounded
    /// by `limits` before a byte lands, then lists it as [`Context::open_dir`] does.
    pub fn from_tar(reader: impl Read, limits: &Limits) -> Result<Context, Error> {
        let temp = tempfile::Builder::new()
            .prefix("berth-build-context-")
            .tempdir()
            .map_err(|e| io("temporary directory", e))?;
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_unpack_xattrs(false);
        let mut bytes: u64 = 0;
        let mut count = 0usize;
        for entry in archive.entries().map_err(|e| io("tar", e))? {
            let mut entry = entry.map_err(|e| io("tar", e))?;
            count += 1;
            bytes = bytes.saturating_add(entry.header().size().unwrap_or(0));
            if bytes > limits.max_bytes || count > limits.max_entries {
                return Err(too_big(bytes, count, limits));
            }
            // unpack_in refuses `..` and absolute names and never writes through a symlink.
            let ok = entry.unpack_in(temp.path()).map_err(|e| io("tar", e))?;
            if !ok {
                let name = entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                return Err(Error::new(format!(
                    "build context: tar entry {name:?} points outside the context"
                )));
            }
        }
        let mut context = Context::open_dir(temp.path(), limits)?;
        context._extracted = Some(temp);
        Ok(context)
    }

    fn walk(
        &mut self,
        dirfd: i32,
        prefix: &str,
        ignore: &DockerIgnore,
        limits: &Limits,
    ) -> Result<(), Error> {
        let mut dir = Dir::openat(
            Some(dirfd),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(&format!("list {prefix:?}"), e))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io(&format!("list {prefix:?}"), e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = std::str::from_utf8(name)
                .map_err(|_| {
                    Error::new(format!(
                        "build context: a name under {prefix:?} is not UTF-8"
                    ))
                })?
                .to_string();
            names.push(name);
        }
        for name in names {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let excluded = ignore.excluded(&path);
            let st = fstatat(
                Some(dirfd),
                name.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io(&format!("stat {path}"), e))?;
            let ftype = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
            let mode = st.st_mode & 0o7777;
            let kind = if ftype == SFlag::S_IFDIR {
                EntryKind::Dir
            } else if ftype == SFlag::S_IFREG {
                EntryKind::File {
                    size: st.st_size as u64,
                }
            } else if ftype == SFlag::S_IFLNK {
                let target = nix::fcntl::readlinkat(Some(dirfd), name.as_str())
                    .map_err(|e| io(&format!("readlink {path}"), e))?;
                EntryKind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            } else {
                // Sockets, FIFOs and devices have no place in an image layer built from files.
                continue;
            };
            if !excluded {
                if let EntryKind::File { size } = kind {
                    self.bytes = self.bytes.saturating_add(size);
                }
                self.entries.push(Entry {
                    path: path.clone(),
                    kind: kind.clone(),
                    mode,
                    uid: st.st_uid,
                    gid: st.st_gid,
                });
                if self.bytes > limits.max_bytes || self.entries.len() > limits.max_entries {
                    return Err(too_big(self.bytes, self.entries.len(), limits));
                }
            }
            if kind == EntryKind::Dir && (!excluded || ignore.has_exceptions()) {
                let sub = nix::fcntl::openat(
                    Some(dirfd),
                    name.as_str(),
                    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io(&format!("open {path}"), e))?;
                // SAFETY: openat returned a new descriptor that nothing else owns.
                let sub = unsafe { OwnedFd::from_raw_fd(sub) };
                self.walk(sub.as_raw_fd(), &path, ignore, limits)?;
            }
        }
        Ok(())
    }

    /// Every entry, sorted by path.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Bytes of regular files in the context.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Opens a listed regular file for reading, never through a symlink.
    pub fn open_file(&self, path: &str) -> Result<File, Error> {
        open_beneath(&self.root, path, OFlag::O_RDONLY)
            .map(File::from)
            .map_err(|e| io(&format!("open {path}"), e))
    }

    /// Resolves a COPY/ADD's sources (already substituted) against the listing.
    pub fn select(&self, keyword: &str, sources: &[String]) -> Result<Vec<Source>, Error> {
        let mut out = Vec::new();
        for source in sources {
            let Some(clean) = clean_source(source) else {
                return Err(Error::new(format!(
                    "{keyword} {source}: the path is outside the build context"
                )));
            };
            let roots: Vec<&Entry> = if has_glob(&clean) {
                let re = glob_regex(&clean)?;
                self.entries
                    .iter()
                    .filter(|e| re.is_match(&e.path))
                    .collect()
            } else if clean.is_empty() {
                out.push(Source {
                    is_dir: true,
                    name: String::new(),
                    entries: self.under(""),
                });
                continue;
            } else {
                self.entries.iter().filter(|e| e.path == clean).collect()
            };
            if roots.is_empty() {
                return Err(Error::new(format!(
                    "{keyword} {source}: not found in the build context (or excluded by .dockerignore)"
                )));
            }
            for root in roots {
                let name = root
                    .path
                    .rsplit('/')
                    .next()
                    .unwrap_or(&root.path)
                    .to_string();
                if root.kind == EntryKind::Dir {
                    out.push(Source {
                        is_dir: true,
                        name,
                        entries: self.under(&root.path),
                    });
                } else {
                    out.push(Source {
                        is_dir: false,
                        name,
                        entries: vec![Picked {
                            entry: root.clone(),
                            rel: String::new(),
                        }],
                    });
                }
            }
        }
        Ok(out)
    }

    fn under(&self, dir: &str) -> Vec<Picked> {
        self.entries
            .iter()
            .filter_map(|e| {
                let rel = if dir.is_empty() {
                    Some(e.path.as_str())
                } else {
                    e.path.strip_prefix(dir).and_then(|r| r.strip_prefix('/'))
                };
                rel.map(|rel| Picked {
                    entry: e.clone(),
                    rel: rel.to_string(),
                })
            })
            .collect()
    }

    /// sha256 over the sources' names, kinds, modes, owners, sizes, link targets and file
    /// bytes; mtimes are left out, so a touched but unchanged file still hits the cache.
    pub fn digest(&self, sources: &[Source]) -> Result<String, Error> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (i, source) in sources.iter().enumerate() {
            h.update(format!("source {i} {} {}\0", source.is_dir, source.name));
            for p in &source.entries {
                let e = &p.entry;
                h.update(format!("{}\0{:o} {}:{}\0", p.rel, e.mode, e.uid, e.gid));
                match &e.kind {
                    EntryKind::Dir => h.update(b"dir\0"),
                    EntryKind::Symlink { target } => h.update(format!("symlink {target}\0")),
                    EntryKind::File { size } => {
                        h.update(format!("file {size}\0"));
                        let mut file = self.open_file(&e.path)?;
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = file
                                .read(&mut buf)
                                .map_err(|err| io(&format!("read {}", e.path), err))?;
                            if n == 0 {
                                break;
                            }
                            h.update(&buf[..n]);
                        }
                    }
                }
            }
        }
        Ok(format!("sha256:{}", hex::encode(h.finalize())))
    }
}

fn open_root(dir: &Path) -> Result<OwnedFd, Error> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(&format!("open {}", dir.display()), e))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn too_big(bytes: u64, entries: usize, limits: &Limits) -> Error {
    Error::new(format!(
        "build context too big: over {} bytes or {} entries (read {bytes} bytes, {entries} entries so far); \
         exclude what the build does not need in .dockerignore",
        limits.max_bytes, limits.max_entries
    ))
}

#[cfg(test)]
mod tests;
