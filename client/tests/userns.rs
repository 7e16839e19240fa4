//! berthd's `[userns] remap` (docker's `--userns-remap=default`) driven by the `berth` binary
//! against a real berthd and runc: root inside is the mapped uid outside, the image's files are
//! the container root's (through idmapped layers, or through the one-time chowned copy), volumes
//! belong to the mapped root, `--userns host` and a daemon without remap are unchanged, and
//! nothing is left after `rm`. Needs root, and berthd and berth-shim built in this target dir.

use berth_testkit::berthd::Daemon;

mod common;
use common::{BusyboxEnv, Cli};

const IMAGE: &str = "docker.io/berth/busybox:userns";
const APPLETS: &[&str] = &["sh", "id", "cat", "ls", "touch", "sleep", "echo", "true"];

/// A daemon remapping to `default` with subordinate id files of its own (so the test adds its
/// `berth` entry there, not in /etc), the busybox image loaded. Returns the env and the host uid
/// and gid of the containers' root.
fn remapping_env(prefix: &str, idmap: bool) -> (BusyboxEnv, u32, u32) {
    berth_testkit::berthd::require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let (subuid, subgid) = (dir.path().join("subuid"), dir.path().join("subgid"));
    // Another user's range first: the created entry must start past it.
    std::fs::write(&subuid, "someone:100000:65536\n").expect("write subuid");
    std::fs::write(&subgid, "").expect("write subgid");
    let toml = format!(
        "[userns]\nremap = \"default\"\nsubuid_file = {:?}\nsubgid_file = {:?}\nidmap = {idmap}\n",
        subuid, subgid
    );
    let env = BusyboxEnv {
        cli: Cli::new(Daemon::start_with_config(&toml), common::namespace(prefix)),
        dir,
    };
    let archive = berth_testkit::image::busybox_oci_archive_with(env.dir.path(), IMAGE, APPLETS)
        .expect("busybox image");
    env.ok(&["load", "-q", "-i", &archive.path.to_string_lossy()]);
    let entry = |f: &std::path::Path| -> u32 {
        let text = std::fs::read_to_string(f).expect("read subordinate ids");
        let line = text
            .lines()
            .find(|l| l.starts_with("berth:"))
            .unwrap_or_else(|| panic!("no berth entry in {}: {text}", f.display()));
        line.split(':').nth(1).unwrap().parse().expect("a start")
    };
    let (uid, gid) = (entry(&subuid), entry(&subgid));
    assert!(uid >= 165536, "the berth range {uid} overlaps someone's");
    (env, uid, gid)
}

/// `Uid:` and `Gid:` (real ids) of a host process.
fn host_ids(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("Uid:"), field("Gid:"))
}

fn pid_of(cli: &Cli, name: &str) -> u32 {
    cli.ok(&["inspect", "--format", "{{.State.Pid}}", name])
        .trim()
        .parse()
        .expect("a pid")
}

/// The snapshots of the env's namespace, as `ctr snapshots ls` lines (header dropped).
fn snapshots(env: &BusyboxEnv) -> Vec<String> {
    env.daemon
        .ctr(&env.ns, &["snapshots", "ls"])
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// What every remapping test checks: ids inside and outside, the image's files the container
/// root's, a volume, host networking, `--userns host`, and nothing left after `rm`.
fn check_remapped(env: &BusyboxEnv, uid: u32, gid: u32) {
    let before = snapshots(env);
    assert_eq!(env.ok(&["run", "--rm", IMAGE, "id", "-u"]).trim(), "0");
    let map = env.ok(&["run", "--rm", IMAGE, "cat", "/proc/self/uid_map"]);
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(fields, ["0", &uid.to_string(), "65536"], "uid_map: {map}");
    let map = env.ok(&["run", "--rm", IMAGE, "cat", "/proc/self/gid_map"]);
    assert_eq!(
        map.split_whitespace().nth(1),
        Some(gid.to_string().as_str())
    );

    // The image's files are root's inside, and root can write where the image lets root write.
    let out = env.ok(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "ls -lnd / /bin/sh /etc && touch /etc/new /bin/new && echo hi > /new && ls -ln /etc/new /new && cat /new",
    ]);
    for line in out.lines().filter(|l| l.contains('/')) {
        let owner: Vec<&str> = line.split_whitespace().skip(2).take(2).collect();
        assert_eq!(owner, ["0", "0"], "not root's inside: {line}\n{out}");
    }
    assert!(out.ends_with("hi\n"), "{out}");

    // Seen from the host, the container's root is the mapped uid.
    env.ok(&["run", "-d", "--name", "remapped", IMAGE, "sleep", "1000"]);
    let pid = pid_of(env, "remapped");
    assert_eq!(
        host_ids(pid),
        (uid, gid),
        "host ids of the container's root"
    );
    // A second container of the image starts without another copy of it.
    let snaps = snapshots(env).len();
    env.ok(&["run", "-d", "--name", "second", IMAGE, "sleep", "1000"]);
    assert_eq!(
        snapshots(env).len(),
        snaps + 1,
        "a second container made more than its own snapshot"
    );
    // berth cp shifts owners through the container's maps: in, a file is the container root's
    // (by default) or keeps its owner as the container sees it (-a); out, -a gives the ids the
    // container sees.
    let host_file = env.dir.path().join("to-copy");
    std::fs::write(&host_file, b"copied").expect("write");
    std::os::unix::fs::chown(&host_file, Some(1000), Some(1000)).expect("chown");
    let host_file = host_file.to_string_lossy().into_owned();
    env.ok(&["cp", &host_file, "remapped:/default"]);
    env.ok(&["cp", "-a", &host_file, "remapped:/archived"]);
    let owners = |path: &str| -> Vec<String> {
        env.ok(&["exec", "remapped", "ls", "-ln", path])
            .split_whitespace()
            .skip(2)
            .take(2)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(owners("/default"), ["0", "0"]);
    assert_eq!(owners("/archived"), ["1000", "1000"]);
    let upper_owner = |pid: u32, name: &str| {
        let md = std::fs::symlink_metadata(format!("/proc/{pid}/root/{name}")).expect("stat");
        use std::os::unix::fs::MetadataExt;
        (md.uid(), md.gid())
    };
    assert_eq!(upper_owner(pid, "default"), (uid, gid));
    assert_eq!(upper_owner(pid, "archived"), (uid + 1000, gid + 1000));
    env.ok(&["exec", "remapped", "touch", "/made-inside"]);
    let out_path = env.dir.path().join("copied-out");
    env.ok(&[
        "cp",
        "-a",
        "remapped:/made-inside",
        &out_path.to_string_lossy(),
    ]);
    let md = std::fs::metadata(&out_path).expect("stat the copy");
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&md),
            std::os::unix::fs::MetadataExt::gid(&md)
        ),
        (0, 0),
        "cp -a out gives the container's ids"
    );
    env.ok(&["rm", "-f", "remapped", "second"]);

    // A new volume belongs to the container's root; its data is the host's mapped uid's.
    let out = env.ok(&[
        "run",
        "--rm",
        "-v",
        "udata:/data",
        IMAGE,
        "sh",
        "-c",
        "touch /data/f && ls -lnd /data",
    ]);
    assert!(out.contains(" 0 "), "volume not root's inside: {out}");
    let mountpoint = env.ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", "udata"]);
    let md = std::fs::metadata(std::path::Path::new(mountpoint.trim()).join("f")).expect("stat");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), uid);
    env.ok(&["volume", "rm", "udata"]);

    // Host networking keeps working (sysfs of the host's netns is bound, not mounted).
    assert_eq!(
        env.ok(&["run", "--rm", "--network", "host", IMAGE, "id", "-u"])
            .trim(),
        "0"
    );
    // --userns host: no user namespace.
    let map = env.ok(&[
        "run",
        "--rm",
        "--userns",
        "host",
        IMAGE,
        "cat",
        "/proc/self/uid_map",
    ]);
    assert_eq!(map.split_whitespace().nth(2), Some("4294967295"), "{map}");

    // Nothing left: no container snapshot, no idmapped mount.
    let after = snapshots(env);
    let extra: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(
        extra
            .iter()
            .all(|s| s.contains("-remap-") || s.contains("Committed")),
        "left after rm: {extra:?}"
    );
    assert!(after.iter().all(|s| !s.contains("Active")), "{after:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&env.daemon.state().to_string_lossy().to_string()),
        "mounts left under the daemon's state dir:\n{mounts}"
    );
}

#[test]
fn remap_default_with_idmapped_layers() {
    let (env, uid, gid) = remapping_env("berth-userns-idmap", true);
    let plugins = env.daemon.ctr(&env.ns, &["plugins", "ls"]);
    assert!(plugins.contains("io.berth.userns.v1"), "{plugins}");
    let before = snapshots(&env);
    check_remapped(&env, uid, gid);
    // Idmapped layers: no copy of the image was made.
    assert_eq!(snapshots(&env), before, "idmapped layers made a copy");

    // diff and commit see the container's changes only, with the container's owners.
    env.ok(&[
        "run",
        "--name",
        "changed",
        IMAGE,
        "sh",
        "-c",
        "echo x > /etc/newf",
    ]);
    let diff = env.ok(&["diff", "changed"]);
    assert!(diff.contains("A /etc/newf"), "{diff}");
    assert!(
        !diff.contains("/bin/sh"),
        "unchanged files in the diff:\n{diff}"
    );
    env.ok(&["commit", "changed", "docker.io/berth/committed:userns"]);
    env.ok(&["rm", "changed"]);
    let out = env.ok(&[
        "run",
        "--rm",
        "--userns",
        "host",
        "docker.io/berth/committed:userns",
        "ls",
        "-ln",
        "/etc/newf",
    ]);
    let owner: Vec<&str> = out.split_whitespace().skip(2).take(2).collect();
    assert_eq!(owner, ["0", "0"], "committed with host ids: {out}");
}

#[test]
fn remap_default_with_a_chowned_copy() {
    let (env, uid, gid) = remapping_env("berth-userns-copy", false);
    check_remapped(&env, uid, gid);
    // One copy of the image, kept for the next container.
    let copies: Vec<String> = snapshots(&env)
        .into_iter()
        .filter(|s| s.contains(&format!("-{uid}-{gid} ")))
        .collect();
    assert_eq!(copies.len(), 1, "{:?}", snapshots(&env));
}

#[test]
fn without_remap_containers_keep_the_host_ids() {
    let env = BusyboxEnv::start("berth-userns-off", IMAGE, APPLETS);
    let plugins = env.daemon.ctr(&env.ns, &["plugins", "ls"]);
    assert!(!plugins.contains("io.berth.userns.v1"), "{plugins}");
    let map = env.ok(&["run", "--rm", IMAGE, "cat", "/proc/self/uid_map"]);
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "4294967295"]
    );
    env.ok(&["run", "-d", "--name", "plain", IMAGE, "sleep", "1000"]);
    assert_eq!(host_ids(pid_of(&env, "plain")), (0, 0));
    env.ok(&["rm", "-f", "plain"]);
}
