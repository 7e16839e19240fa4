//! Physical lines to logical ones, as docker's parser reads them: parser directives at the top
//! (`# escape=`, `# syntax=`, `# check=`), comment lines dropped (inside continuations too),
//! lines ending in the escape character joined with the next (the escape and newline removed,
//! the next line's indentation kept), blank lines inside a continuation skipped.

use crate::Error;

/// The parser directives found before the first non-directive line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub escape: char,
    /// `# syntax=` names a BuildKit front-end image; berth has one front end and only notes it.
    pub syntax: Option<String>,
    pub notes: Vec<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            notes: Vec::new(),
        }
    }
}

/// One instruction's text: its keyword, its (untrimmed-inside) arguments and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalLine {
    pub line: usize,
    pub keyword: String,
    pub rest: String,
}

fn parse_directive(line: &str) -> Option<(String, String)> {
    let body = line.strip_prefix('#')?.trim();
    let (key, value) = body.split_once('=')?;
    let key = key.trim();
    let mut chars = key.chars();
    if !chars.next()?.is_ascii_alphabetic() || !chars.all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.to_string()))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// If `line` ends in the escape character (trailing blanks allowed), the line without it.
fn strip_continuation(line: &str, escape: char) -> Option<&str> {
    let trimmed = line.trim_end_matches([' ', '\t']);
    trimmed.strip_suffix(escape)
}

pub fn lex(text: &str) -> Result<(Directives, Vec<LogicalLine>), Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let physical: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut directives = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    let mut index = 0;
    while index < physical.len() {
        let Some((key, value)) = parse_directive(physical[index]) else {
            break;
        };
        let line = index + 1;
        if seen.contains(&key) {
            return Err(Error::at(
                line,
                format!("only one {key} parser directive can be used"),
            ));
        }
        seen.push(key.clone());
        match key.as_str() {
            "escape" => {
                directives.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(Error::at(
                            line,
                            format!("invalid escape token {other:?}: only \\ and ` are allowed"),
                        ))
                    }
                }
            }
            "syntax" => {
                directives.notes.push(format!(
                    "line {line}: `# syntax={value}` ignored: berth builds with its own front end"
                ));
                directives.syntax = Some(value);
            }
            // Unknown directives are comments to docker, and so are BuildKit's lint settings here.
            _ => {}
        }
        index += 1;
    }

    let mut lines = Vec::new();
    while index < physical.len() {
        let first = physical[index];
        index += 1;
        let start = index;
        let stripped = first.trim_start();
        if stripped.is_empty() || stripped.starts_with('#') {
            continue;
        }
        let mut joined = String::new();
        let mut current = stripped;
        loop {
            match strip_continuation(current, directives.escape) {
                Some(head) => {
                    joined.push_str(head);
                    // The next non-comment, non-blank line continues this one.
                    let mut next = None;
                    while index < physical.len() {
                        let candidate = physical[index];
                        index += 1;
                        if is_comment(candidate) || candidate.trim().is_empty() {
                            continue;
                        }
                        next = Some(candidate);
                        break;
                    }
                    match next {
                        Some(n) => current = n,
                        None => break,
                    }
                }
                None => {
                    joined.push_str(current);
                    break;
                }
            }
        }
        let joined = joined.trim();
        if joined.is_empty() {
            continue;
        }
        let (keyword, rest) = match joined.find(|c: char| c.is_whitespace()) {
            Some(at) => (&joined[..at], joined[at..].trim_start()),
            None => (joined, ""),
        };
        lines.push(LogicalLine {
            line: start,
            keyword: keyword.to_ascii_uppercase(),
            rest: rest.to_string(),
        });
    }
    Ok((directives, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_only_at_the_top() {
        let (d, lines) =
            lex("# escape=`\n# syntax=docker/dockerfile:1\nFROM a\n# escape=\\\nRUN x `\n y")
                .unwrap();
        assert_eq!(d.escape, '`');
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(d.notes.len(), 1);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].rest, "x  y");
    }

    #[test]
    fn a_comment_ends_the_directives() {
        let (d, _) = lex("# hello\n# escape=`\nFROM a").unwrap();
        assert_eq!(d.escape, '\\');
    }

    #[test]
    fn a_repeated_directive_is_refused() {
        let err = lex("# escape=`\n# escape=`\nFROM a").unwrap_err();
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn a_bad_escape_is_refused() {
        assert!(lex("# escape=x\nFROM a").is_err());
    }

    #[test]
    fn continuations_skip_comments_and_blank_lines() {
        let text = "FROM a\nRUN echo a \\\n  # inner comment\n\n   b \\  \n c\nCMD d\n";
        let (_, lines) = lex(text).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].line, 2);
        assert_eq!(lines[1].rest, "echo a    b  c");
        assert_eq!(lines[2].line, 7);
        assert_eq!(lines[2].keyword, "CMD");
    }

    #[test]
    fn keywords_are_case_insensitive_and_crlf_is_accepted() {
        let (_, lines) = lex("\u{feff}from a\r\n  run  x\r\n").unwrap();
        assert_eq!(lines[0].keyword, "FROM");
        assert_eq!(lines[1].keyword, "RUN");
        assert_eq!(lines[1].rest, "x");
    }

    #[test]
    fn a_continuation_at_the_end_keeps_what_it_has() {
        let (_, lines) = lex("FROM a\nRUN x \\").unwrap();
        assert_eq!(lines[1].rest, "x");
    }
}
