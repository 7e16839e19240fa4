//! berth-build: what `berth build` does that is not a gRPC call. [`dockerfile`] is the front
//! end (parser, variable substitution, ARG scoping, the stage graph, what each instruction does
//! to an image config) and [`dockerignore`] docker's exclusion rules — both pure. [`context`]
//! lists a build context without following symlinks, under a size bound, and digests COPY
//! sources; [`copy`] writes COPY/ADD into a mounted root resolved inside it; [`image`] makes
//! the cache keys, the image config document and the manifest. The executor that drives
//! berthd (snapshots, tasks, Diff, Content, Images) is built on these and tested apart.

pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod dockerignore;
mod error;
pub mod image;

pub use error::Error;
