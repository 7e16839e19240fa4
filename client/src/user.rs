//! The user a container's process runs as, resolved as docker and nerdctl do: names and
//! supplementary groups come from the image's own /etc/passwd and /etc/group, read from a View
//! snapshot of the image mounted read-only in a temp dir (never from the host's files).

use crate::api::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crate::api::services::snapshots::v1::{RemoveSnapshotRequest, ViewSnapshotRequest};
use crate::api::types::Mount;
use crate::{Client, Error, Result};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use tonic::Code;

/// uid, gid and supplementary gids of a process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary one first (as containerd sets them).
    pub additional_gids: Vec<u32>,
    /// The home directory from passwd (HOME for the process, as docker sets it).
    pub home: Option<String>,
}

#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Whether `spec` (docker's `-u` syntax: `user[:group]`, names or numbers) can be resolved
/// without the image's files: numeric uid and gid, or nothing (root).
pub fn needs_image_files(spec: &str) -> bool {
    if spec.is_empty() {
        return false;
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    !(user.parse::<u32>().is_ok() && group.is_some_and(|g| g.parse::<u32>().is_ok()))
}

/// `s` is a name, or a decimal id that fits 32 bits: digits (with or without a sign) that do not
/// fit are refused.
fn numeric_in_range(what: &str, s: &str) -> Result<()> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let numeric = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if numeric && s.parse::<u32>().is_err() {
        return Err(Error::invalid(format!(
            "{what} {s:?} is out of range: ids are 0 to {}",
            u32::MAX
        )));
    }
    Ok(())
}

/// Resolve `spec` against the image's passwd and group texts (None: the file is absent).
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ResolvedUser> {
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let groups = group.map(parse_group).unwrap_or_default();
    let (user, group_spec) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    // A number that does not fit a uid is an error, never a name to look up in the image's
    // passwd (CVE-2024-40635, CVE-2026-46680: such a "name" could map to root).
    numeric_in_range("user", user)?;
    if let Some(g) = group_spec {
        numeric_in_range("group", g)?;
    }
    let entry = match user.parse::<u32>() {
        Ok(uid) => users
            .iter()
            .find(|e| e.uid == uid)
            .cloned()
            .or(Some(PasswdEntry {
                name: String::new(),
                uid,
                gid: 0,
                home: String::new(),
            })),
        Err(_) => users.iter().find(|e| e.name == user).cloned(),
    }
    .ok_or_else(|| {
        Error::not_found(format!(
            "unable to find user {user}: no matching entries in the image's /etc/passwd"
        ))
    })?;
    let gid = match group_spec {
        None => entry.gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "unable to find group {g}: no matching entries in the image's /etc/group"
                    ))
                })?,
        },
    };
    let mut others: Vec<u32> = groups
        .iter()
        .filter(|g| !entry.name.is_empty() && g.members.contains(&entry.name))
        .map(|g| g.gid)
        .filter(|&g| g != gid)
        .collect();
    others.sort_unstable();
    others.dedup();
    // The primary group is a supplementary group too (containerd's CVE-2023-25173 fix): a
    // process that changes its egid (a setgid program) keeps it, so a file that denies that
    // group stays denied.
    let additional_gids = std::iter::once(gid).chain(others).collect();
    Ok(ResolvedUser {
        uid: entry.uid,
        gid,
        additional_gids,
        home: (!entry.home.is_empty()).then_some(entry.home),
    })
}

/// Read `/etc/passwd` and `/etc/group` of the snapshot chain `chain_id` through a read-only
/// View mounted in a temp dir, then unmount and remove the View.
pub async fn read_image_files(
    client: &Client,
    snapshotter: &str,
    chain_id: &str,
) -> Result<(Option<String>, Option<String>)> {
    let key = format!("berth-user-view-{}", crate::names::new_id());
    let mut snapshots = SnapshotsClient::new(client.channel.clone());
    // A snapshot nothing references is garbage to the collector: the lease keeps the view
    // alive while it is read.
    let lease = client
        .leases()
        .create(std::time::Duration::from_secs(300))
        .await?;
    let view = ViewSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: key.clone(),
        parent: chain_id.to_string(),
        labels: HashMap::new(),
    };
    let mounts = match snapshots.view(lease.request(view)).await {
        Ok(r) => r.into_inner().mounts,
        Err(e) => {
            let _ = lease.release().await;
            return Err(e.into());
        }
    };
    let read = tokio::task::spawn_blocking(move || read_through_mounts(&mounts))
        .await
        .map_err(|e| Error::local(Code::Internal, format!("reading the image's users: {e}")));
    let remove = RemoveSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key,
    };
    let removed = snapshots.remove(client.request(remove)).await;
    let released = lease.release().await;
    let files = read??;
    match removed {
        Err(e) if e.code() != Code::NotFound => return Err(e.into()),
        _ => {}
    }
    released?;
    Ok(files)
}

fn read_through_mounts(mounts: &[Mount]) -> Result<(Option<String>, Option<String>)> {
    let dir = tempfile::Builder::new()
        .prefix("berth-rootfs-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| Error::io("create a temp dir for the image's rootfs", e))?;
    crate::mounts::mount_read_only(mounts, dir.path())?;
    let result = (|| {
        let root =
            std::fs::File::open(dir.path()).map_err(|e| Error::io("open the mounted rootfs", e))?;
        Ok((
            read_in_root(&root, "etc/passwd")?,
            read_in_root(&root, "etc/group")?,
        ))
    })();
    let _ = nix::mount::umount2(dir.path(), nix::mount::MntFlags::MNT_DETACH);
    result
}

/// Read a file of the image with every symlink resolved inside the image's root (an image's
/// /etc/passwd may be a link; it must not reach the host's).
fn read_in_root(root: &std::fs::File, path: &str) -> Result<Option<String>> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(root.as_raw_fd(), path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(Error::io(format!("open /{path} of the image"), e.into())),
    };
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut text = String::new();
    file.by_ref()
        .take(4 << 20)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(format!("read /{path} of the image"), e))?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nnogroup:x:65534:\nwheel:x:10:app,root\napp:x:1000:\naudio:x:29:app\n";

    /// hostile-inputs.md B18 (CVE-2024-40635, CVE-2026-46680): a numeric user or group that
    /// does not fit 32 bits is refused, even when the image's passwd has an entry of that
    /// "name" mapping to root.
    #[test]
    fn out_of_range_ids_are_refused_not_looked_up() {
        let passwd = "4294967296:x:0:0::/root:/bin/sh\n99999999999999999999:x:0:0::/:/bin/sh\n-1:x:0:0::/:/bin/sh\n";
        let group = "2147483648x:x:0:\n4294967296:x:0:\n";
        for spec in [
            "4294967296",
            "99999999999999999999",
            "-1",
            "2147483648:4294967296",
            "0:4294967296",
            "0:-1",
        ] {
            let err = resolve(spec, Some(passwd), Some(group))
                .err()
                .unwrap_or_else(|| panic!("{spec} resolved"));
            assert!(err.to_string().contains("out of range"), "{spec}: {err}");
        }
        // In range: a plain uid/gid, even past INT32_MAX (a valid uid), with no lookup.
        let r = resolve("2147483648:0", Some(passwd), Some(group)).unwrap();
        assert_eq!((r.uid, r.gid), (2147483648, 0));
        // Names are still names.
        assert_eq!(resolve("root", Some(PASSWD), Some(GROUP)).unwrap().uid, 0);
    }

    #[test]
    fn users_resolve_from_the_image_files() {
        let r = resolve("nobody", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid), (65534, 65534));
        let r = resolve("app", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!(
            (r.uid, r.gid, r.additional_gids.clone()),
            (1000, 1000, vec![1000, 10, 29])
        );
        assert_eq!(r.home.as_deref(), Some("/home/app"));
        let r = resolve("app:wheel", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.gid, r.additional_gids), (10, vec![10, 29]));
        let r = resolve("1000:5", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 5));
        // A uid the image does not know runs with gid 0, as docker does.
        let r = resolve("4242", Some(PASSWD), None).unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids), (4242, 0, vec![0]));
        let r = resolve("", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids), (0, 0, vec![0, 10]));
        let e = resolve("ghost", Some(PASSWD), Some(GROUP)).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.to_string().contains("ghost"), "{e}");
        assert!(resolve("app:nogroup-here", Some(PASSWD), Some(GROUP)).is_err());
        assert!(resolve("nobody", None, None).is_err());
    }

    #[test]
    fn only_numeric_pairs_skip_the_image_files() {
        assert!(!needs_image_files(""));
        assert!(!needs_image_files("1000:1000"));
        assert!(needs_image_files("1000"));
        assert!(needs_image_files("nobody"));
        assert!(needs_image_files("0:wheel"));
    }
}
