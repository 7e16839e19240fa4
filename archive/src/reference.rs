//! Image names as docker and containerd spell them: `busybox` is
//! `docker.io/library/busybox:latest` inside the store and `busybox:latest` in docker's
//! `manifest.json`. Only what archives need: normalising a docker RepoTag, familiarising a
//! name for export, and OCI's ref-name annotation of a name.

use berth_errdefs::{Error, Result};

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalised reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl Named {
    /// distribution's `ParseNormalizedNamed`.
    pub fn parse_normalized(s: &str) -> Result<Named> {
        let invalid = |why: &str| Error::invalid(format!("invalid reference {s:?}: {why}"));
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("cannot specify 64-byte hexadecimal strings"));
        }
        let (domain, remainder) = split_docker_domain(s);
        let remote = remainder.split(':').next().unwrap_or("");
        if remote.to_lowercase() != remote {
            return Err(invalid("repository name must be lowercase"));
        }
        parse(&format!("{domain}/{remainder}")).map_err(|why| invalid(&why))
    }

    /// distribution's `ParseDockerRef`, as containerd's importer uses it on a RepoTag: a name
    /// with a tag and a digest keeps the digest only, a bare name gets `latest`.
    pub fn parse_docker_ref(s: &str) -> Result<Named> {
        let mut n = Named::parse_normalized(s)?;
        if n.digest.is_some() {
            n.tag = None;
        } else if n.tag.is_none() {
            n.tag = Some("latest".to_owned());
        }
        Ok(n)
    }

    /// `FamiliarString(TagNameOnly(n))`: what docker's `manifest.json` lists.
    pub fn familiar(&self) -> String {
        let mut n = self.clone();
        if n.tag.is_none() && n.digest.is_none() {
            n.tag = Some("latest".to_owned());
        }
        if let Some(rest) = n.name.strip_prefix("docker.io/") {
            n.name = match rest.strip_prefix(OFFICIAL_PREFIX) {
                Some(short) if !short.contains('/') => short.to_owned(),
                _ => rest.to_owned(),
            };
        }
        n.to_string()
    }
}

/// containerd's `ociReferenceName`: the object of the name (its tag) unless that is empty or a
/// digest, in which case the whole name.
pub fn oci_reference_name(name: &str) -> String {
    if name.contains("://") {
        return name.to_owned();
    }
    // containerd parses "dummy://<name>": a host is required, the object starts at the first
    // ':' or '@' of the path.
    let Some((host, path)) = name.split_once('/') else {
        return name.to_owned();
    };
    if host.is_empty() {
        return name.to_owned();
    }
    match path.find([':', '@']) {
        Some(i) => {
            let object = &path[i..];
            let object = object.strip_prefix(':').unwrap_or(object);
            if object.is_empty() || object.starts_with('@') {
                name.to_owned()
            } else {
                object.to_owned()
            }
        }
        None => name.to_owned(),
    }
}

fn split_docker_domain(name: &str) -> (&str, String) {
    let Some((maybe_domain, maybe_remote)) = name.split_once('/') else {
        return (DEFAULT_DOMAIN, format!("{OFFICIAL_PREFIX}{name}"));
    };
    let (domain, remote) = if maybe_domain == "localhost"
        || maybe_domain.contains(['.', ':'])
        || maybe_domain.to_lowercase() != maybe_domain
    {
        if maybe_domain == LEGACY_DOMAIN {
            (DEFAULT_DOMAIN, maybe_remote.to_owned())
        } else {
            (maybe_domain, maybe_remote.to_owned())
        }
    } else {
        (DEFAULT_DOMAIN, name.to_owned())
    };
    if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        return (domain, format!("{OFFICIAL_PREFIX}{remote}"));
    }
    (domain, remote)
}

/// distribution's reference grammar: `[domain[:port]/]path(/path)*[:tag][@digest]`, whose first
/// component is a domain only when it has to be (it is already split off here).
fn parse(s: &str) -> std::result::Result<Named, String> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        check_digest(d)?;
    }
    // A tag follows the last ':' after the last '/' (a port's ':' is before a '/').
    let last_slash = rest.rfind('/').ok_or("no repository path")?;
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let mut bytes = t.bytes();
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let ok = t.len() <= MAX_TAG_LEN
            && bytes.next().is_some_and(word)
            && bytes.all(|b| word(b) || b == b'.' || b == b'-');
        if !ok {
            return Err(format!("invalid tag {t:?}"));
        }
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "repository name must not be more than {MAX_NAME_LEN} characters"
        ));
    }
    let (domain, path) = name.split_once('/').ok_or("no repository path")?;
    check_domain(domain)?;
    for component in path.split('/') {
        check_path_component(component)?;
    }
    Ok(Named {
        name: name.to_owned(),
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    })
}

fn check_domain(d: &str) -> std::result::Result<(), String> {
    let bad = || format!("invalid domain {d:?}");
    let (host, port) = if let Some(v6) = d.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(bad());
        }
        match after {
            "" => return Ok(()),
            p => ("", p.strip_prefix(':').ok_or_else(bad).map(Some)?),
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
    }
    if d.starts_with('[') {
        return Ok(());
    }
    for label in host.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(c: &str) -> std::result::Result<(), String> {
    let bad = || format!("invalid repository path component {c:?}");
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return Err(bad());
        }
    }
    Ok(())
}

fn check_digest(d: &str) -> std::result::Result<(), String> {
    let bad = || format!("invalid digest {d:?}");
    let (alg, hex) = d.split_once(':').ok_or_else(bad)?;
    if alg.is_empty() || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    // go-digest validates the algorithms it knows.
    let want = match alg {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    };
    match want {
        Some(n) if hex.len() != n || hex.bytes().any(|b| b.is_ascii_uppercase()) => Err(bad()),
        Some(_) => Ok(()),
        None => Err(format!("unsupported digest algorithm in {d:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_docker_refs() {
        let n = |s: &str| Named::parse_docker_ref(s).unwrap().to_string();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("index.docker.io/foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(n("docker.io/ubuntu"), "docker.io/library/ubuntu:latest");
        assert_eq!(n("localhost/x:y"), "localhost/x:y");
        assert_eq!(n("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(n("[::1]:5000/a"), "[::1]:5000/a:latest");
        assert_eq!(n(&format!("a:t@{D}")), format!("docker.io/library/a@{D}"));
        assert_eq!(
            n("quay.io/a-b/c__d.e:v1.0-rc"),
            "quay.io/a-b/c__d.e:v1.0-rc"
        );
        for bad in [
            "",
            "Busybox",
            "a/B",
            "a:",
            "a:-x",
            "a/../b",
            "/a",
            "a//b",
            "a@sha256:abc",
            "-a",
            "a-",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            &format!("a:{}", "t".repeat(129)),
            &format!("{}/a", "x".repeat(300)),
        ] {
            assert!(Named::parse_docker_ref(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn familiar_names() {
        let f = |s: &str| Named::parse_normalized(s).unwrap().familiar();
        assert_eq!(f("docker.io/library/busybox:latest"), "busybox:latest");
        assert_eq!(f("docker.io/library/busybox"), "busybox:latest");
        assert_eq!(f("docker.io/foo/bar:1"), "foo/bar:1");
        assert_eq!(f("localhost:5000/x:y"), "localhost:5000/x:y");
    }

    #[test]
    fn oci_ref_names() {
        assert_eq!(
            oci_reference_name("docker.io/library/busybox:latest"),
            "latest"
        );
        assert_eq!(oci_reference_name("localhost:5000/a/b:v1"), "v1");
        let digested = format!("docker.io/library/a@{D}");
        assert_eq!(oci_reference_name(&digested), digested);
        assert_eq!(oci_reference_name("busybox"), "busybox");
        assert_eq!(oci_reference_name("example.com/x"), "example.com/x");
    }
}
