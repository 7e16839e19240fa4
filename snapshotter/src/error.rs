//! The crate's error vocabulary: containerd's errdefs classes, which berthd maps to gRPC codes.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0}: not found")]
    NotFound(String),
    #[error("snapshot {0}: already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The store cannot be reached now (a proxy snapshotter's socket); the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The store did not answer within its bound (a hung proxy snapshotter).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `map_err` helper: an I/O error on `path` while doing `what`.
pub(crate) fn at<E: Into<std::io::Error>>(what: &str, path: &Path) -> impl FnOnce(E) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::io(context, e.into())
}
