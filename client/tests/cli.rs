//! The `berth` binary against a real berthd (berth-testkit's harness) with berth-testkit's
//! busybox image, imported by ctr: docker's behaviours the CLI promises — exit codes, stop's
//! grace period, exec, ps formats, rm -f, name conflicts, unknown images, users from the
//! image's passwd, pause. Needs root, and berthd and berth-shim built in this target dir
//! (`cargo build -p berthd -p berth-shim`) or BERTHD naming a berthd.

use berth_testkit::berthd::Daemon;
use berth_testkit::image::{busybox_oci_archive_with_etc, EtcFiles, DEFAULT_APPLETS};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Cli;

const IMAGE: &str = "docker.io/berth/busybox:cli";
const ETC: EtcFiles = EtcFiles {
    passwd: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n",
    group: "root:x:0:\nnogroup:x:65534:\nwheel:x:10:app\napp:x:1000:\n",
};

/// A berthd with the image imported, in a namespace of this test's own.
struct Env {
    cli: Cli,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Env {
    type Target = Cli;
    fn deref(&self) -> &Cli {
        &self.cli
    }
}

impl Env {
    fn new(case: &str) -> Env {
        let daemon = Daemon::start();
        let dir = tempfile::Builder::new()
            .prefix("berth-cli-")
            .tempdir()
            .expect("temp dir");
        let applets: Vec<&str> = DEFAULT_APPLETS
            .iter()
            .copied()
            .chain(["id", "hostname", "env", "ls", "pwd"])
            .collect();
        let archive = busybox_oci_archive_with_etc(dir.path(), IMAGE, &applets, ETC)
            .expect("build the busybox image");
        // The container cgroup paths name the namespace: unique to this process and case.
        let ns = common::namespace(&format!("cli-{case}"));
        let path = archive.path.to_string_lossy().into_owned();
        daemon.ctr(&ns, &["images", "import", &path]);
        Env {
            cli: Cli::new(daemon, ns),
            _dir: dir,
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cli.remove_all();
    }
}

#[test]
fn run_passes_exit_codes_and_output_through() {
    let env = Env::new("run");
    let out = env.raw(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    // --rm left nothing.
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "");

    // docker's 127 and 126: a missing command, a file that cannot be executed.
    env.fails(127, &["run", "--rm", IMAGE, "no-such-command"]);
    env.fails(126, &["run", "--rm", IMAGE, "/etc/passwd"]);
    assert_eq!(
        env.ok(&["ps", "-a", "-q"]),
        "",
        "failed runs with --rm leave nothing"
    );

    // Overrides reach the process: env, env file, workdir, hostname, entrypoint, stdin.
    let env_file = env._dir.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\n").unwrap();
    let out = env.ok(&[
        "run",
        "--rm",
        "-e",
        "A=1",
        "--env-file",
        env_file.to_str().unwrap(),
        "-w",
        "/tmp",
        "--hostname",
        "box",
        IMAGE,
        "sh",
        "-c",
        "echo $A $FROM_FILE $(pwd) $(hostname)",
    ]);
    assert_eq!(out, "1 yes /tmp box\n");
    assert_eq!(
        env.ok(&["run", "--rm", "--entrypoint", "echo", IMAGE, "hi"]),
        "hi\n"
    );
    let mut child = env
        .command(&["run", "--rm", "-i", IMAGE, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    // -t: the process's stdout is a terminal.
    let out = env.ok(&[
        "run",
        "--rm",
        "-t",
        IMAGE,
        "sh",
        "-c",
        "test -t 1 && echo tty",
    ]);
    assert_eq!(out.trim_end(), "tty");
    // --read-only and resource limits reach the runtime.
    env.fails(
        1,
        &[
            "run",
            "--rm",
            "--read-only",
            IMAGE,
            "sh",
            "-c",
            "echo x > /x",
        ],
    );
    let out = env.ok(&[
        "run",
        "--rm",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "--cpus",
        "0.5",
        IMAGE,
        "echo",
        "limited",
    ]);
    assert_eq!(out, "limited\n");
}

#[test]
fn stop_takes_the_timeout_then_kills_and_ps_shows_it() {
    let env = Env::new("stop");
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        IMAGE,
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 1; done",
    ]);
    assert_eq!(id.trim().len(), 64, "run -d prints the full id: {id:?}");
    assert_eq!(env.status_of("stubborn"), "running");
    let ps = env.ok(&["ps"]);
    assert!(ps.starts_with("CONTAINER ID"), "{ps}");
    assert!(ps.contains("stubborn") && ps.contains("Up "), "{ps}");

    let started = Instant::now();
    assert_eq!(env.ok(&["stop", "-t", "2", "stubborn"]), "stubborn\n");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "stop took {took:?}"
    );
    assert_eq!(env.status_of("stubborn"), "exited");
    assert_eq!(
        env.ok(&["inspect", "--format", "{{.State.ExitCode}}", "stubborn"]),
        "137\n"
    );
    assert_eq!(env.ok(&["wait", "stubborn"]), "137\n");
    // Not running: ps hides it, ps -a shows docker's status string.
    assert!(!env.ok(&["ps"]).contains("stubborn"));
    let all = env.ok(&["ps", "-a", "--format", "{{.Names}}|{{.Status}}|{{.State}}"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with("stubborn|Exited (137) ") && l.ends_with("|exited")),
        "{all}"
    );

    // A process that honours SIGTERM stops without the grace period (PID 1 acts only on the
    // signals it handles); a short id prefix names it.
    let id = env.ok(&[
        "run",
        "-d",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 143' TERM; while true; do sleep 1; done",
    ]);
    let short = &id.trim()[..8];
    let started = Instant::now();
    env.ok(&["stop", short]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(env.ok(&["wait", short]), "143\n");
    // --stop-signal and --stop-timeout are the container's own.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "usr1",
        "--stop-signal",
        "USR1",
        "--stop-timeout",
        "1",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 7' USR1; trap '' TERM; while true; do sleep 1; done",
    ]);
    env.ok(&["stop", "usr1"]);
    assert_eq!(env.ok(&["wait", "usr1"]), "7\n");
    env.ok(&[
        "run",
        "-d",
        "--name",
        "deaf",
        "--stop-timeout",
        "1",
        IMAGE,
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 1; done",
    ]);
    let started = Instant::now();
    env.ok(&["stop", "deaf"]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(env.ok(&["wait", "deaf"]), "137\n");

    // start brings a stopped container back.
    env.ok(&["start", short]);
    assert_eq!(env.status_of(short), "running");
    env.ok(&["kill", short]);
    assert_eq!(env.ok(&["wait", short]), "137\n");
}

#[test]
fn exec_users_and_pause() {
    let env = Env::new("exec");
    env.ok(&["run", "-d", "--name", "box", IMAGE, "sleep", "600"]);
    let out = env.raw(&[
        "exec",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "box",
        "sh",
        "-c",
        "echo $FOO $(pwd); exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bar /tmp\n");
    env.fails(127, &["exec", "box", "no-such-command"]);
    assert_eq!(
        env.ok(&["exec", "-u", "nobody", "box", "id", "-u"]),
        "65534\n"
    );
    let out = env.ok(&["exec", "-t", "box", "sh", "-c", "test -t 0 && echo tty"]);
    assert_eq!(out.trim_end(), "tty");
    let top = env.ok(&["top", "box"]);
    assert!(top.contains("PID") && top.contains("sleep 600"), "{top}");

    // events streams with docker's filters: only this container's exits, as JSON lines. The
    // subscription's start is not observable from here, so execs repeat until one is seen.
    let box_id = env.ok(&["inspect", "--format", "{{.Id}}", "box"]);
    let mut events = env
        .command(&[
            "events",
            "--format",
            "json",
            "--filter",
            "container=box",
            "--filter",
            "event=exit",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        assert!(
            Instant::now() < deadline,
            "no /tasks/exit event for box's exec"
        );
        env.ok(&["exec", "box", "true"]);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            break line.unwrap();
        }
    };
    let _ = events.kill();
    let _ = events.wait();
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON event");
    assert_eq!(event["Topic"], "/tasks/exit", "{event}");
    assert_eq!(event["Namespace"], env.ns.as_str());
    assert_eq!(event["Attributes"]["container_id"], box_id.trim());
    assert_eq!(event["Attributes"]["exit_status"], "0");

    // Users come from the image's /etc/passwd and /etc/group, not the host's.
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "-u",
            "nobody",
            IMAGE,
            "sh",
            "-c",
            "echo $(id -u):$(id -g)"
        ]),
        "65534:65534\n"
    );
    assert_eq!(
        env.ok(&["run", "--rm", "-u", "app", IMAGE, "id", "-G"]),
        "1000 10\n"
    );
    // The primary group is among the kernel's supplementary groups too (CVE-2023-25173), so a
    // setgid program cannot shed it and read what that group is denied.
    let status = env.ok(&[
        "run",
        "--rm",
        "-u",
        "app",
        IMAGE,
        "cat",
        "/proc/self/status",
    ]);
    let groups: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(groups, ["10", "1000"], "{status}");
    assert_eq!(
        env.ok(&["run", "--rm", "-u", "4242:7", IMAGE, "id", "-u"]),
        "4242\n"
    );
    let err = env.fails(125, &["run", "--rm", "-u", "ghost", IMAGE, "true"]);
    assert!(err.contains("ghost") && err.contains("passwd"), "{err}");

    // pause freezes, ps says so, unpause thaws.
    assert_eq!(env.ok(&["pause", "box"]), "box\n");
    assert_eq!(env.status_of("box"), "paused");
    let ps = env.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("box Up ") && ps.contains("(Paused)"), "{ps}");
    env.fails(125, &["exec", "box", "true"]);
    env.fails(1, &["pause", "box"]);
    assert_eq!(env.ok(&["unpause", "box"]), "box\n");
    assert_eq!(env.status_of("box"), "running");
    assert_eq!(env.ok(&["exec", "box", "echo", "thawed"]), "thawed\n");
}

#[test]
fn ps_formats_rm_and_the_messages_people_act_on() {
    let env = Env::new("ps");
    env.ok(&[
        "run", "-d", "--name", "alive", "--label", "tier=web", IMAGE, "sleep", "600",
    ]);
    env.ok(&["create", "--name", "fresh", IMAGE, "true"]);

    let quiet = env.ok(&["ps", "-q"]);
    assert_eq!(quiet.lines().count(), 1, "{quiet}");
    assert_eq!(quiet.trim().len(), 12);
    let full = env.ok(&["ps", "-a", "-q", "--no-trunc"]);
    assert_eq!(full.lines().count(), 2);
    assert!(full.lines().all(|l| l.len() == 64), "{full}");
    let json = env.ok(&["ps", "-a", "--format", "json"]);
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 2);
    let fresh = rows.iter().find(|r| r["Names"] == "fresh").expect("fresh");
    assert_eq!(fresh["Status"], "Created");
    assert_eq!(fresh["State"], "created");
    assert_eq!(fresh["Image"], IMAGE);
    // From the listing's cut-down spec: process.args.
    assert_eq!(fresh["Command"], "\"true\"");
    let table = env.ok(&["ps", "-a", "--format", "table {{.Names}}\t{{.State}}"]);
    assert!(table.starts_with("NAMES\tSTATE\n"), "{table}");
    assert_eq!(
        env.ok(&[
            "ps",
            "-a",
            "--filter",
            "status=created",
            "--format",
            "{{.Names}}"
        ]),
        "fresh\n"
    );
    assert_eq!(
        env.ok(&["ps", "--filter", "label=tier=web", "--format", "{{.Names}}"]),
        "alive\n"
    );
    assert_eq!(
        env.ok(&["ps", "-n", "1", "--format", "{{.Names}}"]),
        "fresh\n"
    );

    // A name in use says which container holds it.
    let alive_id = env.ok(&["inspect", "--format", "{{.Id}}", "alive"]);
    let err = env.fails(125, &["run", "-d", "--name", "alive", IMAGE, "true"]);
    assert!(
        err.contains("already in use") && err.contains(alive_id.trim()),
        "{err}"
    );
    // Racing creates of one name: exactly one keeps it.
    let racers: Vec<_> = (0..4)
        .map(|_| {
            env.command(&["create", "--name", "race", IMAGE, "true"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<Option<i32>> = racers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().status.code())
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == Some(0)).count(),
        1,
        "{codes:?}"
    );
    assert!(
        codes.iter().all(|c| *c == Some(0) || *c == Some(125)),
        "{codes:?}"
    );
    let named = env.ok(&["ps", "-a", "--filter", "name=race", "-q"]);
    assert_eq!(named.lines().count(), 1, "{named}");
    env.ok(&["rm", "race"]);

    // An unknown image says so and suggests pull (run and create pull a missing image by
    // default: tests/transfer.rs covers that against a registry on loopback).
    let err = env.fails(
        125,
        &[
            "run",
            "--rm",
            "--pull",
            "never",
            "docker.io/library/nope:1",
            "true",
        ],
    );
    assert!(err.contains("nope") && err.contains("berth pull"), "{err}");
    let err = env.fails(
        125,
        &[
            "create",
            "--pull",
            "never",
            "docker.io/library/nope:1",
            "true",
        ],
    );
    assert!(err.contains("nope") && err.contains("berth pull"), "{err}");
    // Bad flags are berth's failure, 125.
    env.fails(125, &["run", "--no-such-flag", IMAGE]);
    env.fails(125, &["run", "--network", "no/such", IMAGE, "true"]);
    env.fails(125, &["run", "--network", "nosuchnet", IMAGE, "true"]);

    // rm refuses a running container and says what to do; rm -f kills and removes it.
    let err = env.fails(1, &["rm", "alive"]);
    assert!(err.contains("berth stop") && err.contains("rm -f"), "{err}");
    assert_eq!(env.ok(&["rm", "-f", "alive"]), "alive\n");
    assert_eq!(env.ok(&["rm", "fresh"]), "fresh\n");
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "");
    env.fails(1, &["rm", "alive"]);

    // Images, tags, info, version, namespaces.
    let images = env.ok(&["images"]);
    assert!(
        images.contains("docker.io/berth/busybox") && images.contains("cli"),
        "{images}"
    );
    env.ok(&["tag", IMAGE, "local/again:v1"]);
    assert_eq!(
        env.ok(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "local/again"
        ]),
        "docker.io/local/again:v1\n"
    );
    assert_eq!(
        env.ok(&["run", "--rm", "local/again:v1", "echo", "tagged"]),
        "tagged\n"
    );
    env.ok(&["rmi", "local/again:v1"]);
    assert!(env
        .ok(&["namespace", "ls", "-q"])
        .lines()
        .any(|l| l == env.ns));
    // berthd answers Version as containerd 2.4's API level with its own version beside it;
    // `berth version` shows both.
    assert_eq!(
        env.ok(&[
            "version",
            "--format",
            "{{.Server.Version}} {{.Server.Containerd}}"
        ])
        .trim(),
        format!("{} 2.4.0", env!("CARGO_PKG_VERSION"))
    );
    assert!(env.ok(&["info"]).contains("Images: 1"));
    // A daemon that is not there: 125 and a hint.
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["-H", "unix:///nonexistent/berthd.sock", "ps"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Is berthd running"));
}
