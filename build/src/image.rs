//! What a build writes besides layers, as pure values: the layer cache's keys, the image
//! config document (the base's, with the stage's config, new diff IDs and history entries
//! appended, as `docker history` reads them) and the OCI manifest over it.
//!
//! A cache key chains the previous step's key, not the parent layer's chain ID: ENV, USER or
//! SHELL change what a later RUN does without changing any layer, so a key made of the chain
//! ID and the RUN's text alone would hand back a stale layer (docker chains its keys the same
//! way). The first key of a stage is its base: the base image's config digest, `scratch`, or
//! the last key of the stage it starts from.

use crate::dockerfile::ImageConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The cache key of one step. `copied` is the digest of what a COPY/ADD reads (the context's
/// [`crate::context::Context::digest`], or the key of the stage it copies from).
pub fn cache_key(
    previous: &str,
    instruction: &str,
    cache_args: &[(String, String)],
    copied: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    h.update(b"berth.build.cache.v1\0");
    for part in [previous, instruction] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let mut args: Vec<&(String, String)> = cache_args.iter().collect();
    args.sort();
    h.update((args.len() as u64).to_le_bytes());
    for (k, v) in args {
        for part in [k, v] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    match copied {
        Some(c) => {
            h.update(b"\x01");
            h.update(c.as_bytes());
        }
        None => h.update(b"\x00"),
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The image config document (OCI image-spec's, with docker's config extensions); fields it
/// does not name are kept from the base as they were.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: ImageConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl ImageDocument {
    /// The document a `FROM scratch` stage starts with.
    pub fn scratch(architecture: &str) -> ImageDocument {
        ImageDocument {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
            rootfs: RootFs {
                kind: "layers".to_string(),
                diff_ids: Vec::new(),
            },
            ..ImageDocument::default()
        }
    }

    /// Records one step: a layer's diff ID when it made one, and its history entry.
    pub fn record(&mut self, created: &str, created_by: &str, diff_id: Option<&str>) {
        if let Some(d) = diff_id {
            self.rootfs.diff_ids.push(d.to_string());
        }
        self.history.push(HistoryEntry {
            created: Some(created.to_string()),
            created_by: Some(created_by.to_string()),
            comment: Some("berth build".to_string()),
            empty_layer: diff_id.is_none(),
            ..HistoryEntry::default()
        });
    }
}

/// A layer of the manifest: the blob Diff wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

/// The OCI manifest over a config and its layers, as JSON bytes.
pub fn manifest(config: &Blob, layers: &[Blob]) -> Vec<u8> {
    let desc = |b: &Blob| serde_json::json!({"mediaType": b.media_type, "digest": b.digest, "size": b.size});
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc(config),
        "layers": layers.iter().map(desc).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_chain_and_cover_every_input() {
        let a = cache_key("sha256:base", "RUN make", &[], None);
        assert_eq!(a, cache_key("sha256:base", "RUN make", &[], None));
        let args = [
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string()),
        ];
        let swapped = [args[1].clone(), args[0].clone()];
        assert_eq!(
            cache_key("p", "RUN x", &args, None),
            cache_key("p", "RUN x", &swapped, None)
        );
        let all = [
            a.clone(),
            cache_key("sha256:other", "RUN make", &[], None),
            cache_key("sha256:base", "RUN make ", &[], None),
            cache_key("sha256:base", "RUN make", &args, None),
            cache_key("sha256:base", "RUN make", &[], Some("sha256:files")),
            cache_key("sha256:baseRUN", " make", &[], None),
        ];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn documents_keep_the_base_and_append() {
        let base = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},
            "rootfs":{"type":"layers","diff_ids":["sha256:l1"]},
            "history":[{"created_by":"base","created":"2020-01-01T00:00:00Z"}],"os.version":"x"}"#;
        let mut doc: ImageDocument = serde_json::from_str(base).unwrap();
        doc.record("2026-01-01T00:00:00Z", "ENV A=b", None);
        doc.record(
            "2026-01-01T00:00:01Z",
            "RUN /bin/sh -c make",
            Some("sha256:l2"),
        );
        let out: serde_json::Value = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            out["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:l1", "sha256:l2"])
        );
        assert_eq!(out["history"][1]["empty_layer"], true);
        assert!(out["history"][2].get("empty_layer").is_none());
        assert_eq!(out["os.version"], "x");
        assert_eq!(out["config"]["Cmd"], serde_json::json!(["sh"]));
        let scratch = serde_json::to_value(ImageDocument::scratch("amd64")).unwrap();
        assert_eq!(
            scratch["rootfs"],
            serde_json::json!({"type": "layers", "diff_ids": []})
        );
    }

    #[test]
    fn manifests_list_layers_in_order() {
        let blob = |d: &str| Blob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: d.into(),
            size: 3,
        };
        let m: serde_json::Value = serde_json::from_slice(&manifest(
            &blob("sha256:c"),
            &[blob("sha256:1"), blob("sha256:2")],
        ))
        .unwrap();
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["layers"][1]["digest"], "sha256:2");
        assert_eq!(m["config"]["digest"], "sha256:c");
    }
}
