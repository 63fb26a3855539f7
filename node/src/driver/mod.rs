//! The consensus driver: the actor that owns the consensus core, the signing guard, the
//! round timers and our own messages. It feeds the core what the router verified and the
//! host's answers, and carries out the core's outputs: ask the host to build, validate or
//! commit a block, sign through the guard (after its synced write), publish in signing
//! order, and re-announce our messages while a height is stuck.
//!
//! ```text
//!  router ──Consensus (verified)──▶ driver ──Body/Build/Validate/Decided/Evidence──▶ host
//!  host ───Built/Validated/Committed/Halted──▶ │ ──signed messages──▶ outbox ──▶ publisher ──▶ p2p
//!                                              │ ──PeerHeight──▶ sync
//!  timers (one DelayQueue, owned here) ────────┘
//! ```
//!
//! Signatures are checked once: the router verifies every vote and proposal before it
//! gets here, and the core runs with [`consensus::PreVerified`].

pub mod guard_store;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::{Consensus, Input, Output, PreVerified, SigningGuard, Timeout, TimeoutStep};
use ledger::codec::encode;
use ledger::crypto::Keypair;
use ledger::genesis::Genesis;
use ledger::types::{Block, SignedProposal, SignedVote, VoteKind};
use ledger::Hash;
use tally_p2p::{NetworkHandle, PeerId, Topic};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::actors::NodeStore;
use crate::chain::{now_ms, HostMsg};
use crate::metrics::ChainMetrics;
use crate::status::StatusTx;
use crate::sync::SyncMsg;
use crate::wire::ConsensusMessage;
use guard_store::StoreGuard;

/// Messages waiting for the driver, at most.
pub const INBOX: usize = 4096;
/// Our own messages waiting for the network task, at most.
const OUTBOX: usize = 1024;
/// A height that has not finished after this long gets our messages re-announced.
const REBROADCAST_AFTER: Duration = Duration::from_millis(1500);

/// Messages into the driver.
#[derive(Debug)]
pub enum DriverMsg {
    /// A consensus message whose signatures the router verified.
    Consensus {
        msg: Box<ConsensusMessage>,
        from: Option<PeerId>,
    },
    /// The host built our proposal (None: it could not).
    Built {
        height: u64,
        round: u32,
        block: Option<Arc<Block>>,
    },
    /// The host checked and executed a candidate.
    Validated {
        height: u64,
        hash: Hash,
        valid: bool,
    },
    /// The host committed up to `height`, decided by consensus or (`synced`) fetched;
    /// `busy`: txs are still waiting in its pool.
    Committed {
        height: u64,
        synced: bool,
        busy: bool,
    },
    /// The host cannot commit any more (its store failed): stop signing.
    Halted,
}

/// Timers the driver owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Round(Timeout),
    StartHeight(u64),
}

/// Our own consensus messages, in the order we signed them, for the one publisher task. A
/// task per publish could put a precommit on the wire before its prevote.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    /// Our proposals also go out compact ([`crate::compact`]).
    compact: bool,
}

/// One of our messages: `borsh(ConsensusMessage)` for the consensus topic and, for a
/// proposal when compact proposals are on, `borsh(CompactProposal)` for the proposal topic.
#[derive(Debug)]
pub struct Outgoing {
    pub data: Vec<u8>,
    pub compact: Option<Vec<u8>>,
}

impl Outbox {
    pub fn new(compact: bool) -> (Outbox, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        (Outbox { tx, compact }, rx)
    }

    /// Queues one message, in order. Never blocks: if the network has not taken
    /// [`OUTBOX`] messages, this one is dropped (and logged) rather than stalling
    /// consensus; re-announcements repeat what matters.
    pub fn publish(&self, msg: &ConsensusMessage) {
        let compact = match msg {
            ConsensusMessage::Proposal { proposal, block } if self.compact => {
                Some(encode(&crate::compact::compact(proposal, block)))
            }
            _ => None,
        };
        let out = Outgoing {
            data: encode(msg),
            compact,
        };
        if self.tx.try_send(out).is_err() {
            tracing::warn!("own consensus message dropped: the network is not taking them");
        }
    }
}

/// The publisher: our own consensus messages go out one after the other, in the order they
/// were signed, until every [`Outbox`] is dropped. A compact proposal goes on the proposal
/// topic, and the full one on the consensus topic only while a connected peer does not
/// subscribe to the proposal topic (a release before it, or a peer whose subscriptions we
/// have not heard yet): a network of this release alone sends proposals compact only.
pub async fn publish_in_order(net: NetworkHandle, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(out) = rx.recv().await {
        let full = match out.compact {
            Some(compact) => {
                if let Err(e) = net.publish(Topic::Proposal, compact).await {
                    tracing::debug!(error = %e, "compact proposal not published (no peers yet?)");
                }
                needs_full_proposals(&net).await
            }
            None => true,
        };
        if full {
            if let Err(e) = net.publish(Topic::Consensus, out.data).await {
                tracing::debug!(error = %e, "publish failed (no peers yet?)");
            }
        }
    }
}

/// Whether a connected peer does not subscribe to the compact proposal topic.
async fn needs_full_proposals(net: &NetworkHandle) -> bool {
    match net.peers().await {
        Ok(peers) => peers
            .iter()
            .any(|p| p.connected && !p.topics.contains(&Topic::Proposal)),
        Err(_) => true,
    }
}

/// What the driver is built from.
pub struct DriverParts<S> {
    pub genesis: Arc<Genesis>,
    pub store: Arc<S>,
    pub key: Option<Keypair>,
    pub metrics: ChainMetrics,
    pub status: StatusTx,
    pub outbox: Outbox,
    pub timeout_commit: Duration,
    /// `consensus.skip_timeout_commit_when_busy`.
    pub skip_timeout_commit_when_busy: bool,
    /// The committed tip's height when the node starts.
    pub committed: u64,
    /// The validator sets of the next heights, as the host publishes them.
    pub sets: crate::sets::SetsRx,
}

pub struct Driver<S: NodeStore> {
    core: Consensus<PreVerified>,
    guard: Option<SigningGuard<StoreGuard<S>>>,
    key: Option<Keypair>,
    metrics: ChainMetrics,
    status: StatusTx,
    outbox: Outbox,
    timeout_commit: Duration,
    skip_timeout_commit_when_busy: bool,
    /// `Some(h)`: the host committed h - 1 with txs waiting in its pool, so height h
    /// starts as soon as every validator's precommit for h - 1 is in, without waiting out
    /// `timeout_commit` (which is there to gather late precommits for the commit and to
    /// let txs accumulate: neither is needed then).
    early_start: Option<u64>,
    /// When the current `timeout_commit` wait ends (set at each commit).
    commit_wait_ends: tokio::time::Instant,
    /// `(h, rest)`: height h started early with `rest` of `timeout_commit` unspent, which
    /// its round-0 propose timeout gets on top. A proposer that lacks a precommit waits the
    /// whole `timeout_commit` before it starts and proposes; the validators that started
    /// early would otherwise give up on its proposal that much sooner than the wait lets
    /// it come, prevote nil and cost the height a round (and mark the proposer as one that
    /// missed its turn). With the rest added, the round-0 deadline is where it is without
    /// the early start: a late proposer is never worse off, an early one is heard at once.
    propose_grace: Option<(u64, Duration)>,
    /// The last propose timeout scheduled: (height, round, how long), for tests.
    #[cfg(test)]
    last_propose_timeout: Option<(u64, u32, Duration)>,
    timers: DelayQueue<Timer>,
    /// The highest height the host committed.
    committed: u64,
    /// The highest height our core decided (the host may not have committed it yet).
    decided: u64,
    /// Candidate blocks of the current and next height (shared with the host): the ones
    /// we built, and one gossiped body per (height, round) in the rounds the core takes.
    blocks: HashMap<Hash, Arc<Block>>,
    bodies: HashMap<(u64, u32), Hash>,
    /// Our own signed messages of the current height, re-announced while it is stuck.
    own_votes: Vec<SignedVote>,
    own_proposal: Option<(SignedProposal, Block)>,
    height_started: Instant,
    halted: bool,
    /// The sets the host published; announced to the core before each height starts.
    sets: crate::sets::SetsRx,
    host: mpsc::Sender<HostMsg>,
    sync: mpsc::Sender<SyncMsg>,
}

impl<S: NodeStore> Driver<S> {
    pub fn new(
        parts: DriverParts<S>,
        host: mpsc::Sender<HostMsg>,
        sync: mpsc::Sender<SyncMsg>,
    ) -> anyhow::Result<Self> {
        let address = parts.key.as_ref().map(Keypair::address);
        // The set of the first height (protocol 1: the genesis set, at every height).
        let validators = parts
            .sets
            .borrow()
            .at(parts.committed + 1)
            .cloned()
            .unwrap_or_else(|| parts.genesis.validators.clone());
        let mut core = Consensus::with_verifier(
            consensus::Config {
                chain_id: parts.genesis.chain_id.clone(),
                validators,
                address,
                timeouts: (&parts.genesis.params).into(),
            },
            PreVerified,
        );
        let guard = match &parts.key {
            Some(_) => {
                let guard = SigningGuard::open(StoreGuard::new(parts.store))
                    .map_err(|e| anyhow::anyhow!("cannot read the signing guard state: {e}"))?;
                core.resume(guard.state());
                Some(guard)
            }
            None => None,
        };
        Ok(Driver {
            core,
            guard,
            key: parts.key,
            metrics: parts.metrics,
            status: parts.status,
            outbox: parts.outbox,
            timeout_commit: parts.timeout_commit,
            skip_timeout_commit_when_busy: parts.skip_timeout_commit_when_busy,
            early_start: None,
            commit_wait_ends: tokio::time::Instant::now(),
            propose_grace: None,
            #[cfg(test)]
            last_propose_timeout: None,
            timers: DelayQueue::new(),
            committed: parts.committed,
            decided: parts.committed,
            blocks: HashMap::new(),
            bodies: HashMap::new(),
            own_votes: Vec::new(),
            own_proposal: None,
            height_started: Instant::now(),
            halted: false,
            sets: parts.sets,
            host,
            sync,
        })
    }

    /// The height being decided.
    pub fn height(&self) -> u64 {
        self.core.height()
    }

    /// Runs until `shutdown`. `inbox` brings the router's verified messages; `answers` the
    /// host's answers, which go first: they finish work the core is waiting on.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<DriverMsg>,
        mut answers: mpsc::Receiver<DriverMsg>,
        shutdown: CancellationToken,
    ) {
        tracing::info!(height = self.committed, "consensus driver starting");
        self.start().await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(msg) = answers.recv() => self.handle(msg).await,
                msg = inbox.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)),
                    if !self.timers.is_empty() => self.on_timer(expired.into_inner()).await,
                _ = tick.tick() => self.on_tick().await,
            }
        }
        tracing::info!("consensus driver stopped");
    }

    /// Starts the height after the committed tip.
    pub async fn start(&mut self) {
        let height = self.committed + 1;
        self.start_height(height).await;
    }

    /// Starts `height`, first announcing its sets and the next height's to the core when
    /// they change on chain (protocol 2; the host published them when it committed the
    /// height before).
    async fn start_height(&mut self, height: u64) {
        let announcement = self.sets.borrow().announcement(height);
        if let Some(sets) = announcement {
            self.drive(sets).await;
        }
        self.drive(Input::StartHeight { height }).await;
    }

    pub async fn handle(&mut self, msg: DriverMsg) {
        if self.halted {
            return; // nothing is signed once the host cannot commit
        }
        match msg {
            DriverMsg::Consensus { msg, from } => self.on_consensus(*msg, from).await,
            DriverMsg::Built {
                height,
                round,
                block,
            } => {
                if let Some(block) = block {
                    let hash = block.hash();
                    self.blocks.insert(hash, block);
                    self.drive(Input::ProposalBuilt {
                        height,
                        round,
                        block_hash: hash,
                    })
                    .await;
                }
            }
            DriverMsg::Validated {
                height,
                hash,
                valid,
            } => {
                self.drive(Input::BlockValidated {
                    height,
                    block_hash: hash,
                    valid,
                })
                .await
            }
            DriverMsg::Committed {
                height,
                synced,
                busy,
            } => {
                self.committed = self.committed.max(height);
                let next = self.committed + 1;
                self.blocks.retain(|_, b| b.header.height >= next);
                self.bodies.retain(|(h, _), _| *h >= next);
                if !synced {
                    self.timers
                        .insert(Timer::StartHeight(next), self.timeout_commit);
                    self.commit_wait_ends = tokio::time::Instant::now() + self.timeout_commit;
                    self.early_start = (busy && self.skip_timeout_commit_when_busy).then_some(next);
                    self.try_early_start().await;
                } else if next > self.core.height() {
                    self.start_height(next).await;
                }
            }
            DriverMsg::Halted => {
                self.halted = true;
                self.timers.clear();
            }
        }
    }

    async fn on_timer(&mut self, timer: Timer) {
        if self.halted {
            return;
        }
        match timer {
            Timer::Round(t) => self.drive(Input::Timeout(t)).await,
            Timer::StartHeight(h) => {
                if self.committed + 1 == h && self.core.height() < h {
                    self.start_height(h).await;
                }
            }
        }
    }

    /// Starts the height `early_start` names once every precommit of the height before
    /// is in (checked when the host commits and after each consensus message).
    async fn try_early_start(&mut self) {
        let Some(next) = self.early_start else {
            return;
        };
        if self.committed + 1 != next || self.core.height() + 1 != next {
            self.early_start = None; // started, or overtaken by a sync
            return;
        }
        if self.core.every_precommit_in() {
            self.early_start = None;
            self.metrics.timeout_commit_skipped.inc();
            let rest = self
                .commit_wait_ends
                .saturating_duration_since(tokio::time::Instant::now());
            self.propose_grace = Some((next, rest));
            self.start_height(next).await;
        }
    }

    fn note_peer_height(&self, peer: Option<PeerId>, height: u64) {
        if let Some(peer) = peer {
            let _ = self.sync.try_send(SyncMsg::PeerHeight { peer, height });
        }
    }

    async fn on_consensus(&mut self, msg: ConsensusMessage, from: Option<PeerId>) {
        // A Rebroadcast is unpacked into its parts, iteratively.
        let mut queue = VecDeque::from([msg]);
        while let Some(msg) = queue.pop_front() {
            match msg {
                ConsensusMessage::Proposal { proposal, block } => {
                    let h = proposal.proposal.height;
                    self.note_peer_height(from, h.saturating_sub(1));
                    if h == self.core.height() || h == self.core.height() + 1 {
                        self.keep_body(proposal.proposal.round, block).await;
                        self.drive(Input::Proposal(proposal)).await;
                    }
                }
                ConsensusMessage::Vote(vote) => {
                    let h = vote.vote.height;
                    // A vote for h means its sender has committed h - 1.
                    self.note_peer_height(from, h.saturating_sub(1));
                    if (h == self.committed || h == self.decided)
                        && vote.vote.kind == VoteKind::Precommit
                    {
                        // A precommit of our tip (or of the height we just decided, whose
                        // commit the host receives first) that came after the decision: on
                        // protocol 2 it joins the commit we propose with (the host ignores
                        // it on 1, and one that is not the tip's or not for its block).
                        self.to_host(HostMsg::LatePrecommit(vote.clone())).await;
                    }
                    if h == self.core.height() || h == self.core.height() + 1 {
                        self.drive(Input::Vote(vote)).await;
                    }
                }
                ConsensusMessage::Evidence(e) => {
                    self.to_host(HostMsg::Evidence {
                        evidence: Box::new(e),
                        ours: false,
                    })
                    .await
                }
                ConsensusMessage::Rebroadcast {
                    votes, proposal, ..
                } => {
                    if let Some((proposal, block)) = proposal {
                        queue.push_back(ConsensusMessage::Proposal { proposal, block });
                    }
                    queue.extend(votes.into_iter().map(ConsensusMessage::Vote));
                }
            }
        }
        // A late precommit may have completed the decided height's.
        self.try_early_start().await;
    }

    /// Keeps a gossiped body and passes it to the host, for the rounds the core accepts
    /// proposals for, one per (height, round): a byzantine proposer signing proposals for
    /// every round, or several per round, costs us at most that window. The body is not
    /// hashed again here: the router checked it against its header (`check_body`), and
    /// the host's execution checks `tx_root` once more before anything is voted for.
    async fn keep_body(&mut self, round: u32, block: Block) {
        let h = block.header.height;
        let window = if h == self.core.height() {
            self.core
                .round()
                .saturating_add(consensus::machine::FUTURE_ROUNDS)
        } else {
            consensus::machine::FUTURE_ROUNDS
        };
        let hash = block.hash();
        let slot_free = self
            .bodies
            .get(&(h, round))
            .is_none_or(|held| *held == hash);
        if round > window || !slot_free {
            return;
        }
        self.bodies.insert((h, round), hash);
        if self.blocks.contains_key(&hash) {
            return;
        }
        let block = Arc::new(block);
        self.blocks.insert(hash, block.clone());
        self.to_host(HostMsg::Body(block)).await;
    }

    async fn to_host(&self, msg: HostMsg) {
        if self.host.send(msg).await.is_err() {
            tracing::debug!("chain host stopped; request dropped");
        }
    }

    /// Feeds one input to the core and carries out every output, including the inputs
    /// those outputs produce (our own signed messages).
    async fn drive(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            for output in self.core.handle(input) {
                if let Some(next) = self.carry_out(output).await {
                    queue.push_back(next);
                }
            }
        }
        let round = self.core.round();
        self.status.send_if_modified(|s| {
            let changed = s.round != round;
            s.round = round;
            changed
        });
    }

    async fn carry_out(&mut self, output: Output) -> Option<Input> {
        match output {
            Output::RoundChanged { height, round } => {
                if round == 0 || height != self.own_votes.first().map_or(height, |v| v.vote.height)
                {
                    self.own_votes.clear();
                    self.own_proposal = None;
                    self.height_started = Instant::now();
                }
                self.metrics.round.set(i64::from(round));
                let absent = self.core.absent_validators().count();
                self.metrics
                    .absent_validators
                    .set(i64::try_from(absent).unwrap_or(i64::MAX));
                if round > 0 {
                    tracing::info!(height, round, "new round");
                }
                None
            }
            Output::BuildProposal { height, round } => {
                self.to_host(HostMsg::Build { height, round }).await;
                None
            }
            Output::Propose(proposal) => {
                let (guard, key) = (self.guard.as_mut()?, self.key.as_ref()?);
                if let Err(e) = guard.authorize_proposal(&proposal, self.core.locks()) {
                    tracing::error!(error = %e, "signing guard refused a proposal");
                    return None;
                }
                let block = Block::clone(self.blocks.get(&proposal.block_hash)?);
                let signed = key.sign_proposal(proposal);
                self.own_proposal = Some((signed.clone(), block.clone()));
                self.outbox.publish(&ConsensusMessage::Proposal {
                    proposal: signed.clone(),
                    block,
                });
                Some(Input::Proposal(signed))
            }
            Output::Vote(vote) => {
                let (guard, key) = (self.guard.as_mut()?, self.key.as_ref()?);
                if let Err(e) = guard.authorize_vote(&vote, self.core.locks()) {
                    tracing::error!(error = %e, "signing guard refused a vote");
                    return None;
                }
                let signed = key.sign_vote(vote);
                self.own_votes.push(signed.clone());
                self.outbox.publish(&ConsensusMessage::Vote(signed.clone()));
                Some(Input::Vote(signed))
            }
            Output::ValidateBlock {
                height, block_hash, ..
            } => {
                self.to_host(HostMsg::Validate {
                    height,
                    hash: block_hash,
                })
                .await;
                None
            }
            Output::ScheduleTimeout {
                timeout,
                duration_ms,
            } => {
                let mut wait = Duration::from_millis(duration_ms);
                if timeout.step == TimeoutStep::Propose {
                    if let Some((h, rest)) = self.propose_grace {
                        if h == timeout.height && timeout.round == 0 {
                            wait += rest;
                        }
                    }
                    #[cfg(test)]
                    {
                        self.last_propose_timeout = Some((timeout.height, timeout.round, wait));
                    }
                }
                self.timers.insert(Timer::Round(timeout), wait);
                None
            }
            Output::Decide {
                height,
                round,
                block_hash,
                commit,
            } => {
                self.decided = self.decided.max(height);
                self.metrics
                    .rounds_per_height
                    .observe(f64::from(round) + 1.0);
                self.to_host(HostMsg::Decided {
                    height,
                    hash: block_hash,
                    commit: Box::new(commit),
                })
                .await;
                None
            }
            Output::Evidence(e) => {
                self.to_host(HostMsg::Evidence {
                    evidence: e,
                    ours: true,
                })
                .await;
                None
            }
        }
    }

    /// Handles every timer that has expired (tests drive the driver without its loop).
    #[cfg(test)]
    pub(crate) async fn fire_timers(&mut self) {
        use std::task::Poll;
        loop {
            let expired = std::future::poll_fn(|cx| match self.timers.poll_expired(cx) {
                Poll::Ready(t) => Poll::Ready(t),
                Poll::Pending => Poll::Ready(None),
            })
            .await;
            match expired {
                Some(t) => self.on_timer(t.into_inner()).await,
                None => break,
            }
        }
    }

    /// The last propose timeout scheduled: (height, round, how long).
    #[cfg(test)]
    pub(crate) fn last_propose_timeout(&self) -> Option<(u64, u32, Duration)> {
        self.last_propose_timeout
    }

    #[cfg(test)]
    pub(crate) fn timers_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// Candidate bodies held.
    #[cfg(test)]
    pub(crate) fn candidates(&self) -> usize {
        self.blocks.len().max(self.bodies.len())
    }

    /// Once a second: catch up with a commit whose answer was lost (the host's tip is
    /// ahead of what we were told), and re-announce a stuck height's messages.
    pub(crate) async fn on_tick(&mut self) {
        let tip = self.status.borrow().height;
        if tip > self.committed && !self.halted {
            self.handle(DriverMsg::Committed {
                height: tip,
                synced: true,
                busy: false,
            })
            .await;
        }
        self.rebroadcast();
    }

    /// Re-announces our own messages of a height that is taking long.
    fn rebroadcast(&mut self) {
        if self.halted
            || self.height_started.elapsed() < REBROADCAST_AFTER
            || (self.own_votes.is_empty() && self.own_proposal.is_none())
        {
            return;
        }
        let start = self
            .own_votes
            .len()
            .saturating_sub(crate::wire::MAX_REBROADCAST_VOTES);
        self.outbox.publish(&ConsensusMessage::Rebroadcast {
            sent_at_ms: now_ms(),
            votes: self.own_votes[start..].to_vec(),
            proposal: self.own_proposal.clone(),
        });
    }
}
