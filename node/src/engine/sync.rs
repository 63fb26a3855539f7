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
//!
//! What peers say about their height is a claim, not a fact: claims choose whom to ask,
//! but what the node reports (`catching_up`, `sync_target`) comes only from heights proven
//! by a valid commit (blocks fetched and verified, or decided by our own core). A peer that
//! stated a height in a status answer and then has none of the blocks asked for is
//! penalised and not believed for [`CLAIM_PAUSE`]; an oversized or undecodable status
//! answer is penalised too. A failure of our own store while applying a synced block is
//! never blamed on the peer that served it: it is reported (log, metric, `/v1/status`) and
//! the block is retried at the next tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::Input;
use ledger::block::check_header;
use ledger::codec::{decode, encode};
use ledger::exec::{execute_block, BlockOutcome, ExecContext, Signatures};
use ledger::genesis::Genesis;
use ledger::store::ChainReader;
use ledger::types::{Block, Commit};
use ledger::Hash;
use rayon::prelude::*;
use tally_p2p::{NetworkHandle, PeerId, PenaltyReason};

use super::{Engine, EngineMsg};
use crate::metrics::StorageHealth;
use crate::wire::{SyncRequest, SyncResponse, SyncStatus, MAX_SYNC_BLOCKS};

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
/// How long the claims of a peer that did not serve a height it claimed are ignored. Short:
/// it only saves requests (what the node reports never rests on claims), and each lie after
/// it costs the liar again, so a peer that keeps lying is banned within minutes (10 points a
/// lie, -100 to ban, a 10-minute score half-life).
const CLAIM_PAUSE: Duration = Duration::from_secs(10);
/// The size of a status answer, `SyncResponse::Status` (variant tag, height, tip hash):
/// anything larger is not a status answer.
pub const STATUS_BYTES: usize = 1 + 8 + 32;

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
    /// Timeout, disconnect, refusal: not provably the peer's fault, ask someone else.
    Unavailable(String),
    /// The peer answered that it has none of the blocks asked for: its fault only if it
    /// claimed them (see [`SyncState::served_nothing`]).
    Missing(String),
    /// The peer served something invalid.
    Bad(PenaltyReason, String),
}

/// An answer to a sync request, checked off the engine task.
#[derive(Debug)]
pub enum Fetched {
    /// Blocks asked for from `from` on.
    Blocks {
        peer: PeerId,
        from: u64,
        result: Result<Vec<Verified>, Fault>,
    },
    /// A status answer: the peer states that its tip is `height`.
    Status { peer: PeerId, height: u64 },
}

/// What one peer says it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Claim {
    height: u64,
    /// Stated in a status answer (scored if not served), rather than inferred from the
    /// consensus messages it relayed (a relay may forward votes of heights it lacks).
    stated: bool,
}

/// What to do with the block at tip + 1 (see [`SyncState::check_next`]).
pub(super) enum Next {
    /// No block at tip + 1 is buffered.
    Empty,
    /// Checked and executed: commit it.
    Ready {
        peer: PeerId,
        verified: Box<Verified>,
        outcome: BlockOutcome,
    },
    /// The block does not extend the tip or does not execute: the peer that served it.
    PeerFault {
        peer: PeerId,
        height: u64,
        reason: PenaltyReason,
        error: String,
    },
    /// Our own store failed (reported): nobody else's fault; the block stays buffered and
    /// is tried again.
    Storage,
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
    /// What each peer claims to have. Unproven: used to choose whom to ask, never reported.
    peers: HashMap<PeerId, Claim>,
    /// The highest height proven by a valid commit (a verified fetched block, or a block
    /// our own core decided): what `catching_up` and `sync_target` report.
    proven: u64,
    /// Peers that did not serve a height they claimed: not believed until `CLAIM_PAUSE`
    /// has passed.
    doubted: HashMap<PeerId, Instant>,
    /// Applying a synced block failed on our own store: try again at the next tick.
    storage_retry: bool,
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
    /// Whether a height proven by a valid commit is past the next one.
    pub(super) fn catching_up(&self, tip: u64) -> bool {
        self.proven > tip.saturating_add(1)
    }

    /// The highest height proven by a valid commit (what `/v1/status` reports).
    pub(super) fn target(&self) -> u64 {
        self.proven
    }

    /// `height` is proven by a valid commit (our core decided it).
    pub(super) fn raise_target(&mut self, height: u64) {
        self.proven = self.proven.max(height);
    }

    /// The highest height worth asking for: proven, or claimed by a peer still believed.
    fn wanted(&self) -> u64 {
        self.peers
            .values()
            .map(|c| c.height)
            .fold(self.proven, u64::max)
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

    fn is_doubted(&self, peer: &PeerId, now: Instant) -> bool {
        self.doubted
            .get(peer)
            .is_some_and(|t| now.duration_since(*t) < CLAIM_PAUSE)
    }

    /// Records that `peer` says it has every block up to `height` (`stated`: in a status
    /// answer). Ignored while the peer is doubted.
    fn claim(&mut self, peer: PeerId, height: u64, stated: bool, now: Instant) {
        if self.is_doubted(&peer, now) {
            return;
        }
        let claim = self.peers.entry(peer).or_insert(Claim {
            height: 0,
            stated: false,
        });
        if height > claim.height {
            *claim = Claim { height, stated };
        } else if height == claim.height {
            claim.stated |= stated;
        }
    }

    /// `peer` answered that it has no block from `from` on. If that contradicts its claim,
    /// the claim is dropped and the peer is not believed for [`CLAIM_PAUSE`]; the penalty
    /// to charge is returned when the claim was stated in a status answer.
    fn served_nothing(&mut self, peer: PeerId, from: u64, now: Instant) -> Option<PenaltyReason> {
        let claim = self.peers.remove(&peer);
        self.in_flight.retain(|_, r| r.peer != peer);
        let claim = claim.filter(|c| c.height >= from)?;
        self.doubted
            .retain(|_, t| now.duration_since(*t) < CLAIM_PAUSE);
        self.doubted.insert(peer, now);
        claim.stated.then_some(PenaltyReason::BadResponse)
    }

    /// The least busy good peer that has `need`, with its height.
    fn pick(&self, need: u64, now: Instant) -> Option<(PeerId, u64)> {
        let busy = |p: &PeerId| self.in_flight.values().filter(|r| &r.peer == p).count();
        self.peers
            .iter()
            .filter(|(p, c)| {
                c.height >= need
                    && !self.is_bad(p, now)
                    && !self.is_doubted(p, now)
                    && busy(p) < PER_PEER
            })
            .min_by_key(|(p, c)| (busy(p), std::cmp::Reverse(c.height)))
            .map(|(p, c)| (*p, c.height))
    }

    /// A claim past everything proven: ask its peer for that one block, recorded as in
    /// flight, so that the claim is proven at once (`catching_up` and `sync_target` say so
    /// for the whole catch-up, not only while a chunk waits in the buffer) or, if the peer
    /// does not serve it, found out at once. The highest such claim first, one at a time.
    fn next_probe(&mut self, tip: u64, now: Instant) -> Option<(PeerId, u64)> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let floor = self.proven.max(tip.saturating_add(1));
        let (peer, height) = self
            .peers
            .iter()
            .filter(|(p, c)| {
                c.height > floor
                    && !self.is_bad(p, now)
                    && !self.is_doubted(p, now)
                    && !self.in_flight.contains_key(&c.height)
                    && !self.buffer.contains_key(&c.height)
            })
            .max_by_key(|(_, c)| c.height)
            .map(|(p, c)| (*p, c.height))?;
        self.in_flight.insert(
            height,
            Request {
                peer,
                count: 1,
                since: now,
            },
        );
        Some((peer, height))
    }

    /// The next request to send, recorded as in flight: (peer, first height, count).
    fn next_request(&mut self, tip: u64, now: Instant) -> Option<(PeerId, u64, u64)> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let hi = self.wanted().min(tip.saturating_add(WINDOW));
        let (start, count) = self.next_gap(tip.saturating_add(1), hi)?;
        let (peer, peer_height) = self.pick(start, now)?;
        // Never past what the peer claims (it may claim anything, u64::MAX included).
        let count = count.min(peer_height.saturating_sub(start).saturating_add(1));
        self.in_flight.insert(
            start,
            Request {
                peer,
                count,
                since: now,
            },
        );
        Some((peer, start, count))
    }

    /// Takes the buffered block at tip + 1 and checks it against `store`: header linkage,
    /// then execution (signatures were verified by the fetch task). An execution error of
    /// our own store ([`ledger::exec::BlockError::is_peer_fault`] false) is reported to
    /// `storage` and leaves the block buffered; any other failure is the serving peer's.
    pub(super) fn check_next<S: ChainReader + ?Sized>(
        &mut self,
        store: &S,
        genesis: &Genesis,
        storage: &StorageHealth,
    ) -> Next {
        let tip = match store.tip() {
            Ok(t) => t,
            Err(e) => {
                storage.report("sync: reading the chain tip", &e);
                return Next::Storage;
            }
        };
        let height = tip.height.saturating_add(1);
        let Some((peer, verified)) = self.buffer.remove(&height) else {
            return Next::Empty;
        };
        if let Err(e) = check_header(
            &genesis.chain_id,
            &genesis.validators,
            &tip,
            &verified.block,
        ) {
            return Next::PeerFault {
                peer,
                height,
                reason: PenaltyReason::InvalidBlock,
                error: format!("does not extend our tip: {e}"),
            };
        }
        let ctx = ExecContext {
            chain_id: &genesis.chain_id,
            params: &genesis.params,
        };
        let all_checked = |_: &Hash| true;
        match super::heavy(|| {
            execute_block(
                store,
                ctx,
                &verified.block,
                &Signatures::Cached(&all_checked),
            )
        }) {
            Ok(outcome) => Next::Ready {
                peer,
                verified: Box::new(verified),
                outcome,
            },
            Err(e) if !e.is_peer_fault() => {
                storage.report(&format!("sync: executing block {height}"), &e);
                self.buffer.insert(height, (peer, verified));
                Next::Storage
            }
            // Execution failed although > 2/3 signed the header: the peer lied about the
            // block's contents (the header is authentic, the body is not).
            Err(e) => Next::PeerFault {
                peer,
                height,
                reason: PenaltyReason::InvalidBlock,
                error: format!("does not execute: {e}"),
            },
        }
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
    /// A height inferred from what `peer` relayed (or told the router on connecting).
    pub(super) fn note_peer_height(&mut self, peer: PeerId, height: u64) {
        self.note_claim(peer, height, false);
    }

    fn note_claim(&mut self, peer: PeerId, height: u64, stated: bool) {
        self.sync.claim(peer, height, stated, Instant::now());
        let tip = self.tip().map_or(0, |t| t.height);
        if height > tip.saturating_add(1) {
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
                    match read_status(&bytes) {
                        Ok(s) => {
                            let status = Fetched::Status {
                                peer: p.peer_id,
                                height: s.height,
                            };
                            let _ = me.send(EngineMsg::Synced(Box::new(status))).await;
                        }
                        Err(Fault::Bad(reason, e)) => {
                            tracing::debug!(peer = %p.peer_id, error = %e, "bad status answer");
                            let _ = net
                                .penalize(p.peer_id, reason, reason.default_points())
                                .await;
                        }
                        Err(_) => {}
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
        if std::mem::take(&mut self.sync.storage_retry) {
            self.apply_buffered();
        }
        let Some(tip) = self.tip() else { return };
        self.sync.buffer = self.sync.buffer.split_off(&tip.height.saturating_add(1));
        let wanted = self.sync.wanted();
        let behind = wanted > tip.height.saturating_add(1);
        let stalled = wanted > tip.height
            && self
                .status
                .borrow()
                .last_block_at
                .or(self.sync.last_progress)
                .is_none_or(|t| t.elapsed() > STALL);
        self.metrics
            .catching_up
            .set(i64::from(self.sync.catching_up(tip.height)));
        self.metrics
            .sync_target
            .set(i64::try_from(self.sync.target()).unwrap_or(i64::MAX));
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
        if let Some((peer, height)) = self.sync.next_probe(tip.height, now) {
            self.spawn_fetch(peer, height, 1);
        }
        while let Some((peer, start, count)) = self.sync.next_request(tip.height, now) {
            if self.sync.progress.is_none() {
                self.sync.progress = Some(Progress {
                    since: now,
                    from_height: tip.height,
                    txs: 0,
                    last_log: now,
                    sources: HashSet::new(),
                });
                tracing::info!(
                    from = tip.height.saturating_add(1),
                    claimed = wanted,
                    peers = self.sync.peers.len(),
                    "catching up from peers"
                );
            }
            self.spawn_fetch(peer, start, count);
        }
    }

    /// Fetches `count` blocks from `start` off the engine task; the checked answer comes back
    /// as [`EngineMsg::Synced`].
    fn spawn_fetch(&self, peer: PeerId, start: u64, count: u64) {
        let net = self.net.clone();
        let me = self.me.clone();
        let genesis = self.genesis.clone();
        let count = u32::try_from(count).unwrap_or(MAX_SYNC_BLOCKS);
        tokio::spawn(async move {
            let result = fetch(&net, &genesis, peer, start, count).await;
            if let Err(Fault::Bad(reason, _)) = &result {
                let _ = net.penalize(peer, *reason, reason.default_points()).await;
            }
            let fetched = Fetched::Blocks {
                peer,
                from: start,
                result,
            };
            let _ = me.send(EngineMsg::Synced(Box::new(fetched))).await;
        });
    }

    pub(super) fn on_synced(&mut self, fetched: Fetched) {
        let (peer, from, result) = match fetched {
            Fetched::Status { peer, height } => {
                self.note_claim(peer, height, true);
                return;
            }
            Fetched::Blocks { peer, from, result } => (peer, from, result),
        };
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
            Err(Fault::Missing(e)) => {
                if let Some(reason) = self.sync.served_nothing(peer, from, Instant::now()) {
                    tracing::warn!(
                        %peer,
                        from,
                        error = %e,
                        "peer stated a height it does not serve; not believing it for a while"
                    );
                    let net = self.net.clone();
                    tokio::spawn(async move {
                        let _ = net.penalize(peer, reason, reason.default_points()).await;
                    });
                } else {
                    tracing::debug!(%peer, from, error = %e, "peer has no blocks there");
                }
            }
            Err(Fault::Bad(_, e)) => {
                tracing::warn!(%peer, from, error = %e, "peer served invalid blocks; not asking it again");
                self.sync.condemn(peer);
            }
            Ok(blocks) => {
                let tip = self.tip().map_or(0, |t| t.height);
                for v in blocks {
                    let h = v.block.header.height;
                    // Its commit was verified: the height is proven.
                    self.sync.raise_target(h);
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
            let (peer, verified, outcome) = match self.sync.check_next(
                self.store.as_ref(),
                &self.genesis,
                &self.metrics.storage,
            ) {
                Next::Empty => break,
                Next::Storage => {
                    self.sync.storage_retry = true;
                    break;
                }
                Next::PeerFault {
                    peer,
                    height,
                    reason,
                    error,
                } => {
                    tracing::warn!(%peer, height, error = %error, "synced block is invalid");
                    self.punish(peer, reason);
                    continue;
                }
                Next::Ready {
                    peer,
                    verified,
                    outcome,
                } => (peer, verified, outcome),
            };
            let Verified {
                block,
                commit,
                hash,
            } = *verified;
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
        let target = self.sync.target();
        let (in_flight, buffered) = (self.sync.in_flight.len(), self.sync.buffer.len());
        if let Some(p) = self.sync.progress.as_mut() {
            p.txs += txs;
            if p.last_log.elapsed() >= PROGRESS_EVERY {
                p.last_log = Instant::now();
                let secs = p.since.elapsed().as_secs_f64().max(1e-3);
                let blocks = tip.saturating_sub(p.from_height);
                tracing::info!(
                    height = tip,
                    target,
                    in_flight,
                    buffered,
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
        return Err(Fault::Missing(format!("peer has no block {from}")));
    }
    if blocks.len() > count as usize {
        return Err(Fault::Bad(
            PenaltyReason::BadResponse,
            format!("asked for {count} blocks, got {}", blocks.len()),
        ));
    }
    verify_chunk(genesis, from, blocks)
}

/// Decodes a status answer: one `SyncResponse::Status` of [`STATUS_BYTES`]. A larger or
/// undecodable answer is the peer's fault; an empty one is what a peer that cannot read
/// its own tip sends.
pub fn read_status(bytes: &[u8]) -> Result<SyncStatus, Fault> {
    if bytes.is_empty() {
        return Err(Fault::Unavailable("empty status answer".into()));
    }
    match decode::<SyncResponse>("status answer", bytes, STATUS_BYTES) {
        Ok(SyncResponse::Status(s)) => Ok(s),
        Ok(SyncResponse::Blocks(_)) => Err(Fault::Bad(
            PenaltyReason::BadResponse,
            "blocks in answer to a status request".into(),
        )),
        Err(e @ ledger::codec::DecodeError::TooLarge { .. }) => {
            Err(Fault::Bad(PenaltyReason::Oversized, e.to_string()))
        }
        Err(e) => Err(Fault::Bad(PenaltyReason::Undecodable, e.to_string())),
    }
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

/// An encoded answer to a peer's sync request, and how many blocks it carries (for
/// `tally_sync_blocks_served_total`).
pub struct Served {
    pub bytes: Vec<u8>,
    pub blocks: u64,
}

/// Answers a peer's sync request from the store, within the response size cap.
pub fn serve(store: &impl ChainReader, request: &[u8], max_bytes: usize) -> Option<Served> {
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
    let blocks = match &response {
        SyncResponse::Blocks(b) => b.len() as u64,
        SyncResponse::Status(_) => 0,
    };
    Some(Served {
        bytes: encode(&response),
        blocks,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ledger::block::{assemble, BlockTemplate};
    use ledger::crypto::Keypair;
    use ledger::exec::{build_body, ExecContext};
    use ledger::store::memory::MemStore;
    use ledger::store::ChainWriter;
    use ledger::types::{Payload, Tx};

    const CHAIN: &str = "sync-test";

    use crate::testing::key;

    fn genesis(v: &Keypair, sender: &Keypair) -> Genesis {
        crate::testing::genesis(CHAIN, &[v], &[(sender, 1_000_000)])
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
        let served = serve(&store, &request, 1 << 20).unwrap();
        assert_eq!(served.blocks, 5);
        let all = served.bytes;
        assert_eq!(verify_response(&g, 2, 64, &all).unwrap().len(), 5);
        // A tiny cap still returns one block, never zero.
        let one = serve(&store, &request, 10).unwrap();
        assert_eq!(one.blocks, 1);
        assert_eq!(verify_response(&g, 2, 64, &one.bytes).unwrap().len(), 1);
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
        assert_eq!(none.blocks, 0);
        let status = serve(&store, &encode(&SyncRequest::Status), 1 << 20).unwrap();
        assert_eq!(status.blocks, 0);
        assert!(matches!(
            verify_response(&g, 9, 4, &none.bytes),
            Err(Fault::Missing(_))
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
        let now = Instant::now();
        s.claim(a, 1000, true, now);
        s.claim(b, 1000, true, now);
        // b is idle, a has one request: b first.
        assert_eq!(s.pick(66, now).map(|p| p.0), Some(b));
        s.condemn(b);
        assert!(s.buffer.is_empty(), "a bad peer's blocks are dropped");
        assert_eq!(s.pick(66, now).map(|p| p.0), Some(a));
        s.condemn(a);
        assert_eq!(s.pick(66, now), None, "bad peers are not asked again");
    }

    /// Item 6 of issue 17: a peer states u64::MAX in its status answer. The node asks it
    /// (without overflowing), reports no catching up on its word alone, penalises it when
    /// it serves nothing, and does not believe it again for a while.
    #[test]
    fn a_peer_claiming_u64_max_that_serves_nothing_is_penalised_and_not_believed() {
        let mut s = SyncState::default();
        let (liar, honest) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let tip = 10;
        s.claim(honest, tip, true, now);
        s.claim(liar, u64::MAX, true, now);
        // Asking saturates instead of overflowing on the claimed height.
        let first = s.next_request(tip, now);
        assert_eq!(first, Some((liar, tip + 1, u64::from(MAX_SYNC_BLOCKS))));
        assert!(!s.catching_up(tip), "a claim alone is not reported");
        assert_eq!(s.wanted(), u64::MAX, "but it is worth asking");
        // The liar has nothing: it stated a height it does not serve.
        let penalty = s.served_nothing(liar, tip + 1, now);
        assert_eq!(penalty, Some(PenaltyReason::BadResponse));
        assert!(!s.catching_up(tip));
        assert_eq!(s.wanted(), tip, "its claim is gone");
        assert_eq!(s.next_request(tip, now), None, "nobody else claims more");
        // Its next status answer is not believed during the pause.
        s.claim(liar, u64::MAX, true, now + Duration::from_secs(2));
        assert_eq!(s.wanted(), tip);
        assert!(!s.catching_up(tip));
        // A peer that only relayed messages of a height (no stated claim) is not scored.
        s.claim(honest, tip + 5, false, now);
        assert!(s.next_request(tip, now).is_some());
        assert_eq!(s.served_nothing(honest, tip + 1, now), None);
        // A height proven by a valid commit is reported; a saturating check at the top.
        s.raise_target(tip + 100);
        assert!(s.catching_up(tip));
        assert!(!s.catching_up(u64::MAX));
    }

    #[test]
    fn the_highest_unproven_claim_is_probed_once_so_catching_up_shows_for_the_whole_sync() {
        let mut s = SyncState::default();
        let (ahead, near) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let tip = 10;
        s.claim(near, tip + 1, true, now);
        assert_eq!(
            s.next_probe(tip, now),
            None,
            "one block ahead is not worth a probe"
        );
        s.claim(ahead, tip + 500, true, now);
        assert_eq!(s.next_probe(tip, now), Some((ahead, tip + 500)));
        assert_eq!(s.next_probe(tip, now), None, "already in flight");
        // Chunks are still asked from the tip up (of the least busy peer that has them).
        let (_, start, _) = s.next_request(tip, now).expect("a chunk request");
        assert_eq!(start, tip + 1);
        // The probed block's commit verified: the claim is proven, and reported at once.
        s.in_flight.remove(&(tip + 500));
        s.raise_target(tip + 500);
        assert!(s.catching_up(tip));
        assert_eq!(s.next_probe(tip, now), None, "nothing unproven left");
        // A liar's probe is the one block it cannot serve.
        let liar = PeerId::random();
        s.claim(liar, u64::MAX, true, now);
        assert_eq!(s.next_probe(tip, now), Some((liar, u64::MAX)));
        assert_eq!(
            s.served_nothing(liar, u64::MAX, now),
            Some(PenaltyReason::BadResponse)
        );
        assert_eq!(s.next_probe(tip, now), None);
    }

    #[test]
    fn status_bytes_is_the_size_of_a_status_answer() {
        let answer = SyncResponse::Status(SyncStatus {
            height: u64::MAX,
            tip_hash: [0xff; 32],
        });
        assert_eq!(encode(&answer).len(), STATUS_BYTES);
        assert_eq!(read_status(&encode(&answer)).unwrap().height, u64::MAX);
    }

    /// Item 12 of issue 17: a 32 MiB answer to a status poll is refused and penalised.
    #[test]
    fn an_oversized_or_garbled_status_answer_is_penalised() {
        let huge = vec![0u8; 32 << 20];
        assert!(
            matches!(
                read_status(&huge),
                Err(Fault::Bad(PenaltyReason::Oversized, _))
            ),
            "{:?}",
            read_status(&huge).map(|s| s.height)
        );
        assert!(matches!(
            read_status(b"garbage"),
            Err(Fault::Bad(PenaltyReason::Undecodable, _))
        ));
        let blocks = encode(&SyncResponse::Blocks(vec![]));
        assert!(matches!(
            read_status(&blocks),
            Err(Fault::Bad(PenaltyReason::BadResponse, _))
        ));
        assert!(matches!(read_status(&[]), Err(Fault::Unavailable(_))));
    }

    /// Item 5 of issue 17: our own store fails account reads while a synced block is
    /// applied. The peer that served the block is not blamed, the block stays buffered for
    /// a retry, the error is reported, and the block applies once the store works again.
    #[test]
    fn a_storage_error_while_applying_a_synced_block_blames_no_peer() {
        let (g, _, blocks) = chain(2);
        let store = testing::FailingStore::new(MemStore::new(&g).unwrap());
        let peer = PeerId::random();
        let mut s = SyncState::default();
        for v in verify_chunk(&g, 1, blocks).unwrap() {
            s.buffer.insert(v.block.header.height, (peer, v));
        }
        s.claim(peer, 2, true, Instant::now());
        let health = StorageHealth::default();
        store.fail_account_reads(true);
        let next = s.check_next(&store, &g, &health);
        assert!(
            matches!(next, Next::Storage),
            "a local storage error was blamed on the peer: {}",
            describe(&next)
        );
        assert!(
            !s.is_bad(&peer, Instant::now()),
            "the peer is not condemned"
        );
        assert!(s.buffer.contains_key(&1), "the block is kept for a retry");
        assert_eq!(health.count(), 1);
        let last = health.last().unwrap_or_default();
        assert!(last.contains("injected"), "{last}");
        // The disk recovers: the same block applies.
        store.fail_account_reads(false);
        match s.check_next(&store, &g, &health) {
            Next::Ready {
                peer: p, verified, ..
            } => {
                assert_eq!(p, peer);
                assert_eq!(verified.block.header.height, 1);
            }
            other => panic!("expected the block to apply: {}", describe(&other)),
        }
    }

    /// Item 12 of issue 17 and scenario 7 of issue 18: a block our store refuses to write
    /// halts consensus (no more signing or applying; later messages are ignored) with the
    /// error reported in the log, the metrics and `/v1/status`, while the process keeps
    /// serving. The refusal here is RocksDB's "not the next block"; a full disk takes the
    /// same path.
    #[tokio::test]
    async fn a_block_the_store_cannot_write_halts_consensus_and_says_why() {
        use ledger::exec::BlockOutcome;

        let (_, _, blocks) = chain(1);
        let g = Arc::new(genesis(&key("v"), &key("sender")));
        let dir = tempfile::tempdir().unwrap();
        let mut engine = crate::testing::engine(g.clone(), dir.path());
        let status = engine.status.subscribe();
        // The control: a running engine starts height 1 on this message.
        let other = tempfile::tempdir().unwrap();
        let mut running = crate::testing::engine(g, other.path());
        running.on_message(EngineMsg::StartHeight(1));
        assert_eq!(running.core.height(), 1);
        let (mut block, commit) = blocks[0].clone();
        block.header.height = 5;
        engine.executed.insert(
            block.hash(),
            BlockOutcome {
                update: Default::default(),
                receipts: vec![],
            },
        );
        assert!(engine.commit(block, commit, true).is_err());
        let halted = status.borrow().halted.clone().unwrap_or_default();
        assert!(
            halted.contains("cannot commit block 5") && halted.contains("not a peer's fault"),
            "{halted}"
        );
        assert_eq!(engine.metrics.halted.get(), 1);
        assert_eq!(engine.metrics.storage.count(), 1);
        let last = engine.metrics.storage.last().unwrap_or_default();
        assert!(last.contains("committing block 5"), "{last}");
        // Halted: the next height does not start (on a running engine it would).
        engine.on_message(EngineMsg::StartHeight(1));
        assert_eq!(engine.core.height(), 0, "a halted engine started a height");
        assert!(engine.timers.is_empty(), "no timer left running");
    }

    fn describe(n: &Next) -> String {
        match n {
            Next::Empty => "empty".into(),
            Next::Ready { .. } => "ready".into(),
            Next::Storage => "storage".into(),
            Next::PeerFault { reason, error, .. } => format!("peer fault {reason}: {error}"),
        }
    }
}

/// A store whose account reads can be made to fail, as a failing disk would.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};

    use ledger::state::{AccountReader, StateReader};
    use ledger::store::memory::MemStore;
    use ledger::store::{ChainReader, StoreError, Tip, TxLocation};
    use ledger::types::{Account, Block, Commit};
    use ledger::Hash;

    pub struct FailingStore {
        inner: MemStore,
        fail_accounts: AtomicBool,
    }

    impl FailingStore {
        pub fn new(inner: MemStore) -> Self {
            Self {
                inner,
                fail_accounts: AtomicBool::new(false),
            }
        }

        pub fn fail_account_reads(&self, on: bool) {
            self.fail_accounts.store(on, Ordering::SeqCst);
        }
    }

    impl AccountReader for FailingStore {
        fn account_by_key(&self, key: &Hash) -> Result<Option<Account>, StoreError> {
            if self.fail_accounts.load(Ordering::SeqCst) {
                return Err(StoreError::Db(
                    "injected: IO error: reading an account failed".into(),
                ));
            }
            self.inner.account_by_key(key)
        }
    }

    impl StateReader for FailingStore {
        fn tree_node(
            &self,
            key: &jmt::storage::NodeKey,
        ) -> Result<Option<jmt::storage::Node>, StoreError> {
            self.inner.tree_node(key)
        }
        fn tree_version(&self) -> Result<Option<(u64, Hash)>, StoreError> {
            self.inner.tree_version()
        }
    }

    impl ChainReader for FailingStore {
        fn tip(&self) -> Result<Tip, StoreError> {
            self.inner.tip()
        }
        fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
            self.inner.block(height)
        }
        fn commit(&self, height: u64) -> Result<Option<Commit>, StoreError> {
            self.inner.commit(height)
        }
        fn height_of(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
            self.inner.height_of(hash)
        }
        fn tx_location(&self, id: &Hash) -> Result<Option<TxLocation>, StoreError> {
            self.inner.tx_location(id)
        }
        fn genesis_hash(&self) -> Result<Hash, StoreError> {
            self.inner.genesis_hash()
        }
    }
}
