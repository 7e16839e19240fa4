//! berth-shim's control protocol, shared with the daemon.
//!
//! The shim binary (src/main.rs) is the per-container supervisor; this library holds only
//! the wire types ([`protocol`]) and a small blocking [`client`] (used by tests and tools;
//! berthd speaks the same lines over tokio).

pub mod client;
pub mod protocol;
