//! The streams clients open on Streaming/Stream, kept by the id of their `StreamInit` until a
//! transfer takes them (progress, credentials, archive bytes). A stream is taken once; one
//! nobody took vanishes when its client goes away. Also the byte flow over a stream as
//! containerd's client speaks it: `Data` messages within a window the receiver grants with
//! `WindowUpdate`s (`receive_bytes`, `send_bytes`).
//!
//! Payloads are `Any`s; nothing here knows gRPC (the service pumps the client's messages in).

use berth_api::containerd::types::transfer::{Data, WindowUpdate};
use berth_api::{pack_any, type_url, unpack_any};
use berth_errdefs::{Error, Result};
use prost_types::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Messages buffered each way before the slower side waits.
pub const STREAM_BUFFER: usize = 32;

/// containerd's client sends at most this much per `Data` and grants twice it per window.
const MAX_DATA: usize = 32 * 1024;
const WINDOW: i32 = 2 * MAX_DATA as i32;

/// The registry of open, untaken streams.
#[derive(Clone, Default, Debug)]
pub struct Streams {
    inner: Arc<Mutex<HashMap<String, (u64, Stream)>>>,
    next_token: Arc<AtomicU64>,
}

/// One client stream, owned by whoever took it. Dropping it ends the client's RPC.
#[derive(Debug)]
pub struct Stream {
    id: String,
    out: mpsc::Sender<Any>,
    inbound: mpsc::Receiver<Any>,
}

/// The sending half of a [`Stream`] (cheap to clone).
#[derive(Clone)]
pub struct StreamSender {
    id: String,
    out: mpsc::Sender<Any>,
}

/// Held by the service while its client is connected: dropping it forgets the stream if no
/// transfer took it.
#[derive(Debug)]
pub struct Registration {
    streams: Streams,
    id: String,
    token: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.streams.lock();
        if map.get(&self.id).is_some_and(|(t, _)| *t == self.token) {
            map.remove(&self.id);
        }
    }
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Stream)>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register the stream `id`: messages from the client go into `inbound`, what the taker
    /// sends comes out of `out`. AlreadyExists while another stream has the id.
    pub fn register(
        &self,
        id: &str,
        out: mpsc::Sender<Any>,
        inbound: mpsc::Receiver<Any>,
    ) -> Result<Registration> {
        if id.is_empty() {
            return Err(Error::invalid("stream id must not be empty"));
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        if map.contains_key(id) {
            return Err(Error::exists(format!("stream {id:?}: already exists")));
        }
        let stream = Stream {
            id: id.to_string(),
            out,
            inbound,
        };
        map.insert(id.to_string(), (token, stream));
        Ok(Registration {
            streams: self.clone(),
            id: id.to_string(),
            token,
        })
    }

    /// Take the stream `id` for a transfer; NotFound when no connected client opened it.
    pub fn take(&self, id: &str) -> Result<Stream> {
        self.lock()
            .remove(id)
            .map(|(_, s)| s)
            .ok_or_else(|| Error::not_found(format!("stream {id:?}: not found")))
    }

    /// How many untaken streams are registered (for tests and introspection).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Stream {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Send a message; Unavailable once the client is gone.
    pub async fn send(&self, msg: Any) -> Result<()> {
        send_on(&self.id, &self.out, msg).await
    }

    /// The client's next message; None once it ended its side or went away.
    pub async fn recv(&mut self) -> Option<Any> {
        self.inbound.recv().await
    }

    /// Waits, at most `bound`, until the client's side has taken every message sent so far
    /// (the Streaming call's response has read them off the channel), or the client went away.
    /// The call that used the stream answers after this: containerd's clients stop reading a
    /// transfer's progress once Transfer answers, so an answer that overtook the last "saved"
    /// event lost it (nerdctl load then did not print the image it loaded).
    pub async fn flushed(&self, bound: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        while self.out.capacity() < self.out.max_capacity()
            && !self.out.is_closed()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    pub fn split(self) -> (StreamSender, mpsc::Receiver<Any>) {
        (
            StreamSender {
                id: self.id,
                out: self.out,
            },
            self.inbound,
        )
    }
}

impl StreamSender {
    pub async fn send(&self, msg: Any) -> Result<()> {
        send_on(&self.id, &self.out, msg).await
    }
}

async fn send_on(id: &str, out: &mpsc::Sender<Any>, msg: Any) -> Result<()> {
    out.send(msg)
        .await
        .map_err(|_| Error::unavailable(format!("stream {id:?}: the client went away")))
}

/// Read the bytes a client sends on `stream` (containerd's `SendStream`): grant a window,
/// write each `Data` to the returned reader, grant more as it drains. The reader ends at the
/// client's end of stream, or fails when a message is not `Data`/its payload is broken.
pub fn receive_bytes(stream: Stream) -> impl AsyncRead + Send + Unpin + 'static {
    let (mut writer, reader) = tokio::io::duplex(WINDOW as usize);
    let (sender, mut inbound) = stream.split();
    tokio::spawn(async move {
        let mut window: i32 = 0;
        loop {
            if window < WINDOW {
                if sender
                    .send(pack_any(&WindowUpdate { update: WINDOW }))
                    .await
                    .is_err()
                {
                    // The client may have sent everything and gone: read what is queued.
                } else {
                    window += WINDOW;
                }
            }
            let Some(msg) = inbound.recv().await else {
                let _ = writer.shutdown().await;
                return;
            };
            if msg.type_url != type_url::<Data>() {
                tracing::warn!(type_url = %msg.type_url, "ignoring a non-Data message on a byte stream");
                continue;
            }
            let data = match unpack_any::<Data>(&msg) {
                Ok(d) => d.data,
                Err(e) => {
                    tracing::warn!(error = %e, "broken Data message; ending the byte stream");
                    return;
                }
            };
            if writer.write_all(&data).await.is_err() {
                return; // the reader is gone
            }
            window = window.saturating_sub(data.len() as i32);
        }
    });
    reader
}

/// Send `source` to the client on `stream` (containerd's `ReceiveStream` on the other side):
/// only within the window the client granted, in `Data` messages of at most 32 KiB. Returns
/// the bytes sent, once the client's grants for them have stopped; the stream ends (the client
/// sees EOF) when this returns and drops it.
pub async fn send_bytes(stream: Stream, mut source: impl AsyncRead + Unpin) -> Result<u64> {
    let (sender, mut inbound) = stream.split();
    let mut remaining: i64 = 0;
    let mut sent = 0u64;
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        // Take every grant already queued; wait for one only when the window is shut.
        loop {
            let msg = if remaining > 0 {
                match inbound.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            } else {
                match inbound.recv().await {
                    Some(m) => m,
                    None => {
                        return Err(Error::unavailable(format!(
                            "stream {:?}: the client stopped reading after {sent} bytes",
                            sender.id
                        )))
                    }
                }
            };
            match unpack_any::<WindowUpdate>(&msg) {
                Ok(w) if w.update > 0 => remaining += i64::from(w.update),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a message that is not a WindowUpdate")
                }
            }
        }
        let max = (remaining.min(MAX_DATA as i64)) as usize;
        let n = source
            .read(&mut buf[..max])
            .await
            .map_err(|e| Error::io("read the bytes to send", e))?;
        if n == 0 {
            break;
        }
        sender
            .send(pack_any(&Data {
                data: buf[..n].to_vec(),
            }))
            .await?;
        remaining -= n as i64;
        sent += n as u64;
    }
    // The protocol has no acknowledgement of the last bytes, and ctr closes its file as soon as
    // Transfer returns (which cut the tail off exports): let the client's grants run out (it
    // grants after writing a message out) and return once it has been quiet for a moment.
    let drained = tokio::time::sleep(DRAIN_WAIT);
    tokio::pin!(drained);
    loop {
        tokio::select! {
            msg = tokio::time::timeout(DRAIN_QUIET, inbound.recv()) => match msg {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            _ = &mut drained => break,
        }
    }
    Ok(sent)
}

/// The end of a send waits for the client's grants to stop for this long...
const DRAIN_QUIET: std::time::Duration = std::time::Duration::from_millis(100);
/// ...and at most this long in all.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(streams: &Streams, id: &str) -> (Registration, mpsc::Receiver<Any>, mpsc::Sender<Any>) {
        let (out_tx, out_rx) = mpsc::channel(STREAM_BUFFER);
        let (in_tx, in_rx) = mpsc::channel(STREAM_BUFFER);
        let reg = streams.register(id, out_tx, in_rx).unwrap();
        (reg, out_rx, in_tx)
    }

    #[test]
    fn a_stream_is_taken_once_and_forgotten_with_its_client() {
        let streams = Streams::default();
        let (reg, _out, _in) = pair(&streams, "a");
        assert!(streams
            .register("a", mpsc::channel(1).0, mpsc::channel(1).1)
            .unwrap_err()
            .is_already_exists());
        assert!(streams.take("a").is_ok());
        assert!(streams.take("a").unwrap_err().is_not_found());
        drop(reg);
        let (reg, _out, _in) = pair(&streams, "b");
        drop(reg);
        assert!(streams.take("b").unwrap_err().is_not_found());
        assert!(streams.is_empty());
    }

    /// A transfer's answer waits until the client's side has read its last progress events,
    /// and no longer than the bound when nobody reads them.
    #[tokio::test]
    async fn flushed_waits_for_the_client_side_to_take_every_message() {
        let streams = Streams::default();
        let (_reg, mut to_client, _from_client) = pair(&streams, "p");
        let stream = streams.take("p").unwrap();
        for _ in 0..3 {
            stream.send(Any::default()).await.unwrap();
        }
        let reader = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                to_client.recv().await.expect("a message");
            }
            to_client
        });
        let started = tokio::time::Instant::now();
        stream.flushed(std::time::Duration::from_secs(10)).await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(90));
        let to_client = reader.await.unwrap();
        assert!(to_client.is_empty());

        // Nobody reads: the bound ends the wait, with the message still queued.
        stream.send(Any::default()).await.unwrap();
        let started = tokio::time::Instant::now();
        stream.flushed(std::time::Duration::from_millis(50)).await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
        assert_eq!(to_client.len(), 1);
    }

    #[tokio::test]
    async fn bytes_flow_within_the_granted_window() {
        // The daemon sends (export): the client grants 64 KiB at a time, as ReceiveStream does.
        let streams = Streams::default();
        let (_reg, mut to_client, from_client) = pair(&streams, "x");
        let stream = streams.take("x").unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let src = payload.clone();
        let sending = tokio::spawn(async move { send_bytes(stream, &src[..]).await });
        let mut got = Vec::new();
        let mut granted = 0i64;
        while got.len() < payload.len() {
            if granted - (got.len() as i64) < WINDOW as i64 {
                from_client
                    .send(pack_any(&WindowUpdate { update: WINDOW }))
                    .await
                    .unwrap();
                granted += WINDOW as i64;
            }
            let msg = to_client.recv().await.unwrap();
            let d: Data = unpack_any(&msg).unwrap();
            assert!(d.data.len() <= MAX_DATA);
            got.extend_from_slice(&d.data);
            assert!(got.len() as i64 <= granted, "sent past the window");
        }
        assert_eq!(got, payload);
        assert_eq!(sending.await.unwrap().unwrap(), payload.len() as u64);
    }

    #[tokio::test]
    async fn received_bytes_come_out_in_order() {
        // The client sends (import): wait for our grant, send within it, as SendStream does.
        let streams = Streams::default();
        let (_reg, mut to_client, from_client) = pair(&streams, "y");
        let mut reader = receive_bytes(streams.take("y").unwrap());
        let payload: Vec<u8> = (0..150_000u32).map(|i| (i * 7) as u8).collect();
        let src = payload.clone();
        let client = tokio::spawn(async move {
            let mut remaining = 0i64;
            let mut rest = &src[..];
            while !rest.is_empty() {
                while remaining <= 0 {
                    let w: WindowUpdate = unpack_any(&to_client.recv().await.unwrap()).unwrap();
                    remaining += i64::from(w.update);
                }
                let n = rest.len().min(MAX_DATA).min(remaining as usize);
                from_client
                    .send(pack_any(&Data {
                        data: rest[..n].to_vec(),
                    }))
                    .await
                    .unwrap();
                rest = &rest[n..];
                remaining -= n as i64;
            }
        });
        let mut got = Vec::new();
        let reading = reader.read_to_end(&mut got);
        let (r, c) = tokio::join!(reading, client);
        c.unwrap();
        r.unwrap();
        assert_eq!(got, payload);
    }
}
