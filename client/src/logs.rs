//! Container logs: where the CLI's containers log (a label naming a file the shim writes in the
//! CRI format through `cri-log://`), and reading those files back without berthd in the path.
//!
//! Every container the library creates gets the label [`LOG_PATH_LABEL`] =
//! `<log dir>/<namespace>/<id>/<id>.log`, the log dir being `$BERTH_LOG_DIR` or
//! [`DEFAULT_LOG_DIR`]. A detached start hands that path to the shim (rotated at
//! [`DEFAULT_MAX_SIZE`] bytes, [`DEFAULT_MAX_FILES`] files); `rm` removes the directory.

use std::io;
use std::path::{Path, PathBuf};

pub const LOG_PATH_LABEL: &str = "io.berth.log-path";
pub const LOG_DIR_ENV: &str = "BERTH_LOG_DIR";
pub const DEFAULT_LOG_DIR: &str = "/var/log/berth/containers";
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
pub const DEFAULT_MAX_FILES: u32 = 3;
/// `--log-opt max-size=…` (bytes, or with a k/m/g suffix) and `max-file=…`, kept per container.
pub const MAX_SIZE_LABEL: &str = "io.berth.log.max-size";
pub const MAX_FILE_LABEL: &str = "io.berth.log.max-file";

/// containerd's restart monitor labels (berthd's `controllers/restart.rs` honours them).
pub const RESTART_STATUS_LABEL: &str = "containerd.io/restart.status";
pub const RESTART_POLICY_LABEL: &str = "containerd.io/restart.policy";
pub const RESTART_LOG_URI_LABEL: &str = "containerd.io/restart.loguri";
/// berth's addition: the stdin the monitor gives a restarted `-t` task, which it starts on a
/// terminal again; the attach socket of a detached start, so `berth attach` reaches it.
pub const RESTART_STDIN_LABEL: &str = "berth/restart.stdin";
/// How often the monitor restarted the container (it raises it).
pub const RESTART_COUNT_LABEL: &str = "containerd.io/restart.count";
/// nerdctl's mark of a container stopped by hand (`unless-stopped` then leaves it).
pub const RESTART_EXPLICITLY_STOPPED_LABEL: &str = "containerd.io/restart.explicitly-stopped";

/// `--restart POLICY` as the monitor's labels (none for `no`).
pub fn restart_labels(policy: &str) -> Result<Vec<(String, String)>, String> {
    let ok = match policy.split_once(':') {
        Some(("on-failure", n)) => n.parse::<u32>().is_ok(),
        None => matches!(policy, "no" | "on-failure" | "always" | "unless-stopped"),
        _ => false,
    };
    if !ok {
        return Err(format!(
            "invalid --restart {policy:?} (no, on-failure[:N], always, unless-stopped)"
        ));
    }
    if policy == "no" {
        return Ok(Vec::new());
    }
    // The status label ("running") is set only once the CLI has started the task: set at
    // create, the monitor would race the CLI to create the task.
    Ok(vec![(RESTART_POLICY_LABEL.into(), policy.into())])
}

/// A `--log-opt KEY=VALUE` as the label that keeps it, checked.
pub fn log_opt_label(opt: &str) -> Result<(String, String), String> {
    let (k, v) = opt
        .split_once('=')
        .ok_or_else(|| format!("invalid --log-opt {opt:?}: want KEY=VALUE"))?;
    match k {
        "max-size" if parse_size(v).is_some_and(|n| n > 0) => Ok((MAX_SIZE_LABEL.into(), v.into())),
        "max-file" if v.parse::<u32>().is_ok_and(|n| (1..=1000).contains(&n)) => {
            Ok((MAX_FILE_LABEL.into(), v.into()))
        }
        "max-size" | "max-file" => Err(format!("invalid --log-opt {opt:?}")),
        _ => Err(format!(
            "unknown --log-opt {k:?} (max-size and max-file are supported)"
        )),
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let t = lower.trim_end_matches('b');
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// The log file for a new container.
pub fn log_path(namespace: &str, id: &str) -> PathBuf {
    let dir = std::env::var_os(LOG_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR));
    dir.join(namespace).join(id).join(format!("{id}.log"))
}

/// The shim's stdio URI for `path` (its directory is created here, 0700), with the
/// container's `--log-opt` bounds from its labels.
pub fn log_uri(
    path: &Path,
    labels: &std::collections::HashMap<String, String>,
) -> io::Result<String> {
    let max_size = labels
        .get(MAX_SIZE_LABEL)
        .and_then(|v| parse_size(v))
        .unwrap_or(DEFAULT_MAX_SIZE);
    let max_files = labels
        .get(MAX_FILE_LABEL)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_MAX_FILES);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let escaped: String = path
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            '%' => "%25".to_string(),
            '?' => "%3F".to_string(),
            c => c.to_string(),
        })
        .collect();
    Ok(format!(
        "cri-log://{escaped}?max-size={max_size}&max-files={max_files}"
    ))
}

use std::os::unix::fs::DirBuilderExt;

/// A FIFO path with the shim's tee to `log_uri` (the URI %-escaped as a query value).
pub fn tee(fifo: &str, log_uri: &str) -> String {
    let escaped: String = log_uri
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect();
    format!("fifo://{fifo}?tee={escaped}")
}

/// Removes a container's log directory (the one holding `path` and its rotated files).
pub fn remove_logs(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of output, its P pieces joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// RFC3339 UTC with nine fraction digits, as the shim writes it (sorts as text).
    pub time: String,
    pub stream: Stream,
    /// Without the newline; `complete` is false for a last line that had none.
    pub content: Vec<u8>,
    pub complete: bool,
}

/// Joins records into lines; pieces of a stream's line wait for its F.
#[derive(Default)]
pub struct Parser {
    pending: [Option<LogLine>; 2],
}

impl Parser {
    /// Parses one record (without its newline); a malformed one is skipped.
    pub fn record(&mut self, rec: &[u8]) -> Option<LogLine> {
        let mut it = rec.splitn(4, |b| *b == b' ');
        let time = std::str::from_utf8(it.next()?).ok()?;
        let stream = match it.next()? {
            b"stdout" => Stream::Stdout,
            b"stderr" => Stream::Stderr,
            _ => return None,
        };
        let full = match it.next()? {
            b"F" => true,
            b"P" => false,
            _ => return None,
        };
        let content = it.next().unwrap_or_default();
        let slot = &mut self.pending[stream as usize];
        let line = slot.get_or_insert_with(|| LogLine {
            time: time.to_string(),
            stream,
            content: Vec::new(),
            complete: false,
        });
        line.content.extend_from_slice(content);
        if full {
            let mut l = slot.take()?;
            l.complete = true;
            Some(l)
        } else {
            None
        }
    }

    /// The end of the logs: unfinished lines as they are.
    pub fn finish(&mut self) -> Vec<LogLine> {
        let mut v: Vec<LogLine> = self.pending.iter_mut().filter_map(Option::take).collect();
        v.sort_by(|a, b| a.time.cmp(&b.time));
        v
    }
}

/// The files of a log, oldest first: PATH.N … PATH.1, PATH.
pub fn files(path: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for n in (1..=1000u32).rev() {
        let p = PathBuf::from(format!("{}.{n}", path.display()));
        if p.exists() {
            v.push(p);
        }
    }
    v.push(path.to_path_buf());
    v
}

/// Every line of a log, oldest first (a missing log has none).
pub fn read_all(path: &Path) -> io::Result<Vec<LogLine>> {
    let mut parser = Parser::default();
    let mut out = Vec::new();
    for f in files(path) {
        let data = match std::fs::read(&f) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", f.display()))),
        };
        for rec in data.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            out.extend(parser.record(rec));
        }
    }
    out.extend(parser.finish());
    Ok(out)
}

/// `--since`/`--until`: an RFC3339 time (`2024-01-02T03:04:05Z`, fraction optional), or a
/// duration back from `now` (`30s`, `5m`, `2h`), as the shim's timestamp text.
pub fn parse_time(s: &str, now: std::time::SystemTime) -> Option<String> {
    let units = [('s', 1u64), ('m', 60), ('h', 3600)];
    if let Some((n, mult)) = units
        .iter()
        .find_map(|(u, m)| s.strip_suffix(*u).map(|n| (n, *m)))
    {
        if let Ok(n) = n.parse::<u64>() {
            let t = now.checked_sub(std::time::Duration::from_secs(n.checked_mul(mult)?))?;
            return Some(rfc3339_nano(t));
        }
    }
    let body = s.strip_suffix('Z')?;
    if body.len() < 19 || body.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
    if secs.len() != 19 || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{secs}.{frac:0<9}Z"))
}

pub use crate::clock::rfc3339_nano;

/// Follows a log as records come, handing each line to `on_line`: from the open file (at its
/// position) to its end, and when PATH is another file (rotated), the rest of the old one and
/// then the new one from its start. Returns once the container no longer runs and its last
/// output was read, or when `stop` fires (attach's detach keys).
pub async fn follow(
    client: &crate::Client,
    c: &crate::containers::ContainerInfo,
    path: &Path,
    position: Option<(std::fs::Metadata, std::fs::File)>,
    on_line: &mut (dyn FnMut(&LogLine) -> io::Result<()> + Send),
    mut stop: Option<tokio::sync::oneshot::Receiver<()>>,
) -> crate::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let io_err = |e: io::Error| crate::Error::io(format!("follow {}", path.display()), e);
    let mut parser = Parser::default();
    let mut partial: Vec<u8> = Vec::new();
    let mut current = position.map(|(m, mut f)| {
        let _ = f.seek(SeekFrom::Start(m.len()));
        (m.ino(), f)
    });
    let (mut checks, mut stopped) = (0u32, false);
    loop {
        if stop.as_mut().is_some_and(|rx| rx.try_recv().is_ok()) {
            return Ok(());
        }
        let mut got = false;
        if let Some((_, f)) = current.as_mut() {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(io_err)?;
            got = !buf.is_empty();
            partial.extend_from_slice(&buf);
        }
        let complete = partial
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        for rec in partial[..complete]
            .split(|b| *b == b'\n')
            .filter(|r| !r.is_empty())
        {
            if let Some(l) = parser.record(rec) {
                on_line(&l).map_err(io_err)?;
            }
        }
        partial.drain(..complete);
        // Rotated (or created): finish the old file, whose records the top of the loop then
        // hands on (the shim never splits a record across files), and go on in the new one.
        let ino = std::fs::metadata(path).map(|m| m.ino()).ok();
        if ino.is_some() && ino != current.as_ref().map(|(i, _)| *i) {
            if let Some((_, f)) = current.as_mut() {
                f.read_to_end(&mut partial).map_err(io_err)?;
            }
            current = std::fs::File::open(path)
                .ok()
                .and_then(|f| Some((f.metadata().ok()?.ino(), f)));
            continue;
        }
        if !got {
            if stopped {
                for l in parser.finish() {
                    on_line(&l).map_err(io_err)?;
                }
                return Ok(());
            }
            checks += 1;
            // Every second: once the container no longer runs, one more pass reads what its
            // shim wrote last, then done.
            if checks % 5 == 0 && !client.status(c).await?.is_running() {
                stopped = true;
            }
            let pause = tokio::time::sleep(std::time::Duration::from_millis(200));
            let told = match stop.as_mut() {
                Some(rx) => tokio::select! {
                    _ = pause => None,
                    r = rx => Some(r.is_ok()),
                },
                None => {
                    pause.await;
                    None
                }
            };
            match told {
                Some(true) => return Ok(()),
                // The sender went away without a word: nothing will tell us to stop.
                Some(false) => stop = None,
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_per_stream() {
        let mut p = Parser::default();
        assert_eq!(p.record(b"T1 stdout P ab"), None);
        let e = p.record(b"T2 stderr F err").unwrap();
        assert_eq!(
            (e.stream, e.content.as_slice()),
            (Stream::Stderr, &b"err"[..])
        );
        let o = p.record(b"T3 stdout F c d").unwrap();
        assert_eq!(
            (o.time.as_str(), o.content.as_slice()),
            ("T1", &b"abc d"[..])
        );
        assert!(o.complete);
        assert_eq!(p.record(b"T4 stdout F ").unwrap().content, b"");
        assert_eq!(p.record(b"garbage"), None);
        p.record(b"T5 stdout P tail");
        let rest = p.finish();
        assert_eq!(rest.len(), 1);
        assert!(!rest[0].complete);
    }

    #[test]
    fn times() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(3600);
        assert_eq!(
            parse_time("30m", now).unwrap(),
            "1970-01-01T00:30:00.000000000Z"
        );
        assert_eq!(
            parse_time("2024-01-02T03:04:05.5Z", now).unwrap(),
            "2024-01-02T03:04:05.500000000Z"
        );
        assert_eq!(
            parse_time("2024-01-02T03:04:05Z", now).unwrap(),
            "2024-01-02T03:04:05.000000000Z"
        );
        assert!(parse_time("yesterday", now).is_none());
    }
}
