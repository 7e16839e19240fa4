//! berthd driven by the real `ctr`: every command here is one a containerd user runs, and each
//! test checks what ctr prints or how it fails, not how berthd stores it. Every scenario runs
//! twice, with Debian's ctr 1.6 (`ctr::ctr_1_6::NAME`) and containerd v2's (`ctr::ctr_2::NAME`).

use crate::events::Events;
use crate::fixtures::{self, OciArchive};
use crate::harness::{Ctr, Daemon};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/berth/busybox:e2e";

// ---- helpers ------------------------------------------------------------------------------------

/// Poll `f` until it yields `Ok`; after `timeout`, panic with `what` and the last `Err`, which
/// describes what was seen instead.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen:\n{seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible and different per seed.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Go's `%.4g` of a value in [0, 1000), as go-units prints it.
fn go_g4(v: f64) -> String {
    let int_digits = if v < 1.0 {
        1
    } else {
        v.log10().floor() as usize + 1
    };
    let s = format!("{:.*}", 4usize.saturating_sub(int_digits), v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// go-units `HumanSize`: decimal units, 4 significant digits (`content ls`, `content active`).
fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let (mut v, mut i) = (n as f64, 0);
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", go_g4(v), units[i])
}

/// containerd's `progress.Bytes`: binary units, one decimal (`images ls`).
fn progress_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut i) = (n as f64, 0);
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

#[test]
fn size_formatting_matches_go() {
    assert_eq!(human_size(0), "0B");
    assert_eq!(human_size(999), "999B");
    assert_eq!(human_size(100_000), "100kB");
    assert_eq!(human_size(3_000_000), "3MB");
    assert_eq!(human_size(4_194_427), "4.194MB");
    assert_eq!(human_size(1_234), "1.234kB");
    assert_eq!(human_size(1_200), "1.2kB");
    assert_eq!(progress_bytes(1_048_576), "1.0 MiB");
    assert_eq!(progress_bytes(1_000), "1000.0 B");
}

/// Data rows of a ctr table (header dropped), columns split on runs of whitespace.
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Data rows of a tab-separated ctr table (`content ls`, `content active`), whose cells may hold
/// spaces ("Less than a second").
fn tab_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split('\t')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The row whose first column is `key`.
fn row<'a>(table: &'a [Vec<String>], key: &str) -> Option<&'a Vec<String>> {
    table
        .iter()
        .find(|r| r.first().map(String::as_str) == Some(key))
}

/// A comma-joined label column as a sorted list ("-" or empty = none).
fn label_set(col: Option<&String>) -> Vec<String> {
    let mut v: Vec<String> = match col.map(String::as_str) {
        None | Some("-") | Some("") => vec![],
        Some(s) => s.split(',').map(str::to_string).collect(),
    };
    v.sort();
    v
}

/// `content ls` as digest → (size column, labels).
fn content_ls(d: &Daemon, ns: &str) -> Vec<(String, String, Vec<String>)> {
    tab_rows(&d.ctr(ns, &["content", "ls"]))
        .into_iter()
        .map(|r| {
            assert!(r.len() >= 3, "short content ls row {r:?}");
            (r[0].clone(), r[1].clone(), label_set(r.get(3)))
        })
        .collect()
}

fn content_entry(d: &Daemon, ns: &str, digest: &str) -> Option<(String, Vec<String>)> {
    content_ls(d, ns)
        .into_iter()
        .find(|(dg, _, _)| dg == digest)
        .map(|(_, size, labels)| (size, labels))
}

fn namespace_names(d: &Daemon) -> Vec<String> {
    d.ctr("default", &["namespaces", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn image_names(d: &Daemon, ns: &str) -> Vec<String> {
    d.ctr(ns, &["images", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// `ctr content ingest REF` fed `data` on stdin; returns the digest of `data`.
pub(crate) fn ingest(d: &Daemon, ns: &str, reference: &str, data: &[u8]) -> String {
    let mut child = d
        .ctr_command(ns, &["content", "ingest", reference])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr content ingest");
    let mut stdin = child.stdin.take().expect("stdin");
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&owned));
    let out = child.wait_with_output().expect("wait for ctr");
    writer.join().unwrap().expect("feed ctr content ingest");
    assert!(
        out.status.success(),
        "ctr content ingest {reference} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fixtures::sha256(data)
}

/// `ctr images import --no-unpack`, then wait for the garbage collection its lease's end
/// triggers: it removes the archive's index.json blob, which nothing references (containerd does
/// the same), and afterwards the namespace is settled for the test's assertions.
fn import(d: &Daemon, ns: &str, image: &OciArchive) {
    d.ctr(
        ns,
        &[
            "images",
            "import",
            "--no-unpack",
            image.path.to_str().expect("utf-8 path"),
        ],
    );
    wait_for(
        Duration::from_secs(10),
        "the import's index blob to be collected",
        || match content_entry(d, ns, &image.index.digest) {
            None => Ok(()),
            Some(_) => Err("index.json blob still listed".to_string()),
        },
    );
}

fn archive(dir: &tempfile::TempDir) -> OciArchive {
    fixtures::busybox_oci_archive(dir.path(), IMAGE)
}

// ---- version and plugins -----------------------------------------------------------------------

fn server_section(out: &str) -> (String, String) {
    let server = out
        .split("Server:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Server section in ctr version:\n{out}"));
    let field = |name: &str| {
        server
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} in ctr version:\n{out}"))
    };
    (field("Version:"), field("UUID:"))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn version_shows_the_server_and_a_uuid_stable_across_restarts(ctr: Ctr) {
    let mut d = Daemon::start().using(ctr);
    let (version, uuid) = server_section(&d.ctr("default", &["version"]));
    // containerd's version scheme (the API level served), berth's own as build metadata.
    assert_eq!(
        version,
        format!("2.4.0+berth.{}", env!("CARGO_PKG_VERSION"))
    );
    assert!(is_uuid(&uuid), "server UUID {uuid:?} is not a UUID");

    let first_pid = d.pid();
    assert!(d.stop().success(), "berthd did not exit cleanly");
    d.spawn();
    assert_ne!(d.pid(), first_pid, "a new process serves after the restart");
    let (_, again) = server_section(&d.ctr("default", &["version"]));
    assert_eq!(uuid, again, "the server UUID changed across a restart");

    d.kill9();
    d.spawn();
    let (_, after_kill) = server_section(&d.ctr("default", &["version"]));
    assert_eq!(uuid, after_kill, "the server UUID changed after a crash");
}

fn plugins_ls_lists_the_grpc_services(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let table = rows(&d.ctr("default", &["plugins", "ls"]));
    for id in [
        "containers",
        "content",
        "images",
        "leases",
        "namespaces",
        "events",
        "version",
        "introspection",
    ] {
        let r = table
            .iter()
            .find(|r| r.len() >= 4 && r[0] == "io.containerd.grpc.v1" && r[1] == id)
            .unwrap_or_else(|| panic!("plugin io.containerd.grpc.v1 {id} missing: {table:?}"));
        assert_eq!(r[3], "ok", "plugin {id} status: {r:?}");
    }
    // A filter is evaluated by the server: only the grpc plugins come back.
    let grpc = rows(&d.ctr("default", &["plugins", "ls", "type==io.containerd.grpc.v1"]));
    assert!(grpc.len() >= 8, "{grpc:?}");
    assert!(
        grpc.iter().all(|r| r[0] == "io.containerd.grpc.v1"),
        "{grpc:?}"
    );
}

// ---- namespaces ---------------------------------------------------------------------------------

fn namespaces_create_label_ls_rm(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    d.ctr(
        "default",
        &["namespaces", "create", "team-a", "tier=gold", "owner=ops"],
    );
    d.ctr("default", &["namespaces", "create", "team.b"]);
    let ls = rows(&d.ctr("default", &["namespaces", "ls"]));
    assert_eq!(
        row(&ls, "team-a").map(|r| r[1..].to_vec()),
        Some(vec!["owner=ops,tier=gold".to_string()]),
        "{ls:?}"
    );
    assert_eq!(row(&ls, "team.b").map(|r| r.len()), Some(1), "{ls:?}");

    // Add one label, change one, remove one (`k=` clears it).
    d.ctr("default", &["namespaces", "label", "team-a", "zone=eu"]);
    d.ctr("default", &["namespaces", "label", "team-a", "tier=silver"]);
    d.ctr("default", &["namespaces", "label", "team-a", "owner="]);
    let ls = rows(&d.ctr("default", &["namespaces", "ls"]));
    assert_eq!(
        row(&ls, "team-a").map(|r| r[1..].to_vec()),
        Some(vec!["tier=silver,zone=eu".to_string()]),
        "{ls:?}"
    );

    // An empty namespace can be removed; afterwards it is gone and the others stay.
    d.ctr("default", &["namespaces", "rm", "team.b"]);
    let names = namespace_names(&d);
    assert!(!names.contains(&"team.b".to_string()), "{names:?}");
    assert!(names.contains(&"team-a".to_string()), "{names:?}");
}

fn namespace_create_of_an_existing_one_fails(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    d.ctr("default", &["namespaces", "create", "dup", "a=1"]);
    let err = d.ctr_err("default", &["namespaces", "create", "dup", "a=2"]);
    assert!(err.contains("already exists"), "{err}");
    // The failed create changed nothing.
    let ls = rows(&d.ctr("default", &["namespaces", "ls"]));
    assert_eq!(row(&ls, "dup").map(|r| r[1].clone()), Some("a=1".into()));
    // An invalid name is refused: by berthd for ctr 1.6, by ctr 2.x itself before it asks.
    let err = d.ctr_err("default", &["namespaces", "create", "bad/name"]);
    let refusal = match ctr {
        Ctr::V1_6 => "invalid",
        Ctr::V2 => "must match",
    };
    assert!(err.contains(refusal), "{err}");
    assert!(!namespace_names(&d).iter().any(|n| n == "bad/name"));
}

fn namespace_rm_refuses_a_namespace_holding_content_or_images(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(&dir);

    // Content only.
    let blob = pseudo_random(10_000, 7);
    ingest(&d, "blobs", "one", &blob);
    let err = d.ctr_err("default", &["namespaces", "rm", "blobs"]);
    assert!(err.contains("must be empty"), "{err}");
    assert!(namespace_names(&d).contains(&"blobs".to_string()));
    d.ctr("blobs", &["content", "rm", &fixtures::sha256(&blob)]);
    d.ctr("default", &["namespaces", "rm", "blobs"]);
    assert!(!namespace_names(&d).contains(&"blobs".to_string()));

    // An image (its blobs removed first, so only the image record holds the namespace).
    import(&d, "imgs", &image);
    for digest in d.ctr("imgs", &["content", "ls", "-q"]).lines() {
        d.ctr("imgs", &["content", "rm", digest]);
    }
    assert_eq!(d.ctr("imgs", &["content", "ls", "-q"]), "");
    let err = d.ctr_err("default", &["namespaces", "rm", "imgs"]);
    assert!(err.contains("must be empty"), "{err}");
    assert!(
        err.contains("images"),
        "the message should name what is left: {err}"
    );
    assert_eq!(image_names(&d, "imgs"), vec![IMAGE.to_string()]);
    d.ctr("imgs", &["images", "rm", IMAGE]);
    d.ctr("default", &["namespaces", "rm", "imgs"]);
    assert!(!namespace_names(&d).contains(&"imgs".to_string()));
}

fn namespaces_isolate_content_images_and_leases(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(&dir);
    let data = pseudo_random(200_000, 11);
    let digest = fixtures::sha256(&data);

    import(&d, "alpha", &image);
    ingest(&d, "alpha", "private", &data);
    d.ctr("alpha", &["leases", "create", "--id", "alpha-lease"]);
    d.ctr("default", &["namespaces", "create", "beta"]);

    // Nothing of alpha is listed in beta...
    assert_eq!(image_names(&d, "beta"), Vec::<String>::new());
    assert_eq!(d.ctr("beta", &["content", "ls", "-q"]), "");
    assert_eq!(d.ctr("beta", &["leases", "ls", "-q"]), "");
    assert_eq!(
        rows(&d.ctr("beta", &["containers", "ls"])),
        Vec::<Vec<String>>::new()
    );
    // ...nor reachable by name or digest.
    let err = d.ctr_err("beta", &["content", "get", &digest]);
    assert!(err.contains("not found"), "{err}");
    let err = d.ctr_err("beta", &["content", "get", &image.manifest.digest]);
    assert!(err.contains("not found"), "{err}");
    let err = d.ctr_err("beta", &["content", "label", &digest, "x=y"]);
    assert!(err.contains("not found"), "{err}");
    let out = dir.path().join("export.tar");
    let err = d.ctr_err("beta", &["images", "export", out.to_str().unwrap(), IMAGE]);
    assert!(err.contains("not found"), "{err}");
    let err = d.ctr_err("beta", &["images", "label", IMAGE, "x=y"]);
    assert!(err.contains("not found"), "{err}");
    let err = d.ctr_err("beta", &["leases", "rm", "alpha-lease"]);
    assert!(err.contains("not found"), "{err}");

    // The same bytes ingested in beta are beta's own: removing them there leaves alpha's.
    ingest(&d, "beta", "mine", &data);
    assert_eq!(d.ctr("beta", &["content", "ls", "-q"]).trim(), digest);
    d.ctr("beta", &["content", "rm", &digest]);
    assert_eq!(d.ctr("beta", &["content", "ls", "-q"]), "");
    let got = d.ctr_raw("alpha", &["content", "get", &digest]);
    assert!(got.status.success(), "alpha lost its blob");
    assert!(got.stdout == data, "alpha's blob changed");
    assert_eq!(image_names(&d, "alpha"), vec![IMAGE.to_string()]);
    assert_eq!(
        d.ctr("alpha", &["leases", "ls", "-q"]).trim(),
        "alpha-lease"
    );
}

fn containers_ls_on_an_empty_namespace(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let out = d.ctr("default", &["containers", "ls"]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["CONTAINER", "IMAGE", "RUNTIME"]);
    assert_eq!(rows(&out), Vec::<Vec<String>>::new());
    assert_eq!(d.ctr("fresh", &["containers", "ls", "-q"]), "");
}

// ---- content ------------------------------------------------------------------------------------

fn content_ingest_ls_get_label_rm(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    // Not a multiple of ctr's 1 MiB write chunks.
    let data = pseudo_random((4 << 20) + 123, 42);
    let digest = fixtures::sha256(&data);
    ingest(&d, "default", "big-blob", &data);

    let (size, labels) = content_entry(&d, "default", &digest).expect("ingested blob listed");
    assert_eq!(size, human_size(data.len() as u64));
    assert_eq!(labels, Vec::<String>::new());

    let got = d.ctr_raw("default", &["content", "get", &digest]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(got.stdout.len(), data.len());
    assert!(got.stdout == data, "content get returned different bytes");

    d.ctr(
        "default",
        &["content", "label", &digest, "purpose=test", "team=berth"],
    );
    let (_, labels) = content_entry(&d, "default", &digest).unwrap();
    assert_eq!(labels, ["purpose=test", "team=berth"]);
    d.ctr("default", &["content", "label", &digest, "purpose="]);
    let (_, labels) = content_entry(&d, "default", &digest).unwrap();
    assert_eq!(labels, ["team=berth"]);

    // A second blob; list filters are evaluated by the server.
    let small = b"hello berth\n".to_vec();
    let small_digest = ingest(&d, "default", "small", &small);
    let by_label = d.ctr("default", &["content", "ls", "-q", "labels.team==berth"]);
    assert_eq!(by_label.lines().collect::<Vec<_>>(), [digest.as_str()]);
    let by_digest = d.ctr(
        "default",
        &["content", "ls", "-q", &format!("digest=={small_digest}")],
    );
    assert_eq!(
        by_digest.lines().collect::<Vec<_>>(),
        [small_digest.as_str()]
    );

    // The second blob stays when the first is removed.
    d.ctr("default", &["content", "rm", &digest]);
    assert!(content_entry(&d, "default", &digest).is_none());
    let err = d.ctr_err("default", &["content", "get", &digest]);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(
        d.ctr("default", &["content", "get", &fixtures::sha256(&small)])
            .as_bytes(),
        &small[..]
    );
    // No ingest is left behind.
    assert_eq!(
        tab_rows(&d.ctr("default", &["content", "active"])),
        Vec::<Vec<String>>::new()
    );
}

fn content_active_shows_an_ingest_in_progress(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let mut child = d
        .ctr_command("default", &["content", "ingest", "slow-ingest"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr content ingest");
    let mut stdin = child.stdin.take().unwrap();
    // ctr 1.6 copies stdin in 1 MiB reads (io.ReadAtLeast) and sends a WRITE per full buffer:
    // feed one and a half, so exactly 1 MiB has been written while ctr waits for the rest.
    // ctr 2.x has sent all it was fed by the time it waits for more.
    let first = pseudo_random(1_500_000, 5);
    stdin.write_all(&first).unwrap();
    stdin.flush().unwrap();

    let written = human_size(match ctr {
        Ctr::V1_6 => 1 << 20,
        Ctr::V2 => first.len() as u64,
    });
    let active = wait_for(
        Duration::from_secs(10),
        "slow-ingest at the offset ctr has written",
        || {
            let out = d.ctr("default", &["content", "active"]);
            row(&tab_rows(&out), "slow-ingest")
                .filter(|r| r.get(1) == Some(&written))
                .cloned()
                .ok_or(out)
        },
    );
    assert_eq!(active.len(), 3, "REF SIZE AGE: {active:?}");
    // Not committed yet.
    assert_eq!(d.ctr("default", &["content", "ls", "-q"]), "");

    let rest = pseudo_random(100_000, 6);
    stdin.write_all(&rest).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut all = first;
    all.extend_from_slice(&rest);
    let (size, _) = content_entry(&d, "default", &fixtures::sha256(&all)).expect("committed");
    assert_eq!(size, human_size(1_600_000));
    assert!(row(
        &tab_rows(&d.ctr("default", &["content", "active"])),
        "slow-ingest"
    )
    .is_none());
}

// ---- images -------------------------------------------------------------------------------------

fn images_import_ls_tag_label_rm(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(&dir);
    let name = image.name.as_str();
    import(&d, "default", &image);

    let ls = rows(&d.ctr("default", &["images", "ls"]));
    let expect_row = |name: &str, labels: &str| {
        vec![
            name.to_string(),
            fixtures::MANIFEST_MEDIA_TYPE.to_string(),
            image.manifest.digest.clone(),
        ]
        .into_iter()
        .chain(
            progress_bytes(image.image_size())
                .split(' ')
                .map(str::to_string),
        )
        .chain([
            format!("linux/{}", fixtures::oci_arch()),
            labels.to_string(),
        ])
        .collect::<Vec<_>>()
    };
    assert_eq!(ls, vec![expect_row(name, "-")]);

    // The blobs are in the content store, with the references ctr set while importing.
    let content = content_ls(&d, "default");
    for blob in image.blobs() {
        let (_, size, _) = content
            .iter()
            .find(|(dg, _, _)| *dg == blob.digest)
            .unwrap_or_else(|| panic!("{} not in content ls: {content:?}", blob.digest));
        assert_eq!(*size, human_size(blob.size));
    }
    let mut listed: Vec<&str> = content.iter().map(|(dg, _, _)| dg.as_str()).collect();
    let mut expected: Vec<&str> = image.blobs().iter().map(|b| b.digest.as_str()).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "content ls after import");
    // The archive's index.json was stored too, but nothing references it: collected.
    assert!(content_entry(&d, "default", &image.index.digest).is_none());
    let (_, manifest_labels) = content_entry(&d, "default", &image.manifest.digest).unwrap();
    assert!(manifest_labels.contains(&format!(
        "containerd.io/gc.ref.content.config={}",
        image.config.digest
    )));
    assert!(manifest_labels.contains(&format!(
        "containerd.io/gc.ref.content.l.0={}",
        image.layer.digest
    )));

    // The manifest reads back byte for byte.
    let archived = read_archive_blob(&image, &image.manifest.digest);
    let got = d.ctr_raw("default", &["content", "get", &image.manifest.digest]);
    assert!(got.stdout == archived, "manifest bytes differ");

    // tag
    let copy = "docker.io/berth/busybox:copy";
    d.ctr("default", &["images", "tag", name, copy]);
    let ls = rows(&d.ctr("default", &["images", "ls"]));
    assert_eq!(ls, vec![expect_row(copy, "-"), expect_row(name, "-")]);
    match ctr {
        // Client-side, ctr creates the record and refuses an existing name without --force.
        Ctr::V1_6 => {
            let err = d.ctr_err("default", &["images", "tag", name, copy]);
            assert!(err.contains("already exists"), "{err}");
        }
        // Through Transfer the image store creates or updates, as containerd 2's does.
        Ctr::V2 => {
            d.ctr("default", &["images", "tag", name, copy]);
            let ls = rows(&d.ctr("default", &["images", "ls"]));
            assert_eq!(ls, vec![expect_row(copy, "-"), expect_row(name, "-")]);
        }
    }
    let err = d.ctr_err(
        "default",
        &["images", "tag", "docker.io/berth/none:x", "y:z"],
    );
    assert!(err.contains("not found"), "{err}");

    // label: set, then clear
    d.ctr("default", &["images", "label", copy, "stage=test", "a=b"]);
    let ls = rows(&d.ctr("default", &["images", "ls", &format!("name=={copy}")]));
    assert_eq!(ls, vec![expect_row(copy, "a=b,stage=test")]);
    d.ctr("default", &["images", "label", copy, "a="]);
    let ls = rows(&d.ctr("default", &["images", "ls", &format!("name=={copy}")]));
    assert_eq!(ls, vec![expect_row(copy, "stage=test")]);
    let ls = rows(&d.ctr("default", &["images", "ls", "labels.stage==test"]));
    assert_eq!(ls, vec![expect_row(copy, "stage=test")]);

    // rm removes the name only; the source image and its blobs stay.
    d.ctr("default", &["images", "rm", copy]);
    assert_eq!(image_names(&d, "default"), vec![name.to_string()]);
    for blob in image.blobs() {
        assert!(content_entry(&d, "default", &blob.digest).is_some());
    }
    d.ctr("default", &["images", "rm", name]);
    assert_eq!(image_names(&d, "default"), Vec::<String>::new());
}

fn images_reimport_of_the_same_archive_succeeds(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(&dir);
    import(&d, "default", &image);
    let before = d.ctr("default", &["content", "ls", "-q"]);
    // Every blob exists now: the commits answer AlreadyExists, which ctr takes as success.
    import(&d, "default", &image);
    assert_eq!(image_names(&d, "default"), vec![IMAGE.to_string()]);
    assert_eq!(d.ctr("default", &["content", "ls", "-q"]), before);
    // After the image record is gone, importing again recreates it from the existing blobs.
    d.ctr("default", &["images", "rm", IMAGE]);
    import(&d, "default", &image);
    let ls = rows(&d.ctr("default", &["images", "ls"]));
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0][0], IMAGE);
    assert_eq!(ls[0][2], image.manifest.digest);
    assert_eq!(
        tab_rows(&d.ctr("default", &["content", "active"])),
        Vec::<Vec<String>>::new()
    );
}

fn read_archive_blob(image: &OciArchive, digest: &str) -> Vec<u8> {
    let want = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let mut archive = tar::Archive::new(std::fs::File::open(&image.path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == want {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            return bytes;
        }
    }
    panic!("{want} not in the archive");
}

// ---- leases -------------------------------------------------------------------------------------

fn lease_row(d: &Daemon, ns: &str, id: &str) -> Option<Vec<String>> {
    row(&rows(&d.ctr(ns, &["leases", "ls"])), id).cloned()
}

fn leases_create_ls_rm(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let out = d.ctr(
        "default",
        &["leases", "create", "--id", "L1", "--expires", "1h", "k=v"],
    );
    assert_eq!(out.trim(), "L1");
    let r = lease_row(&d, "default", "L1").expect("L1 listed");
    assert_eq!(r.len(), 3, "ID CREATED-AT LABELS: {r:?}");
    let labels = label_set(r.get(2));
    assert_eq!(labels.len(), 2, "{labels:?}");
    assert!(
        labels[0].starts_with("containerd.io/gc.expire=20"),
        "{labels:?}"
    );
    assert_eq!(labels[1], "k=v");

    // Without --id ctr sends an empty id and the server picks one (containerd's WithRandomID).
    let generated = d.ctr("default", &["leases", "create"]).trim().to_string();
    assert!(!generated.is_empty());
    d.ctr("default", &["leases", "create", "--id", "L2"]);
    let err = d.ctr_err("default", &["leases", "create", "--id", "L2"]);
    assert!(err.contains("already exists"), "{err}");

    d.ctr("default", &["leases", "rm", "L1"]);
    let ids: Vec<String> = d
        .ctr("default", &["leases", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!ids.contains(&"L1".to_string()), "{ids:?}");
    assert!(
        ids.contains(&"L2".to_string()) && ids.contains(&generated),
        "{ids:?}"
    );
    let err = d.ctr_err("default", &["leases", "rm", "L1"]);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(
        d.ctr("default", &["leases", "ls", "-q", "id==L2"]).trim(),
        "L2"
    );
}

fn expired_leases_are_removed_by_the_daemon(ctr: Ctr) {
    let mut d = Daemon::start().using(ctr);
    d.ctr(
        "default",
        &["leases", "create", "--id", "short", "--expires", "1s"],
    );
    d.ctr(
        "default",
        &["leases", "create", "--id", "long", "--expires", "1h"],
    );
    let short = lease_row(&d, "default", "short").expect("short listed");
    // Wait until the lease's expiry (an RFC 3339 time, whole seconds) has passed on the clock the
    // daemon shares with us.
    let expiry = short
        .iter()
        .flat_map(|col| col.split(','))
        .find_map(|label| label.strip_prefix("containerd.io/gc.expire="))
        .unwrap_or_else(|| panic!("no expiry label on short: {short:?}"));
    let expiry =
        time::OffsetDateTime::parse(expiry, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("expiry {expiry:?}: {e}"));
    wait_for(Duration::from_secs(5), "short's expiry to pass", || {
        match time::OffsetDateTime::now_utc() > expiry {
            true => Ok(()),
            false => Err(format!("it is not yet {expiry}")),
        }
    });
    // The daemon runs an expiry pass at startup: a restart after the deadline removes the lease.
    d.kill9();
    d.spawn();
    wait_for(Duration::from_secs(10), "the expired lease to go", || {
        let out = d.ctr("default", &["leases", "ls"]);
        match row(&rows(&out), "short") {
            None => Ok(()),
            Some(_) => Err(out),
        }
    });
    assert!(
        lease_row(&d, "default", "long").is_some(),
        "an unexpired lease was removed"
    );
}

// ---- events -------------------------------------------------------------------------------------

fn events_sees_the_events_of_parallel_commands(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(&dir);
    let mut events = Events::start(&d);

    // First, while no collection has been scheduled: an unleased blob is the collector's to take
    // (as containerd's), and image writes below schedule one.
    let data = pseudo_random(1000, 3);
    ingest(&d, "other", "ev", &data);
    d.ctr("other", &["content", "rm", &fixtures::sha256(&data)]);
    let e = events.expect_event("/content/delete", |e| e.topic == "/content/delete");
    assert_eq!(e.namespace, "other");
    assert_eq!(e.body["digest"], fixtures::sha256(&data).as_str());

    d.ctr(
        "evns",
        &["namespaces", "create", "created-from-evns", "k=v"],
    );
    let e = events.expect_event("/namespaces/create", |e| {
        e.topic == "/namespaces/create" && e.body["name"] == "created-from-evns"
    });
    assert_eq!(
        e.namespace, "evns",
        "published under the caller's namespace"
    );
    assert_eq!(e.body["labels"]["k"], "v");

    d.ctr(
        "evns",
        &["namespaces", "label", "created-from-evns", "k2=v2"],
    );
    let e = events.expect_event("/namespaces/update", |e| {
        e.topic == "/namespaces/update" && e.body["name"] == "created-from-evns"
    });
    assert_eq!(
        e.namespace, "evns",
        "published under the caller's namespace"
    );
    assert_eq!(e.body["labels"]["k2"], "v2");

    import(&d, "evns", &image);
    let e = events.expect_event("/images/create of the import", |e| {
        e.topic == "/images/create" && e.body["name"] == IMAGE
    });
    assert_eq!(e.namespace, "evns");

    let copy = "docker.io/berth/busybox:evcopy";
    d.ctr("evns", &["images", "tag", IMAGE, copy]);
    let e = events.expect_event("/images/create of the tag", |e| {
        e.topic == "/images/create" && e.body["name"] == copy
    });
    assert_eq!(e.namespace, "evns");

    d.ctr("evns", &["images", "label", copy, "x=y"]);
    let e = events.expect_event("/images/update", |e| {
        e.topic == "/images/update" && e.body["name"] == copy
    });
    assert_eq!(e.namespace, "evns");
    assert_eq!(e.body["labels"]["x"], "y");

    d.ctr("evns", &["images", "rm", copy]);
    let e = events.expect_event("/images/delete", |e| {
        e.topic == "/images/delete" && e.body["name"] == copy
    });
    assert_eq!(e.namespace, "evns");

    d.ctr("default", &["namespaces", "rm", "created-from-evns"]);
    let e = events.expect_event("/namespaces/delete", |e| e.topic == "/namespaces/delete");
    assert_eq!(
        e.namespace, "created-from-evns",
        "published under the deleted namespace"
    );

    // A committed ingest is announced on /content/create, as containerd 2 does. ctr 1.6 does not
    // know that event type and skips it; ctr 2.x prints it.
    let announced: Vec<_> = events
        .seen
        .iter()
        .filter(|e| e.topic == "/content/create" && e.body["digest"] == fixtures::sha256(&data))
        .collect();
    match ctr {
        Ctr::V1_6 => assert!(announced.is_empty(), "{announced:?}"),
        Ctr::V2 => {
            assert_eq!(announced.len(), 1, "{:?}", events.seen);
            assert_eq!(announced[0].namespace, "other");
            assert_eq!(announced[0].body["size"], 1000);
        }
    }
}

// ---- durability and the daemon's files ----------------------------------------------------------

fn acknowledged_writes_survive_kill9(ctr: Ctr) {
    let mut d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(&dir);
    import(&d, "durable", &image);
    d.kill9();
    d.spawn();
    assert_eq!(image_names(&d, "durable"), vec![IMAGE.to_string()]);

    let blobs: Vec<Vec<u8>> = (0..5)
        .map(|i| pseudo_random(70_000 + i * 1000, 100 + i as u64))
        .collect();
    for (i, b) in blobs.iter().enumerate() {
        ingest(&d, "durable", &format!("blob-{i}"), b);
    }
    d.ctr("default", &["namespaces", "create", "kept", "who=me"]);
    d.ctr(
        "durable",
        &["content", "label", &image.config.digest, "kept=yes"],
    );
    d.ctr(
        "durable",
        &["leases", "create", "--id", "kept-lease", "--expires", "1h"],
    );
    d.kill9();
    d.spawn();

    let ls = rows(&d.ctr("durable", &["images", "ls"]));
    assert_eq!(ls.len(), 1, "{ls:?}");
    assert_eq!(ls[0][0], IMAGE);
    assert_eq!(ls[0][2], image.manifest.digest);
    for blob in image.blobs() {
        assert!(
            content_entry(&d, "durable", &blob.digest).is_some(),
            "{} lost",
            blob.digest
        );
    }
    for b in &blobs {
        let got = d.ctr_raw("durable", &["content", "get", &fixtures::sha256(b)]);
        assert!(
            got.status.success() && got.stdout == *b,
            "an ingested blob was lost or changed"
        );
    }
    let (_, labels) = content_entry(&d, "durable", &image.config.digest).unwrap();
    assert!(labels.contains(&"kept=yes".to_string()), "{labels:?}");
    let ns = rows(&d.ctr("default", &["namespaces", "ls"]));
    assert_eq!(
        row(&ns, "kept").map(|r| r[1..].to_vec()),
        Some(vec!["who=me".to_string()])
    );
    assert!(row(&ns, "durable").is_some());
    assert!(lease_row(&d, "durable", "kept-lease").is_some());
}

fn socket_root_lock_and_clean_shutdown(ctr: Ctr) {
    let mut d = Daemon::start().using(ctr);
    let socket = std::fs::metadata(&d.socket).expect("socket exists");
    assert!(socket.file_type().is_socket());
    assert_eq!(socket.permissions().mode() & 0o7777, 0o660, "socket mode");
    let root = std::fs::metadata(d.root()).unwrap();
    assert_eq!(root.permissions().mode() & 0o7777, 0o711, "root dir mode");

    // A second daemon on the same root refuses to start, and leaves the first one serving.
    let other_socket = d.dir.path().join("other.sock");
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .arg("--root")
        .arg(d.root())
        .arg("--state")
        .arg(d.dir.path().join("other-state"))
        .arg("--address")
        .arg(&other_socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn second berthd");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait for the second berthd") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second berthd on the same root is still running after 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !status.success(),
        "a second berthd on the same root started"
    );
    assert!(
        stderr.contains(&d.root().display().to_string()) && stderr.contains("another berthd"),
        "the refusal should say the root is held: {stderr}"
    );
    assert!(
        !other_socket.exists(),
        "the refused daemon created its socket"
    );
    d.ctr("default", &["version"]);

    // SIGTERM: a clean exit, the socket removed, the lock released.
    let status = d.stop();
    assert!(
        status.success(),
        "berthd exited with {status} on SIGTERM:\n{}",
        d.log()
    );
    assert!(!d.socket.exists(), "the socket outlived the daemon");
    d.spawn();
    d.ctr("default", &["version"]);
}

fn images_rm_of_the_last_image_frees_its_content(ctr: Ctr) {
    let d = Daemon::start().using(ctr);
    let dir = tempfile::tempdir().unwrap();
    let image = archive(&dir);
    // A blob held by a gc.root label survives every collection. Ingested and labelled first,
    // while no collection is due: unlabelled and unleased, any collection could take it.
    let kept = pseudo_random(10_000, 5);
    let kept_digest = ingest(&d, "default", "kept", &kept);
    d.ctr(
        "default",
        &[
            "content",
            "label",
            &kept_digest,
            "containerd.io/gc.root=2026-01-01T00:00:00Z",
        ],
    );
    import(&d, "default", &image);
    d.ctr("default", &["images", "tag", IMAGE, "second:tag"]);
    let blob_file = |digest: &str| {
        d.root()
            .join("content/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };

    // One name gone: the other still references every blob.
    d.ctr("default", &["images", "rm", "--sync", "second:tag"]);
    for blob in image.blobs() {
        assert!(
            content_entry(&d, "default", &blob.digest).is_some(),
            "{} collected too early",
            blob.digest
        );
        assert!(blob_file(&blob.digest).exists());
    }

    // The last name gone: manifest, config and layer are collected, records and files.
    d.ctr("default", &["images", "rm", "--sync", IMAGE]);
    for blob in image.blobs() {
        assert!(
            content_entry(&d, "default", &blob.digest).is_none(),
            "{} not collected",
            blob.digest
        );
        assert!(
            !blob_file(&blob.digest).exists(),
            "{} still on disk",
            blob.digest
        );
    }
    assert!(
        content_entry(&d, "default", &kept_digest).is_some(),
        "gc.root blob collected"
    );
    assert!(blob_file(&kept_digest).exists());
}

/// Each scenario above, once per ctr.
macro_rules! with_each_ctr {
    ($($name:ident),* $(,)?) => {
        mod ctr_1_6 {
            $(#[test]
            fn $name() {
                super::$name(crate::harness::Ctr::V1_6)
            })*
        }
        mod ctr_2 {
            $(#[test]
            fn $name() {
                super::$name(crate::harness::Ctr::V2)
            })*
        }
    };
}

with_each_ctr!(
    version_shows_the_server_and_a_uuid_stable_across_restarts,
    plugins_ls_lists_the_grpc_services,
    namespaces_create_label_ls_rm,
    namespace_create_of_an_existing_one_fails,
    namespace_rm_refuses_a_namespace_holding_content_or_images,
    namespaces_isolate_content_images_and_leases,
    containers_ls_on_an_empty_namespace,
    content_ingest_ls_get_label_rm,
    content_active_shows_an_ingest_in_progress,
    images_import_ls_tag_label_rm,
    images_reimport_of_the_same_archive_succeeds,
    leases_create_ls_rm,
    expired_leases_are_removed_by_the_daemon,
    events_sees_the_events_of_parallel_commands,
    acknowledged_writes_survive_kill9,
    socket_root_lock_and_clean_shutdown,
    images_rm_of_the_last_image_frees_its_content,
);
