//! berth-shim against real runc (needs root). Every test cleans up after itself and checks
//! that no container, mount, cgroup or process is left (`Bundle::finish`).

mod common;

use berth_shim::protocol::*;
use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

#[test]
fn echo_hello_through_fifos() {
    let b = Bundle::new("hello", &["echo", "hello"], false);
    let (out, err) = (b.fifo("out"), b.fifo("err"));
    let (rx_out, rx_err) = (read_fifo(&out), read_fifo(&err));
    let pid = b.create("", out.to_str().unwrap(), err.to_str().unwrap(), false);
    assert!(pid > 0);
    let st = b.state("").unwrap();
    assert_eq!(
        (st.status, st.pid, st.id.as_str()),
        (Status::Created, pid, b.id.as_str())
    );
    assert_eq!(
        st.stdout,
        out.to_str().unwrap(),
        "paths are echoed back verbatim"
    );

    let waiter = b.wait_async("");
    assert_eq!(b.start(""), pid);
    assert_eq!(recv(&rx_out, "stdout EOF"), b"hello\n");
    assert_eq!(recv(&rx_err, "stderr EOF"), b"");
    let exit = recv(&waiter, "wait").unwrap();
    assert_eq!((exit.pid, exit.exit_status), (pid, 0));
    assert!(exit.exited_at.is_some());

    let st = b.state(&b.id).unwrap();
    assert_eq!(st.status, Status::Stopped);
    assert_eq!(st.exited_at, exit.exited_at);
    let rec = ExitRecord::read(b.bundle(), "init").expect("exit record");
    assert_eq!((rec.pid, rec.exit_status), (pid, 0));

    let del = b.delete("", false).unwrap();
    assert_eq!((del.pid, del.exit_status), (pid, 0));
    assert_eq!(shim_error(b.state("")).kind, ErrorKind::NotFound);
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

#[test]
fn nonzero_exit_and_wrong_transitions() {
    let b = Bundle::new("exit3", &["sh", "-c", "exit 3"], false);
    b.create("", "", "", false);
    assert_eq!(
        shim_error(b.call::<Empty>(Request::Pause)).kind,
        ErrorKind::FailedPrecondition
    );
    b.start("");
    assert_eq!(b.wait("").exit_status, 3);

    let e = shim_error(b.call::<PidReply>(Request::Start { exec_id: "".into() }));
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    assert!(e.message.starts_with("start: "), "{}", e.message);
    let e = shim_error(b.call::<Empty>(Request::Pause));
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    assert_eq!(shim_error(b.kill("", 9, false)).kind, ErrorKind::NotFound);
    let e = shim_error(b.call::<Empty>(Request::Shutdown));
    assert_eq!(
        e.kind,
        ErrorKind::FailedPrecondition,
        "shutdown before delete"
    );
    let e = shim_error(b.call::<PidReply>(Request::Create(CreateRequest::default())));
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    let e = shim_error(b.state("nope"));
    assert_eq!(e.kind, ErrorKind::NotFound);
    b.finish();
}

#[test]
fn protocol_errors() {
    let b = Bundle::new("proto", &["true"], false);
    use std::io::{BufRead, BufReader};
    let mut s = std::os::unix::net::UnixStream::connect(&b.sock).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"{\"v\":9,\"op\":\"state\"}\nnot json\n{\"v\":1,\"op\":\"version\"}\n")
        .unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut next =
        || -> Response { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert_eq!(next().error.unwrap().kind, ErrorKind::Unimplemented);
    assert_eq!(next().error.unwrap().kind, ErrorKind::InvalidArgument);
    let v: VersionReply = serde_json::from_value(next().result.unwrap()).unwrap();
    assert_eq!((v.protocol, v.pid), (PROTOCOL_VERSION, b.shim_pid));
    // Nothing created yet: the shim may shut down.
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

#[test]
fn sigkill_reports_137_and_running_delete_is_refused() {
    let b = Bundle::new("kill", &["sleep", "1000"], false);
    b.create("", "", "", false);
    b.start("");
    assert_eq!(b.state("").unwrap().status, Status::Running);
    let e = shim_error(b.delete("", false));
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    let waiter = b.wait_async("");
    // Requests pipelined behind a wait on one connection are answered after it, in order.
    let mut c = b.client();
    c.send(&Request::Wait { exec_id: "".into() }).unwrap();
    c.send(&Request::State { exec_id: "".into() }).unwrap();
    b.kill("", 9, false).unwrap();
    let exit = recv(&waiter, "wait").unwrap();
    assert_eq!(exit.exit_status, 137);
    assert_eq!(c.recv::<ExitReply>().unwrap(), exit);
    assert_eq!(c.recv::<ProcessState>().unwrap().status, Status::Stopped);
    assert_eq!(b.delete("", false).unwrap().exit_status, 137);
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

fn counter(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/root/tmp/counter"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let script = "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; usleep 20000; done";
    let b = Bundle::new("pause", &["sh", "-c", script], false);
    let pid = b.create("", "", "", false);
    b.start("");
    eventually("counter starts", || counter(pid) > 2);
    let _: Empty = b.call(Request::Pause).unwrap();
    assert_eq!(b.state("").unwrap().status, Status::Paused);
    let e = shim_error(b.call::<Empty>(Request::Pause));
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    let frozen = counter(pid);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counter(pid), frozen, "counter advanced while paused");
    let e = shim_error(b.delete("", false));
    assert_eq!(
        e.kind,
        ErrorKind::FailedPrecondition,
        "paused delete without force"
    );

    let _: Empty = b.call(Request::Resume).unwrap();
    assert_eq!(b.state("").unwrap().status, Status::Running);
    eventually("counter advances after resume", || {
        counter(pid) > frozen + 2
    });
    let pids: PidsReply = b.call(Request::Pids).unwrap();
    assert!(pids
        .processes
        .iter()
        .any(|p| p.pid == pid && p.exec_id.is_none()));

    // Pause again and force-delete the paused container.
    let _: Empty = b.call(Request::Pause).unwrap();
    let exit = b.delete("", true).unwrap();
    assert_eq!(exit.exit_status, 137);
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

#[test]
fn exec_output_exit_code_and_fifo_eof() {
    let b = Bundle::new("exec", &["sleep", "1000"], false);
    b.create("", "", "", false);
    b.start("");

    let (out, err) = (b.fifo("e1-out"), b.fifo("e1-err"));
    let (rx_out, rx_err) = (read_fifo(&out), read_fifo(&err));
    let _: Empty = b
        .call(Request::Exec(ExecRequest {
            exec_id: "e1".into(),
            spec: exec_spec(
                &["sh", "-c", "echo from-exec; echo oops >&2; exit 5"],
                false,
            ),
            stdin: String::new(),
            stdout: out.to_str().unwrap().into(),
            stderr: err.to_str().unwrap().into(),
            terminal: false,
        }))
        .unwrap();
    assert_eq!(b.state("e1").unwrap().status, Status::Created);
    let waiter = b.wait_async("e1");
    let epid = b.start("e1");
    // Reading to EOF proves the shim closed its FIFO writers when the exec ended.
    assert_eq!(recv(&rx_out, "exec stdout EOF"), b"from-exec\n");
    assert_eq!(recv(&rx_err, "exec stderr EOF"), b"oops\n");
    let exit = recv(&waiter, "exec wait").unwrap();
    assert_eq!((exit.pid, exit.exit_status), (epid, 5));
    let st = b.state("e1").unwrap();
    assert_eq!((st.status, st.id.as_str()), (Status::Stopped, "e1"));
    assert!(b.bundle().join("exits/e1").exists());
    assert_eq!(b.delete("e1", false).unwrap().exit_status, 5);
    assert!(!b.bundle().join("exits/e1").exists());
    assert_eq!(shim_error(b.state("e1")).kind, ErrorKind::NotFound);

    // A grandchild keeps the exec's stdout pipe open; the FIFO still reaches EOF.
    let out2 = b.fifo("e2-out");
    let rx2 = read_fifo(&out2);
    let _: Empty = b
        .call(Request::Exec(ExecRequest {
            exec_id: "e2".into(),
            spec: exec_spec(&["sh", "-c", "sleep 1000 & echo bg-started"], false),
            stdin: String::new(),
            stdout: out2.to_str().unwrap().into(),
            stderr: String::new(),
            terminal: false,
        }))
        .unwrap();
    b.start("e2");
    assert_eq!(recv(&rx2, "e2 stdout EOF"), b"bg-started\n");
    assert_eq!(b.wait("e2").exit_status, 0);

    // Bad exec requests.
    let bad = |id: &str| {
        b.call::<Empty>(Request::Exec(ExecRequest {
            exec_id: id.into(),
            spec: exec_spec(&["true"], false),
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            terminal: false,
        }))
    };
    assert_eq!(shim_error(bad("init")).kind, ErrorKind::InvalidArgument);
    assert_eq!(shim_error(bad("../x")).kind, ErrorKind::InvalidArgument);
    assert_eq!(shim_error(bad("e2")).kind, ErrorKind::AlreadyExists);

    // A running exec: delete refused, then killed by signal.
    let _: Empty = bad("e3").unwrap();
    b.call::<Empty>(Request::Exec(ExecRequest {
        exec_id: "e4".into(),
        spec: exec_spec(&["sleep", "1000"], false),
        stdin: String::new(),
        stdout: String::new(),
        stderr: String::new(),
        terminal: false,
    }))
    .unwrap();
    assert_eq!(
        shim_error(b.kill("e4", 15, false)).kind,
        ErrorKind::FailedPrecondition
    );
    let e4 = b.start("e4");
    let pids: PidsReply = b.call(Request::Pids).unwrap();
    assert!(pids
        .processes
        .iter()
        .any(|p| p.pid == e4 && p.exec_id.as_deref() == Some("e4")));
    assert_eq!(
        shim_error(b.delete("e4", false)).kind,
        ErrorKind::FailedPrecondition
    );
    b.kill("e4", 15, false).unwrap();
    assert_eq!(b.wait("e4").exit_status, 128 + 15);
    b.finish();
}

#[test]
fn close_io_gives_stdin_eof() {
    let b = Bundle::new("stdin", &["cat"], false);
    let (inp, out) = (b.fifo("in"), b.fifo("out"));
    let rx_out = read_fifo(&out);
    let inp2 = inp.clone();
    // ctr opens stdin with a blocking O_WRONLY open in the background.
    let writer = std::thread::spawn(move || {
        let mut w = fs::OpenOptions::new().write(true).open(inp2).unwrap();
        w.write_all(b"data\n").unwrap();
    });
    b.create(inp.to_str().unwrap(), out.to_str().unwrap(), "", false);
    b.start("");
    writer.join().unwrap();
    // The client's writer is closed, but the shim's spare writer keeps cat waiting.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.state("").unwrap().status, Status::Running);
    let _: Empty = b.call(Request::CloseIo { exec_id: "".into() }).unwrap();
    assert_eq!(b.wait("").exit_status, 0);
    assert_eq!(recv(&rx_out, "cat output"), b"data\n");
    b.finish();
}

#[test]
fn terminal_through_pty() {
    let b = Bundle::new("tty", &["sh", "-c", "tty; stty size; echo term-ok"], true);
    let out = b.fifo("out");
    let rx = read_fifo(&out);
    // A stderr FIFO beside the terminal, as containerd's Go client names it: left unopened.
    let err = b.fifo("err");
    b.create("", out.to_str().unwrap(), err.to_str().unwrap(), true);
    let _: Empty = b
        .call(Request::ResizePty {
            exec_id: "".into(),
            width: 100,
            height: 40,
        })
        .unwrap();
    b.start("");
    let text = String::from_utf8(recv(&rx, "pty output")).unwrap();
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("40 100"), "{text:?}");
    assert!(text.contains("term-ok"), "{text:?}");
    assert_eq!(b.wait("").exit_status, 0);
    b.finish();
}

#[test]
fn exec_with_terminal() {
    let b = Bundle::new("exectty", &["sleep", "1000"], false);
    b.create("", "", "", false);
    b.start("");
    let out = b.fifo("t-out");
    let rx = read_fifo(&out);
    let _: Empty = b
        .call(Request::Exec(ExecRequest {
            exec_id: "t1".into(),
            spec: exec_spec(&["sh", "-c", "tty && exit 4"], true),
            stdin: String::new(),
            stdout: out.to_str().unwrap().into(),
            stderr: String::new(),
            terminal: true,
        }))
        .unwrap();
    // A stderr FIFO named beside a terminal (containerd's Go client names all three) is left
    // alone: the exec runs, its output comes through the pty on stdout.
    let out2 = b.fifo("t2-out");
    let rx2 = read_fifo(&out2);
    let err2 = b.fifo("t2-err");
    let _: Empty = b
        .call(Request::Exec(ExecRequest {
            exec_id: "t2".into(),
            spec: exec_spec(&["sh", "-c", "echo to-stderr >&2"], true),
            stdin: String::new(),
            stdout: out2.to_str().unwrap().into(),
            stderr: err2.to_str().unwrap().into(),
            terminal: true,
        }))
        .unwrap();
    b.start("t2");
    let text = String::from_utf8(recv(&rx2, "exec pty output with a stderr FIFO")).unwrap();
    assert!(text.contains("to-stderr"), "{text:?}");
    assert_eq!(b.wait("t2").exit_status, 0);
    b.start("t1");
    let text = String::from_utf8(recv(&rx, "exec pty output")).unwrap();
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert_eq!(b.wait("t1").exit_status, 4);
    b.finish();
}

#[test]
fn survives_its_starter_and_serves_new_connections() {
    let b = Bundle::prepare("detach", &["sleep", "1000"], false);
    // The "daemon" is a shell that starts the shim and exits.
    let b = b.start_shim_with(&["sh", "-c", "exec \"$0\" \"$@\"", SHIM]);
    let (ppid, sid) = ppid_and_sid(b.shim_pid);
    let (_, my_sid) = ppid_and_sid(std::process::id());
    assert_ne!(ppid, std::process::id(), "shim must not be our child");
    assert_ne!(sid, my_sid, "shim must have its own session");
    assert_ne!(sid, b.shim_pid, "shim must not be a session leader");

    let mut c1 = b.client();
    let _: PidReply = c1.call(&Request::Create(CreateRequest::default())).unwrap();
    let _: PidReply = c1.call(&Request::Start { exec_id: "".into() }).unwrap();
    // A client that disconnects mid-wait changes nothing.
    c1.send(&Request::Wait { exec_id: "".into() }).unwrap();
    drop(c1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(process_alive(b.shim_pid));
    assert_eq!(b.state("").unwrap().status, Status::Running);
    let waiter = b.wait_async("");
    b.kill("", 9, true).unwrap();
    assert_eq!(recv(&waiter, "wait").unwrap().exit_status, 137);
    assert_eq!(b.delete("", false).unwrap().exit_status, 137);
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

#[test]
fn exit_while_nobody_is_connected() {
    let b = Bundle::new("offline", &["sh", "-c", "usleep 300000; exit 7"], false);
    b.create("", "", "", false);
    b.start("");
    // No connection is open now; the exit is recorded on disk on its own.
    eventually("exit record", || b.bundle().join("exits/init").exists());
    let rec = ExitRecord::read(b.bundle(), "init").unwrap();
    assert_eq!(rec.exit_status, 7);
    let st = b.state("").unwrap();
    assert_eq!((st.status, st.exit_status), (Status::Stopped, 7));
    assert_eq!(st.exited_at, Some(rec.exited_at));
    let w = b.wait("");
    assert_eq!((w.exit_status, w.exited_at), (7, Some(rec.exited_at)));
    b.finish();
}

#[test]
fn container_gets_only_stdio_fds_and_socket_is_private() {
    let b = Bundle::new("fds", &["sleep", "1000"], false);
    let meta = fs::metadata(&b.sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let (inp, out, err) = (b.fifo("in"), b.fifo("out"), b.fifo("err"));
    let _keep = (read_fifo(&out), read_fifo(&err));
    let pid = b.create(
        inp.to_str().unwrap(),
        out.to_str().unwrap(),
        err.to_str().unwrap(),
        false,
    );
    b.start("");
    let fds = |pid: u32| -> Vec<String> {
        // runc start returns before runc init has exec'd the process (runc's own fds are
        // still open until then): look once the process runs its program.
        eventually("process execs", || {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
        let mut v: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let target = fs::read_link(e.path()).unwrap_or_default();
                format!(
                    "{}:{}",
                    e.file_name().into_string().unwrap(),
                    target.display()
                )
            })
            .collect();
        v.sort();
        v.into_iter()
            .map(|s| {
                assert!(
                    s.starts_with(['0', '1', '2']) && s.len() > 2,
                    "unexpected fd {s}"
                );
                s[..1].to_string()
            })
            .collect()
    };
    assert_eq!(fds(pid), ["0", "1", "2"]);
    let _: Empty = b
        .call(Request::Exec(ExecRequest {
            exec_id: "x".into(),
            spec: exec_spec(&["sleep", "1000"], false),
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            terminal: false,
        }))
        .unwrap();
    let epid = b.start("x");
    assert_eq!(fds(epid), ["0", "1", "2"]);
    // The process gets pipes from the shim, never the host FIFOs themselves.
    let link = fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert!(link.to_string_lossy().starts_with("pipe:"), "{link:?}");
    b.finish();
}

#[test]
fn update_resources() {
    let b = Bundle::new("update", &["sleep", "1000"], false);
    let pid = b.create("", "", "", false);
    b.start("");
    let pids_max = pids_file(pid, "pids.max");
    assert_ne!(fs::read_to_string(&pids_max).unwrap().trim(), "42");
    let _: Empty = b
        .call(Request::Update {
            resources: serde_json::json!({"pids": {"limit": 42}}),
        })
        .unwrap();
    assert_eq!(
        fs::read_to_string(&pids_max).unwrap().trim(),
        "42",
        "{}",
        pids_max.display()
    );
    b.finish();
}

/// The file `name` in the cgroup of `pid` that holds the pids controller: a v1 `pids` hierarchy,
/// or the v2 one (whichever the host has; on a hybrid host pids is on v1).
fn pids_file(pid: u32, name: &str) -> std::path::PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    // The mount point of the v1 hierarchy of `controller`, or of cgroup2 for `None`.
    let mount_of = |controller: Option<&str>| {
        mountinfo.lines().find_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            let mut fs = fs.split(' ');
            let (fstype, options) = (fs.next()?, fs.nth(1)?);
            let wanted = match controller {
                Some(c) => fstype == "cgroup" && options.split(',').any(|o| o == c),
                None => fstype == "cgroup2",
            };
            let point = mount.split(' ').nth(4)?;
            wanted.then(|| std::path::PathBuf::from(point))
        })
    };
    // Paths here are relative to the hierarchy's root: this test is in the host's cgroup namespace.
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (controllers, path) = (fields.nth(1).unwrap(), fields.next().unwrap());
        let mount = if controllers.split(',').any(|c| c == "pids") {
            mount_of(Some("pids"))
        } else if controllers.is_empty() {
            mount_of(None)
        } else {
            continue;
        };
        let file = mount.map(|m| m.join(path.trim_start_matches('/')).join(name));
        if let Some(file) = file.filter(|f| f.exists()) {
            return file;
        }
    }
    panic!("no {name} in the cgroups of {pid}:\n{cgroups}");
}

/// The resident memory of a shim with a running container. The bound of release builds is the
/// figure the README reports (`cargo test --release -p berth-shim shim_memory -- --nocapture`
/// prints the numbers); debug builds, which CI runs, are held to a looser bound, and in both a
/// few hundred requests must not grow it (a per-request leak would).
#[test]
fn shim_memory() {
    let b = Bundle::new("rss", &["sleep", "1000"], false);
    let out = b.fifo("out");
    let _rx = read_fifo(&out);
    b.create("", out.to_str().unwrap(), "", false);
    b.start("");
    let field = |file: &str, key: &str| -> u64 {
        fs::read_to_string(format!("/proc/{}/{file}", b.shim_pid))
            .unwrap()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    // A first round of requests brings in the code and buffers any request needs.
    let requests = |n: usize| {
        for _ in 0..n {
            b.state("").unwrap();
        }
    };
    requests(50);
    let rss = field("status", "VmRSS:");
    let pss = field("smaps_rollup", "Pss:");
    println!("berth-shim with a running container: VmRSS {rss} kB, Pss {pss} kB");
    let bound = if cfg!(debug_assertions) {
        DEBUG_BOUND_KB
    } else {
        2048
    };
    assert!(rss < bound, "VmRSS {rss} kB, over {bound} kB");
    requests(500);
    let after = field("status", "VmRSS:");
    println!("after 500 more requests: VmRSS {after} kB");
    assert!(
        after <= rss + 256,
        "VmRSS grew from {rss} kB to {after} kB over 500 State requests"
    );
    b.finish();
}

/// A debug shim measured 2.4 MB here (its dependencies are optimized, see the workspace profile).
const DEBUG_BOUND_KB: u64 = 4096;

#[test]
fn delete_a_created_container() {
    let b = Bundle::new("created", &["sleep", "1000"], false);
    let pid = b.create("", "", "", false);
    let waiter = b.wait_async("");
    // runc delete kills the init that waits for start; its exit is still collected.
    let exit = b.delete("", false).unwrap();
    assert_eq!((exit.pid, exit.exit_status), (pid, 137));
    assert_eq!(recv(&waiter, "wait").unwrap().exit_status, 137);
    assert_eq!(shim_error(b.state("")).kind, ErrorKind::NotFound);
    let e = shim_error(b.call::<PidReply>(Request::Create(CreateRequest::default())));
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "one container per shim");
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

/// A `binary://` logger as containerd starts one: its arguments from the query, only
/// CONTAINER_ID and CONTAINER_NAMESPACE in its environment, the output pipes on fds 3 and 4, the
/// process created only after it closed fd 5, and SIGTERM at delete. Also for an exec, whose id
/// it gets.
#[test]
fn binary_logger_gets_the_output_and_stops_at_delete() {
    let b = Bundle::new(
        "binlog",
        &["sh", "-c", "echo out-line; echo err-line >&2; sleep 1000"],
        false,
    );
    let logs = tempfile::tempdir().unwrap();
    let script = logs.path().join("logger");
    // The copies run in the background without fd 5, so closing it says "ready".
    berth_testkit::write_executable(
        &script,
        "#!/bin/sh\n\
         out=\"$2\"\n\
         { echo \"args=$*\"; echo \"id=$CONTAINER_ID ns=$CONTAINER_NAMESPACE\"; } > \"$out.meta\"\n\
         /usr/bin/tr '\\0' '\\n' < /proc/$$/environ > \"$out.environ\"\n\
         trap 'echo TERM >> \"$out.meta\"; exit 0' TERM\n\
         /bin/cat <&3 > \"$out.stdout\" 5>&- &\n\
         /bin/cat <&4 > \"$out.stderr\" 5>&- &\n\
         exec 5>&-\n\
         while :; do /bin/sleep 0.05; done\n",
    );
    let base = logs.path().join("init");
    let uri = format!("binary://{}?file={}", script.display(), base.display());
    let pid = b.create("", &uri, &uri, false);
    assert_eq!(b.start(""), pid);
    let read = |p: &std::path::Path| fs::read_to_string(p).unwrap_or_default();
    let with = |ext: &str| base.with_extension(ext);
    eventually("the logger got stdout", || {
        read(&with("stdout")) == "out-line\n"
    });
    eventually("the logger got stderr", || {
        read(&with("stderr")) == "err-line\n"
    });
    let meta = read(&with("meta"));
    assert!(
        meta.starts_with(&format!("args=file {}\n", base.display())),
        "{meta}"
    );
    assert!(meta.contains(&format!("id={} ns=test\n", b.id)), "{meta}");
    assert_eq!(
        read(&with("environ")),
        format!("CONTAINER_ID={}\nCONTAINER_NAMESPACE=test\n", b.id),
        "the logger's whole environment"
    );

    // An exec logs through its own logger, which knows the exec's id.
    let exec_base = logs.path().join("exec");
    let exec_uri = format!("binary://{}?file={}", script.display(), exec_base.display());
    let _: Empty = b
        .call(Request::Exec(ExecRequest {
            exec_id: "e1".into(),
            spec: exec_spec(&["echo", "from-exec"], false),
            stdin: String::new(),
            stdout: exec_uri.clone(),
            stderr: exec_uri,
            terminal: false,
        }))
        .unwrap();
    b.start("e1");
    assert_eq!(b.wait("e1").exit_status, 0);
    let exec_read = |ext: &str| read(&exec_base.with_extension(ext));
    eventually("the exec's logger got its output", || {
        exec_read("stdout") == "from-exec\n"
    });
    assert!(
        exec_read("meta").contains("id=e1 ns=test"),
        "{}",
        exec_read("meta")
    );
    b.delete("e1", false).unwrap();
    eventually("the exec's logger was told to stop", || {
        exec_read("meta").ends_with("TERM\n")
    });
    assert!(
        !read(&with("meta")).contains("TERM"),
        "init's logger still runs"
    );

    b.kill("", 9, false).unwrap();
    assert_eq!(b.wait("").exit_status, 137);
    b.delete("", false).unwrap();
    eventually("init's logger was told to stop", || {
        read(&with("meta")).ends_with("TERM\n")
    });
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

#[test]
fn binary_logger_errors() {
    let b = Bundle::new("binlog-bad", &["true"], false);
    // Not absolute, and a logger that never exists.
    for uri in ["binary://relative/logger", "binary:///nonexistent/logger"] {
        let e = shim_error(b.call::<PidReply>(Request::Create(CreateRequest {
            stdin: String::new(),
            stdout: uri.into(),
            stderr: uri.into(),
            terminal: false,
            start: false,
        })));
        assert!(
            matches!(e.kind, ErrorKind::InvalidArgument | ErrorKind::Internal),
            "{uri}: {e:?}"
        );
        assert!(
            e.message.contains("logger") || e.message.contains("logging"),
            "{e:?}"
        );
    }
    // stdout and stderr must name the same logger.
    let e = shim_error(b.call::<PidReply>(Request::Create(CreateRequest {
        stdin: String::new(),
        stdout: "binary:///bin/true".into(),
        stderr: "file:///tmp/x".into(),
        terminal: false,
        start: false,
    })));
    assert!(e.message.contains("stdout and stderr together"), "{e:?}");
    assert_eq!(shim_error(b.state("")).kind, ErrorKind::NotFound);
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

/// Without a pid namespace of its own, a container's other processes do not die with init: the
/// shim kills them when init exits (containerd's KillAll), so the output ends and nothing is left.
#[test]
fn init_exit_kills_the_rest_without_a_pid_namespace() {
    let b = Bundle::prepare(
        "killall",
        &["sh", "-c", "sleep 1000 & echo $!; exit 3"],
        false,
    );
    let config = b.bundle().join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
    spec["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|ns| ns["type"] != "pid");
    fs::write(&config, spec.to_string()).unwrap();
    let b = b.start_shim_with(&[SHIM]);
    let out = b.fifo("out");
    let rx = read_fifo(&out);
    b.create("", out.to_str().unwrap(), "", false);
    let waiter = b.wait_async("");
    b.start("");
    assert_eq!(recv(&waiter, "wait").unwrap().exit_status, 3);
    // In the host's pid namespace, the printed pid is the host's.
    let printed = String::from_utf8(recv(&rx, "stdout EOF")).unwrap();
    let sleep: u32 = printed.trim().parse().expect("the background sleep's pid");
    eventually("the background sleep is killed", || !process_alive(sleep));
    b.delete("", false).unwrap();
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

#[test]
fn a_hung_runtime_is_killed_at_the_bound_and_the_shim_keeps_serving() {
    // runc for everything but `start`, which hangs (recording its pid first).
    let b = Bundle::prepare("hungrunc", &["sleep", "100"], false);
    let tools = tempfile::tempdir().unwrap();
    let hung_pid = tools.path().join("hung.pid");
    let wrapper = tools.path().join("runc-hangs-in-start");
    berth_testkit::write_executable(
        &wrapper,
        &format!(
            "#!/bin/sh\nfor a; do\n  if [ \"$a\" = start ]; then echo $$ > {}; exec sleep 600; fi\ndone\nexec runc \"$@\"\n",
            hung_pid.display()
        ),
    );
    let mut args = b.shim_args();
    let runtime = args.iter().position(|a| a == "--runtime-binary").unwrap() + 1;
    args[runtime] = wrapper.display().to_string();
    args.extend(["--runtime-timeout-ms".to_string(), "1000".to_string()]);
    let out = std::process::Command::new(SHIM)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut b = b;
    b.shim_pid = fs::read_to_string(b.bundle().join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    b.create("", "", "", false);
    let started = std::time::Instant::now();
    let r = b.call::<PidReply>(Request::Start {
        exec_id: String::new(),
    });
    let elapsed = started.elapsed();
    match r {
        Err(berth_shim::client::CallError::Shim(e)) => {
            assert_eq!(e.kind, ErrorKind::DeadlineExceeded, "{e:?}");
            assert!(e.message.contains("did not finish within"), "{e:?}");
        }
        other => panic!("start through a hung runtime answered {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    // The hung runtime was killed...
    let pid: u32 = fs::read_to_string(&hung_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !process_alive(pid),
        "the hung runtime {pid} is still running"
    );
    // ...and the shim serves on: the init is still just created.
    let state = b.state("").expect("state after the timeout");
    assert_eq!(state.status, Status::Created, "{state:?}");
}

/// `--cgroup-dir`: the shim moves itself into its own cgroup (the CRI's pod cgroup) beside the
/// container's create, which fails, leaving no container, when the move cannot be made.
#[test]
fn the_shim_joins_its_cgroup_and_a_create_fails_without_it() {
    let cgroup = format!("/berth-shim-test-{}", std::process::id());
    let dirs = berth_testkit::cgroups::create(&cgroup).expect("make the test cgroup");
    let mut with_cgroup = Bundle::prepare("shimcg", &["sleep", "30"], false);
    with_cgroup.extra_shim_args = dirs
        .iter()
        .flat_map(|d| ["--cgroup-dir".to_string(), d.display().to_string()])
        .collect();
    let b = with_cgroup.start_shim_with(&[SHIM]);
    b.create("", "", "", false);
    let shim_pid = b.shim_pid.to_string();
    for dir in &dirs {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == shim_pid),
            "shim {shim_pid} is not in {}: {procs:?}",
            dir.display()
        );
    }
    b.finish();
    // The shim has exited: its cgroup can go.
    berth_testkit::cgroups::remove(&cgroup).expect("remove the test cgroup");

    let mut missing = Bundle::prepare("shimcg-missing", &["sleep", "30"], false);
    let gone = dirs[0].join("not-there");
    missing.extra_shim_args = vec!["--cgroup-dir".into(), gone.display().to_string()];
    let b = missing.start_shim_with(&[SHIM]);
    let err = shim_error(b.call::<PidReply>(Request::Create(CreateRequest::default())));
    assert!(
        err.message.contains(&gone.display().to_string()),
        "{}",
        err.message
    );
    assert_eq!(shim_error(b.state("")).kind, ErrorKind::NotFound);
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}

/// `create` with `start`: one `runc run --detach`; init runs when the reply comes, and an init
/// that exits at once still has its exit recorded.
#[test]
fn create_with_start_runs_init_at_once() {
    let b = Bundle::new("runnow", &["sleep", "30"], false);
    let r: PidReply = b
        .call(Request::Create(CreateRequest {
            start: true,
            ..Default::default()
        }))
        .unwrap();
    let st = b.state("").unwrap();
    assert_eq!((st.status, st.pid), (Status::Running, r.pid));
    assert!(process_alive(r.pid));
    // Already started: a start is a wrong transition.
    assert_eq!(
        shim_error(b.call::<PidReply>(Request::Start {
            exec_id: String::new()
        }))
        .kind,
        ErrorKind::FailedPrecondition
    );
    b.finish();

    let b = Bundle::new("runexit", &["sh", "-c", "exit 5"], false);
    let r: PidReply = b
        .call(Request::Create(CreateRequest {
            start: true,
            ..Default::default()
        }))
        .unwrap();
    let exit = b.wait("");
    assert_eq!((exit.pid, exit.exit_status), (r.pid, 5));
    let del = b.delete("", false).unwrap();
    assert_eq!(del.exit_status, 5);
    let _: Empty = b.call(Request::Shutdown).unwrap();
    b.assert_clean();
}
