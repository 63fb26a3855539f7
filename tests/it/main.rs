//! Real-stack tests: tallyd child processes with real libp2p, RocksDB and HTTP on
//! loopback, ports chosen by the OS, temp dirs. Waits are conditions with deadlines.

#![allow(clippy::unwrap_used)]

mod activation;
mod byzantine;
mod chain;
mod compact;
mod crash;
mod dev;
mod faults;
mod genesis;
mod jail;
mod lightclient;
mod mempool;
mod metrics;
mod netcrowd;
mod netfaults;
mod rpc;
mod staking;
mod sync;
mod testnet;
mod upgrade;
mod validators;
