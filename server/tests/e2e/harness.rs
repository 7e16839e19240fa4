//! A real berthd on a throwaway root (berth-testkit's, shared with the bench), under the names the
//! tests use.

pub use berth_testkit::berthd::{ctr_command, process_token, Daemon};
