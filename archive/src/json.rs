//! The OCI and Docker documents an archive holds, in the exact JSON containerd writes.
//!
//! Digests of the documents berth writes (a docker archive's manifest and index, an export's
//! index.json) must equal containerd's, so the field order, the omitted empty fields and the
//! escaping follow Go's `encoding/json` on image-spec's structs: fields in declaration order,
//! maps with sorted keys, `<`, `>`, `&`, U+2028 and U+2029 escaped, and a nil slice as `null`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use berth_errdefs::{Error, Result};
use berth_oci::Digest;

use crate::platform::Platform;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// containerd's annotation carrying an image's full name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI's reference-name annotation (a tag, or a full name for digest references).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

pub fn is_manifest(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

pub fn is_config(media_type: &str) -> bool {
    matches!(media_type, OCI_CONFIG | DOCKER_CONFIG)
}

/// Layers whose bytes may not be redistributed (Windows base layers): skipped on request.
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

/// A layer, by containerd's `IsLayerType` (its `+suffix` stripped for Docker's types).
pub fn is_layer(media_type: &str) -> bool {
    if media_type.starts_with("application/vnd.oci.image.layer.") {
        return true;
    }
    let base = media_type.split('+').next().unwrap_or(media_type);
    matches!(
        base,
        "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
    )
}

/// The labels containerd's image handlers put on a document so the collector keeps its
/// children (`SetChildrenMappedLabels` with `ChildGCLabels`): `.m.<n>` per manifest, `.config`,
/// `.l.<n>` per layer, `.<n>` for anything else, counted per key.
pub fn gc_ref_labels(children: &[Descriptor]) -> BTreeMap<String, String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for c in children {
        let key = if is_config(&c.media_type) {
            "containerd.io/gc.ref.content.config"
        } else if is_manifest(&c.media_type) {
            "containerd.io/gc.ref.content.m."
        } else if is_layer(&c.media_type) {
            "containerd.io/gc.ref.content.l."
        } else {
            "containerd.io/gc.ref.content."
        };
        let n = counts.entry(key).or_insert(0);
        let label = if *n > 0 || key.ends_with('.') {
            format!("{key}{n}")
        } else {
            key.to_owned()
        };
        *n += 1;
        out.insert(label, c.digest.to_string());
    }
    out
}

/// An OCI descriptor as image-spec declares it (the order of fields is the JSON order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(with = "digest_text")]
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Embedded content: base64 in JSON, kept verbatim as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub artifact_type: String,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: i64::try_from(size).unwrap_or(i64::MAX),
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            data: None,
            platform: None,
            artifact_type: String::new(),
        }
    }

    /// The size as a byte count; a negative size is refused where a document is read.
    pub fn len(&self) -> u64 {
        u64::try_from(self.size).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

/// Digests as strings, validated on the way in: a document naming `../x` or `sha512:` fails to
/// parse rather than reaching a path.
pub(crate) mod digest_text {
    use berth_oci::Digest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

/// An index, with the fields containerd writes (and reads: subject and artifactType are kept
/// out, containerd's importer never looks at them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: i64,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    /// `None` is Go's nil slice, written as `null`.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest as containerd reads one for its children (OCI and Docker schema 2 alike).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

/// The docker schema 2 manifest containerd's importer builds for a docker archive.
#[derive(Debug, Serialize)]
pub struct DockerManifest<'a> {
    #[serde(rename = "schemaVersion")]
    pub schema_version: i64,
    #[serde(rename = "mediaType")]
    pub media_type: &'a str,
    pub config: &'a Descriptor,
    pub layers: &'a [Descriptor],
}

/// One entry of docker's `manifest.json`. Go matches JSON keys case-insensitively; docker
/// writes them capitalised and some tools lower-case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerArchiveEntry {
    #[serde(rename = "Config", alias = "config", default)]
    pub config: String,
    #[serde(rename = "RepoTags", alias = "repoTags", alias = "repotags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", alias = "layers", default)]
    pub layers: Option<Vec<String>>,
}

/// `oci-layout`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImageLayout {
    #[serde(rename = "imageLayoutVersion", default)]
    pub version: String,
}

/// The fields of a document that say what it is, to refuse the index/manifest confusion of
/// CVE-2021-41190 and schema 1 as containerd's `validateMediaType` does.
#[derive(Deserialize)]
struct UnknownDocument {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(rename = "fsLayers", default)]
    fs_layers: Option<serde_json::Value>,
}

/// Refuse schema 1 and a manifest that is really an index (or the reverse).
pub fn validate_media_type(bytes: &[u8], media_type: &str, digest: &Digest) -> Result<()> {
    let doc: UnknownDocument = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("{media_type} {digest}: invalid JSON: {e}")))?;
    if doc.fs_layers.is_some() {
        return Err(Error::invalid(format!(
            "{digest}: media-type: schema 1 not supported"
        )));
    }
    let inner = doc.media_type.unwrap_or_default();
    if is_manifest(media_type) && (doc.manifests.is_some() || is_index(&inner)) {
        return Err(Error::invalid(format!(
            "{digest}: media-type: expected manifest but found index ({media_type})"
        )));
    }
    if is_index(media_type) && (doc.config.is_some() || doc.layers.is_some() || is_manifest(&inner))
    {
        return Err(Error::invalid(format!(
            "{digest}: media-type: expected index but found manifest ({media_type})"
        )));
    }
    Ok(())
}

/// Go's `json.Marshal`: compact, with its HTML-safe escapes.
pub fn to_go_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let text = serde_json::to_string(value)
        .map_err(|e| Error::internal(format!("encode JSON document: {e}")))?;
    // These characters can only occur inside JSON strings, where the escapes mean the same.
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_as_go_does() {
        let d = Digest::of_bytes(b"x");
        let mut desc = Descriptor::new(DOCKER_MANIFEST, d.clone(), 3);
        desc.annotations.insert("b".into(), "<&>".into());
        desc.annotations.insert("a".into(), "1".into());
        desc.platform = Some(Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Platform::default()
        });
        let text = String::from_utf8(to_go_json(&desc).unwrap()).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"mediaType":"{DOCKER_MANIFEST}","digest":"{d}","size":3,"annotations":{{"a":"1","b":"\u003c\u0026\u003e"}},"platform":{{"architecture":"amd64","os":"linux"}}}}"#
            )
        );
        let back: Descriptor = serde_json::from_str(&text).unwrap();
        assert_eq!(back, desc);
    }

    #[test]
    fn gc_labels_count_per_kind() {
        let m = |mt: &str, b: &[u8]| Descriptor::new(mt, Digest::of_bytes(b), 1);
        let children = [
            m(OCI_CONFIG, b"c"),
            m(berth_oci::media_types::OCI_LAYER_GZIP, b"l0"),
            m(berth_oci::media_types::DOCKER_LAYER, b"l1"),
        ];
        let labels = gc_ref_labels(&children);
        assert_eq!(labels.len(), 3);
        assert_eq!(
            labels["containerd.io/gc.ref.content.config"],
            children[0].digest.as_str()
        );
        assert_eq!(
            labels["containerd.io/gc.ref.content.l.1"],
            children[2].digest.as_str()
        );
        let index = [
            m(OCI_MANIFEST, b"a"),
            m(OCI_INDEX, b"b"),
            m(DOCKER_MANIFEST, b"c"),
        ];
        let labels: Vec<String> = gc_ref_labels(&index).into_keys().collect();
        assert_eq!(
            labels,
            [
                "containerd.io/gc.ref.content.0",
                "containerd.io/gc.ref.content.m.0",
                "containerd.io/gc.ref.content.m.1"
            ]
        );
    }

    #[test]
    fn empty_index_is_null_manifests() {
        let idx = Index {
            schema_version: 2,
            media_type: String::new(),
            manifests: None,
            annotations: BTreeMap::new(),
        };
        assert_eq!(
            to_go_json(&idx).unwrap(),
            br#"{"schemaVersion":2,"manifests":null}"#
        );
    }

    #[test]
    fn refuses_confused_documents() {
        let d = Digest::of_bytes(b"x");
        let both = br#"{"manifests":[],"layers":[]}"#;
        assert!(validate_media_type(both, OCI_MANIFEST, &d).is_err());
        assert!(validate_media_type(both, OCI_INDEX, &d).is_err());
        let s1 = br#"{"schemaVersion":1,"fsLayers":[{"blobSum":"x"}]}"#;
        assert!(validate_media_type(s1, DOCKER_MANIFEST, &d).is_err());
        let inner = format!(r#"{{"mediaType":"{OCI_INDEX}"}}"#);
        assert!(validate_media_type(inner.as_bytes(), OCI_MANIFEST, &d).is_err());
        let ok = br#"{"config":{},"layers":[]}"#;
        assert!(validate_media_type(ok, OCI_MANIFEST, &d).is_ok());
        assert!(validate_media_type(b"[1]", OCI_MANIFEST, &d).is_err());
    }

    #[test]
    fn bad_digests_do_not_parse() {
        let text = r#"{"mediaType":"x","digest":"sha256:../../etc/passwd","size":1}"#;
        assert!(serde_json::from_str::<Descriptor>(text).is_err());
    }
}
