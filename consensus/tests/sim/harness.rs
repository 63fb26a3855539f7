//! The deterministic simulator: N consensus cores, a seeded in-memory network, virtual
//! time, crashes with restarts from the persisted guard state, byzantine validators, and
//! the invariant checks. Everything random comes from one ChaCha RNG seeded by the run's
//! seed, and every collection iterated is ordered, so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use consensus::{
    Config, Consensus, GuardState, Input, K256Verifier, MemoryGuardStore, Output,
    SignatureVerifier, SigningGuard, Timeout, Timeouts,
};
use ledger::crypto::Keypair;
use ledger::hash::{sha256, Hash};
use ledger::types::{
    Address, Commit, Proposal, PublicKeyBytes, SignedProposal, SignedVote, Validator, Vote,
    VoteKind,
};
use ledger::validators::ValidatorSet;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

pub const CHAIN: &str = "tally-sim";

/// How a byzantine validator misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Honest,
    /// Never sends anything.
    Silent,
    /// Split-brain attacker: as proposer it sends one valid block to half of the honest
    /// nodes and another to the other half; whenever an honest node prevotes or
    /// precommits (a block or nil) it answers that node (only) with its own prevote and
    /// precommit for the same value. With `noise` it also sends its normal votes to everyone plus a
    /// conflicting one to a few (equivocation the others must detect).
    Equivocator {
        noise: bool,
    },
    /// Follows the protocol but proposes blocks that fail validation.
    InvalidProposer,
    /// Votes for random hashes or nil, sometimes two different votes at once.
    RandomVoter,
}

/// Which behaviour each byzantine validator gets.
#[derive(Clone, Debug)]
pub enum ByzMix {
    /// The same behaviour for all.
    All(Behaviour),
    /// Rotate over every kind of misbehaviour with the seed.
    Rotate,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub name: &'static str,
    pub powers: Vec<u64>,
    /// Indices of the byzantine validators.
    pub byzantine: Vec<usize>,
    pub mix: ByzMix,
    pub full_nodes: usize,
    pub real_signatures: bool,
    /// Network chaos (drops, duplicates, long delays, a partition, a crash) lasts until
    /// this virtual time: the global stabilisation time.
    pub gst_ms: u64,
    pub drop_prob: f64,
    pub dup_prob: f64,
    pub chaos_max_delay_ms: u64,
    pub stable_max_delay_ms: u64,
    /// Split the honest nodes into two sides for a random stretch before GST.
    pub partition: bool,
    /// Crash one honest validator before GST and restart it from its guard store.
    pub crash: bool,
    /// ...early, and restart it only at GST (it catches up across what it missed).
    pub crash_until_gst: bool,
    /// After GST every honest node must commit this many more heights...
    pub heights_after_gst: u64,
    /// ...each within this many rounds.
    pub max_rounds: u32,
    /// False for the negative control: we expect the checker to find a violation.
    pub expect_safe: bool,
    /// The validator set changes every `set_epoch` heights (issue 20): honest validators
    /// leave (unbond, jailed) and come back with other powers (bond), from a schedule of
    /// the seed; every node gets each height's set and the next one before it starts it,
    /// as the node's driver does. The byzantine power stays under a third of every set.
    pub set_changes: bool,
    /// Heights per set when `set_changes` is on (1: a new set every height).
    pub set_epoch: u64,
    /// Nodes are told each height's set (false only for the negative control).
    pub announce_sets: bool,
}

/// Heights with a scheduled set (later heights keep the last one).
const SET_HEIGHTS: u64 = 1_000;

impl SimConfig {
    pub fn base(name: &'static str, powers: Vec<u64>, byzantine: Vec<usize>) -> Self {
        Self {
            name,
            powers,
            byzantine,
            mix: ByzMix::Rotate,
            full_nodes: 0,
            real_signatures: false,
            gst_ms: 3_000,
            drop_prob: 0.15,
            dup_prob: 0.1,
            chaos_max_delay_ms: 250,
            stable_max_delay_ms: 30,
            partition: true,
            crash: true,
            crash_until_gst: false,
            heights_after_gst: 3,
            max_rounds: 8,
            expect_safe: true,
            set_changes: false,
            set_epoch: 2,
            announce_sets: true,
        }
    }
}

pub fn timeouts() -> Timeouts {
    Timeouts {
        propose_ms: 300,
        propose_delta_ms: 50,
        prevote_ms: 100,
        prevote_delta_ms: 50,
        precommit_ms: 100,
        precommit_delta_ms: 50,
    }
}

const TIMEOUT_COMMIT_MS: u64 = 20;
const GOSSIP_MS: u64 = 250;

// ----- signatures ------------------------------------------------------------------------

/// Real secp256k1, or a keyed hash that is ~1000x cheaper (forgery is not what the
/// simulator tests; byzantine nodes sign with their own keys).
#[derive(Clone, Copy, Debug)]
pub enum SimVerifier {
    Real,
    Fast,
}

fn fast_sig(pubkey: &PublicKeyBytes, bytes: &[u8]) -> [u8; 64] {
    let mut h = Sha256::new();
    h.update(b"SIM-SIG");
    h.update(pubkey);
    h.update(bytes);
    let d: [u8; 32] = h.finalize().into();
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&d);
    out
}

impl SignatureVerifier for SimVerifier {
    fn verify_vote(&self, vote: &SignedVote, pubkey: &PublicKeyBytes) -> bool {
        match self {
            SimVerifier::Real => K256Verifier.verify_vote(vote, pubkey),
            SimVerifier::Fast => {
                ledger::crypto::address_of(pubkey) == vote.validator
                    && fast_sig(pubkey, &vote.vote.signing_bytes()) == vote.signature
            }
        }
    }

    fn verify_proposal(&self, p: &SignedProposal, pubkey: &PublicKeyBytes) -> bool {
        match self {
            SimVerifier::Real => K256Verifier.verify_proposal(p, pubkey),
            SimVerifier::Fast => fast_sig(pubkey, &p.proposal.signing_bytes()) == p.signature,
        }
    }
}

struct Signer {
    key: Keypair,
    real: bool,
}

impl Signer {
    fn vote(&self, vote: Vote) -> SignedVote {
        if self.real {
            self.key.sign_vote(vote)
        } else {
            let signature = fast_sig(&self.key.public_key(), &vote.signing_bytes());
            SignedVote {
                vote,
                validator: self.key.address(),
                signature,
            }
        }
    }

    fn proposal(&self, proposal: Proposal) -> SignedProposal {
        if self.real {
            self.key.sign_proposal(proposal)
        } else {
            let signature = fast_sig(&self.key.public_key(), &proposal.signing_bytes());
            SignedProposal {
                proposal,
                signature,
            }
        }
    }
}

// ----- events ----------------------------------------------------------------------------

#[derive(Clone, Debug, borsh::BorshSerialize)]
enum Msg {
    Proposal(SignedProposal),
    Vote(SignedVote),
    Commit(Commit),
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        to: usize,
        msg: Msg,
    },
    Timeout {
        node: usize,
        life: u32,
        t: Timeout,
    },
    Validated {
        node: usize,
        life: u32,
        height: u64,
        hash: Hash,
    },
    Built {
        node: usize,
        life: u32,
        height: u64,
        round: u32,
    },
    StartHeight {
        node: usize,
        life: u32,
        height: u64,
    },
    Gossip {
        node: usize,
        life: u32,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
}

impl Event {
    fn tag(&self) -> (u8, usize) {
        match self {
            Event::Deliver { to, .. } => (0, *to),
            Event::Timeout { node, .. } => (1, *node),
            Event::Validated { node, .. } => (2, *node),
            Event::Built { node, .. } => (3, *node),
            Event::StartHeight { node, .. } => (4, *node),
            Event::Gossip { node, .. } => (5, *node),
            Event::Crash { node } => (6, *node),
            Event::Restart { node } => (7, *node),
        }
    }
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(o.time, o.seq))
    }
}

// ----- nodes -----------------------------------------------------------------------------

struct Node {
    signer: Signer,
    behaviour: Behaviour,
    core: Consensus<SimVerifier>,
    /// Honest validators only. Survives crashes (it is the node's disk).
    guard: Option<SigningGuard<MemoryGuardStore>>,
    alive: bool,
    /// Bumped at each restart: events of an earlier life are discarded.
    life: u32,
    /// The node's ledger: survives crashes.
    decided: BTreeMap<u64, Hash>,
    commits: BTreeMap<u64, Commit>,
    /// Virtual time at which the current height started (for the rounds bound).
    started_at: u64,
    /// Equivocator bookkeeping: (target node, height, round, kind) already echoed.
    echoed: BTreeSet<(usize, u64, u32, VoteKind)>,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub safety_violations: Vec<String>,
    pub liveness_failure: Option<String>,
    pub trace: Hash,
    pub events: u64,
    pub min_height: u64,
    pub max_round_after_gst: u32,
    pub evidence: usize,
    /// Largest encoded guard state a restarted validator loaded.
    pub restart_guard_bytes: usize,
    /// With set changes: the most set switches between a restarted node's height and the
    /// highest honest height when it came back (what it had to catch up across).
    pub restart_set_switches: u64,
}

impl Report {
    pub fn failure(&self) -> Option<String> {
        if !self.safety_violations.is_empty() {
            return Some(format!("safety: {}", self.safety_violations.join("; ")));
        }
        self.liveness_failure
            .clone()
            .map(|l| format!("liveness: {l}"))
    }
}

pub struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    /// The set of each height (index 0: height 1); one entry when the set never changes.
    sets: Vec<ValidatorSet>,
    /// Harness truth: block hash -> passes validation. Unknown hashes are invalid.
    blocks: BTreeMap<Hash, bool>,
    block_counter: u64,
    /// Honest side assignment for partitions and split-brain attacks.
    side: Vec<u8>,
    partition: Option<(u64, u64)>,
    // invariant state
    decisions: BTreeMap<u64, (Hash, usize)>,
    honest_signed: BTreeMap<(usize, u64, u32, u8), Option<Hash>>,
    report: Report,
    trace: Sha256,
    verbose: bool,
}

impl Sim {
    pub fn new(cfg: SimConfig, seed: u64, verbose: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_val = cfg.powers.len();
        let total = n_val + cfg.full_nodes;
        let keys: Vec<Keypair> = (0..total)
            .map(|i| {
                Keypair::from_secret_bytes(&sha256(format!("sim-key-{i}").as_bytes()))
                    .expect("a hash is a valid secret key with overwhelming probability")
            })
            .collect();
        let set = ValidatorSet::new(
            keys[..n_val]
                .iter()
                .zip(&cfg.powers)
                .map(|(k, p)| Validator {
                    address: k.address(),
                    pubkey: k.public_key(),
                    power: *p,
                })
                .collect(),
        )
        .expect("valid validator set");
        let sets = if cfg.set_changes {
            set_schedule(&cfg, &keys[..n_val], seed)
        } else {
            vec![set.clone()]
        };
        let kinds = [
            Behaviour::Silent,
            Behaviour::Equivocator { noise: true },
            Behaviour::InvalidProposer,
            Behaviour::RandomVoter,
        ];
        let verifier = if cfg.real_signatures {
            SimVerifier::Real
        } else {
            SimVerifier::Fast
        };
        let mut nodes = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let validator = i < n_val;
            let behaviour = match cfg.byzantine.iter().position(|b| *b == i) {
                None => Behaviour::Honest,
                Some(k) => match &cfg.mix {
                    ByzMix::All(b) => *b,
                    ByzMix::Rotate => kinds[(seed as usize + k) % kinds.len()],
                },
            };
            let core = Consensus::with_verifier(
                Config {
                    chain_id: CHAIN.into(),
                    validators: set.clone(),
                    address: validator.then(|| key.address()),
                    timeouts: timeouts(),
                },
                verifier,
            );
            let guard = (validator && behaviour == Behaviour::Honest).then(|| {
                SigningGuard::open(MemoryGuardStore::default()).expect("empty store loads")
            });
            nodes.push(Node {
                signer: Signer {
                    key,
                    real: cfg.real_signatures,
                },

                behaviour,
                core,
                guard,
                alive: behaviour != Behaviour::Silent,
                life: 0,
                decided: BTreeMap::new(),
                commits: BTreeMap::new(),
                started_at: 0,
                echoed: BTreeSet::new(),
            });
        }
        // Honest nodes alternate between the two sides.
        let mut side = vec![2u8; total];
        let mut k = 0u8;
        for (i, s) in side.iter_mut().enumerate() {
            if nodes[i].behaviour == Behaviour::Honest {
                *s = k % 2;
                k += 1;
            }
        }
        let partition = cfg.partition.then(|| {
            let start = rng.gen_range(0..cfg.gst_ms / 2);
            let end = rng.gen_range(start + 200..cfg.gst_ms);
            (start, end)
        });
        let mut sim = Self {
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            sets,
            blocks: BTreeMap::new(),
            block_counter: 0,
            side,
            partition,
            decisions: BTreeMap::new(),
            honest_signed: BTreeMap::new(),
            report: Report::default(),
            trace: Sha256::new(),
            verbose,
        };
        for i in 0..total {
            sim.at(
                0,
                Event::StartHeight {
                    node: i,
                    life: 0,
                    height: 1,
                },
            );
            let jitter = sim.rng.gen_range(0..GOSSIP_MS);
            sim.at(jitter, Event::Gossip { node: i, life: 0 });
        }
        if sim.cfg.crash {
            let honest: Vec<usize> = (0..n_val)
                .filter(|i| sim.nodes[*i].behaviour == Behaviour::Honest)
                .collect();
            let victim = honest[sim.rng.gen_range(0..honest.len())];
            let (down, up) = if sim.cfg.crash_until_gst {
                (sim.rng.gen_range(100..sim.cfg.gst_ms / 4), sim.cfg.gst_ms)
            } else {
                let down = sim.rng.gen_range(100..sim.cfg.gst_ms - 500);
                (down, sim.rng.gen_range(down + 50..sim.cfg.gst_ms))
            };
            sim.at(down, Event::Crash { node: victim });
            sim.at(up, Event::Restart { node: victim });
        }
        sim
    }

    fn at(&mut self, time: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            time,
            seq: self.seq,
            event,
        }));
    }

    fn after(&mut self, delay: u64, event: Event) {
        self.at(self.now + delay, event);
    }

    fn honest(&self, i: usize) -> bool {
        self.nodes[i].behaviour == Behaviour::Honest
    }

    // ----- network ---------------------------------------------------------------------

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to {
            // Own messages are fed back at once (the engine does this locally).
            self.after(0, Event::Deliver { to, msg });
            return;
        }
        if self.now < self.cfg.gst_ms {
            if let Some((start, end)) = self.partition {
                let (a, b) = (self.side[from], self.side[to]);
                if (start..end).contains(&self.now) && a != 2 && b != 2 && a != b {
                    return;
                }
            }
            if self.rng.gen_bool(self.cfg.drop_prob) {
                return;
            }
            let copies = if self.rng.gen_bool(self.cfg.dup_prob) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let d = self.rng.gen_range(1..=self.cfg.chaos_max_delay_ms);
                self.after(
                    d,
                    Event::Deliver {
                        to,
                        msg: msg.clone(),
                    },
                );
            }
        } else {
            let d = self.rng.gen_range(1..=self.cfg.stable_max_delay_ms);
            self.after(d, Event::Deliver { to, msg });
        }
    }

    fn broadcast(&mut self, from: usize, msg: Msg) {
        for to in 0..self.nodes.len() {
            self.send(from, to, msg.clone());
        }
    }

    fn new_block(&mut self, valid: bool) -> Hash {
        self.block_counter += 1;
        let h = sha256(format!("block-{}-{valid}", self.block_counter).as_bytes());
        self.blocks.insert(h, valid);
        h
    }

    // ----- the run -----------------------------------------------------------------------

    pub fn run(mut self) -> Report {
        let n_val = self.cfg.powers.len();
        let budget = {
            let t = timeouts();
            let per_round: u64 = (0..self.cfg.max_rounds)
                .map(|r| {
                    t.duration_ms(consensus::TimeoutStep::Propose, r)
                        + t.duration_ms(consensus::TimeoutStep::Prevote, r)
                        + t.duration_ms(consensus::TimeoutStep::Precommit, r)
                        + 6 * self.cfg.stable_max_delay_ms
                })
                .sum();
            per_round + TIMEOUT_COMMIT_MS + GOSSIP_MS
        };
        let mut gst_height: Option<u64> = None;
        let mut target = u64::MAX;
        let mut deadline = u64::MAX;
        while let Some(Reverse(s)) = self.queue.pop() {
            self.now = s.time;
            if gst_height.is_none() && self.now >= self.cfg.gst_ms {
                let h = self.max_honest_height();
                gst_height = Some(h);
                target = h + self.cfg.heights_after_gst;
                deadline = self.cfg.gst_ms + self.cfg.heights_after_gst * budget + 1_000;
            }
            if self.now > deadline {
                break;
            }
            let (tag, node) = s.event.tag();
            self.trace.update(s.time.to_le_bytes());
            self.trace.update([tag]);
            self.trace.update((node as u64).to_le_bytes());
            if let Event::Deliver { msg, .. } = &s.event {
                self.trace
                    .update(borsh::to_vec(msg).expect("borsh into a Vec cannot fail"));
            }
            self.report.events += 1;
            self.step(s.event);
            if !self.report.safety_violations.is_empty() && !self.cfg.expect_safe {
                break; // the negative control found what it looks for
            }
            if gst_height.is_some() && self.min_honest_height() >= target {
                break;
            }
        }
        self.report.min_height = self.min_honest_height();
        if self.report.safety_violations.is_empty() && self.report.min_height < target {
            self.report.liveness_failure = Some(format!(
                "after GST at height {:?} honest nodes reached only height {} of {} by t={}ms \
                 ({} rounds per height allowed)",
                gst_height, self.report.min_height, target, self.now, self.cfg.max_rounds
            ));
        }
        if self.report.max_round_after_gst >= self.cfg.max_rounds {
            self.report.liveness_failure.get_or_insert(format!(
                "a height after GST needed round {} (bound {})",
                self.report.max_round_after_gst, self.cfg.max_rounds
            ));
        }
        let _ = n_val;
        self.report.trace = self.trace.clone().finalize().into();
        self.report
    }

    /// Highest decided height of each honest node (validators and full nodes).
    fn honest_heights(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.nodes.len()).filter(|i| self.honest(*i)).map(|i| {
            self.nodes[i]
                .decided
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0)
        })
    }

    /// Lowest decided height over the honest nodes.
    fn min_honest_height(&self) -> u64 {
        self.honest_heights().min().unwrap_or(0)
    }

    fn max_honest_height(&self) -> u64 {
        self.honest_heights().max().unwrap_or(0)
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { to, msg } => {
                if !self.nodes[to].alive {
                    return;
                }
                if let Behaviour::Equivocator { .. } = self.nodes[to].behaviour {
                    self.echo(to, &msg);
                }
                let input = match msg {
                    Msg::Proposal(p) => Input::Proposal(p),
                    Msg::Vote(v) => Input::Vote(v),
                    Msg::Commit(c) => Input::Commit(c),
                };
                self.input(to, input);
            }
            Event::Timeout { node, life, t } => {
                if self.live(node, life) {
                    self.input(node, Input::Timeout(t));
                }
            }
            Event::Validated {
                node,
                life,
                height,
                hash,
            } => {
                if self.live(node, life) {
                    let valid = self.blocks.get(&hash).copied().unwrap_or(false);
                    self.input(
                        node,
                        Input::BlockValidated {
                            height,
                            block_hash: hash,
                            valid,
                        },
                    );
                }
            }
            Event::Built {
                node,
                life,
                height,
                round,
            } => {
                if self.live(node, life) {
                    let valid = self.nodes[node].behaviour != Behaviour::InvalidProposer;
                    let block_hash = self.new_block(valid);
                    self.input(
                        node,
                        Input::ProposalBuilt {
                            height,
                            round,
                            block_hash,
                        },
                    );
                }
            }
            Event::StartHeight { node, life, height } => {
                if self.live(node, life) {
                    self.nodes[node].started_at = self.now;
                    if self.cfg.set_changes && self.cfg.announce_sets {
                        let (current, next) =
                            (self.set(height).clone(), self.set(height + 1).clone());
                        self.input(
                            node,
                            Input::ValidatorSets {
                                height,
                                current,
                                next,
                            },
                        );
                    }
                    self.input(node, Input::StartHeight { height });
                }
            }
            Event::Gossip { node, life } => {
                if !self.live(node, life) {
                    return;
                }
                // Status exchange plus sync, folded into gossip: a peer still at a height
                // we decided gets our commit for it.
                for to in 0..self.nodes.len() {
                    let behind = self.nodes[to].core.height();
                    if let Some(c) = self.nodes[node].commits.get(&behind).cloned() {
                        self.send(node, to, Msg::Commit(c));
                    }
                }
                // Relay (honest nodes only): each peer at our height gets the proposals
                // and votes we hold that it lacks, for its round and later, plus non-nil
                // prevotes of earlier rounds (possible proofs of lock). This is what
                // Tendermint's per-peer round state gossip does, and what its liveness
                // assumes: a message one correct node got eventually reaches all.
                if self.honest(node) {
                    self.relay(node);
                }
                self.after(GOSSIP_MS, Event::Gossip { node, life });
            }
            Event::Crash { node } => {
                self.nodes[node].alive = false;
            }
            Event::Restart { node } => self.restart(node),
        }
    }

    fn relay(&mut self, node: usize) {
        let mut sends = Vec::new();
        let me = &self.nodes[node].core;
        for (to, peer) in self.nodes.iter().enumerate() {
            if to == node || !peer.alive || peer.core.height() != me.height() {
                continue;
            }
            let peer_round = peer.core.round();
            for r in me.vote_rounds() {
                if r >= peer_round {
                    if let Some(p) = me.proposal(r) {
                        if peer.core.proposal(r).is_none() {
                            sends.push((to, Msg::Proposal(p.clone())));
                        }
                    }
                }
                for v in me.votes(r) {
                    let pol = v.vote.kind == VoteKind::Prevote && v.vote.block_hash.is_some();
                    if (r >= peer_round || pol) && !peer.core.has_vote(v) {
                        sends.push((to, Msg::Vote(v.clone())));
                    }
                }
            }
        }
        for (to, m) in sends {
            self.send(node, to, m);
        }
    }

    fn live(&self, node: usize, life: u32) -> bool {
        self.nodes[node].alive && self.nodes[node].life == life
    }

    /// A crashed node comes back with only its disk: the decided blocks and the guard
    /// store. The core is rebuilt and resumed from the guard state.
    fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.life += 1;
        n.alive = true;
        let store = n
            .guard
            .take()
            .map(SigningGuard::into_store)
            .unwrap_or_default();
        let guard = SigningGuard::open(store).expect("memory store loads");
        let state: GuardState = guard.state().clone();
        self.report.restart_guard_bytes = self.report.restart_guard_bytes.max(state.encoded_len());
        n.guard = Some(guard);
        let cfg = n.core.config().clone();
        let verifier = if self.cfg.real_signatures {
            SimVerifier::Real
        } else {
            SimVerifier::Fast
        };
        n.core = Consensus::with_verifier(cfg, verifier);
        n.core.resume(&state);
        let height = n.decided.keys().next_back().copied().unwrap_or(0) + 1;
        let life = n.life;
        if self.cfg.set_changes {
            let top = self.max_honest_height();
            let switches = (height..=top)
                .filter(|h| self.set(*h) != self.set(h + 1))
                .count() as u64;
            self.report.restart_set_switches = self.report.restart_set_switches.max(switches);
        }
        self.after(
            0,
            Event::StartHeight {
                node: i,
                life,
                height,
            },
        );
        self.after(GOSSIP_MS, Event::Gossip { node: i, life });
    }

    fn input(&mut self, i: usize, input: Input) {
        if self.verbose {
            eprintln!("t={} n{} <- {}", self.now, i, short_input(&input));
        }
        let outputs = self.nodes[i].core.handle(input);
        for o in outputs {
            if self.verbose {
                eprintln!("t={} n{} -> {}", self.now, i, short_output(&o));
            }
            self.output(i, o);
        }
    }

    fn output(&mut self, i: usize, o: Output) {
        let life = self.nodes[i].life;
        match o {
            Output::RoundChanged { .. } => {}
            Output::BuildProposal { height, round } => {
                if let Behaviour::Equivocator { .. } = self.nodes[i].behaviour {
                    self.split_proposal(i, height, round);
                } else {
                    let d = self.rng.gen_range(1..20);
                    self.after(
                        d,
                        Event::Built {
                            node: i,
                            life,
                            height,
                            round,
                        },
                    );
                }
            }
            Output::Propose(p) => self.sign_and_send_proposal(i, p),
            Output::Vote(v) => self.sign_and_send_vote(i, v),
            Output::ValidateBlock {
                height, block_hash, ..
            } => {
                let d = self.rng.gen_range(1..15);
                self.after(
                    d,
                    Event::Validated {
                        node: i,
                        life,
                        height,
                        hash: block_hash,
                    },
                );
            }
            Output::ScheduleTimeout {
                timeout,
                duration_ms,
            } => self.after(
                duration_ms,
                Event::Timeout {
                    node: i,
                    life,
                    t: timeout,
                },
            ),
            Output::Decide {
                height,
                round,
                block_hash,
                commit,
            } => self.on_decide(i, height, round, block_hash, commit),
            Output::Evidence(e) => {
                self.report.evidence += 1;
                let culprit = self
                    .nodes
                    .iter()
                    .position(|n| n.signer.key.address() == e.first.validator);
                let genuine = e.first.validator == e.second.validator
                    && e.first.vote.height == e.second.vote.height
                    && e.first.vote.round == e.second.vote.round
                    && e.first.vote.kind == e.second.vote.kind
                    && e.first.vote.block_hash != e.second.vote.block_hash;
                if !genuine || culprit.is_some_and(|c| self.honest(c)) {
                    self.violation(format!(
                        "node {i} produced evidence against {culprit:?}: {e:?}"
                    ));
                }
            }
        }
    }

    fn violation(&mut self, what: String) {
        if self.verbose {
            eprintln!("t={} VIOLATION {what}", self.now);
        }
        self.report.safety_violations.push(what);
    }

    fn on_decide(&mut self, i: usize, height: u64, round: u32, hash: Hash, commit: Commit) {
        let honest = self.honest(i);
        if honest {
            // Validity: only blocks that pass validation are decided.
            if self.blocks.get(&hash) != Some(&true) {
                self.violation(format!(
                    "node {i} decided invalid block {} at height {height}",
                    hex(&hash)
                ));
            }
            // Agreement, across all honest nodes, ever.
            match self.decisions.get(&height) {
                Some((other, j)) if *other != hash => {
                    let msg = format!(
                        "agreement: node {i} decided {} and node {j} decided {} at height {height}",
                        hex(&hash),
                        hex(other)
                    );
                    self.violation(msg);
                }
                Some(_) => {}
                None => {
                    self.decisions.insert(height, (hash, i));
                }
            }
            // The commit must convince anyone else.
            if let Err(e) = self.check_commit(height, &hash, &commit) {
                self.violation(format!("node {i} commit for height {height}: {e}"));
            }
            if self.nodes[i].started_at >= self.cfg.gst_ms {
                self.report.max_round_after_gst = self.report.max_round_after_gst.max(round);
            }
        }
        let n = &mut self.nodes[i];
        n.decided.insert(height, hash);
        n.commits.insert(height, commit);
        let life = n.life;
        self.after(
            TIMEOUT_COMMIT_MS,
            Event::StartHeight {
                node: i,
                life,
                height: height + 1,
            },
        );
    }

    /// The validator set of `height`.
    fn set(&self, height: u64) -> &ValidatorSet {
        let i = usize::try_from(height.saturating_sub(1)).unwrap_or(usize::MAX);
        self.sets
            .get(i)
            .or(self.sets.last())
            .expect("at least one set")
    }

    fn check_commit(&self, height: u64, hash: &Hash, commit: &Commit) -> Result<(), String> {
        let set = self.set(height);
        if self.cfg.real_signatures {
            return set
                .verify_commit(CHAIN, height, hash, commit)
                .map_err(|e| e.to_string());
        }
        if commit.height != height || &commit.block_hash != hash {
            return Err("wrong height or block".into());
        }
        if !commit
            .signatures
            .windows(2)
            .all(|w| w[0].validator < w[1].validator)
        {
            return Err("not sorted / duplicate".into());
        }
        let mut power = 0;
        for s in &commit.signatures {
            let v = set.get(&s.validator).ok_or("unknown validator")?;
            let vote = Vote {
                chain_id: CHAIN.into(),
                height,
                round: commit.round,
                kind: VoteKind::Precommit,
                block_hash: Some(*hash),
            };
            if fast_sig(&v.pubkey, &vote.signing_bytes()) != s.signature {
                return Err("bad signature".into());
            }
            power += v.power;
        }
        if !set.is_quorum(power) {
            return Err(format!("only {power} power"));
        }
        Ok(())
    }

    // ----- signing -----------------------------------------------------------------------

    fn sign_and_send_vote(&mut self, i: usize, vote: Vote) {
        match self.nodes[i].behaviour {
            Behaviour::Honest => {
                let locks = self.nodes[i].core.locks();
                let guard = self.nodes[i]
                    .guard
                    .as_mut()
                    .expect("honest validators have a guard");
                if let Err(e) = guard.authorize_vote(&vote, locks) {
                    // The guard is the backstop; a correct core never needs it.
                    self.violation(format!(
                        "honest node {i}'s core asked to sign {vote:?}: {e}"
                    ));
                    return;
                }
                let step = match vote.kind {
                    VoteKind::Prevote => 1,
                    VoteKind::Precommit => 2,
                };
                let key = (i, vote.height, vote.round, step);
                if let Some(prev) = self.honest_signed.insert(key, vote.block_hash) {
                    if prev != vote.block_hash {
                        self.violation(format!("honest node {i} signed conflicting votes {key:?}"));
                    }
                }
                let sv = self.nodes[i].signer.vote(vote);
                self.broadcast(i, Msg::Vote(sv));
            }
            Behaviour::Silent => {}
            Behaviour::InvalidProposer => {
                let sv = self.nodes[i].signer.vote(vote);
                self.broadcast(i, Msg::Vote(sv));
            }
            Behaviour::RandomVoter => {
                let mut v = vote.clone();
                v.block_hash = self.random_value(vote.block_hash);
                let sv = self.nodes[i].signer.vote(v);
                self.broadcast(i, Msg::Vote(sv));
                if self.rng.gen_bool(0.5) {
                    let mut w = vote;
                    w.block_hash = self.random_value(None);
                    let sw = self.nodes[i].signer.vote(w);
                    self.send_to_some(i, Msg::Vote(sw));
                }
            }
            Behaviour::Equivocator { noise } => {
                if noise {
                    let sv = self.nodes[i].signer.vote(vote.clone());
                    self.broadcast(i, Msg::Vote(sv));
                    let mut w = vote;
                    w.block_hash = Some(self.new_block(true));
                    let sw = self.nodes[i].signer.vote(w);
                    self.send_to_some(i, Msg::Vote(sw));
                }
            }
        }
    }

    fn sign_and_send_proposal(&mut self, i: usize, p: Proposal) {
        match self.nodes[i].behaviour {
            Behaviour::Honest => {
                let locks = self.nodes[i].core.locks();
                let guard = self.nodes[i]
                    .guard
                    .as_mut()
                    .expect("honest validators have a guard");
                if let Err(e) = guard.authorize_proposal(&p, locks) {
                    self.violation(format!("honest node {i}'s core asked to sign {p:?}: {e}"));
                    return;
                }
                let key = (i, p.height, p.round, 0);
                if let Some(prev) = self.honest_signed.insert(key, Some(p.block_hash)) {
                    if prev != Some(p.block_hash) {
                        self.violation(format!(
                            "honest node {i} signed conflicting proposals {key:?}"
                        ));
                    }
                }
                let sp = self.nodes[i].signer.proposal(p);
                self.broadcast(i, Msg::Proposal(sp));
            }
            Behaviour::Silent => {}
            Behaviour::Equivocator { .. } => self.split_proposal(i, p.height, p.round),
            Behaviour::InvalidProposer | Behaviour::RandomVoter => {
                let sp = self.nodes[i].signer.proposal(p);
                self.broadcast(i, Msg::Proposal(sp));
            }
        }
    }

    /// The split-brain proposer: block X to side 0, block Y to side 1.
    fn split_proposal(&mut self, i: usize, height: u64, round: u32) {
        let x = self.new_block(true);
        let y = self.new_block(true);
        for to in 0..self.nodes.len() {
            let hash = if self.side[to] == 1 { y } else { x };
            let sp = self.nodes[i].signer.proposal(Proposal {
                chain_id: CHAIN.into(),
                height,
                round,
                pol_round: None,
                block_hash: hash,
            });
            self.send(i, to, Msg::Proposal(sp));
        }
    }

    /// The split-brain voter: whatever block an honest node votes for, tell that node
    /// (only) that we prevote and precommit it too.
    fn echo(&mut self, byz: usize, msg: &Msg) {
        let Msg::Vote(sv) = msg else { return };
        let value = sv.vote.block_hash;
        let Some(from) = self
            .nodes
            .iter()
            .position(|n| n.signer.key.address() == sv.validator)
        else {
            return;
        };
        if !self.honest(from) {
            return;
        }
        for kind in [VoteKind::Prevote, VoteKind::Precommit] {
            let key = (from, sv.vote.height, sv.vote.round, kind);
            if !self.nodes[byz].echoed.insert(key) {
                continue;
            }
            let v = self.nodes[byz].signer.vote(Vote {
                chain_id: CHAIN.into(),
                height: sv.vote.height,
                round: sv.vote.round,
                kind,
                block_hash: value,
            });
            self.send(byz, from, Msg::Vote(v));
        }
    }

    fn random_value(&mut self, honest: Option<Hash>) -> Option<Hash> {
        match self.rng.gen_range(0..3) {
            0 => None,
            1 => Some(sha256(&self.rng.gen::<[u8; 32]>())),
            _ => honest,
        }
    }

    fn send_to_some(&mut self, from: usize, msg: Msg) {
        for to in 0..self.nodes.len() {
            if to != from && self.rng.gen_bool(0.5) {
                self.send(from, to, msg.clone());
            }
        }
    }
}

fn hex(h: &Hash) -> String {
    ledger::hash::to_hex(&h[..4])
}

fn short_value(v: &Option<Hash>) -> String {
    v.as_ref().map_or("nil".into(), hex)
}

fn short_input(i: &Input) -> String {
    match i {
        Input::Vote(v) => format!(
            "{:?} h{} r{} {} from {}",
            v.vote.kind,
            v.vote.height,
            v.vote.round,
            short_value(&v.vote.block_hash),
            ledger::hash::to_hex(&v.validator[..3])
        ),
        Input::Proposal(p) => format!(
            "Proposal h{} r{} pol {:?} {}",
            p.proposal.height,
            p.proposal.round,
            p.proposal.pol_round,
            hex(&p.proposal.block_hash)
        ),
        Input::Commit(c) => format!("Commit h{} r{} {}", c.height, c.round, hex(&c.block_hash)),
        other => format!("{other:?}"),
    }
}

fn short_output(o: &Output) -> String {
    match o {
        Output::Vote(v) => format!(
            "{:?} h{} r{} {}",
            v.kind,
            v.height,
            v.round,
            short_value(&v.block_hash)
        ),
        Output::Decide {
            height,
            round,
            block_hash,
            ..
        } => format!("DECIDE h{height} r{round} {}", hex(block_hash)),
        Output::Evidence(e) => format!(
            "Evidence against {}",
            ledger::hash::to_hex(&e.first.validator[..3])
        ),
        other => format!("{other:?}"),
    }
}

/// The sets of heights 1..=[`SET_HEIGHTS`] for a run with set changes: the genesis set for
/// the first epoch, then per epoch each honest validator is out (unbonded or jailed) with
/// probability 1/4, else in with its genesis power times 1..=3 (bonded more or less);
/// byzantine validators stay with their genesis power. A draw that would give the
/// byzantine validators a third of the power or more, or leave fewer than 4 validators, is
/// replaced by every validator at three times its power. A separate generator per epoch:
/// the run's own random stream (and so every existing trace) is untouched.
fn set_schedule(cfg: &SimConfig, keys: &[Keypair], seed: u64) -> Vec<ValidatorSet> {
    let build = |powers: &[u64]| {
        ValidatorSet::new(
            keys.iter()
                .zip(powers)
                .filter(|(_, p)| **p > 0)
                .map(|(k, p)| Validator {
                    address: k.address(),
                    pubkey: k.public_key(),
                    power: *p,
                })
                .collect(),
        )
        .expect("valid validator set")
    };
    let byz = |i: usize| cfg.byzantine.contains(&i);
    let mut sets = Vec::new();
    for height in 1..=SET_HEIGHTS {
        let epoch = (height - 1) / cfg.set_epoch.max(1);
        if epoch == 0 {
            sets.push(build(&cfg.powers));
            continue;
        }
        if (height - 1) % cfg.set_epoch.max(1) != 0 {
            let last = sets
                .last()
                .expect("the epoch's first height pushed one")
                .clone();
            sets.push(last);
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005e_7c4a_96e5 ^ epoch.rotate_left(17));
        let mut powers: Vec<u64> = (0..keys.len())
            .map(|i| {
                if byz(i) {
                    cfg.powers[i]
                } else if rng.gen_bool(0.25) {
                    0
                } else {
                    cfg.powers[i] * rng.gen_range(1..=3)
                }
            })
            .collect();
        let byz_power: u64 = (0..keys.len()).filter(|i| byz(*i)).map(|i| powers[i]).sum();
        let total: u64 = powers.iter().sum();
        let members = powers.iter().filter(|p| **p > 0).count();
        if byz_power * 3 >= total || members < 4 {
            powers = (0..keys.len())
                .map(|i| {
                    if byz(i) {
                        cfg.powers[i]
                    } else {
                        cfg.powers[i] * 3
                    }
                })
                .collect();
        }
        sets.push(build(&powers));
    }
    sets
}

/// Address of simulated node `i` (for tests that want to name one).
#[allow(dead_code)]
pub fn address_of_node(i: usize) -> Address {
    Keypair::from_secret_bytes(&sha256(format!("sim-key-{i}").as_bytes()))
        .expect("valid key")
        .address()
}
