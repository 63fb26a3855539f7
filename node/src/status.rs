//! What the node's actors tell the rest of the process: the status behind `GET
//! /v1/status` (each actor writes its own fields) and the events behind `GET /v1/events`.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use consensus::Equivocation;
use ledger::Hash;
use tokio::sync::watch;

/// Events for RPC subscribers (`GET /v1/events`), sent by the chain host on each commit.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    Block {
        height: u64,
        hash: Hash,
        txs: usize,
        time_ms: u64,
    },
    Tx {
        id: Hash,
        height: u64,
        index: u32,
    },
}

/// What `GET /v1/status` shows about the chain, consensus and sync.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// The committed tip (chain host).
    pub height: u64,
    pub tip_hash: Hash,
    pub state_root: Hash,
    pub last_block_at: Option<Instant>,
    /// The round of the height being decided (consensus driver).
    pub round: u32,
    /// A height proven by a valid commit is past the next one (sync).
    pub catching_up: bool,
    pub sync_target: u64,
    /// Set when the chain host stopped committing because its own store refused a block (a
    /// full or failing disk): why, and what to do. The node goes on answering RPC, metrics
    /// and peers' sync requests from what it has; a restart once fixed resumes.
    pub halted: Option<String>,
    /// The protocol of the tip and the upgrade under way (chain host, issue 21).
    pub protocol: u32,
    pub upgrade: Option<tally_api::Upgrade>,
}

/// The write side of the status, shared by the three actors: each updates only its own
/// fields with `send_modify`, and readers (router, RPC, sync) see one consistent value.
pub type StatusTx = Arc<watch::Sender<NodeStatus>>;

/// Shared read-side view for the RPC.
#[derive(Clone)]
pub struct NodeView {
    pub status: watch::Receiver<NodeStatus>,
    /// Equivocation evidence the chain host keeps (newest last).
    pub evidence: Arc<RwLock<Vec<Equivocation>>>,
}
