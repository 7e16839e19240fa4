//! `berth pull`, `push`, `save` and `load` against a real berthd (berth-testkit's harness) and
//! Debian's `docker-registry` on loopback: every transfer goes through the daemon's Transfer
//! service, with the archive bytes and progress on Streaming streams. Needs root, berthd and
//! berth-shim built in this target dir, and docker-registry installed (scripts/deps.sh).

use berth_testkit::berthd::{process_token, Daemon};
use berth_testkit::image::busybox_oci_archive;
use std::io::Write;
use std::process::{Command, Output, Stdio};

mod common;
use common::registry::Registry;

const IMAGE: &str = "docker.io/berth/busybox:transfer";

struct Env {
    daemon: Daemon,
    ns: String,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(case: &str) -> Env {
        Env {
            daemon: Daemon::start(),
            ns: format!("transfer-{case}-{}", process_token()),
            dir: tempfile::Builder::new()
                .prefix("berth-transfer-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("-H")
            .arg(format!("unix://{}", self.daemon.socket.display()))
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .env_remove("BERTH_HOST")
            .env_remove("BERTH_NAMESPACE")
            .stdin(Stdio::null());
        cmd
    }

    fn check(&self, args: &[&str], out: Output, code: i32) -> String {
        assert_eq!(
            out.status.code(),
            Some(code),
            "berth {} exited {:?}\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run berth");
        self.check(args, out, code)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.expect(0, args)
    }

    fn image_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .lines()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }
}

#[test]
fn save_and_load_round_trip_through_files_and_pipes() {
    berth_testkit::berthd::require_root();
    let env = Env::new("saveload");
    let archive = busybox_oci_archive(env.dir.path(), IMAGE).expect("build the busybox image");
    let path = archive.path.to_string_lossy().into_owned();

    let out = env.ok(&["load", "-i", &path]);
    assert_eq!(out.trim(), format!("Loaded image: {IMAGE}"));
    assert_eq!(env.image_names(), [IMAGE]);
    assert_eq!(
        env.ok(&["run", "--rm", IMAGE, "echo", "loaded"]).trim(),
        "loaded"
    );

    // save -o, then load back from stdin into an empty namespace's twin.
    let saved = env.dir.path().join("saved.tar");
    let saved_s = saved.to_string_lossy().into_owned();
    env.ok(&["save", "-o", &saved_s, IMAGE]);
    let bytes = std::fs::read(&saved).expect("read the saved archive");
    assert!(bytes.len() > 100_000, "archive of {} bytes", bytes.len());
    // An OCI layout with docker's manifest.json, as docker save writes.
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&saved)
        .output()
        .expect("tar -t");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for entry in ["index.json", "oci-layout", "manifest.json"] {
        assert!(
            listing.lines().any(|l| l == entry),
            "{entry} missing:\n{listing}"
        );
    }

    env.ok(&["rmi", IMAGE]);
    assert!(env.image_names().is_empty());
    let mut load = env.command(&["load"]);
    load.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = load.spawn().expect("spawn berth load");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&bytes)
        .expect("write the archive to berth load");
    let out = child.wait_with_output().expect("wait berth load");
    let stdout = env.check(&["load"], out, 0);
    assert_eq!(stdout.trim(), format!("Loaded image: {IMAGE}"));
    assert_eq!(
        env.ok(&["run", "--rm", IMAGE, "echo", "again"]).trim(),
        "again"
    );

    // save to stdout is byte-identical to save -o (same content, same layout).
    let out = env.command(&["save", IMAGE]).output().expect("berth save");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, bytes);

    // Failures: an unknown image, and an archive that is not one; nothing changes.
    env.expect(125, &["save", "-o", &saved_s, "nosuch:image"]);
    let junk = env.dir.path().join("junk.tar");
    std::fs::write(&junk, b"not an archive").expect("write junk");
    env.expect(125, &["load", "-i", &junk.to_string_lossy()]);
    assert_eq!(env.image_names(), [IMAGE]);
}

#[test]
fn push_then_pull_back_and_run() {
    berth_testkit::berthd::require_root();
    let env = Env::new("pushpull");
    let registry = Registry::start();
    let archive = busybox_oci_archive(env.dir.path(), IMAGE).expect("build the busybox image");
    env.ok(&["load", "-q", "-i", &archive.path.to_string_lossy()]);

    let remote = format!("127.0.0.1:{}/berth/busybox:v1", registry.port);
    env.ok(&["tag", IMAGE, &remote]);
    env.ok(&["push", &remote]);
    let pushed_digest = env.ok(&["images", "--no-trunc", "--format", "{{.ID}}", &remote]);

    // Gone locally, then pulled back: same digest, unpacked, runnable.
    env.ok(&["rmi", IMAGE, &remote]);
    assert!(env.image_names().is_empty());
    let out = env.ok(&["pull", &remote]);
    assert!(out.trim().ends_with(&remote), "{out}");
    assert!(out.contains("Digest: sha256:"), "{out}");
    assert_eq!(
        env.ok(&["images", "--no-trunc", "--format", "{{.ID}}", &remote]),
        pushed_digest
    );
    assert_eq!(
        env.ok(&["run", "--rm", &remote, "echo", "pulled"]).trim(),
        "pulled"
    );

    // run pulls a missing image itself (docker's --pull missing), its progress on stderr.
    env.ok(&["rmi", &remote]);
    let args = ["run", "--rm", &remote, "echo", "auto"];
    let out = env.command(&args).output().expect("run berth");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(env.check(&args, out, 0).trim(), "auto");
    assert!(stderr.contains("Unable to find image"), "{stderr}");
    assert_eq!(env.image_names(), std::slice::from_ref(&remote));
    // --pull never keeps the hint; a missing image in the registry fails run with 125.
    env.ok(&["rmi", &remote]);
    env.expect(125, &["create", "--pull", "never", &remote, "true"]);
    let nothing = format!("127.0.0.1:{}/berth/none:v1", registry.port);
    env.expect(125, &["run", "--rm", &nothing, "true"]);
    env.ok(&["pull", "-q", &remote]);

    // An unknown tag fails cleanly (125) and stores nothing.
    let missing = format!("127.0.0.1:{}/berth/busybox:nosuch", registry.port);
    env.expect(125, &["pull", &missing]);
    assert_eq!(env.image_names(), [remote]);
}

#[test]
fn login_stores_credentials_the_daemon_pushes_and_pulls_with() {
    berth_testkit::berthd::require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("auth.json");
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("s3cret", 5).expect("bcrypt");
    std::fs::write(&htpasswd, format!("tester:{hash}\n")).expect("write htpasswd");
    let registry = Registry::start_with(&format!(
        "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
        htpasswd.display()
    ));
    let mut env = Env::new("login");
    env.daemon = Daemon::start_with_config(&format!(
        "[transfer]\nlogin_store = \"{}\"\n",
        store.display()
    ));
    let archive = busybox_oci_archive(env.dir.path(), IMAGE).expect("build the busybox image");
    env.ok(&["load", "-q", "-i", &archive.path.to_string_lossy()]);
    let host = format!("127.0.0.1:{}", registry.port);
    let remote = format!("{host}/private/busybox:v1");
    env.ok(&["tag", IMAGE, &remote]);

    // No credentials: the registry says 401 and the push fails.
    env.expect(125, &["push", &remote]);

    let login = |args: &[&str], stdin: &str| {
        let mut cmd = env.command(args);
        cmd.env("BERTH_LOGIN_STORE", &store)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn berth login");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write the password");
        child.wait_with_output().expect("wait berth")
    };
    let out = login(
        &["login", "-u", "tester", "--password-stdin", &host],
        "s3cret\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&store)
        .expect("the login store")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&store).expect("read the store")).expect("json");
    assert!(saved["auths"][&host]["auth"].is_string(), "{saved}");

    env.ok(&["push", &remote]);
    env.ok(&["rmi", &remote]);
    env.ok(&["pull", &remote]);

    // --password-stdin without a user is refused; logout forgets the host.
    let out = login(&["login", "--password-stdin", &host], "x\n");
    assert_eq!(out.status.code(), Some(125));
    let out = login(&["logout", &host], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&store).expect("read the store")).expect("json");
    assert!(saved["auths"].get(&host).is_none(), "{saved}");
    env.ok(&["rmi", &remote]);
    env.expect(125, &["pull", &remote]);
}
