//! berthd's CRI as a user drives it with the real crictl (cri-tools v1.37.0), every command a
//! process of its own: pull from critest's loopback fixture registry (through the daemon's
//! hosts.toml mirrors), runp with a bridge conflist of the test's own, create, start, ps and pods
//! with filters, inspect/inspectp/inspecti, exec -s, exec -i with stdin piped, exec -it and
//! attach -it under a real pty (with a resize), attach -i to a stdin_once container,
//! port-forward to busybox httpd in the pod, logs (--tail, -f), stats/statsp, update (the cgroup
//! file), stop, rm, stopp, rmp, imagefsinfo, rmi. And the streaming server's limits through
//! berthd's config: single-use, expiring, bounded URLs with a concrete host. Needs root, berthd
//! built in this target dir, crictl (scripts/deps-cri-tools.sh), Debian's CNI plugins,
//! docker-registry, skopeo and busybox-static.

#[path = "support/crictl_files.rs"]
mod crictl_files;
#[path = "support/fixtures.rs"]
mod fixtures;

use berth_api::runtime::v1 as cri;
use berth_api::runtime::v1::runtime_service_client::RuntimeServiceClient;
use berth_testkit::berthd::Daemon;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// A berthd with its CRI, mirrors to the fixture registry and a CNI conflist of its own;
/// every pod is removed through the CRI when dropped.
struct Env {
    /// Held for the test: its drop stops berthd (and prints its log when the test failed).
    _daemon: Daemon,
    dir: tempfile::TempDir,
    files: crictl_files::CrictlFiles,
    bridge: String,
}

impl Env {
    fn new(bridge: &str, subnet_prefix: &str, extra: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("berth-crictl-cli-")
            .tempdir()
            .expect("temp dir");
        let certs = fixtures::certs_d(dir.path());
        let net_d = dir.path().join("net.d");
        crictl_files::write_pods_conflist(&net_d, bridge, subnet_prefix);
        let daemon = Daemon::start_with_config(&format!(
            "[cri]\naddress = {:?}\ncni_conf_dir = {:?}\nregistry_config_path = {:?}\n{extra}",
            dir.path().join("cri.sock"),
            net_d,
            certs,
        ));
        let env = Env {
            _daemon: daemon,
            files: crictl_files::CrictlFiles::new(dir.path()),
            dir,
            bridge: bridge.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !env.socket().exists() {
            assert!(Instant::now() < deadline, "no CRI socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        env
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("cri.sock")
    }

    fn command(&self, args: &[&str]) -> Command {
        let endpoint = format!("unix://{}", self.socket().display());
        let mut cmd = Command::new(berth_testkit::crictl::binary());
        cmd.args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "60s", "--config", "/dev/null"])
        .args(args);
        cmd
    }

    fn crictl(&self, args: &[&str]) -> Output {
        berth_testkit::crictl::run(&self.socket(), "60s", args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(
            out.status.success(),
            "crictl {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr),
        );
        text(&out.stdout).trim().to_string()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("crictl {args:?}: {e}: {out}"))
    }

    /// crictl with `input` on its stdin (a pipe), bounded in time.
    fn piped(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run crictl");
        let mut stdin = child.stdin.take().expect("crictl stdin");
        stdin.write_all(input).expect("write crictl's stdin");
        drop(stdin);
        wait_bounded(child, Duration::from_secs(60), args)
    }

    fn pod_config(&self, name: &str) -> String {
        self.files.pod_config(
            name,
            "cli",
            serde_json::json!({"labels": {"app": name, "tier": "test"}}),
        )
    }

    fn container_config(&self, name: &str, command: &[&str], extra: Value) -> String {
        let mut v = serde_json::json!({"labels": {"role": name},});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        self.files.container_config(name, IMAGE, command, v)
    }

    /// create + start; the container's id.
    fn run(&self, pod: &str, pod_json: &str, name: &str, command: &[&str], extra: Value) -> String {
        let config = self.container_config(name, command, extra);
        let id = self.ok(&["create", pod, &config, pod_json]);
        assert!(is_id(&id), "container id {id:?}");
        self.ok(&["start", &id]);
        id
    }

    fn state(&self, ctr: &str) -> String {
        self.json(&["inspect", "-o", "json", ctr])["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn wait_state(&self, ctr: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.json(&["inspect", "-o", "json", ctr]);
            if v["status"]["state"] == state {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{ctr} never reached {state}: {}",
                v["status"]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `crictl logs ARGS` once it shows `want` (the shim writes the log asynchronously).
    fn logs_with(&self, args: &[&str], want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.ok(args);
            if out.contains(want) || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.crictl(&["rmp", "-a", "-f"]);
        // The bridge plugin's DEL leaves its bridge.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn ids(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for `child` at most `limit`, killing it (and failing) after that.
fn wait_bounded(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait for crictl").is_some() {
            return child.wait_with_output().expect("crictl output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("crictl output");
            panic!(
                "crictl {what:?} did not finish in {limit:?}; stdout {:?} stderr {:?}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process on the slave side of a fresh pty as its controlling terminal: what a user's
/// crictl sees in a terminal emulator. Output from the master side is collected as it comes.
struct Pty {
    child: Child,
    master: std::fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
}

fn winsize(rows: u16, cols: u16) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Pty {
    fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Pty {
        let pty = nix::pty::openpty(
            Some(&winsize(rows, cols)),
            None::<&nix::sys::termios::Termios>,
        )
        .expect("openpty");
        let slave: OwnedFd = pty.slave;
        cmd.stdin(slave.try_clone().expect("dup the pty"))
            .stdout(slave.try_clone().expect("dup the pty"))
            .stderr(slave.try_clone().expect("dup the pty"));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs between fork and
        // exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn under the pty");
        drop(slave);
        let master = std::fs::File::from(pty.master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup the pty master");
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every slave fd is closed: the process ended.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            child,
            master,
            seen,
        }
    }

    fn send(&mut self, s: &str) {
        self.master
            .write_all(s.as_bytes())
            .expect("write to the pty");
    }

    fn output(&self) -> String {
        text(&self.seen.lock().unwrap())
    }

    /// Waits until the output shows `want`; the output so far.
    fn expect(&self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.output();
            if out.contains(want) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {want:?}; it showed {out:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The terminal is resized as a terminal emulator does it (the kernel signals SIGWINCH to
    /// the foreground process group).
    fn resize(&self, rows: u16, cols: u16) {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
        let r = unsafe {
            libc::ioctl(
                self.master.as_raw_fd(),
                libc::TIOCSWINSZ,
                &ws as *const libc::winsize,
            )
        };
        assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // The reader drains what is left.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.output());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the pty's process did not end; it showed {:?}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A long-running crictl (port-forward, logs -f) whose stdout lines arrive on a channel;
/// killed when dropped.
struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run crictl");
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The first line (from now) that contains `want`.
    fn line_with(&mut self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(want) => return line,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("no line with {want:?}; saw {seen:?}; stderr {err:?}");
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16) -> String {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    conn.write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        .expect("send the request");
    let mut page = String::new();
    conn.read_to_string(&mut page).expect("read the page");
    page
}

fn cgroup_file(controller: &str, pod: &str, ctr: &str, file: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(format!("k8s.io/{pod}/{ctr}"))
        .join(file)
}

#[test]
fn crictl_drives_every_rpc() {
    let t0 = Instant::now();
    let env = Env::new("bcricli0", "10.233.61", "");

    // Images: pull through the mirror, list, inspect.
    let pulled = env.ok(&["pull", IMAGE]);
    assert!(
        pulled.contains("Image is up to date for sha256:"),
        "{pulled}"
    );
    let image_id = pulled.rsplit(' ').next().unwrap_or_default().to_string();
    let images = env.json(&["images", "-o", "json"]);
    assert!(
        images["images"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["id"] == image_id.as_str())),
        "{images}"
    );
    let inspecti = env.json(&["inspecti", "-o", "json", IMAGE]);
    assert_eq!(inspecti["status"]["id"], image_id.as_str(), "{inspecti}");
    assert_eq!(inspecti["status"]["repoTags"][0], IMAGE, "{inspecti}");

    // A pod, found by the filters crictl has.
    let pod_json = env.pod_config("cli");
    let pod = env.ok(&["runp", &pod_json]);
    assert!(is_id(&pod), "pod id {pod:?}");
    let inspectp = env.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(inspectp["status"]["state"], "SANDBOX_READY", "{inspectp}");
    assert!(
        inspectp["status"]["network"]["ip"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.233.61.")),
        "{inspectp}"
    );
    let filters: [&[&str]; 5] = [
        &["--name", "cli"],
        &["--label", "app=cli"],
        &["--state", "ready"],
        &["--namespace", "cli"],
        &["--id", &pod[..12]],
    ];
    for filter in filters {
        let args = [&["pods", "-o", "json"][..], filter].concat();
        assert_eq!(ids(&env.json(&args), "items"), [pod.as_str()], "{filter:?}");
    }
    assert!(ids(
        &env.json(&["pods", "-o", "json", "--label", "app=other"]),
        "items"
    )
    .is_empty());
    assert!(ids(
        &env.json(&["pods", "-o", "json", "--state", "notready"]),
        "items"
    )
    .is_empty());
    let quiet = env.ok(&["pods", "-q"]);
    assert_eq!(quiet, pod);

    // Containers: a talker for logs/exec/update, a web server, a tty reader, a stdin_once cat.
    let app = env.run(
        &pod,
        &pod_json,
        "app",
        &[
            "sh",
            "-c",
            "echo first; echo oops >&2; echo second; i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done",
        ],
        Value::Null,
    );
    let web = env.run(
        &pod,
        &pod_json,
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-the-pod >/www/index.html && exec httpd -f -p 8080 -h /www",
        ],
        Value::Null,
    );
    let tty = env.run(
        &pod,
        &pod_json,
        "tty",
        &["sh", "-c", "while read l; do echo got:$l; done"],
        serde_json::json!({"stdin": true, "tty": true}),
    );
    let once = env.run(
        &pod,
        &pod_json,
        "once",
        &["sh", "-c", "cat; echo stdin-closed"],
        serde_json::json!({"stdin": true, "stdin_once": true}),
    );
    for c in [&app, &web, &tty, &once] {
        env.wait_state(c, "CONTAINER_RUNNING");
    }
    let all = [app.clone(), web.clone(), tty.clone(), once.clone()];
    let mut listed = ids(
        &env.json(&["ps", "-o", "json", "--pod", &pod]),
        "containers",
    );
    listed.sort();
    let mut want = all.to_vec();
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(
        ids(
            &env.json(&["ps", "-o", "json", "--name", "^web$"]),
            "containers"
        ),
        [web.as_str()]
    );
    assert_eq!(
        ids(
            &env.json(&["ps", "-o", "json", "--label", "role=app"]),
            "containers"
        ),
        [app.as_str()]
    );
    assert_eq!(
        ids(
            &env.json(&["ps", "-o", "json", "--id", &app[..13]]),
            "containers"
        ),
        [app.as_str()]
    );
    assert!(ids(
        &env.json(&["ps", "-o", "json", "--state", "exited"]),
        "containers"
    )
    .is_empty());
    let inspect = env.json(&["inspect", "-o", "json", &app]);
    assert_eq!(inspect["status"]["metadata"]["name"], "app", "{inspect}");
    assert_eq!(inspect["status"]["image"]["image"], IMAGE, "{inspect}");
    assert!(
        inspect["status"]["imageRef"]
            .as_str()
            .is_some_and(|r| r.contains("@sha256:")),
        "{inspect}"
    );
    assert_eq!(inspect["status"]["labels"]["role"], "app", "{inspect}");

    // exec -s (ExecSync) and exec (the streaming Exec), without a terminal.
    let out = env.ok(&["exec", "-s", &app, "sh", "-c", "echo synced"]);
    assert_eq!(out, "synced");
    let out = env.crictl(&["exec", "-s", &app, "sh", "-c", "echo bad >&2; exit 3"]);
    // crictl's CRI client turns a non-zero exit into an error naming the code and stderr.
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("exited with 3: bad"), "{out:?}");
    // A short id, as `crictl ps` prints them.
    assert_eq!(env.ok(&["exec", &app[..13], "echo", "short"]), "short");
    // exec -i: stdin piped through, EOF ends cat.
    let out = env.piped(
        &["exec", "-i", &app, "sh", "-c", "cat; echo end"],
        b"piped\ndata\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "piped\ndata\nend\n", "{out:?}");

    // The rest of the streaming commands over each transport crictl has.
    for transport in ["spdy", "websocket"] {
        let out = env.crictl(&[
            "exec",
            "-r",
            transport,
            &app,
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 4",
        ]);
        assert_eq!(text(&out.stdout), "to-out\n", "{transport}: {out:?}");
        assert!(text(&out.stderr).contains("to-err"), "{transport}: {out:?}");
        assert!(!out.status.success(), "{transport}: {out:?}");

        // exec -it under a pty: the process has a terminal of the pty's size, and follows
        // resizes.
        let mut term = Pty::spawn(
            env.command(&["exec", "-r", transport, "-it", &app, "sh"]),
            33,
            77,
        );
        term.send("tty; stty size; echo mark-$((40+2))\n");
        let shown = term.expect("mark-42");
        assert!(shown.contains("/dev/pts/"), "{transport}: {shown:?}");
        assert!(shown.contains("33 77"), "{transport}: {shown:?}");
        term.resize(44, 88);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            term.send("stty size\n");
            std::thread::sleep(Duration::from_millis(200));
            if term.output().contains("44 88") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{transport}: the resize never arrived: {:?}",
                term.output()
            );
        }
        term.send("exit 5\n");
        let (status, shown) = term.wait();
        assert!(!status.success(), "{transport}: {shown:?}");

        // attach -it to the tty container: a line typed is echoed back by the container.
        let mut term = Pty::spawn(
            env.command(&["attach", "-r", transport, "-it", &tty]),
            24,
            80,
        );
        // The attach is live once a line round-trips; lines typed before it may be lost.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            n += 1;
            term.send(&format!("{transport}{n}\n"));
            std::thread::sleep(Duration::from_millis(300));
            if term.output().contains(&format!("got:{transport}{n}")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{transport}: attach never echoed: {:?}",
                term.output()
            );
        }
        term.send("again\n");
        term.expect("got:again");
        drop(term);
        assert_eq!(
            env.state(&tty),
            "CONTAINER_RUNNING",
            "detaching stops nothing"
        );

        // port-forward: a local port to busybox httpd in the pod's network namespace.
        let mut forward =
            Running::spawn(env.command(&["port-forward", "-r", transport, &pod[..12], "0:8080"]));
        let line = forward.line_with("Forwarding from 127.0.0.1:");
        let port: u16 = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        for _ in 0..2 {
            let page = http_get(port);
            assert!(page.contains(" 200 "), "{transport}: {page}");
            assert!(page.contains("hello-from-the-pod"), "{transport}: {page}");
        }
        drop(forward);
    }

    // attach -i to the stdin_once container: its stdin closes when the first attach ends.
    let out = env.piped(&["attach", "-i", &once], b"through-attach\n");
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("through-attach"), "{out:?}");
    let exited = env.wait_state(&once, "CONTAINER_EXITED");
    assert_eq!(exited["status"]["exitCode"], 0, "{exited}");
    let logs = env.logs_with(&["logs", &once], "stdin-closed");
    assert_eq!(logs, "through-attach\nstdin-closed", "{logs}");

    // logs: all, --tail, -f (follows new lines).
    let logs = env.logs_with(&["logs", &app], "tick2");
    assert!(logs.starts_with("first\n"), "{logs}");
    let out = env.crictl(&["logs", &app]);
    assert!(text(&out.stderr).contains("oops"), "stderr apart: {out:?}");
    let last = env.ok(&["logs", "--tail", "1", &app]);
    assert!(last.starts_with("tick") && !last.contains('\n'), "{last:?}");
    let mut follow = Running::spawn(env.command(&["logs", "-f", "--tail", "1", &app]));
    let first: u32 = follow.line_with("tick")[4..].parse().expect("a tick count");
    let later = format!("tick{}", first + 3);
    follow.line_with(&later);
    drop(follow);

    // stats and statsp.
    let stats = env.json(&["stats", "-o", "json", "--id", &app]);
    let s = &stats["stats"][0];
    assert_eq!(s["attributes"]["id"], app.as_str(), "{stats}");
    assert!(
        s["memory"]["workingSetBytes"]["value"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v > 0),
        "{stats}"
    );
    assert!(
        s["cpu"]["usageCoreNanoSeconds"]["value"].is_string(),
        "{stats}"
    );
    let stats = env.json(&["stats", "-o", "json", "--pod", &pod]);
    let of_pod: Vec<&str> = stats["stats"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["attributes"]["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        of_pod.contains(&app.as_str()) && of_pod.contains(&web.as_str()),
        "{stats}"
    );
    let statsp = env.json(&["statsp", "-o", "json", "--id", &pod]);
    let p = &statsp["stats"][0];
    assert_eq!(p["attributes"]["id"], pod.as_str(), "{statsp}");
    assert!(
        p["linux"]["memory"]["workingSetBytes"].is_object(),
        "{statsp}"
    );
    assert!(
        p["linux"]["containers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|s| s["attributes"]["id"] == app.as_str())),
        "{statsp}"
    );

    // update: the limits land in the container's cgroup files.
    env.ok(&[
        "update",
        "--memory",
        "67108864",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        &app,
    ]);
    let limit = std::fs::read_to_string(cgroup_file("memory", &pod, &app, "memory.limit_in_bytes"))
        .expect("read memory.limit_in_bytes");
    assert_eq!(limit.trim(), "67108864");
    let quota = std::fs::read_to_string(cgroup_file("cpu", &pod, &app, "cpu.cfs_quota_us"))
        .expect("read cpu.cfs_quota_us");
    assert_eq!(quota.trim(), "50000");
    let inspect = env.json(&["inspect", "-o", "json", &app]);
    assert_eq!(
        inspect["status"]["resources"]["linux"]["memoryLimitInBytes"], "67108864",
        "{}",
        inspect["status"]["resources"]
    );

    // stop, rm, stopp, rmp.
    env.ok(&["stop", "--timeout", "5", &app]);
    let stopped = env.json(&["inspect", "-o", "json", &app]);
    assert_eq!(stopped["status"]["state"], "CONTAINER_EXITED", "{stopped}");
    assert_eq!(
        ids(
            &env.json(&["ps", "-o", "json", "--state", "exited"]),
            "containers"
        )
        .len(),
        2
    );
    env.ok(&["rm", &app]);
    assert!(!env.crictl(&["inspect", &app]).status.success());
    env.ok(&["stopp", &pod]);
    let stopped = env.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(stopped["status"]["state"], "SANDBOX_NOTREADY", "{stopped}");
    assert!(ids(
        &env.json(&["ps", "-o", "json", "--state", "running"]),
        "containers"
    )
    .is_empty());
    env.ok(&["rmp", &pod]);
    assert!(ids(&env.json(&["pods", "-o", "json"]), "items").is_empty());
    assert!(ids(&env.json(&["ps", "-a", "-o", "json"]), "containers").is_empty());

    // imagefsinfo and rmi.
    let fs = env.json(&["imagefsinfo", "-o", "json"]);
    let image_fs = &fs["status"]["imageFilesystems"][0];
    assert!(
        image_fs["fsId"]["mountpoint"]
            .as_str()
            .is_some_and(|m| m.starts_with('/')),
        "{fs}"
    );
    let used = &image_fs["usedBytes"]["value"];
    assert!(used.is_string() || used.is_u64(), "{fs}");
    env.ok(&["rmi", IMAGE]);
    assert!(!env.crictl(&["inspecti", IMAGE]).status.success());
    eprintln!("crictl_drives_every_rpc took {:?}", t0.elapsed());
}

/// The raw HTTP status line a SPDY upgrade request for `url` gets.
fn upgrade_status(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, path) = rest.split_at(rest.find('/').expect("a path"));
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the stream server");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).expect("send the upgrade");
    let mut buf = vec![0u8; 512];
    let n = conn.read(&mut buf).expect("read the answer");
    text(&buf[..n]).lines().next().unwrap_or("").to_string()
}

#[test]
fn stream_urls_are_single_use_expiring_bounded_and_absolute() {
    let env = Env::new(
        "bcricli1",
        "10.233.62",
        "stream_token_ttl_seconds = 1\nstream_max_in_flight = 2\n",
    );
    let pod = env.ok(&["runp", &env.pod_config("limits")]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut client = rt.block_on(async {
        RuntimeServiceClient::new(
            berth::connect(env.socket())
                .await
                .expect("connect to the CRI socket"),
        )
    });
    let mut url = || {
        let req = cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        };
        rt.block_on(client.port_forward(req))
            .map(|r| r.into_inner().url)
    };

    // Absolute, with the loopback host the server listens on and a port.
    let first = url().expect("PortForward");
    let authority = first
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("not an absolute http URL: {first}"));
    let addr: std::net::SocketAddr = authority
        .parse()
        .unwrap_or_else(|e| panic!("{first}: no concrete host and port: {e}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{first}");

    // Single use: the upgrade works once, then the token is gone.
    assert!(upgrade_status(&first).contains(" 101 "), "{first}");
    assert!(upgrade_status(&first).contains(" 404 "), "{first}");

    // Bounded: two URLs waiting, a third is refused until one is used or expires.
    let a = url().expect("PortForward");
    let _b = url().expect("PortForward");
    let refused = url().expect_err("a third URL in flight");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(upgrade_status(&a).contains(" 101 "), "{a}");
    let c = url().expect("room again after a URL was used");

    // Expiring: after the configured second, the URL is refused and its room is free.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        upgrade_status(&c).contains(" 404 "),
        "an expired URL was accepted"
    );
    url().expect("expired URLs do not hold room");
    url().expect("expired URLs do not hold room");
}
