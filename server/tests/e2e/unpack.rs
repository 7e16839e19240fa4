//! The parallel unpack of a pull (each layer applied into a snapshot of its own with no parent,
//! then committed onto the layer below) against the sequential one (`[transfer]
//! parallel_unpack = false`: each layer applied onto its committed parent), on an image made
//! to catch what a layer applied without its lowers cannot see: its upper layers write into
//! directories of unusual mode, owner and xattrs that only the bottom layer lists, white files
//! out, and make a directory opaque. Both daemons pull it with ctr 2 through the Transfer
//! service; every layer directory must come out the same, byte for byte (modes, owners, xattrs,
//! devices, contents), directory times aside.

use crate::harness::{Ctr, Daemon};
use crate::registry::{skopeo, Registry};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One tar entry of a test layer.
enum Entry<'a> {
    Dir(&'a str, u32, (u64, u64), &'a [(&'a str, &'a [u8])]),
    File(&'a str, &'a [u8], u32),
}

fn layer_tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        match e {
            Entry::Dir(name, mode, (uid, gid), xattrs) => {
                if !xattrs.is_empty() {
                    let pax: Vec<(String, &[u8])> = xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                        .collect();
                    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
                        .unwrap();
                }
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(0);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
            Entry::File(name, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Write an OCI layout at `dir` (tag v1) with these layers gzipped; returns the chain IDs.
fn oci_layout(dir: &Path, layers: &[Vec<u8>]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for tar in layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        let (digest, size) = put(&gz.finish().unwrap());
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
    }
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": descs,
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut chains: Vec<String> = Vec::new();
    for d in &diff_ids {
        let next = match chains.last() {
            None => d.clone(),
            Some(p) => format!("sha256:{}", sha256_hex(format!("{p} {d}").as_bytes())),
        };
        chains.push(next);
    }
    chains
}

/// What a layer directory holds, per path: (mode, uid, gid, rdev, content hash or link, xattrs).
type Tree = BTreeMap<PathBuf, (u32, u32, u32, u64, String, BTreeMap<String, Vec<u8>>)>;

fn tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for ent in std::fs::read_dir(&dir).unwrap() {
            let path = ent.unwrap().path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let body = if md.is_dir() {
                stack.push(path.clone());
                String::new()
            } else if md.file_type().is_symlink() {
                std::fs::read_link(&path).unwrap().display().to_string()
            } else if md.is_file() {
                sha256_hex(&std::fs::read(&path).unwrap())
            } else {
                String::new()
            };
            let mut xattrs = BTreeMap::new();
            for name in xattr_names(&path) {
                let mut v = vec![0u8; 4096];
                if let Ok(n) = rustix::fs::lgetxattr(&path, name.as_str(), &mut v) {
                    v.truncate(n);
                    xattrs.insert(name, v);
                }
            }
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            out.insert(
                rel,
                (md.mode(), md.uid(), md.gid(), md.rdev(), body, xattrs),
            );
        }
    }
    out
}

fn xattr_names(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 8192];
    let n = rustix::fs::llistxattr(path, &mut buf).unwrap_or(0);
    buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty() && !s.starts_with(b"security.selinux"))
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The layer directories of `chain` (topmost first), from the mounts of a snapshot on top of it.
fn layer_dirs(d: &Daemon, chain: &str) -> Vec<PathBuf> {
    let mounts = d.ctr(
        "default",
        &[
            "snapshots",
            "prepare",
            "--target",
            "/mnt/x",
            "check-layers",
            chain,
        ],
    );
    let options = mounts.split(" -o ").nth(1).expect("mount options").trim();
    let lower = options
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("no lowerdir: {mounts}"));
    lower.split(':').map(PathBuf::from).collect()
}

#[test]
fn parallel_unpack_matches_a_sequential_one_byte_for_byte() {
    let bottom = layer_tar(&[
        Entry::Dir("srv/", 0o750, (0, 50), &[]),
        Entry::Dir(
            "srv/data/",
            0o2770,
            (1234, 5678),
            &[("user.origin", b"bottom")],
        ),
        Entry::Dir("tmp/", 0o1777, (0, 0), &[]),
        Entry::File("gone", b"deleted above", 0o644),
        Entry::Dir("opq/", 0o711, (7, 8), &[]),
        Entry::File("opq/hidden", b"hidden above", 0o644),
    ]);
    // Writes into the bottom's directories without listing them; whiteout; opaque directory.
    let middle = layer_tar(&[
        Entry::File("srv/data/new", b"new", 0o640),
        Entry::File("srv/data/deeper/f", b"f", 0o600),
        Entry::File("tmp/x", b"x", 0o644),
        Entry::File(".wh.gone", b"", 0o644),
        Entry::File("opq/.wh..wh..opq", b"", 0o644),
        Entry::File("opq/kept", b"kept", 0o644),
    ]);
    // Two layers up: srv/data is implied again, and must still be the bottom's.
    let top = layer_tar(&[
        Entry::File("srv/data/third", b"3", 0o644),
        Entry::File("fresh/dir/f", b"", 0o644),
    ]);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    let chains = oci_layout(&layout, &[bottom, middle, top]);
    let registry = Registry::start();
    let reference = format!("{}/test/implied:v1", registry.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{reference}"),
    ]);

    let parallel = Daemon::start().using(Ctr::V2);
    let sequential =
        Daemon::start_with_config("[transfer]\nparallel_unpack = false\n").using(Ctr::V2);
    for d in [&parallel, &sequential] {
        let out = d.ctr("default", &["images", "pull", "--plain-http", &reference]);
        assert!(out.contains("saved"), "{out}");
    }
    let top_chain = chains.last().unwrap();
    let (par_dirs, seq_dirs) = (
        layer_dirs(&parallel, top_chain),
        layer_dirs(&sequential, top_chain),
    );
    assert_eq!(par_dirs.len(), 3, "{par_dirs:?}");
    assert_eq!(seq_dirs.len(), 3, "{seq_dirs:?}");
    for (i, (p, s)) in par_dirs.iter().zip(&seq_dirs).enumerate() {
        let (p, s) = (tree(p), tree(s));
        assert_eq!(
            p.keys().collect::<Vec<_>>(),
            s.keys().collect::<Vec<_>>(),
            "layer {i} from the top: different paths"
        );
        for (path, want) in &s {
            assert_eq!(
                Some(want),
                p.get(path),
                "layer {i} from the top: {} differs",
                path.display()
            );
        }
    }
    // And what both hold is the bottom layer's directory, not a default one.
    for dir in [&par_dirs[0], &par_dirs[1]] {
        let md = std::fs::metadata(dir.join("srv/data")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o2770, 1234, 5678),
            "{}",
            dir.display()
        );
        let mut v = vec![0u8; 64];
        let n = rustix::fs::lgetxattr(dir.join("srv/data"), "user.origin", &mut v)
            .expect("user.origin copied from the bottom layer");
        assert_eq!(&v[..n], b"bottom");
    }
    let md = std::fs::metadata(par_dirs[1].join("tmp")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o1777);
    // The whiteout and the opaque marker are the overlay's own.
    let gone = std::fs::symlink_metadata(par_dirs[1].join("gone")).unwrap();
    assert_eq!(gone.rdev(), 0);
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &gone.file_type()
    ));
    let mut v = vec![0u8; 8];
    let n = rustix::fs::lgetxattr(par_dirs[1].join("opq"), "trusted.overlay.opaque", &mut v)
        .expect("opaque marker");
    assert_eq!(&v[..n], b"y");
    // The parallel daemon did take the parallel path.
    assert!(
        parallel.log().contains("layer committed onto its parent"),
        "no parallel unpack in the log"
    );
    assert!(!sequential.log().contains("layer committed onto its parent"));
    for d in [&parallel, &sequential] {
        d.ctr("default", &["snapshots", "rm", "check-layers"]);
    }
}
