//! The one way berthd runs blocking work: file system, sled, hashing and process work never runs
//! on a tokio worker thread; it goes through [`blocking`], which moves it to tokio's blocking pool.

use berth_errdefs::{Error, Result};

/// Run `f` on the blocking pool and wait for it. A panic in `f` becomes an Internal error.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
}
