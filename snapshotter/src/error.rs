//! The crate's error: one containerd errdefs class per error (a proxy's answer keeps the class the
//! peer gave), a message, and the I/O error behind it if any. `From<Error> for
//! berth_errdefs::Error` is the one conversion out of this crate; berthd maps that to gRPC.

use berth_errdefs::Kind;
use std::fmt;
use std::path::Path;

pub struct Error {
    kind: Kind,
    /// The snapshot a NotFound or AlreadyExists is about: a wrapper that renames keys (berthd's
    /// namespaces) rebuilds the message from it.
    snapshot: Option<String>,
    message: String,
    source: Option<std::io::Error>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            snapshot: None,
            message: message.into(),
            source: None,
        }
    }

    /// No snapshot `key` (or name) exists.
    pub fn not_found(key: &str) -> Error {
        Self::about(Kind::NotFound, key)
    }

    /// A snapshot `key` (or name) exists already.
    pub fn exists(key: &str) -> Error {
        Self::about(Kind::AlreadyExists, key)
    }

    fn about(kind: Kind, key: &str) -> Error {
        Error {
            snapshot: Some(key.to_string()),
            ..Self::new(kind, format!("snapshot {key}: {kind}"))
        }
    }

    pub fn precondition(message: impl Into<String>) -> Error {
        Self::new(Kind::FailedPrecondition, message)
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Self::new(Kind::InvalidArgument, message)
    }

    /// An I/O error while doing `context`; its class follows the I/O error's, as errdefs' does.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error {
            kind: Kind::of_io(source.kind()),
            snapshot: None,
            message: context.into(),
            source: Some(source),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The snapshot a NotFound or AlreadyExists names, as the snapshotter knows it.
    pub fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error (class, cause) told with another message.
    pub fn with_message(mut self, message: impl Into<String>) -> Error {
        self.message = message.into();
        self
    }
}

/// An error from elsewhere in the vocabulary (a proxy's answer, a shared helper): its class is kept.
impl From<berth_errdefs::Error> for Error {
    fn from(e: berth_errdefs::Error) -> Self {
        Self::new(e.kind(), e.to_string())
    }
}

impl From<Error> for berth_errdefs::Error {
    fn from(e: Error) -> Self {
        match e.source {
            Some(source) => Self::with_source(e.kind, e.message, source),
            None => Self::new(e.kind, e.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{}: {s}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s as &(dyn std::error::Error + 'static))
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
            (berth_errdefs::Error::unavailable("down"), Kind::Unavailable),
            (
                berth_errdefs::Error::deadline_exceeded("hung"),
                Kind::DeadlineExceeded,
            ),
            (
                berth_errdefs::Error::unimplemented("usage"),
                Kind::Unimplemented,
            ),
        ] {
            let e = berth_errdefs::Error::from(Error::from(e));
            assert_eq!(e.kind(), kind, "{e}");
        }
    }

    #[test]
    fn an_io_error_keeps_its_cause_and_class() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = berth_errdefs::Error::from(Error::io("open x", missing));
        assert_eq!(e.kind(), Kind::NotFound);
        assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound));
    }
}
