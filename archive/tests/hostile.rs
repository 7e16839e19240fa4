//! Hostile archives (hostile-inputs.md B1, B14–B16 for archives): each is refused with an
//! InvalidArgument-class error, leaves no ingest behind and stores no blob that does not
//! match its name.

mod common;

use berth_archive::json;
use berth_archive::{ImportOptions, Limits};
use berth_errdefs::Kind;
use berth_oci::Digest;
use common::*;
use serde_json::json;

const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A valid single-image OCI layout, and its parts to break.
struct Parts {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    index: Vec<u8>,
}

fn parts() -> Parts {
    let layer = layer("f", b"data");
    let config = config("amd64", &[b"x"]);
    let manifest = oci_manifest(&config, &[&layer]);
    let index = to_json(&json!({
        "schemaVersion": 2,
        "manifests": [desc(json::OCI_MANIFEST, &manifest)],
    }));
    Parts {
        layer,
        config,
        manifest,
        index,
    }
}

fn valid(p: &Parts) -> TarBuilder {
    TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .blob(&p.layer)
        .blob(&p.config)
        .blob(&p.manifest)
        .file("index.json", &p.index)
}

async fn refused(case: &str, tar: Vec<u8>, limits: Limits, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let opts = ImportOptions {
        limits,
        ..ImportOptions::default()
    };
    match import_bytes(&store, tar, opts).await {
        Ok(i) => panic!("{case}: imported {:?}", i.index),
        Err(e) => {
            assert_eq!(e.kind(), Kind::InvalidArgument, "{case}: {e}");
            let text = format!("{e} {:?}", e.io_kind());
            assert!(text.contains(needle), "{case}: {text:?} lacks {needle:?}");
        }
    }
    assert_eq!(ingests_left(&store), 0, "{case}: ingest left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_valid_archive_imports() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let p = parts();
    import_bytes(&store, valid(&p).finish(), ImportOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn entry_names_that_leave_the_archive() {
    let p = parts();
    for (case, name) in [
        ("dotdot", "../../../../etc/passwd"),
        ("absolute", "/etc/shadow"),
        ("dot-dotdot", "./../x"),
        ("inner dotdot", "blobs/../../x"),
    ] {
        refused(
            case,
            valid(&p).file(name, b"x").finish(),
            Limits::default(),
            "archive",
        )
        .await;
    }
    let tar = valid(&p).symlink("evil", "/etc/passwd").finish();
    refused("absolute symlink", tar, Limits::default(), "points outside").await;
    let tar = valid(&p).symlink("a/evil", "../../etc").finish();
    refused("escaping symlink", tar, Limits::default(), "points outside").await;
    let tar = valid(&p)
        .symlink("blobs2", "blobs")
        .file("blobs2/sha256/x", b"x")
        .finish();
    refused(
        "entry under a symlink",
        tar,
        Limits::default(),
        "under the symlink",
    )
    .await;
    let tar = valid(&p).file("index.json", &p.index).finish();
    refused("duplicate entry", tar, Limits::default(), "appears twice").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_whose_bytes_do_not_match_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let p = parts();
    let wrong = b"not the layer".to_vec();
    let name = format!("blobs/sha256/{}", Digest::of_bytes(&p.layer).hex());
    let tar = TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .file(&name, &wrong)
        .finish();
    let err = import_bytes(&store, tar, ImportOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::InvalidArgument, "{err}");
    assert!(
        err.to_string().contains("not the one its name says"),
        "{err}"
    );
    assert_eq!(ingests_left(&store), 0);
    assert_eq!(store.blob_size(&Digest::of_bytes(&wrong)).unwrap(), None);
    assert_eq!(store.blob_size(&Digest::of_bytes(&p.layer)).unwrap(), None);

    // The same lie about a blob the store already has is refused the same way.
    let tar = valid(&p).finish();
    import_bytes(&store, tar, ImportOptions::default())
        .await
        .unwrap();
    let tar = TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .file(&name, &vec![0u8; p.layer.len()])
        .finish();
    let err = import_bytes(&store, tar, ImportOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::InvalidArgument, "{err}");

    let tar = valid(&p).file("blobs/sha512/abcd", b"x").finish();
    refused(
        "other algorithm",
        tar,
        Limits::default(),
        "unsupported digest algorithm",
    )
    .await;
    let tar = valid(&p).file("blobs/sha256/XYZ", b"x").finish();
    refused("bad hex", tar, Limits::default(), "blob entry").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sizes_and_counts_over_their_bounds() {
    let p = parts();
    // index.json over the JSON bound (containerd: 20 MiB), by default and with a small one.
    let mut big = p.index.clone();
    big.truncate(big.len() - 1);
    big.extend(std::iter::repeat_n(b' ', (20 << 20) + 1));
    big.push(b'}');
    let tar = TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .file("index.json", &big)
        .finish();
    refused("20 MiB index.json", tar, Limits::default(), "more than the").await;
    let small = Limits {
        max_json_bytes: 64,
        ..Limits::default()
    };
    let tar = TarBuilder::new()
        .file("manifest.json", &[b' '; 65])
        .finish();
    refused("manifest.json", tar, small, "more than the").await;
    let between = Limits {
        max_json_bytes: p.index.len() as u64,
        ..Limits::default()
    };
    assert!(p.manifest.len() > p.index.len());
    let needle = format!("outside 0..={}", p.index.len());
    refused("manifest blob", valid(&p).finish(), between, &needle).await;

    let few = Limits {
        max_entries: 4,
        ..Limits::default()
    };
    refused(
        "entry count",
        valid(&p).dir("x/").finish(),
        few,
        "more than 4 entries",
    )
    .await;

    let narrow = Limits {
        max_children: 1,
        ..Limits::default()
    };
    refused(
        "layers",
        valid(&p).finish(),
        narrow,
        "children, more than 1",
    )
    .await;

    // A descriptor whose size disagrees with its blob.
    let mut d = desc(json::OCI_MANIFEST, &p.manifest);
    d.size += 1;
    let index = to_json(&json!({"schemaVersion": 2, "manifests": [d]}));
    let tar = TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .blob(&p.layer)
        .blob(&p.config)
        .blob(&p.manifest)
        .file("index.json", &index)
        .finish();
    refused("wrong size", tar, Limits::default(), "its descriptor says").await;
    let index = to_json(&json!({"schemaVersion": 2, "manifests": [{
        "mediaType": json::OCI_MANIFEST, "digest": d.digest.as_str(), "size": -1}]}));
    let tar = TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .blob(&p.manifest)
        .file("index.json", &index)
        .finish();
    refused("negative size", tar, Limits::default(), "negative size").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_and_incomplete_archives() {
    let p = parts();
    let whole = valid(&p).finish();
    // Cut inside the layer's data: the stream ends mid-entry.
    let cut = whole[..512 * 3 + 100].to_vec();
    refused("truncated tar", cut, Limits::default(), "archive").await;
    // A gzip stream cut short.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &whole).unwrap();
    let gz = gz.finish().unwrap();
    refused(
        "truncated gzip",
        gz[..gz.len() / 2].to_vec(),
        Limits::default(),
        "archive",
    )
    .await;

    let no_layer = TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .blob(&p.config)
        .blob(&p.manifest)
        .file("index.json", &p.index)
        .finish();
    refused("missing layer", no_layer, Limits::default(), "is missing").await;
    let no_manifest = TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .file("index.json", &p.index)
        .finish();
    refused(
        "missing manifest",
        no_manifest,
        Limits::default(),
        "is missing",
    )
    .await;
    let no_index = TarBuilder::new().file("oci-layout", LAYOUT).finish();
    refused(
        "missing index.json",
        no_index,
        Limits::default(),
        "missing index.json",
    )
    .await;
    let v2 = TarBuilder::new()
        .file("oci-layout", br#"{"imageLayoutVersion":"2.0.0"}"#)
        .finish();
    refused(
        "layout version",
        v2,
        Limits::default(),
        "unsupported OCI version",
    )
    .await;
    let nothing = TarBuilder::new().file("hello", b"x").finish();
    refused(
        "unrecognized",
        nothing,
        Limits::default(),
        "unrecognized image format",
    )
    .await;
    refused(
        "not a tar",
        b"garbage".repeat(200),
        Limits::default(),
        "archive",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_that_lie_about_what_they_are() {
    let p = parts();
    // CVE-2021-41190: an "index" that also has layers.
    let confused = to_json(&json!({
        "schemaVersion": 2,
        "manifests": [desc(json::OCI_MANIFEST, &p.manifest)],
        "layers": [],
    }));
    let tar = TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .blob(&p.layer)
        .blob(&p.config)
        .blob(&p.manifest)
        .file("index.json", &confused)
        .finish();
    refused(
        "index with layers",
        tar,
        Limits::default(),
        "expected index",
    )
    .await;

    let schema1 = to_json(&json!({"schemaVersion": 1, "fsLayers": [{"blobSum": "x"}]}));
    let index = to_json(&json!({"schemaVersion": 2, "manifests": [
        desc("application/vnd.docker.distribution.manifest.v2+json", &schema1)]}));
    let tar = TarBuilder::new()
        .file("oci-layout", LAYOUT)
        .blob(&schema1)
        .file("index.json", &index)
        .finish();
    refused("schema 1", tar, Limits::default(), "schema 1").await;

    // Docker archives: a layer or config manifest.json names but the tar lacks, a bad tag, a
    // symlink with no target.
    let cfg = config("amd64", &[]);
    let docker = |layers: serde_json::Value, tags: serde_json::Value| {
        to_json(&json!([{"Config": "c.json", "RepoTags": tags, "Layers": layers}]))
    };
    let tar = TarBuilder::new()
        .file("c.json", &cfg)
        .file(
            "manifest.json",
            &docker(json!(["nope/layer.tar"]), json!([])),
        )
        .finish();
    refused("docker missing layer", tar, Limits::default(), "not found").await;
    let tar = TarBuilder::new()
        .file("manifest.json", &docker(json!([]), json!([])))
        .finish();
    refused("docker missing config", tar, Limits::default(), "not found").await;
    let tar = TarBuilder::new()
        .file("c.json", &cfg)
        .file("manifest.json", &docker(json!([]), json!(["Bad/Name"])))
        .finish();
    refused(
        "docker bad tag",
        tar,
        Limits::default(),
        "invalid reference",
    )
    .await;
    let tar = TarBuilder::new()
        .file("c.json", &cfg)
        .symlink("x/layer.tar", "../y/layer.tar")
        .file("manifest.json", &docker(json!([]), json!([])))
        .finish();
    refused("dangling symlink", tar, Limits::default(), "no target").await;
    let tar = TarBuilder::new()
        .file("c.json", b"[1,2]")
        .file("manifest.json", &docker(json!([]), json!([])))
        .finish();
    refused("config not an object", tar, Limits::default(), "platform").await;
}

/// Corrupt bytes anywhere in an archive (headers, JSON, gzip): an error or an import, never a
/// panic or a hang, and never an ingest left behind. A fixed-seed generator keeps failures
/// reproducible.
#[tokio::test(flavor = "multi_thread")]
async fn corrupted_archives_never_panic() {
    let p = parts();
    let plain = valid(&p).finish();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut refused = 0;
    for round in 0..300 {
        let mut bytes = plain.clone();
        for _ in 0..(1 + next() % 4) {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if round % 3 == 0 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        }
        match import_bytes(&store, bytes, ImportOptions::default()).await {
            Ok(_) => {}
            Err(e) => {
                refused += 1;
                assert!(e.kind() == Kind::InvalidArgument, "round {round}: {e}");
            }
        }
        assert_eq!(ingests_left(&store), 0, "round {round}");
    }
    assert!(
        refused > 100,
        "only {refused} of 300 corrupted archives were refused"
    );
}
