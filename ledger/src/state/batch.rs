//! One tree version written in a single pass over the sorted changed keys: the same nodes,
//! node keys, stale keys and root as `jmt`'s `put_value_set`, at a fraction of its cost.
//!
//! jmt inserts one key at a time: every key walks from the root, rehashes every internal
//! node on its path (up to 30 SHA-256 compressions each) and moves nodes through a SipHash
//! `HashMap` and then a `BTreeMap` batch. With 2,000 changed keys in a 1M-account tree the
//! upper nodes were rehashed once per key under them. Here the changed keys, sorted, are
//! split by nibble at each level, so each node on a changed path is read once, built once
//! and hashed once, and the output goes straight into two `Vec`s.
//!
//! jmt does not export the internal node type, so internal nodes are built from their
//! borsh encoding (the `TreeNodes` disk format) and hashed here with jmt's rules
//! (`InternalNode::merkle_hash`). Tests compare every node, stale key and root with
//! jmt's writer over random updates.

use jmt::storage::{LeafNode, Node, NodeKey};
use jmt::{KeyHash, ValueHash};
use sha2::{Digest, Sha256};

use super::{StateReader, EMPTY_ROOT};
use crate::hash::Hash;
use crate::store::StoreError;

/// jmt's domain separator for the binary nodes inside an internal node.
const INTERNAL_DOMAIN: &[u8] = b"JMT::IntrnalNode";
/// jmt's domain separator for leaves.
const LEAF_DOMAIN: &[u8] = b"JMT::LeafNode";

/// The tree changes of one version: new root, nodes to write, node keys made stale.
pub(super) struct TreeBatch {
    pub root: Hash,
    pub new_nodes: Vec<(NodeKey, Node)>,
    pub stale_nodes: Vec<NodeKey>,
}

/// One changed key.
#[derive(Clone, Copy)]
pub(super) struct Change {
    pub key: Hash,
    /// SHA-256 of the new value.
    pub value_hash: Hash,
    /// SHA-256 of the value the key has now, if the caller knows it: a leaf whose hash
    /// in its parent is this key's leaf with this value is replaced without reading it.
    pub previous_hash: Option<Hash>,
}

/// Writes `values` (sorted by key, no duplicates, at least one) as tree version `version`
/// on top of version `version - 1`. Returns None when the current root is absent or
/// `Null` (an empty tree): jmt's writer handles those.
pub(super) fn put_sorted<R: StateReader + ?Sized>(
    reader: &R,
    version: u64,
    values: &[Change],
) -> Result<Option<TreeBatch>, StoreError> {
    let Some(previous) = version.checked_sub(1) else {
        return Ok(None);
    };
    let root_key = node_key(previous, &Path::ROOT);
    let root = match reader.tree_node(&root_key)? {
        Some(node @ (Node::Internal(_) | Node::Leaf(_))) => node,
        Some(Node::Null) | None => return Ok(None),
    };
    let items: Vec<Item> = values.iter().map(|c| Item::New(*c)).collect();
    let mut writer = Writer {
        reader,
        version,
        new_nodes: Vec::with_capacity(values.len() * 3),
        stale_nodes: Vec::with_capacity(values.len() * 3),
    };
    let root = writer.update(Path::ROOT, root_key, root, &items)?;
    Ok(Some(TreeBatch {
        root: root.hash,
        new_nodes: writer.new_nodes,
        stale_nodes: writer.stale_nodes,
    }))
}

/// A key to place in a subtree: a changed value, or an existing leaf that a new key pushes
/// one level down.
#[derive(Clone)]
enum Item {
    New(Change),
    Old(LeafNode),
}

impl Item {
    fn key(&self) -> Hash {
        match self {
            Item::New(change) => change.key,
            Item::Old(leaf) => leaf.key_hash().0,
        }
    }
}

/// jmt's leaf hash (`SparseMerkleLeafNode::hash`).
fn leaf_hash(key: &Hash, value_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(LEAF_DOMAIN);
    h.update(key);
    h.update(value_hash);
    h.finalize().into()
}

/// A nibble path from the root, at most 64 nibbles.
#[derive(Clone, Copy)]
struct Path {
    nibbles: [u8; 64],
    len: usize,
}

impl Path {
    const ROOT: Path = Path {
        nibbles: [0; 64],
        len: 0,
    };

    fn child(&self, nibble: u8) -> Path {
        let mut p = *self;
        p.nibbles[p.len] = nibble;
        p.len += 1;
        p
    }
}

fn nibble_at(key: &Hash, depth: usize) -> u8 {
    let byte = key[depth / 2];
    if depth % 2 == 0 {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// jmt's `NodeKey` for `(version, path)`, through its borsh encoding (the `TreeNodes` key
/// format): jmt builds nibble paths only inside the crate.
fn node_key(version: u64, path: &Path) -> NodeKey {
    let bytes_len = path.len.div_ceil(2);
    let mut buf = Vec::with_capacity(8 + 8 + 4 + bytes_len);
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&(path.len as u64).to_le_bytes());
    buf.extend_from_slice(&(bytes_len as u32).to_le_bytes());
    for pair in path.nibbles[..path.len].chunks(2) {
        buf.push((pair[0] << 4) | pair.get(1).copied().unwrap_or(0));
    }
    borsh::from_slice(&buf).expect("a well-formed NodeKey encoding")
}

/// What an internal node records of a child.
#[derive(Clone, Copy)]
struct ChildRef {
    hash: Hash,
    version: u64,
    /// None for a leaf.
    leaf_count: Option<u64>,
}

impl ChildRef {
    fn leaves(&self) -> u64 {
        self.leaf_count.unwrap_or(1)
    }
}

type Children = [Option<ChildRef>; 16];

/// The children of an internal node as jmt stores them.
fn children_of(node: &Node) -> Children {
    let mut children: Children = [None; 16];
    if let Node::Internal(internal) = node {
        for (nibble, child) in internal.children_sorted() {
            children[u8::from(nibble) as usize] = Some(ChildRef {
                hash: child.hash,
                version: child.version,
                leaf_count: (!child.is_leaf()).then_some(child.leaf_count() as u64),
            });
        }
    }
    children
}

/// jmt's internal node hash: the root of the 4-level binary tree over the 16 child slots,
/// where an empty range is the placeholder and a range holding a single leaf is that
/// leaf's hash (`InternalNode::merkle_hash`).
fn internal_hash(children: &Children) -> Hash {
    let (mut exists, mut leaves) = (0u16, 0u16);
    for (i, child) in children.iter().enumerate() {
        if let Some(c) = child {
            exists |= 1 << i;
            if c.leaf_count.is_none() {
                leaves |= 1 << i;
            }
        }
    }
    merkle_hash(children, 0, 16, exists, leaves)
}

fn merkle_hash(children: &Children, start: u8, width: u8, exists: u16, leaves: u16) -> Hash {
    let mask = (((1u32 << width) - 1) << start) as u16;
    let (exists, leaves) = (exists & mask, leaves & mask);
    if exists == 0 {
        return EMPTY_ROOT;
    }
    if width == 1 || (exists.count_ones() == 1 && leaves != 0) {
        let only = exists.trailing_zeros() as usize;
        return children[only].map_or(EMPTY_ROOT, |c| c.hash);
    }
    let half = width / 2;
    let left = merkle_hash(children, start, half, exists, leaves);
    let right = merkle_hash(children, start + half, half, exists, leaves);
    let mut h = Sha256::new();
    h.update(INTERNAL_DOMAIN);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// jmt's `Node::Internal` for `children`, through its borsh encoding (the `TreeNodes`
/// value format): jmt does not export the internal node type.
fn internal_node(children: &Children, leaf_count: u64) -> Node {
    let mut buf = Vec::with_capacity(1 + 16 * 50 + 16);
    buf.push(1); // Node::Internal
    let mut count = 0u64;
    for child in children {
        match child {
            None => buf.push(0),
            Some(c) => {
                count += 1;
                buf.push(1);
                buf.extend_from_slice(&c.hash);
                buf.extend_from_slice(&c.version.to_le_bytes());
                match c.leaf_count {
                    None => buf.push(0), // NodeType::Leaf
                    Some(n) => {
                        buf.push(1); // NodeType::Internal { leaf_count }
                        buf.extend_from_slice(&n.to_le_bytes());
                    }
                }
            }
        }
    }
    buf.extend_from_slice(&count.to_le_bytes()); // Children::num_children
    buf.extend_from_slice(&leaf_count.to_le_bytes()); // InternalNode::leaf_count
    borsh::from_slice(&buf).expect("a well-formed internal node encoding")
}

struct Writer<'a, R: ?Sized> {
    reader: &'a R,
    version: u64,
    new_nodes: Vec<(NodeKey, Node)>,
    stale_nodes: Vec<NodeKey>,
}

impl<R: StateReader + ?Sized> Writer<'_, R> {
    /// Rewrites the existing node `node` (stored under `key`, at `path`) with `items`
    /// placed under it.
    fn update(
        &mut self,
        path: Path,
        key: NodeKey,
        node: Node,
        items: &[Item],
    ) -> Result<ChildRef, StoreError> {
        self.stale_nodes.push(key);
        match node {
            Node::Internal(_) => {
                let mut children = children_of(&node);
                for (nibble, group) in groups(items, path.len) {
                    let child_path = path.child(nibble);
                    children[nibble as usize] = Some(match children[nibble as usize] {
                        Some(existing) if replaces_leaf(&existing, group) => {
                            // That leaf is this key's with its known value: no need to
                            // read it to know it is replaced.
                            self.stale_nodes
                                .push(node_key(existing.version, &child_path));
                            self.build(child_path, group)
                        }
                        Some(existing) => {
                            let child_key = node_key(existing.version, &child_path);
                            let child = self.reader.tree_node(&child_key)?.ok_or_else(|| {
                                StoreError::Corrupt {
                                    what: "state tree".into(),
                                    detail: format!(
                                        "node {child_key:?} is missing: its parent lists it"
                                    ),
                                }
                            })?;
                            self.update(child_path, child_key, child, group)?
                        }
                        None => self.build(child_path, group),
                    });
                }
                Ok(self.put_internal(path, &children))
            }
            Node::Leaf(leaf) => {
                let existing = leaf.key_hash().0;
                if items.iter().any(|i| i.key() == existing) {
                    // Its value is among the changes: the leaf is replaced.
                    return Ok(self.build(path, items));
                }
                // The subtree now holds the old leaf too, moved down (jmt gives it the new
                // version as well).
                let at = items.partition_point(|i| i.key() < existing);
                let mut all: Vec<Item> = Vec::with_capacity(items.len() + 1);
                all.extend(items[..at].iter().cloned());
                all.push(Item::Old(leaf));
                all.extend(items[at..].iter().cloned());
                Ok(self.build(path, &all))
            }
            Node::Null => Err(StoreError::Corrupt {
                what: "state tree".into(),
                detail: "an empty node below the root".into(),
            }),
        }
    }

    /// A new subtree at `path` holding exactly `items` (at least one).
    fn build(&mut self, path: Path, items: &[Item]) -> ChildRef {
        if let [item] = items {
            let leaf = match item {
                Item::New(c) => LeafNode::new(KeyHash(c.key), ValueHash(c.value_hash)),
                Item::Old(leaf) => leaf.clone(),
            };
            let hash = leaf.hash::<Sha256>();
            self.new_nodes
                .push((node_key(self.version, &path), Node::Leaf(leaf)));
            return ChildRef {
                hash,
                version: self.version,
                leaf_count: None,
            };
        }
        let mut children: Children = [None; 16];
        for (nibble, group) in groups(items, path.len) {
            children[nibble as usize] = Some(self.build(path.child(nibble), group));
        }
        self.put_internal(path, &children)
    }

    fn put_internal(&mut self, path: Path, children: &Children) -> ChildRef {
        let leaf_count = children.iter().flatten().map(ChildRef::leaves).sum();
        let hash = internal_hash(children);
        self.new_nodes.push((
            node_key(self.version, &path),
            internal_node(children, leaf_count),
        ));
        ChildRef {
            hash,
            version: self.version,
            leaf_count: Some(leaf_count),
        }
    }
}

/// Whether `child` is the leaf of the only item of `group` with that item's previous
/// value, checked against the leaf hash the parent holds.
fn replaces_leaf(child: &ChildRef, group: &[Item]) -> bool {
    match group {
        [Item::New(Change {
            key,
            previous_hash: Some(previous),
            ..
        })] => child.leaf_count.is_none() && child.hash == leaf_hash(key, previous),
        _ => false,
    }
}

/// `items` (sorted by key) split into runs sharing the nibble at `depth`.
fn groups(items: &[Item], depth: usize) -> impl Iterator<Item = (u8, &[Item])> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let nibble = nibble_at(&first.key(), depth);
        let end = rest.partition_point(|i| nibble_at(&i.key(), depth) <= nibble);
        let (group, tail) = rest.split_at(end);
        rest = tail;
        Some((nibble, group))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::state::{
        compute_update_with, prove_account, AccountReader, StateUpdate, TreeWriter,
    };
    use crate::types::{Account, Address};

    /// The smallest state store: tree nodes and accounts in maps.
    #[derive(Default)]
    struct Tree {
        nodes: BTreeMap<NodeKey, Node>,
        accounts: BTreeMap<Hash, Account>,
        version: Option<(u64, Hash)>,
        reads: std::cell::Cell<usize>,
    }

    impl AccountReader for Tree {
        fn account_by_key(&self, key: &Hash) -> Result<Option<Account>, StoreError> {
            Ok(self.accounts.get(key).copied())
        }
    }

    impl StateReader for Tree {
        fn tree_node(&self, key: &NodeKey) -> Result<Option<Node>, StoreError> {
            self.reads.set(self.reads.get() + 1);
            Ok(self.nodes.get(key).cloned())
        }
        fn tree_version(&self) -> Result<Option<(u64, Hash)>, StoreError> {
            Ok(self.version)
        }
    }

    impl Tree {
        fn apply(&mut self, update: &StateUpdate) {
            for key in &update.stale_nodes {
                assert!(
                    self.nodes.remove(key).is_some(),
                    "stale {key:?} was not stored"
                );
            }
            for (key, node) in &update.new_nodes {
                assert!(self.nodes.insert(key.clone(), node.clone()).is_none());
            }
            for (key, _, acct) in &update.accounts {
                self.accounts.insert(*key, *acct);
            }
            self.version = Some((update.version, update.root));
        }
    }

    fn none() -> HashMap<Hash, Account> {
        HashMap::new()
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn key(&mut self) -> Hash {
            crate::hash::sha256(&self.next().to_le_bytes())
        }
    }

    /// A random change set: new keys, updates of existing keys, and keys sharing a long
    /// prefix with an existing key (which split its leaf several levels down).
    fn changes(rng: &mut Rng, tree: &Tree, n: usize) -> BTreeMap<Hash, (Address, Account)> {
        let existing: Vec<Hash> = tree.accounts.keys().copied().collect();
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let key = match (rng.next() % 3, existing.is_empty()) {
                (0, false) => existing[rng.next() as usize % existing.len()],
                (1, false) => {
                    let mut k = existing[rng.next() as usize % existing.len()];
                    let depth = 2 + rng.next() as usize % 60;
                    k[depth / 2] ^= if depth % 2 == 0 { 0x10 } else { 0x01 };
                    k
                }
                _ => rng.key(),
            };
            let acct = Account {
                balance: rng.next(),
                nonce: rng.next() % 5,
            };
            out.insert(key, ([0; 20], acct));
        }
        out
    }

    fn sorted(mut update: StateUpdate) -> StateUpdate {
        update.new_nodes.sort_by(|a, b| a.0.cmp(&b.0));
        update.stale_nodes.sort();
        update
    }

    #[test]
    fn writes_the_same_nodes_stale_keys_and_root_as_jmt() {
        for (seed, first, per_version) in [
            (1, 1, 1),
            (2, 2, 3),
            (3, 1, 40),
            (4, 300, 60),
            (5, 2000, 500),
        ] {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
            let mut tree = Tree::default();
            let genesis = changes(&mut rng, &tree, first);
            let update =
                compute_update_with(&tree, genesis, Default::default(), &none(), TreeWriter::Jmt)
                    .unwrap();
            tree.apply(&update);
            for version in 1..12 {
                let c = changes(&mut rng, &tree, per_version);
                // The previous values execution would pass: none, the right ones, or
                // every other one wrong (which must only cost reads).
                let previous: HashMap<Hash, Account> = c
                    .keys()
                    .filter_map(|k| tree.accounts.get(k).map(|a| (*k, *a)))
                    .enumerate()
                    .filter(|_| version % 3 != 0)
                    .map(|(i, (k, mut a))| {
                        if version % 3 == 2 && i % 2 == 0 {
                            a.balance ^= 1;
                        }
                        (k, a)
                    })
                    .collect();
                let ours = sorted(
                    compute_update_with(
                        &tree,
                        c.clone(),
                        Default::default(),
                        &previous,
                        TreeWriter::Batch,
                    )
                    .unwrap(),
                );
                let jmt = sorted(
                    compute_update_with(&tree, c, Default::default(), &none(), TreeWriter::Jmt)
                        .unwrap(),
                );
                assert_eq!(ours.version, version);
                assert_eq!(ours.root, jmt.root, "seed {seed} version {version}");
                assert_eq!(
                    ours.new_nodes, jmt.new_nodes,
                    "seed {seed} version {version}"
                );
                assert_eq!(
                    ours.stale_nodes, jmt.stale_nodes,
                    "seed {seed} version {version}"
                );
                tree.apply(&ours);
            }
        }
    }

    #[test]
    fn known_previous_values_spare_the_leaf_reads() {
        let mut rng = Rng(11);
        let mut tree = Tree::default();
        let genesis = changes(&mut rng, &tree, 3000);
        let update =
            compute_update_with(&tree, genesis, Default::default(), &none(), TreeWriter::Jmt)
                .unwrap();
        tree.apply(&update);
        // 100 updates of existing accounts.
        let c: BTreeMap<Hash, (Address, Account)> = tree
            .accounts
            .iter()
            .step_by(30)
            .map(|(k, a)| {
                (
                    *k,
                    (
                        [0; 20],
                        Account {
                            balance: a.balance + 1,
                            ..*a
                        },
                    ),
                )
            })
            .collect();
        let previous: HashMap<Hash, Account> = c.keys().map(|k| (*k, tree.accounts[k])).collect();
        let reads = |previous: &HashMap<Hash, Account>| {
            tree.reads.set(0);
            let u = compute_update_with(
                &tree,
                c.clone(),
                Default::default(),
                previous,
                TreeWriter::Batch,
            )
            .unwrap();
            (tree.reads.get(), u.root)
        };
        let (without, root) = reads(&none());
        let (with, same_root) = reads(&previous);
        assert_eq!(root, same_root);
        assert_eq!(without - with, c.len(), "one leaf read saved per key");
    }

    #[test]
    fn proofs_verify_against_a_batch_written_tree() {
        let mut rng = Rng(77);
        let mut tree = Tree::default();
        let genesis = changes(&mut rng, &tree, 500);
        let update =
            compute_update_with(&tree, genesis, Default::default(), &none(), TreeWriter::Jmt)
                .unwrap();
        tree.apply(&update);
        for _ in 0..3 {
            let c = changes(&mut rng, &tree, 200);
            let update =
                compute_update_with(&tree, c, Default::default(), &none(), TreeWriter::Batch)
                    .unwrap();
            tree.apply(&update);
        }
        // Accounts are keyed by address hash; put one in under its real key.
        let address = [0x5a; 20];
        let key = crate::state::account_key(&address);
        let acct = Account {
            balance: 9,
            nonce: 1,
        };
        let update = compute_update_with(
            &tree,
            BTreeMap::from([(key, (address, acct))]),
            Default::default(),
            &none(),
            TreeWriter::Batch,
        )
        .unwrap();
        tree.apply(&update);
        let (value, proof, root) = prove_account(&tree, &address).unwrap();
        assert_eq!(value, Some(acct));
        proof.verify(&root, &address, Some(&acct)).unwrap();
        assert!(proof
            .verify(
                &root,
                &address,
                Some(&Account {
                    balance: 10,
                    nonce: 1
                })
            )
            .is_err());
        let absent = [0x11; 20];
        let (value, proof, root) = prove_account(&tree, &absent).unwrap();
        assert_eq!(value, None);
        proof.verify(&root, &absent, None).unwrap();
    }

    #[test]
    fn a_missing_child_is_reported_as_corruption() {
        let mut rng = Rng(5);
        let mut tree = Tree::default();
        let genesis = changes(&mut rng, &tree, 100);
        let update =
            compute_update_with(&tree, genesis, Default::default(), &none(), TreeWriter::Jmt)
                .unwrap();
        tree.apply(&update);
        let leaf = tree
            .nodes
            .iter()
            .find(|(_, n)| matches!(n, Node::Leaf(_)))
            .map(|(k, n)| (k.clone(), n.clone()))
            .unwrap();
        tree.nodes.remove(&leaf.0);
        let Node::Leaf(l) = leaf.1 else {
            unreachable!()
        };
        let c = BTreeMap::from([(l.key_hash().0, ([0; 20], Account::default()))]);
        let err = compute_update_with(&tree, c, Default::default(), &none(), TreeWriter::Batch)
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
}
