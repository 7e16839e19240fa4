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
