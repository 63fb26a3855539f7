//! The chain host: the one actor that owns the ledger side of consensus. It keeps the
//! candidate blocks of the next heights, builds proposals from the mempool, validates
//! (executes) proposed blocks, commits decided and synced blocks to the store in one
//! synced batch each, keeps the equivocation evidence, and updates the mempool, the
//! metrics, `/v1/status` and the event stream after each commit. The tip lives in memory
//! here: nothing re-reads it from the store per message.
//!
//! ```text
//!  driver ──Body/Build/Validate/Decided/Evidence──▶ host ──Built/Validated/Committed──▶ driver
//!  sync   ──Synced(blocks from tip+1, in order)───▶ host ──Applied──────────────────────▶ sync
//!                                                    │ ──commit_block──▶ store (one synced batch)
//!                                                    │ ──NodeEvent──▶ /v1/events, NodeStatus──▶ /v1/status
//! ```
//!
//! Execution (signature checks, the state tree) runs on the blocking pool; the host waits
//! for it, so requests are handled one at a time, in order.

mod budget;
mod evidence;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use consensus::Equivocation;
use ledger::block::{
    assemble, assemble_v2, block_sets, check_header, check_header_v2, check_proposal_time,
    next_block_time, BlockSets, BlockTemplate,
};
use ledger::exec::{
    build_body_at, execute_block_with_ids, BlockEnv, BlockError, BlockOutcome, ExecContext,
    Signatures,
};
use ledger::genesis::Genesis;
use ledger::store::Tip;
use ledger::types::{Address, Block, Commit, CommitSig, SignedTx, SignedVote};
use ledger::upgrade::ProtocolSchedule;
use ledger::Hash;
use tally_p2p::{PeerId, PenaltyReason};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::actors::NodeStore;
use crate::driver::{DriverMsg, Outbox};
use crate::mempool::metrics::MempoolMetrics;
use crate::mempool::Mempool;
use crate::metrics::ChainMetrics;
use crate::sets::{stored_set_at, KnownSets, SetsTx};
use crate::status::{NodeEvent, StatusTx};
use crate::sync::{SyncMsg, Verified};
pub use evidence::{valid_evidence, EVIDENCE_MAX_AGE};

/// Requests waiting for the host, at most.
pub const INBOX: usize = 1024;
/// Evidence pieces a protocol-2 proposer offers one block, at most.
pub const MAX_BLOCK_EVIDENCE: usize = 16;

/// Requests to the chain host.
#[derive(Debug)]
pub enum HostMsg {
    /// Protocol 2: a precommit of the committed tip that arrived after the decision (the
    /// router checked its signature against the tip's set); added to the commit the next
    /// block carries.
    LatePrecommit(SignedVote),
    /// A gossiped block body whose hash is its proposal's: kept as a candidate (the driver
    /// passes on one per (height, round), in the rounds its core takes).
    Body(Arc<Block>),
    /// Build a proposal for (height, round) from the mempool; answered with
    /// [`DriverMsg::Built`].
    Build { height: u64, round: u32 },
    /// Check and execute the candidate `hash` of `height`; answered with
    /// [`DriverMsg::Validated`] once its body is here.
    Validate { height: u64, hash: Hash },
    /// Consensus decided `hash` at `height`: commit it; answered with
    /// [`DriverMsg::Committed`].
    Decided {
        height: u64,
        hash: Hash,
        commit: Box<Commit>,
    },
    /// Blocks from the tip + 1 on, in order, each with the peer that served it and its
    /// commit verified; answered on `reply`.
    Synced {
        blocks: Vec<(PeerId, Verified)>,
        reply: oneshot::Sender<Applied>,
    },
    /// Equivocation evidence: from the network, or found by our own core (`ours`, then
    /// published once kept).
    Evidence {
        evidence: Box<Equivocation>,
        ours: bool,
    },
}

/// What the host did with a batch of synced blocks.
#[derive(Debug, Default)]
pub struct Applied {
    /// Blocks committed, and their txs.
    pub blocks: u64,
    pub txs: u64,
    /// The peers whose blocks were committed.
    pub sources: Vec<PeerId>,
    /// The block that failed because of the peer that served it; the rest of the batch
    /// is in `unapplied`.
    pub fault: Option<PeerFault>,
    /// Our own store failed (reported): the failed block and the rest of the batch are in
    /// `unapplied`, to be tried again.
    pub storage_failed: bool,
    pub unapplied: Vec<(PeerId, Verified)>,
}

#[derive(Debug)]
pub struct PeerFault {
    pub peer: PeerId,
    pub height: u64,
    pub reason: PenaltyReason,
    pub error: String,
}

/// What the host is built from.
pub struct HostParts<S> {
    pub genesis: Arc<Genesis>,
    pub store: Arc<S>,
    pub mempool: Arc<Mutex<Mempool>>,
    pub mempool_metrics: MempoolMetrics,
    pub metrics: ChainMetrics,
    pub events: broadcast::Sender<NodeEvent>,
    pub status: StatusTx,
    pub evidence: Arc<RwLock<Vec<Equivocation>>>,
    /// Where our own evidence is published (the driver's ordered outbox).
    pub outbox: Outbox,
    /// Block execution skips the signatures the mempool verified on admission
    /// (`[mempool] reuse_verified_signatures`; off only to measure what it saves).
    pub reuse_mempool_signatures: bool,
    /// Our address, when we propose (validators only).
    pub proposer: Option<[u8; 20]>,
    /// Where the host publishes the validator sets of the next heights (read by the driver
    /// and the router; see [`crate::sets`]).
    pub sets: SetsTx,
}

pub struct ChainHost<S> {
    genesis: Arc<Genesis>,
    store: Arc<S>,
    mempool: Arc<Mutex<Mempool>>,
    mempool_metrics: MempoolMetrics,
    metrics: ChainMetrics,
    events: broadcast::Sender<NodeEvent>,
    status: StatusTx,
    evidence: evidence::EvidencePool,
    outbox: Outbox,
    reuse_mempool_signatures: bool,
    proposer: Option<[u8; 20]>,
    sets_tx: SetsTx,
    /// Protocol 2: the sets a block at the tip + 1 is checked against (of the tip, the
    /// tip + 1 and the tip + 2), read from the store after each commit. None on protocol 1,
    /// whose every height has the genesis set.
    sets: Option<BlockSets>,
    /// Protocol 2: (validator, height) of the evidence committed blocks carried since the
    /// start, not offered again.
    included_evidence: HashSet<([u8; 20], u64)>,
    /// Protocol 2: the commit of the tip with the precommits that came after the decision
    /// added ([`HostMsg::LatePrecommit`]); the next block we build carries it, so the
    /// downtime rule does not count a validator that was merely last to precommit. Lost on
    /// a restart (then the stored commit is used).
    tip_commit: Option<Commit>,
    /// The committed tip: read from the store once at start, then moved by our commits
    /// (the host is the store's only block writer while the node runs).
    tip: Tip,
    /// Candidate blocks of the next two heights by hash, with their execution once done.
    blocks: HashMap<Hash, Arc<Block>>,
    executed: HashMap<Hash, BlockOutcome>,
    /// What validating the others' proposals has cost lately: caps our proposals
    /// ([`budget`]).
    budget: budget::ExecBudget,
    /// Validation requests waiting for their block's body.
    awaiting: HashSet<Hash>,
    halted: bool,
    /// The highest protocol this binary runs on this chain
    /// ([`crate::upgrade::max_protocol`]).
    max_protocol: u32,
    /// Set when the chain activated a protocol above `max_protocol` from the next height:
    /// the host has halted and its task ends, which stops the node (crate::upgrade).
    upgrade_required: Option<crate::upgrade::UpgradeRequired>,
    /// The proposer and upgrade signal of the last `params.upgrade_window` committed
    /// blocks, oldest first: the readiness `/v1/status` and the metrics show, counted
    /// without reading the window's blocks again at each commit.
    signals: VecDeque<(Address, Option<u32>)>,
    driver: mpsc::Sender<DriverMsg>,
    sync: mpsc::Sender<SyncMsg>,
}

/// Refreshes the staking gauges (set size and power, jailed, slashes, burned) from the
/// state at `height`; a read error only leaves them stale (the commit path reports store
/// errors that matter on its own).
fn observe_staking_or_warn<S: NodeStore + ?Sized>(
    metrics: &ChainMetrics,
    genesis: &Genesis,
    store: &S,
    height: u64,
) {
    if let Err(e) = crate::metrics::observe_staking(&metrics.staking, genesis, store, height) {
        tracing::warn!(height, error = %e, "cannot refresh the staking metrics");
    }
}

/// Wall-clock milliseconds: the node's one read of the clock (block times here, the
/// driver's re-announcement stamps).
pub(crate) fn now_ms() -> u64 {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a block's tx signatures still need checking when the host executes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signed {
    /// A proposal: verify each signature our mempool did not.
    Unchecked,
    /// A synced block: its fetch task verified every one.
    Checked,
}

/// Runs CPU-heavy work (a block's signatures and state tree) on the blocking pool, so the
/// runtime's workers keep serving the network, the router and the RPC meanwhile.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "block execution task failed");
            None
        }
    }
}

impl<S: NodeStore> ChainHost<S> {
    pub fn new(
        parts: HostParts<S>,
        driver: mpsc::Sender<DriverMsg>,
        sync: mpsc::Sender<SyncMsg>,
    ) -> anyhow::Result<Self> {
        let tip = parts.store.tip()?;
        let max_protocol = crate::upgrade::max_protocol(parts.genesis.params.protocol_version);
        crate::upgrade::check_next_height(
            parts.store.as_ref(),
            &parts.genesis.params,
            tip.height,
            max_protocol,
        )??;
        let evidence = evidence::EvidencePool::load(parts.evidence, parts.store.as_ref())?;
        let window = parts.genesis.params.upgrade_window;
        let mut signals = VecDeque::new();
        for h in tip.height.saturating_sub(window).saturating_add(1).max(1)..=tip.height {
            if let Some(header) = parts.store.committed_header(h)? {
                signals.push_back((header.proposer, header.signal()));
            }
        }
        let next_protocol = crate::upgrade::protocol_at(
            parts.store.as_ref(),
            &parts.genesis.params,
            tip.height + 1,
        )?;
        let sets = if next_protocol >= ledger::types::PROTOCOL_2 {
            let sets = block_sets(parts.store.as_ref(), tip.height + 1).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the validator sets of heights {}..={} from the store: {e}; \
                     a protocol-2 store holds them from genesis on, so the database is \
                     damaged: run `tallyd fsck --home <home>` for a report",
                    tip.height,
                    tip.height + 2
                )
            })?;
            parts.sets.send_replace(Arc::new(KnownSets::from_block_sets(
                tip.height + 1,
                sets.clone(),
            )));
            Some(sets)
        } else {
            None
        };
        parts.metrics.height.set(tip.height as i64);
        observe_staking_or_warn(
            &parts.metrics,
            &parts.genesis,
            parts.store.as_ref(),
            tip.height,
        );
        parts.status.send_modify(|s| {
            s.height = tip.height;
            s.tip_hash = tip.block_hash;
            s.state_root = tip.state_root;
        });
        let mut host = ChainHost {
            genesis: parts.genesis,
            store: parts.store,
            mempool: parts.mempool,
            mempool_metrics: parts.mempool_metrics,
            metrics: parts.metrics,
            events: parts.events,
            status: parts.status,
            evidence,
            outbox: parts.outbox,
            reuse_mempool_signatures: parts.reuse_mempool_signatures,
            proposer: parts.proposer,
            sets_tx: parts.sets,
            sets,
            included_evidence: HashSet::new(),
            tip_commit: None,
            tip,
            blocks: HashMap::new(),
            executed: HashMap::new(),
            budget: budget::ExecBudget::default(),
            awaiting: HashSet::new(),
            halted: false,
            max_protocol,
            upgrade_required: None,
            signals,
            driver,
            sync,
        };
        host.check_protocol();
        Ok(host)
    }

    /// The committed tip.
    pub fn tip(&self) -> Tip {
        self.tip
    }

    pub async fn run(mut self, mut inbox: mpsc::Receiver<HostMsg>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = inbox.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                _ = tick.tick() => self.expire_mempool(),
            }
            if self.upgrade_required.is_some() {
                // Ending the task stops the node; node::run_with reports why.
                break;
            }
        }
        tracing::debug!("chain host stopped");
    }

    /// Handles one request and sends its answer.
    pub async fn handle(&mut self, msg: HostMsg) {
        if self.halted {
            return; // drained and dropped: nothing is applied, built or blamed
        }
        match msg {
            HostMsg::Body(block) => self.on_body(block).await,
            HostMsg::Build { height, round } => {
                let block = self.build(height, round).await;
                self.tell_driver(DriverMsg::Built {
                    height,
                    round,
                    block,
                });
            }
            HostMsg::Validate { height, hash } => {
                if !self.blocks.contains_key(&hash) {
                    self.awaiting.insert(hash);
                    return;
                }
                let valid = self.validate(&hash).await;
                self.tell_driver(DriverMsg::Validated {
                    height,
                    hash,
                    valid,
                });
            }
            HostMsg::Decided {
                height,
                hash,
                commit,
            } => self.on_decided(height, hash, *commit).await,
            HostMsg::LatePrecommit(vote) => self.add_late_precommit(vote),
            HostMsg::Synced { blocks, reply } => {
                let applied = self.apply_synced(blocks).await;
                if applied.blocks > 0 {
                    self.tell_driver(DriverMsg::Committed {
                        height: self.tip.height,
                        synced: true,
                        busy: false,
                    });
                }
                let _ = reply.send(applied);
            }
            HostMsg::Evidence { evidence, ours } => {
                let next = self.tip.height.saturating_add(1);
                let set_of = |height: u64| self.set_at(height);
                if self.evidence.record(
                    &self.genesis.chain_id,
                    set_of,
                    *evidence.clone(),
                    next,
                    self.store.as_ref(),
                ) {
                    self.metrics.evidence.inc();
                    if ours {
                        self.outbox
                            .publish(&crate::wire::ConsensusMessage::Evidence(*evidence));
                    }
                }
            }
        }
    }

    /// Adds a precommit of the tip for the committed block and round, from a validator the
    /// commit lacks, to [`ChainHost::tip_commit`] (its signature was checked by the router
    /// against the tip's set; signatures stay sorted by address, as a commit must be).
    fn add_late_precommit(&mut self, v: SignedVote) {
        let Some(c) = self.tip_commit.as_mut() else {
            return;
        };
        if v.vote.height != c.height
            || v.vote.round != c.round
            || v.vote.block_hash != Some(c.block_hash)
        {
            return;
        }
        if let Err(at) = c
            .signatures
            .binary_search_by_key(&v.validator, |s| s.validator)
        {
            c.signatures.insert(
                at,
                CommitSig {
                    validator: v.validator,
                    signature: v.signature,
                },
            );
        }
    }

    /// The validator set of `height`: the genesis set on protocol 1; on protocol 2 the set
    /// stored for it, known up to the tip + 2 (None above, or if the store fails).
    fn set_at(&self, height: u64) -> Option<ledger::validators::ValidatorSet> {
        if self.sets.is_none() {
            return Some(self.genesis.validators.clone());
        }
        match stored_set_at(self.store.as_ref(), self.tip.height, height) {
            Ok(set) => set,
            Err(e) => {
                self.metrics
                    .storage
                    .report(&format!("reading the validator set of height {height}"), &e);
                None
            }
        }
    }

    /// Answers go to the driver's own answer channel, never waited for (see
    /// `Actors::build`).
    fn tell_driver(&self, msg: DriverMsg) {
        match self.driver.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                tracing::error!(?msg, "consensus driver far behind; answer dropped")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("consensus driver stopped; answer dropped")
            }
        }
    }

    async fn on_body(&mut self, block: Arc<Block>) {
        let height = block.header.height;
        if height <= self.tip.height || height > self.tip.height.saturating_add(2) {
            return;
        }
        let hash = block.hash();
        self.blocks.entry(hash).or_insert(block);
        if self.awaiting.remove(&hash) && height == self.tip.height + 1 {
            let valid = self.validate(&hash).await;
            self.tell_driver(DriverMsg::Validated {
                height,
                hash,
                valid,
            });
        }
    }

    fn ctx(genesis: &Genesis) -> ExecContext<'_> {
        ExecContext {
            chain_id: &genesis.chain_id,
            params: &genesis.params,
            validators: &genesis.validators,
        }
    }

    /// The txs (by id) whose signatures our mempool verified (it holds only verified txs),
    /// read under one lock: execution gets a set, not a callback that locks the pool once
    /// per tx from inside the ledger's parallel loop.
    fn held_by(mempool: &Mutex<Mempool>, ids: &[(Hash, usize)]) -> HashSet<Hash> {
        match mempool.lock() {
            Ok(m) => ids
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| m.contains(id))
                .collect(),
            Err(_) => HashSet::new(),
        }
    }

    /// Counts the tx signatures an execution verified (those the mempool had not).
    fn count_verified(&self, outcome: &BlockOutcome) {
        self.metrics.tx_signatures.count(
            crate::metrics::VerifyPath::Block,
            u64::from(outcome.signatures_verified),
        );
    }

    /// Executes `block` against our state on the blocking pool. `Signed::Unchecked`: its
    /// tx signatures are verified unless our mempool verified them (and reuse is on);
    /// `Signed::Checked`: all were checked when the block was fetched (sync). Each tx is
    /// hashed once, for both the mempool lookup and the execution.
    async fn execute(
        &self,
        block: Arc<Block>,
        signed: Signed,
    ) -> Option<Result<BlockOutcome, BlockError>> {
        let (store, genesis) = (self.store.clone(), self.genesis.clone());
        let pool = (signed == Signed::Unchecked && self.reuse_mempool_signatures)
            .then(|| self.mempool.clone());
        let start = Instant::now();
        let result = blocking(move || {
            let ids = ledger::exec::tx_ids_and_sizes(&block.txs);
            let held = pool
                .as_ref()
                .map_or_else(HashSet::new, |p| Self::held_by(p, &ids));
            let known = |id: &Hash| signed == Signed::Checked || held.contains(id);
            let result = execute_block_with_ids(
                store.as_ref(),
                Self::ctx(&genesis),
                &block,
                &ids,
                &Signatures::Cached(&known),
            );
            // What this execution verified, the pool need not verify again when the
            // txs' gossip arrives before the block commits.
            if let (Ok(outcome), Some(pool)) = (&result, &pool) {
                if outcome.signatures_verified > 0 {
                    let fresh = ids
                        .iter()
                        .map(|(id, _)| *id)
                        .filter(|id| !held.contains(id));
                    if let Ok(mut m) = pool.lock() {
                        m.note_verified(fresh);
                    }
                }
            }
            result
        })
        .await;
        if let Some(Ok(outcome)) = &result {
            self.metrics
                .execution
                .observe(start.elapsed().as_secs_f64());
            self.count_verified(outcome);
        }
        result
    }

    /// Builds, executes and remembers a block from the mempool.
    async fn build(&mut self, height: u64, round: u32) -> Option<Arc<Block>> {
        let proposer = self.proposer?;
        if self.tip.height + 1 != height {
            return None;
        }
        let params = &self.genesis.params;
        let timeout = consensus::types::Timeouts::from(params)
            .duration_ms(consensus::types::TimeoutStep::Propose, round);
        let max_txs = self.budget.max_txs(
            Duration::from_millis(timeout),
            params.block_max_txs as usize,
        );
        self.metrics.proposal_tx_cap.set(max_txs as i64);
        let candidates: Vec<Arc<SignedTx>> = self
            .mempool
            .lock()
            .ok()?
            .reap(max_txs, params.block_max_bytes as usize);
        let last_commit = if self.tip.height == 0 {
            None
        } else if let Some(c) = self
            .tip_commit
            .as_ref()
            .filter(|c| c.height == self.tip.height)
        {
            Some(c.clone())
        } else {
            self.store.commit(self.tip.height).ok().flatten()
        };
        let start = Instant::now();
        let (store, genesis, reuse) = (
            self.store.clone(),
            self.genesis.clone(),
            self.reuse_mempool_signatures,
        );
        let evidence = match &self.sets {
            Some(_) => self.evidence.for_block(
                height,
                self.genesis.params.staking().evidence_max_age_blocks,
                MAX_BLOCK_EVIDENCE,
                &self.included_evidence,
            ),
            None => Vec::new(),
        };
        let commit_for_body = last_commit.clone();
        let built = blocking(move || {
            // Every candidate came out of the mempool, which holds only verified txs.
            let all = |_: &Hash| true;
            let sigs = if reuse {
                Signatures::Cached(&all)
            } else {
                Signatures::Verify
            };
            let candidates = candidates.iter().map(|t| (**t).clone());
            // Issue 21: signal the next protocol if this binary runs it.
            let protocol = ProtocolSchedule::read(store.as_ref(), &genesis.params)?.at(height);
            let env = BlockEnv {
                height,
                proposer,
                last_commit: commit_for_body.as_ref(),
                evidence: &evidence,
                signal: ledger::upgrade::signal_for(
                    crate::upgrade::max_protocol(genesis.params.protocol_version),
                    protocol,
                ),
            };
            build_body_at(store.as_ref(), Self::ctx(&genesis), env, candidates, &sigs)
        })
        .await?;
        let body = match built {
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
        self.count_verified(&body.outcome);
        if !body.rejected.is_empty() {
            tracing::debug!(
                count = body.rejected.len(),
                "dropped invalid txs while building"
            );
        }
        for (e, why) in &body.rejected_evidence {
            tracing::debug!(
                validator = %ledger::to_hex(&e.a.validator),
                height = e.a.vote.height,
                reason = %why,
                "evidence left out of the proposal"
            );
        }
        let template = BlockTemplate {
            chain_id: self.genesis.chain_id.clone(),
            height,
            round,
            time_ms: next_block_time(self.tip.time_ms, now_ms()),
            prev_hash: self.tip.block_hash,
            validators_hash: match &self.sets {
                Some(sets) => sets.current.hash(),
                None => self.genesis.validators.hash(),
            },
            proposer,
            last_commit,
        };
        let block = Arc::new(match &self.sets {
            Some(sets) => assemble_v2(template, sets.next.hash(), &body),
            None => assemble(template, &body),
        });
        let hash = block.hash();
        tracing::debug!(
            height,
            round,
            txs = block.txs.len(),
            ms = start.elapsed().as_millis() as u64,
            "built a proposal"
        );
        self.executed.insert(hash, body.outcome);
        self.blocks.insert(hash, block.clone());
        Some(block)
    }

    /// Whether `block`'s header extends our tip (linkage, proposer, last commit; on
    /// protocol 2 with the sets of its height, the next and the previous).
    fn extends_tip(&self, block: &Block) -> Result<(), ledger::block::HeaderError> {
        match &self.sets {
            Some(sets) => check_header_v2(&self.genesis.chain_id, sets, &self.tip, block),
            None => check_header(
                &self.genesis.chain_id,
                &self.genesis.validators,
                &self.tip,
                block,
            ),
        }
    }

    /// Checks header linkage and the proposer's time, and executes the block (signatures
    /// already verified by our mempool are not verified again).
    async fn validate(&mut self, hash: &Hash) -> bool {
        if self.executed.contains_key(hash) {
            return true;
        }
        let Some(block) = self.blocks.get(hash).cloned() else {
            return false;
        };
        let height = block.header.height;
        if let Err(e) = self.extends_tip(&block) {
            tracing::warn!(height, error = %e, "proposed block has a bad header");
            return false;
        }
        // Proposer-based timestamps: a block time later than our clock plus the drift bound
        // (or not after its parent) gets our nil prevote, so a byzantine proposer cannot get
        // a far-future time committed and leave every later honest block "older" than it.
        if let Err(e) = check_proposal_time(
            self.tip.time_ms,
            height,
            block.header.time_ms,
            now_ms(),
            self.genesis.params.max_clock_drift_ms,
        ) {
            tracing::warn!(height, error = %e, "proposed block has a bad time");
            return false;
        }
        let txs = block.txs.len();
        let start = Instant::now();
        match self.execute(block, Signed::Unchecked).await {
            Some(Ok(outcome)) => {
                self.budget.observe(txs, start.elapsed());
                tracing::debug!(
                    height,
                    txs,
                    verified = outcome.signatures_verified,
                    ms = start.elapsed().as_millis() as u64,
                    "validated a proposed block"
                );
                self.executed.insert(*hash, outcome);
                true
            }
            Some(Err(e)) if !e.is_peer_fault() => {
                // Our store failed under the block: not the proposer's doing. We cannot
                // vote for what we cannot check, but say whose failure it is.
                tracing::error!(height, error = %e, "cannot validate the proposed block: the node's store failed");
                self.metrics
                    .storage
                    .report(&format!("validating block {height}"), &e);
                false
            }
            Some(Err(e)) => {
                tracing::warn!(height, error = %e, "proposed block is invalid");
                false
            }
            None => false,
        }
    }

    async fn on_decided(&mut self, height: u64, hash: Hash, commit: Commit) {
        if height <= self.tip.height {
            return; // sync committed it first
        }
        let Some(block) = self.blocks.get(&hash).cloned() else {
            tracing::warn!(height, "decided a block we do not hold; syncing it");
            let _ = self.sync.try_send(SyncMsg::Proven(height));
            return;
        };
        if !self.executed.contains_key(&hash) {
            if let Err(e) = self.extends_tip(&block) {
                tracing::error!(height, error = %e, "decided block does not extend our tip");
                return;
            }
            match self.execute(block.clone(), Signed::Unchecked).await {
                Some(Ok(outcome)) => {
                    self.executed.insert(hash, outcome);
                }
                Some(Err(e)) => {
                    tracing::error!(height, error = %e, "decided block does not execute");
                    return;
                }
                None => return,
            }
        }
        if self.commit(&block, hash, &commit, true).is_ok() {
            // Under load (this block carried txs and more wait) the driver may start the
            // next height before the end of timeout_commit. Txs that wait while blocks
            // come empty (a nonce gap) are not load: skipping for them would spin out
            // empty blocks.
            let busy = !block.txs.is_empty() && self.mempool.lock().is_ok_and(|m| !m.is_empty());
            self.tell_driver(DriverMsg::Committed {
                height,
                synced: false,
                busy,
            });
        }
    }

    /// Commits synced blocks that extend the tip, in order: header linkage, execution
    /// (their signatures were verified when fetched), commit.
    async fn apply_synced(&mut self, blocks: Vec<(PeerId, Verified)>) -> Applied {
        let mut applied = Applied::default();
        let mut rest = blocks.into_iter();
        for (peer, verified) in rest.by_ref() {
            let height = verified.block.header.height;
            if height <= self.tip.height {
                continue; // committed meanwhile by consensus
            }
            let fault = |reason, error: String| PeerFault {
                peer,
                height,
                reason,
                error,
            };
            if let Err(e) = self.extends_tip(&verified.block) {
                applied.fault = Some(fault(
                    PenaltyReason::InvalidBlock,
                    format!("does not extend our tip: {e}"),
                ));
                break;
            }
            // Protocol 2: the set of this height is known only now (its block's parent
            // is our tip), so its commit is verified here, not when it was fetched.
            if let Some(sets) = &self.sets {
                if let Err(e) = sets.current.verify_commit(
                    &self.genesis.chain_id,
                    height,
                    &verified.hash,
                    &verified.commit,
                ) {
                    applied.fault = Some(fault(
                        PenaltyReason::InvalidBlock,
                        format!("its commit does not verify with the set of height {height}: {e}"),
                    ));
                    break;
                }
            }
            let block = Arc::new(verified.block);
            let (hash, proven) = (verified.hash, verified.proven);
            let outcome = match self.execute(block.clone(), Signed::Checked).await {
                Some(Ok(o)) => o,
                Some(Err(e)) if !e.is_peer_fault() => {
                    self.metrics
                        .storage
                        .report(&format!("sync: executing block {height}"), &e);
                    applied.storage_failed = true;
                    applied.unapplied.push((
                        peer,
                        Verified {
                            block: Arc::unwrap_or_clone(block),
                            commit: verified.commit,
                            hash,
                            proven,
                        },
                    ));
                    break;
                }
                // Execution failed although > 2/3 signed the header: the peer lied about
                // the block's contents (the header is authentic, the body is not).
                Some(Err(e)) => {
                    applied.fault = Some(fault(
                        PenaltyReason::InvalidBlock,
                        format!("does not execute: {e}"),
                    ));
                    break;
                }
                None => {
                    applied.storage_failed = true;
                    break;
                }
            };
            self.executed.insert(hash, outcome);
            if self.commit(&block, hash, &verified.commit, false).is_err() {
                break;
            }
            applied.blocks += 1;
            applied.txs += block.txs.len() as u64;
            if !applied.sources.contains(&peer) {
                applied.sources.push(peer);
            }
            if self.halted {
                break; // e.g. the next height runs a protocol this binary does not
            }
        }
        applied.unapplied.extend(rest);
        applied
    }

    /// Writes a decided (or synced) block with its commit in one synced batch and updates
    /// the mempool, metrics, status and subscribers. The block must have been executed.
    fn commit(
        &mut self,
        block: &Block,
        hash: Hash,
        commit: &Commit,
        from_consensus: bool,
    ) -> Result<(), ()> {
        let height = block.header.height;
        let Some(outcome) = self.executed.remove(&hash) else {
            tracing::error!(height, "commit of a block that was not executed");
            return Err(());
        };
        let ids: Vec<Hash> = outcome.receipts.iter().map(|r| r.id).collect();
        let start = Instant::now();
        if let Err(e) = self
            .store
            .commit_block(block, commit, &outcome.update, &ids)
        {
            // The write is one synced batch: a failure is our disk or database (full,
            // read-only, failing), never a peer's doing, and the next heights cannot be
            // stored either. Stop consensus instead of running on without committing.
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
        let prev_time = self.tip.time_ms;
        self.tip = Tip {
            height,
            block_hash: hash,
            state_root: block.header.state_root,
            time_ms: block.header.time_ms,
        };
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
        // Protocol 2, or its first height next (issue 21: the end of A - 1 stored the
        // sets of A and A + 1).
        let v2_next = self.sets.is_some()
            || crate::upgrade::protocol_at(self.store.as_ref(), &self.genesis.params, height + 1)
                .is_ok_and(|p| p >= ledger::types::PROTOCOL_2);
        if v2_next {
            self.tip_commit = Some(commit.clone());
            self.included_evidence.extend(
                block
                    .evidence
                    .iter()
                    .map(|e| (e.a.validator, e.a.vote.height)),
            );
            // The commit stored the set of height + 2: publish the next heights' sets
            // before the driver hears of the commit.
            match block_sets(self.store.as_ref(), height + 1) {
                Ok(sets) => {
                    self.sets_tx
                        .send_replace(Arc::new(KnownSets::from_block_sets(
                            height + 1,
                            sets.clone(),
                        )));
                    self.sets = Some(sets);
                    observe_staking_or_warn(
                        &self.metrics,
                        &self.genesis,
                        self.store.as_ref(),
                        height,
                    );
                }
                Err(e) => {
                    self.metrics.storage.report(
                        &format!("reading the validator sets after block {height}"),
                        &e,
                    );
                    self.halt(format!(
                        "cannot read the validator sets of heights {}..={} after committing \
                         block {height}: {e}: this node's own store failed; consensus stopped \
                         here; fix the disk, then restart tallyd",
                        height + 1,
                        height + 2
                    ));
                    return Err(());
                }
            }
        }
        self.metrics.height.set(height as i64);
        self.metrics.blocks_committed.inc();
        self.metrics.txs_committed.inc_by(ids.len() as u64);
        self.metrics.block_txs.observe(ids.len() as f64);
        if height > 1 {
            let dt = block.header.time_ms.saturating_sub(prev_time) as f64 / 1000.0;
            self.metrics.block_interval.observe(dt);
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
        self.executed.clear();
        self.awaiting.clear();
        let tip = self.tip;
        self.status.send_modify(|s| {
            s.height = tip.height;
            s.tip_hash = tip.block_hash;
            s.state_root = tip.state_root;
            s.last_block_at = Some(Instant::now());
        });
        self.signals
            .push_back((block.header.proposer, block.header.signal()));
        while self.signals.len() as u64 > self.genesis.params.upgrade_window {
            self.signals.pop_front();
        }
        self.check_protocol();
        Ok(())
    }

    /// Halts (and ends the host's task, which stops the node) if the next height runs a
    /// protocol this binary cannot: before the driver hears of the commit, so it never
    /// starts, proposes or votes on that height. Publishes the protocol and the upgrade
    /// under way to `/v1/status` and the metrics.
    fn check_protocol(&mut self) {
        self.observe_upgrade();
        let next = crate::upgrade::check_next_height(
            self.store.as_ref(),
            &self.genesis.params,
            self.tip.height,
            self.max_protocol,
        );
        match next {
            Ok(Ok(())) => {}
            Ok(Err(required)) => {
                self.halt(required.to_string());
                self.upgrade_required = Some(required);
            }
            Err(e) => {
                self.metrics
                    .storage
                    .report("reading the protocol schedule", &e);
                self.halt(format!(
                    "cannot read the protocol schedule after block {}: {e}",
                    self.tip.height
                ));
            }
        }
    }

    /// `/v1/status`'s `protocol` and `upgrade`, and the gauges `tally_protocol` and
    /// `tally_upgrade_readiness`: the recorded activation, or the readiness over the
    /// signal window.
    fn observe_upgrade(&mut self) {
        let params = &self.genesis.params;
        let schedule = match ProtocolSchedule::read(self.store.as_ref(), params) {
            Ok(s) => s,
            Err(e) => {
                self.metrics
                    .storage
                    .report("reading the protocol schedule", &e);
                return;
            }
        };
        let tip = self.tip.height;
        let protocol = schedule.at(tip);
        if let Ok(mut m) = self.mempool.lock() {
            m.set_protocol(schedule.at(tip + 1));
        }
        let (upgrade, readiness) = match schedule.pending(tip) {
            Some((next, from)) => (
                Some(tally_api::Upgrade {
                    next,
                    activation_height: Some(from),
                    readiness: None,
                    window: None,
                }),
                1.0,
            ),
            None if protocol < ledger::types::MAX_PROTOCOL => {
                let window: Vec<_> = self.signals.iter().copied().collect();
                let readiness = self.set_at(tip.max(1)).map_or(0.0, |set| {
                    ledger::upgrade::count(&set, protocol + 1, &window, params.upgrade_window)
                        .fraction()
                });
                (
                    Some(tally_api::Upgrade {
                        next: protocol + 1,
                        activation_height: None,
                        readiness: Some(readiness),
                        window: Some(params.upgrade_window),
                    }),
                    readiness,
                )
            }
            None => (None, 0.0),
        };
        self.metrics.protocol.set(i64::from(protocol));
        self.metrics.upgrade_readiness.set(readiness);
        self.status.send_modify(|s| {
            s.protocol = protocol;
            s.upgrade = upgrade;
        });
    }

    /// Why the host stopped the node, if the chain moved to a protocol this binary does
    /// not run.
    pub fn upgrade_required(&self) -> Option<&crate::upgrade::UpgradeRequired> {
        self.upgrade_required.as_ref()
    }

    /// Tests: pretend this binary runs protocols up to `max` only.
    #[cfg(test)]
    pub(crate) fn set_max_protocol(&mut self, max: u32) {
        self.max_protocol = max;
    }

    /// Candidate blocks held.
    #[cfg(test)]
    pub(crate) fn candidates(&self) -> usize {
        self.blocks.len()
    }

    /// Stops committing for good (until a restart) and tells the driver to stop signing.
    fn halt(&mut self, reason: String) {
        tracing::error!("{reason}");
        self.metrics.halted.set(1);
        self.status.send_modify(|s| s.halted = Some(reason));
        self.halted = true;
        self.tell_driver(DriverMsg::Halted);
    }

    fn expire_mempool(&self) {
        if self.halted {
            return;
        }
        if let Ok(mut m) = self.mempool.lock() {
            let expired = m.expire(Instant::now());
            self.mempool_metrics.evicted.inc_by(expired as u64);
            self.mempool_metrics.txs.set(m.len() as i64);
            self.mempool_metrics.bytes.set(m.bytes() as i64);
        }
    }
}

#[cfg(test)]
mod tests;
