//! berthd: a container-management daemon serving containerd's v1 gRPC API.
//!
//! berthd is the composition; the domains live in crates of their own (berth-metadata,
//! berth-content, berth-layer, berth-cgroups, berth-snapshotter) under one error vocabulary
//! (berth-errdefs). Layout, arrows pointing down only:
//! `services` (gRPC, thin) → `controllers` (gc, restart monitor: loops over several domains) →
//! `runtime` (tasks), `network` (CNI, through berth-net), `volumes`, `snapshots`, `events` and the domain crates → shared helpers (`blocking`,
//! `fsutil`). `config` is read once by `main`; `daemon` wires everything together.

pub mod applier;
pub mod blocking;
pub mod config;
pub mod controllers;
pub mod daemon;
pub mod events;
pub mod fsutil;
pub mod metrics;
pub mod network;
pub mod remote_snapshotter;
pub mod runtime;
pub mod services;
pub mod snapshots;
pub mod streams;
pub mod telemetry;
pub mod transfer;
pub mod volumes;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
