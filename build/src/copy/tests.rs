use super::*;
use crate::context::Limits;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

struct Fixture {
    ctx_dir: tempfile::TempDir,
    rootfs: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let ctx_dir = tempfile::tempdir().unwrap();
    fs::write(ctx_dir.path().join("hello"), "hi\n").unwrap();
    fs::set_permissions(
        ctx_dir.path().join("hello"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::create_dir(ctx_dir.path().join("dir")).unwrap();
    fs::write(ctx_dir.path().join("dir/a"), "a").unwrap();
    symlink("a", ctx_dir.path().join("dir/link")).unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    fs::create_dir(rootfs.path().join("etc")).unwrap();
    fs::write(
        rootfs.path().join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(rootfs.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
    Fixture { ctx_dir, rootfs }
}

fn copy(
    f: &Fixture,
    sources: &[&str],
    dest: &str,
    chown: Option<&str>,
    chmod: Option<u32>,
    add: bool,
) -> Result<(), Error> {
    let c = Context::open_dir(f.ctx_dir.path(), &Limits::default()).unwrap();
    let names: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    let sources = c.select("COPY", &names)?;
    copy_into(
        &c,
        f.rootfs.path(),
        &CopyRequest {
            sources: &sources,
            dest,
            chown,
            chmod,
            add,
        },
    )
}

fn require_root() -> bool {
    if !Uid::effective().is_root() {
        berth_testkit::skip::skip_unless_ci("berth-build copy", "chown needs root");
        return false;
    }
    true
}

#[test]
fn files_and_directories_land_where_docker_puts_them() {
    if !require_root() {
        return;
    }
    let f = fixture();
    let r = f.rootfs.path();
    copy(&f, &["hello"], "/usr/bin/", None, None, false).unwrap();
    let m = fs::metadata(r.join("usr/bin/hello")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!((m.uid(), m.gid()), (0, 0));
    copy(&f, &["hello"], "/renamed", None, None, false).unwrap();
    assert_eq!(fs::read_to_string(r.join("renamed")).unwrap(), "hi\n");
    copy(&f, &["dir"], "/opt/d", None, None, false).unwrap();
    assert_eq!(fs::read_to_string(r.join("opt/d/a")).unwrap(), "a");
    assert_eq!(
        fs::read_link(r.join("opt/d/link")).unwrap().to_str(),
        Some("a")
    );
    // An existing directory destination takes the file inside it.
    copy(&f, &["hello"], "/opt/d", None, None, false).unwrap();
    assert!(r.join("opt/d/hello").is_file());
}

#[test]
fn chown_and_chmod() {
    if !require_root() {
        return;
    }
    let f = fixture();
    let r = f.rootfs.path();
    copy(&f, &["hello"], "/x/", Some("app"), Some(0o600), false).unwrap();
    let m = fs::metadata(r.join("x/hello")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o600));
    copy(&f, &["hello"], "/y", Some("app:staff"), None, false).unwrap();
    let m = fs::metadata(r.join("y")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 50));
    copy(&f, &["hello"], "/z", Some("7"), None, false).unwrap();
    let m = fs::metadata(r.join("z")).unwrap();
    assert_eq!((m.uid(), m.gid()), (7, 7));
    let err = copy(&f, &["hello"], "/w", Some("nobody-here"), None, false).unwrap_err();
    assert!(err.message.contains("not in the image"), "{err}");
}

#[test]
fn the_images_symlinks_resolve_inside_the_root() {
    if !require_root() {
        return;
    }
    let f = fixture();
    let host = tempfile::tempdir().unwrap();
    // An absolute link in the image naming a real host directory.
    symlink(host.path(), f.rootfs.path().join("evil")).unwrap();
    symlink("../../../../..", f.rootfs.path().join("up")).unwrap();
    copy(&f, &["hello"], "/evil/", None, None, false).unwrap();
    copy(&f, &["hello"], "/up/planted", None, None, false).unwrap();
    assert!(!host.path().join("hello").exists());
    assert!(f
        .rootfs
        .path()
        .join(host.path().strip_prefix("/").unwrap())
        .join("hello")
        .exists());
    assert!(f.rootfs.path().join("planted").exists());
}

fn write_tar(path: &Path, gzip: bool, entries: &[(&str, &[u8])]) {
    let file = File::create(path).unwrap();
    let w: Box<dyn std::io::Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(file)
    };
    let mut b = tar::Builder::new(w);
    for (name, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().flush().unwrap();
}

use std::io::Write;

#[test]
fn add_unpacks_local_tars_and_copy_does_not() {
    if !require_root() {
        return;
    }
    let f = fixture();
    write_tar(
        &f.ctx_dir.path().join("plain.tar"),
        false,
        &[("p/one", b"1")],
    );
    write_tar(&f.ctx_dir.path().join("z.tar.gz"), true, &[("two", b"2")]);
    copy(&f, &["plain.tar", "z.tar.gz"], "/un/", None, None, true).unwrap();
    let r = f.rootfs.path();
    assert_eq!(fs::read_to_string(r.join("un/p/one")).unwrap(), "1");
    assert_eq!(fs::read_to_string(r.join("un/two")).unwrap(), "2");
    copy(&f, &["plain.tar"], "/kept/", None, None, false).unwrap();
    assert!(r.join("kept/plain.tar").is_file());
}

#[test]
fn add_of_a_hostile_tar_stays_inside() {
    if !require_root() {
        return;
    }
    let f = fixture();
    let host = tempfile::tempdir().unwrap();
    symlink(host.path(), f.rootfs.path().join("evil")).unwrap();
    let escape = "../../../../../../../../../../tmp/berth-build-escape-test";
    write_tar(&f.ctx_dir.path().join("bad.tar"), false, &[(escape, b"x")]);
    let _ = copy(&f, &["bad.tar"], "/evil/", None, None, true);
    assert!(!Path::new("/tmp/berth-build-escape-test").exists());
    assert!(
        fs::read_dir(host.path()).unwrap().next().is_none(),
        "nothing written on the host"
    );
}
