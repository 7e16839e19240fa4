//! The `berth` command line.
pub mod format;
