//! Mounts as containerd describes them (type, source, options), and mounting them the way
//! containerd's `mount.Mount.Mount` does: flag options become mount flags, the rest the data
//! string; a read-only bind is remounted read-only; an overlay whose options exceed a page has its
//! lowerdirs made relative to their common directory.

use std::path::{Path, PathBuf};

use nix::mount::{mount as sys_mount, umount2, MntFlags, MsFlags};

use crate::error::at;
use crate::{Error, Result};

/// One mount, as in containerd's `types.Mount` (the target is empty in snapshotter answers; the
/// caller picks it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    pub r#type: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

/// The kernel copies at most one page of mount data.
const PAGE_SIZE: usize = 4096;

/// Flag options, as containerd's `parseMountOptions`: (name, clear?, flag).
const FLAGS: &[(&str, bool, MsFlags)] = &[
    ("async", true, MsFlags::MS_SYNCHRONOUS),
    ("atime", true, MsFlags::MS_NOATIME),
    ("bind", false, MsFlags::MS_BIND),
    ("defaults", false, MsFlags::empty()),
    ("dev", true, MsFlags::MS_NODEV),
    ("diratime", true, MsFlags::MS_NODIRATIME),
    ("dirsync", false, MsFlags::MS_DIRSYNC),
    ("exec", true, MsFlags::MS_NOEXEC),
    ("mand", false, MsFlags::MS_MANDLOCK),
    ("noatime", false, MsFlags::MS_NOATIME),
    ("nodev", false, MsFlags::MS_NODEV),
    ("nodiratime", false, MsFlags::MS_NODIRATIME),
    ("noexec", false, MsFlags::MS_NOEXEC),
    ("nomand", true, MsFlags::MS_MANDLOCK),
    ("norelatime", true, MsFlags::MS_RELATIME),
    ("nostrictatime", true, MsFlags::MS_STRICTATIME),
    ("nosuid", false, MsFlags::MS_NOSUID),
    ("rbind", false, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    ("relatime", false, MsFlags::MS_RELATIME),
    ("remount", false, MsFlags::MS_REMOUNT),
    ("ro", false, MsFlags::MS_RDONLY),
    ("rw", true, MsFlags::MS_RDONLY),
    ("strictatime", false, MsFlags::MS_STRICTATIME),
    ("suid", true, MsFlags::MS_NOSUID),
    ("sync", false, MsFlags::MS_SYNCHRONOUS),
    ("private", false, MsFlags::MS_PRIVATE),
    (
        "rprivate",
        false,
        MsFlags::MS_PRIVATE.union(MsFlags::MS_REC),
    ),
    ("shared", false, MsFlags::MS_SHARED),
    ("rshared", false, MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", false, MsFlags::MS_SLAVE),
    ("rslave", false, MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("unbindable", false, MsFlags::MS_UNBINDABLE),
    (
        "runbindable",
        false,
        MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC),
    ),
];

fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        match FLAGS.iter().find(|(name, _, _)| name == o) {
            Some((_, true, f)) => flags.remove(*f),
            Some((_, false, f)) => flags.insert(*f),
            None => data.push(o),
        }
    }
    (flags, data.join(","))
}

/// containerd's `compactLowerdirOption`: lowerdirs relative to the parent of their longest common
/// prefix (for snapshot dirs `<root>/snapshots/<id>/fs`, that is `<root>/snapshots/`).
fn compact_lowerdirs(options: &[String]) -> Option<(PathBuf, Vec<String>)> {
    let idx = options.iter().position(|o| o.starts_with("lowerdir="))?;
    let dirs: Vec<&str> = options[idx]["lowerdir=".len()..].split(':').collect();
    if dirs.len() < 2 {
        return None;
    }
    let first = dirs[0].as_bytes();
    let common = dirs[1..].iter().fold(first.len(), |n, d| {
        first[..n]
            .iter()
            .zip(d.as_bytes())
            .take_while(|(a, b)| a == b)
            .count()
    });
    let common = std::str::from_utf8(&first[..common]).ok()?;
    // Go's path.Dir: everything before the last slash ("/r/snapshots/1" and "/r/snapshots/" both
    // give "/r/snapshots"), since ids share digits.
    let dir = match common.rfind('/') {
        Some(i) if i > 0 => &common[..i],
        _ => return None,
    };
    let rel: Vec<&str> = dirs.iter().map(|d| &d[dir.len() + 1..]).collect();
    let mut out: Vec<String> = options.to_vec();
    out.remove(idx);
    out.push(format!("lowerdir={}", rel.join(":")));
    Some((PathBuf::from(dir), out))
}

impl Mount {
    /// Mounts this at `target`, as containerd's `Mount.Mount` does.
    pub fn mount(&self, target: &Path) -> Result<()> {
        let mut options = self.options.clone();
        // Held open until the mount is made: overlayfs names the idmapped lowers by fd.
        let mut _idmapped = Vec::new();
        if crate::idmap::wanted(&options) {
            if self.r#type == "overlay" {
                (options, _idmapped) = crate::idmap::apply_to_overlay(&options)?;
            } else {
                // A bind of a base layer has no lowers to show through a map.
                options.retain(|o| !crate::idmap::wanted(std::slice::from_ref(o)));
            }
        }
        let mut chdir = None;
        let size: usize = options.iter().map(|o| o.len() + 1).sum();
        if self.r#type == "overlay" && size >= PAGE_SIZE - 512 {
            if let Some((dir, compacted)) = compact_lowerdirs(&options) {
                chdir = Some(dir);
                options = compacted;
            }
        }
        let (flags, data) = parse_options(&options);
        if data.len() >= PAGE_SIZE {
            return Err(Error::invalid(format!(
                "mount options are too long ({} bytes)",
                data.len()
            )));
        }
        let propagation =
            MsFlags::MS_SHARED | MsFlags::MS_PRIVATE | MsFlags::MS_SLAVE | MsFlags::MS_UNBINDABLE;
        let oflags = flags - propagation;
        let fstype = (!self.r#type.is_empty()).then_some(self.r#type.as_str());
        let data_opt = (!data.is_empty()).then_some(data.as_str());
        let source = self.source.as_str();
        let what = format!("mount {} ({}) on", self.r#type, self.source);
        if !flags.contains(MsFlags::MS_REMOUNT) || !data.is_empty() {
            match chdir {
                None => sys_mount(Some(source), target, fstype, oflags, data_opt),
                Some(dir) => mount_in_dir(&dir, source, target, fstype, oflags, data_opt),
            }
            .map_err(at(&what, target))?;
        }
        if flags.intersects(propagation) {
            let pflags = flags & (propagation | MsFlags::MS_REC | MsFlags::MS_SILENT);
            sys_mount(None::<&str>, target, None::<&str>, pflags, None::<&str>)
                .map_err(at("set propagation of", target))?;
        }
        // MS_RDONLY is ignored on the first bind mount: a read-only bind needs a remount.
        if oflags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
            sys_mount(
                None::<&str>,
                target,
                None::<&str>,
                oflags | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(at("remount read-only", target))?;
        }
        Ok(())
    }
}

/// Mounts with relative lowerdirs: on a helper thread whose working directory is unshared
/// (CLONE_FS), so the chdir does not move the rest of the process.
fn mount_in_dir(
    dir: &Path,
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    let target = if target.is_absolute() {
        target.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|_| nix::errno::Errno::EINVAL)?
            .join(target)
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare only detaches this thread's fs context; no memory is involved.
            if unsafe { nix::libc::unshare(nix::libc::CLONE_FS) } != 0 {
                return Err(nix::errno::Errno::last());
            }
            nix::unistd::chdir(dir)?;
            sys_mount(Some(source), &target, fstype, flags, data)
        })
        .join()
        .unwrap_or(Err(nix::errno::Errno::EIO))
    })
}

/// Mounts `mounts` in order on `target` (containerd's `mount.All`).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for m in mounts {
        m.mount(target)?;
    }
    Ok(())
}

/// Unmounts everything stacked on `target` (containerd's `UnmountAll`); not mounted is fine.
pub fn unmount(target: &Path) -> Result<()> {
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(e) => return Err(at("unmount", target)(e)),
        }
    }
}

/// Unmounts every mount at or below `dir` as /proc/self/mountinfo lists them, deepest first;
/// none is fine, so it can be run again. A mount that is busy is detached (`MNT_DETACH`)
/// instead: a process of this mount namespace may still hold a file or working directory in it
/// (`runc init` starts in the rootfs before it enters the container's namespace, and a runtime
/// orphaned by a killed shim may still run), and a detached mount is no longer reachable through
/// `dir`, so removing `dir` afterwards cannot reach the files it mounted.
pub fn unmount_under(dir: &Path) -> Result<()> {
    // mountinfo names the resolved path.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    let mut points = mount_points_at_or_below(&table, &dir);
    // Deepest first; a point mounted twice is listed twice and unmounted twice.
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        match umount2(&point, MntFlags::empty()) {
            // EINVAL: not a mount point (any more); ENOENT: its directory went with a parent.
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(nix::errno::Errno::EBUSY) => match umount2(&point, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(at("detach", &point)(e)),
            },
            Err(e) => return Err(at("unmount", &point)(e)),
        }
    }
    Ok(())
}

/// The mount points of a mountinfo table at or below `dir`, in table order.
/// The upperdir of `upper` when `upper` is an overlay stacked on exactly the tree `lower`
/// mounts (a bind of its one lowerdir, or a lowerdir-only overlay of the same list): every path
/// where the two trees differ is then named in that upperdir, so a differ need walk only it.
/// `None` for any other pair, idmapped overlays included (their lowers are seen remapped).
pub fn overlay_upperdir_over(lower: &[Mount], upper: &[Mount]) -> Option<PathBuf> {
    let [upper] = upper else { return None };
    let [lower] = lower else { return None };
    if upper.r#type != "overlay" {
        return None;
    }
    let option = |m: &Mount, key: &str| {
        let mut found = m.options.iter().filter_map(|o| o.strip_prefix(key));
        match (found.next(), found.next()) {
            (Some(v), None) => Some(v.to_string()),
            _ => None,
        }
    };
    if ["uidmap=", "gidmap="]
        .iter()
        .any(|k| upper.options.iter().any(|o| o.starts_with(k)))
    {
        return None;
    }
    let upperdir = option(upper, "upperdir=")?;
    let lowerdirs = option(upper, "lowerdir=")?;
    let same_tree = match lower.r#type.as_str() {
        "bind" => lower.source == lowerdirs && !lowerdirs.contains(':'),
        "overlay" => {
            option(lower, "upperdir=").is_none()
                && option(lower, "lowerdir=").as_deref() == Some(lowerdirs.as_str())
        }
        _ => false,
    };
    same_tree.then(|| PathBuf::from(upperdir))
}

fn mount_points_at_or_below(table: &str, dir: &Path) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // At most \377: a byte.
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            (b'0'..=b'3').contains(&d[0]) && d[1..].iter().all(|b| (b'0'..=b'7').contains(b))
        });
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = parse_options(&s(&["ro", "rbind"]));
        assert_eq!(f, MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(d, "");
        let (f, d) = parse_options(&s(&["index=off", "workdir=/w", "rw", "lowerdir=/a:/b"]));
        assert_eq!(f, MsFlags::empty());
        assert_eq!(d, "index=off,workdir=/w,lowerdir=/a:/b");
    }

    #[test]
    fn mount_points_below_a_dir_come_from_mountinfo() {
        let table = "\
22 1 0:21 / / rw - ext4 /dev/vda rw
90 22 0:50 / /s/tasks/ns/a/rootfs rw - overlay overlay rw,lowerdir=/x
91 90 0:51 / /s/tasks/ns/a/rootfs/dev rw - tmpfs tmpfs rw
92 22 0:52 / /s/tasks/ns/ab/rootfs rw - overlay overlay rw
93 22 0:53 / /s/tasks/ns/a\\040b/rootfs rw - overlay overlay rw
94 90 0:50 / /s/tasks/ns/a/rootfs rw - overlay overlay rw
";
        let below = |d: &str| mount_points_at_or_below(table, Path::new(d));
        assert_eq!(
            below("/s/tasks/ns/a"),
            [
                "/s/tasks/ns/a/rootfs",
                "/s/tasks/ns/a/rootfs/dev",
                "/s/tasks/ns/a/rootfs"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            below("/s/tasks/ns/a b"),
            [PathBuf::from("/s/tasks/ns/a b/rootfs")]
        );
        assert!(below("/s/tasks/other").is_empty());
        assert_eq!(unescape_mountinfo("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape_mountinfo("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn lowerdirs_compact_to_the_snapshots_dir() {
        let opts = s(&[
            "index=off",
            "lowerdir=/r/snapshots/12/fs:/r/snapshots/1/fs",
            "ro",
        ]);
        let (dir, out) = compact_lowerdirs(&opts).expect("compacts");
        assert_eq!(dir, Path::new("/r/snapshots"));
        assert_eq!(out, s(&["index=off", "ro", "lowerdir=12/fs:1/fs"]));
        assert!(compact_lowerdirs(&s(&["lowerdir=/a/fs"])).is_none());
        assert!(compact_lowerdirs(&s(&["lowerdir=/a/fs:/b/fs"])).is_none());
        let (dir, out) =
            compact_lowerdirs(&s(&["lowerdir=/r/s/12/fs:/r/s/34/fs"])).expect("compacts");
        assert_eq!(
            (dir.as_path(), out),
            (Path::new("/r/s"), s(&["lowerdir=12/fs:34/fs"]))
        );
    }

    #[test]
    fn an_overlay_upperdir_guides_only_over_its_own_lowers() {
        let m = |t: &str, src: &str, o: &[&str]| Mount {
            r#type: t.into(),
            source: src.into(),
            target: String::new(),
            options: s(o),
        };
        let active = |lowers: &str| {
            m(
                "overlay",
                "overlay",
                &["index=off", "workdir=/r/3/work", "upperdir=/r/3/fs", lowers],
            )
        };
        let one = active("lowerdir=/r/2/fs");
        let two = active("lowerdir=/r/2/fs:/r/1/fs");
        let bind = |src: &str| m("bind", src, &["ro", "rbind"]);
        let view2 = m(
            "overlay",
            "overlay",
            &["index=off", "lowerdir=/r/2/fs:/r/1/fs"],
        );
        let upper = Some(PathBuf::from("/r/3/fs"));
        assert_eq!(
            overlay_upperdir_over(&[bind("/r/2/fs")], std::slice::from_ref(&one)),
            upper
        );
        assert_eq!(
            overlay_upperdir_over(std::slice::from_ref(&view2), std::slice::from_ref(&two)),
            upper
        );
        // Another tree below, another stack, or no tree at all: no guide.
        assert_eq!(
            overlay_upperdir_over(&[bind("/r/1/fs")], std::slice::from_ref(&one)),
            None
        );
        assert_eq!(
            overlay_upperdir_over(&[bind("/r/2/fs")], std::slice::from_ref(&two)),
            None
        );
        assert_eq!(
            overlay_upperdir_over(std::slice::from_ref(&view2), std::slice::from_ref(&one)),
            None
        );
        assert_eq!(overlay_upperdir_over(&[], std::slice::from_ref(&one)), None);
        assert_eq!(
            overlay_upperdir_over(std::slice::from_ref(&two), std::slice::from_ref(&two)),
            None
        );
        // A container with no parent is a bind: nothing to guide by.
        assert_eq!(
            overlay_upperdir_over(&[], &[m("bind", "/r/3/fs", &["rw", "rbind"])]),
            None
        );
        let mut mapped = one.clone();
        mapped.options.push("uidmap=0:100000:65536".into());
        assert_eq!(overlay_upperdir_over(&[bind("/r/2/fs")], &[mapped]), None);
    }
}
