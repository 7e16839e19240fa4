//! Input rules shared by every service: containerd's identifier and label limits.

use berth_errdefs::{Error, Result};
use std::collections::HashMap;

/// containerd's identifier limit (identifiers/validate.go).
const MAX_IDENTIFIER_LEN: usize = 76;
/// containerd's limit on one label, key and value together (labels/validate.go).
const MAX_LABEL_LEN: usize = 4096;

/// An identifier: `[A-Za-z0-9]+` groups joined by single `.`, `_` or `-`, at most 76 characters.
/// Used for namespaces and container ids.
pub fn identifier(kind: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(format!(
            "{kind}: identifier must not be empty"
        )));
    }
    if s.len() > MAX_IDENTIFIER_LEN {
        return Err(Error::invalid(format!(
            "{kind}: identifier {:?}… is {} characters long, the limit is {MAX_IDENTIFIER_LEN}",
            &s[..s.char_indices().nth(20).map_or(s.len(), |(i, _)| i)],
            s.len()
        )));
    }
    let mut prev_sep = true; // the first character must be alphanumeric
    for c in s.chars() {
        let sep = matches!(c, '.' | '_' | '-');
        if !(c.is_ascii_alphanumeric() || sep) || (sep && prev_sep) {
            return Err(Error::invalid(format!(
                "{kind}: identifier {s:?} must match [A-Za-z0-9]+([._-][A-Za-z0-9]+)*"
            )));
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(Error::invalid(format!(
            "{kind}: identifier {s:?} must not end with a separator"
        )));
    }
    Ok(())
}

pub fn label(key: &str, value: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("label key must not be empty"));
    }
    if key.len() + value.len() > MAX_LABEL_LEN {
        return Err(Error::invalid(format!(
            "label key and value length ({} bytes) greater than maximum size ({MAX_LABEL_LEN} bytes), key: {}",
            key.len() + value.len(),
            key.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

pub fn labels(labels: &HashMap<String, String>) -> Result<()> {
    labels.iter().try_for_each(|(k, v)| label(k, v))
}

/// Apply a label field-mask path (`labels` or `labels.KEY`) from `from` onto `to`.
/// Returns false when `path` is not a label path. An empty value removes the label, as in containerd.
/// One label of an update: set to `value`, or removed when `value` is empty.
pub fn set_label(to: &mut HashMap<String, String>, key: &str, value: &str) {
    if value.is_empty() {
        to.remove(key);
    } else {
        to.insert(key.to_string(), value.to_string());
    }
}

pub fn apply_label_path(
    path: &str,
    to: &mut HashMap<String, String>,
    from: &HashMap<String, String>,
) -> bool {
    if path == "labels" {
        *to = from.clone();
    } else if let Some(key) = path.strip_prefix("labels.") {
        set_label(
            to,
            key,
            from.get(key).map(String::as_str).unwrap_or_default(),
        );
    } else {
        return false;
    }
    to.retain(|_, v| !v.is_empty());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "default", "k8s.io", "a-b_c.d", "A9", &"x".repeat(76)] {
            assert!(identifier("id", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "../x",
            "a b",
            "é",
            "a\0b",
            &"x".repeat(77),
        ] {
            assert!(
                matches!(identifier("id", bad), Err(ref e) if e.kind() == berth_errdefs::Kind::InvalidArgument),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn label_limits() {
        assert!(label("k", &"v".repeat(4095)).is_ok());
        assert!(label("k", &"v".repeat(4096)).is_err());
        assert!(label("", "v").is_err());
    }

    #[test]
    fn label_paths() {
        let from: HashMap<_, _> = [("a.b/c".to_string(), "1".to_string())].into();
        let mut to: HashMap<_, _> = [("x".to_string(), "2".to_string())].into();
        assert!(apply_label_path("labels.a.b/c", &mut to, &from));
        assert_eq!(to.len(), 2);
        assert!(apply_label_path("labels.x", &mut to, &from));
        assert_eq!(to.len(), 1);
        assert!(!apply_label_path("image", &mut to, &from));
    }
}
