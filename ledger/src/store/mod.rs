//! Storage behind a small trait: RocksDB for nodes ([`rocks::RocksStore`]) and an
//! in-memory twin for the simulator and unit tests ([`memory::MemStore`]). Committing a
//! block is one atomic write: block, commit, indexes, state changes and tip together.

pub mod memory;
pub mod rocks;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::genesis::Genesis;
use crate::hash::{sha256, Hash, ZERO_HASH};
use crate::state::{compute_update, StateReader, StateUpdate};
use crate::types::{Account, Block, Commit};

/// Version of the on-disk layout. Bump it with a migration in `rocks::migrate`.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("state tree error: {0}")]
    Tree(String),
    #[error(
        "this database was created from a different genesis (stored genesis hash {stored}, \
         genesis.json hashes to {given}); point --home at the right data directory or \
         remove the data directory to start this chain from scratch"
    )]
    GenesisMismatch { stored: String, given: String },
    #[error(
        "database schema version {found} is newer than this tallyd understands ({supported}); \
         upgrade tallyd"
    )]
    UnknownSchema { found: u32, supported: u32 },
    #[error("block {height} cannot be committed on top of tip {tip}")]
    NotNext { height: u64, tip: u64 },
}

/// The head of the committed chain. Height 0 is the genesis state (no block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Tip {
    pub height: u64,
    /// Hash of the block at `height` (zeros at genesis).
    pub block_hash: Hash,
    pub state_root: Hash,
    pub time_ms: u64,
}

/// Where a committed transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct TxLocation {
    pub height: u64,
    pub index: u32,
}

/// Read side of the chain store.
pub trait ChainReader: StateReader + Send + Sync {
    fn tip(&self) -> Result<Tip, StoreError>;
    fn block(&self, height: u64) -> Result<Option<Block>, StoreError>;
    /// The commit that finalized the block at `height`.
    fn commit(&self, height: u64) -> Result<Option<Commit>, StoreError>;
    fn height_of(&self, block_hash: &Hash) -> Result<Option<u64>, StoreError>;
    fn tx_location(&self, tx_id: &Hash) -> Result<Option<TxLocation>, StoreError>;
    fn genesis_hash(&self) -> Result<Hash, StoreError>;
    /// Consensus safety records (signing guard, evidence), by key.
    fn consensus_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Write side of the chain store.
pub trait ChainWriter: ChainReader {
    /// Commits `block` (which must extend the tip) with its `commit`, the state changes
    /// its execution produced and its tx ids, atomically and durably (synced).
    fn commit_block(
        &self,
        block: &Block,
        commit: &Commit,
        update: &StateUpdate,
        tx_ids: &[Hash],
    ) -> Result<(), StoreError>;
    /// Durably (synced) stores a consensus safety record.
    fn consensus_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
}

/// The genesis state update: every funded account at tree version 0.
pub fn genesis_update<R: StateReader + ?Sized>(
    empty: &R,
    genesis: &Genesis,
) -> Result<StateUpdate, StoreError> {
    let changes = genesis
        .accounts
        .iter()
        .map(|(addr, balance)| {
            (
                crate::state::account_key(addr),
                (
                    *addr,
                    Account {
                        balance: *balance,
                        nonce: 0,
                    },
                ),
            )
        })
        .collect();
    compute_update(empty, changes)
}

/// The tip of a freshly initialised chain.
pub fn genesis_tip(genesis: &Genesis, state_root: Hash) -> Tip {
    Tip {
        height: 0,
        block_hash: ZERO_HASH,
        state_root,
        time_ms: genesis.genesis_time_ms,
    }
}

/// Records carry an 8-byte checksum prefix (truncated SHA-256 of the payload) so a
/// corrupted or overwritten record is detected on read instead of decoded into garbage.
pub(crate) fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&sha256(payload)[..8]);
    out.extend_from_slice(payload);
    out
}

pub(crate) fn unseal<'a>(what: &str, sealed: &'a [u8]) -> Result<&'a [u8], StoreError> {
    if sealed.len() < 8 {
        return Err(StoreError::Corrupt {
            what: what.into(),
            detail: "record shorter than its checksum".into(),
        });
    }
    let (sum, payload) = sealed.split_at(8);
    if sum != &sha256(payload)[..8] {
        return Err(StoreError::Corrupt {
            what: what.into(),
            detail: "checksum mismatch".into(),
        });
    }
    Ok(payload)
}

pub(crate) fn decode_record<T: BorshDeserialize>(
    what: &str,
    sealed: &[u8],
) -> Result<T, StoreError> {
    let payload = unseal(what, sealed)?;
    borsh::from_slice(payload).map_err(|e| StoreError::Corrupt {
        what: what.into(),
        detail: e.to_string(),
    })
}

/// Checks that `block` may be committed on top of `tip`.
pub(crate) fn check_extends(tip: &Tip, block: &Block) -> Result<(), StoreError> {
    if block.header.height != tip.height + 1 || block.header.prev_hash != tip.block_hash {
        return Err(StoreError::NotNext {
            height: block.header.height,
            tip: tip.height,
        });
    }
    Ok(())
}
