//! A default network of its own for every test daemon. berthd's default network (`bridge`) is
//! one host bridge on one subnet (`[cni] default_bridge`, `default_subnet`); test daemons running
//! at once on one host (several test binaries, CI beside a developer) would all put their
//! containers on `berth0` and hand out the same addresses from their separate IP lease dirs. So
//! each daemon the harness starts gets a /24 of 10.199.0.0/16 and a bridge named after it,
//! reserved across processes by an exclusive lock on a file per /24 held while the daemon lives,
//! and its bridge and the host rules for it are removed when the daemon goes.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};

/// Where the per-/24 lock files live: host-wide, like the bridges they stand for.
const LOCK_DIR: &str = "/run/berth-testkit/default-networks";

/// A test daemon's default network: its bridge and subnet, reserved until dropped.
#[derive(Debug)]
pub struct TestNetwork {
    /// The Linux bridge (`btk<N>`).
    pub bridge: String,
    /// `10.199.<N>.0/24`.
    pub subnet: String,
    /// `10.199.<N>.`, for checking that an address is in the subnet.
    pub prefix: String,
    _lock: Flock<File>,
}

impl TestNetwork {
    /// The first free /24 from a start that differs between processes and between calls; a
    /// /24 some route already covers (a bridge an earlier crashed run left) is skipped.
    pub fn reserve() -> TestNetwork {
        use std::sync::atomic::{AtomicU32, Ordering};
        static CALLS: AtomicU32 = AtomicU32::new(0);
        std::fs::create_dir_all(LOCK_DIR).unwrap_or_else(|e| panic!("create {LOCK_DIR}: {e}"));
        let start = std::process::id().wrapping_mul(31) + CALLS.fetch_add(1, Ordering::Relaxed);
        for i in 0..254 {
            let n = (start + i) % 254 + 1;
            let path = Path::new(LOCK_DIR).join(format!("10.199.{n}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let prefix = format!("10.199.{n}.");
            if routes().contains(&prefix) {
                continue;
            }
            return TestNetwork {
                bridge: format!("btk{n}"),
                subnet: format!("{prefix}0/24"),
                prefix,
                _lock: lock,
            };
        }
        panic!("no free 10.199.N.0/24 for a test daemon's default network ({LOCK_DIR})");
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        remove_bridge(&self.bridge);
    }
}

/// Every IPv4 route of the host, as `ip route` prints them.
fn routes() -> String {
    Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes `bridge` and the host rules naming it (berth's per-network rules, and the firewall
/// plugin's isolation rules of older configs); what is absent is skipped.
pub fn remove_bridge(bridge: &str) {
    if Path::new("/sys/class/net").join(bridge).exists() {
        let _ = Command::new("ip")
            .args(["link", "delete", "dev", bridge])
            .output();
    }
    let _ = berth_net::host_rules::remove(bridge);
}

/// `toml` with the `[cni]` keys that give a daemon its own network config dir and, unless the
/// test chose them, its own default network: the keys a test set are kept, the missing ones added
/// under its `[cni]` table (or a new one). Returns the network reserved, if one was.
pub fn with_cni_defaults(toml: &str, conf_dir: &Path) -> (String, Option<TestNetwork>) {
    let has = |key: &str| {
        toml.lines()
            .any(|l| l.trim_start().starts_with(key) && l.contains('='))
    };
    let network = (!has("default_bridge") && !has("default_subnet")).then(TestNetwork::reserve);
    let mut keys = String::new();
    if !has("conf_dir") {
        keys.push_str(&format!("conf_dir = {:?}\n", conf_dir.to_string_lossy()));
    }
    if let Some(n) = &network {
        keys.push_str(&format!(
            "default_bridge = {:?}\ndefault_subnet = {:?}\n",
            n.bridge, n.subnet
        ));
    }
    let out = match toml.lines().position(|l| l.trim() == "[cni]") {
        _ if keys.is_empty() => toml.to_string(),
        Some(at) => {
            let mut lines: Vec<&str> = toml.lines().collect();
            lines.insert(at + 1, keys.trim_end());
            lines.join("\n") + "\n"
        }
        None => format!("{toml}\n[cni]\n{keys}"),
    };
    (out, network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_keys_go_under_the_tests_own_table() {
        let conf = Path::new("/tmp/x/net.d");
        let (toml, network) = with_cni_defaults(
            "[tasks]\nrestart_interval_ms = 100\n[cni]\nplugin_timeout_ms = 5000\n",
            conf,
        );
        let network = network.expect("a network reserved");
        assert_eq!(toml.matches("[cni]").count(), 1, "{toml}");
        assert!(
            toml.contains("[cni]\nconf_dir = \"/tmp/x/net.d\"\n"),
            "{toml}"
        );
        assert!(toml.contains(&format!("default_subnet = \"{}\"", network.subnet)));
        assert!(toml.ends_with("plugin_timeout_ms = 5000\n"), "{toml}");
        let chosen =
            "[cni]\nconf_dir = \"/a\"\ndefault_bridge = \"b0\"\ndefault_subnet = \"10.1.0.0/24\"\n";
        let (same, none) = with_cni_defaults(chosen, conf);
        assert!(none.is_none());
        assert_eq!(same.trim_end(), chosen.trim_end());
    }
}
