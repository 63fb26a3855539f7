//! The router: the node side of the network task. It decodes every gossip message and
//! sync request, checks what can be checked without consensus state (encoding, sizes,
//! signatures, membership), reports the verdict to gossipsub (Accept forwards, Reject
//! scores the sender down), and hands valid messages to the mempool or the engine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ledger::block::check_body;
use ledger::check::TxError;
use ledger::codec::decode;
use ledger::genesis::Genesis;
use ledger::hash::sha256;
use ledger::store::rocks::RocksStore;
use ledger::types::{SignedProposal, SignedVote};
use ledger::Hash;
use tally_p2p::{Event, NetworkHandle, PeerId, PenaltyReason, TokenBucket, Topic, Verdict};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::{valid_evidence, EngineMsg};
use crate::mempool::admission::admit_bytes;
use crate::mempool::metrics::MempoolMetrics;
use crate::mempool::{AddError, Mempool};
use crate::wire::ConsensusMessage;

pub struct Router {
    pub genesis: Arc<Genesis>,
    pub store: Arc<RocksStore>,
    pub mempool: Arc<Mutex<Mempool>>,
    pub mempool_metrics: MempoolMetrics,
    pub net: NetworkHandle,
    pub engine: mpsc::Sender<EngineMsg>,
    pub max_block_bytes: usize,
    pub sync_max_response_bytes: usize,
    /// Our active listen addresses, as the network task reports them.
    pub listening: tokio::sync::watch::Sender<Vec<tally_p2p::Multiaddr>>,
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
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
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
                    };
                    let _ = self.net.validated(msg_id, source, verdict).await;
                }
                Event::Request { data, channel, .. } => {
                    let store = self.store.clone();
                    let net = self.net.clone();
                    let cap = self.sync_max_response_bytes;
                    tokio::task::spawn_blocking(move || {
                        let response = crate::engine::serve_sync(store.as_ref(), &data, cap);
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
                    let _ = self.engine.send(EngineMsg::PeerGone(peer)).await;
                }
                Event::PeerConnected(peer) => {
                    // Ask the newcomer where it is, so a node that is behind starts
                    // syncing without waiting for consensus traffic.
                    let net = self.net.clone();
                    let engine = self.engine.clone();
                    tokio::spawn(async move {
                        let req = ledger::codec::encode(&crate::wire::SyncRequest::Status);
                        if let Ok(bytes) = net.request(peer, req).await {
                            if let Ok(crate::wire::SyncResponse::Status(s)) =
                                decode::<crate::wire::SyncResponse>("status", &bytes, 1024)
                            {
                                let _ = engine
                                    .send(EngineMsg::PeerHeight {
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
    /// nonce used) do not. Forwarded only if it brought at least one new transaction.
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
            Ok(()) if admitted.load(Ordering::Relaxed) > 0 => (Verdict::Accept, ignored),
            Ok(()) => (Verdict::Ignore, ignored),
        }
    }

    /// Checks a consensus message (module docs of [`ConsensusFilter`]) and hands what it
    /// brought that is new to the engine.
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
        let tip = ledger::store::ChainReader::tip(self.store.as_ref()).map_or(0, |t| t.height);
        match filter.check(&self.genesis, tip, msg) {
            Checked::Fault(reason) => Verdict::Reject(reason),
            Checked::Nothing => filter.charge_useless(source, Instant::now()),
            Checked::New(msg) => {
                let _ = self
                    .engine
                    .send(EngineMsg::Consensus {
                        msg,
                        from: Some(source),
                    })
                    .await;
                Verdict::Accept
            }
        }
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
/// engine again and is not forwarded. A message that brings nothing new (every part seen,
/// or for a committed height) is ignored and charged to the peer that sent it; past
/// [`USELESS_PER_SEC`] it costs the peer a [`PenaltyReason::Replay`]. A proposal whose body
/// is not the one its header commits to is the relay's fault ([`check_body`]).
#[derive(Default)]
pub(crate) struct ConsensusFilter {
    seen: HashSet<Hash>,
    order: VecDeque<Hash>,
    useless: HashMap<PeerId, TokenBucket>,
}

/// What a consensus message brought.
#[derive(Debug)]
pub(crate) enum Checked {
    /// Something no honest node would send or forward.
    Fault(PenaltyReason),
    /// Nothing new: every part already seen, or for a committed height.
    Nothing,
    /// The new part of the message, verified (a `Rebroadcast` trimmed to what is new).
    New(Box<ConsensusMessage>),
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
        if self.seen.insert(id) {
            self.order.push_back(id);
            while self.order.len() > SEEN_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
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

    /// A vote: `Ok(Some(vote))` if new and valid, `Ok(None)` if stale or seen.
    fn vote(
        &mut self,
        g: &Genesis,
        tip: u64,
        v: SignedVote,
    ) -> Result<Option<SignedVote>, PenaltyReason> {
        let Some(validator) = g.validators.get(&v.validator) else {
            return Err(PenaltyReason::InvalidMessage);
        };
        if v.vote.chain_id != g.chain_id {
            return Err(PenaltyReason::InvalidMessage);
        }
        // A vote for a committed height is useless to everyone: no signature check.
        if v.vote.height <= tip {
            return Ok(None);
        }
        let id = vote_id(&v);
        if self.seen(&id) {
            return Ok(None);
        }
        v.verify_signature(&validator.pubkey)
            .map_err(|_| PenaltyReason::InvalidSignature)?;
        self.remember(id);
        Ok(Some(v))
    }

    /// A proposal with its block: `Ok(Some(..))` if new and valid, `Ok(None)` if stale or
    /// seen. The body is checked against the header before anything else is trusted.
    fn proposal(
        &mut self,
        g: &Genesis,
        tip: u64,
        proposal: SignedProposal,
        block: ledger::types::Block,
    ) -> Result<Option<(SignedProposal, ledger::types::Block)>, PenaltyReason> {
        let p = &proposal.proposal;
        if p.chain_id != g.chain_id
            || block.hash() != p.block_hash
            || block.header.height != p.height
            || check_body(&block).is_err()
        {
            return Err(PenaltyReason::InvalidBlock);
        }
        if p.height <= tip {
            return Ok(None);
        }
        let id = proposal_id(&proposal);
        if self.seen(&id) {
            return Ok(None);
        }
        let proposer = g.validators.proposer(p.height, p.round);
        proposal
            .verify_signature(&proposer.pubkey)
            .map_err(|_| PenaltyReason::InvalidSignature)?;
        self.remember(id);
        Ok(Some((proposal, block)))
    }

    /// Checks `msg` against the genesis and the tip height, remembering what it verified.
    pub(crate) fn check(&mut self, g: &Genesis, tip: u64, msg: ConsensusMessage) -> Checked {
        let checked = match msg {
            ConsensusMessage::Vote(v) => {
                self.vote(g, tip, v).map(|v| v.map(ConsensusMessage::Vote))
            }
            ConsensusMessage::Proposal { proposal, block } => self
                .proposal(g, tip, proposal, block)
                .map(|p| p.map(|(proposal, block)| ConsensusMessage::Proposal { proposal, block })),
            ConsensusMessage::Evidence(e) => {
                let id = sha256(&ledger::codec::encode(&e));
                if self.seen(&id) {
                    Ok(None)
                } else if valid_evidence(g, &e) {
                    self.remember(id);
                    Ok(Some(ConsensusMessage::Evidence(e)))
                } else {
                    Err(PenaltyReason::InvalidMessage)
                }
            }
            ConsensusMessage::Rebroadcast {
                sent_at_ms,
                votes,
                proposal,
            } => self.rebroadcast(g, tip, sent_at_ms, votes, proposal),
        };
        match checked {
            Err(reason) => Checked::Fault(reason),
            Ok(None) => Checked::Nothing,
            Ok(Some(msg)) => Checked::New(Box::new(msg)),
        }
    }

    /// A re-announcement: every part is checked like a message of its own (seen parts cost
    /// a lookup), and only the new parts go on to the engine.
    fn rebroadcast(
        &mut self,
        g: &Genesis,
        tip: u64,
        sent_at_ms: u64,
        votes: Vec<SignedVote>,
        proposal: Option<(SignedProposal, ledger::types::Block)>,
    ) -> Result<Option<ConsensusMessage>, PenaltyReason> {
        if votes.len() > crate::wire::MAX_REBROADCAST_VOTES {
            return Err(PenaltyReason::InvalidMessage);
        }
        let proposal = match proposal {
            Some((p, block)) => self.proposal(g, tip, p, block)?,
            None => None,
        };
        let mut new_votes = Vec::new();
        for v in votes {
            if let Some(v) = self.vote(g, tip, v)? {
                new_votes.push(v);
            }
        }
        if new_votes.is_empty() && proposal.is_none() {
            return Ok(None);
        }
        Ok(Some(ConsensusMessage::Rebroadcast {
            sent_at_ms,
            votes: new_votes,
            proposal,
        }))
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
