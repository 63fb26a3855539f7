//! Brings a database of an older layout up to [`SCHEMA_VERSION`] when it is opened.
//!
//! Schema 1 checksummed only blocks, commits and the tip. Schema 2 seals every other
//! record too (accounts, tree nodes, both indexes, consensus records, tree version and
//! genesis hash; see `tables`), and stores the block index's height and consensus values
//! as borsh like every other value. The migration rewrites those families in chunks of
//! [`CHUNK`] records, each chunk one batch together with a [`MigrationCursor`] naming the
//! last key it converted, so a node stopped midway resumes where it was and never converts
//! a record twice; the meta records and the new schema version are written last, in one
//! synced batch. Every schema-1 record is decoded as its type on the way, so a damaged one
//! stops the migration with its name instead of being sealed as if it were good.

use borsh::BorshDeserialize;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::rocks::{rocks_err, RocksStore};
use super::tables::{
    Accounts, BlockIndex, Consensus, GenesisHash, MigrationCursor, Table, TreeNodes, TreeVersion,
    TxIndex,
};
use super::{StoreError, SCHEMA_VERSION};
use crate::hash::Hash;

/// Records per migration batch: a few MB of tree nodes at most.
const CHUNK: usize = 16_384;

/// Migrates `store`, whose layout is schema `found` (older than [`SCHEMA_VERSION`]).
pub(super) fn migrate(store: &RocksStore, found: u32) -> Result<(), StoreError> {
    match found {
        1 => from_v1(store, CHUNK, usize::MAX),
        older => Err(StoreError::Db(format!(
            "database schema version {older} predates every layout this tallyd can migrate \
             (1 to {SCHEMA_VERSION}); move the data directory away and start again: the node \
             resyncs the chain from its peers"
        ))),
    }
}

/// A schema-1 record's key and value to its schema-2 value.
type Convert = fn(&[u8], &[u8]) -> Result<Vec<u8>, StoreError>;

/// One schema-1 family whose records are resealed: its name, and how to turn a record's
/// key and schema-1 value into its schema-2 value.
struct Step {
    family: &'static str,
    convert: Convert,
}

const V1_STEPS: [Step; 4] = [
    Step {
        family: "state",
        convert: v1_state,
    },
    Step {
        family: "tx_index",
        convert: |key, value| reseal::<TxIndex>(key, value),
    },
    Step {
        family: "block_index",
        // Schema 1 stored the height big-endian and bare.
        convert: |key, value| {
            let height = <[u8; 8]>::try_from(value).map_err(|_| v1_corrupt(key, "block index"))?;
            Ok(BlockIndex::value_bytes(&u64::from_be_bytes(height)))
        },
    },
    Step {
        family: "consensus",
        // Schema 1 stored the engine's bytes bare.
        convert: |_, value| Ok(Consensus::value_bytes(&value.to_vec())),
    },
];

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
    // Read (and so check) the meta records before anything is rewritten: a schema-2
    // database whose version record was damaged into a 1 fails here, untouched.
    let tree: (u64, Hash) = v1_meta(store, TreeVersion::PREFIX)?;
    let genesis: Hash = v1_meta(store, GenesisHash::PREFIX)?;
    let (mut step, mut after) = store
        .get::<MigrationCursor>(&())?
        .unwrap_or((0, Vec::new()));
    let mut batches = 0;
    while let Some(Step { family, convert }) = V1_STEPS.get(step as usize) {
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
            batch.put_cf(cf, &key, convert(&key, &value)?);
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
    let mut batch = WriteBatch::default();
    store.put::<TreeVersion>(&mut batch, &(), &tree)?;
    store.put::<GenesisHash>(&mut batch, &(), &genesis)?;
    store.delete::<MigrationCursor>(&mut batch, &())?;
    store.put_schema_version(&mut batch)?;
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
    use crate::store::tables::ValidatorSets;
    use crate::store::tables::{Blocks, SCHEMA_KEY};
    use crate::store::{ChainReader, ConsensusStore};
    use crate::types::Account;

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
        }
    }

    /// A schema-2 database with a short chain, rewritten into schema 1's layout.
    fn v1_database(path: &Path) -> (Genesis, Seen) {
        let genesis = bulk_genesis(40);
        let store = RocksStore::open(path, &genesis).unwrap();
        grow(&store, 4);
        store.consensus_put(b"signing_guard", &[9; 50]).unwrap();
        let before = seen(&store);
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
        db.put_cf(meta, SCHEMA_KEY, 1u32.to_le_bytes()).unwrap();
        (genesis, before)
    }

    fn assert_schema_2(store: &RocksStore) {
        let (read, problems) = store.check_records(10).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(read > 40);
        assert_eq!(store.get::<MigrationCursor>(&()).unwrap(), None);
        let meta = store.family("meta").unwrap();
        let version = store.db.get_cf(meta, SCHEMA_KEY).unwrap().unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_le_bytes());
    }

    #[test]
    fn a_schema_1_database_opens_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let (genesis, before) = v1_database(dir.path());
        let store = RocksStore::open(dir.path(), &genesis).unwrap();
        assert_eq!(seen(&store), before);
        assert_schema_2(&store);
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
        assert_schema_2(&store);
    }

    #[test]
    fn a_damaged_version_record_saying_1_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let genesis = bulk_genesis(10);
        let before = {
            let store = RocksStore::open(dir.path(), &genesis).unwrap();
            grow(&store, 2);
            let meta = store.family("meta").unwrap();
            store
                .db
                .put_cf(meta, SCHEMA_KEY, 1u32.to_le_bytes())
                .unwrap();
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
            let meta = store.family("meta").unwrap();
            store
                .db
                .put_cf(meta, SCHEMA_KEY, 0u32.to_le_bytes())
                .unwrap();
        }
        let err = RocksStore::open(dir.path(), &genesis)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("move the data directory away"), "{err}");
    }
}
