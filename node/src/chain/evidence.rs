//! Equivocation evidence: checked, bounded, and kept in the store's consensus table so it
//! survives a restart.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use consensus::Equivocation;
use ledger::codec::encode;
use ledger::store::{ConsensusStore, StoreError};
use ledger::validators::ValidatorSet;

/// Evidence records kept per validator (its oldest dropped first); the list is bounded by
/// this times the validator count.
const MAX_EVIDENCE_PER_VALIDATOR: usize = 16;
/// Evidence of a double sign older than this many heights is not recorded.
pub const EVIDENCE_MAX_AGE: u64 = 1000;
pub(super) const EVIDENCE_KEY: &[u8] = b"evidence";

/// The evidence list, shared read-only with the RPC (`GET /v1/evidence`).
pub(super) struct EvidencePool {
    list: Arc<RwLock<Vec<Equivocation>>>,
}

impl EvidencePool {
    /// Fills `list` with what the store kept.
    pub(super) fn load<S: ConsensusStore + ?Sized>(
        list: Arc<RwLock<Vec<Equivocation>>>,
        store: &S,
    ) -> Result<Self, StoreError> {
        if let Some(bytes) = store.consensus_get(EVIDENCE_KEY)? {
            let kept: Vec<Equivocation> =
                ledger::codec::decode("evidence", &bytes, 64 << 20).unwrap_or_default();
            if let Ok(mut l) = list.write() {
                *l = kept;
            }
        }
        Ok(EvidencePool { list })
    }

    /// Keeps valid evidence: at most one per (validator, height), from heights near
    /// `next` (the height being decided), and at most [`MAX_EVIDENCE_PER_VALIDATOR`] per
    /// validator (its own oldest dropped first), so one validator double-signing all day
    /// neither grows the list without end nor evicts another's evidence, and costs one
    /// synced write per height at most. `set_of` gives the validator set of a height (the
    /// genesis set on protocol 1, the stored set of that height on protocol 2; None if
    /// unknown: the evidence is not kept). True when it was new and kept.
    pub(super) fn record<S: ConsensusStore + ?Sized>(
        &self,
        chain_id: &str,
        set_of: impl FnOnce(u64) -> Option<ValidatorSet>,
        e: Equivocation,
        next: u64,
        store: &S,
    ) -> bool {
        let height = e.first.vote.height;
        if height.saturating_add(EVIDENCE_MAX_AGE) < next || height > next.saturating_add(1) {
            return false;
        }
        let validator = e.first.validator;
        let known = |list: &[Equivocation]| {
            list.iter()
                .any(|x| x.first.validator == validator && x.first.vote.height == height)
        };
        match self.list.read() {
            Ok(list) if !known(&list) => {}
            _ => return false,
        }
        // Signatures are checked only for evidence we would keep.
        let Some(set) = set_of(height) else {
            return false;
        };
        if !valid_evidence(chain_id, &set, &e) {
            return false;
        }
        let Ok(mut list) = self.list.write() else {
            return false;
        };
        tracing::warn!(
            validator = %ledger::to_hex(&validator),
            height,
            round = e.first.vote.round,
            "equivocation evidence"
        );
        list.push(e);
        let theirs = list
            .iter()
            .filter(|x| x.first.validator == validator)
            .count();
        if theirs > MAX_EVIDENCE_PER_VALIDATOR {
            if let Some(oldest) = list.iter().position(|x| x.first.validator == validator) {
                list.remove(oldest);
            }
        }
        if let Err(err) = store.consensus_put(EVIDENCE_KEY, &encode(&*list)) {
            tracing::error!(error = %err, "cannot persist evidence");
        }
        true
    }

    /// What a protocol-2 proposer of `height` offers its block: the evidence held of
    /// heights before it and at most `max_age` blocks old, newest first, at most `max`
    /// pieces, leaving out `included` ((validator, height) of pieces committed blocks
    /// carried; the block's execution leaves out whatever else does not hold).
    pub(super) fn for_block(
        &self,
        height: u64,
        max_age: u64,
        max: usize,
        included: &HashSet<([u8; 20], u64)>,
    ) -> Vec<ledger::types::Equivocation> {
        let Ok(list) = self.list.read() else {
            return Vec::new();
        };
        let mut pieces: Vec<&Equivocation> = list
            .iter()
            .filter(|e| {
                let h = e.first.vote.height;
                h < height && height - h <= max_age && !included.contains(&(e.first.validator, h))
            })
            .collect();
        pieces.sort_by_key(|e| std::cmp::Reverse(e.first.vote.height));
        pieces
            .into_iter()
            .take(max)
            .map(|e| ledger::types::Equivocation {
                a: e.first.clone(),
                b: e.second.clone(),
            })
            .collect()
    }
}

/// Two valid signatures of one validator of `set` (the set of the votes' height) for the
/// same (height, round, kind) with different block hashes.
pub fn valid_evidence(chain_id: &str, set: &ValidatorSet, e: &Equivocation) -> bool {
    let (a, b) = (&e.first, &e.second);
    let Some(v) = set.get(&a.validator) else {
        return false;
    };
    a.validator == b.validator
        && a.vote.chain_id == chain_id
        && b.vote.chain_id == chain_id
        && a.vote.height == b.vote.height
        && a.vote.round == b.vote.round
        && a.vote.kind == b.vote.kind
        && a.vote.block_hash != b.vote.block_hash
        && a.verify_signature(&v.pubkey).is_ok()
        && b.verify_signature(&v.pubkey).is_ok()
}
