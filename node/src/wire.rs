//! What Tally nodes say to each other (borsh, like everything on the wire): gossip on the
//! consensus topic, and the `/tally/sync/1` request-response protocol. The tx topic carries
//! a bare `borsh(SignedTx)`.

use borsh::{BorshDeserialize, BorshSerialize};
use consensus::Equivocation;
use ledger::types::{Block, Commit, SignedProposal, SignedVote};
use ledger::Hash;

/// A message on `tally/<chain_id>/consensus/1`.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum ConsensusMessage {
    /// A signed proposal with the block it proposes (the block's hash is in the proposal).
    Proposal {
        proposal: SignedProposal,
        block: Block,
    },
    Vote(SignedVote),
    Evidence(Equivocation),
    /// A validator re-announcing its own messages of the current height while the height
    /// is stuck: gossipsub delivers each message once, so a peer that was down or
    /// partitioned when they were first sent would otherwise never see them, and
    /// Tendermint's liveness assumes every correct message eventually reaches everyone.
    /// `sent_at_ms` makes each re-announcement a distinct gossip message.
    Rebroadcast {
        sent_at_ms: u64,
        votes: Vec<SignedVote>,
        proposal: Option<(SignedProposal, Block)>,
    },
}

/// Most votes in one [`ConsensusMessage::Rebroadcast`].
pub const MAX_REBROADCAST_VOTES: usize = 64;

/// A `/tally/sync/1` request.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum SyncRequest {
    /// The peer's tip.
    Status,
    /// Up to `count` committed blocks with their commits, from `from` upward.
    Blocks { from: u64, count: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SyncStatus {
    pub height: u64,
    pub tip_hash: Hash,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum SyncResponse {
    Status(SyncStatus),
    /// Consecutive blocks starting at the requested height (possibly fewer than asked,
    /// possibly none if the peer does not have them).
    Blocks(Vec<(Block, Commit)>),
}

/// Most blocks per sync response; with the response size cap it bounds one answer.
pub const MAX_SYNC_BLOCKS: u32 = 64;

/// How many blocks an encoded [`SyncResponse`] carries (0 for a status answer or bytes that
/// are no response), read from its first five bytes instead of decoding the blocks: borsh
/// writes the variant index as one byte and a `Vec`'s length as a little-endian `u32`.
/// For `tally_sync_blocks_served_total`, on answers this node encoded itself.
pub fn blocks_in_response(bytes: &[u8]) -> u64 {
    match bytes {
        [1, a, b, c, d, ..] => u64::from(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ledger::codec::encode;
    use ledger::types::Header;

    fn block(height: u64) -> (Block, Commit) {
        let header = Header {
            version: ledger::types::HEADER_VERSION,
            chain_id: "wire-test".into(),
            height,
            round: 0,
            time_ms: height,
            prev_hash: [1; 32],
            tx_root: [2; 32],
            state_root: [3; 32],
            validators_hash: [4; 32],
            proposer: [5; 20],
            last_commit_hash: [6; 32],
            next_validators_hash: None,
        };
        let commit = Commit {
            height,
            round: 0,
            block_hash: [7; 32],
            signatures: Vec::new(),
        };
        (
            Block {
                header,
                txs: Vec::new(),
                last_commit: None,
                evidence: Vec::new(),
            },
            commit,
        )
    }

    #[test]
    fn blocks_in_response_counts_the_blocks_of_an_encoded_answer() {
        for n in [0u64, 1, 3, 64, 300] {
            let r = SyncResponse::Blocks((1..=n).map(block).collect());
            let bytes = encode(&r);
            assert_eq!(blocks_in_response(&bytes), n);
        }
        let status = SyncResponse::Status(SyncStatus {
            height: 0x0101_0101,
            tip_hash: [1; 32],
        });
        assert_eq!(blocks_in_response(&encode(&status)), 0);
        assert_eq!(blocks_in_response(&[]), 0);
        assert_eq!(blocks_in_response(&[1, 2]), 0);
    }
}
