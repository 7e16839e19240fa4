//! The shim's control protocol, version 1 (documented for the daemon side in shim/README.md).
//!
//! Newline-delimited JSON over the unix socket `<bundle>/shim.sock`: the client writes one
//! request object per line, the shim answers each with exactly one response line, in order.
//! A connection may carry any number of requests; `wait` holds its connection until the
//! process has exited, so a client that wants to do other things meanwhile opens another
//! connection (they are cheap; the shim serves many at once).
//!
//! Request:  `{"v":1,"op":"<op>", ...op fields}` — `v` is mandatory; another version is
//! refused with `unimplemented`, so a newer daemon can detect an older shim.
//! Response: `{"result":{...}}` or `{"error":{"kind":"<kind>","message":"<op>: ..."}}`.
//!
//! Process selection: `exec_id` "" (or absent, or equal to the container id) means the init
//! process; anything else names an exec.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The version every request must carry in `v`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line the shim accepts (exec specs are the only big payloads).
pub const MAX_REQUEST_LINE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Protocol version, shim version and pid.
    Version,
    /// `runc create` of the bundle's config.json; reply [`PidReply`] (status becomes created).
    /// With `start`, `runc run --detach`: the reply comes once init runs (status running).
    Create(CreateRequest),
    /// `runc start` for init, `runc exec --detach` for an exec; reply [`PidReply`].
    Start {
        #[serde(default)]
        exec_id: String,
    },
    /// Register an exec process (started later with `start`); reply [`Empty`].
    Exec(ExecRequest),
    /// Send a signal; `all` (init only) signals every process of the container.
    Kill {
        #[serde(default)]
        exec_id: String,
        signal: u32,
        #[serde(default)]
        all: bool,
    },
    /// Set the terminal size of a process created with `terminal: true`.
    ResizePty {
        #[serde(default)]
        exec_id: String,
        width: u32,
        height: u32,
    },
    /// Close the shim's spare stdin writer: the process sees EOF once the client's writer is
    /// closed too.
    CloseIo {
        #[serde(default)]
        exec_id: String,
    },
    /// `runc pause` (cgroup freezer); init must be running.
    Pause,
    /// `runc resume`; init must be paused.
    Resume,
    /// `runc ps`; reply [`PidsReply`].
    Pids,
    /// Every process the shim knows (init first, then execs by id); reply [`ListReply`].
    /// What a restarted daemon asks to rebuild its view.
    List,
    /// Reply [`ProcessState`].
    State {
        #[serde(default)]
        exec_id: String,
    },
    /// Block until the process has exited and its output is flushed; reply [`ExitReply`].
    Wait {
        #[serde(default)]
        exec_id: String,
    },
    /// Init: `runc delete` (refused while running/paused unless `force`); exec: forget it
    /// (refused while running). Reply [`ExitReply`].
    Delete {
        #[serde(default)]
        exec_id: String,
        #[serde(default)]
        force: bool,
    },
    /// `runc update` with an OCI `linux.resources` object; reply [`Empty`].
    Update { resources: serde_json::Value },
    /// Exit the shim; refused until the init process is deleted (or was never created).
    Shutdown,
}

impl Request {
    /// The wire name of the operation, used to prefix error messages.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Version => "version",
            Request::Create(_) => "create",
            Request::Start { .. } => "start",
            Request::Exec(_) => "exec",
            Request::Kill { .. } => "kill",
            Request::ResizePty { .. } => "resize_pty",
            Request::CloseIo { .. } => "close_io",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Pids => "pids",
            Request::List => "list",
            Request::State { .. } => "state",
            Request::Wait { .. } => "wait",
            Request::Delete { .. } => "delete",
            Request::Update { .. } => "update",
            Request::Shutdown => "shutdown",
        }
    }
}

/// Stdio of a process. Each path is "" (no stream), a FIFO path (optionally `fifo://`
/// prefixed) that the client created, `file://<path>` for an append-only log file, or
/// `binary://<path>?<args>` for a logging program (stdout and stderr alike; see shim/README.md).
/// With `terminal`, stderr must be "" and stdout carries the pty output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub terminal: bool,
    /// Start init too, in the same runtime command (one `runc run --detach` instead of
    /// `runc create` and `runc start`).
    #[serde(default)]
    pub start: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub exec_id: String,
    /// The OCI `process` object, passed to `runc exec --process` verbatim.
    pub spec: serde_json::Value,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub terminal: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReply {
    pub protocol: u32,
    pub version: String,
    /// The shim's own pid.
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListReply {
    pub processes: Vec<ProcessState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidReply {
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// `google.protobuf.Timestamp`'s shape, so the daemon converts field by field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// The container id for init, the exec id for an exec.
    pub id: String,
    /// 0 until the process exists (an exec before `start`).
    pub pid: u32,
    pub status: Status,
    /// Meaningful only when `status` is stopped.
    pub exit_status: u32,
    pub exited_at: Option<Timestamp>,
    /// The stdio paths exactly as given at create/exec (clients re-open them to attach).
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReply {
    pub pid: u32,
    /// Exit code, or 128 + signal number for a process killed by a signal.
    pub exit_status: u32,
    /// None only for a process that never ran (an exec deleted before start).
    pub exited_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidInfo {
    pub pid: u32,
    /// Set when the pid is an exec process the shim started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsReply {
    pub processes: Vec<PidInfo>,
}

/// The durable exit record, `<bundle>/exits/init` or `<bundle>/exits/<exec-id>`, written
/// (tmp + fsync + rename) before any waiter hears of the exit. A daemon that finds the shim
/// dead reads these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at: Timestamp,
}

impl ExitRecord {
    /// Read `<bundle>/exits/<process>` (`process`: "init" or an exec id); None if absent or
    /// unreadable. For a daemon that finds the shim gone.
    pub fn read(bundle: &std::path::Path, process: &str) -> Option<ExitRecord> {
        let bytes = std::fs::read(bundle.join("exits").join(process)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ShimError>,
}

/// Error kinds, named after the gRPC codes the daemon maps them to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// A wrong state transition (start a running process, pause a stopped one, ...).
    FailedPrecondition,
    Unimplemented,
    /// The shim is shutting down.
    Unavailable,
    /// The runtime did not finish within the shim's `--runtime-timeout-ms` and was killed.
    DeadlineExceeded,
    /// runc or the system failed; also any kind this client version does not know.
    #[serde(other)]
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimError {
    pub kind: ErrorKind,
    /// Starts with the operation name, e.g. "start: process init is running".
    pub message: String,
}

impl ShimError {
    pub fn new(kind: ErrorKind, op: &str, msg: impl fmt::Display) -> Self {
        ShimError {
            kind,
            message: format!("{op}: {msg}"),
        }
    }
}

impl fmt::Display for ShimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.message, self.kind)
    }
}

impl std::error::Error for ShimError {}

/// The protocol's kinds are a subset of errdefs', named alike.
impl From<ErrorKind> for berth_errdefs::Kind {
    fn from(k: ErrorKind) -> Self {
        use berth_errdefs::Kind;
        match k {
            ErrorKind::InvalidArgument => Kind::InvalidArgument,
            ErrorKind::NotFound => Kind::NotFound,
            ErrorKind::AlreadyExists => Kind::AlreadyExists,
            ErrorKind::FailedPrecondition => Kind::FailedPrecondition,
            ErrorKind::Unimplemented => Kind::Unimplemented,
            ErrorKind::Unavailable => Kind::Unavailable,
            ErrorKind::DeadlineExceeded => Kind::DeadlineExceeded,
            ErrorKind::Internal => Kind::Internal,
        }
    }
}

impl From<ShimError> for berth_errdefs::Error {
    fn from(e: ShimError) -> Self {
        berth_errdefs::Error::new(e.kind.into(), e.message)
    }
}

/// Encode a request as one protocol line (with `v` and the trailing newline).
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut v = serde_json::to_value(req).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("v".into(), PROTOCOL_VERSION.into());
    }
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Decode one request line: checks `v`, then the operation.
pub fn decode_request(line: &[u8]) -> Result<Request, ShimError> {
    let bad = |m: String| ShimError::new(ErrorKind::InvalidArgument, "request", m);
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    match v.get("v").and_then(|v| v.as_u64()) {
        Some(n) if n == u64::from(PROTOCOL_VERSION) => {}
        Some(n) => {
            return Err(ShimError::new(
                ErrorKind::Unimplemented,
                "request",
                format!("protocol version {n} not supported (this shim speaks {PROTOCOL_VERSION})"),
            ))
        }
        None => return Err(bad("missing protocol version field \"v\"".into())),
    }
    serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        // An op this shim does not know is a version skew, not a malformed request.
        if msg.starts_with("unknown variant") {
            ShimError::new(ErrorKind::Unimplemented, "request", msg)
        } else {
            bad(format!("bad request: {msg}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let req = Request::Kill {
            exec_id: "e1".into(),
            signal: 9,
            all: false,
        };
        let line = encode_request(&req);
        assert!(line.ends_with(b"\n"));
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains("\"v\":1") && text.contains("\"op\":\"kill\""));
        assert_eq!(decode_request(&line[..line.len() - 1]).unwrap(), req);
    }

    #[test]
    fn defaults_and_versions() {
        let r = decode_request(br#"{"v":1,"op":"wait"}"#).unwrap();
        assert_eq!(r, Request::Wait { exec_id: "".into() });
        let e = decode_request(br#"{"op":"wait"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        let e = decode_request(br#"{"v":2,"op":"wait"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unimplemented);
        let e = decode_request(br#"{"v":1,"op":"fly"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unimplemented);
        let e = decode_request(br#"{"v":1,"op":"kill"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        let k: ErrorKind = serde_json::from_str("\"something_new\"").unwrap();
        assert_eq!(k, ErrorKind::Internal);
    }

    #[test]
    fn a_runtime_timeout_reaches_the_daemon_as_deadline_exceeded() {
        let e: ShimError =
            serde_json::from_str(r#"{"kind":"deadline_exceeded","message":"start: runc start"}"#)
                .unwrap();
        assert_eq!(e.kind, ErrorKind::DeadlineExceeded);
        let e = berth_errdefs::Error::from(e);
        assert_eq!(e.kind(), berth_errdefs::Kind::DeadlineExceeded);
        assert_eq!(e.message(), "start: runc start");
    }
}
