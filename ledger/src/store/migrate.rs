//! Brings a database of an older layout up to [`SCHEMA_VERSION`] when it is opened, one
//! schema at a time (1 -> 2 -> 3), each step written as code.
//!
//! Schema 1 checksummed only blocks, commits and the tip. Schema 2 seals every other
//! record too (accounts, tree nodes, both indexes, consensus records, tree version and
//! genesis hash; see `tables`), and stores the block index's height and consensus values
//! as borsh like every other value. Schema 3 adds `Headers` (each block's header by
//! height), filled from the stored blocks.
//!
//! Every step works through its families in chunks of [`CHUNK`] records, each chunk one
//! batch together with a [`MigrationCursor`] naming the last key it converted, so a node
//! stopped midway resumes where it was and never converts a record twice; the meta records
//! and the step's new schema version are written last, in one synced batch (which drops
//! the cursor, so the next step starts afresh). Every old record is decoded as its type
//! on the way, so a damaged one stops the migration with its name instead of being sealed
//! (or copied from) as if it were good.

use borsh::BorshDeserialize;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::rocks::{rocks_err, RocksStore};
use super::tables::{
    Accounts, BlockIndex, Blocks, Consensus, GenesisHash, Headers, MigrationCursor, Table,
    TableKey, TreeNodes, TreeVersion, TxIndex,
};
use super::{StoreError, SCHEMA_VERSION};
use crate::hash::Hash;

/// Records per migration batch: a few MB of tree nodes at most.
const CHUNK: usize = 16_384;

/// Migrates `store`, whose layout is schema `found` (older than [`SCHEMA_VERSION`]).
pub(super) fn migrate(store: &RocksStore, found: u32) -> Result<(), StoreError> {
    match found {
        1 => {
            from_v1(store, CHUNK, usize::MAX)?;
            from_v2(store, CHUNK, usize::MAX)
        }
        2 => from_v2(store, CHUNK, usize::MAX),
        older => Err(StoreError::Db(format!(
            "database schema version {older} predates every layout this tallyd can migrate \
             (1 to {SCHEMA_VERSION}); move the data directory away and start again: the node \
             resyncs the chain from its peers"
        ))),
    }
}

/// An old record's new value, from its key and value.
type Reseal = fn(&[u8], &[u8]) -> Result<Vec<u8>, StoreError>;

/// Puts the records derived from one old record (its key and value) into the batch.
type Derive = fn(&RocksStore, &mut WriteBatch, &[u8], &[u8]) -> Result<(), StoreError>;

/// What a step makes of one old record, given its key and value.
enum Convert {
    /// A new value for the record, under its key.
    Value(Reseal),
    /// Records of another table derived from it, put into the batch; the record stays.
    Derive(Derive),
}

/// One family a migration step walks: its name, and what it makes of each record.
struct Step {
    family: &'static str,
    convert: Convert,
}

const V1_STEPS: [Step; 4] = [
    Step {
        family: "state",
        convert: Convert::Value(v1_state),
    },
    Step {
        family: "tx_index",
        convert: Convert::Value(reseal::<TxIndex>),
    },
    Step {
        family: "block_index",
        // Schema 1 stored the height big-endian and bare.
        convert: Convert::Value(|key, value| {
            let height = <[u8; 8]>::try_from(value).map_err(|_| v1_corrupt(key, "block index"))?;
            Ok(BlockIndex::value_bytes(&u64::from_be_bytes(height)))
        }),
    },
    Step {
        family: "consensus",
        // Schema 1 stored the engine's bytes bare.
        convert: Convert::Value(|_, value| Ok(Consensus::value_bytes(&value.to_vec()))),
    },
];

const V2_STEPS: [Step; 1] = [Step {
    family: Blocks::FAMILY,
    convert: Convert::Derive(v2_header),
}];

fn v1_state(key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
    match key.split_first() {
        Some((b'a', _)) => reseal::<Accounts>(key, value),
        Some((b'n', _)) => reseal::<TreeNodes>(key, value),
        _ => Err(v1_corrupt(key, "state")),
    }
}

/// A schema-1 value that was borsh already: checked by decoding it, then sealed.
fn reseal<T: Table>(key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let decoded: T::Value = borsh::from_slice(value).map_err(|_| v1_corrupt(key, T::WHAT))?;
    Ok(T::value_bytes(&decoded))
}

fn v1_corrupt(key: &[u8], what: &str) -> StoreError {
    StoreError::Corrupt {
        what: format!("schema-1 {what} record {}", hex::encode(key)),
        detail: "does not decode; the migration to schema 2 stopped before it".into(),
    }
}

/// A schema-2 block's header into `Headers`: the block is decoded (checksum and borsh)
/// first, so a damaged one stops the migration named instead of giving a header.
fn v2_header(
    store: &RocksStore,
    batch: &mut WriteBatch,
    key: &[u8],
    value: &[u8],
) -> Result<(), StoreError> {
    let stopped = |what: String, detail: String| StoreError::Corrupt {
        what,
        detail: format!(
            "{detail}; the migration to schema 3 stopped before it. Start the previous \
             tallyd with TALLY_STARTUP_CHECK_DEPTH=0 to fetch it again from peers, or move \
             the data directory away and resync"
        ),
    };
    let height = u64::read_key(key).ok_or_else(|| {
        stopped(
            format!("block key {}", hex::encode(key)),
            "malformed".into(),
        )
    })?;
    let block = Blocks::decode_value(&height, value).map_err(|e| match e {
        StoreError::Corrupt { what, detail } => stopped(what, detail),
        other => other,
    })?;
    store.put::<Headers>(batch, &height, &block.header)
}

/// A schema-1 meta record, read bare.
fn v1_meta<T: BorshDeserialize>(store: &RocksStore, key: &[u8]) -> Result<T, StoreError> {
    let bytes = store
        .db
        .get_cf(store.family(TreeVersion::FAMILY)?, key)
        .map_err(|e| rocks_err("reading a schema-1 meta record", e))?
        .ok_or_else(|| StoreError::Db(format!("schema-1 database has no meta record {key:?}")))?;
    borsh::from_slice(&bytes).map_err(|_| StoreError::Corrupt {
        what: "schema version".into(),
        detail: format!(
            "the database says schema 1, but its meta record {} is not in schema 1's layout; \
             the schema version record is damaged: run `tallyd fsck`",
            String::from_utf8_lossy(key)
        ),
    })
}

/// Schema 1 to 2, `chunk` records per batch; stops (as a crash would) after `max_batches`
/// batches, for the tests of resuming.
pub(super) fn from_v1(
    store: &RocksStore,
    chunk: usize,
    max_batches: usize,
) -> Result<(), StoreError> {
    // Read (and so check) the meta records before anything is rewritten: a newer
    // database whose version record was damaged into a 1 fails here, untouched.
    let tree: (u64, Hash) = v1_meta(store, TreeVersion::PREFIX)?;
    let genesis: Hash = v1_meta(store, GenesisHash::PREFIX)?;
    run_steps(store, &V1_STEPS, chunk, max_batches)?;
    let mut batch = WriteBatch::default();
    store.put::<TreeVersion>(&mut batch, &(), &tree)?;
    store.put::<GenesisHash>(&mut batch, &(), &genesis)?;
    finish(store, batch, 2)
}

/// Schema 2 to 3: every stored block's header into `Headers`; as [`from_v1`].
pub(super) fn from_v2(
    store: &RocksStore,
    chunk: usize,
    max_batches: usize,
) -> Result<(), StoreError> {
    run_steps(store, &V2_STEPS, chunk, max_batches)?;
    finish(store, WriteBatch::default(), 3)
}

/// Walks `steps`' families from where the cursor says (the start without one), `chunk`
/// records per batch, each batch written with the cursor past its last record; stops (as
/// a crash would) after `max_batches` batches.
fn run_steps(
    store: &RocksStore,
    steps: &[Step],
    chunk: usize,
    max_batches: usize,
) -> Result<(), StoreError> {
    let (mut step, mut after) = store
        .get::<MigrationCursor>(&())?
        .unwrap_or((0, Vec::new()));
    let mut batches = 0;
    while let Some(Step { family, convert }) = steps.get(step as usize) {
        let cf = store.family(family)?;
        let records = store
            .db
            .iterator_cf(cf, IteratorMode::From(&after, Direction::Forward));
        let mut batch = WriteBatch::default();
        let mut last = None;
        let mut n = 0;
        for record in records {
            let (key, value) = record.map_err(|e| rocks_err(format!("migrating {family}"), e))?;
            if !after.is_empty() && *key == *after {
                continue;
            }
            match convert {
                Convert::Value(convert) => batch.put_cf(cf, &key, convert(&key, &value)?),
                Convert::Derive(derive) => derive(store, &mut batch, &key, &value)?,
            }
            last = Some(key);
            n += 1;
            if n == chunk {
                break;
            }
        }
        // The family is done when this chunk came short: the cursor moves to the next one.
        (step, after) = match last {
            Some(key) if n == chunk => (step, key.into_vec()),
            _ => (step + 1, Vec::new()),
        };
        store.put::<MigrationCursor>(&mut batch, &(), &(step, after.clone()))?;
        if batches == max_batches {
            return Err(StoreError::Db("migration stopped (test)".into()));
        }
        store.write(batch, false)?;
        batches += 1;
    }
    Ok(())
}

/// Ends a step: `batch` (its meta records), the cursor dropped and schema `version`, in
/// one synced batch.
fn finish(store: &RocksStore, mut batch: WriteBatch, version: u32) -> Result<(), StoreError> {
    store.delete::<MigrationCursor>(&mut batch, &())?;
    store.put_schema_version(&mut batch, version)?;
    store.write(batch, true)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::genesis::Genesis;
    use crate::state::{AccountReader, StateReader};
    use crate::store::fixture::{bulk_genesis, grow, tx_ids};
    use crate::store::rocks::RocksConfig;
    use crate::store::tables::{ValidatorSets, SCHEMA_KEY};
    use crate::store::{ChainReader, ConsensusStore};
    use crate::types::{Account, Header};

    /// Everything a reader can see, to compare before and after a migration.
    #[derive(Debug, PartialEq)]
    struct Seen {
        tip: crate::store::Tip,
        tree: Option<(u64, Hash)>,
        genesis: Hash,
        accounts: Vec<(Hash, Account)>,
        heights: Vec<Option<u64>>,
        locations: Vec<Option<crate::store::TxLocation>>,
        guard: Option<Vec<u8>>,
        headers: Vec<Option<Header>>,
    }

    fn seen(store: &RocksStore) -> Seen {
        let tip = store.tip().unwrap();
        let accounts: Vec<_> = store
            .iter::<Accounts>()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (key, account) in &accounts {
            assert_eq!(store.account_by_key(key).unwrap().as_ref(), Some(account));
        }
        Seen {
            tip,
            tree: store.tree_version().unwrap(),
            genesis: store.genesis_hash().unwrap(),
            accounts,
            heights: (1..=tip.height)
                .map(|h| {
                    store
                        .height_of(&store.block(h).unwrap().unwrap().hash())
                        .unwrap()
                })
                .collect(),
            locations: (1..=tip.height)
                .flat_map(tx_ids)
                .map(|id| store.tx_location(&id).unwrap())
                .collect(),
            guard: store.consensus_get(b"signing_guard").unwrap(),
            headers: (1..=tip.height)
                .map(|h| store.committed_header(h).unwrap())
                .collect(),
        }
    }

    fn set_version(store: &RocksStore, version: u32) {
        let meta = store.family("meta").unwrap();
        store
            .db
            .put_cf(meta, SCHEMA_KEY, version.to_le_bytes())
            .unwrap();
    }

    /// A schema-3 database with a short chain, rewritten into schema 2's layout (no
    /// headers), and what a reader saw before (every header).
    fn v2_store(path: &Path) -> (RocksStore, Genesis, Seen) {
        let genesis = bulk_genesis(40);
        let store = RocksStore::open(path, &genesis).unwrap();
        grow(&store, 4);
        store.consensus_put(b"signing_guard", &[9; 50]).unwrap();
        let before = seen(&store);
        assert!(before.headers.iter().all(Option::is_some));
        let meta = store.family("meta").unwrap();
        for h in 1..=4 {
            store.db.delete_cf(meta, Headers::key_bytes(&h)).unwrap();
        }
        assert_eq!(store.committed_header(1).unwrap(), None);
        set_version(&store, 2);
        (store, genesis, before)
    }

    fn v2_database(path: &Path) -> (Genesis, Seen) {
        let (_, genesis, before) = v2_store(path);
        (genesis, before)
    }

    /// The schema-2 database of [`v2_store`], rewritten into schema 1's layout.
    fn v1_database(path: &Path) -> (Genesis, Seen) {
        let (store, genesis, before) = v2_store(path);
        let db = &store.db;
        // Schema 1 predates stored validator sets (the genesis set every open stores).
        let state = store.family("state").unwrap();
        for record in db.prefix_iterator_cf(state, ValidatorSets::PREFIX) {
            let (key, _) = record.unwrap();
            if key.starts_with(ValidatorSets::PREFIX) {
                db.delete_cf(state, &key).unwrap();
            }
        }
        let bare = |v: &[u8]| v[8..].to_vec();
        for (family, to_v1) in [
            ("state", &bare as &dyn Fn(&[u8]) -> Vec<u8>),
            ("tx_index", &bare),
            ("block_index", &|v: &[u8]| {
                let height: u64 = borsh::from_slice(&v[8..]).unwrap();
                height.to_be_bytes().to_vec()
            }),
            ("consensus", &|v: &[u8]| v[8 + 4..].to_vec()),
        ] {
            let cf = store.family(family).unwrap();
            for record in db.iterator_cf(cf, IteratorMode::Start) {
                let (key, value) = record.unwrap();
                db.put_cf(cf, &key, to_v1(&value)).unwrap();
            }
        }
        let meta = store.family("meta").unwrap();
        for key in [TreeVersion::PREFIX, GenesisHash::PREFIX] {
            let value = db.get_cf(meta, key).unwrap().unwrap();
            db.put_cf(meta, key, bare(&value)).unwrap();
        }
        set_version(&store, 1);
        (genesis, before)
    }

    fn version(store: &RocksStore) -> u32 {
        let meta = store.family("meta").unwrap();
        let version = store.db.get_cf(meta, SCHEMA_KEY).unwrap().unwrap();
        u32::from_le_bytes(version.as_slice().try_into().unwrap())
    }

    /// Every record sealed and decoding, no cursor, the current version, and a header for
    /// every block.
    fn assert_current(store: &RocksStore) {
        let (read, problems) = store.check_records(10).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(read > 40);
        assert_eq!(store.get::<MigrationCursor>(&()).unwrap(), None);
        assert_eq!(version(store), SCHEMA_VERSION);
        for h in 1..=store.tip().unwrap().height {
            let block = store.block(h).unwrap().unwrap();
            assert_eq!(
                store.committed_header(h).unwrap(),
                Some(block.header),
                "{h}"
            );
        }
    }

    #[test]
    fn a_schema_1_database_opens_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, before) = v1_database(dir.path());
        let store = RocksStore::open(dir.path(), &genesis).unwrap();
        assert_eq!(seen(&store), before);
        assert_current(&store);
        // And keeps working: the chain grows on the migrated records.
        grow(&store, 1);
        assert_eq!(store.tip().unwrap().height, 5);
    }

    #[test]
    fn an_interrupted_migration_resumes_without_converting_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, before) = v1_database(dir.path());
        for stop_after in [1, 3, 6] {
            let store = RocksStore::open_raw(dir.path(), &RocksConfig::default()).unwrap();
            assert!(from_v1(&store, 5, stop_after).is_err());
        }
        // Part of `state` was converted, and the cursor says how far.
        let store = RocksStore::open_raw(dir.path(), &RocksConfig::default()).unwrap();
        let cursor = store.get::<MigrationCursor>(&()).unwrap().unwrap();
        assert_eq!(cursor.0, 0, "{cursor:?}");
        drop(store);
        // A record converted twice would fail schema 1's decoding and stop the migration.
        let store = RocksStore::open(dir.path(), &genesis).unwrap();
        assert_eq!(seen(&store), before);
        assert_current(&store);
    }

    #[test]
    fn a_damaged_version_record_saying_1_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let genesis = bulk_genesis(10);
        let before = {
            let store = RocksStore::open(dir.path(), &genesis).unwrap();
            grow(&store, 2);
            set_version(&store, 1);
            seen(&store)
        };
        let err = RocksStore::open(dir.path(), &genesis).err().unwrap();
        assert!(
            err.to_string()
                .contains("the schema version record is damaged"),
            "{err}"
        );
        let store = RocksStore::open_raw(dir.path(), &RocksConfig::default()).unwrap();
        assert_eq!(seen(&store), before);
        assert!(store.get::<Blocks>(&1).unwrap().is_some());
    }

    #[test]
    fn schema_0_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let genesis = bulk_genesis(10);
        {
            let store = RocksStore::open(dir.path(), &genesis).unwrap();
            set_version(&store, 0);
        }
        let err = RocksStore::open(dir.path(), &genesis)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("move the data directory away"), "{err}");
    }

    #[test]
    fn a_schema_2_database_opens_migrated_with_every_header() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, before) = v2_database(dir.path());
        let store = RocksStore::open(dir.path(), &genesis).unwrap();
        assert_eq!(seen(&store), before);
        assert_current(&store);
        // New blocks get their header in their own batch.
        grow(&store, 1);
        let block = store.block(5).unwrap().unwrap();
        assert_eq!(store.committed_header(5).unwrap(), Some(block.header));
    }

    #[test]
    fn an_interrupted_schema_2_migration_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, before) = v2_database(dir.path());
        // One block per batch, stopped after one batch, twice: blocks 1 and 2 have
        // their headers, the cursor says block 2, and 3 was not touched.
        for _ in 0..2 {
            let store = RocksStore::open_raw(dir.path(), &RocksConfig::default()).unwrap();
            assert!(from_v2(&store, 1, 1).is_err());
        }
        let store = RocksStore::open_raw(dir.path(), &RocksConfig::default()).unwrap();
        let cursor = store.get::<MigrationCursor>(&()).unwrap();
        assert_eq!(cursor, Some((0, Blocks::key_bytes(&2))));
        let stored: Vec<bool> = (1..=4)
            .map(|h| store.committed_header(h).unwrap().is_some())
            .collect();
        assert_eq!(stored, [true, true, false, false]);
        assert_eq!(version(&store), 2);
        drop(store);
        let store = RocksStore::open(dir.path(), &genesis).unwrap();
        assert_eq!(seen(&store), before);
        assert_current(&store);
    }

    #[test]
    fn a_newer_schema_is_refused_naming_both_versions_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let genesis = bulk_genesis(10);
        let before = {
            let store = RocksStore::open(dir.path(), &genesis).unwrap();
            grow(&store, 2);
            set_version(&store, SCHEMA_VERSION + 1);
            seen(&store)
        };
        let err = RocksStore::open(dir.path(), &genesis).err().unwrap();
        assert_eq!(
            err,
            StoreError::UnknownSchema {
                found: 4,
                supported: 3
            }
        );
        assert_eq!(
            err.to_string(),
            "database schema version 4 is newer than this tallyd understands (3); upgrade tallyd"
        );
        let store = RocksStore::open_raw(dir.path(), &RocksConfig::default()).unwrap();
        assert_eq!(seen(&store), before);
        assert_eq!(version(&store), 4);
    }

    #[test]
    fn a_damaged_block_stops_the_schema_2_migration_named() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, _) = {
            let (store, genesis, before) = v2_store(dir.path());
            let blocks = store.family("blocks").unwrap();
            let key = Blocks::key_bytes(&3);
            let mut bad = store.db.get_cf(blocks, &key).unwrap().unwrap();
            bad[40] ^= 1;
            store.db.put_cf(blocks, &key, bad).unwrap();
            (genesis, before)
        };
        let err = RocksStore::open(dir.path(), &genesis).err().unwrap();
        let StoreError::Corrupt { what, detail } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(what, "block 3");
        assert!(
            detail.starts_with("checksum mismatch; the migration to schema 3 stopped"),
            "{detail}"
        );
        // Nothing of the chunk holding it was written, and the version stays 2.
        let store = RocksStore::open_raw(dir.path(), &RocksConfig::default()).unwrap();
        assert_eq!(version(&store), 2);
        assert_eq!(store.committed_header(1).unwrap(), None);
        assert_eq!(store.get::<MigrationCursor>(&()).unwrap(), None);
    }
}
