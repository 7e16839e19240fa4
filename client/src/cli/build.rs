//! `berth build` and `berth history`: flags parsed here, the work done by [`crate::build`]
//! and the image store.

use super::{format, CliResult};
use crate::build::{build as run_build, BuildOptions, Compression};
use crate::spec::Network;
use crate::Client;
use clap::Args;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Name and tag the image (repeatable).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// A build-time variable, NAME=VALUE or NAME (from this environment).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Build up to this stage.
    #[arg(long)]
    target: Option<String>,
    /// RUN's network: none, host, or a berthd network's name.
    #[arg(long, default_value = "none")]
    network: String,
    /// Set an image label, KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Progress output: auto, plain or quiet (quiet prints only the image id).
    #[arg(long, default_value = "auto")]
    progress: String,
    /// Print only the image id.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Run every step, even those the layer cache has.
    #[arg(long)]
    no_cache: bool,
    /// Pull base images even when they are present.
    #[arg(long)]
    pull: bool,
    /// Where the image goes: type=image (the image store, the default) or
    /// type=oci,dest=FILE (an OCI archive as berth save writes); either may add
    /// compression=gzip|zstd|uncompressed for the layers the build writes.
    #[arg(short = 'o', long = "output")]
    output: Option<String>,
    /// How the build's layers are compressed: gzip (default), zstd or uncompressed
    /// (the same as -o …,compression=).
    #[arg(long)]
    compression: Option<String>,
    /// Build for this platform, os/arch[/variant] (default: this host's). FROM takes the
    /// platform's manifest from an index; RUN needs a host that can execute its programs.
    #[arg(long)]
    platform: Option<String>,
    /// The most one RUN may write into its layer, e.g. 512m or 20g (default 10g); a RUN
    /// over it is killed and its changes discarded.
    #[arg(long = "max-layer-size")]
    max_layer_size: Option<String>,
    /// A directory, or - for a tar on stdin.
    context: PathBuf,
}

pub async fn build(client: &Client, a: BuildArgs) -> CliResult {
    let (network, networks) = match a.network.as_str() {
        "none" | "default" => (Network::None, Vec::new()),
        "host" => (Network::Host, Vec::new()),
        name => (Network::Named, vec![name.to_string()]),
    };
    let mut labels = HashMap::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_string(), v.to_string());
    }
    if !matches!(a.progress.as_str(), "auto" | "plain" | "quiet") {
        return Err(format!("--progress {:?}: auto, plain or quiet", a.progress).into());
    }
    let quiet = a.quiet || a.progress == "quiet";
    let output = match a.output.as_deref() {
        None => Output::default(),
        Some(o) => parse_output(o)?,
    };
    let oci_dest = output.dest;
    let compression = match (a.compression.as_deref(), output.compression.as_deref()) {
        (None, None) => Compression::default(),
        (Some(c), None) | (None, Some(c)) => Compression::parse(c)?,
        (Some(flag), Some(o)) if flag == o => Compression::parse(flag)?,
        (Some(flag), Some(o)) => {
            return Err(format!("--compression {flag} and -o compression={o} disagree").into())
        }
    };
    // An archive needs an image to export: without -t, a temporary name removed afterwards.
    let mut tags = a.tags;
    let temporary = if oci_dest.is_some() && tags.is_empty() {
        let name = format!(
            "localhost/berth-build-export:{}",
            &crate::names::new_id()[..12]
        );
        tags.push(name.clone());
        Some(name)
    } else {
        None
    };
    let opts = BuildOptions {
        context: a.context,
        dockerfile: a.file,
        tags,
        build_args: a.build_args,
        target: a.target,
        network,
        networks,
        labels,
        limits: None,
        no_cache: a.no_cache,
        pull: a.pull,
        compression,
        platform: a.platform,
        max_layer_bytes: match &a.max_layer_size {
            None => None,
            Some(s) => Some(format::parse_bytes(s)?.max(1) as u64),
        },
    };
    let live = !quiet && a.progress == "auto" && std::io::stderr().is_terminal();
    let mut progress: Box<dyn std::io::Write + Send> = if quiet {
        Box::new(std::io::sink())
    } else if live {
        Box::new(LiveView::new())
    } else {
        Box::new(std::io::stderr())
    };
    let outcome = run_build(client, &opts, &mut *progress).await;
    // The live view's spinners are cleared before the image id or an error is printed.
    drop(progress);
    let outcome = outcome?;
    if let Some(dest) = oci_dest {
        let exported = export(client, &outcome.names, &dest).await;
        if let Some(name) = &temporary {
            client.images().remove(name, false).await?;
        }
        exported?;
    }
    // The image id berth images shows: the manifest's digest.
    println!("{}", outcome.manifest_digest);
    Ok(0)
}

/// `--progress auto` on a terminal: a spinner per stage showing its running step and how
/// long it has taken, each finished step printed above them with its time or CACHED. It reads
/// the same lines `plain` prints (`#STAGE [stage …] STEP`, `#STAGE CACHED`, `#STAGE DONE 1.2s`),
/// so both show the same build.
struct LiveView {
    multi: indicatif::MultiProgress,
    style: indicatif::ProgressStyle,
    /// By stage: its spinner, the step it runs, and whether the cache answered it.
    stages: HashMap<String, (indicatif::ProgressBar, String, bool)>,
    partial: Vec<u8>,
}

impl LiveView {
    fn new() -> LiveView {
        let style = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        LiveView {
            multi: indicatif::MultiProgress::new(),
            style,
            stages: HashMap::new(),
            partial: Vec::new(),
        }
    }

    fn line(&mut self, line: &str) {
        let Some((stage, rest)) = line
            .strip_prefix('#')
            .and_then(|l| l.split_once(' '))
            .filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
        else {
            let _ = self.multi.println(line);
            return;
        };
        if rest.starts_with('[') {
            let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(self.style.clone());
            bar.set_message(line.to_string());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            if let Some((old, _, _)) = self
                .stages
                .insert(stage.to_string(), (bar, line.to_string(), false))
            {
                old.finish_and_clear();
            }
        } else if rest == "CACHED" {
            if let Some(s) = self.stages.get_mut(stage) {
                s.2 = true;
            }
        } else if let Some(took) = rest.strip_prefix("DONE ") {
            if let Some((bar, step, cached)) = self.stages.remove(stage) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
                let how = if cached { "CACHED" } else { took };
                let _ = self.multi.println(format!("{step}  {how}"));
            }
        } else {
            let _ = self.multi.println(line);
        }
    }
}

impl std::io::Write for LiveView {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.line(String::from_utf8_lossy(&line[..end]).as_ref());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        for (bar, _, _) in self.stages.values() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

/// What `-o` asks for.
#[derive(Debug, Default, PartialEq)]
struct Output {
    /// `type=oci,dest=FILE`: the archive to write; None for `type=image`.
    dest: Option<PathBuf>,
    /// `compression=…`, checked by [`Compression::parse`].
    compression: Option<String>,
}

/// `-o`: `type=image` or `type=oci,dest=FILE`, either with `compression=NAME`.
fn parse_output(o: &str) -> CliResult<Output> {
    let usage = || {
        format!(
            "-o {o:?}: type=image or type=oci,dest=FILE (with compression=gzip|zstd|uncompressed)"
        )
    };
    let mut kind = None;
    let mut dest = None;
    let mut compression = None;
    for part in o.split(',') {
        match part.split_once('=') {
            Some(("type", t)) => kind = Some(t.to_string()),
            Some(("dest", d)) => dest = Some(PathBuf::from(d)),
            Some(("compression", c)) => {
                Compression::parse(c)?;
                compression = Some(c.to_string());
            }
            _ => return Err(usage().into()),
        }
    }
    let dest = match (kind.as_deref(), dest) {
        (Some("image") | None, None) => None,
        (Some("oci"), Some(d)) => Some(d),
        (Some("oci"), None) => return Err(format!("-o {o:?}: type=oci needs dest=FILE").into()),
        _ => return Err(usage().into()),
    };
    Ok(Output { dest, compression })
}

/// Writes the built image as an OCI archive beside `dest` and renames it into place, so a
/// failed export leaves no half archive.
async fn export(client: &Client, names: &[String], dest: &std::path::Path) -> CliResult<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| format!("create a file in {}: {e}", dir.display()))?;
    let file = tokio::fs::File::from_std(
        tmp.reopen()
            .map_err(|e| format!("open {}: {e}", tmp.path().display()))?,
    );
    client.images().export(names, file).await?.finish().await?;
    tmp.persist(dest)
        .map_err(|e| format!("write {}: {}", dest.display(), e.error))?;
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum BuilderCommand {
    /// Empty the layer cache (layers images still use stay).
    Prune,
}

pub async fn builder(client: &Client, c: BuilderCommand) -> CliResult {
    match c {
        BuilderCommand::Prune => {
            crate::build::prune(client).await?;
            Ok(0)
        }
    }
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    image: String,
    /// Do not truncate CREATED BY.
    #[arg(long)]
    no_trunc: bool,
    /// Print the entries as JSON lines.
    #[arg(long)]
    format: Option<String>,
}

pub async fn history(client: &Client, a: HistoryArgs) -> CliResult {
    let details = client.images().inspect(&a.image).await?;
    let entries = details.config.history().clone().unwrap_or_default();
    // Layer sizes are the manifest's (compressed) sizes, in history order of non-empty entries.
    let mut sizes = details.manifest.layers().iter().map(|l| l.size() as i64);
    let mut rows = Vec::new();
    for h in &entries {
        let size = if h.empty_layer() == Some(true) {
            0
        } else {
            sizes.next().unwrap_or(0)
        };
        rows.push((h.clone(), size));
    }
    rows.reverse();
    let top: String = details.image.id().chars().take(12).collect();
    if a.format.as_deref() == Some("json") {
        for (h, size) in &rows {
            println!(
                "{}",
                serde_json::json!({
                    "CreatedAt": h.created(),
                    "CreatedBy": h.created_by(),
                    "Size": size,
                    "Comment": h.comment(),
                    "EmptyLayer": h.empty_layer().unwrap_or(false),
                })
            );
        }
        return Ok(0);
    }
    println!(
        "{:<14}{:<22}{:<48}{:<10}COMMENT",
        "IMAGE", "CREATED", "CREATED BY", "SIZE"
    );
    for (i, (h, size)) in rows.iter().enumerate() {
        let id = if i == 0 {
            top.clone()
        } else {
            "<missing>".to_string()
        };
        let created = h
            .created()
            .as_deref()
            .and_then(created_ago)
            .unwrap_or_else(|| "N/A".to_string());
        let mut by = h.created_by().clone().unwrap_or_default();
        if !a.no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        println!(
            "{:<14}{:<22}{:<48}{:<10}{}",
            id,
            created,
            by,
            format::human_size(*size),
            h.comment().clone().unwrap_or_default()
        );
    }
    Ok(0)
}

/// "3 minutes ago" from an RFC 3339 UTC time (what builders write).
fn created_ago(t: &str) -> Option<String> {
    let b = t.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    let ago = std::time::Duration::from_secs(now.saturating_sub(secs).max(0) as u64);
    Some(format!("{} ago", crate::lifecycle::human_duration(ago)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(o: &str) -> Output {
        parse_output(o).unwrap_or_else(|f| panic!("{o}: {}", f.message))
    }

    fn refused(o: &str) -> String {
        match parse_output(o) {
            Ok(out) => panic!("{o} accepted as {out:?}"),
            Err(f) => f.message,
        }
    }

    #[test]
    fn output_takes_buildx_compression() {
        assert_eq!(ok("type=image"), Output::default());
        let o = ok("type=image,compression=zstd");
        assert_eq!((o.dest, o.compression.as_deref()), (None, Some("zstd")));
        let o = ok("type=oci,dest=out.tar,compression=uncompressed");
        assert_eq!(o.dest, Some(PathBuf::from("out.tar")));
        assert_eq!(o.compression.as_deref(), Some("uncompressed"));
        let err = refused("type=image,compression=bzip2");
        assert!(err.contains("gzip, zstd or uncompressed"), "{err}");
        assert!(refused("type=oci").contains("needs dest"));
        refused("type=tar,dest=x");
        assert_eq!(
            Compression::parse("zstd").map(Compression::media_type).ok(),
            Some("application/vnd.oci.image.layer.v1.tar+zstd")
        );
    }
}
