//! Which image names an import stores, as containerd's Transfer image store decides them
//! (`core/transfer/image`'s `Store`): the index under the store's own name, each index entry
//! under the name its annotations give, filtered or completed by the prefix references the
//! client sent (`ctr images import` sends `import-<date>` as an overwritable prefix).

use std::collections::BTreeMap;

use crate::import::RefTranslator;
use crate::json::{Descriptor, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};

/// One of the image store's extra references (the transfer API's `ImageReference`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageReference {
    pub name: String,
    pub is_prefix: bool,
    pub allow_overwrite: bool,
    pub add_digest: bool,
    pub skip_named_digest: bool,
}

/// The naming part of containerd's image store options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageNaming {
    /// The store's own name: given to the archive's index (`ctr import --index-name`).
    pub image_name: String,
    pub extra_references: Vec<ImageReference>,
}

/// Whether a name is the store's own or comes from an extra reference: containerd labels the
/// latter to go with the former (`containerd.io/gc.bref.image`, `containerd.io/gc.expire`)
/// when the store has a name of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    Own,
    Extra,
}

impl ImageNaming {
    /// The names for the archive's index.
    pub fn for_index(&self, index: &Descriptor) -> Vec<(String, NameSource)> {
        let mut out = Vec::new();
        if !self.image_name.is_empty() {
            out.push((self.image_name.clone(), NameSource::Own));
        }
        for r in &self.extra_references {
            if r.is_prefix && !r.add_digest {
                continue;
            }
            let name = if r.add_digest {
                format!("{}@{}", r.name, index.digest)
            } else {
                r.name.clone()
            };
            out.push((name, NameSource::Extra));
        }
        out
    }

    /// The names for one entry of the archive's index, from its annotations.
    pub fn for_entry(&self, entry: &Descriptor) -> Vec<(String, NameSource)> {
        let mut out = Vec::new();
        for r in self.extra_references.iter().filter(|r| r.is_prefix) {
            let t = if r.allow_overwrite {
                RefTranslator::AddPrefix(r.name.clone())
            } else {
                RefTranslator::FilterPrefix(r.name.clone())
            };
            let digested = format!("{}@{}", r.name, entry.digest);
            let name = store_image_name(&entry.annotations, &t);
            if name.is_empty() {
                if r.add_digest {
                    out.push((digested, NameSource::Extra));
                }
                continue;
            }
            out.push((name, NameSource::Extra));
            if r.add_digest && !r.skip_named_digest {
                out.push((digested, NameSource::Extra));
            }
        }
        out
    }
}

/// The image store's `imageName`, stricter than the client's: a full
/// `io.containerd.image.name` that the prefix would change is not used at all.
fn store_image_name(annotations: &BTreeMap<String, String>, t: &RefTranslator) -> String {
    if let Some(n) = annotations
        .get(ANNOTATION_IMAGE_NAME)
        .filter(|n| !n.is_empty())
    {
        return if t.translate(n) == *n {
            n.clone()
        } else {
            String::new()
        };
    }
    match annotations
        .get(ANNOTATION_REF_NAME)
        .filter(|n| !n.is_empty())
    {
        Some(r) => t.translate(r),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_oci::Digest;

    fn entry(pairs: &[(&str, &str)]) -> Descriptor {
        let mut d = Descriptor::new(crate::json::OCI_MANIFEST, Digest::of_bytes(b"m"), 1);
        for (k, v) in pairs {
            d.annotations.insert(k.to_string(), v.to_string());
        }
        d
    }

    fn names(v: Vec<(String, NameSource)>) -> Vec<String> {
        v.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn ctr_import_defaults() {
        // `ctr images import` without --base-name: an overwritable `import-<date>` prefix.
        let naming = ImageNaming {
            image_name: String::new(),
            extra_references: vec![ImageReference {
                name: "import-2026-12-05".into(),
                is_prefix: true,
                allow_overwrite: true,
                ..ImageReference::default()
            }],
        };
        let full = entry(&[
            (ANNOTATION_IMAGE_NAME, "docker.io/library/busybox:e2e"),
            (ANNOTATION_REF_NAME, "e2e"),
        ]);
        assert_eq!(
            names(naming.for_entry(&full)),
            ["docker.io/library/busybox:e2e"]
        );
        let tag_only = entry(&[(ANNOTATION_REF_NAME, "v1")]);
        assert_eq!(names(naming.for_entry(&tag_only)), ["import-2026-12-05:v1"]);
        assert!(naming.for_entry(&entry(&[])).is_empty());
        assert!(naming.for_index(&entry(&[])).is_empty());
    }

    #[test]
    fn base_name_filters_and_digests() {
        // --base-name example.com/app --digests
        let naming = ImageNaming {
            image_name: "idx".into(),
            extra_references: vec![ImageReference {
                name: "example.com/app".into(),
                is_prefix: true,
                add_digest: true,
                ..ImageReference::default()
            }],
        };
        let d = entry(&[(ANNOTATION_IMAGE_NAME, "docker.io/library/busybox:e2e")]);
        let digested = format!("example.com/app@{}", d.digest);
        assert_eq!(names(naming.for_entry(&d)), std::slice::from_ref(&digested));
        let ours = entry(&[(ANNOTATION_IMAGE_NAME, "example.com/app:1")]);
        assert_eq!(
            names(naming.for_entry(&ours)),
            ["example.com/app:1".to_owned(), digested.clone()]
        );
        let index = naming.for_index(&d);
        assert_eq!(index[0], ("idx".to_owned(), NameSource::Own));
        assert_eq!(index[1], (digested, NameSource::Extra));
    }
}
