//! Manifests and indexes (OCI and Docker schema 2), read strictly: a document is one kind or
//! the other by its media type AND its shape (CVE-2021-41190), schema 1 is refused, and layer
//! counts are bounded. Also platform matching, containerd's way.
//!
//! Own serde types rather than oci-spec's: the two Docker media types share the OCI shapes but
//! not its required fields, and the checks here need the raw fields (`manifests` beside `layers`).

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The Accept header of a resolve: every kind we read, indexes first (containerd's order).
pub const ACCEPT_MANIFESTS: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

pub fn is_schema1(media_type: &str) -> bool {
    media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size,
            urls: Vec::new(),
            platform: None,
            annotations: BTreeMap::new(),
            artifact_type: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: &str) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.to_string(),
            os_version: None,
        }
    }

    /// The platform this process runs on, in OCI's names (containerd's `platforms.DefaultSpec`).
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        let variant = match arch {
            "arm64" => "v8",
            "arm" => "v7",
            _ => "",
        };
        Platform::new(std::env::consts::OS, arch, variant)
    }

    /// `os/arch[/variant]` as `ctr --platform` takes it; short forms as containerd accepts them.
    pub fn parse(s: &str) -> Result<Platform, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || Error::InvalidManifest(format!("invalid platform {s:?}"));
        if parts.iter().any(|p| {
            p.is_empty()
                || p.len() > 32
                || !p.as_bytes()[0].is_ascii_alphanumeric()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        }) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os] => Ok(Platform::new(os, &Platform::host().architecture, "")),
            [os, arch] => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] => Ok(Platform::new(os, arch, variant)),
            _ => Err(bad()),
        }
        .map(|p| p.normalized())
    }

    /// containerd's normalisation: aliases of architectures, and the default variants that make
    /// `arm64` and `arm64/v8` the same platform.
    pub fn normalized(&self) -> Platform {
        let os = self.os.to_ascii_lowercase();
        let (arch, variant) = match (
            self.architecture.to_ascii_lowercase().as_str(),
            self.variant.to_ascii_lowercase().as_str(),
        ) {
            ("i386", _) => ("386".to_string(), String::new()),
            ("x86_64" | "x86-64" | "amd64", v) => (
                "amd64".to_string(),
                if v == "v1" { "" } else { v }.to_string(),
            ),
            ("aarch64" | "arm64", "" | "8" | "v8") => ("arm64".to_string(), "v8".to_string()),
            ("aarch64" | "arm64", v) => ("arm64".to_string(), v.to_string()),
            ("armhf", _) => ("arm".to_string(), "v7".to_string()),
            ("armel", _) => ("arm".to_string(), "v6".to_string()),
            ("arm", "" | "7" | "v7") => ("arm".to_string(), "v7".to_string()),
            ("arm", v @ ("5" | "6" | "8")) => ("arm".to_string(), format!("v{v}")),
            (a, v) => (a.to_string(), v.to_string()),
        };
        Platform {
            os,
            architecture: arch,
            variant,
            os_version: self.os_version.clone(),
        }
    }

    /// Whether an index entry for `other` runs here: same os and architecture, and a variant
    /// this one can run (arm v8 runs v7, v6, v5; amd64 variants are levels the host may exceed).
    pub fn matches(&self, other: &Platform) -> bool {
        let a = self.normalized();
        let b = other.normalized();
        if a.os != b.os || a.architecture != b.architecture {
            return false;
        }
        if a.variant == b.variant || b.variant.is_empty() {
            return true;
        }
        let level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        match (
            a.architecture.as_str(),
            level(&a.variant),
            level(&b.variant),
        ) {
            ("arm" | "amd64", Some(mine), Some(theirs)) => theirs <= mine,
            _ => false,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An index or Docker manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed document, after the checks. Short-lived (parsed, read, dropped), so the size
/// difference of the variants is not worth a box.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

/// The fields that decide what a document is, read before the typed parse.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
    fs_layers: Option<serde_json::Value>,
}

/// Parse `bytes` served as `media_type` (the descriptor's or Content-Type's). `max_entries`
/// bounds the layers of a manifest and the manifests of an index.
pub fn parse_document(
    what: &str,
    media_type: &str,
    bytes: &[u8],
    max_entries: usize,
) -> Result<Document, Error> {
    let media_type = media_type.split(';').next().unwrap_or("").trim();
    if is_schema1(media_type) {
        return Err(Error::Schema1(what.to_string()));
    }
    let shape: Shape = serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidManifest(format!("{what}: {e}")))?;
    if shape.fs_layers.is_some()
        || shape.schema_version.as_ref().and_then(|v| v.as_u64()) == Some(1)
    {
        return Err(Error::Schema1(what.to_string()));
    }
    if shape.schema_version.as_ref().and_then(|v| v.as_u64()) != Some(2) {
        return Err(Error::InvalidManifest(format!(
            "{what}: schemaVersion must be 2"
        )));
    }
    if shape.manifests.is_some() && (shape.layers.is_some() || shape.config.is_some()) {
        return Err(Error::InvalidManifest(format!(
            "{what}: both manifests and layers/config: ambiguous document refused"
        )));
    }
    // The media type in the body, when present, must agree with the one it was served as.
    if let Some(inner) = &shape.media_type {
        if !media_type.is_empty() && inner != media_type && media_type != "application/json" {
            return Err(Error::InvalidManifest(format!(
                "{what}: served as {media_type} but says it is {inner}"
            )));
        }
    }
    let effective = if is_index(media_type) || is_manifest(media_type) {
        media_type.to_string()
    } else if let Some(inner) = shape.media_type.clone() {
        inner
    } else if shape.manifests.is_some() {
        OCI_INDEX.to_string()
    } else {
        OCI_MANIFEST.to_string()
    };
    if is_index(&effective) {
        if shape.manifests.is_none() {
            return Err(Error::InvalidManifest(format!(
                "{what}: an index without manifests"
            )));
        }
        let index: Index = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidManifest(format!("{what}: {e}")))?;
        if index.manifests.len() > max_entries {
            return Err(Error::TooManyLayers {
                what: what.to_string(),
                count: index.manifests.len(),
                limit: max_entries,
            });
        }
        for d in &index.manifests {
            check_descriptor(what, d)?;
        }
        Ok(Document::Index(index))
    } else if is_manifest(&effective) {
        if shape.config.is_none() {
            return Err(Error::InvalidManifest(format!(
                "{what}: a manifest without config"
            )));
        }
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidManifest(format!("{what}: {e}")))?;
        if manifest.layers.len() > max_entries {
            return Err(Error::TooManyLayers {
                what: what.to_string(),
                count: manifest.layers.len(),
                limit: max_entries,
            });
        }
        check_descriptor(what, &manifest.config)?;
        for d in &manifest.layers {
            check_descriptor(what, d)?;
        }
        Ok(Document::Manifest(manifest))
    } else if is_schema1(&effective) {
        Err(Error::Schema1(what.to_string()))
    } else {
        Err(Error::UnsupportedMediaType(effective))
    }
}

fn check_descriptor(what: &str, d: &Descriptor) -> Result<(), Error> {
    crate::reference::parse_digest(&d.digest)
        .map_err(|e| Error::InvalidManifest(format!("{what}: descriptor digest: {e}")))?;
    if d.size > i64::MAX as u64 {
        return Err(Error::InvalidManifest(format!(
            "{what}: descriptor size out of range"
        )));
    }
    Ok(())
}

/// The entries of an index that run on one of `platforms`, best first: ordered by the caller's
/// platform order, then by how close the variant is (an exact variant before an older one).
pub fn select_platforms<'a>(index: &'a Index, platforms: &[Platform]) -> Vec<&'a Descriptor> {
    let mut picked: Vec<(usize, u32, usize, &Descriptor)> = Vec::new();
    for (pos, d) in index.manifests.iter().enumerate() {
        let Some(p) = &d.platform else { continue };
        if !is_manifest(&d.media_type) && !is_index(&d.media_type) {
            continue;
        }
        if let Some((rank, want)) = platforms.iter().enumerate().find(|(_, w)| w.matches(p)) {
            let exact = u32::from(want.normalized().variant != p.normalized().variant);
            picked.push((rank, exact, pos, d));
        }
    }
    picked.sort_by_key(|&(rank, exact, pos, _)| (rank, exact, pos));
    picked.into_iter().map(|(_, _, _, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_matching() {
        let arm64 = Platform::new("linux", "arm64", "");
        assert!(arm64.matches(&Platform::new("linux", "arm64", "v8")));
        assert!(Platform::new("linux", "aarch64", "v8").matches(&arm64));
        let armv7 = Platform::new("linux", "arm", "v7");
        assert!(armv7.matches(&Platform::new("linux", "arm", "v6")));
        assert!(!Platform::new("linux", "arm", "v6").matches(&armv7));
        assert!(!arm64.matches(&Platform::new("linux", "amd64", "")));
        assert!(!arm64.matches(&Platform::new("windows", "arm64", "")));
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap(),
            Platform::new("linux", "arm", "v7")
        );
        assert!(Platform::parse("linux/../x").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    fn entry(arch: &str, variant: &str, n: u8) -> Descriptor {
        let mut d = Descriptor::new(
            OCI_MANIFEST,
            &format!("sha256:{}", format!("{n:02x}").repeat(32)),
            1,
        );
        d.platform = Some(Platform::new("linux", arch, variant));
        d
    }

    #[test]
    fn select_orders_by_caller_then_variant() {
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                entry("amd64", "", 1),
                entry("arm", "v6", 2),
                entry("arm", "v7", 3),
                entry("arm64", "v8", 4),
            ],
            annotations: BTreeMap::new(),
        };
        let got = select_platforms(&index, &[Platform::new("linux", "arm", "v7")]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].platform.as_ref().unwrap().variant, "v7");
        let got = select_platforms(
            &index,
            &[
                Platform::new("linux", "arm64", ""),
                Platform::new("linux", "amd64", ""),
            ],
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].platform.as_ref().unwrap().architecture, "arm64");
        assert!(select_platforms(&index, &[Platform::new("linux", "s390x", "")]).is_empty());
    }

    #[test]
    fn documents_checked() {
        let d = format!("sha256:{}", "a".repeat(64));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":2}},"layers":[]}}"#
        );
        assert!(matches!(
            parse_document("m", OCI_MANIFEST, m.as_bytes(), 10),
            Ok(Document::Manifest(_))
        ));
        // Served as an index but shaped as a manifest.
        assert!(parse_document("m", OCI_INDEX, m.as_bytes(), 10).is_err());
        let both = format!(
            r#"{{"schemaVersion":2,"manifests":[],"config":{{"mediaType":"x","digest":"{d}","size":2}}}}"#
        );
        assert!(parse_document("m", "", both.as_bytes(), 10).is_err());
        let s1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(
            parse_document("m", DOCKER_SCHEMA1_SIGNED, s1.as_bytes(), 10),
            Err(Error::Schema1(_))
        ));
        assert!(matches!(
            parse_document("m", "application/json", s1.as_bytes(), 10),
            Err(Error::Schema1(_))
        ));
        let layers: Vec<String> = (0..11)
            .map(|_| format!(r#"{{"mediaType":"x","digest":"{d}","size":1}}"#))
            .collect();
        let many = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{d}","size":2}},"layers":[{}]}}"#,
            layers.join(",")
        );
        assert!(matches!(
            parse_document("m", DOCKER_MANIFEST, many.as_bytes(), 10),
            Err(Error::TooManyLayers { .. })
        ));
        let bad_digest = m.replace(&d, "sha256:../../etc");
        assert!(parse_document("m", OCI_MANIFEST, bad_digest.as_bytes(), 10).is_err());
        assert!(parse_document("m", "text/html", b"<html>", 10).is_err());
    }
}
