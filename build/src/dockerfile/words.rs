//! docker's word rules: splitting arguments on blanks outside quotes, and variable substitution
//! with quote removal (`$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`,
//! `${VAR+word}`, `${VAR:?message}`; single quotes literal, the escape character escaping the
//! next one, inside double quotes only `"`, `$` and itself).

use crate::Error;

/// Looks names up while substituting; remembers which it was asked for, for the layer cache.
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;
}

impl Lookup for std::collections::BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::BTreeMap::get(self, name).cloned()
    }
}

/// Splits on blanks outside quotes, keeping the quotes and escapes for [`expand`].
pub fn split_raw(text: &str, escape: char) -> Result<Vec<String>, Error> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == escape && quote != Some('\'') {
            word.push(c);
            if let Some(next) = chars.next() {
                word.push(next);
            }
            in_word = true;
            continue;
        }
        match quote {
            Some(q) => {
                word.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
                word.push(c);
                in_word = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(Error::new(format!("unmatched {q} quote")));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

struct Expander<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    lookup: &'a dyn Lookup,
    used: Vec<String>,
}

/// Substitutes variables in one word and removes its quotes and escapes; returns the names it
/// looked up (set or not), in order, once each.
pub fn expand(
    word: &str,
    escape: char,
    lookup: &dyn Lookup,
) -> Result<(String, Vec<String>), Error> {
    let mut e = Expander {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        lookup,
        used: Vec::new(),
    };
    let out = e.until(None)?;
    Ok((out, e.used))
}

/// [`expand`] when the caller does not need the names.
pub fn expand_word(word: &str, escape: char, lookup: &dyn Lookup) -> Result<String, Error> {
    expand(word, escape, lookup).map(|(w, _)| w)
}

impl Expander<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn get(&mut self, name: &str) -> Option<String> {
        if !self.used.iter().any(|u| u == name) {
            self.used.push(name.to_string());
        }
        self.lookup.get(name)
    }

    /// Reads up to `stop` (consumed) or the end; `stop` is `}` inside `${VAR:-...}`.
    fn until(&mut self, stop: Option<char>) -> Result<String, Error> {
        let mut out = String::new();
        loop {
            let Some(c) = self.next() else {
                if stop.is_some() {
                    return Err(Error::new("missing '}' in variable substitution"));
                }
                return Ok(out);
            };
            if Some(c) == stop {
                return Ok(out);
            }
            if c == self.escape {
                match self.next() {
                    Some(n) => out.push(n),
                    None => out.push(c),
                }
            } else if c == '\'' {
                loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(n) => out.push(n),
                        None => return Err(Error::new("unmatched ' quote")),
                    }
                }
            } else if c == '"' {
                self.double_quoted(&mut out)?;
            } else if c == '$' {
                self.dollar(&mut out)?;
            } else {
                out.push(c);
            }
        }
    }

    fn double_quoted(&mut self, out: &mut String) -> Result<(), Error> {
        loop {
            match self.next() {
                Some('"') => return Ok(()),
                Some('$') => self.dollar(out)?,
                Some(c) if c == self.escape => match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.pos += 1;
                        out.push(n);
                    }
                    _ => out.push(c),
                },
                Some(c) => out.push(c),
                None => return Err(Error::new("unmatched \" quote")),
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    fn dollar(&mut self, out: &mut String) -> Result<(), Error> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let name = self.name();
                if name.is_empty() {
                    return Err(Error::new("bad substitution: ${} needs a variable name"));
                }
                let value = self.get(&name);
                let colon = self.peek() == Some(':');
                if colon {
                    self.pos += 1;
                }
                match self.next() {
                    Some('}') if !colon => out.push_str(&value.unwrap_or_default()),
                    Some(op @ ('-' | '+' | '?')) => {
                        let word = self.until(Some('}'))?;
                        let set = match &value {
                            Some(v) => !colon || !v.is_empty(),
                            None => false,
                        };
                        match op {
                            '-' => {
                                if set {
                                    out.push_str(&value.unwrap_or_default());
                                } else {
                                    out.push_str(&word);
                                }
                            }
                            '+' => {
                                if set {
                                    out.push_str(&word);
                                }
                            }
                            _ => {
                                if !set {
                                    let why = if word.is_empty() {
                                        "is not set".to_string()
                                    } else {
                                        word
                                    };
                                    return Err(Error::new(format!("{name}: {why}")));
                                }
                                out.push_str(&value.unwrap_or_default());
                            }
                        }
                    }
                    Some(other) => {
                        return Err(Error::new(format!(
                            "unsupported modifier {other:?} in ${{{name}...}}"
                        )))
                    }
                    None => return Err(Error::new("missing '}' in variable substitution")),
                }
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let name = self.name();
                out.push_str(&self.get(&name).unwrap_or_default());
            }
            _ => out.push('$'),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env() -> BTreeMap<String, String> {
        [("A", "alpha"), ("EMPTY", ""), ("P", "/usr/bin")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn x(word: &str) -> String {
        expand_word(word, '\\', &env()).unwrap()
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(x("$A"), "alpha");
        assert_eq!(x("${A}b"), "alphab");
        assert_eq!(x("$Ab"), "");
        assert_eq!(x("x$UNSET-y"), "x-y");
        assert_eq!(x("$P:/bin"), "/usr/bin:/bin");
    }

    #[test]
    fn defaults_and_alternatives() {
        assert_eq!(x("${UNSET:-d}"), "d");
        assert_eq!(x("${EMPTY:-d}"), "d");
        assert_eq!(x("${EMPTY-d}"), "");
        assert_eq!(x("${UNSET-d}"), "d");
        assert_eq!(x("${A:-d}"), "alpha");
        assert_eq!(x("${A:+alt}"), "alt");
        assert_eq!(x("${EMPTY:+alt}"), "");
        assert_eq!(x("${EMPTY+alt}"), "alt");
        assert_eq!(x("${UNSET:+alt}"), "");
        assert_eq!(x("${UNSET:-${A}x}"), "alphax");
    }

    #[test]
    fn required_values() {
        let err = expand_word("${UNSET:?needed}", '\\', &env()).unwrap_err();
        assert_eq!(err.message, "UNSET: needed");
        assert_eq!(x("${A:?no}"), "alpha");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(x("'$A'"), "$A");
        assert_eq!(x("\"$A b\""), "alpha b");
        assert_eq!(x("\\$A"), "$A");
        assert_eq!(x("\"\\$A\\\"\""), "$A\"");
        assert_eq!(x("\"a\\b\""), "a\\b");
        assert_eq!(x("a\\ b"), "a b");
        assert_eq!(x("$"), "$");
        assert_eq!(x("a$ b"), "a$ b");
        assert_eq!(expand_word("`$A", '`', &env()).unwrap(), "$A");
    }

    #[test]
    fn errors() {
        for bad in ["${A", "${}", "'a", "\"a", "${A/x/y}", "${A:-x"] {
            assert!(expand_word(bad, '\\', &env()).is_err(), "{bad}");
        }
    }

    #[test]
    fn used_names_are_reported_once() {
        let (_, used) = expand("$A${B:-$A}$C", '\\', &env()).unwrap();
        assert_eq!(used, ["A", "B", "C"]);
    }

    #[test]
    fn splitting_keeps_quotes_together() {
        let words = split_raw(r#"a "b c" 'd e'\ f g\ h"#, '\\').unwrap();
        assert_eq!(words, ["a", "\"b c\"", r"'d e'\ f", r"g\ h"]);
        assert!(split_raw("\"open", '\\').is_err());
    }
}
