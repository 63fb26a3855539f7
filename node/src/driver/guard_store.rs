//! The signing guard's durable store: one synced write in the store's consensus table (the
//! `consensus` column family in RocksDB), done before any signature leaves the node.
//!
//! The state is read back with the bound the guard itself computes from its limits
//! ([`consensus::MAX_GUARD_STATE_BYTES`]), and the guard refuses to save anything larger,
//! so every state it saved loads again after a restart (a fixed 4 KiB cap used to fail a
//! restart once 39 validators' prevotes were in the proof of lock).

use std::sync::Arc;

use consensus::{GuardState, GuardStore};
use ledger::codec::encode;
use ledger::store::{ConsensusStore, StoreError};

const GUARD_KEY: &[u8] = b"signing_guard";

pub struct StoreGuard<S> {
    store: Arc<S>,
}

impl<S> StoreGuard<S> {
    pub fn new(store: Arc<S>) -> Self {
        Self { store }
    }
}

impl<S: ConsensusStore> GuardStore for StoreGuard<S> {
    type Error = StoreError;

    fn load(&self) -> Result<Option<GuardState>, StoreError> {
        match self.store.consensus_get(GUARD_KEY)? {
            None => Ok(None),
            Some(bytes) => GuardState::decode(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    what: "signing guard state".into(),
                    detail: e.to_string(),
                }),
        }
    }

    fn save(&mut self, state: &GuardState) -> Result<(), StoreError> {
        self.store.consensus_put(GUARD_KEY, &encode(state))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use consensus::{
        LastSigned, Locks, RoundValue, SignStep, SigningGuard, MAX_GUARD_STATE_BYTES,
        MAX_HEIGHT_SIGNED, MAX_VALIDATORS,
    };
    use ledger::crypto::Keypair;
    use ledger::genesis::{Genesis, GenesisFile, GenesisValidator, Params, MAX_CHAIN_ID_LEN};
    use ledger::store::rocks::RocksStore;
    use ledger::types::{SignedVote, Vote, VoteKind};

    fn key(i: usize) -> Keypair {
        Keypair::from_secret_bytes(&ledger::sha256(format!("guard-store-{i}").as_bytes())).unwrap()
    }

    fn open(dir: &std::path::Path, chain_id: &str) -> Arc<RocksStore> {
        let file = GenesisFile {
            chain_id: chain_id.into(),
            genesis_time_ms: 0,
            params: Params::default(),
            validators: vec![GenesisValidator {
                name: "v".into(),
                pubkey: hex::encode(key(0).public_key()),
                power: 1,
                operator: None,
            }],
            accounts: vec![],
        };
        let genesis = Genesis::from_bytes("g.json", &serde_json::to_vec(&file).unwrap()).unwrap();
        Arc::new(RocksStore::open(dir, &genesis).unwrap())
    }

    fn prevote(chain_id: &str, round: u32, hash: [u8; 32]) -> Vote {
        Vote {
            chain_id: chain_id.into(),
            height: 1,
            round,
            kind: VoteKind::Prevote,
            block_hash: Some(hash),
        }
    }

    /// A node with 40 validators locks on a block with all 40 prevotes as its proof of
    /// lock, keeps voting for 95 more rounds at the same height (the guard's 192 signed
    /// messages), and restarts: the guard must open again with the same state.
    #[test]
    fn forty_validators_guard_state_survives_a_restart() {
        const CHAIN: &str = "tally-guard-store";
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), CHAIN);
        let hash = [0xb0; 32];
        let keys: Vec<Keypair> = (0..40).map(key).collect();
        let pol: Vec<SignedVote> = keys
            .iter()
            .map(|k| k.sign_vote(prevote(CHAIN, 0, hash)))
            .collect();
        let locks = Locks {
            locked: Some(RoundValue {
                round: 0,
                block_hash: hash,
            }),
            valid: Some(RoundValue {
                round: 0,
                block_hash: hash,
            }),
            valid_pol: pol,
        };
        let mut guard = SigningGuard::open(StoreGuard::new(store.clone())).unwrap();
        for round in 0..(MAX_HEIGHT_SIGNED as u32 / 2 + 1) {
            for kind in [VoteKind::Prevote, VoteKind::Precommit] {
                let vote = Vote {
                    kind,
                    ..prevote(CHAIN, round, hash)
                };
                guard.authorize_vote(&vote, locks.clone()).unwrap();
            }
        }
        let saved = guard.state().clone();
        assert_eq!(saved.height_signed.len(), MAX_HEIGHT_SIGNED);
        assert_eq!(saved.valid_pol.len(), 40);
        assert!(
            saved.encoded_len() > 4096,
            "the case the old 4 KiB cap broke"
        );
        drop(guard);
        let reopened = SigningGuard::open(StoreGuard::new(store))
            .map_err(|e| format!("cannot read the signing guard state: {e}"))
            .unwrap();
        assert_eq!(reopened.state(), &saved);
    }

    /// The largest state the guard can build (every limit at its maximum) is exactly
    /// `MAX_GUARD_STATE_BYTES` and round-trips through the RocksDB store.
    #[test]
    fn the_largest_guard_state_round_trips() {
        let chain: String = "c".repeat(MAX_CHAIN_ID_LEN);
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &chain);
        let hash = Some([0xff; 32]);
        let signed = |round: u32| LastSigned {
            height: u64::MAX,
            round,
            step: SignStep::Precommit,
            block_hash: hash,
        };
        let value = Some(RoundValue {
            round: u32::MAX,
            block_hash: [0xff; 32],
        });
        let vote = |i: usize| SignedVote {
            vote: Vote {
                chain_id: chain.clone(),
                height: u64::MAX,
                round: u32::MAX,
                kind: VoteKind::Prevote,
                block_hash: hash,
            },
            validator: ledger::sha256(&i.to_le_bytes())[..20].try_into().unwrap(),
            signature: [0xff; 64],
        };
        let state = GuardState {
            last_signed: Some(signed(u32::MAX)),
            height_signed: (0..MAX_HEIGHT_SIGNED as u32).map(signed).collect(),
            locked: value,
            valid: value,
            valid_pol: (0..MAX_VALIDATORS).map(vote).collect(),
        };
        assert_eq!(state.encoded_len(), MAX_GUARD_STATE_BYTES);
        let mut guard_store = StoreGuard::new(store);
        guard_store.save(&state).unwrap();
        assert_eq!(guard_store.load().unwrap(), Some(state));
    }
}
