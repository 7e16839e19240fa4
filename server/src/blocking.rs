//! The one way berthd runs blocking work: file system, sled, hashing and process work never runs
//! on a tokio worker thread (one stalled worker stalls every connection it serves); it goes
//! through [`blocking`], which moves it to tokio's blocking pool — not `spawn_blocking` directly,
//! nor `block_in_place` (which panics on a current-thread runtime and hands the worker's queued
//! tasks to another thread on every call). Streaming work is `tokio::spawn(blocking(...))`.
//!
//! The metadata store is the one exception, measured (ARCHITECTURE.md, "Blocking work"): its
//! reads and transactions run on the calling worker. They are in-memory sled work of a few
//! microseconds on the hottest paths (containers Get, Create), under a writer lock held for the
//! in-memory transaction only; every hand-off tried (per call, or only for a writer that has to
//! wait for the lock) cost more than it saved. The flush, the disk work, runs on the blocking
//! pool.

use berth_errdefs::{Error, Result};

/// Run `f` on the blocking pool and wait for it. A panic in `f` becomes an Internal error.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
}
