//! Image archives through the Transfer service: the real `ctr` 2.4.2 (`images import` and
//! `images export` without `--local`, so through Transfer and Streaming) against a real
//! berthd, a round trip export → import on a fresh daemon, `ctr run` of the re-imported image,
//! a gzip docker archive written by skopeo, containerd's image naming options, and a hostile
//! archive refused with nothing left behind.

use crate::fixtures::busybox_oci_archive;
use crate::harness::{process_token, Ctr, Daemon};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

const IMAGE: &str = "docker.io/berth/busybox:archive";

/// ctr 2.4.2 with its default (Transfer) paths.
fn ctr2(d: &Daemon, ns: &str, args: &[&str]) -> Output {
    Command::new(Ctr::V2.binary())
        .arg("--address")
        .arg(&d.socket)
        .args(["--namespace", ns])
        .args(args)
        .output()
        .expect("run ctr 2.4.2")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ctr images ls`: name → (media type, digest).
fn images(d: &Daemon, ns: &str) -> Vec<(String, String, String)> {
    ok(ctr2(d, ns, &["images", "ls"]), "images ls")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
        })
        .collect()
}

fn tar_names(path: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn tar_file(path: &Path, name: &str) -> Vec<u8> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).unwrap();
            return buf;
        }
    }
    panic!("{name} not in {}", path.display());
}

#[test]
fn ctr2_import_export_round_trip_and_run() {
    let ns = &format!("archive-{}", process_token());
    let dir = tempfile::tempdir().unwrap();
    let image = busybox_oci_archive(dir.path(), IMAGE);
    let d = Daemon::start();

    let out = ok(
        ctr2(&d, ns, &["images", "import", image.path.to_str().unwrap()]),
        "ctr 2.4.2 images import",
    );
    assert!(out.contains("saved"), "import progress: {out}");
    assert_eq!(
        images(&d, ns),
        [(
            IMAGE.to_owned(),
            "application/vnd.oci.image.manifest.v1+json".to_owned(),
            image.manifest.digest.clone()
        )]
    );
    // Unpacked by the import (ctr asks for this platform's layers in the default snapshotter):
    // the single layer's chain ID is its diff ID.
    let snapshots = ok(ctr2(&d, ns, &["snapshots", "ls"]), "snapshots ls");
    assert!(
        snapshots.lines().any(|l| l.starts_with(&image.diff_id)),
        "no snapshot {} after the import:\n{snapshots}",
        image.diff_id
    );
    // Nothing left half-written.
    assert_eq!(
        ok(ctr2(&d, ns, &["content", "active"]), "content active")
            .lines()
            .count(),
        1
    );

    let exported = dir.path().join("exported.tar");
    ok(
        ctr2(
            &d,
            ns,
            &["images", "export", exported.to_str().unwrap(), IMAGE],
        ),
        "ctr 2.4.2 images export",
    );
    let names = tar_names(&exported);
    for b in image.blobs() {
        let entry = format!("blobs/sha256/{}", &b.digest[7..]);
        assert!(names.contains(&entry), "{entry} missing from {names:?}");
    }
    let index: serde_json::Value =
        serde_json::from_slice(&tar_file(&exported, "index.json")).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], image.manifest.digest);
    assert_eq!(m["annotations"]["io.containerd.image.name"], IMAGE);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "archive"
    );
    let docker: serde_json::Value =
        serde_json::from_slice(&tar_file(&exported, "manifest.json")).unwrap();
    assert_eq!(
        docker[0]["RepoTags"],
        serde_json::json!(["berth/busybox:archive"])
    );

    // The export, imported by a fresh daemon: the same image, and it runs.
    drop(d);
    let d = Daemon::start();
    ok(
        ctr2(&d, ns, &["images", "import", exported.to_str().unwrap()]),
        "ctr 2.4.2 images import of the export",
    );
    let listed = images(&d, ns);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].2, image.manifest.digest);
    let id = format!("archive-run-{}", process_token());
    let out = ok(
        ctr2(&d, ns, &["run", "--rm", IMAGE, &id, "echo", "round trip"]),
        "ctr 2.4.2 run of the re-imported image",
    );
    assert_eq!(out.trim(), "round trip");
}

#[test]
fn ctr2_imports_a_docker_archive() {
    let ns = &format!("archive-docker-{}", process_token());
    let dir = tempfile::tempdir().unwrap();
    let image = busybox_oci_archive(dir.path(), IMAGE);
    let docker = dir.path().join("docker.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}:archive", image.path.display()))
        .arg(format!(
            "docker-archive:{}:berth/docker:one",
            docker.display()
        ))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What berth-archive makes of it is what containerd makes of it (archive/tests/containerd.rs);
    // here: through Transfer, gzip-compressed as containerd accepts it, under the normalised
    // RepoTag, as a docker schema 2 manifest.
    let gz = dir.path().join("docker.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut std::fs::File::open(&docker).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();
    let d = Daemon::start();
    ok(
        ctr2(&d, ns, &["images", "import", gz.to_str().unwrap()]),
        "ctr 2.4.2 images import of a gzip docker archive",
    );
    let listed = images(&d, ns);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].0, "docker.io/berth/docker:one");
    assert_eq!(
        listed[0].1,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[test]
fn ctr2_import_of_a_hostile_archive_leaves_nothing() {
    let ns = &format!("archive-hostile-{}", process_token());
    let dir = tempfile::tempdir().unwrap();
    let image = busybox_oci_archive(dir.path(), IMAGE);
    // The busybox archive with its layer's bytes changed: the blob no longer matches its name.
    let mut bytes = std::fs::read(&image.path).unwrap();
    let pos = bytes
        .windows(3)
        .position(|w| w == [0x1f, 0x8b, 0x08])
        .expect("the gzip layer");
    bytes[pos + 200] ^= 0xff;
    let hostile = dir.path().join("hostile.tar");
    std::fs::write(&hostile, &bytes).unwrap();

    let d = Daemon::start();
    let out = ctr2(&d, ns, &["images", "import", hostile.to_str().unwrap()]);
    assert!(!out.status.success(), "a corrupted archive was imported");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the one its name says"), "{err}");
    assert!(images(&d, ns).is_empty());
    assert_eq!(
        ok(ctr2(&d, ns, &["content", "active"]), "content active")
            .lines()
            .count(),
        1
    );
    // The blobs stored before the bad one went in under the transfer's lease, which ended
    // with it: the collector takes them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = ok(ctr2(&d, ns, &["content", "ls", "-q"]), "content ls");
        if left.trim().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blobs of the refused import are still held:\n{left}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn ctr2_import_names_as_containerds_image_store() {
    let ns = &format!("archive-names-{}", process_token());
    let dir = tempfile::tempdir().unwrap();
    let image = busybox_oci_archive(dir.path(), IMAGE);
    let d = Daemon::start();
    // --base-name with --digests: the prefix filters the annotated names and adds digest
    // references; --index-name names the index itself. ctr 2.4.2 sends skip_named_digest as
    // the negation of --skip-digest-for-named, so the named entry gets no digest reference
    // (containerd's image store, given the same, stores the same three).
    ok(
        ctr2(
            &d,
            ns,
            &[
                "images",
                "import",
                "--base-name",
                "docker.io/berth/busybox",
                "--digests",
                "--index-name",
                "berth-index",
                "--no-unpack",
                image.path.to_str().unwrap(),
            ],
        ),
        "ctr 2.4.2 images import --base-name --digests --index-name",
    );
    let mut got: Vec<(String, String)> = images(&d, ns)
        .into_iter()
        .map(|(name, _, digest)| (name, digest))
        .collect();
    got.sort();
    let mut want = vec![
        ("berth-index".to_owned(), image.index.digest.clone()),
        (
            format!("docker.io/berth/busybox@{}", image.index.digest),
            image.index.digest.clone(),
        ),
        (IMAGE.to_owned(), image.manifest.digest.clone()),
    ];
    want.sort();
    assert_eq!(got, want);
    // --no-unpack: no snapshot.
    let snapshots = ok(ctr2(&d, ns, &["snapshots", "ls"]), "snapshots ls");
    assert_eq!(snapshots.lines().count(), 1, "{snapshots}");
}
