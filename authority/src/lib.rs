//! berth-authority: lets every gRPC client's HTTP/2 `:authority` through to h2.
//!
//! On a unix socket gRPC's C core (Python, C++, Ruby, PHP) sends the percent-encoded socket path
//! as `:authority` and grpc-java the raw path; h2 refuses both with RST_STREAM PROTOCOL_ERROR,
//! where containerd accepts them. [`AuthorityFix`] wraps an accepted connection and replaces such
//! an authority (or an empty one) with `localhost` in the client's header blocks before h2 reads
//! them. Everything else reaches h2 byte for byte; see [`Rewriter`] for how.
//!
//! This crate knows HTTP/2 framing and HPACK only: nothing of gRPC services or of berthd.

mod rewriter;

pub use rewriter::{acceptable_authority, Rewriter, MAX_HEADER_BLOCK};

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A server-side connection whose client→server bytes pass through a [`Rewriter`]; the
/// server→client direction is untouched.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// How many header blocks of this connection had their `:authority` replaced.
    pub fn rewritten(&self) -> u64 {
        self.rewriter.rewritten()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let ready = this.rewriter.output();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.rewriter.consume_output(n);
                return Poll::Ready(Ok(()));
            }
            // Read straight into the server's buffer: frames that need nothing stay there.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                this.rewriter.finish();
                if this.rewriter.output().is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let verbatim = this.rewriter.accept(&buf.filled()[before..]);
            buf.set_filled(before + verbatim);
            if verbatim > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(feature = "tonic")]
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
