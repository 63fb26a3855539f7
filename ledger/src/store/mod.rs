//! Storage behind a small trait: RocksDB for nodes ([`rocks::RocksStore`]) and an
//! in-memory twin for the simulator and unit tests ([`memory::MemStore`]). Committing a
//! block is one atomic write: block, commit, indexes, state changes and tip together.

pub mod memory;
#[cfg(feature = "rocksdb")]
mod migrate;
#[cfg(feature = "rocksdb")]
pub mod rocks;
#[cfg(feature = "rocksdb")]
mod tables;

use borsh::{BorshDeserialize, BorshSerialize};

use crate::genesis::Genesis;
use crate::hash::{sha256, Hash, ZERO_HASH};
use crate::state::{compute_update, StateReader, StateUpdate, EMPTY_ROOT};
use crate::types::{Account, Block, Commit};

/// Version of the on-disk layout. Bump it with a migration in `migrate`.
/// 1: only blocks, commits and the tip carry a checksum.
/// 2: every record but the schema version carries one (`tables`).
/// 3: each block's header is stored apart too (`tables::Headers`).
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// RocksDB refused an operation; `source` is its own error (an I/O error, a corruption
    /// it detected with its block checksums, a lock held by another process).
    #[cfg(feature = "rocksdb")]
    #[error("database error {doing}: {source}")]
    Rocks {
        doing: String,
        #[source]
        source: rocksdb::Error,
    },
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

/// Read side of the chain store: blocks, commits, their indexes, the tip, and (through
/// [`StateReader`]) the state.
pub trait ChainReader: StateReader + Send + Sync {
    fn tip(&self) -> Result<Tip, StoreError>;
    fn block(&self, height: u64) -> Result<Option<Block>, StoreError>;
    /// The commit that finalized the block at `height`.
    fn commit(&self, height: u64) -> Result<Option<Commit>, StoreError>;
    fn height_of(&self, block_hash: &Hash) -> Result<Option<u64>, StoreError>;
    fn tx_location(&self, tx_id: &Hash) -> Result<Option<TxLocation>, StoreError>;
    fn genesis_hash(&self) -> Result<Hash, StoreError>;
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
}

/// The consensus side table: safety records (signing guard, evidence) by key, kept apart
/// from the chain because only the consensus engine reads or writes them, and it writes
/// them between blocks.
pub trait ConsensusStore: Send + Sync {
    fn consensus_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Durably (synced) stores a record.
    fn consensus_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
}

/// Accounts per tree version when the genesis state is built. A genesis with up to this
/// many accounts is one update at version 0, like a block's. A larger one is built in
/// key-hash order in chunks of this many accounts, one tree version each (0, 1, 2, ...),
/// each written before the next is computed, so building a million-account state holds
/// one chunk's tree nodes in memory instead of all of them. The root is the same either
/// way: jmt hashes a node from its children's hashes only, never from versions, and the
/// tree's shape depends only on the set of keys. Node start with 1M accounts (release):
/// one update peaked at 3.0 GB and took 18.7 s (glibc); chunks of 65,536 at 350 MB and
/// 16.9 s, of 16,384 at 200 MB and 9.7 s (mimalloc, since dropped; 184 MB with glibc). Smaller working
/// sets are faster too.
pub const GENESIS_CHUNK: usize = 16_384;

/// Builds the genesis state on top of the empty state `reader` and hands each update to
/// `apply`, which must make it visible to `reader` before returning. Returns the final tree
/// version and root ((0, [`EMPTY_ROOT`]) without accounts, when `apply` is never called).
pub fn build_genesis_state<R: StateReader + ?Sized>(
    reader: &R,
    genesis: &Genesis,
    chunk: usize,
    mut apply: impl FnMut(StateUpdate) -> Result<(), StoreError>,
) -> Result<(u64, Hash), StoreError> {
    if genesis.accounts_released() {
        return Err(StoreError::Db(
            "cannot build the genesis state: this process released the genesis accounts \
             from memory; load genesis.json again"
                .into(),
        ));
    }
    // (key hash, index) sorted: 40 bytes per account.
    let mut order: Vec<(Hash, usize)> = genesis
        .accounts
        .iter()
        .enumerate()
        .map(|(i, (addr, _))| (crate::state::account_key(addr), i))
        .collect();
    order.sort_unstable();
    let mut last = (0, EMPTY_ROOT);
    for part in order.chunks(chunk.max(1)) {
        let changes = part
            .iter()
            .map(|(key, i)| {
                let (addr, balance) = genesis.accounts[*i];
                (*key, (addr, Account { balance, nonce: 0 }))
            })
            .collect();
        let update = compute_update(reader, changes)?;
        last = (update.version, update.root);
        apply(update)?;
    }
    if genesis.params.protocol_version >= crate::types::PROTOCOL_2 {
        // Protocol 2: the genesis bonds and validator records, one more tree version after
        // the accounts', and the set of heights 1 and 2.
        let mut entries = std::collections::BTreeMap::new();
        let mut put = |preimage: Vec<u8>, value: Vec<u8>| {
            entries.insert(sha256(&preimage), (preimage, Some(value)));
        };
        for (operator, validator, stake) in genesis.bonds() {
            put(
                crate::staking::bond_key_bytes(&operator, &validator.pubkey).to_vec(),
                crate::codec::encode(&crate::staking::BondRecord { amount: stake }),
            );
            put(
                crate::staking::validator_key_bytes(&validator.pubkey).to_vec(),
                crate::codec::encode(&crate::staking::ValidatorRecord {
                    stake,
                    jailed_until_height: 0,
                    consecutive_missed: 0,
                }),
            );
        }
        let mut update = crate::state::compute_update_with(
            reader,
            std::collections::BTreeMap::new(),
            entries,
            &std::collections::HashMap::new(),
            crate::state::tree_writer(),
        )?;
        update.validator_sets = vec![(1, genesis.validators.validators().to_vec())];
        last = (update.version, update.root);
        apply(update)?;
    }
    Ok(last)
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
/// corrupted or overwritten record is detected on read instead of decoded into garbage:
/// `sha256(borsh(value))[..8] ‖ borsh(value)`, written into `out` (cleared first), so a
/// block's batch seals thousands of records into one reused buffer.
#[cfg_attr(not(feature = "rocksdb"), allow(dead_code))] // the disk format, used by `rocks`
pub(crate) fn seal_into<T: BorshSerialize>(value: &T, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0; 8]);
    value
        .serialize(out)
        .expect("borsh encoding into a Vec cannot fail");
    let sum = sha256(&out[8..]);
    out[..8].copy_from_slice(&sum[..8]);
}

#[cfg_attr(not(feature = "rocksdb"), allow(dead_code))] // the disk format, used by `rocks`
/// `what` names the record, and is called only for an error: reads are on the hot path
/// (every tree node of every block), and naming a tree node costs more than decoding it.
pub(crate) fn unseal(what: impl FnOnce() -> String, sealed: &[u8]) -> Result<&[u8], StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        what: what(),
        detail: detail.into(),
    };
    if sealed.len() < 8 {
        return Err(corrupt("record shorter than its checksum"));
    }
    let (sum, payload) = sealed.split_at(8);
    if sum != &sha256(payload)[..8] {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(payload)
}

#[cfg_attr(not(feature = "rocksdb"), allow(dead_code))] // the disk format, used by `rocks`
/// A sealed borsh record; `what` as for [`unseal`].
pub(crate) fn decode_record<T: BorshDeserialize>(
    what: impl Fn() -> String,
    sealed: &[u8],
) -> Result<T, StoreError> {
    let payload = unseal(&what, sealed)?;
    borsh::from_slice(payload).map_err(|e| StoreError::Corrupt {
        what: what(),
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

/// Stores and chains for the unit tests of the store's modules.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;
    use crate::genesis::{write_json, GenesisFile};

    /// A genesis with `n` bulk accounts.
    pub(crate) fn bulk_genesis(n: u64) -> Genesis {
        let file: GenesisFile = serde_json::from_value(serde_json::json!({
            "chain_id": "tally-test",
            "genesis_time_ms": 0,
            "params": {"block_max_txs": 100, "block_max_bytes": 100000, "max_tx_bytes": 1024, "min_fee": 1},
            "validators": [{"name": "v0", "pubkey": "020c999b74a4fc101fbd0cbc943ce6da0219717b6e35599b72fe6fa57369e516c0", "power": 10}],
            "accounts": []
        }))
        .unwrap();
        let mut bytes = Vec::new();
        write_json(&mut bytes, &file, n, |_| {}).unwrap();
        Genesis::from_bytes("genesis.json", &bytes).unwrap()
    }

    #[cfg(feature = "rocksdb")]
    /// The made-up tx ids of block `height` (the store does not look inside blocks).
    pub(crate) fn tx_ids(height: u64) -> [Hash; 2] {
        [
            sha256(&height.to_le_bytes()),
            sha256(&(height + 1000).to_le_bytes()),
        ]
    }

    #[cfg(feature = "rocksdb")]
    /// Commits `n` empty blocks on top of `store`'s tip, each with its commit (unsigned:
    /// the store does not verify it) and the ids of [`tx_ids`].
    pub(crate) fn grow<S: ChainWriter>(store: &S, n: u64) {
        for _ in 0..n {
            let tip = store.tip().unwrap();
            let height = tip.height + 1;
            let template = crate::block::BlockTemplate {
                chain_id: "tally-test".into(),
                height,
                round: 0,
                time_ms: height * 1000,
                prev_hash: tip.block_hash,
                validators_hash: [1; 32],
                proposer: [2; 20],
                last_commit: store.commit(tip.height).unwrap(),
            };
            let block = crate::block::assemble_empty(template, tip.state_root);
            let commit = Commit {
                height,
                round: 0,
                block_hash: block.hash(),
                signatures: Vec::new(),
            };
            store
                .commit_block(&block, &commit, &StateUpdate::default(), &tx_ids(height))
                .unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::bulk_genesis;
    use super::memory::MemStore;
    use super::*;
    use crate::genesis::bulk_account_address;
    use crate::state::{compute_update, prove_account};

    /// One more version on top: a change to an existing account and a new account.
    fn next_root<S: StateReader>(store: &S) -> Hash {
        let mut changes = std::collections::BTreeMap::new();
        for (addr, balance) in [(bulk_account_address(7), 1), ([0xab; 20], 2)] {
            changes.insert(
                crate::state::account_key(&addr),
                (addr, Account { balance, nonce: 3 }),
            );
        }
        compute_update(store, changes).unwrap().root
    }

    #[test]
    fn chunked_genesis_state_has_the_same_root_accounts_and_proofs() {
        let g = bulk_genesis(1000);
        let whole = MemStore::new_chunked(&g, usize::MAX).unwrap();
        let chunked = MemStore::new_chunked(&g, 64).unwrap();
        let (v1, root) = whole.tree_version().unwrap().unwrap();
        let (v2, root2) = chunked.tree_version().unwrap().unwrap();
        assert_eq!((v1, v2), (0, 1000 / 64));
        assert_eq!(root, root2);
        assert_eq!(chunked.tip().unwrap().state_root, root);
        for (addr, balance) in g.accounts.iter().step_by(97) {
            let (acct, proof, r) = prove_account(&chunked, addr).unwrap();
            assert_eq!(acct.map(|a| a.balance), Some(*balance));
            assert_eq!(r, root);
            proof.verify(&root, addr, acct.as_ref()).unwrap();
        }
        assert_eq!(next_root(&whole), next_root(&chunked));
    }

    /// Random transfers' worth of changes: `n` accounts, existing ones and new ones.
    fn random_changes(
        seed: u64,
        n: u64,
    ) -> std::collections::BTreeMap<Hash, (crate::types::Address, Account)> {
        (0..n)
            .map(|i| {
                let pick = sha256(&[seed.to_le_bytes(), i.to_le_bytes()].concat());
                let j = u64::from_le_bytes(pick[..8].try_into().unwrap());
                // Two in three are bulk accounts (updates), one in three are new.
                let addr = if j % 3 == 0 {
                    let mut a = [0u8; 20];
                    a.copy_from_slice(&pick[12..]);
                    a
                } else {
                    bulk_account_address(j % 5000)
                };
                let acct = Account {
                    balance: j,
                    nonce: seed,
                };
                (crate::state::account_key(&addr), (addr, acct))
            })
            .collect()
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn rocksdb_node_cache_and_batch_writer_keep_the_roots_of_jmt_without_cache() {
        use super::rocks::{DEFAULT_TREE_CACHE_LEVELS, MAX_TREE_CACHE_LEVELS};
        node_cache_and_batch_writer_keep_the_roots_of_jmt(DEFAULT_TREE_CACHE_LEVELS);
        node_cache_and_batch_writer_keep_the_roots_of_jmt(MAX_TREE_CACHE_LEVELS);
    }

    #[cfg(feature = "rocksdb")]
    fn node_cache_and_batch_writer_keep_the_roots_of_jmt(levels: usize) {
        use super::rocks::{tree_cache_bound, RocksConfig, RocksStore};
        use crate::state::{compute_update_with, AccountReader, TreeWriter};
        let g = bulk_genesis(5000);
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // A: batch writer, upper `levels` levels cached. B: jmt's writer, no cache.
        let config = RocksConfig {
            tree_cache_levels: levels,
            ..RocksConfig::default()
        };
        let mut a = RocksStore::open_with(dir_a.path(), &g, &config).unwrap();
        let mut b = RocksStore::open(dir_b.path(), &g).unwrap();
        b.set_tree_cache_levels(0);
        let max_cached = tree_cache_bound(levels);
        for round in 0..30u64 {
            let changes = random_changes(round, 1 + round * 13);
            // A is given the previous values, as execution does.
            let previous = changes
                .keys()
                .filter_map(|k| Some((*k, a.account_by_key(k).unwrap()?)))
                .collect();
            let ua = compute_update_with(
                &a,
                changes.clone(),
                Default::default(),
                &previous,
                TreeWriter::Batch,
            )
            .unwrap();
            let ub = compute_update_with(
                &b,
                changes,
                Default::default(),
                &Default::default(),
                TreeWriter::Jmt,
            )
            .unwrap();
            assert_eq!(ua.root, ub.root, "round {round}");
            if round == 11 {
                // A crash between the write and the cache update: the batch is on disk,
                // the cache still holds the previous version's upper nodes.
                a.replay_state_uncached(&ua).unwrap();
            } else {
                a.replay_state(&ua, round % 5 == 0).unwrap();
            }
            b.replay_state(&ub, true).unwrap();
            assert_eq!(b.tree_cache_len(), 0);
            assert!(a.tree_cache_len() > 0 && a.tree_cache_len() <= max_cached);
            if round % 10 == 9 {
                // Reopen both: A starts with an empty cache and fills it from RocksDB.
                drop((a, b));
                a = RocksStore::open_with(dir_a.path(), &g, &config).unwrap();
                b = RocksStore::open(dir_b.path(), &g).unwrap();
                b.set_tree_cache_levels(0);
                assert_eq!(a.tree_cache_len(), 0);
            }
            assert_eq!(a.tree_version().unwrap(), b.tree_version().unwrap());
        }
        // Both stores hold exactly the same tree nodes, and proofs from A verify.
        let nodes = |s: &RocksStore| -> Vec<_> {
            s.iter::<super::tables::TreeNodes>()
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(nodes(&a), nodes(&b));
        for i in (0..5000).step_by(331) {
            let addr = bulk_account_address(i);
            let (acct, proof, root) = prove_account(&a, &addr).unwrap();
            proof.verify(&root, &addr, acct.as_ref()).unwrap();
            assert_eq!(prove_account(&b, &addr).unwrap().0, acct);
        }
        let (_, a_problems) = a.check_records(10).unwrap();
        assert!(a_problems.is_empty(), "{a_problems:?}");
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn rocksdb_builds_a_multi_chunk_genesis_like_one_update() {
        use super::rocks::RocksStore;
        use crate::genesis::BULK_ACCOUNT_BALANCE;
        use crate::state::AccountReader;
        // More than one chunk, so RocksStore writes several tree versions.
        let n = GENESIS_CHUNK as u64 + 5000;
        let g = bulk_genesis(n);
        let whole = MemStore::new_chunked(&g, usize::MAX).unwrap();
        let root = whole.tree_version().unwrap().unwrap().1;
        let dir = tempfile::tempdir().unwrap();
        {
            let rocks = RocksStore::open(dir.path(), &g).unwrap();
            assert_eq!(rocks.tree_version().unwrap(), Some((1, root)));
            assert_eq!(rocks.tip().unwrap().state_root, root);
            for i in [0, 1, n / 2, n - 1] {
                let addr = bulk_account_address(i);
                assert_eq!(
                    rocks.account(&addr).unwrap().map(|a| a.balance),
                    Some(BULK_ACCOUNT_BALANCE)
                );
            }
            assert_eq!(next_root(&rocks), next_root(&whole));
            // A rebuild (start-up repair) writes the same state again.
            rocks.reset_state(&g).unwrap();
            assert_eq!(rocks.tree_version().unwrap(), Some((1, root)));
        }
        // Reopened with a genesis whose accounts were released: the hash still matches.
        let mut released = g.clone();
        released.release_accounts();
        let rocks = RocksStore::open(dir.path(), &released).unwrap();
        assert_eq!(rocks.tip().unwrap().state_root, root);
        assert!(rocks.reset_state(&released).is_err());
    }
}
