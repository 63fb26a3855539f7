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
