//! Filesystem options of `berth run` against a real berthd (berth-testkit's harness): bind
//! mounts (read-write and read-only, `-v` and `--mount`), tmpfs (`--tmpfs`, `--mount
//! type=tmpfs`), and, on a CNI network, two containers reaching each other by name through the
//! hosts files berthd writes.
//! Needs root, berthd and berth-shim built in this target dir, and containernetworking-plugins.

use berth_testkit::berthd::Daemon;
use berth_testkit::image::busybox_oci_archive_with;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Cli;

const IMAGE: &str = "docker.io/berth/busybox:fs";
const APPLETS: &[&str] = &[
    "sh", "echo", "true", "cat", "sleep", "httpd", "wget", "mkdir", "grep", "touch", "rm",
];

struct Env {
    cli: Cli,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = Cli;
    fn deref(&self) -> &Cli {
        &self.cli
    }
}

impl Env {
    fn start() -> Env {
        berth_testkit::berthd::require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = busybox_oci_archive_with(dir.path(), IMAGE, APPLETS).expect("busybox image");
        let env = Env {
            cli: Cli::new(Daemon::start(), common::namespace("fs")),
            dir,
        };
        env.ok(&["load", "-q", "-i", &archive.path.to_string_lossy()]);
        env
    }
}

#[test]
fn bind_mounts_and_tmpfs() {
    let env = Env::start();
    let host = env.dir.path().join("shared");
    std::fs::create_dir(&host).expect("host dir");
    std::fs::write(host.join("in"), "from-the-host\n").expect("host file");
    let hostp = host.to_string_lossy().into_owned();

    // Read-write: the container reads the host's file and its write lands on the host.
    let out = env.ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{hostp}:/data"),
        IMAGE,
        "sh",
        "-c",
        "cat /data/in && echo from-the-container > /data/out",
    ]);
    assert_eq!(out, "from-the-host\n");
    assert_eq!(
        std::fs::read_to_string(host.join("out")).expect("written through the bind"),
        "from-the-container\n"
    );

    // Read-only, by -v and by --mount: reads work, writes are refused and nothing lands.
    for flag in [
        vec!["-v".to_string(), format!("{hostp}:/data:ro")],
        vec![
            "--mount".to_string(),
            format!("type=bind,source={hostp},target=/data,readonly"),
        ],
    ] {
        let mut args: Vec<&str> = vec!["run", "--rm"];
        args.extend(flag.iter().map(String::as_str));
        args.extend([IMAGE, "sh", "-c", "cat /data/in && touch /data/ro-write"]);
        let (code, stdout, stderr) = env.berth(&args);
        assert_eq!(stdout, "from-the-host\n", "{flag:?}: {stderr}");
        assert_ne!(code, 0, "{flag:?}: a write to a read-only bind succeeded");
        assert!(
            stderr.contains("Read-only file system"),
            "{flag:?}: {stderr}"
        );
        assert!(!host.join("ro-write").exists(), "{flag:?}");
    }

    // --tmpfs: a tmpfs with docker's noexec,nosuid,nodev, writable, gone with the container.
    let out = env.ok(&[
        "run",
        "--rm",
        "--tmpfs",
        "/scratch:size=1m",
        IMAGE,
        "sh",
        "-c",
        "echo x > /scratch/f && cat /scratch/f && grep ' /scratch ' /proc/mounts",
    ]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("x"));
    let line = lines.next().unwrap_or_default();
    assert!(line.starts_with("tmpfs /scratch tmpfs "), "{out}");
    for opt in ["nosuid", "nodev", "noexec", "size=1024k"] {
        assert!(line.split([' ', ',']).any(|o| o == opt), "{opt} in {line}");
    }
    let out = env.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=tmpfs,target=/t,tmpfs-size=64k,tmpfs-mode=1770",
        IMAGE,
        "grep",
        " /t ",
        "/proc/mounts",
    ]);
    assert!(out.starts_with("tmpfs /t tmpfs "), "{out}");
    assert!(
        out.contains("size=64k") && out.contains("mode=1770"),
        "{out}"
    );

    // Refused before anything is created, with exit code 125.
    for (args, why) in [
        (vec!["-v", "/nonexistent-berth-fs-test:/x"], "nonexistent"),
        (vec!["-v", "relative/path:/x"], "volume name"),
        (vec!["-v", "/tmp:/"], "root"),
        (
            vec!["--tmpfs", "/a", "--tmpfs", "/a"],
            "duplicate mount point",
        ),
        (vec!["--mount", "type=bind,target=/x"], "source"),
    ] {
        let mut full = vec!["run", "--rm"];
        full.extend(args.iter().copied());
        full.extend([IMAGE, "true"]);
        let (code, _, stderr) = env.berth(&full);
        assert_eq!(code, 125, "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    assert_eq!(env.ok(&["ps", "-aq"]), "");
}

#[test]
fn containers_on_a_network_reach_each_other_by_name() {
    let env = Env::start();
    let net = format!("f{}", std::process::id());
    struct Cleanup<'a>(&'a Env, String);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.berth(&["rm", "-f", "a"]);
            let _ = self.0.berth(&["network", "rm", &self.1]);
        }
    }
    let _cleanup = Cleanup(&env, net.clone());
    env.ok(&["network", "create", &net]);
    env.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        &net,
        IMAGE,
        "sh",
        "-c",
        "mkdir /www && echo hello-by-name > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);

    // The second container's hosts file names its peer; the first one's is rewritten to name
    // the newcomer while it runs.
    let hosts = env.ok(&[
        "run",
        "--rm",
        "--name",
        "b",
        "--network",
        &net,
        IMAGE,
        "sh",
        "-c",
        "cat /etc/hosts",
    ]);
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().skip(1).any(|n| n == "a")),
        "peer a missing from b's /etc/hosts:\n{hosts}"
    );
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().skip(1).any(|n| n == "b")),
        "own name missing from b's /etc/hosts:\n{hosts}"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, stdout, stderr) = env.berth(&[
            "run",
            "--rm",
            "--network",
            &net,
            IMAGE,
            "wget",
            "-qO-",
            "http://a/",
        ]);
        if code == 0 {
            assert_eq!(stdout.trim(), "hello-by-name");
            break;
        }
        assert!(Instant::now() < deadline, "wget http://a/: {code} {stderr}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let own = env.ok(&["exec", "a", "cat", "/etc/hosts"]);
    assert!(
        own.lines()
            .any(|l| l.split_whitespace().skip(1).any(|n| n == "a")),
        "own name missing from a's /etc/hosts:\n{own}"
    );
}

#[test]
fn diff_and_export_of_a_container() {
    let env = Env::start();
    struct Cleanup<'a>(&'a Env);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.berth(&["rm", "-f", "changed", "running"]);
        }
    }
    let _cleanup = Cleanup(&env);
    env.ok(&[
        "run",
        "--name",
        "changed",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /new/sub && echo x > /new/sub/f && echo extra >> /etc/passwd && rm /bin/true",
    ]);
    let out = env.ok(&["diff", "changed"]);
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        "A /new",
        "A /new/sub",
        "A /new/sub/f",
        "C /etc",
        "C /etc/passwd",
        "C /bin",
        "D /bin/true",
    ] {
        assert!(lines.contains(&want), "{want:?} missing from:\n{out}");
    }
    assert!(!out.contains("/bin/sh"), "an untouched file listed:\n{out}");

    // export: the whole filesystem, changes included, to a file and to stdout.
    let file = env.dir.path().join("changed.tar");
    env.ok(&["export", "-o", &file.to_string_lossy(), "changed"]);
    let names = |bytes: &[u8]| -> Vec<String> {
        tar::Archive::new(bytes)
            .entries()
            .expect("tar")
            .map(|e| {
                let e = e.expect("tar entry");
                e.path()
                    .expect("path")
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect()
    };
    let listed = names(&std::fs::read(&file).expect("exported file"));
    for want in ["new/sub/f", "etc/passwd", "bin/sh"] {
        assert!(
            listed.iter().any(|n| n == want),
            "{want} not in the export: {listed:?}"
        );
    }
    assert!(
        !listed.iter().any(|n| n == "bin/true" || n.contains(".wh.")),
        "{listed:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("-H")
        .arg(format!("unix://{}", env.daemon.socket.display()))
        .args(["-n", &env.ns, "export", "changed"])
        .stdin(Stdio::null())
        .output()
        .expect("run berth export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(names(&out.stdout), listed);

    // A running container's changes, while it runs.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "running",
        IMAGE,
        "sh",
        "-c",
        "touch /live && exec sleep 60",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = env.ok(&["diff", "running"]);
        if out.lines().any(|l| l == "A /live") {
            break;
        }
        assert!(Instant::now() < deadline, "no A /live in:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, err) = env.berth(&["diff", "no-such-container"]);
    assert_ne!(code, 0, "{err}");
}
