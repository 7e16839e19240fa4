use super::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};

fn ctx_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("a.c"), "int main(){}").unwrap();
    fs::write(d.path().join("b.c"), "int x;").unwrap();
    fs::create_dir_all(d.path().join("src/sub")).unwrap();
    fs::write(d.path().join("src/one"), "1").unwrap();
    fs::write(d.path().join("src/sub/two"), "2").unwrap();
    d
}

fn paths(sources: &[Source]) -> Vec<String> {
    sources
        .iter()
        .flat_map(|s| s.entries.iter().map(|p| p.rel.clone()))
        .collect()
}

#[test]
fn sources_files_dirs_and_globs() {
    let d = ctx_dir();
    let c = Context::open_dir(d.path(), &Limits::default()).unwrap();
    assert_eq!(c.bytes(), 12 + 6 + 2);
    let s = c.select("COPY", &["src".into()]).unwrap();
    assert!(s[0].is_dir);
    assert_eq!(paths(&s), ["one", "sub", "sub/two"]);
    let s = c
        .select("COPY", &["*.c".into(), "/src/one".into()])
        .unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s[2].name, "one");
    let s = c.select("COPY", &[".".into()]).unwrap();
    assert_eq!(paths(&s).len(), 6);
    let err = c.select("COPY", &["nope".into()]).unwrap_err();
    assert!(err.message.contains("not found"), "{err}");
}

#[test]
fn paths_outside_the_context_are_refused() {
    let d = ctx_dir();
    let c = Context::open_dir(d.path(), &Limits::default()).unwrap();
    for bad in ["../x", "src/../../x", ".."] {
        let err = c.select("COPY", &[bad.into()]).unwrap_err();
        assert!(
            err.message.contains("outside the build context"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn symlinks_are_listed_never_followed() {
    let d = ctx_dir();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), "secret").unwrap();
    symlink(outside.path().join("secret"), d.path().join("to-secret")).unwrap();
    symlink(outside.path(), d.path().join("to-dir")).unwrap();
    let c = Context::open_dir(d.path(), &Limits::default()).unwrap();
    let s = c.select("COPY", &["to-secret".into()]).unwrap();
    assert_eq!(
        s[0].entries[0].entry.kind,
        EntryKind::Symlink {
            target: outside.path().join("secret").display().to_string()
        }
    );
    // Nothing under a symlinked directory is listed, so nothing there can be named.
    assert!(c.select("COPY", &["to-dir/secret".into()]).is_err());
    assert!(c.entries().iter().all(|e| !e.path.starts_with("to-dir/")));
    // The digest hashes the link's target text, not the file it points at.
    let before = c.digest(&s).unwrap();
    fs::write(outside.path().join("secret"), "changed").unwrap();
    assert_eq!(c.digest(&s).unwrap(), before);
    assert!(c.open_file("to-secret").is_err());
    assert!(c.open_file("to-dir/secret").is_err());
}

#[test]
fn dockerignore_keeps_files_out() {
    let d = ctx_dir();
    fs::write(d.path().join(".dockerignore"), "*.c\n!a.c\nsrc/sub\n").unwrap();
    let c = Context::open_dir(d.path(), &Limits::default()).unwrap();
    let listed: Vec<&str> = c.entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(listed, [".dockerignore", "a.c", "src", "src/one"]);
    assert!(c.select("COPY", &["b.c".into()]).is_err());
}

#[test]
fn explicit_rules_replace_the_contexts_own() {
    let d = ctx_dir();
    fs::write(d.path().join(".dockerignore"), "*.c\n").unwrap();
    let rules = DockerIgnore::parse("src\n").unwrap();
    let c = Context::open_dir_with(d.path(), &rules, &Limits::default()).unwrap();
    let listed: Vec<&str> = c.entries().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(listed, [".dockerignore", "a.c", "b.c"]);
}

#[test]
fn the_size_bound_is_enforced() {
    let d = ctx_dir();
    let limits = Limits {
        max_bytes: 10,
        max_entries: 100,
    };
    let err = Context::open_dir(d.path(), &limits).err().unwrap();
    assert!(err.message.contains("build context too big"), "{err}");
    let limits = Limits {
        max_bytes: 100,
        max_entries: 3,
    };
    assert!(Context::open_dir(d.path(), &limits).is_err());
}

#[test]
fn the_digest_follows_content_and_mode_not_mtime() {
    let d = ctx_dir();
    let digest = |d: &Path| {
        let c = Context::open_dir(d, &Limits::default()).unwrap();
        let s = c.select("COPY", &["src".into()]).unwrap();
        c.digest(&s).unwrap()
    };
    let first = digest(d.path());
    assert_eq!(digest(d.path()), first);
    let f = File::options()
        .write(true)
        .open(d.path().join("src/one"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    drop(f);
    assert_eq!(digest(d.path()), first, "mtime is not part of it");
    fs::set_permissions(d.path().join("src/one"), fs::Permissions::from_mode(0o700)).unwrap();
    let chmodded = digest(d.path());
    assert_ne!(chmodded, first);
    fs::write(d.path().join("src/sub/two"), "3").unwrap();
    assert_ne!(digest(d.path()), chmodded);
}

fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, name: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn a_tar_context() {
    let bytes = tar_bytes(|b| {
        add_file(b, b"Dockerfile", b"FROM scratch\n");
        add_file(b, b"dir/f", b"hello");
    });
    let c = Context::from_tar(&bytes[..], &Limits::default()).unwrap();
    let s = c.select("COPY", &["dir/f".into()]).unwrap();
    let mut text = String::new();
    c.open_file(&s[0].entries[0].entry.path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "hello");
}

#[test]
fn hostile_tars_write_nothing_outside() {
    let outside = tempfile::tempdir().unwrap();
    let escape = format!("../../../../../../..{}/escaped", outside.path().display());
    let dotdot = tar_bytes(|b| add_file(b, escape.as_bytes(), b"x"));
    let _ = Context::from_tar(&dotdot[..], &Limits::default());
    assert!(!outside.path().join("escaped").exists());

    let through_link = tar_bytes(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "l", outside.path()).unwrap();
        add_file(b, b"l/planted", b"x");
    });
    let _ = Context::from_tar(&through_link[..], &Limits::default());
    assert!(!outside.path().join("planted").exists());

    let big = tar_bytes(|b| add_file(b, b"f", &[0u8; 4096]));
    let limits = Limits {
        max_bytes: 1000,
        max_entries: 10,
    };
    let err = Context::from_tar(&big[..], &limits).err().unwrap();
    assert!(err.message.contains("too big"), "{err}");
}
