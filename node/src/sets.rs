//! The validator sets the node knows, by height. On protocol 1 there is one, the genesis
//! set, at every height. On protocol 2 (issue 20) the set of height H + 2 is fixed by
//! the commit of H, so after the tip T is committed the sets of T + 1 and T + 2 are
//! known; the chain host reads them from the store after each commit (and at start) and
//! publishes them on a `watch` that the driver (the core's `ValidatorSets` input before
//! each `StartHeight`) and the router (which set a vote or proposal is checked against)
//! read. A height whose set is not published is unknown here: nothing is verified
//! against a guess.

use std::sync::Arc;

use ledger::block::BlockSets;
use ledger::state::StateReader;
use ledger::store::StoreError;
use ledger::validators::ValidatorSet;
use tokio::sync::watch;

/// The sets the node can check messages of live heights against.
#[derive(Clone, Debug)]
pub enum KnownSets {
    /// Protocol 1: the genesis set, at every height.
    Fixed(ValidatorSet),
    /// Protocol 2: the sets of `from` and `from + 1` (the tip + 1 and the tip + 2).
    Changing {
        from: u64,
        current: ValidatorSet,
        next: ValidatorSet,
    },
}

/// How the host publishes [`KnownSets`] and the others read them.
pub type SetsTx = watch::Sender<Arc<KnownSets>>;
pub type SetsRx = watch::Receiver<Arc<KnownSets>>;

impl KnownSets {
    /// The set of `height`, if known.
    pub fn at(&self, height: u64) -> Option<&ValidatorSet> {
        match self {
            KnownSets::Fixed(set) => Some(set),
            KnownSets::Changing {
                from,
                current,
                next,
            } => {
                if height == *from {
                    Some(current)
                } else if height == from.saturating_add(1) {
                    Some(next)
                } else {
                    None
                }
            }
        }
    }

    /// The sets of `height` and `height + 1`, for the core's `ValidatorSets` input (never
    /// on protocol 1, whose core keeps the genesis set).
    pub fn announcement(&self, height: u64) -> Option<consensus::Input> {
        match self {
            KnownSets::Fixed(_) => None,
            KnownSets::Changing {
                from,
                current,
                next,
            } => (height == *from).then(|| consensus::Input::ValidatorSets {
                height,
                current: current.clone(),
                next: next.clone(),
            }),
        }
    }

    /// The last known set, and its height (protocol 1: the genesis set, `u64::MAX`).
    pub fn latest(&self) -> (u64, &ValidatorSet) {
        match self {
            KnownSets::Fixed(set) => (u64::MAX, set),
            KnownSets::Changing { from, next, .. } => (from.saturating_add(1), next),
        }
    }

    /// The sets a protocol-2 chain whose tip is `tip` has stored for the next two heights.
    pub fn after<R: StateReader + ?Sized>(store: &R, tip: u64) -> Result<Self, StoreError> {
        let from = tip.saturating_add(1);
        let sets = ledger::block::block_sets(store, from)?;
        Ok(Self::from_block_sets(from, sets))
    }

    /// The sets of `from` and `from + 1` out of the sets of a block at `from`.
    pub fn from_block_sets(from: u64, sets: BlockSets) -> Self {
        KnownSets::Changing {
            from,
            current: sets.current,
            next: sets.next,
        }
    }
}

/// The set of `height` on a protocol-2 chain whose tip is `tip`: the stored set, known
/// up to `tip + 2` (a store answers for any height with the last set it holds, which
/// above `tip + 2` may not be the set that height gets).
pub fn stored_set_at<R: StateReader + ?Sized>(
    store: &R,
    tip: u64,
    height: u64,
) -> Result<Option<ValidatorSet>, StoreError> {
    if height == 0 || height > tip.saturating_add(2) {
        return Ok(None);
    }
    ledger::staking::validator_set_at(store, height).map(Some)
}

/// Whether more than 1/3 of `trusted`'s power signed `commit` as the commit of `hash` at
/// `height`: at least one honest validator of a set we trust says the block was committed
/// (the skipping rule of CometBFT's light client). Signers outside `trusted` are skipped;
/// an unsorted list or a bad signature of a trusted signer makes it false. What sync uses
/// on protocol 2 to believe a fetched height exists before its own set is known; the block
/// is still checked with its own set when it is applied.
pub fn vouches(
    trusted: &ValidatorSet,
    chain_id: &str,
    height: u64,
    hash: &ledger::Hash,
    commit: &ledger::types::Commit,
) -> bool {
    if commit.height != height || &commit.block_hash != hash {
        return false;
    }
    if !commit
        .signatures
        .windows(2)
        .all(|w| w[0].validator < w[1].validator)
    {
        return false;
    }
    let bytes = ledger::types::Vote {
        chain_id: chain_id.to_string(),
        height,
        round: commit.round,
        kind: ledger::types::VoteKind::Precommit,
        block_hash: Some(commit.block_hash),
    }
    .signing_bytes();
    let mut power: u64 = 0;
    for sig in &commit.signatures {
        let Some(v) = trusted.get(&sig.validator) else {
            continue;
        };
        if ledger::crypto::verify(&v.pubkey, &bytes, &sig.signature).is_err() {
            return false;
        }
        power = power.saturating_add(v.power);
        if trusted.is_one_third(power) {
            return true;
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::key;
    use ledger::types::Validator;

    fn set(names: &[&str]) -> ValidatorSet {
        let mut v: Vec<Validator> = names
            .iter()
            .map(|n| {
                let k = key(n);
                Validator {
                    address: k.address(),
                    pubkey: k.public_key(),
                    power: 1,
                }
            })
            .collect();
        v.sort_by_key(|v| v.address);
        ValidatorSet::new(v).unwrap()
    }

    #[test]
    fn a_changing_chain_knows_two_heights_and_a_fixed_one_every_height() {
        let (a, b) = (set(&["a"]), set(&["a", "b"]));
        let fixed = KnownSets::Fixed(a.clone());
        assert_eq!(fixed.at(1).unwrap().hash(), a.hash());
        assert_eq!(fixed.at(1_000_000).unwrap().hash(), a.hash());
        assert!(fixed.announcement(5).is_none());
        let changing = KnownSets::Changing {
            from: 5,
            current: a.clone(),
            next: b.clone(),
        };
        assert!(changing.at(4).is_none());
        assert_eq!(changing.at(5).unwrap().hash(), a.hash());
        assert_eq!(changing.at(6).unwrap().hash(), b.hash());
        assert!(changing.at(7).is_none(), "a height past tip + 2 is unknown");
        assert!(changing.announcement(6).is_none());
        assert!(matches!(
            changing.announcement(5),
            Some(consensus::Input::ValidatorSets { height: 5, .. })
        ));
        assert_eq!(changing.latest().0, 6);
    }

    /// More than a third of the trusted set's power vouches for a commit; a third does not,
    /// strangers add nothing, and a forged signature of a trusted signer spoils it.
    #[test]
    fn a_commit_is_vouched_for_by_more_than_a_third_of_a_trusted_set() {
        let names = ["a", "b", "c", "d", "e", "f"];
        let trusted = set(&names[..3]);
        let hash = [7; 32];
        let sign = |who: &[&str]| {
            let keys: Vec<_> = who.iter().map(|n| key(n)).collect();
            ledger::block::sign_commit("c", 5, 0, hash, &keys.iter().collect::<Vec<_>>())
        };
        assert!(vouches(&trusted, "c", 5, &hash, &sign(&["a", "b"])));
        assert!(vouches(
            &trusted,
            "c",
            5,
            &hash,
            &sign(&["b", "c", "d", "e"])
        ));
        assert!(
            !vouches(&trusted, "c", 5, &hash, &sign(&["a", "d", "e", "f"])),
            "1/3"
        );
        assert!(
            !vouches(&trusted, "c", 6, &hash, &sign(&["a", "b"])),
            "height"
        );
        assert!(
            !vouches(&trusted, "c", 5, &[8; 32], &sign(&["a", "b"])),
            "block"
        );
        assert!(
            !vouches(&trusted, "other", 5, &hash, &sign(&["a", "b"])),
            "chain"
        );
        let mut forged = sign(&["a", "b", "c"]);
        forged.signatures[0].signature[5] ^= 1;
        assert!(!vouches(&trusted, "c", 5, &hash, &forged));
    }
}
