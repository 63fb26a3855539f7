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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ledger::block::{assemble_empty, BlockTemplate};
    use ledger::crypto::Keypair;
    use ledger::genesis::Genesis;
    use ledger::types::{Account, Payload, Proposal, Tx};
    use std::time::Instant;
    use tally_p2p::{Command, PeerInfo};
    use tokio::sync::mpsc;

    const CHAIN: &str = "compact-test";

    fn tx(k: &Keypair, nonce: u64) -> SignedTx {
        k.sign_tx(Tx {
            chain_id: CHAIN.into(),
            from: k.public_key(),
            nonce,
            fee: 1,
            payload: Payload::Transfer {
                to: [7; 20],
                amount: 1,
            },
        })
    }

    /// A genesis, its proposer's key, and a signed proposal of a block of `n` txs.
    fn proposed(n: u64) -> (Genesis, SignedProposal, Block) {
        let v = crate::testing::key("v");
        let g = crate::testing::genesis(CHAIN, &[&v], &[]);
        let sender = crate::testing::key("sender");
        let mut block = assemble_empty(
            BlockTemplate {
                chain_id: CHAIN.into(),
                height: 1,
                round: 0,
                time_ms: 1,
                prev_hash: [0; 32],
                validators_hash: g.validators.hash(),
                proposer: v.address(),
                last_commit: None,
            },
            [0; 32],
        );
        block.txs = (0..n).map(|i| tx(&sender, i)).collect();
        let ids: Vec<Hash> = block.txs.iter().map(SignedTx::id).collect();
        block.header.tx_root = merkle_root(&ids);
        let proposal = v.sign_proposal(Proposal {
            chain_id: CHAIN.into(),
            height: 1,
            round: 0,
            pol_round: None,
            block_hash: block.hash(),
        });
        (g, proposal, block)
    }

    /// A pool holding `txs` (verified on admission, as the router's would).
    fn pool_with(g: &Genesis, txs: &[SignedTx]) -> Arc<Mutex<Mempool>> {
        let pool = crate::testing::mempool(g);
        let rich = Account {
            balance: u64::MAX / 2,
            nonce: 0,
        };
        for t in txs {
            let size = encode(t).len();
            pool.lock()
                .unwrap()
                .insert_verified(t.clone(), t.id(), size, &rich, Instant::now())
                .unwrap();
        }
        pool
    }

    #[test]
    fn a_block_whose_txs_the_pool_holds_is_rebuilt_without_a_fetch() {
        let (g, proposal, block) = proposed(50);
        let c = compact(&proposal, &block);
        assert!(c.block.txs.is_empty());
        assert!(encode(&c).len() < encode(&block).len() / 3);
        check_compact(&c, 100).unwrap();
        let pool = pool_with(&g, &block.txs);
        let held = from_pool(&pool, &c.tx_ids);
        assert!(missing(&c.tx_ids, &held).is_empty());
        let rebuilt = assemble(c.block, &c.tx_ids, held, &HashMap::new()).unwrap();
        assert_eq!(rebuilt, block);
        ledger::block::check_body(&rebuilt).unwrap();
    }

    /// Attacks on the ids: more than a block holds, ids that do not rebuild the signed
    /// block (another order, one replaced, one dropped), a body smuggled in. Each is the
    /// sender's fault before anything is looked up or fetched.
    #[test]
    fn ids_that_do_not_rebuild_the_signed_block_are_the_senders_fault() {
        let (_, proposal, block) = proposed(10);
        let c = compact(&proposal, &block);
        let mut many = c.clone();
        many.tx_ids = vec![[1; 32]; 100_000];
        assert_eq!(
            check_compact(&many, 10_000),
            Err(PenaltyReason::InvalidBlock)
        );
        assert_eq!(check_compact(&c, 9), Err(PenaltyReason::InvalidBlock));
        let mut swapped = c.clone();
        swapped.tx_ids.swap(0, 1);
        assert_eq!(
            check_compact(&swapped, 100),
            Err(PenaltyReason::InvalidBlock)
        );
        let mut replaced = c.clone();
        replaced.tx_ids[3] = [9; 32];
        assert_eq!(
            check_compact(&replaced, 100),
            Err(PenaltyReason::InvalidBlock)
        );
        let mut dropped = c.clone();
        dropped.tx_ids.pop();
        assert_eq!(
            check_compact(&dropped, 100),
            Err(PenaltyReason::InvalidBlock)
        );
        let mut other_header = c.clone();
        other_header.block.header.time_ms += 1;
        assert_eq!(
            check_compact(&other_header, 100),
            Err(PenaltyReason::InvalidBlock)
        );
        let mut with_body = c.clone();
        with_body.block.txs.push(block.txs[0].clone());
        assert_eq!(
            check_compact(&with_body, 100),
            Err(PenaltyReason::InvalidMessage)
        );
        check_compact(&c, 10).unwrap();
    }

    fn peer_info(peer: PeerId, topics: Vec<Topic>) -> PeerInfo {
        PeerInfo {
            peer_id: peer,
            connected: true,
            addresses: vec![],
            app_score: 0.0,
            gossipsub_score: None,
            reasons: Default::default(),
            banned: false,
            ban_remaining: None,
            topics,
            mesh_topics: vec![],
            software: None,
        }
    }

    /// How a played peer answers a request for txs.
    #[derive(Clone, Copy)]
    enum Serves {
        /// The txs it holds.
        Honest,
        /// Nothing (a proposer withholding its txs).
        Nothing,
        /// Another tx than the one asked for.
        Forged,
    }

    /// Plays the network: `peers` with what each serves from `held`; records who was
    /// asked, how many ids each request held, and who was penalised.
    async fn play(
        mut commands: mpsc::Receiver<Command>,
        peers: Vec<(PeerId, Vec<Topic>, Serves)>,
        held: Vec<SignedTx>,
    ) -> (Vec<(PeerId, usize)>, Vec<(PeerId, PenaltyReason)>) {
        let (mut asked, mut penalized) = (Vec::new(), Vec::new());
        let by_id: HashMap<Hash, SignedTx> = held.iter().map(|t| (t.id(), t.clone())).collect();
        while let Some(command) = commands.recv().await {
            match command {
                Command::Peers { reply } => {
                    let infos = peers
                        .iter()
                        .map(|(p, topics, _)| peer_info(*p, topics.clone()))
                        .collect();
                    let _ = reply.send(infos);
                }
                Command::Request { peer, data, reply } => {
                    let Ok(SyncRequest::Txs { ids }) = decode("req", &data, data.len()) else {
                        panic!("not a txs request");
                    };
                    asked.push((peer, ids.len()));
                    let serves = peers.iter().find(|p| p.0 == peer).unwrap().2;
                    let txs = match serves {
                        Serves::Honest => {
                            ids.iter().filter_map(|id| by_id.get(id).cloned()).collect()
                        }
                        Serves::Nothing => vec![],
                        Serves::Forged => vec![tx(&crate::testing::key("other"), 0)],
                    };
                    let _ = reply.send(Ok(encode(&SyncResponse::Txs(txs))));
                }
                Command::Penalize { peer, reason, .. } => penalized.push((peer, reason)),
                _ => {}
            }
        }
        (asked, penalized)
    }

    /// A pool holding part of a block: the rest is fetched, at most [`MAX_FETCH_IDS`] a
    /// request, from the peer that delivered the proposal first; a peer answering txs
    /// that do not hash to the ids asked is scored `BadResponse` and the next one is
    /// asked; a peer not on the proposal topic (an older release) is never asked.
    #[tokio::test]
    async fn what_the_pool_misses_is_fetched_by_id_and_checked() {
        let (g, proposal, block) = proposed(2_100);
        let c = compact(&proposal, &block);
        let pool = pool_with(&g, &block.txs[..50]);
        let held = from_pool(&pool, &c.tx_ids);
        let want = missing(&c.tx_ids, &held);
        assert_eq!(want.len(), 2_050);
        let (net, commands) = NetworkHandle::detached(64);
        let (source, liar, old, good) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let peers = vec![
            (
                source,
                vec![Topic::Consensus, Topic::Proposal],
                Serves::Forged,
            ),
            (old, vec![Topic::Consensus], Serves::Honest),
            (
                liar,
                vec![Topic::Consensus, Topic::Proposal],
                Serves::Nothing,
            ),
            (
                good,
                vec![Topic::Consensus, Topic::Proposal],
                Serves::Honest,
            ),
        ];
        let player = tokio::spawn(play(commands, peers, block.txs.clone()));
        let fetched = fetch(&net, source, &want, 32 << 20).await.unwrap();
        drop(net);
        let (asked, penalized) = player.await.unwrap();
        assert_eq!(fetched.len(), 2_050);
        let rebuilt = assemble(c.block, &c.tx_ids, held, &fetched).unwrap();
        assert_eq!(rebuilt, block);
        assert!(asked.iter().all(|(_, n)| *n <= MAX_FETCH_IDS), "{asked:?}");
        assert!(
            asked.iter().all(|(p, _)| *p != old),
            "an old peer was asked"
        );
        assert_eq!(asked[0].0, source, "the source is asked first");
        assert_eq!(
            penalized,
            vec![
                (source, PenaltyReason::BadResponse),
                (source, PenaltyReason::BadResponse),
                (source, PenaltyReason::BadResponse)
            ],
            "the forger, once per chunk; the peer that holds nothing is not blamed"
        );
    }

    /// A proposer that never serves its txs: the fetch ends unserved (the router then
    /// gives the round no proposal) and nobody is blamed for not holding them.
    #[tokio::test]
    async fn txs_nobody_serves_end_the_fetch_without_blame() {
        let (_, proposal, block) = proposed(20);
        let c = compact(&proposal, &block);
        let (net, commands) = NetworkHandle::detached(64);
        let (source, other) = (PeerId::random(), PeerId::random());
        let both = vec![Topic::Consensus, Topic::Proposal];
        let peers = vec![
            (source, both.clone(), Serves::Nothing),
            (other, both, Serves::Nothing),
        ];
        let player = tokio::spawn(play(commands, peers, vec![]));
        let result = fetch(&net, source, &c.tx_ids, 32 << 20).await;
        drop(net);
        let (asked, penalized) = player.await.unwrap();
        assert_eq!(result, Err(FetchError::Unserved(20)));
        assert_eq!(asked.len(), 2, "each peer once");
        assert!(penalized.is_empty(), "{penalized:?}");
    }

    /// The serving side: a request within [`MAX_FETCH_IDS`] gets the held txs in the order
    /// asked, within the response cap; one id more is refused (the router scores it as a
    /// request flood).
    #[test]
    fn a_request_for_more_ids_than_allowed_is_refused() {
        let (g, _, block) = proposed(30);
        let pool = pool_with(&g, &block.txs);
        let ids: Vec<Hash> = block.txs.iter().map(SignedTx::id).collect();
        let bytes = serve_txs(&pool, &ids, 1 << 20).unwrap();
        let txs = verify_txs(&ids, &bytes, 1 << 20).unwrap();
        assert_eq!(txs.len(), 30);
        assert_eq!(txs[0].0, ids[0]);
        // Within a small cap: fewer txs, still a valid answer.
        let small = serve_txs(&pool, &ids, 1_000).unwrap();
        assert!(small.len() <= 1_000);
        let some = verify_txs(&ids, &small, 1 << 20).unwrap().len();
        assert!(some > 0 && some < 30, "{some}");
        let mut many = vec![[0; 32]; MAX_FETCH_IDS];
        assert!(serve_txs(&pool, &many, 1 << 20).is_ok());
        many.push([0; 32]);
        assert_eq!(
            serve_txs(&pool, &many, 1 << 20),
            Err(TooManyIds(MAX_FETCH_IDS + 1))
        );
        let encoded = encode(&SyncRequest::Txs { ids: many });
        assert!(encoded.len() > crate::wire::MAX_SYNC_REQUEST_BYTES);
        // A full request fits the network's default request cap.
        let full = encode(&SyncRequest::Txs {
            ids: vec![[0; 32]; MAX_FETCH_IDS],
        });
        assert_eq!(full.len(), crate::wire::MAX_SYNC_REQUEST_BYTES);
        assert!(full.len() <= tally_p2p::NetworkConfig::default().sync_max_request_bytes);
    }
}
