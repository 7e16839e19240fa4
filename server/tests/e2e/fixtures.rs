//! Test inputs built here rather than downloaded: an OCI image archive of Debian's busybox-static,
//! byte-for-byte reproducible so its digests are stable across runs.

use flate2::{Compression, GzBuilder};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Every entry of the layer and of the archive carries this mtime (2020-01-01T00:00:00Z).
const MTIME: u64 = 1_577_836_800;

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A blob of the archive: `sha256:<hex>` and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

impl Blob {
    fn of(bytes: &[u8]) -> Blob {
        Blob {
            digest: sha256(bytes),
            size: bytes.len() as u64,
        }
    }
}

/// The archive and what is in it.
#[derive(Debug, Clone)]
pub struct OciArchive {
    pub path: PathBuf,
    /// The image name, as in the `io.containerd.image.name` annotation.
    pub name: String,
    /// The archive's index.json, which `ctr images import` stores as a blob too.
    pub index: Blob,
    pub manifest: Blob,
    pub config: Blob,
    /// The gzip layer.
    pub layer: Blob,
    /// sha256 of the uncompressed layer tar, as listed in the config's rootfs.diff_ids.
    pub diff_id: String,
}

impl OciArchive {
    /// The blobs the imported image references, which garbage collection keeps: manifest, config
    /// and layer. (`ctr images import` also stores the archive's index.json, which nothing
    /// references once the import's lease ends, so the collector removes it, as containerd's does.)
    pub fn blobs(&self) -> [&Blob; 3] {
        [&self.manifest, &self.config, &self.layer]
    }

    /// manifest + config + layer: what `ctr images ls` reports as the image's size.
    pub fn image_size(&self) -> u64 {
        self.manifest.size + self.config.size + self.layer.size
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The architecture in OCI's vocabulary (GOARCH).
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Build `<dir>/busybox.oci.tar`: an OCI image layout (oci-layout, index.json, blobs/sha256/…)
/// whose single manifest points at a config and one gzip layer holding /bin/busybox, a few applet
/// symlinks and a root-only /etc/passwd and /etc/group.
pub fn busybox_oci_archive(dir: &Path, name: &str) -> OciArchive {
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|e| {
        panic!("/bin/busybox is not readable ({e}): install busybox-static (apt-get install busybox-static)")
    });

    let layer_tar = layer_tar(&busybox);
    let diff_id = sha256(&layer_tar);
    let layer = gzip(&layer_tar);

    let config = json_bytes(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": "2020-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": "2020-01-01T00:00:00Z",
            "created_by": "berth e2e fixture: busybox-static",
        }],
    }));
    let config_blob = Blob::of(&config);
    let layer_blob = Blob::of(&layer);

    let manifest = json_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_blob.digest,
            "size": config_blob.size,
        },
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer_blob.digest,
            "size": layer_blob.size,
        }],
    }));
    let manifest_blob = Blob::of(&manifest);

    let ref_name = match name.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => tag,
        _ => "latest",
    };
    let index = json_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest_blob.digest,
            "size": manifest_blob.size,
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": ref_name,
            },
        }],
    }));
    let oci_layout = json_bytes(&json!({ "imageLayoutVersion": "1.0.0" }));

    let mut archive = tar::Builder::new(Vec::new());
    append_dir(&mut archive, "blobs/");
    append_dir(&mut archive, "blobs/sha256/");
    for (blob, bytes) in [
        (&config_blob, &config),
        (&layer_blob, &layer),
        (&manifest_blob, &manifest),
    ] {
        let hex = blob.digest.trim_start_matches("sha256:");
        append_file(&mut archive, &format!("blobs/sha256/{hex}"), 0o644, bytes);
    }
    append_file(&mut archive, "oci-layout", 0o644, &oci_layout);
    append_file(&mut archive, "index.json", 0o644, &index);
    let archive = archive.into_inner().expect("finish archive tar");

    let path = dir.join("busybox.oci.tar");
    std::fs::write(&path, archive).expect("write OCI archive");
    OciArchive {
        path,
        name: name.to_string(),
        index: Blob::of(&index),
        manifest: manifest_blob,
        config: config_blob,
        layer: layer_blob,
        diff_id,
    }
}

fn layer_tar(busybox: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    append_dir(&mut tar, "bin/");
    append_file(&mut tar, "bin/busybox", 0o755, busybox);
    for applet in ["sh", "echo", "true", "cat", "sleep"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("append symlink");
    }
    append_dir(&mut tar, "etc/");
    append_file(
        &mut tar,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
    );
    append_file(&mut tar, "etc/group", 0o644, b"root:x:0:\n");
    append_dir(&mut tar, "root/");
    append_dir(&mut tar, "tmp/");
    tar.into_inner().expect("finish layer tar")
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str) {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, path, std::io::empty())
        .expect("append dir");
}

fn append_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, bytes: &[u8]) {
    let mut h = header(tar::EntryType::Regular, mode, bytes.len() as u64);
    tar.append_data(&mut h, path, bytes).expect("append file");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    // No name and mtime 0 in the gzip header: the output depends on the input only.
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    gz.write_all(bytes).expect("gzip layer");
    gz.finish().expect("finish gzip")
}

fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("encode JSON")
}

#[test]
fn busybox_archive_is_reproducible_and_consistent() {
    let a = tempfile::tempdir().expect("temp dir");
    let b = tempfile::tempdir().expect("temp dir");
    let x = busybox_oci_archive(a.path(), "docker.io/berth/busybox:e2e");
    let y = busybox_oci_archive(b.path(), "docker.io/berth/busybox:e2e");
    assert_eq!(
        std::fs::read(&x.path).unwrap(),
        std::fs::read(&y.path).unwrap(),
        "the archive must be byte-for-byte reproducible"
    );

    // Every blob in blobs/sha256 hashes to its name, and the descriptors agree with the bytes.
    let mut archive = tar::Archive::new(std::fs::File::open(&x.path).unwrap());
    let mut blobs = std::collections::BTreeMap::new();
    let mut index = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            assert_eq!(sha256(&bytes), format!("sha256:{hex}"), "{path}");
            blobs.insert(format!("sha256:{hex}"), bytes);
        } else if path == "index.json" {
            index = Some(bytes);
        }
    }
    let index: serde_json::Value = serde_json::from_slice(&index.expect("index.json")).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], x.manifest.digest.as_str());
    assert_eq!(
        m["annotations"]["io.containerd.image.name"],
        "docker.io/berth/busybox:e2e"
    );
    assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "e2e");
    for blob in &x.blobs()[1..] {
        assert_eq!(blobs[&blob.digest].len() as u64, blob.size);
    }
    let config: serde_json::Value = serde_json::from_slice(&blobs[&x.config.digest]).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], x.diff_id.as_str());

    // The layer holds busybox itself and the applets as symlinks to it.
    let layer = flate2::read::GzDecoder::new(&blobs[&x.layer.digest][..]);
    let mut entries = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(layer).entries().unwrap() {
        let entry = entry.unwrap();
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        entries.insert(entry.path().unwrap().to_string_lossy().into_owned(), link);
    }
    assert_eq!(entries["bin/busybox"], None);
    for applet in ["sh", "echo", "true", "cat", "sleep"] {
        assert_eq!(
            entries[&format!("bin/{applet}")].as_deref(),
            Some("busybox")
        );
    }
    assert!(entries.contains_key("etc/passwd") && entries.contains_key("etc/group"));
}
