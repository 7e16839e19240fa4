//! berth's one error vocabulary: containerd's errdefs classes as one [`Error`] type (a [`Kind`],
//! a message saying what failed, and optionally the error that caused it), and — behind the
//! `grpc` feature — the one mapping between those kinds and gRPC status codes, both ways.
//!
//! Library crates keep their own error enums and convert into [`Error`], choosing the kind; no
//! crate other than this one maps anything to a gRPC code.

use std::fmt;
use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// containerd's error classes (errdefs), one per gRPC code they map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// A resource is busy or a peer cannot be reached; the client may retry.
    Unavailable,
    /// A bounded wait ran out (a shim, a proxy plugin, a registry).
    DeadlineExceeded,
    Unimplemented,
    ResourceExhausted,
    OutOfRange,
    Canceled,
    Aborted,
    PermissionDenied,
    /// The caller's credentials were missing or refused (a registry's 401).
    Unauthenticated,
    /// A bug or a broken invariant: logged where it becomes a gRPC status.
    Internal,
    Unknown,
}

impl Kind {
    /// The name containerd's errdefs uses in messages ("not found", "already exists", ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InvalidArgument => "invalid argument",
            Kind::NotFound => "not found",
            Kind::AlreadyExists => "already exists",
            Kind::FailedPrecondition => "failed precondition",
            Kind::Unavailable => "unavailable",
            Kind::DeadlineExceeded => "deadline exceeded",
            Kind::Unimplemented => "not implemented",
            Kind::ResourceExhausted => "resource exhausted",
            Kind::OutOfRange => "out of range",
            Kind::Canceled => "canceled",
            Kind::Aborted => "aborted",
            Kind::PermissionDenied => "permission denied",
            Kind::Unauthenticated => "unauthenticated",
            Kind::Internal => "internal",
            Kind::Unknown => "unknown",
        }
    }
}

impl Kind {
    /// The class of an I/O error: a missing file is NotFound, a timed-out socket
    /// DeadlineExceeded, anything else Internal.
    pub fn of_io(kind: io::ErrorKind) -> Kind {
        match kind {
            io::ErrorKind::NotFound => Kind::NotFound,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Kind::DeadlineExceeded,
            _ => Kind::Internal,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of one [`Kind`]. Displays as `message`, or `message: source` when it wraps a cause.
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<Source>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// `kind` with `message` as the context of `source` (what was being done when it failed).
    pub fn with_source(kind: Kind, message: impl Into<String>, source: impl Into<Source>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(Kind::InvalidArgument, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, msg)
    }
    pub fn exists(msg: impl Into<String>) -> Self {
        Self::new(Kind::AlreadyExists, msg)
    }
    pub fn precondition(msg: impl Into<String>) -> Self {
        Self::new(Kind::FailedPrecondition, msg)
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, msg)
    }
    pub fn deadline_exceeded(msg: impl Into<String>) -> Self {
        Self::new(Kind::DeadlineExceeded, msg)
    }
    pub fn unimplemented(msg: impl Into<String>) -> Self {
        Self::new(Kind::Unimplemented, msg)
    }
    pub fn resource_exhausted(msg: impl Into<String>) -> Self {
        Self::new(Kind::ResourceExhausted, msg)
    }
    pub fn out_of_range(msg: impl Into<String>) -> Self {
        Self::new(Kind::OutOfRange, msg)
    }
    pub fn canceled(msg: impl Into<String>) -> Self {
        Self::new(Kind::Canceled, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(Kind::Internal, msg)
    }

    /// An I/O error with what was being done, e.g. `Error::io("open blob sha256:…", e)`. The kind
    /// follows the I/O error's: a missing file is NotFound, a timed-out socket DeadlineExceeded.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::with_source(Kind::of_io(source.kind()), context, source)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn is_not_found(&self) -> bool {
        self.kind == Kind::NotFound
    }
    pub fn is_already_exists(&self) -> bool {
        self.kind == Kind::AlreadyExists
    }

    /// The kind of the I/O error this one wraps, if it wraps one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.source
            .as_deref()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .map(io::Error::kind)
    }

    /// The same error with `context` in front of its message (`context: message`).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
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
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(feature = "grpc")]
mod grpc {
    use super::{Error, Kind};
    use tonic::Code;

    impl Kind {
        /// containerd's mapping of errdefs classes to gRPC codes (errdefs/grpc.go).
        pub fn code(self) -> Code {
            match self {
                Kind::InvalidArgument => Code::InvalidArgument,
                Kind::NotFound => Code::NotFound,
                Kind::AlreadyExists => Code::AlreadyExists,
                Kind::FailedPrecondition => Code::FailedPrecondition,
                Kind::Unavailable => Code::Unavailable,
                Kind::DeadlineExceeded => Code::DeadlineExceeded,
                Kind::Unimplemented => Code::Unimplemented,
                Kind::ResourceExhausted => Code::ResourceExhausted,
                Kind::OutOfRange => Code::OutOfRange,
                Kind::Canceled => Code::Cancelled,
                Kind::Aborted => Code::Aborted,
                Kind::PermissionDenied => Code::PermissionDenied,
                Kind::Unauthenticated => Code::Unauthenticated,
                Kind::Internal => Code::Internal,
                Kind::Unknown => Code::Unknown,
            }
        }

        /// The reverse mapping, for clients: what kind a status code from a peer stands for.
        pub fn from_code(code: Code) -> Kind {
            match code {
                Code::InvalidArgument => Kind::InvalidArgument,
                Code::NotFound => Kind::NotFound,
                Code::AlreadyExists => Kind::AlreadyExists,
                Code::FailedPrecondition => Kind::FailedPrecondition,
                Code::Unavailable => Kind::Unavailable,
                Code::DeadlineExceeded => Kind::DeadlineExceeded,
                Code::Unimplemented => Kind::Unimplemented,
                Code::ResourceExhausted => Kind::ResourceExhausted,
                Code::OutOfRange => Kind::OutOfRange,
                Code::Cancelled => Kind::Canceled,
                Code::Aborted => Kind::Aborted,
                Code::PermissionDenied => Kind::PermissionDenied,
                Code::Unauthenticated => Kind::Unauthenticated,
                Code::Internal | Code::DataLoss => Kind::Internal,
                Code::Ok | Code::Unknown => Kind::Unknown,
            }
        }
    }

    /// The one place where berth errors become gRPC statuses.
    impl From<Error> for tonic::Status {
        fn from(err: Error) -> Self {
            let code = err.kind.code();
            if code == Code::Internal {
                tracing::error!(error = %err, "internal error");
            }
            tonic::Status::new(code, err.to_string())
        }
    }

    /// A peer's status as an error of the matching kind (the message is the peer's).
    impl From<tonic::Status> for Error {
        fn from(s: tonic::Status) -> Self {
            Error::new(Kind::from_code(s.code()), s.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_their_context_and_kind() {
        let e = Error::io("open blob", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(e.kind(), Kind::NotFound);
        assert_eq!(e.io_kind(), Some(io::ErrorKind::NotFound));
        assert!(e.to_string().starts_with("open blob: "));
        let t = Error::io("read shim", io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(t.kind(), Kind::DeadlineExceeded);
        let o = Error::io("write", io::Error::other("disk on fire"));
        assert_eq!(o.kind(), Kind::Internal);
        assert_eq!(o.to_string(), "write: disk on fire");
        assert!(std::error::Error::source(&o).is_some());
    }

    #[test]
    fn context_prefixes_the_message() {
        let e = Error::not_found("image x").context("remote snapshotter p");
        assert_eq!(e.to_string(), "remote snapshotter p: image x");
        assert_eq!(e.kind(), Kind::NotFound);
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn every_kind_round_trips_through_its_code() {
        let kinds = [
            Kind::InvalidArgument,
            Kind::NotFound,
            Kind::AlreadyExists,
            Kind::FailedPrecondition,
            Kind::Unavailable,
            Kind::DeadlineExceeded,
            Kind::Unimplemented,
            Kind::ResourceExhausted,
            Kind::OutOfRange,
            Kind::Canceled,
            Kind::Aborted,
            Kind::PermissionDenied,
            Kind::Unauthenticated,
            Kind::Internal,
            Kind::Unknown,
        ];
        for k in kinds {
            let status = tonic::Status::from(Error::new(k, "m"));
            assert_eq!(status.message(), "m");
            assert_eq!(Error::from(status).kind(), k, "{k:?}");
        }
        assert_eq!(
            tonic::Status::from(Error::deadline_exceeded("shim")).code(),
            tonic::Code::DeadlineExceeded
        );
    }
}
