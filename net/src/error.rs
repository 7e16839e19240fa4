//! The crate's one error type; it converts into berth-errdefs' `Error`, choosing the kind there.

use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A plugin answered with an error (CNI's error object, or a non-zero exit).
    #[error("CNI plugin {plugin} {command} (network {network}): {message}")]
    Plugin {
        plugin: String,
        command: String,
        network: String,
        message: String,
    },
    #[error("CNI plugin {plugin} {command} (network {network}): no answer within {after:?}")]
    PluginTimeout {
        plugin: String,
        command: String,
        network: String,
        after: Duration,
    },
    #[error("CNI plugin {plugin} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("invalid network config {path}: {message}")]
    Config { path: String, message: String },
    #[error("CNI result of {plugin}: {message}")]
    Result { plugin: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
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

    pub(crate) fn io_at(what: &str, path: &Path, source: std::io::Error) -> Error {
        Error::io(format!("{what} {}", path.display()), source)
    }

    pub(crate) fn sys(context: impl Into<String>, source: nix::Error) -> Error {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error::InvalidArgument(msg.into())
    }

    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound(_) => true,
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

impl From<Error> for berth_errdefs::Error {
    fn from(e: Error) -> Self {
        use berth_errdefs::Kind;
        let kind = match &e {
            Error::InvalidArgument(_) | Error::Config { .. } => Kind::InvalidArgument,
            Error::NotFound(_) => Kind::NotFound,
            Error::AlreadyExists(_) => Kind::AlreadyExists,
            Error::FailedPrecondition(_) | Error::PluginNotFound { .. } => Kind::FailedPrecondition,
            Error::PluginTimeout { .. } => Kind::DeadlineExceeded,
            Error::Plugin { .. } | Error::Result { .. } | Error::Sys { .. } => Kind::Internal,
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => Kind::NotFound,
                std::io::ErrorKind::TimedOut => Kind::DeadlineExceeded,
                _ => Kind::Internal,
            },
        };
        berth_errdefs::Error::new(kind, e.to_string())
    }
}
