//! What the archive tests share: stores on temp dirs, archives built by hand with the tar
//! crate, and import/export through the async API as the daemon calls it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use berth_archive::json::{self, Descriptor};
use berth_archive::{
    export, import, ExportOptions, ImportOptions, Imported, RefTranslator, StoreSink,
};
use berth_content::ContentStore;
use berth_errdefs::Result;
use berth_oci::Digest;
use serde_json::json;

pub fn store(dir: &Path) -> ContentStore {
    ContentStore::open(&dir.join("content")).unwrap()
}

pub async fn import_bytes(
    store: &ContentStore,
    bytes: Vec<u8>,
    opts: ImportOptions,
) -> Result<Imported> {
    import(
        std::io::Cursor::new(bytes),
        StoreSink {
            store: store.clone(),
        },
        opts,
    )
    .await
}

pub async fn import_file(store: &ContentStore, path: &Path) -> Result<Imported> {
    let f = tokio::fs::File::open(path).await.unwrap();
    import(
        f,
        StoreSink {
            store: store.clone(),
        },
        ImportOptions::default(),
    )
    .await
}

pub async fn export_bytes(
    store: &ContentStore,
    images: Vec<(String, Descriptor)>,
    opts: ExportOptions,
) -> Result<Vec<u8>> {
    export(Vec::new(), store.clone(), images, opts).await
}

/// Image names and targets as `ctr images import` names them by default.
pub fn named(imported: &Imported) -> Vec<(String, Descriptor)> {
    imported.images(&RefTranslator::AddPrefix("import-test".into()))
}

/// The entries of a tar: name → bytes (directories map to nothing).
pub fn entries(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        out.insert(name, buf);
    }
    out
}

/// A tar built entry by entry, including entries a well-behaved tool would never write.
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h
    }

    /// A regular file; the name is written raw, so `..` and `/x` go through.
    pub fn file(mut self, name: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, data.len() as u64);
        set_raw_name(&mut h, name);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0);
        set_raw_name(&mut h, name);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn dir(mut self, name: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0);
        set_raw_name(&mut h, name);
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    /// A blob under its digest's name.
    pub fn blob(self, data: &[u8]) -> Self {
        let d = Digest::of_bytes(data);
        self.file(&format!("blobs/sha256/{}", d.hex()), data)
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// Bypass the tar crate's path checks: hostile names are the point.
fn set_raw_name(h: &mut tar::Header, name: &str) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

pub fn desc(media_type: &str, data: &[u8]) -> Descriptor {
    Descriptor::new(media_type, Digest::of_bytes(data), data.len() as u64)
}

pub fn to_json(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A small gzip layer holding one file.
pub fn layer(file: &str, content: &[u8]) -> Vec<u8> {
    let tar = TarBuilder::new().file(file, content).finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

pub fn config(arch: &str, diff_ids: &[&[u8]]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids
        .iter()
        .map(|l| Digest::of_bytes(l).to_string())
        .collect();
    to_json(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
}

/// An OCI manifest for a config and layers (gzip media type).
pub fn oci_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let ls: Vec<Descriptor> = layers
        .iter()
        .map(|l| desc(berth_oci::media_types::OCI_LAYER_GZIP, l))
        .collect();
    to_json(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": json::OCI_MANIFEST,
        "config": desc(json::OCI_CONFIG, config),
        "layers": ls,
    }))
}

pub fn ingests_left(store: &ContentStore) -> usize {
    store.list_ingests().unwrap().len()
}

/// An old-layout docker archive (`docker save` before 25): `<id>/layer.tar`, one layer
/// symlinked to another's, an uncompressed layer, `repositories`, two tags.
pub fn old_docker_archive() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let layer1 = TarBuilder::new().file("a.txt", b"first").finish();
    let layer2 = layer("b.txt", b"second");
    let cfg = config("x86_64", &[&layer1, &layer2, &layer1]);
    let cfg_name = format!("{}.json", Digest::of_bytes(&cfg).hex());
    let manifest = to_json(&json!([{
        "Config": cfg_name,
        "RepoTags": ["busybox:old", "localhost:5000/team/app:v1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"],
    }]));
    let tar = TarBuilder::new()
        .dir("aaa/")
        .file("aaa/VERSION", b"1.0")
        .file("aaa/json", b"{}")
        .file("aaa/layer.tar", &layer1)
        .dir("bbb/")
        .file("bbb/layer.tar", &layer2)
        .dir("ccc/")
        .symlink("ccc/layer.tar", "../aaa/layer.tar")
        .file(&cfg_name, &cfg)
        .file("manifest.json", &manifest)
        .file("repositories", br#"{"busybox":{"old":"aaa"}}"#)
        .finish();
    (tar, layer1, layer2)
}

/// A sink that remembers `containerd.io/uncompressed` as berthd's metadata would, and answers
/// `compressed_of` from it.
#[derive(Clone)]
pub struct LabelSink {
    pub inner: StoreSink,
    pub uncompressed: std::sync::Arc<std::sync::Mutex<BTreeMap<Digest, (Digest, u64)>>>,
}

impl LabelSink {
    pub fn new(store: &ContentStore) -> LabelSink {
        LabelSink {
            inner: StoreSink {
                store: store.clone(),
            },
            uncompressed: Default::default(),
        }
    }
}

impl berth_archive::ContentProvider for LabelSink {
    fn open(&self, d: &Digest) -> Result<std::fs::File> {
        self.inner.open(d)
    }
}

impl berth_archive::ContentSink for LabelSink {
    fn writer(
        &self,
        key: &str,
        size: u64,
        expected: Option<Digest>,
    ) -> Result<berth_content::Writer> {
        self.inner.writer(key, size, expected)
    }
    fn abort(&self, key: &str) -> Result<()> {
        self.inner.abort(key)
    }
    fn size(&self, d: &Digest) -> Result<Option<u64>> {
        self.inner.size(d)
    }
    fn committed(
        &self,
        blob: &berth_content::Committed,
        uncompressed: Option<&Digest>,
    ) -> Result<()> {
        if let Some(u) = uncompressed {
            self.uncompressed
                .lock()
                .unwrap()
                .insert(u.clone(), (blob.digest.clone(), blob.size));
        }
        Ok(())
    }
    fn compressed_of(&self, u: &Digest) -> Result<Option<(Digest, u64)>> {
        Ok(self.uncompressed.lock().unwrap().get(u).cloned())
    }
}

/// The layout `docker save` writes since docker 25: an OCI layout (uncompressed layers, an
/// index naming the image) with docker's manifest.json and repositories beside it, and the
/// legacy `<id>/layer.tar` as a symlink into blobs/.
pub fn docker25_archive() -> Vec<u8> {
    let layer = TarBuilder::new().file("etc/hostname", b"docker25").finish();
    let cfg = config("amd64", &[&layer]);
    let manifest = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": json::OCI_MANIFEST,
        "config": desc(json::OCI_CONFIG, &cfg),
        "layers": [desc(berth_oci::media_types::OCI_LAYER, &layer)],
    }));
    let mut target = desc(json::OCI_MANIFEST, &manifest);
    target.annotations.insert(
        json::ANNOTATION_IMAGE_NAME.into(),
        "docker.io/library/app:25".into(),
    );
    target
        .annotations
        .insert(json::ANNOTATION_REF_NAME.into(), "25".into());
    let index = to_json(&json!({
        "schemaVersion": 2,
        "mediaType": json::OCI_INDEX,
        "manifests": [target],
    }));
    let l = Digest::of_bytes(&layer);
    let c = Digest::of_bytes(&cfg);
    let docker = to_json(&json!([{
        "Config": format!("blobs/sha256/{}", c.hex()),
        "RepoTags": ["app:25"],
        "Layers": [format!("blobs/sha256/{}", l.hex())],
    }]));
    TarBuilder::new()
        .dir("blobs/")
        .dir("blobs/sha256/")
        .blob(&cfg)
        .blob(&layer)
        .blob(&manifest)
        .dir("0123abcd/")
        .symlink(
            "0123abcd/layer.tar",
            &format!("../blobs/sha256/{}", l.hex()),
        )
        .file("index.json", &index)
        .file("manifest.json", &docker)
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("repositories", br#"{"app":{"25":"0123abcd"}}"#)
        .finish()
}
