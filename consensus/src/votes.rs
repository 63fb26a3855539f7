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
    power_by_value: BTreeMap<Option<Hash>, u64>,
    total_power: u64,
    equivocators: BTreeSet<Address>,
}

impl VoteSet {
    /// Classifies `vote` without changing the set, so the caller can skip signature
    /// verification for duplicates.
    pub fn classify(&self, vote: &SignedVote) -> Added {
        match self.votes.get(&vote.validator) {
            None => Added::New,
            Some(first) if first.vote.block_hash == vote.vote.block_hash => Added::Duplicate,
            Some(_) if self.equivocators.contains(&vote.validator) => Added::KnownEquivocator,
            Some(first) => Added::Equivocation(Box::new(first.clone())),
        }
    }

    /// Records a verified vote according to [`Self::classify`].
    pub fn add(&mut self, vote: SignedVote, power: u64) -> Added {
        let added = self.classify(&vote);
        match &added {
            Added::New => {
                let slot = self.power_by_value.entry(vote.vote.block_hash).or_default();
                *slot = slot.saturating_add(power);
                self.total_power = self.total_power.saturating_add(power);
                self.votes.insert(vote.validator, vote);
            }
            Added::Equivocation(_) => {
                self.equivocators.insert(vote.validator);
            }
            Added::Duplicate | Added::KnownEquivocator => {}
        }
        added
    }

    /// Power of all votes in the set, whatever their value.
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

    /// Counted votes, sorted by validator address.
    pub fn votes(&self) -> impl Iterator<Item = &SignedVote> {
        self.votes.values()
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
