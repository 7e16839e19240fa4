//! The conformance suite every [`Snapshotter`] passes (like containerd's `snapshots/testsuite`):
//! each case takes a factory that opens a snapshotter on a root directory, and panics on failure.
//! Cases really mount what the snapshotter returns (so they need root) and unmount through guards
//! that run even when an assertion fails; each case then checks `/proc/self/mountinfo` for mounts
//! left under its scratch directory.
//!
//! Cases marked *layout* (`crash_leftovers`, `legacy_layout`) plant files in berth's on-disk
//! layout (`<root>/metadata.log`, `<root>/snapshots/<id>/`) and so apply to this crate's
//! implementations only.
//!
//! Scratch directories go under `$BERTH_SNAPSHOTTER_TEST_DIR`, default `/var/tmp` (it must support
//! overlay upper directories, xattrs and device nodes).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{mount_all, unmount, Error, Info, Kind, Mount, Snapshotter};

/// Opens a snapshotter on the given root directory (which exists, and may hold a previous
/// instance's data: the restart cases reopen it).
pub type Factory<'a> = &'a dyn Fn(&Path) -> Box<dyn Snapshotter>;

/// One case of the suite.
pub type Case = fn(Factory);

/// Every case, by name.
pub const CASES: &[(&str, Case)] = &[
    ("basic", basic),
    ("whiteouts", whiteouts),
    ("view_readonly", view_readonly),
    ("names_unique", names_unique),
    ("parent_rules", parent_rules),
    ("remove_rules", remove_rules),
    ("deep_chain", deep_chain),
    ("usage", usage),
    ("update_labels", update_labels),
    ("walk", walk),
    ("restart", restart),
    ("crash_leftovers", crash_leftovers),
    ("legacy_layout", legacy_layout),
    ("concurrent", concurrent),
    ("metadata_preserved", metadata_preserved),
    ("active_dir", active_dir),
    ("commit_onto", commit_onto),
];

/// Runs every case in turn.
pub fn run_all(factory: Factory) {
    for (_, case) in CASES {
        case(factory);
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

/// A case's scratch directory: `root/` for the snapshotter, `work/` for mount points. On drop it
/// detaches anything still mounted under it (then fails the case unless it is already failing)
/// and removes itself.
struct Env {
    dir: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Env {
    fn new(name: &str) -> Env {
        let base = std::env::var_os("BERTH_SNAPSHOTTER_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let dir = base.join(format!(
            "berth-suite-{name}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(dir.join("root")).expect("create suite root");
        fs::create_dir_all(dir.join("work")).expect("create suite work dir");
        Env { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// A fresh mount point.
    fn mnt(&self, name: &str) -> PathBuf {
        let p = self.dir.join("work").join(name);
        fs::create_dir_all(&p).expect("create mount point");
        p
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let left = mounts_under(&self.dir);
        for m in left.iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
        if !left.is_empty() && !std::thread::panicking() {
            panic!("mounts left behind: {left:?}");
        }
    }
}

/// Mount points under `dir`, from /proc/self/mountinfo (field 5, octal-escaped).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 4 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|t| u8::from_str_radix(t, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts `mounts` on `target` until dropped (or [`Mounted::unmount`]ed, which checks).
struct Mounted {
    target: PathBuf,
    done: bool,
}

fn mount(mounts: &[Mount], target: &Path) -> Mounted {
    // The guard exists before mounting, so a partial mount_all is undone too.
    let guard = Mounted {
        target: target.to_path_buf(),
        done: false,
    };
    mount_all(mounts, target).unwrap_or_else(|e| panic!("mount {mounts:?} on {target:?}: {e}"));
    guard
}

impl Mounted {
    fn unmount(mut self) {
        self.done = true;
        unmount(&self.target).expect("unmount");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.done {
            let _ = unmount(&self.target);
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gc_root() -> HashMap<String, String> {
    labels(&[("containerd.io/gc.root", "2024-01-01T00:00:00Z")])
}

fn write(path: &Path, content: &str) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir -p");
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"))
}

/// The tree under `dir` as path → "dir" / "file:<content>" / "link:<target>" / "other".
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read dir") {
            let p = e.expect("dir entry").path();
            let rel = p
                .strip_prefix(dir)
                .expect("under dir")
                .display()
                .to_string();
            let md = fs::symlink_metadata(&p).expect("lstat");
            let v = if md.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if md.is_file() {
                format!("file:{}", read(&p))
            } else if md.file_type().is_symlink() {
                format!("link:{}", fs::read_link(&p).expect("readlink").display())
            } else {
                "other".to_string()
            };
            out.insert(rel, v);
        }
    }
    out
}

macro_rules! assert_err {
    ($e:expr, $kind:ident) => {
        match $e {
            Err(e) if e.kind() == berth_errdefs::Kind::$kind => {}
            other => panic!(
                "{}: expected {}, got {:?}",
                stringify!($e),
                stringify!($kind),
                other
            ),
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Cases

/// Prepare → write → commit → prepare a child → union view; stat, walk and remove along the way
/// (containerd's Basic, StatActive, StatCommitted, RootPermission).
pub fn basic(factory: Factory) {
    let env = Env::new("basic");
    let sn = factory(&env.root());
    // Keys look like what ctr sends, namespaced by berthd: spaces and slashes.
    let key = "default/extract-1234-abc sha256:0123abc";
    let ms = sn.prepare(key, "", gc_root()).expect("prepare");
    assert!(!ms.is_empty(), "prepare returned no mounts");
    let m1 = env.mnt("base");
    {
        let g = mount(&ms, &m1);
        let mode = fs::metadata(&m1).expect("stat root").permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "root of a new snapshot is 0755");
        write(&m1.join("foo"), "foo\n");
        fs::create_dir_all(m1.join("a/b/c")).expect("mkdir");
        let st = sn.stat(key).expect("stat active");
        assert_eq!(
            (st.name.as_str(), st.parent.as_str(), st.kind),
            (key, "", Kind::Active)
        );
        g.unmount();
    }
    sn.commit("base", key, gc_root()).expect("commit");
    let si = sn.stat("base").expect("stat committed");
    assert_eq!(
        (si.name.as_str(), si.parent.as_str(), si.kind),
        ("base", "", Kind::Committed)
    );
    assert_eq!(si.labels, gc_root());
    assert_err!(sn.stat(key), NotFound);

    let ms = sn
        .prepare("next", "base", gc_root())
        .expect("prepare child");
    let m2 = env.mnt("next");
    {
        let g = mount(&ms, &m2);
        assert_eq!(read(&m2.join("foo")), "foo\n");
        assert!(m2.join("a/b/c").is_dir());
        write(&m2.join("bar"), "bar\n");
        write(&m2.join("foo"), "bar\n");
        fs::remove_dir_all(m2.join("a/b")).expect("rm a/b");
        g.unmount();
    }
    let ni = sn.stat("next").expect("stat");
    assert_eq!((ni.parent.as_str(), ni.kind), ("base", Kind::Active));
    sn.commit("next-committed", "next", gc_root())
        .expect("commit child");
    let si2 = sn.stat("next-committed").expect("stat");
    assert_eq!((si2.parent.as_str(), si2.kind), ("base", Kind::Committed));
    assert_err!(sn.stat("next"), NotFound);

    let mut walked = BTreeMap::new();
    sn.walk(&mut |i: &Info| {
        walked.insert(i.name.clone(), i.clone());
        Ok(())
    })
    .expect("walk");
    let want: BTreeMap<_, _> = [
        ("base".to_string(), si),
        ("next-committed".to_string(), si2),
    ]
    .into();
    assert_eq!(walked, want);

    let ms = sn
        .view("view", "next-committed", HashMap::new())
        .expect("view");
    let m3 = env.mnt("view");
    {
        let g = mount(&ms, &m3);
        let want: BTreeMap<String, String> =
            [("foo", "file:bar\n"), ("bar", "file:bar\n"), ("a", "dir")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(tree(&m3), want);
        g.unmount();
    }
    sn.remove("view").expect("remove view");
    assert_err!(sn.remove("base"), FailedPrecondition);
    sn.remove("next-committed").expect("remove child");
    sn.remove("base").expect("remove base");
    let mut n = 0;
    sn.walk(&mut |_| {
        n += 1;
        Ok(())
    })
    .expect("walk");
    assert_eq!(n, 0);
}

/// Deletions through a mounted child (overlay writes whiteouts and opaque dirs) hide the lower
/// files in every later view (containerd's DeletedFilesInChildSnapshot, RemoveDirectoryInLowerLayer).
pub fn whiteouts(factory: Factory) {
    let env = Env::new("whiteouts");
    let sn = factory(&env.root());
    let mnt = env.mnt("m");
    let ms = sn.prepare("l1-a", "", HashMap::new()).expect("prepare");
    {
        let g = mount(&ms, &mnt);
        write(&mnt.join("top"), "top");
        write(&mnt.join("dir1/f1"), "1");
        write(&mnt.join("dir2/f2"), "2");
        write(&mnt.join("dir3/old"), "old");
        write(&mnt.join("keep/k"), "k");
        g.unmount();
    }
    sn.commit("l1", "l1-a", HashMap::new()).expect("commit");
    let ms = sn.prepare("l2-a", "l1", HashMap::new()).expect("prepare");
    {
        let g = mount(&ms, &mnt);
        fs::remove_file(mnt.join("top")).expect("rm top");
        fs::remove_file(mnt.join("dir1/f1")).expect("rm f1");
        fs::remove_dir_all(mnt.join("dir2")).expect("rm dir2");
        fs::remove_dir_all(mnt.join("dir3")).expect("rm dir3");
        write(&mnt.join("dir3/new"), "new");
        g.unmount();
    }
    sn.commit("l2", "l2-a", HashMap::new()).expect("commit");
    let want: BTreeMap<String, String> = [
        ("dir1", "dir"),
        ("dir3", "dir"),
        ("dir3/new", "file:new"),
        ("keep", "dir"),
        ("keep/k", "file:k"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (kind, key) in [("view", "l3-v"), ("active", "l3-a")] {
        let ms = match kind {
            "view" => sn.view(key, "l2", HashMap::new()),
            _ => sn.prepare(key, "l2", HashMap::new()),
        }
        .expect("create l3");
        let g = mount(&ms, &mnt);
        assert_eq!(tree(&mnt), want, "{kind} of l2");
        g.unmount();
    }
}

/// A layer unpacked into a snapshot of its own, with its whiteouts written as overlay stores
/// them, and chained under its parent afterwards: the union is as if it had been applied on top.
/// Bad re-parents (a missing parent, an active one, itself, a taken name, a key that has a parent)
/// change nothing. Snapshotters without the capability answer Unimplemented and change nothing.
pub fn commit_onto(factory: Factory) {
    let env = Env::new("commit-onto");
    let sn = factory(&env.root());
    let l = HashMap::new;
    let mnt = env.mnt("m");
    let ms = sn.prepare("b-a", "", l()).expect("prepare base");
    {
        let g = mount(&ms, &mnt);
        write(&mnt.join("top"), "top");
        write(&mnt.join("dir1/f1"), "1");
        write(&mnt.join("dir3/old"), "old");
        write(&mnt.join("keep/k"), "k");
        g.unmount();
    }
    sn.commit("b", "b-a", l()).expect("commit base");
    sn.prepare("l-a", "", l())
        .expect("prepare the layer with no parent");
    if !sn.can_rebase() {
        assert_err!(sn.commit_onto("l", "l-a", "b", l()), Unimplemented);
        assert_eq!(sn.stat("l-a").expect("stat").kind, Kind::Active);
        assert_err!(sn.stat("l"), NotFound);
        return;
    }
    let upper = sn.active_dir("l-a").expect("active dir");
    whiteout(&upper.join("top"));
    fs::create_dir(upper.join("dir1")).expect("mkdir dir1");
    whiteout(&upper.join("dir1/f1"));
    fs::create_dir(upper.join("dir3")).expect("mkdir dir3");
    set_opaque(&upper.join("dir3"));
    write(&upper.join("dir3/new"), "new");

    assert_err!(sn.commit_onto("l", "l-a", "missing", l()), NotFound);
    assert_err!(sn.commit_onto("l", "l-a", "l-a", l()), InvalidArgument);
    // A cycle: the parent named is the snapshot being committed.
    assert_err!(sn.commit_onto("l", "l-a", "l", l()), NotFound);
    assert_err!(sn.commit_onto("b", "l-a", "b", l()), AlreadyExists);
    sn.prepare("c-a", "b", l()).expect("prepare a child of b");
    assert_err!(sn.commit_onto("c", "c-a", "b", l()), FailedPrecondition);
    sn.remove("c-a").expect("remove c-a");
    let active = sn.stat("l-a").expect("stat the layer after failures");
    assert_eq!((active.kind, active.parent.as_str()), (Kind::Active, ""));
    assert_err!(sn.stat("l"), NotFound);
    // Failed attempts held no reference on b.
    sn.view("b-v", "b", l()).expect("view b");
    sn.remove("b-v").expect("remove b-v");

    sn.commit_onto("l", "l-a", "b", labels(&[("k", "v")]))
        .expect("commit onto b");
    assert_err!(sn.stat("l-a"), NotFound);
    let want: BTreeMap<String, String> = [
        ("dir1", "dir"),
        ("dir3", "dir"),
        ("dir3/new", "file:new"),
        ("keep", "dir"),
        ("keep/k", "file:k"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let check = |sn: &dyn Snapshotter, when: &str| {
        let info = sn.stat("l").expect("stat l");
        assert_eq!(
            (
                info.kind,
                info.parent.as_str(),
                info.labels.get("k").map(String::as_str)
            ),
            (Kind::Committed, "b", Some("v")),
            "{when}"
        );
        assert_err!(sn.remove("b"), FailedPrecondition);
        let ms = sn.view("v", "l", HashMap::new()).expect("view l");
        let g = mount(&ms, &mnt);
        assert_eq!(tree(&mnt), want, "{when}");
        g.unmount();
        sn.remove("v").expect("remove view");
    };
    check(sn.as_ref(), "after the commit");
    drop(sn);
    let sn = factory(&env.root());
    check(sn.as_ref(), "after a restart");
    sn.remove("l").expect("remove l");
    sn.remove("b")
        .expect("remove b once its rebased child is gone");
}

/// An overlay whiteout: a 0/0 character device.
fn whiteout(path: &Path) {
    use nix::sys::stat::{mknod, Mode, SFlag};
    mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), 0)
        .unwrap_or_else(|e| panic!("mknod {path:?}: {e}"));
}

/// An overlay opaque directory: it hides what the lowers hold under its name.
fn set_opaque(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path without NUL");
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and the value is a live 1-byte buffer.
    let rc = unsafe { nix::libc::lsetxattr(p.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(
        rc,
        0,
        "set opaque on {dir:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// A view cannot be written, whatever its depth (containerd's ViewReadonly).
pub fn view_readonly(factory: Factory) {
    let env = Env::new("view-ro");
    let sn = factory(&env.root());
    let mnt = env.mnt("m");
    let ms = sn.prepare("a", "", HashMap::new()).expect("prepare");
    {
        let g = mount(&ms, &mnt);
        write(&mnt.join("f"), "x");
        g.unmount();
    }
    sn.commit("c1", "a", HashMap::new()).expect("commit");
    sn.prepare("b", "c1", HashMap::new()).expect("prepare");
    sn.commit("c2", "b", HashMap::new()).expect("commit");
    for (key, parent) in [("v0", ""), ("v1", "c1"), ("v2", "c2")] {
        let ms = sn.view(key, parent, HashMap::new()).expect("view");
        let g = mount(&ms, &mnt);
        assert!(
            fs::write(mnt.join("new"), "x").is_err(),
            "view of {parent:?} is writable"
        );
        if !parent.is_empty() {
            assert_eq!(read(&mnt.join("f")), "x");
            assert!(
                fs::write(mnt.join("f"), "y").is_err(),
                "view of {parent:?} is writable"
            );
        }
        g.unmount();
        assert_eq!(sn.mounts(key).expect("mounts"), ms);
    }
}

/// Keys and names share one namespace across kinds; keys are opaque strings.
pub fn names_unique(factory: Factory) {
    let env = Env::new("names");
    let sn = factory(&env.root());
    let l = HashMap::new;
    sn.prepare("a", "", l()).expect("prepare");
    assert_err!(sn.prepare("a", "", l()), AlreadyExists);
    assert_err!(sn.view("a", "", l()), AlreadyExists);
    sn.commit("c", "a", l()).expect("commit");
    assert_err!(sn.prepare("c", "", l()), AlreadyExists);
    assert_err!(sn.view("c", "", l()), AlreadyExists);
    sn.prepare("b", "", l()).expect("prepare");
    assert_err!(sn.commit("c", "b", l()), AlreadyExists);
    assert_err!(sn.commit("b", "b", l()), AlreadyExists);
    assert_eq!(
        sn.stat("b").expect("b survives a failed commit").kind,
        Kind::Active
    );
    sn.view("v", "c", l()).expect("view");
    assert_err!(sn.commit("v", "b", l()), AlreadyExists);
    assert_err!(sn.prepare("", "", l()), InvalidArgument);
    assert_err!(sn.commit("", "b", l()), InvalidArgument);

    let odd = [
        "../../etc/passwd",
        "/abs/path",
        "with space",
        "tab\tnew\nline",
        "ns/ünï/ç",
        ".",
    ];
    for k in odd {
        sn.prepare(k, "c", l())
            .unwrap_or_else(|e| panic!("prepare {k:?}: {e}"));
        assert_eq!(sn.stat(k).expect("stat").name, k);
    }
    let mut names = Vec::new();
    sn.walk(&mut |i| {
        names.push(i.name.clone());
        Ok(())
    })
    .expect("walk");
    assert_eq!(names.len(), 3 + odd.len(), "c, b, v and the odd keys");
    for k in odd {
        sn.remove(k).expect("remove");
    }
}

/// Parents must exist and be committed; only active snapshots commit; errors for unknown keys.
pub fn parent_rules(factory: Factory) {
    let env = Env::new("parents");
    let sn = factory(&env.root());
    let l = HashMap::new;
    assert_err!(sn.prepare("x", "missing", l()), NotFound);
    assert_err!(sn.view("x", "missing", l()), NotFound);
    sn.prepare("a", "", l()).expect("prepare");
    sn.view("v", "", l()).expect("view");
    // containerd: a parent that is not committed is InvalidArgument.
    assert_err!(sn.prepare("x", "a", l()), InvalidArgument);
    assert_err!(sn.view("x", "a", l()), InvalidArgument);
    assert_err!(sn.prepare("x", "v", l()), InvalidArgument);
    assert_err!(sn.commit("n", "v", l()), FailedPrecondition);
    assert_err!(sn.commit("n", "missing", l()), NotFound);
    sn.commit("c", "a", l()).expect("commit");
    assert_err!(sn.commit("n", "a", l()), NotFound);
    assert_err!(sn.mounts("c"), FailedPrecondition);
    assert_err!(sn.active_dir("c"), FailedPrecondition);
    assert_err!(sn.active_dir("v"), FailedPrecondition);
    assert_err!(sn.stat("missing"), NotFound);
    assert_err!(sn.mounts("missing"), NotFound);
    assert_err!(sn.usage("missing"), NotFound);
    assert_err!(sn.remove("missing"), NotFound);
    assert_err!(sn.active_dir("missing"), NotFound);
    let info = Info {
        name: "missing".into(),
        ..sn.stat("c").expect("stat")
    };
    assert_err!(sn.update(info, &[]), NotFound);
    // Failed attempts reserved nothing.
    assert_err!(sn.stat("x"), NotFound);
    sn.prepare("x", "c", l()).expect("prepare x after failures");
    assert_eq!(sn.stat("x").expect("stat").parent, "c");
}

/// A committed snapshot with children cannot go; keys are reusable after removal
/// (containerd's Remove, RemoveIntermediateSnapshot).
pub fn remove_rules(factory: Factory) {
    let env = Env::new("remove");
    let sn = factory(&env.root());
    let l = HashMap::new;
    sn.prepare("base-a", "", l()).expect("prepare");
    sn.commit("base", "base-a", l()).expect("commit");
    sn.prepare("inter-a", "base", l()).expect("prepare");
    sn.commit("inter", "inter-a", l()).expect("commit");
    sn.prepare("top", "inter", l()).expect("prepare");
    sn.view("view", "base", l()).expect("view");
    assert_err!(sn.remove("inter"), FailedPrecondition);
    assert_err!(sn.remove("base"), FailedPrecondition);
    sn.remove("top").expect("remove top");
    sn.remove("inter").expect("remove inter");
    assert_err!(sn.remove("base"), FailedPrecondition);
    sn.remove("view").expect("remove view");
    sn.remove("base").expect("remove base");
    assert_err!(sn.remove("base"), NotFound);

    // containerd's checkRemove.
    sn.prepare("committed-a", "", l()).expect("prepare");
    sn.commit("committed-1", "committed-a", l())
        .expect("commit");
    sn.prepare("reuse-1", "committed-1", l()).expect("prepare");
    sn.remove("reuse-1").expect("remove");
    sn.view("reuse-1", "committed-1", l()).expect("view");
    sn.remove("reuse-1").expect("remove");
    sn.prepare("reuse-1", "", l()).expect("prepare");
    sn.remove("committed-1").expect("remove");
    sn.commit("committed-1", "reuse-1", l()).expect("commit");
}

/// 128 layers each changing files; every step and the final view match a flat copy, and the
/// mount options of the deepest ones exceed a page (containerd's 128LayersMount).
pub fn deep_chain(factory: Factory) {
    let env = Env::new("deep");
    let sn = factory(&env.root());
    let mnt = env.mnt("m");
    let mut flat: BTreeMap<String, String> = BTreeMap::new();
    let mut parent = String::new();
    for i in 0..128 {
        let key = format!("prepare-layer-{i}");
        let ms = sn.prepare(&key, &parent, gc_root()).expect("prepare");
        let g = mount(&ms, &mnt);
        assert_eq!(tree(&mnt), flat, "layer {i} before changes");
        if i == 0 {
            write(&mnt.join("bottom"), "way at the bottom\n");
            fs::create_dir(mnt.join("ADDHERE")).expect("mkdir");
            flat.insert("bottom".into(), "file:way at the bottom\n".into());
            flat.insert("ADDHERE".into(), "dir".into());
        } else {
            fs::remove_dir_all(mnt.join("ONLYME")).expect("rm ONLYME");
            flat.retain(|k, _| !k.starts_with("ONLYME"));
            write(&mnt.join(format!("ADDHERE/file-{i}")), "same\n");
            flat.insert(format!("ADDHERE/file-{i}"), "file:same\n".into());
        }
        write(&mnt.join("overwriteme"), &format!("{i} WAS HERE!\n"));
        write(&mnt.join(format!("ONLYME/file-{i}")), "only me!\n");
        flat.insert("overwriteme".into(), format!("file:{i} WAS HERE!\n"));
        flat.insert("ONLYME".into(), "dir".into());
        flat.insert(format!("ONLYME/file-{i}"), "file:only me!\n".into());
        assert_eq!(tree(&mnt), flat, "layer {i} after changes");
        g.unmount();
        parent = format!("committed-{i}");
        sn.commit(&parent, &key, gc_root()).expect("commit");
    }
    for (kind, key) in [("view", "fullview"), ("active", "top")] {
        let ms = match kind {
            "view" => sn.view(key, &parent, HashMap::new()),
            _ => sn.prepare(key, &parent, HashMap::new()),
        }
        .expect("create on 128 layers");
        let g = mount(&ms, &mnt);
        assert_eq!(tree(&mnt), flat, "{kind} of 128 layers");
        g.unmount();
    }
}

/// Usage counts the snapshot's own bytes and inodes, hardlinks once; committed keeps it.
pub fn usage(factory: Factory) {
    let env = Env::new("usage");
    let sn = factory(&env.root());
    let mnt = env.mnt("m");
    let ms = sn.prepare("a", "", HashMap::new()).expect("prepare");
    let empty = sn.usage("a").expect("usage");
    assert_eq!(empty.inodes, 1, "an empty layer is its root directory");
    {
        let g = mount(&ms, &mnt);
        fs::write(mnt.join("big"), vec![7u8; 64 * 1024]).expect("write");
        fs::hard_link(mnt.join("big"), mnt.join("big-link")).expect("link");
        write(&mnt.join("d/small"), "0123456789");
        g.unmount();
    }
    let u = sn.usage("a").expect("usage");
    assert_eq!(u.inodes, 4, "root, big (once), d, d/small");
    assert!(
        u.size >= 64 * 1024 + 10 && u.size % 512 == 0,
        "size {}",
        u.size
    );
    assert!(u.size < 2 * 64 * 1024, "hardlink counted twice: {}", u.size);
    sn.commit("c", "a", HashMap::new()).expect("commit");
    assert_eq!(sn.usage("c").expect("usage"), u);
    sn.prepare("b", "c", HashMap::new()).expect("prepare");
    let child = sn.usage("b").expect("usage");
    assert!(
        child.inodes < u.inodes || sn.name() == "native",
        "overlay child counts only its own layer"
    );
}

/// containerd's Update: labels replaced or set per key, parent and kind immutable, times kept
/// and bumped; size limits enforced.
pub fn update_labels(factory: Factory) {
    let env = Env::new("update");
    let sn = factory(&env.root());
    let t1 = SystemTime::now();
    base_snapshots(sn.as_ref());
    let t2 = SystemTime::now();
    let cases = [
        ("c1", Kind::Committed, ""),
        ("c2", Kind::Committed, "c1"),
        ("a1", Kind::Active, "c2"),
        ("a2", Kind::Active, ""),
        ("v1", Kind::View, "c2"),
        ("v2", Kind::View, ""),
    ];
    for (name, kind, parent) in cases {
        let st = sn.stat(name).expect("stat");
        assert!(
            st.created >= t1 && st.created <= t2,
            "{name}: created out of range"
        );
        assert_eq!(st.created, st.updated, "{name}");
        assert_eq!(
            (st.name.as_str(), st.kind, st.parent.as_str()),
            (name, kind, parent)
        );
        let created = st.created;

        let mut want = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3")]);
        want.extend(gc_root());
        let mut info = st.clone();
        info.parent = "doesnotexist".into();
        info.kind = Kind::View;
        info.labels = want.clone();
        let u1 = SystemTime::now();
        let st = sn.update(info, &[]).expect("update");
        let u2 = SystemTime::now();
        assert_eq!(st.created, created);
        assert!(
            st.updated >= u1 && st.updated <= u2,
            "{name}: updated out of range"
        );
        assert_eq!(
            (st.name.as_str(), st.kind, st.parent.as_str()),
            (name, kind, parent)
        );
        assert_eq!(st.labels, want);

        let mut info = st.clone();
        info.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let paths = ["labels.l1".to_string(), "labels.l2".to_string()];
        let st = sn.update(info, &paths).expect("update");
        let mut want = labels(&[("l1", "updated"), ("l3", "v3")]);
        want.extend(gc_root());
        assert_eq!(st.labels, want);

        let mut info = st.clone();
        info.labels = labels(&[("l4", "v4")]);
        let st = sn.update(info, &["labels".to_string()]).expect("update");
        assert_eq!(st.labels, labels(&[("l4", "v4")]));
        assert_eq!(sn.stat(name).expect("stat"), st);

        let mut info = st.clone();
        info.parent = "doesnotexist".into();
        assert_err!(sn.update(info, &["parent".to_string()]), InvalidArgument);
        let mut info = st.clone();
        info.labels = labels(&[("big", &"x".repeat(4096))]);
        assert_err!(
            sn.update(info, &["labels.big".to_string()]),
            InvalidArgument
        );
        assert_eq!(
            sn.stat(name).expect("stat"),
            st,
            "failed updates change nothing"
        );
    }
    let big = labels(&[("k", &"x".repeat(4096))]);
    assert_err!(sn.prepare("big", "", big.clone()), InvalidArgument);
    assert_err!(sn.commit("big", "a2", big), InvalidArgument);
    sn.prepare("ok", "", labels(&[("k", &"x".repeat(4095))]))
        .expect("label of exactly 4096");
}

/// containerd's baseTestSnapshots: c1 ← c2 ← a1, a2, c2 ← v1, v2.
fn base_snapshots(sn: &dyn Snapshotter) {
    sn.prepare("c1-a", "", gc_root()).expect("prepare");
    sn.commit("c1", "c1-a", gc_root()).expect("commit");
    sn.prepare("c2-a", "c1", gc_root()).expect("prepare");
    sn.commit("c2", "c2-a", gc_root()).expect("commit");
    sn.prepare("a1", "c2", gc_root()).expect("prepare");
    sn.prepare("a2", "", gc_root()).expect("prepare");
    sn.view("v1", "c2", gc_root()).expect("view");
    sn.view("v2", "", gc_root()).expect("view");
}

/// Walk visits every kind with what stat says, lets the callback call back in, and stops at
/// the callback's first error.
pub fn walk(factory: Factory) {
    let env = Env::new("walk");
    let sn = factory(&env.root());
    base_snapshots(sn.as_ref());
    let mut seen = Vec::new();
    sn.walk(&mut |i| {
        assert_eq!(&sn.stat(&i.name)?, i);
        seen.push(i.name.clone());
        Ok(())
    })
    .expect("walk");
    seen.sort();
    assert_eq!(seen, ["a1", "a2", "c1", "c2", "v1", "v2"]);
    let mut calls = 0;
    let r = sn.walk(&mut |_| {
        calls += 1;
        Err(Error::precondition("stop"))
    });
    assert_err!(r, FailedPrecondition);
    assert_eq!(calls, 1);
}

/// Everything survives dropping and reopening the snapshotter, which then keeps working.
pub fn restart(factory: Factory) {
    let env = Env::new("restart");
    let mnt = env.mnt("m");
    let keys = ["c1", "c2", "a1", "v1", "a2", "v2"];
    let before: Vec<_> = {
        let sn = factory(&env.root());
        let ms = sn.prepare("c1-a", "", HashMap::new()).expect("prepare");
        {
            let g = mount(&ms, &mnt);
            write(&mnt.join("one"), "1");
            g.unmount();
        }
        sn.commit("c1", "c1-a", labels(&[("x", "y")]))
            .expect("commit");
        let ms = sn.prepare("c2-a", "c1", HashMap::new()).expect("prepare");
        {
            let g = mount(&ms, &mnt);
            write(&mnt.join("two"), "2");
            g.unmount();
        }
        sn.commit("c2", "c2-a", HashMap::new()).expect("commit");
        let ms = sn.prepare("a1", "c2", gc_root()).expect("prepare");
        {
            let g = mount(&ms, &mnt);
            write(&mnt.join("three"), "3");
            g.unmount();
        }
        sn.view("v1", "c2", HashMap::new()).expect("view");
        sn.prepare("a2", "", HashMap::new()).expect("prepare");
        sn.view("v2", "", HashMap::new()).expect("view");
        let mut info = sn.stat("c2").expect("stat");
        info.labels = labels(&[("updated", "yes")]);
        sn.update(info, &[]).expect("update");
        keys.iter()
            .map(|k| {
                let mounts = sn.mounts(k).ok();
                (
                    sn.stat(k).expect("stat"),
                    mounts,
                    sn.usage(k).expect("usage"),
                )
            })
            .collect()
    };

    let sn = factory(&env.root());
    for (k, (info, mounts, usage)) in keys.iter().zip(&before) {
        assert_eq!(&sn.stat(k).expect("stat after restart"), info);
        assert_eq!(&sn.mounts(k).ok(), mounts, "{k}");
        assert_eq!(&sn.usage(k).expect("usage"), usage, "{k}");
    }
    let ms = sn.mounts("a1").expect("mounts");
    {
        let g = mount(&ms, &mnt);
        let t = tree(&mnt);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["one", "three", "two"]);
        g.unmount();
    }
    // Children were counted again.
    assert_err!(sn.remove("c2"), FailedPrecondition);
    assert_err!(sn.prepare("a1", "", HashMap::new()), AlreadyExists);
    sn.commit("c3", "a1", HashMap::new())
        .expect("commit after restart");
    // New ids do not collide with old ones.
    let ms = sn.prepare("a3", "c3", HashMap::new()).expect("prepare");
    {
        let g = mount(&ms, &mnt);
        let t = tree(&mnt);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["one", "three", "two"]);
        g.unmount();
    }
    for k in ["a3", "c3", "v1", "c2", "c1", "a2", "v2"] {
        sn.remove(k).unwrap_or_else(|e| panic!("remove {k}: {e}"));
    }
}

/// *Layout.* What a crash leaves is mended at open, never reused: directories without a record (a
/// half-created snapshot, a half-removed one, strays) are removed; a torn record at the journal's
/// tail is cut off, so later records survive; a record whose directory never reached the disk
/// gets its directory again if it held nothing durable (an active snapshot, a view, an empty
/// committed layer), while a committed layer whose content is gone is dropped with its children.
/// cleanup() removes strays while running.
pub fn crash_leftovers(factory: Factory) {
    let env = Env::new("crash");
    let dir = env.root().join("snapshots");
    let journal = env.root().join("metadata.log");
    let mnt = env.mnt("m");
    {
        let sn = factory(&env.root());
        sn.prepare("c1-a", "", HashMap::new()).expect("prepare"); // 1
        let c1 = sn.active_dir("c1-a").expect("dir");
        write(&c1.join("f"), "from c1");
        fs::set_permissions(&c1, fs::Permissions::from_mode(0o750)).expect("chmod");
        sn.commit("c1", "c1-a", HashMap::new()).expect("commit");
        sn.prepare("a1", "c1", HashMap::new()).expect("prepare"); // 2
        sn.prepare("gone-a", "", HashMap::new()).expect("prepare"); // 3
        write(&sn.active_dir("gone-a").expect("dir").join("g"), "x");
        sn.commit("gone", "gone-a", HashMap::new()).expect("commit");
        sn.prepare("orphan", "gone", HashMap::new())
            .expect("prepare"); // 4
        sn.prepare("e-a", "", HashMap::new()).expect("prepare"); // 5
        sn.commit("e", "e-a", HashMap::new()).expect("commit");
        sn.view("v", "e", HashMap::new()).expect("view"); // 6
    }
    let ls = || {
        let mut v: Vec<String> = fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ls(), ["1", "2", "3", "4", "5", "6"]);
    // The committed layer "gone" lost its content; a1, e and v lost directories that never held
    // anything durable.
    for id in ["2", "3", "5", "6"] {
        fs::remove_dir_all(dir.join(id)).expect("rm");
    }
    write(&dir.join("900/fs/half-created"), "x");
    write(&dir.join("rm-7/fs/half-removed"), "x");
    write(&dir.join("stray-file"), "x");
    // A record torn mid-write: a length and checksum, then half a payload.
    let mut torn = fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .expect("open journal");
    std::io::Write::write_all(&mut torn, &[60, 0, 0, 0, 1, 2, 3, 4, b'{']).expect("write");
    drop(torn);

    {
        let sn = factory(&env.root());
        assert_eq!(ls(), ["1", "2", "5", "6"]);
        assert_err!(sn.stat("orphan"), NotFound);
        assert_err!(sn.stat("gone"), NotFound);
        assert_eq!(sn.stat("a1").expect("stat").parent, "c1");
        assert_eq!(sn.stat("e").expect("stat").kind, Kind::Committed);
        // The restored snapshots work: a1 shows its parent, with the parent's root mode.
        {
            let g = mount(&sn.mounts("a1").expect("mounts"), &mnt);
            assert_eq!(read(&mnt.join("f")), "from c1");
            let mode = fs::metadata(&mnt).expect("stat").mode() & 0o7777;
            assert_eq!(mode, 0o750, "the restored layer has its parent's root mode");
            write(&mnt.join("new-file"), "y");
            g.unmount();
        }
        {
            let g = mount(&sn.mounts("v").expect("mounts"), &mnt);
            assert!(tree(&mnt).is_empty(), "view of an empty layer");
            g.unmount();
        }
        let ms = sn.prepare("new", "", HashMap::new()).expect("prepare");
        assert!(
            ms[0].source.ends_with("/snapshots/901/fs"),
            "ids are not reused: {ms:?}"
        );
    }
    // The record written after the torn one was kept: the tail was cut off, not appended to.
    let sn = factory(&env.root());
    assert_eq!(sn.stat("new").expect("stat").kind, Kind::Active);
    assert_eq!(ls(), ["1", "2", "5", "6", "901"]);

    write(&dir.join("77777/fs/stray"), "x");
    write(&dir.join("junk/x"), "x");
    sn.cleanup().expect("cleanup");
    assert_eq!(
        ls().len(),
        5,
        "cleanup keeps the 5 live snapshots only: {:?}",
        ls()
    );
    let g = mount(&sn.mounts("new").expect("mounts"), &mnt);
    g.unmount();
    for k in ["new", "v", "e", "a1", "c1"] {
        sn.remove(k).unwrap_or_else(|e| panic!("remove {k}: {e}"));
    }
    assert!(ls().is_empty(), "remove leaves no directory: {:?}", ls());
}

/// *Layout.* A root written before the journal (an `info.json` beside each layer) opens with its
/// snapshots, which are then kept in the journal.
pub fn legacy_layout(factory: Factory) {
    let env = Env::new("legacy");
    let dir = env.root().join("snapshots");
    let record = |key: &str, parent: &str, kind: &str| {
        format!(
            r#"{{"key":"{key}","parent":"{parent}","kind":"{kind}","labels":{{"l":"v"}},"created":{{"secs":1700000000,"nanos":5}},"updated":{{"secs":1700000001,"nanos":0}},"size":4096,"inodes":2}}"#
        )
    };
    write(&dir.join("1/fs/f"), "base");
    write(&dir.join("1/info.json"), &record("base", "", "committed"));
    write(&dir.join("3/info.json"), &record("top", "base", "active"));
    fs::create_dir_all(dir.join("3/fs")).expect("mkdir");
    fs::create_dir_all(dir.join("3/work")).expect("mkdir");
    write(&dir.join("4/info.json"), "{");
    fs::create_dir_all(dir.join("4/fs")).expect("mkdir");
    for _ in 0..2 {
        let sn = factory(&env.root());
        let base = sn.stat("base").expect("stat base");
        assert_eq!(base.kind, Kind::Committed);
        assert_eq!(base.labels.get("l").map(String::as_str), Some("v"));
        assert_eq!(
            base.created,
            UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            "times are kept"
        );
        assert_eq!(sn.usage("base").expect("usage").size, 4096);
        assert_eq!(sn.stat("top").expect("stat top").parent, "base");
        assert!(!dir.join("1/info.json").exists(), "the old record is gone");
        assert!(
            !dir.join("4").exists(),
            "a corrupt record's directory is removed"
        );
    }
    let sn = factory(&env.root());
    sn.remove("top").expect("remove");
    sn.remove("base").expect("remove");
}

/// Many threads preparing, committing and removing at once; contended keys have one winner.
pub fn concurrent(factory: Factory) {
    let env = Env::new("concurrent");
    let sn = factory(&env.root());
    sn.prepare("base-a", "", HashMap::new()).expect("prepare");
    write(&sn.active_dir("base-a").expect("dir").join("f"), "base");
    sn.commit("base", "base-a", HashMap::new()).expect("commit");
    const THREADS: usize = 8;
    const EACH: usize = 20;
    let same_ok = AtomicUsize::new(0);
    let winner_ok = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (sn, same_ok, winner_ok) = (&sn, &same_ok, &winner_ok);
            s.spawn(move || {
                for i in 0..EACH {
                    let key = format!("t{t}-{i}-a");
                    let parent = if i == 0 {
                        "base".to_string()
                    } else {
                        format!("t{t}-{}", i - 1)
                    };
                    sn.prepare(&key, &parent, HashMap::new()).expect("prepare");
                    write(
                        &sn.active_dir(&key).expect("dir").join(format!("f{i}")),
                        "x",
                    );
                    sn.commit(&format!("t{t}-{i}"), &key, HashMap::new())
                        .expect("commit");
                    sn.view(&format!("t{t}-{i}-v"), &format!("t{t}-{i}"), HashMap::new())
                        .expect("view");
                    if i % 2 == 1 {
                        sn.remove(&format!("t{t}-{i}-v")).expect("remove");
                    }
                }
                match sn.prepare("same", "base", HashMap::new()) {
                    Ok(_) => {
                        same_ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == berth_errdefs::Kind::AlreadyExists => {}
                    Err(e) => panic!("prepare same: {e}"),
                }
                let key = format!("w{t}");
                sn.prepare(&key, "", HashMap::new()).expect("prepare");
                match sn.commit("winner", &key, HashMap::new()) {
                    Ok(()) => {
                        winner_ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == berth_errdefs::Kind::AlreadyExists => {
                        sn.remove(&key).expect("remove loser")
                    }
                    Err(e) => panic!("commit winner: {e}"),
                }
            });
        }
    });
    assert_eq!(same_ok.load(Ordering::SeqCst), 1);
    assert_eq!(winner_ok.load(Ordering::SeqCst), 1);
    let count = |sn: &dyn Snapshotter| {
        let mut n = 0;
        sn.walk(&mut |_| {
            n += 1;
            Ok(())
        })
        .expect("walk");
        n
    };
    // base + per thread: EACH committed, EACH/2 views; plus "same" and "winner".
    let want = 1 + THREADS * (EACH + EACH / 2) + 2;
    assert_eq!(count(sn.as_ref()), want);
    let mnt = env.mnt("m");
    let g = mount(
        &sn.view("check", &format!("t3-{}", EACH - 1), HashMap::new())
            .expect("view"),
        &mnt,
    );
    assert_eq!(tree(&mnt).len(), 1 + EACH);
    g.unmount();
    drop(sn);
    assert_eq!(count(factory(&env.root()).as_ref()), want + 1);
}

/// Ownership, modes, times, xattrs, hardlinks, symlinks, FIFOs and device nodes of a layer are
/// what a child sees (containerd's Chown, DirectoryPermissionOnCommit; native copies them).
pub fn metadata_preserved(factory: Factory) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    use std::os::unix::fs::lchown;

    let env = Env::new("metadata");
    let sn = factory(&env.root());
    let mnt = env.mnt("m");
    let when = fs::FileTimes::new()
        .set_accessed(UNIX_EPOCH + Duration::new(1_000_000, 123_456_789))
        .set_modified(UNIX_EPOCH + Duration::new(1_500_000_000, 987_654_321));
    let names = [
        "suid",
        "hard",
        "link",
        "fifo",
        "null",
        "private",
        "private/f",
    ];
    let ms = sn.prepare("base-a", "", HashMap::new()).expect("prepare");
    let xattr_ok;
    let want: Vec<_> = {
        let g = mount(&ms, &mnt);
        write(&mnt.join("suid"), "#!/bin/sh\n");
        lchown(mnt.join("suid"), Some(1), Some(2)).expect("chown");
        fs::set_permissions(mnt.join("suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
        xattr_ok = crate::copy::set_xattr(&mnt.join("suid"), "user.berth", b"v").is_ok();
        fs::hard_link(mnt.join("suid"), mnt.join("hard")).expect("link");
        std::os::unix::fs::symlink("suid", mnt.join("link")).expect("symlink");
        mknod(
            &mnt.join("fifo"),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o640),
            0,
        )
        .expect("mkfifo");
        mknod(
            &mnt.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .expect("mknod");
        write(&mnt.join("private/f"), "secret");
        lchown(mnt.join("private"), Some(3), Some(4)).expect("chown");
        fs::set_permissions(mnt.join("private"), fs::Permissions::from_mode(0o700)).expect("chmod");
        for n in ["suid", "private/f", "private"] {
            fs::File::options()
                .read(true)
                .open(mnt.join(n))
                .expect("open")
                .set_times(when)
                .expect("utimes");
        }
        lchown(&mnt, Some(5), Some(6)).expect("chown root");
        fs::set_permissions(&mnt, fs::Permissions::from_mode(0o750)).expect("chmod root");
        let w = names.iter().map(|n| describe(&mnt.join(n))).collect();
        g.unmount();
        w
    };
    let root_want = describe_root(&sn.active_dir("base-a").expect("dir"));
    sn.commit("base", "base-a", HashMap::new()).expect("commit");
    for (kind, key) in [("active", "child"), ("view", "view")] {
        let ms = match kind {
            "view" => sn.view(key, "base", HashMap::new()),
            _ => sn.prepare(key, "base", HashMap::new()),
        }
        .expect("create child");
        let g = mount(&ms, &mnt);
        for (n, w) in names.iter().zip(&want) {
            assert_eq!(&describe(&mnt.join(n)), w, "{kind}: {n}");
        }
        assert_eq!(describe_root(&mnt), root_want, "{kind}: root directory");
        let (a, b) = (
            fs::metadata(mnt.join("suid")),
            fs::metadata(mnt.join("hard")),
        );
        let (a, b) = (a.expect("stat"), b.expect("stat"));
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "{kind}: hardlink kept");
        if xattr_ok {
            let v = crate::copy::get_xattr(&mnt.join("suid"), "user.berth");
            assert_eq!(v.as_deref(), Some(&b"v"[..]), "{kind}: xattr");
        }
        g.unmount();
    }
}

/// Type, mode, owner, rdev, mtime, symlink target and content of one path.
fn describe(p: &Path) -> String {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
    let ft = md.file_type();
    let extra = if ft.is_symlink() {
        fs::read_link(p).expect("readlink").display().to_string()
    } else if ft.is_file() {
        read(p)
    } else {
        String::new()
    };
    let mtime = if ft.is_symlink() {
        0
    } else {
        md.mtime() * 1_000_000_000 + md.mtime_nsec()
    };
    let kind = if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "chr"
    } else {
        ""
    };
    format!(
        "{kind} mode={:o} {}:{} rdev={} mtime={mtime} {extra}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.rdev()
    )
}

fn describe_root(p: &Path) -> String {
    let md = fs::metadata(p).expect("stat");
    format!("mode={:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid())
}

/// The diff service's fast path: files written straight into `active_dir` are the layer.
pub fn active_dir(factory: Factory) {
    let env = Env::new("active-dir");
    let sn = factory(&env.root());
    sn.prepare("a", "", HashMap::new()).expect("prepare");
    write(
        &sn.active_dir("a").expect("dir").join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\n",
    );
    sn.commit("c", "a", HashMap::new()).expect("commit");
    sn.prepare("b", "c", HashMap::new()).expect("prepare");
    write(
        &sn.active_dir("b").expect("dir").join("etc/group"),
        "root:x:0:\n",
    );
    sn.commit("d", "b", HashMap::new()).expect("commit");
    let mnt = env.mnt("m");
    let g = mount(&sn.view("v", "d", HashMap::new()).expect("view"), &mnt);
    assert_eq!(read(&mnt.join("etc/passwd")), "root:x:0:0::/root:/bin/sh\n");
    assert_eq!(read(&mnt.join("etc/group")), "root:x:0:\n");
    g.unmount();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NativeSnapshotter, OverlaySnapshotter};

    fn overlay(root: &Path) -> Box<dyn Snapshotter> {
        Box::new(OverlaySnapshotter::open(root).expect("open overlayfs"))
    }

    fn native(root: &Path) -> Box<dyn Snapshotter> {
        Box::new(NativeSnapshotter::open(root).expect("open native"))
    }

    macro_rules! suite {
        ($($case:ident),* $(,)?) => {
            mod overlayfs {
                $( #[test] fn $case() { super::super::$case(&super::overlay) } )*
            }
            mod native {
                $( #[test] fn $case() { super::super::$case(&super::native) } )*
            }
            #[test]
            fn every_case_runs_for_both() {
                let listed: Vec<&str> = vec![$(stringify!($case)),*];
                let cases: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
                assert_eq!(listed, cases);
            }
        };
    }

    suite!(
        basic,
        whiteouts,
        view_readonly,
        names_unique,
        parent_rules,
        remove_rules,
        deep_chain,
        usage,
        update_labels,
        walk,
        restart,
        crash_leftovers,
        legacy_layout,
        concurrent,
        metadata_preserved,
        active_dir,
        commit_onto,
    );

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
