//! Bytes per second of a 100 MiB DATA stream read through the adapter versus read directly, over
//! a real unix socket pair, the way hyper reads (64 KiB buffers). A measurement, not a test:
//! `cargo run --release -p berth-authority --example throughput`.

use berth_authority::AuthorityFix;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const TOTAL: usize = 100 << 20;
const FRAME: usize = 16_384;
const ROUNDS: usize = 7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A content Write: preface, one request header block, then DATA frames of the largest size.
fn connection(authority: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut head = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    head.extend(frame(0x4, 0, 0, &[]));
    let fields: [(&[u8], &[u8]); 5] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/containerd.services.content.v1.Content/Write"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
    ];
    let block = loona_hpack::Encoder::new().encode(fields);
    head.extend(frame(0x1, 0x4, 1, &block));
    let body = frame(0x0, 0, 1, &vec![0xab; FRAME]);
    (head, body)
}

async fn drain<R: AsyncRead + Unpin>(mut r: R) -> usize {
    let mut buf = vec![0; 64 << 10];
    let mut n = 0;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            return n;
        }
        n += k;
    }
}

async fn once(authority: Option<&[u8]>) -> Duration {
    let (mut client, server) = UnixStream::pair().unwrap();
    let (head, body) = connection(authority.unwrap_or(b"localhost"));
    let writer = tokio::spawn(async move {
        client.write_all(&head).await.unwrap();
        for _ in 0..TOTAL / FRAME {
            client.write_all(&body).await.unwrap();
        }
    });
    let start = Instant::now();
    let n = match authority {
        None => drain(server).await,
        Some(_) => drain(AuthorityFix::new(server)).await,
    };
    let took = start.elapsed();
    writer.await.unwrap();
    assert!(n >= TOTAL);
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cases: [(&str, Option<&[u8]>); 3] = [
        ("plain socket", None),
        ("adapter, nothing rewritten", Some(b"localhost")),
        (
            "adapter, rewritten connection",
            Some(b"%2Frun%2Fberth%2Fberthd.sock"),
        ),
    ];
    // Rounds interleave the cases so that load from elsewhere on the machine hits all of them.
    let mut best = [Duration::MAX; 3];
    for _ in 0..ROUNDS {
        for (i, (_, authority)) in cases.iter().enumerate() {
            best[i] = best[i].min(once(*authority).await);
        }
    }
    for ((name, _), took) in cases.iter().zip(best) {
        let mib_s = (TOTAL as f64 / (1 << 20) as f64) / took.as_secs_f64();
        println!("{name:32} {mib_s:8.0} MiB/s (best of {ROUNDS}, {TOTAL} bytes of DATA)");
    }
    scan_alone();
}

/// The rewriter's own cost, without any I/O: the same stream handed over in 64 KiB reads.
fn scan_alone() {
    let (head, body) = connection(b"%2Frun%2Fberth%2Fberthd.sock");
    let mut stream = head;
    while stream.len() < TOTAL {
        stream.extend_from_slice(&body);
    }
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let mut r = berth_authority::Rewriter::new();
        let start = Instant::now();
        let mut passed = 0;
        for chunk in stream.chunks(64 << 10) {
            passed += r.accept(chunk) + r.output().len();
            let n = r.output().len();
            r.consume_output(n);
        }
        best = best.min(start.elapsed());
        assert!(passed >= TOTAL);
    }
    let mib_s = (stream.len() as f64 / (1 << 20) as f64) / best.as_secs_f64();
    println!("{:32} {mib_s:8.0} MiB/s (no I/O)", "rewriter alone");
}
