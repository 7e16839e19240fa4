//! One logical line to one instruction: the keyword's forms (shell, exec/JSON, key=value), its
//! `--flags`, and what each refuses. Arguments stay raw here (quotes, escapes and `$VAR`s
//! kept): they are substituted when the stage runs, with the environment of that moment.

use super::lexer::LogicalLine;
use super::words::split_raw;
use crate::Error;

/// RUN, CMD, ENTRYPOINT and HEALTHCHECK CMD take a shell string or an exec (JSON) array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    /// `--from=`: a stage name, a stage index or an image reference (raw).
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub sources: Vec<String>,
    pub dest: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: Command,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub start_interval: Option<String>,
    pub retries: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
        name: Option<String>,
        platform: Option<String>,
    },
    Run {
        command: Command,
        network: Option<String>,
    },
    Cmd(Command),
    Entrypoint(Command),
    Copy(CopySpec),
    Add(CopySpec),
    /// Raw `key`/`value` pairs, substituted together against the environment before the line.
    Env(Vec<(String, String)>),
    Arg(Vec<(String, Option<String>)>),
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    /// `None` is `HEALTHCHECK NONE`, which turns off the base image's check.
    Healthcheck(Option<Healthcheck>),
    Shell(Vec<String>),
    /// The trigger's text as it is stored in the image config, and its parse.
    Onbuild(String, Box<Instruction>),
    Maintainer(String),
}

/// One instruction where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    /// `KEYWORD args` as written (continuations joined), for messages and the cache key.
    pub text: String,
    pub instruction: Instruction,
}

struct Flags {
    flags: Vec<(String, Option<String>)>,
}

impl Flags {
    /// Takes the leading `--name[=value]` words off `rest`.
    fn take(rest: &str) -> (Flags, &str) {
        let mut flags = Vec::new();
        let mut rest = rest.trim_start();
        while let Some(body) = rest.strip_prefix("--") {
            let end = body.find(char::is_whitespace).unwrap_or(body.len());
            let word = &body[..end];
            rest = body[end..].trim_start();
            if word.is_empty() {
                break;
            }
            match word.split_once('=') {
                Some((k, v)) => flags.push((k.to_string(), Some(v.to_string()))),
                None => flags.push((word.to_string(), None)),
            }
        }
        (Flags { flags }, rest)
    }

    /// Refuses any flag not in `allowed`, naming the instruction; returns the flags' values.
    fn check(
        self,
        keyword: &str,
        allowed: &[&str],
    ) -> Result<Vec<(String, Option<String>)>, Error> {
        for (name, _) in &self.flags {
            if name == "mount" || name == "security" {
                return Err(Error::new(format!(
                    "{keyword} --{name} is not supported by berth build"
                )));
            }
            if !allowed.contains(&name.as_str()) {
                return Err(Error::new(format!("unknown flag for {keyword}: --{name}")));
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for (name, _) in &self.flags {
            if seen.contains(&name.as_str()) {
                return Err(Error::new(format!("{keyword}: --{name} given twice")));
            }
            seen.push(name);
        }
        Ok(self.flags)
    }
}

fn value(flags: &[(String, Option<String>)], name: &str) -> Result<Option<String>, Error> {
    match flags.iter().find(|(n, _)| n == name) {
        None => Ok(None),
        Some((_, Some(v))) if !v.is_empty() => Ok(Some(v.clone())),
        Some(_) => Err(Error::new(format!(
            "--{name} needs a value (--{name}=VALUE)"
        ))),
    }
}

fn json_array(rest: &str) -> Option<Vec<String>> {
    if !rest.trim_start().starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest.trim()).ok()
}

fn command(rest: &str, keyword: &str) -> Result<Command, Error> {
    if let Some(args) = json_array(rest) {
        return Ok(Command::Exec(args));
    }
    if rest.trim().is_empty() && keyword == "RUN" {
        return Err(Error::new("RUN needs a command"));
    }
    Ok(Command::Shell(rest.to_string()))
}

/// Heredocs (`<<EOF` in RUN, COPY and ADD) would need docker's multi-line reading; refused
/// rather than run half of them.
fn refuse_heredoc(rest: &str, keyword: &str, escape: char) -> Result<(), Error> {
    let words = split_raw(rest, escape).unwrap_or_default();
    for word in words {
        if let Some(tail) = word.strip_prefix("<<") {
            let tail = tail.strip_prefix('-').unwrap_or(tail);
            if tail
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '"' || c == '\'')
            {
                return Err(Error::new(format!(
                    "{keyword} with a heredoc ({word}) is not supported by berth build: \
                     put the text in a file of the context and COPY it"
                )));
            }
        }
    }
    Ok(())
}

fn pairs(keyword: &str, rest: &str, escape: char) -> Result<Vec<(String, String)>, Error> {
    let words = split_raw(rest, escape)?;
    let Some(first) = words.first() else {
        return Err(Error::new(format!("{keyword} needs at least one argument")));
    };
    if !first.contains('=') {
        // The legacy `ENV key value with spaces` form: one pair, the value is the rest.
        let value = rest.trim_start()[first.len()..].trim();
        if value.is_empty() {
            return Err(Error::new(format!("{keyword} {first} needs a value")));
        }
        return Ok(vec![(first.clone(), value.to_string())]);
    }
    words
        .iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            Some(_) => Err(Error::new(format!("{keyword} names can not be blank"))),
            None => Err(Error::new(format!(
                "{keyword}: {w:?} is not KEY=VALUE (all pairs of one line take the = form)"
            ))),
        })
        .collect()
}

fn copy_spec(
    keyword: &str,
    flags: Vec<(String, Option<String>)>,
    rest: &str,
    escape: char,
) -> Result<CopySpec, Error> {
    let words = match json_array(rest) {
        Some(words) => words,
        None => {
            refuse_heredoc(rest, keyword, escape)?;
            split_raw(rest, escape)?
        }
    };
    let Some((dest, sources)) = words.split_last().filter(|(_, s)| !s.is_empty()) else {
        return Err(Error::new(format!(
            "{keyword} needs at least one source and a destination"
        )));
    };
    Ok(CopySpec {
        from: value(&flags, "from")?,
        chown: value(&flags, "chown")?,
        chmod: value(&flags, "chmod")?,
        sources: sources.to_vec(),
        dest: dest.clone(),
    })
}

fn stage_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn one_word(keyword: &str, rest: &str) -> Result<String, Error> {
    if rest.trim().is_empty() {
        return Err(Error::new(format!("{keyword} needs an argument")));
    }
    Ok(rest.trim().to_string())
}

pub(crate) fn parse_line(l: &LogicalLine, escape: char) -> Result<Step, Error> {
    let instruction =
        parse_instruction(&l.keyword, &l.rest, escape).map_err(|e| e.or_line(l.line))?;
    Ok(Step {
        line: l.line,
        text: if l.rest.is_empty() {
            l.keyword.clone()
        } else {
            format!("{} {}", l.keyword, l.rest)
        },
        instruction,
    })
}

fn parse_instruction(keyword: &str, rest: &str, escape: char) -> Result<Instruction, Error> {
    let (flags, rest) = Flags::take(rest);
    let no_flags = |flags: Flags| flags.check(keyword, &[]).map(|_| ());
    Ok(match keyword {
        "FROM" => {
            let flags = flags.check(keyword, &["platform"])?;
            let words: Vec<&str> = rest.split_whitespace().collect();
            let (image, name) = match words.as_slice() {
                [image] => (image.to_string(), None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    let name = name.to_ascii_lowercase();
                    if !stage_name_ok(&name) {
                        return Err(Error::new(format!(
                            "invalid stage name {name:?}: a letter, then letters, digits, -, _ or ."
                        )));
                    }
                    (image.to_string(), Some(name))
                }
                _ => return Err(Error::new("FROM takes IMAGE [AS NAME]")),
            };
            Instruction::From {
                image,
                name,
                platform: value(&flags, "platform")?,
            }
        }
        "RUN" => {
            let flags = flags.check(keyword, &["network"])?;
            if json_array(rest).is_none() {
                refuse_heredoc(rest, keyword, escape)?;
            }
            Instruction::Run {
                command: command(rest, keyword)?,
                network: value(&flags, "network")?,
            }
        }
        "CMD" => {
            no_flags(flags)?;
            Instruction::Cmd(command(rest, keyword)?)
        }
        "ENTRYPOINT" => {
            no_flags(flags)?;
            Instruction::Entrypoint(command(rest, keyword)?)
        }
        "COPY" => {
            let flags = flags.check(keyword, &["from", "chown", "chmod", "link"])?;
            Instruction::Copy(copy_spec(keyword, flags, rest, escape)?)
        }
        "ADD" => {
            let flags = flags.check(keyword, &["chown", "chmod", "link"])?;
            let spec = copy_spec(keyword, flags, rest, escape)?;
            if let Some(url) = spec
                .sources
                .iter()
                .find(|s| s.contains("://") || s.starts_with("git@"))
            {
                return Err(Error::new(format!(
                    "ADD of a URL ({url}) is refused: berth build reads nothing but the context; \
                     download it in a RUN step or into the context"
                )));
            }
            Instruction::Add(spec)
        }
        "ENV" => {
            no_flags(flags)?;
            Instruction::Env(pairs(keyword, rest, escape)?)
        }
        "LABEL" => {
            no_flags(flags)?;
            Instruction::Label(pairs(keyword, rest, escape)?)
        }
        "ARG" => {
            no_flags(flags)?;
            let words = split_raw(rest, escape)?;
            if words.is_empty() {
                return Err(Error::new("ARG needs a name"));
            }
            let mut args = Vec::new();
            for w in words {
                let (name, default) = match w.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (w, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(Error::new(format!("invalid ARG name {name:?}")));
                }
                args.push((name, default));
            }
            Instruction::Arg(args)
        }
        "WORKDIR" => {
            no_flags(flags)?;
            Instruction::Workdir(one_word(keyword, rest)?)
        }
        "USER" => {
            no_flags(flags)?;
            Instruction::User(one_word(keyword, rest)?)
        }
        "STOPSIGNAL" => {
            no_flags(flags)?;
            Instruction::StopSignal(one_word(keyword, rest)?)
        }
        "MAINTAINER" => {
            no_flags(flags)?;
            Instruction::Maintainer(one_word(keyword, rest)?)
        }
        "EXPOSE" => {
            no_flags(flags)?;
            let ports = split_raw(rest, escape)?;
            if ports.is_empty() {
                return Err(Error::new("EXPOSE needs a port"));
            }
            Instruction::Expose(ports)
        }
        "VOLUME" => {
            no_flags(flags)?;
            let volumes = match json_array(rest) {
                Some(v) => v,
                None => split_raw(rest, escape)?,
            };
            if volumes.is_empty() || volumes.iter().any(|v| v.trim().is_empty()) {
                return Err(Error::new("VOLUME needs non-empty paths"));
            }
            Instruction::Volume(volumes)
        }
        "SHELL" => {
            no_flags(flags)?;
            match json_array(rest) {
                Some(shell) if !shell.is_empty() => Instruction::Shell(shell),
                _ => {
                    return Err(Error::new(
                        "SHELL takes a JSON array, e.g. SHELL [\"/bin/sh\", \"-c\"]",
                    ))
                }
            }
        }
        "HEALTHCHECK" => {
            let flags = flags.check(
                keyword,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
            )?;
            let (kind, tail) = match rest.find(char::is_whitespace) {
                Some(at) => (&rest[..at], rest[at..].trim_start()),
                None => (rest, ""),
            };
            if kind.eq_ignore_ascii_case("NONE") {
                if !tail.is_empty() || !flags.is_empty() {
                    return Err(Error::new("HEALTHCHECK NONE takes no arguments"));
                }
                Instruction::Healthcheck(None)
            } else if kind.eq_ignore_ascii_case("CMD") {
                if tail.is_empty() {
                    return Err(Error::new("HEALTHCHECK CMD needs a command"));
                }
                Instruction::Healthcheck(Some(Healthcheck {
                    test: command(tail, keyword)?,
                    interval: value(&flags, "interval")?,
                    timeout: value(&flags, "timeout")?,
                    start_period: value(&flags, "start-period")?,
                    start_interval: value(&flags, "start-interval")?,
                    retries: value(&flags, "retries")?,
                }))
            } else {
                return Err(Error::new("HEALTHCHECK takes CMD <command> or NONE"));
            }
        }
        "ONBUILD" => {
            no_flags(flags)?;
            let trigger = rest.trim();
            let (inner, inner_rest) = match trigger.find(char::is_whitespace) {
                Some(at) => (&trigger[..at], trigger[at..].trim_start()),
                None => (trigger, ""),
            };
            let inner = inner.to_ascii_uppercase();
            match inner.as_str() {
                "" => return Err(Error::new("ONBUILD needs an instruction")),
                "ONBUILD" | "FROM" | "MAINTAINER" => {
                    return Err(Error::new(format!(
                        "{inner} isn't allowed as an ONBUILD trigger"
                    )))
                }
                _ => {}
            }
            let parsed = parse_instruction(&inner, inner_rest, escape)?;
            let text = if inner_rest.is_empty() {
                inner
            } else {
                format!("{inner} {inner_rest}")
            };
            Instruction::Onbuild(text, Box::new(parsed))
        }
        other => return Err(Error::new(format!("unknown instruction: {other}"))),
    })
}

/// Parses an ONBUILD trigger read from a base image's config (`OnBuild`), for the stage that
/// starts from it; `line` is the FROM's.
pub fn parse_trigger(text: &str, line: usize, escape: char) -> Result<Step, Error> {
    let trimmed = text.trim();
    let (keyword, rest) = match trimmed.find(char::is_whitespace) {
        Some(at) => (&trimmed[..at], trimmed[at..].trim_start()),
        None => (trimmed, ""),
    };
    let keyword = keyword.to_ascii_uppercase();
    if matches!(keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
        return Err(Error::at(
            line,
            format!("base image's ONBUILD trigger {keyword} isn't allowed"),
        ));
    }
    parse_line(
        &LogicalLine {
            line,
            keyword,
            rest: rest.to_string(),
        },
        escape,
    )
    .map_err(|e| Error::at(line, format!("base image's ONBUILD trigger: {}", e.message)))
}
