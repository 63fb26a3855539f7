//! The authenticated account state: a Jellyfish Merkle Tree (the `jmt` crate, SHA-256)
//! mapping SHA-256(address) to borsh(Account). Updating k accounts costs O(k · log n)
//! node writes, and one account's value (or absence) can be proven against a root.
//!
//! Tree versions count state-changing blocks, not heights: a block without transactions
//! leaves the tree (and its version) untouched, because jmt reads the root of
//! `version - 1` and so needs versions without gaps. Only the latest version's nodes are
//! kept: the nodes a new version makes stale are deleted in the same write batch.

mod batch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use borsh::{BorshDeserialize, BorshSerialize};
use jmt::storage::{Node, NodeKey, TreeReader};
use jmt::{JellyfishMerkleTree, KeyHash, OwnedValue, RootHash};
use sha2::Sha256;

use crate::codec::{decode, encode};
use crate::hash::{sha256, Hash};
use crate::store::StoreError;
use crate::types::{Account, Address, Header, Validator};

/// Root of the empty tree.
/// (jmt's placeholder hash, which it does not export).
pub const EMPTY_ROOT: Hash = *b"SPARSE_MERKLE_PLACEHOLDER_HASH__";

/// Reads the latest committed accounts: all that a balance or nonce lookup (the mempool,
/// the RPC) needs.
pub trait AccountReader {
    /// Latest committed value of the account whose key hash is `key`.
    fn account_by_key(&self, key: &Hash) -> Result<Option<Account>, StoreError>;

    fn account(&self, address: &Address) -> Result<Option<Account>, StoreError> {
        self.account_by_key(&account_key(address))
    }
}

/// Reads the latest committed state: accounts and the authenticated tree over them, all
/// that execution and proofs need. Accounts are a supertrait because the tree's leaves
/// hold only their values' hashes: jmt reads the values themselves through the accounts.
pub trait StateReader: AccountReader {
    /// A node of the latest tree version.
    fn tree_node(&self, key: &NodeKey) -> Result<Option<Node>, StoreError>;
    /// The latest tree version (None before genesis state is written) and its root.
    fn tree_version(&self) -> Result<Option<(u64, Hash)>, StoreError>;

    /// Protocol 2: the latest committed value of the entry (bond, validator record,
    /// unbonding entry, evidence record, burned total: [`crate::staking`]) whose key
    /// preimage is `preimage`. The default refuses: a store that keeps protocol-2 state
    /// must say so, and a wrapper must forward it, rather than read every entry as absent.
    fn entry(&self, preimage: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = preimage;
        Err(no_protocol_2_state())
    }

    /// Protocol 2: every committed entry whose preimage starts with `prefix`, in preimage
    /// order.
    fn entries_with_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        let _ = prefix;
        Err(no_protocol_2_state())
    }

    /// Protocol 2: the validator set of `height`: the stored set with the greatest first
    /// height at or below `height` (None below the first, or on a protocol-1 chain).
    fn validator_set_record(&self, height: u64) -> Result<Option<Vec<Validator>>, StoreError> {
        let _ = height;
        Err(no_protocol_2_state())
    }

    /// The header of the committed block at `height`: the upgrade machinery
    /// ([`crate::upgrade`]) counts the signals of the last blocks when a block signals.
    /// The default refuses, like the protocol-2 methods: a store that keeps blocks must
    /// say so, and a wrapper must forward it.
    fn committed_header(&self, height: u64) -> Result<Option<Header>, StoreError> {
        let _ = height;
        Err(StoreError::Db(
            "this store does not serve block headers to execution".into(),
        ))
    }
}

/// Protocol-2 entries as (key preimage, value borsh), in preimage order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn no_protocol_2_state() -> StoreError {
    StoreError::Db("this store does not keep protocol-2 (staking) state".into())
}

/// The tree key of an account.
pub fn account_key(address: &Address) -> Hash {
    sha256(address)
}

/// Everything a committed block changes in the state, ready to go into the block's write
/// batch.
#[derive(Debug, Clone, Default)]
pub struct StateUpdate {
    /// Tree version after the update (unchanged if `accounts` is empty).
    pub version: u64,
    pub root: Hash,
    /// Changed accounts by key hash, with their address for indexing and logs.
    pub accounts: Vec<(Hash, Address, Account)>,
    pub new_nodes: Vec<(NodeKey, Node)>,
    pub stale_nodes: Vec<NodeKey>,
    /// Protocol 2: changed entries by key hash, with their preimage (the store's key) and
    /// new value (None: deleted).
    pub entries: Vec<(Hash, Vec<u8>, Option<Vec<u8>>)>,
    /// Protocol 2: validator sets to store, by the first height they apply to. Not part of
    /// the tree (they follow from the validator records; headers carry their hashes).
    pub validator_sets: Vec<(u64, Vec<Validator>)>,
}

impl StateUpdate {
    /// Whether the update makes a new tree version.
    pub fn changes_tree(&self) -> bool {
        !self.accounts.is_empty() || !self.entries.is_empty()
    }
}

/// Adapter from our reader to jmt's.
struct JmtReader<'a, R: ?Sized>(&'a R);

impl<R: StateReader + ?Sized> TreeReader for JmtReader<'_, R> {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        Ok(self.0.tree_node(node_key)?)
    }

    fn get_value_option(
        &self,
        _max_version: jmt::Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        // Only the latest version is stored, and readers only ask for it.
        Ok(self.0.account_by_key(&key_hash.0)?.map(|a| encode(&a)))
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, jmt::storage::LeafNode)>> {
        anyhow::bail!("tree restore is not supported: state is rebuilt by replaying blocks")
    }
}

/// How a tree version is written. Both give the same nodes, stale keys and root; `Batch`
/// is the fast one (module `batch`), `Jmt` is jmt's own `put_value_set`, kept for the
/// empty tree (the first genesis chunk), for the equivalence tests and for `make bench`'s
/// on/off rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeWriter {
    Batch,
    Jmt,
}

/// Process-wide choice of [`compute_update`]'s writer: `make bench` measures both in one
/// run. Nodes leave it at `Batch`.
static USE_JMT_WRITER: AtomicBool = AtomicBool::new(false);

/// Sets the writer [`compute_update`] uses in this process (a benchmark switch).
pub fn set_tree_writer(writer: TreeWriter) {
    USE_JMT_WRITER.store(writer == TreeWriter::Jmt, Ordering::Relaxed);
}

/// Computes the new root and the node changes for `changes` on top of `reader`'s tree.
/// `changes` maps key hash to (address, new account value).
pub fn compute_update<R: StateReader + ?Sized>(
    reader: &R,
    changes: BTreeMap<Hash, (Address, Account)>,
) -> Result<StateUpdate, StoreError> {
    compute_update_after(reader, changes, &HashMap::new())
}

/// The writer [`compute_update_after`] uses in this process (see [`set_tree_writer`]).
pub fn tree_writer() -> TreeWriter {
    if USE_JMT_WRITER.load(Ordering::Relaxed) {
        TreeWriter::Jmt
    } else {
        TreeWriter::Batch
    }
}

/// [`compute_update`] given the values some of the changed keys have in `reader`'s state,
/// as execution read them: the writer then need not read the leaves it replaces (about a
/// third of the nodes a block of transfers would read). Each is checked against the leaf
/// hash its parent holds; a wrong or missing one only costs the read.
pub fn compute_update_after<R: StateReader + ?Sized>(
    reader: &R,
    changes: BTreeMap<Hash, (Address, Account)>,
    previous: &HashMap<Hash, Account>,
) -> Result<StateUpdate, StoreError> {
    compute_update_with(reader, changes, BTreeMap::new(), previous, tree_writer())
}

/// [`compute_update_after`] with protocol-2 entries too (`entries` maps key hash to
/// (preimage, new value or None to delete)) and the given writer. The batch writer takes
/// account changes only: a block that changes staking entries (protocol 2's Bond, Unbond,
/// Unjail, evidence, jailing, releases) is written by jmt's writer, which builds the same
/// tree; jmt's writer ignores `previous`.
pub fn compute_update_with<R: StateReader + ?Sized>(
    reader: &R,
    changes: BTreeMap<Hash, (Address, Account)>,
    entries: BTreeMap<Hash, (Vec<u8>, Option<Vec<u8>>)>,
    previous: &HashMap<Hash, Account>,
    writer: TreeWriter,
) -> Result<StateUpdate, StoreError> {
    let current = reader.tree_version()?;
    if changes.is_empty() && entries.is_empty() {
        let (version, root) = current.unwrap_or((0, EMPTY_ROOT));
        return Ok(StateUpdate {
            version,
            root,
            ..Default::default()
        });
    }
    let version = current.map_or(0, |(v, _)| v + 1);
    if writer == TreeWriter::Batch && entries.is_empty() {
        let values: Vec<batch::Change> = changes
            .iter()
            .map(|(k, (_, acct))| batch::Change {
                key: *k,
                value_hash: sha256(&encode(acct)),
                previous_hash: previous.get(k).map(|old| sha256(&encode(old))),
            })
            .collect();
        if let Some(tree) = batch::put_sorted(reader, version, &values)? {
            return Ok(StateUpdate {
                version,
                root: tree.root,
                accounts: changes
                    .into_iter()
                    .map(|(k, (addr, acct))| (k, addr, acct))
                    .collect(),
                new_nodes: tree.new_nodes,
                stale_nodes: tree.stale_nodes,
                entries: Vec::new(),
                validator_sets: Vec::new(),
            });
        }
    }
    let jmt_reader = JmtReader(reader);
    let tree = JellyfishMerkleTree::<_, Sha256>::new(&jmt_reader);
    let values = changes
        .iter()
        .map(|(k, (_, acct))| (KeyHash(*k), Some(encode(acct))))
        .chain(entries.iter().map(|(k, (_, v))| (KeyHash(*k), v.clone())));
    let (root, batch) = tree
        .put_value_set(values, version)
        .map_err(|e| StoreError::Tree(e.to_string()))?;
    Ok(StateUpdate {
        version,
        root: root.0,
        accounts: changes
            .into_iter()
            .map(|(k, (addr, acct))| (k, addr, acct))
            .collect(),
        new_nodes: batch.node_batch.nodes().clone().into_iter().collect(),
        stale_nodes: batch
            .stale_node_index_batch
            .into_iter()
            .map(|s| s.node_key)
            .collect(),
        entries: entries
            .into_iter()
            .map(|(k, (preimage, value))| (k, preimage, value))
            .collect(),
        validator_sets: Vec::new(),
    })
}

/// A proof that an account has a value (or does not exist) under a state root.
#[derive(Clone, Debug, BorshSerialize, BorshDeserialize)]
pub struct AccountProof {
    proof: jmt::proof::SparseMerkleProof<Sha256>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("account proof does not verify: {0}")]
pub struct ProofError(pub String);

impl AccountProof {
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProofError> {
        decode("account proof", bytes, 64 * 1024).map_err(|e| ProofError(e.to_string()))
    }

    /// Checks that `address` has exactly `account` (None = absent) under `root`.
    pub fn verify(
        &self,
        root: &Hash,
        address: &Address,
        account: Option<&Account>,
    ) -> Result<(), ProofError> {
        self.proof
            .verify(
                RootHash(*root),
                KeyHash(account_key(address)),
                account.map(encode),
            )
            .map_err(|e| ProofError(e.to_string()))
    }
}

/// The latest value of `address` with a proof against the latest root.
pub fn prove_account<R: StateReader + ?Sized>(
    reader: &R,
    address: &Address,
) -> Result<(Option<Account>, AccountProof, Hash), StoreError> {
    let Some((version, root)) = reader.tree_version()? else {
        return Err(StoreError::Tree("no state has been written yet".into()));
    };
    let jmt_reader = JmtReader(reader);
    let tree = JellyfishMerkleTree::<_, Sha256>::new(&jmt_reader);
    let (value, proof) = tree
        .get_with_proof(KeyHash(account_key(address)), version)
        .map_err(|e| StoreError::Tree(e.to_string()))?;
    let account = match value {
        Some(bytes) => {
            Some(
                decode::<Account>("account", &bytes, 16).map_err(|e| StoreError::Corrupt {
                    what: "account".into(),
                    detail: e.to_string(),
                })?,
            )
        }
        None => None,
    };
    Ok((account, AccountProof { proof }, root))
}
