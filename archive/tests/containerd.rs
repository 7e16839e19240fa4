//! The same archives imported by containerd (Debian's 1.6, on a temp root, `ctr images import
//! --no-unpack --index-name`) and by berth-archive: the same image names, target media types
//! and digests, and the same index digest. Covers an OCI layout (berth-testkit's busybox), a
//! docker archive written by skopeo with two tags, an old-layout docker archive with a
//! symlinked and uncompressed layers, docker 25's layout (OCI layout + manifest.json) built by
//! hand, and berth's own export.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_archive::ExportOptions;
use berth_testkit::skip::skip_unless_ci;
use common::*;

struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n  level = \"warn\"\n[metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            opt = dir.join("opt").display(),
        );
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.ctr(&["version"]).is_err() {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "archive"])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Import and list: (name, media type, digest), the index's own under `idx`.
    fn import(&self, archive: &Path) -> Vec<(String, String, String)> {
        let path = archive.to_str().unwrap();
        self.ctr(&[
            "images",
            "import",
            "--no-unpack",
            "--index-name",
            "idx",
            path,
        ])
        .unwrap_or_else(|e| panic!("ctr import {path}: {e}"));
        let listed = self.ctr(&["images", "ls"]).unwrap();
        let images: Vec<(String, String, String)> = listed
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
            })
            .collect();
        for (name, _, _) in &images {
            self.ctr(&["images", "rm", name]).unwrap();
        }
        images
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_name_and_digest_as_containerd_does() {
    if !nix::unistd::geteuid().is_root() {
        skip_unless_ci("archive vs containerd", "needs root to run containerd");
        return;
    }
    for tool in ["containerd", "ctr", "skopeo"] {
        if !have(tool) {
            skip_unless_ci("archive vs containerd", &format!("{tool} is not installed"));
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let busybox =
        berth_testkit::image::busybox_oci_archive(work, "docker.io/library/busybox:e2e").unwrap();

    let skopeo_archive = work.join("skopeo-docker.tar");
    let out = Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg("--additional-tag")
        .arg("example.com/extra/busybox:two")
        .arg(format!("oci-archive:{}:e2e", busybox.path.display()))
        .arg(format!(
            "docker-archive:{}:busybox:one",
            skopeo_archive.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let old = work.join("old-docker.tar");
    std::fs::write(&old, old_docker_archive().0).unwrap();

    let docker25 = work.join("docker25.tar");
    std::fs::write(&docker25, docker25_archive()).unwrap();

    let exported = work.join("exported.tar");
    {
        let store = store(&work.join("export-src"));
        let imported = import_file(&store, &busybox.path).await.unwrap();
        let tar = export_bytes(&store, named(&imported), ExportOptions::default())
            .await
            .unwrap();
        std::fs::write(&exported, tar).unwrap();
    }

    // docker's view of the export (manifest.json): skopeo reads it as a docker-archive and
    // finds busybox's config there.
    let out = Command::new("skopeo")
        .args(["inspect", "--config", "--raw"])
        .arg(format!("docker-archive:{}", exported.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        berth_testkit::image::sha256(&out.stdout),
        busybox.config.digest
    );

    let containerd = Containerd::start(&work.join("containerd"));
    for (i, archive) in [&busybox.path, &skopeo_archive, &old, &docker25, &exported]
        .into_iter()
        .enumerate()
    {
        let theirs = containerd.import(archive);
        let store = store(&work.join(format!("berth-{i}")));
        let imported = import_file(&store, archive)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
        let mut ours: Vec<(String, String, String)> = named(&imported)
            .into_iter()
            .map(|(n, d)| (n, d.media_type, d.digest.to_string()))
            .collect();
        ours.push((
            "idx".to_owned(),
            imported.index.media_type.clone(),
            imported.index.digest.to_string(),
        ));
        ours.sort();
        let mut theirs = theirs;
        theirs.sort();
        eprintln!("{}: {theirs:?}", archive.display());
        assert_eq!(ours, theirs, "{}", archive.display());
        assert!(ours.len() >= 2, "{}: no image imported", archive.display());
    }
}
