//! The consensus engine: the one task that owns the consensus core, the signing guard and
//! the candidate blocks of the current height. It turns network messages, timers and sync
//! results into core inputs, and carries out the core's outputs: build and execute
//! blocks, sign (through the guard, after a synced write), broadcast, commit to RocksDB.
//!
//! ```text
//!  router ──EngineMsg──▶ engine ──publish──▶ p2p task
//!  timers ──EngineMsg──▶   │  ──commit_block──▶ RocksDB (one synced batch)
//!  sync   ──EngineMsg──▶   │  ──NodeEvent──▶ RPC /v1/events, status watch
//! ```

pub mod guard_store;
pub mod sync;
pub use sync::serve as serve_sync;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use consensus::{Consensus, Equivocation, Input, Output, SigningGuard, Timeout};
use ledger::block::{
    assemble, check_body, check_header, check_proposal_time, next_block_time, BlockTemplate,
};
use ledger::codec::encode;
use ledger::crypto::Keypair;
use ledger::exec::{build_body, execute_block, BlockOutcome, ExecContext, Signatures};
use ledger::genesis::Genesis;
use ledger::store::rocks::RocksStore;
use ledger::store::{ChainReader, ChainWriter, ConsensusStore, Tip};
use ledger::types::{Block, Commit, SignedTx};
use ledger::Hash;
use tally_p2p::{NetworkHandle, PeerId, Topic};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::mempool::metrics::MempoolMetrics;
use crate::mempool::Mempool;
use crate::metrics::ChainMetrics;
use crate::wire::ConsensusMessage;
use guard_store::RocksGuardStore;

/// Evidence records kept per validator (its oldest dropped first); the list is bounded by
/// this times the validator count.
const MAX_EVIDENCE_PER_VALIDATOR: usize = 16;
/// Evidence of a double sign older than this many heights is not recorded.
pub(crate) const EVIDENCE_MAX_AGE: u64 = 1000;
const EVIDENCE_KEY: &[u8] = b"evidence";

/// Events for RPC subscribers (`GET /v1/events`).
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

/// What `GET /v1/status` shows about consensus and sync.
#[derive(Clone, Debug, Default)]
pub struct EngineStatus {
    pub height: u64,
    pub tip_hash: Hash,
    pub state_root: Hash,
    pub round: u32,
    pub catching_up: bool,
    pub sync_target: u64,
    pub last_block_at: Option<Instant>,
    /// Set when the engine stopped committing because its own store refused a block (a
    /// full or failing disk): why, and what to do. The node goes on answering RPC, metrics
    /// and peers' sync requests from what it has; a restart once fixed resumes.
    pub halted: Option<String>,
}

/// Messages into the engine.
#[derive(Debug)]
pub enum EngineMsg {
    /// A gossip message that passed the router's stateless checks.
    Consensus {
        msg: Box<ConsensusMessage>,
        from: Option<PeerId>,
    },
    Timeout(Timeout),
    StartHeight(u64),
    /// A peer told us (directly or through its messages) that it is at `height`.
    PeerHeight {
        peer: PeerId,
        height: u64,
    },
    PeerGone(PeerId),
    /// Blocks fetched (and checked as far as possible without state) by a sync request.
    Synced(Box<sync::Fetched>),
}

/// Shared read-side view for the RPC.
#[derive(Clone)]
pub struct EngineView {
    pub status: watch::Receiver<EngineStatus>,
    pub evidence: Arc<RwLock<Vec<Equivocation>>>,
}

pub struct EngineParts {
    pub genesis: Arc<Genesis>,
    pub store: Arc<RocksStore>,
    pub mempool: Arc<Mutex<Mempool>>,
    pub mempool_metrics: MempoolMetrics,
    pub metrics: ChainMetrics,
    pub net: NetworkHandle,
    pub key: Option<Keypair>,
    pub timeout_commit: Duration,
    pub events: broadcast::Sender<NodeEvent>,
    /// Block execution skips the signatures the mempool verified on admission
    /// (`[mempool] reuse_verified_signatures`; off only to measure what it saves).
    pub reuse_mempool_signatures: bool,
}

pub struct Engine {
    genesis: Arc<Genesis>,
    store: Arc<RocksStore>,
    mempool: Arc<Mutex<Mempool>>,
    mempool_metrics: MempoolMetrics,
    metrics: ChainMetrics,
    net: NetworkHandle,
    key: Option<Keypair>,
    guard: Option<SigningGuard<RocksGuardStore>>,
    core: Consensus,
    timeout_commit: Duration,
    reuse_mempool_signatures: bool,
    inbox: mpsc::Receiver<EngineMsg>,
    me: mpsc::Sender<EngineMsg>,
    /// Round timeouts and the next height's start, fired by `run`'s loop: owned by the
    /// engine (dropped with it), never a task per timer.
    timers: tokio_util::time::DelayQueue<EngineMsg>,
    /// Our own consensus messages, in the order we signed them, for the one publisher
    /// task `run` starts (a task per publish could reorder a prevote and a precommit).
    outbox: mpsc::Sender<Vec<u8>>,
    outbox_rx: Option<mpsc::Receiver<Vec<u8>>>,
    /// The store's tip as last read; cleared when we commit (the only writer while the
    /// engine runs).
    tip_cache: std::cell::Cell<Option<Tip>>,
    events: broadcast::Sender<NodeEvent>,
    status: watch::Sender<EngineStatus>,
    evidence: Arc<RwLock<Vec<Equivocation>>>,
    /// Candidate blocks of the current and next height by hash, with their execution if
    /// done, and which proposal (height, round) brought each gossiped body.
    blocks: HashMap<Hash, Block>,
    bodies: HashMap<(u64, u32), Hash>,
    executed: HashMap<Hash, BlockOutcome>,
    /// Validation requests waiting for their block to arrive.
    awaiting_block: HashSet<Hash>,
    sync: sync::SyncState,
    last_round_change: u32,
    /// Our own signed messages of the current height, re-announced while it is stuck.
    own_votes: Vec<ledger::types::SignedVote>,
    own_proposal: Option<(ledger::types::SignedProposal, Block)>,
    height_started: Instant,
    /// Why consensus stopped, once the store could not take a committed block: nothing
    /// after that can work, so the engine stops signing and applying, and says so
    /// (log, `/v1/status`, `tally_engine_halted`) while the rest of the node serves.
    halted: Option<String>,
}

/// Runs CPU-heavy work (executing or building a block: signature checks, the state tree)
/// from the engine's task without holding up the runtime: on the multi-threaded runtime
/// `block_in_place` hands this worker's other tasks (router, RPC, network) to another
/// worker for the duration. On a current-thread runtime (unit tests) it just runs.
pub(crate) fn heavy<T>(work: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Our own messages waiting for the network task, at most.
const OUTBOX: usize = 1024;

/// The publisher: our own consensus messages go out one after the other, in the order the
/// engine signed them, until the engine drops its end.
async fn publish_in_order(net: NetworkHandle, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(data) = rx.recv().await {
        if let Err(e) = net.publish(Topic::Consensus, data).await {
            tracing::debug!(error = %e, "publish failed (no peers yet?)");
        }
    }
}

/// A height that has not finished after this long gets our messages re-announced.
const REBROADCAST_AFTER: Duration = Duration::from_millis(1500);

fn now_ms() -> u64 {
    // The engine is the I/O edge: wall-clock time for block headers is read here only.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Engine {
    /// The ids of `block`'s txs whose signatures our mempool verified (it holds only
    /// verified txs), read under one lock: execution gets a set, not a callback that locks
    /// the pool once per tx from inside the ledger's parallel loop.
    fn verified_by_mempool(&self, block: &Block) -> impl Fn(&Hash) -> bool + Sync + 'static {
        use rayon::prelude::*;
        let ids: Vec<Hash> = block.txs.par_iter().map(SignedTx::id).collect();
        let known: HashSet<Hash> = match self.mempool.lock() {
            Ok(m) => ids.into_iter().filter(|id| m.contains(id)).collect(),
            Err(_) => HashSet::new(),
        };
        move |id: &Hash| known.contains(id)
    }

    /// How block execution treats signatures: skip those the mempool verified, unless
    /// `reuse_mempool_signatures` is off.
    fn signatures<'a>(&self, known: &'a (dyn Fn(&Hash) -> bool + Sync)) -> Signatures<'a> {
        if self.reuse_mempool_signatures {
            Signatures::Cached(known)
        } else {
            Signatures::Verify
        }
    }

    pub fn new(parts: EngineParts) -> anyhow::Result<(Self, mpsc::Sender<EngineMsg>, EngineView)> {
        let (me, inbox) = mpsc::channel(4096);
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let tip = parts.store.tip()?;
        let address = parts.key.as_ref().map(Keypair::address);
        let mut core = Consensus::new(consensus::Config {
            chain_id: parts.genesis.chain_id.clone(),
            validators: parts.genesis.validators.clone(),
            address,
            timeouts: (&parts.genesis.params).into(),
        });
        let guard = match &parts.key {
            Some(_) => {
                let guard = SigningGuard::open(RocksGuardStore::new(parts.store.clone()))
                    .map_err(|e| anyhow::anyhow!("cannot read the signing guard state: {e}"))?;
                core.resume(guard.state());
                Some(guard)
            }
            None => None,
        };
        let evidence: Vec<Equivocation> = match parts.store.consensus_get(EVIDENCE_KEY)? {
            Some(bytes) => ledger::codec::decode("evidence", &bytes, 64 << 20).unwrap_or_default(),
            None => Vec::new(),
        };
        let (status, status_rx) = watch::channel(EngineStatus {
            height: tip.height,
            tip_hash: tip.block_hash,
            state_root: tip.state_root,
            ..Default::default()
        });
        let evidence = Arc::new(RwLock::new(evidence));
        parts.metrics.height.set(tip.height as i64);
        let view = EngineView {
            status: status_rx,
            evidence: evidence.clone(),
        };
        let engine = Engine {
            genesis: parts.genesis,
            store: parts.store,
            mempool: parts.mempool,
            mempool_metrics: parts.mempool_metrics,
            metrics: parts.metrics,
            net: parts.net,
            key: parts.key,
            guard,
            core,
            timeout_commit: parts.timeout_commit,
            reuse_mempool_signatures: parts.reuse_mempool_signatures,
            inbox,
            me: me.clone(),
            timers: tokio_util::time::DelayQueue::new(),
            outbox,
            outbox_rx: Some(outbox_rx),
            tip_cache: std::cell::Cell::new(None),
            events: parts.events,
            status,
            evidence,
            blocks: HashMap::new(),
            bodies: HashMap::new(),
            executed: HashMap::new(),
            awaiting_block: HashSet::new(),
            sync: sync::SyncState::default(),
            last_round_change: 0,
            own_votes: Vec::new(),
            own_proposal: None,
            height_started: Instant::now(),
            halted: None,
        };
        Ok((engine, me, view))
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let tip = match self.store.tip() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the chain tip; engine stopping");
                shutdown.cancel();
                return;
            }
        };
        tracing::info!(height = tip.height, "consensus engine starting");
        let publisher = self
            .outbox_rx
            .take()
            .map(|rx| tokio::spawn(publish_in_order(self.net.clone(), rx)));
        self.drive(Input::StartHeight {
            height: tip.height + 1,
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.inbox.recv() => match msg {
                    Some(msg) => self.on_message(msg),
                    None => break,
                },
                Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)),
                    if !self.timers.is_empty() => self.on_message(expired.into_inner()),
                _ = tick.tick() => self.on_tick(),
            }
        }
        // What we signed last still goes out (bounded: the publisher ends when the outbox
        // is empty and closed).
        let Engine { outbox, .. } = self;
        drop(outbox);
        if let Some(p) = publisher {
            let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
        }
        tracing::info!("consensus engine stopped");
    }

    /// The committed tip, read from the store once per commit (not once per input).
    fn tip(&self) -> Option<Tip> {
        if let Some(t) = self.tip_cache.get() {
            return Some(t);
        }
        match self.store.tip() {
            Ok(t) => {
                self.tip_cache.set(Some(t));
                Some(t)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the chain tip");
                None
            }
        }
    }

    fn on_message(&mut self, msg: EngineMsg) {
        if self.halted.is_some() {
            return; // drained and dropped: nothing is signed, applied or blamed
        }
        match msg {
            EngineMsg::Consensus { msg, from } => self.on_consensus(*msg, from),
            EngineMsg::Timeout(t) => self.drive(Input::Timeout(t)),
            EngineMsg::StartHeight(h) => {
                if self.tip().is_some_and(|t| t.height + 1 == h) && self.core.height() < h {
                    self.drive(Input::StartHeight { height: h });
                }
            }
            EngineMsg::PeerHeight { peer, height } => self.note_peer_height(peer, height),
            EngineMsg::PeerGone(peer) => self.sync.forget(&peer),
            EngineMsg::Synced(fetched) => self.on_synced(*fetched),
        }
    }

    fn on_consensus(&mut self, msg: ConsensusMessage, from: Option<PeerId>) {
        match msg {
            ConsensusMessage::Proposal { proposal, block } => {
                let h = proposal.proposal.height;
                if let Some(peer) = from {
                    self.note_peer_height(peer, h.saturating_sub(1));
                }
                if h == self.core.height() || h == self.core.height() + 1 {
                    let hash = proposal.proposal.block_hash;
                    // Bodies are kept for the rounds the core accepts proposals for, one
                    // per (height, round): a byzantine proposer signing proposals for
                    // every round, or several per round, costs us at most that window.
                    // The router refuses bodies that are not the header's; checked here
                    // too so that no path can pair a hash with another body.
                    let round = proposal.proposal.round;
                    let window = if h == self.core.height() {
                        self.core
                            .round()
                            .saturating_add(consensus::machine::FUTURE_ROUNDS)
                    } else {
                        consensus::machine::FUTURE_ROUNDS
                    };
                    let slot_free = self
                        .bodies
                        .get(&(h, round))
                        .is_none_or(|held| *held == hash);
                    if round <= window && slot_free && check_body(&block).is_ok() {
                        self.bodies.insert((h, round), hash);
                        self.blocks.entry(hash).or_insert(block);
                    }
                    self.drive(Input::Proposal(proposal));
                    if self.awaiting_block.remove(&hash) && h == self.core.height() {
                        let valid = self.validate(&hash);
                        self.drive(Input::BlockValidated {
                            height: h,
                            block_hash: hash,
                            valid,
                        });
                    }
                }
            }
            ConsensusMessage::Vote(vote) => {
                let h = vote.vote.height;
                if let Some(peer) = from {
                    // A vote for h means its sender has committed h - 1.
                    self.note_peer_height(peer, h.saturating_sub(1));
                }
                if h == self.core.height() || h == self.core.height() + 1 {
                    self.drive(Input::Vote(vote));
                }
            }
            ConsensusMessage::Evidence(e) => self.record_evidence(e, false),
            ConsensusMessage::Rebroadcast {
                votes, proposal, ..
            } => {
                if let Some((proposal, block)) = proposal {
                    self.on_consensus(ConsensusMessage::Proposal { proposal, block }, from);
                }
                for v in votes {
                    self.on_consensus(ConsensusMessage::Vote(v), from);
                }
            }
        }
    }

    /// Re-announces our own messages of a height that is taking long.
    fn rebroadcast(&mut self) {
        if self.height_started.elapsed() < REBROADCAST_AFTER
            || (self.own_votes.is_empty() && self.own_proposal.is_none())
        {
            return;
        }
        let start = self
            .own_votes
            .len()
            .saturating_sub(crate::wire::MAX_REBROADCAST_VOTES);
        self.publish(ConsensusMessage::Rebroadcast {
            sent_at_ms: now_ms(),
            votes: self.own_votes[start..].to_vec(),
            proposal: self.own_proposal.clone(),
        });
    }

    /// Stops consensus for good (until a restart): no more signing, applying or syncing.
    /// The timers are dropped and every later message is ignored.
    fn halt(&mut self, reason: String) {
        tracing::error!("{reason}");
        self.timers.clear();
        self.metrics.halted.set(1);
        self.status.send_modify(|s| s.halted = Some(reason.clone()));
        self.halted = Some(reason);
    }

    fn on_tick(&mut self) {
        self.metrics.sample_process();
        for (cf, size) in self.store.sizes() {
            self.metrics
                .db_size
                .get_or_create(&crate::metrics::CfLabel { cf: cf.into() })
                .set(size as i64);
        }
        if self.halted.is_some() {
            return;
        }
        if let Ok(mut m) = self.mempool.lock() {
            let expired = m.expire(Instant::now());
            self.mempool_metrics.evicted.inc_by(expired as u64);
            self.mempool_metrics.txs.set(m.len() as i64);
            self.mempool_metrics.bytes.set(m.bytes() as i64);
        }
        self.maybe_request_sync();
        self.rebroadcast();
    }

    /// Feeds one input to the core and carries out every output, including the inputs
    /// those outputs produce (our own signed messages, answers to requests).
    fn drive(&mut self, input: Input) {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            for output in self.core.handle(input) {
                if let Some(next) = self.carry_out(output) {
                    queue.push_back(next);
                }
            }
        }
        let tip = self.tip().unwrap_or(Tip {
            height: 0,
            block_hash: [0; 32],
            state_root: [0; 32],
            time_ms: 0,
        });
        self.status.send_modify(|s| {
            s.height = tip.height;
            s.tip_hash = tip.block_hash;
            s.state_root = tip.state_root;
            s.round = self.core.round();
            s.catching_up = self.sync.catching_up(tip.height);
            s.sync_target = self.sync.target();
        });
    }

    fn carry_out(&mut self, output: Output) -> Option<Input> {
        match output {
            Output::RoundChanged { height, round } => {
                if round == 0 || height != self.own_votes.first().map_or(height, |v| v.vote.height)
                {
                    self.own_votes.clear();
                    self.own_proposal = None;
                    self.height_started = Instant::now();
                }
                self.last_round_change = round;
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
                let hash = self.build_proposal(height, round)?;
                Some(Input::ProposalBuilt {
                    height,
                    round,
                    block_hash: hash,
                })
            }
            Output::Propose(proposal) => {
                let (guard, key) = (self.guard.as_mut()?, self.key.as_ref()?);
                if let Err(e) = guard.authorize_proposal(&proposal, self.core.locks()) {
                    tracing::error!(error = %e, "signing guard refused a proposal");
                    return None;
                }
                let block = self.blocks.get(&proposal.block_hash)?.clone();
                let signed = key.sign_proposal(proposal);
                self.own_proposal = Some((signed.clone(), block.clone()));
                self.publish(ConsensusMessage::Proposal {
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
                self.publish(ConsensusMessage::Vote(signed.clone()));
                Some(Input::Vote(signed))
            }
            Output::ValidateBlock {
                height, block_hash, ..
            } => {
                if !self.blocks.contains_key(&block_hash) {
                    self.awaiting_block.insert(block_hash);
                    return None;
                }
                let valid = self.validate(&block_hash);
                Some(Input::BlockValidated {
                    height,
                    block_hash,
                    valid,
                })
            }
            Output::ScheduleTimeout {
                timeout,
                duration_ms,
            } => {
                self.timers.insert(
                    EngineMsg::Timeout(timeout),
                    Duration::from_millis(duration_ms),
                );
                None
            }
            Output::Decide {
                height,
                round,
                block_hash,
                commit,
            } => {
                self.metrics
                    .rounds_per_height
                    .observe(f64::from(round) + 1.0);
                if let Some(block) = self.blocks.get(&block_hash).cloned() {
                    if self.commit(block, commit, true).is_ok() {
                        self.schedule_start(height + 1);
                    }
                } else {
                    tracing::warn!(height, "decided a block we do not hold; syncing it");
                    self.sync.raise_target(height);
                    self.maybe_request_sync();
                }
                None
            }
            Output::Evidence(e) => {
                self.record_evidence(*e, true);
                None
            }
        }
    }

    fn schedule_start(&mut self, height: u64) {
        self.timers
            .insert(EngineMsg::StartHeight(height), self.timeout_commit);
    }

    /// Queues one of our messages for the publisher, in order. Never blocks the engine: if
    /// the network has not taken [`OUTBOX`] messages, this one is dropped (and counted)
    /// rather than stalling consensus; re-announcements repeat what matters.
    fn publish(&self, msg: ConsensusMessage) {
        if self.outbox.try_send(encode(&msg)).is_err() {
            tracing::warn!("own consensus message dropped: the network is not taking them");
        }
    }

    fn ctx(&self) -> ExecContext<'_> {
        ExecContext {
            chain_id: &self.genesis.chain_id,
            params: &self.genesis.params,
        }
    }

    /// Builds, executes and remembers a block from the mempool. Returns its hash.
    fn build_proposal(&mut self, height: u64, round: u32) -> Option<Hash> {
        let tip = self.tip()?;
        if tip.height + 1 != height {
            return None;
        }
        let key = self.key.as_ref()?;
        let params = &self.genesis.params;
        let candidates: Vec<Arc<SignedTx>> = self.mempool.lock().ok()?.reap(
            params.block_max_txs as usize,
            params.block_max_bytes as usize,
        );
        let last_commit = if tip.height == 0 {
            None
        } else {
            self.store.commit(tip.height).ok().flatten()
        };
        let start = Instant::now();
        // Every candidate came out of the mempool, which holds only verified txs.
        let known = |_: &Hash| true;
        let sigs = self.signatures(&known);
        let body = match heavy(|| {
            build_body(
                self.store.as_ref(),
                self.ctx(),
                key.address(),
                candidates.iter().map(|t| (**t).clone()),
                &sigs,
            )
        }) {
            Ok(b) => b,
            Err(e) => {
                // Building reads our own store only: any failure is ours, and /v1/status
                // and the storage metric should say so.
                tracing::error!(error = %e, "cannot build a block");
                self.metrics.storage.report("building a proposal", &e);
                return None;
            }
        };
        self.metrics
            .execution
            .observe(start.elapsed().as_secs_f64());
        if !body.rejected.is_empty() {
            tracing::debug!(
                count = body.rejected.len(),
                "dropped invalid txs while building"
            );
        }
        let block = assemble(
            BlockTemplate {
                chain_id: self.genesis.chain_id.clone(),
                height,
                round,
                time_ms: next_block_time(tip.time_ms, now_ms()),
                prev_hash: tip.block_hash,
                validators_hash: self.genesis.validators.hash(),
                proposer: key.address(),
                last_commit,
            },
            &body,
        );
        let hash = block.hash();
        tracing::debug!(height, round, txs = block.txs.len(), "built a proposal");
        self.executed.insert(hash, body.outcome);
        self.blocks.insert(hash, block);
        Some(hash)
    }

    /// Checks header linkage and executes the block (signatures already verified by our
    /// mempool are not verified again).
    fn validate(&mut self, hash: &Hash) -> bool {
        if self.executed.contains_key(hash) {
            return true;
        }
        let Some(block) = self.blocks.get(hash) else {
            return false;
        };
        let Some(tip) = self.tip() else { return false };
        if let Err(e) = check_header(
            &self.genesis.chain_id,
            &self.genesis.validators,
            &tip,
            block,
        ) {
            tracing::warn!(height = block.header.height, error = %e, "proposed block has a bad header");
            return false;
        }
        // Proposer-based timestamps: a block time later than our clock plus the drift bound
        // (or not after its parent) gets our nil prevote, so a byzantine proposer cannot get
        // a far-future time committed and leave every later honest block "older" than it.
        if let Err(e) = check_proposal_time(
            tip.time_ms,
            block.header.height,
            block.header.time_ms,
            now_ms(),
            self.genesis.params.max_clock_drift_ms,
        ) {
            tracing::warn!(height = block.header.height, error = %e, "proposed block has a bad time");
            return false;
        }
        let start = Instant::now();
        let known = self.verified_by_mempool(block);
        let sigs = self.signatures(&known);
        match heavy(|| execute_block(self.store.as_ref(), self.ctx(), block, &sigs)) {
            Ok(outcome) => {
                self.metrics
                    .execution
                    .observe(start.elapsed().as_secs_f64());
                self.executed.insert(*hash, outcome);
                true
            }
            Err(e) if !e.is_peer_fault() => {
                // Our store failed under the block: not the proposer's doing. We cannot
                // vote for what we cannot check, but say whose failure it is.
                let height = block.header.height;
                tracing::error!(height, error = %e, "cannot validate the proposed block: the node's store failed");
                self.metrics
                    .storage
                    .report(&format!("validating block {height}"), &e);
                false
            }
            Err(e) => {
                tracing::warn!(height = block.header.height, error = %e, "proposed block is invalid");
                false
            }
        }
    }

    /// Writes a decided (or synced) block with its commit in one synced batch and updates
    /// the mempool, metrics, status and subscribers.
    fn commit(&mut self, block: Block, commit: Commit, from_consensus: bool) -> Result<(), ()> {
        let hash = block.hash();
        let outcome = match self.executed.remove(&hash) {
            Some(o) => o,
            None => {
                let Some(tip) = self.tip() else {
                    return Err(());
                };
                if let Err(e) = check_header(
                    &self.genesis.chain_id,
                    &self.genesis.validators,
                    &tip,
                    &block,
                ) {
                    tracing::error!(error = %e, "decided block does not extend our tip");
                    return Err(());
                }
                let known = self.verified_by_mempool(&block);
                let sigs = self.signatures(&known);
                match heavy(|| execute_block(self.store.as_ref(), self.ctx(), &block, &sigs)) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(error = %e, "decided block does not execute");
                        return Err(());
                    }
                }
            }
        };
        let ids: Vec<Hash> = outcome.receipts.iter().map(|r| r.id).collect();
        let start = Instant::now();
        let prev_time = self.tip().map(|t| t.time_ms);
        // The tip moves (or, on a failed write, is unknown): read it again when next asked.
        self.tip_cache.set(None);
        if let Err(e) = self
            .store
            .commit_block(&block, &commit, &outcome.update, &ids)
        {
            // The write is one synced batch: a failure is our disk or database (full,
            // read-only, failing), never a peer's doing, and the next heights cannot be
            // stored either. Stop consensus instead of running on without committing.
            let height = block.header.height;
            self.metrics
                .storage
                .report(&format!("committing block {height}"), &e);
            self.halt(format!(
                "cannot commit block {height}: {e}: this node's own store is unusable (disk \
                 full?), not a peer's fault; consensus stopped here; free space or fix the \
                 disk, then restart tallyd (it resumes from block {})",
                height.saturating_sub(1)
            ));
            return Err(());
        }
        self.metrics
            .commit_write
            .observe(start.elapsed().as_secs_f64());
        let height = block.header.height;
        // Mempool: drop what was included, re-check the senders whose state changed.
        let touched = outcome
            .update
            .accounts
            .iter()
            .map(|(_, addr, acct)| (*addr, *acct));
        if let Ok(mut m) = self.mempool.lock() {
            let dropped = m.update_after_commit(&ids, touched);
            self.mempool_metrics.evicted.inc_by(dropped as u64);
            self.mempool_metrics.txs.set(m.len() as i64);
            self.mempool_metrics.bytes.set(m.bytes() as i64);
        }
        self.metrics.height.set(height as i64);
        self.metrics.blocks_committed.inc();
        self.metrics.txs_committed.inc_by(ids.len() as u64);
        self.metrics.block_txs.observe(ids.len() as f64);
        if let Some(prev) = prev_time {
            if height > 1 {
                let dt = block.header.time_ms.saturating_sub(prev) as f64 / 1000.0;
                self.metrics.block_interval.observe(dt);
            }
        }
        let _ = self.events.send(NodeEvent::Block {
            height,
            hash,
            txs: ids.len(),
            time_ms: block.header.time_ms,
        });
        for (index, id) in ids.iter().enumerate() {
            let _ = self.events.send(NodeEvent::Tx {
                id: *id,
                height,
                index: index as u32,
            });
        }
        if from_consensus || height % 100 == 0 {
            tracing::info!(
                height,
                txs = ids.len(),
                hash = %ledger::to_hex(&hash[..8]),
                round = commit.round,
                "committed block"
            );
        }
        // Proposals for the next height that arrived early stay: the core replays them
        // when the height starts and asks for their bodies.
        self.blocks.retain(|_, b| b.header.height == height + 1);
        self.bodies.retain(|(h, _), _| *h == height + 1);
        self.executed.clear();
        self.awaiting_block.clear();
        self.status
            .send_modify(|s| s.last_block_at = Some(Instant::now()));
        Ok(())
    }

    /// Keeps valid evidence: at most one per (validator, height), from heights near ours,
    /// and at most [`MAX_EVIDENCE_PER_VALIDATOR`] per validator (its own oldest dropped
    /// first), so one validator double-signing all day neither grows the list without end
    /// nor evicts another's evidence, and costs one synced write per height at most.
    fn record_evidence(&mut self, e: Equivocation, ours: bool) {
        let height = e.first.vote.height;
        let ours_height = self.core.height();
        if height.saturating_add(EVIDENCE_MAX_AGE) < ours_height
            || height > ours_height.saturating_add(1)
        {
            return;
        }
        let Ok(list) = self.evidence.read() else {
            return;
        };
        let validator = e.first.validator;
        if list
            .iter()
            .any(|x| x.first.validator == validator && x.first.vote.height == height)
        {
            return;
        }
        drop(list);
        // Signatures are checked only for evidence we would keep.
        if !valid_evidence(&self.genesis, &e) {
            return;
        }
        let Ok(mut list) = self.evidence.write() else {
            return;
        };
        tracing::warn!(
            validator = %ledger::to_hex(&validator),
            height,
            round = e.first.vote.round,
            "equivocation evidence"
        );
        list.push(e.clone());
        let theirs = list
            .iter()
            .filter(|x| x.first.validator == validator)
            .count();
        if theirs > MAX_EVIDENCE_PER_VALIDATOR {
            if let Some(oldest) = list.iter().position(|x| x.first.validator == validator) {
                list.remove(oldest);
            }
        }
        if let Err(err) = self.store.consensus_put(EVIDENCE_KEY, &encode(&*list)) {
            tracing::error!(error = %err, "cannot persist evidence");
        }
        drop(list);
        self.metrics.evidence.inc();
        if ours {
            self.publish(ConsensusMessage::Evidence(e));
        }
    }
}

/// Two valid signatures of one validator for the same (height, round, kind) with different
/// block hashes.
pub fn valid_evidence(genesis: &Genesis, e: &Equivocation) -> bool {
    let (a, b) = (&e.first, &e.second);
    let Some(v) = genesis.validators.get(&a.validator) else {
        return false;
    };
    a.validator == b.validator
        && a.vote.chain_id == genesis.chain_id
        && b.vote.chain_id == genesis.chain_id
        && a.vote.height == b.vote.height
        && a.vote.round == b.vote.round
        && a.vote.kind == b.vote.kind
        && a.vote.block_hash != b.vote.block_hash
        && a.verify_signature(&v.pubkey).is_ok()
        && b.verify_signature(&v.pubkey).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CHAIN: &str = "engine-test";

    fn keys() -> Vec<Keypair> {
        (0..4)
            .map(|i| crate::testing::key(&format!("v{i}")))
            .collect()
    }

    /// A full node's engine over a fresh store of a 4-validator genesis, at height 1.
    fn engine(keys: &[Keypair], dir: &std::path::Path) -> Engine {
        let g = crate::testing::genesis(CHAIN, &keys.iter().collect::<Vec<_>>(), &[]);
        let mut engine = crate::testing::engine(Arc::new(g), dir);
        engine.drive(Input::StartHeight { height: 1 });
        engine
    }

    fn proposal(
        g: &Genesis,
        key: &Keypair,
        height: u64,
        round: u32,
        salt: u64,
    ) -> ConsensusMessage {
        crate::testing::empty_proposal(g, key, height, round, salt)
    }

    /// Item 10 of issue 17: one validator signing proposals for every round it proposes
    /// in, several different ones per round, for this height and the next, used to have
    /// every body kept until the height committed. The engine keeps one body per (height,
    /// round), for the rounds the core takes proposals for.
    #[tokio::test]
    async fn one_proposer_signing_every_round_is_held_to_the_round_window() {
        let keys = keys();
        let dir = tempfile::tempdir().unwrap();
        let mut engine = engine(&keys, dir.path());
        let g = engine.genesis.clone();
        let bad = &keys[3];
        let mut sent = 0;
        for height in [1, 2] {
            for round in 0..2_000u32 {
                if g.validators.proposer(height, round).address != bad.address() {
                    continue;
                }
                for salt in 0..5 {
                    engine.on_consensus(proposal(&g, bad, height, round, salt), None);
                    sent += 1;
                }
            }
        }
        let window = 2 * (consensus::machine::FUTURE_ROUNDS as usize + 1);
        assert!(sent > 2_000, "{sent}");
        assert!(
            engine.blocks.len() <= window && engine.bodies.len() <= window,
            "{} bodies kept of {sent} proposals ({} slots); the window holds {window}",
            engine.blocks.len(),
            engine.bodies.len()
        );
        assert!(
            !engine.blocks.is_empty(),
            "in-window proposals must still be kept"
        );
    }

    fn equivocation(key: &Keypair, height: u64, round: u32) -> Equivocation {
        let vote = |hash: u8| {
            key.sign_vote(ledger::types::Vote {
                chain_id: CHAIN.into(),
                height,
                round,
                kind: ledger::types::VoteKind::Prevote,
                block_hash: Some([hash; 32]),
            })
        };
        Equivocation {
            first: vote(1),
            second: vote(2),
        }
    }

    /// Item 10 of issue 17: one validator's double signs, as many as it likes, are one
    /// record per height it may be punished for, and never push out another's.
    #[tokio::test]
    async fn one_validators_evidence_never_evicts_anothers() {
        let keys = keys();
        let dir = tempfile::tempdir().unwrap();
        let mut engine = engine(&keys, dir.path());
        engine.record_evidence(equivocation(&keys[2], 1, 0), false);
        for round in 0..200 {
            for height in [1, 2, 3, 5_000] {
                engine.record_evidence(equivocation(&keys[3], height, round), false);
            }
        }
        let list = engine.evidence.read().unwrap().clone();
        let of = |k: &Keypair| {
            list.iter()
                .filter(|e| e.first.validator == k.address())
                .count()
        };
        assert_eq!(of(&keys[2]), 1, "validator 2's record was evicted");
        // Heights 1 and 2 only (the next height at most); one record each.
        assert_eq!(of(&keys[3]), 2, "{} records of validator 3", of(&keys[3]));
        // And the stored copy is the same bounded list.
        let stored: Vec<Equivocation> = ledger::codec::decode(
            "evidence",
            &engine.store.consensus_get(EVIDENCE_KEY).unwrap().unwrap(),
            1 << 20,
        )
        .unwrap();
        assert_eq!(stored.len(), 3);
    }

    /// Our own messages leave in the order we signed them (one publisher task reading a
    /// queue; a task per message could put a precommit on the wire before its prevote),
    /// and the next height's start is a timer the engine owns, not a task of its own.
    #[tokio::test]
    async fn own_messages_are_published_in_signing_order_and_timers_are_owned() {
        let v = crate::testing::key("solo");
        let g = Arc::new(crate::testing::genesis(CHAIN, &[&v], &[]));
        let dir = tempfile::tempdir().unwrap();
        let mut engine = crate::testing::validator_engine(g, dir.path(), Some(v));
        let mut outbox = engine.outbox_rx.take().unwrap();
        engine.drive(Input::StartHeight { height: 1 });
        let mut sent = Vec::new();
        while let Ok(data) = outbox.try_recv() {
            let msg: ConsensusMessage = ledger::codec::decode("msg", &data, 1 << 20).unwrap();
            sent.push(match msg {
                ConsensusMessage::Proposal { proposal, .. } => {
                    format!("proposal {}", proposal.proposal.height)
                }
                ConsensusMessage::Vote(v) => format!("{:?} {}", v.vote.kind, v.vote.height),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(sent, ["proposal 1", "Prevote 1", "Precommit 1"]);
        assert_eq!(
            engine.tip().unwrap().height,
            1,
            "the lone validator commits"
        );
        // The next height starts from a timer the engine owns (timeout_commit is 10 ms).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let fired = tokio::time::timeout_at(
                deadline,
                std::future::poll_fn(|cx| engine.timers.poll_expired(cx)),
            )
            .await
            .expect("no StartHeight(2) timer fired within 10 s")
            .expect("the timer queue ran empty without StartHeight(2)");
            if matches!(fired.into_inner(), EngineMsg::StartHeight(2)) {
                break;
            }
        }
    }
}
