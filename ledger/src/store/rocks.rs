//! The RocksDB store: one column family per kind of record (DESIGN.md section 6), typed
//! keys with big-endian heights so they sort, and one synced `WriteBatch` per block.

use std::path::Path;

use jmt::storage::{Node, NodeKey};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB,
};

use super::{
    build_genesis_state, check_extends, decode_record, genesis_tip, seal, ChainReader, ChainWriter,
    StoreError, Tip, TxLocation, GENESIS_CHUNK, SCHEMA_VERSION,
};
use crate::codec::encode;
use crate::genesis::Genesis;
use crate::hash::Hash;
use crate::state::{StateReader, StateUpdate};
use crate::types::{Account, Block, Commit};

pub(crate) const CF_BLOCKS: &str = "blocks";
pub(crate) const CF_COMMITS: &str = "commits";
pub(crate) const CF_BLOCK_INDEX: &str = "block_index";
pub(crate) const CF_TX_INDEX: &str = "tx_index";
pub(crate) const CF_STATE: &str = "state";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_CONSENSUS: &str = "consensus";
const ALL_CFS: [&str; 7] = [
    CF_BLOCKS,
    CF_COMMITS,
    CF_BLOCK_INDEX,
    CF_TX_INDEX,
    CF_STATE,
    CF_META,
    CF_CONSENSUS,
];

pub(crate) const META_SCHEMA: &[u8] = b"schema_version";
pub(crate) const META_GENESIS: &[u8] = b"genesis_hash";
const META_TIP: &[u8] = b"tip";
const META_TREE: &[u8] = b"tree";

/// State keys: accounts and tree nodes share the `state` family under distinct prefixes.
const ACCOUNT_PREFIX: u8 = b'a';
const NODE_PREFIX: u8 = b'n';

fn account_db_key(key: &Hash) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = ACCOUNT_PREFIX;
    k[1..].copy_from_slice(key);
    k
}

fn node_db_key(key: &NodeKey) -> Vec<u8> {
    let mut k = vec![NODE_PREFIX];
    k.extend_from_slice(&encode(key));
    k
}

fn db_err(e: rocksdb::Error) -> StoreError {
    StoreError::Db(e.into_string())
}

/// Tuning knobs; the defaults suit a node with up to a few million accounts. RocksDB's
/// memory is about `block_cache_bytes + write_buffer_total_bytes` plus the index and bloom
/// filter blocks of open tables (not in the cache; about 10 MiB per million accounts).
#[derive(Clone, Debug)]
pub struct RocksConfig {
    /// Shared LRU block cache for all column families.
    pub block_cache_bytes: usize,
    /// Memtable size per column family: a memtable this big is flushed.
    pub write_buffer_bytes: usize,
    /// All memtables of all column families together: past this the largest one is
    /// flushed. Without it the bound would be 7 families x 2 memtables x
    /// `write_buffer_bytes`.
    pub write_buffer_total_bytes: usize,
}

impl Default for RocksConfig {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 16 << 20,
            write_buffer_total_bytes: 64 << 20,
        }
    }
}

pub struct RocksStore {
    db: DB,
}

impl RocksStore {
    /// Opens (creating if needed) the database at `path` for `genesis`. Refuses a database
    /// made from another genesis or with an unknown schema version.
    pub fn open(path: &Path, genesis: &Genesis) -> Result<Self, StoreError> {
        Self::open_with(path, genesis, &RocksConfig::default())
    }

    pub fn open_with(
        path: &Path,
        genesis: &Genesis,
        config: &RocksConfig,
    ) -> Result<Self, StoreError> {
        let store = Self::open_raw(path, config)?;
        match store.meta_get(META_SCHEMA)? {
            None => store.initialise(genesis)?,
            Some(bytes) => {
                let found = u32::from_le_bytes(bytes.as_slice().try_into().map_err(|_| {
                    StoreError::Corrupt {
                        what: "schema version".into(),
                        detail: format!("{} bytes, expected 4", bytes.len()),
                    }
                })?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::UnknownSchema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                store.migrate(found)?;
                let stored = store.genesis_hash()?;
                if stored != genesis.hash {
                    return Err(StoreError::GenesisMismatch {
                        stored: hex::encode(stored),
                        given: hex::encode(genesis.hash),
                    });
                }
            }
        }
        Ok(store)
    }

    fn open_raw(path: &Path, config: &RocksConfig) -> Result<Self, StoreError> {
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Point lookups dominate (accounts, tree nodes, indexes): a bloom filter lets a miss
        // skip the data block read.
        table.set_bloom_filter(10.0, false);
        // Index and filter blocks stay in the table readers (a few MB for millions of
        // accounts) instead of the block cache: cached, they were evicted by data blocks
        // under random account access and re-read and re-checksummed on every lookup,
        // which made a 1M-account state 25x slower than a 10k one.
        table.set_cache_index_and_filter_blocks(false);
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_write_buffer_size(config.write_buffer_bytes);
        cf_opts.set_max_write_buffer_number(2);
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // State is read at random on every block: keep it uncompressed (no decompression
        // on the hot path; account and node records barely compress anyway).
        let mut state_opts = cf_opts.clone();
        state_opts.set_compression_type(rocksdb::DBCompressionType::None);
        let mut db_opts = cf_opts.clone();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_open_files(512);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_db_write_buffer_size(config.write_buffer_total_bytes);
        let cfs = ALL_CFS.iter().map(|name| {
            let opts = if *name == CF_STATE {
                state_opts.clone()
            } else {
                cf_opts.clone()
            };
            ColumnFamilyDescriptor::new(*name, opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| {
            StoreError::Db(format!(
                "cannot open database at {}: {}",
                path.display(),
                e.into_string()
            ))
        })?;
        Ok(Self { db })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Db(format!("column family {name} is missing")))
    }

    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf)?, key).map_err(db_err)
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(CF_META, key)
    }

    fn synced() -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        wo
    }

    fn initialise(&self, genesis: &Genesis) -> Result<(), StoreError> {
        // Leftovers of an initialisation that was interrupted (the schema version, written
        // last, is what marks a database initialised).
        self.clear_state()?;
        let (version, root) = self.write_genesis_state(genesis)?;
        let mut batch = WriteBatch::default();
        let meta = self.cf(CF_META)?;
        batch.put_cf(meta, META_TREE, encode(&(version, root)));
        batch.put_cf(meta, META_GENESIS, genesis.hash);
        batch.put_cf(meta, META_TIP, seal(&encode(&genesis_tip(genesis, root))));
        // Schema version last: its presence means "initialised". This batch is synced, and
        // with it the unsynced state batches written before it.
        batch.put_cf(meta, META_SCHEMA, SCHEMA_VERSION.to_le_bytes());
        self.db.write_opt(batch, &Self::synced()).map_err(db_err)
    }

    /// Deletes every state record (accounts, tree nodes) and the tree version.
    fn clear_state(&self) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_STATE)?,
            [0u8].as_slice(),
            [0xffu8; 40].as_slice(),
        );
        batch.delete_cf(self.cf(CF_META)?, META_TREE);
        self.db.write_opt(batch, &Self::synced()).map_err(db_err)
    }

    /// Writes the genesis state into an empty state, one unsynced batch per chunk of
    /// [`GENESIS_CHUNK`] accounts (memory stays bounded for millions of accounts); the
    /// caller writes the returned tree version and root with a synced batch.
    fn write_genesis_state(&self, genesis: &Genesis) -> Result<(u64, Hash), StoreError> {
        build_genesis_state(self, genesis, GENESIS_CHUNK, |update| {
            let mut batch = WriteBatch::default();
            self.put_state(&mut batch, &update)?;
            self.db.write(batch).map_err(db_err)
        })
    }

    /// Brings an older layout up to [`SCHEMA_VERSION`]. Version 1 is the first layout, so
    /// there is nothing to migrate yet; each future version adds an arm here.
    fn migrate(&self, found: u32) -> Result<(), StoreError> {
        match found {
            SCHEMA_VERSION => Ok(()),
            older => Err(StoreError::Db(format!(
                "no migration from schema version {older} (this tallyd writes {SCHEMA_VERSION})"
            ))),
        }
    }

    fn put_state(&self, batch: &mut WriteBatch, update: &StateUpdate) -> Result<(), StoreError> {
        if update.accounts.is_empty() {
            return Ok(());
        }
        let state = self.cf(CF_STATE)?;
        for (key, _, acct) in &update.accounts {
            batch.put_cf(state, account_db_key(key), encode(acct));
        }
        for key in &update.stale_nodes {
            batch.delete_cf(state, node_db_key(key));
        }
        for (key, node) in &update.new_nodes {
            batch.put_cf(state, node_db_key(key), encode(node));
        }
        batch.put_cf(
            self.cf(CF_META)?,
            META_TREE,
            encode(&(update.version, update.root)),
        );
        Ok(())
    }

    /// The block, its commit and its indexes (everything but state and tip) into `batch`.
    fn put_block_records(
        &self,
        batch: &mut WriteBatch,
        block: &Block,
        commit: &Commit,
        hash: &Hash,
        tx_ids: &[Hash],
    ) -> Result<(), StoreError> {
        let height = block.header.height;
        let key = height.to_be_bytes();
        batch.put_cf(self.cf(CF_BLOCKS)?, key, seal(&encode(block)));
        batch.put_cf(self.cf(CF_COMMITS)?, key, seal(&encode(commit)));
        batch.put_cf(self.cf(CF_BLOCK_INDEX)?, hash, key);
        let tx_cf = self.cf(CF_TX_INDEX)?;
        for (index, id) in tx_ids.iter().enumerate() {
            let loc = TxLocation {
                height,
                index: index as u32,
            };
            batch.put_cf(tx_cf, id, encode(&loc));
        }
        Ok(())
    }

    /// Approximate on-disk size per column family, for metrics.
    pub fn sizes(&self) -> Vec<(&'static str, u64)> {
        ALL_CFS
            .iter()
            .filter_map(|name| {
                let cf = self.db.cf_handle(name)?;
                let size = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()?;
                Some((*name, size))
            })
            .collect()
    }

    /// Rewrites the block and commit records of an already committed height (and the
    /// block's hash and tx index entries), to repair a record that is missing or fails its
    /// checksum with a copy fetched from peers. The caller has verified `commit` for
    /// `block` and that `block` is the one this chain committed (its hash is the tip's or
    /// the next block's `prev_hash`); here it only must be at or below the tip, match the
    /// tip's hash at the tip, and match `commit`. State and tip are untouched. Synced.
    pub fn repair_block(
        &self,
        block: &Block,
        commit: &Commit,
        tx_ids: &[Hash],
    ) -> Result<(), StoreError> {
        let tip = self.tip()?;
        let height = block.header.height;
        let hash = block.hash();
        if height == 0
            || height > tip.height
            || (height == tip.height && hash != tip.block_hash)
            || commit.height != height
            || commit.block_hash != hash
        {
            return Err(StoreError::Db(format!(
                "refusing to rewrite block {height}: it is not this chain's committed block \
                 at that height (tip {})",
                tip.height
            )));
        }
        let mut batch = WriteBatch::default();
        self.put_block_records(&mut batch, block, commit, &hash, tx_ids)?;
        self.db.write_opt(batch, &Self::synced()).map_err(db_err)
    }

    /// Drops every state record (accounts and tree nodes) and writes the genesis state
    /// again; blocks, commits, indexes, tip and consensus records stay. The first step of
    /// rebuilding a damaged state by replaying the stored blocks with
    /// [`Self::replay_state`]. Synced.
    pub fn reset_state(&self, genesis: &Genesis) -> Result<(), StoreError> {
        self.clear_state()?;
        let (version, root) = self.write_genesis_state(genesis)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META)?, META_TREE, encode(&(version, root)));
        self.db.write_opt(batch, &Self::synced()).map_err(db_err)
    }

    /// Writes the state changes of one replayed block (after [`Self::reset_state`]),
    /// leaving blocks and tip alone; `sync` for the last one.
    pub fn replay_state(&self, update: &StateUpdate, sync: bool) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.put_state(&mut batch, update)?;
        let opts = if sync {
            Self::synced()
        } else {
            WriteOptions::default()
        };
        self.db.write_opt(batch, &opts).map_err(db_err)
    }

    /// Flushes memtables to disk (used before taking a copy of the directory in tests).
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name)?).map_err(db_err)?;
        }
        Ok(())
    }
}

impl StateReader for RocksStore {
    fn account_by_key(&self, key: &Hash) -> Result<Option<Account>, StoreError> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_STATE)?, account_db_key(key))
            .map_err(db_err)?
        {
            None => Ok(None),
            Some(bytes) => borsh::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    what: format!("account {}", hex::encode(key)),
                    detail: e.to_string(),
                }),
        }
    }

    fn tree_node(&self, key: &NodeKey) -> Result<Option<Node>, StoreError> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_STATE)?, node_db_key(key))
            .map_err(db_err)?
        {
            None => Ok(None),
            Some(bytes) => borsh::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    what: "state tree node".into(),
                    detail: e.to_string(),
                }),
        }
    }

    fn tree_version(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        match self.meta_get(META_TREE)? {
            None => Ok(None),
            Some(bytes) => borsh::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    what: "tree version".into(),
                    detail: e.to_string(),
                }),
        }
    }
}

impl ChainReader for RocksStore {
    fn tip(&self) -> Result<Tip, StoreError> {
        let bytes = self
            .meta_get(META_TIP)?
            .ok_or_else(|| StoreError::Db("database has no tip; it was not initialised".into()))?;
        decode_record("tip", &bytes)
    }

    fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        self.get(CF_BLOCKS, &height.to_be_bytes())?
            .map(|b| decode_record(&format!("block {height}"), &b))
            .transpose()
    }

    fn commit(&self, height: u64) -> Result<Option<Commit>, StoreError> {
        self.get(CF_COMMITS, &height.to_be_bytes())?
            .map(|b| decode_record(&format!("commit {height}"), &b))
            .transpose()
    }

    fn height_of(&self, block_hash: &Hash) -> Result<Option<u64>, StoreError> {
        self.get(CF_BLOCK_INDEX, block_hash)?
            .map(|b| {
                b.as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        what: "block index".into(),
                        detail: "height is not 8 bytes".into(),
                    })
            })
            .transpose()
    }

    fn tx_location(&self, tx_id: &Hash) -> Result<Option<TxLocation>, StoreError> {
        self.get(CF_TX_INDEX, tx_id)?
            .map(|b| {
                borsh::from_slice(&b).map_err(|e| StoreError::Corrupt {
                    what: "tx index".into(),
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    fn genesis_hash(&self) -> Result<Hash, StoreError> {
        let bytes = self
            .meta_get(META_GENESIS)?
            .ok_or_else(|| StoreError::Db("database has no genesis hash".into()))?;
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt {
                what: "genesis hash".into(),
                detail: "not 32 bytes".into(),
            })
    }

    fn consensus_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(CF_CONSENSUS, key)
    }
}

impl ChainWriter for RocksStore {
    fn commit_block(
        &self,
        block: &Block,
        commit: &Commit,
        update: &StateUpdate,
        tx_ids: &[Hash],
    ) -> Result<(), StoreError> {
        let tip = self.tip()?;
        check_extends(&tip, block)?;
        let height = block.header.height;
        let hash = block.hash();
        let mut batch = WriteBatch::default();
        self.put_block_records(&mut batch, block, commit, &hash, tx_ids)?;
        self.put_state(&mut batch, update)?;
        let new_tip = Tip {
            height,
            block_hash: hash,
            state_root: block.header.state_root,
            time_ms: block.header.time_ms,
        };
        batch.put_cf(self.cf(CF_META)?, META_TIP, seal(&encode(&new_tip)));
        self.db.write_opt(batch, &Self::synced()).map_err(db_err)
    }

    fn consensus_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(self.cf(CF_CONSENSUS)?, key, value, &Self::synced())
            .map_err(db_err)
    }
}
