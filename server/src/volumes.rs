//! Named volumes: directories under `<root>/volumes/<namespace>/<name>/` that containers mount
//! and that outlive them. Each volume is its directory: `volume.json` (the record, written to a
//! temporary file, synced and renamed into place before a create is answered) beside `_data`
//! (what containers see). A volume directory without its record is a create that did not
//! finish, or a removal that did not; neither is listed, and both are taken away at open.
//!
//! A container uses a volume by naming it in its `berth/volumes` label (a JSON list of names,
//! written by the berth client, kept in the container summaries berth-metadata maintains), so
//! "in use" is read without decoding any spec. Removal first renames the volume's directory
//! out of the namespace's (one atomic step, so no half-removed volume is ever listed), then
//! deletes it. Create and remove of one daemon run under one lock.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_errdefs::{Error, Result};
use berth_metadata::Metadata;
use serde::{Deserialize, Serialize};

use crate::blocking::blocking;

/// The container label listing the volumes a container mounts (a JSON list of names).
pub const VOLUMES_LABEL: &str = "berth/volumes";
/// The only driver: a directory on this host.
pub const LOCAL_DRIVER: &str = "local";
const RECORD: &str = "volume.json";
const DATA: &str = "_data";
/// Prefix of directories being removed (never a valid volume name: names start alnum).
const REMOVING: &str = ".removing-";

/// One volume as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub labels: HashMap<String, String>,
    /// Seconds and nanoseconds since the epoch.
    pub created_secs: i64,
    pub created_nanos: i32,
    pub anonymous: bool,
    /// Not stored: where `_data` is on this host.
    #[serde(skip)]
    pub mountpoint: PathBuf,
    /// Not stored: filled by listings that ask for usage.
    #[serde(skip)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub ref_count: u64,
}

/// What a prune took away.
#[derive(Debug, Default)]
pub struct Pruned {
    pub deleted: Vec<String>,
    pub space_reclaimed: u64,
}

pub struct Volumes {
    root: PathBuf,
    meta: Arc<Metadata>,
    /// Serialises creates and removals (the in-use check and the removal are one step).
    lock: tokio::sync::Mutex<()>,
}

/// docker's volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 255 bytes. No `/`, and no
/// `.` or `..` (a name starts with a letter or digit): a name is always one directory entry.
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok && name.len() <= 255 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid volume name {name:?}: want [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 255 characters"
        )))
    }
}

impl Volumes {
    /// Volumes under `<root>/volumes` (created 0711); leftovers of interrupted creates and
    /// removals are deleted.
    pub fn open(root: &Path, meta: Arc<Metadata>) -> Result<Volumes> {
        let root = root.join("volumes");
        crate::fsutil::make_dir(&root, 0o711)?;
        if let Ok(namespaces) = fs::read_dir(&root) {
            for ns in namespaces.flatten() {
                let Ok(entries) = fs::read_dir(ns.path()) else {
                    continue;
                };
                for e in entries.flatten() {
                    let path = e.path();
                    let name = e.file_name().to_string_lossy().into_owned();
                    let unfinished = name.starts_with(REMOVING) || !path.join(RECORD).is_file();
                    if unfinished && e.file_type().is_ok_and(|t| t.is_dir()) {
                        tracing::info!(path = %path.display(), "removing an unfinished volume");
                        if let Err(err) = fs::remove_dir_all(&path) {
                            tracing::warn!(path = %path.display(), error = %err, "cannot remove");
                        }
                    }
                }
            }
        }
        Ok(Volumes {
            root,
            meta,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    fn ns_dir(&self, ns: &str) -> PathBuf {
        self.root.join(ns)
    }

    /// Create `name` (or, empty, an anonymous volume); an existing name answers its volume.
    pub async fn create(
        &self,
        ns: &str,
        name: &str,
        driver: &str,
        labels: HashMap<String, String>,
    ) -> Result<Volume> {
        if !(driver.is_empty() || driver == LOCAL_DRIVER) {
            return Err(Error::invalid(format!(
                "volume driver {driver:?} is not available: berthd has only \"local\""
            )));
        }
        let anonymous = name.is_empty();
        let name = if anonymous {
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
        } else {
            validate_name(name)?;
            name.to_string()
        };
        berth_metadata::validate::labels(&labels)?;
        let _held = self.lock.lock().await;
        let dir = self.ns_dir(ns);
        blocking(move || {
            crate::fsutil::make_dir(&dir, 0o711)?;
            let vdir = dir.join(&name);
            if let Some(existing) = read_volume(&vdir)? {
                return Ok(existing);
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let volume = Volume {
                name: name.clone(),
                driver: LOCAL_DRIVER.to_string(),
                labels,
                created_secs: now.as_secs() as i64,
                created_nanos: now.subsec_nanos() as i32,
                anonymous,
                mountpoint: vdir.join(DATA),
                usage: None,
            };
            let made = (|| {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&vdir)
                    .map_err(|e| Error::io(format!("create volume {name}"), e))?;
                // What containers see: root's 0755 until a copy-up gives it the image's mode.
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(vdir.join(DATA))
                    .map_err(|e| Error::io(format!("create volume {name}'s data"), e))?;
                write_record(&vdir, &volume)
            })();
            if let Err(e) = made {
                let _ = fs::remove_dir_all(&vdir);
                return Err(e);
            }
            Ok(volume)
        })
        .await
    }

    pub async fn get(&self, ns: &str, name: &str) -> Result<Volume> {
        validate_name(name)?;
        let vdir = self.ns_dir(ns).join(name);
        let found = blocking(move || read_volume(&vdir)).await?;
        found.ok_or_else(|| {
            Error::not_found(format!("volume {name:?} in namespace {ns:?}: not found"))
        })
    }

    /// Every volume of `ns` by name; with `usage`, sizes and reference counts too.
    pub async fn list(&self, ns: &str, usage: bool) -> Result<Vec<Volume>> {
        let dir = self.ns_dir(ns);
        let users = if usage {
            self.users(ns)?
        } else {
            HashMap::new()
        };
        blocking(move || {
            let mut out = Vec::new();
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(Error::io(format!("list {}", dir.display()), e)),
            };
            for e in entries {
                let e = e.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if validate_name(&name).is_err() {
                    continue;
                }
                if let Some(mut v) = read_volume(&e.path())? {
                    if usage {
                        v.usage = Some(Usage {
                            size: disk_usage(&v.mountpoint),
                            ref_count: users.get(&v.name).map_or(0, |u| u.len() as u64),
                        });
                    }
                    out.push(v);
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    /// Volume name → the containers of `ns` naming it in their label.
    fn users(&self, ns: &str) -> Result<HashMap<String, Vec<String>>> {
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        for c in self.meta.container_summaries(ns)? {
            let Some(list) = c.labels.get(VOLUMES_LABEL) else {
                continue;
            };
            // A label another client wrote that is not a list names nothing.
            let names: Vec<String> = serde_json::from_str(list).unwrap_or_default();
            for n in names {
                users.entry(n).or_default().push(c.id.clone());
            }
        }
        Ok(users)
    }

    /// Remove `name` and its data; refused while a container names it.
    pub async fn remove(&self, ns: &str, name: &str) -> Result<()> {
        validate_name(name)?;
        let _held = self.lock.lock().await;
        if let Some(ids) = self.users(ns)?.get(name) {
            return Err(Error::precondition(format!(
                "volume {name} is in use by container {}: remove the container first (berth rm {})",
                ids.join(", "),
                ids[0]
            )));
        }
        let dir = self.ns_dir(ns);
        let name = name.to_string();
        let ns = ns.to_string();
        blocking(move || {
            let vdir = dir.join(&name);
            if read_volume(&vdir)?.is_none() {
                return Err(Error::not_found(format!(
                    "volume {name:?} in namespace {ns:?}: not found"
                )));
            }
            remove_dir(&dir, &name).map(|_| ())
        })
        .await
    }

    /// Remove every volume of `ns` no container names: anonymous ones, or all with `all`;
    /// only those carrying `labels` (an empty value matches any value).
    pub async fn prune(
        &self,
        ns: &str,
        all: bool,
        labels: HashMap<String, String>,
    ) -> Result<Pruned> {
        let _held = self.lock.lock().await;
        let users = self.users(ns)?;
        let dir = self.ns_dir(ns);
        blocking(move || {
            let mut pruned = Pruned::default();
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pruned),
                Err(e) => return Err(Error::io(format!("list {}", dir.display()), e)),
            };
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| validate_name(n).is_ok())
                .collect();
            names.sort();
            for name in names {
                let Some(v) = read_volume(&dir.join(&name))? else {
                    continue;
                };
                let wanted = (all || v.anonymous)
                    && !users.contains_key(&name)
                    && labels.iter().all(|(k, want)| {
                        v.labels
                            .get(k)
                            .is_some_and(|have| want.is_empty() || have == want)
                    });
                if wanted {
                    pruned.space_reclaimed += remove_dir(&dir, &name)?;
                    pruned.deleted.push(name);
                }
            }
            Ok(pruned)
        })
        .await
    }
}

/// Take `<dir>/<name>` out of the listing in one rename, then delete it; the bytes it held.
fn remove_dir(dir: &Path, name: &str) -> Result<u64> {
    let from = dir.join(name);
    let to = dir.join(format!(
        "{REMOVING}{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    fs::rename(&from, &to).map_err(|e| Error::io(format!("remove volume {name}"), e))?;
    let size = disk_usage(&to.join(DATA));
    // std's remove_dir_all does not follow symlinks: a container's link cannot aim it outside.
    fs::remove_dir_all(&to).map_err(|e| Error::io(format!("remove volume {name}'s data"), e))?;
    Ok(size)
}

/// The record in `vdir`, or None when there is no volume there.
fn read_volume(vdir: &Path) -> Result<Option<Volume>> {
    let path = vdir.join(RECORD);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    let mut v: Volume = serde_json::from_slice(&bytes)
        .map_err(|e| Error::internal(format!("volume record {}: {e}", path.display())))?;
    v.mountpoint = vdir.join(DATA);
    Ok(Some(v))
}

/// The record written durably: a temporary file synced, renamed over, the directory synced.
fn write_record(vdir: &Path, v: &Volume) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::internal(format!("encode volume record: {e}")))?;
    let tmp = vdir.join(format!(".{RECORD}.tmp"));
    let io = |e| Error::io(format!("write volume record in {}", vdir.display()), e);
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, vdir.join(RECORD)).map_err(io)?;
    fs::File::open(vdir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    if let Some(parent) = vdir.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// Bytes allocated under `path` (symlinks not followed, each inode counted once).
pub fn disk_usage(path: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((md.dev(), md.ino())) {
            total += md.blocks() * 512;
        }
        if md.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", ".hidden", "-x", "a b", "a\0",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "data", "my.vol-1_x", &"a".repeat(255)] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
    }

    #[tokio::test]
    async fn create_list_remove_prune() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = Arc::new(Metadata::open(&tmp.path().join("meta")).unwrap());
        let vols = Volumes::open(tmp.path(), meta.clone()).unwrap();
        let v = vols.create("ns", "data", "", HashMap::new()).await.unwrap();
        assert!(v.mountpoint.is_dir());
        assert_eq!(v.mountpoint, tmp.path().join("volumes/ns/data/_data"));
        fs::write(v.mountpoint.join("f"), vec![7u8; 10000]).unwrap();
        // Creating it again answers the same volume, data kept.
        let again = vols
            .create("ns", "data", "local", HashMap::new())
            .await
            .unwrap();
        assert_eq!(again.created_secs, v.created_secs);
        assert!(again.mountpoint.join("f").is_file());
        assert!(vols.create("ns", "x", "nfs", HashMap::new()).await.is_err());
        assert!(vols.create("ns", "../x", "", HashMap::new()).await.is_err());
        let anon = vols.create("ns", "", "", HashMap::new()).await.unwrap();
        assert!(anon.anonymous && anon.name.len() == 64);
        // Other namespaces do not see them.
        assert!(vols.list("other", false).await.unwrap().is_empty());
        assert!(vols.get("other", "data").await.unwrap_err().is_not_found());
        let listed = vols.list("ns", true).await.unwrap();
        assert_eq!(listed.len(), 2);
        let data = listed.iter().find(|v| v.name == "data").unwrap();
        assert!(data.usage.unwrap().size >= 10000);

        // A default prune takes the anonymous one only.
        let p = vols.prune("ns", false, HashMap::new()).await.unwrap();
        assert_eq!(p.deleted, vec![anon.name.clone()]);
        let p = vols
            .prune("ns", true, HashMap::from([("k".into(), String::new())]))
            .await
            .unwrap();
        assert!(p.deleted.is_empty());
        vols.remove("ns", "data").await.unwrap();
        assert!(!tmp.path().join("volumes/ns/data").exists());
        assert!(vols.remove("ns", "data").await.unwrap_err().is_not_found());
    }

    #[test]
    fn unfinished_volumes_are_cleared_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = Arc::new(Metadata::open(&tmp.path().join("meta")).unwrap());
        fs::create_dir_all(tmp.path().join("volumes/ns/half/_data")).unwrap();
        fs::create_dir_all(tmp.path().join("volumes/ns/.removing-x-1/_data")).unwrap();
        Volumes::open(tmp.path(), meta).unwrap();
        assert!(!tmp.path().join("volumes/ns/half").exists());
        assert!(!tmp.path().join("volumes/ns/.removing-x-1").exists());
    }
}
