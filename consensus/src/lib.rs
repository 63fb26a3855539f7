//! Tally's consensus core: Tendermint (Algorithm 1 of "The latest gossip on BFT
//! consensus", Buchman, Kwon, Milosevic 2018) as a pure state machine
//! (`Consensus::handle(Input) -> Vec<Output>`: no I/O, no clock, no randomness), and the
//! [`SigningGuard`] every vote and proposal must pass before it is signed.
//!
//! See `README.md` for the contract the engine must follow.

pub mod guard;
pub mod machine;
pub mod types;
pub mod verify;
pub mod votes;

#[cfg(test)]
mod tests;

pub use guard::{
    GuardError, GuardState, GuardStore, LastSigned, MemoryGuardStore, SignStep, SigningGuard,
    MAX_GUARD_STATE_BYTES, MAX_HEIGHT_SIGNED, MAX_VALIDATORS,
};
pub use machine::{Consensus, FUTURE_ROUNDS, MAX_BUFFERED};
pub use types::{
    Config, Equivocation, Input, Locks, Output, RoundValue, Step, Timeout, TimeoutStep, Timeouts,
};
pub use verify::{K256Verifier, PreVerified, SignatureVerifier};
