//! Registry authorization: the `WWW-Authenticate` challenge parser (RFC 7235; a fuzz target),
//! and the bearer tokens fetched from a challenge's realm, cached per host and scope until they
//! expire.
//!
//! Where credentials go (containerd's rule, which docker shares): the credentials for registry
//! host H are asked for only when H itself answers 401, and are sent only to H (Basic) or to the
//! token realm named by H's challenge (Bearer), since Docker Hub's realm is a different host
//! (auth.docker.io). The realm must be HTTPS unless it is H itself or a loopback address, so a
//! challenge cannot send them in clear text elsewhere. They are never sent on a redirect to
//! another host, and never to a layer's foreign URL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest header value parsed; anything longer is not a challenge a registry sends.
const MAX_HEADER_LEN: usize = 16 * 1024;
const MAX_PARAMS: usize = 32;

/// One challenge: a scheme and its parameters (names lowercased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }

    pub fn is_basic(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("basic")
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Parse a `WWW-Authenticate` value into its challenges. Several challenges may share one value
/// (`Basic realm="x", Bearer realm="y"`); a token68 value is kept under the empty name.
/// Malformed parts end the parse: what was read before them is returned.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    if s.len() > MAX_HEADER_LEN {
        return Vec::new();
    }
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> Option<String> {
        let start = *i;
        while *i < s.len() && is_tchar(s[*i]) {
            *i += 1;
        }
        (start < *i).then(|| String::from_utf8_lossy(&s[start..*i]).into_owned())
    };
    loop {
        // Empty list elements (",,") are allowed by the list grammar.
        while i < s.len() && (s[i] == b',' || s[i] == b' ' || s[i] == b'\t') {
            i += 1;
        }
        if i >= s.len() {
            break;
        }
        let Some(scheme) = token(&mut i) else { break };
        let mut ch = Challenge {
            scheme,
            params: Vec::new(),
        };
        skip_ws(&mut i);
        // Parameters until one that is not `name=value` (the next challenge's scheme).
        loop {
            while i < s.len() && (s[i] == b',' || s[i] == b' ' || s[i] == b'\t') {
                i += 1;
            }
            let save = i;
            let Some(name) = token(&mut i) else { break };
            skip_ws(&mut i);
            if i >= s.len() || s[i] != b'=' {
                // A token not followed by '=' starts the next challenge.
                i = save;
                break;
            }
            // token68 ends in '='s: `Bearer abc==`.
            let mut j = i;
            while j < s.len() && s[j] == b'=' {
                j += 1;
            }
            let mut k = j;
            skip_ws(&mut k);
            if ch.params.is_empty() && (k >= s.len() || s[k] == b',') {
                ch.params
                    .push((String::new(), format!("{name}{}", &header[i..j])));
                i = j;
                continue;
            }
            i += 1;
            skip_ws(&mut i);
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                let mut closed = false;
                while i < s.len() {
                    match s[i] {
                        b'\\' if i + 1 < s.len() => {
                            v.push(s[i + 1]);
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            closed = true;
                            break;
                        }
                        c => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                if !closed {
                    out.push(ch);
                    return out;
                }
                String::from_utf8_lossy(&v).into_owned()
            } else {
                match token(&mut i) {
                    Some(t) => t,
                    None => {
                        out.push(ch);
                        return out;
                    }
                }
            };
            if ch.params.len() < MAX_PARAMS {
                ch.params.push((name.to_ascii_lowercase(), value));
            }
            skip_ws(&mut i);
        }
        out.push(ch);
    }
    out
}

/// Whether the token realm `scheme://realm_host` of a challenge from `registry_host` may be
/// sent that registry's credentials: over HTTPS, or in clear text only to the registry itself
/// or a loopback address (test and local registries).
pub fn realm_may_have_credentials(scheme: &str, realm_host: &str, registry_host: &str) -> bool {
    match scheme {
        "https" => true,
        "http" => realm_host == registry_host || crate::hosts::is_loopback(realm_host),
        _ => false,
    }
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: String,
    pub expires: Instant,
}

/// Tokens by (host, scope). A token is used until shortly before its `expires_in` (60 s when
/// the token server does not say, as the distribution spec defines).
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<(String, String), Token>>,
}

impl TokenCache {
    pub fn get(&self, host: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(&(host.to_string(), scope.to_string()))
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.value.clone())
    }

    pub fn put(&self, host: &str, scope: &str, value: String, expires_in: Option<u64>) {
        // A little early, so a token is not sent in the second it expires.
        let lifetime = Duration::from_secs(expires_in.unwrap_or(60).clamp(1, 24 * 3600));
        let lifetime = lifetime.saturating_sub(Duration::from_secs(lifetime.as_secs() / 10));
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|_, t| t.expires > Instant::now());
        tokens.insert(
            (host.to_string(), scope.to_string()),
            Token {
                value,
                expires: Instant::now() + lifetime,
            },
        );
    }

    pub fn invalidate(&self, host: &str, scope: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.remove(&(host.to_string(), scope.to_string()));
    }
}

/// The token server's answer (docker's `token` or OAuth's `access_token`).
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert!(c[0].is_bearer());
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/busybox:pull"));
    }

    #[test]
    fn several_challenges_and_odd_spacing() {
        let c = parse_challenges(
            r#"Basic realm="Registry Realm" , Bearer  realm = "http://a/b\"c" ,service=svc, error="insufficient_scope""#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].is_basic());
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].param("realm"), Some("http://a/b\"c"));
        assert_eq!(c[1].param("service"), Some("svc"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        let c = parse_challenges("Basic");
        assert_eq!(c.len(), 1);
        assert!(c[0].params.is_empty());
        let c = parse_challenges("Negotiate abc123==, Basic realm=x");
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].param(""), Some("abc123=="));
        assert_eq!(c[1].param("realm"), Some("x"));
    }

    #[test]
    fn malformed_headers_do_not_panic() {
        for h in [
            "",
            ",",
            "=",
            "\"",
            "Bearer realm=\"unterminated",
            "Bearer realm=",
            "Bearer =x",
            "Bearer realm=\"a\\",
            "é=ü",
            "Bearer realm=\"\u{0}\"",
            ",,,Bearer,,,",
        ] {
            let _ = parse_challenges(h);
        }
        let huge = "a=b,".repeat(10_000);
        assert!(parse_challenges(&huge).is_empty());
        let many = format!("Bearer {}", "k=v,".repeat(1000));
        assert!(parse_challenges(&many)[0].params.len() <= MAX_PARAMS);
    }

    #[test]
    fn realm_credentials_rule() {
        assert!(realm_may_have_credentials(
            "https",
            "auth.docker.io",
            "registry-1.docker.io"
        ));
        assert!(realm_may_have_credentials(
            "http",
            "reg.lan:5000",
            "reg.lan:5000"
        ));
        assert!(realm_may_have_credentials(
            "http",
            "127.0.0.1:9000",
            "127.0.0.1:5000"
        ));
        assert!(!realm_may_have_credentials(
            "http",
            "evil.example",
            "reg.lan:5000"
        ));
        assert!(!realm_may_have_credentials("ftp", "reg.lan", "reg.lan"));
    }

    #[test]
    fn token_cache_expiry() {
        let cache = TokenCache::default();
        cache.put("h", "s", "t".into(), Some(3600));
        assert_eq!(cache.get("h", "s").as_deref(), Some("t"));
        assert_eq!(cache.get("h", "other"), None);
        cache.invalidate("h", "s");
        assert_eq!(cache.get("h", "s"), None);
    }
}
