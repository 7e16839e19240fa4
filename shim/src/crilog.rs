//! `cri-log://` output: the shim itself writes a process's stdout and stderr in the kubelet's
//! CRI log format, so neither berthd nor a logging program sits in the data path.
//!
//! - `cri-log:///abs/path?max-size=BYTES&max-files=N` (query optional; without max-size no
//!   rotation). stdout and stderr name the same URI and share one file.
//! - Each record is `<RFC3339Nano UTC> <stdout|stderr> <P|F> <content>\n`: F ends a line, P is
//!   a piece of one: a line longer than [`MAX_LINE`] bytes is cut into P pieces, and a last
//!   line without its newline is written as P when the stream ends.
//! - The container is never slowed by the disk: records are formatted as the pipe is read and
//!   handed to one writer thread through a bounded queue ([`QUEUE_BATCHES`] read batches).
//!   When the queue is full the batch is **dropped** and counted; the writer reports the count
//!   in the shim's log. No fsync per line: only before a rotation and when the file is closed.
//! - Rotation at max-size: PATH.(N-2) → PATH.(N-1) … PATH → PATH.1 (the oldest falls off),
//!   then a fresh PATH. Before each batch the writer compares PATH's inode with its open
//!   file's: when someone else renamed or removed it (the kubelet's own rotation), the writer
//!   continues in a fresh file at PATH. Files are created 0640; the parent must exist.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

/// The longest content of one record (containerd's CRI uses the same 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;
/// Read batches (each at most one 16 KiB read, formatted) waiting for the disk.
pub const QUEUE_BATCHES: usize = 256;

/// A parsed `cri-log://` URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spec {
    pub path: PathBuf,
    /// 0: never rotate.
    pub max_size: u64,
    /// Files kept in all, PATH included (at least 1).
    pub max_files: u32,
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

impl Spec {
    pub fn parse(uri: &str) -> Result<Spec, String> {
        let rest = uri
            .strip_prefix("cri-log://")
            .ok_or_else(|| format!("{uri:?} is not a cri-log:// URI"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = PathBuf::from(crate::logger::unescape(path, false)?);
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(format!(
                "cri-log path in {uri:?} must be an absolute file path (cri-log:///path)"
            ));
        }
        let mut spec = Spec {
            path,
            max_size: 0,
            max_files: 1,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "max-size" => {
                    spec.max_size = parse_size(v)
                        .ok_or_else(|| format!("bad max-size {v:?} in {uri:?} (bytes)"))?
                }
                "max-files" => {
                    spec.max_files = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| format!("bad max-files {v:?} in {uri:?} (1-1000)"))?
                }
                _ => return Err(format!("unknown cri-log option {k:?} in {uri:?}")),
            }
        }
        Ok(spec)
    }
}

/// `2006-01-02T15:04:05.000000000Z` for a time since the epoch (UTC, fixed nine digits so
/// records sort as text too).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.nanosecond()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Cuts one stream into records. Pure, so the format is unit-tested without files.
#[derive(Debug)]
pub struct Framer {
    stream: Stream,
    pending: Vec<u8>,
}

impl Framer {
    pub fn new(stream: Stream) -> Self {
        Framer {
            stream,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, ts: &str, tag: &str) {
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.stream.name().as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.pending);
        out.push(b'\n');
        self.pending.clear();
    }

    /// Appends the records `data` completes to `out`; an unfinished line is kept.
    pub fn feed(&mut self, data: &[u8], ts: &str, out: &mut Vec<u8>) {
        for piece in data.split_inclusive(|b| *b == b'\n') {
            let (mut content, full) = match piece.strip_suffix(b"\n") {
                Some(c) => (c, true),
                None => (piece, false),
            };
            loop {
                let room = MAX_LINE - self.pending.len();
                if content.len() > room {
                    self.pending.extend_from_slice(&content[..room]);
                    content = &content[room..];
                    self.emit(out, ts, "P");
                } else {
                    self.pending.extend_from_slice(content);
                    break;
                }
            }
            if full {
                self.emit(out, ts, "F");
            }
        }
    }

    /// What the last read left unterminated, written now as a partial record (the reader
    /// joins partials up to the next full one). CRI Attach follows this log, so output without
    /// a newline (a prompt, `echo -n`) must reach it without waiting for one.
    pub fn flush(&mut self, ts: &str, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.emit(out, ts, "P");
        }
    }

    /// The stream ended: an unfinished line is written as a partial record.
    pub fn finish(&mut self, ts: &str, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.emit(out, ts, "P");
        }
    }
}

/// One open log file and its writer thread; shared by the streams that name it.
pub struct CriLog {
    tx: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl CriLog {
    /// Opens (creates) the file now, so a bad path fails the create or exec.
    pub fn open(spec: &Spec) -> io::Result<Rc<RefCell<CriLog>>> {
        let file = open_log(&spec.path)?;
        let (tx, rx) = sync_channel(QUEUE_BATCHES);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut w = Writer::new(spec.clone(), file, dropped.clone())?;
        let thread = std::thread::Builder::new()
            .name("cri-log".into())
            .spawn(move || w.run(rx))?;
        Ok(Rc::new(RefCell::new(CriLog {
            tx: Some(tx),
            thread: Some(thread),
            dropped,
        })))
    }

    fn send(&self, batch: Vec<u8>) {
        if batch.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            match tx.try_send(batch) {
                Ok(()) => {}
                Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                    self.dropped.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Drop for CriLog {
    /// Everything queued is written (and synced) before the process's stdio is gone.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One stream's end: frames what the pipe gives and queues it for the writer.
pub struct Sink {
    log: Rc<RefCell<CriLog>>,
    framer: Framer,
}

impl Sink {
    pub fn new(log: Rc<RefCell<CriLog>>, stream: Stream) -> Self {
        Sink {
            log,
            framer: Framer::new(stream),
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        let ts = rfc3339_nano(SystemTime::now());
        let mut out = Vec::with_capacity(data.len() + 64);
        self.framer.feed(data, &ts, &mut out);
        self.framer.flush(&ts, &mut out);
        self.log.borrow().send(out);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let mut out = Vec::new();
        self.framer
            .finish(&rfc3339_nano(SystemTime::now()), &mut out);
        self.log.borrow().send(out);
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The writer thread's side.
struct Writer {
    spec: Spec,
    file: File,
    /// (dev, ino) of `file`, compared with PATH's to notice a rename by someone else.
    id: (u64, u64),
    size: u64,
    dropped: Arc<AtomicU64>,
    reported: u64,
}

fn report(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "berth-shim cri-log: {msg}");
}

impl Writer {
    fn new(spec: Spec, file: File, dropped: Arc<AtomicU64>) -> io::Result<Self> {
        let m = file.metadata()?;
        Ok(Writer {
            spec,
            id: (m.dev(), m.ino()),
            size: m.len(),
            file,
            dropped,
            reported: 0,
        })
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = open_log(&self.spec.path)?;
        let m = file.metadata()?;
        self.id = (m.dev(), m.ino());
        self.size = m.len();
        self.file = file;
        Ok(())
    }

    /// PATH was renamed or removed by someone else: continue in a fresh PATH.
    fn check_reopen(&mut self) -> io::Result<()> {
        let same = std::fs::metadata(&self.spec.path)
            .map(|m| (m.dev(), m.ino()) == self.id)
            .unwrap_or(false);
        if same {
            Ok(())
        } else {
            self.reopen()
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let _ = self.file.sync_data();
        let p = &self.spec.path;
        if self.spec.max_files <= 1 {
            std::fs::remove_file(p)?;
        } else {
            let last = self.spec.max_files - 1;
            let _ = std::fs::remove_file(numbered(p, last));
            for n in (1..last).rev() {
                match std::fs::rename(numbered(p, n), numbered(p, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(p, numbered(p, 1))?;
        }
        self.reopen()
    }

    /// Writes whole records, rotating between them when the next would pass max-size.
    fn write_batch(&mut self, batch: &[u8]) -> io::Result<()> {
        if self.spec.max_size == 0 {
            self.size += batch.len() as u64;
            return self.file.write_all(batch);
        }
        let mut start = 0;
        let mut end = 0;
        for rec in batch.split_inclusive(|b| *b == b'\n') {
            let len = rec.len() as u64;
            let pending = (end - start) as u64;
            if self.size + pending + len > self.spec.max_size && self.size + pending > 0 {
                self.file.write_all(&batch[start..end])?;
                self.rotate()?;
                start = end;
            }
            end += rec.len();
        }
        self.file.write_all(&batch[start..end])?;
        self.size += (end - start) as u64;
        Ok(())
    }

    fn run(&mut self, rx: Receiver<Vec<u8>>) {
        let mut failing = false;
        while let Ok(first) = rx.recv() {
            let mut batches = vec![first];
            while let Ok(b) = rx.try_recv() {
                batches.push(b);
            }
            let r = self
                .check_reopen()
                .and_then(|_| batches.iter().try_for_each(|b| self.write_batch(b)));
            match (r, failing) {
                (Err(e), false) => {
                    report(format_args!("{}: {e}", self.spec.path.display()));
                    failing = true;
                }
                (Ok(()), true) => failing = false,
                _ => {}
            }
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > self.reported {
                report(format_args!(
                    "{}: {} bytes of output dropped so far (the disk did not keep up)",
                    self.spec.path.display(),
                    dropped
                ));
                self.reported = dropped;
            }
        }
        let _ = self.file.sync_data();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    const TS: &str = "2024-01-02T03:04:05.000000006Z";

    fn frame(stream: Stream, chunks: &[&[u8]], finish: bool) -> String {
        let mut f = Framer::new(stream);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, TS, &mut out);
        }
        if finish {
            f.finish(TS, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::new(1_704_164_645, 6);
        assert_eq!(rfc3339_nano(t), TS);
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::new(951_827_696, 123_456_789);
        assert_eq!(rfc3339_nano(t), "2000-02-29T12:34:56.123456789Z");
    }

    #[test]
    fn lines_and_partials() {
        assert_eq!(
            frame(Stream::Stdout, &[b"a\nb", b"c\n\nd"], false),
            format!("{TS} stdout F a\n{TS} stdout F bc\n{TS} stdout F \n")
        );
        assert_eq!(
            frame(Stream::Stderr, &[b"x\nlast"], true),
            format!("{TS} stderr F x\n{TS} stderr P last\n")
        );
        assert_eq!(frame(Stream::Stdout, &[b""], true), "");
    }

    #[test]
    fn a_flushed_tail_is_a_partial_record() {
        let mut f = Framer::new(Stream::Stdout);
        let mut out = Vec::new();
        f.feed(b"a\nhel", TS, &mut out);
        f.flush(TS, &mut out);
        f.feed(b"lo\n", TS, &mut out);
        f.flush(TS, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{TS} stdout F a\n{TS} stdout P hel\n{TS} stdout F lo\n")
        );
    }

    #[test]
    fn long_lines_are_split_at_16k() {
        let exact = vec![b'a'; MAX_LINE];
        let out = frame(Stream::Stdout, &[&exact, b"\n"], false);
        assert_eq!(out, format!("{TS} stdout F {}\n", "a".repeat(MAX_LINE)));

        let mut long = vec![b'b'; 2 * MAX_LINE + 5];
        long.push(b'\n');
        // Fed in odd-sized pieces, as reads from a pipe come.
        let chunks: Vec<&[u8]> = long.chunks(7000).collect();
        let out = frame(Stream::Stdout, &chunks, false);
        let b = |n| "b".repeat(n);
        assert_eq!(
            out,
            format!(
                "{TS} stdout P {}\n{TS} stdout P {}\n{TS} stdout F {}\n",
                b(MAX_LINE),
                b(MAX_LINE),
                b(5)
            )
        );
        let out = frame(Stream::Stdout, &[&vec![b'c'; MAX_LINE + 1]], true);
        assert_eq!(
            out,
            format!("{TS} stdout P {}\n{TS} stdout P c\n", "c".repeat(MAX_LINE))
        );
    }

    #[test]
    fn uris() {
        let s = Spec::parse("cri-log:///var/log/p/c/0.log").unwrap();
        assert_eq!(
            s,
            Spec {
                path: "/var/log/p/c/0.log".into(),
                max_size: 0,
                max_files: 1
            }
        );
        let s = Spec::parse("cri-log:///l/a%20b.log?max-size=10m&max-files=3").unwrap();
        assert_eq!(
            (s.path, s.max_size, s.max_files),
            ("/l/a b.log".into(), 10 << 20, 3)
        );
        assert_eq!(
            Spec::parse("cri-log:///l?max-size=4096").unwrap().max_size,
            4096
        );
        for bad in [
            "cri-log://rel/x",
            "cri-log:///",
            "cri-log:///l?max-size=ten",
            "cri-log:///l?max-files=0",
            "cri-log:///l?color=red",
        ] {
            assert!(Spec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writer_rotates_and_follows_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let spec = Spec {
            path: path.clone(),
            max_size: 100,
            max_files: 3,
        };
        let log = CriLog::open(&spec).unwrap();
        {
            let mut s = Sink::new(log.clone(), Stream::Stdout);
            // Each record is 30 + 1 + 6 + 1 + 1 + 1 + 20 + 1 = 61 bytes: one per file.
            for i in 0..4 {
                s.write(format!("{i:020}\n").as_bytes());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        drop(log);
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        assert!(read(path.clone()).ends_with(&format!("{:020}\n", 3)));
        assert!(read(numbered(&path, 1)).ends_with(&format!("{:020}\n", 2)));
        assert!(read(numbered(&path, 2)).ends_with(&format!("{:020}\n", 1)));
        assert!(!numbered(&path, 3).exists(), "the oldest fell off");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);

        // Someone else renames the file: the next write goes to a fresh one.
        let spec = Spec {
            path: path.clone(),
            max_size: 0,
            max_files: 1,
        };
        std::fs::remove_file(&path).unwrap();
        let log = CriLog::open(&spec).unwrap();
        let mut s = Sink::new(log.clone(), Stream::Stderr);
        s.write(b"before\n");
        let moved = dir.path().join("moved");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !read(path.clone()).contains("before") {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::rename(&path, &moved).unwrap();
        s.write(b"after\n");
        drop(s);
        drop(log);
        assert!(read(moved).ends_with(" stderr F before\n"));
        let now = read(path);
        assert!(
            now.ends_with(" stderr F after\n") && !now.contains("before"),
            "{now}"
        );
    }
}
