//! The crate's one error type. Messages name the host, repository and digest involved, never a
//! credential or a token.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference {0}")]
    InvalidReference(String),
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: authorization failed (401)")]
    Unauthorized(String),
    #[error("{0}: access denied (403)")]
    Denied(String),
    #[error("{0}: schema 1 manifests are not supported (deprecated by docker in 2019; push the image again with a current client)")]
    Schema1(String),
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: {count} layers exceed the limit of {limit}")]
    TooManyLayers {
        what: String,
        count: usize,
        limit: usize,
    },
    #[error("no manifest in {0} matches the requested platforms")]
    NoMatchingPlatform(String),
    #[error("{0}: layer has foreign URLs; following them is not enabled")]
    ForeignLayer(String),
    #[error("{what}: no progress for {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{url}: unexpected HTTP status {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("hosts configuration {path}: {message}")]
    HostsConfig { path: String, message: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the registry said the object does not exist (the next mirror may have it).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Errors after which another host (mirror or server) is worth trying.
    pub(crate) fn try_next_host(&self) -> bool {
        matches!(
            self,
            Error::NotFound(_)
                | Error::Http { .. }
                | Error::Timeout { .. }
                | Error::Status { .. }
                | Error::Unauthorized(_)
                | Error::Denied(_)
        )
    }
}

/// Registry failures as containerd's error classes, so a client of the Transfer service sees the
/// code containerd would send: a 401 is Unauthenticated, a 403 PermissionDenied, bytes that do
/// not match their descriptor a FailedPrecondition (as a content commit answers), a stall
/// DeadlineExceeded, an unreachable or failing registry Unavailable.
impl From<Error> for berth_errdefs::Error {
    fn from(e: Error) -> Self {
        use berth_errdefs::{Error as E, Kind};
        let e = match e {
            Error::Io { context, source } => return E::io(context, source),
            e => e,
        };
        let kind = match &e {
            Error::InvalidReference(_)
            | Error::Schema1(_)
            | Error::InvalidManifest(_)
            | Error::HostsConfig { .. } => Kind::InvalidArgument,
            Error::NotFound(_) | Error::NoMatchingPlatform(_) => Kind::NotFound,
            Error::Unauthorized(_) => Kind::Unauthenticated,
            Error::Denied(_) => Kind::PermissionDenied,
            Error::UnsupportedMediaType(_) => Kind::Unimplemented,
            Error::DigestMismatch { .. }
            | Error::SizeMismatch { .. }
            | Error::ForeignLayer(_)
            | Error::Credentials(_) => Kind::FailedPrecondition,
            Error::TooLarge { .. } | Error::TooManyLayers { .. } => Kind::ResourceExhausted,
            Error::Timeout { .. } => Kind::DeadlineExceeded,
            Error::Status { status, .. } => match status {
                400 => Kind::InvalidArgument,
                401 => Kind::Unauthenticated,
                403 => Kind::PermissionDenied,
                404 => Kind::NotFound,
                408 | 504 => Kind::DeadlineExceeded,
                429 | 500..=599 => Kind::Unavailable,
                _ => Kind::Unknown,
            },
            Error::Http { source, .. } if source.is_timeout() => Kind::DeadlineExceeded,
            Error::Protocol { .. } | Error::Http { .. } => Kind::Unavailable,
            Error::Io { .. } => Kind::Internal,
        };
        E::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod errdefs_tests {
    use super::Error;
    use berth_errdefs::Kind;

    fn kind(e: Error) -> Kind {
        berth_errdefs::Error::from(e).kind()
    }

    #[test]
    fn classes_survive_into_errdefs() {
        assert_eq!(kind(Error::Unauthorized("h".into())), Kind::Unauthenticated);
        assert_eq!(kind(Error::Denied("h".into())), Kind::PermissionDenied);
        assert_eq!(kind(Error::NotFound("r".into())), Kind::NotFound);
        assert_eq!(
            kind(Error::InvalidReference("r".into())),
            Kind::InvalidArgument
        );
        assert_eq!(
            kind(Error::DigestMismatch {
                what: "b".into(),
                expected: "x".into(),
                actual: "y".into()
            }),
            Kind::FailedPrecondition
        );
        assert_eq!(
            kind(Error::Timeout {
                what: "b".into(),
                after: std::time::Duration::from_secs(1)
            }),
            Kind::DeadlineExceeded
        );
        for (status, want) in [
            (401, Kind::Unauthenticated),
            (403, Kind::PermissionDenied),
            (404, Kind::NotFound),
            (503, Kind::Unavailable),
            (429, Kind::Unavailable),
        ] {
            let e = Error::Status {
                url: "u".into(),
                status,
                detail: String::new(),
            };
            assert_eq!(kind(e), want, "{status}");
        }
    }
}
