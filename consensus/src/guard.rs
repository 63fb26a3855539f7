//! The signing guard: the one door every vote and proposal of this validator goes through
//! before it is signed. It refuses anything that could make us sign two conflicting
//! messages, and it persists what it allowed *before* allowing it, so a crash between
//! "persisted" and "signed" at worst loses a signature, never repeats one differently.

use borsh::{BorshDeserialize, BorshSerialize};
use ledger::codec::{decode, DecodeError};
use ledger::genesis::MAX_CHAIN_ID_LEN;
use ledger::hash::Hash;
use ledger::types::{Proposal, SignedVote, Vote, VoteKind};

use crate::types::{Locks, RoundValue};

/// How many signed messages of the current height the guard remembers.
pub const MAX_HEIGHT_SIGNED: usize = 192;

/// The most validators a chain can have (`ledger::validators::ValidatorSet::new` refuses
/// more). A proof of lock holds at most one prevote per validator.
pub const MAX_VALIDATORS: usize = u16::MAX as usize;

// borsh sizes of the parts of a [`GuardState`] (fixed-size fields; a `String` or `Vec` is
// a u32 length then its items, an `Option` one tag byte then the value).
const HASH_BYTES: usize = 32;
const LAST_SIGNED_BYTES: usize = 8 + 4 + 1 + (1 + HASH_BYTES);
const ROUND_VALUE_BYTES: usize = 4 + HASH_BYTES;
/// A prevote of the proof of lock: the vote (chain id at its longest, height, round,
/// kind, block hash) then the validator address and the signature.
const MAX_SIGNED_VOTE_BYTES: usize =
    (4 + MAX_CHAIN_ID_LEN) + 8 + 4 + 1 + (1 + HASH_BYTES) + 20 + 64;

/// The largest [`GuardState`] the guard can build, encoded: [`MAX_HEIGHT_SIGNED`] signed
/// messages, a lock, a valid value and a proof of lock with a prevote from each of
/// [`MAX_VALIDATORS`] validators (about 12.4 MiB; 4 validators need under 10 KiB). Stores
/// read the state with this bound and the guard refuses to persist (so to sign) anything
/// larger, so whatever was saved can be loaded again after a restart.
pub const MAX_GUARD_STATE_BYTES: usize = (1 + LAST_SIGNED_BYTES)
    + (4 + MAX_HEIGHT_SIGNED * LAST_SIGNED_BYTES)
    + 2 * (1 + ROUND_VALUE_BYTES)
    + (4 + MAX_VALIDATORS * MAX_SIGNED_VOTE_BYTES);

/// The signing steps of a round in the order a validator signs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, BorshSerialize, BorshDeserialize)]
pub enum SignStep {
    Propose,
    Prevote,
    Precommit,
}

/// The last message we allowed to be signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct LastSigned {
    pub height: u64,
    pub round: u32,
    pub step: SignStep,
    /// `None` for a nil vote.
    pub block_hash: Option<Hash>,
}

impl LastSigned {
    fn position(&self) -> (u64, u32, SignStep) {
        (self.height, self.round, self.step)
    }
}

/// What the guard persists. The locks belong to `last_signed.height`.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct GuardState {
    pub last_signed: Option<LastSigned>,
    /// Everything signed at `last_signed.height`, in signing order (the last
    /// [`MAX_HEIGHT_SIGNED`]). These exact messages may be signed again: a restarted
    /// validator re-broadcasts them, because peers may still need them (a precommit of
    /// an earlier round that only we held can be what keeps 2f+1 others from moving on).
    pub height_signed: Vec<LastSigned>,
    pub locked: Option<RoundValue>,
    pub valid: Option<RoundValue>,
    /// The prevotes proving `valid` (see [`Locks::valid_pol`]).
    pub valid_pol: Vec<SignedVote>,
}

impl GuardState {
    /// Decodes a stored state, refusing more than [`MAX_GUARD_STATE_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode("signing guard state", bytes, MAX_GUARD_STATE_BYTES)
    }

    /// Size of the borsh encoding.
    pub fn encoded_len(&self) -> usize {
        borsh::object_length(self).expect("borsh length of an in-memory value cannot fail")
    }
}

/// Durable storage of the [`GuardState`]. `save` must not return before the state is on
/// stable storage (the node's RocksDB implementation writes with sync).
pub trait GuardStore {
    type Error: std::error::Error + Send + Sync + 'static;
    fn load(&self) -> Result<Option<GuardState>, Self::Error>;
    fn save(&mut self, state: &GuardState) -> Result<(), Self::Error>;
}

/// In-memory store for tests and simulation. Keeps the borsh bytes, as a disk would, so
/// the encoding is exercised on every save and load.
#[derive(Clone, Debug, Default)]
pub struct MemoryGuardStore {
    bytes: Option<Vec<u8>>,
    /// When set, every save fails (to test that the guard then refuses to sign).
    pub fail_saves: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryStoreError {
    #[error("injected save failure")]
    Injected,
    #[error("stored guard state does not decode: {0}")]
    Decode(String),
}

impl GuardStore for MemoryGuardStore {
    type Error = MemoryStoreError;

    fn load(&self) -> Result<Option<GuardState>, Self::Error> {
        self.bytes
            .as_deref()
            .map(|b| GuardState::decode(b).map_err(|e| MemoryStoreError::Decode(e.to_string())))
            .transpose()
    }

    fn save(&mut self, state: &GuardState) -> Result<(), Self::Error> {
        if self.fail_saves {
            return Err(MemoryStoreError::Injected);
        }
        self.bytes = Some(borsh::to_vec(state).expect("borsh encoding into a Vec cannot fail"));
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError<E: std::error::Error + 'static> {
    #[error(
        "refusing to sign {attempted:?}: it conflicts with the already signed {signed:?} \
         (same or earlier height/round/step with another block); this is the double-sign \
         protection working, not a bug to work around"
    )]
    Conflict {
        signed: LastSigned,
        attempted: LastSigned,
    },
    #[error("could not persist the signing state, so the message was not signed: {0}")]
    Store(#[source] E),
    /// Cannot happen with the core's own locks (see [`MAX_GUARD_STATE_BYTES`]); refused
    /// rather than saved, because a state too large to load would stop the next start.
    #[error(
        "refusing to sign: the signing state would be {size} bytes, more than the \
         {max}-byte limit it can be read back with"
    )]
    TooLarge { size: usize, max: usize },
}

/// See the module documentation.
#[derive(Debug)]
pub struct SigningGuard<S: GuardStore> {
    store: S,
    state: GuardState,
}

impl<S: GuardStore> SigningGuard<S> {
    /// Loads the persisted state (after a restart this is what keeps us from signing
    /// anything that conflicts with what we signed before the crash).
    pub fn open(store: S) -> Result<Self, S::Error> {
        let state = store.load()?.unwrap_or_default();
        Ok(Self { store, state })
    }

    pub fn state(&self) -> &GuardState {
        &self.state
    }

    /// Gives the store back (the simulator keeps it across a simulated crash).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Permission to sign `vote`. `locks` are the core's current [`crate::Consensus::locks`].
    pub fn authorize_vote(
        &mut self,
        vote: &Vote,
        locks: Locks,
    ) -> Result<(), GuardError<S::Error>> {
        let step = match vote.kind {
            VoteKind::Prevote => SignStep::Prevote,
            VoteKind::Precommit => SignStep::Precommit,
        };
        let mut locks = locks;
        if let (VoteKind::Precommit, Some(hash)) = (vote.kind, vote.block_hash) {
            // Line 36-38: a precommit for v is exactly the moment we lock on v, whatever
            // the caller passed.
            locks.locked = Some(RoundValue {
                round: vote.round,
                block_hash: hash,
            });
        }
        self.authorize(
            LastSigned {
                height: vote.height,
                round: vote.round,
                step,
                block_hash: vote.block_hash,
            },
            locks,
        )
    }

    /// Permission to sign `proposal`.
    pub fn authorize_proposal(
        &mut self,
        proposal: &Proposal,
        locks: Locks,
    ) -> Result<(), GuardError<S::Error>> {
        self.authorize(
            LastSigned {
                height: proposal.height,
                round: proposal.round,
                step: SignStep::Propose,
                block_hash: Some(proposal.block_hash),
            },
            locks,
        )
    }

    fn authorize(
        &mut self,
        attempted: LastSigned,
        locks: Locks,
    ) -> Result<(), GuardError<S::Error>> {
        if self.state.height_signed.contains(&attempted) {
            // Re-signing an identical message is harmless (RFC 6979 makes it
            // byte-identical) and lets a restarted node re-broadcast.
            return Ok(());
        }
        let mut next = GuardState {
            last_signed: Some(attempted),
            height_signed: vec![attempted],
            locked: locks.locked,
            valid: locks.valid,
            valid_pol: locks.valid_pol,
        };
        if let Some(signed) = self.state.last_signed {
            if attempted.position() <= signed.position() {
                return Err(GuardError::Conflict { signed, attempted });
            }
            if attempted.height == signed.height {
                // A lock only ever moves to a later round within a height; never let a
                // stale caller lose it.
                next.locked = later(self.state.locked, next.locked);
                if later(self.state.valid, next.valid) != next.valid {
                    next.valid = self.state.valid;
                    next.valid_pol = self.state.valid_pol.clone();
                }
                let keep = self.state.height_signed.len().min(MAX_HEIGHT_SIGNED - 1);
                let skip = self.state.height_signed.len() - keep;
                next.height_signed = self.state.height_signed[skip..].to_vec();
                next.height_signed.push(attempted);
            }
        }
        let size = next.encoded_len();
        if size > MAX_GUARD_STATE_BYTES {
            return Err(GuardError::TooLarge {
                size,
                max: MAX_GUARD_STATE_BYTES,
            });
        }
        self.store.save(&next).map_err(GuardError::Store)?;
        self.state = next;
        Ok(())
    }
}

fn later(a: Option<RoundValue>, b: Option<RoundValue>) -> Option<RoundValue> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.round >= x.round { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}
