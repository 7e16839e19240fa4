//! The streaming server driven by client-go (tests/go) with default options: SPDY,
//! WebSocket and kubectl's fallback executors, and the SPDY port-forwarder. The backend runs
//! real local processes (with a real pty for tty) and forwards to a real TCP echo server.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth_cri_stream::{
    AttachRequest, Backend, Config, ExecRequest, PortForwardRequest, StreamError, StreamIo,
    StreamServer, TerminalSize, Tunnel,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Builds the Go client once per test binary; Go's own cache makes reruns quick.
fn client() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cri-stream-client");
        let status = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go"))
            .status()
            .expect("run go build");
        assert!(status.success(), "go build of the test client failed");
        bin
    })
    .clone()
}

#[derive(Default)]
struct LocalBackend {
    /// Pids of processes exec started, to check none outlives its client.
    pids: Mutex<Vec<u32>>,
}

impl LocalBackend {
    async fn run(&self, cmd: &[String], tty: bool, io: StreamIo) -> Result<i32, StreamError> {
        if tty {
            return self.run_tty(cmd, io).await;
        }
        let mut child = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(if io.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| StreamError::Internal(e.to_string()))?;
        self.pids.lock().unwrap().push(child.id().unwrap());
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        // A process that exits without reading all of stdin must not wait for the client's EOF.
        let from = io.stdin;
        let feed = tokio::spawn(async move {
            if let (Some(mut from), Some(mut to)) = (from, stdin) {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            }
        });
        let out = async {
            if let (Some(mut from), Some(mut to)) = (stdout, io.stdout) {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }
        };
        let err = async {
            if let (Some(mut from), Some(mut to)) = (stderr, io.stderr) {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }
        };
        let (_, _, status) = tokio::join!(out, err, child.wait());
        feed.abort();
        let status = status.map_err(|e| StreamError::Internal(e.to_string()))?;
        Ok(status.code().unwrap_or(128))
    }

    async fn run_tty(&self, cmd: &[String], mut io: StreamIo) -> Result<i32, StreamError> {
        // The size comes first so the program sees it from its start.
        let size = match io.resize.as_mut() {
            Some(r) => tokio::time::timeout(Duration::from_secs(5), r.recv())
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let size = size.unwrap_or(TerminalSize {
            width: 80,
            height: 24,
        });
        let ws = nix::pty::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).unwrap();
        let slave: OwnedFd = pty.slave;
        let mut command = tokio::process::Command::new(&cmd[0]);
        command
            .args(&cmd[1..])
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap())
            .kill_on_drop(true);
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| StreamError::Internal(e.to_string()))?;
        // The command keeps its copies of the slave; the pty reports EOF only when all close.
        drop(command);
        drop(slave);
        let master = std::fs::File::from(pty.master);
        let mut reader = tokio::fs::File::from_std(master.try_clone().unwrap());
        let mut writer = tokio::fs::File::from_std(master);
        let out = async {
            if let Some(mut to) = io.stdout {
                let mut buf = [0u8; 4096];
                // EIO is how a pty says its last slave closed.
                while let Ok(n @ 1..) = reader.read(&mut buf).await {
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to.shutdown().await;
            }
        };
        let stdin = io.stdin;
        let feed = tokio::spawn(async move {
            if let Some(mut from) = stdin {
                let _ = tokio::io::copy(&mut from, &mut writer).await;
            }
        });
        let (_, status) = tokio::join!(out, child.wait());
        feed.abort();
        let status = status.map_err(|e| StreamError::Internal(e.to_string()))?;
        Ok(status.code().unwrap_or(128))
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, StreamError> {
        if req.container_id == "gone" {
            return Err(StreamError::NotFound(format!(
                "container {}",
                req.container_id
            )));
        }
        self.run(&req.cmd, req.tty, io).await
    }

    async fn attach(&self, req: &AttachRequest, io: StreamIo) -> Result<(), StreamError> {
        // The "container" here is a process that greets whatever it reads first.
        let cmd: Vec<String> = ["sh", "-c", "read line; echo attached:$line"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match self.run(&cmd, req.tty, io).await? {
            0 => Ok(()),
            code => Err(StreamError::Internal(format!(
                "container exited with {code}"
            ))),
        }
    }

    async fn port_forward(
        &self,
        _req: &PortForwardRequest,
        port: u16,
        mut tunnel: Box<dyn Tunnel>,
    ) -> Result<(), StreamError> {
        let mut conn = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| StreamError::Internal(format!("connect to port {port}: {e}")))?;
        tokio::io::copy_bidirectional(&mut tunnel, &mut conn)
            .await
            .map_err(|e| StreamError::Internal(e.to_string()))?;
        Ok(())
    }
}

async fn server(config: Config) -> (StreamServer, Arc<LocalBackend>) {
    let backend = Arc::new(LocalBackend::default());
    let server = StreamServer::start(config, backend.clone()).await.unwrap();
    (server, backend)
}

fn exec_req(container_id: &str, cmd: &str, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: container_id.into(),
        cmd: vec!["sh".into(), "-c".into(), cmd.into()],
        tty,
        stdin: true,
        stdout: true,
        stderr: !tty,
    }
}

async fn run_client(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = tokio::process::Command::new(client())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    match tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("client {args:?} did not finish in time"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdio_and_exit_codes_with_every_executor() {
    let (server, _) = server(Config::default()).await;
    for proto in ["spdy", "websocket", "fallback"] {
        let url = server
            .get_exec(exec_req("c1", "cat; echo oops >&2; exit 3", false))
            .unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let out = run_client(
            &["exec", "-proto", proto, "-stdin", "-url", &url],
            b"hello\n",
        )
        .await;
        assert_eq!(
            text(&out.stdout),
            "hello\n",
            "{proto}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("oops"),
            "{proto}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(3), "{proto}: {}", text(&out.stderr));

        let url = server.get_exec(exec_req("c1", "echo fine", false)).unwrap();
        let out = run_client(&["exec", "-proto", proto, "-stdin", "-url", &url], b"").await;
        assert_eq!(
            text(&out.stdout),
            "fine\n",
            "{proto}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{proto}: {}", text(&out.stderr));

        let url = server.get_exec(exec_req("gone", "true", false)).unwrap();
        let out = run_client(&["exec", "-proto", proto, "-stdin", "-url", &url], b"").await;
        assert_eq!(out.status.code(), Some(100), "{proto}");
        assert!(
            text(&out.stderr).contains("container gone not found"),
            "{proto}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_gets_the_clients_terminal_size() {
    let (server, _) = server(Config::default()).await;
    for proto in ["spdy", "websocket"] {
        let url = server.get_exec(exec_req("c1", "stty size", true)).unwrap();
        let out = run_client(
            &[
                "exec", "-proto", proto, "-tty", "-stdin", "-resize", "100x40", "-url", &url,
            ],
            b"",
        )
        .await;
        assert!(
            text(&out.stdout).contains("40 100"),
            "{proto}: {:?} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{proto}: {}", text(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_over_spdy_and_websocket() {
    let (server, _) = server(Config::default()).await;
    for proto in ["spdy", "websocket"] {
        let url = server
            .get_attach(AttachRequest {
                container_id: "c1".into(),
                tty: false,
                stdin: true,
                stdout: true,
                stderr: true,
            })
            .unwrap();
        let out = run_client(&["exec", "-proto", proto, "-stdin", "-url", &url], b"hi\n").await;
        assert_eq!(
            text(&out.stdout),
            "attached:hi\n",
            "{proto}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_tcp_echo_server() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got).await;
                let _ = conn.write_all(b"echo:").await;
                let _ = conn.write_all(&got).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    let (server, _) = server(Config::default()).await;
    let port = port.to_string();
    for proto in ["spdy", "websocket", "fallback"] {
        let url = server
            .get_port_forward(PortForwardRequest {
                pod_sandbox_id: "p1".into(),
            })
            .unwrap();
        let args = [
            "portforward",
            "-proto",
            proto,
            "-url",
            &url,
            "-port",
            &port,
            "-msg",
            "ping",
        ];
        let out = run_client(&args, b"").await;
        assert_eq!(
            text(&out.stdout),
            "echo:ping",
            "{proto}: {}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{proto}");
    }

    // A port nobody listens on: the backend's failure reaches the client's error stream.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let url = server
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: "p1".into(),
        })
        .unwrap();
    let args = [
        "portforward",
        "-url",
        &url,
        "-port",
        &closed_port,
        "-msg",
        "ping",
    ];
    let out = run_client(&args, b"").await;
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("error forwarding port to pod p1"),
        "{}",
        text(&out.stderr)
    );
}

/// The raw HTTP status a SPDY upgrade request for `url` gets with the given subprotocol.
async fn upgrade_status(url: &str, protocol: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = conn.read(&mut buf).await.unwrap();
    text(&buf[..n]).lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_single_use_expiring_bounded_and_protocol_checked() {
    let (server, _) = server(Config {
        token_ttl: Duration::from_millis(300),
        max_in_flight: 3,
        ..Config::default()
    })
    .await;
    let url = server.get_exec(exec_req("c1", "true", false)).unwrap();
    assert!(upgrade_status(&url, "v4.channel.k8s.io")
        .await
        .contains("101"));
    assert!(upgrade_status(&url, "v4.channel.k8s.io")
        .await
        .contains("404"));

    let url = server.get_exec(exec_req("c1", "true", false)).unwrap();
    assert!(upgrade_status(&url, "v9.channel.k8s.io")
        .await
        .contains("403"));

    let url = server.get_exec(exec_req("c1", "true", false)).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let out = run_client(&["exec", "-proto", "spdy", "-stdin", "-url", &url], b"").await;
    assert_eq!(out.status.code(), Some(100), "{}", text(&out.stderr));
    assert!(upgrade_status(&url, "v4.channel.k8s.io")
        .await
        .contains("404"));

    let pf = || {
        server.get_port_forward(PortForwardRequest {
            pod_sandbox_id: "p".into(),
        })
    };
    let held: Vec<_> = (0..3).map(|_| pf().unwrap()).collect();
    assert!(matches!(pf(), Err(StreamError::ResourceExhausted)));
    assert_eq!(held.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_takes_its_process_with_it() {
    let (server, backend) = server(Config::default()).await;
    for proto in ["spdy", "websocket"] {
        let url = server
            .get_exec(exec_req("c1", "exec sleep 60", false))
            .unwrap();
        let mut child = tokio::process::Command::new(client())
            .args(["exec", "-proto", proto, "-stdin", "-url", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = loop {
            if let Some(pid) = backend.pids.lock().unwrap().pop() {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let process = Pidfd::open(pid);
        child.kill().await.unwrap();
        let exited = tokio::task::spawn_blocking(move || process.exits_within(10_000))
            .await
            .unwrap();
        assert!(exited, "{proto}: exec'd process {pid} outlived its client");
    }
}

/// One process, followed by a pidfd rather than its pid: this machine's pid_max is 32768 and the
/// suite starts tens of thousands of processes, so a pid read back from /proc may be another's.
struct Pidfd(Option<std::os::fd::OwnedFd>);

impl Pidfd {
    /// `None` inside when the process is already gone.
    fn open(pid: u32) -> Pidfd {
        use nix::libc;
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ESRCH),
                "pidfd_open({pid}): {e}"
            );
            return Pidfd(None);
        }
        // SAFETY: the descriptor was just made and is owned here alone.
        Pidfd(Some(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd as i32)
        }))
    }

    /// Whether the process ends within `ms` milliseconds (a zombie has ended).
    fn exits_within(&self, ms: u64) -> bool {
        use nix::libc;
        use std::os::fd::AsRawFd;
        let Some(fd) = &self.0 else {
            return true;
        };
        let deadline = std::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) };
            // A signal (this process's SIGCHLD handler) interrupts poll: wait on.
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return n == 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_spdy_subprotocols() {
    let (server, _) = server(Config::default()).await;
    for proto in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        // v1 clients never close stdin, so the command ends by itself after one line.
        let url = server.get_exec(exec_req("c1", "head -n1", false)).unwrap();
        let args = ["exec", "-protocols", proto, "-stdin", "-url", &url];
        let out = run_client(&args, b"old\n").await;
        assert_eq!(text(&out.stdout), "old\n", "{proto}: {}", text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{proto}: {}", text(&out.stderr));

        // Before v4 the error stream is plain text, so the client sees a message, not a code.
        let url = server.get_exec(exec_req("c1", "exit 3", false)).unwrap();
        let args = ["exec", "-protocols", proto, "-stdin", "-url", &url];
        let out = run_client(&args, b"").await;
        assert_eq!(out.status.code(), Some(100), "{proto}");
        assert!(
            text(&out.stderr).contains("non-zero exit code: 3"),
            "{proto}: {}",
            text(&out.stderr)
        );
    }
    // v3 added the resize stream.
    let url = server.get_exec(exec_req("c1", "stty size", true)).unwrap();
    let args = [
        "exec",
        "-protocols",
        "v3.channel.k8s.io",
        "-tty",
        "-stdin",
        "-resize",
        "90x30",
        "-url",
        &url,
    ];
    let out = run_client(&args, b"").await;
    assert!(text(&out.stdout).contains("30 90"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_bind_gives_urls_with_a_concrete_host() {
    let (server, _) = server(Config {
        address: "0.0.0.0:0".parse().unwrap(),
        ..Config::default()
    })
    .await;
    let url = server.get_exec(exec_req("c1", "echo here", false)).unwrap();
    assert!(!url.contains("0.0.0.0"), "{url}");
    // The URL is one a client can dial.
    let out = run_client(&["exec", "-stdin", "-url", &url], b"").await;
    assert_eq!(text(&out.stdout), "here\n", "{url}: {}", text(&out.stderr));
}
