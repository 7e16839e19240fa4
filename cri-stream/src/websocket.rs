//! WebSocket (RFC 6455) framing and handshake, the part a server needs: the accept key,
//! reading masked client frames and writing unmasked ones.

use std::io;

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
const MAX_MESSAGE: usize = 16 << 20;

/// The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key.
pub(crate) fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    // SHA-1 only because RFC 6455 requires it for this key.
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(&input))
}

pub(crate) struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

pub(crate) async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> io::Result<Frame> {
    let mut head = [0u8; 2];
    rd.read_exact(&mut head).await?;
    let fin = head[0] & 0x80 != 0;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => rd.read_u16().await? as usize,
        127 => rd.read_u64().await? as usize,
        n => n as usize,
    };
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "websocket frame too large",
        ));
    }
    let mut mask = [0u8; 4];
    if masked {
        rd.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Frame {
        fin,
        opcode,
        payload,
    })
}

pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Unwraps a WebSocket whose binary messages carry a byte stream (client-go's SPDY tunnel
/// for port-forward) into that byte stream; each write goes out as one binary message.
pub(crate) fn tunnel<IO>(io: IO) -> DuplexStream
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (app, ours) = tokio::io::duplex(64 * 1024);
    let (mut from_app, mut to_app) = tokio::io::split(ours);
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let pong = out.clone();
    tokio::spawn(async move {
        while let Ok(f) = read_frame(&mut rd).await {
            match f.opcode {
                OP_BINARY | OP_CONTINUATION if to_app.write_all(&f.payload).await.is_err() => break,
                OP_PING => {
                    let _ = pong.send(frame(0xA, &f.payload)).await;
                }
                OP_CLOSE => break,
                _ => {}
            }
        }
        let _ = to_app.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n @ 1..) = from_app.read(&mut buf).await {
            if out.send(frame(OP_BINARY, &buf[..n])).await.is_err() {
                return;
            }
        }
        let _ = out.send(frame(OP_CLOSE, &1000u16.to_be_bytes())).await;
    });
    app
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
