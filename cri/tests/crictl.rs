//! berthd's CRI socket driven by the real crictl (cri-tools v1.37.0, built by
//! scripts/deps-cri-tools.sh into $BERTH_TEST_BIN): served by default on its own 0660 socket,
//! Version and Status as the kubelet reads them (NetworkReady only once a CNI config exists),
//! off when `[cri] enabled = false`. Needs root and berthd built in this target dir.

use berth_testkit::berthd::Daemon;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn crictl(socket: &Path, args: &[&str]) -> std::process::Output {
    berth_testkit::crictl::run(socket, "20s", args)
}

fn crictl_ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = crictl(&daemon.cri_socket(), args);
    assert!(
        out.status.success(),
        "crictl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The CRI socket appears shortly after the API socket (it dials berthd first).
fn wait_for_socket(daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.cri_socket().exists() {
        assert!(
            Instant::now() < deadline,
            "no CRI socket at {}",
            daemon.cri_socket().display(),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn condition(info: &serde_json::Value, kind: &str) -> bool {
    info["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {info}"))["status"]
        .as_bool()
        .expect("a boolean status")
}

#[test]
fn crictl_version_and_status() {
    let daemon = Daemon::start();
    wait_for_socket(&daemon);
    let mode = std::fs::metadata(daemon.cri_socket())
        .expect("stat the CRI socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "CRI socket mode {mode:o}");

    let version = crictl_ok(&daemon, &["version"]);
    assert!(version.contains("RuntimeName:  berth"), "{version}");
    assert!(version.contains("RuntimeApiVersion:  v1"), "{version}");

    let info: serde_json::Value =
        serde_json::from_str(&crictl_ok(&daemon, &["info", "-o", "json"])).expect("info JSON");
    assert!(condition(&info, "RuntimeReady"), "{info}");
    assert!(
        !condition(&info, "NetworkReady"),
        "no CNI config yet: {info}"
    );

    // A bridge conflist in the pods' config dir makes the network ready.
    let conf_dir = daemon.cri_socket().with_file_name("cri-net.d");
    std::fs::create_dir_all(&conf_dir).expect("create the CNI conf dir");
    std::fs::write(
        conf_dir.join("10-pods.conflist"),
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
            {"type":"bridge","bridge":"berthcri0","isGateway":true,"ipMasq":false,
             "ipam":{"type":"host-local","ranges":[[{"subnet":"10.233.7.0/24"}]]}},
            {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
    )
    .expect("write the conflist");
    let info: serde_json::Value =
        serde_json::from_str(&crictl_ok(&daemon, &["info", "-o", "json"])).expect("info JSON");
    assert!(condition(&info, "NetworkReady"), "{info}");

    // What is not served yet says so rather than pretending.
    let out = crictl(&daemon.cri_socket(), &["exec", "-s", "nope", "true"]);
    assert!(!out.status.success());
}

#[test]
fn cri_can_be_switched_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("cri.sock");
    let daemon =
        Daemon::start_with_config(&format!("[cri]\nenabled = false\naddress = {:?}\n", socket));
    // The API answers, so the daemon is up; a CRI it would serve would be bound by now.
    daemon.ctr("default", &["version"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !socket.exists(),
        "a disabled CRI bound {}",
        socket.display()
    );
}
