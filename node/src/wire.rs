//! What Tally nodes say to each other (borsh, like everything on the wire): gossip on the
//! consensus and compact proposal topics, and the `/tally/sync/1` request-response
//! protocol. The tx topic carries a bare `borsh(SignedTx)`.

use borsh::{BorshDeserialize, BorshSerialize};
use consensus::Equivocation;
use ledger::types::{Block, Commit, SignedProposal, SignedTx, SignedVote};
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

/// A message on `tally/<chain_id>/proposal/1` (an addition to DESIGN.md §4): a proposal
/// whose block travels without its txs, which receivers take from their mempool and fetch
/// by id ([`SyncRequest::Txs`]) when they miss some. Releases before it never subscribe to
/// the topic; a proposer also publishes the full [`ConsensusMessage::Proposal`] while a
/// connected peer does not subscribe to it.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct CompactProposal {
    pub proposal: SignedProposal,
    /// The proposed block with no txs (`txs` is empty; its header commits to them).
    pub block: Block,
    /// The ids of the block's txs, in block order.
    pub tx_ids: Vec<Hash>,
}

/// A `/tally/sync/1` request.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum SyncRequest {
    /// The peer's tip.
    Status,
    /// Up to `count` committed blocks with their commits, from `from` upward.
    Blocks { from: u64, count: u32 },
    /// Pending txs by id, at most [`MAX_FETCH_IDS`] (a receiver of a compact proposal
    /// asking for what its mempool misses). Sent only to peers that subscribe to the
    /// compact proposal topic: releases before it do not decode this variant.
    Txs { ids: Vec<Hash> },
}

/// Most tx ids in one [`SyncRequest::Txs`]; a request with more is refused and scored
/// (`RequestFlood`).
pub const MAX_FETCH_IDS: usize = 1024;

/// The largest encoded [`SyncRequest`]: a `Txs` request of [`MAX_FETCH_IDS`] ids (the
/// network's `sync_max_request_bytes` is above it).
pub const MAX_SYNC_REQUEST_BYTES: usize = 1 + 4 + 32 * MAX_FETCH_IDS;

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
    /// The asked txs the peer holds, in the order asked (possibly fewer, within the
    /// response size cap).
    Txs(Vec<SignedTx>),
}

/// Most blocks per sync response; with the response size cap it bounds one answer.
pub const MAX_SYNC_BLOCKS: u32 = 64;
