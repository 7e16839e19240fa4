//! `[userns]`: user namespaces as a daemon default, docker's `--userns-remap`. berthd only decides
//! the mapping (from /etc/subuid and /etc/subgid) and whether images can be shown through
//! idmapped layers, and publishes both as the exports of the Introspection plugin
//! `io.berth.userns.v1/remap`; clients (the berth CLI and library) build specs with a user
//! namespace from it, as docker's CLI-less daemon would. ctr and the CRI are not affected: their
//! specs are theirs.

use berth_errdefs::{Error, Result};
use berth_snapshotter::idmap::{IdMap, IdRange};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The Introspection plugin type and id a remapping daemon lists (absent when remap is off).
pub const PLUGIN_TYPE: &str = "io.berth.userns.v1";
pub const PLUGIN_ID: &str = "remap";

/// The subordinate id entry `remap = "default"` uses (docker's is `dockremap`).
pub const DEFAULT_USER: &str = "berth";
/// How many ids a created `berth` entry gets: a whole 16-bit id space, as docker's.
const DEFAULT_LENGTH: u32 = 65536;
/// Where created entries start at the earliest (shadow's SUB_UID_MIN).
const FIRST_SUBORDINATE: u32 = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsernsConfig {
    /// "" (off, the default), "default" (the `berth` entry of the subordinate id files, added
    /// when missing) or `USER[:GROUP]` (that entry, which must exist).
    pub remap: String,
    /// The subordinate uid file (shadow's /etc/subuid).
    pub subuid_file: PathBuf,
    /// The subordinate gid file (shadow's /etc/subgid).
    pub subgid_file: PathBuf,
    /// Show images through idmapped layers where the kernel allows (else a chowned copy of each
    /// image, made once); false always uses the copy.
    pub idmap: bool,
}

impl Default for UsernsConfig {
    fn default() -> Self {
        UsernsConfig {
            remap: String::new(),
            subuid_file: "/etc/subuid".into(),
            subgid_file: "/etc/subgid".into(),
            idmap: true,
        }
    }
}

impl UsernsConfig {
    pub fn validate(&self) -> Result<()> {
        crate::fsutil::require_absolute("userns.subuid_file", &self.subuid_file)?;
        crate::fsutil::require_absolute("userns.subgid_file", &self.subgid_file)?;
        let bad = |s: &str| s.is_empty() || s.contains(char::is_whitespace) || s.contains(':');
        if let Some((u, g)) = self.remap.split_once(':') {
            if bad(u) || bad(g) {
                return Err(Error::invalid(format!(
                    "userns.remap {:?} is not \"default\", USER or USER:GROUP",
                    self.remap
                )));
            }
        } else if self.remap.contains(char::is_whitespace) {
            return Err(Error::invalid(format!(
                "userns.remap {:?} is not \"default\", USER or USER:GROUP",
                self.remap
            )));
        }
        Ok(())
    }
}

/// The mapping every container of berth's clients runs with.
#[derive(Debug, Clone)]
pub struct Remap {
    /// The subordinate id entries' names, `user` or `user:group`.
    pub user: String,
    pub uid: IdMap,
    pub gid: IdMap,
    /// Whether images are shown through idmapped layers (else through a chowned copy).
    pub idmap: bool,
}

impl Remap {
    /// The Introspection exports clients read.
    pub fn exports(&self) -> std::collections::HashMap<String, String> {
        [
            ("user", self.user.clone()),
            ("uidmap", self.uid.to_string()),
            ("gidmap", self.gid.to_string()),
            ("idmap", self.idmap.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The mapping `config` asks for, or none when remap is off. `root` and `state` are berthd's
/// dirs: idmapped layers are tried under `root/snapshots`, and both must be reachable by the
/// mapped root (runc mounts a bundle's rootfs and volumes from inside the user namespace).
pub fn resolve(config: &UsernsConfig, root: &Path, state: &Path) -> Result<Option<Remap>> {
    if config.remap.is_empty() {
        return Ok(None);
    }
    for dir in [root, state] {
        searchable_by_others(dir)?;
    }
    let snapshots = root.join("snapshots");
    let snapshots = snapshots.as_path();
    let (user, group) = match config.remap.as_str() {
        "default" => {
            ensure_entry(&config.subuid_file, DEFAULT_USER)?;
            ensure_entry(&config.subgid_file, DEFAULT_USER)?;
            (DEFAULT_USER, DEFAULT_USER)
        }
        other => other.split_once(':').unwrap_or((other, other)),
    };
    let uid = ranges_of(&config.subuid_file, user)?;
    let gid = ranges_of(&config.subgid_file, group)?;
    let idmap = config.idmap
        && match berth_snapshotter::idmap::supported(snapshots) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "idmapped layers unavailable: remapped containers get a chowned copy of their image");
                false
            }
        };
    let name = if user == group {
        user.to_string()
    } else {
        format!("{user}:{group}")
    };
    tracing::info!(user = %name, uidmap = %uid, gidmap = %gid, idmap, "user namespace remapping on");
    Ok(Some(Remap {
        user: name,
        uid,
        gid,
        idmap,
    }))
}

/// Every existing directory from `dir` up must let others through (o+x): a remapped container's
/// root is "others" to them, and a 0700 parent fails every container with EACCES from runc.
fn searchable_by_others(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for d in dir.ancestors() {
        let Ok(md) = std::fs::metadata(d) else {
            continue;
        };
        if md.permissions().mode() & 0o001 == 0 {
            return Err(Error::precondition(format!(
                "userns.remap: {} (mode {:o}) does not let others through, so remapped containers cannot reach {}: chmod o+x it",
                d.display(),
                md.permissions().mode() & 0o7777,
                dir.display()
            )));
        }
    }
    Ok(())
}

/// `(name, start, length)` of every well-formed line of a subordinate id file.
fn entries(file: &Path) -> Result<Vec<(String, u32, u32)>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("read {}", file.display()), e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.trim().split(':');
            let name = it.next()?.to_string();
            let start = it.next()?.parse().ok()?;
            let length = it.next()?.parse().ok()?;
            Some((name, start, length))
        })
        .collect())
}

/// The ranges of `name` in `file`, in file order, as one map from container id 0 up (as docker
/// stacks several ranges of one user).
fn ranges_of(file: &Path, name: &str) -> Result<IdMap> {
    // shadow's files may name a user by number too.
    let uid_name = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.to_string());
    let mut next = 0u32;
    let mut ranges = Vec::new();
    for (n, start, length) in entries(file)? {
        if n != name && Some(&n) != uid_name.as_ref() || length == 0 {
            continue;
        }
        ranges.push(IdRange {
            container: next,
            host: start,
            length,
        });
        next = next.checked_add(length).ok_or_else(|| {
            Error::invalid(format!("{}: the ranges of {name} overflow", file.display()))
        })?;
    }
    if ranges.is_empty() {
        return Err(Error::invalid(format!(
            "userns.remap: {} has no range for {name:?} (add a line {name}:START:COUNT)",
            file.display()
        )));
    }
    Ok(IdMap(ranges))
}

/// Adds `name:START:65536` to `file` when it has no line for `name`, START past every range the
/// file holds (so it overlaps no other user's ids).
fn ensure_entry(file: &Path, name: &str) -> Result<()> {
    let existing = entries(file)?;
    if existing.iter().any(|(n, _, _)| n == name) {
        return Ok(());
    }
    let end = existing
        .iter()
        .map(|(_, s, l)| u64::from(*s) + u64::from(*l))
        .max()
        .unwrap_or(0)
        .max(u64::from(FIRST_SUBORDINATE));
    // Aligned to the length, as shadow's allocator leaves them.
    let length = u64::from(DEFAULT_LENGTH);
    let start = end.div_ceil(length) * length;
    let start = u32::try_from(start)
        .ok()
        .filter(|s| s.checked_add(DEFAULT_LENGTH).is_some())
        .ok_or_else(|| Error::invalid(format!("{}: no free id range left", file.display())))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| Error::io(format!("open {}", file.display()), e))?;
    writeln!(f, "{name}:{start}:{DEFAULT_LENGTH}")
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("write {}", file.display()), e))?;
    tracing::info!(file = %file.display(), name, start, "added a subordinate id range");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_adds_an_entry_past_the_others_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let (su, sg) = (dir.path().join("subuid"), dir.path().join("subgid"));
        std::fs::write(&su, "alice:100000:65536\nbob:165536:65536\n").expect("write");
        let config = UsernsConfig {
            remap: "default".into(),
            subuid_file: su.clone(),
            subgid_file: sg.clone(),
            idmap: false,
        };
        let r = resolve(&config, dir.path(), dir.path())
            .expect("resolves")
            .expect("on");
        assert_eq!(r.uid.to_string(), "0:262144:65536");
        assert_eq!(r.gid.to_string(), "0:131072:65536");
        resolve(&config, dir.path(), dir.path()).expect("resolves again");
        // A 0700 dir on the way to the state dir fails at startup, not in every container.
        let closed = dir.path().join("closed");
        std::fs::create_dir(&closed).expect("mkdir");
        std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
        let err = resolve(&config, dir.path(), &closed.join("state")).unwrap_err();
        assert!(err.to_string().contains("chmod o+x"), "{err}");
        let text = std::fs::read_to_string(&su).expect("read");
        assert_eq!(text.matches("berth:").count(), 1, "{text}");
        assert_eq!(r.exports()["idmap"], "false");
    }

    #[test]
    fn a_named_user_stacks_its_ranges_and_must_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("subuid");
        std::fs::write(&f, "u:100000:10\nother:5:5\nu:200000:20\n").expect("write");
        assert_eq!(
            ranges_of(&f, "u").expect("ranges").to_string(),
            "0:100000:10,10:200000:20"
        );
        assert!(ranges_of(&f, "nobody-here").is_err());
        let bad = UsernsConfig {
            remap: "a:".into(),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        assert!(UsernsConfig::default().validate().is_ok());
    }
}
