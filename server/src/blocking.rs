//! The one way berthd runs blocking work: file system, sled, hashing and process work never runs
//! on a tokio worker thread (one stalled worker stalls every connection it serves); it goes
//! through [`blocking`], which moves it to tokio's blocking pool — not `spawn_blocking` directly,
//! nor `block_in_place` (which panics on a current-thread runtime and blocks the tasks queued on
//! its worker until it is handed off). Streaming work is `tokio::spawn(blocking(...))`. Not yet
//! covered: metadata calls in request handlers (in-memory sled reads and transactions; flushes are
//! offloaded), see ARCHITECTURE.md.

use berth_errdefs::{Error, Result};

/// Run `f` on the blocking pool and wait for it. A panic in `f` becomes an Internal error.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
}
