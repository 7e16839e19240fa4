//! End-to-end tests: a real berthd on a temp root (berth-testkit's harness), driven by clients
//! nobody here wrote — the real `ctr` (Debian's containerd 1.6 package, and containerd v2's),
//! containerd's v2 Go client (compat/containerd-v2) and the `containerd-client` crate's clients
//! (generated from upstream protos), over channels made by our `berth` client crate. One test
//! binary, so the workspace links it once.

mod api;
mod archive;
mod authority;
mod clients;
mod containerd_v2;
mod ctr;
mod events;
mod fixtures;
mod harness;
mod images;
mod network;
mod observe;
mod registry;
mod snapshots;
mod tasks;
mod transfer;
mod unpack;
