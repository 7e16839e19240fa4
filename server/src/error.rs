//! berthd's one error vocabulary, in containerd's terms (errdefs), and its single mapping to gRPC status codes.
//!
//! Domain code returns `Error`; only `impl From<Error> for tonic::Status` knows about gRPC.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A resource is busy (e.g. an ingest ref locked by another writer); the client retries.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Canceled(String),
    /// A per-client limit was reached (an event too large, a subscriber too far behind).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A wait ran past its bound (a hung proxy snapshotter, shim or runtime).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("metadata store: {0}")]
    Store(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn exists(msg: impl Into<String>) -> Self {
        Error::AlreadyExists(msg.into())
    }
    pub fn precondition(msg: impl Into<String>) -> Self {
        Error::FailedPrecondition(msg.into())
    }
    /// Wrap an I/O error with what was being done, e.g. `Error::io("open blob sha256:…", e)`.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists(_))
    }
}

/// The one place where berthd errors become gRPC codes, using containerd's mapping (errdefs/grpc.go).
impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::Code;
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Canceled(_) => Code::Cancelled,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => Code::NotFound,
            Error::Io { .. } | Error::Store(_) | Error::Internal(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
        }
        tonic::Status::new(code, err.to_string())
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Store(e.to_string())
    }
}

impl From<berth_snapshotter::Error> for Error {
    fn from(e: berth_snapshotter::Error) -> Self {
        use berth_snapshotter::Error as S;
        match e {
            S::NotFound(_) => Error::NotFound(e.to_string()),
            S::AlreadyExists(_) => Error::AlreadyExists(e.to_string()),
            S::FailedPrecondition(m) => Error::FailedPrecondition(m),
            S::InvalidArgument(m) => Error::InvalidArgument(m),
            S::Unavailable(m) => Error::Unavailable(m),
            S::DeadlineExceeded(m) => Error::DeadlineExceeded(m),
            S::Io { context, source } => Error::Io { context, source },
        }
    }
}
