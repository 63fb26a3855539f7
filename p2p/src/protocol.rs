//! The task's interface: commands in, events out, and the values they carry.

use std::{collections::BTreeMap, fmt, time::Duration};

use tokio::sync::oneshot;

use crate::{Multiaddr, PeerId};

/// A gossip topic. On the wire: `tally/<chain_id>/tx/1`, `tally/<chain_id>/txs/1`,
/// `tally/<chain_id>/consensus/1` and `tally/<chain_id>/proposal/1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// One transaction per message: borsh(SignedTx).
    Tx,
    /// Transactions in batches: borsh(Vec<SignedTx>). One message carries what a node
    /// received over a few milliseconds, so per-message costs (framing, syscalls, timers,
    /// validation round trips, duplicate copies) are paid once per batch, not per tx.
    TxBatch,
    /// Proposals with their blocks, votes, evidence.
    Consensus,
    /// Compact proposals: the signed proposal, the block without its txs, and the tx ids
    /// (the node rebuilds the block from its mempool). Releases before it never subscribe,
    /// so a proposer also sends the full proposal on `Consensus` while a peer needs it.
    Proposal,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 4] = [Topic::Tx, Topic::TxBatch, Topic::Consensus, Topic::Proposal];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Tx => "tx",
            Topic::TxBatch => "txs",
            Topic::Consensus => "consensus",
            Topic::Proposal => "proposal",
        }
    }

    /// The gossipsub topic string for a chain.
    pub fn topic_string(self, chain_id: &str) -> String {
        format!("tally/{chain_id}/{}/1", self.as_str())
    }
}

/// Id of a gossip message: SHA-256 of its data (content-addressed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 32]);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Why a peer loses application score. A closed set so metric labels stay low-cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PenaltyReason {
    /// Bytes that do not decode as the expected type.
    Undecodable,
    /// A signature that does not verify.
    InvalidSignature,
    /// A block that fails validation (bad roots, invalid tx, bad commit).
    InvalidBlock,
    /// Any other message that is provably invalid (wrong chain, malformed vote...).
    InvalidMessage,
    /// A sync response that does not match the request or is invalid.
    BadResponse,
    /// More sync requests per second than allowed (detected by this crate).
    RequestFlood,
    /// More gossip messages per second than allowed (detected by this crate).
    GossipFlood,
    /// A gossip message or sync request over its size cap (detected by this crate).
    Oversized,
    /// Gossip that brought nothing new (votes and proposals already seen, re-wrapped or
    /// stale), beyond the small per-peer budget an honest relay needs (detected by the
    /// node, which alone knows what it has seen).
    Replay,
}

impl PenaltyReason {
    /// Every reason.
    pub const ALL: [PenaltyReason; 9] = [
        PenaltyReason::Undecodable,
        PenaltyReason::InvalidSignature,
        PenaltyReason::InvalidBlock,
        PenaltyReason::InvalidMessage,
        PenaltyReason::BadResponse,
        PenaltyReason::RequestFlood,
        PenaltyReason::GossipFlood,
        PenaltyReason::Oversized,
        PenaltyReason::Replay,
    ];

    /// Metric label and `/v1/peers` reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            PenaltyReason::Undecodable => "undecodable",
            PenaltyReason::InvalidSignature => "invalid_signature",
            PenaltyReason::InvalidBlock => "invalid_block",
            PenaltyReason::InvalidMessage => "invalid_message",
            PenaltyReason::BadResponse => "bad_response",
            PenaltyReason::RequestFlood => "request_flood",
            PenaltyReason::GossipFlood => "gossip_flood",
            PenaltyReason::Oversized => "oversized",
            PenaltyReason::Replay => "replay",
        }
    }

    /// Points a `Verdict::Reject` with this reason costs, and what the task itself charges
    /// for the faults it detects. With the default ban threshold of -100: two invalid blocks,
    /// two bad signatures or five undecodable messages ban a peer, while flooding costs
    /// little per message so a briefly bursty but honest relay is throttled, not banned.
    pub fn default_points(self) -> f64 {
        match self {
            PenaltyReason::InvalidBlock => 50.0,
            PenaltyReason::InvalidSignature => 50.0,
            PenaltyReason::Undecodable => 20.0,
            PenaltyReason::InvalidMessage => 20.0,
            PenaltyReason::Oversized => 20.0,
            PenaltyReason::BadResponse => 10.0,
            PenaltyReason::RequestFlood => 5.0,
            PenaltyReason::GossipFlood => 1.0,
            PenaltyReason::Replay => 2.0,
        }
    }
}

impl fmt::Display for PenaltyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The node's verdict on a gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it to the mesh.
    Accept,
    /// Not forwarded, no penalty (duplicate, stale height, nonce already used...).
    Ignore,
    /// Provably invalid: not forwarded; gossipsub's P4 penalty applies to the sender and
    /// the task subtracts `reason.default_points()` from its application score.
    Reject(PenaltyReason),
}

/// Opaque handle of an inbound sync request, passed back in `Command::Respond`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseChannelId(pub(crate) u64);

/// Why an outbound sync request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Our request exceeds `sync_max_request_bytes`; it was not sent.
    #[error("request of {size} bytes exceeds the {limit}-byte cap")]
    RequestTooLarge { size: usize, limit: usize },
    /// The peer's response exceeded `sync_max_response_bytes`; it was not read.
    #[error("response exceeds the {limit}-byte cap")]
    ResponseTooLarge { limit: usize },
    /// The peer answered with an error frame.
    #[error("peer refused the request: {0}")]
    Refused(RemoteError),
    /// No response within `request_timeout`.
    #[error("request timed out")]
    Timeout,
    /// Could not reach the peer, or the connection closed first.
    #[error("peer unreachable or disconnected: {0}")]
    Unreachable(String),
    /// The peer does not speak `/tally/sync/1`.
    #[error("peer does not support /tally/sync/1")]
    Unsupported,
    /// Any other I/O or protocol failure.
    #[error("sync request failed: {0}")]
    Failed(String),
    /// The network task has stopped.
    #[error("network task stopped")]
    Shutdown,
}

impl RequestError {
    /// Whether the failure is the remote peer's fault (score it), as opposed to ours or the
    /// network's.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, RequestError::ResponseTooLarge { .. })
    }
}

/// Error frame a responder sends instead of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The requester exceeded its request rate.
    #[error("rate limited")]
    RateLimited,
    /// The request exceeded the responder's `sync_max_request_bytes`.
    #[error("request too large")]
    RequestTooLarge,
    /// The response would have exceeded the responder's cap.
    #[error("response too large")]
    ResponseTooLarge,
    /// Too many requests pending at the responder.
    #[error("busy")]
    Busy,
    /// The responder could not serve it (unknown code, shutting down).
    #[error("unavailable")]
    Unavailable,
}

/// One peer as seen by this node (for `GET /v1/peers`).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub connected: bool,
    /// Remote addresses of the established connections.
    pub addresses: Vec<Multiaddr>,
    /// Application score (0 = neutral, decays toward 0), the one bans are based on.
    pub app_score: f64,
    /// Gossipsub v1.1 score (includes `app_score` via P5), `None` if gossipsub does not
    /// track the peer.
    pub gossipsub_score: Option<f64>,
    /// Penalties received, by reason, with counts (history: counts do not decay).
    pub reasons: BTreeMap<PenaltyReason, u64>,
    pub banned: bool,
    pub ban_remaining: Option<Duration>,
    /// Topics the peer subscribes to.
    pub topics: Vec<Topic>,
    /// Topics for which the peer is in our gossipsub mesh.
    pub mesh_topics: Vec<Topic>,
    /// The software the peer announces (identify's agent version, e.g. `tally/0.1.0
    /// protocols 1-2`) and what it says: its version and the highest chain protocol its
    /// binary runs. `None` until identify has run.
    pub software: Option<crate::software::Software>,
}

/// Commands into the network task. `NetworkHandle` wraps each in an async fn.
#[derive(Debug)]
pub enum Command {
    /// Publish on a topic (flood-published to every subscribed peer above the publish
    /// threshold).
    Publish {
        topic: Topic,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<MessageId, crate::NetworkError>>,
    },
    /// The verdict on an `Event::Message`; exactly once per message.
    Validated {
        msg_id: MessageId,
        source: PeerId,
        verdict: Verdict,
    },
    /// Send a `/tally/sync/1` request.
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, RequestError>>,
    },
    /// Answer an `Event::Request`.
    Respond {
        channel: ResponseChannelId,
        data: Vec<u8>,
    },
    /// Subtract points from a peer's application score.
    Penalize {
        peer: PeerId,
        reason: PenaltyReason,
        points: f64,
    },
    /// Snapshot of every known peer.
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    /// Dial an address (with or without `/p2p/<peer-id>`).
    Dial(Multiaddr),
}

/// Events out of the network task.
#[derive(Debug)]
pub enum Event {
    /// A gossip message awaiting validation: answer with `Command::Validated`.
    Message {
        topic: Topic,
        msg_id: MessageId,
        /// The peer that forwarded it (the one to score).
        source: PeerId,
        /// The author who signed it.
        author: Option<PeerId>,
        data: Vec<u8>,
    },
    /// An inbound sync request (already size-checked and rate-limited): answer with
    /// `Command::Respond`.
    Request {
        peer: PeerId,
        data: Vec<u8>,
        channel: ResponseChannelId,
    },
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    PeerBanned {
        peer: PeerId,
        reason: PenaltyReason,
        duration: Duration,
    },
    /// A listen address became active (with its real port).
    Listening(Multiaddr),
}
