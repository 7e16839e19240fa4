//! The shim's `cri-log://` writer against real runc (needs root): the kubelet's log format for
//! init, exec and terminal processes, long lines, rotation, and a rename by someone else.

mod common;

use berth_shim::protocol::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINE: usize = 16 * 1024;

/// (stream, tag, content) of each record; panics on a malformed one.
fn records(path: &Path) -> Vec<(String, String, String)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let (ts, stream, tag) = (it.next(), it.next(), it.next());
            let content = it.next().unwrap_or_else(|| panic!("no content in {l:?}"));
            let ts = ts.unwrap();
            assert!(
                ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                "timestamp {ts:?}"
            );
            let (stream, tag) = (stream.unwrap(), tag.unwrap());
            assert!(matches!(stream, "stdout" | "stderr"), "{l:?}");
            assert!(matches!(tag, "P" | "F"), "{l:?}");
            assert!(content.len() <= MAX_LINE, "record longer than 16 KiB");
            (stream.into(), tag.into(), content.into())
        })
        .collect()
}

fn of(recs: &[(String, String, String)], stream: &str) -> Vec<(String, String)> {
    recs.iter()
        .filter(|r| r.0 == stream)
        .map(|r| (r.1.clone(), r.2.clone()))
        .collect()
}

fn uri(p: &Path) -> String {
    format!("cri-log://{}", p.display())
}

#[test]
fn init_exec_and_terminal_write_the_cri_format() {
    let b = Bundle::new(
        "crilog",
        &[
            "sh",
            "-c",
            "head -c 40000 /dev/zero | tr '\\0' a; echo; echo err-line >&2; \
             printf no-newline; exec sleep 1000",
        ],
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("init.log");
    let pid = b.create("", &uri(&log), &uri(&log), false);
    assert_eq!(b.start(""), pid);
    eventually("the stderr line", || {
        of(&records(&log), "stderr") == [("F".into(), "err-line".into())]
    });
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o640
    );

    // An exec with its own file, and one with a terminal (one stream, stdout).
    let elog = dir.path().join("exec.log");
    let tlog = dir.path().join("tty.log");
    for (id, args, terminal, path) in [
        (
            "e1",
            &["sh", "-c", "echo from-exec; echo exec-err >&2"][..],
            false,
            &elog,
        ),
        ("t1", &["sh", "-c", "echo tty-line"][..], true, &tlog),
    ] {
        let _: Empty = b
            .call(Request::Exec(ExecRequest {
                exec_id: id.into(),
                spec: exec_spec(args, terminal),
                stdin: String::new(),
                stdout: uri(path),
                stderr: if terminal { String::new() } else { uri(path) },
                terminal,
            }))
            .unwrap();
        b.start(id);
        assert_eq!(b.wait(id).exit_status, 0);
        b.delete(id, false).unwrap();
    }
    let e = records(&elog);
    assert_eq!(of(&e, "stdout"), [("F".into(), "from-exec".into())]);
    assert_eq!(of(&e, "stderr"), [("F".into(), "exec-err".into())]);
    let t = records(&tlog);
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!((t[0].0.as_str(), t[0].1.as_str()), ("stdout", "F"));
    assert_eq!(t[0].2.trim_end_matches('\r'), "tty-line");

    // A long line is cut into partials of at most MAX_LINE (where each read ends too: what a
    // read leaves unterminated is written at once, for Attach); the unfinished last line is a
    // partial as soon as it is read.
    b.kill("", 9, false).unwrap();
    assert_eq!(b.wait("").exit_status, 137);
    b.delete("", false).unwrap();
    let out = of(&records(&log), "stdout");
    let full = out
        .iter()
        .position(|(tag, _)| tag == "F")
        .expect("a full record");
    assert!(out[..full].iter().all(|(tag, _)| tag == "P"), "{out:?}");
    assert!(out.iter().all(|(_, c)| c.len() <= MAX_LINE));
    let line: String = out[..=full].iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(line, "a".repeat(40_000));
    assert_eq!(
        &out[full + 1..],
        [("P".to_string(), "no-newline".to_string())]
    );
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

#[test]
fn rotation_and_reopen_after_a_rename() {
    let b = Bundle::new(
        "crirot",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done; \
             while :; do echo tick-$i; i=$((i+1)); sleep 0.05; done",
        ],
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    let n = |k: u32| PathBuf::from(format!("{}.{k}", log.display()));
    let u = format!("{}?max-size=2000&max-files=3", uri(&log));
    b.create("", &u, &u, false);
    b.start("");
    eventually("the lines went through rotation", || {
        [log.clone(), n(1), n(2)]
            .iter()
            .any(|p| records(p).iter().any(|r| r.2.starts_with("tick-")))
    });
    for p in [log.clone(), n(1), n(2)] {
        let len = fs::metadata(&p).unwrap().len();
        assert!(len > 0 && len <= 2000, "{}: {len} bytes", p.display());
        records(&p);
    }
    assert!(!n(3).exists(), "only max-files files are kept");

    // Someone else (the kubelet) renames the file: the shim continues in a fresh one.
    let moved = dir.path().join("c.log.moved");
    fs::rename(&log, &moved).unwrap();
    eventually("a fresh c.log", || {
        records(&log).iter().any(|r| r.2.starts_with("tick-"))
    });
    let last_moved = records(&moved).last().map(|r| r.2.clone()).unwrap();
    let first_new = records(&log)[0].2.clone();
    let num = |s: &str| s.trim_start_matches("tick-").parse::<u32>().unwrap();
    assert!(
        num(&first_new) > num(&last_moved),
        "{last_moved} then {first_new}"
    );
    b.finish();
}

#[test]
fn a_fifo_with_a_tee_is_seen_live_and_logged() {
    let b = Bundle::new(
        "critee",
        &["sh", "-c", "echo live; echo err-live >&2"],
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tee.log");
    let escaped: String = uri(&log)
        .chars()
        .map(|c| match c {
            ':' => "%3A".into(),
            '/' => "%2F".into(),
            c => c.to_string(),
        })
        .collect();
    let (out, err) = (b.fifo("out"), b.fifo("err"));
    let (rx_out, rx_err) = (read_fifo(&out), read_fifo(&err));
    let tee = |p: &Path| format!("fifo://{}?tee={escaped}", p.display());
    b.create("", &tee(&out), &tee(&err), false);
    b.start("");
    assert_eq!(recv(&rx_out, "stdout EOF"), b"live\n");
    assert_eq!(recv(&rx_err, "stderr EOF"), b"err-live\n");
    assert_eq!(b.wait("").exit_status, 0);
    b.delete("", false).unwrap();
    let recs = records(&log);
    assert_eq!(of(&recs, "stdout"), [("F".into(), "live".into())]);
    assert_eq!(of(&recs, "stderr"), [("F".into(), "err-live".into())]);
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}
