//! Test harness: a busybox bundle per test, a shim started the way berthd will start it, and
//! a cleanup that leaves no container, mount, cgroup or process behind.
#![allow(dead_code)]

use berth_shim::client::{CallError, Client};
use berth_shim::protocol::*;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const SHIM: &str = env!("CARGO_BIN_EXE_berth-shim");
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests run real containers with runc and need root"
    );
}

pub struct Bundle {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub runc_root: tempfile::TempDir,
    pub sock: PathBuf,
    pub shim_pid: u32,
    /// Appended to the shim's arguments by [`Bundle::shim_args`].
    pub extra_shim_args: Vec<String>,
}

/// The OCI spec `runc spec` generates, for busybox, with a /tmp tmpfs.
pub fn spec(id: &str, args: &[&str], terminal: bool) -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "cgroupsPath": format!("/{id}"),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list",
                            "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    })
}

/// The OCI process object for an exec.
pub fn exec_spec(args: &[&str], terminal: bool) -> serde_json::Value {
    json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/"
    })
}

impl Bundle {
    /// A bundle whose init runs `args`, and a shim serving it.
    pub fn new(name: &str, args: &[&str], terminal: bool) -> Bundle {
        let b = Bundle::prepare(name, args, terminal);
        b.start_shim_with(&[SHIM])
    }

    pub fn prepare(name: &str, args: &[&str], terminal: bool) -> Bundle {
        require_root();
        let id = format!("bst-{name}-{}", std::process::id());
        let dir = tempfile::Builder::new().prefix("bshim").tempdir().unwrap();
        let runc_root = tempfile::Builder::new()
            .prefix("bshim-runc")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "sleep", "true", "false", "ls", "stty", "tty", "usleep", "exit",
        ] {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        fs::create_dir(dir.path().join("fifos")).unwrap();
        let cfg = spec(&id, args, terminal);
        fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let sock = dir.path().join("shim.sock");
        Bundle {
            id,
            dir,
            runc_root,
            sock,
            shim_pid: 0,
            extra_shim_args: Vec::new(),
        }
    }

    /// Start the shim through `launcher` (argv prefix; the shim's own args are appended).
    pub fn start_shim_with(mut self, launcher: &[&str]) -> Bundle {
        let out = Command::new(launcher[0])
            .args(&launcher[1..])
            .args(self.shim_args())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "berth-shim start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(printed.trim(), self.sock.to_str().unwrap());
        let pid = fs::read_to_string(self.bundle().join("shim.pid")).unwrap();
        self.shim_pid = pid.trim().parse().unwrap();
        self
    }

    pub fn shim_args(&self) -> Vec<String> {
        vec![
            "start".into(),
            "--namespace".into(),
            "test".into(),
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            self.bundle().display().to_string(),
            "--runtime-binary".into(),
            "runc".into(),
            "--runtime-root".into(),
            self.runc_root.path().display().to_string(),
            "--log".into(),
            self.bundle().join("shim.log").display().to_string(),
        ]
        .into_iter()
        .chain(self.extra_shim_args.iter().cloned())
        .collect()
    }

    pub fn bundle(&self) -> &Path {
        self.dir.path()
    }

    pub fn client(&self) -> Client {
        let c = Client::connect(&self.sock).expect("connect to shim");
        c.set_timeout(Some(TIMEOUT)).unwrap();
        c
    }

    /// One request on a fresh connection.
    pub fn call<T: DeserializeOwned>(&self, req: Request) -> Result<T, CallError> {
        self.client().call(&req)
    }

    pub fn fifo(&self, name: &str) -> PathBuf {
        let p = self.bundle().join("fifos").join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o700)).unwrap();
        p
    }

    pub fn create(&self, stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> u32 {
        let r: PidReply = self
            .call(Request::Create(CreateRequest {
                stdin: stdin.into(),
                stdout: stdout.into(),
                stderr: stderr.into(),
                terminal,
                start: false,
            }))
            .expect("create");
        r.pid
    }

    pub fn start(&self, exec_id: &str) -> u32 {
        let r: PidReply = self
            .call(Request::Start {
                exec_id: exec_id.into(),
            })
            .expect("start");
        r.pid
    }

    pub fn state(&self, exec_id: &str) -> Result<ProcessState, CallError> {
        self.call(Request::State {
            exec_id: exec_id.into(),
        })
    }

    /// Send `wait` now on its own connection; the reply arrives on the receiver.
    pub fn wait_async(&self, exec_id: &str) -> mpsc::Receiver<Result<ExitReply, String>> {
        let mut c = self.client();
        let req = Request::Wait {
            exec_id: exec_id.into(),
        };
        // Send synchronously so the wait is on its way before the caller goes on (ctr sends
        // Wait before Start); only the reply is read in the background.
        c.send(&req).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(c.recv().map_err(|e| e.to_string()));
        });
        rx
    }

    pub fn wait(&self, exec_id: &str) -> ExitReply {
        self.call(Request::Wait {
            exec_id: exec_id.into(),
        })
        .expect("wait")
    }

    pub fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<Empty, CallError> {
        self.call(Request::Kill {
            exec_id: exec_id.into(),
            signal,
            all,
        })
    }

    pub fn delete(&self, exec_id: &str, force: bool) -> Result<ExitReply, CallError> {
        self.call(Request::Delete {
            exec_id: exec_id.into(),
            force,
        })
    }

    /// Delete the container, shut the shim down and check nothing is left.
    pub fn finish(self) {
        self.delete("", true).expect("delete");
        let _: Empty = self.call(Request::Shutdown).expect("shutdown");
        self.assert_clean();
    }

    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(self.shim_pid) {
            assert!(
                Instant::now() < deadline,
                "shim {} still running",
                self.shim_pid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!self.sock.exists(), "control socket left behind");
        assert!(
            !self.runc_root.path().join(&self.id).exists(),
            "runc state left behind"
        );
        let bundle = self.bundle().display().to_string();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&bundle),
            "mount left behind under {bundle}"
        );
        for ctl in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let cg = ctl.path().join(&self.id);
            assert!(!cg.exists(), "cgroup {} left behind", cg.display());
        }
        let rootfs = self.bundle().join("rootfs");
        for p in fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(root) = fs::read_link(p.path().join("root")) {
                assert!(
                    !root.starts_with(&rootfs) || !process_alive_path(&p.path()),
                    "process {} still runs in the container",
                    p.path().display()
                );
            }
        }
    }
}

impl Drop for Bundle {
    /// Best effort, for failed tests: nothing may outlive the test.
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.sock) {
            let _ = c.set_timeout(Some(Duration::from_secs(5)));
            let _ = c.call::<Empty>(&Request::Kill {
                exec_id: String::new(),
                signal: 9,
                all: true,
            });
            let _ = c.call::<ExitReply>(&Request::Delete {
                exec_id: String::new(),
                force: true,
            });
            let _ = c.call::<Empty>(&Request::Shutdown);
        }
        let _ = Command::new("runc")
            .arg("--root")
            .arg(self.runc_root.path())
            .args(["delete", "--force", &self.id])
            .output();
        if self.shim_pid != 0 && process_alive(self.shim_pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.shim_pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Alive and not a zombie (the test's pid 1 may be slow to reap the shims it inherits).
pub fn process_alive(pid: u32) -> bool {
    process_alive_path(Path::new(&format!("/proc/{pid}")))
}

fn process_alive_path(p: &Path) -> bool {
    match fs::read_to_string(p.join("stat")) {
        Ok(s) => {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Field 4 (ppid) and 6 (session) of /proc/PID/stat.
pub fn ppid_and_sid(pid: u32) -> (u32, u32) {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[1].parse().unwrap(), f[3].parse().unwrap())
}

/// Read a FIFO to EOF in the background, as ctr does (a blocking open in its own thread).
pub fn read_fifo(path: &Path) -> mpsc::Receiver<Vec<u8>> {
    let path = path.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut f = fs::File::open(&path).unwrap();
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

pub fn recv<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub fn shim_error(r: Result<impl std::fmt::Debug, CallError>) -> ShimError {
    match r {
        Err(CallError::Shim(e)) => e,
        other => panic!("expected a shim error, got {other:?}"),
    }
}

/// Poll until `f` is true.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
