//! `berth network create|ls|inspect|rm` over the daemon's Networks service.

use super::CliResult;
use crate::networks::Network;
use crate::Client;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a bridge network.
    #[command(
        after_help = "Examples:\n  berth network create app\n  berth network create --subnet 10.77.0.0/24 app"
    )]
    Create(CreateArgs),
    /// List networks.
    #[command(visible_alias = "list")]
    Ls {
        /// Only names.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Show networks in detail (JSON).
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks.
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove every network no container uses (the default network stays).
    #[command(after_help = "Example:\n  berth network prune -f")]
    Prune(super::prune::PruneArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The subnet in CIDR form (default: a free /24 the daemon picks).
    #[arg(long)]
    subnet: Option<String>,
    /// A label KEY=VALUE.
    #[arg(long = "label")]
    labels: Vec<String>,
    name: String,
}

fn value(n: &Network) -> Value {
    json!({
        "Name": n.name,
        "Id": n.id,
        "Driver": "bridge",
        "Subnets": n.subnets,
        "Gateway": n.gateway,
        "Bridge": n.bridge,
        "Labels": n.labels,
        "Default": n.is_default,
        "Managed": n.managed,
    })
}

pub async fn network_command(client: &Client, c: NetworkCommand) -> CliResult {
    let networks = client.networks();
    match c {
        NetworkCommand::Create(a) => {
            let labels = a
                .labels
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (l.clone(), String::new()),
                })
                .collect();
            let n = networks
                .create(&a.name, a.subnet.as_deref(), labels)
                .await?;
            println!("{}", if n.id.is_empty() { &n.name } else { &n.id });
        }
        NetworkCommand::Ls { quiet } => {
            let all = networks.list().await?;
            if quiet {
                for n in &all {
                    println!("{}", n.name);
                }
            } else {
                println!("{:<20} {:<20} GATEWAY", "NAME", "SUBNET");
                for n in &all {
                    println!("{:<20} {:<20} {}", n.name, n.subnets.join(","), n.gateway);
                }
            }
        }
        NetworkCommand::Inspect { networks: names } => {
            let mut out = Vec::new();
            let mut failed = None;
            for name in &names {
                match networks.get(name).await {
                    Ok(n) => out.push(value(&n)),
                    Err(e) => failed = Some(e),
                }
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
            );
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        NetworkCommand::Prune(a) => return super::prune::network_prune(client, a).await,
        NetworkCommand::Rm { networks: names } => {
            let mut failed = None;
            for name in &names {
                match networks.remove(name).await {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("berth: {name}: {e}");
                        failed = Some(e);
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
    }
    Ok(0)
}
