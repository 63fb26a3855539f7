//! The Tendermint state machine: Algorithm 1 of "The latest gossip on BFT consensus"
//! (Buchman, Kwon, Milosevic 2018). Line numbers in comments refer to that algorithm.
//!
//! Every input is first recorded (proposal, vote, validation result), then the `upon`
//! rules of Algorithm 1 are re-checked until none fires (`apply_rules`); an
//! `upon` rule's condition can become true through any of several inputs, and checking
//! them all after every input is the simplest way not to miss one.

use std::collections::{BTreeMap, BTreeSet};

use ledger::hash::Hash;
use ledger::types::{
    Address, Commit, CommitSig, Proposal, SignedProposal, SignedVote, Vote, VoteKind,
};

use crate::guard::{GuardState, LastSigned, SignStep};
use crate::types::{
    Config, Equivocation, Input, Locks, Output, RoundValue, Step, Timeout, TimeoutStep,
};
use crate::verify::{K256Verifier, SignatureVerifier};
use crate::votes::{Added, RoundVotes};
use ledger::validators::ValidatorSet;

/// Votes and proposals are accepted for at most this many rounds ahead of ours: enough
/// for line 55 to pull us forward, and a byzantine validator cannot make us store votes
/// for millions of rounds.
pub const FUTURE_ROUNDS: u32 = 16;

/// Messages for the next height kept until we get there; beyond this they are dropped
/// (gossip or the peers' commit will bring them again).
pub const MAX_BUFFERED: usize = 4096;

/// Next-height messages kept per validator: a proposal and two votes for each round it
/// could be heard in when the height starts (0..=FUTURE_ROUNDS). One validator can never
/// fill the buffer and crowd out the others' early messages.
pub const MAX_BUFFERED_PER_VALIDATOR: usize = 3 * (FUTURE_ROUNDS as usize + 1);

/// A validator we heard nothing from (no proposal, no vote, no commit signature) for this
/// many heights in a row counts as absent, as does one whose last turn to propose ended in
/// our propose timeout without its proposal (until we accept one from it): when it is a
/// round's proposer we wait only `timeout_propose / ABSENT_PROPOSE_DIVISOR` for its
/// proposal. A live validator signs two
/// votes every height, so one missed height can be a late message; two in a row is a node
/// that is down, cut off or frozen. Timeouts are a local choice in Tendermint (safety never
/// depends on them), so a wrong guess costs at most that round.
pub const ABSENT_AFTER_HEIGHTS: u32 = 2;

/// See [`ABSENT_AFTER_HEIGHTS`].
pub const ABSENT_PROPOSE_DIVISOR: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Validity {
    Pending,
    Valid,
    Invalid,
}

/// One node's consensus core. Pure: no I/O, no clock, no randomness.
#[derive(Debug)]
pub struct Consensus<V: SignatureVerifier = K256Verifier> {
    cfg: Config,
    verifier: V,
    /// The validator set of `height`, and of `height + 1` (for messages buffered ahead).
    set: ValidatorSet,
    next_set: ValidatorSet,
    /// Sets announced for a height not started yet ([`Input::ValidatorSets`]).
    pending_sets: Option<(u64, ValidatorSet, ValidatorSet)>,

    height: u64,
    round: u32,
    step: Step,
    locked: Option<RoundValue>,
    valid: Option<RoundValue>,
    valid_pol: Vec<SignedVote>,
    decision: Option<Hash>,

    /// First correctly signed proposal of each round from that round's proposer.
    proposals: BTreeMap<u32, SignedProposal>,
    votes: BTreeMap<u32, RoundVotes>,
    validity: BTreeMap<Hash, Validity>,
    /// Rounds in which the "for the first time" rules fired (lines 34, 36, 47).
    fired_prevote_timeout: Option<u32>,
    fired_line36: Option<u32>,
    fired_precommit_timeout: Option<u32>,

    /// Proposals and votes for `height + 1`, replayed at its `StartHeight`, and how many
    /// each validator has there.
    next_height: Vec<Input>,
    next_height_per: BTreeMap<ledger::types::Address, usize>,
    /// Guard state to resume from at the matching `StartHeight`.
    resume: Option<GuardState>,

    /// Validators whose signed message (proposal, vote, commit signature) of the current
    /// height we verified.
    heard: BTreeSet<Address>,
    /// Per validator: heights in a row (up to the previous one) with nothing heard from it.
    silent: BTreeMap<Address, u32>,
    /// Validators whose last turn to propose ended in our propose timeout without a
    /// proposal from them (until we accept one): a validator that votes but does not
    /// propose (byzantine, or a broken block builder) is as absent for its turns.
    missed_turn: BTreeSet<Address>,
}

impl Consensus<K256Verifier> {
    pub fn new(cfg: Config) -> Self {
        Self::with_verifier(cfg, K256Verifier)
    }
}

impl<V: SignatureVerifier> Consensus<V> {
    pub fn with_verifier(cfg: Config, verifier: V) -> Self {
        Self {
            set: cfg.validators.clone(),
            next_set: cfg.validators.clone(),
            pending_sets: None,
            cfg,
            verifier,
            height: 0,
            round: 0,
            step: Step::Idle,
            locked: None,
            valid: None,
            valid_pol: Vec::new(),
            decision: None,
            proposals: BTreeMap::new(),
            votes: BTreeMap::new(),
            validity: BTreeMap::new(),
            fired_prevote_timeout: None,
            fired_line36: None,
            fired_precommit_timeout: None,
            next_height: Vec::new(),
            next_height_per: BTreeMap::new(),
            resume: None,
            heard: BTreeSet::new(),
            silent: BTreeMap::new(),
            missed_turn: BTreeSet::new(),
        }
    }

    /// After a restart: hand in the signing guard's persisted state before the first
    /// `StartHeight`. If that height is the one we last signed in, the lock and valid value
    /// (with its proof of lock) are restored and we re-enter the last round we signed in,
    /// at the step we signed, re-emitting the identical votes we signed at that height (so
    /// the core never asks the guard for a conflicting signature).
    pub fn resume(&mut self, state: &GuardState) {
        self.resume = Some(state.clone());
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn height(&self) -> u64 {
        self.height
    }

    pub fn round(&self) -> u32 {
        self.round
    }

    pub fn step(&self) -> Step {
        self.step
    }

    /// The lock and valid value; pass them to the signing guard with each signature.
    pub fn locks(&self) -> Locks {
        Locks {
            locked: self.locked,
            valid: self.valid,
            valid_pol: self.valid_pol.clone(),
        }
    }

    /// The decided block of the current height, once there is one.
    pub fn decision(&self) -> Option<Hash> {
        self.decision
    }

    /// Once the height is decided: whether the whole validator set's precommits for the
    /// decided block are in (in one round; those that came after the decision count), so
    /// that waiting longer for late precommits cannot add anybody to the commit.
    pub fn every_precommit_in(&self) -> bool {
        let Some(hash) = self.decision else {
            return false;
        };
        let total = self.set.total_power();
        self.votes
            .values()
            .any(|rv| rv.precommits.power_for(&Some(hash)) >= total)
    }

    /// Rounds of the current height for which we hold votes.
    pub fn vote_rounds(&self) -> impl Iterator<Item = u32> + '_ {
        self.votes.keys().copied()
    }

    /// The verified votes we hold for `round` of the current height (prevotes first):
    /// what the engine relays to peers that lack them, which Tendermint's liveness needs
    /// ("a message a correct node received reaches every correct node").
    pub fn votes(&self, round: u32) -> Vec<&SignedVote> {
        self.votes.get(&round).map_or_else(Vec::new, |rv| {
            rv.prevotes
                .all_votes()
                .chain(rv.precommits.all_votes())
                .collect()
        })
    }

    /// The proposal we accepted for `round` of the current height.
    pub fn proposal(&self, round: u32) -> Option<&SignedProposal> {
        self.proposals.get(&round)
    }

    /// True when we already hold this exact vote (so a peer need not send it).
    pub fn has_vote(&self, vote: &SignedVote) -> bool {
        vote.vote.height == self.height
            && self
                .votes
                .get(&vote.vote.round)
                .is_some_and(|rv| matches!(rv.set(vote.vote.kind).classify(vote), Added::Duplicate))
    }

    /// Validators we heard nothing from for [`ABSENT_AFTER_HEIGHTS`] heights or more: their
    /// proposer turns get a short propose timeout (for metrics and the status page).
    pub fn absent_validators(&self) -> impl Iterator<Item = &Address> + '_ {
        self.set
            .validators()
            .iter()
            .map(|v| &v.address)
            .filter(|a| self.is_absent(a))
    }

    /// Silent for [`ABSENT_AFTER_HEIGHTS`] heights, or its last turn to propose timed out.
    fn is_absent(&self, a: &Address) -> bool {
        self.silent.get(a).copied().unwrap_or(0) >= ABSENT_AFTER_HEIGHTS
            || self.missed_turn.contains(a)
    }

    /// Number of buffered next-height messages (for metrics and tests).
    pub fn buffered(&self) -> usize {
        self.next_height.len()
    }

    /// The single entry point: record `input`, then fire every `upon` rule it enabled.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::StartHeight { height } => self.on_start_height(height, &mut out),
            Input::ValidatorSets {
                height,
                current,
                next,
            } => {
                if height > self.height {
                    self.pending_sets = Some((height, current, next));
                }
            }
            Input::Proposal(p) => self.on_proposal(p, &mut out),
            Input::Vote(v) => self.on_vote(v, false, &mut out),
            Input::Commit(c) => self.on_commit(c, &mut out),
            Input::Timeout(t) => self.on_timeout(t, &mut out),
            Input::BlockValidated {
                height,
                block_hash,
                valid,
            } => self.on_block_validated(height, block_hash, valid),
            Input::ProposalBuilt {
                height,
                round,
                block_hash,
            } => self.on_proposal_built(height, round, block_hash, &mut out),
        }
        self.apply_rules(&mut out);
        out
    }

    // ----- input handlers ---------------------------------------------------------------

    /// Lines 10 and 54 (`StartRound(0)` at a new height, with fresh per-height state).
    fn on_start_height(&mut self, height: u64, out: &mut Vec<Output>) {
        if self.step != Step::Idle && height <= self.height {
            return; // stale or repeated
        }
        let buffered = std::mem::take(&mut self.next_height);
        self.next_height_per.clear();
        if self.step != Step::Idle {
            self.count_silence();
        }
        // The sets of this height and the next: as announced for it, else the one that was
        // announced as the next (a chain whose set never changes announces nothing).
        let next = self.next_set.clone();
        match self.pending_sets.take() {
            Some((h, current, next)) if h == height => {
                self.set = current;
                self.next_set = next;
            }
            later => {
                self.pending_sets = later.filter(|(h, _, _)| *h > height);
                self.set = next;
            }
        }
        self.height = height;
        self.round = 0;
        self.locked = None;
        self.valid = None;
        self.valid_pol.clear();
        self.decision = None;
        self.proposals.clear();
        self.votes.clear();
        self.validity.clear();
        self.fired_prevote_timeout = None;
        self.fired_line36 = None;
        self.fired_precommit_timeout = None;
        let resumed = self
            .resume
            .take()
            .and_then(|g| g.last_signed.filter(|l| l.height == height).map(|l| (g, l)));
        match resumed {
            Some((g, last)) => {
                self.locked = g.locked;
                self.valid = g.valid;
                self.valid_pol = g.valid_pol.clone();
                self.resume_round(&g, last, out);
                // Hold the proof of lock again, so we and our peers can use it.
                for vote in g.valid_pol {
                    self.on_vote(vote, false, out);
                }
            }
            None => self.start_round(0, out),
        }
        for input in buffered {
            match input {
                Input::Proposal(p) if p.proposal.height == height => self.on_proposal(p, out),
                Input::Vote(v) if v.vote.height == height => self.on_vote(v, false, out),
                _ => {}
            }
        }
    }

    /// Records a proposal for lines 22, 28, 36 and 49. Checks: our chain, the expected
    /// proposer of (height, round), a valid signature, `pol_round < round`.
    fn on_proposal(&mut self, sp: SignedProposal, out: &mut Vec<Output>) {
        let p = &sp.proposal;
        let proposer = self.next_set.proposer(p.height, p.round).address;
        if self.buffer_if_next_height(p.height, p.round, proposer, || Input::Proposal(sp.clone())) {
            return;
        }
        if !self.accepts_height(p.height) || p.chain_id != self.cfg.chain_id {
            return;
        }
        if p.round > self.round.saturating_add(FUTURE_ROUNDS) {
            return;
        }
        if p.pol_round.is_some_and(|vr| vr >= p.round) {
            return;
        }
        if self.proposals.contains_key(&p.round) {
            return; // first proposal of a round wins; duplicates are gossip echoes
        }
        let proposer = self.set.proposer(p.height, p.round);
        if !self.verifier.verify_proposal(&sp, &proposer.pubkey) {
            return;
        }
        self.heard.insert(proposer.address);
        self.missed_turn.remove(&proposer.address);
        let (round, hash) = (p.round, p.block_hash);
        self.proposals.insert(round, sp);
        self.request_validation(round, hash, out);
    }

    /// Records a vote for lines 28-55 and detects equivocation. `from_commit` (precommits
    /// that arrive inside a full commit) lifts the future-round window and counts an
    /// equivocator's precommit even if we first saw another vote of it.
    fn on_vote(&mut self, sv: SignedVote, from_commit: bool, out: &mut Vec<Output>) {
        let v = &sv.vote;
        if self.buffer_if_next_height(v.height, v.round, sv.validator, || Input::Vote(sv.clone())) {
            return;
        }
        // A precommit of the decided height that came after the decision is still
        // recorded (no rule fires once decided): it completes the commit's signers
        // ([`Self::every_precommit_in`]) and the votes relayed to peers that lack them.
        let late_precommit =
            self.step == Step::Decided && v.height == self.height && v.kind == VoteKind::Precommit;
        if !(self.accepts_height(v.height) || late_precommit) || v.chain_id != self.cfg.chain_id {
            return;
        }
        if !from_commit && v.round > self.round.saturating_add(FUTURE_ROUNDS) {
            return;
        }
        let Some(validator) = self.set.get(&sv.validator) else {
            return;
        };
        let (power, pubkey) = (validator.power, validator.pubkey);
        let (round, kind) = (v.round, v.kind);
        let class = self
            .votes
            .get(&round)
            .map_or(Added::New, |rv| rv.set(kind).classify(&sv));
        let count_conflicting = self
            .votes
            .get(&round)
            .is_some_and(|rv| rv.set(kind).counts_conflicting(&v.block_hash, from_commit));
        match class {
            // Checked before the signature: gossip delivers most votes several times.
            Added::Duplicate => return,
            Added::KnownEquivocator if !count_conflicting => return,
            Added::New | Added::Equivocation(_) | Added::KnownEquivocator => {}
        }
        // Verified before any state is created for the round, so forged messages cost
        // no memory.
        if !self.verifier.verify_vote(&sv, &pubkey) {
            return;
        }
        self.heard.insert(sv.validator);
        let set = self.votes.entry(round).or_default().set_mut(kind);
        if let Added::Equivocation(first) = set.add(sv.clone(), power, count_conflicting) {
            out.push(Output::Evidence(Box::new(Equivocation {
                first: *first,
                second: sv,
            })));
        }
    }

    /// Catch-up: a peer's commit for our height. Its signatures become precommits and go
    /// through the normal vote path (so each is verified and counted once); line 49 then
    /// decides once the block is validated.
    fn on_commit(&mut self, commit: Commit, out: &mut Vec<Output>) {
        if !self.accepts_height(commit.height) {
            return;
        }
        // Cheap checks first (sorted, unique, known signers with more than 2/3 of the
        // power), so a forged commit costs no signature checks, and the window-free,
        // equivocation-tolerant path below is only open to what could be a real commit.
        let sorted = commit
            .signatures
            .windows(2)
            .all(|w| w[0].validator < w[1].validator);
        let power = commit
            .signatures
            .iter()
            .map(|s| self.set.power_of(&s.validator))
            .fold(0u64, u64::saturating_add);
        if !sorted || !self.set.is_quorum(power) {
            return;
        }
        for sig in commit.signatures {
            let vote = SignedVote {
                vote: Vote {
                    chain_id: self.cfg.chain_id.clone(),
                    height: commit.height,
                    round: commit.round,
                    kind: VoteKind::Precommit,
                    block_hash: Some(commit.block_hash),
                },
                validator: sig.validator,
                signature: sig.signature,
            };
            self.on_vote(vote, true, out);
        }
    }

    /// Lines 57-66: `OnTimeoutPropose`, `OnTimeoutPrevote`, `OnTimeoutPrecommit`.
    fn on_timeout(&mut self, t: Timeout, out: &mut Vec<Output>) {
        if t.height != self.height || t.round != self.round || self.step == Step::Decided {
            return;
        }
        match (t.step, self.step) {
            // Line 57: no acceptable proposal in time: prevote nil.
            (TimeoutStep::Propose, Step::Propose) => {
                let proposer = self.set.proposer(self.height, self.round).address;
                if !self.proposals.contains_key(&self.round) && self.cfg.address != Some(proposer) {
                    self.missed_turn.insert(proposer);
                }
                self.prevote(None, out)
            }
            // Line 61: prevotes split: precommit nil.
            (TimeoutStep::Prevote, Step::Prevote) => self.precommit(None, out),
            // Line 65: no decision this round: next round (from any step).
            (TimeoutStep::Precommit, _) => self.start_round(self.round.saturating_add(1), out),
            _ => {}
        }
    }

    /// `valid(v)` of lines 22, 28, 36 and 49: the engine's verdict on a block.
    fn on_block_validated(&mut self, height: u64, hash: Hash, valid: bool) {
        if height != self.height || self.step == Step::Idle {
            return;
        }
        let verdict = if valid {
            Validity::Valid
        } else {
            Validity::Invalid
        };
        self.validity.insert(hash, verdict);
    }

    /// Lines 17-19: `getValue()` returned; broadcast the proposal.
    fn on_proposal_built(&mut self, height: u64, round: u32, hash: Hash, out: &mut Vec<Output>) {
        if height != self.height || self.step == Step::Idle {
            return;
        }
        // We built and executed it ourselves.
        self.validity.insert(hash, Validity::Valid);
        if round == self.round && self.step == Step::Propose && self.we_propose(round) {
            out.push(Output::Propose(Proposal {
                chain_id: self.cfg.chain_id.clone(),
                height,
                round,
                pol_round: None,
                block_hash: hash,
            }));
        }
    }

    // ----- the upon rules ---------------------------------------------------------------

    /// Fires every enabled rule until none is.
    fn apply_rules(&mut self, out: &mut Vec<Output>) {
        loop {
            if matches!(self.step, Step::Idle | Step::Decided) {
                return;
            }
            if self.rule_decide(out) {
                return;
            }
            if self.rule_round_skip(out) {
                continue;
            }
            let mut progressed = self.rule_prevote_proposal(out);
            self.rule_prevote_timeout(out);
            progressed |= self.rule_precommit_value(out);
            progressed |= self.rule_precommit_nil(out);
            self.rule_precommit_timeout(out);
            if self.rule_next_round_on_nil_commit(out) {
                continue;
            }
            if !progressed {
                return;
            }
        }
    }

    /// Line 49: 2f+1 precommits for v in any round and valid(v): decide.
    ///
    /// Unlike the paper we do not also require the proposal message: 2f+1 precommits for v
    /// already prove that honest validators saw it, and a node that missed the proposal
    /// (or catches up through [`Input::Commit`]) would otherwise never decide. We still
    /// require valid(v), asking the engine to validate v if nobody has yet.
    fn rule_decide(&mut self, out: &mut Vec<Output>) -> bool {
        let mut found = None;
        let mut to_validate = Vec::new();
        for (round, rv) in &self.votes {
            for (value, power) in rv.precommits.values() {
                let Some(hash) = value else { continue };
                if !self.set.is_quorum(power) {
                    continue;
                }
                match self.validity.get(hash) {
                    Some(Validity::Valid) => {
                        found = Some((*round, *hash));
                        break;
                    }
                    None => to_validate.push((*round, *hash)),
                    Some(Validity::Pending | Validity::Invalid) => {}
                }
            }
            if found.is_some() {
                break;
            }
        }
        for (round, hash) in to_validate {
            self.request_validation(round, hash, out);
        }
        let Some((round, hash)) = found else {
            return false;
        };
        let signatures = self.votes[&round]
            .precommits
            .votes_for(&Some(hash))
            .into_iter()
            .map(|v| CommitSig {
                validator: v.validator,
                signature: v.signature,
            })
            .collect();
        self.decision = Some(hash);
        self.step = Step::Decided;
        out.push(Output::Decide {
            height: self.height,
            round,
            block_hash: hash,
            commit: Commit {
                height: self.height,
                round,
                block_hash: hash,
                signatures,
            },
        });
        true
    }

    /// Line 55: f+1 of the power has sent messages for a higher round: jump to it (to
    /// the highest such round, the sooner to meet the others).
    fn rule_round_skip(&mut self, out: &mut Vec<Output>) -> bool {
        let validators = &self.set;
        let target = self
            .votes
            .range(self.round.saturating_add(1)..)
            .rev()
            .find(|(_, rv)| {
                validators.is_one_third(rv.participating_power(|a| validators.power_of(a)))
            })
            .map(|(r, _)| *r);
        match target {
            Some(round) => {
                self.start_round(round, out);
                true
            }
            None => false,
        }
    }

    /// Lines 22-27 (proposal without proof of lock) and 28-33 (proposal with a proof of
    /// lock from round vr: 2f+1 prevotes for v in vr), while step = propose.
    fn rule_prevote_proposal(&mut self, out: &mut Vec<Output>) -> bool {
        if self.step != Step::Propose {
            return false;
        }
        let Some(sp) = self.proposals.get(&self.round) else {
            return false;
        };
        let (hash, pol_round) = (sp.proposal.block_hash, sp.proposal.pol_round);
        let validity = match self.validity.get(&hash) {
            Some(Validity::Valid) => true,
            Some(Validity::Invalid) => false,
            // Execute before vote: wait for the engine's verdict (or timeout_propose).
            Some(Validity::Pending) | None => return false,
        };
        let vote_for_v = match pol_round {
            // Line 23: valid(v) and (lockedRound = -1 or lockedValue = v).
            None => validity && self.locked.is_none_or(|l| l.block_hash == hash),
            // Line 28: needs 2f+1 prevotes for v in vr, else keep waiting.
            Some(vr) => {
                let pol = self
                    .votes
                    .get(&vr)
                    .map_or(0, |rv| rv.prevotes.power_for(&Some(hash)));
                if !self.set.is_quorum(pol) {
                    return false;
                }
                // Line 29: valid(v) and (lockedRound <= vr or lockedValue = v).
                validity
                    && self
                        .locked
                        .is_none_or(|l| l.round <= vr || l.block_hash == hash)
            }
        };
        self.prevote(vote_for_v.then_some(hash), out);
        true
    }

    /// Line 34: 2f+1 prevotes of any value in this round while step = prevote, the first
    /// time: schedule `OnTimeoutPrevote`.
    fn rule_prevote_timeout(&mut self, out: &mut Vec<Output>) {
        if self.step != Step::Prevote || self.fired_prevote_timeout == Some(self.round) {
            return;
        }
        let power = self
            .votes
            .get(&self.round)
            .map_or(0, |rv| rv.prevotes.total_power());
        if self.set.is_quorum(power) {
            self.fired_prevote_timeout = Some(self.round);
            self.schedule(TimeoutStep::Prevote, out);
        }
    }

    /// Lines 36-43: the proposal of this round and 2f+1 prevotes for it, valid(v), step >=
    /// prevote, the first time: lock and precommit (if still at prevote), and record v as
    /// the valid value either way.
    fn rule_precommit_value(&mut self, out: &mut Vec<Output>) -> bool {
        if !matches!(self.step, Step::Prevote | Step::Precommit)
            || self.fired_line36 == Some(self.round)
        {
            return false;
        }
        let Some(sp) = self.proposals.get(&self.round) else {
            return false;
        };
        let hash = sp.proposal.block_hash;
        let power = self
            .votes
            .get(&self.round)
            .map_or(0, |rv| rv.prevotes.power_for(&Some(hash)));
        if !self.set.is_quorum(power) || self.validity.get(&hash) != Some(&Validity::Valid) {
            return false;
        }
        self.fired_line36 = Some(self.round);
        let value = RoundValue {
            round: self.round,
            block_hash: hash,
        };
        if self.step == Step::Prevote {
            self.locked = Some(value);
            self.precommit(Some(hash), out);
        }
        self.valid = Some(value);
        self.valid_pol = self.votes[&self.round]
            .prevotes
            .votes_for(&Some(hash))
            .into_iter()
            .cloned()
            .collect();
        true
    }

    /// Line 44: 2f+1 prevotes for nil while step = prevote: precommit nil.
    fn rule_precommit_nil(&mut self, out: &mut Vec<Output>) -> bool {
        if self.step != Step::Prevote {
            return false;
        }
        let power = self
            .votes
            .get(&self.round)
            .map_or(0, |rv| rv.prevotes.power_for(&None));
        if !self.set.is_quorum(power) {
            return false;
        }
        self.precommit(None, out);
        true
    }

    /// Line 47: 2f+1 precommits of any value in this round, the first time: schedule
    /// `OnTimeoutPrecommit`.
    fn rule_precommit_timeout(&mut self, out: &mut Vec<Output>) {
        if self.fired_precommit_timeout == Some(self.round) {
            return;
        }
        let power = self
            .votes
            .get(&self.round)
            .map_or(0, |rv| rv.precommits.total_power());
        if self.set.is_quorum(power) {
            self.fired_precommit_timeout = Some(self.round);
            self.schedule(TimeoutStep::Precommit, out);
        }
    }

    /// 2f+1 precommits for nil in this round: no value can reach 2f+1 precommits in it any
    /// more (at most f of those nil voters are byzantine and could also precommit a value,
    /// leaving a value at most 2f), so waiting out `timeout_precommit` (line 47) could only
    /// collect votes that decide nothing: start the next round now. Line 49 still decides
    /// from this round's precommits if they ever show a value with 2f+1 (they cannot while
    /// fewer than a third are byzantine). Without this, every round lost to an absent
    /// proposer costs a full `timeout_precommit` on top of its propose timeout.
    fn rule_next_round_on_nil_commit(&mut self, out: &mut Vec<Output>) -> bool {
        let nil = self
            .votes
            .get(&self.round)
            .map_or(0, |rv| rv.precommits.power_for(&None));
        if !self.set.is_quorum(nil) {
            return false;
        }
        self.start_round(self.round.saturating_add(1), out);
        true
    }

    // ----- actions ------------------------------------------------------------------------

    /// Lines 11-21: `StartRound(round)`.
    fn start_round(&mut self, round: u32, out: &mut Vec<Output>) {
        self.round = round;
        self.step = Step::Propose;
        out.push(Output::RoundChanged {
            height: self.height,
            round,
        });
        if self.we_propose(round) {
            match self.valid {
                // Lines 15-16: re-propose the valid value with its proof-of-lock round.
                Some(v) => out.push(Output::Propose(Proposal {
                    chain_id: self.cfg.chain_id.clone(),
                    height: self.height,
                    round,
                    pol_round: Some(v.round),
                    block_hash: v.block_hash,
                })),
                // Line 18: getValue(); answered by `ProposalBuilt`.
                None => out.push(Output::BuildProposal {
                    height: self.height,
                    round,
                }),
            }
        }
        // Line 21. The paper skips this for the proposer; we schedule it anyway so a
        // proposer whose block building fails or whose proposal the guard refuses still
        // moves on. A proposer we have not heard from for heights gets a short one.
        let proposer = self.set.proposer(self.height, round).address;
        let absent = self.cfg.address != Some(proposer) && self.is_absent(&proposer);
        if absent {
            let full = self.cfg.timeouts.duration_ms(TimeoutStep::Propose, round);
            self.schedule_ms(TimeoutStep::Propose, full / ABSENT_PROPOSE_DIVISOR, out);
        } else {
            self.schedule(TimeoutStep::Propose, out);
        }
    }

    /// At the end of a height: who did we hear from in it? (See [`ABSENT_AFTER_HEIGHTS`].)
    fn count_silence(&mut self) {
        let heard = std::mem::take(&mut self.heard);
        for v in self.set.validators() {
            let n = self.silent.entry(v.address).or_insert(0);
            *n = if heard.contains(&v.address) {
                0
            } else {
                n.saturating_add(1)
            };
        }
    }

    /// After a restart, re-enter the round we last signed in, at the step we signed, and
    /// sign the identical votes of this height again (the guard allows exactly that):
    /// peers that lost them get them again, and we rejoin the round the others are in.
    /// Starting a later round instead could strand us alone in it.
    fn resume_round(&mut self, g: &GuardState, last: LastSigned, out: &mut Vec<Output>) {
        self.round = last.round;
        self.step = Step::Propose;
        out.push(Output::RoundChanged {
            height: self.height,
            round: last.round,
        });
        // If we only proposed: a rebuilt block would differ and be refused, so wait for
        // our proposal to come back through gossip, or for the round to time out.
        self.schedule(TimeoutStep::Propose, out);
        for signed in g.height_signed.iter().filter(|s| s.height == last.height) {
            match (signed.round == last.round, signed.step) {
                (_, SignStep::Propose) => {}
                (true, SignStep::Prevote) => self.prevote(signed.block_hash, out),
                (true, SignStep::Precommit) => self.precommit(signed.block_hash, out),
                // Votes of earlier rounds of this height, re-signed for peers that may
                // still be waiting in those rounds.
                (false, SignStep::Prevote) => {
                    self.emit_vote_at(signed.round, VoteKind::Prevote, signed.block_hash, out)
                }
                (false, SignStep::Precommit) => {
                    self.emit_vote_at(signed.round, VoteKind::Precommit, signed.block_hash, out)
                }
            }
        }
    }

    fn prevote(&mut self, value: Option<Hash>, out: &mut Vec<Output>) {
        self.emit_vote(VoteKind::Prevote, value, out);
        self.step = Step::Prevote;
    }

    fn precommit(&mut self, value: Option<Hash>, out: &mut Vec<Output>) {
        self.emit_vote(VoteKind::Precommit, value, out);
        self.step = Step::Precommit;
    }

    fn emit_vote(&self, kind: VoteKind, block_hash: Option<Hash>, out: &mut Vec<Output>) {
        self.emit_vote_at(self.round, kind, block_hash, out);
    }

    fn emit_vote_at(
        &self,
        round: u32,
        kind: VoteKind,
        block_hash: Option<Hash>,
        out: &mut Vec<Output>,
    ) {
        if self.our_power() == 0 {
            return; // full node: follows, never votes
        }
        out.push(Output::Vote(Vote {
            chain_id: self.cfg.chain_id.clone(),
            height: self.height,
            round,
            kind,
            block_hash,
        }));
    }

    fn schedule(&self, step: TimeoutStep, out: &mut Vec<Output>) {
        self.schedule_ms(step, self.cfg.timeouts.duration_ms(step, self.round), out);
    }

    fn schedule_ms(&self, step: TimeoutStep, duration_ms: u64, out: &mut Vec<Output>) {
        out.push(Output::ScheduleTimeout {
            timeout: Timeout {
                height: self.height,
                round: self.round,
                step,
            },
            duration_ms,
        });
    }

    fn request_validation(&mut self, round: u32, hash: Hash, out: &mut Vec<Output>) {
        if self.validity.contains_key(&hash) {
            return;
        }
        self.validity.insert(hash, Validity::Pending);
        out.push(Output::ValidateBlock {
            height: self.height,
            round,
            block_hash: hash,
        });
    }

    // ----- helpers ----------------------------------------------------------------------

    fn our_power(&self) -> u64 {
        self.cfg
            .address
            .map_or(0, |a: Address| self.set.power_of(&a))
    }

    fn we_propose(&self, round: u32) -> bool {
        self.our_power() > 0
            && self.cfg.address == Some(self.set.proposer(self.height, round).address)
    }

    /// Messages of our height are processed until we decide it.
    fn accepts_height(&self, height: u64) -> bool {
        height == self.height && !matches!(self.step, Step::Idle | Step::Decided)
    }

    /// Keeps a message for `height + 1` (bounded). True when the message was for the next
    /// height (kept or dropped) so the caller stops.
    fn buffer_if_next_height(
        &mut self,
        height: u64,
        round: u32,
        sender: ledger::types::Address,
        input: impl FnOnce() -> Input,
    ) -> bool {
        if self.step == Step::Idle || height != self.height.saturating_add(1) {
            return false;
        }
        // Kept only if it could count when the height starts (round 0 .. FUTURE_ROUNDS),
        // comes from a validator, and that validator is within its share.
        if round > FUTURE_ROUNDS
            || self.next_set.get(&sender).is_none()
            || self.next_height.len() >= MAX_BUFFERED
        {
            return true;
        }
        let count = self.next_height_per.entry(sender).or_insert(0);
        if *count < MAX_BUFFERED_PER_VALIDATOR {
            *count += 1;
            self.next_height.push(input());
        }
        true
    }
}
