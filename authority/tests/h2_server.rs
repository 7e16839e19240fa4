//! The adapter in front of a real h2 server (the one under tonic and hyper): requests are written
//! as raw frames, as gRPC's C core and grpc-java write them, and the test reads what h2 answers.

use berth_authority::AuthorityFix;
use loona_hpack::Encoder;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the server did with stream 1.
#[derive(Debug, PartialEq)]
enum Answer {
    /// h2 handed the request to the service, which saw this authority and namespace.
    Served {
        authority: Option<String>,
        namespace: Option<String>,
    },
    /// h2 reset the stream with this error code.
    Reset(u32),
}

/// Serves one connection with h2 and records each request's authority and namespace header.
fn serve<T>(io: T) -> mpsc::UnboundedReceiver<(Option<String>, Option<String>)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok(mut conn) = h2::server::handshake(io).await else {
            return;
        };
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            let authority = req.uri().authority().map(|a| a.to_string());
            let namespace = req
                .headers()
                .get("containerd-namespace")
                .map(|v| v.to_str().unwrap_or("?").to_string());
            let _ = tx.send((authority, namespace));
            let _ = respond.send_response(http::Response::new(()), true);
        }
    });
    rx
}

/// Sends a client preface and requests on streams 1, 3, … with these (name, value) lists, and
/// waits for h2's verdict on each.
async fn ask(fix: bool, requests: &[Vec<(&str, &str)>]) -> Vec<Answer> {
    let (mut client, server): (DuplexStream, DuplexStream) = tokio::io::duplex(1 << 16);
    let mut seen = if fix {
        serve(AuthorityFix::new(server))
    } else {
        serve(server)
    };
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    let mut enc = Encoder::new();
    for (i, fields) in requests.iter().enumerate() {
        let block = enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        bytes.extend(frame(0x1, 0x4 | 0x1, 1 + 2 * i as u32, &block));
    }
    client.write_all(&bytes).await.unwrap();

    let mut answers = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0; 4096];
    while answers.len() < requests.len() {
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
            .await
            .expect("h2 answers")
            .unwrap();
        assert!(n > 0, "h2 closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
            match buf[3] {
                0x1 if stream > 0 => {
                    let (authority, namespace) = seen.recv().await.unwrap();
                    answers.push(Answer::Served {
                        authority,
                        namespace,
                    });
                }
                0x3 => answers.push(Answer::Reset(u32::from_be_bytes([
                    buf[9], buf[10], buf[11], buf[12],
                ]))),
                0x7 => panic!("h2 closed the connection: {:?}", &buf[9..9 + len]),
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
    answers
}

fn grpc_request(authority: Option<&str>) -> Vec<(&str, &str)> {
    let mut fields = vec![
        (":scheme", "http"),
        (":method", "POST"),
        (
            ":path",
            "/containerd.services.namespaces.v1.Namespaces/List",
        ),
    ];
    if let Some(a) = authority {
        fields.push((":authority", a));
    }
    fields.extend([
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        ("containerd-namespace", "berth-test"),
        ("user-agent", "grpc-c/50.0.0 (linux; chttp2)"),
    ]);
    fields
}

fn served(authority: Option<&str>) -> Answer {
    Answer::Served {
        authority: authority.map(str::to_string),
        namespace: Some("berth-test".to_string()),
    }
}

#[tokio::test]
async fn h2_alone_refuses_what_grpc_c_core_and_grpc_java_send() {
    for bad in ["%2Frun%2Fberth%2Fberthd.sock", "/run/berth/berthd.sock", ""] {
        assert_eq!(
            ask(false, &[grpc_request(Some(bad))]).await,
            [Answer::Reset(1)],
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn h2_alone_takes_a_request_without_authority() {
    // So a missing :authority is left missing.
    assert_eq!(ask(false, &[grpc_request(None)]).await, [served(None)]);
    assert_eq!(ask(true, &[grpc_request(None)]).await, [served(None)]);
}

#[tokio::test]
async fn with_the_adapter_h2_serves_every_client() {
    let answers = ask(
        true,
        &[
            grpc_request(Some("localhost")),
            grpc_request(Some("%2Frun%2Fberth%2Fberthd.sock")),
            grpc_request(Some("%2Frun%2Fberth%2Fberthd.sock")),
            grpc_request(Some("/run/berth/berthd.sock")),
            grpc_request(Some("")),
            grpc_request(Some("berth.example:8080")),
            grpc_request(None),
        ],
    )
    .await;
    assert_eq!(
        answers,
        [
            served(Some("localhost")),
            served(Some("localhost")),
            served(Some("localhost")),
            served(Some("localhost")),
            served(Some("localhost")),
            served(Some("berth.example:8080")),
            served(None),
        ]
    );
}
