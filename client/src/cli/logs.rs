//! `berth logs`: reads the container's log files (written by its shim) directly; berthd is
//! asked only where they are and, with `-f`, whether the container still runs.

use super::CliResult;
use crate::logs::{self, LogLine, Stream};
use crate::Client;
use clap::Args;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing new output until the container stops (across rotations).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines ("all": every line).
    #[arg(short = 'n', long, default_value = "all", value_name = "N")]
    tail: String,
    /// Only lines from this time on (RFC3339, or a duration back from now: 10s, 5m, 2h).
    #[arg(long, value_name = "TS|DURATION")]
    since: Option<String>,
    /// Only lines before this time (same forms as --since).
    #[arg(long, value_name = "TS|DURATION")]
    until: Option<String>,
    /// Prefix each line with its time.
    #[arg(short = 't', long)]
    timestamps: bool,
    #[arg(value_name = "CONTAINER")]
    container: String,
}

fn print(line: &LogLine, timestamps: bool) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(line.content.len() + 40);
    if timestamps {
        buf.extend_from_slice(line.time.as_bytes());
        buf.push(b' ');
    }
    buf.extend_from_slice(&line.content);
    if line.complete {
        buf.push(b'\n');
    }
    match line.stream {
        Stream::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(&buf)?;
            o.flush()
        }
        Stream::Stderr => std::io::stderr().lock().write_all(&buf),
    }
}

pub async fn logs(client: &Client, a: LogsArgs) -> CliResult {
    let c = client.containers().find(&a.container).await?;
    let path = c
        .labels
        .get(logs::LOG_PATH_LABEL)
        .ok_or_else(|| format!("container {} was not created with a log", a.container))?;
    let path = Path::new(path).to_path_buf();
    let now = SystemTime::now();
    let bound = |s: &Option<String>, what: &str| -> Result<Option<String>, String> {
        s.as_deref()
            .map(|s| logs::parse_time(s, now).ok_or_else(|| format!("bad {what} {s:?}")))
            .transpose()
    };
    let since = bound(&a.since, "--since")?;
    let until = bound(&a.until, "--until")?;
    let tail = match a.tail.as_str() {
        "all" | "-1" => None,
        n => Some(
            n.parse::<usize>()
                .map_err(|_| format!("bad --tail {n:?} (a number or all)"))?,
        ),
    };
    let in_range = |l: &LogLine| {
        since.as_ref().is_none_or(|s| l.time >= *s) && until.as_ref().is_none_or(|u| l.time < *u)
    };
    // Where the current file was when read, so -f continues from there.
    let position = File::open(&path).and_then(|f| Ok((f.metadata()?, f))).ok();
    let mut lines: Vec<LogLine> = logs::read_all(&path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|l| in_range(l))
        .collect();
    if let Some(n) = tail {
        lines.drain(..lines.len().saturating_sub(n));
    }
    for l in &lines {
        print(l, a.timestamps).map_err(|e| e.to_string())?;
    }
    if !a.follow {
        return Ok(0);
    }
    let mut printer = |l: &LogLine| {
        if in_range(l) {
            print(l, a.timestamps)?;
        }
        Ok(())
    };
    logs::follow(client, &c, &path, position, &mut printer, None).await?;
    Ok(0)
}
