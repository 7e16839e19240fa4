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
    /// Any other class a proxy snapshotter answered with (Unimplemented, ResourceExhausted, ...),
    /// kept as is.
    #[error(transparent)]
    Other(#[from] berth_errdefs::Error),
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

impl From<Error> for berth_errdefs::Error {
    fn from(e: Error) -> Self {
        use berth_errdefs::Error as E;
        match e {
            Error::NotFound(_) => E::not_found(e.to_string()),
            Error::AlreadyExists(_) => E::exists(e.to_string()),
            Error::FailedPrecondition(m) => E::precondition(m),
            Error::InvalidArgument(m) => E::invalid(m),
            Error::Unavailable(m) => E::unavailable(m),
            Error::DeadlineExceeded(m) => E::deadline_exceeded(m),
            Error::Io { context, source } => E::io(context, source),
            Error::Other(inner) => inner,
        }
    }
}

/// `map_err` helper: an I/O error on `path` while doing `what`.
pub(crate) fn at<E: Into<std::io::Error>>(what: &str, path: &Path) -> impl FnOnce(E) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::io(context, e.into())
}

#[cfg(test)]
mod tests {
    use super::Error;
    use berth_errdefs::Kind;

    #[test]
    fn a_proxy_that_cannot_answer_keeps_its_class() {
        for (e, kind) in [
            (Error::Unavailable("down".into()), Kind::Unavailable),
            (
                Error::DeadlineExceeded("hung".into()),
                Kind::DeadlineExceeded,
            ),
            (
                Error::Other(berth_errdefs::Error::unimplemented("usage")),
                Kind::Unimplemented,
            ),
        ] {
            let e = berth_errdefs::Error::from(e);
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}
