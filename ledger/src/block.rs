//! Assembling blocks and checking that a block extends the chain (header linkage and the
//! previous block's commit). Execution is in [`crate::exec`].

use crate::exec::BuiltBody;
use crate::hash::{Hash, ZERO_HASH};
use crate::state::StateReader;
use crate::store::{StoreError, Tip};
use crate::types::{
    header_version, Address, Block, Commit, Header, SignedTx, HEADER_VERSION, PROTOCOL_2,
};
use crate::validators::{CommitError, ValidatorSet};

/// Header fields that come from the chain, not from the body.
#[derive(Clone, Debug)]
pub struct BlockTemplate {
    pub chain_id: String,
    pub height: u64,
    pub round: u32,
    pub time_ms: u64,
    pub prev_hash: Hash,
    pub validators_hash: Hash,
    pub proposer: Address,
    /// The commit of `height - 1` (None at height 1).
    pub last_commit: Option<Commit>,
}

/// A protocol-1 block (or the protocol-1 part of [`assemble_v2`]'s) whose header carries
/// the signal `body` was built with ([`crate::upgrade`]).
pub fn assemble(template: BlockTemplate, body: &BuiltBody) -> Block {
    let mut block = assemble_parts(
        template,
        body.tx_root,
        body.outcome.update.root,
        body.txs.clone(),
    );
    block.header.version = header_version(HEADER_VERSION, body.signal);
    block
}

/// A protocol-2 block: version 2, `next_validators_hash` (the hash of the set of
/// `template.height + 1`), and the evidence the body carries. `body` comes from
/// [`crate::exec::build_body_at`].
pub fn assemble_v2(template: BlockTemplate, next_validators_hash: Hash, body: &BuiltBody) -> Block {
    let mut block = assemble(template, body);
    block.header.version = header_version(PROTOCOL_2, body.signal);
    block.header.next_validators_hash = Some(next_validators_hash);
    block.evidence = body.evidence.clone();
    block
}

/// A block without txs on a state whose root is `state_root` (an empty block leaves the
/// state as it is): what tests and the test attacker propose without executing anything.
pub fn assemble_empty(template: BlockTemplate, state_root: Hash) -> Block {
    assemble_parts(
        template,
        crate::merkle::merkle_root(&[]),
        state_root,
        Vec::new(),
    )
}

fn assemble_parts(
    template: BlockTemplate,
    tx_root: Hash,
    state_root: Hash,
    txs: Vec<SignedTx>,
) -> Block {
    Block {
        header: Header {
            version: HEADER_VERSION,
            chain_id: template.chain_id,
            height: template.height,
            round: template.round,
            time_ms: template.time_ms,
            prev_hash: template.prev_hash,
            tx_root,
            state_root,
            validators_hash: template.validators_hash,
            proposer: template.proposer,
            last_commit_hash: template
                .last_commit
                .as_ref()
                .map_or(ZERO_HASH, Commit::hash),
            next_validators_hash: None,
        },
        txs,
        last_commit: template.last_commit,
        evidence: Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header runs protocol {got}; this chain runs protocol {expected} at its height")]
    Version { expected: u32, got: u32 },
    #[error(
        "header signals protocol {got}; a header of protocol {protocol} may signal only \
         protocol {next} or nothing",
        next = protocol + 1
    )]
    Signal { protocol: u32, got: u32 },
    #[error(
        "block is ill-formed: next_validators_hash or evidence present where its header \
         version does not have them"
    )]
    IllFormed,
    #[error("block is for chain \"{got}\", this is \"{expected}\"")]
    WrongChain { expected: String, got: String },
    #[error("block height {got} does not follow the tip {tip}")]
    Height { tip: u64, got: u64 },
    #[error("prev_hash does not match the hash of block {0}")]
    PrevHash(u64),
    #[error("validators_hash does not match the validator set")]
    ValidatorsHash,
    #[error("next_validators_hash does not match the validator set of the next height")]
    NextValidatorsHash,
    #[error("proposer {got} is not the proposer of height {height} round {round}")]
    Proposer {
        height: u64,
        round: u32,
        got: String,
    },
    #[error("block time {got} is before its parent's time {parent}")]
    Time { parent: u64, got: u64 },
    #[error("proposed block time {got} is not after its parent's time {parent}")]
    TimeNotAfterParent { parent: u64, got: u64 },
    #[error(
        "proposed block time {got} is later than this validator's clock allows ({limit}: \
         local time plus params.max_clock_drift_ms)"
    )]
    TimeAhead { got: u64, limit: u64 },
    #[error("last_commit is missing or present where it must not be")]
    LastCommitPresence,
    #[error("last_commit_hash does not match last_commit")]
    LastCommitHash,
    #[error("last_commit is invalid: {0}")]
    LastCommit(CommitError),
}

/// The time an honest proposer gives the block after one timed `parent_ms`: its own
/// clock, or one millisecond after the parent if its clock is behind.
pub fn next_block_time(parent_ms: u64, now_ms: u64) -> u64 {
    now_ms.max(parent_ms.saturating_add(1))
}

/// The proposer-based timestamp rule (DESIGN.md, "Block time"): a validator accepts a
/// proposed block for height `height` only if its time is after its parent's (at height
/// 1: not before genesis) and not later than the validator's own clock plus
/// `max_drift_ms`, except that one millisecond after the parent is always acceptable.
///
/// The exception is what keeps a chain whose last block ran ahead of the clocks (within
/// the drift, the most a block can get through honest prevotes) live: the next honest
/// proposer proposes `parent + 1`. A block time from the far future can never gather the
/// prevotes of an honest validator, so it can never be committed; block times stay within
/// the honest clocks plus the drift. All arithmetic saturates.
///
/// This rule is for proposals only: a committed block carries a commit, and its time is
/// checked by [`check_header`] against its parent alone.
pub fn check_proposal_time(
    parent_ms: u64,
    height: u64,
    time_ms: u64,
    now_ms: u64,
    max_drift_ms: u64,
) -> Result<(), HeaderError> {
    let after_parent = if height <= 1 {
        time_ms >= parent_ms
    } else {
        time_ms > parent_ms
    };
    if !after_parent {
        return Err(HeaderError::TimeNotAfterParent {
            parent: parent_ms,
            got: time_ms,
        });
    }
    let limit = now_ms
        .saturating_add(max_drift_ms)
        .max(parent_ms.saturating_add(1));
    if time_ms > limit {
        return Err(HeaderError::TimeAhead {
            got: time_ms,
            limit,
        });
    }
    Ok(())
}

/// A block body that does not belong to its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the transactions do not match the header's tx_root")]
    TxRoot,
    #[error("last_commit does not match the header's last_commit_hash")]
    LastCommit,
}

/// Checks that `block`'s body is the one its header commits to: the Merkle root of the
/// tx ids is `tx_root` and the hash of `last_commit` (or zero) is `last_commit_hash`.
///
/// The block hash covers the header only, so a relay can pair a signed proposal with
/// another body; this check (a hash per tx, no signature checks) is what lets a node
/// refuse such a body before keeping or forwarding it, and blame the relay.
pub fn check_body(block: &Block) -> Result<(), BodyError> {
    let commit_hash = block.last_commit.as_ref().map_or(ZERO_HASH, Commit::hash);
    if commit_hash != block.header.last_commit_hash {
        return Err(BodyError::LastCommit);
    }
    let ids: Vec<Hash> = block.txs.iter().map(crate::types::SignedTx::id).collect();
    if crate::merkle::merkle_root(&ids) != block.header.tx_root {
        return Err(BodyError::TxRoot);
    }
    Ok(())
}

/// Checks everything about a protocol-1 `block`'s header that does not need execution:
/// that it extends `tip` and carries a valid commit of the parent. `tx_root` and
/// `state_root` are checked by execution. A protocol-2 header is checked by
/// [`check_header_v2`].
pub fn check_header(
    chain_id: &str,
    validators: &ValidatorSet,
    tip: &Tip,
    block: &Block,
) -> Result<(), HeaderError> {
    check_version(&block.header, HEADER_VERSION)?;
    check_header_with(chain_id, validators, validators, tip, block)
}

/// The validator sets a protocol-2 block at some height H is checked against.
#[derive(Clone, Debug)]
pub struct BlockSets {
    /// The set of H - 1, which signed the block's `last_commit` (None at height 1).
    pub last: Option<ValidatorSet>,
    /// The set of H: `validators_hash`, the proposer.
    pub current: ValidatorSet,
    /// The set of H + 1: `next_validators_hash`.
    pub next: ValidatorSet,
}

/// The stored sets of `height - 1`, `height` and `height + 1` on a protocol-2 chain (known
/// once `height - 1` is committed).
pub fn block_sets<R: StateReader + ?Sized>(
    store: &R,
    height: u64,
) -> Result<BlockSets, StoreError> {
    use crate::staking::validator_set_at;
    Ok(BlockSets {
        last: if height > 1 {
            Some(validator_set_at(store, height - 1)?)
        } else {
            None
        },
        current: validator_set_at(store, height)?,
        next: validator_set_at(store, height + 1)?,
    })
}

/// [`check_header`] for protocol 2: version 2, `validators_hash` and the proposer from the
/// set of the block's height, `next_validators_hash` the hash of the next height's set,
/// and the last commit verified with the set of the previous height.
pub fn check_header_v2(
    chain_id: &str,
    sets: &BlockSets,
    tip: &Tip,
    block: &Block,
) -> Result<(), HeaderError> {
    check_version(&block.header, PROTOCOL_2)?;
    if !block.is_well_formed() {
        return Err(HeaderError::IllFormed);
    }
    if block.header.next_validators_hash != Some(sets.next.hash()) {
        return Err(HeaderError::NextValidatorsHash);
    }
    let last = sets.last.as_ref().unwrap_or(&sets.current);
    check_header_with(chain_id, &sets.current, last, tip, block)
}

/// The header runs `protocol` and signals nothing or the protocol after it.
pub fn check_version(header: &Header, protocol: u32) -> Result<(), HeaderError> {
    if header.protocol() != protocol {
        return Err(HeaderError::Version {
            expected: protocol,
            got: header.protocol(),
        });
    }
    match header.signal() {
        Some(got) if got != protocol + 1 => Err(HeaderError::Signal { protocol, got }),
        _ => Ok(()),
    }
}

/// The checks both protocols share: `validators` is the set of the block's height,
/// `last_validators` the set that signed its `last_commit`.
fn check_header_with(
    chain_id: &str,
    validators: &ValidatorSet,
    last_validators: &ValidatorSet,
    tip: &Tip,
    block: &Block,
) -> Result<(), HeaderError> {
    let h = &block.header;
    if !block.is_well_formed() {
        return Err(HeaderError::IllFormed);
    }
    if h.chain_id != chain_id {
        return Err(HeaderError::WrongChain {
            expected: chain_id.into(),
            got: h.chain_id.clone(),
        });
    }
    if h.height != tip.height + 1 {
        return Err(HeaderError::Height {
            tip: tip.height,
            got: h.height,
        });
    }
    if h.prev_hash != tip.block_hash {
        return Err(HeaderError::PrevHash(tip.height));
    }
    if h.validators_hash != validators.hash() {
        return Err(HeaderError::ValidatorsHash);
    }
    if validators.proposer(h.height, h.round).address != h.proposer {
        return Err(HeaderError::Proposer {
            height: h.height,
            round: h.round,
            got: hex::encode(h.proposer),
        });
    }
    if h.height > 1 && h.time_ms < tip.time_ms {
        return Err(HeaderError::Time {
            parent: tip.time_ms,
            got: h.time_ms,
        });
    }
    match (&block.last_commit, h.height) {
        (None, 1) => {
            if h.last_commit_hash != ZERO_HASH {
                return Err(HeaderError::LastCommitHash);
            }
        }
        (Some(c), height) if height > 1 => {
            if c.hash() != h.last_commit_hash {
                return Err(HeaderError::LastCommitHash);
            }
            last_validators
                .verify_commit(chain_id, height - 1, &tip.block_hash, c)
                .map_err(HeaderError::LastCommit)?;
        }
        _ => return Err(HeaderError::LastCommitPresence),
    }
    Ok(())
}

/// The commit `signers` make for `block_hash` at (`height`, `round`): each signs the
/// precommit, signatures sorted by validator address with duplicates removed, as
/// [`ValidatorSet::verify_commit`] requires. The consensus core assembles commits from
/// gossiped votes; this is for tools, tests and benches that hold the keys themselves.
pub fn sign_commit(
    chain_id: &str,
    height: u64,
    round: u32,
    block_hash: Hash,
    signers: &[&crate::crypto::Keypair],
) -> Commit {
    let vote = crate::types::Vote {
        chain_id: chain_id.to_string(),
        height,
        round,
        kind: crate::types::VoteKind::Precommit,
        block_hash: Some(block_hash),
    };
    let mut signatures: Vec<crate::types::CommitSig> = signers
        .iter()
        .map(|k| crate::types::CommitSig {
            validator: k.address(),
            signature: k.sign_vote(vote.clone()).signature,
        })
        .collect();
    signatures.sort_by_key(|s| s.validator);
    signatures.dedup_by_key(|s| s.validator);
    Commit {
        height,
        round,
        block_hash,
        signatures,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::Keypair;
    use crate::types::{Payload, SignedTx, Tx};

    const DRIFT: u64 = 2_000;

    #[test]
    fn a_proposal_from_the_far_future_is_refused_and_the_parent_plus_one_is_not() {
        let (parent, now) = (1_000_000, 1_000_500);
        assert_eq!(check_proposal_time(parent, 5, now, now, DRIFT), Ok(()));
        assert_eq!(
            check_proposal_time(parent, 5, now + DRIFT, now, DRIFT),
            Ok(())
        );
        for bad in [now + DRIFT + 1, now + 3_600_000, u64::MAX] {
            assert!(matches!(
                check_proposal_time(parent, 5, bad, now, DRIFT),
                Err(HeaderError::TimeAhead { .. })
            ));
        }
        // Not after the parent.
        for bad in [parent, parent - 1, 0] {
            assert!(matches!(
                check_proposal_time(parent, 5, bad, now, DRIFT),
                Err(HeaderError::TimeNotAfterParent { .. })
            ));
        }
        // A parent that ran ahead of our clock (within the drift it was accepted with):
        // the honest proposer's `parent + 1` is still acceptable, a later time is not.
        let ahead = now + 10 * DRIFT;
        assert_eq!(next_block_time(ahead, now), ahead + 1);
        assert_eq!(check_proposal_time(ahead, 5, ahead + 1, now, DRIFT), Ok(()));
        assert!(check_proposal_time(ahead, 5, ahead + 2, now, DRIFT).is_err());
        // Height 1 may carry the genesis time itself.
        assert_eq!(check_proposal_time(0, 1, 0, now, DRIFT), Ok(()));
    }

    #[test]
    fn time_arithmetic_saturates_at_the_ends() {
        assert_eq!(next_block_time(u64::MAX, 5), u64::MAX);
        assert!(check_proposal_time(u64::MAX, 9, u64::MAX, u64::MAX, u64::MAX).is_err());
        assert_eq!(
            check_proposal_time(0, 9, u64::MAX, u64::MAX, u64::MAX),
            Ok(())
        );
        assert!(check_proposal_time(0, 9, u64::MAX, 0, DRIFT).is_err());
    }

    fn block_with_txs(n: u8) -> Block {
        let key = Keypair::from_secret_bytes(&[7; 32]).unwrap();
        let txs: Vec<SignedTx> = (0..n)
            .map(|i| {
                key.sign_tx(Tx {
                    chain_id: "c".into(),
                    from: key.public_key(),
                    nonce: u64::from(i),
                    fee: 1,
                    payload: Payload::Transfer {
                        to: [i; 20],
                        amount: 1,
                    },
                })
            })
            .collect();
        let last_commit = sign_commit("c", 1, 0, [3; 32], &[&key]);
        let ids: Vec<Hash> = txs.iter().map(SignedTx::id).collect();
        Block {
            header: Header {
                version: HEADER_VERSION,
                chain_id: "c".into(),
                height: 2,
                round: 0,
                time_ms: 1,
                prev_hash: [3; 32],
                tx_root: crate::merkle::merkle_root(&ids),
                state_root: [0; 32],
                validators_hash: [0; 32],
                proposer: key.address(),
                last_commit_hash: last_commit.hash(),
                next_validators_hash: None,
            },
            txs,
            last_commit: Some(last_commit),
            evidence: Vec::new(),
        }
    }

    #[test]
    fn a_body_swapped_under_a_header_is_caught() {
        let block = block_with_txs(3);
        assert_eq!(check_body(&block), Ok(()));

        let mut dropped = block.clone();
        dropped.txs.pop();
        assert_eq!(
            dropped.hash(),
            block.hash(),
            "the hash covers the header only"
        );
        assert_eq!(check_body(&dropped), Err(BodyError::TxRoot));

        let mut reordered = block.clone();
        reordered.txs.swap(0, 1);
        assert_eq!(check_body(&reordered), Err(BodyError::TxRoot));

        let mut no_commit = block.clone();
        no_commit.last_commit = None;
        assert_eq!(check_body(&no_commit), Err(BodyError::LastCommit));

        let mut other_commit = block.clone();
        if let Some(c) = other_commit.last_commit.as_mut() {
            c.signatures.clear();
        }
        assert_eq!(check_body(&other_commit), Err(BodyError::LastCommit));

        assert_eq!(check_body(&block_with_txs(0)), Ok(()));
    }
}
