//! Import and export of real archives: the busybox OCI image of berth-testkit, docker
//! archives written by skopeo and by hand (old layout with symlinked layers), compressed
//! streams, multi-platform indexes, and the round trip import → export → import.

mod common;

use berth_archive::json::{self, Descriptor, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};
use berth_archive::{ExportOptions, ImportOptions, Platform, PlatformMatcher};
use berth_oci::Digest;
use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn oci_archive_imports_with_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let archive =
        berth_testkit::image::busybox_oci_archive(dir.path(), "docker.io/library/busybox:e2e")
            .unwrap();
    let store = store(dir.path());
    let imported = import_file(&store, &archive.path).await.unwrap();

    assert_eq!(imported.index.digest.as_str(), archive.index.digest);
    assert_eq!(imported.index.media_type, json::OCI_INDEX);
    let images = named(&imported);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].0, "docker.io/library/busybox:e2e");
    assert_eq!(images[0].1.digest.as_str(), archive.manifest.digest);
    assert_eq!(images[0].1.media_type, json::OCI_MANIFEST);
    for b in archive.blobs() {
        let d = Digest::parse(&b.digest).unwrap();
        assert_eq!(store.blob_size(&d).unwrap(), Some(b.size), "{}", b.digest);
    }
    // The walk saw the index and the manifest, with the manifest's config and layer.
    assert_eq!(imported.walked.len(), 2);
    assert_eq!(imported.walked[1].1.len(), 2);
    assert_eq!(ingests_left(&store), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn export_round_trip_keeps_digests_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let archive =
        berth_testkit::image::busybox_oci_archive(dir.path(), "docker.io/library/busybox:e2e")
            .unwrap();
    let first = store(&dir.path().join("a"));
    let imported = import_file(&first, &archive.path).await.unwrap();
    let images = named(&imported);
    let tar = export_bytes(&first, images.clone(), ExportOptions::default())
        .await
        .unwrap();

    let files = entries(&tar);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    let mut want = vec![
        "blobs/".to_owned(),
        "blobs/sha256/".to_owned(),
        "index.json".to_owned(),
        "manifest.json".to_owned(),
        "oci-layout".to_owned(),
    ];
    for b in archive.blobs() {
        want.push(format!("blobs/sha256/{}", &b.digest[7..]));
    }
    want.sort();
    assert_eq!(names, want);
    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    assert_eq!(index["mediaType"], json::OCI_INDEX);
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], archive.manifest.digest);
    assert_eq!(
        m["annotations"][ANNOTATION_IMAGE_NAME],
        "docker.io/library/busybox:e2e"
    );
    assert_eq!(m["annotations"][ANNOTATION_REF_NAME], "e2e");
    let docker: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(
        docker,
        json!([{
            "Config": format!("blobs/sha256/{}", &archive.config.digest[7..]),
            "RepoTags": ["busybox:e2e"],
            "Layers": [format!("blobs/sha256/{}", &archive.layer.digest[7..])],
        }])
    );

    // Into a fresh store: the same image, and exported again, the same bytes.
    let second = store(&dir.path().join("b"));
    let again = import_bytes(&second, tar.clone(), ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(named(&again), images);
    let tar2 = export_bytes(&second, named(&again), ExportOptions::default())
        .await
        .unwrap();
    assert_eq!(tar, tar2);
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_streams_import() {
    let dir = tempfile::tempdir().unwrap();
    let archive =
        berth_testkit::image::busybox_oci_archive(dir.path(), "docker.io/library/busybox:z")
            .unwrap();
    let plain = std::fs::read(&archive.path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(plain.as_slice(), 3).unwrap();
    for (what, bytes) in [("gzip", gz), ("zstd", zst)] {
        let store = store(&dir.path().join(what));
        let imported = import_bytes(&store, bytes, ImportOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            imported.index.digest.as_str(),
            archive.index.digest,
            "{what}"
        );
        assert_eq!(
            named(&imported)[0].1.digest.as_str(),
            archive.manifest.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_archive_gets_containerds_manifest_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (tar, layer1, layer2) = old_docker_archive();
    let imported = import_bytes(&store, tar, ImportOptions::default())
        .await
        .unwrap();
    let images = named(&imported);
    let names: Vec<&str> = images.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io/library/busybox:old",
            "localhost:5000/team/app:v1"
        ]
    );
    let target = &images[0].1;
    assert_eq!(target.media_type, json::DOCKER_MANIFEST);
    assert_eq!(
        target.platform,
        Some(Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Platform::default()
        })
    );
    assert_eq!(images[1].1.digest, target.digest);
    assert_eq!(target.annotations[ANNOTATION_REF_NAME], "old");
    assert_eq!(images[1].1.annotations[ANNOTATION_REF_NAME], "v1");

    // The manifest, byte for byte as containerd's importer marshals it.
    let mut f = store.open_blob(&target.digest).unwrap();
    let mut manifest = String::new();
    std::io::Read::read_to_string(&mut f, &mut manifest).unwrap();
    let l1 = Digest::of_bytes(&layer1);
    let l2 = Digest::of_bytes(&layer2);
    let cfg = &imported.walked[1].1[0];
    assert_eq!(
        manifest,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{}","digest":"{l1}","size":{}}},{{"mediaType":"{}","digest":"{l2}","size":{}}},{{"mediaType":"{}","digest":"{l1}","size":{}}}]}}"#,
            json::DOCKER_MANIFEST,
            json::DOCKER_CONFIG,
            cfg.digest,
            cfg.size,
            berth_oci::media_types::DOCKER_LAYER,
            layer1.len(),
            berth_oci::media_types::DOCKER_LAYER_GZIP,
            layer2.len(),
            berth_oci::media_types::DOCKER_LAYER,
            layer1.len(),
        )
    );
    assert_eq!(ingests_left(&store), 0);
}

/// Two platforms in one index; the arm64 one exists only as far as its manifest says.
fn multi_platform() -> (Vec<u8>, Descriptor, Descriptor) {
    let host = Platform::host();
    let other = if host.architecture == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let l_host = layer("h", b"host");
    let l_other = layer("o", b"other");
    let c_host = config(&host.architecture, &[b"h"]);
    let c_other = config(other, &[b"o"]);
    let m_host = oci_manifest(&c_host, &[&l_host]);
    let m_other = oci_manifest(&c_other, &[&l_other]);
    let mut d_host = desc(json::OCI_MANIFEST, &m_host);
    d_host.platform = Some(host.clone());
    let mut d_other = desc(json::OCI_MANIFEST, &m_other);
    d_other.platform = Some(Platform {
        architecture: other.into(),
        os: "linux".into(),
        ..Platform::default()
    });
    let inner = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": json::OCI_INDEX,
        "manifests": [d_other, d_host],
    }));
    let mut target = desc(json::OCI_INDEX, &inner);
    target
        .annotations
        .insert(ANNOTATION_IMAGE_NAME.into(), "example.com/multi:1".into());
    let index = to_json(&json!({"schemaVersion": 2, "manifests": [target]}));
    let tar = TarBuilder::new()
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("index.json", &index)
        .blob(&inner)
        .blob(&m_host)
        .blob(&m_other)
        .blob(&c_host)
        .blob(&c_other)
        .blob(&l_host)
        .blob(&l_other)
        .finish();
    (tar, d_host, d_other)
}

#[tokio::test(flavor = "multi_thread")]
async fn export_takes_the_platforms_containerd_takes() {
    let dir = tempfile::tempdir().unwrap();
    let full = store(&dir.path().join("full"));
    let (tar, d_host, d_other) = multi_platform();
    let imported = import_bytes(&full, tar, ImportOptions::default())
        .await
        .unwrap();
    let images = named(&imported);
    assert_eq!(images.len(), 1);
    assert_eq!(
        imported.walked.len(),
        4,
        "index, inner index, two manifests"
    );

    // Default: this host's platform only; the other manifest's blobs stay out.
    let one = export_bytes(&full, images.clone(), ExportOptions::default())
        .await
        .unwrap();
    let files = entries(&one);
    let has = |d: &Descriptor| files.contains_key(&format!("blobs/sha256/{}", d.digest.hex()));
    assert!(has(&d_host) && !has(&d_other));
    let docker: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(docker[0]["RepoTags"], json!(["example.com/multi:1"]));

    // Importing it for this host works; for every platform, the other manifest is missing.
    let partial = store(&dir.path().join("partial"));
    let host_only = ImportOptions {
        platforms: Some(PlatformMatcher::default_strict()),
        ..ImportOptions::default()
    };
    let again = import_bytes(&partial, one.clone(), host_only)
        .await
        .unwrap();
    let again = named(&again);
    assert_eq!(again.len(), 1);
    assert_eq!(
        (&again[0].0, &again[0].1.digest),
        (&images[0].0, &images[0].1.digest)
    );
    assert_eq!(again[0].1.annotations[ANNOTATION_REF_NAME], "1");
    let err = import_bytes(
        &store(&dir.path().join("all")),
        one.clone(),
        ImportOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), berth_errdefs::Kind::InvalidArgument, "{err}");
    assert!(err.to_string().contains(d_other.digest.as_str()), "{err}");

    // All platforms from the partial store: the missing manifest fails the export, and no
    // byte was written.
    let all = ExportOptions {
        all_platforms: true,
        ..ExportOptions::default()
    };
    let err = export_bytes(&partial, images.clone(), all.clone())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // From the full store it has both.
    let both = entries(&export_bytes(&full, images.clone(), all).await.unwrap());
    assert!(both.contains_key(&format!("blobs/sha256/{}", d_other.digest.hex())));

    // A platform the index lacks: NotFound, as containerd.
    let none = ExportOptions {
        platforms: PlatformMatcher::Ordered(vec![Platform::parse("linux/s390x").unwrap()]),
        ..ExportOptions::default()
    };
    let err = export_bytes(&full, images, none).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn export_of_a_missing_blob_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let archive =
        berth_testkit::image::busybox_oci_archive(dir.path(), "docker.io/library/busybox:e2e")
            .unwrap();
    let store = store(dir.path());
    let imported = import_file(&store, &archive.path).await.unwrap();
    store
        .delete_blob(&Digest::parse(&archive.layer.digest).unwrap())
        .unwrap();
    let mut out = Vec::new();
    let err = berth_archive::export_blocking(
        &mut out,
        &store,
        &named(&imported),
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(out.is_empty(), "{} bytes written", out.len());
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_layers_replace_uncompressed_ones_as_in_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let sink = LabelSink::new(&store);
    let (tar, layer1, _) = old_docker_archive();
    let forced = ImportOptions {
        force_compress: true,
        ..ImportOptions::default()
    };
    let first = berth_archive::import(std::io::Cursor::new(tar.clone()), sink.clone(), forced)
        .await
        .unwrap();
    let manifest = &first.walked[1];
    let layers: Vec<&str> = manifest.1[1..]
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    assert_eq!(layers, [berth_oci::media_types::DOCKER_LAYER_GZIP; 3]);
    // The compressed blob holds the archive's layer, and is remembered as its compression.
    let l1 = Digest::of_bytes(&layer1);
    let (gz, _) = sink.uncompressed.lock().unwrap()[&l1].clone();
    assert_eq!(manifest.1[1].digest, gz);
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(store.open_blob(&gz).unwrap()),
        &mut plain,
    )
    .unwrap();
    assert_eq!(plain, layer1);

    // Without compression, a store that has the compressed blob gets the same manifest.
    let second = berth_archive::import(std::io::Cursor::new(tar), sink, ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(second.walked[1].0.digest, manifest.0.digest);
    assert_eq!(ingests_left(&store), 0);
}
