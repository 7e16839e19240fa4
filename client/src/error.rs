//! The library's one error type: what went wrong, with the gRPC code it stands for, so a caller
//! (the CLI, a program) decides on the class, not on message text.

use std::path::PathBuf;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to berthd at {path}: {}", root_cause(.source))]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// The daemon answered with an error status; its code and message are kept as sent.
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// A failure found on this side of the socket, classed like the daemon's.
    #[error("{message}")]
    Local { code: Code, message: String },
    /// The process could not be started: its executable is missing (docker's exit code 127)
    /// or cannot be invoked (126).
    #[error("{message}")]
    Exec { kind: ExecFailure, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The innermost error of a chain. tonic's transport error says only "transport error"; its
/// cause (no such file, connection refused, permission denied) is what a user can act on.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(inner) = e.source() {
        e = inner;
    }
    e.to_string()
}

/// Why a process did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecFailure {
    NotFound,
    CannotInvoke,
}

impl Error {
    /// The gRPC code the error stands for: the daemon's own, or the class of a local failure.
    pub fn code(&self) -> Code {
        match self {
            Error::Connect { .. } => Code::Unavailable,
            Error::Rpc(s) => s.code(),
            Error::Local { code, .. } => *code,
            Error::Exec { kind, .. } => match kind {
                ExecFailure::NotFound => Code::NotFound,
                ExecFailure::CannotInvoke => Code::PermissionDenied,
            },
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => Code::NotFound,
                std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
                _ => Code::Internal,
            },
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Code::NotFound
    }

    pub(crate) fn local(code: Code, message: impl Into<String>) -> Error {
        Error::Local {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::local(Code::InvalidArgument, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Error {
        Error::local(Code::NotFound, message)
    }

    /// Class a failed Tasks.Create/Start/Exec as docker does: runc's message says whether the
    /// executable is missing or cannot be run; anything else stays as it was.
    pub(crate) fn classify_start(self) -> Error {
        let message = self.to_string();
        let lower = message.to_lowercase();
        let kind = if lower.contains("executable file not found")
            || lower.contains("no such file or directory")
        {
            ExecFailure::NotFound
        } else if lower.contains("permission denied") || lower.contains("exec format error") {
            ExecFailure::CannotInvoke
        } else {
            return self;
        };
        Error::Exec { kind, message }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// In berth's one vocabulary: an unreachable socket is Unavailable, a status keeps its class.
impl From<Error> for berth_errdefs::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Connect { path, source } => berth_errdefs::Error::with_source(
                berth_errdefs::Kind::Unavailable,
                format!("connect to {}", path.display()),
                source,
            ),
            Error::Rpc(status) => status.into(),
            other => tonic::Status::new(other.code(), other.to_string()).into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_failed_connect_names_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("berthd.sock");
        let msg = crate::connect(&absent).await.unwrap_err().to_string();
        assert!(msg.contains("No such file or directory"), "{msg}");

        // A socket file nobody listens on: what a daemon killed with -9 leaves.
        drop(std::os::unix::net::UnixListener::bind(&absent).unwrap());
        let msg = crate::connect(&absent).await.unwrap_err().to_string();
        assert!(msg.contains("Connection refused"), "{msg}");
    }
}
