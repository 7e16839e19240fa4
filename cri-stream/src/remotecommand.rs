//! Kubernetes' remotecommand protocol for exec and attach: which streams a client opens,
//! how resizes arrive, and what the error stream says at the end, over SPDY streams or
//! WebSocket channels.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::spdy::Session;
use crate::websocket::{self, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT};
use crate::{
    AttachRequest, Backend, BoxRead, BoxWrite, ExecRequest, StreamError, StreamIo, TerminalSize,
};

/// How long a client may take to open the streams it announced, as the kubelet allows.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) enum Op {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Op {
    /// (tty, stdin, stdout, stderr) as the CRI request asked.
    fn flags(&self) -> (bool, bool, bool, bool) {
        match self {
            Op::Exec(r) => (r.tty, r.stdin, r.stdout, r.stderr),
            Op::Attach(r) => (r.tty, r.stdin, r.stdout, r.stderr),
        }
    }

    async fn run(&self, backend: &dyn Backend, io: StreamIo) -> Result<i32, StreamError> {
        match self {
            Op::Exec(r) => backend.exec(r, io).await,
            Op::Attach(r) => backend.attach(r, io).await.map(|()| 0),
        }
    }
}

/// What the error stream carries: v4 and later send a metav1.Status always, whose causes
/// carry a non-zero exit code; older versions send plain text on failure only.
fn error_message(structured: bool, result: &Result<i32, StreamError>) -> Option<Vec<u8>> {
    if !structured {
        return match result {
            Ok(0) => None,
            Ok(code) => Some(format!(
                "command terminated with non-zero exit code: {code}"
            )),
            Err(e) => Some(e.to_string()),
        }
        .map(String::into_bytes);
    }
    let status = match result {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": e.to_string(),
            "reason": if matches!(e, StreamError::NotFound(_)) { "NotFound" } else { "InternalError" },
        }),
    };
    Some(status.to_string().into_bytes())
}

fn parse_size(line: &[u8]) -> Option<TerminalSize> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some(TerminalSize {
        width: u16::try_from(v.get("Width")?.as_u64()?).ok()?,
        height: u16::try_from(v.get("Height")?.as_u64()?).ok()?,
    })
}

/// Serves exec or attach on a SPDY session; `version` is the negotiated channel.k8s.io
/// version (1 to 4).
pub(crate) async fn serve_spdy(
    mut session: Session,
    version: u8,
    op: Op,
    backend: Arc<dyn Backend>,
) {
    let (tty, want_stdin, want_stdout, want_stderr) = op.flags();
    let mut expected = vec!["error"];
    if want_stdin {
        expected.push("stdin");
    }
    if want_stdout {
        expected.push("stdout");
    }
    if want_stderr && !tty {
        expected.push("stderr");
    }
    if tty && version >= 3 {
        expected.push("resize");
    }
    let mut streams = HashMap::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while expected.iter().any(|t| !streams.contains_key(*t)) {
        match tokio::time::timeout_at(deadline, session.incoming.recv()).await {
            Ok(Some(s)) => {
                let kind = s.header("streamtype").to_string();
                streams.insert(kind, s);
            }
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("exec client opened too few streams in time");
                session.close().await;
                return;
            }
        }
    }
    let Some(error) = streams.remove("error") else {
        return;
    };
    // The error stream's FIN is never held back.
    let (mut error_io, error_sent) = (error.io, error.sent);
    drop(error.hold_fin);
    let mut sent = Vec::new();
    let mut holds = Vec::new();
    let mut take = |kind: &str| {
        streams.remove(kind).map(|s| {
            sent.push(s.sent);
            holds.push(s.hold_fin);
            s.io
        })
    };
    let io = StreamIo {
        stdin: take("stdin").map(|s| Box::new(s) as BoxRead),
        stdout: take("stdout").map(|s| Box::new(s) as BoxWrite),
        stderr: take("stderr").map(|s| Box::new(s) as BoxWrite),
        resize: take("resize").map(|s| {
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(async move {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(size) = parse_size(line.as_bytes()) {
                        if tx.send(size).await.is_err() {
                            return;
                        }
                    }
                }
            });
            rx
        }),
    };
    drop(streams);
    let mut closed = session.closed.clone();
    let result = tokio::select! {
        r = op.run(&*backend, io) => r,
        // Dropping the backend's future is how it learns the client left.
        _ = closed.wait_for(|c| *c) => return,
    };
    let failed = match error_message(version >= 4, &result) {
        Some(msg) => {
            let _ = error_io.write_all(&msg).await;
            true
        }
        None => false,
    };
    // The error stream ends first: a v1 client stops listening once stdout and stderr end.
    drop(error_io);
    drain(vec![error_sent]).await;
    if failed && version == 1 {
        // A v1 client reads the error stream in a goroutine of its own and returns success as
        // soon as its stdout and stderr copies finish: even an error sent first can lose that
        // race under load. Holding stdout's end a moment lets the failure be seen.
        tokio::time::sleep(V1_ERROR_GRACE).await;
    }
    drop(holds);
    drain(sent).await;
    session.close().await;
}

/// How long a failed v1 exec keeps stdout open after its error stream ended (see above).
const V1_ERROR_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

async fn drain(sent: Vec<JoinHandle<()>>) {
    for s in sent {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, s).await;
    }
}

const CH_STDIN: u8 = 0;
const CH_STDOUT: u8 = 1;
const CH_STDERR: u8 = 2;
const CH_ERROR: u8 = 3;
const CH_RESIZE: u8 = 4;
/// v5's "this channel is done" message: [255, channel].
const CH_CLOSE: u8 = 255;

/// Serves exec or attach on an upgraded WebSocket speaking v4 or v5.channel.k8s.io.
pub(crate) async fn serve_websocket<IO>(io: IO, op: Op, backend: Arc<dyn Backend>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (tty, want_stdin, want_stdout, want_stderr) = op.flags();
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });

    let mut stdin_sink = None;
    let stdin = want_stdin.then(|| {
        let (app, ours) = tokio::io::duplex(64 * 1024);
        stdin_sink = Some(ours);
        Box::new(app) as BoxRead
    });
    let (resize_tx, resize) = if tty {
        let (tx, rx) = mpsc::channel(8);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let mut sent = Vec::new();
    let mut output = |channel: u8| {
        let (app, ours) = tokio::io::duplex(64 * 1024);
        sent.push(tokio::spawn(send_channel(channel, ours, out.clone())));
        Box::new(app) as BoxWrite
    };
    let io = StreamIo {
        stdin,
        stdout: want_stdout.then(|| output(CH_STDOUT)),
        stderr: (want_stderr && !tty).then(|| output(CH_STDERR)),
        resize,
    };

    let (closed_tx, mut closed) = watch::channel(false);
    let pong = out.clone();
    let reader = tokio::spawn(async move {
        let mut message = Vec::new();
        loop {
            let Ok(f) = websocket::read_frame(&mut rd).await else {
                break;
            };
            match f.opcode {
                OP_BINARY | OP_TEXT | OP_CONTINUATION => {
                    message.extend_from_slice(&f.payload);
                    if !f.fin {
                        continue;
                    }
                    let msg = std::mem::take(&mut message);
                    match msg.split_first() {
                        Some((&CH_STDIN, data)) => {
                            if let Some(s) = stdin_sink.as_mut() {
                                if s.write_all(data).await.is_err() {
                                    stdin_sink = None;
                                }
                            }
                        }
                        Some((&CH_RESIZE, data)) => {
                            if let (Some(tx), Some(size)) = (&resize_tx, parse_size(data)) {
                                let _ = tx.send(size).await;
                            }
                        }
                        Some((&CH_CLOSE, [CH_STDIN, ..])) => {
                            if let Some(mut s) = stdin_sink.take() {
                                let _ = s.shutdown().await;
                            }
                        }
                        _ => {}
                    }
                }
                OP_PING => {
                    let _ = pong.send(websocket::frame(0xA, &f.payload)).await;
                }
                OP_CLOSE => break,
                _ => {}
            }
        }
        let _ = closed_tx.send(true);
    });

    let result = tokio::select! {
        r = op.run(&*backend, io) => Some(r),
        _ = closed.wait_for(|c| *c) => None,
    };
    if let Some(result) = result {
        drain(sent).await;
        if let Some(msg) = error_message(true, &result) {
            let mut m = vec![CH_ERROR];
            m.extend_from_slice(&msg);
            let _ = out.send(websocket::frame(OP_BINARY, &m)).await;
        }
        let _ = out
            .send(websocket::frame(OP_CLOSE, &1000u16.to_be_bytes()))
            .await;
    }
    drop(out);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, writer).await;
    reader.abort();
}

async fn send_channel<R: AsyncRead + Unpin>(channel: u8, mut rd: R, out: mpsc::Sender<Vec<u8>>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 32 * 1024];
    buf[0] = channel;
    loop {
        match rd.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out
                    .send(websocket::frame(OP_BINARY, &buf[..n + 1]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}
