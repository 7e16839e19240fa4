//! The `overlayfs` snapshotter (containerd's `snapshots/overlay`): each snapshot's `fs/` is one
//! overlay layer; an active snapshot is the upperdir over its parents' `fs/` as lowerdirs.
//!
//! Mounts, exactly as containerd 1.6 returns them (ctr temp-mounts them on the host):
//! - active, no parent: `bind <id>/fs [rw, rbind]`
//! - active with parents: `overlay overlay [index=off, (userxattr,) workdir=, upperdir=,
//!   lowerdir=nearest:…:base]`
//! - view, no parent: `bind <id>/fs [ro, rbind]`; one parent: `bind <parent>/fs [ro, rbind]`;
//!   more: `overlay overlay [index=off, (userxattr,) lowerdir=…]`

use std::fs;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::at;
use crate::fsutil::mkdir_mode;
use crate::idmap::IdMap;
use crate::store::{MetaStore, Snapshot};
use crate::{unmount, Kind, Mount, Result, Snapshotter};

pub struct OverlaySnapshotter {
    store: MetaStore,
    index_off: bool,
    userxattr: bool,
}

impl OverlaySnapshotter {
    /// Opens the snapshotter rooted at `root` (created if missing). It does not check that overlay
    /// works there: berthd calls [`supported`] first to report a plugin init error.
    pub fn open(root: &Path) -> Result<OverlaySnapshotter> {
        let store = MetaStore::open(root)?;
        let sn = OverlaySnapshotter {
            store,
            // Without index=off, a layer mounted once with the index feature refuses later mounts
            // with another upper (containerd sets it whenever the kernel knows the option).
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
            userxattr: needs_userxattr(root),
        };
        sn.store.restore_missing(&|s, d| sn.populate(s, d))?;
        Ok(sn)
    }

    fn populate(&self, snap: &Snapshot, dir: &Path) -> Result<()> {
        let fs_dir = dir.join("fs");
        mkdir_mode(&fs_dir, 0o755)?;
        if snap.kind != Kind::Active {
            return Ok(());
        }
        mkdir_mode(&dir.join("work"), 0o711)?;
        // The merged root takes the upperdir's owner and mode: make them the parent's, so the
        // container sees its image's root directory (containerd copies the owner).
        if let Some(&parent) = snap.parent_ids.first() {
            let p = self.store.fs_dir(parent);
            let md = fs::metadata(&p).map_err(at("stat", &p))?;
            let (mut uid, mut gid) = (md.uid(), md.gid());
            // The upper is not idmapped (see idmap.rs): it holds host ids from the start.
            if let Some((u, g)) = &snap.idmap {
                let (umap, gmap) = (IdMap::parse(u)?, IdMap::parse(g)?);
                uid = umap.host_id(uid).unwrap_or(uid);
                gid = gmap.host_id(gid).unwrap_or(gid);
            }
            lchown(&fs_dir, Some(uid), Some(gid)).map_err(at("chown", &fs_dir))?;
            fs::set_permissions(&fs_dir, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(at("chmod", &fs_dir))?;
        }
        Ok(())
    }

    fn mounts_of(&self, snap: &Snapshot) -> Vec<Mount> {
        let path = |id: u64| self.store.fs_dir(id).to_string_lossy().into_owned();
        let bind = |source: String, mode: &str| {
            vec![Mount {
                r#type: "bind".into(),
                source,
                target: String::new(),
                options: vec![mode.into(), "rbind".into()],
            }]
        };
        match (snap.kind, snap.parent_ids.as_slice()) {
            (Kind::Active, []) => return bind(path(snap.id), "rw"),
            (_, []) => return bind(path(snap.id), "ro"),
            (Kind::View, [parent]) => return bind(path(*parent), "ro"),
            _ => {}
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if self.userxattr {
            options.push("userxattr".to_string());
        }
        if snap.kind == Kind::Active {
            options.push(format!(
                "workdir={}",
                self.store.work_dir(snap.id).display()
            ));
            options.push(format!("upperdir={}", path(snap.id)));
        }
        let lower: Vec<String> = snap.parent_ids.iter().map(|&id| path(id)).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        // containerd 2's option names; Mount::mount turns them into idmapped lowers.
        if let (Kind::Active, Some((u, g))) = (snap.kind, &snap.idmap) {
            options.push(format!("uidmap={u}"));
            options.push(format!("gidmap={g}"));
        }
        vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }
}

impl Snapshotter for OverlaySnapshotter {
    fn name(&self) -> &str {
        "overlayfs"
    }

    delegate_to_store!();

    // An upper directory records whiteouts (0/0 character devices) and opaque directories
    // (xattr) by themselves, whatever the lowers under it, so it can be chained after the fact.
    fn can_rebase(&self) -> bool {
        true
    }

    fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<()> {
        self.store.commit_onto(name, key, parent, labels)
    }
}

/// A scratch directory under `root` with the dirs an overlay mount test needs; removed on drop.
struct CheckDir(PathBuf);

impl CheckDir {
    fn new(root: &Path, what: &str) -> Result<CheckDir> {
        fs::create_dir_all(root).map_err(at("mkdir", root))?;
        let dir = root.join(format!("{what}-check-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let me = CheckDir(dir);
        for d in ["", "lower1", "lower2", "upper", "work", "merged"] {
            let p = me.0.join(d);
            fs::create_dir(&p).map_err(at("mkdir", &p))?;
        }
        Ok(me)
    }

    fn mount(&self, extra: &[&str]) -> Result<()> {
        let p = |d: &str| self.0.join(d).display().to_string();
        let mut options = vec![
            format!("lowerdir={}:{}", p("lower2"), p("lower1")),
            format!("upperdir={}", p("upper")),
            format!("workdir={}", p("work")),
        ];
        options.extend(extra.iter().map(|s| s.to_string()));
        let m = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        };
        m.mount(&self.0.join("merged"))?;
        unmount(&self.0.join("merged"))
    }
}

impl Drop for CheckDir {
    fn drop(&mut self) {
        let _ = unmount(&self.0.join("merged"));
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether overlay with an upper and two lowerdirs mounts on the filesystem holding `root`
/// (containerd's `overlayutils.Supported`), by mounting one in a scratch directory there.
pub fn supported(root: &Path) -> Result<()> {
    CheckDir::new(root, "overlay")?.mount(&[])
}

/// containerd's `NeedsUserXAttr`: only inside a user namespace (not on tmpfs) does overlay need
/// `userxattr`, and only if the kernel accepts it.
fn needs_userxattr(root: &Path) -> bool {
    let in_userns = fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
        .unwrap_or(false);
    if !in_userns {
        return false;
    }
    let on_tmpfs = nix::sys::statfs::statfs(root)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if on_tmpfs {
        return false;
    }
    CheckDir::new(root, "userxattr")
        .and_then(|c| c.mount(&["userxattr"]))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// The exact mounts containerd returns, which ctr relies on.
    #[test]
    fn mounts_match_containerd() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = OverlaySnapshotter::open(tmp.path()).expect("open");
        let fs_of = |id: u64| sn.store.fs_dir(id).display().to_string();
        let (io, ux) = (sn.index_off, sn.userxattr);
        let head = |mut v: Vec<String>| {
            let mut h = Vec::new();
            if io {
                h.push("index=off".to_string());
            }
            if ux {
                h.push("userxattr".to_string());
            }
            h.append(&mut v);
            h
        };
        let l = HashMap::new;

        let m = sn.prepare("a k/1", "", l()).expect("prepare");
        assert_eq!(
            m,
            vec![Mount {
                r#type: "bind".into(),
                source: fs_of(1),
                target: "".into(),
                options: s(&["rw", "rbind"])
            }]
        );
        sn.commit("c1", "a k/1", l()).expect("commit");
        let m = sn.view("v1", "c1", l()).expect("view");
        assert_eq!(
            m,
            vec![Mount {
                r#type: "bind".into(),
                source: fs_of(1),
                target: "".into(),
                options: s(&["ro", "rbind"])
            }]
        );
        let m = sn.view("v0", "", l()).expect("view");
        assert_eq!(m[0].options, s(&["ro", "rbind"]));

        let m = sn.prepare("a2", "c1", l()).expect("prepare");
        let id = 4;
        let work = sn.store.work_dir(id).display().to_string();
        let want = head(vec![
            format!("workdir={work}"),
            format!("upperdir={}", fs_of(id)),
            format!("lowerdir={}", fs_of(1)),
        ]);
        assert_eq!(
            m,
            vec![Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: "".into(),
                options: want
            }]
        );
        assert_eq!(sn.mounts("a2").expect("mounts"), m);
        sn.commit("c2", "a2", l()).expect("commit");

        let m = sn.view("v2", "c2", l()).expect("view");
        let want = head(vec![format!("lowerdir={}:{}", fs_of(4), fs_of(1))]);
        assert_eq!(
            m,
            vec![Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: "".into(),
                options: want
            }]
        );
        assert_eq!(
            sn.mounts("c2").map_err(|e| e.kind()).err(),
            Some(berth_errdefs::Kind::FailedPrecondition)
        );
        assert_eq!(
            sn.active_dir("a2").err().map(|e| e.to_string()),
            Some("snapshot a2: not found".into())
        );
    }

    #[test]
    fn overlay_is_supported_here_and_leaves_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        supported(tmp.path()).expect("overlay works on the test filesystem");
        assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 0);
    }

    #[test]
    fn idmap_labels_show_the_layers_with_the_mapped_owners() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: overlay and idmapped mounts need root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let sn = OverlaySnapshotter::open(tmp.path()).expect("open");
        sn.prepare("base-a", "", HashMap::new()).expect("prepare");
        let dir = sn.active_dir("base-a").expect("dir");
        fs::write(dir.join("f"), b"image\n").expect("write");
        lchown(dir.join("f"), Some(0), Some(0)).expect("chown");
        sn.commit("base", "base-a", HashMap::new()).expect("commit");
        let labels: HashMap<String, String> = [
            (crate::idmap::UIDMAP_LABEL.into(), "0:300000:65536".into()),
            (crate::idmap::GIDMAP_LABEL.into(), "0:400000:65536".into()),
        ]
        .into();
        let mounts = sn.prepare("ctr", "base", labels).expect("prepare");
        let opts = &mounts[0].options;
        assert!(
            opts.contains(&"uidmap=0:300000:65536".to_string()),
            "{opts:?}"
        );
        assert!(
            opts.contains(&"gidmap=0:400000:65536".to_string()),
            "{opts:?}"
        );
        let upper = sn.active_dir("ctr").expect("dir");
        let md = fs::metadata(&upper).expect("stat");
        assert_eq!((md.uid(), md.gid()), (300000, 400000), "the upper's root");
        let target = tmp.path().join("merged");
        fs::create_dir(&target).expect("mkdir");
        crate::mount_all(&mounts, &target).expect("mount");
        let seen = fs::metadata(target.join("f")).map(|m| (m.uid(), m.gid()));
        let _ = crate::unmount(&target);
        assert_eq!(seen.expect("stat"), (300000, 400000));
        // The layer itself keeps the image's owners; the mount left nothing behind.
        let layer = fs::metadata(dir.join("f")).expect("stat");
        assert_eq!(layer.uid(), 0);
        let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(
            !mounts.contains(&tmp.path().display().to_string()),
            "{mounts}"
        );
    }

    /// Prepare+Commit pairs per second (run: `cargo test --release -p berth-snapshotter
    /// prepare_commit_rate -- --ignored --nocapture`); timings, not assertions.
    #[test]
    #[ignore]
    fn prepare_commit_rate() {
        let base = std::env::var_os("BERTH_SNAPSHOTTER_TEST_DIR").unwrap_or("/var/tmp".into());
        let tmp = tempfile::tempdir_in(base).expect("tempdir");
        let sn = OverlaySnapshotter::open(tmp.path()).expect("open");
        for files in [0usize, 100] {
            let n = 200;
            let mut parent = String::new();
            let start = std::time::Instant::now();
            let (mut in_prepare, mut in_commit) = (0.0, 0.0);
            for i in 0..n {
                let key = format!("extract-{files}-{i}");
                let t = std::time::Instant::now();
                sn.prepare(&key, &parent, HashMap::new()).expect("prepare");
                in_prepare += t.elapsed().as_secs_f64();
                let dir = sn.active_dir(&key).expect("dir");
                for f in 0..files {
                    fs::write(dir.join(format!("f{f}")), b"small file\n").expect("write");
                }
                parent = format!("layer-{files}-{i}");
                let t = std::time::Instant::now();
                sn.commit(&parent, &key, HashMap::new()).expect("commit");
                in_commit += t.elapsed().as_secs_f64();
            }
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "{files} files: prepare {:.2} ms, commit {:.2} ms (mean)",
                in_prepare * 1e3 / n as f64,
                in_commit * 1e3 / n as f64
            );
            eprintln!(
                "{files} files: {n} pairs in {secs:.3}s = {:.0} pairs/s",
                n as f64 / secs
            );
        }
    }
}
