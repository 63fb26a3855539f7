//! Ledger integration tests (one binary to keep link time low).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod props;
mod protocol2;
mod staking;
#[cfg(feature = "rocksdb")]
mod store;
mod upgrade;
mod vectors;
mod vectors_v2;
