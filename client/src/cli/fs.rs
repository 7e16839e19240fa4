//! Filesystem commands on a container: diff, export.

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
