//! A stage at build time: the image config as it stands (from the base, then each step), the
//! ARGs in scope, and what each step asks of the executor. Substitution uses the environment
//! of the moment: the stage's ARG values, overridden by its ENV (so a base image's ENV counts).

use super::instruction::{Command, CopySpec, Healthcheck, Instruction, Step};
use super::words::expand;
use super::{Dockerfile, Lookup};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Args docker lets every RUN see without an ARG line; kept out of the cache key as docker does.
const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

pub(crate) fn is_predefined_arg(name: &str) -> bool {
    PREDEFINED_ARGS.contains(&name)
}

/// `--build-arg NAME=VALUE` values, and BuildKit's automatic platform ARGs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildArgs {
    values: BTreeMap<String, String>,
    automatic: BTreeMap<String, String>,
}

impl BuildArgs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `TARGETPLATFORM`, `TARGETOS`, `TARGETARCH`, `TARGETVARIANT` and their `BUILD*`
    /// twins (both name the target; [`BuildArgs::set_build_platform`] then sets the host's),
    /// in the global scope as BuildKit
    /// does: usable in FROM, and in a stage after `ARG TARGETARCH`.
    pub fn set_platform(&mut self, os: &str, arch: &str, variant: Option<&str>) {
        self.set_platform_args(&["TARGET", "BUILD"], os, arch, variant);
    }

    /// Sets only the `BUILD*` twins: the platform the build runs on, when `--platform` asks
    /// for another target.
    pub fn set_build_platform(&mut self, os: &str, arch: &str, variant: Option<&str>) {
        self.set_platform_args(&["BUILD"], os, arch, variant);
    }

    /// `<prefix>PLATFORM`, `OS`, `ARCH` and `VARIANT` for each prefix.
    fn set_platform_args(
        &mut self,
        prefixes: &[&str],
        os: &str,
        arch: &str,
        variant: Option<&str>,
    ) {
        let platform = match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        for prefix in prefixes {
            for (name, value) in [
                ("PLATFORM", platform.as_str()),
                ("OS", os),
                ("ARCH", arch),
                ("VARIANT", variant.unwrap_or("")),
            ] {
                self.automatic
                    .insert(format!("{prefix}{name}"), value.to_string());
            }
        }
    }

    /// The automatic platform ARGs set by [`BuildArgs::set_platform`].
    pub fn automatic(&self) -> &BTreeMap<String, String> {
        &self.automatic
    }

    /// Reads `NAME=VALUE`; a bare `NAME` takes `from_env(NAME)` (docker reads the caller's
    /// environment) and is left out when that is unset.
    pub fn add(
        &mut self,
        arg: &str,
        from_env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), Error> {
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg, from_env(arg)),
        };
        if name.is_empty() {
            return Err(Error::new(format!(
                "--build-arg {arg:?}: the name is empty"
            )));
        }
        if let Some(value) = value {
            self.values.insert(name.to_string(), value);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// docker's health check in an image config (durations in nanoseconds, as docker writes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

/// The `config` object of an image config with docker's extensions (Healthcheck, OnBuild,
/// Shell), which the OCI type lacks and `docker inspect` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell: Vec<String>,
}

impl ImageConfig {
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env.iter().find_map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            _ => None,
        })
    }

    fn set_env(&mut self, name: &str, value: &str) {
        let entry = format!("{name}={value}");
        match self
            .env
            .iter_mut()
            .find(|kv| kv.split_once('=').map(|(k, _)| k) == Some(name))
        {
            Some(slot) => *slot = entry,
            None => self.env.push(entry),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAction {
    pub argv: Vec<String>,
    /// The config's Env plus the stage's ARG values ENV does not shadow (RUN sees both; the
    /// image keeps only ENV).
    pub env: Vec<String>,
    pub user: String,
    /// Absolute; "/" when the config has none.
    pub workdir: String,
    /// `RUN --network=`, when the step overrides the build's.
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyAction {
    pub add: bool,
    /// The step's `--from`, still unresolved (the [`super::Plan`] has it resolved by step).
    pub from: Option<String>,
    pub sources: Vec<String>,
    /// Absolute; ends in `/` when the Dockerfile's did (a directory destination).
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(RunAction),
    Copy(CopyAction),
    /// Make the directory if absent (a layer only when it was), then the config's WorkingDir.
    Workdir(String),
    /// Only the image config changed.
    Config,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    pub action: Action,
    /// The history entry's `created_by`, as `docker history` shows it.
    pub created_by: String,
    /// The build args this step depends on, for its cache key (RUN: all the stage's ARGs, as
    /// they are in its environment; others: those its substitution read).
    pub cache_args: Vec<(String, String)>,
}

/// One stage being built.
#[derive(Debug, Clone)]
pub struct StageEval {
    escape: char,
    pub config: ImageConfig,
    /// `MAINTAINER`'s value: the image config's top-level `author`.
    pub author: Option<String>,
    args: BTreeMap<String, String>,
    global_args: BTreeMap<String, String>,
    build_args: BuildArgs,
    cmd_set: bool,
}

struct Env<'a>(&'a StageEval);

impl Lookup for Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .config
            .env_value(name)
            .map(str::to_string)
            .or_else(|| self.0.args.get(name).cloned())
    }
}

fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Go's time.ParseDuration for the units docker accepts, into nanoseconds.
fn parse_duration(text: &str) -> Result<i64, Error> {
    let bad = || {
        Error::new(format!(
            "invalid duration {text:?} (e.g. 30s, 1m30s, 500ms)"
        ))
    };
    if text == "0" {
        return Ok(0);
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale: f64 = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let add = number * scale;
        if !add.is_finite() || add > i64::MAX as f64 {
            return Err(bad());
        }
        total = total.checked_add(add as i64).ok_or_else(bad)?;
    }
    Ok(total)
}

fn octal_mode(text: &str) -> Result<u32, Error> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(Error::new(format!(
            "--chmod={text}: an octal mode (e.g. 755) is needed"
        ))),
    }
}

fn port(text: &str) -> Result<String, Error> {
    let (ports, proto) = match text.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (text, "tcp".to_string()),
    };
    let ok = |p: &str| p.parse::<u16>().is_ok_and(|n| n > 0);
    let valid = match ports.split_once('-') {
        Some((a, b)) => ok(a) && ok(b),
        None => ok(ports),
    };
    if !valid || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(Error::new(format!("invalid EXPOSE port {text:?}")));
    }
    Ok(format!("{ports}/{proto}"))
}

fn stop_signal(text: &str) -> Result<String, Error> {
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let numeric = text.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n));
    let named = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
    if numeric || named {
        Ok(text.to_string())
    } else {
        Err(Error::new(format!("invalid STOPSIGNAL {text:?}")))
    }
}

impl StageEval {
    /// Starts a stage on its base's config. Returns the base's ONBUILD triggers, which the
    /// executor runs first (parse them with [`super::parse_trigger`]); they are not inherited.
    pub fn new(
        dockerfile: &Dockerfile,
        base: ImageConfig,
        global_args: &BTreeMap<String, String>,
        build_args: &BuildArgs,
    ) -> (StageEval, Vec<String>) {
        let mut config = base;
        let triggers = std::mem::take(&mut config.on_build);
        let mut args = BTreeMap::new();
        for name in PREDEFINED_ARGS {
            if let Some(v) = build_args.get(name) {
                args.insert(name.to_string(), v.to_string());
            }
        }
        (
            StageEval {
                escape: dockerfile.directives.escape,
                config,
                author: None,
                args,
                global_args: global_args.clone(),
                build_args: build_args.clone(),
                cmd_set: false,
            },
            triggers,
        )
    }

    fn x(&self, word: &str, used: &mut Vec<String>) -> Result<String, Error> {
        let (out, names) = expand(word, self.escape, &Env(self))?;
        for n in names {
            if !used.contains(&n) {
                used.push(n);
            }
        }
        Ok(out)
    }

    fn shell(&self) -> Vec<String> {
        if self.config.shell.is_empty() {
            vec!["/bin/sh".to_string(), "-c".to_string()]
        } else {
            self.config.shell.clone()
        }
    }

    fn argv(&self, command: &Command) -> Vec<String> {
        match command {
            Command::Exec(argv) => argv.clone(),
            Command::Shell(text) => {
                let mut argv = self.shell();
                argv.push(text.clone());
                argv
            }
        }
    }

    pub fn workdir(&self) -> String {
        if self.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            self.config.working_dir.clone()
        }
    }

    /// The stage's ARG values, minus docker's predefined proxy args.
    fn arg_pairs(&self) -> Vec<(String, String)> {
        self.args
            .iter()
            .filter(|(k, _)| !is_predefined_arg(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn step(&mut self, step: &Step) -> Result<StepOutcome, Error> {
        self.step_inner(step).map_err(|e| e.or_line(step.line))
    }

    fn step_inner(&mut self, step: &Step) -> Result<StepOutcome, Error> {
        let mut used: Vec<String> = Vec::new();
        let mut created_by = step.text.clone();
        let action = match &step.instruction {
            Instruction::From { .. } => {
                return Err(Error::new(
                    "FROM inside a stage (the parser starts a new one)",
                ))
            }
            Instruction::Run { command, network } => {
                let argv = self.argv(command);
                let mut env = self.config.env.clone();
                for (k, v) in &self.args {
                    if self.config.env_value(k).is_none() {
                        env.push(format!("{k}={v}"));
                    }
                }
                let args = self.arg_pairs();
                created_by = if args.is_empty() {
                    format!("RUN {}", argv.join(" "))
                } else {
                    let list: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("RUN |{} {} {}", list.len(), list.join(" "), argv.join(" "))
                };
                let network = match network {
                    Some(n) => Some(self.x(n, &mut used)?),
                    None => None,
                };
                return Ok(StepOutcome {
                    action: Action::Run(RunAction {
                        argv,
                        env,
                        user: self.config.user.clone(),
                        workdir: self.workdir(),
                        network,
                    }),
                    created_by,
                    cache_args: args,
                });
            }
            Instruction::Copy(spec) => Action::Copy(self.copy(spec, false, &mut used)?),
            Instruction::Add(spec) => Action::Copy(self.copy(spec, true, &mut used)?),
            Instruction::Cmd(command) => {
                self.config.cmd = Some(self.argv(command));
                self.cmd_set = true;
                Action::Config
            }
            Instruction::Entrypoint(command) => {
                self.config.entrypoint = Some(self.argv(command));
                // docker resets an inherited CMD when the stage sets ENTRYPOINT.
                if !self.cmd_set {
                    self.config.cmd = None;
                }
                Action::Config
            }
            Instruction::Env(pairs) => {
                // Every pair sees the environment from before the line.
                let mut out = Vec::new();
                for (k, v) in pairs {
                    let k = self.x(k, &mut used)?;
                    if k.is_empty() {
                        return Err(Error::new("ENV names can not be blank"));
                    }
                    out.push((k, self.x(v, &mut used)?));
                }
                for (k, v) in &out {
                    self.config.set_env(k, v);
                }
                let list: Vec<String> = out.iter().map(|(k, v)| format!("{k}={v}")).collect();
                created_by = format!("ENV {}", list.join(" "));
                Action::Config
            }
            Instruction::Arg(decls) => {
                for (name, default) in decls {
                    let value = match self.build_args.get(name) {
                        Some(v) => Some(v.to_string()),
                        None => match default {
                            Some(d) => Some(self.x(d, &mut used)?),
                            None => self.global_args.get(name).cloned(),
                        },
                    };
                    match value {
                        Some(v) => {
                            self.args.insert(name.clone(), v);
                        }
                        None => {
                            self.args.remove(name);
                        }
                    }
                }
                Action::Config
            }
            Instruction::Label(pairs) => {
                let mut list = Vec::new();
                for (k, v) in pairs {
                    let k = self.x(k, &mut used)?;
                    let v = self.x(v, &mut used)?;
                    if k.is_empty() {
                        return Err(Error::new("LABEL names can not be blank"));
                    }
                    list.push(format!("{k}={v}"));
                    self.config.labels.insert(k, v);
                }
                created_by = format!("LABEL {}", list.join(" "));
                Action::Config
            }
            Instruction::Workdir(path) => {
                let path = self.x(path, &mut used)?;
                let joined = if path.starts_with('/') {
                    path
                } else {
                    format!("{}/{}", self.workdir(), path)
                };
                let clean = clean_path(&joined);
                self.config.working_dir = clean.clone();
                created_by = format!("WORKDIR {clean}");
                Action::Workdir(clean)
            }
            Instruction::User(user) => {
                let user = self.x(user, &mut used)?;
                if user.is_empty() {
                    return Err(Error::new("USER needs a user"));
                }
                created_by = format!("USER {user}");
                self.config.user = user;
                Action::Config
            }
            Instruction::Expose(ports) => {
                let mut list = Vec::new();
                for p in ports {
                    let p = port(&self.x(p, &mut used)?)?;
                    list.push(p.clone());
                    self.config.exposed_ports.insert(p, Empty {});
                }
                created_by = format!("EXPOSE {}", list.join(" "));
                Action::Config
            }
            Instruction::Volume(volumes) => {
                let mut list = Vec::new();
                for v in volumes {
                    let v = self.x(v, &mut used)?;
                    if v.trim().is_empty() {
                        return Err(Error::new("VOLUME needs non-empty paths"));
                    }
                    list.push(v.clone());
                    self.config.volumes.insert(v, Empty {});
                }
                created_by = format!("VOLUME [{}]", list.join(" "));
                Action::Config
            }
            Instruction::StopSignal(signal) => {
                let signal = stop_signal(&self.x(signal, &mut used)?)?;
                created_by = format!("STOPSIGNAL {signal}");
                self.config.stop_signal = signal;
                Action::Config
            }
            Instruction::Healthcheck(None) => {
                self.config.healthcheck = Some(HealthConfig {
                    test: vec!["NONE".to_string()],
                    ..HealthConfig::default()
                });
                Action::Config
            }
            Instruction::Healthcheck(Some(h)) => {
                self.config.healthcheck = Some(health(h)?);
                Action::Config
            }
            Instruction::Shell(shell) => {
                self.config.shell = shell.clone();
                Action::Config
            }
            Instruction::Onbuild(text, _) => {
                self.config.on_build.push(text.clone());
                Action::Config
            }
            Instruction::Maintainer(who) => {
                self.author = Some(self.x(who, &mut used)?);
                Action::Config
            }
        };
        let cache_args = used
            .into_iter()
            .filter(|n| self.config.env_value(n).is_none() && !is_predefined_arg(n))
            .filter_map(|n| self.args.get(&n).map(|v| (n, v.clone())))
            .collect();
        Ok(StepOutcome {
            action,
            created_by,
            cache_args,
        })
    }

    fn copy(
        &self,
        spec: &CopySpec,
        add: bool,
        used: &mut Vec<String>,
    ) -> Result<CopyAction, Error> {
        let keyword = if add { "ADD" } else { "COPY" };
        let mut sources = Vec::new();
        for s in &spec.sources {
            let s = self.x(s, used)?;
            if s.is_empty() {
                return Err(Error::new(format!("{keyword}: an empty source")));
            }
            sources.push(s);
        }
        let dest = self.x(&spec.dest, used)?;
        if dest.is_empty() {
            return Err(Error::new(format!("{keyword}: an empty destination")));
        }
        let dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
        let joined = if dest.starts_with('/') {
            dest.clone()
        } else {
            format!("{}/{}", self.workdir(), dest)
        };
        let mut clean = clean_path(&joined);
        if dir && !clean.ends_with('/') {
            clean.push('/');
        }
        if sources.len() > 1 && !clean.ends_with('/') {
            return Err(Error::new(format!(
                "{keyword} with more than one source needs a directory destination ending in /"
            )));
        }
        let from = match &spec.from {
            Some(f) => Some(self.x(f, used)?),
            None => None,
        };
        let chown = match &spec.chown {
            Some(c) => Some(self.x(c, used)?),
            None => None,
        };
        let chmod = match &spec.chmod {
            Some(c) => Some(octal_mode(&self.x(c, used)?)?),
            None => None,
        };
        Ok(CopyAction {
            add,
            from,
            sources,
            dest: clean,
            chown,
            chmod,
        })
    }
}

fn health(h: &Healthcheck) -> Result<HealthConfig, Error> {
    let duration = |v: &Option<String>| -> Result<Option<i64>, Error> {
        match v {
            Some(v) => parse_duration(v).map(Some),
            None => Ok(None),
        }
    };
    let test = match &h.test {
        Command::Exec(argv) => {
            let mut t = vec!["CMD".to_string()];
            t.extend(argv.iter().cloned());
            t
        }
        Command::Shell(text) => vec!["CMD-SHELL".to_string(), text.clone()],
    };
    let retries = match &h.retries {
        Some(r) => Some(
            r.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| Error::new(format!("HEALTHCHECK --retries={r}: not a count")))?,
        ),
        None => None,
    };
    Ok(HealthConfig {
        test,
        interval: duration(&h.interval)?,
        timeout: duration(&h.timeout)?,
        start_period: duration(&h.start_period)?,
        start_interval: duration(&h.start_interval)?,
        retries,
    })
}

/// Splits a `--chown` value into user and group as written (`USER[:GROUP]`, names or ids).
pub fn split_chown(value: &str) -> (String, Option<String>) {
    match value.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (value.to_string(), None),
    }
}
