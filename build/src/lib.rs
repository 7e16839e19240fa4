//! berth-build: everything `berth build` needs that is not the daemon. Today that is the
//! Dockerfile front end ([`dockerfile`]: parser, variable substitution, ARG scoping, the stage
//! graph and what each instruction does to an image config) and docker's `.dockerignore`
//! rules ([`dockerignore`]); both are pure and synchronous, so the executor that drives berthd
//! (snapshots, tasks, Diff, Content, Images) can be tested apart from them.

pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod dockerignore;
mod error;

pub use error::Error;
