//! Assembling blocks and checking that a block extends the chain (header linkage and the
//! previous block's commit). Execution is in [`crate::exec`].

use crate::exec::BuiltBody;
use crate::hash::{Hash, ZERO_HASH};
use crate::store::Tip;
use crate::types::{Address, Block, Commit, Header, HEADER_VERSION};
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

pub fn assemble(template: BlockTemplate, body: &BuiltBody) -> Block {
    Block {
        header: Header {
            version: HEADER_VERSION,
            chain_id: template.chain_id,
            height: template.height,
            round: template.round,
            time_ms: template.time_ms,
            prev_hash: template.prev_hash,
            tx_root: body.tx_root,
            state_root: body.outcome.update.root,
            validators_hash: template.validators_hash,
            proposer: template.proposer,
            last_commit_hash: template
                .last_commit
                .as_ref()
                .map_or(ZERO_HASH, Commit::hash),
        },
        txs: body.txs.clone(),
        last_commit: template.last_commit,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header version {0} is not supported (expected {HEADER_VERSION})")]
    Version(u32),
    #[error("block is for chain \"{got}\", this is \"{expected}\"")]
    WrongChain { expected: String, got: String },
    #[error("block height {got} does not follow the tip {tip}")]
    Height { tip: u64, got: u64 },
    #[error("prev_hash does not match the hash of block {0}")]
    PrevHash(u64),
    #[error("validators_hash does not match the validator set")]
    ValidatorsHash,
    #[error("proposer {got} is not the proposer of height {height} round {round}")]
    Proposer {
        height: u64,
        round: u32,
        got: String,
    },
    #[error("block time {got} is before its parent's time {parent}")]
    Time { parent: u64, got: u64 },
    #[error("last_commit is missing or present where it must not be")]
    LastCommitPresence,
    #[error("last_commit_hash does not match last_commit")]
    LastCommitHash,
    #[error("last_commit is invalid: {0}")]
    LastCommit(CommitError),
}

/// Checks everything about `block`'s header that does not need execution: that it
/// extends `tip` and carries a valid commit of the parent. `tx_root` and `state_root`
/// are checked by execution.
pub fn check_header(
    chain_id: &str,
    validators: &ValidatorSet,
    tip: &Tip,
    block: &Block,
) -> Result<(), HeaderError> {
    let h = &block.header;
    if h.version != HEADER_VERSION {
        return Err(HeaderError::Version(h.version));
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
            validators
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
