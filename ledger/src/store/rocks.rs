//! The RocksDB store: one column family per kind of record (DESIGN.md section 6), typed
//! keys with big-endian heights so they sort, and one synced `WriteBatch` per block.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use jmt::storage::{NibblePath, Node, NodeKey};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode,
    Options, WriteBatch, WriteOptions, DB,
};

use super::tables::{
    Accounts, BlockIndex, Blocks, ChainTip, Commits, Consensus, GenesisHash, Headers, StateEntries,
    Table, TableKey, TreeNodes, TreeVersion, TxIndex, ValidatorSets, FAMILIES, SCHEMA_KEY,
    STATE_FAMILY,
};
use super::{
    build_genesis_state, check_extends, genesis_tip, migrate, ChainReader, ChainWriter,
    ConsensusStore, StoreError, Tip, TxLocation, GENESIS_CHUNK, SCHEMA_VERSION,
};
use crate::genesis::Genesis;
use crate::hash::Hash;
use crate::state::{AccountReader, Entries, StateReader, StateUpdate};
use crate::types::{Account, Block, Commit, Header, Validator};

/// One record of table `T` read by [`RocksStore::iter`].
pub(crate) type Record<T> = Result<(<T as Table>::Key, <T as Table>::Value), StoreError>;

/// A RocksDB error with what we were doing when it happened.
pub(crate) fn rocks_err(doing: impl Into<String>, source: rocksdb::Error) -> StoreError {
    StoreError::Rocks {
        doing: doing.into(),
        source,
    }
}

/// Tuning knobs; the defaults suit a node with up to a few million accounts. RocksDB's
/// memory is about `block_cache_bytes + write_buffer_total_bytes` plus the index and bloom
/// filter blocks of open tables (not in the cache; about 10 MiB per million accounts).
#[derive(Clone, Debug)]
pub struct RocksConfig {
    /// Shared LRU block cache for all column families.
    pub block_cache_bytes: usize,
    /// Memtable size per column family but `state`
    /// ([`RocksTuning::state_write_buffer_bytes`]): a memtable this big is flushed.
    pub write_buffer_bytes: usize,
    /// All memtables of all column families together: past this the largest one is
    /// flushed. Without it the bound would be 7 families x 2 memtables x
    /// `write_buffer_bytes`.
    pub write_buffer_total_bytes: usize,
    /// Levels of the state tree kept resident ([`NodeCache`]): at most
    /// [`MAX_TREE_CACHE_LEVELS`].
    pub tree_cache_levels: usize,
    /// The options tuned for the state tree's load (issue 22).
    pub tuning: RocksTuning,
}

/// The RocksDB options tuned for the state tree's load at a million accounts (issue 22):
/// each block reads a few thousand random accounts and tree nodes, writes ~6,000 nodes and
/// deletes as many. [`RocksTuning::previous`] is what stores ran before, which `make
/// bench` measures against the default in the same run. Options only: a database written
/// under either opens under the other.
#[derive(Clone, Debug)]
pub struct RocksTuning {
    /// Memtable size of the `state` family (the others have `write_buffer_bytes`): a
    /// block's batch is ~3.5 MB, and the nodes of the upper tree levels are rewritten
    /// every few blocks, so the longer a memtable lives the more of them are written
    /// and made stale inside it and never reach a table file (at a million accounts, on
    /// its own, it cut what compaction wrote over the same blocks from 1.0 to 0.3 GB in
    /// one run). At most `write_buffer_total_bytes`, which still bounds all memtables
    /// together.
    pub state_write_buffer_bytes: usize,
    /// `optimize_filters_for_hits` on the `state` family: no bloom filters in its last
    /// level, where most of its data lives; execution reads tree nodes its parents name
    /// and accounts that mostly exist, so those filters would almost never save a read.
    pub state_filters_for_hits: bool,
    /// `bytes_per_sync` of table files: flushes and compactions write a file back as they
    /// write it rather than in one large sync at its end, which would compete with the
    /// block commit's WAL sync for the disk.
    pub bytes_per_sync: u64,
}

impl Default for RocksTuning {
    fn default() -> Self {
        Self {
            state_write_buffer_bytes: 32 << 20,
            state_filters_for_hits: true,
            bytes_per_sync: 1 << 20,
        }
    }
}

impl RocksTuning {
    /// The options of the stores before this tuning (`make bench`'s "before").
    pub fn previous() -> Self {
        Self {
            state_write_buffer_bytes: RocksConfig::default().write_buffer_bytes,
            state_filters_for_hits: false,
            bytes_per_sync: 0,
        }
    }
}

impl Default for RocksConfig {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 16 << 20,
            write_buffer_total_bytes: 64 << 20,
            tree_cache_levels: DEFAULT_TREE_CACHE_LEVELS,
            tuning: RocksTuning::default(),
        }
    }
}

/// Levels of the state tree kept resident by default ([`RocksConfig::tree_cache_levels`]):
/// the root and the next four levels, at most 1 + 16 + 256 + 4,096 + 65,536 = 69,905
/// nodes, about 66 MiB once the tree has a million accounts (a decoded internal node is
/// ~1 KiB: jmt boxes its 16 child slots); four levels are at most 4,369 nodes, ~4 MiB.
/// At a million accounts the fifth level spares a block of 1,000 transfers (~2,000 changed
/// paths) ~1,970 node reads, one per fifth-level node on a changed path.
pub const DEFAULT_TREE_CACHE_LEVELS: usize = 5;

/// The most levels [`RocksConfig::tree_cache_levels`] accepts: a sixth level would add a
/// million nodes (~1 GiB).
pub const MAX_TREE_CACHE_LEVELS: usize = 5;

/// The most nodes `levels` resident levels can hold: one per nibble path above the level.
pub fn tree_cache_bound(levels: usize) -> usize {
    (0..levels).map(|l| 1usize << (4 * l)).sum()
}

/// The upper levels of the state tree, resident in memory in front of the `TreeNodes`
/// table: every block rewrites the root, all 16 of its children, and most of the 256 and
/// 4,096 nodes below (and, at a million accounts, ~2,000 of the 65,536 of the fifth
/// level), which would otherwise be read from RocksDB, checksummed and decoded again on
/// every block.
///
/// One slot per nibble path above the level, at a fixed index (the paths of each length
/// in order, shorter first): no hashing and no key allocation. A slot holds the newest
/// node seen at its path, with its version. A jmt node key is (version, path) and never
/// names two different nodes, so an entry answers only a read of exactly its version and
/// is never wrong, at worst outdated (then the read goes to RocksDB). Entries come from
/// reads and from committed updates; an older node never replaces a newer one (a read
/// racing a commit), and an update's stale keys empty their slots. The slots bound the
/// cache by the number of paths above the level, whatever happens. It is updated only
/// after the batch is written: a failed write leaves it as it was, a crash loses it with
/// the process (a reopened store starts empty and fills from RocksDB), and rebuilding the
/// state (`reset_state`) empties it.
pub(crate) struct NodeCache {
    /// Reads are answered for nodes above this level only; the deeper ones go to RocksDB
    /// while the cache is still kept up to date (`make bench` compares 0, 4 and 5 levels
    /// on one warm store).
    read_levels: AtomicUsize,
    /// `tree_cache_bound(levels)` slots.
    slots: RwLock<Vec<Option<(u64, Node)>>>,
}

/// The slot of `path` among `slots` slots (None: below the resident levels).
fn slot(slots: usize, path: &NibblePath) -> Option<usize> {
    let len = path.num_nibbles();
    if len >= MAX_TREE_CACHE_LEVELS {
        return None;
    }
    // Paths shorter than `len` come first; then this one's nibbles as a base-16 number.
    let index = (0..len).fold(tree_cache_bound(len), |at, i| {
        at + (usize::from(u8::from(path.get_nibble(i))) << (4 * (len - 1 - i)))
    });
    (index < slots).then_some(index)
}

type Slots = Vec<Option<(u64, Node)>>;

impl NodeCache {
    fn new(levels: usize) -> Self {
        Self {
            read_levels: AtomicUsize::new(usize::MAX),
            slots: RwLock::new(vec![None; tree_cache_bound(levels)]),
        }
    }

    // A poisoned lock only means a panic between two slot writes; every entry is still a
    // node stored under its key.
    fn read(&self) -> RwLockReadGuard<'_, Slots> {
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Slots> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &NodeKey) -> Option<Node> {
        if key.nibble_path().num_nibbles() >= self.read_levels.load(Ordering::Relaxed) {
            return None;
        }
        let slots = self.read();
        match &slots[slot(slots.len(), key.nibble_path())?] {
            Some((version, node)) if *version == key.version() => Some(node.clone()),
            _ => None,
        }
    }

    fn insert(&self, key: &NodeKey, node: &Node) {
        Self::put(&mut self.write(), key, node);
    }

    fn put(slots: &mut Slots, key: &NodeKey, node: &Node) {
        let Some(i) = slot(slots.len(), key.nibble_path()) else {
            return;
        };
        match &mut slots[i] {
            Some((version, _)) if *version > key.version() => {}
            entry => *entry = Some((key.version(), node.clone())),
        }
    }

    /// After `update` was written.
    fn apply(&self, update: &StateUpdate) {
        if update.new_nodes.is_empty() && update.stale_nodes.is_empty() {
            return;
        }
        let mut slots = self.write();
        for key in &update.stale_nodes {
            if let Some(i) = slot(slots.len(), key.nibble_path()) {
                if slots[i].as_ref().map(|(v, _)| *v) == Some(key.version()) {
                    slots[i] = None;
                }
            }
        }
        for (key, node) in &update.new_nodes {
            Self::put(&mut slots, key, node);
        }
    }

    fn set_levels(&self, levels: usize) {
        *self.write() = vec![None; tree_cache_bound(levels)];
    }

    fn clear(&self) {
        self.write().fill(None);
    }

    fn len(&self) -> usize {
        self.read().iter().filter(|s| s.is_some()).count()
    }
}

/// The table options every family shares, reading through `cache`.
fn table_options(cache: &Cache) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Point lookups dominate (accounts, tree nodes, indexes): a bloom filter lets a miss
    // skip the data block read.
    table.set_bloom_filter(10.0, false);
    // Index and filter blocks stay in the table readers (a few MB for millions of
    // accounts) instead of the block cache: cached, they were evicted by data blocks
    // under random account access and re-read and re-checksummed on every lookup,
    // which made a 1M-account state 25x slower than a 10k one.
    table.set_cache_index_and_filter_blocks(false);
    table
}

pub struct RocksStore {
    pub(super) db: DB,
    pub(super) nodes: NodeCache,
}

/// Key and value buffers reused for every record put into one batch.
#[derive(Default)]
pub(crate) struct Scratch {
    key: Vec<u8>,
    value: Vec<u8>,
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
        match store.schema_version()? {
            None => store.initialise(genesis)?,
            Some(found) => {
                if found > SCHEMA_VERSION {
                    return Err(StoreError::UnknownSchema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                if found < SCHEMA_VERSION {
                    migrate::migrate(&store, found)?;
                }
                let stored = store.genesis_hash()?;
                if stored != genesis.hash {
                    return Err(StoreError::GenesisMismatch {
                        stored: hex::encode(stored),
                        given: hex::encode(genesis.hash),
                    });
                }
            }
        }
        store.ensure_genesis_set(genesis)?;
        Ok(store)
    }

    /// The set of height 1 on a chain whose genesis runs protocol 1 (issue 21): protocol 2
    /// stores it when the chain is initialised; a protocol-1 store gets it here, outside the
    /// state tree (no root changes), so that once such a chain switches to protocol 2 every
    /// height before the first set computed from stake reads the genesis set, whichever
    /// binary committed those heights (the previous release stores no set at A - 1).
    fn ensure_genesis_set(&self, genesis: &Genesis) -> Result<(), StoreError> {
        if self.validator_set_record(1)?.is_some() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        self.put::<ValidatorSets>(&mut batch, &1, &genesis.validators.validators().to_vec())?;
        self.write(batch, true)
    }

    pub(super) fn open_raw(path: &Path, config: &RocksConfig) -> Result<Self, StoreError> {
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table_options(&cache));
        cf_opts.set_write_buffer_size(config.write_buffer_bytes);
        cf_opts.set_max_write_buffer_number(2);
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // State is read at random on every block: keep it uncompressed (no decompression
        // on the hot path; account and node records barely compress anyway).
        let mut state_opts = cf_opts.clone();
        state_opts.set_compression_type(rocksdb::DBCompressionType::None);
        let tuning = &config.tuning;
        state_opts.set_write_buffer_size(
            tuning
                .state_write_buffer_bytes
                .min(config.write_buffer_total_bytes),
        );
        state_opts.set_optimize_filters_for_hits(tuning.state_filters_for_hits);
        let mut db_opts = cf_opts.clone();
        db_opts.set_bytes_per_sync(tuning.bytes_per_sync);
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_open_files(512);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_db_write_buffer_size(config.write_buffer_total_bytes);
        let cfs = FAMILIES.iter().map(|name| {
            let opts = if *name == STATE_FAMILY {
                state_opts.clone()
            } else {
                cf_opts.clone()
            };
            ColumnFamilyDescriptor::new(*name, opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)
            .map_err(|e| rocks_err(format!("opening the database at {}", path.display()), e))?;
        Ok(Self {
            db,
            nodes: NodeCache::new(config.tree_cache_levels.min(MAX_TREE_CACHE_LEVELS)),
        })
    }

    pub(super) fn family(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Db(format!("column family {name} is missing")))
    }

    /// The record of table `T` at `key`, its checksum verified.
    pub(crate) fn get<T: Table>(&self, key: &T::Key) -> Result<Option<T::Value>, StoreError> {
        let family = self.family(T::FAMILY)?;
        match self.db.get_pinned_cf(family, T::key_bytes(key)) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => T::decode_value(key, &bytes).map(Some),
            Err(e) => Err(rocks_err(format!("reading {}", T::describe(key)), e)),
        }
    }

    /// Puts a record of table `T` into `batch`.
    pub(crate) fn put<T: Table>(
        &self,
        batch: &mut WriteBatch,
        key: &T::Key,
        value: &T::Value,
    ) -> Result<(), StoreError> {
        self.put_with::<T>(batch, &mut Scratch::default(), key, value)
    }

    /// [`Self::put`] through `scratch`'s buffers.
    pub(crate) fn put_with<T: Table>(
        &self,
        batch: &mut WriteBatch,
        scratch: &mut Scratch,
        key: &T::Key,
        value: &T::Value,
    ) -> Result<(), StoreError> {
        T::key_bytes_into(key, &mut scratch.key);
        T::value_bytes_into(value, &mut scratch.value);
        batch.put_cf(self.family(T::FAMILY)?, &scratch.key, &scratch.value);
        Ok(())
    }

    pub(crate) fn delete<T: Table>(
        &self,
        batch: &mut WriteBatch,
        key: &T::Key,
    ) -> Result<(), StoreError> {
        self.delete_with::<T>(batch, &mut Scratch::default(), key)
    }

    /// [`Self::delete`] through `scratch`'s key buffer.
    pub(crate) fn delete_with<T: Table>(
        &self,
        batch: &mut WriteBatch,
        scratch: &mut Scratch,
        key: &T::Key,
    ) -> Result<(), StoreError> {
        T::key_bytes_into(key, &mut scratch.key);
        batch.delete_cf(self.family(T::FAMILY)?, &scratch.key);
        Ok(())
    }

    /// Every record of table `T` in key order, each checksum verified.
    pub(crate) fn iter<T: Table>(&self) -> Result<impl Iterator<Item = Record<T>> + '_, StoreError>
    where
        T::Key: Sized,
    {
        self.iter_prefix::<T>(&[])
    }

    /// The records of table `T` whose key bytes start with `start`, in key order.
    pub(crate) fn iter_prefix<T: Table>(
        &self,
        start: &[u8],
    ) -> Result<impl Iterator<Item = Record<T>> + '_, StoreError>
    where
        T::Key: Sized,
    {
        let family = self.family(T::FAMILY)?;
        let mut from = T::PREFIX.to_vec();
        from.extend_from_slice(start);
        let records = self
            .db
            .iterator_cf(family, IteratorMode::From(&from, Direction::Forward));
        Ok(records.map_while(move |record| {
            let (key, value) = match record {
                Ok(kv) => kv,
                Err(e) => return Some(Err(rocks_err(format!("iterating {}", T::FAMILY), e))),
            };
            // Past the prefix: the next table in a shared family (or past `start`).
            if !key.starts_with(&from) {
                return None;
            }
            let rest = key.strip_prefix(T::PREFIX)?;
            let Some(key) = T::Key::read_key(rest) else {
                return Some(Err(StoreError::Corrupt {
                    what: format!("{} key {}", T::WHAT, hex::encode(rest)),
                    detail: "malformed key".into(),
                }));
            };
            Some(T::decode_value(&key, &value).map(|v| (key, v)))
        }))
    }

    /// Reads every record of every keyed table and verifies its checksum and encoding.
    /// Returns how many records were read and the problems found (at most `max_problems`,
    /// each naming the record). RocksDB's own errors (a damaged file) end the walk.
    pub fn check_records(&self, max_problems: usize) -> Result<(u64, Vec<String>), StoreError> {
        fn walk<T: Table>(
            store: &RocksStore,
            read: &mut u64,
            problems: &mut Vec<String>,
            max: usize,
        ) -> Result<(), StoreError>
        where
            T::Key: Sized,
        {
            for record in store.iter::<T>()? {
                match record {
                    Ok(_) => *read += 1,
                    Err(e @ StoreError::Rocks { .. }) => return Err(e),
                    Err(e) if problems.len() < max => problems.push(e.to_string()),
                    Err(_) => {}
                }
            }
            Ok(())
        }
        let (mut read, mut problems) = (0, Vec::new());
        let p = &mut problems;
        walk::<Blocks>(self, &mut read, p, max_problems)?;
        walk::<Headers>(self, &mut read, p, max_problems)?;
        walk::<Commits>(self, &mut read, p, max_problems)?;
        walk::<BlockIndex>(self, &mut read, p, max_problems)?;
        walk::<TxIndex>(self, &mut read, p, max_problems)?;
        walk::<Accounts>(self, &mut read, p, max_problems)?;
        walk::<TreeNodes>(self, &mut read, p, max_problems)?;
        walk::<StateEntries>(self, &mut read, p, max_problems)?;
        walk::<ValidatorSets>(self, &mut read, p, max_problems)?;
        for (what, singleton) in [
            ("tree version", self.get::<TreeVersion>(&()).map(|_| ())),
            ("tip", self.get::<ChainTip>(&()).map(|_| ())),
            ("genesis hash", self.get::<GenesisHash>(&()).map(|_| ())),
        ] {
            read += 1;
            if let Err(e) = singleton {
                problems.push(format!("{what}: {e}"));
            }
        }
        // Consensus keys are the engine's own bytes, read raw and unsealed one by one.
        let family = self.family(Consensus::FAMILY)?;
        for record in self.db.iterator_cf(family, IteratorMode::Start) {
            let (key, value) = record.map_err(|e| rocks_err("iterating consensus", e))?;
            read += 1;
            if let Err(e) = Consensus::decode_value(&key, &value) {
                if problems.len() < max_problems {
                    problems.push(e.to_string());
                }
            }
        }
        Ok((read, problems))
    }

    /// Writes `batch`, synced or not.
    pub(super) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| rocks_err("writing a batch", e))
    }

    /// The layout version (None for a database that was never initialised).
    fn schema_version(&self) -> Result<Option<u32>, StoreError> {
        let bytes = self
            .db
            .get_cf(self.family(ChainTip::FAMILY)?, SCHEMA_KEY)
            .map_err(|e| rocks_err("reading the schema version", e))?;
        bytes
            .map(|b| {
                b.as_slice()
                    .try_into()
                    .map(u32::from_le_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        what: "schema version".into(),
                        detail: format!("{} bytes, expected 4", b.len()),
                    })
            })
            .transpose()
    }

    /// Puts schema `version` into `batch`: [`SCHEMA_VERSION`] but at the end of a
    /// migration step that leaves an older one.
    pub(super) fn put_schema_version(
        &self,
        batch: &mut WriteBatch,
        version: u32,
    ) -> Result<(), StoreError> {
        batch.put_cf(
            self.family(ChainTip::FAMILY)?,
            SCHEMA_KEY,
            version.to_le_bytes(),
        );
        Ok(())
    }

    fn initialise(&self, genesis: &Genesis) -> Result<(), StoreError> {
        // Leftovers of an initialisation that was interrupted (the schema version, written
        // last, is what marks a database initialised).
        self.clear_state()?;
        let (version, root) = self.write_genesis_state(genesis)?;
        let mut batch = WriteBatch::default();
        self.put::<TreeVersion>(&mut batch, &(), &(version, root))?;
        self.put::<GenesisHash>(&mut batch, &(), &genesis.hash)?;
        self.put::<ChainTip>(&mut batch, &(), &genesis_tip(genesis, root))?;
        // Schema version last: its presence means "initialised". This batch is synced, and
        // with it the unsynced state batches written before it.
        self.put_schema_version(&mut batch, SCHEMA_VERSION)?;
        self.write(batch, true)
    }

    /// Deletes every state record (accounts, tree nodes, staking entries, validator sets)
    /// and the tree version.
    fn clear_state(&self) -> Result<(), StoreError> {
        self.nodes.clear();
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.family(STATE_FAMILY)?,
            [0u8].as_slice(),
            [0xffu8; 40].as_slice(),
        );
        self.delete::<TreeVersion>(&mut batch, &())?;
        self.write(batch, true)
    }

    /// Writes the genesis state into an empty state, one unsynced batch per chunk of
    /// [`GENESIS_CHUNK`] accounts (memory stays bounded for millions of accounts); the
    /// caller writes the returned tree version and root with a synced batch.
    fn write_genesis_state(&self, genesis: &Genesis) -> Result<(u64, Hash), StoreError> {
        build_genesis_state(self, genesis, GENESIS_CHUNK, |update| {
            let mut batch = WriteBatch::default();
            self.put_state(&mut batch, &update)?;
            self.write(batch, false)?;
            self.nodes.apply(&update);
            Ok(())
        })
    }

    fn put_state(&self, batch: &mut WriteBatch, update: &StateUpdate) -> Result<(), StoreError> {
        for (height, set) in &update.validator_sets {
            self.put::<ValidatorSets>(batch, height, set)?;
        }
        if !update.changes_tree() {
            return Ok(());
        }
        let scratch = &mut Scratch::default();
        for (key, _, account) in &update.accounts {
            self.put_with::<Accounts>(batch, scratch, key, account)?;
        }
        for (_, preimage, value) in &update.entries {
            match value {
                Some(v) => self.put_with::<StateEntries>(batch, scratch, preimage, v)?,
                None => self.delete_with::<StateEntries>(batch, scratch, preimage)?,
            }
        }
        for key in &update.stale_nodes {
            self.delete_with::<TreeNodes>(batch, scratch, key)?;
        }
        for (key, node) in &update.new_nodes {
            self.put_with::<TreeNodes>(batch, scratch, key, node)?;
        }
        self.put::<TreeVersion>(batch, &(), &(update.version, update.root))
    }

    /// The block, its header, its commit and its indexes (everything but state and tip)
    /// into `batch`.
    fn put_block_records(
        &self,
        batch: &mut WriteBatch,
        block: &Block,
        commit: &Commit,
        hash: &Hash,
        tx_ids: &[Hash],
    ) -> Result<(), StoreError> {
        let height = block.header.height;
        self.put::<Blocks>(batch, &height, block)?;
        self.put::<Headers>(batch, &height, &block.header)?;
        self.put::<Commits>(batch, &height, commit)?;
        self.put::<BlockIndex>(batch, hash, &height)?;
        let scratch = &mut Scratch::default();
        for (index, id) in tx_ids.iter().enumerate() {
            let location = TxLocation {
                height,
                index: index as u32,
            };
            self.put_with::<TxIndex>(batch, scratch, id, &location)?;
        }
        Ok(())
    }

    /// Approximate on-disk size per column family, for metrics.
    pub fn sizes(&self) -> Vec<(&'static str, u64)> {
        FAMILIES
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

    /// Rewrites the block, header and commit records of an already committed height (and
    /// the block's hash and tx index entries), to repair a record that is missing or fails
    /// its checksum with a copy fetched from peers. The caller has verified `commit` for
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
        self.write(batch, true)
    }

    /// Drops every state record (accounts and tree nodes) and writes the genesis state
    /// again; blocks, commits, indexes, tip and consensus records stay. The first step of
    /// rebuilding a damaged state by replaying the stored blocks with
    /// [`Self::replay_state`]. Synced.
    pub fn reset_state(&self, genesis: &Genesis) -> Result<(), StoreError> {
        self.clear_state()?;
        let (version, root) = self.write_genesis_state(genesis)?;
        let mut batch = WriteBatch::default();
        self.put::<TreeVersion>(&mut batch, &(), &(version, root))?;
        self.write(batch, true)
    }

    /// Writes the state changes of one replayed block (after [`Self::reset_state`]),
    /// leaving blocks and tip alone; `sync` for the last one.
    pub fn replay_state(&self, update: &StateUpdate, sync: bool) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.put_state(&mut batch, update)?;
        self.write(batch, sync)?;
        self.nodes.apply(update);
        Ok(())
    }

    /// [`Self::replay_state`] without the cache update that follows the write: what a
    /// crash right after the write leaves behind.
    #[cfg(test)]
    pub(crate) fn replay_state_uncached(&self, update: &StateUpdate) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.put_state(&mut batch, update)?;
        self.write(batch, true)
    }

    /// Sets how many levels of the state tree stay in memory (0: none, at most
    /// [`MAX_TREE_CACHE_LEVELS`]) and empties that cache.
    pub fn set_tree_cache_levels(&self, levels: usize) {
        self.nodes.set_levels(levels.min(MAX_TREE_CACHE_LEVELS));
    }

    /// How many of the resident levels answer tree node reads (all of them by default);
    /// the others are still kept up to date, so `make bench` alternates 0, 4 and 5 levels
    /// block by block on one warm store.
    #[doc(hidden)]
    pub fn set_tree_cache_read_levels(&self, levels: usize) {
        self.nodes.read_levels.store(levels, Ordering::Relaxed);
    }

    /// RocksDB's compaction statistics of `family` (`rocksdb.cfstats` text): `make bench`
    /// reads the compaction CPU and bytes written per store from it.
    #[doc(hidden)]
    pub fn compaction_stats(&self, family: &str) -> Option<String> {
        let cf = self.db.cf_handle(family)?;
        self.db
            .property_value_cf(cf, "rocksdb.cfstats")
            .ok()
            .flatten()
    }

    /// Tree nodes held in memory now.
    pub fn tree_cache_len(&self) -> usize {
        self.nodes.len()
    }

    /// Flushes memtables to disk (used before taking a copy of the directory in tests).
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in FAMILIES {
            self.db
                .flush_cf(self.family(name)?)
                .map_err(|e| rocks_err(format!("flushing {name}"), e))?;
        }
        Ok(())
    }
}

impl AccountReader for RocksStore {
    fn account_by_key(&self, key: &Hash) -> Result<Option<Account>, StoreError> {
        self.get::<Accounts>(key)
    }
}

impl StateReader for RocksStore {
    fn tree_node(&self, key: &NodeKey) -> Result<Option<Node>, StoreError> {
        if let Some(node) = self.nodes.get(key) {
            return Ok(Some(node));
        }
        let node = self.get::<TreeNodes>(key)?;
        if let Some(node) = &node {
            self.nodes.insert(key, node);
        }
        Ok(node)
    }

    fn tree_version(&self) -> Result<Option<(u64, Hash)>, StoreError> {
        self.get::<TreeVersion>(&())
    }

    fn entry(&self, preimage: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get::<StateEntries>(&preimage.to_vec())
    }

    fn entries_with_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.iter_prefix::<StateEntries>(prefix)?.collect()
    }

    fn validator_set_record(&self, height: u64) -> Result<Option<Vec<Validator>>, StoreError> {
        let family = self.family(ValidatorSets::FAMILY)?;
        let key = ValidatorSets::key_bytes(&height);
        // The last record at or before `height`: a reverse seek.
        let mut records = self
            .db
            .iterator_cf(family, IteratorMode::From(&key, Direction::Reverse));
        match records.next() {
            None => Ok(None),
            Some(Err(e)) => Err(rocks_err("reading the validator sets", e)),
            Some(Ok((key, value))) => {
                let Some(rest) = key.strip_prefix(ValidatorSets::PREFIX) else {
                    return Ok(None);
                };
                let Some(first) = u64::read_key(rest) else {
                    return Err(StoreError::Corrupt {
                        what: format!("validator set key {}", hex::encode(rest)),
                        detail: "malformed key".into(),
                    });
                };
                ValidatorSets::decode_value(&first, &value).map(Some)
            }
        }
    }

    /// From [`Headers`]: a few hundred bytes where the block is up to `block_max_bytes`.
    fn committed_header(&self, height: u64) -> Result<Option<Header>, StoreError> {
        self.get::<Headers>(&height)
    }
}

impl ChainReader for RocksStore {
    fn tip(&self) -> Result<Tip, StoreError> {
        self.get::<ChainTip>(&())?
            .ok_or_else(|| StoreError::Db("database has no tip; it was not initialised".into()))
    }

    fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        self.get::<Blocks>(&height)
    }

    fn commit(&self, height: u64) -> Result<Option<Commit>, StoreError> {
        self.get::<Commits>(&height)
    }

    fn height_of(&self, block_hash: &Hash) -> Result<Option<u64>, StoreError> {
        self.get::<BlockIndex>(block_hash)
    }

    fn tx_location(&self, tx_id: &Hash) -> Result<Option<TxLocation>, StoreError> {
        self.get::<TxIndex>(tx_id)
    }

    fn genesis_hash(&self) -> Result<Hash, StoreError> {
        self.get::<GenesisHash>(&())?
            .ok_or_else(|| StoreError::Db("database has no genesis hash".into()))
    }
}

/// Bytes a written tree node takes in a write batch, on average (internal nodes are up to
/// ~860 bytes, leaves ~110) and those of the other records (accounts, stale node keys,
/// index entries, a block's share per transaction): only to reserve the batch.
const NODE_RECORD_ESTIMATE: usize = 512;
const SMALL_RECORD_ESTIMATE: usize = 128;

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
        // Reserved up front: a block of 1,000 transfers at a million accounts is ~3.5 MB,
        // which would otherwise be copied a dozen times as the batch grows.
        let records = update.stale_nodes.len() + update.accounts.len() + 2 * tx_ids.len();
        let mut batch = WriteBatch::with_capacity_bytes(
            update.new_nodes.len() * NODE_RECORD_ESTIMATE + records * SMALL_RECORD_ESTIMATE,
        );
        self.put_block_records(&mut batch, block, commit, &hash, tx_ids)?;
        self.put_state(&mut batch, update)?;
        let new_tip = Tip {
            height,
            block_hash: hash,
            state_root: block.header.state_root,
            time_ms: block.header.time_ms,
        };
        self.put::<ChainTip>(&mut batch, &(), &new_tip)?;
        self.write(batch, true)?;
        self.nodes.apply(update);
        Ok(())
    }
}

impl ConsensusStore for RocksStore {
    fn consensus_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get::<Consensus>(key)
    }

    fn consensus_put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        self.put::<Consensus>(&mut batch, key, &value.to_vec())?;
        self.write(batch, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jmt::storage::LeafNode;
    use jmt::{KeyHash, ValueHash};

    /// The node key of `nibbles` (each 0..16) at version 7, through its borsh encoding.
    fn key(nibbles: &[u8]) -> NodeKey {
        let mut buf = 7u64.to_le_bytes().to_vec();
        buf.extend_from_slice(&(nibbles.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(nibbles.len().div_ceil(2) as u32).to_le_bytes());
        for pair in nibbles.chunks(2) {
            buf.push((pair[0] << 4) | pair.get(1).copied().unwrap_or(0));
        }
        borsh::from_slice(&buf).unwrap()
    }

    #[test]
    fn every_path_above_the_resident_levels_has_a_slot_of_its_own() {
        let bound = tree_cache_bound(MAX_TREE_CACHE_LEVELS);
        assert_eq!(bound, 1 + 16 + 256 + 4096 + 65_536);
        let mut taken = vec![false; bound];
        for len in 0..MAX_TREE_CACHE_LEVELS {
            for n in 0..1usize << (4 * len) {
                let nibbles: Vec<u8> = (0..len)
                    .map(|i| ((n >> (4 * (len - 1 - i))) & 0xf) as u8)
                    .collect();
                let i = slot(bound, key(&nibbles).nibble_path()).unwrap();
                assert!(!taken[i], "{nibbles:?} shares slot {i}");
                taken[i] = true;
            }
        }
        assert!(taken.iter().all(|t| *t));
        // Deeper paths have none, nor paths below fewer configured levels.
        assert_eq!(slot(bound, key(&[1; 5]).nibble_path()), None);
        assert_eq!(slot(bound, key(&[15; 64]).nibble_path()), None);
        assert_eq!(slot(tree_cache_bound(4), key(&[3; 4]).nibble_path()), None);
        assert_eq!(
            slot(tree_cache_bound(4), key(&[15; 3]).nibble_path()),
            Some(4368)
        );
    }

    /// The tuning is options only: a database written under either set (flushed, so its
    /// table files too) opens under the other with every account, the tree and its proofs.
    #[test]
    fn a_store_written_under_either_tuning_opens_under_the_other() {
        use std::collections::BTreeMap;

        use crate::hash::sha256;
        use crate::state::{account_key, compute_update, prove_account};
        use crate::store::fixture::bulk_genesis;
        use crate::types::Address;

        let g = bulk_genesis(2000);
        let dir = tempfile::tempdir().unwrap();
        let mut expected: BTreeMap<Address, Account> = BTreeMap::new();
        let tunings = [
            RocksTuning::previous(),
            RocksTuning::default(),
            RocksTuning::previous(),
        ];
        for (round, tuning) in (0u64..).zip(tunings) {
            let config = RocksConfig {
                tuning,
                ..RocksConfig::default()
            };
            let store = RocksStore::open_with(dir.path(), &g, &config).unwrap();
            for (address, account) in &expected {
                assert_eq!(store.account(address).unwrap(), Some(*account));
            }
            if let Some(address) = expected.keys().next() {
                let (account, proof, root) = prove_account(&store, address).unwrap();
                proof.verify(&root, address, account.as_ref()).unwrap();
            }
            for version in 0..5u64 {
                let changes: BTreeMap<Hash, (Address, Account)> = (0..50u64)
                    .map(|i| {
                        let mut address = [0u8; 20];
                        address.copy_from_slice(&sha256(&(round * 1000 + i).to_le_bytes())[..20]);
                        let account = Account {
                            balance: round * 10_000 + version * 100 + i,
                            nonce: version,
                        };
                        (account_key(&address), (address, account))
                    })
                    .collect();
                let update = compute_update(&store, changes.clone()).unwrap();
                store.replay_state(&update, true).unwrap();
                expected.extend(changes.into_values());
            }
            store.flush().unwrap();
        }
    }

    #[test]
    fn the_cache_answers_only_the_version_it_holds_and_newer_nodes_win() {
        let cache = NodeCache::new(2);
        let node = |v: u8| Node::Leaf(LeafNode::new(KeyHash([v; 32]), ValueHash([v; 32])));
        let at = |version: u64, nibbles: &[u8]| {
            let k = key(nibbles);
            NodeKey::new(version, k.nibble_path().clone())
        };
        cache.insert(&at(5, &[3]), &node(5));
        cache.insert(&at(4, &[3]), &node(4)); // older: ignored
        cache.insert(&at(5, &[3, 1]), &node(9)); // below the levels: ignored
        assert_eq!(cache.get(&at(5, &[3])), Some(node(5)));
        assert_eq!(cache.get(&at(4, &[3])), None);
        assert_eq!(cache.get(&at(5, &[3, 1])), None);
        assert_eq!(cache.len(), 1);
        cache.read_levels.store(1, Ordering::Relaxed);
        assert_eq!(cache.get(&at(5, &[3])), None, "reads limited to the root");
    }
}
