//! `berth cp` and `berth commit` against a real berthd: files and directories in and out of a
//! running and a stopped container with docker's rules, `-a` keeping owners, symlinks in the
//! container that lead outside it refused (the host untouched), and a commit whose image a
//! new `run` sees the change in.
//! Needs root, berthd and berth-shim built in this target dir.

use berth_testkit::berthd::process_token;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

mod common;
use common::BusyboxEnv;

const IMAGE: &str = "docker.io/berth/busybox:cp";
const APPLETS: &[&str] = &[
    "sh", "echo", "true", "cat", "ls", "mkdir", "chown", "ln", "sleep", "stat", "touch",
];

impl BusyboxEnv {
    fn host(&self, p: &str) -> String {
        self.dir.path().join(p).to_string_lossy().into_owned()
    }
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn cp_in_and_out_with_docker_rules_and_no_escape() {
    let env = BusyboxEnv::start("cp", IMAGE, APPLETS);
    env.ok(&["run", "-d", "--name", "c", IMAGE, "sleep", "600"]);
    env.ok(&[
        "exec",
        "c",
        "sh",
        "-c",
        "mkdir -p /data/sub && echo in-container > /data/sub/f && touch /data/owned && \
         chown 1234:5678 /data/owned && ln -s /etc /evil && ln -s ../../../../../../.. /data/up && \
         ln -s sub /data/rel",
    ]);

    // Out: a file to a new name, into a directory, a directory new / into / its contents.
    env.ok(&["cp", "c:/data/sub/f", &env.host("f.txt")]);
    assert_eq!(read(&env.host("f.txt")), "in-container\n");
    std::fs::create_dir(env.host("into")).unwrap();
    env.ok(&["cp", "c:/data/sub/f", &env.host("into")]);
    assert_eq!(read(&env.host("into/f")), "in-container\n");
    env.ok(&["cp", "c:/data", &env.host("d1")]);
    assert_eq!(read(&env.host("d1/sub/f")), "in-container\n");
    env.ok(&["cp", "c:/data", &env.host("into")]);
    assert_eq!(read(&env.host("into/data/sub/f")), "in-container\n");
    std::fs::create_dir(env.host("contents")).unwrap();
    env.ok(&["cp", "c:/data/.", &env.host("contents")]);
    assert_eq!(read(&env.host("contents/sub/f")), "in-container\n");
    // A link inside the container stays a link in the copy, not followed.
    assert_eq!(
        std::fs::read_link(env.host("d1/up")).unwrap(),
        Path::new("../../../../../../..")
    );
    // A relative link that stays inside is followed when asked for with a trailing slash.
    env.ok(&["cp", "c:/data/rel/", &env.host("viarel")]);
    assert_eq!(read(&env.host("viarel/f")), "in-container\n");

    // Owners: the caller's by default, the container's with -a.
    env.ok(&["cp", "c:/data/owned", &env.host("o1")]);
    assert_eq!(std::fs::metadata(env.host("o1")).unwrap().uid(), 0);
    env.ok(&["cp", "-a", "c:/data/owned", &env.host("o2")]);
    let md = std::fs::metadata(env.host("o2")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));

    // In: a file into a directory, a directory's contents, over an existing file.
    std::fs::write(env.host("host.txt"), "from-host\n").unwrap();
    env.ok(&["cp", &env.host("host.txt"), "c:/tmp/"]);
    assert_eq!(
        env.ok(&["exec", "c", "cat", "/tmp/host.txt"]),
        "from-host\n"
    );
    std::fs::create_dir_all(env.host("tree/deep")).unwrap();
    std::fs::write(env.host("tree/deep/x"), "x\n").unwrap();
    env.ok(&["cp", &format!("{}/.", env.host("tree")), "c:/data/sub"]);
    assert_eq!(env.ok(&["exec", "c", "cat", "/data/sub/deep/x"]), "x\n");
    env.ok(&["cp", &env.host("host.txt"), "c:/data/sub/f"]);
    assert_eq!(env.ok(&["exec", "c", "cat", "/data/sub/f"]), "from-host\n");
    assert_eq!(
        env.ok(&["exec", "c", "stat", "-c", "%u:%g", "/tmp/host.txt"]),
        "0:0\n"
    );

    // Symlinks leading out of the container are refused both ways; the host is untouched.
    let marker = format!("berth-cp-escape-{}", process_token());
    std::fs::write(env.host(&marker), "escape\n").unwrap();
    for args in [
        vec!["cp", "c:/evil/hostname", env.dir.path().to_str().unwrap()],
        vec![
            "cp",
            "c:/data/up/etc/hostname",
            env.dir.path().to_str().unwrap(),
        ],
        vec!["cp", "c:/evil/", env.dir.path().to_str().unwrap()],
    ] {
        let err = env.fails(125, &args);
        assert!(err.contains("outside the container"), "{args:?}: {err}");
    }
    for dest in ["c:/evil/", "c:/evil/x", "c:/data/up/tmp/"] {
        let err = env.fails(125, &["cp", &env.host(&marker), dest]);
        assert!(err.contains("outside the container"), "{dest}: {err}");
    }
    assert!(!Path::new("/etc").join(&marker).exists());
    assert!(!Path::new("/tmp").join(&marker).exists());

    // Failures a person can act on.
    let err = env.fails(125, &["cp", "c:/no/such", &env.host("x")]);
    assert!(err.contains("/no/such"), "{err}");
    env.fails(125, &["cp", &env.host("f.txt"), &env.host("g.txt")]);
    env.fails(125, &["cp", "nosuchcontainer:/x", &env.host("x")]);
    let err = env.fails(125, &["cp", "c:/data", &env.host("f.txt")]);
    assert!(err.contains("not a directory"), "{err}");

    // A stopped container: its snapshot, read and written.
    env.ok(&["stop", "-t", "1", "c"]);
    env.ok(&["cp", "c:/data/sub/f", &env.host("after-stop")]);
    assert_eq!(read(&env.host("after-stop")), "from-host\n");
    env.ok(&["cp", &env.host("host.txt"), "c:/stopped.txt"]);
    env.ok(&["start", "c"]);
    assert_eq!(env.ok(&["exec", "c", "cat", "/stopped.txt"]), "from-host\n");
    let err = env.fails(125, &["cp", "c:/evil/hostname", &env.host("x")]);
    assert!(err.contains("outside the container"), "{err}");
}

#[test]
fn commit_then_run_sees_the_change() {
    let env = BusyboxEnv::start("cp", IMAGE, APPLETS);
    env.ok(&["run", "-d", "--name", "src", IMAGE, "sleep", "600"]);
    env.ok(&["exec", "src", "sh", "-c", "echo committed > /etc/motd"]);
    let id = env.ok(&[
        "commit",
        "-m",
        "add motd",
        "-a",
        "Tester <t@example.com>",
        "-c",
        r#"CMD ["cat", "/etc/motd"]"#,
        "-c",
        "ENV GREETING=hi",
        "src",
        "committed:v1",
    ]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    // The container was paused for the commit and runs again after.
    assert_eq!(env.status_of("src"), "running");

    assert_eq!(env.ok(&["run", "--rm", "committed:v1"]), "committed\n");
    assert_eq!(
        env.ok(&["run", "--rm", "committed:v1", "sh", "-c", "echo $GREETING"]),
        "hi\n"
    );
    let history = env.ok(&["history", "--format", "{{.Comment}}", "committed:v1"]);
    assert!(history.contains("add motd"), "{history}");
    // The original image is unchanged.
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "cat /etc/motd 2>/dev/null || echo none"
        ]),
        "none\n"
    );
    // A stopped container commits too, onto the same name.
    env.ok(&["exec", "src", "sh", "-c", "echo second > /etc/motd"]);
    env.ok(&["stop", "-t", "1", "src"]);
    env.ok(&["commit", "src", "committed:v1"]);
    // The config is the container's image's again (CMD sh), as docker's commit does.
    assert_eq!(
        env.ok(&["run", "--rm", "committed:v1", "cat", "/etc/motd"]),
        "second\n"
    );

    // Bad changes and a missing name fail before anything is written.
    env.fails(125, &["commit", "-c", "RUN rm -rf /", "src", "bad:v1"]);
    env.fails(125, &["commit", "src"]);
    env.fails(125, &["commit", "nosuch", "bad:v1"]);
    let images = env.ok(&["images", "--format", "{{.Repository}}"]);
    assert!(!images.contains("bad"), "{images}");
}
