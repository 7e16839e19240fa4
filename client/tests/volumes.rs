//! Named and anonymous volumes against a real berthd (berth-testkit's harness): `berth volume
//! create|ls|inspect|rm|prune`, `-v NAME:/path[:ro]`, `-v /path`, `--mount type=volume`, data
//! outliving containers, copy-up from the image (owners and modes kept), removal of an in-use
//! volume refused, `rm -v`.
//! Needs root, berthd and berth-shim built in this target dir.

use std::os::unix::fs::MetadataExt;

mod common;
use common::BusyboxEnv;

const IMAGE: &str = "docker.io/berth/busybox:vol";
const APPLETS: &[&str] = &[
    "sh", "echo", "true", "cat", "ls", "mkdir", "chown", "chmod", "stat", "sleep", "rm",
];

impl BusyboxEnv {
    fn volume_names(&self) -> Vec<String> {
        self.ok(&["volume", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The four tests below once shared one namespace: the first to end removed its cgroup parent
/// while another's `berth run` was making a cgroup under it (runc: "mkdir
/// /sys/fs/cgroup/blkio/vol-...: no such file or directory", once in about twenty suite runs).
#[test]
#[should_panic(expected = "already another test's")]
fn a_namespace_serves_one_test_only() {
    common::claim("vol-claimed-twice");
    common::claim("vol-claimed-twice");
}

#[test]
fn named_volume_data_outlives_containers_and_in_use_removal_is_refused() {
    let env = BusyboxEnv::start("vol", IMAGE, APPLETS);
    assert_eq!(
        env.ok(&["volume", "create", "--label", "team=web", "data"]),
        "data\n"
    );
    // Creating an existing name answers it again, as docker does.
    assert_eq!(env.ok(&["volume", "create", "data"]), "data\n");
    let mountpoint = env
        .ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", "data"])
        .trim()
        .to_string();
    assert!(
        mountpoint.starts_with(&*env.daemon.dir.path().to_string_lossy())
            && mountpoint.ends_with(&format!("/volumes/{}/data/_data", env.ns)),
        "{mountpoint}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "inspect", "data"])).expect("inspect JSON");
    assert_eq!(inspect[0]["Name"], "data");
    assert_eq!(inspect[0]["Driver"], "local");
    assert_eq!(inspect[0]["Labels"]["team"], "web");
    let table = env.ok(&["volume", "ls"]);
    assert!(table.starts_with("DRIVER"), "{table}");
    assert!(table.contains("local") && table.contains("data"), "{table}");
    assert_eq!(
        env.ok(&[
            "volume",
            "ls",
            "--filter",
            "label=team=web",
            "--format",
            "{{.Name}}"
        ]),
        "data\n"
    );
    assert_eq!(
        env.ok(&["volume", "ls", "--filter", "label=team=db", "-q"]),
        ""
    );

    // Written by one container, seen by the next; read-only refuses writes.
    env.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        IMAGE,
        "sh",
        "-c",
        "echo persisted > /data/f",
    ]);
    assert_eq!(
        std::fs::read_to_string(format!("{mountpoint}/f")).expect("on the host"),
        "persisted\n"
    );
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data:ro",
            IMAGE,
            "cat",
            "/data/f"
        ]),
        "persisted\n"
    );
    let (code, _, _) = env.berth(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=data,target=/data,readonly",
        IMAGE,
        "sh",
        "-c",
        "echo x > /data/g",
    ]);
    assert_ne!(code, 0, "a read-only volume took a write");
    assert!(!std::path::Path::new(&format!("{mountpoint}/g")).exists());

    // A container holding the volume keeps it; the refusal names the container.
    let id = env
        .ok(&[
            "create",
            "--name",
            "holder",
            "-v",
            "data:/data",
            IMAGE,
            "true",
        ])
        .trim()
        .to_string();
    let err = env.fails(1, &["volume", "rm", "data"]);
    assert!(err.contains("in use") && err.contains(&id), "{err}");
    assert!(env.volume_names().contains(&"data".to_string()));
    assert_eq!(
        std::fs::read_to_string(format!("{mountpoint}/f")).expect("kept"),
        "persisted\n"
    );
    // Nor does a prune take it.
    env.ok(&["volume", "prune", "-a", "-f"]);
    assert!(env.volume_names().contains(&"data".to_string()));
    env.ok(&["rm", "holder"]);
    assert_eq!(env.ok(&["volume", "rm", "data"]), "data\n");
    assert!(!std::path::Path::new(&mountpoint).exists());
    env.fails(1, &["volume", "inspect", "data"]);
    env.fails(1, &["volume", "rm", "data"]);
    env.ok(&["volume", "rm", "-f", "data"]);

    // A volume named but absent is made; bad names and drivers are refused with nothing made.
    env.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=auto,target=/m",
        IMAGE,
        "true",
    ]);
    assert!(env.volume_names().contains(&"auto".to_string()));
    for bad in [
        vec!["volume", "create", "../escape"],
        vec!["volume", "create", ".hidden"],
        vec!["volume", "create", "-d", "nfs", "x"],
        vec!["volume", "create", "-o", "type=nfs", "x"],
    ] {
        env.fails(125, &bad);
    }
    env.fails(125, &["run", "--rm", "-v", "a/b:/x", IMAGE, "true"]);
    assert_eq!(env.volume_names(), vec!["auto".to_string()]);
}

#[test]
fn anonymous_volumes_go_with_rm_v_and_prune() {
    let env = BusyboxEnv::start("vol", IMAGE, APPLETS);
    env.ok(&["create", "--name", "a1", "-v", "/scratch", IMAGE, "true"]);
    let names = env.volume_names();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(names[0].len(), 64, "an anonymous volume's generated name");
    env.ok(&["rm", "-v", "a1"]);
    assert!(env.volume_names().is_empty());

    // Without -v the anonymous volume stays, and a prune takes it (named ones only with -a).
    env.ok(&["volume", "create", "keep"]);
    env.ok(&[
        "run",
        "--name",
        "a2",
        "-v",
        "/scratch",
        IMAGE,
        "sh",
        "-c",
        "echo 123456789 > /scratch/f",
    ]);
    env.ok(&["rm", "a2"]);
    assert_eq!(env.volume_names().len(), 2);
    let dangling = env.ok(&["volume", "ls", "-q", "--filter", "dangling=true"]);
    assert_eq!(dangling.lines().count(), 2, "{dangling}");
    // No confirmation (stdin is /dev/null): nothing removed.
    env.ok(&["volume", "prune"]);
    assert_eq!(env.volume_names().len(), 2);
    let out = env.ok(&["volume", "prune", "-f"]);
    assert!(out.starts_with("Deleted Volumes:"), "{out}");
    assert!(
        out.contains("Total reclaimed space: ") && out.contains("kB"),
        "{out}"
    );
    assert_eq!(env.volume_names(), vec!["keep".to_string()]);
    let out = env.ok(&["volume", "prune", "-a", "-f"]);
    assert!(out.contains("keep"), "{out}");
    assert!(env.volume_names().is_empty());

    // run --rm takes its anonymous volumes too.
    env.ok(&["run", "--rm", "-v", "/scratch", IMAGE, "true"]);
    assert!(env.volume_names().is_empty());
}

#[test]
fn an_empty_volume_is_filled_from_the_image() {
    let env = BusyboxEnv::start("vol", IMAGE, APPLETS);
    // An image with a directory of its own owners and modes, built by berth build.
    let ctx = env.dir.path().join("ctx");
    std::fs::create_dir(&ctx).expect("context");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {IMAGE}\nRUN mkdir -p /srv/app/sub && echo from-image > /srv/app/sub/f && \
             chown -R 1234:5678 /srv/app && chmod 750 /srv/app && chmod 600 /srv/app/sub/f\n"
        ),
    )
    .expect("Dockerfile");
    env.ok(&["build", "-q", "-t", "copyup:v1", &ctx.to_string_lossy()]);

    let out = env.ok(&[
        "run", "--rm", "-v", "cu:/srv/app", "copyup:v1", "sh", "-c",
        "stat -c '%u:%g %a' /srv/app /srv/app/sub/f && cat /srv/app/sub/f && echo mine > /srv/app/new",
    ]);
    assert_eq!(out, "1234:5678 750\n1234:5678 600\nfrom-image\n");
    let mountpoint = env
        .ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", "cu"])
        .trim()
        .to_string();
    let md = std::fs::metadata(format!("{mountpoint}/sub/f")).expect("copied to the volume");
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 5678, 0o600)
    );

    // A volume with data is not filled again: the image's file deleted stays deleted.
    env.ok(&[
        "run",
        "--rm",
        "-v",
        "cu:/srv/app",
        "copyup:v1",
        "rm",
        "/srv/app/sub/f",
    ]);
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "-v",
            "cu:/srv/app",
            "copyup:v1",
            "ls",
            "/srv/app/sub"
        ]),
        ""
    );
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "-v",
            "cu:/srv/app",
            "copyup:v1",
            "cat",
            "/srv/app/new"
        ]),
        "mine\n"
    );
    // A path the image lacks leaves the volume empty.
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "-v",
            "other:/nothing/here",
            "copyup:v1",
            "ls",
            "/nothing/here"
        ]),
        ""
    );
}

#[test]
fn rename_and_system_df() {
    let env = BusyboxEnv::start("vol", IMAGE, APPLETS);
    env.ok(&["create", "--name", "first", "-v", "dfvol:/d", IMAGE, "true"]);
    env.ok(&["create", "--name", "other", IMAGE, "true"]);
    env.ok(&["rename", "first", "second"]);
    assert_eq!(env.status_of("second"), "created");
    env.fails(1, &["inspect", "--format", "{{.Name}}", "first"]);
    // A name in use, the same name and a bad name are refused; nothing changes.
    let err = env.fails(125, &["rename", "second", "other"]);
    assert!(err.contains("already in use"), "{err}");
    env.fails(125, &["rename", "second", "second"]);
    env.fails(125, &["rename", "second", "bad/name"]);
    env.fails(125, &["rename", "nosuch", "x"]);
    assert_eq!(
        env.ok(&["inspect", "--format", "{{.Name}}", "second"]),
        "second\n"
    );

    env.ok(&[
        "run",
        "--rm",
        "-v",
        "dfvol:/d",
        IMAGE,
        "sh",
        "-c",
        "echo 0123456789 > /d/f",
    ]);
    let df = env.ok(&["system", "df"]);
    assert!(df.starts_with("TYPE"), "{df}");
    let rows: Vec<serde_json::Value> = env
        .ok(&["system", "df", "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect();
    let row = |kind: &str| rows.iter().find(|r| r["Type"] == kind).expect(kind).clone();
    assert_eq!(row("Images")["TotalCount"], "1");
    assert_eq!(row("Images")["Active"], "1");
    assert_eq!(row("Containers")["TotalCount"], "2");
    let volumes = row("Local Volumes");
    assert_eq!(volumes["TotalCount"], "1");
    assert_eq!(volumes["Active"], "1", "second names dfvol");
    assert!(volumes["SizeBytes"].as_i64().unwrap() > 0, "{volumes}");
    assert_eq!(volumes["ReclaimableBytes"], 0);
    assert_eq!(row("Build Cache")["TotalCount"], "0");
}
