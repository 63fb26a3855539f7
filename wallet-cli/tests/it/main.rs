//! The wallet's integration tests: one binary (link time on two cores), no node needed.
//! `cli` runs the real `tally` binary against the in-memory `fake_node`.

// Helpers outside #[test] fns (the fake node, the binary runner) are test code too: a
// failed unwrap there is a failed test, which is what we want.
#![allow(clippy::unwrap_used)]

mod cli;
mod cli_support;
mod fake_node;
mod keystore;
mod real_node;
mod stake;
mod vectors;
mod verify;
