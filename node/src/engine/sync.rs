//! Catch-up: when peers are ahead, fetch committed blocks with their commits over
//! `/tally/sync/1` from several peers at once, check each like a follower (header
//! linkage, > 2/3 precommits, full re-execution with the state root), commit them in
//! order, then rejoin consensus at the new height.
//!
//! ```text
//!  engine ── chunk [h, h+64) ──▶ fetch task (peer A) ─┐ decode, height sequence, hash
//!         ── chunk [h+64, ..) ─▶ fetch task (peer B) ─┤ linkage inside the chunk,
//!         ── ...  (≤ MAX_IN_FLIGHT, ≤ PER_PEER each)  ┘ commits and tx signatures
//!                                                       (rayon, every core)
//!  engine ◀── EngineMsg::Synced(Fetched) ── reorder buffer (BTreeMap by height)
//!         ── tip+1 while buffered: check_header against the tip, execute (signatures
//!            already checked), commit (one synced batch per block)
//! ```
//!
//! A peer that serves a bad block (undecodable, broken linkage, bad commit, bad signature,
//! wrong state root) is penalised, its buffered blocks are dropped and it is not asked
//! again for [`BAD_PEER_PAUSE`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::Input;
use ledger::block::check_header;
use ledger::codec::{decode, encode};
use ledger::exec::{execute_block, Signatures};
use ledger::genesis::Genesis;
use ledger::store::ChainReader;
use ledger::types::{Block, Commit};
use ledger::Hash;
use rayon::prelude::*;
use tally_p2p::{NetworkHandle, PeerId, PenaltyReason};

use super::{Engine, EngineMsg};
use crate::wire::{SyncRequest, SyncResponse, MAX_SYNC_BLOCKS};

/// A request unanswered for this long is given up (the p2p layer also times out).
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// How long a peer that served bad data is not asked again.
const BAD_PEER_PAUSE: Duration = Duration::from_secs(120);
/// If a peer is one block ahead and we committed nothing for this long, we missed the
/// decision: fetch the block instead of waiting.
const STALL: Duration = Duration::from_secs(3);
/// Sync requests in flight at once, over all peers.
pub const MAX_IN_FLIGHT: usize = 8;
/// Sync requests in flight at once to one peer.
pub const PER_PEER: usize = 3;
/// How far past the tip blocks are requested (bounds the reorder buffer's memory:
/// at most this many blocks are held, each within the response size cap).
const WINDOW: u64 = 2 * MAX_IN_FLIGHT as u64 * MAX_SYNC_BLOCKS as u64;
/// How often every connected peer is asked for its tip: gossip alone under-reports how far
/// ahead peers are when our inbox lags behind the network.
const STATUS_POLL: Duration = Duration::from_secs(2);
/// How often a progress line is logged while catching up.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A block that passed every check that does not need our state.
#[derive(Debug)]
pub struct Verified {
    pub block: Block,
    pub commit: Commit,
    pub hash: Hash,
}

/// Why a fetch failed.
#[derive(Debug)]
pub enum Fault {
    /// Timeout, disconnect, empty answer: nobody's fault, ask someone else.
    Unavailable(String),
    /// The peer served something invalid.
    Bad(PenaltyReason, String),
}

/// The answer to one sync request, checked off the engine task.
#[derive(Debug)]
pub struct Fetched {
    pub peer: PeerId,
    pub from: u64,
    pub result: Result<Vec<Verified>, Fault>,
}

struct Request {
    peer: PeerId,
    count: u64,
    since: Instant,
}

struct Progress {
    since: Instant,
    from_height: u64,
    txs: u64,
    last_log: Instant,
    /// Peers whose blocks were applied.
    sources: HashSet<PeerId>,
}

#[derive(Default)]
pub(super) struct SyncState {
    peers: HashMap<PeerId, u64>,
    target: u64,
    /// Requests in flight by first height.
    in_flight: BTreeMap<u64, Request>,
    /// Verified blocks waiting for their turn, with the peer that served them.
    buffer: BTreeMap<u64, (PeerId, Verified)>,
    bad: HashMap<PeerId, Instant>,
    progress: Option<Progress>,
    last_progress: Option<Instant>,
    last_status_poll: Option<Instant>,
}

impl SyncState {
    pub(super) fn catching_up(&self, tip: u64) -> bool {
        self.target > tip + 1
    }

    pub(super) fn target(&self) -> u64 {
        self.target
    }

    pub(super) fn raise_target(&mut self, height: u64) {
        self.target = self.target.max(height);
    }

    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        self.in_flight.retain(|_, r| &r.peer != peer);
    }

    fn is_bad(&self, peer: &PeerId, now: Instant) -> bool {
        self.bad
            .get(peer)
            .is_some_and(|t| now.duration_since(*t) < BAD_PEER_PAUSE)
    }

    /// The least busy good peer that has `need`, with its height.
    fn pick(&self, need: u64) -> Option<(PeerId, u64)> {
        let now = Instant::now();
        let busy = |p: &PeerId| self.in_flight.values().filter(|r| &r.peer == p).count();
        self.peers
            .iter()
            .filter(|(p, h)| **h >= need && !self.is_bad(p, now) && busy(p) < PER_PEER)
            .min_by_key(|(p, h)| (busy(p), std::cmp::Reverse(**h)))
            .map(|(p, h)| (*p, *h))
    }

    /// The lowest run of heights in `lo..=hi` neither buffered nor requested, at most one
    /// chunk long.
    fn next_gap(&self, lo: u64, hi: u64) -> Option<(u64, u64)> {
        let covered = |h: u64| {
            self.buffer.contains_key(&h)
                || self
                    .in_flight
                    .range(..=h)
                    .next_back()
                    .is_some_and(|(s, r)| h < s + r.count)
        };
        let mut h = lo;
        while h <= hi && covered(h) {
            h += 1;
        }
        if h > hi {
            return None;
        }
        let start = h;
        let mut count = 0u64;
        while h <= hi && count < u64::from(MAX_SYNC_BLOCKS) && !covered(h) {
            h += 1;
            count += 1;
        }
        Some((start, count))
    }

    /// Drops everything a peer served and marks it bad.
    fn condemn(&mut self, peer: PeerId) {
        self.bad.insert(peer, Instant::now());
        self.buffer.retain(|_, (p, _)| *p != peer);
        self.in_flight.retain(|_, r| r.peer != peer);
    }
}

impl Engine {
    pub(super) fn note_peer_height(&mut self, peer: PeerId, height: u64) {
        let known = self.sync.peers.entry(peer).or_insert(0);
        if height > *known {
            *known = height;
        }
        self.sync.raise_target(height);
        self.metrics.sync_target.set(self.sync.target as i64);
        let tip = self.tip().map_or(0, |t| t.height);
        if height > tip + 1 {
            self.maybe_request_sync();
        }
    }

    /// Asks every connected peer for its tip (answers arrive as `PeerHeight`).
    fn poll_status(&mut self, now: Instant) {
        if self
            .sync
            .last_status_poll
            .is_some_and(|t| now.duration_since(t) < STATUS_POLL)
        {
            return;
        }
        self.sync.last_status_poll = Some(now);
        let net = self.net.clone();
        let me = self.me.clone();
        tokio::spawn(async move {
            let peers = net.peers().await.unwrap_or_default();
            for p in peers.into_iter().filter(|p| p.connected && !p.banned) {
                let (net, me) = (net.clone(), me.clone());
                tokio::spawn(async move {
                    let request = encode(&SyncRequest::Status);
                    let Ok(bytes) = net.request(p.peer_id, request).await else {
                        return;
                    };
                    if let Ok(SyncResponse::Status(s)) =
                        decode::<SyncResponse>("status", &bytes, 1024)
                    {
                        let _ = me
                            .send(EngineMsg::PeerHeight {
                                peer: p.peer_id,
                                height: s.height,
                            })
                            .await;
                    }
                });
            }
        });
    }

    pub(super) fn maybe_request_sync(&mut self) {
        let now = Instant::now();
        self.poll_status(now);
        self.sync
            .in_flight
            .retain(|_, r| now.duration_since(r.since) < REQUEST_DEADLINE);
        let Some(tip) = self.tip() else { return };
        self.sync.buffer = self.sync.buffer.split_off(&(tip.height + 1));
        let behind = self.sync.target > tip.height + 1;
        let stalled = self.sync.target > tip.height
            && self
                .status
                .borrow()
                .last_block_at
                .or(self.sync.last_progress)
                .is_none_or(|t| t.elapsed() > STALL);
        self.metrics.catching_up.set(i64::from(behind));
        if !behind && !stalled {
            if let Some(p) = self.sync.progress.take() {
                let secs = p.since.elapsed().as_secs_f64().max(1e-3);
                let blocks = tip.height.saturating_sub(p.from_height);
                tracing::info!(
                    height = tip.height,
                    blocks,
                    txs = p.txs,
                    peers = p.sources.len(),
                    seconds = format!("{secs:.1}"),
                    rate = format!(
                        "{:.0} blocks/s, {:.0} tx/s",
                        blocks as f64 / secs,
                        p.txs as f64 / secs
                    ),
                    "caught up with peers"
                );
            }
            return;
        }
        let hi = self.sync.target.min(tip.height + WINDOW);
        while self.sync.in_flight.len() < MAX_IN_FLIGHT {
            let Some((start, count)) = self.sync.next_gap(tip.height + 1, hi) else {
                break;
            };
            let Some((peer, peer_height)) = self.sync.pick(start) else {
                break;
            };
            let count = count.min(peer_height + 1 - start);
            if self.sync.progress.is_none() {
                self.sync.progress = Some(Progress {
                    since: now,
                    from_height: tip.height,
                    txs: 0,
                    last_log: now,
                    sources: HashSet::new(),
                });
                tracing::info!(
                    from = tip.height + 1,
                    target = self.sync.target,
                    peers = self.sync.peers.len(),
                    "catching up from peers"
                );
            }
            self.sync.in_flight.insert(
                start,
                Request {
                    peer,
                    count,
                    since: now,
                },
            );
            let net = self.net.clone();
            let me = self.me.clone();
            let genesis = self.genesis.clone();
            tokio::spawn(async move {
                let result = fetch(&net, &genesis, peer, start, count as u32).await;
                if let Err(Fault::Bad(reason, _)) = &result {
                    let _ = net.penalize(peer, *reason, reason.default_points()).await;
                }
                let _ = me
                    .send(EngineMsg::Synced(Box::new(Fetched {
                        peer,
                        from: start,
                        result,
                    })))
                    .await;
            });
        }
    }

    pub(super) fn on_synced(&mut self, fetched: Fetched) {
        let Fetched { peer, from, result } = fetched;
        if self
            .sync
            .in_flight
            .get(&from)
            .is_some_and(|r| r.peer == peer)
        {
            self.sync.in_flight.remove(&from);
        }
        match result {
            Err(Fault::Unavailable(e)) => {
                tracing::debug!(%peer, from, error = %e, "sync request failed");
                self.sync.forget(&peer);
            }
            Err(Fault::Bad(_, e)) => {
                tracing::warn!(%peer, from, error = %e, "peer served invalid blocks; not asking it again");
                self.sync.condemn(peer);
            }
            Ok(blocks) => {
                let tip = self.tip().map_or(0, |t| t.height);
                for v in blocks {
                    let h = v.block.header.height;
                    if h > tip && !self.sync.is_bad(&peer, Instant::now()) {
                        self.sync.buffer.entry(h).or_insert((peer, v));
                    }
                }
            }
        }
        self.apply_buffered();
        self.maybe_request_sync();
    }

    /// Commits buffered blocks that extend the tip, in order.
    fn apply_buffered(&mut self) {
        let mut applied = 0u64;
        let mut txs = 0u64;
        loop {
            let Some(tip) = self.tip() else { return };
            let Some((peer, v)) = self.sync.buffer.remove(&(tip.height + 1)) else {
                break;
            };
            let Verified {
                block,
                commit,
                hash,
            } = v;
            let height = block.header.height;
            if let Err(e) = check_header(
                &self.genesis.chain_id,
                &self.genesis.validators,
                &tip,
                &block,
            ) {
                tracing::warn!(%peer, height, error = %e, "synced block does not extend our tip");
                self.punish(peer, PenaltyReason::InvalidBlock);
                continue;
            }
            // Signatures were all verified by the fetch task (the ids are the hashes of
            // exactly those txs).
            let all_checked = |_: &Hash| true;
            let outcome = match execute_block(
                self.store.as_ref(),
                self.ctx(),
                &block,
                &Signatures::Cached(&all_checked),
            ) {
                Ok(o) => o,
                Err(e) => {
                    // Execution failed although > 2/3 signed it: the peer lied about the
                    // block's contents (the header is authentic, the body is not).
                    tracing::warn!(%peer, height, error = %e, "synced block does not execute");
                    self.punish(peer, PenaltyReason::InvalidBlock);
                    continue;
                }
            };
            let n = block.txs.len() as u64;
            if let Some(p) = self.sync.progress.as_mut() {
                p.sources.insert(peer);
            }
            self.executed.insert(hash, outcome);
            if self.commit(block, commit, false).is_err() {
                break;
            }
            applied += 1;
            txs += n;
        }
        if applied == 0 {
            return;
        }
        self.metrics.sync_blocks.inc_by(applied);
        self.sync.last_progress = Some(Instant::now());
        let tip = self.tip().map_or(0, |t| t.height);
        if let Some(p) = self.sync.progress.as_mut() {
            p.txs += txs;
            if p.last_log.elapsed() >= PROGRESS_EVERY {
                p.last_log = Instant::now();
                let secs = p.since.elapsed().as_secs_f64().max(1e-3);
                let blocks = tip.saturating_sub(p.from_height);
                tracing::info!(
                    height = tip,
                    target = self.sync.target,
                    in_flight = self.sync.in_flight.len(),
                    buffered = self.sync.buffer.len(),
                    rate = format!(
                        "{:.0} blocks/s, {:.0} tx/s",
                        blocks as f64 / secs,
                        p.txs as f64 / secs
                    ),
                    "sync progress"
                );
            }
        }
        let (catching_up, target) = (self.sync.catching_up(tip), self.sync.target());
        self.status.send_modify(|s| {
            s.catching_up = catching_up;
            s.sync_target = target;
        });
        if tip + 1 > self.core.height() {
            self.drive(Input::StartHeight { height: tip + 1 });
        }
    }

    fn punish(&mut self, peer: PeerId, reason: PenaltyReason) {
        self.sync.condemn(peer);
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.penalize(peer, reason, reason.default_points()).await;
        });
    }
}

/// Requests `count` blocks from `from` and checks them (see [`verify_chunk`]) on the
/// blocking pool.
pub async fn fetch(
    net: &NetworkHandle,
    genesis: &Arc<Genesis>,
    peer: PeerId,
    from: u64,
    count: u32,
) -> Result<Vec<Verified>, Fault> {
    let request = encode(&SyncRequest::Blocks { from, count });
    let bytes = net
        .request(peer, request)
        .await
        .map_err(|e| Fault::Unavailable(e.to_string()))?;
    let genesis = genesis.clone();
    tokio::task::spawn_blocking(move || verify_response(&genesis, from, count, &bytes))
        .await
        .map_err(|e| Fault::Unavailable(e.to_string()))?
}

/// Decodes a sync response and checks it with [`verify_chunk`].
pub fn verify_response(
    genesis: &Genesis,
    from: u64,
    count: u32,
    bytes: &[u8],
) -> Result<Vec<Verified>, Fault> {
    let blocks = match decode::<SyncResponse>("sync response", bytes, usize::MAX) {
        Ok(SyncResponse::Blocks(b)) => b,
        Ok(other) => {
            return Err(Fault::Bad(
                PenaltyReason::BadResponse,
                format!("unexpected response {other:?}"),
            ))
        }
        Err(e) => return Err(Fault::Bad(PenaltyReason::Undecodable, e.to_string())),
    };
    if blocks.is_empty() {
        return Err(Fault::Unavailable(format!("peer has no block {from}")));
    }
    if blocks.len() > count as usize {
        return Err(Fault::Bad(
            PenaltyReason::BadResponse,
            format!("asked for {count} blocks, got {}", blocks.len()),
        ));
    }
    verify_chunk(genesis, from, blocks)
}

/// Checks what can be checked without our state, in parallel over every core: heights
/// `from, from+1, ..`, each block's `prev_hash` is the previous block's hash, each
/// commit has > 2/3 of the power with valid signatures for its block, every tx
/// signature is valid.
pub fn verify_chunk(
    genesis: &Genesis,
    from: u64,
    blocks: Vec<(Block, Commit)>,
) -> Result<Vec<Verified>, Fault> {
    let bad = |e: String| Fault::Bad(PenaltyReason::InvalidBlock, e);
    let mut out: Vec<Verified> = Vec::with_capacity(blocks.len());
    for (i, (block, commit)) in blocks.into_iter().enumerate() {
        let h = from + i as u64;
        if block.header.height != h {
            return Err(bad(format!(
                "expected block {h}, got {}",
                block.header.height
            )));
        }
        if let Some(prev) = out.last() {
            if block.header.prev_hash != prev.hash {
                return Err(bad(format!("block {h} does not link to block {}", h - 1)));
            }
        }
        let hash = block.hash();
        out.push(Verified {
            block,
            commit,
            hash,
        });
    }
    out.par_iter().try_for_each(|v| {
        let h = v.block.header.height;
        genesis
            .validators
            .verify_commit(&genesis.chain_id, h, &v.hash, &v.commit)
            .map_err(|e| bad(format!("commit {h}: {e}")))?;
        v.block.txs.par_iter().enumerate().try_for_each(|(i, tx)| {
            tx.verify_signature()
                .map_err(|e| bad(format!("block {h} tx {i}: {e}")))
        })
    })?;
    Ok(out)
}

/// Answers a peer's sync request from the store, within the response size cap.
pub fn serve(store: &impl ChainReader, request: &[u8], max_bytes: usize) -> Option<Vec<u8>> {
    let request: SyncRequest = decode("sync request", request, 4096).ok()?;
    let response = match request {
        SyncRequest::Status => {
            let tip = store.tip().ok()?;
            SyncResponse::Status(crate::wire::SyncStatus {
                height: tip.height,
                tip_hash: tip.block_hash,
            })
        }
        SyncRequest::Blocks { from, count } => {
            let mut out = Vec::new();
            let mut size = 64usize;
            for h in from..from.saturating_add(u64::from(count.min(MAX_SYNC_BLOCKS))) {
                // A record we cannot read (missing, or failing its checksum) ends the
                // answer: we never serve what we cannot vouch for.
                let (Ok(Some(block)), Ok(Some(commit))) = (store.block(h), store.commit(h)) else {
                    break;
                };
                let n = encode(&block).len() + encode(&commit).len();
                if size + n > max_bytes && !out.is_empty() {
                    break;
                }
                size += n;
                out.push((block, commit));
            }
            SyncResponse::Blocks(out)
        }
    };
    Some(encode(&response))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ledger::block::{assemble, BlockTemplate};
    use ledger::crypto::Keypair;
    use ledger::exec::{build_body, ExecContext};
    use ledger::genesis::{GenesisAccount, GenesisFile, GenesisValidator, Params};
    use ledger::store::memory::MemStore;
    use ledger::store::ChainWriter;
    use ledger::types::{Payload, Tx};

    const CHAIN: &str = "sync-test";

    fn key(name: &str) -> Keypair {
        Keypair::from_secret_bytes(&ledger::sha256(name.as_bytes())).unwrap()
    }

    fn genesis(v: &Keypair, sender: &Keypair) -> Genesis {
        let file = GenesisFile {
            chain_id: CHAIN.into(),
            genesis_time_ms: 0,
            params: Params::default(),
            validators: vec![GenesisValidator {
                name: "v".into(),
                pubkey: hex::encode(v.public_key()),
                power: 1,
            }],
            accounts: vec![GenesisAccount {
                address: hex::encode(sender.address()),
                balance: 1_000_000,
            }],
        };
        Genesis::from_bytes("g.json", &serde_json::to_vec(&file).unwrap()).unwrap()
    }

    fn commit_for(v: &Keypair, height: u64, hash: Hash) -> Commit {
        ledger::block::sign_commit(CHAIN, height, 0, hash, &[v])
    }

    /// A valid chain of `n` blocks with two transfers each, in a MemStore.
    fn chain(n: u64) -> (Genesis, MemStore, Vec<(Block, Commit)>) {
        let (v, sender) = (key("v"), key("sender"));
        let g = genesis(&v, &sender);
        let store = MemStore::new(&g).unwrap();
        let ctx = ExecContext {
            chain_id: CHAIN,
            params: &g.params,
        };
        let mut out: Vec<(Block, Commit)> = Vec::new();
        for height in 1..=n {
            let tip = store.tip().unwrap();
            let txs: Vec<_> = (0..2)
                .map(|i| {
                    sender.sign_tx(Tx {
                        chain_id: CHAIN.into(),
                        from: sender.public_key(),
                        nonce: (height - 1) * 2 + i,
                        fee: 1,
                        payload: Payload::Transfer {
                            to: [9; 20],
                            amount: 1,
                        },
                    })
                })
                .collect();
            let body = build_body(&store, ctx, v.address(), txs, &Signatures::Verify).unwrap();
            assert!(body.rejected.is_empty());
            let block = assemble(
                BlockTemplate {
                    chain_id: CHAIN.into(),
                    height,
                    round: 0,
                    time_ms: height,
                    prev_hash: tip.block_hash,
                    validators_hash: g.validators.hash(),
                    proposer: v.address(),
                    last_commit: out.last().map(|(_, c)| c.clone()),
                },
                &body,
            );
            let commit = commit_for(&v, height, block.hash());
            let ids: Vec<Hash> = body.outcome.receipts.iter().map(|r| r.id).collect();
            store
                .commit_block(&block, &commit, &body.outcome.update, &ids)
                .unwrap();
            out.push((block, commit));
        }
        (g, store, out)
    }

    fn is_bad(r: Result<Vec<Verified>, Fault>) -> bool {
        matches!(r, Err(Fault::Bad(PenaltyReason::InvalidBlock, _)))
    }

    #[test]
    fn a_valid_chunk_passes_and_every_kind_of_tampering_is_caught() {
        let (g, _, blocks) = chain(5);
        assert_eq!(verify_chunk(&g, 1, blocks.clone()).unwrap().len(), 5);
        assert_eq!(verify_chunk(&g, 3, blocks[2..].to_vec()).unwrap().len(), 3);
        // Not the heights asked for.
        assert!(is_bad(verify_chunk(&g, 2, blocks.clone())));
        // A gap: block 3 missing.
        let mut gap = blocks.clone();
        gap.remove(2);
        assert!(is_bad(verify_chunk(&g, 1, gap)));
        // A commit for another block.
        let mut wrong = blocks.clone();
        wrong[1].1 = blocks[2].1.clone();
        assert!(is_bad(verify_chunk(&g, 1, wrong)));
        // A commit signed by someone outside the validator set.
        let mut forged = blocks.clone();
        forged[4].1 = commit_for(&key("mallory"), 5, blocks[4].0.hash());
        assert!(is_bad(verify_chunk(&g, 1, forged)));
        // A tx signature flipped (same header: the commit still matches the header).
        let mut tampered = blocks.clone();
        tampered[3].0.txs[1].signature[10] ^= 1;
        assert!(is_bad(verify_chunk(&g, 1, tampered)));
    }

    #[test]
    fn serve_answers_within_the_cap_and_the_answer_verifies() {
        let (g, store, _) = chain(6);
        let request = encode(&SyncRequest::Blocks { from: 2, count: 64 });
        let all = serve(&store, &request, 1 << 20).unwrap();
        assert_eq!(verify_response(&g, 2, 64, &all).unwrap().len(), 5);
        // A tiny cap still returns one block, never zero.
        let one = serve(&store, &request, 10).unwrap();
        assert_eq!(verify_response(&g, 2, 64, &one).unwrap().len(), 1);
        // More than asked for is a bad response; nothing is "unavailable".
        assert!(matches!(
            verify_response(&g, 2, 3, &all),
            Err(Fault::Bad(PenaltyReason::BadResponse, _))
        ));
        let none = serve(
            &store,
            &encode(&SyncRequest::Blocks { from: 9, count: 4 }),
            1 << 20,
        )
        .unwrap();
        assert!(matches!(
            verify_response(&g, 9, 4, &none),
            Err(Fault::Unavailable(_))
        ));
        assert!(matches!(
            verify_response(&g, 2, 4, b"garbage"),
            Err(Fault::Bad(PenaltyReason::Undecodable, _))
        ));
    }

    #[test]
    fn gaps_skip_buffered_and_requested_heights_and_bad_peers_are_not_picked() {
        let (_, _, blocks) = chain(1);
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = SyncState::default();
        assert_eq!(s.next_gap(1, 500), Some((1, 64)));
        s.in_flight.insert(
            1,
            Request {
                peer: a,
                count: 64,
                since: Instant::now(),
            },
        );
        assert_eq!(s.next_gap(1, 500), Some((65, 64)));
        let (block, commit) = blocks[0].clone();
        let hash = block.hash();
        s.buffer.insert(
            65,
            (
                b,
                Verified {
                    block,
                    commit,
                    hash,
                },
            ),
        );
        assert_eq!(s.next_gap(1, 500), Some((66, 64)));
        assert_eq!(s.next_gap(1, 70), Some((66, 5)));
        assert_eq!(s.next_gap(1, 65), None);
        s.peers.insert(a, 1000);
        s.peers.insert(b, 1000);
        // b is idle, a has one request: b first.
        assert_eq!(s.pick(66).map(|p| p.0), Some(b));
        s.condemn(b);
        assert!(s.buffer.is_empty(), "a bad peer's blocks are dropped");
        assert_eq!(s.pick(66).map(|p| p.0), Some(a));
        s.condemn(a);
        assert_eq!(s.pick(66), None, "bad peers are not asked again");
    }
}
