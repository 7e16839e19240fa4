//! The front end's one error: what is wrong, and the Dockerfile line it is on when there is one.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    /// 1-based line of the instruction's first physical line.
    pub line: Option<usize>,
    pub message: String,
}

impl Error {
    pub fn at(line: usize, message: impl Into<String>) -> Self {
        Error {
            line: Some(line),
            message: message.into(),
        }
    }

    pub fn new(message: impl Into<String>) -> Self {
        Error {
            line: None,
            message: message.into(),
        }
    }

    /// Puts a line on an error raised below the instruction (substitution, flags) without one.
    pub(crate) fn or_line(mut self, line: usize) -> Self {
        self.line.get_or_insert(line);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "Dockerfile line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
