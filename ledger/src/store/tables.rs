//! The RocksDB tables, each declared once with its column family, key type and value type
//! (reth's `tables!`): the store reads `get::<Blocks>(&height)` and never spells a family
//! name or decodes bytes by hand.
//!
//! Keys sort as RocksDB compares bytes: heights big-endian, hashes as they are. Tables that
//! share a family (accounts and tree nodes in `state`, the singletons and the headers in
//! `meta`) are told apart by a key prefix, which for a singleton is its whole key. Every
//! value is `checksum ‖ borsh(value)` ([`super::seal_into`]), so a flipped byte in any record is
//! reported as [`StoreError::Corrupt`] instead of decoding into garbage. The one exception
//! is `meta/schema_version` (raw u32 little-endian, see [`SCHEMA_KEY`]).

use borsh::{BorshDeserialize, BorshSerialize};
use jmt::storage::{Node, NodeKey};

use super::{decode_record, seal_into, StoreError, Tip, TxLocation};
use crate::hash::Hash;
use crate::types::{Account, Block, Commit, Header, Validator};

/// One kind of record: where it lives, how its key is laid out, what its value is.
pub(crate) trait Table {
    /// The column family that holds it.
    const FAMILY: &'static str;
    /// Bytes in front of every key: tells tables sharing a family apart.
    const PREFIX: &'static [u8];
    /// What one record is called in errors ("block", "account").
    const WHAT: &'static str;
    type Key: TableKey + ?Sized;
    type Value: BorshSerialize + BorshDeserialize;

    fn key_bytes(key: &Self::Key) -> Vec<u8> {
        let mut out = Vec::new();
        Self::key_bytes_into(key, &mut out);
        out
    }

    /// [`Self::key_bytes`] into `out` (cleared first), for a batch that reuses one buffer.
    fn key_bytes_into(key: &Self::Key, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(Self::PREFIX);
        key.write_key(out);
    }

    /// The record's name in errors: "block 42", "account 3fa9…", "tip".
    fn describe(key: &Self::Key) -> String {
        match key.describe_key() {
            Some(k) => format!("{} {k}", Self::WHAT),
            None => Self::WHAT.to_string(),
        }
    }

    fn value_bytes(value: &Self::Value) -> Vec<u8> {
        let mut out = Vec::new();
        Self::value_bytes_into(value, &mut out);
        out
    }

    /// [`Self::value_bytes`] into `out` (cleared first).
    fn value_bytes_into(value: &Self::Value, out: &mut Vec<u8>) {
        seal_into(value, out)
    }

    fn decode_value(key: &Self::Key, bytes: &[u8]) -> Result<Self::Value, StoreError> {
        decode_record(|| Self::describe(key), bytes)
    }
}

/// How a key type is laid out after its table's prefix.
pub(crate) trait TableKey {
    fn write_key(&self, out: &mut Vec<u8>);
    /// The key from the bytes after the prefix (for iteration); None if malformed or the
    /// key type is not iterated.
    fn read_key(_bytes: &[u8]) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
    /// The key as shown in errors; None for a singleton's unit key.
    fn describe_key(&self) -> Option<String>;
}

/// Heights: big-endian so that records sort by height.
impl TableKey for u64 {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn read_key(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(u64::from_be_bytes)
    }
    fn describe_key(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl TableKey for Hash {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn read_key(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok()
    }
    fn describe_key(&self) -> Option<String> {
        Some(hex::encode(self))
    }
}

/// Protocol-2 entries: their key preimage as it is (it sorts by domain, then by its fields).
impl TableKey for Vec<u8> {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn read_key(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
    fn describe_key(&self) -> Option<String> {
        Some(hex::encode(self))
    }
}

/// Tree nodes: borsh (version, then nibble path), the layout jmt's own stores use.
impl TableKey for NodeKey {
    fn write_key(&self, out: &mut Vec<u8>) {
        self.serialize(out)
            .expect("borsh encoding into a Vec cannot fail");
    }
    fn read_key(bytes: &[u8]) -> Option<Self> {
        borsh::from_slice(bytes).ok()
    }
    fn describe_key(&self) -> Option<String> {
        Some(format!("{self:?}"))
    }
}

/// A singleton: the prefix is the whole key.
impl TableKey for () {
    fn write_key(&self, _: &mut Vec<u8>) {}
    fn read_key(bytes: &[u8]) -> Option<Self> {
        bytes.is_empty().then_some(())
    }
    fn describe_key(&self) -> Option<String> {
        None
    }
}

/// Consensus records: keys chosen by the consensus engine, stored as given.
impl TableKey for [u8] {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn describe_key(&self) -> Option<String> {
        Some(match std::str::from_utf8(self) {
            Ok(text) => format!("{text:?}"),
            Err(_) => hex::encode(self),
        })
    }
}

/// Declares tables: `Name("family" [+ b"prefix"], "what"): Key => Value;`.
macro_rules! tables {
    ($(
        $(#[$doc:meta])*
        $name:ident($family:literal $(+ $prefix:literal)?, $what:literal): $key:ty => $value:ty;
    )*) => {
        $(
            $(#[$doc])*
            pub(crate) struct $name;

            impl Table for $name {
                const FAMILY: &'static str = $family;
                const PREFIX: &'static [u8] = tables!(@prefix $($prefix)?);
                const WHAT: &'static str = $what;
                type Key = $key;
                type Value = $value;
            }
        )*

        /// Every table: (name, family, prefix), for the README's list and its test.
        #[cfg(test)]
        pub(crate) const TABLES: &[(&str, &str, &[u8])] =
            &[$((stringify!($name), $family, tables!(@prefix $($prefix)?))),*];
    };
    (@prefix) => { b"" };
    (@prefix $prefix:literal) => { $prefix };
}

tables! {
    /// Committed blocks by height.
    Blocks("blocks", "block"): u64 => Block;
    /// Schema 3: each committed block's header by height, written in the batch of its
    /// block, so the upgrade-signal count reads headers instead of whole blocks. In `meta`
    /// under a prefix rather than in a family of its own: a tallyd of schema 2 opening a
    /// schema-3 database must get as far as the schema version to refuse it by name, and
    /// RocksDB refuses to open a database with a family the opener does not list.
    Headers("meta" + b"header", "header"): u64 => Header;
    /// The commit that finalized each block, by height.
    Commits("commits", "commit"): u64 => Commit;
    /// Block hash -> height.
    BlockIndex("block_index", "block index entry"): Hash => u64;
    /// Tx id -> where the transaction is.
    TxIndex("tx_index", "tx index entry"): Hash => TxLocation;
    /// Latest committed accounts by tree key (SHA-256 of the address).
    Accounts("state" + b"a", "account"): Hash => Account;
    /// Nodes of the latest state tree version.
    TreeNodes("state" + b"n", "state tree node"): NodeKey => Node;
    /// Protocol 2: latest committed staking entries by key preimage (the tree key is its
    /// SHA-256), so a domain or a release height is a prefix scan.
    StateEntries("state" + b"s", "staking entry"): Vec<u8> => Vec<u8>;
    /// Protocol 2: validator sets by the first height they apply to.
    ValidatorSets("state" + b"v", "validator set"): u64 => Vec<Validator>;
    /// The latest state tree version and its root.
    TreeVersion("meta" + b"tree", "tree version"): () => (u64, Hash);
    /// The head of the committed chain.
    ChainTip("meta" + b"tip", "tip"): () => Tip;
    /// SHA-256 of the genesis file the database was made from.
    GenesisHash("meta" + b"genesis_hash", "genesis hash"): () => Hash;
    /// Consensus safety records (signing guard, evidence) by the engine's keys.
    Consensus("consensus", "consensus record"): [u8] => Vec<u8>;
    /// While a migration runs: the step and the last key it has converted, written in the
    /// batch that converts them, so an interrupted migration resumes where it stopped.
    MigrationCursor("meta" + b"migration", "migration cursor"): () => (u32, Vec<u8>);
}

/// Every column family, in the order they are opened.
pub(crate) const FAMILIES: [&str; 7] = [
    "blocks",
    "commits",
    "block_index",
    "tx_index",
    "state",
    "meta",
    "consensus",
];

/// The family of the state records, which is tuned apart (uncompressed).
pub(crate) const STATE_FAMILY: &str = Accounts::FAMILY;

/// `meta/schema_version`: the database's layout version as a raw u32 little-endian, the
/// one record without a checksum. Every tallyd, of any version, must read it before it
/// knows anything else about the layout, and an older tallyd must find a newer version
/// there to refuse the database with DESIGN.md's "newer than this tallyd understands";
/// a checksummed record would be "4 bytes expected" to it. A flipped byte in it makes an
/// unknown or older version, both refused ([`super::rocks`] checks that a database
/// claiming to be older really has the older layout before migrating it).
pub(crate) const SCHEMA_KEY: &[u8] = b"schema_version";

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use rocksdb::WriteBatch;

    use super::*;
    use crate::codec::encode;
    use crate::hash::sha256;
    use crate::state::{AccountReader, StateReader};
    use crate::store::fixture::{bulk_genesis, grow, tx_ids};
    use crate::store::rocks::RocksStore;
    use crate::store::{ChainReader, ConsensusStore};

    fn open(dir: &tempfile::TempDir) -> RocksStore {
        RocksStore::open(dir.path(), &bulk_genesis(20)).unwrap()
    }

    /// Puts `value` at `key`, reads it back typed, checks its bytes on disk (prefix ‖ key,
    /// checksum ‖ borsh), deletes it.
    fn round_trip<T: Table>(store: &RocksStore, key: &T::Key, value: T::Value)
    where
        T::Value: PartialEq + Debug,
    {
        let mut batch = WriteBatch::default();
        store.put::<T>(&mut batch, key, &value).unwrap();
        store.write(batch, false).unwrap();
        assert_eq!(store.get::<T>(key).unwrap().as_ref(), Some(&value));
        let family = store.family(T::FAMILY).unwrap();
        let raw_key = T::key_bytes(key);
        assert!(raw_key.starts_with(T::PREFIX));
        let raw = store.db.get_cf(family, &raw_key).unwrap().unwrap();
        assert_eq!(raw[8..], encode(&value), "{}", T::WHAT);
        assert_eq!(raw[..8], sha256(&raw[8..])[..8], "{}", T::WHAT);
        let mut batch = WriteBatch::default();
        store.delete::<T>(&mut batch, key).unwrap();
        store.write(batch, false).unwrap();
        assert_eq!(store.get::<T>(key).unwrap(), None);
    }

    #[test]
    fn every_table_round_trips_over_rocksdb() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        grow(&store, 2);
        let block = store.block(2).unwrap().unwrap();
        let commit = store.commit(2).unwrap().unwrap();
        let nodes: Vec<_> = store
            .iter::<TreeNodes>()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(nodes.len() > 1);
        let tip = store.tip().unwrap();

        round_trip::<Headers>(&store, &7, block.header.clone());
        round_trip::<Blocks>(&store, &7, block);
        round_trip::<Commits>(&store, &7, commit);
        round_trip::<BlockIndex>(&store, &[9; 32], 42);
        let location = TxLocation {
            height: 3,
            index: 1,
        };
        round_trip::<TxIndex>(&store, &[8; 32], location);
        let account = Account {
            balance: 5,
            nonce: 2,
        };
        round_trip::<Accounts>(&store, &[7; 32], account);
        // Another node under the first node's key.
        round_trip::<TreeNodes>(&store, &nodes[0].0, nodes[1].1.clone());
        round_trip::<TreeVersion>(&store, &(), (5, [1; 32]));
        round_trip::<ChainTip>(&store, &(), tip);
        round_trip::<GenesisHash>(&store, &(), [3; 32]);
        round_trip::<Consensus>(&store, b"signing_guard".as_slice(), vec![1, 2, 3]);
        round_trip::<MigrationCursor>(&store, &(), (2, vec![4, 5]));
        round_trip::<StateEntries>(&store, &b"tally/burned".to_vec(), vec![9; 8]);
        let set = vec![Validator {
            address: [1; 20],
            pubkey: [2; 33],
            power: 3,
        }];
        round_trip::<ValidatorSets>(&store, &3, set);
    }

    #[test]
    fn protocol_2_records_scan_by_prefix_and_sets_read_at_or_below_a_height() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut batch = WriteBatch::default();
        for (k, v) in [(&b"tally/x1"[..], 1u8), (b"tally/x2", 2), (b"tally/y1", 3)] {
            store
                .put::<StateEntries>(&mut batch, &k.to_vec(), &vec![v])
                .unwrap();
        }
        let set = |power| {
            vec![Validator {
                address: [1; 20],
                pubkey: [2; 33],
                power,
            }]
        };
        for h in [1u64, 5, 300] {
            store.put::<ValidatorSets>(&mut batch, &h, &set(h)).unwrap();
        }
        store.write(batch, false).unwrap();
        let x: Vec<_> = store.entries_with_prefix(b"tally/x").unwrap();
        assert_eq!(
            x,
            [
                (b"tally/x1".to_vec(), vec![1]),
                (b"tally/x2".to_vec(), vec![2])
            ]
        );
        assert_eq!(store.entries_with_prefix(b"tally/z").unwrap(), []);
        assert_eq!(store.entry(b"tally/y1").unwrap(), Some(vec![3]));
        // Accounts and tree nodes around them are not entries.
        assert_eq!(store.entries_with_prefix(b"").unwrap().len(), 3);
        for (h, first) in [
            (1, 1),
            (4, 1),
            (5, 5),
            (299, 5),
            (300, 300),
            (u64::MAX, 300),
        ] {
            assert_eq!(
                store.validator_set_record(h).unwrap(),
                Some(set(first)),
                "{h}"
            );
        }
        assert_eq!(store.validator_set_record(0).unwrap(), None);
    }

    #[test]
    fn iteration_is_typed_in_key_order_and_stays_in_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        grow(&store, 3);
        let block = store.block(1).unwrap().unwrap();
        // Big-endian heights: 256 after 255, 65536 after both.
        let mut batch = WriteBatch::default();
        for h in [65_536, 255, 256] {
            store.put::<Blocks>(&mut batch, &h, &block).unwrap();
        }
        store.write(batch, false).unwrap();
        let heights: Vec<u64> = store
            .iter::<Blocks>()
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(heights, [1, 2, 3, 255, 256, 65_536]);
        // Accounts and tree nodes share `state`: each iteration sees only its own.
        let accounts: Vec<_> = store
            .iter::<Accounts>()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(accounts.len(), 20);
        for (key, account) in &accounts {
            assert_eq!(store.account_by_key(key).unwrap().as_ref(), Some(account));
        }
        for record in store.iter::<TreeNodes>().unwrap() {
            let (key, node) = record.unwrap();
            assert_eq!(store.tree_node(&key).unwrap(), Some(node));
        }
        let (read, problems) = store.check_records(10).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(read > 20 + 6 + 3 * 4, "{read}");
    }

    #[test]
    fn shared_families_tell_tables_apart_by_prefix() {
        for (name, family, prefix) in TABLES {
            assert!(FAMILIES.contains(family), "{name}: family {family}");
            for (other, other_family, other_prefix) in TABLES {
                if name != other && family == other_family {
                    assert!(
                        !prefix.starts_with(other_prefix),
                        "{name}'s prefix starts with {other}'s"
                    );
                }
            }
        }
        // The schema version's key is no table's.
        assert!(!TABLES
            .iter()
            .any(|(_, family, prefix)| *family == "meta" && *prefix == SCHEMA_KEY));
    }

    #[test]
    fn readme_lists_every_table() {
        let readme = include_str!("../../README.md");
        for (name, family, _) in TABLES {
            assert!(
                readme.contains(&format!("| `{name}` | `{family}`")),
                "ledger/README.md's table list lacks {name}"
            );
        }
    }

    /// Flips each byte of the record at `key` in `family` (a sample of them in a long
    /// record) and expects `read` to report it as corrupt, never to decode it.
    fn flips_are_corruption<V: Debug>(
        store: &RocksStore,
        family: &str,
        key: &[u8],
        read: impl Fn(&RocksStore) -> Result<V, StoreError>,
    ) {
        let cf = store.family(family).unwrap();
        let good = store.db.get_cf(cf, key).unwrap().expect("record present");
        let n = good.len();
        let positions: Vec<usize> = if n <= 512 {
            (0..n).collect()
        } else {
            (0..64).chain(n / 2..n / 2 + 64).chain(n - 64..n).collect()
        };
        for i in positions {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= mask;
                store.db.put_cf(cf, key, &bad).unwrap();
                match read(store) {
                    Err(StoreError::Corrupt { detail, .. }) => {
                        assert_eq!(detail, "checksum mismatch", "{family} byte {i}")
                    }
                    other => panic!("{family} {key:?}: byte {i} ^ {mask:#x} read as {other:?}"),
                }
            }
        }
        // Truncated below its checksum.
        store.db.put_cf(cf, key, &good[..n.min(7)]).unwrap();
        assert!(matches!(read(store), Err(StoreError::Corrupt { .. })));
        store.db.put_cf(cf, key, &good).unwrap();
        read(store).unwrap();
    }

    #[test]
    fn a_flipped_byte_in_any_record_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        grow(&store, 3);
        store.consensus_put(b"signing_guard", &[7; 40]).unwrap();
        let hash = store.block(2).unwrap().unwrap().hash();
        let [tx, _] = tx_ids(2);
        let (account, _) = store.iter::<Accounts>().unwrap().next().unwrap().unwrap();
        let (node, _) = store.iter::<TreeNodes>().unwrap().next().unwrap().unwrap();

        let h = 2u64;
        flips_are_corruption(&store, "blocks", &Blocks::key_bytes(&h), |s| s.block(2));
        // The signal count's reads come from the header record, not the block.
        flips_are_corruption(&store, "meta", &Headers::key_bytes(&h), |s| {
            s.committed_header(2)
        });
        flips_are_corruption(&store, "commits", &Commits::key_bytes(&h), |s| s.commit(2));
        flips_are_corruption(&store, "block_index", &BlockIndex::key_bytes(&hash), |s| {
            s.height_of(&hash)
        });
        flips_are_corruption(&store, "tx_index", &TxIndex::key_bytes(&tx), |s| {
            s.tx_location(&tx)
        });
        flips_are_corruption(&store, "state", &Accounts::key_bytes(&account), |s| {
            s.account_by_key(&account)
        });
        // The table itself: `tree_node` answers the upper levels from memory once read.
        flips_are_corruption(&store, "state", &TreeNodes::key_bytes(&node), |s| {
            s.get::<TreeNodes>(&node)
        });
        flips_are_corruption(&store, "meta", TreeVersion::PREFIX, |s| s.tree_version());
        flips_are_corruption(&store, "meta", ChainTip::PREFIX, |s| s.tip());
        flips_are_corruption(&store, "meta", GenesisHash::PREFIX, |s| s.genesis_hash());
        flips_are_corruption(&store, "consensus", b"signing_guard", |s| {
            s.consensus_get(b"signing_guard")
        });
        let mut batch = WriteBatch::default();
        store
            .put::<MigrationCursor>(&mut batch, &(), &(1, vec![1; 33]))
            .unwrap();
        store.write(batch, false).unwrap();
        flips_are_corruption(&store, "meta", MigrationCursor::PREFIX, |s| {
            s.get::<MigrationCursor>(&())
        });
        let entry = b"tally/burned".to_vec();
        let set = vec![Validator {
            address: [1; 20],
            pubkey: [2; 33],
            power: 3,
        }];
        let mut batch = WriteBatch::default();
        store
            .put::<StateEntries>(&mut batch, &entry, &vec![7; 8])
            .unwrap();
        store.put::<ValidatorSets>(&mut batch, &4, &set).unwrap();
        store.write(batch, false).unwrap();
        flips_are_corruption(&store, "state", &StateEntries::key_bytes(&entry), |s| {
            s.entry(&entry)
        });
        flips_are_corruption(&store, "state", &ValidatorSets::key_bytes(&4), |s| {
            s.validator_set_record(9)
        });
    }

    #[test]
    fn a_corrupt_record_is_named_by_check_records_and_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let genesis = bulk_genesis(20);
        {
            let store = RocksStore::open(dir.path(), &genesis).unwrap();
            grow(&store, 3);
            let cf = store.family("tx_index").unwrap();
            let [tx, _] = tx_ids(3);
            let mut bad = store.db.get_cf(cf, tx).unwrap().unwrap();
            bad[10] ^= 1;
            store.db.put_cf(cf, tx, bad).unwrap();
            let (_, problems) = store.check_records(10).unwrap();
            assert_eq!(
                problems,
                [format!(
                    "corrupt tx index entry {}: checksum mismatch",
                    hex::encode(tx)
                )]
            );
            // A damaged genesis hash is corruption, not "a different genesis".
            let meta = store.family("meta").unwrap();
            let mut bad = store.db.get_cf(meta, GenesisHash::PREFIX).unwrap().unwrap();
            bad[20] ^= 1;
            store.db.put_cf(meta, GenesisHash::PREFIX, bad).unwrap();
        }
        let err = RocksStore::open(dir.path(), &genesis).err().unwrap();
        assert_eq!(err.to_string(), "corrupt genesis hash: checksum mismatch");
    }
}
