//! Vote bookkeeping for one height: per round, one set of prevotes and one of precommits,
//! each counting voting power per value and remembering the first vote of every validator.

use std::collections::{BTreeMap, BTreeSet};

use ledger::hash::Hash;
use ledger::types::{Address, SignedVote, VoteKind};

/// What adding a vote did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Counted.
    New,
    /// The same vote again (gossip duplicates); ignored.
    Duplicate,
    /// The validator already voted for another value in this (round, kind): the first
    /// vote stays counted and the pair is evidence. Reported once per validator.
    Equivocation(Box<SignedVote>),
    /// A further conflicting vote from a validator already reported; ignored.
    KnownEquivocator,
}

#[derive(Debug, Default, Clone)]
pub struct VoteSet {
    /// First vote of each validator; BTreeMap so a commit built from it is sorted.
    votes: BTreeMap<Address, SignedVote>,
    /// Further votes of equivocating validators, for values others voted for too. A
    /// byzantine validator's vote may count for several values: quorum intersection only
    /// needs honest validators to vote once, and a commit that includes an equivocator's
    /// precommit must still be countable by a node that first saw its other vote.
    extra: BTreeMap<(Address, Option<Hash>), SignedVote>,
    power_by_value: BTreeMap<Option<Hash>, u64>,
    total_power: u64,
    equivocators: BTreeSet<Address>,
}

impl VoteSet {
    /// Classifies `vote` without changing the set, so the caller can skip signature
    /// verification for duplicates.
    pub fn classify(&self, vote: &SignedVote) -> Added {
        let value = vote.vote.block_hash;
        match self.votes.get(&vote.validator) {
            None => Added::New,
            Some(first) if first.vote.block_hash == value => Added::Duplicate,
            Some(_) if self.extra.contains_key(&(vote.validator, value)) => Added::Duplicate,
            Some(_) if self.equivocators.contains(&vote.validator) => Added::KnownEquivocator,
            Some(first) => Added::Equivocation(Box::new(first.clone())),
        }
    }

    /// True when a conflicting vote for `value` should also be counted: the value already
    /// has support, or the caller vouches for it (`force`, a verified commit). Keeps an
    /// equivocator from filling memory with votes for values nobody else wants.
    pub fn counts_conflicting(&self, value: &Option<Hash>, force: bool) -> bool {
        force || self.power_for(value) > 0
    }

    /// Records a verified vote according to [`Self::classify`]; a conflicting vote is
    /// also counted for its value when `count_conflicting`.
    pub fn add(&mut self, vote: SignedVote, power: u64, count_conflicting: bool) -> Added {
        let added = self.classify(&vote);
        let value = vote.vote.block_hash;
        match &added {
            Added::New => {
                let slot = self.power_by_value.entry(value).or_default();
                *slot = slot.saturating_add(power);
                self.total_power = self.total_power.saturating_add(power);
                self.votes.insert(vote.validator, vote);
            }
            Added::Equivocation(_) | Added::KnownEquivocator => {
                self.equivocators.insert(vote.validator);
                if count_conflicting {
                    let slot = self.power_by_value.entry(value).or_default();
                    *slot = slot.saturating_add(power);
                    self.extra.insert((vote.validator, value), vote);
                }
            }
            Added::Duplicate => {}
        }
        added
    }

    /// Power of the distinct validators in the set, whatever their value.
    pub fn total_power(&self) -> u64 {
        self.total_power
    }

    /// Power of the votes for `value` (`None` = nil).
    pub fn power_for(&self, value: &Option<Hash>) -> u64 {
        self.power_by_value.get(value).copied().unwrap_or(0)
    }

    /// Values with their power, nil first then by hash.
    pub fn values(&self) -> impl Iterator<Item = (&Option<Hash>, u64)> {
        self.power_by_value.iter().map(|(k, v)| (k, *v))
    }

    /// The votes for `value`, one per validator, sorted by validator address.
    pub fn votes_for(&self, value: &Option<Hash>) -> Vec<&SignedVote> {
        let mut out: Vec<&SignedVote> = self
            .votes
            .values()
            .filter(|v| &v.vote.block_hash == value)
            .chain(self.extra.values().filter(|v| &v.vote.block_hash == value))
            .collect();
        out.sort_by_key(|v| v.validator);
        out
    }

    /// Every vote held, conflicting ones included (for relaying to peers).
    pub fn all_votes(&self) -> impl Iterator<Item = &SignedVote> {
        self.votes.values().chain(self.extra.values())
    }

    pub fn voters(&self) -> impl Iterator<Item = &Address> {
        self.votes.keys()
    }
}

/// The prevotes and precommits of one round.
#[derive(Debug, Default, Clone)]
pub struct RoundVotes {
    pub prevotes: VoteSet,
    pub precommits: VoteSet,
}

impl RoundVotes {
    pub fn set(&self, kind: VoteKind) -> &VoteSet {
        match kind {
            VoteKind::Prevote => &self.prevotes,
            VoteKind::Precommit => &self.precommits,
        }
    }

    pub fn set_mut(&mut self, kind: VoteKind) -> &mut VoteSet {
        match kind {
            VoteKind::Prevote => &mut self.prevotes,
            VoteKind::Precommit => &mut self.precommits,
        }
    }

    /// Power of the distinct validators that sent any vote in this round (line 55's
    /// "f+1 messages of round r": a validator counts once however many it sent).
    pub fn participating_power(&self, power_of: impl Fn(&Address) -> u64) -> u64 {
        let voters: BTreeSet<&Address> = self
            .prevotes
            .voters()
            .chain(self.precommits.voters())
            .collect();
        voters
            .into_iter()
            .map(power_of)
            .fold(0u64, u64::saturating_add)
    }
}
