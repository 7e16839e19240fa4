//! A minimal blocking client for the shim protocol.

use crate::protocol::{encode_request, Request, Response, ShimError};
use serde::de::DeserializeOwned;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug)]
pub enum CallError {
    Io(io::Error),
    /// The shim answered with an error.
    Shim(ShimError),
    /// The shim answered something this client cannot decode.
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Io(e) => write!(f, "shim connection: {e}"),
            CallError::Shim(e) => write!(f, "{e}"),
            CallError::Protocol(m) => write!(f, "shim protocol: {m}"),
        }
    }
}

impl std::error::Error for CallError {}

/// A timed-out read is DeadlineExceeded, an unreachable shim Unavailable, a reply this client
/// cannot read Internal; the shim's own errors keep their kind.
impl From<CallError> for berth_errdefs::Error {
    fn from(e: CallError) -> Self {
        use berth_errdefs::{Error, Kind};
        match e {
            CallError::Io(e) => match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    Error::with_source(Kind::DeadlineExceeded, "shim connection", e)
                }
                _ => Error::with_source(Kind::Unavailable, "shim connection", e),
            },
            CallError::Shim(e) => e.into(),
            CallError::Protocol(m) => Error::internal(format!("shim protocol: {m}")),
        }
    }
}

impl From<io::Error> for CallError {
    fn from(e: io::Error) -> Self {
        CallError::Io(e)
    }
}

pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(socket: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Client {
            reader: BufReader::new(UnixStream::connect(socket)?),
        })
    }

    /// Bound every call (None: block forever, as `wait` needs).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(t)?;
        self.reader.get_ref().set_write_timeout(t)
    }

    /// Send one request and decode its result as `T`.
    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, CallError> {
        self.send(req)?;
        self.recv()
    }

    /// Send a request without reading its reply (pipelining, or a `wait` read elsewhere).
    pub fn send(&mut self, req: &Request) -> io::Result<()> {
        self.reader.get_mut().write_all(&encode_request(req))
    }

    /// Read the next reply, in request order.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, CallError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(CallError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let resp: Response =
            serde_json::from_str(&line).map_err(|e| CallError::Protocol(e.to_string()))?;
        match (resp.result, resp.error) {
            (_, Some(e)) => Err(CallError::Shim(e)),
            (Some(v), None) => {
                serde_json::from_value(v).map_err(|e| CallError::Protocol(e.to_string()))
            }
            (None, None) => Err(CallError::Protocol(
                "response has neither result nor error".into(),
            )),
        }
    }
}
