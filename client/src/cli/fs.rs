//! Filesystem commands on a container: diff.

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
