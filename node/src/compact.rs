//! Compact proposals (issue 22, lever 1): a proposal travels as its signed proposal, the
//! block without its txs and the txs' ids ([`CompactProposal`], on the proposal topic).
//! A receiver takes the txs from its mempool, which holds them verified and keyed by id,
//! and fetches only those it misses, by id ([`SyncRequest::Txs`]), from the peer that
//! delivered the proposal or another peer on the topic. The rebuilt block then goes the
//! way of a full proposal.
//!
//! What binds the ids to the signed block: the header's `tx_root` is the Merkle root of the
//! ids and the proposal signs the header's hash, so [`check_compact`] refuses ids that do
//! not rebuild the signed block before anything is looked up or fetched, and a fetched tx
//! must hash to the id asked for. The rebuilt block needs no body check: the txs held come
//! out of the pool under the ids they were admitted with (not hashed again), the fetched
//! ones were hashed on arrival.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ledger::codec::{decode, encode};
use ledger::merkle::merkle_root;
use ledger::types::{Block, Commit, SignedProposal, SignedTx};
use ledger::Hash;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tally_p2p::{NetworkHandle, PeerId, PenaltyReason, Topic};

use crate::mempool::Mempool;
use crate::wire::{CompactProposal, SyncRequest, SyncResponse, MAX_FETCH_IDS};

/// The compact form of a proposal and its block.
pub fn compact(proposal: &SignedProposal, block: &Block) -> CompactProposal {
    CompactProposal {
        proposal: proposal.clone(),
        block: Block {
            header: block.header.clone(),
            txs: Vec::new(),
            last_commit: block.last_commit.clone(),
            evidence: block.evidence.clone(),
        },
        tx_ids: block.txs.iter().map(SignedTx::id).collect(),
    }
}

/// The largest compact proposal of a chain whose blocks hold at most `max_txs` txs: 32
/// bytes per id, and the header, last commit and evidence in the 64 KiB a full proposal
/// allows them too; never above the gossip cap `max_message_bytes`.
pub fn max_compact_bytes(max_txs: usize, max_message_bytes: usize) -> usize {
    max_txs
        .saturating_mul(32)
        .saturating_add(64 * 1024)
        .min(max_message_bytes)
}

/// Checks that need no state: the body is empty, the ids are at most a block's worth
/// (`max_txs`), and the header (signed by the proposal) commits to these ids and this last
/// commit. A failure is the sender's fault: no honest node forwards such a proposal.
pub fn check_compact(c: &CompactProposal, max_txs: usize) -> Result<(), PenaltyReason> {
    let p = &c.proposal.proposal;
    let header = &c.block.header;
    if !c.block.txs.is_empty() {
        return Err(PenaltyReason::InvalidMessage);
    }
    let commit_hash = c
        .block
        .last_commit
        .as_ref()
        .map_or(ledger::hash::ZERO_HASH, Commit::hash);
    if c.tx_ids.len() > max_txs
        || c.block.hash() != p.block_hash
        || header.height != p.height
        || commit_hash != header.last_commit_hash
        || merkle_root(&c.tx_ids) != header.tx_root
    {
        return Err(PenaltyReason::InvalidBlock);
    }
    Ok(())
}

/// The block's txs from the pool, in block order (None where the pool does not hold one),
/// under one lock.
pub fn from_pool(pool: &Mutex<Mempool>, ids: &[Hash]) -> Vec<Option<Arc<SignedTx>>> {
    match pool.lock() {
        Ok(pool) => ids.iter().map(|id| pool.get(id)).collect(),
        Err(_) => vec![None; ids.len()],
    }
}

/// The ids of the txs `held` misses, each once.
pub fn missing(ids: &[Hash], held: &[Option<Arc<SignedTx>>]) -> Vec<Hash> {
    let mut seen = HashSet::new();
    ids.iter()
        .zip(held)
        .filter(|(id, tx)| tx.is_none() && seen.insert(**id))
        .map(|(id, _)| *id)
        .collect()
}

/// The full block: `held` filled in with `fetched`. None if a tx is still missing.
pub fn assemble(
    mut block: Block,
    ids: &[Hash],
    held: Vec<Option<Arc<SignedTx>>>,
    fetched: &HashMap<Hash, SignedTx>,
) -> Option<Block> {
    let mut txs = Vec::with_capacity(ids.len());
    for (id, tx) in ids.iter().zip(held) {
        txs.push(match tx {
            Some(tx) => Arc::unwrap_or_clone(tx),
            None => fetched.get(id)?.clone(),
        });
    }
    block.txs = txs;
    Some(block)
}

/// A [`SyncRequest::Txs`] for more ids than a request may hold.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyIds(pub usize);

/// Answers a peer's [`SyncRequest::Txs`] from the pool: the txs it holds, in the order
/// asked, within `max_bytes`. Refused (the caller scores the peer `RequestFlood`) when it
/// asks for more than [`MAX_FETCH_IDS`].
pub fn serve_txs(
    pool: &Mutex<Mempool>,
    ids: &[Hash],
    max_bytes: usize,
) -> Result<Vec<u8>, TooManyIds> {
    if ids.len() > MAX_FETCH_IDS {
        return Err(TooManyIds(ids.len()));
    }
    let held = from_pool(pool, ids);
    // The response's variant tag and length prefix, then the txs while they fit.
    let mut size: usize = 1 + 4;
    let mut txs = Vec::new();
    for tx in held.into_iter().flatten() {
        let n = borsh::object_length(tx.as_ref()).unwrap_or(usize::MAX);
        if size.saturating_add(n) > max_bytes {
            break;
        }
        size += n;
        txs.push(Arc::unwrap_or_clone(tx));
    }
    Ok(encode(&SyncResponse::Txs(txs)))
}

/// Why a fetch ended without every tx.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchError {
    /// No peer served these ids.
    Unserved(usize),
}

/// The peers worth asking for the txs of a proposal `source` delivered: `source` first,
/// then every other connected peer that subscribes to the proposal topic (releases before
/// it do not, and would not decode the request).
async fn fetch_peers(net: &NetworkHandle, source: PeerId) -> Vec<PeerId> {
    let mut peers = vec![source];
    if let Ok(all) = net.peers().await {
        peers.extend(
            all.into_iter()
                .filter(|p| {
                    p.connected
                        && !p.banned
                        && p.peer_id != source
                        && p.topics.contains(&Topic::Proposal)
                })
                .map(|p| p.peer_id),
        );
    }
    peers
}

/// Fetches the txs `missing` names, at most [`MAX_FETCH_IDS`] a request, asking `source`
/// first and then the other peers on the proposal topic. A tx that does not hash to an id
/// asked for makes the whole answer a `BadResponse` (scored; the next peer is asked). The
/// caller bounds the time it takes.
pub async fn fetch(
    net: &NetworkHandle,
    source: PeerId,
    missing: &[Hash],
    max_response_bytes: usize,
) -> Result<HashMap<Hash, SignedTx>, FetchError> {
    let peers = fetch_peers(net, source).await;
    let mut got: HashMap<Hash, SignedTx> = HashMap::with_capacity(missing.len());
    for chunk in missing.chunks(MAX_FETCH_IDS) {
        for peer in &peers {
            let ids: Vec<Hash> = chunk
                .iter()
                .filter(|id| !got.contains_key(*id))
                .copied()
                .collect();
            if ids.is_empty() {
                break;
            }
            let request = encode(&SyncRequest::Txs { ids: ids.clone() });
            let Ok(bytes) = net.request(*peer, request).await else {
                continue;
            };
            match verify_txs(&ids, &bytes, max_response_bytes) {
                Ok(txs) => got.extend(txs),
                Err(reason) => {
                    let _ = net.penalize(*peer, reason, reason.default_points()).await;
                }
            }
        }
    }
    let unserved = missing.iter().filter(|id| !got.contains_key(*id)).count();
    if unserved > 0 {
        return Err(FetchError::Unserved(unserved));
    }
    Ok(got)
}

/// Decodes an answer to a request for `asked`: every tx must hash to an id asked for (not
/// necessarily all of them: a peer may not hold some).
pub fn verify_txs(
    asked: &[Hash],
    bytes: &[u8],
    max_bytes: usize,
) -> Result<Vec<(Hash, SignedTx)>, PenaltyReason> {
    let Ok(SyncResponse::Txs(txs)) = decode::<SyncResponse>("txs answer", bytes, max_bytes) else {
        return Err(PenaltyReason::BadResponse);
    };
    if txs.len() > asked.len() {
        return Err(PenaltyReason::BadResponse);
    }
    let asked: HashSet<&Hash> = asked.iter().collect();
    txs.into_iter()
        .map(|tx| {
            let id = tx.id();
            if asked.contains(&id) {
                Ok((id, tx))
            } else {
                Err(PenaltyReason::BadResponse)
            }
        })
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// What compact proposals cost and save.
#[derive(Clone, Default)]
pub struct ProposalMetrics {
    /// `tally_proposal_txs_fetched_total`.
    pub txs_fetched: Counter,
    /// `tally_proposal_bytes_total{kind="compact"|"full"}`: proposal messages received.
    pub bytes: Family<KindLabel, Counter>,
    /// `tally_proposal_rebuilds_total{outcome}`: `pool` (every tx held), `fetched`,
    /// `failed` (a tx could not be fetched in time), `invalid` (scored), `busy` (a fetch
    /// of the same round, or too many, in flight).
    pub rebuilds: Family<OutcomeLabel, Counter>,
}

impl ProposalMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        r.register(
            "tally_proposal_txs_fetched",
            "Txs of compact proposals fetched from peers (the mempool did not hold them)",
            m.txs_fetched.clone(),
        );
        r.register(
            "tally_proposal_bytes",
            "Bytes of proposal messages received, by kind (compact or full)",
            m.bytes.clone(),
        );
        r.register(
            "tally_proposal_rebuilds",
            "Compact proposals received, by how their block was rebuilt",
            m.rebuilds.clone(),
        );
        m
    }

    pub fn received(&self, kind: &'static str, bytes: usize) {
        self.bytes
            .get_or_create(&KindLabel { kind })
            .inc_by(bytes as u64);
    }

    pub fn rebuilt(&self, outcome: &'static str) {
        self.rebuilds.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
