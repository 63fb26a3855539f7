//! The validator set: voting power, quorum arithmetic, proposer order and commit checks.

use std::collections::HashMap;

use crate::crypto::verify;
use crate::hash::Hash;
use crate::types::{validators_hash, Address, Commit, Validator, Vote, VoteKind};

/// Total voting power is capped so `3 * power` never overflows in u128-free code paths.
pub const MAX_TOTAL_POWER: u64 = 1 << 60;

/// Length of the precomputed proposer schedule; powers are scaled down to fit it.
const SCHEDULE_MAX: u64 = 10_000;

/// Two sets are equal when their hashes are (the hash commits to every address, key and
/// power, in order).
#[derive(Clone, Debug)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
    index: HashMap<Address, usize>,
    total_power: u64,
    hash: Hash,
    /// One period of smooth weighted round-robin (nginx's algorithm): each validator
    /// appears in proportion to its power, spread out rather than in runs.
    schedule: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error("commit is for height {got}, expected {expected}")]
    WrongHeight { expected: u64, got: u64 },
    #[error("commit is for block {got}, expected {expected}")]
    WrongBlock { expected: String, got: String },
    #[error("commit signatures are not sorted by validator address or list one twice")]
    NotSorted,
    #[error("commit has a signature from {0}, which is not in the validator set")]
    UnknownValidator(String),
    #[error("commit signature of validator {0} does not verify")]
    BadSignature(String),
    #[error("commit carries {power} of {total} voting power; more than 2/3 is required")]
    NotEnoughPower { power: u64, total: u64 },
}

impl PartialEq for ValidatorSet {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
    }
}

impl Eq for ValidatorSet {}

impl ValidatorSet {
    /// `validators` in genesis order (the order `validators_hash` covers).
    pub fn new(validators: Vec<Validator>) -> Result<Self, String> {
        if validators.is_empty() {
            return Err("the validator set is empty".into());
        }
        if validators.len() > usize::from(u16::MAX) {
            return Err("too many validators".into());
        }
        let mut index = HashMap::with_capacity(validators.len());
        let mut total: u64 = 0;
        for (i, v) in validators.iter().enumerate() {
            if v.power == 0 {
                return Err(format!(
                    "validator {} has zero power",
                    hex::encode(v.address)
                ));
            }
            if index.insert(v.address, i).is_some() {
                return Err(format!("validator {} listed twice", hex::encode(v.address)));
            }
            total = total
                .checked_add(v.power)
                .filter(|t| *t <= MAX_TOTAL_POWER)
                .ok_or("total voting power too large")?;
        }
        let schedule = smooth_schedule(&validators, total);
        Ok(Self {
            hash: validators_hash(&validators),
            validators,
            index,
            total_power: total,
            schedule,
        })
    }

    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    pub fn len(&self) -> usize {
        self.validators.len()
    }

    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    pub fn total_power(&self) -> u64 {
        self.total_power
    }

    pub fn hash(&self) -> Hash {
        self.hash
    }

    pub fn get(&self, address: &Address) -> Option<&Validator> {
        self.index.get(address).map(|i| &self.validators[*i])
    }

    pub fn power_of(&self, address: &Address) -> u64 {
        self.get(address).map_or(0, |v| v.power)
    }

    /// More than 2/3 of the total power (a Tendermint quorum, "2f+1").
    pub fn is_quorum(&self, power: u64) -> bool {
        u128::from(power) * 3 > u128::from(self.total_power) * 2
    }

    /// More than 1/3 of the total power ("f+1"): at least one honest validator.
    pub fn is_one_third(&self, power: u64) -> bool {
        u128::from(power) * 3 > u128::from(self.total_power)
    }

    /// Proposer of (height, round): deterministic weighted round-robin.
    pub fn proposer(&self, height: u64, round: u32) -> &Validator {
        let slot = height.wrapping_add(u64::from(round)) % self.schedule.len() as u64;
        &self.validators[usize::from(self.schedule[slot as usize])]
    }

    /// Checks a commit for `height` / `block_hash`: sorted unique signers from this set,
    /// every precommit signature valid, more than 2/3 of the power.
    pub fn verify_commit(
        &self,
        chain_id: &str,
        height: u64,
        block_hash: &Hash,
        commit: &Commit,
    ) -> Result<(), CommitError> {
        if commit.height != height {
            return Err(CommitError::WrongHeight {
                expected: height,
                got: commit.height,
            });
        }
        if &commit.block_hash != block_hash {
            return Err(CommitError::WrongBlock {
                expected: hex::encode(block_hash),
                got: hex::encode(commit.block_hash),
            });
        }
        self.verify_commit_signatures(chain_id, commit)
    }

    /// The signature and power part of [`Self::verify_commit`].
    pub fn verify_commit_signatures(
        &self,
        chain_id: &str,
        commit: &Commit,
    ) -> Result<(), CommitError> {
        if !commit
            .signatures
            .windows(2)
            .all(|w| w[0].validator < w[1].validator)
        {
            return Err(CommitError::NotSorted);
        }
        // Count power first so an under-powered commit costs no signature checks.
        let mut power: u64 = 0;
        for sig in &commit.signatures {
            let v = self
                .get(&sig.validator)
                .ok_or_else(|| CommitError::UnknownValidator(hex::encode(sig.validator)))?;
            power += v.power;
        }
        if !self.is_quorum(power) {
            return Err(CommitError::NotEnoughPower {
                power,
                total: self.total_power,
            });
        }
        let vote = Vote {
            chain_id: chain_id.to_string(),
            height: commit.height,
            round: commit.round,
            kind: VoteKind::Precommit,
            block_hash: Some(commit.block_hash),
        };
        let bytes = vote.signing_bytes();
        for sig in &commit.signatures {
            let v = self.get(&sig.validator).expect("checked above");
            verify(&v.pubkey, &bytes, &sig.signature)
                .map_err(|_| CommitError::BadSignature(hex::encode(sig.validator)))?;
        }
        Ok(())
    }
}

fn smooth_schedule(validators: &[Validator], total: u64) -> Vec<u16> {
    // Scale powers so one period fits SCHEDULE_MAX slots; every validator keeps >= 1 slot.
    let weights: Vec<i64> = validators
        .iter()
        .map(|v| {
            let w = if total <= SCHEDULE_MAX {
                v.power
            } else {
                (u128::from(v.power) * u128::from(SCHEDULE_MAX) / u128::from(total)) as u64
            };
            w.max(1) as i64
        })
        .collect();
    let period: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(period as usize);
    for _ in 0..period {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += *w;
        }
        // Highest current weight wins; ties go to the lower index.
        let mut best = 0;
        for i in 1..current.len() {
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= period;
        schedule.push(best as u16);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keypair;

    fn set(powers: &[u64]) -> (Vec<Keypair>, ValidatorSet) {
        let keys: Vec<Keypair> = (0..powers.len())
            .map(|i| {
                Keypair::from_secret_bytes(&crate::hash::sha256(format!("v{i}").as_bytes()))
                    .unwrap()
            })
            .collect();
        let vals = keys
            .iter()
            .zip(powers)
            .map(|(k, p)| Validator {
                address: k.address(),
                pubkey: k.public_key(),
                power: *p,
            })
            .collect();
        (keys, ValidatorSet::new(vals).unwrap())
    }

    #[test]
    fn proposer_frequency_follows_power_and_is_spread() {
        let (_, s) = set(&[10, 20, 30, 40]);
        let mut counts = [0u32; 4];
        for h in 0..100 {
            let p = s.proposer(h, 0);
            counts[s
                .validators()
                .iter()
                .position(|v| v.address == p.address)
                .unwrap()] += 1;
        }
        assert_eq!(counts, [10, 20, 30, 40]);
        // Smooth: the heaviest validator never proposes 4 heights in a row.
        let runs = (0..100u64)
            .filter(|h| (0..4).all(|d| s.proposer(h + d, 0).power == 40))
            .count();
        assert_eq!(runs, 0);
        // Next round moves to another proposer.
        assert_ne!(s.proposer(5, 0).address, s.proposer(5, 1).address);
    }

    #[test]
    fn quorum_is_strictly_more_than_two_thirds() {
        let (_, s) = set(&[1, 1, 1]);
        assert!(!s.is_quorum(2));
        assert!(s.is_quorum(3));
        let (_, s) = set(&[1, 1, 1, 1]);
        assert!(!s.is_quorum(2));
        assert!(s.is_quorum(3));
        assert!(s.is_one_third(2));
        assert!(!s.is_one_third(1));
    }

    #[test]
    fn commit_checks() {
        let (keys, s) = set(&[1, 1, 1, 1]);
        let hash = [7u8; 32];
        let all: Vec<&Keypair> = keys.iter().collect();
        let sigs = crate::block::sign_commit("c", 3, 1, hash, &all).signatures;
        let commit = Commit {
            height: 3,
            round: 1,
            block_hash: hash,
            signatures: sigs[..3].to_vec(),
        };
        assert_eq!(s.verify_commit("c", 3, &hash, &commit), Ok(()));
        assert!(matches!(
            s.verify_commit("other", 3, &hash, &commit),
            Err(CommitError::BadSignature(_))
        ));
        assert!(matches!(
            s.verify_commit("c", 4, &hash, &commit),
            Err(CommitError::WrongHeight { .. })
        ));
        let mut two = commit.clone();
        two.signatures.truncate(2);
        assert!(matches!(
            s.verify_commit("c", 3, &hash, &two),
            Err(CommitError::NotEnoughPower { .. })
        ));
        let mut dup = commit.clone();
        dup.signatures[1] = dup.signatures[0].clone();
        assert_eq!(
            s.verify_commit("c", 3, &hash, &dup),
            Err(CommitError::NotSorted)
        );
    }
}
