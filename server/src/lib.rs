//! berthd: a container-management daemon serving containerd's v1 gRPC API.
//!
//! Layout: `services` (gRPC, thin) → domain modules `metadata`, `content`, `events` (no gRPC) →
//! storage (`metadata::backend`, files under the root). `daemon` wires them together.

pub mod blocking;
pub mod config;
pub mod controllers;
pub mod daemon;
pub mod events;
pub mod fsutil;
pub mod remote_snapshotter;
pub mod runtime;
pub mod services;
pub mod snapshots;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
