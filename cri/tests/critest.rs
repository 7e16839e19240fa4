//! critest v1.37.0, the whole suite, against a berthd of this build: scripts/critest.sh with its
//! fixtures (critest's images in a loopback registry, hosts.toml mirrors) and a CNI network of
//! this test's own. The test passes only when critest reports no failed spec; critest's totals
//! go to stderr as `critest totals: …` (scripts/test.sh puts them in its closing line).
//!
//! Needs root, critest (scripts/deps-cri-tools.sh), Debian's docker-registry and skopeo and the
//! CNI plugins (scripts/deps.sh): missing, the case is skipped on a developer's machine and fails
//! under CI=true. The fixtures' cache is this target dir's own (`target/tmp/critest-cache`), so
//! two worktrees never rewrite each other's mirrors. `BERTH_CRITEST_ARGS` (whitespace-separated)
//! goes to critest, e.g. `-ginkgo.focus=UserNamespaces` while developing.

use berth_testkit::berthd::{tail, Daemon};
use berth_testkit::skip::skip_unless_ci;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BRIDGE: &str = "bcritest0";
const SUBNET: &str = "10.233.60.0/24";
/// critest's own bound is an hour; a hung spec must fail this test well before CI's budget.
const TIMEOUT_SECS: &str = "1500";

fn tool_missing() -> Option<String> {
    let bin = std::env::var_os("BERTH_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/berth-test/bin"));
    let cni = ["/opt/cni/bin", "/usr/lib/cni"];
    let checks: [(&str, bool); 6] = [
        ("root", nix::unistd::geteuid().is_root()),
        ("critest", bin.join("critest").is_file()),
        ("crictl", bin.join("crictl").is_file()),
        ("docker-registry", on_path("docker-registry")),
        ("skopeo", on_path("skopeo")),
        (
            "the CNI bridge plugin",
            cni.iter().any(|d| Path::new(d).join("bridge").is_file()),
        ),
    ];
    checks
        .iter()
        .find(|(_, ok)| !ok)
        .map(|(what, _)| what.to_string())
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// Written to the process's stderr, not through the test harness's capture: CI's log shows it
/// whether the test passes or not.
fn report(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

#[test]
fn critest_whole_suite_passes() {
    if let Some(what) = tool_missing() {
        skip_unless_ci(
            "critest::critest_whole_suite_passes",
            &format!("{what} is missing (scripts/deps.sh provides it)"),
        );
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("critest-cache");
    let dir = tempfile::Builder::new()
        .prefix("berth-critest-")
        .tempdir()
        .expect("temp dir");
    let socket = dir.path().join("cri.sock");
    let net_d = dir.path().join("net.d");
    std::fs::create_dir_all(&net_d).expect("create the CNI conf dir");
    std::fs::write(
        net_d.join("10-critest.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"critest","plugins":[
            {{"type":"bridge","bridge":"{BRIDGE}","isGateway":true,"ipMasq":false,
             "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{SUBNET}"}}]]}}}},
            {{"type":"portmap","capabilities":{{"portMappings":true}}}},
            {{"type":"loopback"}}]}}"#
        ),
    )
    .expect("write the conflist");
    // Held to the end: its drop stops it, and prints its log when the run failed.
    let _daemon = Daemon::start_with_config(&format!(
        "[cri]\naddress = {:?}\ncni_conf_dir = {:?}\nregistry_config_path = {:?}\n",
        socket,
        net_d,
        cache.join("certs.d"),
    ));
    let _cleanup = Cleanup {
        socket: socket.clone(),
    };
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed().as_secs() < 20, "no CRI socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let output_path = dir.path().join("critest.out");
    let output = std::fs::File::create(&output_path).expect("create the output file");
    let mut script = Command::new("timeout");
    script
        .args(["--kill-after=30", TIMEOUT_SECS, "bash"])
        .arg(repo.join("scripts/critest.sh"))
        .arg(format!("unix://{}", socket.display()))
        // A developer's focus, e.g. BERTH_CRITEST_ARGS=-ginkgo.focus=UserNamespaces (CI sets
        // none: the whole suite runs).
        .args(
            std::env::var("BERTH_CRITEST_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("BERTH_CRITEST_CACHE", &cache)
        .current_dir(&repo);
    // The workspace build (scripts/test.sh) made critest-images beside berthd: the fixtures use
    // it rather than build it alone, which would rebuild its dependencies with other features.
    let images = berth_testkit::berthd::berthd_binary().with_file_name("critest-images");
    if images.is_file() {
        script.env("BERTH_CRITEST_IMAGES_BIN", &images);
    }
    let status = script
        .stdout(output.try_clone().expect("dup the output file"))
        .stderr(output)
        .status()
        .expect("run scripts/critest.sh");
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(&output_path).unwrap_or_default();
    // critest.sh's closing part: "Ran N of M Specs", the totals, the skipped and failed cases.
    let summary = text
        .rfind("\ncritest against ")
        .map_or_else(|| tail(&text, 60), |i| text[i + 1..].to_string());
    let totals = summary
        .lines()
        .find(|l| l.starts_with("passed "))
        .unwrap_or("no totals (critest did not finish)")
        .to_string();
    report(&format!(
        "{summary}\ncritest totals: {totals} in {}s\n",
        elapsed.as_secs()
    ));
    assert!(
        status.success(),
        "critest failed ({status}): {totals}\n{}",
        tail(&text, 200),
    );
}

/// Pods critest left behind (a failed spec skips its own cleanup) are removed through the CRI
/// while berthd still runs, so their netns, iptables rules and mounts go with them; then the
/// bridge the CNI plugin made.
struct Cleanup {
    socket: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = berth_testkit::crictl::run(&self.socket, "60s", &["rmp", "--all", "--force"]);
        if !out.status.success() {
            eprintln!(
                "crictl rmp --all --force: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = Command::new("ip")
            .args(["link", "del", BRIDGE])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
