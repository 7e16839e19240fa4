//! Layer apply/compute tests. They run as root on real files: devices, ownership, `trusted.*`
//! xattrs and an overlay mount need it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
};
use sha2::{Digest as _, Sha256};

use super::tarfmt::{self, WriteHeader, BLOCK};
use super::*;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

// ----- building archives ------------------------------------------------------------------

/// A hand-rolled archive builder so hostile and odd headers can be produced exactly.
#[derive(Default)]
struct Tb(Vec<u8>);

fn wh<'a>(name: &'a [u8], typeflag: u8, mode: u32, size: u64, link: &'a [u8]) -> WriteHeader<'a> {
    WriteHeader {
        name,
        linkname: link,
        typeflag,
        mode,
        uid: 0,
        gid: 0,
        size,
        mtime: 1_600_000_000,
        devmajor: 0,
        devminor: 0,
        xattrs: &[],
    }
}

impl Tb {
    fn header(&mut self, h: &WriteHeader<'_>) -> &mut Self {
        tarfmt::write_header(&mut self.0, h).unwrap();
        self
    }
    fn data(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        let pad = tarfmt::padding(data.len() as u64) as usize;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.header(&wh(name.as_bytes(), b'0', mode, data.len() as u64, b""))
            .data(data)
    }
    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.header(&wh(name.as_bytes(), b'5', mode, 0, b""))
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(&wh(name.as_bytes(), b'2', 0o777, 0, target.as_bytes()))
    }
    fn link(&mut self, name: &str, target: &str, mode: u32) -> &mut Self {
        self.header(&wh(name.as_bytes(), b'1', mode, 0, target.as_bytes()))
    }
    fn raw(&mut self, mut blk: [u8; BLOCK]) -> &mut Self {
        fix_checksum(&mut blk);
        self.0.extend_from_slice(&blk);
        self
    }
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let inner = k.len() + v.len() + 3;
            let mut len = inner + 1;
            while len != inner + len.to_string().len() {
                len = inner + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.header(&wh(b"PaxHeaders/x", b'x', 0o644, body.len() as u64, b""))
            .data(&body)
    }
    fn end(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        v.extend_from_slice(&[0u8; 2 * BLOCK]);
        v
    }
}

fn fix_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha256(data: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(data).into())
}

fn apply_tar(tar: &[u8], target: &Path, w: Whiteouts) -> Result<Applied> {
    apply_layer(tar, TAR, target, w, &Limits::default())
}

fn assert_invalid(res: Result<Applied>, needle: &str) {
    match res {
        Err(e) if e.kind() == berth_errdefs::Kind::InvalidArgument => {
            let msg = e.message();
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
        }
        other => panic!("expected InvalidArgument containing {needle:?}, got {other:?}"),
    }
}

// ----- inspecting trees -------------------------------------------------------------------

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let n = match rfs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return BTreeMap::new(),
    };
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"security.selinux") {
            continue;
        }
        let mut v = vec![0u8; 65536];
        if let Ok(k) = rfs::lgetxattr(p, std::ffi::OsStr::from_bytes(name), &mut v[..]) {
            v.truncate(k);
            out.insert(name.to_vec(), v);
        }
    }
    out
}

/// Everything about one path that a layer round trip must preserve.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
    content: Vec<u8>,
    link: Option<PathBuf>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

struct Opts {
    nsec: bool,
    dir_mtime: bool,
}

fn snapshot(root: &Path, opts: &Opts) -> BTreeMap<PathBuf, Node> {
    snapshot_except(root, opts, None)
}

fn snapshot_except(root: &Path, opts: &Opts, skip: Option<&Path>) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for ent in fs::read_dir(&p).unwrap() {
            let path = ent.unwrap().path();
            if Some(path.as_path()) == skip {
                continue;
            }
            let md = fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push(path.clone());
            }
            let content = if ft.is_file() {
                Sha256::digest(fs::read(&path).unwrap()).to_vec()
            } else {
                Vec::new()
            };
            let mtime = if ft.is_dir() && !opts.dir_mtime {
                (0, 0)
            } else if opts.nsec {
                (md.mtime(), md.mtime_nsec())
            } else {
                (md.mtime(), 0)
            };
            let node = Node {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                rdev: md.rdev(),
                nlink: if ft.is_dir() { 0 } else { md.nlink() },
                size: if ft.is_dir() { 0 } else { md.size() },
                mtime,
                content,
                link: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                xattrs: xattrs(&path),
            };
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), node);
        }
    }
    out
}

fn assert_same_tree(want: &Path, got: &Path, opts: &Opts) {
    let a = snapshot(want, opts);
    let b = snapshot(got, opts);
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "different paths");
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{} differs", k.display());
    }
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    rfs::utimensat(
        rfs::CWD,
        p,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mknod(p: &Path, ft: FileType, mode: u32, maj: u32, min: u32) {
    rfs::mknodat(
        rfs::CWD,
        p,
        ft,
        Mode::from_raw_mode(mode),
        rfs::makedev(maj, min),
    )
    .unwrap();
}

fn setxattr(p: &Path, k: &str, v: &[u8]) {
    rfs::lsetxattr(p, k, v, rfs::XattrFlags::empty()).unwrap();
}

/// VFS_CAP_REVISION_2 granting CAP_NET_RAW.
const CAP_NET_RAW: [u8; 20] = [
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A tree with every entry type and the metadata a layer must carry.
fn build_rich_tree(src: &Path) {
    let p = |s: &str| src.join(s);
    for d in ["d", "d/sub", "bin", "tmp", "shared", "dev"] {
        fs::create_dir(p(d)).unwrap();
    }
    chmod(&p("tmp"), 0o1777);
    chmod(&p("shared"), 0o2775);
    chown(&p("shared"), 0, 50);
    chown(&p("d/sub"), 1000, 1000);
    chmod(&p("d/sub"), 0o700);
    fs::write(p("d/f"), b"hello world\n").unwrap();
    chown(&p("d/f"), 1234, 5678);
    fs::hard_link(p("d/f"), p("d/hard")).unwrap();
    fs::hard_link(p("d/f"), p("bin/hard3")).unwrap();
    fs::write(p("bin/su"), b"#!/bin/true\n").unwrap();
    chmod(&p("bin/su"), 0o4755);
    fs::write(p("bin/ping"), b"ping").unwrap();
    setxattr(&p("bin/ping"), "security.capability", &CAP_NET_RAW);
    setxattr(&p("d/f"), "user.greeting", b"hi\0there");
    setxattr(&p("d"), "user.dirattr", b"x");
    fs::write(p("empty"), b"").unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(p("big"), &big).unwrap();
    let sparse = fs::File::create(p("sparse")).unwrap();
    sparse.set_len(10 << 20).unwrap();
    sparse.write_all_at(&[7u8; 4096], 0).unwrap();
    sparse.write_all_at(&[9u8; 4096], 8 << 20).unwrap();
    drop(sparse);
    symlink("d/f", p("lnk")).unwrap();
    symlink("/nonexistent/dangling", p("dang")).unwrap();
    let long_target = format!("{}/target", "t".repeat(150));
    symlink(&long_target, p("longlink")).unwrap();
    chown(&p("lnk"), 7, 8);
    mknod(&p("dev/null"), FileType::CharacterDevice, 0o666, 1, 3);
    mknod(&p("dev/sda"), FileType::BlockDevice, 0o660, 8, 0);
    chown(&p("dev/sda"), 0, 6);
    mknod(&p("dev/fifo"), FileType::Fifo, 0o600, 0, 0);
    let long_dir = p(&"L".repeat(120));
    fs::create_dir(&long_dir).unwrap();
    let long_file = long_dir.join("f".repeat(200));
    fs::write(&long_file, b"long").unwrap();
    fs::hard_link(&long_file, p("hard-to-long")).unwrap();
    fs::write(p("nsec"), b"n").unwrap();
    set_mtime(&p("nsec"), 1_700_000_000, 123_456_789);
    // Directory times last, after their contents exist.
    for (i, d) in ["d/sub", "d", "bin", "tmp", "shared", "dev"]
        .iter()
        .enumerate()
    {
        set_mtime(&p(d), 1_500_000_000 + i as i64, 0);
    }
    set_mtime(&long_dir, 1_400_000_000, 0);
}

fn gnu_tar(src: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(src)
        .args(args)
        .args(["-cf", "-", "."])
        .output()
        .expect("GNU tar");
    assert!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ----- round trips ------------------------------------------------------------------------

#[test]
fn round_trip_gnu_tar_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_rich_tree(&src);
    let cases: &[(&str, &[&str], bool)] = &[
        (
            "posix",
            &[
                "--format=posix",
                "--xattrs",
                "--xattrs-include=*",
                "--sparse",
                "--sparse-version=1.0",
            ],
            true,
        ),
        (
            "posix-sparse-0.1",
            &[
                "--format=posix",
                "--xattrs",
                "--xattrs-include=*",
                "--sparse",
                "--sparse-version=0.1",
            ],
            true,
        ),
        (
            "posix-sparse-0.0",
            &[
                "--format=posix",
                "--xattrs",
                "--xattrs-include=*",
                "--sparse",
                "--sparse-version=0.0",
            ],
            true,
        ),
        ("gnu", &["--format=gnu", "--sparse"], false),
    ];
    for (name, args, nsec) in cases {
        let tar = gnu_tar(&src, args);
        let dst = tmp.path().join(name);
        fs::create_dir(&dst).unwrap();
        let applied = apply_layer(
            &gzip(&tar)[..],
            TGZ,
            &dst,
            Whiteouts::Native,
            &Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(applied.diff_id, sha256(&tar), "{name}");
        assert_eq!(applied.size, tar.len() as u64, "{name}");
        let opts = Opts {
            nsec: *nsec,
            dir_mtime: true,
        };
        if *nsec {
            assert_same_tree(&src, &dst, &opts);
        } else {
            // The GNU format has no xattrs or sub-second times; everything else must match.
            let strip = |m: BTreeMap<PathBuf, Node>| {
                m.into_iter()
                    .map(|(k, mut v)| {
                        v.xattrs.clear();
                        (k, v)
                    })
                    .collect::<BTreeMap<_, _>>()
            };
            let (a, b) = (strip(snapshot(&src, &opts)), strip(snapshot(&dst, &opts)));
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{name}"
            );
            for (k, v) in &a {
                assert_eq!(Some(v), b.get(k), "{name}: {} differs", k.display());
            }
        }
        // Holes stay holes.
        let blocks = fs::metadata(dst.join("sparse")).unwrap().blocks();
        assert!(
            blocks * 512 < 1 << 20,
            "{name}: sparse file materialised ({blocks} blocks)"
        );
        assert_eq!(fs::metadata(dst.join("d/f")).unwrap().nlink(), 3, "{name}");
    }
}

#[test]
fn handmade_entries_pax_and_gnu_extensions() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("t");
    fs::create_dir(&dst).unwrap();
    let long = format!("{}/{}", "a".repeat(120), "b".repeat(120));
    let mut gnu_long = wh(b"././@LongLink", b'L', 0, long.len() as u64 + 1, b"");
    gnu_long.mtime = 0;
    let mut name_z = long.clone().into_bytes();
    name_z.push(0);
    let mut tb = Tb::default();
    tb.header(&gnu_long).data(&name_z);
    tb.header(&wh(b"truncated-name-ignored", b'0', 0o640, 3, b""))
        .data(b"abc");
    // PAX: uid/gid beyond octal range, nanosecond mtime, xattrs incl. a trusted one (skipped).
    tb.pax(&[
        ("uid", b"3000000"),
        ("gid", b"3000001"),
        ("mtime", b"1700000000.5"),
        ("SCHILY.xattr.user.k", b"v"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("SCHILY.xattr.security.capability", &CAP_NET_RAW),
    ]);
    tb.file("paxfile", b"pax", 0o755);
    // ustar prefix field.
    let mut blk = tarfmt::ustar_block(&wh(b"leaf", b'0', 0o600, 0, b""));
    blk[345..351].copy_from_slice(b"prefix");
    tb.raw(blk);
    // V7-style directory: typeflag NUL plus trailing slash.
    let mut v7 = tarfmt::ustar_block(&wh(b"v7dir/", 0, 0o755, 0, b""));
    v7[257..265].fill(0);
    tb.raw(v7);
    // Global header: ignored, including its name.
    tb.header(&wh(b"paxfile", b'g', 0o644, 0, b""));
    let tar = tb.end();
    apply_tar(&tar, &dst, Whiteouts::Native).unwrap();
    assert_eq!(fs::read(dst.join(&long)).unwrap(), b"abc");
    assert_eq!(
        fs::metadata(dst.join(&long)).unwrap().mode() & 0o7777,
        0o640
    );
    let md = fs::metadata(dst.join("paxfile")).unwrap();
    assert_eq!((md.uid(), md.gid()), (3_000_000, 3_000_001));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 500_000_000));
    let x = xattrs(&dst.join("paxfile"));
    assert_eq!(x.get(&b"user.k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
    assert_eq!(
        x.get(&b"security.capability"[..]).map(Vec::as_slice),
        Some(&CAP_NET_RAW[..])
    );
    assert!(
        !x.contains_key(&b"trusted.overlay.opaque"[..]),
        "trusted.* must not be applied"
    );
    assert!(dst.join("prefix/leaf").is_file());
    assert!(dst.join("v7dir").is_dir());
}

// ----- whiteouts --------------------------------------------------------------------------

fn lower_layer() -> Vec<u8> {
    Tb::default()
        .file("a", b"a", 0o644)
        .file("b", b"b", 0o644)
        .dir("d", 0o755)
        .file("d/x", b"x", 0o644)
        .file("d/y", b"y", 0o644)
        .dir("o", 0o755)
        .file("o/p", b"p", 0o644)
        .dir("o/keep", 0o755)
        .file("o/keep/old", b"old", 0o644)
        .end()
}

fn whiteout_layer() -> Vec<u8> {
    let mut tb = Tb::default();
    tb.file(".wh.a", b"", 0o644)
        .dir("d", 0o755)
        .file("d/.wh.x", b"", 0o644)
        .dir("o", 0o755)
        // Written before the opaque marker: must survive it.
        .file("o/new", b"new", 0o644)
        .dir("o/keep", 0o755);
    tb.file("o/.wh..wh..opq", b"", 0o644);
    tb.end()
}

#[test]
fn native_whiteouts_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    fs::create_dir(&root).unwrap();
    apply_tar(&lower_layer(), &root, Whiteouts::Native).unwrap();
    apply_tar(&whiteout_layer(), &root, Whiteouts::Native).unwrap();
    assert!(!root.join("a").exists());
    assert!(root.join("b").exists());
    assert!(!root.join("d/x").exists());
    assert!(root.join("d/y").exists());
    let mut o: Vec<_> = fs::read_dir(root.join("o"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    o.sort();
    assert_eq!(o, ["keep", "new"]);
    // The kept directory came from this layer, but its lower content is still hidden.
    assert_eq!(fs::read_dir(root.join("o/keep")).unwrap().count(), 0);
    assert!(!root.join(".wh.a").exists() && !root.join("o/.wh..wh..opq").exists());
}

/// Unmounts on drop so a failing assertion cannot leak a mount.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// `merged` mounted as an overlay of `upper` on `lower` (index off, so an upper can be mounted
/// again), unmounted when the guard drops.
fn mount_overlay(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Mounted {
    let opts = format!(
        "index=off,lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(opts).unwrap();
    rustix::mount::mount(
        "overlay",
        merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .expect("mount overlay");
    Mounted(merged.to_path_buf())
}

#[test]
fn overlay_whiteouts_hide_lower_files_when_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|n| {
        let p = tmp.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    });
    apply_tar(&lower_layer(), &lower, Whiteouts::Native).unwrap();
    apply_tar(&whiteout_layer(), &upper, Whiteouts::Overlay).unwrap();

    for w in ["a", "d/x"] {
        let md = fs::symlink_metadata(upper.join(w)).unwrap();
        assert_eq!(md.mode() & 0o170000, 0o020000, "{w} is a char device");
        assert_eq!((md.rdev(), md.uid(), md.gid()), (0, 0, 0), "{w}");
    }
    let opq = xattrs(&upper.join("o"));
    assert_eq!(
        opq.get(&b"trusted.overlay.opaque"[..]).map(Vec::as_slice),
        Some(&b"y"[..])
    );

    let _guard = mount_overlay(&lower, &upper, &work, &merged);
    assert!(!merged.join("a").exists());
    assert_eq!(fs::read(merged.join("b")).unwrap(), b"b");
    assert!(!merged.join("d/x").exists());
    assert!(merged.join("d/y").exists());
    let mut o: Vec<_> = fs::read_dir(merged.join("o"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    o.sort();
    assert_eq!(o, ["keep", "new"]);
    assert!(!merged.join("o/keep/old").exists());
}

#[test]
fn implied_parents_copy_lower_attributes() {
    let tmp = tempfile::tempdir().unwrap();
    let [lower, upper] = ["lower", "upper"].map(|n| {
        let p = tmp.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    });
    fs::create_dir_all(lower.join("tmp/deep")).unwrap();
    chmod(&lower.join("tmp"), 0o1777);
    chown(&lower.join("tmp/deep"), 42, 43);
    setxattr(&lower.join("tmp/deep"), "user.k", b"v");
    setxattr(&lower.join("tmp/deep"), "trusted.overlay.opaque", b"y");
    let tar = Tb::default()
        .file("tmp/deep/file", b"f", 0o644)
        .file("new/f", b"", 0o644)
        .end();
    apply_layer_with_parents(
        &tar[..],
        TAR,
        &upper,
        &[&lower],
        Whiteouts::Overlay,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        fs::metadata(upper.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let deep = fs::metadata(upper.join("tmp/deep")).unwrap();
    assert_eq!((deep.uid(), deep.gid()), (42, 43));
    let x = xattrs(&upper.join("tmp/deep"));
    assert_eq!(x.get(&b"user.k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
    assert!(!x.contains_key(&b"trusted.overlay.opaque"[..]));
    assert_eq!(
        fs::metadata(upper.join("new")).unwrap().mode() & 0o7777,
        0o755
    );
}

/// Parallel unpack: a layer applied with no lower layers, then given its implied directories'
/// attributes once the lowers exist (`inherit_implied_dirs`), is the same tree, byte for byte
/// (modes, owners, xattrs, whiteouts, opaque markers, contents), as the layer applied on top
/// of them in sequence. Directory times aside: sequential apply dates an implied directory by
/// the entries it then creates in it.
#[test]
fn implied_dirs_fixed_after_the_fact_match_a_sequential_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let [bottom, top, seq, par] = ["bottom", "top", "seq", "par"].map(|n| {
        let p = tmp.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    });
    // The bottom layer: directories with unusual modes, owners and xattrs.
    fs::create_dir_all(bottom.join("srv/data/deep")).unwrap();
    chmod(&bottom.join("srv"), 0o750);
    chown(&bottom.join("srv"), 0, 50);
    chmod(&bottom.join("srv/data"), 0o2770);
    chown(&bottom.join("srv/data"), 1234, 5678);
    setxattr(&bottom.join("srv/data"), "user.origin", b"bottom");
    chmod(&bottom.join("srv/data/deep"), 0o700);
    chown(&bottom.join("srv/data/deep"), 77, 88);
    fs::create_dir(bottom.join("tmp")).unwrap();
    chmod(&bottom.join("tmp"), 0o1777);
    fs::create_dir_all(bottom.join("shadowed/x")).unwrap();
    chown(&bottom.join("shadowed"), 9, 9);
    fs::create_dir(bottom.join("opq")).unwrap();
    chown(&bottom.join("opq"), 5, 6);
    // The top lower layer: overrides one directory, whites another out, makes one opaque.
    fs::create_dir(top.join("tmp")).unwrap();
    chmod(&top.join("tmp"), 0o1775);
    chown(&top.join("tmp"), 3, 4);
    mknod(&top.join("shadowed"), FileType::CharacterDevice, 0, 0, 0);
    fs::create_dir(top.join("opq")).unwrap();
    chown(&top.join("opq"), 7, 8);
    chmod(&top.join("opq"), 0o711);
    setxattr(&top.join("opq"), "trusted.overlay.opaque", b"y");
    // The layer: files under directories it does not list, whiteouts, an opaque marker, one
    // directory implied first and listed later (its own header wins), one implied then replaced.
    let layer = Tb::default()
        .file("srv/data/deep/new", b"new", 0o640)
        .file("srv/data/deeper/f", b"f", 0o600)
        .file("srv/data/.wh.gone", b"", 0o644)
        .file("tmp/sock-dir/f", b"f", 0o600)
        .file("shadowed/x/y", b"y", 0o644)
        .file("opq/.wh..wh..opq", b"", 0o644)
        .file("opq/kept", b"k", 0o644)
        .file("listed/later/f", b"", 0o644)
        .dir("listed", 0o700)
        .file("replaced/f", b"", 0o644)
        .file("replaced", b"now a file", 0o644)
        .file("fresh/a/b", b"b", 0o644)
        .end();
    let lowers: [&Path; 2] = [&top, &bottom];
    let sequential = apply_layer_with_parents(
        &layer[..],
        TAR,
        &seq,
        &lowers,
        Whiteouts::Overlay,
        &Limits::default(),
    )
    .unwrap();
    let alone = apply_layer(
        &layer[..],
        TAR,
        &par,
        Whiteouts::Overlay,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(alone.diff_id, sequential.diff_id);
    let mut implied: Vec<String> = alone
        .implied_dirs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    implied.sort();
    // `listed` is listed by the layer, so not implied; `listed/later` is.
    assert_eq!(
        implied,
        [
            "fresh",
            "fresh/a",
            "listed/later",
            "opq",
            "replaced",
            "shadowed",
            "shadowed/x",
            "srv",
            "srv/data",
            "srv/data/deep",
            "srv/data/deeper",
            "tmp",
            "tmp/sock-dir",
        ]
    );
    let opts = Opts {
        nsec: true,
        dir_mtime: false,
    };
    // Whiteout devices are dated when they are made, by either path.
    let tree = |root: &Path| {
        let mut t = snapshot(root, &opts);
        for node in t.values_mut() {
            if node.mode & 0o170000 == 0o020000 {
                node.mtime = (0, 0);
            }
        }
        t
    };
    // Before the fix the trees differ (the test can fail): srv/data is root's 0755.
    assert_ne!(tree(&seq), tree(&par));
    inherit_implied_dirs(&par, &alone.implied_dirs, &lowers).unwrap();
    let (want, got) = (tree(&seq), tree(&par));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        assert_eq!(Some(v), got.get(k), "{} differs", k.display());
    }
    // And what sequential apply gives is the lowers' attributes.
    let data = fs::metadata(par.join("srv/data")).unwrap();
    assert_eq!(
        (data.mode() & 0o7777, data.uid(), data.gid()),
        (0o2770, 1234, 5678)
    );
    assert_eq!(
        xattrs(&par.join("srv/data")).get(&b"user.origin"[..]),
        Some(&b"bottom".to_vec())
    );
    let tmp_dir = fs::metadata(par.join("tmp")).unwrap();
    assert_eq!((tmp_dir.mode() & 0o7777, tmp_dir.uid()), (0o1775, 3));
    // Whited out in the top layer: defaults, not the bottom's owner.
    assert_eq!(fs::metadata(par.join("shadowed")).unwrap().uid(), 0);
    assert!(xattrs(&par.join("opq")).contains_key(&b"trusted.overlay.opaque"[..]));
}

#[test]
fn replacing_existing_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    fs::create_dir(&root).unwrap();
    fs::create_dir_all(root.join("dir/child")).unwrap();
    fs::write(root.join("dir/keep"), b"k").unwrap();
    fs::write(root.join("file"), b"old").unwrap();
    fs::create_dir_all(root.join("becomes-file/sub")).unwrap();
    symlink("dir", root.join("link")).unwrap();
    let tar = Tb::default()
        .dir("dir", 0o700) // dir over dir: merged, metadata updated
        .file("file", b"new", 0o600)
        .file("becomes-file", b"f", 0o644)
        .dir("link", 0o755) // dir over symlink: the symlink goes
        .end();
    apply_tar(&tar, &root, Whiteouts::Native).unwrap();
    assert_eq!(fs::read(root.join("dir/keep")).unwrap(), b"k");
    assert_eq!(
        fs::metadata(root.join("dir")).unwrap().mode() & 0o7777,
        0o700
    );
    assert_eq!(fs::read(root.join("file")).unwrap(), b"new");
    assert!(root.join("becomes-file").is_file());
    assert!(fs::symlink_metadata(root.join("link")).unwrap().is_dir());
}

// ----- hostile archives -------------------------------------------------------------------

/// A host area next to the target that no archive may change.
struct Host {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    target: PathBuf,
    canary: PathBuf,
    before: BTreeMap<PathBuf, (Node, u64)>,
}

fn host_state(base: &Path) -> BTreeMap<PathBuf, (Node, u64)> {
    let mut snap = BTreeMap::new();
    let opts = Opts {
        nsec: true,
        dir_mtime: true,
    };
    // Everything under base except the target itself; inode numbers catch replacement.
    for (k, v) in snapshot_except(base, &opts, Some(&base.join("target"))) {
        let ino = fs::symlink_metadata(base.join(&k)).unwrap().ino();
        snap.insert(k, (v, ino));
    }
    let md = fs::metadata(base).unwrap();
    snap.insert(
        PathBuf::from("."),
        (
            Node {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                rdev: 0,
                nlink: 0,
                size: 0,
                mtime: (md.mtime(), md.mtime_nsec()),
                content: Vec::new(),
                link: None,
                xattrs: BTreeMap::new(),
            },
            md.ino(),
        ),
    );
    snap
}

impl Host {
    fn new() -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let canary = base.join("canary");
        fs::create_dir(&canary).unwrap();
        fs::write(canary.join("passwd"), b"root:x:0:0\n").unwrap();
        chmod(&canary.join("passwd"), 0o400);
        fs::create_dir(canary.join("sub")).unwrap();
        fs::write(canary.join("sub/x"), b"x").unwrap();
        chmod(&canary.join("sub"), 0o700);
        fs::write(base.join("perm400"), b"...").unwrap();
        chmod(&base.join("perm400"), 0o400);
        let target = base.join("target");
        fs::create_dir(&target).unwrap();
        // Make mtimes old so any touch is visible even within the same second.
        for p in [
            canary.join("passwd"),
            canary.join("sub/x"),
            canary.join("sub"),
            canary.clone(),
            base.join("perm400"),
        ] {
            set_mtime(&p, 1_000_000_000, 0);
        }
        let before = host_state(&base);
        Host {
            _tmp: tmp,
            base,
            target,
            canary,
            before,
        }
    }

    fn c(&self, rel: &str) -> String {
        self.canary.join(rel).display().to_string()
    }

    fn assert_untouched(&self, case: &str) {
        let after = host_state(&self.base);
        assert_eq!(
            self.before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{case}: files appeared or vanished outside the target"
        );
        for (k, v) in &self.before {
            assert_eq!(
                Some(v),
                after.get(k),
                "{case}: host path {} changed",
                k.display()
            );
        }
    }
}

/// (dev, ino) of `rel` resolved inside `root` the way the kernel does for RESOLVE_IN_ROOT.
fn id_in_root(root: &Path, rel: &str) -> Option<(u64, u64)> {
    let rfd = rfs::open(root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).ok()?;
    let fd = rfs::openat2(
        &rfd,
        rel,
        OFlags::PATH,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
    .ok()?;
    let st = rfs::fstat(&fd).ok()?;
    Some((st.st_dev, st.st_ino))
}

fn same_in_root(root: &Path, a: &str, b: &str) -> bool {
    let (x, y) = (id_in_root(root, a), id_in_root(root, b));
    x.is_some() && x == y
}

type Check = Box<dyn Fn(&Host)>;

enum Expect {
    Ok(Check),
    Err(&'static str),
}

fn ok(f: impl Fn(&Host) + 'static) -> Expect {
    Expect::Ok(Box::new(f))
}

fn inside(rel: &'static str, content: &'static [u8]) -> Expect {
    ok(move |h| {
        assert_eq!(
            fs::read(h.target.join(rel.trim_start_matches('/'))).unwrap(),
            content,
            "{rel}"
        )
    })
}

fn run_case(name: &str, setup: impl Fn(&Host) -> Vec<u8>, wh_mode: Whiteouts, expect: Expect) {
    // Once with the kernel's RESOLVE_IN_ROOT fast path, once with the userspace walk only.
    for force_walk in [false, true] {
        super::fsops::FORCE_WALK.with(|f| f.set(force_walk));
        let name = format!("{name}{}", if force_walk { " (walk)" } else { "" });
        let h = Host::new();
        let tar = setup(&h);
        let res = apply_tar(&tar, &h.target, wh_mode);
        match &expect {
            Expect::Ok(check) => {
                res.unwrap_or_else(|e| panic!("{name}: {e}"));
                check(&h);
            }
            Expect::Err(needle) => match res {
                Err(e) => assert!(
                    e.to_string().contains(needle),
                    "{name}: {e} lacks {needle:?}"
                ),
                Ok(_) => panic!("{name}: expected an error containing {needle:?}"),
            },
        }
        h.assert_untouched(&name);
    }
    super::fsops::FORCE_WALK.with(|f| f.set(false));
}

#[test]
fn breakouts_paths_and_symlinks() {
    // B1: `..` and absolute names stay inside.
    run_case(
        "dotdot-file",
        |h| {
            Tb::default()
                .file(
                    &format!("../../../../../..{}", h.c("passwd")),
                    b"pwned",
                    0o777,
                )
                .end()
        },
        Whiteouts::Native,
        ok(|h| {
            let inside = h.target.join(h.c("passwd").trim_start_matches('/'));
            assert_eq!(fs::read(inside).unwrap(), b"pwned");
        }),
    );
    run_case(
        "absolute-file",
        |h| Tb::default().file(&h.c("passwd"), b"pwned", 0o777).end(),
        Whiteouts::Native,
        ok(|_| {}),
    );
    run_case(
        "dot-dotdot",
        |_| Tb::default().file("./../x", b"x", 0o644).end(),
        Whiteouts::Native,
        inside("x", b"x"),
    );
    run_case(
        "relative-up",
        |_| Tb::default().file("../target/x", b"x", 0o644).end(),
        Whiteouts::Native,
        inside("target/x", b"x"),
    );
    // B2: SymlinkAbsolute.
    run_case(
        "symlink-absolute-to-host",
        |h| {
            Tb::default()
                .symlink("localetc", &h.c(""))
                .file("localetc/passwd", b"pwned", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| {
            let inside = h.target.join(h.c("passwd").trim_start_matches('/'));
            assert_eq!(fs::read(inside).unwrap(), b"pwned");
        }),
    );
    run_case(
        "SymlinkAbsolute",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .symlink("localetc", "/etc")
                .file("/localetc/unbroken", b"unbroken", 0o644)
                .end()
        },
        Whiteouts::Native,
        inside("etc/unbroken", b"unbroken"),
    );
    // B3: relative escapes and chains.
    run_case(
        "SymlinkUpAndOut",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .dir("dummy", 0o755)
                .symlink("localetc", "/dummy/../etc")
                .file("/localetc/unbroken", b"unbroken", 0o644)
                .end()
        },
        Whiteouts::Native,
        inside("etc/unbroken", b"unbroken"),
    );
    run_case(
        "symlink-relative-up-to-host",
        |h| {
            let up = "../".repeat(20);
            Tb::default()
                .dir("a", 0o755)
                .symlink("a/l", &format!("{up}{}", h.c("").trim_start_matches('/')))
                .file("a/l/passwd", b"pwned", 0o644)
                .file("a/l/sub/x", b"pwned", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| {
            let inside = h.target.join(h.c("sub/x").trim_start_matches('/'));
            assert_eq!(fs::read(inside).unwrap(), b"pwned");
        }),
    );
    run_case(
        "SymlinkMultipleRelative",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .dir("dummy", 0o755)
                .symlink("/dummy/etc", "/etc")
                .symlink("localetc", "./dummy/etc")
                .file("/dummy/etc/unbroken", b"unbroken", 0o644)
                .end()
        },
        Whiteouts::Native,
        inside("etc/unbroken", b"unbroken"),
    );
    run_case(
        "dead-symlink-parent-created-inside",
        |h| {
            Tb::default()
                .symlink("l", &h.c("newdir"))
                .file("l/f", b"f", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| {
            let inside = h.target.join(h.c("newdir/f").trim_start_matches('/'));
            assert_eq!(fs::read(inside).unwrap(), b"f");
        }),
    );
    run_case(
        "symlink-loop",
        |_| {
            let mut tb = Tb::default();
            for i in 0..300 {
                tb.symlink(&format!("l{i}"), &format!("l{}", (i + 1) % 300));
            }
            tb.file("l0/x", b"x", 0o644).end()
        },
        Whiteouts::Native,
        Expect::Err("too many levels of symbolic links"),
    );
    run_case(
        "symlink-self-loop",
        |_| {
            Tb::default()
                .symlink("s", "s/s")
                .file("s/x", b"x", 0o644)
                .end()
        },
        Whiteouts::Native,
        Expect::Err("too many levels of symbolic links"),
    );
    run_case(
        "SymlinkEmptyFile",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .file("etc/emptied", b"notempty", 0o644)
                .symlink("localetc", "/etc")
                .file("/localetc/emptied", b"", 0o644)
                .end()
        },
        Whiteouts::Native,
        inside("etc/emptied", b""),
    );
    run_case(
        "SymlinkParentDirectory",
        |_| {
            Tb::default()
                .dir("etc", 0o770)
                .file("/etc/passwd", b"inside", 0o644)
                .symlink("..", "/etc/")
                .link("localpasswd", "/etc/passwd", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| assert!(same_in_root(&h.target, "localpasswd", "etc/passwd"))),
    );
    run_case(
        "SymlinkEmptyFilename",
        |_| {
            Tb::default()
                .dir("etc", 0o770)
                .file("/etc/passwd", b"inside", 0o644)
                .symlink("", "/etc/")
                .link("localpasswd", "/etc/passwd", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| assert!(same_in_root(&h.target, "localpasswd", "etc/passwd"))),
    );
    run_case(
        "SymlinkParentRelative",
        |_| {
            Tb::default()
                .dir("etc", 0o770)
                .file("/etc/passwd", b"inside", 0o644)
                .symlink("localetc/sub/..", "/etc/")
                .link("/localetc/localpasswd", "/etc/passwd", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| {
            assert!(same_in_root(
                &h.target,
                "localetc/localpasswd",
                "etc/passwd"
            ))
        }),
    );
}

#[test]
fn breakouts_hardlinks_and_modes() {
    // B4: hardlinks never reach a host inode (the canary's link count would change).
    for (name, link) in [
        ("hardlink-absolute", "ABS"),
        ("hardlink-relative", "../../../../../../..ABS"),
    ] {
        run_case(
            name,
            move |h| {
                Tb::default()
                    .link("mine", &link.replace("ABS", &h.c("passwd")), 0o777)
                    .end()
            },
            Whiteouts::Native,
            Expect::Err("link"),
        );
    }
    run_case(
        "hardlink-through-symlinked-dir",
        |h| {
            Tb::default()
                .symlink("hostdir", &h.c(""))
                .link("mine", "hostdir/passwd", 0o777)
                .end()
        },
        Whiteouts::Native,
        Expect::Err("link"),
    );
    run_case(
        "HardlinkRelative",
        |_| {
            Tb::default()
                .dir("etc", 0o770)
                .file("/etc/passwd", b"inside", 0o644)
                .dir("breakouts", 0o755)
                .symlink("breakouts/d1", "../../etc")
                .link("breakouts/mypasswd", "/breakouts/d1/passwd", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| assert!(same_in_root(&h.target, "breakouts/mypasswd", "etc/passwd"))),
    );
    run_case(
        "HardlinkDownAndOut",
        |_| {
            Tb::default()
                .dir("etc", 0o770)
                .file("/etc/passwd", b"inside", 0o644)
                .dir("breakouts", 0o755)
                .dir("downandout", 0o755)
                .symlink("breakouts/d1", "../downandout/../../etc")
                .link("breakouts/mypasswd", "/breakouts/d1/passwd", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| assert!(same_in_root(&h.target, "breakouts/mypasswd", "etc/passwd"))),
    );
    run_case(
        "HardlinkRelativeUpAndOut",
        |_| {
            Tb::default()
                .dir("etc", 0o770)
                .file("/etc/passwd", b"inside", 0o644)
                .symlink("localetc", "upandout/../../../etc")
                .link("localpasswd", "/localetc/passwd", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| assert!(same_in_root(&h.target, "localpasswd", "etc/passwd"))),
    );
    run_case(
        "HardlinkDirectRelative",
        |_| {
            Tb::default()
                .dir("etc", 0o770)
                .file("/etc/passwd", b"inside", 0o644)
                .link("localpasswd", "../../../../../etc/passwd", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| assert!(same_in_root(&h.target, "localpasswd", "etc/passwd"))),
    );
    run_case(
        "HardlinkSymlinkBeforeCreateTarget",
        |_| {
            Tb::default()
                .dir("etc", 0o770)
                .symlink("localpasswd", "/etc/passwd")
                .link("localpasswd-dup", "localpasswd", 0o644)
                .file("/etc/passwd", b"after", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| assert!(same_in_root(&h.target, "localpasswd-dup", "etc/passwd"))),
    );
    // B5 / CVE-2021-32760: symlink to a host file, hardlink to the symlink, mode 0777.
    run_case(
        "HardlinkSymlinkChmod",
        |h| {
            let p = h.base.join("perm400").display().to_string();
            let ep = h
                .base
                .join("also-exists-outside-root")
                .display()
                .to_string();
            Tb::default()
                .symlink(&ep, &p)
                .link("sketchylink", &ep, 0o777)
                .end()
        },
        Whiteouts::Native,
        ok(|h| {
            let md = fs::symlink_metadata(h.target.join("sketchylink")).unwrap();
            assert!(md.file_type().is_symlink());
        }),
    );
    run_case(
        "file-over-symlink-to-host",
        |h| {
            let mut tb = Tb::default();
            tb.symlink("s", &h.c("passwd"));
            let mut hd = wh(b"s", b'0', 0o4777, 2, b"");
            hd.uid = 65534;
            tb.header(&hd).data(b"xx").end()
        },
        Whiteouts::Native,
        inside("s", b"xx"),
    );
    run_case(
        "dir-over-symlink-to-host-dir",
        |h| {
            Tb::default()
                .symlink("d", &h.c("sub"))
                .dir("d", 0o777)
                .file("d/x", b"pwned", 0o644)
                .end()
        },
        Whiteouts::Native,
        inside("d/x", b"pwned"),
    );
    run_case(
        "DirectoryOverrideSymlinkAndHardlink",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .file("etc/passwd", b"inside", 0o644)
                .symlink("localetc", "etc")
                .link("localetc/localpasswd", "etc/passwd", 0o644)
                .dir("localetc", 0o755)
                .file("localetc/localpasswd", b"different", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| {
            assert!(!same_in_root(
                &h.target,
                "localetc/localpasswd",
                "etc/passwd"
            ));
            assert_eq!(fs::read(h.target.join("etc/passwd")).unwrap(), b"inside");
        }),
    );
}

#[test]
fn breakouts_whiteouts() {
    let pre = || {
        Tb::default()
            .dir("etc", 0o755)
            .file("etc/passwd", b"all users", 0o644)
            .end()
    };
    for (name, entry) in [
        ("WhiteoutRootParent", ".wh..."),
        ("WhiteoutParent", "etc/.wh..."),
        ("WhiteoutRoot", ".wh.."),
        ("WhiteoutCurrentDirectory", "etc/.wh.."),
        ("WhiteoutEmpty", "etc/.wh."),
    ] {
        for mode in [Whiteouts::Native, Whiteouts::Overlay] {
            run_case(
                name,
                move |_| {
                    let mut t = pre();
                    t.truncate(t.len() - 2 * BLOCK);
                    let mut tb = Tb(t);
                    tb.file(entry, b"", 0o644).end()
                },
                mode,
                Expect::Err("invalid whiteout name"),
            );
        }
    }
    run_case(
        "whiteout-through-symlink-to-host",
        |h| {
            Tb::default()
                .symlink("l", &h.c(""))
                .file("l/.wh.passwd", b"", 0o644)
                .file("l/sub/.wh.x", b"", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|_| {}),
    );
    run_case(
        "opaque-under-symlink-to-host",
        |h| {
            Tb::default()
                .symlink("l", &h.c("sub"))
                .file("l/.wh..wh..opq", b"", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|_| {}),
    );
    run_case(
        "overlay-opaque-under-symlink-to-host",
        |h| {
            Tb::default()
                .symlink("l", &h.c("sub"))
                .file("l/.wh..wh..opq", b"", 0o644)
                .file("l/.wh.x", b"", 0o644)
                .end()
        },
        Whiteouts::Overlay,
        ok(|h| {
            let d = h.target.join(h.c("sub").trim_start_matches('/'));
            assert!(xattrs(&d).contains_key(&b"trusted.overlay.opaque"[..]));
        }),
    );
    run_case(
        "WhiteoutSymlink",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .file("etc/passwd", b"all users", 0o644)
                .symlink("localetc", "/etc")
                .file(".wh.localetc", b"", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| {
            assert_eq!(fs::read(h.target.join("etc/passwd")).unwrap(), b"all users");
            assert!(fs::symlink_metadata(h.target.join("localetc")).is_err());
        }),
    );
    run_case(
        "WhiteoutSymlinkPath",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .file("etc/passwd", b"all users", 0o644)
                .file("etc/whitedout", b"ahhh", 0o644)
                .symlink("localetc", "/etc")
                .file("localetc/.wh.whitedout", b"", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| {
            assert_eq!(fs::read(h.target.join("etc/passwd")).unwrap(), b"all users");
            assert!(!h.target.join("etc/whitedout").exists());
        }),
    );
    run_case(
        "WhiteoutDirectoryName",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .file(".wh.etc/somefile", b"non-empty", 0o644)
                .end()
        },
        Whiteouts::Native,
        inside(".wh.etc/somefile", b"non-empty"),
    );
    run_case(
        "WhiteoutDeadSymlinkParent",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .file("etc/passwd", b"all users", 0o644)
                .symlink("localetc", "/dne")
                .file("localetc/.wh.etc", b"", 0o644)
                .end()
        },
        Whiteouts::Native,
        inside("etc/passwd", b"all users"),
    );
    run_case(
        "WhiteoutRelativePath",
        |_| {
            Tb::default()
                .dir("etc", 0o755)
                .file("etc/passwd", b"all users", 0o644)
                .symlink("localetc", "/dne")
                .file("dne/../.wh.etc", b"", 0o644)
                .end()
        },
        Whiteouts::Native,
        ok(|h| assert!(!h.target.join("etc").exists())),
    );
}

#[test]
fn malformed_archives_fail_cleanly() {
    let good = Tb::default()
        .file("a", b"hello", 0o644)
        .file("b", &[1u8; 3000], 0o644)
        .end();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    // B10: unknown typeflag.
    cases.push((
        "unknown-type",
        Tb::default().header(&wh(b"x", b'Z', 0o644, 0, b"")).end(),
        "unhandled tar header type",
    ));
    cases.push((
        "gnu-dumpdir",
        Tb::default().header(&wh(b"x", b'D', 0o644, 0, b"")).end(),
        "unhandled tar header type",
    ));
    // Truncation at every interesting point.
    for cut in [100, 512, 600, 1536, 2000, good.len() - 1024 - 100] {
        cases.push(("truncated", good[..cut].to_vec(), "invalid archive"));
    }
    // Garbage after the end-of-archive marker.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    cases.push(("trailing-garbage", trailing, "trailing data"));
    let mut zero_then = std::mem::take(&mut Tb::default().file("a", b"a", 0o644).0);
    zero_then.extend_from_slice(&[0u8; BLOCK]);
    zero_then.extend_from_slice(&tarfmt::ustar_block(&wh(b"b", b'0', 0o644, 0, b"")));
    cases.push((
        "zero-block-then-header",
        zero_then,
        "non-zero block after a zero block",
    ));
    // PAX sizes that do not fit.
    for size in [
        "9223372036854775808",
        "18446744073709551616",
        "-1",
        "1e9",
        "",
    ] {
        let t = Tb::default()
            .pax(&[("size", size.as_bytes())])
            .file("f", b"", 0o644)
            .end();
        cases.push(("pax-size", t, "invalid archive"));
    }
    // A huge but representable size: truncated data, not an allocation.
    let t = Tb::default()
        .pax(&[("size", b"9223372036854775807")])
        .file("f", b"", 0o644)
        .end();
    cases.push(("pax-size-max", t, "invalid archive"));
    // GNU long name claiming a terabyte.
    let t = Tb::default()
        .header(&wh(b"././@LongLink", b'L', 0, 1 << 40, b""))
        .end();
    cases.push(("huge-longname", t, "exceeds"));
    // Base-256 negative size.
    let mut blk = tarfmt::ustar_block(&wh(b"neg", b'0', 0o644, 0, b""));
    blk[124..136].fill(0xff);
    cases.push((
        "negative-size",
        Tb::default().raw(blk).end(),
        "negative entry size",
    ));
    // Bad checksum.
    let mut bad = good.clone();
    bad[0] ^= 1;
    cases.push(("checksum", bad, "checksum"));
    // Malformed PAX record.
    let mut pax = Tb::default();
    pax.header(&wh(b"p", b'x', 0o644, 12, b""))
        .data(b"999 path=x\n\n");
    pax.file("f", b"", 0o644);
    cases.push(("pax-record", pax.end(), "malformed PAX record"));
    // Out-of-range ids.
    let t = Tb::default()
        .pax(&[("uid", b"4294967296")])
        .file("f", b"", 0o644)
        .end();
    cases.push(("uid-range", t, "out of range"));
    // Names with NUL via PAX, and longer than PATH_MAX.
    let t = Tb::default()
        .pax(&[("path", b"a\0b")])
        .file("f", b"", 0o644)
        .end();
    cases.push(("nul-name", t, "NUL"));
    let long = "a/".repeat(3000);
    let t = Tb::default()
        .pax(&[("path", long.as_bytes())])
        .file("f", b"", 0o644)
        .end();
    cases.push(("path-max", t, "longer than"));
    // Sparse maps that lie.
    let t = Tb::default()
        .pax(&[
            ("GNU.sparse.map", b"0,10,5,10"),
            ("GNU.sparse.size", b"100"),
        ])
        .file("s", &[1u8; 20], 0o644)
        .end();
    cases.push(("sparse-overlap", t, "sparse"));
    let t = Tb::default()
        .pax(&[("GNU.sparse.map", b"0,10"), ("GNU.sparse.size", b"5")])
        .file("s", &[1u8; 10], 0o644)
        .end();
    cases.push(("sparse-beyond-size", t, "sparse"));
    // A hardlink to something that is not there, or to a directory.
    let t = Tb::default().link("l", "missing", 0o644).end();
    cases.push(("hardlink-missing", t, "link"));
    let t = Tb::default().dir("d", 0o755).link("l", "d/..", 0o644).end();
    cases.push(("hardlink-dotdot", t, "invalid hardlink target"));
    // A file where a directory is needed.
    let t = Tb::default()
        .file("f", b"", 0o644)
        .file("f/x", b"", 0o644)
        .end();
    cases.push(("file-as-parent", t, "not a directory"));

    for (name, tar, needle) in cases {
        let h = Host::new();
        match apply_tar(&tar, &h.target, Whiteouts::Native) {
            Err(e) => assert!(
                e.to_string().contains(needle),
                "{name}: {e} lacks {needle:?}"
            ),
            Ok(a) => panic!("{name}: expected an error, applied {a:?}"),
        }
        // Compressed variants must fail the same way, never panic.
        let res = apply_layer(
            &gzip(&tar)[..],
            TGZ,
            &h.target,
            Whiteouts::Native,
            &Limits::default(),
        );
        assert!(res.is_err(), "{name} (gzip)");
        h.assert_untouched(name);
    }

    // Corrupt compression streams.
    let h = Host::new();
    let mut gz = gzip(&good);
    gz.extend_from_slice(b"trailing garbage after gzip");
    assert_invalid(
        apply_layer(
            &gz[..],
            TGZ,
            &h.target,
            Whiteouts::Native,
            &Limits::default(),
        ),
        "compression",
    );
    let mut gz = gzip(&good);
    let n = gz.len();
    gz[n / 2] ^= 0xff;
    assert!(apply_layer(
        &gz[..],
        TGZ,
        &h.target,
        Whiteouts::Native,
        &Limits::default()
    )
    .is_err());
    let gz = gzip(&good);
    assert!(apply_layer(
        &gz[..gz.len() / 2],
        TGZ,
        &h.target,
        Whiteouts::Native,
        &Limits::default()
    )
    .is_err());
    let zst = zstd::encode_all(&good[..], 3).unwrap();
    assert!(apply_layer(
        &zst[..zst.len() - 5],
        TZST,
        &h.target,
        Whiteouts::Native,
        &Limits::default()
    )
    .is_err());
    h.assert_untouched("compression");

    // Unknown media types.
    match apply_layer(
        &good[..],
        "application/octet-stream",
        &h.target,
        Whiteouts::Native,
        &Limits::default(),
    ) {
        Err(e) if e.kind() == berth_errdefs::Kind::Unimplemented => {
            assert!(e.message().contains("unsupported diff media type"))
        }
        other => panic!("{other:?}"),
    }
}

/// Pseudo-random bytes mutated from a valid archive: whatever happens, no panic and no host
/// change (a poor man's FuzzApply).
#[test]
fn mutated_archives_never_panic() {
    let base = Tb::default()
        .dir("d", 0o755)
        .symlink("d/l", "../..")
        .file("d/f", b"data", 0o644)
        .link("h", "d/f", 0o644)
        .pax(&[("path", b"p/q"), ("SCHILY.xattr.user.a", b"b")])
        .file("ignored", b"x", 0o644)
        .file(".wh.d", b"", 0o644)
        .end();
    let h = Host::new();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..400 {
        let mut t = base.clone();
        for _ in 0..(1 + rnd() % 4) {
            let pos = (rnd() as usize) % t.len();
            t[pos] = rnd() as u8;
        }
        if i % 3 == 0 {
            // Keep checksums valid so mutations reach the field parsers.
            for blk in t.chunks_mut(BLOCK) {
                if blk.len() == BLOCK && blk.iter().any(|&b| b != 0) && blk[257..262] == *b"ustar" {
                    let mut b: [u8; BLOCK] = blk.try_into().unwrap();
                    fix_checksum(&mut b);
                    blk.copy_from_slice(&b);
                }
            }
        }
        let target = h.target.join(format!("t{i}"));
        fs::create_dir(&target).unwrap();
        let _ = apply_tar(
            &t,
            &target,
            if i % 2 == 0 {
                Whiteouts::Native
            } else {
                Whiteouts::Overlay
            },
        );
    }
    // The per-iteration dirs live inside the target; the host area must be as it was.
    h.assert_untouched("mutations");
}

// ----- limits -----------------------------------------------------------------------------

fn max_rss_kib() -> i64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn decompression_bombs_stop_at_the_limit() {
    const GIB: u64 = 1 << 30;
    let mib_zeros = vec![0u8; 1 << 20];
    let hdr = tarfmt::ustar_block(&wh(b"zeros", b'0', 0o644, GIB, b""));
    let mut tail = vec![0u8; 2 * BLOCK];
    tail.extend_from_slice(&[0u8; BLOCK]);
    let limit = 16u64 << 20;
    let limits = Limits {
        max_uncompressed_bytes: limit,
        max_entries: 1000,
    };

    // gzip: concatenated members (1 GiB of zeros from ~1 MiB of input).
    let member = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&mib_zeros).unwrap();
        e.finish().unwrap()
    };
    let mut gz = gzip(&hdr);
    for _ in 0..1024 {
        gz.extend_from_slice(&member);
    }
    gz.extend_from_slice(&gzip(&tail));
    // zstd: the same with frames.
    let frame = zstd::encode_all(&mib_zeros[..], 19).unwrap();
    let mut zst = zstd::encode_all(&hdr[..], 3).unwrap();
    for _ in 0..1024 {
        zst.extend_from_slice(&frame);
    }

    for (name, blob, mt) in [("gzip", &gz, TGZ), ("zstd", &zst, TZST)] {
        assert!(blob.len() < 8 << 20);
        let h = Host::new();
        let rss = max_rss_kib();
        let t0 = Instant::now();
        let res = apply_layer(&blob[..], mt, &h.target, Whiteouts::Native, &limits);
        assert_invalid(res, "uncompressed size limit of 16777216 bytes");
        assert!(
            t0.elapsed().as_secs() < 20,
            "{name}: took {:?}",
            t0.elapsed()
        );
        let written = fs::metadata(h.target.join("zeros")).map_or(0, |m| m.len());
        assert!(written <= limit, "{name}: wrote {written} bytes");
        // Streaming: no buffering of the inflated data (generous bound; tests share a process).
        assert!(
            max_rss_kib() - rss < 256 << 10,
            "{name}: RSS grew by {} KiB",
            max_rss_kib() - rss
        );
        h.assert_untouched(name);
    }

    // Inode bomb: many empty entries.
    let mut tb = Tb::default();
    for i in 0..200 {
        tb.file(&format!("f{i}"), b"", 0o644);
    }
    let h = Host::new();
    let res = apply_layer(
        &tb.end()[..],
        TAR,
        &h.target,
        Whiteouts::Native,
        &Limits {
            max_uncompressed_bytes: 1 << 30,
            max_entries: 100,
        },
    );
    assert_invalid(res, "limit of 100 entries");
    h.assert_untouched("entries");
}

// ----- digests ----------------------------------------------------------------------------

#[test]
fn diff_id_is_sha256_of_uncompressed_stream() {
    let tar = Tb::default()
        .dir("d", 0o755)
        .file("d/f", &[5u8; 100_000], 0o600)
        .end();
    // Plus record padding, as real tar writers add: hashed and counted, like containerd.
    let mut padded = tar.clone();
    padded.extend_from_slice(&[0u8; 10240 - 2 * BLOCK]);
    let zst = zstd::encode_all(&padded[..], 3).unwrap();
    let docker_gz = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    let docker_tar = "application/vnd.docker.image.rootfs.diff.tar";
    for (blob, mt, raw) in [
        (tar.clone(), TAR, &tar),
        (gzip(&tar), TGZ, &tar),
        (zst, TZST, &padded),
        (gzip(&padded), docker_gz, &padded),
        (gzip(&tar), docker_tar, &tar), // docker's uncompressed type, sniffed as gzip
        (tar.clone(), TGZ, &tar),       // mislabelled: containerd sniffs, so do we
        (Vec::new(), TGZ, &Vec::new()), // empty blob = empty layer
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let a = apply_layer(
            &blob[..],
            mt,
            tmp.path(),
            Whiteouts::Native,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(a.diff_id, sha256(raw), "{mt}");
        assert_eq!(a.size, raw.len() as u64, "{mt}");
    }
}

// ----- compute ----------------------------------------------------------------------------

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn compute_then_apply_reproduces_upper() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = tmp.path().join("lower");
    fs::create_dir(&lower).unwrap();
    build_rich_tree(&lower);
    fs::create_dir_all(lower.join("gone/deep")).unwrap();
    fs::write(lower.join("gone/deep/f"), b"f").unwrap();
    fs::create_dir_all(lower.join("dir-to-file/x")).unwrap();
    fs::write(lower.join("file-to-dir"), b"f").unwrap();
    fs::write(lower.join("same-size"), b"aaaa").unwrap();
    set_mtime(&lower.join("same-size"), 1_600_000_000, 0);

    let upper = tmp.path().join("upper");
    cp_a(&lower, &upper);
    let u = |s: &str| upper.join(s);
    fs::write(u("d/f"), b"changed through a hardlink\n").unwrap(); // d/hard, bin/hard3 follow
    fs::write(u("added"), b"new file").unwrap();
    fs::create_dir_all(u("newdir/sub")).unwrap();
    fs::write(u("newdir/sub/f"), b"nested").unwrap();
    fs::hard_link(u("added"), u("newdir/added-link")).unwrap();
    fs::remove_file(u("empty")).unwrap();
    fs::remove_dir_all(u("gone")).unwrap();
    fs::remove_dir_all(u("dir-to-file")).unwrap();
    fs::write(u("dir-to-file"), b"now a file").unwrap();
    fs::remove_file(u("file-to-dir")).unwrap();
    fs::create_dir(u("file-to-dir")).unwrap();
    fs::write(u("file-to-dir/inner"), b"i").unwrap();
    chmod(&u("bin/su"), 0o755);
    chown(&u("d/sub"), 2000, 2000);
    fs::remove_file(u("lnk")).unwrap();
    symlink("elsewhere", u("lnk")).unwrap();
    setxattr(&u("added"), "security.capability", &CAP_NET_RAW);
    mknod(&u("dev/zero"), FileType::CharacterDevice, 0o666, 1, 5);
    // Same size and second, no nanoseconds: only a content comparison can see this change.
    fs::write(u("same-size"), b"bbbb").unwrap();
    set_mtime(&u("same-size"), 1_600_000_000, 0);
    // Tar mtimes are whole seconds; keep upper's so a byte-for-byte comparison is possible.
    for p in [
        u("d/f"),
        u("added"),
        u("newdir/sub/f"),
        u("dir-to-file"),
        u("file-to-dir/inner"),
        u("bin/su"),
        u("lnk"),
        u("dev/zero"),
    ] {
        set_mtime(&p, 1_650_000_000, 0);
    }
    for p in [
        u("newdir/sub"),
        u("newdir"),
        u("file-to-dir"),
        u("d/sub"),
        u("d"),
        u("bin"),
        u("dev"),
        upper.clone(),
    ] {
        set_mtime(&p, 1_650_000_001, 0);
    }

    for compression in [
        LayerCompression::Gzip,
        LayerCompression::Zstd,
        LayerCompression::None,
    ] {
        let mut blob = Vec::new();
        let (digest, size, diff_id) =
            compute_layer(&lower, &upper, compression, &mut blob).unwrap();
        assert_eq!(digest, sha256(&blob));
        assert_eq!(size, blob.len() as u64);
        // The blob is what its media type says, and its diff ID is the uncompressed tar's.
        let tar = match compression {
            LayerCompression::Gzip => {
                assert!(blob.starts_with(&[0x1f, 0x8b]), "gzip magic");
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut out)
                    .unwrap();
                out
            }
            LayerCompression::Zstd => {
                assert!(blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd magic");
                zstd::decode_all(&blob[..]).unwrap()
            }
            LayerCompression::None => blob.clone(),
        };
        assert_eq!(sha256(&tar), diff_id, "{compression:?}");
        assert!(tar.len() > blob.len() || compression == LayerCompression::None);
        let target = tmp.path().join(format!("applied-{compression:?}"));
        cp_a(&lower, &target);
        let mt = compression.media_type();
        assert_eq!(LayerCompression::for_media_type(mt), Some(compression));
        let applied = apply_layer(
            &blob[..],
            mt,
            &target,
            Whiteouts::Native,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(applied.diff_id, diff_id);
        assert_eq!(applied.size, tar.len() as u64);
        if compression == LayerCompression::None {
            assert_eq!(digest, diff_id);
        }
        // Unchanged files keep nanoseconds from the copy; changed ones were set to whole seconds.
        assert_same_tree(
            &upper,
            &target,
            &Opts {
                nsec: true,
                dir_mtime: true,
            },
        );
        // The same blob against a bound below its uncompressed size: refused, whatever the
        // compression, before the whole stream is read.
        let bounded = tmp.path().join(format!("bounded-{compression:?}"));
        fs::create_dir(&bounded).unwrap();
        let small = Limits {
            max_uncompressed_bytes: tar.len() as u64 / 2,
            ..Limits::default()
        };
        let res = apply_layer(&blob[..], mt, &bounded, Whiteouts::Native, &small);
        assert_invalid(res, "uncompressed size limit");
    }
    assert_eq!(LayerCompression::for_media_type("application/x-tar"), None);

    // Nothing changed → an empty layer (just the end marker).
    let mut blob = Vec::new();
    compute_layer(&lower, &lower, LayerCompression::None, &mut blob).unwrap();
    assert_eq!(blob, vec![0u8; 2 * BLOCK]);
}

/// The diff of a container made through a real overlay mount: walking only the upperdir gives
/// the full double walk's tar byte for byte, looks at far fewer names, and applied to a copy
/// of the lower tree reproduces the merged view.
#[test]
fn an_overlay_upperdir_guided_diff_is_the_full_walks() {
    let tmp = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|n| {
        let p = tmp.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    });
    build_rich_tree(&lower);
    for dir in [
        "gone/deep",
        "opaque/old",
        "dir-to-file/x",
        "many",
        "kept/inner",
    ] {
        fs::create_dir_all(lower.join(dir)).unwrap();
    }
    for file in [
        "gone/deep/f",
        "opaque/old/f",
        "opaque/same",
        "file-to-dir",
        "kept/inner/f",
        "renamed-from",
    ] {
        fs::write(lower.join(file), file.as_bytes()).unwrap();
    }
    for i in 0..400 {
        fs::write(lower.join(format!("many/{i}")), b"unchanged").unwrap();
    }

    let _guard = mount_overlay(&lower, &upper, &work, &merged);
    let m = |s: &str| merged.join(s);
    fs::write(m("d/f"), b"changed: copied up, its links stay below\n").unwrap();
    fs::write(m("added"), b"new").unwrap();
    fs::create_dir_all(m("newdir/sub")).unwrap();
    fs::write(m("newdir/sub/f"), b"nested").unwrap();
    fs::hard_link(m("bin/su"), m("newdir/su-link")).unwrap();
    fs::remove_file(m("empty")).unwrap();
    fs::remove_dir_all(m("gone")).unwrap();
    // Removed and made again: overlay marks the new directory opaque.
    fs::remove_dir_all(m("opaque")).unwrap();
    fs::create_dir(m("opaque")).unwrap();
    fs::write(m("opaque/same"), b"opaque/same").unwrap();
    fs::remove_dir_all(m("dir-to-file")).unwrap();
    fs::write(m("dir-to-file"), b"now a file").unwrap();
    fs::remove_file(m("file-to-dir")).unwrap();
    fs::create_dir(m("file-to-dir")).unwrap();
    fs::rename(m("renamed-from"), m("renamed-to")).unwrap();
    chmod(&m("bin/ping"), 0o700);
    chown(&m("kept/inner"), 3000, 3000);
    setxattr(&m("shared"), "user.note", b"copied up for an xattr");
    fs::remove_file(m("lnk")).unwrap();
    symlink("elsewhere", m("lnk")).unwrap();
    fs::write(m("many/made-and-gone"), b"x").unwrap();
    fs::remove_file(m("many/made-and-gone")).unwrap();
    let opq = xattrs(&upper.join("opaque"));
    assert!(
        opq.contains_key(&b"trusted.overlay.opaque"[..]),
        "the remade directory is opaque in the upperdir"
    );

    // Whiteouts dated by the epoch rule, not the clock, so the two tars can be compared.
    let layer = |guide: Option<&Path>| {
        let options = DiffOptions {
            source_date_epoch: Some(i64::MAX),
            overlay_upperdir: guide,
        };
        let mut blob = Vec::new();
        compute::VISITS.with(|v| v.set(0));
        let (digest, _, diff_id) =
            compute_layer_with(&lower, &merged, LayerCompression::None, &options, &mut blob)
                .unwrap();
        assert_eq!(digest, diff_id);
        (blob, compute::VISITS.with(|v| v.get()))
    };
    let (full, full_visits) = layer(None);
    let (guided, guided_visits) = layer(Some(&upper));
    let names = |tar: &[u8]| -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    };
    assert_eq!(names(&guided), names(&full));
    assert!(
        guided == full,
        "the guided tar differs from the full walk's"
    );
    for expected in [
        ".wh.gone",
        ".wh.empty",
        "opaque/.wh.old",
        ".wh.renamed-from",
        "renamed-to",
    ] {
        assert!(
            names(&full).iter().any(|n| n == expected),
            "{expected} in {:?}",
            names(&full)
        );
    }
    assert!(
        guided_visits * 5 < full_visits,
        "guided {guided_visits} names, full {full_visits}"
    );

    let target = tmp.path().join("applied");
    cp_a(&lower, &target);
    apply_layer(
        &guided[..],
        TAR,
        &target,
        Whiteouts::Native,
        &Limits::default(),
    )
    .unwrap();
    let probe = |root: &Path| -> Vec<(String, u32, u32, u32)> {
        let mut out = Vec::new();
        for p in [
            "d/f",
            "added",
            "newdir/sub/f",
            "newdir/su-link",
            "opaque/same",
            "dir-to-file",
            "file-to-dir",
            "renamed-to",
            "bin/ping",
            "kept/inner",
            "lnk",
        ] {
            let md = fs::symlink_metadata(root.join(p)).unwrap();
            out.push((p.to_string(), md.mode(), md.uid(), md.gid()));
        }
        for gone in [
            "gone",
            "empty",
            "opaque/old",
            "renamed-from",
            "many/made-and-gone",
        ] {
            assert!(
                fs::symlink_metadata(root.join(gone)).is_err(),
                "{gone} is gone"
            );
        }
        out
    };
    assert_eq!(probe(&target), probe(&merged));
    assert_eq!(
        fs::read(target.join("d/f")).unwrap(),
        fs::read(m("d/f")).unwrap()
    );
    assert_eq!(fs::read_dir(target.join("many")).unwrap().count(), 400);
}

/// `BERTH_BENCH_LAYER=/path/layer.tar.gz cargo test --release -- --ignored bench_apply --nocapture`
#[test]
#[ignore = "benchmark; needs BERTH_BENCH_LAYER"]
fn bench_apply() {
    let Ok(path) = std::env::var("BERTH_BENCH_LAYER") else {
        return;
    };
    let dir = std::env::var("BERTH_BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
    // Keep every tree until the end: ext4 allocates inodes slowly right after mass deletions
    // ("recently_deleted" scans), which would measure the previous round's cleanup.
    let mut keep = Vec::new();
    for round in 0..3 {
        let tmp = tempfile::tempdir_in(&dir).unwrap();
        let blob = fs::File::open(&path).unwrap();
        let t0 = Instant::now();
        let mt = std::env::var("BERTH_BENCH_MT").unwrap_or_else(|_| TGZ.into());
        let a = apply_layer(
            blob,
            &mt,
            tmp.path(),
            Whiteouts::Overlay,
            &Limits::default(),
        )
        .unwrap();
        let dt = t0.elapsed();
        let t1 = Instant::now();
        rustix::fs::syncfs(rfs::open(tmp.path(), OFlags::RDONLY, Mode::empty()).unwrap()).unwrap();
        eprintln!(
            "round {round}: apply {:.3}s (+ syncfs {:.3}s), {} MB uncompressed, {}",
            dt.as_secs_f64(),
            t1.elapsed().as_secs_f64(),
            a.size >> 20,
            a.diff_id
        );
        keep.push(tmp);
    }
}

#[test]
#[ignore = "benchmark; needs BERTH_BENCH_LAYER"]
fn bench_inflate_only() {
    let Ok(path) = std::env::var("BERTH_BENCH_LAYER") else {
        return;
    };
    let blob = fs::read(&path).unwrap();
    let t0 = Instant::now();
    let mut d = flate2::bufread::MultiGzDecoder::new(std::io::BufReader::with_capacity(
        256 << 10,
        &blob[..],
    ));
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0usize;
    loop {
        let k = std::io::Read::read(&mut d, &mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    let t1 = t0.elapsed();
    let data = vec![1u8; n];
    let t2 = Instant::now();
    let _ = Sha256::digest(&data);
    eprintln!(
        "inflate {n} bytes: {:.3}s; sha256 of the same: {:.3}s",
        t1.as_secs_f64(),
        t2.elapsed().as_secs_f64()
    );
}
