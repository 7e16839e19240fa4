//! Making and removing a cgroup's directories in every hierarchy, for a cgroup berth owns with
//! no process of its own in it: a CRI pod's parent, under which runc makes each container's
//! cgroup. runc's cgroupfs driver makes missing parents itself but never removes them, so a
//! parent left to it outlives its pod (one directory per pod in each hierarchy, for good).

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{cgroup_mounts, check_path, context, read_to_string, CgroupMount};

/// The v1 controllers runc's cgroupfs driver makes directories in, and the systemd named
/// hierarchy it joins; a hierarchy with none of them is not runc's to use.
const RUNC_V1: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "name=systemd",
];

/// How long `remove` retries a directory the kernel still reports busy: it lets go of a
/// cgroup a moment after the last process in it was reaped.
const BUSY_FOR: Duration = Duration::from_secs(2);

/// A cgroup path below the root: the root's directories are never berth's to make or remove.
fn check(path: &str) -> io::Result<()> {
    check_path(path)?;
    if path.trim_end_matches('/').is_empty() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "the root cgroup is not made or removed",
        ));
    }
    Ok(())
}

/// The directory of `path` in each hierarchy runc uses (v1 and the unified one), once each.
fn directories(mounts: &[CgroupMount], path: &str) -> Vec<(PathBuf, bool)> {
    let mut out: Vec<(PathBuf, bool)> = Vec::new();
    for m in mounts {
        let cpuset = match &m.v1_options {
            None => false,
            Some(opts) => {
                if !opts.iter().any(|o| RUNC_V1.contains(&o.as_str())) {
                    continue;
                }
                opts.iter().any(|o| o == "cpuset")
            }
        };
        if let Some(dir) = m.locate(path) {
            if !out.iter().any(|(d, _)| *d == dir) {
                out.push((dir, cpuset));
            }
        }
    }
    out
}

/// Make the cgroup `path` (`/k8s.io/<pod>`) and its missing parents in every hierarchy, as
/// runc would on the first container's create: a new cpuset level gets its parent's
/// `cpuset.cpus` and `cpuset.mems` (empty ones refuse every process). Returns the
/// directories, one per hierarchy.
pub fn create(path: &str) -> io::Result<Vec<PathBuf>> {
    check(path)?;
    let dirs = directories(&cgroup_mounts()?, path);
    for (dir, cpuset) in &dirs {
        if *cpuset {
            create_cpuset(dir)?;
        } else {
            fs::create_dir_all(dir)
                .map_err(|e| context(e, format_args!("mkdir {}", dir.display())))?;
        }
    }
    Ok(dirs.into_iter().map(|(dir, _)| dir).collect())
}

fn create_cpuset(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().ok_or_else(|| {
        io::Error::new(ErrorKind::InvalidInput, "a cpuset directory has a parent")
    })?;
    create_cpuset(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(context(e, format_args!("mkdir {}", dir.display()))),
    }
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mine = dir.join(file);
        if !read_to_string(&mine)?.trim().is_empty() {
            continue;
        }
        let value = read_to_string(&parent.join(file))?;
        fs::write(&mine, value.trim())
            .map_err(|e| context(e, format_args!("write {}", mine.display())))?;
    }
    Ok(())
}

/// Where the cgroup `path` is now: its directories, in the hierarchies that have one.
pub fn existing(path: &str) -> io::Result<Vec<PathBuf>> {
    check(path)?;
    Ok(directories(&cgroup_mounts()?, path)
        .into_iter()
        .map(|(dir, _)| dir)
        .filter(|dir| dir.is_dir())
        .collect())
}

/// Remove the cgroup `path` from every hierarchy (only that level: its parents may be
/// shared). A directory already gone is fine; one with a cgroup still in it is an error, as
/// is one still busy after a short wait.
pub fn remove(path: &str) -> io::Result<()> {
    remove_each(path, remove_dir)
}

/// [`remove`] with every cgroup below `path` too, deepest first: what runc left of containers
/// that were never deleted, under a parent that is going.
pub fn remove_tree(path: &str) -> io::Result<()> {
    remove_each(path, remove_dir_tree)
}

fn remove_each(path: &str, remove: fn(&Path) -> io::Result<()>) -> io::Result<()> {
    check(path)?;
    let mut first_error = None;
    for (dir, _) in directories(&cgroup_mounts()?, path) {
        if let Err(e) = remove(&dir) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_dir_tree(dir: &Path) -> io::Result<()> {
    let children = match fs::read_dir(dir) {
        Ok(children) => children,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, format_args!("list {}", dir.display()))),
    };
    for child in children.flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dir_tree(&child.path())?;
        }
    }
    remove_dir(dir)
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + BUSY_FOR;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(context(e, format_args!("rmdir {}", dir.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_mountinfo;

    const HYBRID: &str = "\
30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw
31 24 0:27 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,name=systemd
33 24 0:29 / /sys/fs/cgroup/cpuset rw,nosuid shared:8 - cgroup cgroup rw,cpuset
34 24 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
35 24 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
36 24 0:32 / /sys/fs/cgroup/other rw,nosuid shared:11 - cgroup cgroup rw,name=other
";

    #[test]
    fn each_hierarchy_runc_uses_gets_a_directory() {
        let mounts = parse_mountinfo(HYBRID);
        let dirs = directories(&mounts, "/k8s.io/pod");
        let want: Vec<(PathBuf, bool)> = [
            ("/sys/fs/cgroup/unified/k8s.io/pod", false),
            ("/sys/fs/cgroup/systemd/k8s.io/pod", false),
            ("/sys/fs/cgroup/cpuset/k8s.io/pod", true),
            ("/sys/fs/cgroup/cpu,cpuacct/k8s.io/pod", false),
            ("/sys/fs/cgroup/memory/k8s.io/pod", false),
        ]
        .iter()
        .map(|(p, c)| (PathBuf::from(p), *c))
        .collect();
        assert_eq!(dirs, want);
    }

    #[test]
    fn paths_outside_the_hierarchy_are_refused() {
        for bad in ["k8s.io/pod", "/", "/k8s.io/../etc", "/a/../../b"] {
            assert_eq!(
                create(bad).expect_err(bad).kind(),
                ErrorKind::InvalidInput,
                "{bad}"
            );
            assert_eq!(
                remove(bad).expect_err(bad).kind(),
                ErrorKind::InvalidInput,
                "{bad}"
            );
        }
    }
}
