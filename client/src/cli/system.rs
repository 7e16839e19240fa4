//! System commands: events, info, version, namespace ls, system df.

use super::format::{self, Format};
use super::CliResult;
use crate::events::Event;
use crate::Client;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tokio_stream::StreamExt;

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// docker's filters: container=, image=, event=, type=, namespace=; or a containerd
    /// filter expression (topic~="/tasks/").
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// json, or a template such as '{{.Topic}} {{.Attributes.container_id}}'.
    #[arg(long)]
    format: Option<String>,
}

/// One docker-style filter, matched on this side.
enum EventFilter {
    Container(String),
    Image(String),
    Event(String),
    Type(String),
}

fn event_value(e: &Event) -> Value {
    json!({
        "Time": e.timestamp.map(crate::events::rfc3339),
        "Namespace": e.namespace,
        "Topic": e.topic,
        "Type": e.kind,
        "Attributes": e.attributes,
    })
}

pub async fn events(client: &Client, a: EventsArgs) -> CliResult {
    let mut server = Vec::new();
    let mut local = Vec::new();
    for f in &a.filters {
        if f.contains("==") || f.contains("~=") || f.contains("!=") {
            server.push(f.clone());
            continue;
        }
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("invalid filter {f:?}: want KEY=VALUE"))?;
        match k {
            "container" => {
                // A name becomes the id the events carry.
                let id = match client.containers().find(v).await {
                    Ok(c) => c.id,
                    Err(_) => v.to_string(),
                };
                local.push(EventFilter::Container(id));
            }
            "image" => local.push(EventFilter::Image(crate::images::normalize(v))),
            "event" => local.push(EventFilter::Event(v.to_string())),
            "type" => local.push(EventFilter::Type(v.to_string())),
            "namespace" => server.push(format!("namespace=={v:?}")),
            other => {
                return Err(format!(
                    "invalid filter {other:?}: use container, image, event, type or namespace"
                )
                .into())
            }
        }
    }
    let format = Format::parse(a.format.as_deref());
    let mut stream = client.events().subscribe(server).await?;
    while let Some(event) = stream.next().await {
        let e = event?;
        let keep = local.iter().all(|f| match f {
            EventFilter::Container(id) => {
                e.attributes.get("container_id") == Some(id) || e.attributes.get("id") == Some(id)
            }
            EventFilter::Image(name) => {
                e.attributes.get("name") == Some(name) || e.attributes.get("image") == Some(name)
            }
            EventFilter::Event(action) => e.topic.rsplit('/').next() == Some(action.as_str()),
            EventFilter::Type(t) => {
                let kind = e
                    .topic
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or("");
                kind == t || kind.trim_end_matches('s') == t
            }
        });
        if !keep {
            continue;
        }
        let v = event_value(&e);
        match &format {
            Format::Json => println!("{v}"),
            Format::Template { template, .. } => println!("{}", format::render(template, &v)?),
            Format::Table => {
                let attrs: Vec<String> = e
                    .attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{} {} {} ({})",
                    e.timestamp.map(crate::events::rfc3339).unwrap_or_default(),
                    e.namespace,
                    e.topic,
                    attrs.join(", ")
                );
            }
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// json, or a template.
    #[arg(short = 'f', long)]
    format: Option<String>,
}

pub async fn info(client: &Client, a: InfoArgs, host: &str) -> CliResult {
    let version = client.server_version().await?;
    let server = client.server_info().await?;
    let containers = client.containers().list_brief(&[]).await?;
    let tasks = client.tasks().list().await?;
    let images = client.images().list(&[]).await?;
    let namespaces = client.namespaces().await?;
    let (mut running, mut paused, mut stopped) = (0, 0, 0);
    for c in &containers {
        match Some(crate::lifecycle::status_of_container(c, tasks.get(&c.id))) {
            Some(crate::lifecycle::ContainerStatus::Running { .. }) => running += 1,
            Some(crate::lifecycle::ContainerStatus::Paused { .. }) => paused += 1,
            _ => stopped += 1,
        }
    }
    let plugins: Vec<Value> = server
        .plugins
        .iter()
        .map(|(t, id, ok)| json!({"Type": t, "ID": id, "Ok": ok}))
        .collect();
    let v = json!({
        "Host": if host.is_empty() { crate::Host::default_host().map(|h| h.to_string()).unwrap_or_default() } else { host.to_string() },
        "ServerVersion": version.version(),
        "ContainerdVersion": version.containerd,
        "Revision": version.revision,
        "UUID": server.uuid,
        "Pid": server.pid,
        "Namespace": client.namespace(),
        "Namespaces": namespaces.len(),
        "Containers": containers.len(),
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": stopped,
        "Images": images.len(),
        "Plugins": plugins,
    });
    match Format::parse(a.format.as_deref()) {
        Format::Json => println!("{v}"),
        Format::Template { template, .. } => println!("{}", format::render(&template, &v)?),
        Format::Table => {
            println!(
                "Server Version: {}",
                v["ServerVersion"].as_str().unwrap_or("")
            );
            println!(
                "Containerd API: {}",
                v["ContainerdVersion"].as_str().unwrap_or("")
            );
            println!("Revision: {}", v["Revision"].as_str().unwrap_or(""));
            println!(
                "Daemon: {} (pid {})",
                v["Host"].as_str().unwrap_or(""),
                server.pid
            );
            println!("UUID: {}", server.uuid);
            println!(
                "Namespace: {} (of {})",
                client.namespace(),
                namespaces.len()
            );
            println!("Containers: {}", containers.len());
            println!(" Running: {running}");
            println!(" Paused: {paused}");
            println!(" Stopped: {stopped}");
            println!("Images: {}", images.len());
            println!("Plugins:");
            for (t, id, ok) in &server.plugins {
                println!(
                    " {t} {id}{}",
                    if *ok { "" } else { " (failed to initialise)" }
                );
            }
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// json, or a template such as '{{.Server.Version}}'.
    #[arg(short = 'f', long)]
    format: Option<String>,
}

pub async fn version(client: &Client, a: VersionArgs) -> CliResult {
    let server = client.server_version().await?;
    let v = json!({
        "Client": {"Version": env!("CARGO_PKG_VERSION"), "Os": std::env::consts::OS, "Arch": crate::images::oci_arch()},
        "Server": {"Version": server.version(), "Containerd": server.containerd, "Revision": server.revision},
    });
    match Format::parse(a.format.as_deref()) {
        Format::Json => println!("{v}"),
        Format::Template { template, .. } => println!("{}", format::render(&template, &v)?),
        Format::Table => {
            println!(
                "Client:\n Version: {}\n OS/Arch: {}/{}",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                crate::images::oci_arch()
            );
            println!(
                "\nServer:\n Version: {}\n Containerd API: {}\n Revision: {}",
                server.version(),
                server.containerd,
                server.revision
            );
        }
    }
    Ok(0)
}

#[derive(Subcommand, Debug)]
pub enum NamespaceCommand {
    /// List namespaces.
    #[command(visible_alias = "list")]
    Ls {
        /// Only names.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
}

pub async fn namespace(client: &Client, c: NamespaceCommand) -> CliResult {
    match c {
        NamespaceCommand::Ls { quiet } => {
            let mut list = client.namespaces().await?;
            list.sort_by(|a, b| a.0.cmp(&b.0));
            if quiet {
                for (n, _) in &list {
                    println!("{n}");
                }
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|(n, labels)| {
                        let mut l: Vec<String> =
                            labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        l.sort();
                        vec![n.clone(), l.join(",")]
                    })
                    .collect();
                format::print_table(&["NAME", "LABELS"], &rows);
            }
            Ok(0)
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Show disk usage: images, containers, local volumes, build cache.
    #[command(after_help = "Examples:\n  berth system df\n  berth system df --format json")]
    Df {
        /// table, json, or a Go-template-like format ('{{.Type}} {{.Size}}').
        #[arg(long)]
        format: Option<String>,
    },
    /// Show the daemon's information (as `berth info`).
    Info(InfoArgs),
    /// Show the daemon's events (as `berth events`).
    Events(EventsArgs),
    /// Remove stopped containers, unused networks, dangling images and the build cache
    /// (-a: every unused image; --volumes: unused anonymous volumes).
    #[command(
        after_help = "Examples:\n  berth system prune -f\n  berth system prune -a --volumes -f"
    )]
    Prune(super::prune::SystemPruneArgs),
}

/// One row of `system df`.
fn df_row(kind: &str, total: usize, active: usize, size: i64, reclaimable: i64) -> Value {
    let pct = if size > 0 {
        format!(" ({}%)", reclaimable * 100 / size)
    } else {
        String::new()
    };
    json!({
        "Type": kind,
        "TotalCount": total.to_string(),
        "Active": active.to_string(),
        "Size": format::human_size(size),
        "Reclaimable": format!("{}{pct}", format::human_size(reclaimable)),
        "SizeBytes": size,
        "ReclaimableBytes": reclaimable,
    })
}

/// docker's `system df`, for this namespace.
pub async fn df(client: &Client, fmt: Option<String>) -> CliResult {
    let u = client.disk_usage().await?;
    let rows: Vec<Value> = [
        ("Images", &u.images),
        ("Containers", &u.containers),
        ("Local Volumes", &u.volumes),
        ("Build Cache", &u.build_cache),
    ]
    .iter()
    .map(|(k, c)| df_row(k, c.total, c.active, c.size, c.reclaimable))
    .collect();
    format::print_list(&Format::parse(fmt.as_deref()), &rows, |vs| {
        let rows: Vec<Vec<String>> = vs
            .iter()
            .map(|v| format::cells(v, &["Type", "TotalCount", "Active", "Size", "Reclaimable"]))
            .collect();
        format::print_table(&["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], &rows);
    })?;
    Ok(0)
}
