//! A `docker-registry` (Debian's distribution 2.8) on a free loopback port, for the tests that
//! push and pull.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry` on a free loopback port with a throwaway storage directory.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with("")
    }

    /// `auth` is the YAML of the config's `auth:` section, or empty.
    pub fn start_with(auth: &str) -> Registry {
        for attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("berth-registry-")
                .tempdir()
                .expect("registry dir");
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let token = format!("{}-{attempt}-{port}", std::process::id());
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n{auth}\
                     http:\n  addr: 127.0.0.1:{port}\n  headers:\n    X-Berth-Registry: [\"{token}\"]\n",
                    dir.path().join("storage").display()
                ),
            )
            .expect("write registry config");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn docker-registry (apt-get install docker-registry)");
            let mut r = Registry {
                child,
                port,
                _dir: dir,
            };
            if r.wait_ready(&token) {
                return r;
            }
        }
        panic!("docker-registry did not start on a free port after 5 attempts");
    }

    /// Only a registry answering with our token counts: another process may have the port.
    fn wait_ready(&mut self, token: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                let status = resp.get(9..12).unwrap_or("");
                if status == "200" || status == "401" {
                    return resp.contains(token);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}
