//! critest's fixture registry (scripts/critest/fixtures.sh: Debian's docker-registry on a
//! loopback port, the images cached in $BERTH_CRITEST_CACHE), up for the life of the test
//! process, and a containerd `hosts.toml` dir that sends critest's registries to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

pub struct Fixtures {
    /// host:port of the registry.
    pub registry: String,
    pub cache: PathBuf,
    // The script waits on its stdin, which closes when the test process ends, and then stops
    // the registry.
    _script: Mutex<(Child, ChildStdin)>,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let script = repo_root().join("scripts/critest/fixtures.sh");
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(
                r#"set -e; source "$0"; trap fixtures_down EXIT; fixtures_up >&2
                echo "$CRITEST_REGISTRY $CRITEST_CACHE"; read -r _ || true"#,
            )
            .arg(&script)
            .current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run scripts/critest/fixtures.sh");
        let stdin = child.stdin.take().expect("fixture stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("fixture stdout"))
            .read_line(&mut line)
            .expect("read the fixture registry's address");
        let (registry, cache) = line
            .trim()
            .split_once(' ')
            .unwrap_or_else(|| panic!("fixtures.sh did not come up (said {line:?})"));
        Fixtures {
            registry: registry.to_string(),
            cache: PathBuf::from(cache),
            _script: Mutex::new((child, stdin)),
        }
    })
}

/// A `hosts.toml` tree under `dir` (a daemon's `[cri] registry_config_path`) sending
/// registry.k8s.io, gcr.io and k8s.gcr.io to the fixture registry over plain HTTP.
pub fn certs_d(dir: &Path) -> PathBuf {
    let f = fixtures();
    let certs = dir.join("certs.d");
    for host in ["registry.k8s.io", "gcr.io", "k8s.gcr.io"] {
        std::fs::create_dir_all(certs.join(host)).expect("certs.d");
        std::fs::write(
            certs.join(host).join("hosts.toml"),
            format!(
                "server = \"https://{host}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                f.registry
            ),
        )
        .expect("write hosts.toml");
    }
    certs
}
