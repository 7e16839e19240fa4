//! The CNI invocation contract, seen from the plugin's side: small plugins written here as shell
//! scripts record what they were given (environment, stdin) and answer as the test needs — a
//! result, CNI's error object with stderr, or nothing within the timeout. Debian's own plugins
//! answer VERSION. No root needed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_net::plugin::{Command, Invocation, Plugins};
use serde_json::json;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    berth_testkit::write_executable(&path, &format!("#!/bin/sh\n{body}\n"));
    path
}

fn invocation<'a>(args: &'a [(String, String)]) -> Invocation<'a> {
    Invocation {
        container_id: "abc123",
        netns: Path::new("/run/netns/x"),
        ifname: "eth0",
        args,
    }
}

#[test]
fn a_plugin_gets_the_cni_environment_and_its_config_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen");
    script(
        dir.path(),
        "recorder",
        &format!(
            "env | grep ^CNI_ | sort > {out}.env\ncat > {out}.stdin\n\
             echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.2/24\"}}]}}'",
            out = out.display()
        ),
    );
    let plugins = Plugins::new(
        vec![dir.path().join("missing"), dir.path().to_path_buf()],
        Duration::from_secs(10),
    );
    let args = vec![("K8S_POD_NAME".to_string(), "p".to_string())];
    let config = json!({"cniVersion": "1.0.0", "name": "n", "type": "recorder", "x": 1});
    let answer = plugins
        .exec(Command::Add, &invocation(&args), "n", &config)
        .unwrap()
        .unwrap();
    assert_eq!(answer["ips"][0]["address"], "10.9.0.2/24");
    let env = std::fs::read_to_string(format!("{}.env", out.display())).unwrap();
    let cni_path = format!(
        "CNI_PATH={}:{}",
        dir.path().join("missing").display(),
        dir.path().display()
    );
    for want in [
        "CNI_ARGS=K8S_POD_NAME=p",
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=abc123",
        "CNI_IFNAME=eth0",
        "CNI_NETNS=/run/netns/x",
        cni_path.as_str(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    let stdin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.stdin", out.display())).unwrap())
            .unwrap();
    assert_eq!(stdin, config);
}

#[test]
fn a_failing_plugin_is_reported_with_its_error_object_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "failer",
        "echo 'ip range exhausted' >&2\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"no addresses\",\"details\":\"range 10.9.0.0/30\"}'\n\
         exit 1",
    );
    let plugins = Plugins::new(vec![dir.path().to_path_buf()], Duration::from_secs(10));
    let config = json!({"cniVersion": "1.0.0", "name": "n", "type": "failer"});
    let err = plugins
        .exec(Command::Add, &invocation(&[]), "n", &config)
        .unwrap_err()
        .to_string();
    for part in [
        "failer",
        "ADD",
        "no addresses",
        "range 10.9.0.0/30",
        "code 11",
        "ip range exhausted",
    ] {
        assert!(err.contains(part), "{part} not in {err}");
    }
    let missing = json!({"cniVersion": "1.0.0", "name": "n", "type": "nope"});
    let err = plugins
        .exec(Command::Add, &invocation(&[]), "n", &missing)
        .unwrap_err();
    assert!(
        matches!(err, berth_net::Error::PluginNotFound { .. }),
        "{err}"
    );
    let escaping = json!({"cniVersion": "1.0.0", "name": "n", "type": "../failer"});
    let err = plugins
        .exec(Command::Add, &invocation(&[]), "n", &escaping)
        .unwrap_err();
    assert!(matches!(err, berth_net::Error::InvalidArgument(_)), "{err}");
}

#[test]
fn a_hung_plugin_is_killed_with_its_children_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    // The plugin starts a child that would hold stdout open, then hangs.
    script(
        dir.path(),
        "hang",
        &format!("sleep 300 &\necho $! > {}\nsleep 300", pidfile.display()),
    );
    let plugins = Plugins::new(vec![dir.path().to_path_buf()], Duration::from_millis(500));
    let config = json!({"cniVersion": "1.0.0", "name": "n", "type": "hang"});
    let started = Instant::now();
    let err = plugins
        .exec(Command::Del, &invocation(&[]), "n", &config)
        .unwrap_err();
    assert!(
        matches!(err, berth_net::Error::PluginTimeout { .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Killed with the group: soon gone, or a zombie until init reaps it.
    let dead = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        matches!(state, None | Some("Z") | Some("X"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dead(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        dead(child),
        "the plugin's child {child} survived the timeout"
    );
}

#[test]
fn debian_plugins_answer_version() {
    let plugins = Plugins::new(
        berth_net::NetConfig::default_bin_dirs(),
        Duration::from_secs(10),
    );
    if plugins.find("bridge").is_err() {
        berth_testkit::skip::skip_unless_ci(
            "debian_plugins_answer_version",
            "CNI plugins missing (scripts/deps-cni.sh installs them)",
        );
        return;
    }
    for kind in [
        "bridge",
        "host-local",
        "portmap",
        "firewall",
        "tuning",
        "loopback",
    ] {
        let versions = plugins.versions(kind).unwrap();
        assert!(
            versions.iter().any(|v| v == berth_net::CNI_VERSION),
            "{kind}: {versions:?}"
        );
    }
}
