//! Filesystem commands on a container: diff, export, cp, commit.

use super::CliResult;
use crate::Client;
use clap::Args;

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The container (name or id prefix).
    container: String,
}

/// docker's `diff`: one `A|C|D /path` line per change, sorted by path.
pub async fn diff(client: &Client, a: DiffArgs) -> CliResult {
    let container = client.containers().find(&a.container).await?;
    let changes = client.container_changes(&container).await?;
    let mut out = String::new();
    for c in changes {
        out.push(c.kind.letter());
        out.push(' ');
        out.push_str(&c.path);
        out.push('\n');
    }
    print!("{out}");
    Ok(0)
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The container (name or id prefix).
    container: String,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<std::path::PathBuf>,
}

/// docker's `export`: a tar of the container's filesystem, to a file or a non-terminal stdout.
pub async fn export(client: &Client, a: ExportArgs) -> CliResult {
    use std::io::IsTerminal;
    let container = client.containers().find(&a.container).await?;
    match &a.output {
        Some(path) => {
            let mut file = std::fs::File::create(path)
                .map_err(|e| format!("create {}: {e}", path.display()))?;
            if let Err(e) = client.export_container(&container, &mut file).await {
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(e.into());
            }
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                return Err(String::from(
                    "refusing to write a tar to a terminal: use -o FILE or a redirect",
                )
                .into());
            }
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout);
            client.export_container(&container, &mut out).await?;
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct CpArgs {
    /// Keep the source's owners (uid:gid) instead of the destination user's.
    #[arg(short = 'a', long)]
    archive: bool,
    /// Follow a symlink given as the source (host side).
    #[arg(short = 'L', long = "follow-link")]
    follow_link: bool,
    /// CONTAINER:SRC_PATH or a host path.
    #[arg(value_name = "SRC")]
    src: String,
    /// CONTAINER:DEST_PATH or a host path.
    #[arg(value_name = "DEST")]
    dest: String,
}

/// `CONTAINER:PATH` as docker splits it: a colon before any `/`, and not a relative or
/// absolute host path.
fn container_part(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    let (c, p) = arg.split_once(':')?;
    (!c.is_empty() && !c.contains('/')).then_some((c, p))
}

/// docker's `cp`, one side in a container, the other on the host.
pub async fn cp(client: &Client, a: CpArgs) -> CliResult {
    let ownership = if a.archive {
        crate::cp::Ownership::Archive
    } else {
        crate::cp::Ownership::Default
    };
    match (container_part(&a.src), container_part(&a.dest)) {
        (Some((name, src)), None) => {
            if a.dest == "-" {
                return Err(String::from(
                    "copying to stdout as a tar is not supported yet: give a host path",
                )
                .into());
            }
            let c = client.containers().find(name).await?;
            let src = if src.is_empty() { "/" } else { src };
            client
                .copy_from_container(&c, src, std::path::Path::new(&a.dest), ownership)
                .await?;
        }
        (None, Some((name, dest))) => {
            if a.src == "-" {
                return Err(String::from(
                    "copying a tar from stdin is not supported yet: give a host path",
                )
                .into());
            }
            let c = client.containers().find(name).await?;
            let dest = if dest.is_empty() { "/" } else { dest };
            let mut src = std::path::PathBuf::from(&a.src);
            if a.follow_link {
                src = std::fs::canonicalize(&src)
                    .map_err(|e| format!("{}: {e}", a.src))?;
            }
            client.copy_to_container(&c, &src, dest, ownership).await?;
        }
        (Some(_), Some(_)) => {
            return Err(String::from("copying between containers is not supported").into())
        }
        (None, None) => {
            return Err(String::from(
                "must specify at least one container source: berth cp CONTAINER:SRC DEST or berth cp SRC CONTAINER:DEST",
            )
            .into())
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    /// The history entry's comment.
    #[arg(short = 'm', long)]
    message: Option<String>,
    /// The author ("Name <email>").
    #[arg(short = 'a', long)]
    author: Option<String>,
    /// A Dockerfile instruction for the config: CMD, ENTRYPOINT, ENV, LABEL, WORKDIR, USER,
    /// STOPSIGNAL, EXPOSE, VOLUME.
    #[arg(short = 'c', long = "change")]
    changes: Vec<String>,
    /// Pause the container while its changes are read.
    #[arg(short = 'p', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pause: bool,
    /// The container (name or id prefix).
    container: String,
    /// The new image's name.
    #[arg(value_name = "REPOSITORY[:TAG]")]
    reference: Option<String>,
}

/// docker's `commit`: prints the new image's id.
pub async fn commit(client: &Client, a: CommitArgs) -> CliResult {
    let reference = a.reference.ok_or_else(|| {
        String::from(
            "berth keeps images by name: give one (berth commit CONTAINER REPOSITORY[:TAG])",
        )
    })?;
    let container = client.containers().find(&a.container).await?;
    let done = client
        .commit_container(
            &container,
            &crate::commit::CommitOptions {
                reference,
                message: a.message,
                author: a.author,
                changes: a.changes,
                pause: a.pause,
            },
        )
        .await?;
    println!("{}", done.config_digest);
    Ok(0)
}
