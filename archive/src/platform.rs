//! Platforms and platform selection with containerd's semantics (its `platforms` package):
//! normalisation of OS and architecture names, exact matchers in a preference order, and
//! "all platforms".

use serde::{Deserialize, Serialize};

use berth_errdefs::{Error, Result};

/// image-spec's platform (field order is the JSON order containerd writes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub os_features: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub variant: String,
}

/// Go leaves a field alone when the JSON says `null`; serde would refuse it.
fn null_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Platform {
    /// containerd's `DefaultSpec` for this host (linux; the Go name of the architecture).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            ..Platform::default()
        }
        .normalize()
    }

    /// Parse `os[/arch[/variant]]` or `arch` as containerd's `platforms.Parse` does for the
    /// forms clients send (`linux/amd64`, `linux/arm/v7`, `arm64`).
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || Error::invalid(format!("{s:?}: invalid platform specifier"));
        if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
            return Err(bad());
        }
        let known_os = |p: &str| {
            matches!(
                p.to_ascii_lowercase().as_str(),
                "linux"
                    | "windows"
                    | "darwin"
                    | "macos"
                    | "freebsd"
                    | "netbsd"
                    | "openbsd"
                    | "solaris"
                    | "illumos"
                    | "android"
                    | "ios"
                    | "aix"
                    | "plan9"
                    | "js"
                    | "wasip1"
                    | "dragonfly"
            )
        };
        let p = match parts.as_slice() {
            [one] if known_os(one) => Platform {
                os: one.to_string(),
                architecture: Platform::host().architecture,
                ..Platform::default()
            },
            [one] => Platform {
                os: "linux".into(),
                architecture: one.to_string(),
                ..Platform::default()
            },
            [os, arch] => Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                ..Platform::default()
            },
            [os, arch, variant] => Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: variant.to_string(),
                ..Platform::default()
            },
            _ => return Err(bad()),
        };
        Ok(p.normalize())
    }

    /// containerd's `platforms.Normalize`.
    pub fn normalize(mut self) -> Platform {
        self.os = if self.os.is_empty() {
            "linux".to_owned()
        } else {
            match self.os.to_lowercase().as_str() {
                "macos" => "darwin".to_owned(),
                os => os.to_owned(),
            }
        };
        let arch = self.architecture.to_lowercase();
        let variant = self.variant.to_lowercase();
        let (arch, variant) = match arch.as_str() {
            "i386" => ("386".to_owned(), String::new()),
            "x86_64" | "x86-64" | "amd64" => (
                "amd64".to_owned(),
                if variant == "v1" {
                    String::new()
                } else {
                    variant
                },
            ),
            "aarch64" | "arm64" => (
                "arm64".to_owned(),
                match variant.as_str() {
                    "8" | "v8" | "v8.0" => String::new(),
                    "9" | "9.0" | "v9.0" => "v9".to_owned(),
                    _ => variant,
                },
            ),
            "armhf" => ("arm".to_owned(), "v7".to_owned()),
            "armel" => ("arm".to_owned(), "v6".to_owned()),
            "arm" => (
                "arm".to_owned(),
                match variant.as_str() {
                    "" | "7" => "v7".to_owned(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                },
            ),
            _ => (arch, variant),
        };
        self.architecture = arch;
        self.variant = variant;
        if !self.os_features.is_empty() {
            self.os_features.sort();
            self.os_features.dedup();
        }
        self
    }

    /// containerd's exact matcher: same OS, architecture and variant after normalisation, the
    /// OS version only for Windows, and the candidate's OS features a subset of ours.
    fn matches(&self, candidate: &Platform) -> bool {
        let c = candidate.clone().normalize();
        if self.os != c.os || self.architecture != c.architecture || self.variant != c.variant {
            return false;
        }
        if self.os == "windows"
            && !self.os_version.is_empty()
            && !c.os_version.is_empty()
            && self.os_version != c.os_version
        {
            return false;
        }
        c.os_features.iter().all(|f| self.os_features.contains(f))
    }
}

/// Which platforms an import walks or an export includes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformMatcher {
    /// Every platform (containerd's `platforms.All`).
    All,
    /// Exactly these, preferred in this order (`platforms.Ordered`); a single entry is
    /// containerd's `OnlyStrict`.
    Ordered(Vec<Platform>),
}

impl PlatformMatcher {
    /// containerd's `DefaultStrict`: this host's platform, exactly.
    pub fn default_strict() -> PlatformMatcher {
        PlatformMatcher::Ordered(vec![Platform::host()])
    }

    /// `platforms.Ordered(given...)`, or All when none are given, as containerd's image
    /// store filters an import.
    pub fn ordered_or_all(given: Vec<Platform>) -> PlatformMatcher {
        if given.is_empty() {
            PlatformMatcher::All
        } else {
            PlatformMatcher::Ordered(given.into_iter().map(Platform::normalize).collect())
        }
    }

    pub fn matches(&self, p: &Platform) -> bool {
        match self {
            PlatformMatcher::All => true,
            PlatformMatcher::Ordered(list) => list.iter().any(|m| m.matches(p)),
        }
    }

    /// containerd's `Less`: the first matcher that takes one but not the other decides.
    pub fn less(&self, a: &Platform, b: &Platform) -> bool {
        let PlatformMatcher::Ordered(list) = self else {
            return false;
        };
        for m in list {
            let (am, bm) = (m.matches(a), m.matches(b));
            if am && !bm {
                return true;
            }
            if am || bm {
                if am && bm && a.os_features.len() != b.os_features.len() {
                    return a.os_features.len() > b.os_features.len();
                }
                return false;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
            ..Platform::default()
        }
    }

    #[test]
    fn normalizes_as_containerd() {
        assert_eq!(p("", "x86_64", "").normalize(), p("linux", "amd64", ""));
        assert_eq!(
            p("Linux", "aarch64", "v8").normalize(),
            p("linux", "arm64", "")
        );
        assert_eq!(p("linux", "armhf", "").normalize(), p("linux", "arm", "v7"));
        assert_eq!(p("linux", "arm", "").normalize(), p("linux", "arm", "v7"));
        assert_eq!(p("linux", "arm", "6").normalize(), p("linux", "arm", "v6"));
        assert_eq!(p("macos", "i386", "x").normalize(), p("darwin", "386", ""));
        let mut f = p("windows", "amd64", "");
        f.os_features = vec!["b".into(), "a".into(), "b".into()];
        assert_eq!(f.normalize().os_features, vec!["a", "b"]);
    }

    #[test]
    fn ordered_matches_exactly_and_orders() {
        let m = PlatformMatcher::Ordered(vec![p("linux", "arm64", ""), p("linux", "amd64", "")]);
        assert!(m.matches(&p("linux", "aarch64", "v8")));
        assert!(!m.matches(&p("linux", "386", "")));
        assert!(!m.matches(&p("linux", "arm", "v7")));
        assert!(m.less(&p("linux", "arm64", ""), &p("linux", "amd64", "")));
        assert!(!m.less(&p("linux", "amd64", ""), &p("linux", "arm64", "")));
        assert!(PlatformMatcher::All.matches(&p("plan9", "mips", "")));
    }

    #[test]
    fn parses_specifiers() {
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap(),
            p("linux", "arm", "v7")
        );
        assert_eq!(
            Platform::parse("linux/arm64").unwrap(),
            p("linux", "arm64", "")
        );
        assert_eq!(Platform::parse("arm64").unwrap(), p("linux", "arm64", ""));
        assert!(Platform::parse("linux//x").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }
}
