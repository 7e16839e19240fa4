//! Content figures (issue 5, item 2): Write of a 100 MiB random blob the way containerd's Go client
//! writes (bidi Write, lock-step: STAT with the ref, WRITE chunks of 1 MiB at their offsets, COMMIT
//! with total and expected digest), then one full Read stream of it. Rates in MiB/s.
//!
//! Each round writes the same blob afresh (deleted after the round, outside the clock); the reads
//! come from the page cache on both daemons alike.

use super::{slot, Better, Figure, Samples};
use crate::daemon::{order, Kind, Lab};
use crate::{Opts, Result};
use berth::api::services::content::v1::content_client::ContentClient;
use berth::api::services::content::v1::{
    DeleteContentRequest, ReadContentRequest, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use berth::with_namespace;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const G: &str = "content";
pub(super) const NS: &str = "bench";
const CHUNK: usize = 1 << 20;
const BLOB: usize = 100 << 20;
const MIB: f64 = (1 << 20) as f64;

/// Deterministic incompressible bytes (xorshift64*), so runs are comparable and need no RNG crate.
fn random_blob(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub(super) fn client(ch: Channel) -> ContentClient<Channel> {
    ContentClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// One lock-step Write of `blob`; returns the time from the first request to the COMMIT answer.
pub(super) async fn write(
    client: &mut ContentClient<Channel>,
    r#ref: &str,
    blob: &[u8],
    expected: &str,
) -> Result<Duration> {
    // Requests are built before the clock starts (the copy is the client's cost, not the server's).
    // As containerd's Go client (content/proxy) sends them: STAT with ref, total and expected; WRITEs
    // at their offsets; COMMIT with offset = total (containerd truncates an ingest on offset 0).
    let mut reqs = vec![WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: r#ref.into(),
        total: blob.len() as i64,
        expected: expected.into(),
        ..Default::default()
    }];
    for (i, chunk) in blob.chunks(CHUNK).enumerate() {
        reqs.push(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r#ref.into(),
            offset: (i * CHUNK) as i64,
            data: chunk.to_vec(),
            ..Default::default()
        });
    }
    reqs.push(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: r#ref.into(),
        total: blob.len() as i64,
        offset: blob.len() as i64,
        expected: expected.into(),
        // A GC root, so containerd's collector cannot take the blob before the Read.
        labels: [(
            "containerd.io/gc.root".to_string(),
            "berth-bench".to_string(),
        )]
        .into(),
        ..Default::default()
    });
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut reqs = reqs.into_iter();
    let t = Instant::now();
    tx.send(reqs.next().expect("stat request"))
        .await
        .map_err(|_| "write stream closed".to_string())?;
    let mut responses = client
        .write(with_namespace(NS, ReceiverStream::new(rx)))
        .await
        .map_err(|s| format!("Write: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    next(&mut responses, "STAT").await?;
    for req in reqs {
        let commit = req.action == WriteAction::Commit as i32;
        tx.send(req)
            .await
            .map_err(|_| "write stream closed by the server".to_string())?;
        let resp = next(&mut responses, if commit { "COMMIT" } else { "WRITE" }).await?;
        if commit && resp.digest != expected {
            return Err(format!(
                "COMMIT answered digest {:?}, expected {expected}",
                resp.digest
            ));
        }
    }
    let elapsed = t.elapsed();
    drop(tx);
    Ok(elapsed)
}

async fn next(
    responses: &mut tonic::codec::Streaming<WriteContentResponse>,
    what: &str,
) -> Result<WriteContentResponse> {
    responses
        .message()
        .await
        .map_err(|s| format!("Write {what}: {:?}: {}", s.code(), s.message()))?
        .ok_or_else(|| format!("Write {what}: stream ended early"))
}

/// One full Read stream; returns its time and, when `keep`, the bytes (to verify once).
async fn read(
    client: &mut ContentClient<Channel>,
    digest: &str,
    keep: bool,
) -> Result<(Duration, usize, Vec<u8>)> {
    let req = with_namespace(
        NS,
        ReadContentRequest {
            digest: digest.into(),
            offset: 0,
            size: 0,
        },
    );
    let t = Instant::now();
    let mut s = client
        .read(req)
        .await
        .map_err(|e| format!("Read: {:?}: {}", e.code(), e.message()))?
        .into_inner();
    let (mut n, mut kept) = (0usize, Vec::new());
    while let Some(m) = s
        .message()
        .await
        .map_err(|e| format!("Read: {:?}: {}", e.code(), e.message()))?
    {
        if m.offset as usize != n {
            return Err(format!(
                "Read: chunk at offset {} after {n} bytes",
                m.offset
            ));
        }
        n += m.data.len();
        if keep {
            kept.extend_from_slice(&m.data);
        }
    }
    Ok((t.elapsed(), n, kept))
}

async fn delete(client: &mut ContentClient<Channel>, digest: &str) -> Result<()> {
    client
        .delete(with_namespace(
            NS,
            DeleteContentRequest {
                digest: digest.into(),
            },
        ))
        .await
        .map_err(|s| format!("Delete: {:?}: {}", s.code(), s.message()))?;
    Ok(())
}

pub async fn run(lab: &Lab, opts: &Opts) -> Result<Vec<Figure>> {
    let t0 = Instant::now();
    let blob = random_blob(BLOB);
    let expected = digest(&blob);
    let mut clients = [
        client(lab.daemon(Kind::Berth).connect().await?),
        client(lab.daemon(Kind::Containerd).connect().await?),
    ];
    // Warm-up and correctness check, not measured: write, read back, compare, delete.
    for kind in [Kind::Berth, Kind::Containerd] {
        let c = &mut clients[slot(kind)];
        let err = |e: String| format!("{}: {e}", kind.name());
        write(
            c,
            &format!("bench-warmup-{}", kind.name()),
            &blob,
            &expected,
        )
        .await
        .map_err(err)?;
        let (_, n, data) = read(c, &expected, true).await.map_err(err)?;
        if n != BLOB || digest(&data) != expected {
            return Err(err(format!(
                "read back {n} bytes that do not match the blob written"
            )));
        }
        delete(c, &expected).await.map_err(err)?;
    }
    let (mut w, mut r) = (Samples::default(), Samples::default());
    let (mut wc, mut rc) = (Samples::default(), Samples::default());
    for round in 0..opts.rounds() {
        let (mut wr, mut rd): ([Vec<f64>; 2], [Vec<f64>; 2]) = Default::default();
        let (mut wcpu, mut rcpu): ([Vec<f64>; 2], [Vec<f64>; 2]) = Default::default();
        for kind in order(round) {
            let c = &mut clients[slot(kind)];
            let err = |e: String| format!("{}: {e}", kind.name());
            let d = lab.daemon(kind);
            let cpu0 = d.cpu_ns();
            let dw = write(c, &format!("bench-{round}"), &blob, &expected)
                .await
                .map_err(err)?;
            let cpu1 = d.cpu_ns();
            let (dr, n, _) = read(c, &expected, false).await.map_err(err)?;
            let cpu2 = d.cpu_ns();
            wcpu[slot(kind)].push(cpu1.saturating_sub(cpu0) as f64 / 1e6);
            rcpu[slot(kind)].push(cpu2.saturating_sub(cpu1) as f64 / 1e6);
            if n != BLOB {
                return Err(err(format!("Read returned {n} bytes, expected {BLOB}")));
            }
            delete(c, &expected).await.map_err(err)?;
            wr[slot(kind)].push(BLOB as f64 / MIB / dw.as_secs_f64());
            rd[slot(kind)].push(BLOB as f64 / MIB / dr.as_secs_f64());
        }
        w.round_by_kind(&wr);
        r.round_by_kind(&rd);
        wc.round_by_kind(&wcpu);
        rc.round_by_kind(&rcpu);
    }
    eprintln!(
        "[content] 100 MiB write+read: {} rounds in {:.1} s",
        opts.rounds(),
        t0.elapsed().as_secs_f64()
    );
    Ok(vec![
        Figure::new(
            G,
            "content.write.100mib",
            "content Write 100 MiB (1 MiB lock-step chunks, commit with digest)",
            "MiB/s",
            Better::Higher,
        )
        .with(w.outcome()),
        Figure::new(
            G,
            "content.read.100mib",
            "content Read 100 MiB (one full Read stream)",
            "MiB/s",
            Better::Higher,
        )
        .with(r.outcome())
        .note("served from the page cache on both daemons"),
    ])
}
