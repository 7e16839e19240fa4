//! Validated content digests.
//!
//! A `Digest` is the only way a client-supplied string becomes a blob path, so parsing is strict:
//! exactly `sha256:` followed by 64 lowercase hex characters. Anything else (uppercase hex, path
//! separators, `..`, other algorithms) is rejected before it can reach the filesystem.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use berth_errdefs::{Error, Result};

const ALGORITHM: &str = "sha256";
const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

/// A validated `sha256:<64 lowercase hex>` digest.
///
/// Holds the full string so `as_str` and `Display` cost nothing; `hex` is a slice of it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parse and validate a digest string.
    ///
    /// Error texts follow go-digest (`invalid checksum digest format`, `unsupported digest
    /// algorithm`, `invalid checksum digest length`) so clients see containerd's messages.
    pub fn parse(s: &str) -> Result<Digest> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(Error::invalid(format!(
                "invalid checksum digest format: {s:?}"
            )));
        };
        // go-digest's algorithm grammar: [a-z0-9]+ optionally joined by [+._-]. Checking it
        // first means "sha256x:..." or "../x:..." report a format error, not "unsupported".
        let alg_ok = !alg.is_empty()
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        if !alg_ok || hex.is_empty() {
            return Err(Error::invalid(format!(
                "invalid checksum digest format: {s:?}"
            )));
        }
        if alg != ALGORITHM {
            // containerd syntactically accepts sha384/sha512, but every blob berth stores is
            // addressed by sha256, so anything else could never be found or verified.
            return Err(Error::invalid(format!(
                "unsupported digest algorithm: {s:?}"
            )));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::invalid(format!(
                "invalid checksum digest format: {s:?}"
            )));
        }
        if hex.len() != HEX_LEN {
            return Err(Error::invalid(format!(
                "invalid checksum digest length: {s:?}"
            )));
        }
        Ok(Digest(s.to_owned()))
    }

    /// The full `sha256:<hex>` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex characters after `sha256:`; safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// Build from a finished sha256 hash.
    pub fn from_sha256(bytes: &[u8; 32]) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(bytes)))
    }

    /// Hash `data` in one go.
    pub fn of_bytes(data: &[u8]) -> Digest {
        Digest::from_sha256(&Sha256::digest(data).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn assert_invalid(s: &str, needle: &str) {
        match Digest::parse(s) {
            Err(e) if e.kind() == berth_errdefs::Kind::InvalidArgument => {
                let msg = e.message();
                assert!(msg.contains(needle), "{s:?}: {msg:?} lacks {needle:?}")
            }
            other => panic!("{s:?}: expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn parses_valid() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.as_str(), EMPTY);
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn of_bytes_matches_known_values() {
        assert_eq!(Digest::of_bytes(b"").as_str(), EMPTY);
        assert_eq!(
            Digest::of_bytes(b"hello").as_str(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let raw: [u8; 32] = Sha256::digest(b"hello").into();
        assert_eq!(Digest::from_sha256(&raw), Digest::of_bytes(b"hello"));
    }

    #[test]
    fn rejects_bad_input() {
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert_invalid(&upper, "format");
        assert_invalid(&EMPTY[..EMPTY.len() - 1], "length");
        assert_invalid(&format!("{EMPTY}0"), "length");
        assert_invalid(&EMPTY[7..], "format"); // no algorithm
        assert_invalid(&format!(":{}", &EMPTY[7..]), "format");
        assert_invalid("sha256:", "format");
        assert_invalid("", "format");
        assert_invalid(
            &format!("sha512:{}{}", &EMPTY[7..], &EMPTY[7..]),
            "unsupported",
        );
        assert_invalid(&format!("sha384:{}", &EMPTY[7..]), "unsupported");
        assert_invalid(&format!("md5:{}", &EMPTY[7..]), "unsupported");
        assert_invalid("SHA256:abc", "format");
        assert_invalid("sha256:../../../etc/passwd", "format");
        assert_invalid(&format!("sha256:{}/x", &EMPTY[7..70]), "format");
        assert_invalid("../sha256:abc", "format");
        assert_invalid(&format!("sha256:{}\0", &EMPTY[7..70]), "format");
        assert_invalid(&format!("sha256: {}", &EMPTY[8..]), "format");
    }

    #[test]
    fn orders_and_hashes_by_string() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        assert_eq!(a.cmp(&b), a.as_str().cmp(b.as_str()));
        let set: std::collections::HashSet<_> = [a.clone(), a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 2);
    }
}
