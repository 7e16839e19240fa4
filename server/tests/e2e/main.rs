//! End-to-end tests: a real berthd on a temp root, driven by clients nobody here wrote — the real
//! `ctr` (Debian's containerd package) and the `containerd-client` crate (generated from upstream
//! protos). One test binary, so the workspace links it once.

mod api;
mod clients;
mod ctr;
mod events;
mod fixtures;
mod harness;
mod images;
mod registry;
mod snapshots;
mod tasks;
