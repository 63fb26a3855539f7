//! tallyd: the Tally node. See README.md for the data flow between its tasks.

pub mod actors;
pub mod chain;
pub mod compact;
pub mod config;
pub mod driver;
pub mod fsck;
pub mod keys;
pub mod mempool;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod recent;
pub mod repair;
pub mod router;
pub mod rpc;
pub mod sets;
pub mod status;
pub mod sync;
#[cfg(test)]
pub(crate) mod testing;
pub mod testnet;
pub mod txgossip;
pub mod upgrade;
pub mod wire;
