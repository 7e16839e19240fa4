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
pub mod userns;
pub mod volumes;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The containerd release whose API berthd serves (the API module of containerd 2.4; patch 0
/// because berthd claims that release's API, not any patch release's fixes).
pub const CONTAINERD_API_VERSION: &str = "2.4.0";

/// What Version/Version answers: containerd's version scheme, since clients choose their code
/// paths by it (nerdctl uses the Transfer service only from 2.0), with berth's own version as
/// semver build metadata, which version comparisons ignore: `2.4.0+berth.0.1.0`.
pub fn reported_version() -> String {
    format!("{CONTAINERD_API_VERSION}+berth.{VERSION}")
}
