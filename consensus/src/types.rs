//! The core's vocabulary: what the engine feeds in ([`Input`]) and what it must carry out
//! ([`Output`]).

use borsh::{BorshDeserialize, BorshSerialize};
use ledger::genesis::Params;
use ledger::hash::Hash;
use ledger::types::{Address, Commit, Proposal, SignedProposal, SignedVote, Vote};
use ledger::validators::ValidatorSet;

/// The step of the current round (Algorithm 1's `step_p`), plus `Decided`: the height is
/// over and the core waits for the engine's next [`Input::StartHeight`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// No height started yet.
    Idle,
    Propose,
    Prevote,
    Precommit,
    Decided,
}

/// Which of the three round timeouts of Algorithm 1 fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeoutStep {
    Propose,
    Prevote,
    Precommit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timeout {
    pub height: u64,
    pub round: u32,
    pub step: TimeoutStep,
}

/// A (round, block) pair: Algorithm 1's lockedRound/lockedValue and validRound/validValue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct RoundValue {
    pub round: u32,
    pub block_hash: Hash,
}

/// The core's lock and valid value at its current height; the engine hands them to the
/// [`crate::SigningGuard`] with every signature so they are persisted with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Locks {
    pub locked: Option<RoundValue>,
    pub valid: Option<RoundValue>,
    /// The 2f+1 prevotes for `valid` in its round: the proof of lock a proposer attaches
    /// (by `pol_round`) when it re-proposes the valid value. Persisted with it, because
    /// after a restart nobody else may still hold some of these votes (a byzantine
    /// validator may have sent its prevote to us alone), and without them no one would
    /// ever accept the valid value again while we stay locked on it.
    pub valid_pol: Vec<SignedVote>,
}

/// Two signed votes of one validator for the same (height, round, kind) with different
/// block hashes. Both signatures have been verified.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Equivocation {
    pub first: SignedVote,
    pub second: SignedVote,
}

/// Round timeouts: `base + delta * round` milliseconds, so rounds get longer until the
/// network's real delay fits in them (what gives liveness after GST).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub propose_ms: u64,
    pub propose_delta_ms: u64,
    pub prevote_ms: u64,
    pub prevote_delta_ms: u64,
    pub precommit_ms: u64,
    pub precommit_delta_ms: u64,
}

impl Timeouts {
    pub fn duration_ms(&self, step: TimeoutStep, round: u32) -> u64 {
        let (base, delta) = match step {
            TimeoutStep::Propose => (self.propose_ms, self.propose_delta_ms),
            TimeoutStep::Prevote => (self.prevote_ms, self.prevote_delta_ms),
            TimeoutStep::Precommit => (self.precommit_ms, self.precommit_delta_ms),
        };
        base.saturating_add(delta.saturating_mul(u64::from(round)))
    }
}

impl From<&Params> for Timeouts {
    fn from(p: &Params) -> Self {
        Self {
            propose_ms: p.timeout_propose_ms,
            propose_delta_ms: p.timeout_propose_delta_ms,
            prevote_ms: p.timeout_prevote_ms,
            prevote_delta_ms: p.timeout_prevote_delta_ms,
            precommit_ms: p.timeout_precommit_ms,
            precommit_delta_ms: p.timeout_precommit_delta_ms,
        }
    }
}

/// Static configuration of one node's core.
#[derive(Clone, Debug)]
pub struct Config {
    pub chain_id: String,
    /// The set of the first height this core starts (and of every height, unless
    /// [`Input::ValidatorSets`] says otherwise).
    pub validators: ValidatorSet,
    /// Our validator address; `None` for a full node, which follows and commits but never
    /// proposes or votes.
    pub address: Option<Address>,
    pub timeouts: Timeouts,
}

/// Everything the core reacts to. The engine turns network messages, timer expiries and
/// answers to earlier [`Output`]s into these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Begin `height` at round 0 (or, after [`crate::Consensus::resume`], past the last
    /// round we signed in). Sent once at start and after each `Decide`, when the engine has
    /// stored the block and waited `timeout_commit`.
    StartHeight { height: u64 },
    /// The validator sets of `height` and of `height + 1`, sent before `StartHeight {
    /// height }` on a chain whose set changes (protocol 2 fixes the set of H + 2 at the
    /// end of H, so both are known when H starts). A height started without one uses the
    /// set announced as the next one (at first [`Config::validators`]), so a chain whose
    /// set never changes never sends it.
    ValidatorSets {
        height: u64,
        current: ValidatorSet,
        next: ValidatorSet,
    },
    /// A proposal from the network, or our own after signing.
    Proposal(SignedProposal),
    /// A vote from the network, or our own after signing (our votes count only when fed
    /// back, so a vote the guard refused is never counted).
    Vote(SignedVote),
    /// A commit for the current height from a peer (catch-up): its precommits are
    /// checked one by one like votes, whatever their round.
    Commit(Commit),
    /// A timer the core asked for with [`Output::ScheduleTimeout`] expired.
    Timeout(Timeout),
    /// Answer to [`Output::ValidateBlock`]: the engine executed the block with this hash.
    BlockValidated {
        height: u64,
        block_hash: Hash,
        valid: bool,
    },
    /// Answer to [`Output::BuildProposal`]: the engine built and executed a block.
    ProposalBuilt {
        height: u64,
        round: u32,
        block_hash: Hash,
    },
}

/// Effects the engine must carry out, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// We entered `round` of `height` (for metrics and logs).
    RoundChanged { height: u64, round: u32 },
    /// We are the proposer and have no valid value: build a block, execute it, answer
    /// with [`Input::ProposalBuilt`].
    BuildProposal { height: u64, round: u32 },
    /// Pass through the signing guard, sign, broadcast (with the block), feed back.
    Propose(Proposal),
    /// Pass through the signing guard, sign, broadcast, feed back.
    Vote(Vote),
    /// Fetch (if needed) and execute the block; answer with [`Input::BlockValidated`].
    /// Asked at most once per hash and height.
    ValidateBlock {
        height: u64,
        round: u32,
        block_hash: Hash,
    },
    /// Call back with [`Input::Timeout`] after `duration_ms`.
    ScheduleTimeout { timeout: Timeout, duration_ms: u64 },
    /// The block is final. `commit` holds the precommit signatures for it, sorted by
    /// validator address, more than 2/3 of the power. Store the block with the commit,
    /// then send [`Input::StartHeight`] for `height + 1`.
    Decide {
        height: u64,
        round: u32,
        block_hash: Hash,
        commit: Commit,
    },
    /// A validator signed two conflicting votes: store, gossip, count.
    Evidence(Box<Equivocation>),
}
