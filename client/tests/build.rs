//! `berth build`'s executor against a real berthd (berth-testkit's harness) with berth-testkit's
//! busybox image: a multi-stage build whose "compile" stage runs a shell generator in a
//! container (the image has no compiler; the stage does the same job: makes an executable the
//! next stage copies), build args, USER and WORKDIR in RUN and in the final config, and a
//! failing RUN. The built image is then run by the `berth` CLI. Needs root, and berthd and
//! berth-shim built in this target dir.

use berth::build::{build, BuildOptions};
use berth::Client;
use berth_testkit::berthd::{process_token, tail, Daemon};
use berth_testkit::image::{busybox_oci_archive_with_etc, EtcFiles, DEFAULT_APPLETS};
use std::process::{Command, Stdio};

const BASE: &str = "docker.io/berth/busybox:build";
const ETC: EtcFiles = EtcFiles {
    passwd: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    group: "root:x:0:\napp:x:1000:\n",
};

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=docker.io/berth/busybox:build
FROM $BASE AS compile
ARG GREETING=berth
WORKDIR /src
COPY gen.sh ./
RUN sh gen.sh "$GREETING"

FROM $BASE
COPY --from=compile /src/hello /usr/local/bin/hello
RUN mkdir -p /home/app && chown app:app /home/app
USER app
WORKDIR /home/app
RUN id -u > uid && pwd > where
CMD ["/usr/local/bin/hello"]
"#;

const GEN: &str =
    "echo '#!/bin/sh' > hello\necho \"echo hello from $1\" >> hello\nchmod 755 hello\n";

struct Env {
    daemon: Daemon,
    ns: String,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(case: &str) -> Env {
        let daemon = Daemon::start();
        let dir = tempfile::Builder::new()
            .prefix("berth-build-")
            .tempdir()
            .unwrap();
        let applets: Vec<&str> = DEFAULT_APPLETS
            .iter()
            .copied()
            .chain(["id", "pwd", "mkdir", "chown", "chmod", "ls"])
            .collect();
        let archive = busybox_oci_archive_with_etc(dir.path(), BASE, &applets, ETC).unwrap();
        let ns = format!("build-{case}-{}", process_token());
        daemon.ctr(&ns, &["images", "import", &archive.path.to_string_lossy()]);
        Env { daemon, ns, dir }
    }

    async fn client(&self) -> Client {
        Client::from_channel(self.daemon.channel().await, &self.ns)
    }

    fn context(&self, dockerfile: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let ctx = self.dir.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        for (name, text) in files {
            std::fs::write(ctx.join(name), text).unwrap();
        }
        ctx
    }

    fn berth(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("-H")
            .arg(format!("unix://{}", self.daemon.socket.display()))
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "berth {args:?}: {:?}\n{}\n{}\nberthd:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.daemon.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_stage_build_runs() {
    berth_testkit::berthd::require_root();
    let env = Env::new("multi");
    let ctx = env.context(DOCKERFILE, &[("gen.sh", GEN)]);
    let client = env.client().await;
    let mut progress = Vec::new();
    let opts = BuildOptions {
        context: ctx.clone(),
        tags: vec!["app:v1".into()],
        ..BuildOptions::default()
    };
    let outcome = build(&client, &opts, &mut progress)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "build: {e}\n{}\nberthd:\n{}",
                String::from_utf8_lossy(&progress),
                tail(&env.daemon.log(), 30)
            )
        });
    assert_eq!(outcome.names, ["docker.io/library/app:v1"]);
    assert_eq!(outcome.containers_run, 3);
    assert_eq!(env.berth(&["run", "--rm", "app:v1"]), "hello from berth\n");
    assert_eq!(
        env.berth(&["run", "--rm", "app:v1", "cat", "uid", "where"]),
        "1000\n/home/app\n"
    );
    let details = client.images().inspect("app:v1").await.unwrap();
    let config = details.config.config().clone().unwrap();
    assert_eq!(config.user().as_deref(), Some("app"));
    assert_eq!(config.working_dir().as_deref(), Some("/home/app"));
    let history = details.config.history().clone().unwrap_or_default();
    assert!(history
        .iter()
        .any(|h| h.created_by().as_deref() == Some("USER app") && h.empty_layer() == Some(true)));

    // A build arg reaches the compile stage's RUN.
    let opts = BuildOptions {
        context: ctx,
        tags: vec!["app:v2".into()],
        build_args: vec!["GREETING=args".into()],
        ..BuildOptions::default()
    };
    build(&client, &opts, &mut progress).await.unwrap();
    assert_eq!(env.berth(&["run", "--rm", "app:v2"]), "hello from args\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_stops_the_build_with_its_code() {
    berth_testkit::berthd::require_root();
    let env = Env::new("fail");
    let ctx = env.context(
        &format!("FROM {BASE}\nRUN echo before; exit 3\nRUN echo never\n"),
        &[],
    );
    let client = env.client().await;
    let mut progress = Vec::new();
    let opts = BuildOptions {
        context: ctx,
        tags: vec!["failed:v1".into()],
        ..BuildOptions::default()
    };
    let err = build(&client, &opts, &mut progress).await.unwrap_err();
    assert!(err.to_string().contains("non-zero code: 3"), "{err}");
    assert!(client.images().get("failed:v1").await.is_err());
    // Nothing of the build is left: its containers and active snapshots are gone.
    assert!(client.containers().list(&[]).await.unwrap().is_empty());
}
