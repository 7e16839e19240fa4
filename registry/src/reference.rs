//! Image references as docker and containerd read them: `[domain[:port]/]path[:tag][@digest]`,
//! normalised the docker way (`busybox` → `docker.io/library/busybox:latest`). Parsing is by
//! hand against the distribution grammar, so hostile input is refused before it reaches a URL.

use crate::error::Error;
use std::fmt;

/// The domain docker-style short names live under.
pub const DOCKER_DOMAIN: &str = "docker.io";
/// The host that actually serves `docker.io` (containerd's default for it).
pub const DOCKER_REGISTRY_HOST: &str = "registry-1.docker.io";
/// The distribution spec's bound on a repository name with its domain.
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalised reference. `domain` is the name's registry part (`docker.io`, never
/// `registry-1.docker.io`), `repository` the path below it; at least one of tag and digest is set.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parse a reference the way `ctr` and `docker pull` do, adding docker.io, `library/` and
    /// `:latest` where the short forms leave them out.
    pub fn parse(input: &str) -> Result<Reference, Error> {
        let bad = |why: &str| Error::InvalidReference(format!("{}: {why}", printable(input)));
        if input.is_empty() {
            return Err(bad("empty reference"));
        }
        if input.len() > MAX_NAME_LEN + 1 + MAX_TAG_LEN + 1 + 7 + 128 {
            return Err(bad("too long"));
        }
        if !input.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("control, space or non-ASCII characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (r, Some(parse_digest(d).map_err(|e| bad(&e))?)),
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/', so `host:5000/repo` has none.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t).map_err(|e| bad(&e))?;
        }
        let (domain, repository) = split_domain(name);
        check_domain(&domain).map_err(|e| bad(&e))?;
        check_path(&repository).map_err(|e| bad(&e))?;
        if domain.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(bad("repository name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            domain,
            repository,
            tag,
            digest,
        })
    }

    /// The registry part of the name (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The default host serving this name: `registry-1.docker.io` for docker.io, else the domain.
    pub fn default_host(&self) -> &str {
        if self.domain == DOCKER_DOMAIN {
            DOCKER_REGISTRY_HOST
        } else {
            &self.domain
        }
    }

    /// What goes after `/manifests/`: the digest when there is one (it pins the content), else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository with another digest (and no tag), e.g. a platform manifest of an index.
    pub fn with_digest(&self, digest: &str) -> Result<Reference, Error> {
        Ok(Reference {
            digest: Some(parse_digest(digest).map_err(Error::InvalidReference)?),
            tag: None,
            ..self.clone()
        })
    }

    /// The same registry with another repository path (a cross-repository mount source).
    pub fn with_repository(&self, repository: &str) -> Result<Reference, Error> {
        check_path(repository)
            .map_err(|e| Error::InvalidReference(format!("{}: {e}", printable(repository))))?;
        Ok(Reference {
            repository: repository.to_string(),
            ..self.clone()
        })
    }

    /// `domain/repository`, the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl std::str::FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Reference::parse(s)
    }
}

/// docker's rule: the first component is a domain only if it has a '.' or ':' or is `localhost`;
/// `index.docker.io` is docker.io; docker.io names of one component live under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_DOMAIN.to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_DOMAIN.to_string()
    } else {
        domain
    };
    if domain == DOCKER_DOMAIN && !path.contains('/') {
        (domain, format!("library/{path}"))
    } else {
        (domain, path)
    }
}

/// `sha256:<64 lowercase hex>` (the only algorithm a registry is asked for here), or another
/// registered algorithm's well-formed digest, refused later if unsupported.
pub fn parse_digest(d: &str) -> Result<String, String> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or_else(|| "digest without an algorithm".to_string())?;
    let hex_ok = |len: usize| {
        hex.len() == len
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match alg {
        "sha256" if hex_ok(64) => Ok(d.to_string()),
        "sha512" if hex_ok(128) => Ok(d.to_string()),
        "sha256" | "sha512" => Err(format!("malformed {alg} digest")),
        _ => Err("unsupported digest algorithm".to_string()),
    }
}

fn check_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TAG_LEN
        && t.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err("invalid tag (want [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})".to_string())
    }
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| "unterminated IPv6 address".to_string())?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address".to_string())?;
        match after {
            "" => return Ok(()),
            p => (
                "",
                Some(p.strip_prefix(':').ok_or("junk after IPv6 address")?),
            ),
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err("invalid port".to_string());
        }
        if p.parse::<u32>().map_or(true, |n| n == 0 || n > 65535) {
            return Err("port out of range".to_string());
        }
    }
    if host.is_empty() && port.is_some() && d.starts_with('[') {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("invalid registry host".to_string());
    }
    Ok(())
}

/// Path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, joined by single slashes.
fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty repository name".to_string());
    }
    if p.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository name must be lowercase".to_string());
    }
    for comp in p.split('/') {
        if !component_ok(comp) {
            return Err(format!(
                "invalid repository path component {:?}",
                printable(comp)
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or any number of '-', always between alphanumerics.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// Input echoed in an error, cut short and with anything unprintable escaped.
pub(crate) fn printable(s: &str) -> String {
    let cut: String = s.chars().take(128).collect();
    let mut out = cut.escape_default().to_string();
    if s.chars().count() > 128 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("index.docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("localhost:5000/app:v1"), "localhost:5000/app:v1");
        assert_eq!(norm("127.0.0.1:5000/a/b/c"), "127.0.0.1:5000/a/b/c:latest");
        assert_eq!(norm("[::1]:5000/app"), "[::1]:5000/app:latest");
        assert_eq!(
            norm("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.object(), d);
        let r = Reference::parse(&format!("ghcr.io/o/r:t@{d}")).unwrap();
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.default_host(), "ghcr.io");
        assert_eq!(
            Reference::parse("busybox").unwrap().default_host(),
            DOCKER_REGISTRY_HOST
        );
        assert_eq!(norm("a__b/c.d-e---f"), "docker.io/a__b/c.d-e---f:latest");
    }

    #[test]
    fn hostile_references_refused() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-tag",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "bad host/app",
            "host:99999/app",
            "host:0/app",
            "host:/app",
            "../etc/passwd",
            "a//b",
            "a/b/",
            "/a",
            "a___b",
            "a..b",
            "-a",
            "a\nb",
            "a\u{0}b",
            "ex\u{e9}mple.com/a",
            "[::1/app",
            "[zz]:5000/app",
            "host/app?x=1",
            "host/app#frag",
            "host/a%2fb",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("host.io/{}", "a".repeat(300));
        assert!(Reference::parse(&long).is_err());
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        let e = Reference::parse("a\u{1b}[31m").unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e}");
    }
}
