//! Exec, Attach and PortForward through berthd's real CRI socket: the URLs they answer are
//! driven by client-go (cri-stream/tests/go: kubectl's SPDY and WebSocket executors and its
//! port-forwarder) against containers under real runc. Needs root, berthd built in this
//! target dir, Go with the modules scripts/deps-cri-stream.sh fetches, iproute2.

mod support;

use berth_api::runtime::v1 as cri;
use support::{run_client, stream_client, text, Env};
use tonic::Code;

fn exec(id: &str, cmd: &[&str], tty: bool, stdin: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_attach_through_the_cri_socket() {
    // Built before any URL is asked for: a URL lives one minute.
    tokio::task::spawn_blocking(stream_client).await.unwrap();
    let env = Env::start().await;
    let mut rt = env.cri.clone();
    env.pod("pod-s", &[], false).await;
    env.container("c-exec", "pod-s", &["sleep", "3600"], false, None, &[])
        .await;
    env.container(
        "c-att",
        "pod-s",
        &[
            "sh",
            "-c",
            "read line; echo attached:$line; echo err-side >&2",
        ],
        false,
        None,
        &[],
    )
    .await;

    // Output, stderr and the exit code, over each executor kubectl has.
    for proto in ["spdy", "websocket"] {
        let url = rt
            .exec(exec(
                "c-exec",
                &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
                false,
                false,
            ))
            .await
            .unwrap()
            .into_inner()
            .url;
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let out = run_client(&["exec", "-proto", proto, "-url", &url], b"").await;
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

        // A URL works once.
        let again = run_client(&["exec", "-proto", proto, "-url", &url], b"").await;
        assert_ne!(
            again.status.code(),
            Some(0),
            "{proto}: a reused token worked"
        );
        assert_eq!(text(&again.stdout), "");
    }

    // stdin reaches the process and its end ends `cat`.
    let url = rt
        .exec(exec("c-exec", &["cat"], false, true))
        .await
        .unwrap()
        .into_inner()
        .url;
    let out = run_client(&["exec", "-stdin", "-url", &url], b"piped in\n").await;
    assert_eq!(text(&out.stdout), "piped in\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));

    // exec -it: the process's terminal has the client's size from its start.
    for proto in ["spdy", "websocket"] {
        let url = rt
            .exec(exec("c-exec", &["stty", "size"], true, true))
            .await
            .unwrap()
            .into_inner()
            .url;
        let args = [
            "exec", "-proto", proto, "-tty", "-stdin", "-resize", "100x40", "-url", &url,
        ];
        let out = run_client(&args, b"").await;
        assert!(
            text(&out.stdout).contains("40 100"),
            "{proto}: {:?} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{proto}: {}", text(&out.stderr));
    }

    // Attach: stdin into the container's own stdin, its output from its CRI log.
    let url = rt
        .attach(cri::AttachRequest {
            container_id: "c-att".into(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let out = run_client(&["exec", "-stdin", "-url", &url], b"hi\n").await;
    assert_eq!(text(&out.stdout), "attached:hi\n", "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("err-side"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The log has it too: attach read it, nothing else wrote it.
    assert!(env.log_lines("c-att").contains(&"attached:hi".to_string()));

    // Bad requests: a clear error and no URL.
    let code = |r: Result<tonic::Response<cri::ExecResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(rt.exec(exec("no-such", &["true"], false, false)).await),
        Code::NotFound
    );
    assert_eq!(
        code(rt.exec(exec("pod-s", &["true"], false, false)).await),
        Code::NotFound,
        "a pod is not a container"
    );
    assert_eq!(
        code(rt.exec(exec("c-exec", &[], false, false)).await),
        Code::InvalidArgument
    );
    let mut none = exec("c-exec", &["true"], false, false);
    none.stdout = false;
    none.stderr = false;
    assert_eq!(code(rt.exec(none).await), Code::InvalidArgument);
    let mut both = exec("c-exec", &["true"], true, false);
    both.stderr = true;
    assert_eq!(code(rt.exec(both).await), Code::InvalidArgument);
    // c-att has exited by now.
    assert_eq!(
        code(rt.exec(exec("c-att", &["true"], false, false)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "c-exec".into(),
            port: vec![80],
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_httpd_in_the_pods_netns() {
    tokio::task::spawn_blocking(stream_client).await.unwrap();
    let env = Env::start().await;
    let mut rt = env.cri.clone();
    let netns = env.pod("pod-pf", &[], true).await.unwrap();
    env.container(
        "web",
        "pod-pf",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo hello-from-the-pod > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:18080 -h /tmp/www",
        ],
        false,
        Some(&netns),
        &[],
    )
    .await;
    // Only inside the pod: nothing answers on the host's loopback.
    assert!(std::net::TcpStream::connect("127.0.0.1:18080").is_err());

    let request = "GET /index.html HTTP/1.0\r\n\r\n";
    let mut last = String::new();
    for proto in ["spdy", "websocket", "spdy"] {
        // httpd may still be starting: a few tries, each with a fresh URL.
        let mut ok = false;
        for _ in 0..20 {
            let url = rt
                .port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: "pod-pf".into(),
                    port: vec![18080],
                })
                .await
                .unwrap()
                .into_inner()
                .url;
            let args = [
                "portforward",
                "-proto",
                proto,
                "-url",
                &url,
                "-port",
                "18080",
                "-msg",
                request,
            ];
            let out = run_client(&args, b"").await;
            last = format!("{} / {}", text(&out.stdout), text(&out.stderr));
            if text(&out.stdout).contains("hello-from-the-pod") {
                assert!(text(&out.stdout).starts_with("HTTP/1."), "{last}");
                ok = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        assert!(ok, "{proto}: never reached httpd: {last}");
    }

    // A port nobody listens on in the pod: the client hears why.
    let url = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "pod-pf".into(),
            port: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let out = run_client(
        &[
            "portforward",
            "-url",
            &url,
            "-port",
            "18081",
            "-msg",
            request,
        ],
        b"",
    )
    .await;
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("error forwarding port"),
        "{}",
        text(&out.stderr)
    );
}
