//! docker's prunes: `container prune`, `image prune [-a]`, `network prune` and `system prune
//! [-a] [--volumes]`, each asking first unless `-f`, listing what went and the space reclaimed.

use super::format;
use super::CliResult;
use crate::prune::Pruned;
use crate::Client;
use clap::Args;

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
}

#[derive(Args, Debug)]
pub struct ImagePruneArgs {
    /// Every image no container uses, not only dangling (untagged) ones.
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
}

#[derive(Args, Debug)]
pub struct SystemPruneArgs {
    /// Every image no container uses, not only dangling ones.
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
    /// Anonymous volumes no container uses too.
    #[arg(long)]
    volumes: bool,
}

/// docker's prompt; anything but y/yes (or no input) declines.
fn confirm(what: &[&str]) -> CliResult<bool> {
    use std::io::Write;
    println!("WARNING! This will remove:");
    for w in what {
        println!("  - {w}");
    }
    print!("\nAre you sure you want to continue? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("read the answer: {e}"))?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn list(title: &str, p: &Pruned) {
    if !p.deleted.is_empty() {
        println!("{title}:");
        for d in &p.deleted {
            println!("{d}");
        }
        println!();
    }
}

fn total(bytes: u64) {
    println!(
        "Total reclaimed space: {}",
        format::human_size(bytes.min(i64::MAX as u64) as i64)
    );
}

pub async fn container_prune(client: &Client, a: PruneArgs) -> CliResult {
    if !a.force && !confirm(&["all stopped containers"])? {
        return Ok(0);
    }
    let p = client.prune_containers().await?;
    list("Deleted Containers", &p);
    total(p.space_reclaimed);
    Ok(0)
}

pub async fn image_prune(client: &Client, a: ImagePruneArgs) -> CliResult {
    let what = if a.all {
        "all images without at least one container associated to them"
    } else {
        "all dangling images"
    };
    if !a.force && !confirm(&[what])? {
        return Ok(0);
    }
    let p = client.prune_images(a.all).await?;
    list("Deleted Images", &p);
    total(p.space_reclaimed);
    Ok(0)
}

pub async fn network_prune(client: &Client, a: PruneArgs) -> CliResult {
    if !a.force && !confirm(&["all networks not used by at least one container"])? {
        return Ok(0);
    }
    let p = client.prune_networks().await?;
    list("Deleted Networks", &p);
    Ok(0)
}

pub async fn system_prune(client: &Client, a: SystemPruneArgs) -> CliResult {
    let mut what = vec![
        "all stopped containers",
        "all networks not used by at least one container",
    ];
    if a.volumes {
        what.push("all anonymous volumes not used by at least one container");
    }
    what.push(if a.all {
        "all images without at least one container associated to them"
    } else {
        "all dangling images"
    });
    what.push("all build cache");
    if !a.force && !confirm(&what)? {
        return Ok(0);
    }
    // Containers first: the images, networks and volumes they held become unused.
    let containers = client.prune_containers().await?;
    list("Deleted Containers", &containers);
    let networks = client.prune_networks().await?;
    list("Deleted Networks", &networks);
    let mut reclaimed = containers.space_reclaimed;
    if a.volumes {
        let v = client.volumes().prune(false, Default::default()).await?;
        if !v.deleted.is_empty() {
            println!("Deleted Volumes:");
            for n in &v.deleted {
                println!("{n}");
            }
            println!();
        }
        reclaimed += v.space_reclaimed;
    }
    let images = client.prune_images(a.all).await?;
    list("Deleted Images", &images);
    reclaimed += images.space_reclaimed;
    let cache = client.prune_build_cache().await?;
    reclaimed += cache.space_reclaimed;
    total(reclaimed);
    Ok(0)
}
