//! Controllers: the loops that read several domain modules at once and act across them. They sit
//! above metadata, content, snapshots and the runtime, which never call up into them.
//!
//! - `gc`: containerd's garbage collector (images, containers, leases → content and snapshots).
//! - `leases`: lease expiry (metadata → the collector's roots).
//! - `restart`: containerd's restart monitor (container labels → tasks).
//!
//! The CRI's sandbox controller belongs here next.

pub mod gc;
pub mod leases;
pub mod restart;
