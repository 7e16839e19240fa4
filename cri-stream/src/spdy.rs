//! SPDY/3.1 framing and sessions, as much as the kubelet's clients use: client-opened
//! streams with compressed header blocks, data, resets, pings and GOAWAY. Flow control is
//! not enforced: spdystream, client-go's SPDY library, neither sends nor honours
//! WINDOW_UPDATE beyond the defaults, so frames of it are read and ignored.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// Larger frames than this are a protocol error; client-go sends at most 32 KiB of data.
const MAX_FRAME: usize = 1 << 24;
const STREAM_BUFFER: usize = 64 * 1024;
const DATA_CHUNK: usize = 32 * 1024;

/// The zlib dictionary SPDY/3 (section 2.6.10.1) primes header compression with: header
/// names each preceded by a 32-bit big-endian length, then a run of common values.
fn header_dictionary() -> Vec<u8> {
    const NAMES: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const VALUES: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
        "charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut dict = Vec::with_capacity(1423);
    for name in NAMES {
        dict.extend_from_slice(&(name.len() as u32).to_be_bytes());
        dict.extend_from_slice(name.as_bytes());
    }
    dict.extend_from_slice(VALUES.as_bytes());
    dict
}

fn proto_err(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One direction's zlib state: SPDY compresses all header blocks of a session as one stream.
struct HeaderInflater {
    z: Decompress,
    dict: Arc<Vec<u8>>,
}

impl HeaderInflater {
    fn inflate(&mut self, input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let (in0, out0) = (self.z.total_in(), out.len());
            match self
                .z
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&self.dict)
                        .map_err(|e| proto_err(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(proto_err(format!("header block: {e}"))),
            }
            pos += (self.z.total_in() - in0) as usize;
            let progressed = self.z.total_in() != in0 || out.len() != out0;
            if (pos >= input.len() && out.len() < out.capacity()) || !progressed {
                return Ok(out);
            }
            if out.len() > MAX_FRAME {
                return Err(proto_err("header block too large"));
            }
        }
    }
}

fn deflate(z: &mut Compress, input: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let mut pos = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let in0 = z.total_in();
        z.compress_vec(&input[pos..], &mut out, FlushCompress::Sync)
            .map_err(|e| io::Error::other(format!("compress headers: {e}")))?;
        pos += (z.total_in() - in0) as usize;
        if pos >= input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

fn parse_headers(block: &[u8]) -> io::Result<HashMap<String, String>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
        if b.len() < n {
            return Err(proto_err("truncated header block"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn word(b: &mut &[u8]) -> io::Result<usize> {
        let w = take(b, 4)?;
        Ok(u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize)
    }
    let mut b = block;
    let count = word(&mut b)?;
    let mut headers = HashMap::new();
    for _ in 0..count {
        let n = word(&mut b)?;
        let name = String::from_utf8_lossy(take(&mut b, n)?).to_ascii_lowercase();
        let n = word(&mut b)?;
        // Several values are NUL-separated; the ones berth reads have one.
        let value = String::from_utf8_lossy(take(&mut b, n)?).replace('\0', ",");
        headers.insert(name, value);
    }
    Ok(headers)
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn data_frame(stream_id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

enum Out {
    Frame(Vec<u8>),
    Close(oneshot::Sender<()>),
}

/// A stream the client opened: its headers, the application's end of its bytes, and the
/// task that forwards what the application writes, which ends after the stream's FIN.
pub(crate) struct Stream {
    pub headers: HashMap<String, String>,
    pub io: DuplexStream,
    pub sent: JoinHandle<()>,
    /// While held, the FIN waits even after `io` closes: old remotecommand clients must see
    /// the error stream's message before stdout ends.
    pub hold_fin: oneshot::Sender<()>,
}

impl Stream {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

pub(crate) struct Session {
    pub incoming: mpsc::Receiver<Stream>,
    /// Turns true once the client's side of the connection is gone.
    pub closed: watch::Receiver<bool>,
    out: mpsc::Sender<Out>,
    reader: JoinHandle<()>,
}

impl Session {
    pub fn start<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, mut wr) = tokio::io::split(io);
        let (out, mut out_rx) = mpsc::channel::<Out>(64);
        tokio::spawn(async move {
            while let Some(o) = out_rx.recv().await {
                match o {
                    Out::Frame(f) => {
                        if wr.write_all(&f).await.is_err() {
                            break;
                        }
                    }
                    Out::Close(done) => {
                        let _ = wr.flush().await;
                        let _ = wr.shutdown().await;
                        let _ = done.send(());
                        break;
                    }
                }
            }
        });
        let (stream_tx, incoming) = mpsc::channel(16);
        let (closed_tx, closed) = watch::channel(false);
        let dict = Arc::new(header_dictionary());
        let reader = tokio::spawn(read_loop(rd, out.clone(), stream_tx, dict, closed_tx));
        Session {
            incoming,
            closed,
            out,
            reader,
        }
    }

    /// Says GOAWAY, flushes everything queued, and closes the connection.
    pub async fn close(self) {
        let mut goaway = Vec::with_capacity(8);
        goaway.extend_from_slice(&0u32.to_be_bytes());
        goaway.extend_from_slice(&0u32.to_be_bytes());
        let _ = self
            .out
            .send(Out::Frame(control_frame(GOAWAY, 0, &goaway)))
            .await;
        let (tx, rx) = oneshot::channel();
        if self.out.send(Out::Close(tx)).await.is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        }
        self.reader.abort();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    out: mpsc::Sender<Out>,
    stream_tx: mpsc::Sender<Stream>,
    dict: Arc<Vec<u8>>,
    closed_tx: watch::Sender<bool>,
) {
    let mut inflater = HeaderInflater {
        z: Decompress::new(true),
        dict: dict.clone(),
    };
    let compressor = Arc::new(Mutex::new({
        let mut z = Compress::new(Compression::default(), true);
        let _ = z.set_dictionary(&dict);
        z
    }));
    let mut streams: HashMap<u32, WriteHalf<DuplexStream>> = HashMap::new();
    let result: io::Result<()> = async {
        loop {
            let mut head = [0u8; 8];
            match rd.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let flags = head[4];
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            if len > MAX_FRAME {
                return Err(proto_err("frame too large"));
            }
            let mut payload = vec![0u8; len];
            rd.read_exact(&mut payload).await?;
            if head[0] & 0x80 == 0 {
                let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                let mut gone = false;
                if let Some(w) = streams.get_mut(&id) {
                    // A reader that went away only loses its own stream.
                    gone = (!payload.is_empty() && w.write_all(&payload).await.is_err())
                        || flags & FLAG_FIN != 0;
                    if flags & FLAG_FIN != 0 {
                        let _ = w.shutdown().await;
                    }
                }
                if gone {
                    streams.remove(&id);
                }
                continue;
            }
            let kind = u16::from_be_bytes([head[2], head[3]]);
            match kind {
                SYN_STREAM => {
                    if payload.len() < 10 {
                        return Err(proto_err("short SYN_STREAM"));
                    }
                    let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                    let headers = parse_headers(&inflater.inflate(&payload[10..])?)?;
                    let reply = {
                        let mut z = compressor.lock().await;
                        let block = deflate(&mut z, &0u32.to_be_bytes())?;
                        let mut p = id.to_be_bytes().to_vec();
                        p.extend_from_slice(&block);
                        control_frame(SYN_REPLY, 0, &p)
                    };
                    if out.send(Out::Frame(reply)).await.is_err() {
                        return Ok(());
                    }
                    let (app, ours) = tokio::io::duplex(STREAM_BUFFER);
                    let (ours_rd, mut ours_wr) = tokio::io::split(ours);
                    if flags & FLAG_FIN != 0 {
                        let _ = ours_wr.shutdown().await;
                    } else {
                        streams.insert(id, ours_wr);
                    }
                    let (hold_fin, fin_gate) = oneshot::channel();
                    let sent = tokio::spawn(send_loop(id, ours_rd, out.clone(), fin_gate));
                    let _ = stream_tx
                        .send(Stream {
                            headers,
                            io: app,
                            sent,
                            hold_fin,
                        })
                        .await;
                }
                RST_STREAM if payload.len() >= 4 => {
                    let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                    streams.remove(&id);
                }
                PING => {
                    let _ = out.send(Out::Frame(control_frame(PING, 0, &payload))).await;
                }
                GOAWAY => return Ok(()),
                // SETTINGS, WINDOW_UPDATE, HEADERS and the rest change nothing here.
                _ => {}
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!("spdy session ended: {e}");
    }
    let _ = closed_tx.send(true);
}

async fn send_loop<R: AsyncRead + Unpin>(
    id: u32,
    mut rd: R,
    out: mpsc::Sender<Out>,
    fin_gate: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // Released by a send or by the holder dropping its end.
                let _ = fin_gate.await;
                let _ = out.send(Out::Frame(data_frame(id, FLAG_FIN, &[]))).await;
                return;
            }
            Ok(n) => {
                if out
                    .send(Out::Frame(data_frame(id, 0, &buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_has_the_spec_length() {
        assert_eq!(header_dictionary().len(), 1423);
    }

    #[test]
    fn header_blocks_round_trip_through_the_dictionary() {
        let dict = Arc::new(header_dictionary());
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&dict).unwrap();
        let mut inflater = HeaderInflater {
            z: Decompress::new(true),
            dict,
        };
        for (name, value) in [("streamtype", "stdout"), ("port", "8080")] {
            let mut block = 1u32.to_be_bytes().to_vec();
            for s in [name, value] {
                block.extend_from_slice(&(s.len() as u32).to_be_bytes());
                block.extend_from_slice(s.as_bytes());
            }
            let packed = deflate(&mut z, &block).unwrap();
            let headers = parse_headers(&inflater.inflate(&packed).unwrap()).unwrap();
            assert_eq!(headers.get(name).map(String::as_str), Some(value));
        }
    }
}
