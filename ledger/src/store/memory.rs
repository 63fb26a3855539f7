//! An in-memory store with the same semantics as the RocksDB one (minus durability), for
//! the consensus simulator and unit tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use jmt::storage::{Node, NodeKey};

use super::{
    build_genesis_state, check_extends, genesis_tip, ChainReader, ChainWriter, ConsensusStore,
    StoreError, Tip, TxLocation,
};
use crate::genesis::Genesis;
use crate::hash::Hash;
use crate::state::{AccountReader, Entries, StateReader, StateUpdate};
use crate::types::{Account, Block, Commit, Header, Validator};

#[derive(Default)]
struct Inner {
    genesis_hash: Hash,
    tip: Option<Tip>,
    blocks: BTreeMap<u64, Block>,
    commits: BTreeMap<u64, Commit>,
    by_hash: HashMap<Hash, u64>,
    txs: HashMap<Hash, TxLocation>,
    accounts: HashMap<Hash, Account>,
    nodes: BTreeMap<NodeKey, Node>,
    tree: Option<(u64, Hash)>,
    consensus: HashMap<Vec<u8>, Vec<u8>>,
    /// Protocol-2 entries by preimage.
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Protocol-2 validator sets by the first height they apply to.
    sets: BTreeMap<u64, Vec<Validator>>,
}

impl Inner {
    fn apply_state(&mut self, update: &StateUpdate) {
        for (height, set) in &update.validator_sets {
            self.sets.insert(*height, set.clone());
        }
        if !update.changes_tree() {
            return;
        }
        for (key, _, acct) in &update.accounts {
            self.accounts.insert(*key, *acct);
        }
        for (_, preimage, value) in &update.entries {
            match value {
                Some(v) => self.entries.insert(preimage.clone(), v.clone()),
                None => self.entries.remove(preimage),
            };
        }
        for key in &update.stale_nodes {
            self.nodes.remove(key);
        }
        for (key, node) in &update.new_nodes {
            self.nodes.insert(key.clone(), node.clone());
        }
        self.tree = Some((update.version, update.root));
    }
}

pub struct MemStore {
    inner: RwLock<Inner>,
}

impl MemStore {
    /// A store holding `genesis`'s state at height 0.
    pub fn new(genesis: &Genesis) -> Result<Self, StoreError> {
        Self::new_chunked(genesis, super::GENESIS_CHUNK)
    }

    /// [`Self::new`] with the genesis state built `chunk` accounts per tree version.
    pub(crate) fn new_chunked(genesis: &Genesis, chunk: usize) -> Result<Self, StoreError> {
        let store = Self {
            inner: RwLock::new(Inner::default()),
        };
        let (version, root) = build_genesis_state(&store, genesis, chunk, |update| {
            store.write().apply_state(&update);
            Ok(())
        })?;
        {
            let mut inner = store.write();
            inner.tree = Some((version, root));
            inner.genesis_hash = genesis.hash;
            inner.tip = Some(genesis_tip(genesis, root));
            // As `RocksStore::open` does: every chain stores the genesis set at height 1.
            inner
                .sets
                .entry(1)
                .or_insert_with(|| genesis.validators.validators().to_vec());
        }
        Ok(store)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A poisoned lock means a panic mid-write in a test; the data is still consistent
        // because every write below is a plain sequence of inserts.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl AccountReader for MemStore {
    fn account_by_key(&self, key: &Hash) -> Result<Option<Account>, StoreError> {
        Ok(self.read().accounts.get(key).copied())
    }
}

impl StateReader for MemStore {
    fn tree_node(&self, key: &NodeKey) -> Result<Option<Node>, StoreError> {
        Ok(self.read().nodes.get(key).cloned())
    }

    fn tree_version(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        Ok(self.read().tree)
    }

    fn entry(&self, preimage: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read().entries.get(preimage).cloned())
    }

    fn entries_with_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        Ok(self
            .read()
            .entries
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn validator_set_record(&self, height: u64) -> Result<Option<Vec<Validator>>, StoreError> {
        Ok(self
            .read()
            .sets
            .range(..=height)
            .next_back()
            .map(|(_, set)| set.clone()))
    }

    fn committed_header(&self, height: u64) -> Result<Option<Header>, StoreError> {
        Ok(self.read().blocks.get(&height).map(|b| b.header.clone()))
    }
}

impl ChainReader for MemStore {
    fn tip(&self) -> Result<Tip, StoreError> {
        self.read()
            .tip
            .ok_or_else(|| StoreError::Db("store has no genesis".into()))
    }

    fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        Ok(self.read().blocks.get(&height).cloned())
    }

    fn commit(&self, height: u64) -> Result<Option<Commit>, StoreError> {
        Ok(self.read().commits.get(&height).cloned())
    }

    fn height_of(&self, block_hash: &Hash) -> Result<Option<u64>, StoreError> {
        Ok(self.read().by_hash.get(block_hash).copied())
    }

    fn tx_location(&self, tx_id: &Hash) -> Result<Option<TxLocation>, StoreError> {
        Ok(self.read().txs.get(tx_id).copied())
    }

    fn genesis_hash(&self) -> Result<Hash, StoreError> {
        Ok(self.read().genesis_hash)
    }
}

impl ChainWriter for MemStore {
    fn commit_block(
        &self,
        block: &Block,
        commit: &Commit,
        update: &StateUpdate,
        tx_ids: &[Hash],
    ) -> Result<(), StoreError> {
        let mut inner = self.write();
        let tip = inner
            .tip
            .ok_or_else(|| StoreError::Db("store has no genesis".into()))?;
        check_extends(&tip, block)?;
        let height = block.header.height;
        let hash = block.hash();
        inner.apply_state(update);
        for (index, id) in tx_ids.iter().enumerate() {
            inner.txs.insert(
                *id,
                TxLocation {
                    height,
                    index: index as u32,
                },
            );
        }
        inner.by_hash.insert(hash, height);
        inner.blocks.insert(height, block.clone());
        inner.commits.insert(height, commit.clone());
        inner.tip = Some(Tip {
            height,
            block_hash: hash,
            state_root: block.header.state_root,
            time_ms: block.header.time_ms,
        });
        Ok(())
    }
}

impl ConsensusStore for MemStore {
    fn consensus_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read().consensus.get(key).cloned())
    }

    fn consensus_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write().consensus.insert(key.to_vec(), value.to_vec());
        Ok(())
    }
}
