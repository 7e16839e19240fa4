//! `.dockerignore` as docker reads it (moby's patternmatcher): one pattern a line, `#` lines
//! and blank lines skipped, each pattern cleaned (`a/./b/../c` → `a/c`) with a leading `/`
//! dropped; `*` and `?` stay within a path segment, `**` spans any number of segments (zero
//! too), `[...]` classes and `\` escapes as Go's filepath.Match. A path is excluded when the
//! last pattern that matches it — or one of its parent directories — is not a `!` exception.

use crate::Error;
use regex::Regex;

#[derive(Debug, Clone)]
struct Pattern {
    regex: Regex,
    exception: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

fn clean(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

fn to_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if in_class {
            match c {
                ']' => {
                    in_class = false;
                    out.push(']');
                }
                '\\' | '[' | '&' | '~' => {
                    let lit = if c == '\\' {
                        chars.get(i).copied()
                    } else {
                        Some(c)
                    };
                    if c == '\\' {
                        i += 1;
                    }
                    match lit {
                        Some(l) => {
                            out.push('\\');
                            out.push(l);
                        }
                        None => out.push_str("\\\\"),
                    }
                }
                c => out.push(c),
            }
            continue;
        }
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    out.push_str(".*");
                } else {
                    out.push_str("(.*/)?");
                }
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '\\' => match chars.get(i) {
                Some(n) => {
                    out.push_str(&regex::escape(&n.to_string()));
                    i += 1;
                }
                None => out.push_str("\\\\"),
            },
            '[' => {
                in_class = true;
                out.push('[');
                if matches!(chars.get(i), Some('!') | Some('^')) {
                    i += 1;
                    out.push('^');
                }
            }
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out.push('$');
    out
}

impl DockerIgnore {
    pub fn parse(text: &str) -> Result<DockerIgnore, Error> {
        let mut patterns = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if body.is_empty() {
                return Err(Error::new(format!(
                    ".dockerignore line {}: an exception (!) needs a pattern",
                    n + 1
                )));
            }
            let cleaned = clean(body);
            let cleaned = cleaned.strip_prefix('/').unwrap_or(&cleaned);
            let regex = Regex::new(&to_regex(cleaned)).map_err(|e| {
                Error::new(format!(
                    ".dockerignore line {}: bad pattern {body:?}: {e}",
                    n + 1
                ))
            })?;
            patterns.push(Pattern { regex, exception });
        }
        Ok(DockerIgnore { patterns })
    }

    /// Whether an exception could bring back something under an excluded directory (then the
    /// walk must look inside it).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// `path` is relative to the context root, `/`-separated.
    pub fn excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let parents: Vec<&str> = path.split('/').collect();
        let mut matched = false;
        for p in &self.patterns {
            if p.exception != matched {
                continue;
            }
            let mut hit = p.regex.is_match(&path);
            if !hit {
                for end in 1..parents.len() {
                    if p.regex.is_match(&parents[..end].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !p.exception;
            }
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn plain_names_and_their_contents() {
        let i = ig("# comment\n\nnode_modules\n/build\n./tmp/../cache\n");
        assert!(i.excluded("node_modules"));
        assert!(i.excluded("node_modules/a/b.js"));
        assert!(
            !i.excluded("src/node_modules"),
            "no implicit **/ as in .gitignore"
        );
        assert!(i.excluded("build/out"));
        assert!(i.excluded("cache"));
        assert!(!i.excluded("tmp"));
    }

    #[test]
    fn star_stays_in_a_segment() {
        let i = ig("*.o\ndocs/*.md\n");
        assert!(i.excluded("a.o"));
        assert!(!i.excluded("src/a.o"));
        assert!(i.excluded("docs/x.md"));
        assert!(!i.excluded("docs/sub/x.md"));
        let q = ig("file?.txt\n");
        assert!(q.excluded("file1.txt"));
        assert!(!q.excluded("file10.txt"));
    }

    #[test]
    fn double_star_spans_directories() {
        let i = ig("**/*.log\nsecret/**\na/**/z\n");
        assert!(i.excluded("x.log"));
        assert!(i.excluded("deep/er/x.log"));
        assert!(i.excluded("secret/k"));
        assert!(i.excluded("a/z"));
        assert!(i.excluded("a/b/c/z"));
        assert!(!i.excluded("a/b/c/y"));
    }

    #[test]
    fn exceptions_and_order() {
        let i = ig("*.md\n!README.md\n");
        assert!(i.excluded("CHANGES.md"));
        assert!(!i.excluded("README.md"));
        let later = ig("!README.md\n*.md\n");
        assert!(later.excluded("README.md"), "the last match wins");
        let dir = ig("docs\n!docs/keep.txt\n");
        assert!(dir.excluded("docs/drop.txt"));
        assert!(!dir.excluded("docs/keep.txt"));
        assert!(dir.has_exceptions());
    }

    #[test]
    fn classes_and_escapes() {
        let i = ig("[a-c].txt\n[!x]y\n\\*star\n");
        assert!(i.excluded("b.txt"));
        assert!(!i.excluded("d.txt"));
        assert!(i.excluded("zy"));
        assert!(!i.excluded("xy"));
        assert!(i.excluded("*star"));
        assert!(!i.excluded("astar"));
        let dots = ig("a.b\n");
        assert!(!dots.excluded("axb"), "dots are literal");
    }

    #[test]
    fn bad_patterns_name_their_line() {
        let err = DockerIgnore::parse("ok\n[z-a]\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(DockerIgnore::parse("!\n").is_err());
    }

    #[test]
    fn any_pattern_text_parses_or_is_refused_without_panicking() {
        let alphabet: Vec<char> = "*?[]!^\\/.-a#\n ".chars().collect();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..12 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push(alphabet[(state as usize) % alphabet.len()]);
            }
            if let Ok(i) = DockerIgnore::parse(&text) {
                i.excluded("a/b.c");
                i.excluded("..");
            }
        }
    }
}
