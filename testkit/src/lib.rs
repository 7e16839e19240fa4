//! What berth's end-to-end tests, the bench and the demo share, so that each exists once.
//! A dev-dependency: nothing in a shipped binary depends on it.

pub mod skip;
