//! Protocol upgrades without a coordinator (issue 21): proposers signal the next protocol in
//! their headers, the chain records "protocol N+1 from height A" in its state once enough
//! voting power signals, and every node switches at A.
//!
//! **Signalling.** A header's `version` is `protocol | (signalled << 16)`
//! ([`crate::types::SIGNAL_SHIFT`]): a proposer whose binary can run protocol N+1 on this
//! chain puts N+1 in the high bits of the blocks it proposes at protocol N; any other
//! signal is refused. A block that signals nothing has the bytes and hash it always had.
//!
//! **Readiness** at the end of block H (protocol N, next = N+1): the window is the last
//! `params.upgrade_window` (W) blocks, H - W + 1 ..= H; a chain younger than W blocks
//! never activates. A validator of the set of H is *ready* if the last block it proposed
//! in the window signals N+1 (one that proposed none in the window is not). When the
//! ready validators hold **>= 2/3** of the set's total power (`3 * ready >= 2 * total`),
//! the block records "protocol N+1 from height H + `params.upgrade_lead`" in the state,
//! once: a protocol already recorded is never recorded again. Readiness can only rise at
//! a block that signals N+1 (any other block makes its proposer unready, and a block
//! leaving the window can only make its proposer absent), so execution counts only at
//! such blocks: a chain whose proposers do not signal reads no extra header.
//!
//! **State.** The activation record lives in the account tree like protocol 2's entries
//! ([`crate::staking`]), under its own key domain:
//!
//! | kind | preimage (exact bytes) | length | value (borsh) |
//! |---|---|---|---|
//! | activation record | `"tally/protocol/"` (15) ‖ protocol u32 BE (4) | 19 | `u64`: the first height that runs it |
//!
//! The tag is no prefix of another and no other domain's preimage is 19 bytes long. No
//! entry is written until an activation is recorded, so a protocol-1 chain's state root
//! is the same as before this machinery existed up to that block. It is a function of the
//! committed headers and state, so a syncing node replays it identically.
//!
//! [`ProtocolSchedule`] is "the protocol at height h": the genesis protocol, then each
//! recorded activation from its height.

use crate::genesis::Params;
use crate::state::StateReader;
use crate::store::StoreError;
use crate::types::{Address, Header};
use crate::validators::ValidatorSet;

/// Domain tag of activation records.
pub const PROTOCOL_KEY_TAG: &[u8] = b"tally/protocol/";
/// Preimage length of an activation record.
pub const PROTOCOL_KEY_LEN: usize = 15 + 4;

/// The preimage of the activation record of `protocol`.
pub fn protocol_key_bytes(protocol: u32) -> [u8; PROTOCOL_KEY_LEN] {
    let mut key = [0u8; PROTOCOL_KEY_LEN];
    key[..15].copy_from_slice(PROTOCOL_KEY_TAG);
    key[15..].copy_from_slice(&protocol.to_be_bytes());
    key
}

/// The highest protocol this ledger executes on a chain whose genesis runs
/// `genesis_protocol`: [`crate::types::MAX_PROTOCOL`]. A protocol-1 chain switches to
/// protocol 2 at the end of the block before the activation height
/// (`exec::Executor`'s switch).
pub fn max_runnable(genesis_protocol: u32) -> u32 {
    let _ = genesis_protocol;
    crate::types::MAX_PROTOCOL
}

/// What a proposer whose binary runs protocols up to `max` signals in a block at
/// `protocol`: the next protocol, if it runs it.
pub fn signal_for(max: u32, protocol: u32) -> Option<u32> {
    (protocol < max).then_some(protocol + 1)
}

/// "The protocol at height h": the genesis protocol, then each recorded activation from
/// its first height.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolSchedule {
    genesis: u32,
    /// (protocol, first height), ascending.
    activations: Vec<(u32, u64)>,
}

impl ProtocolSchedule {
    /// The schedule of a chain with no activation recorded.
    pub fn from_genesis(params: &Params) -> Self {
        Self {
            genesis: params.protocol_version,
            activations: Vec::new(),
        }
    }

    /// The schedule as the committed state records it.
    pub fn read<R: StateReader + ?Sized>(store: &R, params: &Params) -> Result<Self, StoreError> {
        let mut schedule = Self::from_genesis(params);
        for (preimage, bytes) in store.entries_with_prefix(PROTOCOL_KEY_TAG)? {
            let protocol = preimage
                .get(15..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes);
            let height: Option<u64> = borsh::from_slice(&bytes).ok();
            match (protocol, height) {
                (Some(p), Some(h)) => schedule.activations.push((p, h)),
                _ => {
                    return Err(StoreError::Corrupt {
                        what: format!("activation record {}", hex::encode(&preimage)),
                        detail: "not a protocol (u32 BE) and a height (u64)".into(),
                    })
                }
            }
        }
        schedule.activations.sort_unstable();
        Ok(schedule)
    }

    /// The protocol the chain runs from genesis.
    pub fn genesis(&self) -> u32 {
        self.genesis
    }

    /// The protocol of the block at `height`.
    pub fn at(&self, height: u64) -> u32 {
        self.activations
            .iter()
            .rev()
            .find(|(_, from)| *from <= height)
            .map_or(self.genesis, |(p, _)| *p)
    }

    /// The first height of `protocol`, if its activation is recorded.
    pub fn activation_of(&self, protocol: u32) -> Option<u64> {
        self.activations
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, h)| *h)
    }

    /// The recorded activation that has not taken effect at `height` yet:
    /// (protocol, first height).
    pub fn pending(&self, height: u64) -> Option<(u32, u64)> {
        self.activations
            .iter()
            .find(|(_, from)| *from > height)
            .copied()
    }
}

/// Signals counted over a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// The protocol signalled for.
    pub next: u32,
    /// Power of the validators whose last block in the window signals `next`.
    pub ready_power: u64,
    /// The set's total power.
    pub total_power: u64,
    /// Blocks counted: `params.upgrade_window`, or fewer on a younger chain.
    pub blocks: u64,
    /// `params.upgrade_window`.
    pub window: u64,
}

impl Readiness {
    /// The ready share of the power, 0.0 ..= 1.0.
    pub fn fraction(&self) -> f64 {
        if self.total_power == 0 {
            return 0.0;
        }
        self.ready_power as f64 / self.total_power as f64
    }

    /// A full window whose ready validators hold at least two thirds of the power.
    pub fn activates(&self) -> bool {
        self.blocks >= self.window
            && u128::from(self.ready_power) * 3 >= u128::from(self.total_power) * 2
    }
}

/// Counts the signals for `next` among `set` in `window` (each block's proposer and
/// signal, oldest first), `window_len` being `params.upgrade_window`.
pub fn count(
    set: &ValidatorSet,
    next: u32,
    window: &[(Address, Option<u32>)],
    window_len: u64,
) -> Readiness {
    let mut seen: Vec<Address> = Vec::new();
    let mut ready_power: u64 = 0;
    // Newest first: a validator's first block met is its last in the window.
    for (proposer, signal) in window.iter().rev() {
        if seen.contains(proposer) {
            continue;
        }
        seen.push(*proposer);
        if *signal == Some(next) {
            ready_power = ready_power.saturating_add(set.power_of(proposer));
        }
    }
    Readiness {
        next,
        ready_power,
        total_power: set.total_power(),
        blocks: window.len() as u64,
        window: window_len,
    }
}

/// The readiness for the protocol after `protocol` over the window that ends with the
/// committed block at `tip` (None at genesis).
pub fn readiness_at<R: StateReader + ?Sized>(
    store: &R,
    params: &Params,
    set: &ValidatorSet,
    protocol: u32,
    tip: u64,
) -> Result<Readiness, StoreError> {
    let first = tip
        .saturating_sub(params.upgrade_window)
        .saturating_add(1)
        .max(1);
    let mut window = Vec::new();
    for h in first..=tip {
        let header = committed_header(store, h)?;
        window.push((header.proposer, header.signal()));
    }
    Ok(count(set, protocol + 1, &window, params.upgrade_window))
}

fn committed_header<R: StateReader + ?Sized>(store: &R, height: u64) -> Result<Header, StoreError> {
    store
        .committed_header(height)?
        .ok_or_else(|| StoreError::Db(format!("block {height} is not stored")))
}

/// The block whose end counts the signals: its height, proposer and signal.
#[derive(Clone, Copy, Debug)]
pub struct Signalled {
    pub height: u64,
    pub proposer: Address,
    pub signal: Option<u32>,
}

/// The activation the end of `block` records, if any: (preimage, value) of the record of
/// the next protocol. `set` is the validator set of the block's height and `schedule`
/// the schedule before the block; the block itself counts, the `upgrade_window - 1`
/// blocks before it are read from `store`.
pub fn activation_after<R: StateReader + ?Sized>(
    store: &R,
    params: &Params,
    schedule: &ProtocolSchedule,
    set: &ValidatorSet,
    block: Signalled,
) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    let h = block.height;
    let next = schedule.at(h) + 1;
    if block.signal != Some(next)
        || schedule.activation_of(next).is_some()
        || h < params.upgrade_window
    {
        return Ok(None);
    }
    let mut window = Vec::with_capacity(params.upgrade_window as usize);
    for height in h + 1 - params.upgrade_window..h {
        let past = committed_header(store, height)?;
        window.push((past.proposer, past.signal()));
    }
    window.push((block.proposer, block.signal));
    if !count(set, next, &window, params.upgrade_window).activates() {
        return Ok(None);
    }
    let from = h.saturating_add(params.upgrade_lead);
    Ok(Some((protocol_key_bytes(next).to_vec(), from)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::Validator;

    fn set(powers: &[u64]) -> ValidatorSet {
        ValidatorSet::new(
            powers
                .iter()
                .enumerate()
                .map(|(i, p)| Validator {
                    address: [i as u8 + 1; 20],
                    pubkey: [2; 33],
                    power: *p,
                })
                .collect(),
        )
        .unwrap()
    }

    fn v(i: u8) -> Address {
        [i; 20]
    }

    #[test]
    fn a_validator_counts_by_its_last_block_in_the_window() {
        let s = set(&[1, 1, 1, 1]);
        // 1 signalled then stopped; 2 did not then did; 3 signalled; 4 never proposed.
        let window = [
            (v(1), Some(2)),
            (v(2), None),
            (v(3), Some(2)),
            (v(1), None),
            (v(2), Some(2)),
        ];
        let r = count(&s, 2, &window, 5);
        assert_eq!((r.ready_power, r.total_power), (2, 4));
        assert!(!r.activates());
        assert!((r.fraction() - 0.5).abs() < 1e-9);
        // A signal for another protocol is no signal.
        let r = count(&s, 2, &[(v(1), Some(3)), (v(2), Some(2))], 2);
        assert_eq!(r.ready_power, 1);
    }

    #[test]
    fn two_thirds_exactly_activates_and_less_does_not() {
        // 3 of 4.5: 2/3 exactly.
        let s = set(&[2, 2, 2, 3]);
        let window = [(v(1), Some(2)), (v(2), Some(2)), (v(3), Some(2))];
        let r = count(&s, 2, &window, 3);
        assert_eq!((r.ready_power, r.total_power), (6, 9));
        assert!(r.activates(), ">= 2/3 activates");
        let r = count(&s, 2, &window[..2], 2);
        assert!(!r.activates());
        // A window shorter than W (a young chain) never activates.
        let r = count(&s, 2, &window, 4);
        assert!(!r.activates());
        // Unknown proposers add nothing.
        let r = count(&s, 2, &[(v(9), Some(2)); 3], 3);
        assert_eq!(r.ready_power, 0);
    }

    #[test]
    fn the_schedule_switches_at_the_recorded_height() {
        let mut s = ProtocolSchedule::from_genesis(&Params::default());
        assert_eq!((s.at(0), s.at(u64::MAX)), (1, 1));
        assert_eq!(s.pending(0), None);
        s.activations.push((2, 30));
        assert_eq!((s.at(29), s.at(30), s.at(31)), (1, 2, 2));
        assert_eq!(s.pending(29), Some((2, 30)));
        assert_eq!(s.pending(30), None);
        assert_eq!(s.activation_of(2), Some(30));
    }

    #[test]
    fn the_key_is_tag_then_protocol_big_endian() {
        let key = protocol_key_bytes(2);
        assert_eq!(&key[..], b"tally/protocol/\x00\x00\x00\x02");
        for other in [
            crate::staking::BOND_KEY_TAG,
            crate::staking::VALIDATOR_KEY_TAG,
            crate::staking::UNBONDING_KEY_TAG,
            crate::staking::EVIDENCE_KEY_TAG,
            crate::staking::BURNED_KEY,
        ] {
            assert!(!other.starts_with(PROTOCOL_KEY_TAG) && !PROTOCOL_KEY_TAG.starts_with(other));
        }
        assert!(![20, 64, 49, 52, 56, 12].contains(&PROTOCOL_KEY_LEN));
    }

    #[test]
    fn a_binary_signals_the_next_protocol_if_it_runs_it() {
        assert_eq!((max_runnable(1), max_runnable(2)), (2, 2));
        assert_eq!(signal_for(2, 1), Some(2));
        assert_eq!(signal_for(1, 1), None);
        assert_eq!(signal_for(2, 2), None);
    }
}
