//! `berth volume create|ls|inspect|rm|prune` over the daemon's Volumes service, with docker's
//! flags and output.

use super::format::{self, Format};
use super::CliResult;
use crate::volumes::Volume;
use crate::Client;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (a generated name when none is given).
    #[command(
        after_help = "Examples:\n  berth volume create data\n  berth volume create --label team=web cache"
    )]
    Create(CreateArgs),
    /// List volumes.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  berth volume ls -q\n  berth volume ls --filter dangling=true\n  berth volume ls --format '{{.Name}} {{.Mountpoint}}'"
    )]
    Ls(LsArgs),
    /// Show volumes in detail (JSON).
    #[command(after_help = "Example:\n  berth volume inspect --format '{{.Mountpoint}}' data")]
    Inspect {
        /// A Go-template-like format, e.g. '{{.Mountpoint}}'.
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true, value_name = "VOLUME")]
        volumes: Vec<String>,
    },
    /// Remove volumes (refused while a container uses one).
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  berth volume rm data"
    )]
    Rm {
        /// Do not fail on volumes that do not exist.
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true, value_name = "VOLUME")]
        volumes: Vec<String>,
    },
    /// Remove volumes no container uses (anonymous ones unless --all).
    #[command(after_help = "Examples:\n  berth volume prune -f\n  berth volume prune -a -f")]
    Prune(PruneArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The driver: only "local".
    #[arg(short = 'd', long, default_value = "local")]
    driver: String,
    /// A label KEY=VALUE.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Driver options (the local driver of berth takes none).
    #[arg(short = 'o', long = "opt")]
    opts: Vec<String>,
    name: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only names.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// dangling=true|false, name=SUBSTRING, label=KEY[=VALUE], driver=local.
    #[arg(short = 'f', long = "filter")]
    filters: Vec<String>,
    /// table, json, or a Go-template-like format ('{{.Name}}').
    #[arg(long)]
    format: Option<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Named volumes too, not only anonymous ones.
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
    /// label=KEY[=VALUE].
    #[arg(long = "filter")]
    filters: Vec<String>,
}

fn labels_of(list: &[String]) -> HashMap<String, String> {
    list.iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect()
}

/// docker's `volume inspect` object.
pub fn value(v: &Volume) -> Value {
    let created = v
        .created_at
        .as_ref()
        .map(|t| {
            crate::clock::rfc3339(
                std::time::UNIX_EPOCH
                    + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32),
            )
        })
        .unwrap_or_default();
    let mut o = json!({
        "CreatedAt": created,
        "Driver": v.driver,
        "Labels": v.labels,
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": {},
        "Scope": "local",
        "Anonymous": v.anonymous,
    });
    if let Some(u) = &v.usage {
        o["UsageData"] = json!({"Size": u.size, "RefCount": u.ref_count});
    }
    o
}

fn matches(v: &Volume, filter: &str) -> CliResult<bool> {
    let (key, want) = filter
        .split_once('=')
        .ok_or_else(|| format!("invalid filter {filter:?}: want KEY=VALUE"))?;
    Ok(match key {
        "name" => v.name.contains(want),
        "driver" => v.driver == want,
        "label" => match want.split_once('=') {
            Some((k, val)) => v.labels.get(k).is_some_and(|l| l == val),
            None => v.labels.contains_key(want),
        },
        "dangling" => {
            let dangling = match want {
                "true" | "1" => true,
                "false" | "0" => false,
                other => return Err(format!("invalid dangling filter {other:?}").into()),
            };
            v.usage.as_ref().is_some_and(|u| u.ref_count == 0) == dangling
        }
        other => {
            return Err(format!(
                "invalid filter {other:?}: volume ls takes dangling, name, label, driver"
            )
            .into())
        }
    })
}

pub async fn volume_command(client: &Client, c: VolumeCommand) -> CliResult {
    let volumes = client.volumes();
    match c {
        VolumeCommand::Create(a) => {
            if a.driver != "local" {
                return Err(format!(
                    "volume driver {:?} is not available: berth has only \"local\"",
                    a.driver
                )
                .into());
            }
            if let Some(o) = a.opts.first() {
                return Err(
                    format!("volume option {o:?}: berth's local driver takes no options").into(),
                );
            }
            let v = volumes
                .create(a.name.as_deref(), labels_of(&a.labels))
                .await?;
            println!("{}", v.name);
        }
        VolumeCommand::Ls(a) => {
            let dangling = a.filters.iter().any(|f| f.starts_with("dangling="));
            let mut all = volumes.list(dangling).await?;
            for f in &a.filters {
                let mut kept = Vec::new();
                for v in all {
                    if matches(&v, f)? {
                        kept.push(v);
                    }
                }
                all = kept;
            }
            if a.quiet {
                for v in &all {
                    println!("{}", v.name);
                }
                return Ok(0);
            }
            let values: Vec<Value> = all.iter().map(value).collect();
            format::print_list(&Format::parse(a.format.as_deref()), &values, |vs| {
                let rows: Vec<Vec<String>> = vs
                    .iter()
                    .map(|v| format::cells(v, &["Driver", "Name"]))
                    .collect();
                format::print_table(&["DRIVER", "VOLUME NAME"], &rows);
            })?;
        }
        VolumeCommand::Inspect {
            format: fmt,
            volumes: names,
        } => {
            let mut out = Vec::new();
            let mut code = 0;
            for name in &names {
                match volumes.get(name).await {
                    Ok(v) => out.push(value(&v)),
                    Err(e) if e.is_not_found() => {
                        eprintln!("berth: no such volume: {name}");
                        code = 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            match fmt {
                Some(f) => {
                    for v in &out {
                        println!("{}", format::render(&f, v)?);
                    }
                }
                None => println!(
                    "{}",
                    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
                ),
            }
            return Ok(code);
        }
        VolumeCommand::Rm {
            force,
            volumes: names,
        } => {
            let mut code = 0;
            for name in &names {
                match volumes.remove(name).await {
                    Ok(()) => println!("{name}"),
                    Err(e) if force && e.is_not_found() => {}
                    Err(e) => {
                        eprintln!("berth: {e}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
        VolumeCommand::Prune(a) => {
            let mut labels = HashMap::new();
            for f in &a.filters {
                match f.split_once('=') {
                    Some(("label", l)) => labels.extend(labels_of(&[l.to_string()])),
                    _ => {
                        return Err(
                            format!("invalid filter {f:?}: volume prune takes label=").into()
                        )
                    }
                }
            }
            if !a.force && !confirm(a.all)? {
                return Ok(0);
            }
            let p = volumes.prune(a.all, labels).await?;
            if !p.deleted.is_empty() {
                println!("Deleted Volumes:");
                for n in &p.deleted {
                    println!("{n}");
                }
                println!();
            }
            println!(
                "Total reclaimed space: {}",
                format::human_size(p.space_reclaimed as i64)
            );
        }
    }
    Ok(0)
}

/// docker's prompt before a prune; anything but y/yes (or no input) declines.
fn confirm(all: bool) -> CliResult<bool> {
    use std::io::Write;
    let what = if all {
        "all volumes not used by at least one container"
    } else {
        "all anonymous volumes not used by at least one container"
    };
    print!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("read the answer: {e}"))?;
    let yes = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
    if !yes {
        println!();
    }
    Ok(yes)
}
