//! Integration tests of the network task: real libp2p over loopback, ports 0, every wait
//! bounded by a deadline. Each test uses its own 127.x.y.z addresses.

// A test binary: a failed unwrap is a failed test. (clippy's allow-unwrap-in-tests only
// covers `#[test]` functions, not the helpers they share.)
#![allow(clippy::unwrap_used)]

mod support;

mod ban;
mod gossip;
mod halfopen;
mod priority;
mod quic;
mod sybil;
mod sync;
mod transport;
