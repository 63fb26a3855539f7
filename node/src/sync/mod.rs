//! Catch-up: when peers are ahead, fetch committed blocks with their commits over
//! `/tally/sync/1` from several peers at once, check each like a follower (header
//! linkage, > 2/3 precommits, full re-execution with the state root), commit them in
//! order, then rejoin consensus at the new height.
//!
//! The sync actor owns who claims what, the requests in flight and the reorder buffer;
//! the chain host owns the store and applies what sync hands it.
//!
//! ```text
//!  router/driver ──PeerHeight/PeerGone──▶ sync
//!  sync ── chunk [h, h+64) ──▶ fetch task (peer A) ─┐ decode, height sequence, hash
//!       ── chunk [h+64, ..) ─▶ fetch task (peer B) ─┤ linkage inside the chunk,
//!       ── ...  (≤ MAX_IN_FLIGHT, ≤ PER_PEER each)  ┘ commits and tx signatures
//!                                                     (rayon, every core)
//!  sync ◀── Fetched ── (its own JoinSet) ── reorder buffer (BTreeMap by height)
//!       ── blocks tip+1.. while buffered ──HostMsg::Synced──▶ host: check_header against
//!          the tip, execute (signatures already checked), commit (one synced batch per
//!          block) ──Applied──▶ sync, ──Committed──▶ driver (rejoins at the new height)
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
//! the block is handed over again at the next tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::codec::encode;
use ledger::genesis::Genesis;
use tally_p2p::{NetworkHandle, PeerId, PenaltyReason};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::chain::{Applied, HostMsg};
use crate::metrics::ChainMetrics;
use crate::status::StatusTx;
use crate::wire::{SyncRequest, MAX_SYNC_BLOCKS};

mod fetch;
pub use fetch::{
    fetch, read_status, serve, verify_chunk, verify_chunk_trusting, verify_response, Fault,
    Fetched, Served, Verified, STATUS_BYTES,
};

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

/// What one peer says it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Claim {
    height: u64,
    /// Stated in a status answer (scored if not served), rather than inferred from the
    /// consensus messages it relayed (a relay may forward votes of heights it lacks).
    stated: bool,
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
pub(crate) struct SyncState {
    /// What each peer claims to have. Unproven: used to choose whom to ask, never reported.
    peers: HashMap<PeerId, Claim>,
    /// The highest height proven by a valid commit (a verified fetched block, or a block
    /// our own core decided): what `catching_up` and `sync_target` report.
    proven: u64,
    /// Peers that did not serve a height they claimed: not believed until `CLAIM_PAUSE`
    /// has passed.
    doubted: HashMap<PeerId, Instant>,
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
    pub(crate) fn catching_up(&self, tip: u64) -> bool {
        self.proven > tip.saturating_add(1)
    }

    /// The highest height proven by a valid commit (what `/v1/status` reports).
    pub(crate) fn target(&self) -> u64 {
        self.proven
    }

    /// `height` is proven by a valid commit (our core decided it).
    pub(crate) fn raise_target(&mut self, height: u64) {
        self.proven = self.proven.max(height);
    }

    /// The highest height worth asking for: proven, or claimed by a peer still believed.
    fn wanted(&self) -> u64 {
        self.peers
            .values()
            .map(|c| c.height)
            .fold(self.proven, u64::max)
    }

    pub(crate) fn forget(&mut self, peer: &PeerId) {
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

/// Messages into the sync actor.
#[derive(Debug)]
pub enum SyncMsg {
    /// A peer told us (directly or through its messages) that it is at `height`.
    PeerHeight {
        peer: PeerId,
        height: u64,
    },
    PeerGone(PeerId),
    /// Our own core decided `height` and the host does not hold the block: the height is
    /// proven; fetch it.
    Proven(u64),
}

/// What a task of the sync actor's [`JoinSet`] finished with.
enum Done {
    Fetched(Fetched),
    /// The connected peers, to poll for their tips.
    Peers(Vec<PeerId>),
    Nothing,
}

/// What the sync actor is built from.
pub struct SyncParts {
    pub genesis: Arc<Genesis>,
    /// The validator sets the host publishes (protocol 2: the latest one vouches for
    /// fetched heights, see [`Verified::proven`]).
    pub sets: crate::sets::SetsRx,
    pub net: NetworkHandle,
    pub metrics: ChainMetrics,
    pub status: StatusTx,
}

pub struct SyncActor {
    genesis: Arc<Genesis>,
    sets: crate::sets::SetsRx,
    net: NetworkHandle,
    metrics: ChainMetrics,
    status: StatusTx,
    host: mpsc::Sender<HostMsg>,
    state: SyncState,
    /// Fetches, status polls and penalties in flight: owned here, cancelled with the actor.
    tasks: JoinSet<Done>,
    /// The batch the host is applying, waiting for its answer (one at a time, so blocks
    /// reach the host in height order).
    handing: Option<oneshot::Receiver<Applied>>,
    /// The host's store failed under a synced block: hand it over again at the next tick.
    storage_retry: bool,
}

/// The host's answer to the batch in flight (pending forever when there is none).
async fn answer(handing: &mut Option<oneshot::Receiver<Applied>>) -> Option<Applied> {
    match handing {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

impl SyncActor {
    pub fn new(parts: SyncParts, host: mpsc::Sender<HostMsg>) -> Self {
        SyncActor {
            genesis: parts.genesis,
            sets: parts.sets,
            net: parts.net,
            metrics: parts.metrics,
            status: parts.status,
            host,
            state: SyncState::default(),
            tasks: JoinSet::new(),
            handing: None,
            storage_retry: false,
        }
    }

    pub async fn run(mut self, mut inbox: mpsc::Receiver<SyncMsg>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = inbox.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match done {
                        Ok(Done::Fetched(f)) => self.on_fetched(f).await,
                        Ok(Done::Peers(peers)) => self.poll_peers(peers),
                        Ok(Done::Nothing) | Err(_) => {}
                    }
                }
                applied = answer(&mut self.handing) => {
                    self.handing = None;
                    match applied {
                        Some(a) => self.on_applied(a).await,
                        None => tracing::debug!("chain host dropped a sync batch"),
                    }
                }
                _ = tick.tick() => self.maybe_request().await,
            }
        }
        self.tasks.abort_all();
        tracing::debug!("sync stopped");
    }

    pub async fn handle(&mut self, msg: SyncMsg) {
        match msg {
            SyncMsg::PeerHeight { peer, height } => self.note_claim(peer, height, false).await,
            SyncMsg::PeerGone(peer) => self.state.forget(&peer),
            SyncMsg::Proven(height) => {
                self.state.raise_target(height);
                self.maybe_request().await;
            }
        }
    }

    fn tip(&self) -> u64 {
        self.status.borrow().height
    }

    async fn note_claim(&mut self, peer: PeerId, height: u64, stated: bool) {
        self.state.claim(peer, height, stated, Instant::now());
        if height > self.tip().saturating_add(1) {
            self.maybe_request().await;
        }
    }

    fn penalize(&mut self, peer: PeerId, reason: PenaltyReason) {
        let net = self.net.clone();
        self.tasks.spawn(async move {
            let _ = net.penalize(peer, reason, reason.default_points()).await;
            Done::Nothing
        });
    }

    /// Asks for the connected peers every [`STATUS_POLL`]; each is then asked for its tip
    /// ([`Self::poll_peers`]).
    fn poll_status(&mut self, now: Instant) {
        if self
            .state
            .last_status_poll
            .is_some_and(|t| now.duration_since(t) < STATUS_POLL)
        {
            return;
        }
        self.state.last_status_poll = Some(now);
        let net = self.net.clone();
        self.tasks.spawn(async move {
            let peers = net.peers().await.unwrap_or_default();
            Done::Peers(
                peers
                    .into_iter()
                    .filter(|p| p.connected && !p.banned)
                    .map(|p| p.peer_id)
                    .collect(),
            )
        });
    }

    fn poll_peers(&mut self, peers: Vec<PeerId>) {
        for peer in peers {
            let net = self.net.clone();
            self.tasks.spawn(async move {
                let Ok(bytes) = net.request(peer, encode(&SyncRequest::Status)).await else {
                    return Done::Nothing;
                };
                match read_status(&bytes) {
                    Ok(s) => Done::Fetched(Fetched::Status {
                        peer,
                        height: s.height,
                    }),
                    Err(Fault::Bad(reason, e)) => {
                        tracing::debug!(%peer, error = %e, "bad status answer");
                        let _ = net.penalize(peer, reason, reason.default_points()).await;
                        Done::Nothing
                    }
                    Err(_) => Done::Nothing,
                }
            });
        }
    }

    /// Asks peers for what is missing, and hands the host what is ready.
    pub async fn maybe_request(&mut self) {
        if self.status.borrow().halted.is_some() {
            return;
        }
        let now = Instant::now();
        self.poll_status(now);
        self.state
            .in_flight
            .retain(|_, r| now.duration_since(r.since) < REQUEST_DEADLINE);
        let tip = self.tip();
        self.state.buffer = self.state.buffer.split_off(&tip.saturating_add(1));
        if std::mem::take(&mut self.storage_retry) || self.handing.is_none() {
            self.hand_over().await;
        }
        let wanted = self.state.wanted();
        let behind = wanted > tip.saturating_add(1);
        let stalled = wanted > tip
            && self
                .status
                .borrow()
                .last_block_at
                .or(self.state.last_progress)
                .is_none_or(|t| t.elapsed() > STALL);
        self.report(tip);
        if !behind && !stalled {
            if let Some(p) = self.state.progress.take() {
                let secs = p.since.elapsed().as_secs_f64().max(1e-3);
                let blocks = tip.saturating_sub(p.from_height);
                tracing::info!(
                    height = tip,
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
        if let Some((peer, height)) = self.state.next_probe(tip, now) {
            self.spawn_fetch(peer, height, 1);
        }
        while let Some((peer, start, count)) = self.state.next_request(tip, now) {
            if self.state.progress.is_none() {
                self.state.progress = Some(Progress {
                    since: now,
                    from_height: tip,
                    txs: 0,
                    last_log: now,
                    sources: HashSet::new(),
                });
                tracing::info!(
                    from = tip.saturating_add(1),
                    claimed = wanted,
                    peers = self.state.peers.len(),
                    "catching up from peers"
                );
            }
            self.spawn_fetch(peer, start, count);
        }
    }

    /// `catching_up` and `sync_target`, in the metrics and `/v1/status`.
    fn report(&self, tip: u64) {
        let (catching_up, target) = (self.state.catching_up(tip), self.state.target());
        self.metrics.catching_up.set(i64::from(catching_up));
        self.metrics
            .sync_target
            .set(i64::try_from(target).unwrap_or(i64::MAX));
        self.status.send_if_modified(|s| {
            let changed = s.catching_up != catching_up || s.sync_target != target;
            s.catching_up = catching_up;
            s.sync_target = target;
            changed
        });
    }

    /// Fetches `count` blocks from `start`; the checked answer comes back through the
    /// actor's [`JoinSet`].
    fn spawn_fetch(&mut self, peer: PeerId, start: u64, count: u64) {
        let net = self.net.clone();
        let genesis = self.genesis.clone();
        let count = u32::try_from(count).unwrap_or(MAX_SYNC_BLOCKS);
        // Protocol 2: the latest set we know vouches for fetched heights.
        let trusted = match &**self.sets.borrow() {
            crate::sets::KnownSets::Fixed(_) => None,
            changing => Some(changing.latest().1.clone()),
        };
        let signatures = self.metrics.tx_signatures.clone();
        self.tasks.spawn(async move {
            let result = fetch(&net, &genesis, trusted, peer, start, count).await;
            if let Ok(blocks) = &result {
                // Every tx of every fetched block was verified (an error stops early and
                // is not counted).
                let txs = blocks.iter().map(|v| v.block.txs.len() as u64).sum();
                signatures.count(crate::metrics::VerifyPath::Sync, txs);
            }
            if let Err(Fault::Bad(reason, _)) = &result {
                let _ = net.penalize(peer, *reason, reason.default_points()).await;
            }
            Done::Fetched(Fetched::Blocks {
                peer,
                from: start,
                result,
            })
        });
    }

    async fn on_fetched(&mut self, fetched: Fetched) {
        let (peer, from, result) = match fetched {
            Fetched::Status { peer, height } => {
                self.note_claim(peer, height, true).await;
                return;
            }
            Fetched::Blocks { peer, from, result } => (peer, from, result),
        };
        if self
            .state
            .in_flight
            .get(&from)
            .is_some_and(|r| r.peer == peer)
        {
            self.state.in_flight.remove(&from);
        }
        match result {
            Err(Fault::Unavailable(e)) => {
                tracing::debug!(%peer, from, error = %e, "sync request failed");
                self.state.forget(&peer);
            }
            Err(Fault::Missing(e)) => {
                if let Some(reason) = self.state.served_nothing(peer, from, Instant::now()) {
                    tracing::warn!(
                        %peer,
                        from,
                        error = %e,
                        "peer stated a height it does not serve; not believing it for a while"
                    );
                    self.penalize(peer, reason);
                } else {
                    tracing::debug!(%peer, from, error = %e, "peer has no blocks there");
                }
            }
            Err(Fault::Bad(_, e)) => {
                tracing::warn!(%peer, from, error = %e, "peer served invalid blocks; not asking it again");
                self.state.condemn(peer);
            }
            Ok(blocks) => {
                let tip = self.tip();
                for v in blocks {
                    let h = v.block.header.height;
                    // Its commit was verified (protocol 2: vouched for): the height is
                    // proven.
                    if v.proven {
                        self.state.raise_target(h);
                    }
                    if h > tip && !self.state.is_bad(&peer, Instant::now()) {
                        self.state.buffer.entry(h).or_insert((peer, v));
                    }
                }
            }
        }
        self.maybe_request().await;
    }

    /// Hands the host the buffered blocks that extend the tip, in order, unless a batch is
    /// already with it.
    async fn hand_over(&mut self) {
        if self.handing.is_some() {
            return;
        }
        let mut next = self.tip().saturating_add(1);
        let mut blocks = Vec::new();
        while let Some(entry) = self.state.buffer.remove(&next) {
            blocks.push(entry);
            next += 1;
        }
        if blocks.is_empty() {
            return;
        }
        let (reply, rx) = oneshot::channel();
        if self
            .host
            .send(HostMsg::Synced { blocks, reply })
            .await
            .is_ok()
        {
            self.handing = Some(rx);
        }
    }

    async fn on_applied(&mut self, applied: Applied) {
        let now = Instant::now();
        if let Some(fault) = applied.fault {
            tracing::warn!(peer = %fault.peer, height = fault.height, error = %fault.error, "synced block is invalid");
            self.state.condemn(fault.peer);
            self.penalize(fault.peer, fault.reason);
        }
        self.storage_retry = applied.storage_failed;
        for (peer, v) in applied.unapplied {
            if !self.state.is_bad(&peer, now) {
                self.state
                    .buffer
                    .entry(v.block.header.height)
                    .or_insert((peer, v));
            }
        }
        if applied.blocks > 0 {
            self.metrics.sync_blocks.inc_by(applied.blocks);
            self.state.last_progress = Some(now);
            let tip = self.tip();
            let target = self.state.target();
            let (in_flight, buffered) = (self.state.in_flight.len(), self.state.buffer.len());
            if let Some(p) = self.state.progress.as_mut() {
                p.txs += applied.txs;
                p.sources.extend(applied.sources);
                if p.last_log.elapsed() >= PROGRESS_EVERY {
                    p.last_log = now;
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
        }
        if !self.storage_retry {
            self.maybe_request().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::chain;

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
                    proven: true,
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
}
