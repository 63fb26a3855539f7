//! Tally's ledger: the normative types and formats, crypto, the state transition and
//! storage. A plain library: no async runtime, no networking.

pub mod block;
pub mod check;
pub mod codec;
pub mod crypto;
pub mod exec;
pub mod genesis;
pub mod hash;
pub mod merkle;
pub mod staking;
pub mod state;
pub mod store;
pub mod types;
pub mod upgrade;
pub mod validators;

pub use hash::{sha256, to_hex, Hash, ZERO_HASH};
pub use types::*;
