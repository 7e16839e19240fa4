//! Running CNI plugins as the CNI spec (1.0) says: the command and the container's identity in
//! the environment, the network configuration on stdin, a result or an error object on stdout.
//! Every run is bounded; on timeout the plugin's whole process group is killed. The plugin's
//! stderr is kept for the error message, since Debian's plugins explain failures there too.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};

/// The CNI operations berth uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// Who a plugin runs for: CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_ARGS.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `K=V` pairs joined with `;` into CNI_ARGS (the CRI passes K8S_POD_NAME and friends).
    pub args: &'a [(String, String)],
}

/// Where plugins are found and how long one may run.
#[derive(Debug, Clone)]
pub struct Plugins {
    dirs: Vec<PathBuf>,
    timeout: Duration,
}

/// The PATH plugins get (they run iptables, ip, sysctl helpers) when berthd's own has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Plugins {
    pub fn new(dirs: Vec<PathBuf>, timeout: Duration) -> Self {
        Plugins { dirs, timeout }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The executable for plugin `kind` (a config's `type`), first match in the bin dirs.
    pub fn find(&self, kind: &str) -> Result<PathBuf> {
        if kind.is_empty() || kind.contains('/') || kind == "." || kind == ".." {
            return Err(Error::invalid(format!("invalid CNI plugin type {kind:?}")));
        }
        self.dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::PluginNotFound {
                plugin: kind.to_string(),
                dirs: self.cni_path(),
            })
    }

    fn cni_path(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        dirs.join(":")
    }

    /// Runs `command` of the plugin named by `config["type"]` with `config` on stdin. Returns
    /// the parsed stdout (ADD's result, VERSION's answer), `None` when the plugin printed nothing.
    pub fn exec(
        &self,
        command: Command,
        inv: &Invocation<'_>,
        network: &str,
        config: &Value,
    ) -> Result<Option<Value>> {
        let kind = config
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Config {
                path: network.to_string(),
                message: "a plugin without \"type\"".into(),
            })?;
        let binary = self.find(kind)?;
        let stdin = serde_json::to_vec(config).map_err(|e| Error::Config {
            path: network.to_string(),
            message: e.to_string(),
        })?;
        let args: Vec<String> = inv.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut process = Process::new(&binary);
        process
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            )
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", inv.netns)
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout kills whatever it started too (iptables, ip).
            .process_group(0);
        let failed = |message: String| Error::Plugin {
            plugin: kind.to_string(),
            command: command.as_str().to_string(),
            network: network.to_string(),
            message,
        };
        let mut child = process
            .spawn()
            .map_err(|e| failed(format!("cannot start {}: {e}", binary.display())))?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        // Feeding stdin happens under the timeout too: a plugin that never reads could block it.
        std::thread::spawn(move || {
            if let Some(mut input) = child.stdin.take() {
                // A plugin that exits without reading its config is judged by its exit status.
                let _ = input.write_all(&stdin);
            }
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(self.timeout) {
            Ok(out) => out.map_err(|e| failed(format!("waiting for it: {e}")))?,
            Err(_) => {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                // Reap it; the group is dead, so its pipes close at once.
                let _ = rx.recv_timeout(Duration::from_secs(5));
                return Err(Error::PluginTimeout {
                    plugin: kind.to_string(),
                    command: command.as_str().to_string(),
                    network: network.to_string(),
                    after: self.timeout,
                });
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(failed(error_message(&stdout, &stderr, output.status)));
        }
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&stdout)
            .map(Some)
            .map_err(|e| Error::Result {
                plugin: kind.to_string(),
                message: format!("not JSON ({e}): {}", stdout.trim()),
            })
    }

    /// The spec versions plugin `kind` supports (its VERSION answer).
    pub fn versions(&self, kind: &str) -> Result<Vec<String>> {
        let config = serde_json::json!({"cniVersion": crate::CNI_VERSION, "type": kind});
        let inv = Invocation {
            container_id: "",
            netns: Path::new(""),
            ifname: "",
            args: &[],
        };
        let answer = self.exec(Command::Version, &inv, "", &config)?;
        let versions = answer
            .as_ref()
            .and_then(|a| a.get("supportedVersions"))
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Result {
                plugin: kind.to_string(),
                message: "VERSION answer without supportedVersions".into(),
            })?;
        Ok(versions
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }
}

/// CNI's error object (`code`, `msg`, `details`) when the plugin printed one, and its stderr.
fn error_message(stdout: &str, stderr: &str, status: std::process::ExitStatus) -> String {
    let mut parts = Vec::new();
    match serde_json::from_str::<Value>(stdout) {
        Ok(v) => {
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or("");
            let details = v.get("details").and_then(Value::as_str).unwrap_or("");
            let code = v.get("code").and_then(Value::as_u64);
            let mut s = msg.to_string();
            if !details.is_empty() {
                s = format!("{s}: {details}");
            }
            if let Some(code) = code {
                s = format!("{s} (CNI error code {code})");
            }
            parts.push(s);
        }
        Err(_) if !stdout.trim().is_empty() => parts.push(stdout.trim().to_string()),
        Err(_) => {}
    }
    if !stderr.trim().is_empty() {
        parts.push(format!("stderr: {}", stderr.trim()));
    }
    if parts.is_empty() {
        parts.push(format!("exited with {status}"));
    }
    parts.join("; ")
}
