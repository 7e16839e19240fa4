//! containerd's filter language, as accepted by the `filters` field of List requests.
//!
//! A filter string is a `,`-separated conjunction of selectors; a list of filter strings is a
//! disjunction. A selector is `<fieldpath>[<op><value>]`:
//!
//! * fieldpath: fields joined by `.`; a field is `[A-Za-z0-9_]+` or a `"`-quoted string
//!   with Go escapes (`labels."io.containerd/x"`).
//! * op: `==` (equal), `!=` (not equal), `~=` (regex match); with no op, the selector only tests
//!   that the field is present.
//! * value: a bare word (anything up to `,` or whitespace) or a `"`-quoted string; for `~=` the
//!   value may also be quoted with `/…/` or `|…|`, which saves escaping in regexes.
//!
//! The scanner and parser deliberately mirror containerd 1.6 (`filters/{scanner,parser,quote}.go`)
//! so that exactly the same strings are accepted and rejected, with the same error texts. Known
//! differences: an invalid regex is rejected at parse time (containerd logs it and matches
//! nothing), and regexes use Rust's `regex` syntax, whose `\d`, `\w`, `\s`, `\b` are
//! Unicode-aware where Go's are ASCII-only.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

use berth_errdefs::{Error, Result};

/// Something a filter can be evaluated against: returns the value at a field path, if present.
pub trait Adaptor {
    /// e.g. `["labels", "a.b"]` or `["name"]`; `Some` if present (possibly an empty string).
    fn field(&self, path: &[&str]) -> Option<String>;
}

/// A parsed filter: an OR of ANDs of selectors, with regexes compiled once.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Matches everything; set for an empty list or when any filter string is empty.
    always: bool,
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// Parse a list of filter strings, OR'ed. An empty list, or a list containing an empty string,
    /// matches everything (ctr sends `[""]`); like containerd, every string must still parse.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter> {
        let mut always = filters.is_empty();
        let mut any = Vec::with_capacity(filters.len());
        for f in filters {
            let f = f.as_ref();
            if f.is_empty() {
                always = true;
            } else {
                any.push(Parser::new(f).selectors()?);
            }
        }
        if always {
            any.clear();
        }
        Ok(Filter { always, any })
    }

    /// Parse one filter string (a conjunction). The empty string matches everything.
    pub fn parse(filter: &str) -> Result<Filter> {
        Self::parse_all(&[filter])
    }

    pub fn matches<A: Adaptor + ?Sized>(&self, a: &A) -> bool {
        self.always
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|sel| sel.matches(a)))
    }

    /// True when this is the match-everything filter, so callers can skip evaluation.
    pub fn matches_all(&self) -> bool {
        self.always
    }
}

/// Look up `labels.<key>` paths in a label map; the key is the rest of the path joined with `.`,
/// as containerd's adaptors do, so `labels.a.b` and `labels."a.b"` both find key `a.b`.
pub fn label_field(labels: &HashMap<String, String>, path: &[&str]) -> Option<String> {
    match path {
        ["labels", key] => labels.get(*key).cloned(),
        ["labels", rest @ ..] => labels.get(&rest.join(".")).cloned(),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Selector {
    /// `None` when a quoted component decoded to non-UTF-8 bytes (e.g. `"\xff"`): no adaptor can
    /// have such a field, so it is treated as absent.
    path: Option<Vec<String>>,
    op: Op,
}

/// Operand values are `None` when they decoded to non-UTF-8 bytes and so equal no field value.
#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(Option<String>),
    NotEqual(Option<String>),
    Matches(Regex),
}

/// Field paths up to this depth are passed to the adaptor without allocating.
const INLINE_PATH: usize = 8;

impl Selector {
    fn lookup<A: Adaptor + ?Sized>(&self, a: &A) -> Option<String> {
        let path = self.path.as_ref()?;
        if path.len() <= INLINE_PATH {
            let mut buf = [""; INLINE_PATH];
            for (slot, c) in buf.iter_mut().zip(path) {
                *slot = c;
            }
            a.field(&buf[..path.len()])
        } else {
            let v: Vec<&str> = path.iter().map(String::as_str).collect();
            a.field(&v)
        }
    }

    fn matches<A: Adaptor + ?Sized>(&self, a: &A) -> bool {
        let value = self.lookup(a);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => matches!((&value, want), (Some(v), Some(w)) if v == w),
            // containerd compares against "" for an absent field: `labels.x!=y` matches objects
            // without label x, `labels.x!=""` matches only those that have it non-empty.
            Op::NotEqual(want) => want.as_deref() != Some(value.as_deref().unwrap_or("")),
            // Likewise an absent field is matched as "", so `labels.x~=^$` selects missing labels.
            Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scanner

/// One decoded character, or the scanner's end/illegal markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rune {
    Eof,
    Illegal,
    Ch(char),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Eof,
    Quoted,
    Value,
    Field,
    Separator,
    Operator,
    Illegal,
    /// Any other single character, which the parser reports as unexpected.
    Char(char),
}

/// Byte-offset scanner. `pos` is the start and `ppos` the end of the last character read.
struct Scanner<'a> {
    input: &'a str,
    pos: usize,
    ppos: usize,
    /// Set after an operator: the next bare word is a value, which allows punctuation.
    value: bool,
    /// First error seen (sticky, as in containerd, so later fallout doesn't mask the cause).
    err: Option<&'static str>,
}

impl<'a> Scanner<'a> {
    fn new(input: &'a str) -> Self {
        Scanner {
            input,
            pos: 0,
            ppos: 0,
            value: false,
            err: None,
        }
    }

    fn error(&mut self, msg: &'static str) {
        self.err.get_or_insert(msg);
    }

    fn next(&mut self) -> Rune {
        self.pos = self.ppos;
        let Some(c) = self.input.get(self.ppos..).and_then(|s| s.chars().next()) else {
            return Rune::Eof;
        };
        self.ppos += c.len_utf8();
        match c {
            // Go decodes invalid UTF-8 as U+FFFD and rejects it; a literal U+FFFD is
            // indistinguishable there, so it is rejected here too.
            '\u{FFFD}' => {
                self.error("rune error");
                Rune::Illegal
            }
            '\0' => {
                self.error("unexpected null");
                Rune::Illegal
            }
            c => Rune::Ch(c),
        }
    }

    fn peek(&mut self) -> Rune {
        let (pos, ppos) = (self.pos, self.ppos);
        let r = self.next();
        self.pos = pos;
        self.ppos = ppos;
        r
    }

    fn text(&self, from: usize) -> &'a str {
        self.input.get(from..self.ppos).unwrap_or("")
    }

    fn scan(&mut self) -> (usize, Tok, &'a str) {
        let mut ch = self.next();
        let mut pos = self.pos;
        while let Rune::Ch(c) = ch {
            if is_quote(c) {
                let tok = if self.scan_quoted(c) {
                    Tok::Quoted
                } else {
                    Tok::Illegal
                };
                return (pos, tok, self.text(pos));
            }
            if is_separator(c) {
                self.value = false;
                return (pos, Tok::Separator, self.text(pos));
            }
            if is_operator(c) {
                self.consume_while(is_operator);
                self.value = true;
                return (pos, Tok::Operator, self.text(pos));
            }
            if c.is_whitespace() {
                ch = self.next();
                pos = self.pos;
                continue;
            }
            if self.value {
                // The first character of a value is taken as is; the rest must be graphic.
                self.consume_while(is_value_char);
                self.value = false;
                return (pos, Tok::Value, self.text(pos));
            }
            if is_field(c) {
                self.consume_while(is_field);
                return (pos, Tok::Field, self.text(pos));
            }
            return (self.pos, Tok::Char(c), "");
        }
        let tok = if ch == Rune::Eof {
            Tok::Eof
        } else {
            Tok::Illegal
        };
        (self.pos, tok, "")
    }

    fn consume_while(&mut self, pred: impl Fn(char) -> bool) {
        while let Rune::Ch(c) = self.peek() {
            if !pred(c) {
                break;
            }
            self.next();
        }
    }

    /// Consumes up to and including the closing `quote`; false if unterminated or a bad escape
    /// was seen (scanning continues past a bad escape so the token spans the whole literal).
    fn scan_quoted(&mut self, quote: char) -> bool {
        let mut legal = true;
        let mut ch = self.next();
        while ch != Rune::Ch(quote) {
            match ch {
                Rune::Eof | Rune::Illegal | Rune::Ch('\n') => {
                    self.error("quoted literal not terminated");
                    return false;
                }
                Rune::Ch('\\') => {
                    let (next, ok) = self.scan_escape(quote);
                    legal &= ok;
                    ch = next;
                }
                Rune::Ch(_) => ch = self.next(),
            }
        }
        legal
    }

    /// Validates the escape after a backslash; returns the character following it.
    fn scan_escape(&mut self, quote: char) -> (Rune, bool) {
        let ch = self.next();
        match ch {
            Rune::Ch('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\') => (self.next(), true),
            Rune::Ch(c) if c == quote => (self.next(), true),
            Rune::Ch('0'..='7') => self.scan_digits(ch, 8, 3),
            Rune::Ch('x') => {
                let first = self.next();
                self.scan_digits(first, 16, 2)
            }
            Rune::Ch('u') => {
                let first = self.next();
                self.scan_digits(first, 16, 4)
            }
            Rune::Ch('U') => {
                let first = self.next();
                self.scan_digits(first, 16, 8)
            }
            _ => {
                self.error("illegal escape sequence");
                (ch, false)
            }
        }
    }

    fn scan_digits(&mut self, mut ch: Rune, base: u32, mut n: usize) -> (Rune, bool) {
        while n > 0 && matches!(ch, Rune::Ch(c) if c.is_digit(base)) {
            ch = self.next();
            n -= 1;
        }
        if n > 0 {
            self.error("illegal numeric escape sequence");
            return (ch, false);
        }
        (ch, true)
    }
}

fn is_field(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn is_operator(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}

fn is_quote(c: char) -> bool {
    matches!(c, '/' | '|' | '"')
}

fn is_separator(c: char) -> bool {
    matches!(c, ',' | '.')
}

/// Go's `unicode.IsGraphic` minus spaces and `,`: letters, marks, numbers, punctuation, symbols.
fn is_value_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_graphic() && c != ',';
    }
    if c.is_whitespace() {
        return false;
    }
    // std has no general-category API; the regex crate's Unicode tables do.
    static GRAPHIC: OnceLock<Regex> = OnceLock::new();
    let re = GRAPHIC.get_or_init(|| {
        Regex::new(r"^[\p{L}\p{M}\p{N}\p{P}\p{S}]$").expect("constant regex compiles")
    });
    re.is_match(c.encode_utf8(&mut [0; 4]))
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    input: &'a str,
    sc: Scanner<'a>,
}

/// Decoded text of a field or value; `None` if its escapes produced non-UTF-8 bytes.
type Text = Option<String>;

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            sc: Scanner::new(input),
        }
    }

    /// An InvalidArgument error in containerd's format, pointing at the offending character.
    fn err(&self, pos: usize, msg: impl std::fmt::Display) -> Error {
        let input = self.input;
        let located = input.get(pos..).and_then(|rest| {
            let c = rest.chars().next()?;
            let (before, after) = (input.get(..pos)?, rest.get(c.len_utf8()..)?);
            Some(format!("[{before} >|{c}|< {after}]"))
        });
        let located = located.unwrap_or_else(|| format!("[{input}]"));
        Error::invalid(format!("filters: parse error: {located}: {msg}"))
    }

    fn scanner_err(&self, pos: usize) -> Error {
        self.err(pos, self.sc.err.unwrap_or("illegal input"))
    }

    fn selectors(&mut self) -> Result<Vec<Selector>> {
        let mut all = vec![self.selector()?];
        loop {
            match self.sc.peek() {
                Rune::Eof => return Ok(all),
                Rune::Ch(',') => {
                    self.sc.scan();
                    all.push(self.selector()?);
                }
                // Peeking does not skip whitespace, so e.g. trailing spaces land here.
                other => {
                    let c = match other {
                        Rune::Ch(c) => c,
                        _ => '\u{FFFD}',
                    };
                    return Err(self.err(self.sc.ppos, format!("unexpected input: {c}")));
                }
            }
        }
    }

    fn selector(&mut self) -> Result<Selector> {
        let path = self.fieldpath()?;
        if matches!(self.sc.peek(), Rune::Eof | Rune::Ch(',')) {
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        }
        let op = self.operator()?;
        let (pos, value) = self.value(op == "~=")?;
        let op = match op {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => {
                let Some(pattern) = value else {
                    return Err(self.err(pos, "invalid regular expression: invalid UTF-8"));
                };
                let re = Regex::new(&pattern).map_err(|e| {
                    self.err(
                        pos,
                        format!("invalid regular expression: {}", regex_reason(&e)),
                    )
                })?;
                Op::Matches(re)
            }
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Result<Option<Vec<String>>> {
        let mut path = Some(Vec::with_capacity(2));
        loop {
            let field = self.field()?;
            path = path.zip(field).map(|(mut p, f)| {
                p.push(f);
                p
            });
            if self.sc.peek() != Rune::Ch('.') {
                return Ok(path);
            }
            self.sc.scan();
        }
    }

    fn field(&mut self) -> Result<Text> {
        let (pos, tok, s) = self.sc.scan();
        match tok {
            Tok::Field => Ok(Some(s.to_owned())),
            Tok::Quoted => self.unquote(pos, s, false),
            Tok::Illegal => Err(self.scanner_err(pos)),
            _ => Err(self.err(pos, "expected field or quoted")),
        }
    }

    fn operator(&mut self) -> Result<&'static str> {
        let (pos, tok, s) = self.sc.scan();
        match tok {
            Tok::Operator => match s {
                "==" => Ok("=="),
                "!=" => Ok("!="),
                "~=" => Ok("~="),
                _ => Err(self.err(pos, format!("unsupported operator {s:?}"))),
            },
            Tok::Illegal => Err(self.scanner_err(pos)),
            _ => Err(self.err(pos, r#"expected an operator ("=="|"!="|"~=")"#)),
        }
    }

    fn value(&mut self, allow_alt_quotes: bool) -> Result<(usize, Text)> {
        let (pos, tok, s) = self.sc.scan();
        let text = match tok {
            Tok::Value | Tok::Field => Some(s.to_owned()),
            Tok::Quoted => self.unquote(pos, s, allow_alt_quotes)?,
            Tok::Illegal => return Err(self.scanner_err(pos)),
            _ => return Err(self.err(pos, "expected value or quoted")),
        };
        Ok((pos, text))
    }

    fn unquote(&self, pos: usize, s: &str, allow_alt_quotes: bool) -> Result<Text> {
        if !allow_alt_quotes && !s.starts_with('"') {
            return Err(self.err(pos, "invalid quote encountered"));
        }
        let bytes =
            unquote(s).ok_or_else(|| self.err(pos, "unquoting failed: quote syntax error"))?;
        Ok(String::from_utf8(bytes).ok())
    }
}

/// The one-line reason from a regex error (its Display spans several lines).
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let line = text.lines().rev().find(|l| !l.trim().is_empty());
    let line = line.unwrap_or(&text).trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// Decodes a literal quoted with `"`, `/` or `|` using Go string escapes; the delimiter itself
/// may be escaped. Returns bytes because `\xNN` and octal escapes need not form UTF-8.
fn unquote(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let (&quote, rest) = b.split_first()?;
    let (&last, inner) = rest.split_last()?;
    if quote != last || !matches!(quote, b'"' | b'/' | b'|') || inner.contains(&b'\n') {
        return None;
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut rest = inner;
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        if c == quote {
            return None;
        }
        if c != b'\\' {
            // Copying UTF-8 byte-wise is fine: the delimiters are ASCII.
            out.push(c);
            continue;
        }
        let (&esc, tail) = rest.split_first()?;
        rest = tail;
        match esc {
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'\\' => out.push(b'\\'),
            b'"' | b'/' | b'|' if esc == quote => out.push(esc),
            b'x' | b'u' | b'U' => {
                let n = match esc {
                    b'x' => 2,
                    b'u' => 4,
                    _ => 8,
                };
                let digits = rest.get(..n)?;
                rest = &rest[n..];
                let mut v: u32 = 0;
                for &d in digits {
                    v = (v << 4) | char::from(d).to_digit(16)?;
                }
                if esc == b'x' {
                    out.push(v as u8);
                } else {
                    // Go holds this in an int32: values with the top bit set wrap negative and
                    // pass its range check, then encode as U+FFFD, as do surrogates.
                    if v as i32 > char::MAX as i32 {
                        return None;
                    }
                    let ch = char::from_u32(v).unwrap_or('\u{FFFD}');
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
            b'0'..=b'7' => {
                let digits = rest.get(..2)?;
                rest = &rest[2..];
                let mut v = u32::from(esc - b'0');
                for &d in digits {
                    v = (v << 3) | char::from(d).to_digit(8)?;
                }
                out.push(u8::try_from(v).ok()?);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Entry {
        name: &'static str,
        other: &'static str,
        labels: HashMap<String, String>,
    }

    impl Adaptor for Entry {
        fn field(&self, path: &[&str]) -> Option<String> {
            let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            match *path.first()? {
                "name" => non_empty(self.name),
                "other" => non_empty(self.other),
                "labels" if !self.labels.is_empty() => label_field(&self.labels, path),
                _ => None,
            }
        }
    }

    fn entry(name: &'static str, other: &'static str, labels: &[(&str, &str)]) -> Entry {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Entry {
            name,
            other,
            labels,
        }
    }

    /// containerd's filter_test.go corpus.
    fn corpus() -> Vec<Entry> {
        vec![
            entry("foo", "", &[("foo", "true")]),
            entry("bar", "", &[]),
            entry(
                "foo",
                "",
                &[("foo", "present"), ("more complex label", "present")],
            ),
            entry("bar", "", &[("bar", "true")]),
            entry(
                "fooer",
                "",
                &[("more complex label with \\ and \"", "present")],
            ),
            entry(
                "fooer",
                "",
                &[("more complex label with \\ and \".post", "present")],
            ),
            entry("baz", "too complex, yo", &[]),
            entry("bazo", "abc", &[]),
            entry("compound", "", &[("foo", "omg_asdf.asdf-qwer")]),
        ]
    }

    /// Indices of corpus entries the filter matches.
    fn select(f: &Filter) -> Vec<usize> {
        let corpus = corpus();
        (0..corpus.len())
            .filter(|&i| f.matches(&corpus[i]))
            .collect()
    }

    fn hits(input: &str) -> Vec<usize> {
        let f = Filter::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        select(&f)
    }

    fn parse_err(input: &str) -> String {
        match Filter::parse(input) {
            Ok(f) => panic!("{input:?} parsed: {f:?}"),
            Err(e) => {
                assert!(e.kind() == berth_errdefs::Kind::InvalidArgument, "{e:?}");
                e.to_string()
            }
        }
    }

    #[test]
    fn containerd_filter_cases() {
        let all: Vec<usize> = (0..9).collect();
        let cases: &[(&str, &[usize])] = &[
            ("", &all),
            ("name", &all),
            ("labels.foo", &[0, 2, 8]),
            ("labels.foo,name", &[0, 2, 8]),
            ("labels.foo==true", &[0]),
            ("labels.foo==omg_asdf.asdf-qwer", &[8]),
            ("name==bar", &[1, 3]),
            ("name!=bar", &[0, 2, 4, 5, 6, 7, 8]),
            ("name==bar,labels.bar", &[3]),
            ("other==\"too complex, yo\"", &[6]),
            ("other~=[abc]+,name!=foo", &[6, 7]),
            ("other~=/[abc]+/,name!=foo", &[6, 7]),
            ("other~=/[abc]{1,2}/,name!=foo", &[6, 7]),
            ("other~=/[abc]{0,1}\"\\//,name!=foo", &[]),
            ("name==bar,labels.bar==true", &[3]),
            ("name==bar,labels.bar==wrong", &[]),
            (r#"name==foo,labels."more complex label""#, &[2]),
            (
                r#"labels."more complex label with \\ and \""==present"#,
                &[4],
            ),
            (
                r#"labels."more complex label with \\ and \"".post==present"#,
                &[5],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hits(input), *want, "{input:?}");
        }
    }

    #[test]
    fn containerd_error_cases() {
        let cases = [
            (
                "labels.|foo|==omg_asdf.asdf-qwer",
                "filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered",
            ),
            (
                r#"labels.?"more complex label with \\ and \"".post==present"#,
                r#"filters: parse error: [labels. >|?|< "more complex label with \\ and \"".post==present]: expected field or quoted"#,
            ),
            ("name==foo,", "filters: parse error: [name==foo,]: expected field or quoted"),
            ("labels.", "filters: parse error: [labels.]: expected field or quoted"),
            (
                "image~=,id?=?fbaq",
                "filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted",
            ),
            (
                "labels.ns/key==value",
                "filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated",
            ),
            (
                "labels.key==/value",
                "filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_err(input), want, "{input:?}");
        }
    }

    #[test]
    fn more_errors() {
        let cases = [
            ("name===x", r#"unsupported operator "===""#),
            ("name=x", r#"unsupported operator "=""#),
            ("name x", r#"expected an operator ("=="|"!="|"~=")"#),
            ("name==", "[name==]: expected value or quoted"),
            ("name==.x", "expected value or quoted"),
            (",name", "expected field or quoted"),
            ("name,,x", "expected field or quoted"),
            ("==x", "expected field or quoted"),
            ("name==x y", "[name==x >| |< y]: unexpected input:  "),
            ("name==x ", "unexpected input:  "),
            ("name==\"x\"y", "unexpected input: y"),
            ("name==|x|", "invalid quote encountered"),
            ("name!=/x/", "invalid quote encountered"),
            ("labels.\"\\g\"", "illegal escape sequence"),
            ("labels.\"\\xaz\"", "illegal numeric escape sequence"),
            ("labels.\"abc\\", "illegal escape sequence"),
            ("labels.\"a\nb\"", "quoted literal not terminated"),
            ("labels.\"\\777\"", "unquoting failed: quote syntax error"),
            (
                "labels.\"\\U7fffffff\"",
                "unquoting failed: quote syntax error",
            ),
            ("foo\0bar", "[foo >|\0|< bar]: unexpected null"),
            ("a==b\0", "[a==b >|\0|< ]: unexpected input: \u{FFFD}"),
            ("\0", "unexpected null"),
            ("a==\u{FFFD}", "rune error"),
            (" ", "[ ]: expected field or quoted"),
            (
                "name~=(",
                "[name~= >|(|< ]: invalid regular expression: unclosed group",
            ),
            ("name~=/a[/", "invalid regular expression"),
            (
                "name~=\"\\xff\"",
                "invalid regular expression: invalid UTF-8",
            ),
            ("牛", "[ >|牛|< ]: expected field or quoted"),
        ];
        for (input, want) in cases {
            let got = parse_err(input);
            assert!(got.contains(want), "{input:?}: {got:?} lacks {want:?}");
            // Only an input containing a newline may make the message span lines.
            assert!(
                !got.contains('\n') || input.contains('\n'),
                "{input:?}: multi-line error {got:?}"
            );
        }
    }

    type Expect = (usize, Tok, &'static str, Option<&'static str>);

    fn scan_all(input: &str) -> Vec<(usize, Tok, String, Option<&'static str>)> {
        let mut sc = Scanner::new(input);
        let mut out = Vec::new();
        loop {
            let (pos, tok, s) = sc.scan();
            let err = if tok == Tok::Illegal { sc.err } else { None };
            out.push((pos, tok, s.to_owned(), err));
            if tok == Tok::Eof {
                break;
            }
            assert!(out.len() <= input.len() + 1, "scanner stuck on {input:?}");
        }
        // Scanning past the end stays at EOF.
        assert_eq!(sc.scan().1, Tok::Eof);
        out
    }

    fn check_scan(input: &str, want: &[Expect]) {
        let got = scan_all(input);
        let want: Vec<_> = want
            .iter()
            .map(|&(p, t, s, e)| (p, t, s.to_owned(), e))
            .collect();
        assert_eq!(got, want, "{input:?}");
    }

    #[test]
    fn containerd_scanner_cases() {
        use Tok::*;
        check_scan("name", &[(0, Field, "name", None), (4, Eof, "", None)]);
        check_scan(
            "name==value,foo!=bar",
            &[
                (0, Field, "name", None),
                (4, Operator, "==", None),
                (6, Value, "value", None),
                (11, Separator, ",", None),
                (12, Field, "foo", None),
                (15, Operator, "!=", None),
                (17, Value, "bar", None),
                (20, Eof, "", None),
            ],
        );
        check_scan(
            "name==value,labels.foo=value,other.bar~=match",
            &[
                (0, Field, "name", None),
                (4, Operator, "==", None),
                (6, Value, "value", None),
                (11, Separator, ",", None),
                (12, Field, "labels", None),
                (18, Separator, ".", None),
                (19, Field, "foo", None),
                (22, Operator, "=", None),
                (23, Value, "value", None),
                (28, Separator, ",", None),
                (29, Field, "other", None),
                (34, Separator, ".", None),
                (35, Field, "bar", None),
                (38, Operator, "~=", None),
                (40, Value, "match", None),
                (45, Eof, "", None),
            ],
        );
        check_scan(
            "name~=[abc]+,foo=test",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Value, "[abc]+", None),
                (12, Separator, ",", None),
                (13, Field, "foo", None),
                (16, Operator, "=", None),
                (17, Value, "test", None),
                (21, Eof, "", None),
            ],
        );
        check_scan(
            r"name~=[abc]\+,foo=test",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Value, r"[abc]\+", None),
                (13, Separator, ",", None),
                (14, Field, "foo", None),
                (17, Operator, "=", None),
                (18, Value, "test", None),
                (22, Eof, "", None),
            ],
        );
        check_scan(
            "name~=/[abc]{0,2}/,foo=test",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Quoted, "/[abc]{0,2}/", None),
                (18, Separator, ",", None),
                (19, Field, "foo", None),
                (22, Operator, "=", None),
                (23, Value, "test", None),
                (27, Eof, "", None),
            ],
        );
        check_scan(
            "name~=牛,labels.moo=true",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Value, "牛", None),
                (9, Separator, ",", None),
                (10, Field, "labels", None),
                (16, Separator, ".", None),
                (17, Field, "moo", None),
                (20, Operator, "=", None),
                (21, Value, "true", None),
                (25, Eof, "", None),
            ],
        );
        check_scan(
            "name~=|牛|,labels.moo=true",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Quoted, "|牛|", None),
                (11, Separator, ",", None),
                (12, Field, "labels", None),
                (18, Separator, ".", None),
                (19, Field, "moo", None),
                (22, Operator, "=", None),
                (23, Value, "true", None),
                (27, Eof, "", None),
            ],
        );
        check_scan(
            r#"name~="asdf\n\tfooo""#,
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Quoted, r#""asdf\n\tfooo""#, None),
                (20, Eof, "", None),
            ],
        );
        check_scan(
            "foo\0bar",
            &[
                (0, Field, "foo", None),
                (3, Illegal, "", Some("unexpected null")),
                (4, Field, "bar", None),
                (7, Eof, "", None),
            ],
        );
        check_scan(
            "foo = bar    ",
            &[
                (0, Field, "foo", None),
                (4, Operator, "=", None),
                (6, Value, "bar", None),
                (13, Eof, "", None),
            ],
        );
        check_scan(
            "compound.labels==punctuated_value.foo-bar",
            &[
                (0, Field, "compound", None),
                (8, Separator, ".", None),
                (9, Field, "labels", None),
                (15, Operator, "==", None),
                (17, Value, "punctuated_value.foo-bar", None),
                (41, Eof, "", None),
            ],
        );
        check_scan(
            "interrupted=",
            &[
                (0, Field, "interrupted", None),
                (11, Operator, "=", None),
                (12, Eof, "", None),
            ],
        );
        check_scan(
            "doublevalue=value value",
            &[
                (0, Field, "doublevalue", None),
                (11, Operator, "=", None),
                (12, Value, "value", None),
                (18, Field, "value", None),
                (23, Eof, "", None),
            ],
        );
        check_scan(
            r#""leading quote".postquote==value"#,
            &[
                (0, Quoted, r#""leading quote""#, None),
                (15, Separator, ".", None),
                (16, Field, "postquote", None),
                (25, Operator, "==", None),
                (27, Value, "value", None),
                (32, Eof, "", None),
            ],
        );
        check_scan(
            "input==,id!=ff",
            &[
                (0, Field, "input", None),
                (5, Operator, "==", None),
                (7, Separator, ",", None),
                (8, Field, "id", None),
                (10, Operator, "!=", None),
                (12, Value, "ff", None),
                (14, Eof, "", None),
            ],
        );
        check_scan(
            r"input~=/foo\/bar/,id!=ff",
            &[
                (0, Field, "input", None),
                (5, Operator, "~=", None),
                (7, Quoted, r"/foo\/bar/", None),
                (17, Separator, ",", None),
                (18, Field, "id", None),
                (20, Operator, "!=", None),
                (22, Value, "ff", None),
                (24, Eof, "", None),
            ],
        );
        check_scan(
            "input~=|foo/bar|,id!=ff",
            &[
                (0, Field, "input", None),
                (5, Operator, "~=", None),
                (7, Quoted, "|foo/bar|", None),
                (16, Separator, ",", None),
                (17, Field, "id", None),
                (19, Operator, "!=", None),
                (21, Value, "ff", None),
                (23, Eof, "", None),
            ],
        );
        let unterminated = Some("quoted literal not terminated");
        check_scan(
            "labels.containerd.io/key==value",
            &[
                (0, Field, "labels", None),
                (6, Separator, ".", None),
                (7, Field, "containerd", None),
                (17, Separator, ".", None),
                (18, Field, "io", None),
                (20, Illegal, "/key==value", unterminated),
                (31, Eof, "", None),
            ],
        );
        check_scan(
            "labels.\"containerd.io\nkey\"==value",
            &[
                (0, Field, "labels", None),
                (6, Separator, ".", None),
                (7, Illegal, "\"containerd.io\n", unterminated),
                (22, Field, "key", None),
                (25, Illegal, "\"==value", unterminated),
                (33, Eof, "", None),
            ],
        );
        check_scan(
            r#"labels."\g""#,
            &[
                (0, Field, "labels", None),
                (6, Separator, ".", None),
                (7, Illegal, r#""\g""#, Some("illegal escape sequence")),
                (11, Eof, "", None),
            ],
        );
        check_scan(
            r#"labels."\xaz""#,
            &[
                (0, Field, "labels", None),
                (6, Separator, ".", None),
                (
                    7,
                    Illegal,
                    r#""\xaz""#,
                    Some("illegal numeric escape sequence"),
                ),
                (13, Eof, "", None),
            ],
        );
    }

    #[test]
    fn unquote_escapes() {
        let ok = |s: &str| unquote(s).map(|b| String::from_utf8(b).ok());
        assert_eq!(ok(r#""""#), Some(Some(String::new())));
        assert_eq!(ok(r#""a\"b\\c""#), Some(Some("a\"b\\c".into())));
        assert_eq!(
            ok(r#""\a\b\f\n\r\t\v""#),
            Some(Some("\x07\x08\x0c\n\r\t\x0b".into()))
        );
        assert_eq!(
            ok(r#""\x41\101\u00e9\U0001F600""#),
            Some(Some("AAé😀".into()))
        );
        assert_eq!(ok(r#""\xc3\xa9""#), Some(Some("é".into())));
        assert_eq!(ok(r#""\ud800""#), Some(Some("\u{FFFD}".into())));
        assert_eq!(ok(r#""\Uffffffff""#), Some(Some("\u{FFFD}".into())));
        assert_eq!(ok(r#""\xff""#), Some(None));
        assert_eq!(ok(r"/a\/b/"), Some(Some("a/b".into())));
        assert_eq!(ok(r"|a\|b/c|"), Some(Some("a|b/c".into())));
        assert_eq!(ok("|牛|"), Some(Some("牛".into())));
        for bad in [
            r#""\/""#,
            r#""\'""#,
            r"/\|/",
            r#""\777""#,
            r#""\x4""#,
            r#""a"b""#,
            "\"",
            "",
            r#""\U00110000""#,
            r#""\""#,
            "\"a\nb\"",
            "'a'",
            "`a`",
        ] {
            assert_eq!(unquote(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn operator_semantics_for_absent_fields() {
        // Entry 1 ("bar") has no labels, entry 7 has no label foo.
        assert_eq!(hits("labels.foo!=true"), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(hits(r#"labels.foo!="""#), [0, 2, 8]);
        assert_eq!(hits("labels.foo~=^$"), [1, 3, 4, 5, 6, 7]);
        assert_eq!(hits("labels.foo~=/./"), [0, 2, 8]);
        assert_eq!(hits("other==\"\""), Vec::<usize>::new());
        assert_eq!(hits("nosuchfield"), Vec::<usize>::new());
        assert_eq!(hits("nosuchfield!=x").len(), 9);
    }

    #[test]
    fn quoting_and_paths() {
        // Quoted and dotted paths reach the same label key, since the adaptor joins with '.'.
        let e = entry("n", "", &[("io.containerd/x", "v 1"), ("a.b", "c")]);
        let m = |s: &str| Filter::parse(s).unwrap().matches(&e);
        assert!(m(r#"labels."io.containerd/x"=="v 1""#));
        assert!(m("labels.a.b==c"));
        assert!(m(r#"labels."a".b==c"#));
        assert!(m(r#"labels."a.b"~=|^c$|"#));
        assert!(m(r#"labels."a.b"~="^c$""#));
        assert!(m("labels.a.b~=^c$,name==n"));
        assert!(!m("labels.a.b~=^c$,name==m"));
        assert!(m("name==n, labels.a.b"));
        assert!(m("name== n"));
        assert!(m(r"name~=/^\x6e$/"));
        assert!(m("name!=n=x"));
        // Values keep punctuation and may contain operator and quote characters after the start.
        let e2 = entry("a=b\"c|d", "", &[]);
        assert!(Filter::parse("name==a=b\"c|d").unwrap().matches(&e2));
        // Non-UTF-8 escapes: a path never resolves, a value never equals.
        assert!(!m(r#"labels."\xff""#));
        assert!(m(r#"labels."\xff"!=x"#));
        assert!(!m(r#"name=="\xff""#));
        assert!(m(r#"name!="\xff""#));
        assert!(m(r#"labels."\xc3\xa9"!=x"#));
        // Digit-leading fields are accepted, as containerd's scanner does.
        assert!(!m("labels.0"));
    }

    #[test]
    fn deep_paths_are_passed_whole() {
        struct Depth;
        impl Adaptor for Depth {
            fn field(&self, path: &[&str]) -> Option<String> {
                Some(path.join("/"))
            }
        }
        let f = Filter::parse("a.b.c.d.e.f.g.h.i.j==a/b/c/d/e/f/g/h/i/j,a.b==a/b").unwrap();
        assert!(f.matches(&Depth));
        assert!(f.matches(&Depth as &dyn Adaptor));
    }

    #[test]
    fn parse_all_ors_and_match_all() {
        let none: [&str; 0] = [];
        assert!(Filter::parse_all(&none).unwrap().matches_all());
        assert!(Filter::parse_all(&[""]).unwrap().matches_all());
        assert!(Filter::parse_all(&["", ""]).unwrap().matches_all());
        assert!(Filter::parse("").unwrap().matches_all());
        assert!(!Filter::parse("name").unwrap().matches_all());

        let f = Filter::parse_all(&["name==bar", "labels.foo==true"]).unwrap();
        assert!(!f.matches_all());
        assert_eq!(select(&f), [0, 1, 3]);
        let owned = vec![String::from("other"), String::from("name==compound")];
        assert_eq!(select(&Filter::parse_all(&owned).unwrap()), [6, 7, 8]);

        // containerd ORs in an always-true filter for "", so it swallows the others...
        let f = Filter::parse_all(&["", "name==bar"]).unwrap();
        assert!(f.matches_all());
        assert_eq!(select(&f).len(), 9);
        // ...but every entry must still be valid.
        assert!(Filter::parse_all(&["", "name=="]).is_err());
        assert!(Filter::parse_all(&["name", "name~=("]).is_err());
    }

    #[test]
    fn label_field_lookup() {
        let labels: HashMap<String, String> = [("a.b", "1"), ("", "empty"), ("x", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            label_field(&labels, &["labels", "a.b"]).as_deref(),
            Some("1")
        );
        assert_eq!(
            label_field(&labels, &["labels", "a", "b"]).as_deref(),
            Some("1")
        );
        assert_eq!(label_field(&labels, &["labels", "x"]).as_deref(), Some(""));
        assert_eq!(label_field(&labels, &["labels"]).as_deref(), Some("empty"));
        assert_eq!(label_field(&labels, &["labels", "y"]), None);
        assert_eq!(label_field(&labels, &["name"]), None);
        assert_eq!(label_field(&labels, &[]), None);
    }

    #[test]
    fn value_chars_follow_go_graphic() {
        assert!(is_value_char('牛'));
        assert!(is_value_char('é'));
        assert!(is_value_char('€'));
        assert!(!is_value_char('\u{200B}')); // format char
        assert!(!is_value_char('\u{3000}')); // ideographic space
        assert!(!is_value_char('\u{E000}')); // private use
        assert!(!is_value_char(','));
        assert!(!is_value_char('\x7f'));
        // A non-graphic character ends the value, leaving trailing input.
        assert!(parse_err("name==a\u{200B}").contains("unexpected input"));
        assert!(Filter::parse("name==牛é").is_ok());
    }

    /// Parsing never panics, whatever the input, and neither does matching what parsed.
    #[test]
    fn garbage_never_panics() {
        const ALPHABET: &[&str] = &[
            "a", "Z", "0", "_", ".", ",", "=", "==", "!=", "~=", "!", "~", "\"", "/", "|", "\\",
            " ", "\n", "\t", "\0", "x", "u", "U", "7", "f", "牛", "é", "\u{FFFD}", "\u{200B}", "(",
            "[", "]", "*", "+", "{", "}", "'", "`", "?", "labels", "name", "\\x", "\\u",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let e = entry("name", "x", &[("a", "b")]);
        let mut parsed = 0;
        for _ in 0..3000 {
            let len = rand(20);
            let s: String = (0..len).map(|_| ALPHABET[rand(ALPHABET.len())]).collect();
            if let Ok(f) = Filter::parse_all(&[s.as_str(), "name"]) {
                parsed += 1;
                f.matches(&e);
            }
        }
        assert!(parsed > 0);
        // Every prefix of valid filters, cut at each character boundary.
        for valid in [
            r#"labels."a \"牛\" \x41\101\u00e9".b~=|x\|y|,name!=/q/,other=="v\n""#,
            r"name~=/[abc]{0,1}\//",
        ] {
            for (i, _) in valid.char_indices() {
                let _ = Filter::parse(&valid[..i]).map(|f| f.matches(&e));
            }
        }
    }
}
