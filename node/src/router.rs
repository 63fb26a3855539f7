//! The router: the node side of the network task. It decodes every gossip message and
//! sync request, checks what can be checked without consensus state (encoding, sizes,
//! signatures, membership), reports the verdict to gossipsub (Accept forwards, Reject
//! scores the sender down), and hands valid messages to the mempool or the consensus driver.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::block::check_body;
use ledger::check::TxError;
use ledger::codec::decode;
use ledger::genesis::Genesis;
use ledger::hash::sha256;
use ledger::store::rocks::RocksStore;
use ledger::types::{SignedProposal, SignedVote};
use ledger::validators::ValidatorSet;
use ledger::Hash;
use tally_p2p::{Event, NetworkHandle, PeerId, PenaltyReason, TokenBucket, Topic, Verdict};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::chain::valid_evidence;
use crate::compact::ProposalMetrics;
use crate::driver::DriverMsg;
use crate::mempool::admission::admit_bytes;
use crate::mempool::metrics::MempoolMetrics;
use crate::mempool::{AddError, Mempool};
use crate::sets::KnownSets;
use crate::sync::SyncMsg;
use crate::wire::{CompactProposal, ConsensusMessage, SyncRequest};

/// Compact proposals whose missing txs are being fetched at once (one per round at most).
const MAX_FETCHES: usize = 4;

pub struct Router {
    pub genesis: Arc<Genesis>,
    pub store: Arc<RocksStore>,
    pub mempool: Arc<Mutex<Mempool>>,
    pub mempool_metrics: MempoolMetrics,
    pub net: NetworkHandle,
    /// Verified consensus messages go to the consensus driver.
    pub driver: mpsc::Sender<DriverMsg>,
    /// Peer heights and departures go to sync.
    pub sync: mpsc::Sender<SyncMsg>,
    pub max_block_bytes: usize,
    pub sync_max_response_bytes: usize,
    /// `tally_sync_blocks_served_total`: blocks sent in answer to peers' sync requests.
    pub sync_blocks_served: prometheus_client::metrics::counter::Counter,
    /// Our active listen addresses, as the network task reports them.
    pub listening: tokio::sync::watch::Sender<Vec<tally_p2p::Multiaddr>>,
    /// Where the node is (tip, round): bounds the consensus messages worth forwarding.
    pub status: tokio::sync::watch::Receiver<crate::status::NodeStatus>,
    /// The validator sets of the next heights, as the chain host publishes them: a vote or
    /// proposal is checked against the set of its own height.
    pub sets: crate::sets::SetsRx,
    pub proposal_metrics: ProposalMetrics,
    /// How long the txs a compact proposal misses may take to fetch (the propose
    /// timeout: past it the round has moved on without the proposal anyway).
    pub fetch_timeout: Duration,
}

/// A compact proposal whose missing txs were being fetched, back to the router.
struct Fetched {
    msg_id: tally_p2p::MessageId,
    source: PeerId,
    slot: (u64, u32),
    proposal: SignedProposal,
    /// The rebuilt block and how many txs were fetched for it; None if the fetch failed.
    block: Option<(ledger::types::Block, usize)>,
}

/// The router's state besides its filter: fetches in flight.
struct Fetches {
    in_flight: HashSet<(u64, u32)>,
    done: mpsc::Sender<Fetched>,
}

/// The penalty for a gossiped tx that no honest node would have forwarded; None for txs
/// that are only stale or unwelcome here (full pool, nonce used, already committed).
fn tx_fault(e: &AddError) -> Option<PenaltyReason> {
    if !e.is_peer_fault() {
        return None;
    }
    Some(match e {
        AddError::Invalid(TxError::BadSignature | TxError::HighS) => {
            PenaltyReason::InvalidSignature
        }
        AddError::Invalid(TxError::Malformed(_)) => PenaltyReason::Undecodable,
        AddError::Invalid(TxError::TooLarge { .. }) => PenaltyReason::Oversized,
        _ => PenaltyReason::InvalidMessage,
    })
}

impl Router {
    pub async fn run(self, mut events: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        let mut filter = ConsensusFilter::default();
        let mut useless_txs = UselessTxs::default();
        let (done, mut fetched) = mpsc::channel(MAX_FETCHES);
        let mut fetches = Fetches {
            in_flight: HashSet::new(),
            done,
        };
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(f) = fetched.recv() => {
                    fetches.in_flight.remove(&f.slot);
                    let verdict = self.on_fetched(&mut filter, f.source, f.proposal, f.block).await;
                    let _ = self.net.validated(f.msg_id, f.source, verdict).await;
                    continue;
                }
                e = events.recv() => match e { Some(e) => e, None => break },
            };
            match event {
                Event::Message {
                    topic,
                    msg_id,
                    source,
                    data,
                    ..
                } => {
                    let verdict = match topic {
                        Topic::Tx => {
                            let verdict = self.on_tx(&data);
                            let ignored = u32::from(verdict == Verdict::Ignore);
                            useless_txs.charge(source, ignored, verdict)
                        }
                        Topic::TxBatch => {
                            let (verdict, ignored) = self.on_tx_batch(&data);
                            useless_txs.charge(source, ignored, verdict)
                        }
                        Topic::Consensus => self.on_consensus(&data, source, &mut filter).await,
                        Topic::Proposal => {
                            match self
                                .on_compact(&data, msg_id, source, &mut filter, &mut fetches)
                                .await
                            {
                                Some(verdict) => verdict,
                                // Given when the fetch ends.
                                None => continue,
                            }
                        }
                    };
                    let _ = self.net.validated(msg_id, source, verdict).await;
                }
                Event::Request {
                    peer,
                    data,
                    channel,
                } => {
                    // The network task capped its size (`sync_max_request_bytes`); more ids
                    // than a request may hold are refused in `serve_txs`, and scored.
                    if let Ok(SyncRequest::Txs { ids }) =
                        decode::<SyncRequest>("sync request", &data, data.len())
                    {
                        self.serve_txs(peer, &ids, channel).await;
                        continue;
                    }
                    let store = self.store.clone();
                    let net = self.net.clone();
                    let cap = self.sync_max_response_bytes;
                    let served = self.sync_blocks_served.clone();
                    tokio::task::spawn_blocking(move || {
                        let response =
                            crate::sync::serve(store.as_ref(), &data, cap).map(|answer| {
                                served.inc_by(answer.blocks);
                                answer.bytes
                            });
                        let handle = tokio::runtime::Handle::current();
                        handle.block_on(async move {
                            match response {
                                Some(bytes) => {
                                    let _ = net.respond(channel, bytes).await;
                                }
                                None => {
                                    let _ = net.respond(channel, Vec::new()).await;
                                }
                            }
                        });
                    });
                }
                Event::PeerDisconnected(peer) => {
                    filter.forget(&peer);
                    useless_txs.forget(&peer);
                    let _ = self.sync.send(SyncMsg::PeerGone(peer)).await;
                }
                Event::PeerConnected(peer) => {
                    // Ask the newcomer where it is, so a node that is behind starts
                    // syncing without waiting for consensus traffic.
                    let net = self.net.clone();
                    let sync = self.sync.clone();
                    tokio::spawn(async move {
                        let req = ledger::codec::encode(&crate::wire::SyncRequest::Status);
                        if let Ok(bytes) = net.request(peer, req).await {
                            if let Ok(crate::wire::SyncResponse::Status(s)) =
                                decode::<crate::wire::SyncResponse>("status", &bytes, 1024)
                            {
                                let _ = sync
                                    .send(SyncMsg::PeerHeight {
                                        peer,
                                        height: s.height,
                                    })
                                    .await;
                            }
                        }
                    });
                }
                Event::Listening(addr) => {
                    self.listening.send_modify(|l| l.push(addr));
                }
                Event::PeerBanned {
                    peer,
                    reason,
                    duration,
                } => {
                    tracing::warn!(%peer, %reason, secs = duration.as_secs(), "peer banned");
                }
            }
        }
    }

    fn on_tx(&self, data: &[u8]) -> Verdict {
        let max = self.genesis.params.max_tx_bytes as usize;
        match admit_bytes(
            self.store.as_ref(),
            &self.mempool,
            &self.mempool_metrics,
            data,
            max,
        ) {
            Ok(_) => Verdict::Accept,
            Err(e) => tx_fault(&e).map_or(Verdict::Ignore, Verdict::Reject),
        }
    }

    /// A batch is admitted tx by tx, signatures verified in parallel. One tx that no honest
    /// node would have forwarded (bad signature, undecodable, ...) rejects the batch and
    /// stops the work on it (a batch of forgeries costs about one verification per core
    /// before the sender is scored); txs that are merely stale here (already committed,
    /// nonce used) do not. Forwarded only if most of it was new ([`batch_verdict`]).
    /// Returns the verdict and how many of the batch's txs brought nothing (stale or
    /// already held here), which [`UselessTxs`] charges to the sender.
    fn on_tx_batch(&self, data: &[u8]) -> (Verdict, u32) {
        use rayon::prelude::*;
        use std::sync::atomic::{AtomicU32, Ordering};
        let max = self.genesis.params.max_tx_bytes as usize;
        let txs = match crate::txgossip::split_batch(data, max) {
            Ok(txs) => txs,
            Err(_) => return (Verdict::Reject(PenaltyReason::Undecodable), 0),
        };
        let admitted = AtomicU32::new(0);
        let ignored = AtomicU32::new(0);
        let checked = txs.par_iter().try_for_each(|bytes| {
            match admit_bytes(
                self.store.as_ref(),
                &self.mempool,
                &self.mempool_metrics,
                bytes,
                max,
            ) {
                Ok(_) => {
                    admitted.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => match tx_fault(&e) {
                    Some(fault) => Err(fault),
                    None => {
                        ignored.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                },
            }
        });
        let ignored = ignored.load(Ordering::Relaxed);
        match checked {
            Err(fault) => (Verdict::Reject(fault), ignored),
            Ok(()) => (
                batch_verdict(admitted.load(Ordering::Relaxed) as usize, txs.len()),
                ignored,
            ),
        }
    }

    /// Checks a consensus message (module docs of [`ConsensusFilter`]) and hands what it
    /// brought that is new to the consensus driver.
    async fn on_consensus(
        &self,
        data: &[u8],
        source: tally_p2p::PeerId,
        filter: &mut ConsensusFilter,
    ) -> Verdict {
        let msg: ConsensusMessage = match decode("consensus message", data, self.max_block_bytes) {
            Ok(m) => m,
            Err(_) => return Verdict::Reject(PenaltyReason::Undecodable),
        };
        if matches!(msg, ConsensusMessage::Proposal { .. }) {
            self.proposal_metrics.received("full", data.len());
        }
        let checked = self.with_against(|against, live| filter.check(against, live, msg));
        self.forward(checked, source, filter).await
    }

    /// Runs `f` against the chain's sets and where the node is.
    fn with_against<T>(&self, f: impl FnOnce(&Against<'_>, Live) -> T) -> T {
        // Where the node is, from its status (the driver updates the round after every input,
        // the host the tip after every commit): no store read per message. Right after a commit the
        // round may still be the last height's, which only widens the window a little.
        let (tip, round) = {
            let status = self.status.borrow();
            (status.height, status.round)
        };
        // Evidence of a committed height on protocol 2 is checked against that height's
        // stored set (rare: after the filter's dedup, once per validator and height).
        let older = |height: u64| {
            crate::sets::stored_set_at(self.store.as_ref(), tip, height)
                .ok()
                .flatten()
        };
        let against = Against {
            chain_id: &self.genesis.chain_id,
            sets: self.sets.borrow().clone(),
            older: Some(&older),
        };
        f(&against, Live { tip, round })
    }

    /// The verdict on a checked consensus message, handing what it brought to the driver.
    async fn forward(
        &self,
        checked: Checked,
        source: PeerId,
        filter: &mut ConsensusFilter,
    ) -> Verdict {
        let (msg, verdict) = match checked {
            Checked::Fault(reason) => return Verdict::Reject(reason),
            Checked::Nothing => return filter.charge_useless(source, Instant::now()),
            Checked::Unwanted => return Verdict::Ignore,
            Checked::New(msg) => (msg, Verdict::Accept),
            Checked::Local(msg) => (msg, Verdict::Ignore),
        };
        let _ = self
            .driver
            .send(DriverMsg::Consensus {
                msg,
                from: Some(source),
            })
            .await;
        verdict
    }

    /// A compact proposal ([`crate::compact`]): checked like a proposal (its header commits
    /// to its ids, its signature, the filter's window and slot) before anything is looked
    /// up, rebuilt from the mempool, and what the pool misses fetched in a task of its own
    /// (None: the verdict comes when it ends, [`Router::on_fetched`]).
    async fn on_compact(
        &self,
        data: &[u8],
        msg_id: tally_p2p::MessageId,
        source: PeerId,
        filter: &mut ConsensusFilter,
        fetches: &mut Fetches,
    ) -> Option<Verdict> {
        let max_txs = self.genesis.params.block_max_txs as usize;
        let max_bytes = crate::compact::max_compact_bytes(max_txs, self.max_block_bytes);
        let Ok(c) = decode::<CompactProposal>("compact proposal", data, max_bytes) else {
            return Some(Verdict::Reject(PenaltyReason::Undecodable));
        };
        self.proposal_metrics.received("compact", data.len());
        if let Err(reason) = crate::compact::check_compact(&c, max_txs) {
            self.proposal_metrics.rebuilt("invalid");
            return Some(Verdict::Reject(reason));
        }
        let wanted =
            self.with_against(|against, live| filter.wants_proposal(against, live, &c.proposal));
        match wanted {
            Err(reason) => return Some(Verdict::Reject(reason)),
            Ok(Part::Stale) => return Some(filter.charge_useless(source, Instant::now())),
            Ok(Part::Unwanted | Part::Local(())) => return Some(Verdict::Ignore),
            Ok(Part::New(())) => {}
        }
        let held = crate::compact::from_pool(&self.mempool, &c.tx_ids);
        let missing = crate::compact::missing(&c.tx_ids, &held);
        let CompactProposal {
            proposal,
            block,
            tx_ids,
        } = c;
        if missing.is_empty() {
            self.proposal_metrics.rebuilt("pool");
            let block = crate::compact::assemble(block, &tx_ids, held, &HashMap::new());
            let block = block.map(|b| (b, 0));
            return Some(self.on_fetched(filter, source, proposal, block).await);
        }
        let slot = (proposal.proposal.height, proposal.proposal.round);
        if fetches.in_flight.len() >= MAX_FETCHES || !fetches.in_flight.insert(slot) {
            self.proposal_metrics.rebuilt("busy");
            return Some(Verdict::Ignore);
        }
        let (net, done, timeout) = (self.net.clone(), fetches.done.clone(), self.fetch_timeout);
        let max_response = self.sync_max_response_bytes;
        tokio::spawn(async move {
            let fetch = crate::compact::fetch(&net, source, &missing, max_response);
            let block = match tokio::time::timeout(timeout, fetch).await {
                Ok(Ok(fetched)) => crate::compact::assemble(block, &tx_ids, held, &fetched)
                    .map(|b| (b, fetched.len())),
                Ok(Err(e)) => {
                    tracing::debug!(
                        ?e,
                        height = slot.0,
                        round = slot.1,
                        "compact proposal: txs not fetched"
                    );
                    None
                }
                Err(_) => {
                    tracing::debug!(
                        height = slot.0,
                        round = slot.1,
                        "compact proposal: fetch timed out"
                    );
                    None
                }
            };
            let _ = done
                .send(Fetched {
                    msg_id,
                    source,
                    slot,
                    proposal,
                    block,
                })
                .await;
        });
        None
    }

    /// A compact proposal's rebuilt block (with how many txs were fetched for it) goes the
    /// way of a full proposal; without one (its txs could not be fetched in time) the
    /// round goes on as if no proposal had come: nobody is blamed.
    async fn on_fetched(
        &self,
        filter: &mut ConsensusFilter,
        source: PeerId,
        proposal: SignedProposal,
        block: Option<(ledger::types::Block, usize)>,
    ) -> Verdict {
        let Some((block, fetched)) = block else {
            self.proposal_metrics.rebuilt("failed");
            return Verdict::Ignore;
        };
        if fetched > 0 {
            self.proposal_metrics.rebuilt("fetched");
            self.proposal_metrics.txs_fetched.inc_by(fetched as u64);
        }
        let checked =
            self.with_against(|against, live| filter.check_rebuilt(against, live, proposal, block));
        self.forward(checked, source, filter).await
    }

    /// A peer asks for pending txs by id (it rebuilds a compact proposal): answered from
    /// the pool; more ids than [`crate::wire::MAX_FETCH_IDS`] are refused and scored like a
    /// request flood.
    async fn serve_txs(&self, peer: PeerId, ids: &[Hash], channel: tally_p2p::ResponseChannelId) {
        let answer = crate::compact::serve_txs(&self.mempool, ids, self.sync_max_response_bytes);
        let bytes = match answer {
            Ok(bytes) => bytes,
            Err(crate::compact::TooManyIds(n)) => {
                tracing::debug!(%peer, ids = n, "refused a request for too many txs");
                let reason = PenaltyReason::RequestFlood;
                let _ = self
                    .net
                    .penalize(peer, reason, reason.default_points())
                    .await;
                Vec::new()
            }
        };
        let _ = self.net.respond(channel, bytes).await;
    }
}

/// Whether a valid batch of `total` txs of which `admitted` were new here is forwarded.
///
/// Gossipsub forwards a message whole, so a batch of one new tx and 1,023 the chain already
/// committed would carry the stale part on to every peer, which charges *us* for it
/// ([`UselessTxs`]): a few peers each padding batches just under our budget would make us
/// pass on a multiple of the next peer's budget. A batch is forwarded only when at least
/// half of it was new here; its new txs are in our mempool either way (proposed by us,
/// re-announced if they stay pending, see [`crate::txgossip`]).
fn batch_verdict(admitted: usize, total: usize) -> Verdict {
    if admitted > 0 && admitted.saturating_mul(2) >= total {
        Verdict::Accept
    } else {
        Verdict::Ignore
    }
}

/// Votes and proposals remembered as verified (oldest forgotten first): ~2 MiB of ids, far
/// more than the live heights of any validator set.
const SEEN_CAPACITY: usize = 65_536;
/// Consensus messages per second (burst: one second's worth) a peer may send that bring
/// nothing new before each further one is a [`PenaltyReason::Replay`]. An honest relay
/// sends a few: late votes of a height it just committed, validators' re-announcements
/// (one a second per validator while a height is stuck) that overlap what we heard.
const USELESS_PER_SEC: u32 = 20;
/// Peers whose budget is tracked at once (the map is cleared past this).
const MAX_TRACKED_PEERS: usize = 4_096;

/// The router's memory of consensus traffic, owned by its task.
///
/// Every vote and proposal it has verified is remembered by id, so a copy of it, in
/// whatever wrapper (a `Rebroadcast` with a fresh `sent_at_ms` is a new gossip message
/// every time), costs a hash lookup instead of a signature check, is not handed to the
/// driver again and is not forwarded. A message that brings nothing new (every part seen,
/// or for a committed height) is ignored and charged to the peer that sent it; past
/// [`USELESS_PER_SEC`] it costs the peer a [`PenaltyReason::Replay`]. A proposal whose body
/// is not the one its header commits to is the relay's fault ([`check_body`]).
///
/// Only what the consensus core can use is forwarded, so that one validator signing
/// messages nobody needs cannot make honest relays pass a flood on (and be scored down for
/// it by their peers): votes and proposals of the next two heights in the rounds the core
/// accepts ([`consensus::machine::FUTURE_ROUNDS`] past the driver's round), the first
/// proposal of each round, two votes per (validator, height, round, kind) (the second
/// proves a double sign), and one equivocation per (validator, height) of the heights the
/// chain host keeps evidence for. The rest is [`Checked::Unwanted`]: not verified, not
/// forwarded, and not charged, because an honest relay a few rounds ahead of us sends some.
/// A vote for a height further ahead is verified and given to the driver as a sign of the
/// sender's height ([`Checked::Local`]), and not forwarded.
#[derive(Default)]
pub(crate) struct ConsensusFilter {
    seen: crate::recent::RecentIds<SEEN_CAPACITY>,
    useless: HashMap<PeerId, TokenBucket>,
    /// Verified messages per (height, round, kind, signer), for heights above `pruned_at`.
    slots: HashMap<Slot, u8>,
    /// Equivocations forwarded, per (validator, height).
    evidence: HashSet<([u8; 20], u64)>,
    pruned_at: u64,
}

/// One signer's messages of one kind in one round: (height, round, kind, signer).
type Slot = (u64, u32, u8, [u8; 20]);
const SLOT_PREVOTE: u8 = 0;
const SLOT_PRECOMMIT: u8 = 1;
const SLOT_PROPOSAL: u8 = 2;

/// What the filter checks messages against: the chain and the validator sets.
pub(crate) struct Against<'a> {
    pub chain_id: &'a str,
    /// The sets of the live heights (protocol 1: the genesis set at every height).
    pub sets: Arc<KnownSets>,
    /// The set of a height the live sets do not hold (protocol 2's evidence of a committed
    /// height), if known.
    pub older: Option<&'a (dyn Fn(u64) -> Option<ValidatorSet> + Sync)>,
}

impl Against<'_> {
    /// The set of `height`, if known.
    fn set_at(&self, height: u64) -> Option<std::borrow::Cow<'_, ValidatorSet>> {
        if let Some(set) = self.sets.at(height) {
            return Some(std::borrow::Cow::Borrowed(set));
        }
        self.older
            .and_then(|f| f(height))
            .map(std::borrow::Cow::Owned)
    }
}

/// What the filter knows of the live consensus.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Live {
    /// Our committed height.
    pub tip: u64,
    /// The driver's round at `tip + 1`.
    pub round: u32,
}

impl Live {
    /// Whether the core takes messages of (`height`, `round`), a height above the tip and at
    /// most one past the next.
    fn in_window(&self, height: u64, round: u32) -> bool {
        let current = if height == self.tip.saturating_add(1) {
            self.round
        } else {
            0
        };
        round <= current.saturating_add(consensus::machine::FUTURE_ROUNDS)
    }

    fn near(&self, height: u64) -> bool {
        height <= self.tip.saturating_add(2)
    }
}

/// What a consensus message brought.
#[derive(Debug)]
pub(crate) enum Checked {
    /// Something no honest node would send or forward.
    Fault(PenaltyReason),
    /// Nothing new: every part already seen, or for a committed height.
    Nothing,
    /// Of no use to the core (rounds or heights outside its window, more of a slot than a
    /// correct node forwards): dropped unchecked, not forwarded, not charged.
    Unwanted,
    /// The new part of the message, verified (a `Rebroadcast` trimmed to what is new).
    New(Box<ConsensusMessage>),
    /// Verified, for the driver only (a vote heights ahead: the sender's height), not
    /// forwarded.
    Local(Box<ConsensusMessage>),
}

/// What one vote or proposal brought.
pub(crate) enum Part<T> {
    Stale,
    Unwanted,
    New(T),
    Local(T),
}

/// A vote's identity: who voted for what, not the signature bytes (another encoding of the
/// same vote is no news either).
fn vote_id(v: &SignedVote) -> Hash {
    sha256(&ledger::codec::encode(&(b"vote", &v.validator, &v.vote)))
}

fn proposal_id(p: &SignedProposal) -> Hash {
    sha256(&ledger::codec::encode(&(b"proposal", &p.proposal)))
}

impl ConsensusFilter {
    fn seen(&self, id: &Hash) -> bool {
        self.seen.contains(id)
    }

    fn remember(&mut self, id: Hash) {
        self.seen.insert(id);
    }

    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.useless.remove(peer);
    }

    /// The verdict on a message that brought nothing new from `peer`.
    pub(crate) fn charge_useless(&mut self, peer: PeerId, now: Instant) -> Verdict {
        if self.useless.len() >= MAX_TRACKED_PEERS && !self.useless.contains_key(&peer) {
            self.useless.clear();
        }
        let bucket = self
            .useless
            .entry(peer)
            .or_insert_with(|| TokenBucket::new(USELESS_PER_SEC, now));
        if bucket.try_take(now) {
            Verdict::Ignore
        } else {
            Verdict::Reject(PenaltyReason::Replay)
        }
    }

    /// Forgets the slots and evidence of committed heights (once per height).
    fn prune(&mut self, tip: u64) {
        if tip == self.pruned_at {
            return;
        }
        self.pruned_at = tip;
        self.slots.retain(|(h, ..), _| *h > tip);
        let oldest = tip.saturating_sub(crate::chain::EVIDENCE_MAX_AGE);
        self.evidence.retain(|(_, h)| *h >= oldest);
    }

    /// Whether `slot` holds fewer than `max` verified messages.
    fn slot_open(&self, slot: &Slot, max: u8) -> bool {
        self.slots.get(slot).copied().unwrap_or(0) < max
    }

    fn fill(&mut self, slot: Slot) {
        let n = self.slots.entry(slot).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// A vote: new and valid, stale or seen, of no use, or a sign of the sender's height.
    ///
    /// The vote is checked against the set of its height. On protocol 2 that set is known
    /// for the next two heights only: a vote of a committed height is stale whatever its
    /// signer, and one further ahead, a sign of the sender's height, is checked against the
    /// latest set we know and dropped unverified when its signer is not in it: not a fault
    /// (an honest validator that joined since may have sent it), but charged as useless.
    fn vote(
        &mut self,
        a: &Against<'_>,
        live: Live,
        v: SignedVote,
    ) -> Result<Part<SignedVote>, PenaltyReason> {
        let pubkey = match a.sets.at(v.vote.height) {
            Some(set) => match set.get(&v.validator) {
                Some(validator) => Some(validator.pubkey),
                None => return Err(PenaltyReason::InvalidMessage),
            },
            None => None,
        };
        if v.vote.chain_id != a.chain_id {
            return Err(PenaltyReason::InvalidMessage);
        }
        // A vote for a committed height is useless to everyone: no signature check. Except,
        // on protocol 2, a precommit of the tip's height: the next proposer adds it to the
        // commit its block carries, so a validator that precommitted after the first
        // quorum is not counted absent by the downtime rule.
        if v.vote.height <= live.tip {
            if v.vote.height == live.tip
                && v.vote.kind == ledger::types::VoteKind::Precommit
                && matches!(*a.sets, KnownSets::Changing { .. })
            {
                return self.late_precommit(a, v);
            }
            return Ok(Part::Stale);
        }
        let id = vote_id(&v);
        if self.seen(&id) {
            return Ok(Part::Stale);
        }
        let pubkey = match pubkey {
            Some(pubkey) => pubkey,
            None => {
                let (latest, set) = a.sets.latest();
                match set.get(&v.validator) {
                    Some(validator) if v.vote.height > latest => validator.pubkey,
                    // A signer outside the latest set we know, at a height whose set we
                    // don't: not verifiable, so not a fault (it may have joined since), but
                    // charged as useless. An honest peer sends such votes only while we lag
                    // and only from validators that joined since, a few a second; a keyless
                    // stranger signing votes for far heights is scored down for its flood.
                    _ => return Ok(Part::Stale),
                }
            }
        };
        if !live.near(v.vote.height) {
            v.verify_signature(&pubkey)
                .map_err(|_| PenaltyReason::InvalidSignature)?;
            return Ok(Part::Local(v));
        }
        let kind = match v.vote.kind {
            ledger::types::VoteKind::Prevote => SLOT_PREVOTE,
            ledger::types::VoteKind::Precommit => SLOT_PRECOMMIT,
        };
        let slot = (v.vote.height, v.vote.round, kind, v.validator);
        if !live.in_window(v.vote.height, v.vote.round) || !self.slot_open(&slot, 2) {
            return Ok(Part::Unwanted);
        }
        v.verify_signature(&pubkey)
            .map_err(|_| PenaltyReason::InvalidSignature)?;
        self.remember(id);
        self.fill(slot);
        Ok(Part::New(v))
    }

    /// A precommit of the committed tip's height (protocol 2): checked against that
    /// height's stored set, one per validator and height (whatever its round), so a
    /// validator can cost us one signature check per height at most.
    fn late_precommit(
        &mut self,
        a: &Against<'_>,
        v: SignedVote,
    ) -> Result<Part<SignedVote>, PenaltyReason> {
        let id = vote_id(&v);
        let slot = (v.vote.height, u32::MAX, SLOT_PRECOMMIT, v.validator);
        if self.seen(&id) || !self.slot_open(&slot, 1) {
            return Ok(Part::Stale);
        }
        let Some(set) = a.set_at(v.vote.height) else {
            return Ok(Part::Unwanted);
        };
        let Some(pubkey) = set.get(&v.validator).map(|x| x.pubkey) else {
            return Err(PenaltyReason::InvalidMessage);
        };
        v.verify_signature(&pubkey)
            .map_err(|_| PenaltyReason::InvalidSignature)?;
        self.remember(id);
        self.fill(slot);
        Ok(Part::New(v))
    }

    /// A proposal with its block. The body is checked against the header before anything
    /// else is trusted (unless `body_checked`: a compact proposal's rebuilt block).
    fn proposal(
        &mut self,
        a: &Against<'_>,
        live: Live,
        proposal: SignedProposal,
        block: ledger::types::Block,
        body_checked: bool,
    ) -> Result<Part<(SignedProposal, ledger::types::Block)>, PenaltyReason> {
        let p = &proposal.proposal;
        if block.hash() != p.block_hash
            || block.header.height != p.height
            || (!body_checked && check_body(&block).is_err())
        {
            return Err(PenaltyReason::InvalidBlock);
        }
        match self.proposal_slot(a, live, &proposal)? {
            Part::New(slot) => {
                self.remember(proposal_id(&proposal));
                self.fill(slot);
                Ok(Part::New((proposal, block)))
            }
            Part::Stale => Ok(Part::Stale),
            Part::Unwanted | Part::Local(_) => Ok(Part::Unwanted),
        }
    }

    /// Whether a signed proposal is new, of use and signed by its round's proposer (its
    /// slot, to fill once its block is accepted); remembers nothing.
    fn proposal_slot(
        &self,
        a: &Against<'_>,
        live: Live,
        proposal: &SignedProposal,
    ) -> Result<Part<Slot>, PenaltyReason> {
        let p = &proposal.proposal;
        if p.chain_id != a.chain_id {
            return Err(PenaltyReason::InvalidBlock);
        }
        if p.height <= live.tip || self.seen(&proposal_id(proposal)) {
            return Ok(Part::Stale);
        }
        // Protocol 2: a height whose set is not known yet (not near) is of no use yet.
        let Some(set) = a.sets.at(p.height) else {
            return Ok(Part::Unwanted);
        };
        let proposer = set.proposer(p.height, p.round);
        let slot = (p.height, p.round, SLOT_PROPOSAL, proposer.address);
        if !live.near(p.height) || !live.in_window(p.height, p.round) || !self.slot_open(&slot, 1) {
            return Ok(Part::Unwanted);
        }
        proposal
            .verify_signature(&proposer.pubkey)
            .map_err(|_| PenaltyReason::InvalidSignature)?;
        Ok(Part::New(slot))
    }

    /// Whether the block of a compact proposal is worth rebuilding (and its txs fetching):
    /// the proposal is new, in the window and signed by its round's proposer. Remembers
    /// nothing: the slot is filled when the rebuilt block comes back
    /// ([`ConsensusFilter::check_rebuilt`]), so a fetch that fails leaves it open for the
    /// full block (a re-announcement, an older peer's relay).
    pub(crate) fn wants_proposal(
        &mut self,
        a: &Against<'_>,
        live: Live,
        proposal: &SignedProposal,
    ) -> Result<Part<()>, PenaltyReason> {
        self.prune(live.tip);
        Ok(self.proposal_slot(a, live, proposal)?.map(|_| ()))
    }

    /// A compact proposal's rebuilt block, whose body [`crate::compact::check_compact`]
    /// and the fetch already bound to its header: checked like a full proposal otherwise.
    pub(crate) fn check_rebuilt(
        &mut self,
        a: &Against<'_>,
        live: Live,
        proposal: SignedProposal,
        block: ledger::types::Block,
    ) -> Checked {
        self.prune(live.tip);
        let part = self
            .proposal(a, live, proposal, block, true)
            .map(|p| p.map(|(proposal, block)| ConsensusMessage::Proposal { proposal, block }));
        Checked::from(part)
    }

    /// An equivocation: forwarded once per (validator, height) of the heights the chain host
    /// keeps evidence for.
    fn evidence(
        &mut self,
        a: &Against<'_>,
        live: Live,
        e: consensus::types::Equivocation,
    ) -> Result<Part<consensus::types::Equivocation>, PenaltyReason> {
        let id = sha256(&ledger::codec::encode(&e));
        if self.seen(&id) {
            return Ok(Part::Stale);
        }
        let key = (e.first.validator, e.first.vote.height);
        let height = e.first.vote.height;
        let next = live.tip.saturating_add(1);
        if height.saturating_add(crate::chain::EVIDENCE_MAX_AGE) < next
            || !live.near(height)
            || self.evidence.contains(&key)
        {
            return Ok(Part::Unwanted);
        }
        // The set of the evidence's height; unknown here (our store failed): not checked,
        // not forwarded, nobody blamed.
        let Some(set) = a.set_at(height) else {
            return Ok(Part::Unwanted);
        };
        if !valid_evidence(a.chain_id, &set, &e) {
            return Err(PenaltyReason::InvalidMessage);
        }
        self.remember(id);
        self.evidence.insert(key);
        Ok(Part::New(e))
    }

    /// Checks `msg` against the chain's sets and the live consensus, remembering what it
    /// verified.
    pub(crate) fn check(&mut self, g: &Against<'_>, live: Live, msg: ConsensusMessage) -> Checked {
        self.prune(live.tip);
        let part = match msg {
            ConsensusMessage::Vote(v) => {
                self.vote(g, live, v).map(|p| p.map(ConsensusMessage::Vote))
            }
            ConsensusMessage::Proposal { proposal, block } => self
                .proposal(g, live, proposal, block, false)
                .map(|p| p.map(|(proposal, block)| ConsensusMessage::Proposal { proposal, block })),
            ConsensusMessage::Evidence(e) => self
                .evidence(g, live, e)
                .map(|p| p.map(ConsensusMessage::Evidence)),
            ConsensusMessage::Rebroadcast {
                sent_at_ms,
                votes,
                proposal,
            } => self.rebroadcast(g, live, sent_at_ms, votes, proposal),
        };
        Checked::from(part)
    }

    /// A re-announcement: every part is checked like a message of its own (seen parts cost
    /// a lookup), and only the new parts go on to the driver. Parts the core cannot use
    /// count as seen: a validator re-announces its own messages of the live round.
    fn rebroadcast(
        &mut self,
        g: &Against<'_>,
        live: Live,
        sent_at_ms: u64,
        votes: Vec<SignedVote>,
        proposal: Option<(SignedProposal, ledger::types::Block)>,
    ) -> Result<Part<ConsensusMessage>, PenaltyReason> {
        if votes.len() > crate::wire::MAX_REBROADCAST_VOTES {
            return Err(PenaltyReason::InvalidMessage);
        }
        let proposal = match proposal {
            Some((p, block)) => match self.proposal(g, live, p, block, false)? {
                Part::New(p) => Some(p),
                Part::Stale | Part::Unwanted | Part::Local(_) => None,
            },
            None => None,
        };
        let mut new_votes = Vec::new();
        for v in votes {
            if let Part::New(v) = self.vote(g, live, v)? {
                new_votes.push(v);
            }
        }
        if new_votes.is_empty() && proposal.is_none() {
            return Ok(Part::Stale);
        }
        Ok(Part::New(ConsensusMessage::Rebroadcast {
            sent_at_ms,
            votes: new_votes,
            proposal,
        }))
    }
}

impl From<Result<Part<ConsensusMessage>, PenaltyReason>> for Checked {
    fn from(part: Result<Part<ConsensusMessage>, PenaltyReason>) -> Checked {
        match part {
            Err(reason) => Checked::Fault(reason),
            Ok(Part::Stale) => Checked::Nothing,
            Ok(Part::Unwanted) => Checked::Unwanted,
            Ok(Part::New(msg)) => Checked::New(Box::new(msg)),
            Ok(Part::Local(msg)) => Checked::Local(Box::new(msg)),
        }
    }
}

impl<T> Part<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Part<U> {
        match self {
            Part::Stale => Part::Stale,
            Part::Unwanted => Part::Unwanted,
            Part::New(t) => Part::New(f(t)),
            Part::Local(t) => Part::Local(f(t)),
        }
    }
}

/// Txs per second (burst: one second's worth) a peer may send us that bring nothing — already
/// committed, nonce used, already pending, unfunded sender — before each further message
/// carrying such txs is a [`PenaltyReason::Replay`]. An honest peer forwards only what was
/// new to it, and re-announces what stays pending at most 2,048 txs a second; a peer that
/// replays committed txs or sends txs from empty accounts (refused before their signature is
/// checked, so never a provable fault) is past this within a second.
const USELESS_TXS_PER_SEC: u32 = 8_192;

/// Each peer's budget of useless txs (module docs of [`USELESS_TXS_PER_SEC`]).
#[derive(Default)]
struct UselessTxs {
    budgets: HashMap<PeerId, TokenBucket>,
}

impl UselessTxs {
    fn forget(&mut self, peer: &PeerId) {
        self.budgets.remove(peer);
    }

    /// The verdict on a tx message from `peer` whose `ignored` txs brought nothing: `verdict`
    /// itself while the peer's budget lasts (a fault stays a fault), then `Replay`.
    fn charge(&mut self, peer: PeerId, ignored: u32, verdict: Verdict) -> Verdict {
        if ignored == 0 || matches!(verdict, Verdict::Reject(_)) {
            return verdict;
        }
        if self.budgets.len() >= MAX_TRACKED_PEERS && !self.budgets.contains_key(&peer) {
            self.budgets.clear();
        }
        let now = Instant::now();
        let bucket = self
            .budgets
            .entry(peer)
            .or_insert_with(|| TokenBucket::new(USELESS_TXS_PER_SEC, now));
        if (0..ignored).all(|_| bucket.try_take(now)) {
            verdict
        } else {
            Verdict::Reject(PenaltyReason::Replay)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use consensus::types::Equivocation;
    use ledger::crypto::Keypair;
    use ledger::types::{Vote, VoteKind};

    const CHAIN: &str = "router-test";

    fn keys() -> Vec<Keypair> {
        (0..4)
            .map(|i| crate::testing::key(&format!("v{i}")))
            .collect()
    }

    fn genesis(keys: &[Keypair]) -> Genesis {
        crate::testing::genesis(CHAIN, &keys.iter().collect::<Vec<_>>(), &[])
    }

    fn vote(k: &Keypair, height: u64, round: u32, hash: u8) -> ConsensusMessage {
        ConsensusMessage::Vote(k.sign_vote(Vote {
            chain_id: CHAIN.into(),
            height,
            round,
            kind: VoteKind::Prevote,
            block_hash: Some([hash; 32]),
        }))
    }

    /// A proposal by the round's proposer, with an empty body that matches its header.
    fn proposal(
        g: &Genesis,
        keys: &[Keypair],
        height: u64,
        round: u32,
        t: u64,
    ) -> ConsensusMessage {
        let proposer = g.validators.proposer(height, round).address;
        let key = keys.iter().find(|k| k.address() == proposer).unwrap();
        crate::testing::empty_proposal(g, key, height, round, t)
    }

    /// What a protocol-1 chain's messages are checked against.
    fn fixed(g: &Genesis) -> Against<'_> {
        Against {
            chain_id: &g.chain_id,
            sets: Arc::new(KnownSets::Fixed(g.validators.clone())),
            older: None,
        }
    }

    fn kind(c: &Checked) -> &'static str {
        match c {
            Checked::Fault(_) => "fault",
            Checked::Nothing => "nothing",
            Checked::Unwanted => "unwanted",
            Checked::New(_) => "new",
            Checked::Local(_) => "local",
        }
    }

    const LIVE: Live = Live { tip: 10, round: 0 };

    #[test]
    fn a_batch_is_forwarded_only_when_most_of_it_was_new() {
        assert_eq!(batch_verdict(1024, 1024), Verdict::Accept);
        assert_eq!(batch_verdict(512, 1024), Verdict::Accept);
        assert_eq!(batch_verdict(1, 1), Verdict::Accept);
        assert_eq!(batch_verdict(511, 1024), Verdict::Ignore);
        assert_eq!(batch_verdict(1, 1024), Verdict::Ignore);
        assert_eq!(batch_verdict(0, 0), Verdict::Ignore);
    }

    #[test]
    fn votes_outside_the_cores_round_window_are_not_forwarded() {
        let (k, g) = (keys(), genesis(&keys()));
        let mut f = ConsensusFilter::default();
        let top = consensus::machine::FUTURE_ROUNDS;
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[0], 11, top, 1))),
            "new"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[0], 11, top + 1, 1))),
            "unwanted"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[0], 11, u32::MAX, 1))),
            "unwanted"
        );
        // The window moves with the driver's round; the next height's starts at round 0.
        let later = Live { tip: 10, round: 5 };
        assert_eq!(
            kind(&f.check(&fixed(&g), later, vote(&k[1], 11, top + 5, 1))),
            "new"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), later, vote(&k[1], 12, top + 1, 1))),
            "unwanted"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), later, vote(&k[1], 12, top, 1))),
            "new"
        );
        // Heights ahead: verified for the driver (the sender's height), not forwarded.
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[2], 13, 0, 1))),
            "local"
        );
        // A forged signature is still a fault where it is checked.
        let mut forged = vote(&k[2], 11, 0, 1);
        if let ConsensusMessage::Vote(v) = &mut forged {
            v.signature[10] ^= 1;
        }
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, forged)), "fault");
    }

    #[test]
    fn two_votes_per_validator_round_and_kind_are_forwarded_then_no_more() {
        let (k, g) = (keys(), genesis(&keys()));
        let mut f = ConsensusFilter::default();
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[0], 11, 0, 1))),
            "new"
        );
        // The second proves a double sign and must travel; the third adds nothing.
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[0], 11, 0, 2))),
            "new"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[0], 11, 0, 3))),
            "unwanted"
        );
        // Another validator's slot, and the same validator's next round, are their own.
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[1], 11, 0, 3))),
            "new"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[0], 11, 1, 3))),
            "new"
        );
        // A copy of a forwarded vote is no news (charged), not unwanted.
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[0], 11, 0, 1))),
            "nothing"
        );
        // Slots of committed heights are forgotten.
        assert!(!f.slots.is_empty());
        f.check(
            &fixed(&g),
            Live { tip: 11, round: 0 },
            vote(&k[0], 12, 0, 1),
        );
        assert!(
            f.slots.keys().all(|(h, ..)| *h > 11),
            "{:?}",
            f.slots.keys()
        );
    }

    #[test]
    fn only_the_first_proposal_of_a_round_is_forwarded() {
        let (k, g) = (keys(), genesis(&keys()));
        let mut f = ConsensusFilter::default();
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, proposal(&g, &k, 11, 0, 1))),
            "new"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, proposal(&g, &k, 11, 0, 2))),
            "unwanted"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, proposal(&g, &k, 11, 1, 2))),
            "new"
        );
        let past = consensus::machine::FUTURE_ROUNDS + 1;
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, proposal(&g, &k, 11, past, 1))),
            "unwanted"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, proposal(&g, &k, 13, 0, 1))),
            "unwanted"
        );
        // A body that is not its header's is still the relay's fault, slot or not.
        let mut swapped = proposal(&g, &k, 11, 0, 1);
        if let ConsensusMessage::Proposal { block, .. } = &mut swapped {
            block.txs.push(k[0].sign_tx(ledger::types::Tx {
                chain_id: CHAIN.into(),
                from: k[0].public_key(),
                nonce: 0,
                fee: 1,
                payload: ledger::types::Payload::Transfer {
                    to: [1; 20],
                    amount: 1,
                },
            }));
        }
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, swapped)), "fault");
    }

    /// A compact proposal's signed proposal is checked before its txs are fetched, but
    /// fills its slot only once the block is rebuilt: a fetch that fails leaves the round
    /// open to the same proposal in full (a re-announcement, an older relay's copy).
    #[test]
    fn a_compact_proposal_takes_its_slot_only_once_rebuilt() {
        let (k, g) = (keys(), genesis(&keys()));
        let mut f = ConsensusFilter::default();
        let forged = proposal(&g, &k, 11, 1, 1);
        let ConsensusMessage::Proposal { proposal, block } = proposal(&g, &k, 11, 0, 1) else {
            unreachable!()
        };
        assert!(matches!(
            f.wants_proposal(&fixed(&g), LIVE, &proposal),
            Ok(Part::New(()))
        ));
        // The fetch failed: nothing remembered, the full proposal is still news.
        assert!(matches!(
            f.wants_proposal(&fixed(&g), LIVE, &proposal),
            Ok(Part::New(()))
        ));
        let full = ConsensusMessage::Proposal {
            proposal: proposal.clone(),
            block: block.clone(),
        };
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, full)), "new");
        // Rebuilt after the full one came: a copy, charged as such.
        assert_eq!(
            kind(&f.check_rebuilt(&fixed(&g), LIVE, proposal.clone(), block)),
            "nothing"
        );
        assert!(matches!(
            f.wants_proposal(&fixed(&g), LIVE, &proposal),
            Ok(Part::Stale)
        ));
        // A forged signature is refused before anything is fetched.
        let ConsensusMessage::Proposal { mut proposal, .. } = forged else {
            unreachable!()
        };
        proposal.signature[10] ^= 1;
        assert!(matches!(
            f.wants_proposal(&fixed(&g), LIVE, &proposal),
            Err(PenaltyReason::InvalidSignature)
        ));
    }

    #[test]
    fn one_equivocation_per_validator_and_height_is_forwarded() {
        let (k, g) = (keys(), genesis(&keys()));
        let mut f = ConsensusFilter::default();
        let ev = |height: u64, a: u8, b: u8| {
            let (ConsensusMessage::Vote(first), ConsensusMessage::Vote(second)) =
                (vote(&k[3], height, 0, a), vote(&k[3], height, 0, b))
            else {
                unreachable!()
            };
            ConsensusMessage::Evidence(Equivocation { first, second })
        };
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, ev(11, 1, 2))), "new");
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, ev(11, 1, 2))), "nothing");
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, ev(11, 1, 3))), "unwanted");
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, ev(9, 1, 3))), "new");
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, ev(13, 1, 3))), "unwanted");
        // Not a double sign (same hash twice): a fault where it is checked.
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, ev(11, 4, 4))), "unwanted");
        assert_eq!(kind(&f.check(&fixed(&g), LIVE, ev(12, 4, 4))), "fault");
        // Older than the chain host keeps evidence for.
        let far = Live {
            tip: 5_000,
            round: 0,
        };
        assert_eq!(kind(&f.check(&fixed(&g), far, ev(100, 1, 3))), "unwanted");
        assert!(f.evidence.is_empty(), "{:?}", f.evidence);
    }

    /// Protocol 2: each vote is checked against the set of its height. Set A = {0..3} at
    /// the tip + 1, B = {1..4} at the tip + 2: 4 is a fault at 11 and welcome at 12, 0 the
    /// other way round; further ahead, where no set is known, a vote of a member of the
    /// latest set is a sign of its sender's height, and any other is dropped unverified,
    /// not a fault (its signer may have joined since) but charged as useless (a stranger's
    /// flood of far votes is scored down).
    #[test]
    fn on_protocol_2_each_vote_is_checked_against_its_heights_set() {
        let mut k = keys();
        k.push(crate::testing::key("v4"));
        let set = |idx: &[usize]| {
            let mut v: Vec<ledger::types::Validator> = idx
                .iter()
                .map(|&i| ledger::types::Validator {
                    address: k[i].address(),
                    pubkey: k[i].public_key(),
                    power: 1,
                })
                .collect();
            v.sort_by_key(|v| v.address);
            ValidatorSet::new(v).unwrap()
        };
        let against = Against {
            chain_id: CHAIN,
            sets: Arc::new(KnownSets::Changing {
                from: 11,
                current: set(&[0, 1, 2, 3]),
                next: set(&[1, 2, 3, 4]),
            }),
            older: None,
        };
        let mut f = ConsensusFilter::default();
        assert_eq!(
            kind(&f.check(&against, LIVE, vote(&k[4], 11, 0, 1))),
            "fault"
        );
        assert_eq!(kind(&f.check(&against, LIVE, vote(&k[4], 12, 0, 1))), "new");
        assert_eq!(kind(&f.check(&against, LIVE, vote(&k[0], 11, 0, 1))), "new");
        assert_eq!(
            kind(&f.check(&against, LIVE, vote(&k[0], 12, 0, 1))),
            "fault"
        );
        assert_eq!(
            kind(&f.check(&against, LIVE, vote(&k[4], 13, 0, 1))),
            "local"
        );
        assert_eq!(
            kind(&f.check(&against, LIVE, vote(&k[0], 13, 0, 1))),
            "nothing"
        );
        assert_eq!(
            kind(&f.check(&against, LIVE, vote(&k[0], 9, 0, 1))),
            "nothing"
        );
        // The genesis set at every height (protocol 1) takes 0 at 12 and refuses 4 anywhere.
        let g = genesis(&keys());
        let mut f = ConsensusFilter::default();
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[0], 12, 0, 1))),
            "new"
        );
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, vote(&k[4], 12, 0, 1))),
            "fault"
        );
    }

    /// Protocol 2: a precommit of the tip's height (10 here) is checked against that
    /// height's stored set and passed on once per validator, so the next proposer can add
    /// it to the commit it carries; a prevote of it, a second precommit of the same
    /// validator, and any on protocol 1 bring nothing; a non-member or a bad signature is a
    /// fault.
    #[test]
    fn a_late_precommit_of_the_tip_is_checked_against_its_set_once_per_validator() {
        let mut k = keys();
        k.push(crate::testing::key("v4"));
        let tip_set = genesis(&k[..4]).validators;
        let older = |h: u64| (h == 10).then(|| tip_set.clone());
        let against = Against {
            chain_id: CHAIN,
            sets: Arc::new(KnownSets::Changing {
                from: 11,
                current: tip_set.clone(),
                next: tip_set.clone(),
            }),
            older: Some(&older),
        };
        let precommit = |key: &Keypair, round: u32| {
            key.sign_vote(Vote {
                chain_id: CHAIN.into(),
                height: 10,
                round,
                kind: VoteKind::Precommit,
                block_hash: Some([7; 32]),
            })
        };
        let mut f = ConsensusFilter::default();
        let msg = |v: SignedVote| ConsensusMessage::Vote(v);
        assert_eq!(
            kind(&f.check(&against, LIVE, msg(precommit(&k[0], 0)))),
            "new"
        );
        assert_eq!(
            kind(&f.check(&against, LIVE, msg(precommit(&k[0], 1)))),
            "nothing",
            "one late precommit per validator and height"
        );
        assert_eq!(
            kind(&f.check(&against, LIVE, vote(&k[1], 10, 0, 7))),
            "nothing"
        );
        assert_eq!(
            kind(&f.check(&against, LIVE, msg(precommit(&k[4], 0)))),
            "fault"
        );
        let mut forged = precommit(&k[2], 0);
        forged.validator = k[3].address();
        assert_eq!(kind(&f.check(&against, LIVE, msg(forged))), "fault");
        let g = genesis(&keys());
        let mut f = ConsensusFilter::default();
        assert_eq!(
            kind(&f.check(&fixed(&g), LIVE, msg(precommit(&k[0], 0)))),
            "nothing",
            "protocol 1 keeps only the first quorum"
        );
    }
}
